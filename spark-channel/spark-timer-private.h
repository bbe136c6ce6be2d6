/* spark-timer-private.h: deadlines on a clock of their own
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Depends on GLib only: a deadline and a callback, embedded in whatever
 * needs one (a request's timeout).
 */

#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct _SparkTimeout SparkTimeout;

/* Called on the timer's thread, without its lock, once @timeout is due;
 * @timeout has left the timer by then. */
typedef void (*SparkTimeoutFunc) (SparkTimeout *timeout);

struct _SparkTimeout
{
  gint64            deadline;   /* monotonic µs; immutable while added */
  SparkTimeoutFunc  func;       /* immutable while added */
  GSequenceIter    *iter;       /* the timer's lock: set while added */
};

void     spark_timer_add    (SparkTimeout     *timeout,
                             gint64            deadline,
                             SparkTimeoutFunc  func);
gboolean spark_timer_remove (SparkTimeout     *timeout);

G_END_DECLS
