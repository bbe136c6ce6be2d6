#!/usr/bin/python3
# pool.py: one module served by a pool of worker threads, in Python
#
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# A Python handler that declares itself safe to call from several threads
# at once (do_get_flags returns Spark.HandlerFlags.CONCURRENT), served by a
# pool of two workers that drain one mailbox, ordered by key.
#
# Python runs one thread at a time (the GIL): two workers do not make
# Python code run twice as fast. A pool pays when the handler spends its
# time outside Python, in a call that releases the GIL: blocking I/O, a
# subprocess, time.sleep() (which stands for such a call here), or a C
# library that releases it. CPU-bound Python code belongs in a subprocess,
# or in a module written in C.
#
# The program shows: a pool refusing a handler that does not declare
# itself concurrent; "lookup" requests, each waiting 0.1 s as if on the
# network, that the two workers serve side by side; commands ordered by
# key, each account's in the order they were sent; a broadcast, which each
# worker handles once on its own thread; and a DRAIN shutdown, which waits
# for every worker. It stops at the first outcome it did not expect: exits
# 1 with a traceback.
#
# Run it with a Python that has PyGObject (Debian: /usr/bin/python3 with
# python3-gi), and GI_TYPELIB_PATH / LD_LIBRARY_PATH pointing at
# spark-channel if it is not installed.

import sys
import threading
import time

import gi

gi.require_version('Spark', '1.0')
from gi.repository import GLib, GObject, Spark  # noqa: E402

N_WORKERS = 2
USERS = {'user123': 'Alice', 'user456': 'Bob', 'user789': 'Carol', 'user000': 'Dave'}


def say(text):
    """Prints a line in one write: the workers and the client print from
    different threads."""
    sys.stdout.write(text + '\n')
    sys.stdout.flush()


class Directory(GObject.Object, Spark.Handler):
    """"lookup" (s) -> s, "ledger.add" (ss), "ledger.read" (s) -> s and the
    broadcast "reload". Both workers call it at once: what it shares is
    under a lock, and what a worker keeps of its own is thread-local."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.ledgers = {}           # lock: account -> its entries
        self.reloaded = []          # lock: the worker threads that reloaded
        self.local = threading.local()

    def do_get_flags(self):
        # Asked once, when the server starts.
        return Spark.HandlerFlags.CONCURRENT

    def do_handle_request(self, name, parameters, cancellable):
        if name == 'lookup':
            user = parameters.unpack()
            time.sleep(0.1)         # the network: releases the GIL
            return GLib.Variant('s', USERS.get(user, ''))
        if name == 'ledger.read':
            account, = parameters.unpack()
            with self.lock:
                return GLib.Variant('s', ''.join(self.ledgers.get(account, [])))
        raise GLib.Error.new_literal(Spark.ChannelError.quark(),
                                     '“%s” is not a request of the directory' % name,
                                     Spark.ChannelError.NOT_SUPPORTED)

    def do_handle_command(self, name, parameters, cancellable):
        if name == 'ledger.add':
            account, entry = parameters.unpack()
            time.sleep(0.005)       # a write somewhere, outside the lock
            with self.lock:
                self.ledgers.setdefault(account, []).append(entry)
            return True
        if name == 'reload':
            self.local.cache = {}   # this worker's own
            with self.lock:
                self.reloaded.append(threading.get_ident())
            return True
        raise GLib.Error.new_literal(Spark.ChannelError.quark(),
                                     '“%s” is not a command of the directory' % name,
                                     Spark.ChannelError.NOT_SUPPORTED)


class Plain(GObject.Object, Spark.Handler):
    """Declares nothing: called by one thread at a time."""

    def do_handle_request(self, name, parameters, cancellable):
        return GLib.Variant('s', name)


def shut_down(server):
    """Stops server (DRAIN) and waits until every worker's thread has ended."""
    stopped = []
    server.shutdown_async(Spark.ShutdownMode.DRAIN, None,
                          lambda s, result: stopped.append(s.shutdown_finish(result)))
    while not stopped:
        GLib.MainContext.default().iteration(True)


def main():
    # A pool refuses a handler that does not declare itself concurrent;
    # the refused start does not count as a start.
    plain = Spark.ModuleServer(handler=Plain(), name='plain', workers=N_WORKERS)
    try:
        plain.start_in_thread()
    except GLib.Error as error:
        if not error.matches(Spark.ChannelError.quark(), Spark.ChannelError.NOT_SUPPORTED):
            raise
        say('pool: refused: %s' % error.message)
    else:
        raise AssertionError('a pool started a handler that is not concurrent')

    directory = Directory()
    server = Spark.ModuleServer(handler=directory, name='directory',
                                workers=N_WORKERS, ordering=Spark.Ordering.KEY)
    server.start_in_thread()
    dispatcher = server.create_dispatcher()
    try:
        say('pool: %d workers, ordered by key' % server.props.workers)

        # Lookups, all in flight at once. Their key is the user: different
        # users are served side by side while each waits on its "network".
        replies = {}

        def on_reply(source, result, user):
            replies[user] = source.request_finish(result).unpack()

        for user in USERS:
            dispatcher.request_async('lookup', GLib.Variant('s', user), GLib.VariantType('s'), None,
                                     on_reply, user)

        # Entries of two accounts, interleaved: keyed by account, each
        # account's are handled in the order they were sent.
        for alice, bob in zip('abcdef', 'uvwxyz'):
            dispatcher.send_command('ledger.add', GLib.Variant('(ss)', ('alice', alice)), None)
            dispatcher.send_command('ledger.add', GLib.Variant('(ss)', ('bob', bob)), None)

        while len(replies) < len(USERS):
            GLib.MainContext.default().iteration(True)
        for user in USERS:
            say('client: lookup(%s) -> %s' % (user, replies[user]))

        for account, expected in (('alice', 'abcdef'), ('bob', 'uvwxyz')):
            # Keyed too: handled after the account's entries.
            ledger = dispatcher.request_sync('ledger.read', GLib.Variant('(s)', (account,)),
                                             GLib.VariantType('s'), None).unpack()
            assert ledger == expected, 'the entries of %s came out of order: %s' % (account, ledger)
            say("client: %s's entries, in order: %s" % (account, ledger))

        # Every worker reloads, on its own thread.
        dispatcher.broadcast_command('reload', None)
    finally:
        shut_down(server)

    # DRAIN handled everything queued, each copy of the broadcast too.
    assert len(directory.reloaded) == N_WORKERS and len(set(directory.reloaded)) == N_WORKERS, \
        directory.reloaded
    say('client: reload reached each of the %d workers once' % N_WORKERS)
    say('done: the pool has drained and stopped')
    return 0


if __name__ == '__main__':
    sys.exit(main())
