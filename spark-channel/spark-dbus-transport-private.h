/* spark-dbus-transport-private.h: a transport to a module on D-Bus
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include <gio/gio.h>

#include "spark-transport-private.h"

G_BEGIN_DECLS

/* (transfer full): a transport to the module exported at @object_path by
 * @bus_name (nullable on a peer-to-peer connection). */
SparkTransport *spark_dbus_transport_new (GDBusConnection *connection,
                                          const char      *bus_name,
                                          const char      *object_path);

G_END_DECLS
