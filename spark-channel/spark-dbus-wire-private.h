/* spark-dbus-wire-private.h: what travels on the bus
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Shared by both ends (spark-dbus-export.c, spark-dbus-transport.c): the
 * interface's introspection data, the error domain's D-Bus names, and the
 * parameters' encoding. Depends on GIO only.
 *
 * Parameters and replies travel as an "av": no element is NULL (no
 * parameters); one is the value itself, when D-Bus can carry its type;
 * two are its type string and its serialized bytes (little-endian) when
 * it cannot (D-Bus has no maybe types, no empty structures such as the
 * unit tuple "()", and handles need file descriptors). So NULL and every
 * GVariant round-trip exactly, and tools such as gdbus call still send
 * and read plain values.
 */

#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

#define SPARK_DBUS_OPTION_TIMEOUT     "timeout"      /* u: milliseconds left, requests */
#define SPARK_DBUS_OPTION_WAIT        "wait"         /* b: wait for room, commands */
#define SPARK_DBUS_OPTION_PRIORITY    "priority"     /* i: a SparkPriority, default 0 */
#define SPARK_DBUS_OPTION_SENDER      "sender"       /* t: the remote dispatcher's id, for CancelAll; none: the default, 0 */
#define SPARK_DBUS_OPTION_CANCELLABLE "cancellable"  /* b: the handler gets a cancellable Cancel reaches */

/* A handler's own error of the G_DBUS_ERROR domain travels under this
 * prefix and its usual name: GDBus's own errors (UnknownMethod, NoReply...)
 * mean the module is gone, a handler's mean what they say. */
#define SPARK_DBUS_HANDLER_ERROR_PREFIX "org.gnome.SparkChannel.HandlerError."

/* Parsed once; (transfer none). */
GDBusInterfaceInfo *spark_dbus_get_interface_info (void);

/* Registers SPARK_CHANNEL_ERROR with GDBus (idempotent, thread-safe):
 * called before either end puts an error on the wire or reads one. */
void                spark_dbus_ensure_error_domain (void);

/* The options of a Request or a Command, read in one pass. An option of
 * another type than its own is ignored (as g_variant_lookup() would),
 * and so is an unknown one. */
typedef struct
{
  guint32  timeout_msec;   /* 0: none */
  guint64  sender;         /* 0: none said */
  gint32   priority;       /* unchecked */
  gboolean wait;
  gboolean cancellable;
} SparkDBusOptions;

void                spark_dbus_options_parse       (GVariant          *options,
                                                    SparkDBusOptions  *out);
/* (transfer floating): an option, a "{sv}" entry; sinks @value. */
GVariant           *spark_dbus_option_new          (const char        *key,
                                                    GVariant          *value);
/* (transfer floating): the "(sava{sv})" body of Request and Command;
 * @parameters: (nullable) (transfer none); @options: entries from
 * spark_dbus_option_new() (their floating references are taken).
 * Without format strings, whose parsing cost more than the rest of the
 * body's making. */
GVariant           *spark_dbus_call_body_new       (const char        *name,
                                                    GVariant          *parameters,
                                                    GVariant         **options,
                                                    gsize              n_options);
/* @body: a "(sava{sv})". *@name: (transfer none); *@wrapped and *@options:
 * (transfer full). */
void                spark_dbus_call_body_get       (GVariant          *body,
                                                    const char       **name,
                                                    GVariant         **wrapped,
                                                    GVariant         **options);

/* (transfer floating): an "av" for @value (nullable). */
GVariant           *spark_dbus_wrap_value          (GVariant  *value);
/* @wrapped: an "av". Returns FALSE with @error (INVALID_ARGS) if it is
 * none of the three forms; else *@value: (transfer full) (nullable). */
gboolean            spark_dbus_unwrap_value        (GVariant  *wrapped,
                                                    GVariant **value,
                                                    GError   **error);

G_END_DECLS
