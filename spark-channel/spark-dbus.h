/* spark-dbus.h: module servers and dispatchers across D-Bus
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#if !defined(SPARK_INSIDE) && !defined(SPARK_COMPILATION)
# error "Only <spark-channel.h> can be included directly."
#endif

#include <gio/gio.h>

#include "spark-dispatcher.h"
#include "spark-module-server.h"
#include "spark-version-macros.h"

G_BEGIN_DECLS

/**
 * SPARK_DBUS_INTERFACE:
 *
 * The D-Bus interface an exported [class@Spark.ModuleServer] implements,
 * `org.gnome.SparkChannel.Module1`. See the “Across processes” guide for
 * its methods and wire format.
 *
 * Since: 1.0
 */
#define SPARK_DBUS_INTERFACE "org.gnome.SparkChannel.Module1"

/**
 * SPARK_DBUS_MAX_IN_FLIGHT:
 *
 * How many calls expecting a reply a remote dispatcher keeps in flight on
 * one [class@Gio.DBusConnection], all dispatchers on it together; later
 * ones wait in order, without blocking. A message bus refuses more
 * pending replies than its limit (128 for a test bus).
 *
 * Since: 1.0
 */
#define SPARK_DBUS_MAX_IN_FLIGHT 128

SPARK_AVAILABLE_IN_1_0
gboolean         spark_module_server_export     (SparkModuleServer  *self,
                                                 GDBusConnection    *connection,
                                                 const char         *object_path,
                                                 GError            **error);
SPARK_AVAILABLE_IN_1_0
gboolean         spark_module_server_unexport   (SparkModuleServer  *self,
                                                 GDBusConnection    *connection,
                                                 const char         *object_path);

SPARK_AVAILABLE_IN_1_0
SparkDispatcher *spark_dispatcher_new_for_dbus  (GDBusConnection    *connection,
                                                 const char         *bus_name,
                                                 const char         *object_path);

G_END_DECLS
