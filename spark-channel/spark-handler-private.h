/* spark-handler-private.h
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#include "spark-handler.h"
#include "spark-message-private.h"

G_BEGIN_DECLS

gboolean spark_handler_uses_invocation  (SparkHandler *self);
gboolean spark_handler_is_python        (SparkHandler *self);
gboolean spark_handler_is_main_only     (SparkHandler *self);
void     spark_handler_set_not_supported (SparkHandler      *self,
                                          SparkMessageKind   kind,
                                          const char        *name,
                                          GError           **error);

G_END_DECLS
