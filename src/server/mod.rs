//! The event loop: one `mio::Poll`, a listener, a slab of connections and one shared log.
//!
//! Each turn of the loop: poll; accept; read queued connections into the log (bounded per
//! connection and per round); take a step of the flush round, writing receivers that are
//! behind with vectored writes (a completed round trims the log and deals with slow
//! consumers); close what needs closing; check timers (idle clients, paused accepts).

mod connection;
mod cursor;
mod disconnect;
mod listener;
mod log;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tracing::{debug, info, warn};

use crate::config::{ServerConfig, SlowConsumerPolicy};
use crate::protocol::Decoder;
use crate::sys;
use connection::{Connection, Input};
pub use cursor::{Cursor, Flushed};
pub use disconnect::DisconnectReason;
pub use log::{Entry, Log};

/// The listener's token: above any slab key (those stay below `--max-connections`).
const LISTENER: Token = Token(usize::MAX);
/// Token of the SIGINT/SIGTERM source.
const SIGNALS: Token = Token(usize::MAX - 1);
/// Token of the waker behind [`ShutdownHandle`].
const WAKER: Token = Token(usize::MAX - 2);

/// Bytes one connection may read per visit before the others get their turn.
const READ_BUDGET: usize = 256 * 1024;
/// Least input read per flush round, however small `--max-pending` is.
const MIN_ROUND_INPUT: usize = 64 * 1024;
/// How long accepting pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this interval for connections rejected at `--max-connections`.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(1);
/// Poll events handled per turn.
const EVENTS_CAPACITY: usize = 1024;
/// New input at which a flush round starts at once. Below it, a round may wait (see below) so
/// that each write to each receiver carries several messages rather than one.
const COALESCE_BYTES: u64 = 16 * 1024;
/// A small round waits until this many times the last round's duration has passed since it
/// ended (at most [`MAX_FLUSH_DELAY`]): short rounds that carry little then take at most
/// 1/(1 + this) of the loop's time. A round costs about one write per receiver whatever it
/// carries, so the wait lets each write carry several messages.
const FLUSH_SPACING: u32 = 4;
/// Receivers written per step of a flush round, between which the loop polls and reads.
const WRITES_PER_STEP: usize = 256;
/// The longest a round waits for more input: the latency coalescing may add. Measured on 100
/// receivers at 10,000 msg/s (docs/BENCHMARKS.md): 250 µs gives p99 1.3 ms at 69% CPU, 1 ms
/// gives 2.2 ms at 46%.
const MAX_FLUSH_DELAY: Duration = Duration::from_micros(250);

/// Why the server could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot set up the event loop: {0}")]
    Setup(io::Error),
    #[error("event loop failed: {0}")]
    Poll(io::Error),
}

/// Counters kept over the server's life, returned by [`Server::run`] and logged at the end.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections closed at once because `--max-connections` were open.
    pub rejected: u64,
    /// Messages relayed (appended to the log).
    pub messages: u64,
    /// Messages skipped for slow consumers under `--slow-consumer drop`.
    pub dropped: u64,
    /// Closed connections by [`DisconnectReason::kind`].
    pub disconnects: BTreeMap<&'static str, u64>,
}

/// A flush round in progress: it visits every connection once, in slab order.
struct Round {
    /// The slab key to visit next.
    next_key: usize,
    started: Instant,
    /// The lowest sequence number a visited receiver still needs.
    oldest_needed: u64,
}

/// Asks a running server, from any thread, to shut down gracefully.
#[derive(Clone)]
pub struct ShutdownHandle {
    waker: Arc<Waker>,
    requested: Arc<AtomicBool>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.requested.store(true, Ordering::SeqCst);
        // A failed wake means the loop is gone already: nothing left to stop.
        let _ = self.waker.wake();
    }
}

/// A bound, not yet running, multi-echo server.
pub struct Server {
    /// The readiness queue everything is registered with.
    poll: Poll,
    /// `None` once shutdown has begun: closing it makes new connections be refused.
    listener: Option<TcpListener>,
    /// The address actually bound (with the real port when asked for port 0).
    local_addr: SocketAddr,
    config: ServerConfig,
    /// Open connections, keyed by their token.
    conns: Slab<Connection>,
    /// Every message relayed and not yet sent to all receivers, in the one order all see.
    log: Log,
    /// The loop's read buffer: input is read here and messages are split off it without a
    /// copy, so idle connections hold no buffer of their own.
    scratch: BytesMut,
    /// Connections whose read budget ran out with input perhaps left, as (key, id) so an entry
    /// outliving its connection is recognised.
    read_queue: VecDeque<(usize, u64)>,
    /// Connections to close at the end of the current step, with the reason.
    closing: Vec<(usize, DisconnectReason)>,
    /// Next connection id; ids are never reused, unlike slab keys.
    next_id: u64,
    /// SIGINT/SIGTERM, once [`handle_signals`](Self::handle_signals) was called.
    signals: Option<Signals>,
    /// Wakes the loop for [`ShutdownHandle`].
    waker: Arc<Waker>,
    shutdown_requested: Arc<AtomicBool>,
    /// Set while accepting is paused after running out of descriptors.
    accept_paused_until: Option<Instant>,
    /// When a rejection at `--max-connections` was last logged, and how many were not since.
    rejections: (Option<Instant>, u64),
    /// Set once shutdown began: when to give up delivering.
    shutdown_deadline: Option<Instant>,
    /// When to next look for idle clients (only with `--idle-timeout`).
    next_idle_check: Option<Instant>,
    /// `log.appended()` when the last flush round began: what is new since.
    flushed_up_to: u64,
    /// Something other than new input needs a flush round soon: a blocked receiver became
    /// writable, or a client closed its side.
    flush_now: bool,
    /// When the last flush round ended and how long it took, to space small rounds.
    last_round: (Instant, Duration),
    /// The flush round under way, if any.
    round: Option<Round>,
    stats: Stats,
}

impl Server {
    /// Binds the listening socket and raises the open-files limit; nothing is served until
    /// [`run`](Self::run).
    pub fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        match sys::raise_open_files_limit() {
            Ok(limit) if (limit as usize) < config.max_connections + 32 => warn!(
                "open-files limit is {limit}: fewer than --max-connections {} can be served \
                 (raise the hard limit with ulimit -Hn)",
                config.max_connections
            ),
            Ok(limit) => debug!("open-files limit {limit}"),
            Err(e) => warn!("cannot raise the open-files limit: {e}"),
        }
        if config.max_pending < config.max_message {
            warn!(
                "--max-pending {} is below --max-message {}: one large message can make every \
                 receiver that is behind on it a slow consumer",
                config.max_pending, config.max_message
            );
        }
        let addr = config.listen;
        let mut listener =
            listener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let poll = Poll::new().map_err(ServerError::Setup)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(ServerError::Setup)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ServerError::Setup)?);
        let next_idle_check = config
            .idle_timeout
            .map(|t| Instant::now() + idle_check_every(t));
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            config,
            conns: Slab::new(),
            log: Log::new(),
            scratch: BytesMut::new(),
            read_queue: VecDeque::new(),
            closing: Vec::new(),
            next_id: 0,
            signals: None,
            waker,
            shutdown_requested: Arc::new(AtomicBool::new(false)),
            accept_paused_until: None,
            rejections: (None, 0),
            shutdown_deadline: None,
            next_idle_check,
            flushed_up_to: 0,
            flush_now: false,
            last_round: (Instant::now(), Duration::ZERO),
            round: None,
            stats: Stats::default(),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Makes SIGINT and SIGTERM start a graceful shutdown.
    pub fn handle_signals(&mut self) -> Result<(), ServerError> {
        let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(ServerError::Setup)?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(ServerError::Setup)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// A handle that stops this server from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            waker: Arc::clone(&self.waker),
            requested: Arc::clone(&self.shutdown_requested),
        }
    }

    /// Serves until shut down, then delivers what is queued (up to `--shutdown-timeout`).
    pub fn run(mut self) -> Result<Stats, ServerError> {
        info!(
            "serving {} on {} (max {} connections, message ≤ {} B, pending ≤ {} B, slow consumers: {})",
            self.config.protocol,
            self.local_addr,
            self.config.max_connections,
            self.config.max_message,
            self.config.max_pending,
            self.config.slow_consumer,
        );
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError::Poll(e));
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    SIGNALS => self.on_signal(now),
                    WAKER => {
                        if self.shutdown_requested.load(Ordering::SeqCst) {
                            self.begin_shutdown(now, "shutdown requested");
                        }
                    }
                    Token(key) => self.on_ready(key, event),
                }
            }
            if self.shutdown_deadline.is_none() {
                self.read_queued(now);
                self.close_pending();
            }
            if self.round.is_some() || self.next_flush_at().is_some_and(|at| at <= now) {
                self.flush_step();
                self.close_pending();
            }
            self.housekeeping(now);
            if self.shutdown_is_done(now) {
                break;
            }
        }
        self.stats.messages = self.log.end_seq();
        info!(
            "stopped: {} connections served, {} rejected, {} messages relayed, {} dropped for slow consumers, disconnects {:?}",
            self.stats.accepted,
            self.stats.rejected,
            self.stats.messages,
            self.stats.dropped,
            self.stats.disconnects
        );
        Ok(self.stats)
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.read_queue.is_empty() || self.round.is_some() {
            return Some(Duration::ZERO);
        }
        [
            self.next_idle_check,
            self.accept_paused_until,
            self.shutdown_deadline,
            self.next_flush_at(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.saturating_duration_since(now))
    }

    /// Accepts until `WouldBlock` (the listener is edge-triggered too).
    fn accept(&mut self, now: Instant) {
        let Some(listener) = &self.listener else {
            return;
        };
        if self.accept_paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.accept_paused_until = None;
        loop {
            let (mut socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if listener::is_connection_error(&e) => continue,
                Err(e) => {
                    let why = if listener::is_resource_exhaustion(&e) {
                        "out of file descriptors or memory"
                    } else {
                        "unexpected error"
                    };
                    warn!(
                        "accept failed ({why}): {e}; pausing accepts for {} ms",
                        ACCEPT_BACKOFF.as_millis()
                    );
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            };
            if self.conns.len() >= self.config.max_connections {
                self.stats.rejected += 1;
                // A flood of connections at the limit gets one line a second, not one each.
                let (last, unlogged) = &mut self.rejections;
                if !last.is_some_and(|t| now.saturating_duration_since(t) < REJECT_LOG_EVERY) {
                    warn!(
                        peer = %peer,
                        "rejected: {} connections already open (--max-connections); {} more rejected since the last such line",
                        self.conns.len(),
                        unlogged
                    );
                    *last = Some(now);
                    *unlogged = 0;
                } else {
                    *unlogged += 1;
                }
                continue; // dropping `socket` closes it
            }
            if let Err(e) = socket.set_nodelay(true) {
                debug!(peer = %peer, "cannot set TCP_NODELAY: {e}");
            }
            let entry = self.conns.vacant_entry();
            let token = Token(entry.key());
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut socket, token, Interest::READABLE)
            {
                warn!(peer = %peer, "cannot register connection: {e}");
                continue;
            }
            let decoder = Decoder::new(self.config.protocol, self.config.max_message);
            entry.insert(Connection::new(
                socket,
                peer,
                self.next_id,
                decoder,
                &self.log,
            ));
            self.next_id += 1;
            self.stats.accepted += 1;
            debug!(peer = %peer, "connected");
        }
    }

    fn on_signal(&mut self, now: Instant) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        if let Some(sig) = signals.pending().next() {
            let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
            self.begin_shutdown(now, name);
        }
    }

    fn on_ready(&mut self, key: usize, event: &Event) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // closed earlier in this batch
        };
        if event.is_writable() && conn.blocked {
            conn.blocked = false;
            self.flush_now = true;
        }
        let has_input = event.is_readable() || event.is_read_closed() || event.is_error();
        if has_input && !conn.queued && conn.eof_at.is_none() && self.shutdown_deadline.is_none() {
            conn.queued = true;
            self.read_queue.push_back((key, conn.id));
        }
    }

    /// Reads queued connections, each up to its budget, until the input taken since the last
    /// flush round began reaches `max(--max-pending / 4, 64 KiB)`. That bounds how far the log
    /// can grow past `--max-pending` before the round trims it; connections not reached stay
    /// queued, in order, for the next turn.
    fn read_queued(&mut self, now: Instant) {
        let budget = (self.config.max_pending / 4).max(MIN_ROUND_INPUT) as u64;
        for _ in 0..self.read_queue.len() {
            if self.log.appended() - self.flushed_up_to >= budget {
                break;
            }
            let Some((key, id)) = self.read_queue.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) else {
                continue;
            };
            match conn.read(&mut self.scratch, &mut self.log, READ_BUDGET, now) {
                Ok(Input::More) => self.read_queue.push_back((key, id)),
                Ok(Input::Drained) => conn.queued = false,
                Ok(Input::Eof) => {
                    conn.queued = false;
                    conn.eof_at = Some(self.log.end_seq());
                    self.flush_now = true;
                    debug!(peer = %conn.peer, "client closed its sending side");
                }
                Err(reason) => {
                    conn.queued = false;
                    self.closing.push((key, reason));
                }
            }
        }
    }

    /// When the next flush round should start; `None` while nothing waits to be written. A
    /// round is due at once when much is new or a receiver became writable; a round that would
    /// carry little waits until [`FLUSH_SPACING`] times the last round's duration has passed
    /// since it ended (at most [`MAX_FLUSH_DELAY`]), so that rounds carry several messages.
    fn next_flush_at(&self) -> Option<Instant> {
        let new = self.log.appended() - self.flushed_up_to;
        let (ended, took) = self.last_round;
        if self.flush_now || new >= COALESCE_BYTES {
            Some(ended)
        } else if new > 0 {
            Some(ended + (took * FLUSH_SPACING).min(MAX_FLUSH_DELAY))
        } else {
            None
        }
    }

    /// Takes the next step of the flush round (starting one if none is under way): writes up to
    /// [`WRITES_PER_STEP`] receivers that are behind and not blocked, in slab order. A round
    /// over many receivers thus spans several turns of the loop, so input keeps being read and
    /// receivers not yet visited get what arrived meanwhile in the same round. When the round
    /// has visited everyone, the log is trimmed: what all have been sent goes, and beyond
    /// `--max-pending` the oldest goes, making slow consumers of those it overtakes.
    fn flush_step(&mut self) {
        let Server {
            poll,
            conns,
            log,
            closing,
            config,
            stats,
            flushed_up_to,
            flush_now,
            last_round,
            round,
            ..
        } = self;
        let round = round.get_or_insert_with(|| {
            *flushed_up_to = log.appended();
            *flush_now = false;
            Round {
                next_key: 0,
                started: Instant::now(),
                oldest_needed: u64::MAX,
            }
        });
        let mut writes = 0;
        let mut key = round.next_key;
        while key < conns.capacity() && writes < WRITES_PER_STEP {
            let this = key;
            key += 1;
            let Some(conn) = conns.get_mut(this) else {
                continue;
            };
            if conn.cursor.has_fallen_off(log) {
                if let Some(reason) = fall_behind(conn, log, config, stats) {
                    closing.push((this, reason));
                    continue;
                }
            }
            if !conn.blocked && conn.cursor.is_behind(log) {
                writes += 1;
                let result = conn
                    .flush(log, config.echo_self)
                    .and_then(|flushed| set_writable_interest(poll, this, conn, flushed));
                if let Err(e) = result {
                    closing.push((this, DisconnectReason::Reset(e)));
                    continue;
                }
            }
            if conn.is_finished() {
                closing.push((this, DisconnectReason::Closed));
                continue;
            }
            round.oldest_needed = round.oldest_needed.min(conn.cursor.next_seq());
        }
        round.next_key = key;
        if key < conns.capacity() {
            return;
        }
        // Receivers connected during the round start at the end of the log: they need
        // nothing older than what the visited ones need.
        log.trim_before(round.oldest_needed);
        if log.bytes() > config.max_pending {
            log.trim_to(config.max_pending);
            // Deal with those the trim overtook now rather than at their next event.
            for (key, conn) in conns.iter_mut() {
                if conn.cursor.has_fallen_off(log) {
                    if let Some(reason) = fall_behind(conn, log, config, stats) {
                        closing.push((key, reason));
                    }
                }
            }
        }
        let ended = Instant::now();
        *last_round = (ended, ended - round.started);
        tracing::trace!(
            took_us = (ended - round.started).as_micros() as u64,
            "flush round"
        );
        self.round = None;
    }

    /// Closes the connections queued in `closing`, logging each with its peer and reason.
    fn close_pending(&mut self) {
        for (key, reason) in self.closing.drain(..) {
            let Some(mut conn) = self.conns.try_remove(key) else {
                continue; // already closed for an earlier reason this turn
            };
            // Closing the socket removes it from epoll anyway; a failure here changes nothing.
            let _ = self.poll.registry().deregister(&mut conn.socket);
            *self.stats.disconnects.entry(reason.kind()).or_default() += 1;
            let peer = conn.peer;
            let dropped = conn.dropped;
            match reason {
                DisconnectReason::Closed => debug!(peer = %peer, dropped, "disconnected: {reason}"),
                _ if reason.is_failure() => warn!(peer = %peer, dropped, "disconnected: {reason}"),
                _ => info!(peer = %peer, dropped, "disconnected: {reason}"),
            }
        }
    }

    /// Timers: idle clients, paused accepts.
    fn housekeeping(&mut self, now: Instant) {
        if let (Some(timeout), Some(at)) = (self.config.idle_timeout, self.next_idle_check) {
            if now >= at {
                for (key, conn) in self.conns.iter() {
                    if now.saturating_duration_since(conn.last_input) >= timeout {
                        self.closing.push((key, DisconnectReason::Idle(timeout)));
                    }
                }
                self.close_pending();
                self.next_idle_check = Some(now + idle_check_every(timeout));
            }
        }
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept(now);
        }
    }

    fn begin_shutdown(&mut self, now: Instant, why: &str) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        // Close the listener before saying so: whoever reads the log line may rely on it.
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        info!(
            "shutting down ({why}): refusing new connections, delivering queued messages for up to {}s",
            self.config.shutdown_timeout.as_secs_f64()
        );
        self.read_queue.clear();
        for (_, conn) in self.conns.iter_mut() {
            conn.queued = false;
        }
        self.shutdown_deadline = Some(now + self.config.shutdown_timeout);
    }

    /// During shutdown: done once nobody is owed anything, or when the deadline passes (those
    /// still owed are then closed with a log line saying so).
    fn shutdown_is_done(&mut self, now: Instant) -> bool {
        let Some(deadline) = self.shutdown_deadline else {
            return false;
        };
        let log = &self.log;
        let owed = |(_, c): &(usize, &Connection)| c.cursor.is_behind(log);
        if !self.conns.iter().any(|entry| owed(&entry)) {
            return true;
        }
        if now < deadline {
            return false;
        }
        let late = self.conns.iter().filter(owed);
        self.closing
            .extend(late.map(|(key, _)| (key, DisconnectReason::Shutdown)));
        self.close_pending();
        true
    }
}

/// Applies `--slow-consumer` to a receiver the log has left behind. Returns the reason to
/// close it, or `None` when it was skipped ahead instead.
fn fall_behind(
    conn: &mut Connection,
    log: &Log,
    config: &ServerConfig,
    stats: &mut Stats,
) -> Option<DisconnectReason> {
    match config.slow_consumer {
        SlowConsumerPolicy::Disconnect => Some(DisconnectReason::SlowConsumer {
            max_pending: config.max_pending,
        }),
        SlowConsumerPolicy::Drop => {
            let skipped = conn.cursor.skip_to_first(log);
            if conn.dropped == 0 {
                warn!(
                    peer = %conn.peer,
                    skipped,
                    "slow consumer: fell more than {} bytes behind, skipping messages (--slow-consumer drop)",
                    config.max_pending
                );
            }
            conn.dropped += skipped;
            stats.dropped += skipped;
            None
        }
    }
}

/// Keeps WRITABLE in the registered interest exactly while the receiver is blocked.
fn set_writable_interest(
    poll: &Poll,
    key: usize,
    conn: &mut Connection,
    flushed: Flushed,
) -> io::Result<()> {
    let blocked = flushed == Flushed::Blocked;
    conn.blocked = blocked;
    if conn.wants_writable != blocked {
        let interest = if blocked {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry()
            .reregister(&mut conn.socket, Token(key), interest)?;
        conn.wants_writable = blocked;
    }
    Ok(())
}

/// How often to look for idle clients: often enough that one is closed within a quarter of the
/// timeout after it expires, and at most once every 10 ms.
fn idle_check_every(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}
