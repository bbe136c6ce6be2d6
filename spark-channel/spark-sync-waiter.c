/* spark-sync-waiter.c: where a thread blocked in a call sleeps
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include "config.h"

#include "spark-sync-waiter-private.h"

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
