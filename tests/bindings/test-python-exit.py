#!/usr/bin/python3
# test-python-exit.py: Python programs that exit while a handler thread
# still has work
#
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Runs python-exit-clean.py (shuts its server down from an atexit
# function, as docs/python.md says) and python-exit-unclean.py (does not)
# as child processes of the same interpreter, with the environment of the
# bindings suite (G_DEBUG=fatal-criticals: a critical is a crash too).
#
# The unclean program races the interpreter's finalization against the
# server thread, so it runs several times: it must never die of a signal,
# and with G_MESSAGES_DEBUG=SparkChannel the library says (a debug
# message: on stdout) when it dropped what a Python vfunc returned during
# finalization, which shows that a run took the path this is about.
# Prints TAP.

import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GUARD_MESSAGE = 'The Python interpreter is exiting'
UNCLEAN_RUNS = 40
UNCLEAN_ENOUGH = 5   # runs that took the finalization path


def run(program, *args):
    env = dict(os.environ)
    env['G_MESSAGES_DEBUG'] = 'SparkChannel'
    # Should a run die of a signal, its threads' Python stacks are in its
    # stderr, which the failure shows.
    env['PYTHONFAULTHANDLER'] = '1'
    return subprocess.run([sys.executable, os.path.join(HERE, program)] + list(args),
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)


def describe(status):
    if status < 0:
        return 'killed by %s' % signal.Signals(-status).name
    return 'exit status %d' % status


def clean_exit_with_atexit_shutdown():
    for attempt in range(5):
        child = run('python-exit-clean.py', '200')
        assert child.returncode == 0, '%s\n%s' % (describe(child.returncode), child.stderr)
        assert child.stdout.splitlines()[-1:] == ['stopped'], child.stdout
        assert 'CRITICAL' not in child.stderr, child.stderr
        # The server was stopped before Python finalized: nothing was
        # called into a finalizing interpreter.
        assert GUARD_MESSAGE not in child.stdout + child.stderr, child.stdout + child.stderr
    return None


def unclean_exit_does_not_crash():
    took_path = 0
    for attempt in range(UNCLEAN_RUNS):
        child = run('python-exit-unclean.py', '100')
        assert child.returncode == 0, 'run %d: %s\n%s' % (attempt + 1, describe(child.returncode),
                                                          child.stderr[-2000:])
        assert 'CRITICAL' not in child.stderr, child.stderr[-2000:]
        if GUARD_MESSAGE in child.stdout:
            took_path += 1
            if took_path == UNCLEAN_ENOUGH:
                break
    if took_path == 0:
        return 'SKIP the interpreter never finalized with requests queued in %d runs' % UNCLEAN_RUNS
    return None


TESTS = [
    ('/bindings/python/exit/atexit-shutdown', clean_exit_with_atexit_shutdown),
    ('/bindings/python/exit/unclean-no-crash', unclean_exit_does_not_crash),
]


def main():
    print('1..%d' % len(TESTS))
    failed = 0
    for number, (name, func) in enumerate(TESTS, 1):
        try:
            directive = func()
        except Exception as error:
            failed += 1
            print('not ok %d %s' % (number, name))
            for line in str(error).splitlines():
                print('# ' + line)
        else:
            print('ok %d %s%s' % (number, name, ' # ' + directive if directive else ''))
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
