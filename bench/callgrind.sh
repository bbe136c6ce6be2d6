#!/bin/sh
# callgrind.sh: instructions per request and per command, counted by callgrind
#
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Usage: bench/callgrind.sh [PATH/TO/spark-bench] [WORKLOAD:IMPL ...]
#        (or `ninja -C BUILDDIR bench-callgrind`)
#
# Instruction counts are stable on a noisy machine where times are not.
# Each case runs `spark-bench --callgrind` twice under valgrind's callgrind
# tool, with a small and a larger number of operations; the difference in
# instructions (all threads: client and server) divided by the difference
# in operations is the cost of one operation, without the setup and
# teardown both runs share (threads, servers, main contexts).
#
# Valgrind runs one thread at a time, so batches (how many messages one
# wakeup serves) are not those of a native run: compare implementations
# with each other here, and wall-clock ratios with spark-bench itself.
#
# A blocking caller (request_sync) spins before it parks; how long it spins
# under valgrind depends on valgrind's thread scheduling, not on the
# library. So the instructions spent inside spark_sync_waiter_wait() are
# left out of instr_per_op and shown apart as spin_per_op (SPARK_SPIN=0 is
# set as well, for a library that reads it).

set -eu

bench=${1:-}
if [ -z "$bench" ]; then
  for candidate in _build/bench/spark-bench build/bench/spark-bench; do
    if [ -x "$candidate" ]; then bench=$candidate; break; fi
  done
fi
if [ -z "$bench" ] || [ ! -x "$bench" ]; then
  echo "usage: $0 PATH/TO/spark-bench [WORKLOAD:IMPL ...]" >&2
  exit 2
fi
[ $# -gt 0 ] && shift

if ! command -v valgrind >/dev/null 2>&1; then
  echo "$0: valgrind is not installed" >&2
  exit 2
fi

if [ $# -gt 0 ]; then
  cases=$*
else
  cases="request_pipelined:spark_full request_pipelined:spark_async
request_pipelined:floor request_pipelined:idiom
request_seq:spark_sync request_seq:spark_async request_seq:floor request_seq:idiom
command_throughput:spark command_throughput:floor command_throughput:idiom
command_mpsc:spark command_mpsc:floor command_mpsc:idiom
queued_bytes:spark queued_bytes:floor queued_bytes:idiom
dbus_seq:raw dbus_seq:spark dbus_pipelined:raw dbus_pipelined:spark"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

export SPARK_SPIN=0

# instructions WORKLOAD IMPL OPS: prints "TOTAL SPIN", the instructions of
# one run (all threads) and those inside spark_sync_waiter_wait()
instructions () {
  # The D-Bus ones run peer to peer, both ends in this process; their
  # baseline is raw GDBus (see bench_dbus_callgrind()).
  dbus=
  case $1 in dbus_*) dbus=--dbus ;; esac
  # shellcheck disable=SC2086
  if ! valgrind --tool=callgrind --callgrind-out-file="$tmp/out" \
      "$bench" --callgrind $dbus --workload "$1" --impl "$2" --ops "$3" \
      >"$tmp/stdout" 2>"$tmp/log"; then
    cat "$tmp/log" >&2
    echo "$0: $1 $2 failed under callgrind" >&2
    exit 1
  fi
  total=$(sed -n 's/^summary: *//p; s/^totals: *//p' "$tmp/out" | head -n 1)
  spin=$(callgrind_annotate --inclusive=yes --threshold=100 "$tmp/out" 2>/dev/null |
         awk '/:spark_sync_waiter_wait( |$)/ { gsub(",", "", $1); print $1; exit }')
  # Calls to malloc, calloc and realloc, from anywhere (GLib's GVariant
  # and GObject code included): callgrind names a function once, as
  # "cfn=(ID) name", then by its ID alone.
  allocs=$(awk '
    /^c?fn=\(/ {
      id = $1; sub(/^c?fn=/, "", id); sub(/\).*/, ")", id)
      if (NF > 1) name[id] = $2
      if ($1 ~ /^cfn=/) callee = name[id]
      next
    }
    /^calls=/ {
      if (callee == "malloc" || callee == "calloc" || callee == "realloc") {
        n = $1; sub(/^calls=/, "", n); total += n
      }
    }
    END { print total + 0 }' "$tmp/out")
  echo "$total ${spin:-0} $allocs"
}

printf '%-19s %-12s %12s %12s %10s\n' workload impl instr/op spin/op allocs/op >&2
for case in $cases; do
  workload=${case%%:*}
  impl=${case#*:}
  case $workload in
    request_*) small=2000; large=10000 ;;
    dbus_*) small=200; large=1200 ;;
    *) small=10000; large=50000 ;;
  esac

  instructions "$workload" "$impl" "$small" >"$tmp/small"
  instructions "$workload" "$impl" "$large" >"$tmp/large"
  read -r ir_small spin_small alloc_small <"$tmp/small"
  read -r ir_large spin_large alloc_large <"$tmp/large"
  per_op=$(awk -v a="$ir_small" -v sa="$spin_small" -v b="$ir_large" -v sb="$spin_large" \
           -v n="$small" -v m="$large" 'BEGIN { printf "%.0f", ((b - sb) - (a - sa)) / (m - n) }')
  spin_op=$(awk -v sa="$spin_small" -v sb="$spin_large" -v n="$small" -v m="$large" \
            'BEGIN { printf "%.0f", (sb - sa) / (m - n) }')

  allocs_op=$(awk -v a="$alloc_small" -v b="$alloc_large" -v n="$small" -v m="$large" \
              'BEGIN { printf "%.2f", (b - a) / (m - n) }')

  printf '%-19s %-12s %12s %12s %10s\n' "$workload" "$impl" "$per_op" "$spin_op" "$allocs_op" >&2
  echo "callgrind workload=$workload impl=$impl instr_per_op=$per_op spin_per_op=$spin_op allocs_per_op=$allocs_op" >>"$tmp/results"
done

cat "$tmp/results"

# Ratios against the baselines of the same workload.
echo
awk '
  { split($2, w, "="); split($3, i, "="); split($4, v, "="); split($6, a, "=");
    key[NR] = w[2] " " i[2]; val[w[2], i[2]] = v[2]; al[NR] = a[2]; wl[NR] = w[2]; im[NR] = i[2] }
  END {
    printf "%-19s %-12s %10s %9s %9s %10s\n", "workload", "impl", "instr/op", "/ floor", "/ idiom", "allocs/op"
    # (for dbus_*, "/ idiom" is against raw GDBus)
    for (n = 1; n <= NR; n++) {
      f = val[wl[n], "floor"]; d = val[wl[n], "idiom"]
      if (d == 0) d = val[wl[n], "raw"]
      printf "%-19s %-12s %10d %9s %9s %10s\n", wl[n], im[n], val[wl[n], im[n]],
             (f > 0 && im[n] != "floor") ? sprintf("%.2f", val[wl[n], im[n]] / f) : "-",
             (d > 0 && im[n] != "idiom" && im[n] != "raw") ? sprintf("%.2f", val[wl[n], im[n]] / d) : "-",
             al[n]
    }
  }' "$tmp/results"
