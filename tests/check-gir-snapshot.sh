#!/bin/sh
# The generated Spark-1.0.gir must equal the checked-in gir/Spark-1.0.gir,
# so that every API change (and every doc change) shows up in review.
# Source line numbers are ignored: they move with every code edit and say
# nothing about the API.
set -eu
generated=$1
snapshot=$2
strip_lines() {
  sed -E -e 's/ line="[0-9]+"//g' "$1"
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
strip_lines "$generated" > "$tmp/generated"
strip_lines "$snapshot" > "$tmp/snapshot"
if ! cmp -s "$tmp/generated" "$tmp/snapshot"; then
  echo "The generated $generated differs from $snapshot:"
  diff -u "$tmp/snapshot" "$tmp/generated" | head -60
  echo "If the API change is intended, copy the generated file over the snapshot in the same commit."
  exit 1
fi
echo "gir snapshot matches (line numbers aside)"
