#!/usr/bin/env python3
"""Soak mob with faults: a steady broadcast checked message by message while clients misbehave.

Called by bench/soak.sh (which builds the binary first). Loopback only; bounded in time (every
phase has a deadline) and stops every process it started, by PID.

Run 1 ("single") starts two servers, both `mob serve --threads 2 --log-format json`:
  - A: `--protocol line --http`: TCP line clients and WebSocket clients on one broadcast;
  - B: `--protocol frame --idle-timeout 3`: TCP frame clients (keepalive frames keep them).
Run 2 ("cluster", when redis-server is installed) starts a redis-server and two nodes
`--protocol line --http --cluster redis://...`: one broadcast over both nodes, and every 20 s
Redis drops every node's connections (CLIENT KILL), which each node must survive without a
loss or a repeat (the WARN lines this makes, naming Redis, are the only ones allowed without
a peer).

In each group (A, B, the cluster) publishers send at a steady rate and healthy subscribers
(line, frame, WebSocket) check every message: each publisher's sequence numbers come in order
with no gap or repeat, each payload is the exact bytes sent, and at the end every healthy
subscriber of a group has seen the same messages in the same order (a digest of everything it
received from the first published message to the last publisher's end marker). Meanwhile the
faults run, spread over every endpoint:
  - churn: clients that connect, maybe send a message, read a little and close (tens a second);
  - resets: clients that send part of a message and close with a reset (SO_LINGER 0);
  - slow consumers: clients with a 4 KiB receive buffer that never read (each server has
    --max-pending 1MiB, so it must cut them);
  - garbage: an oversized line, an oversized or truncated frame, an unmasked WebSocket frame, a
    reserved opcode, invalid UTF-8 in a text frame, a request that is not HTTP, a request head
    that never ends: each must be closed by the server within its deadline;
  - half-closed peers: send part of a message, shut their sending side, keep reading: the
    server must finish and close;
  - silent peers: connect and send nothing (on B closed by --idle-timeout, on the HTTP port
    by its 10 s request deadline, elsewhere closed by us after a while). Loopback cannot make a
    peer vanish without a FIN or reset; a vanished peer is, to the server, one that stops
    reading (slow consumer) or one that is silent.

It fails (exit status 1) on: a healthy subscriber or publisher cut off, any loss, duplicate,
reorder or corrupt payload, groups whose subscribers disagree on the order; a garbage,
half-closed or idle client the server does not close by its deadline; a server's RSS after
warm-up growing more than 10% (median of the samples just after warm-up against the median of
the last ones); open descriptors not back to the baseline once every client has gone; a log
line with "panic", or a WARN/ERROR line that names no client (no `peer` field); a server that
does not exit 0 on SIGTERM.
"""

import argparse
import hashlib
import json
import os
import random
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

MAX_MESSAGE = 64 * 1024
MAX_PENDING = "1MiB"
IDLE_TIMEOUT = 3  # server B
SIDE_TIMEOUT = 10  # mob's HTTP request head deadline (src/server/web.rs)
CLOSE_GRACE = 5  # seconds on top of a server deadline before we call it a failure
POOL = bytes(random.Random(7).choice(b"abcdefghijklmnopqrstuvwxyz0123456789-_") for _ in range(8192))

failures = []
quiet = False  # during the self-test


def fail(msg):
    if len(failures) < 200:
        failures.append(msg)
    if len(failures) <= 20 and not quiet:
        print(f"  FAIL: {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Processes


class Server:
    """One `mob serve` process; its stderr (JSON log lines) goes to a file."""

    def __init__(self, mob, name, args, logdir):
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log = open(self.log_path, "wb")
        cmd = [mob, "serve", "--listen", "127.0.0.1:0", "--log-format", "json", *args]
        wrap = os.environ.get("SOAK_WRAP", "").split()  # e.g. "heaptrack -o /tmp/ht"
        cmd = wrap + cmd
        env = dict(os.environ, RUST_LOG=os.environ.get("SOAK_RUST_LOG", "info"))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.addr = self.http = None
        deadline = time.monotonic() + 30
        want_http = "--http" in args
        buf = b""
        os.set_blocking(self.proc.stdout.fileno(), False)
        while self.addr is None or (want_http and self.http is None):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"{name}: no 'listening on' line (see {self.log_path})")
            sel = selectors.DefaultSelector()
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            sel.select(0.2)
            sel.close()
            chunk = self.proc.stdout.read() or b""
            buf += chunk
            for line in buf.split(b"\n"):
                text = line.decode(errors="replace")
                if text.startswith("listening on "):
                    self.addr = hostport(text.split()[-1])
                elif text.startswith("http on "):
                    self.http = hostport(text.split()[-1])
        self.pid = self.proc.pid if not wrap else child_named(self.proc.pid, "mob")

    def rss_kib(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def fds(self):
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            fail(f"{self.name}: still running 20 s after SIGTERM (killed)")
            return
        if code != 0:
            fail(f"{self.name}: exited with status {code} on SIGTERM")
        self.log.close()

    def scan_log(self):
        """Counts log lines by level; fails on panics and WARN/ERROR lines that name no peer."""
        levels = {}
        reasons = {}
        with open(self.log_path, "rb") as f:
            for raw in f:
                text = raw.decode(errors="replace").strip()
                if not text:
                    continue
                if "panic" in text.lower():
                    fail(f"{self.name}: log line mentions a panic: {text[:300]}")
                try:
                    line = json.loads(text)
                except ValueError:
                    if not os.environ.get("SOAK_WRAP"):  # a wrapping tool writes its own lines
                        fail(f"{self.name}: log line that is not JSON: {text[:300]}")
                    continue
                level = line.get("level", "?")
                levels[level] = levels.get(level, 0) + 1
                msg = str(line.get("message", ""))
                expected = getattr(self, "expected_warnings", None)
                if level == "WARN" and expected and msg.startswith(expected[0]) and expected[1] in msg:
                    continue
                if level in ("WARN", "ERROR") and "peer" not in line:
                    fail(f"{self.name}: {level} line naming no client: {msg[:300]}")
                if msg.startswith(("disconnected: ", "closing: ")):
                    why = msg.split(": ", 1)[1].split(" (")[0].split(":")[0][:70]
                    reasons[why] = reasons.get(why, 0) + 1
        return levels, reasons


def child_named(parent, comm):
    """The process called `comm` under `parent` (the server under a SOAK_WRAP tool)."""
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent and name == comm:
            return int(pid)
    raise SystemExit(f"no {comm} process under {parent} (SOAK_WRAP)")


def hostport(text):
    host, port = text.rsplit(":", 1)
    return (host.strip("[]"), int(port))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self, logdir):
        self.port = free_port()
        self.log = open(os.path.join(logdir, "redis.log"), "wb")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------------
# Wire formats (the client's side)


def mask_frame(opcode, payload, fin=True, mask=True, length=None):
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    if payload:
        k = (key * (len(payload) // 4 + 1))[: len(payload)]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(len(payload), "big")
    return head + key + payload


def encode(proto, payload):
    if proto == "line":
        return payload + b"\n"
    if proto == "frame":
        return struct.pack(">Q", len(payload)) + payload
    return mask_frame(0x1, payload)


def ws_request(host, port, path="/ws"):
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


class Decoder:
    """Splits what a server sends into messages (payloads), per protocol."""

    def __init__(self, proto):
        self.proto = proto
        self.buf = bytearray()
        self.upgraded = proto != "ws"
        self.frag = None
        self.closed_by_server = False  # a WebSocket close frame
        self.pongs = []

    def feed(self, data):
        self.buf += data
        out = []
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 16384:
                    raise ValueError("response head too long")
                return out
            head = bytes(self.buf[:end])
            if not head.startswith(b"HTTP/1.1 101"):
                raise ValueError(f"upgrade refused: {head[:80]!r}")
            del self.buf[: end + 4]
            self.upgraded = True
        if self.proto == "line":
            start = 0
            while True:
                nl = self.buf.find(b"\n", start)
                if nl < 0:
                    break
                out.append(bytes(self.buf[start:nl]))
                start = nl + 1
            del self.buf[:start]
        elif self.proto == "frame":
            pos = 0
            while len(self.buf) - pos >= 8:
                (n,) = struct.unpack_from(">Q", self.buf, pos)
                if len(self.buf) - pos - 8 < n:
                    break
                out.append(bytes(self.buf[pos + 8: pos + 8 + n]))
                pos += 8 + n
            del self.buf[:pos]
        else:
            pos = 0
            while True:
                if len(self.buf) - pos < 2:
                    break
                b0, b1 = self.buf[pos], self.buf[pos + 1]
                if b1 & 0x80:
                    raise ValueError("masked frame from the server")
                n, hl = b1 & 0x7F, 2
                if n == 126:
                    if len(self.buf) - pos < 4:
                        break
                    (n,) = struct.unpack_from(">H", self.buf, pos + 2)
                    hl = 4
                elif n == 127:
                    if len(self.buf) - pos < 10:
                        break
                    (n,) = struct.unpack_from(">Q", self.buf, pos + 2)
                    hl = 10
                if len(self.buf) - pos - hl < n:
                    break
                payload = bytes(self.buf[pos + hl: pos + hl + n])
                pos += hl + n
                opcode, fin = b0 & 0x0F, b0 & 0x80
                if opcode in (1, 2):
                    if fin:
                        out.append(payload)
                    else:
                        self.frag = bytearray(payload)
                elif opcode == 0:
                    if self.frag is None:
                        raise ValueError("continuation without a start")
                    self.frag += payload
                    if fin:
                        out.append(bytes(self.frag))
                        self.frag = None
                elif opcode == 8:
                    self.closed_by_server = True
                elif opcode == 9:
                    self.pongs.append(mask_frame(0xA, payload))
                elif opcode == 10:
                    pass
                else:
                    raise ValueError(f"opcode {opcode} from the server")
            del self.buf[:pos]
        return out


# ---------------------------------------------------------------------------------------------
# Checks


def body(pub, seq, n):
    start = (seq * 7919 + pub * 104729) % (len(POOL) - 4096)
    return POOL[start: start + n]


def publisher_message(pub, seq, n):
    return b"P%d.%d.%d." % (pub, seq, n) + body(pub, seq, n)


class Checker:
    """What one healthy subscriber (or publisher) saw, checked as it arrives."""

    def __init__(self, name, group):
        self.name = name
        self.group = group
        self.next = {}
        self.synced = False
        self.digest = None
        self.count = 0
        self.ends = set()
        self.final = None
        self.broken = False

    def feed(self, payload):
        if payload.startswith(b"S:"):
            self.synced = True
            return
        if not self.synced or self.final is not None:
            return
        if payload.startswith(b"P"):
            self.check(payload)
            if self.digest is None:
                self.digest = hashlib.blake2b(digest_size=16)
        if self.digest is None:
            return
        self.digest.update(struct.pack(">I", len(payload)))
        self.digest.update(payload)
        self.count += 1
        if payload.startswith(b"E:"):
            self.ends.add(payload)
            if self.ends == self.group.ends:
                self.final = (self.count, self.digest.hexdigest())

    def check(self, payload):
        try:
            head, rest = payload[1:].split(b".", 3)[:3], payload[1:].split(b".", 3)[3]
            pub, seq, n = (int(x) for x in head)
        except (ValueError, IndexError):
            self.problem(f"corrupt message (cannot parse) {payload[:60]!r}")
            return
        expect = self.next.get(pub, 0)
        if rest != body(pub, seq, n):
            self.problem(f"corrupt payload: publisher {pub} message {seq}")
        elif seq != expect:
            what = "lost" if seq > expect else "duplicate or reordered"
            self.problem(f"{what}: publisher {pub} message {seq}, expected {expect}")
        self.next[pub] = seq + 1 if seq >= expect else expect
        self.group.received += 1

    def problem(self, msg):
        if not self.broken:
            fail(f"{self.group.name} {self.name}: {msg}")
        self.broken = True


class Group:
    """One broadcast: its publishers and the healthy subscribers that check it."""

    def __init__(self, name):
        self.name = name
        self.subscribers = []
        self.publishers = []
        self.ends = set()
        self.received = 0

    def compare(self, sent):
        """At the end: every subscriber got every publisher's last message, and all of them the
        same messages in the same order."""
        finals = {}
        for s in self.subscribers:
            finals.setdefault(s.checker.final, []).append(s.checker.name)
            for pub, n in sent.items():
                if s.checker.next.get(pub, 0) != n:
                    fail(f"{self.name} {s.checker.name}: publisher {pub} sent {n} messages, "
                         f"it got to {s.checker.next.get(pub, 0)}")
        if len(finals) > 1:
            fail(f"{self.name}: subscribers disagree on what they received, in order: "
                 + "; ".join(f"{k}: {v}" for k, v in finals.items()))


# ---------------------------------------------------------------------------------------------
# Clients


class Client:
    """A non-blocking client socket in one role."""

    def __init__(self, soak, role, ep, rcvbuf=None, read=True):
        self.soak, self.role, self.proto, self.addr = soak, role, ep.proto, ep.addr
        self.server = ep.server
        proto, addr = ep.proto, ep.addr
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setblocking(False)
        self.out = bytearray()
        self.dec = Decoder(proto)
        self.connected = False
        self.closed = False  # by us
        self.ended = None  # the server's end: "eof" or "reset"
        self.reading = read
        self.checker = None
        self.deadline = None  # by when the server must have closed it
        self.expire = None  # when we close it ourselves
        self.then = None  # what to do once what is queued has gone
        self.decode = role in ("healthy", "publisher", "churn")  # others only look for the end
        self.registered = False
        err = self.sock.connect_ex(addr)
        if err not in (0, 115):  # EINPROGRESS
            self.ended = f"connect failed: {os.strerror(err)}"
            self.sock.close()
            self.closed = True
            return
        if proto == "ws":
            self.out += ws_request(*addr)
        soak.clients.add(self)
        self.update()

    def events(self):
        ev = selectors.EVENT_READ if self.reading and self.connected else 0
        if self.out or not self.connected:
            ev |= selectors.EVENT_WRITE
        return ev

    def update(self):
        if self.closed:
            return
        ev = self.events()
        if ev and not self.registered:
            self.soak.sel.register(self.sock, ev, self)
        elif ev:
            self.soak.sel.modify(self.sock, ev, self)
        elif self.registered:
            self.soak.sel.unregister(self.sock)
        self.registered = bool(ev)

    def send(self, data):
        if self.closed or self.ended:
            return
        self.out += data
        if self.connected:
            self.flush()
        else:
            self.update()

    def flush(self):
        while self.out and not self.closed and self.connected:
            try:
                n = self.sock.send(self.out[:262144])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self.gone(f"send failed: {e.strerror}")
                return
            del self.out[:n]
        if not self.out and self.then and not self.closed:
            then, self.then = self.then, None
            then()
        self.update()

    def on_event(self, mask):
        if self.closed:
            return
        if not self.connected and mask & selectors.EVENT_WRITE:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.gone(f"connect failed: {os.strerror(err)}")
                return
            self.connected = True
        if mask & selectors.EVENT_WRITE:
            self.flush()
        if mask & selectors.EVENT_READ and not self.closed:
            self.on_readable()

    def on_readable(self):
        budget = 1 << 20
        while budget > 0 and not self.closed:
            try:
                data = self.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionResetError:
                self.gone("reset")
                return
            except OSError as e:
                self.gone(f"recv failed: {e.strerror}")
                return
            if not data:
                self.gone("eof")
                return
            budget -= len(data)
            if self.decode:
                try:
                    messages = self.dec.feed(data)
                except ValueError as e:
                    fail(f"{self.role} client on {self.proto}: bad bytes from the server: {e}")
                    self.close()
                    return
                for m in messages:
                    if self.checker is not None:
                        self.checker.feed(m)
                if self.dec.pongs:
                    self.send(b"".join(self.dec.pongs))
                    self.dec.pongs.clear()

    def gone(self, how):
        """The server ended the connection (or it failed)."""
        if self.ended is None:
            self.ended = how
        self.soak.on_server_end(self)
        self.close()

    def close(self, reset=False):
        if self.closed:
            return
        self.closed = True
        if reset:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        if self.registered:
            self.soak.sel.unregister(self.sock)
            self.registered = False
        self.sock.close()
        self.soak.clients.discard(self)


# ---------------------------------------------------------------------------------------------
# The run


class Endpoint:
    def __init__(self, proto, addr, group, server, idle_timeout=None):
        self.proto, self.addr, self.group, self.server = proto, addr, group, server
        self.idle_timeout = idle_timeout

    def __repr__(self):
        return f"{self.proto}@{self.server.name}"


class Soak:
    def __init__(self, name, servers, endpoints, publishers, groups, seconds, rate, rng):
        self.name = name
        self.servers = servers
        self.endpoints = endpoints  # each served address once: subscribers and faults
        self.publisher_eps = publishers  # one publisher each (an endpoint may be listed twice)
        self.groups = groups
        self.seconds = seconds
        self.rate = rate
        self.rng = rng
        self.sel = selectors.DefaultSelector()
        self.clients = set()
        self.counts = {}
        self.watch = []  # clients the server must close by their deadline
        self.rss = {s.name: [] for s in servers}
        self.redis = None  # the cluster's Redis, whose connections are killed now and then

    def count(self, what, n=1):
        self.counts[what] = self.counts.get(what, 0) + n

    def on_server_end(self, c):
        if c.role in ("healthy", "publisher") and not c.closed:
            fail(f"{self.name}: a {c.role} ({c.proto}) was cut off by the server: {c.ended}")
        elif c.role in ("garbage", "halfclosed", "silent") and c.deadline is not None:
            self.count(f"{c.role} closed by the server")
        elif c.role == "slow":
            self.count("slow consumers found closed by the server")

    def poll(self, timeout):
        for key, mask in self.sel.select(timeout):
            key.data.on_event(mask)

    def pump_until(self, done, seconds, what):
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline:
                fail(f"{self.name}: {what} not within {seconds} s")
                return False
            self.poll(0.02)
            self.keepalives(time.monotonic())
        return True

    def keepalives(self, now):
        for c in self.frame_subs:
            if now >= c.next_keepalive:
                c.send(struct.pack(">Q", 0))
                c.next_keepalive = now + 1

    def run(self):
        rng = self.rng
        # Healthy subscribers and publishers first.
        self.frame_subs = []
        for g in self.groups:
            for ep in (e for e in self.endpoints if e.group is g):
                for i in range(3):
                    c = Client(self, "healthy", ep)
                    c.checker = Checker(f"{ep} subscriber {i}", g)
                    g.subscribers.append(c)
                    if ep.proto == "frame":
                        c.next_keepalive = 0
                        self.frame_subs.append(c)
            for ep in (e for e in self.publisher_eps if e.group is g):
                c = Client(self, "publisher", ep)
                c.checker = None
                c.pub = len(g.publishers) + 1000 * self.groups.index(g)
                c.checker_group = g
                c.seq = 0
                g.publishers.append(c)
                g.ends.add(b"E:%d" % c.pub)
                if ep.proto == "frame":
                    c.next_keepalive = 0
                    self.frame_subs.append(c)
                # A publisher reads (and drops) what it is sent, or it would be a slow consumer.
                c.reading = True
        # Syncs until every healthy subscriber has one.
        last_sync = 0

        def synced():
            nonlocal last_sync
            now = time.monotonic()
            if now - last_sync > 0.05:
                last_sync = now
                for g in self.groups:
                    for p in g.publishers:
                        p.send(encode(p.proto, b"S:%d" % p.pub))
            return all(s.checker.synced for g in self.groups for s in g.subscribers)

        if not self.pump_until(synced, 30, "every subscriber joined"):
            return
        # The servers' descriptors with no client: what they hold now (every publisher has
        # published and every node has read, so a cluster node's Redis connections are up),
        # less one for each of our clients, all still connected.
        for s in self.servers:
            ours = sum(1 for c in self.clients if c.server is s)
            s.base_fds = s.fds() - ours
        print(f"  {self.name}: {sum(len(g.subscribers) for g in self.groups)} healthy subscribers, "
              f"{sum(len(g.publishers) for g in self.groups)} publishers; load and faults for {self.seconds:.0f} s",
              flush=True)

        start = time.monotonic()
        end = start + self.seconds
        next_sample = start
        pubs = [p for g in self.groups for p in g.publishers]
        fault_at = {k: start for k in ("churn", "reset", "garbage", "halfclosed", "silent", "slow")}
        every = {"churn": 1 / 30, "reset": 1 / 6, "garbage": 1 / 3, "halfclosed": 1 / 2, "silent": 1, "slow": 1}
        if self.redis is not None:
            fault_at["redis"] = start + 10
            every["redis"] = 20
        slow = []
        while True:
            now = time.monotonic()
            if now >= end:
                break
            # Publish what is due.
            for p in pubs:
                due = int((now - start) * self.rate / len(p.checker_group.publishers))
                while p.seq < due:
                    n = rng.choice((16, 100, 1000, 2000, rng.randrange(16, 4000)))
                    p.send(encode(p.proto, publisher_message(p.pub, p.seq, n)))
                    p.seq += 1
            # Faults.
            for kind, at in fault_at.items():
                if now >= at:
                    fault_at[kind] = at + every[kind]
                    getattr(self, f"fault_{kind}")(now, slow)
            # Expiries and deadlines.
            for c in list(self.clients):
                if c.expire is not None and now >= c.expire:
                    c.expire = None
                    if c.role == "slow":
                        self.end_slow(c)
                    else:
                        c.close()
            self.check_watch(now)
            if now >= next_sample:
                next_sample += 0.5
                for s in self.servers:
                    r = s.rss_kib()
                    if r is not None:
                        self.rss[s.name].append((now - start, r))
                        if os.environ.get("SOAK_RSS"):
                            print(f"    {now - start:6.1f} s {s.name} {r} KiB", flush=True)
            self.keepalives(now)
            self.poll(0.005)

        # The end: every fault client goes, then end markers, then the order is compared.
        for c in list(self.clients):
            if c.role not in ("healthy", "publisher"):
                if c.role == "slow":
                    self.end_slow(c)
                elif c.deadline is not None and not c.closed:
                    # Still owed a close by the server: wait for it below.
                    continue
                else:
                    c.close()
        self.pump_until(lambda: (self.check_watch(time.monotonic()) or True) and not self.watch,
                        SIDE_TIMEOUT + CLOSE_GRACE + 2, "the server closing every bad client")
        for p in pubs:
            p.send(encode(p.proto, b"E:%d" % p.pub))
        self.pump_until(lambda: all(s.checker.final is not None for g in self.groups for s in g.subscribers),
                        30, "every healthy subscriber receiving every publisher's end marker")
        for g in self.groups:
            g.compare({p.pub: p.seq for p in g.publishers})
            g.published = sum(p.seq for p in g.publishers)
            g.count = [s.checker.count for s in g.subscribers][0] if g.subscribers else 0
        # Everyone goes.
        for c in list(self.clients):
            c.close()
        self.sel.close()

    def check_watch(self, now):
        keep = []
        for c in self.watch:
            if c.ended:
                c.close()
                continue
            if now > c.deadline:
                fail(f"{self.name}: a {c.role} client ({c.what}) on {c.proto}@{c.server.name} was not closed by the server within {c.allowed:.0f} s")
                c.close()
                continue
            keep.append(c)
        self.watch = keep

    def expect_close(self, c, ep, what, within, now):
        c.what, c.allowed = what, within
        c.deadline = now + within
        self.watch.append(c)

    def pick(self, protos=None):
        eps = [e for e in self.endpoints if protos is None or e.proto in protos]
        return self.rng.choice(eps)

    # Faults, one call each.

    def fault_churn(self, now, slow):
        ep = self.pick()
        c = Client(self, "churn", ep)
        if ep.proto == "ws":
            c.reading = True
        if self.rng.random() < 0.5:
            c.send(encode(ep.proto, b"C:churn %d" % self.rng.randrange(1 << 30)))
        c.expire = now + self.rng.uniform(0, 1.5)
        self.count("churn")

    def fault_reset(self, now, slow):
        ep = self.pick()
        c = Client(self, "reset", ep)
        whole = encode(ep.proto, b"R:" + bytes(self.rng.randrange(97, 123) for _ in range(self.rng.randrange(10, 3000))))
        part = whole[: self.rng.randrange(1, len(whole))]
        c.then = lambda: c.close(reset=True)
        c.send(part)  # WebSocket: after the upgrade request, so half a frame
        c.expire = now + 3  # if the bytes never go (cannot happen on loopback), still go
        self.count("resets mid-message")

    def fault_slow(self, now, slow):
        for ep in self.endpoints:
            live = [c for c in slow if c.addr == ep.addr and not c.closed]
            if len(live) < 2:
                c = Client(self, "slow", ep, rcvbuf=4096, read=False)
                if ep.proto == "frame":
                    c.next_keepalive = 0  # so that it is cut as slow, not as idle
                    self.frame_subs.append(c)
                c.expire = now + self.rng.uniform(8, 15)
                slow.append(c)
                self.count("slow consumers")
        slow[:] = [c for c in slow if not c.closed]

    def end_slow(self, c):
        """Was it cut? Read what is there (it is little: a 4 KiB buffer) to find the end."""
        if c.closed:
            return
        c.reading = True
        try:
            for _ in range(64):
                data = c.sock.recv(65536)
                if not data:
                    c.gone("eof")
                    return
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            c.gone("reset")
            return
        c.close()

    def fault_garbage(self, now, slow):
        ep = self.pick()
        rng = self.rng
        if ep.proto == "line":
            what = "a line over --max-message"
            data = b"G" * (MAX_MESSAGE + rng.randrange(1, 5000))
            within = CLOSE_GRACE
        elif ep.proto == "frame":
            kind = rng.randrange(2)
            if kind == 0:
                what, data = "a frame header over --max-message", struct.pack(">Q", MAX_MESSAGE + 1 + rng.randrange(1 << 40))
            else:
                what, data = "random bytes as a frame header", os.urandom(8)
                if struct.unpack(">Q", data)[0] <= MAX_MESSAGE:
                    data = b"\xff" + data[1:]
            within = CLOSE_GRACE
        else:
            kind = rng.randrange(6)
            within = CLOSE_GRACE + SIDE_TIMEOUT  # an answer (close frame, 400) waits for the client
            if kind == 0:
                what, data = "an unmasked frame", mask_frame(0x1, b"unmasked", mask=False)
            elif kind == 1:
                what, data = "a reserved opcode", mask_frame(0x3, b"reserved")
            elif kind == 2:
                what, data = "a frame over --max-message", mask_frame(0x2, b"", length=MAX_MESSAGE + 1)
            elif kind == 3:
                what, data = "invalid UTF-8 in a text frame", mask_frame(0x1, b"\xff\xfe\xfd")
            elif kind == 4:
                what, data = "a request that is not HTTP", b"\x16\x03\x01garbage\r\n\r\n"
            else:
                what, data = "a request head that never ends", b"GET /ws HTTP/1.1\r\n" + b"X: y\r\n" * 2000
            c = Client(self, "garbage", ep)
            if kind >= 4:
                c.out.clear()  # instead of the upgrade
            c.send(data)
            self.expect_close(c, ep, what, within, now)
            self.count("garbage")
            return
        c = Client(self, "garbage", ep)
        c.send(data)
        self.expect_close(c, ep, what, within, now)
        self.count("garbage")

    def fault_halfclosed(self, now, slow):
        ep = self.pick()
        c = Client(self, "halfclosed", ep)
        whole = encode(ep.proto, b"H:" + bytes(self.rng.randrange(97, 123) for _ in range(self.rng.randrange(10, 300))))
        if ep.proto == "ws":
            # A WebSocket client that stops sending without a close frame: the server is owed
            # nothing; it must notice the end of stream and close.
            part = whole[: self.rng.randrange(0, len(whole))]
        else:
            part = whole[: self.rng.randrange(1, len(whole) + 1)]

        def shut():
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        c.then = shut
        c.send(part)
        self.expect_close(c, ep, "a half-closed client", CLOSE_GRACE + 2, now)
        self.count("half-closed")

    def fault_redis(self, now, slow):
        """Redis drops every node's connections (CLIENT KILL): each node must reconnect, read on
        from its last entry and resend what was in flight, losing and repeating nothing."""
        try:
            with socket.create_connection(("127.0.0.1", self.redis.port), timeout=2) as r:
                r.sendall(b"CLIENT KILL TYPE normal SKIPME yes\r\n")
                answer = r.recv(64)
            if not answer.startswith(b":"):
                fail(f"{self.name}: CLIENT KILL answered {answer!r}")
            self.count("Redis connections killed", int(answer[1:].strip() or 0))
        except (OSError, ValueError) as e:
            fail(f"{self.name}: cannot reach Redis to kill its clients: {e}")

    def fault_silent(self, now, slow):
        ep = self.pick()
        c = Client(self, "silent", ep)
        if ep.proto == "ws":
            c.out.clear()  # not even a request
            self.expect_close(c, ep, "a connection that sends no request", SIDE_TIMEOUT + CLOSE_GRACE, now)
        elif ep.idle_timeout:
            self.expect_close(c, ep, "an idle client", ep.idle_timeout + CLOSE_GRACE, now)
        else:
            c.expire = now + self.rng.uniform(2, 8)
        self.count("silent")


def warm_up(seconds):
    """Seconds of load before RSS counts: a quarter of the run, at least 15 s (a server's RSS
    climbs for about that long while every kind of client has come and gone for the first
    times), at most half."""
    return min(max(0.25 * seconds, 15.0), 0.5 * seconds)


def median_window(samples, lo, hi):
    xs = [r for t, r in samples if lo <= t <= hi]
    return statistics.median(xs) if xs else None


def finish(soak):
    """Descriptors back to base, RSS, logs, exit status."""
    ok = True
    for s in soak.servers:
        deadline = time.monotonic() + 15
        while s.fds() is not None and s.fds() > s.base_fds and time.monotonic() < deadline:
            time.sleep(0.05)
        end_fds = s.fds()
        if end_fds is None or end_fds > s.base_fds:
            fail(f"{s.name}: {end_fds} open descriptors once every client had gone, {s.base_fds} before any came")
        samples = soak.rss[s.name]
        t = soak.seconds
        warm = warm_up(t)
        base = median_window(samples, warm, warm + 0.15 * t)
        last = median_window(samples, 0.85 * t, t)
        peak = max((r for _, r in samples), default=None)
        growth = (last - base) / base if base and last else 0
        print(f"  {s.name}: RSS after warm-up {base / 1024:.1f} MiB, at the end {last / 1024:.1f} MiB "
              f"({growth * 100:+.1f}%), peak {peak / 1024:.1f} MiB; descriptors {s.base_fds} before, {end_fds} after")
        if growth > 0.10:
            fail(f"{s.name}: RSS grew {growth * 100:.1f}% after warm-up ({base} KiB to {last} KiB)")
    for s in soak.servers:
        s.stop()
    for s in soak.servers:
        levels, reasons = s.scan_log()
        print(f"  {s.name}: log lines {levels}; disconnects {dict(sorted(reasons.items()))}")
    return ok


def run_single(args, logdir, seconds, rng):
    common = ["--threads", "2", "--max-pending", MAX_PENDING, "--max-message", str(MAX_MESSAGE)]
    a = Server(args.mob, "A", ["--protocol", "line", "--http", "127.0.0.1:0", *common], logdir)
    b = Server(args.mob, "B", ["--protocol", "frame", "--idle-timeout", str(IDLE_TIMEOUT), *common], logdir)
    ga, gb = Group("A"), Group("B")
    line, ws = Endpoint("line", a.addr, ga, a), Endpoint("ws", a.http, ga, a)
    frame = Endpoint("frame", b.addr, gb, b, IDLE_TIMEOUT)
    # A: one line and one WebSocket publisher; B: two frame publishers.
    return drive(Soak("single", [a, b], [line, ws, frame], [line, ws, frame, frame], [ga, gb],
                      seconds, args.rate, rng))


def run_cluster(args, logdir, seconds, rng):
    redis = Redis(logdir)
    try:
        url = f"redis://127.0.0.1:{redis.port}"
        common = ["--threads", "2", "--max-pending", MAX_PENDING, "--max-message", str(MAX_MESSAGE),
                  "--protocol", "line", "--http", "127.0.0.1:0", "--cluster", url,
                  "--cluster-channel", f"soak{os.getpid()}"]
        n1 = Server(args.mob, "node1", common, logdir)
        n2 = Server(args.mob, "node2", common, logdir)
        g = Group("cluster")
        eps = [Endpoint("line", n1.addr, g, n1), Endpoint("ws", n1.http, g, n1),
               Endpoint("line", n2.addr, g, n2), Endpoint("ws", n2.http, g, n2)]
        # A line publisher on one node, a WebSocket publisher on the other.
        soak = Soak("cluster", [n1, n2], eps, [eps[0], eps[3]], [g], seconds, args.rate, rng)
        soak.redis = redis
        for n in (n1, n2):
            # What killing its Redis connections makes a node say (naming Redis, not a client).
            n.expected_warnings = ("cluster: ", "retrying with backoff")
        return drive(soak)
    finally:
        redis.stop()


def drive(soak):
    before = len(failures)
    soak.run()
    finish(soak)
    for g in soak.groups:
        print(f"  {soak.name} {g.name}: {getattr(g, 'published', 0)} messages published, "
              f"{g.received} checked deliveries, {getattr(g, 'count', 0)} messages in each subscriber's order")
    print(f"  {soak.name} faults: {dict(sorted(soak.counts.items()))}")
    return len(failures) == before


def self_test():
    """The checks themselves must be able to fail: feed them what a broken server would send."""

    class Sub:
        def __init__(self, g, name):
            self.checker = Checker(name, g)
            g.subscribers.append(self)

    def run(name, streams, expect):
        g = Group("self-test")
        g.ends = {b"E:1", b"E:2"}
        before = len(failures)
        for i, stream in enumerate(streams):
            sub = Sub(g, f"sub{i}")
            for m in [b"S:1", b"C:before"] + stream + [b"E:1", b"E:2"]:
                sub.checker.feed(m)
        g.compare({1: 3, 2: 1})
        got = failures[before:]
        del failures[before:]
        for s in g.subscribers:
            if s.checker.broken:
                got.append("broken")
        if expect and not any(expect in f for f in got):
            raise SystemExit(f"self-test {name}: expected a failure with {expect!r}, got {got}")
        if not expect and got:
            raise SystemExit(f"self-test {name}: expected no failure, got {got}")

    global quiet
    quiet = True
    p = publisher_message
    good = [p(1, 0, 20), b"C:x", p(2, 0, 5), p(1, 1, 3000), p(1, 2, 16)]
    saved = len(failures)
    run("healthy", [good, list(good)], None)
    run("loss", [good, [m for m in good if m != p(1, 1, 3000)]], "lost")
    run("duplicate", [good, good[:4] + [p(1, 1, 3000)] + good[4:]], "duplicate")
    run("reorder", [good, [good[0], good[1], good[2], good[4], good[3]]], "lost")
    run("corrupt", [good, [good[0], good[1], good[2], p(1, 1, 3000)[:-1] + b"!", good[4]]], "corrupt")
    run("order", [good, [good[0], good[2], good[1], good[3], good[4]]], "disagree")
    run("end marker missing", [good, good[:-1]], "got to")
    # The log scan.
    with tempfile.TemporaryDirectory() as d:
        class Fake(Server):
            def __init__(self, text):
                self.name = "self-test"
                self.log_path = os.path.join(d, "log")
                with open(self.log_path, "w") as f:
                    f.write(text)
        for text, expect in [
            ('{"level":"WARN","message":"disconnected: reset","peer":"127.0.0.1:1"}\n', None),
            ('{"level":"WARN","message":"accept failed"}\n', "naming no client"),
            ('{"level":"ERROR","message":"x"}\n', "naming no client"),
            ("thread 'main' panicked at src/x.rs\n", "panic"),
        ]:
            Fake(text).scan_log()
            got = failures[saved:]
            del failures[saved:]
            if (expect is None) != (not got) or (expect and not any(expect in f for f in got)):
                raise SystemExit(f"self-test log scan {text.strip()!r}: got {got}")
    quiet = False
    print("self-test passed: loss, duplicates, reorders, corruption, diverging orders, missing "
          "ends and bad log lines are all caught", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mob", default="target/release/mob")
    ap.add_argument("--minutes", type=float, default=10, help="total time of both runs [default 10]")
    ap.add_argument("--rate", type=float, default=400, help="messages per second per group, all publishers [default 400]")
    ap.add_argument("--cluster", choices=("auto", "yes", "no"), default="auto",
                    help="the second run, two nodes over Redis: auto runs it when redis-server is installed")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--only", choices=("single", "cluster"), help="one of the two runs, with all the time")
    ap.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (printed where)")
    ap.add_argument("--self-test", action="store_true", help="only check that the checks fail on bad input")
    args = ap.parse_args()
    self_test()
    if args.self_test:
        return
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    cluster = args.cluster == "yes" or (args.cluster == "auto" and shutil.which("redis-server"))
    if args.cluster == "yes" and not shutil.which("redis-server"):
        raise SystemExit("--cluster yes: redis-server is not installed")
    total = args.minutes * 60
    runs = [("single", run_single)] + ([("cluster", run_cluster)] if cluster else [])
    if args.only:
        runs = [r for r in runs if r[0] == args.only] or [("cluster", run_cluster)]
    # Each run's own setup and end take a few seconds; the load gets the rest.
    per_run = max(10.0, total / len(runs) - 8)
    logdir = tempfile.mkdtemp(prefix="mob-soak-")
    print(f"soak: {len(runs)} run(s) of {per_run:.0f} s of load, seed {seed}, logs in {logdir}", flush=True)
    t0 = time.monotonic()
    for name, fn in runs:
        print(f"run {name}:", flush=True)
        fn(args, logdir, per_run, rng)
    took = time.monotonic() - t0
    if failures:
        print(f"soak FAILED ({len(failures)} problem(s), {took:.0f} s, seed {seed}); logs kept in {logdir}")
        for f in failures[:50]:
            print(f"  - {f}")
        sys.exit(1)
    print(f"soak passed ({took:.0f} s, seed {seed})")
    if not args.keep_logs:
        shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    main()
