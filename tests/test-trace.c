/* test-trace.c: the Sysprof hooks, written to a capture file and read back
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Built only with -Dsysprof=true (suite 'sysprof'). The hooks of
 * spark-trace-private.h write to a SysprofCaptureWriter on a file of the
 * test's own, the file is read back with SysprofCaptureReader, and the
 * marks' names, times and messages and the counter's definition and
 * values are checked frame by frame.
 */

#include "config.h"

#include <string.h>

#include <glib/gstdio.h>
#include <sysprof-capture.h>

#include "spark-channel.h"
#include "spark-trace-private.h"

typedef struct
{
  char *name;
  char *group;
  char *message;
  gint64 time;
  gint64 duration;
} Mark;

typedef struct
{
  GArray *marks;      /* Mark */
  GPtrArray *defs;    /* SysprofCaptureCounter *, copied */
  GArray *set_ids;    /* guint, one per value set, in file order */
  GArray *set_values; /* gint64 */
} Capture;

static void
mark_clear (gpointer data)
{
  Mark *mark = data;

  g_free (mark->name);
  g_free (mark->group);
  g_free (mark->message);
}

static void
capture_clear (Capture *capture)
{
  g_clear_pointer (&capture->marks, g_array_unref);
  g_clear_pointer (&capture->defs, g_ptr_array_unref);
  g_clear_pointer (&capture->set_ids, g_array_unref);
  g_clear_pointer (&capture->set_values, g_array_unref);
}

/* Reads every mark and counter frame of the capture at @path. */
static void
capture_read (const char *path,
              Capture    *capture)
{
  SysprofCaptureReader *reader;
  SysprofCaptureFrameType type;

  capture->marks = g_array_new (FALSE, TRUE, sizeof (Mark));
  g_array_set_clear_func (capture->marks, mark_clear);
  capture->defs = g_ptr_array_new_with_free_func (g_free);
  capture->set_ids = g_array_new (FALSE, TRUE, sizeof (guint));
  capture->set_values = g_array_new (FALSE, TRUE, sizeof (gint64));

  reader = sysprof_capture_reader_new (path);
  g_assert_nonnull (reader);

  while (sysprof_capture_reader_peek_type (reader, &type))
    {
      switch ((int) type)
        {
        case SYSPROF_CAPTURE_FRAME_MARK:
          {
            const SysprofCaptureMark *fr = sysprof_capture_reader_read_mark (reader);
            Mark mark;

            g_assert_nonnull (fr);
            mark.name = g_strndup (fr->name, sizeof fr->name);
            mark.group = g_strndup (fr->group, sizeof fr->group);
            mark.message = g_strdup (fr->message);
            mark.time = fr->frame.time;
            mark.duration = fr->duration;
            g_array_append_val (capture->marks, mark);
          }
          break;

        case SYSPROF_CAPTURE_FRAME_CTRDEF:
          {
            const SysprofCaptureCounterDefine *fr = sysprof_capture_reader_read_counter_define (reader);

            g_assert_nonnull (fr);
            for (guint i = 0; i < fr->n_counters; i++)
              g_ptr_array_add (capture->defs, g_memdup2 (&fr->counters[i], sizeof fr->counters[i]));
          }
          break;

        case SYSPROF_CAPTURE_FRAME_CTRSET:
          {
            const SysprofCaptureCounterSet *fr = sysprof_capture_reader_read_counter_set (reader);

            g_assert_nonnull (fr);
            for (guint i = 0; i < fr->n_values; i++)
              for (guint j = 0; j < G_N_ELEMENTS (fr->values[i].ids); j++)
                {
                  guint id = fr->values[i].ids[j];
                  gint64 value = fr->values[i].values[j].v64;

                  if (id == 0)
                    continue;
                  g_array_append_val (capture->set_ids, id);
                  g_array_append_val (capture->set_values, value);
                }
          }
          break;

        default:
          g_assert_true (sysprof_capture_reader_skip (reader));
          break;
        }
    }

  sysprof_capture_reader_unref (reader);
}

/* A writer on a new file in a temporary directory; the hooks write to it
 * until spark_trace_set_writer (NULL). */
static char *
capture_start (char **dir_out)
{
  g_autoptr(GError) error = NULL;
  SysprofCaptureWriter *writer;
  char *dir;
  char *path;

  dir = g_dir_make_tmp ("spark-trace-XXXXXX", &error);
  g_assert_no_error (error);
  path = g_build_filename (dir, "capture.syscap", NULL);

  writer = sysprof_capture_writer_new (path, 0);
  g_assert_nonnull (writer);
  spark_trace_set_writer (writer);
  sysprof_capture_writer_unref (writer);
  g_assert_true (spark_trace_is_active ());

  *dir_out = dir;
  return path;
}

/* Flushes and closes the capture, then reads it. */
static void
capture_finish (char    *path,
                char    *dir,
                Capture *capture)
{
  spark_trace_set_writer (NULL);
  capture_read (path, capture);
  g_assert_cmpint (g_unlink (path), ==, 0);
  g_assert_cmpint (g_rmdir (dir), ==, 0);
  g_free (path);
  g_free (dir);
}

static void
test_trace_inactive (void)
{
  SparkTraceCounter counter = 0;

  /* Not run by Sysprof (the test unsets SYSPROF_CONTROL_FD), no writer:
   * the hooks do nothing, and define nothing. */
  g_assert_false (spark_trace_is_active ());
  spark_trace_message_handled ("kv", "GetData", 1, 2, 3);
  spark_trace_queue_depth (&counter, "kv", 5);
  g_assert_cmpuint (counter, ==, 0);
}

static void
test_trace_marks (void)
{
  Capture capture = { 0 };
  const Mark *mark;
  char *dir;
  char *path = capture_start (&dir);

  spark_trace_message_handled ("kv", "GetData", 250, 1250, 4250);
  spark_trace_message_handled ("kv", "UpdateData", 0, 5000, 5100);
  /* A long name is cut to the mark's 40 bytes; a queue time not measured
   * is left out. */
  spark_trace_message_handled ("renderer",
                               "a-message-name-longer-than-forty-bytes-in-all", -1, 30, 70);
  capture_finish (path, dir, &capture);

  g_assert_cmpuint (capture.marks->len, ==, 3);

  mark = &g_array_index (capture.marks, Mark, 0);
  g_assert_cmpstr (mark->group, ==, "spark-channel");
  g_assert_cmpstr (mark->name, ==, "GetData");
  g_assert_cmpint (mark->time, ==, 1250 * 1000);     /* began, in ns */
  g_assert_cmpint (mark->duration, ==, 3000 * 1000); /* the handler's time */
  g_assert_cmpstr (mark->message, ==, "server “kv”: queued 250 µs, handled 3000 µs");

  mark = &g_array_index (capture.marks, Mark, 1);
  g_assert_cmpstr (mark->name, ==, "UpdateData");
  g_assert_cmpint (mark->time, ==, 5000 * 1000);
  g_assert_cmpint (mark->duration, ==, 100 * 1000);
  g_assert_cmpstr (mark->message, ==, "server “kv”: queued 0 µs, handled 100 µs");

  mark = &g_array_index (capture.marks, Mark, 2);
  g_assert_cmpstr (mark->name, ==, "a-message-name-longer-than-forty-bytes-");
  g_assert_cmpint (mark->duration, ==, 40 * 1000);
  g_assert_cmpstr (mark->message, ==, "server “renderer”: handled 40 µs");

  capture_clear (&capture);
}

static void
test_trace_counter (void)
{
  static const gint64 depths[] = { 3, 7, 1, 0 };
  Capture capture = { 0 };
  SparkTraceCounter a = 0;
  SparkTraceCounter b = 0;
  const SysprofCaptureCounter *def;
  char *dir;
  char *path = capture_start (&dir);

  for (guint i = 0; i < G_N_ELEMENTS (depths); i++)
    spark_trace_queue_depth (&a, "kv", (guint) depths[i]);
  spark_trace_queue_depth (&b, "renderer", 42);
  g_assert_cmpuint (a, !=, 0);
  g_assert_cmpuint (b, !=, 0);
  g_assert_cmpuint (a, !=, b);
  capture_finish (path, dir, &capture);

  /* Each counter is defined once, when first set. */
  g_assert_cmpuint (capture.defs->len, ==, 2);
  def = g_ptr_array_index (capture.defs, 0);
  g_assert_cmpuint (def->id, ==, a);
  g_assert_cmpstr (def->category, ==, "spark-channel");
  g_assert_cmpstr (def->name, ==, "kv");
  g_assert_cmpuint (def->type, ==, SYSPROF_CAPTURE_COUNTER_INT64);
  def = g_ptr_array_index (capture.defs, 1);
  g_assert_cmpuint (def->id, ==, b);
  g_assert_cmpstr (def->name, ==, "renderer");

  g_assert_cmpuint (capture.set_ids->len, ==, G_N_ELEMENTS (depths) + 1);
  for (guint i = 0; i < G_N_ELEMENTS (depths); i++)
    {
      g_assert_cmpuint (g_array_index (capture.set_ids, guint, i), ==, a);
      g_assert_cmpint (g_array_index (capture.set_values, gint64, i), ==, depths[i]);
    }
  g_assert_cmpuint (g_array_index (capture.set_ids, guint, G_N_ELEMENTS (depths)), ==, b);
  g_assert_cmpint (g_array_index (capture.set_values, gint64, G_N_ELEMENTS (depths)), ==, 42);

  capture_clear (&capture);
}

#define N_THREADS 4
#define N_MARKS 2000

typedef struct
{
  SparkTraceCounter *counter;
  guint index;
} Worker;

static gpointer
worker_thread (gpointer data)
{
  Worker *worker = data;
  char name[16];

  g_snprintf (name, sizeof name, "msg-%u", worker->index);
  for (guint i = 0; i < N_MARKS; i++)
    {
      spark_trace_message_handled ("shared", name, 0, i, i + worker->index + 1);
      spark_trace_queue_depth (worker->counter, "shared", i);
    }
  return NULL;
}

/* Servers on many threads trace at once: no frame is lost or torn, and a
 * counter set from several threads is defined once they agree on it. */
static void
test_trace_threads (void)
{
  Capture capture = { 0 };
  SparkTraceCounter counter = 0;
  Worker workers[N_THREADS];
  GThread *threads[N_THREADS];
  guint per_name[N_THREADS] = { 0 };
  char *dir;
  char *path = capture_start (&dir);

  for (guint i = 0; i < N_THREADS; i++)
    {
      workers[i].counter = &counter;
      workers[i].index = i;
      threads[i] = g_thread_new ("trace", worker_thread, &workers[i]);
    }
  for (guint i = 0; i < N_THREADS; i++)
    g_thread_join (threads[i]);
  capture_finish (path, dir, &capture);

  g_assert_cmpuint (capture.marks->len, ==, N_THREADS * N_MARKS);
  for (guint i = 0; i < capture.marks->len; i++)
    {
      const Mark *mark = &g_array_index (capture.marks, Mark, i);
      guint index;

      g_assert_true (g_str_has_prefix (mark->name, "msg-"));
      index = (guint) g_ascii_strtoull (mark->name + 4, NULL, 10);
      g_assert_cmpuint (index, <, N_THREADS);
      g_assert_cmpint (mark->duration, ==, (gint64) (index + 1) * 1000);
      per_name[index]++;
    }
  for (guint i = 0; i < N_THREADS; i++)
    g_assert_cmpuint (per_name[i], ==, N_MARKS);

  /* Racing threads may each define one, but all values go to the one
   * they agreed on. */
  g_assert_cmpuint (capture.defs->len, >=, 1);
  g_assert_cmpuint (capture.defs->len, <=, N_THREADS);
  g_assert_cmpuint (capture.set_ids->len, ==, N_THREADS * N_MARKS);
  for (guint i = 0; i < capture.set_ids->len; i++)
    g_assert_cmpuint (g_array_index (capture.set_ids, guint, i), ==, counter);

  capture_clear (&capture);
}

static GVariant *
server_request (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  g_usleep (1000);
  return g_variant_new_boolean (TRUE);
}

static gboolean
server_command (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  return TRUE;
}

static void
on_stopped (GObject      *source,
            GAsyncResult *result,
            gpointer      data)
{
  g_assert_true (spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, NULL));
  *(gboolean *) data = TRUE;
}

/* A real server, while "Sysprof records": a mark for each message it
 * handled, named after it, and its queue depth counted. */
static void
test_trace_server (void)
{
  g_autoptr(SparkHandler) handler = spark_func_handler_new (server_request, server_command, NULL, NULL);
  g_autoptr(SparkModuleServer) server = spark_module_server_new (handler);
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  Capture capture = { 0 };
  GError *error = NULL;
  guint requests = 0, commands = 0, queued = 0;
  char *dir;
  char *path = capture_start (&dir);
  gboolean stopped = FALSE;

  spark_module_server_set_name (server, "traced");
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  dispatcher = spark_module_server_create_dispatcher (server);
  for (guint i = 0; i < 16; i++)
    {
      g_autoptr(GVariant) reply = spark_dispatcher_request_sync (dispatcher, "Render", NULL, NULL, NULL, &error);

      g_assert_no_error (error);
      g_assert_true (spark_dispatcher_send_command (dispatcher, "Progress", NULL, NULL, &error));
    }
  spark_module_server_shutdown_async (server, SPARK_SHUTDOWN_MODE_DRAIN, NULL, on_stopped, &stopped);
  while (!stopped)
    g_main_context_iteration (NULL, TRUE);
  capture_finish (path, dir, &capture);

  for (guint i = 0; i < capture.marks->len; i++)
    {
      const Mark *mark = &g_array_index (capture.marks, Mark, i);

      g_assert_cmpstr (mark->group, ==, "spark-channel");
      g_assert_true (g_str_has_prefix (mark->message, "server “traced”: "));
      if (g_str_equal (mark->name, "Render"))
        {
          requests++;
          /* The handler sleeps 1 ms. */
          g_assert_cmpint (mark->duration, >=, 1000 * 1000);
          if (strstr (mark->message, "queued") != NULL)
            queued++;
        }
      else if (g_str_equal (mark->name, "Progress"))
        commands++;
    }
  g_assert_cmpuint (requests, ==, 16);
  g_assert_cmpuint (commands, ==, 16);
  /* One request in 8 of this thread carried its send time. */
  g_assert_cmpuint (queued, ==, 2);
  /* A counter for the server's queue depth, set at least at the stop. */
  g_assert_cmpuint (capture.defs->len, ==, 1);
  g_assert_cmpuint (capture.set_values->len, >=, 1);
  g_assert_cmpint (g_array_index (capture.set_values, gint64, capture.set_values->len - 1), ==, 0);
  capture_clear (&capture);
}

int
main (int   argc,
      char *argv[])
{
  /* Run under sysprof-cli, the collector would take the frames. */
  g_unsetenv ("SYSPROF_CONTROL_FD");

  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/spark/trace/inactive", test_trace_inactive);
  g_test_add_func ("/spark/trace/marks", test_trace_marks);
  g_test_add_func ("/spark/trace/counter", test_trace_counter);
  g_test_add_func ("/spark/trace/threads", test_trace_threads);
  g_test_add_func ("/spark/trace/server", test_trace_server);

  return g_test_run ();
}
