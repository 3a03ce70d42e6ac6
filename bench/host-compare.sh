#!/usr/bin/env bash
# host-compare.sh: the host library against the bench's raw protocol engine, in one run, on the
# same node. A controller and two nodes with memory backends (TCP only: --no-local-socket), a
# single volume on node 1 and a mirror:2 over both; dasmesh-bench runs `node:` (one raw
# connection per job, driven like a fio engine) and `volume:` (dasmesh_client::Volume, exactly as
# a host mounts it) one after the other on each workload, and prints client CPU per I/O beside
# every IOPS figure. Needs only bash and the binaries (no python, no fio), so it runs on the
# `device` machine too.
# Usage: bench/host-compare.sh [--bin DIR] [--runtime 5s] [--jobs "1 4 8"] [--out DIR] [--quick]
#   NODE1_CPUS / NODE2_CPUS / CTL_CPUS / BENCH_CPUS: taskset CPU lists (default 0 / 0 / 0 / 1 on
#   a 2-core machine; on more cores give each its own). NODE_FLAGS: extra node flags (e.g.
#   "--poll interrupt" when two nodes share a core and must not spin against each other).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=""; RUNTIME=5s; JOBS="1"; OUT=""; RAMP=1s
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN="$2"; shift 2;;
    --runtime) RUNTIME="$2"; shift 2;;
    --jobs) JOBS="$2"; shift 2;;
    --out) OUT="$2"; shift 2;;
    --quick) RUNTIME=2s; RAMP=300ms; shift;;
    *) echo "usage: $0 [--bin DIR] [--runtime 5s] [--jobs \"1 4 8\"] [--out DIR] [--quick]" >&2; exit 2;;
  esac
done
if [[ -z "$BIN" ]]; then
  cargo build --release -q -p dasmesh-cli -p dasmesh-node -p dasmesh-controller -p dasmesh-bench
  BIN=$PWD/target/release
fi
NODE_FLAGS=${NODE_FLAGS:-}; NODE1_CPUS=${NODE1_CPUS:-0}; NODE2_CPUS=${NODE2_CPUS:-0}; CTL_CPUS=${CTL_CPUS:-0}; BENCH_CPUS=${BENCH_CPUS:-1}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/host-compare.XXXXXX")
OUT=${OUT:-$DIR/out}; mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR/ctl" "$DIR/n1" "$DIR/n2"; }
trap cleanup EXIT
addr_of() { # file: waits for its `listening ADDR` line
  for _ in $(seq 200); do [[ -s "$1" ]] && grep -q '^listening ' "$1" && { sed -n 's/^listening //p' "$1" | head -n1; return; }; sleep 0.05; done
  echo "host-compare: no listening line in $1" >&2; exit 1
}

taskset -c "$CTL_CPUS" "$BIN/dasmesh-controller" --listen 127.0.0.1:0 --insecure-no-auth --data-dir "$DIR/ctl" >"$DIR/ctl.out" 2>"$DIR/ctl.log" & PIDS+=($!)
CTL=http://$(addr_of "$DIR/ctl.out")
taskset -c "$NODE1_CPUS" "$BIN/dasmesh-node" --listen 127.0.0.1:0 --controller "$CTL" --state-dir "$DIR/n1" \
  --no-local-socket --backend memory:3G --node-id 1 $NODE_FLAGS >"$DIR/n1.out" 2>"$DIR/n1.log" & PIDS+=($!)
N1_PID=$!
N1=$(addr_of "$DIR/n1.out")
taskset -c "$NODE2_CPUS" "$BIN/dasmesh-node" --listen 127.0.0.1:0 --controller "$CTL" --state-dir "$DIR/n2" \
  --no-local-socket --backend memory:3G --node-id 2 $NODE_FLAGS >"$DIR/n2.out" 2>"$DIR/n2.log" & PIDS+=($!)
addr_of "$DIR/n2.out" >/dev/null
D="$BIN/dasmesh --controller $CTL"
for _ in $(seq 100); do [[ $($D node list 2>/dev/null | grep -c .) -ge 3 ]] && break; sleep 0.1; done
$D volume create single --size 1G --layout single >/dev/null
$D volume create mirror --size 1G --layout mirror:2 >/dev/null
# The raw engine's token: node 1's device, the 1G after the volumes, signed with the controller's key.
$BIN/dasmesh token mint --key "$DIR/ctl" --node 1 --device 0 --range 2G..3G --rights rw >"$DIR/tok"
# Fill what is read (memory backends read untouched pages otherwise).
# --cpu-pid: node 1's CPU per I/O beside the client's (pid_cpu_us_per_io in the JSON; for the mirror
# it counts node 1 only).
B() { taskset -c "$BENCH_CPUS" "$BIN/dasmesh-bench" --no-progress --controller "$CTL" --token "$DIR/tok" --cpu-pid "$N1_PID" "$@"; }
B --target node:$N1 --target volume:single --target volume:mirror --rw write --bs 1M --iodepth 4 --runtime 1s --ramp 0s >/dev/null

run() { # name args...
  local name=$1; shift
  echo "== $name"
  B --runtime "$RUNTIME" --ramp "$RAMP" --json "$OUT/$name.json" "$@" | tee "$OUT/$name.txt"
}
for j in $JOBS; do
  run "randread-4k-qd32-j$j" --target node:$N1 --target volume:single --target volume:mirror \
    --rw randread --bs 4k --iodepth 32 --numjobs "$j"
done
run randwrite-4k-qd32 --target node:$N1 --target volume:single --target volume:mirror \
  --rw randwrite --bs 4k --iodepth 32
run randread-4k-qd1 --target node:$N1 --target volume:single --rw randread --bs 4k --iodepth 1
echo "results in $OUT"
