#!/bin/sh
# Every public header except spark-channel.h must refuse direct inclusion.
set -eu
dir=$1
status=0
for header in "$dir"/spark-*.h "$dir"/spark-*.h.in; do
  case "$header" in
    */spark-channel.h|*-private.h) continue ;;
  esac
  if ! grep -q '#pragma once' "$header" ||
     ! grep -q 'if !defined(SPARK_INSIDE) && !defined(SPARK_COMPILATION)' "$header" ||
     ! grep -q '# error "Only <spark-channel.h> can be included directly."' "$header"; then
    echo "not ok: $header lacks the SPARK_INSIDE guard"
    status=1
  else
    echo "ok: $header"
  fi
done
exit $status
