#!/usr/bin/env python3
"""Summarise an Autobahn|Testsuite fuzzingclient report (reports/servers/index.json).

usage: summary.py REPORT_DIR [--log wstest.log] [--agent NAME] [--gate 1-10]

Prints, per case group, counts of OK / NON-STRICT / INFORMATIONAL / UNIMPLEMENTED /
FAILED (+ OTHER = any other behaviour such as NO_CLOSE, MISSING = planned but never
reported, CLOSE! = passed but with a non-OK closing behaviour), then the failing case ids
with the reason taken from each case's JSON report, and a closing line
"autobahn: N passed, N failed, N skipped".

Exit: 0 = no FAILED/OTHER/MISSING case in the gated groups (default 1-10);
      1 = at least one; 2 = no report / unusable input.
With --log, the planned case list ("Cases = [...]" printed by wstest) is used to detect
cases that never ran (server crashed / suite killed by the timeout).
"""
import argparse
import ast
import json
import os
import re
import sys

GROUP_NAMES = {
    1: "Framing", 2: "Pings/Pongs", 3: "Reserved Bits", 4: "Opcodes",
    5: "Fragmentation", 6: "UTF-8 Handling", 7: "Close Handling",
    8: "(no cases)", 9: "Limits/Performance", 10: "Misc",
    12: "Compression (payloads)", 13: "Compression (parameters)",
}
COLS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "OTHER", "MISSING"]
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}


def case_key(cid):
    return tuple(int(x) for x in cid.split("."))


def parse_gate(spec):
    groups = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            groups.update(range(int(a), int(b) + 1))
        else:
            groups.add(int(part))
    return groups


def planned_cases(log_path):
    """Case ids wstest announced ("Cases = [...]"), last case started, and log tail."""
    if not log_path or not os.path.exists(log_path):
        return None, None, []
    planned, last_started = None, None
    with open(log_path, errors="replace") as f:
        lines = f.read().splitlines()
    for line in lines:
        if line.startswith("Cases = ["):
            try:
                planned = [str(c) for c in ast.literal_eval(line[len("Cases = "):])]
            except (ValueError, SyntaxError):
                pass
        m = re.match(r"Running test case ID (\S+) ", line)
        if m:
            last_started = m.group(1)
    return planned, last_started, lines[-15:]


def short(s, n=110):
    s = " ".join(re.sub(r"<br\s*/?>", " ", str(s)).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def reason_for(report_dir, entry):
    """Human-readable failure reason from the per-case JSON report."""
    path = os.path.join(report_dir, entry.get("reportfile", ""))
    bits = []
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        d = {}
    if d.get("description"):
        bits.append("case: " + short(d["description"], 90))
    if d.get("result"):
        bits.append("result: " + short(d["result"]))
    close = "close: %s" % entry.get("behaviorClose")
    if d.get("resultClose"):
        close += " (%s)" % short(d["resultClose"], 80)
    close += ", remote code %s" % entry.get("remoteCloseCode")
    if d.get("remoteCloseReason"):
        close += " %r" % short(d["remoteCloseReason"], 60)
    if d.get("expectedClose", {}).get("closeCode"):
        close += ", expected %s" % d["expectedClose"]["closeCode"]
    bits.append(close)
    if d.get("wasNotCleanReason"):
        bits.append("unclean: " + short(d["wasNotCleanReason"], 80))
    for flag in ("wasOpenHandshakeTimeout", "wasCloseHandshakeTimeout", "wasServerConnectionDropTimeout"):
        if d.get(flag):
            bits.append(flag)
    return bits


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report_dir", help="directory holding index.json (spec 'outdir')")
    ap.add_argument("--log", help="wstest output, used to find planned-but-missing cases")
    ap.add_argument("--agent", help="agent name in index.json (default: the only one)")
    ap.add_argument("--gate", default="1-10", help="case groups whose failures make exit 1 (default 1-10)")
    args = ap.parse_args()

    gate = parse_gate(args.gate)
    planned, last_started, log_tail = planned_cases(args.log)
    index_path = os.path.join(args.report_dir, "index.json")

    if not os.path.exists(index_path):
        print("summary: no report at %s" % index_path)
        print("  wstest writes its reports only when the whole run ends; it was probably killed")
        print("  by the timeout, or could not start.")
        if last_started:
            print("  last case started (likely the one that hung): %s" % last_started)
        if log_tail:
            print("  --- tail of %s ---" % args.log)
            for line in log_tail:
                print("  " + line)
        print("autobahn: 0 passed, %d failed" % (len(planned) if planned else 1))
        return 2

    with open(index_path) as f:
        index = json.load(f)
    if not index and planned:
        index = {args.agent or "?": {}}
    if not index:
        print("summary: %s is empty (server unreachable?)" % index_path)
        print("autobahn: 0 passed, 1 failed")
        return 2
    agent = args.agent
    if agent is None:
        if len(index) != 1:
            print("summary: several agents %s, pick one with --agent" % sorted(index))
            return 2
        agent = next(iter(index))
    if agent not in index:
        print("summary: agent %r not in report (have %s)" % (agent, sorted(index)))
        return 2
    results = index[agent]

    all_ids = set(results)
    missing = set(planned or []) - all_ids
    all_ids |= missing
    groups = {}
    for cid in all_ids:
        g = case_key(cid)[0]
        row = groups.setdefault(g, dict.fromkeys(COLS + ["CLOSE!", "TOTAL"], 0))
        row["TOTAL"] += 1
        if cid in missing:
            row["MISSING"] += 1
            continue
        beh = results[cid]["behavior"]
        row[beh if beh in COLS else "OTHER"] += 1
        if beh in PASSING and results[cid].get("behaviorClose") not in ("OK", "INFORMATIONAL"):
            row["CLOSE!"] += 1

    # ---- table ----------------------------------------------------------------
    hdr = ["group", "name", "OK", "NON-STRICT", "INFO", "UNIMPL", "FAILED", "OTHER", "MISSING", "CLOSE!", "TOTAL"]
    keys = [None, None, "OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "OTHER", "MISSING", "CLOSE!", "TOTAL"]
    rows = []
    tot = dict.fromkeys(COLS + ["CLOSE!", "TOTAL"], 0)
    for g in sorted(groups):
        r = groups[g]
        for k in tot:
            tot[k] += r[k]
        name = GROUP_NAMES.get(g, "?") + ("" if g in gate else " [not gated]")
        rows.append(["%d.*" % g, name] + [str(r[k]) for k in keys[2:]])
    rows.append(["all", ""] + [str(tot[k]) for k in keys[2:]])
    widths = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(len(hdr))]
    fmt = lambda cells: "  ".join(
        (c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])) for i, c in enumerate(cells))
    print("Autobahn fuzzingclient results for agent %r (%s)" % (agent, index_path))
    print(fmt(hdr))
    print(fmt(["-" * w for w in widths]))
    for r in rows[:-1]:
        print(fmt(r))
    print(fmt(["-" * w for w in widths]))
    print(fmt(rows[-1]))

    # ---- failures ---------------------------------------------------------------
    bad = sorted((cid for cid in all_ids
                  if cid in missing or results[cid]["behavior"] not in PASSING | {"UNIMPLEMENTED"}),
                 key=case_key)
    gated_bad = [c for c in bad if case_key(c)[0] in gate]
    if bad:
        print("\nFailing cases (%d, %d in gated groups %s):" % (len(bad), len(gated_bad), args.gate))
        for cid in bad:
            tag = "" if case_key(cid)[0] in gate else " [not gated]"
            if cid in missing:
                continue
            e = results[cid]
            print("  %-8s %s%s" % (cid, e["behavior"], tag))
            for b in reason_for(args.report_dir, e):
                print("           " + b)
        if missing:
            ms = sorted(missing, key=case_key)
            shown = " ".join(ms[:25]) + (" ... (+%d more)" % (len(ms) - 25) if len(ms) > 25 else "")
            print("  MISSING (%d, planned but no result: server died/refused, or suite stopped%s):"
                  % (len(ms), "; last case started: %s" % last_started if last_started else ""))
            print("           " + shown)
    warn = sorted((cid for cid in all_ids if cid not in missing and results[cid]["behavior"] in PASSING
                   and results[cid].get("behaviorClose") not in ("OK", "INFORMATIONAL")), key=case_key)
    if warn:
        print("\nPassed, but closing behaviour not OK (CLOSE!, not counted as failure):")
        for cid in warn:
            e = results[cid]
            print("  %-8s %s / close %s, remote code %s" % (cid, e["behavior"], e.get("behaviorClose"), e.get("remoteCloseCode")))
    ns = sorted((c for c in all_ids if c not in missing and results[c]["behavior"] == "NON-STRICT"), key=case_key)
    if ns:
        print("\nNON-STRICT (conformant, but not the preferred SHOULD behaviour): " + " ".join(ns))

    passed = tot["OK"] + tot["NON-STRICT"] + tot["INFORMATIONAL"]
    failed = tot["FAILED"] + tot["OTHER"] + tot["MISSING"]
    print("\nautobahn: %d passed, %d failed, %d skipped" % (passed, failed, tot["UNIMPLEMENTED"]))
    return 1 if gated_bad else 0


if __name__ == "__main__":
    sys.exit(main())
