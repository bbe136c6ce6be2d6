/* key-value.c: the Rust crate's own example, in C
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A key/value module: "GetData" and "UpdateData" requests, a "LogEvent"
 * command, then a shutdown with a token. The module runs on a thread of its
 * own; the client is this program's main thread, which awaits replies on
 * its main loop.
 */

#include <spark-channel.h>

/* The module's state: touched only by handler calls, one at a time on the
 * server's thread, so it needs no lock. */
typedef struct
{
  GHashTable *data;   /* key -> GVariant "au" */
} KeyValue;

static GVariant *
key_value_request (const char    *name,
                   GVariant      *parameters,
                   GCancellable  *cancellable,
                   gpointer       user_data,
                   GError       **error)
{
  KeyValue *kv = user_data;

  if (g_str_equal (name, "GetData") && g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(s)")))
    {
      const char *key;
      GVariant *values;

      g_variant_get (parameters, "(&s)", &key);
      values = g_hash_table_lookup (kv->data, key);
      if (values == NULL)
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "No data for “%s”", key);
          return NULL;
        }
      return g_variant_ref (values);
    }

  if (g_str_equal (name, "UpdateData") && g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(su)")))
    {
      const char *key;
      guint32 value;
      GVariant *old;
      GVariantBuilder builder;

      g_variant_get (parameters, "(&su)", &key, &value);
      g_variant_builder_init (&builder, G_VARIANT_TYPE ("au"));
      if ((old = g_hash_table_lookup (kv->data, key)) != NULL)
        {
          GVariantIter iter;
          guint32 v;

          g_variant_iter_init (&iter, old);
          while (g_variant_iter_next (&iter, "u", &v))
            g_variant_builder_add (&builder, "u", v);
        }
      g_variant_builder_add (&builder, "u", value);
      g_hash_table_replace (kv->data, g_strdup (key), g_variant_ref_sink (g_variant_builder_end (&builder)));

      return g_variant_new_boolean (TRUE);   /* the crate's Success(true) */
    }

  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
               "“%s” is not a request of this module", name);
  return NULL;
}

static gboolean
key_value_command (const char    *name,
                   GVariant      *parameters,
                   GCancellable  *cancellable,
                   gpointer       user_data,
                   GError       **error)
{
  if (g_str_equal (name, "LogEvent") && g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(s)")))
    {
      const char *event;

      g_variant_get (parameters, "(&s)", &event);
      g_print ("module: event logged: %s\n", event);
      return TRUE;
    }

  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
               "Unexpected command “%s”", name);
  return FALSE;
}

static void
key_value_free (gpointer data)
{
  KeyValue *kv = data;

  g_hash_table_unref (kv->data);
  g_free (kv);
}

typedef struct
{
  GMainLoop       *loop;
  SparkDispatcher *dispatcher;
  GCancellable    *token;
} Client;

static void on_get_data (GObject *source, GAsyncResult *result, gpointer user_data);

static void
on_update_data (GObject      *source,
                GAsyncResult *result,
                gpointer      user_data)
{
  Client *client = user_data;
  g_autoptr(GError) error = NULL;
  g_autoptr(GVariant) reply = NULL;

  reply = spark_dispatcher_request_finish (client->dispatcher, result, &error);
  if (reply == NULL)
    g_error ("UpdateData failed: %s", error->message);

  g_print ("client: data updated: success=%s\n", g_variant_get_boolean (reply) ? "true" : "false");

  spark_dispatcher_request_async (client->dispatcher, "GetData",
                                  g_variant_new ("(s)", "user123"),
                                  G_VARIANT_TYPE ("au"), NULL,
                                  on_get_data, client);
}

static void
on_get_data (GObject      *source,
             GAsyncResult *result,
             gpointer      user_data)
{
  Client *client = user_data;
  g_autoptr(GError) error = NULL;
  g_autoptr(GVariant) reply = NULL;
  g_autofree char *text = NULL;

  reply = spark_dispatcher_request_finish (client->dispatcher, result, &error);
  if (reply == NULL)
    g_error ("GetData failed: %s", error->message);

  text = g_variant_print (reply, FALSE);
  g_print ("client: data returned for user123: %s\n", text);

  if (!spark_dispatcher_send_command (client->dispatcher, "LogEvent",
                                      g_variant_new ("(s)", "User logged in"),
                                      NULL, &error))
    g_error ("LogEvent failed: %s", error->message);
  g_print ("client: command sent: LogEvent\n");

  if (!spark_dispatcher_send_shutdown (client->dispatcher, client->token, &error))
    g_error ("Shutdown failed: %s", error->message);
  g_print ("client: shutdown sent\n");
}

static void
on_token_cancelled (GCancellable *token,
                    gpointer      user_data)
{
  Client *client = user_data;

  /* Runs on the server's thread, once it has stopped. */
  g_print ("client: the module server has stopped (token cancelled)\n");
  g_main_loop_quit (client->loop);
}

static void
on_stopped (GObject      *source,
            GAsyncResult *result,
            gpointer      user_data)
{
  gboolean *stopped = user_data;

  spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, NULL);
  *stopped = TRUE;
}

int
main (void)
{
  g_autoptr(SparkHandler) handler = NULL;
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(GError) error = NULL;
  KeyValue *kv = g_new0 (KeyValue, 1);
  Client client = { 0 };
  gboolean stopped = FALSE;
  guint32 initial[] = { 1, 2 };
  GVariant *values;

  kv->data = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, (GDestroyNotify) g_variant_unref);
  values = g_variant_new_fixed_array (G_VARIANT_TYPE_UINT32, initial, G_N_ELEMENTS (initial), sizeof (guint32));
  g_hash_table_insert (kv->data, g_strdup ("user123"), g_variant_ref_sink (values));

  handler = spark_func_handler_new (key_value_request, key_value_command, kv, key_value_free);
  server = spark_module_server_new (handler);
  spark_module_server_set_name (server, "key-value");

  if (!spark_module_server_start_in_thread (server, &error))
    g_error ("Could not start the module server: %s", error->message);
  g_print ("module server 'key-value' started on its own thread\n");

  client.loop = g_main_loop_new (NULL, FALSE);
  client.dispatcher = spark_module_server_create_dispatcher (server);
  client.token = g_cancellable_new ();
  g_cancellable_connect (client.token, G_CALLBACK (on_token_cancelled), &client, NULL);

  g_print ("client: UpdateData(user123, 3)\n");
  spark_dispatcher_request_async (client.dispatcher, "UpdateData",
                                  g_variant_new ("(su)", "user123", 3),
                                  G_VARIANT_TYPE_BOOLEAN, NULL,
                                  on_update_data, &client);

  g_main_loop_run (client.loop);

  /* The server stops on the shutdown message; waiting for it here joins
   * its thread, like joining a thread. */
  spark_module_server_shutdown_async (server, SPARK_SHUTDOWN_MODE_DRAIN, NULL, on_stopped, &stopped);
  while (!stopped)
    g_main_context_iteration (NULL, TRUE);
  g_print ("done: the module server's thread has ended\n");

  g_clear_object (&client.dispatcher);
  g_clear_object (&client.token);
  g_main_loop_unref (client.loop);

  return 0;
}
