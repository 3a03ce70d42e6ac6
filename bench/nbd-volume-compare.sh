#!/usr/bin/env bash
# nbd-volume-compare.sh: the NBD gateway against the host library it is built on, in one run, on
# the same volume of the same node. A controller and one node with a memory backend (loopback TCP:
# --no-local-socket, as the bench's volume: target mounts it), a 1 GiB single volume, and
# `dasmesh nbd serve` on it; then, for each run, one after the other:
#   gateway  fio's nbd engine, 4k randread QD32, 1 job (one NBD connection)
#   volume:  dasmesh-bench --target volume:NAME, 4k randread QD32, 1 job (dasmesh_client::Volume
#            in the bench's own process: what the gateway calls for each request)
#   gateway  fio, 4 jobs (4 NBD connections to the one export: multi-conn), QD32 each
#   volume:  dasmesh-bench, 4 jobs
# and prints the IOPS, the ratio gateway / volume: (target: >= 0.8 at 1 job) and the gateway's CPU
# time per I/O (from /proc). The bench mounts the volume read-only beside the gateway's read-write
# lease, so the gateway keeps serving throughout.
# Usage: bench/nbd-volume-compare.sh [--bin DIR] [--runtime SECONDS] [--runs N] [--out DIR]
#        [-- gateway flags...]
#   CPU lists for taskset (defaults: 2 CPUs: node and controller on 0, fio, the bench and the
#   gateway on 1; more: node and controller on 0, fio and the bench on 1..N/2-1, the gateway on
#   N/2..N-1, so it sizes its runtime to those): NODE_CPUS, CTL_CPUS, CLIENT_CPUS, GW_CPUS.
#   Gateway flags after `--` are added to `nbd serve` (e.g. `-- --threads 2`).
#   PERF=1: `perf record -g` the gateway during each gateway run (OUT/gw-rN-jJ.perf).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=""; RUNTIME=5; RUNS=1; OUT=""; GW_FLAGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN="$2"; shift 2;;
    --runtime) RUNTIME="$2"; shift 2;;
    --runs) RUNS="$2"; shift 2;;
    --out) OUT="$2"; shift 2;;
    --) shift; GW_FLAGS=("$@"); break;;
    *) echo "usage: $0 [--bin DIR] [--runtime SECONDS] [--runs N] [--out DIR] [-- gateway flags...]" >&2; exit 2;;
  esac
done
for t in fio python3 taskset; do
  command -v "$t" >/dev/null || { echo "nbd-volume-compare: $t missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
if [[ -z "$BIN" ]]; then
  cargo build --release -q -p dasmesh-cli -p dasmesh-node -p dasmesh-controller -p dasmesh-bench
  BIN=$PWD/target/release
fi
N=$(nproc)
if (( N <= 2 )); then
  DEF_CLIENT=$(( N - 1 )); DEF_GW=$(( N - 1 ))
else
  H=$(( N / 2 )); DEF_CLIENT="1-$(( H - 1 ))"; DEF_GW="$H-$(( N - 1 ))"
fi
NODE_CPUS=${NODE_CPUS:-0}; CTL_CPUS=${CTL_CPUS:-0}; CLIENT_CPUS=${CLIENT_CPUS:-$DEF_CLIENT}; GW_CPUS=${GW_CPUS:-$DEF_GW}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/nbd-volume-compare.XXXXXX")
OUT=${OUT:-$DIR/out}; mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR/ctl" "$DIR/node"; }
trap cleanup EXIT
addr_of() { # file: waits for its `listening ADDR` line
  for _ in $(seq 200); do [[ -s "$1" ]] && grep -q '^listening ' "$1" && { sed -n 's/^listening //p' "$1" | head -n1; return; }; sleep 0.05; done
  echo "nbd-volume-compare: no listening line in $1" >&2; exit 1
}

taskset -c "$CTL_CPUS" "$BIN/dasmesh-controller" --listen 127.0.0.1:0 --insecure-no-auth --data-dir "$DIR/ctl" >"$DIR/ctl.out" 2>"$DIR/ctl.log" & PIDS+=($!)
CTL=http://$(addr_of "$DIR/ctl.out")
taskset -c "$NODE_CPUS" "$BIN/dasmesh-node" --listen 127.0.0.1:0 --controller "$CTL" --state-dir "$DIR/node" \
  --no-local-socket --backend memory:2G >"$DIR/node.out" 2>"$DIR/node.log" & PIDS+=($!)
addr_of "$DIR/node.out" >/dev/null
D="$BIN/dasmesh --controller $CTL"
for _ in $(seq 100); do [[ $($D node list 2>/dev/null | grep -c .) -ge 2 ]] && break; sleep 0.1; done
$D volume create bench --size 1G --layout single >/dev/null
taskset -c "$GW_CPUS" $D nbd serve bench --listen 127.0.0.1:0 --no-local-socket "${GW_FLAGS[@]}" \
  >"$DIR/gw.out" 2>"$DIR/gw.log" & PIDS+=($!)
GW_PID=$!
GW=$(addr_of "$DIR/gw.out")
GW_THREADS=$(grep -c . <(ls "/proc/$GW_PID/task"))
# Fill what is read (a memory backend reads untouched pages otherwise).
taskset -c "$CLIENT_CPUS" fio --name=fill --ioengine=nbd --uri="nbd://$GW/" --rw=write --bs=1M --iodepth=8 --size=1G >/dev/null 2>&1

ticks() { awk '{print $14 + $15}' "/proc/$GW_PID/stat"; }
HZ=$(getconf CLK_TCK)
RESULTS=$DIR/results.jsonl
gateway() { # run jobs
  local n=$1 jobs=$2 t0 perf=""; t0=$(ticks)
  if [[ -n "${PERF:-}" ]]; then
    perf record -q -g -p "$GW_PID" -o "$OUT/gw-r$n-j$jobs.perf" -- sleep "$RUNTIME" 2>/dev/null & perf=$!
  fi
  taskset -c "$CLIENT_CPUS" fio --output-format=json --name="gw-j$jobs" --ioengine=nbd --uri="nbd://$GW/" \
    --rw=randread --bs=4k --iodepth=32 --numjobs="$jobs" --group_reporting --size=1G \
    --runtime="$RUNTIME" --time_based >"$OUT/gw-r$n-j$jobs.json" 2>/dev/null \
    || { echo "{\"run\":$n,\"path\":\"gateway\",\"jobs\":$jobs,\"error\":true}" >>"$RESULTS"; return; }
  [[ -z "$perf" ]] || wait "$perf" || true
  python3 - "$n" "$jobs" "$OUT/gw-r$n-j$jobs.json" "$t0" "$(ticks)" "$HZ" >>"$RESULTS" <<'PY'
import json, sys
n, jobs, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t0, t1, hz = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
text = open(path).read()
j = json.loads(text[text.index("{"):])["jobs"][0]  # the nbd engine may print a line first
r = j["read"]
ios = r["total_ios"]
print(json.dumps({"run": n, "path": "gateway", "jobs": jobs, "iops": round(r["iops"]),
  "p50_us": round(r["clat_ns"]["percentile"]["50.000000"] / 1000, 1), "errors": j.get("error", 0),
  "gw_cpu_us_per_io": round((t1 - t0) * 1e6 / hz / ios, 2) if ios else None,
  # fio's own CPU (its nbd engine is libnbd): what caps one fio job whatever the gateway does.
  # With group_reporting, usr/sys_cpu are the jobs' mean and job_runtime their sum.
  "fio_cpu_us_per_io": round((j["usr_cpu"] + j["sys_cpu"]) / 100 * j["job_runtime"] * 1e3 / ios, 2)
    if ios else None}))
PY
}
volume() { # run jobs
  local n=$1 jobs=$2
  taskset -c "$CLIENT_CPUS" "$BIN/dasmesh-bench" --no-progress --controller "$CTL" --target volume:bench \
    --rw randread --bs 4k --iodepth 32 --numjobs "$jobs" --runtime "${RUNTIME}s" --ramp 1s \
    --json "$OUT/vol-r$n-j$jobs.json" >"$OUT/vol-r$n-j$jobs.txt" 2>&1 \
    || { echo "{\"run\":$n,\"path\":\"volume\",\"jobs\":$jobs,\"error\":true}" >>"$RESULTS"; return; }
  python3 - "$n" "$jobs" "$OUT/vol-r$n-j$jobs.json" >>"$RESULTS" <<'PY'
import json, sys
n, jobs = int(sys.argv[1]), int(sys.argv[2])
r = json.load(open(sys.argv[3]))["results"][0]
print(json.dumps({"run": n, "path": "volume", "jobs": jobs, "iops": round(r["iops"]),
  "p50_us": round(r["lat_us"]["p50"], 1), "errors": r["errors"]}))
PY
}
for n in $(seq "$RUNS"); do
  for jobs in 1 4; do
    gateway "$n" "$jobs"
    volume "$n" "$jobs"
  done
done

python3 - "$RESULTS" "$(git rev-parse --short HEAD)" "$N" "$NODE_CPUS" "$CLIENT_CPUS" "$GW_CPUS" \
  "$GW_THREADS" "${GW_FLAGS[*]}" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
commit, cpus, node, client, gw, threads, flags = sys.argv[2:9]
print(f"commit {commit}, {cpus} CPUs; node on {node}, fio and dasmesh-bench on {client}, gateway on {gw} "
      f"({threads} threads); gateway flags: {flags or '(none)'}")
print(f"{'run':>3} {'jobs':>4} {'gateway (fio nbd)':>18} {'volume: (bench)':>16} {'ratio':>6} {'>=0.8x':>6}  p50 us (g/v)  CPU us/IO gateway, fio")
def pick(r, path):
    return next((x for x in rows if x["path"] == path and x["run"] == r["run"] and x["jobs"] == r["jobs"]), None)
for g in rows:
    if g["path"] != "gateway": continue
    v = pick(g, "volume")
    if g.get("error") or not v or v.get("error"):
        print(f"{g['run']:>3} {g['jobs']:>4} error (see the out directory)"); continue
    ratio = g["iops"] / v["iops"] if v["iops"] else 0
    target = ("yes" if ratio >= 0.8 else "no") if g["jobs"] == 1 else "(n/a)"
    print(f"{g['run']:>3} {g['jobs']:>4} {g['iops']:>13,} IOPS {v['iops']:>11,} IOPS {ratio:>5.2f}x {target:>6}  "
          f"{g['p50_us']}/{v['p50_us']}  {g['gw_cpu_us_per_io']}, {g.get('fio_cpu_us_per_io')}")
PY
echo "fio's CPU per I/O bounds one fio job at 1e6/that IOPS on a core of its own, whatever the gateway costs."
echo "results in $OUT"
