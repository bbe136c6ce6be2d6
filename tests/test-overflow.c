/* test-overflow.c: what a full mailbox does (SparkModuleServer:overflow)
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <string.h>

#include "spark-test-util.h"

#define CAPACITY 2

/* A module that logs what it handles ("name" or "name:N"); "wait" blocks
 * at the gate first, so that the test can fill the mailbox. */
typedef struct
{
  SparkTestLog  log;
  SparkTestGate gate;
  gint          handled;   /* atomic */
  gint          last;      /* atomic: the last "progress" value */
  gint          done;      /* atomic: "done" was handled */
} Module;

static void
module_handled (Module *m)
{
  g_atomic_int_inc (&m->handled);
  g_main_context_wakeup (NULL);   /* the test waits on the default context */
}

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
  else if (g_str_equal (name, "progress"))
    g_atomic_int_set (&m->last, g_variant_get_int32 (parameters));
  else if (g_str_equal (name, "done"))
    g_atomic_int_set (&m->done, TRUE);
  else if (parameters != NULL && g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(si)")))
    {
      /* A keyed one: "name:key:N". */
      const char *key;
      gint32 value;
      g_autofree char *entry = NULL;
      g_autoptr(GVariant) number = NULL;

      g_variant_get (parameters, "(&si)", &key, &value);
      entry = g_strdup_printf ("%s:%s", name, key);
      number = g_variant_ref_sink (g_variant_new_int32 (value));
      spark_test_log_append (&m->log, entry, number);
    }
  else
    spark_test_log_append (&m->log, name, parameters);

  module_handled (m);
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

  spark_test_log_append (&m->log, name, parameters);
  module_handled (m);
  return g_variant_new_string (name);
}

typedef struct
{
  SparkTestServer s;
  Module          m;
  SparkRouter    *router;        /* the router fixture's: the server's handler */
  guint           dropped;       /* messages-dropped counts, summed */
  guint           emissions;
} Fixture;

static void
on_messages_dropped (SparkModuleServer *server,
                     guint              count,
                     gpointer           user_data)
{
  Fixture *f = user_data;

  g_assert_true (g_main_context_is_owner (g_main_context_default ()));
  g_assert_cmpuint (count, >, 0);
  f->dropped += count;
  f->emissions++;
}

static void
fixture_setup (Fixture       *f,
               gconstpointer  data)
{
  static const SparkTestServerOptions not_started = { .start = SPARK_TEST_START_NONE };
  GError *error = NULL;

  spark_test_log_init (&f->m.log);
  spark_test_gate_init (&f->m.gate);
  spark_test_server_setup (&f->s, spark_func_handler_new (module_request, module_command, &f->m, NULL),
                           &not_started);
  spark_module_server_set_capacity (f->s.server, CAPACITY);
  spark_module_server_set_overflow (f->s.server, GPOINTER_TO_INT (data));
  g_signal_connect (f->s.server, "messages-dropped", G_CALLBACK (on_messages_dropped), f);
  g_assert_true (spark_module_server_start_in_thread (f->s.server, &error));
  g_assert_no_error (error);
}

/* The module behind a router (routes "wait", "job", "x", "y", "r"), on a
 * server whose own policy is WAIT: the tests give routes their own. */
static void
router_fixture_setup (Fixture       *f,
                      gconstpointer  data)
{
  static const SparkTestServerOptions not_started = { .start = SPARK_TEST_START_NONE };
  g_autoptr(SparkHandler) module = spark_func_handler_new (module_request, module_command, &f->m, NULL);
  GError *error = NULL;

  spark_test_log_init (&f->m.log);
  spark_test_gate_init (&f->m.gate);
  f->router = spark_router_new ();
  for (guint i = 0; i < 5; i++)
    g_assert_true (spark_router_add_handler (f->router, (const char *[]) { "wait", "job", "x", "y", "r" }[i],
                                             module, NULL, NULL, &error));
  g_assert_no_error (error);
  spark_test_server_setup (&f->s, SPARK_HANDLER (g_object_ref (f->router)), &not_started);
  spark_module_server_set_capacity (f->s.server, CAPACITY);
  g_signal_connect (f->s.server, "messages-dropped", G_CALLBACK (on_messages_dropped), f);
  g_assert_true (spark_module_server_start_in_thread (f->s.server, &error));
  g_assert_no_error (error);
}

static void
fixture_teardown (Fixture       *f,
                  gconstpointer  data)
{
  g_clear_object (&f->router);
  spark_test_gate_open (&f->m.gate);
  g_signal_handlers_disconnect_by_data (f->s.server, f);
  spark_test_server_teardown (&f->s);
  spark_test_log_clear (&f->m.log);
  spark_test_gate_clear (&f->m.gate);
}

static void
send (Fixture    *f,
      const char *name,
      gint        value)
{
  GError *error = NULL;

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, name,
                                                value >= 0 ? g_variant_new_int32 (value) : NULL,
                                                NULL, &error));
  g_assert_no_error (error);
}

/* The server blocks in "wait"; then @n messages fill the mailbox. */
static void
block_server (Fixture *f)
{
  send (f, "wait", -1);
  while (spark_module_server_get_pending (f->s.server) > 0)
    g_usleep (1000);
}

static char *
finish (Fixture *f,
        gint     handled)
{
  spark_test_gate_open (&f->m.gate);
  spark_test_wait_count (NULL, &f->m.handled, handled);
  return spark_test_log_dup (&f->m.log);
}

/* Waits for the messages-dropped reports to add up to @count. */
static void
wait_dropped (Fixture *f,
              guint    count)
{
  while (f->dropped < count)
    g_main_context_iteration (NULL, TRUE);
  g_assert_cmpuint (f->dropped, ==, count);
}

/* FAIL: every kind of send fails at once with FULL. */
static void
test_overflow_fail (Fixture       *f,
                    gconstpointer  data)
{
  SparkTestOutcome outcome = { 0, };
  GError *error = NULL;
  char *log;

  block_server (f);
  send (f, "c", 1);
  send (f, "c", 2);

  g_assert_false (spark_dispatcher_send_command (f->s.dispatcher, "c", g_variant_new_int32 (3), NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_clear_error (&error);
  g_assert_null (spark_dispatcher_request_sync (f->s.dispatcher, "r", NULL, NULL, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_clear_error (&error);
  spark_dispatcher_request_full (f->s.dispatcher, "r", NULL, NULL, NULL, spark_test_outcome_cb, &outcome, NULL);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  spark_test_outcome_clear (&outcome);

  log = finish (f, 3);
  g_assert_cmpstr (log, ==, "c:1 c:2");
  g_free (log);
  g_assert_cmpuint (f->dropped, ==, 0);
}

/* DROP_NEWEST: the new one goes; the send succeeds; a request completes
 * with DROPPED, a command is reported. */
static void
test_overflow_drop_newest (Fixture       *f,
                           gconstpointer  data)
{
  SparkTestOutcome outcome = { 0, };
  char *log;

  block_server (f);
  send (f, "c", 1);
  send (f, "c", 2);
  send (f, "c", 3);
  spark_dispatcher_request_full (f->s.dispatcher, "r", NULL, NULL, NULL, spark_test_outcome_cb, &outcome, NULL);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_DROPPED);
  g_assert_nonnull (strstr (outcome.error->message, "drop-newest"));
  spark_test_outcome_clear (&outcome);

  log = finish (f, 3);
  g_assert_cmpstr (log, ==, "c:1 c:2");
  g_free (log);
  wait_dropped (f, 1);
}

/* DROP_OLDEST: the oldest queued one goes to make room, a request among
 * them with DROPPED; never a more urgent one for a less urgent. */
static void
test_overflow_drop_oldest (Fixture       *f,
                           gconstpointer  data)
{
  g_autoptr(SparkDispatcher) high = spark_dispatcher_with_priority (f->s.dispatcher, SPARK_PRIORITY_HIGH);
  SparkTestOutcome outcome = { 0, };
  GError *error = NULL;
  char *log;

  block_server (f);
  spark_dispatcher_request_full (f->s.dispatcher, "r", NULL, NULL, NULL, spark_test_outcome_cb, &outcome, NULL);
  send (f, "c", 1);
  send (f, "c", 2);   /* drops "r" */
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_DROPPED);
  g_assert_nonnull (strstr (outcome.error->message, "drop-oldest"));
  spark_test_outcome_clear (&outcome);

  send (f, "c", 3);   /* drops c:1 */
  g_assert_true (spark_dispatcher_send_command (high, "h", g_variant_new_int32 (1), NULL, &error));   /* drops c:2 */
  g_assert_true (spark_dispatcher_send_command (high, "h", g_variant_new_int32 (2), NULL, &error));   /* drops c:3 */
  send (f, "c", 4);   /* all queued are more urgent: c:4 itself goes */
  g_assert_no_error (error);

  log = finish (f, 3);
  g_assert_cmpstr (log, ==, "h:1 h:2");
  g_free (log);
  wait_dropped (f, 4);
}

/* COALESCE: a new command replaces the newest queued one of its name,
 * which is dropped, and joins the end of the queue; the others wait as
 * usual. */
static void
test_overflow_coalesce (Fixture       *f,
                        gconstpointer  data)
{
  GError *error = NULL;
  char *log;

  block_server (f);
  send (f, "p", 1);
  send (f, "q", 1);
  send (f, "p", 2);   /* [q:1 p:2] */
  send (f, "p", 3);   /* [q:1 p:3] */
  send (f, "q", 2);   /* [p:3 q:2] */

  /* Nothing of its name queued: it waits (a try fails). */
  g_assert_false (spark_dispatcher_try_send_command (f->s.dispatcher, "other", NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_clear_error (&error);

  log = finish (f, 3);
  g_assert_cmpstr (log, ==, "p:3 q:2");
  g_free (log);
  wait_dropped (f, 3);
}

static void
send_keyed (Fixture    *f,
            const char *name,
            const char *key,
            gint        value)
{
  GError *error = NULL;

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, name, g_variant_new ("(si)", key, value),
                                                NULL, &error));
  g_assert_no_error (error);
}

/* COALESCE_KEY: a command replaces the newest queued one of its name and
 * key; other keys keep theirs. */
static void
test_overflow_coalesce_key (Fixture       *f,
                            gconstpointer  data)
{
  GError *error = NULL;
  char *log;

  block_server (f);
  send_keyed (f, "job", "a", 1);
  send_keyed (f, "job", "b", 1);   /* full: [a:1 b:1] */
  send_keyed (f, "job", "a", 2);   /* [b:1 a:2] */
  send_keyed (f, "job", "b", 2);   /* [a:2 b:2] */
  send_keyed (f, "job", "a", 3);   /* [b:2 a:3] */

  /* A key with nothing queued waits (a try fails). */
  g_assert_false (spark_dispatcher_try_send_command (f->s.dispatcher, "job",
                                                     g_variant_new ("(si)", "c", 1), &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_clear_error (&error);

  log = finish (f, 3);
  g_assert_cmpstr (log, ==, "job:b:2 job:a:3");
  g_free (log);
  wait_dropped (f, 3);
}

/* Per route: "job" coalesces by key and "y" drops its own oldest, while
 * the server's WAIT holds for the rest. */
static void
test_overflow_per_route (Fixture       *f,
                         gconstpointer  data)
{
  GError *error = NULL;
  char *log;

  g_assert_false (spark_router_set_overflow (f->router, "nope", SPARK_OVERFLOW_FAIL, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND);
  g_clear_error (&error);
  g_assert_true (spark_router_set_overflow (f->router, "job", SPARK_OVERFLOW_COALESCE_KEY, &error));
  g_assert_true (spark_router_set_overflow (f->router, "y", SPARK_OVERFLOW_DROP_OLDEST, &error));
  g_assert_no_error (error);

  block_server (f);
  send (f, "x", 1);
  send (f, "y", 1);                /* full: [x:1 y:1] */
  send (f, "y", 2);                /* y's oldest goes, not x's: [x:1 y:2] */

  /* x's own policy is the server's: it waits. */
  g_assert_false (spark_dispatcher_try_send_command (f->s.dispatcher, "x", g_variant_new_int32 (2), &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_clear_error (&error);

  log = finish (f, 3);
  g_assert_cmpstr (log, ==, "x:1 y:2");
  g_free (log);
  wait_dropped (f, 1);

  /* Then the same with "job": a request to "r" waits for room meanwhile. */
  spark_test_log_reset (&f->m.log);
  g_atomic_int_set (&f->m.handled, 0);
  spark_test_gate_clear (&f->m.gate);
  spark_test_gate_init (&f->m.gate);
  block_server (f);
  send_keyed (f, "job", "a", 1);
  send_keyed (f, "job", "b", 1);
  send_keyed (f, "job", "a", 2);   /* [b:1 a:2] */
  g_assert_false (spark_dispatcher_try_send_command (f->s.dispatcher, "r", NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_clear_error (&error);
  log = finish (f, 3);
  g_assert_cmpstr (log, ==, "job:b:1 job:a:2");
  g_free (log);
  wait_dropped (f, 2);
}

#define FLOOD 100000

/* The UI flood: progress commands far faster than the module handles
 * them. The queue stays within its capacity, the module ends on the
 * newest value, and handled plus dropped is everything sent. */
static void
test_overflow_coalesce_flood (Fixture       *f,
                              gconstpointer  data)
{
  guint max_pending = 0;

  for (gint i = 0; i < FLOOD; i++)
    {
      send (f, "progress", i);
      max_pending = MAX (max_pending, spark_module_server_get_pending (f->s.server));
    }
  send (f, "done", -1);

  spark_test_wait_flag (NULL, &f->m.done);
  g_assert_cmpint (g_atomic_int_get (&f->m.last), ==, FLOOD - 1);
  g_assert_cmpuint (max_pending, <=, CAPACITY);

  wait_dropped (f, (guint) (FLOOD + 1 - g_atomic_int_get (&f->m.handled)));
  g_test_message ("%d of %d handled, %u dropped in %u reports", g_atomic_int_get (&f->m.handled),
                  FLOOD + 1, f->dropped, f->emissions);
}

int
main (int argc, char *argv[])
{
  g_test_init (&argc, &argv, NULL);

#define ADD(path, policy, func) \
  g_test_add (path, Fixture, GINT_TO_POINTER (policy), fixture_setup, func, fixture_teardown)

  ADD ("/spark/overflow/fail", SPARK_OVERFLOW_FAIL, test_overflow_fail);
  ADD ("/spark/overflow/drop-newest", SPARK_OVERFLOW_DROP_NEWEST, test_overflow_drop_newest);
  ADD ("/spark/overflow/drop-oldest", SPARK_OVERFLOW_DROP_OLDEST, test_overflow_drop_oldest);
  ADD ("/spark/overflow/coalesce", SPARK_OVERFLOW_COALESCE, test_overflow_coalesce);
  ADD ("/spark/overflow/coalesce-flood", SPARK_OVERFLOW_COALESCE, test_overflow_coalesce_flood);
  ADD ("/spark/overflow/coalesce-key", SPARK_OVERFLOW_COALESCE_KEY, test_overflow_coalesce_key);
  g_test_add ("/spark/overflow/per-route", Fixture, NULL, router_fixture_setup, test_overflow_per_route,
              fixture_teardown);

#undef ADD

  return spark_test_run ();
}
