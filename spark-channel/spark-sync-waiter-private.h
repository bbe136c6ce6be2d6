/* spark-sync-waiter-private.h: where a thread blocked in a call sleeps
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include <glib.h>

#include "spark-spin-private.h"

G_BEGIN_DECLS

/* A thread's parking place for blocking calls: one per thread, made on
 * first use and freed with the thread. */
typedef struct
{
  GMutex    mutex;
  GCond     cond;
  gboolean  parked;   /* the mutex: the owner thread sleeps in cond */
  SparkSpin spin;     /* the owner thread */
} SparkSyncWaiter;

SparkSyncWaiter *spark_sync_waiter_get    (void);
void             spark_sync_waiter_wait   (SparkSyncWaiter *waiter,
                                           gint            *flag);
void             spark_sync_waiter_signal (SparkSyncWaiter *waiter,
                                           gint            *flag);

G_END_DECLS
