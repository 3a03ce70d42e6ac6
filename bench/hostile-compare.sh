#!/usr/bin/env bash
# hostile-compare.sh: what misbehaving clients cost a well-behaved one (issue 16, item 11). Starts
# a node (defaults: adaptive polling, one reactor, default budgets and timeouts) on a prefilled
# file and runs dasmesh-bench 4k random reads at QD1 and QD32 against it, each twice in the same
# run: alone, then with --hostile N misbehaving connections open (stalled handshakes, WRITEs
# without their payload, unread 1 MiB READ replies; bench/src/hostile.rs). Prints p50/p99, IOPS
# and the node's CPU per I/O for both, and the ratios. Target: within 2x of alone.
# Usage: bench/hostile-compare.sh [--hostile 1000] [--runtime 10s] [--dir /var/tmp] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTILE=1000; RUNTIME=10s; BASE=${TMPDIR:-/var/tmp}; OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --hostile) HOSTILE="$2"; shift 2;;
    --runtime) RUNTIME="$2"; shift 2;;
    --dir) BASE="$2"; shift 2;;
    --out) OUT="$2"; shift 2;;
    *) echo "usage: $0 [--hostile 1000] [--runtime 10s] [--dir /var/tmp] [--out DIR]" >&2; exit 2;;
  esac
done
# Each hostile connection is a descriptor here and one in the node (which inherits this limit).
ulimit -n $(( HOSTILE * 2 + 1024 > 4096 ? HOSTILE * 2 + 1024 : 4096 ))
cargo build --release -q -p dasmesh-node -p dasmesh-bench -p dasmesh-cli
B=$PWD/target/release
DIR=$(mktemp -d "$BASE/dasmesh-hostile.XXXXXX")
OUT=${OUT:-$DIR/out}; mkdir -p "$OUT"
NODE_PID=""
cleanup() { [[ -n "$NODE_PID" ]] && kill "$NODE_PID" 2>/dev/null; rm -f "$DIR/disk.img"; [[ "$OUT" == "$DIR/out" ]] || rm -rf "$DIR"; }
trap cleanup EXIT

"$B/dasmesh" keygen --out "$DIR/keys" >/dev/null
"$B/dasmesh-node" --listen 127.0.0.1:0 --backend "file:$DIR/disk.img:1G" --no-local-socket \
  --trust-key "$DIR/keys/public.key" >"$DIR/node.out" 2>"$DIR/node.log" &
NODE_PID=$!
for _ in $(seq 100); do grep -q '^listening ' "$DIR/node.out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^listening //p' "$DIR/node.out")
"$B/dasmesh" token mint --key "$DIR/keys" --device 0 --range 0..1G --rights rw >"$DIR/tok"
echo "== prefilling the 1 GiB file through the node ($DIR)"
"$B/dasmesh-bench" --no-progress --target "node:$ADDR" --token "$DIR/tok" --rw write --bs 1M \
  --iodepth 4 --size 1G --runtime 3s --ramp 0s >/dev/null || true

for qd in 1 32; do
  echo "== randread 4k QD$qd: alone, then with $HOSTILE hostile connections"
  "$B/dasmesh-bench" --no-progress --target "node:$ADDR" --token "$DIR/tok" --rw randread --bs 4k \
    --iodepth "$qd" --runtime "$RUNTIME" --hostile "$HOSTILE" --cpu-pid "$NODE_PID" \
    --json "$OUT/randread-4k-qd$qd.json"
done
echo "node VmRSS at the end: $(awk '/VmRSS/ {print $2, $3}' /proc/$NODE_PID/status)"
echo "results: $OUT"
