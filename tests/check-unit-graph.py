#!/usr/bin/python3
# check-unit-graph.py: the private units' include graph has no cycle
#
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# A unit is a spark-channel/spark-NAME.c with its spark-NAME-private.h (or
# its public spark-NAME.h). An edge A -> B: A's .c or private header
# includes B's private header. Prints the graph, one unit per line, and
# fails if a unit reaches itself.

import os
import re
import sys

srcdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), '..', 'spark-channel')
include_re = re.compile(r'^#include "spark-([a-z-]+)-private\.h"', re.M)
unit_re = re.compile(r'^spark-([a-z-]+?)(-private)?\.[ch]$')

graph = {}
for name in sorted(os.listdir(srcdir)):
    m = unit_re.match(name)
    if not m:
        continue
    unit = m.group(1)
    with open(os.path.join(srcdir, name), encoding='utf-8') as f:
        deps = set(include_re.findall(f.read()))
    graph.setdefault(unit, set()).update(d for d in deps if d != unit)

def find_cycle(start):
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for dep in sorted(graph.get(node, ())):
            if dep == start:
                return path + [dep]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, path + [dep]))
    return None

for unit in sorted(graph):
    print('%-16s -> %s' % (unit, ', '.join(sorted(graph[unit])) or '(GLib only)'))

cycles = [c for c in (find_cycle(u) for u in sorted(graph)) if c]
for cycle in cycles:
    print('cycle: ' + ' -> '.join(cycle), file=sys.stderr)
sys.exit(1 if cycles else 0)
