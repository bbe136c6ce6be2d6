/* spark-message.c: messages, requests and their exactly-once completion
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include "config.h"

#include <string.h>

#include "spark-async-result-private.h"
#include "spark-error.h"
#include "spark-mailbox-private.h"
#include "spark-message-private.h"

/* How long a waiting thread polls before it sleeps: a blocking caller
 * waiting for its outcome, a server thread that was just busy waiting for
 * the next message, and a context with replies due. Waking a sleeping
 * thread costs 20-100 µs here (more on an idle machine, whose cores sleep
 * deeper), a hand-off seen while spinning well under one. A spin only pays
 * if it outlasts the other side's wakeup once: then both sides are awake
 * and hand messages over without sleeping. So the spin is long enough for
 * that (100 µs), and adapts: a miss halves the next spin (down to 1/16),
 * and a hit, or a near miss (the event came less than one full spin after
 * giving up), restores it.
 *
 * A spin only pays while the thread it waits for is running. Three rules
 * keep it from burning a CPU that thread needs, or that nothing needs:
 *
 * - After a miss, no spin until the awaited event has come: an event that
 *   did not come within a spin is not imminent (a reply that takes seconds,
 *   while the context wakes 60 times a second for a UI tick), and every
 *   further wakeup would spin for nothing.
 * - The spinner yields its CPU each time it looks at the clock (about every
 *   microsecond): on a loaded machine the thread it waits for may be
 *   waiting for this very CPU, and runs at once; on an idle one the yield
 *   returns at once. Yielding every 6 µs instead left sequential requests
 *   at half the floor's rate with one core kept busy; every 1 µs, above it.
 * - A spin that finds it was preempted (the clock jumped between two polls)
 *   gives up, and the next waits do not spin, for twice as many each time
 *   it happens again: the CPU is oversubscribed, and sleeping hands it to
 *   whoever needs it. A spin that pays halves that number.
 *
 * SPARK_SPIN=N sets the longest spin in µs; SPARK_SPIN=0 turns spinning
 * off. */
#define SPARK_SPIN_DEFAULT_USEC 100
#define SPIN_PREEMPTED_USEC     50    /* a gap between two looks at the clock that means preemption */
#define SPIN_BACKOFF_MAX        64    /* waits skipped at most after a preemption */

guint
spark_spin_limit (void)
{
  static gsize limit;

  if (g_once_init_enter (&limit))
    {
      const char *env = g_getenv ("SPARK_SPIN");
      gsize value = SPARK_SPIN_DEFAULT_USEC;

      if (env != NULL && *env != '\0')
        value = (gsize) g_ascii_strtoull (env, NULL, 10);

      /* g_once_init_leave() takes no zero: store value + 1. */
      g_once_init_leave (&limit, value + 1);
    }

  return (guint) (limit - 1);
}

/* Whether the next wait of @spin polls at all (see the rules above). */
gboolean
spark_spin_will_spin (const SparkSpin *spin)
{
  return spark_spin_limit () > 0 && spin->missed_at == 0 && spin->skip == 0;
}

/* Polls @ready until it returns TRUE or the spin's current budget is
 * spent; adapts the budget to how spinning went. */
gboolean
spark_spin_until (SparkSpin         *spin,
                  SparkSpinReadyFunc ready,
                  gconstpointer      data)
{
  guint limit = spark_spin_limit ();
  gint64 deadline;
  gint64 last;

  if (!spark_spin_will_spin (spin))
    {
      if (spin->skip > 0 && spin->missed_at == 0)
        spin->skip--;
      return ready (data);
    }

  if (spin->usec == 0 || spin->usec > limit)
    spin->usec = limit;

  last = g_get_monotonic_time ();
  deadline = last + spin->usec;

  for (guint i = 1; ; i++)
    {
      gint64 now;

      if (ready (data))
        {
          spin->usec = limit;   /* it pays: spin fully next time */
          spin->backoff /= 2;   /* and back off less after a preemption */
          return TRUE;
        }
      spark_cpu_relax ();

      /* The clock every 16 polls (a pause is ~50 ns here). */
      if ((i & 15) != 0)
        continue;

      now = g_get_monotonic_time ();
      if (now - last > SPIN_PREEMPTED_USEC)
        {
          spin->backoff = CLAMP (spin->backoff * 2, 1, SPIN_BACKOFF_MAX);
          spin->skip = spin->backoff;
          break;
        }
      if (now >= deadline)
        break;

      /* Let a thread that waits for this CPU run: maybe the one this
       * spin waits for. Free when nothing else is runnable. */
      g_thread_yield ();
      now = g_get_monotonic_time ();
      last = now;
    }

  if (ready (data))
    return TRUE;

  /* A miss: spin less next time, down to 1/16th of the limit. */
  spin->usec = MAX (spin->usec / 2, MAX (limit / 16, 1));
  spin->missed_at = g_get_monotonic_time ();
  return FALSE;
}

/* The awaited event came after all, following a missed spin: if it came
 * soon, a full spin would have caught it, so spin fully next time. Spins
 * again from now on. */
void
spark_spin_note_event (SparkSpin *spin)
{
  if (spin->missed_at == 0)
    return;

  if (g_get_monotonic_time () - spin->missed_at <= (gint64) spark_spin_limit ())
    spin->usec = spark_spin_limit ();
  spin->missed_at = 0;
}

void
spark_cpu_relax (void)
{
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause ();
#elif defined(__aarch64__)
  __asm__ __volatile__ ("yield");
#endif
}

/* Locks @mutex, trying for a moment before sleeping. GLib's GMutex goes
 * to the kernel as soon as it finds the mutex taken: a futex wait for the
 * one who locks, a futex wake for the one who unlocks. Our hot locks (a
 * mailbox, a reply port, a sync waiter) are held for a few stores, so a
 * holder that is running lets go within a few polls; counted with perf,
 * command_throughput made 380k to 530k futex calls per 2M commands
 * without this. Taken this way, the lock is never marked contended, so
 * unlocking needs no wake either. */
#define MUTEX_SPIN_TRIES 64

void
spark_mutex_lock (GMutex *mutex)
{
  if G_LIKELY (g_mutex_trylock (mutex))
    return;

  for (guint i = 0; i < MUTEX_SPIN_TRIES; i++)
    {
      spark_cpu_relax ();
      if (g_mutex_trylock (mutex))
        return;
    }

  g_mutex_lock (mutex);
}

static gsize
spark_name_size (const char *name)
{
  return strlen (name) + 1;
}

SparkMessage *
spark_message_new_shutdown (void)
{
  /* Zeroed: its name, after kind, is "". */
  SparkMessage *msg = g_new0 (SparkMessage, 1);

  msg->kind = SPARK_MESSAGE_SHUTDOWN;

  return msg;
}

void
spark_message_free (SparkMessage *msg)
{
  switch ((SparkMessageKind) msg->kind)
    {
    case SPARK_MESSAGE_REQUEST:
      spark_request_unref ((SparkRequest *) msg);
      break;

    case SPARK_MESSAGE_COMMAND:
    case SPARK_MESSAGE_SHUTDOWN:
    default:
      g_clear_pointer (&msg->parameters, g_variant_unref);
      g_free (msg);
      break;
    }
}

/* A listener for a request's progress (see "Progress" below). */
struct _SparkRequestProgress
{
  GMutex             mutex;
  gboolean           closed;    /* mutex: the outcome is being or was delivered */
  SparkProgressFunc  func;      /* immutable */
  gpointer           data;      /* immutable */
  GDestroyNotify     destroy;   /* the requester's context: called once, after the outcome */
};

static void spark_request_deliver_on_port (SparkPortItem *item);

/* Blocks kept for reuse ------------------------------------------------------
 *
 * Requests are made on the requester's thread and, once delivered, freed
 * there too: a small per-thread pool of request blocks takes malloc and
 * free off the hot path. Blocks fit a request with a name and reply type
 * of up to REQUEST_INLINE bytes; longer ones are allocated as usual.
 *
 * Commands are made on a sender's thread and freed on the server's. With
 * plain malloc every block would cross threads, and glibc makes the sender
 * pay for that: its per-thread cache never refills from the other thread's
 * frees (perf put a third of a sender's time in _int_malloc). So command
 * blocks of the two usual sizes go back. The server collects the commands
 * it is done with into a chain per size and pushes the chain onto a stack
 * in the mailbox (one compare-and-swap per chain); a sender whose thread's
 * cache is empty takes the whole stack at once (one exchange). Senders
 * only ever take the whole stack, which keeps it free of the ABA problem.
 * Memory stays bounded: per size, the server collects at most
 * COMMAND_KEEP_MAX blocks, the stack holds at most COMMAND_RETURNED_MAX,
 * and a thread's cache is refilled only when it is empty.
 *
 * Like GSlice, both are off with G_SLICE=always-malloc, so that valgrind
 * and the sanitizers see every block; SPARK_POOLS=1 turns them back on
 * (tools/tsan does, to check the hand-over). */
#define REQUEST_INLINE     96
#define REQUEST_BLOCK      (sizeof (SparkRequest) + REQUEST_INLINE)
#define REQUEST_POOL_MAX   64

/* A command's name starts right after its kind. */
#define COMMAND_NAME_OFFSET G_STRUCT_OFFSET (SparkMessage, inline_name)
#define COMMAND_CHAIN       64    /* hand a chain back once it is this long */
#define COMMAND_KEEP_MAX    256   /* blocks per size the server collects at most */
#define COMMAND_RETURNED_MAX 1024 /* blocks per size waiting for senders at most */

/* Block sizes: a 24-byte message holds names of up to 6 bytes (a 32-byte
 * malloc chunk), a 40-byte one names of up to 22 (48). */
static const gsize command_block_size[SPARK_COMMAND_CLASSES] = { sizeof (SparkMessage), 40 };

/* The name takes what would be the struct's tail padding. */
G_STATIC_ASSERT (COMMAND_NAME_OFFSET < sizeof (SparkMessage));

static inline gint
command_class (gsize name_size)
{
  if (COMMAND_NAME_OFFSET + name_size <= command_block_size[0])
    return 0;
  if (COMMAND_NAME_OFFSET + name_size <= command_block_size[1])
    return 1;
  return -1;
}

typedef struct
{
  gpointer      requests[REQUEST_POOL_MAX];
  guint         n_requests;
  SparkMessage *commands[SPARK_COMMAND_CLASSES];   /* a chain taken from a mailbox */
} ThreadBlocks;

static void
free_chain (SparkMessage *chain)
{
  while (chain != NULL)
    {
      SparkMessage *next = chain->next;

      g_free (chain);
      chain = next;
    }
}

static void
thread_blocks_free (gpointer data)
{
  ThreadBlocks *blocks = data;

  for (guint i = 0; i < blocks->n_requests; i++)
    g_free (blocks->requests[i]);
  for (guint i = 0; i < SPARK_COMMAND_CLASSES; i++)
    free_chain (blocks->commands[i]);
  g_free (blocks);
}

static GPrivate thread_blocks_key = G_PRIVATE_INIT (thread_blocks_free);

static gboolean
pools_enabled (void)
{
  static gsize enabled;

  if (g_once_init_enter (&enabled))
    {
      const char *slice = g_getenv ("G_SLICE");
      const char *pools = g_getenv ("SPARK_POOLS");
      gboolean on = !(slice != NULL && strstr (slice, "always-malloc") != NULL);

      if (pools != NULL && *pools != '\0')
        on = g_strcmp0 (pools, "0") != 0;
      g_once_init_leave (&enabled, on ? 2 : 1);
    }

  return enabled == 2;
}

static ThreadBlocks *
thread_blocks_get (void)
{
  ThreadBlocks *blocks = g_private_get (&thread_blocks_key);

  if G_UNLIKELY (blocks == NULL)
    {
      blocks = g_new0 (ThreadBlocks, 1);
      g_private_set (&thread_blocks_key, blocks);
    }

  return blocks;
}

static SparkRequest *
request_alloc (gsize size)
{
  if (size <= REQUEST_BLOCK && pools_enabled ())
    {
      ThreadBlocks *blocks = thread_blocks_get ();

      /* Only the struct needs zeroing: the name and reply type after it
       * are written whole by the caller. */
      if (blocks->n_requests > 0)
        return memset (blocks->requests[--blocks->n_requests], 0, sizeof (SparkRequest));
      return g_malloc0 (REQUEST_BLOCK);
    }

  return g_malloc0 (size);
}

static void
request_free (SparkRequest *req,
              gsize         size)
{
  if (size <= REQUEST_BLOCK && pools_enabled ())
    {
      ThreadBlocks *blocks = thread_blocks_get ();

      if (blocks->n_requests < REQUEST_POOL_MAX)
        {
          blocks->requests[blocks->n_requests++] = req;
          return;
        }
    }

  g_free (req);
}

/* A spare block of @klass from the thread's cache, refilled with the
 * chain @mailbox_blocks' server handed back; NULL if there is none. */
static SparkMessage *
command_block_take (SparkCommandBlocks *mailbox_blocks,
                    gint                klass)
{
  ThreadBlocks *blocks = thread_blocks_get ();
  SparkMessage *msg = blocks->commands[klass];

  if (msg == NULL)
    {
      if (g_atomic_pointer_get (&mailbox_blocks->returned[klass]) == NULL)
        return NULL;
      msg = g_atomic_pointer_exchange (&mailbox_blocks->returned[klass], NULL);
      if (msg == NULL)
        return NULL;
    }

  blocks->commands[klass] = msg->next;
  return msg;
}

SparkMessage *
spark_message_new_command (SparkCommandBlocks *blocks,
                           const char         *name,
                           GVariant           *parameters)
{
  gsize len = spark_name_size (name);
  gint klass = command_class (len);
  SparkMessage *msg = NULL;

  if (klass >= 0 && blocks != NULL && pools_enabled ())
    msg = command_block_take (blocks, klass);
  if (msg == NULL)
    msg = g_malloc (klass >= 0 ? command_block_size[klass] : COMMAND_NAME_OFFSET + len);

  msg->next = NULL;
  msg->parameters = parameters;   /* ours now: sunk by the dispatcher */
  msg->kind = SPARK_MESSAGE_COMMAND;
  memcpy (msg->inline_name, name, len);

  return msg;
}

/* Pushes what the server collected onto the stack senders take from, as
 * long as the stack stays within COMMAND_RETURNED_MAX blocks. Only the
 * server pushes and senders only take the whole stack, so a stack found
 * non-empty is the one the server pushed last, n_returned blocks deep. */
static void
command_blocks_hand_back_class (SparkCommandBlocks *blocks,
                                gint                klass)
{
  SparkMessage *chain = blocks->freed[klass];
  SparkMessage *old;
  guint depth;

  if (chain == NULL)
    return;

  do
    {
      old = g_atomic_pointer_get (&blocks->returned[klass]);
      depth = (old != NULL ? blocks->n_returned[klass] : 0) + blocks->n_freed[klass];
      if (depth > COMMAND_RETURNED_MAX)
        return;   /* senders are not taking: keep collecting, up to COMMAND_KEEP_MAX */
      blocks->freed_tail[klass]->next = old;
    }
  while (!g_atomic_pointer_compare_and_exchange (&blocks->returned[klass], old, chain));

  blocks->n_returned[klass] = depth;
  blocks->freed[klass] = NULL;
  blocks->freed_tail[klass] = NULL;
  blocks->n_freed[klass] = 0;
}

/* By the server's thread: offers what it collected to the senders. */
void
spark_command_blocks_hand_back (SparkCommandBlocks *blocks)
{
  for (gint klass = 0; klass < SPARK_COMMAND_CLASSES; klass++)
    command_blocks_hand_back_class (blocks, klass);
}

/* By the server's thread, for a command it is done with: frees its
 * parameters, and its block or collects it for reuse. */
void
spark_message_recycle_command (SparkCommandBlocks *blocks,
                               SparkMessage       *msg)
{
  gint klass;

  g_assert (msg->kind == SPARK_MESSAGE_COMMAND);
  g_clear_pointer (&msg->parameters, g_variant_unref);

  klass = command_class (spark_name_size (spark_message_get_name (msg)));
  if (klass < 0 || !pools_enabled () || blocks->n_freed[klass] >= COMMAND_KEEP_MAX)
    {
      g_free (msg);
      return;
    }

  msg->next = blocks->freed[klass];
  if (msg->next == NULL)
    blocks->freed_tail[klass] = msg;
  blocks->freed[klass] = msg;
  if (++blocks->n_freed[klass] >= COMMAND_CHAIN)
    command_blocks_hand_back_class (blocks, klass);
}

/* Frees every block @blocks holds; nobody may use it any more. */
void
spark_command_blocks_clear (SparkCommandBlocks *blocks)
{
  for (gint klass = 0; klass < SPARK_COMMAND_CLASSES; klass++)
    {
      free_chain (g_atomic_pointer_exchange (&blocks->returned[klass], NULL));
      free_chain (g_steal_pointer (&blocks->freed[klass]));
      blocks->freed_tail[klass] = NULL;
      blocks->n_freed[klass] = 0;
      blocks->n_returned[klass] = 0;
    }
}

SparkRequest *
spark_request_new (const char         *name,
                   GVariant           *parameters,
                   const GVariantType *reply_type,
                   GCancellable       *cancellable,
                   gint                timeout_msec,
                   SparkReplyKind      reply_kind)
{
  gsize len = spark_name_size (name);
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
  req->size = sizeof *req + len + type_len;
  req->msg.parameters = parameters;   /* ours now: sunk by the dispatcher */
  req->ref_count = 2;   /* the sender's side and the completion side */
  req->reply_kind = reply_kind;
  req->port_item.deliver = spark_request_deliver_on_port;

  if (cancellable != NULL)
    req->cancellable = g_object_ref (cancellable);
  if (timeout_msec > 0)
    req->deadline = g_get_monotonic_time () + (gint64) timeout_msec * 1000;

  /* Only requests that can end early need a cancellable of their own for
   * the handler; the rest share the server's abort cancellable. */
  if (cancellable != NULL || timeout_msec > 0)
    req->handler_cancellable = g_cancellable_new ();

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

  g_assert (req->serving == NULL);
  g_assert (req->timer_iter == NULL);

  g_clear_pointer (&req->msg.parameters, g_variant_unref);
  g_clear_pointer (&req->reply, g_variant_unref);
  g_clear_error (&req->error);
  g_clear_object (&req->cancellable);
  g_clear_object (&req->handler_cancellable);
  g_clear_object (&req->source_object);
  if (req->port != NULL)
    spark_reply_port_release (g_steal_pointer (&req->port), req->port_soon);
  if (req->progress != NULL)
    {
      g_mutex_clear (&req->progress->mutex);
      g_free (req->progress);
    }
  request_free (req, req->size);
}

gboolean
spark_request_is_claimed (SparkRequest *req)
{
  return g_atomic_int_get (&req->claimed) != 0;
}

GCancellable *
spark_request_get_handler_cancellable (SparkRequest *req)
{
  return req->handler_cancellable;
}

static void
spark_request_deliver (SparkRequest *req)
{
  switch ((SparkReplyKind) req->reply_kind)
    {
    case SPARK_REPLY_SYNC:
      spark_sync_waiter_signal (req->waiter, &req->done);
      break;

    case SPARK_REPLY_ASYNC:
    case SPARK_REPLY_FUNC:
    default:
      spark_reply_port_push (req->port, &req->port_item);
      break;
    }
}

static gboolean
spark_request_complete_internal (SparkRequest *req,
                                 GVariant     *reply,
                                 GError       *error,
                                 gboolean      from_handler)
{
  SparkMailbox *serving;

  g_assert (reply == NULL || !g_variant_is_floating (reply));

  if (!g_atomic_int_compare_and_exchange (&req->claimed, 0, 1))
    {
      /* Somebody else ended this request first: drop ours quietly. */
      g_clear_pointer (&reply, g_variant_unref);
      g_clear_error (&error);
      return FALSE;
    }

  req->reply = reply;
  req->error = error;
  req->from_handler = from_handler;

  if (req->deadline != 0)
    spark_timer_remove (req);

  /* Tell a handler still working on it that nobody waits any more. */
  if (!from_handler && req->handler_cancellable != NULL)
    g_cancellable_cancel (req->handler_cancellable);

  /* A server waiting on this request's invocation moves on now. */
  serving = g_atomic_pointer_exchange (&req->serving, NULL);
  if (serving != NULL)
    {
      spark_mailbox_wake_server (serving);
      spark_mailbox_unref (serving);
    }

  spark_request_deliver (req);

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

static void
spark_request_on_cancelled (GCancellable *cancellable,
                            SparkRequest *req)
{
  /* Runs in the canceller's stack, maybe inside g_cancellable_connect(): do
   * not disconnect here. The request is disarmed when it is delivered. */
  if (!g_atomic_int_get (&req->cancel_armed))
    return;

  spark_request_complete_literal (req, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                  "The request was cancelled");
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
        spark_request_complete_literal (req, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                        "The request was cancelled");
    }

  if (req->deadline != 0 && !spark_request_is_claimed (req))
    spark_timer_add (req);
}

/* Called once the outcome has been delivered, never from a ::cancelled handler. */
void
spark_request_disarm (SparkRequest *req)
{
  if (req->cancel_id != 0)
    {
      g_cancellable_disconnect (req->cancellable, req->cancel_id);
      req->cancel_id = 0;
    }
}

/* Runs on the requester's context, from the reply port's batch. */
static void
spark_request_deliver_on_port (SparkPortItem *item)
{
  SparkRequest *req = (SparkRequest *) (void *) ((char *) item - G_STRUCT_OFFSET (SparkRequest, port_item));

  spark_request_disarm (req);

  /* Cancelled before the outcome was delivered: the requester asked for
   * G_IO_ERROR_CANCELLED, whatever else happened. */
  if (req->cancellable != NULL &&
      g_cancellable_is_cancelled (req->cancellable) &&
      !g_error_matches (req->error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    {
      g_clear_pointer (&req->reply, g_variant_unref);
      g_clear_error (&req->error);
      req->error = g_error_new_literal (G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                        "The request was cancelled");
    }

  /* Progress reports still on their way are dropped from now on. */
  if (req->progress != NULL)
    {
      g_mutex_lock (&req->progress->mutex);
      req->progress->closed = TRUE;
      g_mutex_unlock (&req->progress->mutex);
    }

  if (req->reply_kind == SPARK_REPLY_ASYNC)
    {
      SparkAsyncResultPool *pool = spark_reply_port_get_result_pool (req->port);
      SparkAsyncResult *result;

      result = spark_async_result_obtain (pool, req->source_object, spark_dispatcher_request_async,
                                          req->user_data,
                                          g_steal_pointer (&req->reply),
                                          g_steal_pointer (&req->error));
      if (req->callback != NULL)
        req->callback (req->source_object, (GAsyncResult *) result, req->user_data);
      spark_async_result_release (pool, result);
    }
  else
    {
      req->reply_func (req->reply, req->error, req->user_data);
      if (req->destroy != NULL)
        req->destroy (req->user_data);
    }

  spark_request_release_requester (req);
  spark_request_unref (req);
}

/*
 * spark_request_release_requester:
 *
 * Drops what @req holds for its requester (the dispatcher, the
 * requester's cancellable, the hold on its reply port and with it the
 * context), once its outcome has been delivered: an invocation the handler
 * keeps may hold the request much longer, and must not keep those alive,
 * nor the context spinning for an outcome that is not coming.
 */
void
spark_request_release_requester (SparkRequest *req)
{
  g_assert (g_atomic_int_get (&req->claimed));

  g_clear_object (&req->source_object);
  g_clear_object (&req->cancellable);
  if (req->port != NULL)
    spark_reply_port_release (g_steal_pointer (&req->port), req->port_soon);
  if (req->progress != NULL && req->progress->destroy != NULL)
    g_steal_pointer (&req->progress->destroy) (req->progress->data);
  req->callback = NULL;
  req->reply_func = NULL;
  req->user_data = NULL;
  req->destroy = NULL;
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
  g_assert (req->progress == NULL && req->reply_kind == SPARK_REPLY_ASYNC);

  req->progress = g_new0 (SparkRequestProgress, 1);
  g_mutex_init (&req->progress->mutex);
  req->progress->func = func;
  req->progress->data = data;
  req->progress->destroy = destroy;
}

/* On the requester's context, from the reply port's batch. */
static void
deliver_progress (SparkPortItem *port_item)
{
  ProgressItem *item = (ProgressItem *) (void *) port_item;
  SparkRequestProgress *progress = item->req->progress;

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
  SparkRequestProgress *listener = req->progress;

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
          item->port = req->port;
          item->value = g_steal_pointer (&progress);
          spark_reply_port_add_hold (item->port);
          spark_reply_port_push (item->port, &item->item);
        }
      g_mutex_unlock (&listener->mutex);
    }

  g_clear_pointer (&progress, g_variant_unref);
}

/* Sync waiters ----------------------------------------------------------- */

static void
spark_sync_waiter_free (gpointer data)
{
  SparkSyncWaiter *waiter = data;

  g_mutex_clear (&waiter->mutex);
  g_cond_clear (&waiter->cond);
  g_free (waiter);
}

static GPrivate sync_waiter_key = G_PRIVATE_INIT (spark_sync_waiter_free);

SparkSyncWaiter *
spark_sync_waiter_get (void)
{
  SparkSyncWaiter *waiter = g_private_get (&sync_waiter_key);

  if G_UNLIKELY (waiter == NULL)
    {
      waiter = g_new0 (SparkSyncWaiter, 1);
      g_mutex_init (&waiter->mutex);
      g_cond_init (&waiter->cond);
      g_private_set (&sync_waiter_key, waiter);
    }

  return waiter;
}

/* Waits, on the waiter's own thread, until @flag is set by
 * spark_sync_waiter_signal(). Spins briefly first: a hand-off seen while
 * spinning costs far less than a sleep and a wakeup. */
static gboolean
flag_is_set (gconstpointer data)
{
  return g_atomic_int_get ((const gint *) data) != 0;
}

void
spark_sync_waiter_wait (SparkSyncWaiter *waiter,
                        gint            *flag)
{
  if (spark_spin_until (&waiter->spin, flag_is_set, flag))
    {
      /* The signaller sets the flag under the mutex: passing through it
       * makes sure it is done with the waiter before we go on. */
      spark_mutex_lock (&waiter->mutex);
      g_mutex_unlock (&waiter->mutex);
      return;
    }

  spark_mutex_lock (&waiter->mutex);
  while (!g_atomic_int_get (flag))
    {
      waiter->parked = TRUE;
      g_cond_wait (&waiter->cond, &waiter->mutex);
    }
  waiter->parked = FALSE;
  g_mutex_unlock (&waiter->mutex);

  spark_spin_note_event (&waiter->spin);
}

void
spark_sync_waiter_signal (SparkSyncWaiter *waiter,
                          gint            *flag)
{
  spark_mutex_lock (&waiter->mutex);
  g_atomic_int_set (flag, 1);
  if (waiter->parked)
    g_cond_signal (&waiter->cond);
  g_mutex_unlock (&waiter->mutex);
}
