/* spark-async-result-private.h: the outcome of request_async()
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

#define SPARK_TYPE_ASYNC_RESULT (spark_async_result_get_type ())
G_DECLARE_FINAL_TYPE (SparkAsyncResult, spark_async_result, SPARK, ASYNC_RESULT, GObject)

SparkAsyncResult *spark_async_result_new      (GObject           *source_object,
                                               gpointer           source_tag,
                                               gpointer           user_data,
                                               GVariant          *reply,
                                               GError            *error);
gboolean          spark_async_result_is_valid (GAsyncResult      *result,
                                               gpointer           source_object,
                                               gpointer           source_tag);
GVariant         *spark_async_result_propagate (SparkAsyncResult *self,
                                                GError          **error);

G_END_DECLS
