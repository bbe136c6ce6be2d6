/* spark-mailbox-private.h
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include <gio/gio.h>

#include "spark-module-server.h"
#include "spark-request-private.h"
#include "spark-transport-private.h"
#include "spark-spin-private.h"

G_BEGIN_DECLS

typedef struct _SparkMailbox    SparkMailbox;
typedef struct _SparkRoomWaiter SparkRoomWaiter;
typedef struct _SparkKeyEntry   SparkKeyEntry;

/* The mailbox's queues, taken in this order. CONTROL carries what steers
 * the server rather than work for it (the shutdown marker): it is never
 * held back by the capacity, nor counted in pending. HIGH, DEFAULT and
 * LOW are the priorities of work; FIFO within a lane. */
typedef enum {
  SPARK_LANE_CONTROL,
  SPARK_LANE_HIGH,
  SPARK_LANE_DEFAULT,
  SPARK_LANE_LOW,
  SPARK_N_LANES,
} SparkLane;

typedef struct
{
  SparkMessage *head;
  SparkMessage *tail;
  guint         length;
} SparkMailboxLane;

/* The most consumers (workers) a mailbox serves: one bit each in a mask. */
#define SPARK_MAILBOX_MAX_CONSUMERS 64

/* One thread that takes from the mailbox: a server has one, a pool of
 * workers several. Immutable but for the fields marked mutex. */
typedef struct
{
  SparkMailbox     *mailbox;      /* not a reference: the mailbox holds its consumers */
  guint             index;
  GSource          *source;       /* a reference: woken when there is work */
  GMainContext     *context;      /* a reference: where the source is attached */
  SparkRequest     *current;      /* mutex: the request a synchronous handler is running on
                                   * this consumer, if it has a cancellable of its own */
  SparkMailboxLane  broadcasts;   /* mutex: this consumer's copies of broadcast commands */
  SparkMailboxLane  deferred;     /* mutex: messages whose ordering key this consumer holds */
  SparkKeyEntry    *active;       /* mutex: the key of the message it is handling */
} SparkMailboxConsumer;

/* A router's per-route flow control, for the mailbox of the server that
 * serves it: the server implements these (the mailbox knows no router).
 * Called under the mailbox lock; they may take the router's. */
typedef struct
{
  gpointer      data;
  /* The route @name takes, as an identity to compare, never followed
   * (NULL: none); and its overflow policy in *@overflow if it has one of
   * its own (*@has_overflow). From any thread. */
  gconstpointer (*route_of)    (gpointer             data,
                                const char          *name,
                                SparkOverflowPolicy *overflow,
                                gboolean            *has_overflow);
  /* The ordering of the route @name takes, if it has one of its own. On
   * @consumer's thread. */
  gboolean      (*ordering_of) (gpointer             data,
                                guint                consumer,
                                const char          *name,
                                SparkOrdering       *ordering);
  /* The overflow policy dropped a message of @name: counted for its
   * route. From any thread, not under the lock. */
  void          (*dropped)     (gpointer             data,
                                const char          *name);
} SparkMailboxRoutes;

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
  gboolean           finished;           /* mutex: the server has stopped; nothing is queued any more */
  SparkMailboxLane   lanes[SPARK_N_LANES]; /* mutex */
  gint               nonempty;           /* mutex; read atomically (a spinning server reads it
                                          * unlocked): a bit per lane that has messages */
  guint64            idle;               /* mutex: a bit per consumer that found the queue empty
                                          * and needs a wakeup */
  GQueue             waiters;            /* mutex: SparkRoomWaiter, first come first served */
  GHashTable        *keys;               /* mutex: ordering key -> SparkKeyEntry, for a pool that
                                          * orders by key; NULL otherwise */
  GSList            *held;               /* mutex: SparkRequest, a reference each: requests whose
                                          * invocation the handler holds */
  GCancellable      *token;              /* mutex: the send_shutdown() token */

  gint               n_queued;           /* mutex; read atomically: counted messages in the lanes */
  gint               pending_high;       /* mutex: the most pending seen at a send */
  gint               n_waiters;          /* atomic mirror of waiters.length */

  GCancellable      *abort_cancellable;  /* immutable: cancelled by an ABORT shutdown */

  /* Set by spark_mailbox_open() under the mutex, immutable afterwards. */
  guint              capacity;           /* 0: unbounded */
  SparkOverflowPolicy overflow;          /* what a full mailbox does */
  SparkOrdering      ordering;           /* how a pool keeps messages in order */
  const SparkMailboxRoutes *routes;      /* nullable: the server's router's, per route */
  SparkMailboxConsumer *consumers;       /* n_consumers of them */
  guint              n_consumers;
  GMainContext      *context;            /* the first consumer's context (not a reference) */
  GThread           *start_thread;       /* the thread that called start(), NULL for start_in_thread() */

  /* The server's side, on a cache line of its own: it changes per message,
   * and must not bounce between the producers and the server. */
  SparkTransport     transport;          /* immutable: a mailbox is a dispatcher's transport */

  char               server_line[64];
  gint               n_taken;            /* atomic: taken by the server, not handled yet */
  gint               aborting;           /* atomic */
  gint               n_dropped;          /* atomic: commands dropped, not reported yet */
  gint               total_dropped;      /* atomic: messages dropped, requests too, ever */
  SparkBlockReturn   command_blocks;     /* handed back by the server, taken by senders */
};

SparkMailbox *spark_mailbox_new              (void);
SparkTransport *spark_mailbox_get_transport  (SparkMailbox  *mailbox);
GMainContext *spark_mailbox_get_context      (SparkMailbox  *mailbox);
SparkMailbox *spark_mailbox_ref              (SparkMailbox  *mailbox);
void          spark_mailbox_unref            (SparkMailbox  *mailbox);

gboolean      spark_mailbox_open             (SparkMailbox  *mailbox,
                                              guint          n_consumers,
                                              GSource      **sources,
                                              GMainContext **contexts,
                                              GThread       *start_thread,
                                              guint          capacity,
                                              SparkOverflowPolicy overflow,
                                              SparkOrdering  ordering,
                                              const SparkMailboxRoutes *routes,
                                              GError       **error);
guint         spark_mailbox_get_pending      (SparkMailbox  *mailbox);
guint         spark_mailbox_get_pending_high (SparkMailbox  *mailbox);

gboolean      spark_mailbox_post_request     (SparkMailbox  *mailbox,
                                              SparkRequest  *req,
                                              SparkLane      lane,
                                              gboolean       blocking,
                                              GError       **error);
gboolean      spark_mailbox_post_command     (SparkMailbox  *mailbox,
                                              SparkMessage  *msg,
                                              SparkLane      lane,
                                              SparkPostMode  mode,
                                              GCancellable  *cancellable,
                                              GTask         *task,
                                              GError       **error);
void          spark_mailbox_cancel_all       (SparkMailbox  *mailbox,
                                              guint64        sender);
gboolean      spark_mailbox_send_shutdown    (SparkMailbox  *mailbox,
                                              GCancellable  *token,
                                              GError       **error);
gboolean      spark_mailbox_close            (SparkMailbox  *mailbox,
                                              gboolean       abort);

gboolean      spark_mailbox_broadcast_command (SparkMailbox *mailbox,
                                              const char    *name,
                                              GVariant      *parameters,
                                              SparkLane      lane,
                                              GError       **error);

/* One consumer only: consumer 0. */
SparkMessage *spark_mailbox_take             (SparkMailbox  *mailbox,
                                              SparkSpin     *spin,
                                              guint          max,
                                              guint         *n_urgent);
/* Any of several consumers: one message at a time. */
SparkMessage *spark_mailbox_take_one         (SparkMailbox  *mailbox,
                                              guint          consumer);
SparkMessage *spark_mailbox_take_high        (SparkMailbox  *mailbox,
                                              SparkMessage **tail,
                                              guint         *n);

/* Commands the overflow policy dropped since the last take (the server
 * reports them). */
static inline gboolean
spark_mailbox_has_dropped (SparkMailbox *mailbox)
{
  return g_atomic_int_get (&mailbox->n_dropped) != 0;
}

static inline guint
spark_mailbox_take_dropped (SparkMailbox *mailbox)
{
  return (guint) g_atomic_int_exchange (&mailbox->n_dropped, 0);
}

/* Whether high-priority messages wait: read without the lock, by the
 * server between two messages. */
static inline gboolean
spark_mailbox_has_high (SparkMailbox *mailbox)
{
  return (g_atomic_int_get (&mailbox->nonempty) & ((1 << SPARK_LANE_CONTROL) | (1 << SPARK_LANE_HIGH))) != 0;
}
void          spark_mailbox_release_one      (SparkMailbox  *mailbox);
void          spark_mailbox_set_current      (SparkMailbox  *mailbox,
                                              guint          consumer,
                                              SparkRequest  *req);
void          spark_mailbox_hold             (SparkMailbox  *mailbox,
                                              SparkRequest  *req);
void          spark_mailbox_unhold           (SparkMailbox  *mailbox,
                                              SparkRequest  *req);
GCancellable *spark_mailbox_finish           (SparkMailbox  *mailbox);
void          spark_mailbox_drop_messages    (SparkMailbox  *mailbox,
                                              SparkMessage  *list,
                                              gboolean       taken);
void          spark_mailbox_wake_all         (SparkMailbox  *mailbox);

/* A consumer as a request watcher's data: waking it, and the reference on
 * its mailbox the watcher holds. */
SparkMailboxConsumer *spark_mailbox_ref_consumer (SparkMailbox         *mailbox,
                                                  guint                 consumer);
void          spark_mailbox_consumer_wake    (SparkMailboxConsumer *consumer);
void          spark_mailbox_consumer_unref   (SparkMailboxConsumer *consumer);

G_END_DECLS
