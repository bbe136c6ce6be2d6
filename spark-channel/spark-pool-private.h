/* spark-pool-private.h: blocks kept for reuse
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Depends on GLib only. Knows block sizes and nothing of what the blocks
 * hold: the units above decide which of their allocations are pooled.
 */

#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* A pooled block while it is free: its first word links it. A type whose
 * blocks are pooled starts with a pointer that is free to reuse then. */
typedef struct _SparkBlock SparkBlock;

struct _SparkBlock
{
  SparkBlock *next;
};

/* The number of sizes of SparkBlockReturn blocks. */
#define SPARK_BLOCK_CLASSES 2

/* Blocks on their way back from the one thread that frees them (a
 * server's) to the threads that make them (its senders). One per
 * consumer: @returned is shared, the rest belongs to the consumer. */
typedef struct
{
  SparkBlock *freed[SPARK_BLOCK_CLASSES];      /* the consumer: collected since the last hand-back */
  SparkBlock *freed_tail[SPARK_BLOCK_CLASSES]; /* the consumer */
  guint       n_freed[SPARK_BLOCK_CLASSES];    /* the consumer */
  guint       n_returned[SPARK_BLOCK_CLASSES]; /* the consumer: in @returned, if it is not NULL */

  /* On a cache line of its own: producers with an empty cache read it on
   * every make, and must not pull the consumer's counters along. */
  char        producers_line[64];
  SparkBlock *returned[SPARK_BLOCK_CLASSES];   /* atomic: a stack for producers to take whole */
  char        producers_line_end[64 - SPARK_BLOCK_CLASSES * sizeof (SparkBlock *)];
} SparkBlockReturn;

/* 0: not read yet, 1: off, 2: on. Written once, by spark_pools_init(). */
extern gint spark_pools_state;

gboolean  spark_pools_init             (void);

/* Whether blocks are pooled at all (see spark-pool.c). */
static inline gboolean
spark_pools_enabled (void)
{
  gint state = g_atomic_int_get (&spark_pools_state);

  if G_LIKELY (state != 0)
    return state == 2;
  return spark_pools_init ();
}

/* The calling thread's own blocks of one size (the caller's): made and
 * freed on the same thread. */
gpointer  spark_thread_pool_take       (void);
gboolean  spark_thread_pool_give       (gpointer          block);

gpointer  spark_block_return_take      (SparkBlockReturn *ret,
                                        guint             klass);
gboolean  spark_block_return_collect   (SparkBlockReturn *ret,
                                        guint             klass,
                                        gpointer          block);
void      spark_block_return_hand_back (SparkBlockReturn *ret);
void      spark_block_return_clear     (SparkBlockReturn *ret);

G_END_DECLS
