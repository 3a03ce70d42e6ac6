#!/usr/bin/env bash
# resync.sh: how much a mirror's resync copies after an outage. A controller and two nodes
# (memory backends), a 1 GiB mirror:2. Copy 1's node is stopped (SIGSTOP) while 10 MiB are
# written into the volume (`dasmesh volume cp`, which waits out its 30 s request timeout on the
# stopped node and then reports the copy stale), then resumed; `dasmesh volume rebuild` brings
# the copy back and says how much it copied. Needs only bash and the binaries.
# Usage: bench/resync.sh [--bin DIR] [--written 10M]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=""; WRITTEN=10M
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN="$2"; shift 2;;
    --written) WRITTEN="$2"; shift 2;;
    *) echo "usage: $0 [--bin DIR] [--written 10M]" >&2; exit 2;;
  esac
done
if [[ -z "$BIN" ]]; then
  cargo build --release -q -p dasmesh-cli -p dasmesh-node -p dasmesh-controller
  BIN=$PWD/target/release
fi
DIR=$(mktemp -d "${TMPDIR:-/tmp}/resync.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
addr_of() {
  for _ in $(seq 200); do [[ -s "$1" ]] && grep -q '^listening ' "$1" && { sed -n 's/^listening //p' "$1" | head -n1; return; }; sleep 0.05; done
  echo "resync: no listening line in $1" >&2; exit 1
}
"$BIN/dasmesh-controller" --listen 127.0.0.1:0 --insecure-no-auth --data-dir "$DIR/ctl" >"$DIR/ctl.out" 2>"$DIR/ctl.log" & PIDS+=($!)
CTL=http://$(addr_of "$DIR/ctl.out")
declare -A PID_OF
for n in 1 2; do
  "$BIN/dasmesh-node" --listen 127.0.0.1:0 --controller "$CTL" --state-dir "$DIR/n$n" --poll interrupt \
    --backend memory:1100M >"$DIR/n$n.out" 2>"$DIR/n$n.log" & PIDS+=($!)
  PID_OF[$(addr_of "$DIR/n$n.out")]=$!
done
D="$BIN/dasmesh --controller $CTL"
for _ in $(seq 100); do [[ $($D node list 2>/dev/null | grep -c .) -ge 3 ]] && break; sleep 0.1; done
$D volume create m --size 1G --layout mirror:2 >/dev/null
# The node of copy 1, from the extents (JSON keys are sorted: copy, device_id, index, length, node_address, ...).
ADDR1=$($D volume show m --json | tr '{' '\n' | grep '"copy":1,' | sed -n 's/.*"node_address":"\([^"]*\)".*/\1/p' | head -n1)
P1=${PID_OF[$ADDR1]}
head -c "$(( $(echo "$WRITTEN" | sed 's/M$//') * 1048576 ))" /dev/urandom >"$DIR/data"
echo "resync: stopping copy 1's node ($ADDR1) and writing $WRITTEN"
kill -STOP "$P1"
T0=$(date +%s)
$D volume cp "$DIR/data" m >/dev/null
kill -CONT "$P1"
echo "resync: outage of $(( $(date +%s) - T0 )) s; the copy is stale:"
$D volume show m | grep -E 'STALE|rebuild copies' | tail -n 2
$D volume rebuild m
$D volume rebuild m --json >/dev/null   # a second one finds nothing to do
# The stopped node missed its heartbeats and was marked down; it is up again at its next one.
for _ in $(seq 50); do $D volume show m | head -n1 | grep -q ', ok,' && break; sleep 0.2; done
$D volume show m | head -n1
