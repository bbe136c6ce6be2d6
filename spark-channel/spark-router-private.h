/* spark-router-private.h: the router's fast path, for its server
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A request routed to a plain handler (one that answers by returning) is
 * handled by a call, as a server handles its own handler's: no
 * SparkInvocation per request. The server looks the route up, and keeps
 * the invocation path for the rest (dispatcher routes, invocation and
 * Python handlers).
 */

#pragma once

#include "spark-router.h"

G_BEGIN_DECLS

typedef struct _SparkRoute SparkRoute;

/* The last names one thread (a server's) routed, so that a stream of the
 * same few names does not take the router's lock and hash each time.
 * Valid while the router's routes have not changed since (a generation
 * count says). Names longer than the slot are not cached. */
#define SPARK_ROUTE_CACHE_SLOTS 4
#define SPARK_ROUTE_CACHE_NAME  32

typedef struct
{
  guint       generation;
  SparkRoute *route;                           /* a reference, or NULL */
  char        name[SPARK_ROUTE_CACHE_NAME];
} SparkRouteCacheSlot;

typedef struct
{
  SparkRouteCacheSlot slots[SPARK_ROUTE_CACHE_SLOTS];
  guint               next;                    /* the slot to fill next */
} SparkRouteCache;

SparkRoute *spark_router_find          (SparkRouter   *self,
                                        const char    *name);
/* (transfer none): valid until the next call with @cache, or its clear. */
SparkRoute *spark_router_find_cached   (SparkRouter     *self,
                                        SparkRouteCache *cache,
                                        const char      *name);
void        spark_route_cache_clear    (SparkRouteCache *cache);
gboolean    spark_route_handle_command (SparkRoute    *route,
                                        const char    *name,
                                        GVariant      *parameters,
                                        GCancellable  *cancellable,
                                        GError       **error);
SparkRoute *spark_route_ref            (SparkRoute    *route);
void        spark_route_unref          (SparkRoute    *route);
gboolean    spark_route_is_direct      (SparkRoute    *route);
typedef enum {
  SPARK_ROUTE_COUNT_CANCELLED,
  SPARK_ROUTE_COUNT_TIMED_OUT,
  SPARK_ROUTE_COUNT_DROPPED,
} SparkRouteCount;

/* The serving server's metrics of a route (nullable: no route). */
void        spark_route_count          (SparkRoute          *route,
                                        SparkRouteCount      what);
void        spark_route_add_times      (SparkRoute          *route,
                                        gint64               queue_usec,
                                        gint64               handler_usec);
gboolean    spark_route_get_overflow   (SparkRoute          *route,
                                        SparkOverflowPolicy *overflow);
gboolean    spark_route_get_ordering   (SparkRoute          *route,
                                        SparkOrdering       *ordering);
GVariant   *spark_route_handle_request (SparkRoute    *route,
                                        const char    *name,
                                        GVariant      *parameters,
                                        GCancellable  *cancellable,
                                        GError       **error);

G_END_DECLS
