/* spark-reply-port.c: batched delivery of outcomes to a requester's context
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * One reply port per GMainContext that has sent asynchronous requests: a
 * GSource attached to that context for as long as the context lives, with a
 * stack of finished items. Whoever finishes an item (a server thread, a
 * canceller, the timer) pushes it with one compare-and-swap, and wakes the
 * context only if the stack was empty and the port is not being
 * dispatched, so one wakeup and one dispatch deliver a whole batch of
 * replies. The dispatch takes the whole stack with one exchange and
 * delivers it oldest first, so each pusher's items arrive in the order it
 * pushed them. No lock: perf on pipelined requests had the server spinning
 * on the port's mutex while the requester took its batches.
 *
 * Items are delivered from inside the port's dispatch, on the requester's
 * context, so a GTask returned there calls back at once instead of through
 * an idle source of its own.
 */

#include "config.h"

#include "spark-async-result-private.h"
#include "spark-reply-port-private.h"
#include "spark-wake-source-private.h"

/* Items delivered per dispatch at most, so that a stream of replies does
 * not starve the context's other sources. */
#define PORT_BUDGET 1024

struct _SparkReplyPort
{
  SparkWakeSource source;      /* ready while woken or dispatching: pushers need not wake it */

  SparkPortItem  *stack;       /* atomic: pushed items, newest first */

  SparkPortItem  *pending;     /* its dispatch: taken from @stack, oldest first, not delivered yet */

  GMainContext   *context;     /* the context it is attached to; not a reference */
  gint            holds;       /* atomic: outcomes on their way here (see port_hold()) */

  SparkAsyncResultPool results; /* its dispatch: spare request_async() results */
};

/* Which port serves which context. A port leaves the table when its
 * context is finalized (and with it, the attached port). */
G_LOCK_DEFINE_STATIC (ports);
static GHashTable *ports;

typedef struct
{
  GMainContext   *context;    /* not a reference: compared only */
  SparkReplyPort *port;       /* a reference */
} PortCache;

static void
port_cache_free (gpointer data)
{
  PortCache *cache = data;

  if (cache->port != NULL)
    g_source_unref ((GSource *) cache->port);
  g_free (cache);
}

static GPrivate port_cache_key = G_PRIVATE_INIT (port_cache_free);

/* Reverses a stack of items into delivery order, oldest first. */
static SparkPortItem *
reverse_items (SparkPortItem *stack)
{
  SparkPortItem *list = NULL;

  while (stack != NULL)
    {
      SparkPortItem *item = stack;

      stack = item->next;
      item->next = list;
      list = item;
    }

  return list;
}

static gboolean
spark_reply_port_dispatch (gpointer data)
{
  SparkReplyPort *port = data;
  GMainContext *thread_default = g_main_context_get_thread_default ();
  gboolean push = (thread_default ? thread_default : g_main_context_default ()) != port->context;
  guint delivered = 0;

  spark_spin_note_event (&port->source.spin);

  /* Callbacks run with their context as the thread-default one, as a
   * GTask's do, so that what they start replies there too. */
  if (push)
    g_main_context_push_thread_default (port->context);

  /* Deliver until the stack is found empty: items pushed meanwhile join
   * this dispatch, and their pushers find the port ready, so they make no
   * wakeup.
   *
   * A callback may iterate this context again (a modal dialog, a
   * sync-over-async helper): the port can recurse, and a nested dispatch
   * goes on with the same @pending list, so the items taken already are
   * still delivered first and each exactly once, in order. */
  for (;;)
    {
      SparkPortItem *item = port->pending;

      if (item == NULL)
        {
          SparkPortItem *batch = g_atomic_pointer_exchange (&port->stack, NULL);

          if (batch == NULL)
            {
              /* Going idle. A pusher that found the port still ready did
               * not wake it: look once more after clearing the flag. Both
               * are sequentially consistent, so either the pusher sees the
               * flag cleared and wakes the context, or this sees its item. */
              spark_wake_source_set_ready (&port->source, FALSE);
              if (g_atomic_pointer_get (&port->stack) == NULL)
                break;
              spark_wake_source_set_ready (&port->source, TRUE);
              continue;
            }

          port->pending = reverse_items (batch);
          continue;
        }

      /* Still ready: come back after the context's other sources. */
      if (delivered >= PORT_BUDGET)
        break;

      port->pending = item->next;
      item->next = NULL;
      item->deliver (item);
      delivered++;
    }

  if (push)
    g_main_context_pop_thread_default (port->context);

  return G_SOURCE_CONTINUE;
}

static void
spark_reply_port_finalize (GSource *source)
{
  SparkReplyPort *port = (SparkReplyPort *) source;

  G_LOCK (ports);
  if (ports != NULL && g_hash_table_lookup (ports, port->context) == port)
    g_hash_table_remove (ports, port->context);
  G_UNLOCK (ports);

  /* Every pushed item comes with a reference on the context, so none can
   * be left when the context is finalized. */
  g_assert (port->stack == NULL && port->pending == NULL);
  spark_async_result_pool_clear (&port->results);
}


static SparkReplyPort *
spark_reply_port_lookup (GMainContext *context)
{
  SparkReplyPort *port;

  G_LOCK (ports);

  if (ports == NULL)
    ports = g_hash_table_new (NULL, NULL);

  port = g_hash_table_lookup (ports, context);

  /* A port whose context died, found again because a new context took the
   * same address (a cache still holds it, so it is not finalized yet). */
  if (port != NULL && g_source_is_destroyed ((GSource *) port))
    {
      g_hash_table_remove (ports, context);
      port = NULL;
    }

  if (port == NULL)
    {
      port = (SparkReplyPort *) spark_wake_source_new (sizeof *port, spark_reply_port_dispatch,
                                                        spark_reply_port_finalize, "[spark] replies");
      port->context = context;
      /* Nested iterations of the context deliver too (GTask semantics). */
      g_source_set_can_recurse ((GSource *) port, TRUE);
      spark_wake_source_attach (&port->source, context);
      g_hash_table_insert (ports, context, port);
    }
  else
    g_source_ref ((GSource *) port);

  G_UNLOCK (ports);

  return port;
}

/* A hold is an outcome on its way. The holds together keep the context
 * alive, and with it the attached port: the first takes a reference on the
 * context and the last drops it, so a stream of requests costs one atomic
 * each way, not two. Holds are only taken on the caller's thread-default
 * context, which its caller keeps alive meanwhile: a hold taken from zero
 * never finds the context gone. Every 0 -> 1 takes one reference and
 * every 1 -> 0 drops one, in whatever order two threads get there.
 *
 * An outcome that another thread produces may come soon: the context may
 * spin for it in prepare (the wake source's expecting count). One that
 * only this context can produce (the server runs on it) never comes while
 * the thread spins, so it is held without being expected. */
static void
port_hold (SparkReplyPort *port,
           gboolean        soon)
{
  if (g_atomic_int_add (&port->holds, 1) == 0)
    g_main_context_ref (port->context);
  if (soon)
    g_atomic_int_inc (&port->source.expecting);
}

/*
 * spark_reply_port_hold:
 * @producer: (nullable): the context that produces the outcome (a
 *   server's), if known
 *
 * Returns: (transfer full): the port of the calling thread's thread-default
 *   context, held (its context alive) until spark_reply_port_release().
 */
SparkReplyPort *
spark_reply_port_hold (GMainContext *producer)
{
  GMainContext *context = g_main_context_get_thread_default ();
  PortCache *cache = g_private_get (&port_cache_key);

  if (context == NULL)
    context = g_main_context_default ();

  if G_UNLIKELY (cache == NULL)
    {
      cache = g_new0 (PortCache, 1);
      g_private_set (&port_cache_key, cache);
    }

  /* The cached port is still the one of this context unless its context
   * died (and the port with it) and a new one took the same address. */
  if G_UNLIKELY (cache->port == NULL ||
                 cache->context != context ||
                 g_source_is_destroyed ((GSource *) cache->port))
    {
      if (cache->port != NULL)
        g_source_unref ((GSource *) cache->port);
      cache->port = spark_reply_port_lookup (context);
      cache->context = context;
    }

  port_hold (cache->port, spark_reply_port_expects_soon (cache->port, producer));
  return cache->port;
}

/* Whether an outcome from @producer may come while this port's thread
 * spins: not if @producer is this port's own context. */
gboolean
spark_reply_port_expects_soon (SparkReplyPort *port,
                               GMainContext   *producer)
{
  return producer != NULL && producer != port->context;
}

/* Another hold on a port already held (by the caller's own hold, which
 * keeps its context alive meanwhile), from any thread. Never expected
 * soon. Released with spark_reply_port_release (port, FALSE). */
void
spark_reply_port_add_hold (SparkReplyPort *port)
{
  g_assert (g_atomic_int_get (&port->holds) > 0);
  port_hold (port, FALSE);
}

void
spark_reply_port_release (SparkReplyPort *port,
                          gboolean        soon)
{
  GMainContext *context = port->context;

  if (soon)
    g_atomic_int_add (&port->source.expecting, -1);
  if (g_atomic_int_dec_and_test (&port->holds))
    g_main_context_unref (context);
}

/* Whether outcomes are on their way to @context's port: requests made on
 * that context (and waits for room) that have not been delivered yet. A
 * server's thread goes on iterating its context after the server stopped
 * until this is FALSE, so that nothing it asked for is lost. */
gboolean
spark_reply_port_context_is_expecting (GMainContext *context)
{
  SparkReplyPort *port;
  gboolean expecting = FALSE;

  G_LOCK (ports);
  port = ports != NULL ? g_hash_table_lookup (ports, context) : NULL;
  if (port != NULL && !g_source_is_destroyed ((GSource *) port))
    expecting = g_atomic_int_get (&port->holds) > 0;
  G_UNLOCK (ports);

  return expecting;
}

/* For an item's deliver function, from the port's dispatch only. */
SparkAsyncResultPool *
spark_reply_port_get_result_pool (SparkReplyPort *port)
{
  return &port->results;
}

/* From any thread. The item is delivered on the port's context. */
void
spark_reply_port_push (SparkReplyPort *port,
                       SparkPortItem  *item)
{
  SparkPortItem *old = g_atomic_pointer_get (&port->stack);

  do
    item->next = old;
  while (!g_atomic_pointer_compare_and_exchange_full (&port->stack, old, item, &old));

  /* Only the first item after the port went idle needs a wakeup; the
   * wake source makes none while the port is ready anyway. */
  if (old == NULL)
    spark_wake_source_wake (&port->source);
}
