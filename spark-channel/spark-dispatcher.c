/* spark-dispatcher.c
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

/**
 * SparkDispatcher:
 *
 * Sends messages to a [class@Spark.ModuleServer]: requests that get a
 * reply, fire-and-forget commands, and the shutdown message.
 *
 * Make one with [method@Spark.ModuleServer.create_dispatcher]. Any number
 * of dispatchers may serve one server; each may be used from any thread.
 *
 * A message is a name and optional [struct@GLib.Variant] parameters, the
 * way GNOME names actions and D-Bus method calls. A floating `parameters`
 * is sunk on every path, error paths included.
 *
 * ## Requests
 *
 * - [method@Spark.Dispatcher.request_async] completes through a
 *   [iface@Gio.AsyncResult] on the thread-default main context of the
 *   caller at the time of the call (a GTK program gets its reply on the UI
 *   thread), never inside the call itself;
 * - [method@Spark.Dispatcher.request_full] is the same without an
 *   async-result object, for hot paths;
 * - [method@Spark.Dispatcher.request_sync] blocks the calling thread, which
 *   needs no main loop.
 *
 * Every request completes exactly once: with the handler's reply, the
 * handler's error (unchanged), or a %SPARK_CHANNEL_ERROR. A request whose
 * cancellable is cancelled before its outcome is delivered fails with
 * %G_IO_ERROR_CANCELLED. When the dispatcher has a
 * [property@Spark.Dispatcher:timeout], a request that gets no reply in
 * time fails with %SPARK_CHANNEL_ERROR_TIMED_OUT. Replies for one context
 * are delivered in batches: one wakeup of the context for many replies.
 *
 * ## Commands
 *
 * [method@Spark.Dispatcher.send_command] and its variants queue a message
 * whose handler's outcome never comes back: a failure is reported by
 * [signal@Spark.ModuleServer::command-failed]. The cancellable of a command
 * covers only its wait for room in a bounded mailbox.
 *
 * ## Backpressure
 *
 * With a bounded mailbox ([property@Spark.ModuleServer:capacity]),
 * [method@Spark.Dispatcher.try_send_command] fails with
 * %SPARK_CHANNEL_ERROR_FULL while the mailbox is full or others wait for
 * room; blocking calls wait, asynchronous calls wait asynchronously, first
 * come, first served. All waits can be cancelled.
 *
 * Blocking calls made on a thread that must itself serve the request fail
 * with %SPARK_CHANNEL_ERROR_WOULD_DEADLOCK instead of hanging.
 *
 * Since: 1.0
 */

#include "config.h"

#include "spark-async-result-private.h"
#include "spark-dispatcher-private.h"
#include "spark-enum-types.h"
#include "spark-error.h"

struct _SparkDispatcher
{
  GObject       parent_instance;

  SparkTransport *transport;   /* immutable; NULL for a dispatcher made without a server */
  gint          timeout;   /* atomic: milliseconds, <= 0 for none */
  gint          priority;  /* atomic: a SparkPriority */
  guint64       id;        /* immutable: its requests carry it, for cancel_all(); shared by
                            * the dispatchers with_priority() makes from it */

  /* The rate limit, a token bucket kept as the time its next token is
   * due (a virtual scheduler): each send reserves the next free slot, so
   * messages go in the order they were sent. @rate is read without the
   * lock (0, the default, keeps the bucket out of every send). */
  gint          rate;         /* atomic: messages per second, 0 for none */
  GMutex        rate_mutex;
  guint         burst;        /* rate_mutex: tokens at most; 0: as many as the rate */
  gdouble       next_due;     /* rate_mutex: monotonic µs when the bucket is empty again;
                               * 0: full */
  guint         n_throttled;  /* rate_mutex: asynchronous sends waiting on a context */
};

G_DEFINE_FINAL_TYPE (SparkDispatcher, spark_dispatcher, G_TYPE_OBJECT)

enum {
  PROP_0,
  PROP_TIMEOUT,
  PROP_PRIORITY,
  PROP_RATE_LIMIT,
  PROP_RATE_BURST,
  N_PROPS
};

static GParamSpec *properties[N_PROPS];

static void
spark_dispatcher_finalize (GObject *object)
{
  SparkDispatcher *self = SPARK_DISPATCHER (object);

  g_clear_pointer (&self->transport, spark_transport_unref);
  g_mutex_clear (&self->rate_mutex);

  G_OBJECT_CLASS (spark_dispatcher_parent_class)->finalize (object);
}

static void
spark_dispatcher_get_property (GObject    *object,
                               guint       prop_id,
                               GValue     *value,
                               GParamSpec *pspec)
{
  SparkDispatcher *self = SPARK_DISPATCHER (object);

  switch (prop_id)
    {
    case PROP_TIMEOUT:
      g_value_set_int (value, spark_dispatcher_get_timeout (self));
      break;

    case PROP_PRIORITY:
      g_value_set_enum (value, spark_dispatcher_get_priority (self));
      break;

    case PROP_RATE_LIMIT:
      g_value_set_uint (value, spark_dispatcher_get_rate_limit (self));
      break;

    case PROP_RATE_BURST:
      g_value_set_uint (value, spark_dispatcher_get_rate_burst (self));
      break;

    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
spark_dispatcher_set_property (GObject      *object,
                               guint         prop_id,
                               const GValue *value,
                               GParamSpec   *pspec)
{
  SparkDispatcher *self = SPARK_DISPATCHER (object);

  switch (prop_id)
    {
    case PROP_TIMEOUT:
      spark_dispatcher_set_timeout (self, g_value_get_int (value));
      break;

    case PROP_PRIORITY:
      spark_dispatcher_set_priority (self, g_value_get_enum (value));
      break;

    case PROP_RATE_LIMIT:
      spark_dispatcher_set_rate_limit (self, g_value_get_uint (value));
      break;

    case PROP_RATE_BURST:
      spark_dispatcher_set_rate_burst (self, g_value_get_uint (value));
      break;

    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
spark_dispatcher_class_init (SparkDispatcherClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->finalize = spark_dispatcher_finalize;
  object_class->get_property = spark_dispatcher_get_property;
  object_class->set_property = spark_dispatcher_set_property;

  /**
   * SparkDispatcher:timeout:
   *
   * How long each request may take, in milliseconds, counted from the call
   * (waiting for room and queueing included); 0 or -1 (the default) mean
   * no limit. Commands have no timeout. Other negative values are a
   * programmer error.
   *
   * Since: 1.0
   */
  properties[PROP_TIMEOUT] =
    g_param_spec_int ("timeout", NULL, NULL,
                      -1, G_MAXINT, -1,
                      (G_PARAM_READWRITE |
                       G_PARAM_EXPLICIT_NOTIFY |
                       G_PARAM_STATIC_STRINGS));

  /**
   * SparkDispatcher:priority:
   *
   * The priority of the messages sent from now on: requests and commands
   * alike (see [enum@Spark.Priority]). For one message of another
   * priority, send it through [method@Spark.Dispatcher.with_priority].
   *
   * Since: 1.0
   */
  properties[PROP_PRIORITY] =
    g_param_spec_enum ("priority", NULL, NULL,
                       SPARK_TYPE_PRIORITY, SPARK_PRIORITY_DEFAULT,
                       (G_PARAM_READWRITE |
                        G_PARAM_EXPLICIT_NOTIFY |
                        G_PARAM_STATIC_STRINGS));

  /**
   * SparkDispatcher:rate-limit:
   *
   * How many messages (requests and commands) this dispatcher sends per
   * second at most; 0 (the default) for no limit. Past it, sends wait as
   * for room in a full mailbox: blocking calls block, asynchronous ones
   * wait without blocking (the outcome still comes exactly once, a
   * request's timeout and cancellable still count), and
   * [method@Spark.Dispatcher.try_send_command] fails with
   * %SPARK_CHANNEL_ERROR_FULL. Up to [property@Spark.Dispatcher:rate-burst]
   * messages may go at once after a quiet time. A token bucket, per
   * dispatcher: one made with [method@Spark.Dispatcher.with_priority] has
   * the same settings and a bucket of its own.
   *
   * Messages waiting for a token keep their line: each send reserves the
   * next slot, and an asynchronous one also waits behind those of its
   * context still waiting (try_send_command() fails rather than go ahead
   * of them), so a sender's messages arrive in the order it sent them. A
   * slot given up by a cancelled or timed-out message is not given back.
   *
   * Since: 1.0
   */
  properties[PROP_RATE_LIMIT] =
    g_param_spec_uint ("rate-limit", NULL, NULL,
                       0, G_MAXINT, 0,
                       (G_PARAM_READWRITE |
                        G_PARAM_EXPLICIT_NOTIFY |
                        G_PARAM_STATIC_STRINGS));

  /**
   * SparkDispatcher:rate-burst:
   *
   * How many messages may be sent at once, after a quiet time, under
   * [property@Spark.Dispatcher:rate-limit]; 0 (the default) for as many
   * as the rate (one second's worth).
   *
   * Since: 1.0
   */
  properties[PROP_RATE_BURST] =
    g_param_spec_uint ("rate-burst", NULL, NULL,
                       0, G_MAXINT, 0,
                       (G_PARAM_READWRITE |
                        G_PARAM_EXPLICIT_NOTIFY |
                        G_PARAM_STATIC_STRINGS));

  g_object_class_install_properties (object_class, N_PROPS, properties);
}

G_LOCK_DEFINE_STATIC (ids);
static guint64 next_id = 1;

static void
spark_dispatcher_init (SparkDispatcher *self)
{
  self->timeout = -1;
  g_mutex_init (&self->rate_mutex);

  G_LOCK (ids);
  self->id = next_id++;
  G_UNLOCK (ids);
}

SparkDispatcher *
spark_dispatcher_new (SparkTransport *transport)
{
  SparkDispatcher *self = g_object_new (SPARK_TYPE_DISPATCHER, NULL);

  self->transport = spark_transport_ref (transport);

  return self;
}

/**
 * spark_dispatcher_get_priority:
 * @self: a [class@Spark.Dispatcher]
 *
 * The priority of this dispatcher's messages. May be called from any
 * thread.
 *
 * Returns: the priority
 *
 * Since: 1.0
 */
SparkPriority
spark_dispatcher_get_priority (SparkDispatcher *self)
{
  g_return_val_if_fail (SPARK_IS_DISPATCHER (self), SPARK_PRIORITY_DEFAULT);

  return (SparkPriority) g_atomic_int_get (&self->priority);
}

static gboolean
priority_is_valid (SparkPriority priority)
{
  return priority == SPARK_PRIORITY_DEFAULT ||
         priority == SPARK_PRIORITY_HIGH ||
         priority == SPARK_PRIORITY_LOW;
}

/**
 * spark_dispatcher_set_priority:
 * @self: a [class@Spark.Dispatcher]
 * @priority: the priority of the messages sent from now on
 *
 * Sets the priority of this dispatcher's later messages. May be called
 * from any thread.
 *
 * Since: 1.0
 */
void
spark_dispatcher_set_priority (SparkDispatcher *self,
                               SparkPriority    priority)
{
  g_return_if_fail (SPARK_IS_DISPATCHER (self));
  g_return_if_fail (priority_is_valid (priority));

  if (g_atomic_int_exchange (&self->priority, (gint) priority) != (gint) priority)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_PRIORITY]);
}

/**
 * spark_dispatcher_with_priority:
 * @self: a [class@Spark.Dispatcher]
 * @priority: the priority of the new dispatcher's messages
 *
 * A dispatcher to the same module whose messages have @priority, with
 * the same timeout: the way to send one message of another priority,
 * e.g. `spark_dispatcher_with_priority (dispatcher, SPARK_PRIORITY_HIGH)`
 * for a cancel button's command behind a queue of work. Cheap: it shares
 * this dispatcher's way to the module, and may be kept or dropped at once
 * (a dropped dispatcher's messages still arrive). May be called from any
 * thread.
 *
 * Returns: (transfer full): a new [class@Spark.Dispatcher]
 *
 * Since: 1.0
 */
SparkDispatcher *
spark_dispatcher_with_priority (SparkDispatcher *self,
                                SparkPriority    priority)
{
  SparkDispatcher *other;

  g_return_val_if_fail (SPARK_IS_DISPATCHER (self), NULL);
  g_return_val_if_fail (priority_is_valid (priority), NULL);

  other = g_object_new (SPARK_TYPE_DISPATCHER, NULL);
  if (self->transport != NULL)
    other->transport = spark_transport_ref (self->transport);
  other->timeout = g_atomic_int_get (&self->timeout);
  other->priority = (gint) priority;
  other->id = self->id;
  other->rate = g_atomic_int_get (&self->rate);
  g_mutex_lock (&self->rate_mutex);
  other->burst = self->burst;
  g_mutex_unlock (&self->rate_mutex);

  return other;
}

/**
 * spark_dispatcher_get_rate_limit:
 * @self: a [class@Spark.Dispatcher]
 *
 * Gets [property@Spark.Dispatcher:rate-limit]. May be called from any
 * thread.
 *
 * Returns: messages per second, 0 for no limit
 *
 * Since: 1.0
 */
guint
spark_dispatcher_get_rate_limit (SparkDispatcher *self)
{
  g_return_val_if_fail (SPARK_IS_DISPATCHER (self), 0);

  return (guint) g_atomic_int_get (&self->rate);
}

/**
 * spark_dispatcher_set_rate_limit:
 * @self: a [class@Spark.Dispatcher]
 * @messages_per_second: the most messages sent per second, 0 for no limit
 *
 * Sets [property@Spark.Dispatcher:rate-limit]: later sends wait for their
 * turn. May be called from any thread.
 *
 * Since: 1.0
 */
void
spark_dispatcher_set_rate_limit (SparkDispatcher *self,
                                 guint            messages_per_second)
{
  gint old;

  g_return_if_fail (SPARK_IS_DISPATCHER (self));
  g_return_if_fail (messages_per_second <= G_MAXINT);

  g_mutex_lock (&self->rate_mutex);
  old = g_atomic_int_exchange (&self->rate, (gint) messages_per_second);
  self->next_due = 0;   /* a full bucket under the new rate */
  g_mutex_unlock (&self->rate_mutex);

  if (old != (gint) messages_per_second)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_RATE_LIMIT]);
}

/**
 * spark_dispatcher_get_rate_burst:
 * @self: a [class@Spark.Dispatcher]
 *
 * Gets [property@Spark.Dispatcher:rate-burst]. May be called from any
 * thread.
 *
 * Returns: messages, 0 for as many as the rate
 *
 * Since: 1.0
 */
guint
spark_dispatcher_get_rate_burst (SparkDispatcher *self)
{
  guint burst;

  g_return_val_if_fail (SPARK_IS_DISPATCHER (self), 0);

  g_mutex_lock (&self->rate_mutex);
  burst = self->burst;
  g_mutex_unlock (&self->rate_mutex);

  return burst;
}

/**
 * spark_dispatcher_set_rate_burst:
 * @self: a [class@Spark.Dispatcher]
 * @burst: how many messages may go at once, 0 for as many as the rate
 *
 * Sets [property@Spark.Dispatcher:rate-burst]. May be called from any
 * thread.
 *
 * Since: 1.0
 */
void
spark_dispatcher_set_rate_burst (SparkDispatcher *self,
                                 guint            burst)
{
  gboolean changed;

  g_return_if_fail (SPARK_IS_DISPATCHER (self));
  g_return_if_fail (burst <= G_MAXINT);

  g_mutex_lock (&self->rate_mutex);
  changed = self->burst != burst;
  self->burst = burst;
  self->next_due = 0;
  g_mutex_unlock (&self->rate_mutex);

  if (changed)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_RATE_BURST]);
}

typedef enum {
  RATE_TRY,        /* go now or not at all */
  RATE_BLOCKING,   /* the caller waits on its thread */
  RATE_ASYNC,      /* the caller waits on its context: see throttle() */
} RateMode;

/* Reserves the next free slot of the rate limit: 0 if the message may go
 * now (or there is no limit), otherwise how long, in µs, until its slot.
 * Slots go out in the order of the calls, so a message never overtakes
 * one sent before it that is still waiting. An asynchronous send waits
 * behind the asynchronous ones still waiting on a context (their slot may
 * have come while their context was busy): at least 1 µs, so that it is
 * throttled too, and dispatched after them. RATE_TRY reserves nothing
 * for a message that cannot go now and gets -1. */
static gint64
rate_reserve (SparkDispatcher *self,
              RateMode         mode)
{
  gint rate = g_atomic_int_get (&self->rate);
  gint64 wait = 0;

  if G_LIKELY (rate == 0)
    return 0;

  g_mutex_lock (&self->rate_mutex);
  rate = g_atomic_int_get (&self->rate);
  if (rate > 0)
    {
      gdouble now = (gdouble) g_get_monotonic_time ();
      gdouble interval = (gdouble) G_USEC_PER_SEC / rate;
      gdouble burst = self->burst > 0 ? self->burst : (guint) rate;
      /* The bucket holds @burst tokens: it may run up to that far ahead. */
      gdouble due = MAX (self->next_due, now);
      gdouble slot = MAX (now, due - (burst - 1) * interval);

      if (mode == RATE_TRY && (slot > now || self->n_throttled > 0))
        wait = -1;
      else
        {
          self->next_due = due + interval;
          wait = (gint64) (slot - now);
          if (mode == RATE_ASYNC && (wait > 0 || self->n_throttled > 0))
            {
              wait = MAX (wait, 1);
              self->n_throttled++;
            }
        }
    }
  g_mutex_unlock (&self->rate_mutex);

  return wait;
}

/* Requests waiting for their rate-limit slot have not reached the
 * transport: spark_dispatcher_cancel_all() finds them here, by sender id.
 * Only rate-limited sends come here. */
typedef struct
{
  guint64       sender;
  SparkRequest *req;      /* a reference */
} RateWaiter;

static GMutex rate_waiters_lock;
static GArray *rate_waiters;   /* rate_waiters_lock: RateWaiter */

static void
rate_waiter_add (guint64       sender,
                 SparkRequest *req)
{
  RateWaiter waiter = { sender, spark_request_ref (req) };

  g_mutex_lock (&rate_waiters_lock);
  if (rate_waiters == NULL)
    rate_waiters = g_array_new (FALSE, FALSE, sizeof (RateWaiter));
  g_array_append_val (rate_waiters, waiter);
  g_mutex_unlock (&rate_waiters_lock);
}

static void
rate_waiter_remove (SparkRequest *req)
{
  SparkRequest *found = NULL;

  g_mutex_lock (&rate_waiters_lock);
  for (guint i = 0; rate_waiters != NULL && i < rate_waiters->len; i++)
    if (g_array_index (rate_waiters, RateWaiter, i).req == req)
      {
        found = req;
        g_array_remove_index_fast (rate_waiters, i);
        break;
      }
  g_mutex_unlock (&rate_waiters_lock);

  g_assert (found != NULL);
  spark_request_unref (found);
}

static void
rate_waiters_cancel (guint64 sender)
{
  GPtrArray *matched = g_ptr_array_new_with_free_func ((GDestroyNotify) spark_request_unref);

  g_mutex_lock (&rate_waiters_lock);
  for (guint i = 0; rate_waiters != NULL && i < rate_waiters->len; i++)
    if (g_array_index (rate_waiters, RateWaiter, i).sender == sender)
      g_ptr_array_add (matched, spark_request_ref (g_array_index (rate_waiters, RateWaiter, i).req));
  g_mutex_unlock (&rate_waiters_lock);

  /* Claimed here: their waits see it and drop them unsent. */
  for (guint i = 0; i < matched->len; i++)
    spark_request_complete_cancelled (g_ptr_array_index (matched, i),
                                      "The request was cancelled by spark_dispatcher_cancel_all()");
  g_ptr_array_unref (matched);
}

/* Waits on this thread for the slot reserved @wait µs ahead. FALSE, with
 * @error set, if @cancellable was cancelled first; or, for @req, as soon
 * as it has ended (cancelled, timed out, cancel_all()): it is not sent. A
 * slot given up is not given back. */
static gboolean
rate_wait_blocking (SparkDispatcher  *self,
                    gint64            wait,
                    GCancellable     *cancellable,
                    SparkRequest     *req,
                    GError          **error)
{
  gint64 deadline = g_get_monotonic_time () + wait;
  gboolean ret = TRUE;
  gint64 left;

  if (req != NULL)
    rate_waiter_add (self->id, req);

  while ((left = deadline - g_get_monotonic_time ()) > 0)
    {
      if (g_cancellable_set_error_if_cancelled (cancellable, error) ||
          (req != NULL && spark_request_is_claimed (req)))
        {
          ret = FALSE;
          break;
        }
      /* In slices, to see a cancellation or a timeout soon. */
      g_usleep ((gulong) MIN (left, 10 * 1000));
    }

  if (req != NULL)
    {
      rate_waiter_remove (req);
      if (spark_request_is_claimed (req))
        ret = FALSE;
    }

  return ret;
}

/* A message that waits for a token without blocking: on the sender's
 * context, a timeout per wait. */
typedef struct
{
  SparkDispatcher *self;         /* a reference */
  gint64           due;          /* monotonic µs: its slot */
  SparkRequest    *req;          /* the sender's reference; or a command: */
  char            *name;
  GVariant        *parameters;   /* not floating */
  GTask           *task;         /* a reference */
} Throttled;

static void spark_dispatcher_post_request (SparkDispatcher *self, SparkRequest *req, gboolean blocking);
static void spark_dispatcher_post_command_async (SparkDispatcher *self, const char *name,
                                                 GVariant *parameters, GTask *task);

static void
throttled_free (Throttled *throttled)
{
  g_clear_object (&throttled->self);
  g_free (throttled->name);
  g_clear_pointer (&throttled->parameters, g_variant_unref);
  g_clear_object (&throttled->task);
  g_free (throttled);
}

static gboolean
on_throttled (gpointer data)
{
  Throttled *throttled = data;

  g_mutex_lock (&throttled->self->rate_mutex);
  throttled->self->n_throttled--;
  g_mutex_unlock (&throttled->self->rate_mutex);

  if (throttled->req != NULL)
    {
      rate_waiter_remove (throttled->req);

      /* Ended while it waited: never sent, its outcome went already. */
      if (spark_request_is_claimed (throttled->req))
        {
          spark_request_unref (g_steal_pointer (&throttled->req));
          throttled_free (throttled);
          return G_SOURCE_REMOVE;
        }
      spark_dispatcher_post_request (throttled->self, g_steal_pointer (&throttled->req), FALSE);
    }
  else
    {
      GError *error = NULL;

      if (g_cancellable_set_error_if_cancelled (g_task_get_cancellable (throttled->task), &error))
        g_task_return_error (throttled->task, error);
      else
        spark_dispatcher_post_command_async (throttled->self, throttled->name,
                                             g_steal_pointer (&throttled->parameters), throttled->task);
    }
  throttled_free (throttled);

  return G_SOURCE_REMOVE;
}

static gboolean
throttle_source_dispatch (GSource     *source,
                          GSourceFunc  callback,
                          gpointer     user_data)
{
  return callback (user_data);
}

/* Ready at an exact time, not a millisecond timeout: slots a few µs apart
 * keep their order. Sources ready together dispatch in attach order. */
static GSourceFuncs throttle_source_funcs = {
  .dispatch = throttle_source_dispatch,
};

/* Waits, on the sender's context, for the slot reserved @wait µs ahead. */
static void
throttle (Throttled *throttled,
          gint64     wait)
{
  GSource *source = g_source_new (&throttle_source_funcs, sizeof (GSource));

  throttled->due = g_get_monotonic_time () + wait;
  if (throttled->req != NULL)
    rate_waiter_add (throttled->self->id, throttled->req);

  g_source_set_static_name (source, "[spark] rate limit");
  g_source_set_priority (source, G_PRIORITY_DEFAULT);
  g_source_set_ready_time (source, throttled->due);
  g_source_set_callback (source, on_throttled, throttled, NULL);
  g_source_attach (source, g_main_context_get_thread_default ());
  g_source_unref (source);
}

/**
 * spark_dispatcher_cancel_all:
 * @self: a [class@Spark.Dispatcher]
 *
 * Fails with %G_IO_ERROR_CANCELLED every request this dispatcher (or one
 * [method@Spark.Dispatcher.with_priority] made from it, or it from) sent
 * that the module has not begun to handle: those queued, those waiting
 * for room in a full mailbox, and those the server took in its current
 * batch. It acts ahead of the queue and whatever the mailbox's capacity.
 * Requests being handled are left alone (cancel them with their own
 * cancellable), and commands are not retracted. Requests still waiting for
 * a token of [property@Spark.Dispatcher:rate-limit] fail too: they are
 * never sent. Each
 * cancelled request completes once, as usual, from its requester's context
 * (or its blocking call). A cancelled request keeps its place in
 * [property@Spark.ModuleServer:pending], and in a bounded mailbox its room,
 * until the server comes to it and skips it.
 *
 * May be called from any thread.
 *
 * Since: 1.0
 */
void
spark_dispatcher_cancel_all (SparkDispatcher *self)
{
  g_return_if_fail (SPARK_IS_DISPATCHER (self));

  /* Those waiting for their rate-limit slot first: a slot that comes
   * meanwhile must not send one past this call. */
  rate_waiters_cancel (self->id);
  if (self->transport != NULL && self->transport->vtable->cancel_all != NULL)
    self->transport->vtable->cancel_all (self->transport, self->id);
}

/**
 * spark_dispatcher_get_timeout:
 * @self: a [class@Spark.Dispatcher]
 *
 * The timeout of this dispatcher's requests. May be called from any
 * thread.
 *
 * Returns: milliseconds, or 0 or -1 for none
 *
 * Since: 1.0
 */
gint
spark_dispatcher_get_timeout (SparkDispatcher *self)
{
  g_return_val_if_fail (SPARK_IS_DISPATCHER (self), -1);

  return g_atomic_int_get (&self->timeout);
}

/**
 * spark_dispatcher_set_timeout:
 * @self: a [class@Spark.Dispatcher]
 * @timeout_msec: milliseconds, or 0 or -1 for none
 *
 * Sets how long each later request may take before it fails with
 * %SPARK_CHANNEL_ERROR_TIMED_OUT. May be called from any thread.
 *
 * Since: 1.0
 */
void
spark_dispatcher_set_timeout (SparkDispatcher *self,
                              gint             timeout_msec)
{
  g_return_if_fail (SPARK_IS_DISPATCHER (self));
  g_return_if_fail (timeout_msec >= -1);

  if (g_atomic_int_exchange (&self->timeout, timeout_msec) != timeout_msec)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_TIMEOUT]);
}

static gboolean
reply_type_is_valid (const GVariantType *reply_type)
{
  return reply_type == NULL ||
         g_variant_type_string_scan ((const char *) reply_type, NULL, NULL);
}

static gboolean
set_closed_error (GError **error)
{
  g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED,
                       "The dispatcher has no module server");
  return FALSE;
}

/* The context the server runs on, if any: a requester on another one
 * spins for its outcomes. */
static GMainContext *
spark_dispatcher_get_producer (SparkDispatcher *self)
{
  return self->transport ? self->transport->vtable->get_context (self->transport) : NULL;
}

/* Sends @req (both of its references: the sender's goes to the mailbox,
 * the completion side stays with the caller's delivery). */
static void
spark_dispatcher_send_request (SparkDispatcher *self,
                               SparkRequest    *req,
                               gboolean         blocking)
{
  if (spark_request_refuse_if_cancelled (req))
    {
      spark_request_unref (req);
      return;
    }

  spark_request_set_sender (req, self->id);
  spark_request_arm (req);

  /* Its clocks run while it waits for its turn. */
  if G_UNLIKELY (g_atomic_int_get (&self->rate) != 0)
    {
      gint64 wait = rate_reserve (self, blocking ? RATE_BLOCKING : RATE_ASYNC);

      if (wait <= 0)
        ;   /* its slot is now */
      else if (blocking)
        {
          if (!rate_wait_blocking (self, wait, NULL, req, NULL))
            {
              spark_request_unref (req);
              return;
            }
        }
      else
        {
          Throttled *throttled = g_new0 (Throttled, 1);

          throttled->self = g_object_ref (self);
          throttled->req = req;
          throttle (throttled, wait);
          return;
        }
    }

  spark_dispatcher_post_request (self, req, blocking);
}

/* Hands @req (armed, the sender's reference) to the transport. */
static void
spark_dispatcher_post_request_at (SparkDispatcher *self,
                                  SparkRequest    *req,
                                  SparkPriority    priority,
                                  gboolean         blocking)
{
  GError *error = NULL;

  if (self->transport == NULL)
    set_closed_error (&error);
  else if (self->transport->vtable->post_request (self->transport, req, priority, blocking, &error))
    return;

  spark_request_complete (req, NULL, error);
  spark_request_unref (req);
}

static void
spark_dispatcher_post_request (SparkDispatcher *self,
                               SparkRequest    *req,
                               gboolean         blocking)
{
  spark_dispatcher_post_request_at (self, req, (SparkPriority) g_atomic_int_get (&self->priority), blocking);
}

SparkTransport *
spark_dispatcher_get_transport (SparkDispatcher *self)
{
  return self->transport;
}

guint64
spark_dispatcher_new_sender_id (void)
{
  guint64 id;

  G_LOCK (ids);
  id = next_id++;
  G_UNLOCK (ids);
  return id;
}

void
spark_dispatcher_relay_request (SparkDispatcher *self,
                                SparkRequest    *req,
                                guint64          sender,
                                SparkPriority    priority)
{
  /* No rate limit, no cancellable of the requester's: a relay's own. */
  spark_request_set_sender (req, sender);
  spark_request_arm (req);
  spark_dispatcher_post_request_at (self, req, priority, FALSE);
}

void
spark_dispatcher_relay_cancel_all (SparkDispatcher *self,
                                   guint64          sender)
{
  if (self->transport != NULL && self->transport->vtable->cancel_all != NULL)
    self->transport->vtable->cancel_all (self->transport, sender);
}

/* request_async() and request_with_progress_async() once their arguments
 * are checked. No GTask: the result object is made when the outcome is
 * delivered, from the reply port's batch on the caller's context. */
static void
spark_dispatcher_send_async (SparkDispatcher     *self,
                             const char          *name,
                             GVariant            *parameters,
                             const GVariantType  *reply_type,
                             GCancellable        *cancellable,
                             SparkProgressFunc    progress_func,
                             gpointer             progress_data,
                             GDestroyNotify       progress_destroy,
                             GAsyncReadyCallback  callback,
                             gpointer             user_data)
{
  SparkRequest *req = spark_request_new_async (name, parameters, reply_type, cancellable,
                                               g_atomic_int_get (&self->timeout),
                                               spark_dispatcher_get_producer (self),
                                               G_OBJECT (self), spark_dispatcher_request_async,
                                               callback, user_data);

  if (progress_func != NULL)
    spark_request_set_progress (req, progress_func, progress_data, progress_destroy);

  spark_dispatcher_send_request (self, req, FALSE);
}

/**
 * spark_dispatcher_request_async:
 * @self: a [class@Spark.Dispatcher]
 * @name: the request's name, non-empty
 * @parameters: (nullable): the request's parameters; a floating reference
 *   is sunk
 * @reply_type: (nullable): the type the reply must have, or %NULL for any
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async) (closure user_data): called with the outcome
 * @user_data: data for @callback
 *
 * Sends a request. @callback runs once, on the thread-default main context
 * of the caller at the time of this call, never inside this call; call
 * [method@Spark.Dispatcher.request_finish] there to get the reply.
 *
 * If the mailbox is bounded and full, the request waits asynchronously for
 * room. If @cancellable is already cancelled, nothing is sent and the
 * request fails with %G_IO_ERROR_CANCELLED.
 *
 * As with any [iface@Gio.AsyncResult], take a reference to the result to
 * use it after @callback returns. A result that @callback left with no
 * reference, data, weak reference or toggle reference is reused for a
 * later request's outcome on the same context, so do not compare results
 * by address. Signal handlers connected to it do not prevent that: they
 * are disconnected when @callback returns, as they would be if the result
 * were finalized.
 *
 * May be called from any thread.
 *
 * Since: 1.0
 */
void
spark_dispatcher_request_async (SparkDispatcher     *self,
                                const char          *name,
                                GVariant            *parameters,
                                const GVariantType  *reply_type,
                                GCancellable        *cancellable,
                                GAsyncReadyCallback  callback,
                                gpointer             user_data)
{
  g_autoptr(GVariant) params = parameters ? g_variant_ref_sink (parameters) : NULL;

  g_return_if_fail (SPARK_IS_DISPATCHER (self));
  g_return_if_fail (name != NULL && *name != '\0');
  g_return_if_fail (reply_type_is_valid (reply_type));
  g_return_if_fail (!cancellable || G_IS_CANCELLABLE (cancellable));

  spark_dispatcher_send_async (self, name, g_steal_pointer (&params), reply_type, cancellable,
                               NULL, NULL, NULL, callback, user_data);
}

/**
 * spark_dispatcher_request_with_progress_async:
 * @self: a [class@Spark.Dispatcher]
 * @name: the request's name, non-empty
 * @parameters: (nullable): the request's parameters; a floating reference
 *   is sunk
 * @reply_type: (nullable): the type the reply must have, or %NULL for any
 * @cancellable: (nullable): a cancellable
 * @progress_func: (scope notified) (closure progress_data) (destroy progress_destroy):
 *   receives the progress the handler reports
 * @progress_data: data for @progress_func
 * @progress_destroy: (nullable): frees @progress_data once the request has
 *   ended (after @callback)
 * @callback: (scope async) (closure user_data): called with the outcome
 * @user_data: data for @callback
 *
 * Like [method@Spark.Dispatcher.request_async], for a long request whose
 * handler reports how it goes with
 * [method@Spark.Invocation.send_progress]: @progress_func runs on the
 * same context as @callback, once per report, in the order the handler
 * sent them, and never after @callback. Reports sent after the request
 * ended (cancelled, timed out, or replied) are dropped. Finish with
 * [method@Spark.Dispatcher.request_finish].
 *
 * May be called from any thread.
 *
 * Since: 1.0
 */
void
spark_dispatcher_request_with_progress_async (SparkDispatcher     *self,
                                              const char          *name,
                                              GVariant            *parameters,
                                              const GVariantType  *reply_type,
                                              GCancellable        *cancellable,
                                              SparkProgressFunc    progress_func,
                                              gpointer             progress_data,
                                              GDestroyNotify       progress_destroy,
                                              GAsyncReadyCallback  callback,
                                              gpointer             user_data)
{
  g_autoptr(GVariant) params = parameters ? g_variant_ref_sink (parameters) : NULL;

  g_return_if_fail (SPARK_IS_DISPATCHER (self));
  g_return_if_fail (name != NULL && *name != '\0');
  g_return_if_fail (reply_type_is_valid (reply_type));
  g_return_if_fail (!cancellable || G_IS_CANCELLABLE (cancellable));
  g_return_if_fail (progress_func != NULL);

  spark_dispatcher_send_async (self, name, g_steal_pointer (&params), reply_type, cancellable,
                               progress_func, progress_data, progress_destroy, callback, user_data);
}

/**
 * spark_dispatcher_request_finish:
 * @self: a [class@Spark.Dispatcher]
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Finishes [method@Spark.Dispatcher.request_async] and
 * [method@Spark.Dispatcher.request_with_progress_async]. Call it from the
 * callback, on the context where the callback runs.
 *
 * Returns: (transfer full): the reply, or %NULL with @error set: the
 *   handler's error unchanged, %G_IO_ERROR_CANCELLED, or a
 *   %SPARK_CHANNEL_ERROR
 *
 * Since: 1.0
 */
GVariant *
spark_dispatcher_request_finish (SparkDispatcher  *self,
                                 GAsyncResult     *result,
                                 GError          **error)
{
  g_return_val_if_fail (SPARK_IS_DISPATCHER (self), NULL);
  /* request_with_progress_async() results carry the same tag. */
  g_return_val_if_fail (spark_async_result_is_valid (result, self, spark_dispatcher_request_async), NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  /* Checked just above: a plain cast spares a second type check. */
  return spark_async_result_propagate ((SparkAsyncResult *) result, error);
}

/**
 * spark_dispatcher_request_full:
 * @self: a [class@Spark.Dispatcher]
 * @name: the request's name, non-empty
 * @parameters: (nullable): the request's parameters; a floating reference
 *   is sunk
 * @reply_type: (nullable): the type the reply must have, or %NULL for any
 * @cancellable: (nullable): a cancellable
 * @reply_func: (scope notified) (closure user_data) (destroy destroy):
 *   receives the outcome
 * @user_data: data for @reply_func
 * @destroy: (nullable): frees @user_data after @reply_func ran
 *
 * The lightweight form of [method@Spark.Dispatcher.request_async], with no
 * async-result object: @reply_func runs exactly once, on the
 * thread-default main context of the caller at the time of this call,
 * with the reply or the error; then @destroy frees @user_data.
 *
 * May be called from any thread.
 *
 * Since: 1.0
 */
void
spark_dispatcher_request_full (SparkDispatcher    *self,
                               const char         *name,
                               GVariant           *parameters,
                               const GVariantType *reply_type,
                               GCancellable       *cancellable,
                               SparkReplyFunc      reply_func,
                               gpointer            user_data,
                               GDestroyNotify      destroy)
{
  g_autoptr(GVariant) params = parameters ? g_variant_ref_sink (parameters) : NULL;
  SparkRequest *req;

  g_return_if_fail (SPARK_IS_DISPATCHER (self));
  g_return_if_fail (name != NULL && *name != '\0');
  g_return_if_fail (reply_type_is_valid (reply_type));
  g_return_if_fail (!cancellable || G_IS_CANCELLABLE (cancellable));
  g_return_if_fail (reply_func != NULL);

  req = spark_request_new_func (name, g_steal_pointer (&params), reply_type, cancellable,
                                g_atomic_int_get (&self->timeout),
                                spark_dispatcher_get_producer (self),
                                reply_func, user_data, destroy);

  spark_dispatcher_send_request (self, req, FALSE);
}

/**
 * spark_dispatcher_request_sync:
 * @self: a [class@Spark.Dispatcher]
 * @name: the request's name, non-empty
 * @parameters: (nullable): the request's parameters; a floating reference
 *   is sunk
 * @reply_type: (nullable): the type the reply must have, or %NULL for any
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Sends a request and blocks the calling thread until its outcome. No main
 * loop is needed on the calling thread. If the mailbox is bounded and
 * full, waits for room first.
 *
 * Fails at once with %SPARK_CHANNEL_ERROR_WOULD_DEADLOCK on a thread that
 * must serve the request itself: the server's own thread, a thread that
 * owns the server's context, or the thread that started the server with
 * [method@Spark.ModuleServer.start]. If @cancellable is cancelled before
 * this returns, it returns %G_IO_ERROR_CANCELLED.
 *
 * May be called from any other thread.
 *
 * Returns: (transfer full): the reply, or %NULL with @error set
 *
 * Since: 1.0
 */
GVariant *
spark_dispatcher_request_sync (SparkDispatcher     *self,
                               const char          *name,
                               GVariant            *parameters,
                               const GVariantType  *reply_type,
                               GCancellable        *cancellable,
                               GError             **error)
{
  g_autoptr(GVariant) params = parameters ? g_variant_ref_sink (parameters) : NULL;
  SparkRequest *req;

  g_return_val_if_fail (SPARK_IS_DISPATCHER (self), NULL);
  g_return_val_if_fail (name != NULL && *name != '\0', NULL);
  g_return_val_if_fail (reply_type_is_valid (reply_type), NULL);
  g_return_val_if_fail (!cancellable || G_IS_CANCELLABLE (cancellable), NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  req = spark_request_new_sync (name, g_steal_pointer (&params), reply_type, cancellable,
                                g_atomic_int_get (&self->timeout));

  spark_dispatcher_send_request (self, req, TRUE);

  return spark_request_wait_sync (req, error);
}

/**
 * spark_dispatcher_send_command:
 * @self: a [class@Spark.Dispatcher]
 * @name: the command's name, non-empty
 * @parameters: (nullable): the command's parameters; a floating reference
 *   is sunk
 * @cancellable: (nullable): cancels the wait for room
 * @error: return location for an error
 *
 * Queues a command. If the mailbox is bounded and full, blocks until there
 * is room (failing with %SPARK_CHANNEL_ERROR_WOULD_DEADLOCK on a thread
 * that must serve the mailbox itself). Once queued, the send has
 * succeeded: the handler's outcome never comes back.
 *
 * @cancellable only covers the wait for room: an already-cancelled one
 * fails with %G_IO_ERROR_CANCELLED and sends nothing.
 *
 * May be called from any thread.
 *
 * Returns: %TRUE if the command was queued
 *
 * Since: 1.0
 */
gboolean
spark_dispatcher_send_command (SparkDispatcher  *self,
                               const char       *name,
                               GVariant         *parameters,
                               GCancellable     *cancellable,
                               GError          **error)
{
  g_autoptr(GVariant) params = parameters ? g_variant_ref_sink (parameters) : NULL;

  g_return_val_if_fail (SPARK_IS_DISPATCHER (self), FALSE);
  g_return_val_if_fail (name != NULL && *name != '\0', FALSE);
  g_return_val_if_fail (!cancellable || G_IS_CANCELLABLE (cancellable), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (g_cancellable_set_error_if_cancelled (cancellable, error))
    return FALSE;

  if (self->transport == NULL)
    return set_closed_error (error);

  if G_UNLIKELY (g_atomic_int_get (&self->rate) != 0)
    {
      gint64 wait = rate_reserve (self, RATE_BLOCKING);

      if (wait > 0 && !rate_wait_blocking (self, wait, cancellable, NULL, error))
        return FALSE;
    }

  return self->transport->vtable->post_command (self->transport, name, g_steal_pointer (&params),
                                               (SparkPriority) g_atomic_int_get (&self->priority),
                                     SPARK_POST_BLOCK, cancellable, NULL, error);
}

/**
 * spark_dispatcher_try_send_command:
 * @self: a [class@Spark.Dispatcher]
 * @name: the command's name, non-empty
 * @parameters: (nullable): the command's parameters; a floating reference
 *   is sunk
 * @error: return location for an error
 *
 * Queues a command without ever blocking: fails with
 * %SPARK_CHANNEL_ERROR_FULL where [method@Spark.Dispatcher.send_command]
 * would wait, for room in a bounded mailbox (full, or other senders wait
 * for room) or for a token of [property@Spark.Dispatcher:rate-limit]; and
 * under %SPARK_OVERFLOW_FAIL whenever the mailbox is full.
 *
 * May be called from any thread, including the server's own.
 *
 * Returns: %TRUE if the command was queued
 *
 * Since: 1.0
 */
gboolean
spark_dispatcher_try_send_command (SparkDispatcher  *self,
                                   const char       *name,
                                   GVariant         *parameters,
                                   GError          **error)
{
  g_autoptr(GVariant) params = parameters ? g_variant_ref_sink (parameters) : NULL;

  g_return_val_if_fail (SPARK_IS_DISPATCHER (self), FALSE);
  g_return_val_if_fail (name != NULL && *name != '\0', FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (self->transport == NULL)
    return set_closed_error (error);

  if G_UNLIKELY (rate_reserve (self, RATE_TRY) < 0)
    {
      g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL,
                   "The dispatcher's rate limit (%u messages per second) is reached",
                   spark_dispatcher_get_rate_limit (self));
      return FALSE;
    }

  return self->transport->vtable->post_command (self->transport, name, g_steal_pointer (&params),
                                               (SparkPriority) g_atomic_int_get (&self->priority),
                                     SPARK_POST_TRY, NULL, NULL, error);
}

/**
 * spark_dispatcher_broadcast_command:
 * @self: a [class@Spark.Dispatcher]
 * @name: the command's name, non-empty
 * @parameters: (nullable): the command's parameters; a floating reference
 *   is sunk
 * @error: return location for an error
 *
 * Sends a command to every worker of the server (see
 * [property@Spark.ModuleServer:workers]): each worker's handler call gets
 * it once, on that worker's thread, before the worker takes another
 * message. Use it for what each worker keeps of its own: a cache to drop,
 * a setting to reload. With one worker it is
 * [method@Spark.Dispatcher.try_send_command] without the capacity.
 *
 * It never blocks and is not held back by a bounded mailbox (nor by the
 * rate limit): keep it for rare messages. Fails with
 * %SPARK_CHANNEL_ERROR_CLOSED if the server is not running, and with
 * %SPARK_CHANNEL_ERROR_NOT_SUPPORTED for a dispatcher whose module is not
 * in this process.
 *
 * May be called from any thread, including the server's own.
 *
 * Returns: %TRUE if every worker got the command
 *
 * Since: 1.0
 */
gboolean
spark_dispatcher_broadcast_command (SparkDispatcher  *self,
                                    const char       *name,
                                    GVariant         *parameters,
                                    GError          **error)
{
  g_autoptr(GVariant) params = parameters ? g_variant_ref_sink (parameters) : NULL;

  g_return_val_if_fail (SPARK_IS_DISPATCHER (self), FALSE);
  g_return_val_if_fail (name != NULL && *name != '\0', FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (self->transport == NULL)
    return set_closed_error (error);

  if (self->transport->vtable->broadcast_command == NULL)
    {
      g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                   "Command “%s” cannot be broadcast: this dispatcher's module is not in this process",
                   name);
      return FALSE;
    }

  return self->transport->vtable->broadcast_command (self->transport, name, g_steal_pointer (&params),
                                                     (SparkPriority) g_atomic_int_get (&self->priority),
                                                     error);
}

/**
 * spark_dispatcher_send_command_async:
 * @self: a [class@Spark.Dispatcher]
 * @name: the command's name, non-empty
 * @parameters: (nullable): the command's parameters; a floating reference
 *   is sunk
 * @cancellable: (nullable): cancels the wait for room
 * @callback: (scope async) (closure user_data): called once the command is
 *   queued or the send failed
 * @user_data: data for @callback
 *
 * Queues a command, waiting asynchronously for room in a bounded mailbox.
 * @callback runs on the caller's thread-default main context, never inside
 * this call.
 *
 * May be called from any thread.
 *
 * Since: 1.0
 */
void
spark_dispatcher_send_command_async (SparkDispatcher     *self,
                                     const char          *name,
                                     GVariant            *parameters,
                                     GCancellable        *cancellable,
                                     GAsyncReadyCallback  callback,
                                     gpointer             user_data)
{
  g_autoptr(GVariant) params = parameters ? g_variant_ref_sink (parameters) : NULL;
  g_autoptr(GTask) task = NULL;
  GError *error = NULL;

  g_return_if_fail (SPARK_IS_DISPATCHER (self));
  g_return_if_fail (name != NULL && *name != '\0');
  g_return_if_fail (!cancellable || G_IS_CANCELLABLE (cancellable));

  task = g_task_new (self, cancellable, callback, user_data);
  g_task_set_source_tag (task, spark_dispatcher_send_command_async);
  g_task_set_name (task, "[spark] send command");
  /* Once queued, the send has succeeded even if cancelled afterwards. */
  g_task_set_check_cancellable (task, FALSE);

  if (g_cancellable_set_error_if_cancelled (cancellable, &error))
    g_task_return_error (task, error);
  else if (self->transport == NULL)
    {
      set_closed_error (&error);
      g_task_return_error (task, error);
    }
  else
    {
      gint64 wait = rate_reserve (self, RATE_ASYNC);

      if G_UNLIKELY (wait > 0)
        {
          Throttled *throttled = g_new0 (Throttled, 1);

          throttled->self = g_object_ref (self);
          throttled->name = g_strdup (name);
          throttled->parameters = g_steal_pointer (&params);
          throttled->task = g_object_ref (task);
          throttle (throttled, wait);
        }
      else
        spark_dispatcher_post_command_async (self, name, g_steal_pointer (&params), task);
    }
}

/* Takes @parameters; @task is completed in every case. */
static void
spark_dispatcher_post_command_async (SparkDispatcher *self,
                                     const char      *name,
                                     GVariant        *parameters,
                                     GTask           *task)
{
  GError *error = NULL;

  if (!self->transport->vtable->post_command (self->transport, name, parameters,
                                              (SparkPriority) g_atomic_int_get (&self->priority),
                                              SPARK_POST_ASYNC, g_task_get_cancellable (task), task, &error))
    g_task_return_error (task, error);
}

/**
 * spark_dispatcher_send_command_finish:
 * @self: a [class@Spark.Dispatcher]
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Finishes [method@Spark.Dispatcher.send_command_async]. Call it from the
 * callback, on the context where the callback runs.
 *
 * Returns: %TRUE if the command was queued
 *
 * Since: 1.0
 */
gboolean
spark_dispatcher_send_command_finish (SparkDispatcher  *self,
                                      GAsyncResult     *result,
                                      GError          **error)
{
  g_return_val_if_fail (SPARK_IS_DISPATCHER (self), FALSE);
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == spark_dispatcher_send_command_async, FALSE);

  return g_task_propagate_boolean (G_TASK (result), error);
}

/**
 * spark_dispatcher_send_shutdown:
 * @self: a [class@Spark.Dispatcher]
 * @token: (nullable): cancelled once the server has stopped
 * @error: return location for an error
 *
 * Sends the shutdown message. It closes the mailbox at once: every later
 * send, and every sender still waiting for room, fails with
 * %SPARK_CHANNEL_ERROR_CLOSED. It is accepted even when a bounded mailbox
 * is full, and counts neither in [property@Spark.ModuleServer:pending] nor
 * against the capacity. Everything queued before it is handled; when the
 * server reaches it, the server stops and cancels @token: that is how
 * tasks listening for the token learn that the module is gone.
 *
 * A second shutdown fails with %SPARK_CHANNEL_ERROR_CLOSED.
 *
 * May be called from any thread.
 *
 * Returns: %TRUE if the shutdown message was queued
 *
 * Since: 1.0
 */
gboolean
spark_dispatcher_send_shutdown (SparkDispatcher  *self,
                                GCancellable     *token,
                                GError          **error)
{
  g_return_val_if_fail (SPARK_IS_DISPATCHER (self), FALSE);
  g_return_val_if_fail (!token || G_IS_CANCELLABLE (token), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (self->transport == NULL)
    return set_closed_error (error);

  return self->transport->vtable->send_shutdown (self->transport, token, error);
}
