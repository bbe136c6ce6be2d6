/* test-metrics.c: what a SparkModuleServer counts, times and notifies
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <spark-channel.h>

#include "spark-test-util.h"

typedef struct
{
  SparkTestGate gate;      /* "block" waits on it */
  gint          blocked;   /* atomic: a "block" request is inside */
  gulong        sleep_us;  /* "slow" sleeps this long */
} Module;

static GVariant *
module_request (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  Module *m = user_data;

  if (g_str_equal (name, "fail"))
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_FAILED, "as asked");
      return NULL;
    }
  if (g_str_equal (name, "block"))
    {
      g_atomic_int_set (&m->blocked, TRUE);
      spark_test_gate_wait (&m->gate, NULL);
    }
  if (g_str_equal (name, "slow"))
    g_usleep (m->sleep_us);

  return g_variant_new_boolean (TRUE);
}

static gboolean
module_command (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  if (g_str_equal (name, "fail"))
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_FAILED, "as asked");
      return FALSE;
    }
  return TRUE;
}

static void
module_init (Module *m)
{
  spark_test_gate_init (&m->gate);
  m->sleep_us = 0;
}

static SparkModuleServer *
server_new (Module *m,
            guint   workers)
{
  g_autoptr(SparkHandler) handler = spark_func_handler_new_full (SPARK_HANDLER_FLAGS_CONCURRENT,
                                                                 module_request, module_command,
                                                                 m, NULL);
  SparkModuleServer *server = spark_module_server_new (handler);
  GError *error = NULL;

  spark_module_server_set_workers (server, workers);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  return server;
}

static void
count_cb (GVariant     *reply,
          const GError *error,
          gpointer      data)
{
  g_assert_no_error (error);
  g_atomic_int_inc ((gint *) data);
}

static guint64
metric_u64 (GVariant   *metrics,
            const char *key)
{
  guint64 v = G_MAXUINT64;

  g_assert_true (g_variant_lookup (metrics, key, "t", &v));
  return v;
}

static guint64
prop_u64 (gpointer    object,
          const char *name)
{
  guint64 v;

  g_object_get (object, name, &v, NULL);
  return v;
}

/* Every way a message ends is counted once, where it belongs. */
static void
test_metrics_counts (void)
{
  Module m = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(SparkDispatcher) timed = NULL;
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  g_autoptr(GVariant) metrics = NULL;
  SparkTestOutcome block = { 0, }, cancelled = { 0, }, timed_out = { 0, };
  SparkTestFailure failures = { 0, };
  GError *error = NULL;

  module_init (&m);
  server = server_new (&m, 1);
  g_signal_connect (server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failures);
  dispatcher = spark_module_server_create_dispatcher (server);
  timed = spark_module_server_create_dispatcher (server);
  spark_dispatcher_set_timeout (timed, 20);

  for (guint i = 0; i < 10; i++)
    {
      g_autoptr(GVariant) reply = spark_dispatcher_request_sync (dispatcher, "ok", NULL, NULL, NULL, &error);

      g_assert_no_error (error);
    }
  for (guint i = 0; i < 3; i++)
    {
      g_autoptr(GVariant) reply = spark_dispatcher_request_sync (dispatcher, "fail", NULL, NULL, NULL, &error);

      g_assert_error (error, G_IO_ERROR, G_IO_ERROR_FAILED);
      g_clear_error (&error);
    }
  for (guint i = 0; i < 5; i++)
    g_assert_true (spark_dispatcher_send_command (dispatcher, i < 2 ? "fail" : "ok", NULL, NULL, &error));

  /* Behind a blocked handler: one cancelled, one timed out, both while
   * queued, so never handled. */
  spark_dispatcher_request_full (dispatcher, "block", NULL, NULL, NULL, spark_test_outcome_cb, &block, NULL);
  while (!g_atomic_int_get (&m.blocked))
    g_usleep (1000);
  spark_dispatcher_request_full (dispatcher, "ok", NULL, NULL, cancellable,
                                 spark_test_outcome_cb, &cancelled, NULL);
  spark_dispatcher_request_full (timed, "ok", NULL, NULL, NULL, spark_test_outcome_cb, &timed_out, NULL);
  g_cancellable_cancel (cancellable);
  spark_test_wait_flag (NULL, &cancelled.done);
  spark_test_wait_flag (NULL, &timed_out.done);
  g_assert_error (timed_out.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  spark_test_gate_open (&m.gate);
  spark_test_wait_flag (NULL, &block.done);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  metrics = spark_module_server_get_metrics (server);

  /* 10 + 3 + 1 requests and 5 commands reached the handler. */
  g_assert_cmpuint (metric_u64 (metrics, "handled"), ==, 19);
  g_assert_cmpuint (metric_u64 (metrics, "failed"), ==, 5);
  g_assert_cmpuint (metric_u64 (metrics, "cancelled"), ==, 1);
  g_assert_cmpuint (metric_u64 (metrics, "timed-out"), ==, 1);
  g_assert_cmpuint (metric_u64 (metrics, "dropped"), ==, 0);
  g_assert_cmpuint (prop_u64 (server, "handled"), ==, 19);
  g_assert_cmpuint (prop_u64 (server, "failed"), ==, 5);
  g_assert_cmpuint (prop_u64 (server, "cancelled"), ==, 1);
  g_assert_cmpuint (prop_u64 (server, "timed-out"), ==, 1);
  {
    guint32 workers = 0, pending = 1;

    g_assert_true (g_variant_lookup (metrics, "workers", "u", &workers));
    g_assert_true (g_variant_lookup (metrics, "pending", "u", &pending));
    g_assert_cmpuint (workers, ==, 1);
    g_assert_cmpuint (pending, ==, 0);
  }

  spark_test_wait_count (NULL, &failures.n, 2);
  spark_test_failure_clear (&failures);
  spark_test_outcome_clear (&block);
  spark_test_outcome_clear (&cancelled);
  spark_test_outcome_clear (&timed_out);
  spark_test_gate_clear (&m.gate);
}

/* Handler and queue times: a handler that sleeps 2 ms is measured at 2 ms
 * or more; requests queued behind each other have waited. */
static void
test_metrics_times (void)
{
  Module m = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GVariant) metrics = NULL;
  gint done = 0;

  module_init (&m);
  m.sleep_us = 2000;
  server = server_new (&m, 1);
  dispatcher = spark_module_server_create_dispatcher (server);

  /* 64 at once, from this thread: 8 of them carry their send time. */
  for (guint i = 0; i < 64; i++)
    spark_dispatcher_request_full (dispatcher, "slow", NULL, NULL, NULL,
                                   count_cb, &done, NULL);
  spark_test_wait_count (NULL, &done, 64);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);

  metrics = spark_module_server_get_metrics (server);
  g_assert_cmpuint (metric_u64 (metrics, "handler-time-samples"), >=, 8);
  g_assert_cmpuint (metric_u64 (metrics, "handler-time-mean"), >=, 2000);
  g_assert_cmpuint (metric_u64 (metrics, "handler-time-max"), >=, metric_u64 (metrics, "handler-time-mean"));
  g_assert_cmpuint (metric_u64 (metrics, "queue-time-samples"), ==, 8);
  /* The last sampled one waited behind 56 others of 2 ms at least. */
  g_assert_cmpuint (metric_u64 (metrics, "queue-time-max"), >=, 56 * 2000);
  g_assert_cmpuint (metric_u64 (metrics, "queue-time-mean"), <=, metric_u64 (metrics, "queue-time-max"));
  g_assert_cmpuint (prop_u64 (server, "queue-time-max"), ==, metric_u64 (metrics, "queue-time-max"));
  spark_test_gate_clear (&m.gate);
}

typedef struct
{
  guint    n;          /* notifications of "handled" */
  gboolean off_thread; /* one came on another thread than the test's */
  guint64  last;
} Notes;

static void
on_handled_notify (GObject    *object,
                   GParamSpec *pspec,
                   gpointer    data)
{
  Notes *notes = data;

  notes->n++;
  if (!g_main_context_is_owner (g_main_context_default ()))
    notes->off_thread = TRUE;
  notes->last = prop_u64 (object, "handled");
}

static gboolean
handled_to_string (GBinding     *binding,
                   const GValue *from,
                   GValue       *to,
                   gpointer      data)
{
  g_value_take_string (to, g_strdup_printf ("%" G_GUINT64_FORMAT, g_value_get_uint64 (from)));
  return TRUE;
}

/* Notified on the owner context, at most once per interval, only when
 * something changed; a binding follows. */
static void
test_metrics_notify (void)
{
  Module m = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkModuleServer) label = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(SparkHandler) dummy = spark_func_handler_new (NULL, NULL, NULL, NULL);
  Notes notes = { 0, };
  gint64 start, elapsed_ms, quiet_until;
  guint n_after;
  GError *error = NULL;

  module_init (&m);
  server = server_new (&m, 1);
  g_assert_cmpuint (spark_module_server_get_metrics_interval (server), ==, 100);
  spark_module_server_set_metrics_interval (server, 50);
  g_signal_connect (server, "notify::handled", G_CALLBACK (on_handled_notify), &notes);

  /* Anything with a string property stands for a GtkLabel. */
  label = spark_module_server_new (dummy);
  g_object_bind_property_full (server, "handled", label, "name", G_BINDING_DEFAULT,
                               handled_to_string, NULL, NULL, NULL);

  dispatcher = spark_module_server_create_dispatcher (server);
  start = g_get_monotonic_time ();
  for (guint i = 0; i < 20000; i++)
    {
      g_assert_true (spark_dispatcher_send_command (dispatcher, "ok", NULL, NULL, &error));
      if (i % 500 == 0)
        while (g_main_context_iteration (NULL, FALSE))
          ;
    }
  /* Until the last one is notified. */
  while (notes.last != 20000)
    g_main_context_iteration (NULL, TRUE);
  elapsed_ms = (g_get_monotonic_time () - start) / 1000;

  g_assert_false (notes.off_thread);
  g_assert_cmpuint (notes.n, >=, 1);
  /* At most one per 50 ms (and one more for the start). */
  g_assert_cmpuint (notes.n, <=, (guint) (elapsed_ms / 50) + 2);
  g_assert_cmpstr (spark_module_server_get_name (label), ==, "20000");

  /* Nothing changes: nothing is notified. */
  n_after = notes.n;
  quiet_until = g_get_monotonic_time () + 300 * 1000;
  while (g_get_monotonic_time () < quiet_until)
    {
      g_main_context_iteration (NULL, FALSE);
      g_usleep (5000);
    }
  g_assert_cmpuint (notes.n, ==, n_after);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  spark_test_gate_clear (&m.gate);
}

/* metrics-interval 0: nothing is counted. */
static void
test_metrics_off (void)
{
  Module m = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  GError *error = NULL;

  module_init (&m);
  server = server_new (&m, 1);
  spark_module_server_set_metrics_interval (server, 0);
  dispatcher = spark_module_server_create_dispatcher (server);
  for (guint i = 0; i < 100; i++)
    {
      g_autoptr(GVariant) reply = spark_dispatcher_request_sync (dispatcher, "ok", NULL, NULL, NULL, &error);

      g_assert_no_error (error);
    }
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpuint (prop_u64 (server, "handled"), ==, 0);
  g_assert_cmpuint (prop_u64 (server, "handler-time-max"), ==, 0);
  spark_test_gate_clear (&m.gate);
}

/* A pool's workers add up; a bounded mailbox's drops and high water. */
static void
test_metrics_pool_and_drops (void)
{
  Module m = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(SparkHandler) handler = NULL;
  GError *error = NULL;
  gint done = 0;
  SparkTestOutcome block = { 0, };
  guint32 high = 0;
  g_autoptr(GVariant) metrics = NULL;

  module_init (&m);
  server = server_new (&m, 3);
  dispatcher = spark_module_server_create_dispatcher (server);
  for (guint i = 0; i < 3000; i++)
    spark_dispatcher_request_full (dispatcher, "ok", NULL, NULL, NULL,
                                   count_cb, &done, NULL);
  spark_test_wait_count (NULL, &done, 3000);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpuint (prop_u64 (server, "handled"), ==, 3000);
  g_clear_object (&dispatcher);
  g_clear_object (&server);

  /* Capacity 2, DROP_NEWEST, behind a blocked handler. */
  handler = spark_func_handler_new (module_request, module_command, &m, NULL);
  server = spark_module_server_new (handler);
  spark_module_server_set_capacity (server, 2);
  spark_module_server_set_overflow (server, SPARK_OVERFLOW_DROP_NEWEST);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  dispatcher = spark_module_server_create_dispatcher (server);
  spark_dispatcher_request_full (dispatcher, "block", NULL, NULL, NULL, spark_test_outcome_cb, &block, NULL);
  while (!g_atomic_int_get (&m.blocked))
    g_usleep (1000);
  for (guint i = 0; i < 10; i++)
    g_assert_true (spark_dispatcher_try_send_command (dispatcher, "ok", NULL, &error));
  spark_test_gate_open (&m.gate);
  spark_test_wait_flag (NULL, &block.done);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);

  metrics = spark_module_server_get_metrics (server);
  g_assert_cmpuint (metric_u64 (metrics, "dropped"), ==, 8);
  g_assert_cmpuint (prop_u64 (server, "dropped"), ==, 8);
  g_assert_true (g_variant_lookup (metrics, "pending-high-water", "u", &high));
  g_assert_cmpuint (high, ==, 2);
  /* The block and the two commands that found room. */
  g_assert_cmpuint (metric_u64 (metrics, "handled"), ==, 3);
  spark_test_outcome_clear (&block);
  spark_test_gate_clear (&m.gate);
}

/* A router's server has its routes' counts too. */
static void
test_metrics_routes (void)
{
  Module m = { 0, };
  g_autoptr(SparkHandler) handler = spark_func_handler_new (module_request, module_command, &m, NULL);
  g_autoptr(SparkRouter) router = spark_router_new ();
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GVariant) metrics = NULL;
  g_autoptr(GVariant) routes = NULL;
  g_autoptr(GVariant) kv = NULL;
  GError *error = NULL;

  module_init (&m);
  g_assert_true (spark_router_add_handler (router, "kv.*", handler, NULL, NULL, &error));
  g_assert_true (spark_router_add_handler (router, "fail", handler, G_VARIANT_TYPE_INT32, NULL, &error));
  g_assert_no_error (error);
  server = spark_module_server_new (SPARK_HANDLER (router));
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  dispatcher = spark_module_server_create_dispatcher (server);

  for (guint i = 0; i < 4; i++)
    {
      g_autoptr(GVariant) reply = spark_dispatcher_request_sync (dispatcher, "kv.get", NULL, NULL, NULL, &error);

      g_assert_no_error (error);
    }
  g_assert_true (spark_dispatcher_send_command (dispatcher, "kv.set", NULL, NULL, &error));
  {
    g_autoptr(GVariant) reply = spark_dispatcher_request_sync (dispatcher, "fail", g_variant_new_int32 (1),
                                                               NULL, NULL, &error);

    g_assert_error (error, G_IO_ERROR, G_IO_ERROR_FAILED);
    g_clear_error (&error);
  }
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);

  metrics = spark_module_server_get_metrics (server);
  g_assert_cmpuint (metric_u64 (metrics, "handled"), ==, 6);
  g_assert_cmpuint (metric_u64 (metrics, "failed"), ==, 1);
  g_assert_true (g_variant_lookup (metrics, "routes", "@a{sa{sv}}", &routes));
  g_assert_true (g_variant_lookup (routes, "kv.*", "@a{sv}", &kv));
  g_assert_cmpuint (metric_u64 (kv, "handled"), ==, 5);
  g_assert_cmpuint (metric_u64 (kv, "failed"), ==, 0);
  g_clear_pointer (&kv, g_variant_unref);
  g_assert_true (g_variant_lookup (routes, "fail", "@a{sv}", &kv));
  g_assert_cmpuint (metric_u64 (kv, "handled"), ==, 1);
  g_assert_cmpuint (metric_u64 (kv, "failed"), ==, 1);
  spark_test_gate_clear (&m.gate);
}

/* What the serving server counts per route: ends, drops and times. */
static void
test_metrics_routes_server (void)
{
  Module m = { 0, };
  g_autoptr(SparkHandler) handler = spark_func_handler_new (module_request, module_command, &m, NULL);
  g_autoptr(SparkRouter) router = spark_router_new ();
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(SparkDispatcher) timed = NULL;
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  g_autoptr(GVariant) metrics = NULL;
  g_autoptr(GVariant) routes = NULL;
  g_autoptr(GVariant) slow = NULL;
  g_autoptr(GVariant) ok = NULL;
  SparkTestOutcome block = { 0, }, cancelled = { 0, }, timed_out = { 0, };
  GError *error = NULL;
  gint done = 0;

  module_init (&m);
  m.sleep_us = 2000;
  g_assert_true (spark_router_add_handler (router, "slow", handler, NULL, NULL, &error));
  g_assert_true (spark_router_add_handler (router, "block", handler, NULL, NULL, &error));
  g_assert_true (spark_router_add_handler (router, "ok", handler, NULL, NULL, &error));
  g_assert_true (spark_router_set_overflow (router, "ok", SPARK_OVERFLOW_DROP_NEWEST, &error));
  g_assert_no_error (error);
  server = spark_module_server_new (SPARK_HANDLER (router));
  spark_module_server_set_capacity (server, 3);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  dispatcher = spark_module_server_create_dispatcher (server);
  timed = spark_module_server_create_dispatcher (server);
  spark_dispatcher_set_timeout (timed, 20);

  /* 16 slow ones from this thread: 8 timed at least, 2 with a queue time. */
  for (guint i = 0; i < 16; i++)
    spark_dispatcher_request_full (dispatcher, "slow", NULL, NULL, NULL, count_cb, &done, NULL);
  spark_test_wait_count (NULL, &done, 16);

  /* Behind a blocked handler: an "ok" cancelled and one timed out while
   * queued, then the mailbox full (3): the next "ok" commands dropped. */
  spark_dispatcher_request_full (dispatcher, "block", NULL, NULL, NULL, spark_test_outcome_cb, &block, NULL);
  while (!g_atomic_int_get (&m.blocked))
    g_usleep (1000);
  spark_dispatcher_request_full (dispatcher, "ok", NULL, NULL, cancellable, spark_test_outcome_cb, &cancelled, NULL);
  spark_dispatcher_request_full (timed, "ok", NULL, NULL, NULL, spark_test_outcome_cb, &timed_out, NULL);
  g_assert_true (spark_dispatcher_try_send_command (dispatcher, "ok", NULL, &error));   /* full now */
  for (guint i = 0; i < 4; i++)
    g_assert_true (spark_dispatcher_try_send_command (dispatcher, "ok", NULL, &error)); /* dropped */
  g_assert_no_error (error);
  g_cancellable_cancel (cancellable);
  spark_test_wait_flag (NULL, &cancelled.done);
  spark_test_wait_flag (NULL, &timed_out.done);
  spark_test_gate_open (&m.gate);
  spark_test_wait_flag (NULL, &block.done);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);

  metrics = spark_module_server_get_metrics (server);
  g_assert_true (g_variant_lookup (metrics, "routes", "@a{sa{sv}}", &routes));
  g_assert_true (g_variant_lookup (routes, "slow", "@a{sv}", &slow));
  g_assert_cmpuint (metric_u64 (slow, "handled"), ==, 16);
  g_assert_cmpuint (metric_u64 (slow, "handler-time-samples"), >=, 2);
  g_assert_cmpuint (metric_u64 (slow, "handler-time-mean"), >=, 2000);
  g_assert_cmpuint (metric_u64 (slow, "queue-time-samples"), ==, 2);
  g_assert_cmpuint (metric_u64 (slow, "cancelled"), ==, 0);
  g_assert_true (g_variant_lookup (routes, "ok", "@a{sv}", &ok));
  g_assert_cmpuint (metric_u64 (ok, "cancelled"), ==, 1);
  g_assert_cmpuint (metric_u64 (ok, "timed-out"), ==, 1);
  g_assert_cmpuint (metric_u64 (ok, "dropped"), ==, 4);
  g_assert_cmpuint (metric_u64 (ok, "handled"), ==, 1);
  g_assert_cmpuint (metric_u64 (metrics, "dropped"), ==, 4);

  spark_test_outcome_clear (&block);
  spark_test_outcome_clear (&cancelled);
  spark_test_outcome_clear (&timed_out);
  spark_test_gate_clear (&m.gate);
}

int
main (int   argc,
      char *argv[])
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/spark/metrics/counts", test_metrics_counts);
  g_test_add_func ("/spark/metrics/times", test_metrics_times);
  g_test_add_func ("/spark/metrics/notify", test_metrics_notify);
  g_test_add_func ("/spark/metrics/off", test_metrics_off);
  g_test_add_func ("/spark/metrics/pool-and-drops", test_metrics_pool_and_drops);
  g_test_add_func ("/spark/metrics/routes", test_metrics_routes);
  g_test_add_func ("/spark/metrics/routes-server", test_metrics_routes_server);

  return g_test_run ();
}
