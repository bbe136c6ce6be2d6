/* pool.c: one module served by a pool of worker threads, in C
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A CPU-bound module (it counts primes) whose handler declares itself
 * safe to call from several threads at once, served by a pool of two
 * workers that drain one mailbox. The program shows:
 *
 * - that a pool refuses a handler that does not declare
 *   SPARK_HANDLER_FLAGS_CONCURRENT;
 * - requests without an ordering key, which either worker takes, so two
 *   run at once;
 * - commands ordered by key: each account's entries are handled in the
 *   order they were sent, never two of one account at once, while
 *   different accounts are handled side by side;
 * - a broadcast, which each worker handles once on its own thread: here
 *   it drops the cache that each worker keeps of its own;
 * - a DRAIN shutdown, which waits for every worker.
 *
 * It stops at the first outcome it did not expect (g_error); a warning or
 * a critical aborts it under G_DEBUG=fatal-warnings, as the test suite
 * runs it.
 */

#include <locale.h>

#include <spark-channel.h>

#define N_WORKERS  2
#define N_REQUESTS 8

/* The module's state. The handler is called by both workers at once, so
 * everything it shares is locked, or atomic; what a worker keeps of its
 * own (its cache) is per thread. */
typedef struct
{
  GMutex      mutex;
  GHashTable *ledgers;        /* mutex: account -> GString of its entries */
  GHashTable *cleared;        /* mutex: worker threads that dropped their cache */
  guint       n_cleared;      /* mutex: copies of cache.clear handled */
} Module;

/* Each worker's cache: bound -> prime count. Freed when the worker's
 * thread ends. */
static GPrivate worker_cache = G_PRIVATE_INIT ((GDestroyNotify) g_hash_table_unref);

static GHashTable *
get_worker_cache (void)
{
  GHashTable *cache = g_private_get (&worker_cache);

  if (cache == NULL)
    {
      cache = g_hash_table_new (NULL, NULL);
      g_private_set (&worker_cache, cache);
    }
  return cache;
}

/* The CPU work: the number of primes below @bound, by trial division. */
static guint32
count_primes (guint32 bound)
{
  guint32 count = 0;

  for (guint32 n = 2; n < bound; n++)
    {
      gboolean prime = TRUE;

      for (guint32 d = 2; d * d <= n && prime; d++)
        prime = n % d != 0;
      count += prime;
    }
  return count;
}

/* "primes.count" (u bound) -> u. Its parameters are not a string or a
 * tuple that starts with one: it has no ordering key, so either worker
 * takes it and two run at once. Called on a worker's thread. */
static GVariant *
module_request (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  Module *module = user_data;

  if (g_str_equal (name, "primes.count") && g_variant_is_of_type (parameters, G_VARIANT_TYPE_UINT32))
    {
      guint32 bound = g_variant_get_uint32 (parameters);
      GHashTable *cache = get_worker_cache ();
      gpointer cached;

      if (!g_hash_table_lookup_extended (cache, GUINT_TO_POINTER (bound), NULL, &cached))
        {
          cached = GUINT_TO_POINTER (count_primes (bound));
          g_hash_table_insert (cache, GUINT_TO_POINTER (bound), cached);
        }
      return g_variant_new_uint32 (GPOINTER_TO_UINT (cached));
    }

  if (g_str_equal (name, "ledger.read") && g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(s)")))
    {
      const char *account;
      GString *ledger;
      GVariant *reply;

      g_variant_get (parameters, "(&s)", &account);
      g_mutex_lock (&module->mutex);
      ledger = g_hash_table_lookup (module->ledgers, account);
      reply = g_variant_new_string (ledger ? ledger->str : "");
      g_mutex_unlock (&module->mutex);
      return reply;
    }

  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
               "“%s” is not a request of the pool module", name);
  return NULL;
}

/* "ledger.add" (ss: account, entry): its key is the account, so one
 * account's entries arrive in order. "cache.clear" is broadcast: each
 * worker drops its own cache. Called on a worker's thread. */
static gboolean
module_command (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  Module *module = user_data;

  if (g_str_equal (name, "ledger.add") && g_variant_is_of_type (parameters, G_VARIANT_TYPE ("(ss)")))
    {
      const char *account, *entry;
      GString *ledger;

      g_variant_get (parameters, "(&s&s)", &account, &entry);
      /* Some work outside the lock, so that the workers overlap. */
      count_primes (2000);
      g_mutex_lock (&module->mutex);
      ledger = g_hash_table_lookup (module->ledgers, account);
      if (ledger == NULL)
        g_hash_table_insert (module->ledgers, g_strdup (account), (ledger = g_string_new (NULL)));
      g_string_append (ledger, entry);
      g_mutex_unlock (&module->mutex);
      return TRUE;
    }

  if (g_str_equal (name, "cache.clear"))
    {
      g_hash_table_remove_all (get_worker_cache ());
      g_mutex_lock (&module->mutex);
      g_hash_table_add (module->cleared, g_thread_self ());
      module->n_cleared++;
      g_mutex_unlock (&module->mutex);
      return TRUE;
    }

  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
               "“%s” is not a command of the pool module", name);
  return FALSE;
}

static void
string_free (gpointer data)
{
  g_string_free (data, TRUE);
}

typedef struct
{
  guint32 replies[N_REQUESTS];
  guint   n_replies;
} Replies;

typedef struct
{
  Replies *replies;
  guint    index;
} Request;

/* Runs on the main thread (the requester's context), once per request. */
static void
on_count (GVariant     *reply,
          const GError *error,
          gpointer      user_data)
{
  Request *request = user_data;

  if (reply == NULL)
    g_error ("primes.count failed: %s", error->message);
  request->replies->replies[request->index] = g_variant_get_uint32 (reply);
  request->replies->n_replies++;
}

static void
on_stopped (GObject      *source,
            GAsyncResult *result,
            gpointer      user_data)
{
  gboolean *stopped = user_data;

  *stopped = spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, NULL);
}

static void
expect_ledger (SparkDispatcher *dispatcher,
               const char      *account,
               const char      *expected)
{
  g_autoptr(GVariant) reply = NULL;
  g_autoptr(GError) error = NULL;

  /* Keyed too: it is handled after the account's entries. */
  reply = spark_dispatcher_request_sync (dispatcher, "ledger.read", g_variant_new ("(s)", account),
                                         G_VARIANT_TYPE_STRING, NULL, &error);
  if (reply == NULL)
    g_error ("ledger.read failed: %s", error->message);
  if (!g_str_equal (g_variant_get_string (reply, NULL), expected))
    g_error ("the entries of %s came out of order: %s", account, g_variant_get_string (reply, NULL));
  g_print ("client: %s's entries, in order: %s\n", account, g_variant_get_string (reply, NULL));
}

int
main (void)
{
  static const char *const accounts[] = { "alice", "bob" };
  static const char *const entries[][6] = {
    { "a", "b", "c", "d", "e", "f" },
    { "u", "v", "w", "x", "y", "z" },
  };
  Module module = { 0 };
  Replies replies = { { 0 }, 0 };
  Request requests[N_REQUESTS];
  g_autoptr(SparkHandler) plain = NULL;
  g_autoptr(SparkHandler) handler = NULL;
  g_autoptr(SparkModuleServer) refused = NULL;
  g_autoptr(SparkModuleServer) server = NULL;
  g_autoptr(SparkDispatcher) dispatcher = NULL;
  g_autoptr(GError) error = NULL;
  gboolean stopped = FALSE;

  /* The library's messages are UTF-8: g_print converts them to the
   * locale's character set. */
  setlocale (LC_ALL, "");

  g_mutex_init (&module.mutex);
  module.ledgers = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, string_free);
  module.cleared = g_hash_table_new (NULL, NULL);

  /* A handler that declares nothing is called by one thread at a time:
   * a pool refuses it, and the refused start does not count as a start. */
  plain = spark_func_handler_new (module_request, module_command, &module, NULL);
  refused = spark_module_server_new (plain);
  spark_module_server_set_name (refused, "plain");
  spark_module_server_set_workers (refused, N_WORKERS);
  if (spark_module_server_start_in_thread (refused, &error) ||
      !g_error_matches (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED))
    g_error ("a pool started a handler that is not concurrent");
  g_print ("pool: refused: %s\n", error->message);
  g_clear_error (&error);

  /* The same functions, declared concurrent: they lock what they share. */
  handler = spark_func_handler_new_full (SPARK_HANDLER_FLAGS_CONCURRENT,
                                         module_request, module_command, &module, NULL);
  server = spark_module_server_new (handler);
  spark_module_server_set_name (server, "primes");
  spark_module_server_set_workers (server, N_WORKERS);
  spark_module_server_set_ordering (server, SPARK_ORDERING_KEY);
  if (!spark_module_server_start_in_thread (server, &error))
    g_error ("Could not start the pool: %s", error->message);
  dispatcher = spark_module_server_create_dispatcher (server);
  g_print ("pool: %u workers, ordered by key\n", spark_module_server_get_workers (server));

  /* CPU work, all in flight at once: the two workers share it. The
   * replies come back on this thread's context, in any order. */
  for (guint i = 0; i < N_REQUESTS; i++)
    {
      requests[i] = (Request) { &replies, i };
      spark_dispatcher_request_full (dispatcher, "primes.count", g_variant_new_uint32 (20000 + 10000 * i),
                                     G_VARIANT_TYPE_UINT32, NULL, on_count, &requests[i], NULL);
    }

  /* Entries of two accounts, interleaved: keyed by account, each
   * account's are handled in the order they were sent. */
  for (guint e = 0; e < G_N_ELEMENTS (entries[0]); e++)
    for (guint a = 0; a < G_N_ELEMENTS (accounts); a++)
      if (!spark_dispatcher_send_command (dispatcher, "ledger.add",
                                          g_variant_new ("(ss)", accounts[a], entries[a][e]), NULL, &error))
        g_error ("ledger.add failed: %s", error->message);

  while (replies.n_replies < N_REQUESTS)
    g_main_context_iteration (NULL, TRUE);
  for (guint i = 0; i < N_REQUESTS; i++)
    g_print ("client: primes below %u: %u\n", 20000 + 10000 * i, replies.replies[i]);

  expect_ledger (dispatcher, "alice", "abcdef");
  expect_ledger (dispatcher, "bob", "uvwxyz");

  /* Every worker drops its cache, on its own thread. */
  if (!spark_dispatcher_broadcast_command (dispatcher, "cache.clear", NULL, &error))
    g_error ("cache.clear failed: %s", error->message);

  /* DRAIN: everything queued is handled, the broadcast's copies too, and
   * the callback runs once every worker's thread has ended. */
  spark_module_server_shutdown_async (server, SPARK_SHUTDOWN_MODE_DRAIN, NULL, on_stopped, &stopped);
  while (!stopped)
    g_main_context_iteration (NULL, TRUE);

  if (g_hash_table_size (module.cleared) != N_WORKERS || module.n_cleared != N_WORKERS)
    g_error ("cache.clear was handled %u times by %u workers, not once by each of %u",
             module.n_cleared, g_hash_table_size (module.cleared), N_WORKERS);
  g_print ("client: cache.clear reached each of the %u workers once\n", g_hash_table_size (module.cleared));
  g_print ("done: the pool has drained and stopped\n");

  g_hash_table_unref (module.ledgers);
  g_hash_table_unref (module.cleared);
  g_mutex_clear (&module.mutex);

  return 0;
}
