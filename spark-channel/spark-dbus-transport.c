/* spark-dbus-transport.c: a transport to a module on D-Bus
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The other end of spark-dbus-export.c, behind the SparkTransport seam: a
 * dispatcher made by spark_dispatcher_new_for_dbus() keeps its API and its
 * guarantees, its requests travel as method calls.
 *
 * Threads. A call is sent from the sender's own thread when a slot is
 * free (g_dbus_connection_send_message() only queues it), and its reply
 * is taken by a filter on the connection, on GDBus's worker thread, which
 * completes the request there: its outcome then travels to the requester
 * the usual way (its reply port, or the blocked caller). No thread hop of
 * our own on the way out or back, as with a raw g_dbus_connection_call().
 * A thread of the library's own ("spark-dbus", its own GMainContext, made
 * on first use and kept for the life of the process, like GDBus's worker)
 * sends what had to wait for a slot, watches the bus name, and looks once
 * a second, while calls are pending, whether the connection has closed
 * (GDBus's
 * ::closed comes on the connection's own context, which a requester may
 * be blocking). Nothing in the filter blocks or runs user code: a shutdown
 * token is cancelled on the library's thread.
 *
 * Flow control. A message bus refuses more pending replies per connection
 * than its limit; so each connection has a link (its qdata) that keeps at
 * most SPARK_DBUS_MAX_IN_FLIGHT calls expecting a reply in flight, for
 * every transport on it, and queues the rest in order. Nothing blocks:
 * requests wait in the queue with their clocks running (a request
 * cancelled or timed out there is never sent).
 *
 * Cancellation and deadlines. A request sends what is left of its timeout
 * as the "timeout" option (the export enforces it too). When it ends on
 * this side before its reply (cancelled, timed out: its handler
 * cancellable is cancelled), a Cancel (serial) goes to the export, which
 * cancels the remote handler's cancellable. The reply still comes back
 * and frees its slot.
 *
 * The peer vanishing. Calls in flight to a peer that goes away fail (the
 * bus answers NoReply; a closed connection fails them all, from its
 * ::closed or the worker's check), and each such error is reported as
 * SPARK_CHANNEL_ERROR_CLOSED; the owner of @bus_name going away (its
 * NameOwnerChanged) also fails every request in flight at once. Either way the
 * transport is then gone: queued and later calls fail with CLOSED. Every
 * request completes exactly once because its own claim decides (see
 * spark-request.c).
 */

#include "config.h"

#include <string.h>

#include "spark-dbus-export-private.h"
#include "spark-dbus-transport-private.h"
#include "spark-dispatcher-private.h"
#include "spark-dbus-wire-private.h"
#include "spark-dbus.h"
#include "spark-error.h"

/* The worker --------------------------------------------------------- */

static gpointer
worker_main (gpointer data)
{
  GMainContext *context = data;
  GMainLoop *loop;

  g_main_context_push_thread_default (context);
  loop = g_main_loop_new (context, FALSE);
  g_main_loop_run (loop);   /* never quits, like GDBus's worker */
  g_assert_not_reached ();
  return NULL;
}

static GMainContext *
worker_get_context (void)
{
  static GMainContext *context;

  if (g_once_init_enter (&context))
    {
      GMainContext *ctx = g_main_context_new ();

      g_thread_unref (g_thread_new ("spark-dbus", worker_main, ctx));
      g_once_init_leave (&context, ctx);
    }

  return context;
}

/* Calls ---------------------------------------------------------------- */

typedef struct _SparkDBusTransport SparkDBusTransport;
typedef struct _Link               Link;

typedef enum {
  CALL_REQUEST,
  CALL_COMMAND,
  CALL_SHUTDOWN,
} CallKind;

/* A blocked command sender. */
typedef struct
{
  GMutex    mutex;
  GCond     cond;
  gboolean  done;     /* mutex */
  GError   *error;    /* mutex */
} CommandWaiter;

typedef struct
{
  gint                ref_count;      /* atomic: the call's owner, a connected cancel handler */
  CallKind            kind;
  SparkDBusTransport *transport;      /* a reference */
  GDBusMessage       *message;        /* built by the sender, sent once */
  guint32             serial;         /* link mutex: set once sent */
  gboolean            cancel_sent;    /* link mutex */
  gboolean            never_sent;     /* link mutex: refused, the peer being gone */
  GCancellable       *cancellable;    /* nullable, a reference: its cancel sends Cancel */
  gulong              cancel_id;      /* set before the call is sent */

  SparkRequest       *req;            /* REQUEST: the sender's reference */
  SparkPriority       priority;       /* REQUEST, COMMAND */

  char               *name;           /* COMMAND, async, supervised: to send again elsewhere */
  GVariant           *parameters;     /* same, nullable */

  gboolean            wait;           /* COMMAND: wait for room */
  CommandWaiter      *waiter;         /* COMMAND: a blocked sender, or */
  GTask              *task;           /* COMMAND: an async one */

  GCancellable       *token;          /* SHUTDOWN: nullable */
} Call;

struct _Link
{
  GMutex      mutex;
  GHashTable *pending;      /* mutex: serial -> Call, sent and not yet answered */
  guint       in_flight;    /* mutex: calls with a slot (sending or pending) */
  GQueue      queue;        /* mutex: Call, waiting for a slot */
  gboolean    scheduled;    /* mutex: a pump is attached to the worker */
  GSource    *check;        /* the closed check, on the worker: a reference */
  gboolean    check_armed;  /* mutex: its ready time is set */
  GHashTable *defaults;     /* mutex: object path -> the default sender there (guint64 *) */
};

struct _SparkDBusTransport
{
  SparkTransport   transport;
  gint             ref_count;     /* atomic */
  GDBusConnection *connection;    /* immutable */
  char            *bus_name;      /* immutable, nullable */
  char            *object_path;   /* immutable */
  Link            *link;          /* immutable: the connection's */

  GMutex           mutex;
  gboolean         closed;        /* mutex: after send_shutdown(): nothing new */
  gboolean         gone;          /* mutex: the peer went away: nothing at all */
  GHashTable      *in_flight;     /* mutex: Call (requests), sent, not yet answered */
  guint            watch_id;      /* worker */

  gsize            default_once;   /* default_sender is set */
  guint64          default_sender; /* see transport_is_default_sender() */

  SparkDBusOrphanFunc orphan_func;    /* immutable once used */
  gpointer            orphan_data;
  GDestroyNotify      orphan_destroy;
};

static void transport_unref (SparkTransport *transport);
static void link_release (Link *link);

static Call *
call_ref (Call *call)
{
  g_atomic_int_inc (&call->ref_count);
  return call;
}

static void
call_unref (Call *call)
{
  if (!g_atomic_int_dec_and_test (&call->ref_count))
    return;

  g_clear_pointer (&call->req, spark_request_unref);
  g_free (call->name);
  g_clear_pointer (&call->parameters, g_variant_unref);
  g_clear_object (&call->message);
  g_clear_object (&call->task);
  g_clear_object (&call->token);
  g_clear_object (&call->cancellable);
  transport_unref (&call->transport->transport);
  g_free (call);
}

static void
call_closure_unref (gpointer  data,
                    GClosure *closure)
{
  (void) closure;
  call_unref (data);
}

static GError *
closed_error (SparkDBusTransport *self)
{
  return g_error_new (SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED,
                      "The module at %s on %s is gone or shut down",
                      self->object_path, self->bus_name != NULL ? self->bus_name : "the peer");
}

G_DEFINE_QUARK (spark-dbus-unsent-error-quark, spark_dbus_unsent_error)

/* A message refused because the peer is gone, never sent: for a
 * supervised transport, the marker that it may go to the next process;
 * otherwise CLOSED. */
static GError *
unsent_error (SparkDBusTransport *self)
{
  if (self->orphan_func == NULL)
    return closed_error (self);
  return g_error_new (SPARK_DBUS_UNSENT_ERROR, 0, "The module at %s is gone; not sent", self->object_path);
}

/* What a call's error says on this side: the remote prefix stripped; the
 * peer or the object being gone is CLOSED. A handler's own D-Bus error
 * came under SPARK_DBUS_HANDLER_ERROR_PREFIX: it is unwrapped, and taken
 * for what it says. @local: made on this side (a closed connection), not
 * read from a reply. */
static GError *
map_error (SparkDBusTransport *self,
           GError             *error,
           gboolean            local)
{
  g_autofree char *remote_name = g_dbus_error_get_remote_error (error);

  if (remote_name != NULL && g_str_has_prefix (remote_name, SPARK_DBUS_HANDLER_ERROR_PREFIX))
    {
      GError *handler_error;

      g_dbus_error_strip_remote_error (error);
      handler_error = g_dbus_error_new_for_dbus_error (remote_name + strlen (SPARK_DBUS_HANDLER_ERROR_PREFIX),
                                                       error->message);
      g_dbus_error_strip_remote_error (handler_error);
      g_error_free (error);
      return handler_error;
    }

  if ((local && g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CLOSED)) ||
      g_error_matches (error, G_DBUS_ERROR, G_DBUS_ERROR_NO_REPLY) ||
      g_error_matches (error, G_DBUS_ERROR, G_DBUS_ERROR_SERVICE_UNKNOWN) ||
      g_error_matches (error, G_DBUS_ERROR, G_DBUS_ERROR_NAME_HAS_NO_OWNER) ||
      g_error_matches (error, G_DBUS_ERROR, G_DBUS_ERROR_DISCONNECTED) ||
      g_error_matches (error, G_DBUS_ERROR, G_DBUS_ERROR_UNKNOWN_OBJECT) ||
      /* What GDBus answers for a path with no object. */
      g_error_matches (error, G_DBUS_ERROR, G_DBUS_ERROR_UNKNOWN_METHOD) ||
      g_error_matches (error, G_DBUS_ERROR, G_DBUS_ERROR_UNKNOWN_INTERFACE))
    {
      GError *closed = closed_error (self);

      g_prefix_error (&closed, "%s: ", error->message);
      g_error_free (error);
      return closed;
    }

  g_dbus_error_strip_remote_error (error);
  return error;
}

static void
command_waiter_signal (CommandWaiter *waiter,
                       GError        *error)
{
  g_mutex_lock (&waiter->mutex);
  waiter->error = error;
  waiter->done = TRUE;
  g_cond_signal (&waiter->cond);
  g_mutex_unlock (&waiter->mutex);
}

static gboolean
cancel_token_on_worker (gpointer data)
{
  g_cancellable_cancel (data);
  return G_SOURCE_REMOVE;
}

/* Any thread, from the cancellable's ::cancelled: a sent call gets a
 * Cancel; one not sent yet never will be (see link_send_locked()). */
static void
on_call_cancelled (GCancellable *cancellable,
                   gpointer      data)
{
  Call *call = data;
  SparkDBusTransport *self = call->transport;
  Link *link = self->link;
  GDBusMessage *message;
  guint32 serial = 0;

  (void) cancellable;

  g_mutex_lock (&link->mutex);
  if (call->serial != 0 && !call->cancel_sent &&
      g_hash_table_lookup (link->pending, GUINT_TO_POINTER (call->serial)) == call)
    {
      serial = call->serial;
      call->cancel_sent = TRUE;
    }
  g_mutex_unlock (&link->mutex);

  if (serial == 0)
    return;

  message = g_dbus_message_new_method_call (self->bus_name, self->object_path,
                                            SPARK_DBUS_INTERFACE, "Cancel");
  g_dbus_message_set_body (message, g_variant_new ("(u)", serial));
  g_dbus_message_set_flags (message, G_DBUS_MESSAGE_FLAGS_NO_REPLY_EXPECTED);
  /* Thread-safe and never blocks; a closed connection is no news. */
  (void) g_dbus_connection_send_message (self->connection, message, G_DBUS_SEND_MESSAGE_FLAGS_NONE,
                                         NULL, NULL);
  g_object_unref (message);
}

/*
 * Ends @call (its slot taken) with the peer's @reply, or @error (taken)
 * when there is none. Runs on GDBus's worker thread (the reply, through
 * the link's filter), or wherever a send failed or the connection was
 * found closed: it never blocks and runs no user code there (outcomes go
 * to their requesters the usual way; a shutdown token is cancelled on
 * the library's own thread).
 */
static void
call_finish (Call         *call,
             GDBusMessage *reply,
             GError       *error)
{
  SparkDBusTransport *self = call->transport;
  Link *link = self->link;

  gboolean local = reply == NULL;

  if (reply != NULL)
    g_dbus_message_to_gerror (reply, &error);

  /* Not g_cancellable_disconnect(): it would wait for a handler running
   * on another thread. The handler holds its own reference. */
  if (call->cancel_id != 0)
    g_signal_handler_disconnect (call->cancellable, call->cancel_id);

  g_mutex_lock (&self->mutex);
  if (call->kind == CALL_REQUEST)
    g_hash_table_remove (self->in_flight, call);
  if (local && g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CLOSED))
    self->gone = TRUE;
  g_mutex_unlock (&self->mutex);

  if (error != NULL)
    error = map_error (self, error, local);

  switch (call->kind)
    {
    case CALL_REQUEST:
      if (error != NULL)
        spark_request_return_reply (call->req, NULL, error);
      else
        {
          GVariant *body = g_dbus_message_get_body (reply);
          GVariant *value = NULL;

          if (body != NULL && g_variant_is_of_type (body, G_VARIANT_TYPE ("(av)")))
            {
              g_autoptr(GVariant) wrapped = g_variant_get_child_value (body, 0);

              if (spark_dbus_unwrap_value (wrapped, &value, &error) && value == NULL)
                error = g_error_new (G_DBUS_ERROR, G_DBUS_ERROR_INVALID_ARGS,
                                     "The reply from %s is empty", self->object_path);
            }
          else
            error = g_error_new (G_DBUS_ERROR, G_DBUS_ERROR_INVALID_SIGNATURE,
                                 "The reply from %s is of type “%s”, expected “(av)”",
                                 self->object_path, body != NULL ? g_variant_get_type_string (body) : "()");

          if (error != NULL)
            spark_request_complete (call->req, NULL, error);
          else
            spark_request_return_reply (call->req, value, NULL);
        }
      break;
    case CALL_COMMAND:
      if (call->waiter != NULL)
        command_waiter_signal (call->waiter, error);
      else if (error != NULL)
        g_task_return_error (call->task, error);
      else
        g_task_return_boolean (call->task, TRUE);
      break;
    case CALL_SHUTDOWN:
      g_clear_error (&error);
      /* However the server stops, or is lost, the token is cancelled;
       * its handlers are the user's: not on GDBus's thread. */
      if (call->token != NULL)
        g_main_context_invoke_full (worker_get_context (), G_PRIORITY_DEFAULT, cancel_token_on_worker,
                                    g_object_ref (call->token), g_object_unref);
      break;
    default:
      g_assert_not_reached ();
    }

  /* The slot first: the call's reference may be the last one on the
   * transport, and with it on the connection that holds the link. */
  link_release (link);
  call_unref (call);
}

/* With the link's lock and a slot for @call: sends it. Returns FALSE if it
 * was not sent; then *@error (maybe NULL: nothing to report) is its
 * outcome, for call_finish() or to drop once the lock is released. */
static gboolean
link_send_locked (Link    *link,
                  Call    *call,
                  GError **error)
{
  SparkDBusTransport *self = call->transport;
  guint32 serial = 0;
  gboolean gone;

  g_mutex_lock (&self->mutex);
  gone = self->gone;
  g_mutex_unlock (&self->mutex);

  if (gone)
    {
      call->never_sent = TRUE;
      *error = closed_error (self);
      return FALSE;
    }

  /* Ended while it waited (cancelled, timed out): never sent. */
  if (call->kind == CALL_REQUEST && spark_request_is_claimed (call->req))
    return FALSE;
  if (call->kind == CALL_COMMAND && g_cancellable_set_error_if_cancelled (call->cancellable, error))
    return FALSE;

  /* The serial is stored before the reply can be looked for: the filter
   * takes this lock. Sending only queues the message. */
  if (!g_dbus_connection_send_message (self->connection, call->message, G_DBUS_SEND_MESSAGE_FLAGS_NONE,
                                       &serial, error))
    {
      call->never_sent = g_error_matches (*error, G_IO_ERROR, G_IO_ERROR_CLOSED);
      if (call->never_sent)
        {
          /* Gone now, under the link's lock: a pump takes the rest of
           * its queue along with this one, in order (link_pump()). */
          g_mutex_lock (&self->mutex);
          self->gone = TRUE;
          g_mutex_unlock (&self->mutex);
        }
      return FALSE;
    }

  call->serial = serial;
  g_hash_table_insert (link->pending, GUINT_TO_POINTER (serial), call);
  if (!link->check_armed)
    {
      /* The closed check runs while calls are pending, and only then. */
      link->check_armed = TRUE;
      g_source_set_ready_time (link->check, g_get_monotonic_time () + G_USEC_PER_SEC);
    }
  if (call->kind == CALL_REQUEST)
    {
      g_mutex_lock (&self->mutex);
      g_hash_table_add (self->in_flight, call);
      g_mutex_unlock (&self->mutex);
    }
  return TRUE;
}

/* Whether @sender is the default sender of @self's object path on its
 * connection: the first dispatcher that sent a request there. Its
 * requests need not name it (the "sender" option): the export takes a
 * request without one for its caller's default sender, and CancelAll (0)
 * for that sender's. Most remote modules have one dispatcher per
 * connection, whose requests are then a dictionary entry smaller, which
 * GDBus takes a twentieth of a call's cost to write and parse. Keyed by
 * the path alone: another module at the same path, over the same
 * connection, only misses the shortcut. */
static gboolean
transport_is_default_sender (SparkDBusTransport *self,
                             guint64             sender)
{
  if (g_once_init_enter (&self->default_once))
    {
      Link *link = self->link;
      guint64 *first;

      g_mutex_lock (&link->mutex);
      first = g_hash_table_lookup (link->defaults, self->object_path);
      if (first == NULL)
        {
          first = g_new (guint64, 1);
          *first = sender;
          g_hash_table_insert (link->defaults, g_strdup (self->object_path), first);
        }
      self->default_sender = *first;
      g_mutex_unlock (&link->mutex);
      g_once_init_leave (&self->default_once, 1);
    }

  return sender == self->default_sender;
}

/* Whether @call, refused with @error, was never sent and may go elsewhere
 * (its transport is supervised): then takes what it carries into @unsent
 * and @error, and disconnects it; the caller hands @unsent to the orphan
 * function, then releases the slot and the call. */
static gboolean
call_take_unsent (Call            *call,
                  GError          *error,
                  SparkDBusUnsent *unsent)
{
  SparkDBusTransport *self = call->transport;

  if (error == NULL || !call->never_sent || self->orphan_func == NULL ||
      !((call->kind == CALL_REQUEST && !spark_request_is_claimed (call->req)) ||
        (call->kind == CALL_COMMAND && call->task != NULL)))
    return FALSE;

  g_error_free (error);
  if (call->cancel_id != 0)
    g_signal_handler_disconnect (call->cancellable, call->cancel_id);
  memset (unsent, 0, sizeof *unsent);
  unsent->priority = call->priority;
  if (call->kind == CALL_REQUEST)
    unsent->req = g_steal_pointer (&call->req);
  else
    {
      unsent->name = g_steal_pointer (&call->name);
      unsent->parameters = g_steal_pointer (&call->parameters);
      unsent->cancellable = g_steal_pointer (&call->cancellable);
      unsent->task = g_steal_pointer (&call->task);
    }
  return TRUE;
}

/* Without the lock: what link_send_locked() refused (its slot taken). */
static void
call_not_sent (Call   *call,
               GError *error)
{
  SparkDBusTransport *self = call->transport;
  Link *link = self->link;
  SparkDBusUnsent unsent;

  if (call_take_unsent (call, error, &unsent))
    {
      /* Never sent, its peer gone: somebody else may send it. */
      self->orphan_func (&self->transport, &unsent, 1, self->orphan_data);
      link_release (link);
      call_unref (call);
    }
  else if (error != NULL)
    {
      /* A blocked sender of a supervised transport tries the next process. */
      if (call->never_sent && call->kind == CALL_COMMAND && call->waiter != NULL && self->orphan_func != NULL)
        {
          g_error_free (error);
          error = unsent_error (self);
        }
      call_finish (call, NULL, error);
    }
  else
    {
      /* A request that ended already: its outcome is decided. */
      if (call->cancel_id != 0)
        g_signal_handler_disconnect (call->cancellable, call->cancel_id);
      link_release (link);
      call_unref (call);
    }
}

/* call_not_sent() for each (call, error) pair of @refused, in order; the
 * unsent ones of one transport in a row go to its orphan function in one
 * call, so that the supervisor queues them all at once, in their order
 * (none of them can then miss the next process's first messages). */
static void
calls_not_sent (GPtrArray *refused)
{
  GArray *unsent = g_array_new (FALSE, FALSE, sizeof (SparkDBusUnsent));
  GPtrArray *taken = g_ptr_array_new ();
  SparkDBusTransport *from = NULL;

  for (guint i = 0; i <= refused->len; i += 2)
    {
      Call *call = i < refused->len ? g_ptr_array_index (refused, i) : NULL;
      SparkDBusUnsent one;

      /* The run of one transport's unsent calls ends here. */
      if (taken->len > 0 && (call == NULL || call->transport != from))
        {
          from->orphan_func (&from->transport, (SparkDBusUnsent *) (gpointer) unsent->data, unsent->len,
                             from->orphan_data);
          for (guint j = 0; j < taken->len; j++)
            {
              link_release (from->link);
              call_unref (g_ptr_array_index (taken, j));
            }
          g_array_set_size (unsent, 0);
          g_ptr_array_set_size (taken, 0);
        }
      if (call == NULL)
        break;

      if (call_take_unsent (call, g_ptr_array_index (refused, i + 1), &one))
        {
          from = call->transport;
          g_array_append_val (unsent, one);
          g_ptr_array_add (taken, call);
        }
      else
        call_not_sent (call, g_ptr_array_index (refused, i + 1));
    }

  g_ptr_array_unref (taken);
  g_array_unref (unsent);
}

static gboolean
transport_is_gone (SparkDBusTransport *self)
{
  gboolean gone;

  g_mutex_lock (&self->mutex);
  gone = self->gone;
  g_mutex_unlock (&self->mutex);
  return gone;
}

/* With the link's lock: takes out of its queue, in order, the calls of
 * @self, each with a slot (for call_not_sent()), and adds them to @taken
 * as (call, error) pairs. @sender NULL: all of them (the peer is gone),
 * marked never sent, each with CLOSED; all at once, so that whoever takes
 * them (a pump, spark_dbus_transport_abandon()) hands them on in their
 * order. Otherwise the requests of *@sender (cancel_all()), error NULL. */
static void
link_take_queued_locked (Link               *link,
                         SparkDBusTransport *self,
                         const guint64      *sender,
                         GPtrArray          *taken)
{
  for (GList *l = link->queue.head; l != NULL;)
    {
      GList *next = l->next;
      Call *call = l->data;

      if (call->transport == self &&
          (sender == NULL || (call->kind == CALL_REQUEST && spark_request_get_sender (call->req) == *sender)))
        {
          g_queue_delete_link (&link->queue, l);
          link->in_flight++;
          call->never_sent = sender == NULL;
          g_ptr_array_add (taken, call);
          g_ptr_array_add (taken, sender == NULL ? closed_error (self) : NULL);
        }
      l = next;
    }
}

/* On the worker: sends what the slots allow, in order. */
static void
link_pump (Link *link)
{
  GPtrArray *refused = NULL;

  g_mutex_lock (&link->mutex);
  while (link->in_flight < SPARK_DBUS_MAX_IN_FLIGHT && !g_queue_is_empty (&link->queue))
    {
      Call *call = g_queue_peek_head (&link->queue);
      GError *error = NULL;

      if (transport_is_gone (call->transport))
        {
          /* Its peer is gone: all of its calls at once (see above). */
          if (refused == NULL)
            refused = g_ptr_array_new ();
          link_take_queued_locked (link, call->transport, NULL, refused);
          continue;
        }

      g_queue_pop_head (&link->queue);
      link->in_flight++;
      if (!link_send_locked (link, call, &error))
        {
          if (refused == NULL)
            refused = g_ptr_array_new ();
          g_ptr_array_add (refused, call);
          g_ptr_array_add (refused, error);
        }
    }
  g_mutex_unlock (&link->mutex);

  if (refused != NULL)
    {
      calls_not_sent (refused);
      g_ptr_array_unref (refused);
    }
}

static gboolean
on_link_scheduled (gpointer data)
{
  Link *link = data;

  g_mutex_lock (&link->mutex);
  link->scheduled = FALSE;
  g_mutex_unlock (&link->mutex);
  link_pump (link);
  return G_SOURCE_REMOVE;
}

/* With the lock: has the worker pump the queue, once per batch. */
static void
link_schedule_locked (Link *link)
{
  GSource *source;

  if (link->scheduled || g_queue_is_empty (&link->queue))
    return;

  link->scheduled = TRUE;
  /* Queued calls hold their transport, which holds the connection, which
   * holds the link: it lives until the pump has run. */
  source = g_idle_source_new ();
  g_source_set_priority (source, G_PRIORITY_DEFAULT);
  g_source_set_callback (source, on_link_scheduled, link, NULL);
  g_source_set_static_name (source, "[spark-channel] D-Bus send");
  g_source_attach (source, worker_get_context ());
  g_source_unref (source);
}

/* A slot is free again. */
static void
link_release (Link *link)
{
  g_mutex_lock (&link->mutex);
  link->in_flight--;
  link_schedule_locked (link);
  g_mutex_unlock (&link->mutex);
}

/* Fails every call in flight with G_IO_ERROR_CLOSED (reported CLOSED). */
static void
link_fail_pending (Link *link)
{
  GList *calls;

  g_mutex_lock (&link->mutex);
  calls = g_hash_table_get_values (link->pending);
  g_hash_table_remove_all (link->pending);
  g_mutex_unlock (&link->mutex);

  for (GList *l = calls; l != NULL; l = l->next)
    call_finish (l->data, NULL, g_error_new_literal (G_IO_ERROR, G_IO_ERROR_CLOSED, "The connection is closed"));
  g_list_free (calls);
}

/* GDBus's worker thread: every incoming message passes here first. A
 * reply to one of our calls ends it right here, without a thread hop. */
static GDBusMessage *
link_filter (GDBusConnection *connection,
             GDBusMessage    *message,
             gboolean         incoming,
             gpointer         data)
{
  Link *link = data;
  GDBusMessageType type;
  Call *call;

  (void) connection;

  if (!incoming)
    return message;
  type = g_dbus_message_get_message_type (message);
  if (type != G_DBUS_MESSAGE_TYPE_METHOD_RETURN && type != G_DBUS_MESSAGE_TYPE_ERROR)
    return message;

  g_mutex_lock (&link->mutex);
  call = g_hash_table_lookup (link->pending, GUINT_TO_POINTER (g_dbus_message_get_reply_serial (message)));
  if (call != NULL)
    g_hash_table_remove (link->pending, GUINT_TO_POINTER (call->serial));
  g_mutex_unlock (&link->mutex);

  if (call == NULL)
    return message;   /* somebody else's */

  call_finish (call, message, NULL);
  g_object_unref (message);
  return NULL;
}

/* The link -------------------------------------------------------------- */

static GMutex links_lock;

static void
link_free (gpointer data)
{
  Link *link = data;

  g_assert (g_queue_is_empty (&link->queue) && link->in_flight == 0);
  g_source_destroy (link->check);
  g_source_unref (link->check);
  g_hash_table_unref (link->pending);
  g_hash_table_unref (link->defaults);
  g_mutex_clear (&link->mutex);
  g_free (link);
}

/* A connection closed: GDBus forgets our calls (it never knew them). Its
 * ::closed comes on the connection's own context; so that a requester
 * blocked on that context still hears of it, the worker also looks once a
 * second, while calls are pending on it (an idle connection costs no
 * wakeup). */
static void
on_connection_closed (GDBusConnection *connection,
                      gboolean         remote_peer_vanished,
                      GError          *error,
                      gpointer         data)
{
  (void) connection;
  (void) remote_peer_vanished;
  (void) error;
  link_fail_pending (data);
}

static gboolean
link_check_closed (gpointer data)
{
  GWeakRef *ref = data;
  GDBusConnection *connection = g_weak_ref_get (ref);
  Link *link;

  if (connection == NULL)
    return G_SOURCE_REMOVE;

  link = g_object_get_data (G_OBJECT (connection), "spark-dbus-link");
  if (g_dbus_connection_is_closed (connection))
    link_fail_pending (link);

  /* Again in a second if calls are still pending; else dormant until the
   * next one is sent (link_send_locked()). */
  g_mutex_lock (&link->mutex);
  if (g_hash_table_size (link->pending) > 0)
    g_source_set_ready_time (link->check, g_get_monotonic_time () + G_USEC_PER_SEC);
  else
    {
      link->check_armed = FALSE;
      g_source_set_ready_time (link->check, -1);
    }
  g_mutex_unlock (&link->mutex);

  g_object_unref (connection);
  return G_SOURCE_CONTINUE;
}

static gboolean
check_source_dispatch (GSource     *source,
                       GSourceFunc  callback,
                       gpointer     data)
{
  (void) source;
  return callback (data);
}

/* Fires at its ready time only. */
static GSourceFuncs check_source_funcs = {
  .dispatch = check_source_dispatch,
};

static void
weak_ref_free (gpointer data)
{
  g_weak_ref_clear (data);
  g_free (data);
}

static Link *
link_get (GDBusConnection *connection)
{
  Link *link;

  g_mutex_lock (&links_lock);
  link = g_object_get_data (G_OBJECT (connection), "spark-dbus-link");
  if (link == NULL)
    {
      GWeakRef *ref = g_new0 (GWeakRef, 1);
      GSource *check;

      link = g_new0 (Link, 1);
      g_mutex_init (&link->mutex);
      g_queue_init (&link->queue);
      link->pending = g_hash_table_new (NULL, NULL);
      link->defaults = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
      g_object_set_data_full (G_OBJECT (connection), "spark-dbus-link", link, link_free);
      /* Both end with the connection: the filter and the handler go
       * before its data. */
      g_dbus_connection_add_filter (connection, link_filter, link, NULL);
      g_signal_connect (connection, "closed", G_CALLBACK (on_connection_closed), link);

      g_weak_ref_init (ref, connection);
      check = g_source_new (&check_source_funcs, sizeof (GSource));
      g_source_set_callback (check, link_check_closed, ref, weak_ref_free);
      g_source_set_static_name (check, "[spark-channel] D-Bus closed check");
      g_source_attach (check, worker_get_context ());
      link->check = check;   /* the link's reference */
    }
  g_mutex_unlock (&links_lock);

  return link;
}

/* Any thread: builds @call's message (taken), then sends it now if a slot
 * is free and nothing waits before it, else queues it for the worker. */
static void
link_submit (Link *link,
             Call *call)
{
  SparkDBusTransport *self = call->transport;
  GError *error = NULL;
  gboolean sent;

  switch (call->kind)
    {
    case CALL_REQUEST:
      {
        SparkRequest *req = call->req;
        GVariant *options[4];
        gsize n_options = 0;
        gint64 deadline = spark_request_get_deadline (req);

        if (deadline != 0)
          {
            gint64 left = (deadline - g_get_monotonic_time () + 999) / 1000;

            options[n_options++] = spark_dbus_option_new (SPARK_DBUS_OPTION_TIMEOUT,
                                                          g_variant_new_uint32 ((guint32) CLAMP (left, 1, G_MAXUINT32)));
          }
        /* Its dispatcher, for CancelAll; its lane; whether Cancel may
         * come (then the remote handler gets a cancellable it reaches). */
        if (!transport_is_default_sender (self, spark_request_get_sender (req)))
          options[n_options++] = spark_dbus_option_new (SPARK_DBUS_OPTION_SENDER,
                                                        g_variant_new_uint64 (spark_request_get_sender (req)));
        if (call->priority != SPARK_PRIORITY_DEFAULT)
          options[n_options++] = spark_dbus_option_new (SPARK_DBUS_OPTION_PRIORITY,
                                                        g_variant_new_int32 ((gint32) call->priority));
        if (spark_request_get_handler_cancellable (req) != NULL)
          options[n_options++] = spark_dbus_option_new (SPARK_DBUS_OPTION_CANCELLABLE, g_variant_new_boolean (TRUE));
        call->message = g_dbus_message_new_method_call (self->bus_name, self->object_path,
                                                        SPARK_DBUS_INTERFACE, "Request");
        g_dbus_message_set_body (call->message,
                                 spark_dbus_call_body_new (spark_request_get_name (req),
                                                           spark_request_get_parameters (req), options, n_options));
        /* The request keeps its parameters: a request never sent may be
         * sent again elsewhere (see spark_dbus_transport_set_orphan_func()). */
        if (spark_request_get_handler_cancellable (req) != NULL)
          call->cancellable = g_object_ref (spark_request_get_handler_cancellable (req));
      }
      break;
    case CALL_COMMAND:
    case CALL_SHUTDOWN:
      g_assert (call->message != NULL);
      break;
    default:
      g_assert_not_reached ();
    }

  /* Connected before it can be sent (an already-cancelled one runs the
   * handler now, which finds nothing sent), outside the link's lock. */
  if (call->cancellable != NULL)
    call->cancel_id = g_signal_connect_data (call->cancellable, "cancelled", G_CALLBACK (on_call_cancelled),
                                             call_ref (call), call_closure_unref, 0);

  g_mutex_lock (&link->mutex);
  if (link->in_flight < SPARK_DBUS_MAX_IN_FLIGHT && g_queue_is_empty (&link->queue))
    {
      /* The fast path: sent from the caller's thread. */
      link->in_flight++;
      sent = link_send_locked (link, call, &error);
      g_mutex_unlock (&link->mutex);
      if (!sent)
        call_not_sent (call, error);
      return;
    }
  g_mutex_lock (&self->mutex);
  if (self->gone)
    {
      /* Abandoned (spark_dbus_transport_abandon()) or found gone: nothing
       * may wait here any more, where nobody would send it. */
      g_mutex_unlock (&self->mutex);
      link->in_flight++;
      g_mutex_unlock (&link->mutex);
      call->never_sent = TRUE;
      call_not_sent (call, closed_error (self));
      return;
    }
  g_mutex_unlock (&self->mutex);
  g_queue_push_tail (&link->queue, call);
  link_schedule_locked (link);
  g_mutex_unlock (&link->mutex);
}

/* The transport ------------------------------------------------------- */

static Call *
call_new (SparkDBusTransport *self,
          CallKind            kind)
{
  Call *call = g_new0 (Call, 1);

  call->ref_count = 1;
  call->kind = kind;
  call->transport = (SparkDBusTransport *) spark_transport_ref (&self->transport);
  return call;
}

static void
transport_ref (SparkTransport *transport)
{
  g_atomic_int_inc (&((SparkDBusTransport *) transport)->ref_count);
}

static void
transport_free (gpointer data)
{
  SparkDBusTransport *self = data;

  g_assert (g_hash_table_size (self->in_flight) == 0);
  g_hash_table_unref (self->in_flight);
  if (self->orphan_destroy != NULL)
    self->orphan_destroy (self->orphan_data);
  g_mutex_clear (&self->mutex);
  g_object_unref (self->connection);
  g_free (self->bus_name);
  g_free (self->object_path);
  g_free (self);
}

static gboolean
transport_dispose_on_worker (gpointer data)
{
  SparkDBusTransport *self = data;

  /* The subscription's destroy notify frees the transport, after its last
   * callback. */
  if (self->watch_id != 0)
    g_dbus_connection_signal_unsubscribe (self->connection, self->watch_id);
  else
    transport_free (self);
  return G_SOURCE_REMOVE;
}

static void
transport_unref (SparkTransport *transport)
{
  SparkDBusTransport *self = (SparkDBusTransport *) transport;

  /* Calls hold references: the last one goes with the last call and the
   * last dispatcher. The name watch lives on the worker. */
  if (g_atomic_int_dec_and_test (&self->ref_count))
    g_main_context_invoke (worker_get_context (), transport_dispose_on_worker, self);
}

static GMainContext *
transport_get_context (SparkTransport *transport)
{
  (void) transport;
  return NULL;   /* the module is not in this process: nobody spins for it */
}

/* A call that blocks this thread until the module answers: FALSE with
 * WOULD_DEADLOCK if this thread must serve that module's export. */
static gboolean
transport_check_deadlock (SparkDBusTransport  *self,
                          GError             **error)
{
  if (!spark_dbus_export_would_deadlock (self->connection, self->bus_name, self->object_path))
    return TRUE;

  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_WOULD_DEADLOCK,
               "A blocking call to the module at %s was made on a thread that must serve its export: "
               "it would wait for itself", self->object_path);
  return FALSE;
}

/* New calls: FALSE with CLOSED once shut down or gone. */
static gboolean
transport_check_open (SparkDBusTransport *self,
                      GError            **error)
{
  gboolean open;

  gboolean gone;

  g_mutex_lock (&self->mutex);
  open = !self->closed && !self->gone;
  gone = self->gone;
  g_mutex_unlock (&self->mutex);

  if (!open)
    g_propagate_error (error, gone ? unsent_error (self) : closed_error (self));
  return open;
}

static gboolean
transport_post_request (SparkTransport *transport,
                        SparkRequest   *req,
                        SparkPriority   priority,
                        gboolean        blocking,
                        GError        **error)
{
  SparkDBusTransport *self = (SparkDBusTransport *) transport;
  Call *call;

  /* Nothing here waits for room: requests queue for a slot without
   * blocking. But a blocked requester waits for the module. */
  if (!transport_check_open (self, error) ||
      (blocking && !transport_check_deadlock (self, error)))
    return FALSE;

  call = call_new (self, CALL_REQUEST);
  call->req = req;
  call->priority = priority;
  link_submit (self->link, call);
  return TRUE;
}

static gboolean
transport_post_command (SparkTransport *transport,
                        const char     *name,
                        GVariant       *parameters,
                        SparkPriority   priority,
                        SparkPostMode   mode,
                        GCancellable   *cancellable,
                        GTask          *task,
                        GError        **error)
{
  SparkDBusTransport *self = (SparkDBusTransport *) transport;
  CommandWaiter waiter;
  GVariant *options[2];
  gsize n_options = 0;
  Call *call;
  GError *local_error = NULL;

  /* Blocking and try-sends wait for the module's answer. */
  if (!transport_check_open (self, error) ||
      (mode != SPARK_POST_ASYNC && !transport_check_deadlock (self, error)))
    {
      g_clear_pointer (&parameters, g_variant_unref);
      return FALSE;
    }

  call = call_new (self, CALL_COMMAND);
  call->priority = priority;
  /* A try-send is answered FULL by a full mailbox; the others wait for
   * room there, and a cancel of @cancellable ends that wait (the answer,
   * CANCELLED or queued, is the export's). */
  call->wait = mode != SPARK_POST_TRY;
  if (call->wait && cancellable != NULL)
    call->cancellable = g_object_ref (cancellable);
  if (call->wait)
    options[n_options++] = spark_dbus_option_new (SPARK_DBUS_OPTION_WAIT, g_variant_new_boolean (TRUE));
  if (priority != SPARK_PRIORITY_DEFAULT)
    options[n_options++] = spark_dbus_option_new (SPARK_DBUS_OPTION_PRIORITY, g_variant_new_int32 ((gint32) priority));
  call->message = g_dbus_message_new_method_call (self->bus_name, self->object_path,
                                                  SPARK_DBUS_INTERFACE, "Command");
  g_dbus_message_set_body (call->message, spark_dbus_call_body_new (name, parameters, options, n_options));

  if (mode == SPARK_POST_ASYNC)
    {
      /* A supervised transport may have to send it again elsewhere. */
      if (self->orphan_func != NULL)
        {
          call->name = g_strdup (name);
          call->parameters = g_steal_pointer (&parameters);
        }
      g_clear_pointer (&parameters, g_variant_unref);
      call->task = g_object_ref (task);
      link_submit (self->link, call);
      return TRUE;
    }

  g_clear_pointer (&parameters, g_variant_unref);

  /* Blocking: the answer is one round trip away (never a wait for room,
   * for a try-send). */
  g_mutex_init (&waiter.mutex);
  g_cond_init (&waiter.cond);
  waiter.done = FALSE;
  waiter.error = NULL;
  call->waiter = &waiter;
  link_submit (self->link, call);

  g_mutex_lock (&waiter.mutex);
  while (!waiter.done)
    g_cond_wait (&waiter.cond, &waiter.mutex);
  local_error = waiter.error;
  g_mutex_unlock (&waiter.mutex);
  g_mutex_clear (&waiter.mutex);
  g_cond_clear (&waiter.cond);

  if (local_error != NULL)
    {
      g_propagate_error (error, local_error);
      return FALSE;
    }
  return TRUE;
}

static gboolean
transport_send_shutdown (SparkTransport *transport,
                         GCancellable   *token,
                         GError        **error)
{
  SparkDBusTransport *self = (SparkDBusTransport *) transport;
  Call *call;

  /* Closes this side at once; what was queued before goes first. */
  g_mutex_lock (&self->mutex);
  if (self->closed || self->gone)
    {
      g_mutex_unlock (&self->mutex);
      g_propagate_error (error, closed_error (self));
      return FALSE;
    }
  self->closed = TRUE;
  g_mutex_unlock (&self->mutex);

  call = call_new (self, CALL_SHUTDOWN);
  call->token = token != NULL ? g_object_ref (token) : NULL;
  call->message = g_dbus_message_new_method_call (self->bus_name, self->object_path,
                                                  SPARK_DBUS_INTERFACE, "Shutdown");
  link_submit (self->link, call);
  return TRUE;
}

static void
transport_cancel_all (SparkTransport *transport,
                      guint64         sender)
{
  SparkDBusTransport *self = (SparkDBusTransport *) transport;
  GPtrArray *taken = g_ptr_array_new ();
  GDBusMessage *message;
  gboolean remote = FALSE;
  GHashTableIter iter;
  gpointer key;

  g_mutex_lock (&self->link->mutex);
  link_take_queued_locked (self->link, self, &sender, taken);
  g_mutex_unlock (&self->link->mutex);

  /* Those still waiting here for a slot end here, never sent. */
  for (guint i = 0; i < taken->len; i += 2)
    {
      Call *call = g_ptr_array_index (taken, i);

      spark_request_complete_cancelled (call->req, "The request was cancelled by spark_dispatcher_cancel_all()");
      call_not_sent (call, NULL);
    }
  g_ptr_array_unref (taken);

  /* Those sent: the export cancels the ones still queued there. After
   * them on the wire, so it has them all. */
  g_mutex_lock (&self->mutex);
  g_hash_table_iter_init (&iter, self->in_flight);
  while (!remote && g_hash_table_iter_next (&iter, &key, NULL))
    remote = spark_request_get_sender (((Call *) key)->req) == sender;
  g_mutex_unlock (&self->mutex);
  if (!remote)
    return;

  message = g_dbus_message_new_method_call (self->bus_name, self->object_path, SPARK_DBUS_INTERFACE, "CancelAll");
  g_dbus_message_set_body (message, g_variant_new ("(t)", transport_is_default_sender (self, sender) ? 0 : sender));
  g_dbus_message_set_flags (message, G_DBUS_MESSAGE_FLAGS_NO_REPLY_EXPECTED);
  (void) g_dbus_connection_send_message (self->connection, message, G_DBUS_SEND_MESSAGE_FLAGS_NONE, NULL, NULL);
  g_object_unref (message);
}

static const SparkTransportVTable dbus_transport_vtable = {
  .ref = transport_ref,
  .unref = transport_unref,
  .get_context = transport_get_context,
  .post_request = transport_post_request,
  .post_command = transport_post_command,
  .send_shutdown = transport_send_shutdown,
  .cancel_all = transport_cancel_all,
};

void
spark_dbus_transport_abandon (SparkTransport *transport)
{
  SparkDBusTransport *self = (SparkDBusTransport *) transport;
  GPtrArray *taken;

  g_assert (transport->vtable == &dbus_transport_vtable);

  /* Gone first: from now on nothing new waits in the link's queue. */
  g_mutex_lock (&self->mutex);
  self->gone = TRUE;
  g_mutex_unlock (&self->mutex);

  taken = g_ptr_array_new ();
  g_mutex_lock (&self->link->mutex);
  link_take_queued_locked (self->link, self, NULL, taken);
  g_mutex_unlock (&self->link->mutex);
  calls_not_sent (taken);
  g_ptr_array_unref (taken);
}

/* The name watch (worker) ----------------------------------------------- */

/* NameOwnerChanged for @bus_name: an owner going away (old owner set, new
 * one empty) is the peer vanishing. Not g_bus_watch_name_on_connection():
 * on GLib 2.74 its first GetNameOwner answer, arriving after the
 * connection closed, makes it call g_dbus_connection_call_finish() on
 * NULL; and nothing here needs the first answer. */
static void
on_name_owner_changed (GDBusConnection *connection,
                       const char      *sender_name,
                       const char      *object_path,
                       const char      *interface_name,
                       const char      *signal_name,
                       GVariant        *parameters,
                       gpointer         data)
{
  SparkDBusTransport *self = data;
  const char *name, *old_owner, *new_owner;
  GPtrArray *reqs;
  GHashTableIter iter;
  gpointer key;

  (void) connection;
  (void) sender_name;
  (void) object_path;
  (void) interface_name;
  (void) signal_name;

  if (!g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(sss)")))
    return;
  g_variant_get (parameters, "(&s&s&s)", &name, &old_owner, &new_owner);
  if (!g_str_equal (name, self->bus_name) || *old_owner == '\0' || *new_owner != '\0')
    return;

  reqs = g_ptr_array_new_with_free_func ((GDestroyNotify) spark_request_unref);
  g_mutex_lock (&self->mutex);
  self->gone = TRUE;
  g_hash_table_iter_init (&iter, self->in_flight);
  while (g_hash_table_iter_next (&iter, &key, NULL))
    g_ptr_array_add (reqs, spark_request_ref (((Call *) key)->req));
  g_mutex_unlock (&self->mutex);

  /* Their replies (NoReply) still come and free the slots. */
  for (guint i = 0; i < reqs->len; i++)
    spark_request_complete (g_ptr_array_index (reqs, i), NULL, closed_error (self));
  g_ptr_array_unref (reqs);
}

static gboolean
transport_watch_on_worker (gpointer data)
{
  SparkDBusTransport *self = data;

  /* Closed already (the transport may be made and used before the worker
   * gets here): nothing to watch, and GDBus would complain. */
  if (g_dbus_connection_is_closed (self->connection))
    {
      g_mutex_lock (&self->mutex);
      self->gone = TRUE;
      g_mutex_unlock (&self->mutex);
      return G_SOURCE_REMOVE;
    }

  self->watch_id = g_dbus_connection_signal_subscribe (self->connection, "org.freedesktop.DBus",
                                                       "org.freedesktop.DBus", "NameOwnerChanged",
                                                       "/org/freedesktop/DBus", self->bus_name,
                                                       G_DBUS_SIGNAL_FLAGS_NONE,
                                                       on_name_owner_changed, self, transport_free);
  return G_SOURCE_REMOVE;
}

SparkTransport *
spark_dbus_transport_new (GDBusConnection *connection,
                          const char      *bus_name,
                          const char      *object_path)
{
  SparkDBusTransport *self = g_new0 (SparkDBusTransport, 1);

  spark_dbus_ensure_error_domain ();

  self->transport.vtable = &dbus_transport_vtable;
  self->ref_count = 1;
  self->connection = g_object_ref (connection);
  self->bus_name = g_strdup (bus_name);
  self->object_path = g_strdup (object_path);
  self->link = link_get (connection);
  g_mutex_init (&self->mutex);
  self->in_flight = g_hash_table_new (NULL, NULL);

  /* Before any call can be made: the watch is set up on the worker, in
   * order with the first sends. */
  if (bus_name != NULL)
    g_main_context_invoke (worker_get_context (), transport_watch_on_worker, self);

  return &self->transport;
}

/**
 * spark_dispatcher_new_for_dbus:
 * @connection: a [class@Gio.DBusConnection]: a message bus or a peer
 * @bus_name: (nullable): the unique or well-known name of the process
 *   that exported the module, or %NULL on a peer-to-peer connection
 * @object_path: where the module was exported with
 *   [method@Spark.ModuleServer.export]
 *
 * A dispatcher for a module in another process, with the same API and
 * the same guarantees as one made by
 * [method@Spark.ModuleServer.create_dispatcher]. Every request completes
 * exactly once; a handler's error arrives with its domain, code and
 * message; cancelling a request cancels the remote handler's cancellable,
 * and the dispatcher's [property@Spark.Dispatcher:timeout] is sent along
 * as a deadline the exporting side enforces too.
 *
 * What differs, because the module is elsewhere:
 *
 * - when the owner of @bus_name goes away or @connection closes, every
 *   request in flight, and every later call, fails with
 *   %SPARK_CHANNEL_ERROR_CLOSED: a dispatcher is bound to the process it
 *   first reached; make a new one for a new process;
 * - at most %SPARK_DBUS_MAX_IN_FLIGHT calls expecting a reply are in
 *   flight on one connection; later ones wait their turn in order,
 *   without blocking (their timeout and cancellable still count);
 * - [method@Spark.Dispatcher.try_send_command] never waits for room, but
 *   it does wait for the module's answer (one round trip): it fails with
 *   %SPARK_CHANNEL_ERROR_FULL if the remote mailbox is full. The blocking
 *   calls wait for the remote module; made on a thread that must serve it
 *   (the module is exported by this process and reached by its unique name
 *   or over a peer-to-peer connection, and this thread exported it or
 *   serves its server), they fail with
 *   %SPARK_CHANNEL_ERROR_WOULD_DEADLOCK instead;
 * - [method@Spark.Dispatcher.send_shutdown] returns once the shutdown is
 *   on its way; its token is cancelled when the remote server has
 *   stopped, or when it is lost.
 *
 * Priorities travel (the remote mailbox's lane is the dispatcher's
 * [property@Spark.Dispatcher:priority]), and so does
 * [method@Spark.Dispatcher.cancel_all].
 *
 * Replies are taken on GDBus's worker thread, then delivered the usual
 * way (on the caller's context for `_async` and `_full`).
 *
 * May be called from any thread.
 *
 * Returns: (transfer full): a new dispatcher
 *
 * Since: 1.0
 */
SparkDispatcher *
spark_dispatcher_new_for_dbus (GDBusConnection *connection,
                               const char      *bus_name,
                               const char      *object_path)
{
  SparkTransport *transport;
  SparkDispatcher *dispatcher;

  g_return_val_if_fail (G_IS_DBUS_CONNECTION (connection), NULL);
  g_return_val_if_fail (bus_name == NULL || g_dbus_is_name (bus_name), NULL);
  g_return_val_if_fail (object_path != NULL && g_variant_is_object_path (object_path), NULL);

  transport = spark_dbus_transport_new (connection, bus_name, object_path);
  dispatcher = spark_dispatcher_new (transport);
  spark_transport_unref (transport);

  return dispatcher;
}

void
spark_dbus_transport_set_orphan_func (SparkTransport      *transport,
                                      SparkDBusOrphanFunc  func,
                                      gpointer             data,
                                      GDestroyNotify       destroy)
{
  SparkDBusTransport *self = (SparkDBusTransport *) transport;

  g_assert (transport->vtable == &dbus_transport_vtable);
  g_assert (self->orphan_func == NULL);

  self->orphan_func = func;
  self->orphan_data = data;
  self->orphan_destroy = destroy;
}
