/* test-dbus.c: module servers and dispatchers across D-Bus
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Real parts: a private message bus (GTestDBus, a dbus-daemon of its own),
 * two connections to it (the exporting side's and the client's, as two
 * processes would have), peer-to-peer connections over a socket pair, and
 * real second processes: gdbus and busctl, a Python client, a GJS server.
 *
 * The exporting side runs on a thread of its own (its context handles the
 * method calls) and the server on another (start_in_thread), so the test's
 * thread can block in sync calls as a client process would.
 */

#include <string.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "spark-test-util.h"

#define OBJECT_PATH "/org/gnome/SparkChannel/Test"

/* A handler --------------------------------------------------------------- */

/* Requests: "echo" answers (b has-parameters, v parameters-or-unit); "fail"
 * (s domain, i code, s message) fails with that error; "hold" keeps the
 * invocation (counts its cancellable's cancel); "batch" holds until
 * batch_size are held or batch_total have come, then answers them all;
 * "drop" drops the invocation. Commands: "block" waits at the gate,
 * "count" counts. */
#define TEST_TYPE_HANDLER (test_handler_get_type ())
G_DECLARE_FINAL_TYPE (TestHandler, test_handler, TEST, HANDLER, GObject)

struct _TestHandler
{
  GObject        parent_instance;

  GMutex         mutex;
  GCond          cond;
  GPtrArray     *held;          /* mutex: SparkInvocation */
  guint          received;      /* mutex: "batch" requests */
  guint          max_held;      /* mutex */
  guint          batch_size;    /* set before use */
  guint          batch_total;   /* set before use */
  gboolean       blocking;      /* mutex: a "block" command is waiting */
  gboolean       blocking_again; /* mutex: a "block-again" command is waiting */
  gint           cancelled;     /* atomic: held invocations whose cancellable fired */
  gint           commands;      /* atomic: "count" commands */
  SparkTestGate  gate;
  SparkTestGate  gate_again;    /* for "block-again": a gate stays open */
  SparkDispatcher *self_remote; /* set before use: "self-sync" calls its own module through it */
};

static void test_handler_iface_init (SparkHandlerInterface *iface);

G_DEFINE_FINAL_TYPE_WITH_CODE (TestHandler, test_handler, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, test_handler_iface_init))

static void
on_held_cancelled (GCancellable *cancellable,
                   gpointer      user_data)
{
  TestHandler *self = user_data;

  (void) cancellable;
  g_mutex_lock (&self->mutex);
  g_atomic_int_inc (&self->cancelled);
  g_cond_broadcast (&self->cond);
  g_mutex_unlock (&self->mutex);
}

static void
test_handler_handle_invocation (SparkHandler    *handler,
                                SparkInvocation *invocation)
{
  TestHandler *self = TEST_HANDLER (handler);
  const char *name = spark_invocation_get_name (invocation);
  GVariant *parameters = spark_invocation_get_parameters (invocation);

  if (g_str_equal (name, "echo"))
    spark_invocation_return_value (invocation,
                                   g_variant_new ("(bv)", parameters != NULL,
                                                  parameters != NULL ? parameters : g_variant_new ("()")));
  else if (g_str_equal (name, "fail"))
    {
      const char *domain, *message;
      gint code;

      g_variant_get (parameters, "(&si&s)", &domain, &code, &message);
      spark_invocation_return_error_literal (invocation, g_quark_from_string (domain), code, message);
    }
  else if (g_str_equal (name, "hold"))
    {
      g_mutex_lock (&self->mutex);
      g_ptr_array_add (self->held, g_object_ref (invocation));
      self->max_held = MAX (self->max_held, self->held->len);
      g_cond_broadcast (&self->cond);
      g_mutex_unlock (&self->mutex);
      /* Outside the lock: an already-cancelled one runs the handler now. */
      g_cancellable_connect (spark_invocation_get_cancellable (invocation),
                             G_CALLBACK (on_held_cancelled), self, NULL);
    }
  else if (g_str_equal (name, "batch"))
    {
      GPtrArray *ready = NULL;

      g_mutex_lock (&self->mutex);
      g_ptr_array_add (self->held, g_object_ref (invocation));
      self->received++;
      self->max_held = MAX (self->max_held, self->held->len);
      if (self->held->len >= self->batch_size || self->received == self->batch_total)
        {
          ready = self->held;
          self->held = g_ptr_array_new_with_free_func (g_object_unref);
        }
      g_mutex_unlock (&self->mutex);

      for (guint i = 0; ready != NULL && i < ready->len; i++)
        spark_invocation_return_value (g_ptr_array_index (ready, i), g_variant_new_uint32 (i));
      g_clear_pointer (&ready, g_ptr_array_unref);
    }
  else if (g_str_equal (name, "drop"))
    ;   /* the server's reference goes: NO_REPLY */
  else if (g_str_equal (name, "self-sync"))
    {
      /* A blocking call to this very module, from its server's thread. */
      GError *error = NULL;
      GVariant *reply = spark_dispatcher_request_sync (self->self_remote, "echo", NULL, NULL, NULL, &error);

      if (reply != NULL)
        spark_invocation_return_value (invocation, reply);
      else
        spark_invocation_take_error (invocation, error);
    }
  else
    spark_invocation_take_error (invocation, g_error_new (SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                                                          "No request “%s” here", name));
}

static gboolean
test_handler_handle_command (SparkHandler  *handler,
                             const char    *name,
                             GVariant      *parameters,
                             GCancellable  *cancellable,
                             GError       **error)
{
  TestHandler *self = TEST_HANDLER (handler);

  (void) parameters;
  (void) error;

  if (g_str_equal (name, "block"))
    {
      g_mutex_lock (&self->mutex);
      self->blocking = TRUE;
      g_cond_broadcast (&self->cond);
      g_mutex_unlock (&self->mutex);
      spark_test_gate_wait (&self->gate, cancellable);
    }
  else if (g_str_equal (name, "block-again"))
    {
      g_mutex_lock (&self->mutex);
      self->blocking_again = TRUE;
      g_cond_broadcast (&self->cond);
      g_mutex_unlock (&self->mutex);
      spark_test_gate_wait (&self->gate_again, cancellable);
    }
  else
    g_atomic_int_inc (&self->commands);
  return TRUE;
}

static void
test_handler_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_invocation = test_handler_handle_invocation;
  iface->handle_command = test_handler_handle_command;
}

static void
test_handler_finalize (GObject *object)
{
  TestHandler *self = TEST_HANDLER (object);

  g_ptr_array_unref (self->held);
  g_clear_object (&self->self_remote);
  g_mutex_clear (&self->mutex);
  g_cond_clear (&self->cond);
  spark_test_gate_clear (&self->gate);
  spark_test_gate_clear (&self->gate_again);
  G_OBJECT_CLASS (test_handler_parent_class)->finalize (object);
}

static void
test_handler_class_init (TestHandlerClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = test_handler_finalize;
}

static void
test_handler_init (TestHandler *self)
{
  g_mutex_init (&self->mutex);
  g_cond_init (&self->cond);
  self->held = g_ptr_array_new_with_free_func (g_object_unref);
  spark_test_gate_init (&self->gate);
  spark_test_gate_init (&self->gate_again);
}

/* Waits until the handler holds @n invocations. */
static void
test_handler_wait_held (TestHandler *self,
                        guint        n)
{
  g_mutex_lock (&self->mutex);
  while (self->held->len < n)
    g_cond_wait (&self->cond, &self->mutex);
  g_mutex_unlock (&self->mutex);
}

static void
test_handler_wait_cancelled (TestHandler *self,
                             gint         n)
{
  g_mutex_lock (&self->mutex);
  while (g_atomic_int_get (&self->cancelled) < n)
    g_cond_wait (&self->cond, &self->mutex);
  g_mutex_unlock (&self->mutex);
}

/* Answers every held invocation with "released". */
static void
test_handler_release (TestHandler *self)
{
  GPtrArray *held;

  g_mutex_lock (&self->mutex);
  held = self->held;
  self->held = g_ptr_array_new_with_free_func (g_object_unref);
  g_mutex_unlock (&self->mutex);

  for (guint i = 0; i < held->len; i++)
    spark_invocation_return_value (g_ptr_array_index (held, i), g_variant_new_string ("released"));
  g_ptr_array_unref (held);
}

/* The fixture -------------------------------------------------------------- */

typedef enum
{
  LINK_BUS,    /* two connections to the private bus */
  LINK_PEER,   /* a peer-to-peer connection over a socket pair */
} LinkKind;

typedef struct
{
  LinkKind           link;
  guint              capacity;
} Options;

typedef struct
{
  const Options     *options;
  TestHandler       *handler;
  SparkModuleServer *server;
  GDBusConnection   *server_conn;   /* the exporting side's */
  GDBusConnection   *client_conn;
  const char        *bus_name;      /* server_conn's unique name; NULL peer to peer */
  SparkDispatcher   *remote;

  GThread           *thread;        /* where method calls are handled */
  GMainContext      *context;
  GMainLoop         *loop;
} Fixture;

static GTestDBus *test_bus;

typedef struct
{
  Fixture  *fixture;
  gboolean  exported;
  gint      done;
} ExportWork;

static gboolean
export_in_thread (gpointer data)
{
  ExportWork *work = data;
  GError *error = NULL;

  work->exported = spark_module_server_export (work->fixture->server, work->fixture->server_conn,
                                               OBJECT_PATH, &error);
  g_assert_no_error (error);
  g_atomic_int_set (&work->done, TRUE);
  return G_SOURCE_REMOVE;
}

static gpointer
export_thread_main (gpointer data)
{
  Fixture *fixture = data;

  g_main_context_push_thread_default (fixture->context);
  g_main_loop_run (fixture->loop);
  /* What the last calls left to do. */
  while (g_main_context_pending (fixture->context))
    g_main_context_iteration (fixture->context, FALSE);
  g_main_context_pop_thread_default (fixture->context);
  return NULL;
}

typedef struct
{
  GDBusConnection *connection;
  gint             done;
} PeerWork;

static void
on_peer_server_ready (GObject      *source,
                      GAsyncResult *result,
                      gpointer      user_data)
{
  PeerWork *work = user_data;
  GError *error = NULL;

  (void) source;
  work->connection = g_dbus_connection_new_finish (result, &error);
  g_assert_no_error (error);
  g_atomic_int_set (&work->done, TRUE);
}

/* Two ends of a peer-to-peer D-Bus connection over a socket pair. */
static void
make_peer_pair (GDBusConnection **server_end,
                GDBusConnection **client_end)
{
  g_autofree char *guid = g_dbus_generate_guid ();
  g_autoptr(GSocket) s0 = NULL;
  g_autoptr(GSocket) s1 = NULL;
  g_autoptr(GSocketConnection) c0 = NULL;
  g_autoptr(GSocketConnection) c1 = NULL;
  PeerWork work = { NULL, 0 };
  GError *error = NULL;
  int fds[2];

  g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), ==, 0);
  s0 = g_socket_new_from_fd (fds[0], &error);
  g_assert_no_error (error);
  s1 = g_socket_new_from_fd (fds[1], &error);
  g_assert_no_error (error);
  c0 = g_socket_connection_factory_create_connection (s0);
  c1 = g_socket_connection_factory_create_connection (s1);

  g_dbus_connection_new (G_IO_STREAM (c0), guid,
                         G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_SERVER |
                         G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_ALLOW_ANONYMOUS,
                         NULL, NULL, on_peer_server_ready, &work);
  *client_end = g_dbus_connection_new_sync (G_IO_STREAM (c1), NULL,
                                            G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT,
                                            NULL, NULL, &error);
  g_assert_no_error (error);
  spark_test_wait_flag (NULL, &work.done);
  *server_end = work.connection;
}

static void
fixture_setup (Fixture       *fixture,
               gconstpointer  data)
{
  const Options *options = data;
  ExportWork work = { fixture, FALSE, 0 };
  GError *error = NULL;

  fixture->options = options;
  fixture->handler = g_object_new (TEST_TYPE_HANDLER, NULL);
  fixture->server = spark_module_server_new (SPARK_HANDLER (fixture->handler));
  if (options->capacity != 0)
    g_object_set (fixture->server, "capacity", options->capacity, NULL);
  /* Room for every invocation the tests hold at once. */
  g_object_set (fixture->server, "max-invocations", 4 * SPARK_DBUS_MAX_IN_FLIGHT, NULL);
  g_assert_true (spark_module_server_start_in_thread (fixture->server, &error));
  g_assert_no_error (error);

  if (options->link == LINK_BUS)
    {
      const char *address = g_test_dbus_get_bus_address (test_bus);

      fixture->server_conn = g_dbus_connection_new_for_address_sync (address,
                                                                     G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT |
                                                                     G_DBUS_CONNECTION_FLAGS_MESSAGE_BUS_CONNECTION,
                                                                     NULL, NULL, &error);
      g_assert_no_error (error);
      fixture->client_conn = g_dbus_connection_new_for_address_sync (address,
                                                                     G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT |
                                                                     G_DBUS_CONNECTION_FLAGS_MESSAGE_BUS_CONNECTION,
                                                                     NULL, NULL, &error);
      g_assert_no_error (error);
      fixture->bus_name = g_dbus_connection_get_unique_name (fixture->server_conn);
    }
  else
    make_peer_pair (&fixture->server_conn, &fixture->client_conn);

  fixture->context = g_main_context_new ();
  fixture->loop = g_main_loop_new (fixture->context, FALSE);
  fixture->thread = g_thread_new ("export", export_thread_main, fixture);
  g_main_context_invoke (fixture->context, export_in_thread, &work);
  while (!g_atomic_int_get (&work.done))
    g_thread_yield ();
  g_assert_true (work.exported);

  fixture->remote = spark_dispatcher_new_for_dbus (fixture->client_conn, fixture->bus_name, OBJECT_PATH);
}

static gboolean
quit_loop (gpointer data)
{
  g_main_loop_quit (data);
  return G_SOURCE_REMOVE;
}

static void
fixture_teardown (Fixture       *fixture,
                  gconstpointer  data)
{
  (void) data;

  spark_test_gate_open (&fixture->handler->gate);
  test_handler_release (fixture->handler);
  g_clear_object (&fixture->remote);
  spark_module_server_unexport (fixture->server, fixture->server_conn, OBJECT_PATH);
  if (spark_module_server_get_running (fixture->server))
    spark_test_shutdown (fixture->server, SPARK_SHUTDOWN_MODE_ABORT);

  g_main_context_invoke (fixture->context, quit_loop, fixture->loop);
  g_thread_join (fixture->thread);
  g_main_loop_unref (fixture->loop);
  g_main_context_unref (fixture->context);

  if (!g_dbus_connection_is_closed (fixture->server_conn))
    g_dbus_connection_close_sync (fixture->server_conn, NULL, NULL);
  if (!g_dbus_connection_is_closed (fixture->client_conn))
    g_dbus_connection_close_sync (fixture->client_conn, NULL, NULL);
  g_clear_object (&fixture->server_conn);
  g_clear_object (&fixture->client_conn);
  g_clear_object (&fixture->server);
  g_clear_object (&fixture->handler);
}

static const Options on_bus = { LINK_BUS, 0 };
static const Options on_peer = { LINK_PEER, 0 };
static const Options on_bus_bounded = { LINK_BUS, 1 };

/* Requests ------------------------------------------------------------------ */

static void
on_token_cancelled (GCancellable *token,
                    gpointer      data)
{
  gint *flag = data;

  (void) token;
  g_atomic_int_set (flag, TRUE);
  g_main_context_wakeup (NULL);
}

/* Waits until @token is cancelled, from any thread. */
static void
wait_cancelled (GCancellable *token)
{
  gint cancelled = 0;
  gulong id = g_cancellable_connect (token, G_CALLBACK (on_token_cancelled), &cancelled, NULL);

  spark_test_wait_flag (NULL, &cancelled);
  g_cancellable_disconnect (token, id);
}

static GVariant *
echo_sync (Fixture  *fixture,
           GVariant *parameters)
{
  GError *error = NULL;
  GVariant *reply;

  reply = spark_dispatcher_request_sync (fixture->remote, "echo", parameters, G_VARIANT_TYPE ("(bv)"),
                                         NULL, &error);
  g_assert_no_error (error);
  g_assert_nonnull (reply);
  return reply;
}

/* NULL, the unit tuple and values of many types come back exactly. */
static void
test_request_round_trip (Fixture       *fixture,
                         gconstpointer  data)
{
  const char *texts[] = {
    "()", "<()>", "'user123'", "('user123', 7)", "@mi nothing", "@ms 'x'", "[<1>, <'two'>]",
    "@av []", "{'a': <1>, 'b': <[1, 2]>}", "(@ay [0x00, 0xff], @o '/a/b', @g 'a{sv}', @h 3)",
    "(((1,),),)", "@a(dx) [(1.5, -9223372036854775808)]", "true", "@t 18446744073709551615",
  };
  g_autoptr(GVariant) none = echo_sync (fixture, NULL);
  gboolean had;
  g_autoptr(GVariant) inner = NULL;

  (void) data;

  /* No parameters is not the unit tuple. */
  g_variant_get (none, "(bv)", &had, &inner);
  g_assert_false (had);

  for (guint i = 0; i < G_N_ELEMENTS (texts); i++)
    {
      GError *error = NULL;
      g_autoptr(GVariant) sent = g_variant_parse (NULL, texts[i], NULL, NULL, &error);
      g_autoptr(GVariant) reply = NULL;
      g_autoptr(GVariant) got = NULL;

      g_assert_no_error (error);
      reply = echo_sync (fixture, sent);
      g_variant_get (reply, "(bv)", &had, &got);
      g_assert_true (had);
      g_assert_cmpstr (g_variant_get_type_string (got), ==, g_variant_get_type_string (sent));
      g_assert_true (g_variant_equal (got, sent));
    }

  /* A floating parameter is sunk. */
  g_clear_pointer (&inner, g_variant_unref);
  {
    g_autoptr(GVariant) reply = echo_sync (fixture, g_variant_new_int32 (5));

    g_variant_get (reply, "(bv)", &had, &inner);
    g_assert_cmpint (g_variant_get_int32 (inner), ==, 5);
  }
}

/* Asynchronous requests complete on the caller's context, in any number. */
static void
test_request_async (Fixture       *fixture,
                    gconstpointer  data)
{
  SparkTestOutcome outcomes[50] = { { 0 } };

  (void) data;

  for (guint i = 0; i < G_N_ELEMENTS (outcomes); i++)
    spark_dispatcher_request_full (fixture->remote, "echo", g_variant_new_uint32 (i), NULL, NULL,
                                   spark_test_outcome_cb, &outcomes[i], NULL);
  for (guint i = 0; i < G_N_ELEMENTS (outcomes); i++)
    {
      g_autoptr(GVariant) got = NULL;
      gboolean had;

      spark_test_wait_flag (NULL, &outcomes[i].done);
      g_assert_no_error (outcomes[i].error);
      g_variant_get (outcomes[i].reply, "(bv)", &had, &got);
      g_assert_cmpuint (g_variant_get_uint32 (got), ==, i);
      spark_test_outcome_clear (&outcomes[i]);
    }
}

#define TEST_ERROR (g_quark_from_static_string ("test-dbus-error-quark"))

static void
assert_remote_error (Fixture    *fixture,
                     const char *domain,
                     gint        code,
                     const char *message)
{
  GError *error = NULL;
  GVariant *reply;

  reply = spark_dispatcher_request_sync (fixture->remote, "fail",
                                         g_variant_new ("(sis)", domain, code, message),
                                         NULL, NULL, &error);
  g_assert_null (reply);
  g_assert_error (error, g_quark_from_string (domain), code);
  g_assert_cmpstr (error->message, ==, message);
  g_error_free (error);
}

/* A handler's error arrives with its domain, code and message: the
 * library's registered domain, GIO's, and one D-Bus has never heard of. */
static void
test_request_errors (Fixture       *fixture,
                     gconstpointer  data)
{
  GError *error = NULL;
  GVariant *reply;

  (void) data;

  assert_remote_error (fixture, "spark-channel-error-quark", SPARK_CHANNEL_ERROR_NOT_SUPPORTED, "not here");
  assert_remote_error (fixture, "spark-channel-error-quark", SPARK_CHANNEL_ERROR_TIMED_OUT, "late");
  assert_remote_error (fixture, "g-io-error-quark", G_IO_ERROR_PERMISSION_DENIED, "no way");
  (void) TEST_ERROR;
  assert_remote_error (fixture, "test-dbus-error-quark", 7, "a message with “quotes”: and colons");
  /* A handler's own D-Bus errors and G_IO_ERROR_CLOSED are what they say:
   * not the module gone. */
  assert_remote_error (fixture, "g-dbus-error-quark", G_DBUS_ERROR_UNKNOWN_METHOD, "no such method in my world");
  assert_remote_error (fixture, "g-dbus-error-quark", G_DBUS_ERROR_NO_REPLY, "the backend did not answer");
  assert_remote_error (fixture, "g-dbus-error-quark", G_DBUS_ERROR_SERVICE_UNKNOWN, "no backend");
  assert_remote_error (fixture, "g-dbus-error-quark", G_DBUS_ERROR_INVALID_ARGS, "bad arguments");
  assert_remote_error (fixture, "g-io-error-quark", G_IO_ERROR_CLOSED, "my file is closed");

  /* The remote handler's own outcomes. */
  reply = spark_dispatcher_request_sync (fixture->remote, "drop", NULL, NULL, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY);
  g_assert_null (reply);
  g_clear_error (&error);
  reply = spark_dispatcher_request_sync (fixture->remote, "unknown", NULL, NULL, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  g_assert_null (reply);
  g_clear_error (&error);

  /* The reply type is checked on this side. */
  reply = spark_dispatcher_request_sync (fixture->remote, "echo", NULL, G_VARIANT_TYPE_STRING, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH);
  g_assert_nonnull (strstr (error->message, "“(bv)”"));
  g_assert_null (reply);
  g_clear_error (&error);
}

/* A requester's cancel reaches the remote handler's cancellable; the
 * request completes once, with CANCELLED. */
static void
test_request_cancel (Fixture       *fixture,
                     gconstpointer  data)
{
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  SparkTestOutcome outcome = { 0 };
  GError *error = NULL;
  GVariant *reply;

  (void) data;

  spark_dispatcher_request_full (fixture->remote, "hold", NULL, NULL, cancellable,
                                 spark_test_outcome_cb, &outcome, NULL);
  test_handler_wait_held (fixture->handler, 1);
  g_cancellable_cancel (cancellable);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_error (outcome.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  spark_test_outcome_clear (&outcome);
  test_handler_wait_cancelled (fixture->handler, 1);

  /* Cancelled before: nothing is sent. */
  reply = spark_dispatcher_request_sync (fixture->remote, "hold", NULL, NULL, cancellable, &error);
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_assert_null (reply);
  g_clear_error (&error);

  /* The dispatcher still works; the held invocation's late reply is
   * dropped. */
  test_handler_release (fixture->handler);
  g_variant_unref (echo_sync (fixture, NULL));
  g_assert_cmpint (g_atomic_int_get (&fixture->handler->cancelled), ==, 1);
}

/* The dispatcher's timeout: TIMED_OUT here, and the remote handler's
 * cancellable is cancelled. */
static void
test_request_timeout (Fixture       *fixture,
                      gconstpointer  data)
{
  GError *error = NULL;
  GVariant *reply;

  (void) data;

  spark_dispatcher_set_timeout (fixture->remote, 100);
  reply = spark_dispatcher_request_sync (fixture->remote, "hold", NULL, NULL, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  g_assert_null (reply);
  g_clear_error (&error);
  test_handler_wait_cancelled (fixture->handler, 1);
}

/* The exporting side enforces a deadline itself: a raw call with a
 * "timeout" option and no timer of the caller's own. */
static void
test_request_deadline (Fixture       *fixture,
                       gconstpointer  data)
{
  GError *error = NULL;
  GVariant *ret;

  (void) data;

  ret = g_dbus_connection_call_sync (fixture->client_conn, fixture->bus_name, OBJECT_PATH,
                                     SPARK_DBUS_INTERFACE, "Request",
                                     g_variant_new_parsed ("('hold', @av [], {'timeout': <@u 50>})"),
                                     G_VARIANT_TYPE ("(av)"), G_DBUS_CALL_FLAGS_NONE, -1, NULL, &error);
  g_assert_null (ret);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TIMED_OUT);
  g_assert_true (g_dbus_error_is_remote_error (error));
  g_clear_error (&error);
  test_handler_wait_cancelled (fixture->handler, 1);

  /* Malformed parameters: a clear error. */
  ret = g_dbus_connection_call_sync (fixture->client_conn, fixture->bus_name, OBJECT_PATH,
                                     SPARK_DBUS_INTERFACE, "Request",
                                     g_variant_new_parsed ("('echo', [<1>, <2>], @a{sv} {})"),
                                     G_VARIANT_TYPE ("(av)"), G_DBUS_CALL_FLAGS_NONE, -1, NULL, &error);
  g_assert_null (ret);
  g_assert_error (error, G_DBUS_ERROR, G_DBUS_ERROR_INVALID_ARGS);
  g_clear_error (&error);
}

/* More requests than a bus lets one connection have pending replies: at
 * most SPARK_DBUS_MAX_IN_FLIGHT reach the module at once, the rest wait,
 * and every one completes. */
static void
test_request_in_flight (Fixture       *fixture,
                        gconstpointer  data)
{
  enum { N = 3 * SPARK_DBUS_MAX_IN_FLIGHT + 17 };
  SparkTestOutcome *outcomes = g_new0 (SparkTestOutcome, N);

  (void) data;

  fixture->handler->batch_size = SPARK_DBUS_MAX_IN_FLIGHT;
  fixture->handler->batch_total = N;

  for (guint i = 0; i < N; i++)
    spark_dispatcher_request_full (fixture->remote, "batch", NULL, G_VARIANT_TYPE_UINT32, NULL,
                                   spark_test_outcome_cb, &outcomes[i], NULL);
  for (guint i = 0; i < N; i++)
    {
      spark_test_wait_flag (NULL, &outcomes[i].done);
      g_assert_no_error (outcomes[i].error);
      spark_test_outcome_clear (&outcomes[i]);
    }

  /* The module held a full window at once, and never more. */
  g_assert_cmpuint (fixture->handler->max_held, ==, SPARK_DBUS_MAX_IN_FLIGHT);
  g_free (outcomes);
}

/* Why the cap: the bus itself refuses a connection's 129th pending reply.
 * Raw GDBus calls to an object that holds every call. */
typedef struct
{
  Fixture   *fixture;
  GPtrArray *held;        /* export thread */
  guint      id;
  gint       n_held;      /* atomic */
  gint       done;
} Holder;

static void
holder_method (GDBusConnection       *connection,
               const char            *sender,
               const char            *object_path,
               const char            *interface_name,
               const char            *method_name,
               GVariant              *parameters,
               GDBusMethodInvocation *invocation,
               gpointer               user_data)
{
  Holder *holder = user_data;

  (void) connection;
  (void) sender;
  (void) object_path;
  (void) interface_name;
  (void) method_name;
  (void) parameters;

  g_ptr_array_add (holder->held, g_object_ref (invocation));
  g_atomic_int_inc (&holder->n_held);
}

static const GDBusInterfaceVTable holder_vtable = { holder_method, NULL, NULL, { 0 } };

static gboolean
holder_register (gpointer data)
{
  Holder *holder = data;
  GDBusNodeInfo *node = g_dbus_node_info_new_for_xml ("<node><interface name='org.example.Hold'>"
                                                      "<method name='Hold'/></interface></node>", NULL);
  GError *error = NULL;

  holder->id = g_dbus_connection_register_object (holder->fixture->server_conn, "/hold", node->interfaces[0],
                                                  &holder_vtable, holder, NULL, &error);
  g_assert_no_error (error);
  g_dbus_node_info_unref (node);
  g_atomic_int_set (&holder->done, TRUE);
  g_main_context_wakeup (NULL);   /* the test's thread waits on the global default context */
  return G_SOURCE_REMOVE;
}

static gboolean
holder_release (gpointer data)
{
  Holder *holder = data;

  for (guint i = 0; i < holder->held->len; i++)
    g_dbus_method_invocation_return_value (g_ptr_array_index (holder->held, i), NULL);
  g_ptr_array_set_size (holder->held, 0);
  g_dbus_connection_unregister_object (holder->fixture->server_conn, holder->id);
  g_atomic_int_set (&holder->done, TRUE);
  g_main_context_wakeup (NULL);   /* the test's thread waits on the global default context */
  return G_SOURCE_REMOVE;
}

typedef struct
{
  guint   n;
  guint   refused;
  guint   answered;
} HoldCalls;

static void
on_hold_reply (GObject      *source,
               GAsyncResult *result,
               gpointer      user_data)
{
  HoldCalls *calls = user_data;
  GError *error = NULL;
  GVariant *ret = g_dbus_connection_call_finish (G_DBUS_CONNECTION (source), result, &error);

  if (ret != NULL)
    {
      calls->answered++;
      g_variant_unref (ret);
    }
  else
    {
      g_assert_error (error, G_DBUS_ERROR, G_DBUS_ERROR_LIMITS_EXCEEDED);
      calls->refused++;
      g_error_free (error);
    }
  calls->n++;
}

static void
test_bus_reply_limit (Fixture       *fixture,
                      gconstpointer  data)
{
  Holder holder = { fixture, g_ptr_array_new_with_free_func (g_object_unref), 0, 0, 0 };
  HoldCalls calls = { 0 };
  enum { N = SPARK_DBUS_MAX_IN_FLIGHT + 1 };

  (void) data;

  g_main_context_invoke (fixture->context, holder_register, &holder);
  spark_test_wait_flag (NULL, &holder.done);

  for (guint i = 0; i < N; i++)
    g_dbus_connection_call (fixture->client_conn, fixture->bus_name, "/hold", "org.example.Hold", "Hold",
                            NULL, NULL, G_DBUS_CALL_FLAGS_NONE, G_MAXINT, NULL, on_hold_reply, &calls);

  /* The bus refuses one at once; the others reach the holder. */
  while (calls.refused < 1)
    g_main_context_iteration (NULL, TRUE);
  while (g_atomic_int_get (&holder.n_held) < SPARK_DBUS_MAX_IN_FLIGHT)
    g_thread_yield ();
  g_assert_cmpuint (calls.refused, ==, 1);

  holder.done = FALSE;
  g_main_context_invoke (fixture->context, holder_release, &holder);
  while (calls.n < N)
    g_main_context_iteration (NULL, TRUE);
  g_assert_cmpuint (calls.answered, ==, SPARK_DBUS_MAX_IN_FLIGHT);
  spark_test_wait_flag (NULL, &holder.done);
  g_ptr_array_unref (holder.held);
}

/* Commands and backpressure --------------------------------------------------- */

static GVariant *
get_property (Fixture    *fixture,
              const char *name)
{
  GError *error = NULL;
  GVariant *ret, *value;

  ret = g_dbus_connection_call_sync (fixture->client_conn, fixture->bus_name, OBJECT_PATH,
                                     "org.freedesktop.DBus.Properties", "Get",
                                     g_variant_new ("(ss)", SPARK_DBUS_INTERFACE, name),
                                     G_VARIANT_TYPE ("(v)"), G_DBUS_CALL_FLAGS_NONE, -1, NULL, &error);
  g_assert_no_error (error);
  g_variant_get (ret, "(v)", &value);
  g_variant_unref (ret);
  return value;
}

static void
on_command_sent (GObject      *source,
                 GAsyncResult *result,
                 gpointer      user_data)
{
  SparkTestOutcome *outcome = user_data;
  GError *error = NULL;

  if (!spark_dispatcher_send_command_finish (SPARK_DISPATCHER (source), result, &error))
    outcome->error = error;
  g_atomic_int_set (&outcome->done, TRUE);
}

/* The capacity holds for remote senders: try-send fails with FULL, the
 * others wait for room there; Pending counts what is queued. */
static void
test_command_full (Fixture       *fixture,
                   gconstpointer  data)
{
  TestHandler *handler = fixture->handler;
  SparkTestOutcome waiting = { 0 };
  GError *error = NULL;
  g_autoptr(GVariant) pending = NULL;
  g_autoptr(GVariant) running = get_property (fixture, "Running");

  (void) data;

  g_assert_true (g_variant_get_boolean (running));
  g_assert_true (spark_dispatcher_send_command (fixture->remote, "block", NULL, NULL, &error));
  g_assert_no_error (error);
  g_mutex_lock (&handler->mutex);
  while (!handler->blocking)
    g_cond_wait (&handler->cond, &handler->mutex);
  g_mutex_unlock (&handler->mutex);

  g_assert_true (spark_dispatcher_try_send_command (fixture->remote, "count", NULL, &error));
  g_assert_no_error (error);
  pending = get_property (fixture, "Pending");
  g_assert_cmpuint (g_variant_get_uint32 (pending), ==, 1);

  g_assert_false (spark_dispatcher_try_send_command (fixture->remote, "count", g_variant_new_int32 (1), &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_clear_error (&error);

  /* An asynchronous send waits for room there, without blocking anybody. */
  spark_dispatcher_send_command_async (fixture->remote, "count", NULL, NULL, on_command_sent, &waiting);
  g_assert_false (g_atomic_int_get (&waiting.done));
  spark_test_gate_open (&handler->gate);
  spark_test_wait_flag (NULL, &waiting.done);
  g_assert_no_error (waiting.error);

  /* Both queued commands ran; the refused one never did. */
  g_assert_null (spark_dispatcher_request_sync (fixture->remote, "drop", NULL, NULL, NULL, &error));
  g_clear_error (&error);
  g_assert_cmpint (g_atomic_int_get (&handler->commands), ==, 2);
}

/* A wait for room that the sender cancels: the export's answer says
 * CANCELLED and the command never runs. */
static void
test_command_cancel_wait (Fixture       *fixture,
                          gconstpointer  data)
{
  TestHandler *handler = fixture->handler;
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  SparkTestOutcome waiting = { 0 };
  GError *error = NULL;

  (void) data;

  g_assert_true (spark_dispatcher_send_command (fixture->remote, "block", NULL, NULL, &error));
  g_mutex_lock (&handler->mutex);
  while (!handler->blocking)
    g_cond_wait (&handler->cond, &handler->mutex);
  g_mutex_unlock (&handler->mutex);
  g_assert_true (spark_dispatcher_send_command (fixture->remote, "count", NULL, NULL, &error));

  spark_dispatcher_send_command_async (fixture->remote, "count", NULL, cancellable, on_command_sent, &waiting);
  /* Wait until the export waits for room for it: Pending stays 1. */
  g_cancellable_cancel (cancellable);
  spark_test_wait_flag (NULL, &waiting.done);
  g_assert_error (waiting.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&waiting.error);

  spark_test_gate_open (&handler->gate);
  g_assert_null (spark_dispatcher_request_sync (fixture->remote, "drop", NULL, NULL, NULL, &error));
  g_clear_error (&error);
  g_assert_cmpint (g_atomic_int_get (&handler->commands), ==, 1);
}

/* Shutdown over the bus: the token is cancelled once the server stopped;
 * everything after fails with CLOSED. */
static void
test_shutdown (Fixture       *fixture,
               gconstpointer  data)
{
  g_autoptr(GCancellable) token = g_cancellable_new ();
  GError *error = NULL;
  GVariant *reply;
  (void) data;

  g_assert_true (spark_dispatcher_send_command (fixture->remote, "count", NULL, NULL, &error));
  g_assert_true (spark_dispatcher_send_shutdown (fixture->remote, token, &error));
  g_assert_no_error (error);
  wait_cancelled (token);
  g_assert_false (spark_module_server_get_running (fixture->server));
  g_assert_cmpint (g_atomic_int_get (&fixture->handler->commands), ==, 1);

  g_assert_false (spark_dispatcher_send_shutdown (fixture->remote, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
  reply = spark_dispatcher_request_sync (fixture->remote, "echo", NULL, NULL, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_assert_null (reply);
  g_clear_error (&error);

  /* Another dispatcher reaches the stopped server: CLOSED from there. */
  {
    g_autoptr(SparkDispatcher) other = spark_dispatcher_new_for_dbus (fixture->client_conn, fixture->bus_name,
                                                                      OBJECT_PATH);

    reply = spark_dispatcher_request_sync (other, "echo", NULL, NULL, NULL, &error);
    g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
    g_assert_null (reply);
    g_clear_error (&error);
    g_assert_false (spark_dispatcher_try_send_command (other, "count", NULL, &error));
    g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
    g_clear_error (&error);
  }
}

/* The peer going away ---------------------------------------------------------- */

/* The exporting side's connection closes with requests in flight and
 * queued: each fails with CLOSED, once; so does every later call. */
static void
test_peer_vanished (Fixture       *fixture,
                    gconstpointer  data)
{
  enum { N = SPARK_DBUS_MAX_IN_FLIGHT + 10 };
  SparkTestOutcome *outcomes = g_new0 (SparkTestOutcome, N);
  GError *error = NULL;
  GVariant *reply;

  (void) data;

  for (guint i = 0; i < N; i++)
    spark_dispatcher_request_full (fixture->remote, "hold", NULL, NULL, NULL,
                                   spark_test_outcome_cb, &outcomes[i], NULL);
  test_handler_wait_held (fixture->handler, SPARK_DBUS_MAX_IN_FLIGHT);

  g_dbus_connection_close_sync (fixture->server_conn, NULL, &error);
  g_assert_no_error (error);

  for (guint i = 0; i < N; i++)
    {
      spark_test_wait_flag (NULL, &outcomes[i].done);
      g_assert_error (outcomes[i].error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
      spark_test_outcome_clear (&outcomes[i]);
    }
  g_free (outcomes);

  reply = spark_dispatcher_request_sync (fixture->remote, "echo", NULL, NULL, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_assert_null (reply);
  g_clear_error (&error);
  g_assert_false (spark_dispatcher_send_command (fixture->remote, "count", NULL, NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
}

/* A requester blocked in request_sync on the context the connection was
 * made on: GDBus's ::closed cannot reach it there, the request still
 * fails with CLOSED. */
static gpointer
close_when_held (gpointer data)
{
  Fixture *fixture = data;

  test_handler_wait_held (fixture->handler, 1);
  g_dbus_connection_close_sync (fixture->server_conn, NULL, NULL);
  return NULL;
}

static void
test_peer_vanished_sync (Fixture       *fixture,
                         gconstpointer  data)
{
  GThread *closer = g_thread_new ("closer", close_when_held, fixture);
  GError *error = NULL;
  GVariant *reply;

  (void) data;

  reply = spark_dispatcher_request_sync (fixture->remote, "hold", NULL, NULL, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_assert_null (reply);
  g_clear_error (&error);
  g_thread_join (closer);
}

/* Unexported: the object is gone, the dispatcher says CLOSED. */
static void
test_unexported (Fixture       *fixture,
                 gconstpointer  data)
{
  GError *error = NULL;
  GVariant *reply;

  (void) data;

  g_assert_true (spark_module_server_unexport (fixture->server, fixture->server_conn, OBJECT_PATH));
  g_assert_false (spark_module_server_unexport (fixture->server, fixture->server_conn, OBJECT_PATH));
  reply = spark_dispatcher_request_sync (fixture->remote, "echo", NULL, NULL, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_assert_null (reply);
  g_clear_error (&error);
}

/* Introspection: what D-Spy and gdbus introspect show. */
static void
test_introspect (Fixture       *fixture,
                 gconstpointer  data)
{
  GError *error = NULL;
  GVariant *ret;
  const char *xml;
  GDBusNodeInfo *node;
  GDBusInterfaceInfo *iface;

  (void) data;

  ret = g_dbus_connection_call_sync (fixture->client_conn, fixture->bus_name, OBJECT_PATH,
                                     "org.freedesktop.DBus.Introspectable", "Introspect", NULL,
                                     G_VARIANT_TYPE ("(s)"), G_DBUS_CALL_FLAGS_NONE, -1, NULL, &error);
  g_assert_no_error (error);
  g_variant_get (ret, "(&s)", &xml);
  node = g_dbus_node_info_new_for_xml (xml, &error);
  g_assert_no_error (error);
  iface = g_dbus_node_info_lookup_interface (node, SPARK_DBUS_INTERFACE);
  g_assert_nonnull (iface);
  g_assert_nonnull (g_dbus_interface_info_lookup_method (iface, "Request"));
  g_assert_nonnull (g_dbus_interface_info_lookup_method (iface, "Command"));
  g_assert_nonnull (g_dbus_interface_info_lookup_method (iface, "Cancel"));
  g_assert_nonnull (g_dbus_interface_info_lookup_method (iface, "Shutdown"));
  g_assert_nonnull (g_dbus_interface_info_lookup_property (iface, "Pending"));
  g_assert_nonnull (g_dbus_interface_info_lookup_property (iface, "Running"));
  g_dbus_node_info_unref (node);
  g_variant_unref (ret);
}

/* Other programs --------------------------------------------------------------- */

/* Runs @argv to its end, iterating this thread's context; returns stdout. */
static char *
run_program (const char * const *argv,
             gboolean            expect_success)
{
  g_autoptr(GSubprocess) proc = NULL;
  GError *error = NULL;
  char *out = NULL;
  g_autofree char *err = NULL;

  proc = g_subprocess_newv (argv, G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_PIPE, &error);
  g_assert_no_error (error);
  /* Blocks this thread only: the export has a thread of its own. */
  g_subprocess_communicate_utf8 (proc, NULL, NULL, &out, &err, &error);
  g_assert_no_error (error);
  if (expect_success && !g_subprocess_get_successful (proc))
    g_error ("%s failed:\n%s\n%s", argv[0], out, err);
  g_test_message ("%s: %s%s", argv[0], out, err);
  return out;
}

/* gdbus call and busctl against the exported module. */
static void
test_gdbus_call (Fixture       *fixture,
                 gconstpointer  data)
{
  const char *address = g_test_dbus_get_bus_address (test_bus);
  g_autofree char *busctl = g_find_program_in_path ("busctl");
  g_autofree char *out = NULL;

  (void) data;

  /* tools/tsan runs this suite on a GLib of its own, built with TSan,
   * which the system's gdbus cannot load. */
  if (g_getenv ("SPARK_TEST_SANITIZED_GLIB") != NULL)
    {
      g_test_skip ("gdbus cannot run on this run's sanitized GLib");
      return;
    }

  {
    const char *argv[] = { "gdbus", "call", "--address", address, "--dest", fixture->bus_name,
                           "--object-path", OBJECT_PATH,
                           "--method", SPARK_DBUS_INTERFACE ".Request", "echo", "[<('user123', 7)>]", "{}",
                           NULL };

    out = run_program (argv, TRUE);
    g_assert_cmpstr (out, ==, "([<(true, <('user123', 7)>)>],)\n");
    g_clear_pointer (&out, g_free);
  }
  {
    const char *argv[] = { "gdbus", "call", "--address", address, "--dest", fixture->bus_name,
                           "--object-path", OBJECT_PATH,
                           "--method", SPARK_DBUS_INTERFACE ".Command", "count", "[]", "{}",
                           NULL };

    out = run_program (argv, TRUE);
    g_assert_cmpstr (out, ==, "()\n");
    g_clear_pointer (&out, g_free);
  }
  {
    const char *argv[] = { "gdbus", "call", "--address", address, "--dest", fixture->bus_name,
                           "--object-path", OBJECT_PATH,
                           "--method", SPARK_DBUS_INTERFACE ".Request", "unknown", "[]", "{}",
                           NULL };

    out = run_program (argv, FALSE);
    g_clear_pointer (&out, g_free);
  }

  if (busctl != NULL)
    {
      const char *argv[] = { busctl, "--address", address, "call", fixture->bus_name, OBJECT_PATH,
                             SPARK_DBUS_INTERFACE, "Request", "sava{sv}", "echo", "1", "s", "hi", "0", NULL };
      const char *no_reply[] = { busctl, "--address", address, "--expect-reply=false", "call",
                                 fixture->bus_name, OBJECT_PATH, SPARK_DBUS_INTERFACE, "Command",
                                 "sava{sv}", "count", "0", "0", NULL };

      out = run_program (argv, TRUE);
      g_assert_cmpstr (out, ==, "av 1 (bv) true s \"hi\"\n");
      g_clear_pointer (&out, g_free);
      out = run_program (no_reply, TRUE);
      g_clear_pointer (&out, g_free);
    }
  else
    g_test_message ("busctl not found: only gdbus was run");

  /* The commands ran (NO_REPLY_EXPECTED honoured, nothing lost). */
  {
    GError *error = NULL;

    g_assert_null (spark_dispatcher_request_sync (fixture->remote, "drop", NULL, NULL, NULL, &error));
    g_clear_error (&error);
    g_assert_cmpint (g_atomic_int_get (&fixture->handler->commands), ==, busctl != NULL ? 2 : 1);
  }
}

/* A Python client (PyGObject) in a process of its own. */
static void
test_python_client (Fixture       *fixture,
                    gconstpointer  data)
{
  const char *python = g_getenv ("SPARK_TEST_PYTHON");
  g_autofree char *script = g_test_build_filename (G_TEST_DIST, "bindings", "dbus-client.py", NULL);
  g_autofree char *out = NULL;

  (void) data;

  if (python == NULL)
    {
      g_test_skip ("SPARK_TEST_PYTHON is not set");
      return;
    }

  {
    const char *argv[] = { python, script, g_test_dbus_get_bus_address (test_bus), fixture->bus_name,
                           OBJECT_PATH, NULL };

    out = run_program (argv, TRUE);
    g_assert_nonnull (strstr (out, "ok\n"));
  }
}

/* A C client against a GJS server in a process of its own. */
static void
test_gjs_server (void)
{
  const char *gjs = g_getenv ("SPARK_TEST_GJS");
  g_autofree char *script = g_test_build_filename (G_TEST_DIST, "bindings", "dbus-server.js", NULL);
  const char *address = g_test_dbus_get_bus_address (test_bus);
  g_autoptr(GDBusConnection) conn = NULL;
  g_autoptr(GSubprocess) proc = NULL;
  g_autoptr(SparkDispatcher) remote = NULL;
  g_autoptr(GCancellable) token = g_cancellable_new ();
  g_autoptr(GDataInputStream) lines = NULL;
  g_autofree char *line = NULL;
  GError *error = NULL;
  GVariant *reply;

  if (gjs == NULL)
    {
      g_test_skip ("SPARK_TEST_GJS is not set");
      return;
    }

  conn = g_dbus_connection_new_for_address_sync (address,
                                                 G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT |
                                                 G_DBUS_CONNECTION_FLAGS_MESSAGE_BUS_CONNECTION,
                                                 NULL, NULL, &error);
  g_assert_no_error (error);

  {
    const char *argv[] = { gjs, "-m", script, address, NULL };

    proc = g_subprocess_newv (argv, G_SUBPROCESS_FLAGS_STDOUT_PIPE, &error);
    g_assert_no_error (error);
  }

  /* It prints its unique name once exported. */
  lines = g_data_input_stream_new (g_subprocess_get_stdout_pipe (proc));
  line = g_data_input_stream_read_line_utf8 (lines, NULL, NULL, &error);
  g_assert_no_error (error);
  g_assert_nonnull (line);

  remote = spark_dispatcher_new_for_dbus (conn, line, OBJECT_PATH);
  reply = spark_dispatcher_request_sync (remote, "greet", g_variant_new_string ("C"), G_VARIANT_TYPE_STRING,
                                         NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (g_variant_get_string (reply, NULL), ==, "Hello, C, from GJS");
  g_variant_unref (reply);

  reply = spark_dispatcher_request_sync (remote, "greet", NULL, NULL, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  g_assert_cmpstr (error->message, ==, "greet needs a name");
  g_assert_null (reply);
  g_clear_error (&error);

  reply = spark_dispatcher_request_sync (remote, "fail", NULL, NULL, NULL, &error);
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED);
  g_assert_cmpstr (error->message, ==, "not from JavaScript");
  g_assert_null (reply);
  g_clear_error (&error);

  /* An invocation completed later, from a Promise. */
  reply = spark_dispatcher_request_sync (remote, "later", g_variant_new_int32 (20), G_VARIANT_TYPE_INT32,
                                         NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpint (g_variant_get_int32 (reply), ==, 21);
  g_variant_unref (reply);

  g_assert_true (spark_dispatcher_send_command (remote, "log", g_variant_new_string ("from C"), NULL, &error));
  g_assert_no_error (error);

  /* Shutting it down ends the program. */
  g_assert_true (spark_dispatcher_send_shutdown (remote, token, &error));
  g_assert_no_error (error);
  wait_cancelled (token);
  g_subprocess_wait_check (proc, NULL, &error);
  g_assert_no_error (error);

  /* What the program says it saw: the command arrived. */
  g_clear_pointer (&line, g_free);
  line = g_data_input_stream_read_line_utf8 (lines, NULL, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (line, ==, "log: from C");

  g_dbus_connection_close_sync (conn, NULL, NULL);
}


/* Cancel-all, priorities, deadlocks ------------------------------------------------ */

/* Has the server's thread wait at the handler's gate, so that what comes
 * next stays queued in its mailbox. */
static void
block_server_with (Fixture    *fixture,
                   const char *command,
                   gboolean   *blocking)
{
  TestHandler *handler = fixture->handler;
  GError *error = NULL;

  g_assert_true (spark_dispatcher_send_command (fixture->remote, command, NULL, NULL, &error));
  g_assert_no_error (error);
  g_mutex_lock (&handler->mutex);
  while (!*blocking)
    g_cond_wait (&handler->cond, &handler->mutex);
  g_mutex_unlock (&handler->mutex);
}

/* The server's thread waits at the handler's gate: what comes queues. */
static void
block_server (Fixture *fixture)
{
  block_server_with (fixture, "block", &fixture->handler->blocking);
}

/* Sends @n "echo" requests, their outcomes to @outcomes. */
static void
request_echoes (SparkDispatcher  *dispatcher,
                SparkTestOutcome *outcomes,
                guint             n)
{
  for (guint i = 0; i < n; i++)
    spark_dispatcher_request_full (dispatcher, "echo", g_variant_new_uint32 (i), NULL, NULL,
                                   spark_test_outcome_cb, &outcomes[i], NULL);
}

/* Waits for @n outcomes: each CANCELLED, or each a reply. */
static void
wait_outcomes (SparkTestOutcome *outcomes,
               guint             n,
               gboolean          cancelled)
{
  for (guint i = 0; i < n; i++)
    {
      spark_test_wait_flag (NULL, &outcomes[i].done);
      if (cancelled)
        g_assert_error (outcomes[i].error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
      else
        g_assert_no_error (outcomes[i].error);
      spark_test_outcome_clear (&outcomes[i]);
    }
}

static void
assert_not_done (SparkTestOutcome *outcomes,
                 guint             n)
{
  for (guint i = 0; i < n; i++)
    g_assert_false (g_atomic_int_get (&outcomes[i].done));
}

static void
wait_pending (Fixture *fixture,
              guint    n)
{
  while (spark_module_server_get_pending (fixture->server) < n)
    g_usleep (1000);
}

/* cancel_all() of a remote dispatcher: its requests still queued in the
 * remote mailbox and those still waiting here for an in-flight slot fail
 * with CANCELLED; another dispatcher's, on the same connection, do not. */
static void
test_cancel_all (Fixture       *fixture,
                 gconstpointer  data)
{
  enum { N = SPARK_DBUS_MAX_IN_FLIGHT + 5, M = 3 };
  g_autoptr(SparkDispatcher) other = spark_dispatcher_new_for_dbus (fixture->client_conn, fixture->bus_name,
                                                                    OBJECT_PATH);
  g_autoptr(SparkDispatcher) high = NULL;
  SparkTestOutcome *mine = g_new0 (SparkTestOutcome, N + 1);
  SparkTestOutcome *theirs = g_new0 (SparkTestOutcome, M);

  (void) data;

  block_server (fixture);
  /* More than the slots: the last few wait here, behind the window. */
  request_echoes (fixture->remote, mine, N);
  /* One made by with_priority() is the same sender. */
  high = spark_dispatcher_with_priority (fixture->remote, SPARK_PRIORITY_HIGH);
  spark_dispatcher_request_full (high, "echo", NULL, NULL, NULL, spark_test_outcome_cb, &mine[N], NULL);
  request_echoes (other, theirs, M);
  wait_pending (fixture, SPARK_DBUS_MAX_IN_FLIGHT);

  spark_dispatcher_cancel_all (fixture->remote);
  wait_outcomes (mine, N + 1, TRUE);
  /* The other dispatcher's requests are still on their way or queued. */
  assert_not_done (theirs, M);
  spark_test_gate_open (&fixture->handler->gate);
  wait_outcomes (theirs, M, FALSE);
  /* And this one goes on working. */
  g_variant_unref (echo_sync (fixture, NULL));

  /* The other way round, everything sent this time: the first dispatcher
   * to send was the connection's default sender (its requests do not name
   * it), the other one names itself; CancelAll tells them apart. */
  block_server_with (fixture, "block-again", &fixture->handler->blocking_again);
  request_echoes (other, theirs, M);
  request_echoes (fixture->remote, mine, M);
  /* All queued in the remote mailbox. */
  wait_pending (fixture, 2 * M);
  spark_dispatcher_cancel_all (other);
  wait_outcomes (theirs, M, TRUE);
  assert_not_done (mine, M);
  spark_test_gate_open (&fixture->handler->gate_again);
  wait_outcomes (mine, M, FALSE);
  g_free (mine);
  g_free (theirs);
}

typedef struct
{
  GString *order;
  gint     done;
} Order;

static void
on_ordered_reply (GVariant     *reply,
                  const GError *error,
                  gpointer      user_data)
{
  Order *order = user_data;
  g_autoptr(GVariant) child = NULL;
  g_autoptr(GVariant) inner = NULL;

  g_assert_no_error ((GError *) error);
  child = g_variant_get_child_value (reply, 1);
  inner = g_variant_get_variant (child);
  g_string_append (order->order, g_variant_get_string (inner, NULL));
  g_atomic_int_inc (&order->done);
}

/* A remote dispatcher's priority is the lane in the remote mailbox: sent
 * LOW, DEFAULT, HIGH while the server is busy, they run HIGH first. */
static void
test_priority (Fixture       *fixture,
               gconstpointer  data)
{
  g_autoptr(SparkDispatcher) low = spark_dispatcher_with_priority (fixture->remote, SPARK_PRIORITY_LOW);
  g_autoptr(SparkDispatcher) high = spark_dispatcher_with_priority (fixture->remote, SPARK_PRIORITY_HIGH);
  Order order = { g_string_new (NULL), 0 };

  (void) data;

  block_server (fixture);
  spark_dispatcher_request_full (low, "echo", g_variant_new_string ("L"), NULL, NULL, on_ordered_reply, &order, NULL);
  spark_dispatcher_request_full (fixture->remote, "echo", g_variant_new_string ("D"), NULL, NULL,
                                 on_ordered_reply, &order, NULL);
  spark_dispatcher_request_full (high, "echo", g_variant_new_string ("H"), NULL, NULL, on_ordered_reply, &order, NULL);
  wait_pending (fixture, 3);
  spark_test_gate_open (&fixture->handler->gate);
  spark_test_wait_count (NULL, &order.done, 3);
  g_assert_cmpstr (order.order->str, ==, "HDL");
  g_string_free (order.order, TRUE);
}

typedef struct
{
  Fixture *fixture;
  GError  *sync_error;
  GError  *try_error;
  gint     done;
} SelfCall;

static gboolean
call_self_on_export_thread (gpointer data)
{
  SelfCall *call = data;

  /* This thread serves the export: waiting here for the module would
   * wait for itself. */
  g_assert_null (spark_dispatcher_request_sync (call->fixture->remote, "echo", NULL, NULL, NULL,
                                                &call->sync_error));
  g_assert_false (spark_dispatcher_try_send_command (call->fixture->remote, "count", NULL, &call->try_error));
  g_atomic_int_set (&call->done, TRUE);
  g_main_context_wakeup (NULL);
  return G_SOURCE_REMOVE;
}

/* A blocking call to a module from a thread that must serve it (its
 * export's, or its server's) fails with WOULD_DEADLOCK instead of
 * hanging; from any other thread it works. */
static void
test_would_deadlock (Fixture       *fixture,
                     gconstpointer  data)
{
  SelfCall call = { fixture, NULL, NULL, 0 };
  GError *error = NULL;
  GVariant *reply;

  (void) data;

  g_main_context_invoke (fixture->context, call_self_on_export_thread, &call);
  spark_test_wait_flag (NULL, &call.done);
  g_assert_error (call.sync_error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_WOULD_DEADLOCK);
  g_assert_error (call.try_error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_WOULD_DEADLOCK);
  g_clear_error (&call.sync_error);
  g_clear_error (&call.try_error);

  /* From the server's thread, through its own export. */
  fixture->handler->self_remote = spark_dispatcher_new_for_dbus (fixture->client_conn, fixture->bus_name,
                                                                 OBJECT_PATH);
  reply = spark_dispatcher_request_sync (fixture->remote, "self-sync", NULL, NULL, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_WOULD_DEADLOCK);
  g_assert_null (reply);
  g_clear_error (&error);

  /* From this thread, which serves neither, it answers; the refused
   * command never ran. */
  g_variant_unref (echo_sync (fixture, NULL));
  g_assert_cmpint (g_atomic_int_get (&fixture->handler->commands), ==, 0);
}

/* Modules in a subprocess ----------------------------------------------------- */

static SparkSubprocess *
helper_new (void)
{
  const char *argv[] = { g_getenv ("SPARK_TEST_HELPER"), NULL };

  g_assert_nonnull (argv[0]);
  return spark_subprocess_new (argv);
}

static gint64
helper_pid (SparkDispatcher *remote)
{
  GError *error = NULL;
  GVariant *reply = spark_dispatcher_request_sync (remote, "pid", NULL, G_VARIANT_TYPE_INT64, NULL, &error);
  gint64 pid;

  g_assert_no_error (error);
  pid = g_variant_get_int64 (reply);
  g_variant_unref (reply);
  return pid;
}

/* The same API to a module in a helper process, and its shutdown. */
static void
test_subprocess_basic (void)
{
  g_autoptr(SparkSubprocess) sub = helper_new ();
  g_autoptr(SparkDispatcher) remote = spark_subprocess_create_dispatcher (sub);
  g_autoptr(GCancellable) token = g_cancellable_new ();
  g_autofree char *id = NULL;
  GError *error = NULL;
  GVariant *reply;

  g_assert_true (spark_subprocess_spawn (sub, &error));
  g_assert_no_error (error);
  id = spark_subprocess_dup_identifier (sub);
  g_assert_nonnull (id);
  g_assert_cmpint (helper_pid (remote), ==, g_ascii_strtoll (id, NULL, 10));
  g_assert_cmpint (helper_pid (remote), !=, (gint64) getpid ());

  reply = spark_dispatcher_request_sync (remote, "echo", g_variant_new_parsed ("@ms 'x'"), NULL, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (g_variant_get_type_string (reply), ==, "ms");
  g_variant_unref (reply);
  reply = spark_dispatcher_request_sync (remote, "nope", NULL, NULL, NULL, &error);
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND);
  g_assert_cmpstr (error->message, ==, "No request “nope” in the helper");
  g_assert_null (reply);
  g_clear_error (&error);
  g_assert_true (spark_dispatcher_send_command (remote, "log", NULL, NULL, &error));

  g_assert_true (spark_dispatcher_send_shutdown (remote, token, &error));
  g_assert_no_error (error);
  wait_cancelled (token);
  reply = spark_dispatcher_request_sync (remote, "pid", NULL, NULL, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_assert_null (reply);
  g_clear_error (&error);
}

/* Not started by a SparkSubprocess: a clear error. */
static void
test_subprocess_serve_alone (void)
{
  g_autoptr(SparkHandler) handler = spark_func_handler_new (NULL, NULL, NULL, NULL);
  GError *error = NULL;

  g_assert_false (spark_subprocess_serve (handler, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED);
  g_clear_error (&error);
}

typedef struct
{
  SparkDispatcher *remote;
  guint            n;
  guint            sent;
  guint            done;
  guint            ok;
  guint            closed;
  guint            kill_at;
  gint64           killed_pid;
  guint            restarted;
  gint             gave_up;
  GError          *gave_up_error;
  GArray          *ok_ids;         /* nullable: the ids that replied, in reply order */
  guint            n_late;         /* sent once the first CLOSED arrives, ids from LATE_ID */
  guint            n_extra;        /* how many were */
} Flood;

#define LATE_ID 100000

static void flood_send (Flood *flood);

static void
on_flood_reply (GVariant     *reply,
                const GError *error,
                gpointer      user_data)
{
  Flood *flood = user_data;

  g_assert_true ((reply == NULL) != (error == NULL));
  if (error != NULL)
    {
      /* In flight when the helper died: a clear error, never another. */
      g_assert_error ((GError *) error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
      flood->closed++;
    }
  else
    {
      flood->ok++;
      if (flood->ok_ids != NULL)
        g_array_append_vals (flood->ok_ids, (guint32[]) { g_variant_get_uint32 (reply) }, 1);
    }
  flood->done++;

  /* The death is known here: what is sent now waits for the next
   * process, behind what was still waiting for a slot in the dead one. */
  if (error != NULL && flood->n_late > 0)
    {
      for (guint i = 0; i < flood->n_late; i++)
        spark_dispatcher_request_full (flood->remote, "echo", g_variant_new_uint32 (LATE_ID + i),
                                       G_VARIANT_TYPE_UINT32, NULL, on_flood_reply, flood, NULL);
      flood->n_extra = flood->n_late;
      flood->n_late = 0;
    }

  if (flood->done == flood->kill_at)
    {
      g_assert_cmpint (kill ((pid_t) flood->killed_pid, SIGKILL), ==, 0);
      g_test_message ("killed the helper %" G_GINT64_FORMAT " after %u replies", flood->killed_pid, flood->done);
    }
  if (flood->sent < flood->n)
    flood_send (flood);
  g_main_context_wakeup (NULL);
}

static void
flood_send (Flood *flood)
{
  spark_dispatcher_request_full (flood->remote, "echo", g_variant_new_uint32 (flood->sent++),
                                 G_VARIANT_TYPE_UINT32, NULL, on_flood_reply, flood, NULL);
}

static void
on_restarted (SparkSubprocess *sub,
              guint            restarts,
              gpointer         user_data)
{
  Flood *flood = user_data;

  (void) sub;
  g_assert_cmpuint (restarts, ==, flood->restarted + 1);
  flood->restarted = restarts;
}

static void
on_gave_up (SparkSubprocess *sub,
            GError          *error,
            gpointer         user_data)
{
  Flood *flood = user_data;

  (void) sub;
  g_assert_false (flood->gave_up);
  flood->gave_up = TRUE;
  flood->gave_up_error = g_error_copy (error);
}

/* Three restarts at most, @restart_delay ms apart; spawned, and the
 * flood's dispatcher made. */
static void
flood_start (Flood           *flood,
             SparkSubprocess *sub,
             guint            restart_delay)
{
  GError *error = NULL;

  g_object_set (sub, "max-restarts", 3, "restart-delay", restart_delay, NULL);
  g_signal_connect (sub, "restarted", G_CALLBACK (on_restarted), flood);
  g_signal_connect (sub, "gave-up", G_CALLBACK (on_gave_up), flood);
  g_assert_true (spark_subprocess_spawn (sub, &error));
  g_assert_no_error (error);

  flood->remote = spark_subprocess_create_dispatcher (sub);
  flood->killed_pid = helper_pid (flood->remote);
}

/* A helper killed with SIGKILL in the middle of a flood: every request
 * completes exactly once (a reply, or CLOSED for those in flight), the
 * helper restarts, and the flood goes on in the new process. */
static void
test_subprocess_restart (void)
{
  g_autoptr(SparkSubprocess) sub = helper_new ();
  Flood flood = { 0 };
  gint64 new_pid;

  flood_start (&flood, sub, 10);
  flood.n = 4000;
  flood.kill_at = 500;
  for (guint i = 0; i < 64; i++)
    flood_send (&flood);
  while (flood.done < flood.n)
    g_main_context_iteration (NULL, TRUE);

  g_assert_cmpuint (flood.ok + flood.closed, ==, flood.n);
  g_test_message ("%u replies, %u CLOSED", flood.ok, flood.closed);
  /* Only what was sent to the dead process can have failed: the window
   * of 64 in flight when it died, and at most one more per reply it had
   * already written (each frees a slot before the death is noticed).
   * What was sent after that waited for the new process. */
  g_assert_cmpuint (flood.closed, <=, 2 * 64);
  while (flood.restarted < 1)
    g_main_context_iteration (NULL, TRUE);
  g_assert_cmpuint (flood.restarted, ==, 1);
  g_assert_false (flood.gave_up);

  /* Work goes on, in another process. */
  new_pid = helper_pid (flood.remote);
  g_assert_cmpint (new_pid, !=, flood.killed_pid);
  g_assert_cmpuint (flood.ok, >, flood.kill_at);
  g_object_unref (flood.remote);
}

/* The same with everything sent at once: most requests wait for an
 * in-flight slot when the helper dies; those move to the new process, and
 * only those sent to the dead one fail. */
static void
test_subprocess_restart_queued (void)
{
  g_autoptr(SparkSubprocess) sub = helper_new ();
  Flood flood = { 0 };

  flood_start (&flood, sub, 10);
  flood.n = 2000;
  flood.kill_at = 50;
  while (flood.sent < flood.n)
    flood_send (&flood);
  while (flood.done < flood.n)
    g_main_context_iteration (NULL, TRUE);

  g_test_message ("%u replies, %u CLOSED", flood.ok, flood.closed);
  g_assert_cmpuint (flood.ok + flood.closed, ==, flood.n);
  /* At most the slots in flight, twice (see above); the rest, never
   * sent, moved to the new process. */
  g_assert_cmpuint (flood.closed, <=, 2 * SPARK_DBUS_MAX_IN_FLIGHT);
  while (flood.restarted < 1)
    g_main_context_iteration (NULL, TRUE);
  g_assert_false (flood.gave_up);
  g_assert_cmpint (helper_pid (flood.remote), !=, flood.killed_pid);
  g_object_unref (flood.remote);
}

/* As above, and the order holds: what waited in the dead process's queue
 * runs in the new one before what was sent during the restart, and every
 * request that replied did so in the order it was sent. */
static void
test_subprocess_restart_order (void)
{
  g_autoptr(SparkSubprocess) sub = helper_new ();
  Flood flood = { 0 };
  guint32 last = 0;

  flood_start (&flood, sub, 100);
  flood.ok_ids = g_array_new (FALSE, FALSE, sizeof (guint32));
  flood.n = 1000;
  flood.kill_at = 20;
  flood.n_late = 10;
  while (flood.sent < flood.n)
    flood_send (&flood);
  while (flood.done < flood.n + flood.n_extra)
    g_main_context_iteration (NULL, TRUE);

  g_test_message ("%u replies, %u CLOSED", flood.ok, flood.closed);
  g_assert_cmpuint (flood.n_extra, ==, 10);   /* the late ones were sent */
  g_assert_cmpuint (flood.ok + flood.closed, ==, flood.n + flood.n_extra);
  g_assert_cmpuint (flood.ok_ids->len, ==, flood.ok);
  for (guint i = 0; i < flood.ok_ids->len; i++)
    {
      guint32 id = g_array_index (flood.ok_ids, guint32, i);

      if (i > 0)
        g_assert_cmpuint (id, >, last);
      last = id;
    }
  /* The late ones replied, last. */
  g_assert_cmpuint (last, ==, LATE_ID + 9);
  g_assert_cmpuint (flood.restarted, ==, 1);
  g_array_unref (flood.ok_ids);
  g_object_unref (flood.remote);
}

static gpointer
send_command_blocking (gpointer data)
{
  GError *error = NULL;
  gboolean sent = spark_dispatcher_send_command (data, "log", NULL, NULL, &error);

  g_assert_no_error (error);
  return GINT_TO_POINTER (sent);
}

/* Before the first process is up, as during a restart: messages wait for
 * it (a blocking send blocks), a try-send finds no room. */
static void
test_subprocess_before_spawn (void)
{
  g_autoptr(SparkSubprocess) sub = helper_new ();
  g_autoptr(SparkDispatcher) remote = spark_subprocess_create_dispatcher (sub);
  SparkTestOutcome outcome = { 0 };
  SparkTestOutcome command = { 0 };
  GThread *blocked;
  GError *error = NULL;

  g_assert_false (spark_dispatcher_try_send_command (remote, "log", NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_FULL);
  g_clear_error (&error);

  spark_dispatcher_request_full (remote, "echo", g_variant_new_int32 (7), G_VARIANT_TYPE_INT32, NULL,
                                 spark_test_outcome_cb, &outcome, NULL);
  spark_dispatcher_send_command_async (remote, "log", NULL, NULL, on_command_sent, &command);
  blocked = g_thread_new ("blocked", send_command_blocking, remote);
  g_assert_null (spark_subprocess_dup_identifier (sub));
  g_assert_false (g_atomic_int_get (&outcome.done));
  g_assert_false (g_atomic_int_get (&command.done));

  g_assert_true (spark_subprocess_spawn (sub, &error));
  g_assert_no_error (error);
  spark_test_wait_flag (NULL, &outcome.done);
  g_assert_no_error (outcome.error);
  g_assert_cmpint (g_variant_get_int32 (outcome.reply), ==, 7);
  spark_test_outcome_clear (&outcome);
  spark_test_wait_flag (NULL, &command.done);
  g_assert_no_error (command.error);
  g_assert_true (GPOINTER_TO_INT (g_thread_join (blocked)));
}

/* No restarts allowed: the first death ends the module, with a reason. */
static void
test_subprocess_give_up (void)
{
  g_autoptr(SparkSubprocess) sub = helper_new ();
  g_autoptr(SparkDispatcher) remote = spark_subprocess_create_dispatcher (sub);
  Flood flood = { 0 };
  GError *error = NULL;
  GVariant *reply;

  g_signal_connect (sub, "gave-up", G_CALLBACK (on_gave_up), &flood);
  g_assert_true (spark_subprocess_spawn (sub, &error));
  g_assert_cmpint (kill ((pid_t) helper_pid (remote), SIGKILL), ==, 0);
  while (!flood.gave_up)
    g_main_context_iteration (NULL, TRUE);
  g_assert_error (flood.gave_up_error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_assert_nonnull (strstr (flood.gave_up_error->message, "signal 9"));
  g_clear_error (&flood.gave_up_error);

  reply = spark_dispatcher_request_sync (remote, "pid", NULL, NULL, NULL, &error);
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_assert_nonnull (strstr (error->message, "signal 9"));
  g_assert_null (reply);
  g_clear_error (&error);
  g_assert_false (spark_dispatcher_try_send_command (remote, "log", NULL, &error));
  g_assert_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_CLOSED);
  g_clear_error (&error);
}

int
main (int   argc,
      char *argv[])
{
  int ret;

  g_test_init (&argc, &argv, NULL);

  test_bus = g_test_dbus_new (G_TEST_DBUS_NONE);
  g_test_dbus_up (test_bus);

#define ADD(path, options, func) \
  g_test_add ("/spark/dbus/" path, Fixture, options, fixture_setup, func, fixture_teardown)

  ADD ("bus/request/round-trip", &on_bus, test_request_round_trip);
  ADD ("peer/request/round-trip", &on_peer, test_request_round_trip);
  ADD ("bus/request/async", &on_bus, test_request_async);
  ADD ("peer/request/async", &on_peer, test_request_async);
  ADD ("bus/request/errors", &on_bus, test_request_errors);
  ADD ("peer/request/errors", &on_peer, test_request_errors);
  ADD ("bus/request/cancel", &on_bus, test_request_cancel);
  ADD ("peer/request/cancel", &on_peer, test_request_cancel);
  ADD ("bus/request/timeout", &on_bus, test_request_timeout);
  ADD ("bus/request/deadline", &on_bus, test_request_deadline);
  ADD ("bus/request/in-flight", &on_bus, test_request_in_flight);
  ADD ("bus/reply-limit", &on_bus, test_bus_reply_limit);
  ADD ("bus/command/full", &on_bus_bounded, test_command_full);
  ADD ("bus/command/cancel-wait", &on_bus_bounded, test_command_cancel_wait);
  ADD ("bus/shutdown", &on_bus, test_shutdown);
  ADD ("peer/shutdown", &on_peer, test_shutdown);
  ADD ("bus/peer-vanished", &on_bus, test_peer_vanished);
  ADD ("peer/peer-vanished", &on_peer, test_peer_vanished);
  ADD ("peer/peer-vanished-sync", &on_peer, test_peer_vanished_sync);
  ADD ("bus/peer-vanished-sync", &on_bus, test_peer_vanished_sync);
  ADD ("bus/unexported", &on_bus, test_unexported);
  ADD ("bus/introspect", &on_bus, test_introspect);
  ADD ("bus/gdbus-call", &on_bus, test_gdbus_call);
  ADD ("bus/cancel-all", &on_bus, test_cancel_all);
  ADD ("peer/cancel-all", &on_peer, test_cancel_all);
  ADD ("bus/priority", &on_bus, test_priority);
  ADD ("peer/priority", &on_peer, test_priority);
  ADD ("bus/would-deadlock", &on_bus, test_would_deadlock);
  ADD ("peer/would-deadlock", &on_peer, test_would_deadlock);
  ADD ("bus/python-client", &on_bus, test_python_client);
  g_test_add_func ("/spark/dbus/bus/gjs-server", test_gjs_server);
  g_test_add_func ("/spark/dbus/helper-process/basic", test_subprocess_basic);
  g_test_add_func ("/spark/dbus/helper-process/serve-alone", test_subprocess_serve_alone);
  g_test_add_func ("/spark/dbus/helper-process/restart", test_subprocess_restart);
  g_test_add_func ("/spark/dbus/helper-process/restart-queued", test_subprocess_restart_queued);
  g_test_add_func ("/spark/dbus/helper-process/restart-order", test_subprocess_restart_order);
  g_test_add_func ("/spark/dbus/helper-process/give-up", test_subprocess_give_up);
  g_test_add_func ("/spark/dbus/helper-process/before-spawn", test_subprocess_before_spawn);

  ret = g_test_run ();

  g_test_dbus_down (test_bus);
  g_object_unref (test_bus);
  return ret;
}
