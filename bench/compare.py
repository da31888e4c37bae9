#!/usr/bin/env python3
"""Runs W1-W5 against mob and its peers, back to back, and reports medians side by side.

Every (server, workload) run starts a fresh server pinned to CPU 0 (so its peak RSS is that
workload's), runs `mob bench --json` pinned to CPU 1, reads the server's CPU time from
/proc/PID/stat before and after, and stops the server by its PID. Called by bench/compare.sh.
"""

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

MOB = "target/release/mob"
SERVER_CPU, BENCH_CPU = "0", "1"

WORKLOADS = {
    "W1": ("1 pub, 100 subs, 64 B, max rate", ["--publishers", "1", "--subscribers", "100", "--size", "64"]),
    "W2": ("10 pubs, 1,000 subs, 64 B, max rate", ["--publishers", "10", "--subscribers", "1000", "--size", "64"]),
    "W3": ("1 pub, 100 subs, 16 KiB, max rate", ["--publishers", "1", "--subscribers", "100", "--size", "16KiB"]),
    "W4": ("10 pubs, 100 subs, 64 B, 10,000 msg/s", ["--publishers", "10", "--subscribers", "100", "--size", "64", "--rate", "10000"]),
    "W5": ("1 pub, 10,000 subs, 64 B, 100 msg/s", ["--publishers", "1", "--subscribers", "10000", "--size", "64", "--rate", "100"]),
}

# name: (command for a port, bench target)
SERVERS = {
    "ncat": (lambda p: ["ncat", "--listen", "--broker", "--max-conns", "20000", "127.0.0.1", str(p)], "mob-line"),
    "redis": (lambda p: ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--maxclients", "20000", "--loglevel", "warning"], "redis"),
    "nats": (lambda p: ["nats-server", "-a", "127.0.0.1", "-p", str(p)], "nats"),
    "mob-line": (lambda p: [MOB, "serve", "--listen", f"127.0.0.1:{p}", "--protocol", "line", "--no-echo-self", "--max-connections", "20000"], "mob-line"),
    "mob-frame": (lambda p: [MOB, "serve", "--listen", f"127.0.0.1:{p}", "--protocol", "frame", "--no-echo-self", "--max-connections", "20000"], "mob-frame"),
}
PEERS = ["ncat", "redis", "nats"]
MOBS = ["mob-line", "mob-frame"]
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, deadline=15.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)  # nothing to wait on but the port itself
    raise RuntimeError("server did not start listening")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def peak_rss_mib(pid):
    """VmHWM, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_one(server, workload, args):
    cmd_for, target = SERVERS[server]
    port = free_port()
    log = open(f"target/compare-{server}-{workload}.log", "w")
    proc = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd_for(port),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    result = {"server": server, "workload": workload}
    try:
        wait_listening(port, proc)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        bench = subprocess.run(
            ["taskset", "-c", BENCH_CPU, MOB, "bench", f"127.0.0.1:{port}", "--target", target,
             "--duration", str(args.duration), "--warmup", str(args.warmup), "--json"]
            + WORKLOADS[workload][1],
            capture_output=True, text=True, timeout=args.duration + args.warmup + 180)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        result["server_cpu_s"] = cpu1 - cpu0
        result["server_cpu_pct"] = 100 * (cpu1 - cpu0) / (t1 - t0)
        result["peak_rss_mib"] = peak_rss_mib(proc.pid)
        try:
            result.update(json.loads(bench.stdout))
        except json.JSONDecodeError:
            result["error"] = (bench.stderr.strip().splitlines() or ["no output"])[-1]
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        result["error"] = str(e)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    if "delivered_total" in result and result["delivered_total"]:
        result["cpu_s_per_m"] = result["server_cpu_s"] / result["delivered_total"] * 1e6
    return result


def median(runs, key):
    values = [r[key] for r in runs if key in r and r[key] is not None]
    return statistics.median(values) if values else None


def summarize(runs):
    """Medians per (server, workload)."""
    out = {}
    for r in runs:
        out.setdefault((r["server"], r["workload"]), []).append(r)
    table = {}
    for key, rs in out.items():
        ok = [r for r in rs if "error" not in r]
        row = {"runs": len(rs), "errors": [r["error"] for r in rs if "error" in r]}
        for k in ["delivered_per_s", "delivered_mb_per_s", "server_cpu_pct", "cpu_s_per_m", "peak_rss_mib",
                  "lost", "duplicated", "out_of_order", "corrupt", "disconnects"]:
            row[k] = median(ok, k)
        for p in ["p50", "p99", "p999", "max"]:
            row[p] = median([{"v": r["latency_us"][p]} for r in ok], "v")
        table[key] = row
    return table


def fmt(v, spec, unit=""):
    return "–" if v is None else format(v, spec) + unit


def markdown(table, servers, workloads):
    lines = ["| workload | server | delivered msg/s | MB/s | p50 ms | p99 ms | p99.9 ms | server CPU | CPU-s / M deliveries | peak RSS MiB | lost / dup / reordered / corrupt / disconnects |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for w in workloads:
        for s in servers:
            row = table.get((s, w))
            if row is None:
                continue
            if row["delivered_per_s"] is None:
                lines.append(f"| {w} | {s} | failed: {'; '.join(row['errors'])[:80]} | | | | | | | | |")
                continue
            ms = lambda us: None if us is None else us / 1000
            integrity = " / ".join(fmt(row[k], ".0f") for k in ["lost", "duplicated", "out_of_order", "corrupt", "disconnects"])
            lines.append(
                f"| {w} | {s} | {fmt(row['delivered_per_s'], ',.0f')} | {fmt(row['delivered_mb_per_s'], ',.1f')} "
                f"| {fmt(ms(row['p50']), '.3f')} | {fmt(ms(row['p99']), '.3f')} | {fmt(ms(row['p999']), '.3f')} "
                f"| {fmt(row['server_cpu_pct'], '.0f', '%')} | {fmt(row['cpu_s_per_m'], '.3f')} "
                f"| {fmt(row['peak_rss_mib'], '.1f')} | {integrity} |")
    return "\n".join(lines)


def clean(row):
    return row and row["delivered_per_s"] and not any(row[k] for k in ["lost", "duplicated", "out_of_order", "corrupt", "disconnects"])


def ratios(table, workloads):
    """mob (best of line and frame) against the best clean peer, on each workload's figure."""
    lines = ["| workload | figure | best mob | best peer | mob / peer |", "|---|---|---|---|---:|"]
    for w in workloads:
        mobs = [(s, table.get((s, w))) for s in MOBS if clean(table.get((s, w)))]
        peers = [(s, table.get((s, w))) for s in PEERS if clean(table.get((s, w)))]
        if not mobs or not peers:
            lines.append(f"| {w} | – | {'ok' if mobs else 'none clean'} | {'ok' if peers else 'none clean'} | – |")
            continue
        if w in ("W1", "W2", "W3"):
            figs = [("delivered msg/s", "delivered_per_s", max, 1), ("CPU-s / M deliveries", "cpu_s_per_m", min, -1)]
        else:
            figs = [("p99 latency ms", "p99", min, -1), ("server CPU %", "server_cpu_pct", min, -1)]
            if w == "W5":
                figs.append(("peak RSS MiB", "peak_rss_mib", min, -1))
        for label, key, best, _ in figs:
            bm = best(mobs, key=lambda x: x[1][key])
            bp = best(peers, key=lambda x: x[1][key])
            scale = 1000 if key == "p99" else 1
            ratio = bm[1][key] / bp[1][key] if bp[1][key] else float("nan")
            num = lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.3f}"
            lines.append(f"| {w} | {label} | {bm[0]} {num(bm[1][key] / scale)} | {bp[0]} {num(bp[1][key] / scale)} | {ratio:.2f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3, help="runs of each (server, workload); medians are reported")
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--out", default="target/compare.json", help="raw results (every run) as JSON")
    args = ap.parse_args()
    workloads = args.workloads.split(",")
    servers = args.servers.split(",")
    runs = []
    total = args.rounds * len(workloads) * len(servers)
    for rnd in range(args.rounds):
        for w in workloads:
            for s in servers:
                r = run_one(s, w, args)
                runs.append(r)
                status = r.get("error") or f"{r.get('delivered_per_s', 0):,.0f} msg/s, p99 {r['latency_us']['p99'] / 1000:.3f} ms, cpu {r['server_cpu_pct']:.0f}%"
                print(f"[{len(runs)}/{total}] round {rnd + 1} {w} {s}: {status}", file=sys.stderr, flush=True)
    table = summarize(runs)
    with open(args.out, "w") as f:
        json.dump({"machine": machine(), "args": vars(args), "runs": runs}, f, indent=1, allow_nan=False)
    print(f"## Results (medians of {args.rounds} rounds, {args.duration:g} s measured after {args.warmup:g} s warm-up)\n")
    for w in workloads:
        print(f"- **{w}**: {WORKLOADS[w][0]}")
    print()
    print(markdown(table, servers, workloads))
    print("\n## mob against the best peer\n")
    print(ratios(table, workloads))
    print(f"\nRaw results: {args.out}")


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for name, cmd in [("redis", ["redis-server", "--version"]), ("nats", ["nats-server", "--version"]),
                      ("ncat", ["ncat", "--version"])]:
        try:
            versions[name] = subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            versions[name] = "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "peers": versions}


if __name__ == "__main__":
    main()
