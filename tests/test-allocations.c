/* test-allocations.c: what the hot paths allocate, counted
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Run with malloc-counter preloaded (meson does, in suite 'alloc'): every
 * malloc in the process is counted. Messages carry no parameters and the
 * handler replies with a GVariant made beforehand, so a stream of messages
 * allocates only what the library itself allocates. The library promises
 * none once its pools are warm (see the top of spark-mailbox.c): each case
 * warms up, then counts over a stream of messages sent in bursts of 64
 * (the way a busy module sees them) and asserts fewer than one allocation
 * per 20 messages. The figures are printed with --verbose.
 *
 * Counts, not times: nothing here depends on the machine's speed.
 */

#include <dlfcn.h>

#include "spark-test-util.h"

#define BURST    64
#define WARM_UP  (16 * BURST)
#define MEASURED (256 * BURST)
#define MAX_PER_MESSAGE 0.05

typedef unsigned long (*CounterFunc) (void);

static CounterFunc counter_get;

typedef struct
{
  GVariant *reply;        /* made before counting starts */
  gint      n_handled;    /* atomic */
  gint      n_replied;    /* the requester's context only */
} Fixture;

static GVariant *
reply_request (const char    *name,
               GVariant      *parameters,
               GCancellable  *cancellable,
               gpointer       user_data,
               GError       **error)
{
  Fixture *f = user_data;

  g_atomic_int_inc (&f->n_handled);
  return g_variant_ref (f->reply);
}

static gboolean
take_command (const char    *name,
              GVariant      *parameters,
              GCancellable  *cancellable,
              gpointer       user_data,
              GError       **error)
{
  Fixture *f = user_data;

  g_atomic_int_inc (&f->n_handled);
  g_main_context_wakeup (NULL);
  return TRUE;
}

static void
on_reply_full (GVariant     *reply,
               const GError *error,
               gpointer      user_data)
{
  Fixture *f = user_data;

  g_assert_no_error (error);
  g_assert_true (reply == f->reply);
  f->n_replied++;
}

static void
on_reply_async (GObject      *source,
                GAsyncResult *result,
                gpointer      user_data)
{
  Fixture *f = user_data;
  GError *error = NULL;
  GVariant *reply = spark_dispatcher_request_finish (SPARK_DISPATCHER (source), result, &error);

  g_assert_no_error (error);
  g_assert_true (reply == f->reply);
  g_variant_unref (reply);
  f->n_replied++;
}

typedef enum
{
  SEND_COMMAND,
  SEND_REQUEST_FULL,
  SEND_REQUEST_ASYNC,
  SEND_REQUEST_SYNC,
} SendKind;

/* Sends @n messages in bursts, waiting for each burst to be handled. */
static void
send_stream (SparkDispatcher *dispatcher,
             Fixture         *f,
             SendKind         kind,
             guint            n)
{
  for (guint sent = 0; sent < n; )
    {
      for (guint i = 0; i < BURST; i++, sent++)
        {
          GError *error = NULL;
          GVariant *reply;

          switch (kind)
            {
            case SEND_COMMAND:
              g_assert_true (spark_dispatcher_send_command (dispatcher, "set", NULL, NULL, &error));
              g_assert_no_error (error);
              break;
            case SEND_REQUEST_FULL:
              spark_dispatcher_request_full (dispatcher, "get", NULL, NULL, NULL, on_reply_full, f, NULL);
              break;
            case SEND_REQUEST_ASYNC:
              spark_dispatcher_request_async (dispatcher, "get", NULL, NULL, NULL, on_reply_async, f);
              break;
            case SEND_REQUEST_SYNC:
              reply = spark_dispatcher_request_sync (dispatcher, "get", NULL, NULL, NULL, &error);
              g_assert_no_error (error);
              g_assert_true (reply == f->reply);
              g_variant_unref (reply);
              f->n_replied++;
              break;
            default:
              g_assert_not_reached ();
            }
        }

      if (kind == SEND_COMMAND)
        spark_test_wait_count (NULL, &f->n_handled, (gint) sent);
      else
        spark_test_wait_count (NULL, &f->n_replied, (gint) sent);
    }
}

static void
test_stream (gconstpointer data)
{
  SendKind kind = GPOINTER_TO_INT (data);
  Fixture f = { 0 };
  g_autoptr(SparkHandler) handler = NULL;
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GError) error = NULL;
  unsigned long before, after;
  double per_message;

  if (counter_get == NULL)
    {
      g_test_skip ("needs malloc-counter preloaded (meson test --suite alloc)");
      return;
    }

  f.reply = g_variant_ref_sink (g_variant_new_int32 (7));
  handler = spark_func_handler_new (reply_request, take_command, &f, NULL);
  server = spark_module_server_new (handler);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  dispatcher = spark_module_server_create_dispatcher (server);

  send_stream (dispatcher, &f, kind, WARM_UP);
  f.n_handled = 0;
  f.n_replied = 0;

  before = counter_get ();
  send_stream (dispatcher, &f, kind, MEASURED);
  after = counter_get ();

  per_message = (double) (after - before) / MEASURED;
  g_test_message ("%lu allocations for %u messages: %.4f per message",
                  after - before, (guint) MEASURED, per_message);
  g_assert_cmpfloat (per_message, <, MAX_PER_MESSAGE);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_variant_unref (f.reply);
}

int
main (int argc, char *argv[])
{
  g_test_init (&argc, &argv, NULL);

  counter_get = (CounterFunc) (void (*) (void)) dlsym (RTLD_DEFAULT, "spark_malloc_counter_get");

  g_test_add_data_func ("/spark/allocations/command", GINT_TO_POINTER (SEND_COMMAND), test_stream);
  g_test_add_data_func ("/spark/allocations/request-full", GINT_TO_POINTER (SEND_REQUEST_FULL), test_stream);
  g_test_add_data_func ("/spark/allocations/request-async", GINT_TO_POINTER (SEND_REQUEST_ASYNC), test_stream);
  g_test_add_data_func ("/spark/allocations/request-sync", GINT_TO_POINTER (SEND_REQUEST_SYNC), test_stream);

  return g_test_run ();
}
