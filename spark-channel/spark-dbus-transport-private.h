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

/* A message the transport accepted but never sent because its peer was
 * gone: a request (the sender's reference), or an asynchronous command
 * (its name, parameters, cancellable and task). */
typedef struct
{
  SparkRequest  *req;
  char          *name;
  GVariant      *parameters;   /* nullable */
  GCancellable  *cancellable;  /* nullable */
  GTask         *task;
  SparkPriority  priority;
} SparkDBusUnsent;

/* Called (from whichever thread found out) with @n_unsent such messages,
 * in their order, whose contents it takes, to send elsewhere: all those
 * found at once come in one call. @from is the transport. Its blocked
 * senders fail instead with SPARK_DBUS_UNSENT_ERROR, so that they may try
 * elsewhere too. */
typedef void (*SparkDBusOrphanFunc) (SparkTransport  *from,
                                     SparkDBusUnsent *unsent,
                                     guint            n_unsent,
                                     gpointer         data);

/* The error a supervised transport (one with an orphan function) refuses
 * a message with when its peer is gone and it was never sent: never seen
 * by users. Otherwise such a message fails with CLOSED. */
#define SPARK_DBUS_UNSENT_ERROR (spark_dbus_unsent_error_quark ())
GQuark          spark_dbus_unsent_error_quark (void);

/* Before the transport is used; @destroy frees @data with the transport. */
void            spark_dbus_transport_set_orphan_func (SparkTransport      *transport,
                                                      SparkDBusOrphanFunc  func,
                                                      gpointer             data,
                                                      GDestroyNotify       destroy);

/* The peer is gone (its process died): refuses everything from now on,
 * and hands what waits for a slot, in order, to the orphan function now. */
void            spark_dbus_transport_abandon         (SparkTransport      *transport);

G_END_DECLS
