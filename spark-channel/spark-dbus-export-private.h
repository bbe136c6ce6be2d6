/* spark-dbus-export-private.h: what the exports of this process know
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

/* Whether a blocking call on this thread to the module at @object_path
 * of @bus_name (nullable: the peer) over @connection would wait for
 * itself: that module is exported by this process, and this thread serves
 * the export (it owns the export's context, or exported it there) or the
 * module's server. Only what can be told without a round trip: a
 * well-known name is not resolved. */
gboolean spark_dbus_export_would_deadlock (GDBusConnection *connection,
                                           const char      *bus_name,
                                           const char      *object_path);

G_END_DECLS
