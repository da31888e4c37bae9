//! `mob bench`: a load generator for broadcast servers, and the checker of what they deliver.
//!
//! Every socket, publishers and subscribers alike, is driven from one mio event loop, so the
//! bench uses one core and leaves the other to the server. Each payload carries its publisher,
//! sequence number and send time; every subscriber checks that each publisher's messages arrive
//! once, in order, and records latency in an HDR histogram.
//!
//! Closed loop (`--rate 0`): a publisher is never more than `--window` messages ahead of the
//! slowest subscriber, so no server is pushed into dropping slow consumers. Open loop
//! (`--rate R`): R messages per second in total, each stamped with the time it was *due*, so a
//! server (or bench) that falls behind shows in the latency instead of hiding it.
//!
//! Several addresses (the nodes of one cluster): subscribers and publishers are spread over
//! them round-robin ([`nodes`]), every subscriber must hear a sync from every node that has a
//! publisher before the clock starts, and for servers that promise one order to all (mob) the
//! subscribers' orders are compared at the end ([`check::OrderDigest`]): the per-publisher
//! check alone would pass a cluster whose nodes interleave publishers differently.
//!
//! Many connections: they are opened without blocking, at most [`CONNECTING_AT_ONCE`] being
//! set up at a time (TCP connect, then TLS handshake and WebSocket upgrade), each sending its
//! greeting as soon as it is connected; `--source` spreads them over several local addresses
//! (`sources.rs`), each with its own ephemeral ports.

mod check;
pub mod nodes;
pub mod payload;
mod report;
mod sources;
pub mod target;
mod transport;
mod ws;

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, SockRef, Socket, Type};

use crate::client::{tls, Access};
use crate::sys;
use check::{Arrival, Checker, OrderDigest};
pub use report::Report;
pub use target::Target;

use payload::{Stamp, SYNC_PUBLISHER};
use target::{Endpoint, Item};
use transport::Transport;

/// Longest wait for one connection: a server whose accept queue is full makes the kernel
/// retry the handshake for minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections being set up at once (connecting, in their TLS handshake or waiting for
/// the WebSocket upgrade's answer). It bounds the handshakes in flight, not the server's accept
/// queue: a plain TCP connection counts as set up once the kernel has completed its handshake,
/// whether or not the server has accepted it yet, so a server that accepts more slowly than
/// this bench connects can still see its listen queue overflow (its SYNs are dropped and
/// retried a second later; none fails). For TLS clients it keeps the burst under
/// the quarter of the default `--max-connections` that mob lets wait for a handshake or a
/// token before displacing the longest waiting.
const CONNECTING_AT_ONCE: usize = 256;
/// Longest wait for every connection and subscription before the clock starts.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the sync message is sent again while subscribers have not seen it.
const SYNC_AGAIN: Duration = Duration::from_millis(500);
/// After the run, longest wait for messages still in flight before counting them lost...
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// ...and the wait once nothing arrives any more (a server that lost messages).
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// After the report, longest wait for the server to close connections cleanly.
const HANG_UP_TIMEOUT: Duration = Duration::from_secs(2);
/// A publisher stops encoding (its messages become late) while this much is unsent.
const OUT_CAP: usize = 4 << 20;
/// Read block for the shared scratch buffer.
const READ_BLOCK: usize = 256 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// One address, or the nodes of one cluster (connections spread round-robin).
    pub addrs: Vec<String>,
    pub target: Target,
    pub subscribers: usize,
    pub publishers: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages per second in total; 0 is closed loop.
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    /// Before the warm-up, every connection held open and quiet this long (`--idle`), so a
    /// server's memory can be read with all of them connected and none sending.
    pub idle: Duration,
    /// Closed loop: most messages a publisher may be ahead of its slowest subscriber.
    pub window: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// TLS and the token, for servers that want them.
    pub access: Access,
    /// Local addresses to connect from, taken in turn (round-robin); empty:
    /// the kernel's choice.
    pub sources: Vec<IpAddr>,
}

impl BenchConfig {
    /// The window used when none is given: as many messages as fit in 1 MiB, 16 to 1000.
    pub fn default_window(size: usize) -> usize {
        ((1 << 20) / size.max(1)).clamp(16, 1000)
    }
}

/// Runs the bench and returns its report.
pub fn run(config: BenchConfig) -> anyhow::Result<Report> {
    if config.size < payload::HEADER_LEN {
        bail!(
            "--size must be at least {} bytes (the payload header)",
            payload::HEADER_LEN
        );
    }
    if config.subscribers == 0 || config.publishers == 0 {
        bail!("need at least one publisher and one subscriber");
    }
    if config.target == Target::MobRaw && config.publishers > 1 {
        bail!("mob-raw has no message boundaries: chunks of several publishers interleave at any byte, so it takes --publishers 1");
    }
    if config.window == 0 {
        bail!("--window must be at least 1");
    }
    if config.addrs.is_empty() {
        bail!("need at least one address");
    }
    let open_files = match sys::raise_open_files_limit() {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!("cannot raise the open-files limit: {e}");
            None
        }
    };
    if config.access.token.is_some() && !config.target.takes_token() {
        bail!(
            "--token-file is mob's token; --target {} has no place for it",
            config.target
        );
    }
    let mut endpoints = Vec::with_capacity(config.addrs.len());
    for addr in &config.addrs {
        let mut endpoint = Endpoint::parse(addr, config.target, config.access.tls.is_some())
            .map_err(anyhow::Error::msg)?;
        endpoint.token = config.access.token.clone();
        let resolved = resolve(&endpoint.authority)?;
        endpoints.push((resolved, endpoint));
    }
    check_sources(&config, &endpoints)?;
    let connections = config.subscribers + config.publishers;
    // Besides its connections the bench holds a few descriptors of its own (stdio, the
    // poller, files opened while it starts).
    const OWN_FILES: u64 = 16;
    if let Some(limit) = open_files.filter(|&l| connections as u64 + OWN_FILES > l) {
        bail!(
            "{connections} connections and {OWN_FILES} files of the bench's own need {} open \
             files, and this process may open {limit} (ulimit -n; raise the hard limit)",
            connections as u64 + OWN_FILES
        );
    }
    let mut bench = Bench::new(config, endpoints)?;
    let started = Instant::now();
    bench.set_up()?;
    bench.setup_s = started.elapsed().as_secs_f64();
    bench.idle()?;
    bench.measure()?;
    bench.drain()?;
    let report = bench.report();
    bench.hang_up();
    Ok(report)
}

/// Every source address must be of the servers' family, and no pair of a source and a server
/// may need more connections than there are ephemeral ports (see `sources.rs`).
fn check_sources(config: &BenchConfig, endpoints: &[(SocketAddr, Endpoint)]) -> anyhow::Result<()> {
    // The same address twice would be counted as two, each with its own ports: it has one set.
    for (k, ip) in config.sources.iter().enumerate() {
        if config.sources[..k].contains(ip) {
            bail!("--source {ip} is given twice: each source address has one set of ports");
        }
    }
    for &ip in &config.sources {
        if let Some((server, _)) = endpoints
            .iter()
            .find(|(server, _)| !sources::same_family(ip, *server))
        {
            bail!("--source {ip} cannot reach {server}: one is IPv4, the other IPv6");
        }
    }
    let Some(range) = sources::local_port_range() else {
        return Ok(());
    };
    let ports = range.len();
    let n = config.sources.len();
    let pairs = roles(config)
        .enumerate()
        .map(|(k, role)| (sources::of_connection(k, n), node_of(role, endpoints.len())));
    let Some(((source, node), count)) = sources::busiest_pair(pairs) else {
        return Ok(());
    };
    if count > ports {
        let server = endpoints[node].0;
        let from = config
            .sources
            .get(source)
            .map_or("the default address".to_string(), |ip| ip.to_string());
        let need = (count * n.max(1)).div_ceil(ports);
        bail!(
            "{count} connections from {from} to {server} need more ephemeral ports than \
             net.ipv4.ip_local_port_range holds ({ports}: {}-{}): {}",
            range.start(),
            range.end(),
            sources::advice(server, n, need)
        );
    }
    Ok(())
}

/// Every connection's role, in the order they are opened: subscribers, then publishers (so the
/// last publisher, which sends the sync, comes after every subscriber).
fn roles(config: &BenchConfig) -> impl Iterator<Item = Role> {
    (0..config.subscribers)
        .map(Role::Subscriber)
        .chain((0..config.publishers).map(Role::Publisher))
}

/// The node (index into the addresses) a connection of `role` goes to.
fn node_of(role: Role, nodes: usize) -> usize {
    match role {
        Role::Subscriber(s) => nodes::of_subscriber(s, nodes),
        Role::Publisher(p) => nodes::of_publisher(p, nodes),
    }
}

/// A nonblocking socket for a connection to `server`, bound to `source` if one is given; not
/// connected yet ([`Bench::start_connect`]).
fn new_socket(server: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(server),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(ip) = source {
        // Best effort: without it, bind reserves a port per address (see the function).
        if let Err(e) = sys::set_bind_address_no_port(&socket) {
            tracing::debug!("IP_BIND_ADDRESS_NO_PORT: {e}");
        }
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    Ok(TcpStream::from_std(socket.into()))
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

/// A connection's part in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Subscriber(usize),
    Publisher(usize),
}

/// Where a connection is in opening its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The socket is made (and bound to its source address); `connect` is not called yet.
    Waiting,
    /// `connect` was called then and has not finished.
    Connecting(Instant),
    /// TCP connected: it may write.
    Connected,
}

/// One socket of the bench.
struct Peer {
    socket: TcpStream,
    stage: Stage,
    /// The server it connects to (index into the addresses).
    node: usize,
    /// The address it connects from (index into `--source`), if any was given.
    source: Option<usize>,
    /// Plain, or the connection's TLS state.
    transport: Transport,
    role: Role,
    /// Unparsed input: an incomplete item left from the last read.
    tail: BytesMut,
    /// Encoded but not yet written.
    out: BytesMut,
    open: bool,
    /// The server answered the WebSocket upgrade (from the start for other targets): until
    /// then the connection may send nothing more (RFC 6455 4.1).
    upgraded: bool,
}

impl Peer {
    /// Connected, upgraded and past any TLS handshake: what it sends now is sent at once, so
    /// it may be timed.
    fn is_connected(&self) -> bool {
        self.stage == Stage::Connected && self.upgraded && !self.transport.is_handshaking()
    }
}

struct Subscriber {
    checker: Checker,
    /// The order it received everything in, to compare with the others' (mob targets).
    order: OrderDigest,
    /// Subscription confirmed (Redis, NATS; from the start for servers that relay to all).
    subscribed: bool,
    /// Per sync sender (by rank, [`nodes::sync_senders`]): its sync message arrived.
    synced: Vec<bool>,
}

impl Subscriber {
    /// Known to receive what every node's publishers send.
    fn is_ready(&self) -> bool {
        self.subscribed && self.synced.iter().all(|&s| s)
    }
}

struct Publisher {
    /// Messages encoded so far; the next sequence number.
    sent: u64,
    /// Closed loop: every subscriber has received everything below this.
    acked: u64,
    /// Closed loop: for `seq` in `acked..sent`, `pending[seq % window]` subscribers have not
    /// received it yet.
    pending: Vec<u32>,
}

/// How far the connections' set-up has come ([`Bench::census`]).
#[derive(Default)]
struct Census {
    /// `connect` called.
    started: usize,
    /// TCP connected.
    tcp_connected: usize,
    /// TCP connected and upgraded (WebSocket); all connected ones for other targets.
    upgraded: usize,
    /// Ready to be timed ([`Peer::is_connected`]).
    connected: usize,
    /// The `connect` under way that was started first: when, and which connection.
    oldest_connecting: Option<(Instant, usize)>,
}

/// Counters for the measured interval.
#[derive(Default)]
struct Measured {
    published: u64,
    delivered: u64,
    /// Deliveries at any time, warm-up and drain included.
    delivered_total: u64,
    /// Deliveries that were not a payload the bench sent (torn or garbled by the server).
    corrupt: u64,
}

struct Bench {
    config: BenchConfig,
    /// The nodes, in the order given.
    addrs: Vec<SocketAddr>,
    /// The next connection to start connecting (all of them are made in order).
    next_connect: usize,
    /// How long [`Bench::set_up`] took, in seconds.
    setup_s: f64,
    /// Peer indexes of the publishers that send the sync, by rank.
    sync_senders: Vec<usize>,
    poll: Poll,
    peers: Vec<Peer>,
    subs: Vec<Subscriber>,
    pubs: Vec<Publisher>,
    /// Shared read buffer (see the server's read path: the same idea).
    scratch: BytesMut,
    /// Nanoseconds from send to receipt.
    latency: Histogram<u64>,
    /// When the run's clock started: stamps are nanoseconds since then.
    epoch: Instant,
    /// The measured interval, as nanoseconds since `epoch`.
    window_ns: (u64, u64),
    /// Whether publishers may still send.
    publishing: bool,
    measured: Measured,
    disconnects: u64,
    /// Subscribers still connected.
    live_subs: u32,
    /// The run is over and connections are being closed: input is discarded, closes are
    /// expected rather than counted.
    hanging_up: bool,
    /// Why the last connection that failed did (a TLS error, say), for the error that ends a
    /// setup no connection survived.
    last_fault: Option<String>,
}

impl Bench {
    /// Makes every connection's socket, bound to its source address; [`Bench::set_up`]
    /// connects them.
    fn new(config: BenchConfig, endpoints: Vec<(SocketAddr, Endpoint)>) -> anyhow::Result<Bench> {
        let poll = Poll::new()?;
        let mut peers = Vec::with_capacity(config.subscribers + config.publishers);
        let node_count = endpoints.len();
        let mut server_names = Vec::with_capacity(node_count);
        for (_, at) in &endpoints {
            server_names.push(match config.access.tls {
                Some(_) => Some(tls::server_name(&at.authority)?),
                None => None,
            });
        }
        let n_sources = config.sources.len();
        for (k, role) in roles(&config).enumerate() {
            let node = node_of(role, node_count);
            let source = (n_sources > 0).then(|| sources::of_connection(k, n_sources));
            let (addr, at) = (endpoints[node].0, &endpoints[node].1);
            let source_ip = source.map(|s| config.sources[s]);
            let socket = new_socket(addr, source_ip).map_err(|e| {
                let what = match source_ip {
                    Some(ip) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => format!(
                        "--source {ip}: cannot bind to it: is it an address of this machine? \
                         (on Linux, every address of 127.0.0.0/8 is)"
                    ),
                    Some(ip) => format!("cannot bind connection {} to --source {ip}", k + 1),
                    None => format!("cannot make socket {}", k + 1),
                };
                anyhow::Error::new(e).context(what)
            })?;
            let transport = match (&config.access.tls, &server_names[node]) {
                (Some(tls), Some(name)) => Transport::Tls(Box::new(
                    rustls::ClientConnection::new(Arc::clone(tls), name.clone())
                        .context("TLS setup")?,
                )),
                _ => Transport::Plain,
            };
            let mut out = BytesMut::new();
            match role {
                Role::Subscriber(_) => config.target.subscribe(at, &mut out),
                Role::Publisher(_) => config.target.greet(at, &mut out),
            }
            peers.push(Peer {
                socket,
                stage: Stage::Waiting,
                node,
                source,
                transport,
                role,
                tail: BytesMut::new(),
                out,
                open: true,
                upgraded: !config.target.is_websocket(),
            });
        }
        let window = config.window;
        let relays_to_all = config.target.relays_to_all();
        let sync_senders: Vec<usize> =
            nodes::sync_senders(config.publishers, node_count, relays_to_all)
                .into_iter()
                .map(|p| config.subscribers + p)
                .collect();
        Ok(Bench {
            subs: (0..config.subscribers)
                .map(|_| Subscriber {
                    checker: Checker::new(config.publishers),
                    order: OrderDigest::default(),
                    subscribed: relays_to_all,
                    synced: vec![false; sync_senders.len()],
                })
                .collect(),
            pubs: (0..config.publishers)
                .map(|_| Publisher {
                    sent: 0,
                    acked: 0,
                    pending: vec![0; window],
                })
                .collect(),
            live_subs: config.subscribers as u32,
            config,
            addrs: endpoints.iter().map(|(addr, _)| *addr).collect(),
            next_connect: 0,
            setup_s: 0.0,
            sync_senders,
            poll,
            peers,
            scratch: BytesMut::new(),
            latency: Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3)
                .expect("valid histogram bounds"),
            epoch: Instant::now(),
            window_ns: (0, 0),
            publishing: false,
            measured: Measured::default(),
            disconnects: 0,
            hanging_up: false,
            last_fault: None,
        })
    }

    /// Waits until every connection may publish and every subscriber is known to receive:
    /// TLS handshakes finished and WebSocket upgrades answered on every connection,
    /// publishers' too (so no handshake is timed); then confirmed
    /// subscriptions for Redis and NATS, or, for servers that relay to all (mob, WebSocket), a
    /// sync message from the last publisher (connected after every subscriber) that every
    /// subscriber must receive. With several addresses, every target syncs, from the last
    /// publisher of each node ([`nodes::sync_senders`]), after the subscriptions are confirmed.
    ///
    /// Connections are opened in order, at most [`CONNECTING_AT_ONCE`] being set up at a
    /// time; each sends its greeting (the token, the upgrade request, the TLS hello) as soon as
    /// it is connected.
    ///
    /// # Notes
    /// A WebSocket server's `101` alone does not prove the connection already receives what
    /// others send (a server may register it afterwards), so WebSocket targets sync too.
    fn set_up(&mut self) -> anyhow::Result<()> {
        let mut synced_at: Option<Instant> = None;
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut events = Events::with_capacity(4096);
        let progress = self.spinner();
        let mut last_tick = Instant::now();
        loop {
            let census = self.census();
            let mut setting_up = census.started - census.connected;
            while self.next_connect < self.peers.len() && setting_up < CONNECTING_AT_ONCE {
                self.start_connect(self.next_connect)?;
                self.next_connect += 1;
                setting_up += 1;
            }
            if let Some((since, i)) = census.oldest_connecting {
                if since.elapsed() >= CONNECT_TIMEOUT {
                    let e = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {CONNECT_TIMEOUT:?}"),
                    );
                    return Err(self.connect_error(i, e));
                }
            }
            if last_tick.elapsed() >= Duration::from_millis(200) {
                progress.set_message(format!(
                    "{} of {} connections set up",
                    census.connected,
                    self.peers.len()
                ));
                progress.tick();
                last_tick = Instant::now();
            }
            let (upgraded, connected) = (census.upgraded, census.connected);
            let all_upgraded = upgraded == self.peers.len();
            let all_connected = connected == self.peers.len();
            // Again now and then: a server registers a TLS or token connection only once its
            // handshake or token is through, and those finish in no particular order, so the
            // first sync may pass a subscriber by.
            let sync_due = synced_at.map_or(true, |at| at.elapsed() >= SYNC_AGAIN);
            // A sync before a subscription is confirmed may pass it by: wait for them first.
            let subscribed = self.subs.iter().all(|s| s.subscribed);
            if all_connected && subscribed && !self.sync_senders.is_empty() && sync_due {
                for rank in 0..self.sync_senders.len() {
                    let i = self.sync_senders[rank];
                    let stamp = Stamp {
                        publisher: SYNC_PUBLISHER,
                        seq: rank as u64,
                        sent_ns: 0,
                    };
                    self.config
                        .target
                        .publish(stamp, self.config.size, &mut self.peers[i].out);
                    self.write(i);
                }
                synced_at = Some(Instant::now());
            }
            let ready = self.subs.iter().filter(|s| s.is_ready()).count();
            if all_connected && ready == self.subs.len() {
                progress.finish_and_clear();
                return Ok(());
            }
            if self.disconnects > 0 {
                let why = self.last_fault.as_deref().unwrap_or("closed by the server");
                bail!(
                    "{} connections were lost while subscribing (the last: {why})",
                    self.disconnects
                );
            }
            let now = Instant::now();
            if now >= deadline && census.tcp_connected < self.peers.len() {
                bail!(
                    "only {} of {} connections were established within {SETUP_TIMEOUT:?}",
                    census.tcp_connected,
                    self.peers.len(),
                );
            }
            if now >= deadline && !all_upgraded {
                bail!(
                    "only {upgraded} of {} connections were upgraded to WebSocket within \
                     {SETUP_TIMEOUT:?}: does the server speak --target {}?",
                    self.peers.len(),
                    self.config.target
                );
            }
            if now >= deadline && !all_connected {
                bail!(
                    "only {connected} of {} connections finished the TLS handshake within \
                     {SETUP_TIMEOUT:?}: does the server speak TLS?",
                    self.peers.len(),
                );
            }
            if now >= deadline {
                bail!(
                    "only {ready} of {} subscribers confirmed within {SETUP_TIMEOUT:?}: does the \
                     server speak --target {}?",
                    self.subs.len(),
                    self.config.target
                );
            }
            let wait = if synced_at.is_some() {
                SYNC_AGAIN
            } else if census.oldest_connecting.is_some() {
                // Often enough to notice a connection that takes too long.
                Duration::from_millis(100)
            } else {
                deadline - now
            };
            self.poll_once(&mut events, Some(wait.min(deadline - now)))?;
        }
    }

    /// Where the connections are in their set-up.
    fn census(&self) -> Census {
        let mut census = Census::default();
        for (i, peer) in self.peers.iter().enumerate() {
            census.upgraded += usize::from(peer.upgraded && peer.stage == Stage::Connected);
            census.connected += usize::from(peer.is_connected());
            match peer.stage {
                Stage::Waiting => continue,
                Stage::Connecting(since) => {
                    if census
                        .oldest_connecting
                        .map_or(true, |(oldest, _)| since < oldest)
                    {
                        census.oldest_connecting = Some((since, i));
                    }
                }
                Stage::Connected => census.tcp_connected += 1,
            }
            census.started += 1;
        }
        census
    }

    /// Starts connection `i`'s `connect`; its writable edge says when it is through
    /// ([`Bench::finish_connect`]). A failure ends the run: it is the machine's or the
    /// command's (no local port left, no server there), not something to measure.
    fn start_connect(&mut self, i: usize) -> anyhow::Result<()> {
        let server = self.addrs[self.peers[i].node];
        let peer = &mut self.peers[i];
        match SockRef::from(&peer.socket).connect(&server.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(self.connect_error(i, e)),
        }
        // Registered once connecting: an unconnected socket reports a hang-up at once.
        self.poll.registry().register(
            &mut peer.socket,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        peer.stage = Stage::Connecting(Instant::now());
        Ok(())
    }

    /// Connection `i` had an event while connecting: `Ok(true)` once it is connected (its
    /// greeting then goes), `Ok(false)` while the connect is still under way.
    fn finish_connect(&mut self, i: usize) -> anyhow::Result<bool> {
        let socket = &self.peers[i].socket;
        let failed = match socket.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match socket.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failed {
            return Err(self.connect_error(i, e));
        }
        self.peers[i].stage = Stage::Connected;
        self.write(i);
        Ok(true)
    }

    /// The error that ends a run whose connection `i` could not connect: where from and to,
    /// and for a lack of local ports, what to do.
    fn connect_error(&self, i: usize, e: io::Error) -> anyhow::Error {
        let peer = &self.peers[i];
        let server = self.addrs[peer.node];
        let from = match peer.source {
            Some(s) => format!(" from {}", self.config.sources[s]),
            None => String::new(),
        };
        let connected = self
            .peers
            .iter()
            .filter(|p| p.stage == Stage::Connected)
            .count();
        let what = format!(
            "cannot connect to {server}{from} ({:?}, {connected} connections open)",
            peer.role
        );
        let hint = if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
            let n = self.config.sources.len();
            format!(
                "no local port left (ports of closed connections wait a minute in TIME_WAIT): {}",
                sources::advice(server, n, n.max(1) + 1)
            )
        } else {
            "is the server running and accepting?".to_string()
        };
        anyhow::Error::new(e).context(format!("{what}: {hint}"))
    }

    /// A spinner for the set-up, when a progress bar is wanted.
    fn spinner(&self) -> ProgressBar {
        if !self.config.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        bar
    }

    /// `--idle`: every connection stays open and nothing is sent, for that long. It is said on
    /// stderr when it begins (for a script to read the server's memory meanwhile); a
    /// connection closed meanwhile counts as a disconnect.
    fn idle(&mut self) -> anyhow::Result<()> {
        let idle = self.config.idle;
        if idle.is_zero() {
            return Ok(());
        }
        tracing::info!(
            "{} connections set up in {:.2} s; idle for {idle:?}",
            self.peers.len(),
            self.setup_s
        );
        let until = Instant::now() + idle;
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            self.poll_once(&mut events, Some(until - now))?;
        }
    }

    /// Warm-up, then the measured interval.
    fn measure(&mut self) -> anyhow::Result<()> {
        let warmup = self.config.warmup;
        let total = warmup + self.config.duration;
        self.epoch = Instant::now();
        self.window_ns = (warmup.as_nanos() as u64, total.as_nanos() as u64);
        self.publishing = true;
        let progress = self.progress_bar(total);
        let mut events = Events::with_capacity(4096);
        let mut last_tick = self.epoch;
        let mut delivered_at_tick = 0;
        loop {
            let now = Instant::now();
            let elapsed = now - self.epoch;
            if elapsed >= total {
                break;
            }
            if now - last_tick >= Duration::from_millis(200) {
                let rate = (self.measured.delivered - delivered_at_tick) as f64
                    / (now - last_tick).as_secs_f64();
                progress.set_position(elapsed.as_millis() as u64);
                progress.set_message(if elapsed < warmup {
                    "warming up".to_string()
                } else {
                    format!("{:.2} M deliveries/s", rate / 1e6)
                });
                last_tick = now;
                delivered_at_tick = self.measured.delivered;
            }
            self.publish(now);
            let timeout = self.next_send_in(now).min(total - elapsed);
            self.poll_once(&mut events, Some(timeout))?;
        }
        self.publishing = false;
        progress.finish_and_clear();
        Ok(())
    }

    /// After the run: waits for what is still in flight, so only what never comes is lost.
    fn drain(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut events = Events::with_capacity(4096);
        let sent: Vec<u64> = self.pubs.iter().map(|p| p.sent).collect();
        let mut last_arrival = Instant::now();
        loop {
            let all_in = self
                .subs
                .iter()
                .zip(self.peers.iter())
                .filter(|(_, peer)| peer.open)
                .all(|(s, _)| s.checker.has_all(&sent));
            let now = Instant::now();
            if all_in || now >= deadline || now - last_arrival >= DRAIN_QUIET {
                return Ok(());
            }
            self.poll_once(&mut events, Some(Duration::from_millis(50)))?;
            if !events.is_empty() {
                last_arrival = Instant::now();
            }
        }
    }

    /// Closes every connection cleanly: goodbye (a WebSocket close frame) and half-close, then
    /// read (and discard) until the server closes too, for at most [`HANG_UP_TIMEOUT`].
    /// Dropping sockets with unread input would reset them, and a server rightly logs every
    /// reset as a client failure.
    fn hang_up(&mut self) {
        self.hanging_up = true;
        for i in 0..self.peers.len() {
            let peer = &mut self.peers[i];
            if !peer.open {
                continue;
            }
            // A peer still holding unsent bytes (an open-loop publisher the server fell behind)
            // may have sent half a message: a goodbye behind it would be garbage.
            if peer.out.is_empty() {
                self.config.target.goodbye(&mut peer.out);
                self.write(i);
            }
            let peer = &mut self.peers[i];
            peer.transport.close_notify(&mut peer.socket);
            let _ = peer.socket.shutdown(std::net::Shutdown::Write);
        }
        let deadline = Instant::now() + HANG_UP_TIMEOUT;
        let mut events = Events::with_capacity(4096);
        while self.peers.iter().any(|p| p.open) {
            let now = Instant::now();
            if now >= deadline || self.poll_once(&mut events, Some(deadline - now)).is_err() {
                return;
            }
        }
    }

    fn report(&self) -> Report {
        let sent: Vec<u64> = self.pubs.iter().map(|p| p.sent).collect();
        let live = || {
            self.subs
                .iter()
                .zip(self.peers.iter())
                .filter(|(_, peer)| peer.open)
                .map(|(s, _)| &s.checker)
        };
        let us = |ns: u64| ns as f64 / 1000.0;
        let h = &self.latency;
        Report {
            target: self.config.target.to_string(),
            addrs: self.addrs.iter().map(|a| a.to_string()).collect(),
            sources: self.config.sources.iter().map(|a| a.to_string()).collect(),
            publishers: self.config.publishers,
            subscribers: self.config.subscribers,
            size: self.config.size,
            rate: self.config.rate,
            window: self.config.window,
            duration: self.config.duration.as_secs_f64(),
            setup_s: self.setup_s,
            published: self.measured.published,
            delivered: self.measured.delivered,
            delivered_total: self.measured.delivered_total,
            latency_us: [
                us(h.value_at_quantile(0.5)),
                us(h.value_at_quantile(0.99)),
                us(h.value_at_quantile(0.999)),
                us(h.max()),
            ],
            lost: live().map(|c| c.lost(&sent)).sum(),
            duplicated: live().map(|c| c.duplicated).sum(),
            corrupt: self.measured.corrupt,
            out_of_order: live().map(|c| c.out_of_order).sum(),
            diverged: if self.config.target.promises_one_order() {
                check::diverged(
                    self.subs
                        .iter()
                        .zip(self.peers.iter())
                        .filter(|(_, peer)| peer.open)
                        .map(|(s, _)| &s.order),
                )
            } else {
                0
            },
            disconnects: self.disconnects,
        }
    }

    fn progress_bar(&self, total: Duration) -> ProgressBar {
        if !self.config.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total.as_millis() as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {elapsed:>3} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar
    }

    /// Polls once and handles what it reports.
    fn poll_once(&mut self, events: &mut Events, timeout: Option<Duration>) -> anyhow::Result<()> {
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e).context("poll failed");
            }
        }
        let now_ns = self.now_ns();
        for event in events.iter() {
            let i = event.token().0;
            if !self.peers[i].open {
                continue;
            }
            if matches!(self.peers[i].stage, Stage::Connecting(_)) && !self.finish_connect(i)? {
                continue;
            }
            if event.is_writable() {
                self.write(i);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                self.read(i, now_ns);
            }
        }
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Closed loop: how long until the next poll must return anyway (never: acks drive it).
    /// Open loop: until the next message is due, in whole milliseconds and one short, since
    /// epoll rounds a timeout up to the next millisecond; within 2 ms of it, do not block at
    /// all, so sends leave on time and the bench's own lateness stays out of the latency.
    fn next_send_in(&self, now: Instant) -> Duration {
        if self.config.rate <= 0.0 {
            return Duration::from_millis(100);
        }
        let next = (0..self.pubs.len())
            .map(|p| self.due(p, self.pubs[p].sent))
            .min()
            .unwrap_or_default();
        let wait = (self.epoch + next).saturating_duration_since(now);
        match wait.as_millis() {
            0 | 1 => Duration::ZERO,
            ms => Duration::from_millis(ms as u64 - 1),
        }
    }

    /// Open loop: when message `seq` of publisher `p` is due, since the run began. Publishers
    /// are staggered so that together they send evenly spaced, not in bursts.
    fn due(&self, p: usize, seq: u64) -> Duration {
        let per_pub = self.config.rate / self.config.publishers as f64;
        let offset = p as f64 / self.config.publishers as f64;
        Duration::from_secs_f64((seq as f64 + offset) / per_pub)
    }

    /// Encodes what each publisher may send now and writes it.
    fn publish(&mut self, now: Instant) {
        if !self.publishing {
            return;
        }
        let elapsed_ns = (now - self.epoch).as_nanos() as u64;
        let (start, end) = self.window_ns;
        let open_loop = self.config.rate > 0.0;
        for p in 0..self.pubs.len() {
            let i = self.config.subscribers + p;
            if !self.peers[i].open {
                continue;
            }
            loop {
                let due = open_loop.then(|| self.due(p, self.pubs[p].sent).as_nanos() as u64);
                let publisher = &mut self.pubs[p];
                let out = &mut self.peers[i].out;
                if out.len() >= OUT_CAP {
                    break;
                }
                let due_ns = if let Some(due) = due {
                    if due > elapsed_ns {
                        break;
                    }
                    due
                } else {
                    if publisher.sent - publisher.acked >= self.config.window as u64 {
                        break;
                    }
                    let slot = (publisher.sent % self.config.window as u64) as usize;
                    publisher.pending[slot] = self.live_subs;
                    elapsed_ns
                };
                let stamp = Stamp {
                    publisher: p as u32,
                    seq: publisher.sent,
                    sent_ns: due_ns,
                };
                self.config.target.publish(stamp, self.config.size, out);
                publisher.sent += 1;
                if (start..end).contains(&due_ns) {
                    self.measured.published += 1;
                }
            }
            self.write(i);
        }
    }

    /// Writes what is pending for peer `i` until done or `WouldBlock` (once it is connected).
    fn write(&mut self, i: usize) {
        let peer = &mut self.peers[i];
        if peer.stage != Stage::Connected {
            return;
        }
        if let Err(e) = peer.transport.write(&mut peer.socket, &mut peer.out) {
            self.fault(i, e);
        }
    }

    /// Reads peer `i` until `WouldBlock` and handles every item in it.
    fn read(&mut self, i: usize, now_ns: u64) {
        loop {
            let peer = &mut self.peers[i];
            let from_scratch = peer.tail.is_empty();
            let buf = if from_scratch {
                &mut self.scratch
            } else {
                &mut peer.tail
            };
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(READ_BLOCK);
            }
            match peer.transport.read(&mut peer.socket, buf) {
                Ok(0) => {
                    self.close(i);
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Reading may have finished a TLS handshake, which lets plaintext held
                    // back until then go.
                    if !peer.out.is_empty() || peer.transport.wants_write() {
                        self.write(i);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.fault(i, e);
                    return;
                }
            }
            let mut buf = if from_scratch {
                std::mem::take(&mut self.scratch)
            } else {
                std::mem::take(&mut self.peers[i].tail)
            };
            let ok = self.handle_input(i, &mut buf, now_ns);
            if from_scratch {
                if ok {
                    self.peers[i].tail.extend_from_slice(&buf);
                }
                buf.clear();
                self.scratch = buf;
            } else {
                self.peers[i].tail = buf;
            }
            if !ok {
                self.close(i);
                return;
            }
        }
    }

    /// Handles every complete item in `buf`, leaving an incomplete one. `false` if the peer
    /// sent an error or garbage (the error counts as a disconnect).
    fn handle_input(&mut self, i: usize, buf: &mut BytesMut, now_ns: u64) -> bool {
        let target = self.config.target;
        let role = self.peers[i].role;
        // Publishers receive what others publish: not what is measured, and over mob's TCP
        // formats nothing else, so not even parsed (a WebSocket publisher's input also carries
        // its 101, pings and a close). And once the run is over, nothing is.
        let unread = target.relays_to_all() && !target.is_websocket();
        if self.hanging_up || (unread && matches!(role, Role::Publisher(_))) {
            buf.clear();
            return true;
        }
        let mut at = 0;
        loop {
            match target.parse(&buf[at..]) {
                Ok(None) => break,
                Ok(Some((used, item))) => {
                    match (item, role) {
                        (Item::Message(r), Role::Subscriber(s)) => {
                            let payload = &buf[at + r.start..at + r.end];
                            self.deliver(s, payload, now_ns);
                        }
                        (Item::Subscribed, Role::Subscriber(s)) => self.subs[s].subscribed = true,
                        (Item::Upgraded, _) => self.peers[i].upgraded = true,
                        (Item::Ping(r), _) => {
                            target.pong(&buf[at + r.start..at + r.end], &mut self.peers[i].out)
                        }
                        _ => {}
                    }
                    at += used;
                }
                Err(e) => {
                    tracing::warn!("{role:?}: {e}");
                    return false;
                }
            }
        }
        buf.advance(at);
        if !self.peers[i].out.is_empty() {
            self.write(i);
        }
        true
    }

    /// One message reached subscriber `s`.
    fn deliver(&mut self, s: usize, payload: &[u8], now_ns: u64) {
        let stamp = payload::read(payload).filter(|_| payload.len() == self.config.size);
        // Before its syncs a subscriber can only be sent what was relayed before this run (a
        // server's `--history`, other clients): nothing of this run, nothing to check.
        let is_sync = stamp.is_some_and(|st| st.publisher == SYNC_PUBLISHER);
        if !is_sync && !self.subs[s].synced.iter().all(|&synced| synced) {
            return;
        }
        let Some(stamp) = stamp else {
            self.measured.corrupt += 1;
            return;
        };
        if stamp.publisher == SYNC_PUBLISHER {
            if let Some(synced) = self.subs[s].synced.get_mut(stamp.seq as usize) {
                *synced = true;
            }
            return;
        }
        let p = stamp.publisher as usize;
        if p >= self.pubs.len() || stamp.seq >= self.pubs[p].sent {
            // Well-formed, but not a message that was sent: garbled in transit.
            self.measured.corrupt += 1;
            return;
        }
        let sub = &mut self.subs[s];
        let arrival = sub.checker.record(p, stamp.seq);
        if self.config.target.promises_one_order() {
            sub.order.record(p, stamp.seq);
        }
        if arrival != Arrival::Duplicate && self.config.rate <= 0.0 {
            self.ack(p, stamp.seq);
        }
        self.measured.delivered_total += 1;
        let (start, end) = self.window_ns;
        if (start..end).contains(&now_ns) {
            self.measured.delivered += 1;
            let _ = self
                .latency
                .record(now_ns.saturating_sub(stamp.sent_ns).max(1_000));
        }
    }

    /// Closed loop: one more subscriber has message `seq` of publisher `p`.
    fn ack(&mut self, p: usize, seq: u64) {
        let window = self.config.window as u64;
        let publisher = &mut self.pubs[p];
        if seq < publisher.acked || seq >= publisher.sent {
            return;
        }
        let slot = &mut publisher.pending[(seq % window) as usize];
        *slot = slot.saturating_sub(1);
        while publisher.acked < publisher.sent
            && publisher.pending[(publisher.acked % window) as usize] == 0
        {
            publisher.acked += 1;
        }
    }

    /// Peer `i`'s connection failed: the reason is logged and kept, and the peer closed.
    fn fault(&mut self, i: usize, e: io::Error) {
        if !self.hanging_up {
            tracing::warn!("{:?}: {e}", self.peers[i].role);
            self.last_fault = Some(e.to_string());
        }
        self.close(i);
    }

    fn close(&mut self, i: usize) {
        let peer = &mut self.peers[i];
        if !peer.open {
            return;
        }
        peer.open = false;
        let _ = self.poll.registry().deregister(&mut peer.socket);
        if self.hanging_up {
            return;
        }
        self.disconnects += 1;
        tracing::warn!("{:?} was disconnected", peer.role);
        if let Role::Subscriber(s) = peer.role {
            self.live_subs -= 1;
            // It will never acknowledge what it had not received: stop waiting for it.
            if self.config.rate <= 0.0 {
                for p in 0..self.pubs.len() {
                    let from = self.subs[s]
                        .checker
                        .next_expected(p)
                        .max(self.pubs[p].acked);
                    for seq in from..self.pubs[p].sent {
                        self.ack(p, seq);
                    }
                }
            }
        }
    }
}
