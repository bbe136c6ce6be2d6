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

/* Called (from whichever thread found out) with a request that the
 * transport accepted but never sent because its peer was gone: the sender's
 * reference of @req, to send elsewhere. @from is the transport. */
typedef void (*SparkDBusOrphanFunc) (SparkTransport *from,
                                     SparkRequest   *req,
                                     gpointer        data);

/* Before the transport is used; @destroy frees @data with the transport. */
void            spark_dbus_transport_set_orphan_func (SparkTransport      *transport,
                                                      SparkDBusOrphanFunc  func,
                                                      gpointer             data,
                                                      GDestroyNotify       destroy);

G_END_DECLS
