#!/usr/bin/env bash
# metrics.sh: what counting for /metrics costs the node's data path (docs/node.md, "Metrics").
# One node on a 2 GiB file written through in DIR; one client reads 4k at random, QD32, for
# RUNTIME seconds, with the node started afresh for each run: with `--metrics 127.0.0.1:0` and
# without, PAIRS (10) times each, each order in turn, after a warm-up run. Prints each run and
# the means (IOPS, and the node's CPU per I/O). Needs bash, python3 and the binaries.
# Usage: bench/metrics.sh [--bin DIR] [--dir DIR] [--runtime 4]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=""; DIRBASE=${TMPDIR:-/var/tmp}; RUNTIME=4; PAIRS=${PAIRS:-10}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN="$2"; shift 2;;
    --dir) DIRBASE="$2"; shift 2;;
    --runtime) RUNTIME="$2"; shift 2;;
    *) echo "usage: $0 [--bin DIR] [--dir DIR] [--runtime 4]" >&2; exit 2;;
  esac
done
if [[ -z "$BIN" ]]; then
  cargo build --release -q -p dasmesh-cli -p dasmesh-node -p dasmesh-bench
  BIN=$PWD/target/release
fi
DIR=$(mktemp -d "$DIRBASE/metrics.XXXXXX")
NODE=""
cleanup() { [[ -n "$NODE" ]] && kill "$NODE" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
dd if=/dev/zero of="$DIR/disk.img" bs=1M count=2048 oflag=direct status=none
"$BIN/dasmesh" keygen --out "$DIR/keys" >/dev/null
"$BIN/dasmesh" token mint --key "$DIR/keys" --device 0 --range 0..2G --rights rw >"$DIR/tok"
run() { # name [node flags...]
  local name=$1; shift
  [[ -n "$NODE" ]] && { kill "$NODE"; wait "$NODE" 2>/dev/null || true; }
  "$BIN/dasmesh-node" --listen 127.0.0.1:0 --backend "file:$DIR/disk.img" \
    --trust-key "$DIR/keys/public.key" "$@" >"$DIR/node.out" 2>/dev/null &
  NODE=$!
  for _ in $(seq 100); do grep -q '^listening ' "$DIR/node.out" 2>/dev/null && break; sleep 0.05; done
  "$BIN/dasmesh-bench" --no-progress --target "node:$(sed -n 's/^listening //p' "$DIR/node.out")" \
    --token "$DIR/tok" --cpu-pid "$NODE" --rw randread --bs 4k --iodepth 32 \
    --runtime "${RUNTIME}s" --json "$DIR/$name.json" >/dev/null 2>&1
}
run warmup
for i in $(seq "$PAIRS"); do
  if (( i % 2 )); then order="on off"; else order="off on"; fi
  for side in $order; do
    if [[ $side == on ]]; then run "on$i" --metrics 127.0.0.1:0; else run "off$i"; fi
  done
done
python3 - "$DIR" "$PAIRS" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
r = lambda name: json.load(open(f"{d}/{name}.json"))["results"][0]
for i in range(1, n + 1):
    a, b = r(f"on{i}"), r(f"off{i}")
    print(f"#{i}: metrics on {a['iops']:.0f} IOPS, node {a['pid_cpu_us_per_io']:.2f} us/IO; off {b['iops']:.0f}, {b['pid_cpu_us_per_io']:.2f}")
on = [r(f"on{i}") for i in range(1, n + 1)]; off = [r(f"off{i}") for i in range(1, n + 1)]
m = lambda xs, k: sum(x[k] for x in xs) / len(xs)
print(f"mean on / off: {m(on,'iops'):.0f} / {m(off,'iops'):.0f} IOPS = {m(on,'iops')/m(off,'iops'):.3f}; "
      f"node CPU per I/O {m(on,'pid_cpu_us_per_io'):.2f} / {m(off,'pid_cpu_us_per_io'):.2f} us")
PY
