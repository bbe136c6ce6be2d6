/* test-invocation.c: SparkInvocation, replies that come later
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Most tests serve a SparkTestInvocationHandler, which keeps every
 * invocation, on the main thread's default context, and send from the main
 * thread: everything happens when the test iterates that context.
 */

#include <string.h>

#include "spark-test-util.h"

#define TEST_ERROR (g_quark_from_static_string ("spark-test-invocation-error"))

/* Outcomes -------------------------------------------------------------------- */

static void
on_async_reply (GObject      *source,
                GAsyncResult *result,
                gpointer      user_data)
{
  SparkTestOutcome *outcome = user_data;

  g_assert_false (g_atomic_int_get (&outcome->done));
  outcome->reply = spark_dispatcher_request_finish (SPARK_DISPATCHER (source), result, &outcome->error);
  g_atomic_int_set (&outcome->done, TRUE);
}

typedef struct
{
  SparkTestServer             s;
  SparkTestInvocationHandler *handler;   /* s.handler */
} Fixture;

/* Served on the test's default context; teardown aborts. */
static const SparkTestServerOptions on_default = {
  .start = SPARK_TEST_START_ON_DEFAULT,
  .shutdown = SPARK_SHUTDOWN_MODE_ABORT,
};

static void
fixture_setup (Fixture       *fixture,
               gconstpointer  options)
{
  fixture->handler = spark_test_invocation_handler_new ();
  spark_test_server_setup (&fixture->s, SPARK_HANDLER (fixture->handler), options);
}

static void
fixture_teardown (Fixture       *fixture,
                  gconstpointer  options)
{
  spark_test_server_teardown (&fixture->s);
}

/* Waits until the handler has received @n invocations. */
static void
wait_received (Fixture *fixture,
               gint     n)
{
  spark_test_wait_count (NULL, &fixture->handler->n_received, n);
}

static SparkInvocation *
pop (Fixture *fixture)
{
  SparkInvocation *invocation = spark_test_invocation_handler_pop (fixture->handler);

  g_assert_nonnull (invocation);
  return invocation;
}

/* Sends a request with a timeout and returns its invocation, held by the
 * handler. On a slow machine the timeout can end the request before the
 * server handed it to the handler (which then never sees it): then it tries
 * again with a longer timeout. Sets the dispatcher's timeout back to none. */
static SparkInvocation *
send_held_with_timeout (Fixture          *fixture,
                        const char       *name,
                        SparkTestOutcome *outcome)
{
  for (gint timeout = 10; ; timeout *= 4)
    {
      gint before = g_atomic_int_get (&fixture->handler->n_received);

      g_assert_cmpint (timeout, <, 60000);
      spark_dispatcher_set_timeout (fixture->s.dispatcher, timeout);
      spark_dispatcher_request_full (fixture->s.dispatcher, name, NULL, NULL, NULL,
                                     spark_test_outcome_cb, outcome, NULL);
      spark_dispatcher_set_timeout (fixture->s.dispatcher, -1);

      while (g_atomic_int_get (&fixture->handler->n_received) == before &&
             !g_atomic_int_get (&outcome->done))
        g_main_context_iteration (NULL, TRUE);

      if (g_atomic_int_get (&fixture->handler->n_received) > before)
        return pop (fixture);

      g_assert_error (outcome->error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
      spark_test_outcome_clear (outcome);
    }
}

/* Replies later ---------------------------------------------------------------- */

static gboolean
reply_idle_cb (gpointer data)
{
  SparkInvocation *invocation = data;

  spark_invocation_return_value (invocation, g_variant_new_string ("from-idle"));
  return G_SOURCE_REMOVE;
}

typedef struct
{
  GThread      *thread;        /* the replying thread, joined by the test */
  GThread      *handler_thread;
  GMainContext *handler_context;
  gint          returned;      /* atomic: handle_invocation has returned */
} Later;

static void
on_invocation_idle (SparkTestInvocationHandler *handler,
                    SparkInvocation            *invocation,
                    gpointer                    user_data)
{
  Later *later = user_data;
  GMainContext *context = g_main_context_ref_thread_default ();
  GSource *idle = g_idle_source_new ();

  later->handler_thread = g_thread_self ();
  later->handler_context = context;

  g_source_set_callback (idle, reply_idle_cb, g_object_ref (invocation), g_object_unref);
  g_source_attach (idle, context);
  g_source_unref (idle);
  g_main_context_unref (context);
}

static gpointer
reply_thread_func (gpointer data)
{
  SparkInvocation *invocation = data;

  spark_invocation_return_value (invocation, g_variant_new_string ("from-thread"));
  g_object_unref (invocation);
  return NULL;
}

static void
on_invocation_thread (SparkTestInvocationHandler *handler,
                      SparkInvocation            *invocation,
                      gpointer                    user_data)
{
  Later *later = user_data;

  later->handler_thread = g_thread_self ();
  later->thread = g_thread_new ("reply", reply_thread_func, g_object_ref (invocation));
}

static void
test_reply_later_idle (Fixture       *fixture,
                       gconstpointer  data)
{
  Later later = { NULL, NULL, NULL, 0 };
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkTestOutcome next = { 0, NULL, NULL };
  SparkInvocation *invocation;

  fixture->handler->on_invocation = on_invocation_idle;
  fixture->handler->user_data = &later;

  spark_dispatcher_request_full (fixture->s.dispatcher, "later", NULL, G_VARIANT_TYPE_STRING, NULL,
                                 spark_test_outcome_cb, &outcome, NULL);
  spark_dispatcher_request_full (fixture->s.dispatcher, "next", NULL, G_VARIANT_TYPE_STRING, NULL,
                                 spark_test_outcome_cb, &next, NULL);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_no_error (outcome.error);
  g_assert_cmpstr (g_variant_get_string (outcome.reply, NULL), ==, "from-idle");
  g_assert_true (later.handler_thread == g_thread_self ());
  g_assert_true (later.handler_context == g_main_context_default ());

  /* The server moved on to the next request, answered the same way. */
  spark_test_wait_flag (NULL, &next.done);
  g_assert_no_error (next.error);
  g_assert_cmpstr (g_variant_get_string (next.reply, NULL), ==, "from-idle");
  g_assert_cmpint (fixture->handler->n_received, ==, 2);

  invocation = pop (fixture);
  g_object_unref (invocation);
  invocation = pop (fixture);
  g_object_unref (invocation);

  spark_test_outcome_clear (&outcome);
  spark_test_outcome_clear (&next);
}

static void
test_reply_later_thread (Fixture       *fixture,
                         gconstpointer  data)
{
  Later later = { NULL, NULL, NULL, 0 };
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkInvocation *invocation;

  fixture->handler->on_invocation = on_invocation_thread;
  fixture->handler->user_data = &later;

  spark_dispatcher_request_async (fixture->s.dispatcher, "later", NULL, G_VARIANT_TYPE_STRING, NULL,
                                  on_async_reply, &outcome);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_no_error (outcome.error);
  g_assert_cmpstr (g_variant_get_string (outcome.reply, NULL), ==, "from-thread");
  g_assert_true (later.handler_thread == g_thread_self ());
  g_thread_join (g_steal_pointer (&later.thread));
  spark_test_outcome_clear (&outcome);

  /* And the server goes on serving. */
  spark_dispatcher_request_async (fixture->s.dispatcher, "again", NULL, G_VARIANT_TYPE_STRING, NULL,
                                  on_async_reply, &outcome);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_no_error (outcome.error);
  g_assert_cmpstr (g_variant_get_string (outcome.reply, NULL), ==, "from-thread");
  g_thread_join (g_steal_pointer (&later.thread));
  spark_test_outcome_clear (&outcome);

  invocation = pop (fixture);
  g_object_unref (invocation);
  invocation = pop (fixture);
  g_object_unref (invocation);
}

static void
test_accessors (Fixture       *fixture,
                gconstpointer  data)
{
  SparkTestOutcome first = { 0, NULL, NULL };
  SparkTestOutcome second = { 0, NULL, NULL };
  SparkInvocation *invocation;
  GVariant *parameters;
  GCancellable *cancellable;

  spark_dispatcher_request_full (fixture->s.dispatcher, "GetData", g_variant_new ("(si)", "user123", 7),
                                 NULL, NULL, spark_test_outcome_cb, &first, NULL);
  spark_dispatcher_request_full (fixture->s.dispatcher, "NoParameters", NULL,
                                 NULL, NULL, spark_test_outcome_cb, &second, NULL);
  wait_received (fixture, 1);

  invocation = pop (fixture);
  g_assert_cmpstr (spark_invocation_get_name (invocation), ==, "GetData");
  parameters = spark_invocation_get_parameters (invocation);
  g_assert_nonnull (parameters);
  g_assert_false (g_variant_is_floating (parameters));
  g_assert_cmpstr (g_variant_get_type_string (parameters), ==, "(si)");
  {
    const char *key;
    gint32 value;

    g_variant_get (parameters, "(&si)", &key, &value);
    g_assert_cmpstr (key, ==, "user123");
    g_assert_cmpint (value, ==, 7);
  }
  cancellable = spark_invocation_get_cancellable (invocation);
  g_assert_true (G_IS_CANCELLABLE (cancellable));
  g_assert_false (g_cancellable_is_cancelled (cancellable));
  spark_invocation_return_value (invocation, g_variant_new_boolean (TRUE));
  g_object_unref (invocation);

  wait_received (fixture, 2);
  invocation = pop (fixture);
  g_assert_cmpstr (spark_invocation_get_name (invocation), ==, "NoParameters");
  g_assert_null (spark_invocation_get_parameters (invocation));
  g_assert_true (G_IS_CANCELLABLE (spark_invocation_get_cancellable (invocation)));
  spark_invocation_return_value (invocation, g_variant_new_boolean (FALSE));
  g_object_unref (invocation);

  spark_test_wait_flag (NULL, &first.done);
  spark_test_wait_flag (NULL, &second.done);
  g_assert_no_error (first.error);
  g_assert_true (g_variant_get_boolean (first.reply));
  g_assert_no_error (second.error);
  g_assert_false (g_variant_get_boolean (second.reply));

  spark_test_outcome_clear (&first);
  spark_test_outcome_clear (&second);
}

/* The server handles the next message only once the held invocation's
 * request has ended: completed, dropped, or cancelled. */
static void
test_ordering (Fixture       *fixture,
               gconstpointer  data)
{
  SparkTestOutcome outcomes[4] = { { 0, NULL, NULL }, };
  GCancellable *cancellable = g_cancellable_new ();
  SparkInvocation *invocation;

  for (guint i = 0; i < G_N_ELEMENTS (outcomes); i++)
    spark_dispatcher_request_full (fixture->s.dispatcher, "step", g_variant_new_uint32 (i), NULL,
                                   i == 2 ? cancellable : NULL,
                                   spark_test_outcome_cb, &outcomes[i], NULL);

  wait_received (fixture, 1);
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_cmpint (fixture->handler->n_received, ==, 1);
  g_assert_cmpuint (spark_module_server_get_pending (fixture->s.server), ==, 3);

  /* Completed: the next one is handled. */
  invocation = pop (fixture);
  g_assert_cmpuint (g_variant_get_uint32 (spark_invocation_get_parameters (invocation)), ==, 0);
  spark_invocation_return_value (invocation, g_variant_new_string ("zero"));
  g_object_unref (invocation);
  wait_received (fixture, 2);
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_cmpint (fixture->handler->n_received, ==, 2);

  /* Dropped without a reply: NO_REPLY, and the next one is handled. */
  invocation = pop (fixture);
  g_assert_cmpuint (g_variant_get_uint32 (spark_invocation_get_parameters (invocation)), ==, 1);
  g_object_unref (invocation);
  wait_received (fixture, 3);
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_cmpint (fixture->handler->n_received, ==, 3);

  /* Its requester cancelled: the next one is handled, the invocation is
   * still held. */
  g_cancellable_cancel (cancellable);
  wait_received (fixture, 4);
  invocation = pop (fixture);
  g_assert_cmpuint (g_variant_get_uint32 (spark_invocation_get_parameters (invocation)), ==, 2);
  g_object_unref (invocation);

  invocation = pop (fixture);
  g_assert_cmpuint (g_variant_get_uint32 (spark_invocation_get_parameters (invocation)), ==, 3);
  spark_invocation_return_value (invocation, g_variant_new_string ("three"));
  g_object_unref (invocation);

  for (guint i = 0; i < G_N_ELEMENTS (outcomes); i++)
    spark_test_wait_flag (NULL, &outcomes[i].done);

  g_assert_no_error (outcomes[0].error);
  g_assert_cmpstr (g_variant_get_string (outcomes[0].reply, NULL), ==, "zero");
  g_assert_error (outcomes[1].error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY);
  g_assert_error (outcomes[2].error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_assert_no_error (outcomes[3].error);
  g_assert_cmpstr (g_variant_get_string (outcomes[3].reply, NULL), ==, "three");

  for (guint i = 0; i < G_N_ELEMENTS (outcomes); i++)
    spark_test_outcome_clear (&outcomes[i]);
  g_object_unref (cancellable);
}

static void
test_complete_twice (Fixture       *fixture,
                     gconstpointer  data)
{
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkInvocation *invocation;

  spark_dispatcher_request_full (fixture->s.dispatcher, "twice", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &outcome, NULL);
  wait_received (fixture, 1);
  invocation = pop (fixture);

  spark_invocation_return_value (invocation, g_variant_new_string ("first"));

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*twice*");
  spark_invocation_return_value (invocation, g_variant_new_string ("second"));
  g_test_assert_expected_messages ();

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*twice*");
  spark_invocation_return_error_literal (invocation, TEST_ERROR, 1, "second");
  g_test_assert_expected_messages ();

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*twice*");
  spark_invocation_take_error (invocation, g_error_new_literal (TEST_ERROR, 2, "third"));
  g_test_assert_expected_messages ();

  spark_test_wait_flag (NULL, &outcome.done);
  spark_test_iterate_pending (g_main_context_default ());   /* spark_test_outcome_cb asserts it runs once */
  g_assert_no_error (outcome.error);
  g_assert_cmpstr (g_variant_get_string (outcome.reply, NULL), ==, "first");

  g_object_unref (invocation);
  spark_test_outcome_clear (&outcome);
}

/* The request ended first (cancelled, timed out): completing is quiet and
 * the reply is dropped; the requester saw only its own outcome. */
static void
test_complete_after_cancel (Fixture       *fixture,
                            gconstpointer  data)
{
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkTestOutcome next = { 0, NULL, NULL };
  GCancellable *cancellable = g_cancellable_new ();
  SparkInvocation *invocation;

  spark_dispatcher_request_full (fixture->s.dispatcher, "slow", NULL, NULL, cancellable,
                                 spark_test_outcome_cb, &outcome, NULL);
  wait_received (fixture, 1);
  invocation = pop (fixture);

  g_cancellable_cancel (cancellable);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_error (outcome.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_assert_true (g_cancellable_is_cancelled (spark_invocation_get_cancellable (invocation)));

  /* No critical (it would be fatal), no second outcome. */
  spark_invocation_return_value (invocation, g_variant_new_string ("too late"));
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_error (outcome.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);

  /* The server is not stuck on it. */
  spark_dispatcher_request_full (fixture->s.dispatcher, "next", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &next, NULL);
  wait_received (fixture, 2);
  g_object_unref (invocation);
  invocation = pop (fixture);
  spark_invocation_return_error_literal (invocation, TEST_ERROR, 3, "next");
  spark_test_wait_flag (NULL, &next.done);
  g_assert_error (next.error, TEST_ERROR, 3);

  g_object_unref (invocation);
  g_object_unref (cancellable);
  spark_test_outcome_clear (&outcome);
  spark_test_outcome_clear (&next);
}

static void
test_complete_after_timeout (Fixture       *fixture,
                             gconstpointer  data)
{
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkTestOutcome next = { 0, NULL, NULL };
  SparkInvocation *invocation;
  GError *error = NULL;
  gint received;

  invocation = send_held_with_timeout (fixture, "slow", &outcome);
  received = g_atomic_int_get (&fixture->handler->n_received);

  /* A timeout ends the request for the server too: it moves on while the
   * invocation is still held. */
  spark_dispatcher_request_full (fixture->s.dispatcher, "next", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &next, NULL);

  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  g_assert_true (g_cancellable_is_cancelled (spark_invocation_get_cancellable (invocation)));

  /* Completing it now is quiet, and changes nothing. */
  error = g_error_new_literal (TEST_ERROR, 4, "too late");
  spark_invocation_return_gerror (invocation, error);
  g_clear_error (&error);
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  g_object_unref (invocation);

  spark_test_wait_count (NULL, &fixture->handler->n_received, received + 1);
  invocation = pop (fixture);
  g_assert_cmpstr (spark_invocation_get_name (invocation), ==, "next");
  spark_invocation_return_value (invocation, g_variant_new_string ("in time"));
  g_object_unref (invocation);
  spark_test_wait_flag (NULL, &next.done);
  g_assert_no_error (next.error);
  g_assert_cmpstr (g_variant_get_string (next.reply, NULL), ==, "in time");

  spark_test_outcome_clear (&outcome);
  spark_test_outcome_clear (&next);
}

static void
test_dropped (Fixture       *fixture,
              gconstpointer  data)
{
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkTestOutcome next = { 0, NULL, NULL };
  SparkInvocation *invocation;

  spark_dispatcher_request_full (fixture->s.dispatcher, "dropped", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &outcome, NULL);
  spark_dispatcher_request_full (fixture->s.dispatcher, "next", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &next, NULL);
  wait_received (fixture, 1);
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_false (outcome.done);

  invocation = pop (fixture);
  g_object_unref (invocation);   /* the last reference, no completion */

  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_null (outcome.reply);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY);

  wait_received (fixture, 2);
  invocation = pop (fixture);
  spark_invocation_return_value (invocation, g_variant_new_int32 (2));
  g_object_unref (invocation);
  spark_test_wait_flag (NULL, &next.done);
  g_assert_no_error (next.error);
  g_assert_cmpint (g_variant_get_int32 (next.reply), ==, 2);

  spark_test_outcome_clear (&outcome);
  spark_test_outcome_clear (&next);
}

/* Errors reach the requester unchanged ------------------------------------------ */

typedef enum {
  RETURN_ERROR_LITERAL,
  RETURN_GERROR,
  TAKE_ERROR,
} ErrorWay;

static void
check_error_way (Fixture  *fixture,
                 ErrorWay  way,
                 gboolean  use_async)
{
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkInvocation *invocation;
  GError *error;

  if (use_async)
    spark_dispatcher_request_async (fixture->s.dispatcher, "fails", NULL, G_VARIANT_TYPE_STRING, NULL,
                                    on_async_reply, &outcome);
  else
    spark_dispatcher_request_full (fixture->s.dispatcher, "fails", NULL, G_VARIANT_TYPE_STRING, NULL,
                                   spark_test_outcome_cb, &outcome, NULL);
  spark_test_wait_count (NULL, &fixture->handler->n_received,
                         fixture->handler->n_received + 1);
  invocation = pop (fixture);

  switch (way)
    {
    case RETURN_ERROR_LITERAL:
      spark_invocation_return_error_literal (invocation, TEST_ERROR, 42, "a literal “message”");
      break;

    case RETURN_GERROR:
      error = g_error_new_literal (G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "No data for “user123”");
      spark_invocation_return_gerror (invocation, error);
      /* Copied: ours is still ours. */
      g_assert_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND);
      g_error_free (error);
      break;

    case TAKE_ERROR:
      spark_invocation_take_error (invocation,
                                   g_error_new_literal (SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL,
                                                        "a handler's own FULL"));
      break;

    default:
      g_assert_not_reached ();
    }

  g_object_unref (invocation);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_null (outcome.reply);

  switch (way)
    {
    case RETURN_ERROR_LITERAL:
      g_assert_error (outcome.error, TEST_ERROR, 42);
      g_assert_cmpstr (outcome.error->message, ==, "a literal “message”");
      break;

    case RETURN_GERROR:
      g_assert_error (outcome.error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND);
      g_assert_cmpstr (outcome.error->message, ==, "No data for “user123”");
      break;

    case TAKE_ERROR:
      g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
      g_assert_cmpstr (outcome.error->message, ==, "a handler's own FULL");
      break;

    default:
      g_assert_not_reached ();
    }

  spark_test_outcome_clear (&outcome);
}

static void
test_return_error_literal (Fixture       *fixture,
                           gconstpointer  data)
{
  check_error_way (fixture, RETURN_ERROR_LITERAL, FALSE);
  check_error_way (fixture, RETURN_ERROR_LITERAL, TRUE);
}

static void
test_return_gerror (Fixture       *fixture,
                    gconstpointer  data)
{
  check_error_way (fixture, RETURN_GERROR, FALSE);
  check_error_way (fixture, RETURN_GERROR, TRUE);
}

static void
test_take_error (Fixture       *fixture,
                 gconstpointer  data)
{
  check_error_way (fixture, TAKE_ERROR, FALSE);
  check_error_way (fixture, TAKE_ERROR, TRUE);
}

static void
test_type_mismatch (Fixture       *fixture,
                    gconstpointer  data)
{
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkInvocation *invocation;

  spark_dispatcher_request_full (fixture->s.dispatcher, "mismatch", NULL, G_VARIANT_TYPE_STRING, NULL,
                                 spark_test_outcome_cb, &outcome, NULL);
  wait_received (fixture, 1);
  invocation = pop (fixture);
  spark_invocation_return_value (invocation, g_variant_new_int32 (5));
  g_object_unref (invocation);

  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_null (outcome.reply);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH);
  g_assert_nonnull (strstr (outcome.error->message, "“i”"));
  g_assert_nonnull (strstr (outcome.error->message, "“s”"));
  spark_test_outcome_clear (&outcome);

  /* The right type passes, a tuple type too. */
  spark_dispatcher_request_full (fixture->s.dispatcher, "match", NULL, G_VARIANT_TYPE ("(si)"), NULL,
                                 spark_test_outcome_cb, &outcome, NULL);
  wait_received (fixture, 2);
  invocation = pop (fixture);
  spark_invocation_return_value (invocation, g_variant_new ("(si)", "a", 1));
  g_object_unref (invocation);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_no_error (outcome.error);
  g_assert_cmpstr (g_variant_get_type_string (outcome.reply), ==, "(si)");
  spark_test_outcome_clear (&outcome);
}

/* The invocation's cancellable ------------------------------------------------- */

static void
test_cancellable_requester (Fixture       *fixture,
                            gconstpointer  data)
{
  SparkTestOutcome outcome = { 0, NULL, NULL };
  GCancellable *cancellable = g_cancellable_new ();
  SparkInvocation *invocation;
  GCancellable *handler_cancellable;

  spark_dispatcher_request_async (fixture->s.dispatcher, "cancel-me", NULL, NULL, cancellable,
                                  on_async_reply, &outcome);
  wait_received (fixture, 1);
  invocation = pop (fixture);
  handler_cancellable = spark_invocation_get_cancellable (invocation);
  g_assert_false (g_cancellable_is_cancelled (handler_cancellable));

  g_cancellable_cancel (cancellable);
  g_assert_true (g_cancellable_is_cancelled (handler_cancellable));

  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_error (outcome.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);

  spark_invocation_return_value (invocation, g_variant_new_string ("ignored"));
  g_object_unref (invocation);
  g_object_unref (cancellable);
  spark_test_outcome_clear (&outcome);
}

static void
test_cancellable_timeout (Fixture       *fixture,
                          gconstpointer  data)
{
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkInvocation *invocation;
  GCancellable *handler_cancellable;

  invocation = send_held_with_timeout (fixture, "time-me-out", &outcome);
  handler_cancellable = spark_invocation_get_cancellable (invocation);

  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  g_assert_true (g_cancellable_is_cancelled (handler_cancellable));

  g_object_unref (invocation);
  spark_test_outcome_clear (&outcome);
}

/* ABORT cancels a held invocation's cancellable, with or without a
 * cancellable from the requester, and fails its request with CLOSED. */
static void
check_cancellable_abort (Fixture  *fixture,
                         gboolean  requester_cancellable)
{
  SparkTestOutcome outcome = { 0, NULL, NULL };
  GCancellable *cancellable = requester_cancellable ? g_cancellable_new () : NULL;
  SparkInvocation *invocation;
  GCancellable *handler_cancellable;
  gint done = FALSE;

  spark_dispatcher_request_full (fixture->s.dispatcher, "abort-me", NULL, NULL, cancellable,
                                 spark_test_outcome_cb, &outcome, NULL);
  wait_received (fixture, 1);
  invocation = pop (fixture);
  handler_cancellable = spark_invocation_get_cancellable (invocation);
  g_assert_false (g_cancellable_is_cancelled (handler_cancellable));

  spark_module_server_shutdown_async (fixture->s.server, SPARK_SHUTDOWN_MODE_ABORT, NULL,
                                      spark_test_shutdown_done_cb, &done);
  g_assert_true (g_cancellable_is_cancelled (handler_cancellable));
  spark_test_wait_flag (NULL, &done);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);

  /* Completing it now is quiet. */
  spark_invocation_return_value (invocation, g_variant_new_string ("after abort"));
  spark_test_iterate_pending (g_main_context_default ());
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);

  g_object_unref (invocation);
  g_clear_object (&cancellable);
  spark_test_outcome_clear (&outcome);
}

static void
test_cancellable_abort (Fixture       *fixture,
                        gconstpointer  data)
{
  check_cancellable_abort (fixture, FALSE);
}

static void
test_cancellable_abort_own (Fixture       *fixture,
                            gconstpointer  data)
{
  check_cancellable_abort (fixture, TRUE);
}

/* Once its request has ended, an invocation holds no server, handler or
 * mailbox: both are finalized while the invocations live on. */
static void
test_holds_nothing (void)
{
  SparkTestInvocationHandler *handler = spark_test_invocation_handler_new ();
  SparkModuleServer *server = spark_module_server_new (SPARK_HANDLER (handler));
  SparkDispatcher *dispatcher;
  SparkTestOutcome completed = { 0, NULL, NULL };
  SparkTestOutcome aborted = { 0, NULL, NULL };
  SparkInvocation *first;
  SparkInvocation *second;
  gpointer weak_server = server;
  gpointer weak_handler = handler;
  gpointer weak_first;
  gpointer weak_second;
  GError *error = NULL;
  gint done = FALSE;

  g_object_add_weak_pointer (G_OBJECT (server), &weak_server);
  g_object_add_weak_pointer (G_OBJECT (handler), &weak_handler);

  g_assert_true (spark_module_server_start (server, NULL, &error));
  g_assert_no_error (error);
  dispatcher = spark_module_server_create_dispatcher (server);

  /* One completed by the handler... */
  spark_dispatcher_request_full (dispatcher, "completed", g_variant_new_int32 (1), NULL, NULL,
                                 spark_test_outcome_cb, &completed, NULL);
  spark_test_wait_count (NULL, &handler->n_received, 1);
  first = spark_test_invocation_handler_pop (handler);
  spark_invocation_return_value (first, g_variant_new_int32 (10));
  spark_test_wait_flag (NULL, &completed.done);
  g_assert_no_error (completed.error);

  /* ...one ended by an abort while held. */
  spark_dispatcher_request_full (dispatcher, "aborted", g_variant_new_int32 (2), NULL, NULL,
                                 spark_test_outcome_cb, &aborted, NULL);
  spark_test_wait_count (NULL, &handler->n_received, 2);
  second = spark_test_invocation_handler_pop (handler);

  spark_module_server_shutdown_async (server, SPARK_SHUTDOWN_MODE_ABORT, NULL, spark_test_shutdown_done_cb, &done);
  spark_test_wait_flag (NULL, &done);
  spark_test_wait_flag (NULL, &aborted.done);
  g_assert_error (aborted.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);

  g_object_unref (dispatcher);
  g_object_unref (server);
  g_object_unref (handler);

  weak_first = first;
  weak_second = second;
  g_object_add_weak_pointer (G_OBJECT (first), &weak_first);
  g_object_add_weak_pointer (G_OBJECT (second), &weak_second);

  g_assert_null (weak_server);
  g_assert_null (weak_handler);
  g_assert_nonnull (weak_first);
  g_assert_nonnull (weak_second);

  /* Still usable. */
  g_assert_cmpstr (spark_invocation_get_name (first), ==, "completed");
  g_assert_cmpint (g_variant_get_int32 (spark_invocation_get_parameters (second)), ==, 2);

  g_object_unref (first);
  g_object_unref (second);
  g_assert_null (weak_first);
  g_assert_null (weak_second);

  spark_test_outcome_clear (&completed);
  spark_test_outcome_clear (&aborted);
}

/* Nor does it hold anything of its requester once the request has ended:
 * not the dispatcher, the requester's cancellable or its main context
 * (which a hold would also keep spinning for an outcome that is not
 * coming). */
typedef enum {
  REQUESTER_ASYNC,
  REQUESTER_FULL,
  REQUESTER_SYNC,
} Requester;

typedef struct
{
  SparkDispatcher *dispatcher;
  GCancellable    *cancellable;
  GVariant        *reply;
  GError          *error;
  gint             done;         /* atomic */
} RequesterCall;

static void
requester_async_cb (GObject      *source,
                    GAsyncResult *result,
                    gpointer      user_data)
{
  RequesterCall *call = user_data;

  call->reply = spark_dispatcher_request_finish (SPARK_DISPATCHER (source), result, &call->error);
  g_atomic_int_set (&call->done, TRUE);
}

static void
requester_full_cb (GVariant     *reply,
                   const GError *error,
                   gpointer      user_data)
{
  RequesterCall *call = user_data;

  call->reply = reply ? g_variant_ref (reply) : NULL;
  call->error = error ? g_error_copy (error) : NULL;
  g_atomic_int_set (&call->done, TRUE);
}

static gpointer
requester_sync_thread (gpointer data)
{
  RequesterCall *call = data;

  call->reply = spark_dispatcher_request_sync (call->dispatcher, "kept", NULL, NULL,
                                               call->cancellable, &call->error);
  g_atomic_int_set (&call->done, TRUE);
  return NULL;
}

static gboolean
never_cb (gpointer data)
{
  g_assert_not_reached ();
  return G_SOURCE_REMOVE;
}

static void
set_flag_notify (gpointer data)
{
  g_atomic_int_set ((gint *) data, TRUE);
}

static void
test_holds_no_requester (gconstpointer data)
{
  Requester requester = GPOINTER_TO_INT (data);
  SparkTestInvocationHandler *handler = spark_test_invocation_handler_new ();
  SparkModuleServer *server = spark_module_server_new (SPARK_HANDLER (handler));
  GMainContext *context = g_main_context_new ();
  GSource *witness = g_timeout_source_new_seconds (3600);
  RequesterCall call = { NULL, NULL, NULL, NULL, 0 };
  SparkInvocation *invocation;
  GThread *thread = NULL;
  gpointer weak_dispatcher;
  gpointer weak_cancellable;
  gint context_gone = FALSE;
  GError *error = NULL;

  /* The context's sources are destroyed when it is finalized. */
  g_source_set_callback (witness, never_cb, &context_gone, set_flag_notify);
  g_source_attach (witness, context);
  g_source_unref (witness);

  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  call.dispatcher = spark_module_server_create_dispatcher (server);
  call.cancellable = g_cancellable_new ();
  weak_dispatcher = call.dispatcher;
  weak_cancellable = call.cancellable;
  g_object_add_weak_pointer (G_OBJECT (call.dispatcher), &weak_dispatcher);
  g_object_add_weak_pointer (G_OBJECT (call.cancellable), &weak_cancellable);

  g_main_context_push_thread_default (context);
  if (requester == REQUESTER_ASYNC)
    spark_dispatcher_request_async (call.dispatcher, "kept", NULL, NULL, call.cancellable,
                                    requester_async_cb, &call);
  else if (requester == REQUESTER_FULL)
    spark_dispatcher_request_full (call.dispatcher, "kept", NULL, NULL, call.cancellable,
                                   requester_full_cb, &call, NULL);
  else
    thread = g_thread_new ("requester", requester_sync_thread, &call);

  spark_test_wait_count (g_main_context_default (), &handler->n_received, 1);
  invocation = spark_test_invocation_handler_pop (handler);
  g_assert_nonnull (invocation);
  spark_invocation_return_value (invocation, g_variant_new_int32 (5));

  if (thread != NULL)
    g_thread_join (thread);
  else
    spark_test_wait_flag (context, &call.done);
  g_main_context_pop_thread_default (context);

  g_assert_no_error (call.error);
  g_assert_cmpint (g_variant_get_int32 (call.reply), ==, 5);
  g_clear_pointer (&call.reply, g_variant_unref);

  /* The request has ended; the handler still keeps its invocation. */
  g_object_unref (call.dispatcher);
  g_object_unref (call.cancellable);
  g_main_context_unref (context);
  g_assert_null (weak_dispatcher);
  g_assert_null (weak_cancellable);
  g_assert_true (g_atomic_int_get (&context_gone));

  g_assert_cmpstr (spark_invocation_get_name (invocation), ==, "kept");
  g_object_unref (invocation);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_object_unref (server);
  g_object_unref (handler);
}

/* A floating reply is sunk even when the call is a programmer error (run
 * under valgrind, a leak fails the test). */
static void
test_return_value_bad_input (void)
{
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*SPARK_IS_INVOCATION*");
  spark_invocation_return_value (NULL, g_variant_new_int32 (1));
  g_test_assert_expected_messages ();
}

/* max-invocations ------------------------------------------------------------ */

#define N_CONCURRENT 3

/* A server on the default context whose handler may hold N_CONCURRENT or
 * 2 invocations; teardown drains. */
static const SparkTestServerOptions concurrent = {
  .start = SPARK_TEST_START_ON_DEFAULT,
  .max_invocations = N_CONCURRENT,
};
static const SparkTestServerOptions concurrent_2 = {
  .start = SPARK_TEST_START_ON_DEFAULT,
  .max_invocations = 2,
};

/* Dispatches what is ready, a few times over: a server that should wait
 * has every chance to move on. */
static void
iterate_a_while (void)
{
  for (guint i = 0; i < 10; i++)
    spark_test_iterate_pending (NULL);
}

/* Up to max-invocations requests are held at once; the next is handled
 * when one of them ends; replies may come in any order. */
static void
test_max_invocations_concurrent (Fixture       *fixture,
                                 gconstpointer  data)
{
  SparkTestOutcome outcomes[N_CONCURRENT + 2];
  SparkInvocation *held[N_CONCURRENT + 2];

  memset (outcomes, 0, sizeof outcomes);
  for (gint i = 0; i < N_CONCURRENT + 2; i++)
    spark_dispatcher_request_full (fixture->s.dispatcher, "r", g_variant_new_int32 (i), NULL, NULL,
                                   spark_test_outcome_cb, &outcomes[i], NULL);

  spark_test_wait_count (NULL, &fixture->handler->n_received, N_CONCURRENT);
  iterate_a_while ();
  g_assert_cmpint (g_atomic_int_get (&fixture->handler->n_received), ==, N_CONCURRENT);
  g_assert_cmpuint (spark_module_server_get_pending (fixture->s.server), ==, 2);
  for (gint i = 0; i < N_CONCURRENT; i++)
    {
      held[i] = spark_test_invocation_handler_pop (fixture->handler);
      g_assert_cmpint (g_variant_get_int32 (spark_invocation_get_parameters (held[i])), ==, i);
    }

  /* The middle one ends first: one more is started, and no other. */
  spark_invocation_return_value (held[1], g_variant_new_int32 (11));
  spark_test_wait_flag (NULL, &outcomes[1].done);
  spark_test_wait_count (NULL, &fixture->handler->n_received, N_CONCURRENT + 1);
  iterate_a_while ();
  g_assert_cmpint (g_atomic_int_get (&fixture->handler->n_received), ==, N_CONCURRENT + 1);
  held[N_CONCURRENT] = spark_test_invocation_handler_pop (fixture->handler);

  /* A dropped invocation ends its request too. */
  g_clear_object (&held[0]);
  spark_test_wait_count (NULL, &fixture->handler->n_received, N_CONCURRENT + 2);
  held[N_CONCURRENT + 1] = spark_test_invocation_handler_pop (fixture->handler);

  for (gint i = N_CONCURRENT + 1; i >= 2; i--)
    spark_invocation_return_value (held[i], g_variant_new_int32 (10 + i));
  for (gint i = 0; i < N_CONCURRENT + 2; i++)
    {
      spark_test_wait_flag (NULL, &outcomes[i].done);
      if (i == 0)
        g_assert_error (outcomes[i].error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY);
      else
        {
          g_assert_no_error (outcomes[i].error);
          g_assert_cmpint (g_variant_get_int32 (outcomes[i].reply), ==, 10 + i);
        }
      spark_test_outcome_clear (&outcomes[i]);
    }
  for (gint i = 1; i < N_CONCURRENT + 2; i++)
    g_object_unref (held[i]);
}

/* DRAIN waits for every held invocation and handles what is queued. */
static void
test_max_invocations_drain (Fixture       *fixture,
                            gconstpointer  data)
{
  SparkTestOutcome outcomes[3];
  SparkInvocation *invocation;
  gint stopped = FALSE;

  memset (outcomes, 0, sizeof outcomes);
  for (gint i = 0; i < 3; i++)
    spark_dispatcher_request_full (fixture->s.dispatcher, "r", g_variant_new_int32 (i), NULL, NULL,
                                   spark_test_outcome_cb, &outcomes[i], NULL);
  spark_test_wait_count (NULL, &fixture->handler->n_received, 2);

  spark_module_server_shutdown_async (fixture->s.server, SPARK_SHUTDOWN_MODE_DRAIN, NULL,
                                      spark_test_shutdown_done_cb, &stopped);
  iterate_a_while ();
  g_assert_false (g_atomic_int_get (&stopped));
  g_assert_true (spark_module_server_get_running (fixture->s.server));

  for (gint i = 0; i < 3; i++)
    {
      spark_test_wait_count (NULL, &fixture->handler->n_received, MIN (i + 2, 3));
      invocation = spark_test_invocation_handler_pop (fixture->handler);
      spark_invocation_return_value (invocation, g_variant_new_int32 (i));
      g_object_unref (invocation);
      if (i < 2)
        {
          iterate_a_while ();
          g_assert_false (g_atomic_int_get (&stopped));
        }
    }

  spark_test_wait_flag (NULL, &stopped);
  for (gint i = 0; i < 3; i++)
    {
      spark_test_wait_flag (NULL, &outcomes[i].done);
      g_assert_no_error (outcomes[i].error);
      spark_test_outcome_clear (&outcomes[i]);
    }
}

/* ABORT fails every held invocation's request; later completions are
 * dropped quietly. */
static void
test_max_invocations_abort (Fixture       *fixture,
                            gconstpointer  data)
{
  SparkTestOutcome outcomes[N_CONCURRENT + 1];
  SparkInvocation *held[N_CONCURRENT];

  memset (outcomes, 0, sizeof outcomes);
  for (gint i = 0; i < N_CONCURRENT + 1; i++)
    spark_dispatcher_request_full (fixture->s.dispatcher, "r", g_variant_new_int32 (i), NULL, NULL,
                                   spark_test_outcome_cb, &outcomes[i], NULL);
  spark_test_wait_count (NULL, &fixture->handler->n_received, N_CONCURRENT);
  for (gint i = 0; i < N_CONCURRENT; i++)
    held[i] = spark_test_invocation_handler_pop (fixture->handler);

  spark_test_shutdown (fixture->s.server, SPARK_SHUTDOWN_MODE_ABORT);
  for (gint i = 0; i < N_CONCURRENT + 1; i++)
    {
      spark_test_wait_flag (NULL, &outcomes[i].done);
      g_assert_error (outcomes[i].error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
      spark_test_outcome_clear (&outcomes[i]);
    }
  for (gint i = 0; i < N_CONCURRENT; i++)
    {
      g_assert_true (g_cancellable_is_cancelled (spark_invocation_get_cancellable (held[i])));
      spark_invocation_return_value (held[i], g_variant_new_int32 (i));
      g_object_unref (held[i]);
    }
  g_assert_cmpint (g_atomic_int_get (&fixture->handler->n_received), ==, N_CONCURRENT);
}

/* Like capacity, it is frozen by start. */
static void
test_max_invocations_after_start (Fixture       *fixture,
                                  gconstpointer  data)
{
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*max-invocations*cannot change*");
  spark_module_server_set_max_invocations (fixture->s.server, 4);
  g_test_assert_expected_messages ();
  g_assert_cmpuint (spark_module_server_get_max_invocations (fixture->s.server), ==, 2);
}

/* Progress -------------------------------------------------------------------- */

typedef struct
{
  GArray   *seen;          /* gint32: the progress values, in arrival order */
  gint      after_done;    /* progress that arrived after the callback */
  gint      destroyed;     /* atomic: progress_destroy runs */
  gboolean  destroyed_before_done;
  SparkTestOutcome outcome;
} Progress;

static void
progress_cb (GVariant *value,
             gpointer  user_data)
{
  Progress *p = user_data;
  gint32 n = g_variant_get_int32 (value);

  if (g_atomic_int_get (&p->outcome.done))
    p->after_done++;
  g_array_append_val (p->seen, n);
}

static void
progress_destroy (gpointer user_data)
{
  Progress *p = user_data;

  if (!g_atomic_int_get (&p->outcome.done))
    p->destroyed_before_done = TRUE;
  g_atomic_int_inc (&p->destroyed);
}

static void
progress_init (Progress *p)
{
  memset (p, 0, sizeof *p);
  p->seen = g_array_new (FALSE, FALSE, sizeof (gint32));
}

static void
progress_clear (Progress *p)
{
  g_array_unref (p->seen);
  spark_test_outcome_clear (&p->outcome);
}

static void
send_with_progress (Fixture      *fixture,
                    GCancellable *cancellable,
                    Progress     *p)
{
  spark_dispatcher_request_with_progress_async (fixture->s.dispatcher, "long", NULL, NULL, cancellable,
                                                progress_cb, p, progress_destroy,
                                                on_async_reply, &p->outcome);
}

/* Reports arrive in order, before the reply; progress_destroy runs once,
 * after the callback. */
static void
test_progress_in_order (Fixture       *fixture,
                        gconstpointer  data)
{
  SparkInvocation *invocation;
  Progress p;

  progress_init (&p);
  send_with_progress (fixture, NULL, &p);
  wait_received (fixture, 1);
  invocation = pop (fixture);

  for (gint i = 1; i <= 5; i++)
    spark_invocation_send_progress (invocation, g_variant_new_int32 (i));
  spark_invocation_return_value (invocation, g_variant_new_string ("done"));
  g_object_unref (invocation);

  spark_test_wait_flag (NULL, &p.outcome.done);
  g_assert_no_error (p.outcome.error);
  g_assert_cmpstr (g_variant_get_string (p.outcome.reply, NULL), ==, "done");
  g_assert_cmpuint (p.seen->len, ==, 5);
  for (guint i = 0; i < p.seen->len; i++)
    g_assert_cmpint (g_array_index (p.seen, gint32, i), ==, (gint32) i + 1);
  g_assert_cmpint (g_atomic_int_get (&p.destroyed), ==, 1);
  g_assert_false (p.destroyed_before_done);
  g_assert_cmpint (p.after_done, ==, 0);

  progress_clear (&p);
}

typedef struct
{
  SparkInvocation *invocation;
  gint             sent;       /* atomic */
  gint             stop;       /* atomic */
} Reporter;

static gpointer
reporter_thread (gpointer data)
{
  Reporter *r = data;

  for (gint i = 1; !g_atomic_int_get (&r->stop); i++)
    {
      spark_invocation_send_progress (r->invocation, g_variant_new_int32 (i));
      g_atomic_int_set (&r->sent, i);
      g_main_context_wakeup (g_main_context_default ());
    }
  return NULL;
}

/* A thread reports without pause while the requester cancels: what
 * arrives is in order, nothing after the callback, and the request fails
 * with CANCELLED. */
static void
test_progress_cancel_race (Fixture       *fixture,
                           gconstpointer  data)
{
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  Reporter r = { NULL, 0, 0 };
  GThread *thread;
  Progress p;

  progress_init (&p);
  send_with_progress (fixture, cancellable, &p);
  wait_received (fixture, 1);
  r.invocation = pop (fixture);

  thread = g_thread_new ("reporter", reporter_thread, &r);
  spark_test_wait_count (NULL, &r.sent, 200);
  while (p.seen->len < 10)
    g_main_context_iteration (NULL, TRUE);
  g_cancellable_cancel (cancellable);
  spark_test_wait_flag (NULL, &p.outcome.done);

  /* Whatever the thread still sends now is dropped. */
  spark_test_wait_count (NULL, &r.sent, g_atomic_int_get (&r.sent) + 100);
  g_atomic_int_set (&r.stop, TRUE);
  g_thread_join (thread);
  spark_test_iterate_pending (NULL);

  g_assert_error (p.outcome.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_assert_cmpint (p.after_done, ==, 0);
  g_assert_cmpuint (p.seen->len, >=, 10);
  for (guint i = 0; i < p.seen->len; i++)
    g_assert_cmpint (g_array_index (p.seen, gint32, i), ==, (gint32) i + 1);
  g_assert_cmpint (g_atomic_int_get (&p.destroyed), ==, 1);

  spark_invocation_return_value (r.invocation, g_variant_new_string ("late"));
  g_object_unref (r.invocation);
  progress_clear (&p);
}

/* Without a listener (request_full) reports are dropped quietly; after
 * the invocation's completion they are a programmer error. */
static void
test_progress_dropped (Fixture       *fixture,
                       gconstpointer  data)
{
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkInvocation *invocation;

  spark_dispatcher_request_full (fixture->s.dispatcher, "plain", NULL, NULL, NULL,
                                 spark_test_outcome_cb, &outcome, NULL);
  wait_received (fixture, 1);
  invocation = pop (fixture);
  spark_invocation_send_progress (invocation, g_variant_new_int32 (1));
  spark_invocation_return_value (invocation, g_variant_new_int32 (2));

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*Progress*after its invocation was completed*");
  spark_invocation_send_progress (invocation, g_variant_new_int32 (3));
  g_test_assert_expected_messages ();
  g_object_unref (invocation);

  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_cmpint (g_variant_get_int32 (outcome.reply), ==, 2);
  spark_test_outcome_clear (&outcome);
}

int
main (int argc, char *argv[])
{
  g_test_init (&argc, &argv, NULL);

#define ADD_WITH(path, options, func) \
  g_test_add ("/spark/invocation/" path, Fixture, options, fixture_setup, func, fixture_teardown)
#define ADD(path, func) ADD_WITH (path, &on_default, func)

  ADD ("reply-later/idle", test_reply_later_idle);
  ADD ("reply-later/thread", test_reply_later_thread);
  ADD ("accessors", test_accessors);
  ADD ("ordering", test_ordering);
  ADD ("complete/twice", test_complete_twice);
  ADD ("complete/after-cancel", test_complete_after_cancel);
  ADD ("complete/after-timeout", test_complete_after_timeout);
  ADD ("dropped", test_dropped);
  ADD ("error/return-error-literal", test_return_error_literal);
  ADD ("error/return-gerror", test_return_gerror);
  ADD ("error/take-error", test_take_error);
  ADD ("type-mismatch", test_type_mismatch);
  ADD ("cancellable/requester", test_cancellable_requester);
  ADD ("cancellable/timeout", test_cancellable_timeout);
  ADD ("cancellable/abort", test_cancellable_abort);
  ADD ("cancellable/abort-own-cancellable", test_cancellable_abort_own);
  ADD ("progress/in-order", test_progress_in_order);
  ADD ("progress/cancel-race", test_progress_cancel_race);
  ADD ("progress/dropped", test_progress_dropped);

  g_test_add_func ("/spark/invocation/holds-nothing", test_holds_nothing);
  g_test_add_data_func ("/spark/invocation/holds-no-requester/async",
                        GINT_TO_POINTER (REQUESTER_ASYNC), test_holds_no_requester);
  g_test_add_data_func ("/spark/invocation/holds-no-requester/full",
                        GINT_TO_POINTER (REQUESTER_FULL), test_holds_no_requester);
  g_test_add_data_func ("/spark/invocation/holds-no-requester/sync",
                        GINT_TO_POINTER (REQUESTER_SYNC), test_holds_no_requester);
  g_test_add_func ("/spark/invocation/bad-input/floating-reply", test_return_value_bad_input);
  ADD_WITH ("max-invocations/concurrent", &concurrent, test_max_invocations_concurrent);
  ADD_WITH ("max-invocations/drain", &concurrent_2, test_max_invocations_drain);
  ADD_WITH ("max-invocations/abort", &concurrent, test_max_invocations_abort);
  ADD_WITH ("max-invocations/after-start", &concurrent_2, test_max_invocations_after_start);

#undef ADD
#undef ADD_WITH

  return g_test_run ();
}
