/* test-priority.c: message priorities
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <string.h>

#include "spark-test-util.h"

/* A module that logs every command's name; "wait" blocks at the gate,
 * "d0" sends "urgent" at high priority to its own server, from inside
 * the batch the server took. */
typedef struct
{
  SparkTestLog     log;
  SparkTestGate    gate;
  SparkDispatcher *urgent;     /* a reference, or NULL: to its own server, high priority */
  SparkDispatcher *cancel;     /* a reference, or NULL: "d0" calls cancel_all() on it */
  gint             handled;    /* atomic */
} Module;

static gboolean
module_command (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  Module *m = user_data;

  if (g_str_equal (name, "wait"))
    spark_test_gate_wait (&m->gate, NULL);
  else
    spark_test_log_append (&m->log, name, NULL);

  if (g_str_equal (name, "d0") && m->urgent != NULL)
    g_assert_true (spark_dispatcher_try_send_command (m->urgent, "urgent", NULL, NULL));
  if (g_str_equal (name, "d0") && m->cancel != NULL)
    spark_dispatcher_cancel_all (m->cancel);

  g_atomic_int_inc (&m->handled);
  g_main_context_wakeup (NULL);   /* the test waits on the default context */
  return TRUE;
}

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
  g_main_context_wakeup (NULL);
  return g_variant_new_string (name);
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
  spark_test_gate_init (&f->m.gate);
  spark_test_server_setup (&f->s, spark_func_handler_new (module_request, module_command, &f->m, NULL), data);
}

static void
fixture_teardown (Fixture       *f,
                  gconstpointer  data)
{
  g_clear_object (&f->m.urgent);
  g_clear_object (&f->m.cancel);
  spark_test_server_teardown (&f->s);
  spark_test_log_clear (&f->m.log);
  spark_test_gate_clear (&f->m.gate);
}

static void
send (SparkDispatcher *dispatcher,
      SparkPriority    priority,
      const char      *name)
{
  g_autoptr(SparkDispatcher) with = spark_dispatcher_with_priority (dispatcher, priority);
  GError *error = NULL;

  g_assert_true (spark_dispatcher_send_command (with, name, NULL, NULL, &error));
  g_assert_no_error (error);
}

/* Queued while the server is busy: high first, then default, then low;
 * each priority in the order it was sent. */
static void
test_priority_order (Fixture       *f,
                     gconstpointer  data)
{
  char *log;

  send (f->s.dispatcher, SPARK_PRIORITY_DEFAULT, "wait");
  while (spark_module_server_get_pending (f->s.server) > 0)
    g_usleep (1000);   /* the server took "wait" and blocks in it */

  send (f->s.dispatcher, SPARK_PRIORITY_LOW, "l1");
  send (f->s.dispatcher, SPARK_PRIORITY_DEFAULT, "d1");
  send (f->s.dispatcher, SPARK_PRIORITY_HIGH, "h1");
  send (f->s.dispatcher, SPARK_PRIORITY_LOW, "l2");
  send (f->s.dispatcher, SPARK_PRIORITY_DEFAULT, "d2");
  send (f->s.dispatcher, SPARK_PRIORITY_HIGH, "h2");
  g_assert_cmpuint (spark_module_server_get_pending (f->s.server), ==, 6);

  spark_test_gate_open (&f->m.gate);
  spark_test_wait_count (NULL, &f->m.handled, 7);

  log = spark_test_log_dup (&f->m.log);
  g_assert_cmpstr (log, ==, "h1 h2 d1 d2 l1 l2");
  g_free (log);
}

/* A high message sent while the server works through a batch it took
 * already is handled next, before the rest of that batch. */
static void
test_priority_taken_batch (Fixture       *f,
                           gconstpointer  data)
{
  GString *expected = g_string_new ("wait d0 urgent");
  char *log;

  f->m.urgent = spark_dispatcher_with_priority (f->s.dispatcher, SPARK_PRIORITY_HIGH);

  /* All queued before the server takes them: one batch. */
  send (f->s.dispatcher, SPARK_PRIORITY_DEFAULT, "wait");
  while (spark_module_server_get_pending (f->s.server) > 0)
    g_usleep (1000);
  for (guint i = 0; i < 100; i++)
    {
      char name[16];

      g_snprintf (name, sizeof name, "d%u", i);
      send (f->s.dispatcher, SPARK_PRIORITY_DEFAULT, name);
      if (i > 0)
        g_string_append_printf (expected, " %s", name);
    }

  spark_test_gate_open (&f->m.gate);
  spark_test_wait_count (NULL, &f->m.handled, 102);

  log = spark_test_log_dup (&f->m.log);
  /* "wait" is not logged, only handled. */
  g_assert_cmpstr (log, ==, expected->str + strlen ("wait "));
  g_free (log);
  g_string_free (expected, TRUE);
}

/* Requests too, with the priority set on the dispatcher. */
static void
test_priority_requests (Fixture       *f,
                        gconstpointer  data)
{
  SparkTestOutcome low = { 0, }, high = { 0, };
  char *log;

  send (f->s.dispatcher, SPARK_PRIORITY_DEFAULT, "wait");
  while (spark_module_server_get_pending (f->s.server) > 0)
    g_usleep (1000);

  spark_dispatcher_set_priority (f->s.dispatcher, SPARK_PRIORITY_LOW);
  g_assert_cmpint (spark_dispatcher_get_priority (f->s.dispatcher), ==, SPARK_PRIORITY_LOW);
  spark_dispatcher_request_full (f->s.dispatcher, "low", NULL, NULL, NULL, spark_test_outcome_cb, &low, NULL);
  g_object_set (f->s.dispatcher, "priority", SPARK_PRIORITY_HIGH, NULL);
  spark_dispatcher_request_full (f->s.dispatcher, "high", NULL, NULL, NULL, spark_test_outcome_cb, &high, NULL);

  spark_test_gate_open (&f->m.gate);
  spark_test_wait_flag (NULL, &low.done);
  spark_test_wait_flag (NULL, &high.done);
  g_assert_no_error (low.error);
  g_assert_no_error (high.error);

  log = spark_test_log_dup (&f->m.log);
  g_assert_cmpstr (log, ==, "high low");
  g_free (log);
  spark_test_outcome_clear (&low);
  spark_test_outcome_clear (&high);
}

#define N_CANCELLED 5

/* cancel_all(): the dispatcher's queued requests fail with CANCELLED at
 * once, while the server is busy; another dispatcher's, and commands, go
 * on. Through a dispatcher with_priority() made, too. */
static void
test_cancel_all_queued (Fixture       *f,
                        gconstpointer  data)
{
  g_autoptr(SparkDispatcher) mine = spark_module_server_create_dispatcher (f->s.server);
  g_autoptr(SparkDispatcher) mine_high = spark_dispatcher_with_priority (mine, SPARK_PRIORITY_HIGH);
  SparkTestOutcome outcomes[N_CANCELLED] = { { 0, }, };
  SparkTestOutcome other = { 0, };
  GError *error = NULL;
  char *log;

  send (f->s.dispatcher, SPARK_PRIORITY_DEFAULT, "wait");
  while (spark_module_server_get_pending (f->s.server) > 0)
    g_usleep (1000);

  for (guint i = 0; i < N_CANCELLED; i++)
    spark_dispatcher_request_full (i % 2 ? mine_high : mine, "mine", NULL, NULL, NULL,
                                   spark_test_outcome_cb, &outcomes[i], NULL);
  spark_dispatcher_request_full (f->s.dispatcher, "other", NULL, NULL, NULL, spark_test_outcome_cb, &other, NULL);
  g_assert_true (spark_dispatcher_send_command (mine, "cmd", NULL, NULL, &error));
  g_assert_no_error (error);

  spark_dispatcher_cancel_all (mine);
  /* The server is still blocked: the outcomes came from the cancel. */
  for (guint i = 0; i < N_CANCELLED; i++)
    {
      spark_test_wait_flag (NULL, &outcomes[i].done);
      g_assert_error (outcomes[i].error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
      spark_test_outcome_clear (&outcomes[i]);
    }
  g_assert_false (g_atomic_int_get (&other.done));

  spark_test_gate_open (&f->m.gate);
  spark_test_wait_flag (NULL, &other.done);
  g_assert_no_error (other.error);
  spark_test_outcome_clear (&other);
  spark_test_wait_count (NULL, &f->m.handled, 3);

  log = spark_test_log_dup (&f->m.log);
  g_assert_cmpstr (log, ==, "other cmd");
  g_free (log);
}

/* Requests the server took in its batch already are cancelled too: the
 * cancel goes ahead of the batch through the control lane. */
static void
test_cancel_all_taken (Fixture       *f,
                       gconstpointer  data)
{
  SparkTestOutcome outcomes[N_CANCELLED] = { { 0, }, };
  char *log;

  f->m.cancel = spark_module_server_create_dispatcher (f->s.server);

  send (f->s.dispatcher, SPARK_PRIORITY_DEFAULT, "wait");
  while (spark_module_server_get_pending (f->s.server) > 0)
    g_usleep (1000);
  send (f->s.dispatcher, SPARK_PRIORITY_DEFAULT, "d0");   /* cancels m.cancel's */
  for (guint i = 0; i < N_CANCELLED; i++)
    spark_dispatcher_request_full (f->m.cancel, "taken", NULL, NULL, NULL,
                                   spark_test_outcome_cb, &outcomes[i], NULL);
  send (f->s.dispatcher, SPARK_PRIORITY_DEFAULT, "last");

  /* One batch: d0, the requests, last. */
  spark_test_gate_open (&f->m.gate);
  for (guint i = 0; i < N_CANCELLED; i++)
    {
      spark_test_wait_flag (NULL, &outcomes[i].done);
      g_assert_error (outcomes[i].error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
      spark_test_outcome_clear (&outcomes[i]);
    }
  spark_test_wait_count (NULL, &f->m.handled, 3);

  log = spark_test_log_dup (&f->m.log);
  g_assert_cmpstr (log, ==, "d0 last");
  g_free (log);
}

static void
on_notify (GObject    *object,
           GParamSpec *pspec,
           gpointer    user_data)
{
  (*(guint *) user_data)++;
}

/* The property notifies on change only; the derived dispatcher keeps the
 * timeout; bad values are criticals. */
static void
test_priority_property (void)
{
  Module m = { 0, };
  g_autoptr(SparkHandler) handler = spark_func_handler_new (module_request, module_command, &m, NULL);
  g_autoptr(SparkModuleServer) server = spark_module_server_new (handler);
  g_autoptr(SparkDispatcher) dispatcher = spark_module_server_create_dispatcher (server);
  g_autoptr(SparkDispatcher) derived = NULL;
  guint notified = 0;

  g_signal_connect (dispatcher, "notify::priority", G_CALLBACK (on_notify), &notified);
  g_assert_cmpint (spark_dispatcher_get_priority (dispatcher), ==, SPARK_PRIORITY_DEFAULT);
  spark_dispatcher_set_priority (dispatcher, SPARK_PRIORITY_DEFAULT);
  g_assert_cmpuint (notified, ==, 0);
  spark_dispatcher_set_priority (dispatcher, SPARK_PRIORITY_LOW);
  g_assert_cmpuint (notified, ==, 1);

  spark_dispatcher_set_timeout (dispatcher, 1234);
  derived = spark_dispatcher_with_priority (dispatcher, SPARK_PRIORITY_HIGH);
  g_assert_cmpint (spark_dispatcher_get_priority (derived), ==, SPARK_PRIORITY_HIGH);
  g_assert_cmpint (spark_dispatcher_get_timeout (derived), ==, 1234);
  g_assert_cmpint (spark_dispatcher_get_priority (dispatcher), ==, SPARK_PRIORITY_LOW);

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*priority_is_valid*");
  spark_dispatcher_set_priority (dispatcher, (SparkPriority) 7);
  g_test_assert_expected_messages ();
  g_assert_cmpint (spark_dispatcher_get_priority (dispatcher), ==, SPARK_PRIORITY_LOW);

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*priority_is_valid*");
  g_assert_null (spark_dispatcher_with_priority (dispatcher, (SparkPriority) -1));
  g_test_assert_expected_messages ();
}

int
main (int argc, char *argv[])
{
  static const SparkTestServerOptions in_thread = { 0, };

  g_test_init (&argc, &argv, NULL);

  g_test_add ("/spark/priority/order", Fixture, &in_thread, fixture_setup, test_priority_order, fixture_teardown);
  g_test_add ("/spark/priority/taken-batch", Fixture, &in_thread, fixture_setup, test_priority_taken_batch, fixture_teardown);
  g_test_add ("/spark/priority/requests", Fixture, &in_thread, fixture_setup, test_priority_requests, fixture_teardown);
  g_test_add_func ("/spark/priority/property", test_priority_property);
  g_test_add ("/spark/cancel-all/queued", Fixture, &in_thread, fixture_setup, test_cancel_all_queued, fixture_teardown);
  g_test_add ("/spark/cancel-all/taken", Fixture, &in_thread, fixture_setup, test_cancel_all_taken, fixture_teardown);

  return spark_test_run ();
}
