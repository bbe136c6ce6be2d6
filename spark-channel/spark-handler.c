/* spark-handler.c
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

/**
 * SparkHandler:
 *
 * What a [class@Spark.ModuleServer] runs: the code of one module.
 *
 * A handler receives the server's messages one at a time, in mailbox order,
 * on the server's [struct@GLib.MainContext], so state that only its methods
 * touch needs no locks.
 *
 * - Requests go to [vfunc@Spark.Handler.handle_request], which returns the
 *   reply (or sets an error) before the next message is handled; or to
 *   [vfunc@Spark.Handler.handle_invocation], which keeps the
 *   [class@Spark.Invocation] and completes it later (after I/O, from a
 *   JavaScript Promise). The server moves on when the invocation is
 *   completed or dropped, or when its request ends otherwise (cancelled,
 *   timed out, aborted).
 * - Commands go to [vfunc@Spark.Handler.handle_command]. A failure is
 *   reported by [signal@Spark.ModuleServer::command-failed] and logged; it
 *   never reaches the sender.
 *
 * A missing method makes that kind of message fail with
 * %SPARK_CHANNEL_ERROR_NOT_SUPPORTED. Returning %NULL (or %FALSE) without
 * setting an error gives %SPARK_CHANNEL_ERROR_NO_REPLY.
 *
 * The `cancellable` a handler receives is cancelled when its requester
 * cancels, when the request times out, or when the server aborts.
 *
 * Handlers can be written in C (or with [func@Spark.func_handler_new]),
 * Python, JavaScript and Vala. JavaScript cannot run off the main thread:
 * a handler class registered by GJS can only be served on the global
 * default main context.
 *
 * Since: 1.0
 */

#include "config.h"

#include "spark-error.h"
#include "spark-handler-private.h"

G_DEFINE_INTERFACE (SparkHandler, spark_handler, G_TYPE_OBJECT)

static void
spark_handler_real_handle_invocation (SparkHandler    *self,
                                      SparkInvocation *invocation)
{
  g_autoptr(GError) error = NULL;
  GVariant *reply;

  reply = spark_handler_handle_request (self,
                                        spark_invocation_get_name (invocation),
                                        spark_invocation_get_parameters (invocation),
                                        spark_invocation_get_cancellable (invocation),
                                        &error);

  if (reply != NULL)
    {
      /* handle_request gives us a reference (maybe floating): take it,
       * let return_value (transfer none) add its own, drop ours. */
      g_variant_take_ref (reply);
      spark_invocation_return_value (invocation, reply);
      g_variant_unref (reply);
    }
  else if (error != NULL)
    spark_invocation_take_error (invocation, g_steal_pointer (&error));
  /* else: dropping the invocation gives NO_REPLY */
}

static void
spark_handler_default_init (SparkHandlerInterface *iface)
{
  iface->handle_invocation = spark_handler_real_handle_invocation;
}

void
spark_handler_set_not_supported (SparkHandler      *self,
                                 SparkMessageKind   kind,
                                 const char        *name,
                                 GError           **error)
{
  if (kind == SPARK_MESSAGE_REQUEST)
    g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                 "The handler %s does not handle requests (request “%s”)",
                 G_OBJECT_TYPE_NAME (self), name);
  else
    g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                 "The handler %s does not handle commands (command “%s”)",
                 G_OBJECT_TYPE_NAME (self), name);
}

/*
 * Whether requests must go through a SparkInvocation: only when the
 * handler's type overrides handle_invocation. Otherwise the server calls
 * handle_request directly and saves an object per request.
 */
gboolean
spark_handler_uses_invocation (SparkHandler *self)
{
  SparkHandlerInterface *iface = SPARK_HANDLER_GET_IFACE (self);

  return iface->handle_invocation != NULL &&
         iface->handle_invocation != spark_handler_real_handle_invocation;
}

/*
 * Whether the handler's code can only run on the main thread: GJS marks the
 * types it registers (and their subclasses inherit the mark through their
 * JavaScript parents) with the type data "gjs::custom-type".
 */
gboolean
spark_handler_is_main_only (SparkHandler *self)
{
  GQuark gjs_quark = g_quark_try_string ("gjs::custom-type");

  if (gjs_quark == 0)
    return FALSE;

  for (GType type = G_OBJECT_TYPE (self); type != 0; type = g_type_parent (type))
    {
      if (GPOINTER_TO_INT (g_type_get_qdata (type, gjs_quark)))
        return TRUE;
    }

  return FALSE;
}

/**
 * spark_handler_handle_request: (virtual handle_request)
 * @self: a [iface@Spark.Handler]
 * @name: the request's name
 * @parameters: (nullable): the request's parameters, %NULL if the sender
 *   gave none
 * @cancellable: (nullable): cancelled when the request ends early
 *   (requester cancelled, timed out, server aborted)
 * @error: return location for an error
 *
 * Handles a request and returns its reply. The server calls this on its
 * context, one message at a time; a reply that is floating is sunk.
 *
 * If the handler does not implement it, fails with
 * %SPARK_CHANNEL_ERROR_NOT_SUPPORTED.
 *
 * Returns: (transfer full) (nullable): the reply, or %NULL with @error set
 *
 * Since: 1.0
 */
GVariant *
spark_handler_handle_request (SparkHandler  *self,
                              const char    *name,
                              GVariant      *parameters,
                              GCancellable  *cancellable,
                              GError       **error)
{
  SparkHandlerInterface *iface;

  g_return_val_if_fail (SPARK_IS_HANDLER (self), NULL);
  g_return_val_if_fail (name != NULL && *name != '\0', NULL);
  g_return_val_if_fail (!cancellable || G_IS_CANCELLABLE (cancellable), NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  iface = SPARK_HANDLER_GET_IFACE (self);

  if (iface->handle_request == NULL)
    {
      spark_handler_set_not_supported (self, SPARK_MESSAGE_REQUEST, name, error);
      return NULL;
    }

  return iface->handle_request (self, name, parameters, cancellable, error);
}

/**
 * spark_handler_handle_command: (virtual handle_command)
 * @self: a [iface@Spark.Handler]
 * @name: the command's name
 * @parameters: (nullable): the command's parameters, %NULL if the sender
 *   gave none
 * @cancellable: (nullable): cancelled when the server aborts
 * @error: return location for an error
 *
 * Handles a command. The server calls this on its context, one message at
 * a time. A failure is reported by the server's
 * [signal@Spark.ModuleServer::command-failed] signal and logged, never sent
 * back to the sender.
 *
 * If the handler does not implement it, fails with
 * %SPARK_CHANNEL_ERROR_NOT_SUPPORTED.
 *
 * Returns: %TRUE on success, %FALSE with @error set
 *
 * Since: 1.0
 */
gboolean
spark_handler_handle_command (SparkHandler  *self,
                              const char    *name,
                              GVariant      *parameters,
                              GCancellable  *cancellable,
                              GError       **error)
{
  SparkHandlerInterface *iface;

  g_return_val_if_fail (SPARK_IS_HANDLER (self), FALSE);
  g_return_val_if_fail (name != NULL && *name != '\0', FALSE);
  g_return_val_if_fail (!cancellable || G_IS_CANCELLABLE (cancellable), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  iface = SPARK_HANDLER_GET_IFACE (self);

  if (iface->handle_command == NULL)
    {
      spark_handler_set_not_supported (self, SPARK_MESSAGE_COMMAND, name, error);
      return FALSE;
    }

  return iface->handle_command (self, name, parameters, cancellable, error);
}

/**
 * spark_handler_handle_invocation: (virtual handle_invocation)
 * @self: a [iface@Spark.Handler]
 * @invocation: (transfer none): the request being handled
 *
 * Handles a request whose reply may come later. The server calls this on
 * its context, one message at a time: keep a reference on
 * @invocation and complete it once, from any thread, with
 * [method@Spark.Invocation.return_value] or an error. An invocation that is
 * finalized without a completion ends its request with
 * %SPARK_CHANNEL_ERROR_NO_REPLY.
 *
 * The default implementation calls [method@Spark.Handler.handle_request]
 * and completes @invocation with its result.
 *
 * Since: 1.0
 */
void
spark_handler_handle_invocation (SparkHandler    *self,
                                 SparkInvocation *invocation)
{
  SparkHandlerInterface *iface;

  g_return_if_fail (SPARK_IS_HANDLER (self));
  g_return_if_fail (SPARK_IS_INVOCATION (invocation));

  iface = SPARK_HANDLER_GET_IFACE (self);

  if (iface->handle_invocation != NULL)
    iface->handle_invocation (self, invocation);
  else
    spark_handler_real_handle_invocation (self, invocation);
}
