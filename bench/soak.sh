#!/usr/bin/env bash
# Soak with faults: bench/soak.sh [--minutes M] [--rate R] [--cluster auto|yes|no] [--seed S]
# Builds the release binary, then runs bench/soak.py (see its header for what runs and what
# fails it). Loopback only; stops by itself after about --minutes (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin mob
exec python3 bench/soak.py --mob target/release/mob "$@"
