/* spark-reply-port-private.h: batched delivery to a requester's context
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Knows nothing of requests: it delivers SparkPortItems, each with its own
 * deliver function, in batches on the context that holds the port.
 */

#pragma once

#include <glib.h>

#include "spark-async-result-private.h"

G_BEGIN_DECLS

typedef struct _SparkPortItem   SparkPortItem;
typedef struct _SparkReplyPort  SparkReplyPort;

/* An item delivered in a batch on a requester's main context. */
typedef void (*SparkPortDeliverFunc) (SparkPortItem *item);

struct _SparkPortItem
{
  SparkPortItem        *next;   /* the pusher, until pushed; then the port's dispatch */
  SparkPortDeliverFunc  deliver;
};

SparkReplyPort  *spark_reply_port_hold             (GMainContext     *producer);
gboolean         spark_reply_port_expects_soon     (SparkReplyPort   *port,
                                                    GMainContext     *producer);
void             spark_reply_port_add_hold         (SparkReplyPort   *port);
void             spark_reply_port_release          (SparkReplyPort   *port,
                                                    gboolean          soon);
void             spark_reply_port_push             (SparkReplyPort   *port,
                                                    SparkPortItem    *item);
gboolean         spark_reply_port_context_is_expecting (GMainContext *context);
SparkAsyncResultPool *
                 spark_reply_port_get_result_pool  (SparkReplyPort   *port);

G_END_DECLS
