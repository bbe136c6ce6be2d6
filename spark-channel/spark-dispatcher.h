/* spark-dispatcher.h
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#if !defined(SPARK_INSIDE) && !defined(SPARK_COMPILATION)
# error "Only <spark-channel.h> can be included directly."
#endif

#include <gio/gio.h>

#include "spark-version-macros.h"

G_BEGIN_DECLS

/**
 * SparkPriority:
 * @SPARK_PRIORITY_DEFAULT: the usual priority
 * @SPARK_PRIORITY_HIGH: handled before every queued message of default or
 *   low priority, even one already taken by the server
 * @SPARK_PRIORITY_LOW: handled after every queued message of default or
 *   high priority
 *
 * How urgent a dispatcher's messages are (see
 * [property@Spark.Dispatcher:priority]). Within a priority, each sender's
 * messages are handled in the order it sent them. A priority does not
 * take a bounded mailbox's capacity away from others: a high message
 * waits for room like any other.
 *
 * Since: 1.0
 */
typedef enum {
  SPARK_PRIORITY_DEFAULT,
  SPARK_PRIORITY_HIGH,
  SPARK_PRIORITY_LOW,
} SparkPriority;

/**
 * SparkReplyFunc:
 * @reply: (nullable): the reply, or %NULL on error
 * @error: (nullable): the error, or %NULL on success
 * @user_data: the data given to spark_dispatcher_request_full()
 *
 * Receives the outcome of a request sent with
 * [method@Spark.Dispatcher.request_full]. It runs exactly once, on the
 * thread-default main context of the caller at the time of the call. Both
 * @reply and @error belong to the library: reference or copy them to keep
 * them.
 *
 * Since: 1.0
 */
typedef void (*SparkReplyFunc) (GVariant     *reply,
                                const GError *error,
                                gpointer      user_data);

/**
 * SparkProgressFunc:
 * @progress: what the handler reported, with
 *   [method@Spark.Invocation.send_progress]
 * @user_data: the data given with the function
 *
 * Receives the progress of a request sent with
 * [method@Spark.Dispatcher.request_with_progress_async], on the
 * thread-default main context of the caller at the time of the call, in
 * the order the handler sent it, and never after the request's callback.
 * @progress belongs to the library: reference it to keep it.
 *
 * Since: 1.0
 */
typedef void (*SparkProgressFunc) (GVariant *progress,
                                   gpointer  user_data);

#define SPARK_TYPE_DISPATCHER (spark_dispatcher_get_type ())

SPARK_AVAILABLE_IN_1_0
G_DECLARE_FINAL_TYPE (SparkDispatcher, spark_dispatcher, SPARK, DISPATCHER, GObject)

SPARK_AVAILABLE_IN_1_0
SparkPriority    spark_dispatcher_get_priority (SparkDispatcher      *self);
SPARK_AVAILABLE_IN_1_0
void      spark_dispatcher_set_priority        (SparkDispatcher      *self,
                                                SparkPriority         priority);
SPARK_AVAILABLE_IN_1_0
SparkDispatcher *spark_dispatcher_with_priority (SparkDispatcher     *self,
                                                 SparkPriority        priority);
SPARK_AVAILABLE_IN_1_0
guint     spark_dispatcher_get_rate_limit      (SparkDispatcher      *self);
SPARK_AVAILABLE_IN_1_0
void      spark_dispatcher_set_rate_limit      (SparkDispatcher      *self,
                                                guint                 messages_per_second);
SPARK_AVAILABLE_IN_1_0
guint     spark_dispatcher_get_rate_burst      (SparkDispatcher      *self);
SPARK_AVAILABLE_IN_1_0
void      spark_dispatcher_set_rate_burst      (SparkDispatcher      *self,
                                                guint                 burst);
SPARK_AVAILABLE_IN_1_0
void      spark_dispatcher_cancel_all          (SparkDispatcher      *self);
SPARK_AVAILABLE_IN_1_0
gint      spark_dispatcher_get_timeout         (SparkDispatcher      *self);
SPARK_AVAILABLE_IN_1_0
void      spark_dispatcher_set_timeout         (SparkDispatcher      *self,
                                                gint                  timeout_msec);
SPARK_AVAILABLE_IN_1_0
void      spark_dispatcher_request_async       (SparkDispatcher      *self,
                                                const char           *name,
                                                GVariant             *parameters,
                                                const GVariantType   *reply_type,
                                                GCancellable         *cancellable,
                                                GAsyncReadyCallback   callback,
                                                gpointer              user_data);
SPARK_AVAILABLE_IN_1_0
GVariant *spark_dispatcher_request_finish      (SparkDispatcher      *self,
                                                GAsyncResult         *result,
                                                GError              **error);
SPARK_AVAILABLE_IN_1_0
GVariant *spark_dispatcher_request_sync        (SparkDispatcher      *self,
                                                const char           *name,
                                                GVariant             *parameters,
                                                const GVariantType   *reply_type,
                                                GCancellable         *cancellable,
                                                GError              **error);
SPARK_AVAILABLE_IN_1_0
void      spark_dispatcher_request_full        (SparkDispatcher      *self,
                                                const char           *name,
                                                GVariant             *parameters,
                                                const GVariantType   *reply_type,
                                                GCancellable         *cancellable,
                                                SparkReplyFunc        reply_func,
                                                gpointer              user_data,
                                                GDestroyNotify        destroy);
SPARK_AVAILABLE_IN_1_0
void      spark_dispatcher_request_with_progress_async (SparkDispatcher     *self,
                                                        const char          *name,
                                                        GVariant            *parameters,
                                                        const GVariantType  *reply_type,
                                                        GCancellable        *cancellable,
                                                        SparkProgressFunc    progress_func,
                                                        gpointer             progress_data,
                                                        GDestroyNotify       progress_destroy,
                                                        GAsyncReadyCallback  callback,
                                                        gpointer             user_data);
SPARK_AVAILABLE_IN_1_0
gboolean  spark_dispatcher_send_command        (SparkDispatcher      *self,
                                                const char           *name,
                                                GVariant             *parameters,
                                                GCancellable         *cancellable,
                                                GError              **error);
SPARK_AVAILABLE_IN_1_0
gboolean  spark_dispatcher_try_send_command    (SparkDispatcher      *self,
                                                const char           *name,
                                                GVariant             *parameters,
                                                GError              **error);
SPARK_AVAILABLE_IN_1_0
gboolean  spark_dispatcher_broadcast_command   (SparkDispatcher      *self,
                                                const char           *name,
                                                GVariant             *parameters,
                                                GError              **error);
SPARK_AVAILABLE_IN_1_0
void      spark_dispatcher_send_command_async  (SparkDispatcher      *self,
                                                const char           *name,
                                                GVariant             *parameters,
                                                GCancellable         *cancellable,
                                                GAsyncReadyCallback   callback,
                                                gpointer              user_data);
SPARK_AVAILABLE_IN_1_0
gboolean  spark_dispatcher_send_command_finish (SparkDispatcher      *self,
                                                GAsyncResult         *result,
                                                GError              **error);
SPARK_AVAILABLE_IN_1_0
gboolean  spark_dispatcher_send_shutdown       (SparkDispatcher      *self,
                                                GCancellable         *token,
                                                GError              **error);

G_END_DECLS
