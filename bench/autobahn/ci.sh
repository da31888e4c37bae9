#!/usr/bin/env bash
# One command for CI: Autobahn|Testsuite cases 1-10 against `mob serve --http`.
#
#   usage: bench/autobahn/ci.sh
#
# Installs the suite if it is not (install.sh, into target/autobahn/pkgs: needs Python 2.7
# under pyenv and PyPI the first time), builds mob, starts it on free loopback ports, runs
# cases 1-10 (run.sh), stops mob by its PID and exits 0 only if every case is OK, NON-STRICT
# or INFORMATIONAL. Prints the summary table. Every step is bounded by `timeout`.
#
# env:  MOB=<path>          a built mob to test (default: cargo build --release, target/release/mob)
#       BUILD_TIMEOUT=secs  bound for the build          (default 900)
#       PIP_TIMEOUT=secs    bound for each pip step      (default 300)
#       TIMEOUT=secs        bound for the suite's run    (default 300; it takes ~15-20 s)
#       IGNORE_BENCH=1      run even while a benchmark runs (run.sh otherwise refuses, exit 3)
#
# exit: 0 pass; 1 some case FAILED or MISSING; 2 no report (suite timed out or could not run);
#       3 refused (run.sh); 4 install, build or server start failed.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=$REPO/target/autobahn
OUT=$WORK/out/$(date +%Y%m%d-%H%M%S)
T0=$(date +%s)
mkdir -p "$OUT"

# ---- the suite ----------------------------------------------------------------------
PIP_TIMEOUT=${PIP_TIMEOUT:-300} "$HERE/install.sh" "$WORK/pkgs" || {
  echo "ci.sh: install failed" >&2; exit 4; }

# ---- mob --------------------------------------------------------------------------------
if [[ -z "${MOB:-}" ]]; then
  (cd "$REPO" && timeout -k 10 "${BUILD_TIMEOUT:-900}" cargo build --release --quiet) || {
    echo "ci.sh: cargo build --release failed" >&2; exit 4; }
  MOB=$REPO/target/release/mob
fi

# The test endpoint: messages up to 16 MiB (cases 9.*), --max-pending above that, frame
# protocol (any bytes, text or binary, relayed whole). Ports 0: the kernel picks free ones,
# mob prints them.
"$MOB" serve --listen 127.0.0.1:0 --protocol frame --http 127.0.0.1:0 \
  --max-message 16MiB --max-pending 64MiB >"$OUT/mob.out" 2>"$OUT/mob.log" &
MOB_PID=$!
stop_mob() {
  # Only the server this script started, by its PID: SIGTERM (a graceful shutdown with no
  # clients left is immediate), SIGKILL if it is still there after 10 s.
  kill -0 "$MOB_PID" 2>/dev/null || return 0
  kill -TERM "$MOB_PID" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$MOB_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$MOB_PID" 2>/dev/null
  wait "$MOB_PID" 2>/dev/null
}
trap stop_mob EXIT
trap 'exit 130' INT TERM

HTTP=
for _ in $(seq 100); do  # up to 10 s
  HTTP=$(sed -n 's/^http on //p' "$OUT/mob.out")
  [[ -n "$HTTP" ]] && break
  kill -0 "$MOB_PID" 2>/dev/null || break
  sleep 0.1
done
if [[ -z "$HTTP" ]]; then
  echo "ci.sh: mob did not print 'http on IP:PORT'; its log:" >&2
  tail -20 "$OUT/mob.log" >&2
  exit 4
fi
echo "ci.sh: mob (pid $MOB_PID) $(head -1 "$OUT/mob.out"), http on $HTTP; log $OUT/mob.log"

# ---- cases 1-10 ---------------------------------------------------------------------------
OUT=$OUT PKGS=$WORK/pkgs TIMEOUT=${TIMEOUT:-300} "$HERE/run.sh" "ws://$HTTP/ws"
RC=$?
stop_mob
if [[ $RC != 0 ]]; then
  echo "ci.sh: failed (exit $RC); the server's last lines:"
  tail -20 "$OUT/mob.log"
fi
echo "ci.sh: exit $RC after $(( $(date +%s) - T0 )) s"
exit "$RC"
