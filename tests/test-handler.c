/* test-handler.c: SparkHandler, its public wrappers and spark_func_handler_new()
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include "spark-test-util.h"

#define TEST_ERROR (g_quark_from_static_string ("spark-test-handler-error"))

/* Outcomes -------------------------------------------------------------------- */

/* Sends a request from the main thread and waits for its outcome there. */
static void
request_and_wait (SparkDispatcher    *dispatcher,
                  const char         *name,
                  GVariant           *parameters,
                  const GVariantType *reply_type,
                  SparkTestOutcome   *outcome)
{
  spark_dispatcher_request_full (dispatcher, name, parameters, reply_type, NULL,
                                 spark_test_outcome_cb, outcome, NULL);
  spark_test_wait_flag (NULL, &outcome->done);
}

/* A recording handler: every vfunc -------------------------------------------- */

#define TEST_TYPE_RECORDER (test_recorder_get_type ())
G_DECLARE_FINAL_TYPE (TestRecorder, test_recorder, TEST, RECORDER, GObject)

struct _TestRecorder
{
  GObject          parent_instance;

  gint             n_request;     /* atomic */
  gint             n_command;     /* atomic */
  gint             n_invocation;  /* atomic */
  char            *name;
  GVariant        *parameters;    /* the pointer as received, a reference */
  GCancellable    *cancellable;   /* the pointer as received, a reference */
  SparkInvocation *invocation;    /* a reference */
  GVariant        *returned;      /* what handle_request returned last, a reference */
};

static void test_recorder_iface_init (SparkHandlerInterface *iface);

G_DEFINE_FINAL_TYPE_WITH_CODE (TestRecorder, test_recorder, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, test_recorder_iface_init))

static void
test_recorder_record (TestRecorder *self,
                      const char   *name,
                      GVariant     *parameters,
                      GCancellable *cancellable)
{
  g_free (self->name);
  self->name = g_strdup (name);
  g_clear_pointer (&self->parameters, g_variant_unref);
  self->parameters = parameters ? g_variant_ref (parameters) : NULL;
  g_clear_object (&self->cancellable);
  self->cancellable = cancellable ? g_object_ref (cancellable) : NULL;
}

static GVariant *
test_recorder_handle_request (SparkHandler  *handler,
                              const char    *name,
                              GVariant      *parameters,
                              GCancellable  *cancellable,
                              GError       **error)
{
  TestRecorder *self = TEST_RECORDER (handler);
  GVariant *reply;

  test_recorder_record (self, name, parameters, cancellable);
  g_atomic_int_inc (&self->n_request);

  if (g_str_equal (name, "fail"))
    {
      g_set_error_literal (error, TEST_ERROR, 7, "the request failed");
      return NULL;
    }

  if (g_str_equal (name, "null"))
    return NULL;

  /* Floating, as handlers written in C usually return it. */
  reply = g_variant_new_string ("request-reply");
  g_clear_pointer (&self->returned, g_variant_unref);
  self->returned = g_variant_ref (reply);   /* a reference of ours: the floating one stays */
  return reply;
}

static gboolean
test_recorder_handle_command (SparkHandler  *handler,
                              const char    *name,
                              GVariant      *parameters,
                              GCancellable  *cancellable,
                              GError       **error)
{
  TestRecorder *self = TEST_RECORDER (handler);

  test_recorder_record (self, name, parameters, cancellable);
  g_atomic_int_inc (&self->n_command);

  if (g_str_equal (name, "fail"))
    {
      g_set_error_literal (error, TEST_ERROR, 8, "the command failed");
      return FALSE;
    }

  return TRUE;
}

static void
test_recorder_handle_invocation (SparkHandler    *handler,
                                 SparkInvocation *invocation)
{
  TestRecorder *self = TEST_RECORDER (handler);

  test_recorder_record (self,
                        spark_invocation_get_name (invocation),
                        spark_invocation_get_parameters (invocation),
                        spark_invocation_get_cancellable (invocation));
  g_clear_object (&self->invocation);
  self->invocation = g_object_ref (invocation);
  g_atomic_int_inc (&self->n_invocation);

  spark_invocation_return_value (invocation, g_variant_new_string ("invocation-reply"));
}

static void
test_recorder_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_request = test_recorder_handle_request;
  iface->handle_command = test_recorder_handle_command;
  iface->handle_invocation = test_recorder_handle_invocation;
}

static void
test_recorder_finalize (GObject *object)
{
  TestRecorder *self = TEST_RECORDER (object);

  g_free (self->name);
  g_clear_pointer (&self->parameters, g_variant_unref);
  g_clear_pointer (&self->returned, g_variant_unref);
  g_clear_object (&self->cancellable);
  g_clear_object (&self->invocation);

  G_OBJECT_CLASS (test_recorder_parent_class)->finalize (object);
}

static void
test_recorder_class_init (TestRecorderClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = test_recorder_finalize;
}

static void
test_recorder_init (TestRecorder *self)
{
}

/* A handler with only handle_request: its handle_invocation is the default. */

#define TEST_TYPE_SYNC_ONLY (test_sync_only_get_type ())
G_DECLARE_FINAL_TYPE (TestSyncOnly, test_sync_only, TEST, SYNC_ONLY, GObject)

struct _TestSyncOnly
{
  GObject   parent_instance;
  gint      n_request;   /* atomic */
  GVariant *returned;    /* a reference */
};

static void test_sync_only_iface_init (SparkHandlerInterface *iface);

G_DEFINE_FINAL_TYPE_WITH_CODE (TestSyncOnly, test_sync_only, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, test_sync_only_iface_init))

static GVariant *
test_sync_only_handle_request (SparkHandler  *handler,
                               const char    *name,
                               GVariant      *parameters,
                               GCancellable  *cancellable,
                               GError       **error)
{
  TestSyncOnly *self = TEST_SYNC_ONLY (handler);
  GVariant *reply;

  g_atomic_int_inc (&self->n_request);

  if (g_str_equal (name, "fail"))
    {
      g_set_error_literal (error, TEST_ERROR, 9, "the sync request failed");
      return NULL;
    }

  if (g_str_equal (name, "null"))
    return NULL;

  reply = g_variant_new_printf ("sync:%s", name);   /* floating */
  g_clear_pointer (&self->returned, g_variant_unref);
  self->returned = g_variant_ref (reply);
  return reply;
}

static void
test_sync_only_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_request = test_sync_only_handle_request;
}

static void
test_sync_only_finalize (GObject *object)
{
  TestSyncOnly *self = TEST_SYNC_ONLY (object);

  g_clear_pointer (&self->returned, g_variant_unref);

  G_OBJECT_CLASS (test_sync_only_parent_class)->finalize (object);
}

static void
test_sync_only_class_init (TestSyncOnlyClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = test_sync_only_finalize;
}

static void
test_sync_only_init (TestSyncOnly *self)
{
}

/* A handler that implements nothing. */

#define TEST_TYPE_EMPTY (test_empty_get_type ())
G_DECLARE_FINAL_TYPE (TestEmpty, test_empty, TEST, EMPTY, GObject)

struct _TestEmpty
{
  GObject parent_instance;
};

static void
test_empty_iface_init (SparkHandlerInterface *iface)
{
}

G_DEFINE_FINAL_TYPE_WITH_CODE (TestEmpty, test_empty, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, test_empty_iface_init))

static void
test_empty_class_init (TestEmptyClass *klass)
{
}

static void
test_empty_init (TestEmpty *self)
{
}

/* A handler that hands every invocation to another handler through the
 * public wrapper spark_handler_handle_invocation(). */

#define TEST_TYPE_FORWARD (test_forward_get_type ())
G_DECLARE_FINAL_TYPE (TestForward, test_forward, TEST, FORWARD, GObject)

struct _TestForward
{
  GObject          parent_instance;
  SparkHandler    *target;       /* a reference */
  gpointer         invocation;   /* the last one forwarded: compared only, not a
                                  * reference (a held invocation keeps its
                                  * request going) */
  gint             n_forwarded;  /* atomic */
};

static void test_forward_iface_init (SparkHandlerInterface *iface);

G_DEFINE_FINAL_TYPE_WITH_CODE (TestForward, test_forward, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, test_forward_iface_init))

static void
test_forward_handle_invocation (SparkHandler    *handler,
                                SparkInvocation *invocation)
{
  TestForward *self = TEST_FORWARD (handler);

  self->invocation = invocation;
  g_atomic_int_inc (&self->n_forwarded);

  spark_handler_handle_invocation (self->target, invocation);
}

static void
test_forward_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_invocation = test_forward_handle_invocation;
}

static void
test_forward_finalize (GObject *object)
{
  TestForward *self = TEST_FORWARD (object);

  g_clear_object (&self->target);

  G_OBJECT_CLASS (test_forward_parent_class)->finalize (object);
}

static void
test_forward_class_init (TestForwardClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = test_forward_finalize;
}

static void
test_forward_init (TestForward *self)
{
}

static TestForward *
test_forward_new (SparkHandler *target)
{
  TestForward *self = g_object_new (TEST_TYPE_FORWARD, NULL);

  self->target = g_object_ref (target);
  return self;
}

/* A server on the main thread's default context, for one test. */
typedef struct
{
  SparkModuleServer *server;
  SparkDispatcher   *dispatcher;
} Served;

static void
served_start (Served       *served,
              SparkHandler *handler)
{
  GError *error = NULL;

  served->server = spark_module_server_new (handler);
  g_assert_true (spark_module_server_start (served->server, NULL, &error));
  g_assert_no_error (error);
  served->dispatcher = spark_module_server_create_dispatcher (served->server);
}

static void
served_stop (Served *served)
{
  spark_test_shutdown (served->server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_clear_object (&served->dispatcher);
  g_clear_object (&served->server);
}

/* Tests ------------------------------------------------------------------------ */

static void
test_wrapper_request (void)
{
  TestRecorder *recorder = g_object_new (TEST_TYPE_RECORDER, NULL);
  SparkHandler *handler = SPARK_HANDLER (recorder);
  GCancellable *cancellable = g_cancellable_new ();
  GVariant *parameters = g_variant_ref_sink (g_variant_new ("(si)", "key", 3));
  GError *error = NULL;
  GVariant *reply;

  reply = spark_handler_handle_request (handler, "get", parameters, cancellable, &error);
  g_assert_no_error (error);
  g_assert_nonnull (reply);
  g_assert_true (reply == recorder->returned);
  g_assert_cmpstr (g_variant_get_string (reply, NULL), ==, "request-reply");
  g_variant_ref_sink (reply);
  g_variant_unref (reply);

  /* The vfunc got the very arguments given to the wrapper. */
  g_assert_cmpint (recorder->n_request, ==, 1);
  g_assert_cmpint (recorder->n_command, ==, 0);
  g_assert_cmpint (recorder->n_invocation, ==, 0);
  g_assert_cmpstr (recorder->name, ==, "get");
  g_assert_true (recorder->parameters == parameters);
  g_assert_true (recorder->cancellable == cancellable);

  /* NULL parameters and cancellable pass as NULL. */
  reply = spark_handler_handle_request (handler, "other", NULL, NULL, &error);
  g_assert_no_error (error);
  g_assert_nonnull (reply);
  g_variant_ref_sink (reply);
  g_variant_unref (reply);
  g_assert_cmpint (recorder->n_request, ==, 2);
  g_assert_cmpstr (recorder->name, ==, "other");
  g_assert_null (recorder->parameters);
  g_assert_null (recorder->cancellable);

  /* The vfunc's error comes out of the wrapper unchanged. */
  reply = spark_handler_handle_request (handler, "fail", NULL, NULL, &error);
  g_assert_null (reply);
  g_assert_error (error, TEST_ERROR, 7);
  g_assert_cmpstr (error->message, ==, "the request failed");
  g_clear_error (&error);
  g_assert_cmpint (recorder->n_request, ==, 3);

  g_variant_unref (parameters);
  g_object_unref (cancellable);
  g_object_unref (recorder);
}

static void
test_wrapper_command (void)
{
  TestRecorder *recorder = g_object_new (TEST_TYPE_RECORDER, NULL);
  SparkHandler *handler = SPARK_HANDLER (recorder);
  GCancellable *cancellable = g_cancellable_new ();
  GVariant *parameters = g_variant_ref_sink (g_variant_new_int32 (5));
  GError *error = NULL;

  g_assert_true (spark_handler_handle_command (handler, "log", parameters, cancellable, &error));
  g_assert_no_error (error);
  g_assert_cmpint (recorder->n_command, ==, 1);
  g_assert_cmpint (recorder->n_request, ==, 0);
  g_assert_cmpint (recorder->n_invocation, ==, 0);
  g_assert_cmpstr (recorder->name, ==, "log");
  g_assert_true (recorder->parameters == parameters);
  g_assert_true (recorder->cancellable == cancellable);

  g_assert_false (spark_handler_handle_command (handler, "fail", NULL, NULL, &error));
  g_assert_error (error, TEST_ERROR, 8);
  g_assert_cmpstr (error->message, ==, "the command failed");
  g_clear_error (&error);
  g_assert_cmpint (recorder->n_command, ==, 2);
  g_assert_null (recorder->parameters);
  g_assert_null (recorder->cancellable);

  g_variant_unref (parameters);
  g_object_unref (cancellable);
  g_object_unref (recorder);
}

/* spark_handler_handle_invocation() on a handler that overrides the vfunc:
 * the override gets the invocation, handle_request is not called. */
static void
test_wrapper_invocation (void)
{
  TestRecorder *recorder = g_object_new (TEST_TYPE_RECORDER, NULL);
  TestForward *forward = test_forward_new (SPARK_HANDLER (recorder));
  Served served = { NULL, NULL };
  SparkTestOutcome outcome = { 0, NULL, NULL };

  served_start (&served, SPARK_HANDLER (forward));

  request_and_wait (served.dispatcher, "ask", g_variant_new_int32 (1), NULL, &outcome);
  g_assert_no_error (outcome.error);
  g_assert_cmpstr (g_variant_get_string (outcome.reply, NULL), ==, "invocation-reply");

  g_assert_cmpint (forward->n_forwarded, ==, 1);
  g_assert_cmpint (recorder->n_invocation, ==, 1);
  g_assert_cmpint (recorder->n_request, ==, 0);
  g_assert_true (recorder->invocation == forward->invocation);
  g_assert_cmpstr (recorder->name, ==, "ask");
  g_assert_cmpint (g_variant_get_int32 (recorder->parameters), ==, 1);
  spark_test_outcome_clear (&outcome);

  served_stop (&served);
  g_object_unref (forward);
  g_object_unref (recorder);
}

/* The default handle_invocation calls handle_request and completes the
 * invocation with its reply, its error, or (NULL without an error) none. */
static void
test_default_invocation (void)
{
  TestSyncOnly *sync_only = g_object_new (TEST_TYPE_SYNC_ONLY, NULL);
  TestForward *forward = test_forward_new (SPARK_HANDLER (sync_only));
  Served served = { NULL, NULL };
  SparkTestOutcome outcome = { 0, NULL, NULL };

  served_start (&served, SPARK_HANDLER (forward));

  request_and_wait (served.dispatcher, "hello", NULL, G_VARIANT_TYPE_STRING, &outcome);
  g_assert_no_error (outcome.error);
  g_assert_cmpstr (g_variant_get_string (outcome.reply, NULL), ==, "sync:hello");
  g_assert_true (outcome.reply == sync_only->returned);
  g_assert_false (g_variant_is_floating (outcome.reply));
  g_assert_cmpint (sync_only->n_request, ==, 1);
  spark_test_outcome_clear (&outcome);

  request_and_wait (served.dispatcher, "fail", NULL, NULL, &outcome);
  g_assert_null (outcome.reply);
  g_assert_error (outcome.error, TEST_ERROR, 9);
  g_assert_cmpstr (outcome.error->message, ==, "the sync request failed");
  g_assert_cmpint (sync_only->n_request, ==, 2);
  spark_test_outcome_clear (&outcome);

  request_and_wait (served.dispatcher, "null", NULL, NULL, &outcome);
  g_assert_null (outcome.reply);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY);
  g_assert_cmpint (sync_only->n_request, ==, 3);
  spark_test_outcome_clear (&outcome);

  g_assert_cmpint (forward->n_forwarded, ==, 3);

  served_stop (&served);
  g_object_unref (forward);
  g_object_unref (sync_only);
}

/* The wrappers on a handler that implements nothing. */
static void
test_not_supported_direct (void)
{
  SparkHandler *handler = g_object_new (TEST_TYPE_EMPTY, NULL);
  TestForward *forward = test_forward_new (handler);
  Served served = { NULL, NULL };
  SparkTestOutcome outcome = { 0, NULL, NULL };
  GError *error = NULL;
  GVariant *reply;

  reply = spark_handler_handle_request (handler, "get", NULL, NULL, &error);
  g_assert_null (reply);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  g_assert_cmpstr (error->message, !=, "");
  g_clear_error (&error);

  g_assert_false (spark_handler_handle_command (handler, "log", NULL, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  g_assert_cmpstr (error->message, !=, "");
  g_clear_error (&error);

  /* The default handle_invocation, through the wrapper, fails the
   * invocation the same way. */
  served_start (&served, SPARK_HANDLER (forward));
  request_and_wait (served.dispatcher, "get", NULL, NULL, &outcome);
  g_assert_null (outcome.reply);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  spark_test_outcome_clear (&outcome);
  served_stop (&served);

  g_object_unref (forward);
  g_object_unref (handler);
}

/* The same handler served: requests fail NOT_SUPPORTED, commands are
 * reported by command-failed with NOT_SUPPORTED. */
static void
test_not_supported_served (void)
{
  SparkHandler *handler = g_object_new (TEST_TYPE_EMPTY, NULL);
  Served served = { NULL, NULL };
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkTestFailure failure = { 0, NULL, NULL, NULL, NULL };
  GError *error = NULL;

  served_start (&served, handler);
  g_signal_connect (served.server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failure);

  request_and_wait (served.dispatcher, "get", NULL, NULL, &outcome);
  g_assert_null (outcome.reply);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  spark_test_outcome_clear (&outcome);

  g_assert_true (spark_dispatcher_send_command (served.dispatcher, "log", g_variant_new_int32 (2),
                                                NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &failure.n, 1);
  g_assert_cmpstr (failure.name, ==, "log");
  g_assert_cmpint (g_variant_get_int32 (failure.parameters), ==, 2);
  g_assert_error (failure.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);

  served_stop (&served);
  spark_test_failure_clear (&failure);
  g_object_unref (handler);
}

typedef struct
{
  gint n_request;    /* atomic */
  gint n_command;    /* atomic */
  gint n_destroyed;  /* atomic */
} FuncData;

static GVariant *
func_request (const char    *name,
              GVariant      *parameters,
              GCancellable  *cancellable,
              gpointer       user_data,
              GError       **error)
{
  FuncData *data = user_data;

  g_assert_cmpint (data->n_destroyed, ==, 0);
  g_atomic_int_inc (&data->n_request);

  if (g_str_equal (name, "null"))
    return NULL;

  return g_variant_new_printf ("func:%s", name);
}

static gboolean
func_command (const char    *name,
              GVariant      *parameters,
              GCancellable  *cancellable,
              gpointer       user_data,
              GError       **error)
{
  FuncData *data = user_data;

  g_assert_cmpint (data->n_destroyed, ==, 0);
  g_atomic_int_inc (&data->n_command);
  return TRUE;
}

static void
func_destroy (gpointer user_data)
{
  FuncData *data = user_data;

  g_atomic_int_inc (&data->n_destroyed);
}

static void
test_func_request_only (void)
{
  FuncData data = { 0, 0, 0 };
  SparkHandler *handler = spark_func_handler_new (func_request, NULL, &data, func_destroy);
  Served served = { NULL, NULL };
  SparkTestOutcome outcome = { 0, NULL, NULL };
  SparkTestFailure failure = { 0, NULL, NULL, NULL, NULL };
  GError *error = NULL;
  GVariant *reply;

  g_assert_true (SPARK_IS_HANDLER (handler));

  /* Directly: requests work, commands are not supported. */
  reply = spark_handler_handle_request (handler, "direct", NULL, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (g_variant_get_string (reply, NULL), ==, "func:direct");
  g_variant_ref_sink (reply);
  g_variant_unref (reply);
  g_assert_false (spark_handler_handle_command (handler, "log", NULL, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  g_clear_error (&error);

  /* Served: the same. */
  served_start (&served, handler);
  g_signal_connect (served.server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failure);

  request_and_wait (served.dispatcher, "served", NULL, NULL, &outcome);
  g_assert_no_error (outcome.error);
  g_assert_cmpstr (g_variant_get_string (outcome.reply, NULL), ==, "func:served");
  spark_test_outcome_clear (&outcome);

  g_assert_true (spark_dispatcher_send_command (served.dispatcher, "log", NULL, NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &failure.n, 1);
  g_assert_cmpstr (failure.name, ==, "log");
  g_assert_null (failure.parameters);
  g_assert_error (failure.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);

  served_stop (&served);
  spark_test_failure_clear (&failure);

  g_assert_cmpint (data.n_request, ==, 2);
  g_assert_cmpint (data.n_command, ==, 0);
  g_assert_cmpint (data.n_destroyed, ==, 0);
  g_object_unref (handler);
  g_assert_cmpint (data.n_destroyed, ==, 1);
}

static void
test_func_command_only (void)
{
  FuncData data = { 0, 0, 0 };
  SparkHandler *handler = spark_func_handler_new (NULL, func_command, &data, func_destroy);
  Served served = { NULL, NULL };
  SparkTestOutcome outcome = { 0, NULL, NULL };
  GError *error = NULL;
  GVariant *reply;

  reply = spark_handler_handle_request (handler, "direct", NULL, NULL, &error);
  g_assert_null (reply);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  g_clear_error (&error);
  g_assert_true (spark_handler_handle_command (handler, "log", NULL, NULL, &error));
  g_assert_no_error (error);

  served_start (&served, handler);

  request_and_wait (served.dispatcher, "served", NULL, NULL, &outcome);
  g_assert_null (outcome.reply);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  spark_test_outcome_clear (&outcome);

  g_assert_true (spark_dispatcher_send_command (served.dispatcher, "log", NULL, NULL, &error));
  g_assert_no_error (error);
  spark_test_wait_count (NULL, &data.n_command, 2);

  served_stop (&served);

  g_assert_cmpint (data.n_request, ==, 0);
  g_assert_cmpint (data.n_destroyed, ==, 0);
  g_object_unref (handler);
  g_assert_cmpint (data.n_destroyed, ==, 1);
}

/* destroy runs once, when the handler is finalized: not before, even when
 * a server that ran it has stopped, and not for a NULL destroy. */
static void
test_func_destroy (void)
{
  FuncData data = { 0, 0, 0 };
  SparkHandler *handler = spark_func_handler_new (func_request, func_command, &data, func_destroy);
  SparkHandler *no_destroy;
  Served served = { NULL, NULL };
  SparkTestOutcome outcome = { 0, NULL, NULL };
  gpointer weak = handler;

  g_object_add_weak_pointer (G_OBJECT (handler), &weak);

  served_start (&served, handler);
  request_and_wait (served.dispatcher, "x", NULL, NULL, &outcome);
  g_assert_no_error (outcome.error);
  spark_test_outcome_clear (&outcome);

  /* The server holds the handler: dropping ours finalizes nothing. */
  g_object_unref (handler);
  g_assert_nonnull (weak);
  g_assert_cmpint (data.n_destroyed, ==, 0);

  spark_test_shutdown (served.server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpint (data.n_destroyed, ==, 0);
  g_clear_object (&served.dispatcher);
  g_clear_object (&served.server);

  g_assert_null (weak);
  g_assert_cmpint (data.n_destroyed, ==, 1);

  /* Without a destroy notify, nothing is called on the data. */
  no_destroy = spark_func_handler_new (func_request, NULL, &data, NULL);
  g_object_unref (no_destroy);
  g_assert_cmpint (data.n_destroyed, ==, 1);
}

/* handle_request returning NULL without an error: NO_REPLY, and the server
 * goes on with the next message; for a func handler and a handler type. */
static void
test_no_reply (void)
{
  FuncData data = { 0, 0, 0 };
  SparkHandler *handler = spark_func_handler_new (func_request, NULL, &data, NULL);
  SparkHandler *sync_only = g_object_new (TEST_TYPE_SYNC_ONLY, NULL);
  Served served = { NULL, NULL };
  SparkTestOutcome outcome = { 0, NULL, NULL };

  served_start (&served, handler);
  request_and_wait (served.dispatcher, "null", NULL, NULL, &outcome);
  g_assert_null (outcome.reply);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY);
  spark_test_outcome_clear (&outcome);

  request_and_wait (served.dispatcher, "after", NULL, NULL, &outcome);
  g_assert_no_error (outcome.error);
  g_assert_cmpstr (g_variant_get_string (outcome.reply, NULL), ==, "func:after");
  spark_test_outcome_clear (&outcome);
  served_stop (&served);

  served_start (&served, sync_only);
  request_and_wait (served.dispatcher, "null", NULL, NULL, &outcome);
  g_assert_null (outcome.reply);
  g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY);
  spark_test_outcome_clear (&outcome);

  request_and_wait (served.dispatcher, "after", NULL, NULL, &outcome);
  g_assert_no_error (outcome.error);
  g_assert_cmpstr (g_variant_get_string (outcome.reply, NULL), ==, "sync:after");
  spark_test_outcome_clear (&outcome);
  served_stop (&served);

  g_object_unref (sync_only);
  g_object_unref (handler);
}

/* A floating reply returned by handle_request is sunk: the requester gets
 * that very GVariant, no longer floating, and nothing leaks (valgrind). */
static void
on_async_reply (GObject      *source,
                GAsyncResult *result,
                gpointer      user_data)
{
  SparkTestOutcome *outcome = user_data;

  outcome->reply = spark_dispatcher_request_finish (SPARK_DISPATCHER (source), result, &outcome->error);
  g_atomic_int_set (&outcome->done, TRUE);
}

static void
test_floating_reply (void)
{
  TestSyncOnly *sync_only = g_object_new (TEST_TYPE_SYNC_ONLY, NULL);
  Served served = { NULL, NULL };
  SparkTestOutcome outcome = { 0, NULL, NULL };

  served_start (&served, SPARK_HANDLER (sync_only));

  /* request_full */
  request_and_wait (served.dispatcher, "float", NULL, G_VARIANT_TYPE_STRING, &outcome);
  g_assert_no_error (outcome.error);
  g_assert_true (outcome.reply == sync_only->returned);
  g_assert_false (g_variant_is_floating (outcome.reply));
  g_assert_cmpstr (g_variant_get_string (outcome.reply, NULL), ==, "sync:float");
  spark_test_outcome_clear (&outcome);

  /* request_async: the GTask path */
  spark_dispatcher_request_async (served.dispatcher, "float2", NULL, NULL, NULL,
                                  on_async_reply, &outcome);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_no_error (outcome.error);
  g_assert_true (outcome.reply == sync_only->returned);
  g_assert_false (g_variant_is_floating (outcome.reply));
  g_assert_cmpstr (g_variant_get_string (outcome.reply, NULL), ==, "sync:float2");
  spark_test_outcome_clear (&outcome);

  served_stop (&served);
  g_object_unref (sync_only);
}

/* The cancellable a sync handler receives is cancelled when its requester
 * cancels and when the request times out. The handler of "wait" waits for
 * its cancellable; "flush" returns at once. */
typedef struct
{
  GMutex   mutex;
  GCond    cond;
  gint     n_entered;      /* atomic */
  gint     n_saw_cancel;   /* atomic */
} Waiting;

static void
waiting_cancelled_cb (GCancellable *cancellable,
                      Waiting      *waiting)
{
  g_mutex_lock (&waiting->mutex);
  g_cond_broadcast (&waiting->cond);
  g_mutex_unlock (&waiting->mutex);
}

static GVariant *
wait_cancel_request (const char    *name,
                     GVariant      *parameters,
                     GCancellable  *cancellable,
                     gpointer       user_data,
                     GError       **error)
{
  Waiting *waiting = user_data;
  gulong id;

  if (g_str_equal (name, "flush"))
    return g_variant_new_string ("flushed");

  g_assert_true (G_IS_CANCELLABLE (cancellable));
  g_atomic_int_inc (&waiting->n_entered);
  g_main_context_wakeup (NULL);

  id = g_cancellable_connect (cancellable, G_CALLBACK (waiting_cancelled_cb), waiting, NULL);
  g_mutex_lock (&waiting->mutex);
  while (!g_cancellable_is_cancelled (cancellable))
    g_cond_wait (&waiting->cond, &waiting->mutex);
  g_mutex_unlock (&waiting->mutex);
  g_cancellable_disconnect (cancellable, id);

  g_atomic_int_inc (&waiting->n_saw_cancel);
  return g_variant_new_string ("after-cancel");
}

typedef struct
{
  Waiting            waiting;
  SparkHandler      *handler;
  SparkModuleServer *server;
  SparkDispatcher   *dispatcher;
} WaitServer;

static void
wait_server_start (WaitServer *ws)
{
  GError *error = NULL;

  g_mutex_init (&ws->waiting.mutex);
  g_cond_init (&ws->waiting.cond);
  ws->handler = spark_func_handler_new (wait_cancel_request, NULL, &ws->waiting, NULL);
  ws->server = spark_module_server_new (ws->handler);
  g_assert_true (spark_module_server_start_in_thread (ws->server, &error));
  g_assert_no_error (error);
  ws->dispatcher = spark_module_server_create_dispatcher (ws->server);
}

static void
wait_server_stop (WaitServer *ws)
{
  spark_test_shutdown (ws->server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_clear_object (&ws->dispatcher);
  g_clear_object (&ws->server);
  g_clear_object (&ws->handler);
  g_mutex_clear (&ws->waiting.mutex);
  g_cond_clear (&ws->waiting.cond);
}

static void
test_cancellable_requester (void)
{
  WaitServer ws = { { { 0 }, { 0 }, 0, 0 }, NULL, NULL, NULL };
  GCancellable *cancellable = g_cancellable_new ();
  SparkTestOutcome outcome = { 0, NULL, NULL };

  wait_server_start (&ws);

  spark_dispatcher_request_full (ws.dispatcher, "wait", NULL, NULL, cancellable, spark_test_outcome_cb, &outcome, NULL);
  spark_test_wait_count (NULL, &ws.waiting.n_entered, 1);
  g_cancellable_cancel (cancellable);

  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_null (outcome.reply);
  g_assert_error (outcome.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);

  /* The handler returned because its cancellable was cancelled (a DRAIN
   * waits for it). */
  wait_server_stop (&ws);
  g_assert_cmpint (ws.waiting.n_saw_cancel, ==, 1);

  spark_test_outcome_clear (&outcome);
  g_object_unref (cancellable);
}

static void
test_cancellable_timeout (void)
{
  WaitServer ws = { { { 0 }, { 0 }, 0, 0 }, NULL, NULL, NULL };
  SparkTestOutcome outcome = { 0, NULL, NULL };
  GError *error = NULL;

  wait_server_start (&ws);

  /* A short timeout can end the request before the server reaches it (the
   * handler never sees it): try again, longer, until the handler did. */
  for (gint timeout = 10; g_atomic_int_get (&ws.waiting.n_entered) == 0; timeout *= 4)
    {
      GVariant *reply;

      g_assert_cmpint (timeout, <, 60000);
      spark_dispatcher_set_timeout (ws.dispatcher, timeout);
      spark_dispatcher_request_full (ws.dispatcher, "wait", NULL, NULL, NULL, spark_test_outcome_cb, &outcome, NULL);
      spark_dispatcher_set_timeout (ws.dispatcher, -1);

      spark_test_wait_flag (NULL, &outcome.done);
      g_assert_null (outcome.reply);
      g_assert_error (outcome.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
      spark_test_outcome_clear (&outcome);

      /* Once this is answered, "wait" was handled or skipped. */
      reply = spark_dispatcher_request_sync (ws.dispatcher, "flush", NULL, NULL, NULL, &error);
      g_assert_no_error (error);
      g_variant_unref (reply);
    }

  g_assert_cmpint (ws.waiting.n_entered, ==, 1);
  g_assert_cmpint (ws.waiting.n_saw_cancel, ==, 1);

  wait_server_stop (&ws);
}

static void
test_bad_input (void)
{
  TestRecorder *recorder = g_object_new (TEST_TYPE_RECORDER, NULL);
  SparkHandler *handler = SPARK_HANDLER (recorder);
  GObject *not_a_handler = g_object_new (G_TYPE_OBJECT, NULL);
  GError *error = NULL;

  if (!g_test_undefined ())
    {
      g_object_unref (not_a_handler);
      g_object_unref (recorder);
      return;
    }

  /* handle_request */
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*spark_handler_handle_request*assertion*failed*");
  g_assert_null (spark_handler_handle_request (handler, NULL, NULL, NULL, &error));
  g_test_assert_expected_messages ();
  g_assert_no_error (error);

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*spark_handler_handle_request*assertion*failed*");
  g_assert_null (spark_handler_handle_request (handler, "", NULL, NULL, &error));
  g_test_assert_expected_messages ();
  g_assert_no_error (error);

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*spark_handler_handle_request*assertion*failed*");
  g_assert_null (spark_handler_handle_request (NULL, "get", NULL, NULL, &error));
  g_test_assert_expected_messages ();
  g_assert_no_error (error);

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*spark_handler_handle_request*assertion*failed*");
  g_assert_null (spark_handler_handle_request ((SparkHandler *) not_a_handler, "get", NULL, NULL, &error));
  g_test_assert_expected_messages ();
  g_assert_no_error (error);

  /* handle_command */
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*spark_handler_handle_command*assertion*failed*");
  g_assert_false (spark_handler_handle_command (handler, NULL, NULL, NULL, &error));
  g_test_assert_expected_messages ();
  g_assert_no_error (error);

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*spark_handler_handle_command*assertion*failed*");
  g_assert_false (spark_handler_handle_command (handler, "", NULL, NULL, &error));
  g_test_assert_expected_messages ();
  g_assert_no_error (error);

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*spark_handler_handle_command*assertion*failed*");
  g_assert_false (spark_handler_handle_command (NULL, "log", NULL, NULL, &error));
  g_test_assert_expected_messages ();
  g_assert_no_error (error);

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*spark_handler_handle_command*assertion*failed*");
  g_assert_false (spark_handler_handle_command ((SparkHandler *) not_a_handler, "log", NULL, NULL, &error));
  g_test_assert_expected_messages ();
  g_assert_no_error (error);

  /* handle_invocation */
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*spark_handler_handle_invocation*assertion*failed*");
  spark_handler_handle_invocation (handler, NULL);
  g_test_assert_expected_messages ();

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*spark_handler_handle_invocation*assertion*failed*");
  spark_handler_handle_invocation (NULL, NULL);
  g_test_assert_expected_messages ();

  /* None of it reached a vfunc. */
  g_assert_cmpint (recorder->n_request, ==, 0);
  g_assert_cmpint (recorder->n_command, ==, 0);
  g_assert_cmpint (recorder->n_invocation, ==, 0);

  /* spark_module_server_new() needs a handler. */
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*spark_module_server_new*assertion*failed*");
  g_assert_null (spark_module_server_new (NULL));
  g_test_assert_expected_messages ();

  g_object_unref (not_a_handler);
  g_object_unref (recorder);
}

int
main (int argc, char *argv[])
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/spark/handler/wrapper/request", test_wrapper_request);
  g_test_add_func ("/spark/handler/wrapper/command", test_wrapper_command);
  g_test_add_func ("/spark/handler/wrapper/invocation", test_wrapper_invocation);
  g_test_add_func ("/spark/handler/default-invocation", test_default_invocation);
  g_test_add_func ("/spark/handler/not-supported/direct", test_not_supported_direct);
  g_test_add_func ("/spark/handler/not-supported/served", test_not_supported_served);
  g_test_add_func ("/spark/handler/func/request-only", test_func_request_only);
  g_test_add_func ("/spark/handler/func/command-only", test_func_command_only);
  g_test_add_func ("/spark/handler/func/destroy", test_func_destroy);
  g_test_add_func ("/spark/handler/no-reply", test_no_reply);
  g_test_add_func ("/spark/handler/floating-reply", test_floating_reply);
  g_test_add_func ("/spark/handler/cancellable/requester", test_cancellable_requester);
  g_test_add_func ("/spark/handler/cancellable/timeout", test_cancellable_timeout);
  g_test_add_func ("/spark/handler/bad-input", test_bad_input);

  return g_test_run ();
}
