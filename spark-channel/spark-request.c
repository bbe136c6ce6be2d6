/* spark-request.c: one request in flight, completed exactly once
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Exactly-once: whoever flips @claimed from 0 to 1 (the handler's reply,
 * the requester's cancellable, the timer, a shutdown, a refusal at send
 * time) writes @reply/@error and delivers; everybody else drops what they
 * had. The outcome goes where the constructor said: a sync waiter, or the
 * requester's reply port, whose batch calls the async callback or the
 * reply function on the requester's context.
 *
 * Cancel wins: a requester whose cancellable was cancelled before the
 * outcome reached it gets G_IO_ERROR_CANCELLED, whatever else happened
 * (apply_cancel_wins(), for both ways an outcome is taken).
 */

#include "config.h"

#include <string.h>

#include "spark-async-result-private.h"
#include "spark-error.h"
#include "spark-outcome-private.h"
#include "spark-pool-private.h"
#include "spark-request-private.h"
#include "spark-timer-private.h"

typedef enum {
  REPLY_SYNC,
  REPLY_ASYNC,
  REPLY_FUNC,
} ReplyKind;

/* A listener for a request's progress (see "Progress" below). */
typedef struct
{
  GMutex             mutex;
  gboolean           closed;    /* mutex: the outcome is being or was delivered */
  SparkProgressFunc  func;      /* immutable */
  gpointer           data;      /* immutable */
  GDestroyNotify     destroy;   /* the requester's context: called once, after the outcome */
} RequestProgress;

/* Reference counted (atomically): the sender's side (the mailbox queue,
 * then the server or a room waiter) holds one reference, the completion
 * side (the sync caller or the reply port delivery) another; a connected
 * cancellable, the timer and an invocation hold one each. */
struct _SparkRequest
{
  SparkMessage     msg;               /* first: a request is queued as a message */
  const char      *name;              /* immutable: inline after the struct */
  guint32          size;              /* immutable: of the allocation */
  guint32          queued_us;         /* immutable after send: the low 32 bits of the
                                       * monotonic time it was sent, for the server's
                                       * metrics; 0: not sampled */

  gint             ref_count;         /* atomic */
  gint             claimed;           /* atomic: 0 -> a SparkRequestEnd once */
  gint             cancel_armed;      /* atomic: the cancel handler may claim */
  guint8           reply_kind;        /* immutable: a ReplyKind */

  GVariant        *reply;             /* written by the claim winner before delivery */
  GError          *error;             /* same */

  const GVariantType *reply_type;     /* immutable, nullable: inline after the name */
  GCancellable    *cancellable;       /* immutable, nullable: the requester's */
  gulong           cancel_id;         /* written before cancel_armed is set */
  GCancellable    *handler_cancellable; /* immutable, nullable: only with a cancellable or timeout */
  SparkTimeout     timeout;           /* deadline immutable, 0 for none; added while armed, a reference */
  guint64          sender;            /* immutable after send: the dispatcher's id, 0 for none */

  /* A watcher (the server waiting on a held invocation): @watch_data is
   * set last, atomically; the claim winner or spark_request_unwatch()
   * takes it. */
  gpointer                   watch_data;   /* atomic */
  const SparkRequestWatcher *watcher;

  /* Where the outcome goes; immutable after send. */
  SparkOutcome     outcome;
  gpointer         user_data;         /* ASYNC, FUNC */
  union
  {
    struct
    {
      GObject            *source_object;   /* a reference (the dispatcher) */
      gpointer            source_tag;
      GAsyncReadyCallback callback;
      RequestProgress    *progress;        /* nullable: set before send */
    } async;
    struct
    {
      SparkReplyFunc      reply_func;
      GDestroyNotify      destroy;
    } func;
  } to;
};

G_STATIC_ASSERT (G_STRUCT_OFFSET (SparkRequest, msg) == 0);
/* Every request touches it from two threads: grow it knowingly. */
G_STATIC_ASSERT (sizeof (SparkRequest) <= 224 || GLIB_SIZEOF_VOID_P != 8);

static void spark_request_deliver_on_port (SparkPortItem *item);

/* Blocks: a request with a name and reply type of up to REQUEST_INLINE
 * bytes takes a block of the requester thread's own pool, where it goes
 * back once delivered (requests are made and freed on the requester's
 * thread). */
#define REQUEST_INLINE     96
#define REQUEST_BLOCK      (sizeof (SparkRequest) + REQUEST_INLINE)

static SparkRequest *
request_alloc (gsize size)
{
  if (size <= REQUEST_BLOCK)
    {
      gpointer block = spark_thread_pool_take ();

      /* Only the struct needs zeroing: the name and reply type after it
       * are written whole by the caller. */
      if (block != NULL)
        return memset (block, 0, sizeof (SparkRequest));
      return g_malloc0 (REQUEST_BLOCK);
    }

  return g_malloc0 (size);
}

static void
request_free (SparkRequest *req,
              gsize         size)
{
  if (size <= REQUEST_BLOCK && spark_thread_pool_give (req))
    return;

  g_free (req);
}

static SparkRequest *
request_new (const char         *name,
             GVariant           *parameters,
             const GVariantType *reply_type,
             GCancellable       *cancellable,
             gint                timeout_msec,
             ReplyKind           reply_kind)
{
  gsize len = strlen (name) + 1;
  gsize type_len = reply_type ? g_variant_type_get_string_length (reply_type) : 0;
  SparkRequest *req = request_alloc (sizeof *req + len + type_len);
  char *inline_name = (char *) (req + 1);

  /* One allocation: the request, its name, then its reply type (a
   * GVariantType is its type string, not nul-terminated). */
  memcpy (inline_name, name, len);
  if (reply_type != NULL)
    {
      memcpy (inline_name + len, reply_type, type_len);
      req->reply_type = (const GVariantType *) (inline_name + len);
    }

  req->msg.kind = SPARK_MESSAGE_REQUEST;
  req->name = inline_name;
  req->size = (guint32) (sizeof *req + len + type_len);
  req->msg.parameters = parameters;   /* ours now: sunk by the dispatcher */
  req->ref_count = 2;   /* the sender's side and the completion side */
  req->reply_kind = (guint8) reply_kind;

  if (cancellable != NULL)
    req->cancellable = g_object_ref (cancellable);
  if (timeout_msec > 0)
    req->timeout.deadline = g_get_monotonic_time () + (gint64) timeout_msec * 1000;

  /* Only requests that can end early need a cancellable of their own for
   * the handler; the rest share the server's abort cancellable. */
  if (cancellable != NULL || timeout_msec > 0)
    req->handler_cancellable = g_cancellable_new ();

  return req;
}

SparkRequest *
spark_request_new_sync (const char         *name,
                        GVariant           *parameters,
                        const GVariantType *reply_type,
                        GCancellable       *cancellable,
                        gint                timeout_msec)
{
  SparkRequest *req = request_new (name, parameters, reply_type, cancellable, timeout_msec, REPLY_SYNC);

  spark_outcome_init_sync (&req->outcome);
  return req;
}

SparkRequest *
spark_request_new_async (const char          *name,
                         GVariant            *parameters,
                         const GVariantType  *reply_type,
                         GCancellable        *cancellable,
                         gint                 timeout_msec,
                         GMainContext        *producer,
                         GObject             *source_object,
                         gpointer             source_tag,
                         GAsyncReadyCallback  callback,
                         gpointer             user_data)
{
  SparkRequest *req = request_new (name, parameters, reply_type, cancellable, timeout_msec, REPLY_ASYNC);

  req->to.async.source_object = g_object_ref (source_object);
  req->to.async.source_tag = source_tag;
  req->to.async.callback = callback;
  req->user_data = user_data;
  spark_outcome_init_port (&req->outcome, producer, spark_request_deliver_on_port);
  return req;
}

SparkRequest *
spark_request_new_func (const char         *name,
                        GVariant           *parameters,
                        const GVariantType *reply_type,
                        GCancellable       *cancellable,
                        gint                timeout_msec,
                        GMainContext       *producer,
                        SparkReplyFunc      reply_func,
                        gpointer            user_data,
                        GDestroyNotify      destroy)
{
  SparkRequest *req = request_new (name, parameters, reply_type, cancellable, timeout_msec, REPLY_FUNC);

  req->to.func.reply_func = reply_func;
  req->user_data = user_data;
  req->to.func.destroy = destroy;
  spark_outcome_init_port (&req->outcome, producer, spark_request_deliver_on_port);
  return req;
}

SparkRequest *
spark_request_new_inline (const char     *name,
                          GVariant       *parameters,
                          gint            timeout_msec,
                          gboolean        cancellable,
                          SparkReplyFunc  reply_func,
                          gpointer        user_data)
{
  SparkRequest *req = request_new (name, parameters, NULL, NULL, timeout_msec, REPLY_FUNC);

  /* Without a requester's cancellable, the handler's own is made only
   * when the request can end early from outside. */
  if (cancellable && req->handler_cancellable == NULL)
    req->handler_cancellable = g_cancellable_new ();
  req->to.func.reply_func = reply_func;
  req->user_data = user_data;
  spark_outcome_init_now (&req->outcome, spark_request_deliver_on_port);
  return req;
}

SparkRequest *
spark_request_ref (SparkRequest *req)
{
  g_atomic_int_inc (&req->ref_count);
  return req;
}

void
spark_request_unref (SparkRequest *req)
{
  if (!g_atomic_int_dec_and_test (&req->ref_count))
    return;

  g_assert (req->watch_data == NULL);
  g_assert (req->timeout.iter == NULL);

  g_clear_pointer (&req->msg.parameters, g_variant_unref);
  g_clear_pointer (&req->reply, g_variant_unref);
  g_clear_error (&req->error);
  g_clear_object (&req->cancellable);
  g_clear_object (&req->handler_cancellable);
  spark_outcome_release (&req->outcome);
  if (req->reply_kind == REPLY_ASYNC)
    {
      g_clear_object (&req->to.async.source_object);
      if (req->to.async.progress != NULL)
        {
          g_mutex_clear (&req->to.async.progress->mutex);
          g_free (req->to.async.progress);
        }
    }
  request_free (req, req->size);
}

/* Any message: here because a message may be a request. */
const char *
spark_message_get_name (const SparkMessage *msg)
{
  if (msg->kind == SPARK_MESSAGE_REQUEST)
    return ((const SparkRequest *) (const void *) msg)->name;
  return msg->inline_name;
}

void
spark_message_free (SparkMessage *msg)
{
  if (msg->kind == SPARK_MESSAGE_REQUEST)
    spark_request_unref (spark_request_from_message (msg));
  else
    spark_message_free_plain (msg);
}

void
spark_request_set_sender (SparkRequest *req,
                          guint64       sender)
{
  req->sender = sender;
}

guint64
spark_request_get_sender (SparkRequest *req)
{
  return req->sender;
}

const char *
spark_request_get_name (SparkRequest *req)
{
  return req->name;
}

/* The server's, while it handles the request: (transfer none). */
GVariant *
spark_request_get_parameters (SparkRequest *req)
{
  return req->msg.parameters;
}

/* By the server, once the handler has had them. */
void
spark_request_clear_parameters (SparkRequest *req)
{
  g_clear_pointer (&req->msg.parameters, g_variant_unref);
}

gboolean
spark_request_is_claimed (SparkRequest *req)
{
  return g_atomic_int_get (&req->claimed) != 0;
}

/* How @req ended, SPARK_REQUEST_END_NONE while it has not. */
SparkRequestEnd
spark_request_get_end (SparkRequest *req)
{
  return (SparkRequestEnd) g_atomic_int_get (&req->claimed);
}

/* When the sender sent it (the low 32 bits of the monotonic time, in µs),
 * for one request in SPARK_REQUEST_SAMPLE_EVERY of each sending thread;
 * 0 for the others. */
guint32
spark_request_get_queued_us (SparkRequest *req)
{
  return req->queued_us;
}

GCancellable *
spark_request_get_handler_cancellable (SparkRequest *req)
{
  return req->handler_cancellable;
}

/* Immutable: monotonic µs, 0 for none. A transport that sends the request
 * elsewhere (D-Bus) passes what is left of it on. */
gint64
spark_request_get_deadline (SparkRequest *req)
{
  return req->timeout.deadline;
}

/*
 * spark_request_watch:
 * @data: (transfer full): released with @watcher's release
 *
 * Has the completion of @req call @watcher's func (@data) once, from whoever
 * completes it. At most one watcher, set by the server's thread before
 * anybody can complete the request from the handler.
 */
void
spark_request_watch (SparkRequest              *req,
                     const SparkRequestWatcher *watcher,
                     gpointer                   data)
{
  g_assert (data != NULL && g_atomic_pointer_get (&req->watch_data) == NULL);

  req->watcher = watcher;
  g_atomic_pointer_set (&req->watch_data, data);
}

/* The watcher is done with @req: releases its data unless the completion
 * took it. */
void
spark_request_unwatch (SparkRequest *req)
{
  gpointer data = g_atomic_pointer_exchange (&req->watch_data, NULL);

  if (data != NULL)
    req->watcher->release (data);
}

static gboolean
spark_request_complete_internal (SparkRequest *req,
                                 GVariant     *reply,
                                 GError       *error,
                                 gboolean      from_handler)
{
  gpointer watch_data;

  SparkRequestEnd end;

  g_assert (reply == NULL || !g_variant_is_floating (reply));

  /* How it ended is the claim itself: whoever sees it claimed can read it. */
  if (error == NULL)
    end = SPARK_REQUEST_END_REPLY;
  else if (from_handler)
    end = SPARK_REQUEST_END_FAILED;
  else if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    end = SPARK_REQUEST_END_CANCELLED;
  else if (g_error_matches (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT))
    end = SPARK_REQUEST_END_TIMED_OUT;
  else
    end = SPARK_REQUEST_END_OTHER;

  if (!g_atomic_int_compare_and_exchange (&req->claimed, 0, (gint) end))
    {
      /* Somebody else ended this request first: drop ours quietly. */
      g_clear_pointer (&reply, g_variant_unref);
      g_clear_error (&error);
      return FALSE;
    }

  req->reply = reply;
  req->error = error;

  if (req->timeout.deadline != 0 && spark_timer_remove (&req->timeout))
    spark_request_unref (req);   /* the timer's reference */

  /* Tell a handler still working on it that nobody waits any more. */
  if (!from_handler && req->handler_cancellable != NULL)
    g_cancellable_cancel (req->handler_cancellable);

  /* A server waiting on this request's invocation moves on now. */
  watch_data = g_atomic_pointer_exchange (&req->watch_data, NULL);
  if (watch_data != NULL)
    {
      req->watcher->func (watch_data);
      req->watcher->release (watch_data);
    }

  spark_outcome_deliver (&req->outcome);

  return TRUE;
}

/*
 * spark_request_complete:
 * @reply: (transfer full) (nullable): not floating
 * @error: (transfer full) (nullable)
 *
 * Ends @req from outside its handler (cancellation, timeout, shutdown,
 * refusal). Returns %TRUE if this call decided the outcome.
 */
gboolean
spark_request_complete (SparkRequest *req,
                        GVariant     *reply,
                        GError       *error)
{
  return spark_request_complete_internal (req, reply, error, FALSE);
}

void
spark_request_complete_literal (SparkRequest *req,
                                GQuark        domain,
                                gint          code,
                                const char   *message)
{
  /* Cheap test first: most late completions lose. */
  if (spark_request_is_claimed (req))
    return;

  spark_request_complete_internal (req, NULL, g_error_new_literal (domain, code, message), FALSE);
}

/* The one place a request's G_IO_ERROR_CANCELLED is made. */
void
spark_request_complete_cancelled (SparkRequest *req,
                                  const char   *message)
{
  spark_request_complete_literal (req, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                  message != NULL ? message : "The request was cancelled");
}

/*
 * spark_request_return_reply:
 * @reply: (transfer full) (nullable): what the handler returned, maybe floating
 *   (the caller's own reference for spark_invocation_return_value(), which
 *   sinks before it calls this)
 * @error: (transfer full) (nullable): what the handler set
 *
 * The handler's outcome: checks it against the contract and the requested
 * reply type, then completes @req with it.
 */
gboolean
spark_request_return_reply (SparkRequest *req,
                            GVariant     *reply,
                            GError       *error)
{
  /* The handler gave us its reference (transfer full): take it over,
   * turning a floating one into a real one without adding a reference. */
  if (reply != NULL)
    reply = g_variant_take_ref (reply);

  if (error != NULL && reply != NULL)
    {
      g_critical ("The handler of request “%s” returned a reply and set an error; "
                  "the error wins", req->name);
      g_clear_pointer (&reply, g_variant_unref);
    }
  else if (error == NULL && reply == NULL)
    {
      error = g_error_new (SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY,
                           "The handler of request “%s” gave no reply and no error",
                           req->name);
    }
  else if (reply != NULL &&
           req->reply_type != NULL &&
           !g_variant_is_of_type (reply, req->reply_type))
    {
      error = g_error_new (SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH,
                           "The reply to request “%s” has type “%s”, expected “%.*s”",
                           req->name,
                           g_variant_get_type_string (reply),
                           (int) g_variant_type_get_string_length (req->reply_type),
                           g_variant_type_peek_string (req->reply_type));
      g_clear_pointer (&reply, g_variant_unref);
    }

  return spark_request_complete_internal (req, reply, error, TRUE);
}

/* Sending --------------------------------------------------------------- */

/* The sender, before anything else: a request whose cancellable is
 * cancelled already fails, is never queued, and still completes from the
 * requester's context (or the sync return), never inside the call.
 * Returns TRUE if it did (the sender drops its side). */
gboolean
spark_request_refuse_if_cancelled (SparkRequest *req)
{
  if (req->cancellable == NULL || !g_cancellable_is_cancelled (req->cancellable))
    return FALSE;

  spark_request_complete_cancelled (req, "The request was cancelled before it was sent");
  return TRUE;
}

static void
spark_request_on_cancelled (GCancellable *cancellable,
                            SparkRequest *req)
{
  (void) cancellable;

  /* Runs in the canceller's stack, maybe inside g_cancellable_connect(): do
   * not disconnect here. The request is disarmed when it is delivered. */
  if (!g_atomic_int_get (&req->cancel_armed))
    return;

  spark_request_complete_cancelled (req, NULL);
}

static void
spark_request_on_timeout (SparkTimeout *timeout)
{
  SparkRequest *req = (SparkRequest *) (void *) ((char *) timeout - G_STRUCT_OFFSET (SparkRequest, timeout));

  spark_request_complete_literal (req, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT,
                                  "The request timed out before a reply arrived");
  spark_request_unref (req);   /* the timer's reference */
}

/*
 * spark_request_arm:
 *
 * Starts the clocks that can end @req early: its cancellable and its
 * timeout. Called by the sender once the request's outcome has a place to go,
 * before the request is queued.
 */
void
spark_request_arm (SparkRequest *req)
{
  /* Per sending thread: no shared counter to bounce between senders. */
  static _Thread_local guint n_armed;

  if G_UNLIKELY (++n_armed % SPARK_REQUEST_SAMPLE_EVERY == 0)
    req->queued_us = (guint32) g_get_monotonic_time () | 1;

  /* The cancellable first: its handler id must be stored before anybody
   * else (the timer, the server) can end the request and deliver it. */
  if (req->cancellable != NULL)
    {
      req->cancel_id = g_cancellable_connect (req->cancellable,
                                              G_CALLBACK (spark_request_on_cancelled),
                                              spark_request_ref (req),
                                              (GDestroyNotify) spark_request_unref);
      g_atomic_int_set (&req->cancel_armed, TRUE);

      /* Cancelled between the caller's check and the connect: the handler
       * ran before it was armed, so claim here. */
      if (g_cancellable_is_cancelled (req->cancellable))
        spark_request_complete_cancelled (req, NULL);
    }

  /* The timer holds a reference until it fires or is removed. */
  if (req->timeout.deadline != 0 && !spark_request_is_claimed (req))
    spark_timer_add (&spark_request_ref (req)->timeout, req->timeout.deadline, spark_request_on_timeout);
}

/* Taking the outcome ---------------------------------------------------- */

/* Once the outcome has been delivered, never from a ::cancelled handler. */
static void
spark_request_disarm (SparkRequest *req)
{
  if (req->cancel_id != 0)
    {
      g_cancellable_disconnect (req->cancellable, req->cancel_id);
      req->cancel_id = 0;
    }
}

/* Cancelled before the outcome reached the requester: the requester asked
 * for G_IO_ERROR_CANCELLED, whatever else happened. */
static void
apply_cancel_wins (SparkRequest *req)
{
  if (req->cancellable != NULL &&
      g_cancellable_is_cancelled (req->cancellable) &&
      !g_error_matches (req->error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    {
      g_clear_pointer (&req->reply, g_variant_unref);
      g_clear_error (&req->error);
      req->error = g_error_new_literal (G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                        "The request was cancelled");
    }
}

/*
 * Drops what @req holds for its requester (the dispatcher, the
 * requester's cancellable, the hold on its reply port and with it the
 * context), once its outcome has been delivered: an invocation the handler
 * keeps may hold the request much longer, and must not keep those alive,
 * nor the context spinning for an outcome that is not coming.
 */
static void
spark_request_release_requester (SparkRequest *req)
{
  g_assert (g_atomic_int_get (&req->claimed));

  g_clear_object (&req->cancellable);
  spark_outcome_release (&req->outcome);
  req->user_data = NULL;

  switch ((ReplyKind) req->reply_kind)
    {
    case REPLY_ASYNC:
      g_clear_object (&req->to.async.source_object);
      if (req->to.async.progress != NULL && req->to.async.progress->destroy != NULL)
        g_steal_pointer (&req->to.async.progress->destroy) (req->to.async.progress->data);
      req->to.async.callback = NULL;
      break;

    case REPLY_FUNC:
      req->to.func.reply_func = NULL;
      req->to.func.destroy = NULL;
      break;

    case REPLY_SYNC:
    default:
      break;
    }
}

/*
 * spark_request_wait_sync:
 *
 * The sync caller, once it has sent @req: waits for the outcome on this
 * thread and returns it. Consumes the completion side's reference.
 *
 * Returns: (transfer full): the reply, or %NULL with @error set
 */
GVariant *
spark_request_wait_sync (SparkRequest  *req,
                         GError       **error)
{
  GVariant *reply = NULL;

  g_assert (req->reply_kind == REPLY_SYNC);

  spark_outcome_wait (&req->outcome);
  spark_request_disarm (req);
  apply_cancel_wins (req);

  if (req->error != NULL)
    g_propagate_error (error, g_steal_pointer (&req->error));
  else
    reply = g_steal_pointer (&req->reply);

  spark_request_release_requester (req);
  spark_request_unref (req);

  return reply;
}

/* Runs on the requester's context, from the reply port's batch; for an
 * inline request, on the thread that decided the outcome. */
static void
spark_request_deliver_on_port (SparkPortItem *item)
{
  SparkRequest *req = (SparkRequest *) (void *) ((char *) item - G_STRUCT_OFFSET (SparkRequest, outcome.item));

  spark_request_disarm (req);
  apply_cancel_wins (req);

  /* Progress reports still on their way are dropped from now on. */
  if (req->reply_kind == REPLY_ASYNC && req->to.async.progress != NULL)
    {
      g_mutex_lock (&req->to.async.progress->mutex);
      req->to.async.progress->closed = TRUE;
      g_mutex_unlock (&req->to.async.progress->mutex);
    }

  if (req->reply_kind == REPLY_ASYNC)
    {
      SparkAsyncResultPool *pool = spark_reply_port_get_result_pool (spark_outcome_get_port (&req->outcome));
      SparkAsyncResult *result;

      result = spark_async_result_obtain (pool, req->to.async.source_object, req->to.async.source_tag,
                                          req->user_data,
                                          g_steal_pointer (&req->reply),
                                          g_steal_pointer (&req->error));
      if (req->to.async.callback != NULL)
        req->to.async.callback (req->to.async.source_object, (GAsyncResult *) result, req->user_data);
      spark_async_result_release (pool, result);
    }
  else
    {
      req->to.func.reply_func (req->reply, req->error, req->user_data);
      if (req->to.func.destroy != NULL)
        req->to.func.destroy (req->user_data);
    }

  spark_request_release_requester (req);
  spark_request_unref (req);
}

/* Progress ------------------------------------------------------------------
 *
 * A request whose requester listens for progress carries this. Reports go
 * through the requester's reply port like outcomes, each with a hold of
 * its own, so those a handler's thread sends before its reply arrive
 * before it. A report that arrives after the final outcome (sent by a
 * handler racing a cancel or a timeout) is dropped: the outcome's delivery
 * closes the progress first, under the mutex that senders take to push. */

typedef struct
{
  SparkPortItem   item;
  SparkRequest   *req;      /* a reference */
  SparkReplyPort *port;     /* a hold of its own */
  GVariant       *value;
} ProgressItem;

void
spark_request_set_progress (SparkRequest      *req,
                            SparkProgressFunc  func,
                            gpointer           data,
                            GDestroyNotify     destroy)
{
  g_assert (req->to.async.progress == NULL && req->reply_kind == REPLY_ASYNC);

  req->to.async.progress = g_new0 (RequestProgress, 1);
  g_mutex_init (&req->to.async.progress->mutex);
  req->to.async.progress->func = func;
  req->to.async.progress->data = data;
  req->to.async.progress->destroy = destroy;
}

/* On the requester's context, from the reply port's batch. */
static void
deliver_progress (SparkPortItem *port_item)
{
  ProgressItem *item = (ProgressItem *) (void *) port_item;
  RequestProgress *progress = item->req->to.async.progress;

  /* Written on this same thread, by the outcome's delivery. */
  if (!progress->closed)
    progress->func (item->value, progress->data);

  g_variant_unref (item->value);
  spark_reply_port_release (item->port, FALSE);
  spark_request_unref (item->req);
  g_free (item);
}

/*
 * spark_request_send_progress:
 * @progress: (transfer full): not floating
 *
 * From any thread: delivers @progress to the requester, unless nobody
 * listens or the request has ended.
 */
void
spark_request_send_progress (SparkRequest *req,
                             GVariant     *progress)
{
  RequestProgress *listener = req->reply_kind == REPLY_ASYNC ? req->to.async.progress : NULL;

  if (listener != NULL && !spark_request_is_claimed (req))
    {
      g_mutex_lock (&listener->mutex);
      if (!listener->closed)
        {
          ProgressItem *item = g_new0 (ProgressItem, 1);

          /* Not closed: the outcome's delivery, which releases the
           * request's own hold, has not begun, so the port is held. */
          item->item.deliver = deliver_progress;
          item->req = spark_request_ref (req);
          item->port = spark_outcome_add_port_hold (&req->outcome);
          item->value = g_steal_pointer (&progress);
          spark_reply_port_push (item->port, &item->item);
        }
      g_mutex_unlock (&listener->mutex);
    }

  g_clear_pointer (&progress, g_variant_unref);
}
