//! The server: `--threads` event loops, each a `mio::Poll` with a slab of connections and its
//! own view of the one log, and a sequencer that gives all input one total order.
//!
//! Loop 0 accepts and hands each connection to the loop with the fewest (before it is
//! registered: a mio source stays with its first poll). A connection stays on its loop. Input
//! read on any loop goes to the sequencer one read batch at a time; every loop appends what was
//! sequenced, in the same order, to its own log and flushes its own receivers from it
//! (`event_loop.rs`, `sequencer.rs`, `board.rs`). With one loop the sequencer is a plain append.

mod auth;
mod board;
mod connection;
mod cursor;
mod disconnect;
mod event_loop;
mod fanout;
mod inbox;
mod listener;
mod log;
mod metrics;
mod pack;
mod ratelimit;
mod rendition;
mod sequencer;
mod stream;
mod timer;
mod tls;
mod web;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use tracing::{debug, error, info, warn};

use crate::cluster::{Backplane, Health, Outbox};
use crate::config::ServerConfig;
use crate::sys;
pub use board::Board;
pub use cursor::{Cursor, Flushed};
pub use disconnect::DisconnectReason;
use event_loop::{round_input_budget, EventLoop, LoopSetup};
pub use inbox::{reserve_for_read, Inbox, READ_BLOCK};
pub use log::{Entry, Log, ENTRY_OVERHEAD};
pub use sequencer::{Order, Sequencer};

/// Why the server could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid settings: {0}")]
    Config(String),
    #[error("{0}")]
    Tls(String),
    #[error("cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot set up the event loop: {0}")]
    Setup(io::Error),
    #[error("event loop failed: {0}")]
    Poll(io::Error),
    #[error("event loop {0} panicked (see the log above)")]
    Panicked(usize),
}

/// Counters kept over the server's life, returned by [`Server::run`] and logged at the end.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections closed at once because `--max-connections` were open.
    pub rejected: u64,
    /// Messages relayed (given a place in the order).
    pub messages: u64,
    /// Messages skipped for slow consumers under `--slow-consumer drop`.
    pub dropped: u64,
    /// Closed connections by [`DisconnectReason::kind`].
    pub disconnects: BTreeMap<&'static str, u64>,
    /// Set when the shutdown timeout was reached with clients still connected.
    pub cut_off: Option<CutOff>,
}

/// The clients a graceful shutdown closed at its deadline.
#[derive(Debug, Default, Clone)]
pub struct CutOff {
    /// Those still owed data (reset).
    pub owed: Vec<SocketAddr>,
    /// Those sent all that had not closed their side.
    pub unclosed: u64,
}

impl CutOff {
    /// One line for the whole server (never rate-limited: it is the last word on what was
    /// lost), naming the first few clients that did not get all they were owed.
    fn log(&self) {
        const NAMED: usize = 5;
        let unclosed = self.unclosed;
        if self.owed.is_empty() {
            info!(
                unclosed,
                "shutdown timeout reached: {unclosed} clients were sent all but had not closed their side; closed them"
            );
            return;
        }
        let named: Vec<String> = self
            .owed
            .iter()
            .take(NAMED)
            .map(|p| p.to_string())
            .collect();
        warn!(
            owed = self.owed.len(),
            unclosed,
            "shutdown timeout reached before all was sent: {} clients still owed data were reset ({}{})",
            self.owed.len(),
            named.join(", "),
            if self.owed.len() > NAMED { ", ..." } else { "" }
        );
    }
}

impl Stats {
    /// Adds another loop's counters (every loop saw every message: those are not added).
    fn merge(&mut self, other: Stats) {
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        self.messages = self.messages.max(other.messages);
        self.dropped += other.dropped;
        for (kind, n) in other.disconnects {
            *self.disconnects.entry(kind).or_default() += n;
        }
        if let Some(theirs) = other.cut_off {
            let ours = self.cut_off.get_or_insert_with(CutOff::default);
            ours.owed.extend(theirs.owed);
            ours.unclosed += theirs.unclosed;
        }
    }
}

/// Asks a running server, from any thread, to shut down gracefully.
#[derive(Clone)]
pub struct ShutdownHandle {
    board: Arc<Board>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.board.request_shutdown();
    }
}

/// A bound, not yet running, multi-echo server.
pub struct Server {
    /// The event loops; loop 0 holds the listener.
    loops: Vec<EventLoop>,
    board: Arc<Board>,
    /// The address actually bound (with the real port when asked for port 0).
    local_addr: SocketAddr,
    /// The HTTP listener's address (`--http`), with its real port.
    http_addr: Option<SocketAddr>,
    /// The `--metrics` listener, until `run` serves it, and its address.
    metrics: Option<mio::net::TcpListener>,
    metrics_addr: Option<SocketAddr>,
    config: Arc<ServerConfig>,
    /// With `--cluster`: the order the backplane's reader posts to, and the loops' outbox.
    cluster: Option<(Arc<Order>, Arc<Outbox>)>,
}

impl Server {
    /// Binds the listening socket, raises the open-files limit and sets up the event loops;
    /// nothing is served until [`run`](Self::run).
    pub fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        match sys::raise_open_files_limit() {
            // Each loop holds three descriptors of its own (epoll, waker, timer).
            Ok(limit)
                if (limit as usize)
                    < config
                        .max_connections
                        .saturating_add(32 + 3 * config.threads) =>
            {
                warn!(
                    "open-files limit is {limit}: fewer than --max-connections {} can be served \
                 (raise the hard limit with ulimit -Hn)",
                    config.max_connections
                )
            }
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
        // Before binding: a bad certificate is found before anyone can connect.
        let tls = match &config.tls {
            Some(files) => Some(tls::load(files).map_err(ServerError::Tls)?),
            None => None,
        };
        let addr = config.listen;
        let listener = listener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let http = match config.http {
            Some(addr) => {
                let listener =
                    listener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| ServerError::Bind { addr, source })?;
                Some((listener, bound))
            }
            None => None,
        };
        let http_addr = http.as_ref().map(|(_, addr)| *addr);
        let (metrics, metrics_addr) = match config.metrics {
            Some(addr) => {
                // The same set-up as the other listeners (SO_REUSEADDR: a restart can bind it).
                let listener =
                    listener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| ServerError::Bind { addr, source })?;
                (Some(listener), Some(bound))
            }
            None => (None, None),
        };
        let mut http_listener = http.map(|(listener, _)| listener);
        let mut setups = Vec::with_capacity(config.threads);
        let mut wakers = Vec::with_capacity(config.threads);
        for _ in 0..config.threads {
            let (setup, waker) = LoopSetup::new(tls.clone())?;
            setups.push(setup);
            wakers.push(waker);
        }
        let board = Arc::new(Board::new(wakers));
        // A cluster node orders what comes back from the backplane, with one loop too.
        let order = (config.threads > 1 || config.cluster.is_some())
            .then(|| Order::new(Arc::clone(&board), round_input_budget(&config)));
        let outbox = config
            .cluster
            .as_ref()
            .map(|_| Outbox::new(Arc::clone(&board), round_input_budget(&config)));
        let config = Arc::new(config);
        let mut listener = Some(listener);
        let mut loops = Vec::with_capacity(config.threads);
        for (index, setup) in setups.into_iter().enumerate() {
            let sequencer = match (&order, &outbox) {
                (Some(order), Some(outbox)) => order.cluster_member(index, Arc::clone(outbox)),
                (Some(order), None) => order.member(index),
                (None, _) => Sequencer::Alone,
            };
            loops.push(EventLoop::new(
                index,
                setup,
                listener.take(),
                http_listener.take(),
                Arc::clone(&config),
                Arc::clone(&board),
                sequencer,
            )?);
        }
        Ok(Server {
            loops,
            board,
            local_addr,
            http_addr,
            metrics,
            metrics_addr,
            cluster: order.zip(outbox),
            config,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address HTTP and WebSocket clients connect to (`--http`), if served.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The address `/metrics` and `/healthz` are served on (`--metrics`), if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Makes SIGINT and SIGTERM start a graceful shutdown.
    pub fn handle_signals(&mut self) -> Result<(), ServerError> {
        self.loops[0].handle_signals()
    }

    /// A handle that stops this server from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            board: Arc::clone(&self.board),
        }
    }

    /// Serves until shut down, then delivers what is queued (up to `--shutdown-timeout`).
    /// Loop 0 runs on the calling thread, the others on threads of their own; a loop that
    /// fails or panics shuts the others down.
    pub fn run(self) -> Result<Stats, ServerError> {
        let c = &self.config;
        info!(
            "serving {}{} on {} with {} event loop{} (max {} connections, message ≤ {} B, pending ≤ {} B, slow consumers: {})",
            c.protocol,
            if c.tls.is_some() { " over TLS" } else { "" },
            self.local_addr,
            c.threads,
            if c.threads == 1 { "" } else { "s" },
            c.max_connections,
            c.max_message,
            c.max_pending,
            c.slow_consumer,
        );
        let mut loops = self.loops.into_iter();
        let first = loops.next().expect("at least one event loop");
        let mut threads = Vec::new();
        let mut failure = None;
        // Scrapes are answered until every loop has stopped (the drain included).
        let metrics =
            match self.metrics {
                Some(listener) => {
                    let spawned = metrics::Endpoint::new(listener, Arc::clone(&self.board))
                        .and_then(|(endpoint, stop)| {
                            let handle = thread::Builder::new().name("mob-metrics".into()).spawn(
                                move || {
                                    if let Err(e) = endpoint.run() {
                                        // The server goes on; its scrapes fail from now on.
                                        error!("the metrics endpoint stopped: {e}");
                                    }
                                },
                            )?;
                            Ok((stop, handle))
                        });
                    match spawned {
                        Ok(running) => Some(running),
                        Err(e) => {
                            failure = Some(ServerError::Setup(e));
                            self.board.request_shutdown();
                            None
                        }
                    }
                }
                None => None,
            };
        let backplane = match (&self.config.cluster, &self.cluster) {
            (Some(cluster), Some((order, outbox))) => {
                let overhead = log::entry_overhead(c.threads);
                let health = Arc::new(Health::default());
                let _ = self.board.cluster.set(Arc::clone(&health));
                let started = Backplane::start(
                    cluster,
                    c.protocol,
                    Arc::clone(order),
                    Arc::clone(outbox),
                    Arc::clone(&self.board),
                    move |len| log::counted(len, overhead),
                    health,
                );
                match started {
                    Ok(b) => Some(b),
                    Err(e) => {
                        failure = Some(ServerError::Config(e));
                        self.board.request_shutdown();
                        None
                    }
                }
            }
            _ => None,
        };
        for event_loop in loops {
            let index = threads.len() + 1;
            let board = Arc::clone(&self.board);
            let spawned = thread::Builder::new()
                .name(format!("mob-loop-{index}"))
                .spawn(move || run_loop(index, event_loop, &board));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    failure = Some(ServerError::Setup(e));
                    self.board.request_shutdown();
                    break;
                }
            }
        }
        let mut stats = Stats::default();
        let mut results = vec![run_loop(0, first, &self.board)];
        results.extend(
            threads
                .into_iter()
                .enumerate()
                .map(|(i, handle)| handle.join().unwrap_or(Err(ServerError::Panicked(i + 1)))),
        );
        for result in results {
            match result {
                Ok(loop_stats) => stats.merge(loop_stats),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(backplane) = backplane {
            // The shutdown flag is set: both threads stop within one blocking read.
            backplane.join();
        }
        if let Some((stop, handle)) = metrics {
            // It never blocks on a scraper: woken, it returns at once.
            stop.stop();
            if handle.join().is_err() {
                warn!("the metrics endpoint panicked");
            }
        }
        // Every loop has closed its clients: whoever reads the line may rely on that.
        if let Some(cut_off) = &stats.cut_off {
            cut_off.log();
        }
        info!(
            "stopped: {} connections served, {} rejected, {} messages relayed, {} dropped for slow consumers, disconnects {:?}",
            stats.accepted, stats.rejected, stats.messages, stats.dropped, stats.disconnects
        );
        match failure {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}

/// Runs one loop; if it fails or panics, the other loops are asked to shut down.
fn run_loop(index: usize, event_loop: EventLoop, board: &Board) -> Result<Stats, ServerError> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| event_loop.run()))
        .unwrap_or(Err(ServerError::Panicked(index)));
    if let Err(e) = &result {
        error!("event loop {index} stopped: {e}; shutting the server down");
        board.request_shutdown();
    }
    result
}
