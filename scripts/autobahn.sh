#!/usr/bin/env bash
# Runs the Autobahn|Testsuite (wstest, fuzzingclient mode) against a
# WebSocket server that is already listening, then checks the report with
# scripts/autobahn_check.py.
#
#   scripts/autobahn.sh --url ws://127.0.0.1:PORT/path?query \
#       [--mode echo|close] [--cases '1.*,2.*'] [--exclude '9.3.*'] \
#       [--out DIR] [--timeout SECONDS]
#   scripts/autobahn.sh --install-only
#
# --mode echo : the server echoes every message; each case's protocol
#               behaviour and its closing handshake must pass.
# --mode close: the server is not an echo server, so only the closing
#               handshake is judged (no unclean or failed close).
#
# Default --cases: 1.*-7.* and 9.* in echo mode; 1.*-7.* in close mode,
# because every section 9 case waits 100 s for an echo that a non-echo
# server never sends (54 cases, some 90 minutes).
#
# wstest 0.8.2 only runs on Python 2.7, so it lives in its own virtualenv
# under target/autobahn/venv, built from a fully pinned set (the newest
# releases that still work on 2.7; an unpinned install picks e.g. Automat
# 22.10, which installs on 2.7 but cannot be imported there). The venv is
# reused while its marker file matches the pins and the interpreter.
# Python 2.7 is looked up as $AUTOBAHN_PYTHON2, then python2.7 on PATH,
# then pyenv's versions/2.7.*. Installing needs PyPI and a C compiler
# (wsaccel and zope.interface have no 2.7 wheels).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "autobahn.sh: $*" >&2; exit 2; }

url="" mode=echo cases="" exclude="" out=""
timeout_s=900 install_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --url) url=${2:?--url needs a value}; shift 2 ;;
    --mode) mode=${2:?--mode needs a value}; shift 2 ;;
    --cases) cases=${2:?--cases needs a value}; shift 2 ;;
    --exclude) exclude=${2-}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --timeout) timeout_s=${2:?--timeout needs a value}; shift 2 ;;
    --install-only) install_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
case "$mode" in
  echo) cases=${cases:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*} ;;
  close) cases=${cases:-1.*,2.*,3.*,4.*,5.*,6.*,7.*} ;;
  *) die "--mode must be echo or close, not '$mode'" ;;
esac
[ "$install_only" = 1 ] || [ -n "$url" ] || die "--url ws://HOST:PORT/PATH is required (see --help)"
command -v python3 >/dev/null || die "python3 is needed for the report checker"

base=$PWD/target/autobahn
venv=$base/venv
marker=$venv/.autobahn-pins

# Everything pinned, transitive deps included: the resolver otherwise drifts
# to releases that dropped 2.7 without saying so in their metadata. wsaccel
# and ujson are autobahn's [accelerate] extra, listed by hand because pip
# 20.3 skips that extra here; wsaccel's C UTF-8 validator and masker are
# what keep the 16 MiB cases of section 9 from taking many minutes.
pins=(
  autobahntestsuite==0.8.2 autobahn==0.10.9 txaio==2.1.0
  Twisted==20.3.0 zope.interface==5.5.2 six==1.16.0
  Automat==20.2.0 attrs==21.4.0 constantly==15.1.0 hyperlink==21.0.0
  idna==2.10 incremental==22.10.0 PyHamcrest==1.10.1 typing==3.10.0.0
  klein==20.6.0 Tubes==0.2.1 Werkzeug==1.0.1 Jinja2==2.11.3 MarkupSafe==1.1.1
  pyOpenSSL==21.0.0 cryptography==3.3.2 cffi==1.15.1 pycparser==2.21
  enum34==1.1.10 ipaddress==1.0.23
  service-identity==21.1.0 pyasn1==0.5.1 pyasn1-modules==0.3.0
  unittest2==1.1.0 traceback2==1.4.0 linecache2==1.0.0 argparse==1.4.0
  wsaccel==0.6.6 ujson==2.0.3
)
# virtualenv 16.x is a single module with pip 20.3.4 / setuptools 44 wheels
# inside (the last ones for 2.7), so making the venv needs no download and
# leaves the interpreter's own site-packages untouched.
virtualenv_pin=virtualenv==16.7.12

find_python2() {
  local c
  for c in "${AUTOBAHN_PYTHON2:-}" "$(command -v python2.7 || true)" \
           $(printf '%s\n' "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7.*/bin/python2.7 | sort -rV); do
    # a pyenv shim exists on PATH even when 2.7 is not the active version,
    # so run it rather than trust `command -v`
    [ -n "$c" ] && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null \
      && { echo "$c"; return 0; }
  done
  return 1
}

install_venv() {
  local py want
  py=$(find_python2) || die "no working Python 2.7 found (tried \$AUTOBAHN_PYTHON2, python2.7 on PATH,
  ${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.*). wstest needs 2.7: e.g. 'pyenv install 2.7.18',
  or set AUTOBAHN_PYTHON2=/path/to/python2.7"
  want=$(printf '%s\n' "python=$(readlink -f "$py")" "$virtualenv_pin" "${pins[@]}")
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && [ -x "$venv/bin/wstest" ]; then
    return 0
  fi
  echo "autobahn.sh: installing wstest into $venv (python $py)" >&2
  local t0=$SECONDS pipq=(--disable-pip-version-check -q)
  # an env var rather than the flag, which the interpreter's own older pip lacks
  export PIP_NO_PYTHON_VERSION_WARNING=1
  rm -rf "$venv" "$base/bootstrap"
  "$py" -m pip install "${pipq[@]}" --target "$base/bootstrap" "$virtualenv_pin"
  PYTHONPATH=$base/bootstrap "$py" -m virtualenv -q --no-download "$venv" >/dev/null
  # no build isolation: the sdists (wsaccel ships its generated C) build with
  # the venv's setuptools 44 instead of fetching Cython and friends
  "$venv/bin/pip" install "${pipq[@]}" --no-build-isolation "${pins[@]}"
  "$venv/bin/pip" check "${pipq[@]}" >/dev/null
  # `wstest --help` works even with a broken Automat or OpenSSL, so import
  # what the fuzzing client pulls in at run time
  PYTHONWARNINGS=ignore "$venv/bin/python" -c 'import autobahntestsuite.wstest, autobahntestsuite.fuzzing
import automat, OpenSSL, service_identity, wsaccel.utf8validator, wsaccel.xormask' \
    || die "wstest installed but does not import; see above"
  echo "$want" > "$marker"
  echo "autobahn.sh: installed in $((SECONDS - t0)) s" >&2
}

mkdir -p "$base"
# two runs at once (echo and close mode) must not build the venv twice
exec 9>"$base/install.lock"
flock 9
install_venv
exec 9>&-
[ "$install_only" = 1 ] && exit 0

out=${out:-$base/report-$mode}
mkdir -p "$out"
out=$(cd "$out" && pwd)
agent=bachata
# a stale index.json must never be judged as this run's result
rm -f "$out/index.json" "$out/index.html" "$out/$agent"_case_*.json "$out/$agent"_case_*.html

python3 - "$out/spec.json" "$out" "$agent" "$url" "$cases" "$exclude" <<'EOF'
import json, sys
path, outdir, agent, url, cases, exclude = sys.argv[1:]
split = lambda s: [c.strip() for c in s.split(",") if c.strip()]
spec = {
    "outdir": outdir,
    # failByDrop=false: a server that drops the TCP connection instead of
    # finishing the closing handshake is marked in behaviorClose, which the
    # checker judges, rather than failing the whole case outright
    "options": {"failByDrop": False},
    "servers": [{"agent": agent, "url": url}],
    "cases": split(cases),
    "exclude-cases": split(exclude),
    "exclude-agent-cases": {},
}
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
EOF

echo "autobahn.sh: wstest fuzzingclient -> $url (mode $mode, cases $cases${exclude:+, excluding $exclude})" >&2
t0=$SECONDS
rc=0
# PYTHONWARNINGS: cryptography 3.3 warns about Python 2 on every import
PYTHONWARNINGS=ignore timeout --foreground -k 30 "$timeout_s" \
  "$venv/bin/wstest" -m fuzzingclient -s "$out/spec.json" > "$out/wstest.log" 2>&1 || rc=$?
echo "autobahn.sh: wstest finished in $((SECONDS - t0)) s (exit $rc), log $out/wstest.log" >&2
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  tail -n 5 "$out/wstest.log" >&2
  die "wstest timed out after $timeout_s s (raise --timeout, or narrow --cases)"
elif [ "$rc" != 0 ]; then
  tail -n 20 "$out/wstest.log" >&2
  die "wstest failed (exit $rc)"
fi

# wstest exits 0 even when the server refused or dropped the connection and
# cases are missing from the report, so the checker is told how many to expect
expected=$(sed -n 's/^Ok, will run \([0-9]*\) test cases.*/\1/p' "$out/wstest.log" | head -n 1)
python3 scripts/autobahn_check.py --mode "$mode" --agent "$agent" \
  ${expected:+--expected "$expected"} "$out"
