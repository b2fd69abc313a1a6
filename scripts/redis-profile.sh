#!/usr/bin/env bash
# Where Redis spends its time per message: runs one redis-server (AOF
# everysec, or none with AOF=no) and one `bachata serve --store redis` on
# loopback, drives `bachata-bench pairs` through it, and prints the CPU of
# each process per delivered message and Redis's `INFO commandstats` per
# message (calls and microseconds of each command; `evalsha` includes the
# commands its scripts call). docs/performance.md quotes it.
#
# usage: scripts/redis-profile.sh [duration, default 5s]   (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-5s}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port)
BPORT=$(free_port)
DIR=$(mktemp -d)
trap 'kill $BPID 2>/dev/null; redis-cli -p $RPORT shutdown nosave >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly "${AOF:-yes}" \
  --appendfsync everysec --dir "$DIR" --daemonize yes --logfile "$DIR/redis.log"
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
BACHATA_LOG=warn target/release/bachata serve --listen "127.0.0.1:$BPORT" --store redis \
  --redis-url "redis://127.0.0.1:$RPORT" >"$DIR/bachata.log" 2>&1 &
BPID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$BPORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$RPORT" config resetstat >/dev/null
RPID=$(redis-cli -p "$RPORT" info server | tr -d '\r' | awk -F: '/^process_id/ {print $2}')
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
r0=$(ticks "$RPID"); b0=$(ticks "$BPID")
out=$(target/release/bachata-bench pairs --url "ws://127.0.0.1:$BPORT" --pairs 50 --window 64 \
  --payload 100 --duration "$D" 2>&1)
r1=$(ticks "$RPID"); b1=$(ticks "$BPID")
echo "$out" | head -1
N=$(echo "$out" | head -1 | awk '{for(i=1;i<=NF;i++) if($i=="delivered") print $(i+1)}')
echo "messages $N; CPU per message: redis-server $(( (r1-r0)*10000000/N/1000 )) us, bachata $(( (b1-b0)*10000000/N/1000 )) us"
redis-cli -p "$RPORT" info commandstats | tr -d '\r' | N=$N python3 -c '
import os, re, sys
n = int(os.environ["N"])
rows = []
for line in sys.stdin:
    m = re.match(r"cmdstat_(\S+):calls=(\d+),usec=(\d+)", line)
    if m:
        calls, usec = int(m.group(2)), int(m.group(3))
        rows.append((usec / n, m.group(1), calls / n, usec / max(1, calls)))
for per_msg, name, calls, per_call in sorted(rows, reverse=True):
    if calls >= 0.01:
        print(f"{name:20s} calls/msg {calls:6.2f}  us/call {per_call:7.2f}  us/msg {per_msg:6.2f}")
'
