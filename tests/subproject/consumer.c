/* consumer.c: the smallest program built against spark-channel
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Built by tests/check-subproject.sh twice: as a meson project that takes
 * spark-channel as a subproject, and by hand with
 * `pkg-config --cflags --libs spark-channel-1` against the uninstalled
 * build. Starts a server on a thread of its own, sends one request, checks
 * the reply, and shuts the server down. Exits 0 on success.
 */

#include <spark-channel.h>

static GVariant *
handle_request (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable G_GNUC_UNUSED,
                gpointer       user_data G_GNUC_UNUSED,
                GError       **error)
{
  const char *who;

  if (!g_str_equal (name, "Greet") || parameters == NULL)
    {
      g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                   "Unknown request “%s”", name);
      return NULL;
    }

  g_variant_get (parameters, "(&s)", &who);
  return g_variant_new_take_string (g_strdup_printf ("hello, %s", who));
}

static void
on_stopped (GObject      *source,
            GAsyncResult *result,
            gpointer      user_data)
{
  gboolean *done = user_data;

  spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, NULL);
  *done = TRUE;
}

int
main (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(SparkHandler) handler = NULL;
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GVariant) reply = NULL;
  gboolean stopped = FALSE;

  g_print ("spark-channel %s (built against %d.%d.%d)\n", SPARK_VERSION_S,
           SPARK_MAJOR_VERSION, SPARK_MINOR_VERSION, SPARK_MICRO_VERSION);

  handler = spark_func_handler_new (handle_request, NULL, NULL, NULL);
  server = spark_module_server_new (handler);
  if (!spark_module_server_start_in_thread (server, &error))
    {
      g_printerr ("start_in_thread: %s\n", error->message);
      return 1;
    }

  dispatcher = spark_module_server_create_dispatcher (server);
  reply = spark_dispatcher_request_sync (dispatcher, "Greet", g_variant_new ("(s)", "consumer"),
                                         G_VARIANT_TYPE_STRING, NULL, &error);
  if (reply == NULL)
    {
      g_printerr ("request_sync: %s\n", error->message);
      return 1;
    }
  if (!g_str_equal (g_variant_get_string (reply, NULL), "hello, consumer"))
    {
      g_printerr ("unexpected reply: %s\n", g_variant_get_string (reply, NULL));
      return 1;
    }
  g_print ("reply: %s\n", g_variant_get_string (reply, NULL));

  spark_module_server_shutdown_async (server, SPARK_SHUTDOWN_MODE_DRAIN, NULL, on_stopped, &stopped);
  while (!stopped)
    g_main_context_iteration (NULL, TRUE);

  return 0;
}
