#!/usr/bin/env bash
# ctl-compare.sh: the control plane measured, in one run: the embedded controller (redb) against
# a pair of controllers over a 3-member etcd (Debian's etcd 3.4 on loopback), each pool with
# three nodes (memory backends, TCP only, --poll interrupt --no-pin: they idle without spinning).
#   1. mount latency: dasmesh-ctlbench mounts --create (HOSTS hosts on VOLUMES volumes, raw gRPC
#      Mount + Unmount, no node contacted) against the embedded controller, then the etcd pair;
#   2. store growth: with nothing but the nodes' heartbeats, controller.redb's size and etcd's
#      db size, keys and revision before and after IDLE seconds;
#   3. failover: TRIALS times, SIGKILL the active controller of the pair, time the first mount
#      served through both URLs (dasmesh-ctlbench probe), restart the killed one on its address
#      and wait until it is a standby again; p50/p99/max at the end.
# Needs bash, curl, etcd and etcdctl, and the binaries (no python).
# Usage: bench/ctl-compare.sh [--bin DIR] [--duration 10] [--hosts 100] [--volumes 100]
#                             [--idle SECONDS] [--trials 20] [--out DIR]
#   ETCD_CPUS / CTL_CPUS / NODE_CPUS / BENCH_CPUS: taskset CPU lists (default: none, every
#   process may run anywhere; on a bigger machine give each its own). PROBE_FLAGS: extra probe
#   flags (e.g. "--poll 50ms": when the control plane serves again, rather than what a host sees
#   through the client library's back-off).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=""; DURATION=10; HOSTS=100; VOLUMES=100; IDLE=60; TRIALS=20; OUT=""
usage() { echo "usage: $0 [--bin DIR] [--duration 10] [--hosts 100] [--volumes 100] [--idle SECONDS] [--trials 20] [--out DIR]" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN="$2"; shift 2;;
    --duration) DURATION="$2"; shift 2;;
    --hosts) HOSTS="$2"; shift 2;;
    --volumes) VOLUMES="$2"; shift 2;;
    --idle) IDLE="$2"; shift 2;;
    --trials) TRIALS="$2"; shift 2;;
    --out) OUT="$2"; shift 2;;
    *) usage;;
  esac
done
for v in DURATION HOSTS VOLUMES IDLE TRIALS; do [[ ${!v} =~ ^[0-9]+$ ]] || { echo "ctl-compare: --${v,,} takes a whole number, not ${!v}" >&2; exit 2; }; done
for c in curl etcd etcdctl; do command -v "$c" >/dev/null || { echo "ctl-compare: $c not found (scripts/setup.sh installs etcd-server, etcd-client and curl)" >&2; exit 1; }; done
BUILT=""
if [[ -z "$BIN" ]]; then
  BUILT=1
  cargo build --release -q -p dasmesh-cli -p dasmesh-node -p dasmesh-controller -p dasmesh-bench
  BIN=$PWD/target/release
fi
BIN=$(cd "$BIN" && pwd)
for b in dasmesh dasmesh-node dasmesh-controller dasmesh-ctlbench; do [[ -x $BIN/$b ]] || { echo "ctl-compare: no $BIN/$b" >&2; exit 1; }; done
ts() { local cpus=$1; shift; TS=(); [[ -n $cpus ]] && TS=(taskset -c "$cpus"); return 0; }
ETCD_CPUS=${ETCD_CPUS:-}; CTL_CPUS=${CTL_CPUS:-}; NODE_CPUS=${NODE_CPUS:-}; BENCH_CPUS=${BENCH_CPUS:-}; PROBE_FLAGS=${PROBE_FLAGS:-}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# With --bin the binaries may come from another commit than the checkout's.
[[ -n $BUILT ]] || COMMIT+=" (checkout; binaries from $BIN)"
DIR=$(mktemp -d "${TMPDIR:-/tmp}/ctl-compare.XXXXXX")
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/ctl-compare-out.XXXXXX")}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
# Every ETCD_* variable is a flag to etcd: none from the caller's environment may reach it.
# ETCD_CPUS is ours: kept as a plain (unexported) shell variable.
etcd_cpus=$ETCD_CPUS
while read -r v; do unset "$v"; done < <(compgen -e | grep '^ETCD_' || true)
ETCD_CPUS=$etcd_cpus
export ETCDCTL_API=3

declare -A PID=()   # name -> pid of every process still to stop
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for n in "${!PID[@]}"; do kill "${PID[$n]}" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for n in "${!PID[@]}"; do kill -0 "${PID[$n]}" 2>/dev/null && alive=1; done
    ((alive)) || break; sleep 0.1
  done
  for n in "${!PID[@]}"; do kill -9 "${PID[$n]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # The logs outlive the temp dir: a slow failover is explained there.
  mkdir -p "$OUT/logs" && cp "$DIR"/*.log "$OUT/logs/" 2>/dev/null || true
  rm -rf "$DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
say() { echo "ctl-compare: $*" >&2; }
die() { say "$*"; exit 1; }
addr_of() { # file: waits for its `listening ADDR` line
  for _ in $(seq 400); do [[ -s "$1" ]] && grep -q '^listening ' "$1" && { sed -n 's/^listening //p' "$1" | head -n1; return; }; sleep 0.05; done
  die "no listening line in $1 (log: ${1%.out}.log)"
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_ports() { # n: n distinct ports nothing listens on (etcd needs them fixed before it starts)
  local n=$1 p=$((20000 + RANDOM % 30000)) got=()
  while ((${#got[@]} < n)); do port_free "$p" && got+=("$p"); p=$((p + 1)); done
  echo "${got[@]}"
}
metric() { # client-url name: one value of etcd's /metrics, as an integer
  # awk reads to the end: curl fails on a pipe closed early.
  curl -fsS --max-time 5 "$1/metrics" | awk -v m="$2" '$1 == m && !seen { printf "%d\n", $2; seen = 1 }'
}
revision() { # client-url
  etcdctl --endpoints "$1" --command-timeout 5s endpoint status -w json | grep -o '"revision":[0-9]*' | head -n1 | cut -d: -f2
}
CB() { ts "$BENCH_CPUS"; "${TS[@]}" "$BIN/dasmesh-ctlbench" "$@"; }
role() { CB role --controller "$1" 2>/dev/null || echo down; }

# --- etcd: 3 members on loopback ------------------------------------------------------------------
ETCD_EPS=""
start_etcd() {
  local ports; read -r -a ports <<<"$(free_ports 6)"
  local cluster="" i
  for i in 0 1 2; do cluster+="${cluster:+,}m$i=http://127.0.0.1:${ports[2*i+1]}"; done
  ETCD_EPS=""
  for i in 0 1 2; do
    local c=http://127.0.0.1:${ports[2*i]} p=http://127.0.0.1:${ports[2*i+1]}
    ETCD_EPS+="${ETCD_EPS:+,}$c"
    ts "$ETCD_CPUS"
    "${TS[@]}" etcd --name "m$i" --data-dir "$DIR/m$i.etcd" \
      --listen-client-urls "$c" --advertise-client-urls "$c" \
      --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "ctl-compare-$$" \
      --heartbeat-interval 100 --election-timeout 1000 >>"$DIR/etcd-m$i.log" 2>&1 &
    PID[etcd$i]=$!
  done
  local ok=0
  for _ in $(seq 300); do
    ok=0
    for i in 0 1 2; do
      kill -0 "${PID[etcd$i]}" 2>/dev/null || return 1
      curl -fsS --max-time 1 "http://127.0.0.1:${ports[2*i]}/health" 2>/dev/null | grep -q '"health":"true"' && ok=$((ok + 1))
    done
    ((ok == 3)) && return 0
    sleep 0.1
  done
  return 1
}
if ! start_etcd; then
  # A port taken between the check and etcd's bind: once more on others.
  grep -h 'address already in use' "$DIR"/etcd-m*.log >&2 || true
  for i in 0 1 2; do kill "${PID[etcd$i]}" 2>/dev/null || true; wait "${PID[etcd$i]}" 2>/dev/null || true; unset "PID[etcd$i]"; done
  rm -rf "$DIR"/m*.etcd; say "etcd did not start; trying other ports"
  start_etcd || { tail -n 5 "$DIR"/etcd-m*.log >&2; die "etcd not healthy within 30 s"; }
fi
ETCD1=${ETCD_EPS%%,*}
say "etcd: $ETCD_EPS"

# --- controllers ----------------------------------------------------------------------------------
start_ctl() { # name listen-addr args...: starts controller `name` (appending to its logs)
  local name=$1 listen=$2; shift 2
  : >"$DIR/$name.out"
  ts "$CTL_CPUS"
  "${TS[@]}" "$BIN/dasmesh-controller" --listen "$listen" --insecure-no-auth "$@" >>"$DIR/$name.out" 2>>"$DIR/$name.log" &
  PID[$name]=$!
}
start_ctl emb 127.0.0.1:0 --data-dir "$DIR/emb"
EMB=http://$(addr_of "$DIR/emb.out")
ETCD_ARGS=(--etcd "$ETCD_EPS" --etcd-prefix /dasmesh/ --election-ttl 2s --heartbeat 1s)
start_ctl ea 127.0.0.1:0 "${ETCD_ARGS[@]}"
EA=$(addr_of "$DIR/ea.out")
start_ctl eb 127.0.0.1:0 "${ETCD_ARGS[@]}"
EB=$(addr_of "$DIR/eb.out")
declare -A CTL_ADDR=([ea]=$EA [eb]=$EB)
PAIR=http://$EA,http://$EB
say "embedded controller $EMB; etcd pair $PAIR"

# --- nodes: three per pool ------------------------------------------------------------------------
start_nodes() { # pool controllers
  local pool=$1 ctls=$2 i
  for i in 1 2 3; do
    ts "$NODE_CPUS"
    "${TS[@]}" "$BIN/dasmesh-node" --listen 127.0.0.1:0 --controller "$ctls" --state-dir "$DIR/$pool-n$i" \
      --no-local-socket --backend memory:1G --node-id "$i" --poll interrupt --no-pin \
      >"$DIR/$pool-n$i.out" 2>"$DIR/$pool-n$i.log" &
    PID[$pool-n$i]=$!
    addr_of "$DIR/$pool-n$i.out" >/dev/null
  done
}
wait_nodes() { # controllers: until the pool lists 3 nodes up
  for _ in $(seq 300); do
    [[ $("$BIN/dasmesh" --controller "$1" --json node list 2>/dev/null | grep -o '"state": *"[A-Za-z_]*"' | grep -ic up) -ge 3 ]] && return 0
    sleep 0.1
  done
  "$BIN/dasmesh" --controller "$1" node list >&2 || true
  die "3 nodes not up on $1 within 30 s"
}
start_nodes emb "$EMB"
start_nodes etcd "$PAIR"
wait_nodes "$EMB"
wait_nodes "$PAIR"
"$BIN/dasmesh" --controller "$PAIR" volume create ctlbench-probe --size 4M --layout single >/dev/null

# --- 1. mount latency -----------------------------------------------------------------------------
mounts() { # label controllers
  # A burst first (every host mounts and unmounts once, all at the same moment, on a fresh
  # controller), then the same hosts in a closed loop for DURATION.
  echo "== mounts: $1, a burst ($HOSTS hosts at once, one mount and unmount each)"
  CB mounts --controller "$2" --hosts "$HOSTS" --volumes "$VOLUMES" --rounds 1 --create \
    --json "$OUT/burst-$1.json" | tee "$OUT/burst-$1.txt"
  echo "== mounts: $1 ($HOSTS hosts in a loop, $VOLUMES volumes, ${DURATION}s)"
  CB mounts --controller "$2" --hosts "$HOSTS" --volumes "$VOLUMES" --duration "${DURATION}s" \
    --json "$OUT/mounts-$1.json" | tee "$OUT/mounts-$1.txt"
}
mounts embedded "$EMB"
mounts etcd "$PAIR"

# --- 2. store growth with only heartbeats ---------------------------------------------------------
sleep 2 # the last unmounts' writes land before the first sample
REDB=$DIR/emb/controller.redb
[[ -f $REDB ]] || die "no $REDB"
sample() { # prefix: sets ${prefix}_redb, _db, _inuse, _keys, _rev
  printf -v "${1}_redb" %s "$(stat -c %s "$REDB")"
  printf -v "${1}_db" %s "$(metric "$ETCD1" etcd_mvcc_db_total_size_in_bytes)"
  printf -v "${1}_inuse" %s "$(metric "$ETCD1" etcd_mvcc_db_total_size_in_use_in_bytes)"
  printf -v "${1}_keys" %s "$(metric "$ETCD1" etcd_debugging_mvcc_keys_total)"
  printf -v "${1}_rev" %s "$(revision "$ETCD1")"
}
echo "== store growth: ${IDLE}s with only the nodes' heartbeats (3 nodes per pool, 1 s interval)"
sample before
sleep "$IDLE"
sample after
{
  printf '%-34s %14s %14s %14s %14s\n' "" before after growth "per hour"
  row() { # label before after
    local d=$(($3 - $2))
    printf '%-34s %14d %14d %14d %14d\n' "$1" "$2" "$3" "$d" $((IDLE > 0 ? d * 3600 / IDLE : 0))
  }
  row "controller.redb bytes" "$before_redb" "$after_redb"
  row "etcd db bytes (total)" "$before_db" "$after_db"
  row "etcd db bytes (in use)" "$before_inuse" "$after_inuse"
  row "etcd keys (all revisions)" "$before_keys" "$after_keys"
  row "etcd revision" "$before_rev" "$after_rev"
} | tee "$OUT/growth.txt"

# --- 3. failover ----------------------------------------------------------------------------------
active_of_pair() { # prints ea or eb once one is active and the other standby (30 s at most)
  local a b
  for _ in $(seq 150); do
    a=$(role "http://${CTL_ADDR[ea]}"); b=$(role "http://${CTL_ADDR[eb]}")
    [[ $a == active && $b == standby ]] && { echo ea; return; }
    [[ $a == standby && $b == active ]] && { echo eb; return; }
    sleep 0.2
  done
  die "no active + standby pair within 30 s (ea: $a, eb: $b)"
}
echo "== failover: $TRIALS trials (SIGKILL the active, first mount through $PAIR)"
: >"$OUT/failover.txt"
TIMES=()
for t in $(seq "$TRIALS"); do
  victim=$(active_of_pair)
  kill -9 "${PID[$victim]}"; wait "${PID[$victim]}" 2>/dev/null || true; unset "PID[$victim]"
  echo "--- trial $t: killed $victim at $(date +%T.%N)" >>"$DIR/$victim.log"
  # shellcheck disable=SC2086
  if line=$(CB probe --controller "$PAIR" --volume ctlbench-probe --timeout 30s $PROBE_FLAGS); then
    secs=$(sed -n 's/^first mount after \([0-9.]*\) s$/\1/p' <<<"$line")
    TIMES+=("$secs")
    echo "trial $t: killed $victim (${CTL_ADDR[$victim]}), first mount after $secs s" | tee -a "$OUT/failover.txt"
  else
    echo "trial $t: killed $victim (${CTL_ADDR[$victim]}), $line" | tee -a "$OUT/failover.txt"
    TIMES+=(timeout)
  fi
  # Back on its own address (the list the nodes and hosts were given), as a standby.
  for try in $(seq 20); do
    start_ctl "$victim" "${CTL_ADDR[$victim]}" "${ETCD_ARGS[@]}"
    for _ in $(seq 100); do grep -q '^listening ' "$DIR/$victim.out" && break; kill -0 "${PID[$victim]}" 2>/dev/null || break; sleep 0.05; done
    grep -q '^listening ' "$DIR/$victim.out" && break
    wait "${PID[$victim]}" 2>/dev/null || true; unset "PID[$victim]"
    ((try < 20)) || die "could not restart $victim on ${CTL_ADDR[$victim]} (see $victim.log)"
    sleep 0.25
  done
  for _ in $(seq 150); do [[ $(role "http://${CTL_ADDR[$victim]}") == standby ]] && break; sleep 0.2; done
done
FAILOVER=$(printf '%s\n' "${TIMES[@]}" | grep -v timeout | sort -n | awk '
  { v[NR] = $1 }
  END {
    if (NR == 0) { print "none served"; exit }
    i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
    printf "p50 %.3f s  p99 %.3f s  max %.3f s  (min %.3f s, %d served)", v[i50], v[i99], v[NR], v[1], NR
  }')
TIMEOUTS=$(printf '%s\n' "${TIMES[@]}" | grep -c timeout || true)

# --- summary --------------------------------------------------------------------------------------
{
  echo
  echo "== ctl-compare summary: commit $COMMIT, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, $(uname -r)"
  echo "-- a burst: $HOSTS hosts mount and unmount once, at the same moment; embedded, then etcd"
  cat "$OUT/burst-embedded.txt" "$OUT/burst-etcd.txt"
  echo "-- mounts, embedded (redb) controller, $HOSTS hosts on $VOLUMES volumes, ${DURATION}s"
  cat "$OUT/mounts-embedded.txt"
  echo "-- mounts, etcd pair (3-member etcd), same load"
  cat "$OUT/mounts-etcd.txt"
  echo "-- store growth over ${IDLE}s of heartbeats only"
  cat "$OUT/growth.txt"
  echo "-- failover over $TRIALS trials (target p99 < 5 s): $FAILOVER; $TIMEOUTS timed out (30 s)"
  echo "results and logs in $OUT"
} | tee "$OUT/summary.txt"
