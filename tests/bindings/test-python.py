#!/usr/bin/python3
# test-python.py: spark-channel from Python, through GObject-Introspection
#
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Everything a C program does, from Python (PyGObject 3.42): handlers on
# their own thread and on a main context, replies that come later through
# Spark.Invocation, sync, async and request_full requests, commands and the
# command-failed signal, shutdown with a token, message priorities, the
# overflow policies of a bounded mailbox and the messages-dropped signal,
# rate limits and cancel_all(), a Spark.Router in front of Python handlers
# and other servers, Python handlers declared concurrent on a pool of
# workers (ordering, broadcast), and every error arriving as a GLib.Error
# with the right domain and code.
#
# PyGObject 3.42 has no awaitables: async calls take callbacks and the
# tests drive the main context until a result has arrived. An exception
# raised inside a GLib callback is printed and swallowed by PyGObject, so
# callbacks only record what they got; the asserts are in the test bodies.
#
# Prints TAP. Run with Debian's /usr/bin/python3 (the one with gi), with
# GI_TYPELIB_PATH and LD_LIBRARY_PATH pointing at the build directory.

import contextlib
import io
import sys
import threading
import time
import traceback

import gi

gi.require_version('Spark', '1.0')
gi.require_version('Gio', '2.0')
from gi.repository import GLib, GObject, Gio, Spark  # noqa: E402

SPARK_ERROR = Spark.ChannelError.quark()
IO_ERROR = Gio.io_error_quark()
MAIN_THREAD = threading.get_ident()
TIMEOUT_MS = 10000


# Helpers ---------------------------------------------------------------------

def wait_for(predicate, timeout_ms=TIMEOUT_MS):
    """Iterates the global default context until predicate() is true.

    Other threads that change what predicate() looks at wake the context
    with GLib.idle_add() or through the library's own callbacks."""
    context = GLib.MainContext.default()
    expired = []

    def on_timeout():
        expired.append(True)
        return GLib.SOURCE_REMOVE

    watchdog = GLib.timeout_add(timeout_ms, on_timeout)
    try:
        while not predicate() and not expired:
            context.iteration(True)
    finally:
        if not expired:
            GLib.source_remove(watchdog)
    assert predicate(), 'timed out waiting for %r' % predicate


def wake_main():
    """Wakes the main thread's wait_for() from another thread."""
    GLib.idle_add(lambda: GLib.SOURCE_REMOVE)


def assert_error(error, domain, code, message_part=None):
    assert isinstance(error, GLib.Error), 'expected a GLib.Error, got %r' % (error,)
    assert error.matches(domain, code), \
        'expected %s %d, got %s %d: %s' % (GLib.quark_to_string(domain), code,
                                          error.domain, error.code, error.message)
    if message_part is not None:
        assert message_part in error.message, \
            '%r not in %r' % (message_part, error.message)


def expect_error(domain, code, func, *args):
    try:
        result = func(*args)
    except GLib.Error as error:
        assert_error(error, domain, code)
        return error
    raise AssertionError('expected %s %d, got the result %r'
                         % (GLib.quark_to_string(domain), code, result))


def shutdown(server, mode=Spark.ShutdownMode.DRAIN):
    """Stops server and waits until it has (its thread joined)."""
    done = []
    server.shutdown_async(mode, None, lambda s, res: done.append(s.shutdown_finish(res)))
    wait_for(lambda: done)
    assert done == [True]
    assert not server.props.running


def request_async(dispatcher, name, parameters=None, reply_type=None, cancellable=None):
    """Sends a request; returns a list that receives (reply, error)."""
    outcome = []

    def on_reply(source, result):
        try:
            outcome.append((source.request_finish(result), None))
        except GLib.Error as error:
            outcome.append((None, error))

    dispatcher.request_async(name, parameters, reply_type, cancellable, on_reply)
    return outcome


def finish_request(outcome):
    wait_for(lambda: outcome)
    assert len(outcome) == 1
    return outcome[0]


@contextlib.contextmanager
def captured_stderr():
    """PyGObject prints the traceback of an exception that is not a
    GLib.Error raised in a vfunc: keep it out of the log, and check it."""
    saved = sys.stderr
    sys.stderr = captured = io.StringIO()
    try:
        yield captured
    finally:
        sys.stderr = saved


def variant_type(type_string):
    return GLib.VariantType.new(type_string)


# Handlers ----------------------------------------------------------------------

class Recorder(GObject.Object, Spark.Handler):
    """A sync handler: requests and commands, recording what it saw and on
    which thread."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.threads = set()
        self.dispatcher = None

    def do_handle_request(self, name, parameters, cancellable):
        self.threads.add(threading.get_ident())
        self.seen.append(('request', name, None if parameters is None else parameters.unpack()))
        if name == 'Echo':
            return parameters if parameters is not None else GLib.Variant('s', 'no parameters')
        if name == 'Int':
            return GLib.Variant('i', 42)
        if name == 'Fail':
            raise GLib.Error.new_literal(IO_ERROR, 'No data for “user123”', Gio.IOErrorEnum.NOT_FOUND)
        if name == 'ReturnNone':
            return None
        if name == 'RaiseValueError':
            raise ValueError('not a GLib.Error')
        if name == 'WrongReturnType':
            return 7
        if name == 'CallSelf':
            # A blocking call on the server's own thread.
            try:
                self.dispatcher.request_sync('Int', None, None, None)
            except GLib.Error as error:
                return GLib.Variant('(sd)', (error.domain, error.code))
            return GLib.Variant('(sd)', ('', -1))
        raise GLib.Error.new_literal(SPARK_ERROR, '“%s” is not a request of this module' % name,
                                     Spark.ChannelError.NOT_SUPPORTED)

    def do_handle_command(self, name, parameters, cancellable):
        self.threads.add(threading.get_ident())
        self.seen.append(('command', name, None if parameters is None else parameters.unpack()))
        if name == 'FailCommand':
            raise GLib.Error.new_literal(IO_ERROR, 'The event log is full', Gio.IOErrorEnum.NO_SPACE)
        if name == 'RaiseCommand':
            raise RuntimeError('not a GLib.Error')
        return True


class RequestsOnly(GObject.Object, Spark.Handler):
    """Implements requests only: commands are NOT_SUPPORTED."""

    def do_handle_request(self, name, parameters, cancellable):
        return GLib.Variant('s', name)


class CommandsOnly(GObject.Object, Spark.Handler):
    """Implements commands only: requests are NOT_SUPPORTED."""

    def do_handle_command(self, name, parameters, cancellable):
        return True


class Later(GObject.Object, Spark.Handler):
    """Replies later: keeps each Spark.Invocation in held (or hands it to
    on_invocation) and lets the test complete it."""

    def __init__(self, on_invocation=None):
        super().__init__()
        self.held = []
        self.names = []
        self.threads = set()
        self.on_invocation = on_invocation

    def do_handle_invocation(self, invocation):
        self.threads.add(threading.get_ident())
        self.names.append(invocation.get_name())
        if self.on_invocation is not None:
            self.on_invocation(invocation)
        else:
            self.held.append(invocation)
        wake_main()


# Tests -------------------------------------------------------------------------

TESTS = []


def test(func):
    TESTS.append(func)
    return func


@test
def thread_handler_request_sync():
    """A Python handler on its own thread; request_sync from the main thread."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    server.props.name = 'py-thread'
    server.start_in_thread()
    assert server.props.running
    assert server.props.handler == handler
    dispatcher = server.create_dispatcher()

    reply = dispatcher.request_sync('Echo', GLib.Variant('(su)', ('user123', 7)), None, None)
    assert reply.unpack() == ('user123', 7)
    reply = dispatcher.request_sync('Echo', None, variant_type('s'), None)
    assert reply.unpack() == 'no parameters'
    assert handler.seen == [('request', 'Echo', ('user123', 7)), ('request', 'Echo', None)]
    assert MAIN_THREAD not in handler.threads and len(handler.threads) == 1

    shutdown(server)


@test
def thread_handler_request_async():
    """request_async's callback runs on the caller's context, not inside the call."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    server.start_in_thread()
    dispatcher = server.create_dispatcher()

    outcomes = [request_async(dispatcher, 'Echo', GLib.Variant('u', i)) for i in range(20)]
    assert not any(outcomes)
    for i, outcome in enumerate(outcomes):
        reply, error = finish_request(outcome)
        assert error is None and reply.unpack() == i
    # One at a time, in mailbox order.
    assert [params for (_, _, params) in handler.seen] == list(range(20))

    shutdown(server)


@test
def kept_async_results_stay_valid():
    """Results a callback keeps (or marks) are finished later, after other
    requests reused the results nobody kept; one with a weak reference goes
    away when its callback returns."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    server.start_in_thread()
    dispatcher = server.create_dispatcher()
    kept = []
    marked = []
    finished = []
    gone = []

    def keep(source, result):
        kept.append(result)

    def mark(source, result):
        # An attribute on the wrapper ties the wrapper to the object.
        result.mark = len(marked)
        marked.append(result.mark)
        finished.append(source.request_finish(result).unpack())

    def watch(source, result):
        result.weak_ref(lambda: gone.append(True))
        finished.append(source.request_finish(result).unpack())

    for i in range(5):
        dispatcher.request_async('Echo', GLib.Variant('u', i), None, None, keep)
    wait_for(lambda: len(kept) == 5)
    for i in range(5, 10):
        dispatcher.request_async('Echo', GLib.Variant('u', i), None, None, mark)
    dispatcher.request_async('Echo', GLib.Variant('u', 10), None, None, watch)
    wait_for(lambda: len(finished) == 6)
    assert finished == list(range(5, 11)), finished
    assert marked == list(range(5))
    assert gone == [True]

    assert len(set(id(result) for result in kept)) == 5
    assert [dispatcher.request_finish(result).unpack() for result in reversed(kept)] == [4, 3, 2, 1, 0]

    shutdown(server)


@test
def main_context_handler_request_async():
    """A Python handler on the main context, served while the main loop runs."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    server.start(None)
    dispatcher = server.create_dispatcher()

    reply, error = finish_request(request_async(dispatcher, 'Int', None, variant_type('i')))
    assert error is None and reply.unpack() == 42
    assert handler.threads == {MAIN_THREAD}

    shutdown(server)


@test
def main_context_handler_request_sync_from_python_thread():
    """A Python thread blocks in request_sync while the main thread serves it."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    server.start(GLib.MainContext.default())
    dispatcher = server.create_dispatcher()
    results = []

    def worker():
        try:
            results.append(dispatcher.request_sync('Echo', GLib.Variant('s', 'from a thread'), None, None))
        except GLib.Error as error:
            results.append(error)
        wake_main()

    thread = threading.Thread(target=worker)
    thread.start()
    wait_for(lambda: results)
    thread.join()
    assert results[0].unpack() == 'from a thread'
    assert handler.threads == {MAIN_THREAD}

    shutdown(server)


@test
def handler_on_context_of_python_thread():
    """start() with a context a Python thread pushed and iterates."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    started = threading.Event()
    errors = []

    def serve():
        context = GLib.MainContext.new()
        context.push_thread_default()
        try:
            server.start(None)   # thread-default: the context just pushed
        except GLib.Error as error:
            errors.append(error)
            started.set()
            return
        started.set()
        while server.props.running:
            context.iteration(True)
        context.pop_thread_default()

    thread = threading.Thread(target=serve)
    thread.start()
    started.wait()
    assert not errors, errors
    dispatcher = server.create_dispatcher()
    assert dispatcher.request_sync('Int', None, None, None).unpack() == 42
    assert len(handler.threads) == 1 and MAIN_THREAD not in handler.threads

    token = Gio.Cancellable()
    dispatcher.send_shutdown(token)
    thread.join()
    assert token.is_cancelled()
    assert not server.props.running


@test
def request_full():
    """request_full with a Python callback and user_data ((scope notified))."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    server.start_in_thread()
    dispatcher = server.create_dispatcher()
    got = []

    dispatcher.request_full('Int', None, None, None,
                            lambda reply, error, data: got.append((reply, error, data)), 'data')
    dispatcher.request_full('Int', None, variant_type('s'), None,
                            lambda reply, error: got.append((reply, error)))
    assert not got
    wait_for(lambda: len(got) == 2)
    reply, error, data = got[0]
    assert error is None and reply.unpack() == 42 and data == 'data'
    reply, error = got[1]
    assert reply is None
    assert_error(error, SPARK_ERROR, Spark.ChannelError.TYPE_MISMATCH, 'has type “i”, expected “s”')

    shutdown(server)


@test
def invocation_reply_later_on_main_context():
    """do_handle_invocation keeps the invocation; a timeout replies later."""
    def later(invocation):
        assert invocation.get_name() == 'Later'
        assert invocation.get_parameters().unpack() == ('user123',)
        assert isinstance(invocation.get_cancellable(), Gio.Cancellable)

        def reply():
            invocation.return_value(GLib.Variant('au', [1, 2, 3]))
            return GLib.SOURCE_REMOVE
        GLib.timeout_add(10, reply)

    handler = Later(later)
    server = Spark.ModuleServer.new(handler)
    server.start(None)
    dispatcher = server.create_dispatcher()

    reply, error = finish_request(request_async(dispatcher, 'Later', GLib.Variant('(s)', ('user123',)),
                                                variant_type('au')))
    assert error is None and reply.unpack() == [1, 2, 3]
    assert handler.threads == {MAIN_THREAD}

    shutdown(server)


@test
def invocation_progress_from_python_thread():
    """A handler thread reports progress, then replies: the requester's
    progress callback sees every report in order, before the reply."""
    def later(invocation):
        def work():
            for i in range(1, 6):
                invocation.send_progress(GLib.Variant('i', i))
            invocation.return_value(GLib.Variant('s', 'done'))
        threading.Thread(target=work).start()

    server = Spark.ModuleServer.new(Later(later))
    server.start_in_thread()
    dispatcher = server.create_dispatcher()
    seen = []
    outcome = {}

    def on_progress(progress, *user_data):
        assert 'reply' not in outcome
        seen.append(progress.unpack())

    def on_done(source, result):
        outcome['reply'] = source.request_finish(result)
        wake_main()

    # PyGObject 3.42 wants the progress function's user data as a tuple
    # (here empty) when a callback follows it; None makes it raise
    # "expected tuple for callback user_data" at each report.
    dispatcher.request_with_progress_async('Long', None, None, None, on_progress, (), on_done)
    wait_for(lambda: 'reply' in outcome)
    assert outcome['reply'].unpack() == 'done'
    assert seen == [1, 2, 3, 4, 5], seen

    shutdown(server)


@test
def invocation_reply_from_python_thread():
    """A handler on its own thread hands its invocation to a Python thread."""
    workers = []

    def later(invocation):
        def work():
            invocation.return_value(GLib.Variant('s', 'done by a worker'))
        worker = threading.Thread(target=work)
        workers.append(worker)
        worker.start()

    handler = Later(later)
    server = Spark.ModuleServer.new(handler)
    server.start_in_thread()
    dispatcher = server.create_dispatcher()

    assert dispatcher.request_sync('Work', None, None, None).unpack() == 'done by a worker'
    reply, error = finish_request(request_async(dispatcher, 'Work'))
    assert error is None and reply.unpack() == 'done by a worker'
    for worker in workers:
        worker.join()

    shutdown(server)


@test
def invocation_errors():
    """return_error_literal and return_gerror reach the requester unchanged;
    a dropped invocation gives NO_REPLY."""
    def later(invocation):
        name = invocation.get_name()
        if name == 'Literal':
            invocation.return_error_literal(IO_ERROR, Gio.IOErrorEnum.PERMISSION_DENIED, 'Not yours')
        elif name == 'GError':
            invocation.return_gerror(GLib.Error.new_literal(SPARK_ERROR, 'Not here',
                                                            Spark.ChannelError.NOT_SUPPORTED))
        # 'Drop': not kept, finalized when this returns

    server = Spark.ModuleServer.new(Later(later))
    server.start_in_thread()
    dispatcher = server.create_dispatcher()

    error = expect_error(IO_ERROR, Gio.IOErrorEnum.PERMISSION_DENIED,
                         dispatcher.request_sync, 'Literal', None, None, None)
    assert error.message == 'Not yours'
    error = expect_error(SPARK_ERROR, Spark.ChannelError.NOT_SUPPORTED,
                         dispatcher.request_sync, 'GError', None, None, None)
    assert error.message == 'Not here'
    expect_error(SPARK_ERROR, Spark.ChannelError.NO_REPLY,
                 dispatcher.request_sync, 'Drop', None, None, None)
    reply, error = finish_request(request_async(dispatcher, 'Drop'))
    assert_error(error, SPARK_ERROR, Spark.ChannelError.NO_REPLY)

    shutdown(server)


@test
def invocation_held_then_dropped():
    """An invocation the handler holds and then lets go of gives NO_REPLY;
    the server waits for it before the next message."""
    handler = Later()
    server = Spark.ModuleServer.new(handler)
    server.start(None)
    dispatcher = server.create_dispatcher()

    first = request_async(dispatcher, 'First')
    second = request_async(dispatcher, 'Second')
    wait_for(lambda: handler.held)
    for _ in range(10):
        GLib.MainContext.default().iteration(False)
    assert [inv.get_name() for inv in handler.held] == ['First']
    assert not first and not second
    handler.held.clear()   # the last reference: finalized now
    reply, error = finish_request(first)
    assert_error(error, SPARK_ERROR, Spark.ChannelError.NO_REPLY)
    wait_for(lambda: handler.held)
    handler.held.pop().return_value(GLib.Variant('b', True))
    reply, error = finish_request(second)
    assert error is None and reply.unpack() is True

    shutdown(server)


@test
def handler_errors_reach_requester_unchanged():
    """A GLib.Error raised by a handler keeps its domain, code and message."""
    server = Spark.ModuleServer.new(Recorder())
    server.start_in_thread()
    dispatcher = server.create_dispatcher()

    error = expect_error(IO_ERROR, Gio.IOErrorEnum.NOT_FOUND,
                         dispatcher.request_sync, 'Fail', None, None, None)
    assert error.message == 'No data for “user123”'
    reply, error = finish_request(request_async(dispatcher, 'Fail'))
    assert_error(error, IO_ERROR, Gio.IOErrorEnum.NOT_FOUND)
    error = expect_error(SPARK_ERROR, Spark.ChannelError.NOT_SUPPORTED,
                         dispatcher.request_sync, 'Unknown', None, None, None)
    assert error.message == '“Unknown” is not a request of this module'

    shutdown(server)


@test
def handler_without_reply_gives_no_reply():
    """None, a wrong return type, and an exception that is not a GLib.Error
    end the request with NO_REPLY, not a hang; the server goes on."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    server.start_in_thread()
    dispatcher = server.create_dispatcher()

    with captured_stderr() as stderr:
        for name in ('ReturnNone', 'RaiseValueError', 'WrongReturnType'):
            expect_error(SPARK_ERROR, Spark.ChannelError.NO_REPLY,
                         dispatcher.request_sync, name, None, None, None)
            reply, error = finish_request(request_async(dispatcher, name))
            assert_error(error, SPARK_ERROR, Spark.ChannelError.NO_REPLY)
    assert 'ValueError: not a GLib.Error' in stderr.getvalue(), stderr.getvalue()
    assert 'Expected GLib.Variant' in stderr.getvalue(), stderr.getvalue()
    assert dispatcher.request_sync('Int', None, None, None).unpack() == 42

    shutdown(server)


@test
def missing_methods_not_supported():
    """A handler without do_handle_request or do_handle_command: NOT_SUPPORTED."""
    failures = []
    server = Spark.ModuleServer.new(CommandsOnly())
    server.start_in_thread()
    dispatcher = server.create_dispatcher()
    error = expect_error(SPARK_ERROR, Spark.ChannelError.NOT_SUPPORTED,
                         dispatcher.request_sync, 'GetData', None, None, None)
    assert 'GetData' in error.message
    assert dispatcher.send_command('LogEvent', None, None)
    shutdown(server)

    server = Spark.ModuleServer.new(RequestsOnly())
    server.connect('command-failed', lambda s, name, params, error: failures.append((name, error)))
    server.start_in_thread()
    dispatcher = server.create_dispatcher()
    assert dispatcher.request_sync('GetData', None, None, None).unpack() == 'GetData'
    assert dispatcher.send_command('LogEvent', None, None)
    wait_for(lambda: failures)
    assert failures[0][0] == 'LogEvent'
    assert_error(failures[0][1], SPARK_ERROR, Spark.ChannelError.NOT_SUPPORTED)
    shutdown(server)


@test
def commands():
    """send_command, try_send_command and send_command_async, in mailbox order."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    server.start_in_thread()
    dispatcher = server.create_dispatcher()
    sent = []

    assert dispatcher.send_command('LogEvent', GLib.Variant('(s)', ('one',)), None)
    assert dispatcher.try_send_command('LogEvent', GLib.Variant('(s)', ('two',)))
    dispatcher.send_command_async('LogEvent', GLib.Variant('(s)', ('three',)), None,
                                  lambda d, res: sent.append(d.send_command_finish(res)))
    assert not sent
    wait_for(lambda: sent)
    assert sent == [True]
    assert dispatcher.send_command('NoParameters', None, None)
    dispatcher.request_sync('Int', None, None, None)
    assert handler.seen == [('command', 'LogEvent', ('one',)),
                            ('command', 'LogEvent', ('two',)),
                            ('command', 'LogEvent', ('three',)),
                            ('command', 'NoParameters', None),
                            ('request', 'Int', None)]

    shutdown(server)


@test
def command_failed_signal():
    """command-failed carries the name, parameters and error, on the owner
    context; a non-GLib.Error exception is reported as NO_REPLY."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    failures = []

    def on_failed(srv, name, parameters, error):
        failures.append((srv, name, parameters, error, threading.get_ident()))

    server.connect('command-failed', on_failed)
    server.start_in_thread()
    dispatcher = server.create_dispatcher()

    with captured_stderr() as stderr:
        assert dispatcher.send_command('FailCommand', GLib.Variant('(s)', ('User logged in',)), None)
        assert dispatcher.send_command('RaiseCommand', None, None)
        assert dispatcher.send_command('LogEvent', None, None)
        wait_for(lambda: len(failures) == 2)
    assert 'RuntimeError: not a GLib.Error' in stderr.getvalue(), stderr.getvalue()
    srv, name, parameters, error, thread = failures[0]
    assert srv == server and name == 'FailCommand' and parameters.unpack() == ('User logged in',)
    assert_error(error, IO_ERROR, Gio.IOErrorEnum.NO_SPACE)
    assert error.message == 'The event log is full'
    assert thread == MAIN_THREAD
    srv, name, parameters, error, thread = failures[1]
    assert name == 'RaiseCommand' and parameters is None
    assert_error(error, SPARK_ERROR, Spark.ChannelError.NO_REPLY)
    # The error never reaches the sender; the next command is handled.
    dispatcher.request_sync('Int', None, None, None)
    assert ('command', 'LogEvent', None) in handler.seen

    shutdown(server)


@test
def shutdown_with_token():
    """send_shutdown handles what is queued, stops the server and cancels the token."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    running = []
    server.connect('notify::running', lambda s, pspec: running.append(s.props.running))
    server.start_in_thread()
    wait_for(lambda: running == [True])
    dispatcher = server.create_dispatcher()
    token = Gio.Cancellable()
    token_threads = []

    def on_cancelled(*args):
        token_threads.append(threading.get_ident())
        wake_main()

    # Gio.Cancellable.connect is g_cancellable_connect(): a GCallback
    # without arguments.
    token.connect(on_cancelled)
    queued = request_async(dispatcher, 'Int')
    assert dispatcher.send_command('LogEvent', None, None)
    assert dispatcher.send_shutdown(token)

    # Closed at once.
    expect_error(SPARK_ERROR, Spark.ChannelError.CLOSED, dispatcher.send_command, 'Late', None, None)
    expect_error(SPARK_ERROR, Spark.ChannelError.CLOSED, dispatcher.send_shutdown, None)
    reply, error = finish_request(request_async(dispatcher, 'Late'))
    assert_error(error, SPARK_ERROR, Spark.ChannelError.CLOSED)

    # Queued before the shutdown: handled.
    reply, error = finish_request(queued)
    assert error is None and reply.unpack() == 42
    wait_for(lambda: token_threads)
    assert token.is_cancelled()
    assert token_threads[0] != MAIN_THREAD   # the server's thread cancels it
    assert ('command', 'LogEvent', None) in handler.seen
    assert ('command', 'Late', None) not in handler.seen

    wait_for(lambda: running == [True, False])
    shutdown(server)   # already stopped: completes at once with True


@test
def shutdown_abort():
    """ABORT: queued requests fail with CLOSED, queued commands are dropped."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    failures = []
    server.connect('command-failed', lambda *args: failures.append(args))
    server.start(None)
    dispatcher = server.create_dispatcher()

    first = request_async(dispatcher, 'Int')
    assert dispatcher.send_command('FailCommand', None, None)
    second = request_async(dispatcher, 'Int')
    assert server.props.pending == 3
    shutdown(server, Spark.ShutdownMode.ABORT)
    for outcome in (first, second):
        reply, error = finish_request(outcome)
        assert_error(error, SPARK_ERROR, Spark.ChannelError.CLOSED)
    assert handler.seen == [] and failures == []


@test
def error_closed():
    """CLOSED: a server never started, or shut down before it started."""
    server = Spark.ModuleServer.new(Recorder())
    dispatcher = server.create_dispatcher()
    expect_error(SPARK_ERROR, Spark.ChannelError.CLOSED,
                 dispatcher.request_sync, 'Int', None, None, None)
    expect_error(SPARK_ERROR, Spark.ChannelError.CLOSED, dispatcher.send_command, 'LogEvent', None, None)
    expect_error(SPARK_ERROR, Spark.ChannelError.CLOSED, dispatcher.try_send_command, 'LogEvent', None)
    reply, error = finish_request(request_async(dispatcher, 'Int'))
    assert_error(error, SPARK_ERROR, Spark.ChannelError.CLOSED)

    shutdown(server)   # never started: completes at once
    expect_error(SPARK_ERROR, Spark.ChannelError.CLOSED, server.start, None)
    expect_error(SPARK_ERROR, Spark.ChannelError.CLOSED, server.start_in_thread)


@test
def error_already_started():
    """ALREADY_STARTED: start twice, or start after start_in_thread."""
    server = Spark.ModuleServer.new(Recorder())
    server.start(None)
    expect_error(SPARK_ERROR, Spark.ChannelError.ALREADY_STARTED, server.start, None)
    expect_error(SPARK_ERROR, Spark.ChannelError.ALREADY_STARTED, server.start_in_thread)
    shutdown(server)

    server = Spark.ModuleServer.new(Recorder())
    server.start_in_thread()
    expect_error(SPARK_ERROR, Spark.ChannelError.ALREADY_STARTED, server.start, None)
    expect_error(SPARK_ERROR, Spark.ChannelError.ALREADY_STARTED, server.start_in_thread)
    shutdown(server)


@test
def error_type_mismatch():
    """TYPE_MISMATCH names both types, for every kind of request."""
    server = Spark.ModuleServer.new(Recorder())
    server.start_in_thread()
    dispatcher = server.create_dispatcher()
    error = expect_error(SPARK_ERROR, Spark.ChannelError.TYPE_MISMATCH,
                         dispatcher.request_sync, 'Int', None, variant_type('s'), None)
    assert 'has type “i”, expected “s”' in error.message, error.message
    reply, error = finish_request(request_async(dispatcher, 'Int', None, variant_type('(s)')))
    assert_error(error, SPARK_ERROR, Spark.ChannelError.TYPE_MISMATCH, '“(s)”')
    assert dispatcher.request_sync('Int', None, variant_type('i'), None).unpack() == 42
    shutdown(server)


@test
def error_full():
    """FULL: try_send_command on a full bounded mailbox; send_command_async waits."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    server.props.capacity = 1
    server.start(None)   # not iterated until wait_for
    dispatcher = server.create_dispatcher()

    assert dispatcher.try_send_command('LogEvent', GLib.Variant('s', 'a'))
    expect_error(SPARK_ERROR, Spark.ChannelError.FULL, dispatcher.try_send_command, 'LogEvent', None)
    assert server.props.pending == 1
    # Blocking for room on the thread that must serve the mailbox.
    expect_error(SPARK_ERROR, Spark.ChannelError.WOULD_DEADLOCK,
                 dispatcher.send_command, 'LogEvent', None, None)
    sent = []
    dispatcher.send_command_async('LogEvent', GLib.Variant('s', 'b'), None,
                                  lambda d, res: sent.append(d.send_command_finish(res)))
    wait_for(lambda: sent)
    assert sent == [True]
    shutdown(server)
    assert handler.seen == [('command', 'LogEvent', 'a'), ('command', 'LogEvent', 'b')]


@test
def error_timed_out():
    """TIMED_OUT: the handler's cancellable is cancelled; a late reply is dropped quietly."""
    handler = Later()
    server = Spark.ModuleServer.new(handler)
    server.start_in_thread()
    dispatcher = server.create_dispatcher()
    dispatcher.props.timeout = 50
    assert dispatcher.get_timeout() == 50

    expect_error(SPARK_ERROR, Spark.ChannelError.TIMED_OUT,
                 dispatcher.request_sync, 'Slow', None, None, None)
    wait_for(lambda: handler.held)
    invocation = handler.held.pop()
    assert invocation.get_cancellable().is_cancelled()
    invocation.return_value(GLib.Variant('s', 'too late'))   # no critical

    reply, error = finish_request(request_async(dispatcher, 'Slow'))
    assert_error(error, SPARK_ERROR, Spark.ChannelError.TIMED_OUT)
    wait_for(lambda: handler.held)
    handler.held.pop().return_value(GLib.Variant('s', 'too late'))

    dispatcher.props.timeout = -1
    second = request_async(dispatcher, 'Now')
    wait_for(lambda: handler.held)
    handler.held.pop().return_value(GLib.Variant('s', 'in time'))
    reply, error = finish_request(second)
    assert error is None and reply.unpack() == 'in time'
    shutdown(server)


@test
def error_would_deadlock():
    """WOULD_DEADLOCK: request_sync on the thread that started the server, or
    on the server's own thread."""
    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    server.start(None)
    dispatcher = server.create_dispatcher()
    expect_error(SPARK_ERROR, Spark.ChannelError.WOULD_DEADLOCK,
                 dispatcher.request_sync, 'Int', None, None, None)
    shutdown(server)

    handler = Recorder()
    server = Spark.ModuleServer.new(handler)
    handler.dispatcher = server.create_dispatcher()
    server.start_in_thread()
    dispatcher = server.create_dispatcher()
    domain, code = dispatcher.request_sync('CallSelf', None, None, None).unpack()
    assert domain == 'spark-channel-error-quark' and code == Spark.ChannelError.WOULD_DEADLOCK
    handler.dispatcher = None
    shutdown(server)


@test
def error_cancelled():
    """G_IO_ERROR_CANCELLED: before sending, while the handler holds the
    invocation, and for request_sync."""
    requester = Gio.Cancellable()
    handler = Later(None)
    server = Spark.ModuleServer.new(handler)
    server.start_in_thread()
    dispatcher = server.create_dispatcher()

    # Already cancelled: nothing is sent; the callback still runs later.
    cancelled = Gio.Cancellable()
    cancelled.cancel()
    outcome = request_async(dispatcher, 'Never', None, None, cancelled)
    assert not outcome
    reply, error = finish_request(outcome)
    assert_error(error, IO_ERROR, Gio.IOErrorEnum.CANCELLED)
    expect_error(IO_ERROR, Gio.IOErrorEnum.CANCELLED,
                 dispatcher.request_sync, 'Never', None, None, cancelled)
    expect_error(IO_ERROR, Gio.IOErrorEnum.CANCELLED,
                 dispatcher.send_command, 'Never', None, cancelled)
    got = []
    dispatcher.request_full('Never', None, None, cancelled, lambda reply, error: got.append(error))
    assert not got
    wait_for(lambda: got)
    assert_error(got[0], IO_ERROR, Gio.IOErrorEnum.CANCELLED)

    # Cancelled while the handler holds the invocation: its cancellable too.
    outcome = request_async(dispatcher, 'Held', None, None, requester)
    wait_for(lambda: handler.held)
    invocation = handler.held.pop()
    assert not invocation.get_cancellable().is_cancelled()
    requester.cancel()
    reply, error = finish_request(outcome)
    assert_error(error, IO_ERROR, Gio.IOErrorEnum.CANCELLED)
    assert invocation.get_cancellable().is_cancelled()
    invocation.return_value(GLib.Variant('s', 'too late'))

    # request_sync, cancelled by the handler's side while it blocks.
    requester = Gio.Cancellable()
    handler.on_invocation = lambda invocation: requester.cancel()
    expect_error(IO_ERROR, Gio.IOErrorEnum.CANCELLED,
                 dispatcher.request_sync, 'HeldSync', None, None, requester)
    shutdown(server)
    assert handler.names == ['Held', 'HeldSync'], handler.names


@test
def error_not_supported_from_handler():
    """NOT_SUPPORTED raised by a Python handler reaches the requester."""
    server = Spark.ModuleServer.new(Recorder())
    server.start(None)
    dispatcher = server.create_dispatcher()
    reply, error = finish_request(request_async(dispatcher, 'Nonsense'))
    assert_error(error, SPARK_ERROR, Spark.ChannelError.NOT_SUPPORTED, 'Nonsense')
    shutdown(server)


# Priorities and overflow policies ----------------------------------------------
#
# A module on a thread of its own whose "wait" command blocks until the test
# opens its gate: while it blocks, the test fills the mailbox and decides
# what the server will find there. The handler sets an event on entering
# "wait", by which time the server no longer counts it as pending.

class Gated(GObject.Object, Spark.Handler):
    """Logs what it handles, as "name" or "name:value"; "wait" blocks at
    the gate; with urgent set, "d0" sends "urgent" through it, and with
    cancel set, "d0" calls cancel.cancel_all(), from inside the batch the
    server took."""

    def __init__(self):
        super().__init__()
        self.log = []
        self.handled = 0
        self.threads = set()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.urgent = None
        self.cancel = None

    def _record(self, name, parameters):
        self.threads.add(threading.get_ident())
        if name != 'wait':
            self.log.append(name if parameters is None else '%s:%s' % (name, parameters.unpack()))

    def do_handle_command(self, name, parameters, cancellable):
        if name == 'wait':
            self.entered.set()
            self.gate.wait(TIMEOUT_MS / 1000)
        self._record(name, parameters)
        if name == 'd0' and self.urgent is not None:
            self.urgent.try_send_command('urgent', None)
        if name == 'd0' and self.cancel is not None:
            self.cancel.cancel_all()
        self.handled += 1
        wake_main()
        return True

    def do_handle_request(self, name, parameters, cancellable):
        self._record(name, parameters)
        self.handled += 1
        wake_main()
        return GLib.Variant('s', name)


def start_gated(**props):
    """A Gated module on a thread of its own; returns (handler, server,
    dispatcher, reports), reports receiving (count, thread) for every
    messages-dropped."""
    handler = Gated()
    server = Spark.ModuleServer(handler=handler, name='gated', **props)
    reports = []
    server.connect('messages-dropped', lambda s, count: reports.append((count, threading.get_ident())))
    server.start_in_thread()
    return handler, server, server.create_dispatcher(), reports


def block_server(handler, dispatcher):
    """Sends "wait" and returns once the server blocks in it."""
    assert dispatcher.send_command('wait', None, None)
    assert handler.entered.wait(TIMEOUT_MS / 1000), 'the server never started "wait"'


def release_server(handler, server, handled):
    """Opens the gate, waits for handled messages in all ("wait" included)
    and stops the server."""
    handler.gate.set()
    wait_for(lambda: handler.handled >= handled)
    shutdown(server)
    assert handler.handled == handled, handler.log


def dropped_total(reports):
    return sum(count for count, _ in reports)


@test
def priority_order():
    """Queued behind a busy handler: HIGH first, then DEFAULT, then LOW, each
    priority in the order it was sent; with_priority gives the per-call form."""
    handler, server, dispatcher, reports = start_gated()
    low = dispatcher.with_priority(Spark.Priority.LOW)
    high = dispatcher.with_priority(Spark.Priority.HIGH)
    assert isinstance(high, Spark.Dispatcher) and high is not dispatcher
    assert high.props.priority == Spark.Priority.HIGH and low.get_priority() == Spark.Priority.LOW
    assert dispatcher.props.priority == Spark.Priority.DEFAULT

    block_server(handler, dispatcher)
    assert server.props.pending == 0
    for sender, name in ((low, 'l1'), (dispatcher, 'd1'), (high, 'h1'),
                         (low, 'l2'), (dispatcher, 'd2'), (high, 'h2')):
        assert sender.send_command(name, None, None)
    assert server.props.pending == 6

    release_server(handler, server, 7)
    assert handler.log == ['h1', 'h2', 'd1', 'd2', 'l1', 'l2'], handler.log
    assert reports == []


@test
def priority_property_and_requests():
    """Spark.Dispatcher:priority applies to requests too, from the next
    message on; it notifies on change only; with_priority keeps the
    timeout and leaves the original alone."""
    handler, server, dispatcher, reports = start_gated()
    notified = []
    dispatcher.connect('notify::priority', lambda d, pspec: notified.append(d.props.priority))
    dispatcher.set_priority(Spark.Priority.DEFAULT)
    assert notified == []
    dispatcher.props.timeout = 60000
    derived = dispatcher.with_priority(Spark.Priority.HIGH)
    assert derived.props.timeout == 60000
    assert dispatcher.get_priority() == Spark.Priority.DEFAULT

    block_server(handler, dispatcher)
    dispatcher.props.priority = Spark.Priority.LOW
    low = request_async(dispatcher, 'low')
    dispatcher.set_priority(Spark.Priority.HIGH)
    high = request_async(dispatcher, 'high')
    assert notified == [Spark.Priority.LOW, Spark.Priority.HIGH], notified
    assert server.props.pending == 2

    handler.gate.set()
    for outcome, name in ((low, 'low'), (high, 'high')):
        reply, error = finish_request(outcome)
        assert error is None and reply.unpack() == name
    assert handler.log == ['high', 'low'], handler.log
    shutdown(server)


@test
def priority_high_behind_taken_batch():
    """A HIGH command sent while the server works through a batch it took
    already is handled next, before the rest of that batch."""
    handler, server, dispatcher, reports = start_gated()
    handler.urgent = dispatcher.with_priority(Spark.Priority.HIGH)

    block_server(handler, dispatcher)
    for i in range(20):
        assert dispatcher.send_command('d%d' % i, None, None)
    release_server(handler, server, 22)
    assert handler.log == ['d0', 'urgent'] + ['d%d' % i for i in range(1, 20)], handler.log
    handler.urgent = None


@test
def overflow_property():
    """Spark.ModuleServer:overflow is WAIT by default, set before start."""
    server = Spark.ModuleServer(handler=Gated(), capacity=4, overflow=Spark.OverflowPolicy.COALESCE)
    assert server.props.overflow == Spark.OverflowPolicy.COALESCE
    assert server.get_capacity() == 4
    server.set_overflow(Spark.OverflowPolicy.DROP_OLDEST)
    assert server.get_overflow() == Spark.OverflowPolicy.DROP_OLDEST
    assert Spark.ModuleServer.new(Gated()).props.overflow == Spark.OverflowPolicy.WAIT


@test
def overflow_fail():
    """FAIL: with the mailbox full, every send fails at once with FULL;
    nothing is dropped, nothing is reported."""
    handler, server, dispatcher, reports = start_gated(capacity=2, overflow=Spark.OverflowPolicy.FAIL)
    block_server(handler, dispatcher)
    assert dispatcher.send_command('c', GLib.Variant('i', 1), None)
    assert dispatcher.send_command('c', GLib.Variant('i', 2), None)

    error = expect_error(SPARK_ERROR, Spark.ChannelError.FULL,
                         dispatcher.send_command, 'c', GLib.Variant('i', 3), None)
    assert 'capacity 2' in error.message, error.message
    expect_error(SPARK_ERROR, Spark.ChannelError.FULL, dispatcher.try_send_command, 'c', None)
    expect_error(SPARK_ERROR, Spark.ChannelError.FULL, dispatcher.request_sync, 'r', None, None, None)
    reply, error = finish_request(request_async(dispatcher, 'r'))
    assert_error(error, SPARK_ERROR, Spark.ChannelError.FULL)
    sent = []
    dispatcher.send_command_async('c', None, None, lambda d, res: sent.append(res))
    wait_for(lambda: sent)
    expect_error(SPARK_ERROR, Spark.ChannelError.FULL, dispatcher.send_command_finish, sent[0])
    assert server.props.pending == 2

    release_server(handler, server, 3)
    assert handler.log == ['c:1', 'c:2'], handler.log
    assert reports == []


@test
def overflow_drop_newest():
    """DROP_NEWEST: the new message goes and its send succeeds; a dropped
    request fails with DROPPED naming the policy; a dropped command is
    counted by messages-dropped, on the main context."""
    handler, server, dispatcher, reports = start_gated(capacity=2, overflow=Spark.OverflowPolicy.DROP_NEWEST)
    block_server(handler, dispatcher)
    assert dispatcher.send_command('c', GLib.Variant('i', 1), None)
    assert dispatcher.send_command('c', GLib.Variant('i', 2), None)
    assert dispatcher.send_command('c', GLib.Variant('i', 3), None)   # dropped
    assert dispatcher.try_send_command('c', GLib.Variant('i', 4))      # dropped

    reply, error = finish_request(request_async(dispatcher, 'r'))
    assert_error(error, SPARK_ERROR, Spark.ChannelError.DROPPED, 'drop-newest')
    assert 'capacity 2' in error.message, error.message
    error = expect_error(SPARK_ERROR, Spark.ChannelError.DROPPED, dispatcher.request_sync, 'r', None, None, None)
    assert 'drop-newest' in error.message, error.message
    assert server.props.pending == 2

    handler.gate.set()
    wait_for(lambda: dropped_total(reports) == 2)
    wait_for(lambda: handler.handled == 3)
    assert handler.log == ['c:1', 'c:2'], handler.log
    assert all(count > 0 and thread == MAIN_THREAD for count, thread in reports), reports
    shutdown(server)
    assert dropped_total(reports) == 2   # requests are not counted


@test
def overflow_drop_oldest():
    """DROP_OLDEST: the oldest queued message of the lowest priority, no
    higher than the new one's, makes room; a request among them fails with
    DROPPED; when every queued one is more urgent, the new one goes."""
    handler, server, dispatcher, reports = start_gated(capacity=2, overflow=Spark.OverflowPolicy.DROP_OLDEST)
    high = dispatcher.with_priority(Spark.Priority.HIGH)
    block_server(handler, dispatcher)
    outcome = request_async(dispatcher, 'r')
    assert dispatcher.send_command('c', GLib.Variant('i', 1), None)
    assert dispatcher.send_command('c', GLib.Variant('i', 2), None)   # drops r
    reply, error = finish_request(outcome)
    assert_error(error, SPARK_ERROR, Spark.ChannelError.DROPPED, 'drop-oldest')

    assert high.send_command('h', GLib.Variant('i', 1), None)         # drops c:1
    assert high.send_command('h', GLib.Variant('i', 2), None)         # drops c:2
    assert dispatcher.send_command('c', GLib.Variant('i', 3), None)   # all more urgent: c:3 goes

    handler.gate.set()
    wait_for(lambda: dropped_total(reports) == 3)
    release_server(handler, server, 3)
    assert handler.log == ['h:1', 'h:2'], handler.log


@test
def overflow_coalesce():
    """COALESCE: a command replaces the newest queued command of its name
    and priority, which is dropped, and joins the end of the queue; one with
    no such command queued waits (a try fails with FULL); messages-dropped
    counts the replaced ones."""
    handler, server, dispatcher, reports = start_gated(capacity=2, overflow=Spark.OverflowPolicy.COALESCE)
    high = dispatcher.with_priority(Spark.Priority.HIGH)
    block_server(handler, dispatcher)
    assert dispatcher.send_command('p', GLib.Variant('i', 1), None)
    assert dispatcher.send_command('q', GLib.Variant('i', 1), None)
    assert dispatcher.send_command('p', GLib.Variant('i', 2), None)   # [q:1 p:2]
    assert dispatcher.send_command('p', GLib.Variant('i', 3), None)   # [q:1 p:3]
    assert server.props.pending == 2
    # Another priority is another queue: nothing of its name there.
    expect_error(SPARK_ERROR, Spark.ChannelError.FULL, high.try_send_command, 'p', None)
    expect_error(SPARK_ERROR, Spark.ChannelError.FULL, dispatcher.try_send_command, 'other', None)

    # A request never coalesces: it waits for room, and gets its reply.
    outcome = request_async(dispatcher, 'r')
    handler.gate.set()
    reply, error = finish_request(outcome)
    assert error is None and reply.unpack() == 'r'
    wait_for(lambda: dropped_total(reports) == 2)
    release_server(handler, server, 4)
    assert handler.log == ['q:1', 'p:3', 'r'], handler.log
    assert all(count > 0 and thread == MAIN_THREAD for count, thread in reports), reports
    assert dropped_total(reports) == 2


@test
def overflow_coalesce_flood():
    """The UI flood: progress commands far faster than the module handles
    them, into a mailbox of 4. The queue stays within its capacity, the
    module ends on the newest value, handled plus dropped is everything
    sent, and reports come at most ten times a second."""
    count = 20000
    handler, server, dispatcher, reports = start_gated(capacity=4, overflow=Spark.OverflowPolicy.COALESCE)
    start = GLib.get_monotonic_time()
    max_pending = 0
    for i in range(count):
        assert dispatcher.send_command('progress', GLib.Variant('i', i), None)
        max_pending = max(max_pending, server.props.pending)
    assert dispatcher.send_command('done', None, None)

    wait_for(lambda: handler.handled + dropped_total(reports) == count + 1)
    elapsed = (GLib.get_monotonic_time() - start) / 1e6
    assert handler.log[-2:] == ['progress:%d' % (count - 1), 'done'], handler.log[-2:]
    assert max_pending <= 4, max_pending
    assert len(reports) <= elapsed * 10 + 1, (len(reports), elapsed)
    assert all(thread == MAIN_THREAD for _, thread in reports)
    shutdown(server)
    assert handler.handled + dropped_total(reports) == count + 1


# Rate limits and cancel_all() --------------------------------------------------
#
# A rate limit is the dispatcher's own: the module (a Gated one, blocked in
# "wait" sent through another dispatcher, where a test needs it still)
# sees only what got through. Time is checked only as a loose lower bound
# where waiting is the point; everything else is counts and order.

def rate_limited(server, messages_per_second, burst):
    dispatcher = server.create_dispatcher()
    dispatcher.props.rate_limit = messages_per_second
    dispatcher.set_rate_burst(burst)
    return dispatcher


@test
def rate_limit_properties():
    """rate-limit and rate-burst: 0 by default, notify on change only,
    copied by with_priority."""
    server = Spark.ModuleServer.new(Gated())
    dispatcher = server.create_dispatcher()
    assert dispatcher.props.rate_limit == 0 and dispatcher.get_rate_burst() == 0
    notified = []
    dispatcher.connect('notify::rate-limit', lambda d, pspec: notified.append(d.props.rate_limit))
    dispatcher.set_rate_limit(30)
    dispatcher.props.rate_limit = 30
    dispatcher.props.rate_burst = 5
    assert notified == [30], notified
    derived = dispatcher.with_priority(Spark.Priority.LOW)
    assert derived.get_rate_limit() == 30 and derived.props.rate_burst == 5


@test
def rate_limit_try_fails_fast():
    """Past its burst, try_send_command fails at once with FULL naming the
    rate limit, and nothing of it reaches the module; a blocking send with
    a cancelled cancellable fails with CANCELLED instead of waiting. Another
    dispatcher of the same server is not limited."""
    handler, server, gate_dispatcher, reports = start_gated()
    block_server(handler, gate_dispatcher)
    dispatcher = rate_limited(server, 1, 3)

    for i in range(3):
        assert dispatcher.try_send_command('c', GLib.Variant('i', i))
    error = expect_error(SPARK_ERROR, Spark.ChannelError.FULL, dispatcher.try_send_command, 'c', GLib.Variant('i', 3))
    assert 'rate limit (1 messages per second)' in error.message, error.message
    cancellable = Gio.Cancellable()
    cancellable.cancel()
    expect_error(IO_ERROR, Gio.IOErrorEnum.CANCELLED,
                 dispatcher.send_command, 'c', GLib.Variant('i', 4), cancellable)
    assert server.props.pending == 3
    # Unlimited: not held back by the other dispatcher's bucket.
    assert gate_dispatcher.try_send_command('other', None)
    assert server.props.pending == 4

    release_server(handler, server, 5)
    assert handler.log == ['c:0', 'c:1', 'c:2', 'other'], handler.log


@test
def rate_limit_blocking_send_waits():
    """A blocking send past the burst waits for its token and then goes:
    at 50 a second with a burst of 2, eight commands take at least six
    intervals of 20 ms. All arrive, in order."""
    handler, server, gate_dispatcher, reports = start_gated()
    dispatcher = rate_limited(server, 50, 2)

    start = GLib.get_monotonic_time()
    for i in range(8):
        assert dispatcher.send_command('c', GLib.Variant('i', i), None)
    elapsed_us = GLib.get_monotonic_time() - start
    assert elapsed_us >= 6 * 20000 - 5000, elapsed_us

    wait_for(lambda: handler.handled == 8)
    shutdown(server)
    assert handler.log == ['c:%d' % i for i in range(8)], handler.log


@test
def rate_limit_async_waits_and_completes():
    """Asynchronous sends wait on the caller's context, not in the mailbox:
    with the burst spent, only the burst reached the module until the
    context runs. Each request completes once, in order; a cancelled one
    fails with CANCELLED and is never sent; send_command_async waits its
    turn and succeeds."""
    handler, server, gate_dispatcher, reports = start_gated()
    block_server(handler, gate_dispatcher)
    dispatcher = rate_limited(server, 20, 2)

    start = GLib.get_monotonic_time()
    outcomes = [request_async(dispatcher, 'r%d' % i) for i in range(5)]
    cancellable = Gio.Cancellable()
    cancelled = request_async(dispatcher, 'gone', cancellable=cancellable)
    sent = []
    dispatcher.send_command_async('c', None, None,
                                  lambda d, res: sent.append(d.send_command_finish(res)))
    # Nothing iterated this context yet: two were sent, the rest wait.
    assert server.props.pending == 2, server.props.pending
    cancellable.cancel()

    handler.gate.set()
    for i, outcome in enumerate(outcomes):
        reply, error = finish_request(outcome)
        assert error is None and reply.unpack() == 'r%d' % i, (reply, error)
    reply, error = finish_request(cancelled)
    assert_error(error, IO_ERROR, Gio.IOErrorEnum.CANCELLED)
    wait_for(lambda: sent)
    assert sent == [True]
    # Five requests and a command after the burst of two: four intervals
    # of 50 ms at least.
    elapsed_us = GLib.get_monotonic_time() - start
    assert elapsed_us >= 4 * 50000 - 10000, elapsed_us

    release_server(handler, server, 7)
    # In the order sent, those that waited for a token too (see
    # docs/flow-control.md); the cancelled one never reached the module.
    assert handler.log == ['r0', 'r1', 'r2', 'r3', 'r4', 'c'], handler.log


@test
def cancel_all_queued():
    """cancel_all() fails every request its dispatcher queued (also through
    one made by with_priority, also a request_sync blocked in another
    thread) with CANCELLED at once, while the module is still busy; another
    dispatcher's request and the dispatcher's own commands go on."""
    handler, server, gate_dispatcher, reports = start_gated()
    block_server(handler, gate_dispatcher)
    mine = server.create_dispatcher()
    mine_high = mine.with_priority(Spark.Priority.HIGH)
    other = server.create_dispatcher()

    outcomes = [request_async(mine_high if i % 2 else mine, 'mine') for i in range(4)]
    blocked = []

    def request_sync_in_thread():
        try:
            blocked.append(mine.request_sync('mine-sync', None, None, None))
        except GLib.Error as error:
            blocked.append(error)
        wake_main()

    thread = threading.Thread(target=request_sync_in_thread)
    thread.start()
    theirs = request_async(other, 'other')
    # The thread's request is queued before cancel_all() is called (its
    # sender cannot wake this context: poll).
    deadline = GLib.get_monotonic_time() + TIMEOUT_MS * 1000
    while server.props.pending < 6 and not blocked and GLib.get_monotonic_time() < deadline:
        GLib.usleep(1000)
    assert server.props.pending == 6 and not blocked, (server.props.pending, blocked)
    assert mine.send_command('cmd', None, None)

    mine.cancel_all()
    for outcome in outcomes:
        reply, error = finish_request(outcome)
        assert_error(error, IO_ERROR, Gio.IOErrorEnum.CANCELLED, 'cancel_all')
    wait_for(lambda: blocked)
    thread.join()
    assert_error(blocked[0], IO_ERROR, Gio.IOErrorEnum.CANCELLED)
    # The module is still blocked: the other request is untouched.
    assert not theirs

    handler.gate.set()
    reply, error = finish_request(theirs)
    assert error is None and reply.unpack() == 'other'
    release_server(handler, server, 3)
    assert handler.log == ['other', 'cmd'], handler.log


@test
def cancel_all_taken_batch_and_waiting_for_room():
    """cancel_all() reaches requests the server already took in its batch
    (called by the module itself, from "d0" of the same batch) and requests
    waiting for room in a full mailbox; the others' are handled."""
    handler, server, gate_dispatcher, reports = start_gated()
    handler.cancel = server.create_dispatcher()
    block_server(handler, gate_dispatcher)
    assert gate_dispatcher.send_command('d0', None, None)
    taken = [request_async(handler.cancel, 'taken') for i in range(3)]
    assert gate_dispatcher.send_command('last', None, None)
    handler.gate.set()
    for outcome in taken:
        reply, error = finish_request(outcome)
        assert_error(error, IO_ERROR, Gio.IOErrorEnum.CANCELLED)
    wait_for(lambda: handler.handled == 3)
    assert handler.log == ['d0', 'last'], handler.log
    handler.cancel = None
    shutdown(server)

    handler, server, gate_dispatcher, reports = start_gated(capacity=1)
    block_server(handler, gate_dispatcher)
    mine = server.create_dispatcher()
    assert gate_dispatcher.send_command('c', None, None)   # full
    queued = request_async(mine, 'waits')
    theirs = request_async(gate_dispatcher, 'theirs')
    assert server.props.pending == 1
    mine.cancel_all()
    reply, error = finish_request(queued)
    assert_error(error, IO_ERROR, Gio.IOErrorEnum.CANCELLED)
    handler.gate.set()
    reply, error = finish_request(theirs)
    assert error is None and reply.unpack() == 'theirs'
    release_server(handler, server, 3)
    assert handler.log == ['c', 'theirs'], handler.log


# Routers -----------------------------------------------------------------------
#
# A Spark.Router is a handler that hands each message to another handler or
# to a dispatcher, by name. Here it is served by a module server on a thread
# of its own, in front of Python handlers and of other servers.

class Labelled(GObject.Object, Spark.Handler):
    """Replies with its label and the request's name, so a test sees which
    route took a message; records what it saw and on which thread."""

    def __init__(self, label):
        super().__init__()
        self.label = label
        self.seen = []
        self.threads = set()

    def do_handle_request(self, name, parameters, cancellable):
        self.threads.add(threading.get_ident())
        self.seen.append(('request', name, None if parameters is None else parameters.unpack()))
        if name == 'sum':
            return GLib.Variant('i', sum(parameters.unpack()))
        return GLib.Variant('s', '%s:%s' % (self.label, name))

    def do_handle_command(self, name, parameters, cancellable):
        self.threads.add(threading.get_ident())
        self.seen.append(('command', name, None if parameters is None else parameters.unpack()))
        return True


def start_router(router, **props):
    """Serves router on a thread of its own; returns (server, dispatcher, failures),
    failures receiving (name, error) for every command-failed."""
    server = Spark.ModuleServer(handler=router, name='router', **props)
    failures = []
    server.connect('command-failed', lambda s, name, parameters, error: failures.append((name, error)))
    server.start_in_thread()
    return server, server.create_dispatcher(), failures


@test
def router_exact_and_prefix_routes():
    """An exact name wins over a prefix, a longer prefix over a shorter one,
    "*" takes the rest; the handlers run on the router's server thread."""
    exact, prefix, longer, rest = Labelled('exact'), Labelled('prefix'), Labelled('longer'), Labelled('rest')
    router = Spark.Router.new()
    assert isinstance(router, Spark.Handler)
    assert router.add_handler('kv.get', exact, None, None)
    assert router.add_handler('kv.*', prefix, None, None)
    assert router.add_handler('kv.admin.*', longer, None, None)
    server, dispatcher, failures = start_router(router)

    assert dispatcher.request_sync('kv.get', GLib.Variant('(s)', ('user123',)), None, None).unpack() == 'exact:kv.get'
    assert dispatcher.request_sync('kv.set', None, variant_type('s'), None).unpack() == 'prefix:kv.set'
    assert dispatcher.request_sync('kv.', None, None, None).unpack() == 'prefix:kv.'
    assert dispatcher.request_sync('kv.admin.drop', None, None, None).unpack() == 'longer:kv.admin.drop'
    reply, error = finish_request(request_async(dispatcher, 'kv.get.all'))
    assert error is None and reply.unpack() == 'prefix:kv.get.all'   # not the exact route
    assert dispatcher.send_command('kv.get', GLib.Variant('s', 'as a command'), None)
    assert dispatcher.send_command('kv.flush', None, None)

    # A catch-all added while the router serves.
    assert router.add_handler('*', rest, None, None)
    assert dispatcher.request_sync('log', None, None, None).unpack() == 'rest:log'
    assert dispatcher.request_sync('kv', None, None, None).unpack() == 'rest:kv'   # "kv.*" needs the dot

    assert exact.seen == [('request', 'kv.get', ('user123',)), ('command', 'kv.get', 'as a command')]
    assert prefix.seen == [('request', 'kv.set', None), ('request', 'kv.', None),
                           ('request', 'kv.get.all', None), ('command', 'kv.flush', None)]
    assert longer.seen == [('request', 'kv.admin.drop', None)]
    threads = exact.threads | prefix.threads | longer.threads | rest.threads
    assert len(threads) == 1 and MAIN_THREAD not in threads
    assert failures == []

    shutdown(server)


@test
def router_declared_types():
    """A route's parameter type is checked before its handler runs, its reply
    type on the way back: TYPE_MISMATCH naming the route and both types."""
    handler = Labelled('typed')
    router = Spark.Router.new()
    assert router.add_handler('sum', handler, GLib.VariantType('(ii)'), None)
    assert router.add_handler('count', handler, None, GLib.VariantType('i'))   # replies 's'
    assert router.add_handler('name.*', handler, None, GLib.VariantType('s'))
    server, dispatcher, failures = start_router(router)

    assert dispatcher.request_sync('sum', GLib.Variant('(ii)', (2, 3)), variant_type('i'), None).unpack() == 5
    error = expect_error(SPARK_ERROR, Spark.ChannelError.TYPE_MISMATCH,
                         dispatcher.request_sync, 'sum', GLib.Variant('(ss)', ('2', '3')), None, None)
    for part in ('Route “sum”', '“(ss)”', '“(ii)”'):
        assert part in error.message, error.message
    reply, error = finish_request(request_async(dispatcher, 'sum'))
    assert_error(error, SPARK_ERROR, Spark.ChannelError.TYPE_MISMATCH, 'Route “sum”')
    assert '(none)' in error.message, error.message

    error = expect_error(SPARK_ERROR, Spark.ChannelError.TYPE_MISMATCH,
                         dispatcher.request_sync, 'count', None, None, None)
    for part in ('Route “count”', '“s”', '“i”'):
        assert part in error.message, error.message
    assert dispatcher.request_sync('name.first', None, None, None).unpack() == 'typed:name.first'

    # The requester's own reply type is checked too.
    error = expect_error(SPARK_ERROR, Spark.ChannelError.TYPE_MISMATCH,
                         dispatcher.request_sync, 'sum', GLib.Variant('(ii)', (1, 1)), variant_type('s'), None)
    assert 'has type “i”, expected “s”' in error.message, error.message

    # Commands: the parameter type too, reported through command-failed.
    assert dispatcher.send_command('sum', GLib.Variant('s', 'not a pair'), None)
    assert dispatcher.send_command('sum', GLib.Variant('(ii)', (4, 5)), None)
    wait_for(lambda: failures)
    assert failures[0][0] == 'sum'
    assert_error(failures[0][1], SPARK_ERROR, Spark.ChannelError.TYPE_MISMATCH, 'Route “sum”')
    dispatcher.request_sync('name.sync', None, None, None)
    assert len(failures) == 1

    # Mismatched parameters never reached the handler; a mismatched reply did.
    assert handler.seen == [('request', 'sum', (2, 3)), ('request', 'count', None),
                            ('request', 'name.first', None), ('request', 'sum', (1, 1)),
                            ('command', 'sum', (4, 5)), ('request', 'name.sync', None)], handler.seen

    shutdown(server)


@test
def router_unrouted_not_supported():
    """A name no route takes: NOT_SUPPORTED naming it, for requests and commands."""
    router = Spark.Router.new()
    server, dispatcher, failures = start_router(router)

    error = expect_error(SPARK_ERROR, Spark.ChannelError.NOT_SUPPORTED,
                         dispatcher.request_sync, 'weather.today', None, None, None)
    assert '“weather.today”' in error.message, error.message
    assert router.add_handler('kv.*', Labelled('kv'), None, None)
    reply, error = finish_request(request_async(dispatcher, 'kv'))
    assert_error(error, SPARK_ERROR, Spark.ChannelError.NOT_SUPPORTED, '“kv”')
    got = []
    dispatcher.request_full('math.add', None, None, None, lambda reply, error: got.append(error))
    wait_for(lambda: got)
    assert_error(got[0], SPARK_ERROR, Spark.ChannelError.NOT_SUPPORTED, '“math.add”')

    assert dispatcher.send_command('log', None, None)
    wait_for(lambda: failures)
    assert failures[0][0] == 'log'
    assert_error(failures[0][1], SPARK_ERROR, Spark.ChannelError.NOT_SUPPORTED, '“log”')

    shutdown(server)


@test
def router_dispatcher_routes():
    """Routes to a module on another server: replies and errors come back
    unchanged, commands arrive in order, declared types are checked, and the
    module runs on its own thread."""
    local = Labelled('local')
    module = Recorder()
    module_server = Spark.ModuleServer(handler=module, name='module')
    module_server.start_in_thread()
    router = Spark.Router.new()
    assert router.add_handler('where', local, None, None)
    assert router.add_dispatcher('Echo', module_server.create_dispatcher(), None, None)
    assert router.add_dispatcher('F*', module_server.create_dispatcher(), None, None)
    assert router.add_dispatcher('L*', module_server.create_dispatcher(), GLib.VariantType('(s)'), None)
    assert router.add_dispatcher('Int', module_server.create_dispatcher(), None, GLib.VariantType('s'))
    server, dispatcher, failures = start_router(router)

    reply = dispatcher.request_sync('Echo', GLib.Variant('(su)', ('user123', 7)), None, None)
    assert reply.unpack() == ('user123', 7)
    reply, error = finish_request(request_async(dispatcher, 'Echo', GLib.Variant('u', 3), variant_type('u')))
    assert error is None and reply.unpack() == 3
    error = expect_error(IO_ERROR, Gio.IOErrorEnum.NOT_FOUND, dispatcher.request_sync, 'Fail', None, None, None)
    assert error.message == 'No data for “user123”'
    error = expect_error(SPARK_ERROR, Spark.ChannelError.TYPE_MISMATCH,
                         dispatcher.request_sync, 'Int', None, None, None)
    for part in ('Route “Int”', '“i”', '“s”'):
        assert part in error.message, error.message

    # Commands go on with try_send_command; their failures are the module's.
    module_failures = []
    module_server.connect('command-failed', lambda s, name, p, error: module_failures.append((name, error)))
    assert dispatcher.send_command('LogEvent', GLib.Variant('(s)', ('User logged in',)), None)
    assert dispatcher.send_command('LogEvent', GLib.Variant('s', 'not a tuple'), None)   # the route refuses it
    assert dispatcher.send_command('FailCommand', None, None)
    wait_for(lambda: failures and module_failures)
    assert [name for name, _ in failures] == ['LogEvent']
    assert_error(failures[0][1], SPARK_ERROR, Spark.ChannelError.TYPE_MISMATCH, 'Route “L*”')
    assert [name for name, _ in module_failures] == ['FailCommand']
    assert_error(module_failures[0][1], IO_ERROR, Gio.IOErrorEnum.NO_SPACE)

    assert dispatcher.request_sync('where', None, None, None).unpack() == 'local:where'
    assert [(kind, name) for kind, name, _ in module.seen] == [
        ('request', 'Echo'), ('request', 'Echo'), ('request', 'Fail'), ('request', 'Int'),
        ('command', 'LogEvent'), ('command', 'FailCommand')], module.seen
    assert len(module.threads) == 1 and len(local.threads) == 1
    assert not module.threads & local.threads and MAIN_THREAD not in module.threads | local.threads

    shutdown(server)
    shutdown(module_server)


@test
def router_dispatcher_route_in_flight():
    """With max-invocations 2 the router forwards a second request while the
    first waits for its reply; a requester's cancellation reaches the module."""
    module = Later()
    module_server = Spark.ModuleServer(handler=module, max_invocations=4)
    module_server.start_in_thread()
    router = Spark.Router.new()
    assert router.add_dispatcher('slow.*', module_server.create_dispatcher(), None, None)
    server, dispatcher, failures = start_router(router, max_invocations=2)
    assert server.props.max_invocations == 2

    first = request_async(dispatcher, 'slow.first')
    second = request_async(dispatcher, 'slow.second')
    wait_for(lambda: len(module.held) == 2)
    held = {invocation.get_name(): invocation for invocation in module.held}
    module.held.clear()
    held['slow.second'].return_value(GLib.Variant('i', 2))   # replies in any order
    reply, error = finish_request(second)
    assert error is None and reply.unpack() == 2
    assert not first
    held['slow.first'].return_gerror(GLib.Error.new_literal(IO_ERROR, 'Too slow', Gio.IOErrorEnum.BUSY))
    reply, error = finish_request(first)
    assert_error(error, IO_ERROR, Gio.IOErrorEnum.BUSY)
    assert error.message == 'Too slow'

    requester = Gio.Cancellable()
    outcome = request_async(dispatcher, 'slow.cancelled', None, None, requester)
    wait_for(lambda: module.held)
    invocation = module.held.pop()
    assert not invocation.get_cancellable().is_cancelled()
    requester.cancel()
    reply, error = finish_request(outcome)
    assert_error(error, IO_ERROR, Gio.IOErrorEnum.CANCELLED)
    wait_for(lambda: invocation.get_cancellable().is_cancelled())
    invocation.return_value(GLib.Variant('s', 'too late'))   # dropped quietly

    shutdown(server)
    shutdown(module_server)


@test
def router_dispatcher_commands_do_not_block():
    """A command routed to a full module fails with FULL (try_send_command)
    instead of blocking the router's server."""
    module = Recorder()
    module_server = Spark.ModuleServer(handler=module, capacity=1)
    module_server.start(None)   # the main context: not iterated until wait_for
    router = Spark.Router.new()
    assert router.add_dispatcher('Log*', module_server.create_dispatcher(), None, None)
    assert router.add_handler('ping', Labelled('router'), None, None)
    server, dispatcher, failures = start_router(router)

    assert dispatcher.send_command('LogEvent', GLib.Variant('s', 'first'), None)
    assert dispatcher.send_command('LogEvent', GLib.Variant('s', 'second'), None)
    # Blocks this thread without iterating the main context: the router has
    # forwarded both commands when it replies.
    assert dispatcher.request_sync('ping', None, None, None).unpack() == 'router:ping'
    wait_for(lambda: failures and module.seen)
    assert failures[0][0] == 'LogEvent'
    assert_error(failures[0][1], SPARK_ERROR, Spark.ChannelError.FULL)
    assert module.seen == [('command', 'LogEvent', 'first')]

    shutdown(server)
    shutdown(module_server)


@test
def router_add_remove_list_patterns():
    """Routes are added and removed while the router serves; a request a
    removed route took finishes on it; list_patterns is sorted."""
    exact, prefix = Labelled('exact'), Labelled('prefix')
    held = Later()
    router = Spark.Router.new()
    assert router.list_patterns() == []
    assert router.add_handler('kv.*', prefix, None, None)
    assert router.add_handler('kv.get', exact, None, None)
    assert router.add_handler('held', held, None, None)
    error = expect_error(IO_ERROR, Gio.IOErrorEnum.EXISTS, router.add_handler, 'kv.*', exact, None, None)
    assert '“kv.*”' in error.message, error.message
    expect_error(IO_ERROR, Gio.IOErrorEnum.EXISTS, router.add_handler, 'kv.get', prefix, None, None)
    assert router.list_patterns() == ['held', 'kv.*', 'kv.get']
    server, dispatcher, failures = start_router(router)

    assert dispatcher.request_sync('kv.get', None, None, None).unpack() == 'exact:kv.get'
    assert router.remove('kv.get')
    assert not router.remove('kv.get')
    assert dispatcher.request_sync('kv.get', None, None, None).unpack() == 'prefix:kv.get'
    assert router.remove('kv.*')
    expect_error(SPARK_ERROR, Spark.ChannelError.NOT_SUPPORTED, dispatcher.request_sync, 'kv.get', None, None, None)
    assert router.list_patterns() == ['held']

    # Added from another Python thread while serving.
    added = []
    thread = threading.Thread(target=lambda: added.append(router.add_handler('kv.get', exact, None, None)))
    thread.start()
    thread.join()
    assert added == [True]
    assert dispatcher.request_sync('kv.get', None, None, None).unpack() == 'exact:kv.get'

    # A request the route took before it was removed finishes on it.
    outcome = request_async(dispatcher, 'held')
    wait_for(lambda: held.held)
    assert router.remove('held')
    assert router.list_patterns() == ['kv.get']
    held.held.pop().return_value(GLib.Variant('s', 'finished on the old route'))
    reply, error = finish_request(outcome)
    assert error is None and reply.unpack() == 'finished on the old route'
    expect_error(SPARK_ERROR, Spark.ChannelError.NOT_SUPPORTED, dispatcher.request_sync, 'held', None, None, None)
    assert failures == []

    shutdown(server)


# Worker pools ------------------------------------------------------------------

class PoolHandler(GObject.Object, Spark.Handler):
    """Declares itself concurrent. Requests: "meet" waits (up to 10 s) on a
    barrier of two, which only passes when two calls are inside at once;
    "self" makes a blocking call to its own server. Commands (s key, u seq)
    are recorded per key, with a check that no two of one key overlap;
    "reload" records the worker thread. Everything shared is under a lock."""

    def __init__(self, concurrent=True):
        super().__init__()
        self.concurrent = concurrent
        self.barrier = threading.Barrier(2)
        self.lock = threading.Lock()
        self.threads = set()        # lock
        self.by_key = {}            # lock: key -> seqs in the order handled
        self.busy = set()           # lock: keys being handled now
        self.overlaps = 0           # lock
        self.reloads = []           # lock: thread of each reload
        self.dispatcher = None

    def do_get_flags(self):
        return Spark.HandlerFlags.CONCURRENT if self.concurrent else Spark.HandlerFlags.NONE

    def do_handle_request(self, name, parameters, cancellable):
        with self.lock:
            self.threads.add(threading.get_ident())
        if name == 'meet':
            try:
                self.barrier.wait(timeout=TIMEOUT_MS / 1000)
            except threading.BrokenBarrierError:
                raise GLib.Error.new_literal(IO_ERROR, 'only one call was inside', Gio.IOErrorEnum.TIMED_OUT)
            return GLib.Variant('t', threading.get_ident())
        if name == 'self':
            try:
                self.dispatcher.request_sync('meet', None, None, None)
            except GLib.Error as error:
                return GLib.Variant('(sis)', (error.domain, error.code, error.message))
            return GLib.Variant('(sis)', ('', -1, 'a reply'))
        return GLib.Variant('s', name)

    def do_handle_command(self, name, parameters, cancellable):
        if name == 'reload':
            with self.lock:
                self.reloads.append(threading.get_ident())
            return True
        key, seq = parameters.unpack()
        with self.lock:
            self.threads.add(threading.get_ident())
            if key in self.busy:
                self.overlaps += 1
            self.busy.add(key)
        time.sleep(0.001)   # releases the GIL: the other worker may run
        with self.lock:
            self.by_key.setdefault(key, []).append(seq)
            self.busy.discard(key)
        return True


def start_pool(handler, workers=2, ordering=Spark.Ordering.NONE):
    server = Spark.ModuleServer(handler=handler, name='pool', workers=workers, ordering=ordering)
    server.start_in_thread()
    handler.dispatcher = server.create_dispatcher()
    return server, handler.dispatcher


@test
def pool_properties():
    """workers (default 1) and ordering (default NONE) are properties,
    notified on change only; get_flags() reaches the Python vfunc."""
    server = Spark.ModuleServer.new(PoolHandler())
    assert server.props.workers == 1 and server.get_workers() == 1
    assert server.props.ordering == Spark.Ordering.NONE
    notified = []
    server.connect('notify', lambda s, pspec: notified.append(pspec.name))
    server.props.workers = 3
    server.set_workers(3)          # no change: no notify
    server.set_ordering(Spark.Ordering.NAME)
    server.props.ordering = Spark.Ordering.KEY
    assert notified == ['workers', 'ordering', 'ordering'], notified
    assert server.get_workers() == 3 and server.get_ordering() == Spark.Ordering.KEY
    server = Spark.ModuleServer(handler=PoolHandler(), workers=2, ordering=Spark.Ordering.KEY)
    assert server.props.workers == 2 and server.props.ordering == Spark.Ordering.KEY
    assert PoolHandler().get_flags() == Spark.HandlerFlags.CONCURRENT
    assert PoolHandler(concurrent=False).get_flags() == Spark.HandlerFlags.NONE
    assert Recorder().get_flags() == Spark.HandlerFlags.NONE   # no do_get_flags: the default
    assert [Spark.Ordering(i).value_nick for i in range(3)] == ['none', 'name', 'key']


@test
def pool_refuses_handler_not_concurrent():
    """A pool of a handler that does not declare CONCURRENT fails to start
    with NOT_SUPPORTED saying so; so does a pool started with start(); a
    refused start is not a start."""
    handler = PoolHandler(concurrent=False)
    server = Spark.ModuleServer(handler=handler, name='strict', workers=2)
    error = expect_error(SPARK_ERROR, Spark.ChannelError.NOT_SUPPORTED, server.start_in_thread)
    for part in ('“strict”', '2 workers', 'SPARK_HANDLER_FLAGS_CONCURRENT'):
        assert part in error.message, error.message
    assert not server.props.running

    concurrent = Spark.ModuleServer(handler=PoolHandler(), workers=2)
    error = expect_error(SPARK_ERROR, Spark.ChannelError.NOT_SUPPORTED, concurrent.start, None)
    assert 'start_in_thread' in error.message, error.message
    assert not concurrent.props.running

    # One worker serves any handler; the refused start did not count.
    server.props.workers = 1
    server.start_in_thread()
    assert server.create_dispatcher().request_sync('hello', None, None, None).unpack() == 'hello'
    shutdown(server)


@test
def pool_runs_two_python_calls_at_once():
    """Two requests meet at a barrier of two: they pass only if both calls
    are inside at once, on two worker threads (neither the main one)."""
    handler = PoolHandler()
    server, dispatcher = start_pool(handler)
    first = request_async(dispatcher, 'meet', None, variant_type('t'))
    second = request_async(dispatcher, 'meet', None, variant_type('t'))
    (reply1, error1), (reply2, error2) = finish_request(first), finish_request(second)
    assert error1 is None and error2 is None, (error1, error2)
    assert reply1.unpack() != reply2.unpack()
    assert handler.threads == {reply1.unpack(), reply2.unpack()}
    assert MAIN_THREAD not in handler.threads
    shutdown(server)


@test
def pool_ordering_key_keeps_each_key_in_order():
    """With ordering KEY, commands of one key (the first string of the
    parameters) are handled in the order sent, never two at once, from
    several sending threads."""
    handler = PoolHandler()
    server, dispatcher = start_pool(handler, ordering=Spark.Ordering.KEY)
    keys = ['user%d' % i for i in range(3)]

    def send(key):
        for seq in range(30):
            dispatcher.send_command('append', GLib.Variant('(su)', (key, seq)), None)

    senders = [threading.Thread(target=send, args=(key,)) for key in keys]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    shutdown(server)   # DRAIN: every command has been handled
    assert handler.by_key == {key: list(range(30)) for key in keys}, handler.by_key
    assert handler.overlaps == 0


@test
def pool_broadcast_reaches_each_worker_once():
    """A broadcast command is handled once by each worker, on its thread;
    on a server that is not running it fails with CLOSED."""
    handler = PoolHandler()
    server = Spark.ModuleServer(handler=handler, workers=3)
    dispatcher = server.create_dispatcher()
    expect_error(SPARK_ERROR, Spark.ChannelError.CLOSED, dispatcher.broadcast_command, 'reload', None)
    server.start_in_thread()
    assert dispatcher.broadcast_command('reload', GLib.Variant('s', 'now'))
    shutdown(server)
    assert len(handler.reloads) == 3 and len(set(handler.reloads)) == 3, handler.reloads
    assert MAIN_THREAD not in handler.reloads
    expect_error(SPARK_ERROR, Spark.ChannelError.CLOSED, dispatcher.broadcast_command, 'reload', None)


@test
def pool_blocking_call_to_own_server_would_deadlock():
    """A worker's blocking call to its own server fails with
    WOULD_DEADLOCK (every worker serves the mailbox)."""
    handler = PoolHandler()
    server, dispatcher = start_pool(handler)
    domain, code, message = dispatcher.request_sync('self', None, None, None).unpack()
    assert (domain, code) == (GLib.quark_to_string(SPARK_ERROR), Spark.ChannelError.WOULD_DEADLOCK), message
    shutdown(server)


@test
def error_enum_is_registered():
    """SparkChannelError is a GEnum with every code, and an error domain."""
    assert GLib.quark_to_string(SPARK_ERROR) == 'spark-channel-error-quark'
    names = [Spark.ChannelError(i).value_nick for i in range(9)]
    assert names == ['closed', 'no-reply', 'type-mismatch', 'full', 'timed-out',
                     'would-deadlock', 'not-supported', 'already-started', 'dropped'], names
    assert Spark.ShutdownMode.DRAIN == 0 and Spark.ShutdownMode.ABORT == 1
    assert [Spark.Priority(i).value_nick for i in range(3)] == ['default', 'high', 'low']
    names = [Spark.OverflowPolicy(i).value_nick for i in range(6)]
    assert names == ['wait', 'fail', 'drop-newest', 'drop-oldest', 'coalesce', 'coalesce-key'], names
    # C only, skipped for introspection.
    assert not hasattr(Spark, 'func_handler_new')
    assert not hasattr(Spark.Invocation, 'take_error')


@test
def metrics_bind_and_snapshot():
    """A label bound to a server's metrics follows its traffic from another
    thread, notified on this (the owner) context; the snapshot agrees."""
    server = Spark.ModuleServer(handler=Recorder(), name='metrics')
    server.props.metrics_interval = 20
    label = Gio.SimpleAction.new_stateful('label', None, GLib.Variant('s', ''))
    server.bind_property('handled', label, 'state', GObject.BindingFlags.SYNC_CREATE,
                         lambda binding, value: GLib.Variant('s', '%d handled' % value))
    notified_threads = set()
    server.connect('notify::failed', lambda s, pspec: notified_threads.add(threading.get_ident()))
    assert label.get_state().unpack() == '0 handled'
    server.start_in_thread()
    dispatcher = server.create_dispatcher()

    def traffic():
        for i in range(20):
            dispatcher.request_sync('Int', None, None, None)
        for i in range(3):
            try:
                dispatcher.request_sync('Fail', None, None, None)
            except GLib.Error:
                pass
        wake_main()

    thread = threading.Thread(target=traffic)
    thread.start()
    wait_for(lambda: label.get_state().unpack() == '23 handled')
    thread.join()
    wait_for(lambda: server.props.failed == 3)
    assert notified_threads == {threading.get_ident()}, notified_threads

    metrics = server.props.metrics.unpack()
    assert metrics['handled'] == 23 and metrics['failed'] == 3, metrics
    assert metrics['workers'] == 1 and metrics['pending'] == 0, metrics
    assert server.get_metrics().unpack()['handled'] == 23
    assert server.props.handler_time_max >= server.props.handler_time_mean
    shutdown(server)

    # 0 turns metrics off.
    quiet = Spark.ModuleServer(handler=Recorder(), metrics_interval=0)
    quiet.start_in_thread()
    quiet.create_dispatcher().request_sync('Int', None, None, None)
    shutdown(quiet)
    assert quiet.props.handled == 0


def main():
    print('1..%d' % len(TESTS))
    failed = 0
    for number, func in enumerate(TESTS, 1):
        name = '/bindings/python/' + func.__name__.replace('_', '-')
        try:
            func()
        except Exception:
            failed += 1
            print('not ok %d %s' % (number, name))
            for line in traceback.format_exc().splitlines():
                print('# ' + line)
        else:
            print('ok %d %s' % (number, name))
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
