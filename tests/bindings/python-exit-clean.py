#!/usr/bin/python3
# python-exit-clean.py: a program that leaves with work still queued, and
# shuts its server down first (the rule in docs/python.md)
#
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Its main thread queues requests and commands for a Python handler on a
# thread of its own and returns while most of them are still waiting. An
# atexit function shuts the server down before the interpreter finalizes:
# after that, PyGObject no longer runs Python vfuncs (see
# python-exit-unclean.py). Run by test-python-exit.py, which checks that it
# exits with status 0 and prints "stopped".

import atexit
import sys
import time

import gi

gi.require_version('Spark', '1.0')
from gi.repository import GLib, GObject, Spark  # noqa: E402


class Slow(GObject.Object, Spark.Handler):
    def do_handle_request(self, name, parameters, cancellable):
        time.sleep(0.001)
        return GLib.Variant('i', 42)

    def do_handle_command(self, name, parameters, cancellable):
        time.sleep(0.001)
        return True


def shut_down(server, mode=Spark.ShutdownMode.ABORT):
    """Stops server and waits until its thread has ended.

    The end of a stop is reported on the server's owner context, the
    thread-default context of the thread that started it: here the global
    default context of the main thread, so iterate that one."""
    done = []
    server.shutdown_async(mode, None,
                          lambda server, result: done.append(server.shutdown_finish(result)))
    context = GLib.MainContext.default()
    while not done:
        context.iteration(True)
    return done[0]


def on_exit(server):
    stopped = shut_down(server)
    print('stopped' if stopped and not server.props.running else 'NOT stopped', flush=True)


server = Spark.ModuleServer(handler=Slow(), name='slow')
server.start_in_thread()
atexit.register(on_exit, server)

dispatcher = server.create_dispatcher()
count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
for i in range(count):
    dispatcher.request_async('Get', None, GLib.VariantType('i'), None, lambda *args: None)
    dispatcher.send_command('Log', None, None)
# Returns with the requests and commands still queued.
