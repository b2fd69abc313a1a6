#!/usr/bin/env bash
# WebSocket conformance of bachata's socket handling against the Autobahn
# TestSuite (protocol.md section 9, docs/security.md):
#
# 1. the echo mode of the same WebSocket layer (the `ws_echo` example:
#    the server's accept loop, limits and close handling, with an echo
#    handler), sections 1-7 and 9 with the frame limit raised to 16 MiB
#    for section 9: every case OK, NON-STRICT or INFORMATIONAL;
# 2. the real `/messages` of `bachata serve --store memory`, sections 1-7:
#    every case ends with a clean closing handshake (the cases' messages
#    are not chat messages, so the server answers them with 400s; only the
#    close is judged).
#
#   scripts/websocket-conformance.sh [--binary target/debug/bachata]
#
# Builds the example (and the server unless --binary is given), starts both
# on free loopback ports and stops them on exit. Reports go to
# target/autobahn/report-{echo,close}.
set -euo pipefail
cd "$(dirname "$0")/.."

bachata=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) bachata=${2:?--binary needs a path}; shift 2 ;;
    *) echo "usage: $0 [--binary PATH]" >&2; exit 2 ;;
  esac
done

cargo build --locked -q -p bachata-server --example ws_echo
echo_bin=target/debug/examples/ws_echo
if [ -z "$bachata" ]; then
  cargo build --locked -q -p bachata-server
  bachata=target/debug/bachata
fi

# A loopback port nobody listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pids=()
data=$(mktemp -d)
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

wait_for_port() {
  local port=$1 i
  for i in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "websocket-conformance.sh: nothing listens on port $port" >&2
  return 1
}

scripts/autobahn.sh --install-only

echo_port=$(free_port)
"$echo_bin" --listen "127.0.0.1:$echo_port" --max-frame-bytes 16777216 &
pids+=($!)
wait_for_port "$echo_port"
scripts/autobahn.sh --mode echo --url "ws://127.0.0.1:$echo_port/messages"

serve_port=$(free_port)
BACHATA_LOG=warn "$bachata" serve --store memory --data-dir "$data" \
  --listen "127.0.0.1:$serve_port" &
pids+=($!)
wait_for_port "$serve_port"
scripts/autobahn.sh --mode close --url "ws://127.0.0.1:$serve_port/messages?channel=autobahn"
