#!/bin/sh
# Install the Debian packages ferry needs, if any is missing.
# As root: apt-get installs them. Otherwise through sudo: at once when sudo needs
# no password, or with sudo's own password prompt when run from a terminal;
# with neither, it prints the exact apt-get line and fails.
# Usage: scripts/deps.sh [build|test|bench|all]
set -eu
need="cmake gcc make pkg-config liburing-dev libcbor-dev"
case "${1:-all}" in
  build) ;;
  test)  need="$need libcriterion-dev clang libuv1-dev doxygen" ;;
  bench) need="$need libck-dev gnuplot-nox" ;;
  all)   need="$need libcriterion-dev clang libuv1-dev doxygen libck-dev gnuplot-nox" ;;
  *) echo "usage: $0 [build|test|bench|all]" >&2; exit 2 ;;
esac
missing=""
for p in $need; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "ferry: installing missing packages:$missing" >&2
if [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
elif command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
  echo "ferry: run as root (or with sudo):  apt-get install -y$missing" >&2
  exit 1
fi
