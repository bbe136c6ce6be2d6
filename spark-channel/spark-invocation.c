/* spark-invocation.c
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

/**
 * SparkInvocation:
 *
 * One request being handled: what a handler needs to reply later, from any
 * thread.
 *
 * A handler that implements [vfunc@Spark.Handler.handle_invocation] keeps
 * the invocation and completes it once, like a
 * [class@Gio.DBusMethodInvocation]: with
 * [method@Spark.Invocation.return_value],
 * [method@Spark.Invocation.return_error_literal] or
 * [method@Spark.Invocation.return_gerror].
 *
 * - Completing the same invocation twice is a programmer error: a critical
 *   is logged and the second completion is ignored.
 * - Completing an invocation whose request has already ended (cancelled,
 *   timed out, aborted) is not an error: the reply is dropped quietly.
 * - An invocation finalized without a completion ends its request with
 *   %SPARK_CHANNEL_ERROR_NO_REPLY. In JavaScript an invocation is only freed
 *   by the garbage collector: complete it on every path, or give the
 *   dispatcher a [property@Spark.Dispatcher:timeout].
 *
 * Once its request has ended, an invocation holds nothing else alive (no
 * server, handler or mailbox).
 *
 * All methods may be called from any thread.
 *
 * Since: 1.0
 */

#include "config.h"

#include "spark-error.h"
#include "spark-invocation-private.h"

struct _SparkInvocation
{
  GObject       parent_instance;

  SparkRequest *req;          /* immutable, a reference */
  GCancellable *cancellable;  /* immutable, a reference */
  gint          completed;    /* atomic: 0 -> 1 on the first completion */
  GPtrArray    *route_checks; /* immutable once handled, nullable: RouteCheck, outermost router first */
};

/* A router's route that declared the reply's type. */
typedef struct
{
  char         *route;
  GVariantType *reply_type;
} RouteCheck;

static void
route_check_free (gpointer data)
{
  RouteCheck *check = data;

  g_free (check->route);
  g_variant_type_free (check->reply_type);
  g_free (check);
}

G_DEFINE_FINAL_TYPE (SparkInvocation, spark_invocation, G_TYPE_OBJECT)

static void
spark_invocation_finalize (GObject *object)
{
  SparkInvocation *self = SPARK_INVOCATION (object);

  if (!g_atomic_int_get (&self->completed))
    spark_request_return_reply (self->req, NULL,
                                g_error_new (SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NO_REPLY,
                                             "The invocation of request “%s” was dropped without a reply",
                                             spark_request_get_name (self->req)));

  g_clear_pointer (&self->req, spark_request_unref);
  g_clear_object (&self->cancellable);
  g_clear_pointer (&self->route_checks, g_ptr_array_unref);

  G_OBJECT_CLASS (spark_invocation_parent_class)->finalize (object);
}

static void
spark_invocation_class_init (SparkInvocationClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = spark_invocation_finalize;
}

static void
spark_invocation_init (SparkInvocation *self)
{
}

SparkInvocation *
spark_invocation_new (SparkRequest *req,
                      GCancellable *cancellable)
{
  SparkInvocation *self = g_object_new (SPARK_TYPE_INVOCATION, NULL);

  self->req = spark_request_ref (req);
  self->cancellable = cancellable ? g_object_ref (cancellable) : NULL;

  return self;
}

/**
 * spark_invocation_get_name:
 * @self: a [class@Spark.Invocation]
 *
 * The name of the request, as the sender gave it. May be called from any
 * thread.
 *
 * Returns: (transfer none): the request's name
 *
 * Since: 1.0
 */
const char *
spark_invocation_get_name (SparkInvocation *self)
{
  g_return_val_if_fail (SPARK_IS_INVOCATION (self), NULL);

  return spark_request_get_name (self->req);
}

/**
 * spark_invocation_get_parameters:
 * @self: a [class@Spark.Invocation]
 *
 * The parameters of the request. May be called from any thread.
 *
 * Returns: (transfer none) (nullable): the parameters, or %NULL if the
 *   sender gave none
 *
 * Since: 1.0
 */
GVariant *
spark_invocation_get_parameters (SparkInvocation *self)
{
  g_return_val_if_fail (SPARK_IS_INVOCATION (self), NULL);

  return spark_request_get_parameters (self->req);
}

/**
 * spark_invocation_get_cancellable:
 * @self: a [class@Spark.Invocation]
 *
 * A cancellable that is cancelled when the request ends before the handler
 * completed it: the requester cancelled, the timeout elapsed, or the server
 * aborted. May be called from any thread.
 *
 * Returns: (transfer none) (nullable): the request's cancellable
 *
 * Since: 1.0
 */
GCancellable *
spark_invocation_get_cancellable (SparkInvocation *self)
{
  g_return_val_if_fail (SPARK_IS_INVOCATION (self), NULL);

  return self->cancellable;
}

static gboolean
spark_invocation_claim (SparkInvocation *self)
{
  if (g_atomic_int_compare_and_exchange (&self->completed, 0, 1))
    return TRUE;

  g_critical ("The invocation of request “%s” was completed twice; "
              "the second completion is ignored", spark_request_get_name (self->req));
  return FALSE;
}

/**
 * spark_invocation_return_value:
 * @self: a [class@Spark.Invocation]
 * @reply: the reply; a floating reference is sunk
 *
 * Completes the request with @reply. If the request asked for a reply type
 * and @reply is not of it, the request fails with
 * %SPARK_CHANNEL_ERROR_TYPE_MISMATCH instead.
 *
 * May be called from any thread, once.
 *
 * Since: 1.0
 */
void
spark_invocation_return_value (SparkInvocation *self,
                               GVariant        *reply)
{
  /* Transfer none, like g_dbus_method_invocation_return_value(): a
   * floating reply is consumed, a real one gets a reference of ours.
   * Sunk before the checks, as every dispatcher entry point does, so that
   * a programmer error does not leak it either. */
  g_autoptr(GVariant) owned = reply ? g_variant_ref_sink (reply) : NULL;

  g_return_if_fail (SPARK_IS_INVOCATION (self));
  g_return_if_fail (owned != NULL);

  if (!spark_invocation_claim (self))
    return;

  for (guint i = 0; self->route_checks != NULL && i < self->route_checks->len; i++)
    {
      RouteCheck *check = g_ptr_array_index (self->route_checks, i);

      if (g_variant_is_of_type (owned, check->reply_type))
        continue;

      spark_request_return_reply (self->req, NULL,
                                  g_error_new (SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH,
                                               "Route “%s”: the reply to request “%s” has type “%s”, expected “%.*s”",
                                               check->route, spark_request_get_name (self->req),
                                               g_variant_get_type_string (owned),
                                               (int) g_variant_type_get_string_length (check->reply_type),
                                               g_variant_type_peek_string (check->reply_type)));
      return;
    }

  spark_request_return_reply (self->req, g_steal_pointer (&owned), NULL);
}

void
spark_invocation_check_reply (SparkInvocation    *self,
                              const char         *route,
                              const GVariantType *reply_type)
{
  RouteCheck *check = g_new0 (RouteCheck, 1);

  /* Routers in front of routers: every one's route is checked. */
  check->route = g_strdup (route);
  check->reply_type = g_variant_type_copy (reply_type);
  if (self->route_checks == NULL)
    self->route_checks = g_ptr_array_new_with_free_func (route_check_free);
  g_ptr_array_add (self->route_checks, check);
}

/**
 * spark_invocation_send_progress:
 * @self: a [class@Spark.Invocation]
 * @progress: how the request goes (any type); a floating reference is sunk
 *
 * Reports progress to a requester that listens for it (see
 * [method@Spark.Dispatcher.request_with_progress_async]): delivered on the
 * requester's context, in the order sent, before the reply. Without a
 * listener, or once the request has ended (cancelled, timed out, aborted),
 * the report is dropped quietly. Sending progress after completing the
 * invocation is a programmer error.
 *
 * May be called from any thread, any number of times before the
 * invocation is completed.
 *
 * Since: 1.0
 */
void
spark_invocation_send_progress (SparkInvocation *self,
                                GVariant        *progress)
{
  g_autoptr(GVariant) owned = progress ? g_variant_ref_sink (progress) : NULL;

  g_return_if_fail (SPARK_IS_INVOCATION (self));
  g_return_if_fail (owned != NULL);

  if (g_atomic_int_get (&self->completed))
    {
      g_critical ("Progress for request “%s” was sent after its invocation was completed; "
                  "it is dropped", spark_request_get_name (self->req));
      return;
    }

  spark_request_send_progress (self->req, g_steal_pointer (&owned));
}

/**
 * spark_invocation_take_error: (skip)
 * @self: a [class@Spark.Invocation]
 * @error: (transfer full): the error
 *
 * Completes the request with @error, taking ownership of it. The requester
 * receives it unchanged (domain, code and message).
 *
 * May be called from any thread, once. C only.
 *
 * Since: 1.0
 */
void
spark_invocation_take_error (SparkInvocation *self,
                             GError          *error)
{
  g_return_if_fail (SPARK_IS_INVOCATION (self));
  g_return_if_fail (error != NULL);

  if (!spark_invocation_claim (self))
    {
      g_error_free (error);
      return;
    }

  spark_request_return_reply (self->req, NULL, error);
}

/**
 * spark_invocation_return_gerror:
 * @self: a [class@Spark.Invocation]
 * @error: the error, copied
 *
 * Completes the request with a copy of @error. The requester receives it
 * unchanged (domain, code and message).
 *
 * May be called from any thread, once.
 *
 * Since: 1.0
 */
void
spark_invocation_return_gerror (SparkInvocation *self,
                                const GError    *error)
{
  g_return_if_fail (SPARK_IS_INVOCATION (self));
  g_return_if_fail (error != NULL);

  spark_invocation_take_error (self, g_error_copy (error));
}

/**
 * spark_invocation_return_error_literal:
 * @self: a [class@Spark.Invocation]
 * @domain: the error domain
 * @code: the error code
 * @message: the error message
 *
 * Completes the request with an error made of @domain, @code and
 * @message.
 *
 * May be called from any thread, once.
 *
 * Since: 1.0
 */
void
spark_invocation_return_error_literal (SparkInvocation *self,
                                       GQuark           domain,
                                       gint             code,
                                       const char      *message)
{
  g_return_if_fail (SPARK_IS_INVOCATION (self));
  g_return_if_fail (domain != 0);
  g_return_if_fail (message != NULL);

  spark_invocation_take_error (self, g_error_new_literal (domain, code, message));
}
