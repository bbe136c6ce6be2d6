/* spark-transport-private.h: what a dispatcher sends through
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The seam between SparkDispatcher and where its messages go. A transport
 * takes requests (with their outcome already wired: it only has to see
 * each completed exactly once), commands and shutdowns, and waits for
 * room the way the caller asks. The in-process mailbox is one
 * (spark_mailbox_get_transport()); a remote module (D-Bus, a subprocess)
 * is another, behind the same public API and the same guarantees.
 */

#pragma once

#include <gio/gio.h>

#include "spark-request-private.h"

G_BEGIN_DECLS

typedef struct _SparkTransport       SparkTransport;
typedef struct _SparkTransportVTable SparkTransportVTable;

typedef enum {
  SPARK_POST_TRY,         /* fail with FULL rather than wait */
  SPARK_POST_BLOCK,       /* wait on this thread */
  SPARK_POST_ASYNC,       /* wait without blocking, then complete a GTask */
} SparkPostMode;

struct _SparkTransportVTable
{
  void          (*ref)           (SparkTransport *self);
  void          (*unref)         (SparkTransport *self);

  /* The context the receiving side runs on, if it is in this process:
   * a requester on another context spins for its outcomes. (transfer none) */
  GMainContext *(*get_context)   (SparkTransport *self);

  /* Takes the sender's reference of @req (armed). TRUE: the transport
   * completes it; FALSE: @error says why and the caller completes it.
   * @blocking: may wait on this thread for room. */
  gboolean      (*post_request)  (SparkTransport *self,
                                  SparkRequest   *req,
                                  SparkPriority   priority,
                                  gboolean        blocking,
                                  GError        **error);

  /* Takes @parameters (not floating). SPARK_POST_ASYNC completes @task
   * (boolean) in every case when it returns TRUE; the others return the
   * outcome. */
  gboolean      (*post_command)  (SparkTransport *self,
                                  const char     *name,
                                  GVariant       *parameters,
                                  SparkPriority   priority,
                                  SparkPostMode   mode,
                                  GCancellable   *cancellable,
                                  GTask          *task,
                                  GError        **error);

  gboolean      (*send_shutdown) (SparkTransport *self,
                                  GCancellable   *token,
                                  GError        **error);

  /* Fails, with CANCELLED, every request of @sender (a dispatcher's id)
   * that is queued and not yet being handled: ahead of the queue and
   * whatever its capacity. */
  void          (*cancel_all)    (SparkTransport *self,
                                  guint64         sender);

  /* Optional (NULL: not supported): a command for every worker of the
   * receiving side. Takes @parameters (not floating, nullable). */
  gboolean      (*broadcast_command) (SparkTransport *self,
                                      const char     *name,
                                      GVariant       *parameters,
                                      SparkPriority   priority,
                                      GError        **error);

  /* Optional (NULL: never): whether the calling thread is one that must
   * serve the receiving side, so that a blocking call would wait for
   * itself. */
  gboolean      (*would_deadlock) (SparkTransport *self);
};

/* Embedded first in a transport's own struct. */
struct _SparkTransport
{
  const SparkTransportVTable *vtable;
};

static inline SparkTransport *
spark_transport_ref (SparkTransport *self)
{
  self->vtable->ref (self);
  return self;
}

static inline void
spark_transport_unref (SparkTransport *self)
{
  self->vtable->unref (self);
}

G_END_DECLS
