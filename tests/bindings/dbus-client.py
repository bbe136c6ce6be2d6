#!/usr/bin/python3
# dbus-client.py: a Python client of a module exported by a C program
#
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Run by tests/test-dbus.c (/spark/dbus/bus/python-client) with the bus
# address, the exporting connection's unique name and the object path.
# Prints "ok" after every check passed; any failure raises (exit 1).

import os
import sys

import gi
gi.require_version('Spark', '1.0')
from gi.repository import GLib, GObject, Gio, Spark  # noqa: E402

address, bus_name, path = sys.argv[1:4]
conn = Gio.DBusConnection.new_for_address_sync(
    address,
    Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
    None, None)
remote = Spark.Dispatcher.new_for_dbus(conn, bus_name, path)

# Sync requests: parameters round-trip, None is not the unit tuple.
reply = remote.request_sync('echo', GLib.Variant('(si)', ('user123', 7)), None, None)
assert reply.unpack() == (True, ('user123', 7)), reply
reply = remote.request_sync('echo', None, None, None)
assert reply.unpack() == (False, ()), reply
reply = remote.request_sync('echo', GLib.Variant('()', ()), None, None)
assert reply.unpack() == (True, ()), reply

# A handler's error: same domain, code and message.
try:
    remote.request_sync('fail', GLib.Variant('(sis)', ('g-io-error-quark', int(Gio.IOErrorEnum.NOT_FOUND), 'gone')),
                        None, None)
    raise AssertionError('no error')
except GLib.Error as e:
    assert e.matches(Gio.io_error_quark(), Gio.IOErrorEnum.NOT_FOUND), e
    assert e.message == 'gone', e.message

try:
    remote.request_sync('drop', None, None, None)
    raise AssertionError('no error')
except GLib.Error as e:
    assert e.matches(Spark.ChannelError.quark(), Spark.ChannelError.NO_REPLY), e

# Asynchronous requests on a main loop, and a cancel reaching the handler.
loop = GLib.MainLoop()
results = []


def on_reply(source, result, tag):
    try:
        results.append((tag, source.request_finish(result).unpack()))
    except GLib.Error as e:
        results.append((tag, e))
    if len(results) == 11:
        loop.quit()


for i in range(10):
    remote.request_async('echo', GLib.Variant('u', i), None, None, on_reply, i)
cancellable = Gio.Cancellable()
remote.request_async('hold', None, None, cancellable, on_reply, 'held')
GLib.timeout_add(50, lambda: cancellable.cancel() or False)
loop.run()

echoes = sorted(r for t, r in results if t != 'held')
assert echoes == [(True, i) for i in range(10)], echoes
held = [r for t, r in results if t == 'held'][0]
assert isinstance(held, GLib.Error) and held.matches(Gio.io_error_quark(), Gio.IOErrorEnum.CANCELLED), held

assert remote.send_command('count', None, None)

# A module in a helper process, through the same API.
helper = os.environ.get('SPARK_TEST_HELPER')
if helper:
    sub = Spark.Subprocess.new([helper])
    sub.props.max_restarts = 1
    sub.spawn()
    module = sub.create_dispatcher()
    assert module.request_sync('echo', GLib.Variant('ms', None), None, None).unpack() is None
    pid = module.request_sync('pid', None, None, None).unpack()
    assert str(pid) == sub.dup_identifier(), (pid, sub.dup_identifier())
    token = Gio.Cancellable()
    # Cancelled on a thread of the library's: wake the main context.
    GObject.Object.connect(token, 'cancelled', lambda *args: GLib.MainContext.default().wakeup())
    assert module.send_shutdown(token)
    while not token.is_cancelled():
        GLib.MainContext.default().iteration(True)
    print('subprocess ok')
print('ok')
