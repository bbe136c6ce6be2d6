/* spark-router.c
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

/**
 * SparkRouter:
 *
 * A [iface@Spark.Handler] that hands each message to another handler, or
 * to a [class@Spark.Dispatcher] (a module on another server, maybe on
 * another thread), by the message's name.
 *
 * A route's pattern is a name (`"kv.get"`), or a prefix followed by `*`
 * (`"kv.*"`; `"*"` alone takes everything). An exact name wins over a
 * prefix, and a longer prefix over a shorter one. A message no route takes
 * fails with %SPARK_CHANNEL_ERROR_NOT_SUPPORTED.
 *
 * A route may declare the type of its parameters and of its replies. A
 * message whose parameters are not of the declared type fails with
 * %SPARK_CHANNEL_ERROR_TYPE_MISMATCH before any handler runs; so does a
 * request whose reply is not of the declared type. Both errors name the
 * route and both types. (A requester's own reply type is checked too, as
 * always.)
 *
 * Routes can be added and removed from any thread while the router serves;
 * a message already routed finishes on the route it took.
 *
 * The router replies through invocations, so a request routed to a
 * dispatcher holds its invocation until the other module replies: give the
 * router's server a [property@Spark.ModuleServer:max-invocations] above 1
 * to have several such requests in flight at once. Commands routed to a
 * dispatcher are sent with [method@Spark.Dispatcher.try_send_command]: a
 * full mailbox there fails the command (see
 * [signal@Spark.ModuleServer::command-failed]) rather than blocking the
 * router's server.
 *
 * A handler written in JavaScript only runs on the main thread: a router
 * on another thread fails what it routes there with
 * %SPARK_CHANNEL_ERROR_NOT_SUPPORTED. Route to a dispatcher of a server
 * on the main context instead.
 *
 * Since: 1.0
 */

#include "config.h"

#include <string.h>

#include "spark-error.h"
#include "spark-handler-private.h"
#include "spark-invocation-private.h"
#include "spark-router-private.h"

struct _SparkRoute
{
  gint             ref_count;        /* atomic */
  char            *pattern;          /* immutable */
  gsize            prefix_len;       /* immutable: for a prefix pattern, the length before '*' */
  gboolean         is_prefix;        /* immutable */
  SparkHandler    *handler;          /* immutable, a reference; or */
  SparkDispatcher *dispatcher;       /* immutable, a reference */
  GVariantType    *parameter_type;   /* immutable, nullable */
  GVariantType    *reply_type;       /* immutable, nullable */

  /* Of @handler, looked up once (each costs a quark lookup per call). */
  SparkHandlerInterface *iface;
  gboolean         is_python;
  gboolean         main_only;
  gboolean         direct;           /* a call answers: no invocation needed */
  gboolean         concurrent;       /* a dispatcher, or a handler that declares itself concurrent */

  /* Flow control of the route's messages, in its server's mailbox: -1
   * for the server's own. Atomic. */
  gint             overflow;         /* a SparkOverflowPolicy */
  gint             ordering;         /* a SparkOrdering */

  /* Metrics, from any server thread. */
  gsize            n_handled;        /* atomic: messages given to the route */
  gsize            n_failed;         /* atomic: those that failed at once, or whose forwarded
                                      * request failed */
  /* Counted by the server that serves the router (it sees how requests
   * end, what its mailbox dropped, and the times). */
  gsize            n_cancelled;      /* atomic */
  gsize            n_timed_out;      /* atomic */
  gsize            n_dropped;        /* atomic */
  gsize            queue_n, queue_sum, queue_max;       /* atomic, µs */
  gsize            handler_n, handler_sum, handler_max; /* atomic, µs */
};

typedef SparkRoute Route;

struct _SparkRouter
{
  GObject     parent_instance;

  GMutex      mutex;
  guint       generation; /* mutex; read atomically: changes with every add and remove */
  GHashTable *exact;      /* mutex: name -> Route */
  GPtrArray  *prefixes;   /* mutex: Route, longest prefix first */
  gboolean    concurrent; /* mutex; read atomically: every route may be called concurrently */
};

static void spark_router_iface_init (SparkHandlerInterface *iface);

G_DEFINE_FINAL_TYPE_WITH_CODE (SparkRouter, spark_router, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, spark_router_iface_init))

static Route *
route_ref (Route *route)
{
  g_atomic_int_inc (&route->ref_count);
  return route;
}

static void
route_unref (Route *route)
{
  if (!g_atomic_int_dec_and_test (&route->ref_count))
    return;

  g_free (route->pattern);
  g_clear_object (&route->handler);
  g_clear_object (&route->dispatcher);
  g_clear_pointer (&route->parameter_type, g_variant_type_free);
  g_clear_pointer (&route->reply_type, g_variant_type_free);
  g_free (route);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (Route, route_unref)

void
spark_route_unref (SparkRoute *route)
{
  route_unref (route);
}

SparkRoute *
spark_route_ref (SparkRoute *route)
{
  return route_ref (route);
}

SparkRoute *
spark_router_find_cached (SparkRouter     *self,
                          SparkRouteCache *cache,
                          const char      *name)
{
  guint generation = (guint) g_atomic_int_get ((gint *) &self->generation);
  SparkRouteCacheSlot *slot;

  for (guint i = 0; i < SPARK_ROUTE_CACHE_SLOTS; i++)
    {
      slot = &cache->slots[i];
      if (slot->generation == generation && slot->name[0] != '\0' && strcmp (slot->name, name) == 0)
        return slot->route;
    }

  /* A miss: look it up, and remember it (the route, or that there is
   * none) if the name fits. The generation read before the lookup: a
   * change meanwhile only makes the slot stale sooner. */
  slot = &cache->slots[cache->next];
  g_clear_pointer (&slot->route, route_unref);
  slot->route = spark_router_find (self, name);
  if (strlen (name) < sizeof slot->name)
    {
      strcpy (slot->name, name);
      slot->generation = generation;
      cache->next = (cache->next + 1) % SPARK_ROUTE_CACHE_SLOTS;
    }
  else
    slot->name[0] = '\0';

  return slot->route;
}

void
spark_route_cache_clear (SparkRouteCache *cache)
{
  for (guint i = 0; i < SPARK_ROUTE_CACHE_SLOTS; i++)
    {
      g_clear_pointer (&cache->slots[i].route, route_unref);
      cache->slots[i].name[0] = '\0';
    }
}

gboolean
spark_route_is_direct (SparkRoute *route)
{
  return route->direct;
}

/* The route that takes @name, with a reference; NULL if none does. */
SparkRoute *
spark_router_find (SparkRouter *self,
                   const char  *name)
{
  Route *route;

  g_mutex_lock (&self->mutex);
  route = g_hash_table_lookup (self->exact, name);
  if (route == NULL)
    {
      for (guint i = 0; i < self->prefixes->len; i++)
        {
          Route *candidate = g_ptr_array_index (self->prefixes, i);

          if (strncmp (name, candidate->pattern, candidate->prefix_len) == 0)
            {
              route = candidate;
              break;
            }
        }
    }
  if (route != NULL)
    route_ref (route);
  g_mutex_unlock (&self->mutex);

  return route;
}

static const char *
type_string_of (GVariant *value)
{
  return value != NULL ? g_variant_get_type_string (value) : "(none)";
}

/* FALSE with @error set if @parameters are not of the route's type. */
static gboolean
check_parameters (Route       *route,
                  const char  *kind,
                  const char  *name,
                  GVariant    *parameters,
                  GError     **error)
{
  if (route->parameter_type == NULL ||
      (parameters != NULL && g_variant_is_of_type (parameters, route->parameter_type)))
    return TRUE;

  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH,
               "Route “%s”: the parameters of %s “%s” have type “%s”, expected “%.*s”",
               route->pattern, kind, name, type_string_of (parameters),
               (int) g_variant_type_get_string_length (route->parameter_type),
               g_variant_type_peek_string (route->parameter_type));
  return FALSE;
}

/* A JavaScript handler, off the main thread, would crash its runtime. */
static gboolean
check_thread (Route       *route,
              const char  *kind,
              const char  *name,
              GError     **error)
{
  if (!route->main_only || g_main_context_is_owner (g_main_context_default ()))
    return TRUE;

  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
               "Route “%s”: the handler of %s “%s” is written in JavaScript and runs on the "
               "main thread only; route to a dispatcher of a server on the main context instead",
               route->pattern, kind, name);
  return FALSE;
}

static void
set_no_route (const char  *kind,
              const char  *name,
              GError     **error)
{
  g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
               "No route takes %s “%s”", kind, name);
}

/*
 * spark_route_handle_request:
 *
 * For the router's server, for a direct route: the request handled by a
 * call, with the route's checks, and no invocation object.
 *
 * Returns: (transfer full) (nullable): the reply (maybe floating), or
 *   %NULL with @error set
 */
GVariant *
spark_route_handle_request (SparkRoute    *route,
                            const char    *name,
                            GVariant      *parameters,
                            GCancellable  *cancellable,
                            GError       **error)
{
  GVariant *reply;

  g_assert (route->direct);

  if (!check_parameters (route, "request", name, parameters, error) ||
      !check_thread (route, "request", name, error))
    return NULL;

  if (route->iface->handle_request == NULL)
    {
      spark_handler_set_not_supported (route->handler, SPARK_MESSAGE_REQUEST, name, error);
      return NULL;
    }

  g_atomic_pointer_add (&route->n_handled, 1);
  reply = route->iface->handle_request (route->handler, name, parameters, cancellable, error);

  if (reply != NULL && route->reply_type != NULL && !g_variant_is_of_type (reply, route->reply_type))
    {
      g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_TYPE_MISMATCH,
                   "Route “%s”: the reply to request “%s” has type “%s”, expected “%.*s”",
                   route->pattern, name, g_variant_get_type_string (reply),
                   (int) g_variant_type_get_string_length (route->reply_type),
                   g_variant_type_peek_string (route->reply_type));
      g_variant_unref (g_variant_ref_sink (reply));
      reply = NULL;
    }

  if (reply == NULL)
    g_atomic_pointer_add (&route->n_failed, 1);

  return reply;
}

/* A request sent on to a dispatcher, until its reply comes back. */
typedef struct
{
  SparkInvocation *invocation;   /* a reference */
  Route           *route;        /* a reference */
} Forward;

static void
forward_free (gpointer data)
{
  Forward *forward = data;

  g_object_unref (forward->invocation);
  route_unref (forward->route);
  g_free (forward);
}

static void
on_forwarded_reply (GVariant     *reply,
                    const GError *error,
                    gpointer      data)
{
  Forward *forward = data;

  if (error != NULL)
    g_atomic_pointer_add (&forward->route->n_failed, 1);

  if (error != NULL)
    spark_invocation_return_gerror (forward->invocation, error);
  else
    spark_invocation_return_value (forward->invocation, reply);
}

static void
spark_router_handle_invocation (SparkHandler    *handler,
                                SparkInvocation *invocation)
{
  SparkRouter *self = SPARK_ROUTER (handler);
  const char *name = spark_invocation_get_name (invocation);
  GVariant *parameters = spark_invocation_get_parameters (invocation);
  g_autoptr(Route) route = spark_router_find (self, name);
  GError *error = NULL;

  if (route == NULL)
    {
      set_no_route ("request", name, &error);
      spark_invocation_take_error (invocation, error);
      return;
    }

  if (!check_parameters (route, "request", name, parameters, &error) ||
      !check_thread (route, "request", name, &error))
    {
      spark_invocation_take_error (invocation, error);
      return;
    }

  /* The reply is checked where the invocation is completed, whoever
   * completes it. */
  if (route->reply_type != NULL)
    spark_invocation_check_reply (invocation, route->pattern, route->reply_type);

  g_atomic_pointer_add (&route->n_handled, 1);
  if (route->handler != NULL)
    {
      spark_handler_handle_invocation (route->handler, invocation);
    }
  else
    {
      Forward *forward = g_new0 (Forward, 1);

      forward->invocation = g_object_ref (invocation);
      forward->route = route_ref (route);
      spark_dispatcher_request_full (route->dispatcher, name, parameters, NULL,
                                     spark_invocation_get_cancellable (invocation),
                                     on_forwarded_reply, forward, forward_free);
    }
}

gboolean
spark_route_handle_command (SparkRoute    *route,
                            const char    *name,
                            GVariant      *parameters,
                            GCancellable  *cancellable,
                            GError       **error)
{
  gboolean ok;

  if (route == NULL)
    {
      set_no_route ("command", name, error);
      return FALSE;
    }

  if (!check_parameters (route, "command", name, parameters, error) ||
      !check_thread (route, "command", name, error))
    return FALSE;

  g_atomic_pointer_add (&route->n_handled, 1);

  if (route->dispatcher != NULL)
    ok = spark_dispatcher_try_send_command (route->dispatcher, name, parameters, error);
  /* The wrapper guards against a Python interpreter that exits. */
  else if (route->is_python)
    ok = spark_handler_handle_command (route->handler, name, parameters, cancellable, error);
  else if (route->iface->handle_command == NULL)
    {
      spark_handler_set_not_supported (route->handler, SPARK_MESSAGE_COMMAND, name, error);
      ok = FALSE;
    }
  else
    ok = route->iface->handle_command (route->handler, name, parameters, cancellable, error);

  if (!ok)
    g_atomic_pointer_add (&route->n_failed, 1);

  return ok;
}

static gboolean
spark_router_handle_command (SparkHandler  *handler,
                             const char    *name,
                             GVariant      *parameters,
                             GCancellable  *cancellable,
                             GError       **error)
{
  SparkRouter *self = SPARK_ROUTER (handler);
  g_autoptr(Route) route = spark_router_find (self, name);

  return spark_route_handle_command (route, name, parameters, cancellable, error);
}

static SparkHandlerFlags
spark_router_get_flags (SparkHandler *handler)
{
  SparkRouter *self = SPARK_ROUTER (handler);

  return g_atomic_int_get (&self->concurrent) ? SPARK_HANDLER_FLAGS_CONCURRENT : SPARK_HANDLER_FLAGS_NONE;
}

static void
spark_router_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_invocation = spark_router_handle_invocation;
  iface->handle_command = spark_router_handle_command;
  iface->get_flags = spark_router_get_flags;
}

static void
spark_router_finalize (GObject *object)
{
  SparkRouter *self = SPARK_ROUTER (object);

  g_clear_pointer (&self->exact, g_hash_table_unref);
  g_clear_pointer (&self->prefixes, g_ptr_array_unref);
  g_mutex_clear (&self->mutex);

  G_OBJECT_CLASS (spark_router_parent_class)->finalize (object);
}

static void
spark_router_class_init (SparkRouterClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = spark_router_finalize;
}

static void
spark_router_init (SparkRouter *self)
{
  g_mutex_init (&self->mutex);
  self->exact = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, (GDestroyNotify) route_unref);
  self->prefixes = g_ptr_array_new_with_free_func ((GDestroyNotify) route_unref);
}

/**
 * spark_router_new:
 *
 * Creates a router without routes: every message fails with
 * %SPARK_CHANNEL_ERROR_NOT_SUPPORTED until routes are added. Serve it with
 * [ctor@Spark.ModuleServer.new] like any handler.
 *
 * Returns: (transfer full): a new [class@Spark.Router]
 *
 * Since: 1.0
 */
SparkRouter *
spark_router_new (void)
{
  return g_object_new (SPARK_TYPE_ROUTER, NULL);
}

static gboolean
pattern_is_valid (const char *pattern)
{
  const char *star;

  if (pattern == NULL || *pattern == '\0')
    return FALSE;

  star = strchr (pattern, '*');
  return star == NULL || star[1] == '\0';
}

/* Whether @target is @from or routes there, through handler routes: a
 * router that routes to itself would recurse until the stack ends. */
static gboolean
router_reaches (SparkRouter *from,
                SparkRouter *target)
{
  g_autoptr(GPtrArray) children = g_ptr_array_new_with_free_func (g_object_unref);
  GHashTableIter iter;
  gpointer value;

  if (from == target)
    return TRUE;

  /* The children under this router's lock only: never two locks at once. */
  g_mutex_lock (&from->mutex);
  g_hash_table_iter_init (&iter, from->exact);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    if (((Route *) value)->handler != NULL && SPARK_IS_ROUTER (((Route *) value)->handler))
      g_ptr_array_add (children, g_object_ref (((Route *) value)->handler));
  for (guint i = 0; i < from->prefixes->len; i++)
    {
      Route *route = g_ptr_array_index (from->prefixes, i);

      if (route->handler != NULL && SPARK_IS_ROUTER (route->handler))
        g_ptr_array_add (children, g_object_ref (route->handler));
    }
  g_mutex_unlock (&from->mutex);

  for (guint i = 0; i < children->len; i++)
    if (router_reaches (g_ptr_array_index (children, i), target))
      return TRUE;

  return FALSE;
}

static gboolean
routes_to (SparkHandler *handler,
           SparkRouter  *self)
{
  return SPARK_IS_ROUTER (handler) && router_reaches (SPARK_ROUTER (handler), self);
}

static gboolean
type_is_valid (const GVariantType *type)
{
  return type == NULL || g_variant_type_string_scan ((const char *) type, NULL, NULL);
}

static gint
compare_prefix_length (gconstpointer a,
                       gconstpointer b)
{
  const Route *ra = *(Route * const *) a;
  const Route *rb = *(Route * const *) b;

  return (ra->prefix_len < rb->prefix_len) - (ra->prefix_len > rb->prefix_len);
}

static gboolean
spark_router_add (SparkRouter  *self,
                  Route        *route,
                  GError      **error)
{
  gboolean exists;

  g_mutex_lock (&self->mutex);
  if (self->concurrent && !route->concurrent)
    {
      g_mutex_unlock (&self->mutex);
      if (route->main_only)
        g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                     "The router is concurrent, and the handler %s of route “%s” is written in "
                     "JavaScript, which GJS runs only on its main thread",
                     G_OBJECT_TYPE_NAME (route->handler), route->pattern);
      else
        g_set_error (error, SPARK_CHANNEL_ERROR, SPARK_CHANNEL_ERROR_NOT_SUPPORTED,
                     "The router is concurrent, and the handler %s of route “%s” does not "
                     "declare SPARK_HANDLER_FLAGS_CONCURRENT",
                     G_OBJECT_TYPE_NAME (route->handler), route->pattern);
      route_unref (route);
      return FALSE;
    }
  if (route->is_prefix)
    {
      exists = FALSE;
      for (guint i = 0; i < self->prefixes->len && !exists; i++)
        exists = strcmp (((Route *) g_ptr_array_index (self->prefixes, i))->pattern, route->pattern) == 0;
      if (!exists)
        {
          g_ptr_array_add (self->prefixes, route_ref (route));
          g_ptr_array_sort (self->prefixes, compare_prefix_length);
          g_atomic_int_inc ((gint *) &self->generation);
        }
    }
  else
    {
      exists = g_hash_table_contains (self->exact, route->pattern);
      if (!exists)
        {
          g_hash_table_insert (self->exact, route->pattern, route_ref (route));
          g_atomic_int_inc ((gint *) &self->generation);
        }
    }
  g_mutex_unlock (&self->mutex);

  if (exists)
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_EXISTS,
                 "The router has a route “%s” already", route->pattern);
  route_unref (route);

  return !exists;
}

static Route *
route_new (const char         *pattern,
           const GVariantType *parameter_type,
           const GVariantType *reply_type)
{
  Route *route = g_new0 (Route, 1);
  gsize len = strlen (pattern);

  route->ref_count = 1;
  route->pattern = g_strdup (pattern);
  route->is_prefix = pattern[len - 1] == '*';
  route->prefix_len = route->is_prefix ? len - 1 : len;
  route->parameter_type = parameter_type ? g_variant_type_copy (parameter_type) : NULL;
  route->reply_type = reply_type ? g_variant_type_copy (reply_type) : NULL;
  route->overflow = -1;
  route->ordering = -1;

  return route;
}

/**
 * spark_router_add_handler:
 * @self: a [class@Spark.Router]
 * @pattern: a message name, or a prefix followed by `*`
 * @handler: the handler that gets what @pattern takes
 * @parameter_type: (nullable): the type the parameters must have, or %NULL
 *   for any (parameters of a declared type must be given)
 * @reply_type: (nullable): the type the replies must have, or %NULL for any
 * @error: return location for an error
 *
 * Routes the messages that @pattern takes to @handler, which is called on
 * the router's server context, as the router is. @handler may be another
 * router, but not one that routes back to this one. Fails with
 * %G_IO_ERROR_EXISTS if the router has a route of that pattern already.
 *
 * May be called from any thread, while the router serves.
 *
 * Returns: %TRUE if the route was added
 *
 * Since: 1.0
 */
gboolean
spark_router_add_handler (SparkRouter        *self,
                          const char         *pattern,
                          SparkHandler       *handler,
                          const GVariantType *parameter_type,
                          const GVariantType *reply_type,
                          GError            **error)
{
  Route *route;

  g_return_val_if_fail (SPARK_IS_ROUTER (self), FALSE);
  g_return_val_if_fail (pattern_is_valid (pattern), FALSE);
  g_return_val_if_fail (SPARK_IS_HANDLER (handler), FALSE);
  g_return_val_if_fail (!routes_to (handler, self), FALSE);
  g_return_val_if_fail (type_is_valid (parameter_type), FALSE);
  g_return_val_if_fail (type_is_valid (reply_type), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  route = route_new (pattern, parameter_type, reply_type);
  route->handler = g_object_ref (handler);
  route->iface = SPARK_HANDLER_GET_IFACE (handler);
  route->is_python = spark_handler_is_python (handler);
  route->main_only = spark_handler_is_main_only (handler);
  route->direct = !spark_handler_uses_invocation (handler);
  route->concurrent = !route->main_only &&
                      (spark_handler_get_flags (handler) & SPARK_HANDLER_FLAGS_CONCURRENT) != 0;

  return spark_router_add (self, route, error);
}

/**
 * spark_router_add_dispatcher:
 * @self: a [class@Spark.Router]
 * @pattern: a message name, or a prefix followed by `*`
 * @dispatcher: where the messages that @pattern takes are sent on
 * @parameter_type: (nullable): the type the parameters must have, or %NULL
 *   for any
 * @reply_type: (nullable): the type the replies must have, or %NULL for any
 * @error: return location for an error
 *
 * Routes the messages that @pattern takes to another module, which
 * @dispatcher sends to. Requests go with
 * [method@Spark.Dispatcher.request_full] (the reply, or the error, goes
 * back unchanged; the requester's cancellation reaches the other module),
 * commands with [method@Spark.Dispatcher.try_send_command]. Fails with
 * %G_IO_ERROR_EXISTS if the router has a route of that pattern already.
 *
 * May be called from any thread, while the router serves.
 *
 * Returns: %TRUE if the route was added
 *
 * Since: 1.0
 */
gboolean
spark_router_add_dispatcher (SparkRouter        *self,
                             const char         *pattern,
                             SparkDispatcher    *dispatcher,
                             const GVariantType *parameter_type,
                             const GVariantType *reply_type,
                             GError            **error)
{
  Route *route;

  g_return_val_if_fail (SPARK_IS_ROUTER (self), FALSE);
  g_return_val_if_fail (pattern_is_valid (pattern), FALSE);
  g_return_val_if_fail (SPARK_IS_DISPATCHER (dispatcher), FALSE);
  g_return_val_if_fail (type_is_valid (parameter_type), FALSE);
  g_return_val_if_fail (type_is_valid (reply_type), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  route = route_new (pattern, parameter_type, reply_type);
  route->dispatcher = g_object_ref (dispatcher);
  route->concurrent = TRUE;   /* a send, from any thread */

  return spark_router_add (self, route, error);
}

/**
 * spark_router_remove:
 * @self: a [class@Spark.Router]
 * @pattern: the pattern of a route, as it was added
 *
 * Removes a route. Messages it already took finish on it; later ones go
 * to the next best route, if any.
 *
 * May be called from any thread, while the router serves.
 *
 * Returns: %TRUE if the router had a route of that pattern
 *
 * Since: 1.0
 */
gboolean
spark_router_remove (SparkRouter *self,
                     const char  *pattern)
{
  gboolean removed = FALSE;

  g_return_val_if_fail (SPARK_IS_ROUTER (self), FALSE);
  g_return_val_if_fail (pattern != NULL, FALSE);

  g_mutex_lock (&self->mutex);
  removed = g_hash_table_remove (self->exact, pattern);
  for (guint i = 0; i < self->prefixes->len && !removed; i++)
    {
      if (strcmp (((Route *) g_ptr_array_index (self->prefixes, i))->pattern, pattern) == 0)
        {
          g_ptr_array_remove_index (self->prefixes, i);   /* keeps the order */
          removed = TRUE;
        }
    }
  if (removed)
    g_atomic_int_inc ((gint *) &self->generation);
  g_mutex_unlock (&self->mutex);

  return removed;
}

static gint
compare_strings (gconstpointer a,
                 gconstpointer b)
{
  return strcmp (*(char * const *) a, *(char * const *) b);
}

/**
 * spark_router_list_patterns:
 * @self: a [class@Spark.Router]
 *
 * The patterns of the router's routes, sorted. May be called from any
 * thread.
 *
 * Returns: (transfer full) (array zero-terminated=1): the patterns
 *
 * Since: 1.0
 */
char **
spark_router_list_patterns (SparkRouter *self)
{
  GPtrArray *patterns;
  GHashTableIter iter;
  gpointer key;

  g_return_val_if_fail (SPARK_IS_ROUTER (self), NULL);

  patterns = g_ptr_array_new ();
  g_mutex_lock (&self->mutex);
  g_hash_table_iter_init (&iter, self->exact);
  while (g_hash_table_iter_next (&iter, &key, NULL))
    g_ptr_array_add (patterns, g_strdup (key));
  for (guint i = 0; i < self->prefixes->len; i++)
    g_ptr_array_add (patterns, g_strdup (((Route *) g_ptr_array_index (self->prefixes, i))->pattern));
  g_mutex_unlock (&self->mutex);

  g_ptr_array_sort (patterns, compare_strings);
  g_ptr_array_add (patterns, NULL);

  return (char **) g_ptr_array_free (patterns, FALSE);
}

/**
 * spark_router_get_concurrent:
 * @self: a [class@Spark.Router]
 *
 * Whether the router declares itself safe to call from several threads
 * at once: see [method@Spark.Router.set_concurrent]. May be called from
 * any thread.
 *
 * Returns: %TRUE if the router is concurrent
 *
 * Since: 1.0
 */
gboolean
spark_router_get_concurrent (SparkRouter *self)
{
  g_return_val_if_fail (SPARK_IS_ROUTER (self), FALSE);

  return g_atomic_int_get (&self->concurrent);
}

/**
 * spark_router_set_concurrent:
 * @self: a [class@Spark.Router]
 * @concurrent: whether the router may be called from several threads at once
 *
 * Declares the router concurrent (its [method@Spark.Handler.get_flags]
 * then has %SPARK_HANDLER_FLAGS_CONCURRENT), so that a pool of
 * [property@Spark.ModuleServer:workers] may serve it. The router itself is
 * safe to call from several threads; its routes must be too: every
 * handler routed to must declare %SPARK_HANDLER_FLAGS_CONCURRENT
 * (dispatchers always are). Once the router is concurrent, adding a route
 * to a handler that does not fails with %SPARK_CHANNEL_ERROR_NOT_SUPPORTED;
 * making a router concurrent while it has such a route is a programmer
 * error (a critical, and the router stays as it was).
 *
 * Set it before a server serving the router starts: the server reads it
 * then. May be called from any thread.
 *
 * Since: 1.0
 */
void
spark_router_set_concurrent (SparkRouter *self,
                             gboolean     concurrent)
{
  const char *refused = NULL;

  g_return_if_fail (SPARK_IS_ROUTER (self));

  g_mutex_lock (&self->mutex);
  if (concurrent)
    {
      GHashTableIter iter;
      gpointer value;

      g_hash_table_iter_init (&iter, self->exact);
      while (refused == NULL && g_hash_table_iter_next (&iter, NULL, &value))
        if (!((Route *) value)->concurrent)
          refused = ((Route *) value)->pattern;
      for (guint i = 0; refused == NULL && i < self->prefixes->len; i++)
        if (!((Route *) g_ptr_array_index (self->prefixes, i))->concurrent)
          refused = ((Route *) g_ptr_array_index (self->prefixes, i))->pattern;
    }
  if (refused == NULL)
    g_atomic_int_set (&self->concurrent, concurrent != FALSE);
  else
    g_critical ("%s: the route “%s” goes to a handler that does not declare "
                "SPARK_HANDLER_FLAGS_CONCURRENT; the router stays as it was",
                G_STRFUNC, refused);
  g_mutex_unlock (&self->mutex);
}

static void
add_route_metrics (GVariantBuilder *builder,
                   Route           *route)
{
  GVariantBuilder counts;

  g_variant_builder_init (&counts, G_VARIANT_TYPE_VARDICT);
  g_variant_builder_add (&counts, "{sv}", "handled",
                         g_variant_new_uint64 (g_atomic_pointer_get (&route->n_handled)));
  g_variant_builder_add (&counts, "{sv}", "failed",
                         g_variant_new_uint64 (g_atomic_pointer_get (&route->n_failed)));
#define ADD(key, field) \
  g_variant_builder_add (&counts, "{sv}", key, g_variant_new_uint64 (g_atomic_pointer_get (&route->field)))
  ADD ("cancelled", n_cancelled);
  ADD ("timed-out", n_timed_out);
  ADD ("dropped", n_dropped);
  ADD ("queue-time-max", queue_max);
  ADD ("queue-time-samples", queue_n);
  ADD ("handler-time-max", handler_max);
  ADD ("handler-time-samples", handler_n);
#undef ADD
  {
    gsize qn = g_atomic_pointer_get (&route->queue_n), hn = g_atomic_pointer_get (&route->handler_n);

    g_variant_builder_add (&counts, "{sv}", "queue-time-mean",
                           g_variant_new_uint64 (qn ? (gsize) g_atomic_pointer_get (&route->queue_sum) / qn : 0));
    g_variant_builder_add (&counts, "{sv}", "handler-time-mean",
                           g_variant_new_uint64 (hn ? (gsize) g_atomic_pointer_get (&route->handler_sum) / hn : 0));
  }
  g_variant_builder_add (builder, "{s@a{sv}}", route->pattern, g_variant_builder_end (&counts));
}

/**
 * spark_router_get_metrics:
 * @self: a [class@Spark.Router]
 *
 * What each route has done: for each pattern, a dictionary (uint64 values)
 * of `handled` (the messages given to the route, including those that
 * failed) and `failed` (those refused by the route's parameter type, those
 * whose handler failed at once, and forwarded requests whose reply was an
 * error; a request whose handler completes its invocation later with an
 * error counts in `handled` only); and, counted by the
 * [class@Spark.ModuleServer] that serves the router (zero for a router
 * that no server serves directly), `cancelled` and `timed-out` (requests
 * that ended so before their reply), `dropped` (by the overflow policy),
 * and `queue-time-mean`, `queue-time-max`, `handler-time-mean`,
 * `handler-time-max` (µs) with their `queue-time-samples` and
 * `handler-time-samples`, sampled as the server's own (see
 * [property@Spark.ModuleServer:queue-time-mean]). A route removed is
 * forgotten; one added again starts from zero.
 * [method@Spark.ModuleServer.get_metrics] includes this, as `routes`, for a
 * server whose handler is a router.
 *
 * May be called from any thread.
 *
 * Returns: (transfer full): an `a{sa{sv}}` dictionary
 *
 * Since: 1.0
 */
GVariant *
spark_router_get_metrics (SparkRouter *self)
{
  GVariantBuilder builder;
  GHashTableIter iter;
  gpointer value;

  g_return_val_if_fail (SPARK_IS_ROUTER (self), NULL);

  g_variant_builder_init (&builder, G_VARIANT_TYPE ("a{sa{sv}}"));
  g_mutex_lock (&self->mutex);
  g_hash_table_iter_init (&iter, self->exact);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    add_route_metrics (&builder, value);
  for (guint i = 0; i < self->prefixes->len; i++)
    add_route_metrics (&builder, g_ptr_array_index (self->prefixes, i));
  g_mutex_unlock (&self->mutex);

  return g_variant_ref_sink (g_variant_builder_end (&builder));
}

/* The route of @pattern exactly (not the one a name would take), a
 * reference; NULL with @error set if there is none. */
static Route *
find_pattern (SparkRouter  *self,
              const char   *pattern,
              GError      **error)
{
  Route *route;

  g_mutex_lock (&self->mutex);
  route = g_hash_table_lookup (self->exact, pattern);
  for (guint i = 0; route == NULL && i < self->prefixes->len; i++)
    if (strcmp (((Route *) g_ptr_array_index (self->prefixes, i))->pattern, pattern) == 0)
      route = g_ptr_array_index (self->prefixes, i);
  if (route != NULL)
    route_ref (route);
  g_mutex_unlock (&self->mutex);

  if (route == NULL)
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                 "The router has no route “%s”", pattern);
  return route;
}

/* Sets one of a route's flow settings (an atomic gint at @offset in the
 * route); fails if the router has no route @pattern. */
static gboolean
set_route_setting (SparkRouter  *self,
                   const char   *pattern,
                   glong         offset,
                   gint          value,
                   GError      **error)
{
  g_autoptr(Route) route = find_pattern (self, pattern, error);

  if (route == NULL)
    return FALSE;

  g_atomic_int_set ((gint *) G_STRUCT_MEMBER_P (route, offset), value);
  return TRUE;
}

/* A route's flow setting at @offset, -1 if it has none of its own (or
 * there is no route). */
static gint
get_route_setting (SparkRoute *route,
                   glong       offset)
{
  return route != NULL ? g_atomic_int_get ((gint *) G_STRUCT_MEMBER_P (route, offset)) : -1;
}

/**
 * spark_router_set_overflow:
 * @self: a [class@Spark.Router]
 * @pattern: the pattern of a route, as it was added
 * @overflow: what a full mailbox does with the route's messages
 * @error: return location for an error
 *
 * Gives a route its own [property@Spark.ModuleServer:overflow] policy: a
 * message this route takes that finds the bounded mailbox of the router's
 * server full is dealt with by @overflow instead of the server's policy.
 * What it drops is the route's own: %SPARK_OVERFLOW_DROP_OLDEST drops the
 * oldest queued message of this route (or the new one if none is queued),
 * and the coalescing policies only replace commands of this route (a
 * command's name says its route). So a flood of progress commands can be
 * coalesced while requests to the same module wait for room.
 *
 * Fails with %G_IO_ERROR_NOT_FOUND if the router has no route @pattern.
 * Removing the route forgets its policy. May be called from any thread,
 * while the router serves; it applies to the messages sent afterwards.
 *
 * Returns: %TRUE if the route has the policy now
 *
 * Since: 1.0
 */
gboolean
spark_router_set_overflow (SparkRouter          *self,
                           const char           *pattern,
                           SparkOverflowPolicy   overflow,
                           GError              **error)
{
  g_return_val_if_fail (SPARK_IS_ROUTER (self), FALSE);
  g_return_val_if_fail (pattern != NULL, FALSE);
  g_return_val_if_fail (overflow >= SPARK_OVERFLOW_WAIT && overflow <= SPARK_OVERFLOW_COALESCE_KEY, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  return set_route_setting (self, pattern, G_STRUCT_OFFSET (Route, overflow), (gint) overflow, error);
}

/**
 * spark_router_set_ordering:
 * @self: a [class@Spark.Router]
 * @pattern: the pattern of a route, as it was added
 * @ordering: how a pool keeps the route's messages in order
 * @error: return location for an error
 *
 * Gives a route its own [property@Spark.ModuleServer:ordering], for a
 * router served by a pool of [property@Spark.ModuleServer:workers]: the
 * route's messages are kept in order by @ordering instead of the server's
 * ordering. For example, a key-value module's `kv.*` route ordered by key
 * (each key's writes in order) next to a `render` route in no order.
 *
 * Fails with %G_IO_ERROR_NOT_FOUND if the router has no route @pattern.
 * May be called from any thread, while the router serves; it applies to
 * the messages taken afterwards.
 *
 * Returns: %TRUE if the route has the ordering now
 *
 * Since: 1.0
 */
gboolean
spark_router_set_ordering (SparkRouter    *self,
                           const char     *pattern,
                           SparkOrdering   ordering,
                           GError        **error)
{
  g_return_val_if_fail (SPARK_IS_ROUTER (self), FALSE);
  g_return_val_if_fail (pattern != NULL, FALSE);
  g_return_val_if_fail (ordering >= SPARK_ORDERING_NONE && ordering <= SPARK_ORDERING_KEY, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  return set_route_setting (self, pattern, G_STRUCT_OFFSET (Route, ordering), (gint) ordering, error);
}

/* The overflow policy of @route, if it has one of its own. */
gboolean
spark_route_get_overflow (SparkRoute          *route,
                          SparkOverflowPolicy *overflow)
{
  gint value = get_route_setting (route, G_STRUCT_OFFSET (Route, overflow));

  if (value < 0)
    return FALSE;
  *overflow = (SparkOverflowPolicy) value;
  return TRUE;
}

/* The ordering of @route, if it has one of its own. */
gboolean
spark_route_get_ordering (SparkRoute    *route,
                          SparkOrdering *ordering)
{
  gint value = get_route_setting (route, G_STRUCT_OFFSET (Route, ordering));

  if (value < 0)
    return FALSE;
  *ordering = (SparkOrdering) value;
  return TRUE;
}

/* The server's counts for @route (NULL: none). From any thread. */
void
spark_route_count (SparkRoute      *route,
                   SparkRouteCount  what)
{
  if (route == NULL)
    return;

  switch (what)
    {
    case SPARK_ROUTE_COUNT_CANCELLED:
      g_atomic_pointer_add (&route->n_cancelled, 1);
      break;
    case SPARK_ROUTE_COUNT_TIMED_OUT:
      g_atomic_pointer_add (&route->n_timed_out, 1);
      break;
    case SPARK_ROUTE_COUNT_DROPPED:
    default:
      g_atomic_pointer_add (&route->n_dropped, 1);
      break;
    }
}

static void
add_time (gsize  *n,
          gsize  *sum,
          gsize  *max,
          gint64  usec)
{
  gsize t = (gsize) MAX (usec, 0);
  gsize old;

  g_atomic_pointer_add (n, 1);
  g_atomic_pointer_add (sum, t);
  while ((old = (gsize) g_atomic_pointer_get (max)) < t &&
         !g_atomic_pointer_compare_and_exchange ((gpointer *) max, (gpointer) old, (gpointer) t))
    ;
}

/* A sampled message's times, in µs; a negative one was not measured. */
void
spark_route_add_times (SparkRoute *route,
                       gint64      queue_usec,
                       gint64      handler_usec)
{
  if (route == NULL)
    return;
  if (queue_usec >= 0)
    add_time (&route->queue_n, &route->queue_sum, &route->queue_max, queue_usec);
  if (handler_usec >= 0)
    add_time (&route->handler_n, &route->handler_sum, &route->handler_max, handler_usec);
}
