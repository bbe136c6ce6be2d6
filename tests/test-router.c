/* test-router.c: SparkRouter
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <string.h>

#include "spark-test-util.h"

/* A module that answers every request with "<tag>:<name>", or with its
 * parameters for "*.echo", and logs the commands it gets. */
typedef struct
{
  const char   *tag;
  gint          requests;   /* atomic */
  gint          commands;   /* atomic */
  SparkTestGate gate;       /* "*.block" waits here or for its cancellable */
  gint          saw_cancel; /* atomic */
} Module;

static GVariant *
module_request (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  Module *m = user_data;

  g_atomic_int_inc (&m->requests);

  if (g_str_has_suffix (name, ".echo") && parameters != NULL)
    return g_variant_ref (parameters);
  if (g_str_has_suffix (name, ".int"))
    return g_variant_new_int32 (7);
  if (g_str_has_suffix (name, ".fail"))
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED, "no way");
      return NULL;
    }
  if (g_str_has_suffix (name, ".block"))
    {
      if (spark_test_gate_wait (&m->gate, cancellable))
        g_atomic_int_set (&m->saw_cancel, TRUE);
      return g_variant_new_string ("unblocked");
    }

  return g_variant_new_take_string (g_strdup_printf ("%s:%s", m->tag, name));
}

static gboolean
module_command (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  Module *m = user_data;

  g_atomic_int_inc (&m->commands);
  return TRUE;
}

static SparkHandler *
module_handler_new (Module     *m,
                    const char *tag)
{
  m->tag = tag;
  spark_test_gate_init (&m->gate);
  return spark_func_handler_new (module_request, module_command, m, NULL);
}

static void
module_clear (Module *m)
{
  spark_test_gate_clear (&m->gate);
}

/* The reply of a request_sync, as a string ("!" and the error's message
 * on failure), for compact assertions. */
static char *
ask (SparkDispatcher *dispatcher,
     const char      *name,
     GVariant        *parameters,
     GError         **error)
{
  GVariant *reply = spark_dispatcher_request_sync (dispatcher, name, parameters, NULL, NULL, error);
  char *text;

  if (reply == NULL)
    return NULL;
  text = g_variant_is_of_type (reply, G_VARIANT_TYPE_STRING) ? g_variant_dup_string (reply, NULL)
                                                              : g_variant_print (reply, FALSE);
  g_variant_unref (reply);
  return text;
}

static void
assert_reply (SparkDispatcher *dispatcher,
              const char      *name,
              const char      *expected)
{
  GError *error = NULL;
  char *text = ask (dispatcher, name, NULL, &error);

  g_assert_no_error (error);
  g_assert_cmpstr (text, ==, expected);
  g_free (text);
}

/* A router served on a thread of its own, with the fixture's frame. */
typedef struct
{
  SparkTestServer s;
  SparkRouter    *router;   /* the fixture's handler */
  Module          a;
  Module          b;
} Fixture;

static void
fixture_setup (Fixture       *f,
               gconstpointer  data)
{
  SparkRouter *router = spark_router_new ();

  f->router = router;
  spark_test_server_setup (&f->s, SPARK_HANDLER (router), data);
}

static void
fixture_teardown (Fixture       *f,
                  gconstpointer  data)
{
  spark_test_server_teardown (&f->s);
  module_clear (&f->a);
  module_clear (&f->b);
}

static void
add_module (Fixture            *f,
            Module             *m,
            const char         *tag,
            const char         *pattern,
            const GVariantType *parameter_type,
            const GVariantType *reply_type)
{
  g_autoptr(SparkHandler) handler = module_handler_new (m, tag);
  GError *error = NULL;

  g_assert_true (spark_router_add_handler (f->router, pattern, handler, parameter_type, reply_type, &error));
  g_assert_no_error (error);
}

/* Exact names beat prefixes, longer prefixes beat shorter ones, "*" takes
 * the rest; nothing else is routed. */
static void
test_router_match (Fixture       *f,
                   gconstpointer  data)
{
  g_autoptr(SparkHandler) exact = module_handler_new (&f->b, "exact");
  GError *error = NULL;
  char *text;

  add_module (f, &f->a, "kv", "kv.*", NULL, NULL);
  g_assert_true (spark_router_add_handler (f->router, "kv.special", exact, NULL, NULL, &error));
  g_assert_true (spark_router_add_handler (f->router, "kv.deep.*", exact, NULL, NULL, &error));
  g_assert_no_error (error);

  assert_reply (f->s.dispatcher, "kv.get", "kv:kv.get");
  assert_reply (f->s.dispatcher, "kv.special", "exact:kv.special");
  assert_reply (f->s.dispatcher, "kv.deep.x", "exact:kv.deep.x");
  assert_reply (f->s.dispatcher, "kv.", "kv:kv.");

  text = ask (f->s.dispatcher, "other", NULL, &error);
  g_assert_null (text);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  g_assert_nonnull (strstr (error->message, "“other”"));
  g_clear_error (&error);

  g_assert_true (spark_router_add_handler (f->router, "*", exact, NULL, NULL, &error));
  assert_reply (f->s.dispatcher, "other", "exact:other");
  assert_reply (f->s.dispatcher, "kv.get", "kv:kv.get");

  /* A change takes effect at once, for names routed just before (the
   * server remembers its last routes, but not across a change). */
  g_assert_true (spark_router_remove (f->router, "kv.*"));
  assert_reply (f->s.dispatcher, "kv.get", "exact:kv.get");
  g_assert_true (spark_router_remove (f->router, "*"));
  text = ask (f->s.dispatcher, "kv.get", NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  g_clear_error (&error);
  g_assert_null (text);
  g_assert_true (spark_router_add_handler (f->router, "kv.*", exact, NULL, NULL, &error));
  assert_reply (f->s.dispatcher, "kv.get", "exact:kv.get");
}

/* Parameters not of the route's type fail before any handler runs,
 * naming the route and both types. */
static void
test_router_parameter_type (Fixture       *f,
                            gconstpointer  data)
{
  GError *error = NULL;
  char *text;

  add_module (f, &f->a, "kv", "kv.*", G_VARIANT_TYPE ("(si)"), NULL);

  text = ask (f->s.dispatcher, "kv.echo", g_variant_new ("(si)", "x", 1), &error);
  g_assert_no_error (error);
  g_assert_cmpstr (text, ==, "('x', 1)");
  g_free (text);

  text = ask (f->s.dispatcher, "kv.echo", g_variant_new_string ("x"), &error);
  g_assert_null (text);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH);
  g_assert_nonnull (strstr (error->message, "“kv.*”"));
  g_assert_nonnull (strstr (error->message, "“s”"));
  g_assert_nonnull (strstr (error->message, "“(si)”"));
  g_clear_error (&error);

  /* None given where a type is declared: a mismatch too. */
  text = ask (f->s.dispatcher, "kv.echo", NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH);
  g_clear_error (&error);
  g_assert_null (text);

  g_assert_cmpint (g_atomic_int_get (&f->a.requests), ==, 1);
}

/* A reply not of the route's type is a TYPE_MISMATCH naming the route
 * and both types, whether the handler returns it or another module does. */
static void
test_router_reply_type (Fixture       *f,
                        gconstpointer  data)
{
  g_autoptr(SparkHandler) other = module_handler_new (&f->b, "other");
  g_autoptr(SparkModuleServer) server = spark_module_server_new (other);
  g_autoptr(SparkDispatcher) remote = spark_module_server_create_dispatcher (server);
  const char *names[] = { "local.int", "remote.int" };
  GError *error = NULL;

  g_assert_true (spark_module_server_start_in_thread (server, &error));
  add_module (f, &f->a, "local", "local.*", NULL, G_VARIANT_TYPE_STRING);
  g_assert_true (spark_router_add_dispatcher (f->router, "remote.*", remote, NULL, G_VARIANT_TYPE_STRING, &error));
  g_assert_no_error (error);

  assert_reply (f->s.dispatcher, "local.x", "local:local.x");
  assert_reply (f->s.dispatcher, "remote.x", "other:remote.x");

  for (guint i = 0; i < G_N_ELEMENTS (names); i++)
    {
      char *text = ask (f->s.dispatcher, names[i], NULL, &error);

      g_assert_null (text);
      g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH);
      g_assert_nonnull (strstr (error->message, "Route “"));
      g_assert_nonnull (strstr (error->message, "“i”"));
      g_assert_nonnull (strstr (error->message, "“s”"));
      g_clear_error (&error);
    }

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  module_clear (&f->b);
  spark_test_gate_init (&f->b.gate);
}

/* Routers in front of routers: the reply must meet every route's type. */
static void
test_router_nested (Fixture       *f,
                    gconstpointer  data)
{
  g_autoptr(SparkRouter) inner = spark_router_new ();
  g_autoptr(SparkHandler) module = module_handler_new (&f->a, "m");
  GError *error = NULL;
  char *text;

  g_assert_true (spark_router_add_handler (inner, "a.*", module, NULL, G_VARIANT_TYPE_STRING, &error));
  g_assert_true (spark_router_add_handler (f->router, "a.*", SPARK_HANDLER (inner), NULL, G_VARIANT_TYPE_INT32, &error));
  g_assert_no_error (error);

  /* The module replies a string: the inner route takes it, the outer one
   * does not. */
  text = ask (f->s.dispatcher, "a.x", NULL, &error);
  g_assert_null (text);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH);
  g_assert_nonnull (strstr (error->message, "Route “a.*”"));
  g_assert_nonnull (strstr (error->message, "expected “i”"));
  g_clear_error (&error);

  /* An int32 meets the outer route, not the inner one. */
  text = ask (f->s.dispatcher, "a.int", NULL, &error);
  g_assert_null (text);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH);
  g_assert_nonnull (strstr (error->message, "expected “s”"));
  g_clear_error (&error);
}

/* To another module: replies and errors come back unchanged, and the
 * requester's cancellation reaches it. */
static void
test_router_dispatcher (Fixture       *f,
                        gconstpointer  data)
{
  g_autoptr(SparkHandler) other = module_handler_new (&f->b, "other");
  g_autoptr(SparkModuleServer) server = spark_module_server_new (other);
  g_autoptr(SparkDispatcher) remote = spark_module_server_create_dispatcher (server);
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  SparkTestOutcome outcome = { 0, };
  GError *error = NULL;
  char *text;

  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_true (spark_router_add_dispatcher (f->router, "remote.*", remote, NULL, NULL, &error));
  g_assert_no_error (error);

  assert_reply (f->s.dispatcher, "remote.x", "other:remote.x");

  text = ask (f->s.dispatcher, "remote.fail", NULL, &error);
  g_assert_null (text);
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED);
  g_assert_cmpstr (error->message, ==, "no way");
  g_clear_error (&error);

  spark_dispatcher_request_full (f->s.dispatcher, "remote.block", NULL, NULL, cancellable,
                                 spark_test_outcome_cb, &outcome, NULL);
  while (g_atomic_int_get (&f->b.requests) < 3)
    g_usleep (1000);
  g_cancellable_cancel (cancellable);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_error (outcome.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  spark_test_outcome_clear (&outcome);

  /* The other module saw the cancellation (not the gate). */
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_true (g_atomic_int_get (&f->b.saw_cancel));
}

/* Commands go where requests go; one nobody takes is a command-failed
 * (NOT_SUPPORTED), as is one whose parameters are of the wrong type. */
static void
test_router_commands (Fixture       *f,
                      gconstpointer  data)
{
  g_autoptr(SparkHandler) other = module_handler_new (&f->b, "other");
  g_autoptr(SparkModuleServer) server = spark_module_server_new (other);
  g_autoptr(SparkDispatcher) remote = spark_module_server_create_dispatcher (server);
  SparkTestFailure failure = { 0, };
  GError *error = NULL;

  g_signal_connect (f->s.server, "command-failed", G_CALLBACK (spark_test_on_command_failed), &failure);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  add_module (f, &f->a, "local", "local.*", NULL, NULL);
  g_assert_true (spark_router_add_dispatcher (f->router, "remote.*", remote, G_VARIANT_TYPE_INT32, NULL, &error));

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "local.log", NULL, NULL, &error));
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "remote.log", g_variant_new_int32 (1), NULL, &error));
  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "nowhere", NULL, NULL, &error));
  g_assert_no_error (error);

  spark_test_wait_count (NULL, &failure.n, 1);
  g_assert_cmpstr (failure.name, ==, "nowhere");
  g_assert_error (failure.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);

  g_assert_true (spark_dispatcher_send_command (f->s.dispatcher, "remote.log", g_variant_new_string ("x"), NULL, &error));
  spark_test_wait_count (NULL, &failure.n, 2);
  g_assert_cmpstr (failure.name, ==, "remote.log");
  g_assert_error (failure.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH);

  /* The router's commands are handled in order: by now the others went. */
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpint (g_atomic_int_get (&f->a.commands), ==, 1);
  g_assert_cmpint (g_atomic_int_get (&f->b.commands), ==, 1);

  g_signal_handlers_disconnect_by_data (f->s.server, &failure);
  spark_test_failure_clear (&failure);
}

/* The route table: duplicates are refused, removal takes what it names,
 * the list is sorted. */
static void
test_router_table (void)
{
  g_autoptr(SparkRouter) router = spark_router_new ();
  Module m = { 0, };
  g_autoptr(SparkHandler) handler = module_handler_new (&m, "m");
  GError *error = NULL;
  char **patterns;

  g_assert_true (spark_router_add_handler (router, "b", handler, NULL, NULL, &error));
  g_assert_true (spark_router_add_handler (router, "a.*", handler, NULL, NULL, &error));
  g_assert_no_error (error);

  g_assert_false (spark_router_add_handler (router, "a.*", handler, NULL, NULL, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_EXISTS);
  g_assert_nonnull (strstr (error->message, "“a.*”"));
  g_clear_error (&error);
  g_assert_false (spark_router_add_handler (router, "b", handler, NULL, NULL, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_EXISTS);
  g_clear_error (&error);

  patterns = spark_router_list_patterns (router);
  g_assert_cmpuint (g_strv_length (patterns), ==, 2);
  g_assert_cmpstr (patterns[0], ==, "a.*");
  g_assert_cmpstr (patterns[1], ==, "b");
  g_strfreev (patterns);

  g_assert_true (spark_router_remove (router, "a.*"));
  g_assert_false (spark_router_remove (router, "a.*"));
  g_assert_false (spark_router_remove (router, "c"));
  g_assert_true (spark_router_remove (router, "b"));
  patterns = spark_router_list_patterns (router);
  g_assert_cmpuint (g_strv_length (patterns), ==, 0);
  g_strfreev (patterns);

  module_clear (&m);
}

/* Programmer errors are criticals, and add nothing. */
static void
test_router_bad_input (void)
{
  g_autoptr(SparkRouter) router = spark_router_new ();
  Module m = { 0, };
  g_autoptr(SparkHandler) handler = module_handler_new (&m, "m");
  const char *bad[] = { "", "a*b", "**" };
  char **patterns;

  for (guint i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*pattern_is_valid*");
      g_assert_false (spark_router_add_handler (router, bad[i], handler, NULL, NULL, NULL));
      g_test_assert_expected_messages ();
    }

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*type_is_valid*");
  g_assert_false (spark_router_add_handler (router, "x", handler, (const GVariantType *) "(", NULL, NULL));
  g_test_assert_expected_messages ();

  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*routes_to*");
  g_assert_false (spark_router_add_handler (router, "x", SPARK_HANDLER (router), NULL, NULL, NULL));
  g_test_assert_expected_messages ();

  /* Nor through another router: it would recurse until the stack ends. */
  {
    g_autoptr(SparkRouter) middle = spark_router_new ();
    g_autoptr(SparkRouter) inner = spark_router_new ();

    g_assert_true (spark_router_add_handler (router, "m.*", SPARK_HANDLER (middle), NULL, NULL, NULL));
    g_assert_true (spark_router_add_handler (middle, "m.i.*", SPARK_HANDLER (inner), NULL, NULL, NULL));
    g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*routes_to*");
    g_assert_false (spark_router_add_handler (inner, "*", SPARK_HANDLER (router), NULL, NULL, NULL));
    g_test_assert_expected_messages ();
    /* A router in front of another twice is no cycle. */
    g_assert_true (spark_router_add_handler (router, "i.*", SPARK_HANDLER (inner), NULL, NULL, NULL));
    g_assert_true (spark_router_remove (router, "m.*"));
    g_assert_true (spark_router_remove (router, "i.*"));
  }

  patterns = spark_router_list_patterns (router);
  g_assert_cmpuint (g_strv_length (patterns), ==, 0);
  g_strfreev (patterns);
  module_clear (&m);
}

#define CHURN_REQUESTS 2000

typedef struct
{
  SparkRouter  *router;
  SparkHandler *handler;
  gint          stop;   /* atomic */
  guint         flips;
} Churn;

static gpointer
churn_thread (gpointer data)
{
  Churn *churn = data;

  while (!g_atomic_int_get (&churn->stop))
    {
      g_assert_true (spark_router_add_handler (churn->router, "churn.*", churn->handler, NULL, NULL, NULL));
      g_thread_yield ();
      g_assert_true (spark_router_remove (churn->router, "churn.*"));
      churn->flips++;
    }
  return NULL;
}

/* Routes added and removed while requests flow: every request completes
 * once, with the route's reply or NOT_SUPPORTED. */
static void
test_router_churn (Fixture       *f,
                   gconstpointer  data)
{
  Churn churn = { f->router, module_handler_new (&f->a, "churn"), 0, 0 };
  GThread *thread = g_thread_new ("churn", churn_thread, &churn);
  guint replied = 0, unrouted = 0;

  for (guint i = 0; i < CHURN_REQUESTS; i++)
    {
      GError *error = NULL;
      char *text = ask (f->s.dispatcher, "churn.x", NULL, &error);

      if (text != NULL)
        {
          g_assert_cmpstr (text, ==, "churn:churn.x");
          replied++;
        }
      else
        {
          g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
          g_clear_error (&error);
          unrouted++;
        }
      g_free (text);
    }

  g_atomic_int_set (&churn.stop, TRUE);
  g_thread_join (thread);
  g_assert_cmpuint (replied + unrouted, ==, CHURN_REQUESTS);
  g_assert_cmpint (g_atomic_int_get (&f->a.requests), ==, (gint) replied);
  g_test_message ("%u replied, %u unrouted, %u route flips", replied, unrouted, churn.flips);
  g_object_unref (churn.handler);
}

int
main (int argc, char *argv[])
{
  static const SparkTestServerOptions in_thread = { 0, };
  static const SparkTestServerOptions concurrent = { .max_invocations = 4 };

  g_test_init (&argc, &argv, NULL);

#define ADD(path, func, options) \
  g_test_add (path, Fixture, options, fixture_setup, func, fixture_teardown)

  ADD ("/spark/router/match", test_router_match, &in_thread);
  ADD ("/spark/router/parameter-type", test_router_parameter_type, &in_thread);
  ADD ("/spark/router/reply-type", test_router_reply_type, &in_thread);
  ADD ("/spark/router/dispatcher", test_router_dispatcher, &concurrent);
  ADD ("/spark/router/nested", test_router_nested, &in_thread);
  ADD ("/spark/router/commands", test_router_commands, &in_thread);
  ADD ("/spark/router/churn", test_router_churn, &in_thread);
  g_test_add_func ("/spark/router/table", test_router_table);
  g_test_add_func ("/spark/router/bad-input", test_router_bad_input);

#undef ADD

  return spark_test_run ();
}
