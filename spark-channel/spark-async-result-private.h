/* spark-async-result-private.h: the outcome of request_async()
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

#define SPARK_TYPE_ASYNC_RESULT (spark_async_result_get_type ())
G_DECLARE_FINAL_TYPE (SparkAsyncResult, spark_async_result, SPARK, ASYNC_RESULT, GObject)

/* Spare results for reuse, touched by one thread at a time: a reply
 * port's, used from its dispatch. */
typedef struct _SparkAsyncResultPool
{
  SparkAsyncResult *spare;
  guint             n_spare;
} SparkAsyncResultPool;

SparkAsyncResult *spark_async_result_obtain   (SparkAsyncResultPool *pool,
                                               GObject              *source_object,
                                               gpointer              source_tag,
                                               gpointer              user_data,
                                               GVariant             *reply,
                                               GError               *error);
void              spark_async_result_release  (SparkAsyncResultPool *pool,
                                               SparkAsyncResult     *self);
void              spark_async_result_pool_clear (SparkAsyncResultPool *pool);
gboolean          spark_async_result_is_valid (GAsyncResult      *result,
                                               gpointer           source_object,
                                               gpointer           source_tag);
GVariant         *spark_async_result_propagate (SparkAsyncResult *self,
                                                GError          **error);

G_END_DECLS
