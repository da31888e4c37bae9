#!/usr/bin/env bash
# W1 (1 publisher, 100 subscribers, 64 B, max rate) against `mob serve --protocol frame`
# with and without `--metrics`, alternating, server on CPU 0 and bench on CPU 1; prints each
# run and the medians. Usage: bench/metrics_overhead.sh [ROUNDS] (default 5, ~1 min).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
cargo build --release --quiet
mob=target/release/mob
run() {
  local out pid addr rate
  out=$(mktemp)
  taskset -c 0 "$mob" serve --listen 127.0.0.1:0 --protocol frame --no-echo-self "$@" >"$out" 2>/dev/null &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.05; done
  addr=$(awk '/listening on/ {print $3}' "$out")
  rate=$(taskset -c 1 "$mob" bench "$addr" --target mob-frame --duration 3 --warmup 1 --json |
    python3 -c 'import json,sys; print(int(json.load(sys.stdin)["delivered_per_s"]))')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$out"
  echo "$rate"
}
without=(); with=()
for r in $(seq "$rounds"); do
  a=$(run); b=$(run --metrics 127.0.0.1:0)
  echo "round $r: without $a, with --metrics $b deliveries/s"
  without+=("$a"); with+=("$b")
done
python3 - "${without[*]}" "${with[*]}" <<'PY'
import statistics, sys
a = [int(x) for x in sys.argv[1].split()]; b = [int(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"median without {ma:,.0f}, with --metrics {mb:,.0f} deliveries/s: {100 * (mb / ma - 1):+.1f}%")
PY
