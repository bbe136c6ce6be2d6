/* spark-dispatcher-private.h
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include "spark-dispatcher.h"
#include "spark-transport-private.h"

G_BEGIN_DECLS

SparkDispatcher *spark_dispatcher_new (SparkTransport *transport);

/* For a dispatcher that relays for others (a D-Bus export). */

/* (transfer none) (nullable): where it sends. */
SparkTransport  *spark_dispatcher_get_transport (SparkDispatcher *self);
/* A sender id no dispatcher has, for spark_dispatcher_relay_request(). */
guint64          spark_dispatcher_new_sender_id (void);
/* Sends @req (made, not sent: both references) as if from the dispatcher
 * with id @sender, at @priority. */
void             spark_dispatcher_relay_request (SparkDispatcher *self,
                                                 SparkRequest    *req,
                                                 guint64          sender,
                                                 SparkPriority    priority);
/* spark_dispatcher_cancel_all() for the requests relayed as @sender. */
void             spark_dispatcher_relay_cancel_all (SparkDispatcher *self,
                                                    guint64          sender);

G_END_DECLS
