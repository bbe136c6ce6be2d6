/* spark-dbus-wire.c: what travels on the bus
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include "config.h"

#include <string.h>

#include "spark-dbus-wire-private.h"
#include "spark-dbus.h"
#include "spark-error.h"

static const char interface_xml[] =
  "<node>"
  "  <interface name='" SPARK_DBUS_INTERFACE "'>"
  "    <method name='Request'>"
  "      <arg name='name' type='s' direction='in'/>"
  "      <arg name='parameters' type='av' direction='in'/>"
  "      <arg name='options' type='a{sv}' direction='in'/>"
  "      <arg name='reply' type='av' direction='out'/>"
  "    </method>"
  "    <method name='Command'>"
  "      <arg name='name' type='s' direction='in'/>"
  "      <arg name='parameters' type='av' direction='in'/>"
  "      <arg name='options' type='a{sv}' direction='in'/>"
  "    </method>"
  "    <method name='Cancel'>"
  "      <arg name='serial' type='u' direction='in'/>"
  "      <annotation name='org.freedesktop.DBus.Method.NoReply' value='true'/>"
  "    </method>"
  "    <method name='CancelAll'>"
  "      <arg name='sender' type='t' direction='in'/>"
  "      <annotation name='org.freedesktop.DBus.Method.NoReply' value='true'/>"
  "    </method>"
  "    <method name='Shutdown'/>"
  "    <property name='Pending' type='u' access='read'>"
  "      <annotation name='org.freedesktop.DBus.Property.EmitsChangedSignal' value='false'/>"
  "    </property>"
  "    <property name='Running' type='b' access='read'/>"
  "  </interface>"
  "</node>";

GDBusInterfaceInfo *
spark_dbus_get_interface_info (void)
{
  static GDBusInterfaceInfo *info;

  if (g_once_init_enter (&info))
    {
      GError *error = NULL;
      GDBusNodeInfo *node = g_dbus_node_info_new_for_xml (interface_xml, &error);
      GDBusInterfaceInfo *iface;

      g_assert_no_error (error);
      iface = g_dbus_interface_info_ref (node->interfaces[0]);
      g_dbus_interface_info_cache_build (iface);
      g_dbus_node_info_unref (node);
      g_once_init_leave (&info, iface);
    }

  return info;
}

/* New codes go at the end, as in the enum. */
static const GDBusErrorEntry error_entries[] = {
  { SPARK_CHANNEL_ERROR_CLOSED,          "org.gnome.SparkChannel.Error.Closed" },
  { SPARK_CHANNEL_ERROR_NO_REPLY,        "org.gnome.SparkChannel.Error.NoReply" },
  { SPARK_CHANNEL_ERROR_TYPE_MISMATCH,   "org.gnome.SparkChannel.Error.TypeMismatch" },
  { SPARK_CHANNEL_ERROR_FULL,            "org.gnome.SparkChannel.Error.Full" },
  { SPARK_CHANNEL_ERROR_TIMED_OUT,       "org.gnome.SparkChannel.Error.TimedOut" },
  { SPARK_CHANNEL_ERROR_WOULD_DEADLOCK,  "org.gnome.SparkChannel.Error.WouldDeadlock" },
  { SPARK_CHANNEL_ERROR_NOT_SUPPORTED,   "org.gnome.SparkChannel.Error.NotSupported" },
  { SPARK_CHANNEL_ERROR_ALREADY_STARTED, "org.gnome.SparkChannel.Error.AlreadyStarted" },
  { SPARK_CHANNEL_ERROR_DROPPED,         "org.gnome.SparkChannel.Error.Dropped" },
};

void
spark_dbus_ensure_error_domain (void)
{
  static gsize registered;

  if (g_once_init_enter (&registered))
    {
      static gsize quark;

      /* The domain's quark exists first, under its own name: the
       * registration then maps that very quark (and an error made before
       * any D-Bus use still converts). */
      (void) spark_channel_error_quark ();
      g_dbus_error_register_error_domain ("spark-channel-error-quark", &quark,
                                          error_entries, G_N_ELEMENTS (error_entries));
      g_assert ((GQuark) quark == SPARK_CHANNEL_ERROR);
      g_once_init_leave (&registered, 1);
    }
}

void
spark_dbus_options_parse (GVariant         *options,
                          SparkDBusOptions *out)
{
  gsize n = g_variant_n_children (options);

  memset (out, 0, sizeof *out);

  for (gsize i = 0; i < n; i++)
    {
      GVariant *entry = g_variant_get_child_value (options, i);
      GVariant *key = g_variant_get_child_value (entry, 0);
      GVariant *box = g_variant_get_child_value (entry, 1);
      GVariant *value = g_variant_get_variant (box);
      const char *name = g_variant_get_string (key, NULL);
      GVariantClass class = g_variant_classify (value);

      if (class == G_VARIANT_CLASS_UINT32 && g_str_equal (name, SPARK_DBUS_OPTION_TIMEOUT))
        out->timeout_msec = g_variant_get_uint32 (value);
      else if (class == G_VARIANT_CLASS_UINT64 && g_str_equal (name, SPARK_DBUS_OPTION_SENDER))
        out->sender = g_variant_get_uint64 (value);
      else if (class == G_VARIANT_CLASS_INT32 && g_str_equal (name, SPARK_DBUS_OPTION_PRIORITY))
        out->priority = g_variant_get_int32 (value);
      else if (class == G_VARIANT_CLASS_BOOLEAN && g_str_equal (name, SPARK_DBUS_OPTION_WAIT))
        out->wait = g_variant_get_boolean (value);
      else if (class == G_VARIANT_CLASS_BOOLEAN && g_str_equal (name, SPARK_DBUS_OPTION_CANCELLABLE))
        out->cancellable = g_variant_get_boolean (value);

      g_variant_unref (value);
      g_variant_unref (box);
      g_variant_unref (key);
      g_variant_unref (entry);
    }
}

GVariant *
spark_dbus_option_new (const char *key,
                       GVariant   *value)
{
  return g_variant_new_dict_entry (g_variant_new_string (key), g_variant_new_variant (value));
}

GVariant *
spark_dbus_call_body_new (const char  *name,
                          GVariant    *parameters,
                          GVariant   **options,
                          gsize        n_options)
{
  GVariant *fields[3];

  fields[0] = g_variant_new_string (name);
  fields[1] = spark_dbus_wrap_value (parameters);
  fields[2] = g_variant_new_array (G_VARIANT_TYPE ("{sv}"), options, n_options);
  return g_variant_new_tuple (fields, G_N_ELEMENTS (fields));
}

void
spark_dbus_call_body_get (GVariant    *body,
                          const char **name,
                          GVariant   **wrapped,
                          GVariant   **options)
{
  GVariant *name_value = g_variant_get_child_value (body, 0);

  /* The string lives in @body's data. */
  *name = g_variant_get_string (name_value, NULL);
  g_variant_unref (name_value);
  *wrapped = g_variant_get_child_value (body, 1);
  *options = g_variant_get_child_value (body, 2);
}

/* D-Bus has no maybe types and no empty structures, and a handle is an
 * index into file descriptors sent along: values with any of these travel
 * in GVariant's own serialization instead. */
static gboolean
type_is_dbus_safe (const char *type_string)
{
  return strchr (type_string, 'm') == NULL &&
         strchr (type_string, 'h') == NULL &&
         strstr (type_string, "()") == NULL;
}

static gboolean
value_is_dbus_safe (GVariant *value)
{
  const char *type_string = g_variant_get_type_string (value);

  if (!type_is_dbus_safe (type_string))
    return FALSE;

  /* What a variant holds has a type of its own. */
  if (strchr (type_string, 'v') != NULL)
    {
      gsize n = g_variant_is_container (value) ? g_variant_n_children (value) : 0;

      for (gsize i = 0; i < n; i++)
        {
          GVariant *child = g_variant_get_child_value (value, i);
          gboolean safe = value_is_dbus_safe (child);

          g_variant_unref (child);
          if (!safe)
            return FALSE;
        }
    }

  return TRUE;
}

GVariant *
spark_dbus_wrap_value (GVariant *value)
{
  GVariant *normal, *little;
  GVariant *pair[2];

  if (value == NULL)
    return g_variant_new_array (G_VARIANT_TYPE_VARIANT, NULL, 0);

  if (value_is_dbus_safe (value))
    return g_variant_new_array (G_VARIANT_TYPE_VARIANT, (GVariant *[]) { g_variant_new_variant (value) }, 1);

  /* Little-endian on the wire, whatever this machine is. */
  normal = g_variant_get_normal_form (value);
  little = G_BYTE_ORDER == G_LITTLE_ENDIAN ? g_variant_ref (normal) : g_variant_byteswap (normal);
  pair[0] = g_variant_new_variant (g_variant_new_string (g_variant_get_type_string (value)));
  pair[1] = g_variant_new_variant (g_variant_new_fixed_array (G_VARIANT_TYPE_BYTE,
                                                              g_variant_get_data (little),
                                                              g_variant_get_size (little), 1));
  g_variant_unref (little);
  g_variant_unref (normal);
  return g_variant_new_array (G_VARIANT_TYPE_VARIANT, pair, 2);
}

gboolean
spark_dbus_unwrap_value (GVariant  *wrapped,
                         GVariant **value,
                         GError   **error)
{
  gsize n = g_variant_n_children (wrapped);

  *value = NULL;

  if (n == 0)
    return TRUE;

  if (n == 1)
    {
      GVariant *boxed = g_variant_get_child_value (wrapped, 0);

      *value = g_variant_get_variant (boxed);
      g_variant_unref (boxed);
      return TRUE;
    }

  if (n == 2)
    {
      g_autoptr(GVariant) type_box = g_variant_get_child_value (wrapped, 0);
      g_autoptr(GVariant) data_box = g_variant_get_child_value (wrapped, 1);
      g_autoptr(GVariant) type_string = g_variant_get_variant (type_box);
      g_autoptr(GVariant) data = g_variant_get_variant (data_box);

      if (g_variant_is_of_type (type_string, G_VARIANT_TYPE_STRING) &&
          g_variant_type_string_is_valid (g_variant_get_string (type_string, NULL)) &&
          g_variant_type_is_definite (G_VARIANT_TYPE (g_variant_get_string (type_string, NULL))) &&
          g_variant_is_of_type (data, G_VARIANT_TYPE_BYTESTRING))
        {
          g_autoptr(GBytes) bytes = g_variant_get_data_as_bytes (data);
          /* Untrusted: GVariant checks it as it reads it. */
          GVariant *little = g_variant_ref_sink (g_variant_new_from_bytes (G_VARIANT_TYPE (g_variant_get_string (type_string, NULL)),
                                                                           bytes, FALSE));

          if (G_BYTE_ORDER == G_LITTLE_ENDIAN)
            *value = little;
          else
            {
              *value = g_variant_byteswap (little);
              g_variant_unref (little);
            }
          return TRUE;
        }
    }

  g_set_error (error, G_DBUS_ERROR, G_DBUS_ERROR_INVALID_ARGS,
               "A value must travel as an array of no variant (none), one (the value), "
               "or two (its type string and its serialized bytes); got %" G_GSIZE_FORMAT " variants "
               "that are none of these", n);
  return FALSE;
}
