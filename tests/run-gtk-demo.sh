#!/bin/sh
# run-gtk-demo.sh DEMO SCREENSHOT [ARG...]: runs the GTK demo's self-test
# under Xvfb, with the demo's further ARGs (--workers=2)
#
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Exits 77 (skipped) when the demo was not built (no GTK 4, or
# -Dgtk-demo=disabled) or xvfb-run is missing; otherwise with the demo's
# own status.

if [ $# -lt 1 ] || [ ! -x "$1" ]; then
  echo "The GTK demo was not built (GTK 4 not found, or -Dgtk-demo=disabled): skipped"
  exit 77
fi
if ! command -v xvfb-run >/dev/null 2>&1 || ! command -v xauth >/dev/null 2>&1; then
  echo "xvfb-run (Debian: xvfb, xauth) is missing: skipped"
  exit 77
fi

demo=$1
screenshot=${2:-}
shift
[ $# -gt 0 ] && shift

# A display of our own (-a picks a free one), X11 only. Without a GPU, GL
# would be Mesa's llvmpipe, whose threads compete for the cores: the cairo
# renderer draws on the main thread instead, GL left off. No accessibility
# bus and no dconf are needed to show a window.
export GDK_BACKEND=x11
export GDK_DEBUG="${GDK_DEBUG:-gl-disable}"
export GSK_RENDERER="${GSK_RENDERER:-cairo}"
export GTK_A11Y=none
export GSETTINGS_BACKEND=memory
export NO_AT_BRIDGE=1

exec xvfb-run -a -s "-screen 0 1024x768x24 -nolisten tcp" \
  "$demo" --self-test ${screenshot:+"--screenshot=$screenshot"} "$@"
