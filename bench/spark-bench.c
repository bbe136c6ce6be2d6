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
 *   priority_latency    one request behind a backlog of 100k commands, of
 *                       high priority (spark_sync_high) or default: its
 *                       latency
 *   coalesce_flood      the UI flood of docs/flow-control.md: a worker
 *                       thread sends 1M "progress" commands as fast as it
 *                       can to a server on the main context with a mailbox
 *                       of capacity 4 under SPARK_OVERFLOW_COALESCE, whose
 *                       handler takes 100 us a command (a busy wait, for
 *                       drawing): the peak RSS growth, the queue's
 *                       high-water mark, how many were handled and
 *                       coalesced, and the newest value the handler saw;
 *                       spark_unbounded sends the same flood to an
 *                       unbounded mailbox, measured once it is all sent
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
 *   cpu_bound           100k requests of 50 us of CPU work each, 64 in
 *                       flight from the main loop: a server with a pool of
 *                       1 and of 2 workers, and g_task_run_in_thread()
 *                       (GLib's GTask thread pool), the idiom for it
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
 * Structure: each of the three is a Transport, a table of functions
 * (start a server around the shared BenchState as a ServerSetup asks, stop
 * it, send a command, send a request in each CallStyle it supports, wait
 * for a queued reply). Each
 * implementation (Impl: spark_sync, spark_async, spark_full, spark, floor,
 * idiom) is a row naming its transport and the CallStyle of its requests:
 *
 *   STYLE_SYNC     a blocking call (spark_dispatcher_request_sync)
 *   STYLE_ASYNC    a GAsyncReadyCallback and _finish on the client's main
 *                  loop (spark_dispatcher_request_async, the idiom's GTask)
 *   STYLE_FULL     a SparkReplyFunc on the client's main loop
 *                  (spark_dispatcher_request_full)
 *   STYLE_QUEUE    pushed, and its reply popped from a queue by the client
 *                  itself, no main loop (the floor)
 *   STYLE_COMMAND  commands only (spark; floor and idiom send commands too)
 *
 * Every workload is written once against that table; a reply comes back
 * through a Completion embedded in the client, so that no transport
 * allocates anything per request that the library does not.
 *
 * Output: one line per result on stdout,
 *   workload=<name> impl=<name> ops=<n> secs=<s> ops_per_s=<x> ns_per_op=<y> ...
 * then a summary table and the issue's targets with the measured ratios;
 * --json prints one JSON document instead. Progress goes to stderr.
 *
 * The targets are data, not code: bench/targets.txt (its own comment
 * describes the format), read at start-up from --targets FILE, by default
 * from the source tree's file (its absolute path is configured by meson);
 * editing it needs no rebuild. They are measured and printed, never
 * asserted; without the default file the section is left out, a FILE
 * given with --targets must exist, and a line that cannot be read is an
 * error before anything runs. Targets marked "contended" are printed only
 * with --contended, those marked "idle" only without it.
 *
 * Times come from the monotonic clock (the clock of g_get_monotonic_time(),
 * read with clock_gettime() for nanosecond resolution: a sequential
 * request can take less than the microsecond g_get_monotonic_time()
 * resolves). Memory is the resident set size from /proc/self/statm, after
 * malloc_trim() so that freed memory cannot hide growth; coalesce_flood
 * reads the peak (VmHWM, reset through /proc/self/clear_refs) and the
 * current size (VmRSS) from /proc/self/status. Both run each measurement
 * in a fresh process.
 *
 * Options: --quick (small counts: the test suite's smoke test), --workload
 * and --impl (comma-separated names), --ops N, --window N (requests in
 * flight in request_pipelined), --repeat N (each workload N times, its
 * implementations interleaved, medians reported), --json, --json-out FILE
 * (the JSON document written to FILE as well as the usual text output),
 * --targets FILE (see above).
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

#include "spark-bench-config.h"

#include <spark-channel.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
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
static char *opt_flood_child;
static gboolean opt_contended;
static char *opt_json_out;
static char *opt_targets;

static gboolean opt_dbus;

static int bench_dbus (gboolean quick);

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
  { "targets", 't', 0, G_OPTION_ARG_FILENAME, &opt_targets, "Read the targets to report from FILE (default: " SPARK_BENCH_TARGETS ")", "FILE" },
  { "callgrind", 0, 0, G_OPTION_ARG_NONE, &opt_callgrind, "Run one workload and one impl silently (for bench/callgrind.sh)", NULL },
  { "dbus", 0, 0, G_OPTION_ARG_NONE, &opt_dbus, "Run the D-Bus workloads only (a private bus and a socket pair; see bench_dbus())", NULL },
  { "queued-child", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_STRING, &opt_queued_child, "One queued_bytes measurement in a fresh process", "IMPL" },
  { "flood-child", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_STRING, &opt_flood_child, "One coalesce_flood measurement in a fresh process", "IMPL" },
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

/* A "VmHWM:" or "VmRSS:" line of /proc/self/status, in bytes; -1 if it
 * cannot be read. */
static gint64
proc_status_bytes (const char *field)
{
  char buf[4096];
  size_t field_len = strlen (field);
  const char *line;
  ssize_t len;
  int fd;

  fd = open ("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  len = read (fd, buf, sizeof buf - 1);
  close (fd);
  if (len <= 0)
    return -1;
  buf[len] = '\0';

  for (line = buf; line != NULL && *line != '\0'; line = strchr (line, '\n'), line = line ? line + 1 : NULL)
    {
      long long kib;

      if (strncmp (line, field, field_len) == 0 && line[field_len] == ':' &&
          sscanf (line + field_len + 1, "%lld", &kib) == 1)
        return (gint64) kib * 1024;
    }

  return -1;
}

/* Makes VmHWM the current RSS (Linux 4.0 and later); FALSE if it cannot. */
static gboolean
reset_peak_rss (void)
{
  gboolean ok;
  int fd;

  fd = open ("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return FALSE;
  ok = write (fd, "5", 1) == 1;
  close (fd);

  return ok;
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

  /* coalesce_flood (a server with ServerSetup.work_us): each command
   * busy-waits @work_ns; the newest value handled; whether FLOOD_DONE came. */
  gint64   work_ns;      /* set before start */
  gint32   last_value;
  gboolean done_seen;
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

#define FLOOD_DONE_NAME "done"

/* coalesce_flood's module, a slow UI: each "progress" costs @work_ns of
 * busy waiting (drawing) and keeps the newest value; FLOOD_DONE_NAME ends
 * the flood. */
static gboolean
bench_slow_command_func (const char    *name,
                         GVariant      *parameters,
                         GCancellable  *cancellable,
                         gpointer       user_data,
                         GError       **error)
{
  BenchState *state = user_data;
  gint64 until = now_ns () + state->work_ns;

  state->commands++;
  if (g_str_equal (name, FLOOD_DONE_NAME))
    {
      state->done_seen = TRUE;
      state->t_last_ns = now_ns ();
      return TRUE;
    }

  while (now_ns () < until)
    ;
  state->last_value = g_variant_get_int32 (parameters);

  return TRUE;
}

/* Transports ---------------------------------------------------------------------- */

#define REQUEST_NAME "get"
#define COMMAND_NAME "set"

/* How an implementation sends its requests. */
typedef enum {
  STYLE_COMMAND,    /* commands only, no requests */
  STYLE_SYNC,       /* blocks until the reply is there */
  STYLE_ASYNC,      /* a GAsyncReadyCallback and _finish, on the client's main loop */
  STYLE_FULL,       /* a SparkReplyFunc, on the client's main loop */
  STYLE_QUEUE,      /* pushed; the client pops the reply with Transport.collect */
  N_STYLES
} CallStyle;

/* The signature of SparkReplyFunc, so that request_full takes it as is. */
typedef void (*ReplyFunc) (GVariant     *reply,
                           const GError *error,
                           gpointer      user_data);

/* Where a request's reply goes: @func, called with the Completion itself
 * as user data. A client embeds one as its first member, so that a
 * transport allocates no closure per request. @func runs exactly once per
 * request: before the request function returns (STYLE_SYNC), inside
 * Transport.collect (STYLE_QUEUE), or on the client's thread-default
 * context (STYLE_ASYNC, STYLE_FULL). The reply and the error belong to the
 * transport. */
typedef struct
{
  ReplyFunc func;
} Completion;

/* Sends a request; consumes a floating @parameters; the reply goes to
 * @completion. */
typedef void (*RequestFunc) (gpointer    server,
                             const char *name,
                             GVariant   *parameters,
                             Completion *completion);

/* What a workload asks of the server it starts. */
typedef struct
{
  const char *name;       /* the server's name, or NULL for the transport's */
  gboolean    here;       /* on the caller's thread-default context, not on a
                           * thread of its own */
  gboolean    deferred;   /* requests answered by completing an object after
                           * the handler returned (spark: a BenchStage's
                           * SparkInvocation); needed by @delay_ms and @next */
  guint       delay_ms;   /* requests answered this long after they arrive */
  gpointer    next;       /* requests forwarded to this server of the same
                           * transport, answered with its reply */
  gboolean    routed;     /* spark: the module behind a SparkRouter */
  gboolean    no_metrics; /* spark: metrics-interval 0, nothing counted or timed */
  guint       capacity;   /* spark: the mailbox's capacity, 0 for unbounded */
  SparkOverflowPolicy overflow;   /* spark: its policy, with @capacity */
  guint       work_us;    /* spark: each command busy-waits this long (the
                           * coalesce_flood module), 0 for the plain one */
} ServerSetup;

/* One way of carrying the module's messages. A server is what start()
 * returns; every function but start() is called on the thread that started
 * it, send_command() also from other threads (command_mpsc's producers). A
 * transport has a request function for each CallStyle it supports, NULL
 * for the others; given a ServerSetup field it does not support, start()
 * aborts: the workload table only pairs what works. */
typedef struct
{
  gpointer  (*start)        (BenchState        *state,
                             const ServerSetup *setup);
  /* Waits until the server handled everything sent, then frees it. */
  void      (*stop)         (gpointer           server);
  /* Consumes a floating @parameters. */
  void      (*send_command) (gpointer           server,
                             const char        *name,
                             GVariant          *parameters);
  /* By CallStyle: NULL where the transport has no such style. */
  RequestFunc request[N_STYLES];
  /* STYLE_QUEUE: waits for the oldest outstanding reply and gives it to
   * @completion; NULL for the other transports. */
  void      (*collect)      (gpointer           server,
                             Completion        *completion);
} Transport;

/* One implementation: a row of the table below, named in the output. */
typedef struct
{
  const char      *name;
  const Transport *transport;
  CallStyle        style;
} Impl;

/* spark-channel ------------------------------------------------------------------- */

/* A handler that completes its invocations later: it forwards each request
 * to the next stage of a pipeline, or replies after a delay, or at once
 * (the last stage). */
#define BENCH_TYPE_STAGE (bench_stage_get_type ())
G_DECLARE_FINAL_TYPE (BenchStage, bench_stage, BENCH, STAGE, GObject)

struct _BenchStage
{
  GObject          parent_instance;

  BenchState      *state;     /* counts the requests (its server's thread); set before start */
  SparkDispatcher *next;      /* the next stage's, NULL on the last; set before start */
  guint            delay_ms;  /* the last stage replies after this long; set before start */
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

  self->state->requests++;

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

typedef struct
{
  SparkHandler      *handler;
  SparkModuleServer *server;
  SparkDispatcher   *dispatcher;
} SparkSide;

/* The router in front of the module for the *_routed rows: the module's
 * two names as exact routes, among prefix routes that take nothing here
 * (every lookup passes them), as an application with a few modules has. */
static SparkHandler *
bench_router_new (SparkHandler *module)
{
  static const char * const decoys[] = { "kv.*", "math.*", "ui.progress.*", "log.*" };
  SparkRouter *router = spark_router_new ();

  if (!spark_router_add_handler (router, REQUEST_NAME, module, NULL, NULL, NULL) ||
      !spark_router_add_handler (router, COMMAND_NAME, module, NULL, NULL, NULL))
    g_error ("Cannot add the bench's routes");
  for (guint i = 0; i < G_N_ELEMENTS (decoys); i++)
    spark_router_add_handler (router, decoys[i], module, NULL, NULL, NULL);
  g_object_unref (module);

  return SPARK_HANDLER (router);
}

/* A SparkModuleServer around the module's functions, or around a
 * BenchStage if @setup is deferred. */
static gpointer
spark_start (BenchState        *state,
             const ServerSetup *setup)
{
  SparkSide *side = g_new0 (SparkSide, 1);
  GError *error = NULL;
  gboolean started;

  g_assert (setup->deferred || (setup->delay_ms == 0 && setup->next == NULL));

  if (setup->deferred)
    {
      BenchStage *stage = g_object_new (BENCH_TYPE_STAGE, NULL);
      SparkSide *next = setup->next;

      stage->state = state;
      stage->next = next != NULL ? g_object_ref (next->dispatcher) : NULL;
      stage->delay_ms = setup->delay_ms;
      side->handler = SPARK_HANDLER (stage);
    }
  else if (setup->work_us > 0)
    {
      state->work_ns = (gint64) setup->work_us * 1000;
      side->handler = spark_func_handler_new (bench_request_func, bench_slow_command_func, state, NULL);
    }
  else
    side->handler = spark_func_handler_new (bench_request_func, bench_command_func, state, NULL);

  if (setup->routed)
    side->handler = bench_router_new (side->handler);

  side->server = spark_module_server_new (side->handler);
  spark_module_server_set_name (side->server, setup->name != NULL ? setup->name : "bench-spark");
  spark_module_server_set_capacity (side->server, setup->capacity);
  spark_module_server_set_overflow (side->server, setup->overflow);
  if (setup->no_metrics)
    spark_module_server_set_metrics_interval (side->server, 0);
  if (setup->here)
    started = spark_module_server_start (side->server, NULL, &error);
  else
    started = spark_module_server_start_in_thread (side->server, &error);
  if (!started)
    g_error ("Cannot start the server: %s", error->message);
  side->dispatcher = spark_module_server_create_dispatcher (side->server);

  return side;
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
spark_stop (gpointer server)
{
  SparkSide *side = server;
  gboolean done = FALSE;

  spark_module_server_shutdown_async (side->server, SPARK_SHUTDOWN_MODE_DRAIN, NULL,
                                      on_spark_shutdown, &done);
  while (!done)
    g_main_context_iteration (NULL, TRUE);

  g_clear_object (&side->dispatcher);
  g_clear_object (&side->server);
  g_clear_object (&side->handler);
  g_free (side);
}

static void
spark_send_command (gpointer    server,
                    const char *name,
                    GVariant   *parameters)
{
  SparkSide *side = server;
  GError *error = NULL;

  if (!spark_dispatcher_send_command (side->dispatcher, name, parameters, NULL, &error))
    g_error ("A command failed: %s", error->message);
}

static void
on_spark_async_reply (GObject      *source,
                      GAsyncResult *result,
                      gpointer      user_data)
{
  Completion *completion = user_data;
  GError *error = NULL;
  GVariant *reply;

  reply = spark_dispatcher_request_finish (SPARK_DISPATCHER (source), result, &error);
  completion->func (reply, error, completion);
  g_clear_pointer (&reply, g_variant_unref);
  g_clear_error (&error);
}

static void
spark_request_sync (gpointer    server,
                    const char *name,
                    GVariant   *parameters,
                    Completion *completion)
{
  SparkSide *side = server;
  GError *error = NULL;
  GVariant *reply;

  reply = spark_dispatcher_request_sync (side->dispatcher, name, parameters, NULL, NULL, &error);
  completion->func (reply, error, completion);
  g_clear_pointer (&reply, g_variant_unref);
  g_clear_error (&error);
}

static void
spark_request_async (gpointer    server,
                     const char *name,
                     GVariant   *parameters,
                     Completion *completion)
{
  SparkSide *side = server;

  spark_dispatcher_request_async (side->dispatcher, name, parameters, NULL, NULL,
                                  on_spark_async_reply, completion);
}

static void
spark_request_full (gpointer    server,
                    const char *name,
                    GVariant   *parameters,
                    Completion *completion)
{
  SparkSide *side = server;

  spark_dispatcher_request_full (side->dispatcher, name, parameters, NULL, NULL,
                                 completion->func, completion, NULL);
}

/* The spark transport, started by @start_func. */
#define SPARK_TRANSPORT_STARTED_BY(start_func) {   \
  .start = start_func,                             \
  .stop = spark_stop,                              \
  .send_command = spark_send_command,              \
  .request = {                                     \
    [STYLE_SYNC] = spark_request_sync,             \
    [STYLE_ASYNC] = spark_request_async,           \
    [STYLE_FULL] = spark_request_full,             \
  },                                               \
}

static const Transport spark_transport = SPARK_TRANSPORT_STARTED_BY (spark_start);

/* The same, behind a SparkRouter. */
static gpointer
spark_start_routed (BenchState        *state,
                    const ServerSetup *setup)
{
  ServerSetup routed = *setup;

  routed.routed = TRUE;
  return spark_start (state, &routed);
}

static const Transport spark_routed_transport = SPARK_TRANSPORT_STARTED_BY (spark_start_routed);

/* spark without metrics: what they cost (issue 14). */
static gpointer
spark_start_no_metrics (BenchState        *state,
                        const ServerSetup *setup)
{
  ServerSetup quiet = *setup;

  quiet.no_metrics = TRUE;
  return spark_start (state, &quiet);
}

static const Transport spark_no_metrics_transport = SPARK_TRANSPORT_STARTED_BY (spark_start_no_metrics);

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

static gpointer
floor_start (BenchState        *state,
             const ServerSetup *setup)
{
  FloorServer *server = g_new0 (FloorServer, 1);

  g_assert (!setup->here && !setup->deferred && setup->delay_ms == 0 && setup->next == NULL);

  server->requests = g_async_queue_new ();
  server->replies = g_async_queue_new ();
  server->state = state;
  server->thread = g_thread_new ("bench-floor", floor_thread_func, server);

  return server;
}

static void
floor_stop (gpointer data)
{
  FloorServer *server = data;

  g_async_queue_push (server->requests, floor_msg_new (FLOOR_STOP, "stop", NULL));
  g_thread_join (g_steal_pointer (&server->thread));
  g_assert (g_async_queue_length (server->replies) == 0);
  g_clear_pointer (&server->requests, g_async_queue_unref);
  g_clear_pointer (&server->replies, g_async_queue_unref);
  g_free (server);
}

static void
floor_send_command (gpointer    data,
                    const char *name,
                    GVariant   *parameters)
{
  FloorServer *server = data;

  g_async_queue_push (server->requests, floor_msg_new (FLOOR_COMMAND, name, parameters));
}

/* STYLE_QUEUE: the reply waits in server->replies for floor_collect(). */
static void
floor_request (gpointer    data,
               const char *name,
               GVariant   *parameters,
               Completion *completion)
{
  FloorServer *server = data;

  g_async_queue_push (server->requests, floor_msg_new (FLOOR_REQUEST, name, parameters));
}

static void
floor_collect (gpointer    data,
               Completion *completion)
{
  FloorServer *server = data;
  FloorMsg *msg = g_async_queue_pop (server->replies);

  completion->func (msg->reply, msg->error, completion);
  floor_msg_free (msg);
}

static const Transport floor_transport = {
  .start = floor_start,
  .stop = floor_stop,
  .send_command = floor_send_command,
  .request = {
    [STYLE_QUEUE] = floor_request,
  },
  .collect = floor_collect,
};

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

/* On a thread of its own, or (@setup->here) on the caller's thread-default
 * context: then requests are handled by the caller's own main loop. The
 * idiom always answers through a GTask: @setup->deferred changes nothing. */
static gpointer
idiom_start (BenchState        *state,
             const ServerSetup *setup)
{
  IdiomServer *server = g_new0 (IdiomServer, 1);

  g_assert (setup->next == NULL);

  server->state = state;
  server->delay_ms = setup->delay_ms;
  latch_init (&server->ready);
  if (setup->here)
    {
      server->context = g_main_context_ref_thread_default ();
      server->loop = NULL;
      server->thread = NULL;
    }
  else
    {
      server->context = g_main_context_new ();
      server->loop = g_main_loop_new (server->context, FALSE);
      server->thread = g_thread_new ("bench-idiom", idiom_thread_func, server);
      latch_wait (&server->ready);
    }

  return server;
}

static gboolean
idiom_quit_cb (gpointer data)
{
  IdiomServer *server = data;

  g_main_loop_quit (server->loop);
  return G_SOURCE_REMOVE;
}

static void
idiom_stop (gpointer data)
{
  IdiomServer *server = data;

  if (server->thread != NULL)
    {
      g_main_context_invoke (server->context, idiom_quit_cb, server);
      g_thread_join (g_steal_pointer (&server->thread));
      g_clear_pointer (&server->loop, g_main_loop_unref);
    }
  g_clear_pointer (&server->context, g_main_context_unref);
  latch_clear (&server->ready);
  g_free (server);
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

static void
on_idiom_reply (GObject      *source,
                GAsyncResult *result,
                gpointer      user_data)
{
  Completion *completion = user_data;
  GError *error = NULL;
  GVariant *reply;

  reply = idiom_request_finish (result, &error);
  completion->func (reply, error, completion);
  g_clear_pointer (&reply, g_variant_unref);
  g_clear_error (&error);
}

static void
idiom_request (gpointer    data,
               const char *name,
               GVariant   *parameters,
               Completion *completion)
{
  idiom_request_async (data, name, parameters, on_idiom_reply, completion);
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
idiom_send_command (gpointer    data,
                    const char *name,
                    GVariant   *parameters)
{
  IdiomServer *server = data;

  g_main_context_invoke_full (server->context, G_PRIORITY_DEFAULT, idiom_handle_command_cb,
                              idiom_call_new (server, name, parameters), idiom_call_free);
}

static const Transport idiom_transport = {
  .start = idiom_start,
  .stop = idiom_stop,
  .send_command = idiom_send_command,
  .request = {
    [STYLE_ASYNC] = idiom_request,
  },
};

/* Implementations ------------------------------------------------------------------ */

/* The baselines, by name: every result is compared with them. */
#define IMPL_FLOOR "floor"
#define IMPL_IDIOM "idiom"

static const Impl impls[] = {
  { "spark_sync",  &spark_transport, STYLE_SYNC },
  { "spark_async", &spark_transport, STYLE_ASYNC },
  { "spark_full",  &spark_transport, STYLE_FULL },
  { "spark",       &spark_transport, STYLE_COMMAND },
  { "spark_full_routed", &spark_routed_transport, STYLE_FULL },
  { "spark_routed", &spark_routed_transport, STYLE_COMMAND },
  { "spark_full_nometrics", &spark_no_metrics_transport, STYLE_FULL },
  { "spark_sync_high", &spark_transport, STYLE_SYNC },
  /* cpu_bound: its own servers (a pool of 1 or 2 workers) and GTask's thread pool */
  { "spark_pool1", &spark_transport, STYLE_FULL },
  { "spark_pool2", &spark_transport, STYLE_FULL },
  { "gtask_thread", &idiom_transport, STYLE_ASYNC },
  { "spark_coalesce", &spark_transport, STYLE_COMMAND },
  { "spark_unbounded", &spark_transport, STYLE_COMMAND },
  { IMPL_FLOOR,    &floor_transport, STYLE_QUEUE },
  { IMPL_IDIOM,    &idiom_transport, STYLE_ASYNC },
};

static const Impl *
impl_find (const char *name)
{
  for (guint i = 0; i < G_N_ELEMENTS (impls); i++)
    if (g_str_equal (impls[i].name, name))
      return &impls[i];

  return NULL;
}

/* Results ------------------------------------------------------------------------ */

typedef struct
{
  const char *workload;
  const char *impl;
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
  gboolean    has_flood;       /* coalesce_flood: */
  double      capacity;        /* the mailbox's */
  double      handler_us;      /* what the handler spends on a command */
  double      max_pending;     /* the most pending seen after a send (max over runs) */
  double      handled;         /* commands handled, the last one included */
  double      dropped;         /* commands coalesced, as messages-dropped counted them */
  double      reports;         /* messages-dropped emissions */
  double      last_value;      /* the newest value the handler saw */
  double      peak_growth;     /* bytes: VmHWM at the end over VmRSS at the start */
  double      rss_growth;      /* bytes: VmRSS at the end over VmRSS at the start */
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

static void
result_set_cpu (Result *result,
                gint64  cpu_elapsed_ns)
{
  result->has_cpu = TRUE;
  result->cpu_ns = (double) cpu_elapsed_ns;
}

/* Requests ------------------------------------------------------------------------- */

/* A client keeping @window requests in flight, in any CallStyle: on its
 * main loop (the default context) for STYLE_ASYNC and STYLE_FULL, each
 * reply sending the next request; in a loop of its own for STYLE_SYNC
 * (window 1: each request returns with its reply) and STYLE_QUEUE (it pops
 * each reply, then sends the next). */
typedef struct
{
  Completion   completion;   /* first: the transports hand it back */
  const Impl  *impl;
  RequestFunc  request;      /* the impl's, for its style */
  gpointer     server;
  guint64      n;
  guint64      window;
  guint64      sent;
  guint64      completed;
  gint64       reply_sum;
  gint64      *latencies;    /* NULL, or one per request; accurate with window 1 */
  gint64       t_sent;
  gint64       t_end;
  GMainLoop   *loop;         /* NULL for the blocking styles */
} Client;

static void client_on_reply (GVariant     *reply,
                             const GError *error,
                             gpointer      user_data);

static void
client_init (Client      *client,
             const Impl  *impl,
             gpointer     server,
             guint64      n,
             guint64      window,
             gint64      *latencies)
{
  memset (client, 0, sizeof *client);
  client->completion.func = client_on_reply;
  client->impl = impl;
  client->request = impl->transport->request[impl->style];
  client->server = server;
  client->n = n;
  client->window = window;
  client->latencies = latencies;
}

static void
client_send (Client *client)
{
  gint32 value = (gint32) client->sent++;

  if (client->latencies != NULL)
    client->t_sent = now_ns ();

  client->request (client->server, REQUEST_NAME, g_variant_new_int32 (value), &client->completion);
}

static void
client_on_reply (GVariant     *reply,
                 const GError *error,
                 gpointer      user_data)
{
  Client *client = user_data;

  if (reply == NULL)
    g_error ("A request failed: %s", error ? error->message : "no error");

  if (client->latencies != NULL)
    client->latencies[client->completed] = now_ns () - client->t_sent;

  client->reply_sum += g_variant_get_int32 (reply);
  client->completed++;

  /* A blocking client sends the next request from its own loop. */
  if (client->loop == NULL)
    return;

  if (client->sent < client->n)
    client_send (client);
  else if (client->completed == client->n)
    {
      client->t_end = now_ns ();
      g_main_loop_quit (client->loop);
    }
}

/* Returns the time from the first send to the last reply. */
static gint64
client_run (Client *client)
{
  CallStyle style = client->impl->style;
  gboolean on_main_loop = style == STYLE_ASYNC || style == STYLE_FULL;
  void (*collect) (gpointer, Completion *) = client->impl->transport->collect;
  gint64 t0;

  g_assert (client->request != NULL);
  g_assert (style != STYLE_SYNC || client->window == 1);
  g_assert (style != STYLE_QUEUE || collect != NULL);

  if (on_main_loop)
    client->loop = g_main_loop_new (NULL, FALSE);

  t0 = now_ns ();
  while (client->sent < client->window && client->sent < client->n)
    client_send (client);

  if (on_main_loop)
    g_main_loop_run (client->loop);
  else
    {
      while (client->completed < client->n)
        {
          if (style == STYLE_QUEUE)
            collect (client->server, &client->completion);
          if (client->sent < client->n)
            client_send (client);
        }
      client->t_end = now_ns ();
    }

  g_clear_pointer (&client->loop, g_main_loop_unref);

  return client->t_end - t0;
}

static void
run_requests (const Impl *impl,
              guint64     n,
              guint64     window,
              gboolean    measure_latency,
              Result     *result)
{
  const ServerSetup setup = { NULL, };
  BenchState state;
  Client client;
  gint64 *lat = measure_latency ? g_new (gint64, n) : NULL;
  gint64 expected_sum = (gint64) n * (gint64) (n - 1) / 2;
  gint64 elapsed;
  gpointer server;

  bench_state_init (&state, 0);
  server = impl->transport->start (&state, &setup);

  client_init (&client, impl, server, n, window, lat);
  elapsed = client_run (&client);

  impl->transport->stop (server);

  if (client.reply_sum != expected_sum || state.requests != n)
    g_error ("%s: lost or wrong replies: %" G_GUINT64_FORMAT " handled of %" G_GUINT64_FORMAT
             ", sum %" G_GINT64_FORMAT " instead of %" G_GINT64_FORMAT,
             impl->name, state.requests, n, client.reply_sum, expected_sum);

  result_set_time (result, n, elapsed);
  if (lat != NULL)
    result_set_latencies (result, lat, n);

  g_free (lat);
  bench_state_clear (&state);
}

static void
run_request_seq (const Impl *impl,
                 guint64     n,
                 Result     *result)
{
  run_requests (impl, n, 1, !opt_callgrind, result);
}

static void
run_request_pipelined (const Impl *impl,
                       guint64     n,
                       Result     *result)
{
  run_requests (impl, n, (guint64) MAX (opt_window, 1), FALSE, result);
}

/* priority_latency: one request right behind a backlog of commands ---------- */

/* The server runs on this thread's context, which is not iterated while
 * --ops commands are queued: a real backlog. Then one request_full, of
 * high priority for spark_sync_high, default for spark_sync, and the
 * context runs until its reply. The figure is that request's latency
 * (ns/op, p50), taken --repeat times: default waits for the whole backlog,
 * high for the server's first pass (it is taken first, and the reply goes
 * out when that pass ends, after at most one budget of messages). */
static void
on_priority_reply (GVariant     *reply,
                   const GError *error,
                   gpointer      user_data)
{
  gint64 *t_reply = user_data;

  if (error != NULL)
    g_error ("priority_latency: the request failed: %s", error->message);
  *t_reply = now_ns ();
}

static void
run_priority_latency (const Impl *impl,
                      guint64     n,
                      Result     *result)
{
  ServerSetup setup = { NULL, };
  gboolean high = g_str_has_suffix (impl->name, "_high");
  BenchState state;
  SparkSide *side;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  gint64 t0, t_reply = 0;

  setup.here = TRUE;
  bench_state_init (&state, 0);
  side = impl->transport->start (&state, &setup);
  dispatcher = spark_dispatcher_with_priority (side->dispatcher,
                                               high ? SPARK_PRIORITY_HIGH : SPARK_PRIORITY_DEFAULT);

  for (guint64 i = 0; i < n; i++)
    impl->transport->send_command (side, COMMAND_NAME, g_variant_new_int32 ((gint32) i));

  t0 = now_ns ();
  spark_dispatcher_request_full (dispatcher, REQUEST_NAME, g_variant_new_int32 (1), NULL, NULL,
                                 on_priority_reply, &t_reply, NULL);
  while (t_reply == 0)
    g_main_context_iteration (NULL, TRUE);

  g_clear_object (&dispatcher);
  impl->transport->stop (side);

  result_set_time (result, 1, t_reply - t0);
  result->has_latency = TRUE;
  result->p50_ns = result->p99_ns = (double) (t_reply - t0);
}

/* Commands ------------------------------------------------------------------------- */

typedef struct
{
  BenchState  state;
  const Impl *impl;
  gpointer    server;
} CommandRun;

static void
command_run_send (CommandRun *run,
                  gint32      value)
{
  run->impl->transport->send_command (run->server, COMMAND_NAME, g_variant_new_int32 (value));
}

typedef struct
{
  CommandRun *run;
  Latch      *gate;
  guint64     first;
  guint64     count;
} Producer;

static gpointer
producer_thread_func (gpointer data)
{
  Producer *producer = data;

  latch_wait (producer->gate);
  for (guint64 i = 0; i < producer->count; i++)
    command_run_send (producer->run, (gint32) (producer->first + i));

  return NULL;
}

static void
command_run_start (CommandRun *run,
                   const Impl *impl,
                   guint64     target)
{
  const ServerSetup setup = { NULL, };

  bench_state_init (&run->state, target);
  run->impl = impl;
  run->server = impl->transport->start (&run->state, &setup);
}

/* Waits until every command was handled, checks them and stops the server. */
static void
command_run_finish (CommandRun *run,
                    guint64     n)
{
  gint64 expected_sum = (gint64) n * (gint64) (n - 1) / 2;

  latch_wait (&run->state.done);

  run->impl->transport->stop (g_steal_pointer (&run->server));

  if (run->state.commands != n || run->state.sum != expected_sum)
    g_error ("%s: lost commands: %" G_GUINT64_FORMAT " handled of %" G_GUINT64_FORMAT,
             run->impl->name, run->state.commands, n);

  bench_state_clear (&run->state);
}

static void
run_commands (const Impl *impl,
              guint64     n,
              guint       n_producers,
              Result     *result)
{
  CommandRun run;
  gint64 t0;

  command_run_start (&run, impl, n);

  if (n_producers <= 1)
    {
      t0 = now_ns ();
      for (guint64 i = 0; i < n; i++)
        command_run_send (&run, (gint32) i);
    }
  else
    {
      Producer *producers = g_new0 (Producer, n_producers);
      GThread **threads = g_new0 (GThread *, n_producers);
      Latch gate;

      latch_init (&gate);
      for (guint p = 0; p < n_producers; p++)
        {
          producers[p].run = &run;
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
run_command_throughput (const Impl *impl,
                        guint64     n,
                        Result     *result)
{
  run_commands (impl, n, 1, result);
}

static void
run_command_mpsc (const Impl *impl,
                  guint64     n,
                  Result     *result)
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
measure_queued (const Impl *impl,
                guint64     n,
                Result     *result)
{
  CommandRun run;
  gint64 rss0;
  gint64 rss1;
  gint64 t0;
  gint64 t1;

  command_run_start (&run, impl, n);

  /* Block the server in its first command. */
  run.state.block_first = TRUE;
  command_run_send (&run, -1);
  latch_wait (&run.state.blocked);

  trim_heap ();
  rss0 = rss_bytes ();
  t0 = now_ns ();
  for (guint64 i = 0; i < n; i++)
    command_run_send (&run, (gint32) i);
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
  const Impl *impl;

  if (g_str_equal (impl_name, "variant"))
    {
      printf ("secs=0 bytes=%.4f\n", measure_variant_bytes (n));
      return 0;
    }

  impl = impl_find (impl_name);
  if (impl == NULL)
    {
      g_printerr ("spark-bench: unknown implementation '%s'\n", impl_name);
      return 2;
    }

  measure_queued (impl, n, &result);
  printf ("secs=%.9f bytes=%.4f\n", result.secs, result.bytes_per_msg);
  return 0;
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
run_queued_bytes (const Impl *impl,
                  guint64     n,
                  Result     *result)
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
  spawn_queued_child (impl->name, n, &secs, &bytes);

  result_set_time (result, n, (gint64) (secs * 1e9));
  result->has_bytes = TRUE;
  result->bytes_per_msg = bytes;
}

/* coalesce_flood: a worker floods a slow UI with progress ----------------- */

#define FLOOD_CAPACITY   4
#define FLOOD_WORK_US    100
#define FLOOD_NAME       "progress"
#define FLOOD_WATCHDOG_S 60

typedef struct
{
  SparkSide *side;
  guint64    n;
  guint      max_pending;   /* the producer's, read after it is joined */
  gint       sent;          /* atomic: everything was sent */
} FloodProducer;

/* The worker: @n progress commands as fast as send_command() lets it (it
 * waits only when the one queued "progress" has been taken, until the UI
 * begins the next message), then FLOOD_DONE_NAME. */
static gpointer
flood_producer_func (gpointer data)
{
  FloodProducer *producer = data;

  for (guint64 i = 0; i < producer->n; i++)
    {
      guint pending;

      spark_send_command (producer->side, FLOOD_NAME, g_variant_new_int32 ((gint32) i));
      pending = spark_module_server_get_pending (producer->side->server);
      producer->max_pending = MAX (producer->max_pending, pending);
    }
  spark_send_command (producer->side, FLOOD_DONE_NAME, NULL);
  g_atomic_int_set (&producer->sent, TRUE);
  g_main_context_wakeup (NULL);

  return NULL;
}

typedef struct
{
  guint64 dropped;
  guint   reports;
} FloodDrops;

static void
on_flood_dropped (SparkModuleServer *server,
                  guint              count,
                  gpointer           user_data)
{
  FloodDrops *drops = user_data;

  drops->dropped += count;
  drops->reports++;
}

static gboolean
flood_tick (gpointer data)
{
  return G_SOURCE_CONTINUE;   /* only wakes the loop to look at the clock */
}

static void
on_flood_aborted (GObject      *source,
                  GAsyncResult *result,
                  gpointer      user_data)
{
  gboolean *done = user_data;

  spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, NULL);
  *done = TRUE;
}

/* One flood, in this process: the server on this thread's context (the
 * UI's), which this thread iterates until the handler has seen
 * FLOOD_DONE_NAME and handled plus reported drops is everything sent.
 *
 * spark_unbounded, the comparison, sends the same flood to an unbounded
 * mailbox: its queue holds what the handler has not reached, which at
 * 100 us a command would take minutes to drain. It is measured once
 * everything is sent, then the server aborts, dropping the rest. */
static void
measure_flood (const Impl *impl,
               guint64     n,
               Result     *result)
{
  ServerSetup setup = { NULL, };
  FloodProducer producer = { NULL, };
  FloodDrops drops = { 0, };
  BenchState state;
  GThread *thread;
  gboolean bounded = !g_str_equal (impl->name, "spark_unbounded");
  gint64 rss0, rss1, hwm1;
  gint64 t0, deadline;
  guint tick_id;

  setup.name = "bench-ui";
  setup.here = TRUE;
  setup.capacity = bounded ? FLOOD_CAPACITY : 0;
  setup.overflow = bounded ? SPARK_OVERFLOW_COALESCE : SPARK_OVERFLOW_WAIT;
  setup.work_us = FLOOD_WORK_US;
  bench_state_init (&state, 0);
  producer.side = impl->transport->start (&state, &setup);
  producer.n = n;
  g_signal_connect (producer.side->server, "messages-dropped", G_CALLBACK (on_flood_dropped), &drops);

  /* The start: a server running, no worker yet. */
  trim_heap ();
  if (!reset_peak_rss ())
    g_printerr ("coalesce_flood: cannot reset VmHWM: the peak may predate the flood\n");
  rss0 = proc_status_bytes ("VmRSS");

  t0 = now_ns ();
  thread = g_thread_new ("bench-worker", flood_producer_func, &producer);
  tick_id = g_timeout_add (100, flood_tick, NULL);
  deadline = g_get_monotonic_time () + FLOOD_WATCHDOG_S * G_USEC_PER_SEC;
  while (bounded ? !state.done_seen || state.commands + drops.dropped < n + 1
                 : !g_atomic_int_get (&producer.sent))
    {
      g_main_context_iteration (NULL, TRUE);
      if (g_get_monotonic_time () > deadline)
        g_error ("coalesce_flood: %" G_GUINT64_FORMAT " handled and %" G_GUINT64_FORMAT
                 " reported dropped of %" G_GUINT64_FORMAT " after %d s",
                 state.commands, drops.dropped, n + 1, FLOOD_WATCHDOG_S);
    }
  g_source_remove (tick_id);
  hwm1 = proc_status_bytes ("VmHWM");
  rss1 = proc_status_bytes ("VmRSS");
  g_thread_join (thread);

  if (!bounded)
    {
      gboolean aborted = FALSE;

      state.t_last_ns = now_ns ();   /* the flood has been sent */
      result_set_time (result, n, state.t_last_ns - t0);
      result->has_flood = TRUE;
      result->handler_us = FLOOD_WORK_US;
      result->max_pending = producer.max_pending;
      result->handled = (double) state.commands;
      result->last_value = state.last_value;
      result->peak_growth = rss0 >= 0 && hwm1 >= 0 ? (double) (hwm1 - rss0) : 0;
      result->rss_growth = rss0 >= 0 && rss1 >= 0 ? (double) (rss1 - rss0) : 0;

      spark_module_server_shutdown_async (producer.side->server, SPARK_SHUTDOWN_MODE_ABORT, NULL,
                                          on_flood_aborted, &aborted);
      while (!aborted)
        g_main_context_iteration (NULL, TRUE);
      impl->transport->stop (producer.side);   /* stopped already: frees it */
      bench_state_clear (&state);
      return;
    }

  impl->transport->stop (producer.side);

  if (state.commands + drops.dropped != n + 1)
    g_error ("coalesce_flood: %" G_GUINT64_FORMAT " handled and %" G_GUINT64_FORMAT
             " reported dropped of %" G_GUINT64_FORMAT " sent", state.commands, drops.dropped, n + 1);
  if (producer.max_pending > FLOOD_CAPACITY)
    g_error ("coalesce_flood: %u pending in a mailbox of %u", producer.max_pending, FLOOD_CAPACITY);
  if (state.last_value != (gint32) (n - 1))
    g_error ("coalesce_flood: the handler's last value is %d, not %" G_GUINT64_FORMAT,
             state.last_value, n - 1);

  result_set_time (result, n, state.t_last_ns - t0);
  result->has_flood = TRUE;
  result->capacity = FLOOD_CAPACITY;
  result->handler_us = FLOOD_WORK_US;
  result->max_pending = producer.max_pending;
  result->handled = (double) state.commands;
  result->dropped = (double) drops.dropped;
  result->reports = drops.reports;
  result->last_value = state.last_value;
  result->peak_growth = rss0 >= 0 && hwm1 >= 0 ? (double) (hwm1 - rss0) : 0;
  result->rss_growth = rss0 >= 0 && rss1 >= 0 ? (double) (rss1 - rss0) : 0;
  bench_state_clear (&state);
}

#define FLOOD_CHILD_FORMAT \
  "secs=%lf max_pending=%lf handled=%lf dropped=%lf reports=%lf last=%lf peak=%lf rss=%lf"

/* --flood-child IMPL: one measure_flood(), printed for the parent. */
static int
flood_child_main (const char *impl_name,
                  guint64     n)
{
  Result result = { 0, };
  const Impl *impl = impl_find (impl_name);

  if (impl == NULL)
    {
      g_printerr ("spark-bench: unknown implementation '%s'\n", impl_name);
      return 2;
    }

  measure_flood (impl, n, &result);
  printf ("secs=%.9f max_pending=%.0f handled=%.0f dropped=%.0f reports=%.0f last=%.0f peak=%.0f rss=%.0f\n",
          result.secs, result.max_pending, result.handled, result.dropped, result.reports,
          result.last_value, result.peak_growth, result.rss_growth);
  return 0;
}

/* In a fresh process, like queued_bytes, so that the peak is the flood's
 * and no earlier workload's freed memory absorbs its growth. */
static void
run_coalesce_flood (const Impl *impl,
                    guint64     n,
                    Result     *result)
{
  g_autofree char *ops = g_strdup_printf ("%" G_GUINT64_FORMAT, n);
  const char *child_argv[] = { self_path, "--flood-child", impl->name, "--ops", ops, NULL };
  g_autofree char *out = NULL;
  GError *error = NULL;
  double secs;
  int status;

  if (opt_callgrind)
    {
      measure_flood (impl, n, result);
      return;
    }

  if (!g_spawn_sync (NULL, (char **) child_argv, NULL, G_SPAWN_CHILD_INHERITS_STDIN, NULL, NULL,
                     &out, NULL, &status, &error) ||
      !g_spawn_check_wait_status (status, &error))
    g_error ("coalesce_flood: cannot run %s: %s", self_path, error->message);

  if (sscanf (out, FLOOD_CHILD_FORMAT, &secs, &result->max_pending, &result->handled,
              &result->dropped, &result->reports, &result->last_value,
              &result->peak_growth, &result->rss_growth) != 8)
    g_error ("coalesce_flood: unexpected output from the child: %s", out);

  result_set_time (result, n, (gint64) (secs * 1e9));
  result->has_flood = TRUE;
  result->capacity = g_str_equal (impl->name, "spark_unbounded") ? 0 : FLOOD_CAPACITY;
  result->handler_us = FLOOD_WORK_US;
}

/* CPU time next to wall time ------------------------------------------------------ */

/* same_context: the server on the requester's own context, so the thread
 * that waits for a reply is the one that must make it. */
static void
run_same_context (const Impl *impl,
                  guint64     n,
                  Result     *result)
{
  ServerSetup setup = { NULL, };
  BenchState state;
  Client client;
  gint64 expected_sum = (gint64) n * (gint64) (n - 1) / 2;
  gint64 elapsed;
  gint64 c0;
  gint64 c1;
  gpointer server;

  setup.here = TRUE;
  bench_state_init (&state, 0);
  server = impl->transport->start (&state, &setup);

  client_init (&client, impl, server, n, 1, opt_callgrind ? NULL : g_new (gint64, n));
  c0 = cpu_ns ();
  elapsed = client_run (&client);
  c1 = cpu_ns ();

  impl->transport->stop (server);

  if (client.reply_sum != expected_sum || state.requests != n)
    g_error ("same_context %s: lost or wrong replies: %" G_GUINT64_FORMAT " handled of %"
             G_GUINT64_FORMAT, impl->name, state.requests, n);

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
 * of its own, forwarding from its handler (spark: request_full from
 * handle_invocation) and answering with the next stage's reply. */
static void
run_pipeline (const Impl *impl,
              guint64     n,
              Result     *result)
{
  BenchState states[PIPELINE_STAGES];
  gpointer stages[PIPELINE_STAGES];
  Client client;
  gint64 expected_sum = (gint64) n * (gint64) (n - 1) / 2;
  gint64 elapsed;
  gint64 c0;
  gint64 c1;

  /* The last stage first: each one needs the next one. */
  for (gint i = PIPELINE_STAGES - 1; i >= 0; i--)
    {
      ServerSetup setup = { NULL, };
      char name[32];

      g_snprintf (name, sizeof name, "bench-stage-%d", i + 1);
      setup.name = name;
      setup.deferred = TRUE;
      setup.next = i + 1 < PIPELINE_STAGES ? stages[i + 1] : NULL;
      bench_state_init (&states[i], 0);
      stages[i] = impl->transport->start (&states[i], &setup);
    }

  client_init (&client, impl, stages[0], n, PIPELINE_WINDOW, NULL);
  c0 = cpu_ns ();
  elapsed = client_run (&client);
  c1 = cpu_ns ();

  /* The first stage first, so that each one stops after its callers. Every
   * reply arrived: the stages' counters are final. */
  for (guint i = 0; i < PIPELINE_STAGES; i++)
    {
      if (states[i].requests != n)
        g_error ("pipeline %s: stage %u handled %" G_GUINT64_FORMAT " requests of %" G_GUINT64_FORMAT,
                 impl->name, i + 1, states[i].requests, n);
      impl->transport->stop (stages[i]);
      bench_state_clear (&states[i]);
    }

  if (client.reply_sum != expected_sum)
    g_error ("pipeline %s: wrong replies", impl->name);

  result_set_time (result, n, elapsed);
  result_set_cpu (result, c1 - c0);
}

/* ui_idle_cpu: a UI thread's main loop waiting for a slow reply. */
typedef struct
{
  Completion completion;   /* first: the transport hands it back */
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
on_idle_reply (GVariant     *reply,
               const GError *error,
               gpointer      user_data)
{
  IdleWait *wait = user_data;

  wait->cpu_end = cpu_ns ();
  wait->t_end = now_ns ();
  if (reply == NULL)
    g_error ("ui_idle_cpu: the request failed: %s", error ? error->message : "no error");
  wait->reply = g_variant_get_int32 (reply);
  g_main_loop_quit (wait->loop);
}

#define UI_IDLE_VALUE 42

static void
run_ui_idle_cpu (const Impl *impl,
                 guint64     delay_ms,
                 Result     *result)
{
  IdleWait wait = { { on_idle_reply }, NULL, };
  ServerSetup setup = { NULL, };
  BenchState state;
  gpointer server;
  guint tick_id;
  gint64 t0;
  gint64 c0;

  g_assert (impl->style == STYLE_ASYNC || impl->style == STYLE_FULL);
  g_assert (impl->transport->request[impl->style] != NULL);

  bench_state_init (&state, 0);
  wait.loop = g_main_loop_new (NULL, FALSE);
  tick_id = g_timeout_add (UI_TICK_MS, on_ui_tick, &wait);

  setup.name = "bench-slow";
  setup.deferred = TRUE;
  setup.delay_ms = (guint) delay_ms;
  server = impl->transport->start (&state, &setup);

  t0 = now_ns ();
  c0 = cpu_ns ();
  impl->transport->request[impl->style] (server, REQUEST_NAME, g_variant_new_int32 (UI_IDLE_VALUE),
                                         &wait.completion);
  g_main_loop_run (wait.loop);
  impl->transport->stop (server);

  g_source_remove (tick_id);
  g_main_loop_unref (wait.loop);

  if (wait.reply != UI_IDLE_VALUE)
    g_error ("ui_idle_cpu %s: wrong reply %d", impl->name, wait.reply);

  result_set_time (result, 1, wait.t_end - t0);
  result_set_cpu (result, wait.cpu_end - c0);
  result->ticks = wait.ticks;
  bench_state_clear (&state);
}

/* CPU-bound requests ------------------------------------------------------------ */

/* cpu_bound: requests that each take CPU_WORK_USEC of the handler's CPU,
 * pipelined (CPU_WINDOW in flight) from the main loop, to a server with a
 * pool of one or two workers, and the idiom for it: g_task_run_in_thread()
 * (GLib's GTask thread pool) with the callback on the main loop. */

#define CPU_WORK_USEC 50
#define CPU_WINDOW    64

static guint cpu_work_rounds;   /* calibrated once: rounds of cpu_work() in CPU_WORK_USEC */
static volatile guint32 cpu_work_sink;

/* Work the compiler cannot skip: an xorshift walk seeded by the request. */
static guint32
cpu_work (guint32 seed)
{
  guint32 x = seed | 1;

  for (guint i = 0; i < cpu_work_rounds; i++)
    {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
    }
  return x;
}

static gint64
thread_cpu_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_THREAD_CPUTIME_ID, &ts);
  return (gint64) ts.tv_sec * G_GINT64_CONSTANT (1000000000) + ts.tv_nsec;
}

/* This thread's CPU time, the fastest of five runs: neither other threads
 * nor a busy machine's preemptions count. */
static void
cpu_work_calibrate (void)
{
  gint64 best = G_MAXINT64;

  if (cpu_work_rounds != 0)
    return;
  cpu_work_rounds = 1000000;
  for (guint i = 0; i < 5; i++)
    {
      gint64 t0 = thread_cpu_ns ();

      cpu_work_sink = cpu_work (7 + i);   /* kept: a result nobody reads could be skipped */
      best = MIN (best, MAX (thread_cpu_ns () - t0, 1));
    }
  cpu_work_rounds = (guint) MAX (1, (gint64) 1000000 * CPU_WORK_USEC * 1000 / best);
}

typedef struct
{
  GMainLoop *loop;
  guint64    n;
  guint64    sent;
  guint64    done;
  SparkDispatcher *dispatcher;   /* spark */
} CpuRun;

static GVariant *
cpu_request_func (const char    *name,
                  GVariant      *parameters,
                  GCancellable  *cancellable,
                  gpointer       user_data,
                  GError       **error)
{
  guint32 seed = g_variant_get_uint32 (parameters);

  return g_variant_new_uint32 (cpu_work (seed));
}

static void cpu_send_spark (CpuRun *run);

static void
on_cpu_spark_reply (GVariant     *reply,
                    const GError *error,
                    gpointer      user_data)
{
  CpuRun *run = user_data;

  if (reply == NULL)
    g_error ("cpu_bound: a request failed: %s", error ? error->message : "no error");
  run->done++;
  if (run->sent < run->n)
    cpu_send_spark (run);
  else if (run->done == run->n)
    g_main_loop_quit (run->loop);
}

static void
cpu_send_spark (CpuRun *run)
{
  guint32 seed = (guint32) run->sent++;

  spark_dispatcher_request_full (run->dispatcher, REQUEST_NAME, g_variant_new_uint32 (seed),
                                 G_VARIANT_TYPE_UINT32, NULL, on_cpu_spark_reply, run, NULL);
}

static void
cpu_task_thread (GTask        *task,
                 gpointer      source_object,
                 gpointer      task_data,
                 GCancellable *cancellable)
{
  g_task_return_int (task, cpu_work (GPOINTER_TO_UINT (task_data)));
}

static void cpu_send_task (CpuRun *run);

static void
on_cpu_task_done (GObject      *source,
                  GAsyncResult *result,
                  gpointer      user_data)
{
  CpuRun *run = user_data;
  GError *error = NULL;

  if (g_task_propagate_int (G_TASK (result), &error) < 0 && error != NULL)
    g_error ("cpu_bound: a task failed: %s", error->message);
  run->done++;
  if (run->sent < run->n)
    cpu_send_task (run);
  else if (run->done == run->n)
    g_main_loop_quit (run->loop);
}

static void
cpu_send_task (CpuRun *run)
{
  GTask *task = g_task_new (NULL, NULL, on_cpu_task_done, run);

  g_task_set_task_data (task, GUINT_TO_POINTER ((guint32) run->sent++), NULL);
  g_task_run_in_thread (task, cpu_task_thread);
  g_object_unref (task);
}

static void
run_cpu_bound (const Impl *impl,
               guint64     n,
               Result     *result)
{
  CpuRun run = { NULL, };
  g_autoptr(SparkModuleServer) server = NULL;
  gboolean spark = g_str_has_prefix (impl->name, "spark_pool");
  gint64 t0, c0;

  cpu_work_calibrate ();
  run.loop = g_main_loop_new (NULL, FALSE);
  run.n = n;

  if (spark)
    {
      g_autoptr(SparkHandler) handler = spark_func_handler_new_full (SPARK_HANDLER_FLAGS_CONCURRENT,
                                                                     cpu_request_func, NULL, NULL, NULL);
      GError *error = NULL;

      server = spark_module_server_new (handler);
      spark_module_server_set_name (server, "bench-cpu");
      spark_module_server_set_workers (server, g_str_equal (impl->name, "spark_pool2") ? 2 : 1);
      if (!spark_module_server_start_in_thread (server, &error))
        g_error ("cpu_bound: %s", error->message);
      run.dispatcher = spark_module_server_create_dispatcher (server);
    }

  t0 = now_ns ();
  c0 = cpu_ns ();
  for (guint i = 0; i < CPU_WINDOW && run.sent < n; i++)
    {
      if (spark)
        cpu_send_spark (&run);
      else
        cpu_send_task (&run);
    }
  g_main_loop_run (run.loop);
  result_set_time (result, n, now_ns () - t0);
  result_set_cpu (result, cpu_ns () - c0);

  if (spark)
    {
      gboolean done = FALSE;

      g_clear_object (&run.dispatcher);
      spark_module_server_shutdown_async (server, SPARK_SHUTDOWN_MODE_DRAIN, NULL,
                                          on_spark_shutdown, &done);
      while (!done)
        g_main_context_iteration (NULL, TRUE);
    }
  g_main_loop_unref (run.loop);
}

/* Workloads ------------------------------------------------------------------------ */

typedef void (*RunFunc) (const Impl *impl,
                         guint64     n,
                         Result     *result);

#define MAX_WORKLOAD_IMPLS 6

typedef struct
{
  const char *name;
  guint64     ops;
  guint64     quick_ops;
  RunFunc     run;
  const char *impls[MAX_WORKLOAD_IMPLS + 1];   /* names in impls[], NULL-terminated */
} Workload;

static const Workload workloads[] = {
  { "request_seq", 200000, 2000, run_request_seq,
    { "spark_sync", "spark_async", IMPL_FLOOR, IMPL_IDIOM, NULL } },
  { "request_pipelined", 1000000, 20000, run_request_pipelined,
    { "spark_async", "spark_full", "spark_full_routed", "spark_full_nometrics", IMPL_FLOOR, IMPL_IDIOM, NULL } },
  { "command_throughput", 2000000, 20000, run_command_throughput,
    { "spark", "spark_routed", IMPL_FLOOR, IMPL_IDIOM, NULL } },
  { "command_mpsc", 2000000, 20000, run_command_mpsc,
    { "spark", IMPL_FLOOR, IMPL_IDIOM, NULL } },
  { "queued_bytes", 1000000, 20000, run_queued_bytes,
    { "spark", IMPL_FLOOR, IMPL_IDIOM, NULL } },
  { "same_context", 10000, 500, run_same_context,
    { "spark_async", "spark_full", IMPL_IDIOM, NULL } },
  { "pipeline", 20000, 2000, run_pipeline,
    { "spark_full", "spark_async", NULL } },
  /* ops: the backlog of commands in front of the one request */
  { "priority_latency", 100000, 2000, run_priority_latency,
    { "spark_sync_high", "spark_sync", NULL } },
  { "cpu_bound", 100000, 2000, run_cpu_bound,
    { "spark_pool1", "spark_pool2", "gtask_thread", NULL } },
  /* ops: the progress commands sent (one more ends the flood) */
  { "coalesce_flood", 1000000, 20000, run_coalesce_flood,
    { "spark_coalesce", "spark_unbounded", NULL } },
  /* ops: the handler's delay in ms */
  { "ui_idle_cpu", 2000, 100, run_ui_idle_cpu,
    { "spark_async", IMPL_IDIOM, NULL } },
};

static const Workload *
workload_find (const char *name)
{
  for (guint w = 0; w < G_N_ELEMENTS (workloads); w++)
    if (g_str_equal (workloads[w].name, name))
      return &workloads[w];

  return NULL;
}

static gboolean
workload_has_impl (const Workload *workload,
                   const char     *impl)
{
  return g_strv_contains (workload->impls, impl);
}

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
  MEDIAN_OF (handled);
  MEDIAN_OF (dropped);
  MEDIAN_OF (reports);
  MEDIAN_OF (last_value);
  MEDIAN_OF (peak_growth);
  MEDIAN_OF (rss_growth);

#undef MEDIAN_OF

  /* A bound, not a typical value: the worst run's. */
  for (guint i = 0; i < n; i++)
    out->max_pending = MAX (out->max_pending, runs[i].max_pending);

  g_free (values);
}

static const Result *
find_result (GArray     *results,
             const char *workload,
             const char *impl)
{
  for (guint i = 0; i < results->len; i++)
    {
      const Result *r = &g_array_index (results, Result, i);

      if (g_str_equal (r->workload, workload) && g_str_equal (r->impl, impl))
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
  if (floor_r != NULL && floor_r != r)
    {
      printf (" speedup_vs_floor=%.2f", r->ops_per_s / floor_r->ops_per_s);
      if (r->has_latency && floor_r->p50_ns > 0)
        printf (" p50_vs_floor=%.2f", r->p50_ns / floor_r->p50_ns);
    }
  if (idiom_r != NULL && idiom_r != r)
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
  if (r->has_flood)
    printf (" capacity=%.0f handler_us=%.0f max_pending=%.0f handled=%.0f dropped=%.0f reports=%.0f"
            " last_value=%.0f peak_rss_growth_kib=%.0f rss_growth_kib=%.0f",
            r->capacity, r->handler_us, r->max_pending, r->handled, r->dropped, r->reports,
            r->last_value, r->peak_growth / 1024, r->rss_growth / 1024);
  if (r->runs > 1)
    printf (" runs=%u", r->runs);
  printf ("\n");
  fflush (stdout);
}

/* Targets: measured and reported, never asserted ------------------------------------ */

typedef enum {
  TARGET_SPEEDUP,     /* ops/s of impl / ops/s of baseline >= goal */
  TARGET_P50,         /* p50 of impl / p50 of baseline <= goal */
  TARGET_BYTES,       /* bytes beyond the GVariant <= goal */
  TARGET_PEAK_MIB,    /* peak RSS growth in MiB <= goal */
} TargetKind;

/* In which runs a target is reported. */
typedef enum {
  TARGET_ALWAYS,
  TARGET_IDLE,        /* without --contended */
  TARGET_CONTENDED,   /* with --contended */
} TargetWhen;

typedef struct
{
  TargetWhen  when;
  TargetKind  kind;
  char       *workload;
  char       *impl;
  char       *baseline;   /* the impl itself for TARGET_BYTES and TARGET_PEAK_MIB */
  double      goal;
  char       *text;       /* made from the fields, as printed */
} Target;

/* Read from the targets file, in its order; NULL without one. */
static GPtrArray *targets;

static void
target_free (Target *target)
{
  g_free (target->workload);
  g_free (target->impl);
  g_free (target->baseline);
  g_free (target->text);
  g_free (target);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (Target, target_free)

/* @name must be one of @workload's implementations. */
static gboolean
target_check_impl (const Workload  *workload,
                   const char      *name,
                   const char      *path,
                   guint            line,
                   GError         **error)
{
  if (workload_has_impl (workload, name))
    return TRUE;

  g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
               "%s:%u: workload '%s' has no implementation '%s'", path, line, workload->name, name);
  return FALSE;
}

/* One line of the targets file: WHEN WORKLOAD IMPL KIND GOAL [BASELINE],
 * split into @fields (NULL-terminated). */
static Target *
target_parse (const char **fields,
              const char  *path,
              guint        line,
              GError     **error)
{
  static const char *whens[] = { "always", "idle", "contended" };
  static const char *kinds[] = { "speedup", "p50", "bytes", "peak_mib" };
  g_autoptr(Target) target = g_new0 (Target, 1);
  const Workload *workload;
  guint n_fields = g_strv_length ((char **) fields);
  guint n_wanted;
  char *end = NULL;
  guint i;

  if (n_fields < 5)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                   "%s:%u: expected WHEN WORKLOAD IMPL KIND GOAL [BASELINE], found %u fields",
                   path, line, n_fields);
      return NULL;
    }

  for (i = 0; i < G_N_ELEMENTS (whens) && !g_str_equal (fields[0], whens[i]); i++)
    ;
  if (i == G_N_ELEMENTS (whens))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                   "%s:%u: unknown WHEN '%s' (always, idle or contended)", path, line, fields[0]);
      return NULL;
    }
  target->when = (TargetWhen) i;

  workload = workload_find (fields[1]);
  if (workload == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                   "%s:%u: unknown workload '%s'", path, line, fields[1]);
      return NULL;
    }
  target->workload = g_strdup (workload->name);

  if (!target_check_impl (workload, fields[2], path, line, error))
    return NULL;
  target->impl = g_strdup (fields[2]);

  for (i = 0; i < G_N_ELEMENTS (kinds) && !g_str_equal (fields[3], kinds[i]); i++)
    ;
  if (i == G_N_ELEMENTS (kinds))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                   "%s:%u: unknown KIND '%s' (speedup, p50, bytes or peak_mib)", path, line, fields[3]);
      return NULL;
    }
  target->kind = (TargetKind) i;

  target->goal = g_ascii_strtod (fields[4], &end);
  if (end == fields[4] || *end != '\0' || !isfinite (target->goal) || target->goal <= 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                   "%s:%u: GOAL '%s' is not a positive number", path, line, fields[4]);
      return NULL;
    }

  n_wanted = target->kind == TARGET_BYTES || target->kind == TARGET_PEAK_MIB ? 5 : 6;
  if (n_fields != n_wanted)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                   "%s:%u: a '%s' target has %s, found %u fields", path, line, fields[3],
                   n_wanted == 5 ? "no BASELINE" : "a BASELINE after its GOAL", n_fields);
      return NULL;
    }
  if (n_wanted == 6 && !target_check_impl (workload, fields[5], path, line, error))
    return NULL;
  target->baseline = g_strdup (n_wanted == 6 ? fields[5] : fields[2]);

  switch (target->kind)
    {
    case TARGET_SPEEDUP:
      target->text = g_strdup_printf ("%s %s >= %gx %s", target->workload, target->impl,
                                      target->goal, target->baseline);
      break;

    case TARGET_P50:
      target->text = g_strdup_printf ("%s %s p50 <= %gx %s p50", target->workload, target->impl,
                                      target->goal, target->baseline);
      break;

    case TARGET_BYTES:
      target->text = g_strdup_printf ("%s %s <= %g B/msg beyond the GVariant", target->workload,
                                      target->impl, target->goal);
      break;

    case TARGET_PEAK_MIB:
      target->text = g_strdup_printf ("%s %s peak RSS growth <= %g MiB", target->workload,
                                      target->impl, target->goal);
      break;

    default:
      g_assert_not_reached ();
    }

  return g_steal_pointer (&target);
}

/* Reads the targets file at @path: NULL with @error set if it cannot be
 * read or one of its lines is wrong. */
static GPtrArray *
targets_load (const char  *path,
              GError     **error)
{
  g_autoptr(GPtrArray) loaded = g_ptr_array_new_with_free_func ((GDestroyNotify) target_free);
  g_autofree char *contents = NULL;
  g_auto(GStrv) lines = NULL;

  if (!g_file_get_contents (path, &contents, NULL, error))
    return NULL;

  lines = g_strsplit (contents, "\n", -1);
  for (guint i = 0; lines[i] != NULL; i++)
    {
      g_autoptr(GPtrArray) fields = g_ptr_array_new ();
      g_auto(GStrv) words = NULL;
      char *comment = strchr (lines[i], '#');
      Target *target;

      if (comment != NULL)
        *comment = '\0';
      words = g_strsplit_set (lines[i], " \t\r", -1);
      for (guint k = 0; words[k] != NULL; k++)
        if (words[k][0] != '\0')
          g_ptr_array_add (fields, words[k]);
      if (fields->len == 0)
        continue;
      g_ptr_array_add (fields, NULL);

      target = target_parse ((const char **) fields->pdata, path, i + 1, error);
      if (target == NULL)
        return NULL;
      g_ptr_array_add (loaded, target);
    }

  return g_steal_pointer (&loaded);
}

/* Returns FALSE if the target is not for this run or its figures were not
 * measured. */
static gboolean
target_measure (GArray       *results,
                const Target *target,
                double       *value,
                gboolean     *met)
{
  const Result *r = find_result (results, target->workload, target->impl);
  const Result *b = find_result (results, target->workload, target->baseline);

  switch (target->when)
    {
    case TARGET_ALWAYS:
      break;

    case TARGET_IDLE:
      if (opt_contended)
        return FALSE;
      break;

    case TARGET_CONTENDED:
      if (!opt_contended)
        return FALSE;
      break;

    default:
      g_assert_not_reached ();
    }

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

    case TARGET_PEAK_MIB:
      if (!r->has_flood)
        return FALSE;
      *value = r->peak_growth / (1024.0 * 1024.0);
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

/* coalesce_flood, in a table of its own. */
static void
print_flood_table (GArray *results)
{
  gboolean any = FALSE;

  for (guint i = 0; i < results->len; i++)
    any = any || g_array_index (results, Result, i).has_flood;
  if (!any)
    return;

  printf ("\n%-19s %-14s %8s %8s %8s %8s %8s %10s %8s %7s %10s %9s %9s\n",
          "workload", "impl", "sent", "capacity", "work us", "wall ms", "max pend", "handled",
          "dropped", "reports", "last", "peak KiB", "RSS KiB");
  for (guint i = 0; i < results->len; i++)
    {
      const Result *r = &g_array_index (results, Result, i);

      if (!r->has_flood)
        continue;
      printf ("%-19s %-14s %8" G_GUINT64_FORMAT " %8.0f %8.0f %8.1f %8.0f %10.0f %8.0f %7.0f %10.0f %9.0f %9.0f\n",
              r->workload, r->impl, r->ops, r->capacity, r->handler_us, r->secs * 1e3, r->max_pending,
              r->handled, r->dropped, r->reports, r->last_value, r->peak_growth / 1024,
              r->rss_growth / 1024);
    }
  printf ("(sent: progress commands, and one more ends the flood; handled counts it; dropped:\n"
          " coalesced, as messages-dropped reported them; max pend: the most pending seen after a\n"
          " send; last: the newest value the handler saw; peak, RSS: VmHWM at the end, VmRSS at the\n"
          " end, over VmRSS at the start)\n");
}

static void
print_table (GArray *results)
{
  gboolean any = FALSE;

  for (guint i = 0; i < results->len; i++)
    any = any || (!g_array_index (results, Result, i).has_cpu &&
                  !g_array_index (results, Result, i).has_flood);

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

      if (r->has_cpu || r->has_flood)
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
  print_flood_table (results);

  for (guint i = 0, n_printed = 0; targets != NULL && i < targets->len; i++)
    {
      const Target *target = g_ptr_array_index (targets, i);
      double value;
      gboolean met;

      if (!target_measure (results, target, &value, &met))
        continue;
      if (n_printed++ == 0)
        printf ("\ntargets (measured, not asserted):\n");
      printf ("  %-52s %8.2f%s  %s\n", target->text, value,
              target->kind == TARGET_BYTES ? " B" : target->kind == TARGET_PEAK_MIB ? " MiB" : "x",
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
      if ((b = find_result (results, r->workload, IMPL_FLOOR)) != NULL && b != r)
        {
          g_string_append_printf (out, ", \"speedup_vs_floor\": %.3f", r->ops_per_s / b->ops_per_s);
          if (r->has_latency && b->p50_ns > 0)
            g_string_append_printf (out, ", \"p50_vs_floor\": %.3f", r->p50_ns / b->p50_ns);
        }
      if ((b = find_result (results, r->workload, IMPL_IDIOM)) != NULL && b != r)
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
      if (r->has_flood)
        g_string_append_printf (out, ", \"capacity\": %.0f, \"handler_us\": %.0f, \"max_pending\": %.0f"
                                ", \"handled\": %.0f, \"dropped\": %.0f, \"reports\": %.0f"
                                ", \"last_value\": %.0f, \"peak_rss_growth_bytes\": %.0f"
                                ", \"rss_growth_bytes\": %.0f",
                                r->capacity, r->handler_us, r->max_pending, r->handled, r->dropped,
                                r->reports, r->last_value, r->peak_growth, r->rss_growth);
      g_string_append_printf (out, "}%s\n", i + 1 < results->len ? "," : "");
    }

  g_string_append (out, "  ],\n  \"targets\": [\n");
  for (guint i = 0; targets != NULL && i < targets->len; i++)
    {
      const Target *target = g_ptr_array_index (targets, i);
      double value;
      gboolean met;

      if (!target_measure (results, target, &value, &met))
        continue;
      g_string_append_printf (out, "%s    {\"target\": \"%s\", \"goal\": %g, \"value\": %.3f, \"met\": %s}",
                              first ? "" : ",\n", target->text, target->goal, value,
                              met ? "true" : "false");
      first = FALSE;
    }
  g_string_append (out, "\n  ]\n}\n");

  return g_string_free (out, FALSE);
}

/* Across processes ---------------------------------------------------------------- */

/*
 * bench_dbus(): spark-channel over D-Bus next to raw GDBus, in the same run
 * (--dbus). Both links: a private message bus (GTestDBus: a dbus-daemon of
 * its own, two connections to it) and a peer-to-peer connection over a
 * socket pair. On each:
 *
 *   raw    g_dbus_connection_call() to a hand-written
 *          g_dbus_connection_register_object() handler, method
 *          Echo (i) -> (i), answered at once on the exporting thread;
 *   spark  a dispatcher from spark_dispatcher_new_for_dbus() to a module
 *          server (spark_func_handler_new()) started on the exporting
 *          thread's context and exported there with
 *          spark_module_server_export(), as a helper process hosting one
 *          module would.
 *
 * The exported side runs on a thread with its own main context, the
 * client on the main thread. "seq" is one request awaited before the next
 * (raw: g_dbus_connection_call_sync; spark: request_sync): the round trip.
 * "pipelined" keeps BENCH_DBUS_WINDOW requests in flight on the client's
 * main loop (raw: g_dbus_connection_call; spark: request_full): the
 * throughput. The window stays under a bus's 128 pending replies.
 * Figures only: nothing is asserted but the replies.
 */

#define BENCH_DBUS_PATH   "/org/gnome/SparkChannel/Bench"
#define BENCH_DBUS_WINDOW 100

static const char bench_dbus_raw_xml[] =
  "<node><interface name='org.gnome.SparkChannel.Bench1'>"
  "<method name='Echo'><arg type='i' direction='in'/><arg type='i' direction='out'/></method>"
  "</interface></node>";

static void
bench_dbus_raw_method (GDBusConnection       *connection,
                       const char            *sender,
                       const char            *object_path,
                       const char            *interface_name,
                       const char            *method_name,
                       GVariant              *parameters,
                       GDBusMethodInvocation *invocation,
                       gpointer               user_data)
{
  gint32 v;

  g_variant_get (parameters, "(i)", &v);
  g_dbus_method_invocation_return_value (invocation, g_variant_new ("(i)", v + 1));
}

static const GDBusInterfaceVTable bench_dbus_raw_vtable = { bench_dbus_raw_method, NULL, NULL, { 0 } };

static GVariant *
bench_dbus_request (const char    *name,
                    GVariant      *parameters,
                    GCancellable  *cancellable,
                    gpointer       user_data,
                    GError       **error)
{
  return g_variant_new_int32 (g_variant_get_int32 (parameters) + 1);
}

typedef struct
{
  GDBusConnection   *server_conn;
  GDBusConnection   *client_conn;
  const char        *bus_name;
  GMainContext      *context;
  GMainLoop         *loop;
  GThread           *thread;
  SparkModuleServer *server;
  guint              raw_id;
  gint               ready;
} BenchDBusSide;

static gboolean
bench_dbus_export (gpointer data)
{
  BenchDBusSide *side = data;
  GDBusNodeInfo *node = g_dbus_node_info_new_for_xml (bench_dbus_raw_xml, NULL);
  GError *error = NULL;

  side->raw_id = g_dbus_connection_register_object (side->server_conn, BENCH_DBUS_PATH "/raw",
                                                    node->interfaces[0], &bench_dbus_raw_vtable,
                                                    NULL, NULL, &error);
  g_assert_no_error (error);
  g_dbus_node_info_unref (node);
  /* On this same context, as the raw handler: what a helper process that
   * hosts one module does. */
  if (!spark_module_server_start (side->server, side->context, &error))
    g_error ("start: %s", error->message);
  if (!spark_module_server_export (side->server, side->server_conn, BENCH_DBUS_PATH "/spark", &error))
    g_error ("export: %s", error->message);
  g_atomic_int_set (&side->ready, 1);
  return G_SOURCE_REMOVE;
}

static gpointer
bench_dbus_thread (gpointer data)
{
  BenchDBusSide *side = data;

  g_main_context_push_thread_default (side->context);
  g_main_loop_run (side->loop);
  g_main_context_pop_thread_default (side->context);
  return NULL;
}

static void
on_bench_peer_ready (GObject      *source,
                     GAsyncResult *result,
                     gpointer      user_data)
{
  BenchDBusSide *side = user_data;
  GError *error = NULL;

  side->server_conn = g_dbus_connection_new_finish (result, &error);
  g_assert_no_error (error);
}

static void
bench_dbus_side_start (BenchDBusSide *side,
                       GTestDBus     *bus)
{
  GError *error = NULL;

  if (bus != NULL)
    {
      GDBusConnectionFlags flags = G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT |
                                   G_DBUS_CONNECTION_FLAGS_MESSAGE_BUS_CONNECTION;

      side->server_conn = g_dbus_connection_new_for_address_sync (g_test_dbus_get_bus_address (bus), flags,
                                                                  NULL, NULL, &error);
      g_assert_no_error (error);
      side->client_conn = g_dbus_connection_new_for_address_sync (g_test_dbus_get_bus_address (bus), flags,
                                                                  NULL, NULL, &error);
      g_assert_no_error (error);
      side->bus_name = g_dbus_connection_get_unique_name (side->server_conn);
    }
  else
    {
      int fds[2];
      char *guid = g_dbus_generate_guid ();
      GSocket *s0, *s1;
      GSocketConnection *c0, *c1;

      if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
        g_error ("socketpair: %s", g_strerror (errno));
      s0 = g_socket_new_from_fd (fds[0], &error);
      g_assert_no_error (error);
      s1 = g_socket_new_from_fd (fds[1], &error);
      g_assert_no_error (error);
      c0 = g_socket_connection_factory_create_connection (s0);
      c1 = g_socket_connection_factory_create_connection (s1);
      g_dbus_connection_new (G_IO_STREAM (c0), guid,
                             G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_SERVER |
                             G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_ALLOW_ANONYMOUS,
                             NULL, NULL, on_bench_peer_ready, side);
      side->client_conn = g_dbus_connection_new_sync (G_IO_STREAM (c1), NULL,
                                                      G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT,
                                                      NULL, NULL, &error);
      g_assert_no_error (error);
      while (side->server_conn == NULL)
        g_main_context_iteration (NULL, TRUE);
      g_object_unref (c0);
      g_object_unref (c1);
      g_object_unref (s0);
      g_object_unref (s1);
      g_free (guid);
    }

  side->server = spark_module_server_new (spark_func_handler_new (bench_dbus_request, NULL, NULL, NULL));
  g_object_unref (spark_module_server_get_handler (side->server));

  side->context = g_main_context_new ();
  side->loop = g_main_loop_new (side->context, FALSE);
  side->thread = g_thread_new ("bench-export", bench_dbus_thread, side);
  g_main_context_invoke (side->context, bench_dbus_export, side);
  while (!g_atomic_int_get (&side->ready))
    g_thread_yield ();
}

static void
on_bench_dbus_shutdown (GObject      *source,
                        GAsyncResult *result,
                        gpointer      user_data)
{
  BenchDBusSide *side = user_data;

  g_assert_true (spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, NULL));
  g_main_loop_quit (side->loop);
}

static gboolean
bench_dbus_quit (gpointer data)
{
  BenchDBusSide *side = data;

  spark_module_server_unexport (side->server, side->server_conn, BENCH_DBUS_PATH "/spark");
  g_dbus_connection_unregister_object (side->server_conn, side->raw_id);
  spark_module_server_shutdown_async (side->server, SPARK_SHUTDOWN_MODE_DRAIN, NULL, on_bench_dbus_shutdown, side);
  return G_SOURCE_REMOVE;
}

static void
bench_dbus_side_stop (BenchDBusSide *side)
{
  g_main_context_invoke (side->context, bench_dbus_quit, side);
  g_thread_join (side->thread);
  g_clear_object (&side->server);
  g_main_loop_unref (side->loop);
  g_main_context_unref (side->context);
  g_dbus_connection_close_sync (side->server_conn, NULL, NULL);
  g_dbus_connection_close_sync (side->client_conn, NULL, NULL);
  g_clear_object (&side->server_conn);
  g_clear_object (&side->client_conn);
}

/* What one timed run cost: wall time, and this process's CPU time and
 * context switches (the bus daemon's are not counted: it does the same
 * work for both). */
typedef struct
{
  double wall_ns;
  double cpu_ns;
  double switches;
} BenchDBusCost;

static void
bench_dbus_cost_sample (BenchDBusCost *cost,
                        gboolean       end)
{
  struct rusage ru;
  double sign = end ? 1.0 : -1.0;

  getrusage (RUSAGE_SELF, &ru);
  cost->wall_ns += sign * (double) now_ns ();
  cost->cpu_ns += sign * ((ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e9 +
                          (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e3);
  cost->switches += sign * (double) (ru.ru_nvcsw + ru.ru_nivcsw);
}

/* Sequential round trips. */
static BenchDBusCost
bench_dbus_seq_raw (BenchDBusSide *side,
                    guint          n)
{
  BenchDBusCost cost = { 0 };

  bench_dbus_cost_sample (&cost, FALSE);
  for (guint i = 0; i < n; i++)
    {
      GError *error = NULL;
      GVariant *ret = g_dbus_connection_call_sync (side->client_conn, side->bus_name, BENCH_DBUS_PATH "/raw",
                                                   "org.gnome.SparkChannel.Bench1", "Echo",
                                                   g_variant_new ("(i)", (gint32) i), G_VARIANT_TYPE ("(i)"),
                                                   G_DBUS_CALL_FLAGS_NONE, -1, NULL, &error);
      gint32 v;

      g_assert_no_error (error);
      g_variant_get (ret, "(i)", &v);
      g_assert_cmpint (v, ==, (gint32) i + 1);
      g_variant_unref (ret);
    }
  bench_dbus_cost_sample (&cost, TRUE);
  return cost;
}

static BenchDBusCost
bench_dbus_seq_spark (SparkDispatcher *remote,
                      guint            n)
{
  BenchDBusCost cost = { 0 };

  bench_dbus_cost_sample (&cost, FALSE);
  for (guint i = 0; i < n; i++)
    {
      GError *error = NULL;
      GVariant *ret = spark_dispatcher_request_sync (remote, "get", g_variant_new_int32 ((gint32) i),
                                                     G_VARIANT_TYPE_INT32, NULL, &error);

      g_assert_no_error (error);
      g_assert_cmpint (g_variant_get_int32 (ret), ==, (gint32) i + 1);
      g_variant_unref (ret);
    }
  bench_dbus_cost_sample (&cost, TRUE);
  return cost;
}

typedef struct
{
  BenchDBusSide   *side;
  SparkDispatcher *remote;
  guint            n;
  guint            sent;
  guint            done;
} BenchDBusPipe;

static void bench_dbus_pipe_send_raw (BenchDBusPipe *pipe);
static void bench_dbus_pipe_send_spark (BenchDBusPipe *pipe);

static void
on_bench_raw_reply (GObject      *source,
                    GAsyncResult *result,
                    gpointer      user_data)
{
  BenchDBusPipe *pipe = user_data;
  GError *error = NULL;
  GVariant *ret = g_dbus_connection_call_finish (G_DBUS_CONNECTION (source), result, &error);

  g_assert_no_error (error);
  g_variant_unref (ret);
  pipe->done++;
  if (pipe->sent < pipe->n)
    bench_dbus_pipe_send_raw (pipe);
}

static void
bench_dbus_pipe_send_raw (BenchDBusPipe *pipe)
{
  g_dbus_connection_call (pipe->side->client_conn, pipe->side->bus_name, BENCH_DBUS_PATH "/raw",
                          "org.gnome.SparkChannel.Bench1", "Echo", g_variant_new ("(i)", (gint32) pipe->sent++),
                          G_VARIANT_TYPE ("(i)"), G_DBUS_CALL_FLAGS_NONE, -1, NULL, on_bench_raw_reply, pipe);
}

static void
on_bench_spark_reply (GVariant     *reply,
                      const GError *error,
                      gpointer      user_data)
{
  BenchDBusPipe *pipe = user_data;

  g_assert_no_error (error);
  g_assert_nonnull (reply);
  pipe->done++;
  if (pipe->sent < pipe->n)
    bench_dbus_pipe_send_spark (pipe);
}

static void
bench_dbus_pipe_send_spark (BenchDBusPipe *pipe)
{
  spark_dispatcher_request_full (pipe->remote, "get", g_variant_new_int32 ((gint32) pipe->sent++),
                                 G_VARIANT_TYPE_INT32, NULL, on_bench_spark_reply, pipe, NULL);
}

/* Pipelined: BENCH_DBUS_WINDOW in flight. */
static BenchDBusCost
bench_dbus_pipelined (BenchDBusSide   *side,
                      SparkDispatcher *remote,
                      guint            n)
{
  BenchDBusPipe pipe = { side, remote, n, 0, 0 };
  BenchDBusCost cost = { 0 };

  bench_dbus_cost_sample (&cost, FALSE);
  for (guint i = 0; i < BENCH_DBUS_WINDOW && i < n; i++)
    {
      if (remote != NULL)
        bench_dbus_pipe_send_spark (&pipe);
      else
        bench_dbus_pipe_send_raw (&pipe);
    }
  while (pipe.done < n)
    g_main_context_iteration (NULL, TRUE);
  bench_dbus_cost_sample (&cost, TRUE);
  return cost;
}

static int
compare_doubles (gconstpointer a,
                 gconstpointer b)
{
  double x = *(const double *) a, y = *(const double *) b;

  return x < y ? -1 : x > y;
}

static double
median_of (double *values,
           guint   n)
{
  qsort (values, n, sizeof (double), compare_doubles);
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

#define BENCH_DBUS_MAX_ROUNDS 64

/* Prints one workload's line pair: medians over the rounds of each
 * implementation's figures, and the median of the per-round ratios
 * (spark's time over raw's: ≤ 1.10 is the goal). */
static void
bench_dbus_report (const char          *workload,
                   const char          *link,
                   guint                n,
                   const BenchDBusCost *raw,
                   const BenchDBusCost *spark,
                   guint                rounds)
{
  double v[6][BENCH_DBUS_MAX_ROUNDS];
  double m[6];

  for (guint r = 0; r < rounds; r++)
    {
      v[0][r] = raw[r].wall_ns / n;
      v[1][r] = spark[r].wall_ns / n;
      v[2][r] = spark[r].wall_ns / raw[r].wall_ns;
      v[3][r] = raw[r].cpu_ns / n;
      v[4][r] = spark[r].cpu_ns / n;
      v[5][r] = (spark[r].switches - raw[r].switches) / n;
    }
  for (guint i = 0; i < 6; i++)
    m[i] = median_of (v[i], rounds);

  printf ("workload=%s link=%s impl=raw ns_per_op=%.0f ops_per_s=%.0f cpu_ns_per_op=%.0f\n",
          workload, link, m[0], 1e9 / m[0], m[3]);
  printf ("workload=%s link=%s impl=spark ns_per_op=%.0f ops_per_s=%.0f cpu_ns_per_op=%.0f "
          "time_ratio_vs_raw=%.3f extra_switches_per_op=%.2f\n",
          workload, link, m[1], 1e9 / m[1], m[4], m[2], m[5]);
}

/* --callgrind --dbus -w dbus_seq|dbus_pipelined -i raw|spark [-n N]: one
 * of them, peer to peer (both ends in this process, so that callgrind
 * counts every instruction of a call, as bench/callgrind.sh does for the
 * other workloads). */
static int
bench_dbus_callgrind (void)
{
  BenchDBusSide side = { 0 };
  SparkDispatcher *remote = NULL;
  gboolean pipelined = g_strcmp0 (opt_workload, "dbus_pipelined") == 0;
  guint n = opt_ops > 0 ? (guint) MIN (opt_ops, G_MAXUINT) : 1000;

  if ((!pipelined && g_strcmp0 (opt_workload, "dbus_seq") != 0) ||
      (g_strcmp0 (opt_impl, "raw") != 0 && g_strcmp0 (opt_impl, "spark") != 0))
    {
      g_printerr ("spark-bench: --callgrind --dbus needs -w dbus_seq or dbus_pipelined, and -i raw or spark\n");
      return 2;
    }

  bench_dbus_side_start (&side, NULL);
  if (g_str_equal (opt_impl, "spark"))
    remote = spark_dispatcher_new_for_dbus (side.client_conn, NULL, BENCH_DBUS_PATH "/spark");
  if (pipelined)
    (void) bench_dbus_pipelined (&side, remote, n);
  else if (remote != NULL)
    (void) bench_dbus_seq_spark (remote, n);
  else
    (void) bench_dbus_seq_raw (&side, n);
  g_clear_object (&remote);
  bench_dbus_side_stop (&side);
  return 0;
}

static int
bench_dbus (gboolean quick)
{
  guint n_seq = quick ? 200 : 2000;
  guint n_pipe = quick ? 1000 : 10000;
  guint rounds = quick ? 1 : MIN (MAX ((guint) opt_repeat, 7), BENCH_DBUS_MAX_ROUNDS);
  GTestDBus *bus;

  if (opt_callgrind)
    return bench_dbus_callgrind ();

  bus = g_test_dbus_new (G_TEST_DBUS_NONE);
  g_test_dbus_up (bus);
  printf ("# spark-channel over D-Bus, next to raw GDBus (same run, interleaved); %u rounds of seq: %u, "
          "pipelined: %u (window %d); medians; load average %s\n",
          rounds, n_seq, n_pipe, BENCH_DBUS_WINDOW, run_info.loadavg);

  for (guint link = 0; link < 2; link++)
    {
      BenchDBusSide side = { 0 };
      SparkDispatcher *remote;
      BenchDBusCost raw_seq[BENCH_DBUS_MAX_ROUNDS], spark_seq[BENCH_DBUS_MAX_ROUNDS];
      BenchDBusCost raw_pipe[BENCH_DBUS_MAX_ROUNDS], spark_pipe[BENCH_DBUS_MAX_ROUNDS];
      const char *name = link == 0 ? "bus" : "peer";

      bench_dbus_side_start (&side, link == 0 ? bus : NULL);
      remote = spark_dispatcher_new_for_dbus (side.client_conn, side.bus_name, BENCH_DBUS_PATH "/spark");

      /* Warm both up, then alternate which goes first. */
      bench_dbus_seq_raw (&side, n_seq / 10 + 1);
      bench_dbus_seq_spark (remote, n_seq / 10 + 1);
      bench_dbus_pipelined (&side, NULL, n_pipe / 10 + 1);
      bench_dbus_pipelined (&side, remote, n_pipe / 10 + 1);
      for (guint r = 0; r < rounds; r++)
        {
          if (r % 2 == 0)
            {
              raw_seq[r] = bench_dbus_seq_raw (&side, n_seq);
              spark_seq[r] = bench_dbus_seq_spark (remote, n_seq);
              raw_pipe[r] = bench_dbus_pipelined (&side, NULL, n_pipe);
              spark_pipe[r] = bench_dbus_pipelined (&side, remote, n_pipe);
            }
          else
            {
              spark_seq[r] = bench_dbus_seq_spark (remote, n_seq);
              raw_seq[r] = bench_dbus_seq_raw (&side, n_seq);
              spark_pipe[r] = bench_dbus_pipelined (&side, remote, n_pipe);
              raw_pipe[r] = bench_dbus_pipelined (&side, NULL, n_pipe);
            }
        }

      bench_dbus_report ("dbus_seq", name, n_seq, raw_seq, spark_seq, rounds);
      bench_dbus_report ("dbus_pipelined", name, n_pipe, raw_pipe, spark_pipe, rounds);
      fflush (stdout);

      g_object_unref (remote);
      bench_dbus_side_stop (&side);
    }

  g_test_dbus_down (bus);
  g_object_unref (bus);
  return 0;
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
  const char *impl_names[G_N_ELEMENTS (impls)];
  GArray *results;
  guint total = 0;
  guint step = 0;
  gint64 t_start;

  context = g_option_context_new ("- spark-channel benchmarks");
  g_option_context_set_summary (context,
                                "Workloads: request_seq, request_pipelined, command_throughput,\n"
                                "command_mpsc, queued_bytes, priority_latency, coalesce_flood,\n"
                                "and with CPU time: same_context, pipeline, ui_idle_cpu (--ops:\n"
                                "the reply's delay in ms), cpu_bound (50 us of work per request).\n"
                                "Implementations: spark_sync, spark_async, spark_full,\n"
                                "spark (commands), spark_full_routed and spark_routed (behind\na SparkRouter), spark_sync_high (priority_latency),\n"
                                "spark_coalesce and spark_unbounded (coalesce_flood), spark_pool1,\n"
                                "spark_pool2 and gtask_thread (cpu_bound), floor, idiom.");
  g_option_context_add_main_entries (context, entries, NULL);
  if (!g_option_context_parse (context, &argc, &argv, &error))
    {
      g_printerr ("spark-bench: %s\n", error->message);
      g_error_free (error);
      g_option_context_free (context);
      return 2;
    }
  g_option_context_free (context);

  if (opt_dbus)
    {
      run_info_init (&run_info);
      return bench_dbus (opt_quick);
    }

  for (guint w = 0; w < G_N_ELEMENTS (workloads); w++)
    workload_names[w] = workloads[w].name;
  for (guint i = 0; i < G_N_ELEMENTS (impls); i++)
    impl_names[i] = impls[i].name;
  if (!check_names (opt_workload, "workload", workload_names, G_N_ELEMENTS (workloads)) ||
      !check_names (opt_impl, "implementation", impl_names, G_N_ELEMENTS (impls)))
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
  if (opt_flood_child != NULL)
    return flood_child_main (opt_flood_child, opt_ops > 0 ? (guint64) opt_ops : 1000000);

  /* The default file may be missing (a binary moved away from its source
   * tree): then no targets. One named with --targets must be there. */
  if (!opt_callgrind)
    {
      const char *path = opt_targets != NULL ? opt_targets : SPARK_BENCH_TARGETS;

      targets = targets_load (path, &error);
      if (targets == NULL &&
          (opt_targets != NULL || !g_error_matches (error, G_FILE_ERROR, G_FILE_ERROR_NOENT)))
        {
          g_printerr ("spark-bench: cannot read the targets: %s\n", error->message);
          g_error_free (error);
          return 2;
        }
      g_clear_error (&error);
    }

  self_path = g_file_read_link ("/proc/self/exe", NULL);
  if (self_path == NULL)
    self_path = g_strdup (argv[0]);

  progress_tty = isatty (STDERR_FILENO);
  results = g_array_new (FALSE, TRUE, sizeof (Result));

  for (guint w = 0; w < G_N_ELEMENTS (workloads); w++)
    if (name_in_list (workloads[w].name, opt_workload))
      for (guint k = 0; workloads[w].impls[k] != NULL; k++)
        if (name_in_list (workloads[w].impls[k], opt_impl))
          total += (guint) opt_repeat;

  if (total == 0)
    {
      g_printerr ("spark-bench: nothing to run with these --workload and --impl\n");
      g_clear_pointer (&targets, g_ptr_array_unref);
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
      Result runs[MAX_WORKLOAD_IMPLS][MAX_REPEAT];
      guint n_reps = (guint) opt_repeat;
      guint first_result = results->len;

      if (!name_in_list (workload->name, opt_workload))
        continue;

      memset (runs, 0, sizeof runs);

      /* Implementations interleaved within each repetition, so that they
       * share the machine's moods. */
      for (guint rep = 0; rep < n_reps; rep++)
        for (guint k = 0; workload->impls[k] != NULL; k++)
          {
            const Impl *impl = impl_find (workload->impls[k]);
            Result *r = &runs[k][rep];

            g_assert (impl != NULL);
            if (!name_in_list (impl->name, opt_impl))
              continue;

            step++;
            progress ("[%2u/%u] %s impl=%s ops=%" G_GUINT64_FORMAT " run %u/%u (%.0f s so far)",
                      step, total, workload->name, impl->name, n, rep + 1, n_reps,
                      (double) (now_ns () - t_start) / 1e9);

            r->workload = workload->name;
            r->impl = impl->name;
            workload->run (impl, n, r);
          }

      for (guint k = 0; workload->impls[k] != NULL; k++)
        {
          Result median_result;

          if (!name_in_list (workload->impls[k], opt_impl))
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
          g_clear_pointer (&targets, g_ptr_array_unref);
          g_array_unref (results);
          return 1;
        }
    }

  spinner_stop ();

  g_clear_pointer (&targets, g_ptr_array_unref);
  g_array_unref (results);
  g_free (opt_workload);
  g_free (opt_impl);
  g_free (opt_json_out);
  g_free (opt_targets);
  g_free (self_path);

  return 0;
}
