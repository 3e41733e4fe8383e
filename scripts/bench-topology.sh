#!/usr/bin/env bash
# Topology benchmarks on fresh `stockd dev` clusters in temporary
# directories (the nodes and the load generator share this machine's cores,
# so compare figures of one run only). Needs `make build` first (bin/).
#
# dip:    a uniform load (1,000 SKUs, 64 clients, 45 s, its rate every
#         second) on 4 nodes with balancing off; 10 s in, the busiest
#         group's replica moves from node 3 to node 4; 25 s in, that group
#         is split. Prints the rate per second with the two events marked.
# grow:   the same uniform load (20 s) on 3 nodes with balancing on; then
#         node 4 joins, the balancer evens out replicas and leaders, and the
#         load runs again. Prints both rates and `balance status` after.
#
# Both start with eight ranges (the split points the jepsen runs use).
#
# CPU_PER_NODE=P (percent of one core) puts every node process in a cgroup
# of its own capped at P% of a core (in 10 ms periods), as if each node
# were a small machine of its own: without it the nodes share this
# machine's cores, and a 4th node adds no capacity, only another process's
# Raft rounds, TLS and fsyncs on the same cores. The load generator is not
# capped. CLIENTS=N sets the load's clients (default 64): capped nodes
# wait out their throttled periods on every hop, so 64 closed-loop clients
# measure that wait, not capacity; 256 keep them busy.
#
# Usage: [CPU_PER_NODE=P] [CLIENTS=N] scripts/bench-topology.sh dip|grow
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
stockd="$root/bin/stockd"
stockctl="$root/bin/stockctl"
what="${1:-}"
work="$(mktemp -d)"
cd "$work"
pids=()
capped=()
cleanup() {
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for dir in "${capped[@]}"; do rmdir "$dir" 2>/dev/null || true; done
}
trap cleanup EXIT

clients="${CLIENTS:-64}"
ranges='groups-per-region = 8\nsplit-points = ["2", "4", "6", "8", "a", "c", "e"]\n'

# cap_nodes: each node process of this run (its working directory is this
# run's) in a cgroup of its own, capped at CPU_PER_NODE% of one core.
cap_nodes() {
  [ -n "${CPU_PER_NODE:-}" ] || return 0
  local quota=$((CPU_PER_NODE * 100)) pid dir
  for pid in $(pgrep -f "stockd start" || true); do
    [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$work" ] || continue
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
      dir=/sys/fs/cgroup/stockd-bench-$pid
      mkdir -p "$dir" && echo "$quota 10000" > "$dir/cpu.max"
    else
      dir=/sys/fs/cgroup/cpu/stockd-bench-$pid
      mkdir -p "$dir" && echo 10000 > "$dir/cpu.cfs_period_us" && echo "$quota" > "$dir/cpu.cfs_quota_us"
    fi
    echo "$pid" > "$dir/cgroup.procs"
    capped+=("$dir")
  done
}

start_dev() { # start_dev CONFIG
  "$stockd" dev --config "$1" > dev.log 2>&1 &
  pids+=($!)
  for _ in $(seq 1 120); do grep -q "^ready" dev.log && return 0; sleep 0.5; done
  echo "the dev cluster did not start; see $work/dev.log" >&2
  exit 1
}

join_node4() {
  "$stockd" dev --config "$1" --join > join.log 2>&1 &
  pids+=($!)
  for _ in $(seq 1 120); do grep -q "^joined" join.log && return 0; sleep 0.5; done
  echo "node 4 did not join; see $work/join.log" >&2
  exit 1
}

ctl3=("$stockctl" --addr 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 --certs ./data/certs)
ctl4=("$stockctl" --addr 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103,127.0.0.1:7104 --certs ./data/certs)

case "$what" in
  dip)
    printf "[cluster]\n${ranges}balance = false\nsplit-load-cmds-per-s = 0\nsplit-positions-max = 0\nmerge-cold-s = 0\n" > bench.toml
    start_dev bench.toml
    join_node4 bench.toml
    cap_nodes
    "${ctl4[@]}" bench --workload uniform --skus 1000 --clients "$clients" --duration 45s --report-every 1s > uniform.out 2> uniform.err &
    bench=$!
    sleep 10
    group=$("${ctl4[@]}" --json shard list | python3 -c 'import json,sys; s=max(json.load(sys.stdin)["shards"], key=lambda s: s["load_cmds_per_s"]); print(s["group_id"])')
    echo "$(date +%s.%N) move group $group: node 3 -> node 4" > events.log
    "${ctl4[@]}" shard move --group "$group" --from 3 --to 4 >> events.log 2>&1
    echo "$(date +%s.%N) moved" >> events.log
    sleep 10
    echo "$(date +%s.%N) split group $group" >> events.log
    "${ctl4[@]}" shard split --group "$group" >> events.log 2>&1
    echo "$(date +%s.%N) split done" >> events.log
    wait $bench
    echo "== events (wall clock)"; cat events.log
    echo "== reservations/s per second (the bench's own clock)"; grep "bench:" uniform.err || true
    echo "== summary"; grep -E "ops_per_s|latency|errors|conserved" uniform.out || cat uniform.out
    ;;
  grow)
    printf "[cluster]\n${ranges}balance = true\nsplit-load-cmds-per-s = 0\nsplit-positions-max = 0\nmerge-cold-s = 0\n" > bench.toml
    start_dev bench.toml
    cap_nodes
    "${ctl3[@]}" bench --workload uniform --skus 1000 --clients "$clients" --duration 20s > three.out 2> three.err
    started=$(date +%s)
    join_node4 bench.toml
    cap_nodes
    for _ in $(seq 1 180); do
      "${ctl4[@]}" balance status | grep -q "^balanced" && break
      sleep 1
    done
    echo "== balanced $(( $(date +%s) - started )) s after node 4 was started"
    "${ctl4[@]}" balance status
    "${ctl4[@]}" bench --workload uniform --skus 1000 --clients "$clients" --duration 20s > four.out 2> four.err
    echo "== 3 nodes"; grep -E "ops_per_s|latency|errors|conserved" three.out || cat three.out
    echo "== 4 nodes, balanced"; grep -E "ops_per_s|latency|errors|conserved" four.out || cat four.out
    ;;
  *)
    echo "usage: $0 dip|grow" >&2
    exit 2
    ;;
esac
