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

G_END_DECLS
