/* spark-invocation.h
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

#define SPARK_TYPE_INVOCATION (spark_invocation_get_type ())

SPARK_AVAILABLE_IN_1_0
G_DECLARE_FINAL_TYPE (SparkInvocation, spark_invocation, SPARK, INVOCATION, GObject)

SPARK_AVAILABLE_IN_1_0
const char   *spark_invocation_get_name             (SparkInvocation *self);
SPARK_AVAILABLE_IN_1_0
GVariant     *spark_invocation_get_parameters       (SparkInvocation *self);
SPARK_AVAILABLE_IN_1_0
GCancellable *spark_invocation_get_cancellable      (SparkInvocation *self);
SPARK_AVAILABLE_IN_1_0
void          spark_invocation_return_value         (SparkInvocation *self,
                                                     GVariant        *reply);
SPARK_AVAILABLE_IN_1_0
void          spark_invocation_send_progress        (SparkInvocation *self,
                                                     GVariant        *progress);
SPARK_AVAILABLE_IN_1_0
void          spark_invocation_return_error_literal (SparkInvocation *self,
                                                     GQuark           domain,
                                                     gint             code,
                                                     const char      *message);
SPARK_AVAILABLE_IN_1_0
void          spark_invocation_return_gerror        (SparkInvocation *self,
                                                     const GError    *error);
SPARK_AVAILABLE_IN_1_0
void          spark_invocation_take_error           (SparkInvocation *self,
                                                     GError          *error);

G_END_DECLS
