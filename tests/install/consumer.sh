#!/bin/sh
# Install ferry into a scratch prefix, then build and run a consumer program
# out of tree: once through find_package(ferry), once through pkg-config
# (shared and static).
set -eu
src=$1 build=$2 here=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(ls -d "$prefix"/lib* | head -n1)

cmake -S "$here" -B "$work/cm" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/cm" >/dev/null
LD_LIBRARY_PATH=$libdir "$work/cm/consumer_shared"

export PKG_CONFIG_PATH=$libdir/pkgconfig
cc -std=c11 -Wall -Werror -o "$work/pc_shared" "$here/consumer.c" $(pkg-config --cflags --libs ferry)
LD_LIBRARY_PATH=$libdir "$work/pc_shared"
cc -std=c11 -Wall -Werror -o "$work/pc_static" "$here/consumer.c" $(pkg-config --cflags ferry) \
   "$libdir/libferry.a" $(pkg-config --static --libs-only-l ferry | sed 's/-lferry//')
"$work/pc_static"
# Each public header compiles on its own, in C and in C++ (extern "C" guards).
for h in "$prefix"/include/ferry.h "$prefix"/include/ferry/*.h; do
  rel=${h#"$prefix/include/"}
  printf '#include <%s>\n' "$rel" > "$work/one.c"
  cc -std=c11 -Wall -Wextra -Werror -I"$prefix/include" -c "$work/one.c" -o "$work/one.o"
  if command -v c++ >/dev/null 2>&1; then
    cp "$work/one.c" "$work/one.cc"
    c++ -std=c++17 -Wall -Werror -I"$prefix/include" -c "$work/one.cc" -o "$work/one.o"
  fi
done

# Only the public API is exported: no internal ferry__ symbols, nothing unprefixed.
bad=$(nm -D --defined-only "$libdir/libferry.so" | awk '$2 ~ /[TDBR]/ {print $3}' | grep -v '^ferry_[a-z]' || true)
if [ -n "$bad" ]; then
  echo "unexpected exported symbols:" >&2; echo "$bad" >&2; exit 1
fi
readelf -d "$libdir/libferry.so" | grep -q 'SONAME.*libferry.so.0' || { echo "no SONAME libferry.so.0" >&2; exit 1; }

echo "install consumer: find_package, pkg-config shared and static all ok"
