/* spark-outcome-private.h: where an outcome goes
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The one way outcomes travel back to whoever waits for them: a thread
 * blocked in a call (its sync waiter), or a context (its reply port, in a
 * batch). Requests and room waiters embed one. Built on the sync waiter
 * and the reply port; knows nothing of what the outcome is.
 */

#pragma once

#include <glib.h>

#include "spark-reply-port-private.h"
#include "spark-sync-waiter-private.h"

G_BEGIN_DECLS

typedef struct
{
  SparkPortItem      item;     /* to a port: delivered by item.deliver on its context */
  union
  {
    SparkSyncWaiter *waiter;   /* to a thread */
    SparkReplyPort  *port;     /* to a context: a hold on its port, until released */
  } to;
  gint               done;     /* atomic, to a thread: set once delivered */
  guint8             sync;     /* immutable: to a thread */
  guint8             soon;     /* immutable, to a context: the hold expects it soon */
  guint8             now;      /* immutable: item.deliver runs at once, on the thread that delivers */
} SparkOutcome;

/* To the calling thread, which will wait for it with spark_outcome_wait(). */
void     spark_outcome_init_sync    (SparkOutcome         *outcome);
/* To the calling thread's context: @deliver runs there, from the port's
 * batch. @producer (nullable): the context the outcome comes from; the
 * port's context spins for it only if it is another one. */
void     spark_outcome_init_port    (SparkOutcome         *outcome,
                                     GMainContext         *producer,
                                     SparkPortDeliverFunc  deliver);

/* Nowhere to travel: @deliver runs at once on whichever thread delivers
 * the outcome (it must not block, and must be thread-safe). */
void     spark_outcome_init_now     (SparkOutcome         *outcome,
                                     SparkPortDeliverFunc  deliver);

/* From any thread, once. */
static inline void
spark_outcome_deliver (SparkOutcome *outcome)
{
  if (outcome->now)
    outcome->item.deliver (&outcome->item);
  else if (outcome->sync)
    spark_sync_waiter_signal (outcome->to.waiter, &outcome->done);
  else
    spark_reply_port_push (outcome->to.port, &outcome->item);
}

/* To a thread only, on it. */
static inline void
spark_outcome_wait (SparkOutcome *outcome)
{
  g_assert (outcome->sync);
  spark_sync_waiter_wait (outcome->to.waiter, &outcome->done);
}

/* Drops the hold on the port (a context alive, maybe spinning) once the
 * outcome is delivered or will never come; idempotent. */
static inline void
spark_outcome_release (SparkOutcome *outcome)
{
  if (!outcome->sync && outcome->to.port != NULL)
    spark_reply_port_release (g_steal_pointer (&outcome->to.port), outcome->soon);
}

/* From the item's deliver function. */
static inline SparkReplyPort *
spark_outcome_get_port (SparkOutcome *outcome)
{
  g_assert (!outcome->sync);
  return outcome->to.port;
}

/* A hold of its own on the same port, for another item (progress). */
static inline SparkReplyPort *
spark_outcome_add_port_hold (SparkOutcome *outcome)
{
  spark_reply_port_add_hold (spark_outcome_get_port (outcome));
  return outcome->to.port;
}

G_END_DECLS
