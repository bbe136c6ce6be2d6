/* spark-subprocess.c: a module in a helper process, supervised
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

/**
 * SparkSubprocess:
 *
 * A module that runs in a helper process, for crash isolation or a
 * sandbox, reached over a peer-to-peer D-Bus connection (a socket pair: no
 * bus daemon), with the usual [class@Spark.Dispatcher] API.
 *
 * The helper's `main()` is one call:
 *
 * ```c
 * int
 * main (void)
 * {
 *   g_autoptr(SparkHandler) handler = my_handler_new ();
 *
 *   return spark_subprocess_serve (handler, NULL) ? 0 : 1;
 * }
 * ```
 *
 * The parent makes a [class@Spark.Subprocess] with the helper's command
 * line, [method@Spark.Subprocess.spawn]s it, and sends through
 * [method@Spark.Subprocess.create_dispatcher].
 *
 * ## Supervision
 *
 * With [property@Spark.Subprocess:max-restarts] above 0, a helper that
 * dies (a crash, a `SIGKILL`, an exit that no shutdown asked for) is
 * started again, after [property@Spark.Subprocess:restart-delay]
 * milliseconds (doubled for each further restart within the window), as
 * long as there were fewer than max-restarts restarts in the last
 * [property@Spark.Subprocess:restart-window] seconds. Dispatchers stay
 * valid across restarts:
 *
 * - requests and commands in flight when the helper died fail with
 *   %SPARK_CHANNEL_ERROR_CLOSED (nobody knows whether the helper handled
 *   them);
 * - messages sent while it restarts wait for the new process (a
 *   [method@Spark.Dispatcher.try_send_command] fails with
 *   %SPARK_CHANNEL_ERROR_FULL meanwhile: there is no room now);
 * - [signal@Spark.Subprocess::restarted] reports each restart,
 *   [signal@Spark.Subprocess::gave-up] the end of the policy, after which
 *   every waiting and later message fails with CLOSED.
 *
 * [method@Spark.Dispatcher.send_shutdown] stops the helper's server (the
 * helper then exits) and ends supervision. Finalizing the
 * [class@Spark.Subprocess] kills a helper still running and fails what
 * its dispatchers send later with %SPARK_CHANNEL_ERROR_CLOSED.
 *
 * Since: 1.0
 */

#include "config.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include "spark-dbus-transport-private.h"
#include "spark-dispatcher-private.h"
#include "spark-dbus.h"
#include "spark-error.h"
#include "spark-module-server.h"
#include "spark-subprocess.h"

#define SUBPROCESS_FD_ENV  "SPARK_SUBPROCESS_FD"
#define SUBPROCESS_FD      3
#define SUBPROCESS_PATH    "/org/gnome/SparkChannel/Module"

/* The supervised transport ---------------------------------------------- */

/* What waits for the next process: a request (the sender's reference),
 * or an asynchronous command. */
typedef SparkDBusUnsent Waiting;

typedef struct
{
  SparkTransport  transport;
  gint            ref_count;   /* atomic */
  GMutex          mutex;
  GCond           cond;        /* current or closed changed */
  SparkTransport *current;     /* mutex: the live process's, NULL while (re)starting */
  gboolean        closed;      /* mutex: shut down, or given up */
  char           *why_closed;  /* mutex */
  GQueue          waiting;     /* mutex: Waiting */
  guint           n_moved;     /* mutex: how many of them came from the dead process's queue */
} Supervised;

static void
waiting_fail (Waiting    *w,
              const char *why)
{
  if (w->req != NULL)
    {
      spark_request_complete_literal (w->req, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED, why);
      spark_request_unref (w->req);
    }
  else
    {
      g_task_return_new_error (w->task, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED, "%s", why);
      g_object_unref (w->task);
      g_free (w->name);
      g_clear_pointer (&w->parameters, g_variant_unref);
      g_clear_object (&w->cancellable);
    }
  g_free (w);
}

/* Hands @w to @transport, as if it had been sent there first. */
static void
waiting_send (Waiting        *w,
              SparkTransport *transport)
{
  GError *error = NULL;

  if (w->req != NULL)
    {
      if (!transport->vtable->post_request (transport, w->req, w->priority, FALSE, &error))
        {
          spark_request_complete (w->req, NULL, error);
          spark_request_unref (w->req);
        }
    }
  else
    {
      if (!transport->vtable->post_command (transport, w->name, g_steal_pointer (&w->parameters), w->priority,
                                            SPARK_POST_ASYNC, w->cancellable, w->task, &error))
        g_task_return_error (w->task, error);
      g_object_unref (w->task);
      g_free (w->name);
      g_clear_object (&w->cancellable);
    }
  g_free (w);
}

static void
supervised_ref (SparkTransport *transport)
{
  g_atomic_int_inc (&((Supervised *) transport)->ref_count);
}

static void
supervised_unref (SparkTransport *transport)
{
  Supervised *self = (Supervised *) transport;

  if (!g_atomic_int_dec_and_test (&self->ref_count))
    return;

  g_assert (g_queue_is_empty (&self->waiting));
  g_clear_pointer (&self->current, spark_transport_unref);
  g_free (self->why_closed);
  g_mutex_clear (&self->mutex);
  g_cond_clear (&self->cond);
  g_free (self);
}

static GMainContext *
supervised_get_context (SparkTransport *transport)
{
  (void) transport;
  return NULL;
}

/* With the lock: the live transport (a reference), or NULL. */
static SparkTransport *
supervised_get_current (Supervised *self)
{
  return self->current != NULL ? spark_transport_ref (self->current) : NULL;
}

/* @current refused a message with @error: if that says it was never sent
 * because its process is gone, while supervision goes on, forgets it (the
 * watch will restart the process) and returns TRUE: the message may wait
 * for the next one. Otherwise an UNSENT error becomes CLOSED. */
static gboolean
supervised_forget (Supervised     *self,
                   SparkTransport *current,
                   GError        **error)
{
  SparkTransport *dead = NULL;
  gboolean forget;

  if (!g_error_matches (*error, SPARK_DBUS_UNSENT_ERROR, 0))
    return FALSE;

  g_mutex_lock (&self->mutex);
  forget = !self->closed;
  if (forget && self->current == current)
    dead = g_steal_pointer (&self->current);
  if (!forget)
    {
      g_clear_error (error);
      g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED, self->why_closed);
    }
  g_mutex_unlock (&self->mutex);

  /* What waited there for a slot goes ahead of what comes now. */
  if (dead != NULL)
    {
      spark_dbus_transport_abandon (dead);
      spark_transport_unref (dead);
    }
  return forget;
}

static gboolean
supervised_post_request (SparkTransport *transport,
                         SparkRequest   *req,
                         SparkPriority   priority,
                         gboolean        blocking,
                         GError        **error)
{
  Supervised *self = (Supervised *) transport;
  SparkTransport *current;
  GError *local_error = NULL;
  gboolean ret;

  g_mutex_lock (&self->mutex);
  if (self->closed)
    {
      g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED, self->why_closed);
      g_mutex_unlock (&self->mutex);
      return FALSE;
    }
  current = supervised_get_current (self);
  if (current == NULL)
    {
      Waiting *w = g_new0 (Waiting, 1);

      /* Restarting: it waits for the next process, its clocks running. */
      w->req = req;
      w->priority = priority;
      g_queue_push_tail (&self->waiting, w);
      g_mutex_unlock (&self->mutex);
      return TRUE;
    }
  g_mutex_unlock (&self->mutex);

  ret = current->vtable->post_request (current, req, priority, blocking, &local_error);
  if (!ret && supervised_forget (self, current, &local_error))
    {
      /* The process just died (before its watch said so): not sent, so
       * it waits for the next one. */
      g_clear_error (&local_error);
      spark_transport_unref (current);
      return supervised_post_request (transport, req, priority, blocking, error);
    }
  spark_transport_unref (current);
  if (local_error != NULL)
    g_propagate_error (error, local_error);
  return ret;
}

static gboolean
supervised_post_command (SparkTransport *transport,
                         const char     *name,
                         GVariant       *parameters,
                         SparkPriority   priority,
                         SparkPostMode   mode,
                         GCancellable   *cancellable,
                         GTask          *task,
                         GError        **error)
{
  Supervised *self = (Supervised *) transport;
  SparkTransport *current = NULL;
  GError *local_error = NULL;
  gboolean ret;

  g_mutex_lock (&self->mutex);
  while (!self->closed && self->current == NULL)
    {
      Waiting *w;

      if (mode == SPARK_POST_TRY)
        {
          g_mutex_unlock (&self->mutex);
          g_clear_pointer (&parameters, g_variant_unref);
          g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL,
                               "The module's process is restarting: no room now");
          return FALSE;
        }
      if (mode == SPARK_POST_BLOCK)
        {
          /* Until the next process is up (or supervision ends). */
          g_cond_wait (&self->cond, &self->mutex);
          continue;
        }

      w = g_new0 (Waiting, 1);
      w->name = g_strdup (name);
      w->parameters = parameters;
      w->priority = priority;
      w->cancellable = cancellable != NULL ? g_object_ref (cancellable) : NULL;
      w->task = g_object_ref (task);
      g_queue_push_tail (&self->waiting, w);
      g_mutex_unlock (&self->mutex);
      return TRUE;
    }
  if (self->closed)
    {
      g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED, self->why_closed);
      g_mutex_unlock (&self->mutex);
      g_clear_pointer (&parameters, g_variant_unref);
      return FALSE;
    }
  current = supervised_get_current (self);
  g_mutex_unlock (&self->mutex);

  ret = current->vtable->post_command (current, name, parameters != NULL ? g_variant_ref (parameters) : NULL,
                                       priority, mode, cancellable, task, &local_error);
  if (!ret && supervised_forget (self, current, &local_error))
    {
      g_clear_error (&local_error);
      spark_transport_unref (current);
      return supervised_post_command (transport, name, parameters, priority, mode, cancellable, task, error);
    }
  g_clear_pointer (&parameters, g_variant_unref);
  spark_transport_unref (current);
  if (local_error != NULL)
    g_propagate_error (error, local_error);
  return ret;
}

/* Ends supervision: what waits fails with CLOSED. The live transport is
 * let go (calls in flight hold it), which also ends its reference on us
 * (its orphan data). */
static void
supervised_close (Supervised *self,
                  const char *why)
{
  GQueue waiting = G_QUEUE_INIT;
  SparkTransport *current;
  Waiting *w;

  g_mutex_lock (&self->mutex);
  if (!self->closed)
    {
      self->closed = TRUE;
      self->why_closed = g_strdup (why);
    }
  waiting = self->waiting;
  g_queue_init (&self->waiting);
  current = g_steal_pointer (&self->current);
  g_cond_broadcast (&self->cond);
  g_mutex_unlock (&self->mutex);

  while ((w = g_queue_pop_head (&waiting)) != NULL)
    waiting_fail (w, why);
  g_clear_pointer (&current, spark_transport_unref);
}

/* Messages the dead process's transport accepted but never sent (they
 * waited there for an in-flight slot): they wait for the next process too,
 * ahead of what was sent since the death, in their order. */
static void
supervised_orphan (SparkTransport  *from,
                   SparkDBusUnsent *unsent,
                   guint            n_unsent,
                   gpointer         data)
{
  Supervised *self = data;
  SparkTransport *current = NULL, *dead = NULL;
  char *why = NULL;
  GPtrArray *late = NULL;

  /* All of them under one lock: the next process takes them all, first,
   * or none (then they are late, below). */
  g_mutex_lock (&self->mutex);
  if (self->closed)
    why = g_strdup (self->why_closed);
  else
    {
      if (self->current == from)
        dead = g_steal_pointer (&self->current);
      if (self->current != NULL)
        {
          current = spark_transport_ref (self->current);
          late = g_ptr_array_new ();
        }
      for (guint i = 0; i < n_unsent; i++)
        {
          Waiting *w = g_memdup2 (&unsent[i], sizeof unsent[i]);

          if (late != NULL)
            g_ptr_array_add (late, w);
          else
            g_queue_push_nth (&self->waiting, w, (gint) self->n_moved++);
        }
    }
  g_mutex_unlock (&self->mutex);

  if (why != NULL)
    {
      for (guint i = 0; i < n_unsent; i++)
        waiting_fail (g_memdup2 (&unsent[i], sizeof unsent[i]), why);
      g_free (why);
      return;
    }
  if (dead != NULL)
    {
      spark_dbus_transport_abandon (dead);
      spark_transport_unref (dead);
    }
  if (current != NULL)
    {
      /* Late: the next process is up already. */
      for (guint i = 0; i < late->len; i++)
        waiting_send (g_ptr_array_index (late, i), current);
      g_ptr_array_unref (late);
      spark_transport_unref (current);
    }
}

static void
supervised_release (gpointer data)
{
  spark_transport_unref (data);
}

static gboolean
supervised_send_shutdown (SparkTransport *transport,
                          GCancellable   *token,
                          GError        **error)
{
  Supervised *self = (Supervised *) transport;
  SparkTransport *current;
  gboolean ret = TRUE;

  g_mutex_lock (&self->mutex);
  if (self->closed)
    {
      g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED, self->why_closed);
      g_mutex_unlock (&self->mutex);
      return FALSE;
    }
  current = supervised_get_current (self);
  g_mutex_unlock (&self->mutex);

  /* Later messages fail at once; the helper's server stops, the helper
   * exits, and no restart follows. */
  if (current != NULL)
    {
      ret = current->vtable->send_shutdown (current, token, error);
      spark_transport_unref (current);
    }
  else if (token != NULL)
    g_cancellable_cancel (token);   /* no process: nothing to stop */
  supervised_close (self, "The module was shut down");
  return ret;
}

static const SparkTransportVTable supervised_vtable = {
  .ref = supervised_ref,
  .unref = supervised_unref,
  .get_context = supervised_get_context,
  .post_request = supervised_post_request,
  .post_command = supervised_post_command,
  .send_shutdown = supervised_send_shutdown,
};

/* SparkSubprocess ------------------------------------------------------- */

struct _SparkSubprocess
{
  GObject          parent_instance;

  char           **argv;            /* immutable */
  guint            max_restarts;    /* owner context */
  guint            restart_window;  /* owner context: seconds */
  guint            restart_delay;   /* owner context: ms */

  Supervised      *supervised;      /* immutable */
  GMainContext    *context;         /* set by spawn: where the child is watched */
  GMutex           mutex;
  GSubprocess     *proc;            /* mutex */
  GDBusConnection *connection;      /* owner context */
  GArray          *restarts;        /* owner context: gint64 monotonic µs of each restart */
  guint            n_restarts;      /* owner context */
  GSource         *pending;         /* owner context: a scheduled restart */
};

G_DEFINE_FINAL_TYPE (SparkSubprocess, spark_subprocess, G_TYPE_OBJECT)

enum {
  PROP_0,
  PROP_MAX_RESTARTS,
  PROP_RESTART_WINDOW,
  PROP_RESTART_DELAY,
  N_PROPS
};

enum {
  SIGNAL_RESTARTED,
  SIGNAL_GAVE_UP,
  N_SIGNALS
};

static GParamSpec *properties[N_PROPS];
static guint signals[N_SIGNALS];

static void spark_subprocess_watch (SparkSubprocess *self,
                                    GSubprocess     *proc);

static void
spark_subprocess_dispose (GObject *object)
{
  SparkSubprocess *self = SPARK_SUBPROCESS (object);

  if (self->pending != NULL)
    {
      g_source_destroy (self->pending);
      g_clear_pointer (&self->pending, g_source_unref);
    }
  supervised_close (self->supervised, "The module's supervisor was finalized");

  g_mutex_lock (&self->mutex);
  if (self->proc != NULL)
    g_subprocess_force_exit (self->proc);
  g_clear_object (&self->proc);
  g_mutex_unlock (&self->mutex);
  if (self->connection != NULL)
    g_dbus_connection_close (self->connection, NULL, NULL, NULL);
  g_clear_object (&self->connection);

  G_OBJECT_CLASS (spark_subprocess_parent_class)->dispose (object);
}

static void
spark_subprocess_finalize (GObject *object)
{
  SparkSubprocess *self = SPARK_SUBPROCESS (object);

  spark_transport_unref (&self->supervised->transport);
  g_strfreev (self->argv);
  g_array_unref (self->restarts);
  g_clear_pointer (&self->context, g_main_context_unref);
  g_mutex_clear (&self->mutex);

  G_OBJECT_CLASS (spark_subprocess_parent_class)->finalize (object);
}

static void
spark_subprocess_get_property (GObject    *object,
                               guint       prop_id,
                               GValue     *value,
                               GParamSpec *pspec)
{
  SparkSubprocess *self = SPARK_SUBPROCESS (object);

  switch (prop_id)
    {
    case PROP_MAX_RESTARTS:
      g_value_set_uint (value, self->max_restarts);
      break;
    case PROP_RESTART_WINDOW:
      g_value_set_uint (value, self->restart_window);
      break;
    case PROP_RESTART_DELAY:
      g_value_set_uint (value, self->restart_delay);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
set_uint_prop (SparkSubprocess *self,
               guint           *field,
               guint            value,
               guint            prop)
{
  if (*field == value)
    return;
  *field = value;
  g_object_notify_by_pspec (G_OBJECT (self), properties[prop]);
}

static void
spark_subprocess_set_property (GObject      *object,
                               guint         prop_id,
                               const GValue *value,
                               GParamSpec   *pspec)
{
  SparkSubprocess *self = SPARK_SUBPROCESS (object);

  switch (prop_id)
    {
    case PROP_MAX_RESTARTS:
      set_uint_prop (self, &self->max_restarts, g_value_get_uint (value), PROP_MAX_RESTARTS);
      break;
    case PROP_RESTART_WINDOW:
      set_uint_prop (self, &self->restart_window, g_value_get_uint (value), PROP_RESTART_WINDOW);
      break;
    case PROP_RESTART_DELAY:
      set_uint_prop (self, &self->restart_delay, g_value_get_uint (value), PROP_RESTART_DELAY);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
spark_subprocess_class_init (SparkSubprocessClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = spark_subprocess_dispose;
  object_class->finalize = spark_subprocess_finalize;
  object_class->get_property = spark_subprocess_get_property;
  object_class->set_property = spark_subprocess_set_property;

  /**
   * SparkSubprocess:max-restarts:
   *
   * How many restarts are allowed within
   * [property@Spark.Subprocess:restart-window]; 0 (the default): none,
   * the first death ends the module.
   *
   * Since: 1.0
   */
  properties[PROP_MAX_RESTARTS] =
    g_param_spec_uint ("max-restarts", NULL, NULL, 0, G_MAXUINT, 0,
                       G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);

  /**
   * SparkSubprocess:restart-window:
   *
   * The window, in seconds, in which restarts are counted (default 60).
   *
   * Since: 1.0
   */
  properties[PROP_RESTART_WINDOW] =
    g_param_spec_uint ("restart-window", NULL, NULL, 1, G_MAXUINT, 60,
                       G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);

  /**
   * SparkSubprocess:restart-delay:
   *
   * The delay, in milliseconds, before the first restart within the
   * window (default 100); each further one in the window waits twice as
   * long as the one before, up to 10 seconds.
   *
   * Since: 1.0
   */
  properties[PROP_RESTART_DELAY] =
    g_param_spec_uint ("restart-delay", NULL, NULL, 0, 10000, 100,
                       G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);

  g_object_class_install_properties (object_class, N_PROPS, properties);

  /**
   * SparkSubprocess::restarted:
   * @self: the [class@Spark.Subprocess]
   * @restarts: how many restarts there have been, this one included
   *
   * Emitted on the context that was thread-default when
   * [method@Spark.Subprocess.spawn] was called, once a new helper is up
   * and the messages that waited for it have been sent to it.
   *
   * Since: 1.0
   */
  signals[SIGNAL_RESTARTED] =
    g_signal_new ("restarted", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
                  G_TYPE_NONE, 1, G_TYPE_UINT);

  /**
   * SparkSubprocess::gave-up:
   * @self: the [class@Spark.Subprocess]
   * @error: why the last helper ended, or why it could not be started
   *
   * Emitted on the same context as [signal@Spark.Subprocess::restarted]
   * when the helper died and the restart policy allows no more restarts
   * (or a restart failed). Every waiting and later message fails with
   * %SPARK_CHANNEL_ERROR_CLOSED.
   *
   * Since: 1.0
   */
  signals[SIGNAL_GAVE_UP] =
    g_signal_new ("gave-up", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
                  G_TYPE_NONE, 1, G_TYPE_ERROR);
}

static void
spark_subprocess_init (SparkSubprocess *self)
{
  self->restart_window = 60;
  self->restart_delay = 100;
  self->restarts = g_array_new (FALSE, FALSE, sizeof (gint64));
  g_mutex_init (&self->mutex);

  self->supervised = g_new0 (Supervised, 1);
  self->supervised->transport.vtable = &supervised_vtable;
  self->supervised->ref_count = 1;
  g_mutex_init (&self->supervised->mutex);
  g_cond_init (&self->supervised->cond);
  g_queue_init (&self->supervised->waiting);
}

/**
 * spark_subprocess_new:
 * @argv: (array zero-terminated=1): the helper's command line; the helper
 *   calls [func@Spark.Subprocess.serve]
 *
 * A module in a helper process, not started yet: set the restart policy,
 * then call [method@Spark.Subprocess.spawn].
 *
 * Returns: (transfer full): a new [class@Spark.Subprocess]
 *
 * Since: 1.0
 */
SparkSubprocess *
spark_subprocess_new (const char * const *argv)
{
  SparkSubprocess *self;

  g_return_val_if_fail (argv != NULL && argv[0] != NULL, NULL);

  self = g_object_new (SPARK_TYPE_SUBPROCESS, NULL);
  self->argv = g_strdupv ((char **) argv);
  return self;
}

/* Starts a helper; on success *@connection is the parent's end. */
static GSubprocess *
launch (SparkSubprocess  *self,
        GDBusConnection **connection,
        GError          **error)
{
  g_autoptr(GSubprocessLauncher) launcher = NULL;
  g_autoptr(GSocket) socket = NULL;
  g_autoptr(GSocketConnection) stream = NULL;
  GSubprocess *proc;
  int fds[2];

  if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
    {
      int errsv = errno;

      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (errsv), "socketpair: %s", g_strerror (errsv));
      return NULL;
    }

  launcher = g_subprocess_launcher_new (G_SUBPROCESS_FLAGS_NONE);
  g_subprocess_launcher_take_fd (launcher, fds[1], SUBPROCESS_FD);
  g_subprocess_launcher_setenv (launcher, SUBPROCESS_FD_ENV, G_STRINGIFY (SUBPROCESS_FD), TRUE);
  proc = g_subprocess_launcher_spawnv (launcher, (const char * const *) self->argv, error);
  if (proc == NULL)
    {
      close (fds[0]);
      return NULL;
    }

  socket = g_socket_new_from_fd (fds[0], error);
  if (socket == NULL)
    {
      close (fds[0]);
      g_subprocess_force_exit (proc);
      g_object_unref (proc);
      return NULL;
    }
  stream = g_socket_connection_factory_create_connection (socket);

  /* The helper is the authenticating side: the handshake waits for it. */
  *connection = g_dbus_connection_new_sync (G_IO_STREAM (stream), NULL,
                                            G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT,
                                            NULL, NULL, error);
  if (*connection == NULL)
    {
      g_prefix_error (error, "The helper %s did not connect: ", self->argv[0]);
      g_subprocess_force_exit (proc);
      g_object_unref (proc);
      return NULL;
    }

  return proc;
}

/* Owner context: a new helper is up; what waited goes to it. */
static void
install (SparkSubprocess *self,
         GSubprocess     *proc,
         GDBusConnection *connection)
{
  Supervised *sup = self->supervised;
  SparkTransport *transport = spark_dbus_transport_new (connection, NULL, SUBPROCESS_PATH);
  GQueue waiting;
  Waiting *w;

  spark_dbus_transport_set_orphan_func (transport, supervised_orphan,
                                        spark_transport_ref (&sup->transport), supervised_release);

  g_mutex_lock (&self->mutex);
  g_clear_object (&self->proc);
  self->proc = g_object_ref (proc);
  g_mutex_unlock (&self->mutex);
  g_clear_object (&self->connection);
  self->connection = g_object_ref (connection);

  /* In order: what waited first is sent first, before anything new can
   * overtake it (the lock is held while the queue is handed over). */
  g_mutex_lock (&sup->mutex);
  waiting = sup->waiting;
  g_queue_init (&sup->waiting);
  sup->n_moved = 0;
  while ((w = g_queue_pop_head (&waiting)) != NULL)
    waiting_send (w, transport);
  g_clear_pointer (&sup->current, spark_transport_unref);
  sup->current = transport;
  g_cond_broadcast (&sup->cond);
  g_mutex_unlock (&sup->mutex);

  spark_subprocess_watch (self, proc);
}

static gboolean
on_restart_due (gpointer data)
{
  SparkSubprocess *self = data;
  g_autoptr(GDBusConnection) connection = NULL;
  g_autoptr(GSubprocess) proc = NULL;
  GError *error = NULL;

  g_clear_pointer (&self->pending, g_source_unref);

  proc = launch (self, &connection, &error);
  if (proc == NULL)
    {
      supervised_close (self->supervised, error->message);
      g_signal_emit (self, signals[SIGNAL_GAVE_UP], 0, error);
      g_error_free (error);
      return G_SOURCE_REMOVE;
    }

  install (self, proc, connection);
  self->n_restarts++;
  g_signal_emit (self, signals[SIGNAL_RESTARTED], 0, self->n_restarts);
  return G_SOURCE_REMOVE;
}

typedef struct
{
  GWeakRef  self;
  char     *id;     /* the process id, gone from the GSubprocess once reaped */
} Watch;

static void
on_child_exited (GObject      *source,
                 GAsyncResult *result,
                 gpointer      user_data)
{
  Watch *watch = user_data;
  g_autoptr(SparkSubprocess) self = g_weak_ref_get (&watch->self);
  GSubprocess *proc = G_SUBPROCESS (source);
  Supervised *sup;
  g_autofree char *why = NULL;
  gint64 now = g_get_monotonic_time ();
  guint in_window = 0;
  SparkTransport *dead;
  gboolean closed;

  (void) g_subprocess_wait_finish (proc, result, NULL);
  g_weak_ref_clear (&watch->self);

  if (self == NULL)
    {
      g_free (watch->id);
      g_free (watch);
      return;
    }
  sup = self->supervised;

  if (g_subprocess_get_if_signaled (proc))
    why = g_strdup_printf ("The module's process %s was killed by signal %d",
                           watch->id, g_subprocess_get_term_sig (proc));
  else
    why = g_strdup_printf ("The module's process %s exited with status %d",
                           watch->id, g_subprocess_get_exit_status (proc));
  g_free (watch->id);
  g_free (watch);

  /* Its transport is gone: what was in flight fails there (the
   * connection closed); what comes now waits for the next process. */
  g_mutex_lock (&sup->mutex);
  dead = g_steal_pointer (&sup->current);
  closed = sup->closed;
  g_mutex_unlock (&sup->mutex);
  /* What waited there for a slot goes ahead of what comes now. */
  if (dead != NULL)
    {
      spark_dbus_transport_abandon (dead);
      spark_transport_unref (dead);
    }
  if (self->connection != NULL)
    g_dbus_connection_close (self->connection, NULL, NULL, NULL);
  g_clear_object (&self->connection);

  if (closed)
    return;   /* shut down: no restart */

  for (guint i = 0; i < self->restarts->len; i++)
    if (now - g_array_index (self->restarts, gint64, i) < (gint64) self->restart_window * G_USEC_PER_SEC)
      in_window++;

  if (in_window >= self->max_restarts)
    {
      GError *error = g_error_new (SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED,
                                   "%s; no restart left (%u in %u s)", why, self->max_restarts,
                                   self->restart_window);

      supervised_close (sup, error->message);
      g_signal_emit (self, signals[SIGNAL_GAVE_UP], 0, error);
      g_error_free (error);
      return;
    }

  g_array_append_val (self->restarts, now);
  self->pending = g_timeout_source_new (MIN ((guint64) self->restart_delay << MIN (in_window, 16), 10000));
  g_source_set_callback (self->pending, on_restart_due, self, NULL);
  g_source_set_static_name (self->pending, "[spark-channel] restart");
  g_source_attach (self->pending, self->context);
}

static void
spark_subprocess_watch (SparkSubprocess *self,
                        GSubprocess     *proc)
{
  Watch *watch = g_new0 (Watch, 1);

  g_weak_ref_init (&watch->self, self);
  watch->id = g_strdup (g_subprocess_get_identifier (proc));
  g_main_context_push_thread_default (self->context);
  g_subprocess_wait_async (proc, NULL, on_child_exited, watch);
  g_main_context_pop_thread_default (self->context);
}

/**
 * spark_subprocess_spawn:
 * @self: a [class@Spark.Subprocess]
 * @error: return location for an error
 *
 * Starts the helper and waits until it is connected. The helper is
 * watched, and restarted as the policy says, on the thread-default main
 * context of the caller, which must be iterated; the signals are emitted
 * there.
 *
 * Returns: %TRUE if the helper is up
 *
 * Since: 1.0
 */
gboolean
spark_subprocess_spawn (SparkSubprocess  *self,
                        GError          **error)
{
  g_autoptr(GDBusConnection) connection = NULL;
  g_autoptr(GSubprocess) proc = NULL;

  g_return_val_if_fail (SPARK_IS_SUBPROCESS (self), FALSE);
  g_return_val_if_fail (self->context == NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  proc = launch (self, &connection, error);
  if (proc == NULL)
    return FALSE;

  self->context = g_main_context_ref_thread_default ();
  install (self, proc, connection);
  return TRUE;
}

/**
 * spark_subprocess_create_dispatcher:
 * @self: a [class@Spark.Subprocess]
 *
 * A dispatcher for the module in the helper, valid across restarts (see
 * the class's overview for what happens to messages when the helper
 * dies). Messages sent before [method@Spark.Subprocess.spawn] wait for it.
 *
 * May be called from any thread.
 *
 * Returns: (transfer full): a new [class@Spark.Dispatcher]
 *
 * Since: 1.0
 */
SparkDispatcher *
spark_subprocess_create_dispatcher (SparkSubprocess *self)
{
  g_return_val_if_fail (SPARK_IS_SUBPROCESS (self), NULL);

  return spark_dispatcher_new (&self->supervised->transport);
}

/**
 * spark_subprocess_dup_identifier:
 * @self: a [class@Spark.Subprocess]
 *
 * The current helper's identifier (its process id, as
 * [method@Gio.Subprocess.get_identifier] gives it).
 *
 * May be called from any thread.
 *
 * Returns: (transfer full) (nullable): the identifier, or %NULL if no
 *   helper runs
 *
 * Since: 1.0
 */
char *
spark_subprocess_dup_identifier (SparkSubprocess *self)
{
  char *id;

  g_return_val_if_fail (SPARK_IS_SUBPROCESS (self), NULL);

  g_mutex_lock (&self->mutex);
  id = self->proc != NULL ? g_strdup (g_subprocess_get_identifier (self->proc)) : NULL;
  g_mutex_unlock (&self->mutex);
  return id;
}

/* The helper's side ------------------------------------------------------ */

static void
on_serve_end (gpointer data)
{
  g_main_loop_quit (data);
}

static void
on_server_running (GObject    *object,
                   GParamSpec *pspec,
                   gpointer    data)
{
  (void) pspec;
  if (!spark_module_server_get_running (SPARK_MODULE_SERVER (object)))
    g_main_loop_quit (data);
}

/**
 * spark_subprocess_serve:
 * @handler: the module's handler
 * @error: return location for an error
 *
 * The whole `main()` of a helper started by a [class@Spark.Subprocess]:
 * connects to the parent over the socket it was given, serves @handler
 * with a [class@Spark.ModuleServer] on the global default main context
 * (so a JavaScript handler works too), and returns when the parent has
 * gone away or shut the module down.
 *
 * Call it from the main thread, once.
 *
 * Returns: %TRUE once the module was served and has ended, %FALSE with
 *   @error set if this process was not started by a
 *   [class@Spark.Subprocess] or could not connect
 *
 * Since: 1.0
 */
gboolean
spark_subprocess_serve (SparkHandler  *handler,
                        GError       **error)
{
  g_autoptr(GSocket) socket = NULL;
  g_autoptr(GSocketConnection) stream = NULL;
  g_autoptr(GDBusConnection) connection = NULL;
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(GMainLoop) loop = NULL;
  g_autofree char *guid = NULL;
  const char *fd_text = g_getenv (SUBPROCESS_FD_ENV);
  gint64 fd;
  gulong closed_id, running_id;

  g_return_val_if_fail (SPARK_IS_HANDLER (handler), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (fd_text == NULL || !g_ascii_string_to_signed (fd_text, 10, 0, G_MAXINT, &fd, NULL))
    {
      g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                   "This process was not started by a SparkSubprocess (%s is not set)", SUBPROCESS_FD_ENV);
      return FALSE;
    }
  g_unsetenv (SUBPROCESS_FD_ENV);

  socket = g_socket_new_from_fd ((int) fd, error);
  if (socket == NULL)
    return FALSE;
  stream = g_socket_connection_factory_create_connection (socket);
  guid = g_dbus_generate_guid ();
  /* Messages wait until the module is exported: a request the parent
   * sent at once must not find no object there. */
  connection = g_dbus_connection_new_sync (G_IO_STREAM (stream), guid,
                                           G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_SERVER |
                                           G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_ALLOW_ANONYMOUS |
                                           G_DBUS_CONNECTION_FLAGS_DELAY_MESSAGE_PROCESSING,
                                           NULL, NULL, error);
  if (connection == NULL)
    return FALSE;
  /* The parent gone is the end: no SIGPIPE-like exit on our own. */
  g_dbus_connection_set_exit_on_close (connection, FALSE);

  server = spark_module_server_new (handler);
  if (!spark_module_server_start (server, g_main_context_default (), error) ||
      !spark_module_server_export (server, connection, SUBPROCESS_PATH, error))
    return FALSE;
  g_dbus_connection_start_message_processing (connection);

  loop = g_main_loop_new (NULL, FALSE);
  closed_id = g_signal_connect_swapped (connection, "closed", G_CALLBACK (on_serve_end), loop);
  running_id = g_signal_connect (server, "notify::running", G_CALLBACK (on_server_running), loop);
  if (!g_dbus_connection_is_closed (connection))
    g_main_loop_run (loop);
  g_signal_handler_disconnect (connection, closed_id);
  g_signal_handler_disconnect (server, running_id);

  spark_module_server_unexport (server, connection, SUBPROCESS_PATH);
  /* The Shutdown's answer goes out before we exit. */
  (void) g_dbus_connection_flush_sync (connection, NULL, NULL);
  /* The parent went away first: stop, and let the server finish. */
  if (spark_module_server_get_running (server))
    {
      spark_module_server_shutdown_async (server, SPARK_SHUTDOWN_MODE_ABORT, NULL, NULL, NULL);
      while (spark_module_server_get_running (server))
        g_main_context_iteration (NULL, TRUE);
    }
  return TRUE;
}
