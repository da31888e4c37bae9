#!/usr/bin/env bash
# Run the Autobahn|Testsuite (wstest fuzzingclient) against a WebSocket SERVER and summarise.
#
#   usage: run.sh URL [CASES]
#     URL    ws://127.0.0.1:PORT[/path]   (loopback only unless AUTOBAHN_ALLOW_NONLOOPBACK=1)
#     CASES  comma-separated case patterns, default "1.*,2.*,...,10.*"
#            (12.* / 13.* = permessage-deflate; excluded by default, they are UNIMPLEMENTED
#             for a server without compression and summary.py never gates on them)
#
# env:  PKGS=<dir>      install dir from install.sh      (default <repo>/target/autobahn/pkgs)
#       OUT=<dir>       where spec/log/reports go         (default <repo>/target/autobahn/out/<timestamp>;
#                       out/latest -> the newest run there)
#       AGENT=name      agent label in the reports        (default "testee")
#       EXCLUDE=...     exclude-case patterns             (default "12.*,13.*")
#       TIMEOUT=secs    hard bound for the whole suite    (default 600; cases 1-10 take ~15-20 s on loopback)
#       WAIT=secs       wait this long for URL's port to accept TCP (default 15)
#       GATE=1-10       groups whose FAILED/MISSING make the exit non-zero (summary.py --gate)
#       IGNORE_BENCH=1  run even if a benchmark (compare.py / mob bench / cargo bench) is running
#
# exit: 0 all gated cases pass (OK / NON-STRICT / INFORMATIONAL), 1 some FAILED/MISSING,
#       2 no report (suite timed out / could not run), 3 refused (bench running, bad URL, not installed)
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$(cd "$HERE/../.." && pwd -P)/target/autobahn
URL=${1:-}
CASES=${2:-"1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*"}
EXCLUDE=${EXCLUDE-"12.*,13.*"}
PKGS=${PKGS:-$WORK/pkgs}
AGENT=${AGENT:-testee}
TIMEOUT=${TIMEOUT:-600}
WAIT=${WAIT:-15}
GATE=${GATE:-1-10}
OUT=$(realpath -m -- "${OUT:-$WORK/out/$(date +%Y%m%d-%H%M%S)}")
PKGS=$(realpath -m -- "$PKGS")

if [[ -z "$URL" || "$URL" == -h || "$URL" == --help ]]; then
  sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 3
fi
if [[ ! -x "$PKGS/wstest" || ! -f "$PKGS/.installed" ]]; then
  echo "run.sh: testsuite not installed in $PKGS; run: $HERE/install.sh ${PKGS}" >&2; exit 3
fi

# ---- host/port of URL; loopback guard ------------------------------------------
read -r HOST PORT < <(python3 - "$URL" <<'EOF'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
if u.scheme not in ("ws", "wss") or not u.hostname:
    print("BAD 0"); sys.exit()
print(u.hostname, u.port or (443 if u.scheme == "wss" else 80))
EOF
)
if [[ "$HOST" == BAD ]]; then echo "run.sh: URL must be ws://host:port[/path] or wss://..., got $URL" >&2; exit 3; fi
if [[ -z "${AUTOBAHN_ALLOW_NONLOOPBACK:-}" ]] && ! python3 -c '
import ipaddress, sys
h = sys.argv[1]
sys.exit(0 if h == "localhost" or ipaddress.ip_address(h).is_loopback else 1)' "$HOST" 2>/dev/null; then
  echo "run.sh: refusing non-loopback target $HOST (tests here must stay on 127.0.0.0/8 / ::1)" >&2; exit 3
fi

# ---- be polite on a shared 2-core machine ----------------------------------------
if [[ -z "${IGNORE_BENCH:-}" ]] && BENCH=$(pgrep -af 'compare.py|mob bench|cargo bench'); then
  echo "run.sh: a benchmark seems to be running; not starting a CPU-heavy suite (IGNORE_BENCH=1 to override):" >&2
  echo "$BENCH" >&2; exit 3
fi

# ---- wait for the server's port -------------------------------------------------------
if ! python3 - "$HOST" "$PORT" "$WAIT" <<'EOF'
import socket, sys, time
host, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.time() + wait
while True:
    try:
        socket.create_connection((host, port), timeout=1).close(); sys.exit(0)
    except OSError as e:
        if time.time() > deadline:
            print("run.sh: %s:%d not accepting connections after %ss: %s" % (host, port, wait, e)); sys.exit(1)
        time.sleep(0.2)
EOF
then exit 2; fi

# ---- spec ----------------------------------------------------------------------------
mkdir -p "$OUT"
REPORTS="$OUT/reports/servers"
python3 - "$OUT/spec.json" "$URL" "$AGENT" "$CASES" "$EXCLUDE" "$REPORTS" <<'EOF'
import json, sys
path, url, agent, cases, exclude, outdir = sys.argv[1:]
split = lambda s: [c.strip() for c in s.split(",") if c.strip()]
spec = {
    "outdir": outdir,
    # failByDrop=false: when the suite itself fails a connection it still performs the
    # closing handshake instead of just dropping TCP (the suite's "spec conformance" default,
    # stated explicitly here).
    "options": {"failByDrop": False},
    # "agent" is required: without it wstest crashes while writing reports (None.strip()).
    "servers": [{"agent": agent, "url": url}],
    "cases": split(cases),
    "exclude-cases": split(exclude),
    "exclude-agent-cases": {},
}
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
EOF
# The newest run under target/autobahn/out is also target/autobahn/out/latest.
[[ "$(dirname "$OUT")" == "$WORK/out" ]] && ln -sfn "$OUT" "$WORK/out/latest"

echo "run.sh: wstest fuzzingclient -> $URL  cases [$CASES] exclude [$EXCLUDE]  timeout ${TIMEOUT}s"
echo "run.sh: spec $OUT/spec.json, log $OUT/wstest.log"
T0=$(date +%s.%N)
# Own process group + timeout: SIGTERM after TIMEOUT, SIGKILL 10 s later. Reports are only
# written when the suite finishes, so a timed-out run leaves no index.json (summary says so).
( cd "$OUT" && exec timeout -k 10 "$TIMEOUT" "$PKGS/wstest" -m fuzzingclient -s "$OUT/spec.json" ) \
  > "$OUT/wstest.log" 2>&1
RC=$?
ELAPSED=$(python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$T0" "$(date +%s.%N)")
echo "run.sh: wstest exit $RC after ${ELAPSED}s$([[ $RC == 124 ]] && echo ' (TIMEOUT)')"
grep -m1 '^Ok, will run' "$OUT/wstest.log" || true
if grep -q '^Connection to .* failed' "$OUT/wstest.log"; then grep -m3 '^Connection to .* failed' "$OUT/wstest.log"; fi

python3 "$HERE/summary.py" "$REPORTS" --log "$OUT/wstest.log" --agent "$AGENT" --gate "$GATE" \
  | tee "$OUT/summary.txt"
SRC=${PIPESTATUS[0]}
echo "run.sh: elapsed ${ELAPSED}s; summary $OUT/summary.txt$([[ -f $REPORTS/index.html ]] && echo "; HTML report $REPORTS/index.html")"
if [[ $SRC == 0 && $RC != 0 ]]; then SRC=2; fi
exit "$SRC"
