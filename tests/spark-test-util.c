/* spark-test-util.c
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include "spark-test-util.h"

void
spark_test_wait_flag (GMainContext *context,
                      gint         *flag)
{
  if (context == NULL)
    context = g_main_context_get_thread_default ();

  while (!g_atomic_int_get (flag))
    g_main_context_iteration (context, TRUE);
}

static void
watch_notify (gpointer  data,
              GObject  *where_the_object_was)
{
  SparkTestWatch *watch = data;
  GMainContext *context = g_main_context_ref (watch->context);

  (void) where_the_object_was;

  /* The waiter may free the watch as soon as the flag is set. */
  g_atomic_int_set (&watch->finalized, TRUE);
  g_main_context_wakeup (context);
  g_main_context_unref (context);
}

void
spark_test_watch_init (SparkTestWatch *watch,
                       gpointer        object,
                       GMainContext   *context)
{
  if (context == NULL)
    context = g_main_context_get_thread_default ();
  if (context == NULL)
    context = g_main_context_default ();

  watch->finalized = FALSE;
  watch->context = g_main_context_ref (context);
  g_object_weak_ref (object, watch_notify, watch);
}

gboolean
spark_test_watch_finalized (SparkTestWatch *watch)
{
  return g_atomic_int_get (&watch->finalized);
}

void
spark_test_watch_wait (SparkTestWatch *watch)
{
  while (!g_atomic_int_get (&watch->finalized))
    g_main_context_iteration (watch->context, TRUE);
  g_clear_pointer (&watch->context, g_main_context_unref);
}

static gboolean
set_flag_cb (gpointer data)
{
  g_atomic_int_set ((gint *) data, TRUE);
  return G_SOURCE_REMOVE;
}

/* spark_test_watch_wait(), for at most 30 s. Returns whether the object is
 * gone. */
static gboolean
watch_wait_or_give_up (SparkTestWatch *watch)
{
  GSource *guard = g_timeout_source_new_seconds (30);
  gint gave_up = FALSE;

  g_source_set_callback (guard, set_flag_cb, &gave_up, NULL);
  g_source_attach (guard, watch->context);
  while (!g_atomic_int_get (&watch->finalized) && !g_atomic_int_get (&gave_up))
    g_main_context_iteration (watch->context, TRUE);
  g_source_destroy (guard);
  g_source_unref (guard);

  if (!g_atomic_int_get (&watch->finalized))
    return FALSE;
  g_clear_pointer (&watch->context, g_main_context_unref);
  return TRUE;
}

void
spark_test_wait_count (GMainContext *context,
                       gint         *counter,
                       gint          target)
{
  if (context == NULL)
    context = g_main_context_get_thread_default ();

  while (g_atomic_int_get (counter) < target)
    g_main_context_iteration (context, TRUE);
}

void
spark_test_iterate_pending (GMainContext *context)
{
  if (context == NULL)
    context = g_main_context_get_thread_default ();

  while (g_main_context_iteration (context, FALSE))
    {
    }
}

void
spark_test_shutdown_done_cb (GObject      *source,
                             GAsyncResult *result,
                             gpointer      user_data)
{
  g_autoptr(GError) error = NULL;
  gint *done = user_data;

  g_assert_true (spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, &error));
  g_assert_no_error (error);
  g_atomic_int_set (done, TRUE);
}

void
spark_test_shutdown (SparkModuleServer *server,
                     SparkShutdownMode  mode)
{
  gint done = FALSE;

  spark_module_server_shutdown_async (server, mode, NULL, spark_test_shutdown_done_cb, &done);
  spark_test_wait_flag (NULL, &done);
  g_assert_false (spark_module_server_get_running (server));
}

void
spark_test_outcome_cb (GVariant     *reply,
                       const GError *error,
                       gpointer      user_data)
{
  SparkTestOutcome *outcome = user_data;

  /* Exactly once. */
  g_assert_false (g_atomic_int_get (&outcome->done));
  g_assert_true ((reply == NULL) != (error == NULL));

  outcome->reply = reply ? g_variant_ref (reply) : NULL;
  outcome->error = error ? g_error_copy (error) : NULL;
  g_atomic_int_set (&outcome->done, TRUE);
}

void
spark_test_outcome_clear (SparkTestOutcome *outcome)
{
  g_clear_pointer (&outcome->reply, g_variant_unref);
  g_clear_error (&outcome->error);
  outcome->done = FALSE;
}

void
spark_test_on_command_failed (SparkModuleServer *server,
                              const char        *name,
                              GVariant          *parameters,
                              GError            *error,
                              gpointer           user_data)
{
  SparkTestFailure *failure = user_data;

  failure->thread = g_thread_self ();
  g_free (failure->name);
  failure->name = g_strdup (name);
  g_clear_pointer (&failure->parameters, g_variant_unref);
  failure->parameters = parameters ? g_variant_ref (parameters) : NULL;
  g_clear_error (&failure->error);
  failure->error = g_error_copy (error);
  g_atomic_int_inc (&failure->n);
}

void
spark_test_failure_clear (SparkTestFailure *failure)
{
  g_clear_pointer (&failure->name, g_free);
  g_clear_pointer (&failure->parameters, g_variant_unref);
  g_clear_error (&failure->error);
  failure->thread = NULL;
  failure->n = 0;
}

void
spark_test_gate_init (SparkTestGate *gate)
{
  g_mutex_init (&gate->mutex);
  g_cond_init (&gate->cond);
  gate->open = FALSE;
}

void
spark_test_gate_clear (SparkTestGate *gate)
{
  g_mutex_clear (&gate->mutex);
  g_cond_clear (&gate->cond);
}

void
spark_test_gate_open (SparkTestGate *gate)
{
  g_mutex_lock (&gate->mutex);
  gate->open = TRUE;
  g_cond_broadcast (&gate->cond);
  g_mutex_unlock (&gate->mutex);
}

static void
gate_cancelled_cb (GCancellable  *cancellable,
                   SparkTestGate *gate)
{
  g_mutex_lock (&gate->mutex);
  g_cond_broadcast (&gate->cond);
  g_mutex_unlock (&gate->mutex);
}

gboolean
spark_test_gate_wait (SparkTestGate *gate,
                      GCancellable  *cancellable)
{
  gulong id = 0;
  gboolean cancelled;

  if (cancellable != NULL)
    id = g_cancellable_connect (cancellable, G_CALLBACK (gate_cancelled_cb), gate, NULL);

  g_mutex_lock (&gate->mutex);
  while (!gate->open && !(cancellable != NULL && g_cancellable_is_cancelled (cancellable)))
    g_cond_wait (&gate->cond, &gate->mutex);
  cancelled = !gate->open;
  g_mutex_unlock (&gate->mutex);

  if (id != 0)
    g_cancellable_disconnect (cancellable, id);

  return cancelled;
}

void
spark_test_log_init (SparkTestLog *log)
{
  g_mutex_init (&log->mutex);
  log->entries = g_ptr_array_new_with_free_func (g_free);
}

void
spark_test_log_clear (SparkTestLog *log)
{
  g_clear_pointer (&log->entries, g_ptr_array_unref);
  g_mutex_clear (&log->mutex);
}

void
spark_test_log_append (SparkTestLog *log,
                       const char   *name,
                       GVariant     *parameters)
{
  char *entry;

  if (parameters != NULL && g_variant_is_of_type (parameters, G_VARIANT_TYPE_INT32))
    entry = g_strdup_printf ("%s:%d", name, g_variant_get_int32 (parameters));
  else
    entry = g_strdup (name);

  g_mutex_lock (&log->mutex);
  g_ptr_array_add (log->entries, entry);
  g_mutex_unlock (&log->mutex);
}

void
spark_test_log_reset (SparkTestLog *log)
{
  g_mutex_lock (&log->mutex);
  g_ptr_array_set_size (log->entries, 0);
  g_mutex_unlock (&log->mutex);
}

guint
spark_test_log_length (SparkTestLog *log)
{
  guint len;

  g_mutex_lock (&log->mutex);
  len = log->entries->len;
  g_mutex_unlock (&log->mutex);

  return len;
}

char *
spark_test_log_dup (SparkTestLog *log)
{
  GString *string = g_string_new (NULL);
  guint i;

  g_mutex_lock (&log->mutex);
  for (i = 0; i < log->entries->len; i++)
    {
      if (i > 0)
        g_string_append_c (string, ' ');
      g_string_append (string, g_ptr_array_index (log->entries, i));
    }
  g_mutex_unlock (&log->mutex);

  return g_string_free (string, FALSE);
}

static void spark_test_invocation_handler_iface_init (SparkHandlerInterface *iface);

G_DEFINE_FINAL_TYPE_WITH_CODE (SparkTestInvocationHandler, spark_test_invocation_handler, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER,
                                                      spark_test_invocation_handler_iface_init))

static void
spark_test_invocation_handler_handle_invocation (SparkHandler    *handler,
                                                 SparkInvocation *invocation)
{
  SparkTestInvocationHandler *self = SPARK_TEST_INVOCATION_HANDLER (handler);

  g_mutex_lock (&self->mutex);
  g_ptr_array_add (self->invocations, g_object_ref (invocation));
  g_mutex_unlock (&self->mutex);

  g_atomic_int_inc (&self->n_received);
  /* Tests wait for n_received on the default context, maybe asleep. */
  g_main_context_wakeup (g_main_context_default ());

  if (self->on_invocation != NULL)
    self->on_invocation (self, invocation, self->user_data);
}

static void
spark_test_invocation_handler_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_invocation = spark_test_invocation_handler_handle_invocation;
}

static void
spark_test_invocation_handler_finalize (GObject *object)
{
  SparkTestInvocationHandler *self = SPARK_TEST_INVOCATION_HANDLER (object);

  g_ptr_array_unref (self->invocations);
  g_mutex_clear (&self->mutex);

  G_OBJECT_CLASS (spark_test_invocation_handler_parent_class)->finalize (object);
}

static void
spark_test_invocation_handler_class_init (SparkTestInvocationHandlerClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = spark_test_invocation_handler_finalize;
}

static void
spark_test_invocation_handler_init (SparkTestInvocationHandler *self)
{
  g_mutex_init (&self->mutex);
  self->invocations = g_ptr_array_new_with_free_func (g_object_unref);
}

SparkTestInvocationHandler *
spark_test_invocation_handler_new (void)
{
  return g_object_new (SPARK_TEST_TYPE_INVOCATION_HANDLER, NULL);
}

SparkInvocation *
spark_test_invocation_handler_pop (SparkTestInvocationHandler *self)
{
  SparkInvocation *invocation = NULL;

  g_mutex_lock (&self->mutex);
  if (self->invocations->len > 0)
    invocation = g_ptr_array_steal_index (self->invocations, 0);
  g_mutex_unlock (&self->mutex);

  return invocation;
}

/* The server fixture ----------------------------------------------------------- */

static GPtrArray *server_options;   /* SparkTestServerOptions: spark_test_server_options() copies */

const SparkTestServerOptions *
spark_test_server_options (const SparkTestServerOptions *options,
                           gconstpointer                 data)
{
  SparkTestServerOptions *copy = g_memdup2 (options, sizeof *options);

  copy->data = data;
  if (server_options == NULL)
    server_options = g_ptr_array_new_with_free_func (g_free);
  g_ptr_array_add (server_options, copy);

  return copy;
}

int
spark_test_run (void)
{
  int ret = g_test_run ();

  g_clear_pointer (&server_options, g_ptr_array_unref);
  return ret;
}

void
spark_test_server_setup (SparkTestServer              *fixture,
                         SparkHandler                 *handler,
                         const SparkTestServerOptions *options)
{
  g_autoptr(GError) error = NULL;

  g_assert_nonnull (options);
  fixture->options = options;
  fixture->handler = handler;
  fixture->server = spark_module_server_new (handler);

  if (options->name != NULL)
    spark_module_server_set_name (fixture->server, options->name);
  if (options->capacity > 0)
    {
      spark_module_server_set_capacity (fixture->server, options->capacity);
      g_assert_cmpuint (spark_module_server_get_capacity (fixture->server), ==, options->capacity);
    }
  if (options->max_invocations > 0)
    {
      /* From the default, 1. */
      g_assert_cmpuint (spark_module_server_get_max_invocations (fixture->server), ==, 1);
      spark_module_server_set_max_invocations (fixture->server, options->max_invocations);
      g_assert_cmpuint (spark_module_server_get_max_invocations (fixture->server), ==, options->max_invocations);
    }

  switch (options->start)
    {
    case SPARK_TEST_START_IN_THREAD:
      g_assert_true (spark_module_server_start_in_thread (fixture->server, &error));
      break;
    case SPARK_TEST_START_ON_DEFAULT:
      g_assert_true (spark_module_server_start (fixture->server, NULL, &error));
      break;
    case SPARK_TEST_START_NONE:
      break;
    default:
      g_assert_not_reached ();
    }
  g_assert_no_error (error);

  fixture->dispatcher = spark_module_server_create_dispatcher (fixture->server);

  spark_test_watch_init (&fixture->handler_watch, fixture->handler, NULL);
  spark_test_watch_init (&fixture->server_watch, fixture->server, NULL);
  spark_test_watch_init (&fixture->dispatcher_watch, fixture->dispatcher, NULL);
}

void
spark_test_server_teardown (SparkTestServer *fixture)
{
  if (fixture->server != NULL && spark_module_server_get_running (fixture->server))
    spark_test_shutdown (fixture->server, fixture->options->shutdown);

  g_clear_object (&fixture->dispatcher);
  g_clear_object (&fixture->server);
  g_clear_object (&fixture->handler);

  g_assert_true (watch_wait_or_give_up (&fixture->dispatcher_watch));
  g_assert_true (watch_wait_or_give_up (&fixture->server_watch));
  g_assert_true (watch_wait_or_give_up (&fixture->handler_watch));
}
