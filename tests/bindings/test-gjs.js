// test-gjs.js: spark-channel from JavaScript (GJS), through GObject-Introspection
//
// SPDX-License-Identifier: LGPL-2.1-or-later
//
// Everything a JavaScript program can do: handlers written in JavaScript,
// served on the main context, replying at once or later from a Promise
// through Spark.Invocation; requests with Gio._promisify and await, and
// with request_full; commands and the command-failed signal; shutdown with
// a token; message priorities, overflow policies and the messages-dropped
// signal; rate limits and cancel_all(); every error arriving as a
// GLib.Error with the right domain and code.
//
// What JavaScript cannot do, and what it gets instead:
// - GJS runs JavaScript only on its main thread: a JS handler's server can
//   only be started on the global default context; start_in_thread() and
//   start() with any other context fail with NOT_SUPPORTED.
// - For the same reason a JS handler is served by the thread that runs
//   JS, so request_sync() to it from JS fails with WOULD_DEADLOCK (and so
//   does send_command() when it would have to wait for room): use
//   request_async() (promisified), request_full() or send_command_async().
// - A JS vfunc_handle_invocation must complete its invocation on every
//   path and must not throw (GJS logs a JS exception thrown from a void
//   vfunc as a critical); a dropped invocation is only freed by the
//   garbage collector, so give the dispatcher a timeout.
// - A Spark.Router is C and may run on a thread of its own, but then it
//   fails what it routes to a JS handler with NOT_SUPPORTED (the JS would
//   have to run off the main thread): serve the router on the main
//   context, or route to a dispatcher of a server there.
// - A pool of workers (SparkModuleServer:workers > 1) runs its handler on
//   other threads: a JS handler's pool fails to start with NOT_SUPPORTED,
//   whatever its vfunc_get_flags declares, and so does a JS handler route
//   on a concurrent router. A concurrent router whose routes are
//   dispatchers may be served by a pool.
// - spark_func_handler_new() and spark_invocation_take_error() are C only.
//
// Run with `gjs -m test-gjs.js`, with GI_TYPELIB_PATH and LD_LIBRARY_PATH
// pointing at the build directory. Prints TAP; exits 1 on failure.

import GLib from 'gi://GLib';
import GObject from 'gi://GObject';
import Gio from 'gi://Gio';
import Spark from 'gi://Spark?version=1.0';
import System from 'system';

Gio._promisify(Spark.Dispatcher.prototype, 'request_async', 'request_finish');
Gio._promisify(Spark.Dispatcher.prototype, 'send_command_async', 'send_command_finish');
Gio._promisify(Spark.ModuleServer.prototype, 'shutdown_async', 'shutdown_finish');

const {ChannelError} = Spark;
const WATCHDOG_MS = 10000;

// Helpers --------------------------------------------------------------------

function assert(condition, message = 'assertion failed') {
    if (!condition)
        throw new Error(message);
}

function assertEqual(actual, expected, what = 'value') {
    const a = JSON.stringify(actual), e = JSON.stringify(expected);
    if (a !== e)
        throw new Error(`${what}: expected ${e}, got ${a}`);
}

function errorName(domain, code) {
    return `${domain === ChannelError ? 'Spark.ChannelError' : 'Gio.IOErrorEnum'} ${code}`;
}

function assertError(error, domain, code, messagePart = null) {
    if (!(error instanceof GLib.Error))
        throw new Error(`expected a GLib.Error ${errorName(domain, code)}, got ${error}`);
    if (!error.matches(domain, code))
        throw new Error(`expected ${errorName(domain, code)}, got ${GLib.quark_to_string(error.domain)} ${error.code}: ${error.message}`);
    if (messagePart !== null && !error.message.includes(messagePart))
        throw new Error(`"${messagePart}" not in "${error.message}"`);
    return error;
}

function assertThrows(domain, code, func) {
    let result;
    try {
        result = func();
    } catch (error) {
        return assertError(error, domain, code);
    }
    throw new Error(`expected ${errorName(domain, code)}, got the result ${result}`);
}

async function assertRejects(domain, code, promise) {
    let result;
    try {
        result = await promise;
    } catch (error) {
        return assertError(error, domain, code);
    }
    throw new Error(`expected ${errorName(domain, code)}, got the result ${result}`);
}

function sleep(ms) {
    return new Promise(resolve => GLib.timeout_add(GLib.PRIORITY_DEFAULT, ms, () => {
        resolve();
        return GLib.SOURCE_REMOVE;
    }));
}

// Resolves when predicate() becomes true; the main loop keeps running.
function waitFor(predicate, what = 'a condition') {
    return new Promise((resolve, reject) => {
        const start = GLib.get_monotonic_time();
        GLib.timeout_add(GLib.PRIORITY_DEFAULT, 1, () => {
            if (predicate()) {
                resolve();
                return GLib.SOURCE_REMOVE;
            }
            if (GLib.get_monotonic_time() - start > WATCHDOG_MS * 1000) {
                reject(new Error(`timed out waiting for ${what}`));
                return GLib.SOURCE_REMOVE;
            }
            return GLib.SOURCE_CONTINUE;
        });
    });
}

// Lets the main context handle everything that is ready now.
async function settle() {
    for (let i = 0; i < 10; i++)
        await sleep(0);
}

async function shutdown(server, mode = Spark.ShutdownMode.DRAIN) {
    const stopped = await server.shutdown_async(mode, null);
    assert(stopped === true, 'shutdown_finish returned TRUE');
    assert(!server.running, 'the server is not running');
}

function requestFull(dispatcher, name, parameters = null, replyType = null, cancellable = null) {
    return new Promise(resolve => {
        dispatcher.request_full(name, parameters, replyType, cancellable,
            (reply, error) => resolve({reply, error}));
    });
}

// Handlers -------------------------------------------------------------------

// Sync handler: replies (or throws) at once; records what it saw.
const Recorder = GObject.registerClass({
    Implements: [Spark.Handler],
}, class Recorder extends GObject.Object {
    constructor() {
        super();
        this.seen = [];
    }

    vfunc_handle_request(name, parameters, cancellable) {
        this.seen.push(['request', name, parameters ? parameters.recursiveUnpack() : null]);
        assert(cancellable === null || cancellable instanceof Gio.Cancellable);
        switch (name) {
        case 'Echo':
            return parameters ?? new GLib.Variant('s', 'no parameters');
        case 'Int':
            return new GLib.Variant('i', 42);
        case 'Fail':
            throw new GLib.Error(Gio.IOErrorEnum, Gio.IOErrorEnum.NOT_FOUND, 'No data for “user123”');
        case 'ReturnNull':
            return null;
        case 'ThrowJsError':
            throw new TypeError('not a GLib.Error');
        case 'WrongReturnType':
            return 5;
        default:
            throw new GLib.Error(ChannelError, ChannelError.NOT_SUPPORTED,
                `“${name}” is not a request of this module`);
        }
    }

    vfunc_handle_command(name, parameters, cancellable) {
        this.seen.push(['command', name, parameters ? parameters.recursiveUnpack() : null]);
        if (name === 'FailCommand')
            throw new GLib.Error(Gio.IOErrorEnum, Gio.IOErrorEnum.NO_SPACE, 'The event log is full');
        return true;
    }
});

// A subclass of a JavaScript handler class is JavaScript too.
const SubRecorder = GObject.registerClass(class SubRecorder extends Recorder {});

// Replies later: hands each Spark.Invocation to onInvocation, or keeps it.
const Later = GObject.registerClass({
    Implements: [Spark.Handler],
}, class Later extends GObject.Object {
    constructor(onInvocation = null) {
        super();
        this.onInvocation = onInvocation;
        this.held = [];
        this.names = [];
    }

    vfunc_handle_invocation(invocation) {
        this.names.push(invocation.get_name());
        if (this.onInvocation)
            this.onInvocation(invocation);
        else
            this.held.push(invocation);
    }
});

// The idiomatic asynchronous handler: an async method whose outcome
// completes the invocation on every path.
const AsyncKeyValue = GObject.registerClass({
    Implements: [Spark.Handler],
}, class AsyncKeyValue extends GObject.Object {
    constructor() {
        super();
        this.data = new Map([['user123', [1, 2]]]);
    }

    vfunc_handle_invocation(invocation) {
        this._handle(invocation.get_name(), invocation.get_parameters(), invocation.get_cancellable())
            .then(reply => invocation.return_value(reply))
            .catch(error => {
                if (error instanceof GLib.Error)
                    invocation.return_gerror(error);
                else
                    invocation.return_error_literal(ChannelError.quark(), ChannelError.NO_REPLY, `${error}`);
            });
    }

    async _handle(name, parameters, cancellable) {
        await sleep(5);   // stands for I/O
        if (name === 'GetData') {
            const [key] = parameters.deepUnpack();
            if (!this.data.has(key))
                throw new GLib.Error(Gio.IOErrorEnum, Gio.IOErrorEnum.NOT_FOUND, `No data for “${key}”`);
            return new GLib.Variant('au', this.data.get(key));
        }
        if (name === 'UpdateData') {
            const [key, value] = parameters.deepUnpack();
            this.data.set(key, [...this.data.get(key) ?? [], value]);
            return new GLib.Variant('b', true);
        }
        if (name === 'Broken')
            throw new RangeError('a bug in the handler');
        throw new GLib.Error(ChannelError, ChannelError.NOT_SUPPORTED, `“${name}” is not a request of this module`);
    }
});

const RequestsOnly = GObject.registerClass({
    Implements: [Spark.Handler],
}, class RequestsOnly extends GObject.Object {
    vfunc_handle_request(name) {
        return new GLib.Variant('s', name);
    }
});

const CommandsOnly = GObject.registerClass({
    Implements: [Spark.Handler],
}, class CommandsOnly extends GObject.Object {
    vfunc_handle_command() {
        return true;
    }
});

// Tests ----------------------------------------------------------------------

const tests = [];

function test(name, func) {
    tests.push([`/bindings/gjs/${name}`, func]);
}

test('sync-handler/request-async', async () => {
    const handler = new Recorder();
    const server = new Spark.ModuleServer({handler, name: 'gjs'});
    assertEqual(server.name, 'gjs');
    server.start(null);
    assert(server.running);
    const dispatcher = server.create_dispatcher();

    const reply = await dispatcher.request_async('Echo', new GLib.Variant('(su)', ['user123', 7]), null, null);
    assertEqual(reply.deepUnpack(), ['user123', 7]);
    const none = await dispatcher.request_async('Echo', null, new GLib.VariantType('s'), null);
    assertEqual(none.unpack(), 'no parameters');
    assertEqual(handler.seen, [['request', 'Echo', ['user123', 7]], ['request', 'Echo', null]]);

    // Many at once: one at a time, in mailbox order.
    const replies = await Promise.all(Array.from({length: 20},
        (_, i) => dispatcher.request_async('Echo', new GLib.Variant('u', i), null, null)));
    assertEqual(replies.map(r => r.unpack()), Array.from({length: 20}, (_, i) => i));

    await shutdown(server);
});

test('sync-handler/kept-async-results-stay-valid', async () => {
    // Results kept by callbacks are finished later, after other requests
    // reused the results nobody kept.
    const server = Spark.ModuleServer.new(new Recorder());
    server.start(null);
    const dispatcher = server.create_dispatcher();
    const kept = [];
    const finished = [];

    await new Promise(resolve => {
        const done = () => {
            if (kept.length === 5 && finished.length === 5)
                resolve();
        };
        for (let i = 0; i < 10; i++) {
            dispatcher.request_async('Echo', new GLib.Variant('u', i), null, null, (source, result) => {
                if (i % 2 === 0)
                    kept.push(result);
                else
                    finished.push(source.request_finish(result).unpack());
                done();
            });
        }
    });
    assertEqual(finished, [1, 3, 5, 7, 9]);
    assertEqual(kept.reverse().map(result => dispatcher.request_finish(result).unpack()), [8, 6, 4, 2, 0]);

    await shutdown(server);
});

test('sync-handler/on-explicit-default-context', async () => {
    const server = Spark.ModuleServer.new(new Recorder());
    server.start(GLib.MainContext.default());
    const reply = await server.create_dispatcher().request_async('Int', null, new GLib.VariantType('i'), null);
    assertEqual(reply.unpack(), 42);
    await shutdown(server);
});

test('invocation/reply-later-from-promise', async () => {
    const server = new Spark.ModuleServer({handler: new AsyncKeyValue()});
    server.start(null);
    const dispatcher = server.create_dispatcher();

    const [updated, other] = await Promise.all([
        dispatcher.request_async('UpdateData', new GLib.Variant('(su)', ['user123', 3]), new GLib.VariantType('b'), null),
        dispatcher.request_async('UpdateData', new GLib.Variant('(su)', ['user456', 9]), new GLib.VariantType('b'), null),
    ]);
    assert(updated.unpack() && other.unpack());
    const data = await dispatcher.request_async('GetData', new GLib.Variant('(s)', ['user123']), new GLib.VariantType('au'), null);
    assertEqual(data.deepUnpack(), [1, 2, 3]);

    const error = await assertRejects(Gio.IOErrorEnum, Gio.IOErrorEnum.NOT_FOUND,
        dispatcher.request_async('GetData', new GLib.Variant('(s)', ['nobody']), null, null));
    assertEqual(error.message, 'No data for “nobody”');
    await assertRejects(ChannelError, ChannelError.NOT_SUPPORTED,
        dispatcher.request_async('Nonsense', null, null, null));
    await assertRejects(ChannelError, ChannelError.NO_REPLY,
        dispatcher.request_async('Broken', null, null, null));

    await shutdown(server);
});

test('invocation/progress-from-promise', async () => {
    // The handler reports from Promise continuations, then replies.
    const handler = new Later(async invocation => {
        for (let i = 1; i <= 5; i++) {
            await sleep(1);
            invocation.send_progress(new GLib.Variant('i', i));
        }
        invocation.return_value(new GLib.Variant('s', 'done'));
    });
    const server = new Spark.ModuleServer({handler});
    server.start(null);
    const dispatcher = server.create_dispatcher();
    const seen = [];
    let finished = false;

    const reply = await new Promise((resolve, reject) => {
        dispatcher.request_with_progress_async('Long', null, null, null,
            progress => {
                assert(!finished, 'progress after the reply');
                seen.push(progress.unpack());
            },
            (source, result) => {
                finished = true;
                try {
                    resolve(source.request_finish(result));
                } catch (e) {
                    reject(e);
                }
            });
    });
    assertEqual(reply.unpack(), 'done');
    assertEqual(JSON.stringify(seen), JSON.stringify([1, 2, 3, 4, 5]), 'progress');

    await shutdown(server);
});

test('invocation/accessors-and-errors', async () => {
    const seen = [];
    const handler = new Later(invocation => {
        seen.push([invocation.get_name(), invocation.get_parameters()?.deepUnpack() ?? null,
            invocation.get_cancellable() instanceof Gio.Cancellable]);
        switch (invocation.get_name()) {
        case 'Literal':
            invocation.return_error_literal(Gio.io_error_quark(), Gio.IOErrorEnum.PERMISSION_DENIED, 'Not yours');
            break;
        case 'GError':
            invocation.return_gerror(new GLib.Error(ChannelError, ChannelError.NOT_SUPPORTED, 'Not here'));
            break;
        default:
            invocation.return_value(new GLib.Variant('s', 'at once'));
        }
    });
    const server = new Spark.ModuleServer({handler});
    server.start(null);
    const dispatcher = server.create_dispatcher();

    const reply = await dispatcher.request_async('Value', new GLib.Variant('(s)', ['p']), null, null);
    assertEqual(reply.unpack(), 'at once');
    let error = await assertRejects(Gio.IOErrorEnum, Gio.IOErrorEnum.PERMISSION_DENIED,
        dispatcher.request_async('Literal', null, null, null));
    assertEqual(error.message, 'Not yours');
    error = await assertRejects(ChannelError, ChannelError.NOT_SUPPORTED,
        dispatcher.request_async('GError', null, null, null));
    assertEqual(error.message, 'Not here');
    assertEqual(seen, [['Value', ['p'], true], ['Literal', null, true], ['GError', null, true]]);

    await shutdown(server);
});

test('invocation/dropped-gives-no-reply-after-gc', async () => {
    // An invocation JavaScript lets go of is freed by the garbage collector.
    const server = new Spark.ModuleServer({handler: new Later(() => {})});
    server.start(null);
    const dispatcher = server.create_dispatcher();
    let outcome = null;
    dispatcher.request_async('Dropped', null, null, null).then(
        reply => (outcome = reply), error => (outcome = error));
    await settle();
    assert(outcome === null, 'no outcome before the collection');
    System.gc();
    await waitFor(() => outcome !== null, 'the NO_REPLY');
    assertError(outcome, ChannelError, ChannelError.NO_REPLY, 'dropped without a reply');
    await shutdown(server);
});

test('invocation/held-then-completed-in-order', async () => {
    const handler = new Later();
    const server = new Spark.ModuleServer({handler});
    server.start(null);
    const dispatcher = server.create_dispatcher();
    const first = dispatcher.request_async('First', null, null, null);
    const second = dispatcher.request_async('Second', null, null, null);
    await waitFor(() => handler.held.length === 1, 'the first invocation');
    await settle();
    // The server waits for the held invocation before the next message.
    assertEqual(handler.names, ['First']);
    handler.held.pop().return_value(new GLib.Variant('i', 1));
    assertEqual((await first).unpack(), 1);
    await waitFor(() => handler.held.length === 1, 'the second invocation');
    handler.held.pop().return_value(new GLib.Variant('i', 2));
    assertEqual((await second).unpack(), 2);
    await shutdown(server);
});

test('handler-errors/reach-requester', async () => {
    const server = new Spark.ModuleServer({handler: new Recorder()});
    server.start(null);
    const dispatcher = server.create_dispatcher();

    const error = await assertRejects(Gio.IOErrorEnum, Gio.IOErrorEnum.NOT_FOUND,
        dispatcher.request_async('Fail', null, null, null));
    assertEqual(error.message, 'No data for “user123”');
    await assertRejects(ChannelError, ChannelError.NOT_SUPPORTED,
        dispatcher.request_async('Unknown', null, null, null));
    await assertRejects(ChannelError, ChannelError.NO_REPLY,
        dispatcher.request_async('ReturnNull', null, null, null));

    // A JS exception that is not a GLib.Error travels as GJS's own error
    // domain and comes back to JavaScript as the original exception.
    let thrown = null;
    try {
        await dispatcher.request_async('ThrowJsError', null, null, null);
    } catch (e) {
        thrown = e;
    }
    assert(thrown instanceof TypeError, `a TypeError, got ${thrown}`);
    assertEqual(thrown.message, 'not a GLib.Error');

    // A return value that is not a GLib.Variant: GJS's conversion error,
    // the same way.
    thrown = null;
    try {
        await dispatcher.request_async('WrongReturnType', null, null, null);
    } catch (e) {
        thrown = e;
    }
    assert(thrown instanceof Error && !(thrown instanceof GLib.Error), `a JS Error, got ${thrown}`);

    // The server goes on.
    assertEqual((await dispatcher.request_async('Int', null, null, null)).unpack(), 42);
    await shutdown(server);
});

test('handler/missing-methods-not-supported', async () => {
    let server = new Spark.ModuleServer({handler: new CommandsOnly()});
    server.start(null);
    let dispatcher = server.create_dispatcher();
    await assertRejects(ChannelError, ChannelError.NOT_SUPPORTED,
        dispatcher.request_async('GetData', null, null, null));
    await shutdown(server);

    server = new Spark.ModuleServer({handler: new RequestsOnly()});
    const failures = [];
    server.connect('command-failed', (_srv, name, _params, error) => failures.push([name, error]));
    server.start(null);
    dispatcher = server.create_dispatcher();
    assertEqual((await dispatcher.request_async('GetData', null, null, null)).unpack(), 'GetData');
    dispatcher.send_command('LogEvent', null, null);
    await waitFor(() => failures.length === 1, 'command-failed');
    assertEqual(failures[0][0], 'LogEvent');
    assertError(failures[0][1], ChannelError, ChannelError.NOT_SUPPORTED);
    await shutdown(server);
});

test('request-full', async () => {
    const server = new Spark.ModuleServer({handler: new Recorder()});
    server.start(null);
    const dispatcher = server.create_dispatcher();

    let called = false;
    const done = new Promise(resolve => dispatcher.request_full('Int', null, null, null, (reply, error) => {
        called = true;
        resolve({reply, error});
    }));
    assert(!called, 'not called inside request_full');
    let {reply, error} = await done;
    assert(error === null && reply.unpack() === 42);

    ({reply, error} = await requestFull(dispatcher, 'Int', null, new GLib.VariantType('s')));
    assert(reply === null);
    assertError(error, ChannelError, ChannelError.TYPE_MISMATCH, 'has type “i”, expected “s”');

    ({reply, error} = await requestFull(dispatcher, 'Fail'));
    assertError(error, Gio.IOErrorEnum, Gio.IOErrorEnum.NOT_FOUND, 'user123');

    const cancelled = new Gio.Cancellable();
    cancelled.cancel();
    ({reply, error} = await requestFull(dispatcher, 'Int', null, null, cancelled));
    assertError(error, Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED);

    await shutdown(server);
});

test('commands', async () => {
    const handler = new Recorder();
    const server = new Spark.ModuleServer({handler});
    server.start(null);
    const dispatcher = server.create_dispatcher();

    assert(dispatcher.send_command('LogEvent', new GLib.Variant('(s)', ['one']), null));
    assert(dispatcher.try_send_command('LogEvent', new GLib.Variant('(s)', ['two'])));
    assert(await dispatcher.send_command_async('LogEvent', new GLib.Variant('(s)', ['three']), null));
    assert(dispatcher.send_command('NoParameters', null, null));
    await dispatcher.request_async('Int', null, null, null);
    assertEqual(handler.seen, [
        ['command', 'LogEvent', ['one']],
        ['command', 'LogEvent', ['two']],
        ['command', 'LogEvent', ['three']],
        ['command', 'NoParameters', null],
        ['request', 'Int', null],
    ]);
    await shutdown(server);
});

test('command-failed-signal', async () => {
    const handler = new Recorder();
    const server = new Spark.ModuleServer({handler});
    const failures = [];
    server.connect('command-failed', (srv, name, parameters, error) => failures.push({srv, name, parameters, error}));
    server.start(null);
    const dispatcher = server.create_dispatcher();

    dispatcher.send_command('FailCommand', new GLib.Variant('(s)', ['User logged in']), null);
    dispatcher.send_command('LogEvent', null, null);
    await waitFor(() => failures.length === 1, 'command-failed');
    const [{srv, name, parameters, error}] = failures;
    assert(srv === server, 'the server is the signal\'s instance');
    assertEqual(name, 'FailCommand');
    assertEqual(parameters.deepUnpack(), ['User logged in']);
    assertError(error, Gio.IOErrorEnum, Gio.IOErrorEnum.NO_SPACE);
    assertEqual(error.message, 'The event log is full');
    await dispatcher.request_async('Int', null, null, null);
    assertEqual(handler.seen.map(s => s[1]), ['FailCommand', 'LogEvent', 'Int']);
    await shutdown(server);
});

test('shutdown/with-token', async () => {
    const handler = new Recorder();
    const server = new Spark.ModuleServer({handler});
    const running = [];
    server.connect('notify::running', () => running.push(server.running));
    server.start(null);
    await waitFor(() => running.length === 1, 'notify::running');
    const dispatcher = server.create_dispatcher();
    const token = new Gio.Cancellable();
    let tokenCancelled = false;
    // Gio.Cancellable.connect is g_cancellable_connect(): a callback
    // without arguments, run on the server's context (here the main one).
    token.connect(() => (tokenCancelled = true));

    const queued = dispatcher.request_async('Int', null, null, null);
    dispatcher.send_command('LogEvent', null, null);
    assert(dispatcher.send_shutdown(token));

    // Closed at once.
    assertThrows(ChannelError, ChannelError.CLOSED, () => dispatcher.send_command('Late', null, null));
    assertThrows(ChannelError, ChannelError.CLOSED, () => dispatcher.send_shutdown(null));
    await assertRejects(ChannelError, ChannelError.CLOSED, dispatcher.request_async('Late', null, null, null));

    // Queued before the shutdown: handled.
    assertEqual((await queued).unpack(), 42);
    await waitFor(() => tokenCancelled, 'the token');
    assert(token.is_cancelled());
    assertEqual(handler.seen.map(s => s[1]), ['Int', 'LogEvent']);
    await waitFor(() => running.length === 2, 'notify::running');
    assertEqual(running, [true, false]);
    await shutdown(server);   // already stopped: at once
});

test('shutdown/abort', async () => {
    const handler = new Recorder();
    const server = new Spark.ModuleServer({handler});
    const failures = [];
    server.connect('command-failed', () => failures.push(true));
    server.start(null);
    const dispatcher = server.create_dispatcher();
    const first = dispatcher.request_async('Int', null, null, null);
    dispatcher.send_command('FailCommand', null, null);
    const second = dispatcher.request_async('Int', null, null, null);
    assertEqual(server.pending, 3);
    const stopped = shutdown(server, Spark.ShutdownMode.ABORT);
    await assertRejects(ChannelError, ChannelError.CLOSED, first);
    await assertRejects(ChannelError, ChannelError.CLOSED, second);
    await stopped;
    assertEqual(handler.seen, []);
    assertEqual(failures, []);
});

test('errors/not-supported-off-the-default-context', async () => {
    for (const handler of [new Recorder(), new SubRecorder(), new Later(), new AsyncKeyValue()]) {
        const server = new Spark.ModuleServer({handler});

        let error = assertThrows(ChannelError, ChannelError.NOT_SUPPORTED, () => server.start_in_thread());
        assert(error.message.includes('JavaScript'), error.message);
        assertThrows(ChannelError, ChannelError.NOT_SUPPORTED, () => server.start(new GLib.MainContext()));

        // start(null) while another thread-default context is pushed.
        const context = new GLib.MainContext();
        context.push_thread_default();
        try {
            assertThrows(ChannelError, ChannelError.NOT_SUPPORTED, () => server.start(null));
        } finally {
            context.pop_thread_default();
        }
        assert(!server.running, 'a refused start is not a start');

        // A refused start does not count: the default context works.
        assert(server.start(null));
        assertThrows(ChannelError, ChannelError.ALREADY_STARTED, () => server.start(null));
        await shutdown(server);
    }
});

test('errors/closed', async () => {
    const server = new Spark.ModuleServer({handler: new Recorder()});
    const dispatcher = server.create_dispatcher();
    await assertRejects(ChannelError, ChannelError.CLOSED, dispatcher.request_async('Int', null, null, null));
    assertThrows(ChannelError, ChannelError.CLOSED, () => dispatcher.send_command('LogEvent', null, null));
    assertThrows(ChannelError, ChannelError.CLOSED, () => dispatcher.try_send_command('LogEvent', null));
    await assertRejects(ChannelError, ChannelError.CLOSED, dispatcher.send_command_async('LogEvent', null, null));
    const {error} = await requestFull(dispatcher, 'Int');
    assertError(error, ChannelError, ChannelError.CLOSED);

    await shutdown(server);   // never started: at once
    assertThrows(ChannelError, ChannelError.CLOSED, () => server.start(null));
});

test('errors/already-started', async () => {
    const server = new Spark.ModuleServer({handler: new Recorder()});
    server.start(null);
    assertThrows(ChannelError, ChannelError.ALREADY_STARTED, () => server.start(null));
    assertThrows(ChannelError, ChannelError.ALREADY_STARTED, () => server.start(GLib.MainContext.default()));
    await shutdown(server);
});

test('errors/type-mismatch', async () => {
    const server = new Spark.ModuleServer({handler: new Recorder()});
    server.start(null);
    const dispatcher = server.create_dispatcher();
    await assertRejects(ChannelError, ChannelError.TYPE_MISMATCH,
        dispatcher.request_async('Int', null, new GLib.VariantType('s'), null));
    const error = await assertRejects(ChannelError, ChannelError.TYPE_MISMATCH,
        dispatcher.request_async('Int', null, new GLib.VariantType('(s)'), null));
    assert(error.message.includes('has type “i”, expected “(s)”'), error.message);
    await shutdown(server);
});

test('errors/full-and-would-deadlock', async () => {
    const handler = new Recorder();
    const server = new Spark.ModuleServer({handler, capacity: 1});
    assertEqual(server.capacity, 1);
    server.start(null);
    const dispatcher = server.create_dispatcher();

    assert(dispatcher.try_send_command('LogEvent', new GLib.Variant('s', 'a')));
    assertThrows(ChannelError, ChannelError.FULL, () => dispatcher.try_send_command('LogEvent', null));
    assertEqual(server.pending, 1);
    // Blocking for room on the only thread that runs JavaScript.
    assertThrows(ChannelError, ChannelError.WOULD_DEADLOCK, () => dispatcher.send_command('LogEvent', null, null));
    // Waiting asynchronously works.
    assert(await dispatcher.send_command_async('LogEvent', new GLib.Variant('s', 'b'), null));
    await shutdown(server);
    assertEqual(handler.seen, [['command', 'LogEvent', 'a'], ['command', 'LogEvent', 'b']]);
});

test('errors/would-deadlock-request-sync', async () => {
    const handler = new Recorder();
    const server = new Spark.ModuleServer({handler});
    server.start(null);
    const dispatcher = server.create_dispatcher();
    assertThrows(ChannelError, ChannelError.WOULD_DEADLOCK,
        () => dispatcher.request_sync('Int', null, null, null));
    assertEqual(handler.seen, []);
    await shutdown(server);
});

test('errors/timed-out', async () => {
    const handler = new Later();
    const server = new Spark.ModuleServer({handler});
    server.start(null);
    const dispatcher = server.create_dispatcher();
    dispatcher.timeout = 50;
    assertEqual(dispatcher.get_timeout(), 50);

    await assertRejects(ChannelError, ChannelError.TIMED_OUT, dispatcher.request_async('Slow', null, null, null));
    const invocation = handler.held.pop();
    assert(invocation.get_cancellable().is_cancelled(), 'the handler\'s cancellable is cancelled');
    invocation.return_value(new GLib.Variant('s', 'too late'));   // dropped quietly

    const {error} = await requestFull(dispatcher, 'Slow');
    assertError(error, ChannelError, ChannelError.TIMED_OUT);
    handler.held.pop().return_value(new GLib.Variant('s', 'too late'));

    dispatcher.timeout = -1;
    const inTime = dispatcher.request_async('Now', null, null, null);
    await waitFor(() => handler.held.length === 1, 'the invocation');
    handler.held.pop().return_value(new GLib.Variant('s', 'in time'));
    assertEqual((await inTime).unpack(), 'in time');
    await shutdown(server);
});

test('errors/cancelled', async () => {
    const handler = new Later();
    const server = new Spark.ModuleServer({handler});
    server.start(null);
    const dispatcher = server.create_dispatcher();

    const cancelled = new Gio.Cancellable();
    cancelled.cancel();
    await assertRejects(Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED,
        dispatcher.request_async('Never', null, null, cancelled));
    assertThrows(Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED,
        () => dispatcher.send_command('Never', null, cancelled));
    await assertRejects(Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED,
        dispatcher.send_command_async('Never', null, cancelled));

    // Cancelled while the handler holds the invocation.
    const requester = new Gio.Cancellable();
    const held = dispatcher.request_async('Held', null, null, requester);
    await waitFor(() => handler.held.length === 1, 'the invocation');
    const invocation = handler.held.pop();
    assert(!invocation.get_cancellable().is_cancelled());
    requester.cancel();
    await assertRejects(Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED, held);
    assert(invocation.get_cancellable().is_cancelled());
    invocation.return_value(new GLib.Variant('s', 'too late'));

    await shutdown(server);
    assertEqual(handler.names, ['Held']);
});

// Priorities and overflow policies. The server runs on the main context,
// as a JavaScript handler's must: it handles nothing while the test's own
// code runs, so the test fills the mailbox first, then lets the main loop
// run and looks at what the handler saw.

// Logs what it handles, as "name" or "name:value"; with urgent set, "d0"
// sends "urgent" through it, and with cancel set, "d0" calls
// cancel.cancel_all(), from inside the batch the server took.
const FlowLog = GObject.registerClass({
    Implements: [Spark.Handler],
}, class FlowLog extends GObject.Object {
    constructor() {
        super();
        this.log = [];
        this.urgent = null;
        this.cancel = null;
    }

    _record(name, parameters) {
        this.log.push(parameters ? `${name}:${parameters.unpack()}` : name);
    }

    vfunc_handle_command(name, parameters) {
        this._record(name, parameters);
        if (name === 'd0' && this.urgent)
            this.urgent.try_send_command('urgent', null);
        if (name === 'd0' && this.cancel)
            this.cancel.cancel_all();
        return true;
    }

    vfunc_handle_request(name, parameters) {
        this._record(name, parameters);
        return new GLib.Variant('s', name);
    }
});

// A FlowLog server on the main context, with its messages-dropped reports.
function startFlow(props = {}) {
    const handler = new FlowLog();
    const server = new Spark.ModuleServer({handler, ...props});
    const reports = [];
    server.connect('messages-dropped', (_srv, count) => reports.push(count));
    server.start(null);
    const dropped = () => reports.reduce((a, b) => a + b, 0);
    return {handler, server, dispatcher: server.create_dispatcher(), reports, dropped};
}

test('priority/order', async () => {
    const {handler, server, dispatcher, reports} = startFlow();
    const low = dispatcher.with_priority(Spark.Priority.LOW);
    const high = dispatcher.with_priority(Spark.Priority.HIGH);
    assert(high instanceof Spark.Dispatcher && high !== dispatcher, 'with_priority gives another dispatcher');
    assertEqual([dispatcher.priority, low.priority, high.get_priority()],
        [Spark.Priority.DEFAULT, Spark.Priority.LOW, Spark.Priority.HIGH], 'priorities');

    for (const [sender, name] of [[low, 'l1'], [dispatcher, 'd1'], [high, 'h1'],
        [low, 'l2'], [dispatcher, 'd2'], [high, 'h2']])
        assert(sender.send_command(name, null, null));
    assertEqual(server.pending, 6, 'pending');
    await waitFor(() => handler.log.length === 6, 'the commands');
    assertEqual(handler.log, ['h1', 'h2', 'd1', 'd2', 'l1', 'l2'], 'handled order');
    assertEqual(reports, [], 'messages-dropped');
    await shutdown(server);
});

test('priority/property-and-requests', async () => {
    const {handler, server, dispatcher} = startFlow();
    const notified = [];
    dispatcher.connect('notify::priority', () => notified.push(dispatcher.priority));
    dispatcher.set_priority(Spark.Priority.DEFAULT);
    assertEqual(notified, [], 'no notification without a change');
    dispatcher.timeout = 60000;
    assertEqual(dispatcher.with_priority(Spark.Priority.HIGH).timeout, 60000, 'the derived timeout');

    dispatcher.priority = Spark.Priority.LOW;
    const low = dispatcher.request_async('low', null, null, null);
    dispatcher.set_priority(Spark.Priority.HIGH);
    const high = dispatcher.request_async('high', null, null, null);
    assertEqual(notified, [Spark.Priority.LOW, Spark.Priority.HIGH], 'notify::priority');
    assertEqual([(await low).unpack(), (await high).unpack()], ['low', 'high']);
    assertEqual(handler.log, ['high', 'low'], 'handled order');
    await shutdown(server);
});

test('priority/high-behind-taken-batch', async () => {
    const {handler, server, dispatcher} = startFlow();
    handler.urgent = dispatcher.with_priority(Spark.Priority.HIGH);
    const names = Array.from({length: 20}, (_, i) => `d${i}`);
    for (const name of names)
        assert(dispatcher.send_command(name, null, null));
    await waitFor(() => handler.log.length === 21, 'the commands');
    assertEqual(handler.log, ['d0', 'urgent', ...names.slice(1)], 'handled order');
    handler.urgent = null;
    await shutdown(server);
});

test('overflow/coalesce-and-messages-dropped', async () => {
    const {handler, server, dispatcher, reports, dropped} =
        startFlow({capacity: 2, overflow: Spark.OverflowPolicy.COALESCE});
    assertEqual(server.overflow, Spark.OverflowPolicy.COALESCE);

    // A command replaces the newest queued one of its name and priority,
    // which is dropped, and joins the end of the queue.
    for (const [name, value] of [['p', 1], ['q', 1], ['p', 2], ['p', 3]])   // [q:1 p:3]
        assert(dispatcher.send_command(name, new GLib.Variant('i', value), null));
    assertEqual(server.pending, 2, 'pending');
    // Another priority is another queue: nothing of its name there.
    assertThrows(ChannelError, ChannelError.FULL,
        () => dispatcher.with_priority(Spark.Priority.HIGH).try_send_command('p', null));
    // Nothing of its name queued: it would wait for room.
    assertThrows(ChannelError, ChannelError.FULL, () => dispatcher.try_send_command('other', null));
    assertThrows(ChannelError, ChannelError.WOULD_DEADLOCK, () => dispatcher.send_command('other', null, null));
    const other = dispatcher.send_command_async('other', null, null);
    const request = dispatcher.request_async('r', null, null, null);   // requests never coalesce

    assert(await other);
    assertEqual((await request).unpack(), 'r');
    await waitFor(() => dropped() === 2, 'messages-dropped');
    assertEqual(handler.log, ['q:1', 'p:3', 'other', 'r'], 'handled');
    assert(reports.every(count => count > 0), `reports ${reports}`);
    await shutdown(server);
    assertEqual(dropped(), 2, 'dropped');
});

test('overflow/coalesce-flood', async () => {
    // The UI flood: 10000 progress commands into a mailbox of 4. The
    // queue stays within its capacity and the handler ends on the newest
    // value; handled plus dropped is everything sent.
    const count = 10000;
    const {handler, server, dispatcher, dropped} =
        startFlow({capacity: 4, overflow: Spark.OverflowPolicy.COALESCE});
    let maxPending = 0;
    for (let i = 0; i < count; i++) {
        assert(dispatcher.send_command('progress', new GLib.Variant('i', i), null));
        maxPending = Math.max(maxPending, server.pending);
    }
    assert(await dispatcher.send_command_async('done', null, null));
    await waitFor(() => handler.log.length + dropped() === count + 1, 'handled and dropped');
    assertEqual(maxPending, 4, 'max pending');
    // Nothing ran while the loop sent: each command replaced the newest
    // queued one, so the first three and the newest are left.
    assertEqual(handler.log, ['progress:0', 'progress:1', 'progress:2', `progress:${count - 1}`, 'done'], 'handled');
    await shutdown(server);
});

test('overflow/drop-newest-request', async () => {
    const {handler, server, dispatcher, dropped} =
        startFlow({capacity: 1, overflow: Spark.OverflowPolicy.DROP_NEWEST});
    assert(dispatcher.send_command('c', new GLib.Variant('i', 1), null));
    assert(dispatcher.send_command('c', new GLib.Variant('i', 2), null));   // dropped
    const error = await assertRejects(ChannelError, ChannelError.DROPPED,
        dispatcher.request_async('r', null, null, null));
    assert(error.message.includes('drop-newest'), error.message);
    await waitFor(() => dropped() === 1, 'messages-dropped');
    assertEqual(handler.log, ['c:1'], 'handled');
    await shutdown(server);
});

// Rate limits and cancel_all(). A rate limit is the dispatcher's own: what
// waits for a token waits on the sender's side, so the module sees only
// what got through. Time is checked only as a loose lower bound where
// waiting is the point; everything else is counts and order.

function rateLimited(server, messagesPerSecond, burst) {
    const dispatcher = server.create_dispatcher();
    dispatcher.rate_limit = messagesPerSecond;
    dispatcher.set_rate_burst(burst);
    return dispatcher;
}

test('rate-limit/properties-and-try', async () => {
    const {handler, server} = startFlow();
    const dispatcher = server.create_dispatcher();
    assertEqual([dispatcher.rate_limit, dispatcher.get_rate_burst()], [0, 0], 'defaults');
    const notified = [];
    dispatcher.connect('notify::rate-limit', () => notified.push(dispatcher.rate_limit));
    dispatcher.set_rate_limit(1);
    dispatcher.rate_limit = 1;
    dispatcher.rate_burst = 3;
    assertEqual(notified, [1], 'notify::rate-limit');
    const derived = dispatcher.with_priority(Spark.Priority.HIGH);
    assertEqual([derived.rate_limit, derived.rate_burst], [1, 3], 'with_priority copies the limit');

    // The burst goes at once; the next try fails fast, naming the limit.
    for (let i = 0; i < 3; i++)
        assert(dispatcher.try_send_command('c', new GLib.Variant('i', i)));
    const error = assertThrows(ChannelError, ChannelError.FULL,
        () => dispatcher.try_send_command('c', new GLib.Variant('i', 3)));
    assert(error.message.includes('rate limit (1 messages per second)'), error.message);
    // A blocking send that would wait fails with its cancellable instead.
    const cancellable = new Gio.Cancellable();
    cancellable.cancel();
    assertThrows(Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED,
        () => dispatcher.send_command('c', new GLib.Variant('i', 4), cancellable));
    // Another dispatcher of the server is not held back.
    assert(server.create_dispatcher().try_send_command('other', null));
    assertEqual(server.pending, 4, 'pending');

    await waitFor(() => handler.log.length === 4, 'the commands');
    await settle();
    assertEqual(handler.log, ['c:0', 'c:1', 'c:2', 'other'], 'handled');
    await shutdown(server);
});

test('rate-limit/blocking-send-waits', async () => {
    // On the main thread, with the module on the main context too: the
    // wait is for a token, not for the module, so it cannot deadlock. At
    // 50 a second with a burst of 2, six commands take at least four
    // intervals of 20 ms.
    const {handler, server} = startFlow();
    const dispatcher = rateLimited(server, 50, 2);
    const start = GLib.get_monotonic_time();
    for (let i = 0; i < 6; i++)
        assert(dispatcher.send_command('c', new GLib.Variant('i', i), null));
    const elapsed = GLib.get_monotonic_time() - start;
    assert(elapsed >= 4 * 20000 - 5000, `elapsed ${elapsed} us`);
    assertEqual(server.pending, 6, 'pending');
    await waitFor(() => handler.log.length === 6, 'the commands');
    assertEqual(handler.log, [0, 1, 2, 3, 4, 5].map(i => `c:${i}`), 'handled');
    await shutdown(server);
});

test('rate-limit/async-waits-and-completes', async () => {
    const {handler, server} = startFlow();
    const dispatcher = rateLimited(server, 20, 2);
    const start = GLib.get_monotonic_time();
    const requests = [0, 1, 2, 3, 4].map(i => dispatcher.request_async(`r${i}`, null, null, null));
    const cancellable = new Gio.Cancellable();
    const gone = assertRejects(Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED,
        dispatcher.request_async('gone', null, null, cancellable));
    const sent = dispatcher.send_command_async('c', null, null);
    // Nothing has run yet: the burst was sent, the rest wait for tokens.
    assertEqual(server.pending, 2, 'pending');
    cancellable.cancel();

    assertEqual((await Promise.all(requests)).map(r => r.unpack()), ['r0', 'r1', 'r2', 'r3', 'r4'], 'replies');
    await gone;
    assert(await sent === true, 'send_command_async');
    // Four after the burst: four intervals of 50 ms at least.
    const elapsed = GLib.get_monotonic_time() - start;
    assert(elapsed >= 4 * 50000 - 10000, `elapsed ${elapsed} us`);
    await waitFor(() => handler.log.length === 6, 'the messages');
    await settle();
    // In the order sent, those that waited for a token too (see
    // docs/flow-control.md); the cancelled one never reached the module.
    assertEqual(handler.log, ['r0', 'r1', 'r2', 'r3', 'r4', 'c'], 'handled in order');
    await shutdown(server);
});

test('cancel-all/queued', async () => {
    // The module on the main context handles nothing until this code
    // yields: everything below is queued when cancel_all() runs.
    const {handler, server} = startFlow();
    const mine = server.create_dispatcher();
    const mineHigh = mine.with_priority(Spark.Priority.HIGH);
    const other = server.create_dispatcher();
    // Each rejection is expected from the start (GJS reports a rejection
    // nobody handles yet).
    const cancelled = [0, 1, 2, 3].map(i => assertRejects(Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED,
        (i % 2 ? mineHigh : mine).request_async('mine', null, null, null)));
    const full = requestFull(mine, 'mine-full');
    const theirs = other.request_async('other', null, null, null);
    assert(mine.send_command('cmd', null, null));
    assertEqual(server.pending, 7, 'pending');

    mine.cancel_all();
    for (const error of await Promise.all(cancelled))
        assert(error.message.includes('cancel_all'), error.message);
    assertError((await full).error, Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED);
    assertEqual((await theirs).unpack(), 'other', 'the other dispatcher\'s reply');
    await waitFor(() => handler.log.length === 2, 'the command');
    await settle();
    assertEqual(handler.log, ['other', 'cmd'], 'handled');
    await shutdown(server);
});

test('cancel-all/taken-batch', async () => {
    // "d0" calls cancel_all() from inside the batch the server took, ahead
    // of the requests in that batch.
    const {handler, server, dispatcher} = startFlow();
    handler.cancel = server.create_dispatcher();
    assert(dispatcher.send_command('d0', null, null));
    const taken = [0, 1, 2].map(() => assertRejects(Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED,
        handler.cancel.request_async('taken', null, null, null)));
    assert(dispatcher.send_command('last', null, null));
    await Promise.all(taken);
    await waitFor(() => handler.log.length === 2, 'the commands');
    await settle();
    assertEqual(handler.log, ['d0', 'last'], 'handled');
    handler.cancel = null;
    await shutdown(server);
});

test('cancel-all/server-in-thread', async () => {
    // A server on a thread of its own needs a handler that is not
    // JavaScript: a Spark.Router that forwards to the JavaScript module on
    // the main context. It holds its invocation for "first" until the
    // module replies, which cannot happen before this code yields; so
    // every request of `mine` is queued or in its batch, not begun.
    const js = startFlow();
    const router = new Spark.Router();
    assert(router.add_dispatcher('*', js.dispatcher, null, null));
    const server = new Spark.ModuleServer({handler: router, name: 'cancel-all'});
    server.start_in_thread();
    const mine = server.create_dispatcher();
    const other = server.create_dispatcher();

    const first = other.request_async('first', null, null, null);
    const cancelled = [0, 1, 2].map(i => assertRejects(Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED,
        mine.request_async(`mine${i}`, null, null, null)));
    const second = other.request_async('second', null, null, null);
    mine.cancel_all();

    await Promise.all(cancelled);
    assertEqual([(await first).unpack(), (await second).unpack()], ['first', 'second'], 'the other replies');
    assertEqual(js.handler.log, ['first', 'second'], 'handled');
    await shutdown(server);
    await shutdown(js.server);
});

// Routers: a Spark.Router in front of JavaScript handlers. The router is a
// C type and can run anywhere, but the JavaScript handlers it calls can
// only run on the main thread: serve it on the main context.

// Replies with its label and the request's name, so a test sees which
// route took a message; 'sum' adds its parameters.
const Labelled = GObject.registerClass({
    Implements: [Spark.Handler],
}, class Labelled extends GObject.Object {
    constructor(label) {
        super();
        this.label = label;
        this.seen = [];
    }

    vfunc_handle_request(name, parameters) {
        this.seen.push(['request', name, parameters ? parameters.recursiveUnpack() : null]);
        if (name === 'sum')
            return new GLib.Variant('i', parameters.deepUnpack().reduce((a, b) => a + b, 0));
        return new GLib.Variant('s', `${this.label}:${name}`);
    }

    vfunc_handle_command(name, parameters) {
        this.seen.push(['command', name, parameters ? parameters.recursiveUnpack() : null]);
        return true;
    }
});

test('router/js-handlers-on-main-context', async () => {
    const exact = new Labelled('exact'), prefix = new Labelled('prefix'), typed = new Labelled('typed');
    const later = new AsyncKeyValue();
    const router = new Spark.Router();
    assert(router instanceof Spark.Handler, 'a router is a handler');
    assert(router.add_handler('kv.get', exact, null, null));
    assert(router.add_handler('kv.*', prefix, null, null));
    assert(router.add_handler('GetData', later, null, new GLib.VariantType('au')));
    assert(router.add_handler('sum', typed, new GLib.VariantType('(ii)'), null));
    assert(router.add_handler('count', typed, null, new GLib.VariantType('i')));   // replies 's'
    assertEqual(router.list_patterns(), ['GetData', 'count', 'kv.*', 'kv.get', 'sum']);
    const server = new Spark.ModuleServer({handler: router, name: 'router'});
    const failures = [];
    server.connect('command-failed', (_srv, name, _params, error) => failures.push([name, error]));
    server.start(null);   // the main context: where JavaScript runs
    const dispatcher = server.create_dispatcher();

    // An exact name wins over a prefix.
    assertEqual((await dispatcher.request_async('kv.get', null, null, null)).unpack(), 'exact:kv.get');
    assertEqual((await dispatcher.request_async('kv.set', null, new GLib.VariantType('s'), null)).unpack(),
        'prefix:kv.set');
    assertEqual((await dispatcher.request_async('kv.get.all', null, null, null)).unpack(), 'prefix:kv.get.all');
    // A handler that replies later, from a Promise, through the invocation.
    const data = await dispatcher.request_async('GetData', new GLib.Variant('(s)', ['user123']), null, null);
    assertEqual(data.deepUnpack(), [1, 2]);
    await assertRejects(Gio.IOErrorEnum, Gio.IOErrorEnum.NOT_FOUND,
        dispatcher.request_async('GetData', new GLib.Variant('(s)', ['nobody']), null, null));

    // Declared types.
    assertEqual((await dispatcher.request_async('sum', new GLib.Variant('(ii)', [2, 3]),
        new GLib.VariantType('i'), null)).unpack(), 5);
    let error = await assertRejects(ChannelError, ChannelError.TYPE_MISMATCH,
        dispatcher.request_async('sum', new GLib.Variant('(ss)', ['2', '3']), null, null));
    for (const part of ['Route “sum”', '“(ss)”', '“(ii)”'])
        assert(error.message.includes(part), error.message);
    error = await assertRejects(ChannelError, ChannelError.TYPE_MISMATCH,
        dispatcher.request_async('count', null, null, null));
    for (const part of ['Route “count”', '“s”', '“i”'])
        assert(error.message.includes(part), error.message);
    const {error: fullError} = await requestFull(dispatcher, 'sum');
    assertError(fullError, ChannelError, ChannelError.TYPE_MISMATCH, 'Route “sum”');

    // Unrouted names.
    error = await assertRejects(ChannelError, ChannelError.NOT_SUPPORTED,
        dispatcher.request_async('weather.today', null, null, null));
    assert(error.message.includes('“weather.today”'), error.message);

    // Commands.
    assert(dispatcher.send_command('kv.flush', new GLib.Variant('s', 'now'), null));
    assert(await dispatcher.send_command_async('kv.get', null, null));
    assert(dispatcher.send_command('log', null, null));
    assert(dispatcher.send_command('sum', new GLib.Variant('s', 'not a pair'), null));
    await waitFor(() => failures.length === 2, 'command-failed');
    assertEqual(failures.map(f => f[0]), ['log', 'sum']);
    assertError(failures[0][1], ChannelError, ChannelError.NOT_SUPPORTED, '“log”');
    assertError(failures[1][1], ChannelError, ChannelError.TYPE_MISMATCH, 'Route “sum”');

    // Removed while serving: the next best route takes the name.
    assert(router.remove('kv.get'));
    assert(!router.remove('kv.get'));
    assertEqual((await dispatcher.request_async('kv.get', null, null, null)).unpack(), 'prefix:kv.get');

    assertEqual(exact.seen, [['request', 'kv.get', null], ['command', 'kv.get', null]]);
    assertEqual(prefix.seen, [['request', 'kv.set', null], ['request', 'kv.get.all', null],
        ['command', 'kv.flush', 'now'], ['request', 'kv.get', null]]);
    assertEqual(typed.seen, [['request', 'sum', [2, 3]], ['request', 'count', null]]);
    await shutdown(server);
});

test('router/dispatcher-route-to-main-context', async () => {
    // A router routes to another JavaScript module on a server of its own,
    // on the main context too.
    const module = new AsyncKeyValue();
    const moduleServer = new Spark.ModuleServer({handler: module, name: 'kv'});
    moduleServer.start(null);
    const router = new Spark.Router();
    assert(router.add_dispatcher('*', moduleServer.create_dispatcher(), null, null));
    assert(router.add_dispatcher('GetData', moduleServer.create_dispatcher(), null, new GLib.VariantType('au')));
    const server = new Spark.ModuleServer({handler: router, max_invocations: 4});
    server.start(null);
    const dispatcher = server.create_dispatcher();

    const [updated, other] = await Promise.all([
        dispatcher.request_async('UpdateData', new GLib.Variant('(su)', ['user123', 3]), new GLib.VariantType('b'), null),
        dispatcher.request_async('UpdateData', new GLib.Variant('(su)', ['user456', 9]), new GLib.VariantType('b'), null),
    ]);
    assert(updated.unpack() && other.unpack());
    const data = await dispatcher.request_async('GetData', new GLib.Variant('(s)', ['user123']), null, null);
    assertEqual(data.deepUnpack(), [1, 2, 3]);
    const error = await assertRejects(Gio.IOErrorEnum, Gio.IOErrorEnum.NOT_FOUND,
        dispatcher.request_async('GetData', new GLib.Variant('(s)', ['nobody']), null, null));
    assertEqual(error.message, 'No data for “nobody”');

    await shutdown(server);
    await shutdown(moduleServer);
});

test('router/js-handler-refused-in-thread', async () => {
    // A router on a thread of its own cannot call a JavaScript handler:
    // NOT_SUPPORTED saying why, and the handler never runs (no GJS critical).
    const handler = new Labelled('js');
    const router = new Spark.Router();
    assert(router.add_handler('js.*', handler, null, null));
    const server = new Spark.ModuleServer({handler: router, name: 'router-thread'});
    const failures = [];
    server.connect('command-failed', (_srv, name, _params, error) => failures.push([name, error]));
    server.start_in_thread();   // the router is C: a thread is fine
    const dispatcher = server.create_dispatcher();

    let error = await assertRejects(ChannelError, ChannelError.NOT_SUPPORTED,
        dispatcher.request_async('js.hello', null, null, null));
    for (const part of ['Route “js.*”', 'JavaScript', '“js.hello”'])
        assert(error.message.includes(part), error.message);
    const {error: fullError} = await requestFull(dispatcher, 'js.hello');
    assertError(fullError, ChannelError, ChannelError.NOT_SUPPORTED, 'JavaScript');
    // request_sync is fine here: the router's thread serves it.
    error = assertThrows(ChannelError, ChannelError.NOT_SUPPORTED,
        () => dispatcher.request_sync('js.sync', null, null, null));
    assert(error.message.includes('JavaScript'), error.message);
    assert(dispatcher.send_command('js.log', null, null));
    await waitFor(() => failures.length === 1, 'command-failed');
    assertEqual(failures[0][0], 'js.log');
    assertError(failures[0][1], ChannelError, ChannelError.NOT_SUPPORTED, 'JavaScript');
    assertEqual(handler.seen, []);

    // The way out: the JavaScript handler on a server of the main context,
    // behind a dispatcher route.
    const jsServer = new Spark.ModuleServer({handler, name: 'js'});
    jsServer.start(null);
    assert(router.remove('js.*'));
    assert(router.add_dispatcher('js.*', jsServer.create_dispatcher(), null, new GLib.VariantType('s')));
    assertEqual((await dispatcher.request_async('js.hello', null, null, null)).unpack(), 'js:js.hello');
    assert(dispatcher.send_command('js.log', null, null));
    await dispatcher.request_async('js.after', null, null, null);
    assertEqual(handler.seen, [['request', 'js.hello', null], ['command', 'js.log', null], ['request', 'js.after', null]]);
    assertEqual(failures.length, 1);

    await shutdown(server);
    await shutdown(jsServer);
});

// Worker pools -----------------------------------------------------------------

// Declares itself concurrent: GJS still cannot run it off the main thread.
const DeclaredConcurrent = GObject.registerClass({
    Implements: [Spark.Handler],
}, class DeclaredConcurrent extends Recorder {
    vfunc_get_flags() {
        return Spark.HandlerFlags.CONCURRENT;
    }
});

test('metrics/notify-and-snapshot', async () => {
    // A JS module on the main context: its metrics are notified here, at
    // most once per metrics-interval, and the snapshot agrees.
    const server = new Spark.ModuleServer({handler: new Recorder(), name: 'js-metrics', metrics_interval: 20});
    const seen = [];
    server.connect('notify::handled', () => seen.push(server.handled));
    let label = '';
    server.bind_property_full('handled', server, 'name', GObject.BindingFlags.DEFAULT,
        (binding, value) => [true, `${value} handled`], null);
    server.connect('notify::name', () => (label = server.name));
    assert(server.start(null));
    const dispatcher = server.create_dispatcher();
    for (let i = 0; i < 10; i++)
        assertEqual((await dispatcher.request_async('Int', null, null, null)).unpack(), 42);
    await assertRejects(Gio.IOErrorEnum, Gio.IOErrorEnum.NOT_FOUND, dispatcher.request_async('Fail', null, null, null));
    // Notified, here, with the final value.
    await waitFor(() => seen[seen.length - 1] === 11, 'notify::handled with 11');
    assertEqual([server.handled, server.failed], [11, 1], 'the counters');
    await waitFor(() => label === '11 handled', 'the bound name');
    const metrics = server.metrics.recursiveUnpack();
    assertEqual([metrics.handled, metrics.failed, metrics.workers], [11, 1, 1], 'snapshot');
    assertEqual(server.get_metrics().recursiveUnpack().handled, 11);
    await shutdown(server);
});

test('pool/properties', () => {
    const server = new Spark.ModuleServer({handler: new Recorder()});
    assertEqual([server.workers, server.get_workers()], [1, 1], 'default workers');
    assertEqual(server.ordering, Spark.Ordering.NONE, 'default ordering');
    const notified = [];
    server.connect('notify', (_srv, pspec) => notified.push(pspec.name));
    server.workers = 4;
    server.set_workers(4);   // no change: no notify
    server.ordering = Spark.Ordering.KEY;
    server.set_ordering(Spark.Ordering.NAME);
    assertEqual(notified, ['workers', 'ordering', 'ordering'], 'notifications');
    assertEqual([server.get_workers(), server.get_ordering()], [4, Spark.Ordering.NAME]);
    const built = new Spark.ModuleServer({handler: new Recorder(), workers: 2, ordering: Spark.Ordering.KEY});
    assertEqual([built.workers, built.ordering], [2, Spark.Ordering.KEY]);
    assertEqual([Spark.Ordering.NONE, Spark.Ordering.NAME, Spark.Ordering.KEY], [0, 1, 2]);
    assertEqual([Spark.HandlerFlags.NONE, Spark.HandlerFlags.CONCURRENT], [0, 1]);
    // The vfunc is reachable from JavaScript, and the default declares nothing.
    assertEqual(new DeclaredConcurrent().get_flags(), Spark.HandlerFlags.CONCURRENT);
    assertEqual(new Recorder().get_flags(), Spark.HandlerFlags.NONE);
    const router = new Spark.Router();
    assert(!router.get_concurrent(), 'a router is not concurrent by default');
    assertEqual(router.get_flags(), Spark.HandlerFlags.NONE);
    router.set_concurrent(true);
    assert(router.get_concurrent(), 'set_concurrent(true)');
    assertEqual(router.get_flags(), Spark.HandlerFlags.CONCURRENT);
});

test('pool/js-handler-refused', async () => {
    // Whatever a JavaScript handler declares, a pool cannot call it: both
    // ways of starting fail with NOT_SUPPORTED, saying why, and do not
    // count as starts.
    for (const handler of [new Recorder(), new DeclaredConcurrent()]) {
        const server = new Spark.ModuleServer({handler, name: 'js-pool', workers: 2});
        let error = assertThrows(ChannelError, ChannelError.NOT_SUPPORTED, () => server.start_in_thread());
        assert(error.message.includes('JavaScript'), error.message);
        error = assertThrows(ChannelError, ChannelError.NOT_SUPPORTED, () => server.start(null));
        // Refused as JavaScript, not pointed at start_in_thread().
        for (const part of ['JavaScript', '2 workers', 'set workers to 1'])
            assert(error.message.includes(part), error.message);
        assert(!server.running, 'a refused start is not a start');

        // One worker on the main context works.
        server.workers = 1;
        assert(server.start(null));
        const reply = await server.create_dispatcher().request_async('Int', null, null, null);
        assertEqual(reply.unpack(), 42);
        await shutdown(server);
    }
});

test('pool/concurrent-router-with-dispatcher-routes', async () => {
    // A concurrent router (C) on a pool of two workers, ordered by key, in
    // front of a JavaScript module on the main context: routes to JS
    // handlers are refused, dispatcher routes work; each key's commands
    // reach the module in order; a broadcast reaches it once per worker.
    const module = new Recorder();
    const moduleServer = new Spark.ModuleServer({handler: module, name: 'module'});
    moduleServer.start(null);
    const router = new Spark.Router();
    router.set_concurrent(true);
    const error = assertThrows(ChannelError, ChannelError.NOT_SUPPORTED,
        () => router.add_handler('js.*', new DeclaredConcurrent(), null, null));
    assert(error.message.includes('“js.*”'), error.message);
    assertEqual(router.list_patterns(), []);
    assert(router.add_dispatcher('*', moduleServer.create_dispatcher(), null, null));
    const server = new Spark.ModuleServer({
        handler: router, name: 'router-pool', workers: 2, ordering: Spark.Ordering.KEY, max_invocations: 4,
    });
    server.start_in_thread();
    const dispatcher = server.create_dispatcher();

    const replies = await Promise.all([0, 1, 2, 3].map(i =>
        dispatcher.request_async('Echo', new GLib.Variant('(su)', [`user${i % 2}`, i]), null, null)));
    assertEqual(replies.map(r => r.deepUnpack()), [['user0', 0], ['user1', 1], ['user0', 2], ['user1', 3]]);
    for (let seq = 0; seq < 10; seq++) {
        for (const key of ['alice', 'bob'])
            assert(dispatcher.send_command('Append', new GLib.Variant('(su)', [key, seq]), null));
    }
    assert(dispatcher.broadcast_command('Reload', null));
    await shutdown(server);   // DRAIN: every message has been forwarded
    await shutdown(moduleServer);

    const commands = module.seen.filter(([kind]) => kind === 'command');
    for (const key of ['alice', 'bob']) {
        assertEqual(commands.filter(([, name, p]) => name === 'Append' && p[0] === key).map(([, , p]) => p[1]),
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], `${key}'s commands`);
    }
    assertEqual(commands.filter(([, name]) => name === 'Reload').length, 2, 'a copy from each worker');
});

test('introspection', () => {
    assertEqual(GLib.quark_to_string(ChannelError.quark()), 'spark-channel-error-quark');
    assertEqual([ChannelError.CLOSED, ChannelError.NO_REPLY, ChannelError.TYPE_MISMATCH,
        ChannelError.FULL, ChannelError.TIMED_OUT, ChannelError.WOULD_DEADLOCK,
        ChannelError.NOT_SUPPORTED, ChannelError.ALREADY_STARTED, ChannelError.DROPPED],
    [0, 1, 2, 3, 4, 5, 6, 7, 8]);
    assertEqual([Spark.ShutdownMode.DRAIN, Spark.ShutdownMode.ABORT], [0, 1]);
    assertEqual([Spark.Priority.DEFAULT, Spark.Priority.HIGH, Spark.Priority.LOW], [0, 1, 2]);
    assertEqual([Spark.OverflowPolicy.WAIT, Spark.OverflowPolicy.FAIL, Spark.OverflowPolicy.DROP_NEWEST,
        Spark.OverflowPolicy.DROP_OLDEST, Spark.OverflowPolicy.COALESCE], [0, 1, 2, 3, 4]);
    // C only, skipped for introspection.
    assert(Spark.func_handler_new === undefined, 'func_handler_new is C only');
    assert(Spark.Invocation.prototype.take_error === undefined, 'take_error is C only');
});

// Runner ---------------------------------------------------------------------

async function runTests() {
    print(`1..${tests.length}`);
    let failed = 0;
    for (const [index, [name, func]] of tests.entries()) {
        try {
            // eslint-disable-next-line no-await-in-loop
            await Promise.race([func(), sleep(WATCHDOG_MS * 2).then(() => {
                throw new Error('the test did not finish');
            })]);
            print(`ok ${index + 1} ${name}`);
        } catch (error) {
            failed++;
            print(`not ok ${index + 1} ${name}`);
            for (const line of `${error}\n${error.stack ?? ''}`.split('\n'))
                print(`# ${line}`);
        }
    }
    return failed;
}

const loop = new GLib.MainLoop(null, false);
let status = 1;
runTests().then(failed => (status = failed ? 1 : 0), error => logError(error)).finally(() => loop.quit());
loop.run();
System.exit(status);
