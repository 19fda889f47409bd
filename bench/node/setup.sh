#!/bin/sh
# bench/node/setup.sh DIR - install the Node peers of ferry-bench (piscina,
# pinned by package-lock.json here) into DIR/node_modules, outside the source
# tree. ferry-bench finds them at <its build dir>/node (so DIR is usually
# build-release/node) or wherever FERRY_BENCH_NODE_DIR points.
#
# Quiet and never fatal: without node or npm it exits 0 at once (the Node
# rows then say "skipped"); a failed install leaves one line on stderr and
# exits 0 too, so a bench run goes on without the peers. A second run with
# the same lock file does nothing (the lock's checksum is kept in DIR).
set -u
dir=${1:?usage: setup.sh DIR}
command -v node >/dev/null 2>&1 || exit 0
command -v npm >/dev/null 2>&1 || exit 0
src=$(cd "$(dirname "$0")" && pwd)
sum=$(cksum < "$src/package-lock.json")
if [ -f "$dir/.lock-sum" ] && [ "$(cat "$dir/.lock-sum")" = "$sum" ] &&
   [ -f "$dir/node_modules/piscina/package.json" ]; then
	exit 0
fi
mkdir -p "$dir" || { echo "bench/node/setup.sh: cannot create $dir" >&2; exit 0; }
dir=$(cd "$dir" && pwd)   # absolute: the install below runs inside it
cp "$src/package.json" "$src/package-lock.json" "$dir/" || exit 0
# --omit=optional: piscina's native "nice" helper is not needed.
if (cd "$dir" && npm ci --silent --omit=optional --ignore-scripts --no-audit --no-fund \
	>/dev/null 2>"$dir/npm.log"); then
	echo "$sum" > "$dir/.lock-sum"
else
	echo "bench/node/setup.sh: npm ci failed (see $dir/npm.log); the piscina rows will be skipped" >&2
fi
exit 0
