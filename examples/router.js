// router.js: several modules behind one router, in JavaScript (GJS)
//
// SPDX-License-Identifier: LGPL-2.1-or-later
//
// The same program as router.c: a Spark.Router in front of three modules,
// a key/value module ("kv.*") and a "log" command, handled where the router
// runs, and a "math.*" module on a server of its own, reached through a
// dispatcher. The client talks to the router only: it sends requests and a
// command, meets a type mismatch and a name that no route takes, and
// removes a route while the router serves.
//
// GJS runs JavaScript only on its main thread, so the router, whose routes
// call JavaScript handlers, and the math module are both served on the
// main context (start(null)); on a thread of its own, the router would
// fail what it routes to a JavaScript handler with NOT_SUPPORTED. The
// client awaits its replies with Gio._promisify.
//
// Run it with `gjs -m router.js` (GI_TYPELIB_PATH and LD_LIBRARY_PATH
// pointing at spark-channel if it is not installed).

import GLib from 'gi://GLib';
import GObject from 'gi://GObject';
import Gio from 'gi://Gio';
import Spark from 'gi://Spark?version=1.0';
import System from 'system';

Gio._promisify(Spark.Dispatcher.prototype, 'request_async', 'request_finish');
Gio._promisify(Spark.ModuleServer.prototype, 'shutdown_async', 'shutdown_finish');

function notSupported(name, module) {
    return new GLib.Error(Spark.ChannelError, Spark.ChannelError.NOT_SUPPORTED,
        `“${name}” is not a request of the ${module} module`);
}

// "kv.set" (ss) -> b, "kv.get" (s) -> s. Its state is touched only by
// handler calls, one message at a time on the router's context.
const KeyValue = GObject.registerClass({
    Implements: [Spark.Handler],
}, class KeyValue extends GObject.Object {
    constructor() {
        super();
        this._data = new Map();
    }

    vfunc_handle_request(name, parameters) {
        const signature = parameters?.get_type_string();
        if (name === 'kv.set' && signature === '(ss)') {
            const [key, value] = parameters.deepUnpack();
            this._data.set(key, value);
            return new GLib.Variant('b', true);
        }
        if (name === 'kv.get' && signature === '(s)') {
            const [key] = parameters.deepUnpack();
            if (!this._data.has(key))
                throw new GLib.Error(Gio.IOErrorEnum, Gio.IOErrorEnum.NOT_FOUND, `No data for “${key}”`);
            return new GLib.Variant('s', this._data.get(key));
        }
        throw notSupported(name, 'key/value');
    }
});

// "math.add" and "math.mul", (ii) -> i. Its route declares both types, so
// what comes through the router is checked before it gets here.
const MathModule = GObject.registerClass({
    Implements: [Spark.Handler],
}, class MathModule extends GObject.Object {
    vfunc_handle_request(name, parameters) {
        const [a, b] = parameters.deepUnpack();
        if (name === 'math.add')
            return new GLib.Variant('i', a + b);
        if (name === 'math.mul')
            return new GLib.Variant('i', a * b);
        throw notSupported(name, 'math');
    }
});

// The "log" command; its route declares parameters of type "s".
const Log = GObject.registerClass({
    Implements: [Spark.Handler],
}, class Log extends GObject.Object {
    vfunc_handle_command(name, parameters) {
        print(`log: ${parameters.unpack()}`);
        return true;
    }
});

// A request the client expects to fail with code: prints the error.
async function expectFailure(dispatcher, what, name, parameters, code) {
    let reply;
    try {
        reply = await dispatcher.request_async(name, parameters, null, null);
    } catch (error) {
        if (!(error instanceof GLib.Error) || !error.matches(Spark.ChannelError, code))
            throw error;
        print(`client: ${what} failed: ${error.message}`);
        return;
    }
    throw new Error(`${what}: expected an error, got ${reply.print(false)}`);
}

async function main() {
    // The math module on a server of its own.
    const mathServer = new Spark.ModuleServer({handler: new MathModule(), name: 'math'});
    mathServer.start(null);

    // The routes: kv and log are called by the router, math is sent on.
    const router = new Spark.Router();
    router.add_handler('kv.*', new KeyValue(), null, null);
    router.add_handler('log', new Log(), new GLib.VariantType('s'), null);
    router.add_dispatcher('math.*', mathServer.create_dispatcher(),
        new GLib.VariantType('(ii)'), new GLib.VariantType('i'));

    // A request sent on to the math module holds its invocation until the
    // reply comes back: let the router have a few in flight at once.
    const routerServer = new Spark.ModuleServer({handler: router, name: 'router', max_invocations: 4});
    routerServer.start(null);   // the main context: where JavaScript runs
    const dispatcher = routerServer.create_dispatcher();
    // Shut down on every way out, the router first: it may still be
    // waiting for the math module.
    try {
        print(`router: routes ${router.list_patterns().join(', ')}`);

        let reply = await dispatcher.request_async('kv.set', new GLib.Variant('(ss)', ['user123', 'Alice']),
            new GLib.VariantType('b'), null);
        print(`client: kv.set(user123, Alice) -> ${reply.unpack()}`);

        // Commands are handled in mailbox order: the next reply comes after it.
        dispatcher.send_command('log', new GLib.Variant('s', 'user123 logged in'), null);

        reply = await dispatcher.request_async('kv.get', new GLib.Variant('(s)', ['user123']),
            new GLib.VariantType('s'), null);
        print(`client: kv.get(user123) -> ${reply.unpack()}`);

        reply = await dispatcher.request_async('math.add', new GLib.Variant('(ii)', [2, 3]),
            new GLib.VariantType('i'), null);
        print(`client: math.add(2, 3) -> ${reply.unpack()}`);
        reply = await dispatcher.request_async('math.mul', new GLib.Variant('(ii)', [4, 5]),
            new GLib.VariantType('i'), null);
        print(`client: math.mul(4, 5) -> ${reply.unpack()}`);

        // The route checks the parameters before the math module sees them.
        await expectFailure(dispatcher, 'math.add("2", "3")', 'math.add', new GLib.Variant('(ss)', ['2', '3']),
            Spark.ChannelError.TYPE_MISMATCH);
        await expectFailure(dispatcher, 'weather.today', 'weather.today', null,
            Spark.ChannelError.NOT_SUPPORTED);

        // Routes come and go while the router serves.
        router.remove('math.*');
        await expectFailure(dispatcher, 'math.add(2, 3) without its route', 'math.add',
            new GLib.Variant('(ii)', [2, 3]), Spark.ChannelError.NOT_SUPPORTED);
    } finally {
        await routerServer.shutdown_async(Spark.ShutdownMode.DRAIN, null);
        await mathServer.shutdown_async(Spark.ShutdownMode.DRAIN, null);
    }
    print('done: the router and the math module have stopped');
}

const loop = new GLib.MainLoop(null, false);
let status = 1;
main().then(() => (status = 0), error => logError(error)).finally(() => loop.quit());
loop.run();
System.exit(status);
