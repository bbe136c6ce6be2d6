/* spark-subprocess-helper.c: the helper process of the subprocess tests
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A module served with spark_subprocess_serve(): "echo" answers its
 * parameters, "pid" this process's id, "fail" an error; commands are
 * accepted. Its whole main() is the library's one call.
 */

#include <unistd.h>

#include <spark-channel.h>

static GVariant *
helper_request (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  (void) cancellable;
  (void) user_data;

  if (g_str_equal (name, "echo") && parameters != NULL)
    return g_variant_ref (parameters);
  if (g_str_equal (name, "pid"))
    return g_variant_new_int64 ((gint64) getpid ());
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "No request “%s” in the helper", name);
  return NULL;
}

static gboolean
helper_command (const char    *name,
                GVariant      *parameters,
                GCancellable  *cancellable,
                gpointer       user_data,
                GError       **error)
{
  (void) name;
  (void) parameters;
  (void) cancellable;
  (void) user_data;
  (void) error;
  return TRUE;
}

int
main (void)
{
  g_autoptr(SparkHandler) handler = spark_func_handler_new (helper_request, helper_command, NULL, NULL);
  g_autoptr(GError) error = NULL;

  if (!spark_subprocess_serve (handler, &error))
    {
      g_printerr ("spark-subprocess-helper: %s\n", error->message);
      return 1;
    }
  return 0;
}
