/* spark-module-server.c
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

/**
 * SparkModuleServer:
 *
 * Runs one module: a [iface@Spark.Handler] and the mailbox in front of it.
 *
 * Clients talk to the module through [class@Spark.Dispatcher]s made by
 * [method@Spark.ModuleServer.create_dispatcher]. The server takes their
 * messages from its mailbox and hands them to its handler one at a time, in
 * mailbox order, on the server's [struct@GLib.MainContext]:
 *
 * - [method@Spark.ModuleServer.start] serves on a context you give (for
 *   example a GTK application's main context, for handlers that touch the
 *   UI or are written in JavaScript);
 * - [method@Spark.ModuleServer.start_in_thread] serves on a thread of its
 *   own, named after [property@Spark.ModuleServer:name], with its own
 *   context.
 *
 * A started server keeps itself alive until it has stopped: dropping every
 * reference does not stop it. Stop it with
 * [method@Spark.ModuleServer.shutdown_async], or by sending it a shutdown
 * message with [method@Spark.Dispatcher.send_shutdown], as you would join
 * a thread.
 *
 * Signals and property notifications are emitted on the **owner context**:
 * the thread-default main context of the thread that started the server.
 * They wait until that context is iterated, so a handler connected from
 * Python or JavaScript runs on its own thread. A stopped server does not
 * need its owner context to be released: once nothing references it, it
 * is finalized and its thread joined, even in a program without a main
 * loop.
 *
 * A server's own thread delivers what is due to its context before it
 * ends: the replies to requests its handler made (to other servers, or to
 * itself before it stopped) and the callbacks of
 * [method@Spark.ModuleServer.shutdown_async] called on that thread.
 *
 * The server's own mailbox is drained by a single [struct@GLib.Source]:
 * senders wake it only when it found the mailbox empty, so one wakeup
 * serves a whole batch of messages.
 *
 * Since: 1.0
 */

#include "config.h"

#include <string.h>

#include "spark-dispatcher-private.h"
#include "spark-enum-types.h"
#include "spark-error.h"
#include "spark-handler-private.h"
#include "spark-invocation-private.h"
#include "spark-mailbox-private.h"
#include "spark-module-server.h"
#include "spark-reply-port-private.h"
#include "spark-router-private.h"
#include "spark-trace-private.h"
#include "spark-wake-source-private.h"

typedef struct _SparkServerWorker SparkServerWorker;

/* What a server counts and times (see spark_module_server_get_metrics()).
 * Times in µs; those of handlers are sampled, one message in
 * METRICS_TIME_EVERY, and queue times are those of the requests their
 * senders stamped (one in SPARK_REQUEST_SAMPLE_EVERY). */
typedef struct
{
  guint64 handled;
  guint64 failed;
  guint64 cancelled;
  guint64 timed_out;
  guint64 queue_n;
  guint64 queue_sum;
  guint64 queue_max;
  guint64 handler_n;
  guint64 handler_sum;
  guint64 handler_max;
} SparkServerCounts;

#define METRICS_TIME_EVERY 8

typedef struct
{
  SparkWakeSource    source;
  SparkServerWorker *worker;   /* not a reference: the server outlives its started sources */
} SparkServerSource;

/* What takes messages from the mailbox and hands them to the handler, on
 * one context: a server has one worker (on the context given to start(),
 * or on a thread of its own), or a pool of them, each on a thread of its
 * own with its own context. */
struct _SparkServerWorker
{
  SparkModuleServer *server;   /* not a reference */
  guint          index;        /* its consumer index in the mailbox */
  GSource       *source;       /* a reference: its SparkServerSource */
  GMainContext  *context;      /* a reference */
  GThread       *thread;       /* the server's state_mutex: own thread, joined on the owner side */

  /* The worker's context only. */
  SparkMessage  *batch;        /* taken from the mailbox, not handled yet */
  guint          batch_urgent; /* control and high messages at the front of batch */
  GPtrArray     *held;         /* SparkRequest, a reference each: invocations the handler holds */
  SparkSpin      spin;         /* how long its own thread polls before it sleeps */
  SparkRouteCache route_cache; /* the router's last routes */
  gboolean       stopped;
  gboolean       metrics;      /* metrics are on, for this dispatch */
  gboolean       trace;        /* Sysprof records, for this dispatch */
  guint          n_untimed;    /* messages since the last one timed */
  SparkServerCounts counts;    /* since the worker last published them */
};

typedef struct
{
  GTask   *task;
  GSource *cancel_source;      /* nullable: when the caller gave a cancellable */
} ShutdownWait;

struct _SparkModuleServer
{
  GObject        parent_instance;

  SparkHandler  *handler;          /* construct-only */
  SparkMailbox  *mailbox;          /* immutable */
  char          *name;             /* owner thread */
  guint          capacity;         /* owner thread; frozen by start */
  SparkOverflowPolicy overflow;    /* owner thread; frozen by start */
  gint           drop_report_due;  /* atomic: a messages-dropped emission is on its way */
  guint          max_invocations;  /* owner thread; frozen by start */
  guint          n_workers_set;    /* owner thread; frozen by start: the workers property */
  SparkOrdering  ordering;         /* owner thread; frozen by start */

  GMutex         state_mutex;
  gboolean       started;          /* state_mutex: a start was accepted */
  gboolean       done;             /* state_mutex: stopped, and its thread has nothing left to do */
  gboolean       finished;         /* state_mutex: done, thread joined */
  GSList        *shutdown_waits;   /* state_mutex: ShutdownWait */
  GSList        *owner_calls;      /* state_mutex: GSource, owner-context emissions not run yet */

  /* Set by start, immutable afterwards. */
  SparkHandlerInterface *iface;    /* the handler's vfuncs, looked up once */
  GMainContext  *owner_context;
  SparkServerWorker *workers;      /* n_workers of them */
  guint          n_workers;
  gboolean       pool;             /* n_workers > 1 */
  gboolean       own_thread;
  gboolean       uses_invocation;
  gboolean       guard_python;     /* commands go through the wrapper, which checks the interpreter */
  SparkRouter   *router;           /* the handler, if it is a router: not a reference */
  SparkMailboxRoutes routes;       /* the router's flow control, for the mailbox */

  gint           running;          /* atomic, for the getter */
  gint           n_serving;        /* atomic: workers that have not stopped */
  gint           n_alive;          /* atomic: worker threads that have not ended */
  gpointer       shutdown;         /* atomic: the shutdown marker, taken; the workers drain and stop */
  SparkTraceCounter trace_depth;   /* Sysprof's queue-depth counter, made on first use */

  /* Metrics. */
  guint          metrics_interval; /* atomic: ms between notifications; 0: metrics off */
  gint           metrics_due;      /* atomic: a notification is on its way */
  GMutex         metrics_mutex;
  SparkServerCounts counts;        /* metrics_mutex: what the workers published */
  SparkServerCounts notified;      /* owner context: the values last notified */
  guint64        notified_dropped; /* owner context */
  guint          notified_high;    /* owner context */
  gint           published_dropped; /* atomic: the dropped count the workers last saw */
};

G_DEFINE_FINAL_TYPE (SparkModuleServer, spark_module_server, G_TYPE_OBJECT)

enum {
  PROP_0,
  PROP_HANDLER,
  PROP_NAME,
  PROP_CAPACITY,
  PROP_OVERFLOW,
  PROP_MAX_INVOCATIONS,
  PROP_WORKERS,
  PROP_ORDERING,
  PROP_RUNNING,
  PROP_PENDING,
  PROP_METRICS_INTERVAL,
  PROP_METRICS,
  PROP_HANDLED,
  PROP_FAILED,
  PROP_CANCELLED,
  PROP_TIMED_OUT,
  PROP_DROPPED,
  PROP_PENDING_HIGH_WATER,
  PROP_QUEUE_TIME_MEAN,
  PROP_QUEUE_TIME_MAX,
  PROP_HANDLER_TIME_MEAN,
  PROP_HANDLER_TIME_MAX,
  N_PROPS
};

enum {
  COMMAND_FAILED,
  MESSAGES_DROPPED,
  N_SIGNALS
};

static GParamSpec *properties[N_PROPS];
static guint signals[N_SIGNALS];

/* Owner-context emissions -------------------------------------------------- */

/* An emission waiting for the owner context. It holds the server weakly:
 * a program that never iterates its owner context (only request_sync and
 * send_shutdown, no main loop) must still see a stopped server released,
 * and its finalize destroys what never ran. */
typedef void (*OwnerFunc) (SparkModuleServer *self,
                           gpointer           data);

typedef struct
{
  GWeakRef        server;
  GSource        *source;   /* not a reference: the context's */
  OwnerFunc       func;
  gpointer        data;
  GDestroyNotify  destroy;
} OwnerCall;

static void
owner_call_free (gpointer data)
{
  OwnerCall *call = data;

  g_weak_ref_clear (&call->server);
  if (call->destroy != NULL)
    call->destroy (call->data);
  g_free (call);
}

static gboolean
owner_call_cb (gpointer data)
{
  OwnerCall *call = data;
  g_autoptr(SparkModuleServer) self = g_weak_ref_get (&call->server);

  /* Gone: its finalize destroys this source. */
  if (self == NULL)
    return G_SOURCE_REMOVE;

  g_mutex_lock (&self->state_mutex);
  self->owner_calls = g_slist_remove (self->owner_calls, call->source);
  g_mutex_unlock (&self->state_mutex);

  call->func (self, call->data);
  g_source_unref (call->source);

  return G_SOURCE_REMOVE;
}

/* @func (@data) on the owner context, after @delay_ms (0: when idle). */
static void
spark_module_server_invoke_owner_later (SparkModuleServer *self,
                                        guint              delay_ms,
                                        OwnerFunc          func,
                                        gpointer           data,
                                        GDestroyNotify     destroy)
{
  OwnerCall *call = g_new0 (OwnerCall, 1);
  GSource *idle = delay_ms > 0 ? g_timeout_source_new (delay_ms) : g_idle_source_new ();

  g_weak_ref_init (&call->server, self);
  call->source = idle;
  call->func = func;
  call->data = data;
  call->destroy = destroy;

  g_source_set_priority (idle, G_PRIORITY_DEFAULT);
  g_source_set_callback (idle, owner_call_cb, call, owner_call_free);
  g_source_set_static_name (idle, "[spark] server notification");

  /* Listed before it can run; the list keeps the reference. */
  g_mutex_lock (&self->state_mutex);
  self->owner_calls = g_slist_prepend (self->owner_calls, idle);
  g_mutex_unlock (&self->state_mutex);

  g_source_attach (idle, self->owner_context);
}

static void
spark_module_server_invoke_owner (SparkModuleServer *self,
                                  OwnerFunc          func,
                                  gpointer           data,
                                  GDestroyNotify     destroy)
{
  spark_module_server_invoke_owner_later (self, 0, func, data, destroy);
}

/* Dropped messages are reported at most this often. */
#define DROP_REPORT_MSEC 100

static void
emit_messages_dropped (SparkModuleServer *self,
                       gpointer           data)
{
  guint count;

  /* What was dropped until now, from the mailbox's count: later drops
   * schedule the next report. */
  g_atomic_int_set (&self->drop_report_due, FALSE);
  count = spark_mailbox_take_dropped (self->mailbox);
  if (count > 0)
    g_signal_emit (self, signals[MESSAGES_DROPPED], 0, count);
}

/* On the server's context, between messages: drops since the last report
 * get one, DROP_REPORT_MSEC from now. */
static inline void
spark_module_server_check_drops (SparkModuleServer *self)
{
  if (G_UNLIKELY (spark_mailbox_has_dropped (self->mailbox)) &&
      !g_atomic_int_get (&self->drop_report_due))
    {
      g_atomic_int_set (&self->drop_report_due, TRUE);
      spark_module_server_invoke_owner_later (self, DROP_REPORT_MSEC, emit_messages_dropped, NULL, NULL);
    }
}

/* Metrics ------------------------------------------------------------------- */

static void
counts_add (SparkServerCounts       *into,
            const SparkServerCounts *from)
{
  into->handled += from->handled;
  into->failed += from->failed;
  into->cancelled += from->cancelled;
  into->timed_out += from->timed_out;
  into->queue_n += from->queue_n;
  into->queue_sum += from->queue_sum;
  into->queue_max = MAX (into->queue_max, from->queue_max);
  into->handler_n += from->handler_n;
  into->handler_sum += from->handler_sum;
  into->handler_max = MAX (into->handler_max, from->handler_max);
}

static void
spark_module_server_get_counts (SparkModuleServer *self,
                                SparkServerCounts *counts)
{
  g_mutex_lock (&self->metrics_mutex);
  *counts = self->counts;
  g_mutex_unlock (&self->metrics_mutex);
}

static inline guint64
mean_of (guint64 sum,
         guint64 n)
{
  return n > 0 ? (sum + n / 2) / n : 0;
}

static guint64
spark_module_server_get_dropped (SparkModuleServer *self)
{
  return (guint64) (guint) g_atomic_int_get (&self->mailbox->total_dropped);
}

/* On the owner context, at most once per metrics-interval: the metrics
 * properties that changed since the last time. */
static void
emit_metrics_notify (SparkModuleServer *self,
                     gpointer           data)
{
  SparkServerCounts now;
  guint64 dropped = spark_module_server_get_dropped (self);
  guint high = spark_mailbox_get_pending_high (self->mailbox);
  SparkServerCounts *was = &self->notified;
  gboolean changed = FALSE;

  g_atomic_int_set (&self->metrics_due, FALSE);
  spark_module_server_get_counts (self, &now);

  g_object_freeze_notify (G_OBJECT (self));
#define NOTIFY_IF(cond, prop) \
  G_STMT_START { if (cond) { g_object_notify_by_pspec (G_OBJECT (self), properties[prop]); changed = TRUE; } } G_STMT_END
  NOTIFY_IF (now.handled != was->handled, PROP_HANDLED);
  NOTIFY_IF (now.failed != was->failed, PROP_FAILED);
  NOTIFY_IF (now.cancelled != was->cancelled, PROP_CANCELLED);
  NOTIFY_IF (now.timed_out != was->timed_out, PROP_TIMED_OUT);
  NOTIFY_IF (dropped != self->notified_dropped, PROP_DROPPED);
  NOTIFY_IF (high != self->notified_high, PROP_PENDING_HIGH_WATER);
  NOTIFY_IF (mean_of (now.queue_sum, now.queue_n) != mean_of (was->queue_sum, was->queue_n),
             PROP_QUEUE_TIME_MEAN);
  NOTIFY_IF (now.queue_max != was->queue_max, PROP_QUEUE_TIME_MAX);
  NOTIFY_IF (mean_of (now.handler_sum, now.handler_n) != mean_of (was->handler_sum, was->handler_n),
             PROP_HANDLER_TIME_MEAN);
  NOTIFY_IF (now.handler_max != was->handler_max, PROP_HANDLER_TIME_MAX);
#undef NOTIFY_IF
  if (changed)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_METRICS]);
  g_object_thaw_notify (G_OBJECT (self));

  *was = now;
  self->notified_dropped = dropped;
  self->notified_high = high;
}

/* Something changed: one notification, metrics-interval from now. */
static void
spark_module_server_metrics_changed (SparkModuleServer *self)
{
  guint interval = g_atomic_int_get (&self->metrics_interval);

  if (interval > 0 && !g_atomic_int_get (&self->metrics_due) &&
      !g_atomic_int_exchange (&self->metrics_due, TRUE))
    spark_module_server_invoke_owner_later (self, interval, emit_metrics_notify, NULL, NULL);
}

/* On the worker's context, at the end of a dispatch: its counts since
 * the last time, for everybody to read. */
static void
spark_server_worker_publish (SparkServerWorker *worker)
{
  SparkModuleServer *self = worker->server;
  static const SparkServerCounts zero = { 0, };
  gint dropped = g_atomic_int_get (&self->mailbox->total_dropped);

  /* Drops happen on the senders' side: a batch that saw some has news
   * even if it handled nothing. */
  if (memcmp (&worker->counts, &zero, sizeof zero) == 0)
    {
      if (g_atomic_int_get (&self->published_dropped) != dropped)
        {
          g_atomic_int_set (&self->published_dropped, dropped);
          spark_module_server_metrics_changed (self);
        }
      return;
    }
  g_atomic_int_set (&self->published_dropped, dropped);

  g_mutex_lock (&self->metrics_mutex);
  counts_add (&self->counts, &worker->counts);
  g_mutex_unlock (&self->metrics_mutex);
  worker->counts = zero;

  spark_module_server_metrics_changed (self);
}

/* How @req ended, once the server is done with it. */
static inline void
spark_server_worker_count_end (SparkServerWorker *worker,
                               SparkRequest      *req)
{
  SparkModuleServer *self = worker->server;

  if (!worker->metrics)
    return;

  switch (spark_request_get_end (req))
    {
    case SPARK_REQUEST_END_FAILED:
      worker->counts.failed++;
      break;
    case SPARK_REQUEST_END_CANCELLED:
      worker->counts.cancelled++;
      if (self->router != NULL)
        spark_route_count (spark_router_find_cached (self->router, &worker->route_cache,
                                                     spark_request_get_name (req)),
                           SPARK_ROUTE_COUNT_CANCELLED);
      break;
    case SPARK_REQUEST_END_TIMED_OUT:
      worker->counts.timed_out++;
      if (self->router != NULL)
        spark_route_count (spark_router_find_cached (self->router, &worker->route_cache,
                                                     spark_request_get_name (req)),
                           SPARK_ROUTE_COUNT_TIMED_OUT);
      break;
    case SPARK_REQUEST_END_NONE:
    case SPARK_REQUEST_END_REPLY:
    case SPARK_REQUEST_END_OTHER:
    default:
      break;
    }
}

static inline void
record_time (guint64 *n,
             guint64 *sum,
             guint64 *max,
             gint64   usec)
{
  guint64 t = (guint64) MAX (usec, 0);

  (*n)++;
  *sum += t;
  if (t > *max)
    *max = t;
}

static void
notify_running (SparkModuleServer *self,
                gpointer           data)
{
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_RUNNING]);
}

typedef struct
{
  char              *name;
  GVariant          *parameters;
  GError            *error;
} CommandFailure;

static void
command_failure_free (gpointer data)
{
  CommandFailure *failure = data;

  g_free (failure->name);
  g_clear_pointer (&failure->parameters, g_variant_unref);
  g_error_free (failure->error);
  g_free (failure);
}

static void
emit_command_failed (SparkModuleServer *self,
                     gpointer           data)
{
  CommandFailure *failure = data;

  g_signal_emit (self, signals[COMMAND_FAILED], 0,
                 failure->name, failure->parameters, failure->error);
}

static void
spark_module_server_report_command_failure (SparkModuleServer *self,
                                            SparkMessage      *msg,
                                            GError            *error)
{
  CommandFailure *failure;

  /* Logged here, on the server's context, as it happens; a warning only
   * when nobody listens for the signal. */
  if (g_signal_has_handler_pending (self, signals[COMMAND_FAILED], 0, TRUE))
    g_debug ("Command “%s” of module server “%s” failed: %s",
             spark_message_get_name (msg), self->name ? self->name : "", error->message);
  else
    g_warning ("Command “%s” of module server “%s” failed: %s",
               spark_message_get_name (msg), self->name ? self->name : "", error->message);

  failure = g_new0 (CommandFailure, 1);
  failure->name = g_strdup (spark_message_get_name (msg));
  failure->parameters = msg->parameters ? g_variant_ref (msg->parameters) : NULL;
  failure->error = error;

  spark_module_server_invoke_owner (self, emit_command_failed, failure, command_failure_free);
}

/* Stopping ------------------------------------------------------------------ */

static void
shutdown_wait_free (ShutdownWait *wait)
{
  g_clear_object (&wait->task);
  if (wait->cancel_source != NULL)
    {
      g_source_destroy (wait->cancel_source);
      g_source_unref (wait->cancel_source);
    }
  g_free (wait);
}

static void
return_waits (GSList *waits)
{
  waits = g_slist_reverse (waits);
  while (waits != NULL)
    {
      ShutdownWait *wait = waits->data;

      waits = g_slist_delete_link (waits, waits);
      g_task_return_boolean (wait->task, TRUE);
      shutdown_wait_free (wait);
    }
}

/* Once the server is done: joins its thread (unless called on it, when
 * the thread detaches instead) and marks it finished. Whoever comes first
 * does it: the owner context, a later shutdown_async(), or finalize, so
 * that a program that never iterates its owner context releases the
 * server and its thread too. Returns the shutdown waits to complete, or
 * NULL if the server is not done. */
static GSList *
spark_module_server_reap (SparkModuleServer *self,
                          gboolean          *finished)
{
  GThread *threads[SPARK_MAILBOX_MAX_CONSUMERS] = { NULL, };
  GSList *waits;

  g_mutex_lock (&self->state_mutex);
  if (!self->done)
    {
      g_mutex_unlock (&self->state_mutex);
      *finished = FALSE;
      return NULL;
    }
  for (guint i = 0; i < self->n_workers; i++)
    threads[i] = g_steal_pointer (&self->workers[i].thread);
  waits = g_steal_pointer (&self->shutdown_waits);
  self->finished = TRUE;
  g_mutex_unlock (&self->state_mutex);

  /* Every worker thread has ended, or is ending: the last one made the
   * server done. */
  for (guint i = 0; i < self->n_workers; i++)
    {
      if (threads[i] == g_thread_self ())
        g_thread_unref (threads[i]);
      else if (threads[i] != NULL)
        g_thread_join (threads[i]);
    }

  *finished = TRUE;
  return waits;
}

/* On the owner context once the server is done: the server's thread
 * cannot join itself, and signals are the owner's. */
static void
spark_module_server_finish (SparkModuleServer *self,
                            gpointer           data)
{
  gboolean finished;
  GSList *waits = spark_module_server_reap (self, &finished);

  g_assert (finished);
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_RUNNING]);
  return_waits (waits);
}

/* Marks the server done (nothing more will run on its behalf) and hands
 * the finish to the owner context. Drops the reference start took: from
 * here on the server lives as long as its users hold it. */
static void
spark_module_server_set_done (SparkModuleServer *self)
{
  g_mutex_lock (&self->state_mutex);
  self->done = TRUE;
  g_mutex_unlock (&self->state_mutex);

  spark_module_server_invoke_owner (self, spark_module_server_finish, NULL, NULL);
  g_object_unref (self);
}

/* The server is done with @req, whose invocation was held: the request
 * no longer wakes it, an ABORT no longer fails it, and the server's
 * reference goes. */
static void
release_held (SparkModuleServer *self,
              SparkRequest      *req)
{
  spark_request_unwatch (req);
  spark_mailbox_unhold (self->mailbox, req);
  spark_request_unref (req);
}

/* A held request's end wakes the worker that handled it, which may be
 * waiting for it. */
static const SparkRequestWatcher held_watcher = {
  .func = (SparkRequestWatchFunc) spark_mailbox_consumer_wake,
  .release = (GDestroyNotify) spark_mailbox_consumer_unref,
};

/* Once every worker has stopped: nothing more will be handled. */
static void
spark_module_server_stop (SparkModuleServer *self)
{
  GCancellable *token;
  SparkMessage *shutdown = g_atomic_pointer_exchange (&self->shutdown, NULL);

  g_clear_pointer (&shutdown, spark_message_free);
  token = spark_mailbox_finish (self->mailbox);

  g_atomic_int_set (&self->running, FALSE);

  /* The crate's "tasks listening for the cancellation token are notified". */
  if (token != NULL)
    {
      g_cancellable_cancel (token);
      g_object_unref (token);
    }

  /* Without a thread of its own, the server is done once its source's
   * dispatch returns (see spark_server_source_dispatch()). With threads,
   * once each has delivered what is due to its context. */
}

/* On the worker's context: it handles nothing more. The last worker to
 * stop stops the server. */
static void
spark_server_worker_stop (SparkServerWorker *worker)
{
  SparkModuleServer *self = worker->server;

  g_assert (!worker->stopped);

  worker->stopped = TRUE;
  spark_route_cache_clear (&worker->route_cache);
  spark_module_server_check_drops (self);

  /* An ABORT failed them already; this makes sure, and lets them go. */
  while (worker->held->len > 0)
    {
      SparkRequest *req = g_ptr_array_steal_index (worker->held, worker->held->len - 1);

      spark_request_complete_literal (req, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED,
                                      "The module server was shut down (abort) while the request was being handled");
      release_held (self, req);
    }

  spark_mailbox_drop_messages (self->mailbox, g_steal_pointer (&worker->batch), TRUE);
  g_source_destroy (worker->source);
  if (G_UNLIKELY (spark_trace_is_active ()))
    spark_trace_queue_depth (&self->trace_depth, self->name, 0);

  if (g_atomic_int_dec_and_test (&self->n_serving))
    spark_module_server_stop (self);
}

/* Handling ------------------------------------------------------------------ */

static void
spark_module_server_handle_command (SparkModuleServer *self,
                                    SparkServerWorker *worker,
                                    SparkMessage      *msg)
{
  GError *error = NULL;

  gboolean ok;

  /* Straight to the vfunc: the public wrapper's type checks cost more than
   * the rest of a command's trip through the library. */
  if (self->router != NULL)
    ok = spark_route_handle_command (spark_router_find_cached (self->router, &worker->route_cache,
                                                               spark_message_get_name (msg)),
                                     spark_message_get_name (msg), msg->parameters,
                                     self->mailbox->abort_cancellable, &error);
  else if (self->guard_python)
    ok = spark_handler_handle_command (self->handler, spark_message_get_name (msg), msg->parameters,
                                       self->mailbox->abort_cancellable, &error);
  else if (self->iface->handle_command != NULL)
    ok = self->iface->handle_command (self->handler, spark_message_get_name (msg), msg->parameters,
                                      self->mailbox->abort_cancellable, &error);
  else
    {
      spark_handler_set_not_supported (self->handler, SPARK_MESSAGE_COMMAND,
                                       spark_message_get_name (msg), &error);
      ok = FALSE;
    }

  if (worker->metrics)
    {
      worker->counts.handled++;
      if (!ok)
        worker->counts.failed++;
    }

  if (ok && error != NULL)
    {
      /* As for requests: a contract breach, said loudly, not leaked. */
      g_critical ("The handler of command “%s” returned TRUE and set an error (%s); "
                  "the error is ignored", spark_message_get_name (msg), error->message);
      g_clear_error (&error);
    }
  else if (!ok)
    {
      if (error == NULL)
        error = g_error_new (SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY,
                             "The handler of command “%s” failed without an error",
                             spark_message_get_name (msg));
      spark_module_server_report_command_failure (self, msg, error);
    }
}

/* Returns TRUE if the server must wait before it handles the next message:
 * the handler holds max-invocations invocations now. */
static gboolean
spark_module_server_handle_request (SparkModuleServer *self,
                                    SparkServerWorker *worker,
                                    SparkRequest      *req)
{
  SparkMailbox *mailbox = self->mailbox;
  GCancellable *cancellable;
  gboolean own_cancellable;
  gboolean via_invocation = self->uses_invocation;
  SparkRoute *route = NULL;

  /* Cancelled or timed out while queued: the requester already knows. */
  if (spark_request_is_claimed (req))
    {
      spark_server_worker_count_end (worker, req);
      spark_request_unref (req);
      return FALSE;
    }

  if (worker->metrics)
    worker->counts.handled++;

  /* A router's request to a plain handler is answered by a call. */
  if (self->router != NULL)
    {
      route = spark_router_find_cached (self->router, &worker->route_cache, spark_request_get_name (req));
      if (route != NULL && spark_route_is_direct (route))
        via_invocation = FALSE;
      else
        route = NULL;
    }

  cancellable = spark_request_get_handler_cancellable (req);
  own_cancellable = cancellable != NULL;
  if (!own_cancellable)
    cancellable = mailbox->abort_cancellable;

  if (via_invocation)
    {
      SparkInvocation *invocation = spark_invocation_new (req, cancellable);

      spark_mailbox_hold (mailbox, req);
      spark_request_watch (req, &held_watcher, spark_mailbox_ref_consumer (mailbox, worker->index));

      spark_handler_handle_invocation (self->handler, invocation);
      g_object_unref (invocation);

      /* Still held: the server keeps its reference until the request
       * ends, and moves on only while fewer than max-invocations are. */
      if (!spark_request_is_claimed (req))
        {
          g_ptr_array_add (worker->held, req);
          return worker->held->len >= self->max_invocations;
        }

      spark_server_worker_count_end (worker, req);
      release_held (self, req);
      return FALSE;
    }
  else
    {
      GError *error = NULL;
      GVariant *reply;

      if (own_cancellable)
        spark_mailbox_set_current (mailbox, worker->index, req);

      if (route != NULL)
        reply = spark_route_handle_request (route, spark_request_get_name (req),
                                            spark_request_get_parameters (req),
                                            cancellable, &error);
      else if (self->iface->handle_request != NULL)
        reply = self->iface->handle_request (self->handler, spark_request_get_name (req),
                                             spark_request_get_parameters (req),
                                             cancellable, &error);
      else
        {
          spark_handler_set_not_supported (self->handler, SPARK_MESSAGE_REQUEST,
                                           spark_request_get_name (req), &error);
          reply = NULL;
        }
      /* The handler had the parameters for the call only: drop them here,
       * on the server's thread, rather than on the requester's when the
       * request is freed. With many requests in flight the requester's
       * thread is the busier one (callgrind: 2,750 instructions per
       * request there against 1,250 here). Before the reply goes out, so
       * that this thread is done with the request as soon as it can be:
       * a blocked requester then usually drops the last reference, and
       * the request's block goes back to its own thread's pool. An
       * invocation can outlive its handler call, so it keeps them. */
      spark_request_clear_parameters (req);
      spark_request_return_reply (req, reply, error);

      if (own_cancellable)
        spark_mailbox_set_current (mailbox, worker->index, NULL);
      spark_server_worker_count_end (worker, req);
    }

  spark_request_unref (req);
  return FALSE;
}

/* A dispatcher's cancel_all(), from the control lane: its requests in
 * the batch taken already fail with CANCELLED (the mailbox failed those
 * still queued); the server skips them when it comes to them. */
static void
spark_module_server_cancel_taken (SparkServerWorker *worker,
                                  guint64            sender)
{
  for (SparkMessage *msg = worker->batch; msg != NULL; msg = msg->next)
    {
      SparkRequest *req;

      if (msg->kind != SPARK_MESSAGE_REQUEST)
        continue;
      req = spark_request_from_message (msg);
      if (spark_request_get_sender (req) == sender && !spark_request_is_claimed (req))
        spark_request_complete_cancelled (req, "The request was cancelled by spark_dispatcher_cancel_all()");
    }
}

/* A message's handler call, measured: for the metrics (one in
 * METRICS_TIME_EVERY, and those with a queue time to measure) and, while
 * Sysprof records (-Dsysprof=true), every one. */
typedef struct
{
  gint64      start;       /* 0: not measured */
  guint32     queued_us;   /* the sender's stamp, 0 for none */
  guint64     handled;     /* the worker's count before the call */
  gboolean    trace;
  SparkRoute *route;       /* a router's route of the message, when timed: its times too */
} HandlerTime;

static inline void
spark_server_worker_time_start (SparkServerWorker *worker,
                                HandlerTime       *t,
                                guint32            queued_us,
                                const char        *name)
{
  t->start = 0;
  t->route = NULL;
  t->trace = worker->trace;
  t->queued_us = queued_us;
  t->handled = worker->counts.handled;

  if (!t->trace)
    {
      if (!worker->metrics)
        return;
      if (++worker->n_untimed < METRICS_TIME_EVERY && queued_us == 0)
        return;
    }

  worker->n_untimed = 0;
  t->start = g_get_monotonic_time ();
  if (worker->metrics && worker->server->router != NULL)
    {
      /* Kept: the handling's own lookup may replace the cache's entry if
       * the routes change meanwhile. */
      t->route = spark_router_find_cached (worker->server->router, &worker->route_cache, name);
      if (t->route != NULL)
        spark_route_ref (t->route);
    }
  /* The sender's clock, in 32 bits: the difference wraps, as it should. */
  if (queued_us != 0 && worker->metrics)
    {
      gint64 queued = (gint64) (guint32) ((guint32) t->start - queued_us);

      record_time (&worker->counts.queue_n, &worker->counts.queue_sum, &worker->counts.queue_max, queued);
      spark_route_add_times (t->route, queued, -1);
    }
}

static inline void
spark_server_worker_time_end (SparkServerWorker *worker,
                              HandlerTime       *t,
                              const char        *name)
{
  gint64 end;

  if (t->start == 0)
    return;

  end = g_get_monotonic_time ();
  /* Only a handler that ran: a request that ended while queued is skipped. */
  if (worker->counts.handled != t->handled)
    {
      record_time (&worker->counts.handler_n, &worker->counts.handler_sum, &worker->counts.handler_max,
                   end - t->start);
      spark_route_add_times (t->route, -1, end - t->start);
    }
  g_clear_pointer (&t->route, spark_route_unref);
  if (t->trace)
    spark_trace_message_handled (worker->server->name, name,
                                 t->queued_us != 0 ? (gint64) (guint32) ((guint32) t->start - t->queued_us) : -1,
                                 t->start, end);
}

/* While Sysprof records: the queue depth, once per batch. */
static inline void
spark_server_worker_trace_depth (SparkServerWorker *worker)
{
  if (G_UNLIKELY (worker->trace))
    spark_trace_queue_depth (&worker->server->trace_depth, worker->server->name,
                             spark_mailbox_get_pending (worker->server->mailbox));
}

/* A worker's source: handles what is queued, a budget at a time so that
 * other sources on a shared context get their turn. */
static gboolean
spark_server_worker_dispatch_some (SparkServerWorker *worker)
{
  SparkModuleServer *self = worker->server;
  SparkMailbox *mailbox = self->mailbox;
  guint budget = self->own_thread ? 256 : 64;
  guint handled = 0;

  spark_wake_source_set_ready ((SparkWakeSource *) worker->source, FALSE);
  spark_module_server_check_drops (self);
  worker->metrics = g_atomic_int_get (&self->metrics_interval) != 0;
  /* Once per dispatch: a recording that starts meanwhile misses a batch. */
  worker->trace = spark_trace_is_active ();

  if (worker->held->len > 0)
    {
      /* Forget the held requests that have ended since. */
      for (guint i = worker->held->len; i-- > 0;)
        {
          SparkRequest *req = g_ptr_array_index (worker->held, i);

          if (spark_request_is_claimed (req))
            {
              g_ptr_array_remove_index (worker->held, i);
              spark_server_worker_count_end (worker, req);
              release_held (self, req);
            }
        }

      /* At the limit: the next request's end wakes us. */
      if (worker->held->len >= self->max_invocations &&
          !g_atomic_int_get (&mailbox->aborting))
        return G_SOURCE_CONTINUE;
    }

  while (budget-- > 0)
    {
      SparkMessage *msg;

      if G_UNLIKELY (g_atomic_int_get (&mailbox->aborting))
        {
          spark_server_worker_stop (worker);
          return G_SOURCE_REMOVE;
        }

      if (worker->batch == NULL)
        {
          if (self->pool)
            {
              /* A pool's workers share the queue: one message at a time. */
              worker->batch = spark_mailbox_take_one (mailbox, worker->index);
              worker->batch_urgent = 0;
            }
          else
            {
              /* Only a server with a thread of its own spins, and only
               * after it handled something: a shared context (the UI's)
               * never burns; nor does a server that is stopping (nothing
               * more can come). */
              gboolean spin = self->own_thread && handled > 0 &&
                              g_atomic_pointer_get (&self->shutdown) == NULL;

              worker->batch = spark_mailbox_take (mailbox, spin ? &worker->spin : NULL, 0,
                                                  &worker->batch_urgent);
            }
          spark_module_server_check_drops (self);
          if (worker->batch != NULL)
            spark_server_worker_trace_depth (worker);
          if (worker->batch == NULL)
            {
              /* DRAIN: everything queued before the shutdown has been
               * handled; a worker stops once the invocations it holds
               * have ended too (each one's end wakes it). */
              if (g_atomic_pointer_get (&self->shutdown) != NULL && worker->held->len == 0)
                {
                  spark_server_worker_stop (worker);
                  return G_SOURCE_REMOVE;
                }
              return G_SOURCE_CONTINUE;   /* idle: the next sender wakes us */
            }
          if (handled == 0)
            spark_spin_note_event (&worker->spin);   /* woken after going idle */
        }

      /* High-priority messages that came after this batch was taken go
       * before the rest of it, once its own urgent ones are handled. */
      if (worker->batch_urgent == 0 && !self->pool &&
          G_UNLIKELY (spark_mailbox_has_high (mailbox)))
        {
          SparkMessage *tail;
          SparkMessage *high = spark_mailbox_take_high (mailbox, &tail, &worker->batch_urgent);

          if (high != NULL)
            {
              tail->next = worker->batch;
              worker->batch = high;
            }
        }

      msg = worker->batch;
      worker->batch = msg->next;
      msg->next = NULL;
      handled++;
      if (worker->batch_urgent > 0)
        worker->batch_urgent--;

      switch ((SparkMessageKind) msg->kind)
        {
        case SPARK_MESSAGE_SHUTDOWN:
          /* From the control lane, so ahead of the work queued before it:
           * the mailbox is closed, so what is queued now is all there will
           * be. Each worker stops once it finds nothing more (above): the
           * others are woken to see it. */
          if (!g_atomic_pointer_compare_and_exchange (&self->shutdown, NULL, msg))
            g_assert_not_reached ();
          if (self->pool)
            spark_mailbox_wake_all (mailbox);
          break;

        case SPARK_MESSAGE_CANCEL_ALL:
          spark_module_server_cancel_taken (worker, g_variant_get_uint64 (msg->parameters));
          spark_message_free (msg);
          break;

        case SPARK_MESSAGE_COMMAND:
          spark_mailbox_release_one (mailbox);
          {
            HandlerTime t;

            spark_server_worker_time_start (worker, &t, 0, spark_message_get_name (msg));
            spark_module_server_handle_command (self, worker, msg);
            spark_server_worker_time_end (worker, &t, spark_message_get_name (msg));
          }
          /* Blocks go back to senders from one thread only. */
          if (self->pool)
            spark_message_free (msg);
          else
            spark_message_recycle_command (&mailbox->command_blocks, msg);
          break;

        case SPARK_MESSAGE_REQUEST:
          spark_mailbox_release_one (mailbox);
          {
            SparkRequest *req = spark_request_from_message (msg);
            /* Tracing needs the name after the call, which may free it. */
            SparkRequest *kept = NULL;
            HandlerTime t;
            gboolean wait;

            spark_server_worker_time_start (worker, &t, spark_request_get_queued_us (req),
                                            spark_request_get_name (req));
            if (G_UNLIKELY (t.trace))
              kept = spark_request_ref (req);
            wait = spark_module_server_handle_request (self, worker, req);
            if (G_UNLIKELY (kept != NULL))
              {
                spark_server_worker_time_end (worker, &t, spark_request_get_name (kept));
                spark_request_unref (kept);
              }
            else
              spark_server_worker_time_end (worker, &t, NULL);
            if (wait)
              return G_SOURCE_CONTINUE;
          }
          break;

        default:
          g_assert_not_reached ();
        }
    }

  /* More to do, after the context's other sources had their turn. */
  spark_wake_source_set_ready ((SparkWakeSource *) worker->source, TRUE);
  return G_SOURCE_CONTINUE;
}

static gboolean
spark_server_worker_dispatch (SparkServerWorker *worker)
{
  gboolean again = spark_server_worker_dispatch_some (worker);

  /* Once per dispatch, not per message. */
  if (worker->metrics)
    spark_server_worker_publish (worker);

  return again;
}

static gboolean
spark_server_source_dispatch (gpointer data)
{
  SparkServerWorker *worker = ((SparkServerSource *) data)->worker;
  SparkModuleServer *server = worker->server;
  gboolean again = spark_server_worker_dispatch (worker);

  /* Last, as it may drop the last reference to the server. */
  if (worker->stopped && !server->own_thread)
    spark_module_server_set_done (server);

  return again;
}

/* The shutdown waits whose callbacks go to @context. */
static GSList *
take_waits_of_context (SparkModuleServer *self,
                       GMainContext      *context)
{
  GSList *taken = NULL;

  g_mutex_lock (&self->state_mutex);
  for (GSList *l = self->shutdown_waits; l != NULL;)
    {
      GSList *next = l->next;
      ShutdownWait *wait = l->data;

      if (g_task_get_context (wait->task) == context)
        {
          self->shutdown_waits = g_slist_remove_link (self->shutdown_waits, l);
          taken = g_slist_concat (l, taken);
        }
      l = next;
    }
  g_mutex_unlock (&self->state_mutex);

  return taken;
}

/* Iterations of the drain at most that only run sources that are
 * ready (idles, GTask returns), so that a source that stays ready cannot
 * keep a stopped thread alive. */
#define DRAIN_READY_MAX 100

static gpointer
spark_server_worker_thread_func (gpointer data)
{
  SparkServerWorker *worker = data;
  SparkModuleServer *self = worker->server;
  GMainContext *context = worker->context;
  guint ready_rounds = 0;

  /* Pushing acquires the context for the thread's whole life, which is how
   * blocking calls from this thread are recognized as deadlocks. */
  g_main_context_push_thread_default (context);
  while (!worker->stopped)
    g_main_context_iteration (context, TRUE);

  /* Stopped, but what was asked from this thread is still due here: the
   * outcomes of requests its handler made (to other servers, or to this
   * one before it stopped), and shutdown_async() callbacks of this
   * context, which cannot wait for this thread to end. Deliver them
   * before the thread ends: nothing is lost. */
  for (;;)
    {
      return_waits (take_waits_of_context (self, context));

      if (spark_reply_port_context_is_expecting (context))
        g_main_context_iteration (context, TRUE);
      else if (ready_rounds++ < DRAIN_READY_MAX && g_main_context_pending (context))
        g_main_context_iteration (context, FALSE);
      else
        break;
    }
  g_main_context_pop_thread_default (context);

  /* The last thread to end makes the server done. */
  if (g_atomic_int_dec_and_test (&self->n_alive))
    spark_module_server_set_done (self);

  return NULL;
}

/* GObject ------------------------------------------------------------------- */

static void
spark_module_server_dispose (GObject *object)
{
  SparkModuleServer *self = SPARK_MODULE_SERVER (object);

  /* A started server holds itself until it has stopped, so by now it
   * either never started or has finished. */
  g_clear_object (&self->handler);

  G_OBJECT_CLASS (spark_module_server_parent_class)->dispose (object);
}

static void
spark_module_server_finalize (GObject *object)
{
  SparkModuleServer *self = SPARK_MODULE_SERVER (object);

  /* Never started: nobody can send any more, close the mailbox for the
   * dispatchers that outlive us. */
  if (!self->started)
    spark_mailbox_close (self->mailbox, FALSE);

  /* Done but never finished (its owner context was not iterated since):
   * join its thread here, or let it go if this is that thread. */
  if (self->started)
    {
      gboolean finished;

      g_assert (spark_module_server_reap (self, &finished) == NULL);
      g_assert (finished);
    }

  /* Emissions the owner context never ran. */
  while (self->owner_calls != NULL)
    {
      GSource *call = self->owner_calls->data;

      self->owner_calls = g_slist_delete_link (self->owner_calls, self->owner_calls);
      g_source_destroy (call);
      g_source_unref (call);
    }

  g_assert (self->shutdown_waits == NULL);

  for (guint i = 0; i < self->n_workers; i++)
    {
      SparkServerWorker *worker = &self->workers[i];

      g_assert (worker->thread == NULL);
      g_assert (worker->held->len == 0);
      g_ptr_array_unref (worker->held);
      g_source_unref (worker->source);
      g_main_context_unref (worker->context);
    }
  g_clear_pointer (&self->workers, g_free);
  g_clear_pointer (&self->mailbox, spark_mailbox_unref);
  g_clear_pointer (&self->owner_context, g_main_context_unref);
  g_clear_pointer (&self->name, g_free);
  g_mutex_clear (&self->state_mutex);
  g_mutex_clear (&self->metrics_mutex);

  G_OBJECT_CLASS (spark_module_server_parent_class)->finalize (object);
}

static void
spark_module_server_get_property (GObject    *object,
                                  guint       prop_id,
                                  GValue     *value,
                                  GParamSpec *pspec)
{
  SparkModuleServer *self = SPARK_MODULE_SERVER (object);

  switch (prop_id)
    {
    case PROP_HANDLER:
      g_value_set_object (value, self->handler);
      break;

    case PROP_NAME:
      g_value_set_string (value, self->name);
      break;

    case PROP_CAPACITY:
      g_value_set_uint (value, self->capacity);
      break;

    case PROP_OVERFLOW:
      g_value_set_enum (value, self->overflow);
      break;

    case PROP_MAX_INVOCATIONS:
      g_value_set_uint (value, self->max_invocations);
      break;

    case PROP_WORKERS:
      g_value_set_uint (value, self->n_workers_set);
      break;

    case PROP_ORDERING:
      g_value_set_enum (value, self->ordering);
      break;

    case PROP_RUNNING:
      g_value_set_boolean (value, spark_module_server_get_running (self));
      break;

    case PROP_PENDING:
      g_value_set_uint (value, spark_module_server_get_pending (self));
      break;

    case PROP_METRICS_INTERVAL:
      g_value_set_uint (value, spark_module_server_get_metrics_interval (self));
      break;

    case PROP_METRICS:
      g_value_take_variant (value, spark_module_server_get_metrics (self));
      break;

    case PROP_DROPPED:
      g_value_set_uint64 (value, spark_module_server_get_dropped (self));
      break;

    case PROP_PENDING_HIGH_WATER:
      g_value_set_uint (value, spark_mailbox_get_pending_high (self->mailbox));
      break;

    case PROP_HANDLED:
    case PROP_FAILED:
    case PROP_CANCELLED:
    case PROP_TIMED_OUT:
    case PROP_QUEUE_TIME_MEAN:
    case PROP_QUEUE_TIME_MAX:
    case PROP_HANDLER_TIME_MEAN:
    case PROP_HANDLER_TIME_MAX:
      {
        SparkServerCounts counts;
        guint64 v;

        spark_module_server_get_counts (self, &counts);
        switch (prop_id)
          {
          case PROP_HANDLED: v = counts.handled; break;
          case PROP_FAILED: v = counts.failed; break;
          case PROP_CANCELLED: v = counts.cancelled; break;
          case PROP_TIMED_OUT: v = counts.timed_out; break;
          case PROP_QUEUE_TIME_MEAN: v = mean_of (counts.queue_sum, counts.queue_n); break;
          case PROP_QUEUE_TIME_MAX: v = counts.queue_max; break;
          case PROP_HANDLER_TIME_MEAN: v = mean_of (counts.handler_sum, counts.handler_n); break;
          case PROP_HANDLER_TIME_MAX:
          default: v = counts.handler_max; break;
          }
        g_value_set_uint64 (value, v);
      }
      break;

    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
spark_module_server_set_property (GObject      *object,
                                  guint         prop_id,
                                  const GValue *value,
                                  GParamSpec   *pspec)
{
  SparkModuleServer *self = SPARK_MODULE_SERVER (object);

  switch (prop_id)
    {
    case PROP_HANDLER:
      self->handler = g_value_dup_object (value);
      break;

    case PROP_NAME:
      spark_module_server_set_name (self, g_value_get_string (value));
      break;

    case PROP_CAPACITY:
      spark_module_server_set_capacity (self, g_value_get_uint (value));
      break;

    case PROP_OVERFLOW:
      spark_module_server_set_overflow (self, g_value_get_enum (value));
      break;

    case PROP_MAX_INVOCATIONS:
      spark_module_server_set_max_invocations (self, g_value_get_uint (value));
      break;

    case PROP_WORKERS:
      spark_module_server_set_workers (self, g_value_get_uint (value));
      break;

    case PROP_ORDERING:
      spark_module_server_set_ordering (self, g_value_get_enum (value));
      break;

    case PROP_METRICS_INTERVAL:
      spark_module_server_set_metrics_interval (self, g_value_get_uint (value));
      break;

    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
spark_module_server_constructed (GObject *object)
{
  SparkModuleServer *self = SPARK_MODULE_SERVER (object);

  G_OBJECT_CLASS (spark_module_server_parent_class)->constructed (object);

  if (self->handler == NULL)
    g_critical ("A SparkModuleServer needs a handler: set the “handler” property at construction");
}

static void
spark_module_server_class_init (SparkModuleServerClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->constructed = spark_module_server_constructed;
  object_class->dispose = spark_module_server_dispose;
  object_class->finalize = spark_module_server_finalize;
  object_class->get_property = spark_module_server_get_property;
  object_class->set_property = spark_module_server_set_property;

  /**
   * SparkModuleServer:handler:
   *
   * The handler that the server runs.
   *
   * Since: 1.0
   */
  properties[PROP_HANDLER] =
    g_param_spec_object ("handler", NULL, NULL,
                         SPARK_TYPE_HANDLER,
                         (G_PARAM_READWRITE |
                          G_PARAM_CONSTRUCT_ONLY |
                          G_PARAM_EXPLICIT_NOTIFY |
                          G_PARAM_STATIC_STRINGS));

  /**
   * SparkModuleServer:name:
   *
   * The module's name, used in log messages and as the name of the
   * server's thread (set it before [method@Spark.ModuleServer.start_in_thread]).
   *
   * Since: 1.0
   */
  properties[PROP_NAME] =
    g_param_spec_string ("name", NULL, NULL,
                         NULL,
                         (G_PARAM_READWRITE |
                          G_PARAM_EXPLICIT_NOTIFY |
                          G_PARAM_STATIC_STRINGS));

  /**
   * SparkModuleServer:capacity:
   *
   * How many messages the mailbox holds before senders wait for room; 0
   * (the default) means unbounded. Only settable before the server starts:
   * setting it afterwards is a programmer error and is ignored.
   *
   * Since: 1.0
   */
  properties[PROP_CAPACITY] =
    g_param_spec_uint ("capacity", NULL, NULL,
                       0, G_MAXINT, 0,
                       (G_PARAM_READWRITE |
                        G_PARAM_EXPLICIT_NOTIFY |
                        G_PARAM_STATIC_STRINGS));

  /**
   * SparkModuleServer:overflow:
   *
   * What a bounded mailbox does with a message that finds it full (see
   * [enum@Spark.OverflowPolicy]); without a capacity, nothing. Only
   * settable before the server starts: setting it afterwards is a
   * programmer error and is ignored.
   *
   * Since: 1.0
   */
  properties[PROP_OVERFLOW] =
    g_param_spec_enum ("overflow", NULL, NULL,
                       SPARK_TYPE_OVERFLOW_POLICY, SPARK_OVERFLOW_WAIT,
                       (G_PARAM_READWRITE |
                        G_PARAM_EXPLICIT_NOTIFY |
                        G_PARAM_STATIC_STRINGS));

  /**
   * SparkModuleServer:max-invocations:
   *
   * How many requests the handler may hold the invocation of at once
   * (see [vfunc@Spark.Handler.handle_invocation]). With 1, the default, the
   * server handles one message at a time: it moves on when the
   * invocation is completed or its request ends. With N > 1 it moves on as
   * soon as handle_invocation() returns while fewer than N invocations are
   * held, so a module that replies later (after I/O, or after asking
   * another module) serves N requests at once. Messages are still
   * *started* one at a time in mailbox order, on the server's context;
   * their replies may come in any order. A DRAIN shutdown waits for every
   * held invocation; an ABORT fails them all with
   * %SPARK_CHANNEL_ERROR_CLOSED. It does not matter for handlers that only
   * implement handle_request(). Only settable before the server starts:
   * setting it afterwards is a programmer error and is ignored.
   *
   * Since: 1.0
   */
  properties[PROP_MAX_INVOCATIONS] =
    g_param_spec_uint ("max-invocations", NULL, NULL,
                       1, G_MAXINT, 1,
                       (G_PARAM_READWRITE |
                        G_PARAM_EXPLICIT_NOTIFY |
                        G_PARAM_STATIC_STRINGS));

  /**
   * SparkModuleServer:workers:
   *
   * How many threads handle the server's messages: 1, the default, or a
   * pool of N (at most 64) for a handler that declares
   * %SPARK_HANDLER_FLAGS_CONCURRENT (see [method@Spark.Handler.get_flags]).
   * A pool is started with [method@Spark.ModuleServer.start_in_thread]:
   * each worker is a thread of its own, named after the server with its
   * number, with a main context of its own that is the thread-default
   * context of its handler calls. The workers share the mailbox: an idle
   * worker takes the next message, so a pool handles up to N messages at
   * once, in no order between workers unless
   * [property@Spark.ModuleServer:ordering] says so.
   *
   * The rest holds for the pool as a whole: priorities order what the
   * workers take; [property@Spark.ModuleServer:capacity] bounds the
   * mailbox; a DRAIN shutdown stops each worker once the queue is empty
   * and its held invocations have ended, and the server has stopped when
   * every worker has; an ABORT cancels every running handler's
   * cancellable; [property@Spark.ModuleServer:pending] counts every
   * message not yet started. [property@Spark.ModuleServer:max-invocations]
   * is per worker. [method@Spark.Dispatcher.broadcast_command] reaches
   * every worker.
   *
   * Only settable before the server starts: setting it afterwards is a
   * programmer error and is ignored. Starting a pool fails with
   * %SPARK_CHANNEL_ERROR_NOT_SUPPORTED if the handler does not declare
   * itself concurrent, is written in JavaScript, or if it is started with
   * [method@Spark.ModuleServer.start].
   *
   * Since: 1.0
   */
  properties[PROP_WORKERS] =
    g_param_spec_uint ("workers", NULL, NULL,
                       1, SPARK_MAILBOX_MAX_CONSUMERS, 1,
                       (G_PARAM_READWRITE |
                        G_PARAM_EXPLICIT_NOTIFY |
                        G_PARAM_STATIC_STRINGS));

  /**
   * SparkModuleServer:ordering:
   *
   * How a pool of [property@Spark.ModuleServer:workers] keeps related
   * messages in order (see [enum@Spark.Ordering]): by default it does not.
   * A server of one worker handles every message in order whatever this
   * says. Only settable before the server starts: setting it afterwards is
   * a programmer error and is ignored.
   *
   * Since: 1.0
   */
  properties[PROP_ORDERING] =
    g_param_spec_enum ("ordering", NULL, NULL,
                       SPARK_TYPE_ORDERING, SPARK_ORDERING_NONE,
                       (G_PARAM_READWRITE |
                        G_PARAM_EXPLICIT_NOTIFY |
                        G_PARAM_STATIC_STRINGS));

  /**
   * SparkModuleServer:running:
   *
   * Whether the server has started and not yet stopped: %FALSE as soon as
   * it has stopped handling messages. Notified on the owner context.
   *
   * Since: 1.0
   */
  properties[PROP_RUNNING] =
    g_param_spec_boolean ("running", NULL, NULL,
                          FALSE,
                          (G_PARAM_READABLE |
                           G_PARAM_EXPLICIT_NOTIFY |
                           G_PARAM_STATIC_STRINGS));

  /**
   * SparkModuleServer:pending:
   *
   * How many messages count against [property@Spark.ModuleServer:capacity]
   * now: those queued, and those the server has taken but not begun (its
   * current batch; a pool's messages deferred to the worker that holds
   * their key, and each worker's copy of a broadcast), including requests
   * that ended there (cancelled, timed out, cancel_all()) until the server
   * reaches and skips them. Not the messages being handled, invocations
   * the handler holds, senders waiting for room or for a rate-limit token,
   * or control messages (a shutdown, a cancel_all()). Not notified; read
   * it when you need it.
   *
   * Since: 1.0
   */
  properties[PROP_PENDING] =
    g_param_spec_uint ("pending", NULL, NULL,
                       0, G_MAXUINT, 0,
                       (G_PARAM_READABLE |
                        G_PARAM_EXPLICIT_NOTIFY |
                        G_PARAM_STATIC_STRINGS));

  /**
   * SparkModuleServer:metrics-interval:
   *
   * How often, at most, the metrics properties are notified, in
   * milliseconds: 100 (ten times a second) by default. A notification
   * comes only when something changed, on the owner context, so that
   * g_object_bind_property() to a widget works whatever thread the traffic
   * comes from. 0 turns metrics off: nothing is counted or timed (the
   * counters keep their values), for the last percent of throughput. May
   * be set at any time, from the thread that owns the server; it takes
   * effect from the server's next batch.
   *
   * Since: 1.0
   */
  properties[PROP_METRICS_INTERVAL] =
    g_param_spec_uint ("metrics-interval", NULL, NULL,
                       0, G_MAXINT, 100,
                       (G_PARAM_READWRITE |
                        G_PARAM_EXPLICIT_NOTIFY |
                        G_PARAM_STATIC_STRINGS));

  /**
   * SparkModuleServer:metrics:
   *
   * A snapshot of every metric, as [method@Spark.ModuleServer.get_metrics]
   * returns it. Notified (with the metrics that changed) at most once per
   * [property@Spark.ModuleServer:metrics-interval].
   *
   * Since: 1.0
   */
  properties[PROP_METRICS] =
    g_param_spec_variant ("metrics", NULL, NULL,
                          G_VARIANT_TYPE_VARDICT, NULL,
                          (G_PARAM_READABLE |
                           G_PARAM_EXPLICIT_NOTIFY |
                           G_PARAM_STATIC_STRINGS));

#define METRIC_UINT64(prop, name, doc) \
  properties[prop] = g_param_spec_uint64 (name, NULL, NULL, 0, G_MAXUINT64, 0, \
                                          (G_PARAM_READABLE | G_PARAM_EXPLICIT_NOTIFY | \
                                           G_PARAM_STATIC_STRINGS))

  /**
   * SparkModuleServer:handled:
   *
   * How many messages the handler was given: requests and commands,
   * including those that failed; not those that ended while queued. A
   * metric: notified at most once per
   * [property@Spark.ModuleServer:metrics-interval], on the owner context.
   *
   * Since: 1.0
   */
  METRIC_UINT64 (PROP_HANDLED, "handled", NULL);

  /**
   * SparkModuleServer:failed:
   *
   * How many handled messages failed: requests whose handler returned an
   * error (or a reply of the wrong type, or none), and commands whose
   * handler failed. A metric, notified like
   * [property@Spark.ModuleServer:handled].
   *
   * Since: 1.0
   */
  METRIC_UINT64 (PROP_FAILED, "failed", NULL);

  /**
   * SparkModuleServer:cancelled:
   *
   * How many requests were cancelled (their cancellable, or
   * [method@Spark.Dispatcher.cancel_all]) before their handler replied,
   * while queued or while handled. A metric, notified like
   * [property@Spark.ModuleServer:handled].
   *
   * Since: 1.0
   */
  METRIC_UINT64 (PROP_CANCELLED, "cancelled", NULL);

  /**
   * SparkModuleServer:timed-out:
   *
   * How many requests timed out before their handler replied. A metric,
   * notified like [property@Spark.ModuleServer:handled].
   *
   * Since: 1.0
   */
  METRIC_UINT64 (PROP_TIMED_OUT, "timed-out", NULL);

  /**
   * SparkModuleServer:dropped:
   *
   * How many messages the [property@Spark.ModuleServer:overflow] policy
   * dropped: commands and requests. A metric, notified like
   * [property@Spark.ModuleServer:handled].
   *
   * Since: 1.0
   */
  METRIC_UINT64 (PROP_DROPPED, "dropped", NULL);

  /**
   * SparkModuleServer:pending-high-water:
   *
   * The most messages [property@Spark.ModuleServer:pending] has counted at
   * once. A metric, notified like [property@Spark.ModuleServer:handled].
   *
   * Since: 1.0
   */
  properties[PROP_PENDING_HIGH_WATER] =
    g_param_spec_uint ("pending-high-water", NULL, NULL,
                       0, G_MAXUINT, 0,
                       (G_PARAM_READABLE |
                        G_PARAM_EXPLICIT_NOTIFY |
                        G_PARAM_STATIC_STRINGS));

  /**
   * SparkModuleServer:queue-time-mean:
   *
   * How long requests waited in the mailbox before their handler started,
   * on average, in microseconds. Sampled: one request in 8 of each sending
   * thread carries the time it was sent. A metric, notified like
   * [property@Spark.ModuleServer:handled].
   *
   * Since: 1.0
   */
  METRIC_UINT64 (PROP_QUEUE_TIME_MEAN, "queue-time-mean", NULL);

  /**
   * SparkModuleServer:queue-time-max:
   *
   * The longest a sampled request waited in the mailbox, in microseconds
   * (see [property@Spark.ModuleServer:queue-time-mean]).
   *
   * Since: 1.0
   */
  METRIC_UINT64 (PROP_QUEUE_TIME_MAX, "queue-time-max", NULL);

  /**
   * SparkModuleServer:handler-time-mean:
   *
   * How long the handler took per message, on average, in microseconds:
   * from the call to its return (an invocation completed later counts
   * until handle_invocation() returned). Sampled: one message in 8, and
   * every request whose queue time is measured. A metric, notified like
   * [property@Spark.ModuleServer:handled].
   *
   * Since: 1.0
   */
  METRIC_UINT64 (PROP_HANDLER_TIME_MEAN, "handler-time-mean", NULL);

  /**
   * SparkModuleServer:handler-time-max:
   *
   * The longest a sampled handler call took, in microseconds (see
   * [property@Spark.ModuleServer:handler-time-mean]).
   *
   * Since: 1.0
   */
  METRIC_UINT64 (PROP_HANDLER_TIME_MAX, "handler-time-max", NULL);
#undef METRIC_UINT64

  g_object_class_install_properties (object_class, N_PROPS, properties);

  /**
   * SparkModuleServer::command-failed:
   * @self: the server
   * @name: the command's name
   * @parameters: (nullable): the command's parameters
   * @error: what the handler reported
   *
   * Emitted on the owner context when the handler failed a command. The
   * error never reaches the command's sender. The failure is also logged in
   * the `SparkChannel` domain when it happens: as a warning when no handler
   * is connected to this signal at that moment, as debug otherwise.
   *
   * Since: 1.0
   */
  signals[COMMAND_FAILED] =
    g_signal_new ("command-failed",
                  G_TYPE_FROM_CLASS (klass),
                  G_SIGNAL_RUN_LAST,
                  0,
                  NULL, NULL,
                  NULL,
                  G_TYPE_NONE, 3,
                  G_TYPE_STRING | G_SIGNAL_TYPE_STATIC_SCOPE,
                  G_TYPE_VARIANT,
                  G_TYPE_ERROR);

  /**
   * SparkModuleServer::messages-dropped:
   * @self: the server
   * @count: how many commands were dropped since the last emission
   *
   * Emitted on the owner context when the
   * [property@Spark.ModuleServer:overflow] policy dropped commands (a
   * dropped, or superseded, one of the newest or oldest; a coalesced one):
   * at most ten times a second, with the count since the last emission.
   * Dropped requests are not counted here: each completes with
   * %SPARK_CHANNEL_ERROR_DROPPED.
   *
   * Since: 1.0
   */
  signals[MESSAGES_DROPPED] =
    g_signal_new ("messages-dropped",
                  G_TYPE_FROM_CLASS (klass),
                  G_SIGNAL_RUN_LAST,
                  0,
                  NULL, NULL,
                  NULL,
                  G_TYPE_NONE, 1,
                  G_TYPE_UINT);
}

static void
spark_module_server_init (SparkModuleServer *self)
{
  g_mutex_init (&self->state_mutex);
  self->mailbox = spark_mailbox_new ();
  self->max_invocations = 1;
  self->n_workers_set = 1;
  self->metrics_interval = 100;
  g_mutex_init (&self->metrics_mutex);
}

/* API ------------------------------------------------------------------------ */

/**
 * spark_module_server_new:
 * @handler: the handler to run
 *
 * Makes a server for @handler. It handles nothing until it is started with
 * [method@Spark.ModuleServer.start] or
 * [method@Spark.ModuleServer.start_in_thread]; until then, messages sent to
 * it fail with %SPARK_CHANNEL_ERROR_CLOSED.
 *
 * May be called from any thread.
 *
 * Returns: (transfer full): a new server
 *
 * Since: 1.0
 */
SparkModuleServer *
spark_module_server_new (SparkHandler *handler)
{
  g_return_val_if_fail (SPARK_IS_HANDLER (handler), NULL);

  return g_object_new (SPARK_TYPE_MODULE_SERVER,
                       "handler", handler,
                       NULL);
}

/**
 * spark_module_server_get_handler:
 * @self: a [class@Spark.ModuleServer]
 *
 * The handler the server runs. May be called from any thread.
 *
 * Returns: (transfer none): the handler
 *
 * Since: 1.0
 */
SparkHandler *
spark_module_server_get_handler (SparkModuleServer *self)
{
  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), NULL);

  return self->handler;
}

/**
 * spark_module_server_get_name:
 * @self: a [class@Spark.ModuleServer]
 *
 * The server's name. Call it from the thread that owns the server.
 *
 * Returns: (nullable): the name, or %NULL if none was set
 *
 * Since: 1.0
 */
const char *
spark_module_server_get_name (SparkModuleServer *self)
{
  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), NULL);

  return self->name;
}

/**
 * spark_module_server_set_name:
 * @self: a [class@Spark.ModuleServer]
 * @name: (nullable): the new name
 *
 * Names the server, in log messages and for its thread. Call it from the
 * thread that owns the server, before starting it for the thread's name to
 * follow.
 *
 * Since: 1.0
 */
void
spark_module_server_set_name (SparkModuleServer *self,
                              const char        *name)
{
  g_return_if_fail (SPARK_IS_MODULE_SERVER (self));

  if (g_strcmp0 (self->name, name) != 0)
    {
      g_free (self->name);
      self->name = g_strdup (name);
      g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_NAME]);
    }
}

/* Settings that start freezes: changing one afterwards is a programmer
 * error. Returns TRUE (after a critical) if the server has started. */
static gboolean
refuse_after_start (SparkModuleServer *self,
                    const char        *property)
{
  gboolean started;

  g_mutex_lock (&self->state_mutex);
  started = self->started;
  g_mutex_unlock (&self->state_mutex);

  if (started)
    g_critical ("The %s of module server “%s” cannot change once it has started",
                property, self->name ? self->name : "");

  return started;
}

/**
 * spark_module_server_get_capacity:
 * @self: a [class@Spark.ModuleServer]
 *
 * The mailbox's capacity. Call it from the thread that owns the server.
 *
 * Returns: the capacity, 0 for unbounded
 *
 * Since: 1.0
 */
guint
spark_module_server_get_capacity (SparkModuleServer *self)
{
  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), 0);

  return self->capacity;
}

/**
 * spark_module_server_set_capacity:
 * @self: a [class@Spark.ModuleServer]
 * @capacity: how many messages the mailbox holds, 0 for unbounded
 *
 * Bounds the mailbox. When it is full, [method@Spark.Dispatcher.try_send_command]
 * fails with %SPARK_CHANNEL_ERROR_FULL, blocking sends wait and
 * asynchronous sends wait asynchronously, first come first served.
 *
 * Only before the server starts: afterwards it is a programmer error
 * (a critical) and the call is ignored. Call it from the thread that owns
 * the server.
 *
 * Since: 1.0
 */
void
spark_module_server_set_capacity (SparkModuleServer *self,
                                  guint              capacity)
{
  g_return_if_fail (SPARK_IS_MODULE_SERVER (self));
  g_return_if_fail (capacity <= G_MAXINT);

  if (refuse_after_start (self, "capacity"))
    return;

  if (self->capacity != capacity)
    {
      self->capacity = capacity;
      g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_CAPACITY]);
    }
}

/**
 * spark_module_server_get_overflow:
 * @self: a [class@Spark.ModuleServer]
 *
 * Gets [property@Spark.ModuleServer:overflow].
 *
 * Returns: the policy
 *
 * Since: 1.0
 */
SparkOverflowPolicy
spark_module_server_get_overflow (SparkModuleServer *self)
{
  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), SPARK_OVERFLOW_WAIT);

  return self->overflow;
}

/**
 * spark_module_server_set_overflow:
 * @self: a [class@Spark.ModuleServer]
 * @overflow: what a full mailbox does with a new message
 *
 * Sets [property@Spark.ModuleServer:overflow]. Call it before the server
 * starts, from the thread that owns it; afterwards it is a programmer
 * error (a critical) and the call is ignored.
 *
 * Since: 1.0
 */
void
spark_module_server_set_overflow (SparkModuleServer   *self,
                                  SparkOverflowPolicy  overflow)
{
  g_return_if_fail (SPARK_IS_MODULE_SERVER (self));
  g_return_if_fail (overflow >= SPARK_OVERFLOW_WAIT && overflow <= SPARK_OVERFLOW_COALESCE_KEY);

  if (refuse_after_start (self, "overflow"))
    return;

  if (self->overflow != overflow)
    {
      self->overflow = overflow;
      g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_OVERFLOW]);
    }
}

/**
 * spark_module_server_get_max_invocations:
 * @self: a [class@Spark.ModuleServer]
 *
 * How many invocations the handler may hold at once. Call it from the
 * thread that owns the server.
 *
 * Returns: the limit, 1 or more
 *
 * Since: 1.0
 */
guint
spark_module_server_get_max_invocations (SparkModuleServer *self)
{
  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), 1);

  return self->max_invocations;
}

/**
 * spark_module_server_set_max_invocations:
 * @self: a [class@Spark.ModuleServer]
 * @max_invocations: how many invocations the handler may hold at once, 1
 *   or more
 *
 * Sets [property@Spark.ModuleServer:max-invocations]. Call it before the
 * server starts, from the thread that owns it; afterwards it is a
 * programmer error (a critical) and the call is ignored.
 *
 * Since: 1.0
 */
void
spark_module_server_set_max_invocations (SparkModuleServer *self,
                                         guint              max_invocations)
{
  g_return_if_fail (SPARK_IS_MODULE_SERVER (self));
  g_return_if_fail (max_invocations >= 1 && max_invocations <= G_MAXINT);

  if (refuse_after_start (self, "max-invocations"))
    return;

  if (self->max_invocations != max_invocations)
    {
      self->max_invocations = max_invocations;
      g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_MAX_INVOCATIONS]);
    }
}

/**
 * spark_module_server_get_workers:
 * @self: a [class@Spark.ModuleServer]
 *
 * Gets [property@Spark.ModuleServer:workers]. Call it from the thread that
 * owns the server.
 *
 * Returns: how many workers the server has, or will have once started
 *
 * Since: 1.0
 */
guint
spark_module_server_get_workers (SparkModuleServer *self)
{
  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), 1);

  return self->n_workers_set;
}

/**
 * spark_module_server_set_workers:
 * @self: a [class@Spark.ModuleServer]
 * @workers: how many threads handle messages, 1 to 64
 *
 * Sets [property@Spark.ModuleServer:workers]. Call it before the server
 * starts, from the thread that owns it; afterwards it is a programmer
 * error (a critical) and the call is ignored.
 *
 * Since: 1.0
 */
void
spark_module_server_set_workers (SparkModuleServer *self,
                                 guint              workers)
{
  g_return_if_fail (SPARK_IS_MODULE_SERVER (self));
  g_return_if_fail (workers >= 1 && workers <= SPARK_MAILBOX_MAX_CONSUMERS);

  if (refuse_after_start (self, "workers"))
    return;

  if (self->n_workers_set != workers)
    {
      self->n_workers_set = workers;
      g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_WORKERS]);
    }
}

/**
 * spark_module_server_get_ordering:
 * @self: a [class@Spark.ModuleServer]
 *
 * Gets [property@Spark.ModuleServer:ordering].
 *
 * Returns: the ordering
 *
 * Since: 1.0
 */
SparkOrdering
spark_module_server_get_ordering (SparkModuleServer *self)
{
  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), SPARK_ORDERING_NONE);

  return self->ordering;
}

/**
 * spark_module_server_set_ordering:
 * @self: a [class@Spark.ModuleServer]
 * @ordering: how a pool keeps related messages in order
 *
 * Sets [property@Spark.ModuleServer:ordering]. Call it before the server
 * starts, from the thread that owns it; afterwards it is a programmer
 * error (a critical) and the call is ignored.
 *
 * Since: 1.0
 */
void
spark_module_server_set_ordering (SparkModuleServer *self,
                                  SparkOrdering      ordering)
{
  g_return_if_fail (SPARK_IS_MODULE_SERVER (self));
  g_return_if_fail (ordering >= SPARK_ORDERING_NONE && ordering <= SPARK_ORDERING_KEY);

  if (refuse_after_start (self, "ordering"))
    return;

  if (self->ordering != ordering)
    {
      self->ordering = ordering;
      g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_ORDERING]);
    }
}

/**
 * spark_module_server_get_running:
 * @self: a [class@Spark.ModuleServer]
 *
 * Whether the server has started and has not yet stopped. May be called
 * from any thread.
 *
 * Returns: %TRUE while the server runs
 *
 * Since: 1.0
 */
gboolean
spark_module_server_get_running (SparkModuleServer *self)
{
  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), FALSE);

  return g_atomic_int_get (&self->running);
}

/**
 * spark_module_server_get_pending:
 * @self: a [class@Spark.ModuleServer]
 *
 * How many messages count against the capacity now: see
 * [property@Spark.ModuleServer:pending]. May be called from any thread.
 *
 * Returns: the number of queued messages
 *
 * Since: 1.0
 */
guint
spark_module_server_get_pending (SparkModuleServer *self)
{
  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), 0);

  return spark_mailbox_get_pending (self->mailbox);
}

/**
 * spark_module_server_get_metrics_interval:
 * @self: a [class@Spark.ModuleServer]
 *
 * Gets [property@Spark.ModuleServer:metrics-interval]. May be called from
 * any thread.
 *
 * Returns: milliseconds, 0 when metrics are off
 *
 * Since: 1.0
 */
guint
spark_module_server_get_metrics_interval (SparkModuleServer *self)
{
  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), 0);

  return (guint) g_atomic_int_get (&self->metrics_interval);
}

/**
 * spark_module_server_set_metrics_interval:
 * @self: a [class@Spark.ModuleServer]
 * @interval_msec: the least time between two notifications of the metrics,
 *   in milliseconds; 0 turns metrics off
 *
 * Sets [property@Spark.ModuleServer:metrics-interval]. Call it from the
 * thread that owns the server.
 *
 * Since: 1.0
 */
void
spark_module_server_set_metrics_interval (SparkModuleServer *self,
                                          guint              interval_msec)
{
  g_return_if_fail (SPARK_IS_MODULE_SERVER (self));
  g_return_if_fail (interval_msec <= G_MAXINT);

  if ((guint) g_atomic_int_exchange (&self->metrics_interval, (gint) interval_msec) != interval_msec)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_METRICS_INTERVAL]);
}

/**
 * spark_module_server_get_metrics:
 * @self: a [class@Spark.ModuleServer]
 *
 * A snapshot of what the server has done, as a dictionary (`a{sv}`):
 *
 * - `handled`, `failed`, `cancelled`, `timed-out`, `dropped` (uint64): the
 *   counters of the properties of those names;
 * - `pending` (uint32): [property@Spark.ModuleServer:pending] now, and
 *   `pending-high-water` (uint32), the most it has been;
 * - `queue-time-mean`, `queue-time-max`, `handler-time-mean`,
 *   `handler-time-max` (uint64, µs), and `queue-time-samples`,
 *   `handler-time-samples` (uint64): how many measures they are made of
 *   (see [property@Spark.ModuleServer:queue-time-mean]);
 * - `workers` (uint32);
 * - `routes` (`a{sa{sv}}`), for a server whose handler is a
 *   [class@Spark.Router]: [method@Spark.Router.get_metrics].
 *
 * Each worker publishes its counts once per batch it handles, so a
 * snapshot taken while messages are handled may lag by a batch.
 *
 * May be called from any thread.
 *
 * Returns: (transfer full): the metrics, a new non-floating dictionary
 *
 * Since: 1.0
 */
GVariant *
spark_module_server_get_metrics (SparkModuleServer *self)
{
  SparkServerCounts counts;
  GVariantBuilder builder;

  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), NULL);

  spark_module_server_get_counts (self, &counts);

  g_variant_builder_init (&builder, G_VARIANT_TYPE_VARDICT);
#define ADD_U64(key, v) g_variant_builder_add (&builder, "{sv}", key, g_variant_new_uint64 (v))
  ADD_U64 ("handled", counts.handled);
  ADD_U64 ("failed", counts.failed);
  ADD_U64 ("cancelled", counts.cancelled);
  ADD_U64 ("timed-out", counts.timed_out);
  ADD_U64 ("dropped", spark_module_server_get_dropped (self));
  ADD_U64 ("queue-time-mean", mean_of (counts.queue_sum, counts.queue_n));
  ADD_U64 ("queue-time-max", counts.queue_max);
  ADD_U64 ("queue-time-samples", counts.queue_n);
  ADD_U64 ("handler-time-mean", mean_of (counts.handler_sum, counts.handler_n));
  ADD_U64 ("handler-time-max", counts.handler_max);
  ADD_U64 ("handler-time-samples", counts.handler_n);
#undef ADD_U64
  g_variant_builder_add (&builder, "{sv}", "pending",
                         g_variant_new_uint32 (spark_module_server_get_pending (self)));
  g_variant_builder_add (&builder, "{sv}", "pending-high-water",
                         g_variant_new_uint32 (spark_mailbox_get_pending_high (self->mailbox)));
  g_variant_builder_add (&builder, "{sv}", "workers", g_variant_new_uint32 (self->n_workers_set));
  if (SPARK_IS_ROUTER (self->handler))
    {
      g_autoptr(GVariant) routes = spark_router_get_metrics (SPARK_ROUTER (self->handler));

      g_variant_builder_add (&builder, "{sv}", "routes", routes);
    }

  return g_variant_ref_sink (g_variant_builder_end (&builder));
}

/* The router's per-route flow control, for the mailbox (under its lock). */
static gconstpointer
server_route_of (gpointer             data,
                 const char          *name,
                 SparkOverflowPolicy *overflow,
                 gboolean            *has_overflow)
{
  SparkModuleServer *self = data;
  SparkRoute *route = spark_router_find (self->router, name);

  *has_overflow = spark_route_get_overflow (route, overflow);
  if (route != NULL)
    spark_route_unref (route);

  /* An identity: the router keeps its routes while they route. */
  return route;
}

static void
server_dropped (gpointer    data,
                const char *name)
{
  SparkModuleServer *self = data;
  SparkRoute *route = spark_router_find (self->router, name);

  spark_route_count (route, SPARK_ROUTE_COUNT_DROPPED);
  if (route != NULL)
    spark_route_unref (route);
}

static gboolean
server_ordering_of (gpointer       data,
                    guint          consumer,
                    const char    *name,
                    SparkOrdering *ordering)
{
  SparkModuleServer *self = data;

  /* On the consumer's thread: its own route cache. */
  return spark_route_get_ordering (spark_router_find_cached (self->router,
                                                             &self->workers[consumer].route_cache, name),
                                   ordering);
}

/* Linux refuses thread names longer than 15 bytes (and GLib then leaves
 * the process's name): keep as much of the server's name as fits, whole
 * UTF-8 characters only, with a pool worker's number after it. */
static char *
spark_module_server_dup_thread_name (SparkModuleServer *self,
                                     guint              worker)
{
  const char *name = self->name != NULL && *self->name != '\0' ? self->name : "spark-server";
  g_autofree char *suffix = self->pool ? g_strdup_printf ("/%u", worker) : g_strdup ("");
  gsize room = 15 - strlen (suffix);
  const char *end = name;

  while (*end != '\0')
    {
      const char *next = g_utf8_next_char (end);

      if ((gsize) (next - name) > room)
        break;
      end = next;
    }

  return g_strdup_printf ("%.*s%s", (int) (end - name), name, suffix);
}

static void
spark_module_server_clear_workers (SparkModuleServer *self)
{
  for (guint i = 0; i < self->n_workers; i++)
    {
      SparkServerWorker *worker = &self->workers[i];

      g_source_destroy (worker->source);
      g_source_unref (worker->source);
      g_main_context_unref (worker->context);
      g_ptr_array_unref (worker->held);
    }
  g_clear_pointer (&self->workers, g_free);
  self->n_workers = 0;
  self->pool = FALSE;
}

static gboolean
spark_module_server_start_internal (SparkModuleServer  *self,
                                    GMainContext       *context,
                                    gboolean            own_thread,
                                    GError            **error)
{
  GSource *sources[SPARK_MAILBOX_MAX_CONSUMERS];
  GMainContext *contexts[SPARK_MAILBOX_MAX_CONSUMERS];
  guint n_workers = self->n_workers_set;

  g_mutex_lock (&self->state_mutex);

  if (self->started)
    {
      g_mutex_unlock (&self->state_mutex);
      g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_ALREADY_STARTED,
                   "The module server “%s” was started before",
                   self->name ? self->name : "");
      return FALSE;
    }

  if (n_workers > 1 && !own_thread)
    {
      g_mutex_unlock (&self->state_mutex);
      g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                   "The module server “%s” has %u workers, which run on threads of their own: "
                   "start it with spark_module_server_start_in_thread()",
                   self->name ? self->name : "", n_workers);
      return FALSE;
    }

  if (n_workers > 1 &&
      (spark_handler_get_flags (self->handler) & SPARK_HANDLER_FLAGS_CONCURRENT) == 0)
    {
      g_mutex_unlock (&self->state_mutex);
      g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                   "The module server “%s” has %u workers, but its handler %s does not declare "
                   "SPARK_HANDLER_FLAGS_CONCURRENT: it may not be called from several threads at once",
                   self->name ? self->name : "", n_workers, G_OBJECT_TYPE_NAME (self->handler));
      return FALSE;
    }

  /* Everything the workers' dispatch and their stop need is set before the
   * mailbox opens: from then on, a context iterated by another thread may
   * handle (and even stop) at once. */
  self->own_thread = own_thread;
  self->n_workers = n_workers;
  self->pool = n_workers > 1;
  self->workers = g_new0 (SparkServerWorker, n_workers);
  for (guint i = 0; i < n_workers; i++)
    {
      SparkServerWorker *worker = &self->workers[i];

      worker->server = self;
      worker->index = i;
      worker->held = g_ptr_array_new ();
      worker->context = i == 0 ? g_main_context_ref (context) : g_main_context_new ();
      worker->source = spark_wake_source_new (sizeof (SparkServerSource), spark_server_source_dispatch,
                                              NULL, self->pool ? "[spark] module server worker"
                                                               : "[spark] module server");
      ((SparkServerSource *) worker->source)->worker = worker;
      sources[i] = worker->source;
      contexts[i] = worker->context;
    }
  self->owner_context = g_main_context_ref_thread_default ();
  self->uses_invocation = spark_handler_uses_invocation (self->handler);
  self->guard_python = spark_handler_is_python (self->handler);
  self->router = SPARK_IS_ROUTER (self->handler) ? SPARK_ROUTER (self->handler) : NULL;
  self->routes.data = self;
  self->routes.route_of = server_route_of;
  self->routes.ordering_of = server_ordering_of;
  self->routes.dropped = server_dropped;
  self->iface = SPARK_HANDLER_GET_IFACE (self->handler);
  g_atomic_int_set (&self->n_serving, (gint) n_workers);
  g_atomic_int_set (&self->n_alive, (gint) n_workers);
  g_atomic_int_set (&self->running, TRUE);
  /* Held until the server has stopped and the owner side has finished. */
  g_object_ref (self);

  /* Attached before the mailbox opens, so that the first sender's wakeup
   * reaches its context. Nothing dispatches them before a message comes. */
  for (guint i = 0; i < n_workers; i++)
    spark_wake_source_attach ((SparkWakeSource *) self->workers[i].source, self->workers[i].context);

  if (!spark_mailbox_open (self->mailbox, n_workers, sources, contexts,
                           own_thread ? NULL : g_thread_self (),
                           self->capacity, self->overflow, self->ordering,
                           self->router != NULL ? &self->routes : NULL, error))
    {
      spark_module_server_clear_workers (self);
      g_clear_pointer (&self->owner_context, g_main_context_unref);
      self->iface = NULL;
      self->router = NULL;
      g_atomic_int_set (&self->running, FALSE);
      g_mutex_unlock (&self->state_mutex);
      g_object_unref (self);
      return FALSE;
    }

  self->started = TRUE;

  if (own_thread)
    {
      for (guint i = 0; i < n_workers; i++)
        {
          g_autofree char *thread_name = spark_module_server_dup_thread_name (self, i);

          self->workers[i].thread = g_thread_new (thread_name, spark_server_worker_thread_func,
                                                  &self->workers[i]);
        }
    }

  g_mutex_unlock (&self->state_mutex);

  spark_module_server_invoke_owner (self, notify_running, NULL, NULL);

  return TRUE;
}

static gboolean
spark_module_server_refuse_main_only (SparkModuleServer  *self,
                                      GError            **error)
{
  if (self->n_workers_set > 1)
    g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                 "The handler %s is written in JavaScript, which GJS runs only on its main "
                 "thread: it cannot be served by %u workers (set workers to 1, and start "
                 "its server with spark_module_server_start() on the global default main context)",
                 G_OBJECT_TYPE_NAME (self->handler), self->n_workers_set);
  else
    g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                 "The handler %s is written in JavaScript, which GJS runs only on its main "
                 "thread: start its server with spark_module_server_start() on the global "
                 "default main context",
                 G_OBJECT_TYPE_NAME (self->handler));
  return FALSE;
}

/**
 * spark_module_server_start:
 * @self: a [class@Spark.ModuleServer]
 * @context: (nullable): where to run the handler, or %NULL for the calling
 *   thread's thread-default main context
 * @error: return location for an error
 *
 * Starts serving on @context: the handler runs there, whenever that
 * context is iterated. The calling thread's thread-default context becomes
 * the server's owner context, where its signals and notifications are
 * emitted.
 *
 * Blocking calls to this server ([method@Spark.Dispatcher.request_sync],
 * [method@Spark.Dispatcher.send_command] when it must wait) made on the
 * calling thread, or on a thread that owns @context, fail with
 * %SPARK_CHANNEL_ERROR_WOULD_DEADLOCK.
 *
 * Fails with %SPARK_CHANNEL_ERROR_ALREADY_STARTED if the server was started
 * before, with %SPARK_CHANNEL_ERROR_CLOSED if it was shut down before it
 * ever started, and with %SPARK_CHANNEL_ERROR_NOT_SUPPORTED if its handler
 * is written in JavaScript and @context is not the global default context.
 * A refused start does not count as a start.
 *
 * May be called from any thread.
 *
 * Returns: %TRUE if the server started
 *
 * Since: 1.0
 */
gboolean
spark_module_server_start (SparkModuleServer  *self,
                           GMainContext       *context,
                           GError            **error)
{
  g_autoptr(GMainContext) target = NULL;

  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), FALSE);
  g_return_val_if_fail (self->handler != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  target = context ? g_main_context_ref (context) : g_main_context_ref_thread_default ();

  /* A pool of JavaScript is refused as JavaScript: no start can serve it. */
  if (spark_handler_is_main_only (self->handler) &&
      (target != g_main_context_default () || self->n_workers_set > 1))
    return spark_module_server_refuse_main_only (self, error);

  return spark_module_server_start_internal (self, target, FALSE, error);
}

/**
 * spark_module_server_start_in_thread:
 * @self: a [class@Spark.ModuleServer]
 * @error: return location for an error
 *
 * Starts serving on a new thread, named after
 * [property@Spark.ModuleServer:name], with a main context of its own that
 * is the thread-default context of every handler call. The calling
 * thread's thread-default context becomes the server's owner context.
 *
 * Fails like [method@Spark.ModuleServer.start]; a handler written in
 * JavaScript always fails with %SPARK_CHANNEL_ERROR_NOT_SUPPORTED.
 *
 * May be called from any thread.
 *
 * Returns: %TRUE if the server started
 *
 * Since: 1.0
 */
gboolean
spark_module_server_start_in_thread (SparkModuleServer  *self,
                                     GError            **error)
{
  g_autoptr(GMainContext) context = NULL;

  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), FALSE);
  g_return_val_if_fail (self->handler != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (spark_handler_is_main_only (self->handler))
    return spark_module_server_refuse_main_only (self, error);

  context = g_main_context_new ();

  return spark_module_server_start_internal (self, context, TRUE, error);
}

/**
 * spark_module_server_create_dispatcher:
 * @self: a [class@Spark.ModuleServer]
 *
 * Makes a dispatcher that sends messages to this server. Any number of
 * dispatchers may serve one server, and each may be used from any thread.
 * A dispatcher does not keep the server alive; once the server has shut
 * down, its sends fail with %SPARK_CHANNEL_ERROR_CLOSED.
 *
 * May be called from any thread.
 *
 * Returns: (transfer full): a new dispatcher
 *
 * Since: 1.0
 */
SparkDispatcher *
spark_module_server_create_dispatcher (SparkModuleServer *self)
{
  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), NULL);

  return spark_dispatcher_new (spark_mailbox_get_transport (self->mailbox));
}

static gboolean
shutdown_wait_cancelled_cb (GCancellable *cancellable,
                            gpointer      data)
{
  GTask *task = data;
  SparkModuleServer *self = g_task_get_source_object (task);
  ShutdownWait *found = NULL;

  g_mutex_lock (&self->state_mutex);
  for (GSList *l = self->shutdown_waits; l != NULL; l = l->next)
    {
      ShutdownWait *wait = l->data;

      if (wait->task == task)
        {
          found = wait;
          self->shutdown_waits = g_slist_delete_link (self->shutdown_waits, l);
          break;
        }
    }
  g_mutex_unlock (&self->state_mutex);

  if (found != NULL)
    {
      g_task_return_new_error (found->task, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                               "Waiting for the module server to stop was cancelled; "
                               "the shutdown goes on");
      shutdown_wait_free (found);
    }

  return G_SOURCE_REMOVE;
}

/**
 * spark_module_server_shutdown_async:
 * @self: a [class@Spark.ModuleServer]
 * @mode: how to stop
 * @cancellable: (nullable): abandons the wait (not the shutdown)
 * @callback: (scope async) (closure user_data): called once the server has
 *   stopped
 * @user_data: data for @callback
 *
 * Stops the server. Both modes close the mailbox at once: later sends, and
 * senders still waiting for room, fail with %SPARK_CHANNEL_ERROR_CLOSED.
 * %SPARK_SHUTDOWN_MODE_DRAIN then handles everything already queued;
 * %SPARK_SHUTDOWN_MODE_ABORT fails queued requests and a request whose
 * invocation is still held with %SPARK_CHANNEL_ERROR_CLOSED, drops queued
 * commands, and cancels the running handler's cancellable (a synchronous
 * handler that ignores it runs to its end: the server stops when it
 * returns).
 *
 * @callback runs on the caller's thread-default main context once the
 * server has stopped (its thread, if it has one, has ended) and its owner
 * context has been iterated; on a server never started or already
 * stopped, it runs at once (in a later iteration) with %TRUE. Called on
 * the server's own thread (from its handler), @callback runs on that
 * thread once the server has stopped, before the thread ends. Cancelling
 * @cancellable only abandons the wait, with %G_IO_ERROR_CANCELLED.
 *
 * May be called from any thread.
 *
 * Since: 1.0
 */
void
spark_module_server_shutdown_async (SparkModuleServer   *self,
                                    SparkShutdownMode    mode,
                                    GCancellable        *cancellable,
                                    GAsyncReadyCallback  callback,
                                    gpointer             user_data)
{
  g_autoptr(GTask) task = NULL;
  gboolean wait;

  g_return_if_fail (SPARK_IS_MODULE_SERVER (self));
  g_return_if_fail (mode == SPARK_SHUTDOWN_MODE_DRAIN || mode == SPARK_SHUTDOWN_MODE_ABORT);
  g_return_if_fail (!cancellable || G_IS_CANCELLABLE (cancellable));

  task = g_task_new (self, cancellable, callback, user_data);
  g_task_set_source_tag (task, spark_module_server_shutdown_async);
  g_task_set_name (task, "[spark] module server shutdown");
  /* The cancellable abandons a wait only: with nothing to wait for, the
   * answer is TRUE even if it is cancelled. */
  g_task_set_check_cancellable (task, FALSE);

  /* Done but not finished yet (the owner context was not iterated since):
   * finish here, so that this caller does not depend on that context. */
  {
    gboolean finished;

    return_waits (spark_module_server_reap (self, &finished));
  }

  g_mutex_lock (&self->state_mutex);
  wait = self->started && !self->finished;
  if (wait)
    {
      ShutdownWait *shutdown_wait = g_new0 (ShutdownWait, 1);

      shutdown_wait->task = g_object_ref (task);
      if (cancellable != NULL)
        {
          shutdown_wait->cancel_source = g_cancellable_source_new (cancellable);
          g_source_set_callback (shutdown_wait->cancel_source,
                                 G_SOURCE_FUNC (shutdown_wait_cancelled_cb),
                                 g_object_ref (task), g_object_unref);
          g_source_attach (shutdown_wait->cancel_source, g_task_get_context (task));
        }
      self->shutdown_waits = g_slist_prepend (self->shutdown_waits, shutdown_wait);
    }
  g_mutex_unlock (&self->state_mutex);

  spark_mailbox_close (self->mailbox, mode == SPARK_SHUTDOWN_MODE_ABORT);

  if (!wait)
    g_task_return_boolean (task, TRUE);
}

/**
 * spark_module_server_shutdown_finish:
 * @self: a [class@Spark.ModuleServer]
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Finishes [method@Spark.ModuleServer.shutdown_async]. Call it from the
 * callback, on the context where the callback runs.
 *
 * Returns: %TRUE once the server has stopped; %FALSE with
 *   %G_IO_ERROR_CANCELLED if the wait was abandoned
 *
 * Since: 1.0
 */
gboolean
spark_module_server_shutdown_finish (SparkModuleServer  *self,
                                     GAsyncResult       *result,
                                     GError            **error)
{
  g_return_val_if_fail (SPARK_IS_MODULE_SERVER (self), FALSE);
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == spark_module_server_shutdown_async, FALSE);

  return g_task_propagate_boolean (G_TASK (result), error);
}
