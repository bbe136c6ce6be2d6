/* spark-subprocess.h: a module in a helper process, supervised
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

#define SPARK_TYPE_SUBPROCESS (spark_subprocess_get_type ())

SPARK_AVAILABLE_IN_1_0
G_DECLARE_FINAL_TYPE (SparkSubprocess, spark_subprocess, SPARK, SUBPROCESS, GObject)

SPARK_AVAILABLE_IN_1_0
SparkSubprocess *spark_subprocess_new               (const char * const *argv);
SPARK_AVAILABLE_IN_1_0
gboolean         spark_subprocess_spawn             (SparkSubprocess    *self,
                                                     GError            **error);
SPARK_AVAILABLE_IN_1_0
SparkDispatcher *spark_subprocess_create_dispatcher (SparkSubprocess    *self);
SPARK_AVAILABLE_IN_1_0
char            *spark_subprocess_dup_identifier    (SparkSubprocess    *self);

SPARK_AVAILABLE_IN_1_0
gboolean         spark_subprocess_serve             (SparkHandler       *handler,
                                                     GError            **error);

G_END_DECLS
