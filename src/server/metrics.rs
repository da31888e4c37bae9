//! `--metrics ADDR`: what the loops count, published for a scrape, and the endpoint that
//! serves it (`GET /metrics` in the OpenMetrics text format, `GET /healthz`).
//!
//! Counting costs the data path nothing shared: each loop keeps plain counters (`Stats`, the
//! fan-out's bytes sent) and copies them into its [`Published`] slot, a few relaxed stores, at
//! most every [`PUBLISH_EVERY`] and only when they changed. A scrape folds the slots of all
//! loops. The endpoint runs on a thread of its own with its own small mio poll: it is for an
//! operator's scraper, not for clients, and never touches a loop.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use slab::Slab;
use tracing::{debug, warn};

use super::board::Board;

/// How often a loop may publish its counters: values are at most this old (plus the time to
/// its next turn when it was idle).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// Reasons a connection ends, as `mob_disconnects_total{reason=...}` names them (the
/// `DisconnectReason::kind`s).
pub const REASONS: [&str; 7] = [
    "closed",
    "reset",
    "protocol",
    "slow_consumer",
    "idle",
    "shutdown",
    "auth",
];

/// One loop's counters as last published (relaxed: each value is read whole, and a scrape may
/// see one loop's slot a moment older than another's).
#[derive(Debug, Default)]
pub struct Published {
    accepted: AtomicU64,
    rejected: AtomicU64,
    messages: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    dropped: AtomicU64,
    log_bytes: AtomicU64,
    disconnects: [AtomicU64; REASONS.len()],
}

/// The values a loop publishes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub accepted: u64,
    pub rejected: u64,
    /// Messages this loop took into its log: every message relayed (each loop sees all).
    pub messages: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub dropped: u64,
    /// What the loop's log (and rendition) hold, as `--max-pending` counts it.
    pub log_bytes: u64,
    pub disconnects: [u64; REASONS.len()],
}

impl Counts {
    /// Adds one disconnect of `kind` (a `DisconnectReason::kind`).
    pub fn disconnected(&mut self, kind: &str) {
        if let Some(i) = REASONS.iter().position(|r| *r == kind) {
            self.disconnects[i] += 1;
        }
    }
}

impl Published {
    pub fn store(&self, c: &Counts) {
        let r = Ordering::Relaxed;
        self.accepted.store(c.accepted, r);
        self.rejected.store(c.rejected, r);
        self.messages.store(c.messages, r);
        self.bytes_in.store(c.bytes_in, r);
        self.bytes_out.store(c.bytes_out, r);
        self.dropped.store(c.dropped, r);
        self.log_bytes.store(c.log_bytes, r);
        for (slot, n) in self.disconnects.iter().zip(c.disconnects) {
            slot.store(n, r);
        }
    }

    fn load(&self) -> Counts {
        let r = Ordering::Relaxed;
        Counts {
            accepted: self.accepted.load(r),
            rejected: self.rejected.load(r),
            messages: self.messages.load(r),
            bytes_in: self.bytes_in.load(r),
            bytes_out: self.bytes_out.load(r),
            dropped: self.dropped.load(r),
            log_bytes: self.log_bytes.load(r),
            disconnects: std::array::from_fn(|i| self.disconnects[i].load(r)),
        }
    }
}

/// The OpenMetrics text of all loops' published counters, and the open connections.
pub fn render(loops: &[Published], open: usize, cluster_up: Option<bool>) -> String {
    let mut all = Counts::default();
    for slot in loops {
        let c = slot.load();
        all.accepted += c.accepted;
        all.rejected += c.rejected;
        // Every loop takes in every message: the count is the furthest along.
        all.messages = all.messages.max(c.messages);
        all.bytes_in += c.bytes_in;
        all.bytes_out += c.bytes_out;
        all.dropped += c.dropped;
        // Each loop holds its own log (sharing the messages' bytes) and rendition.
        all.log_bytes += c.log_bytes;
        for (sum, n) in all.disconnects.iter_mut().zip(c.disconnects) {
            *sum += n;
        }
    }
    let mut registry = Registry::default();
    let gauge = |v: u64| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    let counter = |v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        c
    };
    registry.register(
        "mob_connections",
        "Open client connections (TCP, WebSocket and HTTP)",
        gauge(open as u64),
    );
    registry.register(
        "mob_connections_accepted",
        "Connections accepted and served",
        counter(all.accepted),
    );
    registry.register(
        "mob_connections_rejected",
        "Connections closed at once because --max-connections were open",
        counter(all.rejected),
    );
    registry.register(
        "mob_messages_received",
        "Messages relayed (given a place in the order)",
        counter(all.messages),
    );
    registry.register(
        "mob_bytes_received",
        "Bytes read from clients",
        counter(all.bytes_in),
    );
    registry.register(
        "mob_bytes_sent",
        "Bytes written to clients",
        counter(all.bytes_out),
    );
    let disconnects = Family::<Vec<(String, String)>, Counter>::default();
    for (reason, n) in REASONS.iter().zip(all.disconnects) {
        disconnects
            .get_or_create(&vec![("reason".to_owned(), (*reason).to_owned())])
            .inc_by(n);
    }
    registry.register(
        "mob_disconnects",
        "Connections closed, by reason",
        disconnects,
    );
    registry.register(
        "mob_dropped_messages",
        "Messages skipped for slow consumers under --slow-consumer drop",
        counter(all.dropped),
    );
    registry.register(
        "mob_log_bytes",
        "Bytes the loops' logs hold for receivers that are behind, as --max-pending counts them",
        gauge(all.log_bytes),
    );
    if let Some(up) = cluster_up {
        registry.register(
            "mob_cluster_up",
            "1 while this node reaches the cluster's Redis (publishing and reading), else 0",
            gauge(u64::from(up)),
        );
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

const LISTENER: Token = Token(usize::MAX);
const STOP: Token = Token(usize::MAX - 1);

/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a scraper has, from its connect, to send its request and read the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Scrapes served at once; a connection past this closes the oldest.
const MAX_SCRAPES: usize = 16;

/// One scrape: the request head so far, then the answer being written.
struct Scrape {
    stream: mio::net::TcpStream,
    deadline: Instant,
    head: Vec<u8>,
    answer: Option<(Vec<u8>, usize)>,
}

/// Stops a running [`Endpoint`] from another thread.
pub struct Stop {
    flag: Arc<AtomicBool>,
    waker: Waker,
}

impl Stop {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Relaxed);
        // A failed wake leaves the endpoint to notice at its next event; it is never needed
        // for the server to exit (the thread is not waited for long).
        let _ = self.waker.wake();
    }
}

/// The endpoint: a listener and the scrapes under way, on a poll of their own. Never blocks
/// on a scraper: reads and writes are non-blocking and each scrape has a deadline.
pub struct Endpoint {
    poll: Poll,
    listener: TcpListener,
    board: Arc<Board>,
    stop: Arc<AtomicBool>,
    scrapes: Slab<Scrape>,
}

impl Endpoint {
    pub fn new(mut listener: TcpListener, board: Arc<Board>) -> io::Result<(Endpoint, Stop)> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), STOP)?;
        let flag = Arc::new(AtomicBool::new(false));
        let endpoint = Endpoint {
            poll,
            listener,
            board,
            stop: Arc::clone(&flag),
            scrapes: Slab::new(),
        };
        Ok((endpoint, Stop { flag, waker }))
    }

    /// Serves scrapes until stopped. Sleeps without a timeout while none is under way.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        let mut accept_errors = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let timeout = self
                .scrapes
                .iter()
                .map(|(_, s)| s.deadline.saturating_duration_since(now))
                .min();
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(&mut accept_errors),
                    STOP => {}
                    Token(key) => self.serve(key),
                }
            }
            let now = Instant::now();
            let late: Vec<usize> = self
                .scrapes
                .iter()
                .filter(|(_, s)| s.deadline <= now)
                .map(|(key, _)| key)
                .collect();
            for key in late {
                self.close(key);
            }
        }
        Ok(())
    }

    fn accept(&mut self, errors: &mut u64) {
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Once, then every thousandth: a scraper that cannot connect is worth a
                    // line, a flood of them is not worth a thousand.
                    if *errors % 1000 == 0 {
                        warn!("metrics: accept failed: {e}");
                    }
                    *errors += 1;
                    return;
                }
            };
            if self.scrapes.len() >= MAX_SCRAPES {
                // The oldest makes room: a crowd of silent connections cannot lock scrapes out.
                let oldest = self
                    .scrapes
                    .iter()
                    .min_by_key(|(_, s)| s.deadline)
                    .map(|(key, _)| key);
                if let Some(key) = oldest {
                    self.close(key);
                }
            }
            let entry = self.scrapes.vacant_entry();
            let key = entry.key();
            let registered = self.poll.registry().register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            );
            if let Err(e) = registered {
                debug!(peer = %peer, "metrics: cannot register: {e}");
                continue;
            }
            entry.insert(Scrape {
                stream,
                deadline: Instant::now() + SCRAPE_TIMEOUT,
                head: Vec::new(),
                answer: None,
            });
            // Whatever arrived with the connect.
            self.serve(key);
        }
    }

    /// Reads the request head, then writes the answer, as far as the socket allows.
    fn serve(&mut self, key: usize) {
        let Some(scrape) = self.scrapes.get_mut(key) else {
            return;
        };
        let done = match step(scrape, &self.board) {
            Ok(done) => done,
            Err(e) => {
                debug!("metrics: {e}");
                true
            }
        };
        if done {
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut scrape) = self.scrapes.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut scrape.stream);
        }
    }
}

/// Advances one scrape; true once it is over (answered, or not worth answering).
fn step(scrape: &mut Scrape, board: &Board) -> io::Result<bool> {
    while scrape.answer.is_none() {
        let mut buf = [0u8; 1024];
        match scrape.stream.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                scrape.head.extend_from_slice(&buf[..n]);
                if scrape.head.windows(4).any(|w| w == b"\r\n\r\n") {
                    scrape.answer = Some((answer(&scrape.head, board), 0));
                    scrape.head = Vec::new();
                } else if scrape.head.len() > MAX_HEAD {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let Some((bytes, written)) = &mut scrape.answer else {
        return Ok(false);
    };
    while *written < bytes.len() {
        match scrape.stream.write(&bytes[*written..]) {
            Ok(0) => return Ok(true),
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The answer to a request head.
fn answer(head: &[u8], board: &Board) -> Vec<u8> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let path = match req.parse(head) {
        Ok(_) if req.method == Some("GET") => req.path.unwrap_or(""),
        _ => "",
    };
    let (status, kind, body) = match path.split('?').next().unwrap_or("") {
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(
                board.published(),
                board.open(),
                board.cluster.get().map(|h| h.up()),
            ),
        ),
        "/healthz" => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_owned()),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try GET /metrics or /healthz\n".to_owned(),
        ),
    };
    crate::ws::handshake::response(status, kind, body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_folded_into_one_exposition() {
        let loops = [Published::default(), Published::default()];
        let mut a = Counts {
            accepted: 3,
            messages: 10,
            bytes_in: 100,
            bytes_out: 1000,
            log_bytes: 7,
            ..Counts::default()
        };
        a.disconnected("protocol");
        a.disconnected("closed");
        loops[0].store(&a);
        let mut b = Counts {
            accepted: 2,
            messages: 12,
            bytes_in: 50,
            bytes_out: 500,
            log_bytes: 5,
            ..Counts::default()
        };
        b.disconnected("protocol");
        loops[1].store(&b);
        let text = render(&loops, 4, None);
        for line in [
            "mob_connections 4",
            "mob_connections_accepted_total 5",
            "mob_messages_received_total 12",
            "mob_bytes_received_total 150",
            "mob_bytes_sent_total 1500",
            "mob_disconnects_total{reason=\"protocol\"} 2",
            "mob_disconnects_total{reason=\"closed\"} 1",
            "mob_disconnects_total{reason=\"auth\"} 0",
            "mob_log_bytes 12",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
