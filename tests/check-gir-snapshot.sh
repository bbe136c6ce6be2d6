#!/bin/sh
# The generated Spark-1.0.gir must equal the checked-in gir/Spark-1.0.gir.
set -eu
generated=$1
snapshot=$2
if ! cmp -s "$generated" "$snapshot"; then
  echo "The generated $generated differs from $snapshot:"
  diff -u "$snapshot" "$generated" | head -50
  echo "If the API change is intended, copy the generated file over the snapshot in the same commit."
  exit 1
fi
echo "gir snapshot matches"
