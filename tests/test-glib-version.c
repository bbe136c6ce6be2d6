/* test-glib-version.c: which GLib the tests run against
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include "spark-test-util.h"

/* Logs the GLib loaded at run time (the glib_*_version variables, not the
 * GLIB_*_VERSION macros of the headers the test was built against), so a
 * test log shows which GLib the suites really ran on: tools/glib84 greps
 * for it. With SPARK_EXPECT_GLIB set to "MAJOR.MINOR", also fails unless
 * that is the GLib loaded. */
static void
test_glib_version (void)
{
  g_autofree char *loaded = g_strdup_printf ("%u.%u", glib_major_version, glib_minor_version);
  const char *expected = g_getenv ("SPARK_EXPECT_GLIB");

  g_test_message ("GLib runtime version %u.%u.%u (headers %d.%d.%d)",
                  glib_major_version, glib_minor_version, glib_micro_version,
                  GLIB_MAJOR_VERSION, GLIB_MINOR_VERSION, GLIB_MICRO_VERSION);

  /* The oldest GLib the library supports (glib_req in meson.build). */
  g_assert_null (glib_check_version (2, 74, 0));
  if (expected != NULL && *expected != '\0')
    g_assert_cmpstr (loaded, ==, expected);
}

int
main (int argc, char *argv[])
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/spark/glib-version", test_glib_version);

  return g_test_run ();
}
