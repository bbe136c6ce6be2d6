/* spark-message-private.h: what a mailbox queues
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Commands and shutdowns are this struct alone; a request embeds it first
 * (spark-request-private.h). Depends on the block pools only.
 */

#pragma once

#include <glib.h>

#include "spark-pool-private.h"

G_BEGIN_DECLS

typedef struct _SparkMessage SparkMessage;

typedef enum {
  SPARK_MESSAGE_REQUEST,
  SPARK_MESSAGE_COMMAND,
  SPARK_MESSAGE_SHUTDOWN,
  SPARK_MESSAGE_CANCEL_ALL,   /* the control lane: @parameters is the sender's id, a uint64 */
} SparkMessageKind;


/* A command's name is stored in @inline_name, right after @kind (where the
 * struct's tail padding would be), so that a queued command with a short
 * name is one 24-byte allocation (a 32-byte malloc chunk) plus its
 * GVariant. A flexible array member, not padding: C11 leaves padding
 * unspecified after a store to a member, so a name kept there could be
 * overwritten by a store to @kind. All fields but @next are immutable once
 * the message is queued; @next belongs to whoever holds the message (the
 * mailbox lock while queued, then the server), and is the SparkBlock link
 * while a command's block is pooled. Use spark_message_get_name(), which
 * knows requests (spark-request-private.h). */
struct _SparkMessage
{
  SparkMessage *next;
  GVariant     *parameters;
  guint8        kind;
  char          inline_name[];   /* commands and shutdowns only */
};

/* Control messages steer the server; they are not work: never held back
 * by the capacity, nor counted as pending. */
static inline gboolean
spark_message_is_control (const SparkMessage *msg)
{
  return msg->kind == SPARK_MESSAGE_SHUTDOWN || msg->kind == SPARK_MESSAGE_CANCEL_ALL;
}

/* Takes @parameters (transfer full, not floating, nullable). @blocks
 * (nullable) is where spare command blocks may be taken from: the
 * mailbox's, which its server hands back. */
SparkMessage *spark_message_new_command     (SparkBlockReturn *blocks,
                                             const char       *name,
                                             GVariant         *parameters);
/* By the server's thread, for a command it is done with. */
void          spark_message_recycle_command (SparkBlockReturn *blocks,
                                             SparkMessage     *msg);
SparkMessage *spark_message_new_shutdown    (void);
SparkMessage *spark_message_new_cancel_all  (guint64           sender);
/* A command or a shutdown; spark_message_free() takes any message. */
void          spark_message_free_plain      (SparkMessage     *msg);

G_END_DECLS
