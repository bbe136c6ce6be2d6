/* spark-pool.c: blocks kept for reuse
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Requests are made on the requester's thread and, once delivered, freed
 * there too: a small per-thread pool of blocks (the thread pool below)
 * takes malloc and free off that hot path.
 *
 * Commands are made on a sender's thread and freed on the server's. With
 * plain malloc every block would cross threads, and glibc makes the sender
 * pay for that: its per-thread cache never refills from the other thread's
 * frees (perf put a third of a sender's time in _int_malloc). So such
 * blocks go back (SparkBlockReturn). The consumer collects the blocks it
 * is done with into a chain per size and pushes the chain onto a stack
 * (one compare-and-swap per chain); a producer whose thread's cache is
 * empty takes the whole stack at once (one exchange). Producers only ever
 * take the whole stack, which keeps it free of the ABA problem. Memory
 * stays bounded: per size, the consumer collects at most BLOCK_KEEP_MAX
 * blocks, the stack holds at most BLOCK_RETURNED_MAX, and a thread's cache
 * is refilled only when it is empty.
 *
 * Like GSlice, both are off with G_SLICE=always-malloc, so that valgrind
 * and the sanitizers see every block; SPARK_POOLS=1 turns them back on
 * (tools/tsan does, to check the hand-over).
 */

#include "config.h"

#include <string.h>

#include "spark-pool-private.h"

#define THREAD_POOL_MAX    64
#define BLOCK_CHAIN        64     /* hand a chain back once it is this long */
#define BLOCK_KEEP_MAX     256    /* blocks per size the consumer collects at most */
#define BLOCK_RETURNED_MAX 1024   /* blocks per size waiting for producers at most */

typedef struct
{
  gpointer    own[THREAD_POOL_MAX];
  guint       n_own;
  SparkBlock *returned[SPARK_BLOCK_CLASSES];   /* a chain taken from a SparkBlockReturn */
} ThreadBlocks;

static void
free_chain (SparkBlock *chain)
{
  while (chain != NULL)
    {
      SparkBlock *next = chain->next;

      g_free (chain);
      chain = next;
    }
}

static void
thread_blocks_free (gpointer data)
{
  ThreadBlocks *blocks = data;

  for (guint i = 0; i < blocks->n_own; i++)
    g_free (blocks->own[i]);
  for (guint i = 0; i < SPARK_BLOCK_CLASSES; i++)
    free_chain (blocks->returned[i]);
  g_free (blocks);
}

static GPrivate thread_blocks_key = G_PRIVATE_INIT (thread_blocks_free);

gint spark_pools_state;

/* Reads the environment once; racing first callers agree. */
gboolean
spark_pools_init (void)
{
  const char *slice = g_getenv ("G_SLICE");
  const char *pools = g_getenv ("SPARK_POOLS");
  gboolean on = !(slice != NULL && strstr (slice, "always-malloc") != NULL);

  if (pools != NULL && *pools != '\0')
    on = g_strcmp0 (pools, "0") != 0;
  g_atomic_int_set (&spark_pools_state, on ? 2 : 1);

  return on;
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

/* A block the calling thread gave back, or NULL (always with the pools
 * off). Its contents are whatever was left in it. */
gpointer
spark_thread_pool_take (void)
{
  ThreadBlocks *blocks;

  if (!spark_pools_enabled ())
    return NULL;

  blocks = thread_blocks_get ();
  if (blocks->n_own == 0)
    return NULL;
  return blocks->own[--blocks->n_own];
}

/* Keeps @block for the calling thread's next take; FALSE if the pool is
 * full or the pools are off (the caller frees it). */
gboolean
spark_thread_pool_give (gpointer block)
{
  ThreadBlocks *blocks;

  if (!spark_pools_enabled ())
    return FALSE;

  blocks = thread_blocks_get ();
  if (blocks->n_own >= THREAD_POOL_MAX)
    return FALSE;
  blocks->own[blocks->n_own++] = block;
  return TRUE;
}

/* A spare block of @klass from the thread's cache, refilled with the
 * chain @ret's consumer handed back; NULL if there is none. */
gpointer
spark_block_return_take (SparkBlockReturn *ret,
                         guint             klass)
{
  ThreadBlocks *blocks = thread_blocks_get ();
  SparkBlock *block = blocks->returned[klass];

  if (block == NULL)
    {
      if (g_atomic_pointer_get (&ret->returned[klass]) == NULL)
        return NULL;
      block = g_atomic_pointer_exchange (&ret->returned[klass], NULL);
      if (block == NULL)
        return NULL;
    }

  blocks->returned[klass] = block->next;
  return block;
}

/* Pushes what the consumer collected onto the stack producers take from,
 * as long as the stack stays within BLOCK_RETURNED_MAX blocks. Only the
 * consumer pushes and producers only take the whole stack, so a stack
 * found non-empty is the one the consumer pushed last, n_returned deep. */
static void
hand_back_class (SparkBlockReturn *ret,
                 guint             klass)
{
  SparkBlock *chain = ret->freed[klass];
  SparkBlock *old;
  guint depth;

  if (chain == NULL)
    return;

  do
    {
      old = g_atomic_pointer_get (&ret->returned[klass]);
      depth = (old != NULL ? ret->n_returned[klass] : 0) + ret->n_freed[klass];
      if (depth > BLOCK_RETURNED_MAX)
        return;   /* producers are not taking: keep collecting, up to BLOCK_KEEP_MAX */
      ret->freed_tail[klass]->next = old;
    }
  while (!g_atomic_pointer_compare_and_exchange (&ret->returned[klass], old, chain));

  ret->n_returned[klass] = depth;
  ret->freed[klass] = NULL;
  ret->freed_tail[klass] = NULL;
  ret->n_freed[klass] = 0;
}

/* By the consumer's thread, for a block of @klass it is done with:
 * collects it for the producers; FALSE if it keeps enough already (the
 * caller frees it). */
gboolean
spark_block_return_collect (SparkBlockReturn *ret,
                            guint             klass,
                            gpointer          block)
{
  SparkBlock *b = block;

  if (ret->n_freed[klass] >= BLOCK_KEEP_MAX)
    return FALSE;

  b->next = ret->freed[klass];
  if (b->next == NULL)
    ret->freed_tail[klass] = b;
  ret->freed[klass] = b;
  if (++ret->n_freed[klass] >= BLOCK_CHAIN)
    hand_back_class (ret, klass);
  return TRUE;
}

/* By the consumer's thread: offers what it collected to the producers. */
void
spark_block_return_hand_back (SparkBlockReturn *ret)
{
  for (guint klass = 0; klass < SPARK_BLOCK_CLASSES; klass++)
    hand_back_class (ret, klass);
}

/* Frees every block @ret holds; nobody may use it any more. */
void
spark_block_return_clear (SparkBlockReturn *ret)
{
  for (guint klass = 0; klass < SPARK_BLOCK_CLASSES; klass++)
    {
      free_chain (g_atomic_pointer_exchange (&ret->returned[klass], NULL));
      free_chain (g_steal_pointer (&ret->freed[klass]));
      ret->freed_tail[klass] = NULL;
      ret->n_freed[klass] = 0;
      ret->n_returned[klass] = 0;
    }
}
