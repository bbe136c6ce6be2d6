// key-value.js: the Rust crate's own example, in JavaScript (GJS)
//
// SPDX-License-Identifier: LGPL-2.1-or-later
//
// The same key/value module as key-value.c: "GetData" and "UpdateData"
// requests, a "LogEvent" command, then a shutdown with a token.
//
// GJS runs JavaScript only on its main thread, so the module is served on
// the main context (start(null)), not on a thread of its own; its handler
// replies later, from a Promise, through the Spark.Invocation it is given.
// The client awaits its replies with Gio._promisify.
//
// Run it with `gjs -m key-value.js` (GI_TYPELIB_PATH and LD_LIBRARY_PATH
// pointing at spark-channel if it is not installed).

import GLib from 'gi://GLib';
import GObject from 'gi://GObject';
import Gio from 'gi://Gio';
import Spark from 'gi://Spark?version=1.0';
import System from 'system';

Gio._promisify(Spark.Dispatcher.prototype, 'request_async', 'request_finish');
Gio._promisify(Spark.ModuleServer.prototype, 'shutdown_async', 'shutdown_finish');

// The module. Its state is touched only by handler calls, one message at a
// time on the main context.
const KeyValue = GObject.registerClass({
    Implements: [Spark.Handler],
}, class KeyValue extends GObject.Object {
    constructor() {
        super();
        this._data = new Map([['user123', [1, 2]]]);
    }

    // Requests: reply later, on every path (an invocation JavaScript drops
    // is only freed by the garbage collector).
    vfunc_handle_invocation(invocation) {
        this._request(invocation.get_name(), invocation.get_parameters())
            .then(reply => invocation.return_value(reply))
            .catch(error => {
                if (error instanceof GLib.Error)
                    invocation.return_gerror(error);
                else
                    invocation.return_error_literal(Spark.ChannelError.quark(),
                        Spark.ChannelError.NO_REPLY, `${error}`);
            });
    }

    async _request(name, parameters) {
        if (name === 'GetData' && parameters?.get_type_string() === '(s)') {
            const [key] = parameters.deepUnpack();
            if (!this._data.has(key))
                throw new GLib.Error(Gio.IOErrorEnum, Gio.IOErrorEnum.NOT_FOUND, `No data for “${key}”`);
            return new GLib.Variant('au', this._data.get(key));
        }

        if (name === 'UpdateData' && parameters?.get_type_string() === '(su)') {
            const [key, value] = parameters.deepUnpack();
            this._data.set(key, [...this._data.get(key) ?? [], value]);
            return new GLib.Variant('b', true);   // the crate's Success(true)
        }

        throw new GLib.Error(Spark.ChannelError, Spark.ChannelError.NOT_SUPPORTED,
            `“${name}” is not a request of this module`);
    }

    vfunc_handle_command(name, parameters) {
        if (name === 'LogEvent' && parameters?.get_type_string() === '(s)') {
            const [event] = parameters.deepUnpack();
            print(`module: event logged: ${event}`);
            return true;
        }

        throw new GLib.Error(Spark.ChannelError, Spark.ChannelError.NOT_SUPPORTED,
            `Unexpected command “${name}”`);
    }
});

async function main() {
    const server = new Spark.ModuleServer({handler: new KeyValue(), name: 'key-value'});
    server.start(null);   // the main context: where JavaScript runs
    print("module server 'key-value' started on the main context");

    const dispatcher = server.create_dispatcher();
    const token = new Gio.Cancellable();
    const stopped = new Promise(resolve => {
        // Gio.Cancellable.connect is g_cancellable_connect().
        token.connect(() => {
            print('client: the module server has stopped (token cancelled)');
            resolve();
        });
    });

    print('client: UpdateData(user123, 3)');
    const updated = await dispatcher.request_async('UpdateData',
        new GLib.Variant('(su)', ['user123', 3]), new GLib.VariantType('b'), null);
    print(`client: data updated: success=${updated.unpack()}`);

    const values = await dispatcher.request_async('GetData',
        new GLib.Variant('(s)', ['user123']), new GLib.VariantType('au'), null);
    print(`client: data returned for user123: ${values.print(false)}`);

    dispatcher.send_command('LogEvent', new GLib.Variant('(s)', ['User logged in']), null);
    print('client: command sent: LogEvent');

    dispatcher.send_shutdown(token);
    print('client: shutdown sent');

    await stopped;
    await server.shutdown_async(Spark.ShutdownMode.DRAIN, null);
    print('done: the module server has stopped');
}

const loop = new GLib.MainLoop(null, false);
let status = 1;
main().then(() => (status = 0), error => logError(error)).finally(() => loop.quit());
loop.run();
System.exit(status);
