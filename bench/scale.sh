#!/usr/bin/env bash
# Many connections: mob's memory and latency with thousands of clients on one machine, the
# figures of "Many connections" in docs/BENCHMARKS.md.
#
#   bench/scale.sh                                  # every case, 3 rounds (~4 min)
#   bench/scale.sh --rounds 1 --cases tls,ws        # some cases once
#   bench/scale.sh --rounds 1 --fraction 0.1        # a tenth of the clients: a quick look
#
# Cases (clients are subscribers; one more connection publishes):
#   tcp-t1  15,000 line clients, --threads 1
#   tcp-t2  15,000 line clients, --threads 2
#   ws      10,000 WebSocket clients (--http, bench --target mob-ws), --threads 1
#   tls      2,000 TLS line clients (a throwaway certificate made with openssl), --threads 1
#
# Each run: `mob serve --no-echo-self --max-connections CLIENTS+1000` on a free loopback port,
# pinned to CPU 0 (CPUs 0-1 with --threads 2); its RSS read once listening ("before"). Then
# `mob bench` pinned to CPU 1, its connections spread over 127.0.0.1 and 127.0.0.2
# (--source), which holds them all connected and quiet for IDLE s (the server's RSS read near
# the end: "idle"), then publishes RATE msg/s of 64 B (one publisher, open loop) for WARMUP +
# DURATION s. The server's VmRSS and CPU time are sampled every 0.25 s; "under load" is the
# largest VmRSS of the measured seconds, "peak" the VmHWM at the end. The server is stopped by
# its PID. Prints every run, then medians over the rounds as a markdown table; every run is
# kept in --out (JSON). Loopback only; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 cases=tcp-t1,tcp-t2,ws,tls rate=50 duration=10 warmup=2 idle=4 fraction=1
out=target/scale.json
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --cases) cases=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --idle) idle=$2; shift 2 ;;
    --fraction) fraction=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# case -> clients threads kind
declare -A CLIENTS=([tcp-t1]=15000 [tcp-t2]=15000 [ws]=10000 [tls]=2000)
declare -A THREADS=([tcp-t1]=1 [tcp-t2]=2 [ws]=1 [tls]=1)
IFS=, read -r -a selected <<<"$cases"
for c in "${selected[@]}"; do
  [ -n "${CLIENTS[$c]:-}" ] || { echo "unknown case $c (tcp-t1, tcp-t2, ws, tls)" >&2; exit 2; }
done
command -v taskset >/dev/null || { echo "taskset is missing (util-linux)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "openssl is missing (the tls case's certificate)" >&2; exit 1; }

# Every client is a descriptor in the server and another in the bench: both raise their soft
# limit to the hard one themselves, and so does this shell for them.
hard=$(ulimit -Hn)
ulimit -Sn "$hard"
most=0
for c in "${selected[@]}"; do
  n=$(python3 -c "print(int(${CLIENTS[$c]} * $fraction))")
  [ "$n" -gt "$most" ] && most=$n
done
if [ "$hard" != unlimited ] && [ "$hard" -lt $((most + 100)) ]; then
  echo "ulimit -Hn is $hard: $most clients need about $((most + 100)) descriptors per process" >&2
  echo "(raise the hard limit, or run with --fraction)" >&2
  exit 1
fi
echo "open files: $(ulimit -Sn) (hard $hard); net.core.somaxconn $(cat /proc/sys/net/core/somaxconn);" \
  "ports $(tr '\t' - </proc/sys/net/ipv4/ip_local_port_range); load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

cargo build --release --quiet
mob=target/release/mob
dir=$(mktemp -d)
spid=
stop_server() {
  if [ -n "$spid" ]; then
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    spid=
  fi
}
trap 'stop_server; rm -rf "$dir"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
  -addext basicConstraints=critical,CA:FALSE 2>/dev/null

# The server's VmRSS (KiB) and CPU time (clock ticks, user + system).
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The kernel's side of every socket (both ends of each loopback connection): bytes in the slab
# caches a TCP socket takes one object of each (the socket, its inode, its file, its epoll
# item), and the pages of TCP buffers in use (/proc/net/sockstat).
slab_bytes() {
  awk '$1 ~ /^(TCP|sock_inode_cache|filp|eventpoll_epi)$/ {b += $2 * $4} END {print b}' /proc/slabinfo 2>/dev/null || echo 0
}
[ -r /proc/slabinfo ] || echo "scale: /proc/slabinfo is not readable (it takes root): the kernel's bytes per socket will read 0" >&2
tcp_mem_pages() { awk '$1 == "TCP:" {for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat; }
now() { date +%s.%N; }

one_run() {  # case round
  local c=$1 round=$2 clients threads cpus serve_args=() bench_args=() addr
  clients=$(python3 -c "print(int(${CLIENTS[$c]} * $fraction))")
  threads=${THREADS[$c]}
  cpus=0; [ "$threads" -gt 1 ] && cpus=0,1
  serve_args=(--listen 127.0.0.1:0 --no-echo-self --threads "$threads"
              --max-connections $((clients + 1000)))
  case $c in
    ws) serve_args+=(--http 127.0.0.1:0); bench_args+=(--target mob-ws) ;;
    tls) serve_args+=(--tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem")
         bench_args+=(--target mob-line --ca "$dir/cert.pem") ;;
    *) bench_args+=(--target mob-line) ;;
  esac
  : >"$dir/serve.out"
  taskset -c "$cpus" "$mob" serve "${serve_args[@]}" >"$dir/serve.out" 2>"$dir/serve.log" &
  spid=$!
  local line=
  for _ in $(seq 200); do
    line=$(grep -m1 "$([ "$c" = ws ] && echo "http on" || echo "listening on")" "$dir/serve.out" || true)
    [ -n "$line" ] && break
    sleep 0.05
  done
  [ -n "$line" ] || { echo "$c: the server did not start: $(tail -3 "$dir/serve.log")" >&2; stop_server; return 1; }
  addr=${line##* }
  sleep 0.5
  local before slab_before tcp_before
  before=$(rss_kib "$spid"); slab_before=$(slab_bytes); tcp_before=$(tcp_mem_pages)
  # RUST_LOG=info whatever the caller's: the bench's "idle for" line marks the idle phase.
  local bench_cmd=(env RUST_LOG=info taskset -c 1 "$mob" bench "$addr" "${bench_args[@]}" --subscribers "$clients"
    --publishers 1 --size 64 --rate "$rate" --idle "$idle" --warmup "$warmup"
    --duration "$duration" --source 127.0.0.1,127.0.0.2 --json)
  echo "$ ${bench_cmd[*]}" >"$dir/command"
  timeout $((120 + ${idle%.*} + ${warmup%.*} + ${duration%.*})) "${bench_cmd[@]}" \
    >"$dir/bench.json" 2>"$dir/bench.err" &
  local bpid=$! t_idle= samples="$dir/samples" mpid=
  : >"$samples"
  # Until the bench ends: the moment its idle phase began, the server's RSS and CPU time, the
  # kernel's socket memory and the bench's own CPU time (the mob under `timeout`).
  while kill -0 "$bpid" 2>/dev/null; do
    if [ -z "$t_idle" ] && grep -q "idle for" "$dir/bench.err"; then t_idle=$(now); fi
    [ -n "$mpid" ] || mpid=$(pgrep -P "$bpid" | head -1 || true)
    echo "$(now) $(rss_kib "$spid") $(cpu_ticks "$spid") $(slab_bytes) $(tcp_mem_pages)" \
      "$( [ -n "$mpid" ] && cpu_ticks "$mpid" 2>/dev/null || echo 0)" >>"$samples"
    sleep 0.25
  done
  local status=0; wait "$bpid" || status=$?
  local peak; peak=$(hwm_kib "$spid")
  stop_server
  python3 - "$c" "$round" "$clients" "$threads" "$rate" "$idle" "$warmup" "$duration" \
    "$before" "$slab_before" "$tcp_before" "$peak" "${t_idle:-0}" "$samples" "$dir/bench.json" "$dir/bench.err" "$status" \
    "$(getconf CLK_TCK)" "$(cat "$dir/command")" <<'PY' >>"$dir/runs.jsonl"
import json, sys
(case, rnd, clients, threads, rate, idle, warmup, duration, before, slab_before, tcp_before, peak, t_idle,
 samples, bench, err, status, hz, command) = sys.argv[1:]
idle, warmup, duration, t_idle = float(idle), float(warmup), float(duration), float(t_idle)
# time, VmRSS KiB, server CPU ticks, slab bytes, TCP buffer pages, bench CPU ticks
rows = [tuple(float(x) for x in l.split()) for l in open(samples) if len(l.split()) == 6]
run = {"case": case, "round": int(rnd), "clients": int(clients), "threads": int(threads),
       "rate": float(rate), "rss_before_kib": int(before), "rss_peak_kib": int(peak),
       "slab_before_bytes": int(slab_before), "tcp_mem_before_pages": int(tcp_before),
       "command": command, "exit": int(status)}
try:
    run.update(json.load(open(bench)))
except (ValueError, OSError):
    run["error"] = (open(err).read().strip().splitlines() or ["no output"])[-1]
if t_idle:
    # Idle: the last sample before publishing starts; load: the measured seconds.
    quiet = [r for r in rows if t_idle + 0.5 <= r[0] <= t_idle + idle - 0.25]
    start, end = t_idle + idle + warmup, t_idle + idle + warmup + duration
    load = [r for r in rows if start <= r[0] <= end]
    if quiet:
        run["rss_idle_kib"] = int(quiet[-1][1])
        run["slab_idle_bytes"] = int(quiet[-1][3])
        run["tcp_mem_idle_pages"] = int(quiet[-1][4])
    if load:
        run["rss_load_kib"] = int(max(r[1] for r in load))
        run["tcp_mem_load_pages"] = int(max(r[4] for r in load))
    if len(load) > 1:
        cpu = lambda col: 100 * (load[-1][col] - load[0][col]) / float(hz) / (load[-1][0] - load[0][0])
        run["server_cpu_pct"] = cpu(2)
        run["bench_cpu_pct"] = cpu(5)
print(json.dumps(run))
PY
  python3 - "$dir/runs.jsonl" <<'PY' >&2 || true
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
name = f"[{r['case']} round {r['round']}]"
if "error" in r:
    print(f"{name} failed: {r['error']}")
    sys.exit()
mib = lambda k: r.get(k, 0) / 1024
lat = r["latency_us"]
bad = sum(r[k] for k in ["lost", "duplicated", "out_of_order", "diverged", "corrupt", "disconnects"])
print(f"{name} {r['clients']} clients set up in {r['setup_s']:.2f} s; "
      f"p50 {lat['p50'] / 1000:.1f} ms, p99 {lat['p99'] / 1000:.1f} ms; "
      f"RSS MiB before {mib('rss_before_kib'):.1f}, idle {mib('rss_idle_kib'):.1f}, "
      f"load {mib('rss_load_kib'):.1f}, peak {mib('rss_peak_kib'):.1f}; "
      f"CPU server {r.get('server_cpu_pct', 0):.0f}%, bench {r.get('bench_cpu_pct', 0):.0f}%; "
      f"{r['delivered_per_s']:,.0f} deliveries/s; "
      + ("clean" if not bad else f"NOT CLEAN ({bad})"))
PY
}

for round in $(seq "$rounds"); do
  for c in "${selected[@]}"; do
    one_run "$c" "$round" || true
  done
done

mkdir -p "$(dirname "$out")"
python3 - "$dir/runs.jsonl" "$out" "$rate" "$duration" "$warmup" "$idle" <<'PY'
import json, os, platform, statistics, sys
runs_file, out, rate, duration, warmup, idle = sys.argv[1:]
runs = [json.loads(l) for l in open(runs_file)]
with open("/proc/cpuinfo") as f:
    cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
json.dump({"machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release()},
           "args": {"rate": float(rate), "duration": float(duration), "warmup": float(warmup),
                    "idle": float(idle)},
           "runs": runs}, open(out, "w"), indent=1)
print(f"## Many connections (medians; {rate} msg/s of 64 B from one publisher, "
      f"{duration} s measured after {warmup} s, {idle} s idle before)\n")
print("| case | threads | clients | rate | p50 ms | p99 ms | RSS before MiB | RSS idle MiB | RSS under load MiB "
      "| peak RSS MiB | KiB per client, idle | KiB per client, under load | kernel KiB per socket, idle "
      "| TCP buffers under load, growth MiB | server CPU | bench CPU | runs clean |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
order = []
for r in runs:
    if r["case"] not in order:
        order.append(r["case"])
for case in order:
    rs = [r for r in runs if r["case"] == case]
    ok = [r for r in rs if "error" not in r]
    clean = [r for r in ok if not any(r[k] for k in ["lost", "duplicated", "out_of_order", "diverged", "corrupt", "disconnects"])]
    if not ok:
        print(f"| {case} | failed: {rs[0].get('error', '?')[:80]} |")
        continue
    med = lambda f: statistics.median(v for v in (f(r) for r in ok) if v is not None)
    per = lambda key: med(lambda r: (r[key] - r["rss_before_kib"]) / r["clients"] if key in r else None)
    page = os.sysconf("SC_PAGE_SIZE")
    # Both ends of every connection are sockets of this kernel: two per client.
    kernel = med(lambda r: (r["slab_idle_bytes"] - r["slab_before_bytes"]) / 1024 / (2 * r["clients"])
                 if "slab_idle_bytes" in r else None)
    r0 = ok[0]
    print(f"| {case} | {r0['threads']} | {r0['clients']:,} | {r0['rate']:g} "
          f"| {med(lambda r: r['latency_us']['p50']) / 1000:.1f} | {med(lambda r: r['latency_us']['p99']) / 1000:.1f} "
          f"| {med(lambda r: r['rss_before_kib']) / 1024:.1f} | {med(lambda r: r.get('rss_idle_kib')) / 1024:.1f} "
          f"| {med(lambda r: r.get('rss_load_kib')) / 1024:.1f} | {med(lambda r: r['rss_peak_kib']) / 1024:.1f} "
          f"| {per('rss_idle_kib'):.2f} | {per('rss_load_kib'):.2f} | {kernel:.2f} "
          f"| {med(lambda r: r['tcp_mem_load_pages'] - r['tcp_mem_before_pages'] if 'tcp_mem_load_pages' in r else None) * page / 2**20:.1f} "
          f"| {med(lambda r: r.get('server_cpu_pct')):.0f}% | {med(lambda r: r.get('bench_cpu_pct')):.0f}% "
          f"| {len(clean)} of {len(rs)} |")
print(f"\nEvery run: {out}")
PY
