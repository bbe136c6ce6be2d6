/* fuzz-api.c: drives spark-channel's public API from a byte string
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The input is read as a configuration (capacity, where the server runs,
 * handler style, timeout) followed by a program of operations: requests of
 * every kind, commands of every kind, cancellations, shutdowns, timeouts,
 * iterations of the main context. Names, reply types and parameters come
 * from the input; parameters are GVariants deserialized from it with
 * g_variant_new_from_data() and g_variant_get_normal_form().
 *
 * Whatever the input, every request must complete exactly once, and the
 * server and handler must be finalized at the end: otherwise the target
 * aborts. Programmer errors the input provokes (an empty name, an invalid
 * reply type) must stay criticals: they are counted, not fatal.
 *
 * Built with -Dfuzzing=true (clang, libFuzzer), it is a fuzz target; built
 * normally, its main() replays the files given on the command line, which
 * is how the test suite runs the committed corpus.
 */

#include <spark-channel.h>
#include <stdlib.h>
#include <string.h>

typedef struct
{
  const guint8 *data;
  gsize         len;
  gsize         pos;
} Input;

static guint8
take_byte (Input *in)
{
  return in->pos < in->len ? in->data[in->pos++] : 0;
}

static gboolean
at_end (Input *in)
{
  return in->pos >= in->len;
}

/* A string of 0..15 bytes from the input (not necessarily UTF-8). */
static char *
take_string (Input *in)
{
  guint len = take_byte (in) % 16;
  char *str = g_malloc0 (len + 1);

  for (guint i = 0; i < len && !at_end (in); i++)
    {
      str[i] = (char) take_byte (in);
      if (str[i] == '\0')
        str[i] = 'x';
    }

  return str;
}

static const char *const type_strings[] = { "i", "s", "(s)", "(su)", "au", "v", "a{sv}", "(i", "", "b" };

/* A GVariant of a type from a short list, its bytes from the input, in
 * normal form; or NULL. */
static GVariant *
take_variant (Input *in)
{
  guint8 choice = take_byte (in) % 8;
  guint len = take_byte (in) % 32;
  const char *type_string;
  g_autoptr(GBytes) bytes = NULL;
  g_autoptr(GVariant) value = NULL;

  if (choice == 7)
    return NULL;

  type_string = type_strings[choice];
  if (!g_variant_type_string_is_valid (type_string))
    return NULL;

  len = MIN (len, in->len - in->pos);
  bytes = g_bytes_new (in->data + in->pos, len);
  in->pos += len;

  value = g_variant_ref_sink (g_variant_new_from_bytes (G_VARIANT_TYPE (type_string), bytes, FALSE));
  return g_variant_get_normal_form (value);
}

/* A reply type, sometimes invalid (a programmer error: a critical). */
static const GVariantType *
take_reply_type (Input *in)
{
  guint8 choice = take_byte (in) % (G_N_ELEMENTS (type_strings) + 1);

  if (choice == G_N_ELEMENTS (type_strings))
    return NULL;
  return (const GVariantType *) type_strings[choice];
}

/* The handler ------------------------------------------------------------- */

#define FUZZ_TYPE_HANDLER (fuzz_handler_get_type ())
G_DECLARE_FINAL_TYPE (FuzzHandler, fuzz_handler, FUZZ, HANDLER, GObject)

struct _FuzzHandler
{
  GObject parent_instance;
};

static void fuzz_handler_iface_init (SparkHandlerInterface *iface);

G_DEFINE_FINAL_TYPE_WITH_CODE (FuzzHandler, fuzz_handler, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, fuzz_handler_iface_init))

/* Echoes its parameters; fails on names starting with 'e'; gives no reply
 * on names starting with 'n'. */
static GVariant *
fuzz_handler_handle_request (SparkHandler  *handler,
                             const char    *name,
                             GVariant      *parameters,
                             GCancellable  *cancellable,
                             GError       **error)
{
  if (name[0] == 'e')
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "failed %s", name);
      return NULL;
    }
  if (name[0] == 'n')
    return NULL;
  return parameters ? g_variant_ref (parameters) : g_variant_new_boolean (TRUE);
}

static gboolean
fuzz_handler_handle_command (SparkHandler  *handler,
                             const char    *name,
                             GVariant      *parameters,
                             GCancellable  *cancellable,
                             GError       **error)
{
  if (name[0] == 'e')
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "failed %s", name);
      return FALSE;
    }
  return TRUE;
}

static void
fuzz_handler_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_request = fuzz_handler_handle_request;
  iface->handle_command = fuzz_handler_handle_command;
}

static void
fuzz_handler_class_init (FuzzHandlerClass *klass)
{
}

static void
fuzz_handler_init (FuzzHandler *self)
{
}

/* The same, replying through held invocations: now, from an idle, or
 * never (dropped: NO_REPLY). */
#define FUZZ_TYPE_LATE_HANDLER (fuzz_late_handler_get_type ())
G_DECLARE_FINAL_TYPE (FuzzLateHandler, fuzz_late_handler, FUZZ, LATE_HANDLER, GObject)

struct _FuzzLateHandler
{
  GObject parent_instance;
};

static void fuzz_late_handler_iface_init (SparkHandlerInterface *iface);

G_DEFINE_FINAL_TYPE_WITH_CODE (FuzzLateHandler, fuzz_late_handler, G_TYPE_OBJECT,
                               G_IMPLEMENT_INTERFACE (SPARK_TYPE_HANDLER, fuzz_late_handler_iface_init))

static gboolean
complete_later (gpointer data)
{
  SparkInvocation *invocation = data;
  GVariant *parameters = spark_invocation_get_parameters (invocation);

  if (spark_invocation_get_name (invocation)[0] == 'e')
    spark_invocation_return_error_literal (invocation, G_IO_ERROR, G_IO_ERROR_FAILED, "failed");
  else
    spark_invocation_return_value (invocation, parameters ? parameters : g_variant_new_boolean (TRUE));
  return G_SOURCE_REMOVE;
}

static void
fuzz_late_handler_handle_invocation (SparkHandler    *handler,
                                     SparkInvocation *invocation)
{
  switch (strlen (spark_invocation_get_name (invocation)) % 3)
    {
    case 0:
      complete_later (invocation);
      break;

    case 1:
      {
        /* On the server's context (the thread-default one here), not the
         * global default one, which may be blocked in request_sync(). */
        GSource *idle = g_idle_source_new ();

        g_source_set_callback (idle, complete_later, g_object_ref (invocation), g_object_unref);
        g_source_attach (idle, g_main_context_get_thread_default ());
        g_source_unref (idle);
      }
      break;

    case 2:
    default:
      break;   /* dropped */
    }
}

static void
fuzz_late_handler_iface_init (SparkHandlerInterface *iface)
{
  iface->handle_invocation = fuzz_late_handler_handle_invocation;
  iface->handle_command = fuzz_handler_handle_command;
}

static void
fuzz_late_handler_class_init (FuzzLateHandlerClass *klass)
{
}

static void
fuzz_late_handler_init (FuzzLateHandler *self)
{
}

/* The program -------------------------------------------------------------- */

typedef struct
{
  gint started;     /* requests whose completion must come */
  gint completed;
  gint stopped;
  GPtrArray *cancellables;
} Run;

static void
check_completion (Run *run)
{
  g_atomic_int_inc (&run->completed);
  if (g_atomic_int_get (&run->completed) > g_atomic_int_get (&run->started))
    {
      g_printerr ("fuzz-api: a request completed more than once\n");
      abort ();
    }
}

static void
on_reply (GObject      *source,
          GAsyncResult *result,
          gpointer      user_data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GVariant) reply = spark_dispatcher_request_finish (SPARK_DISPATCHER (source), result, &error);

  if ((reply == NULL) == (error == NULL))
    abort ();
  check_completion (user_data);
}

static void
on_full_reply (GVariant     *reply,
               const GError *error,
               gpointer      user_data)
{
  if ((reply == NULL) == (error == NULL))
    abort ();
  check_completion (user_data);
}

static void
on_command_sent (GObject      *source,
                 GAsyncResult *result,
                 gpointer      user_data)
{
  g_autoptr(GError) error = NULL;

  spark_dispatcher_send_command_finish (SPARK_DISPATCHER (source), result, &error);
  check_completion (user_data);
}

static void
on_stopped (GObject      *source,
            GAsyncResult *result,
            gpointer      user_data)
{
  Run *run = user_data;

  spark_module_server_shutdown_finish (SPARK_MODULE_SERVER (source), result, NULL);
  run->stopped++;
}

static void
on_command_failed (SparkModuleServer *server,
                   const char        *name,
                   GVariant          *parameters,
                   const GError      *error,
                   gpointer           user_data)
{
}

static GCancellable *
take_cancellable (Input *in,
                  Run   *run)
{
  guint8 choice = take_byte (in) % 4;
  GCancellable *cancellable;

  if (choice < 2)
    return NULL;

  cancellable = g_cancellable_new ();
  if (choice == 3)
    g_cancellable_cancel (cancellable);
  g_ptr_array_add (run->cancellables, cancellable);
  return cancellable;
}

static void
run_program (const guint8 *data,
             gsize         len)
{
  Input in = { data, len, 0 };
  Run run = { 0 };
  guint8 config = take_byte (&in);
  gboolean in_thread = (config & 1) != 0;
  gboolean late = (config & 2) != 0;
  guint capacity = (config >> 2) % 5;
  SparkHandler *handler = late ? g_object_new (FUZZ_TYPE_LATE_HANDLER, NULL)
                               : g_object_new (FUZZ_TYPE_HANDLER, NULL);
  SparkModuleServer *server = spark_module_server_new (handler);
  SparkDispatcher *dispatcher;
  gpointer weak_server = server, weak_handler = handler;
  GError *error = NULL;
  guint shutdowns = 0;
  guint ops = 0;

  run.cancellables = g_ptr_array_new_with_free_func (g_object_unref);
  g_object_add_weak_pointer (G_OBJECT (server), &weak_server);
  g_object_add_weak_pointer (G_OBJECT (handler), &weak_handler);
  g_signal_connect (server, "command-failed", G_CALLBACK (on_command_failed), NULL);

  spark_module_server_set_capacity (server, capacity);
  if (take_byte (&in) % 8 != 0)   /* sometimes never started */
    {
      if (in_thread)
        spark_module_server_start_in_thread (server, &error);
      else
        spark_module_server_start (server, NULL, &error);
      g_clear_error (&error);
    }

  dispatcher = spark_module_server_create_dispatcher (server);
  spark_dispatcher_set_timeout (dispatcher, take_byte (&in) % 4 == 0 ? 1 + take_byte (&in) % 5 : -1);

  while (!at_end (&in) && ops++ < 64)
    {
      guint8 op = take_byte (&in) % 12;
      g_autofree char *name = take_string (&in);

      switch (op)
        {
        case 0:
          {
            GVariant *params = take_variant (&in);
            const GVariantType *type = take_reply_type (&in);
            GCancellable *cancellable = take_cancellable (&in, &run);
            GVariant *reply;

            reply = spark_dispatcher_request_sync (dispatcher, name, params, type, cancellable, &error);
            g_clear_pointer (&reply, g_variant_unref);
            g_clear_error (&error);
            g_clear_pointer (&params, g_variant_unref);
          }
          break;

        case 1:
        case 2:
          {
            GVariant *params = take_variant (&in);
            const GVariantType *type = take_reply_type (&in);
            GCancellable *cancellable = take_cancellable (&in, &run);
            gboolean valid = *name != '\0' && (type == NULL || g_variant_type_string_is_valid ((const char *) type));

            /* Only valid calls complete; the others are criticals. */
            if (valid)
              run.started++;
            if (op == 1)
              spark_dispatcher_request_async (dispatcher, name, params, type, cancellable, on_reply, &run);
            else
              spark_dispatcher_request_full (dispatcher, name, params, type, cancellable,
                                             on_full_reply, &run, NULL);
            g_clear_pointer (&params, g_variant_unref);
          }
          break;

        case 3:
        case 4:
          {
            GVariant *params = take_variant (&in);

            if (op == 3)
              spark_dispatcher_send_command (dispatcher, name, params, NULL, &error);
            else
              spark_dispatcher_try_send_command (dispatcher, name, params, &error);
            g_clear_error (&error);
            g_clear_pointer (&params, g_variant_unref);
          }
          break;

        case 5:
          {
            GVariant *params = take_variant (&in);
            GCancellable *cancellable = take_cancellable (&in, &run);

            if (*name != '\0')
              run.started++;
            spark_dispatcher_send_command_async (dispatcher, name, params, cancellable, on_command_sent, &run);
            g_clear_pointer (&params, g_variant_unref);
          }
          break;

        case 6:
          if (run.cancellables->len > 0)
            g_cancellable_cancel (g_ptr_array_index (run.cancellables, take_byte (&in) % run.cancellables->len));
          break;

        case 7:
          for (guint i = take_byte (&in) % 4; i > 0; i--)
            g_main_context_iteration (NULL, FALSE);
          break;

        case 8:
          {
            g_autoptr(GCancellable) token = g_cancellable_new ();

            spark_dispatcher_send_shutdown (dispatcher, token, &error);
            g_clear_error (&error);
          }
          break;

        case 9:
          spark_module_server_shutdown_async (server,
                                              take_byte (&in) % 2 ? SPARK_SHUTDOWN_MODE_ABORT
                                                                  : SPARK_SHUTDOWN_MODE_DRAIN,
                                              NULL, on_stopped, &run);
          shutdowns++;
          break;

        case 10:
          spark_dispatcher_set_timeout (dispatcher, (gint) (take_byte (&in) % 8) - 2);
          break;

        case 11:
        default:
          {
            /* Drop the dispatcher with requests in flight, take a new one. */
            g_object_unref (dispatcher);
            dispatcher = spark_module_server_create_dispatcher (server);
          }
          break;
        }
    }

  /* The end: everything completes, the server stops, all is finalized. */
  spark_module_server_shutdown_async (server, SPARK_SHUTDOWN_MODE_DRAIN, NULL, on_stopped, &run);
  shutdowns++;
  while (run.completed < run.started || run.stopped < (gint) shutdowns)
    g_main_context_iteration (NULL, TRUE);

  g_object_unref (dispatcher);
  g_object_unref (server);
  g_object_unref (handler);
  while (g_main_context_iteration (NULL, FALSE))
    ;

  if (weak_server != NULL || weak_handler != NULL)
    {
      g_printerr ("fuzz-api: the server or its handler was not finalized\n");
      abort ();
    }

  g_ptr_array_unref (run.cancellables);
}

static GLogWriterOutput
count_criticals (GLogLevelFlags   log_level,
                 const GLogField *fields,
                 gsize            n_fields,
                 gpointer         user_data)
{
  /* Programmer errors the input provokes are expected: swallow them. */
  if (log_level & (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING | G_LOG_LEVEL_DEBUG | G_LOG_LEVEL_INFO | G_LOG_LEVEL_MESSAGE))
    return G_LOG_WRITER_HANDLED;
  return g_log_writer_default (log_level, fields, n_fields, user_data);
}

static void
setup_once (void)
{
  static gsize done;

  if (g_once_init_enter (&done))
    {
      g_log_set_always_fatal (G_LOG_FATAL_MASK);
      g_log_set_writer_func (count_criticals, NULL, NULL);
      g_once_init_leave (&done, 1);
    }
}

int LLVMFuzzerTestOneInput (const guint8 *data, size_t size);

int
LLVMFuzzerTestOneInput (const guint8 *data,
                        size_t        size)
{
  setup_once ();
  run_program (data, size);
  return 0;
}

#ifndef SPARK_FUZZING
int
main (int   argc,
      char *argv[])
{
  guint n = 0;

  for (int i = 1; i < argc; i++)
    {
      g_autofree char *contents = NULL;
      gsize len;
      g_autoptr(GError) error = NULL;

      if (!g_file_get_contents (argv[i], &contents, &len, &error))
        {
          g_printerr ("%s\n", error->message);
          return 1;
        }
      LLVMFuzzerTestOneInput ((const guint8 *) contents, len);
      n++;
    }

  g_print ("replayed %u inputs\n", n);
  return 0;
}
#endif
