/* spark-func-handler.h
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#if !defined(SPARK_INSIDE) && !defined(SPARK_COMPILATION)
# error "Only <spark-channel.h> can be included directly."
#endif

#include <gio/gio.h>

#include "spark-handler.h"
#include "spark-version-macros.h"

G_BEGIN_DECLS

/**
 * SparkRequestFunc:
 * @name: the request's name
 * @parameters: (nullable): the request's parameters
 * @cancellable: (nullable): cancelled when the request ends early
 * @user_data: the data given to spark_func_handler_new()
 * @error: return location for an error
 *
 * Handles a request for a handler made with spark_func_handler_new().
 *
 * Returns: (transfer full) (nullable): the reply, or %NULL with @error set
 *
 * Since: 1.0
 */
typedef GVariant *(*SparkRequestFunc) (const char    *name,
                                       GVariant      *parameters,
                                       GCancellable  *cancellable,
                                       gpointer       user_data,
                                       GError       **error);

/**
 * SparkCommandFunc:
 * @name: the command's name
 * @parameters: (nullable): the command's parameters
 * @cancellable: (nullable): cancelled when the server aborts
 * @user_data: the data given to spark_func_handler_new()
 * @error: return location for an error
 *
 * Handles a command for a handler made with spark_func_handler_new().
 *
 * Returns: %TRUE on success, %FALSE with @error set
 *
 * Since: 1.0
 */
typedef gboolean (*SparkCommandFunc) (const char    *name,
                                      GVariant      *parameters,
                                      GCancellable  *cancellable,
                                      gpointer       user_data,
                                      GError       **error);

SPARK_AVAILABLE_IN_1_0
SparkHandler *spark_func_handler_new (SparkRequestFunc request_func,
                                      SparkCommandFunc command_func,
                                      gpointer         user_data,
                                      GDestroyNotify   destroy);
SPARK_AVAILABLE_IN_1_0
SparkHandler *spark_func_handler_new_full (SparkHandlerFlags flags,
                                           SparkRequestFunc  request_func,
                                           SparkCommandFunc  command_func,
                                           gpointer          user_data,
                                           GDestroyNotify    destroy);

G_END_DECLS
