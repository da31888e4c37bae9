#!/usr/bin/env python3
"""Runs W1-W6 against mob and its peers, back to back, and reports medians side by side.

Every (server, workload) run starts a fresh server pinned to CPU 0 (so its peak RSS is that
workload's), runs `mob bench --json` pinned to CPU 1, reads the server's CPU time from
/proc/PID/stat before and after, and stops the server by its PID. Called by bench/compare.sh.

W6 first opens 10,000 connections from this script, waits until the server holds all of them,
closes them and waits until the server has closed them too; only then does the bench start. It
shows whether a server still pays in every round for a spike of connections that is gone.

mob-line-t2 and mob-frame-t2 run `--threads 2` on CPUs 0 and 1 (the load generator stays on
CPU 1, so they share it: each run also reports the load generator's own CPU use).

--baseline PATH adds base-line and base-frame: an older mob binary started exactly like mob-line
and mob-frame (the bench client is always target/release/mob), run in the same rounds.

WebSocket servers run only when named in --servers: ws-node (the Node `ws` broadcast peer in
bench/ws-peer; run `npm ci` there first) and mob-ws (mob serve --protocol frame --http, the bench
on its HTTP port's /ws), both loaded with `mob bench --target ws`/`mob-ws`.

Clusters run only when named too: mob-cluster (two `mob serve --cluster` nodes, line protocol,
over one redis-server the script starts) and nats-cluster (two nats-server nodes routed to each
other, benched once the route is up). The bench is given both nodes' addresses and spreads its
connections over them. Every process of a cluster (both nodes, and Redis) is pinned to CPU 0,
like a single server: the cluster gets the same one core as the rows it is compared with.
"server CPU" is all of them together; for mob-cluster the run also records Redis's own CPU
time and the commands it processed (INFO stats and commandstats, before and after).

So do the servers behind TLS or a token: redis-tls (redis-server --tls-port, TLS only) and
mob-tls (mob serve --tls-cert/--tls-key), both benched with --ca; mob-auth (mob serve
--auth-token-file), benched with --token-file. Their certificate (self-signed, for 127.0.0.1
and localhost, made by openssl) and token live in a temporary directory removed at exit.
"""

import argparse
import atexit
import json
import os
import platform
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

MOB = "target/release/mob"
NODE = shutil.which("node") or "node"
WS_PEER = "bench/ws-peer"
SERVER_CPU, BENCH_CPU = "0", "1"

WORKLOADS = {
    "W1": ("1 pub, 100 subs, 64 B, max rate", ["--publishers", "1", "--subscribers", "100", "--size", "64"]),
    "W2": ("10 pubs, 1,000 subs, 64 B, max rate", ["--publishers", "10", "--subscribers", "1000", "--size", "64"]),
    "W3": ("1 pub, 100 subs, 16 KiB, max rate", ["--publishers", "1", "--subscribers", "100", "--size", "16KiB"]),
    "W4": ("10 pubs, 100 subs, 64 B, 10,000 msg/s", ["--publishers", "10", "--subscribers", "100", "--size", "64", "--rate", "10000"]),
    "W5": ("1 pub, 10,000 subs, 64 B, 100 msg/s", ["--publishers", "1", "--subscribers", "10000", "--size", "64", "--rate", "100"]),
    "W6": ("1 pub, 10 subs, 64 B, max rate, after a spike of 10,000 connections opened and closed",
           ["--publishers", "1", "--subscribers", "10", "--size", "64"]),
}
SPIKES = {"W6": 10_000}  # workload: connections opened and closed before its bench
SKIP = {("ncat", "W6"): "skipped: ncat --broker holds about 1,000 connections (select)",
        ("mob-cluster", "W6"): "skipped: the spike is made against one server",
        ("nats-cluster", "W6"): "skipped: the spike is made against one server"}


def mob_serve(binary, protocol, threads=None):
    """The command that starts `binary serve` for a port, the same for the new and the old mob."""
    extra = ["--threads", str(threads)] if threads else []
    return lambda p: [binary, "serve", "--listen", f"127.0.0.1:{p}", "--protocol", protocol,
                      "--no-echo-self", "--max-connections", "20000"] + extra


def mob_serve_http(binary, protocol):
    """`binary serve` with the port on --http (what the bench loads); TCP on any free port."""
    return lambda p: [binary, "serve", "--listen", "127.0.0.1:0", "--http", f"127.0.0.1:{p}",
                      "--protocol", protocol, "--no-echo-self", "--max-connections", "20000"]


_SECRETS = {}


def secret(name):
    """Path of the throwaway cert.pem, key.pem or token, made on first use, removed at exit."""
    if not _SECRETS:
        d = tempfile.mkdtemp(prefix="mob-compare-")
        atexit.register(shutil.rmtree, d, ignore_errors=True)
        cert, key, token = (os.path.join(d, n) for n in ("cert.pem", "key.pem", "token"))
        # CA:FALSE: the certificate is both the trust anchor (--ca) and the server's own, and
        # rustls (webpki) refuses a CA certificate as a server's (CaUsedAsEndEntity); openssl
        # req -x509 marks it CA:TRUE unless told otherwise.
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-addext", "basicConstraints=critical,CA:FALSE", "-days", "2",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        with open(token, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        _SECRETS.update({"cert.pem": cert, "key.pem": key, "token": token})
    return _SECRETS[name]


def redis_tls(p):
    return ["redis-server", "--port", "0", "--tls-port", str(p), "--bind", "127.0.0.1",
            "--tls-cert-file", secret("cert.pem"), "--tls-key-file", secret("key.pem"),
            "--tls-ca-cert-file", secret("cert.pem"), "--tls-auth-clients", "no", "--save", "",
            "--appendonly", "no", "--maxclients", "20000", "--loglevel", "warning"]


def mob_tls(p):
    return mob_serve(MOB, "line")(p) + ["--tls-cert", secret("cert.pem"), "--tls-key", secret("key.pem")]


def mob_auth(p):
    return mob_serve(MOB, "line")(p) + ["--auth-token-file", secret("token")]


# name: (command for a port, bench target)
SERVERS = {
    "ncat": (lambda p: ["ncat", "--listen", "--broker", "--max-conns", "20000", "127.0.0.1", str(p)], "mob-line"),
    "redis": (lambda p: ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--maxclients", "20000", "--loglevel", "warning"], "redis"),
    "nats": (lambda p: ["nats-server", "-a", "127.0.0.1", "-p", str(p)], "nats"),
    "mob-line": (mob_serve(MOB, "line"), "mob-line"),
    "mob-frame": (mob_serve(MOB, "frame"), "mob-frame"),
    "mob-line-t2": (mob_serve(MOB, "line", 2), "mob-line"),
    "mob-frame-t2": (mob_serve(MOB, "frame", 2), "mob-frame"),
    "ws-node": (lambda p: [NODE, f"{WS_PEER}/server.js", "--port", str(p)], "ws"),
    "mob-ws": (mob_serve_http(MOB, "frame"), "mob-ws"),
    "redis-tls": (redis_tls, "redis"),
    "mob-tls": (mob_tls, "mob-line"),
    "mob-auth": (mob_auth, "mob-line"),
}
def redis_cmd(p):
    return ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--maxclients", "20000", "--loglevel", "warning"]


def mob_cluster():
    """Two mob nodes (as mob-line) over one Redis: (processes, node ports, bench target, Redis port)."""
    redis = free_port()
    nodes = [free_port(), free_port()]
    url = f"redis://127.0.0.1:{redis}"
    procs = [("redis", redis_cmd(redis), redis)]
    procs += [(f"node{i}", mob_serve(MOB, "line")(p) + ["--cluster", url], p) for i, p in enumerate(nodes)]
    return procs, nodes, "mob-line", redis


def nats_cluster():
    """Two nats-server nodes, each routed to the other; the monitoring port tells when the route is up."""
    nodes = [free_port(), free_port()]
    routes = [free_port(), free_port()]
    monitors = [free_port(), free_port()]
    procs = [(f"node{i}", ["nats-server", "-a", "127.0.0.1", "-p", str(p),
                           "-cluster", f"nats://127.0.0.1:{routes[i]}", "-routes", f"nats://127.0.0.1:{routes[1 - i]}",
                           "-m", str(monitors[i])], p) for i, p in enumerate(nodes)]
    return procs, nodes, "nats", monitors


def wait_routed(monitors, deadline=15.0):
    """Polls each NATS node's /routez until it has its route (interest then flows between them)."""
    end = time.monotonic() + deadline
    for m in monitors:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{m}/routez", timeout=1) as r:
                    if json.load(r).get("num_routes", 0) >= 1:
                        break
            except (OSError, ValueError):
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"nats node with monitor port {m} has no route")
            time.sleep(0.05)  # nothing to wait on but the endpoint


def redis_info(port):
    """INFO stats and commandstats of the Redis on port, as a dict of field: value (strings)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"INFO stats\r\nINFO commandstats\r\nQUIT\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    info = {}
    for line in data.decode(errors="replace").splitlines():
        if ":" in line and not line.startswith(("$", "+", "-")):
            k, v = line.split(":", 1)
            info[k] = v
    return info


def redis_calls(info, command):
    """Calls of one command so far, from INFO commandstats (cmdstat_xadd:calls=N,...)."""
    stat = info.get(f"cmdstat_{command}", "")
    fields = dict(f.split("=", 1) for f in stat.split(",") if "=" in f)
    return int(fields.get("calls", 0))


# name: a function returning (processes, node ports, bench target, extra); every process is
# (label, command, port to wait for). Run only when named.
CLUSTERS = {"mob-cluster": mob_cluster, "nats-cluster": nats_cluster}
# What the bench needs besides the target to get in.
BENCH_ACCESS = {
    "redis-tls": lambda: ["--ca", secret("cert.pem")],
    "mob-tls": lambda: ["--ca", secret("cert.pem")],
    "mob-auth": lambda: ["--token-file", secret("token")],
}
# Run only when named in --servers.
OPT_IN = ["ws-node", "mob-ws", "redis-tls", "mob-tls", "mob-auth"] + list(CLUSTERS)
# mob servers whose flag the binary must have: (server, `mob serve` flag).
NEEDS_FLAG = [("mob-ws", "--http"), ("mob-tls", "--tls-cert"), ("mob-auth", "--auth-token-file")]
SERVER_CPUS = {"mob-line-t2": "0,1", "mob-frame-t2": "0,1"}  # default: SERVER_CPU
PEERS = ["ncat", "redis", "nats"]
MOBS = ["mob-line", "mob-frame"]
BASES = {"base-line": "mob-line", "base-frame": "mob-frame"}  # --baseline's binary, started like these
TICK = os.sysconf("SC_CLK_TCK")


def add_baseline(path):
    """Makes base-line and base-frame: mob-line and mob-frame with the binary at path."""
    for base, mob in BASES.items():
        SERVERS[base] = (mob_serve(path, mob.split("-", 1)[1]), SERVERS[mob][1])


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


def held_sockets(pid):
    """Inodes of the sockets the process holds a descriptor for."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def held_from(pid, port, client_ports):
    """How many connections from client_ports to port the server process still holds (accepted, not closed)."""
    held = held_sockets(pid)
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if (inode in held and int(local.rsplit(":", 1)[1], 16) == port
                    and int(remote.rsplit(":", 1)[1], 16) in client_ports):
                count += 1
    return count


def wait_held(pid, port, client_ports, done, what, deadline=60.0):
    """Polls held_from until done(count) is true, or fails saying what the server did not do."""
    end = time.monotonic() + deadline
    while True:
        count = held_from(pid, port, client_ports)
        if done(count):
            return
        if time.monotonic() > end:
            raise RuntimeError(f"server did not {what}: holds {count} of {len(client_ports)} spike connections")
        time.sleep(0.02)  # nothing to wait on but the server's descriptors


def spike(pid, port, n, batch=500):
    """Opens n connections to the server, waits until it has accepted all, closes them, waits until it has closed all.

    Connects in batches no bigger than a listen backlog, each waited for until the server accepted it,
    so that no SYN is dropped. Nothing is sent: line, frame, Redis and NATS servers all take that.
    Closes normally (FIN), as clients that leave do: the server takes its usual path, not a reset's,
    and the TIME_WAIT sockets this leaves are the client side's, not the server's.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n + 64:
        raise RuntimeError(f"spike of {n} connections needs RLIMIT_NOFILE >= {n + 64}, hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks, ports = [], set()
    try:
        for _ in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError as e:
                raise RuntimeError(f"spike connection {len(socks) + 1} of {n}: {e}")
            socks.append(s)
            ports.add(s.getsockname()[1])
            if len(socks) % batch == 0 or len(socks) == n:
                wait_held(pid, port, ports, lambda c: c == len(socks), "accept the spike")
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    wait_held(pid, port, ports, lambda c: c == 0, "close the spike")


def deployment(server):
    """What to start for server: (processes, node ports, bench target, extra), as CLUSTERS give it."""
    if server in CLUSTERS:
        return CLUSTERS[server]()
    cmd_for, target = SERVERS[server]
    port = free_port()
    return [("server", cmd_for(port), port)], [port], target, None


def run_one(server, workload, args):
    if (server, workload) in SKIP:
        return {"server": server, "workload": workload, "skipped": SKIP[(server, workload)]}
    specs, nodes, target, extra = deployment(server)
    cpus = SERVER_CPUS.get(server, SERVER_CPU)
    procs, logs = {}, []
    result = {"server": server, "workload": workload}
    try:
        # In order, each listening before the next starts (Redis before the nodes that use it).
        for label, cmd, port in specs:
            name = server if len(specs) == 1 else f"{server}-{label}"
            log = open(f"target/compare-{name}-{workload}.log", "w")
            logs.append(log)
            procs[label] = subprocess.Popen(["taskset", "-c", cpus] + cmd,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            wait_listening(port, procs[label])
        if server == "nats-cluster":
            wait_routed(extra)
        redis = extra if server == "mob-cluster" else None
        if workload in SPIKES:
            s0 = time.monotonic()
            spike(procs["server"].pid, nodes[0], SPIKES[workload])
            result["spike_s"] = time.monotonic() - s0
        cpu0 = {k: cpu_seconds(p.pid) for k, p in procs.items()}
        info0 = redis_info(redis) if redis else None
        t0 = time.monotonic()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        bench = subprocess.run(
            ["taskset", "-c", BENCH_CPU, MOB, "bench"] + [f"127.0.0.1:{p}" for p in nodes] + ["--target", target,
             "--duration", str(args.duration), "--warmup", str(args.warmup), "--json"]
            + BENCH_ACCESS.get(server, lambda: [])() + WORKLOADS[workload][1],
            capture_output=True, text=True, timeout=args.duration + args.warmup + 180)
        cpu1 = {k: cpu_seconds(p.pid) for k, p in procs.items()}
        t1 = time.monotonic()
        info1 = redis_info(redis) if redis else None
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # The bench is the only child waited for meanwhile (the servers are still running).
        bench_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        result["bench_cpu_pct"] = 100 * bench_cpu / (t1 - t0)
        used = {k: cpu1[k] - cpu0[k] for k in procs}
        result["server_cpu_s"] = sum(used.values())
        result["server_cpu_pct"] = 100 * result["server_cpu_s"] / (t1 - t0)
        rss = [peak_rss_mib(p.pid) for p in procs.values()]
        result["peak_rss_mib"] = None if None in rss else sum(rss)
        if len(procs) > 1:
            result["cpu_s_by_process"] = used
        if redis:
            result["redis_cpu_s"] = used["redis"]
            result["redis_commands"] = int(info1["total_commands_processed"]) - int(info0["total_commands_processed"])
            result["redis_commands_per_s"] = result["redis_commands"] / (t1 - t0)
            for command in ["xadd", "xread"]:
                result[f"redis_{command}"] = redis_calls(info1, command) - redis_calls(info0, command)
        try:
            result.update(json.loads(bench.stdout))
        except json.JSONDecodeError:
            result["error"] = (bench.stderr.strip().splitlines() or ["no output"])[-1]
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        result["error"] = str(e)
    finally:
        for proc in reversed(list(procs.values())):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    if "delivered_total" in result and result["delivered_total"]:
        result["cpu_s_per_m"] = result["server_cpu_s"] / result["delivered_total"] * 1e6
        if "redis_cpu_s" in result:
            # Every message reaches every subscriber once (a clean run): messages published
            # over the whole run, warm-up and drain included, as the CPU time is.
            messages = result["delivered_total"] / result["subscribers"]
            result["redis_messages"] = messages
            result["redis_cpu_us_per_message"] = result["redis_cpu_s"] / messages * 1e6
            result["redis_cpu_ns_per_delivery"] = result["redis_cpu_s"] / result["delivered_total"] * 1e9
            result["redis_commands_per_message"] = result["redis_commands"] / messages
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
        ok = [r for r in rs if "error" not in r and "skipped" not in r]
        row = {"runs": len(rs), "errors": [r["error"] for r in rs if "error" in r],
               "skipped": next((r["skipped"] for r in rs if "skipped" in r), None)}
        for k in ["delivered_per_s", "delivered_mb_per_s", "server_cpu_pct", "cpu_s_per_m", "peak_rss_mib", "bench_cpu_pct",
                  "lost", "duplicated", "out_of_order", "diverged", "corrupt", "disconnects",
                  "redis_cpu_s", "redis_cpu_us_per_message", "redis_cpu_ns_per_delivery", "redis_commands_per_s",
                  "redis_commands_per_message", "redis_xadd", "redis_xread", "redis_messages"]:
            row[k] = median(ok, k)
        for p in ["p50", "p99", "p999", "max"]:
            row[p] = median([{"v": r["latency_us"][p]} for r in ok], "v")
        table[key] = row
    return table


def fmt(v, spec, unit=""):
    return "–" if v is None else format(v, spec) + unit


def markdown(table, servers, workloads):
    lines = ["| workload | server | delivered msg/s | MB/s | p50 ms | p99 ms | p99.9 ms | server CPU | CPU-s / M deliveries | peak RSS MiB | load generator CPU | lost / dup / reordered / corrupt / disconnects |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for w in workloads:
        for s in servers:
            row = table.get((s, w))
            if row is None:
                continue
            if row["skipped"]:
                lines.append(f"| {w} | {s} | {row['skipped']} | | | | | | | | | |")
                continue
            if row["delivered_per_s"] is None:
                lines.append(f"| {w} | {s} | failed: {'; '.join(row['errors'])[:80]} | | | | | | | | | |")
                continue
            ms = lambda us: None if us is None else us / 1000
            integrity = " / ".join(fmt(row[k], ".0f") for k in ["lost", "duplicated", "out_of_order", "corrupt", "disconnects"])
            if row.get("diverged"):
                integrity += f" (orders diverged: {row['diverged']:.0f} subscribers)"
            lines.append(
                f"| {w} | {s} | {fmt(row['delivered_per_s'], ',.0f')} | {fmt(row['delivered_mb_per_s'], ',.1f')} "
                f"| {fmt(ms(row['p50']), '.3f')} | {fmt(ms(row['p99']), '.3f')} | {fmt(ms(row['p999']), '.3f')} "
                f"| {fmt(row['server_cpu_pct'], '.0f', '%')} | {fmt(row['cpu_s_per_m'], '.3f')} "
                f"| {fmt(row['peak_rss_mib'], '.1f')} | {fmt(row['bench_cpu_pct'], '.0f', '%')} | {integrity} |")
    return "\n".join(lines)


def clean(row):
    return row and row["delivered_per_s"] and not any(row[k] for k in ["lost", "duplicated", "out_of_order", "diverged", "corrupt", "disconnects"])


def redis_cost(table, workloads, server="mob-cluster"):
    """What the backplane cost the mob cluster: Redis's CPU and commands, per message and per second."""
    lines = ["| workload | Redis CPU | Redis CPU µs / message | Redis CPU ns / delivery | Redis commands/s | commands / message | XADD | XREAD |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for w in workloads:
        row = table.get((server, w))
        if not row or row.get("redis_cpu_s") is None:
            continue
        lines.append(f"| {w} | {fmt(row['redis_cpu_s'], '.2f', ' s')} | {fmt(row['redis_cpu_us_per_message'], '.2f')} "
                     f"| {fmt(row['redis_cpu_ns_per_delivery'], '.1f')} | {fmt(row['redis_commands_per_s'], ',.0f')} "
                     f"| {fmt(row['redis_commands_per_message'], '.4f')} | {fmt(row['redis_xadd'], ',.0f')} | {fmt(row['redis_xread'], ',.0f')} |")
    return "\n".join(lines)


def ratios(table, workloads, mob_servers=MOBS, peer_servers=PEERS):
    """mob (best of line and frame) against the best clean peer, on each workload's figure."""
    lines = ["| workload | figure | best mob | best peer | mob / peer |", "|---|---|---|---|---:|"]
    for w in workloads:
        mobs = [(s, table.get((s, w))) for s in mob_servers if clean(table.get((s, w)))]
        peers = [(s, table.get((s, w))) for s in peer_servers if clean(table.get((s, w)))]
        if not mobs or not peers:
            lines.append(f"| {w} | – | {'ok' if mobs else 'none clean'} | {'ok' if peers else 'none clean'} | – |")
            continue
        if w in ("W1", "W2", "W3", "W6"):
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="runs of each (server, workload); medians are reported")
    ap.add_argument("--duration", type=float, default=5, help="seconds measured per run")
    ap.add_argument("--warmup", type=float, default=1, help="seconds run before measuring")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, of " + ", ".join(WORKLOADS))
    ap.add_argument("--servers", help="comma-separated, of " + ", ".join(list(SERVERS) + list(CLUSTERS) + list(BASES))
                    + " [default: all but " + ", ".join(OPT_IN) + "; base-* only with --baseline]")
    ap.add_argument("--baseline", metavar="PATH",
                    help="an older mob binary, run as base-line and base-frame beside mob-line and mob-frame")
    ap.add_argument("--out", default="target/compare.json", help="raw results (every run) as JSON")
    args = ap.parse_args()
    workloads, servers = parse_selection(ap, args)
    runs = []
    total = args.rounds * len(workloads) * len(servers)
    for rnd in range(args.rounds):
        for w in workloads:
            for s in servers:
                r = run_one(s, w, args)
                runs.append(r)
                status = r.get("error") or r.get("skipped") or f"{r.get('delivered_per_s', 0):,.0f} msg/s, p99 {r['latency_us']['p99'] / 1000:.3f} ms, cpu {r['server_cpu_pct']:.0f}%"
                print(f"[{len(runs)}/{total}] round {rnd + 1} {w} {s}: {status}", file=sys.stderr, flush=True)
    table = summarize(runs)
    with open(args.out, "w") as f:
        json.dump({"machine": machine(), "args": vars(args), "runs": runs}, f, indent=1, allow_nan=False)
    print(f"## Results (medians of {args.rounds} rounds, {args.duration:g} s measured after {args.warmup:g} s warm-up)\n")
    for w in workloads:
        print(f"- **{w}**: {WORKLOADS[w][0]}")
    print()
    print(markdown(table, servers, workloads))
    if any(s in MOBS for s in servers) and any(s in PEERS for s in servers):
        print("\n## mob against the best peer\n")
        print(ratios(table, workloads))
    if "mob-ws" in servers and "ws-node" in servers:
        print("\n## mob-ws against ws-node\n")
        print(ratios(table, workloads, ["mob-ws"], ["ws-node"]))
    if "mob-cluster" in servers and "nats-cluster" in servers:
        print("\n## mob-cluster against nats-cluster\n")
        print(ratios(table, workloads, ["mob-cluster"], ["nats-cluster"]))
    if "mob-cluster" in servers:
        print("\n## What Redis costs the mob cluster (medians; messages: deliveries / subscribers over the whole run)\n")
        print(redis_cost(table, workloads))
    if "mob-tls" in servers and "redis-tls" in servers:
        print("\n## mob-tls against redis-tls\n")
        print(ratios(table, workloads, ["mob-tls"], ["redis-tls"]))
    print(f"\nRaw results: {args.out}")


def parse_selection(ap, args):
    """Workloads and servers asked for, checked; --baseline adds base-line and base-frame to SERVERS."""
    workloads = args.workloads.split(",")
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    if args.baseline:
        if not (os.path.isfile(args.baseline) and os.access(args.baseline, os.X_OK)):
            ap.error(f"--baseline {args.baseline}: not an executable file")
        args.baseline = os.path.abspath(args.baseline)
        add_baseline(args.baseline)
    servers = args.servers.split(",") if args.servers else [s for s in SERVERS if s not in OPT_IN]
    bases = [s for s in servers if s in BASES and s not in SERVERS]
    if bases:
        ap.error(f"{', '.join(bases)}: only with --baseline PATH, the older mob binary to run as {' and '.join(BASES)}")
    unknown = [s for s in servers if s not in SERVERS and s not in CLUSTERS]
    if unknown:
        known = list(SERVERS) + list(CLUSTERS) + [b for b in BASES if b not in SERVERS]
        ap.error(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if "ws-node" in servers and not shutil.which(NODE):
        ap.error("ws-node: node is not installed")
    if "ws-node" in servers and not os.path.isdir(f"{WS_PEER}/node_modules/ws"):
        ap.error(f"ws-node: run `npm ci` in {WS_PEER} first")
    serve_help = subprocess.run([MOB, "serve", "--help"], capture_output=True, text=True).stdout
    for server, flag in NEEDS_FLAG + [("mob-cluster", "--cluster")]:
        if server in servers and flag not in serve_help:
            ap.error(f"{server}: {MOB} has no `serve {flag}` (build a mob that has it)")
    if any(s in servers for s in BENCH_ACCESS) and not shutil.which("openssl"):
        ap.error("redis-tls, mob-tls and mob-auth need openssl for their certificate")
    return workloads, servers


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for name, cmd in [("redis", ["redis-server", "--version"]), ("nats", ["nats-server", "--version"]),
                      ("ncat", ["ncat", "--version"]), ("node", [NODE, "--version"])]:
        try:
            versions[name] = subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            versions[name] = "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "peers": versions}


if __name__ == "__main__":
    main()
