/* spark-error.h
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#pragma once

#if !defined(SPARK_INSIDE) && !defined(SPARK_COMPILATION)
# error "Only <spark-channel.h> can be included directly."
#endif

#include <glib.h>

#include "spark-version-macros.h"

G_BEGIN_DECLS

/**
 * SPARK_CHANNEL_ERROR:
 *
 * The error domain of spark-channel: errors in it are values of
 * [error@Spark.ChannelError].
 *
 * Since: 1.0
 */
#define SPARK_CHANNEL_ERROR (spark_channel_error_quark ())

/**
 * SparkChannelError:
 * @SPARK_CHANNEL_ERROR_CLOSED: the mailbox is closed: the server was never
 *   started, has shut down, or is shutting down.
 * @SPARK_CHANNEL_ERROR_NO_REPLY: the handler gave no result: it returned
 *   %NULL (or %FALSE) without setting an error, or dropped its
 *   [class@Spark.Invocation] without completing it.
 * @SPARK_CHANNEL_ERROR_TYPE_MISMATCH: the reply is not of the type the
 *   requester asked for.
 * @SPARK_CHANNEL_ERROR_FULL: a send found no room and may not wait for it:
 *   [method@Spark.Dispatcher.try_send_command] on a bounded mailbox that is
 *   full or has senders waiting for room, or past its dispatcher's
 *   [property@Spark.Dispatcher:rate-limit]; or any send to a full mailbox
 *   whose overflow policy is %SPARK_OVERFLOW_FAIL.
 * @SPARK_CHANNEL_ERROR_TIMED_OUT: the request's timeout elapsed before a
 *   reply arrived.
 * @SPARK_CHANNEL_ERROR_WOULD_DEADLOCK: a blocking call was made on the
 *   thread that must itself serve it.
 * @SPARK_CHANNEL_ERROR_NOT_SUPPORTED: the handler does not implement this
 *   kind of message, or cannot run where it was asked to.
 * @SPARK_CHANNEL_ERROR_ALREADY_STARTED: the server was started before.
 * @SPARK_CHANNEL_ERROR_DROPPED: a full mailbox dropped the request
 *   unhandled, as its server's [property@Spark.ModuleServer:overflow]
 *   policy says (%SPARK_OVERFLOW_DROP_NEWEST or
 *   %SPARK_OVERFLOW_DROP_OLDEST); the message names the capacity and the
 *   policy.
 *
 * Errors in the %SPARK_CHANNEL_ERROR domain. An error returned by a handler
 * reaches the requester unchanged, in its own domain; cancellation by the
 * requester is %G_IO_ERROR_CANCELLED.
 *
 * Since: 1.0
 */
typedef enum {
  SPARK_CHANNEL_ERROR_CLOSED,
  SPARK_CHANNEL_ERROR_NO_REPLY,
  SPARK_CHANNEL_ERROR_TYPE_MISMATCH,
  SPARK_CHANNEL_ERROR_FULL,
  SPARK_CHANNEL_ERROR_TIMED_OUT,
  SPARK_CHANNEL_ERROR_WOULD_DEADLOCK,
  SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
  SPARK_CHANNEL_ERROR_ALREADY_STARTED,
  SPARK_CHANNEL_ERROR_DROPPED,
} SparkChannelError;

SPARK_AVAILABLE_IN_1_0
GQuark spark_channel_error_quark (void);

G_END_DECLS
