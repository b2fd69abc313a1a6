#!/usr/bin/env bash
# End-to-end test of the demo page (`/`) in a real headless browser.
#
#   bash e2e/run.sh [--update-screenshot]
#
# Needs: target/debug/bachata (built by `cargo build -p bachata-server` or
# `cargo test`; this script builds nothing), Debian's chromium at
# /usr/bin/chromium (or $CHROMIUM), and `npm ci` done in e2e/ (playwright-core,
# which never downloads a browser). Starts bachata on a free loopback port with
# a temporary data dir, runs e2e/*.test.mjs with node's test runner, stops the
# server. The screenshot goes to target/e2e/demo.png; --update-screenshot
# also copies it to docs/demo.png.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${BACHATA_BIN:-target/debug/bachata}
chromium=${CHROMIUM:-/usr/bin/chromium}
out=target/e2e
update=0
for arg in "$@"; do
  case "$arg" in
    --update-screenshot) update=1 ;;
    *) echo "usage: $0 [--update-screenshot]" >&2; exit 2 ;;
  esac
done

[ -x "$bin" ] || { echo "e2e: no server binary at $bin (cargo build -p bachata-server)" >&2; exit 1; }
[ -x "$chromium" ] || { echo "e2e: no chromium at $chromium (apt-get install chromium)" >&2; exit 1; }
[ -d e2e/node_modules/playwright-core ] || { echo "e2e: run npm ci in e2e/ first" >&2; exit 1; }

tmp=$(mktemp -d)
mkdir -p "$out"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      # Graceful shutdown takes at most 10 s; then it is killed.
      for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

# Starts bachata with extra arguments, logging to $1; prints its address.
start() {
  local log=$1 pid addr
  shift
  env -u BACHATA_LISTEN -u BACHATA_STORE -u BACHATA_JWT_SECRET -u BACHATA_API_KEY -u BACHATA_SIGN_KEY \
    -u BACHATA_BIN \
    BACHATA_LOG=info "$bin" serve --listen 127.0.0.1:0 "$@" 2>"$log" &
  pid=$!
  pids+=("$pid")
  addr=
  for _ in $(seq 1 150); do # 15 s at most
    addr=$(sed -n 's/.*accepting connections addr=\(127\.0\.0\.1:[0-9]*\).*/\1/p' "$log" | head -n 1)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "e2e: bachata exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "e2e: bachata did not start:" >&2; cat "$log" >&2; exit 1; }
  echo "$addr"
}

log="$out/server.log"
start "$log" --store embedded --data-dir "$tmp/data" > "$tmp/addr"
addr=$(cat "$tmp/addr")
echo "e2e: bachata on http://$addr"
# A second server that is out of room for pending messages at once (the
# store_full case of the page).
start "$out/server-full.log" --store memory --max-retained-bytes 1KiB > "$tmp/full-addr"
full=$(cat "$tmp/full-addr")
echo "e2e: a full bachata on http://$full"

status=0
BACHATA_URL="http://$addr" BACHATA_FULL_URL="http://$full" CHROMIUM="$chromium" E2E_SCREENSHOT="$out/demo.png" \
  timeout 600 node --test e2e/ || status=$?

if [ "$status" -ne 0 ]; then
  echo "e2e: failed; the server log is $log" >&2
  exit "$status"
fi
if [ "$update" -eq 1 ]; then
  cp "$out/demo.png" docs/demo.png
  echo "e2e: updated docs/demo.png"
fi
echo "e2e: screenshot at $out/demo.png"
