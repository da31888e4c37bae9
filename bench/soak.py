#!/usr/bin/env python3
"""Soak mob with faults: a steady broadcast checked message by message while clients misbehave.

Called by bench/soak.sh (which builds the binary first); docs/SOAK.md says what runs, what
fails it and what the last run found. Loopback only; every phase has a deadline; every process
it starts is stopped by its PID when it ends, however it ends (and killed with it if it dies).

Run 1 ("single"): two servers, `mob serve --threads 2 --log-format json`, A with `--protocol
line --http` (line and WebSocket clients on one broadcast), B with `--protocol frame
--idle-timeout 6`. Run 2 ("cluster", when redis-server is installed): a redis-server on a unix
socket and two nodes `--protocol line --http --cluster redis+unix://...`; every 20 s Redis
drops every node's connections.

Healthy subscribers check every publisher's message on arrival (sequence, exact bytes), every
other client's message that left it whole exactly once and no part of one, and at the end that
all of a broadcast's subscribers received the same messages in the same order. Meanwhile:
churn, resets mid-message, slow consumers, garbage (each with the answer it must get), half-
closed and silent peers. It fails on any loss, repeat, reorder or corruption; a client the
server does not close by its deadline or a slow consumer it does not cut; RSS after warm-up
growing more than 10%; descriptors not back to their baseline; a panic or a WARN/ERROR line
that names no client; a server that crashes or does not exit 0 on SIGTERM.
"""

import argparse
import atexit
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
IDLE_TIMEOUT = 6  # server B; longer than CLOSE_GRACE, so no bad client is closed as merely idle
KEEPALIVE = 0.3  # seconds between a frame client's keepalives
SIDE_TIMEOUT = 10  # mob's HTTP request head deadline (src/server/web.rs)
CLOSE_GRACE = 3  # seconds on top of a server deadline before we call it a failure


def tcp_wmem_max():
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


# A client that has not read while this much was published must have been cut: --max-pending,
# what the kernel buffers for it on the server's side, and 2 MiB to spare.
SLOW_CUT_BY = (1 << 20) + tcp_wmem_max() + (2 << 20)
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
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     preexec_fn=die_with_parent)
        started.append(self)
        self.redis_drops = False  # the cluster run's Redis drops make expected warnings
        self.reconnects = 0
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
        """Counts log lines by level; fails on panics and WARN/ERROR lines that name no peer.
        Returns the counts, the disconnects by reason and the connections served (from the
        server's last line)."""
        levels = {}
        reasons = {}
        served = None
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
                if self.redis_drops and msg.startswith("cluster: ") and " gets through " in msg:
                    self.reconnects += 1
                if (self.redis_drops and level == "WARN" and msg.startswith("cluster: ")
                        and "retrying with backoff" in msg
                        and any(why in msg for why in REDIS_DROPPED)):
                    continue  # what a Redis drop makes a node say (it names Redis)
                if level in ("WARN", "ERROR") and "peer" not in line:
                    fail(f"{self.name}: {level} line naming no client: {msg[:300]}")
                if msg.startswith("stopped: "):
                    try:
                        served = int(msg.split()[1])
                        reasons = json.loads(msg.split("disconnects ", 1)[1])
                    except (ValueError, IndexError):
                        fail(f"{self.name}: cannot read its last line: {msg[:200]}")
        return levels, reasons, served


started = []  # every server and Redis, stopped by PID at exit whatever happens


def die_with_parent():
    """In the child before exec: killed if this script dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def stop_all():
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


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


# How the redis crate reports a connection Redis closed (CLIENT KILL).
REDIS_DROPPED = ("unexpected end of file", "Connection reset", "Broken pipe", "broken pipe",
                 "connection reset")


def hostport(text):
    host, port = text.rsplit(":", 1)
    return (host.strip("[]"), int(port))


class Redis:
    """A redis-server of our own on a unix socket in the run's directory (no port to race
    another process for)."""

    def __init__(self, logdir):
        self.path = os.path.join(logdir, "redis.sock")
        self.log = open(os.path.join(logdir, "redis.log"), "wb")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", self.path, "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no"],
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        started.append(self)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(1)
                    s.connect(self.path)
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
                    pass  # the server's close frame: its end of stream follows
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

    def __init__(self, name, group, joiner=False):
        self.name = name
        self.group = group
        self.joiner = joiner  # a churn client: each publisher's sequence may start anywhere
        self.next = {}
        self.synced = joiner
        self.digest = None
        self.count = 0
        self.ends = set()
        self.final = None
        self.broken = False
        self.churn = {}  # churn message id -> times received
        self.tails = {}  # half-closed client id -> payloads received

    def feed(self, payload):
        if payload.startswith(b"S:"):
            self.synced = True
            return
        if not self.synced:
            return
        if self.final is not None:
            # Nothing of a publisher's may come after its end marker.
            if payload.startswith(b"P"):
                self.problem(f"a publisher's message after the end markers: {payload[:40]!r}")
            return
        if payload.startswith(b"P"):
            self.check(payload)
            if self.digest is None and not self.joiner:
                self.digest = hashlib.blake2b(digest_size=16)
        elif payload.startswith(b"C:"):
            self.churn[payload] = self.churn.get(payload, 0) + 1
        elif payload.startswith(b"H:"):
            key = payload.split(b".", 1)[0]
            self.tails.setdefault(key, []).append(payload)
        elif payload.startswith(b"R:"):
            self.problem(f"part of a message whose sender reset was relayed: {payload[:40]!r}")
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
        expect = self.next.get(pub, seq if self.joiner else 0)
        if rest != body(pub, seq, n):
            self.problem(f"corrupt payload: publisher {pub} message {seq}")
        elif seq != expect:
            what = "lost" if seq > expect else "duplicate or reordered"
            self.problem(f"{what}: publisher {pub} message {seq}, expected {expect}")
        self.next[pub] = seq + 1 if seq >= expect else expect
        if not self.joiner:
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

        self.churn_sent = set()  # churn messages that left their sender before it closed
        self.tails_due = {}  # half-closed client id -> the payload it must be delivered as
        self.tails_never = set()  # half-closed client ids whose part is no whole message
        self.bytes = 0  # payload bytes published

    def compare(self, sent):
        """At the end: every subscriber got every publisher's last message, every other
        client's message that left it whole exactly once and no part of one, and all of them
        the same messages in the same order."""
        finals = {}
        for s in self.subscribers:
            c = s.checker
            finals.setdefault(c.final, []).append(c.name)
            for pub, n in sent.items():
                if c.next.get(pub, 0) != n:
                    fail(f"{self.name} {c.name}: publisher {pub} sent {n} messages, "
                         f"it got to {c.next.get(pub, 0)}")
            missing = self.churn_sent - set(c.churn)
            twice = [m for m, k in c.churn.items() if k > 1]
            stray = set(c.churn) - self.churn_sent
            if missing or twice or stray:
                fail(f"{self.name} {c.name}: other clients' messages: {len(missing)} of "
                     f"{len(self.churn_sent)} missing, {len(twice)} twice, {len(stray)} never sent "
                     f"whole (e.g. {sorted(missing | set(twice) | stray)[:3]})")
            for key, want in self.tails_due.items():
                got = c.tails.get(key, [])
                if got != [want]:
                    fail(f"{self.name} {c.name}: a half-closed client's last line {key!r} came as "
                         f"{[g[:30] for g in got]}, expected it once, whole")
                    break
            for key in self.tails_never:
                if key in c.tails:
                    fail(f"{self.name} {c.name}: part of a message from a half-closed client was "
                         f"relayed: {c.tails[key][0][:40]!r}")
                    break
            unknown = set(c.tails) - set(self.tails_due) - self.tails_never
            if unknown:
                fail(f"{self.name} {c.name}: messages from half-closed clients never sent: {sorted(unknown)[:3]}")
        if len(finals) > 1:
            fail(f"{self.name}: subscribers disagree on what they received, in order: "
                 + "; ".join(f"{k}: {v}" for k, v in finals.items()))


# ---------------------------------------------------------------------------------------------
# Clients


class Client:
    """A non-blocking client socket in one role."""

    def __init__(self, soak, role, ep, rcvbuf=None, read=True):
        self.soak, self.role, self.proto, self.addr = soak, role, ep.proto, ep.addr
        self.ep, self.server, self.group = ep, ep.server, ep.group
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setblocking(False)
        self.out = bytearray()
        self.dec = Decoder(ep.proto)
        self.connected = False
        self.closed = False  # by us
        self.ended = None  # the server's end: "eof" or "reset"
        self.reading = read
        self.checker = None
        self.deadline = None  # by when the server must have closed it
        self.expire = None  # when we act (close, half-close, drain)
        self.then = None  # what to do once what is queued has gone
        self.on_upgrade = None  # what to do once a WebSocket upgrade is answered
        self.decode = role in ("healthy", "publisher", "churn", "reset")
        self.raw = None  # garbage clients keep the server's answer here
        self.registered = False
        soak.opened[ep.server.name] = soak.opened.get(ep.server.name, 0) + 1
        err = self.sock.connect_ex(ep.addr)
        if err not in (0, 115):  # EINPROGRESS
            fail(f"{soak.name}: a {role} client could not connect to {ep}: {os.strerror(err)}")
            self.sock.close()
            self.closed = True
            return
        if ep.proto == "ws":
            self.out += ws_request(*ep.addr)
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
                fail(f"{self.soak.name}: a {self.role} client could not connect to {self.ep}: {os.strerror(err)}")
                self.close()
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
            if self.raw is not None:
                if len(self.raw) < 65536:
                    self.raw += data[:65536]
                self.soak.check_answer(self)
            if self.decode:
                try:
                    messages = self.dec.feed(data)
                except ValueError as e:
                    fail(f"{self.soak.name}: a {self.role} client on {self.ep}: bad bytes from the server: {e}")
                    self.close()
                    return
                if self.checker is not None:
                    for m in messages:
                        self.checker.feed(m)
                if self.dec.pongs:
                    self.send(b"".join(self.dec.pongs))
                    self.dec.pongs.clear()
                if self.on_upgrade and self.dec.upgraded:
                    then, self.on_upgrade = self.on_upgrade, None
                    then()

    def half_close(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

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
    def __init__(self, proto, addr, group, server, idle_timeout=None, settle=0):
        self.proto, self.addr, self.group, self.server = proto, addr, group, server
        self.idle_timeout = idle_timeout
        # How long a client that half-closes may wait for its own last messages (a cluster
        # node sends them once they come back from Redis, which a Redis drop delays).
        self.settle = settle

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
        self.opened = {}  # server name -> connections opened to it
        self.ids = 0
        self.frame_subs = []  # clients that send frame keepalives
        self.crashed = False

    def count(self, what, n=1):
        self.counts[what] = self.counts.get(what, 0) + n

    def next_id(self):
        self.ids += 1
        return self.ids

    def on_server_end(self, c):
        if c.closed:
            return
        if c.role in ("healthy", "publisher"):
            fail(f"{self.name}: a {c.role} on {c.ep} was cut off by the server: {c.ended}")
        elif c.role == "churn" and c.deadline is None:
            fail(f"{self.name}: a churn client on {c.ep} was cut off by the server before it "
                 f"half-closed: {c.ended}")
        elif c.deadline is not None:
            if getattr(c, "answer", None) is not None and not c.answer_seen:
                fail(f"{self.name}: {c.what} on {c.ep}: closed ({c.ended}) without the answer "
                     f"it is owed ({c.answer}); it got {bytes(c.raw[:60])!r}")
            self.count(f"{c.role} closed by the server")
        elif c.role == "slow":
            self.count("slow consumers cut")

    def poll(self, timeout):
        for key, mask in self.sel.select(timeout):
            key.data.on_event(mask)

    def pump_until(self, done, seconds, what):
        deadline = time.monotonic() + seconds
        while not done():
            now = time.monotonic()
            if now > deadline:
                fail(f"{self.name}: {what} not within {seconds} s")
                return False
            self.poll(0.02)
            self.keepalives(now)
            self.trickle(now)
            self.check_watch(now)
        return True

    def keepalives(self, now):
        for c in self.frame_subs:
            if now >= c.next_keepalive:
                c.send(struct.pack(">Q", 0))
                c.next_keepalive = now + KEEPALIVE

    def crashed_servers(self):
        dead = [s for s in self.servers if s.proc.poll() is not None]
        for s in dead:
            fail(f"{self.name}: server {s.name} exited during the run, status {s.proc.returncode}")
        return dead

    def run(self):
        rng = self.rng
        # Healthy subscribers and publishers first.
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
                # A publisher reads (and drops) what it is sent, or it would be a slow consumer.
                c = Client(self, "publisher", ep)
                c.pub = len(g.publishers) + 1000 * self.groups.index(g)
                c.seq = 0
                g.publishers.append(c)
                g.ends.add(b"E:%d" % c.pub)
                if ep.proto == "frame":
                    c.next_keepalive = 0
                    self.frame_subs.append(c)
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
            return False
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
        every = {"churn": 1 / 30, "reset": 1 / 6, "garbage": 1 / 3, "halfclosed": 1 / 2, "silent": 1, "slow": 1}
        if self.redis is not None:
            every["redis"] = 20
        fault_at = {k: start + (10 if k == "redis" else 0) for k in every}
        while True:
            now = time.monotonic()
            if now >= end:
                break
            # Publish what is due.
            for g in self.groups:
                for p in g.publishers:
                    due = int((now - start) * self.rate / len(g.publishers))
                    while p.seq < due:
                        n = rng.choice((16, 100, 1000, 2000, rng.randrange(16, 4000)))
                        p.send(encode(p.proto, publisher_message(p.pub, p.seq, n)))
                        g.bytes += n
                        p.seq += 1
            # Faults.
            for kind, at in fault_at.items():
                if now >= at:
                    fault_at[kind] = at + every[kind]
                    getattr(self, f"fault_{kind}")(now)
            # Expiries and deadlines.
            for c in list(self.clients):
                if c.expire is not None and now >= c.expire:
                    c.expire = None
                    self.expired(c, now)
            self.check_watch(now)
            if now >= next_sample:
                next_sample += 0.5
                if self.crashed_servers():
                    self.crashed = True
                    break
                for s in self.servers:
                    r = s.rss_kib()
                    if r is not None:
                        self.rss[s.name].append((now - start, r))
                        if os.environ.get("SOAK_RSS"):
                            print(f"    {now - start:6.1f} s {s.name} {r} KiB", flush=True)
            self.keepalives(now)
            self.trickle(now)
            self.poll(0.005)
        if self.crashed:
            return False

        # The end: every fault client goes (those owed a close by the server, or on their way
        # out, are waited for), then end markers, then the order is compared.
        now = time.monotonic()
        for c in list(self.clients):
            if c.role in ("healthy", "publisher") or c.deadline is not None:
                continue
            if c.role in ("churn", "slow"):
                self.expired(c, now)
            else:
                c.close()
        self.pump_until(lambda: not self.watch and not self.draining, SIDE_TIMEOUT + CLOSE_GRACE + 15,
                        "the server closing every client it owed a close")
        for p in pubs:
            p.send(encode(p.proto, b"E:%d" % p.pub))
        self.pump_until(lambda: all(s.checker.final is not None for g in self.groups for s in g.subscribers),
                        30, "every healthy subscriber receiving every publisher's end marker")
        # Anything of a publisher's after its end marker would be a repeat: listen a little more.
        self.listen(1.5)
        for g in self.groups:
            g.compare({p.pub: p.seq for p in g.publishers})
            g.published = sum(p.seq for p in g.publishers)
            g.count = [s.checker.count for s in g.subscribers][0] if g.subscribers else 0
        # Everyone goes.
        for c in list(self.clients):
            c.close()
        self.sel.close()
        return True

    def listen(self, seconds):
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.poll(0.02)
            self.keepalives(time.monotonic())

    def expired(self, c, now):
        if c.role == "churn":
            # Leave as a well-behaved client does: stop sending, read to the end. What it sent
            # must reach everyone; the server must then close it.
            if not c.connected:
                c.close()
                return
            sent = c.then  # its message's bookkeeping, if it has not left yet

            def leave():
                if sent:
                    sent()
                c.half_close()

            c.then = leave
            c.flush()
            self.expect_close(c, "a churn client that half-closed", CLOSE_GRACE + c.ep.settle, now)
        elif c.role == "slow":
            # Was it cut? Read to the end: a cut one ends at once (its 4 KiB buffer).
            c.reading = True
            c.started_draining = now
            c.drain_until = now + 5
            c.update()
            self.draining.append(c)
        else:
            c.close()

    def check_watch(self, now):
        keep = []
        for c in self.watch:
            if c.closed:
                continue
            if now > c.deadline:
                fail(f"{self.name}: a {c.role} client ({c.what}) on {c.ep} was not closed by the server within {c.allowed:.0f} s")
                c.close()
                continue
            keep.append(c)
        self.watch = keep
        still = []
        for c in self.draining:
            if c.closed:
                continue
            if now > c.drain_until:
                behind = c.group.bytes - c.bytes_at_start
                if behind > SLOW_CUT_BY:
                    fail(f"{self.name}: a client on {c.ep} that did not read while {behind >> 20} MiB "
                         f"was published (more than --max-pending and the kernel's buffers) was not cut")
                else:
                    self.count("slow consumers not far enough behind to be cut")
                c.close()
                continue
            still.append(c)
        self.draining = still

    def expect_close(self, c, what, within, now):
        c.what, c.allowed = what, within
        c.deadline = now + within
        self.watch.append(c)

    def pick(self, protos=None):
        eps = [e for e in self.endpoints if protos is None or e.proto in protos]
        return self.rng.choice(eps)

    # Faults, one call each.

    def fault_churn(self, now):
        ep = self.pick()
        c = Client(self, "churn", ep)
        if c.closed:
            return
        c.checker = Checker(f"churn client on {ep}", ep.group, joiner=True)
        if self.rng.random() < 0.5:
            msg = b"C:%d" % self.next_id()
            c.then = lambda: ep.group.churn_sent.add(msg)
            c.send(encode(ep.proto, msg))
        c.expire = now + self.rng.uniform(0, 1.5)
        self.count("churn")

    def fault_reset(self, now):
        ep = self.pick()
        c = Client(self, "reset", ep)
        if c.closed:
            return
        whole = encode(ep.proto, b"R:" + bytes(self.rng.randrange(97, 123) for _ in range(self.rng.randrange(10, 3000))))
        part = whole[: self.rng.randrange(1, len(whole))]

        def go():
            c.then = lambda: c.close(reset=True)
            c.send(part)

        if ep.proto == "ws":
            c.on_upgrade = go  # half a frame once the upgrade is answered, then the reset
        else:
            go()
        c.expire = now + 5  # if the upgrade never comes (a failure the healthy clients show)
        self.count("resets mid-message")

    def fault_slow(self, now):
        for ep in self.endpoints:
            live = [c for c in self.slow if c.ep is ep and not c.closed]
            if len(live) < 2:
                c = Client(self, "slow", ep, rcvbuf=4096, read=False)
                if c.closed:
                    continue
                if ep.proto == "frame":
                    c.next_keepalive = 0  # so that it is cut as slow, not as idle
                    self.frame_subs.append(c)
                c.bytes_at_start = ep.group.bytes
                c.expire = now + self.rng.uniform(15, 25)
                self.slow.append(c)
                self.count("slow consumers")
        self.slow[:] = [c for c in self.slow if not c.closed]

    def fault_garbage(self, now):
        ep = self.pick()
        rng = self.rng
        answer = None
        if ep.proto == "line":
            what = "a line over --max-message"
            data = b"G" * (MAX_MESSAGE + rng.randrange(1, 5000))
        elif ep.proto == "frame":
            if rng.randrange(2) == 0:
                what, data = "a frame header over --max-message", struct.pack(">Q", MAX_MESSAGE + 1 + rng.randrange(1 << 40))
            else:
                what, data = "random bytes as a frame header", os.urandom(8)
                if struct.unpack(">Q", data)[0] <= MAX_MESSAGE:
                    data = b"\xff" + data[1:]
        else:
            kind = rng.randrange(7)
            if kind == 0:
                what, data, answer = "an unmasked frame", mask_frame(0x1, b"unmasked", mask=False), 1002
            elif kind == 1:
                what, data, answer = "a reserved opcode", mask_frame(0x3, b"reserved"), 1002
            elif kind == 2:
                what, data, answer = "a frame over --max-message", mask_frame(0x2, b"", length=MAX_MESSAGE + 1), 1009
            elif kind == 3:
                what, data, answer = "invalid UTF-8 in a text frame", mask_frame(0x1, b"\xff\xfe\xfd"), 1007
            elif kind == 4:
                what, data, answer = "a request that is not HTTP", b"\x16\x03\x01garbage\r\n\r\n", 400
            elif kind == 5:
                what, data, answer = "a request head over 8 KiB", b"GET /ws HTTP/1.1\r\nX: " + b"y" * 9000, 400
            else:
                what, data, answer = "a request head sent a byte a second", b"G", None
        c = Client(self, "garbage", ep)
        if c.closed:
            return
        if ep.proto == "ws":
            if answer is None or answer == 400:
                c.out.clear()  # instead of the upgrade
            if answer is None:
                c.trickle = b"ET /ws HTTP/1.1\r\nHost: x\r\n"
                c.next_trickle = now + 1
                self.trickling.append(c)
            c.raw = bytearray()
            c.answer = answer
            c.answer_seen = False
            # The server answers and ends its side at once (shut_write), so the client sees
            # the end of stream and goes; how long the server waits for a client that never
            # closes its side is not tested here.
            within = SIDE_TIMEOUT + CLOSE_GRACE
        else:
            within = CLOSE_GRACE
        c.send(data)
        self.expect_close(c, what, within, now)
        self.count("garbage")

    def check_answer(self, c):
        """A WebSocket garbage client's answer from the server: the right close code or 400."""
        if c.answer is None or c.answer_seen:
            return
        raw = bytes(c.raw)
        if c.answer == 400:
            if b"\r\n" not in raw:
                return
            status = raw.split(b"\r\n", 1)[0]
            if not status.startswith(b"HTTP/1.1 400"):
                fail(f"{self.name}: {c.what} on {c.ep} was answered {status[:60]!r}, expected 400")
        else:
            end = raw.find(b"\r\n\r\n")
            if end < 0 or len(raw) < end + 4 + 4:
                return
            if not raw.startswith(b"HTTP/1.1 101"):
                fail(f"{self.name}: the upgrade before {c.what} on {c.ep} was answered {raw[:40]!r}")
            # Broadcast messages may come first (it was a client until its bad frame was read).
            pos = end + 4
            while True:
                if len(raw) - pos < 2:
                    return
                b0, n = raw[pos], raw[pos + 1] & 0x7F
                head = 2 + (2 if n == 126 else 8 if n == 127 else 0)
                if len(raw) - pos < head:
                    return
                if n >= 126:
                    n = int.from_bytes(raw[pos + 2: pos + head], "big")
                if len(raw) - pos < head + n:
                    if len(raw) >= 65536:
                        fail(f"{self.name}: {c.what} on {c.ep}: no close frame in the first 64 KiB")
                        break
                    return
                if b0 & 0x0F == 0x8:
                    code = struct.unpack(">H", raw[pos + head: pos + head + 2])[0] if n >= 2 else None
                    if code != c.answer:
                        fail(f"{self.name}: {c.what} on {c.ep}: close code {code}, expected {c.answer}")
                    break
                pos += head + n
        c.answer_seen = True
        self.count("garbage answered as expected")

    def trickle(self, now):
        for c in self.trickling:
            if not c.closed and now >= c.next_trickle and c.trickle:
                c.send(c.trickle[:1])
                c.trickle = c.trickle[1:]
                c.next_trickle = now + 1
        self.trickling[:] = [c for c in self.trickling if not c.closed]

    def fault_halfclosed(self, now):
        ep = self.pick()
        c = Client(self, "halfclosed", ep)
        if c.closed:
            return
        key = b"H:%d" % self.next_id()
        prefix = key + b"."
        whole = encode(ep.proto, prefix + bytes(self.rng.randrange(97, 123) for _ in range(self.rng.randrange(10, 300))))
        if ep.proto == "line":
            # A line, whole or not: delivered as a line either way (the last line at EOF).
            part = whole[: self.rng.randrange(len(prefix), len(whole) + 1)]
            ep.group.tails_due[key] = part.rstrip(b"\n")
        elif ep.proto == "frame":
            # Whole frames are delivered, part of one never (the sender is cut).
            part = whole if self.rng.random() < 0.5 else whole[: self.rng.randrange(1, len(whole))]
            if part == whole:
                ep.group.tails_due[key] = whole[8:]
            else:
                ep.group.tails_never.add(key)
        else:
            # Part of a WebSocket frame, then the end of stream with no close frame.
            part = whole[: self.rng.randrange(0, len(whole))]
            ep.group.tails_never.add(key)
        c.then = c.half_close
        c.send(part)
        self.expect_close(c, "a half-closed client", CLOSE_GRACE + ep.settle, now)
        self.count("half-closed")

    def fault_redis(self, now):
        """Redis drops every node's connections (CLIENT KILL): each node must reconnect, read on
        from its last entry and resend what was in flight, losing and repeating nothing."""
        try:
            with socket.socket(socket.AF_UNIX) as r:
                r.settimeout(2)
                r.connect(self.redis.path)
                r.sendall(b"CLIENT KILL TYPE normal SKIPME yes\r\n")
                answer = r.recv(64)
            killed = int(answer[1:].strip()) if answer.startswith(b":") else -1
        except (OSError, ValueError) as e:
            fail(f"{self.name}: cannot reach Redis to kill its clients: {e}")
            return
        if killed < 1:
            fail(f"{self.name}: CLIENT KILL answered {answer!r}: no node connection was dropped")
        self.count("Redis drops")
        self.count("Redis connections dropped", max(killed, 0))

    def fault_silent(self, now):
        ep = self.pick()
        c = Client(self, "silent", ep)
        if c.closed:
            return
        if ep.proto == "ws":
            c.out.clear()  # not even a request
            self.expect_close(c, "a connection that sends no request", SIDE_TIMEOUT + CLOSE_GRACE, now)
        elif ep.idle_timeout:
            self.expect_close(c, "an idle client", ep.idle_timeout + CLOSE_GRACE, now)
        else:
            c.expire = now + self.rng.uniform(2, 8)
        self.count("silent")


def warm_up(seconds):
    """Seconds of load before RSS counts: a quarter of the run, at least 20 s, at most half.
    RSS climbs until every kind of client has come and gone, and until the first slow
    consumers have filled what the kernel buffers for them and then --max-pending (about 15 s
    at the default rate): the allocator keeps some of that high-water mark."""
    return min(max(0.25 * seconds, 20.0), 0.5 * seconds)


def window_floor(samples, lo, hi):
    """The lowest RSS in a window: what the server holds between the bursts of slow consumers'
    backlogs (each may hold --max-pending for a few seconds), which a leak would raise."""
    xs = [r for t, r in samples if lo <= t <= hi]
    return min(xs) if xs else None


def finish(soak, completed):
    """Descriptors back to base, RSS, logs, exit status."""
    for s in soak.servers:
        if s.proc.poll() is not None or getattr(s, "base_fds", None) is None:
            continue
        deadline = time.monotonic() + 15
        while (s.fds() or 0) > s.base_fds and time.monotonic() < deadline:
            time.sleep(0.05)
        end_fds = s.fds()
        if end_fds is None or end_fds > s.base_fds:
            fail(f"{s.name}: {end_fds} open descriptors once every client had gone, {s.base_fds} before any came")
        if not completed:
            continue
        samples = soak.rss[s.name]
        t = soak.seconds
        warm = warm_up(t)
        base = window_floor(samples, warm, warm + 0.2 * t)
        last = window_floor(samples, 0.8 * t, t)
        peak = max((r for _, r in samples), default=0)
        if not base or not last:
            fail(f"{s.name}: too few RSS samples")
            continue
        growth = (last - base) / base
        print(f"  {s.name}: RSS after warm-up {base / 1024:.1f} MiB, at the end {last / 1024:.1f} MiB "
              f"({growth * 100:+.1f}%; the lowest of each window), peak {peak / 1024:.1f} MiB; "
              f"descriptors {s.base_fds} before, {end_fds} after")
        if growth > 0.10:
            fail(f"{s.name}: RSS grew {growth * 100:.1f}% after warm-up ({base} KiB to {last} KiB)")
    for s in soak.servers:
        s.stop()
    for s in soak.servers:
        levels, reasons, served = s.scan_log()
        print(f"  {s.name}: log lines {levels}; disconnects logged {dict(sorted(reasons.items()))}")
        if completed and served is not None and served != soak.opened.get(s.name, 0):
            fail(f"{s.name}: served {served} connections, the soak opened {soak.opened.get(s.name, 0)}")


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
    url = f"redis+unix://{redis.path}"
    common = ["--threads", "2", "--max-pending", MAX_PENDING, "--max-message", str(MAX_MESSAGE),
              "--protocol", "line", "--http", "127.0.0.1:0", "--cluster", url,
              "--cluster-channel", "soak"]
    n1 = Server(args.mob, "node1", common, logdir)
    n2 = Server(args.mob, "node2", common, logdir)
    g = Group("cluster")
    settle = 12  # a node settles a closing client's messages within 10 s
    eps = [Endpoint("line", n1.addr, g, n1, settle=settle), Endpoint("ws", n1.http, g, n1, settle=settle),
           Endpoint("line", n2.addr, g, n2, settle=settle), Endpoint("ws", n2.http, g, n2, settle=settle)]
    # A line publisher on one node, a WebSocket publisher on the other.
    soak = Soak("cluster", [n1, n2], eps, [eps[0], eps[3]], [g], seconds, args.rate, rng)
    soak.redis = redis
    for n in (n1, n2):
        n.redis_drops = True
    try:
        ok = drive(soak)
    finally:
        redis.stop()
    for n in (n1, n2):
        drops = soak.counts.get("Redis drops", 0)
        if n.reconnects < drops:
            fail(f"{n.name}: {drops} Redis drops, but it logged getting through again only {n.reconnects} times")
    return ok


def drive(soak):
    before = len(failures)
    soak.slow, soak.draining, soak.trickling = [], [], []
    completed = False
    try:
        completed = soak.run()
    finally:
        finish(soak, completed)
    for g in soak.groups:
        print(f"  {soak.name} {g.name}: {getattr(g, 'published', 0)} messages published, "
              f"{g.received} checked deliveries, {getattr(g, 'count', 0)} messages in each subscriber's order, "
              f"{len(g.churn_sent)} other clients' messages and {len(g.tails_due)} half-closed clients' last "
              f"lines delivered to each, {len(g.tails_never)} parts never")
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
        g.churn_sent = {b"C:before", b"C:x"}
        g.tails_due = {b"H:1": b"H:1.abc"}
        g.tails_never = {b"H:2"}
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
    good = [p(1, 0, 20), b"C:x", p(2, 0, 5), b"H:1.abc", p(1, 1, 3000), p(1, 2, 16)]
    saved = len(failures)
    run("healthy", [good, list(good)], None)
    run("loss", [good, [m for m in good if m != p(1, 1, 3000)]], "lost")
    run("duplicate", [good, good[:5] + [p(1, 1, 3000)] + good[5:]], "duplicate")
    run("reorder", [good, good[:4] + [good[5], good[4]]], "lost")
    run("corrupt", [good, good[:4] + [p(1, 1, 3000)[:-1] + b"!", good[5]]], "corrupt")
    run("order", [good, [good[0], good[2], good[1]] + good[3:]], "disagree")
    run("end marker missing", [good, good[:-1]], "got to")
    run("other client's message lost", [good, [m for m in good if m != b"C:x"]], "missing")
    run("other client's message twice", [good, good + [b"C:x"]], "twice")
    run("reset client's part relayed", [good, good[:2] + [b"R:part"] + good[2:]], "reset")
    run("half-closed client's line lost", [good, [m for m in good if m != b"H:1.abc"]], "last line")
    run("half-closed client's part relayed", [good, good + [b"H:2.ab"]], "part of a message")
    # A WebSocket garbage client closed without the close frame or 400 it is owed.
    class Quiet:
        name = "self-test"
        count = Soak.count
        counts = {}

    up = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
    relayed = b"\x81\x05hello"  # a broadcast message before the close frame
    for answer, got, expect in [
        (400, b"", "without the answer"),
        (400, b"HTTP/1.1 4", "without the answer"),
        (400, b"HTTP/1.1 200 OK\r\n", "expected 400"),
        (400, b"HTTP/1.1 400 Bad Request\r\n", None),
        (1002, up + relayed + b"\x88\x02\x03\xea", None),
        (1002, up + relayed + b"\x88\x02\x03\xe8", "close code 1000"),
        (1007, up + b"\x88\x02\x03", "without the answer"),
        (1009, up + relayed, "without the answer"),
    ]:
        c = type("C", (), {})()
        c.closed, c.role, c.deadline, c.ended, c.ep = False, "garbage", 1.0, "eof", "ws@x"
        c.what, c.answer, c.answer_seen, c.raw = "a bad frame", answer, False, bytearray(got)
        if got:
            Soak.check_answer(Quiet(), c)
        Soak.on_server_end(Quiet(), c)
        found = failures[saved:]
        del failures[saved:]
        if (expect is None) != (not found) or (expect and not any(expect in f for f in found)):
            raise SystemExit(f"self-test: garbage client owed {answer} that got {got!r}: {found}")
    g = Group("self-test")
    g.ends = {b"E:1"}
    late = Checker("late", g)
    for m in [b"S:1", p(1, 0, 20), b"E:1", p(1, 0, 20)]:
        late.feed(m)
    if not late.broken:
        raise SystemExit("self-test: a publisher's message after the end markers went unseen")
    del failures[saved:]
    # The log scan.
    with tempfile.TemporaryDirectory() as d:
        class Fake(Server):
            def __init__(self, text):
                self.name = "self-test"
                self.redis_drops = True
                self.reconnects = 0
                self.log_path = os.path.join(d, "log")
                with open(self.log_path, "w") as f:
                    f.write(text)
        for text, expect in [
            ('{"level":"WARN","message":"disconnected: reset","peer":"127.0.0.1:1"}\n', None),
            ('{"level":"WARN","message":"accept failed"}\n', "naming no client"),
            ('{"level":"ERROR","message":"x"}\n', "naming no client"),
            ("thread 'main' panicked at src/x.rs\n", "panic"),
            ('{"level":"WARN","message":"cluster: reader reading from redis://x failed: '
             'unexpected end of file; retrying with backoff (clients wait)"}\n', None),
            ('{"level":"WARN","message":"cluster: gap: 3 entries of node 1 were trimmed"}\n',
             "naming no client"),
        ]:
            Fake(text).scan_log()
            got = failures[saved:]
            del failures[saved:]
            if (expect is None) != (not got) or (expect and not any(expect in f for f in got)):
                raise SystemExit(f"self-test log scan {text.strip()!r}: got {got}")
    quiet = False
    print("self-test passed: loss, duplicates, reorders, corruption, diverging orders, missing "
          "ends, other clients' messages lost, repeated or relayed in part, a bad client closed "
          "without its answer, and bad log lines are all caught", flush=True)


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
    atexit.register(stop_all)
    # SIGTERM (timeout, CI) ends the run like ^C: through the finally blocks and stop_all.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    self_test()
    if args.self_test:
        return
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    have_redis = shutil.which("redis-server") is not None
    if (args.cluster == "yes" or args.only == "cluster") and not have_redis:
        raise SystemExit("the cluster run needs redis-server, which is not installed")
    if args.cluster == "auto" and not have_redis and args.only is None:
        print("soak: redis-server is not installed: the cluster run is skipped", flush=True)
    runs = [("single", run_single)]
    if args.cluster == "yes" or (args.cluster == "auto" and have_redis):
        runs.append(("cluster", run_cluster))
    if args.only:
        runs = [r for r in (("single", run_single), ("cluster", run_cluster)) if r[0] == args.only]
    # Each run's start and end (joining, then waiting out the last bad clients' deadlines and
    # the end markers) take about 20 s; the load gets the rest.
    per_run = max(20.0, args.minutes * 60 / len(runs) - 20)
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
