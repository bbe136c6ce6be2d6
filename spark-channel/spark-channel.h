/* spark-channel.h
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#ifndef SPARK_CHANNEL_H
#define SPARK_CHANNEL_H

#include <gio/gio.h>

G_BEGIN_DECLS

#define SPARK_INSIDE
# include "spark-version.h"
# include "spark-version-macros.h"
# include "spark-error.h"
# include "spark-enum-types.h"
# include "spark-invocation.h"
# include "spark-handler.h"
# include "spark-func-handler.h"
# include "spark-dispatcher.h"
# include "spark-module-server.h"
# include "spark-router.h"
# include "spark-dbus.h"
# include "spark-subprocess.h"
#undef SPARK_INSIDE

G_END_DECLS

#endif /* SPARK_CHANNEL_H */
