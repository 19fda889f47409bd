#!/bin/sh
# Two unrelated processes through a named endpoint: start the server, ask
# it for a sum from a separate client process, stop it with SIGINT.
set -eu
server=$1 client=$2
name="ferry-example-$$"
"$server" "$name" > /dev/null 2>&1 &
spid=$!
trap 'kill -INT $spid 2>/dev/null || true' EXIT
out=""
i=0
while [ $i -lt 50 ]; do
  if out=$("$client" "$name" 1 2 3 40 2>&1); then break; fi
  i=$((i + 1)); sleep 0.1
done
echo "$out"
kill -INT $spid
wait $spid || true
trap - EXIT
case "$out" in
  *46*) echo "named endpoint ok: an unrelated client got its answer" ;;
  *) echo "named endpoint WRONG: $out"; exit 1 ;;
esac
