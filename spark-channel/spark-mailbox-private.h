/* spark-mailbox-private.h
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include <gio/gio.h>

#include "spark-request-private.h"
#include "spark-transport-private.h"
#include "spark-spin-private.h"

G_BEGIN_DECLS

typedef struct _SparkMailbox    SparkMailbox;
typedef struct _SparkRoomWaiter SparkRoomWaiter;

typedef enum {
  SPARK_MAILBOX_NEW,      /* not started: sends fail with CLOSED */
  SPARK_MAILBOX_OPEN,
  SPARK_MAILBOX_CLOSED,   /* shut down or shutting down */
} SparkMailboxState;


struct _SparkMailbox
{
  gint               ref_count;          /* atomic */

  GMutex             mutex;
  SparkMailboxState  state;              /* mutex */
  SparkMessage      *head;               /* mutex; written atomically, since a spinning server reads it unlocked */
  SparkMessage      *tail;               /* mutex */
  gboolean           consumer_idle;      /* mutex: the server found the queue empty and needs a wakeup */
  GQueue             waiters;            /* mutex: SparkRoomWaiter, first come first served */
  SparkRequest      *current;            /* mutex: the request a synchronous handler is running, if it
                                          * has a cancellable of its own; a reference */
  GSList            *held;               /* mutex: SparkRequest, a reference each: requests whose
                                          * invocation the handler holds */
  GCancellable      *token;              /* mutex: the send_shutdown() token */

  gint               n_queued;           /* mutex; read atomically: counted messages in head..tail */
  gint               n_waiters;          /* atomic mirror of waiters.length */

  GCancellable      *abort_cancellable;  /* immutable: cancelled by an ABORT shutdown */

  /* Set by spark_mailbox_open() under the mutex, immutable afterwards. */
  guint              capacity;           /* 0: unbounded */
  GSource           *source;             /* a reference: the server's source */
  GMainContext      *context;            /* a reference: the server's context */
  GThread           *start_thread;       /* the thread that called start(), NULL for start_in_thread() */

  /* The server's side, on a cache line of its own: it changes per message,
   * and must not bounce between the producers and the server. */
  SparkTransport     transport;          /* immutable: a mailbox is a dispatcher's transport */

  char               server_line[64];
  gint               n_taken;            /* atomic: taken by the server, not handled yet */
  gint               aborting;           /* atomic */
  SparkBlockReturn   command_blocks;     /* handed back by the server, taken by senders */
};

SparkMailbox *spark_mailbox_new              (void);
SparkTransport *spark_mailbox_get_transport  (SparkMailbox  *mailbox);
GMainContext *spark_mailbox_get_context      (SparkMailbox  *mailbox);
SparkMailbox *spark_mailbox_ref              (SparkMailbox  *mailbox);
void          spark_mailbox_unref            (SparkMailbox  *mailbox);

gboolean      spark_mailbox_open             (SparkMailbox  *mailbox,
                                              GSource       *source,
                                              GMainContext  *context,
                                              GThread       *start_thread,
                                              guint          capacity,
                                              GError       **error);
guint         spark_mailbox_get_pending      (SparkMailbox  *mailbox);

gboolean      spark_mailbox_post_request     (SparkMailbox  *mailbox,
                                              SparkRequest  *req,
                                              gboolean       blocking,
                                              GError       **error);
gboolean      spark_mailbox_post_command     (SparkMailbox  *mailbox,
                                              SparkMessage  *msg,
                                              SparkPostMode  mode,
                                              GCancellable  *cancellable,
                                              GTask         *task,
                                              GError       **error);
gboolean      spark_mailbox_send_shutdown    (SparkMailbox  *mailbox,
                                              GCancellable  *token,
                                              GError       **error);
gboolean      spark_mailbox_close            (SparkMailbox  *mailbox,
                                              gboolean       abort);

SparkMessage *spark_mailbox_take             (SparkMailbox  *mailbox,
                                              SparkSpin     *spin);
void          spark_mailbox_release_one      (SparkMailbox  *mailbox);
void          spark_mailbox_set_current      (SparkMailbox  *mailbox,
                                              SparkRequest  *req);
void          spark_mailbox_hold             (SparkMailbox  *mailbox,
                                              SparkRequest  *req);
void          spark_mailbox_unhold           (SparkMailbox  *mailbox,
                                              SparkRequest  *req);
GCancellable *spark_mailbox_finish           (SparkMailbox  *mailbox);
void          spark_mailbox_drop_messages    (SparkMailbox  *mailbox,
                                              SparkMessage  *list,
                                              gboolean       taken);
void          spark_mailbox_wake_server      (SparkMailbox  *mailbox);

G_END_DECLS
