#!/usr/bin/python3
# python-exit-unclean.py: a program that exits with its server running
#
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# What docs/python.md says not to do: the main thread queues requests and
# commands for a Python handler on a thread of its own, and returns
# without shutting the server down. Once the interpreter finalizes,
# PyGObject returns from the handler's vfuncs without running them and
# without writing their return value; the library must not take that
# garbage for a reply (it used to: g_variant_take_ref criticals, or a
# segfault). Run by test-python-exit.py, which checks that it never dies
# of a signal.

import sys

import gi

gi.require_version('Spark', '1.0')
from gi.repository import GLib, GObject, Spark  # noqa: E402


class Quick(GObject.Object, Spark.Handler):
    def do_handle_request(self, name, parameters, cancellable):
        return GLib.Variant('i', 42)

    def do_handle_command(self, name, parameters, cancellable):
        return True


server = Spark.ModuleServer(handler=Quick(), name='quick')
server.start_in_thread()

dispatcher = server.create_dispatcher()
count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
for i in range(count):
    dispatcher.request_async('Get', GLib.Variant('(s)', ('key',)), GLib.VariantType('i'), None,
                             lambda *args: None)
    dispatcher.send_command('Log', None, None)
# Returns without shutting the server down.
