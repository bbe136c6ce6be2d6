/* spark-test-util.h: helpers shared by the C tests
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include <spark-channel.h>

G_BEGIN_DECLS

/* Iterates @context (NULL: the thread-default one) until *@flag is non-zero
 * (read atomically). Tests wait this way, never with sleeps. The flag must
 * be set from a callback on @context, or by a thread that then wakes
 * @context (g_main_context_wakeup), or the wait sleeps on. */
void spark_test_wait_flag (GMainContext *context,
                           gint         *flag);

/* Watches an object that may be finalized on another thread (a server
 * whose last reference is its thread's): g_object_add_weak_pointer() is
 * not thread-safe, this is. spark_test_watch_wait() iterates @context
 * (NULL: the thread-default one) until the object is gone; the weak
 * notify wakes @context. The watch must outlive the object. */
typedef struct
{
  gint          finalized;
  GMainContext *context;
} SparkTestWatch;

void     spark_test_watch_init      (SparkTestWatch *watch,
                                     gpointer        object,
                                     GMainContext   *context);
gboolean spark_test_watch_finalized (SparkTestWatch *watch);
void     spark_test_watch_wait      (SparkTestWatch *watch);

/* A server fixture ------------------------------------------------------------
 *
 * The frame most tests share: a handler, a SparkModuleServer for it, started
 * the way the test's options say, and a dispatcher to it; at the end the
 * server is stopped, every reference dropped, and the handler, server and
 * dispatcher are checked to be finalized (with SparkTestWatch: the server's
 * thread may drop the last references). A file embeds SparkTestServer in a
 * fixture of its own, with its scripted module next to it, and registers
 * tests with g_test_add(), their user data from spark_test_server_options().
 * Setup and teardown run on the test's thread with no context pushed. */

typedef enum
{
  SPARK_TEST_START_IN_THREAD,    /* spark_module_server_start_in_thread() */
  SPARK_TEST_START_ON_DEFAULT,   /* spark_module_server_start (NULL) from the
                                  * test's thread: the global default context */
  SPARK_TEST_START_NONE,         /* not started */
} SparkTestStart;

/* Zero-initialized: on its own thread, unbounded, unnamed, drained. */
typedef struct
{
  SparkTestStart     start;
  guint              capacity;          /* 0: unbounded */
  guint              max_invocations;   /* 0: the default */
  const char        *name;              /* the server's name, or NULL */
  SparkShutdownMode  shutdown;          /* how teardown stops a server still running */
  gconstpointer      data;              /* the test's own parameter */
} SparkTestServerOptions;

typedef struct
{
  SparkHandler                 *handler;      /* a reference */
  SparkModuleServer            *server;       /* a reference */
  SparkDispatcher              *dispatcher;   /* a reference: to server */
  const SparkTestServerOptions *options;      /* the test's user data */

  /*< private >*/
  SparkTestWatch                handler_watch;
  SparkTestWatch                server_watch;
  SparkTestWatch                dispatcher_watch;
} SparkTestServer;

/* A copy of @options whose data is @data, to register a test with: it lives
 * until spark_test_run() returns. From main() only. */
const SparkTestServerOptions *spark_test_server_options (const SparkTestServerOptions *options,
                                                         gconstpointer                 data);
/* g_test_run(), then frees the copies spark_test_server_options() made. */
int  spark_test_run               (void);

/* Creates a server for @handler (transfer full) as @options say (name,
 * capacity, max-invocations), starts it, and creates a dispatcher. */
void spark_test_server_setup      (SparkTestServer              *fixture,
                                   SparkHandler                 *handler,
                                   const SparkTestServerOptions *options);
/* Shuts the server down with the options' mode if it still runs, drops the
 * fixture's references (a test may have dropped one already and set it to
 * NULL), and asserts that the dispatcher, server and handler are
 * finalized: a test must not leave references of its own. */
void spark_test_server_teardown   (SparkTestServer              *fixture);

/* Iterates @context until *@counter reaches @target (read atomically). */
void spark_test_wait_count (GMainContext *context,
                            gint         *counter,
                            gint          target);

/* Waits for @server to stop (shutdown_async with @mode), iterating the
 * calling thread's thread-default context, which must be the server's
 * owner context. */
void spark_test_shutdown (SparkModuleServer *server,
                          SparkShutdownMode  mode);

/* Dispatches what is ready on @context (NULL: the thread-default one, as
 * for spark_test_wait_flag) without blocking. Pass g_main_context_default ()
 * for the global default context even while another one is pushed. */
void spark_test_iterate_pending (GMainContext *context);

/* A GAsyncReadyCallback for spark_module_server_shutdown_async(): asserts
 * that the shutdown succeeded, then sets the gint flag @user_data
 * (atomically), for spark_test_wait_flag. */
void spark_test_shutdown_done_cb (GObject      *source,
                                  GAsyncResult *result,
                                  gpointer      user_data);

/* The outcome of one request sent with spark_test_outcome_cb as its
 * SparkReplyFunc. Start from { 0 }, wait for @done with
 * spark_test_wait_flag, and free it with spark_test_outcome_clear. */
typedef struct
{
  gint      done;    /* atomic: the reply function has run */
  GVariant *reply;   /* a reference, or NULL */
  GError   *error;   /* a copy, or NULL */
} SparkTestOutcome;

/* A SparkReplyFunc whose @user_data is a SparkTestOutcome: asserts that it
 * runs once, with exactly one of @reply and @error, keeps a reference to
 * @reply or a copy of @error, and sets done. */
void spark_test_outcome_cb    (GVariant         *reply,
                               const GError     *error,
                               gpointer          user_data);
/* Frees what @outcome holds and resets it to { 0 } for another request. */
void spark_test_outcome_clear (SparkTestOutcome *outcome);

/* What SparkModuleServer::command-failed reported last, recorded by
 * spark_test_on_command_failed. Start from { 0 }, free with
 * spark_test_failure_clear. */
typedef struct
{
  gint      n;           /* atomic: failures seen */
  GThread  *thread;      /* the thread of the last emission */
  char     *name;        /* the last failed command's name */
  GVariant *parameters;  /* its parameters, a reference, or NULL */
  GError   *error;       /* a copy of its error */
} SparkTestFailure;

/* A SparkModuleServer::command-failed handler whose @user_data is a
 * SparkTestFailure: replaces what it holds with this failure, then
 * increments n (atomically; wait with spark_test_wait_count). */
void spark_test_on_command_failed (SparkModuleServer *server,
                                   const char        *name,
                                   GVariant          *parameters,
                                   GError            *error,
                                   gpointer           user_data);
/* Frees what @failure holds and resets it to { 0 }. */
void spark_test_failure_clear     (SparkTestFailure  *failure);

/* A gate that handler threads wait at until the test opens it. Once open,
 * it stays open. Embed it, and spark_test_gate_init/clear it. */
typedef struct
{
  GMutex   mutex;
  GCond    cond;
  gboolean open;   /* mutex */
} SparkTestGate;

/* Initializes @gate, closed. */
void     spark_test_gate_init  (SparkTestGate *gate);
/* Frees what @gate holds; nothing may wait at it any more. */
void     spark_test_gate_clear (SparkTestGate *gate);
/* Opens @gate, releasing every waiter, now and later. */
void     spark_test_gate_open  (SparkTestGate *gate);
/* Waits until @gate is open or, if @cancellable is not NULL, until it is
 * cancelled. Returns TRUE if the cancellable ended the wait (the gate is
 * still closed). */
gboolean spark_test_gate_wait  (SparkTestGate *gate,
                                GCancellable  *cancellable);

/* A log of the messages a scripted handler got, from any thread, in
 * handling order. Embed it, and spark_test_log_init/clear it. */
typedef struct
{
  GMutex     mutex;
  GPtrArray *entries;   /* mutex: char * */
} SparkTestLog;

/* Initializes @log, empty. */
void   spark_test_log_init   (SparkTestLog *log);
/* Frees @log's entries and what it holds. */
void   spark_test_log_clear  (SparkTestLog *log);
/* Appends "@name", or "@name:N" when @parameters is an int32 N. */
void   spark_test_log_append (SparkTestLog *log,
                              const char   *name,
                              GVariant     *parameters);
/* Empties @log. */
void   spark_test_log_reset  (SparkTestLog *log);
/* The number of entries. */
guint  spark_test_log_length (SparkTestLog *log);
/* The entries joined with spaces, for comparing (transfer full). */
char  *spark_test_log_dup    (SparkTestLog *log);

/* A handler type that overrides handle_invocation: every request's
 * invocation is appended to @invocations (a reference each), and
 * @on_invocation, if set, is called on the server's context. */
#define SPARK_TEST_TYPE_INVOCATION_HANDLER (spark_test_invocation_handler_get_type ())
G_DECLARE_FINAL_TYPE (SparkTestInvocationHandler, spark_test_invocation_handler,
                      SPARK_TEST, INVOCATION_HANDLER, GObject)

struct _SparkTestInvocationHandler
{
  GObject    parent_instance;

  GMutex     mutex;
  GPtrArray *invocations;   /* mutex: SparkInvocation, a reference each */
  gint       n_received;    /* atomic */

  void     (*on_invocation) (SparkTestInvocationHandler *self,
                             SparkInvocation            *invocation,
                             gpointer                    user_data);
  gpointer   user_data;
};

SparkTestInvocationHandler *spark_test_invocation_handler_new  (void);
/* Takes the oldest held invocation (transfer full), or NULL. */
SparkInvocation            *spark_test_invocation_handler_pop  (SparkTestInvocationHandler *self);

G_END_DECLS
