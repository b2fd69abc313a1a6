#!/usr/bin/env bash
# The standard benchmark set: builds release binaries, then runs the `pairs`
# scenario against the null relay and bachata (embedded, memory and Redis
# stores; Redis also with two nodes: senders on one, receivers on the
# other; each run spawns its own redis-server with AOF `everysec`),
# `idle`, `chaos`, `fanout` (null relay and bachata) and `reconnect`.
# Loopback only; each run is bounded by --duration (or rounds). Prints the
# tables that docs/performance.md quotes. `scripts/bench.sh --micro` also
# runs the criterion microbenchmarks (codec, route chain, memory and redb
# stores; about two more minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p bachata-server -p bachata-bench
bench=target/release/bachata-bench
server=target/release/bachata
echo "# $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "## pairs P=50 W=64, 100-byte payloads, embedded store"
$bench pairs --spawn $server --store embedded --pairs 50 --window 64 --payload 100 --duration 10s
echo "## pairs P=50 W=64, memory store"
$bench pairs --spawn $server --store memory --pairs 50 --window 64 --payload 100 --duration 10s
echo "## pairs P=50 W=64, embedded and Redis stores in one invocation (Redis CPU reported)"
$bench pairs --spawn $server --store embedded,redis --pairs 50 --window 64 --payload 100 --duration 10s
echo "## pairs P=50 W=64, embedded store without and with a route hook that answers {\"pass\": true}"
$bench pairs --spawn $server --store embedded --route-hook-pass --pairs 50 --window 64 --payload 100 --duration 10s
echo "## the same with a route hook that answers each call after 5 ms (an application with a database)"
$bench pairs --spawn $server --store embedded --route-hook-pass --route-hook-delay 5ms --pairs 50 --window 64 --payload 100 --duration 10s
echo "## the same with batched route hook calls (--route-hook-batch 64), the hook answering at once"
$bench pairs --spawn $server --store embedded --route-hook-pass --route-hook-batch 64 --pairs 50 --window 64 --payload 100 --duration 10s
echo "## pairs P=50 W=64, two nodes on one Redis: senders on node A, receivers on node B"
$bench pairs --spawn $server --store redis --nodes 2 --pairs 50 --window 64 --payload 100 --duration 10s
echo "## pairs P=10 W=1 (latency), Redis store"
$bench pairs --spawn $server --store redis --pairs 10 --window 1 --payload 100 --duration 10s
echo "## fsync: the disk's floor under every durable commit (the data directory's file system)"
$bench fsync --dir "${TMPDIR:-/tmp}"
echo "## pairs P=10 W=1 (latency), embedded store"
$bench pairs --spawn $server --store embedded --pairs 10 --window 1 --payload 100 --duration 10s
echo "## idle: 10,000 connections, server RSS per connection"
$bench idle --spawn $server --connections 10000
echo "## chaos: reliable load, the server SIGKILLed and restarted 5 times"
$bench chaos --spawn $server --kills 5 --pairs 10 --window 16 --duration 15s
echo "## chaos: two nodes on one Redis (AOF everysec), senders on one, receivers on the other, each SIGKILLed in turn"
$bench chaos --spawn $server --store redis --nodes 2 --kills 4 --pairs 10 --window 16 --duration 15s
echo "## fanout: a group of 100 members, 1 sender, W=16, embedded store"
$bench fanout --spawn $server --store embedded --members 100 --senders 1 --window 16 --duration 10s
echo "## fanout: a group of 100 members, 1 sender, W=16, memory store"
$bench fanout --spawn $server --store memory --members 100 --senders 1 --window 16 --duration 10s
echo "## fanout: a group of 100 members, 4 senders, W=16, embedded store"
$bench fanout --spawn $server --store embedded --members 100 --senders 4 --window 16 --duration 10s
echo "## reconnect: 200 receivers x 10 pending messages, all at once, 5 rounds, embedded store"
$bench reconnect --spawn $server --store embedded --receivers 200 --messages 10 --rounds 5 --concurrency 200
if [ "${1:-}" = "--micro" ]; then
  echo "## criterion microbenchmarks"
  cargo bench -q -p bachata-proto -p bachata-core -p bachata-store-redb 2>&1 \
    | grep -E '^[a-z_]+/|time:|thrpt:'
fi
