/* spark-async-result.c
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * What spark_dispatcher_request_async() hands its callback: a GAsyncResult
 * made at delivery time, on the requester's context, already holding the
 * outcome. Lighter than a GTask, which a request would create up front and
 * complete later (with a name copy and a notify::completed emission each).
 */

#include "config.h"

#include "spark-async-result-private.h"

struct _SparkAsyncResult
{
  GObject   parent_instance;

  /* immutable */
  GObject  *source_object;   /* a reference */
  gpointer  source_tag;
  gpointer  user_data;

  /* taken by propagate, once */
  GVariant *reply;
  GError   *error;
};

static void spark_async_result_iface_init (GAsyncResultIface *iface);

G_DEFINE_FINAL_TYPE_WITH_CODE (SparkAsyncResult, spark_async_result, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (G_TYPE_ASYNC_RESULT, spark_async_result_iface_init))

static gpointer
spark_async_result_get_user_data (GAsyncResult *result)
{
  return SPARK_ASYNC_RESULT (result)->user_data;
}

static GObject *
spark_async_result_get_source_object (GAsyncResult *result)
{
  SparkAsyncResult *self = SPARK_ASYNC_RESULT (result);

  return self->source_object ? g_object_ref (self->source_object) : NULL;
}

static gboolean
spark_async_result_is_tagged (GAsyncResult *result,
                              gpointer      source_tag)
{
  return SPARK_ASYNC_RESULT (result)->source_tag == source_tag;
}

static void
spark_async_result_iface_init (GAsyncResultIface *iface)
{
  iface->get_user_data = spark_async_result_get_user_data;
  iface->get_source_object = spark_async_result_get_source_object;
  iface->is_tagged = spark_async_result_is_tagged;
}

static void
spark_async_result_finalize (GObject *object)
{
  SparkAsyncResult *self = SPARK_ASYNC_RESULT (object);

  g_clear_object (&self->source_object);
  g_clear_pointer (&self->reply, g_variant_unref);
  g_clear_error (&self->error);

  G_OBJECT_CLASS (spark_async_result_parent_class)->finalize (object);
}

static void
spark_async_result_class_init (SparkAsyncResultClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = spark_async_result_finalize;
}

static void
spark_async_result_init (SparkAsyncResult *self)
{
}

/* Takes @reply and @error (transfer full). */
SparkAsyncResult *
spark_async_result_new (GObject  *source_object,
                        gpointer  source_tag,
                        gpointer  user_data,
                        GVariant *reply,
                        GError   *error)
{
  SparkAsyncResult *self = g_object_new (SPARK_TYPE_ASYNC_RESULT, NULL);

  self->source_object = source_object ? g_object_ref (source_object) : NULL;
  self->source_tag = source_tag;
  self->user_data = user_data;
  self->reply = reply;
  self->error = error;

  return self;
}

gboolean
spark_async_result_is_valid (GAsyncResult *result,
                             gpointer      source_object,
                             gpointer      source_tag)
{
  SparkAsyncResult *self;

  if (!SPARK_IS_ASYNC_RESULT (result))
    return FALSE;

  self = SPARK_ASYNC_RESULT (result);
  return self->source_object == source_object && self->source_tag == source_tag;
}

/* Returns the reply (transfer full) or sets @error; a second call is a
 * programmer error, like propagating a GTask twice. */
GVariant *
spark_async_result_propagate (SparkAsyncResult  *self,
                              GError           **error)
{
  if (self->error != NULL)
    {
      g_propagate_error (error, g_steal_pointer (&self->error));
      return NULL;
    }

  g_return_val_if_fail (self->reply != NULL, NULL);

  return g_steal_pointer (&self->reply);
}
