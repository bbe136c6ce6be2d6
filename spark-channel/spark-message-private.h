/* spark-message-private.h: messages, requests and their completion
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include <gio/gio.h>

#include "spark-dispatcher.h"

G_BEGIN_DECLS

typedef struct _SparkMailbox    SparkMailbox;
typedef struct _SparkMessage    SparkMessage;
typedef struct _SparkPortItem   SparkPortItem;
typedef struct _SparkReplyPort  SparkReplyPort;
typedef struct _SparkRequest    SparkRequest;
typedef struct _SparkRequestProgress SparkRequestProgress;
typedef struct _SparkRoomWaiter SparkRoomWaiter;
typedef struct _SparkSyncWaiter SparkSyncWaiter;

typedef enum {
  SPARK_MESSAGE_REQUEST,
  SPARK_MESSAGE_COMMAND,
  SPARK_MESSAGE_SHUTDOWN,
} SparkMessageKind;

/* What the mailbox queues. A request embeds it first and points at its
 * name; a command is this struct alone, its name stored in @inline_name,
 * right after @kind (where the struct's tail padding would be), so that a
 * queued command with a short name is one 24-byte allocation (a 32-byte
 * malloc chunk) plus its GVariant. A flexible array member, not padding:
 * C11 leaves padding unspecified after a store to a member, so a name kept
 * there could be overwritten by a store to @kind. All fields but @next are
 * immutable once the message is queued; @next belongs to whoever holds the
 * message (the mailbox lock while queued, then the server). Use
 * spark_message_get_name(). */
struct _SparkMessage
{
  SparkMessage *next;
  GVariant     *parameters;
  guint8        kind;
  char          inline_name[];   /* commands and shutdowns only */
};

/* An item delivered in a batch on a requester's main context. */
typedef void (*SparkPortDeliverFunc) (SparkPortItem *item);

struct _SparkPortItem
{
  SparkPortItem        *next;   /* the pusher, until pushed; then the port's dispatch */
  SparkPortDeliverFunc  deliver;
};

typedef enum {
  SPARK_REPLY_SYNC,
  SPARK_REPLY_ASYNC,
  SPARK_REPLY_FUNC,
} SparkReplyKind;

/* One request in flight. Reference counted (atomically): the sender's side
 * (the mailbox queue, then the server or a room waiter) holds one reference,
 * the completion side (the sync caller or the reply port delivery) another;
 * a connected cancellable, the timer and an invocation hold one each.
 *
 * Exactly-once: whoever flips @claimed from 0 to 1 (the handler's reply, the
 * requester's cancellable, the timer, a shutdown, a refusal at send time)
 * writes @reply/@error and delivers; everybody else drops what they had. */
struct _SparkRequest
{
  SparkMessage     msg;
  const char      *name;              /* immutable: inline after the struct */
  gsize            size;              /* immutable: of the allocation */

  gint             ref_count;         /* atomic */
  gint             claimed;           /* atomic: 0 -> 1 once */
  gint             done;              /* atomic: SYNC only, set when delivered */
  gint             cancel_armed;      /* atomic: the cancel handler may claim */
  guint8           reply_kind;        /* immutable */
  gboolean         from_handler;      /* written by the claim winner */

  GVariant        *reply;             /* written by the claim winner before delivery */
  GError          *error;             /* same */

  const GVariantType *reply_type;     /* immutable, nullable: inline after the name */
  GCancellable    *cancellable;       /* immutable, nullable: the requester's */
  gulong           cancel_id;         /* written before cancel_armed is set */
  GCancellable    *handler_cancellable; /* immutable, nullable: only with a cancellable or timeout */
  gint64           deadline;          /* immutable: monotonic µs, 0 for none */
  GSequenceIter   *timer_iter;        /* the timer's lock */
  SparkMailbox    *serving;           /* atomic: set while an invocation holds the request */

  /* Where the outcome goes; immutable after send. */
  SparkSyncWaiter *waiter;            /* SYNC */
  SparkReplyPort  *port;              /* ASYNC, FUNC: a hold on it */
  gboolean         port_soon;         /* ASYNC, FUNC: the hold expects the outcome soon */
  SparkPortItem    port_item;
  GObject         *source_object;     /* ASYNC: a reference (the dispatcher) */
  GAsyncReadyCallback callback;       /* ASYNC */
  SparkReplyFunc   reply_func;        /* FUNC */
  SparkRequestProgress *progress;     /* ASYNC, nullable: set before send */
  gpointer         user_data;         /* ASYNC, FUNC */
  GDestroyNotify   destroy;           /* FUNC */
};

/* An adaptive spin: how long its owner polls before it sleeps. Touched
 * only by its owner (the waiting thread, or the server's thread). */
typedef struct
{
  guint  usec;        /* 0: not yet set, take the limit */
  gint64 missed_at;   /* when the last spin gave up, 0 if its event came since */
  guint  skip;        /* waits left that do not spin: the CPU was found oversubscribed */
  guint  backoff;     /* waits to skip after the next preemption */
} SparkSpin;

typedef gboolean (*SparkSpinReadyFunc) (gconstpointer data);

/* A thread's parking place for blocking calls: one per thread. */
struct _SparkSyncWaiter
{
  GMutex    mutex;
  GCond     cond;
  gboolean  parked;   /* the mutex: the owner thread sleeps in cond */
  SparkSpin spin;     /* the owner thread */
};

static inline const char *
spark_message_get_name (const SparkMessage *msg)
{
  if (msg->kind == SPARK_MESSAGE_REQUEST)
    return ((const SparkRequest *) (const void *) msg)->name;
  return msg->inline_name;
}

/* Command blocks on their way back from a server to the threads that send
 * to it (see spark-message.c). One per mailbox: @returned is shared, the
 * rest belongs to the server's thread. */
#define SPARK_COMMAND_CLASSES 2

typedef struct
{
  SparkMessage *freed[SPARK_COMMAND_CLASSES];      /* the server: collected since the last hand-back */
  SparkMessage *freed_tail[SPARK_COMMAND_CLASSES]; /* the server */
  guint         n_freed[SPARK_COMMAND_CLASSES];    /* the server */
  guint         n_returned[SPARK_COMMAND_CLASSES]; /* the server: in @returned, if it is not NULL */

  /* On a cache line of its own: senders with an empty cache read it on
   * every send, and must not pull the server's counters along. */
  char          senders_line[64];
  SparkMessage *returned[SPARK_COMMAND_CLASSES];   /* atomic: a stack for senders to take whole */
  char          senders_line_end[64 - SPARK_COMMAND_CLASSES * sizeof (SparkMessage *)];
} SparkCommandBlocks;

/* Both take @parameters (transfer full, not floating, nullable). @blocks
 * (nullable) is where spare command blocks may be taken from. */
SparkMessage    *spark_message_new_command         (SparkCommandBlocks *blocks,
                                                    const char       *name,
                                                    GVariant         *parameters);
/* By the server's thread, for a command it is done with. */
void             spark_message_recycle_command     (SparkCommandBlocks *blocks,
                                                    SparkMessage     *msg);
void             spark_command_blocks_hand_back    (SparkCommandBlocks *blocks);
void             spark_command_blocks_clear        (SparkCommandBlocks *blocks);
SparkMessage    *spark_message_new_shutdown        (void);
void             spark_message_free                (SparkMessage     *msg);

SparkRequest    *spark_request_new                 (const char          *name,
                                                    GVariant            *parameters,
                                                    const GVariantType  *reply_type,
                                                    GCancellable        *cancellable,
                                                    gint                 timeout_msec,
                                                    SparkReplyKind       reply_kind);
SparkRequest    *spark_request_ref                 (SparkRequest     *req);
void             spark_request_unref               (SparkRequest     *req);
gboolean         spark_request_is_claimed          (SparkRequest     *req);
gboolean         spark_request_complete            (SparkRequest     *req,
                                                    GVariant         *reply,
                                                    GError           *error);
void             spark_request_complete_literal    (SparkRequest     *req,
                                                    GQuark            domain,
                                                    gint              code,
                                                    const char       *message);
gboolean         spark_request_return_reply        (SparkRequest     *req,
                                                    GVariant         *reply,
                                                    GError           *error);
void             spark_request_arm                 (SparkRequest     *req);
void             spark_request_disarm              (SparkRequest     *req);
void             spark_request_release_requester   (SparkRequest     *req);
void             spark_request_set_progress        (SparkRequest      *req,
                                                    SparkProgressFunc  func,
                                                    gpointer           data,
                                                    GDestroyNotify     destroy);
void             spark_request_send_progress       (SparkRequest      *req,
                                                    GVariant          *progress);
void             spark_reply_port_add_hold         (SparkReplyPort   *port);
GCancellable    *spark_request_get_handler_cancellable (SparkRequest *req);

SparkSyncWaiter *spark_sync_waiter_get             (void);
void             spark_sync_waiter_wait            (SparkSyncWaiter  *waiter,
                                                    gint             *flag);
void             spark_sync_waiter_signal          (SparkSyncWaiter  *waiter,
                                                    gint             *flag);

SparkReplyPort  *spark_reply_port_hold             (GMainContext     *producer);
gboolean         spark_reply_port_expects_soon     (SparkReplyPort   *port,
                                                    GMainContext     *producer);
void             spark_reply_port_release          (SparkReplyPort   *port,
                                                    gboolean          soon);
void             spark_reply_port_push             (SparkReplyPort   *port,
                                                    SparkPortItem    *item);
gboolean         spark_reply_port_context_is_expecting (GMainContext *context);
struct _SparkAsyncResultPool *
                 spark_reply_port_get_result_pool  (SparkReplyPort   *port);

void             spark_timer_add                   (SparkRequest     *req);
void             spark_timer_remove                (SparkRequest     *req);

guint            spark_spin_limit                  (void);
gboolean         spark_spin_until                  (SparkSpin          *spin,
                                                    SparkSpinReadyFunc  ready,
                                                    gconstpointer       data);
void             spark_spin_note_event             (SparkSpin          *spin);
gboolean         spark_spin_will_spin              (const SparkSpin    *spin);
void             spark_cpu_relax                   (void);
void             spark_mutex_lock                  (GMutex             *mutex);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (SparkRequest, spark_request_unref)

G_END_DECLS
