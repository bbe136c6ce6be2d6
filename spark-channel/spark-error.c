/* spark-error.c
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include "config.h"

#include "spark-error.h"

/**
 * spark_channel_error_quark:
 *
 * The quark of the %SPARK_CHANNEL_ERROR domain,
 * `spark-channel-error-quark`. May be called from any thread.
 *
 * Returns: the error domain's quark
 *
 * Since: 1.0
 */
GQuark
spark_channel_error_quark (void)
{
  /* Not G_DEFINE_QUARK: its unlocked static is a data race (a benign one,
   * but TSan rightly reports it) when two threads ask first at once. */
  static gint quark;
  GQuark q = (GQuark) g_atomic_int_get (&quark);

  if G_UNLIKELY (q == 0)
    {
      q = g_quark_from_static_string ("spark-channel-error-quark");
      g_atomic_int_set (&quark, (gint) q);
    }

  return q;
}
