/* spark-dbus-export.c: a module server on D-Bus
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * An export is an object registered on one connection at one path, with
 * a dispatcher of its own to the server. Every method call arrives on the
 * context that was thread-default when the server was exported (GDBus's
 * rule) and never blocks it: requests go through
 * spark_dispatcher_request_full(), whose reply function runs on that same
 * context; commands through try_send_command() or send_command_async().
 * So the calls table, keyed by the caller's (sender, serial), is touched
 * on that context only and needs no lock.
 *
 * Each call the export still has to answer holds a cancellable: Cancel
 * (sender, serial) cancels it, and so does the deadline the caller sent,
 * which the export enforces with a timeout source of its own (the reply
 * is then TIMED_OUT, whatever the local request said).
 */

#include "config.h"

#include "spark-dbus-wire-private.h"
#include "spark-dbus.h"
#include "spark-error.h"

typedef struct
{
  gint                ref_count;      /* atomic */
  SparkModuleServer  *server;         /* a reference */
  SparkDispatcher    *dispatcher;     /* the export's own */
  GDBusConnection    *connection;     /* a reference */
  char               *object_path;
  guint               registration;   /* export_lock */
  gulong              running_id;     /* export_lock: notify::running */
  GMainContext       *context;        /* where method calls run */
  GHashTable         *calls;          /* context: "sender serial" -> ExportCall */
} Export;

typedef struct
{
  Export                *export;        /* a reference */
  char                  *key;           /* owned; in export->calls unless another call had it */
  GDBusMethodInvocation *invocation;    /* NULL once answered */
  GCancellable          *cancellable;
  GSource               *deadline;      /* nullable */
  gboolean               timed_out;
} ExportCall;

/* Every export of the process, for unexport(). */
static GMutex export_lock;
static GList *exports;   /* export_lock: Export, one reference each */

static Export *
export_ref (Export *export)
{
  g_atomic_int_inc (&export->ref_count);
  return export;
}

static void
export_unref (gpointer data)
{
  Export *export = data;

  if (!g_atomic_int_dec_and_test (&export->ref_count))
    return;

  g_assert (export->calls == NULL || g_hash_table_size (export->calls) == 0);
  g_clear_pointer (&export->calls, g_hash_table_unref);
  g_clear_object (&export->dispatcher);
  g_clear_object (&export->server);
  g_clear_object (&export->connection);
  g_clear_pointer (&export->context, g_main_context_unref);
  g_free (export->object_path);
  g_free (export);
}

static char *
call_key (GDBusMethodInvocation *invocation,
          guint32                serial)
{
  const char *sender = g_dbus_method_invocation_get_sender (invocation);

  /* A peer-to-peer connection has no sender: one peer, one space of serials. */
  return g_strdup_printf ("%s %u", sender != NULL ? sender : "", serial);
}

static void
export_call_free (gpointer data)
{
  ExportCall *call = data;

  if (call->deadline != NULL)
    {
      g_source_destroy (call->deadline);
      g_source_unref (call->deadline);
    }
  g_clear_object (&call->cancellable);
  g_assert (call->invocation == NULL);
  g_free (call->key);
  export_unref (call->export);
  g_free (call);
}

static gboolean
on_call_deadline (gpointer data)
{
  ExportCall *call = data;

  /* The caller's deadline passed: the handler's cancellable is cancelled
   * with the local request, and the caller hears TIMED_OUT. */
  call->timed_out = TRUE;
  g_clear_pointer (&call->deadline, g_source_unref);
  g_cancellable_cancel (call->cancellable);
  return G_SOURCE_REMOVE;
}

/* Starts tracking a call that will be answered later. @timeout_msec 0:
 * no deadline. */
static ExportCall *
export_call_new (Export                *export,
                 GDBusMethodInvocation *invocation,
                 guint                  timeout_msec)
{
  ExportCall *call = g_new0 (ExportCall, 1);
  guint32 serial = g_dbus_message_get_serial (g_dbus_method_invocation_get_message (invocation));

  call->export = export_ref (export);
  call->invocation = invocation;
  call->cancellable = g_cancellable_new ();
  call->key = call_key (invocation, serial);

  if (timeout_msec > 0)
    {
      call->deadline = g_timeout_source_new (timeout_msec);
      g_source_set_callback (call->deadline, on_call_deadline, call, NULL);
      g_source_set_static_name (call->deadline, "[spark-channel] D-Bus request deadline");
      g_source_attach (call->deadline, export->context);
    }

  /* A caller reusing a serial still pending is broken: the newer call
   * cannot be cancelled, both are answered. */
  if (!g_hash_table_contains (export->calls, call->key))
    g_hash_table_insert (export->calls, call->key, call);
  return call;
}

/* Answers @call (once) and forgets it. Takes @error. */
static void
export_call_finish (ExportCall *call,
                    GVariant   *value,
                    GError     *error)
{
  GDBusMethodInvocation *invocation = g_steal_pointer (&call->invocation);

  if (call->timed_out)
    {
      g_clear_error (&error);
      g_clear_pointer (&value, g_variant_unref);
      error = g_error_new_literal (SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT,
                                   "The request timed out before a reply arrived");
    }

  if (error != NULL)
    {
      g_dbus_method_invocation_return_gerror (invocation, error);
      g_error_free (error);
    }
  else
    g_dbus_method_invocation_return_value (invocation, value);

  /* Only this call's own entry: an older call may hold the key. */
  if (g_hash_table_lookup (call->export->calls, call->key) == call)
    g_hash_table_remove (call->export->calls, call->key);
  export_call_free (call);
}

static void
on_request_reply (GVariant     *reply,
                  const GError *error,
                  gpointer      user_data)
{
  ExportCall *call = user_data;

  export_call_finish (call,
                      reply != NULL ? g_variant_new ("(@av)", spark_dbus_wrap_value (reply)) : NULL,
                      error != NULL ? g_error_copy (error) : NULL);
}

static void
on_command_sent (GObject      *source,
                 GAsyncResult *result,
                 gpointer      user_data)
{
  ExportCall *call = user_data;
  GError *error = NULL;

  if (spark_dispatcher_send_command_finish (SPARK_DISPATCHER (source), result, &error))
    export_call_finish (call, NULL, NULL);
  else
    export_call_finish (call, NULL, error);
}

static void
handle_request (Export                *export,
                GDBusMethodInvocation *invocation,
                GVariant              *args)
{
  g_autoptr(GVariant) wrapped = NULL;
  g_autoptr(GVariant) options = NULL;
  g_autoptr(GVariant) parameters = NULL;
  const char *name;
  guint timeout_msec = 0;
  GError *error = NULL;
  ExportCall *call;

  g_variant_get (args, "(&s@av@a{sv})", &name, &wrapped, &options);
  if (*name == '\0')
    {
      g_dbus_method_invocation_return_error_literal (invocation, G_DBUS_ERROR, G_DBUS_ERROR_INVALID_ARGS,
                                                     "A request's name must not be empty");
      return;
    }
  if (!spark_dbus_unwrap_value (wrapped, &parameters, &error))
    {
      g_dbus_method_invocation_take_error (invocation, error);
      return;
    }
  (void) g_variant_lookup (options, SPARK_DBUS_OPTION_TIMEOUT, "u", &timeout_msec);

  call = export_call_new (export, invocation, timeout_msec);
  spark_dispatcher_request_full (export->dispatcher, name, parameters, NULL, call->cancellable,
                                 on_request_reply, call, NULL);
}

static void
handle_command (Export                *export,
                GDBusMethodInvocation *invocation,
                GVariant              *args)
{
  g_autoptr(GVariant) wrapped = NULL;
  g_autoptr(GVariant) options = NULL;
  g_autoptr(GVariant) parameters = NULL;
  const char *name;
  gboolean wait = FALSE;
  GError *error = NULL;

  g_variant_get (args, "(&s@av@a{sv})", &name, &wrapped, &options);
  if (*name == '\0')
    {
      g_dbus_method_invocation_return_error_literal (invocation, G_DBUS_ERROR, G_DBUS_ERROR_INVALID_ARGS,
                                                     "A command's name must not be empty");
      return;
    }
  if (!spark_dbus_unwrap_value (wrapped, &parameters, &error))
    {
      g_dbus_method_invocation_take_error (invocation, error);
      return;
    }
  (void) g_variant_lookup (options, SPARK_DBUS_OPTION_WAIT, "b", &wait);

  if (wait)
    {
      /* Waits for room without blocking this context; Cancel ends the wait. */
      ExportCall *call = export_call_new (export, invocation, 0);

      spark_dispatcher_send_command_async (export->dispatcher, name, parameters, call->cancellable,
                                           on_command_sent, call);
    }
  else if (spark_dispatcher_try_send_command (export->dispatcher, name, parameters, &error))
    g_dbus_method_invocation_return_value (invocation, NULL);   /* nothing is sent if NO_REPLY_EXPECTED */
  else
    g_dbus_method_invocation_take_error (invocation, error);
}

static void
handle_cancel (Export                *export,
               GDBusMethodInvocation *invocation,
               GVariant              *args)
{
  g_autofree char *key = NULL;
  ExportCall *call;
  guint32 serial;

  g_variant_get (args, "(u)", &serial);
  key = call_key (invocation, serial);

  /* Only the caller's own calls: the key holds its unique name. An
   * unknown or finished serial is no error (the reply may be on its way). */
  call = g_hash_table_lookup (export->calls, key);
  if (call != NULL)
    g_cancellable_cancel (call->cancellable);

  g_dbus_method_invocation_return_value (invocation, NULL);
}

static void
on_shutdown_reached (GCancellable *token,
                     gpointer      user_data)
{
  (void) token;

  /* The server reached the shutdown (or stopped otherwise): any thread. */
  g_dbus_method_invocation_return_value (G_DBUS_METHOD_INVOCATION (user_data), NULL);
}

static void
handle_shutdown (Export                *export,
                 GDBusMethodInvocation *invocation)
{
  g_autoptr(GCancellable) token = g_cancellable_new ();
  GError *error = NULL;

  /* The answer comes when the server stops; the invocation is held by the
   * token's handler until then. */
  g_object_ref (invocation);
  if (!spark_dispatcher_send_shutdown (export->dispatcher, token, &error))
    {
      g_dbus_method_invocation_take_error (invocation, error);
      return;
    }
  g_cancellable_connect (token, G_CALLBACK (on_shutdown_reached), invocation, g_object_unref);
}

static void
export_method_call (GDBusConnection       *connection,
                    const char            *sender,
                    const char            *object_path,
                    const char            *interface_name,
                    const char            *method_name,
                    GVariant              *args,
                    GDBusMethodInvocation *invocation,
                    gpointer               user_data)
{
  Export *export = user_data;

  (void) connection;
  (void) sender;
  (void) object_path;
  (void) interface_name;

  if (g_str_equal (method_name, "Request"))
    handle_request (export, invocation, args);
  else if (g_str_equal (method_name, "Command"))
    handle_command (export, invocation, args);
  else if (g_str_equal (method_name, "Cancel"))
    handle_cancel (export, invocation, args);
  else if (g_str_equal (method_name, "Shutdown"))
    handle_shutdown (export, invocation);
  else
    g_assert_not_reached ();   /* GDBus checks the name against the introspection data */
}

static GVariant *
export_get_property (GDBusConnection  *connection,
                     const char       *sender,
                     const char       *object_path,
                     const char       *interface_name,
                     const char       *property_name,
                     GError          **error,
                     gpointer          user_data)
{
  Export *export = user_data;

  (void) connection;
  (void) sender;
  (void) object_path;
  (void) interface_name;
  (void) error;

  if (g_str_equal (property_name, "Pending"))
    return g_variant_new_uint32 (spark_module_server_get_pending (export->server));
  if (g_str_equal (property_name, "Running"))
    return g_variant_new_boolean (spark_module_server_get_running (export->server));
  g_assert_not_reached ();
}

static const GDBusInterfaceVTable export_vtable = {
  .method_call = export_method_call,
  .get_property = export_get_property,
};

static void
on_running_changed (GObject    *object,
                    GParamSpec *pspec,
                    gpointer    user_data)
{
  Export *export = user_data;
  GVariantBuilder changed;

  (void) pspec;

  /* On the server's owner context: emitting a signal is thread-safe. */
  g_variant_builder_init (&changed, G_VARIANT_TYPE_VARDICT);
  g_variant_builder_add (&changed, "{sv}", "Running",
                         g_variant_new_boolean (spark_module_server_get_running (SPARK_MODULE_SERVER (object))));
  g_dbus_connection_emit_signal (export->connection, NULL, export->object_path,
                                 "org.freedesktop.DBus.Properties", "PropertiesChanged",
                                 g_variant_new ("(sa{sv}as)", SPARK_DBUS_INTERFACE, &changed, NULL),
                                 NULL);
}

static void
running_closure_free (gpointer data,
                      GClosure *closure)
{
  (void) closure;
  export_unref (data);
}

/**
 * spark_module_server_export:
 * @self: a [class@Spark.ModuleServer]
 * @connection: a [class@Gio.DBusConnection]: a message bus or a peer
 * @object_path: where to export it, a valid D-Bus object path
 * @error: return location for an error
 *
 * Makes @self reachable on @connection at @object_path, with the
 * interface %SPARK_DBUS_INTERFACE (`org.gnome.SparkChannel.Module1`):
 * methods `Request`, `Command`, `Cancel` and `Shutdown`, properties
 * `Pending` and `Running`. [ctor@Spark.Dispatcher.new_for_dbus] sends to
 * it with the usual dispatcher API; `gdbus call` and `busctl` can too.
 *
 * The server's capacity holds for remote senders: a `Command` that finds
 * a bounded mailbox full fails with %SPARK_CHANNEL_ERROR_FULL, unless its
 * `wait` option asks it to wait for room; nothing blocks GDBus. Handler
 * errors go back with their domain, code and message (the
 * %SPARK_CHANNEL_ERROR domain has D-Bus names of its own,
 * `org.gnome.SparkChannel.Error.Closed` and so on).
 *
 * Method calls are handled on the thread-default main context of the
 * caller of this function, which must be iterated; they never block it.
 * Any number of exports of one server may coexist, on other paths or
 * connections. The export keeps @self alive until
 * [method@Spark.ModuleServer.unexport].
 *
 * May be called from any thread.
 *
 * Returns: %TRUE if @self was exported, %FALSE with @error set (for
 *   instance %G_IO_ERROR_EXISTS if @object_path already has this
 *   interface)
 *
 * Since: 1.0
 */
gboolean
spark_module_server_export (SparkModuleServer  *self,
                            GDBusConnection    *connection,
                            const char         *object_path,
                            GError            **error)
{
  Export *export;

  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), FALSE);
  g_return_val_if_fail (G_IS_DBUS_CONNECTION (connection), FALSE);
  g_return_val_if_fail (object_path != NULL && g_variant_is_object_path (object_path), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  spark_dbus_ensure_error_domain ();

  export = g_new0 (Export, 1);
  export->ref_count = 1;
  export->server = g_object_ref (self);
  export->dispatcher = spark_module_server_create_dispatcher (self);
  export->connection = g_object_ref (connection);
  export->object_path = g_strdup (object_path);
  export->context = g_main_context_ref_thread_default ();
  export->calls = g_hash_table_new (g_str_hash, g_str_equal);

  g_mutex_lock (&export_lock);
  export->registration = g_dbus_connection_register_object (connection, object_path,
                                                            spark_dbus_get_interface_info (),
                                                            &export_vtable,
                                                            export_ref (export), export_unref,
                                                            error);
  if (export->registration == 0)
    {
      g_mutex_unlock (&export_lock);
      export_unref (export);
      return FALSE;
    }

  export->running_id = g_signal_connect_data (self, "notify::running",
                                              G_CALLBACK (on_running_changed),
                                              export_ref (export), running_closure_free, 0);
  exports = g_list_prepend (exports, export);   /* the list takes the first reference */
  g_mutex_unlock (&export_lock);

  return TRUE;
}

/**
 * spark_module_server_unexport:
 * @self: a [class@Spark.ModuleServer]
 * @connection: the connection given to [method@Spark.ModuleServer.export]
 * @object_path: the object path given to it
 *
 * Undoes [method@Spark.ModuleServer.export]. Calls that arrived before
 * are still answered; later ones fail with `UnknownObject` (which a
 * remote dispatcher reports as %SPARK_CHANNEL_ERROR_CLOSED). The server
 * itself goes on running.
 *
 * May be called from any thread.
 *
 * Returns: %TRUE if @self was exported there
 *
 * Since: 1.0
 */
gboolean
spark_module_server_unexport (SparkModuleServer *self,
                              GDBusConnection   *connection,
                              const char        *object_path)
{
  Export *found = NULL;

  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), FALSE);
  g_return_val_if_fail (G_IS_DBUS_CONNECTION (connection), FALSE);
  g_return_val_if_fail (object_path != NULL, FALSE);

  g_mutex_lock (&export_lock);
  for (GList *l = exports; l != NULL; l = l->next)
    {
      Export *export = l->data;

      if (export->server == self && export->connection == connection &&
          g_str_equal (export->object_path, object_path))
        {
          found = export;
          exports = g_list_delete_link (exports, l);
          g_dbus_connection_unregister_object (connection, export->registration);
          g_signal_handler_disconnect (self, export->running_id);
          break;
        }
    }
  g_mutex_unlock (&export_lock);

  if (found == NULL)
    return FALSE;

  export_unref (found);
  return TRUE;
}
