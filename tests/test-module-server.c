/* test-module-server.c: SparkModuleServer
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <string.h>
#include <sys/prctl.h>

#include "spark-test-util.h"

/* A scripted handler ------------------------------------------------------------
 *
 * A func handler whose requests and commands do what their name says:
 *
 *   requests  "echo"         replies its parameters (or the name)
 *             "where"        records the thread, its name and contexts
 *             "block"        waits for the gate or its cancellable; replies
 *                            "cancelled" or "released"
 *             "block-ignore" waits for the gate only; replies "finished"
 *             "mark-exit"    arranges for thread_exited to be set when the
 *                            handler's thread ends
 *   commands  "ok"           succeeds
 *             "fail"         fails with G_IO_ERROR_FAILED "boom"
 *             "false"        returns FALSE without an error
 *             "block-ignore" waits for the gate only
 *             "shutdown-self" calls shutdown_async on @server with the mode
 *                            in its parameters, completing @stopped
 *
 * Every call is logged and wakes the test's context (@waiter).
 */

typedef struct
{
  SparkTestGate gate;
  SparkTestLog  log;             /* "name" or "name:N", in handling order */
  GMutex        mutex;           /* guards cancellable */

  GMainContext *waiter;          /* immutable: woken after every call; NULL: the global default */
  GMainContext *expected;        /* immutable: the context "where" should find itself on */

  gint          n_requests;      /* atomic */
  gint          n_commands;      /* atomic */
  gint          entered;         /* atomic: a blocking handler is waiting */
  gint          finished;        /* atomic: a blocking handler has returned */
  gint          thread_exited;   /* atomic: the thread of "mark-exit" has ended */

  /* Written by the handler before it wakes the test. */
  GThread      *thread;
  gboolean      owns_expected;
  gboolean      owns_thread_default;
  GMainContext *thread_default;  /* a reference */
  char          thread_name[17];
  GCancellable *cancellable;     /* mutex, a reference: the last blocking handler's */
  gboolean      saw_cancelled;   /* the last "block" returned because of it */

  /* For the "shutdown-self" command: not references. */
  SparkModuleServer *server;
  gpointer           stopped;
} State;

static State *
state_new (GMainContext *waiter)
{
  State *state = g_new0 (State, 1);

  spark_test_gate_init (&state->gate);
  spark_test_log_init (&state->log);
  g_mutex_init (&state->mutex);
  state->waiter = waiter;

  return state;
}

static void
state_free (State *state)
{
  spark_test_log_clear (&state->log);
  g_clear_pointer (&state->thread_default, g_main_context_unref);
  g_clear_object (&state->cancellable);
  g_mutex_clear (&state->mutex);
  spark_test_gate_clear (&state->gate);
  g_free (state);
}

static void
state_wake (State *state)
{
  g_main_context_wakeup (state->waiter);
}

/* Keeps @cancellable, sets entered, wakes the test, then waits for the gate,
 * or for @cancellable if not NULL. Returns TRUE if the cancellable ended the
 * wait. */
static gboolean
state_wait_gate (State        *state,
                 GCancellable *cancellable)
{
  g_mutex_lock (&state->mutex);
  g_clear_object (&state->cancellable);
  state->cancellable = cancellable ? g_object_ref (cancellable) : NULL;
  g_mutex_unlock (&state->mutex);

  g_atomic_int_set (&state->entered, TRUE);
  state_wake (state);

  return spark_test_gate_wait (&state->gate, cancellable);
}

static void
exit_marker_free (gpointer data)
{
  State *state = data;

  g_atomic_int_set (&state->thread_exited, TRUE);
}

static GPrivate exit_marker = G_PRIVATE_INIT (exit_marker_free);

static GVariant *
state_request (const char    *name,
               GVariant      *parameters,
               GCancellable  *cancellable,
               gpointer       user_data,
               GError       **error)
{
  State *state = user_data;
  GVariant *reply;

  spark_test_log_append (&state->log, name, parameters);

  if (g_str_equal (name, "echo"))
    reply = parameters ? g_variant_ref (parameters) : g_variant_new_string (name);
  else if (g_str_equal (name, "where"))
    {
      GMainContext *context = g_main_context_ref_thread_default ();

      state->thread = g_thread_self ();
      state->owns_expected = state->expected != NULL && g_main_context_is_owner (state->expected);
      state->owns_thread_default = g_main_context_is_owner (context);
      g_clear_pointer (&state->thread_default, g_main_context_unref);
      state->thread_default = context;
      memset (state->thread_name, 0, sizeof state->thread_name);
      prctl (PR_GET_NAME, state->thread_name, 0, 0, 0);
      reply = g_variant_new_string (name);
    }
  else if (g_str_equal (name, "block"))
    {
      state->saw_cancelled = state_wait_gate (state, cancellable);
      reply = g_variant_new_string (state->saw_cancelled ? "cancelled" : "released");
      g_atomic_int_set (&state->finished, TRUE);
    }
  else if (g_str_equal (name, "block-ignore"))
    {
      state_wait_gate (state, NULL);
      g_mutex_lock (&state->mutex);
      g_clear_object (&state->cancellable);
      state->cancellable = cancellable ? g_object_ref (cancellable) : NULL;
      g_mutex_unlock (&state->mutex);
      reply = g_variant_new_string ("finished");
      g_atomic_int_set (&state->finished, TRUE);
    }
  else if (g_str_equal (name, "mark-exit"))
    {
      g_private_set (&exit_marker, state);
      reply = g_variant_new_string (name);
    }
  else
    {
      g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                   "Unknown test request “%s”", name);
      reply = NULL;
    }

  g_atomic_int_inc (&state->n_requests);
  state_wake (state);

  return reply;
}

static void on_stopped (GObject      *source,
                        GAsyncResult *result,
                        gpointer      user_data);

static gboolean
state_command (const char    *name,
               GVariant      *parameters,
               GCancellable  *cancellable,
               gpointer       user_data,
               GError       **error)
{
  State *state = user_data;
  gboolean ret = TRUE;

  spark_test_log_append (&state->log, name, parameters);

  if (g_str_equal (name, "fail"))
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_FAILED, "boom");
      ret = FALSE;
    }
  else if (g_str_equal (name, "false"))
    ret = FALSE;
  else if (g_str_equal (name, "block-ignore"))
    state_wait_gate (state, NULL);
  else if (g_str_equal (name, "shutdown-self"))
    spark_module_server_shutdown_async (state->server, g_variant_get_int32 (parameters), NULL,
                                        on_stopped, state->stopped);

  g_atomic_int_inc (&state->n_commands);
  state_wake (state);

  return ret;
}

static SparkHandler *
state_handler_new (State *state)
{
  return spark_func_handler_new (state_request, state_command, state, NULL);
}

/* The fixture -------------------------------------------------------------------
 *
 * A server for a State's handler (or, with typed_setup, for a handler of
 * the GType in the options' data), started as the options say. */

typedef struct
{
  SparkTestServer s;
  State          *state;   /* NULL with typed_setup */
} Fixture;

static const SparkTestServerOptions in_thread = { .start = SPARK_TEST_START_IN_THREAD };
static const SparkTestServerOptions on_default = { .start = SPARK_TEST_START_ON_DEFAULT };
static const SparkTestServerOptions not_started = { .start = SPARK_TEST_START_NONE };

static void
fixture_setup (Fixture       *f,
               gconstpointer  options)
{
  f->state = state_new (NULL);
  spark_test_server_setup (&f->s, state_handler_new (f->state), options);
}

static void
typed_setup (Fixture       *f,
             gconstpointer  options)
{
  const SparkTestServerOptions *o = options;

  spark_test_server_setup (&f->s, g_object_new ((GType) GPOINTER_TO_SIZE (o->data), NULL), options);
}

static void
fixture_teardown (Fixture       *f,
                  gconstpointer  options)
{
  spark_test_server_teardown (&f->s);
  g_clear_pointer (&f->state, state_free);
}

/* Outcomes ------------------------------------------------------------------- */

static void
assert_reply_string (SparkTestOutcome *outcome,
                     const char       *expected)
{
  g_assert_true (g_atomic_int_get (&outcome->done));
  g_assert_no_error (outcome->error);
  g_assert_nonnull (outcome->reply);
  g_assert_cmpstr (g_variant_get_string (outcome->reply, NULL), ==, expected);
}

typedef struct
{
  gint     done;   /* atomic */
  gboolean ret;
  GError  *error;
  gint     thread_exited_then;   /* the handler thread had ended when the callback ran */
  State   *state;                /* nullable */
} Stopped;

static void
on_stopped (GObject      *source,
            GAsyncResult *result,
            gpointer      user_data)
{
  Stopped *stopped = user_data;

  g_assert_false (g_atomic_int_get (&stopped->done));
  stopped->ret = spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, &stopped->error);
  if (stopped->state != NULL)
    stopped->thread_exited_then = g_atomic_int_get (&stopped->state->thread_exited);
  g_atomic_int_set (&stopped->done, TRUE);
}

/* Iterates two contexts on this thread until *@flag is set: for a server
 * whose context is not the caller's. Polls, so only for short waits. */
static void
wait_flag_both (GMainContext *a,
                GMainContext *b,
                gint         *flag)
{
  while (!g_atomic_int_get (flag))
    {
      gboolean dispatched = g_main_context_iteration (a, FALSE);

      dispatched |= g_main_context_iteration (b, FALSE);
      if (!dispatched)
        g_thread_yield ();
    }
}

static void
assert_send_closed (SparkDispatcher *dispatcher)
{
  GError *error = NULL;

  g_assert_false (spark_dispatcher_send_command (dispatcher, "ok", NULL, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);

  g_assert_false (spark_dispatcher_try_send_command (dispatcher, "ok", NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
}

/* Starting ----------------------------------------------------------------------- */

/* start() on a context of the test's: the handler runs when, and only when,
 * that context is iterated, on the thread iterating it. */
static void
test_start_context (void)
{
  GMainContext *context = g_main_context_new ();
  State *state = state_new (NULL);
  SparkHandler *handler = state_handler_new (state);
  SparkModuleServer *server = spark_module_server_new (handler);
  SparkDispatcher *dispatcher;
  SparkTestOutcome outcome = { 0, NULL, NULL };
  Stopped stopped = { 0, FALSE, NULL, 0, NULL };
  GError *error = NULL;

  state->expected = context;

  g_assert_true (spark_module_server_start (server, context, &error));
  g_assert_no_error (error);
  g_assert_true (spark_module_server_get_running (server));
  dispatcher = spark_module_server_create_dispatcher (server);

  spark_dispatcher_request_full (dispatcher, "where", NULL, NULL, NULL, spark_test_outcome_cb, &outcome, NULL);

  /* The caller's context does not run it. */
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_cmpint (state->n_requests, ==, 0);

  spark_test_wait_count (context, &state->n_requests, 1);
  g_assert_true (state->thread == g_thread_self ());
  g_assert_true (state->owns_expected);

  /* The reply comes on the requester's context. */
  spark_test_wait_flag (NULL, &outcome.done);
  assert_reply_string (&outcome, "where");

  spark_module_server_shutdown_async (server, SPARK_SHUTDOWN_MODE_DRAIN, NULL, on_stopped, &stopped);
  wait_flag_both (context, NULL, &stopped.done);
  g_assert_true (stopped.ret);
  g_assert_no_error (stopped.error);
  g_assert_false (spark_module_server_get_running (server));

  spark_test_outcome_clear (&outcome);
  g_object_unref (dispatcher);
  g_object_unref (server);
  g_object_unref (handler);
  g_main_context_unref (context);
  state_free (state);
}

/* start (NULL): the calling thread's thread-default context, pushed or the
 * global default. */
static void
test_start_thread_default (void)
{
  GMainContext *context = g_main_context_new ();
  State *state = state_new (context);
  SparkHandler *handler = state_handler_new (state);
  SparkModuleServer *server = spark_module_server_new (handler);
  SparkDispatcher *dispatcher;
  SparkTestOutcome outcome = { 0, NULL, NULL };
  GError *error = NULL;

  /* A pushed context. */
  g_main_context_push_thread_default (context);
  state->expected = context;

  g_assert_true (spark_module_server_start (server, NULL, &error));
  g_assert_no_error (error);
  dispatcher = spark_module_server_create_dispatcher (server);

  spark_dispatcher_request_full (dispatcher, "where", NULL, NULL, NULL, spark_test_outcome_cb, &outcome, NULL);
  spark_test_iterate_pending (g_main_context_default ());   /* the global default context: nothing */
  g_assert_cmpint (state->n_requests, ==, 0);

  spark_test_wait_flag (context, &outcome.done);
  assert_reply_string (&outcome, "where");
  g_assert_true (state->thread == g_thread_self ());
  g_assert_true (state->owns_expected);
  g_assert_true (state->thread_default == context);
  spark_test_outcome_clear (&outcome);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_main_context_pop_thread_default (context);
  g_clear_object (&dispatcher);
  g_clear_object (&server);
  g_clear_object (&handler);
  state_free (state);

  /* Nothing pushed: the global default context. */
  state = state_new (NULL);
  handler = state_handler_new (state);
  server = spark_module_server_new (handler);
  state->expected = g_main_context_default ();

  g_assert_true (spark_module_server_start (server, NULL, &error));
  g_assert_no_error (error);
  dispatcher = spark_module_server_create_dispatcher (server);

  spark_dispatcher_request_full (dispatcher, "where", NULL, NULL, NULL, spark_test_outcome_cb, &outcome, NULL);
  g_main_context_iteration (context, FALSE);
  g_assert_cmpint (state->n_requests, ==, 0);
  spark_test_wait_flag (NULL, &outcome.done);
  assert_reply_string (&outcome, "where");
  g_assert_true (state->thread == g_thread_self ());
  g_assert_true (state->owns_expected);
  spark_test_outcome_clear (&outcome);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_object_unref (dispatcher);
  g_object_unref (server);
  g_object_unref (handler);
  state_free (state);
  g_main_context_unref (context);
}

/* The length in bytes of the longest prefix of @name made of whole UTF-8
 * characters that fits in a Linux thread name (15 bytes). */
static gsize
longest_fitting_prefix (const char *name)
{
  const char *end = name;

  while (*end != '\0' && g_utf8_next_char (end) - name <= 15)
    end = g_utf8_next_char (end);

  return (gsize) (end - name);
}

/* start_in_thread(): a thread named after the server, whose thread-default
 * context is the one the handler runs on. */
static void
check_start_in_thread (const char *name)
{
  State *state = state_new (NULL);
  SparkHandler *handler = state_handler_new (state);
  SparkModuleServer *server = spark_module_server_new (handler);
  SparkDispatcher *dispatcher;
  GMainContext *first_context;
  GError *error = NULL;
  GVariant *reply;

  spark_module_server_set_name (server, name);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  dispatcher = spark_module_server_create_dispatcher (server);

  reply = spark_dispatcher_request_sync (dispatcher, "where", NULL, NULL, NULL, &error);
  g_assert_no_error (error);
  g_variant_unref (reply);

  g_assert_nonnull (state->thread);
  g_assert_true (state->thread != g_thread_self ());
  g_assert_cmpstr (state->thread_name, !=, "");
  /* Linux thread names hold 15 bytes: the name, or as much of it as fits
   * in whole UTF-8 characters. */
  g_assert_true (g_str_has_prefix (name, state->thread_name));
  g_assert_true (g_utf8_validate (state->thread_name, -1, NULL));
  g_assert_cmpuint (strlen (state->thread_name), ==, longest_fitting_prefix (name));
  g_assert_nonnull (state->thread_default);
  g_assert_true (state->thread_default != g_main_context_default ());
  g_assert_true (state->owns_thread_default);

  /* The same thread and context for every message. */
  first_context = g_main_context_ref (state->thread_default);
  reply = spark_dispatcher_request_sync (dispatcher, "where", NULL, NULL, NULL, &error);
  g_assert_no_error (error);
  g_variant_unref (reply);
  g_assert_true (state->thread_default == first_context);
  g_main_context_unref (first_context);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_object_unref (dispatcher);
  g_object_unref (server);
  g_object_unref (handler);
  state_free (state);
}

static void
test_start_in_thread (void)
{
  check_start_in_thread ("spark-srv");
}

static void
test_start_in_thread_long_name (void)
{
  check_start_in_thread ("key-value-module-server");
  /* The first "é" would take bytes 15 and 16: it is left out, not cut. */
  check_start_in_thread ("module-server-été");
}

static void
test_start_already_started (void)
{
  GMainContext *context = g_main_context_new ();
  State *state = state_new (NULL);
  SparkHandler *handler = state_handler_new (state);
  SparkModuleServer *server = spark_module_server_new (handler);
  SparkDispatcher *dispatcher;
  GError *error = NULL;
  GVariant *reply;

  /* start, then start again */
  g_assert_true (spark_module_server_start (server, NULL, &error));
  g_assert_no_error (error);
  g_assert_false (spark_module_server_start (server, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_ALREADY_STARTED);
  g_clear_error (&error);
  g_assert_false (spark_module_server_start (server, context, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_ALREADY_STARTED);
  g_clear_error (&error);
  g_assert_false (spark_module_server_start_in_thread (server, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_ALREADY_STARTED);
  g_clear_error (&error);
  g_assert_true (spark_module_server_get_running (server));

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);

  /* Still refused once stopped: a server starts once. */
  g_assert_false (spark_module_server_start (server, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_ALREADY_STARTED);
  g_clear_error (&error);
  g_object_unref (server);

  /* start_in_thread, then start or start_in_thread */
  server = spark_module_server_new (handler);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  g_assert_false (spark_module_server_start (server, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_ALREADY_STARTED);
  g_clear_error (&error);
  g_assert_false (spark_module_server_start (server, context, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_ALREADY_STARTED);
  g_clear_error (&error);
  g_assert_false (spark_module_server_start_in_thread (server, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_ALREADY_STARTED);
  g_clear_error (&error);

  /* The refused starts changed nothing: it serves on its thread. */
  dispatcher = spark_module_server_create_dispatcher (server);
  reply = spark_dispatcher_request_sync (dispatcher, "where", NULL, NULL, NULL, &error);
  g_assert_no_error (error);
  g_variant_unref (reply);
  g_assert_true (state->thread != g_thread_self ());

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_object_unref (dispatcher);
  g_object_unref (server);
  g_object_unref (handler);
  g_main_context_unref (context);
  state_free (state);
}

static void
test_start_closed (void)
{
  State *state = state_new (NULL);
  SparkHandler *handler = state_handler_new (state);
  SparkModuleServer *server = spark_module_server_new (handler);
  SparkDispatcher *dispatcher = spark_module_server_create_dispatcher (server);
  GError *error = NULL;

  /* Never started: sends fail CLOSED. */
  assert_send_closed (dispatcher);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);

  g_assert_false (spark_module_server_start (server, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
  g_assert_false (spark_module_server_start_in_thread (server, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
  g_assert_false (spark_module_server_get_running (server));
  assert_send_closed (dispatcher);
  g_object_unref (server);

  /* The same after an ABORT. */
  server = spark_module_server_new (handler);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_ABORT);
  g_assert_false (spark_module_server_start_in_thread (server, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
  g_assert_false (spark_module_server_start (server, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);

  g_assert_cmpint (state->n_requests + state->n_commands, ==, 0);

  g_object_unref (server);
  g_object_unref (dispatcher);
  g_object_unref (handler);
  state_free (state);
}

/* Shutting down ----------------------------------------------------------------- */

/* Never started, or already stopped: TRUE, from a later iteration. */
static void
test_shutdown_never_started (Fixture       *f,
                             gconstpointer  data)
{
  Stopped stopped = { 0, FALSE, NULL, 0, NULL };
  SparkShutdownMode modes[] = { SPARK_SHUTDOWN_MODE_DRAIN, SPARK_SHUTDOWN_MODE_ABORT };

  for (guint i = 0; i < G_N_ELEMENTS (modes); i++)
    {
      stopped.done = FALSE;
      spark_module_server_shutdown_async (f->s.server, modes[i], NULL, on_stopped, &stopped);
      g_assert_false (stopped.done);
      spark_test_wait_flag (NULL, &stopped.done);
      g_assert_true (stopped.ret);
      g_assert_no_error (stopped.error);
      g_assert_false (spark_module_server_get_running (f->s.server));
    }
}

static void
test_shutdown_already_stopped (Fixture       *f,
                               gconstpointer  data)
{
  Stopped stopped = { 0, FALSE, NULL, 0, NULL };
  SparkShutdownMode modes[] = { SPARK_SHUTDOWN_MODE_DRAIN, SPARK_SHUTDOWN_MODE_ABORT };

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);

  for (guint i = 0; i < G_N_ELEMENTS (modes); i++)
    {
      stopped.done = FALSE;
      spark_module_server_shutdown_async (f->s.server, modes[i], NULL, on_stopped, &stopped);
      g_assert_false (stopped.done);
      spark_test_wait_flag (NULL, &stopped.done);
      g_assert_true (stopped.ret);
      g_assert_no_error (stopped.error);
    }
}

/* DRAIN: everything queued is handled, in order, before the server stops;
 * the mailbox is closed at once. */
static void
test_shutdown_drain (Fixture       *f,
                     gconstpointer  data)
{
  SparkTestOutcome outcomes[3] = { { 0, NULL, NULL }, };
  SparkTestOutcome late = { 0, NULL, NULL };
  Stopped stopped = { 0, FALSE, NULL, 0, NULL };
  GError *error = NULL;
  char *log;

  /* Queued while the server's context is not iterated. */
  for (guint i = 0; i < G_N_ELEMENTS (outcomes); i++)
    {
      spark_dispatcher_request_full (f->s.dispatcher, "echo", g_variant_new_int32 (i), NULL, NULL,
                                     spark_test_outcome_cb, &outcomes[i], NULL);
      g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "ok", g_variant_new_int32 (i),
                                                    NULL, &error));
      g_assert_no_error (error);
    }
  g_assert_cmpuint (spark_module_server_get_pending (f->s.server), ==, 6);

  spark_module_server_shutdown_async (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN, NULL, on_stopped, &stopped);
  g_assert_cmpuint (spark_module_server_get_pending (f->s.server), ==, 6);

  /* Closed at once, before anything queued was handled. */
  assert_send_closed (f->s.dispatcher);
  spark_dispatcher_request_full (f->s.dispatcher, "echo", NULL, NULL, NULL, spark_test_outcome_cb, &late, NULL);
  g_assert_cmpint (f->state->n_requests + f->state->n_commands, ==, 0);
  g_assert_true (spark_module_server_get_running (f->s.server));

  spark_test_wait_flag (NULL, &stopped.done);
  g_assert_true (stopped.ret);
  g_assert_no_error (stopped.error);
  g_assert_false (spark_module_server_get_running (f->s.server));

  log = spark_test_log_dup (&f->state->log);
  g_assert_cmpstr (log, ==, "echo:0 ok:0 echo:1 ok:1 echo:2 ok:2");
  g_free (log);

  for (guint i = 0; i < G_N_ELEMENTS (outcomes); i++)
    {
      spark_test_wait_flag (NULL, &outcomes[i].done);
      g_assert_no_error (outcomes[i].error);
      g_assert_cmpint (g_variant_get_int32 (outcomes[i].reply), ==, (gint) i);
      spark_test_outcome_clear (&outcomes[i]);
    }
  spark_test_wait_flag (NULL, &late.done);
  g_assert_error (late.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  spark_test_outcome_clear (&late);
  g_assert_cmpuint (spark_module_server_get_pending (f->s.server), ==, 0);
}

/* ABORT with only queued messages: requests fail CLOSED, commands are
 * dropped unhandled, without command-failed. */
static void
test_shutdown_abort_queued (Fixture       *f,
                            gconstpointer  data)
{
  SparkTestOutcome outcomes[3] = { { 0, NULL, NULL }, };
  SparkTestFailure failure = { 0, NULL, NULL, NULL, NULL };
  Stopped stopped = { 0, FALSE, NULL, 0, NULL };
  GError *error = NULL;

  g_signal_connect (f->s.server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failure);

  for (guint i = 0; i < G_N_ELEMENTS (outcomes); i++)
    {
      spark_dispatcher_request_full (f->s.dispatcher, "echo", g_variant_new_int32 (i), NULL, NULL,
                                     spark_test_outcome_cb, &outcomes[i], NULL);
      g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "fail", NULL, NULL, &error));
      g_assert_no_error (error);
    }

  spark_module_server_shutdown_async (f->s.server, SPARK_SHUTDOWN_MODE_ABORT, NULL, on_stopped, &stopped);
  assert_send_closed (f->s.dispatcher);
  spark_test_wait_flag (NULL, &stopped.done);
  g_assert_true (stopped.ret);

  for (guint i = 0; i < G_N_ELEMENTS (outcomes); i++)
    {
      spark_test_wait_flag (NULL, &outcomes[i].done);
      g_assert_null (outcomes[i].reply);
      g_assert_error (outcomes[i].error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
      spark_test_outcome_clear (&outcomes[i]);
    }

  spark_test_iterate_pending (g_main_context_default ());
  g_assert_cmpint (f->state->n_requests, ==, 0);
  g_assert_cmpint (f->state->n_commands, ==, 0);
  g_assert_cmpint (failure.n, ==, 0);
  g_assert_cmpuint (spark_module_server_get_pending (f->s.server), ==, 0);

  spark_test_failure_clear (&failure);
}

/* ABORT while a sync handler runs: its cancellable is cancelled, its request
 * completes with what it returns; what is queued behind it fails or is
 * dropped. */
static void
check_abort_running (Fixture  *f,
                     gboolean  requester_cancellable)
{
  GCancellable *cancellable = requester_cancellable ? g_cancellable_new () : NULL;
  SparkTestOutcome running = { 0, NULL, NULL };
  SparkTestOutcome queued = { 0, NULL, NULL };
  SparkTestFailure failure = { 0, NULL, NULL, NULL, NULL };
  Stopped stopped = { 0, FALSE, NULL, 0, NULL };
  GError *error = NULL;
  char *log;

  g_signal_connect (f->s.server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failure);

  spark_dispatcher_request_full (f->s.dispatcher, "block", NULL, NULL, cancellable,
                                 spark_test_outcome_cb, &running, NULL);
  spark_test_wait_flag (NULL, &f->state->entered);

  spark_dispatcher_request_full (f->s.dispatcher, "echo", NULL, NULL, NULL, spark_test_outcome_cb, &queued, NULL);
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "fail", NULL, NULL, &error));
  g_assert_no_error (error);
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "ok", NULL, NULL, &error));
  g_assert_no_error (error);

  spark_module_server_shutdown_async (f->s.server, SPARK_SHUTDOWN_MODE_ABORT, NULL, on_stopped, &stopped);
  spark_test_wait_flag (NULL, &stopped.done);
  g_assert_true (stopped.ret);

  g_assert_true (f->state->saw_cancelled);
  g_assert_true (g_cancellable_is_cancelled (f->state->cancellable));

  spark_test_wait_flag (NULL, &running.done);
  assert_reply_string (&running, "cancelled");

  spark_test_wait_flag (NULL, &queued.done);
  g_assert_error (queued.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);

  spark_test_iterate_pending (g_main_context_default ());
  log = spark_test_log_dup (&f->state->log);
  g_assert_cmpstr (log, ==, "block");
  g_free (log);
  g_assert_cmpint (failure.n, ==, 0);
  g_assert_cmpint (f->state->n_commands, ==, 0);

  if (cancellable != NULL)
    g_assert_false (g_cancellable_is_cancelled (cancellable));

  spark_test_outcome_clear (&running);
  spark_test_outcome_clear (&queued);
  spark_test_failure_clear (&failure);
  g_clear_object (&cancellable);
}

static void
test_shutdown_abort_running (Fixture       *f,
                             gconstpointer  data)
{
  check_abort_running (f, FALSE);
}

static void
test_shutdown_abort_running_own_cancellable (Fixture       *f,
                                             gconstpointer  data)
{
  check_abort_running (f, TRUE);
}

/* ABORT while the handler holds an invocation: that request fails CLOSED,
 * so does what is queued (taken from the mailbox with it in one batch, or
 * sent later); commands are dropped. */
static void
test_shutdown_abort_held (Fixture       *f,
                          gconstpointer  data)
{
  SparkTestInvocationHandler *handler = SPARK_TEST_INVOCATION_HANDLER (f->s.handler);
  SparkInvocation *invocation;
  SparkTestOutcome held = { 0, NULL, NULL };
  SparkTestOutcome batched = { 0, NULL, NULL };
  SparkTestOutcome queued = { 0, NULL, NULL };
  SparkTestFailure failure = { 0, NULL, NULL, NULL, NULL };
  Stopped stopped = { 0, FALSE, NULL, 0, NULL };
  GError *error = NULL;

  g_signal_connect (f->s.server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failure);

  /* This handler has no handle_command: were a command handled, it would
   * fail and command-failed would be emitted. */
  spark_dispatcher_request_full (f->s.dispatcher, "held", NULL, NULL, NULL, spark_test_outcome_cb, &held, NULL);
  spark_dispatcher_request_full (f->s.dispatcher, "batched", NULL, NULL, NULL, spark_test_outcome_cb, &batched, NULL);
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "batched", NULL, NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &handler->n_received, 1);

  spark_dispatcher_request_full (f->s.dispatcher, "queued", NULL, NULL, NULL, spark_test_outcome_cb, &queued, NULL);
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "queued", NULL, NULL, &error));
  g_assert_no_error (error);
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_false (held.done);
  g_assert_cmpint (handler->n_received, ==, 1);
  g_assert_cmpuint (spark_module_server_get_pending (f->s.server), ==, 4);

  spark_module_server_shutdown_async (f->s.server, SPARK_SHUTDOWN_MODE_ABORT, NULL, on_stopped, &stopped);
  spark_test_wait_flag (NULL, &stopped.done);
  g_assert_true (stopped.ret);

  spark_test_wait_flag (NULL, &held.done);
  g_assert_error (held.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  spark_test_wait_flag (NULL, &batched.done);
  g_assert_error (batched.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  spark_test_wait_flag (NULL, &queued.done);
  g_assert_error (queued.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_assert_cmpuint (spark_module_server_get_pending (f->s.server), ==, 0);

  /* Completing the held invocation now is quiet. */
  invocation = spark_test_invocation_handler_pop (handler);
  g_assert_true (g_cancellable_is_cancelled (spark_invocation_get_cancellable (invocation)));
  spark_invocation_return_value (invocation, g_variant_new_string ("late"));
  g_object_unref (invocation);

  spark_test_iterate_pending (g_main_context_default ());
  g_assert_cmpint (handler->n_received, ==, 1);
  g_assert_cmpint (failure.n, ==, 0);

  spark_test_outcome_clear (&held);
  spark_test_outcome_clear (&batched);
  spark_test_outcome_clear (&queued);
  spark_test_failure_clear (&failure);
}

/* ABORT while a sync handler that ignores its cancellable runs: it runs to
 * its end, and the server stops (and shutdown completes) only then. */
static void
test_shutdown_abort_ignored (Fixture       *f,
                             gconstpointer  data)
{
  SparkTestOutcome running = { 0, NULL, NULL };
  Stopped stopped = { 0, FALSE, NULL, 0, NULL };

  spark_dispatcher_request_full (f->s.dispatcher, "block-ignore", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &running, NULL);
  spark_test_wait_flag (NULL, &f->state->entered);

  spark_module_server_shutdown_async (f->s.server, SPARK_SHUTDOWN_MODE_ABORT, NULL, on_stopped, &stopped);
  assert_send_closed (f->s.dispatcher);

  spark_test_iterate_pending (g_main_context_default ());
  g_assert_false (stopped.done);
  g_assert_false (running.done);
  g_assert_false (f->state->finished);
  g_assert_true (spark_module_server_get_running (f->s.server));

  spark_test_gate_open (&f->state->gate);
  spark_test_wait_flag (NULL, &stopped.done);
  g_assert_true (stopped.ret);
  g_assert_true (f->state->finished);
  g_assert_false (spark_module_server_get_running (f->s.server));

  /* The handler's cancellable had been cancelled; its reply went through. */
  g_assert_true (g_cancellable_is_cancelled (f->state->cancellable));
  spark_test_wait_flag (NULL, &running.done);
  assert_reply_string (&running, "finished");

  spark_test_outcome_clear (&running);
}

/* The callback of shutdown_async runs once the server's thread has ended. */
static void
test_shutdown_after_thread (void)
{
  SparkShutdownMode modes[] = { SPARK_SHUTDOWN_MODE_DRAIN, SPARK_SHUTDOWN_MODE_ABORT };

  for (guint i = 0; i < G_N_ELEMENTS (modes); i++)
    {
      State *state = state_new (NULL);
      SparkHandler *handler = state_handler_new (state);
      SparkModuleServer *server = spark_module_server_new (handler);
      SparkDispatcher *dispatcher;
      Stopped stopped = { 0, FALSE, NULL, 0, NULL };
      GError *error = NULL;
      GVariant *reply;

      stopped.state = state;

      g_assert_true (spark_module_server_start_in_thread (server, &error));
      g_assert_no_error (error);
      dispatcher = spark_module_server_create_dispatcher (server);

      reply = spark_dispatcher_request_sync (dispatcher, "mark-exit", NULL, NULL, NULL, &error);
      g_assert_no_error (error);
      g_variant_unref (reply);
      g_assert_false (state->thread_exited);

      spark_module_server_shutdown_async (server, modes[i], NULL, on_stopped, &stopped);
      spark_test_wait_flag (NULL, &stopped.done);
      g_assert_true (stopped.ret);
      g_assert_true (stopped.thread_exited_then);

      g_object_unref (dispatcher);
      g_object_unref (server);
      g_object_unref (handler);
      state_free (state);
    }
}

/* The cancellable of shutdown_async abandons the wait, not the shutdown. */
static void
test_shutdown_cancel_wait (Fixture       *f,
                           gconstpointer  data)
{
  GCancellable *cancellable = g_cancellable_new ();
  SparkTestOutcome running = { 0, NULL, NULL };
  Stopped abandoned = { 0, FALSE, NULL, 0, NULL };
  Stopped stopped = { 0, FALSE, NULL, 0, NULL };

  spark_dispatcher_request_full (f->s.dispatcher, "block-ignore", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &running, NULL);
  spark_test_wait_flag (NULL, &f->state->entered);

  spark_module_server_shutdown_async (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN, cancellable,
                                      on_stopped, &abandoned);
  g_cancellable_cancel (cancellable);
  spark_test_wait_flag (NULL, &abandoned.done);
  g_assert_false (abandoned.ret);
  g_assert_error (abandoned.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);

  /* The shutdown goes on: closed, still running, then stopped. */
  g_assert_true (spark_module_server_get_running (f->s.server));
  assert_send_closed (f->s.dispatcher);

  spark_test_gate_open (&f->state->gate);
  spark_module_server_shutdown_async (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN, NULL, on_stopped, &stopped);
  spark_test_wait_flag (NULL, &stopped.done);
  g_assert_true (stopped.ret);
  g_assert_no_error (stopped.error);
  g_assert_false (spark_module_server_get_running (f->s.server));
  spark_test_wait_flag (NULL, &running.done);
  assert_reply_string (&running, "finished");

  g_clear_error (&abandoned.error);
  spark_test_outcome_clear (&running);
  g_object_unref (cancellable);
}

/* Shut down from inside a handler, with messages behind it already taken
 * from the mailbox in the same batch: DRAIN handles them, ABORT fails the
 * requests and drops the commands. */
static void
check_shutdown_from_handler (Fixture           *f,
                             SparkShutdownMode  mode)
{
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkTestFailure failure = { 0, NULL, NULL, NULL, NULL };
  Stopped stopped = { 0, FALSE, NULL, 0, NULL };
  GError *error = NULL;
  char *log;

  f->state->server = f->s.server;
  f->state->stopped = &stopped;
  g_signal_connect (f->s.server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failure);

  /* All queued before the server's context runs: one batch. */
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "shutdown-self", g_variant_new_int32 (mode),
                                                NULL, &error));
  g_assert_no_error (error);
  spark_dispatcher_request_full (f->s.dispatcher, "echo", g_variant_new_int32 (1), NULL, NULL,
                                 spark_test_outcome_cb, &outcome, NULL);
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "ok", g_variant_new_int32 (2), NULL, &error));
  g_assert_no_error (error);
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "fail", NULL, NULL, &error));
  g_assert_no_error (error);

  spark_test_wait_flag (NULL, &stopped.done);
  g_assert_true (stopped.ret);
  g_assert_false (spark_module_server_get_running (f->s.server));
  spark_test_wait_flag (NULL, &outcome.done);
  spark_test_iterate_pending (g_main_context_default ());

  log = spark_test_log_dup (&f->state->log);
  if (mode == SPARK_SHUTDOWN_MODE_DRAIN)
    {
      g_assert_cmpstr (log, ==, "shutdown-self:0 echo:1 ok:2 fail");
      g_assert_no_error (outcome.error);
      g_assert_cmpint (g_variant_get_int32 (outcome.reply), ==, 1);
      g_assert_cmpint (failure.n, ==, 1);
    }
  else
    {
      g_assert_cmpstr (log, ==, "shutdown-self:1");
      g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
      g_assert_cmpint (failure.n, ==, 0);
    }
  g_free (log);
  g_assert_cmpuint (spark_module_server_get_pending (f->s.server), ==, 0);

  spark_test_outcome_clear (&outcome);
  spark_test_failure_clear (&failure);
}

static void
test_shutdown_drain_from_handler (Fixture       *f,
                                  gconstpointer  data)
{
  check_shutdown_from_handler (f, SPARK_SHUTDOWN_MODE_DRAIN);
}

static void
test_shutdown_abort_from_handler (Fixture       *f,
                                  gconstpointer  data)
{
  check_shutdown_from_handler (f, SPARK_SHUTDOWN_MODE_ABORT);
}

/* DRAIN while the handler holds an invocation: the server waits for it,
 * handles what is queued, then stops. */
static void
test_shutdown_drain_held (Fixture       *f,
                          gconstpointer  data)
{
  SparkTestInvocationHandler *handler = SPARK_TEST_INVOCATION_HANDLER (f->s.handler);
  SparkInvocation *invocation;
  SparkTestOutcome first = { 0, NULL, NULL };
  SparkTestOutcome second = { 0, NULL, NULL };
  Stopped stopped = { 0, FALSE, NULL, 0, NULL };

  spark_dispatcher_request_full (f->s.dispatcher, "first", NULL, NULL, NULL, spark_test_outcome_cb, &first, NULL);
  spark_test_wait_count (NULL, &handler->n_received, 1);
  spark_dispatcher_request_full (f->s.dispatcher, "second", NULL, NULL, NULL, spark_test_outcome_cb, &second, NULL);

  spark_module_server_shutdown_async (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN, NULL, on_stopped, &stopped);
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_false (stopped.done);
  g_assert_false (first.done);
  g_assert_cmpint (handler->n_received, ==, 1);
  g_assert_false (g_cancellable_is_cancelled (
    spark_invocation_get_cancellable (g_ptr_array_index (handler->invocations, 0))));

  invocation = spark_test_invocation_handler_pop (handler);
  spark_invocation_return_value (invocation, g_variant_new_string ("one"));
  g_object_unref (invocation);
  spark_test_wait_count (NULL, &handler->n_received, 2);
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_false (stopped.done);

  invocation = spark_test_invocation_handler_pop (handler);
  spark_invocation_return_value (invocation, g_variant_new_string ("two"));
  g_object_unref (invocation);

  spark_test_wait_flag (NULL, &stopped.done);
  g_assert_true (stopped.ret);
  spark_test_wait_flag (NULL, &first.done);
  spark_test_wait_flag (NULL, &second.done);
  assert_reply_string (&first, "one");
  assert_reply_string (&second, "two");

  spark_test_outcome_clear (&first);
  spark_test_outcome_clear (&second);
}

/* The send_shutdown token is cancelled once the server has stopped, however
 * it stopped. */
static void
test_shutdown_token_reached (Fixture       *f,
                             gconstpointer  data)
{
  GCancellable *token = g_cancellable_new ();
  Stopped stopped = { 0, FALSE, NULL, 0, NULL };
  GError *error = NULL;
  char *log;

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "ok", g_variant_new_int32 (1), NULL, &error));
  g_assert_no_error (error);
  g_assert_true (spark_dispatcher_send_shutdown (f->s.dispatcher, token, &error));
  g_assert_no_error (error);
  g_assert_false (spark_dispatcher_send_shutdown (f->s.dispatcher, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
  assert_send_closed (f->s.dispatcher);

  spark_module_server_shutdown_async (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN, NULL, on_stopped, &stopped);
  spark_test_wait_flag (NULL, &stopped.done);
  g_assert_true (stopped.ret);
  g_assert_true (g_cancellable_is_cancelled (token));

  log = spark_test_log_dup (&f->state->log);
  g_assert_cmpstr (log, ==, "ok:1");
  g_free (log);

  g_object_unref (token);
}

static void
test_shutdown_token_abort (Fixture       *f,
                           gconstpointer  data)
{
  GCancellable *token = g_cancellable_new ();
  SparkTestOutcome running = { 0, NULL, NULL };
  Stopped stopped = { 0, FALSE, NULL, 0, NULL };
  GError *error = NULL;
  char *log;

  spark_dispatcher_request_full (f->s.dispatcher, "block-ignore", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &running, NULL);
  spark_test_wait_flag (NULL, &f->state->entered);
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "ok", NULL, NULL, &error));
  g_assert_no_error (error);
  g_assert_true (spark_dispatcher_send_shutdown (f->s.dispatcher, token, &error));
  g_assert_no_error (error);

  /* ABORT drops the queued shutdown message; the token is still cancelled,
   * but only once the server has stopped. */
  spark_module_server_shutdown_async (f->s.server, SPARK_SHUTDOWN_MODE_ABORT, NULL, on_stopped, &stopped);
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_false (g_cancellable_is_cancelled (token));
  g_assert_false (stopped.done);

  spark_test_gate_open (&f->state->gate);
  spark_test_wait_flag (NULL, &stopped.done);
  g_assert_true (stopped.ret);
  g_assert_true (g_cancellable_is_cancelled (token));

  log = spark_test_log_dup (&f->state->log);
  g_assert_cmpstr (log, ==, "block-ignore");
  g_free (log);

  spark_test_wait_flag (NULL, &running.done);
  assert_reply_string (&running, "finished");

  spark_test_outcome_clear (&running);
  g_object_unref (token);
}

/* A shutdown_async DRAIN after a send_shutdown, on a server on the
 * caller's context: the token is cancelled too. */
static void
test_shutdown_token_drain (Fixture       *f,
                           gconstpointer  data)
{
  GCancellable *token = g_cancellable_new ();
  GError *error = NULL;
  char *log;

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "ok", g_variant_new_int32 (1), NULL, &error));
  g_assert_no_error (error);
  g_assert_true (spark_dispatcher_send_shutdown (f->s.dispatcher, token, &error));
  g_assert_no_error (error);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_true (g_cancellable_is_cancelled (token));
  log = spark_test_log_dup (&f->state->log);
  g_assert_cmpstr (log, ==, "ok:1");
  g_free (log);

  g_object_unref (token);
}

/* Lifetime --------------------------------------------------------------------- */

/* A started server lives on without user references, serves, and goes
 * away once it has stopped. */
static void
test_lifetime_keeps_alive (void)
{
  State *state = state_new (NULL);
  SparkHandler *handler = state_handler_new (state);
  SparkModuleServer *server = spark_module_server_new (handler);
  SparkDispatcher *dispatcher;
  GCancellable *token = g_cancellable_new ();
  SparkTestWatch watch;
  GError *error = NULL;
  GVariant *reply;

  spark_test_watch_init (&watch, server, NULL);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  dispatcher = spark_module_server_create_dispatcher (server);

  /* The server's thread holds the last reference from here on, and
   * keeps the server alive until it has been shut down. */
  g_object_unref (server);
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_false (spark_test_watch_finalized (&watch));
  g_assert_true (spark_module_server_get_running (server));

  reply = spark_dispatcher_request_sync (dispatcher, "echo", g_variant_new_int32 (7), NULL, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpint (g_variant_get_int32 (reply), ==, 7);
  g_variant_unref (reply);
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_false (spark_test_watch_finalized (&watch));

  g_assert_true (spark_dispatcher_send_shutdown (dispatcher, token, &error));
  g_assert_no_error (error);
  spark_test_watch_wait (&watch);
  g_assert_true (g_cancellable_is_cancelled (token));
  assert_send_closed (dispatcher);

  g_object_unref (token);
  g_object_unref (dispatcher);
  g_object_unref (handler);
  state_free (state);
}

static void
on_echo_reply (GVariant     *reply,
               const GError *error,
               gpointer      user_data)
{
  gint *flag = user_data;

  g_assert_no_error (error);
  g_assert_cmpint (g_variant_get_int32 (reply), ==, 8);
  g_atomic_int_set (flag, TRUE);
}

static void
test_lifetime_keeps_alive_context (void)
{
  State *state = state_new (NULL);
  SparkHandler *handler = state_handler_new (state);
  SparkModuleServer *server = spark_module_server_new (handler);
  SparkDispatcher *dispatcher;
  GCancellable *token = g_cancellable_new ();
  gpointer weak = server;
  gint replied = FALSE;
  GError *error = NULL;

  g_object_add_weak_pointer (G_OBJECT (server), &weak);
  g_assert_true (spark_module_server_start (server, NULL, &error));
  g_assert_no_error (error);
  dispatcher = spark_module_server_create_dispatcher (server);

  g_object_unref (server);
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_nonnull (weak);

  spark_dispatcher_request_full (dispatcher, "echo", g_variant_new_int32 (8), NULL, NULL,
                                 on_echo_reply, &replied, NULL);
  spark_test_wait_flag (NULL, &replied);
  g_assert_nonnull (weak);

  g_assert_true (spark_dispatcher_send_shutdown (dispatcher, token, &error));
  g_assert_no_error (error);
  while (weak != NULL)
    g_main_context_iteration (NULL, TRUE);
  g_assert_true (g_cancellable_is_cancelled (token));
  assert_send_closed (dispatcher);

  g_object_unref (token);
  g_object_unref (dispatcher);
  g_object_unref (handler);
  state_free (state);
}

/* After it has stopped, the server is finalized with its last reference. */
static void
test_lifetime_finalized (void)
{
  for (guint own_thread = 0; own_thread < 2; own_thread++)
    {
      State *state = state_new (NULL);
      SparkHandler *handler = state_handler_new (state);
      SparkModuleServer *server = spark_module_server_new (handler);
      gpointer weak = server;
      gpointer weak_handler = handler;
      GError *error = NULL;

      g_object_add_weak_pointer (G_OBJECT (server), &weak);
      g_object_add_weak_pointer (G_OBJECT (handler), &weak_handler);
      if (own_thread)
        g_assert_true (spark_module_server_start_in_thread (server, &error));
      else
        g_assert_true (spark_module_server_start (server, NULL, &error));
      g_assert_no_error (error);

      spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
      g_assert_nonnull (weak);

      g_object_unref (server);
      g_assert_null (weak);

      /* And the server's reference on its handler with it. */
      g_object_unref (handler);
      g_assert_null (weak_handler);
      state_free (state);
    }
}

/* Dispatchers outlive their server: sends fail CLOSED. */
static void
test_lifetime_dispatchers (void)
{
  State *state = state_new (NULL);
  SparkHandler *handler = state_handler_new (state);
  SparkModuleServer *server = spark_module_server_new (handler);
  SparkDispatcher *dispatcher = spark_module_server_create_dispatcher (server);
  SparkTestOutcome outcome = { 0, NULL, NULL };
  gpointer weak = server;
  GError *error = NULL;

  /* Never started. */
  g_object_add_weak_pointer (G_OBJECT (server), &weak);
  g_object_unref (server);
  g_assert_null (weak);

  assert_send_closed (dispatcher);
  g_assert_null (spark_dispatcher_request_sync (dispatcher, "echo", NULL, NULL, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
  spark_dispatcher_request_full (dispatcher, "echo", NULL, NULL, NULL, spark_test_outcome_cb, &outcome, NULL);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  spark_test_outcome_clear (&outcome);
  g_assert_false (spark_dispatcher_send_shutdown (dispatcher, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
  g_object_unref (dispatcher);

  /* Started, stopped and dropped. */
  server = spark_module_server_new (handler);
  weak = server;
  g_object_add_weak_pointer (G_OBJECT (server), &weak);
  dispatcher = spark_module_server_create_dispatcher (server);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_object_unref (server);
  g_assert_null (weak);

  assert_send_closed (dispatcher);
  g_assert_null (spark_dispatcher_request_sync (dispatcher, "echo", NULL, NULL, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
  spark_dispatcher_request_full (dispatcher, "echo", NULL, NULL, NULL, spark_test_outcome_cb, &outcome, NULL);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  spark_test_outcome_clear (&outcome);

  g_assert_cmpint (state->n_requests + state->n_commands, ==, 0);
  g_object_unref (dispatcher);
  g_object_unref (handler);
  state_free (state);
}

/* Properties -------------------------------------------------------------------- */

static void
count_notify (GObject    *object,
              GParamSpec *pspec,
              gpointer    user_data)
{
  gint *count = user_data;

  g_atomic_int_inc (count);
}

static void
test_property_handler (void)
{
  State *state = state_new (NULL);
  SparkHandler *handler = state_handler_new (state);
  SparkHandler *other = state_handler_new (state);
  SparkModuleServer *server;
  SparkHandler *got = NULL;
  GParamSpec *pspec;

  server = g_object_new (SPARK_TYPE_MODULE_SERVER, "handler", handler, NULL);
  g_assert_true (spark_module_server_get_handler (server) == handler);
  g_object_get (server, "handler", &got, NULL);
  g_assert_true (got == handler);
  g_object_unref (got);

  pspec = g_object_class_find_property (G_OBJECT_GET_CLASS (server), "handler");
  g_assert_nonnull (pspec);
  g_assert_true (pspec->value_type == SPARK_TYPE_HANDLER);
  g_assert_true (pspec->flags & G_PARAM_CONSTRUCT_ONLY);
  g_assert_true (pspec->flags & G_PARAM_READABLE);

  /* Construct-only: GObject refuses to set it afterwards, with a warning up
   * to GLib 2.74 and a critical since 2.75. Checked at run time: the binary
   * is built against 2.74's headers but may run on a newer GLib. */
  g_test_expect_message ("GLib-GObject",
                         glib_check_version (2, 75, 0) == NULL
                           ? G_LOG_LEVEL_CRITICAL : G_LOG_LEVEL_WARNING,
                         "*construct*handler*");
  g_object_set (server, "handler", other, NULL);
  g_test_assert_expected_messages ();
  g_assert_true (spark_module_server_get_handler (server) == handler);

  g_object_unref (server);
  g_object_unref (other);
  g_object_unref (handler);
  state_free (state);
}

static void
test_property_name (Fixture       *f,
                    gconstpointer  data)
{
  gint notified = 0;
  char *name = NULL;

  g_assert_null (spark_module_server_get_name (f->s.server));
  g_signal_connect (f->s.server, "notify::name", G_CALLBACK (count_notify), &notified);

  spark_module_server_set_name (f->s.server, "key-value");
  g_assert_cmpstr (spark_module_server_get_name (f->s.server), ==, "key-value");
  g_assert_cmpint (notified, ==, 1);
  spark_module_server_set_name (f->s.server, "key-value");
  g_assert_cmpint (notified, ==, 1);

  g_object_set (f->s.server, "name", "other", NULL);
  g_assert_cmpint (notified, ==, 2);
  g_object_get (f->s.server, "name", &name, NULL);
  g_assert_cmpstr (name, ==, "other");
  g_free (name);

  spark_module_server_set_name (f->s.server, NULL);
  g_assert_null (spark_module_server_get_name (f->s.server));
  g_assert_cmpint (notified, ==, 3);
}

static void
test_property_capacity (Fixture       *f,
                        gconstpointer  data)
{
  SparkTestOutcome running = { 0, NULL, NULL };
  gint notified = 0;
  guint capacity = 99;
  GError *error = NULL;

  g_assert_cmpuint (spark_module_server_get_capacity (f->s.server), ==, 0);
  g_signal_connect (f->s.server, "notify::capacity", G_CALLBACK (count_notify), &notified);

  spark_module_server_set_capacity (f->s.server, 2);
  g_assert_cmpuint (spark_module_server_get_capacity (f->s.server), ==, 2);
  g_assert_cmpint (notified, ==, 1);
  spark_module_server_set_capacity (f->s.server, 2);
  g_assert_cmpint (notified, ==, 1);
  g_object_get (f->s.server, "capacity", &capacity, NULL);
  g_assert_cmpuint (capacity, ==, 2);

  g_assert_true (spark_module_server_start_in_thread (f->s.server, &error));
  g_assert_no_error (error);

  /* After start: a critical, ignored. */
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*capacity*");
  spark_module_server_set_capacity (f->s.server, 5);
  g_test_assert_expected_messages ();
  g_assert_cmpuint (spark_module_server_get_capacity (f->s.server), ==, 2);

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*capacity*");
  g_object_set (f->s.server, "capacity", 0, NULL);
  g_test_assert_expected_messages ();
  g_assert_cmpuint (spark_module_server_get_capacity (f->s.server), ==, 2);
  g_assert_cmpint (notified, ==, 1);

  /* The mailbox still holds 2. */
  spark_dispatcher_request_full (f->s.dispatcher, "block-ignore", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &running, NULL);
  spark_test_wait_flag (NULL, &f->state->entered);
  g_assert_true (spark_dispatcher_try_send_command (f->s.dispatcher, "ok", NULL, &error));
  g_assert_no_error (error);
  g_assert_true (spark_dispatcher_try_send_command (f->s.dispatcher, "ok", NULL, &error));
  g_assert_no_error (error);
  g_assert_false (spark_dispatcher_try_send_command (f->s.dispatcher, "ok", NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_clear_error (&error);

  spark_test_gate_open (&f->state->gate);
  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  spark_test_wait_flag (NULL, &running.done);
  assert_reply_string (&running, "finished");
  g_assert_cmpint (f->state->n_commands, ==, 2);

  spark_test_outcome_clear (&running);
}

/* notify::running is emitted on the owner context (the starting thread's
 * thread-default context), only when that context is iterated. */
typedef struct
{
  SparkHandler *handler;
  gint          n_notify;       /* atomic */
  GThread      *notify_thread;
  gboolean      notify_value;
  gboolean      notify_owner;   /* the notify ran with the owner context acquired */
  GMainContext *owner;
} RunningTest;

static void
on_notify_running (GObject    *object,
                   GParamSpec *pspec,
                   gpointer    user_data)
{
  RunningTest *test = user_data;

  test->notify_thread = g_thread_self ();
  test->notify_value = spark_module_server_get_running (SPARK_MODULE_SERVER (object));
  test->notify_owner = g_main_context_is_owner (test->owner);
  g_atomic_int_inc (&test->n_notify);
}

static gpointer
running_owner_thread (gpointer data)
{
  RunningTest *test = data;
  SparkModuleServer *server = spark_module_server_new (test->handler);
  SparkDispatcher *dispatcher;
  GError *error = NULL;
  GVariant *reply;

  test->owner = g_main_context_new ();
  g_main_context_push_thread_default (test->owner);

  g_signal_connect (server, "notify::running", G_CALLBACK (on_notify_running), test);
  g_assert_false (spark_module_server_get_running (server));

  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  g_assert_true (spark_module_server_get_running (server));

  /* The server works, but nothing is emitted until the owner context is
   * iterated. */
  dispatcher = spark_module_server_create_dispatcher (server);
  reply = spark_dispatcher_request_sync (dispatcher, "echo", NULL, NULL, NULL, &error);
  g_assert_no_error (error);
  g_variant_unref (reply);
  g_assert_cmpint (test->n_notify, ==, 0);

  spark_test_wait_count (test->owner, &test->n_notify, 1);
  g_assert_cmpint (test->n_notify, ==, 1);
  g_assert_true (test->notify_thread == g_thread_self ());
  g_assert_true (test->notify_value);
  g_assert_true (test->notify_owner);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpint (test->n_notify, ==, 2);
  g_assert_true (test->notify_thread == g_thread_self ());
  g_assert_false (test->notify_value);
  g_assert_true (test->notify_owner);

  g_object_unref (dispatcher);
  g_object_unref (server);
  g_main_context_pop_thread_default (test->owner);
  g_main_context_unref (test->owner);
  test->owner = NULL;

  return NULL;
}

static void
test_property_running (void)
{
  State *state = state_new (NULL);
  RunningTest test = { NULL, 0, NULL, FALSE, FALSE, NULL };
  GThread *thread;
  GObjectClass *klass = g_type_class_ref (SPARK_TYPE_MODULE_SERVER);
  GParamSpec *pspec = g_object_class_find_property (klass, "running");

  g_assert_nonnull (pspec);
  g_assert_true (pspec->value_type == G_TYPE_BOOLEAN);
  g_assert_true (pspec->flags & G_PARAM_READABLE);
  g_assert_false (pspec->flags & G_PARAM_WRITABLE);
  g_type_class_unref (klass);

  test.handler = state_handler_new (state);
  thread = g_thread_new ("owner", running_owner_thread, &test);
  g_thread_join (thread);

  /* Nothing was left for the main thread. */
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_cmpint (test.n_notify, ==, 2);

  g_object_unref (test.handler);
  state_free (state);
}

static void
on_token_cancelled (GCancellable *token,
                    gpointer      user_data)
{
  gint *flag = user_data;

  g_atomic_int_set (flag, TRUE);
}

static void
test_property_pending (void)
{
  State *state = state_new (NULL);
  SparkHandler *handler = state_handler_new (state);
  SparkModuleServer *server = spark_module_server_new (handler);
  SparkDispatcher *dispatcher;
  GCancellable *token = g_cancellable_new ();
  SparkTestOutcome outcomes[2] = { { 0, NULL, NULL }, };
  SparkTestOutcome running = { 0, NULL, NULL };
  gint stopped = FALSE;
  guint pending = 99;
  GError *error = NULL;
  GVariant *reply;
  GParamSpec *pspec = g_object_class_find_property (G_OBJECT_GET_CLASS (server), "pending");
  gint notified = 0;

  g_assert_nonnull (pspec);
  g_assert_true (pspec->value_type == G_TYPE_UINT);
  g_assert_true (pspec->flags & G_PARAM_READABLE);
  g_assert_false (pspec->flags & G_PARAM_WRITABLE);
  g_signal_connect (server, "notify::pending", G_CALLBACK (count_notify), &notified);

  /* Queued messages on a server whose context is not iterated. */
  g_assert_true (spark_module_server_start (server, NULL, &error));
  g_assert_no_error (error);
  dispatcher = spark_module_server_create_dispatcher (server);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 0);

  for (guint i = 0; i < 3; i++)
    {
      g_assert_true (spark_dispatcher_send_command (dispatcher, "ok", NULL, NULL, &error));
      g_assert_no_error (error);
    }
  for (guint i = 0; i < G_N_ELEMENTS (outcomes); i++)
    spark_dispatcher_request_full (dispatcher, "echo", NULL, NULL, NULL, spark_test_outcome_cb, &outcomes[i], NULL);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 5);
  g_object_get (server, "pending", &pending, NULL);
  g_assert_cmpuint (pending, ==, 5);

  /* The shutdown message does not count. */
  g_cancellable_connect (token, G_CALLBACK (on_token_cancelled), &stopped, NULL);
  g_assert_true (spark_dispatcher_send_shutdown (dispatcher, token, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 5);

  spark_test_wait_flag (NULL, &stopped);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 0);
  g_assert_cmpint (notified, ==, 0);
  g_assert_cmpint (state->n_commands, ==, 3);
  g_assert_cmpint (state->n_requests, ==, 2);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  for (guint i = 0; i < G_N_ELEMENTS (outcomes); i++)
    {
      spark_test_wait_flag (NULL, &outcomes[i].done);
      assert_reply_string (&outcomes[i], "echo");
      spark_test_outcome_clear (&outcomes[i]);
    }
  g_clear_object (&dispatcher);
  g_clear_object (&server);

  /* The message being handled does not count. */
  server = spark_module_server_new (handler);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  dispatcher = spark_module_server_create_dispatcher (server);

  spark_dispatcher_request_full (dispatcher, "block-ignore", NULL, NULL, NULL, spark_test_outcome_cb, &running, NULL);
  spark_test_wait_flag (NULL, &state->entered);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 0);
  for (guint i = 0; i < 2; i++)
    {
      g_assert_true (spark_dispatcher_send_command (dispatcher, "ok", NULL, NULL, &error));
      g_assert_no_error (error);
    }
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 2);

  spark_test_gate_open (&state->gate);
  reply = spark_dispatcher_request_sync (dispatcher, "echo", NULL, NULL, NULL, &error);
  g_assert_no_error (error);
  g_variant_unref (reply);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 0);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  spark_test_wait_flag (NULL, &running.done);
  spark_test_outcome_clear (&running);

  g_object_unref (token);
  g_object_unref (dispatcher);
  g_object_unref (server);
  g_object_unref (handler);
  state_free (state);
}

/* command-failed ------------------------------------------------------------------ */

/* Emitted on the owner context, when it is iterated, with the command's
 * name, parameters and the handler's error; the sender saw success. */
static void
test_command_failed_signal (Fixture       *f,
                            gconstpointer  data)
{
  SparkTestFailure failure = { 0, NULL, NULL, NULL, NULL };
  GError *error = NULL;
  GVariant *reply;
  const char *text;
  gint32 number;

  g_signal_connect (f->s.server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failure);

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "fail", g_variant_new ("(si)", "x", 3),
                                                NULL, &error));
  g_assert_no_error (error);

  /* Handled (mailbox order), not yet emitted. */
  reply = spark_dispatcher_request_sync (f->s.dispatcher, "echo", NULL, NULL, NULL, &error);
  g_assert_no_error (error);
  g_variant_unref (reply);
  g_assert_cmpint (f->state->n_commands, ==, 1);
  g_assert_cmpint (failure.n, ==, 0);

  spark_test_wait_count (NULL, &failure.n, 1);
  g_assert_true (failure.thread == g_thread_self ());
  g_assert_cmpstr (failure.name, ==, "fail");
  g_assert_nonnull (failure.parameters);
  g_variant_get (failure.parameters, "(&si)", &text, &number);
  g_assert_cmpstr (text, ==, "x");
  g_assert_cmpint (number, ==, 3);
  g_assert_error (failure.error, G_IO_ERROR, G_IO_ERROR_FAILED);
  g_assert_cmpstr (failure.error->message, ==, "boom");

  /* Without parameters: NULL. */
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "fail", NULL, NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &failure.n, 2);
  g_assert_null (failure.parameters);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  spark_test_failure_clear (&failure);
}

/* No handler connected: a warning in the SparkChannel domain. */
static void
test_command_failed_warning (Fixture       *f,
                             gconstpointer  data)
{
  GError *error = NULL;

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "fail", NULL, NULL, &error));
  g_assert_no_error (error);
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_WARNING, "*fail*boom*");
  spark_test_wait_count (NULL, &f->state->n_commands, 1);
  g_test_assert_expected_messages ();
  spark_test_iterate_pending (g_main_context_default ());
}

/* A handler connected: debug only. */
static void
test_command_failed_debug (Fixture       *f,
                           gconstpointer  data)
{
  SparkTestFailure failure = { 0, NULL, NULL, NULL, NULL };
  GError *error = NULL;

  g_signal_connect (f->s.server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failure);

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "fail", NULL, NULL, &error));
  g_assert_no_error (error);
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_DEBUG, "*fail*boom*");
  spark_test_wait_count (NULL, &failure.n, 1);
  g_test_assert_expected_messages ();
  g_assert_error (failure.error, G_IO_ERROR, G_IO_ERROR_FAILED);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  spark_test_failure_clear (&failure);
}

/* FALSE without an error: NO_REPLY in the signal. */
static void
test_command_failed_no_reply (Fixture       *f,
                              gconstpointer  data)
{
  SparkTestFailure failure = { 0, NULL, NULL, NULL, NULL };
  GError *error = NULL;

  g_signal_connect (f->s.server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failure);

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "false", g_variant_new_int32 (4), NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &failure.n, 1);
  g_assert_cmpstr (failure.name, ==, "false");
  g_assert_cmpint (g_variant_get_int32 (failure.parameters), ==, 4);
  g_assert_error (failure.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  spark_test_failure_clear (&failure);
}

/* NOT_SUPPORTED ------------------------------------------------------------------- */

#define TEST_TYPE_REQUEST_ONLY (test_request_only_get_type ())
G_DECLARE_FINAL_TYPE (TestRequestOnly, test_request_only, TEST, REQUEST_ONLY, GObject)

struct _TestRequestOnly
{
  GObject parent_instance;
};

static GVariant *
test_request_only_handle_request (SparkHandler  *handler,
                                  const char    *name,
                                  GVariant      *parameters,
                                  GCancellable  *cancellable,
                                  GError       **error)
{
  return g_variant_new_string ("request-only");
}

static void
test_request_only_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_request = test_request_only_handle_request;
}

G_DEFINE_FINAL_TYPE_WITH_CODE (TestRequestOnly, test_request_only, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, test_request_only_iface_init))

static void
test_request_only_class_init (TestRequestOnlyClass *klass)
{
}

static void
test_request_only_init (TestRequestOnly *self)
{
}

#define TEST_TYPE_COMMAND_ONLY (test_command_only_get_type ())
G_DECLARE_FINAL_TYPE (TestCommandOnly, test_command_only, TEST, COMMAND_ONLY, GObject)

struct _TestCommandOnly
{
  GObject parent_instance;
  gint    n_commands;   /* atomic */
};

static gboolean
test_command_only_handle_command (SparkHandler  *handler,
                                  const char    *name,
                                  GVariant      *parameters,
                                  GCancellable  *cancellable,
                                  GError       **error)
{
  g_atomic_int_inc (&TEST_COMMAND_ONLY (handler)->n_commands);
  return TRUE;
}

static void
test_command_only_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_command = test_command_only_handle_command;
}

G_DEFINE_FINAL_TYPE_WITH_CODE (TestCommandOnly, test_command_only, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, test_command_only_iface_init))

static void
test_command_only_class_init (TestCommandOnlyClass *klass)
{
}

static void
test_command_only_init (TestCommandOnly *self)
{
}

static void
test_not_supported_request (Fixture       *f,
                            gconstpointer  data)
{
  TestCommandOnly *handler = TEST_COMMAND_ONLY (f->s.handler);
  SparkTestOutcome outcome = { 0, NULL, NULL };
  GError *error = NULL;

  spark_dispatcher_request_full (f->s.dispatcher, "get", NULL, NULL, NULL, spark_test_outcome_cb, &outcome, NULL);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_null (outcome.reply);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  spark_test_outcome_clear (&outcome);

  /* Its commands work. */
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "log", NULL, NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &handler->n_commands, 1);
}

static void
test_not_supported_command (Fixture       *f,
                            gconstpointer  data)
{
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkTestFailure failure = { 0, NULL, NULL, NULL, NULL };
  GError *error = NULL;

  g_signal_connect (f->s.server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failure);

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "log", NULL, NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &failure.n, 1);
  g_assert_cmpstr (failure.name, ==, "log");
  g_assert_error (failure.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);

  /* Its requests work. */
  spark_dispatcher_request_full (f->s.dispatcher, "get", NULL, NULL, NULL, spark_test_outcome_cb, &outcome, NULL);
  spark_test_wait_flag (NULL, &outcome.done);
  assert_reply_string (&outcome, "request-only");
  spark_test_outcome_clear (&outcome);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  spark_test_failure_clear (&failure);
}

/* Handlers whose types GJS registered --------------------------------------------- */

#define TEST_TYPE_GJS_HANDLER (test_gjs_handler_get_type ())
G_DECLARE_DERIVABLE_TYPE (TestGjsHandler, test_gjs_handler, TEST, GJS_HANDLER, GObject)

struct _TestGjsHandlerClass
{
  GObjectClass parent_class;
};

static GVariant *
test_gjs_handler_handle_request (SparkHandler  *handler,
                                 const char    *name,
                                 GVariant      *parameters,
                                 GCancellable  *cancellable,
                                 GError       **error)
{
  /* JavaScript runs on the main thread only. */
  g_assert_true (g_main_context_is_owner (g_main_context_default ()));
  return g_variant_new_string ("from-js");
}

static void
test_gjs_handler_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_request = test_gjs_handler_handle_request;
}

G_DEFINE_TYPE_WITH_CODE (TestGjsHandler, test_gjs_handler, G_TYPE_OBJECT,
                         G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, test_gjs_handler_iface_init))

static void
test_gjs_handler_class_init (TestGjsHandlerClass *klass)
{
}

static void
test_gjs_handler_init (TestGjsHandler *self)
{
}

#define TEST_TYPE_GJS_SUBHANDLER (test_gjs_subhandler_get_type ())
G_DECLARE_FINAL_TYPE (TestGjsSubhandler, test_gjs_subhandler, TEST, GJS_SUBHANDLER, TestGjsHandler)

struct _TestGjsSubhandler
{
  TestGjsHandler parent_instance;
};

G_DEFINE_FINAL_TYPE (TestGjsSubhandler, test_gjs_subhandler, TEST_TYPE_GJS_HANDLER)

static void
test_gjs_subhandler_class_init (TestGjsSubhandlerClass *klass)
{
}

static void
test_gjs_subhandler_init (TestGjsSubhandler *self)
{
}

/* What GJS does to the types it registers. */
static void
mark_gjs_type (GType type)
{
  g_type_set_qdata (type, g_quark_from_static_string ("gjs::custom-type"), GINT_TO_POINTER (1));
}

static void
assert_not_supported (gboolean  ret,
                      GError  **error)
{
  /* A refusal, not a programmer error: no critical (it would be fatal). */
  g_assert_false (ret);
  g_assert_error (*error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  g_assert_cmpstr ((*error)->message, !=, "");
  g_clear_error (error);
}

/* After refused starts, a start on the global default context works and
 * serves there. */
static void
serve_on_default (SparkModuleServer *server)
{
  SparkDispatcher *dispatcher = spark_module_server_create_dispatcher (server);
  SparkTestOutcome outcome = { 0, NULL, NULL };
  GError *error = NULL;
  gint notified = 0;
  gulong id;

  /* The refused starts did not start anything. */
  id = g_signal_connect (server, "notify::running", G_CALLBACK (count_notify), &notified);
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_cmpint (notified, ==, 0);
  g_assert_false (spark_module_server_get_running (server));
  assert_send_closed (dispatcher);

  g_assert_true (spark_module_server_start (server, g_main_context_default (), &error));
  g_assert_no_error (error);

  spark_dispatcher_request_full (dispatcher, "hello", NULL, NULL, NULL, spark_test_outcome_cb, &outcome, NULL);
  spark_test_wait_flag (NULL, &outcome.done);
  assert_reply_string (&outcome, "from-js");
  spark_test_outcome_clear (&outcome);
  g_assert_cmpint (notified, ==, 1);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpint (notified, ==, 2);
  g_signal_handler_disconnect (server, id);
  g_object_unref (dispatcher);
}

static void
test_gjs_start_in_thread (void)
{
  SparkHandler *handler = g_object_new (TEST_TYPE_GJS_HANDLER, NULL);
  SparkModuleServer *server = spark_module_server_new (handler);
  GError *error = NULL;

  assert_not_supported (spark_module_server_start_in_thread (server, &error), &error);
  assert_not_supported (spark_module_server_start_in_thread (server, &error), &error);
  serve_on_default (server);

  g_object_unref (server);
  g_object_unref (handler);
}

static void
test_gjs_start_other_context (void)
{
  SparkHandler *handler = g_object_new (TEST_TYPE_GJS_HANDLER, NULL);
  SparkModuleServer *server = spark_module_server_new (handler);
  GMainContext *context = g_main_context_new ();
  GError *error = NULL;

  assert_not_supported (spark_module_server_start (server, context, &error), &error);
  serve_on_default (server);
  g_object_unref (server);

  /* start (NULL) with nothing pushed is the global default context. */
  server = spark_module_server_new (handler);
  assert_not_supported (spark_module_server_start (server, context, &error), &error);
  g_assert_true (spark_module_server_start (server, NULL, &error));
  g_assert_no_error (error);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);

  g_object_unref (server);
  g_main_context_unref (context);
  g_object_unref (handler);
}

static void
test_gjs_start_pushed_context (void)
{
  SparkHandler *handler = g_object_new (TEST_TYPE_GJS_HANDLER, NULL);
  SparkModuleServer *server = spark_module_server_new (handler);
  GMainContext *context = g_main_context_new ();
  GError *error = NULL;

  g_main_context_push_thread_default (context);
  assert_not_supported (spark_module_server_start (server, NULL, &error), &error);
  g_main_context_pop_thread_default (context);

  serve_on_default (server);

  g_object_unref (server);
  g_main_context_unref (context);
  g_object_unref (handler);
}

static void
test_gjs_subclass (void)
{
  SparkHandler *handler = g_object_new (TEST_TYPE_GJS_SUBHANDLER, NULL);
  SparkModuleServer *server = spark_module_server_new (handler);
  GMainContext *context = g_main_context_new ();
  GError *error = NULL;

  assert_not_supported (spark_module_server_start_in_thread (server, &error), &error);
  assert_not_supported (spark_module_server_start (server, context, &error), &error);
  g_main_context_push_thread_default (context);
  assert_not_supported (spark_module_server_start (server, NULL, &error), &error);
  g_main_context_pop_thread_default (context);

  serve_on_default (server);

  g_object_unref (server);
  g_main_context_unref (context);
  g_object_unref (handler);
}

/* Stopping with outcomes still due on the server's own thread ---------------
 *
 * A server's thread delivers what is due to its context before it ends:
 * replies to requests its handler made, and shutdown_async() callbacks
 * given on that thread. Nothing asked from a server's thread is lost when
 * that server stops. A guard makes a lost callback a failure, not a hang. */

typedef struct
{
  SparkDispatcher *next;         /* a reference: where "forward" sends, or NULL */
  SparkDispatcher *self;         /* a reference: this server's own, or NULL */
  SparkModuleServer *server;     /* not a reference: for "stop-async" */
  SparkTestGate    gate;         /* "wait" waits for it */
  gint             entered;      /* atomic: "wait" handlers entered */
  gint             replied;      /* atomic: reply_func runs */
  gint             destroyed;    /* atomic: destroy runs */
  gint             stopped;      /* atomic: the shutdown_async callback ran */
  gint             handled;      /* atomic: commands handled */
  GThread         *reply_thread; /* where reply_func ran */
  GThread         *handler_thread;
  GVariant        *reply;        /* a reference */
  GError          *error;
} Chain;

static gboolean
set_flag_cb (gpointer data)
{
  g_atomic_int_set ((gint *) data, TRUE);
  return G_SOURCE_REMOVE;
}

/* Iterates the thread-default context until *@flag, or 30 s at most. */
static gboolean
wait_flag_or_give_up (gint *flag)
{
  GSource *guard = g_timeout_source_new_seconds (30);
  gint gave_up = FALSE;

  g_source_set_callback (guard, set_flag_cb, &gave_up, NULL);
  g_source_attach (guard, g_main_context_get_thread_default ());
  while (!g_atomic_int_get (flag) && !gave_up)
    g_main_context_iteration (NULL, TRUE);
  g_source_destroy (guard);
  g_source_unref (guard);

  return g_atomic_int_get (flag);
}

static void
chain_reply_cb (GVariant     *reply,
                const GError *error,
                gpointer      user_data)
{
  Chain *chain = user_data;

  chain->reply_thread = g_thread_self ();
  chain->reply = reply ? g_variant_ref (reply) : NULL;
  chain->error = error ? g_error_copy (error) : NULL;
  g_atomic_int_inc (&chain->replied);
}

static void
chain_destroy (gpointer user_data)
{
  Chain *chain = user_data;

  g_atomic_int_inc (&chain->destroyed);
  g_main_context_wakeup (g_main_context_default ());
}

static void
chain_stopped_cb (GObject      *source,
                  GAsyncResult *result,
                  gpointer      user_data)
{
  Chain *chain = user_data;
  GError *error = NULL;

  g_assert_true (spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, &error));
  g_assert_no_error (error);
  chain->reply_thread = g_thread_self ();
  g_atomic_int_inc (&chain->stopped);
  g_main_context_wakeup (g_main_context_default ());
}

static GVariant *
chain_request (const char    *name,
               GVariant      *parameters,
               GCancellable  *cancellable,
               gpointer       user_data,
               GError       **error)
{
  Chain *chain = user_data;

  chain->handler_thread = g_thread_self ();

  if (g_str_equal (name, "wait"))
    {
      g_atomic_int_inc (&chain->entered);
      g_main_context_wakeup (g_main_context_default ());
      spark_test_gate_wait (&chain->gate, NULL);
    }
  else if (g_str_equal (name, "forward"))
    spark_dispatcher_request_full (chain->next, "wait", NULL, NULL, NULL,
                                   chain_reply_cb, chain, chain_destroy);
  else if (g_str_equal (name, "self-then-stop"))
    {
      GError *local_error = NULL;

      spark_dispatcher_request_full (chain->self, "echo", NULL, NULL, NULL,
                                     chain_reply_cb, chain, chain_destroy);
      g_assert_true (spark_dispatcher_send_shutdown (chain->self, NULL, &local_error));
      g_assert_no_error (local_error);
    }
  else if (g_str_equal (name, "stop-async"))
    spark_module_server_shutdown_async (chain->server, SPARK_SHUTDOWN_MODE_DRAIN, NULL,
                                        chain_stopped_cb, chain);

  return g_variant_new_string (name);
}

static gboolean
chain_command (const char    *name,
               GVariant      *parameters,
               GCancellable  *cancellable,
               gpointer       user_data,
               GError       **error)
{
  Chain *chain = user_data;

  g_atomic_int_inc (&chain->handled);
  g_main_context_wakeup (g_main_context_default ());

  if (g_str_equal (name, "true-with-error"))
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_FAILED, "not really");
      return TRUE;
    }

  return TRUE;
}

static SparkModuleServer *
chain_server_new (Chain    *chain,
                  gboolean  own_thread)
{
  g_autoptr(SparkHandler) handler = spark_func_handler_new (chain_request, chain_command, chain, NULL);
  SparkModuleServer *server = spark_module_server_new (handler);
  GError *error = NULL;

  if (own_thread)
    g_assert_true (spark_module_server_start_in_thread (server, &error));
  else
    g_assert_true (spark_module_server_start (server, NULL, &error));
  g_assert_no_error (error);

  return server;
}

static void
chain_clear (Chain *chain)
{
  g_clear_object (&chain->next);
  g_clear_object (&chain->self);
  g_clear_pointer (&chain->reply, g_variant_unref);
  g_clear_error (&chain->error);
  spark_test_gate_clear (&chain->gate);
}

/* Server A's handler requests server B; A is drained before B replies:
 * A's thread delivers B's reply before it ends. */
static void
test_stop_due_other_server (void)
{
  Chain b_chain = { 0 };
  Chain a_chain = { 0 };
  SparkModuleServer *b;
  SparkModuleServer *a;
  g_autoptr(SparkDispatcher) to_a = NULL;
  g_autoptr(GVariant) reply = NULL;
  GError *error = NULL;
  gint stopped = FALSE;

  spark_test_gate_init (&b_chain.gate);
  spark_test_gate_init (&a_chain.gate);
  b = chain_server_new (&b_chain, TRUE);
  a = chain_server_new (&a_chain, TRUE);
  a_chain.next = spark_module_server_create_dispatcher (b);
  to_a = spark_module_server_create_dispatcher (a);

  reply = spark_dispatcher_request_sync (to_a, "forward", NULL, NULL, NULL, &error);
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &b_chain.entered, 1);

  /* A stops while B still works on A's request; B replies only once A
   * has stopped handling (running is FALSE from then on). Polls: short. */
  spark_module_server_shutdown_async (a, SPARK_SHUTDOWN_MODE_DRAIN, NULL, spark_test_shutdown_done_cb, &stopped);
  while (spark_module_server_get_running (a))
    {
      g_main_context_iteration (NULL, FALSE);
      g_thread_yield ();
    }
  spark_test_gate_open (&b_chain.gate);

  g_assert_true (wait_flag_or_give_up (&stopped));
  g_assert_cmpint (g_atomic_int_get (&a_chain.replied), ==, 1);
  g_assert_cmpint (g_atomic_int_get (&a_chain.destroyed), ==, 1);
  g_assert_no_error (a_chain.error);
  g_assert_cmpstr (g_variant_get_string (a_chain.reply, NULL), ==, "wait");
  g_assert_true (a_chain.reply_thread == a_chain.handler_thread);

  spark_test_shutdown (b, SPARK_SHUTDOWN_MODE_DRAIN);
  g_object_unref (a);
  g_object_unref (b);
  chain_clear (&a_chain);
  chain_clear (&b_chain);
}

/* A handler requests its own server, then sends it a shutdown: the request
 * is handled before the shutdown, and its reply delivered before the
 * thread ends. */
static void
test_stop_due_self (void)
{
  Chain chain = { 0 };
  SparkModuleServer *server;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GVariant) reply = NULL;
  GError *error = NULL;

  spark_test_gate_init (&chain.gate);
  server = chain_server_new (&chain, TRUE);
  chain.self = spark_module_server_create_dispatcher (server);
  dispatcher = spark_module_server_create_dispatcher (server);

  reply = spark_dispatcher_request_sync (dispatcher, "self-then-stop", NULL, NULL, NULL, &error);
  g_assert_no_error (error);

  g_assert_true (wait_flag_or_give_up (&chain.destroyed));
  g_assert_cmpint (g_atomic_int_get (&chain.replied), ==, 1);
  g_assert_no_error (chain.error);
  g_assert_cmpstr (g_variant_get_string (chain.reply, NULL), ==, "echo");
  g_assert_true (chain.reply_thread == chain.handler_thread);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_object_unref (server);
  chain_clear (&chain);
}

/* shutdown_async called from a start_in_thread handler calls back, on the
 * server's thread, before that thread ends. */
static void
test_stop_due_shutdown_async (void)
{
  Chain chain = { 0 };
  SparkModuleServer *server;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GVariant) reply = NULL;
  GError *error = NULL;

  spark_test_gate_init (&chain.gate);
  server = chain_server_new (&chain, TRUE);
  chain.server = server;
  dispatcher = spark_module_server_create_dispatcher (server);

  reply = spark_dispatcher_request_sync (dispatcher, "stop-async", NULL, NULL, NULL, &error);
  g_assert_no_error (error);

  g_assert_true (wait_flag_or_give_up (&chain.stopped));
  g_assert_cmpint (g_atomic_int_get (&chain.stopped), ==, 1);
  g_assert_true (chain.reply_thread == chain.handler_thread);
  g_assert_false (spark_module_server_get_running (server));

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_object_unref (server);
  chain_clear (&chain);
}

/* A command handler that returns TRUE and sets an error breaks its
 * contract: a critical, the error freed, no command-failed. */
static void
test_command_true_with_error (void)
{
  Chain chain = { 0 };
  SparkModuleServer *server;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  SparkTestFailure failure = { 0, NULL, NULL, NULL, NULL };
  GError *error = NULL;

  spark_test_gate_init (&chain.gate);
  server = chain_server_new (&chain, FALSE);
  g_signal_connect (server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failure);
  dispatcher = spark_module_server_create_dispatcher (server);

  g_assert_true (spark_dispatcher_send_command (dispatcher, "true-with-error", NULL, NULL, &error));
  g_assert_no_error (error);
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*true-with-error*returned TRUE and set an error*");
  spark_test_wait_count (NULL, &chain.handled, 1);
  g_test_assert_expected_messages ();
  spark_test_iterate_pending (NULL);
  g_assert_cmpint (failure.n, ==, 0);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_object_unref (server);
  spark_test_failure_clear (&failure);
  chain_clear (&chain);
}

/* A program without a main loop (only request_sync and send_shutdown)
 * still sees a stopped server released and its thread ended: nothing here
 * iterates the owner context. */
typedef struct
{
  GMutex   mutex;
  GCond    cond;
  gboolean finalized;      /* mutex */
  gboolean thread_ended;   /* mutex */
} Released;

static void
released_set (Released *released,
              gboolean *field)
{
  g_mutex_lock (&released->mutex);
  *field = TRUE;
  g_cond_broadcast (&released->cond);
  g_mutex_unlock (&released->mutex);
}

static void
on_server_finalized (gpointer  data,
                     GObject  *where_the_object_was)
{
  Released *released = data;

  released_set (released, &released->finalized);
}

static void
thread_end_marker_free (gpointer data)
{
  Released *released = data;

  released_set (released, &released->thread_ended);
}

static GPrivate thread_end_marker = G_PRIVATE_INIT (thread_end_marker_free);

static GVariant *
mark_thread_request (const char    *name,
                     GVariant      *parameters,
                     GCancellable  *cancellable,
                     gpointer       user_data,
                     GError       **error)
{
  g_private_set (&thread_end_marker, user_data);
  return g_variant_new_int32 (1);
}

static void
test_lifetime_no_main_loop (void)
{
  Released released = { 0 };
  g_autoptr(SparkHandler) handler = NULL;
  SparkModuleServer *server;
  SparkDispatcher *dispatcher;
  g_autoptr(GCancellable) token = g_cancellable_new ();
  g_autoptr(GVariant) reply = NULL;
  GError *error = NULL;
  gint64 deadline = g_get_monotonic_time () + 30 * G_TIME_SPAN_SECOND;

  g_mutex_init (&released.mutex);
  g_cond_init (&released.cond);
  handler = spark_func_handler_new (mark_thread_request, NULL, &released, NULL);
  server = spark_module_server_new (handler);
  g_object_weak_ref (G_OBJECT (server), on_server_finalized, &released);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  dispatcher = spark_module_server_create_dispatcher (server);

  reply = spark_dispatcher_request_sync (dispatcher, "mark", NULL, NULL, NULL, &error);
  g_assert_no_error (error);
  g_assert_true (spark_dispatcher_send_shutdown (dispatcher, token, &error));
  g_assert_no_error (error);
  g_object_unref (dispatcher);
  g_object_unref (server);

  g_mutex_lock (&released.mutex);
  while (!(released.finalized && released.thread_ended))
    if (!g_cond_wait_until (&released.cond, &released.mutex, deadline))
      break;
  g_assert_true (released.finalized);
  g_assert_true (released.thread_ended);
  g_mutex_unlock (&released.mutex);
  g_assert_true (g_cancellable_is_cancelled (token));

  g_mutex_clear (&released.mutex);
  g_cond_clear (&released.cond);
}

int
main (int argc, char *argv[])
{
  g_test_init (&argc, &argv, NULL);

  mark_gjs_type (TEST_TYPE_GJS_HANDLER);

#define ADD(path, options, func) \
  g_test_add ("/spark/module-server/" path, Fixture, &options, fixture_setup, func, fixture_teardown)
#define ADD_TYPED(path, type, func) \
  g_test_add ("/spark/module-server/" path, Fixture, \
              spark_test_server_options (&on_default, GSIZE_TO_POINTER (type)), \
              typed_setup, func, fixture_teardown)

  g_test_add_func ("/spark/module-server/start/context", test_start_context);
  g_test_add_func ("/spark/module-server/start/thread-default", test_start_thread_default);
  g_test_add_func ("/spark/module-server/start/in-thread", test_start_in_thread);
  g_test_add_func ("/spark/module-server/start/already-started", test_start_already_started);
  g_test_add_func ("/spark/module-server/start/closed", test_start_closed);

  ADD ("shutdown/never-started", not_started, test_shutdown_never_started);
  ADD ("shutdown/already-stopped", in_thread, test_shutdown_already_stopped);
  ADD ("shutdown/drain", on_default, test_shutdown_drain);
  ADD ("shutdown/abort-queued", on_default, test_shutdown_abort_queued);
  ADD ("shutdown/abort-running", in_thread, test_shutdown_abort_running);
  ADD ("shutdown/abort-running-own-cancellable", in_thread, test_shutdown_abort_running_own_cancellable);
  ADD_TYPED ("shutdown/abort-held-invocation", SPARK_TEST_TYPE_INVOCATION_HANDLER, test_shutdown_abort_held);
  ADD_TYPED ("shutdown/drain-held-invocation", SPARK_TEST_TYPE_INVOCATION_HANDLER, test_shutdown_drain_held);
  ADD ("shutdown/drain-from-handler", on_default, test_shutdown_drain_from_handler);
  ADD ("shutdown/abort-from-handler", on_default, test_shutdown_abort_from_handler);
  ADD ("shutdown/abort-ignored-cancellable", in_thread, test_shutdown_abort_ignored);
  g_test_add_func ("/spark/module-server/shutdown/after-thread-ended", test_shutdown_after_thread);
  ADD ("shutdown/cancel-wait", in_thread, test_shutdown_cancel_wait);
  ADD ("shutdown/token-reached", in_thread, test_shutdown_token_reached);
  ADD ("shutdown/token-abort", in_thread, test_shutdown_token_abort);
  ADD ("shutdown/token-drain", on_default, test_shutdown_token_drain);

  g_test_add_func ("/spark/module-server/lifetime/keeps-alive", test_lifetime_keeps_alive);
  g_test_add_func ("/spark/module-server/lifetime/keeps-alive-context", test_lifetime_keeps_alive_context);
  g_test_add_func ("/spark/module-server/lifetime/finalized-after-stop", test_lifetime_finalized);
  g_test_add_func ("/spark/module-server/lifetime/dispatchers-outlive", test_lifetime_dispatchers);

  g_test_add_func ("/spark/module-server/property/handler", test_property_handler);
  ADD ("property/name", not_started, test_property_name);
  ADD ("property/capacity", not_started, test_property_capacity);
  g_test_add_func ("/spark/module-server/property/running", test_property_running);
  g_test_add_func ("/spark/module-server/property/pending", test_property_pending);

  ADD ("command-failed/signal", in_thread, test_command_failed_signal);
  ADD ("command-failed/warning", on_default, test_command_failed_warning);
  ADD ("command-failed/debug", on_default, test_command_failed_debug);
  ADD ("command-failed/no-reply", in_thread, test_command_failed_no_reply);

  ADD_TYPED ("not-supported/request", TEST_TYPE_COMMAND_ONLY, test_not_supported_request);
  ADD_TYPED ("not-supported/command", TEST_TYPE_REQUEST_ONLY, test_not_supported_command);

  g_test_add_func ("/spark/module-server/gjs/start-in-thread", test_gjs_start_in_thread);
  g_test_add_func ("/spark/module-server/gjs/start-other-context", test_gjs_start_other_context);
  g_test_add_func ("/spark/module-server/gjs/start-pushed-context", test_gjs_start_pushed_context);
  g_test_add_func ("/spark/module-server/gjs/subclass", test_gjs_subclass);

  g_test_add_func ("/spark/module-server/thread-name/long", test_start_in_thread_long_name);
  g_test_add_func ("/spark/module-server/stop/due/other-server", test_stop_due_other_server);
  g_test_add_func ("/spark/module-server/stop/due/self", test_stop_due_self);
  g_test_add_func ("/spark/module-server/stop/due/shutdown-async", test_stop_due_shutdown_async);
  g_test_add_func ("/spark/module-server/command-failed/true-with-error", test_command_true_with_error);
  g_test_add_func ("/spark/module-server/lifetime/no-main-loop", test_lifetime_no_main_loop);

#undef ADD
#undef ADD_TYPED

  return spark_test_run ();
}
