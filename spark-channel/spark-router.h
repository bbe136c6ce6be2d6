/* spark-router.h
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
#include "spark-module-server.h"
#include "spark-version-macros.h"

G_BEGIN_DECLS

#define SPARK_TYPE_ROUTER (spark_router_get_type ())

SPARK_AVAILABLE_IN_1_0
G_DECLARE_FINAL_TYPE (SparkRouter, spark_router, SPARK, ROUTER, GObject)

SPARK_AVAILABLE_IN_1_0
SparkRouter  *spark_router_new            (void);
SPARK_AVAILABLE_IN_1_0
gboolean      spark_router_add_handler    (SparkRouter        *self,
                                           const char         *pattern,
                                           SparkHandler       *handler,
                                           const GVariantType *parameter_type,
                                           const GVariantType *reply_type,
                                           GError            **error);
SPARK_AVAILABLE_IN_1_0
gboolean      spark_router_add_dispatcher (SparkRouter        *self,
                                           const char         *pattern,
                                           SparkDispatcher    *dispatcher,
                                           const GVariantType *parameter_type,
                                           const GVariantType *reply_type,
                                           GError            **error);
SPARK_AVAILABLE_IN_1_0
gboolean      spark_router_remove         (SparkRouter        *self,
                                           const char         *pattern);
SPARK_AVAILABLE_IN_1_0
char        **spark_router_list_patterns  (SparkRouter        *self);

SPARK_AVAILABLE_IN_1_0
gboolean      spark_router_set_overflow   (SparkRouter        *self,
                                           const char         *pattern,
                                           SparkOverflowPolicy overflow,
                                           GError            **error);
SPARK_AVAILABLE_IN_1_0
gboolean      spark_router_set_ordering   (SparkRouter        *self,
                                           const char         *pattern,
                                           SparkOrdering       ordering,
                                           GError            **error);
SPARK_AVAILABLE_IN_1_0
GVariant     *spark_router_get_metrics    (SparkRouter        *self);
SPARK_AVAILABLE_IN_1_0
gboolean      spark_router_get_concurrent (SparkRouter        *self);
SPARK_AVAILABLE_IN_1_0
void          spark_router_set_concurrent (SparkRouter        *self,
                                           gboolean            concurrent);

G_END_DECLS
