#!/usr/bin/env bash
# The standard benchmark set: builds release binaries, then runs the `pairs`
# scenario against the null relay and bachata (embedded and memory stores).
# Loopback only; each run is bounded by --duration. Prints the tables that
# docs/performance.md quotes.
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
echo "## pairs P=10 W=1 (latency), embedded store"
$bench pairs --spawn $server --store embedded --pairs 10 --window 1 --payload 100 --duration 10s
echo "## idle: 10,000 connections, server RSS per connection"
$bench idle --spawn $server --connections 10000
echo "## chaos: reliable load, the server SIGKILLed and restarted 5 times"
$bench chaos --spawn $server --kills 5 --pairs 10 --window 16 --duration 15s
