/* stress-memory.c: a producer flood into a bounded mailbox keeps memory
 * bounded.
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * One producer sends 1M commands with send_command() into a server whose
 * mailbox holds 1000 and whose handler is slower than the producer. The
 * peak RSS growth must stay far below what an unbounded queue of 1M
 * messages would take (about 110 MB here: ~45 bytes of message plus the
 * GVariant each), and `pending` never exceeds the capacity.
 */

#include <string.h>

#include "spark-test-util.h"

#define CAPACITY 1000

typedef struct
{
  gint   handled;      /* atomic */
  guint  max_pending;  /* server thread */
  SparkModuleServer *server;
} Flood;

static gboolean
slow_command (const char    *name,
              GVariant      *parameters,
              GCancellable  *cancellable,
              gpointer       user_data,
              GError       **error)
{
  Flood *flood = user_data;
  guint pending = spark_module_server_get_pending (flood->server);
  volatile guint spin = 0;

  if (pending > flood->max_pending)
    flood->max_pending = pending;

  /* Slower than the producer, so that the mailbox stays full. */
  for (guint i = 0; i < 200; i++)
    spin += i;

  g_atomic_int_inc (&flood->handled);
  return TRUE;
}

/* Peak resident set size, in KiB. */
static gsize
peak_rss_kib (void)
{
  g_autofree char *status = NULL;
  const char *line;

  g_assert_true (g_file_get_contents ("/proc/self/status", &status, NULL, NULL));
  line = strstr (status, "VmHWM:");
  g_assert_nonnull (line);
  return (gsize) g_ascii_strtoull (line + strlen ("VmHWM:"), NULL, 10);
}

static void
test_bounded_flood (void)
{
  Flood flood = { 0 };
  g_autoptr(SparkHandler) handler = spark_func_handler_new (NULL, slow_command, &flood, NULL);
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GError) error = NULL;
  guint count = g_getenv ("SPARK_UNDER_VALGRIND") ? 20000 : 1000000;
  gsize before, after;

  flood.server = spark_module_server_new (handler);
  spark_module_server_set_capacity (flood.server, CAPACITY);
  g_assert_true (spark_module_server_start_in_thread (flood.server, &error));
  dispatcher = spark_module_server_create_dispatcher (flood.server);

  before = peak_rss_kib ();

  for (guint i = 0; i < count; i++)
    {
      g_assert_true (spark_dispatcher_send_command (dispatcher, "flood", g_variant_new_int32 ((gint32) i),
                                                    NULL, &error));
      g_assert_no_error (error);
    }

  spark_test_shutdown (flood.server, SPARK_SHUTDOWN_MODE_DRAIN);
  after = peak_rss_kib ();

  g_assert_cmpint (g_atomic_int_get (&flood.handled), ==, (gint) count);
  g_assert_cmpuint (flood.max_pending, <=, CAPACITY);

  g_test_message ("%u commands through a mailbox of %u: peak RSS grew by %" G_GSIZE_FORMAT " KiB",
                  count, CAPACITY, after - before);
  g_printerr ("# %u commands, capacity %u: peak RSS grew by %" G_GSIZE_FORMAT " KiB\n",
              count, CAPACITY, after - before);

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  /* The sanitizers' quarantines and shadow memory make RSS meaningless. */
  g_test_message ("RSS bound not checked under a sanitizer");
#else
  /* So does valgrind's own heap; the bound on pending still holds. */
  if (g_getenv ("SPARK_UNDER_VALGRIND") != NULL)
    g_test_message ("RSS bound not checked under valgrind");
  else
    g_assert_cmpuint (after - before, <, 8 * 1024);   /* vs ~110 MB unbounded */
#endif

  g_clear_object (&flood.server);
}

int
main (int   argc,
      char *argv[])
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/spark/stress/memory/bounded-flood", test_bounded_flood);

  return g_test_run ();
}
