/* spark-func-handler.c
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include "config.h"

#include "spark-error.h"
#include "spark-func-handler.h"

/* A handler made of plain C callbacks. Its type is private: C users get a
 * SparkHandler and need no GType of their own. */
#define SPARK_TYPE_FUNC_HANDLER (spark_func_handler_get_type ())
G_DECLARE_FINAL_TYPE (SparkFuncHandler, spark_func_handler, SPARK, FUNC_HANDLER, GObject)

struct _SparkFuncHandler
{
  GObject          parent_instance;

  /* immutable after construction */
  SparkRequestFunc request_func;
  SparkCommandFunc command_func;
  gpointer         user_data;
  GDestroyNotify   destroy;
  SparkHandlerFlags flags;
};

static void spark_func_handler_iface_init (SparkHandlerInterface *iface);

G_DEFINE_FINAL_TYPE_WITH_CODE (SparkFuncHandler, spark_func_handler, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, spark_func_handler_iface_init))

static GVariant *
spark_func_handler_handle_request (SparkHandler  *handler,
                                   const char    *name,
                                   GVariant      *parameters,
                                   GCancellable  *cancellable,
                                   GError       **error)
{
  /* Called by the server for every message: no checked cast. */
  SparkFuncHandler *self = (SparkFuncHandler *) handler;

  if (self->request_func == NULL)
    {
      g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                   "This handler has no request function (request “%s”)", name);
      return NULL;
    }

  return self->request_func (name, parameters, cancellable, self->user_data, error);
}

static gboolean
spark_func_handler_handle_command (SparkHandler  *handler,
                                   const char    *name,
                                   GVariant      *parameters,
                                   GCancellable  *cancellable,
                                   GError       **error)
{
  SparkFuncHandler *self = (SparkFuncHandler *) handler;

  if (self->command_func == NULL)
    {
      g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                   "This handler has no command function (command “%s”)", name);
      return FALSE;
    }

  return self->command_func (name, parameters, cancellable, self->user_data, error);
}

static SparkHandlerFlags
spark_func_handler_get_flags (SparkHandler *handler)
{
  return ((SparkFuncHandler *) handler)->flags;
}

static void
spark_func_handler_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_request = spark_func_handler_handle_request;
  iface->handle_command = spark_func_handler_handle_command;
  iface->get_flags = spark_func_handler_get_flags;
}

static void
spark_func_handler_finalize (GObject *object)
{
  SparkFuncHandler *self = SPARK_FUNC_HANDLER (object);

  if (self->destroy != NULL)
    self->destroy (self->user_data);

  G_OBJECT_CLASS (spark_func_handler_parent_class)->finalize (object);
}

static void
spark_func_handler_class_init (SparkFuncHandlerClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = spark_func_handler_finalize;
}

static void
spark_func_handler_init (SparkFuncHandler *self)
{
}

/**
 * spark_func_handler_new_full: (skip)
 * @flags: what the functions allow, e.g. %SPARK_HANDLER_FLAGS_CONCURRENT
 *   if they may run on several threads at once
 * @request_func: (nullable): handles requests, or %NULL
 * @command_func: (nullable): handles commands, or %NULL
 * @user_data: data for both functions
 * @destroy: (nullable): frees @user_data when the handler is finalized
 *
 * Like [func@Spark.func_handler_new], with the handler's flags (see
 * [method@Spark.Handler.get_flags]). With %SPARK_HANDLER_FLAGS_CONCURRENT
 * a pool of [property@Spark.ModuleServer:workers] calls the functions
 * from several threads at once, with the same @user_data.
 *
 * C only. May be called from any thread.
 *
 * Returns: (transfer full): a new handler
 *
 * Since: 1.0
 */
SparkHandler *
spark_func_handler_new_full (SparkHandlerFlags flags,
                             SparkRequestFunc  request_func,
                             SparkCommandFunc  command_func,
                             gpointer          user_data,
                             GDestroyNotify    destroy)
{
  SparkFuncHandler *self = g_object_new (SPARK_TYPE_FUNC_HANDLER, NULL);

  self->flags = flags;
  self->request_func = request_func;
  self->command_func = command_func;
  self->user_data = user_data;
  self->destroy = destroy;

  return SPARK_HANDLER (self);
}

/**
 * spark_func_handler_new: (skip)
 * @request_func: (nullable): handles requests, or %NULL
 * @command_func: (nullable): handles commands, or %NULL
 * @user_data: data for both functions
 * @destroy: (nullable): frees @user_data when the handler is finalized
 *
 * Makes a handler from plain C functions, for C programs that want no
 * GType of their own. A kind of message whose function is %NULL fails with
 * %SPARK_CHANNEL_ERROR_NOT_SUPPORTED. The functions run on the server's
 * context, one message at a time.
 *
 * C only: bindings implement [iface@Spark.Handler] instead. May be called
 * from any thread.
 *
 * Returns: (transfer full): a new handler
 *
 * Since: 1.0
 */
SparkHandler *
spark_func_handler_new (SparkRequestFunc request_func,
                        SparkCommandFunc command_func,
                        gpointer         user_data,
                        GDestroyNotify   destroy)
{
  return spark_func_handler_new_full (SPARK_HANDLER_FLAGS_NONE, request_func, command_func,
                                      user_data, destroy);
}
