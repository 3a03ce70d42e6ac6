#!/usr/bin/env bash
# demo.sh: the README's first command. Builds dasmesh, starts a node on a file backend, mints a
# token, writes data, reads it back, searches it, verifies every byte, and shuts the node down.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== building (release)"
cargo build --release --workspace --bins -q
BIN=$PWD/target/release
DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/dasmesh-demo.XXXXXX")
NODE_PID=""
cleanup() {
  if [[ -n "$NODE_PID" ]]; then
    kill "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" 2>/dev/null || true # its files go away next
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "1. a signing key pair for the control plane (here: for the demo)"
"$BIN/dasmesh" keygen --out "$DIR/keys"

step "2. a node serving a 256 MiB file (O_DIRECT, io_uring) on a free loopback port"
"$BIN/dasmesh-node" --listen 127.0.0.1:0 --backend "file:$DIR/disk.img:256M" \
  --trust-key "$DIR/keys/public.key" >"$DIR/node.out" 2>"$DIR/node.log" &
NODE_PID=$!
# Up to 10 s for the `listening ADDR` line; a node that exits early stops the wait at once.
for _ in $(seq 100); do
  grep -q '^listening ' "$DIR/node.out" 2>/dev/null && break
  kill -0 "$NODE_PID" 2>/dev/null || break
  sleep 0.1
done
ADDR=$(sed -n 's/^listening //p' "$DIR/node.out")
[[ -n "$ADDR" ]] || { echo "node did not start:"; cat "$DIR/node.log"; exit 1; }
echo "node listening on $ADDR (pid $NODE_PID)"

step "3. a read-write token for device 0, bytes 0..256M, valid 1h"
"$BIN/dasmesh" token mint --key "$DIR/keys" --device 0 --range 0..256M --rights rw --ttl 1h --epoch 1 >"$DIR/token"
"$BIN/dasmesh" token show --token-file "$DIR/token"

step "4. write 4 MiB of random data at offset 1M"
head -c 4M /dev/urandom >"$DIR/data.bin"
printf 'the-dasmesh-demo-marker' | dd of="$DIR/data.bin" bs=1 seek=$((3 * 1024 * 1024 - 10)) conv=notrunc status=none
IO=(--node "$ADDR" --token-file "$DIR/token" --device 0)
"$BIN/dasmesh" io write "${IO[@]}" --offset 1M --input "$DIR/data.bin"

step "5. flush, then read it back and compare"
"$BIN/dasmesh" io flush "${IO[@]}"
"$BIN/dasmesh" io read "${IO[@]}" --offset 1M --length 4M --output "$DIR/back.bin"
cmp "$DIR/data.bin" "$DIR/back.bin"
echo "verified: all $(stat -c %s "$DIR/back.bin") bytes identical"

step "6. search the node for the marker (the scan runs on the node, across block boundaries)"
HITS=$("$BIN/dasmesh" io search "${IO[@]}" --offset 0 --length 256M --pattern the-dasmesh-demo-marker)
echo "hits at byte offsets: $HITS"
[[ "$HITS" == "$((1024 * 1024 + 3 * 1024 * 1024 - 10))" ]] || { echo "unexpected search result"; exit 1; }

step "7. a refused request: a read-only token cannot write"
"$BIN/dasmesh" token mint --key "$DIR/keys" --device 0 --range 0..256M --rights ro >"$DIR/ro-token"
if "$BIN/dasmesh" io write --node "$ADDR" --token-file "$DIR/ro-token" --device 0 --offset 0 --input "$DIR/data.bin" 2>"$DIR/err"; then
  echo "a read-only write was accepted"; exit 1
fi
echo "refused as expected: $(cat "$DIR/err")"

step "8. a short benchmark of the 4 MiB written: read directly from the file (the baseline), then through the node"
"$BIN/dasmesh-bench" --quick --no-progress --target "local:$DIR/disk.img" --target "node:$ADDR" --token "$DIR/token" \
  --rw randread --bs 4k --iodepth 32 --offset 1M --size 4M --json "$DIR/bench.json"

step "9. clean shutdown (SIGTERM): finish in-flight I/O, flush, exit 0"
kill -TERM "$NODE_PID"
# Not `wait && echo`: set -e ignores a failure on the left of &&, and a bad exit must fail the demo.
rc=0
wait "$NODE_PID" || rc=$?
NODE_PID=""
if ((rc != 0)); then
  echo "node exited with status $rc:"
  tail -n 20 "$DIR/node.log"
  exit 1
fi
echo "node exited 0"
echo
echo "demo complete"
