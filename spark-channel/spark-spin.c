/* spark-spin.c: adaptive spinning and the hot-lock helper
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include "config.h"

#include "spark-spin-private.h"

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
