/* spark-dispatcher-private.h
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include "spark-dispatcher.h"
#include "spark-transport-private.h"

G_BEGIN_DECLS

SparkDispatcher *spark_dispatcher_new (SparkTransport *transport);

G_END_DECLS
