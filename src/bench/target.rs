//! What the bench speaks to each kind of server: mob's three wire formats, Redis pub/sub (RESP),
//! NATS and WebSocket (any broadcast server, or mob's `/ws`). Pure code: bytes to send, and
//! items parsed off the front of what was received.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use bytes::{BufMut, BytesMut};

use super::payload::{self, Stamp};
use super::ws;
use crate::client::token;
use crate::protocol::{Protocol, FRAME_HEADER_LEN};

/// The channel (Redis) or subject (NATS) the bench publishes on.
const CHANNEL: &str = "mob";

/// The kind of server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    MobLine,
    MobFrame,
    MobRaw,
    Redis,
    Nats,
    /// Any WebSocket broadcast server: every message any client sends goes to every client.
    Ws,
    /// mob's WebSocket endpoint (`mob serve --http ADDR`, path `/ws`).
    MobWs,
}

/// One thing parsed from a server's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A relayed message; the range is its payload within the parsed bytes.
    Message(Range<usize>),
    /// The server confirmed a subscription (Redis `subscribe` reply, NATS `PONG` to our `PING`).
    Subscribed,
    /// The server answered the WebSocket upgrade: the connection may send now.
    Upgraded,
    /// NATS or a WebSocket server asks whether we are alive: answer with [`Target::pong`],
    /// echoing the range (the ping's payload; empty for NATS).
    Ping(Range<usize>),
    /// Anything else (greetings, publish acknowledgements).
    Other,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::MobLine,
        Target::MobFrame,
        Target::MobRaw,
        Target::Redis,
        Target::Nats,
        Target::Ws,
        Target::MobWs,
    ];

    /// The name `--target` takes.
    pub fn name(self) -> &'static str {
        match self {
            Target::MobLine => "mob-line",
            Target::MobFrame => "mob-frame",
            Target::MobRaw => "mob-raw",
            Target::Redis => "redis",
            Target::Nats => "nats",
            Target::Ws => "ws",
            Target::MobWs => "mob-ws",
        }
    }

    /// Where the server listens unless told otherwise.
    pub fn default_port(self) -> u16 {
        match self {
            Target::MobLine | Target::MobFrame | Target::MobRaw => 8000,
            Target::Redis => 6379,
            Target::Nats => 4222,
            Target::Ws | Target::MobWs => 8080,
        }
    }

    /// The WebSocket request path unless the address names one.
    pub fn default_path(self) -> &'static str {
        match self {
            Target::MobWs => "/ws",
            _ => "/",
        }
    }

    /// The server relays to every connection (mob, and WebSocket broadcast servers): there is
    /// no subscription to confirm, and publishers receive what others publish.
    pub fn relays_to_all(self) -> bool {
        !matches!(self, Target::Redis | Target::Nats)
    }

    /// Every subscriber sees every message in one order, whatever its publisher and whichever
    /// node it came through (mob, one node or a cluster): the bench compares the subscribers'
    /// orders. Redis and NATS promise order per publisher only, and `ws` is any server.
    pub fn promises_one_order(self) -> bool {
        matches!(
            self,
            Target::MobLine | Target::MobFrame | Target::MobRaw | Target::MobWs
        )
    }

    /// Every connection opens with an HTTP upgrade, and may send nothing else before the
    /// server's `101` ([`Item::Upgraded`]).
    pub fn is_websocket(self) -> bool {
        matches!(self, Target::Ws | Target::MobWs)
    }

    /// Bytes a subscriber sends once connected.
    pub fn subscribe(self, endpoint: &Endpoint, out: &mut BytesMut) {
        match self {
            Target::Redis => resp_command(out, &[b"SUBSCRIBE", CHANNEL.as_bytes()]),
            Target::Nats => {
                out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
                out.extend_from_slice(format!("SUB {CHANNEL} 1\r\nPING\r\n").as_bytes());
            }
            // Servers that relay to all: a subscriber opens like any connection.
            _ => self.greet(endpoint, out),
        }
    }

    /// mob's token (`serve --auth-token-file`) has a place in what this target sends: the
    /// first message on TCP, the request URL on WebSocket.
    pub fn takes_token(self) -> bool {
        !matches!(self, Target::Redis | Target::Nats)
    }

    /// The wire format of mob's TCP targets.
    fn protocol(self) -> Option<Protocol> {
        match self {
            Target::MobLine => Some(Protocol::Line),
            Target::MobFrame => Some(Protocol::Frame),
            Target::MobRaw => Some(Protocol::Raw),
            _ => None,
        }
    }

    /// Bytes a publisher sends once connected (a subscriber too, where all relay to all):
    /// the token first if there is one, the WebSocket upgrade.
    pub fn greet(self, endpoint: &Endpoint, out: &mut BytesMut) {
        match self {
            Target::Nats => {
                out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
            }
            Target::Ws | Target::MobWs => {
                let path = match &endpoint.token {
                    Some(t) => Cow::Owned(token::with_token(&endpoint.path, t)),
                    None => Cow::Borrowed(endpoint.path.as_str()),
                };
                ws::upgrade_request(&endpoint.authority, &path, out)
            }
            _ => {
                if let (Some(protocol), Some(t)) = (self.protocol(), &endpoint.token) {
                    out.extend_from_slice(&t.message(protocol));
                }
            }
        }
    }

    /// The answer to a ping (NATS `PING`, WebSocket ping frame) that carried `data`.
    pub fn pong(self, data: &[u8], out: &mut BytesMut) {
        match self {
            Target::Ws | Target::MobWs => ws::pong(data, out),
            _ => out.extend_from_slice(b"PONG\r\n"),
        }
    }

    /// Bytes to send before hanging up: a WebSocket close frame, nothing for the others.
    pub fn goodbye(self, out: &mut BytesMut) {
        if self.is_websocket() {
            ws::close(out);
        }
    }

    /// Appends one published message carrying `stamp`, its payload `size` bytes long.
    pub fn publish(self, stamp: Stamp, size: usize, out: &mut BytesMut) {
        match self {
            Target::MobLine | Target::MobRaw => {
                payload::write(stamp, size, out);
                out.put_u8(b'\n');
            }
            Target::MobFrame => {
                out.put_u64(size as u64);
                payload::write(stamp, size, out);
            }
            Target::Redis => {
                out.extend_from_slice(
                    format!(
                        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{CHANNEL}\r\n${size}\r\n",
                        CHANNEL.len()
                    )
                    .as_bytes(),
                );
                payload::write(stamp, size, out);
                out.extend_from_slice(b"\r\n");
            }
            Target::Nats => {
                out.extend_from_slice(format!("PUB {CHANNEL} {size}\r\n").as_bytes());
                payload::write(stamp, size, out);
                out.extend_from_slice(b"\r\n");
            }
            Target::Ws | Target::MobWs => {
                let seed = stamp.seq ^ u64::from(stamp.publisher) << 48;
                ws::message(size, ws::mask(seed), out, |out| {
                    payload::write(stamp, size, out)
                });
            }
        }
    }

    /// Parses the item at the front of `buf`: `Ok(Some((consumed, item)))`, `Ok(None)` when
    /// more bytes are needed, `Err` when the server sent an error or something unparseable.
    pub fn parse(self, buf: &[u8]) -> Result<Option<(usize, Item)>, String> {
        match self {
            Target::MobLine | Target::MobRaw => {
                Ok(memchr::memchr(b'\n', buf).map(|i| (i + 1, Item::Message(0..i))))
            }
            Target::MobFrame => {
                const H: usize = FRAME_HEADER_LEN;
                let Some(header) = buf.get(..H) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(header.try_into().expect("a frame header"));
                let len = usize::try_from(len).map_err(|_| format!("frame of {len} bytes"))?;
                Ok((buf.len() - H >= len).then(|| (H + len, Item::Message(H..H + len))))
            }
            Target::Redis => parse_resp(buf),
            Target::Nats => parse_nats(buf),
            Target::Ws | Target::MobWs => ws::parse(buf),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                format!(
                    "unknown target {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the server is: what to connect to and, for WebSocket, what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` as given: resolved and connected to, and the WebSocket `Host` header.
    pub authority: String,
    /// The WebSocket request path (unused by the other targets).
    pub path: String,
    /// mob's token, sent first (or in the WebSocket URL).
    pub token: Option<crate::auth::Token>,
}

impl Endpoint {
    /// Reads `host:port`; for a WebSocket target also `ws://host:port/path` (`wss://` with
    /// `tls`) or `host:port/path` (the path defaults to the target's).
    pub fn parse(addr: &str, target: Target, tls: bool) -> Result<Endpoint, String> {
        let rest = match addr.split_once("://") {
            None => addr,
            Some(("ws", rest)) if target.is_websocket() => rest,
            Some(("wss", rest)) if target.is_websocket() => {
                if !tls {
                    return Err(format!("{addr}: wss:// needs --tls (or --ca)"));
                }
                rest
            }
            Some(_) => {
                return Err(format!(
                    "{addr}: --target {target} takes host:port{}",
                    if target.is_websocket() {
                        " or ws://host:port/path"
                    } else {
                        ""
                    }
                ))
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(_) if !target.is_websocket() => {
                return Err(format!(
                    "{addr}: --target {target} takes host:port, without a path"
                ))
            }
            Some(i) => rest.split_at(i),
            None => (rest, target.default_path()),
        };
        Ok(Endpoint {
            authority: authority.to_string(),
            path: path.to_string(),
            token: None,
        })
    }
}

fn resp_command(out: &mut BytesMut, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// The line at the front of `buf` (without `\r\n`) and the bytes it spans.
fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    // Both protocols end every line with \r\n and never put a bare \n inside one.
    let i = memchr::memchr(b'\n', buf)?;
    let line = buf[..i].strip_suffix(b"\r")?;
    Some((line, i + 1))
}

fn number(digits: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(digits)))
}

/// A RESP value: a pub/sub push (`*3` of bulk strings / an integer), a publish reply
/// (`:N`), `+OK`, or an error.
fn parse_resp(buf: &[u8]) -> Result<Option<(usize, Item)>, String> {
    let Some((first, mut at)) = line(buf) else {
        return Ok(None);
    };
    match first.first() {
        Some(b':') | Some(b'+') => return Ok(Some((at, Item::Other))),
        Some(b'-') => return Err(String::from_utf8_lossy(&first[1..]).into_owned()),
        Some(b'*') => {}
        _ => {
            return Err(format!(
                "unexpected RESP {:?}",
                String::from_utf8_lossy(first)
            ))
        }
    }
    let count = number(&first[1..])?;
    // A push has three parts; only those are looked at, so no allocation per message.
    let mut parts: [Range<usize>; 3] = [0..0, 0..0, 0..0];
    for k in 0..usize::try_from(count).unwrap_or(0) {
        let Some((head, n)) = line(&buf[at..]) else {
            return Ok(None);
        };
        let part = match head.first() {
            Some(b'$') => {
                let len = usize::try_from(number(&head[1..])?).map_err(|e| e.to_string())?;
                let start = at + n;
                if buf.len() < start + len + 2 {
                    return Ok(None);
                }
                at = start + len + 2;
                start..start + len
            }
            Some(b':') => {
                let digits = at + 1..at + n - 2;
                at += n;
                digits
            }
            _ => {
                return Err(format!(
                    "unexpected RESP {:?}",
                    String::from_utf8_lossy(head)
                ))
            }
        };
        if let Some(slot) = parts.get_mut(k) {
            *slot = part;
        }
    }
    let item = match (&buf[parts[0].clone()], count) {
        (b"message", 3) => Item::Message(parts[2].clone()),
        (b"subscribe", _) => Item::Subscribed,
        _ => Item::Other,
    };
    Ok(Some((at, item)))
}

/// A NATS protocol operation: `MSG`, `PING`, `PONG`, `+OK`, `INFO`, or `-ERR`.
fn parse_nats(buf: &[u8]) -> Result<Option<(usize, Item)>, String> {
    let Some((op, n)) = line(buf) else {
        return Ok(None);
    };
    if let Some(args) = op.strip_prefix(b"MSG ") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        let len_field = args.rsplit(|&b| b == b' ').next().unwrap_or_default();
        let len = usize::try_from(number(len_field)?).map_err(|e| e.to_string())?;
        if buf.len() < n + len + 2 {
            return Ok(None);
        }
        return Ok(Some((n + len + 2, Item::Message(n..n + len))));
    }
    let item = match op {
        b"PING" => Item::Ping(0..0),
        b"PONG" => Item::Subscribed,
        _ if op.starts_with(b"-ERR") => return Err(String::from_utf8_lossy(op).into_owned()),
        _ => Item::Other,
    };
    Ok(Some((n, item)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            publisher: 3,
            seq: 42,
            sent_ns: 7,
        }
    }

    #[test]
    fn mob_formats_parse_what_they_publish() {
        for t in [Target::MobLine, Target::MobFrame, Target::MobRaw] {
            let mut out = BytesMut::new();
            t.publish(stamp(), 40, &mut out);
            let (used, item) = t.parse(&out).unwrap().unwrap();
            assert_eq!(used, out.len());
            let Item::Message(r) = item else {
                panic!("{item:?}")
            };
            assert_eq!(payload::read(&out[r]), Some(stamp()));
            assert_eq!(t.parse(&out[..out.len() - 1]).unwrap(), None, "{t}");
        }
    }

    #[test]
    fn redis_pushes_and_replies_parse() {
        let push = b"*3\r\n$7\r\nmessage\r\n$3\r\nmob\r\n$5\r\nhello\r\n";
        let (used, item) = parse_resp(push).unwrap().unwrap();
        assert_eq!(used, push.len());
        assert_eq!(item, Item::Message(push.len() - 7..push.len() - 2));
        assert_eq!(parse_resp(&push[..push.len() - 1]).unwrap(), None);
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$3\r\nmob\r\n:1\r\n";
        assert_eq!(
            parse_resp(sub).unwrap(),
            Some((sub.len(), Item::Subscribed))
        );
        assert_eq!(parse_resp(b":12\r\n").unwrap(), Some((5, Item::Other)));
        assert!(parse_resp(b"-ERR wrong\r\n").unwrap_err().contains("wrong"));
    }

    #[test]
    fn nats_operations_parse() {
        let msg = b"MSG mob 1 5\r\nhello\r\nPING\r\n";
        assert_eq!(parse_nats(msg).unwrap(), Some((20, Item::Message(13..18))));
        assert_eq!(parse_nats(&msg[20..]).unwrap(), Some((6, Item::Ping(0..0))));
        assert_eq!(parse_nats(b"MSG mob 1 5\r\nhel").unwrap(), None);
        assert_eq!(
            parse_nats(b"PONG\r\n").unwrap(),
            Some((6, Item::Subscribed))
        );
        assert_eq!(parse_nats(b"INFO {}\r\n").unwrap(), Some((9, Item::Other)));
        assert!(parse_nats(b"-ERR 'Slow Consumer'\r\n").is_err());
    }

    #[test]
    fn redis_and_nats_publish_well_formed_commands() {
        let mut out = BytesMut::new();
        Target::Redis.publish(stamp(), 32, &mut out);
        assert!(out.starts_with(b"*3\r\n$7\r\nPUBLISH\r\n$3\r\nmob\r\n$32\r\n"));
        assert!(out.ends_with(b"\r\n"));
        let mut out = BytesMut::new();
        Target::Nats.publish(stamp(), 32, &mut out);
        assert!(out.starts_with(b"PUB mob 32\r\n"));
        assert_eq!(out.len(), 12 + 32 + 2);
    }

    #[test]
    fn websocket_targets_read_back_what_they_publish() {
        use crate::ws::frame::{data_opcode, server_header, Decoder, Received};
        for t in [Target::Ws, Target::MobWs] {
            let mut out = BytesMut::new();
            t.publish(stamp(), 40, &mut out);
            let Ok(Some(Received::Message { text, payload })) = Decoder::new(1024).decode(&mut out)
            else {
                panic!("{t}: not one message")
            };
            // What the server relays: the same payload, unmasked.
            let (header, used) = server_header(data_opcode(text), payload.len());
            let mut relayed = header[..used].to_vec();
            relayed.extend_from_slice(&payload);
            let (n, item) = t.parse(&relayed).unwrap().unwrap();
            assert_eq!(n, relayed.len());
            let Item::Message(r) = item else {
                panic!("{item:?}")
            };
            assert_eq!(payload::read(&relayed[r]), Some(stamp()));
        }
    }

    #[test]
    fn endpoints_take_a_path_only_for_websocket() {
        let at =
            |addr: &str, t: Target| Endpoint::parse(addr, t, true).map(|e| (e.authority, e.path));
        let ok = |host: &str, path: &str| Ok((host.to_string(), path.to_string()));
        assert_eq!(at("127.0.0.1:8080", Target::Ws), ok("127.0.0.1:8080", "/"));
        assert_eq!(
            at("127.0.0.1:8080", Target::MobWs),
            ok("127.0.0.1:8080", "/ws")
        );
        assert_eq!(at("ws://h:1/chat?x=1", Target::Ws), ok("h:1", "/chat?x=1"));
        assert_eq!(at("ws://h:1", Target::MobWs), ok("h:1", "/ws"));
        assert_eq!(at("h:1/", Target::MobWs), ok("h:1", "/"));
        assert_eq!(at("h:6379", Target::Redis), ok("h:6379", "/"));
        assert_eq!(at("wss://h:1/x", Target::Ws), ok("h:1", "/x"));
        assert!(Endpoint::parse("wss://h:1/", Target::Ws, false)
            .unwrap_err()
            .contains("--tls"));
        assert!(at("http://h:1/", Target::Ws).is_err());
        assert!(at("ws://h:1/", Target::Nats).is_err());
        assert!(at("h:1/x", Target::MobLine).unwrap_err().contains("path"));
    }

    #[test]
    fn every_connection_sends_the_token_first_where_mob_wants_it() {
        let greeting = |t: Target, token: Option<&str>| {
            let mut at = Endpoint::parse("h:1", t, false).unwrap();
            at.token = token.map(|t| crate::auth::Token::new(t.as_bytes()).unwrap());
            let mut out = BytesMut::new();
            t.greet(&at, &mut out);
            // Subscribers of servers that relay to all open the same way.
            let mut sub = BytesMut::new();
            t.subscribe(&at, &mut sub);
            assert_eq!(out, sub, "{t}");
            String::from_utf8_lossy(&out).into_owned()
        };
        assert_eq!(greeting(Target::MobLine, Some("tok")), "tok\n");
        assert_eq!(greeting(Target::MobRaw, Some("tok")), "tok\n");
        assert_eq!(
            greeting(Target::MobFrame, Some("tok")),
            "\0\0\0\0\0\0\0\x03tok"
        );
        assert_eq!(greeting(Target::MobLine, None), "");
        assert!(
            greeting(Target::MobWs, Some("a b")).starts_with("GET /ws?token=a%20b HTTP/1.1\r\n")
        );
        assert!(greeting(Target::Ws, None).starts_with("GET / HTTP/1.1\r\n"));
        assert!(!Target::Redis.takes_token() && !Target::Nats.takes_token());
    }

    #[test]
    fn targets_parse_by_name() {
        for t in Target::ALL {
            assert_eq!(t.to_string().parse::<Target>(), Ok(t));
        }
        assert!("kafka".parse::<Target>().is_err());
    }
}
