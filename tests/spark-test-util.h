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

/* Iterates @context until *@counter reaches @target (read atomically). */
void spark_test_wait_count (GMainContext *context,
                            gint         *counter,
                            gint          target);

/* Waits for @server to stop (shutdown_async with @mode), iterating the
 * calling thread's thread-default context, which must be the server's
 * owner context. */
void spark_test_shutdown (SparkModuleServer *server,
                          SparkShutdownMode  mode);

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
