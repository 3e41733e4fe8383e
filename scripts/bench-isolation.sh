#!/usr/bin/env bash
# Hot-SKU isolation benchmark: a uniform load and a hot-SKU load on SKUs of
# one initial range (`SKU-...`), on a fresh 3-node `stockd dev` cluster in a
# temporary directory. Prints each load's rate every 5 s, the ranges of
# `SKU-...` every second (seconds since the hot load began) and the splits
# the nodes made by themselves. NOSPLIT=1 runs the same with both split
# triggers off, for the comparison. Needs `make build` first (bin/).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
stockd="$root/bin/stockd"
stockctl="$root/bin/stockctl"
work="$(mktemp -d)"
cd "$work"
args=()
if [ "${NOSPLIT:-0}" = 1 ]; then
  printf '[cluster]\nsplit-load-cmds-per-s = 0\nsplit-positions-max = 0\n' > nosplit.toml
  args=(--config nosplit.toml)
fi
"$stockd" dev "${args[@]}" > dev.log 2>&1 &
dev=$!
trap 'kill -INT $dev 2>/dev/null; wait $dev 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do grep -q "^ready" dev.log && break; sleep 0.5; done
ctl=("$stockctl" --addr 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 --certs ./data/certs)
"${ctl[@]}" bench --workload uniform --skus 1000 --sku-prefix SKU- --clients 32 --duration 60s --report-every 5s > uniform.out 2> uniform.err &
uniform=$!
sleep 8
started=$(date +%s.%N)
"${ctl[@]}" bench --workload hot --sku-prefix SKU- --clients 32 --duration 45s --report-every 5s > hot.out 2> hot.err &
hot=$!
while kill -0 $hot 2>/dev/null; do
  ranges=$("${ctl[@]}" --json shard list | python3 -c 'import json,sys; print(" ".join("%s:[%s,%s)" % (s["group_id"], s["start_sku"][:14], s["end_sku"][:14]) for s in json.load(sys.stdin)["shards"] if s["start_sku"].startswith("SKU") or s["end_sku"].startswith("SKU")))')
  echo "$(echo "$(date +%s.%N) - $started" | bc | cut -c1-6) s  $ranges" >> ranges.log
  sleep 1
done
wait $uniform
echo "== uniform (started 8 s before the hot load)"; grep bench: uniform.err || true; grep -E "ops_per_s|latency" uniform.out
echo "== hot"; grep bench: hot.err || true; grep -E "ops_per_s|latency" hot.out
echo "== ranges of SKU-..."; cat ranges.log
echo "== splits"; grep -h "split by itself" data/node-*/stockd.log | sed 's/\x1b\[[0-9;]*m//g' || true
