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

static void
on_shutdown_done (GObject      *source,
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

  spark_module_server_shutdown_async (server, mode, NULL, on_shutdown_done, &done);
  spark_test_wait_flag (NULL, &done);
  g_assert_false (spark_module_server_get_running (server));
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
