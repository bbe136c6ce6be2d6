/* spark-request-private.h: one request in flight, completed exactly once
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Opaque: its fields are touched in spark-request.c only. Built on the
 * message (it embeds one first, so a mailbox queues it), the reply port,
 * the sync waiter and the timer; knows nothing of mailboxes, servers or
 * dispatchers. spark-dispatcher.h is included for the public callback
 * types the constructors take.
 */

#pragma once

#include <gio/gio.h>

#include "spark-dispatcher.h"
#include "spark-message-private.h"

G_BEGIN_DECLS

typedef struct _SparkRequest SparkRequest;

/* How a request ended, fixed by its claim. */
typedef enum {
  SPARK_REQUEST_END_NONE,        /* not yet */
  SPARK_REQUEST_END_REPLY,       /* the handler's reply */
  SPARK_REQUEST_END_FAILED,      /* the handler's error (or a bad reply) */
  SPARK_REQUEST_END_CANCELLED,   /* the requester's cancellable, cancel_all() */
  SPARK_REQUEST_END_TIMED_OUT,
  SPARK_REQUEST_END_OTHER,       /* closed, dropped, refused */
} SparkRequestEnd;

/* One request in this many, per sending thread, carries the time it was
 * sent (for the server's queue-time metrics). */
#define SPARK_REQUEST_SAMPLE_EVERY 8

/* Called once, by whoever completes the request, while the handler still
 * holds its invocation: the server waiting for it moves on (see
 * spark_request_watch()). */
typedef void (*SparkRequestWatchFunc) (gpointer data);

typedef struct
{
  SparkRequestWatchFunc func;      /* called with the data by the completion */
  GDestroyNotify        release;   /* then, or on unwatch: releases the data */
} SparkRequestWatcher;

/* Constructors, one per way the outcome goes back. Each takes @parameters
 * (transfer full, not floating, nullable). The request starts with two
 * references: the sender's side (queued, then the server's) and the
 * completion side (the delivery, or the sync caller). @timeout_msec <= 0:
 * none. @producer (nullable) is the context the server runs on: the
 * requester's context spins for the outcome only if it is another one. */
SparkRequest *spark_request_new_sync   (const char          *name,
                                        GVariant            *parameters,
                                        const GVariantType  *reply_type,
                                        GCancellable        *cancellable,
                                        gint                 timeout_msec);
SparkRequest *spark_request_new_async  (const char          *name,
                                        GVariant            *parameters,
                                        const GVariantType  *reply_type,
                                        GCancellable        *cancellable,
                                        gint                 timeout_msec,
                                        GMainContext        *producer,
                                        GObject             *source_object,
                                        gpointer             source_tag,
                                        GAsyncReadyCallback  callback,
                                        gpointer             user_data);
SparkRequest *spark_request_new_func   (const char          *name,
                                        GVariant            *parameters,
                                        const GVariantType  *reply_type,
                                        GCancellable        *cancellable,
                                        gint                 timeout_msec,
                                        GMainContext        *producer,
                                        SparkReplyFunc       reply_func,
                                        gpointer             user_data,
                                        GDestroyNotify       destroy);
/* No requester context: @reply_func runs once, at once, on whichever
 * thread decides the outcome (the server's, the timer's, a canceller's),
 * so it must not block and must be thread-safe. No reply type, no
 * requester's cancellable: it is ended from outside with
 * spark_request_complete_cancelled(). @cancellable: give the handler a
 * cancellable of its own even without a timeout, cancelled if the
 * request ends early. */
SparkRequest *spark_request_new_inline (const char          *name,
                                        GVariant            *parameters,
                                        gint                 timeout_msec,
                                        gboolean             cancellable,
                                        SparkReplyFunc       reply_func,
                                        gpointer             user_data);
/* Async requests only, before they are sent. */
void          spark_request_set_progress (SparkRequest      *req,
                                          SparkProgressFunc  func,
                                          gpointer           data,
                                          GDestroyNotify     destroy);

SparkRequest *spark_request_ref        (SparkRequest *req);
void          spark_request_unref      (SparkRequest *req);

/* A request is a message: the mailbox queues it as one. */
static inline SparkMessage *
spark_request_get_message (SparkRequest *req)
{
  return (SparkMessage *) (void *) req;
}

static inline SparkRequest *
spark_request_from_message (SparkMessage *msg)
{
  g_assert (msg->kind == SPARK_MESSAGE_REQUEST);
  return (SparkRequest *) (void *) msg;
}

const char   *spark_message_get_name   (const SparkMessage *msg);
void          spark_message_free       (SparkMessage       *msg);

/* The sender's side. @sender: the sending dispatcher's id, for
 * spark_dispatcher_cancel_all(); 0 for none. Set before the request is
 * sent, immutable afterwards. */
void          spark_request_set_sender          (SparkRequest *req,
                                                 guint64       sender);
guint64       spark_request_get_sender          (SparkRequest *req);

/* The sender's side. */
gboolean      spark_request_refuse_if_cancelled (SparkRequest *req);
void          spark_request_arm                 (SparkRequest *req);
GVariant     *spark_request_wait_sync           (SparkRequest *req,
                                                 GError      **error);

/* The server's side. */
const char   *spark_request_get_name            (SparkRequest *req);
GVariant     *spark_request_get_parameters      (SparkRequest *req);
void          spark_request_clear_parameters    (SparkRequest *req);
GCancellable *spark_request_get_handler_cancellable (SparkRequest *req);
gint64        spark_request_get_deadline        (SparkRequest *req);
void          spark_request_watch               (SparkRequest              *req,
                                                 const SparkRequestWatcher *watcher,
                                                 gpointer                   data);
void          spark_request_unwatch             (SparkRequest *req);

/* Outcomes. */
gboolean      spark_request_is_claimed          (SparkRequest *req);
SparkRequestEnd spark_request_get_end           (SparkRequest *req);
guint32       spark_request_get_queued_us       (SparkRequest *req);
gboolean      spark_request_complete            (SparkRequest *req,
                                                 GVariant     *reply,
                                                 GError       *error);
void          spark_request_complete_literal    (SparkRequest *req,
                                                 GQuark        domain,
                                                 gint          code,
                                                 const char   *message);
void          spark_request_complete_cancelled  (SparkRequest *req,
                                                 const char   *message);
gboolean      spark_request_return_reply        (SparkRequest *req,
                                                 GVariant     *reply,
                                                 GError       *error);
void          spark_request_send_progress       (SparkRequest *req,
                                                 GVariant     *progress);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (SparkRequest, spark_request_unref)

G_END_DECLS
