#!/usr/bin/env bash
# qos.sh: service terms on one node, measured in one run (docs/qos.md, "Measured"). One node on
# a prefilled file in DIR (4k random reads, QD32, unless said otherwise); 1 to 4 with tokens
# minted by hand (as the controller's carry the terms), 5 with volumes:
#   1. the scheduler's cost on the uncapped, uncontended path: one lease without terms, the node
#      started afresh for each run, with the scheduler and with --no-qos, PAIRS (10) times each, 4 s each,
#      each order in turn; C, what the node serves here without the scheduler, is the
#      capability the promise is judged against (the nodes of 2 to 4 run with --device-iops C).
#      (Two nodes on memory backends side by side were tried and dropped: how many huge pages
#      each process gets moves its copy cost by 2x, far more than the scheduler.)
#   2. a promise: lease A asks for R = 0.7 C (dasmesh-bench --rate-iops R) while lease B, with no
#      terms, reads flat out: with --no-qos, then with the scheduler and A's token promising R;
#   3. caps: lease A capped at L = C/4 IOPS read flat out; then capped at 200 MiB/s with 128 KiB
#      reads: every whole second of the run within 5% of the cap (dasmesh-bench's timeline);
#   4. weights: leases of weight 50 and 150 read flat out together: what each gets;
#   5. 2 and 3 again with volumes, through a controller and the host library (dasmesh-bench
#      volume: targets): C measured for one volume alone, then a volume promised 0.7 C beside
#      one without terms (--no-qos, then the scheduler), and a volume capped at C/4.
# Needs bash, python3 (the figures) and the binaries.
# Usage: bench/qos.sh [--bin DIR] [--dir DIR] [--runtime 5]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=""; DIRBASE=${TMPDIR:-/var/tmp}; RUNTIME=5; KEEP=${KEEP:-}; PAIRS=${PAIRS:-10}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN="$2"; shift 2;;
    --dir) DIRBASE="$2"; shift 2;;
    --runtime) RUNTIME="$2"; shift 2;;
    *) echo "usage: $0 [--bin DIR] [--dir DIR] [--runtime 5]" >&2; exit 2;;
  esac
done
if [[ -z "$BIN" ]]; then
  cargo build --release -q -p dasmesh-cli -p dasmesh-node -p dasmesh-bench -p dasmesh-controller
  BIN=$PWD/target/release
fi
DIR=$(mktemp -d "$DIRBASE/qos.XXXXXX")
NODE=""
cleanup() { for p in $NODE ${CTL_PID:-}; do kill "$p" 2>/dev/null; done; wait 2>/dev/null || true; if [[ -n "$KEEP" ]]; then echo "qos: kept $DIR"; else rm -rf "$DIR"; fi; }
trap cleanup EXIT
# Written through, so reads find real blocks rather than holes.
dd if=/dev/zero of="$DIR/disk.img" bs=1M count=2048 oflag=direct status=none
"$BIN/dasmesh" keygen --out "$DIR/keys" >/dev/null
start_node() {
  [[ -n "$NODE" ]] && { kill "$NODE"; wait "$NODE" 2>/dev/null || true; }
  "$BIN/dasmesh-node" --listen 127.0.0.1:0 --backend "file:$DIR/disk.img" \
    --trust-key "$DIR/keys/public.key" "$@" >"$DIR/node.out" 2>>"$DIR/node.log" &
  NODE=$!
  for _ in $(seq 100); do grep -q '^listening ' "$DIR/node.out" 2>/dev/null && break; sleep 0.05; done
  ADDR=$(sed -n 's/^listening //p' "$DIR/node.out")
}
mint() { # file range [terms...]
  local f=$1 r=$2; shift 2
  "$BIN/dasmesh" token mint --key "$DIR/keys" --device 0 --range "$r" --rights rw "$@" >"$DIR/$f"
}
bench() { # name token [args...]
  local name=$1 tok=$2; shift 2
  "$BIN/dasmesh-bench" --no-progress --target "node:$ADDR" --token "$DIR/$tok" --cpu-pid "$NODE" \
    --runtime "${RT:-$RUNTIME}s" --json "$DIR/$name.json" "$@" >"$DIR/$name.txt" 2>&1
}
fig() { python3 - "$DIR" "$@" <<'PY'
import json, sys
d, what, name = sys.argv[1], sys.argv[2], sys.argv[3]
r = json.load(open(f"{d}/{name}.json"))
r = r["results"][0] if "results" in r else (r[0] if isinstance(r, list) else r)
if what == "iops": print(int(r["iops"]))
elif what == "row": print(f'{int(r["iops"])} IOPS, {r["mib_s"]:.1f} MiB/s, client {r["cpu_us_per_io"]:.1f} us/IO, node {r.get("pid_cpu_us_per_io") or 0:.1f} us/IO')
elif what == "seconds":
    per = [m * 1048576 / r["bs"] for m in r["timeline_mib_s"]] if sys.argv[4] == "iops" else r["timeline_mib_s"]
    print(" ".join(f"{x:.0f}" for x in per))
PY
}
mint free 1G..2G
mint plain 0..1G

echo "== 1. one lease without terms, the node restarted for each run: scheduler on / --no-qos,"
echo "      $PAIRS times each, each order in turn (after a warm-up run)"
start_node; RT=2 bench warmup plain --rw randread --bs 4k --iodepth 32
for i in $(seq "$PAIRS"); do
  if (( i % 2 )); then order="on off"; else order="off on"; fi
  for side in $order; do
    if [[ $side == on ]]; then start_node; else start_node --no-qos; fi
    RT=4 bench "$side$i" plain --rw randread --bs 4k --iodepth 32
  done
  echo "   on  #$i: $(fig row "on$i")"
  echo "   off #$i: $(fig row "off$i")"
done
read -r ON OFF ONCPU OFFCPU < <(python3 - "$DIR" "$PAIRS" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
def r(name):
    x = json.load(open(f"{d}/{name}.json")); return x["results"][0] if "results" in x else (x[0] if isinstance(x, list) else x)
on = [r(f"on{i}") for i in range(1, n + 1)]; off = [r(f"off{i}") for i in range(1, n + 1)]
mean = lambda xs, k: sum(x[k] or 0 for x in xs) / len(xs)
print(int(mean(on, "iops")), int(mean(off, "iops")), f'{mean(on, "pid_cpu_us_per_io"):.2f}', f'{mean(off, "pid_cpu_us_per_io"):.2f}')
PY
)
C=$OFF
echo "   mean on / off: $ON / $OFF IOPS = $(python3 -c "print(f'{$ON/$OFF:.3f}')") (target > 0.95); node CPU per I/O $ONCPU / $OFFCPU us; C = $C IOPS"

R=$(( C * 7 / 10 ))
echo "== 2. lease A asks for R = $R IOPS (0.7 C) while lease B reads flat out"
run_pair() { # tag
  RT=$((RUNTIME + 2)) bench "$1-b" free --rw randread --bs 4k --iodepth 32 &
  local b=$!; sleep 1
  bench "$1-a" prom --rw randread --bs 4k --iodepth 32 --rate-iops "$R"
  wait "$b"
  echo "   A: $(fig row "$1-a")  (per second: $(fig seconds "$1-a" iops))"
  echo "   B: $(fig row "$1-b")"
}
mint prom 0..1G
start_node --no-qos --device-iops "$C" --device-mib-s 100000
echo "  -- scheduler off"; run_pair off
mint prom 0..1G --min-iops "$R"
start_node --device-iops "$C" --device-mib-s 100000
echo "  -- scheduler on, A promised R"; run_pair on
echo "   A got $(fig iops on-a) of R = $R: $(python3 -c "print(f'{$(fig iops on-a)/$R:.3f}')") (target >= 0.95); without the scheduler $(python3 -c "print(f'{$(fig iops off-a)/$R:.3f}')")"

L=$(( C / 4 ))
echo "== 3. caps"
mint capped 0..1G --max-iops "$L"
start_node
bench cap-iops capped --rw randread --bs 4k --iodepth 32
echo "   capped at $L IOPS: $(fig row cap-iops); per second: $(fig seconds cap-iops iops)"
mint capbw 0..1G --max-mib-s 200
bench cap-bw capbw --rw randread --bs 128k --iodepth 8
echo "   capped at 200 MiB/s: $(fig row cap-bw); per second (MiB/s): $(fig seconds cap-bw mib)"
python3 - "$DIR" "$L" <<'PY'
import json, sys
d, L = sys.argv[1], int(sys.argv[2])
def sec(name):
    r = json.load(open(f"{d}/{name}.json")); r = r["results"][0] if "results" in r else (r[0] if isinstance(r, list) else r)
    return r
a = sec("cap-iops"); per = [m * 1048576 / a["bs"] for m in a["timeline_mib_s"]]
b = sec("cap-bw")["timeline_mib_s"]
worst_a = max(abs(x / L - 1) for x in per); worst_b = max(abs(x / 200 - 1) for x in b)
print(f"   worst second: IOPS cap {worst_a*100:.1f}% off, MiB/s cap {worst_b*100:.1f}% off (target within 5%)")
PY

echo "== 4. weights: two leases read flat out together, weights 50 and 150"
mint w1 0..1G --weight 50
mint w3 1G..2G --weight 150
start_node --device-iops "$C" --device-mib-s 100000
bench w1 w1 --rw randread --bs 4k --iodepth 32 &
W=$!
bench w3 w3 --rw randread --bs 4k --iodepth 32
wait "$W"
echo "   weight 50: $(fig row w1)"
echo "   weight 150: $(fig row w3)"
echo "   ratio: $(python3 -c "print(f'{$(fig iops w3)/$(fig iops w1):.2f}')") (weights say 3)"

echo "== 5. the same through the controller and the host library: volumes on one node"
[[ -n "$NODE" ]] && { kill "$NODE"; wait "$NODE" 2>/dev/null || true; NODE=""; }
"$BIN/dasmesh-controller" --listen 127.0.0.1:0 --insecure-no-auth --data-dir "$DIR/ctl" \
  >"$DIR/ctl.out" 2>"$DIR/ctl.log" &
CTL_PID=$!
for _ in $(seq 100); do grep -q '^listening ' "$DIR/ctl.out" 2>/dev/null && break; sleep 0.05; done
CTL=http://$(sed -n 's/^listening //p' "$DIR/ctl.out")
D="$BIN/dasmesh --controller $CTL"
vnode() { # [flags...]: (re)starts the node registered with the controller
  [[ -n "$NODE" ]] && { kill "$NODE"; wait "$NODE" 2>/dev/null || true; }
  "$BIN/dasmesh-node" --listen 127.0.0.1:0 --controller "$CTL" --state-dir "$DIR/vn" \
    --backend "file:$DIR/disk.img" --device-mib-s 100000 "$@" >"$DIR/vn.out" 2>>"$DIR/vn.log" &
  NODE=$!
  for _ in $(seq 200); do [[ $($D --json node list 2>/dev/null | grep -c '"up"') -ge 1 ]] && break; sleep 0.05; done
}
vbench() { # name volume [args...]
  local name=$1 vol=$2; shift 2
  "$BIN/dasmesh-bench" --no-progress --controller "$CTL" --target "volume:$vol" --cpu-pid "$NODE" \
    --runtime "${RT:-$RUNTIME}s" --json "$DIR/$name.json" "$@" >"$DIR/$name.txt" 2>&1
}
# The figure is what the node serves one volume without terms here, alone.
vnode --device-iops 1000000
$D volume create plain --size 512M >/dev/null
vbench v-alone plain --rw randread --bs 4k --iodepth 32
CV=$(fig iops v-alone)
RV=$(( CV * 7 / 10 )); LV=$(( CV / 4 ))
echo "   one volume alone: $(fig row v-alone): C = $CV IOPS"
vnode --device-iops "$CV"
$D volume create promised --size 512M --iops "$RV" >/dev/null
$D volume create capped --size 512M --max-iops "$LV" >/dev/null
vpair() { # tag
  RT=$((RUNTIME + 2)) vbench "$1-b" plain --rw randread --bs 4k --iodepth 32 &
  local b=$!; sleep 1
  vbench "$1-a" promised --rw randread --bs 4k --iodepth 32 --rate-iops "$RV"
  wait "$b"
  echo "     promised: $(fig row "$1-a")  (per second: $(fig seconds "$1-a" iops))"
  echo "     plain:    $(fig row "$1-b")"
}
echo "   volume promised R = $RV (0.7 C) asking R, volume without terms flat out:"
echo "   -- node with --no-qos"
vnode --device-iops "$CV" --no-qos; vpair v-off
echo "   -- node with the scheduler"
vnode --device-iops "$CV"; vpair v-on
echo "     promised got $(python3 -c "print(f'{$(fig iops v-on-a)/$RV:.3f}')") R (target >= 0.95); without the scheduler $(python3 -c "print(f'{$(fig iops v-off-a)/$RV:.3f}')")"
vbench v-cap capped --rw randread --bs 4k --iodepth 32
echo "   volume capped at $LV IOPS, flat out: $(fig row v-cap); per second: $(fig seconds v-cap iops)"
python3 - "$DIR" "$LV" <<'PY'
import json, sys
d, L = sys.argv[1], int(sys.argv[2])
r = json.load(open(f"{d}/v-cap.json"))["results"][0]
per = [m * 1048576 / r["bs"] for m in r["timeline_mib_s"]]
print(f"     worst second {max(abs(x / L - 1) for x in per)*100:.1f}% off (target within 5%)")
PY
$D volume show promised | grep -E "terms|delivered" | sed 's/^/   /'
kill "$CTL_PID" 2>/dev/null || true
