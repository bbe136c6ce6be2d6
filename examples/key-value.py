#!/usr/bin/python3
# key-value.py: the Rust crate's own example, in Python
#
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The same key/value module as key-value.c: "GetData" and "UpdateData"
# requests, a "LogEvent" command, then a shutdown with a token. The module
# is a Python class implementing Spark.Handler and runs on a thread of its
# own; the client is this program's main thread, which gets its replies on
# its main loop.
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
    """Prints a line in one write: the module and the client print from
    different threads."""
    sys.stdout.write(text + '\n')
    sys.stdout.flush()


class KeyValue(GObject.Object, Spark.Handler):
    """The module. Its state is touched only by handler calls, one at a
    time on the server's thread, so it needs no lock."""

    def __init__(self):
        super().__init__()
        self.data = {'user123': [1, 2]}

    def do_handle_request(self, name, parameters, cancellable):
        if name == 'GetData' and parameters is not None and parameters.get_type_string() == '(s)':
            key, = parameters.unpack()
            if key not in self.data:
                raise GLib.Error.new_literal(Gio.io_error_quark(), 'No data for “%s”' % key,
                                             Gio.IOErrorEnum.NOT_FOUND)
            return GLib.Variant('au', self.data[key])

        if name == 'UpdateData' and parameters is not None and parameters.get_type_string() == '(su)':
            key, value = parameters.unpack()
            self.data.setdefault(key, []).append(value)
            return GLib.Variant('b', True)   # the crate's Success(true)

        raise GLib.Error.new_literal(Spark.ChannelError.quark(),
                                     '“%s” is not a request of this module' % name,
                                     Spark.ChannelError.NOT_SUPPORTED)

    def do_handle_command(self, name, parameters, cancellable):
        if name == 'LogEvent' and parameters is not None and parameters.get_type_string() == '(s)':
            event, = parameters.unpack()
            say('module: event logged: %s' % event)
            return True

        raise GLib.Error.new_literal(Spark.ChannelError.quark(),
                                     'Unexpected command “%s”' % name,
                                     Spark.ChannelError.NOT_SUPPORTED)


class Client:
    """The client side: a chain of callbacks on the main loop. PyGObject
    prints and swallows exceptions raised in callbacks, so each step
    catches its errors and ends the loop with a failure."""

    def __init__(self, server):
        self.loop = GLib.MainLoop()
        self.dispatcher = server.create_dispatcher()
        self.token = Gio.Cancellable()
        self.failure = None
        # Gio.Cancellable.connect is g_cancellable_connect(); the callback
        # runs on the server's thread, once it has stopped.
        self.token.connect(self.on_token_cancelled)

    def fail(self, what, error):
        self.failure = '%s failed: %s' % (what, error.message)
        self.loop.quit()

    def run(self):
        say('client: UpdateData(user123, 3)')
        self.dispatcher.request_async('UpdateData', GLib.Variant('(su)', ('user123', 3)),
                                      GLib.VariantType.new('b'), None, self.on_update_data)
        self.loop.run()
        return self.failure

    def on_update_data(self, dispatcher, result):
        try:
            reply = dispatcher.request_finish(result)
        except GLib.Error as error:
            return self.fail('UpdateData', error)
        say('client: data updated: success=%s' % ('true' if reply.unpack() else 'false'))

        dispatcher.request_async('GetData', GLib.Variant('(s)', ('user123',)),
                                 GLib.VariantType.new('au'), None, self.on_get_data)

    def on_get_data(self, dispatcher, result):
        try:
            reply = dispatcher.request_finish(result)
        except GLib.Error as error:
            return self.fail('GetData', error)
        say('client: data returned for user123: %s' % reply.print_(False))

        try:
            dispatcher.send_command('LogEvent', GLib.Variant('(s)', ('User logged in',)), None)
            say('client: command sent: LogEvent')
            dispatcher.send_shutdown(self.token)
            say('client: shutdown sent')
        except GLib.Error as error:
            self.fail('Sending', error)

    def on_token_cancelled(self, *args):
        say('client: the module server has stopped (token cancelled)')
        self.loop.quit()   # thread-safe


def main():
    server = Spark.ModuleServer.new(KeyValue())
    server.props.name = 'key-value'
    try:
        server.start_in_thread()
    except GLib.Error as error:
        print('Could not start the module server: %s' % error.message, file=sys.stderr)
        return 1
    say("module server 'key-value' started on its own thread")

    failure = Client(server).run()

    # The server stops on the shutdown message; waiting for it here joins
    # its thread, like joining a thread.
    stopped = []
    server.shutdown_async(Spark.ShutdownMode.DRAIN, None,
                          lambda s, result: stopped.append(s.shutdown_finish(result)))
    while not stopped:
        GLib.MainContext.default().iteration(True)

    if failure is not None:
        print(failure, file=sys.stderr)
        return 1
    say("done: the module server's thread has ended")
    return 0


if __name__ == '__main__':
    sys.exit(main())
