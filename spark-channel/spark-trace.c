/* spark-trace.c: Sysprof marks and counters
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Only built with -Dsysprof=true. Frames go to Sysprof's collector, which
 * writes them to the capture of the sysprof-cli or Sysprof that runs the
 * program (and drops them otherwise), or to the SysprofCaptureWriter a
 * test set. Times are g_get_monotonic_time() µs, that is CLOCK_MONOTONIC,
 * Sysprof's clock, in ns once multiplied by 1000.
 */

#include "config.h"

#include "spark-trace-private.h"

#include <unistd.h>

#include <sysprof-capture.h>

/* The test's writer and every use of it: SysprofCaptureWriter is not safe
 * to use from two threads at once, the collector is (a ring per thread). */
static GMutex trace_writer_lock;
static SysprofCaptureWriter *trace_writer;   /* trace_writer_lock */
static gint trace_writer_set;                /* atomic: trace_writer != NULL */

gboolean
spark_trace_is_active (void)
{
  return g_atomic_int_get (&trace_writer_set) || sysprof_collector_is_active ();
}

void
spark_trace_set_writer (SysprofCaptureWriter *writer)
{
  g_mutex_lock (&trace_writer_lock);
  if (trace_writer != NULL)
    {
      sysprof_capture_writer_flush (trace_writer);
      sysprof_capture_writer_unref (trace_writer);
    }
  trace_writer = writer ? sysprof_capture_writer_ref (writer) : NULL;
  g_atomic_int_set (&trace_writer_set, writer != NULL);
  g_mutex_unlock (&trace_writer_lock);
}

void
spark_trace_message_handled (const char *server_name,
                             const char *message_name,
                             gint64      queue_usec,
                             gint64      started_usec,
                             gint64      ended_usec)
{
  char message[160];

  if (!spark_trace_is_active ())
    return;

  if (queue_usec >= 0)
    g_snprintf (message, sizeof message,
                "server “%s”: queued %" G_GINT64_FORMAT " µs, handled %" G_GINT64_FORMAT " µs",
                server_name ? server_name : "", queue_usec,
                MAX (ended_usec - started_usec, 0));
  else
    g_snprintf (message, sizeof message,
                "server “%s”: handled %" G_GINT64_FORMAT " µs",
                server_name ? server_name : "", MAX (ended_usec - started_usec, 0));

  if (g_atomic_int_get (&trace_writer_set))
    {
      g_mutex_lock (&trace_writer_lock);
      if (trace_writer != NULL)
        sysprof_capture_writer_add_mark (trace_writer, started_usec * 1000, -1, getpid (),
                                         MAX (ended_usec - started_usec, 0) * 1000,
                                         SPARK_TRACE_GROUP, message_name, message);
      g_mutex_unlock (&trace_writer_lock);
      return;
    }

  sysprof_collector_mark (started_usec * 1000,
                          MAX (ended_usec - started_usec, 0) * 1000,
                          SPARK_TRACE_GROUP, message_name, message);
}

/* Defines a counter for @server_name; returns its id, 0 if there is
 * nowhere to define it. */
static guint
spark_trace_define_counter (const char *server_name)
{
  SysprofCaptureCounter counter = { { 0 } };
  guint id = 0;

  g_strlcpy (counter.category, SPARK_TRACE_GROUP, sizeof counter.category);
  g_strlcpy (counter.name, server_name && *server_name ? server_name : "module server",
             sizeof counter.name);
  g_strlcpy (counter.description, "Messages queued in the server's mailbox (pending)",
             sizeof counter.description);
  counter.type = SYSPROF_CAPTURE_COUNTER_INT64;
  counter.value.v64 = 0;

  if (g_atomic_int_get (&trace_writer_set))
    {
      g_mutex_lock (&trace_writer_lock);
      if (trace_writer != NULL)
        {
          id = sysprof_capture_writer_request_counter (trace_writer, 1);
          counter.id = id;
          sysprof_capture_writer_define_counters (trace_writer, g_get_monotonic_time () * 1000,
                                                  -1, getpid (), &counter, 1);
        }
      g_mutex_unlock (&trace_writer_lock);
      return id;
    }

  id = sysprof_collector_request_counters (1);
  if (id != 0)
    {
      counter.id = id;
      sysprof_collector_define_counters (&counter, 1);
    }
  return id;
}

void
spark_trace_queue_depth (SparkTraceCounter *counter,
                         const char        *server_name,
                         guint              depth)
{
  SysprofCaptureCounterValue value;
  guint id;

  g_assert (counter != NULL);

  if (!spark_trace_is_active ())
    return;

  id = (guint) g_atomic_int_get ((gint *) counter);
  if (id == 0)
    {
      id = spark_trace_define_counter (server_name);
      if (id == 0)
        return;
      /* Two threads may race to define it: the first one's counter wins,
       * the other stays defined and unused. */
      if (!g_atomic_int_compare_and_exchange ((gint *) counter, 0, (gint) id))
        id = (guint) g_atomic_int_get ((gint *) counter);
    }

  value.v64 = depth;

  if (g_atomic_int_get (&trace_writer_set))
    {
      g_mutex_lock (&trace_writer_lock);
      if (trace_writer != NULL)
        sysprof_capture_writer_set_counters (trace_writer, g_get_monotonic_time () * 1000,
                                             -1, getpid (), &id, &value, 1);
      g_mutex_unlock (&trace_writer_lock);
      return;
    }

  sysprof_collector_set_counters (&id, &value, 1);
}
