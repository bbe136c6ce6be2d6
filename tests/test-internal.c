/* test-internal.c: the private units, through the internal static library
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * These tests link libspark-channel-internal.a, not the public library, to
 * check decisions that the public API does not show: when a waiting
 * thread spins, how a request is claimed, what the pools keep, and that a
 * dispatcher works through any transport. They assert the decision,
 * never a time.
 */

#include "config.h"

#include <string.h>

#include "spark-dispatcher-private.h"
#include "spark-error.h"
#include "spark-mailbox-private.h"
#include "spark-pool-private.h"
#include "spark-reply-port-private.h"
#include "spark-request-private.h"
#include "spark-spin-private.h"
#include "spark-wake-source-private.h"

typedef struct
{
  gint calls;       /* how often the ready function was asked */
  gint sleep_usec;  /* sleeps this long on the first call */
} Probe;

static gboolean
probe_never_ready (gconstpointer data)
{
  Probe *probe = (Probe *) data;

  if (probe->calls++ == 0 && probe->sleep_usec > 0)
    g_usleep ((gulong) probe->sleep_usec);
  return FALSE;
}

/* A spin that missed is not repeated until its event came: the event is
 * not imminent (a reply that takes seconds, while the thread wakes for
 * other sources), and every further wakeup would spin for nothing. */
static void
test_spin_after_miss (void)
{
  SparkSpin spin = { 0 };
  Probe probe = { 0, 0 };

  if (spark_spin_limit () == 0)
    {
      g_test_skip ("SPARK_SPIN=0: nothing spins");
      return;
    }

  g_assert_true (spark_spin_will_spin (&spin));
  g_assert_false (spark_spin_until (&spin, probe_never_ready, &probe));
  g_assert_cmpint (probe.calls, >, 1);

  /* Missed: no polling now, one look only. */
  g_assert_false (spark_spin_will_spin (&spin));
  probe.calls = 0;
  g_assert_false (spark_spin_until (&spin, probe_never_ready, &probe));
  g_assert_cmpint (probe.calls, ==, 1);

  /* The event came: it spins again (unless this loaded machine preempted
   * the first spin, which skips a wait: see /spin/preempted). */
  spark_spin_note_event (&spin);
  g_assert_cmpint (spark_spin_will_spin (&spin), ==, spin.skip == 0);
}

/* A spin that finds it was not running (here: the first look took 2 ms)
 * gives up, and the next wait does not spin, twice as many the next time:
 * on an oversubscribed CPU the thread it waits for needs that CPU. */
static void
test_spin_preempted (void)
{
  SparkSpin spin = { 0 };
  Probe probe = { 0, 2000 };

  if (spark_spin_limit () == 0)
    {
      g_test_skip ("SPARK_SPIN=0: nothing spins");
      return;
    }

  g_assert_false (spark_spin_until (&spin, probe_never_ready, &probe));
  g_assert_cmpuint (spin.skip, ==, 1);
  spark_spin_note_event (&spin);
  g_assert_false (spark_spin_will_spin (&spin));

  /* The skipped wait looks once, without polling. */
  probe = (Probe) { 0, 0 };
  g_assert_false (spark_spin_until (&spin, probe_never_ready, &probe));
  g_assert_cmpint (probe.calls, ==, 1);
  spark_spin_note_event (&spin);
  g_assert_true (spark_spin_will_spin (&spin));

  /* Preempted again: twice as many waits skipped. */
  probe = (Probe) { 0, 2000 };
  g_assert_false (spark_spin_until (&spin, probe_never_ready, &probe));
  g_assert_cmpuint (spin.skip, ==, 2);
}

/* A context never spins for an outcome that only it can produce: a
 * request to a server that runs on the requester's own context. It does
 * for a server on another context. */
static void
test_port_same_context (void)
{
  GMainContext *context = g_main_context_new ();
  GMainContext *other = g_main_context_new ();
  SparkReplyPort *port;

  g_main_context_push_thread_default (context);

  port = spark_reply_port_hold (context);
  g_assert_false (spark_reply_port_expects_soon (port, context));
  g_assert_false (spark_wake_source_will_spin ((SparkWakeSource *) port));
  g_assert_true (spark_reply_port_context_is_expecting (context));
  spark_reply_port_release (port, FALSE);
  g_assert_false (spark_reply_port_context_is_expecting (context));

  port = spark_reply_port_hold (other);
  g_assert_true (spark_reply_port_expects_soon (port, other));
  g_assert_cmpint (spark_wake_source_will_spin ((SparkWakeSource *) port), ==, spark_spin_limit () > 0);
  spark_reply_port_release (port, TRUE);
  g_assert_false (spark_wake_source_will_spin ((SparkWakeSource *) port));

  g_main_context_pop_thread_default (context);
  g_main_context_unref (other);
  g_main_context_unref (context);
}

/* A main loop that wakes for other sources (a UI tick) while an outcome
 * is outstanding spins once, then not again until the outcome came. */
static void
test_port_not_imminent (void)
{
  GMainContext *context = g_main_context_new ();
  GMainContext *other = g_main_context_new ();
  SparkReplyPort *port;

  if (spark_spin_limit () == 0)
    {
      g_test_skip ("SPARK_SPIN=0: nothing spins");
      return;
    }

  g_main_context_push_thread_default (context);
  port = spark_reply_port_hold (other);
  g_assert_true (spark_wake_source_will_spin ((SparkWakeSource *) port));

  /* One iteration: prepare spins, and misses. */
  g_main_context_iteration (context, FALSE);
  g_assert_false (spark_wake_source_will_spin ((SparkWakeSource *) port));
  g_main_context_iteration (context, FALSE);
  g_assert_false (spark_wake_source_will_spin ((SparkWakeSource *) port));

  spark_reply_port_release (port, TRUE);
  g_main_context_pop_thread_default (context);
  g_main_context_unref (other);
  g_main_context_unref (context);
}

/* Requests ------------------------------------------------------------------ */

#define CLAIM_THREADS 4
#define CLAIM_ROUNDS  2000

typedef struct
{
  SparkRequest *req;
  gint          go;        /* atomic: the start line */
  gint          winners;   /* atomic: completions that decided */
} ClaimRace;

static gpointer
claim_thread (gpointer data)
{
  ClaimRace *race = data;

  while (!g_atomic_int_get (&race->go))
    spark_cpu_relax ();
  if (spark_request_complete (race->req, g_variant_ref_sink (g_variant_new_int32 (1)), NULL))
    g_atomic_int_inc (&race->winners);
  return NULL;
}

/* Threads racing to complete one request: exactly one decides, the
 * requester sees that one outcome, and the losers' values are dropped
 * (valgrind would see a leak). */
static void
test_request_claim_race (void)
{
  for (guint round = 0; round < CLAIM_ROUNDS; round++)
    {
      ClaimRace race = { 0, };
      GThread *threads[CLAIM_THREADS];
      GError *error = NULL;
      GVariant *reply;

      race.req = spark_request_new_sync ("race", NULL, G_VARIANT_TYPE_INT32, NULL, -1);
      for (guint i = 0; i < CLAIM_THREADS; i++)
        threads[i] = g_thread_new ("claim", claim_thread, &race);
      g_atomic_int_set (&race.go, TRUE);

      /* The completion side, as request_sync() waits for it. */
      reply = spark_request_wait_sync (race.req, &error);
      g_assert_no_error (error);
      g_assert_cmpint (g_variant_get_int32 (reply), ==, 1);
      g_variant_unref (reply);

      for (guint i = 0; i < CLAIM_THREADS; i++)
        g_thread_join (threads[i]);
      g_assert_cmpint (race.winners, ==, 1);
      g_assert_true (spark_request_is_claimed (race.req));
      spark_request_unref (race.req);   /* the sender's side */
    }
}

/* Cancelled before it was sent: refused, completed once with CANCELLED. */
static void
test_request_refused_cancelled (void)
{
  GCancellable *cancellable = g_cancellable_new ();
  SparkRequest *req = spark_request_new_sync ("late", NULL, NULL, cancellable, -1);
  GError *error = NULL;

  g_assert_false (spark_request_refuse_if_cancelled (req));
  g_cancellable_cancel (cancellable);
  g_assert_true (spark_request_refuse_if_cancelled (req));
  g_assert_false (spark_request_complete (req, g_variant_ref_sink (g_variant_new_int32 (2)), NULL));
  spark_request_unref (req);   /* the sender's side */

  g_assert_null (spark_request_wait_sync (req, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&error);
  g_object_unref (cancellable);
}

/* Pools --------------------------------------------------------------------- */

/* The thread pool gives back the last block given and keeps at most its
 * limit. */
static void
test_pool_thread (void)
{
  gpointer blocks[80];
  gpointer spare;
  guint kept = 0;

  g_assert_true (spark_pools_enabled ());

  /* Empty it of what earlier tests' requests left. */
  while ((spare = spark_thread_pool_take ()) != NULL)
    g_free (spare);
  for (guint i = 0; i < G_N_ELEMENTS (blocks); i++)
    {
      blocks[i] = g_malloc (64);
      if (spark_thread_pool_give (blocks[i]))
        kept++;
      else
        g_free (blocks[i]);
    }
  g_assert_cmpuint (kept, ==, 64);
  g_assert_true (spark_thread_pool_take () == blocks[63]);
  g_free (blocks[63]);
  for (guint i = 0; i < 63; i++)
    g_free (spark_thread_pool_take ());
  g_assert_null (spark_thread_pool_take ());
}

static gpointer
take_returned (gpointer data)
{
  SparkBlockReturn *ret = data;
  guint taken = 0;
  gpointer block;

  while ((block = spark_block_return_take (ret, 1)) != NULL)
    {
      g_free (block);
      taken++;
    }
  return GUINT_TO_POINTER (taken);
}

/* Blocks the consumer collects reach another thread only once handed
 * back, each once; what nobody took is freed by clear. */
static void
test_pool_block_return (void)
{
  SparkBlockReturn ret = { 0, };
  GThread *thread;

  for (guint i = 0; i < 10; i++)
    g_assert_true (spark_block_return_collect (&ret, 1, g_malloc (40)));

  /* Collected, not handed back: nothing to take yet. */
  thread = g_thread_new ("producer", take_returned, &ret);
  g_assert_cmpuint (GPOINTER_TO_UINT (g_thread_join (thread)), ==, 0);

  spark_block_return_hand_back (&ret);
  thread = g_thread_new ("producer", take_returned, &ret);
  g_assert_cmpuint (GPOINTER_TO_UINT (g_thread_join (thread)), ==, 10);

  g_assert_true (spark_block_return_collect (&ret, 0, g_malloc (24)));
  spark_block_return_clear (&ret);
  g_assert_null (ret.freed[0]);
  g_assert_null (ret.returned[0]);
}

/* Transports ---------------------------------------------------------------- */

/* A transport that is not a mailbox: it answers every request at once
 * with its name's length (or refuses them), and records commands and
 * shutdowns. The dispatcher in front of it keeps its guarantees. */
typedef struct
{
  SparkTransport  transport;
  gint            ref_count;
  gboolean        refuse;
  guint           n_requests;
  GPtrArray      *commands;
  gboolean        shut_down;
  SparkPriority   last_priority;
} TestTransport;

static void
test_transport_ref (SparkTransport *transport)
{
  ((TestTransport *) transport)->ref_count++;
}

static void
test_transport_unref (SparkTransport *transport)
{
  ((TestTransport *) transport)->ref_count--;
}

static GMainContext *
test_transport_get_context (SparkTransport *transport)
{
  return NULL;
}

static gboolean
test_transport_post_request (SparkTransport *transport,
                             SparkRequest   *req,
                             SparkPriority   priority,
                             gboolean        blocking,
                             GError        **error)
{
  TestTransport *self = (TestTransport *) transport;

  self->last_priority = priority;

  if (self->refuse)
    {
      g_set_error_literal (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED, "refused");
      return FALSE;
    }

  self->n_requests++;
  spark_request_return_reply (req, g_variant_new_int32 ((gint32) strlen (spark_request_get_name (req))), NULL);
  spark_request_unref (req);
  return TRUE;
}

static gboolean
test_transport_post_command (SparkTransport *transport,
                             const char     *name,
                             GVariant       *parameters,
                             SparkPriority   priority,
                             SparkPostMode   mode,
                             GCancellable   *cancellable,
                             GTask          *task,
                             GError        **error)
{
  TestTransport *self = (TestTransport *) transport;

  self->last_priority = priority;

  g_ptr_array_add (self->commands, g_strdup (name));
  g_clear_pointer (&parameters, g_variant_unref);
  if (mode == SPARK_POST_ASYNC)
    g_task_return_boolean (task, TRUE);
  return TRUE;
}

static gboolean
test_transport_send_shutdown (SparkTransport *transport,
                              GCancellable   *token,
                              GError        **error)
{
  ((TestTransport *) transport)->shut_down = TRUE;
  return TRUE;
}

static const SparkTransportVTable test_transport_vtable = {
  .ref = test_transport_ref,
  .unref = test_transport_unref,
  .get_context = test_transport_get_context,
  .post_request = test_transport_post_request,
  .post_command = test_transport_post_command,
  .send_shutdown = test_transport_send_shutdown,
};

static void
on_transport_reply (GVariant     *reply,
                    const GError *error,
                    gpointer      user_data)
{
  gint *got = user_data;

  g_assert_no_error (error);
  g_assert_cmpint (*got, ==, 0);   /* exactly once */
  *got = g_variant_get_int32 (reply);
}

static void
test_transport_custom (void)
{
  TestTransport transport = { { &test_transport_vtable }, 0, FALSE, 0, g_ptr_array_new_with_free_func (g_free), FALSE, SPARK_PRIORITY_LOW };
  SparkDispatcher *dispatcher = spark_dispatcher_new (&transport.transport);
  GError *error = NULL;
  GVariant *reply;
  gint got = 0;

  g_assert_cmpint (transport.ref_count, ==, 1);

  reply = spark_dispatcher_request_sync (dispatcher, "four", NULL, G_VARIANT_TYPE_INT32, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpint (g_variant_get_int32 (reply), ==, 4);
  g_variant_unref (reply);

  /* The outcome still comes through the caller's context, never inside
   * the call. */
  spark_dispatcher_request_full (dispatcher, "seven", NULL, NULL, NULL, on_transport_reply, &got, NULL);
  g_assert_cmpint (got, ==, 0);
  while (got == 0)
    g_main_context_iteration (NULL, TRUE);
  g_assert_cmpint (got, ==, 5);

  /* The reply type is checked whatever the transport. */
  reply = spark_dispatcher_request_sync (dispatcher, "x", NULL, G_VARIANT_TYPE_STRING, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH);
  g_assert_null (reply);
  g_clear_error (&error);

  /* A refusal completes the request once, with the transport's error. */
  transport.refuse = TRUE;
  reply = spark_dispatcher_request_sync (dispatcher, "no", NULL, NULL, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_assert_null (reply);
  g_clear_error (&error);
  g_assert_cmpuint (transport.n_requests, ==, 3);

  g_assert_true (spark_dispatcher_send_command (dispatcher, "cmd", g_variant_new_int32 (1), NULL, &error));
  g_assert_no_error (error);
  g_assert_true (spark_dispatcher_try_send_command (dispatcher, "try", NULL, &error));
  g_assert_cmpuint (transport.commands->len, ==, 2);
  g_assert_cmpint (transport.last_priority, ==, SPARK_PRIORITY_DEFAULT);
  g_assert_cmpstr (g_ptr_array_index (transport.commands, 1), ==, "try");

  /* The priority goes with every message, the derived dispatcher's its own. */
  g_assert_cmpint (transport.last_priority, ==, SPARK_PRIORITY_DEFAULT);
  {
    SparkDispatcher *urgent = spark_dispatcher_with_priority (dispatcher, SPARK_PRIORITY_HIGH);

    g_assert_cmpint (transport.ref_count, ==, 2);
    g_assert_true (spark_dispatcher_try_send_command (urgent, "urgent", NULL, &error));
    g_assert_cmpint (transport.last_priority, ==, SPARK_PRIORITY_HIGH);
    g_object_unref (urgent);
    g_assert_cmpint (transport.ref_count, ==, 1);
  }
  spark_dispatcher_set_priority (dispatcher, SPARK_PRIORITY_LOW);
  g_assert_null (spark_dispatcher_request_sync (dispatcher, "no", NULL, NULL, NULL, &error));
  g_clear_error (&error);
  g_assert_cmpint (transport.last_priority, ==, SPARK_PRIORITY_LOW);

  g_assert_true (spark_dispatcher_send_shutdown (dispatcher, NULL, &error));
  g_assert_true (transport.shut_down);

  g_object_unref (dispatcher);
  g_assert_cmpint (transport.ref_count, ==, 0);
  g_ptr_array_unref (transport.commands);
}

/* Mailbox lanes --------------------------------------------------------------- */

static gboolean
never_dispatched (gpointer data)
{
  g_assert_not_reached ();
  return G_SOURCE_REMOVE;
}

/* A mailbox open on a context of its own, with nobody serving it: the
 * test takes from it as a server would. */
static SparkMailbox *
lane_mailbox_new (GMainContext **context,
                  GSource      **source)
{
  SparkMailbox *mailbox = spark_mailbox_new ();
  GError *error = NULL;

  *context = g_main_context_new ();
  *source = spark_wake_source_new (sizeof (SparkWakeSource), never_dispatched, NULL, "test-lanes");
  spark_wake_source_attach ((SparkWakeSource *) *source, *context);
  g_assert_true (spark_mailbox_open (mailbox, 1, source, context, NULL, 0, SPARK_OVERFLOW_WAIT,
                                     SPARK_ORDERING_NONE, NULL, &error));
  g_assert_no_error (error);
  return mailbox;
}

static void
lane_mailbox_free (SparkMailbox *mailbox,
                   GMainContext *context,
                   GSource      *source)
{
  spark_mailbox_close (mailbox, TRUE);
  g_clear_object (&((SparkMailbox *) mailbox)->token);
  spark_mailbox_unref (mailbox);
  g_source_destroy (source);
  g_source_unref (source);
  g_main_context_unref (context);
}

static void
post (SparkMailbox *mailbox,
      SparkLane     lane,
      const char   *name)
{
  GError *error = NULL;

  g_assert_true (spark_mailbox_post_command (mailbox, spark_message_new_command (NULL, name, NULL),
                                             lane, SPARK_POST_TRY, NULL, NULL, &error));
  g_assert_no_error (error);
}

/* Names of a taken batch, in order, "|"-separated; frees the batch and
 * releases what counted. */
static char *
take_names (SparkMailbox *mailbox,
            guint         max)
{
  GString *names = g_string_new (NULL);
  SparkMessage *batch = spark_mailbox_take (mailbox, NULL, max, NULL);

  while (batch != NULL)
    {
      SparkMessage *msg = batch;

      batch = msg->next;
      g_string_append_printf (names, "%s%s", names->len > 0 ? "|" : "",
                              msg->kind == SPARK_MESSAGE_SHUTDOWN ? "SHUTDOWN" : spark_message_get_name (msg));
      if (msg->kind != SPARK_MESSAGE_SHUTDOWN)
        spark_mailbox_release_one (mailbox);
      spark_message_free (msg);
    }

  return g_string_free (names, FALSE);
}

/* Lanes are taken in order (control, high, default, low), FIFO within
 * each; the shutdown marker takes no room and is not pending work. */
static void
test_lanes_order (void)
{
  GMainContext *context;
  GSource *source;
  SparkMailbox *mailbox = lane_mailbox_new (&context, &source);
  GError *error = NULL;
  char *names;

  post (mailbox, SPARK_LANE_LOW, "low1");
  post (mailbox, SPARK_LANE_DEFAULT, "def1");
  post (mailbox, SPARK_LANE_HIGH, "high1");
  post (mailbox, SPARK_LANE_LOW, "low2");
  post (mailbox, SPARK_LANE_DEFAULT, "def2");
  post (mailbox, SPARK_LANE_HIGH, "high2");
  g_assert_true (spark_mailbox_send_shutdown (mailbox, NULL, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (spark_mailbox_get_pending (mailbox), ==, 6);

  names = take_names (mailbox, 0);
  g_assert_cmpstr (names, ==, "SHUTDOWN|high1|high2|def1|def2|low1|low2");
  g_free (names);
  g_assert_cmpuint (spark_mailbox_get_pending (mailbox), ==, 0);

  names = take_names (mailbox, 0);
  g_assert_cmpstr (names, ==, "");
  g_free (names);

  lane_mailbox_free (mailbox, context, source);
}

/* A bounded take: at most @max, lanes in order; a high message behind a
 * long default backlog comes first. */
static void
test_lanes_take_max (void)
{
  GMainContext *context;
  GSource *source;
  SparkMailbox *mailbox = lane_mailbox_new (&context, &source);
  char *names;

  for (guint i = 0; i < 10000; i++)
    post (mailbox, SPARK_LANE_DEFAULT, "backlog");
  post (mailbox, SPARK_LANE_LOW, "low");
  post (mailbox, SPARK_LANE_HIGH, "urgent");

  names = take_names (mailbox, 1);
  g_assert_cmpstr (names, ==, "urgent");
  g_free (names);
  names = take_names (mailbox, 2);
  g_assert_cmpstr (names, ==, "backlog|backlog");
  g_free (names);
  g_assert_cmpuint (spark_mailbox_get_pending (mailbox), ==, 9999);

  g_free (take_names (mailbox, 9997));
  names = take_names (mailbox, 5);
  g_assert_cmpstr (names, ==, "backlog|low");
  g_free (names);
  g_assert_cmpuint (spark_mailbox_get_pending (mailbox), ==, 0);

  lane_mailbox_free (mailbox, context, source);
}

#define CONSUMERS       3
#define CONSUMED_TOTAL  30000

typedef struct
{
  SparkMailbox *mailbox;
  gint          consumed;             /* atomic: over all consumers */
  guint8        seen[CONSUMED_TOTAL]; /* by message number: each written by its consumer */
  gint          out_of_order;         /* atomic: a consumer saw a number below its last */
} Consumers;

static gpointer
consumer_thread (gpointer data)
{
  Consumers *c = data;
  gint last = -1;

  while (g_atomic_int_get (&c->consumed) < CONSUMED_TOTAL)
    {
      SparkMessage *batch = spark_mailbox_take (c->mailbox, NULL, 7, NULL);

      while (batch != NULL)
        {
          SparkMessage *msg = batch;
          gint n = g_variant_get_int32 (msg->parameters);

          batch = msg->next;
          if (n < last)
            g_atomic_int_inc (&c->out_of_order);
          last = n;
          c->seen[n]++;
          spark_mailbox_release_one (c->mailbox);
          spark_message_free (msg);
          g_atomic_int_inc (&c->consumed);
        }
    }

  return NULL;
}

/* Several consumers on one mailbox, taking bounded batches while a
 * producer sends: every message is taken exactly once, and each consumer
 * sees the producer's order. */
static void
test_lanes_consumers (void)
{
  GMainContext *context;
  GSource *source;
  Consumers *c = g_new0 (Consumers, 1);
  GThread *threads[CONSUMERS];

  c->mailbox = lane_mailbox_new (&context, &source);
  for (guint i = 0; i < CONSUMERS; i++)
    threads[i] = g_thread_new ("consumer", consumer_thread, c);

  for (gint n = 0; n < CONSUMED_TOTAL; n++)
    {
      GVariant *value = g_variant_ref_sink (g_variant_new_int32 (n));
      GError *error = NULL;

      g_assert_true (spark_mailbox_post_command (c->mailbox, spark_message_new_command (NULL, "n", value),
                                                 SPARK_LANE_DEFAULT, SPARK_POST_TRY, NULL, NULL, &error));
    }

  for (guint i = 0; i < CONSUMERS; i++)
    g_thread_join (threads[i]);

  g_assert_cmpint (c->consumed, ==, CONSUMED_TOTAL);
  g_assert_cmpint (c->out_of_order, ==, 0);
  for (gint n = 0; n < CONSUMED_TOTAL; n++)
    g_assert_cmpuint (c->seen[n], ==, 1);
  g_assert_cmpuint (spark_mailbox_get_pending (c->mailbox), ==, 0);

  lane_mailbox_free (c->mailbox, context, source);
  g_free (c);
}

int
main (int argc, char *argv[])
{
  /* The pools are off under valgrind (G_SLICE=always-malloc) unless asked
   * for: these tests are about what they keep, so they ask. */
  g_setenv ("SPARK_POOLS", "1", TRUE);
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/spark/internal/spin/after-miss", test_spin_after_miss);
  g_test_add_func ("/spark/internal/spin/preempted", test_spin_preempted);
  g_test_add_func ("/spark/internal/reply-port/same-context", test_port_same_context);
  g_test_add_func ("/spark/internal/reply-port/not-imminent", test_port_not_imminent);
  g_test_add_func ("/spark/internal/request/claim-race", test_request_claim_race);
  g_test_add_func ("/spark/internal/request/refused-cancelled", test_request_refused_cancelled);
  g_test_add_func ("/spark/internal/pool/thread", test_pool_thread);
  g_test_add_func ("/spark/internal/pool/block-return", test_pool_block_return);
  g_test_add_func ("/spark/internal/transport/custom", test_transport_custom);
  g_test_add_func ("/spark/internal/lanes/order", test_lanes_order);
  g_test_add_func ("/spark/internal/lanes/take-max", test_lanes_take_max);
  g_test_add_func ("/spark/internal/lanes/consumers", test_lanes_consumers);

  return g_test_run ();
}
