/* spark-timer.c: deadlines on a clock of their own
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A request's timeout must fire whatever the server's context is doing (it
 * may be stuck in a long synchronous handler) and whatever the requester's
 * is doing (it may be blocked in spark_dispatcher_request_sync()). So
 * deadlines run on one process-wide thread, started the first time one is
 * added, that sleeps until the earliest. Whoever adds a timeout keeps what
 * it is embedded in alive until it fires or is removed.
 */

#include "config.h"

#include "spark-timer-private.h"

typedef struct
{
  GMutex     mutex;
  GCond      cond;
  GSequence *deadlines;   /* mutex: SparkTimeout*, by deadline */
  GThread   *thread;      /* mutex: started once, runs for the life of the process */
} SparkTimer;

static SparkTimer timer;

static gint
compare_deadlines (gconstpointer a,
                   gconstpointer b,
                   gpointer      user_data)
{
  const SparkTimeout *ta = a;
  const SparkTimeout *tb = b;

  (void) user_data;

  return (ta->deadline > tb->deadline) - (ta->deadline < tb->deadline);
}

static gpointer
spark_timer_thread (gpointer data)
{
  (void) data;

  g_mutex_lock (&timer.mutex);

  for (;;)
    {
      GSequenceIter *first = g_sequence_get_begin_iter (timer.deadlines);
      SparkTimeout *timeout;

      if (g_sequence_iter_is_end (first))
        {
          g_cond_wait (&timer.cond, &timer.mutex);
          continue;
        }

      timeout = g_sequence_get (first);

      if (g_get_monotonic_time () < timeout->deadline)
        {
          g_cond_wait_until (&timer.cond, &timer.mutex, timeout->deadline);
          continue;
        }

      g_sequence_remove (first);
      timeout->iter = NULL;

      /* Outside the lock: the callback runs user code, and may add or
       * remove other timeouts. */
      g_mutex_unlock (&timer.mutex);
      timeout->func (timeout);
      g_mutex_lock (&timer.mutex);
    }

  g_assert_not_reached ();
  return NULL;
}

/* Calls @func once @deadline (monotonic µs) has passed, unless
 * spark_timer_remove() comes first. */
void
spark_timer_add (SparkTimeout     *timeout,
                 gint64            deadline,
                 SparkTimeoutFunc  func)
{
  g_assert (deadline != 0 && func != NULL);

  timeout->deadline = deadline;
  timeout->func = func;

  g_mutex_lock (&timer.mutex);

  if G_UNLIKELY (timer.thread == NULL)
    {
      timer.deadlines = g_sequence_new (NULL);
      timer.thread = g_thread_new ("spark-timer", spark_timer_thread, NULL);
    }

  timeout->iter = g_sequence_insert_sorted (timer.deadlines, timeout, compare_deadlines, NULL);

  /* Only a new earliest deadline changes how long the thread sleeps. */
  if (g_sequence_iter_is_begin (timeout->iter))
    g_cond_signal (&timer.cond);

  g_mutex_unlock (&timer.mutex);
}

/* Takes @timeout out of the timer. Returns TRUE if it had not fired: its
 * callback will not run. FALSE: it has fired, or is firing. */
gboolean
spark_timer_remove (SparkTimeout *timeout)
{
  gboolean removed = FALSE;

  g_mutex_lock (&timer.mutex);
  if (timeout->iter != NULL)
    {
      g_sequence_remove (timeout->iter);
      timeout->iter = NULL;
      removed = TRUE;
    }
  g_mutex_unlock (&timer.mutex);

  return removed;
}
