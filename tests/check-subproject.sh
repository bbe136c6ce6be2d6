#!/bin/sh
# check-subproject.sh: build and run a program against spark-channel the
# two ways docs/building.md gives for a library that is not installed
#
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   check-subproject.sh SOURCE_ROOT BUILD_ROOT PYTHON MESON
#
# 1. As a meson subproject: copies tests/subproject/ to a temporary
#    directory, packs the source tree (the files git knows about, as they
#    are in the working tree, and new files not ignored; never the _build*
#    directories) into subprojects/packagecache/ with a [wrap-file] that
#    points at it, then runs `meson setup --force-fallback-for` and ninja,
#    and runs the program.
# 2. Uninstalled, through pkg-config: compiles the same program with
#    `pkg-config --cflags --libs spark-channel-1` and
#    PKG_CONFIG_PATH=BUILD_ROOT/meson-uninstalled, and runs it with
#    LD_LIBRARY_PATH pointing at the build.
#
# PYTHON MESON is how to run meson (the interpreter it runs on and its
# script). Exits 0 when both programs ran and got their reply.

set -eu

if [ $# -ne 4 ]; then
  echo "usage: $0 SOURCE_ROOT BUILD_ROOT PYTHON MESON" >&2
  exit 2
fi

source_root=$1
build_root=$2
python=$3
meson=$4
cc=${CC:-cc}

work=$(mktemp -d "${TMPDIR:-/tmp}/spark-subproject.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

version=$(sed -n "s/^  version: '\([^']*\)',$/\1/p" "$source_root/meson.build" | head -n 1)
[ -n "$version" ] || { echo "no version in $source_root/meson.build" >&2; exit 1; }
name="spark-channel-$version"

# The source tree as a release tarball would have it. Without git (a
# tarball of the sources), everything but build directories.
mkdir -p "$work/$name"
if git -C "$source_root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$source_root" && git ls-files --cached --others --exclude-standard |
     while IFS= read -r f; do
       # Tracked files deleted in the working tree are left out.
       if [ -e "$f" ]; then printf '%s\n' "$f"; fi
     done) > "$work/files"
else
  (cd "$source_root" && find . -path './_build*' -prune -o -path './build*' -prune -o \
     -path './.git' -prune -o -type f -print) > "$work/files"
fi
(cd "$source_root" && tar -cf - -T "$work/files") | tar -xf - -C "$work/$name"

if [ -n "$(find "$work/$name" -maxdepth 1 -name '_build*' -print)" ]; then
  echo "a build directory was copied into the subproject" >&2
  exit 1
fi

# The consumer project, with a [wrap-file] whose tarball is already in
# the package cache: meson checks its hash and unpacks it, no download.
cp -R "$source_root/tests/subproject" "$work/consumer"
mkdir -p "$work/consumer/subprojects/packagecache"
tarball="$name.tar.gz"
(cd "$work" && tar -czf "consumer/subprojects/packagecache/$tarball" "$name")
hash=$(sha256sum "$work/consumer/subprojects/packagecache/$tarball" | cut -d ' ' -f 1)
cat > "$work/consumer/subprojects/spark-channel.wrap" <<WRAP
[wrap-file]
directory = $name
source_url = https://example.invalid/$tarball
source_filename = $tarball
source_hash = $hash

[provide]
spark-channel-1 = libspark_dep
WRAP

echo "# 1. as a subproject"
"$python" "$meson" setup "$work/build" "$work/consumer" \
  --force-fallback-for=spark-channel-1 --wrap-mode=nodownload
grep -q "spark-channel-1" "$work/build/meson-logs/meson-log.txt"
ninja -C "$work/build"
"$work/build/consumer"

echo "# 2. uninstalled, through pkg-config"
pc_dir="$build_root/meson-uninstalled"
[ -f "$pc_dir/spark-channel-1-uninstalled.pc" ] || {
  echo "no $pc_dir/spark-channel-1-uninstalled.pc" >&2; exit 1; }
flags=$(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags --libs spark-channel-1)
echo "pkg-config --cflags --libs spark-channel-1: $flags"
# shellcheck disable=SC2086 # the flags are words
"$cc" -o "$work/consumer-pc" "$source_root/tests/subproject/consumer.c" $flags
LD_LIBRARY_PATH="$build_root/spark-channel${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$work/consumer-pc"
