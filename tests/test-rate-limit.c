/* test-rate-limit.c: SparkDispatcher:rate-limit
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A rate limit is about time, so some tests check that sends took at
 * least as long as the limit allows: a lower bound, which a loaded
 * machine can only exceed. No test asserts an upper bound.
 */

#include <string.h>

#include "spark-test-util.h"

typedef struct
{
  gint         handled;   /* atomic: requests and commands */
  SparkTestLog log;       /* the requests' names, in handling order */
} Module;

static GVariant *
module_request (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  Module *m = user_data;

  spark_test_log_append (&m->log, name, NULL);
  g_atomic_int_inc (&m->handled);
  return g_variant_new_string (name);
}

static gboolean
module_command (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  Module *m = user_data;

  g_atomic_int_inc (&m->handled);
  g_main_context_wakeup (NULL);
  return TRUE;
}

typedef struct
{
  SparkTestServer s;
  Module          m;
} Fixture;

static void
fixture_setup (Fixture       *f,
               gconstpointer  data)
{
  spark_test_log_init (&f->m.log);
  spark_test_server_setup (&f->s, spark_func_handler_new (module_request, module_command, &f->m, NULL), data);
}

static void
fixture_teardown (Fixture       *f,
                  gconstpointer  data)
{
  spark_test_server_teardown (&f->s);
  spark_test_log_clear (&f->m.log);
}

/* Blocking sends wait for their turn: 21 commands at 200 per second with
 * a burst of 1 take at least 20 intervals of 5 ms. */
static void
test_rate_blocking (Fixture       *f,
                    gconstpointer  data)
{
  GError *error = NULL;
  gint64 start;

  spark_dispatcher_set_rate_limit (f->s.dispatcher, 200);
  spark_dispatcher_set_rate_burst (f->s.dispatcher, 1);

  start = g_get_monotonic_time ();
  for (guint i = 0; i < 21; i++)
    {
      g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "c", NULL, NULL, &error));
      g_assert_no_error (error);
    }
  g_assert_cmpint (g_get_monotonic_time () - start, >=, 20 * 5000 - 1000);

  spark_test_wait_count (NULL, &f->m.handled, 21);
}

/* try_send fails fast once the burst is spent; a blocking send can be
 * cancelled while it waits. */
static void
test_rate_try (Fixture       *f,
               gconstpointer  data)
{
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  GError *error = NULL;

  spark_dispatcher_set_rate_limit (f->s.dispatcher, 1);
  spark_dispatcher_set_rate_burst (f->s.dispatcher, 3);

  for (guint i = 0; i < 3; i++)
    g_assert_true (spark_dispatcher_try_send_command (f->s.dispatcher, "c", NULL, &error));
  g_assert_no_error (error);

  g_assert_false (spark_dispatcher_try_send_command (f->s.dispatcher, "c", NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_assert_nonnull (strstr (error->message, "rate limit"));
  g_clear_error (&error);

  g_cancellable_cancel (cancellable);
  g_assert_false (spark_dispatcher_send_command (f->s.dispatcher, "c", NULL, cancellable, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&error);

  spark_test_wait_count (NULL, &f->m.handled, 3);
  g_assert_cmpint (g_atomic_int_get (&f->m.handled), ==, 3);
}

#define N_ASYNC 10

/* Asynchronous requests wait without blocking the caller; each completes
 * once, a cancelled one with CANCELLED and never handled; a request's
 * timeout counts while it waits. */
static void
test_rate_async (Fixture       *f,
                 gconstpointer  data)
{
  SparkTestOutcome outcomes[N_ASYNC] = { { 0, }, };
  SparkTestOutcome cancelled = { 0, }, timed_out = { 0, };
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  g_autoptr(SparkDispatcher) slow = NULL;
  gint64 start;

  spark_dispatcher_set_rate_limit (f->s.dispatcher, 100);
  spark_dispatcher_set_rate_burst (f->s.dispatcher, 1);

  start = g_get_monotonic_time ();
  for (guint i = 0; i < N_ASYNC; i++)
    spark_dispatcher_request_full (f->s.dispatcher, "r", NULL, NULL, NULL, spark_test_outcome_cb, &outcomes[i], NULL);
  spark_dispatcher_request_full (f->s.dispatcher, "gone", NULL, NULL, cancellable,
                                 spark_test_outcome_cb, &cancelled, NULL);
  /* Still waiting for its turn: the call returned at once. */
  g_cancellable_cancel (cancellable);

  for (guint i = 0; i < N_ASYNC; i++)
    {
      spark_test_wait_flag (NULL, &outcomes[i].done);
      g_assert_no_error (outcomes[i].error);
      g_assert_cmpstr (g_variant_get_string (outcomes[i].reply, NULL), ==, "r");
      spark_test_outcome_clear (&outcomes[i]);
    }
  g_assert_cmpint (g_get_monotonic_time () - start, >=, (N_ASYNC - 1) * 10000 - 1000);

  spark_test_wait_flag (NULL, &cancelled.done);
  g_assert_error (cancelled.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  spark_test_outcome_clear (&cancelled);

  /* One message a second: the second request's 50 ms run out first. */
  slow = spark_dispatcher_with_priority (f->s.dispatcher, SPARK_PRIORITY_DEFAULT);
  spark_dispatcher_set_rate_limit (slow, 1);
  /* The first takes the only token, with no timeout (valgrind is slow);
   * the second, timed, waits for the next token, a second away. */
  spark_dispatcher_request_full (slow, "first", NULL, NULL, NULL, spark_test_outcome_cb, &outcomes[0], NULL);
  spark_dispatcher_set_timeout (slow, 50);
  spark_dispatcher_request_full (slow, "late", NULL, NULL, NULL, spark_test_outcome_cb, &timed_out, NULL);
  spark_test_wait_flag (NULL, &outcomes[0].done);
  g_assert_no_error (outcomes[0].error);
  spark_test_outcome_clear (&outcomes[0]);
  spark_test_wait_flag (NULL, &timed_out.done);
  g_assert_error (timed_out.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  spark_test_outcome_clear (&timed_out);

  /* Only what was sent was handled. */
  g_assert_cmpint (g_atomic_int_get (&f->m.handled), ==, N_ASYNC + 1);

  /* The timed-out request's turn comes after all (in about a second):
   * then it is dropped, and its dispatcher with it. */
  {
    SparkTestWatch watch;

    spark_test_watch_init (&watch, slow, NULL);
    g_clear_object (&slow);
    spark_test_watch_wait (&watch);
  }
}

static void
on_sent (GObject      *source,
         GAsyncResult *result,
         gpointer      user_data)
{
  SparkTestOutcome *outcome = user_data;
  GError *error = NULL;

  if (!spark_dispatcher_send_command_finish (SPARK_DISPATCHER (source), result, &error))
    outcome->error = error;
  g_atomic_int_set (&outcome->done, TRUE);
}

/* send_command_async waits for its turn too, and can be cancelled then. */
static void
test_rate_command_async (Fixture       *f,
                         gconstpointer  data)
{
  SparkTestOutcome sent[3] = { { 0, }, };
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();

  spark_dispatcher_set_rate_limit (f->s.dispatcher, 50);
  spark_dispatcher_set_rate_burst (f->s.dispatcher, 1);

  spark_dispatcher_send_command_async (f->s.dispatcher, "c", NULL, NULL, on_sent, &sent[0]);
  spark_dispatcher_send_command_async (f->s.dispatcher, "c", NULL, cancellable, on_sent, &sent[1]);
  spark_dispatcher_send_command_async (f->s.dispatcher, "c", NULL, NULL, on_sent, &sent[2]);
  g_cancellable_cancel (cancellable);

  for (guint i = 0; i < 3; i++)
    spark_test_wait_flag (NULL, &sent[i].done);
  g_assert_no_error (sent[0].error);
  g_assert_error (sent[1].error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_assert_no_error (sent[2].error);
  g_clear_error (&sent[1].error);

  spark_test_wait_count (NULL, &f->m.handled, 2);
}

static void
on_notify (GObject    *object,
           GParamSpec *pspec,
           gpointer    user_data)
{
  (*(guint *) user_data)++;
}

/* The properties: defaults, notify on change only, copied by
 * with_priority. */
/* A message never overtakes one sent before it that still waits: r1
 * waits for its slot on this context; r2, sent once r1's slot has come
 * but before this context ran again, goes after it, and a try-send
 * meanwhile is refused rather than sent first. */
static void
test_rate_order (Fixture       *f,
                 gconstpointer  data)
{
  SparkTestOutcome outcomes[3] = { { 0, }, };
  GError *error = NULL;
  char *log;

  spark_dispatcher_set_rate_limit (f->s.dispatcher, 20);
  spark_dispatcher_set_rate_burst (f->s.dispatcher, 1);

  spark_dispatcher_request_full (f->s.dispatcher, "r0", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &outcomes[0], NULL);
  spark_dispatcher_request_full (f->s.dispatcher, "r1", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &outcomes[1], NULL);
  /* r1's slot is 50 ms away; this context does not run meanwhile. */
  g_usleep (250 * 1000);
  g_assert_false (spark_dispatcher_try_send_command (f->s.dispatcher, "c", NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_clear_error (&error);
  spark_dispatcher_request_full (f->s.dispatcher, "r2", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &outcomes[2], NULL);

  for (guint i = 0; i < 3; i++)
    {
      spark_test_wait_flag (NULL, &outcomes[i].done);
      g_assert_no_error (outcomes[i].error);
      spark_test_outcome_clear (&outcomes[i]);
    }
  log = spark_test_log_dup (&f->m.log);
  g_assert_cmpstr (log, ==, "r0 r1 r2");
  g_free (log);
}

typedef struct
{
  SparkDispatcher *dispatcher;
  GError          *error;
  gint             started;   /* atomic */
} SyncCall;

static gpointer
sync_call_thread (gpointer data)
{
  SyncCall *call = data;
  GVariant *reply;

  g_atomic_int_set (&call->started, TRUE);
  reply = spark_dispatcher_request_sync (call->dispatcher, "blocked", NULL, NULL, NULL, &call->error);
  g_assert_null (reply);
  return NULL;
}

/* cancel_all() fails the requests still waiting for their slot, on a
 * context or in a blocking call: they are never sent. */
static void
test_rate_cancel_all_waiting (Fixture       *f,
                              gconstpointer  data)
{
  SparkTestOutcome first = { 0, }, waiting = { 0, };
  SyncCall call = { f->s.dispatcher, NULL, 0 };
  g_autoptr(SparkDispatcher) other = spark_module_server_create_dispatcher (f->s.server);
  g_autoptr(GVariant) reply = NULL;
  GError *error = NULL;
  GThread *thread;
  char *log;

  /* One message a second: the second waits long. */
  spark_dispatcher_set_rate_limit (f->s.dispatcher, 1);
  spark_dispatcher_set_rate_burst (f->s.dispatcher, 1);
  spark_dispatcher_request_full (f->s.dispatcher, "first", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &first, NULL);
  spark_dispatcher_request_full (f->s.dispatcher, "waiting", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &waiting, NULL);
  thread = g_thread_new ("blocked", sync_call_thread, &call);
  while (!g_atomic_int_get (&call.started))
    g_usleep (1000);
  g_usleep (200 * 1000);   /* well into its wait for the slot a second away */

  spark_dispatcher_cancel_all (f->s.dispatcher);
  g_thread_join (thread);
  g_assert_error (call.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&call.error);
  spark_test_wait_flag (NULL, &waiting.done);
  g_assert_error (waiting.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  spark_test_wait_flag (NULL, &first.done);
  g_assert_no_error (first.error);

  /* Another dispatcher's request goes; the cancelled ones never did. */
  reply = spark_dispatcher_request_sync (other, "other", NULL, NULL, NULL, &error);
  g_assert_no_error (error);
  log = spark_test_log_dup (&f->m.log);
  g_assert_cmpstr (log, ==, "first other");
  g_free (log);
  spark_test_outcome_clear (&first);
  spark_test_outcome_clear (&waiting);
}

static void
test_rate_properties (void)
{
  Module m = { 0, };
  g_autoptr(SparkHandler) handler = spark_func_handler_new (module_request, module_command, &m, NULL);
  g_autoptr(SparkModuleServer) server = spark_module_server_new (handler);
  g_autoptr(SparkDispatcher) dispatcher = spark_module_server_create_dispatcher (server);
  g_autoptr(SparkDispatcher) derived = NULL;
  guint notified = 0;

  g_assert_cmpuint (spark_dispatcher_get_rate_limit (dispatcher), ==, 0);
  g_assert_cmpuint (spark_dispatcher_get_rate_burst (dispatcher), ==, 0);

  g_signal_connect (dispatcher, "notify::rate-limit", G_CALLBACK (on_notify), &notified);
  g_object_set (dispatcher, "rate-limit", 30, "rate-burst", 5, NULL);
  spark_dispatcher_set_rate_limit (dispatcher, 30);
  g_assert_cmpuint (notified, ==, 1);

  derived = spark_dispatcher_with_priority (dispatcher, SPARK_PRIORITY_LOW);
  g_assert_cmpuint (spark_dispatcher_get_rate_limit (derived), ==, 30);
  g_assert_cmpuint (spark_dispatcher_get_rate_burst (derived), ==, 5);
}

int
main (int argc, char *argv[])
{
  static const SparkTestServerOptions in_thread = { 0, };

  g_test_init (&argc, &argv, NULL);

#define ADD(path, func) \
  g_test_add (path, Fixture, &in_thread, fixture_setup, func, fixture_teardown)

  ADD ("/spark/rate-limit/blocking", test_rate_blocking);
  ADD ("/spark/rate-limit/try", test_rate_try);
  ADD ("/spark/rate-limit/async", test_rate_async);
  ADD ("/spark/rate-limit/command-async", test_rate_command_async);
  ADD ("/spark/rate-limit/order", test_rate_order);
  ADD ("/spark/rate-limit/cancel-all-waiting", test_rate_cancel_all_waiting);
  g_test_add_func ("/spark/rate-limit/properties", test_rate_properties);

#undef ADD

  return spark_test_run ();
}
