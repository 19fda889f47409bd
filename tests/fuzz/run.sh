#!/bin/sh
# Build the clone decoder's fuzz target with clang (libFuzzer + ASan + UBSan)
# and run it for a bounded time on the seed corpus.
#   tests/fuzz/run.sh [SECONDS]      fuzz for SECONDS (default 60)
#   tests/fuzz/run.sh --regen        rewrite the seed corpus (tests/fuzz/corpus)
# New inputs go to build-fuzz/corpus, never into the repository; a crash
# leaves its input in build-fuzz/ and makes this script fail.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build="$root/build-fuzz"
jobs=$(nproc 2>/dev/null || echo 2)

command -v clang >/dev/null 2>&1 || { echo "run.sh: clang is needed (apt-get install clang)" >&2; exit 1; }
cmake -S "$here" -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build "$build" -j "$jobs" >/dev/null

if [ "${1:-}" = "--regen" ]; then
  rm -rf "$here/corpus"
  mkdir -p "$here/corpus"
  "$build/gen_corpus" "$here/corpus"
  echo "run.sh: wrote $(ls "$here/corpus" | wc -l) seeds to $here/corpus"
  exit 0
fi

secs=${1:-60}
mkdir -p "$build/corpus"
cd "$build"
# -rss_limit_mb: a small input must never make a big allocation.
exec ./clone_fuzz -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -max_len=4096 \
  -dict="$here/clone.dict" -print_final_stats=1 "$build/corpus" "$here/corpus"
