#!/usr/bin/env bash
# tls-compare.sh: the data plane in plaintext against mutual TLS (dasmesh-node --tls), in one run.
# A controller (with certificates) and two nodes with memory backends: n1 plaintext, n2 with
# --tls; a single volume on each. dasmesh-bench mounts each as a host does (dasmesh_client::Volume,
# over TCP: --no-local-socket) and runs 4k random reads at queue depth 32 and 128k sequential
# reads at queue depth 16, alternating plaintext and TLS for --rounds rounds, with the client's
# CPU per I/O and the node's (its TLS threads included) beside every IOPS figure.
# Needs only bash and the binaries (no python, no fio).
# Usage: bench/tls-compare.sh [--bin DIR] [--runtime 5s] [--rounds 3] [--out DIR]
#   NODE_CPUS / CTL_CPUS / BENCH_CPUS: taskset CPU lists (default 0 / 0 / 1 on a 2-core machine).
#   TLS_NODE_FLAGS: more flags for the TLS node (e.g. "--poll interrupt", so that its reactor does
#   not spin against its TLS thread on a shared core; "--tls-threads 2").
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=""; RUNTIME=5s; ROUNDS=3; OUT=""; RAMP=1s
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN="$2"; shift 2;;
    --runtime) RUNTIME="$2"; shift 2;;
    --rounds) ROUNDS="$2"; shift 2;;
    --out) OUT="$2"; shift 2;;
    --quick) RUNTIME=2s; RAMP=300ms; ROUNDS=1; shift;;
    *) echo "usage: $0 [--bin DIR] [--runtime 5s] [--rounds 3] [--out DIR] [--quick]" >&2; exit 2;;
  esac
done
if [[ -z "$BIN" ]]; then
  cargo build --release -q -p dasmesh-cli -p dasmesh-node -p dasmesh-controller -p dasmesh-bench
  BIN=$PWD/target/release
fi
NODE_CPUS=${NODE_CPUS:-0}; CTL_CPUS=${CTL_CPUS:-0}; BENCH_CPUS=${BENCH_CPUS:-1}; TLS_NODE_FLAGS=${TLS_NODE_FLAGS:-}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/tls-compare.XXXXXX")
OUT=${OUT:-$DIR/out}; mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR/ctl" "$DIR/n1" "$DIR/n2" "$DIR/pki"; }
trap cleanup EXIT
addr_of() { # file: waits for its `listening ADDR` line
  for _ in $(seq 200); do [[ -s "$1" ]] && grep -q '^listening ' "$1" && { sed -n 's/^listening //p' "$1" | head -n1; return; }; sleep 0.05; done
  echo "tls-compare: no listening line in $1" >&2; exit 1
}
P=$DIR/pki
"$BIN/dasmesh" ca init --out "$P/ca" >/dev/null
for who in controller:ctl node:n1 node:n2 host:bench operator:ops; do
  "$BIN/dasmesh" cert issue --ca "$P/ca" --role "${who%%:*}" --name "${who#*:}" --san 127.0.0.1 --out "$P/${who#*:}" >/dev/null
done
taskset -c "$CTL_CPUS" "$BIN/dasmesh-controller" --listen 127.0.0.1:0 --cert "$P/ctl" --data-dir "$DIR/ctl" >"$DIR/ctl.out" 2>"$DIR/ctl.log" & PIDS+=($!)
CTL=https://$(addr_of "$DIR/ctl.out")
# n1 the smaller, so the first volume lands on it (a single extent goes where it fits best,
# and n1 has no room left for the second).
taskset -c "$NODE_CPUS" "$BIN/dasmesh-node" --listen 127.0.0.1:0 --controller "$CTL" --cert "$P/n1" --state-dir "$DIR/n1" \
  --no-local-socket --backend memory:1536M --node-id 1 >"$DIR/n1.out" 2>"$DIR/n1.log" & PIDS+=($!)
N1_PID=$!
addr_of "$DIR/n1.out" >/dev/null
taskset -c "$NODE_CPUS" "$BIN/dasmesh-node" --listen 127.0.0.1:0 --controller "$CTL" --cert "$P/n2" --state-dir "$DIR/n2" \
  --tls --backend memory:3G --node-id 2 $TLS_NODE_FLAGS >"$DIR/n2.out" 2>"$DIR/n2.log" & PIDS+=($!)
N2_PID=$!
addr_of "$DIR/n2.out" >/dev/null
D="$BIN/dasmesh --controller $CTL --cert $P/ops"
for _ in $(seq 100); do [[ $($D node list 2>/dev/null | grep -c .) -ge 3 ]] && break; sleep 0.1; done
$D volume create plain --size 1G --layout single >/dev/null
$D volume create tls --size 1G --layout single >/dev/null
$D volume show plain --json | grep -q '"node_id": *1' || { echo "tls-compare: volume plain is not on n1:" >&2; $D volume show plain --json >&2; $D node list >&2; exit 1; }
$D volume show tls --json | grep -q '"node_id": *2' || { echo "tls-compare: volume tls is not on n2" >&2; exit 1; }
B() { taskset -c "$BENCH_CPUS" "$BIN/dasmesh-bench" --no-progress --no-local-socket --controller "$CTL" --cert "$P/bench" "$@"; }
# Fill what is read (memory backends read untouched pages otherwise).
for v in plain tls; do B --target volume:$v --rw write --bs 1M --iodepth 4 --size 1G --runtime 2s --ramp 0s >/dev/null; done
printf '%-5s %-18s %-6s %9s %8s %8s %8s %12s %10s\n' round workload data IOPS MiB/s p50_us p99_us client_us/io node_us/io | tee "$OUT/summary.txt"
for r in $(seq "$ROUNDS"); do
  for wl in "randread 4k 32" "read 128k 16"; do
    set -- $wl
    for v in plain tls; do
      pid=$N1_PID; [[ $v == tls ]] && pid=$N2_PID
      B --target volume:$v --rw "$1" --bs "$2" --iodepth "$3" --size 1G --runtime "$RUNTIME" --ramp "$RAMP" \
        --cpu-pid "$pid" --json "$OUT/$r-$1-$2-$v.json" >"$OUT/$r-$1-$2-$v.txt"
      f="$OUT/$r-$1-$2-$v.txt"
      node_cpu=$(sed -n 's/.*CPU of --cpu-pid: \([0-9.]*\) us per I\/O.*/\1/p' "$f")
      grep -m1 "^volume:$v " "$f" | awk -v r="$r" -v wl="$1/$2/qd$3" -v v="$v" -v n="${node_cpu:-?}" \
        '{ printf "%-5s %-18s %-6s %9s %8s %8s %8s %12s %10s\n", r, wl, v, $2, $3, $4, $6, $10, n }' | tee -a "$OUT/summary.txt"
    done
  done
done
echo "tls-compare: results in $OUT"
