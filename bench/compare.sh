#!/usr/bin/env bash
# compare.sh: the data-path scorecard in one run. Measures the references (../shared/bench/anchors.sh:
# local fio, qemu-nbd, nbdkit, loopback TCP), then dasmesh-bench with the local baseline and a node
# (default settings: adaptive polling, one reactor) on the same prefilled 2 GiB file, and a node's
# memory backend; prints every figure and each target ratio.
# Usage: bench/compare.sh [--quick] [--runtime 5s] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=5s; QUICK=""; OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=--quick; RUNTIME=2s; shift;;
    --runtime) RUNTIME="$2"; shift 2;;
    --out) OUT="$2"; shift 2;;
    *) echo "usage: $0 [--quick] [--runtime 5s] [--out DIR]" >&2; exit 2;;
  esac
done
scripts/setup.sh
cargo build --release --workspace --bins -q
B=$PWD/target/release
DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/dasmesh-compare.XXXXXX")
OUT=${OUT:-$DIR/out}; mkdir -p "$OUT"
NODE_PID=""
cleanup() { [[ -n "$NODE_PID" ]] && kill "$NODE_PID" 2>/dev/null; rm -f "$DIR/disk.img"; [[ "$OUT" == "$DIR/out" ]] || rm -rf "$DIR"; }
trap cleanup EXIT

ANCHORS=../shared/bench/anchors.sh
if [[ -x "$ANCHORS" || -f "$ANCHORS" ]]; then
  echo "== anchors ($ANCHORS $QUICK)"
  bash "$ANCHORS" $QUICK --json "$OUT/anchors.jsonl" | tee "$OUT/anchors.txt"
else
  echo "== anchors: $ANCHORS not found; nbdkit ratio will be missing"
fi

echo "== dasmesh: prefilling a 2 GiB file, starting a node (defaults: adaptive polling, 1 reactor)"
fio --name=fill --filename="$DIR/disk.img" --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=8 --size=2G >/dev/null
"$B/dasmesh" keygen --out "$DIR/keys" >/dev/null
"$B/dasmesh-node" --listen 127.0.0.1:0 --backend "file:$DIR/disk.img" --backend memory:2G \
  --trust-key "$DIR/keys/public.key" >"$DIR/node.out" 2>"$DIR/node.log" &
NODE_PID=$!
for _ in $(seq 100); do grep -q '^listening ' "$DIR/node.out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^listening //p' "$DIR/node.out")
"$B/dasmesh" token mint --key "$DIR/keys" --device 0 --range 0..2G --rights rw >"$DIR/tok0"
"$B/dasmesh" token mint --key "$DIR/keys" --device 1 --range 0..2G --rights rw >"$DIR/tok1"
# Fill the memory backend so reads return data, not untouched pages.
"$B/dasmesh-bench" --no-progress --target "node:$ADDR" --token "$DIR/tok1" --rw write --bs 1M --iodepth 4 --runtime 2s --ramp 0s >/dev/null

run() { # name token-file args...
  local name=$1 tok=$2; shift 2
  echo "== $name"
  "$B/dasmesh-bench" --no-progress --runtime "$RUNTIME" --token "$tok" --json "$OUT/$name.json" --plot "$OUT/$name.svg" "$@"
}
L="--target local:$DIR/disk.img"; N="--target node:$ADDR"
run randread-4k-qd32  "$DIR/tok0" $L $N --rw randread  --bs 4k   --iodepth 32
run randwrite-4k-qd32 "$DIR/tok0" $L $N --rw randwrite --bs 4k   --iodepth 32
run randread-4k-qd1   "$DIR/tok0" $L $N --rw randread  --bs 4k   --iodepth 1
run read-128k-qd16    "$DIR/tok0" $L $N --rw read      --bs 128k --iodepth 16
run memory-randread-4k-qd32 "$DIR/tok1" $N --rw randread --bs 4k --iodepth 32

echo "== idle node CPU over 10 s (no clients)"
sleep 1
a=$(awk '{print $14+$15}' /proc/$NODE_PID/stat); sleep 10; b=$(awk '{print $14+$15}' /proc/$NODE_PID/stat)
echo "{\"idle_cpu_percent\": $(( (b - a) * 100 / $(getconf CLK_TCK) / 10 ))}" >"$OUT/idle.json"
echo "idle node: $((b - a)) ticks of $(( $(getconf CLK_TCK) * 10 )) = $(( (b - a) * 100 / $(getconf CLK_TCK) / 10 ))% of a core"

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def res(name):
    return json.load(open(os.path.join(out, name + ".json")))["results"]
anchors = {}
p = os.path.join(out, "anchors.jsonl")
if os.path.exists(p):
    for l in open(p):
        r = json.loads(l)
        anchors[(r.get("target"), r.get("workload"))] = r
rows = []
def ratio_row(wl, key, goal):
    loc, node = res(wl)
    v = node[key] / loc[key] if loc[key] else 0
    rows.append((wl, f"local {loc[key]:.0f}", f"node {node[key]:.0f}", f"{v:.2f}x local {key}", f">= {goal}x", v >= goal))
ratio_row("randread-4k-qd32", "iops", 0.75)
ratio_row("randwrite-4k-qd32", "iops", 0.75)
loc, node = res("randread-4k-qd1")
d = node["lat_us"]["p50"] - loc["lat_us"]["p50"]
rows.append(("randread-4k-qd1", f"local p50 {loc['lat_us']['p50']}", f"node p50 {node['lat_us']['p50']}", f"+{d:.1f} us", "<= +25 us", d <= 25))
ratio_row("read-128k-qd16", "mib_s", 0.75)
mem = res("memory-randread-4k-qd32")[0]["iops"]
nk = anchors.get(("nbdkit-memory", "randread-4k-qd32"), {}).get("iops")
if nk:
    rows.append(("memory-randread-4k-qd32", f"nbdkit {nk}", f"node {mem:.0f}", f"{mem / nk:.2f}x nbdkit", ">= 1.2x", mem / nk >= 1.2))
else:
    rows.append(("memory-randread-4k-qd32", "nbdkit n/a", f"node {mem:.0f}", "", ">= 1.2x", None))
print()
print(f"{'workload':<26} {'baseline':<20} {'dasmesh':<18} {'measured':<22} {'target':<11} ok")
for r in rows:
    ok = "yes" if r[5] else ("?" if r[5] is None else "NO")
    print(f"{r[0]:<26} {r[1]:<20} {r[2]:<18} {r[3]:<22} {r[4]:<11} {ok}")
json.dump([{"workload": r[0], "baseline": r[1], "dasmesh": r[2], "measured": r[3], "target": r[4], "met": r[5]} for r in rows],
          open(os.path.join(out, "scorecard.json"), "w"), indent=1)
PY
echo "(figures, plots and JSON in $OUT)"
