/* test-dispatcher.c: SparkDispatcher
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <string.h>

#include "spark-test-util.h"

#define TEST_ERROR      (test_error_quark ())
#define TEST_ERROR_CODE 42
#define TEST_ERROR_TEXT "custom failure “x”"

#define N_THREADS       8
#define N_PER_THREAD    500
#define N_FULL_PER_THREAD 50

static GQuark
test_error_quark (void)
{
  return g_quark_from_static_string ("test-dispatcher-error-quark");
}

/* A scripted module ---------------------------------------------------------
 *
 * A func handler whose messages do what their name says:
 *
 *   requests  "echo"          replies its parameters, or the string "echo"
 *                             (and sets params_null) when there are none
 *             "fail"          fails with TEST_ERROR / TEST_ERROR_CODE
 *             "null"          returns NULL without an error
 *             "int"           replies a floating int32 7
 *             "block"         waits for the gate or its cancellable; replies
 *                             "cancelled" or "released"
 *             "block-ignore"  waits for the gate only; replies "finished"
 *             "request-self"  request_sync on its own server
 *             "try-self"      try_send_command "log" 100 on its own server
 *             "send-self"     fills its own bounded mailbox, then
 *                             send_command on it
 *             "cancel-and-reply" cancels @cancel_me, then replies "replied"
 *   commands  "log"           succeeds
 *             "fail"          fails with G_IO_ERROR_FAILED "boom"
 *             "false"         returns FALSE without an error
 *             "block"         waits for the gate only
 *             "seq"           (ii): checks that sender N's numbers come in order
 *             "check-cancel"  records whether its cancellable is cancelled
 *
 * Every message is logged as "name" or "name:N" (int32 parameters), and
 * every call wakes @waiter.
 */

typedef struct
{
  SparkTestGate gate;
  SparkTestLog  log;

  GMainContext *waiter;          /* NULL: the global default */

  gint          n_requests;      /* atomic: requests handled */
  gint          n_commands;      /* atomic: commands handled */
  gint          entered;         /* atomic: blocking handlers entered */
  gint          finished;        /* atomic: blocking handlers returned */
  gint          saw_cancelled;   /* atomic: the last blocking handler's cancellable was cancelled */
  gint          params_null;     /* atomic: an "echo" had NULL parameters */
  gint          cmd_cancelled;   /* atomic: a "check-cancel" command's cancellable was cancelled */
  GCancellable *cancel_me;       /* a reference, or NULL: what "cancel-and-reply" cancels */

  /* for the handlers that send to their own server */
  SparkDispatcher *self_dispatcher;   /* a reference, or NULL */
  GError          *self_error;
  gboolean         self_ret;

  /* "seq": only handler calls touch these */
  gint          last_seq[N_THREADS];
  gint          seq_errors;      /* atomic */
} Module;

static void
module_wake (Module *m)
{
  g_main_context_wakeup (m->waiter);
}

/* Counts a blocking handler in, wakes the test, then waits for the gate, or
 * for @cancellable if not NULL. Returns TRUE if the cancellable ended the
 * wait. */
static gboolean
module_wait_gate (Module       *m,
                  GCancellable *cancellable)
{
  g_atomic_int_inc (&m->entered);
  module_wake (m);

  return spark_test_gate_wait (&m->gate, cancellable);
}

static GVariant *
module_request (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  Module *m = user_data;
  GVariant *reply = NULL;

  spark_test_log_append (&m->log, name, parameters);

  if (g_str_equal (name, "echo"))
    {
      if (parameters == NULL)
        {
          g_atomic_int_set (&m->params_null, TRUE);
          reply = g_variant_new_string ("echo");
        }
      else
        reply = g_variant_ref (parameters);
    }
  else if (g_str_equal (name, "fail"))
    g_set_error_literal (error, TEST_ERROR, TEST_ERROR_CODE, TEST_ERROR_TEXT);
  else if (g_str_equal (name, "null"))
    reply = NULL;
  else if (g_str_equal (name, "int"))
    reply = g_variant_new_int32 (7);
  else if (g_str_equal (name, "block"))
    {
      gboolean cancelled = module_wait_gate (m, cancellable);

      g_atomic_int_set (&m->saw_cancelled, cancelled);
      reply = g_variant_new_string (cancelled ? "cancelled" : "released");
      g_atomic_int_inc (&m->finished);
    }
  else if (g_str_equal (name, "block-ignore"))
    {
      module_wait_gate (m, NULL);
      g_atomic_int_set (&m->saw_cancelled, cancellable != NULL && g_cancellable_is_cancelled (cancellable));
      reply = g_variant_new_string ("finished");
      g_atomic_int_inc (&m->finished);
    }
  else if (g_str_equal (name, "request-self"))
    {
      GVariant *inner;

      inner = spark_dispatcher_request_sync (m->self_dispatcher, "echo", NULL, NULL, NULL, &m->self_error);
      m->self_ret = inner != NULL;
      g_clear_pointer (&inner, g_variant_unref);
      reply = g_variant_new_string ("done");
    }
  else if (g_str_equal (name, "try-self"))
    {
      m->self_ret = spark_dispatcher_try_send_command (m->self_dispatcher, "log",
                                                       g_variant_new_int32 (100), &m->self_error);
      reply = g_variant_new_string ("done");
    }
  else if (g_str_equal (name, "send-self"))
    {
      GError *local_error = NULL;

      /* Fill the mailbox: every try succeeds until it is full. */
      while (spark_dispatcher_try_send_command (m->self_dispatcher, "log", g_variant_new_int32 (200), &local_error))
        ;
      g_assert_error (local_error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
      g_clear_error (&local_error);

      m->self_ret = spark_dispatcher_send_command (m->self_dispatcher, "log",
                                                   g_variant_new_int32 (300), NULL, &m->self_error);
      reply = g_variant_new_string ("done");
    }
  else if (g_str_equal (name, "cancel-and-reply"))
    {
      g_cancellable_cancel (m->cancel_me);
      reply = g_variant_new_string ("replied");
    }
  else
    g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                 "Unknown test request “%s”", name);

  g_atomic_int_inc (&m->n_requests);
  module_wake (m);

  return reply;
}

static gboolean
module_command (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  Module *m = user_data;
  gboolean ret = TRUE;

  if (!g_str_equal (name, "seq"))
    spark_test_log_append (&m->log, name, parameters);

  if (g_str_equal (name, "fail"))
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_FAILED, "boom");
      ret = FALSE;
    }
  else if (g_str_equal (name, "false"))
    ret = FALSE;
  else if (g_str_equal (name, "check-cancel"))
    g_atomic_int_set (&m->cmd_cancelled, cancellable != NULL && g_cancellable_is_cancelled (cancellable));
  else if (g_str_equal (name, "block"))
    module_wait_gate (m, NULL);
  else if (g_str_equal (name, "seq"))
    {
      gint32 sender, seq;

      g_variant_get (parameters, "(ii)", &sender, &seq);
      if (sender < 0 || sender >= N_THREADS || m->last_seq[sender] + 1 != seq)
        g_atomic_int_inc (&m->seq_errors);
      else
        m->last_seq[sender] = seq;
    }

  g_atomic_int_inc (&m->n_commands);
  module_wake (m);

  return ret;
}

static Module *
module_new (void)
{
  Module *m = g_new0 (Module, 1);
  guint i;

  spark_test_gate_init (&m->gate);
  spark_test_log_init (&m->log);
  for (i = 0; i < N_THREADS; i++)
    m->last_seq[i] = -1;

  return m;
}

static void
module_free (Module *m)
{
  spark_test_log_clear (&m->log);
  g_clear_object (&m->self_dispatcher);
  g_clear_object (&m->cancel_me);
  g_clear_error (&m->self_error);
  spark_test_gate_clear (&m->gate);
  g_free (m);
}

/* A server for @m, not started, with @capacity (0: unbounded). */
static SparkModuleServer *
module_server_new (Module *m,
                   guint   capacity)
{
  g_autoptr(SparkHandler) handler = spark_func_handler_new (module_request, module_command, m, NULL);
  SparkModuleServer *server = spark_module_server_new (handler);

  spark_module_server_set_name (server, "test-dispatcher");
  if (capacity > 0)
    spark_module_server_set_capacity (server, capacity);

  return server;
}

/* A server for @m started on a thread of its own. */
static SparkModuleServer *
module_server_new_in_thread (Module *m,
                             guint   capacity)
{
  SparkModuleServer *server = module_server_new (m, capacity);
  g_autoptr(GError) error = NULL;

  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);

  return server;
}

/* The fixture: a server for a Module's handler (or, with name_setup and
 * holding_setup below, for another handler), started as the test's
 * options say. */
typedef struct
{
  SparkTestServer s;
  Module         *m;   /* NULL but with fixture_setup */
} Fixture;

static const SparkTestServerOptions in_thread = { .name = "test-dispatcher" };
static const SparkTestServerOptions on_default = {
  .start = SPARK_TEST_START_ON_DEFAULT,
  .name = "test-dispatcher",
};
static const SparkTestServerOptions not_started = {
  .start = SPARK_TEST_START_NONE,
  .name = "test-dispatcher",
};
static const SparkTestServerOptions bounded_1 = { .capacity = 1, .name = "test-dispatcher" };
static const SparkTestServerOptions bounded_2 = { .capacity = 2, .name = "test-dispatcher" };
static const SparkTestServerOptions bounded_1_on_default = {
  .start = SPARK_TEST_START_ON_DEFAULT,
  .capacity = 1,
  .name = "test-dispatcher",
};
/* For name_setup and holding_setup: unnamed, on its own thread. */
static const SparkTestServerOptions plain = { .start = SPARK_TEST_START_IN_THREAD };
static const SparkTestServerOptions plain_abort = {
  .start = SPARK_TEST_START_IN_THREAD,
  .shutdown = SPARK_SHUTDOWN_MODE_ABORT,
};

typedef void (*FixtureFunc) (Fixture       *f,
                             gconstpointer  options);

static void
fixture_setup (Fixture       *f,
               gconstpointer  options)
{
  f->m = module_new ();
  spark_test_server_setup (&f->s, spark_func_handler_new (module_request, module_command, f->m, NULL), options);
}

static void
fixture_teardown (Fixture       *f,
                  gconstpointer  options)
{
  spark_test_server_teardown (&f->s);
  g_clear_pointer (&f->m, module_free);
}

/* Outcomes ------------------------------------------------------------------ */

typedef enum {
  VIA_ASYNC,
  VIA_FULL,
  VIA_SYNC,
} Via;

typedef struct
{
  gint          done;            /* atomic: completions seen */
  gint          destroyed;       /* atomic: destroy notifications seen */
  gint          returned;        /* atomic: set by the test right after the call */
  gboolean      returned_first;  /* returned was set when the completion ran */
  gboolean      destroy_first;   /* destroy ran before the completion */
  GMainContext *context;         /* a reference: the context dispatching the completion, if any */
  GVariant     *reply;
  GError       *error;
} Outcome;

static void
outcome_record (Outcome      *o,
                GVariant     *reply,
                const GError *error)
{
  GSource *source;

  g_assert_cmpint (g_atomic_int_get (&o->done), ==, 0);
  g_assert_true ((reply == NULL) != (error == NULL));

  o->returned_first = g_atomic_int_get (&o->returned);
  source = g_main_current_source ();
  o->context = source ? g_main_context_ref (g_source_get_context (source)) : NULL;
  o->reply = reply ? g_variant_ref (reply) : NULL;
  o->error = error ? g_error_copy (error) : NULL;
  g_atomic_int_inc (&o->done);
}

static void
outcome_async_cb (GObject      *source,
                  GAsyncResult *result,
                  gpointer      user_data)
{
  Outcome *o = user_data;
  GError *error = NULL;
  GVariant *reply;

  g_assert_true (SPARK_IS_DISPATCHER (source));
  reply = spark_dispatcher_request_finish (SPARK_DISPATCHER (source), result, &error);
  outcome_record (o, reply, error);
  g_clear_pointer (&reply, g_variant_unref);
  g_clear_error (&error);
}

static void
outcome_full_cb (GVariant     *reply,
                 const GError *error,
                 gpointer      user_data)
{
  Outcome *o = user_data;

  if (g_atomic_int_get (&o->destroyed) > 0)
    o->destroy_first = TRUE;
  outcome_record (o, reply, error);
}

static void
outcome_destroy (gpointer user_data)
{
  Outcome *o = user_data;

  g_atomic_int_inc (&o->destroyed);
}

static void
outcome_command_cb (GObject      *source,
                    GAsyncResult *result,
                    gpointer      user_data)
{
  Outcome *o = user_data;
  GError *error = NULL;
  GVariant *reply;
  gboolean ret;

  g_assert_true (SPARK_IS_DISPATCHER (source));
  ret = spark_dispatcher_send_command_finish (SPARK_DISPATCHER (source), result, &error);
  g_assert_true (ret == (error == NULL));
  reply = ret ? g_variant_ref_sink (g_variant_new_boolean (TRUE)) : NULL;
  outcome_record (o, reply, error);
  g_clear_pointer (&reply, g_variant_unref);
  g_clear_error (&error);
}

static void
outcome_clear (Outcome *o)
{
  g_clear_pointer (&o->context, g_main_context_unref);
  g_clear_pointer (&o->reply, g_variant_unref);
  g_clear_error (&o->error);
  memset (o, 0, sizeof *o);
}

/* Sends a request by @via; the outcome lands in @o (at once for VIA_SYNC). */
static void
request_via (SparkDispatcher    *dispatcher,
             Via                 via,
             const char         *name,
             GVariant           *parameters,
             const GVariantType *reply_type,
             GCancellable       *cancellable,
             Outcome            *o)
{
  GError *error = NULL;
  GVariant *reply;

  switch (via)
    {
    case VIA_ASYNC:
      spark_dispatcher_request_async (dispatcher, name, parameters, reply_type, cancellable,
                                      outcome_async_cb, o);
      g_atomic_int_set (&o->returned, TRUE);
      break;

    case VIA_FULL:
      spark_dispatcher_request_full (dispatcher, name, parameters, reply_type, cancellable,
                                     outcome_full_cb, o, outcome_destroy);
      g_atomic_int_set (&o->returned, TRUE);
      break;

    case VIA_SYNC:
      reply = spark_dispatcher_request_sync (dispatcher, name, parameters, reply_type, cancellable, &error);
      g_atomic_int_set (&o->returned, TRUE);
      outcome_record (o, reply, error);
      g_atomic_int_inc (&o->destroyed);
      g_clear_pointer (&reply, g_variant_unref);
      g_clear_error (&error);
      break;

    default:
      g_assert_not_reached ();
    }
}

/* Waits (iterating the thread-default context) for @o to complete, and
 * checks what every completion must do. */
static void
outcome_wait (Outcome *o,
              Via      via)
{
  spark_test_wait_flag (NULL, &o->done);
  if (via == VIA_FULL)
    spark_test_wait_flag (NULL, &o->destroyed);

  g_assert_cmpint (g_atomic_int_get (&o->done), ==, 1);
  g_assert_true (o->returned_first);
  g_assert_false (o->destroy_first);
  if (via == VIA_FULL)
    g_assert_cmpint (g_atomic_int_get (&o->destroyed), ==, 1);
  if (via != VIA_SYNC)
    g_assert_true (o->context == g_main_context_get_thread_default () ||
                   (g_main_context_get_thread_default () == NULL && o->context == g_main_context_default ()));
}

static void
assert_outcome_int32 (Outcome *o,
                      gint32   expected)
{
  g_assert_cmpint (g_atomic_int_get (&o->done), ==, 1);
  g_assert_no_error (o->error);
  g_assert_nonnull (o->reply);
  g_assert_cmpstr (g_variant_get_type_string (o->reply), ==, "i");
  g_assert_cmpint (g_variant_get_int32 (o->reply), ==, expected);
}

static void
assert_outcome_string (Outcome    *o,
                       const char *expected)
{
  g_assert_cmpint (g_atomic_int_get (&o->done), ==, 1);
  g_assert_no_error (o->error);
  g_assert_nonnull (o->reply);
  g_assert_cmpstr (g_variant_get_type_string (o->reply), ==, "s");
  g_assert_cmpstr (g_variant_get_string (o->reply, NULL), ==, expected);
}

static void
assert_outcome_error (Outcome *o,
                      GQuark   domain,
                      gint     code)
{
  g_assert_cmpint (g_atomic_int_get (&o->done), ==, 1);
  g_assert_error (o->error, domain, code);
  g_assert_null (o->reply);
}

static const char *via_names[] = { "async", "full", "sync" };

/* Adds @func under "/spark/dispatcher/@path/{async,full,sync}" with a
 * fixture set up by @setup with @options; only async and full when
 * @async_only. The via is the options' data. */
static void
add_via_tests (const char                   *path,
               const SparkTestServerOptions *options,
               FixtureFunc                   setup,
               FixtureFunc                   func,
               gboolean                      async_only)
{
  guint via;

  for (via = VIA_ASYNC; via <= VIA_SYNC; via++)
    {
      g_autofree char *full_path = NULL;

      if (async_only && via == VIA_SYNC)
        continue;
      full_path = g_strdup_printf ("/spark/dispatcher/%s/%s", path, via_names[via]);
      g_test_add (full_path, Fixture, spark_test_server_options (options, GUINT_TO_POINTER (via)),
                  setup, func, fixture_teardown);
    }
}

/* Requests: replies, errors, types ----------------------------------------- */

static void
test_request_reply (Fixture       *f,
                    gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  Outcome o = { 0 };

  request_via (f->s.dispatcher, via, "echo", g_variant_new_int32 (5), G_VARIANT_TYPE_INT32, NULL, &o);
  outcome_wait (&o, via);
  assert_outcome_int32 (&o, 5);
  outcome_clear (&o);

  /* A floating reply from the handler is sunk, and no reply_type checks nothing. */
  request_via (f->s.dispatcher, via, "int", NULL, NULL, NULL, &o);
  outcome_wait (&o, via);
  assert_outcome_int32 (&o, 7);
  outcome_clear (&o);
}

static GVariant *
name_request (const char    *name,
              GVariant      *parameters,
              GCancellable  *cancellable,
              gpointer       user_data,
              GError       **error)
{
  return g_variant_new_string (name);
}

static void
name_setup (Fixture       *f,
            gconstpointer  options)
{
  spark_test_server_setup (&f->s, spark_func_handler_new (name_request, NULL, NULL, NULL), options);
}

/* A name and reply type too long for a pooled request block take the
 * plain allocation, and arrive whole. */
static void
test_request_long_name (Fixture       *f,
                        gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  g_autofree char *name = g_strnfill (300, 'n');
  GString *tuple = g_string_new ("(");
  g_autofree char *long_type = NULL;
  Outcome o = { 0 };

  for (guint i = 0; i < 150; i++)
    g_string_append_c (tuple, 'i');
  g_string_append_c (tuple, ')');
  long_type = g_string_free (tuple, FALSE);

  request_via (f->s.dispatcher, via, name, NULL, G_VARIANT_TYPE_STRING, NULL, &o);
  outcome_wait (&o, via);
  assert_outcome_string (&o, name);
  outcome_clear (&o);

  /* The long reply type is kept whole: the mismatch names all of it. */
  request_via (f->s.dispatcher, via, name, NULL, G_VARIANT_TYPE (long_type), NULL, &o);
  outcome_wait (&o, via);
  assert_outcome_error (&o, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH);
  g_assert_nonnull (strstr (o.error->message, long_type));
  outcome_clear (&o);
}

/* The completion runs on the caller's thread-default context at the time of
 * the call, never inside the call: a server on its own thread. */
static void
test_request_context (Fixture       *f,
                      gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  GMainContext *context = g_main_context_new ();
  Outcome o = { 0 };

  g_main_context_push_thread_default (context);
  request_via (f->s.dispatcher, via, "echo", g_variant_new_int32 (1), NULL, NULL, &o);
  g_main_context_pop_thread_default (context);

  /* Iterating the global default context does not deliver it ... */
  spark_test_iterate_pending (NULL);

  /* ... iterating the context of the call does. */
  spark_test_wait_flag (context, &o.done);
  if (via == VIA_FULL)
    spark_test_wait_flag (context, &o.destroyed);
  g_assert_true (o.context == context);
  g_assert_true (o.returned_first);
  g_assert_false (o.destroy_first);
  assert_outcome_int32 (&o, 1);
  outcome_clear (&o);

  /* With the context pushed for the whole time too. */
  g_main_context_push_thread_default (context);
  request_via (f->s.dispatcher, via, "echo", g_variant_new_int32 (2), NULL, NULL, &o);
  outcome_wait (&o, via);
  g_assert_true (o.context == context);
  assert_outcome_int32 (&o, 2);
  outcome_clear (&o);

  /* An immediate failure (CLOSED) too. */
  {
    g_autoptr(SparkModuleServer) idle = module_server_new (f->m, 0);
    g_autoptr(SparkDispatcher) closed = spark_module_server_create_dispatcher (idle);

    request_via (closed, via, "echo", g_variant_new_int32 (3), NULL, NULL, &o);
    outcome_wait (&o, via);
    g_assert_true (o.context == context);
    assert_outcome_error (&o, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
    outcome_clear (&o);
  }
  g_main_context_pop_thread_default (context);

  g_main_context_unref (context);
}

/* The server serves the caller's own context: still never inside the call. */
static void
test_request_same_context (Fixture       *f,
                           gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  Outcome o = { 0 };

  request_via (f->s.dispatcher, via, "echo", g_variant_new_int32 (3), NULL, NULL, &o);
  g_assert_cmpint (g_atomic_int_get (&o.done), ==, 0);
  outcome_wait (&o, via);
  assert_outcome_int32 (&o, 3);
  outcome_clear (&o);
}

static void
test_request_handler_error (Fixture       *f,
                            gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  Outcome o = { 0 };

  request_via (f->s.dispatcher, via, "fail", NULL, G_VARIANT_TYPE_STRING, NULL, &o);
  outcome_wait (&o, via);
  assert_outcome_error (&o, TEST_ERROR, TEST_ERROR_CODE);
  g_assert_cmpstr (o.error->message, ==, TEST_ERROR_TEXT);
  outcome_clear (&o);
}

static void
test_request_no_reply (Fixture       *f,
                       gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  Outcome o = { 0 };

  request_via (f->s.dispatcher, via, "null", NULL, NULL, NULL, &o);
  outcome_wait (&o, via);
  assert_outcome_error (&o, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY);
  outcome_clear (&o);
}

static void
test_request_type_mismatch (Fixture       *f,
                            gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  Outcome o = { 0 };

  request_via (f->s.dispatcher, via, "int", NULL, G_VARIANT_TYPE_STRING, NULL, &o);
  outcome_wait (&o, via);
  assert_outcome_error (&o, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH);
  g_assert_nonnull (strstr (o.error->message, "“i”"));
  g_assert_nonnull (strstr (o.error->message, "“s”"));
  outcome_clear (&o);

  /* A matching type, and a definite type matching an indefinite one. */
  request_via (f->s.dispatcher, via, "int", NULL, G_VARIANT_TYPE_INT32, NULL, &o);
  outcome_wait (&o, via);
  assert_outcome_int32 (&o, 7);
  outcome_clear (&o);

  request_via (f->s.dispatcher, via, "echo", g_variant_new ("(si)", "a", 1), G_VARIANT_TYPE ("(s*)"), NULL, &o);
  outcome_wait (&o, via);
  g_assert_no_error (o.error);
  g_assert_cmpstr (g_variant_get_type_string (o.reply), ==, "(si)");
  outcome_clear (&o);
}

static void
test_request_null_parameters (Fixture       *f,
                              gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  Outcome o = { 0 };

  request_via (f->s.dispatcher, via, "echo", NULL, NULL, NULL, &o);
  outcome_wait (&o, via);
  assert_outcome_string (&o, "echo");
  g_assert_true (g_atomic_int_get (&f->m->params_null));
  outcome_clear (&o);
}

/* Closed ----------------------------------------------------------------------- */

/* Every kind of send on @dispatcher fails with CLOSED, sinking its floating
 * parameters. */
static void
assert_all_closed (SparkDispatcher *dispatcher)
{
  g_autoptr(GError) error = NULL;
  Outcome o = { 0 };
  GVariant *parameters;
  guint via;

  for (via = VIA_ASYNC; via <= VIA_SYNC; via++)
    {
      /* A floating variant with a second reference of the test's: the call
       * must sink it (and drop the sunk reference). */
      parameters = g_variant_ref (g_variant_new_int32 (1));
      request_via (dispatcher, via, "echo", parameters, NULL, NULL, &o);
      g_assert_false (g_variant_is_floating (parameters));
      g_variant_unref (parameters);
      outcome_wait (&o, via);
      assert_outcome_error (&o, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
      outcome_clear (&o);
    }

  parameters = g_variant_ref (g_variant_new_int32 (2));
  g_assert_false (spark_dispatcher_send_command (dispatcher, "log", parameters, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_assert_false (g_variant_is_floating (parameters));
  g_variant_unref (parameters);
  g_clear_error (&error);

  parameters = g_variant_ref (g_variant_new_int32 (3));
  g_assert_false (spark_dispatcher_try_send_command (dispatcher, "log", parameters, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_assert_false (g_variant_is_floating (parameters));
  g_variant_unref (parameters);
  g_clear_error (&error);

  parameters = g_variant_ref (g_variant_new_int32 (4));
  spark_dispatcher_send_command_async (dispatcher, "log", parameters, NULL, outcome_command_cb, &o);
  g_atomic_int_set (&o.returned, TRUE);
  g_assert_false (g_variant_is_floating (parameters));
  g_variant_unref (parameters);
  outcome_wait (&o, VIA_ASYNC);
  assert_outcome_error (&o, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  outcome_clear (&o);

  g_assert_false (spark_dispatcher_send_shutdown (dispatcher, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
}

static void
test_closed_never_started (Fixture       *f,
                           gconstpointer  data)
{
  assert_all_closed (f->s.dispatcher);
  g_assert_cmpint (g_atomic_int_get (&f->m->n_requests), ==, 0);
  g_assert_cmpint (g_atomic_int_get (&f->m->n_commands), ==, 0);
}

static void
test_closed_after_shutdown (Fixture       *f,
                            gconstpointer  data)
{
  g_autoptr(SparkDispatcher) later = NULL;

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);

  assert_all_closed (f->s.dispatcher);
  /* A dispatcher made after the shutdown too. */
  later = spark_module_server_create_dispatcher (f->s.server);
  assert_all_closed (later);
  g_assert_cmpint (g_atomic_int_get (&f->m->n_requests), ==, 0);
  g_assert_cmpint (g_atomic_int_get (&f->m->n_commands), ==, 0);
}

static void
test_closed_after_send_shutdown (Fixture       *f,
                                 gconstpointer  data)
{
  g_autoptr(SparkDispatcher) other = spark_module_server_create_dispatcher (f->s.server);
  g_autoptr(GError) error = NULL;

  g_assert_true (spark_dispatcher_send_shutdown (f->s.dispatcher, NULL, &error));
  g_assert_no_error (error);

  /* The second fails, from this dispatcher and from another one; so does
   * everything else (assert_all_closed sends a shutdown too). */
  g_assert_false (spark_dispatcher_send_shutdown (f->s.dispatcher, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
  assert_all_closed (other);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpint (g_atomic_int_get (&f->m->n_requests), ==, 0);
  g_assert_cmpint (g_atomic_int_get (&f->m->n_commands), ==, 0);
}

/* Commands -------------------------------------------------------------------- */

static void
test_command_send (Fixture       *f,
                   gconstpointer  data)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *log = NULL;

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "log", g_variant_new_int32 (1), NULL, &error));
  g_assert_no_error (error);
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "log", NULL, NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &f->m->n_commands, 2);

  log = spark_test_log_dup (&f->m->log);
  g_assert_cmpstr (log, ==, "log:1 log");
}

static void
test_command_try_send (Fixture       *f,
                       gconstpointer  data)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *log = NULL;

  g_assert_true (spark_dispatcher_try_send_command (f->s.dispatcher, "log", g_variant_new_int32 (1), &error));
  g_assert_no_error (error);
  g_assert_true (spark_dispatcher_try_send_command (f->s.dispatcher, "log", g_variant_new_int32 (2), &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &f->m->n_commands, 2);

  log = spark_test_log_dup (&f->m->log);
  g_assert_cmpstr (log, ==, "log:1 log:2");
}

static void
test_command_async (Fixture       *f,
                    gconstpointer  data)
{
  g_autofree char *log = NULL;
  Outcome o = { 0 };

  spark_dispatcher_send_command_async (f->s.dispatcher, "log", g_variant_new_int32 (1), NULL, outcome_command_cb, &o);
  g_atomic_int_set (&o.returned, TRUE);
  outcome_wait (&o, VIA_ASYNC);
  g_assert_no_error (o.error);
  outcome_clear (&o);

  spark_test_wait_count (NULL, &f->m->n_commands, 1);
  log = spark_test_log_dup (&f->m->log);
  g_assert_cmpstr (log, ==, "log:1");
}

/* Requests and commands from one sender are handled in mailbox order. */
static void
test_command_order (Fixture       *f,
                    gconstpointer  data)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *log = NULL;
  Outcome o1 = { 0 }, o3 = { 0 }, o5 = { 0 }, o6 = { 0 };
  guint round;

  for (round = 0; round < 20; round++)
    {
      spark_test_log_reset (&f->m->log);

      g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "log", g_variant_new_int32 (0), NULL, &error));
      g_assert_no_error (error);
      request_via (f->s.dispatcher, VIA_ASYNC, "echo", g_variant_new_int32 (1), NULL, NULL, &o1);
      g_assert_true (spark_dispatcher_try_send_command (f->s.dispatcher, "log", g_variant_new_int32 (2), &error));
      g_assert_no_error (error);
      request_via (f->s.dispatcher, VIA_SYNC, "echo", g_variant_new_int32 (3), NULL, NULL, &o3);
      g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "log", g_variant_new_int32 (4), NULL, &error));
      g_assert_no_error (error);
      spark_dispatcher_send_command_async (f->s.dispatcher, "log", g_variant_new_int32 (5), NULL,
                                           outcome_command_cb, &o5);
      g_atomic_int_set (&o5.returned, TRUE);
      request_via (f->s.dispatcher, VIA_FULL, "echo", g_variant_new_int32 (6), NULL, NULL, &o6);

      outcome_wait (&o1, VIA_ASYNC);
      outcome_wait (&o3, VIA_SYNC);
      outcome_wait (&o5, VIA_ASYNC);
      outcome_wait (&o6, VIA_FULL);
      assert_outcome_int32 (&o1, 1);
      assert_outcome_int32 (&o3, 3);
      g_assert_no_error (o5.error);
      assert_outcome_int32 (&o6, 6);
      outcome_clear (&o1);
      outcome_clear (&o3);
      outcome_clear (&o5);
      outcome_clear (&o6);

      spark_test_wait_count (NULL, &f->m->n_commands, 4 * (round + 1));
      g_clear_pointer (&log, g_free);
      log = spark_test_log_dup (&f->m->log);
      g_assert_cmpstr (log, ==, "log:0 echo:1 log:2 echo:3 log:4 log:5 echo:6");
    }
}

/* Command blocks come in sizes by name length and are reused once the
 * server is done with them: names on either side of each size's limit (6
 * and 22 bytes), sent again and again, arrive whole, with their own
 * parameters, in order. */
typedef struct
{
  SparkTestLog log;
  gint         n;        /* atomic */
} NameLog;

static gboolean
name_log_command (const char    *name,
                  GVariant      *parameters,
                  GCancellable  *cancellable,
                  gpointer       user_data,
                  GError       **error)
{
  NameLog *names = user_data;

  spark_test_log_append (&names->log, name, parameters);
  g_atomic_int_inc (&names->n);
  g_main_context_wakeup (NULL);
  return TRUE;
}

static void
test_command_reused_blocks (void)
{
  NameLog names = { 0 };
  g_autoptr(SparkHandler) handler = NULL;
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GString) expected = g_string_new (NULL);
  g_autoptr(GError) error = NULL;
  g_autofree char *log = NULL;
  const guint max_len = 30;
  const guint rounds = 40;
  gint sent = 0;

  spark_test_log_init (&names.log);
  handler = spark_func_handler_new (NULL, name_log_command, &names, NULL);
  server = spark_module_server_new (handler);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  dispatcher = spark_module_server_create_dispatcher (server);

  for (guint round = 0; round < rounds; round++)
    {
      for (guint len = 1; len <= max_len; len++)
        {
          g_autofree char *name = g_strnfill (len, (char) ('a' + (round + len) % 26));

          g_assert_true (spark_dispatcher_send_command (dispatcher, name, g_variant_new_int32 (sent), NULL, &error));
          g_assert_no_error (error);
          g_string_append_printf (expected, "%s%s:%d", expected->len > 0 ? " " : "", name, sent);
          sent++;
        }

      /* Every other round, let the server catch up, so that later rounds
       * get the blocks it handed back. */
      if (round % 2 == 1)
        spark_test_wait_count (NULL, &names.n, sent);
    }

  spark_test_wait_count (NULL, &names.n, sent);
  log = spark_test_log_dup (&names.log);
  g_assert_cmpstr (log, ==, expected->str);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  spark_test_log_clear (&names.log);
}

/* A failing command does not reach its sender: it goes to command-failed. */
static void
test_command_failure_signal (Fixture       *f,
                             gconstpointer  data)
{
  g_autoptr(GError) error = NULL;
  SparkTestFailure failure = { 0 };
  Outcome o = { 0 };

  g_signal_connect (f->s.server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failure);

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "fail", NULL, NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &failure.n, 1);
  g_assert_cmpstr (failure.name, ==, "fail");
  g_assert_error (failure.error, G_IO_ERROR, G_IO_ERROR_FAILED);
  g_assert_cmpstr (failure.error->message, ==, "boom");

  spark_dispatcher_send_command_async (f->s.dispatcher, "false", NULL, NULL, outcome_command_cb, &o);
  g_atomic_int_set (&o.returned, TRUE);
  outcome_wait (&o, VIA_ASYNC);
  g_assert_no_error (o.error);
  outcome_clear (&o);
  spark_test_wait_count (NULL, &failure.n, 2);
  g_assert_cmpstr (failure.name, ==, "false");
  g_assert_error (failure.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY);

  /* The server goes on. */
  request_via (f->s.dispatcher, VIA_SYNC, "echo", g_variant_new_int32 (1), NULL, NULL, &o);
  assert_outcome_int32 (&o, 1);
  outcome_clear (&o);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpint (g_atomic_int_get (&failure.n), ==, 2);
  spark_test_failure_clear (&failure);
}

/* Without a command-failed handler, the failure is a warning in SparkChannel.
 * The server is on this thread's context, so the warning is logged on this
 * thread. */
static void
test_command_failure_warning (Fixture       *f,
                              gconstpointer  data)
{
  g_autoptr(GError) error = NULL;
  Outcome o = { 0 };

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_WARNING, "*boom*");
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "fail", NULL, NULL, &error));
  g_assert_no_error (error);
  /* A request behind it: when it is answered, the command has been handled. */
  request_via (f->s.dispatcher, VIA_ASYNC, "echo", g_variant_new_int32 (1), NULL, NULL, &o);
  outcome_wait (&o, VIA_ASYNC);
  assert_outcome_int32 (&o, 1);
  outcome_clear (&o);
  g_test_assert_expected_messages ();

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpint (g_atomic_int_get (&f->m->n_commands), ==, 1);
}

/* An already-cancelled cancellable fails a command and sends nothing. */
static void
test_command_cancelled_before (Fixture       *f,
                               gconstpointer  data)
{
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  g_autoptr(GError) error = NULL;
  g_autofree char *log = NULL;
  GVariant *parameters;
  Outcome o = { 0 };

  g_cancellable_cancel (cancellable);

  parameters = g_variant_ref (g_variant_new_int32 (1));
  g_assert_false (spark_dispatcher_send_command (f->s.dispatcher, "log", parameters, cancellable, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_assert_false (g_variant_is_floating (parameters));
  g_variant_unref (parameters);
  g_clear_error (&error);

  spark_dispatcher_send_command_async (f->s.dispatcher, "log", g_variant_new_int32 (2), cancellable,
                                       outcome_command_cb, &o);
  g_atomic_int_set (&o.returned, TRUE);
  outcome_wait (&o, VIA_ASYNC);
  assert_outcome_error (&o, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  outcome_clear (&o);

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "log", g_variant_new_int32 (3), NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &f->m->n_commands, 1);
  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);

  log = spark_test_log_dup (&f->m->log);
  g_assert_cmpstr (log, ==, "log:3");
}


/* A request_sync on a thread of its own ----------------------------------- */

typedef struct
{
  SparkDispatcher *dispatcher;
  const char      *name;
  GVariant        *parameters;    /* owned until the call */
  GCancellable    *cancellable;
  Outcome          o;
} SyncCall;

static gpointer
sync_call_thread (gpointer data)
{
  SyncCall *call = data;

  request_via (call->dispatcher, VIA_SYNC, call->name, call->parameters,
               NULL, call->cancellable, &call->o);
  g_clear_pointer (&call->parameters, g_variant_unref);
  g_main_context_wakeup (NULL);

  return NULL;
}

static GThread *
sync_call_start (SyncCall        *call,
                 SparkDispatcher *dispatcher,
                 const char      *name,
                 GVariant        *parameters,
                 GCancellable    *cancellable)
{
  memset (call, 0, sizeof *call);
  call->dispatcher = dispatcher;
  call->name = name;
  call->parameters = parameters ? g_variant_ref_sink (parameters) : NULL;
  call->cancellable = cancellable;

  return g_thread_new ("sync-call", sync_call_thread, call);
}

/* Waits for the sync call's thread and its outcome. */
static void
sync_call_join (SyncCall *call,
                GThread  *thread)
{
  spark_test_wait_flag (NULL, &call->o.done);
  g_thread_join (thread);
  outcome_wait (&call->o, VIA_SYNC);
}

/* Busy-waits (yielding) until @server has @n messages queued: for senders
 * that block in a call and cannot signal anything. */
static void
wait_pending (SparkModuleServer *server,
              guint              n)
{
  while (spark_module_server_get_pending (server) < n)
    g_thread_yield ();
}


/* Once queued, a command's send has succeeded: cancelling its cancellable
 * afterwards changes nothing, and its handler's cancellable is not
 * cancelled. */
static void
test_command_cancel_after_queued (Fixture       *f,
                                  gconstpointer  data)
{
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  g_autoptr(GCancellable) async_cancellable = g_cancellable_new ();
  g_autoptr(GError) error = NULL;
  Outcome blocker = { 0 }, o = { 0 };

  request_via (f->s.dispatcher, VIA_ASYNC, "block-ignore", NULL, NULL, NULL, &blocker);
  spark_test_wait_count (NULL, &f->m->entered, 1);

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "check-cancel", g_variant_new_int32 (1),
                                                cancellable, &error));
  g_assert_no_error (error);
  g_cancellable_cancel (cancellable);

  spark_dispatcher_send_command_async (f->s.dispatcher, "check-cancel", g_variant_new_int32 (2), async_cancellable,
                                       outcome_command_cb, &o);
  g_atomic_int_set (&o.returned, TRUE);
  g_cancellable_cancel (async_cancellable);
  outcome_wait (&o, VIA_ASYNC);
  g_assert_no_error (o.error);
  outcome_clear (&o);

  spark_test_gate_open (&f->m->gate);
  outcome_wait (&blocker, VIA_ASYNC);
  outcome_clear (&blocker);
  spark_test_wait_count (NULL, &f->m->n_commands, 2);
  g_assert_false (g_atomic_int_get (&f->m->cmd_cancelled));

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  {
    g_autofree char *log = spark_test_log_dup (&f->m->log);

    g_assert_cmpstr (log, ==, "block-ignore check-cancel:1 check-cancel:2");
  }
}

/* Bad input --------------------------------------------------------------- */

/* Programmer errors are criticals; floating parameters are sunk anyway. */
static void
test_bad_input (Fixture       *f,
                gconstpointer  data)
{
  g_autoptr(GError) error = NULL;
  GVariant *parameters;
  GVariant *reply;

  parameters = g_variant_ref (g_variant_new_int32 (1));
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*assertion*");
  spark_dispatcher_request_async (f->s.dispatcher, "", parameters, NULL, NULL, outcome_async_cb, NULL);
  g_test_assert_expected_messages ();
  g_assert_false (g_variant_is_floating (parameters));
  g_variant_unref (parameters);

  parameters = g_variant_ref (g_variant_new_int32 (2));
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*assertion*");
  spark_dispatcher_request_full (f->s.dispatcher, "echo", parameters, NULL, NULL, NULL, NULL, NULL);
  g_test_assert_expected_messages ();
  g_assert_false (g_variant_is_floating (parameters));
  g_variant_unref (parameters);

  parameters = g_variant_ref (g_variant_new_int32 (3));
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*assertion*");
  reply = spark_dispatcher_request_sync (f->s.dispatcher, NULL, parameters, NULL, NULL, &error);
  g_test_assert_expected_messages ();
  g_assert_null (reply);
  g_assert_no_error (error);
  g_assert_false (g_variant_is_floating (parameters));
  g_variant_unref (parameters);

  parameters = g_variant_ref (g_variant_new_int32 (4));
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*assertion*");
  g_assert_false (spark_dispatcher_send_command (f->s.dispatcher, "", parameters, NULL, &error));
  g_test_assert_expected_messages ();
  g_assert_no_error (error);
  g_assert_false (g_variant_is_floating (parameters));
  g_variant_unref (parameters);

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*assertion*");
  g_assert_false (spark_dispatcher_try_send_command (NULL, "log", NULL, &error));
  g_test_assert_expected_messages ();
  g_assert_no_error (error);

  /* Nothing was sent. */
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "log", g_variant_new_int32 (5), NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &f->m->n_commands, 1);
  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  {
    g_autofree char *log = spark_test_log_dup (&f->m->log);

    g_assert_cmpstr (log, ==, "log:5");
  }
}

/* Cancellation ------------------------------------------------------------- */

/* Already cancelled: fails at once, the handler never runs, and the
 * callback still comes from the caller's context. */
static void
test_cancel_before (Fixture       *f,
                    gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  g_autofree char *log = NULL;
  GVariant *parameters;
  Outcome o = { 0 };

  g_cancellable_cancel (cancellable);

  parameters = g_variant_ref (g_variant_new_int32 (1));
  request_via (f->s.dispatcher, via, "echo", parameters, NULL, cancellable, &o);
  g_assert_false (g_variant_is_floating (parameters));
  g_variant_unref (parameters);
  outcome_wait (&o, via);
  assert_outcome_error (&o, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  outcome_clear (&o);

  /* A request behind it is the first the handler sees. */
  request_via (f->s.dispatcher, VIA_SYNC, "echo", g_variant_new_int32 (2), NULL, NULL, &o);
  assert_outcome_int32 (&o, 2);
  outcome_clear (&o);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  log = spark_test_log_dup (&f->m->log);
  g_assert_cmpstr (log, ==, "echo:2");
  g_assert_cmpint (g_atomic_int_get (&f->m->n_requests), ==, 1);
}

/* Cancelled while queued behind a handler that blocks the server: fails
 * with CANCELLED at once, without waiting for the server. */
static void
test_cancel_queued (Fixture       *f,
                    gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  Outcome blocker = { 0 };
  Outcome o = { 0 };
  SyncCall call;
  GThread *thread;

  request_via (f->s.dispatcher, VIA_ASYNC, "block-ignore", NULL, NULL, NULL, &blocker);
  spark_test_wait_count (NULL, &f->m->entered, 1);

  if (via == VIA_SYNC)
    {
      thread = sync_call_start (&call, f->s.dispatcher, "echo", g_variant_new_int32 (2), cancellable);
      wait_pending (f->s.server, 1);
      g_cancellable_cancel (cancellable);
      sync_call_join (&call, thread);
      assert_outcome_error (&call.o, G_IO_ERROR, G_IO_ERROR_CANCELLED);
      outcome_clear (&call.o);
    }
  else
    {
      request_via (f->s.dispatcher, via, "echo", g_variant_new_int32 (2), NULL, cancellable, &o);
      g_assert_cmpuint (spark_module_server_get_pending (f->s.server), ==, 1);
      g_cancellable_cancel (cancellable);
      outcome_wait (&o, via);
      assert_outcome_error (&o, G_IO_ERROR, G_IO_ERROR_CANCELLED);
      outcome_clear (&o);
    }

  /* The server was blocked the whole time. */
  g_assert_cmpint (g_atomic_int_get (&f->m->finished), ==, 0);
  spark_test_gate_open (&f->m->gate);
  outcome_wait (&blocker, VIA_ASYNC);
  assert_outcome_string (&blocker, "finished");
  outcome_clear (&blocker);
}

/* Cancelled while its handler runs: the handler's cancellable is cancelled
 * and the requester gets CANCELLED (for sync: from another thread). */
static void
test_cancel_running (Fixture       *f,
                     gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  Outcome o = { 0 };
  SyncCall call;
  GThread *thread;

  if (via == VIA_SYNC)
    {
      thread = sync_call_start (&call, f->s.dispatcher, "block", NULL, cancellable);
      spark_test_wait_count (NULL, &f->m->entered, 1);
      g_cancellable_cancel (cancellable);
      sync_call_join (&call, thread);
      assert_outcome_error (&call.o, G_IO_ERROR, G_IO_ERROR_CANCELLED);
      outcome_clear (&call.o);
    }
  else
    {
      request_via (f->s.dispatcher, via, "block", NULL, NULL, cancellable, &o);
      spark_test_wait_count (NULL, &f->m->entered, 1);
      g_cancellable_cancel (cancellable);
      outcome_wait (&o, via);
      assert_outcome_error (&o, G_IO_ERROR, G_IO_ERROR_CANCELLED);
      outcome_clear (&o);
    }

  spark_test_wait_count (NULL, &f->m->finished, 1);
  g_assert_true (g_atomic_int_get (&f->m->saw_cancelled));

  /* The server goes on. */
  request_via (f->s.dispatcher, VIA_SYNC, "echo", g_variant_new_int32 (1), NULL, NULL, &o);
  assert_outcome_int32 (&o, 1);
  outcome_clear (&o);
}

/* Cancelled after the completion: no effect. */
static void
test_cancel_after (Fixture       *f,
                   gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  Outcome o = { 0 };

  request_via (f->s.dispatcher, via, "echo", g_variant_new_int32 (1), NULL, cancellable, &o);
  outcome_wait (&o, via);
  g_cancellable_cancel (cancellable);
  spark_test_iterate_pending (NULL);

  /* A request behind it: its completion also flushes anything left. */
  {
    Outcome later = { 0 };

    request_via (f->s.dispatcher, via, "echo", g_variant_new_int32 (2), NULL, NULL, &later);
    outcome_wait (&later, via);
    assert_outcome_int32 (&later, 2);
    outcome_clear (&later);
  }
  spark_test_iterate_pending (NULL);

  assert_outcome_int32 (&o, 1);
  if (via == VIA_FULL)
    g_assert_cmpint (g_atomic_int_get (&o.destroyed), ==, 1);
  outcome_clear (&o);
}

/* Timeouts ------------------------------------------------------------------ */

static void
wake_on_invocation (SparkTestInvocationHandler *handler,
                    SparkInvocation            *invocation,
                    gpointer                    user_data)
{
  g_main_context_wakeup (NULL);
}

/* A server on its own thread whose handler holds every invocation. */
static SparkModuleServer *
holding_server_new (SparkTestInvocationHandler **handler_out)
{
  SparkTestInvocationHandler *handler = spark_test_invocation_handler_new ();
  SparkModuleServer *server = spark_module_server_new (SPARK_HANDLER (handler));
  g_autoptr(GError) error = NULL;

  handler->on_invocation = wake_on_invocation;
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  *handler_out = handler;

  return server;
}

/* The same in a fixture. */
static void
holding_setup (Fixture       *f,
               gconstpointer  options)
{
  SparkTestInvocationHandler *handler = spark_test_invocation_handler_new ();

  handler->on_invocation = wake_on_invocation;
  spark_test_server_setup (&f->s, SPARK_HANDLER (handler), options);
}

/* A request nobody answers fails with TIMED_OUT, and its handler's
 * cancellable is cancelled; a late reply is dropped quietly. */
static void
test_timeout_unanswered (Fixture       *f,
                         gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  SparkTestInvocationHandler *handler = SPARK_TEST_INVOCATION_HANDLER (f->s.handler);
  g_autoptr(SparkInvocation) invocation = NULL;
  Outcome o = { 0 };

  spark_dispatcher_set_timeout (f->s.dispatcher, 50);
  g_assert_cmpint (spark_dispatcher_get_timeout (f->s.dispatcher), ==, 50);

  request_via (f->s.dispatcher, via, "held", NULL, NULL, NULL, &o);
  outcome_wait (&o, via);
  assert_outcome_error (&o, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  outcome_clear (&o);

  spark_test_wait_count (NULL, &handler->n_received, 1);
  invocation = spark_test_invocation_handler_pop (handler);
  g_assert_nonnull (invocation);
  g_assert_cmpstr (spark_invocation_get_name (invocation), ==, "held");
  g_assert_true (g_cancellable_is_cancelled (spark_invocation_get_cancellable (invocation)));
  spark_invocation_return_value (invocation, g_variant_new_int32 (1));

  /* The server goes on to the next one. Its timeout leaves the server
   * time to hand it over even on a loaded machine: one that ends while
   * still queued is never handled, and the wait below would hang. */
  spark_dispatcher_set_timeout (f->s.dispatcher, 1000);
  request_via (f->s.dispatcher, via, "second", NULL, NULL, NULL, &o);
  outcome_wait (&o, via);
  assert_outcome_error (&o, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  outcome_clear (&o);
  spark_test_wait_count (NULL, &handler->n_received, 2);
}

/* Timeouts fire while the server is stuck in a sync handler that ignores
 * its cancellable: for the running request and for queued ones (async,
 * full and sync). The running handler's cancellable is cancelled. */
static void
test_timeout_stuck_handler (Fixture       *f,
                            gconstpointer  data)
{
  Outcome running = { 0 }, queued_async = { 0 }, queued_full = { 0 }, queued_sync = { 0 };
  Outcome o = { 0 };

  spark_dispatcher_set_timeout (f->s.dispatcher, 50);

  request_via (f->s.dispatcher, VIA_ASYNC, "block-ignore", NULL, NULL, NULL, &running);
  spark_test_wait_count (NULL, &f->m->entered, 1);
  request_via (f->s.dispatcher, VIA_ASYNC, "echo", g_variant_new_int32 (1), NULL, NULL, &queued_async);
  request_via (f->s.dispatcher, VIA_FULL, "echo", g_variant_new_int32 (2), NULL, NULL, &queued_full);
  request_via (f->s.dispatcher, VIA_SYNC, "echo", g_variant_new_int32 (3), NULL, NULL, &queued_sync);

  outcome_wait (&running, VIA_ASYNC);
  outcome_wait (&queued_async, VIA_ASYNC);
  outcome_wait (&queued_full, VIA_FULL);
  outcome_wait (&queued_sync, VIA_SYNC);
  assert_outcome_error (&running, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  assert_outcome_error (&queued_async, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  assert_outcome_error (&queued_full, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  assert_outcome_error (&queued_sync, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  g_assert_cmpint (g_atomic_int_get (&f->m->finished), ==, 0);

  spark_test_gate_open (&f->m->gate);
  spark_test_wait_count (NULL, &f->m->finished, 1);
  g_assert_true (g_atomic_int_get (&f->m->saw_cancelled));

  /* Nothing completes twice. */
  spark_dispatcher_set_timeout (f->s.dispatcher, -1);
  request_via (f->s.dispatcher, VIA_SYNC, "echo", g_variant_new_int32 (4), NULL, NULL, &o);
  assert_outcome_int32 (&o, 4);
  spark_test_iterate_pending (NULL);
  g_assert_cmpint (g_atomic_int_get (&running.done), ==, 1);
  g_assert_cmpint (g_atomic_int_get (&queued_async.done), ==, 1);
  g_assert_cmpint (g_atomic_int_get (&queued_full.done), ==, 1);
  g_assert_cmpint (g_atomic_int_get (&queued_full.destroyed), ==, 1);

  outcome_clear (&o);
  outcome_clear (&running);
  outcome_clear (&queued_async);
  outcome_clear (&queued_full);
  outcome_clear (&queued_sync);
}

/* The handler's cancellable is cancelled on timeout: a handler that
 * watches it returns early. */
static void
test_timeout_handler_cancellable (Fixture       *f,
                                  gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  Outcome o = { 0 };

  spark_dispatcher_set_timeout (f->s.dispatcher, 50);
  request_via (f->s.dispatcher, via, "block", NULL, NULL, NULL, &o);
  outcome_wait (&o, via);
  assert_outcome_error (&o, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  outcome_clear (&o);

  spark_test_wait_count (NULL, &f->m->finished, 1);
  g_assert_true (g_atomic_int_get (&f->m->saw_cancelled));
}

static void
on_notify (GObject    *object,
           GParamSpec *pspec,
           gpointer    user_data)
{
  gint *n = user_data;

  (*n)++;
}

/* 0 and -1 mean no timeout: a request held past another dispatcher's
 * timeout is still answered. */
static void
test_timeout_none (Fixture       *f,
                   gconstpointer  data)
{
  SparkTestInvocationHandler *handler = SPARK_TEST_INVOCATION_HANDLER (f->s.handler);
  g_autoptr(SparkDispatcher) hasty = spark_module_server_create_dispatcher (f->s.server);
  static const gint none[] = { 0, -1 };
  gint n_notify = 0;
  gint n_seen = 0;
  guint i;

  g_assert_cmpint (spark_dispatcher_get_timeout (f->s.dispatcher), ==, -1);
  g_signal_connect (f->s.dispatcher, "notify::timeout", G_CALLBACK (on_notify), &n_notify);
  spark_dispatcher_set_timeout (hasty, 30);

  for (i = 0; i < G_N_ELEMENTS (none); i++)
    {
      g_autoptr(SparkInvocation) invocation = NULL;
      Outcome held = { 0 }, timed = { 0 };
      gint timeout;

      spark_dispatcher_set_timeout (f->s.dispatcher, none[i]);
      g_object_get (f->s.dispatcher, "timeout", &timeout, NULL);
      g_assert_cmpint (timeout, ==, none[i]);

      request_via (f->s.dispatcher, VIA_ASYNC, "held", NULL, NULL, NULL, &held);
      spark_test_wait_count (NULL, &handler->n_received, ++n_seen);
      /* Queued behind the held one: times out while the first waits. */
      request_via (hasty, VIA_FULL, "hasty", NULL, NULL, NULL, &timed);
      outcome_wait (&timed, VIA_FULL);
      assert_outcome_error (&timed, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
      outcome_clear (&timed);

      spark_test_iterate_pending (NULL);
      g_assert_cmpint (g_atomic_int_get (&held.done), ==, 0);

      invocation = spark_test_invocation_handler_pop (handler);
      g_assert_cmpstr (spark_invocation_get_name (invocation), ==, "held");
      g_assert_false (g_cancellable_is_cancelled (spark_invocation_get_cancellable (invocation)));
      spark_invocation_return_value (invocation, g_variant_new_int32 (10));
      outcome_wait (&held, VIA_ASYNC);
      assert_outcome_int32 (&held, 10);
      outcome_clear (&held);

      /* The hasty one may reach the handler after all, or be skipped: a
       * probe behind it tells. */
      request_via (f->s.dispatcher, VIA_ASYNC, "probe", NULL, NULL, NULL, &held);
      for (;;)
        {
          spark_test_wait_count (NULL, &handler->n_received, ++n_seen);
          g_clear_object (&invocation);
          invocation = spark_test_invocation_handler_pop (handler);
          g_assert_nonnull (invocation);
          spark_invocation_return_value (invocation, g_variant_new_int32 (11));
          if (g_str_equal (spark_invocation_get_name (invocation), "probe"))
            break;
          g_assert_cmpstr (spark_invocation_get_name (invocation), ==, "hasty");
        }
      outcome_wait (&held, VIA_ASYNC);
      assert_outcome_int32 (&held, 11);
      outcome_clear (&held);
    }
  g_assert_cmpint (n_notify, ==, 2);

  /* Other negative values are a programmer error, and are ignored. */
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*assertion*");
  spark_dispatcher_set_timeout (f->s.dispatcher, -2);
  g_test_assert_expected_messages ();
  g_assert_cmpint (spark_dispatcher_get_timeout (f->s.dispatcher), ==, -1);
}


/* Backpressure -------------------------------------------------------------- */

/* A send_command on a thread of its own. */
typedef struct
{
  SparkDispatcher *dispatcher;
  gint32           value;
  GCancellable    *cancellable;
  gint             started;   /* atomic */
  gint             done;      /* atomic */
  gboolean         ret;
  GError          *error;
} SendCall;

static gpointer
send_call_thread (gpointer data)
{
  SendCall *call = data;
  gboolean ret;

  g_atomic_int_set (&call->started, TRUE);
  g_main_context_wakeup (NULL);
  ret = spark_dispatcher_send_command (call->dispatcher, "log", g_variant_new_int32 (call->value),
                                       call->cancellable, &call->error);
  call->ret = ret;
  g_atomic_int_set (&call->done, TRUE);
  g_main_context_wakeup (NULL);

  return NULL;
}

static GThread *
send_call_start (SendCall        *call,
                 SparkDispatcher *dispatcher,
                 gint32           value,
                 GCancellable    *cancellable)
{
  memset (call, 0, sizeof *call);
  call->dispatcher = dispatcher;
  call->value = value;
  call->cancellable = cancellable;

  return g_thread_new ("send-call", send_call_thread, call);
}

static void
send_call_join (SendCall *call,
                GThread  *thread)
{
  spark_test_wait_flag (NULL, &call->done);
  g_thread_join (thread);
}

/* Blocks the thread of a started bounded @server in a "block-ignore"
 * request (@blocker) and fills its mailbox with as many commands as it
 * holds: "log:1" ... "log:N". */
static void
fill_mailbox (Module            *m,
              SparkModuleServer *server,
              SparkDispatcher   *dispatcher,
              Outcome           *blocker)
{
  guint capacity = spark_module_server_get_capacity (server);
  g_autoptr(GError) error = NULL;
  guint i;

  g_assert_cmpuint (capacity, >, 0);
  request_via (dispatcher, VIA_ASYNC, "block-ignore", NULL, NULL, NULL, blocker);
  spark_test_wait_count (NULL, &m->entered, 1);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 0);

  for (i = 1; i <= capacity; i++)
    {
      g_assert_true (spark_dispatcher_try_send_command (dispatcher, "log", g_variant_new_int32 (i), &error));
      g_assert_no_error (error);
    }
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, capacity);
}

/* A started server of @capacity, filled by fill_mailbox(). */
static SparkModuleServer *
full_server_new (Module          *m,
                 guint            capacity,
                 SparkDispatcher **dispatcher_out,
                 Outcome         *blocker)
{
  SparkModuleServer *server = module_server_new_in_thread (m, capacity);
  SparkDispatcher *dispatcher = spark_module_server_create_dispatcher (server);

  g_assert_cmpuint (spark_module_server_get_capacity (server), ==, capacity);
  fill_mailbox (m, server, dispatcher, blocker);

  *dispatcher_out = dispatcher;
  return server;
}

/* Opens the gate and waits for the blocker's reply. */
static void
release_blocker (Module  *m,
                 Outcome *blocker)
{
  spark_test_gate_open (&m->gate);
  outcome_wait (blocker, VIA_ASYNC);
  assert_outcome_string (blocker, "finished");
  outcome_clear (blocker);
}

static void
assert_log (Module     *m,
            const char *expected)
{
  g_autofree char *log = spark_test_log_dup (&m->log);

  g_assert_cmpstr (log, ==, expected);
}

static void
test_backpressure_try_full (Fixture       *f,
                            gconstpointer  data)
{
  Outcome blocker = { 0 };
  g_autoptr(GError) error = NULL;
  GVariant *parameters;

  fill_mailbox (f->m, f->s.server, f->s.dispatcher, &blocker);

  parameters = g_variant_ref (g_variant_new_int32 (3));
  g_assert_false (spark_dispatcher_try_send_command (f->s.dispatcher, "log", parameters, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_assert_false (g_variant_is_floating (parameters));
  g_variant_unref (parameters);
  g_clear_error (&error);
  g_assert_cmpuint (spark_module_server_get_pending (f->s.server), ==, 2);

  release_blocker (f->m, &blocker);
  spark_test_wait_count (NULL, &f->m->n_commands, 2);

  g_assert_true (spark_dispatcher_try_send_command (f->s.dispatcher, "log", g_variant_new_int32 (4), &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &f->m->n_commands, 3);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (f->m, "block-ignore log:1 log:2 log:4");
}

/* send_command blocks until there is room. */
static void
test_backpressure_send_blocks (Fixture       *f,
                               gconstpointer  data)
{
  Outcome blocker = { 0 };
  g_autoptr(GError) error = NULL;
  SendCall call;
  GThread *thread;

  fill_mailbox (f->m, f->s.server, f->s.dispatcher, &blocker);

  thread = send_call_start (&call, f->s.dispatcher, 2, NULL);
  spark_test_wait_flag (NULL, &call.started);

  /* Still full (and, once the thread waits, someone waits for room). */
  g_assert_false (spark_dispatcher_try_send_command (f->s.dispatcher, "log", g_variant_new_int32 (3), &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_clear_error (&error);
  g_assert_false (g_atomic_int_get (&call.done));

  release_blocker (f->m, &blocker);
  send_call_join (&call, thread);
  g_assert_no_error (call.error);
  g_assert_true (call.ret);
  spark_test_wait_count (NULL, &f->m->n_commands, 2);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (f->m, "block-ignore log:1 log:2");
}

/* send_command waiting for room can be cancelled: that command is never
 * handled. */
static void
test_backpressure_send_cancelled (Fixture       *f,
                                  gconstpointer  data)
{
  Outcome blocker = { 0 };
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  g_autoptr(GError) error = NULL;
  SendCall call;
  GThread *thread;

  fill_mailbox (f->m, f->s.server, f->s.dispatcher, &blocker);

  thread = send_call_start (&call, f->s.dispatcher, 2, cancellable);
  spark_test_wait_flag (NULL, &call.started);
  g_cancellable_cancel (cancellable);
  send_call_join (&call, thread);
  g_assert_false (call.ret);
  g_assert_error (call.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&call.error);

  /* It was answered while the server was still blocked. */
  g_assert_cmpint (g_atomic_int_get (&f->m->finished), ==, 0);
  release_blocker (f->m, &blocker);
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "log", g_variant_new_int32 (3), NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &f->m->n_commands, 2);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (f->m, "block-ignore log:1 log:3");
}

/* send_command_async waits for room, and completes when admitted. */
static void
test_backpressure_async_command_waits (Fixture       *f,
                                       gconstpointer  data)
{
  Outcome blocker = { 0 };
  g_autoptr(GError) error = NULL;
  Outcome o = { 0 };

  fill_mailbox (f->m, f->s.server, f->s.dispatcher, &blocker);

  spark_dispatcher_send_command_async (f->s.dispatcher, "log", g_variant_new_int32 (2), NULL, outcome_command_cb, &o);
  g_atomic_int_set (&o.returned, TRUE);
  spark_test_iterate_pending (NULL);
  g_assert_cmpint (g_atomic_int_get (&o.done), ==, 0);
  g_assert_cmpuint (spark_module_server_get_pending (f->s.server), ==, 1);

  /* First come, first served: try_send does not overtake it. */
  g_assert_false (spark_dispatcher_try_send_command (f->s.dispatcher, "log", g_variant_new_int32 (3), &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_clear_error (&error);

  release_blocker (f->m, &blocker);
  outcome_wait (&o, VIA_ASYNC);
  g_assert_no_error (o.error);
  outcome_clear (&o);
  spark_test_wait_count (NULL, &f->m->n_commands, 2);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (f->m, "block-ignore log:1 log:2");
}

/* send_command_async waiting for room can be cancelled; it is not sent. */
static void
test_backpressure_async_command_cancelled (Fixture       *f,
                                           gconstpointer  data)
{
  Outcome blocker = { 0 };
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  g_autoptr(GError) error = NULL;
  Outcome o = { 0 };

  fill_mailbox (f->m, f->s.server, f->s.dispatcher, &blocker);

  spark_dispatcher_send_command_async (f->s.dispatcher, "log", g_variant_new_int32 (2), cancellable,
                                       outcome_command_cb, &o);
  g_atomic_int_set (&o.returned, TRUE);
  spark_test_iterate_pending (NULL);
  g_assert_cmpint (g_atomic_int_get (&o.done), ==, 0);

  g_cancellable_cancel (cancellable);
  outcome_wait (&o, VIA_ASYNC);
  assert_outcome_error (&o, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  outcome_clear (&o);
  g_assert_cmpint (g_atomic_int_get (&f->m->finished), ==, 0);

  release_blocker (f->m, &blocker);
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "log", g_variant_new_int32 (3), NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &f->m->n_commands, 2);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (f->m, "block-ignore log:1 log:3");
}

/* Requests wait for room too (async and full without blocking, sync on
 * another thread). */
static void
test_backpressure_request_waits (Fixture       *f,
                                 gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  Outcome blocker = { 0 };
  Outcome o = { 0 };
  SyncCall call;
  GThread *thread = NULL;

  fill_mailbox (f->m, f->s.server, f->s.dispatcher, &blocker);

  if (via == VIA_SYNC)
    thread = sync_call_start (&call, f->s.dispatcher, "echo", g_variant_new_int32 (2), NULL);
  else
    {
      request_via (f->s.dispatcher, via, "echo", g_variant_new_int32 (2), NULL, NULL, &o);
      spark_test_iterate_pending (NULL);
      g_assert_cmpint (g_atomic_int_get (&o.done), ==, 0);
      g_assert_cmpuint (spark_module_server_get_pending (f->s.server), ==, 1);
    }

  release_blocker (f->m, &blocker);

  if (via == VIA_SYNC)
    {
      sync_call_join (&call, thread);
      assert_outcome_int32 (&call.o, 2);
      outcome_clear (&call.o);
    }
  else
    {
      outcome_wait (&o, via);
      assert_outcome_int32 (&o, 2);
      outcome_clear (&o);
    }

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (f->m, "block-ignore log:1 echo:2");
}

/* A request waiting for room can be cancelled; it is never handled. */
static void
test_backpressure_request_cancelled (Fixture       *f,
                                     gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  Outcome blocker = { 0 };
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  Outcome o = { 0 };
  SyncCall call;
  GThread *thread;

  fill_mailbox (f->m, f->s.server, f->s.dispatcher, &blocker);

  if (via == VIA_SYNC)
    {
      thread = sync_call_start (&call, f->s.dispatcher, "echo", g_variant_new_int32 (2), cancellable);
      g_cancellable_cancel (cancellable);
      sync_call_join (&call, thread);
      assert_outcome_error (&call.o, G_IO_ERROR, G_IO_ERROR_CANCELLED);
      outcome_clear (&call.o);
    }
  else
    {
      request_via (f->s.dispatcher, via, "echo", g_variant_new_int32 (2), NULL, cancellable, &o);
      spark_test_iterate_pending (NULL);
      g_assert_cmpint (g_atomic_int_get (&o.done), ==, 0);
      g_cancellable_cancel (cancellable);
      outcome_wait (&o, via);
      assert_outcome_error (&o, G_IO_ERROR, G_IO_ERROR_CANCELLED);
      outcome_clear (&o);
    }
  g_assert_cmpint (g_atomic_int_get (&f->m->finished), ==, 0);

  release_blocker (f->m, &blocker);
  request_via (f->s.dispatcher, VIA_SYNC, "echo", g_variant_new_int32 (3), NULL, NULL, &o);
  assert_outcome_int32 (&o, 3);
  outcome_clear (&o);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (f->m, "block-ignore log:1 echo:3");
}

static void
on_token_cancelled (GCancellable *token,
                    gpointer      user_data)
{
  gint *flag = user_data;

  g_atomic_int_set (flag, TRUE);
  g_main_context_wakeup (NULL);
}

/* send_shutdown is accepted when the mailbox is full, and everything
 * queued before it is handled. */
static void
test_backpressure_shutdown_when_full (Fixture       *f,
                                      gconstpointer  data)
{
  Outcome blocker = { 0 };
  g_autoptr(GCancellable) token = g_cancellable_new ();
  g_autoptr(GError) error = NULL;
  gint stopped = FALSE;

  fill_mailbox (f->m, f->s.server, f->s.dispatcher, &blocker);

  g_cancellable_connect (token, G_CALLBACK (on_token_cancelled), &stopped, NULL);
  g_assert_true (spark_dispatcher_send_shutdown (f->s.dispatcher, token, &error));
  g_assert_no_error (error);
  /* The Shutdown message counts neither in pending nor against capacity. */
  g_assert_cmpuint (spark_module_server_get_pending (f->s.server), ==, 2);

  release_blocker (f->m, &blocker);
  spark_test_wait_flag (NULL, &stopped);
  assert_log (f->m, "block-ignore log:1 log:2");
}

/* Senders waiting for room get CLOSED when the server is shut down: by
 * send_shutdown (data 0) or by shutdown_async (data 1). */
static void
test_backpressure_closed_while_waiting (Fixture       *f,
                                        gconstpointer  data)
{
  gboolean by_server = GPOINTER_TO_UINT (f->s.options->data);
  Outcome blocker = { 0 };
  g_autoptr(GError) error = NULL;
  Outcome command = { 0 }, async = { 0 }, full = { 0 };
  SendCall send_call;
  SyncCall sync_call;
  GThread *send_thread, *sync_thread;
  gint stopped = FALSE;

  fill_mailbox (f->m, f->s.server, f->s.dispatcher, &blocker);

  spark_dispatcher_send_command_async (f->s.dispatcher, "log", g_variant_new_int32 (2), NULL,
                                       outcome_command_cb, &command);
  g_atomic_int_set (&command.returned, TRUE);
  request_via (f->s.dispatcher, VIA_ASYNC, "echo", g_variant_new_int32 (3), NULL, NULL, &async);
  request_via (f->s.dispatcher, VIA_FULL, "echo", g_variant_new_int32 (4), NULL, NULL, &full);
  send_thread = send_call_start (&send_call, f->s.dispatcher, 5, NULL);
  sync_thread = sync_call_start (&sync_call, f->s.dispatcher, "echo", g_variant_new_int32 (6), NULL);
  spark_test_wait_flag (NULL, &send_call.started);
  spark_test_iterate_pending (NULL);
  g_assert_cmpint (g_atomic_int_get (&command.done), ==, 0);
  g_assert_cmpint (g_atomic_int_get (&async.done), ==, 0);
  g_assert_cmpint (g_atomic_int_get (&full.done), ==, 0);

  if (by_server)
    spark_module_server_shutdown_async (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN, NULL,
                                        spark_test_shutdown_done_cb, &stopped);
  else
    {
      g_assert_true (spark_dispatcher_send_shutdown (f->s.dispatcher, NULL, &error));
      g_assert_no_error (error);
    }

  /* Every waiting sender fails at once, while the server is still blocked. */
  outcome_wait (&command, VIA_ASYNC);
  outcome_wait (&async, VIA_ASYNC);
  outcome_wait (&full, VIA_FULL);
  send_call_join (&send_call, send_thread);
  sync_call_join (&sync_call, sync_thread);
  assert_outcome_error (&command, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  assert_outcome_error (&async, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  assert_outcome_error (&full, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_assert_false (send_call.ret);
  g_assert_error (send_call.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  assert_outcome_error (&sync_call.o, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_assert_cmpint (g_atomic_int_get (&f->m->finished), ==, 0);
  outcome_clear (&command);
  outcome_clear (&async);
  outcome_clear (&full);
  outcome_clear (&sync_call.o);
  g_clear_error (&send_call.error);

  release_blocker (f->m, &blocker);
  if (by_server)
    spark_test_wait_flag (NULL, &stopped);
  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (f->m, "block-ignore log:1");
}

/* pending counts queued messages only: not the one being handled, not
 * senders waiting for room, not the Shutdown message. */
static void
test_backpressure_pending (void)
{
  Module *m = module_new ();
  g_autoptr(SparkModuleServer) server = module_server_new_in_thread (m, 0);
  g_autoptr(SparkDispatcher) dispatcher = spark_module_server_create_dispatcher (server);
  g_autoptr(SparkDispatcher) bounded_dispatcher = NULL;
  g_autoptr(SparkModuleServer) bounded = NULL;
  g_autoptr(GCancellable) token = g_cancellable_new ();
  g_autoptr(GError) error = NULL;
  Module *bm = module_new ();
  Outcome blocker = { 0 }, a = { 0 }, b = { 0 }, waiting = { 0 };
  gint stopped = FALSE;

  /* Unbounded. */
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 0);
  request_via (dispatcher, VIA_ASYNC, "block-ignore", NULL, NULL, NULL, &blocker);
  spark_test_wait_count (NULL, &m->entered, 1);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 0);
  g_assert_true (spark_dispatcher_send_command (dispatcher, "log", g_variant_new_int32 (1), NULL, &error));
  g_assert_true (spark_dispatcher_try_send_command (dispatcher, "log", g_variant_new_int32 (2), &error));
  request_via (dispatcher, VIA_ASYNC, "echo", g_variant_new_int32 (3), NULL, NULL, &a);
  request_via (dispatcher, VIA_FULL, "echo", g_variant_new_int32 (4), NULL, NULL, &b);
  g_assert_no_error (error);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 4);
  release_blocker (m, &blocker);
  outcome_wait (&a, VIA_ASYNC);
  outcome_wait (&b, VIA_FULL);
  outcome_clear (&a);
  outcome_clear (&b);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 0);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);

  /* Bounded, with a sender waiting and a Shutdown message queued. */
  bounded = full_server_new (bm, 2, &bounded_dispatcher, &blocker);
  spark_dispatcher_send_command_async (bounded_dispatcher, "log", g_variant_new_int32 (3), NULL,
                                       outcome_command_cb, &waiting);
  g_atomic_int_set (&waiting.returned, TRUE);
  g_assert_cmpuint (spark_module_server_get_pending (bounded), ==, 2);
  g_cancellable_connect (token, G_CALLBACK (on_token_cancelled), &stopped, NULL);
  g_assert_true (spark_dispatcher_send_shutdown (bounded_dispatcher, token, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (spark_module_server_get_pending (bounded), ==, 2);
  outcome_wait (&waiting, VIA_ASYNC);
  assert_outcome_error (&waiting, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  outcome_clear (&waiting);

  release_blocker (bm, &blocker);
  spark_test_wait_flag (NULL, &stopped);
  g_assert_cmpuint (spark_module_server_get_pending (bounded), ==, 0);
  spark_test_shutdown (bounded, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (bm, "block-ignore log:1 log:2");

  module_free (m);
  module_free (bm);
}

/* Would deadlock ------------------------------------------------------------ */

/* request_sync from a handler of the same server, on the server's thread. */
static void
test_deadlock_handler_request_sync (Fixture       *f,
                                    gconstpointer  data)
{
  Outcome o = { 0 };

  f->m->self_dispatcher = spark_module_server_create_dispatcher (f->s.server);
  request_via (f->s.dispatcher, VIA_SYNC, "request-self", NULL, NULL, NULL, &o);
  assert_outcome_string (&o, "done");
  outcome_clear (&o);
  g_assert_false (f->m->self_ret);
  g_assert_error (f->m->self_error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_WOULD_DEADLOCK);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  /* The inner request never reached the handler. */
  assert_log (f->m, "request-self");
}

/* send_command that would have to wait for room, from a handler of the
 * same server. */
static void
test_deadlock_handler_send_full (Fixture       *f,
                                 gconstpointer  data)
{
  Outcome o = { 0 };

  f->m->self_dispatcher = spark_module_server_create_dispatcher (f->s.server);
  request_via (f->s.dispatcher, VIA_SYNC, "send-self", NULL, NULL, NULL, &o);
  assert_outcome_string (&o, "done");
  outcome_clear (&o);
  g_assert_false (f->m->self_ret);
  g_assert_error (f->m->self_error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_WOULD_DEADLOCK);

  spark_test_wait_count (NULL, &f->m->n_commands, 1);
  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (f->m, "send-self log:200");
}

/* try_send_command from the server's own thread works. */
static void
test_deadlock_try_send_from_handler (Fixture       *f,
                                     gconstpointer  data)
{
  Outcome o = { 0 };

  f->m->self_dispatcher = spark_module_server_create_dispatcher (f->s.server);
  request_via (f->s.dispatcher, VIA_SYNC, "try-self", NULL, NULL, NULL, &o);
  assert_outcome_string (&o, "done");
  outcome_clear (&o);
  g_assert_no_error (f->m->self_error);
  g_assert_true (f->m->self_ret);

  spark_test_wait_count (NULL, &f->m->n_commands, 1);
  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (f->m, "try-self log:100");
}

/* Blocking calls on the thread that called start (NULL: this thread's
 * context): request_sync, and send_command on a full mailbox. */
static void
test_deadlock_start_thread (Fixture       *f,
                            gconstpointer  data)
{
  g_autoptr(GError) error = NULL;
  Outcome o = { 0 };

  request_via (f->s.dispatcher, VIA_SYNC, "echo", g_variant_new_int32 (1), NULL, NULL, &o);
  assert_outcome_error (&o, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_WOULD_DEADLOCK);
  outcome_clear (&o);

  g_assert_true (spark_dispatcher_try_send_command (f->s.dispatcher, "log", g_variant_new_int32 (2), &error));
  g_assert_no_error (error);
  g_assert_false (spark_dispatcher_send_command (f->s.dispatcher, "log", g_variant_new_int32 (3), NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_WOULD_DEADLOCK);
  g_clear_error (&error);

  spark_test_wait_count (NULL, &f->m->n_commands, 1);
  /* With room, send_command does not wait, so it works here. */
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "log", g_variant_new_int32 (4), NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &f->m->n_commands, 2);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (f->m, "log:2 log:4");
}

typedef struct
{
  GMainContext *context;
  gint          quit;   /* atomic */
} Iterator;

static gpointer
iterator_thread (gpointer data)
{
  Iterator *it = data;

  g_main_context_push_thread_default (it->context);
  while (!g_atomic_int_get (&it->quit))
    g_main_context_iteration (it->context, TRUE);
  g_main_context_pop_thread_default (it->context);

  return NULL;
}

/* The thread that called start (ctx) cannot block on the server even when
 * another thread iterates ctx; a third thread can. */
static void
test_deadlock_start_thread_other_iterator (void)
{
  Module *m = module_new ();
  g_autoptr(SparkModuleServer) server = module_server_new (m, 0);
  g_autoptr(SparkDispatcher) dispatcher = spark_module_server_create_dispatcher (server);
  g_autoptr(GError) error = NULL;
  Iterator it = { 0 };
  GThread *iterating;
  SyncCall call;
  GThread *thread;
  Outcome o = { 0 };

  it.context = g_main_context_new ();
  g_assert_true (spark_module_server_start (server, it.context, &error));
  g_assert_no_error (error);
  iterating = g_thread_new ("iterator", iterator_thread, &it);

  request_via (dispatcher, VIA_SYNC, "echo", g_variant_new_int32 (1), NULL, NULL, &o);
  assert_outcome_error (&o, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_WOULD_DEADLOCK);
  outcome_clear (&o);

  thread = sync_call_start (&call, dispatcher, "echo", g_variant_new_int32 (2), NULL);
  sync_call_join (&call, thread);
  assert_outcome_int32 (&call.o, 2);
  outcome_clear (&call.o);

  /* Async works from here. */
  request_via (dispatcher, VIA_ASYNC, "echo", g_variant_new_int32 (3), NULL, NULL, &o);
  outcome_wait (&o, VIA_ASYNC);
  assert_outcome_int32 (&o, 3);
  outcome_clear (&o);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_atomic_int_set (&it.quit, TRUE);
  g_main_context_wakeup (it.context);
  g_thread_join (iterating);
  g_main_context_unref (it.context);

  assert_log (m, "echo:2 echo:3");
  module_free (m);
}



/* The handler cancels the request's cancellable, then replies: the
 * cancellation came before the completion was delivered, so the request
 * fails with CANCELLED (for sync: checked when it returns). */
static void
test_cancel_during_reply (Fixture       *f,
                          gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  Outcome o = { 0 };

  f->m->cancel_me = g_cancellable_new ();
  request_via (f->s.dispatcher, via, "cancel-and-reply", NULL, NULL, f->m->cancel_me, &o);
  outcome_wait (&o, via);
  assert_outcome_error (&o, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  outcome_clear (&o);
}

/* A request waiting for room times out too: the timeout counts from the
 * call. */
static void
test_timeout_waiting_for_room (Fixture       *f,
                               gconstpointer  data)
{
  Via via = GPOINTER_TO_UINT (f->s.options->data);
  Outcome blocker = { 0 };
  g_autoptr(SparkDispatcher) hasty = NULL;
  Outcome o = { 0 };

  fill_mailbox (f->m, f->s.server, f->s.dispatcher, &blocker);
  hasty = spark_module_server_create_dispatcher (f->s.server);
  spark_dispatcher_set_timeout (hasty, 50);

  request_via (hasty, via, "echo", g_variant_new_int32 (2), NULL, NULL, &o);
  outcome_wait (&o, via);
  assert_outcome_error (&o, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  outcome_clear (&o);
  g_assert_cmpint (g_atomic_int_get (&f->m->finished), ==, 0);

  release_blocker (f->m, &blocker);
  request_via (f->s.dispatcher, VIA_SYNC, "echo", g_variant_new_int32 (3), NULL, NULL, &o);
  assert_outcome_int32 (&o, 3);
  outcome_clear (&o);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (f->m, "block-ignore log:1 echo:3");
}

/* Many threads -------------------------------------------------------------- */

typedef struct
{
  SparkDispatcher *dispatcher;
  gint             index;
  gint             errors;   /* atomic: wrong or failed replies, failed sends */
  gint             done;     /* atomic */
} Worker;

static gpointer
worker_thread (gpointer data)
{
  Worker *w = data;
  GMainContext *context = g_main_context_new ();
  Outcome *outcomes = g_new0 (Outcome, N_FULL_PER_THREAD);
  gint i, n_async = 0;

  g_main_context_push_thread_default (context);

  for (i = 0; i < N_PER_THREAD; i++)
    {
      GError *error = NULL;
      GVariant *reply;
      gboolean sent;

      reply = spark_dispatcher_request_sync (w->dispatcher, "echo", g_variant_new ("(ii)", w->index, i),
                                             G_VARIANT_TYPE ("(ii)"), NULL, &error);
      if (reply == NULL)
        g_atomic_int_inc (&w->errors);
      else
        {
          gint32 index, seq;

          g_variant_get (reply, "(ii)", &index, &seq);
          if (index != w->index || seq != i)
            g_atomic_int_inc (&w->errors);
          g_variant_unref (reply);
        }
      g_clear_error (&error);

      if (i % 2 == 0)
        sent = spark_dispatcher_send_command (w->dispatcher, "seq", g_variant_new ("(ii)", w->index, i), NULL, &error);
      else
        sent = spark_dispatcher_try_send_command (w->dispatcher, "seq", g_variant_new ("(ii)", w->index, i), &error);
      if (!sent)
        g_atomic_int_inc (&w->errors);
      g_clear_error (&error);

      if (i % (N_PER_THREAD / N_FULL_PER_THREAD) == 0)
        {
          request_via (w->dispatcher, n_async % 2 ? VIA_ASYNC : VIA_FULL, "echo",
                       g_variant_new_int32 (i), G_VARIANT_TYPE_INT32, NULL, &outcomes[n_async]);
          n_async++;
        }
    }

  g_assert_cmpint (n_async, ==, N_FULL_PER_THREAD);
  for (i = 0; i < N_FULL_PER_THREAD; i++)
    {
      outcome_wait (&outcomes[i], i % 2 ? VIA_ASYNC : VIA_FULL);
      assert_outcome_int32 (&outcomes[i], i * (N_PER_THREAD / N_FULL_PER_THREAD));
    }
  /* Nothing completes twice. */
  spark_test_iterate_pending (NULL);
  for (i = 0; i < N_FULL_PER_THREAD; i++)
    {
      g_assert_cmpint (g_atomic_int_get (&outcomes[i].done), ==, 1);
      if (i % 2 == 0)
        g_assert_cmpint (g_atomic_int_get (&outcomes[i].destroyed), ==, 1);
      outcome_clear (&outcomes[i]);
    }

  g_main_context_pop_thread_default (context);
  g_main_context_unref (context);
  g_free (outcomes);

  g_atomic_int_set (&w->done, TRUE);
  g_main_context_wakeup (NULL);

  return NULL;
}

/* N_THREADS threads, some sharing a dispatcher, each sending requests and
 * commands: every request completes once, each thread's commands are
 * handled in its order. */
static void
test_threads_many (Fixture       *f,
                   gconstpointer  data)
{
  Worker workers[N_THREADS];
  GThread *threads[N_THREADS];
  gint i;

  for (i = 0; i < N_THREADS; i++)
    {
      memset (&workers[i], 0, sizeof workers[i]);
      workers[i].index = i;
      workers[i].dispatcher = i % 2 ? g_object_ref (f->s.dispatcher)
                                    : spark_module_server_create_dispatcher (f->s.server);
      threads[i] = g_thread_new ("worker", worker_thread, &workers[i]);
    }

  for (i = 0; i < N_THREADS; i++)
    {
      spark_test_wait_flag (NULL, &workers[i].done);
      g_thread_join (threads[i]);
      g_assert_cmpint (g_atomic_int_get (&workers[i].errors), ==, 0);
      g_object_unref (workers[i].dispatcher);
    }

  spark_test_wait_count (NULL, &f->m->n_commands, N_THREADS * N_PER_THREAD);
  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);

  g_assert_cmpint (g_atomic_int_get (&f->m->n_commands), ==, N_THREADS * N_PER_THREAD);
  g_assert_cmpint (g_atomic_int_get (&f->m->n_requests), ==, N_THREADS * (N_PER_THREAD + N_FULL_PER_THREAD));
  g_assert_cmpint (g_atomic_int_get (&f->m->seq_errors), ==, 0);
  for (i = 0; i < N_THREADS; i++)
    g_assert_cmpint (f->m->last_seq[i], ==, N_PER_THREAD - 1);
}

/* A dropped dispatcher ------------------------------------------------------ */

#define N_DROPPED 6

/* A dispatcher dropped with requests in flight: each still completes
 * exactly once (request_full: reply_func, then destroy), whether its
 * handler answers it or the server aborts. */
static void
test_dropped_in_flight (void)
{
  SparkTestInvocationHandler *handler = NULL;
  g_autoptr(SparkModuleServer) server = holding_server_new (&handler);
  SparkDispatcher *dispatcher;
  Outcome answered[N_DROPPED];
  Outcome aborted[N_DROPPED];
  gint i;

  memset (answered, 0, sizeof answered);
  memset (aborted, 0, sizeof aborted);

  /* Answered by the handler after the dispatcher is gone. */
  dispatcher = spark_module_server_create_dispatcher (server);
  for (i = 0; i < N_DROPPED; i++)
    request_via (dispatcher, i % 2 ? VIA_ASYNC : VIA_FULL, "answered", g_variant_new_int32 (i),
                 NULL, NULL, &answered[i]);
  g_object_unref (dispatcher);

  for (i = 0; i < N_DROPPED; i++)
    {
      g_autoptr(SparkInvocation) invocation = NULL;

      spark_test_wait_count (NULL, &handler->n_received, i + 1);
      invocation = spark_test_invocation_handler_pop (handler);
      g_assert_nonnull (invocation);
      spark_invocation_return_value (invocation, spark_invocation_get_parameters (invocation));
    }
  for (i = 0; i < N_DROPPED; i++)
    {
      outcome_wait (&answered[i], i % 2 ? VIA_ASYNC : VIA_FULL);
      assert_outcome_int32 (&answered[i], i);
    }

  /* Held or queued when the server aborts. */
  dispatcher = spark_module_server_create_dispatcher (server);
  for (i = 0; i < N_DROPPED; i++)
    request_via (dispatcher, i % 2 ? VIA_ASYNC : VIA_FULL, "aborted", g_variant_new_int32 (i),
                 NULL, NULL, &aborted[i]);
  g_object_unref (dispatcher);
  spark_test_wait_count (NULL, &handler->n_received, N_DROPPED + 1);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_ABORT);
  for (i = 0; i < N_DROPPED; i++)
    {
      outcome_wait (&aborted[i], i % 2 ? VIA_ASYNC : VIA_FULL);
      assert_outcome_error (&aborted[i], SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
    }

  /* Nothing completes twice. */
  spark_test_iterate_pending (NULL);
  for (i = 0; i < N_DROPPED; i++)
    {
      g_assert_cmpint (g_atomic_int_get (&answered[i].done), ==, 1);
      g_assert_cmpint (g_atomic_int_get (&aborted[i].done), ==, 1);
      if (i % 2 == 0)
        {
          g_assert_cmpint (g_atomic_int_get (&answered[i].destroyed), ==, 1);
          g_assert_cmpint (g_atomic_int_get (&aborted[i].destroyed), ==, 1);
        }
      outcome_clear (&answered[i]);
      outcome_clear (&aborted[i]);
    }

  g_clear_object (&server);
  g_object_unref (handler);
}

/* Shutdown with a token -------------------------------------------------------- */

typedef struct
{
  Module *m;
  gint    cancelled;   /* atomic */
  guint   log_length;  /* the log's length when the token was cancelled */
} Token;

static void
on_token_recorded (GCancellable *token,
                   gpointer      user_data)
{
  Token *t = user_data;

  t->log_length = spark_test_log_length (&t->m->log);
  g_atomic_int_set (&t->cancelled, TRUE);
  g_main_context_wakeup (NULL);
}

/* The token is cancelled after everything queued before the Shutdown
 * message was handled; nothing is handled after it. */
static void
test_shutdown_token (Fixture       *f,
                     gconstpointer  data)
{
  g_autoptr(SparkDispatcher) other = spark_module_server_create_dispatcher (f->s.server);
  g_autoptr(GCancellable) token = g_cancellable_new ();
  g_autoptr(GError) error = NULL;
  Outcome blocker = { 0 }, queued = { 0 }, late = { 0 };
  Token t = { 0 };

  t.m = f->m;
  g_cancellable_connect (token, G_CALLBACK (on_token_recorded), &t, NULL);

  request_via (f->s.dispatcher, VIA_ASYNC, "block-ignore", NULL, NULL, NULL, &blocker);
  spark_test_wait_count (NULL, &f->m->entered, 1);
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "log", g_variant_new_int32 (1), NULL, &error));
  request_via (f->s.dispatcher, VIA_FULL, "echo", g_variant_new_int32 (2), NULL, NULL, &queued);
  g_assert_true (spark_dispatcher_try_send_command (other, "log", g_variant_new_int32 (3), &error));
  g_assert_no_error (error);

  g_assert_true (spark_dispatcher_send_shutdown (f->s.dispatcher, token, &error));
  g_assert_no_error (error);

  /* Closed at once, for every dispatcher. */
  g_assert_false (spark_dispatcher_try_send_command (other, "log", g_variant_new_int32 (4), &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
  request_via (other, VIA_ASYNC, "echo", g_variant_new_int32 (5), NULL, NULL, &late);
  outcome_wait (&late, VIA_ASYNC);
  assert_outcome_error (&late, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  outcome_clear (&late);
  g_assert_false (g_cancellable_is_cancelled (token));

  release_blocker (f->m, &blocker);
  outcome_wait (&queued, VIA_FULL);
  assert_outcome_int32 (&queued, 2);
  outcome_clear (&queued);
  spark_test_wait_flag (NULL, &t.cancelled);
  g_assert_cmpuint (t.log_length, ==, 4);

  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpuint (spark_test_log_length (&f->m->log), ==, 4);
  assert_log (f->m, "block-ignore log:1 echo:2 log:3");
}

/* Async results: recycled unless kept or watched ---------------------------
 *
 * A request_async() result nobody kept is reused for a later request on the
 * same context. These tests check that reuse is invisible: a result that is
 * referenced, or that carries data, a weak reference or a signal handler,
 * behaves exactly as a new object that gets finalized would. */

typedef enum
{
  USE_FINISH,       /* finish in the callback, keep nothing */
  USE_KEEP,         /* keep a reference; finish later */
  USE_DATA,         /* attach data with a destroy notify */
  USE_WEAK_REF,     /* g_object_weak_ref() */
  USE_WEAK_POINTER, /* a GWeakRef */
  USE_SIGNAL,       /* connect a ::notify handler with a destroy notify */
} ResultUse;

typedef struct
{
  ResultUse     use;
  gint          done;       /* atomic */
  GAsyncResult *seen;       /* not a reference: compared only */
  GAsyncResult *kept;       /* USE_KEEP: a reference */
  gint          released;   /* atomic: a destroy or weak notify ran */
  GWeakRef      weak;       /* USE_WEAK_POINTER */
  gint32        value;      /* the echoed reply, when finished in the callback */
  gboolean      had_data;   /* the result already carried "probe" data */
} ResultProbe;

static void
probe_released (gpointer data)
{
  ResultProbe *p = data;

  g_atomic_int_inc (&p->released);
}

static void
probe_weak_notify (gpointer  data,
                   GObject  *where_the_object_was)
{
  probe_released (data);
}

static void
probe_closure_released (gpointer  data,
                        GClosure *closure)
{
  probe_released (data);
}

static void
probe_on_notify (GObject    *object,
                 GParamSpec *pspec,
                 gpointer    data)
{
  g_assert_not_reached ();
}

static gint32
probe_finish (GObject      *source,
              GAsyncResult *result)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GVariant) reply = NULL;

  reply = spark_dispatcher_request_finish (SPARK_DISPATCHER (source), result, &error);
  g_assert_no_error (error);
  g_assert_nonnull (reply);
  return g_variant_get_int32 (reply);
}

static void
probe_cb (GObject      *source,
          GAsyncResult *result,
          gpointer      user_data)
{
  ResultProbe *p = user_data;
  g_autoptr(GObject) result_source = g_async_result_get_source_object (result);

  /* Whether new or reused, the result describes this request only. */
  g_assert_true (result_source == source);
  g_assert_true (g_async_result_get_user_data (result) == p);
  g_assert_true (g_async_result_is_tagged (result, spark_dispatcher_request_async));
  p->had_data = g_object_get_data (G_OBJECT (result), "probe") != NULL;
  p->seen = result;

  switch (p->use)
    {
    case USE_FINISH:
      break;
    case USE_KEEP:
      p->kept = g_object_ref (result);
      break;
    case USE_DATA:
      g_object_set_data_full (G_OBJECT (result), "probe", p, probe_released);
      break;
    case USE_WEAK_REF:
      g_object_weak_ref (G_OBJECT (result), probe_weak_notify, p);
      break;
    case USE_WEAK_POINTER:
      g_weak_ref_init (&p->weak, result);
      break;
    case USE_SIGNAL:
      g_signal_connect_data (result, "notify", G_CALLBACK (probe_on_notify),
                             p, probe_closure_released, 0);
      break;
    default:
      g_assert_not_reached ();
    }

  if (p->use != USE_KEEP)
    p->value = probe_finish (source, result);
  g_atomic_int_set (&p->done, 1);
}

static void
probe_request (SparkDispatcher *dispatcher,
               ResultProbe     *p,
               gint32           value)
{
  spark_dispatcher_request_async (dispatcher, "echo", g_variant_new_int32 (value),
                                  G_VARIANT_TYPE_INT32, NULL, probe_cb, p);
  /* Delivery releases the result right after the callback, in the same
   * dispatch: by the time the wait returns, that has happened too. */
  spark_test_wait_flag (NULL, &p->done);
  g_assert_false (p->had_data);
}

/* Results nobody kept are reused, across dispatchers, and do not keep
 * their dispatcher alive. */
static void
test_async_result_recycled (Fixture       *f,
                            gconstpointer  data)
{
  SparkDispatcher *first = spark_module_server_create_dispatcher (f->s.server);
  ResultProbe a = { USE_FINISH }, b = { USE_FINISH }, c = { USE_FINISH };

  probe_request (first, &a, 1);
  g_assert_cmpint (a.value, ==, 1);

  probe_request (f->s.dispatcher, &b, 2);
  g_assert_cmpint (b.value, ==, 2);
  g_assert_true (b.seen == a.seen);

  /* The spare result served @first last. */
  probe_request (first, &c, 3);
  g_assert_cmpint (c.value, ==, 3);
  g_assert_true (c.seen == a.seen);

  /* Once the server's thread is done (it drops its references to the
   * requests just after replying), only the spare result could still hold
   * @first: it does not. */
  spark_test_shutdown (f->s.server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_object_add_weak_pointer (G_OBJECT (first), (gpointer *) &first);
  g_object_unref (first);
  g_assert_null (first);
}

/* A result the callback keeps is never handed to another request, and can
 * be finished after later requests completed. */
static void
test_async_result_kept (Fixture       *f,
                        gconstpointer  data)
{
  ResultProbe kept = { USE_KEEP }, later = { USE_FINISH }, again = { USE_FINISH };
  GAsyncResult *result;

  probe_request (f->s.dispatcher, &kept, 10);
  probe_request (f->s.dispatcher, &later, 20);
  probe_request (f->s.dispatcher, &again, 30);
  g_assert_true (later.seen != kept.seen);
  g_assert_true (again.seen != kept.seen);
  g_assert_cmpint (later.value, ==, 20);
  g_assert_cmpint (again.value, ==, 30);

  result = g_steal_pointer (&kept.kept);
  g_assert_true (g_async_result_get_user_data (result) == &kept);
  g_assert_cmpint (probe_finish (G_OBJECT (f->s.dispatcher), result), ==, 10);
  g_assert_finalize_object (result);
}

/* Data, weak references and signal handlers attached in a callback see the
 * result go as if it were finalized when the callback returns; the next
 * result carries none of them. */
static void
test_async_result_watched (Fixture       *f,
                           gconstpointer  data)
{
  ResultUse use = GPOINTER_TO_INT (f->s.options->data);
  ResultProbe warm = { USE_FINISH }, watched = { use }, next = { USE_FINISH };

  /* A spare result first, so that the watched request gets a reused one. */
  probe_request (f->s.dispatcher, &warm, 1);
  probe_request (f->s.dispatcher, &watched, 2);
  g_assert_true (watched.seen == warm.seen);
  g_assert_cmpint (watched.value, ==, 2);

  if (use == USE_WEAK_POINTER)
    {
      GObject *object = g_weak_ref_get (&watched.weak);

      g_assert_null (object);
      g_weak_ref_clear (&watched.weak);
    }
  else
    g_assert_cmpint (g_atomic_int_get (&watched.released), ==, 1);

  probe_request (f->s.dispatcher, &next, 3);
  g_assert_cmpint (next.value, ==, 3);
  g_assert_cmpint (g_atomic_int_get (&watched.released), ==, use == USE_WEAK_POINTER ? 0 : 1);
}

/* Main --------------------------------------------------------------------- */

/* Nested main loops ----------------------------------------------------------
 *
 * A reply callback that runs a main loop of its own on the same context (a
 * modal dialog, a sync-over-async helper) still receives replies, as it
 * would with GTask: each level sends the next request and iterates until
 * its reply came. A guard timeout makes a lost reply a failure, not a
 * hang. */

#define NEST_MAX 3

typedef struct _Nest Nest;

typedef struct
{
  Nest *nest;
  gint  level;
} NestStep;

struct _Nest
{
  SparkDispatcher *dispatcher;
  Via              via;
  gint             depth;            /* nested loops wanted */
  gint             stuck;            /* atomic: the guard fired */
  gint             deepest;          /* the deepest loop that got its reply */
  Outcome          outcomes[NEST_MAX + 1];
  NestStep         steps[NEST_MAX + 1];
};

static gboolean
set_flag_cb (gpointer data)
{
  g_atomic_int_set ((gint *) data, TRUE);
  return G_SOURCE_REMOVE;
}

/* Iterates the thread-default context until *@flag is set, or for at most
 * 30 s, then sets *@stuck. */
static void
wait_flag_or_give_up (gint *flag,
                      gint *stuck)
{
  GSource *guard = g_timeout_source_new_seconds (30);

  g_source_set_callback (guard, set_flag_cb, stuck, NULL);
  g_source_attach (guard, g_main_context_get_thread_default ());

  while (!g_atomic_int_get (flag) && !g_atomic_int_get (stuck))
    g_main_context_iteration (NULL, TRUE);

  g_source_destroy (guard);
  g_source_unref (guard);
}

static void nest_send (Nest *nest,
                       gint  level);

static void
nest_deeper (NestStep *step)
{
  Nest *nest = step->nest;
  gint next = step->level + 1;

  if (step->level >= nest->depth || g_atomic_int_get (&nest->stuck))
    return;

  nest_send (nest, next);
  wait_flag_or_give_up (&nest->outcomes[next].done, &nest->stuck);
  if (g_atomic_int_get (&nest->outcomes[next].done))
    nest->deepest = MAX (nest->deepest, next);
}

static void
nest_async_cb (GObject      *source,
               GAsyncResult *result,
               gpointer      user_data)
{
  NestStep *step = user_data;

  outcome_async_cb (source, result, &step->nest->outcomes[step->level]);
  nest_deeper (step);
}

static void
nest_full_cb (GVariant     *reply,
              const GError *error,
              gpointer      user_data)
{
  NestStep *step = user_data;

  outcome_full_cb (reply, error, &step->nest->outcomes[step->level]);
  nest_deeper (step);
}

static void
nest_send (Nest *nest,
           gint  level)
{
  NestStep *step = &nest->steps[level];

  step->nest = nest;
  step->level = level;

  if (nest->via == VIA_ASYNC)
    spark_dispatcher_request_async (nest->dispatcher, "echo", g_variant_new_int32 (level), NULL, NULL,
                                    nest_async_cb, step);
  else
    spark_dispatcher_request_full (nest->dispatcher, "echo", g_variant_new_int32 (level), NULL, NULL,
                                   nest_full_cb, step, NULL);
  g_atomic_int_set (&nest->outcomes[level].returned, TRUE);
}

static void
check_nested_loop (Fixture *f,
                   Via      via,
                   gint     depth)
{
  Nest nest = { 0 };

  nest.dispatcher = f->s.dispatcher;
  nest.via = via;
  nest.depth = depth;

  nest_send (&nest, 0);
  wait_flag_or_give_up (&nest.outcomes[0].done, &nest.stuck);

  g_assert_false (g_atomic_int_get (&nest.stuck));
  g_assert_cmpint (nest.deepest, ==, depth);
  for (gint level = 0; level <= depth; level++)
    {
      g_assert_cmpint (g_atomic_int_get (&nest.outcomes[level].done), ==, 1);
      assert_outcome_int32 (&nest.outcomes[level], level);
      outcome_clear (&nest.outcomes[level]);
    }
}

static void
test_nested_loop_async (Fixture       *f,
                        gconstpointer  data)
{
  check_nested_loop (f, VIA_ASYNC, GPOINTER_TO_INT (f->s.options->data));
}

static void
test_nested_loop_full (Fixture       *f,
                       gconstpointer  data)
{
  check_nested_loop (f, VIA_FULL, GPOINTER_TO_INT (f->s.options->data));
}

typedef struct
{
  Module          *blocked;      /* the full server's module */
  SparkDispatcher *full;         /* to the full server */
  gint             stuck;        /* atomic */
  Outcome          outer;
  Outcome          command;
} RoomNest;

static void
room_nest_cb (GVariant     *reply,
              const GError *error,
              gpointer      user_data)
{
  RoomNest *r = user_data;

  outcome_record (&r->outer, reply, error);

  /* Waits for room, which comes once the blocked handler returns. */
  spark_dispatcher_send_command_async (r->full, "log", g_variant_new_int32 (2), NULL,
                                       outcome_command_cb, &r->command);
  g_atomic_int_set (&r->command.returned, TRUE);
  spark_test_gate_open (&r->blocked->gate);
  wait_flag_or_give_up (&r->command.done, &r->stuck);
}

/* send_command_async that waited for room completes in a nested loop. */
static void
test_nested_loop_room (void)
{
  Module *blocked = module_new ();
  Module *m = module_new ();
  g_autoptr(SparkDispatcher) full = NULL;
  Outcome blocker = { 0 };
  g_autoptr(SparkModuleServer) full_server = full_server_new (blocked, 1, &full, &blocker);
  g_autoptr(SparkModuleServer) server = module_server_new_in_thread (m, 0);
  g_autoptr(SparkDispatcher) dispatcher = spark_module_server_create_dispatcher (server);
  RoomNest r = { 0 };

  r.blocked = blocked;
  r.full = full;

  spark_dispatcher_request_full (dispatcher, "echo", g_variant_new_int32 (1), NULL, NULL,
                                 room_nest_cb, &r, NULL);
  g_atomic_int_set (&r.outer.returned, TRUE);
  wait_flag_or_give_up (&r.outer.done, &r.stuck);

  g_assert_false (g_atomic_int_get (&r.stuck));
  assert_outcome_int32 (&r.outer, 1);
  g_assert_cmpint (g_atomic_int_get (&r.command.done), ==, 1);
  g_assert_no_error (r.command.error);

  release_blocker (blocked, &blocker);
  spark_test_wait_count (NULL, &blocked->n_commands, 2);
  spark_test_shutdown (full_server, SPARK_SHUTDOWN_MODE_DRAIN);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  assert_log (blocked, "block-ignore log:1 log:2");
  outcome_clear (&r.outer);
  outcome_clear (&r.command);
  module_free (blocked);
  module_free (m);
}

int
main (int argc, char *argv[])
{
  g_test_init (&argc, &argv, NULL);

#define ADD(path, options, func) \
  g_test_add ("/spark/dispatcher/" path, Fixture, &options, fixture_setup, func, fixture_teardown)
#define ADD_DATA(path, options, data, func) \
  g_test_add ("/spark/dispatcher/" path, Fixture, spark_test_server_options (&options, data), \
              fixture_setup, func, fixture_teardown)

  ADD ("async-result/recycled", in_thread, test_async_result_recycled);
  ADD ("async-result/kept", in_thread, test_async_result_kept);
  ADD_DATA ("async-result/watched/data", in_thread, GINT_TO_POINTER (USE_DATA), test_async_result_watched);
  ADD_DATA ("async-result/watched/weak-ref", in_thread, GINT_TO_POINTER (USE_WEAK_REF), test_async_result_watched);
  ADD_DATA ("async-result/watched/weak-pointer", in_thread, GINT_TO_POINTER (USE_WEAK_POINTER),
            test_async_result_watched);
  ADD_DATA ("async-result/watched/signal", in_thread, GINT_TO_POINTER (USE_SIGNAL), test_async_result_watched);
  add_via_tests ("request/reply", &in_thread, fixture_setup, test_request_reply, FALSE);
  add_via_tests ("request/caller-context", &in_thread, fixture_setup, test_request_context, TRUE);
  add_via_tests ("request/same-context", &on_default, fixture_setup, test_request_same_context, TRUE);
  add_via_tests ("request/handler-error", &in_thread, fixture_setup, test_request_handler_error, FALSE);
  add_via_tests ("request/no-reply", &in_thread, fixture_setup, test_request_no_reply, FALSE);
  add_via_tests ("request/type-mismatch", &in_thread, fixture_setup, test_request_type_mismatch, FALSE);
  add_via_tests ("request/null-parameters", &in_thread, fixture_setup, test_request_null_parameters, FALSE);
  add_via_tests ("request/long-name", &plain, name_setup, test_request_long_name, FALSE);

  ADD ("closed/never-started", not_started, test_closed_never_started);
  ADD ("closed/after-shutdown", in_thread, test_closed_after_shutdown);
  ADD ("closed/after-send-shutdown", in_thread, test_closed_after_send_shutdown);

  ADD ("command/send", in_thread, test_command_send);
  ADD ("command/try-send", in_thread, test_command_try_send);
  ADD ("command/async", in_thread, test_command_async);
  ADD ("command/order", in_thread, test_command_order);
  g_test_add_func ("/spark/dispatcher/command/reused-blocks", test_command_reused_blocks);
  ADD ("command/failure-signal", in_thread, test_command_failure_signal);
  ADD ("command/failure-warning", on_default, test_command_failure_warning);
  ADD ("command/cancelled-before", in_thread, test_command_cancelled_before);
  ADD ("command/cancel-after-queued", in_thread, test_command_cancel_after_queued);
  ADD ("bad-input", in_thread, test_bad_input);

  add_via_tests ("cancel/before", &in_thread, fixture_setup, test_cancel_before, FALSE);
  add_via_tests ("cancel/queued", &in_thread, fixture_setup, test_cancel_queued, FALSE);
  add_via_tests ("cancel/running", &in_thread, fixture_setup, test_cancel_running, FALSE);
  add_via_tests ("cancel/after-completion", &in_thread, fixture_setup, test_cancel_after, FALSE);
  add_via_tests ("cancel/during-reply", &in_thread, fixture_setup, test_cancel_during_reply, FALSE);

  add_via_tests ("timeout/unanswered", &plain_abort, holding_setup, test_timeout_unanswered, FALSE);
  ADD ("timeout/stuck-handler", in_thread, test_timeout_stuck_handler);
  add_via_tests ("timeout/handler-cancellable", &in_thread, fixture_setup, test_timeout_handler_cancellable, FALSE);
  g_test_add ("/spark/dispatcher/timeout/none", Fixture, &plain, holding_setup, test_timeout_none, fixture_teardown);

  ADD ("backpressure/try-full", bounded_2, test_backpressure_try_full);
  ADD ("backpressure/send-blocks", bounded_1, test_backpressure_send_blocks);
  ADD ("backpressure/send-cancelled", bounded_1, test_backpressure_send_cancelled);
  ADD ("backpressure/async-command-waits", bounded_1, test_backpressure_async_command_waits);
  ADD ("backpressure/async-command-cancelled", bounded_1, test_backpressure_async_command_cancelled);
  add_via_tests ("backpressure/request-waits", &bounded_1, fixture_setup, test_backpressure_request_waits, FALSE);
  add_via_tests ("backpressure/request-cancelled", &bounded_1, fixture_setup, test_backpressure_request_cancelled,
                 FALSE);
  ADD ("backpressure/shutdown-when-full", bounded_2, test_backpressure_shutdown_when_full);
  ADD_DATA ("backpressure/closed-while-waiting/send-shutdown", bounded_1, GUINT_TO_POINTER (FALSE),
            test_backpressure_closed_while_waiting);
  ADD_DATA ("backpressure/closed-while-waiting/server-shutdown", bounded_1, GUINT_TO_POINTER (TRUE),
            test_backpressure_closed_while_waiting);
  g_test_add_func ("/spark/dispatcher/backpressure/pending", test_backpressure_pending);

  ADD ("would-deadlock/handler-request-sync", in_thread, test_deadlock_handler_request_sync);
  ADD ("would-deadlock/handler-send-full", bounded_1, test_deadlock_handler_send_full);
  ADD ("would-deadlock/handler-try-send", in_thread, test_deadlock_try_send_from_handler);
  ADD ("would-deadlock/start-thread", bounded_1_on_default, test_deadlock_start_thread);
  g_test_add_func ("/spark/dispatcher/would-deadlock/start-thread-other-iterator",
                   test_deadlock_start_thread_other_iterator);

  add_via_tests ("timeout/waiting-for-room", &bounded_1, fixture_setup, test_timeout_waiting_for_room, FALSE);
  ADD ("threads/many", in_thread, test_threads_many);
  g_test_add_func ("/spark/dispatcher/dropped/in-flight", test_dropped_in_flight);
  ADD ("shutdown/token", in_thread, test_shutdown_token);
  for (gint depth = 1; depth <= NEST_MAX; depth++)
    {
      g_autofree char *async_path = g_strdup_printf ("/spark/dispatcher/nested-loop/async/%d", depth);
      g_autofree char *full_path = g_strdup_printf ("/spark/dispatcher/nested-loop/full/%d", depth);
      const SparkTestServerOptions *options = spark_test_server_options (&in_thread, GINT_TO_POINTER (depth));

      g_test_add (async_path, Fixture, options, fixture_setup, test_nested_loop_async, fixture_teardown);
      g_test_add (full_path, Fixture, options, fixture_setup, test_nested_loop_full, fixture_teardown);
    }
  g_test_add_func ("/spark/dispatcher/nested-loop/room", test_nested_loop_room);

#undef ADD
#undef ADD_DATA

  return spark_test_run ();
}
