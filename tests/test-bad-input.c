/* test-bad-input.c: programmer errors at the API are criticals, never a
 * crash, a hang or memory corruption; run-time conditions are GErrors.
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include "spark-test-util.h"

static GVariant *
echo_request (const char    *name,
              GVariant      *parameters,
              GCancellable  *cancellable,
              gpointer       user_data,
              GError       **error)
{
  return g_variant_new_int32 (1);
}

static gboolean
ok_command (const char    *name,
            GVariant      *parameters,
            GCancellable  *cancellable,
            gpointer       user_data,
            GError       **error)
{
  return TRUE;
}

typedef struct
{
  SparkHandler      *handler;
  SparkModuleServer *server;
  SparkDispatcher   *dispatcher;
} Fixture;

static void
fixture_set_up (Fixture       *fixture,
                gconstpointer  data)
{
  g_autoptr(GError) error = NULL;

  fixture->handler = spark_func_handler_new (echo_request, ok_command, NULL, NULL);
  fixture->server = spark_module_server_new (fixture->handler);
  g_assert_true (spark_module_server_start_in_thread (fixture->server, &error));
  g_assert_no_error (error);
  fixture->dispatcher = spark_module_server_create_dispatcher (fixture->server);
}

static void
fixture_tear_down (Fixture       *fixture,
                   gconstpointer  data)
{
  spark_test_shutdown (fixture->server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_clear_object (&fixture->dispatcher);
  g_clear_object (&fixture->server);
  g_clear_object (&fixture->handler);
}

static void
expect_critical (void)
{
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*");
}

static void
never_called (GObject      *source,
              GAsyncResult *result,
              gpointer      user_data)
{
  g_assert_not_reached ();
}

static void
never_called_progress (GVariant *progress,
                       gpointer  user_data)
{
  g_assert_not_reached ();
}

static void
never_called_full (GVariant     *reply,
                   const GError *error,
                   gpointer      user_data)
{
  g_assert_not_reached ();
}

/* NULL or empty names: a critical, nothing sent, a floating parameter
 * still sunk (no leak under valgrind). */
static void
test_bad_names (Fixture       *fixture,
                gconstpointer  data)
{
  g_autoptr(GError) error = NULL;
  const char *names[] = { NULL, "" };

  for (guint i = 0; i < G_N_ELEMENTS (names); i++)
    {
      expect_critical ();
      g_assert_null (spark_dispatcher_request_sync (fixture->dispatcher, names[i],
                                                    g_variant_new_int32 (1), NULL, NULL, &error));
      g_test_assert_expected_messages ();
      g_assert_no_error (error);

      expect_critical ();
      spark_dispatcher_request_async (fixture->dispatcher, names[i], g_variant_new_int32 (1),
                                      NULL, NULL, never_called, NULL);
      g_test_assert_expected_messages ();

      expect_critical ();
      spark_dispatcher_request_full (fixture->dispatcher, names[i], g_variant_new_int32 (1),
                                     NULL, NULL, never_called_full, NULL, NULL);
      g_test_assert_expected_messages ();

      expect_critical ();
      g_assert_false (spark_dispatcher_send_command (fixture->dispatcher, names[i],
                                                     g_variant_new_int32 (1), NULL, &error));
      g_test_assert_expected_messages ();

      expect_critical ();
      g_assert_false (spark_dispatcher_try_send_command (fixture->dispatcher, names[i],
                                                         g_variant_new_int32 (1), &error));
      g_test_assert_expected_messages ();

      expect_critical ();
      spark_dispatcher_send_command_async (fixture->dispatcher, names[i], g_variant_new_int32 (1),
                                           NULL, never_called, NULL);
      g_test_assert_expected_messages ();

      expect_critical ();
      spark_dispatcher_request_with_progress_async (fixture->dispatcher, names[i], g_variant_new_int32 (1),
                                                    NULL, NULL, never_called_progress, NULL, NULL,
                                                    never_called, NULL);
      g_test_assert_expected_messages ();
    }

  g_assert_cmpuint (spark_module_server_get_pending (fixture->server), ==, 0);
}

/* NULL or wrong objects where an object is required. */
static void
test_bad_objects (Fixture       *fixture,
                  gconstpointer  data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GObject) not_a_dispatcher = g_object_new (G_TYPE_OBJECT, NULL);

  expect_critical ();
  g_assert_null (spark_dispatcher_request_sync (NULL, "x", NULL, NULL, NULL, &error));
  g_test_assert_expected_messages ();

  expect_critical ();
  g_assert_null (spark_dispatcher_request_sync ((SparkDispatcher *) not_a_dispatcher, "x",
                                                NULL, NULL, NULL, &error));
  g_test_assert_expected_messages ();

  expect_critical ();
  g_assert_false (spark_dispatcher_send_command (NULL, "x", NULL, NULL, &error));
  g_test_assert_expected_messages ();

  expect_critical ();
  g_assert_false (spark_dispatcher_send_shutdown ((SparkDispatcher *) not_a_dispatcher, NULL, &error));
  g_test_assert_expected_messages ();

  expect_critical ();
  g_assert_false (spark_dispatcher_send_shutdown (fixture->dispatcher,
                                                  (GCancellable *) not_a_dispatcher, &error));
  g_test_assert_expected_messages ();

  expect_critical ();
  g_assert_null (spark_module_server_new (NULL));
  g_test_assert_expected_messages ();

  expect_critical ();
  g_assert_null (spark_module_server_new ((SparkHandler *) not_a_dispatcher));
  g_test_assert_expected_messages ();

  expect_critical ();
  g_assert_false (spark_module_server_start (NULL, NULL, &error));
  g_test_assert_expected_messages ();

  expect_critical ();
  g_assert_null (spark_module_server_create_dispatcher (NULL));
  g_test_assert_expected_messages ();

  expect_critical ();
  spark_dispatcher_request_async (fixture->dispatcher, "x", NULL, NULL,
                                  (GCancellable *) not_a_dispatcher, never_called, NULL);
  g_test_assert_expected_messages ();

  expect_critical ();
  spark_dispatcher_request_full (fixture->dispatcher, "x", NULL, NULL, NULL, NULL, NULL, NULL);
  g_test_assert_expected_messages ();

  /* No progress function; a floating parameter is still sunk. */
  expect_critical ();
  spark_dispatcher_request_with_progress_async (fixture->dispatcher, "x", g_variant_new_int32 (1), NULL, NULL,
                                                NULL, NULL, NULL, never_called, NULL);
  g_test_assert_expected_messages ();

  expect_critical ();
  spark_invocation_send_progress (NULL, g_variant_new_int32 (1));
  g_test_assert_expected_messages ();

  expect_critical ();
  spark_module_server_set_max_invocations (fixture->server, 0);
  g_test_assert_expected_messages ();

  g_assert_no_error (error);
}

/* An invalid GVariantType is a programmer error, not a crash. */
static void
test_bad_reply_type (Fixture       *fixture,
                     gconstpointer  data)
{
  g_autoptr(GError) error = NULL;
  const GVariantType *invalid = (const GVariantType *) "(i";

  expect_critical ();
  g_assert_null (spark_dispatcher_request_sync (fixture->dispatcher, "x", NULL, invalid, NULL, &error));
  g_test_assert_expected_messages ();
  g_assert_no_error (error);

  expect_critical ();
  spark_dispatcher_request_async (fixture->dispatcher, "x", NULL, invalid, NULL, never_called, NULL);
  g_test_assert_expected_messages ();
}

/* Negative timeouts other than -1 are a programmer error and are ignored. */
static void
test_bad_timeout (Fixture       *fixture,
                  gconstpointer  data)
{
  spark_dispatcher_set_timeout (fixture->dispatcher, 250);

  expect_critical ();
  spark_dispatcher_set_timeout (fixture->dispatcher, -2);
  g_test_assert_expected_messages ();
  g_assert_cmpint (spark_dispatcher_get_timeout (fixture->dispatcher), ==, 250);

  /* Through the property, GObject itself refuses it: a warning up to GLib
   * 2.74, a critical since 2.75. Checked at run time: the binary is built
   * against 2.74's headers but may run on a newer GLib. */
  g_test_expect_message ("GLib-GObject",
                         glib_check_version (2, 75, 0) == NULL
                           ? G_LOG_LEVEL_CRITICAL : G_LOG_LEVEL_WARNING,
                         "*timeout*");
  g_object_set (fixture->dispatcher, "timeout", -5, NULL);
  g_test_assert_expected_messages ();
  g_assert_cmpint (spark_dispatcher_get_timeout (fixture->dispatcher), ==, 250);

  spark_dispatcher_set_timeout (fixture->dispatcher, -1);
  g_assert_cmpint (spark_dispatcher_get_timeout (fixture->dispatcher), ==, -1);
  spark_dispatcher_set_timeout (fixture->dispatcher, 0);
  g_assert_cmpint (spark_dispatcher_get_timeout (fixture->dispatcher), ==, 0);
}

/* Capacity after start: a critical, ignored. Starting twice: an error. */
static void
test_after_start (Fixture       *fixture,
                  gconstpointer  data)
{
  g_autoptr(GError) error = NULL;

  expect_critical ();
  spark_module_server_set_capacity (fixture->server, 10);
  g_test_assert_expected_messages ();
  g_assert_cmpuint (spark_module_server_get_capacity (fixture->server), ==, 0);

  expect_critical ();
  spark_module_server_set_max_invocations (fixture->server, 3);
  g_test_assert_expected_messages ();
  g_assert_cmpuint (spark_module_server_get_max_invocations (fixture->server), ==, 1);

  g_assert_false (spark_module_server_start_in_thread (fixture->server, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_ALREADY_STARTED);
  g_clear_error (&error);

  g_assert_false (spark_module_server_start (fixture->server, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_ALREADY_STARTED);
}

/* A dispatcher outliving its server (finalized after it stopped) gets
 * CLOSED for everything; a floating parameter is still sunk. */
static void
test_after_server_finalize (void)
{
  g_autoptr(SparkHandler) handler = spark_func_handler_new (echo_request, ok_command, NULL, NULL);
  SparkModuleServer *server = spark_module_server_new (handler);
  g_autoptr(SparkDispatcher) dispatcher = spark_module_server_create_dispatcher (server);
  g_autoptr(GError) error = NULL;
  SparkTestWatch watch;

  /* The server's thread may drop the last reference. */
  spark_test_watch_init (&watch, server, NULL);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_ABORT);
  g_object_unref (server);
  spark_test_watch_wait (&watch);

  g_assert_null (spark_dispatcher_request_sync (dispatcher, "x", g_variant_new_int32 (1), NULL, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);

  g_assert_false (spark_dispatcher_send_command (dispatcher, "x", g_variant_new_int32 (1), NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);

  g_assert_false (spark_dispatcher_try_send_command (dispatcher, "x", g_variant_new_int32 (1), &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);

  g_assert_false (spark_dispatcher_send_shutdown (dispatcher, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
}

/* A dispatcher made with g_object_new() (as a binding could) has no
 * server: everything fails with CLOSED, nothing crashes. */
static void
test_orphan_dispatcher (void)
{
  g_autoptr(SparkDispatcher) dispatcher = g_object_new (SPARK_TYPE_DISPATCHER, NULL);
  g_autoptr(GError) error = NULL;

  g_assert_null (spark_dispatcher_request_sync (dispatcher, "x", g_variant_new_int32 (1), NULL, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);

  g_assert_false (spark_dispatcher_send_command (dispatcher, "x", NULL, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
}

/* A module server made with g_object_new() and no handler: a critical at
 * construction, and starting it is refused with a critical. */
static void
test_server_without_handler (void)
{
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(GError) error = NULL;

  expect_critical ();
  server = g_object_new (SPARK_TYPE_MODULE_SERVER, NULL);
  g_test_assert_expected_messages ();

  expect_critical ();
  g_assert_false (spark_module_server_start_in_thread (server, &error));
  g_test_assert_expected_messages ();
  g_assert_no_error (error);
}

int
main (int   argc,
      char *argv[])
{
  g_test_init (&argc, &argv, NULL);

  g_test_add ("/spark/bad-input/names", Fixture, NULL, fixture_set_up, test_bad_names, fixture_tear_down);
  g_test_add ("/spark/bad-input/objects", Fixture, NULL, fixture_set_up, test_bad_objects, fixture_tear_down);
  g_test_add ("/spark/bad-input/reply-type", Fixture, NULL, fixture_set_up, test_bad_reply_type, fixture_tear_down);
  g_test_add ("/spark/bad-input/timeout", Fixture, NULL, fixture_set_up, test_bad_timeout, fixture_tear_down);
  g_test_add ("/spark/bad-input/after-start", Fixture, NULL, fixture_set_up, test_after_start, fixture_tear_down);
  g_test_add_func ("/spark/bad-input/after-server-finalize", test_after_server_finalize);
  g_test_add_func ("/spark/bad-input/orphan-dispatcher", test_orphan_dispatcher);
  g_test_add_func ("/spark/bad-input/server-without-handler", test_server_without_handler);

  return g_test_run ();
}
