/* subprocess.c: a module in a helper process, restarted when it dies
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * One program, two roles: run without arguments it is the application,
 * which starts itself again with --helper as the module's process. The
 * module keeps a key-value store; the application writes and reads a
 * value, kills the helper (SIGKILL, as a crash would), sees it restarted
 * with an empty store, and shuts it down. Exits 0 if everything happened
 * as printed.
 */

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <spark-channel.h>

/* The helper: a key-value store. */
static GVariant *
store_request (const char    *name,
               GVariant      *parameters,
               GCancellable  *cancellable,
               gpointer       user_data,
               GError       **error)
{
  GHashTable *store = user_data;

  if (g_str_equal (name, "UpdateData") && parameters != NULL &&
      g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(ss)")))
    {
      const char *key, *value;

      g_variant_get (parameters, "(&s&s)", &key, &value);
      g_hash_table_replace (store, g_strdup (key), g_strdup (value));
      return g_variant_new_boolean (TRUE);
    }
  if (g_str_equal (name, "GetData") && parameters != NULL &&
      g_variant_is_of_type (parameters, G_VARIANT_TYPE_STRING))
    {
      const char *value = g_hash_table_lookup (store, g_variant_get_string (parameters, NULL));

      if (value != NULL)
        return g_variant_new_string (value);
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "No data for “%s”",
                   g_variant_get_string (parameters, NULL));
      return NULL;
    }
  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED, "No request “%s”", name);
  return NULL;
}

static int
helper_main (void)
{
  GHashTable *store = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_autoptr(SparkHandler) handler = spark_func_handler_new (store_request, NULL, store,
                                                            (GDestroyNotify) g_hash_table_unref);
  g_autoptr(GError) error = NULL;

  if (!spark_subprocess_serve (handler, &error))
    {
      g_printerr ("helper: %s\n", error->message);
      return 1;
    }
  return 0;
}

/* The application. */
static void
on_restarted (SparkSubprocess *module,
              guint            restarts,
              gpointer         user_data)
{
  printf ("the helper was restarted (%u)\n", restarts);
  *(gboolean *) user_data = TRUE;
}

/* The token is cancelled on a thread of the library's: wake this one. */
static void
on_token_cancelled (GCancellable *token,
                    gpointer      user_data)
{
  g_main_context_wakeup (NULL);
}

int
main (int   argc,
      char *argv[])
{
  g_autofree char *self_path = NULL;
  g_autoptr(SparkSubprocess) module = NULL;
  g_autoptr(SparkDispatcher) store = NULL;
  g_autoptr(GCancellable) token = g_cancellable_new ();
  g_autoptr(GError) error = NULL;
  g_autofree char *pid = NULL;
  GVariant *reply;
  gboolean restarted = FALSE;

  if (argc > 1 && g_str_equal (argv[1], "--helper"))
    return helper_main ();

  self_path = g_file_read_link ("/proc/self/exe", NULL);
  module = spark_subprocess_new ((const char *[]) { self_path != NULL ? self_path : argv[0], "--helper", NULL });
  g_object_set (module, "max-restarts", 1, "restart-delay", 10, NULL);
  g_signal_connect (module, "restarted", G_CALLBACK (on_restarted), &restarted);
  if (!spark_subprocess_spawn (module, &error))
    {
      g_printerr ("could not start the helper: %s\n", error->message);
      return 1;
    }
  store = spark_subprocess_create_dispatcher (module);

  reply = spark_dispatcher_request_sync (store, "UpdateData", g_variant_new ("(ss)", "user123", "hello"),
                                         G_VARIANT_TYPE_BOOLEAN, NULL, &error);
  g_assert_no_error (error);
  g_variant_unref (reply);
  reply = spark_dispatcher_request_sync (store, "GetData", g_variant_new_string ("user123"),
                                         G_VARIANT_TYPE_STRING, NULL, &error);
  g_assert_no_error (error);
  printf ("GetData user123: %s\n", g_variant_get_string (reply, NULL));
  g_variant_unref (reply);

  /* A crash: the helper is killed, and started again. */
  pid = spark_subprocess_dup_identifier (module);
  kill ((pid_t) g_ascii_strtoll (pid, NULL, 10), SIGKILL);
  printf ("killed the helper\n");
  while (!restarted)
    g_main_context_iteration (NULL, TRUE);

  /* A new process: the store starts empty. */
  reply = spark_dispatcher_request_sync (store, "GetData", g_variant_new_string ("user123"),
                                         G_VARIANT_TYPE_STRING, NULL, &error);
  g_assert_null (reply);
  printf ("GetData user123: %s\n", error->message);
  g_assert_true (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND));
  g_clear_error (&error);

  g_signal_connect (token, "cancelled", G_CALLBACK (on_token_cancelled), NULL);
  if (!spark_dispatcher_send_shutdown (store, token, &error))
    return 1;
  while (!g_cancellable_is_cancelled (token))
    g_main_context_iteration (NULL, TRUE);
  printf ("shut down\n");
  return 0;
}
