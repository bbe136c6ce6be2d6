/* spark-spin-private.h: adaptive spinning and the hot-lock helper
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The lowest private unit: it depends on GLib only. Every unit that waits
 * for another thread (the sync waiter, the wake source, the mailbox's
 * server side) spins through here, and takes its hot locks with
 * spark_mutex_lock().
 */

#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* An adaptive spin: how long its owner polls before it sleeps. Touched
 * only by its owner (the waiting thread, or the server's thread). */
typedef struct
{
  guint  usec;        /* 0: not yet set, take the limit */
  gint64 missed_at;   /* when the last spin gave up, 0 if its event came since */
  guint  skip;        /* waits left that do not spin: the CPU was found oversubscribed */
  guint  backoff;     /* waits to skip after the next preemption */
} SparkSpin;

typedef gboolean (*SparkSpinReadyFunc) (gconstpointer data);

guint    spark_spin_limit      (void);
gboolean spark_spin_until      (SparkSpin          *spin,
                                SparkSpinReadyFunc  ready,
                                gconstpointer       data);
void     spark_spin_note_event (SparkSpin          *spin);
gboolean spark_spin_will_spin  (const SparkSpin    *spin);
void     spark_cpu_relax       (void);
void     spark_mutex_lock      (GMutex             *mutex);

G_END_DECLS
