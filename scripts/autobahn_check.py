#!/usr/bin/env python3
"""Judge an Autobahn|Testsuite fuzzingclient report (index.json).

    autobahn_check.py --mode echo|close [--agent bachata] [--expected N] REPORT_DIR

echo:  every case's `behavior` and `behaviorClose` must be OK, NON-STRICT or
       INFORMATIONAL.
close: the server under test does not echo, so `behavior` is expected to fail
       for most cases and is only counted; `behaviorClose` must still pass,
       i.e. the server never leaves a connection UNCLEAN or FAILED. One
       WRONG CODE is tolerated here: when no echo comes, wstest's own timer
       ends the case with 1001 (Going Away) instead of the 1000 the case
       expects, and a server that completes that handshake by answering
       1001 is doing exactly right (counted as "ended by wstest"). And bachata
       reads a binary message as UTF-8 text (protocol.md section 2, as the
       original Bachata does): a binary message that is not UTF-8 closes
       with 1007. wstest grades that FAILED ("failed by the wrong
       endpoint") because its binary cases expect an echo; a clean closing
       handshake with 1007 is what the contract asks, and is counted as
       "closed with 1007".

Prints per-behaviour counts, per-group counts and durations, every failing
case with its report file, and a one-line summary for the docs. Exits 1 on
any failure, on missing cases (--expected) and on an empty report: wstest
itself exits 0 when it could not even connect.
"""
import argparse
import collections
import json
import os
import sys

PASS = ("OK", "NON-STRICT", "INFORMATIONAL")
# the order counts are printed in; anything else wstest invents goes last
ORDER = PASS + ("UNIMPLEMENTED", "WRONG CODE", "UNCLEAN", "FAILED")


def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))


def ordered(counter):
    keys = [k for k in ORDER if k in counter] + sorted(k for k in counter if k not in ORDER)
    return [(k, counter[k]) for k in keys]


def fmt_counts(counter):
    return ", ".join("%d %s" % (n, k) for k, n in ordered(counter))


def load_case(report_dir, reportfile):
    try:
        with open(os.path.join(report_dir, reportfile)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def ended_by_wstest(report_dir, r):
    """See the module doc: a clean 1001/1001 handshake that wstest started."""
    if r.get("behaviorClose") != "WRONG CODE" or r.get("remoteCloseCode") != 1001:
        return False
    case = load_case(report_dir, r.get("reportfile", ""))
    return bool(case.get("closedByMe") and case.get("wasClean") and case.get("localCloseCode") == 1001)


def closed_for_invalid_utf8(report_dir, r):
    """See the module doc: a clean 1007 close of a binary case."""
    if r.get("behaviorClose") != "FAILED" or r.get("remoteCloseCode") != 1007:
        return False
    case = load_case(report_dir, r.get("reportfile", ""))
    return bool(case.get("wasClean") and not case.get("droppedByMe")
                and "binary" in str(case.get("description", "")).lower())


def reason(report_dir, reportfile):
    """The case's own one-line verdict, so a failure is readable without the HTML."""
    case = load_case(report_dir, reportfile)
    bits = []
    for key in ("result", "resultClose"):
        text = " ".join(str(case.get(key) or "").split())
        if text:
            bits.append("%s: %s" % (key, text[:160] + ("..." if len(text) > 160 else "")))
    return "; ".join(bits)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report_dir")
    ap.add_argument("--mode", choices=("echo", "close"), required=True)
    ap.add_argument("--agent", default="bachata")
    ap.add_argument("--expected", type=int, help="number of cases wstest said it would run")
    args = ap.parse_args()

    index_path = os.path.join(args.report_dir, "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("autobahn %s: cannot read %s: %s" % (args.mode, index_path, e))
        return 1
    cases = index.get(args.agent) or {}
    if not cases:
        print("autobahn %s: no results for agent %r in %s: the server was unreachable "
              "or refused the handshake (see wstest.log)" % (args.mode, args.agent, index_path))
        return 1

    ids = sorted(cases, key=case_key)
    behavior = collections.Counter(cases[c].get("behavior") for c in ids)
    close = collections.Counter(cases[c].get("behaviorClose") for c in ids)
    failing = []
    tolerated = []
    utf8 = []
    for c in ids:
        r = cases[c]
        bad_close = r.get("behaviorClose") not in PASS
        if bad_close and args.mode == "close" and ended_by_wstest(args.report_dir, r):
            tolerated.append(c)
            bad_close = False
        if bad_close and args.mode == "close" and closed_for_invalid_utf8(args.report_dir, r):
            utf8.append(c)
            bad_close = False
        bad_behavior = args.mode == "echo" and r.get("behavior") not in PASS
        if bad_close or bad_behavior:
            failing.append(c)

    print("Autobahn report %s (agent %s, mode %s): %d cases" % (index_path, args.agent, args.mode, len(ids)))
    print()
    print("%-16s %8s %14s" % ("result", "behavior", "behaviorClose"))
    for k in [k for k, _ in ordered(behavior + close)]:
        print("%-16s %8d %14d" % (k, behavior.get(k, 0), close.get(k, 0)))

    # per top-level section: where the time goes (section 9 dominates) and
    # which part of the protocol a failure sits in
    groups = collections.OrderedDict()
    for c in ids:
        g = groups.setdefault(c.split(".")[0], {"n": 0, "ms": 0, "fail": 0})
        g["n"] += 1
        g["ms"] += cases[c].get("duration") or 0
        g["fail"] += c in failing
    print()
    print("%-7s %6s %7s %10s" % ("section", "cases", "failing", "duration"))
    for g, v in groups.items():
        print("%-7s %6d %7d %9.1fs" % (g + ".*", v["n"], v["fail"], v["ms"] / 1000.0))

    problems = []
    if failing:
        print()
        print("FAILING CASES (%d):" % len(failing))
        for c in failing:
            r = cases[c]
            print("  %-10s behavior=%-13s behaviorClose=%-13s closeCode=%-5s %s" % (
                c, r.get("behavior"), r.get("behaviorClose"), r.get("remoteCloseCode"),
                os.path.join(args.report_dir, r.get("reportfile", "?"))))
            why = reason(args.report_dir, r.get("reportfile", ""))
            if why:
                print("             %s" % why)
        problems.append("%d failing" % len(failing))
    if args.expected is not None and len(ids) != args.expected:
        problems.append("%d of %d cases missing (connection lost?)" % (args.expected - len(ids), args.expected))

    bad = collections.Counter(cases[c].get("behaviorClose") for c in ids
                              if cases[c].get("behaviorClose") not in PASS
                              and c not in tolerated and c not in utf8)
    close_text = "all clean" if not bad else "%d not clean (%s)" % (sum(bad.values()), fmt_counts(bad))
    if tolerated:
        close_text += " (%d ended by wstest's 1001 after no echo)" % len(tolerated)
    if utf8:
        close_text += " (%d binary messages not UTF-8 closed with 1007)" % len(utf8)
    if args.mode == "echo":
        head = fmt_counts(behavior)
    else:
        head = "behavior not judged (%s)" % fmt_counts(behavior)
    print()
    print("autobahn %s: %d cases: %s; close: %s" % (args.mode, len(ids), head, close_text))
    if problems:
        print("autobahn %s: FAILED: %s" % (args.mode, "; ".join(problems)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
