#!/usr/bin/env bash
# rebuild.sh: how fast a mirror copy moved to another node is rebuilt there (node to node), and
# what a rebuild costs a host writing to the volume. A controller and three nodes, each on a
# file in DIR; a mirror:2 volume of SIZE filled with 1 MiB writes; then, measured in one run:
#   1. the device's own sequential write rate (dasmesh-bench local:, io_uring O_DIRECT, 1 MiB,
#      QD4) on a spare file of the same size in DIR: the baseline of the rebuild rate; and its
#      sequential read rate on that file once written (what a rebuild's source can give);
#   2. a rebuild alone: `dasmesh volume replace-copy` moves copy 1 to the free node, timed from
#      the call to the copy's return to health (and the node's own figure from its log);
#   3. host 4k randwrite QD32 on the volume for RUNTIME, with no rebuild;
#   4. the same while copy 1 is moved again and rebuilt (the run starts with the rebuild).
# Needs only bash and the binaries. CPU lists: NODE_CPUS, CTL_CPUS, BENCH_CPUS (default all);
# PERF_OUT=FILE records step 2 with `perf record -a -g`; KEEP=1 keeps DIR (the nodes' logs);
# MEMORY=1 gives the nodes memory backends (the pipeline without the disk; baselines stay local).
# Usage: bench/rebuild.sh [--bin DIR] [--dir DIR] [--size 2G] [--runtime 5] [--node-flags "..."]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=""; DIRBASE=${TMPDIR:-/var/tmp}; SIZE=2G; RUNTIME=5; NODE_FLAGS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN="$2"; shift 2;;
    --dir) DIRBASE="$2"; shift 2;;
    --size) SIZE="$2"; shift 2;;
    --runtime) RUNTIME="$2"; shift 2;;
    --node-flags) NODE_FLAGS="$2"; shift 2;;
    *) echo "usage: $0 [--bin DIR] [--dir DIR] [--size 2G] [--runtime 5] [--node-flags \"...\"]" >&2; exit 2;;
  esac
done
if [[ -z "$BIN" ]]; then
  cargo build --release -q -p dasmesh-cli -p dasmesh-node -p dasmesh-controller -p dasmesh-bench
  BIN=$PWD/target/release
fi
NODE_CPUS=${NODE_CPUS:-0-$(( $(nproc) - 1 ))}; CTL_CPUS=${CTL_CPUS:-$NODE_CPUS}; BENCH_CPUS=${BENCH_CPUS:-$NODE_CPUS}
GIB=$(( $(echo "$SIZE" | sed 's/G$//') ))
DIR=$(mktemp -d "$DIRBASE/rebuild.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; if [[ -n "${KEEP:-}" ]]; then echo "rebuild: kept $DIR"; else rm -rf "$DIR"; fi; }
trap cleanup EXIT
addr_of() {
  for _ in $(seq 200); do [[ -s "$1" ]] && grep -q '^listening ' "$1" && { sed -n 's/^listening //p' "$1" | head -n1; return; }; sleep 0.05; done
  echo "rebuild: no listening line in $1" >&2; exit 1
}
now() { date +%s.%N; }

# 1. The device's own sequential write rate, on a fresh file like the one a rebuild fills.
truncate -s "$(( GIB + 1 ))G" "$DIR/local.img"
LOCAL=$(taskset -c "$BENCH_CPUS" "$BIN/dasmesh-bench" --no-progress --target "local:$DIR/local.img" \
  --rw write --bs 1M --iodepth 4 --size "${GIB}G" --runtime "${RUNTIME}s" --json "$DIR/local.json" 2>&1 \
  | awk '/local\.img/ {print $3}')
# And its sequential read rate, on what was just written: what a rebuild's source can give.
LOCAL_READ=$(taskset -c "$BENCH_CPUS" "$BIN/dasmesh-bench" --no-progress --target "local:$DIR/local.img" \
  --rw read --bs 1M --iodepth 4 --size "${GIB}G" --runtime "${RUNTIME}s" 2>&1 \
  | awk '/local\.img/ {print $3}')
rm -f "$DIR/local.img"
echo "rebuild: local sequential write (1 MiB, QD4, O_DIRECT): $LOCAL MiB/s; read: $LOCAL_READ MiB/s"

taskset -c "$CTL_CPUS" "$BIN/dasmesh-controller" --listen 127.0.0.1:0 --insecure-no-auth \
  --data-dir "$DIR/ctl" --replace-after 0s >"$DIR/ctl.out" 2>"$DIR/ctl.log" & PIDS+=($!)
CTL=http://$(addr_of "$DIR/ctl.out")
NODE_PIDS=()
for n in 1 2 3; do
  # shellcheck disable=SC2086
  RUST_LOG=info taskset -c "$NODE_CPUS" "$BIN/dasmesh-node" --listen 127.0.0.1:0 --controller "$CTL" \
    --state-dir "$DIR/n$n" --poll interrupt --no-pin $NODE_FLAGS \
    --backend "$( [[ -n "${MEMORY:-}" ]] && echo "memory:$(( GIB + 1 ))G" || echo "file:$DIR/n$n.img:$(( GIB + 1 ))G" )" \
    >"$DIR/n$n.out" 2>"$DIR/n$n.log" & PIDS+=($!)
  NODE_PIDS+=($!)
  addr_of "$DIR/n$n.out" >/dev/null
done
# CPU time (ms) each node has used so far, space-separated.
cpu_ms() { for p in "${NODE_PIDS[@]}"; do awk -v hz="$(getconf CLK_TCK)" '{printf "%d ", ($14 + $15) * 1000 / hz}' "/proc/$p/stat"; done; }
D="$BIN/dasmesh --controller $CTL"
for _ in $(seq 100); do [[ $($D node list 2>/dev/null | grep -c .) -ge 4 ]] && break; sleep 0.1; done
$D volume create m --size "$SIZE" --layout mirror:2 >/dev/null
B() { taskset -c "$BENCH_CPUS" "$BIN/dasmesh-bench" --no-progress --controller "$CTL" "$@"; }
# Sequential 1 MiB writes loop over the volume: long enough to cover it (at 200 MiB/s or more).
B --target volume:m --rw write --bs 1M --iodepth 4 --ramp 0s --runtime "$(( GIB * 6 ))s" >/dev/null
echo "rebuild: $SIZE mirror:2 filled"

# Waits until copy 1 is healthy again; prints the seconds since $1.
wait_healthy() {
  local t0=$1
  for _ in $(seq 6000); do
    if ! $D volume show m | grep -q 'REBUILDING\|STALE'; then
      echo "$(now) - $t0" | bc; return
    fi
    sleep 0.05
  done
  echo "rebuild: copy 1 never became healthy" >&2; exit 1
}

# 2. A rebuild alone (PERF_OUT=FILE: recorded with perf, every CPU, while it runs).
if [[ -n "${PERF_OUT:-}" ]]; then perf record -a -g -o "$PERF_OUT" >/dev/null 2>&1 & PERF_PID=$!; fi
read -r -a CPU0 <<<"$(cpu_ms)"
T0=$(now)
$D volume replace-copy m --copy 1 >/dev/null
SECS=$(wait_healthy "$T0")
read -r -a CPU1 <<<"$(cpu_ms)"
if [[ -n "${PERF_OUT:-}" ]]; then kill -INT "$PERF_PID"; wait "$PERF_PID" || true; fi
# Per node, the CPU the rebuild cost it, per GiB copied (the source and the new copy's node do
# the work; the third idles).
echo "rebuild: node CPU per GiB copied (ms): $(for i in 0 1 2; do echo -n "n$(( i + 1 )) $(( (CPU1[i] - CPU0[i]) / GIB ))  "; done)"

RATE=$(echo "scale=1; $GIB * 1024 / $SECS" | bc)
echo "rebuild: alone: $SIZE in $SECS s = $RATE MiB/s (call to healthy); the node's own figure:"
# The latest rebuild's own figure from the nodes' logs (lines start with their time).
copied() { cat "$DIR"/n*.log | sed 's/\x1b\[[0-9;]*m//g' | grep 'rebuild: copied' | sort | tail -n1 | sed 's/.*rebuild: //; s/ volume=.*//'; }
copied
NODE_RATE=$(copied | sed -n 's/.*(\([0-9.]*\) MiB\/s).*/\1/p')
echo "rebuild: the node's copy rate / local sequential write = $(echo "scale=2; $NODE_RATE / $LOCAL" | bc), / local sequential read = $(echo "scale=2; $NODE_RATE / $LOCAL_READ" | bc)"

# 3. and 4. Host writes without and with a rebuild.
run_host() { B --target volume:m --rw randwrite --bs 4k --iodepth 32 --runtime "${RUNTIME}s" --json "$DIR/$1.json" 2>&1 | awk '/^volume:/ {print $2, $NF}'; }
read -r QUIET_IOPS QUIET_CPU < <(run_host quiet)
T0=$(now)
$D volume replace-copy m --copy 1 >/dev/null
# The host run starts once the node copies (before that the host writes one copy only).
for _ in $(seq 600); do
  SHOW=$($D volume show m --json)
  grep -q '"rebuilt_bytes":[1-9]' <<<"$SHOW" && break
  grep -q '"rebuilding":true' <<<"$SHOW" || break   # done already
  sleep 0.05
done
STARTED=$($D volume show m | grep -c REBUILDING || true)
read -r BUSY_IOPS BUSY_CPU < <(run_host busy)
STILL=$($D volume show m | grep -c REBUILDING || true)
SECS=$(wait_healthy "$T0")
echo "rebuild: host 4k randwrite QD32: $QUIET_IOPS IOPS alone (client $QUIET_CPU us/IO), $BUSY_IOPS during a rebuild (client $BUSY_CPU us/IO)"
if [[ $STARTED -eq 0 ]]; then
  echo "rebuild: the rebuild was over before the host run began: no figure for host I/O during one (a larger --size)"
else
  echo "rebuild: during / alone = $(echo "scale=2; $BUSY_IOPS / $QUIET_IOPS" | bc); the rebuild took $SECS s$( [[ $STILL -gt 0 ]] && echo ", still running when the host run ended" ); under the host's load it"
fi
copied
