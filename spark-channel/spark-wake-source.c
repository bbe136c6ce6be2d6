/* spark-wake-source.c
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include "config.h"

#include "spark-wake-source-private.h"

static gboolean
is_ready (gconstpointer data)
{
  return g_atomic_int_get (&((SparkWakeSource *) data)->ready) != 0;
}

static gboolean
spark_wake_source_prepare (GSource *source,
                           gint    *timeout)
{
  SparkWakeSource *self = (SparkWakeSource *) source;

  *timeout = -1;

  if (is_ready (self))
    return TRUE;

  /* GLib calls prepare without the context's lock held. */
  if (g_atomic_int_get (&self->expecting) > 0)
    return spark_spin_until (&self->spin, is_ready, self);

  return FALSE;
}

static gboolean
spark_wake_source_check (GSource *source)
{
  return g_atomic_int_get (&((SparkWakeSource *) source)->ready);
}

static gboolean
spark_wake_source_dispatch (GSource     *source,
                            GSourceFunc  callback,
                            gpointer     user_data)
{
  /* The callback is the owner's dispatch, called with the source itself. */
  return callback (source);
}

static void
spark_wake_source_finalize (GSource *source)
{
  SparkWakeSource *self = (SparkWakeSource *) source;

  if (self->finalize != NULL)
    self->finalize (source);
}

static GSourceFuncs spark_wake_source_funcs = {
  .prepare = spark_wake_source_prepare,
  .check = spark_wake_source_check,
  .dispatch = spark_wake_source_dispatch,
  .finalize = spark_wake_source_finalize,
};

GSource *
spark_wake_source_new (gsize         struct_size,
                       GSourceFunc   dispatch,
                       void        (*finalize) (GSource *self),
                       const char   *name)
{
  GSource *source;

  g_assert (struct_size >= sizeof (SparkWakeSource));

  source = g_source_new (&spark_wake_source_funcs, (guint) struct_size);
  ((SparkWakeSource *) source)->finalize = finalize;
  g_source_set_callback (source, dispatch, NULL, NULL);
  g_source_set_static_name (source, name);
  g_source_set_priority (source, G_PRIORITY_DEFAULT);

  return source;
}

void
spark_wake_source_attach (SparkWakeSource *self,
                          GMainContext    *context)
{
  self->context = context;
  g_source_attach ((GSource *) self, context);
}

/* Whether the thread iterating the context would spin in the next
 * prepare: an outcome from another thread is expected, and spinning for it
 * still pays (see spark_spin_until()). From that thread. */
gboolean
spark_wake_source_will_spin (SparkWakeSource *self)
{
  return g_atomic_int_get (&self->expecting) > 0 && spark_spin_will_spin (&self->spin);
}

/* From any thread; the caller keeps the context alive. The thread that
 * owns the context is in an iteration of it, whose next prepare sees the
 * source ready: it needs no wakeup (GLib's own rule for a source attached
 * from the owner), and that saves the eventfd's write and read, e.g. for
 * a module served on the context that receives its D-Bus calls. */
void
spark_wake_source_wake (SparkWakeSource *self)
{
  if (!g_atomic_int_exchange (&self->ready, TRUE) && !g_main_context_is_owner (self->context))
    g_main_context_wakeup (self->context);
}
