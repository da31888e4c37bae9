#!/usr/bin/env bash
# Side by side: mob against ncat --broker, Redis pub/sub and NATS on workloads W1-W6.
# Installs what is missing (Debian packages), builds mob, runs every server on loopback pinned to
# CPU 0 with the load generator on CPU 1, and writes docs/BENCHMARKS.md's table and plot inputs.
# --baseline PATH also runs an older mob binary as base-line and base-frame, in the same rounds.
# ws-node (the Node ws peer; npm ci in bench/ws-peer) and mob-ws (mob's --http /ws) run only when
# named in --servers; so do redis-tls, mob-tls and mob-auth (TLS or a token; openssl makes the certificate).
# So do mob-cluster (two mob --cluster nodes over a Redis it starts) and nats-cluster (two routed
# nats-server nodes); the bench is given both nodes' addresses.
#
#   bench/compare.sh                  # full run: 3 rounds, 5 s measured each
#   bench/compare.sh --rounds 1 --duration 2 --workloads W1,W3 --servers mob-line,redis
#   bench/compare.sh --rounds 1 --duration 2 --workloads W1,W6 --servers mob-line,base-line --baseline /path/to/old/mob
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in ncat:ncat redis-server:redis-server nats-server:nats-server taskset:util-linux; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --release --quiet
# The Node `ws` peer's one dependency, pinned by its package-lock.json (for ws-node).
if command -v npm >/dev/null && [ ! -d bench/ws-peer/node_modules/ws ]; then
  (cd bench/ws-peer && npm ci --no-audit --no-fund --silent)
fi
exec python3 bench/compare.py "$@"
