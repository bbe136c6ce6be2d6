/* test-internal.c: the private units, through the internal static library
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * These tests link libspark-channel-internal.a, not the public library, to
 * check decisions that the public API does not show: when a waiting
 * thread spins. They assert the decision, never a time.
 */

#include "config.h"

#include "spark-reply-port-private.h"
#include "spark-spin-private.h"
#include "spark-wake-source-private.h"

typedef struct
{
  gint calls;       /* how often the ready function was asked */
  gint sleep_usec;  /* sleeps this long on the first call */
} Probe;

static gboolean
probe_never_ready (gconstpointer data)
{
  Probe *probe = (Probe *) data;

  if (probe->calls++ == 0 && probe->sleep_usec > 0)
    g_usleep ((gulong) probe->sleep_usec);
  return FALSE;
}

/* A spin that missed is not repeated until its event came: the event is
 * not imminent (a reply that takes seconds, while the thread wakes for
 * other sources), and every further wakeup would spin for nothing. */
static void
test_spin_after_miss (void)
{
  SparkSpin spin = { 0 };
  Probe probe = { 0, 0 };

  if (spark_spin_limit () == 0)
    {
      g_test_skip ("SPARK_SPIN=0: nothing spins");
      return;
    }

  g_assert_true (spark_spin_will_spin (&spin));
  g_assert_false (spark_spin_until (&spin, probe_never_ready, &probe));
  g_assert_cmpint (probe.calls, >, 1);

  /* Missed: no polling now, one look only. */
  g_assert_false (spark_spin_will_spin (&spin));
  probe.calls = 0;
  g_assert_false (spark_spin_until (&spin, probe_never_ready, &probe));
  g_assert_cmpint (probe.calls, ==, 1);

  /* The event came: it spins again (unless this loaded machine preempted
   * the first spin, which skips a wait: see /spin/preempted). */
  spark_spin_note_event (&spin);
  g_assert_cmpint (spark_spin_will_spin (&spin), ==, spin.skip == 0);
}

/* A spin that finds it was not running (here: the first look took 2 ms)
 * gives up, and the next wait does not spin, twice as many the next time:
 * on an oversubscribed CPU the thread it waits for needs that CPU. */
static void
test_spin_preempted (void)
{
  SparkSpin spin = { 0 };
  Probe probe = { 0, 2000 };

  if (spark_spin_limit () == 0)
    {
      g_test_skip ("SPARK_SPIN=0: nothing spins");
      return;
    }

  g_assert_false (spark_spin_until (&spin, probe_never_ready, &probe));
  g_assert_cmpuint (spin.skip, ==, 1);
  spark_spin_note_event (&spin);
  g_assert_false (spark_spin_will_spin (&spin));

  /* The skipped wait looks once, without polling. */
  probe = (Probe) { 0, 0 };
  g_assert_false (spark_spin_until (&spin, probe_never_ready, &probe));
  g_assert_cmpint (probe.calls, ==, 1);
  spark_spin_note_event (&spin);
  g_assert_true (spark_spin_will_spin (&spin));

  /* Preempted again: twice as many waits skipped. */
  probe = (Probe) { 0, 2000 };
  g_assert_false (spark_spin_until (&spin, probe_never_ready, &probe));
  g_assert_cmpuint (spin.skip, ==, 2);
}

/* A context never spins for an outcome that only it can produce: a
 * request to a server that runs on the requester's own context. It does
 * for a server on another context. */
static void
test_port_same_context (void)
{
  GMainContext *context = g_main_context_new ();
  GMainContext *other = g_main_context_new ();
  SparkReplyPort *port;

  g_main_context_push_thread_default (context);

  port = spark_reply_port_hold (context);
  g_assert_false (spark_reply_port_expects_soon (port, context));
  g_assert_false (spark_wake_source_will_spin ((SparkWakeSource *) port));
  g_assert_true (spark_reply_port_context_is_expecting (context));
  spark_reply_port_release (port, FALSE);
  g_assert_false (spark_reply_port_context_is_expecting (context));

  port = spark_reply_port_hold (other);
  g_assert_true (spark_reply_port_expects_soon (port, other));
  g_assert_cmpint (spark_wake_source_will_spin ((SparkWakeSource *) port), ==, spark_spin_limit () > 0);
  spark_reply_port_release (port, TRUE);
  g_assert_false (spark_wake_source_will_spin ((SparkWakeSource *) port));

  g_main_context_pop_thread_default (context);
  g_main_context_unref (other);
  g_main_context_unref (context);
}

/* A main loop that wakes for other sources (a UI tick) while an outcome
 * is outstanding spins once, then not again until the outcome came. */
static void
test_port_not_imminent (void)
{
  GMainContext *context = g_main_context_new ();
  GMainContext *other = g_main_context_new ();
  SparkReplyPort *port;

  if (spark_spin_limit () == 0)
    {
      g_test_skip ("SPARK_SPIN=0: nothing spins");
      return;
    }

  g_main_context_push_thread_default (context);
  port = spark_reply_port_hold (other);
  g_assert_true (spark_wake_source_will_spin ((SparkWakeSource *) port));

  /* One iteration: prepare spins, and misses. */
  g_main_context_iteration (context, FALSE);
  g_assert_false (spark_wake_source_will_spin ((SparkWakeSource *) port));
  g_main_context_iteration (context, FALSE);
  g_assert_false (spark_wake_source_will_spin ((SparkWakeSource *) port));

  spark_reply_port_release (port, TRUE);
  g_main_context_pop_thread_default (context);
  g_main_context_unref (other);
  g_main_context_unref (context);
}

int
main (int argc, char *argv[])
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/spark/internal/spin/after-miss", test_spin_after_miss);
  g_test_add_func ("/spark/internal/spin/preempted", test_spin_preempted);
  g_test_add_func ("/spark/internal/reply-port/same-context", test_port_same_context);
  g_test_add_func ("/spark/internal/reply-port/not-imminent", test_port_not_imminent);

  return g_test_run ();
}
