/* stress-channel.c: a seeded, model-based stress test
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Each round builds a random configuration (capacity, where the server
 * runs, sync or invocation handler and how many invocations it may hold,
 * timeouts, shutdown mode), then lets
 * client threads (request_sync, send_command, try_send_command) and the
 * main loop (request_async, request_full) hammer one server with random
 * cancellations, while dispatchers are dropped mid-flight and the server is
 * shut down under load. After every round it checks the model:
 *
 * - every request completed exactly once (per request id);
 * - no reply went to the wrong request (a reply encodes its request id);
 * - commands were handled at most once and in per-sender order, and with a
 *   DRAIN shutdown every command whose send succeeded was handled;
 * - nothing was handled after the server stopped;
 * - server, handler and dispatchers are finalized (weak pointers).
 *
 * SPARK_STRESS_SEED=N reproduces a run; SPARK_STRESS_ROUNDS=N makes it
 * longer (the suite runs a short one).
 */

#include <string.h>

#include "spark-test-util.h"

#define MAX_SENDERS   8
#define MAX_REQUESTS  (1 << 16)

typedef enum {
  OUTCOME_NONE,
  OUTCOME_REPLY,
  OUTCOME_CANCELLED,
  OUTCOME_CLOSED,
  OUTCOME_TIMED_OUT,
  OUTCOME_NO_REPLY,
  OUTCOME_HANDLER_ERROR,
  OUTCOME_DROPPED,        /* a full mailbox's overflow policy dropped it */
  OUTCOME_FULL,           /* overflow FAIL: refused at once */
  N_OUTCOMES
} Outcome;

typedef enum {
  SHUTDOWN_DRAIN,
  SHUTDOWN_ABORT,
  SHUTDOWN_MESSAGE,
} ShutdownKind;

typedef struct
{
  /* configuration */
  guint        capacity;
  gboolean     in_thread;
  gboolean     use_invocation;
  guint        max_invocations;
  gboolean     routed;         /* the handler behind a SparkRouter */
  gboolean     route_policy;   /* routed: the policy is the commands' route's, the server's is WAIT */
  guint        workers;        /* > 1: a pool, ordered by key (each sender's commands are one key) */
  SparkOverflowPolicy overflow;  /* with a capacity */
  guint        dropped;        /* main context: messages-dropped counts, summed */
  gint         timeout_msec;
  ShutdownKind shutdown;
  guint        n_threads;
  guint        ops_per_thread;
  guint        n_async;

  /* the model */
  gint         next_request_id;                 /* atomic */
  gint         completions[MAX_REQUESTS];       /* atomic, per request id */
  gint         outcomes[N_OUTCOMES];            /* atomic */
  gint         commands_sent[MAX_SENDERS];      /* atomic: sends that succeeded */
  gint         commands_handled[MAX_SENDERS];   /* the handler, one sender's at a time */
  gint         last_seq[MAX_SENDERS];           /* the handler, one sender's at a time */
  gint         stopped;                         /* atomic: shutdown has completed */
  gint         violations;                      /* atomic */
  gint         handled_after_stop;              /* atomic */
  gint         async_done;                      /* atomic */
  gint         threads_done;                    /* atomic */
  gint         progress;                        /* atomic: client operations done */
  gint         shutdown_progress;               /* immutable: shut down after this many */
  gint64       total_ops;

  SparkModuleServer *server;
  GAsyncQueue       *completer_queue;           /* invocations to complete later */
} Round;

static guint64 total_outcomes[N_OUTCOMES];
static guint64 total_ops;
static guint64 total_requests;
static guint64 total_commands;

/* The handler ------------------------------------------------------------- */

#define STRESS_TYPE_HANDLER (stress_handler_get_type ())
G_DECLARE_FINAL_TYPE (StressHandler, stress_handler, STRESS, HANDLER, GObject)

struct _StressHandler
{
  GObject parent_instance;
  Round  *round;
};

static void stress_handler_iface_init (SparkHandlerInterface *iface);

G_DEFINE_FINAL_TYPE_WITH_CODE (StressHandler, stress_handler, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, stress_handler_iface_init))

static void
note_violation (Round      *round,
                const char *what)
{
  g_printerr ("# violation: %s\n", what);
  g_atomic_int_inc (&round->violations);
}

/* A request's reply encodes its id, so a reply delivered to the wrong
 * request is caught. Ids divisible by 7 fail in the handler. */
static GVariant *
reply_for (gint32    id,
           GError  **error)
{
  if (id % 7 == 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "handler error for %d", id);
      return NULL;
    }
  return g_variant_new_int32 (id * 2 + 1);
}

static GVariant *
stress_handler_handle_request (SparkHandler  *handler,
                               const char    *name,
                               GVariant      *parameters,
                               GCancellable  *cancellable,
                               GError       **error)
{
  StressHandler *self = STRESS_HANDLER (handler);

  gint32 id = g_variant_get_int32 (parameters);

  if (g_atomic_int_get (&self->round->stopped))
    g_atomic_int_inc (&self->round->handled_after_stop);

  /* With a timeout, some handlers block until their request ends: the
   * timeout (or a cancel, or an abort) must end them. */
  if (self->round->timeout_msec > 0 && id % 13 == 0)
    {
      while (!g_cancellable_is_cancelled (cancellable))
        g_thread_yield ();
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "gave up");
      return NULL;
    }

  return reply_for (id, error);
}

static gboolean
stress_handler_handle_command (SparkHandler  *handler,
                               const char    *name,
                               GVariant      *parameters,
                               GCancellable  *cancellable,
                               GError       **error)
{
  StressHandler *self = STRESS_HANDLER (handler);
  Round *round = self->round;
  gint32 sender, seq;

  if (g_atomic_int_get (&round->stopped))
    g_atomic_int_inc (&round->handled_after_stop);

  g_variant_get (parameters, "(&sii)", NULL, &sender, &seq);
  g_assert_cmpint (sender, >=, 0);
  g_assert_cmpint (sender, <, MAX_SENDERS);

  if (seq <= round->last_seq[sender])
    note_violation (round, "a command was handled twice or out of order");
  round->last_seq[sender] = seq;
  round->commands_handled[sender]++;

  return TRUE;
}

static gboolean
policy_drops (SparkOverflowPolicy policy)
{
  return policy == SPARK_OVERFLOW_DROP_NEWEST || policy == SPARK_OVERFLOW_DROP_OLDEST ||
         policy == SPARK_OVERFLOW_COALESCE || policy == SPARK_OVERFLOW_COALESCE_KEY;
}

static void
on_messages_dropped (SparkModuleServer *server,
                     guint              count,
                     gpointer           user_data)
{
  Round *round = user_data;

  round->dropped += count;
}

static gboolean
complete_from_idle (gpointer data)
{
  SparkInvocation *invocation = data;
  g_autoptr(GError) error = NULL;
  GVariant *reply = reply_for (g_variant_get_int32 (spark_invocation_get_parameters (invocation)), &error);

  if (reply != NULL)
    spark_invocation_return_value (invocation, reply);
  else
    spark_invocation_return_gerror (invocation, error);

  return G_SOURCE_REMOVE;
}

static void
stress_handler_handle_invocation (SparkHandler    *handler,
                                  SparkInvocation *invocation)
{
  StressHandler *self = STRESS_HANDLER (handler);
  gint32 id = g_variant_get_int32 (spark_invocation_get_parameters (invocation));

  if (g_atomic_int_get (&self->round->stopped))
    g_atomic_int_inc (&self->round->handled_after_stop);

  switch (id % 4)
    {
    case 0:   /* at once */
      complete_from_idle (invocation);
      break;

    case 1:   /* later, on the server's context */
      g_idle_add_full (G_PRIORITY_DEFAULT, complete_from_idle,
                       g_object_ref (invocation), g_object_unref);
      break;

    case 2:   /* later, from another thread */
      g_async_queue_push (self->round->completer_queue, g_object_ref (invocation));
      break;

    case 3:   /* dropped: NO_REPLY (or the handler error for multiples of 7) */
    default:
      if (id % 7 == 0)
        complete_from_idle (invocation);
      break;
    }
}

/* Its state is atomic, or one sender's at a time (a pool orders by key). */
static SparkHandlerFlags
stress_get_flags (SparkHandler *handler)
{
  return SPARK_HANDLER_FLAGS_CONCURRENT;
}

static void
stress_handler_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_request = stress_handler_handle_request;
  iface->handle_command = stress_handler_handle_command;
  iface->get_flags = stress_get_flags;
}

static void
stress_handler_class_init (StressHandlerClass *klass)
{
}

static void
stress_handler_init (StressHandler *self)
{
}

static SparkHandler *
stress_handler_new (Round *round)
{
  StressHandler *self = g_object_new (STRESS_TYPE_HANDLER, NULL);

  self->round = round;

  return SPARK_HANDLER (self);
}

/* The invocation style needs a type that overrides handle_invocation: it
 * wraps the plain handler and forwards to it. */
#define STRESS_TYPE_INVOCATION_HANDLER (stress_invocation_handler_get_type ())
G_DECLARE_FINAL_TYPE (StressInvocationHandler, stress_invocation_handler, STRESS, INVOCATION_HANDLER, GObject)

struct _StressInvocationHandler
{
  GObject parent_instance;
  StressHandler *inner;
};

static void stress_invocation_handler_iface_init (SparkHandlerInterface *iface);

G_DEFINE_FINAL_TYPE_WITH_CODE (StressInvocationHandler, stress_invocation_handler, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, stress_invocation_handler_iface_init))

static void
stress_invocation_handler_invocation (SparkHandler    *handler,
                                      SparkInvocation *invocation)
{
  stress_handler_handle_invocation (SPARK_HANDLER (STRESS_INVOCATION_HANDLER (handler)->inner), invocation);
}

static gboolean
stress_invocation_handler_command (SparkHandler  *handler,
                                   const char    *name,
                                   GVariant      *parameters,
                                   GCancellable  *cancellable,
                                   GError       **error)
{
  return stress_handler_handle_command (SPARK_HANDLER (STRESS_INVOCATION_HANDLER (handler)->inner),
                                        name, parameters, cancellable, error);
}

static void
stress_invocation_handler_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_invocation = stress_invocation_handler_invocation;
  iface->handle_command = stress_invocation_handler_command;
  iface->get_flags = stress_get_flags;
}

static void
stress_invocation_handler_dispose (GObject *object)
{
  g_clear_object (&STRESS_INVOCATION_HANDLER (object)->inner);
  G_OBJECT_CLASS (stress_invocation_handler_parent_class)->dispose (object);
}

static void
stress_invocation_handler_class_init (StressInvocationHandlerClass *klass)
{
  G_OBJECT_CLASS (klass)->dispose = stress_invocation_handler_dispose;
}

static void
stress_invocation_handler_init (StressInvocationHandler *self)
{
}

/* Outcomes ---------------------------------------------------------------- */

static void
record_outcome (Round        *round,
                gint32        id,
                GVariant     *reply,
                const GError *error)
{
  Outcome outcome;

  if (g_atomic_int_add (&round->completions[id], 1) != 0)
    note_violation (round, "a request completed more than once");

  if (reply != NULL)
    {
      if (!g_variant_is_of_type (reply, G_VARIANT_TYPE_INT32) ||
          g_variant_get_int32 (reply) != id * 2 + 1)
        note_violation (round, "a reply went to the wrong request");
      if (id % 7 == 0)
        note_violation (round, "a request that must fail got a reply");
      outcome = OUTCOME_REPLY;
    }
  else if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    outcome = OUTCOME_CANCELLED;
  else if (g_error_matches (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED))
    outcome = OUTCOME_CLOSED;
  else if (g_error_matches (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT))
    outcome = OUTCOME_TIMED_OUT;
  else if (g_error_matches (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY))
    outcome = OUTCOME_NO_REPLY;
  else if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_FAILED))
    outcome = OUTCOME_HANDLER_ERROR;
  else if (g_error_matches (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_DROPPED) &&
           (round->overflow == SPARK_OVERFLOW_DROP_NEWEST || round->overflow == SPARK_OVERFLOW_DROP_OLDEST))
    outcome = OUTCOME_DROPPED;
  else if (g_error_matches (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL) &&
           round->overflow == SPARK_OVERFLOW_FAIL)
    outcome = OUTCOME_FULL;
  else
    {
      g_printerr ("# unexpected error: %s\n", error ? error->message : "(none)");
      note_violation (round, "a request failed with an unexpected error");
      outcome = OUTCOME_NONE;
    }

  g_atomic_int_inc (&round->outcomes[outcome]);
}

static gint32
new_request_id (Round *round)
{
  gint32 id = g_atomic_int_add (&round->next_request_id, 1);

  g_assert_cmpint (id, <, MAX_REQUESTS);
  return id;
}

/* Client threads ----------------------------------------------------------- */

typedef struct
{
  Round           *round;
  SparkDispatcher *dispatcher;   /* dropped by the thread at its end */
  guint            sender;
  guint32          seed;
} ClientThread;

static gpointer
client_thread (gpointer data)
{
  ClientThread *client = data;
  Round *round = client->round;
  GRand *rand = g_rand_new_with_seed (client->seed);
  gint32 seq = 0;

  for (guint op = 0; op < round->ops_per_thread; op++)
    {
      guint choice = g_rand_int_range (rand, 0, 10);
      g_autoptr(GError) error = NULL;

      /* The main thread waits for this much progress to shut down. */
      if (g_atomic_int_add (&round->progress, 1) + 1 == round->shutdown_progress)
        g_main_context_wakeup (NULL);

      if (choice < 4)
        {
          gint32 id = new_request_id (round);
          g_autoptr(GCancellable) cancellable = NULL;
          g_autoptr(GVariant) reply = NULL;

          if (g_rand_int_range (rand, 0, 8) == 0)
            {
              cancellable = g_cancellable_new ();
              g_cancellable_cancel (cancellable);   /* cancelled before the call */
            }

          reply = spark_dispatcher_request_sync (client->dispatcher, "req", g_variant_new_int32 (id),
                                                 G_VARIANT_TYPE_INT32, cancellable, &error);
          record_outcome (round, id, reply, error);
        }
      else
        {
          g_autofree char *key = g_strdup_printf ("sender%u", client->sender);
          GVariant *params = g_variant_new ("(sii)", key, (gint32) client->sender, seq + 1);
          gboolean ok;

          if (choice < 8)
            ok = spark_dispatcher_send_command (client->dispatcher, "cmd", params, NULL, &error);
          else
            ok = spark_dispatcher_try_send_command (client->dispatcher, "cmd", params, &error);

          if (ok)
            {
              seq++;
              g_atomic_int_inc (&round->commands_sent[client->sender]);
            }
          else if (!g_error_matches (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED) &&
                   !g_error_matches (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL))
            {
              g_printerr ("# unexpected send error: %s\n", error->message);
              note_violation (round, "a command failed with an unexpected error");
            }
          else if (g_error_matches (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL) &&
                   round->capacity == 0)
            note_violation (round, "an unbounded mailbox said FULL");
        }
    }

  g_clear_object (&client->dispatcher);
  g_rand_free (rand);
  g_atomic_int_inc (&round->threads_done);
  /* The main thread may be asleep in its main context, waiting for us. */
  g_main_context_wakeup (NULL);

  return client;   /* freed by the joiner */
}

static gpointer
completer_thread (gpointer data)
{
  Round *round = data;

  for (;;)
    {
      SparkInvocation *invocation = g_async_queue_pop (round->completer_queue);

      if ((gpointer) invocation == (gpointer) round)
        break;   /* the end-of-round marker */

      complete_from_idle (invocation);
      g_object_unref (invocation);
    }

  return NULL;
}

/* Main-loop client ---------------------------------------------------------- */

typedef struct
{
  Round  *round;
  gint32  id;
} AsyncCall;

static void
on_async_reply (GObject      *source,
                GAsyncResult *result,
                gpointer      user_data)
{
  AsyncCall *call = user_data;
  g_autoptr(GError) error = NULL;
  g_autoptr(GVariant) reply = spark_dispatcher_request_finish (SPARK_DISPATCHER (source), result, &error);

  record_outcome (call->round, call->id, reply, error);
  g_atomic_int_inc (&call->round->async_done);
  g_free (call);
}

static void
on_full_reply (GVariant     *reply,
               const GError *error,
               gpointer      user_data)
{
  AsyncCall *call = user_data;

  record_outcome (call->round, call->id, reply, error);
  g_atomic_int_inc (&call->round->async_done);
}

static gboolean
cancel_later (gpointer data)
{
  g_cancellable_cancel (data);
  return G_SOURCE_REMOVE;
}

static void
on_shutdown_done (GObject      *source,
                  GAsyncResult *result,
                  gpointer      user_data)
{
  Round *round = user_data;
  g_autoptr(GError) error = NULL;

  g_assert_true (spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, &error));
  g_atomic_int_set (&round->stopped, TRUE);
}

static void
shut_down (Round           *round,
           SparkDispatcher *dispatcher,
           GCancellable    *token)
{
  g_autoptr(GError) error = NULL;

  switch (round->shutdown)
    {
    case SHUTDOWN_DRAIN:
      spark_module_server_shutdown_async (round->server, SPARK_SHUTDOWN_MODE_DRAIN, NULL,
                                          on_shutdown_done, round);
      break;

    case SHUTDOWN_ABORT:
      spark_module_server_shutdown_async (round->server, SPARK_SHUTDOWN_MODE_ABORT, NULL,
                                          on_shutdown_done, round);
      break;

    case SHUTDOWN_MESSAGE:
    default:
      g_assert_true (spark_dispatcher_send_shutdown (dispatcher, token, &error));
      g_assert_no_error (error);
      spark_module_server_shutdown_async (round->server, SPARK_SHUTDOWN_MODE_DRAIN, NULL,
                                          on_shutdown_done, round);
      break;
    }
}

/* One round ------------------------------------------------------------------ */

static void
run_round (guint32 seed)
{
  Round *round = g_new0 (Round, 1);
  GRand *rand = g_rand_new_with_seed (seed);
  g_autoptr(SparkHandler) handler = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(GCancellable) token = g_cancellable_new ();
  GThread *threads[MAX_SENDERS] = { NULL };
  GThread *completer;
  SparkDispatcher *main_dispatcher;
  gpointer weak_server, weak_handler, weak_dispatcher;
  guint sent_async = 0;
  gint total_sent = 0;
  gint total_handled = 0;

  round->capacity = g_rand_boolean (rand) ? 0 : (guint) g_rand_int_range (rand, 1, 9);
  round->in_thread = g_rand_int_range (rand, 0, 4) != 0;
  round->use_invocation = g_rand_boolean (rand);
  round->max_invocations = round->use_invocation && g_rand_boolean (rand) ? (guint) g_rand_int_range (rand, 2, 6) : 1;
  round->routed = g_rand_int_range (rand, 0, 3) == 0;
  round->workers = round->in_thread && g_rand_int_range (rand, 0, 3) == 0 ? (guint) g_rand_int_range (rand, 2, 5) : 1;
  round->overflow = round->capacity > 0 && g_rand_boolean (rand)
                    ? (SparkOverflowPolicy) g_rand_int_range (rand, SPARK_OVERFLOW_FAIL, SPARK_OVERFLOW_COALESCE_KEY + 1)
                    : SPARK_OVERFLOW_WAIT;
  round->route_policy = round->routed && round->overflow != SPARK_OVERFLOW_WAIT && g_rand_boolean (rand);
  round->timeout_msec = g_rand_int_range (rand, 0, 3) == 0 ? g_rand_int_range (rand, 1, 20) : -1;
  round->shutdown = (ShutdownKind) g_rand_int_range (rand, 0, 3);
  /* A pool's rounds have the most senders: its per-key order is checked
   * under 8 producer threads. */
  round->n_threads = round->workers > 1 ? MAX_SENDERS : (guint) g_rand_int_range (rand, 1, 5);
  round->ops_per_thread = (guint) g_rand_int_range (rand, 50, 400);
  round->n_async = (guint) g_rand_int_range (rand, 50, 600);
  round->completer_queue = g_async_queue_new ();
  round->shutdown_progress = g_rand_int_range (rand, 1, (gint) (round->n_threads * round->ops_per_thread) + 1);

  g_test_message ("round seed=%u capacity=%u overflow=%d thread=%d workers=%u invocation=%d "
                  "max-invocations=%u routed=%d route-policy=%d timeout=%d shutdown=%d threads=%u",
                  seed, round->capacity, round->overflow, round->in_thread, round->workers,
                  round->use_invocation, round->max_invocations, round->routed, round->route_policy,
                  round->timeout_msec,
                  round->shutdown, round->n_threads);

  if (round->use_invocation)
    {
      StressInvocationHandler *outer = g_object_new (STRESS_TYPE_INVOCATION_HANDLER, NULL);

      outer->inner = STRESS_HANDLER (stress_handler_new (round));
      handler = SPARK_HANDLER (outer);
    }
  else
    handler = stress_handler_new (round);

  /* The same model behind a router: requests by exact name with their
   * types declared (which the model always meets), commands by prefix. */
  if (round->routed)
    {
      SparkRouter *router = spark_router_new ();

      g_assert_true (spark_router_add_handler (router, "req", handler, G_VARIANT_TYPE_INT32,
                                               G_VARIANT_TYPE_INT32, &error));
      g_assert_true (spark_router_add_handler (router, "c*", handler, NULL, NULL, &error));
      g_assert_no_error (error);
      spark_router_set_concurrent (router, TRUE);
      if (round->route_policy)
        g_assert_true (spark_router_set_overflow (router, "c*", round->overflow, NULL));
      g_object_unref (handler);
      handler = SPARK_HANDLER (router);
    }

  round->server = spark_module_server_new (handler);
  spark_module_server_set_name (round->server, "stress");
  spark_module_server_set_capacity (round->server, round->capacity);
  spark_module_server_set_overflow (round->server, round->route_policy ? SPARK_OVERFLOW_WAIT : round->overflow);
  g_signal_connect (round->server, "messages-dropped", G_CALLBACK (on_messages_dropped), round);
  spark_module_server_set_max_invocations (round->server, round->max_invocations);
  /* A pool: each sender's commands are one key, so they stay in order. */
  spark_module_server_set_workers (round->server, round->workers);
  spark_module_server_set_ordering (round->server, SPARK_ORDERING_KEY);

  if (round->in_thread)
    g_assert_true (spark_module_server_start_in_thread (round->server, &error));
  else
    g_assert_true (spark_module_server_start (round->server, NULL, &error));
  g_assert_no_error (error);

  completer = g_thread_new ("stress-completer", completer_thread, round);

  for (guint i = 0; i < round->n_threads; i++)
    {
      ClientThread *client = g_new0 (ClientThread, 1);

      client->round = round;
      client->dispatcher = spark_module_server_create_dispatcher (round->server);
      spark_dispatcher_set_timeout (client->dispatcher, round->timeout_msec);
      /* One priority per sender: FIFO holds within it. */
      spark_dispatcher_set_priority (client->dispatcher, (SparkPriority) g_rand_int_range (rand, 0, 3));
      client->sender = i;
      client->seed = g_rand_int (rand);
      threads[i] = g_thread_new ("stress-client", client_thread, client);
    }

  main_dispatcher = spark_module_server_create_dispatcher (round->server);
  spark_dispatcher_set_timeout (main_dispatcher, round->timeout_msec);

  /* The main loop sends asynchronous requests, cancels some of them now or
   * later, drops its dispatcher mid-flight, and shuts the server down once
   * the client threads have done a random part of their work. */
  for (sent_async = 0; sent_async < round->n_async; sent_async++)
    {
      AsyncCall *call = g_new0 (AsyncCall, 1);
      g_autoptr(GCancellable) cancellable = NULL;
      guint r = (guint) g_rand_int_range (rand, 0, 10);

      call->round = round;
      call->id = new_request_id (round);

      if (r == 0)
        {
          cancellable = g_cancellable_new ();
          g_cancellable_cancel (cancellable);
        }
      else if (r <= 2)
        {
          cancellable = g_cancellable_new ();
          g_idle_add_full (G_PRIORITY_DEFAULT, cancel_later, g_object_ref (cancellable), g_object_unref);
        }

      if (g_rand_boolean (rand))
        spark_dispatcher_request_async (main_dispatcher, "req", g_variant_new_int32 (call->id),
                                        G_VARIANT_TYPE_INT32, cancellable, on_async_reply, call);
      else
        spark_dispatcher_request_full (main_dispatcher, "req", g_variant_new_int32 (call->id),
                                       G_VARIANT_TYPE_INT32, cancellable, on_full_reply, call, g_free);

      if (sent_async == round->n_async / 2)
        {
          /* Dropped with requests in flight: they still complete. */
          weak_dispatcher = main_dispatcher;
          g_object_add_weak_pointer (G_OBJECT (main_dispatcher), &weak_dispatcher);
          g_object_unref (main_dispatcher);
          main_dispatcher = spark_module_server_create_dispatcher (round->server);
          spark_dispatcher_set_timeout (main_dispatcher, round->timeout_msec);

          spark_test_wait_count (NULL, &round->progress, round->shutdown_progress);
          shut_down (round, main_dispatcher, token);
        }

      /* Now and then, everything this dispatcher has queued is cancelled:
       * those requests still complete once, with CANCELLED. */
      if (g_rand_int_range (rand, 0, 97) == 0)
        spark_dispatcher_cancel_all (main_dispatcher);

      /* Let the main context breathe now and then. */
      if (g_rand_int_range (rand, 0, 16) == 0)
        g_main_context_iteration (NULL, FALSE);
    }

  g_object_unref (main_dispatcher);

  /* Everything ends: client threads, async outcomes, the shutdown. */
  spark_test_wait_count (NULL, &round->threads_done, (gint) round->n_threads);
  for (guint i = 0; i < round->n_threads; i++)
    g_free (g_thread_join (threads[i]));
  spark_test_wait_count (NULL, &round->async_done, (gint) round->n_async);
  spark_test_wait_flag (NULL, &round->stopped);

  g_async_queue_push (round->completer_queue, round);
  g_thread_join (completer);

  /* The model. */
  g_assert_cmpint (g_atomic_int_get (&round->violations), ==, 0);
  g_assert_cmpint (g_atomic_int_get (&round->handled_after_stop), ==, 0);

  for (gint id = 0; id < round->next_request_id; id++)
    g_assert_cmpint (g_atomic_int_get (&round->completions[id]), ==, 1);

  for (guint i = 0; i < round->n_threads; i++)
    {
      g_assert_cmpint (round->commands_handled[i], <=, g_atomic_int_get (&round->commands_sent[i]));
      if (round->shutdown != SHUTDOWN_ABORT && !policy_drops (round->overflow))
        g_assert_cmpint (round->commands_handled[i], ==, g_atomic_int_get (&round->commands_sent[i]));
      total_sent += g_atomic_int_get (&round->commands_sent[i]);
      total_handled += round->commands_handled[i];
    }

  /* Every dropped command was reported: handled and dropped add up (the
   * last report comes a little after the server stopped). */
  if (round->shutdown != SHUTDOWN_ABORT && policy_drops (round->overflow))
    {
      gint64 deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;

      while (total_handled + (gint) round->dropped < total_sent && g_get_monotonic_time () < deadline)
        g_main_context_iteration (NULL, FALSE);
      g_assert_cmpint (total_handled + (gint) round->dropped, ==, total_sent);
    }

  if (round->shutdown == SHUTDOWN_MESSAGE)
    g_assert_true (g_cancellable_is_cancelled (token));

  if (!round->use_invocation)
    g_assert_cmpint (round->outcomes[OUTCOME_NO_REPLY], ==, 0);
  if (round->timeout_msec <= 0)
    g_assert_cmpint (round->outcomes[OUTCOME_TIMED_OUT], ==, 0);

  /* Everything is finalized. */
  weak_server = round->server;
  weak_handler = handler;
  g_object_add_weak_pointer (G_OBJECT (round->server), &weak_server);
  g_object_add_weak_pointer (G_OBJECT (handler), &weak_handler);
  g_clear_object (&round->server);
  g_clear_object (&handler);
  while (weak_server != NULL && g_main_context_iteration (NULL, FALSE))
    ;
  g_assert_null (weak_server);
  g_assert_null (weak_handler);
  g_assert_null (weak_dispatcher);

  for (guint i = 0; i < N_OUTCOMES; i++)
    total_outcomes[i] += (guint64) round->outcomes[i];
  total_requests += (guint64) round->next_request_id;
  total_commands += (guint64) total_sent;
  total_ops += (guint64) round->next_request_id + (guint64) total_sent;

  g_async_queue_unref (round->completer_queue);
  g_rand_free (rand);
  g_free (round);
}

static void
test_stress_rounds (void)
{
  const char *seed_env = g_getenv ("SPARK_STRESS_SEED");
  const char *rounds_env = g_getenv ("SPARK_STRESS_ROUNDS");
  guint32 seed = seed_env ? (guint32) g_ascii_strtoull (seed_env, NULL, 10) : (guint32) g_random_int ();
  guint rounds = rounds_env ? (guint) g_ascii_strtoull (rounds_env, NULL, 10) : 12;
  GRand *rand = g_rand_new_with_seed (seed);
  gint64 start = g_get_monotonic_time ();

  /* Printed first so that any failure can be reproduced. */
  g_test_message ("SPARK_STRESS_SEED=%u SPARK_STRESS_ROUNDS=%u", seed, rounds);
  g_printerr ("# SPARK_STRESS_SEED=%u SPARK_STRESS_ROUNDS=%u\n", seed, rounds);

  for (guint i = 0; i < rounds; i++)
    run_round (g_rand_int (rand));

  g_printerr ("# %u rounds, %" G_GUINT64_FORMAT " operations (%" G_GUINT64_FORMAT " requests, %"
              G_GUINT64_FORMAT " commands) in %.1f s\n",
              rounds, total_ops, total_requests, total_commands,
              (g_get_monotonic_time () - start) / 1e6);
  g_printerr ("# outcomes: reply %" G_GUINT64_FORMAT ", cancelled %" G_GUINT64_FORMAT
              ", closed %" G_GUINT64_FORMAT ", timed out %" G_GUINT64_FORMAT
              ", no reply %" G_GUINT64_FORMAT ", handler error %" G_GUINT64_FORMAT
              ", dropped %" G_GUINT64_FORMAT ", full %" G_GUINT64_FORMAT "\n",
              total_outcomes[OUTCOME_REPLY], total_outcomes[OUTCOME_CANCELLED],
              total_outcomes[OUTCOME_CLOSED], total_outcomes[OUTCOME_TIMED_OUT],
              total_outcomes[OUTCOME_NO_REPLY], total_outcomes[OUTCOME_HANDLER_ERROR],
              total_outcomes[OUTCOME_DROPPED], total_outcomes[OUTCOME_FULL]);

  g_rand_free (rand);
}

int
main (int   argc,
      char *argv[])
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/spark/stress/rounds", test_stress_rounds);

  return g_test_run ();
}
