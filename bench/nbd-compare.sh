#!/usr/bin/env bash
# nbd-compare.sh: the NBD gateway against qemu-nbd, in one run, driven the same way as
# ../shared/bench/anchors.sh drives qemu-nbd (fio's nbd engine over loopback TCP).
#   qemu-nbd : a prefilled file, qemu-nbd -f raw --cache=none --aio=io_uring
#   gateway  : a controller, one node serving the same file (its file backend: io_uring, O_DIRECT),
#              a 1 GiB single volume on it, served by `dasmesh nbd serve`
#   local    : fio io_uring O_DIRECT on that file, the disk's own limit at that moment (reference)
# All three use the one file: this VM's disk serves different files (regions) at very different
# speeds (seen: 67k vs 13k IOPS of 4k random reads on two files minutes apart), so separate files
# would compare the disk's regions, not the servers. The targets run one after another, never at
# once, so sharing the file is safe.
# Workloads: 4k randread QD32, 4k randwrite QD32, 128k read QD16 (target: gateway >= 1.3x qemu-nbd),
# and 128k read QD1 (a shallow sequential reader such as dd or cp: shows the gateway's readahead).
# The last column is the bytes the file's block device moved per byte fio moved, for qemu-nbd and
# the gateway: 1.00 is no amplification (with the readahead's old start rule it read 3.26 for the gateway on 4k random reads).
# Usage: bench/nbd-compare.sh [--runtime SECONDS] [--runs N] [--dir DIR] [--json FILE] [-- gateway flags...]
#   --dir DIR: where the file (and the controller's and node's state) lives, default $TMPDIR or
#   /var/tmp. A tmpfs such as /dev/shm takes the disk out of the comparison: then the servers' own
#   cost is what is compared (the 6.18 kernel here takes O_DIRECT on tmpfs; older ones refuse it).
#   Placement (tools/nbd/README.md, "Placement"): by default the node polls in `interrupt` mode with
#   its reactor pinned to CPU 0 (its default pinning: the first CPU it may use), and the gateway
#   runs on that CPU too (`--cpu 0`): a request then passes between them without waking the other
#   core, which is left to fio. NODE_FLAGS="..." replaces the node's extra flags; gateway flags
#   after `--` replace `--cpu 0`: NODE_FLAGS="--no-pin --poll interrupt" bench/nbd-compare.sh --
#   --poll interrupt lets the scheduler place both.
set -euo pipefail
cd "$(dirname "$0")/.."
# The node pins reactor 0 to the first CPU this process may use (CPU 0 unless restricted).
CPU0=$(awk '/^Cpus_allowed_list:/ {split($2, a, /[,-]/); print a[1]}' /proc/self/status)
RUNTIME=5; RUNS=1; JSON_OUT=""; GW_FLAGS=(--cpu "$CPU0"); BASE=${TMPDIR:-/var/tmp}
NODE_ARGS=${NODE_FLAGS---poll interrupt}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runtime) RUNTIME="$2"; shift 2;;
    --runs) RUNS="$2"; shift 2;;
    --json) JSON_OUT="$2"; shift 2;;
    --dir) BASE="$2"; shift 2;;
    --) shift; GW_FLAGS=("$@"); break;;
    *) echo "usage: $0 [--runtime SECONDS] [--runs N] [--dir DIR] [--json FILE] [-- gateway flags...]" >&2; exit 2;;
  esac
done
for t in fio qemu-nbd python3; do
  command -v "$t" >/dev/null || { echo "nbd-compare: $t missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
cargo build --release -q -p dasmesh-cli -p dasmesh-node -p dasmesh-controller
B=$PWD/target/release
DIR=$(mktemp -d "$BASE/nbd-compare.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
addr_of() { # file: waits for its `listening ADDR` line
  for _ in $(seq 200); do [[ -s "$1" ]] && { sed -n 's/^listening //p' "$1" | head -n1; return; }; sleep 0.05; done
  echo "nbd-compare: no listening line in $1" >&2; exit 1
}

# One prefilled file for every target (the node's volume covers bytes 1M..1025M of it).
IMG=$DIR/disk.img
fio --name=fill --filename="$IMG" --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=8 --size=1100M >/dev/null
qemu-nbd -f raw --cache=none --aio=io_uring -b 127.0.0.1 -p 10881 -x '' -t "$IMG" & PIDS+=($!)

# The gateway: controller, one node on the same file, a single volume, prefilled through the gateway.
"$B/dasmesh-controller" --listen 127.0.0.1:0 --insecure-no-auth --data-dir "$DIR/ctl" >"$DIR/ctl.out" 2>"$DIR/ctl.log" & PIDS+=($!)
CTL=http://$(addr_of "$DIR/ctl.out")
"$B/dasmesh-node" --listen 127.0.0.1:0 --controller "$CTL" --state-dir "$DIR/node" --reserve 1M \
  --backend "file:$IMG" $NODE_ARGS >"$DIR/node.out" 2>"$DIR/node.log" & PIDS+=($!)
addr_of "$DIR/node.out" >/dev/null
"$B/dasmesh" --controller "$CTL" volume create bench --size 1G --layout single >/dev/null
"$B/dasmesh" --controller "$CTL" nbd serve bench --listen 127.0.0.1:0 "${GW_FLAGS[@]}" >"$DIR/gw.out" 2>"$DIR/gw.log" & PIDS+=($!)
GW=$(addr_of "$DIR/gw.out")
fio --name=fill --ioengine=nbd --uri="nbd://$GW/" --rw=write --bs=1M --iodepth=8 --size=1G >/dev/null 2>&1
sleep 1

RESULTS=$DIR/results.jsonl
# The block device under the file: its sectors moved per byte fio moved show read or write
# amplification (readahead fetching what no one reads, say); empty if it cannot be found.
DEV=$(basename "$(df --output=source "$IMG" | tail -n1)")
STAT=/sys/class/block/$DEV/stat
[[ -r $STAT ]] || STAT=""
sectors() { [[ -n $STAT ]] && awk '{printf "%.0f\n", $3 + $7}' "$STAT" || echo 0; }
run() { # run target workload fio-args...
  local n=$1 target=$2 wl=$3; shift 3
  local s0; s0=$(sectors)
  fio --output-format=json --runtime="$RUNTIME" --time_based --size=1G --name="$wl" "$@" >"$DIR/out.json" 2>/dev/null \
    || { echo "{\"run\":$n,\"target\":\"$target\",\"workload\":\"$wl\",\"error\":true}" >>"$RESULTS"; return; }
  python3 - "$n" "$target" "$wl" "$DIR/out.json" "$s0" "$(sectors)" >>"$RESULTS" <<'PY'
import json, sys
n, t, wl, path = sys.argv[1:5]
s0, s1 = int(sys.argv[5]), int(sys.argv[6])
text = open(path).read()
j = json.loads(text[text.index("{"):])["jobs"][0]  # the nbd engine prints a line before the JSON
side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
pct = side["clat_ns"].get("percentile", {})
io = j["read"]["io_bytes"] + j["write"]["io_bytes"]
print(json.dumps({"run": int(n), "target": t, "workload": wl, "iops": round(side["iops"]),
  "mib_s": round(side["bw_bytes"] / 2**20, 1), "errors": j.get("error", 0),
  "p50_us": round(pct.get("50.000000", 0) / 1000, 1), "p99_us": round(pct.get("99.000000", 0) / 1000, 1),
  "disk_per_io": round((s1 - s0) * 512 / io, 2) if io and s1 > s0 else None}))
PY
}
for n in $(seq "$RUNS"); do
  # Interleaved per workload, so both targets see the same moment of a shared machine.
  for wl in "randread-4k-qd32 --rw=randread --bs=4k --iodepth=32" \
            "randwrite-4k-qd32 --rw=randwrite --bs=4k --iodepth=32" \
            "read-128k-qd16 --rw=read --bs=128k --iodepth=16" \
            "read-128k-qd1 --rw=read --bs=128k --iodepth=1"; do
    set -- $wl
    name=$1; shift
    run "$n" local "$name" --ioengine=io_uring --direct=1 --filename="$IMG" "$@"
    run "$n" qemu-nbd "$name" --ioengine=nbd --uri=nbd://127.0.0.1:10881/ "$@"
    run "$n" gateway "$name" --ioengine=nbd --uri="nbd://$GW/" "$@"
  done
done

python3 - "$RESULTS" "$(git rev-parse --short HEAD)" "$(nproc)" "$BASE ($(df --output=fstype "$IMG" | tail -n1))" \
  "$NODE_ARGS" "${GW_FLAGS[*]}" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
commit, cpus, where = sys.argv[2], sys.argv[3], sys.argv[4]
print(f"commit {commit}, {cpus} CPUs, the file in {where}; node flags: {sys.argv[5] or '(none)'}; gateway flags: {sys.argv[6] or '(none)'}")
print(f"{'run':>3} {'workload':<18} {'local (file)':>16} {'qemu-nbd':>16} {'gateway':>16} {'ratio':>6} {'>=1.3x':>6}  p50 us (q/g)  disk bytes per byte (q/g)")
def pick(r, t):
    return next((x for x in rows if x["target"] == t and x["run"] == r["run"] and x["workload"] == r["workload"]), None)
for r in rows:
    if r["target"] != "qemu-nbd": continue
    g, l = pick(r, "gateway"), pick(r, "local")
    if r.get("error") or not g or g.get("error"):
        print(f"{r['run']:>3} {r['workload']:<18} error"); continue
    unit = "MiB/s" if "128k" in r["workload"] else "IOPS"
    key = "mib_s" if unit == "MiB/s" else "iops"
    q, v = r[key], g[key]
    lv = l[key] if l and not l.get("error") else 0
    ratio = v / q if q else 0
    target = "(n/a)" if r["workload"].endswith("qd1") else ("yes" if ratio >= 1.3 else "no")
    amp = "/".join("-" if x.get("disk_per_io") is None else f"{x['disk_per_io']:.2f}" for x in (r, g))
    print(f"{r['run']:>3} {r['workload']:<18} {lv:>10,} {unit:<5} {q:>10,} {unit:<5} {v:>10,} {unit:<5} {ratio:>5.2f}x {target:>6}  {r['p50_us']}/{g['p50_us']}  {amp}")
PY
if [[ -n "$JSON_OUT" ]]; then
  python3 - "$RESULTS" "$(git rev-parse HEAD)" "$JSON_OUT" "$NODE_ARGS" "${GW_FLAGS[*]}" <<'PY'
import json, sys, platform, os
rows = [json.loads(l) for l in open(sys.argv[1])]
json.dump({"commit": sys.argv[2], "machine": {"host": platform.node(), "cpus": os.cpu_count(),
  "kernel": platform.release()}, "node_flags": sys.argv[4], "gateway_flags": sys.argv[5],
  "rows": rows}, open(sys.argv[3], "w"), indent=1)
PY
fi
