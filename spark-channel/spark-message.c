/* spark-message.c: commands and shutdowns
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Command blocks of the two usual sizes go back from the server to the
 * senders (SparkBlockReturn, see spark-pool.c): commands are made on a
 * sender's thread and freed on the server's.
 */

#include "config.h"

#include <string.h>

#include "spark-message-private.h"

/* A command's name starts right after its kind. */
#define COMMAND_NAME_OFFSET G_STRUCT_OFFSET (SparkMessage, inline_name)

/* A pooled block links through the message's first word. */
G_STATIC_ASSERT (G_STRUCT_OFFSET (SparkMessage, next) == 0);

/* Block sizes: a 24-byte message holds names of up to 6 bytes (a 32-byte
 * malloc chunk), a 40-byte one names of up to 22 (48). */
static const gsize command_block_size[SPARK_BLOCK_CLASSES] = { sizeof (SparkMessage), 40 };

/* The name takes what would be the struct's tail padding. */
G_STATIC_ASSERT (COMMAND_NAME_OFFSET < sizeof (SparkMessage));

static inline gint
command_class (gsize name_size)
{
  if (COMMAND_NAME_OFFSET + name_size <= command_block_size[0])
    return 0;
  if (COMMAND_NAME_OFFSET + name_size <= command_block_size[1])
    return 1;
  return -1;
}

SparkMessage *
spark_message_new_shutdown (void)
{
  /* Zeroed: its name, after kind, is "". */
  SparkMessage *msg = g_new0 (SparkMessage, 1);

  msg->kind = SPARK_MESSAGE_SHUTDOWN;

  return msg;
}

SparkMessage *
spark_message_new_cancel_all (guint64 sender)
{
  SparkMessage *msg = g_new0 (SparkMessage, 1);

  msg->kind = SPARK_MESSAGE_CANCEL_ALL;
  msg->parameters = g_variant_ref_sink (g_variant_new_uint64 (sender));

  return msg;
}

void
spark_message_free_plain (SparkMessage *msg)
{
  g_assert (msg->kind != SPARK_MESSAGE_REQUEST);

  g_clear_pointer (&msg->parameters, g_variant_unref);
  g_free (msg);
}

SparkMessage *
spark_message_new_command (SparkBlockReturn *blocks,
                           const char       *name,
                           GVariant         *parameters)
{
  gsize len = strlen (name) + 1;
  gint klass = command_class (len);
  SparkMessage *msg = NULL;

  if (klass >= 0 && blocks != NULL && spark_pools_enabled ())
    msg = spark_block_return_take (blocks, (guint) klass);
  if (msg == NULL)
    msg = g_malloc (klass >= 0 ? command_block_size[klass] : COMMAND_NAME_OFFSET + len);

  msg->next = NULL;
  msg->parameters = parameters;   /* ours now: sunk by the dispatcher */
  msg->kind = SPARK_MESSAGE_COMMAND;
  memcpy (msg->inline_name, name, len);

  return msg;
}

/* By the server's thread, for a command it is done with: frees its
 * parameters, and its block or collects it for reuse. */
void
spark_message_recycle_command (SparkBlockReturn *blocks,
                               SparkMessage     *msg)
{
  gint klass;

  g_assert (msg->kind == SPARK_MESSAGE_COMMAND);
  g_clear_pointer (&msg->parameters, g_variant_unref);

  klass = command_class (strlen (msg->inline_name) + 1);
  if (klass < 0 || !spark_pools_enabled () ||
      !spark_block_return_collect (blocks, (guint) klass, msg))
    g_free (msg);
}
