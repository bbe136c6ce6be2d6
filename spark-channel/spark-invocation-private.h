/* spark-invocation-private.h
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include "spark-invocation.h"
#include "spark-request-private.h"

G_BEGIN_DECLS

SparkInvocation *spark_invocation_new (SparkRequest *req,
                                       GCancellable *cancellable);
/* Before the handler gets it: a reply not of @reply_type fails with
 * TYPE_MISMATCH naming @route (a router's). Each router in front of
 * another adds its own. */
void             spark_invocation_check_reply (SparkInvocation    *self,
                                               const char         *route,
                                               const GVariantType *reply_type);

G_END_DECLS
