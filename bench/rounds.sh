#!/usr/bin/env bash
# How long the server's flush rounds take, from its own trace, under one publisher and many
# subscribers: the figures of "Threads" in docs/BENCHMARKS.md.
#
#   bench/rounds.sh THREADS SUBSCRIBERS [RATE] [pin]
#   bench/rounds.sh 1 2000            # one loop on CPU 0
#   bench/rounds.sh 2 2000            # two loops on CPUs 0-1, placed by the scheduler
#   bench/rounds.sh 2 2000 100 pin    # loop 0 pinned to CPU 0, loop 1 to CPU 1
#
# The load generator runs on CPU 1. Loopback only; the server is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:?threads}; subs=${2:?subscribers}; rate=${3:-100}; pin=${4:-}
cargo build --release --quiet
dir=$(mktemp -d)
cpus=0; [ "$threads" -gt 1 ] && cpus=0,1
RUST_LOG=mob::server::fanout=trace taskset -c "$cpus" target/release/mob serve \
  --listen 127.0.0.1:0 --threads "$threads" --no-echo-self --max-connections 20000 \
  >"$dir/out" 2>"$dir/log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 200); do grep -q "listening on" "$dir/out" && break; sleep 0.05; done
addr=$(awk '/listening on/ {print $3}' "$dir/out")
[ -n "$addr" ] || { echo "server did not start" >&2; exit 1; }
if [ -n "$pin" ]; then
  for task in /proc/$pid/task/*; do
    case $(cat "$task/comm") in
      mob) taskset -p -c 0 "$(basename "$task")" >/dev/null ;;
      mob-loop-1) taskset -p -c 1 "$(basename "$task")" >/dev/null ;;
    esac
  done
fi
timeout 300 taskset -c 1 target/release/mob bench "$addr" --subscribers "$subs" --publishers 1 \
  --rate "$rate" --duration 5 --warmup 1 --json >"$dir/bench.json"
kill "$pid"; wait "$pid" || true
python3 - "$dir/log" "$dir/bench.json" "$threads" "$subs" <<'PY'
import json, re, statistics, sys
log, bench, threads, subs = sys.argv[1:]
rounds = [int(m.group(1)) for line in open(log)
          for m in [re.search(r"took_us=(\d+) full=true", line)] if m]
rounds = rounds[len(rounds) // 5:]  # leave out the set-up
b = json.load(open(bench))
lat = b["latency_us"]
print(f"threads {threads}, {subs} subscribers: {len(rounds)} full rounds, median "
      f"{statistics.median(rounds) / 1000:.1f} ms; latency p50 {lat['p50'] / 1000:.1f} ms, "
      f"p99 {lat['p99'] / 1000:.1f} ms; {b['delivered_per_s']:,.0f} deliveries/s")
PY
