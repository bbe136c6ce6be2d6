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

#ifdef G_OS_UNIX
#include <dlfcn.h>
#endif

G_DEFINE_INTERFACE (SparkHandler, spark_handler, G_TYPE_OBJECT)

/* Whether @type or one of its parents carries the type data @key. */
static gboolean
spark_type_has_mark (GType       type,
                     const char *key)
{
  GQuark quark = g_quark_try_string (key);

  if (quark == 0)
    return FALSE;

  for (; type != 0; type = g_type_parent (type))
    {
      if (GPOINTER_TO_INT (g_type_get_qdata (type, quark)))
        return TRUE;
    }

  return FALSE;
}

/*
 * Whether the handler's type was registered by PyGObject, which marks the
 * types it registers with the type data "PyGObject::custom".
 */
gboolean
spark_handler_is_python (SparkHandler *self)
{
  return spark_type_has_mark (G_OBJECT_TYPE (self), "PyGObject::custom");
}

typedef int (*SparkPyIsInitializedFunc) (void);

/*
 * Whether the Python interpreter in this process has begun to finalize.
 *
 * Once Py_FinalizeEx() has begun (the main thread returned from the
 * script, or called sys.exit()), Py_IsInitialized() is false and PyGObject
 * (3.42 and later) returns from a Python vfunc at once, without calling
 * Python and without writing the vfunc's return value: the caller gets
 * whatever the return register held (seen here: the address of the
 * request being handled), and no error. Reading that as a GVariant is the
 * crash of a program that exits while a Python handler thread still has
 * messages to handle. Py_IsInitialized() needs no interpreter lock; it is
 * looked up in the program's global symbols (the python3 program, or a
 * libpython loaded with RTLD_GLOBAL, exports it), so the library does not
 * link against Python.
 *
 * Only called for handlers whose type PyGObject registered, so Python is
 * loaded by then. %FALSE where the symbol cannot be found.
 */
static gboolean
spark_python_is_finalizing (void)
{
#ifdef G_OS_UNIX
  static gsize resolved = 0;
  static SparkPyIsInitializedFunc py_is_initialized = NULL;

  if (g_once_init_enter (&resolved))
    {
      /* The program and what it loaded RTLD_GLOBAL: where extension
       * modules such as PyGObject's find libpython's symbols too. */
      void *program = dlopen (NULL, RTLD_LAZY);

      if (program != NULL)
        py_is_initialized = (SparkPyIsInitializedFunc) dlsym (program, "Py_IsInitialized");
      g_once_init_leave (&resolved, 1);
    }

  return py_is_initialized != NULL && !py_is_initialized ();
#else
  return FALSE;
#endif
}

/*
 * After a call into the handler that set no error: whether what it
 * returned is garbage because its Python code never ran (see
 * spark_python_is_finalizing()). Sets @error when it is. A reply that a
 * handler really returned just as finalization began is dropped without
 * being looked at, so it leaks, once, in a process that is exiting.
 */
static gboolean
spark_handler_returned_garbage (SparkHandler      *self,
                                SparkMessageKind   kind,
                                const char        *name,
                                GError           **error)
{
  g_assert (error != NULL && *error == NULL);

  if (G_LIKELY (!spark_handler_is_python (self) || !spark_python_is_finalizing ()))
    return FALSE;

  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY,
               "The Python interpreter is exiting: the handler %s could not handle "
               "%s “%s” (shut servers down before the program exits)",
               G_OBJECT_TYPE_NAME (self),
               kind == SPARK_MESSAGE_REQUEST ? "request" : "command",
               name);
  /* The requester is most likely gone with the interpreter: say it here. */
  g_debug ("%s", (*error)->message);
  return TRUE;
}

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
 * Whether requests must go through a SparkInvocation: when the handler's
 * type overrides handle_invocation, and for handlers written in Python,
 * whose requests then reach handle_request through
 * spark_handler_handle_request(), which guards against the garbage that
 * PyGObject returns while the interpreter exits. Otherwise the server calls
 * handle_request directly and saves an object per request (next to a
 * Python call, an invocation costs little).
 */
gboolean
spark_handler_uses_invocation (SparkHandler *self)
{
  SparkHandlerInterface *iface = SPARK_HANDLER_GET_IFACE (self);

  if (spark_handler_is_python (self))
    return TRUE;

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
  return spark_type_has_mark (G_OBJECT_TYPE (self), "gjs::custom-type");
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

  {
    GError *local_error = NULL;
    GVariant *reply;

    reply = iface->handle_request (self, name, parameters, cancellable, &local_error);

    /* Not even looked at: it may be no GVariant at all. */
    if (local_error == NULL &&
        spark_handler_returned_garbage (self, SPARK_MESSAGE_REQUEST, name, &local_error))
      reply = NULL;

    if (local_error != NULL)
      g_propagate_error (error, local_error);

    return reply;
  }
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

  {
    GError *local_error = NULL;
    gboolean ok;

    ok = iface->handle_command (self, name, parameters, cancellable, &local_error);

    if (local_error == NULL &&
        spark_handler_returned_garbage (self, SPARK_MESSAGE_COMMAND, name, &local_error))
      ok = FALSE;

    if (local_error != NULL)
      {
        g_propagate_error (error, local_error);
        return FALSE;
      }

    return ok;
  }
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

/**
 * spark_handler_get_flags: (virtual get_flags)
 * @self: a [iface@Spark.Handler]
 *
 * What the handler declares about itself. A handler that declares
 * %SPARK_HANDLER_FLAGS_CONCURRENT may be served by several threads at once
 * (see [property@Spark.ModuleServer:workers]); the server asks when it
 * starts. Handlers written in JavaScript cannot be called off the main
 * thread, whatever they declare.
 *
 * Returns: the handler's flags
 *
 * Since: 1.0
 */
SparkHandlerFlags
spark_handler_get_flags (SparkHandler *self)
{
  SparkHandlerInterface *iface;

  g_return_val_if_fail (SPARK_IS_HANDLER (self), SPARK_HANDLER_FLAGS_NONE);

  iface = SPARK_HANDLER_GET_IFACE (self);

  return iface->get_flags != NULL ? iface->get_flags (self) : SPARK_HANDLER_FLAGS_NONE;
}
