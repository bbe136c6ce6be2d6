/* spark-trace-private.h: Sysprof marks and counters, or nothing
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Depends on GLib only (and, with -Dsysprof=true, on sysprof-capture-4 in
 * spark-trace.c). Built without the option, every hook below is an empty
 * static inline function: the calls and their arguments compile to
 * nothing.
 *
 * With the option, the hooks write through Sysprof's collector
 * (sysprof_collector_*()): a program run under `sysprof-cli` or Sysprof
 * (which pass SYSPROF_CONTROL_FD) gets a mark per handled message and a
 * counter per server in its capture; any other program pays one check per
 * call (spark_trace_is_active()). Tests can send the same frames to a
 * SysprofCaptureWriter of their own (spark_trace_set_writer()).
 *
 * Where the server calls them (SparkModuleServer's dispatch, on whatever
 * thread handles the message; any thread may call them, concurrently):
 *
 *   - spark_trace_message_handled(), once per request or command whose
 *     handler ran, after it returned (for an invocation: when the server
 *     moves on), with the server's name, the message's name, how long it
 *     waited in the mailbox (µs; negative when not measured), and when
 *     its handler began and ended (g_get_monotonic_time() µs);
 *   - spark_trace_queue_depth(), with the new `pending` each time the
 *     server takes a message (or a batch) off its mailbox, and once with 0
 *     when it stops. The server keeps the SparkTraceCounter (zeroed) for
 *     its lifetime.
 *
 * Guard work done only for these hooks (reading the clock) with
 * spark_trace_is_active(), which is a constant FALSE without the option.
 *
 * In the server with metrics and pools (spark_server_worker_dispatch_some()
 * on main at e84974c), that is:
 *
 *   - after spark_mailbox_take() or spark_mailbox_take_one() returned a
 *     batch, and in spark_server_worker_stop() with 0:
 *
 *       spark_trace_queue_depth (&self->trace_depth, self->name,
 *                                spark_module_server_get_pending (self));
 *
 *     with a `SparkTraceCounter trace_depth;` in the server's struct;
 *   - in the COMMAND and REQUEST cases, around the handler's call, next to
 *     spark_server_worker_time_start() and _time_end():
 *
 *       gint64 t0 = spark_trace_is_active () ? g_get_monotonic_time () : 0;
 *       const char *name = spark_request_get_name (req);   (or the command's)
 *       ... the handler ...
 *       if (G_UNLIKELY (t0 != 0))
 *         spark_trace_message_handled (self->name, name, queue_us, t0,
 *                                      g_get_monotonic_time ());
 *
 *     where queue_us is (guint32) t0 - spark_request_get_queued_us (req)
 *     when that stamp is not 0, and -1 otherwise (commands: -1); the name
 *     must still be valid after the call (the request kept alive until
 *     then, or the name read from the message the worker still holds).
 */

#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* A Sysprof counter's id, defined on first use; 0 until then. Zero it and
 * keep it as long as whatever it counts. */
typedef guint SparkTraceCounter;

/* The mark group every spark-channel mark belongs to, and the category of
 * its counters. */
#define SPARK_TRACE_GROUP "spark-channel"

#ifdef SPARK_ENABLE_SYSPROF

struct _SysprofCaptureWriter;

gboolean spark_trace_is_active       (void);
void     spark_trace_message_handled (const char                   *server_name,
                                      const char                   *message_name,
                                      gint64                        queue_usec,
                                      gint64                        started_usec,
                                      gint64                        ended_usec);
void     spark_trace_queue_depth     (SparkTraceCounter            *counter,
                                      const char                   *server_name,
                                      guint                         depth);

/* Tests: write every later frame to @writer (NULL: back to the
 * collector). Counters defined before the switch stay with the sink they
 * were defined in; zero them again after switching. */
void     spark_trace_set_writer      (struct _SysprofCaptureWriter *writer);

#else /* !SPARK_ENABLE_SYSPROF */

static inline gboolean
spark_trace_is_active (void)
{
  return FALSE;
}

static inline void
spark_trace_message_handled (const char *server_name,
                             const char *message_name,
                             gint64      queue_usec,
                             gint64      started_usec,
                             gint64      ended_usec)
{
}

static inline void
spark_trace_queue_depth (SparkTraceCounter *counter,
                         const char        *server_name,
                         guint              depth)
{
}

#endif /* SPARK_ENABLE_SYSPROF */

G_END_DECLS
