#!/usr/bin/python3
# check-example.py: runs an example and checks what it printed
#
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Usage: check-example.py COMMAND [ARGUMENT...]
#
# Every example (C, Python, JavaScript, Vala) runs the crate's key/value
# scenario and prints the same lines. The module and the client may run on
# different threads, so only the lines are checked, not their order. The
# example must exit with 0 and print nothing on stderr (no warning, no
# critical, no traceback).

import subprocess
import sys

EXPECTED = [
    'client: UpdateData(user123, 3)',
    'client: data updated: success=true',
    'client: data returned for user123: [1, 2, 3]',
    'module: event logged: User logged in',
    'client: command sent: LogEvent',
    'client: shutdown sent',
    'client: the module server has stopped (token cancelled)',
]


def main(argv):
    if len(argv) < 2:
        print('usage: check-example.py COMMAND [ARGUMENT...]', file=sys.stderr)
        return 2

    result = subprocess.run(argv[1:], capture_output=True, text=True, timeout=60)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)

    lines = result.stdout.splitlines()
    problems = []
    if result.returncode != 0:
        problems.append('exited with %d' % result.returncode)
    if result.stderr.strip():
        problems.append('printed on stderr')
    for line in EXPECTED:
        if lines.count(line) != 1:
            problems.append('printed %r %d times, not once' % (line, lines.count(line)))
    if not lines or not lines[-1].startswith('done: '):
        problems.append('did not end with a "done: " line')

    for problem in problems:
        print('check-example: %s %s' % (argv[1], problem), file=sys.stderr)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
