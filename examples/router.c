/* router.c: several modules behind one router, in C
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A SparkRouter in front of three modules: a key/value module ("kv.*") and
 * a "log" command, both handled on the router's own thread, and a "math.*"
 * module on a server and thread of its own, reached through a dispatcher.
 * The client, this program's main thread, talks to the router only: it
 * sends requests and a command, meets a type mismatch and a name that no
 * route takes, and removes a route while the router serves.
 */

#include <locale.h>

#include <spark-channel.h>

/* The key/value module: "kv.set" (ss) -> b, "kv.get" (s) -> s. Its state
 * is touched only by handler calls, one at a time on the router's server
 * thread, so it needs no lock. */
static GVariant *
kv_request (const char    *name,
            GVariant      *parameters,
            GCancellable  *cancellable,
            gpointer       user_data,
            GError       **error)
{
  GHashTable *data = user_data;
  const char *key, *value;

  if (g_str_equal (name, "kv.set") && g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(ss)")))
    {
      g_variant_get (parameters, "(&s&s)", &key, &value);
      g_hash_table_replace (data, g_strdup (key), g_strdup (value));
      return g_variant_new_boolean (TRUE);
    }

  if (g_str_equal (name, "kv.get") && g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(s)")))
    {
      g_variant_get (parameters, "(&s)", &key);
      if ((value = g_hash_table_lookup (data, key)) == NULL)
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "No data for “%s”", key);
          return NULL;
        }
      return g_variant_new_string (value);
    }

  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
               "“%s” is not a request of the key/value module", name);
  return NULL;
}

/* The math module: "math.add" and "math.mul", (ii) -> i. Its route
 * declares both types, so what comes through the router is checked
 * before it gets here. */
static GVariant *
math_request (const char    *name,
              GVariant      *parameters,
              GCancellable  *cancellable,
              gpointer       user_data,
              GError       **error)
{
  gint32 a, b;

  if (g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(ii)")))
    {
      g_variant_get (parameters, "(ii)", &a, &b);
      if (g_str_equal (name, "math.add"))
        return g_variant_new_int32 (a + b);
      if (g_str_equal (name, "math.mul"))
        return g_variant_new_int32 (a * b);
    }

  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
               "“%s” is not a request of the math module", name);
  return NULL;
}

/* The "log" command; its route declares parameters of type "s". */
static gboolean
log_command (const char    *name,
             GVariant      *parameters,
             GCancellable  *cancellable,
             gpointer       user_data,
             GError       **error)
{
  g_print ("log: %s\n", g_variant_get_string (parameters, NULL));
  return TRUE;
}

/* A request the client expects to fail with @code: prints the error. */
static void
expect_failure (SparkDispatcher *dispatcher,
                const char      *what,
                const char      *name,
                GVariant        *parameters,
                gint             code)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GVariant) reply = NULL;

  reply = spark_dispatcher_request_sync (dispatcher, name, parameters, NULL, NULL, &error);
  if (!g_error_matches (error, SPARK_CHANNEL_ERROR, code))
    g_error ("%s: expected error %d, got %s", what, code, error ? error->message : "a reply");
  g_print ("client: %s failed: %s\n", what, error->message);
}

static void
on_stopped (GObject      *source,
            GAsyncResult *result,
            gpointer      user_data)
{
  guint *running = user_data;

  spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, NULL);
  (*running)--;
}

int
main (void)
{
  g_autoptr(GHashTable) data = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_autoptr(SparkHandler) kv = spark_func_handler_new (kv_request, NULL, g_hash_table_ref (data),
                                                       (GDestroyNotify) g_hash_table_unref);
  g_autoptr(SparkHandler) log_handler = spark_func_handler_new (NULL, log_command, NULL, NULL);
  g_autoptr(SparkHandler) math = spark_func_handler_new (math_request, NULL, NULL, NULL);
  g_autoptr(SparkRouter) router = spark_router_new ();
  g_autoptr(SparkModuleServer) math_server = NULL;
  g_autoptr(SparkModuleServer) router_server = NULL;
  g_autoptr(SparkDispatcher) math_dispatcher = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GVariant) reply = NULL;
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) patterns = NULL;
  g_autofree char *list = NULL;
  guint running = 2;

  /* The library's messages are UTF-8: g_print converts them to the
   * locale's character set. */
  setlocale (LC_ALL, "");

  /* The math module on a thread of its own. */
  math_server = spark_module_server_new (math);
  spark_module_server_set_name (math_server, "math");
  if (!spark_module_server_start_in_thread (math_server, &error))
    g_error ("Could not start the math module: %s", error->message);
  math_dispatcher = spark_module_server_create_dispatcher (math_server);

  /* The routes: kv and log run on the router's thread, math on its own. */
  if (!spark_router_add_handler (router, "kv.*", kv, NULL, NULL, &error) ||
      !spark_router_add_handler (router, "log", log_handler, G_VARIANT_TYPE_STRING, NULL, &error) ||
      !spark_router_add_dispatcher (router, "math.*", math_dispatcher,
                                    G_VARIANT_TYPE ("(ii)"), G_VARIANT_TYPE_INT32, &error))
    g_error ("Could not add a route: %s", error->message);

  /* A request sent on to the math module holds its invocation until the
   * reply comes back: let the router have a few in flight at once. */
  router_server = spark_module_server_new (SPARK_HANDLER (router));
  spark_module_server_set_name (router_server, "router");
  spark_module_server_set_max_invocations (router_server, 4);
  if (!spark_module_server_start_in_thread (router_server, &error))
    g_error ("Could not start the router: %s", error->message);
  dispatcher = spark_module_server_create_dispatcher (router_server);

  patterns = spark_router_list_patterns (router);
  list = g_strjoinv (", ", patterns);
  g_print ("router: routes %s\n", list);

  reply = spark_dispatcher_request_sync (dispatcher, "kv.set", g_variant_new ("(ss)", "user123", "Alice"),
                                         G_VARIANT_TYPE_BOOLEAN, NULL, &error);
  if (reply == NULL)
    g_error ("kv.set failed: %s", error->message);
  g_print ("client: kv.set(user123, Alice) -> %s\n", g_variant_get_boolean (reply) ? "true" : "false");
  g_clear_pointer (&reply, g_variant_unref);

  /* Commands are handled in mailbox order: the next reply comes after it. */
  if (!spark_dispatcher_send_command (dispatcher, "log", g_variant_new_string ("user123 logged in"), NULL, &error))
    g_error ("log failed: %s", error->message);

  reply = spark_dispatcher_request_sync (dispatcher, "kv.get", g_variant_new ("(s)", "user123"),
                                         G_VARIANT_TYPE_STRING, NULL, &error);
  if (reply == NULL)
    g_error ("kv.get failed: %s", error->message);
  g_print ("client: kv.get(user123) -> %s\n", g_variant_get_string (reply, NULL));
  g_clear_pointer (&reply, g_variant_unref);

  reply = spark_dispatcher_request_sync (dispatcher, "math.add", g_variant_new ("(ii)", 2, 3),
                                         G_VARIANT_TYPE_INT32, NULL, &error);
  if (reply == NULL)
    g_error ("math.add failed: %s", error->message);
  g_print ("client: math.add(2, 3) -> %d\n", g_variant_get_int32 (reply));
  g_clear_pointer (&reply, g_variant_unref);

  reply = spark_dispatcher_request_sync (dispatcher, "math.mul", g_variant_new ("(ii)", 4, 5),
                                         G_VARIANT_TYPE_INT32, NULL, &error);
  if (reply == NULL)
    g_error ("math.mul failed: %s", error->message);
  g_print ("client: math.mul(4, 5) -> %d\n", g_variant_get_int32 (reply));
  g_clear_pointer (&reply, g_variant_unref);

  /* The route checks the parameters before the math module sees them. */
  expect_failure (dispatcher, "math.add(\"2\", \"3\")", "math.add", g_variant_new ("(ss)", "2", "3"),
                  SPARK_CHANNEL_ERROR_TYPE_MISMATCH);
  expect_failure (dispatcher, "weather.today", "weather.today", NULL, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);

  /* Routes come and go while the router serves. */
  spark_router_remove (router, "math.*");
  expect_failure (dispatcher, "math.add(2, 3) without its route", "math.add", g_variant_new ("(ii)", 2, 3),
                  SPARK_CHANNEL_ERROR_NOT_SUPPORTED);

  /* The router first: it may still be waiting for the math module. */
  spark_module_server_shutdown_async (router_server, SPARK_SHUTDOWN_MODE_DRAIN, NULL, on_stopped, &running);
  while (running == 2)
    g_main_context_iteration (NULL, TRUE);
  spark_module_server_shutdown_async (math_server, SPARK_SHUTDOWN_MODE_DRAIN, NULL, on_stopped, &running);
  while (running == 1)
    g_main_context_iteration (NULL, TRUE);
  g_print ("done: the router and the math module have stopped\n");

  return 0;
}
