/* spark-wake-source-private.h: a GSource woken from any thread without a lock
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include <glib.h>

#include "spark-spin-private.h"

G_BEGIN_DECLS

/* A GSource that is ready while its flag is set. Waking it sets the flag
 * and, only if it was not set already, wakes its context with
 * g_main_context_wakeup(), which takes no lock: unlike
 * g_source_set_ready_time(), a waker never contends for the context's lock
 * with the thread iterating it. Embed it first in a larger source. */
typedef struct
{
  GSource       source;
  GMainContext *context;                   /* immutable once attached; not a reference */
  gint          ready;                     /* atomic */
  void        (*finalize) (GSource *self); /* immutable, nullable: the owner's */
  gint          expecting;                 /* atomic: > 0 while a wakeup is expected soon; then
                                            * the iterating thread polls the flag for a bounded,
                                            * adaptive time in prepare() before the context
                                            * sleeps (the owner counts it) */
  SparkSpin     spin;                      /* the thread iterating the context */
} SparkWakeSource;

GSource  *spark_wake_source_new    (gsize             struct_size,
                                    GSourceFunc       dispatch,
                                    void            (*finalize) (GSource *self),
                                    const char       *name);
void      spark_wake_source_attach (SparkWakeSource  *self,
                                    GMainContext     *context);
void      spark_wake_source_wake   (SparkWakeSource  *self);
gboolean  spark_wake_source_will_spin (SparkWakeSource *self);

/* From its own dispatch: not ready any more, or ready again (to be
 * dispatched in the next iteration, without a wakeup). */
static inline void
spark_wake_source_set_ready (SparkWakeSource *self,
                             gboolean         ready)
{
  g_atomic_int_set (&self->ready, ready);
}

G_END_DECLS
