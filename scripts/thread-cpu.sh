#!/usr/bin/env bash
# Server CPU per 100k messages, split by thread (the tokio workers, the
# embedded store's writer), under the standard `pairs` load:
#   scripts/thread-cpu.sh BINARY [embedded|memory] [duration]
# Starts BINARY on a loopback port and a fresh data directory, runs
# `bachata-bench pairs --url` (P=50 W=64, ~100-byte payloads) against it, and
# reads each thread's CPU time from /proc before the server stops. Used for
# the step-by-step figures of docs/performance.md ("Efficiency"), where one
# thread's share is the point and the null relay is not needed.
set -euo pipefail
bin=${1:?usage: thread-cpu.sh BINARY [embedded|memory] [duration]}
store=${2:-embedded}
duration=${3:-6s}
bench=${BENCH:-$(dirname "$0")/../target/release/bachata-bench}
dir=$(mktemp -d)
log="$dir/server.log"
port=$((20000 + RANDOM % 20000))
BACHATA_API_KEY=thread-cpu BACHATA_LOG=warn,bachata_server=info \
  "$bin" serve --listen "127.0.0.1:$port" --store "$store" --data-dir "$dir/data" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do grep -q 'addr=' "$log" && break; sleep 0.1; done
grep -q 'addr=' "$log" || { cat "$log" >&2; exit 1; }
before=$(for t in /proc/$pid/task/*; do echo "$(cat "$t/comm") $(cut -d' ' -f14,15 "$t/stat")"; done)
out=$("$bench" pairs --url "ws://127.0.0.1:$port" --api-key thread-cpu --pairs 50 --window 64 \
  --payload 100 --duration "$duration")
after=$(for t in /proc/$pid/task/*; do echo "$(cat "$t/comm") $(cut -d' ' -f14,15 "$t/stat")"; done)
msgs=$(awk '/^server/ {print $5}' <<<"$out")
echo "$out" | head -1
# Threads that live through the run: CPU after minus before, by name.
awk -v n="$msgs" -v tck="$(getconf CLK_TCK)" '
  NR == FNR { b[$1] += $2 + $3; next }
  { a[$1] += $2 + $3 }
  END { for (k in a) if (a[k] - b[k] > 0) printf "%-18s %.3f CPU-s per 100k messages\n", k, (a[k] - b[k]) / tck / n * 100000 }
' <(echo "$before") <(echo "$after") | sort
