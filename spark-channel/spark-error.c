/* spark-error.c
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include "config.h"

#include "spark-error.h"

/**
 * spark_channel_error_quark:
 *
 * The quark of the %SPARK_CHANNEL_ERROR domain,
 * `spark-channel-error-quark`. May be called from any thread.
 *
 * Returns: the error domain's quark
 *
 * Since: 1.0
 */
G_DEFINE_QUARK (spark-channel-error-quark, spark_channel_error)
