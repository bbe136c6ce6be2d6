/* spark-dbus-export.c: a module server on D-Bus
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * An export is an object registered on one connection at one path, with
 * a dispatcher of its own to the server. Method calls arrive on the
 * context that was thread-default when the server was exported (GDBus's
 * rule) and never block it.
 *
 * Requests are relayed as inline requests (spark_request_new_inline()):
 * the server's thread that decides the outcome (or the timer's, or the
 * one that handled a Cancel) answers the method call itself, with no hop
 * back to the export's context: GDBus's replies are thread-safe. So the
 * calls table is under the export's lock.
 *
 * A caller is a peer (its unique name; "" on a peer-to-peer connection).
 * Its calls are found by serial (Cancel), and its requests are relayed in
 * the name of a local sender id per remote dispatcher id (the "sender"
 * option; left out, the peer's default sender, id 0), so that CancelAll
 * (id) is that dispatcher's cancel_all(). A peer's and a sender's entries live while they have calls: cancel_all()
 * only ever concerns requests still queued, which are calls.
 *
 * The caller's deadline (the "timeout" option) is the relayed request's
 * own timeout; "cancellable" gives its handler a cancellable of its own
 * (Cancel then cancels it); "priority" is the mailbox lane.
 */

#include "config.h"

#include "spark-dbus-export-private.h"
#include "spark-dbus-wire-private.h"
#include "spark-dispatcher-private.h"
#include "spark-request-private.h"
#include "spark-dbus.h"
#include "spark-error.h"

typedef struct
{
  gint                ref_count;      /* atomic */
  SparkModuleServer  *server;         /* a reference */
  SparkDispatcher    *dispatcher;     /* the export's own */
  SparkDispatcher    *commands[3];    /* context: per priority (LOW, DEFAULT, HIGH), made on first use */
  GDBusConnection    *connection;     /* a reference */
  char               *object_path;
  guint               registration;   /* export_lock */
  gulong              running_id;     /* export_lock: notify::running */
  GMainContext       *context;        /* where method calls run */
  GThread            *thread;         /* the thread that exported it: a reference, so
                                         * that no later thread takes its address */

  GMutex              lock;
  GHashTable         *peers;          /* lock: sender name -> ExportPeer */
} Export;

typedef struct
{
  char       *name;       /* the key: the caller's unique name, "" for a peer */
  GHashTable *calls;      /* serial -> ExportCall, unanswered */
  GHashTable *senders;    /* &remote id -> ExportSender */
  guint       n_calls;
} ExportPeer;

typedef struct
{
  guint64 remote;         /* the key: the remote dispatcher's id */
  guint64 local;          /* what its requests are relayed as */
  guint   n_calls;
} ExportSender;

typedef struct
{
  Export                *export;        /* a reference */
  ExportPeer            *peer;          /* lock */
  ExportSender          *sender;        /* lock; NULL for commands */
  guint32                serial;
  GDBusMethodInvocation *invocation;    /* NULL once answered */
  SparkRequest          *req;           /* requests: a reference, for Cancel */
  GCancellable          *cancellable;   /* commands waiting for room: Cancel ends the wait */
} ExportCall;

/* Every export of the process, for unexport() and the deadlock check. */
static GMutex export_lock;
static GList *exports;   /* export_lock: Export, one reference each */
static gint n_exports;   /* atomic, written under export_lock: its length */

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

  g_assert (g_hash_table_size (export->peers) == 0);
  g_hash_table_unref (export->peers);
  g_mutex_clear (&export->lock);
  for (guint i = 0; i < G_N_ELEMENTS (export->commands); i++)
    g_clear_object (&export->commands[i]);
  g_clear_object (&export->dispatcher);
  g_thread_unref (export->thread);
  g_clear_object (&export->server);
  g_clear_object (&export->connection);
  g_clear_pointer (&export->context, g_main_context_unref);
  g_free (export->object_path);
  g_free (export);
}

static void
export_peer_free (gpointer data)
{
  ExportPeer *peer = data;

  g_hash_table_unref (peer->calls);
  g_hash_table_unref (peer->senders);
  g_free (peer->name);
  g_free (peer);
}

static const char *
peer_name (GDBusMethodInvocation *invocation)
{
  const char *sender = g_dbus_method_invocation_get_sender (invocation);

  /* A peer-to-peer connection has no sender: one peer, one space of serials. */
  return sender != NULL ? sender : "";
}

/* With the lock. */
static ExportPeer *
export_lookup_peer (Export                *export,
                    GDBusMethodInvocation *invocation,
                    gboolean               create)
{
  const char *name = peer_name (invocation);
  ExportPeer *peer = g_hash_table_lookup (export->peers, name);

  if (peer == NULL && create)
    {
      peer = g_new0 (ExportPeer, 1);
      peer->name = g_strdup (name);
      peer->calls = g_hash_table_new (NULL, NULL);
      peer->senders = g_hash_table_new_full (g_int64_hash, g_int64_equal, NULL, g_free);
      g_hash_table_insert (export->peers, peer->name, peer);
    }
  return peer;
}

/* Starts tracking a call that will be answered later. @remote: for a
 * request, the caller's dispatcher (0: none said, the default); NULL for
 * a command, which needs no sender. */
static ExportCall *
export_call_new (Export                *export,
                 GDBusMethodInvocation *invocation,
                 const guint64         *remote)
{
  ExportCall *call = g_new0 (ExportCall, 1);
  ExportPeer *peer;
  ExportSender *sender;

  call->export = export_ref (export);
  call->invocation = invocation;
  call->serial = g_dbus_message_get_serial (g_dbus_method_invocation_get_message (invocation));

  g_mutex_lock (&export->lock);
  peer = call->peer = export_lookup_peer (export, invocation, TRUE);
  peer->n_calls++;
  /* A caller reusing a serial still pending is broken: the newer call
   * cannot be cancelled, both are answered. */
  if (!g_hash_table_contains (peer->calls, GUINT_TO_POINTER (call->serial)))
    g_hash_table_insert (peer->calls, GUINT_TO_POINTER (call->serial), call);
  /* Remote 0 (the option left out) is the peer's default sender. */
  sender = remote != NULL ? g_hash_table_lookup (peer->senders, remote) : NULL;
  if (remote != NULL && sender == NULL)
    {
      sender = g_new0 (ExportSender, 1);
      sender->remote = *remote;
      sender->local = spark_dispatcher_new_sender_id ();
      g_hash_table_insert (peer->senders, &sender->remote, sender);
    }
  if (sender != NULL)
    sender->n_calls++;
  call->sender = sender;
  g_mutex_unlock (&export->lock);

  return call;
}

/* Forgets @call; any thread. */
static void
export_call_free (ExportCall *call)
{
  Export *export = call->export;
  ExportPeer *peer = call->peer;

  g_assert (call->invocation == NULL);

  g_mutex_lock (&export->lock);
  /* Only this call's own entry: an older call may hold the serial. */
  if (g_hash_table_lookup (peer->calls, GUINT_TO_POINTER (call->serial)) == call)
    g_hash_table_remove (peer->calls, GUINT_TO_POINTER (call->serial));
  if (call->sender != NULL && --call->sender->n_calls == 0)
    g_hash_table_remove (peer->senders, &call->sender->remote);
  if (--peer->n_calls == 0)
    g_hash_table_remove (export->peers, peer->name);
  g_mutex_unlock (&export->lock);

  g_clear_pointer (&call->req, spark_request_unref);
  g_clear_object (&call->cancellable);
  export_unref (export);
  g_free (call);
}

/* The name a D-Bus error of a handler's travels under: GDBus's own
 * (UnknownMethod, NoReply...) would read as the module being gone. */
#define HANDLER_ERROR_PREFIX SPARK_DBUS_HANDLER_ERROR_PREFIX

static void
return_error (GDBusMethodInvocation *invocation,
              const GError          *error)
{
  if (error->domain == G_DBUS_ERROR)
    {
      g_autofree char *name = g_dbus_error_encode_gerror (error);
      g_autofree char *wrapped = g_strconcat (HANDLER_ERROR_PREFIX, name, NULL);

      g_dbus_method_invocation_return_dbus_error (invocation, wrapped, error->message);
    }
  else
    g_dbus_method_invocation_return_gerror (invocation, error);
}

/* The relayed request's outcome: on whichever thread decided it. */
static void
on_request_done (GVariant     *reply,
                 const GError *error,
                 gpointer      user_data)
{
  ExportCall *call = user_data;
  GDBusMethodInvocation *invocation = g_steal_pointer (&call->invocation);

  if (error != NULL)
    return_error (invocation, error);
  else
    {
      GVariant *wrapped = spark_dbus_wrap_value (reply);

      g_dbus_method_invocation_return_value (invocation, g_variant_new_tuple (&wrapped, 1));
    }
  export_call_free (call);
}

static void
on_command_sent (GObject      *source,
                 GAsyncResult *result,
                 gpointer      user_data)
{
  ExportCall *call = user_data;
  GDBusMethodInvocation *invocation = g_steal_pointer (&call->invocation);
  GError *error = NULL;

  if (spark_dispatcher_send_command_finish (SPARK_DISPATCHER (source), result, &error))
    g_dbus_method_invocation_return_value (invocation, NULL);
  else
    {
      g_dbus_method_invocation_return_gerror (invocation, error);
      g_error_free (error);
    }
  export_call_free (call);
}

/* The priority option; FALSE (answered) if it is wrong. */
static gboolean
check_priority (gint32                 value,
                GDBusMethodInvocation *invocation,
                SparkPriority         *priority)
{
  if (value != SPARK_PRIORITY_DEFAULT && value != SPARK_PRIORITY_HIGH && value != SPARK_PRIORITY_LOW)
    {
      g_dbus_method_invocation_return_error (invocation, G_DBUS_ERROR, G_DBUS_ERROR_INVALID_ARGS,
                                             "No such priority: %d", value);
      return FALSE;
    }
  *priority = (SparkPriority) value;
  return TRUE;
}

static void
handle_request (Export                *export,
                GDBusMethodInvocation *invocation,
                GVariant              *args)
{
  g_autoptr(GVariant) wrapped = NULL;
  g_autoptr(GVariant) options = NULL;
  GVariant *parameters = NULL;
  const char *name;
  SparkDBusOptions opts;
  SparkPriority priority;
  GError *error = NULL;
  ExportCall *call;
  SparkRequest *req;

  spark_dbus_call_body_get (args, &name, &wrapped, &options);
  if (*name == '\0')
    {
      g_dbus_method_invocation_return_error_literal (invocation, G_DBUS_ERROR, G_DBUS_ERROR_INVALID_ARGS,
                                                     "A request's name must not be empty");
      return;
    }
  spark_dbus_options_parse (options, &opts);
  if (!check_priority (opts.priority, invocation, &priority))
    return;
  if (!spark_dbus_unwrap_value (wrapped, &parameters, &error))
    {
      g_dbus_method_invocation_take_error (invocation, error);
      return;
    }

  call = export_call_new (export, invocation, &opts.sender);
  req = spark_request_new_inline (name, parameters, (gint) MIN (opts.timeout_msec, (guint32) G_MAXINT),
                                  opts.cancellable, on_request_done, call);
  /* Set before it is sent: the outcome may come before relay returns. */
  call->req = spark_request_ref (req);
  spark_dispatcher_relay_request (export->dispatcher, req,
                                  call->sender->local, priority);
}

/* Context: the export's dispatcher of @priority, for commands. */
static SparkDispatcher *
export_commands (Export        *export,
                 SparkPriority  priority)
{
  guint i = priority == SPARK_PRIORITY_LOW ? 0 : priority == SPARK_PRIORITY_DEFAULT ? 1 : 2;

  if (export->commands[i] == NULL)
    export->commands[i] = spark_dispatcher_with_priority (export->dispatcher, priority);
  return export->commands[i];
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
  SparkDBusOptions opts;
  SparkPriority priority;
  GError *error = NULL;
  SparkDispatcher *dispatcher;

  spark_dbus_call_body_get (args, &name, &wrapped, &options);
  if (*name == '\0')
    {
      g_dbus_method_invocation_return_error_literal (invocation, G_DBUS_ERROR, G_DBUS_ERROR_INVALID_ARGS,
                                                     "A command's name must not be empty");
      return;
    }
  spark_dbus_options_parse (options, &opts);
  if (!check_priority (opts.priority, invocation, &priority))
    return;
  if (!spark_dbus_unwrap_value (wrapped, &parameters, &error))
    {
      g_dbus_method_invocation_take_error (invocation, error);
      return;
    }
  dispatcher = export_commands (export, priority);

  if (opts.wait)
    {
      /* Waits for room without blocking this context; Cancel ends the wait. */
      ExportCall *call = export_call_new (export, invocation, NULL);

      call->cancellable = g_cancellable_new ();
      spark_dispatcher_send_command_async (dispatcher, name, parameters, call->cancellable,
                                           on_command_sent, call);
    }
  else if (spark_dispatcher_try_send_command (dispatcher, name, parameters, &error))
    g_dbus_method_invocation_return_value (invocation, NULL);   /* nothing is sent if NO_REPLY_EXPECTED */
  else
    g_dbus_method_invocation_take_error (invocation, error);
}

static void
handle_cancel (Export                *export,
               GDBusMethodInvocation *invocation,
               GVariant              *args)
{
  SparkRequest *req = NULL;
  GCancellable *cancellable = NULL;
  ExportPeer *peer;
  guint32 serial;

  g_variant_get (args, "(u)", &serial);

  /* Only the caller's own calls: the peer is its unique name. An
   * unknown or finished serial is no error (the reply may be on its way). */
  g_mutex_lock (&export->lock);
  peer = export_lookup_peer (export, invocation, FALSE);
  if (peer != NULL)
    {
      ExportCall *call = g_hash_table_lookup (peer->calls, GUINT_TO_POINTER (serial));

      if (call != NULL && call->req != NULL)
        req = spark_request_ref (call->req);
      else if (call != NULL && call->cancellable != NULL)
        cancellable = g_object_ref (call->cancellable);
    }
  g_mutex_unlock (&export->lock);

  /* Outside the lock: the outcome answers the call at once. */
  if (req != NULL)
    {
      spark_request_complete_cancelled (req, "The caller cancelled the request");
      spark_request_unref (req);
    }
  if (cancellable != NULL)
    {
      g_cancellable_cancel (cancellable);
      g_object_unref (cancellable);
    }

  g_dbus_method_invocation_return_value (invocation, NULL);
}

static void
handle_cancel_all (Export                *export,
                   GDBusMethodInvocation *invocation,
                   GVariant              *args)
{
  ExportPeer *peer;
  guint64 remote, local = 0;

  g_variant_get (args, "(t)", &remote);

  g_mutex_lock (&export->lock);
  peer = export_lookup_peer (export, invocation, FALSE);
  if (peer != NULL)
    {
      ExportSender *sender = g_hash_table_lookup (peer->senders, &remote);

      if (sender != NULL)
        local = sender->local;
    }
  g_mutex_unlock (&export->lock);

  /* No entry: none of its requests is here, so none is queued. */
  if (local != 0)
    spark_dispatcher_relay_cancel_all (export->dispatcher, local);

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
  else if (g_str_equal (method_name, "CancelAll"))
    handle_cancel_all (export, invocation, args);
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
  export->thread = g_thread_ref (g_thread_self ());
  g_mutex_init (&export->lock);
  export->peers = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, export_peer_free);

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
  g_atomic_int_inc (&n_exports);
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
          g_atomic_int_add (&n_exports, -1);
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

/* With export_lock: whether @export is the module that @connection reaches
 * as @bus_name (nullable: the peer). */
static gboolean
export_is_reached_by (Export          *export,
                      GDBusConnection *connection,
                      const char      *bus_name)
{
  const char *unique = g_dbus_connection_get_unique_name (export->connection);

  if (bus_name != NULL)
    return unique != NULL && g_str_equal (unique, bus_name);

  /* Two ends of one peer-to-peer connection share its GUID. */
  return export->connection == connection ||
         (unique == NULL && g_dbus_connection_get_unique_name (connection) == NULL &&
          g_strcmp0 (g_dbus_connection_get_guid (export->connection), g_dbus_connection_get_guid (connection)) == 0);
}

gboolean
spark_dbus_export_would_deadlock (GDBusConnection *connection,
                                  const char      *bus_name,
                                  const char      *object_path)
{
  gboolean ret = FALSE;

  /* Every blocking remote call asks: a process that exports nothing (most
   * clients) takes no lock. */
  if (g_atomic_int_get (&n_exports) == 0)
    return FALSE;

  g_mutex_lock (&export_lock);
  for (GList *l = exports; l != NULL && !ret; l = l->next)
    {
      Export *export = l->data;
      SparkTransport *transport;

      if (!g_str_equal (export->object_path, object_path) || !export_is_reached_by (export, connection, bus_name))
        continue;

      transport = spark_dispatcher_get_transport (export->dispatcher);
      ret = g_main_context_is_owner (export->context) ||
            g_main_context_get_thread_default () == export->context ||
            export->thread == g_thread_self () ||
            (transport->vtable->would_deadlock != NULL && transport->vtable->would_deadlock (transport));
    }
  g_mutex_unlock (&export_lock);

  return ret;
}
