/* spark-mailbox.c: the queue between dispatchers and a module server
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Many producers (dispatchers, from any thread) append messages to one
 * singly linked queue under a mutex; one consumer (the server, on its
 * GMainContext) takes the whole queue in one go and handles it message by
 * message. The server's GSource is woken only on the transition from "the
 * server found the queue empty" to "something is queued": one wakeup serves
 * every message that arrives until the server next finds the queue empty.
 *
 * What the hot path costs (unbounded mailbox, no cancellable, no timeout):
 *
 *   one command, send_command() or try_send_command():
 *     allocations: 0 beyond the caller's GVariant: the message (24 bytes
 *                  with a name of up to 6 bytes inline, one 32-byte malloc
 *                  chunk; 40 bytes for up to 22) is a block the server
 *                  handed back for reuse (see spark-message.c), or 1 when
 *                  none is spare yet
 *     locks:       1 mailbox lock by the sender; the server's lock to take
 *                  the queue is shared by the whole batch. Hot locks are
 *                  taken with spark_mutex_lock(), which polls briefly
 *                  before it sleeps: no futex call when contended
 *     wakeups:     0, or 1 if the server was idle (an eventfd write)
 *
 *   one request with request_full():
 *     allocations: 0 beyond the caller's GVariant and the handler's reply:
 *                  the request (name and reply type inline) comes from a
 *                  per-thread pool, since it is made and freed on the
 *                  requester's thread (off with G_SLICE=always-malloc
 *                  unless SPARK_POOLS=1)
 *     locks:       1 mailbox lock by the sender; the server's queue lock
 *                  is shared by its batch. The reply goes onto the
 *                  requester's reply port with one compare-and-swap, and
 *                  the port takes its whole stack with one exchange
 *     wakeups:     0 or 1 of the server (only if it was idle), 0 or 1 of
 *                  the requester's context (only if its port was idle)
 *     atomics:     the claim (one compare-and-swap), reference counts
 *
 *   request_async() adds the async-result object on top of request_full():
 *   a GObject handed to the callback at delivery, and reused for the next
 *   reply on that context when the callback kept nothing of it (see
 *   spark-async-result.c), so that a stream of replies allocates none;
 *   request_sync() delivers to the caller's parked (or spinning) thread
 *   instead of a reply port: one more lock, no GSource.
 *
 *   A cancellable or a timeout adds a GCancellable for the handler, a
 *   signal connection, and (timeout) one entry in the timer thread's queue.
 *   A bounded mailbox adds the mailbox lock on the server side per message
 *   (to admit senders waiting for room in order).
 *
 * Counted, not just claimed: tests/test-allocations.c preloads a malloc
 * counter and sends streams of parameterless messages in bursts of 64. It
 * asserts fewer than 0.05 allocations per message and typically counts 0
 * to 0.008 (commands, request_full, request_async, request_sync alike);
 * with the pools off (SPARK_POOLS=0) a command costs 1.00. When senders
 * outrun the server for long, the queue holds more commands than the
 * pools keep and the surplus is malloc'd: command_mpsc reuses 44% of its
 * blocks, command_throughput 98%. bench/callgrind.sh counts malloc calls
 * too, but valgrind runs one thread at a time in long stretches, so there
 * commands show their block as allocated.
 */

#include "config.h"

#include <string.h>

#include "spark-error.h"
#include "spark-mailbox-private.h"
#include "spark-outcome-private.h"
#include "spark-wake-source-private.h"

typedef enum {
  WAITER_INIT,
  WAITER_WAITING,
  WAITER_ADMITTED,
  WAITER_CANCELLED,
  WAITER_CLOSED,
} WaiterState;

/* A sender waiting for room in a bounded mailbox. Requests wait without
 * blocking anybody (their outcome arrives like any other); commands wait on
 * the sender's thread (SPARK_POST_BLOCK) or complete a GTask on the
 * sender's context (SPARK_POST_ASYNC). */
struct _SparkRoomWaiter
{
  GList            link;         /* mailbox mutex */
  SparkMessage    *msg;          /* owned until admitted */
  gint             state;        /* mailbox mutex: WaiterState */
  SparkLane        lane;         /* immutable: where it goes once admitted */
  SparkMailbox    *mailbox;      /* a reference, for the cancel handler */
  GCancellable    *cancellable;  /* commands only */
  gulong           cancel_id;

  /* Commands: how the wait ended goes to the sender's thread
   * (SPARK_POST_BLOCK) or its context (SPARK_POST_ASYNC, completing
   * @task). A request's outcome goes where the request's does. */
  SparkOutcome     outcome;
  GTask           *task;         /* SPARK_POST_ASYNC */
};

static const SparkTransportVTable mailbox_transport_vtable;

SparkMailbox *
spark_mailbox_new (void)
{
  SparkMailbox *mailbox = g_new0 (SparkMailbox, 1);

  mailbox->transport.vtable = &mailbox_transport_vtable;
  mailbox->ref_count = 1;
  g_mutex_init (&mailbox->mutex);
  g_queue_init (&mailbox->waiters);
  mailbox->state = SPARK_MAILBOX_NEW;
  mailbox->abort_cancellable = g_cancellable_new ();

  return mailbox;
}

/* The server's context once the mailbox has opened, NULL before: from any
 * thread, without the lock (it is set once, at open). */
GMainContext *
spark_mailbox_get_context (SparkMailbox *mailbox)
{
  return g_atomic_pointer_get (&mailbox->context);
}

SparkMailbox *
spark_mailbox_ref (SparkMailbox *mailbox)
{
  g_atomic_int_inc (&mailbox->ref_count);
  return mailbox;
}

void
spark_mailbox_unref (SparkMailbox *mailbox)
{
  if (!g_atomic_int_dec_and_test (&mailbox->ref_count))
    return;

  /* The server empties the queue when it stops; only a mailbox that was
   * never opened can still hold something, and it never queues. */
  for (guint i = 0; i < SPARK_N_LANES; i++)
    g_assert (mailbox->lanes[i].head == NULL);
  g_assert (g_queue_is_empty (&mailbox->waiters));
  g_assert (mailbox->held == NULL);

  for (guint i = 0; i < mailbox->n_consumers; i++)
    {
      SparkMailboxConsumer *c = &mailbox->consumers[i];

      g_assert (c->current == NULL);
      g_assert (c->broadcasts.head == NULL && c->deferred.head == NULL);
      g_source_unref (c->source);
      g_main_context_unref (c->context);
    }
  g_free (mailbox->consumers);
  g_clear_pointer (&mailbox->keys, g_hash_table_unref);
  g_clear_object (&mailbox->token);
  g_clear_object (&mailbox->abort_cancellable);
  spark_block_return_clear (&mailbox->command_blocks);
  g_mutex_clear (&mailbox->mutex);
  g_free (mailbox);
}

struct _SparkKeyEntry
{
  char  *key;
  guint  owner;   /* the consumer that holds the key */
  guint  count;   /* its messages of this key: the one it handles and those deferred to it */
};

static void
key_entry_free (gpointer data)
{
  SparkKeyEntry *entry = data;

  g_free (entry->key);
  g_free (entry);
}

gboolean
spark_mailbox_open (SparkMailbox  *mailbox,
                    guint          n_consumers,
                    GSource      **sources,
                    GMainContext **contexts,
                    GThread       *start_thread,
                    guint          capacity,
                    SparkOverflowPolicy overflow,
                    SparkOrdering  ordering,
                    const SparkMailboxRoutes *routes,
                    GError       **error)
{
  gboolean ret = FALSE;

  g_assert (n_consumers >= 1 && n_consumers <= SPARK_MAILBOX_MAX_CONSUMERS);

  g_mutex_lock (&mailbox->mutex);

  if (mailbox->state == SPARK_MAILBOX_OPEN)
    g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_ALREADY_STARTED,
                         "The module server was started before");
  else if (mailbox->state == SPARK_MAILBOX_CLOSED)
    g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED,
                         "The module server was shut down before it was started");
  else
    {
      mailbox->state = SPARK_MAILBOX_OPEN;
      mailbox->consumers = g_new0 (SparkMailboxConsumer, n_consumers);
      mailbox->n_consumers = n_consumers;
      for (guint i = 0; i < n_consumers; i++)
        {
          mailbox->consumers[i].mailbox = mailbox;
          mailbox->consumers[i].index = i;
          mailbox->consumers[i].source = g_source_ref (sources[i]);
          mailbox->consumers[i].context = g_main_context_ref (contexts[i]);
        }
      /* Each consumer is idle until a message comes. */
      mailbox->idle = n_consumers == 64 ? G_MAXUINT64 : (G_GUINT64_CONSTANT (1) << n_consumers) - 1;
      if (n_consumers > 1 && (ordering != SPARK_ORDERING_NONE || routes != NULL))
        mailbox->keys = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, key_entry_free);
      mailbox->routes = routes;
      /* Read unlocked by senders: see spark_mailbox_get_context(). */
      g_atomic_pointer_set (&mailbox->context, contexts[0]);
      mailbox->start_thread = start_thread;
      mailbox->capacity = capacity;
      mailbox->overflow = overflow;
      mailbox->ordering = ordering;
      ret = TRUE;
    }

  g_mutex_unlock (&mailbox->mutex);

  return ret;
}

static inline gint
pending (SparkMailbox *mailbox)
{
  return g_atomic_int_get (&mailbox->n_queued) + g_atomic_int_get (&mailbox->n_taken);
}

/* The most messages pending at once, seen when one was queued. */
guint
spark_mailbox_get_pending_high (SparkMailbox *mailbox)
{
  gint n;

  g_mutex_lock (&mailbox->mutex);
  n = mailbox->pending_high;
  g_mutex_unlock (&mailbox->mutex);

  return (guint) MAX (0, n);
}

/* Under the lock: a take moves its batch from one count to the other,
 * which a reader between the two would see twice. */
guint
spark_mailbox_get_pending (SparkMailbox *mailbox)
{
  gint n;

  g_mutex_lock (&mailbox->mutex);
  n = pending (mailbox);
  g_mutex_unlock (&mailbox->mutex);

  return (guint) MAX (0, n);
}

/* Wakes the consumers of @consumers, a mask: they are immutable once the
 * mailbox is open (and only woken once open); the mailbox holds their
 * contexts alive. */
static inline void
spark_mailbox_wake (SparkMailbox *mailbox,
                    guint64       consumers)
{
  while (consumers != 0)
    {
      guint i = (guint) g_bit_nth_lsf ((gulong) (consumers & G_MAXULONG), -1);

      if (G_UNLIKELY ((consumers & G_MAXULONG) == 0))
        i = 32 + (guint) g_bit_nth_lsf ((gulong) (consumers >> 32), -1);
      consumers &= consumers - 1;
      spark_wake_source_wake ((SparkWakeSource *) mailbox->consumers[i].source);
    }
}

static inline guint64
all_consumers (SparkMailbox *mailbox)
{
  return mailbox->n_consumers == 64 ? G_MAXUINT64 : (G_GUINT64_CONSTANT (1) << mailbox->n_consumers) - 1;
}

/* Every consumer, busy or not: a stop is coming. */
void
spark_mailbox_wake_all (SparkMailbox *mailbox)
{
  spark_mailbox_wake (mailbox, all_consumers (mailbox));
}

SparkMailboxConsumer *
spark_mailbox_ref_consumer (SparkMailbox *mailbox,
                            guint         consumer)
{
  spark_mailbox_ref (mailbox);
  return &mailbox->consumers[consumer];
}

void
spark_mailbox_consumer_wake (SparkMailboxConsumer *consumer)
{
  spark_wake_source_wake ((SparkWakeSource *) consumer->source);
}

void
spark_mailbox_consumer_unref (SparkMailboxConsumer *consumer)
{
  spark_mailbox_unref (consumer->mailbox);
}

static void
set_closed_error_locked (SparkMailbox  *mailbox,
                         GError       **error)
{
  if (mailbox->state == SPARK_MAILBOX_NEW)
    g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED,
                         "The mailbox is closed: its module server has not been started");
  else
    g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED,
                         "The mailbox is closed: its module server is shut down or shutting down");
}

/* Whether the calling thread is one that must serve this mailbox: a thread
 * blocking here would wait for itself. */
static gboolean
would_deadlock_locked (SparkMailbox *mailbox)
{
  if (mailbox->start_thread != NULL && mailbox->start_thread == g_thread_self ())
    return TRUE;

  for (guint i = 0; i < mailbox->n_consumers; i++)
    if (g_main_context_is_owner (mailbox->consumers[i].context))
      return TRUE;

  return FALSE;
}

static gboolean
set_would_deadlock_error (GError **error)
{
  g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_WOULD_DEADLOCK,
                       "A blocking call was made on a thread that must serve it: "
                       "it would wait for itself");
  return FALSE;
}

/* Shutdown markers steer the server: they take no room and are not
 * pending work. */
static inline gboolean
is_counted (SparkMessage *msg)
{
  return !spark_message_is_control (msg);
}

static inline void
enqueue_locked (SparkMailbox *mailbox,
                SparkMessage *msg,
                SparkLane     lane,
                guint64      *wake)
{
  SparkMailboxLane *l = &mailbox->lanes[lane];

  msg->next = NULL;
  if (l->tail != NULL)
    l->tail->next = msg;
  else
    {
      l->head = msg;
      /* Read unlocked by a spinning server. */
      g_atomic_int_set (&mailbox->nonempty, mailbox->nonempty | (1 << lane));
    }
  l->tail = msg;
  l->length++;

  if (is_counted (msg))
    {
      gint now_pending;

      g_atomic_int_inc (&mailbox->n_queued);
      now_pending = pending (mailbox);
      if (now_pending > mailbox->pending_high)
        mailbox->pending_high = now_pending;
    }

  /* One idle consumer is enough for one message. */
  if (mailbox->idle != 0)
    {
      guint64 first = mailbox->idle & -mailbox->idle;

      mailbox->idle &= ~first;
      *wake |= first;
    }
}

/* Everything queued, lane by lane in order, as one list; the lanes are
 * empty afterwards and n_queued is the caller's to move. */
/* Messages of the lanes before the work of default priority: the
 * control and high lanes, at the front of a batch. */
static inline guint
urgent_length_locked (SparkMailbox *mailbox)
{
  return mailbox->lanes[SPARK_LANE_CONTROL].length + mailbox->lanes[SPARK_LANE_HIGH].length;
}

static SparkMessage *
detach_all_locked (SparkMailbox *mailbox)
{
  gint nonempty = mailbox->nonempty;
  SparkMessage *head = NULL;
  SparkMessage *tail = NULL;

  if (nonempty == 0)
    return NULL;

  /* The usual case: work in one lane only. */
  if ((nonempty & (nonempty - 1)) == 0)
    {
      SparkMailboxLane *l = &mailbox->lanes[g_bit_nth_lsf ((gulong) nonempty, -1)];

      head = l->head;
      l->head = l->tail = NULL;
      l->length = 0;
      g_atomic_int_set (&mailbox->nonempty, 0);
      return head;
    }

  for (guint i = 0; i < SPARK_N_LANES; i++)
    {
      SparkMailboxLane *l = &mailbox->lanes[i];

      if (l->head == NULL)
        continue;
      if (tail != NULL)
        tail->next = l->head;
      else
        head = l->head;
      tail = l->tail;
      l->head = l->tail = NULL;
      l->length = 0;
    }
  g_atomic_int_set (&mailbox->nonempty, 0);

  return head;
}

/* At most @max messages, in lane order; *@n_counted: how many of them
 * count in n_queued. */
static SparkMessage *
detach_some_locked (SparkMailbox *mailbox,
                    guint         max,
                    gint         *n_counted)
{
  SparkMessage *head = NULL;
  SparkMessage **link = &head;
  guint taken = 0;

  *n_counted = 0;
  for (guint i = 0; i < SPARK_N_LANES && taken < max; i++)
    {
      SparkMailboxLane *l = &mailbox->lanes[i];

      while (l->head != NULL && taken < max)
        {
          SparkMessage *msg = l->head;

          l->head = msg->next;
          l->length--;
          msg->next = NULL;
          *link = msg;
          link = &msg->next;
          taken++;
          if (is_counted (msg))
            (*n_counted)++;
        }
      if (l->head == NULL)
        {
          l->tail = NULL;
          g_atomic_int_set (&mailbox->nonempty, mailbox->nonempty & ~(1 << i));
        }
    }

  return head;
}

static inline SparkRoomWaiter *
waiter_from_link (GList *link)
{
  return (SparkRoomWaiter *) (void *) ((char *) link - G_STRUCT_OFFSET (SparkRoomWaiter, link));
}

static gboolean
waiter_is_dead (SparkRoomWaiter *waiter)
{
  return waiter->msg->kind == SPARK_MESSAGE_REQUEST &&
         spark_request_is_claimed (spark_request_from_message (waiter->msg));
}

static void
unlink_waiter_locked (SparkMailbox    *mailbox,
                      SparkRoomWaiter *waiter)
{
  g_queue_unlink (&mailbox->waiters, &waiter->link);
  g_atomic_int_add (&mailbox->n_waiters, -1);
}

/* Drops requests at the head of the waiters that ended while waiting (the
 * requester cancelled, or the timeout fired): they hold no place in line. */
static void
prune_dead_waiters_locked (SparkMailbox  *mailbox,
                           GSList       **dead)
{
  GList *link;

  while ((link = mailbox->waiters.head) != NULL && waiter_is_dead (waiter_from_link (link)))
    {
      SparkRoomWaiter *waiter = waiter_from_link (link);

      unlink_waiter_locked (mailbox, waiter);
      *dead = g_slist_prepend (*dead, waiter);
    }
}

static gboolean
has_room_locked (SparkMailbox  *mailbox,
                 GSList       **dead)
{
  if (mailbox->capacity == 0)
    return TRUE;

  prune_dead_waiters_locked (mailbox, dead);

  return g_queue_is_empty (&mailbox->waiters) &&
         (guint) pending (mailbox) < mailbox->capacity;
}

static void
free_dead_waiters (GSList *dead)
{
  while (dead != NULL)
    {
      SparkRoomWaiter *waiter = dead->data;

      dead = g_slist_delete_link (dead, dead);
      spark_message_free (waiter->msg);
      g_free (waiter);
    }
}

/* Moves waiters into the queue while there is room, in order. */
static void
admit_locked (SparkMailbox  *mailbox,
              GSList       **resolved,
              GSList       **dead,
              guint64       *wake)
{
  GList *link;

  while ((link = mailbox->waiters.head) != NULL &&
         (guint) pending (mailbox) < mailbox->capacity)
    {
      SparkRoomWaiter *waiter = waiter_from_link (link);

      unlink_waiter_locked (mailbox, waiter);

      if (waiter_is_dead (waiter))
        {
          *dead = g_slist_prepend (*dead, waiter);
          continue;
        }

      /* Decided here, under the lock: a cancel that comes later finds the
       * message admitted and leaves it alone. */
      enqueue_locked (mailbox, g_steal_pointer (&waiter->msg), waiter->lane, wake);
      waiter->state = WAITER_ADMITTED;
      *resolved = g_slist_prepend (*resolved, waiter);
    }

  *resolved = g_slist_reverse (*resolved);
}

static void
deliver_waiter_on_port (SparkPortItem *item)
{
  SparkRoomWaiter *waiter = (SparkRoomWaiter *) (void *) ((char *) item - G_STRUCT_OFFSET (SparkRoomWaiter, outcome.item));

  if (waiter->cancel_id != 0)
    g_cancellable_disconnect (waiter->cancellable, waiter->cancel_id);

  switch ((WaiterState) waiter->state)
    {
    case WAITER_ADMITTED:
      g_task_return_boolean (waiter->task, TRUE);
      break;

    case WAITER_CANCELLED:
      g_task_return_new_error (waiter->task, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                               "Sending the command was cancelled while it waited for room");
      break;

    case WAITER_CLOSED:
      g_task_return_new_error (waiter->task, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED,
                               "The mailbox was closed while the command waited for room");
      break;

    case WAITER_INIT:
    case WAITER_WAITING:
    default:
      g_assert_not_reached ();
    }

  g_clear_pointer (&waiter->msg, spark_message_free);
  g_clear_object (&waiter->task);
  g_clear_object (&waiter->cancellable);
  spark_outcome_release (&waiter->outcome);
  g_clear_pointer (&waiter->mailbox, spark_mailbox_unref);
  g_free (waiter);
}

/* Tells a waiter's sender how its wait ended; never under the lock. */
static void
notify_waiter (SparkRoomWaiter *waiter)
{
  /* A command's waiter has an outcome of its own: a thread or a task. */
  if (waiter->outcome.sync || waiter->task != NULL)
    spark_outcome_deliver (&waiter->outcome);
  else
    {
      /* A request: admitted, it now lives in the queue; closed, it fails. */
      if (waiter->state == WAITER_CLOSED)
        {
          spark_request_complete_literal (spark_request_from_message (waiter->msg),
                                          SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED,
                                          "The mailbox was closed while the request waited for room");
          spark_message_free (waiter->msg);
        }
      g_free (waiter);
    }
}

static void
notify_waiters (GSList *resolved)
{
  while (resolved != NULL)
    {
      SparkRoomWaiter *waiter = resolved->data;

      resolved = g_slist_delete_link (resolved, resolved);
      notify_waiter (waiter);
    }
}

static void
on_waiter_cancelled (GCancellable    *cancellable,
                     SparkRoomWaiter *waiter)
{
  SparkMailbox *mailbox = waiter->mailbox;
  gboolean resolved = FALSE;

  g_mutex_lock (&mailbox->mutex);
  if (waiter->state == WAITER_WAITING)
    {
      unlink_waiter_locked (mailbox, waiter);
      waiter->state = WAITER_CANCELLED;
      resolved = TRUE;
    }
  g_mutex_unlock (&mailbox->mutex);

  if (resolved)
    notify_waiter (waiter);
}

/* A command found the mailbox full: wait for room, on this thread or
 * through @task. Returns, for SPARK_POST_BLOCK, whether the command went in. */
static gboolean
wait_for_room (SparkMailbox  *mailbox,
               SparkMessage  *msg,
               SparkLane      lane,
               SparkPostMode  mode,
               GCancellable  *cancellable,
               GTask         *task,
               GError       **error)
{
  SparkRoomWaiter *waiter = g_new0 (SparkRoomWaiter, 1);
  GSList *dead = NULL;
  guint64 wake = 0;
  gboolean ret;
  WaiterState state;

  waiter->msg = msg;
  waiter->lane = lane;
  waiter->state = WAITER_INIT;
  waiter->mailbox = spark_mailbox_ref (mailbox);

  if (mode == SPARK_POST_BLOCK)
    spark_outcome_init_sync (&waiter->outcome);
  else
    {
      waiter->task = g_object_ref (task);
      spark_outcome_init_port (&waiter->outcome, mailbox->context, deliver_waiter_on_port);
    }

  /* Connect before the waiter can be seen, so its handler id is known to
   * whoever delivers it. Until then the handler finds WAITER_INIT and does
   * nothing; the check under the lock below covers that window. */
  if (cancellable != NULL)
    {
      waiter->cancellable = g_object_ref (cancellable);
      waiter->cancel_id = g_cancellable_connect (cancellable, G_CALLBACK (on_waiter_cancelled),
                                                 waiter, NULL);
    }

  g_mutex_lock (&mailbox->mutex);
  if (mailbox->state != SPARK_MAILBOX_OPEN)
    waiter->state = WAITER_CLOSED;
  else if (cancellable != NULL && g_cancellable_is_cancelled (cancellable))
    waiter->state = WAITER_CANCELLED;
  else if (has_room_locked (mailbox, &dead))
    {
      enqueue_locked (mailbox, g_steal_pointer (&waiter->msg), lane, &wake);
      waiter->state = WAITER_ADMITTED;
    }
  else
    {
      waiter->state = WAITER_WAITING;
      g_queue_push_tail_link (&mailbox->waiters, &waiter->link);
      g_atomic_int_inc (&mailbox->n_waiters);
    }
  state = waiter->state;
  g_mutex_unlock (&mailbox->mutex);

  free_dead_waiters (dead);
  spark_mailbox_wake (mailbox, wake);

  if (mode == SPARK_POST_ASYNC)
    {
      if (state != WAITER_WAITING)
        notify_waiter (waiter);
      return TRUE;
    }

  if (state == WAITER_WAITING)
    spark_outcome_wait (&waiter->outcome);

  /* Not inside the handler: safe to disconnect (waits for a handler
   * running on another thread, which only takes the mailbox lock). */
  if (waiter->cancel_id != 0)
    g_cancellable_disconnect (cancellable, waiter->cancel_id);

  switch ((WaiterState) waiter->state)
    {
    case WAITER_ADMITTED:
      ret = TRUE;
      break;

    case WAITER_CANCELLED:
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                           "Sending the command was cancelled while it waited for room");
      ret = FALSE;
      break;

    case WAITER_CLOSED:
      g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED,
                           "The mailbox was closed while the command waited for room");
      ret = FALSE;
      break;

    case WAITER_INIT:
    case WAITER_WAITING:
    default:
      g_assert_not_reached ();
    }

  g_clear_pointer (&waiter->msg, spark_message_free);
  g_clear_object (&waiter->cancellable);
  spark_mailbox_unref (waiter->mailbox);
  g_free (waiter);

  return ret;
}

/* Overflow policies ------------------------------------------------------------
 *
 * Under the lock, for a message that found no room, with a policy other
 * than WAIT: what becomes of it. The victim (the new message, or one taken
 * out of the queue) is dealt with after the lock by drop_victim(). */

typedef enum {
  OVERFLOW_WAIT,      /* as WAIT: the caller waits for room (or fails a try) */
  OVERFLOW_FULL,      /* fail the send with FULL */
  OVERFLOW_TAKEN,     /* the send succeeded; *victim was dropped */
} OverflowAction;

static const char *
overflow_policy_name (SparkOverflowPolicy policy)
{
  switch (policy)
    {
    case SPARK_OVERFLOW_DROP_NEWEST:
      return "drop-newest";
    case SPARK_OVERFLOW_DROP_OLDEST:
      return "drop-oldest";
    case SPARK_OVERFLOW_COALESCE:
      return "coalesce";
    case SPARK_OVERFLOW_COALESCE_KEY:
      return "coalesce-key";
    case SPARK_OVERFLOW_FAIL:
      return "fail";
    case SPARK_OVERFLOW_WAIT:
    default:
      return "wait";
    }
}

static const char *message_key (SparkMessage *msg);

/* Takes @msg, whose predecessor in @lane is @prev (NULL: the head), out
 * of the queue. */
static void
unlink_locked (SparkMailbox *mailbox,
               SparkLane     lane,
               SparkMessage *prev,
               SparkMessage *msg)
{
  SparkMailboxLane *l = &mailbox->lanes[lane];

  if (prev != NULL)
    prev->next = msg->next;
  else
    l->head = msg->next;
  if (l->tail == msg)
    l->tail = prev;
  if (l->head == NULL)
    g_atomic_int_set (&mailbox->nonempty, mailbox->nonempty & ~(1 << lane));
  l->length--;
  msg->next = NULL;
  g_atomic_int_add (&mailbox->n_queued, -1);
}

static inline gconstpointer
route_of_locked (SparkMailbox *mailbox,
                 SparkMessage *msg)
{
  SparkOverflowPolicy unused;
  gboolean has;

  return mailbox->routes->route_of (mailbox->routes->data, spark_message_get_name (msg), &unused, &has);
}

/* The oldest queued work message of the lowest priority, no higher than
 * @lane's, taken out of the queue; NULL if every queued one is more
 * urgent. With @route_only, only a message of @route counts. */
static SparkMessage *
take_oldest_locked (SparkMailbox  *mailbox,
                    SparkLane      lane,
                    gboolean       route_only,
                    gconstpointer  route)
{
  for (gint i = SPARK_N_LANES - 1; i >= (gint) lane && i > SPARK_LANE_CONTROL; i--)
    {
      SparkMessage *prev = NULL;

      for (SparkMessage *msg = mailbox->lanes[i].head; msg != NULL; prev = msg, msg = msg->next)
        if (!route_only || route_of_locked (mailbox, msg) == route)
          {
            unlink_locked (mailbox, (SparkLane) i, prev, msg);
            return msg;
          }
    }

  return NULL;
}

/* The newest queued command of @like's name in @lane (and of its key,
 * with @by_key), taken out of the queue; NULL if there is none. */
static SparkMessage *
take_newest_command_locked (SparkMailbox *mailbox,
                            SparkLane     lane,
                            SparkMessage *like,
                            gboolean      by_key)
{
  SparkMailboxLane *l = &mailbox->lanes[lane];
  SparkMessage *found = NULL, *found_prev = NULL, *prev = NULL;
  const char *key = by_key ? message_key (like) : NULL;

  for (SparkMessage *msg = l->head; msg != NULL; prev = msg, msg = msg->next)
    if (msg->kind == SPARK_MESSAGE_COMMAND && strcmp (msg->inline_name, like->inline_name) == 0 &&
        (!by_key || g_strcmp0 (message_key (msg), key) == 0))
      {
        found = msg;
        found_prev = prev;
      }

  if (found != NULL)
    unlink_locked (mailbox, lane, found_prev, found);

  return found;
}

static OverflowAction
overflow_locked (SparkMailbox        *mailbox,
                 SparkMessage        *msg,
                 SparkLane            lane,
                 guint64             *wake,
                 SparkMessage       **victim,
                 SparkOverflowPolicy *used)
{
  SparkOverflowPolicy policy = mailbox->overflow;
  gconstpointer route = NULL;
  gboolean route_only = FALSE;
  SparkMessage *old;

  /* A router's route may have a policy of its own: then what it drops is
   * the route's own. */
  if (mailbox->routes != NULL)
    {
      SparkOverflowPolicy route_policy;

      route = mailbox->routes->route_of (mailbox->routes->data, spark_message_get_name (msg),
                                         &route_policy, &route_only);
      if (route_only)
        policy = route_policy;
    }
  *used = policy;

  switch (policy)
    {
    case SPARK_OVERFLOW_FAIL:
      return OVERFLOW_FULL;

    case SPARK_OVERFLOW_DROP_NEWEST:
      *victim = msg;
      return OVERFLOW_TAKEN;

    case SPARK_OVERFLOW_DROP_OLDEST:
      /* The waiters' queue is empty under this policy: nobody waits. */
      old = take_oldest_locked (mailbox, lane, route_only, route);
      if (old == NULL)
        {
          *victim = msg;
          return OVERFLOW_TAKEN;
        }
      enqueue_locked (mailbox, msg, lane, wake);
      *victim = old;
      return OVERFLOW_TAKEN;

    case SPARK_OVERFLOW_COALESCE:
    case SPARK_OVERFLOW_COALESCE_KEY:
      /* The queued one goes, the new one joins the end of the queue: no
       * sender's messages change order. (A command's name says its route.) */
      if (msg->kind != SPARK_MESSAGE_COMMAND ||
          (old = take_newest_command_locked (mailbox, lane, msg,
                                             policy == SPARK_OVERFLOW_COALESCE_KEY)) == NULL)
        return OVERFLOW_WAIT;
      enqueue_locked (mailbox, msg, lane, wake);
      *victim = old;
      return OVERFLOW_TAKEN;

    case SPARK_OVERFLOW_WAIT:
    default:
      return OVERFLOW_WAIT;
    }
}

/* After the lock: a dropped request completes with DROPPED, a dropped
 * command is counted for the server's messages-dropped. */
static void
drop_victim (SparkMailbox        *mailbox,
             SparkMessage        *victim,
             SparkOverflowPolicy  policy)
{
  if (victim->kind == SPARK_MESSAGE_REQUEST)
    {
      g_autofree char *message = g_strdup_printf ("The mailbox was full (capacity %u): the request "
                                                  "was dropped (overflow policy %s)",
                                                  mailbox->capacity,
                                                  overflow_policy_name (policy));

      spark_request_complete_literal (spark_request_from_message (victim),
                                      SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_DROPPED, message);
    }
  else
    g_atomic_int_inc (&mailbox->n_dropped);
  g_atomic_int_inc (&mailbox->total_dropped);
  if (mailbox->routes != NULL)
    mailbox->routes->dropped (mailbox->routes->data, spark_message_get_name (victim));

  spark_message_free (victim);
}

static gboolean
set_full_error (SparkMailbox  *mailbox,
                GError       **error)
{
  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL,
               "The mailbox is full (capacity %u) or other senders wait for room",
               mailbox->capacity);
  return FALSE;
}

/*
 * spark_mailbox_post_request:
 * @req: (transfer full): the sender's reference, kept on failure
 * @blocking: whether the caller will block until the outcome
 *
 * Queues @req, or puts it in line for room. On failure nothing was queued
 * and the caller still owns @req.
 */
gboolean
spark_mailbox_post_request (SparkMailbox  *mailbox,
                            SparkRequest  *req,
                            SparkLane      lane,
                            gboolean       blocking,
                            GError       **error)
{
  GSList *dead = NULL;
  guint64 wake = 0;
  SparkMessage *victim = NULL;
  SparkOverflowPolicy policy = mailbox->overflow;
  OverflowAction action;

  spark_mutex_lock (&mailbox->mutex);

  if G_UNLIKELY (mailbox->state != SPARK_MAILBOX_OPEN)
    {
      set_closed_error_locked (mailbox, error);
      g_mutex_unlock (&mailbox->mutex);
      return FALSE;
    }

  if (blocking && would_deadlock_locked (mailbox))
    {
      g_mutex_unlock (&mailbox->mutex);
      return set_would_deadlock_error (error);
    }

  if G_LIKELY (has_room_locked (mailbox, &dead))
    {
      enqueue_locked (mailbox, spark_request_get_message (req), lane, &wake);
    }
  else if ((mailbox->overflow != SPARK_OVERFLOW_WAIT || mailbox->routes != NULL) &&
           (action = overflow_locked (mailbox, spark_request_get_message (req), lane,
                                      &wake, &victim, &policy)) != OVERFLOW_WAIT)
    {
      if (action == OVERFLOW_FULL)
        {
          g_mutex_unlock (&mailbox->mutex);
          return set_full_error (mailbox, error);
        }
    }
  else
    {
      SparkRoomWaiter *waiter = g_new0 (SparkRoomWaiter, 1);

      waiter->msg = spark_request_get_message (req);
      waiter->lane = lane;
      waiter->state = WAITER_WAITING;
      g_queue_push_tail_link (&mailbox->waiters, &waiter->link);
      g_atomic_int_inc (&mailbox->n_waiters);
    }

  g_mutex_unlock (&mailbox->mutex);

  free_dead_waiters (dead);
  if (victim != NULL)
    drop_victim (mailbox, victim, policy);
  spark_mailbox_wake (mailbox, wake);

  return TRUE;
}

/*
 * spark_mailbox_post_command:
 * @msg: (transfer full): freed on failure
 *
 * For SPARK_POST_ASYNC, returns TRUE once @task is taken care of: it is
 * completed (through the sender's reply port) when the command goes in or
 * its wait ends; on FALSE the caller completes @task with @error.
 */
gboolean
spark_mailbox_post_command (SparkMailbox  *mailbox,
                            SparkMessage  *msg,
                            SparkLane      lane,
                            SparkPostMode  mode,
                            GCancellable  *cancellable,
                            GTask         *task,
                            GError       **error)
{
  GSList *dead = NULL;
  guint64 wake = 0;
  gboolean queued = FALSE;
  SparkMessage *victim = NULL;
  SparkOverflowPolicy policy = mailbox->overflow;
  OverflowAction action;

  spark_mutex_lock (&mailbox->mutex);

  if G_UNLIKELY (mailbox->state != SPARK_MAILBOX_OPEN)
    {
      set_closed_error_locked (mailbox, error);
      g_mutex_unlock (&mailbox->mutex);
      spark_message_free (msg);
      return FALSE;
    }

  if G_LIKELY (has_room_locked (mailbox, &dead))
    {
      enqueue_locked (mailbox, msg, lane, &wake);
      queued = TRUE;
    }
  else if ((mailbox->overflow != SPARK_OVERFLOW_WAIT || mailbox->routes != NULL) &&
           (action = overflow_locked (mailbox, msg, lane, &wake, &victim, &policy)) != OVERFLOW_WAIT)
    {
      if (action == OVERFLOW_FULL)
        {
          g_mutex_unlock (&mailbox->mutex);
          free_dead_waiters (dead);
          spark_message_free (msg);
          return set_full_error (mailbox, error);
        }
      queued = TRUE;
    }
  else if (mode == SPARK_POST_BLOCK && would_deadlock_locked (mailbox))
    {
      g_mutex_unlock (&mailbox->mutex);
      free_dead_waiters (dead);
      spark_message_free (msg);
      return set_would_deadlock_error (error);
    }

  g_mutex_unlock (&mailbox->mutex);

  free_dead_waiters (dead);
  if (victim != NULL)
    drop_victim (mailbox, victim, policy);
  spark_mailbox_wake (mailbox, wake);

  if (queued)
    {
      if (mode == SPARK_POST_ASYNC)
        g_task_return_boolean (task, TRUE);
      return TRUE;
    }

  if (mode == SPARK_POST_TRY)
    {
      spark_message_free (msg);
      return set_full_error (mailbox, error);
    }

  return wait_for_room (mailbox, msg, lane, mode, cancellable, task, error);
}

static GSList *
take_waiters_locked (SparkMailbox *mailbox)
{
  GSList *resolved = NULL;
  GList *link;

  while ((link = mailbox->waiters.head) != NULL)
    {
      SparkRoomWaiter *waiter = waiter_from_link (link);

      unlink_waiter_locked (mailbox, waiter);
      waiter->state = WAITER_CLOSED;
      resolved = g_slist_prepend (resolved, waiter);
    }

  return g_slist_reverse (resolved);
}

gboolean
spark_mailbox_send_shutdown (SparkMailbox  *mailbox,
                             GCancellable  *token,
                             GError       **error)
{
  GSList *resolved;
  guint64 wake = 0;

  g_mutex_lock (&mailbox->mutex);

  if (mailbox->state != SPARK_MAILBOX_OPEN)
    {
      set_closed_error_locked (mailbox, error);
      g_mutex_unlock (&mailbox->mutex);
      return FALSE;
    }

  mailbox->state = SPARK_MAILBOX_CLOSED;
  if (token != NULL)
    mailbox->token = g_object_ref (token);

  /* Neither counted in pending nor held back by the capacity. */
  enqueue_locked (mailbox, spark_message_new_shutdown (), SPARK_LANE_CONTROL, &wake);
  resolved = take_waiters_locked (mailbox);

  g_mutex_unlock (&mailbox->mutex);

  notify_waiters (resolved);
  spark_mailbox_wake (mailbox, wake);

  return TRUE;
}

/*
 * spark_mailbox_cancel_all:
 *
 * Fails with CANCELLED the requests of @sender that are queued (in the
 * lanes, or waiting for room) and tells the server, through the control
 * lane, to fail those it has taken but not started. A request that ends
 * this way is skipped by the server when it comes to it.
 */
void
spark_mailbox_cancel_all (SparkMailbox *mailbox,
                          guint64       sender)
{
  GPtrArray *matched = g_ptr_array_new_with_free_func ((GDestroyNotify) spark_request_unref);
  guint64 wake = 0;

  g_mutex_lock (&mailbox->mutex);
  if (mailbox->state != SPARK_MAILBOX_NEW && !mailbox->finished)
    {
      for (guint i = SPARK_LANE_HIGH; i < SPARK_N_LANES; i++)
        for (SparkMessage *msg = mailbox->lanes[i].head; msg != NULL; msg = msg->next)
          if (msg->kind == SPARK_MESSAGE_REQUEST &&
              spark_request_get_sender (spark_request_from_message (msg)) == sender)
            g_ptr_array_add (matched, spark_request_ref (spark_request_from_message (msg)));

      /* A pool's messages deferred to the worker that holds their key. */
      for (guint i = 0; i < mailbox->n_consumers; i++)
        for (SparkMessage *msg = mailbox->consumers[i].deferred.head; msg != NULL; msg = msg->next)
          if (msg->kind == SPARK_MESSAGE_REQUEST &&
              spark_request_get_sender (spark_request_from_message (msg)) == sender)
            g_ptr_array_add (matched, spark_request_ref (spark_request_from_message (msg)));

      for (GList *link = mailbox->waiters.head; link != NULL; link = link->next)
        {
          SparkRoomWaiter *waiter = waiter_from_link (link);

          if (waiter->msg != NULL && waiter->msg->kind == SPARK_MESSAGE_REQUEST &&
              spark_request_get_sender (spark_request_from_message (waiter->msg)) == sender)
            g_ptr_array_add (matched, spark_request_ref (spark_request_from_message (waiter->msg)));
        }

      enqueue_locked (mailbox, spark_message_new_cancel_all (sender), SPARK_LANE_CONTROL, &wake);
    }
  g_mutex_unlock (&mailbox->mutex);

  /* Claimed here: the server and the room waiters drop them unhandled. */
  for (guint i = 0; i < matched->len; i++)
    spark_request_complete_cancelled (g_ptr_array_index (matched, i),
                                      "The request was cancelled by spark_dispatcher_cancel_all()");
  g_ptr_array_unref (matched);

  spark_mailbox_wake (mailbox, wake);
}

/* Fails or drops messages that will never be handled: @taken says they
 * were the server's (counted in n_taken) rather than detached from the
 * queue (whose count the caller reset under the lock). */
void
spark_mailbox_drop_messages (SparkMailbox *mailbox,
                             SparkMessage *list,
                             gboolean      taken)
{
  while (list != NULL)
    {
      SparkMessage *msg = list;

      list = msg->next;
      msg->next = NULL;

      if (taken && !spark_message_is_control (msg))
        g_atomic_int_add (&mailbox->n_taken, -1);

      if (msg->kind == SPARK_MESSAGE_REQUEST)
        spark_request_complete_literal (spark_request_from_message (msg),
                                        SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED,
                                        "The module server was shut down before it handled the request");

      spark_message_free (msg);
    }
}

/*
 * spark_mailbox_close:
 * @abort: %TRUE to drop what is queued and cancel the running handler
 *
 * Closes the mailbox for a shutdown. In DRAIN mode a shutdown marker is
 * queued behind everything already there (unless send_shutdown() queued one
 * before). Returns %TRUE if the mailbox had never been opened: there is no
 * server to wait for.
 */
gboolean
spark_mailbox_close (SparkMailbox *mailbox,
                     gboolean      abort)
{
  SparkMessage *dropped = NULL;
  GPtrArray *current = NULL;
  GSList *held = NULL;
  GSList *resolved;
  gboolean was_new;
  guint64 wake = 0;

  g_mutex_lock (&mailbox->mutex);

  was_new = mailbox->state == SPARK_MAILBOX_NEW;

  if (mailbox->state == SPARK_MAILBOX_OPEN && !abort)
    enqueue_locked (mailbox, spark_message_new_shutdown (), SPARK_LANE_CONTROL, &wake);
  mailbox->state = SPARK_MAILBOX_CLOSED;

  resolved = take_waiters_locked (mailbox);

  if (abort && !was_new)
    {
      g_atomic_int_set (&mailbox->aborting, TRUE);
      dropped = detach_all_locked (mailbox);
      g_atomic_int_set (&mailbox->n_queued, 0);
      current = g_ptr_array_new_with_free_func ((GDestroyNotify) spark_request_unref);
      for (guint i = 0; i < mailbox->n_consumers; i++)
        if (mailbox->consumers[i].current != NULL)
          g_ptr_array_add (current, spark_request_ref (mailbox->consumers[i].current));
      held = g_slist_copy_deep (mailbox->held, (GCopyFunc) (void (*) (void)) spark_request_ref, NULL);
      wake = all_consumers (mailbox);
    }

  g_mutex_unlock (&mailbox->mutex);

  notify_waiters (resolved);
  spark_mailbox_drop_messages (mailbox, dropped, FALSE);

  if (abort && !was_new)
    {
      g_cancellable_cancel (mailbox->abort_cancellable);

      for (GSList *l = held; l != NULL; l = l->next)
        spark_request_complete_literal (l->data, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED,
                                        "The module server was shut down (abort) while the request was being handled");
      g_slist_free_full (held, (GDestroyNotify) spark_request_unref);

      for (guint i = 0; i < current->len; i++)
        {
          SparkRequest *req = g_ptr_array_index (current, i);

          if (spark_request_get_handler_cancellable (req) != NULL)
            g_cancellable_cancel (spark_request_get_handler_cancellable (req));
        }
      g_ptr_array_unref (current);
    }

  spark_mailbox_wake (mailbox, wake);

  return was_new;
}

/* A consumer takes what is queued, lanes in order: everything at once
 * with @max 0 (one consumer, the fast path), or at most @max messages,
 * so that several consumers (a pool of workers) can share one mailbox.
 * An empty result means the consumer goes idle: the next sender wakes
 * it. With @spin, a server that was
 * just busy polls a little first: a message seen while spinning costs no
 * wakeup. The decision to go idle is taken under the lock, so no wakeup is
 * lost. */
static gboolean
queue_is_not_empty (gconstpointer data)
{
  SparkMailbox *mailbox = (SparkMailbox *) data;

  return g_atomic_int_get (&mailbox->nonempty) != 0;
}

SparkMessage *
spark_mailbox_take (SparkMailbox *mailbox,
                    SparkSpin    *spin,
                    guint         max,
                    guint        *n_urgent)
{
  SparkMessage *batch;
  gint n_counted;
  guint urgent;

  /* Between batches: the command blocks of the last one go back. */
  spark_block_return_hand_back (&mailbox->command_blocks);

  if (spin != NULL && !queue_is_not_empty (mailbox))
    spark_spin_until (spin, queue_is_not_empty, mailbox);

  spark_mutex_lock (&mailbox->mutex);
  urgent = urgent_length_locked (mailbox);
  if (max == 0)
    {
      /* One consumer, the fast path: the whole queue. */
      batch = detach_all_locked (mailbox);
      n_counted = g_atomic_int_get (&mailbox->n_queued);
    }
  else
    {
      urgent = MIN (urgent, max);
      batch = detach_some_locked (mailbox, max, &n_counted);
    }

  if (batch == NULL)
    mailbox->idle |= 1;
  else
    {
      /* The batch moves from the producers' count to the server's. */
      g_atomic_int_add (&mailbox->n_taken, n_counted);
      g_atomic_int_add (&mailbox->n_queued, -n_counted);
    }
  g_mutex_unlock (&mailbox->mutex);

  if (n_urgent != NULL)
    *n_urgent = urgent;

  return batch;
}

/* Pools ---------------------------------------------------------------------
 *
 * Several consumers (a pool's workers) take one message at a time. With an
 * ordering, a message whose key another consumer holds is deferred to that
 * consumer, behind the ones of that key it has already; a consumer holds a
 * key from its take of a message of that key to its next take. */

static inline void
lane_push (SparkMailboxLane *l,
           SparkMessage     *msg)
{
  msg->next = NULL;
  if (l->tail != NULL)
    l->tail->next = msg;
  else
    l->head = msg;
  l->tail = msg;
  l->length++;
}

static inline SparkMessage *
lane_pop (SparkMailboxLane *l)
{
  SparkMessage *msg = l->head;

  if (msg != NULL)
    {
      l->head = msg->next;
      if (l->head == NULL)
        l->tail = NULL;
      l->length--;
      msg->next = NULL;
    }
  return msg;
}

/* The message's key (see SPARK_ORDERING_KEY), NULL if it has none: valid
 * while the message lives (it points into its parameters). */
static const char *
message_key (SparkMessage *msg)
{
  GVariant *parameters = msg->parameters;
  const char *key = NULL;

  if (parameters == NULL)
    return NULL;
  if (g_variant_is_of_type (parameters, G_VARIANT_TYPE_STRING) ||
      g_variant_is_of_type (parameters, G_VARIANT_TYPE_OBJECT_PATH) ||
      g_variant_is_of_type (parameters, G_VARIANT_TYPE_SIGNATURE))
    return g_variant_get_string (parameters, NULL);
  if (g_variant_is_container (parameters) &&
      g_variant_type_is_tuple (g_variant_get_type (parameters)) &&
      g_variant_get_type_string (parameters)[1] != '\0' &&
      strchr ("sog", g_variant_get_type_string (parameters)[1]) != NULL)
    {
      /* The child's string lives in the parameters' data (or is the child
       * the parameters keep): it outlives this reference. */
      GVariant *child = g_variant_get_child_value (parameters, 0);

      key = g_variant_get_string (child, NULL);
      g_variant_unref (child);
    }
  return key;
}

/* The message's ordering key for @consumer's take, NULL if it is in no
 * order: by its route's ordering, if it has one, or the server's. */
static const char *
ordering_key (SparkMailbox *mailbox,
              guint         consumer,
              SparkMessage *msg)
{
  SparkOrdering ordering = mailbox->ordering;

  if (mailbox->routes != NULL)
    mailbox->routes->ordering_of (mailbox->routes->data, consumer, spark_message_get_name (msg), &ordering);

  switch (ordering)
    {
    case SPARK_ORDERING_NAME:
      return spark_message_get_name (msg);

    case SPARK_ORDERING_KEY:
      return message_key (msg);

    case SPARK_ORDERING_NONE:
    default:
      return NULL;
    }
}

static void
release_key_locked (SparkMailbox         *mailbox,
                    SparkMailboxConsumer *c)
{
  SparkKeyEntry *entry = g_steal_pointer (&c->active);

  if (entry != NULL && --entry->count == 0)
    g_hash_table_remove (mailbox->keys, entry->key);
}

SparkMessage *
spark_mailbox_take_one (SparkMailbox *mailbox,
                        guint         consumer)
{
  SparkMailboxConsumer *c = &mailbox->consumers[consumer];
  SparkMessage *msg;

  spark_mutex_lock (&mailbox->mutex);
  release_key_locked (mailbox, c);

  for (;;)
    {
      const char *key;
      SparkKeyEntry *entry;
      gint n_counted;

      /* Its own first: they were taken from the lanes already. */
      if ((msg = lane_pop (&c->broadcasts)) != NULL)
        break;
      if ((msg = lane_pop (&c->deferred)) != NULL)
        {
          c->active = g_hash_table_lookup (mailbox->keys, ordering_key (mailbox, consumer, msg));
          g_assert (c->active != NULL && c->active->owner == consumer);
          break;
        }

      msg = detach_some_locked (mailbox, 1, &n_counted);
      if (msg == NULL)
        {
          mailbox->idle |= G_GUINT64_CONSTANT (1) << consumer;
          break;
        }
      if (n_counted > 0)
        {
          g_atomic_int_inc (&mailbox->n_taken);
          g_atomic_int_add (&mailbox->n_queued, -1);
        }

      if (mailbox->keys == NULL || spark_message_is_control (msg) ||
          (key = ordering_key (mailbox, consumer, msg)) == NULL)
        break;

      entry = g_hash_table_lookup (mailbox->keys, key);
      if (entry == NULL)
        {
          entry = g_new (SparkKeyEntry, 1);
          entry->key = g_strdup (key);
          entry->owner = consumer;
          entry->count = 1;
          g_hash_table_insert (mailbox->keys, entry->key, entry);
          c->active = entry;
          break;
        }

      /* Held by another consumer, which is busy with it: it handles this
       * one after the ones of this key it has. (Not this consumer: it
       * released its key above and has none deferred.) */
      g_assert (entry->owner != consumer);
      entry->count++;
      lane_push (&mailbox->consumers[entry->owner].deferred, msg);
    }

  g_mutex_unlock (&mailbox->mutex);

  return msg;
}

/* A command for every consumer: each handles a copy before it takes
 * anything else. Not held back by the capacity; counted in pending until
 * each copy is handled. */
gboolean
spark_mailbox_broadcast_command (SparkMailbox  *mailbox,
                                 const char    *name,
                                 GVariant      *parameters,
                                 SparkLane      lane,
                                 GError       **error)
{
  SparkMessage *copies[SPARK_MAILBOX_MAX_CONSUMERS];
  guint n;
  guint64 wake = 0;

  g_mutex_lock (&mailbox->mutex);
  if (mailbox->state != SPARK_MAILBOX_OPEN)
    {
      set_closed_error_locked (mailbox, error);
      g_mutex_unlock (&mailbox->mutex);
      return FALSE;
    }
  n = mailbox->n_consumers;
  g_mutex_unlock (&mailbox->mutex);

  /* Made outside the lock; the consumers are fixed once open. */
  for (guint i = 0; i < n; i++)
    copies[i] = spark_message_new_command (NULL, name, parameters ? g_variant_ref (parameters) : NULL);

  g_mutex_lock (&mailbox->mutex);
  if (mailbox->state != SPARK_MAILBOX_OPEN)
    {
      set_closed_error_locked (mailbox, error);
      g_mutex_unlock (&mailbox->mutex);
      for (guint i = 0; i < n; i++)
        spark_message_free (copies[i]);
      return FALSE;
    }
  if (n == 1)
    enqueue_locked (mailbox, copies[0], lane, &wake);
  else
    {
      for (guint i = 0; i < n; i++)
        lane_push (&mailbox->consumers[i].broadcasts, copies[i]);
      g_atomic_int_add (&mailbox->n_taken, (gint) n);
      wake = mailbox->idle;
      mailbox->idle = 0;
    }
  g_mutex_unlock (&mailbox->mutex);

  spark_mailbox_wake (mailbox, wake);

  return TRUE;
}

/* The high-priority messages queued since the consumer's last take, to
 * handle before the rest of its batch; *@tail: the last of them, *@n:
 * how many. */
SparkMessage *
spark_mailbox_take_high (SparkMailbox  *mailbox,
                         SparkMessage **tail,
                         guint         *n)
{
  SparkMailboxLane *control = &mailbox->lanes[SPARK_LANE_CONTROL];
  SparkMailboxLane *high = &mailbox->lanes[SPARK_LANE_HIGH];
  SparkMessage *head;
  guint n_high;

  spark_mutex_lock (&mailbox->mutex);
  /* Control messages first, then the high lane, as a take orders them. */
  if (control->head != NULL)
    {
      head = control->head;
      control->tail->next = high->head;
      *tail = high->tail != NULL ? high->tail : control->tail;
    }
  else
    {
      head = high->head;
      *tail = high->tail;
    }
  n_high = high->length;
  *n = control->length + n_high;
  control->head = control->tail = NULL;
  control->length = 0;
  high->head = high->tail = NULL;
  high->length = 0;
  g_atomic_int_set (&mailbox->nonempty,
                    mailbox->nonempty & ~((1 << SPARK_LANE_CONTROL) | (1 << SPARK_LANE_HIGH)));
  /* The high ones are work: they move from the producers' count to the
   * server's. */
  g_atomic_int_add (&mailbox->n_taken, (gint) n_high);
  g_atomic_int_add (&mailbox->n_queued, -(gint) n_high);
  g_mutex_unlock (&mailbox->mutex);

  return head;
}

/* The server starts handling one taken message: it no longer counts as
 * pending, and in a bounded mailbox its place goes to the next waiter. */
void
spark_mailbox_release_one (SparkMailbox *mailbox)
{
  GSList *resolved = NULL;
  GSList *dead = NULL;
  guint64 wake = 0;

  if (mailbox->capacity == 0)
    {
      g_atomic_int_add (&mailbox->n_taken, -1);
      return;
    }

  /* Under the lock: a sender that found no room must either see this
   * place freed or be admitted by us. */
  g_mutex_lock (&mailbox->mutex);
  g_atomic_int_add (&mailbox->n_taken, -1);
  admit_locked (mailbox, &resolved, &dead, &wake);
  g_mutex_unlock (&mailbox->mutex);

  free_dead_waiters (dead);
  notify_waiters (resolved);
  /* The server is running: admitted messages are taken on its next pass. */
}

/* The server tells an ABORT which request a synchronous handler is
 * running (NULL: none), so that its cancellable is cancelled. */
void
spark_mailbox_set_current (SparkMailbox *mailbox,
                           guint         consumer,
                           SparkRequest *req)
{
  SparkMailboxConsumer *c = &mailbox->consumers[consumer];
  SparkRequest *old;

  g_mutex_lock (&mailbox->mutex);
  old = c->current;
  c->current = req ? spark_request_ref (req) : NULL;
  g_mutex_unlock (&mailbox->mutex);

  if (old != NULL)
    spark_request_unref (old);
}

/* The server tells an ABORT which requests' invocations the handler
 * holds: they fail with CLOSED. From before the handler is called until
 * the request has ended. */
void
spark_mailbox_hold (SparkMailbox *mailbox,
                    SparkRequest *req)
{
  g_mutex_lock (&mailbox->mutex);
  mailbox->held = g_slist_prepend (mailbox->held, spark_request_ref (req));
  g_mutex_unlock (&mailbox->mutex);
}

void
spark_mailbox_unhold (SparkMailbox *mailbox,
                      SparkRequest *req)
{
  GSList *link;

  g_mutex_lock (&mailbox->mutex);
  link = g_slist_find (mailbox->held, req);
  g_assert (link != NULL);
  mailbox->held = g_slist_delete_link (mailbox->held, link);
  g_mutex_unlock (&mailbox->mutex);

  spark_request_unref (req);
}

/* The server has stopped: fails whatever an abort left behind and hands
 * back the send_shutdown() token (transfer full, nullable) to cancel. */
GCancellable *
spark_mailbox_finish (SparkMailbox *mailbox)
{
  SparkMessage *leftovers;
  SparkMessage *taken = NULL;
  GCancellable *token;

  g_mutex_lock (&mailbox->mutex);
  g_assert (mailbox->state == SPARK_MAILBOX_CLOSED);
  mailbox->finished = TRUE;
  leftovers = detach_all_locked (mailbox);
  g_atomic_int_set (&mailbox->n_queued, 0);
  /* A pool's: what its consumers had of their own, taken already. */
  for (guint i = 0; i < mailbox->n_consumers; i++)
    {
      SparkMailboxConsumer *c = &mailbox->consumers[i];
      SparkMessage *msg;

      c->active = NULL;
      while ((msg = lane_pop (&c->broadcasts)) != NULL || (msg = lane_pop (&c->deferred)) != NULL)
        {
          msg->next = taken;
          taken = msg;
        }
    }
  if (mailbox->keys != NULL)
    g_hash_table_remove_all (mailbox->keys);
  token = g_steal_pointer (&mailbox->token);
  g_mutex_unlock (&mailbox->mutex);

  spark_mailbox_drop_messages (mailbox, leftovers, FALSE);
  spark_mailbox_drop_messages (mailbox, taken, TRUE);

  return token;
}

/* The transport ---------------------------------------------------------- */

static inline SparkMailbox *
mailbox_of (SparkTransport *transport)
{
  return (SparkMailbox *) (void *) ((char *) transport - G_STRUCT_OFFSET (SparkMailbox, transport));
}

static void
mailbox_transport_ref (SparkTransport *transport)
{
  spark_mailbox_ref (mailbox_of (transport));
}

static void
mailbox_transport_unref (SparkTransport *transport)
{
  spark_mailbox_unref (mailbox_of (transport));
}

static GMainContext *
mailbox_transport_get_context (SparkTransport *transport)
{
  return spark_mailbox_get_context (mailbox_of (transport));
}

static inline SparkLane
lane_of (SparkPriority priority)
{
  switch (priority)
    {
    case SPARK_PRIORITY_HIGH:
      return SPARK_LANE_HIGH;
    case SPARK_PRIORITY_LOW:
      return SPARK_LANE_LOW;
    case SPARK_PRIORITY_DEFAULT:
    default:
      return SPARK_LANE_DEFAULT;
    }
}

static gboolean
mailbox_transport_post_request (SparkTransport *transport,
                                SparkRequest   *req,
                                SparkPriority   priority,
                                gboolean        blocking,
                                GError        **error)
{
  return spark_mailbox_post_request (mailbox_of (transport), req, lane_of (priority), blocking, error);
}

static gboolean
mailbox_transport_post_command (SparkTransport *transport,
                                const char     *name,
                                GVariant       *parameters,
                                SparkPriority   priority,
                                SparkPostMode   mode,
                                GCancellable   *cancellable,
                                GTask          *task,
                                GError        **error)
{
  SparkMailbox *mailbox = mailbox_of (transport);

  /* In a block this mailbox's server may have handed back. */
  return spark_mailbox_post_command (mailbox,
                                     spark_message_new_command (&mailbox->command_blocks, name, parameters),
                                     lane_of (priority), mode, cancellable, task, error);
}

static gboolean
mailbox_transport_send_shutdown (SparkTransport *transport,
                                 GCancellable   *token,
                                 GError        **error)
{
  return spark_mailbox_send_shutdown (mailbox_of (transport), token, error);
}

static void
mailbox_transport_cancel_all (SparkTransport *transport,
                              guint64         sender)
{
  spark_mailbox_cancel_all (mailbox_of (transport), sender);
}

static gboolean
mailbox_transport_broadcast_command (SparkTransport *transport,
                                     const char     *name,
                                     GVariant       *parameters,
                                     SparkPriority   priority,
                                     GError        **error)
{
  gboolean ret = spark_mailbox_broadcast_command (mailbox_of (transport), name, parameters,
                                                  lane_of (priority), error);

  g_clear_pointer (&parameters, g_variant_unref);
  return ret;
}

static gboolean
mailbox_transport_would_deadlock (SparkTransport *transport)
{
  SparkMailbox *mailbox = mailbox_of (transport);
  gboolean ret;

  g_mutex_lock (&mailbox->mutex);
  ret = would_deadlock_locked (mailbox);
  g_mutex_unlock (&mailbox->mutex);
  return ret;
}

static const SparkTransportVTable mailbox_transport_vtable = {
  .ref = mailbox_transport_ref,
  .unref = mailbox_transport_unref,
  .get_context = mailbox_transport_get_context,
  .post_request = mailbox_transport_post_request,
  .post_command = mailbox_transport_post_command,
  .send_shutdown = mailbox_transport_send_shutdown,
  .cancel_all = mailbox_transport_cancel_all,
  .broadcast_command = mailbox_transport_broadcast_command,
  .would_deadlock = mailbox_transport_would_deadlock,
};

/* The mailbox as a dispatcher's transport: the in-process one. */
SparkTransport *
spark_mailbox_get_transport (SparkMailbox *mailbox)
{
  return &mailbox->transport;
}
