#!/bin/sh
# System packages the test suite links against (Debian's static zlib and
# bzip2 archives, g++ for the C++ fixtures, gdb for the debugger test).
# Installed only when missing.
set -e
need=""
for pkg in zlib1g-dev libbz2-dev binutils gcc g++ gdb; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
done
if [ -n "$need" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need
fi
