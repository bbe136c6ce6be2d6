/* spark-bench.c: what spark-channel costs, next to what plain GLib costs
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A benchmark, not a test: it prints figures and asserts none of them
 * (it only aborts if a message is lost or a reply is wrong).
 *
 * Workloads (default counts; --quick makes them small):
 *
 *   request_seq         one client, 200k requests, each awaited before the
 *                       next: ops/s, p50 and p99 latency
 *   request_pipelined   one client keeping 256 requests in flight on its
 *                       main loop, 1M requests: ops/s
 *   command_throughput  one producer, 2M commands, from the first send
 *                       until the server has handled the last
 *   command_mpsc        2 producer threads x 1M commands into one server
 *   queued_bytes        1M commands queued while the server is blocked:
 *                       RSS growth per queued message, with the message's
 *                       own GVariant and without it
 *
 * and three that report CPU time (of the whole process, every thread:
 * CLOCK_PROCESS_CPUTIME_ID) next to wall time, for spinning where it
 * cannot pay off (issue 15):
 *
 *   same_context        a server started with spark_module_server_start
 *                       (server, NULL) on the requester's own main context,
 *                       10k sequential requests on a GMainLoop, each sent
 *                       from the previous one's callback: one thread does
 *                       everything, so nothing can arrive while it spins
 *   pipeline            three stages, each a server on a thread of its own
 *                       whose handle_invocation forwards the request to the
 *                       next stage with request_full and completes its
 *                       invocation from the reply callback (on the stage's
 *                       own context); the client keeps 64 of 20k requests
 *                       in flight to the first stage
 *   ui_idle_cpu         a main loop with a 60 Hz tick and one request
 *                       outstanding whose handler replies after 2 s (a
 *                       timeout on its server's context): the CPU time the
 *                       process used while waiting. Its "ops" is that delay
 *                       in ms (--ops changes it, --quick makes it 100 ms).
 *
 * Compare these with SPARK_SPIN=0 in the environment (spinning off).
 *
 * Every workload runs, in the same process and run, spark-channel and two
 * baselines written in plain GLib, so every figure comes with ratios
 * measured side by side:
 *
 *   floor   a bare GAsyncQueue push/pop between the two threads (replies
 *           through a second GAsyncQueue): no main loop, no GTask;
 *   idiom   what a GNOME developer writes by hand: each request a GTask
 *           created on the client, g_main_context_invoke() onto the server
 *           thread's context, the handler returning through the task;
 *           commands as g_main_context_invoke_full().
 *
 * All three carry the same messages: a name ("get" or "set", copied by the
 * transport) and a GVariant int32 made by g_variant_new_int32() per
 * message; requests are answered by the same function, which makes a new
 * g_variant_new_int32() reply. The spark server is a SparkModuleServer
 * started with spark_module_server_start_in_thread() around a
 * spark_func_handler_new() handler made of those functions; the floor and
 * idiom servers call the same functions directly. So the ratios compare
 * the transport, not the payload.
 *
 * Output: one line per result on stdout,
 *   workload=<name> impl=<name> ops=<n> secs=<s> ops_per_s=<x> ns_per_op=<y> ...
 * then a summary table and the targets of the issue with the measured
 * ratios; --json prints one JSON document instead. Progress goes to stderr.
 *
 * Times come from the monotonic clock (the clock of g_get_monotonic_time(),
 * read with clock_gettime() for nanosecond resolution: a sequential
 * request can take less than the microsecond g_get_monotonic_time()
 * resolves). Memory is the resident set size from /proc/self/statm, after
 * malloc_trim() so that freed memory cannot hide growth.
 *
 * Options: --quick (small counts: the test suite's smoke test), --workload
 * and --impl (comma-separated names), --ops N, --window N (requests in
 * flight in request_pipelined), --repeat N (each workload N times, its
 * implementations interleaved, medians reported), --json, --json-out FILE
 * (the JSON document written to FILE as well as the usual text output).
 *
 * --contended runs everything next to a process that keeps one core busy
 * (a child that spins on a volatile counter; it is killed at exit, on
 * SIGINT, SIGTERM and SIGHUP, and by the kernel if this process dies
 * first: PR_SET_PDEATHSIG). The header of the report says which mode ran.
 *
 * --callgrind runs one workload and one implementation (--workload,
 * --impl, --ops) with no output but a summary line: bench/callgrind.sh runs
 * it under callgrind with two op counts and divides the difference in
 * instructions by the difference in ops, which removes setup and teardown.
 */

#include <spark-channel.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef HAVE_MALLOC_TRIM
# include <malloc.h>
#endif

/* Options --------------------------------------------------------------------- */

static gboolean opt_quick;
static gboolean opt_json;
static gboolean opt_callgrind;
static char *opt_workload;
static char *opt_impl;
static gint opt_repeat = 1;
static gint64 opt_ops;
static gint opt_window = 256;
static char *opt_queued_child;
static gboolean opt_contended;
static char *opt_json_out;

static GOptionEntry entries[] = {
  { "quick", 'q', 0, G_OPTION_ARG_NONE, &opt_quick, "Small counts: a smoke test (the test suite runs this)", NULL },
  { "workload", 'w', 0, G_OPTION_ARG_STRING, &opt_workload, "Run only these workloads (comma-separated)", "NAME[,NAME]" },
  { "impl", 'i', 0, G_OPTION_ARG_STRING, &opt_impl, "Run only these implementations (comma-separated)", "NAME[,NAME]" },
  { "json", 'j', 0, G_OPTION_ARG_NONE, &opt_json, "Print the results as JSON", NULL },
  { "json-out", 0, 0, G_OPTION_ARG_FILENAME, &opt_json_out, "Also write the results as JSON to FILE", "FILE" },
  { "contended", 'c', 0, G_OPTION_ARG_NONE, &opt_contended, "Keep one core busy with a spinning process while running", NULL },
  { "repeat", 'r', 0, G_OPTION_ARG_INT, &opt_repeat, "Run each workload N times and report the medians", "N" },
  { "ops", 'n', 0, G_OPTION_ARG_INT64, &opt_ops, "Override the number of operations of each workload", "N" },
  { "window", 0, 0, G_OPTION_ARG_INT, &opt_window, "Requests in flight in request_pipelined (default 256)", "N" },
  { "callgrind", 0, 0, G_OPTION_ARG_NONE, &opt_callgrind, "Run one workload and one impl silently (for bench/callgrind.sh)", NULL },
  { "queued-child", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_STRING, &opt_queued_child, "One queued_bytes measurement in a fresh process", "IMPL" },
  { NULL }
};

/* Clocks and memory ------------------------------------------------------------- */

static gint64
now_ns (void)
{
#ifdef CLOCK_MONOTONIC
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (gint64) ts.tv_sec * G_GINT64_CONSTANT (1000000000) + ts.tv_nsec;
#else
  return g_get_monotonic_time () * 1000;
#endif
}

/* CPU time of the whole process (every thread), user and system. */
static gint64
cpu_ns (void)
{
  struct timespec ts;

  if (clock_gettime (CLOCK_PROCESS_CPUTIME_ID, &ts) != 0)
    return 0;
  return (gint64) ts.tv_sec * G_GINT64_CONSTANT (1000000000) + ts.tv_nsec;
}

/* Resident set size in bytes, read without allocating. */
static gint64
rss_bytes (void)
{
  char buf[128];
  ssize_t len;
  long long size = 0;
  long long resident = 0;
  int fd;

  fd = open ("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return 0;
  len = read (fd, buf, sizeof buf - 1);
  close (fd);
  if (len <= 0)
    return 0;
  buf[len] = '\0';
  if (sscanf (buf, "%lld %lld", &size, &resident) != 2)
    return 0;

  return (gint64) resident * sysconf (_SC_PAGESIZE);
}

/* Gives freed memory back, so that reusing it shows as growth. */
static void
trim_heap (void)
{
#ifdef HAVE_MALLOC_TRIM
  malloc_trim (0);
#endif
}

/* A one-shot event between threads. */
typedef struct
{
  GMutex   mutex;
  GCond    cond;
  gboolean set;
} Latch;

static void
latch_init (Latch *latch)
{
  g_mutex_init (&latch->mutex);
  g_cond_init (&latch->cond);
  latch->set = FALSE;
}

static void
latch_clear (Latch *latch)
{
  g_mutex_clear (&latch->mutex);
  g_cond_clear (&latch->cond);
}

static void
latch_set (Latch *latch)
{
  g_mutex_lock (&latch->mutex);
  latch->set = TRUE;
  g_cond_broadcast (&latch->cond);
  g_mutex_unlock (&latch->mutex);
}

static void
latch_wait (Latch *latch)
{
  g_mutex_lock (&latch->mutex);
  while (!latch->set)
    g_cond_wait (&latch->cond, &latch->mutex);
  g_mutex_unlock (&latch->mutex);
}

/* Contention: a process that keeps one core busy --------------------------------- */

/* The spinning child, or 0. Read by the signal handler. */
static volatile sig_atomic_t spinner_pid;

static void
spinner_stop (void)
{
  pid_t pid = (pid_t) spinner_pid;

  if (pid <= 0)
    return;
  spinner_pid = 0;
  kill (pid, SIGKILL);
  while (waitpid (pid, NULL, 0) < 0 && errno == EINTR)
    ;
}

/* SIGINT, SIGTERM, SIGHUP: kill the spinner, then die of the signal. */
static void
on_fatal_signal (int signum)
{
  pid_t pid = (pid_t) spinner_pid;

  if (pid > 0)
    kill (pid, SIGKILL);
  signal (signum, SIG_DFL);
  raise (signum);
}

static void
spinner_start (void)
{
  static const int signals[] = { SIGINT, SIGTERM, SIGHUP };
  struct sigaction action;
  pid_t parent = getpid ();
  pid_t pid;

  fflush (stdout);
  fflush (stderr);

  pid = fork ();
  if (pid < 0)
    g_error ("--contended: cannot fork: %s", g_strerror (errno));

  if (pid == 0)
    {
      volatile guint64 counter = 0;

      /* Die with the parent, even if it is killed with SIGKILL; if it
       * died before prctl(), getppid() is no longer the parent. */
      if (prctl (PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid () != parent)
        _exit (1);
      for (;;)
        counter++;
    }

  spinner_pid = pid;
  atexit (spinner_stop);

  memset (&action, 0, sizeof action);
  action.sa_handler = on_fatal_signal;
  sigemptyset (&action.sa_mask);
  for (guint i = 0; i < G_N_ELEMENTS (signals); i++)
    sigaction (signals[i], &action, NULL);

  /* Let it reach its core before the first measurement. */
  g_usleep (200 * G_TIME_SPAN_MILLISECOND);
}

/* The module: the same two functions behind every transport --------------------- */

typedef struct
{
  /* The server's thread only, until @done is set. */
  guint64  requests;
  guint64  commands;
  guint64  target;       /* commands to handle before @done; set before sending */
  gint64   sum;
  gint64   t_last_ns;    /* when the target was reached */
  Latch    done;

  /* queued_bytes: the first command blocks the server until @gate. */
  gboolean block_first;  /* set before the first send */
  Latch    blocked;
  Latch    gate;
} BenchState;

static void
bench_state_init (BenchState *state,
                  guint64     target)
{
  memset (state, 0, sizeof *state);
  state->target = target;
  latch_init (&state->done);
  latch_init (&state->blocked);
  latch_init (&state->gate);
}

static void
bench_state_clear (BenchState *state)
{
  latch_clear (&state->done);
  latch_clear (&state->blocked);
  latch_clear (&state->gate);
}

static GVariant *
bench_request_func (const char    *name,
                    GVariant      *parameters,
                    GCancellable  *cancellable,
                    gpointer       user_data,
                    GError       **error)
{
  BenchState *state = user_data;

  state->requests++;
  return g_variant_new_int32 (g_variant_get_int32 (parameters));
}

static gboolean
bench_command_func (const char    *name,
                    GVariant      *parameters,
                    GCancellable  *cancellable,
                    gpointer       user_data,
                    GError       **error)
{
  BenchState *state = user_data;

  if G_UNLIKELY (state->block_first)
    {
      state->block_first = FALSE;
      latch_set (&state->blocked);
      latch_wait (&state->gate);
      return TRUE;
    }

  state->sum += g_variant_get_int32 (parameters);
  if (++state->commands == state->target)
    {
      state->t_last_ns = now_ns ();
      latch_set (&state->done);
    }

  return TRUE;
}

/* Implementations ---------------------------------------------------------------- */

typedef enum {
  IMPL_SPARK_SYNC,    /* request_sync */
  IMPL_SPARK_ASYNC,   /* request_async on the client's main loop */
  IMPL_SPARK_FULL,    /* request_full on the client's main loop */
  IMPL_SPARK,         /* send_command */
  IMPL_FLOOR,
  IMPL_IDIOM,
  N_IMPLS
} ImplId;

static const char *impl_names[N_IMPLS] = {
  "spark_sync", "spark_async", "spark_full", "spark", "floor", "idiom",
};

/* spark-channel ------------------------------------------------------------------- */

typedef struct
{
  SparkHandler      *handler;
  SparkModuleServer *server;
  SparkDispatcher   *dispatcher;
} SparkSide;

/* @in_thread: on a thread of its own, or on the caller's thread-default
 * context (the requester's own). */
static void
spark_side_start_full (SparkSide  *side,
                       BenchState *state,
                       gboolean    in_thread)
{
  GError *error = NULL;
  gboolean started;

  side->handler = spark_func_handler_new (bench_request_func, bench_command_func, state, NULL);
  side->server = spark_module_server_new (side->handler);
  spark_module_server_set_name (side->server, "bench-spark");
  if (in_thread)
    started = spark_module_server_start_in_thread (side->server, &error);
  else
    started = spark_module_server_start (side->server, NULL, &error);
  if (!started)
    g_error ("Cannot start the server: %s", error->message);
  side->dispatcher = spark_module_server_create_dispatcher (side->server);
}

static void
spark_side_start (SparkSide  *side,
                  BenchState *state)
{
  spark_side_start_full (side, state, TRUE);
}

static void
on_spark_shutdown (GObject      *source,
                   GAsyncResult *result,
                   gpointer      user_data)
{
  gboolean *done = user_data;
  GError *error = NULL;

  if (!spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, &error))
    g_error ("Shutdown failed: %s", error->message);
  *done = TRUE;
}

static void
spark_side_stop (SparkSide *side)
{
  gboolean done = FALSE;

  spark_module_server_shutdown_async (side->server, SPARK_SHUTDOWN_MODE_DRAIN, NULL,
                                      on_spark_shutdown, &done);
  while (!done)
    g_main_context_iteration (NULL, TRUE);

  g_clear_object (&side->dispatcher);
  g_clear_object (&side->server);
  g_clear_object (&side->handler);
}

/* floor: two GAsyncQueues ---------------------------------------------------------- */

typedef enum {
  FLOOR_REQUEST,
  FLOOR_COMMAND,
  FLOOR_STOP,
} FloorKind;

/* One allocation with the name inline, like spark-channel's messages. */
typedef struct
{
  GVariant *parameters;
  GVariant *reply;
  GError   *error;
  guint32   kind;
  char      name[];
} FloorMsg;

static FloorMsg *
floor_msg_new (FloorKind   kind,
               const char *name,
               GVariant   *parameters)
{
  gsize len = strlen (name) + 1;
  FloorMsg *msg = g_malloc (sizeof *msg + len);

  memcpy (msg->name, name, len);
  msg->parameters = parameters ? g_variant_ref_sink (parameters) : NULL;
  msg->reply = NULL;
  msg->error = NULL;
  msg->kind = kind;

  return msg;
}

static void
floor_msg_free (FloorMsg *msg)
{
  g_clear_pointer (&msg->parameters, g_variant_unref);
  g_clear_pointer (&msg->reply, g_variant_unref);
  g_clear_error (&msg->error);
  g_free (msg);
}

typedef struct
{
  GAsyncQueue *requests;
  GAsyncQueue *replies;
  GThread     *thread;
  BenchState  *state;
} FloorServer;

static gpointer
floor_thread_func (gpointer data)
{
  FloorServer *server = data;

  for (;;)
    {
      FloorMsg *msg = g_async_queue_pop (server->requests);
      GError *error = NULL;

      switch ((FloorKind) msg->kind)
        {
        case FLOOR_REQUEST:
          msg->reply = bench_request_func (msg->name, msg->parameters, NULL, server->state, &msg->error);
          if (msg->reply != NULL)
            g_variant_ref_sink (msg->reply);
          g_async_queue_push (server->replies, msg);
          break;

        case FLOOR_COMMAND:
          if (!bench_command_func (msg->name, msg->parameters, NULL, server->state, &error))
            {
              g_warning ("Command '%s' failed: %s", msg->name, error ? error->message : "no error");
              g_clear_error (&error);
            }
          floor_msg_free (msg);
          break;

        case FLOOR_STOP:
          floor_msg_free (msg);
          return NULL;

        default:
          g_assert_not_reached ();
        }
    }
}

static void
floor_start (FloorServer *server,
             BenchState  *state)
{
  server->requests = g_async_queue_new ();
  server->replies = g_async_queue_new ();
  server->state = state;
  server->thread = g_thread_new ("bench-floor", floor_thread_func, server);
}

static void
floor_stop (FloorServer *server)
{
  g_async_queue_push (server->requests, floor_msg_new (FLOOR_STOP, "stop", NULL));
  g_thread_join (g_steal_pointer (&server->thread));
  g_assert (g_async_queue_length (server->replies) == 0);
  g_clear_pointer (&server->requests, g_async_queue_unref);
  g_clear_pointer (&server->replies, g_async_queue_unref);
}

static void
floor_send_command (FloorServer *server,
                    const char  *name,
                    GVariant    *parameters)
{
  g_async_queue_push (server->requests, floor_msg_new (FLOOR_COMMAND, name, parameters));
}

/* idiom: GTask + g_main_context_invoke -------------------------------------------- */

typedef struct
{
  GMainContext *context;
  GMainLoop    *loop;      /* NULL on the caller's own context */
  GThread      *thread;    /* NULL on the caller's own context */
  BenchState   *state;
  guint         delay_ms;  /* requests reply after this long; set before the first */
  Latch         ready;
} IdiomServer;

typedef struct
{
  IdiomServer *server;
  char        *name;
  GVariant    *parameters;
} IdiomCall;

static IdiomCall *
idiom_call_new (IdiomServer *server,
                const char  *name,
                GVariant    *parameters)
{
  IdiomCall *call = g_new (IdiomCall, 1);

  call->server = server;
  call->name = g_strdup (name);
  call->parameters = parameters ? g_variant_ref_sink (parameters) : NULL;

  return call;
}

static void
idiom_call_free (gpointer data)
{
  IdiomCall *call = data;

  g_free (call->name);
  g_clear_pointer (&call->parameters, g_variant_unref);
  g_free (call);
}

static gpointer
idiom_thread_func (gpointer data)
{
  IdiomServer *server = data;

  /* Owning the context from here on makes g_main_context_invoke() from
   * other threads queue an idle source instead of running in place. */
  g_main_context_push_thread_default (server->context);
  latch_set (&server->ready);
  g_main_loop_run (server->loop);
  g_main_context_pop_thread_default (server->context);

  return NULL;
}

static void
idiom_start (IdiomServer *server,
             BenchState  *state)
{
  server->context = g_main_context_new ();
  server->loop = g_main_loop_new (server->context, FALSE);
  server->state = state;
  server->delay_ms = 0;
  latch_init (&server->ready);
  server->thread = g_thread_new ("bench-idiom", idiom_thread_func, server);
  latch_wait (&server->ready);
}

/* The server on the caller's thread-default context: requests are handled
 * by the caller's own main loop. */
static void
idiom_start_here (IdiomServer *server,
                  BenchState  *state)
{
  server->context = g_main_context_ref_thread_default ();
  server->loop = NULL;
  server->thread = NULL;
  server->state = state;
  server->delay_ms = 0;
  latch_init (&server->ready);
}

static void
idiom_stop_here (IdiomServer *server)
{
  g_clear_pointer (&server->context, g_main_context_unref);
  latch_clear (&server->ready);
}

static gboolean
idiom_quit_cb (gpointer data)
{
  IdiomServer *server = data;

  g_main_loop_quit (server->loop);
  return G_SOURCE_REMOVE;
}

static void
idiom_stop (IdiomServer *server)
{
  g_main_context_invoke (server->context, idiom_quit_cb, server);
  g_thread_join (g_steal_pointer (&server->thread));
  g_clear_pointer (&server->loop, g_main_loop_unref);
  g_clear_pointer (&server->context, g_main_context_unref);
  latch_clear (&server->ready);
}

/* On the server's thread. */
static gboolean
idiom_handle_request_cb (gpointer data)
{
  GTask *task = data;
  IdiomCall *call = g_task_get_task_data (task);
  GError *error = NULL;
  GVariant *reply;

  reply = bench_request_func (call->name, call->parameters, g_task_get_cancellable (task),
                              call->server->state, &error);
  if (reply != NULL)
    g_task_return_pointer (task, g_variant_ref_sink (reply), (GDestroyNotify) g_variant_unref);
  else
    g_task_return_error (task, error);
  g_object_unref (task);

  return G_SOURCE_REMOVE;
}

/* On the server's thread: handles the request after server->delay_ms. */
static gboolean
idiom_handle_delayed_cb (gpointer data)
{
  GTask *task = data;
  IdiomCall *call = g_task_get_task_data (task);
  GSource *source = g_timeout_source_new (call->server->delay_ms);

  g_source_set_callback (source, idiom_handle_request_cb, task, NULL);
  g_source_attach (source, call->server->context);
  g_source_unref (source);

  return G_SOURCE_REMOVE;
}

static void
idiom_request_async (IdiomServer         *server,
                     const char          *name,
                     GVariant            *parameters,
                     GAsyncReadyCallback  callback,
                     gpointer             user_data)
{
  GTask *task = g_task_new (NULL, NULL, callback, user_data);

  g_task_set_source_tag (task, idiom_request_async);
  g_task_set_name (task, "idiom request");
  g_task_set_task_data (task, idiom_call_new (server, name, parameters), idiom_call_free);
  g_main_context_invoke (server->context,
                         server->delay_ms > 0 ? idiom_handle_delayed_cb : idiom_handle_request_cb,
                         task);
}

static GVariant *
idiom_request_finish (GAsyncResult  *result,
                      GError       **error)
{
  g_return_val_if_fail (g_task_is_valid (result, NULL), NULL);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == idiom_request_async, NULL);

  return g_task_propagate_pointer (G_TASK (result), error);
}

/* On the server's thread. */
static gboolean
idiom_handle_command_cb (gpointer data)
{
  IdiomCall *call = data;
  GError *error = NULL;

  if (!bench_command_func (call->name, call->parameters, NULL, call->server->state, &error))
    {
      g_warning ("Command '%s' failed: %s", call->name, error ? error->message : "no error");
      g_clear_error (&error);
    }

  return G_SOURCE_REMOVE;
}

static void
idiom_send_command (IdiomServer *server,
                    const char  *name,
                    GVariant    *parameters)
{
  g_main_context_invoke_full (server->context, G_PRIORITY_DEFAULT, idiom_handle_command_cb,
                              idiom_call_new (server, name, parameters), idiom_call_free);
}

/* Results ------------------------------------------------------------------------ */

typedef struct
{
  const char *workload;
  const char *impl;
  ImplId      impl_id;
  guint64     ops;
  guint       runs;
  double      secs;
  double      ops_per_s;
  gboolean    has_latency;
  double      p50_ns;
  double      p99_ns;
  gboolean    has_bytes;
  double      bytes_per_msg;
  double      variant_bytes;
  gboolean    has_cpu;
  double      cpu_ns;          /* CPU time of the process over secs */
  double      ticks;           /* ui_idle_cpu: main-loop ticks seen */
} Result;

static int
compare_gint64 (const void *a,
                const void *b)
{
  gint64 x = *(const gint64 *) a;
  gint64 y = *(const gint64 *) b;

  return (x > y) - (x < y);
}

static int
compare_double (const void *a,
                const void *b)
{
  double x = *(const double *) a;
  double y = *(const double *) b;

  return (x > y) - (x < y);
}

/* Nearest-rank percentiles; sorts @lat. */
static void
result_set_latencies (Result *result,
                      gint64 *lat,
                      guint64 n)
{
  qsort (lat, n, sizeof *lat, compare_gint64);
  result->has_latency = TRUE;
  result->p50_ns = (double) lat[(n - 1) * 50 / 100];
  result->p99_ns = (double) lat[(n - 1) * 99 / 100];
}

static void
result_set_time (Result  *result,
                 guint64  ops,
                 gint64   elapsed_ns)
{
  result->ops = ops;
  result->secs = (double) MAX (elapsed_ns, 1) / 1e9;
  result->ops_per_s = (double) ops / result->secs;
}

/* Requests ------------------------------------------------------------------------- */

#define REQUEST_NAME "get"
#define COMMAND_NAME "set"

/* A client on its main loop (the default context) keeping @window
 * requests in flight. */
typedef struct
{
  ImplId           impl;
  guint64          n;
  guint64          window;
  guint64          sent;
  guint64          completed;
  gint64           reply_sum;
  gint64          *latencies;   /* window 1 only */
  gint64           t_sent;
  gint64           t_end;
  GMainLoop       *loop;
  SparkDispatcher *dispatcher;
  IdiomServer     *idiom;
} AsyncClient;

static void async_client_send (AsyncClient *client);

static void
async_client_complete (AsyncClient  *client,
                       GVariant     *reply,
                       const GError *error)
{
  if (reply == NULL)
    g_error ("A request failed: %s", error ? error->message : "no error");

  if (client->latencies != NULL)
    client->latencies[client->completed] = now_ns () - client->t_sent;

  client->reply_sum += g_variant_get_int32 (reply);
  client->completed++;

  if (client->sent < client->n)
    async_client_send (client);
  else if (client->completed == client->n)
    {
      client->t_end = now_ns ();
      g_main_loop_quit (client->loop);
    }
}

static void
on_spark_async_reply (GObject      *source,
                      GAsyncResult *result,
                      gpointer      user_data)
{
  GError *error = NULL;
  GVariant *reply;

  reply = spark_dispatcher_request_finish (SPARK_DISPATCHER (source), result, &error);
  async_client_complete (user_data, reply, error);
  g_clear_pointer (&reply, g_variant_unref);
}

static void
on_spark_full_reply (GVariant     *reply,
                     const GError *error,
                     gpointer      user_data)
{
  async_client_complete (user_data, reply, error);
}

static void
on_idiom_reply (GObject      *source,
                GAsyncResult *result,
                gpointer      user_data)
{
  GError *error = NULL;
  GVariant *reply;

  reply = idiom_request_finish (result, &error);
  async_client_complete (user_data, reply, error);
  g_clear_pointer (&reply, g_variant_unref);
}

static void
async_client_send (AsyncClient *client)
{
  gint32 value = (gint32) client->sent++;

  if (client->latencies != NULL)
    client->t_sent = now_ns ();

  switch (client->impl)
    {
    case IMPL_SPARK_ASYNC:
      spark_dispatcher_request_async (client->dispatcher, REQUEST_NAME, g_variant_new_int32 (value),
                                      NULL, NULL, on_spark_async_reply, client);
      break;

    case IMPL_SPARK_FULL:
      spark_dispatcher_request_full (client->dispatcher, REQUEST_NAME, g_variant_new_int32 (value),
                                     NULL, NULL, on_spark_full_reply, client, NULL);
      break;

    case IMPL_IDIOM:
      idiom_request_async (client->idiom, REQUEST_NAME, g_variant_new_int32 (value),
                           on_idiom_reply, client);
      break;

    case IMPL_SPARK_SYNC:
    case IMPL_SPARK:
    case IMPL_FLOOR:
    case N_IMPLS:
    default:
      g_assert_not_reached ();
    }
}

/* Returns the time from the first send to the last reply. */
static gint64
async_client_run (AsyncClient *client)
{
  gint64 t0;

  client->loop = g_main_loop_new (NULL, FALSE);

  t0 = now_ns ();
  while (client->sent < client->window && client->sent < client->n)
    async_client_send (client);
  g_main_loop_run (client->loop);

  g_clear_pointer (&client->loop, g_main_loop_unref);

  return client->t_end - t0;
}

static void
run_requests (ImplId   impl,
              guint64  n,
              guint64  window,
              gboolean measure_latency,
              Result  *result)
{
  BenchState state;
  gint64 *lat = measure_latency ? g_new (gint64, n) : NULL;
  gint64 expected_sum = (gint64) n * (gint64) (n - 1) / 2;
  gint64 reply_sum = 0;
  gint64 elapsed = 0;

  bench_state_init (&state, 0);

  switch (impl)
    {
    case IMPL_SPARK_SYNC:
      {
        SparkSide side;
        gint64 t0;

        g_assert (window == 1);
        spark_side_start (&side, &state);

        t0 = now_ns ();
        for (guint64 i = 0; i < n; i++)
          {
            GError *error = NULL;
            gint64 t = now_ns ();
            GVariant *reply;

            reply = spark_dispatcher_request_sync (side.dispatcher, REQUEST_NAME,
                                                   g_variant_new_int32 ((gint32) i),
                                                   NULL, NULL, &error);
            if (reply == NULL)
              g_error ("A request failed: %s", error->message);
            if (lat != NULL)
              lat[i] = now_ns () - t;
            reply_sum += g_variant_get_int32 (reply);
            g_variant_unref (reply);
          }
        elapsed = now_ns () - t0;

        spark_side_stop (&side);
      }
      break;

    case IMPL_SPARK_ASYNC:
    case IMPL_SPARK_FULL:
      {
        SparkSide side;
        AsyncClient client = { impl, n, window, 0, };

        spark_side_start (&side, &state);
        client.dispatcher = side.dispatcher;
        client.latencies = lat;
        elapsed = async_client_run (&client);
        reply_sum = client.reply_sum;
        spark_side_stop (&side);
      }
      break;

    case IMPL_IDIOM:
      {
        IdiomServer server;
        AsyncClient client = { impl, n, window, 0, };

        idiom_start (&server, &state);
        client.idiom = &server;
        client.latencies = lat;
        elapsed = async_client_run (&client);
        reply_sum = client.reply_sum;
        idiom_stop (&server);
      }
      break;

    case IMPL_FLOOR:
      {
        FloorServer server;
        guint64 sent = 0;
        gint64 t_sent = 0;
        gint64 t0;

        floor_start (&server, &state);

        t0 = now_ns ();
        while (sent < window && sent < n)
          {
            t_sent = now_ns ();
            g_async_queue_push (server.requests,
                                floor_msg_new (FLOOR_REQUEST, REQUEST_NAME,
                                               g_variant_new_int32 ((gint32) sent++)));
          }
        for (guint64 completed = 0; completed < n; completed++)
          {
            FloorMsg *msg = g_async_queue_pop (server.replies);

            if (msg->reply == NULL)
              g_error ("A request failed: %s", msg->error ? msg->error->message : "no error");
            if (lat != NULL)
              lat[completed] = now_ns () - t_sent;
            reply_sum += g_variant_get_int32 (msg->reply);
            floor_msg_free (msg);

            if (sent < n)
              {
                if (lat != NULL)
                  t_sent = now_ns ();
                g_async_queue_push (server.requests,
                                    floor_msg_new (FLOOR_REQUEST, REQUEST_NAME,
                                                   g_variant_new_int32 ((gint32) sent++)));
              }
          }
        elapsed = now_ns () - t0;

        floor_stop (&server);
      }
      break;

    case IMPL_SPARK:
    case N_IMPLS:
    default:
      g_assert_not_reached ();
    }

  if (reply_sum != expected_sum || state.requests != n)
    g_error ("%s: lost or wrong replies: %" G_GUINT64_FORMAT " handled of %" G_GUINT64_FORMAT
             ", sum %" G_GINT64_FORMAT " instead of %" G_GINT64_FORMAT,
             impl_names[impl], state.requests, n, reply_sum, expected_sum);

  result_set_time (result, n, elapsed);
  if (lat != NULL)
    result_set_latencies (result, lat, n);

  g_free (lat);
  bench_state_clear (&state);
}

static void
run_request_seq (ImplId   impl,
                 guint64  n,
                 Result  *result)
{
  run_requests (impl, n, 1, !opt_callgrind, result);
}

static void
run_request_pipelined (ImplId   impl,
                       guint64  n,
                       Result  *result)
{
  run_requests (impl, n, (guint64) MAX (opt_window, 1), FALSE, result);
}

/* Commands ------------------------------------------------------------------------- */

/* Whatever a producer sends to. */
typedef struct
{
  ImplId           impl;
  SparkDispatcher *dispatcher;
  FloorServer     *floor;
  IdiomServer     *idiom;
} CommandTarget;

static void
command_target_send (CommandTarget *target,
                     gint32         value)
{
  switch (target->impl)
    {
    case IMPL_SPARK:
      {
        GError *error = NULL;

        if (!spark_dispatcher_send_command (target->dispatcher, COMMAND_NAME,
                                            g_variant_new_int32 (value), NULL, &error))
          g_error ("A command failed: %s", error->message);
      }
      break;

    case IMPL_FLOOR:
      floor_send_command (target->floor, COMMAND_NAME, g_variant_new_int32 (value));
      break;

    case IMPL_IDIOM:
      idiom_send_command (target->idiom, COMMAND_NAME, g_variant_new_int32 (value));
      break;

    case IMPL_SPARK_SYNC:
    case IMPL_SPARK_ASYNC:
    case IMPL_SPARK_FULL:
    case N_IMPLS:
    default:
      g_assert_not_reached ();
    }
}

typedef struct
{
  CommandTarget *target;
  Latch         *gate;
  guint64        first;
  guint64        count;
} Producer;

static gpointer
producer_thread_func (gpointer data)
{
  Producer *producer = data;

  latch_wait (producer->gate);
  for (guint64 i = 0; i < producer->count; i++)
    command_target_send (producer->target, (gint32) (producer->first + i));

  return NULL;
}

typedef struct
{
  BenchState    state;
  CommandTarget target;
  SparkSide     spark;
  FloorServer   floor;
  IdiomServer   idiom;
} CommandRun;

static void
command_run_start (CommandRun *run,
                   ImplId      impl,
                   guint64     target)
{
  bench_state_init (&run->state, target);
  run->target.impl = impl;

  switch (impl)
    {
    case IMPL_SPARK:
      spark_side_start (&run->spark, &run->state);
      run->target.dispatcher = run->spark.dispatcher;
      break;

    case IMPL_FLOOR:
      floor_start (&run->floor, &run->state);
      run->target.floor = &run->floor;
      break;

    case IMPL_IDIOM:
      idiom_start (&run->idiom, &run->state);
      run->target.idiom = &run->idiom;
      break;

    case IMPL_SPARK_SYNC:
    case IMPL_SPARK_ASYNC:
    case IMPL_SPARK_FULL:
    case N_IMPLS:
    default:
      g_assert_not_reached ();
    }
}

/* Waits until every command was handled, checks them and stops the server. */
static void
command_run_finish (CommandRun *run,
                    guint64     n)
{
  gint64 expected_sum = (gint64) n * (gint64) (n - 1) / 2;

  latch_wait (&run->state.done);

  switch (run->target.impl)
    {
    case IMPL_SPARK:
      spark_side_stop (&run->spark);
      break;

    case IMPL_FLOOR:
      floor_stop (&run->floor);
      break;

    case IMPL_IDIOM:
      idiom_stop (&run->idiom);
      break;

    case IMPL_SPARK_SYNC:
    case IMPL_SPARK_ASYNC:
    case IMPL_SPARK_FULL:
    case N_IMPLS:
    default:
      g_assert_not_reached ();
    }

  if (run->state.commands != n || run->state.sum != expected_sum)
    g_error ("%s: lost commands: %" G_GUINT64_FORMAT " handled of %" G_GUINT64_FORMAT,
             impl_names[run->target.impl], run->state.commands, n);

  bench_state_clear (&run->state);
}

static void
run_commands (ImplId   impl,
              guint64  n,
              guint    n_producers,
              Result  *result)
{
  CommandRun run = { { 0, }, };
  gint64 t0;

  command_run_start (&run, impl, n);

  if (n_producers <= 1)
    {
      t0 = now_ns ();
      for (guint64 i = 0; i < n; i++)
        command_target_send (&run.target, (gint32) i);
    }
  else
    {
      Producer *producers = g_new0 (Producer, n_producers);
      GThread **threads = g_new0 (GThread *, n_producers);
      Latch gate;

      latch_init (&gate);
      for (guint p = 0; p < n_producers; p++)
        {
          producers[p].target = &run.target;
          producers[p].gate = &gate;
          producers[p].first = n / n_producers * p;
          producers[p].count = (p + 1 == n_producers) ? n - producers[p].first : n / n_producers;
          threads[p] = g_thread_new ("bench-producer", producer_thread_func, &producers[p]);
        }

      t0 = now_ns ();
      latch_set (&gate);
      for (guint p = 0; p < n_producers; p++)
        g_thread_join (threads[p]);

      latch_clear (&gate);
      g_free (threads);
      g_free (producers);
    }

  latch_wait (&run.state.done);
  result_set_time (result, n, run.state.t_last_ns - t0);
  command_run_finish (&run, n);
}

static void
run_command_throughput (ImplId   impl,
                        guint64  n,
                        Result  *result)
{
  run_commands (impl, n, 1, result);
}

static void
run_command_mpsc (ImplId   impl,
                  guint64  n,
                  Result  *result)
{
  run_commands (impl, n, 2, result);
}

/* queued_bytes runs each measurement in a fresh process of its own: freed
 * memory is kept for reuse (GSlice's magazines keep freed chunks for 15 s,
 * malloc keeps fragments that malloc_trim() cannot give back), so after any
 * other workload an RSS growth would only count what the earlier ones did
 * not leave behind. */

/* The resident memory of @n message parameters alone. */
static double
measure_variant_bytes (guint64 n)
{
  GVariant **variants = g_new (GVariant *, n);
  gint64 rss0;
  gint64 rss1;

  /* Touch the array first: only the variants may grow the RSS. */
  memset (variants, 0, n * sizeof *variants);

  trim_heap ();
  rss0 = rss_bytes ();
  for (guint64 i = 0; i < n; i++)
    variants[i] = g_variant_ref_sink (g_variant_new_int32 ((gint32) i));
  rss1 = rss_bytes ();

  for (guint64 i = 0; i < n; i++)
    g_variant_unref (variants[i]);
  g_free (variants);

  return (double) (rss1 - rss0) / (double) n;
}

/* Queues @n commands while the server is blocked: the time it took and the
 * RSS growth per command. */
static void
measure_queued (ImplId   impl,
                guint64  n,
                Result  *result)
{
  CommandRun run = { { 0, }, };
  gint64 rss0;
  gint64 rss1;
  gint64 t0;
  gint64 t1;

  command_run_start (&run, impl, n);

  /* Block the server in its first command. */
  run.state.block_first = TRUE;
  command_target_send (&run.target, -1);
  latch_wait (&run.state.blocked);

  trim_heap ();
  rss0 = rss_bytes ();
  t0 = now_ns ();
  for (guint64 i = 0; i < n; i++)
    command_target_send (&run.target, (gint32) i);
  t1 = now_ns ();
  rss1 = rss_bytes ();

  latch_set (&run.state.gate);
  command_run_finish (&run, n);

  result_set_time (result, n, t1 - t0);
  result->has_bytes = TRUE;
  result->bytes_per_msg = (double) (rss1 - rss0) / (double) n;
}

/* --queued-child IMPL: prints "secs=S bytes=B" (IMPL "variant": the
 * parameters alone). */
static int
queued_child_main (const char *impl_name,
                   guint64     n)
{
  Result result = { 0, };

  if (g_str_equal (impl_name, "variant"))
    {
      printf ("secs=0 bytes=%.4f\n", measure_variant_bytes (n));
      return 0;
    }

  for (guint i = 0; i < N_IMPLS; i++)
    if (g_str_equal (impl_name, impl_names[i]))
      {
        measure_queued ((ImplId) i, n, &result);
        printf ("secs=%.9f bytes=%.4f\n", result.secs, result.bytes_per_msg);
        return 0;
      }

  g_printerr ("spark-bench: unknown implementation '%s'\n", impl_name);
  return 2;
}

static char *self_path;

static void
spawn_queued_child (const char *impl_name,
                    guint64     n,
                    double     *secs,
                    double     *bytes)
{
  g_autofree char *ops = g_strdup_printf ("%" G_GUINT64_FORMAT, n);
  const char *child_argv[] = { self_path, "--queued-child", impl_name, "--ops", ops, NULL };
  g_autofree char *out = NULL;
  GError *error = NULL;
  int status;

  if (!g_spawn_sync (NULL, (char **) child_argv, NULL, G_SPAWN_CHILD_INHERITS_STDIN, NULL, NULL,
                     &out, NULL, &status, &error) ||
      !g_spawn_check_wait_status (status, &error))
    g_error ("queued_bytes: cannot run %s: %s", self_path, error->message);

  if (sscanf (out, "secs=%lf bytes=%lf", secs, bytes) != 2)
    g_error ("queued_bytes: unexpected output from the child: %s", out);
}

static void
run_queued_bytes (ImplId   impl,
                  guint64  n,
                  Result  *result)
{
  double secs;
  double bytes;
  double variant_secs;

  /* Under callgrind, instructions are what counts: run in place. */
  if (opt_callgrind)
    {
      measure_queued (impl, n, result);
      return;
    }

  spawn_queued_child ("variant", n, &variant_secs, &result->variant_bytes);
  spawn_queued_child (impl_names[impl], n, &secs, &bytes);

  result_set_time (result, n, (gint64) (secs * 1e9));
  result->has_bytes = TRUE;
  result->bytes_per_msg = bytes;
}

/* CPU time next to wall time ------------------------------------------------------ */

/* A handler that completes its invocations later: it forwards each request
 * to the next stage of a pipeline, or replies after a delay, or at once
 * (the last stage). */
#define BENCH_TYPE_STAGE (bench_stage_get_type ())
G_DECLARE_FINAL_TYPE (BenchStage, bench_stage, BENCH, STAGE, GObject)

struct _BenchStage
{
  GObject          parent_instance;

  SparkDispatcher *next;      /* the next stage's, NULL on the last; set before start */
  guint            delay_ms;  /* the last stage replies after this long; set before start */
  guint64          handled;   /* the server's thread; read once every reply arrived */
};

static void bench_stage_handler_iface_init (SparkHandlerInterface *iface);

G_DEFINE_FINAL_TYPE_WITH_CODE (BenchStage, bench_stage, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER,
                                                      bench_stage_handler_iface_init))

static void
bench_stage_dispose (GObject *object)
{
  BenchStage *self = BENCH_STAGE (object);

  g_clear_object (&self->next);

  G_OBJECT_CLASS (bench_stage_parent_class)->dispose (object);
}

static void
bench_stage_class_init (BenchStageClass *klass)
{
  G_OBJECT_CLASS (klass)->dispose = bench_stage_dispose;
}

static void
bench_stage_init (BenchStage *self)
{
}

/* On the stage's server thread: request_full replies on the thread-default
 * context of its caller, here the stage's own. */
static void
on_stage_reply (GVariant     *reply,
                const GError *error,
                gpointer      user_data)
{
  SparkInvocation *invocation = user_data;

  /* Not on the client's thread, whose thread-default is the default
   * context (NULL). */
  g_assert (g_main_context_get_thread_default () != NULL);

  if (reply != NULL)
    spark_invocation_return_value (invocation, reply);
  else
    spark_invocation_return_gerror (invocation, error);
  g_object_unref (invocation);
}

static gboolean
stage_delayed_reply_cb (gpointer data)
{
  SparkInvocation *invocation = data;
  GVariant *parameters = spark_invocation_get_parameters (invocation);

  spark_invocation_return_value (invocation, g_variant_new_int32 (g_variant_get_int32 (parameters)));
  return G_SOURCE_REMOVE;
}

static void
bench_stage_handle_invocation (SparkHandler    *handler,
                               SparkInvocation *invocation)
{
  BenchStage *self = BENCH_STAGE (handler);
  GVariant *parameters = spark_invocation_get_parameters (invocation);

  self->handled++;

  if (self->next != NULL)
    spark_dispatcher_request_full (self->next, spark_invocation_get_name (invocation), parameters,
                                   NULL, NULL, on_stage_reply, g_object_ref (invocation), NULL);
  else if (self->delay_ms > 0)
    {
      GSource *source = g_timeout_source_new (self->delay_ms);

      g_source_set_callback (source, stage_delayed_reply_cb, g_object_ref (invocation), g_object_unref);
      g_source_attach (source, g_main_context_get_thread_default ());
      g_source_unref (source);
    }
  else
    spark_invocation_return_value (invocation, g_variant_new_int32 (g_variant_get_int32 (parameters)));
}

static void
bench_stage_handler_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_invocation = bench_stage_handle_invocation;
}

/* A BenchStage behind a server on a thread of its own; stop it with
 * spark_side_stop(). */
static void
stage_side_start (SparkSide       *side,
                  const char      *name,
                  SparkDispatcher *next,
                  guint            delay_ms)
{
  BenchStage *stage = g_object_new (BENCH_TYPE_STAGE, NULL);
  GError *error = NULL;

  stage->next = next != NULL ? g_object_ref (next) : NULL;
  stage->delay_ms = delay_ms;
  side->handler = SPARK_HANDLER (stage);
  side->server = spark_module_server_new (side->handler);
  spark_module_server_set_name (side->server, name);
  if (!spark_module_server_start_in_thread (side->server, &error))
    g_error ("Cannot start the server: %s", error->message);
  side->dispatcher = spark_module_server_create_dispatcher (side->server);
}

static void
result_set_cpu (Result *result,
                gint64  cpu_elapsed_ns)
{
  result->has_cpu = TRUE;
  result->cpu_ns = (double) cpu_elapsed_ns;
}

/* same_context: the server on the requester's own context, so the thread
 * that waits for a reply is the one that must make it. */
static void
run_same_context (ImplId   impl,
                  guint64  n,
                  Result  *result)
{
  BenchState state;
  AsyncClient client = { impl, n, 1, 0, };
  gint64 expected_sum = (gint64) n * (gint64) (n - 1) / 2;
  gint64 elapsed = 0;
  gint64 c0 = 0;
  gint64 c1 = 0;

  bench_state_init (&state, 0);
  client.latencies = opt_callgrind ? NULL : g_new (gint64, n);

  switch (impl)
    {
    case IMPL_SPARK_ASYNC:
    case IMPL_SPARK_FULL:
      {
        SparkSide side;

        spark_side_start_full (&side, &state, FALSE);
        client.dispatcher = side.dispatcher;
        c0 = cpu_ns ();
        elapsed = async_client_run (&client);
        c1 = cpu_ns ();
        spark_side_stop (&side);
      }
      break;

    case IMPL_IDIOM:
      {
        IdiomServer server;

        idiom_start_here (&server, &state);
        client.idiom = &server;
        c0 = cpu_ns ();
        elapsed = async_client_run (&client);
        c1 = cpu_ns ();
        idiom_stop_here (&server);
      }
      break;

    case IMPL_SPARK_SYNC:
    case IMPL_SPARK:
    case IMPL_FLOOR:
    case N_IMPLS:
    default:
      g_assert_not_reached ();
    }

  if (client.reply_sum != expected_sum || state.requests != n)
    g_error ("same_context %s: lost or wrong replies: %" G_GUINT64_FORMAT " handled of %"
             G_GUINT64_FORMAT, impl_names[impl], state.requests, n);

  result_set_time (result, n, elapsed);
  result_set_cpu (result, c1 - c0);
  if (client.latencies != NULL)
    result_set_latencies (result, client.latencies, n);

  g_free (client.latencies);
  bench_state_clear (&state);
}

#define PIPELINE_STAGES 3
#define PIPELINE_WINDOW 64

/* pipeline: client -> stage 1 -> stage 2 -> stage 3, each stage on a thread
 * of its own, forwarding with request_full from its handler. */
static void
run_pipeline (ImplId   impl,
              guint64  n,
              Result  *result)
{
  SparkSide stages[PIPELINE_STAGES];
  AsyncClient client = { impl, n, PIPELINE_WINDOW, 0, };
  gint64 expected_sum = (gint64) n * (gint64) (n - 1) / 2;
  gint64 elapsed;
  gint64 c0;
  gint64 c1;

  g_assert (impl == IMPL_SPARK_FULL || impl == IMPL_SPARK_ASYNC);

  /* The last stage first: each one needs the next one's dispatcher. */
  for (gint i = PIPELINE_STAGES - 1; i >= 0; i--)
    {
      char name[32];

      g_snprintf (name, sizeof name, "bench-stage-%d", i + 1);
      stage_side_start (&stages[i], name,
                        i + 1 < PIPELINE_STAGES ? stages[i + 1].dispatcher : NULL, 0);
    }

  client.dispatcher = stages[0].dispatcher;
  c0 = cpu_ns ();
  elapsed = async_client_run (&client);
  c1 = cpu_ns ();

  /* The first stage first, so that each one stops after its callers. Every
   * reply arrived: the stages' counters are final. */
  for (guint i = 0; i < PIPELINE_STAGES; i++)
    {
      guint64 handled = BENCH_STAGE (stages[i].handler)->handled;

      if (handled != n)
        g_error ("pipeline %s: stage %u handled %" G_GUINT64_FORMAT " requests of %" G_GUINT64_FORMAT,
                 impl_names[impl], i + 1, handled, n);
      spark_side_stop (&stages[i]);
    }

  if (client.reply_sum != expected_sum)
    g_error ("pipeline %s: wrong replies", impl_names[impl]);

  result_set_time (result, n, elapsed);
  result_set_cpu (result, c1 - c0);
}

/* ui_idle_cpu: a UI thread's main loop waiting for a slow reply. */
typedef struct
{
  GMainLoop *loop;
  guint      ticks;
  gint32     reply;
  gint64     t_end;
  gint64     cpu_end;
} IdleWait;

#define UI_TICK_MS 16   /* 60 Hz, to GLib's millisecond */

static gboolean
on_ui_tick (gpointer data)
{
  IdleWait *wait = data;

  wait->ticks++;
  return G_SOURCE_CONTINUE;
}

static void
idle_wait_complete (IdleWait     *wait,
                    GVariant     *reply,
                    const GError *error)
{
  wait->cpu_end = cpu_ns ();
  wait->t_end = now_ns ();
  if (reply == NULL)
    g_error ("ui_idle_cpu: the request failed: %s", error ? error->message : "no error");
  wait->reply = g_variant_get_int32 (reply);
  g_main_loop_quit (wait->loop);
}

static void
on_idle_spark_reply (GObject      *source,
                     GAsyncResult *result,
                     gpointer      user_data)
{
  GError *error = NULL;
  GVariant *reply;

  reply = spark_dispatcher_request_finish (SPARK_DISPATCHER (source), result, &error);
  idle_wait_complete (user_data, reply, error);
  g_clear_pointer (&reply, g_variant_unref);
  g_clear_error (&error);
}

static void
on_idle_idiom_reply (GObject      *source,
                     GAsyncResult *result,
                     gpointer      user_data)
{
  GError *error = NULL;
  GVariant *reply;

  reply = idiom_request_finish (result, &error);
  idle_wait_complete (user_data, reply, error);
  g_clear_pointer (&reply, g_variant_unref);
  g_clear_error (&error);
}

#define UI_IDLE_VALUE 42

static void
run_ui_idle_cpu (ImplId   impl,
                 guint64  delay_ms,
                 Result  *result)
{
  IdleWait wait = { NULL, };
  BenchState state;
  guint tick_id;
  gint64 t0 = 0;
  gint64 c0 = 0;

  bench_state_init (&state, 0);
  wait.loop = g_main_loop_new (NULL, FALSE);
  tick_id = g_timeout_add (UI_TICK_MS, on_ui_tick, &wait);

  switch (impl)
    {
    case IMPL_SPARK_ASYNC:
      {
        SparkSide side;

        stage_side_start (&side, "bench-slow", NULL, (guint) delay_ms);
        t0 = now_ns ();
        c0 = cpu_ns ();
        spark_dispatcher_request_async (side.dispatcher, REQUEST_NAME,
                                        g_variant_new_int32 (UI_IDLE_VALUE),
                                        NULL, NULL, on_idle_spark_reply, &wait);
        g_main_loop_run (wait.loop);
        spark_side_stop (&side);
      }
      break;

    case IMPL_IDIOM:
      {
        IdiomServer server;

        idiom_start (&server, &state);
        server.delay_ms = (guint) delay_ms;
        t0 = now_ns ();
        c0 = cpu_ns ();
        idiom_request_async (&server, REQUEST_NAME, g_variant_new_int32 (UI_IDLE_VALUE),
                             on_idle_idiom_reply, &wait);
        g_main_loop_run (wait.loop);
        idiom_stop (&server);
      }
      break;

    case IMPL_SPARK_SYNC:
    case IMPL_SPARK_FULL:
    case IMPL_SPARK:
    case IMPL_FLOOR:
    case N_IMPLS:
    default:
      g_assert_not_reached ();
    }

  g_source_remove (tick_id);
  g_main_loop_unref (wait.loop);

  if (wait.reply != UI_IDLE_VALUE)
    g_error ("ui_idle_cpu %s: wrong reply %d", impl_names[impl], wait.reply);

  result_set_time (result, 1, wait.t_end - t0);
  result_set_cpu (result, wait.cpu_end - c0);
  result->ticks = wait.ticks;
  bench_state_clear (&state);
}

/* Workloads ------------------------------------------------------------------------ */

typedef void (*RunFunc) (ImplId   impl,
                         guint64  n,
                         Result  *result);

typedef struct
{
  const char *name;
  guint64     ops;
  guint64     quick_ops;
  RunFunc     run;
  guint       n_impls;
  ImplId      impls[4];
} Workload;

static const Workload workloads[] = {
  { "request_seq", 200000, 2000, run_request_seq,
    4, { IMPL_SPARK_SYNC, IMPL_SPARK_ASYNC, IMPL_FLOOR, IMPL_IDIOM } },
  { "request_pipelined", 1000000, 20000, run_request_pipelined,
    4, { IMPL_SPARK_ASYNC, IMPL_SPARK_FULL, IMPL_FLOOR, IMPL_IDIOM } },
  { "command_throughput", 2000000, 20000, run_command_throughput,
    3, { IMPL_SPARK, IMPL_FLOOR, IMPL_IDIOM } },
  { "command_mpsc", 2000000, 20000, run_command_mpsc,
    3, { IMPL_SPARK, IMPL_FLOOR, IMPL_IDIOM } },
  { "queued_bytes", 1000000, 20000, run_queued_bytes,
    3, { IMPL_SPARK, IMPL_FLOOR, IMPL_IDIOM } },
  { "same_context", 10000, 500, run_same_context,
    3, { IMPL_SPARK_ASYNC, IMPL_SPARK_FULL, IMPL_IDIOM } },
  { "pipeline", 20000, 2000, run_pipeline,
    2, { IMPL_SPARK_FULL, IMPL_SPARK_ASYNC } },
  /* ops: the handler's delay in ms */
  { "ui_idle_cpu", 2000, 100, run_ui_idle_cpu,
    2, { IMPL_SPARK_ASYNC, IMPL_IDIOM } },
};

static gboolean
name_in_list (const char *name,
              const char *list)
{
  g_auto(GStrv) names = NULL;

  if (list == NULL)
    return TRUE;

  names = g_strsplit (list, ",", -1);
  return g_strv_contains ((const char * const *) names, name);
}

/* Every name in @list must be one of @known. */
static gboolean
check_names (const char  *list,
             const char  *what,
             const char **known,
             guint        n_known)
{
  g_auto(GStrv) names = NULL;

  if (list == NULL)
    return TRUE;

  names = g_strsplit (list, ",", -1);
  for (guint i = 0; names[i] != NULL; i++)
    {
      gboolean found = FALSE;

      for (guint k = 0; k < n_known; k++)
        found = found || g_str_equal (names[i], known[k]);
      if (!found)
        {
          g_printerr ("spark-bench: unknown %s '%s'\n", what, names[i]);
          return FALSE;
        }
    }

  return TRUE;
}

/* Progress ------------------------------------------------------------------------- */

static gboolean progress_tty;

static void progress (const char *format, ...) G_GNUC_PRINTF (1, 2);

static void
progress (const char *format,
          ...)
{
  va_list args;

  if (opt_callgrind)
    return;

  va_start (args, format);
  if (progress_tty)
    fputs ("\r\033[K", stderr);
  vfprintf (stderr, format, args);
  if (!progress_tty)
    fputc ('\n', stderr);
  fflush (stderr);
  va_end (args);
}

static void
progress_done (void)
{
  if (progress_tty && !opt_callgrind)
    {
      fputs ("\r\033[K", stderr);
      fflush (stderr);
    }
}

/* Reporting ------------------------------------------------------------------------ */

static double
median (double *values,
        guint   n)
{
  qsort (values, n, sizeof *values, compare_double);
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

/* The median of each figure over @n runs of one implementation. */
static void
result_median (Result *runs,
               guint   n,
               Result *out)
{
  double *values = g_new (double, n);

  *out = runs[0];
  out->runs = n;

#define MEDIAN_OF(field) \
  G_STMT_START { \
    for (guint i = 0; i < n; i++) \
      values[i] = runs[i].field; \
    out->field = median (values, n); \
  } G_STMT_END

  MEDIAN_OF (ops_per_s);
  MEDIAN_OF (secs);
  MEDIAN_OF (p50_ns);
  MEDIAN_OF (p99_ns);
  MEDIAN_OF (bytes_per_msg);
  MEDIAN_OF (variant_bytes);
  MEDIAN_OF (cpu_ns);
  MEDIAN_OF (ticks);

#undef MEDIAN_OF

  g_free (values);
}

static const Result *
find_result (GArray     *results,
             const char *workload,
             ImplId      impl)
{
  for (guint i = 0; i < results->len; i++)
    {
      const Result *r = &g_array_index (results, Result, i);

      if (g_str_equal (r->workload, workload) && r->impl_id == impl)
        return r;
    }

  return NULL;
}

static double
beyond_variant (const Result *r)
{
  return r->bytes_per_msg - r->variant_bytes;
}

static void
print_result_line (GArray       *results,
                   const Result *r)
{
  const Result *floor_r = find_result (results, r->workload, IMPL_FLOOR);
  const Result *idiom_r = find_result (results, r->workload, IMPL_IDIOM);

  printf ("workload=%s impl=%s ops=%" G_GUINT64_FORMAT " secs=%.4f ops_per_s=%.0f ns_per_op=%.1f",
          r->workload, r->impl, r->ops, r->secs, r->ops_per_s, 1e9 / r->ops_per_s);
  if (r->has_latency)
    printf (" p50_ns=%.0f p99_ns=%.0f", r->p50_ns, r->p99_ns);
  if (r->has_bytes)
    printf (" bytes_per_msg=%.1f variant_bytes=%.1f bytes_beyond_variant=%.1f",
            r->bytes_per_msg, r->variant_bytes, beyond_variant (r));
  if (r->impl_id != IMPL_FLOOR && floor_r != NULL)
    {
      printf (" speedup_vs_floor=%.2f", r->ops_per_s / floor_r->ops_per_s);
      if (r->has_latency && floor_r->p50_ns > 0)
        printf (" p50_vs_floor=%.2f", r->p50_ns / floor_r->p50_ns);
    }
  if (r->impl_id != IMPL_IDIOM && idiom_r != NULL)
    {
      printf (" speedup_vs_idiom=%.2f", r->ops_per_s / idiom_r->ops_per_s);
      if (r->has_latency && idiom_r->p50_ns > 0)
        printf (" p50_vs_idiom=%.2f", r->p50_ns / idiom_r->p50_ns);
    }
  if (r->has_cpu)
    printf (" cpu_ms=%.3f cpu_ns_per_op=%.1f cpu_per_wall=%.3f",
            r->cpu_ns / 1e6, r->cpu_ns / (double) r->ops, r->cpu_ns / (r->secs * 1e9));
  if (r->ticks > 0)
    printf (" ticks=%.0f", r->ticks);
  if (r->runs > 1)
    printf (" runs=%u", r->runs);
  printf ("\n");
  fflush (stdout);
}

/* The targets: measured and reported, never asserted. */
typedef enum {
  TARGET_SPEEDUP,     /* ops/s of impl / ops/s of baseline >= goal */
  TARGET_P50,         /* p50 of impl / p50 of baseline <= goal */
  TARGET_BYTES,       /* bytes beyond the GVariant <= goal */
} TargetKind;

typedef struct
{
  const char *workload;
  ImplId      impl;
  ImplId      baseline;
  TargetKind  kind;
  double      goal;
  const char *text;
} Target;

static const Target targets[] = {
  { "request_pipelined", IMPL_SPARK_FULL, IMPL_IDIOM, TARGET_SPEEDUP, 12, "request_pipelined spark_full >= 12x idiom" },
  { "request_pipelined", IMPL_SPARK_FULL, IMPL_FLOOR, TARGET_SPEEDUP, 1.2, "request_pipelined spark_full >= 1.2x floor" },
  { "request_pipelined", IMPL_SPARK_ASYNC, IMPL_IDIOM, TARGET_SPEEDUP, 8, "request_pipelined spark_async >= 8x idiom" },
  { "command_throughput", IMPL_SPARK, IMPL_FLOOR, TARGET_SPEEDUP, 1.5, "command_throughput spark >= 1.5x floor" },
  { "command_mpsc", IMPL_SPARK, IMPL_FLOOR, TARGET_SPEEDUP, 1.5, "command_mpsc spark >= 1.5x floor" },
  { "request_seq", IMPL_SPARK_SYNC, IMPL_FLOOR, TARGET_P50, 0.5, "request_seq spark_sync p50 <= 0.5x floor p50" },
  { "request_seq", IMPL_SPARK_ASYNC, IMPL_FLOOR, TARGET_P50, 1.0, "request_seq spark_async p50 <= 1x floor p50" },
  { "queued_bytes", IMPL_SPARK, IMPL_SPARK, TARGET_BYTES, 48, "queued_bytes spark <= 48 B/msg beyond the GVariant" },
};

/* Returns FALSE if the target's figures were not measured. */
static gboolean
target_measure (GArray       *results,
                const Target *target,
                double       *value,
                gboolean     *met)
{
  const Result *r = find_result (results, target->workload, target->impl);
  const Result *b = find_result (results, target->workload, target->baseline);

  if (r == NULL || b == NULL)
    return FALSE;

  switch (target->kind)
    {
    case TARGET_SPEEDUP:
      *value = r->ops_per_s / b->ops_per_s;
      *met = *value >= target->goal;
      return TRUE;

    case TARGET_P50:
      *value = b->p50_ns > 0 ? r->p50_ns / b->p50_ns : 0;
      *met = *value <= target->goal;
      return TRUE;

    case TARGET_BYTES:
      *value = beyond_variant (r);
      *met = *value <= target->goal;
      return TRUE;

    default:
      g_assert_not_reached ();
    }
}

/* The workloads that report CPU time, in a table of their own. */
static void
print_cpu_table (GArray *results)
{
  gboolean any = FALSE;

  for (guint i = 0; i < results->len; i++)
    any = any || g_array_index (results, Result, i).has_cpu;
  if (!any)
    return;

  printf ("\n%-19s %-12s %8s %10s %10s %11s %10s %11s %7s %8s %6s\n",
          "workload", "impl", "ops", "wall ms", "wall us/op", "ops/s", "CPU ms", "CPU us/op",
          "CPU %", "CPU/idm", "ticks");
  for (guint i = 0; i < results->len; i++)
    {
      const Result *r = &g_array_index (results, Result, i);
      const Result *idiom_r = find_result (results, r->workload, IMPL_IDIOM);
      char ticks[32] = "-";
      char vs_idiom[32] = "-";

      if (!r->has_cpu)
        continue;
      if (r->ticks > 0)
        g_snprintf (ticks, sizeof ticks, "%.0f", r->ticks);
      if (idiom_r != NULL && idiom_r != r && idiom_r->cpu_ns > 0)
        g_snprintf (vs_idiom, sizeof vs_idiom, "%.2f", r->cpu_ns / idiom_r->cpu_ns);
      printf ("%-19s %-12s %8" G_GUINT64_FORMAT " %10.2f %10.3f %11.0f %10.3f %11.3f %7.1f %8s %6s\n",
              r->workload, r->impl, r->ops, r->secs * 1e3, r->secs * 1e6 / (double) r->ops,
              r->ops_per_s, r->cpu_ns / 1e6, r->cpu_ns / 1e3 / (double) r->ops,
              100 * r->cpu_ns / (r->secs * 1e9), vs_idiom, ticks);
    }
  printf ("(CPU: the whole process, every thread, over the wall time; CPU %%: of one core;"
          " CPU/idm: CPU time over idiom's; ticks: the 60 Hz main-loop timeout's)\n");
}

static void
print_table (GArray *results)
{
  gboolean any = FALSE;

  for (guint i = 0; i < results->len; i++)
    any = any || !g_array_index (results, Result, i).has_cpu;

  if (any)
    printf ("\n%-19s %-12s %12s %9s %9s %9s %9s %9s %8s %8s\n",
            "workload", "impl", "ops/s", "ns/op", "p50 ns", "p99 ns", "B/msg", "B-var", "x floor", "x idiom");
  for (guint i = 0; any && i < results->len; i++)
    {
      const Result *r = &g_array_index (results, Result, i);
      const Result *floor_r = find_result (results, r->workload, IMPL_FLOOR);
      const Result *idiom_r = find_result (results, r->workload, IMPL_IDIOM);
      char p50[32] = "-", p99[32] = "-", bytes[32] = "-", beyond[32] = "-";
      char vs_floor[32] = "-", vs_idiom[32] = "-";

      if (r->has_cpu)
        continue;

      if (r->has_latency)
        {
          g_snprintf (p50, sizeof p50, "%.0f", r->p50_ns);
          g_snprintf (p99, sizeof p99, "%.0f", r->p99_ns);
        }
      if (r->has_bytes)
        {
          g_snprintf (bytes, sizeof bytes, "%.1f", r->bytes_per_msg);
          g_snprintf (beyond, sizeof beyond, "%.1f", beyond_variant (r));
        }
      if (floor_r != NULL && floor_r != r)
        g_snprintf (vs_floor, sizeof vs_floor, "%.2f", r->ops_per_s / floor_r->ops_per_s);
      if (idiom_r != NULL && idiom_r != r)
        g_snprintf (vs_idiom, sizeof vs_idiom, "%.2f", r->ops_per_s / idiom_r->ops_per_s);

      printf ("%-19s %-12s %12.0f %9.1f %9s %9s %9s %9s %8s %8s\n",
              r->workload, r->impl, r->ops_per_s, 1e9 / r->ops_per_s,
              p50, p99, bytes, beyond, vs_floor, vs_idiom);
    }
  if (any)
    printf ("(x floor, x idiom: ops/s ratio; B/msg: RSS growth per queued message,"
            " B-var: the same without the message's GVariant)\n");

  print_cpu_table (results);

  for (guint i = 0, n_printed = 0; i < G_N_ELEMENTS (targets); i++)
    {
      double value;
      gboolean met;

      if (!target_measure (results, &targets[i], &value, &met))
        continue;
      if (n_printed++ == 0)
        printf ("\ntargets (measured, not asserted):\n");
      printf ("  %-52s %8.2f%s  %s\n", targets[i].text, value,
              targets[i].kind == TARGET_BYTES ? " B" : "x",
              met ? "met" : "MISSED");
    }
  fflush (stdout);
}

/* The conditions of a run, for the report's header. */
typedef struct
{
  const char *mode;         /* "idle" or "contended" */
  gint        cpus;
  const char *spark_spin;   /* SPARK_SPIN, or NULL */
  char        loadavg[64];  /* /proc/loadavg's first three fields at the start */
} RunInfo;

static RunInfo run_info;

static void
run_info_init (RunInfo *info)
{
  g_autofree char *contents = NULL;

  info->mode = opt_contended ? "contended" : "idle";
  info->cpus = (gint) sysconf (_SC_NPROCESSORS_ONLN);
  info->spark_spin = g_getenv ("SPARK_SPIN");
  g_strlcpy (info->loadavg, "?", sizeof info->loadavg);
  if (g_file_get_contents ("/proc/loadavg", &contents, NULL, NULL))
    {
      g_auto(GStrv) fields = g_strsplit (g_strstrip (contents), " ", 4);

      if (g_strv_length (fields) >= 3)
        g_snprintf (info->loadavg, sizeof info->loadavg, "%s %s %s", fields[0], fields[1], fields[2]);
    }
}

static void
print_header (const RunInfo *info)
{
  printf ("spark-bench: %s%s, %d CPUs, SPARK_SPIN=%s, repeat %d%s, load average %s at the start\n",
          info->mode,
          opt_contended ? " (one process spinning on a core)" : "",
          info->cpus, info->spark_spin ? info->spark_spin : "(unset)", opt_repeat,
          opt_repeat > 1 ? " (medians)" : "", info->loadavg);
  fflush (stdout);
}

static char *
results_to_json (GArray *results)
{
  GString *out = g_string_new ("{\n");
  gboolean first = TRUE;

  g_string_append_printf (out, "  \"mode\": \"%s\",\n  \"cpus\": %d,\n  \"repeat\": %d,\n",
                          run_info.mode, run_info.cpus, opt_repeat);
  if (run_info.spark_spin != NULL)
    {
      g_autofree char *escaped = g_strescape (run_info.spark_spin, NULL);

      g_string_append_printf (out, "  \"spark_spin\": \"%s\",\n", escaped);
    }
  else
    g_string_append (out, "  \"spark_spin\": null,\n");
  g_string_append_printf (out, "  \"loadavg_start\": \"%s\",\n", run_info.loadavg);
  g_string_append (out, "  \"results\": [\n");

  for (guint i = 0; i < results->len; i++)
    {
      const Result *r = &g_array_index (results, Result, i);
      const Result *b;

      g_string_append_printf (out,
                              "    {\"workload\": \"%s\", \"impl\": \"%s\", \"ops\": %" G_GUINT64_FORMAT
                              ", \"runs\": %u, \"secs\": %.6f, \"ops_per_s\": %.1f, \"ns_per_op\": %.2f",
                              r->workload, r->impl, r->ops, r->runs, r->secs, r->ops_per_s,
                              1e9 / r->ops_per_s);
      if (r->has_latency)
        g_string_append_printf (out, ", \"p50_ns\": %.0f, \"p99_ns\": %.0f", r->p50_ns, r->p99_ns);
      if (r->has_bytes)
        g_string_append_printf (out, ", \"bytes_per_msg\": %.2f, \"variant_bytes\": %.2f"
                                ", \"bytes_beyond_variant\": %.2f",
                                r->bytes_per_msg, r->variant_bytes, beyond_variant (r));
      if (r->impl_id != IMPL_FLOOR && (b = find_result (results, r->workload, IMPL_FLOOR)) != NULL)
        {
          g_string_append_printf (out, ", \"speedup_vs_floor\": %.3f", r->ops_per_s / b->ops_per_s);
          if (r->has_latency && b->p50_ns > 0)
            g_string_append_printf (out, ", \"p50_vs_floor\": %.3f", r->p50_ns / b->p50_ns);
        }
      if (r->impl_id != IMPL_IDIOM && (b = find_result (results, r->workload, IMPL_IDIOM)) != NULL)
        {
          g_string_append_printf (out, ", \"speedup_vs_idiom\": %.3f", r->ops_per_s / b->ops_per_s);
          if (r->has_latency && b->p50_ns > 0)
            g_string_append_printf (out, ", \"p50_vs_idiom\": %.3f", r->p50_ns / b->p50_ns);
        }
      if (r->has_cpu)
        g_string_append_printf (out, ", \"cpu_ms\": %.4f, \"cpu_ns_per_op\": %.2f, \"cpu_per_wall\": %.4f",
                                r->cpu_ns / 1e6, r->cpu_ns / (double) r->ops, r->cpu_ns / (r->secs * 1e9));
      if (r->ticks > 0)
        g_string_append_printf (out, ", \"ticks\": %.0f", r->ticks);
      g_string_append_printf (out, "}%s\n", i + 1 < results->len ? "," : "");
    }

  g_string_append (out, "  ],\n  \"targets\": [\n");
  for (guint i = 0; i < G_N_ELEMENTS (targets); i++)
    {
      double value;
      gboolean met;

      if (!target_measure (results, &targets[i], &value, &met))
        continue;
      g_string_append_printf (out, "%s    {\"target\": \"%s\", \"goal\": %g, \"value\": %.3f, \"met\": %s}",
                              first ? "" : ",\n", targets[i].text, targets[i].goal, value,
                              met ? "true" : "false");
      first = FALSE;
    }
  g_string_append (out, "\n  ]\n}\n");

  return g_string_free (out, FALSE);
}

#define MAX_REPEAT 64

/* main ----------------------------------------------------------------------------- */

int
main (int   argc,
      char *argv[])
{
  GOptionContext *context;
  GError *error = NULL;
  const char *workload_names[G_N_ELEMENTS (workloads)];
  GArray *results;
  guint total = 0;
  guint step = 0;
  gint64 t_start;

  context = g_option_context_new ("- spark-channel benchmarks");
  g_option_context_set_summary (context,
                                "Workloads: request_seq, request_pipelined, command_throughput,\n"
                                "command_mpsc, queued_bytes, and with CPU time: same_context,\n"
                                "pipeline, ui_idle_cpu (--ops: the reply's delay in ms).\n"
                                "Implementations: spark_sync, spark_async, spark_full,\n"
                                "spark (commands), floor, idiom.");
  g_option_context_add_main_entries (context, entries, NULL);
  if (!g_option_context_parse (context, &argc, &argv, &error))
    {
      g_printerr ("spark-bench: %s\n", error->message);
      g_error_free (error);
      g_option_context_free (context);
      return 2;
    }
  g_option_context_free (context);

  for (guint w = 0; w < G_N_ELEMENTS (workloads); w++)
    workload_names[w] = workloads[w].name;
  if (!check_names (opt_workload, "workload", workload_names, G_N_ELEMENTS (workloads)) ||
      !check_names (opt_impl, "implementation", impl_names, N_IMPLS))
    return 2;
  if (opt_repeat < 1 || opt_repeat > MAX_REPEAT || opt_ops < 0 || opt_window < 1)
    {
      g_printerr ("spark-bench: --repeat must be 1 to %d; --ops and --window positive\n", MAX_REPEAT);
      return 2;
    }
  if (opt_callgrind)
    opt_repeat = 1;

  if (opt_queued_child != NULL)
    return queued_child_main (opt_queued_child, opt_ops > 0 ? (guint64) opt_ops : 1000000);

  self_path = g_file_read_link ("/proc/self/exe", NULL);
  if (self_path == NULL)
    self_path = g_strdup (argv[0]);

  progress_tty = isatty (STDERR_FILENO);
  results = g_array_new (FALSE, TRUE, sizeof (Result));

  for (guint w = 0; w < G_N_ELEMENTS (workloads); w++)
    if (name_in_list (workloads[w].name, opt_workload))
      for (guint k = 0; k < workloads[w].n_impls; k++)
        if (name_in_list (impl_names[workloads[w].impls[k]], opt_impl))
          total += (guint) opt_repeat;

  if (total == 0)
    {
      g_printerr ("spark-bench: nothing to run with these --workload and --impl\n");
      g_array_unref (results);
      return 2;
    }

  run_info_init (&run_info);
  if (opt_contended && !opt_callgrind)
    spinner_start ();
  if (!opt_json && !opt_callgrind)
    print_header (&run_info);

  t_start = now_ns ();

  for (guint w = 0; w < G_N_ELEMENTS (workloads); w++)
    {
      const Workload *workload = &workloads[w];
      guint64 n = opt_ops > 0 ? (guint64) opt_ops : opt_quick ? workload->quick_ops : workload->ops;
      Result runs[G_N_ELEMENTS (workload->impls)][MAX_REPEAT];
      guint n_reps = (guint) opt_repeat;
      guint first_result = results->len;

      if (!name_in_list (workload->name, opt_workload))
        continue;

      memset (runs, 0, sizeof runs);

      /* Implementations interleaved within each repetition, so that they
       * share the machine's moods. */
      for (guint rep = 0; rep < n_reps; rep++)
        for (guint k = 0; k < workload->n_impls; k++)
          {
            ImplId impl = workload->impls[k];
            Result *r = &runs[k][rep];

            if (!name_in_list (impl_names[impl], opt_impl))
              continue;

            step++;
            progress ("[%2u/%u] %s impl=%s ops=%" G_GUINT64_FORMAT " run %u/%u (%.0f s so far)",
                      step, total, workload->name, impl_names[impl], n, rep + 1, n_reps,
                      (double) (now_ns () - t_start) / 1e9);

            r->workload = workload->name;
            r->impl = impl_names[impl];
            r->impl_id = impl;
            workload->run (impl, n, r);
          }

      for (guint k = 0; k < workload->n_impls; k++)
        {
          Result median_result;

          if (!name_in_list (impl_names[workload->impls[k]], opt_impl))
            continue;

          result_median (runs[k], n_reps, &median_result);
          g_array_append_val (results, median_result);
        }

      if (!opt_json && !opt_callgrind)
        {
          progress_done ();
          for (guint i = first_result; i < results->len; i++)
            print_result_line (results, &g_array_index (results, Result, i));
        }
    }

  progress_done ();

  if (opt_callgrind)
    {
      for (guint i = 0; i < results->len; i++)
        {
          const Result *r = &g_array_index (results, Result, i);

          printf ("callgrind workload=%s impl=%s ops=%" G_GUINT64_FORMAT "\n",
                  r->workload, r->impl, r->ops);
        }
    }
  else
    {
      g_autofree char *json = results_to_json (results);

      if (opt_json)
        {
          fputs (json, stdout);
          fflush (stdout);
        }
      else
        {
          print_table (results);
          printf ("total %.1f s%s\n", (double) (now_ns () - t_start) / 1e9,
                  opt_quick ? " (--quick: counts too small to mean anything)" : "");
        }

      if (opt_json_out != NULL && !g_file_set_contents (opt_json_out, json, -1, &error))
        {
          g_printerr ("spark-bench: %s\n", error->message);
          g_clear_error (&error);
          spinner_stop ();
          g_array_unref (results);
          return 1;
        }
    }

  spinner_stop ();

  g_array_unref (results);
  g_free (opt_workload);
  g_free (opt_impl);
  g_free (opt_json_out);
  g_free (self_path);

  return 0;
}
