//! The event loop: one `mio::Poll`, a listener, a slab of connections and one shared log.
//!
//! Each turn of the loop: poll; accept; read queued connections into the log (bounded per
//! connection and per round); take a step of the flush round, writing receivers that are
//! behind with vectored writes (a completed round trims the log and deals with slow
//! consumers); close what needs closing; check timers (idle clients, paused accepts).

mod connection;
mod cursor;
mod disconnect;
mod fanout;
mod inbox;
mod listener;
mod log;
mod ratelimit;
mod sequencer;
mod timer;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tracing::{debug, info, warn};

use crate::config::ServerConfig;
use crate::protocol::Decoder;
use crate::sys;
use connection::{Connection, Input, ReadBuffers};
pub use cursor::{Cursor, Flushed};
pub use disconnect::DisconnectReason;
use fanout::{Fanout, Policy};
pub use inbox::{reserve_for_read, Inbox, READ_BLOCK};
pub use log::{Entry, Log, ENTRY_OVERHEAD};
use ratelimit::LogLimit;
use sequencer::Sequencer;
use timer::Timer;

/// The listener's token: above any slab key (those stay below `--max-connections`).
const LISTENER: Token = Token(usize::MAX);
/// Token of the SIGINT/SIGTERM source.
const SIGNALS: Token = Token(usize::MAX - 1);
/// Token of the waker behind [`ShutdownHandle`].
const WAKER: Token = Token(usize::MAX - 2);
/// Token of the loop's timer.
const TIMER: Token = Token(usize::MAX - 3);

/// Bytes one connection may read per visit before the others get their turn.
const READ_BUDGET: usize = 256 * 1024;
/// Least input read per flush round, however small `--max-pending` is.
const MIN_ROUND_INPUT: usize = 64 * 1024;
/// Connections accepted per turn of the loop, so a connect flood cannot starve relaying.
const ACCEPTS_PER_TURN: usize = 256;
/// How long accepting pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Poll events handled per turn.
const EVENTS_CAPACITY: usize = 1024;

/// Why the server could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid settings: {0}")]
    Config(String),
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
    /// The log, the receivers and the flush rounds.
    fanout: Fanout,
    /// Where decoded input gets its place in the order.
    sequencer: Sequencer,
    /// The loop's read buffers: idle connections hold no buffer of their own.
    bufs: ReadBuffers,
    /// Connections whose read budget ran out with input perhaps left, as (key, id) so an entry
    /// outliving its connection is recognised.
    read_queue: VecDeque<(usize, u64)>,
    /// Connections to close at the end of the current step, with the reason. Drained before
    /// anything is accepted, so a key here still names the connection it was pushed for.
    closing: Vec<(usize, DisconnectReason)>,
    /// Next connection id; ids are never reused, unlike slab keys.
    next_id: u64,
    /// SIGINT/SIGTERM, once [`handle_signals`](Self::handle_signals) was called.
    signals: Option<Signals>,
    /// Wakes the loop for [`ShutdownHandle`].
    waker: Arc<Waker>,
    shutdown_requested: Arc<AtomicBool>,
    /// Makes the poll return at the earliest deadline, to the microsecond.
    timer: Timer,
    /// Set while accepting is paused after running out of descriptors.
    accept_paused_until: Option<Instant>,
    /// The accept budget of a turn ran out with connections perhaps still waiting.
    accept_more: bool,
    /// Connections accepted in this turn, against [`ACCEPTS_PER_TURN`].
    accepted_this_turn: usize,
    /// Rate limits for the lines that clients can cause.
    log_limit: LogLimit,
    /// Set once shutdown began: when to give up delivering.
    shutdown_deadline: Option<Instant>,
    /// When to next look for idle clients (only with `--idle-timeout`).
    next_idle_check: Option<Instant>,
    stats: Stats,
}

impl Server {
    /// Binds the listening socket and raises the open-files limit; nothing is served until
    /// [`run`](Self::run).
    pub fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        match sys::raise_open_files_limit() {
            Ok(limit) if (limit as usize) < config.max_connections.saturating_add(32) => warn!(
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
        let timer = Timer::new(poll.registry(), TIMER).map_err(ServerError::Setup)?;
        let now = Instant::now();
        let next_idle_check = config.idle_timeout.map(|t| later(now, idle_check_every(t)));
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            config,
            conns: Slab::new(),
            fanout: Fanout::new(now),
            sequencer: Sequencer,
            bufs: ReadBuffers::default(),
            read_queue: VecDeque::new(),
            closing: Vec::new(),
            next_id: 0,
            signals: None,
            waker,
            shutdown_requested: Arc::new(AtomicBool::new(false)),
            timer,
            accept_paused_until: None,
            accept_more: false,
            accepted_this_turn: 0,
            log_limit: LogLimit::default(),
            shutdown_deadline: None,
            next_idle_check,
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
            self.accepted_this_turn = 0;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    SIGNALS => self.on_signal(now),
                    WAKER => {
                        if self.shutdown_requested.load(Ordering::SeqCst) {
                            self.begin_shutdown(now, "shutdown requested");
                        }
                    }
                    TIMER => self.timer.fired(),
                    Token(key) => self.on_ready(key, event),
                }
            }
            self.read_queued(now);
            self.close_pending(now);
            if self.fanout.in_round() || self.fanout.next_round_at().is_some_and(|at| at <= now) {
                let policy = self.policy();
                self.fanout.step(
                    now,
                    &mut self.conns,
                    self.poll.registry(),
                    policy,
                    &mut self.log_limit,
                    &mut self.closing,
                );
                self.close_pending(now);
            }
            self.housekeeping(now);
            if self.shutdown_is_done(now) {
                break;
            }
        }
        self.log_suppressed(Instant::now(), true);
        self.stats.messages = self.fanout.log.end_seq();
        self.stats.dropped = self.fanout.dropped;
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

    fn policy(&self) -> Policy {
        Policy {
            echo_self: self.config.echo_self,
            max_pending: self.config.max_pending,
            slow_consumer: self.config.slow_consumer,
            draining: self.shutdown_deadline.is_some(),
        }
    }

    /// How long the next poll may block: not at all while work is left over from this turn;
    /// else until the earliest deadline, which goes to the timer (`epoll_wait` would round
    /// it up to whole milliseconds), or for ever when there is none.
    fn poll_timeout(&mut self, now: Instant) -> Option<Duration> {
        if !self.read_queue.is_empty() || self.fanout.in_round() || self.accept_more {
            return Some(Duration::ZERO);
        }
        let paused = self.listener.is_some().then_some(self.accept_paused_until);
        let idle_check = self
            .shutdown_deadline
            .is_none()
            .then_some(self.next_idle_check);
        let next = [
            idle_check.flatten(),
            paused.flatten(),
            self.shutdown_deadline,
            self.fanout.next_round_at(),
            self.log_limit.next_due(),
        ]
        .into_iter()
        .flatten()
        .min();
        if next.is_some_and(|at| at <= now) {
            return Some(Duration::ZERO);
        }
        match self.timer.set(next, now) {
            Ok(()) => None,
            Err(e) => {
                warn!("cannot arm the loop's timer ({e}); waiting in whole milliseconds");
                next.map(|at| at - now)
            }
        }
    }

    /// Accepts until `WouldBlock` (the listener is edge-triggered too), or [`ACCEPTS_PER_TURN`]
    /// connections this turn, coming back next turn for the rest.
    fn accept(&mut self, now: Instant) {
        self.accept_more = false;
        if self.accept_paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.accept_paused_until = None;
        while self.accepted_this_turn < ACCEPTS_PER_TURN {
            self.accepted_this_turn += 1;
            let Some(listener) = &self.listener else {
                return;
            };
            let (socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if listener::is_connection_error(&e) => continue,
                Err(e) => {
                    let why = if listener::is_resource_exhaustion(&e) {
                        "out of file descriptors or memory"
                    } else {
                        "unexpected error"
                    };
                    if let Some(suppressed) = self.log_limit.allow("accept_failed", now) {
                        warn!(
                            suppressed,
                            "accept failed ({why}): {e}; pausing accepts for {} ms",
                            ACCEPT_BACKOFF.as_millis()
                        );
                    }
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            };
            if self.conns.len() >= self.config.max_connections {
                self.stats.rejected += 1;
                // A flood of connections at the limit gets one line a second, not one each.
                if let Some(unlogged) = self.log_limit.allow("rejected", now) {
                    warn!(
                        peer = %peer,
                        "rejected: {} connections already open (--max-connections); {} more rejected since the last such line",
                        self.conns.len(),
                        unlogged
                    );
                }
                continue; // dropping `socket` closes it
            }
            self.admit(socket, peer, now);
        }
        self.accept_more = true;
    }

    /// Registers an accepted connection and makes it a receiver.
    fn admit(&mut self, mut socket: mio::net::TcpStream, peer: SocketAddr, now: Instant) {
        if let Err(e) = Connection::configure(&socket) {
            debug!(peer = %peer, "cannot set socket options: {e}");
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut socket, Token(key), Interest::READABLE)
        {
            warn!(peer = %peer, "cannot register connection: {e}");
            return;
        }
        let decoder = Decoder::new(self.config.protocol, self.config.max_message);
        let conn = entry.insert(Connection::new(socket, peer, self.next_id, decoder, now));
        self.fanout.join(key, conn);
        self.next_id += 1;
        self.stats.accepted += 1;
        debug!(peer = %peer, "connected");
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
            self.fanout.wake(key, conn);
        }
        let has_input = event.is_readable() || event.is_read_closed() || event.is_error();
        if has_input && !conn.queued && conn.eof_at.is_none() {
            conn.queued = true;
            self.read_queue.push_back((key, conn.id));
        }
    }

    /// Reads queued connections, each up to its budget, until the input taken since the log
    /// was last trimmed counts `max(--max-pending / 4, 64 KiB)` (as `--max-pending`
    /// counts it: tiny messages count their bookkeeping too). That bounds how far the log can
    /// grow past `--max-pending` before the round's trim; connections not reached stay queued,
    /// in order, for the next turn. Each visit's messages go to the sequencer as one batch.
    /// During shutdown input is read and thrown away instead.
    fn read_queued(&mut self, now: Instant) {
        let budget = (self.config.max_pending / 4).max(MIN_ROUND_INPUT);
        let draining = self.shutdown_deadline.is_some();
        for _ in 0..self.read_queue.len() {
            let taken = usize::try_from(self.fanout.untrimmed_held()).unwrap_or(usize::MAX);
            if !draining && taken >= budget {
                break;
            }
            let Some((key, id)) = self.read_queue.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) else {
                continue;
            };
            let result = if draining {
                conn.discard(&mut self.bufs.scratch, READ_BUDGET, now)
            } else {
                conn.read(&mut self.bufs, READ_BUDGET, budget - taken, now)
            };
            // What was read before an error or the end is relayed all the same.
            let read = self.bufs.batch.len();
            self.sequencer
                .sequence(&mut self.bufs.batch, &mut self.fanout.log);
            self.bufs.shrink(read);
            match result {
                Ok(Input::More) => self.read_queue.push_back((key, id)),
                Ok(Input::Drained) => conn.queued = false,
                Ok(Input::Eof) => {
                    conn.queued = false;
                    conn.eof_at = Some(self.fanout.log.end_seq());
                    self.fanout.wake(key, conn);
                    debug!(peer = %conn.peer, "client closed its sending side");
                }
                Err(reason) => {
                    conn.queued = false;
                    self.closing.push((key, reason));
                }
            }
        }
    }

    /// Closes the connections queued in `closing`, logging each with its peer and reason.
    fn close_pending(&mut self, now: Instant) {
        for (key, reason) in self.closing.drain(..) {
            let Some(mut conn) = self.conns.try_remove(key) else {
                continue; // already closed for an earlier reason this turn
            };
            self.fanout.leave(&conn, &mut self.conns);
            // Closing the socket removes it from epoll anyway; a failure here changes nothing.
            let _ = self.poll.registry().deregister(&mut conn.socket);
            if reason.aborts() {
                conn.abort_on_close();
            } else if matches!(reason, DisconnectReason::Shutdown { .. }) {
                // Unread input would turn the close into a reset that destroys what the
                // client has not read yet; read it first. A failure is beside the point now.
                let _ = conn.discard(&mut self.bufs.scratch, READ_BUDGET, now);
            }
            *self.stats.disconnects.entry(reason.kind()).or_default() += 1;
            let (peer, dropped) = (conn.peer, conn.dropped);
            // Closed before it is logged: whoever reads the line may rely on it.
            drop(conn);
            if reason.is_quiet() {
                debug!(peer = %peer, dropped, "disconnected: {reason}");
                continue;
            }
            // Clients can cause these by the thousand: one line a second per kind.
            let Some(suppressed) = self.log_limit.allow(reason.kind(), now) else {
                continue;
            };
            if reason.is_failure() {
                warn!(peer = %peer, dropped, suppressed, "disconnected: {reason}");
            } else {
                info!(peer = %peer, dropped, suppressed, "disconnected: {reason}");
            }
        }
    }

    /// Timers: idle clients (not while shutting down: then the shutdown timeout bounds the
    /// wait, and a client still being sent its backlog must not be cut off), paused or
    /// unfinished accepts, counts of log lines not written.
    fn housekeeping(&mut self, now: Instant) {
        self.log_suppressed(now, false);
        if let (Some(timeout), Some(at), None) = (
            self.config.idle_timeout,
            self.next_idle_check,
            self.shutdown_deadline,
        ) {
            if now >= at {
                let log = &self.fanout.log;
                for &(key, _) in self.fanout.members() {
                    let Some(conn) = self.conns.get(key) else {
                        continue;
                    };
                    // A client that closed its side and is still being sent its backlog is
                    // not idle: it has nothing more to send.
                    let owed_after_eof = conn.eof_at.is_some() && conn.cursor.is_behind(log);
                    if !owed_after_eof && now.saturating_duration_since(conn.last_input) >= timeout
                    {
                        self.closing.push((key, DisconnectReason::Idle(timeout)));
                    }
                }
                self.close_pending(now);
                self.next_idle_check = Some(later(now, idle_check_every(timeout)));
            }
        }
        if self.accept_more || self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept(now);
        }
    }

    /// Says how many lines of each kind were not written since the last one (all of them at
    /// exit): a burst's count must not wait for a later line of its kind that may never come.
    fn log_suppressed(&mut self, now: Instant, all: bool) {
        for (kind, count) in self.log_limit.overdue(now, all) {
            info!("{count} more lines of this kind were not logged one by one: {kind}");
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
        // Nothing is accepted any more: no pause to wait out.
        self.accept_paused_until = None;
        self.accept_more = false;
        info!(
            "shutting down ({why}): refusing new connections, delivering queued messages for up to {}s",
            self.config.shutdown_timeout.as_secs_f64()
        );
        // Everyone is visited once more: those sent all are half-closed at once.
        self.fanout.visit_all_soon();
        self.shutdown_deadline = Some(later(now, self.config.shutdown_timeout));
    }

    /// During shutdown: done once every client has been sent all it was owed and has closed
    /// its side after our end of stream, or when the deadline passes (those left are then
    /// closed with a log line saying whether they were still owed anything).
    fn shutdown_is_done(&mut self, now: Instant) -> bool {
        let Some(deadline) = self.shutdown_deadline else {
            return false;
        };
        if self.conns.is_empty() {
            return true;
        }
        if now < deadline {
            return false;
        }
        let log = &self.fanout.log;
        let echo_self = self.config.echo_self;
        let (mut owed_peers, mut unclosed) = (Vec::new(), 0);
        for &(key, _) in self.fanout.members() {
            if let Some(conn) = self.conns.get(key) {
                let owed = conn.owes(log, echo_self);
                if owed {
                    owed_peers.push(conn.peer);
                } else {
                    unclosed += 1;
                }
                self.closing
                    .push((key, DisconnectReason::Shutdown { owed }));
            }
        }
        // Closed before it is logged (whoever reads the line may rely on it); then one line
        // for all (never rate-limited: it is the last word on what was lost), naming the
        // first few clients that did not get all they were owed.
        self.close_pending(now);
        const NAMED: usize = 5;
        if !owed_peers.is_empty() {
            let named: Vec<String> = owed_peers
                .iter()
                .take(NAMED)
                .map(|p| p.to_string())
                .collect();
            warn!(
                owed = owed_peers.len(),
                unclosed,
                "shutdown timeout reached before all was sent: {} clients still owed data were reset ({}{})",
                owed_peers.len(),
                named.join(", "),
                if owed_peers.len() > NAMED { ", ..." } else { "" }
            );
        } else {
            info!(
                unclosed,
                "shutdown timeout reached: {unclosed} clients were sent all but had not closed their side; closed them"
            );
        }
        true
    }
}

/// `now + after`, or a century from now when that overflows (a library caller may ask for
/// `Duration::MAX`).
fn later(now: Instant, after: Duration) -> Instant {
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// How often to look for idle clients: often enough that one is closed within a quarter of the
/// timeout after it expires, and at most once every 10 ms.
fn idle_check_every(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}
