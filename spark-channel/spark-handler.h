/* spark-handler.h
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#if !defined(SPARK_INSIDE) && !defined(SPARK_COMPILATION)
# error "Only <spark-channel.h> can be included directly."
#endif

#include <gio/gio.h>

#include "spark-invocation.h"
#include "spark-version-macros.h"

G_BEGIN_DECLS

#define SPARK_TYPE_HANDLER (spark_handler_get_type ())

SPARK_AVAILABLE_IN_1_0
G_DECLARE_INTERFACE (SparkHandler, spark_handler, SPARK, HANDLER, GObject)

/**
 * SparkHandlerFlags:
 * @SPARK_HANDLER_FLAGS_NONE: nothing declared: the handler is called by
 *   one thread at a time
 * @SPARK_HANDLER_FLAGS_CONCURRENT: the handler's methods may be called by
 *   several threads at once (it keeps no state, or locks what it keeps),
 *   so a [class@Spark.ModuleServer] may serve it with a pool of
 *   [property@Spark.ModuleServer:workers]
 *
 * What a handler declares about itself, through
 * [vfunc@Spark.Handler.get_flags].
 *
 * Since: 1.0
 */
typedef enum /*< flags >*/ {
  SPARK_HANDLER_FLAGS_NONE       = 0,
  SPARK_HANDLER_FLAGS_CONCURRENT = 1 << 0,
} SparkHandlerFlags;

/**
 * SparkHandlerInterface:
 * @parent_iface: the parent interface
 * @handle_request: handles a request and returns its reply at once
 * @handle_command: handles a command (a message without a reply)
 * @handle_invocation: handles a request whose reply may come later, through
 *   the [class@Spark.Invocation]; the default calls @handle_request
 * @get_flags: what the handler declares about itself; the default declares
 *   nothing (%SPARK_HANDLER_FLAGS_NONE)
 *
 * The virtual methods of [iface@Spark.Handler]. Implement @handle_request
 * (or @handle_invocation) for requests and @handle_command for commands;
 * a kind of message whose method is missing fails with
 * %SPARK_CHANNEL_ERROR_NOT_SUPPORTED.
 *
 * Since: 1.0
 */
struct _SparkHandlerInterface
{
  GTypeInterface parent_iface;

  GVariant *(*handle_request)    (SparkHandler    *self,
                                  const char      *name,
                                  GVariant        *parameters,
                                  GCancellable    *cancellable,
                                  GError         **error);
  gboolean  (*handle_command)    (SparkHandler    *self,
                                  const char      *name,
                                  GVariant        *parameters,
                                  GCancellable    *cancellable,
                                  GError         **error);
  void      (*handle_invocation) (SparkHandler    *self,
                                  SparkInvocation *invocation);
  SparkHandlerFlags (*get_flags) (SparkHandler    *self);

  /*< private >*/
  gpointer padding[7];
};

SPARK_AVAILABLE_IN_1_0
GVariant *spark_handler_handle_request    (SparkHandler     *self,
                                           const char       *name,
                                           GVariant         *parameters,
                                           GCancellable     *cancellable,
                                           GError          **error);
SPARK_AVAILABLE_IN_1_0
gboolean  spark_handler_handle_command    (SparkHandler     *self,
                                           const char       *name,
                                           GVariant         *parameters,
                                           GCancellable     *cancellable,
                                           GError          **error);
SPARK_AVAILABLE_IN_1_0
void      spark_handler_handle_invocation (SparkHandler     *self,
                                           SparkInvocation  *invocation);

SPARK_AVAILABLE_IN_1_0
SparkHandlerFlags spark_handler_get_flags (SparkHandler     *self);

G_END_DECLS
