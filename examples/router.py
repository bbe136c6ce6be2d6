#!/usr/bin/python3
# router.py: several modules behind one router, in Python
#
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The same program as router.c: a Spark.Router in front of three modules,
# a key/value module ("kv.*") and a "log" command, both handled on the
# router's own thread, and a "math.*" module on a server and thread of its
# own, reached through a dispatcher. The client, this program's main
# thread, talks to the router only: it sends requests and a command, meets
# a type mismatch and a name that no route takes, and removes a route while
# the router serves.
#
# Run it with a Python that has PyGObject (Debian: /usr/bin/python3 with
# python3-gi), and GI_TYPELIB_PATH / LD_LIBRARY_PATH pointing at
# spark-channel if it is not installed.

import sys

import gi

gi.require_version('Spark', '1.0')
gi.require_version('Gio', '2.0')
from gi.repository import GLib, GObject, Gio, Spark  # noqa: E402


def say(text):
    """Prints a line in one write: the modules and the client print from
    different threads."""
    sys.stdout.write(text + '\n')
    sys.stdout.flush()


def not_supported(name, module):
    return GLib.Error.new_literal(Spark.ChannelError.quark(),
                                  '“%s” is not a request of the %s module' % (name, module),
                                  Spark.ChannelError.NOT_SUPPORTED)


class KeyValue(GObject.Object, Spark.Handler):
    """"kv.set" (ss) -> b, "kv.get" (s) -> s. Its state is touched only by
    handler calls, one at a time on the router's server thread."""

    def __init__(self):
        super().__init__()
        self.data = {}

    def do_handle_request(self, name, parameters, cancellable):
        signature = parameters.get_type_string() if parameters is not None else None
        if name == 'kv.set' and signature == '(ss)':
            key, value = parameters.unpack()
            self.data[key] = value
            return GLib.Variant('b', True)
        if name == 'kv.get' and signature == '(s)':
            key, = parameters.unpack()
            if key not in self.data:
                raise GLib.Error.new_literal(Gio.io_error_quark(), 'No data for “%s”' % key,
                                             Gio.IOErrorEnum.NOT_FOUND)
            return GLib.Variant('s', self.data[key])
        raise not_supported(name, 'key/value')


class Math(GObject.Object, Spark.Handler):
    """"math.add" and "math.mul", (ii) -> i. Its route declares both types,
    so what comes through the router is checked before it gets here."""

    def do_handle_request(self, name, parameters, cancellable):
        a, b = parameters.unpack()
        if name == 'math.add':
            return GLib.Variant('i', a + b)
        if name == 'math.mul':
            return GLib.Variant('i', a * b)
        raise not_supported(name, 'math')


class Log(GObject.Object, Spark.Handler):
    """The "log" command; its route declares parameters of type "s"."""

    def do_handle_command(self, name, parameters, cancellable):
        say('log: %s' % parameters.unpack())
        return True


def expect_failure(dispatcher, what, name, parameters, code):
    """A request the client expects to fail with code: prints the error."""
    try:
        reply = dispatcher.request_sync(name, parameters, None, None)
    except GLib.Error as error:
        if not error.matches(Spark.ChannelError.quark(), code):
            raise
        say('client: %s failed: %s' % (what, error.message))
        return
    raise AssertionError('%s: expected an error, got %s' % (what, reply.print_(False)))


def shut_down(server):
    """Stops server and waits until its thread has ended."""
    stopped = []
    server.shutdown_async(Spark.ShutdownMode.DRAIN, None,
                          lambda s, result: stopped.append(s.shutdown_finish(result)))
    while not stopped:
        GLib.MainContext.default().iteration(True)


def main():
    # The math module on a thread of its own.
    math_server = Spark.ModuleServer(handler=Math(), name='math')
    math_server.start_in_thread()

    # The routes: kv and log run on the router's thread, math on its own.
    # PyGObject 3.42 takes a GLib.VariantType or None for a type.
    router = Spark.Router.new()
    router.add_handler('kv.*', KeyValue(), None, None)
    router.add_handler('log', Log(), GLib.VariantType('s'), None)
    router.add_dispatcher('math.*', math_server.create_dispatcher(),
                          GLib.VariantType('(ii)'), GLib.VariantType('i'))

    # A request sent on to the math module holds its invocation until the
    # reply comes back: let the router have a few in flight at once.
    router_server = Spark.ModuleServer(handler=router, name='router', max_invocations=4)
    router_server.start_in_thread()
    dispatcher = router_server.create_dispatcher()
    # Shut down on every way out, the router first: it may still be waiting
    # for the math module.
    try:
        say('router: routes %s' % ', '.join(router.list_patterns()))

        reply = dispatcher.request_sync('kv.set', GLib.Variant('(ss)', ('user123', 'Alice')),
                                        GLib.VariantType('b'), None)
        say('client: kv.set(user123, Alice) -> %s' % ('true' if reply.unpack() else 'false'))

        # Commands are handled in mailbox order: the next reply comes after it.
        dispatcher.send_command('log', GLib.Variant('s', 'user123 logged in'), None)

        reply = dispatcher.request_sync('kv.get', GLib.Variant('(s)', ('user123',)),
                                        GLib.VariantType('s'), None)
        say('client: kv.get(user123) -> %s' % reply.unpack())

        reply = dispatcher.request_sync('math.add', GLib.Variant('(ii)', (2, 3)), GLib.VariantType('i'), None)
        say('client: math.add(2, 3) -> %d' % reply.unpack())
        reply = dispatcher.request_sync('math.mul', GLib.Variant('(ii)', (4, 5)), GLib.VariantType('i'), None)
        say('client: math.mul(4, 5) -> %d' % reply.unpack())

        # The route checks the parameters before the math module sees them.
        expect_failure(dispatcher, 'math.add("2", "3")', 'math.add', GLib.Variant('(ss)', ('2', '3')),
                       Spark.ChannelError.TYPE_MISMATCH)
        expect_failure(dispatcher, 'weather.today', 'weather.today', None,
                       Spark.ChannelError.NOT_SUPPORTED)

        # Routes come and go while the router serves.
        router.remove('math.*')
        expect_failure(dispatcher, 'math.add(2, 3) without its route', 'math.add',
                       GLib.Variant('(ii)', (2, 3)), Spark.ChannelError.NOT_SUPPORTED)
    finally:
        shut_down(router_server)
        shut_down(math_server)
    say('done: the router and the math module have stopped')
    return 0


if __name__ == '__main__':
    sys.exit(main())
