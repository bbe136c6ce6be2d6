/* spark-version-macros.h
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#if !defined(SPARK_INSIDE) && !defined(SPARK_COMPILATION)
# error "Only <spark-channel.h> can be included directly."
#endif

#include <glib.h>

#include "spark-version.h"

#ifndef _SPARK_EXTERN
# define _SPARK_EXTERN __attribute__((visibility("default"))) extern
#endif

#define SPARK_VERSION_1_0 (SPARK_ENCODE_VERSION (1, 0, 0))

#define SPARK_AVAILABLE_IN_ALL _SPARK_EXTERN
#define SPARK_AVAILABLE_IN_1_0 _SPARK_EXTERN
