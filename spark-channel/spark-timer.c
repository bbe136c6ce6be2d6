/* spark-timer.c: request timeouts on a clock of their own
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A request's timeout must fire whatever the server's context is doing (it
 * may be stuck in a long synchronous handler) and whatever the requester's
 * is doing (it may be blocked in spark_dispatcher_request_sync()). So
 * timeouts run on one process-wide thread, started the first time a request
 * has a timeout, that sleeps until the earliest deadline. Requests without a
 * timeout never touch it.
 */

#include "config.h"

#include "spark-error.h"
#include "spark-message-private.h"

typedef struct
{
  GMutex     mutex;
  GCond      cond;
  GSequence *deadlines;   /* mutex: SparkRequest*, a reference each, by deadline */
  GThread   *thread;      /* mutex: started once, runs for the life of the process */
} SparkTimer;

static SparkTimer timer;

static gint
compare_deadlines (gconstpointer a,
                   gconstpointer b,
                   gpointer      user_data)
{
  const SparkRequest *ra = a;
  const SparkRequest *rb = b;

  return (ra->deadline > rb->deadline) - (ra->deadline < rb->deadline);
}

static gpointer
spark_timer_thread (gpointer data)
{
  g_mutex_lock (&timer.mutex);

  for (;;)
    {
      GSequenceIter *first = g_sequence_get_begin_iter (timer.deadlines);
      SparkRequest *req;

      if (g_sequence_iter_is_end (first))
        {
          g_cond_wait (&timer.cond, &timer.mutex);
          continue;
        }

      req = g_sequence_get (first);

      if (g_get_monotonic_time () < req->deadline)
        {
          g_cond_wait_until (&timer.cond, &timer.mutex, req->deadline);
          continue;
        }

      g_sequence_remove (first);
      req->timer_iter = NULL;

      /* Complete outside the lock: completion removes other timers and
       * cancels the handler's cancellable, which runs user code. */
      g_mutex_unlock (&timer.mutex);
      spark_request_complete_literal (req, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT,
                                      "The request timed out before a reply arrived");
      spark_request_unref (req);
      g_mutex_lock (&timer.mutex);
    }

  g_assert_not_reached ();
  return NULL;
}

void
spark_timer_add (SparkRequest *req)
{
  g_assert (req->deadline != 0);

  g_mutex_lock (&timer.mutex);

  if G_UNLIKELY (timer.thread == NULL)
    {
      timer.deadlines = g_sequence_new (NULL);
      timer.thread = g_thread_new ("spark-timer", spark_timer_thread, NULL);
    }

  req->timer_iter = g_sequence_insert_sorted (timer.deadlines,
                                              spark_request_ref (req),
                                              compare_deadlines, NULL);

  /* Only a new earliest deadline changes how long the thread sleeps. */
  if (g_sequence_iter_is_begin (req->timer_iter))
    g_cond_signal (&timer.cond);

  g_mutex_unlock (&timer.mutex);
}

/* Called by whoever completed @req; the timer may have fired meanwhile. */
void
spark_timer_remove (SparkRequest *req)
{
  gboolean removed = FALSE;

  g_mutex_lock (&timer.mutex);
  if (req->timer_iter != NULL)
    {
      g_sequence_remove (req->timer_iter);
      req->timer_iter = NULL;
      removed = TRUE;
    }
  g_mutex_unlock (&timer.mutex);

  if (removed)
    spark_request_unref (req);
}
