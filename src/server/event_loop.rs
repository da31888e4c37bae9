//! One event loop: a `mio::Poll`, a slab of connections and its view of the one log.
//!
//! Each turn: poll; accept (loop 0 only; connections for other loops are handed over before
//! they are registered); take in connections handed to this loop; read queued connections,
//! each read visit's messages going to the sequencer as one batch (bounded per connection and
//! per round); take a step of the flush round, writing receivers that are behind with vectored
//! writes (a completed round trims the log and deals with slow consumers); close what needs
//! closing; check timers (idle clients, paused accepts).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tracing::{debug, info, warn};

use super::auth::{AuthWait, Authenticated};
use super::board::{Arrival, Board};
use super::connection::{Connection, Input, ReadBuffers, Transport};
use super::disconnect::{AuthFailure, DisconnectReason};
use super::fanout::{Fanout, Policy};
use super::listener;
use super::metrics::{Counts, PUBLISH_EVERY};
use super::ratelimit::LogLimit;
use super::sequencer::Sequencer;
use super::stream::Stream;
use super::timer::Timer;
use super::web::{self, Side, SideEvent, WsState};
use super::{CutOff, ServerError, Stats};
use crate::config::ServerConfig;
use crate::protocol::Decoder;
use crate::ws::handshake::Origins;

/// The listener's token: above any slab key (those stay below `--max-connections`).
const LISTENER: Token = Token(usize::MAX);
/// Token of the SIGINT/SIGTERM source.
const SIGNALS: Token = Token(usize::MAX - 1);
/// Token of the loop's waker: shutdown, connections handed over, input sequenced elsewhere.
const WAKER: Token = Token(usize::MAX - 2);
/// Token of the loop's timer.
const TIMER: Token = Token(usize::MAX - 3);
/// The `--http` listener's token.
const HTTP_LISTENER: Token = Token(usize::MAX - 4);

/// Bytes one connection may read per visit before the others get their turn.
const READ_BUDGET: usize = 256 * 1024;
/// Least input read per flush round, however small `--max-pending` is.
pub const MIN_ROUND_INPUT: usize = 64 * 1024;
/// Connections accepted per turn of the loop, so a connect flood cannot starve relaying.
const ACCEPTS_PER_TURN: usize = 256;
/// How long accepting pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Poll events handled per turn.
const EVENTS_CAPACITY: usize = 1024;

/// The input one loop may take between two trims of its log, as `--max-pending` counts it:
/// a quarter of `--max-pending`, and at least [`MIN_ROUND_INPUT`].
pub fn round_input_budget(config: &ServerConfig) -> usize {
    (config.max_pending / 4).max(MIN_ROUND_INPUT)
}

/// One event loop of the server (see the module documentation).
pub struct EventLoop {
    /// Which loop this is: loop 0 accepts and handles signals.
    index: usize,
    /// The readiness queue everything of this loop is registered with.
    poll: Poll,
    /// Loop 0's listener; `None` on the others, and once shutdown has begun (closing it makes
    /// new connections be refused).
    listener: Option<TcpListener>,
    /// Loop 0's `--http` listener, if any (closed like the other at shutdown).
    http_listener: Option<TcpListener>,
    /// Browser origins allowed besides the server's own (`--allowed-origin`).
    origins: Origins,
    /// With `--auth-token-file`: the token's message in the server's wire form, which a TCP
    /// client must send first.
    token_message: Option<Vec<u8>>,
    /// TCP clients that have not presented the token, oldest first (entries of connections
    /// that have since joined or closed are dropped when the list is next looked at).
    waiting_for_token: VecDeque<(usize, u64)>,
    /// With `--tls-cert`: every connection of both listeners is a TLS session under this.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Side connections (HTTP, WebSocket clients being closed, TCP clients that have not
    /// presented the token) by deadline: always
    /// [`web::SIDE_TIMEOUT`] after they were made, so in order. An entry whose connection
    /// is gone or no longer a side connection is skipped.
    side_deadlines: VecDeque<(Instant, usize, u64)>,
    config: Arc<ServerConfig>,
    /// What the loops share: wakers, connections handed over, counts, the shutdown flag.
    board: Arc<Board>,
    /// Open connections, keyed by their token.
    conns: Slab<Connection>,
    /// This loop's view of the log, its receivers and its flush rounds.
    fanout: Fanout,
    /// Where decoded input gets its place in the one order.
    sequencer: Sequencer,
    /// The loop's read buffers: idle connections hold no buffer of their own.
    bufs: ReadBuffers,
    /// Connections whose read budget ran out with input perhaps left, as (key, id) so an entry
    /// outliving its connection is recognised.
    read_queue: VecDeque<(usize, u64)>,
    /// Reading waits for a wake: another loop has not yet trimmed a round's worth of input.
    read_stalled: bool,
    /// The last trim told to the sequencer ([`Fanout::trimmed_at`]).
    reported_trim: u64,
    /// Clients whose input ended, waiting for their last messages to be in the order:
    /// (key, id, ticket); see `settle_ends`.
    unsettled: Vec<(usize, u64, u64)>,
    /// Connections to close at the end of the current step, with the reason. Drained before
    /// anything is accepted, so a key here still names the connection it was pushed for.
    closing: Vec<(usize, DisconnectReason)>,
    /// Connections handed to this loop, taken from the board (reused).
    arrivals: Vec<Arrival>,
    /// Next connection id; ids are never reused, unlike slab keys, and are unique over all
    /// loops (loop `i` of `n` hands out `i`, `i + n`, ...), so `--no-echo-self` holds across
    /// loops.
    next_id: u64,
    /// SIGINT/SIGTERM, once [`handle_signals`](Self::handle_signals) was called (loop 0).
    signals: Option<Signals>,
    /// Makes the poll return at the earliest deadline, to the microsecond.
    timer: Timer,
    /// Set while accepting is paused after running out of descriptors.
    accept_paused_until: Option<Instant>,
    /// The accept budget of a turn ran out with connections perhaps still waiting.
    accept_more: bool,
    /// Which listener [`accept`](Self::accept) tries first (they take turns).
    http_first: bool,
    /// With `--metrics`: when the counters may next be published, and what was published
    /// last (see `metrics.rs`).
    next_publish: Option<Instant>,
    published: Counts,
    /// Disconnects by reason, for `--metrics`.
    disconnect_counts: Counts,
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

/// The parts of a loop made before the board exists (the board holds every loop's waker).
pub struct LoopSetup {
    poll: Poll,
    timer: Timer,
    /// The TLS configuration of its connections (`--tls-cert`), if any.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl LoopSetup {
    /// A poll with its timer, and the waker that goes to the board; its connections are TLS
    /// sessions under `tls`, if given.
    pub fn new(tls: Option<Arc<rustls::ServerConfig>>) -> Result<(LoopSetup, Waker), ServerError> {
        let poll = Poll::new().map_err(ServerError::Setup)?;
        let waker = Waker::new(poll.registry(), WAKER).map_err(ServerError::Setup)?;
        let timer = Timer::new(poll.registry(), TIMER).map_err(ServerError::Setup)?;
        Ok((LoopSetup { poll, timer, tls }, waker))
    }
}

impl EventLoop {
    /// Loop `index` of the board's loops; loop 0 gets the listener.
    pub fn new(
        index: usize,
        setup: LoopSetup,
        listener: Option<TcpListener>,
        http_listener: Option<TcpListener>,
        config: Arc<ServerConfig>,
        board: Arc<Board>,
        sequencer: Sequencer,
    ) -> Result<EventLoop, ServerError> {
        let LoopSetup { poll, timer, tls } = setup;
        let (mut listener, mut http_listener) = (listener, http_listener);
        for (listener, token) in [
            (&mut listener, LISTENER),
            (&mut http_listener, HTTP_LISTENER),
        ] {
            if let Some(listener) = listener {
                poll.registry()
                    .register(listener, token, Interest::READABLE)
                    .map_err(ServerError::Setup)?;
            }
        }
        let now = Instant::now();
        let next_idle_check = config.idle_timeout.map(|t| later(now, idle_check_every(t)));
        let fanout = Fanout::new(now, board.loops(), config.protocol).with_history(config.history);
        let mut bufs = ReadBuffers::new(&fanout.log);
        bufs.mark_binary = config.http.is_some();
        let origins = Origins::new(&config.allowed_origins);
        let token_message = config
            .auth_token
            .as_ref()
            .map(|t| t.message(config.protocol));
        let next_publish = config.metrics.map(|_| now);
        Ok(EventLoop {
            index,
            poll,
            listener,
            http_listener,
            origins,
            token_message,
            waiting_for_token: VecDeque::new(),
            tls,
            side_deadlines: VecDeque::new(),
            config,
            board,
            conns: Slab::new(),
            fanout,
            sequencer,
            bufs,
            read_queue: VecDeque::new(),
            read_stalled: false,
            reported_trim: 0,
            unsettled: Vec::new(),
            closing: Vec::new(),
            arrivals: Vec::new(),
            next_id: index as u64,
            signals: None,
            timer,
            accept_paused_until: None,
            accept_more: false,
            http_first: false,
            next_publish,
            published: Counts::default(),
            disconnect_counts: Counts::default(),
            accepted_this_turn: 0,
            log_limit: LogLimit::default(),
            shutdown_deadline: None,
            next_idle_check,
            stats: Stats::default(),
        })
    }

    /// Makes SIGINT and SIGTERM start a graceful shutdown (of every loop).
    pub fn handle_signals(&mut self) -> Result<(), ServerError> {
        let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(ServerError::Setup)?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(ServerError::Setup)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Serves until shut down, then delivers what is queued (up to `--shutdown-timeout`).
    pub fn run(mut self) -> Result<Stats, ServerError> {
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
                    LISTENER | HTTP_LISTENER => self.accept(now),
                    SIGNALS => self.on_signal(now),
                    WAKER => self.on_wake(now),
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
                if self.fanout.trimmed_at() != self.reported_trim {
                    self.reported_trim = self.fanout.trimmed_at();
                    self.sequencer
                        .trimmed(self.reported_trim, self.fanout.backlog());
                }
            }
            self.housekeeping(now);
            if self.shutdown_is_done(now) {
                break;
            }
        }
        self.log_suppressed(Instant::now(), true);
        self.publish(Instant::now(), true);
        // Connections handed over after this loop was done are closed, never served.
        for late in self.board.stopped(self.index) {
            debug!(peer = %late.peer, "closed: the server is shutting down");
        }
        self.stats.messages = self.fanout.log.end_seq();
        self.stats.dropped = self.fanout.dropped;
        Ok(std::mem::take(&mut self.stats))
    }

    /// Woken by another thread: shutdown, connections handed over, input sequenced by another
    /// loop, or a trim that took the pressure which stalled reading below the budget.
    fn on_wake(&mut self, now: Instant) {
        self.board.answer(self.index);
        self.read_stalled = false;
        // Connections accepted before shutdown began are served (drained) like the others.
        self.take_arrivals(now);
        if self.board.shutting_down() {
            self.begin_shutdown(now, "shutdown requested");
        }
        self.sequencer.catch_up(&mut self.fanout.log);
        if !self.unsettled.is_empty() {
            self.settle_ends();
        }
    }

    /// Takes in the connections the acceptor handed to this loop.
    fn take_arrivals(&mut self, now: Instant) {
        let mut arrivals = std::mem::take(&mut self.arrivals);
        self.board.take_arrivals(self.index, &mut arrivals);
        for Arrival {
            socket,
            peer,
            join_at,
            http,
        } in arrivals.drain(..)
        {
            self.admit(socket, peer, join_at, http, now);
        }
        self.arrivals = arrivals;
    }

    fn policy(&self) -> Policy {
        Policy {
            echo_self: self.config.echo_self,
            max_pending: self.config.max_pending,
            slow_consumer: self.config.slow_consumer,
            draining: self.shutdown_deadline.is_some(),
            join_floor: self.board.join_floor(self.index),
        }
    }

    /// Whether reading waits for this loop's own round to trim its log: the round's input
    /// budget is spent. A round is then due or under way, so the poll waits for it rather than
    /// spinning. (Computed, not remembered: the round may have trimmed since the last read.)
    fn own_budget_spent(&self) -> bool {
        self.shutdown_deadline.is_none()
            && self.fanout.untrimmed_held() >= round_input_budget(&self.config) as u64
    }

    /// How long the next poll may block: not at all while work is left over from this turn;
    /// else until the earliest deadline, which goes to the timer (`epoll_wait` would round
    /// it up to whole milliseconds), or for ever when there is none.
    fn poll_timeout(&mut self, now: Instant) -> Option<Duration> {
        let can_read =
            !self.read_queue.is_empty() && !self.read_stalled && !self.own_budget_spent();
        if can_read || self.fanout.in_round() || self.accept_more {
            return Some(Duration::ZERO);
        }
        let paused = self.listening().then_some(self.accept_paused_until);
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
            self.side_deadlines.front().map(|d| d.0),
            self.publish_due(),
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

    /// Whether this loop accepts (loop 0 until shutdown).
    fn listening(&self) -> bool {
        self.listener.is_some() || self.http_listener.is_some()
    }

    /// Accepts on both listeners until `WouldBlock` (they are edge-triggered too), or
    /// [`ACCEPTS_PER_TURN`] connections this turn, coming back next turn for the rest.
    fn accept(&mut self, now: Instant) {
        self.accept_more = false;
        if self.accept_paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.accept_paused_until = None;
        // Each listener goes first every other time, so a connect flood on one cannot keep
        // the other waiting.
        self.http_first = !self.http_first;
        for http in [self.http_first, !self.http_first] {
            if !self.accept_from(http, now) {
                return;
            }
        }
    }

    /// Accepts from one listener; false if accepting must stop for this turn.
    fn accept_from(&mut self, http: bool, now: Instant) -> bool {
        loop {
            if self.accepted_this_turn >= ACCEPTS_PER_TURN {
                self.accept_more = true;
                return false;
            }
            self.accepted_this_turn += 1;
            let listener = if http {
                &self.http_listener
            } else {
                &self.listener
            };
            let Some(listener) = listener else {
                return true;
            };
            let (socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
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
                    return false;
                }
            };
            let Some(to) = self.board.admit(self.config.max_connections) else {
                self.stats.rejected += 1;
                // A flood of connections at the limit gets one line a second, not one each.
                if let Some(unlogged) = self.log_limit.allow("rejected", now) {
                    warn!(
                        peer = %peer,
                        "rejected: {} connections already open (--max-connections); {} more rejected since the last such line",
                        self.board.open(),
                        unlogged
                    );
                }
                continue; // dropping `socket` closes it
            };
            // It joins the order here, before any input read after this accept is sequenced,
            // on whichever loop it is served.
            if to == self.index {
                let join_at = self.sequencer.join_point(&self.fanout.log, None);
                self.admit(socket, peer, join_at, http, now);
                continue;
            }
            let (sequencer, log) = (&self.sequencer, &self.fanout.log);
            let handed = self.board.hand_over(to, socket, peer, http, |floor| {
                sequencer.join_point(log, Some(floor))
            });
            if handed.is_some() {
                // That loop has stopped: the server is shutting down. Dropping it closes it.
                debug!(peer = %peer, "closed: the server is shutting down");
            }
        }
    }

    /// Registers an accepted connection and makes it a receiver of the messages sequenced
    /// from `join_at` on; one from the HTTP listener becomes a receiver only once it upgrades.
    /// (The board counted it already; a failure here uncounts it.)
    fn admit(
        &mut self,
        socket: TcpStream,
        peer: SocketAddr,
        join_at: u64,
        http: bool,
        now: Instant,
    ) {
        if let Err(e) = Connection::configure(&socket) {
            debug!(peer = %peer, "cannot set socket options: {e}");
        }
        let mut socket = match &self.tls {
            None => Stream::Plain(socket),
            Some(config) => match Stream::tls(socket, config) {
                Ok(stream) => stream,
                Err(e) => {
                    warn!(peer = %peer, "cannot start a TLS session: {e}");
                    self.board.closed(self.index);
                    return;
                }
            },
        };
        // A TCP client joins once its TLS handshake is through and its token presented.
        let waits_to_join = !http && (self.token_message.is_some() || self.tls.is_some());
        if waits_to_join {
            self.make_room_to_wait_for_token(now);
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        // With TLS, a client waiting to present its token may need its handshake written when
        // the socket allows.
        let waits_for_token_over_tls = waits_to_join && self.tls.is_some();
        let interest = if http || waits_for_token_over_tls {
            // It is answered outside the flush rounds, as soon as the socket allows.
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut socket, Token(key), interest)
        {
            warn!(peer = %peer, "cannot register connection: {e}");
            self.board.closed(self.index);
            return;
        }
        let decoder = Decoder::new(self.config.protocol, self.config.max_message);
        let id = self.next_id;
        self.next_id += self.board.loops() as u64;
        self.stats.accepted += 1;
        if http {
            let side = Box::new(Side::new(now));
            self.side_deadlines.push_back((side.deadline, key, id));
            let conn = Connection::new(socket, peer, id, decoder, Transport::Side(side), now);
            entry.insert(conn).wants_writable = true;
            if self.shutdown_deadline.is_some() {
                self.closing
                    .push((key, DisconnectReason::Shutdown { owed: false }));
            }
            debug!(peer = %peer, event_loop = self.index, "connected (HTTP)");
            return;
        }
        if waits_to_join {
            // It joins once its handshake is through and it has presented the token (see
            // `drive_auth`).
            let wait = Box::new(AuthWait::new(now));
            self.side_deadlines.push_back((wait.deadline, key, id));
            self.waiting_for_token.push_back((key, id));
            self.board.set_waiting(true);
            let transport = Transport::Auth(wait);
            entry
                .insert(Connection::new(socket, peer, id, decoder, transport, now))
                .wants_writable = waits_for_token_over_tls;
            debug!(peer = %peer, event_loop = self.index, "connected, waiting for its TLS handshake or token");
            if self.shutdown_deadline.is_some() {
                self.closing
                    .push((key, DisconnectReason::Shutdown { owed: false }));
            } else {
                // What arrived before it was registered raises no event.
                self.drive_auth(key);
            }
            return;
        }
        let conn = entry.insert(Connection::new(
            socket,
            peer,
            id,
            decoder,
            Transport::Tcp,
            now,
        ));
        self.fanout.join(key, conn, join_at);
        if self.shutdown_deadline.is_some() {
            // Accepted just before shutdown began: it is drained like the others.
            self.fanout.visit_all_soon();
        }
        debug!(peer = %peer, event_loop = self.index, "connected");
    }

    /// Clients that have not joined yet (TLS handshake, token), over all loops, hold a
    /// quarter of `--max-connections`; past that, each newcomer closes one: the one that has
    /// waited longest here, if it has waited a second (a client that will join needs a round
    /// trip or two), and whatever its age once they hold half. So silent connections cannot
    /// keep a client with the token out nor fill the server, and a burst of clients that join
    /// at once (a reconnect after a restart) is not cut.
    fn make_room_to_wait_for_token(&mut self, now: Instant) {
        let max = self.config.max_connections;
        let (soft, hard) = ((max / 4).max(1), (max / 2).max(1));
        let waiting_since = |c: &Connection| match &c.transport {
            Transport::Auth(wait) => Some(wait.deadline - web::SIDE_TIMEOUT),
            _ => None,
        };
        self.waiting_for_token.retain(|&(key, id)| {
            self.conns
                .get(key)
                .is_some_and(|c| c.id == id && waiting_since(c).is_some())
        });
        let waiting = self.board.waiting();
        if waiting < soft {
            return;
        }
        let Some(&(key, _)) = self.waiting_for_token.front() else {
            return;
        };
        let since = self.conns.get(key).and_then(waiting_since).unwrap_or(now);
        let old = now.saturating_duration_since(since) >= WAIT_BEFORE_DISPLACED;
        if old || waiting >= hard {
            self.waiting_for_token.pop_front();
            self.closing.push((key, DisconnectReason::Displaced));
            // Closed now, so the next accept in this turn finds its place free.
            self.close_pending(now);
        }
    }

    /// Drives the TLS handshake of a client that has not joined yet, then reads its first
    /// message if a token is wanted; once through, the client joins the receivers where the
    /// order ends now (and is sent the `--history` before that), and what it sent after is
    /// read as its input.
    fn drive_auth(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Transport::Auth(wait) = &mut conn.transport else {
            return;
        };
        let expected = self.token_message.as_deref();
        match wait.read(&mut conn.socket, expected, self.config.protocol) {
            Authenticated::Pending => {}
            Authenticated::No(reason) => self.closing.push((key, reason)),
            Authenticated::Yes => {
                conn.transport = Transport::Tcp;
                self.board.set_waiting(false);
                if conn.wants_writable {
                    // Registered for the TLS handshake's writes: a receiver's interest is
                    // kept in step with its flushes from here on.
                    let registered = self.poll.registry().reregister(
                        &mut conn.socket,
                        Token(key),
                        Interest::READABLE,
                    );
                    if let Err(e) = registered {
                        self.closing.push((key, DisconnectReason::Reset(e)));
                        return;
                    }
                    conn.wants_writable = false;
                }
                let join_at = self.sequencer.join_point(&self.fanout.log, None);
                self.fanout.join(key, conn, join_at);
                // Edge-triggered: what followed the token or the handshake raises no new event.
                conn.queued = true;
                self.read_queue.push_back((key, conn.id));
                debug!(peer = %conn.peer, event_loop = self.index, "joined");
            }
        }
    }

    /// Reads, answers or upgrades a side connection (see [`Side::drive`]).
    fn drive_side(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(conn.transport, Transport::Auth(_)) {
            return self.drive_auth(key);
        }
        let Transport::Side(side) = &mut conn.transport else {
            return;
        };
        let token = self.config.auth_token.as_ref();
        match side.drive(&mut conn.socket, &self.origins, token) {
            SideEvent::Pending => {}
            SideEvent::Done(reason) => self.closing.push((key, reason)),
            SideEvent::Upgrade { accept, rest } => self.upgrade(key, &accept, rest),
        }
    }

    /// An HTTP connection upgraded: it becomes a WebSocket receiver of the messages sequenced
    /// from now on, its `101` the first thing it is written.
    fn upgrade(&mut self, key: usize, accept: &str, rest: bytes::BytesMut) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let registered =
            self.poll
                .registry()
                .reregister(&mut conn.socket, Token(key), Interest::READABLE);
        if let Err(e) = registered {
            // Still a side connection: it is closed as one (it never joined the receivers).
            self.closing.push((key, DisconnectReason::Reset(e)));
            return;
        }
        let ws = WsState::new(self.config.max_message, self.config.protocol, accept, rest);
        conn.transport = Transport::Ws(Box::new(ws));
        conn.wants_writable = false;
        conn.blocked = false;
        let join_at = self.sequencer.join_point(&self.fanout.log, None);
        self.fanout.join(key, conn, join_at);
        self.fanout.wake(key, conn);
        // Frames that came with the head, and whatever the socket holds beyond it.
        conn.queued = true;
        self.read_queue.push_back((key, conn.id));
        debug!(peer = %conn.peer, event_loop = self.index, "upgraded to WebSocket");
    }

    fn on_signal(&mut self, now: Instant) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        if let Some(sig) = signals.pending().next() {
            let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
            self.board.request_shutdown();
            self.begin_shutdown(now, name);
        }
    }

    fn on_ready(&mut self, key: usize, event: &Event) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // closed earlier in this batch
        };
        if !conn.is_member() {
            self.drive_side(key);
            return;
        }
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
    /// With several loops the input counts from the last trim of the loop that trimmed least
    /// (the sequencer's pressure): one loop in a long round holds every loop's reading back,
    /// as its own round does with one loop. A loop held back by another waits to be woken by
    /// that loop's trim. During shutdown input is read and thrown away.
    fn read_queued(&mut self, now: Instant) {
        let budget = round_input_budget(&self.config);
        let draining = self.shutdown_deadline.is_some();
        for _ in 0..self.read_queue.len() {
            let untrimmed = usize::try_from(self.fanout.untrimmed_held()).unwrap_or(usize::MAX);
            let taken = untrimmed.max(self.sequencer.pressure());
            if !draining && taken >= budget {
                // At its own budget this loop waits for its round (see `poll_timeout`);
                // held back by another loop, it waits to be woken.
                if untrimmed < budget && self.sequencer.stall() {
                    self.read_stalled = true;
                }
                break;
            }
            let Some((key, id)) = self.read_queue.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) else {
                continue;
            };
            if !conn.is_member() {
                conn.queued = false; // driven by its own events
                continue;
            }
            let result = if draining {
                conn.discard(&mut self.bufs.scratch, READ_BUDGET, now)
            } else {
                // Loops read at the same time against the same pressure: each takes its share
                // of what is left (and reads at least once), so together they pass the budget
                // by one read per loop at most.
                let room = ((budget - taken) / self.board.loops()).max(1);
                conn.read(&mut self.bufs, READ_BUDGET, room, now)
            };
            // What was read before an error or the end is relayed all the same.
            let read = self.bufs.batch.len();
            let ticket = self
                .sequencer
                .sequence(&mut self.bufs.batch, &mut self.fanout.log);
            conn.last_ticket = conn.last_ticket.max(ticket);
            self.bufs.shrink(read);
            if conn.has_ctrl() {
                // A pong, or what the TLS session wants sent (its handshake) that the socket
                // did not take at once.
                self.fanout.wake(key, conn);
            }
            match result {
                Ok(Input::More) => self.read_queue.push_back((key, id)),
                Ok(Input::Drained) => conn.queued = false,
                Ok(Input::Eof) => {
                    conn.queued = false;
                    // Owed what was sequenced before its end, on any loop (in a cluster, once
                    // its own last messages are in the order).
                    input_ended(
                        &self.sequencer,
                        &mut self.fanout,
                        &mut self.unsettled,
                        &mut self.side_deadlines,
                        (key, conn),
                        now,
                    );
                    debug!(peer = %conn.peer, "client closed its sending side");
                }
                Err(reason) if web::close_frame_for(&reason).is_some() && !draining => {
                    // A WebSocket client's close, or its fault: like an end of stream, it is
                    // first sent what was sequenced before (its own messages included), then
                    // the close frame; all within the side deadline (it may not be idle, but
                    // it must not hold its backlog for ever by never reading it).
                    conn.queued = false;
                    input_ended(
                        &self.sequencer,
                        &mut self.fanout,
                        &mut self.unsettled,
                        &mut self.side_deadlines,
                        (key, conn),
                        now,
                    );
                    if reason.is_failure() {
                        // Logged now: however the connection ends later (a time-out, a slow
                        // consumer, a reset), the fault is what the operator needs to see.
                        if let Some(suppressed) = self.log_limit.allow(reason.kind(), now) {
                            warn!(peer = %conn.peer, suppressed, "closing: {reason}");
                        }
                    }
                    conn.end = Some(reason);
                    let by = now + web::SIDE_TIMEOUT;
                    conn.end_by = Some(by);
                    self.side_deadlines.push_back((by, key, conn.id));
                }
                Err(reason) => {
                    conn.queued = false;
                    self.closing.push((key, reason));
                }
            }
        }
        if !self.unsettled.is_empty() {
            self.settle_ends();
        }
    }

    /// Clients whose input ended wait for their last messages to be in the order (at once,
    /// but in a cluster until they came back from the backplane); then they are owed up to
    /// where the order ends, and visited.
    fn settle_ends(&mut self) {
        let mut i = 0;
        while i < self.unsettled.len() {
            let (key, id, ticket) = self.unsettled[i];
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) else {
                self.unsettled.swap_remove(i);
                continue;
            };
            let draining = self.shutdown_deadline.is_some();
            if !self.sequencer.settled(ticket) && !draining {
                i += 1;
                continue;
            }
            self.unsettled.swap_remove(i);
            conn.eof_at = Some(self.sequencer.join_point(&self.fanout.log, None));
            self.fanout.wake(key, conn);
        }
    }

    /// Closes the connections queued in `closing`, logging each with its peer and reason. A
    /// WebSocket client closed for a reason a close frame says is sent that frame first (it
    /// leaves the receivers and closes once the frame was taken and the client closed).
    fn close_pending(&mut self, now: Instant) {
        while !self.closing.is_empty() {
            let mut closing = std::mem::take(&mut self.closing);
            for (key, reason) in closing.drain(..) {
                self.close(key, reason, now);
            }
            if self.closing.is_empty() {
                self.closing = closing; // keeps its capacity
            }
        }
    }

    fn close(&mut self, key: usize, reason: DisconnectReason, now: Instant) {
        if let Some(conn) = self.conns.get_mut(key) {
            let ws = matches!(conn.transport, Transport::Ws(_));
            // Also while shutting down: a client that sent its close before is answered (the
            // deadline closes what is left).
            if let Some(frame) = web::close_frame_for(&reason).filter(|_| ws) {
                self.fanout
                    .leave((conn.member_index, conn.id), true, &mut self.conns);
                let conn = &mut self.conns[key];
                conn.say_goodbye(frame, reason, now);
                let registered = self.poll.registry().reregister(
                    &mut conn.socket,
                    Token(key),
                    Interest::READABLE | Interest::WRITABLE,
                );
                if let Err(e) = registered {
                    self.closing.push((key, DisconnectReason::Reset(e)));
                    return;
                }
                conn.wants_writable = true;
                self.side_deadlines
                    .push_back((now + web::SIDE_TIMEOUT, key, conn.id));
                self.drive_side(key);
                return;
            }
        }
        {
            let Some(mut conn) = self.conns.try_remove(key) else {
                return; // already closed for an earlier reason this turn
            };
            if conn.is_member() {
                let websocket = conn.is_websocket();
                self.fanout
                    .leave((conn.member_index, conn.id), websocket, &mut self.conns);
            }
            if matches!(conn.transport, Transport::Auth(_)) {
                self.board.set_waiting(false);
            }
            self.board.closed(self.index);
            // Closing the socket removes it from epoll anyway; a failure here changes nothing.
            let _ = self.poll.registry().deregister(&mut conn.socket);
            if reason.aborts() {
                conn.abort_on_close();
            } else {
                // An orderly end: under TLS a close_notify first, so the client can tell it
                // from a cut (it follows all it was sent; best effort: the socket has room
                // for it unless the client stopped reading, and then it is a cut).
                conn.end_tls();
                if matches!(reason, DisconnectReason::Shutdown { .. }) {
                    // Unread input would turn the close into a reset that destroys what the
                    // client has not read yet; read it first. A failure is beside the point.
                    let _ = conn.discard(&mut self.bufs.scratch, READ_BUDGET, now);
                }
            }
            *self.stats.disconnects.entry(reason.kind()).or_default() += 1;
            self.disconnect_counts.disconnected(reason.kind());
            let (peer, dropped) = (conn.peer, conn.dropped);
            // Closed before it is logged: whoever reads the line may rely on it.
            drop(conn);
            if reason.is_quiet() {
                debug!(peer = %peer, dropped, "disconnected: {reason}");
                return;
            }
            // Clients can cause these by the thousand: one line a second per kind.
            let Some(suppressed) = self.log_limit.allow(reason.kind(), now) else {
                return;
            };
            if reason.is_failure() {
                warn!(peer = %peer, dropped, suppressed, "disconnected: {reason}");
            } else {
                info!(peer = %peer, dropped, suppressed, "disconnected: {reason}");
            }
        }
    }

    /// This loop's counters as `--metrics` reports them.
    fn counts(&self) -> Counts {
        Counts {
            accepted: self.stats.accepted,
            rejected: self.stats.rejected,
            messages: self.fanout.log.end_seq(),
            bytes_in: self.bufs.bytes_in,
            bytes_out: self.fanout.bytes_out,
            dropped: self.fanout.dropped,
            log_bytes: self.fanout.held() as u64,
            disconnects: self.disconnect_counts.disconnects,
        }
    }

    /// When the counters are to be published: only while they differ from what was.
    fn publish_due(&self) -> Option<Instant> {
        self.next_publish
            .filter(|_| self.counts() != self.published)
    }

    /// Publishes the counters for a scrape if they changed and it is time (or `now` is the end).
    fn publish(&mut self, now: Instant, last: bool) {
        let Some(at) = self.next_publish else {
            return;
        };
        if now < at && !last {
            return;
        }
        let counts = self.counts();
        if counts != self.published {
            self.board.published()[self.index].store(&counts);
            self.published = counts;
            self.next_publish = Some(later(now, PUBLISH_EVERY));
        }
    }

    /// Timers: idle clients (not while shutting down: then the shutdown timeout bounds the
    /// wait, and a client still being sent its backlog must not be cut off), paused or
    /// unfinished accepts, counts of log lines not written.
    fn housekeeping(&mut self, now: Instant) {
        self.log_suppressed(now, false);
        self.publish(now, false);
        if let (Some(timeout), Some(at), None) = (
            self.config.idle_timeout,
            self.next_idle_check,
            self.shutdown_deadline,
        ) {
            if now >= at {
                let mut pinged = Vec::new();
                let log = &self.fanout.log;
                for &(key, _) in self.fanout.members() {
                    let Some(conn) = self.conns.get(key) else {
                        continue;
                    };
                    // A client that closed its side and is still being sent its backlog is
                    // not idle: it has nothing more to send.
                    let owed_after_eof = conn.eof_at.is_some() && conn.cursor.is_behind(log);
                    let quiet = now.saturating_duration_since(conn.last_input);
                    if !owed_after_eof && quiet >= timeout {
                        self.closing.push((key, DisconnectReason::Idle(timeout)));
                    } else if quiet >= timeout / 2 && matches!(conn.transport, Transport::Ws(_)) {
                        // A WebSocket client is asked for a pong, which counts as input.
                        pinged.push(key);
                    }
                }
                for key in pinged {
                    if let Some(conn) = self.conns.get_mut(key) {
                        if let Transport::Ws(ws) = &mut conn.transport {
                            ws.ping();
                        }
                        self.fanout.wake(key, conn);
                    }
                }
                self.close_pending(now);
                self.next_idle_check = Some(later(now, idle_check_every(timeout)));
            }
        }
        if self.accept_more || self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept(now);
        }
        while let Some(&(deadline, key, id)) = self.side_deadlines.front() {
            if deadline > now {
                break;
            }
            self.side_deadlines.pop_front();
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) else {
                continue;
            };
            if let Transport::Side(side) = &mut conn.transport {
                if side.deadline <= now {
                    let reason = side.timed_out();
                    self.closing.push((key, reason));
                }
            } else if matches!(&conn.transport, Transport::Auth(wait) if wait.deadline <= now) {
                let reason = if conn.socket.is_handshaking() {
                    DisconnectReason::TlsHandshakeTimeout
                } else {
                    DisconnectReason::Auth(AuthFailure::NoToken)
                };
                self.closing.push((key, reason));
            } else if conn.eof_at == Some(u64::MAX) {
                // Its last messages did not come back in time: owed what is here.
                conn.eof_at = Some(self.sequencer.join_point(&self.fanout.log, None));
                self.unsettled.retain(|&(k, i, _)| (k, i) != (key, id));
                self.fanout.wake(key, conn);
            } else if conn.end_by.is_some_and(|by| by <= now) {
                // A WebSocket client that closed and has not taken what it was owed since.
                self.closing.push((key, DisconnectReason::HttpTimeout));
            }
        }
        self.close_pending(now);
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
        for mut listener in [self.listener.take(), self.http_listener.take()]
            .into_iter()
            .flatten()
        {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        // HTTP requests not answered yet, and WebSocket clients being closed, are no
        // receivers: nothing is owed to them.
        for (key, conn) in &self.conns {
            if !conn.is_member() {
                self.closing
                    .push((key, DisconnectReason::Shutdown { owed: false }));
            }
        }
        self.close_pending(now);
        // Nothing is accepted any more: no pause to wait out.
        self.accept_paused_until = None;
        self.accept_more = false;
        if self.index == 0 {
            info!(
                "shutting down ({why}): refusing new connections, delivering queued messages for up to {}s",
                self.config.shutdown_timeout.as_secs_f64()
            );
        }
        // The shutdown flag is set: nothing is sequenced any more, and this takes in all that
        // was, so this loop's log now ends where the order ends.
        self.sequencer.catch_up(&mut self.fanout.log);
        // Everyone is visited once more: those sent all are half-closed at once.
        self.fanout.visit_all_soon();
        self.shutdown_deadline = Some(later(now, self.config.shutdown_timeout));
        // Those waiting for their last messages to come back get what is here.
        self.settle_ends();
    }

    /// During shutdown: done once every client has been sent all it was owed and has closed
    /// its side after our end of stream, or when the deadline passes (those left are then
    /// closed with a log line saying whether they were still owed anything).
    fn shutdown_is_done(&mut self, now: Instant) -> bool {
        let Some(deadline) = self.shutdown_deadline else {
            return false;
        };
        if self.conns.is_empty() {
            if self.board.stop_if_idle(self.index) {
                return true;
            }
            // Handed over before the acceptor saw the shutdown (its wake may still be
            // pending): served and drained like the rest.
            self.take_arrivals(now);
            return false;
        }
        if now < deadline {
            return false;
        }
        // Side connections (a close frame being written, or lingering) are owed nothing
        // more of the log.
        for (key, conn) in &self.conns {
            if !conn.is_member() {
                self.closing
                    .push((key, DisconnectReason::Shutdown { owed: false }));
            }
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
        // The server writes one line for all loops once they are done (see `Server::run`).
        self.close_pending(now);
        self.stats.cut_off = Some(CutOff {
            owed: owed_peers,
            unclosed,
        });
        true
    }
}

/// A client's input ended (its end of stream, a WebSocket close or fault): it is owed up to
/// where the order ends once its own last messages are in it: at once, but in a cluster once
/// they came back from Redis (see `EventLoop::settle_ends`), and not later than the side
/// deadline (they may never come back: a Redis that lost them).
fn input_ended(
    sequencer: &Sequencer,
    fanout: &mut Fanout,
    unsettled: &mut Vec<(usize, u64, u64)>,
    side_deadlines: &mut VecDeque<(Instant, usize, u64)>,
    (key, conn): (usize, &mut Connection),
    now: Instant,
) {
    if sequencer.settled(conn.last_ticket) {
        conn.eof_at = Some(sequencer.join_point(&fanout.log, None));
        fanout.wake(key, conn);
    } else {
        conn.eof_at = Some(u64::MAX);
        unsettled.push((key, conn.id, conn.last_ticket));
        side_deadlines.push_back((now + web::SIDE_TIMEOUT, key, conn.id));
    }
}

/// A client that has not joined is displaced by a newcomer (past a quarter of
/// `--max-connections` waiting) only once it has waited this long.
const WAIT_BEFORE_DISPLACED: Duration = Duration::from_secs(1);

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
