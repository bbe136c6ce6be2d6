/* spark-async-result.c
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * What spark_dispatcher_request_async() hands its callback: a GAsyncResult
 * made at delivery time, on the requester's context, already holding the
 * outcome. Lighter than a GTask, which a request would create up front and
 * complete later (with a name copy and a notify::completed emission each).
 *
 * Results are recycled. Creating and finalizing a GObject costs about 2,800
 * instructions in GLib 2.74 (the last unref alone freezes a notify queue,
 * takes the signal lock and clears three qdata entries), more than the rest
 * of a request. So the reply port keeps a few spare results, and once a
 * callback has returned, spark_async_result_release() puts its result back
 * if nothing can tell a recycled object from a new one: nobody else holds a
 * reference and nothing is attached to it. Attached means qdata of any
 * kind, which is also where GObject keeps weak references, GWeakRefs,
 * toggle references (a PyGObject or GJS wrapper), watched closures and a
 * frozen notify queue; signal handlers are disconnected as finalization
 * would. Any of those, and the result is simply unreferenced as before.
 *
 * That reads GObject's ref_count and qdata, which GObject does not promise
 * to keep using this way. So before the first result is recycled, a
 * one-time self-test attaches each of those kinds to a scratch result and
 * checks that the test sees it; if one goes unseen, results are not
 * recycled in this process. SPARK_REUSE_RESULTS=0 turns recycling off too
 * (the block pools' SPARK_POOLS and G_SLICE do not: results are reused in
 * either case).
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

  /* the pool's, while spare */
  SparkAsyncResult *next_spare;
};

/* Spare results a port keeps. One is enough for a stream of replies, each
 * callback returning before the next runs; a few more cover callbacks that
 * iterate a nested main loop. */
#define POOL_MAX 4

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
spark_async_result_clear (SparkAsyncResult *self)
{
  g_clear_object (&self->source_object);
  g_clear_pointer (&self->reply, g_variant_unref);
  g_clear_error (&self->error);
}

static void
spark_async_result_finalize (GObject *object)
{
  spark_async_result_clear (SPARK_ASYNC_RESULT (object));

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

/*
 * spark_async_result_obtain:
 * @pool: where a spare result may be taken from
 *
 * Takes @reply and @error (transfer full).
 *
 * Returns: (transfer full): a spare result of @pool or a new one.
 */
SparkAsyncResult *
spark_async_result_obtain (SparkAsyncResultPool *pool,
                           GObject              *source_object,
                           gpointer              source_tag,
                           gpointer              user_data,
                           GVariant             *reply,
                           GError               *error)
{
  SparkAsyncResult *self;

  if (pool->spare != NULL)
    {
      self = pool->spare;
      pool->spare = self->next_spare;
      pool->n_spare--;
      self->next_spare = NULL;
    }
  else
    self = g_object_new (SPARK_TYPE_ASYNC_RESULT, NULL);

  self->source_object = source_object ? g_object_ref (source_object) : NULL;
  self->source_tag = source_tag;
  self->user_data = user_data;
  self->reply = reply;
  self->error = error;

  return self;
}

/* Whether anything but its owner could tell @self from a new result.
 * GObject's ref_count and qdata are fields of its public struct (their
 * layout is ABI); reading them is the only way to know that no reference
 * and no weak reference, toggle reference or data was added. The qdata
 * word includes its flag bits (a toggle reference, floating), so any of
 * those counts too. Only a ref_count of 1 held by the caller is read: no
 * other thread can change it then. */
static gboolean
spark_async_result_is_untouched (SparkAsyncResult *self)
{
  GObject *object = (GObject *) self;

  return g_atomic_int_get ((gint *) &object->ref_count) == 1 &&
         g_atomic_pointer_get (&object->qdata) == NULL;
}

static void
self_test_weak_notify (gpointer  data,
                       GObject  *where_the_object_was)
{
}

static void
self_test_toggle_notify (gpointer  data,
                         GObject  *object,
                         gboolean  is_last_ref)
{
}

/* Whether spark_async_result_is_untouched() sees each kind of attachment
 * it must see, on this GLib: a weak reference (and so a weak pointer), a
 * GWeakRef, a toggle reference and data, each on a fresh scratch result
 * that it must first find untouched. Each is removed again before the
 * scratch result is finalized. */
static gboolean
reuse_self_test (void)
{
  for (guint kind = 0; kind < 4; kind++)
    {
      SparkAsyncResult *scratch = g_object_new (SPARK_TYPE_ASYNC_RESULT, NULL);
      GWeakRef weak;
      gboolean seen;

      if (!spark_async_result_is_untouched (scratch))
        {
          g_object_unref (scratch);
          return FALSE;
        }

      switch (kind)
        {
        case 0:
          g_object_weak_ref (G_OBJECT (scratch), self_test_weak_notify, NULL);
          seen = !spark_async_result_is_untouched (scratch);
          g_object_weak_unref (G_OBJECT (scratch), self_test_weak_notify, NULL);
          break;
        case 1:
          g_weak_ref_init (&weak, scratch);
          seen = !spark_async_result_is_untouched (scratch);
          g_weak_ref_clear (&weak);
          break;
        case 2:
          /* It holds a reference too: ref_count 2, and a qdata entry. */
          g_object_add_toggle_ref (G_OBJECT (scratch), self_test_toggle_notify, NULL);
          seen = !spark_async_result_is_untouched (scratch);
          g_object_remove_toggle_ref (G_OBJECT (scratch), self_test_toggle_notify, NULL);
          break;
        default:
          g_object_set_data (G_OBJECT (scratch), "spark-reuse-self-test", GINT_TO_POINTER (1));
          seen = !spark_async_result_is_untouched (scratch);
          break;
        }

      g_object_unref (scratch);
      if (!seen)
        return FALSE;
    }

  return TRUE;
}

/* Whether results may be recycled in this process: decided once, on first
 * use, from SPARK_REUSE_RESULTS and reuse_self_test(). Any thread. */
static gboolean
reuse_enabled (void)
{
  static gsize enabled;

  if (g_once_init_enter (&enabled))
    {
      const char *env = g_getenv ("SPARK_REUSE_RESULTS");
      gboolean on;

      if (g_strcmp0 (env, "0") == 0)
        on = FALSE;
      else if (!(on = reuse_self_test ()))
        g_debug ("GObject %u.%u.%u keeps references or attachments where this "
                 "library does not look: request_async() results are not reused",
                 glib_major_version, glib_minor_version, glib_micro_version);
      /* g_once_init_leave() takes no zero: 1 is off, 2 on. */
      g_once_init_leave (&enabled, on ? 2 : 1);
    }

  return enabled == 2;
}

/*
 * spark_async_result_release:
 * @pool: where to keep @self if it can be recycled
 * @self: (transfer full): a result whose callback has returned
 *
 * Drops the caller's reference to @self. If nothing else holds or watches
 * it, the object goes to @pool instead of being finalized, and what it
 * owned (the source object, an unclaimed reply or error, its signal
 * handlers) is released now, as finalization would.
 */
void
spark_async_result_release (SparkAsyncResultPool *pool,
                            SparkAsyncResult     *self)
{
  if (pool->n_spare >= POOL_MAX || !reuse_enabled () ||
      !spark_async_result_is_untouched (self))
    {
      g_object_unref (self);
      return;
    }

  g_signal_handlers_destroy (self);
  spark_async_result_clear (self);
  self->source_tag = NULL;
  self->user_data = NULL;

  self->next_spare = pool->spare;
  pool->spare = self;
  pool->n_spare++;
}

/* Finalizes the spare results. */
void
spark_async_result_pool_clear (SparkAsyncResultPool *pool)
{
  while (pool->spare != NULL)
    {
      SparkAsyncResult *self = pool->spare;

      pool->spare = self->next_spare;
      self->next_spare = NULL;
      g_object_unref (self);
    }
  pool->n_spare = 0;
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
