// pool.js: a pool of worker threads, driven from JavaScript (GJS)
//
// SPDX-License-Identifier: LGPL-2.1-or-later
//
// GJS runs JavaScript only on its main thread, so a pool's workers cannot
// call a handler written in JavaScript: a JavaScript handler's server with
// workers > 1 refuses both start_in_thread() and start() with
// NOT_SUPPORTED. The program shows that, and falls back to what works: the
// JavaScript modules on servers of the main context, one message at a
// time.
//
// What a JavaScript program can put on a pool is a handler written in C.
// Here that is a Spark.Router declared concurrent (set_concurrent(true)),
// served by two workers ordered by key, whose routes are dispatchers to
// the JavaScript modules. The workers check and forward messages side by
// side; the modules behind them still run on the main thread, in the
// order the router forwarded them: each account's entries arrive in the
// order they were sent. A broadcast reaches each worker of the router,
// which forwards its copy: the module behind it gets one per worker.
//
// That router pool makes no JavaScript faster: the modules take turns on
// the main thread, and one router worker with max_invocations above 1
// would forward as many messages at once. A pool pays when the modules
// behind it are written in C (or Python that waits on I/O), on threads of
// their own; see "Worker pools" in docs/routing.md.
//
// Prints the same lines on every run and exits 0; exits 1, with the
// error, on the first outcome it did not expect. Run it with
// `gjs -m pool.js` (GI_TYPELIB_PATH and LD_LIBRARY_PATH pointing at
// spark-channel if it is not installed).

import GLib from 'gi://GLib';
import GObject from 'gi://GObject';
import Gio from 'gi://Gio';
import Spark from 'gi://Spark?version=1.0';
import System from 'system';

Gio._promisify(Spark.Dispatcher.prototype, 'request_async', 'request_finish');
Gio._promisify(Spark.ModuleServer.prototype, 'shutdown_async', 'shutdown_finish');

const USERS = new Map([['user123', 'Alice'], ['user456', 'Bob'], ['user789', 'Carol'], ['user000', 'Dave']]);

function notSupported(name, module) {
    return new GLib.Error(Spark.ChannelError, Spark.ChannelError.NOT_SUPPORTED,
        `“${name}” is not a message of the ${module} module`);
}

// "users.lookup" (s) -> s, and the command "users.reload".
const Users = GObject.registerClass({
    Implements: [Spark.Handler],
}, class Users extends GObject.Object {
    constructor() {
        super();
        this.reloads = 0;
    }

    vfunc_handle_request(name, parameters) {
        if (name === 'users.lookup')
            return new GLib.Variant('s', USERS.get(parameters.unpack()) ?? '');
        throw notSupported(name, 'users');
    }

    vfunc_handle_command(name) {
        if (name === 'users.reload') {
            this.reloads++;
            return true;
        }
        throw notSupported(name, 'users');
    }
});

// "ledger.add" (ss: account, entry) and "ledger.read" (s) -> s.
const Ledger = GObject.registerClass({
    Implements: [Spark.Handler],
}, class Ledger extends GObject.Object {
    constructor() {
        super();
        this.ledgers = new Map();
    }

    vfunc_handle_request(name, parameters) {
        if (name === 'ledger.read')
            return new GLib.Variant('s', (this.ledgers.get(parameters.unpack()) ?? []).join(''));
        throw notSupported(name, 'ledger');
    }

    vfunc_handle_command(name, parameters) {
        if (name === 'ledger.add') {
            const [account, entry] = parameters.deepUnpack();
            this.ledgers.set(account, [...this.ledgers.get(account) ?? [], entry]);
            return true;
        }
        throw notSupported(name, 'ledger');
    }
});

// Calls func, which must fail with NOT_SUPPORTED; prints the message.
function expectNotSupported(what, func) {
    try {
        func();
    } catch (error) {
        if (!(error instanceof GLib.Error) || !error.matches(Spark.ChannelError, Spark.ChannelError.NOT_SUPPORTED))
            throw error;
        print(`pool: ${what} refused: ${error.message}`);
        return;
    }
    throw new Error(`${what}: expected NOT_SUPPORTED`);
}

async function main() {
    // A pool of two workers for a JavaScript handler: refused, whichever
    // way it is started, and a refused start does not count as a start.
    const users = new Users();
    const usersServer = new Spark.ModuleServer({handler: users, name: 'users', workers: 2});
    expectNotSupported('start_in_thread()', () => usersServer.start_in_thread());
    expectNotSupported('start(null)', () => usersServer.start(null));
    // The fallback: one worker, on the main context, where JavaScript runs.
    usersServer.workers = 1;
    usersServer.start(null);
    const ledger = new Ledger();
    const ledgerServer = new Spark.ModuleServer({handler: ledger, name: 'ledger'});
    ledgerServer.start(null);

    // A concurrent router may only route to handlers that can be called
    // from several threads: a JavaScript handler cannot, a dispatcher can.
    const router = new Spark.Router();
    router.set_concurrent(true);
    expectNotSupported('a route to a JavaScript handler',
        () => router.add_handler('ledger.*', ledger, null, null));
    router.add_dispatcher('users.*', usersServer.create_dispatcher(), null, null);
    router.add_dispatcher('ledger.*', ledgerServer.create_dispatcher(), null, null);

    // The router is C: a pool of two workers, ordered by key, each with a
    // few forwarded requests in flight.
    const routerServer = new Spark.ModuleServer({
        handler: router, name: 'router', workers: 2, ordering: Spark.Ordering.KEY, max_invocations: 4,
    });
    routerServer.start_in_thread();
    const dispatcher = routerServer.create_dispatcher();
    // Shut down on every way out, the router first: it may still be
    // waiting for the modules.
    try {
        print(`pool: a concurrent router on ${routerServer.workers} workers, routes ${router.list_patterns().join(', ')}`);

        // Lookups, all in flight at once.
        const names = await Promise.all([...USERS.keys()].map(user =>
            dispatcher.request_async('users.lookup', new GLib.Variant('s', user), new GLib.VariantType('s'), null)));
        [...USERS.keys()].forEach((user, i) => print(`client: users.lookup(${user}) -> ${names[i].unpack()}`));

        // Entries of two accounts, interleaved: keyed by account, each
        // account's are forwarded, and handled, in the order they were sent.
        for (const [alice, bob] of [['a', 'u'], ['b', 'v'], ['c', 'w'], ['d', 'x'], ['e', 'y'], ['f', 'z']]) {
            dispatcher.send_command('ledger.add', new GLib.Variant('(ss)', ['alice', alice]), null);
            dispatcher.send_command('ledger.add', new GLib.Variant('(ss)', ['bob', bob]), null);
        }
        for (const [account, expected] of [['alice', 'abcdef'], ['bob', 'uvwxyz']]) {
            // eslint-disable-next-line no-await-in-loop
            const entries = (await dispatcher.request_async('ledger.read', new GLib.Variant('s', account),
                new GLib.VariantType('s'), null)).unpack();
            if (entries !== expected)
                throw new Error(`the entries of ${account} came out of order: ${entries}`);
            print(`client: ${account}'s entries, in order: ${entries}`);
        }

        // Each router worker forwards its own copy.
        dispatcher.broadcast_command('users.reload', null);
    } finally {
        await routerServer.shutdown_async(Spark.ShutdownMode.DRAIN, null);
        await usersServer.shutdown_async(Spark.ShutdownMode.DRAIN, null);
        await ledgerServer.shutdown_async(Spark.ShutdownMode.DRAIN, null);
    }
    if (users.reloads !== 2)
        throw new Error(`users.reload arrived ${users.reloads} times, not once per router worker`);
    print(`users: users.reload arrived ${users.reloads} times, once from each router worker`);
    print('done: the router pool and the modules have stopped');
}

const loop = new GLib.MainLoop(null, false);
let status = 1;
main().then(() => (status = 0), error => logError(error)).finally(() => loop.quit());
loop.run();
System.exit(status);
