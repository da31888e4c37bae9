#!/usr/bin/env python3
"""Writes the hand-made seed inputs of each fuzz target into fuzz/corpus/<target>/.

Each target reads a few knob bytes first (see src/fuzzing.rs), then the input proper.
Run from the repository root: python3 fuzz/seeds/make_seeds.py
"""
import hashlib, os, struct

def frame(p): return struct.pack(">Q", len(p)) + p

def ws(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04", masked=True, rsv=0):
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126: head = bytes([b0, (0x80 if masked else 0) | n])
    elif n < 65536: head = bytes([b0, (0x80 if masked else 0) | 126]) + struct.pack(">H", n)
    else: head = bytes([b0, (0x80 if masked else 0) | 127]) + struct.pack(">Q", n)
    if not masked: return head + payload
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
def req(target=b"/ws", extra=b"", method=b"GET"):
    return (method + b" " + target + b" HTTP/1.1\r\nHost: mob.example:8080\r\n"
            b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY + b"\r\n" + extra + b"\r\n")

EXAMPLE = open(os.path.join("dist", "mob.toml"), "rb").read()
def uncommented(text):
    return b"".join(l[2:] if l.startswith(b"# ") and b" = " in l else l
                    for l in text.splitlines(keepends=True))

seeds = {
    "line_frame": [
        b"\x00\xff\x03\x05" + b"hello\nworld\n\npartial",
        b"\x00\x04\x01\x02" + b"ab\nabcdef\n",
        b"\x00\xff\x01\x01" + b"a\r\n\xff\x00\n",
        b"\x01\xff\x03\x09" + frame(b"hello") + frame(b"") + frame(b"world") + b"\x00\x00",
        b"\x01\x04\x08\x01" + frame(b"ok") + frame(b"toolong"),
        b"\x01\xff\x02\x07" + frame(b"a" * 40) + frame(b"b\nc"),
        b"\x02\x05\x01\x01" + b"abcdefghijk",
    ],
    "ws_frame": [
        b"\x00\x40\x00\x03" + ws(1, b"hello"),
        b"\x00\x40\x00\x09" + ws(1, b"hel", fin=False) + ws(9, b"hi") + ws(0, "l\u00f6".encode()),
        b"\x00\x40\x00\x02" + ws(2, b"\x00\xff", fin=False) + ws(0, b"\x01", fin=False) + ws(0, b""),
        b"\x00\x40\x00\x05" + ws(10, b"") + ws(8, struct.pack(">H", 1000) + b"bye"),
        b"\x00\x40\x00\x01" + ws(1, b"unmasked", masked=False),
        b"\x04\x00\x00\x40" + ws(2, b"x" * 300),
        b"\x00\x10\x00\x00" + ws(2, b"x" * 300),
        b"\x00\x40\x00\x04" + ws(1, b"\xc3", fin=False) + ws(0, b"\x28"),
        b"\x00\x40\x00\x04" + ws(8, struct.pack(">H", 1005)),
        b"\x00\x40\x00\x04" + ws(1, b"rsv", rsv=0x40),
        b"\x00\x40\x00\x04" + ws(0, b"orphan"),
        b"\x00\x40\x00\x04" + ws(9, b"p" * 126),
    ],
    "http_head": [
        b"\x00" + req(),
        b"\x01" + req(b"/ws?token=s3cret%2F%2B+x"),
        b"\x01" + req(extra=b"Authorization: Bearer s3cret/+ x\r\n"),
        b"\x01" + req(extra=b"Authorization: Bearer wrong\r\n"),
        b"\x04" + req(extra=b"Origin: https://a.example\r\n"),
        b"\x00" + req(extra=b"Origin: http://evil.example\r\n"),
        b"\x00" + req(extra=b"Origin: http://mob.example:8080\r\n") + ws(1, b"early"),
        b"\x00GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00POST /ws HTTP/1.1\r\n\r\n",
        b"\x00GET /nope HTTP/1.1\r\n\r\n",
        b"\x00GET /ws HTT",
        b"\x00GET\x00/ HTTP/1.1\r\n\r\n",
    ],
    "auth": [
        b"\x00\x0a" + b"s3cret/+ x" + b"s3cret/+ x\n",
        b"\x01\x0a" + b"s3cret/+ x" + frame(b"s3cret/+ x"),
        b"\x02\x03" + b"abc" + b"abc\nmore",
        b"\x00\x03" + b"abc" + b"ab\n",
        b"\x01\x03" + b"abc" + frame(b"abcd"),
        b"\x00\x04" + b"t\xc3\xa9k" + b"/ws?x=1&token=t%C3%A9k",
        b"\x00\x05" + b"token" + b"/ws?token=a+b%2Bc&token=x",
        b"\x00\x02" + b"\x01x" + b"Bearer x",
    ],
    # The example file, it with every line uncommented, and the kinds of value a file can hold.
    "config_file": [EXAMPLE, uncommented(EXAMPLE)] + [s.encode() for s in [
        'max-message = "16"\nno-echo-self = false\n',
        'no-echo-self = true\nidle-timeout = 0.5\n',
        'no-echo-self = ""\nlisten = ""\n',
        'max-pendign = "8MiB"\n',
        'threads = -1\nhistory = 9223372036854775807\n',
        'threads = 2.0\n',
        'threads = [1, 2]\n',
        'threads = \n',
        'idle-timeout = inf\nshutdown-timeout = -0.0\n',
        'idle-timeout = 1e300\nshutdown-timeout = nan\n',
        'idle-timeout = { a = 1 }\n',
        'listen = 1979-05-27T07:32:00Z\n',
        'allowed-origin = ["https://a.example", "*", 7, true, "-x", "a=b"]\n',
        'allowed-origin = []\nallowed-origin-x = 1\n',
        'allowed-origin = [[1]]\n',
        '"max-message" = \'64KiB\'\nlog-format = "json"\n',
        'tls-cert = "/c.pem"\n',
        'cluster = "redis://:p@h:1/"\ncluster-keep = 0x10\n',
        'protocol = """\nline"""\nslow-consumer = "drop\\u0000"\n',
        'config = "x"\nhelp = true\n',
        '[serve]\nthreads = 1\n',
        'metrics = "127.0.0.1:0" # comment\n\u00e9 = 1\n',
    ]],
    "sizes": [s.encode() for s in [
        "4096", "64KiB", "8 mib", "1G", "2KB", "1GiB", "99999999999GiB", "12parsecs", "",
        "0.5", "30", "1e7", "31536000", "3e-9", "-1", "NaN", "line", "frame", "raw", "drop",
        "disconnect", " 7 kb ",
    ]],
}

for target, inputs in seeds.items():
    d = os.path.join("fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    for data in inputs:
        with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
            f.write(data)
