/* spark-module-server.h
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#if !defined(SPARK_INSIDE) && !defined(SPARK_COMPILATION)
# error "Only <spark-channel.h> can be included directly."
#endif

#include <gio/gio.h>

#include "spark-dispatcher.h"
#include "spark-handler.h"
#include "spark-version-macros.h"

G_BEGIN_DECLS

/**
 * SparkShutdownMode:
 * @SPARK_SHUTDOWN_MODE_DRAIN: handle everything already queued, then stop
 * @SPARK_SHUTDOWN_MODE_ABORT: stop now: queued requests fail with
 *   %SPARK_CHANNEL_ERROR_CLOSED, queued commands are dropped and the running
 *   handler's cancellable is cancelled
 *
 * How [method@Spark.ModuleServer.shutdown_async] stops a server. Both modes
 * close the mailbox at once.
 *
 * Since: 1.0
 */
typedef enum {
  SPARK_SHUTDOWN_MODE_DRAIN,
  SPARK_SHUTDOWN_MODE_ABORT,
} SparkShutdownMode;

/**
 * SparkOverflowPolicy:
 * @SPARK_OVERFLOW_WAIT: senders wait for room (blocking calls block, async
 *   ones wait without blocking, try calls fail with
 *   %SPARK_CHANNEL_ERROR_FULL)
 * @SPARK_OVERFLOW_FAIL: every send fails at once with
 *   %SPARK_CHANNEL_ERROR_FULL
 * @SPARK_OVERFLOW_DROP_NEWEST: the new message is dropped
 * @SPARK_OVERFLOW_DROP_OLDEST: the oldest queued message of the lowest
 *   priority, no higher than the new message's, is dropped to make room
 *   (the new one is, if all queued ones have a higher priority)
 * @SPARK_OVERFLOW_COALESCE: a new command replaces the newest queued
 *   command of the same name and priority: that one is dropped, the new
 *   one joins the end of the queue (so no sender's messages change order);
 *   requests, and commands with no such one queued, wait for room as with
 *   %SPARK_OVERFLOW_WAIT
 * @SPARK_OVERFLOW_COALESCE_KEY: as %SPARK_OVERFLOW_COALESCE, for a queued
 *   command of the same name, priority and key (the key of
 *   %SPARK_ORDERING_KEY: the parameters if they are a string, or the first
 *   member of a tuple of parameters if it is one; commands without a key
 *   match each other): progress reports of several jobs, each its own
 *   key, each keep their newest
 *
 * What a bounded mailbox does with a message that finds it full (see
 * [property@Spark.ModuleServer:overflow]). Nothing is dropped silently:
 * a dropped request completes with %SPARK_CHANNEL_ERROR_DROPPED, and
 * dropped commands are counted and reported by
 * [signal@Spark.ModuleServer::messages-dropped]. A send that dropped
 * a message, its own or another, succeeds.
 *
 * "Full" counts what [property@Spark.ModuleServer:pending] counts: the
 * messages still queued and those the server has taken in its current
 * batch but not begun. The policies only act on the messages still
 * queued: one in the taken batch is never dropped or replaced. So with
 * the room all taken by that batch, %SPARK_OVERFLOW_DROP_OLDEST drops the
 * new message, and %SPARK_OVERFLOW_COALESCE finds no command to replace
 * (the new one waits, a try fails with %SPARK_CHANNEL_ERROR_FULL) until
 * the server begins its next message.
 *
 * Since: 1.0
 */
typedef enum {
  SPARK_OVERFLOW_WAIT,
  SPARK_OVERFLOW_FAIL,
  SPARK_OVERFLOW_DROP_NEWEST,
  SPARK_OVERFLOW_DROP_OLDEST,
  SPARK_OVERFLOW_COALESCE,
  SPARK_OVERFLOW_COALESCE_KEY,
} SparkOverflowPolicy;

/**
 * SparkOrdering:
 * @SPARK_ORDERING_NONE: no order between workers: any idle worker takes
 *   the next message
 * @SPARK_ORDERING_NAME: messages of the same name are handled in order,
 *   one at a time
 * @SPARK_ORDERING_KEY: messages of the same key are handled in order, one
 *   at a time; the key is the parameters when they are a string (or an
 *   object path or signature), or the first member of a tuple of
 *   parameters when that is one; messages without a key are in no order
 *
 * How a pool of [property@Spark.ModuleServer:workers] keeps related
 * messages in order (see [property@Spark.ModuleServer:ordering]). A
 * message whose key another worker holds (it is handling a message of that
 * key) goes to that worker, after the ones of that key it has already: so
 * messages of one key are handled in the order the pool took them, which
 * for one sender and one priority is the order they were sent, and never
 * two at once. A worker holds a key while its handler call runs.
 *
 * With one worker every message is handled in order, whatever the
 * ordering.
 *
 * Since: 1.0
 */
typedef enum {
  SPARK_ORDERING_NONE,
  SPARK_ORDERING_NAME,
  SPARK_ORDERING_KEY,
} SparkOrdering;

#define SPARK_TYPE_MODULE_SERVER (spark_module_server_get_type ())

SPARK_AVAILABLE_IN_1_0
G_DECLARE_FINAL_TYPE (SparkModuleServer, spark_module_server, SPARK, MODULE_SERVER, GObject)

SPARK_AVAILABLE_IN_1_0
SparkModuleServer *spark_module_server_new               (SparkHandler        *handler);
SPARK_AVAILABLE_IN_1_0
SparkHandler      *spark_module_server_get_handler       (SparkModuleServer   *self);
SPARK_AVAILABLE_IN_1_0
const char        *spark_module_server_get_name          (SparkModuleServer   *self);
SPARK_AVAILABLE_IN_1_0
void               spark_module_server_set_name          (SparkModuleServer   *self,
                                                          const char          *name);
SPARK_AVAILABLE_IN_1_0
guint              spark_module_server_get_capacity      (SparkModuleServer   *self);
SPARK_AVAILABLE_IN_1_0
void               spark_module_server_set_capacity      (SparkModuleServer   *self,
                                                          guint                capacity);
SPARK_AVAILABLE_IN_1_0
SparkOverflowPolicy spark_module_server_get_overflow    (SparkModuleServer   *self);
SPARK_AVAILABLE_IN_1_0
void               spark_module_server_set_overflow      (SparkModuleServer   *self,
                                                          SparkOverflowPolicy  overflow);
SPARK_AVAILABLE_IN_1_0
guint              spark_module_server_get_max_invocations (SparkModuleServer *self);
SPARK_AVAILABLE_IN_1_0
void               spark_module_server_set_max_invocations (SparkModuleServer *self,
                                                            guint              max_invocations);
SPARK_AVAILABLE_IN_1_0
guint              spark_module_server_get_workers       (SparkModuleServer   *self);
SPARK_AVAILABLE_IN_1_0
void               spark_module_server_set_workers       (SparkModuleServer   *self,
                                                          guint                workers);
SPARK_AVAILABLE_IN_1_0
SparkOrdering      spark_module_server_get_ordering      (SparkModuleServer   *self);
SPARK_AVAILABLE_IN_1_0
void               spark_module_server_set_ordering      (SparkModuleServer   *self,
                                                          SparkOrdering        ordering);
SPARK_AVAILABLE_IN_1_0
guint              spark_module_server_get_metrics_interval (SparkModuleServer *self);
SPARK_AVAILABLE_IN_1_0
void               spark_module_server_set_metrics_interval (SparkModuleServer *self,
                                                             guint              interval_msec);
SPARK_AVAILABLE_IN_1_0
GVariant          *spark_module_server_get_metrics       (SparkModuleServer   *self);
SPARK_AVAILABLE_IN_1_0
gboolean           spark_module_server_get_running       (SparkModuleServer   *self);
SPARK_AVAILABLE_IN_1_0
guint              spark_module_server_get_pending       (SparkModuleServer   *self);
SPARK_AVAILABLE_IN_1_0
gboolean           spark_module_server_start             (SparkModuleServer   *self,
                                                          GMainContext        *context,
                                                          GError             **error);
SPARK_AVAILABLE_IN_1_0
gboolean           spark_module_server_start_in_thread   (SparkModuleServer   *self,
                                                          GError             **error);
SPARK_AVAILABLE_IN_1_0
SparkDispatcher   *spark_module_server_create_dispatcher (SparkModuleServer   *self);
SPARK_AVAILABLE_IN_1_0
void               spark_module_server_shutdown_async    (SparkModuleServer   *self,
                                                          SparkShutdownMode    mode,
                                                          GCancellable        *cancellable,
                                                          GAsyncReadyCallback  callback,
                                                          gpointer             user_data);
SPARK_AVAILABLE_IN_1_0
gboolean           spark_module_server_shutdown_finish   (SparkModuleServer   *self,
                                                          GAsyncResult        *result,
                                                          GError             **error);

G_END_DECLS
