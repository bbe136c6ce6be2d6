/* test-pool.c: a module server with a pool of workers
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <spark-channel.h>

#include "spark-test-util.h"

/* A concurrent handler whose state is all atomic or locked. */
typedef struct
{
  gint        handled;        /* atomic: requests and commands */
  gint        inside;         /* atomic: handler calls running now */
  gint        max_inside;     /* atomic: the most seen at once */
  gint        wait_for;       /* >0: a call waits (up to 10 s) until this many run at once */
  gint        cancelled;      /* atomic: calls that saw their cancellable cancelled */
  gboolean    block;          /* calls wait on @gate (or their cancellable) */
  SparkTestGate gate;

  GMutex      mutex;
  GHashTable *last_seq;       /* mutex: key -> last sequence number + 1 */
  GHashTable *busy;           /* mutex: keys a call is handling now */
  gint        order_errors;   /* mutex: a key's number below its last */
  gint        overlaps;       /* mutex: a key handled by two calls at once */
  GHashTable *threads;        /* mutex: thread -> broadcast count */
} Pool;

static void
pool_init (Pool *pool)
{
  spark_test_gate_init (&pool->gate);
  g_mutex_init (&pool->mutex);
  pool->last_seq = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  pool->busy = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  pool->threads = g_hash_table_new (NULL, NULL);
}

static void
pool_clear (Pool *pool)
{
  spark_test_gate_clear (&pool->gate);
  g_mutex_clear (&pool->mutex);
  g_hash_table_unref (pool->last_seq);
  g_hash_table_unref (pool->busy);
  g_hash_table_unref (pool->threads);
}

/* Parameters (s key, u seq): checks the key's order and that nobody else
 * handles it now. */
static void
pool_enter_key (Pool     *pool,
                GVariant *parameters,
                char    **key_out)
{
  const char *key;
  guint32 seq;

  *key_out = NULL;
  if (parameters == NULL || !g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(su)")))
    return;
  g_variant_get (parameters, "(&su)", &key, &seq);

  g_mutex_lock (&pool->mutex);
  if (GPOINTER_TO_UINT (g_hash_table_lookup (pool->last_seq, key)) > seq)
    pool->order_errors++;
  g_hash_table_insert (pool->last_seq, g_strdup (key), GUINT_TO_POINTER (seq + 1));
  if (g_hash_table_contains (pool->busy, key))
    pool->overlaps++;
  else
    g_hash_table_add (pool->busy, g_strdup (key));
  g_mutex_unlock (&pool->mutex);

  *key_out = g_strdup (key);
}

static void
pool_leave_key (Pool *pool,
                char *key)
{
  if (key == NULL)
    return;
  g_mutex_lock (&pool->mutex);
  g_hash_table_remove (pool->busy, key);
  g_mutex_unlock (&pool->mutex);
  g_free (key);
}

static void
pool_work (Pool         *pool,
           GCancellable *cancellable)
{
  gint inside = g_atomic_int_add (&pool->inside, 1) + 1;
  gint max;

  while ((max = g_atomic_int_get (&pool->max_inside)) < inside &&
         !g_atomic_int_compare_and_exchange (&pool->max_inside, max, inside))
    ;

  if (pool->wait_for > 0)
    {
      gint64 deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;

      while (g_atomic_int_get (&pool->max_inside) < pool->wait_for &&
             g_get_monotonic_time () < deadline)
        g_usleep (200);
    }

  if (pool->block && spark_test_gate_wait (&pool->gate, cancellable))
    g_atomic_int_inc (&pool->cancelled);

  g_atomic_int_add (&pool->inside, -1);
  g_atomic_int_inc (&pool->handled);
}

static GVariant *
pool_request (const char    *name,
              GVariant      *parameters,
              GCancellable  *cancellable,
              gpointer       user_data,
              GError       **error)
{
  Pool *pool = user_data;
  char *key;

  pool_enter_key (pool, parameters, &key);
  pool_work (pool, cancellable);
  pool_leave_key (pool, key);

  if (g_cancellable_set_error_if_cancelled (cancellable, error))
    return NULL;

  /* The reply says which request it answers. */
  return parameters ? g_variant_ref (parameters) : g_variant_new_string (name);
}

static gboolean
pool_command (const char    *name,
              GVariant      *parameters,
              GCancellable  *cancellable,
              gpointer       user_data,
              GError       **error)
{
  Pool *pool = user_data;
  char *key;

  if (g_strcmp0 (name, "broadcast") == 0)
    {
      g_mutex_lock (&pool->mutex);
      g_hash_table_insert (pool->threads, g_thread_self (),
                           GUINT_TO_POINTER (GPOINTER_TO_UINT (g_hash_table_lookup (pool->threads,
                                                                                    g_thread_self ())) + 1));
      g_mutex_unlock (&pool->mutex);
      g_atomic_int_inc (&pool->handled);
      return TRUE;
    }

  pool_enter_key (pool, parameters, &key);
  pool_work (pool, cancellable);
  pool_leave_key (pool, key);
  return TRUE;
}

static SparkModuleServer *
pool_server_new (Pool          *pool,
                 guint          workers,
                 SparkOrdering  ordering)
{
  g_autoptr(SparkHandler) handler = spark_func_handler_new_full (SPARK_HANDLER_FLAGS_CONCURRENT,
                                                                 pool_request, pool_command,
                                                                 pool, NULL);
  SparkModuleServer *server = spark_module_server_new (handler);

  spark_module_server_set_name (server, "pool");
  spark_module_server_set_workers (server, workers);
  spark_module_server_set_ordering (server, ordering);
  return server;
}

static void
pool_server_start (SparkModuleServer *server)
{
  GError *error = NULL;

  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
}

/* What a pool refuses ------------------------------------------------------- */

static GVariant *
plain_request (const char    *name,
               GVariant      *parameters,
               GCancellable  *cancellable,
               gpointer       user_data,
               GError       **error)
{
  return g_variant_new_boolean (TRUE);
}

static void
test_pool_refused (void)
{
  g_autoptr(SparkHandler) plain = spark_func_handler_new (plain_request, NULL, NULL, NULL);
  g_autoptr(SparkHandler) concurrent = spark_func_handler_new_full (SPARK_HANDLER_FLAGS_CONCURRENT,
                                                                    plain_request, NULL, NULL, NULL);
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GError) error = NULL;

  g_assert_cmpuint (spark_handler_get_flags (plain), ==, SPARK_HANDLER_FLAGS_NONE);
  g_assert_cmpuint (spark_handler_get_flags (concurrent), ==, SPARK_HANDLER_FLAGS_CONCURRENT);

  /* A handler that does not declare itself concurrent. */
  server = spark_module_server_new (plain);
  spark_module_server_set_workers (server, 2);
  g_assert_false (spark_module_server_start_in_thread (server, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  g_assert_nonnull (strstr (error->message, "SPARK_HANDLER_FLAGS_CONCURRENT"));
  g_clear_error (&error);
  g_assert_false (spark_module_server_get_running (server));

  /* A refused start is no start: one worker starts. */
  spark_module_server_set_workers (server, 1);
  g_assert_true (spark_module_server_start_in_thread (server, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (spark_module_server_get_workers (server), ==, 1);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_clear_object (&server);

  /* A pool runs on threads of its own. */
  server = spark_module_server_new (concurrent);
  g_object_set (server, "workers", 3, NULL);
  g_assert_false (spark_module_server_start (server, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  g_clear_error (&error);

  /* Frozen by start. */
  pool_server_start (server);
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*workers*cannot change*");
  spark_module_server_set_workers (server, 5);
  g_test_assert_expected_messages ();
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*ordering*cannot change*");
  spark_module_server_set_ordering (server, SPARK_ORDERING_KEY);
  g_test_assert_expected_messages ();
  g_assert_cmpuint (spark_module_server_get_workers (server), ==, 3);
  g_assert_cmpint (spark_module_server_get_ordering (server), ==, SPARK_ORDERING_NONE);

  dispatcher = spark_module_server_create_dispatcher (server);
  {
    g_autoptr(GVariant) reply = spark_dispatcher_request_sync (dispatcher, "x", NULL, NULL, NULL, &error);

    g_assert_no_error (error);
    g_assert_true (g_variant_get_boolean (reply));
  }
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
}

/* Workers run at once -------------------------------------------------------- */

typedef struct
{
  gint              done;   /* atomic */
  gint              failed; /* atomic */
  gint              wrong;  /* atomic: a reply that does not answer its request */
} Tally;

typedef struct _Producer Producer;

static void
tally_reply_cb (GVariant     *reply,
                const GError *error,
                gpointer      user_data)
{
  Tally *tally = user_data;

  if (error != NULL)
    g_atomic_int_inc (&tally->failed);
  g_atomic_int_inc (&tally->done);
}

/* A request of parameters (su) whose reply @tally counts. */
static void
request_keyed (SparkDispatcher *dispatcher,
               const char      *name,
               const char      *key,
               guint32          seq,
               Tally           *tally)
{
  spark_dispatcher_request_full (dispatcher, name, g_variant_new ("(su)", key, seq), NULL, NULL,
                                 tally_reply_cb, tally, NULL);
}

static void
test_pool_parallel (void)
{
  Pool pool = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  Tally tally = { 0, };

  pool_init (&pool);
  pool.wait_for = 2;
  server = pool_server_new (&pool, 2, SPARK_ORDERING_NONE);
  pool_server_start (server);
  dispatcher = spark_module_server_create_dispatcher (server);

  /* Each call waits until two run at once: with one thread serving, each
   * would wait its 10 s and the most seen would be 1. */
  for (guint i = 0; i < 2; i++)
    spark_dispatcher_request_full (dispatcher, "work", NULL, NULL, NULL, tally_reply_cb, &tally, NULL);
  spark_test_wait_count (NULL, &tally.done, 2);

  g_assert_cmpint (tally.failed, ==, 0);
  g_assert_cmpint (g_atomic_int_get (&pool.max_inside), ==, 2);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpint (pool.handled, ==, 2);
  pool_clear (&pool);
}

/* Exactly once and in key order, from many threads ------------------------- */

#define PRODUCERS   8
#define PER_PRODUCER 1500

struct _Producer
{
  SparkDispatcher *dispatcher;
  guint            index;
  Tally           *tally;
  gboolean         keyed;       /* keys p<index>; otherwise k<seq % 5> */
  gint             async_done;  /* this thread's request_full() replies */
};

typedef struct
{
  Producer *producer;
  GVariant *expected;   /* a reference */
} Expected;

static void
checked_reply_cb (GVariant     *reply,
                  const GError *error,
                  gpointer      user_data)
{
  Expected *expected = user_data;
  Tally *tally = expected->producer->tally;

  if (error != NULL)
    g_atomic_int_inc (&tally->failed);
  else if (!g_variant_equal (reply, expected->expected))
    g_atomic_int_inc (&tally->wrong);
  g_atomic_int_inc (&tally->done);
  g_atomic_int_inc (&expected->producer->async_done);
  g_variant_unref (expected->expected);
  g_free (expected);
}

static gpointer
producer_thread (gpointer data)
{
  Producer *p = data;
  g_autoptr(GMainContext) context = g_main_context_new ();
  gint n_async = 0;

  g_main_context_push_thread_default (context);
  for (guint32 seq = 0; seq < PER_PRODUCER; seq++)
    {
      g_autofree char *key = p->keyed ? g_strdup_printf ("p%u", p->index) : g_strdup_printf ("k%u", seq % 5);
      GVariant *parameters = g_variant_new ("(su)", key, seq);

      if (seq % 3 == 2)
        {
          GError *error = NULL;

          g_assert_true (spark_dispatcher_send_command (p->dispatcher, "cmd", parameters, NULL, &error));
          g_assert_no_error (error);
          g_atomic_int_inc (&p->tally->done);
        }
      else if (seq % 3 == 1)
        {
          GError *error = NULL;
          g_autoptr(GVariant) expected = g_variant_ref_sink (g_variant_new ("(su)", key, seq));
          g_autoptr(GVariant) reply = spark_dispatcher_request_sync (p->dispatcher, "req", parameters,
                                                                     NULL, NULL, &error);

          g_assert_no_error (error);
          if (!g_variant_equal (reply, expected))
            g_atomic_int_inc (&p->tally->wrong);
          g_atomic_int_inc (&p->tally->done);
        }
      else
        {
          Expected *expected = g_new0 (Expected, 1);

          expected->producer = p;
          expected->expected = g_variant_ref_sink (g_variant_new ("(su)", key, seq));
          spark_dispatcher_request_full (p->dispatcher, "req", parameters, NULL, NULL,
                                         checked_reply_cb, expected, NULL);
          n_async++;
        }
    }
  /* The async ones' callbacks run here. */
  spark_test_wait_count (context, &p->async_done, n_async);
  g_main_context_pop_thread_default (context);

  return NULL;
}

static void
run_producers (SparkModuleServer *server,
               Tally             *tally,
               gboolean           keyed)
{
  GThread *threads[PRODUCERS];
  Producer producers[PRODUCERS];

  for (guint i = 0; i < PRODUCERS; i++)
    {
      producers[i].dispatcher = spark_module_server_create_dispatcher (server);
      producers[i].index = i;
      producers[i].tally = tally;
      producers[i].keyed = keyed;
      producers[i].async_done = 0;
      threads[i] = g_thread_new ("producer", producer_thread, &producers[i]);
    }
  for (guint i = 0; i < PRODUCERS; i++)
    {
      g_thread_join (threads[i]);
      g_object_unref (producers[i].dispatcher);
    }
}

static void
test_pool_exactly_once (gconstpointer data)
{
  SparkOrdering ordering = GPOINTER_TO_INT (data);
  Pool pool = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  Tally tally = { 0, };

  pool_init (&pool);
  server = pool_server_new (&pool, 4, ordering);
  pool_server_start (server);

  run_producers (server, &tally, ordering == SPARK_ORDERING_KEY);

  /* A DRAIN handles everything queued before it stops. */
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 0);

  g_assert_cmpint (pool.handled, ==, PRODUCERS * PER_PRODUCER);
  g_assert_cmpint (tally.failed, ==, 0);
  g_assert_cmpint (tally.wrong, ==, 0);
  if (ordering == SPARK_ORDERING_KEY)
    {
      /* Each key's messages in the order sent, never two at once. */
      g_assert_cmpint (pool.order_errors, ==, 0);
      g_assert_cmpint (pool.overlaps, ==, 0);
      g_assert_cmpuint (g_hash_table_size (pool.last_seq), ==, PRODUCERS);
    }
  pool_clear (&pool);
}

/* Without ordering, a key's messages do run at once and out of order: the
 * key test above can fail. */
static void
test_pool_unordered_overlaps (void)
{
  Pool pool = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  Tally tally = { 0, };

  pool_init (&pool);
  pool.wait_for = 2;
  server = pool_server_new (&pool, 2, SPARK_ORDERING_NONE);
  pool_server_start (server);
  dispatcher = spark_module_server_create_dispatcher (server);

  for (guint32 seq = 0; seq < 2; seq++)
    request_keyed (dispatcher, "req", "same", seq, &tally);
  spark_test_wait_count (NULL, &tally.done, 2);
  g_assert_cmpint (pool.overlaps, ==, 1);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  pool_clear (&pool);
}

/* With ordering by key, the same two never run at once, while other keys
 * go to the idle worker. */
static void
test_pool_key_serializes (void)
{
  Pool pool = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  Tally tally = { 0, };

  pool_init (&pool);
  pool.block = TRUE;
  server = pool_server_new (&pool, 2, SPARK_ORDERING_KEY);
  pool_server_start (server);
  dispatcher = spark_module_server_create_dispatcher (server);

  /* Two of key "a" and one of "b": with the first "a" blocked, the second
   * waits for its worker; "b" runs on the other one. */
  request_keyed (dispatcher, "req", "a", 0, &tally);
  request_keyed (dispatcher, "req", "a", 1, &tally);
  request_keyed (dispatcher, "req", "b", 0, &tally);

  /* "a" 0 and "b" 0 run at once; "a" 1 is deferred, still pending. */
  while (g_atomic_int_get (&pool.inside) < 2)
    g_usleep (1000);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 1);
  g_assert_cmpint (g_atomic_int_get (&pool.inside), ==, 2);

  spark_test_gate_open (&pool.gate);
  spark_test_wait_count (NULL, &tally.done, 3);
  g_assert_cmpint (tally.failed, ==, 0);
  g_assert_cmpint (pool.overlaps, ==, 0);
  g_assert_cmpint (pool.order_errors, ==, 0);
  g_assert_cmpint (pool.max_inside, ==, 2);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  pool_clear (&pool);
}

/* Stopping ------------------------------------------------------------------- */

/* ABORT cancels every running handler and fails what is queued. */
static void
test_pool_abort (void)
{
  Pool pool = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  SparkTestOutcome running[3] = { { 0, }, };
  SparkTestOutcome queued = { 0, };

  pool_init (&pool);
  pool.block = TRUE;
  server = pool_server_new (&pool, 3, SPARK_ORDERING_NONE);
  pool_server_start (server);
  dispatcher = spark_module_server_create_dispatcher (server);

  for (guint i = 0; i < 3; i++)
    spark_dispatcher_request_full (dispatcher, "req", NULL, NULL, NULL,
                                   spark_test_outcome_cb, &running[i], NULL);
  while (g_atomic_int_get (&pool.inside) < 3)
    g_usleep (1000);
  spark_dispatcher_request_full (dispatcher, "req", NULL, NULL, NULL, spark_test_outcome_cb, &queued, NULL);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 1);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_ABORT);

  /* All three handlers saw the abort; the queued one never ran. */
  g_assert_cmpint (pool.cancelled, ==, 3);
  g_assert_cmpint (pool.handled, ==, 3);
  for (guint i = 0; i < 3; i++)
    {
      spark_test_wait_flag (NULL, &running[i].done);
      g_assert_nonnull (running[i].error);
      spark_test_outcome_clear (&running[i]);
    }
  spark_test_wait_flag (NULL, &queued.done);
  g_assert_error (queued.error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  spark_test_outcome_clear (&queued);
  pool_clear (&pool);
}

/* DRAIN waits for every worker's running handler. */
static void
test_pool_drain_waits (void)
{
  Pool pool = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  Tally tally = { 0, };
  gint stopped = FALSE;

  pool_init (&pool);
  pool.block = TRUE;
  server = pool_server_new (&pool, 2, SPARK_ORDERING_NONE);
  pool_server_start (server);
  dispatcher = spark_module_server_create_dispatcher (server);

  for (guint i = 0; i < 6; i++)
    spark_dispatcher_request_full (dispatcher, "req", NULL, NULL, NULL, tally_reply_cb, &tally, NULL);
  while (g_atomic_int_get (&pool.inside) < 2)
    g_usleep (1000);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 4);

  spark_module_server_shutdown_async (server, SPARK_SHUTDOWN_MODE_DRAIN, NULL,
                                      spark_test_shutdown_done_cb, &stopped);
  spark_test_iterate_pending (NULL);
  g_assert_false (g_atomic_int_get (&stopped));
  g_assert_true (spark_module_server_get_running (server));

  spark_test_gate_open (&pool.gate);
  spark_test_wait_flag (NULL, &stopped);
  g_assert_false (spark_module_server_get_running (server));
  spark_test_wait_count (NULL, &tally.done, 6);
  g_assert_cmpint (tally.failed, ==, 0);
  g_assert_cmpint (pool.handled, ==, 6);
  pool_clear (&pool);
}

/* Broadcast and pending ----------------------------------------------------- */

static void
test_pool_broadcast (void)
{
  Pool pool = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GError) error = NULL;
  GHashTableIter iter;
  gpointer value;

  pool_init (&pool);
  server = pool_server_new (&pool, 4, SPARK_ORDERING_NONE);

  /* Not running: refused like any send. */
  dispatcher = spark_module_server_create_dispatcher (server);
  g_assert_false (spark_dispatcher_broadcast_command (dispatcher, "broadcast", NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);

  pool_server_start (server);
  for (guint i = 0; i < 3; i++)
    {
      g_assert_true (spark_dispatcher_broadcast_command (dispatcher, "broadcast", g_variant_new_uint32 (i), &error));
      g_assert_no_error (error);
    }
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);

  /* Each of the four worker threads got each of the three once. */
  g_assert_cmpint (pool.handled, ==, 12);
  g_assert_cmpuint (g_hash_table_size (pool.threads), ==, 4);
  g_hash_table_iter_init (&iter, pool.threads);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    g_assert_cmpuint (GPOINTER_TO_UINT (value), ==, 3);
  g_assert_false (g_hash_table_contains (pool.threads, g_thread_self ()));

  g_assert_false (spark_dispatcher_broadcast_command (dispatcher, "broadcast", NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  pool_clear (&pool);
}

/* One worker: a broadcast is a command like another. */
static void
test_pool_broadcast_one (void)
{
  Pool pool = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GError) error = NULL;

  pool_init (&pool);
  server = pool_server_new (&pool, 1, SPARK_ORDERING_NONE);
  pool_server_start (server);
  dispatcher = spark_module_server_create_dispatcher (server);
  g_assert_true (spark_dispatcher_broadcast_command (dispatcher, "broadcast", NULL, &error));
  g_assert_no_error (error);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpint (pool.handled, ==, 1);
  g_assert_cmpuint (g_hash_table_size (pool.threads), ==, 1);
  pool_clear (&pool);
}

/* pending counts what no worker has started, running says the pool runs. */
static void
test_pool_pending (void)
{
  Pool pool = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GError) error = NULL;

  pool_init (&pool);
  pool.block = TRUE;
  server = pool_server_new (&pool, 3, SPARK_ORDERING_NONE);
  pool_server_start (server);
  dispatcher = spark_module_server_create_dispatcher (server);

  for (guint i = 0; i < 10; i++)
    g_assert_true (spark_dispatcher_send_command (dispatcher, "cmd", NULL, NULL, &error));
  while (g_atomic_int_get (&pool.inside) < 3)
    g_usleep (1000);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 7);

  /* A broadcast counts once per worker until each has handled it. */
  g_assert_true (spark_dispatcher_broadcast_command (dispatcher, "broadcast", NULL, &error));
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 10);
  g_assert_true (spark_module_server_get_running (server));

  spark_test_gate_open (&pool.gate);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 0);
  g_assert_cmpint (pool.handled, ==, 13);
  pool_clear (&pool);
}

/* cancel_all reaches requests deferred to the worker that holds their key. */
static void
test_pool_cancel_all_deferred (void)
{
  Pool pool = { 0, };
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  SparkTestOutcome first = { 0, };
  SparkTestOutcome deferred = { 0, };

  pool_init (&pool);
  pool.block = TRUE;
  server = pool_server_new (&pool, 2, SPARK_ORDERING_KEY);
  pool_server_start (server);
  dispatcher = spark_module_server_create_dispatcher (server);

  spark_dispatcher_request_full (dispatcher, "req", g_variant_new ("(su)", "a", 0), NULL, NULL,
                                 spark_test_outcome_cb, &first, NULL);
  while (g_atomic_int_get (&pool.inside) < 1)
    g_usleep (1000);
  spark_dispatcher_request_full (dispatcher, "req", g_variant_new ("(su)", "a", 1), NULL, NULL,
                                 spark_test_outcome_cb, &deferred, NULL);
  /* The idle worker takes it and defers it to the busy one. */
  while (spark_module_server_get_pending (server) != 1)
    g_usleep (1000);

  spark_dispatcher_cancel_all (dispatcher);
  spark_test_wait_flag (NULL, &deferred.done);
  g_assert_error (deferred.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);

  spark_test_gate_open (&pool.gate);
  spark_test_wait_flag (NULL, &first.done);
  g_assert_no_error (first.error);
  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  /* The cancelled one was skipped. */
  g_assert_cmpint (pool.handled, ==, 1);
  spark_test_outcome_clear (&first);
  spark_test_outcome_clear (&deferred);
  pool_clear (&pool);
}

/* Routers -------------------------------------------------------------------- */

static void
test_pool_router (void)
{
  Pool pool = { 0, };
  g_autoptr(SparkHandler) concurrent = NULL;
  g_autoptr(SparkHandler) plain = spark_func_handler_new (plain_request, NULL, NULL, NULL);
  g_autoptr(SparkRouter) router = spark_router_new ();
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GError) error = NULL;
  Tally tally = { 0, };

  pool_init (&pool);
  pool.wait_for = 2;
  concurrent = spark_func_handler_new_full (SPARK_HANDLER_FLAGS_CONCURRENT, pool_request, pool_command,
                                            &pool, NULL);
  g_assert_true (spark_router_add_handler (router, "work.*", concurrent, NULL, NULL, &error));
  g_assert_true (spark_router_add_handler (router, "plain", plain, NULL, NULL, &error));
  g_assert_no_error (error);

  /* Not concurrent while a route is not. */
  g_assert_cmpuint (spark_handler_get_flags (SPARK_HANDLER (router)), ==, SPARK_HANDLER_FLAGS_NONE);
  g_test_expect_message ("SparkChannel", G_LOG_LEVEL_CRITICAL, "*route “plain”*");
  spark_router_set_concurrent (router, TRUE);
  g_test_assert_expected_messages ();
  g_assert_false (spark_router_get_concurrent (router));

  g_assert_true (spark_router_remove (router, "plain"));
  spark_router_set_concurrent (router, TRUE);
  g_assert_true (spark_router_get_concurrent (router));
  g_assert_cmpuint (spark_handler_get_flags (SPARK_HANDLER (router)), ==, SPARK_HANDLER_FLAGS_CONCURRENT);

  /* A concurrent router refuses a route to a handler that is not. */
  g_assert_false (spark_router_add_handler (router, "plain", plain, NULL, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  g_clear_error (&error);

  server = spark_module_server_new (SPARK_HANDLER (router));
  spark_module_server_set_workers (server, 2);
  pool_server_start (server);
  dispatcher = spark_module_server_create_dispatcher (server);
  for (guint i = 0; i < 2; i++)
    spark_dispatcher_request_full (dispatcher, "work.a", NULL, NULL, NULL, tally_reply_cb, &tally, NULL);
  spark_test_wait_count (NULL, &tally.done, 2);
  g_assert_cmpint (tally.failed, ==, 0);
  g_assert_cmpint (pool.max_inside, ==, 2);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  pool_clear (&pool);
}

/* A route's own ordering: "ordered" keeps a key's messages one at a time
 * while "free", on the same pool in no order, runs them at once. */
static void
test_pool_route_ordering (void)
{
  Pool pool = { 0, };
  g_autoptr(SparkHandler) concurrent = NULL;
  g_autoptr(SparkRouter) router = spark_router_new ();
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GError) error = NULL;
  Tally tally = { 0, };

  pool_init (&pool);
  pool.block = TRUE;
  concurrent = spark_func_handler_new_full (SPARK_HANDLER_FLAGS_CONCURRENT, pool_request, pool_command,
                                            &pool, NULL);
  g_assert_true (spark_router_add_handler (router, "ordered", concurrent, NULL, NULL, &error));
  g_assert_true (spark_router_add_handler (router, "free", concurrent, NULL, NULL, &error));
  g_assert_true (spark_router_set_ordering (router, "ordered", SPARK_ORDERING_KEY, &error));
  g_assert_no_error (error);
  g_assert_false (spark_router_set_ordering (router, "nope", SPARK_ORDERING_KEY, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND);
  g_clear_error (&error);
  spark_router_set_concurrent (router, TRUE);

  server = spark_module_server_new (SPARK_HANDLER (router));
  spark_module_server_set_workers (server, 2);
  pool_server_start (server);
  dispatcher = spark_module_server_create_dispatcher (server);

  /* "ordered" a:0 runs; a:1 waits for it (deferred, pending), while the
   * other worker takes "free". */
  request_keyed (dispatcher, "ordered", "a", 0, &tally);
  request_keyed (dispatcher, "ordered", "a", 1, &tally);
  request_keyed (dispatcher, "free", "z", 0, &tally);
  while (g_atomic_int_get (&pool.inside) < 2)
    g_usleep (1000);
  g_assert_cmpuint (spark_module_server_get_pending (server), ==, 1);
  spark_test_gate_open (&pool.gate);
  spark_test_wait_count (NULL, &tally.done, 3);
  g_assert_cmpint (pool.overlaps, ==, 0);

  /* "free": two of one key do run at once. */
  g_mutex_lock (&pool.gate.mutex);
  pool.gate.open = FALSE;
  g_mutex_unlock (&pool.gate.mutex);
  for (guint32 seq = 0; seq < 2; seq++)
    request_keyed (dispatcher, "free", "y", seq, &tally);
  while (g_atomic_int_get (&pool.inside) < 2)
    g_usleep (1000);
  spark_test_gate_open (&pool.gate);
  spark_test_wait_count (NULL, &tally.done, 5);
  g_assert_cmpint (pool.overlaps, ==, 1);
  g_assert_cmpint (tally.failed, ==, 0);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  pool_clear (&pool);
}

/* A blocking call from a worker to its own pool would wait for itself
 * (every worker could be making one): WOULD_DEADLOCK, as for one server. */
typedef struct
{
  SparkDispatcher *to_self;   /* set before the first request */
} SelfCaller;

static GVariant *
self_request (const char    *name,
              GVariant      *parameters,
              GCancellable  *cancellable,
              gpointer       user_data,
              GError       **error)
{
  SelfCaller *caller = user_data;

  if (g_str_equal (name, "outer"))
    return spark_dispatcher_request_sync (caller->to_self, "inner", NULL, NULL, NULL, error);
  return g_variant_new_boolean (TRUE);
}

static void
test_pool_would_deadlock (void)
{
  SelfCaller caller = { NULL };
  g_autoptr(SparkHandler) handler = spark_func_handler_new_full (SPARK_HANDLER_FLAGS_CONCURRENT,
                                                                 self_request, NULL, &caller, NULL);
  g_autoptr(SparkModuleServer) server = spark_module_server_new (handler);
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GVariant) reply = NULL;
  GError *error = NULL;

  spark_module_server_set_workers (server, 2);
  caller.to_self = spark_module_server_create_dispatcher (server);
  pool_server_start (server);
  dispatcher = spark_module_server_create_dispatcher (server);

  reply = spark_dispatcher_request_sync (dispatcher, "outer", NULL, NULL, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_WOULD_DEADLOCK);
  g_clear_error (&error);

  spark_test_shutdown (server, SPARK_SHUTDOWN_MODE_DRAIN);
  g_clear_object (&caller.to_self);
}

int
main (int   argc,
      char *argv[])
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/spark/pool/refused", test_pool_refused);
  g_test_add_func ("/spark/pool/parallel", test_pool_parallel);
  g_test_add_data_func ("/spark/pool/exactly-once/unordered", GINT_TO_POINTER (SPARK_ORDERING_NONE),
                        test_pool_exactly_once);
  g_test_add_data_func ("/spark/pool/exactly-once/by-key", GINT_TO_POINTER (SPARK_ORDERING_KEY),
                        test_pool_exactly_once);
  g_test_add_data_func ("/spark/pool/exactly-once/by-name", GINT_TO_POINTER (SPARK_ORDERING_NAME),
                        test_pool_exactly_once);
  g_test_add_func ("/spark/pool/ordering/none-overlaps", test_pool_unordered_overlaps);
  g_test_add_func ("/spark/pool/ordering/key-serializes", test_pool_key_serializes);
  g_test_add_func ("/spark/pool/abort", test_pool_abort);
  g_test_add_func ("/spark/pool/drain-waits", test_pool_drain_waits);
  g_test_add_func ("/spark/pool/broadcast", test_pool_broadcast);
  g_test_add_func ("/spark/pool/broadcast-one", test_pool_broadcast_one);
  g_test_add_func ("/spark/pool/pending", test_pool_pending);
  g_test_add_func ("/spark/pool/cancel-all-deferred", test_pool_cancel_all_deferred);
  g_test_add_func ("/spark/pool/router", test_pool_router);
  g_test_add_func ("/spark/pool/route-ordering", test_pool_route_ordering);
  g_test_add_func ("/spark/pool/would-deadlock", test_pool_would_deadlock);

  return g_test_run ();
}
