//! Several nodes, one broadcast, one order: a Redis stream as the backplane
//! (`mob serve --cluster redis://HOST:PORT`).
//!
//! Every node appends its clients' input to one stream (`XADD`, one entry per batch of reads,
//! many messages each) and reads the stream back from its last position (`XREAD BLOCK` from
//! the last id). The stream's order is the order every client of every node sees: a node
//! delivers only what came back from Redis, its own clients' messages included. Plain
//! pub/sub would lose what is published while a node reconnects, and Redis cuts off a
//! subscriber whose output buffer passes its limit; a stream read from the last id has
//! neither problem.
//!
//! Two threads per node, with the `redis` crate's blocking connections:
//! - the *publisher* takes what the event loops put in the [`Outbox`] (whole read batches,
//!   in the order each loop read them) and appends it as one entry; on a broken connection
//!   it reconnects with backoff and sends the same entry again (readers drop a batch number
//!   they have seen, so a resend that had arrived is no duplicate). While the outbox is full
//!   (Redis slow or unreachable) the loops stop reading: input waits in the clients' sockets,
//!   nothing is dropped.
//! - the *reader* reads entries after the last id it has, decodes them (messages are slices
//!   of the entry read: no copy) and posts them to the [`Order`] the loops take from, at most
//!   a read budget ahead of the loops' trims (the rest waits in Redis). After a reconnect it
//!   goes on from its last id: nothing missed, nothing twice. A stream that lost its data
//!   (Redis restarted without persistence) is logged and read from its start; a node's batch
//!   numbers with a hole (entries trimmed before this node read them) are logged as a gap.

pub mod codec;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tracing::{info, warn};

use crate::protocol::Protocol;
use crate::server::{Board, Entry, Order};

/// Entries the stream keeps by default (`XADD MAXLEN ~`, `--cluster-keep`): a node that
/// falls behind further than this finds a gap.
/// Each entry is one publish of at most an eighth of the read budget (256 KiB with the
/// default `--max-pending`), so Redis holds at most about 256 MiB for it by default.
pub const STREAM_LENGTH: usize = 1_000;
/// Entries one `XREAD` returns at most: the read budget at the largest a batch's entry gets
/// (an eighth of it). Sizing it by the entries seen so far let a run of tiny ones ask for 256
/// full ones at once, 32 times the budget. (An entry of one message over that, up to
/// `--max-message`, can still pass the budget, by that message.)
const READ_COUNT: usize = 8;
/// How long one `XREAD` blocks: the reader looks at the shutdown flag this often.
const READ_BLOCK: Duration = Duration::from_millis(200);
/// How long the reader waits for a receiver's backlog to shrink below twice the read budget
/// before it posts more anyway.
const BACKLOG_WAIT: Duration = Duration::from_millis(100);
/// Backoff between attempts to reach Redis: from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// Where the backplane is. (Its `Debug` shows the URL without a password.)
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT`.
    pub url: String,
    /// The stream's name: nodes with the same Redis and channel serve one broadcast.
    pub channel: String,
    /// About how many entries the stream keeps (Redis trims in whole blocks of entries).
    pub keep: usize,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("url", &redacted(&self.url))
            .field("channel", &self.channel)
            .field("keep", &self.keep)
            .finish()
    }
}

impl ClusterConfig {
    /// The Redis client for the URL, or an error naming the flag (and not the password).
    pub fn client(&self) -> Result<redis::Client, String> {
        if self.channel.is_empty() {
            return Err("--cluster-channel must not be empty".into());
        }
        redis::Client::open(self.url.as_str())
            .map_err(|e| format!("--cluster {}: {e}", redacted(&self.url)))
    }
}

/// `url` without the password (or user and password) it may carry: for log lines.
/// The user information is everything before the last `@` (a password may hold `/`), and a
/// query is left out whole (`redis+unix://` takes the password as `?pass=`); a path holding
/// an `@` is shown shorter than it is, never a password longer.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(a URL without scheme://)".into();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, _)) => (rest, "?..."),
        None => (rest, ""),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}://***@{}{query}", &rest[at + 1..]),
        None => format!("{scheme}://{rest}{query}"),
    }
}

/// What the event loops hand to the publisher: read batches not yet in Redis.
///
/// Bounded: what it holds counts against the loops' read budget (`Sequencer::pressure`), so
/// while Redis is slow or unreachable the loops stop reading and the input waits in the
/// clients' sockets; and one entry takes at most [`Outbox::entry_cap`] of it.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    ready: Condvar,
    /// Input (as `--max-pending` counts it) queued or being published, readable without the
    /// lock.
    held: std::sync::atomic::AtomicUsize,
    /// At this much held, the loops stop reading.
    budget: usize,
    /// The last batch read back from Redis (or given up on): a loop's ticket up to this is
    /// in the order.
    returned: std::sync::atomic::AtomicU64,
    board: Arc<Board>,
}

#[derive(Debug, Default)]
struct OutboxState {
    /// Batches not yet taken by the publisher, with what each counts and its ticket.
    queue: VecDeque<(Arc<[Entry]>, usize, u64)>,
    /// Batches pushed so far (a batch's number is its ticket).
    pushed: u64,
    /// Entries published and not yet read back: (entry number, last ticket it holds).
    in_flight: VecDeque<(u64, u64)>,
    /// Loops waiting for room.
    stalled: Vec<bool>,
}

impl Outbox {
    pub fn new(board: Arc<Board>, budget: usize) -> Arc<Outbox> {
        let loops = board.loops();
        Arc::new(Outbox {
            state: Mutex::new(OutboxState {
                stalled: vec![false; loops],
                ..OutboxState::default()
            }),
            ready: Condvar::new(),
            held: std::sync::atomic::AtomicUsize::new(0),
            budget,
            returned: std::sync::atomic::AtomicU64::new(0),
            board,
        })
    }

    /// Most input one stream entry takes (a batch larger than this alone is one entry): an
    /// eighth of the read budget, so a reply of entries stays a fraction of it too.
    pub fn entry_cap(&self) -> usize {
        (self.budget / 8).max(64 * 1024)
    }

    /// Queues loop `me`'s batch, which counts `held` against `--max-pending`, for
    /// publishing; returns its ticket (see [`returned`](Self::returned)).
    pub fn push(&self, _me: usize, batch: Arc<[Entry]>, held: usize) -> u64 {
        let mut state = lock(&self.state);
        self.held.fetch_add(held, Ordering::Relaxed);
        state.pushed += 1;
        let ticket = state.pushed;
        state.queue.push_back((batch, held, ticket));
        drop(state);
        self.ready.notify_one();
        ticket
    }

    /// Input queued or being published, as `--max-pending` counts it.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Tickets up to this are in the order (read back from Redis), or lost with a Redis that
    /// lost its data (then waiting for them is pointless).
    pub fn returned(&self) -> u64 {
        self.returned.load(Ordering::Acquire)
    }

    /// The reader read this node's entry `number` back (after posting it to the order).
    fn read_back(&self, number: u64) {
        let mut state = lock(&self.state);
        let mut last = None;
        while state.in_flight.front().is_some_and(|&(n, _)| n <= number) {
            last = state.in_flight.pop_front().map(|(_, ticket)| ticket);
        }
        if let Some(ticket) = last {
            self.returned.fetch_max(ticket, Ordering::Release);
        }
    }

    /// What is in flight will not come back (the stream lost it): stop waiting for it.
    fn give_up_in_flight(&self) {
        let mut state = lock(&self.state);
        if let Some(&(_, ticket)) = state.in_flight.back() {
            self.returned.fetch_max(ticket, Ordering::Release);
        }
        state.in_flight.clear();
    }

    /// Whether loop `me` should stop reading: the outbox holds its budget. It is woken when
    /// the publisher has made room.
    pub fn stall(&self, me: usize) -> bool {
        let mut state = lock(&self.state);
        let full = self.held() >= self.budget;
        state.stalled[me] = full;
        full
    }

    /// Takes queued batches, in order, up to [`entry_cap`](Self::entry_cap) (at least one;
    /// waiting up to `at_most` for one), to be published as entry `number`; returns what they
    /// count.
    fn take(&self, into: &mut Vec<Arc<[Entry]>>, number: u64, at_most: Duration) -> usize {
        let mut state = lock(&self.state);
        if state.queue.is_empty() {
            state = self
                .ready
                .wait_timeout_while(state, at_most, |s| s.queue.is_empty())
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let (mut held, mut last) = (0, None);
        while let Some((_, h, _)) = state.queue.front() {
            if held > 0 && held + h > self.entry_cap() {
                break;
            }
            let (batch, h, ticket) = state.queue.pop_front().expect("looked at");
            held += h;
            last = Some(ticket);
            into.push(batch);
        }
        if let Some(ticket) = last {
            state.in_flight.push_back((number, ticket));
        }
        held
    }

    /// What counts `held` was appended to the stream: room for more.
    fn sent(&self, held: usize) {
        let mut state = lock(&self.state);
        let before = self.held.fetch_sub(held, Ordering::Relaxed);
        let wake: Vec<usize> = if before - held < self.budget {
            state
                .stalled
                .iter_mut()
                .enumerate()
                .filter_map(|(i, s)| std::mem::take(s).then_some(i))
                .collect()
        } else {
            Vec::new()
        };
        drop(state);
        for i in wake {
            self.board.ring(i);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The backplane of one node: its two threads, started by [`Backplane::start`].
pub struct Backplane {
    threads: Vec<thread::JoinHandle<()>>,
}

/// Whether this node is connected to the backplane now (both threads), for `mob_cluster_up`.
#[derive(Debug, Default)]
pub struct Health {
    publisher: AtomicBool,
    reader: AtomicBool,
    /// Set once the reader knows where it reads from: nothing is published before, or the
    /// node would not read back its own clients' first messages.
    positioned: Mutex<bool>,
    positioned_cv: Condvar,
}

impl Health {
    fn set_positioned(&self) {
        *lock(&self.positioned) = true;
        self.positioned_cv.notify_all();
    }

    /// Waits up to `at_most` for the reader to be positioned; returns whether it is.
    fn wait_positioned(&self, at_most: Duration) -> bool {
        let guard = lock(&self.positioned);
        let (guard, _) = self
            .positioned_cv
            .wait_timeout_while(guard, at_most, |p| !*p)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    pub fn up(&self) -> bool {
        self.publisher.load(Ordering::Relaxed) && self.reader.load(Ordering::Relaxed)
    }
}

impl Backplane {
    /// Starts the publisher and the reader of a node. They stop once the board's shutdown
    /// flag is set.
    pub fn start(
        config: &ClusterConfig,
        protocol: Protocol,
        order: Arc<Order>,
        outbox: Arc<Outbox>,
        board: Arc<Board>,
        held_for: impl Fn(usize) -> usize + Send + 'static,
        health: Arc<Health>,
    ) -> Result<Backplane, String> {
        let client = config.client()?;
        let node: u64 = rand_id();
        let key = config.channel.clone();
        // For log lines: without a password the URL may carry.
        let url = redacted(&config.url);
        let keep = config.keep;
        let mut threads = Vec::new();
        let reader_outbox = Arc::clone(&outbox);
        let start = start_point(&client, &key, &url);
        if start.is_some() {
            health.reader.store(true, Ordering::Relaxed);
            health.set_positioned();
        }
        {
            let (client, key, url, board, health) = (
                client.clone(),
                key.clone(),
                url.clone(),
                Arc::clone(&board),
                Arc::clone(&health),
            );
            threads.push(
                thread::Builder::new()
                    .name("mob-cluster-pub".into())
                    .spawn(move || {
                        publish(
                            client, &url, &key, keep, node, protocol, &outbox, &board, &health,
                        )
                    })
                    .map_err(|e| e.to_string())?,
            );
        }
        threads.push(
            thread::Builder::new()
                .name("mob-cluster-read".into())
                .spawn(move || {
                    read(
                        client,
                        &url,
                        &key,
                        node,
                        protocol,
                        &order,
                        &reader_outbox,
                        &board,
                        held_for,
                        &health,
                        start,
                    )
                })
                .map_err(|e| e.to_string())?,
        );
        Ok(Backplane { threads })
    }

    /// Waits for both threads (after shutdown).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A node id nobody else has: random bits from the system's hasher seed, the time and the
/// process id.
fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// One thread's faults: each logged once (until the thread gets through again, which is
/// logged too), every retry after a backoff (50 ms doubling to 2 s), never a tight loop.
struct Faults {
    what: &'static str,
    logged: bool,
    backoff: Duration,
}

impl Faults {
    fn new(what: &'static str) -> Self {
        Faults {
            what,
            logged: false,
            backoff: BACKOFF.0,
        }
    }

    /// Something failed: says so once, marks the thread down, and waits before the retry.
    /// Returns false if shutdown began meanwhile.
    fn failed(&mut self, up: &AtomicBool, why: &dyn std::fmt::Display, board: &Board) -> bool {
        up.store(false, Ordering::Relaxed);
        if !self.logged {
            warn!(
                "cluster: {} {why}; retrying with backoff (clients wait)",
                self.what
            );
            self.logged = true;
        }
        let until = std::time::Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF.1);
        while std::time::Instant::now() < until {
            if board.shutting_down() {
                return false;
            }
            thread::sleep(Duration::from_millis(20).min(self.backoff));
        }
        !board.shutting_down()
    }

    /// A command went through.
    fn ok(&mut self, up: &AtomicBool, url: &str) {
        up.store(true, Ordering::Relaxed);
        self.backoff = BACKOFF.0;
        if self.logged {
            info!("cluster: {} gets through to {url} again", self.what);
            self.logged = false;
        }
    }
}

/// After a failed command: drops the connection if it is gone (it is made again), keeps it
/// if the failure was an answer from a Redis that is there (an error reply).
fn forget_if_lost(con: &mut Option<redis::Connection>, e: &redis::RedisError) {
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal() {
        *con = None;
    }
}

/// A connection to Redis, made again with backoff until it works or shutdown begins.
fn connect(
    client: &redis::Client,
    url: &str,
    board: &Board,
    up: &AtomicBool,
    faults: &mut Faults,
) -> Option<redis::Connection> {
    while !board.shutting_down() {
        let made = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .and_then(|con| {
                // A Redis that stops answering (stopped, or a network gone) is found within
                // a few seconds, not never.
                let limit = Some(READ_BLOCK + Duration::from_secs(2));
                con.set_read_timeout(limit)?;
                con.set_write_timeout(limit)?;
                Ok(con)
            });
        match made {
            Ok(con) => {
                up.store(true, Ordering::Relaxed);
                return Some(con);
            }
            Err(e) => {
                let why = format!("cannot reach {url}: {e}");
                if !faults.failed(up, &why, board) {
                    return None;
                }
            }
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn publish(
    client: redis::Client,
    url: &str,
    key: &str,
    keep: usize,
    node: u64,
    protocol: Protocol,
    outbox: &Outbox,
    board: &Board,
    health: &Health,
) {
    let mut con: Option<redis::Connection> = None;
    let mut faults = Faults::new("publisher");
    let mut batches = Vec::new();
    let mut number = 0u64;
    loop {
        batches.clear();
        if con.is_none() {
            // At once, not when there is something to send: `mob_cluster_up` says whether
            // the node reaches Redis now.
            con = connect(&client, url, board, &health.publisher, &mut faults);
            if con.is_none() {
                return; // shutting down
            }
        }
        while !health.wait_positioned(READ_BLOCK) {
            if board.shutting_down() {
                return;
            }
        }
        let held = outbox.take(&mut batches, number + 1, READ_BLOCK);
        if batches.is_empty() {
            if board.shutting_down() {
                return;
            }
            continue;
        }
        number += 1;
        let payload = encode_all(node, number, protocol, &batches);
        // The same entry until it is in: readers drop a number seen twice.
        loop {
            if con.is_none() {
                con = connect(&client, url, board, &health.publisher, &mut faults);
                if con.is_none() {
                    return; // shutting down
                }
            }
            let sent: redis::RedisResult<Value> = redis::cmd("XADD")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(keep)
                .arg("*")
                .arg("m")
                .arg(&payload[..])
                .query(con.as_mut().expect("connected"));
            match sent {
                Ok(_) => {
                    faults.ok(&health.publisher, url);
                    break;
                }
                Err(e) => {
                    forget_if_lost(&mut con, &e);
                    let why = format!("publishing to {url} failed: {e}");
                    if !faults.failed(&health.publisher, &why, board) {
                        return;
                    }
                }
            }
        }
        outbox.sent(held);
    }
}

fn encode_all(node: u64, number: u64, protocol: Protocol, batches: &[Arc<[Entry]>]) -> Vec<u8> {
    codec::encode(node, number, protocol, batches.iter().map(|b| &b[..]))
}

#[allow(clippy::too_many_arguments)]
fn read(
    client: redis::Client,
    url: &str,
    key: &str,
    me: u64,
    protocol: Protocol,
    order: &Order,
    outbox: &Outbox,
    board: &Board,
    held_for: impl Fn(usize) -> usize,
    health: &Health,
    start: Option<Start>,
) {
    // Where this node reads from: the stream's end when the node started (a node serves
    // what is sent from its start on), or when it first reached Redis.
    let (mut con, mut last, mut run_id) = match start {
        Some(s) => (Some(s.con), Some(s.from), s.run_id),
        None => (None, None, None),
    };
    let mut faults = Faults::new("reader");
    // Per node: the last batch number taken.
    let mut seen: HashMap<u64, u64> = HashMap::new();
    // Entries this node could not read (another --protocol, another version).
    let mut unreadable = 0u64;

    while !board.shutting_down() {
        if con.is_none() {
            let Some(mut c) = connect(&client, url, board, &health.reader, &mut faults) else {
                return;
            };
            match resume_point(&mut c, key, last.as_deref(), &mut run_id, url) {
                Ok((from, lost)) => {
                    if lost {
                        // What this node had in the lost stream will not come back.
                        outbox.give_up_in_flight();
                        order.ring_all();
                    }
                    last = Some(from);
                    health.set_positioned();
                    con = Some(c);
                }
                Err(e) => {
                    let why = format!("reading from {url} failed: {e}");
                    if !faults.failed(&health.reader, &why, board) {
                        return;
                    }
                    continue;
                }
            }
        }
        // What the loops have not trimmed yet stays under the read budget (and a reply asks
        // for about that much): the rest waits in Redis, never here, while a node catches up.
        // While a receiver has much still to be sent (it reads what came before, as when the
        // node catches up), more waits a little, so a client that reads as fast as it can is
        // not made a slow consumer by the backlog; one that does not read at all holds the
        // node back that little each time, until it is one.
        let since = std::time::Instant::now();
        loop {
            let (budget_left, backlog_small) = order.room();
            if budget_left && (backlog_small || since.elapsed() >= BACKLOG_WAIT) {
                break;
            }
            if board.shutting_down() {
                return;
            }
            order.wait_for_room(Duration::from_millis(20));
        }
        let from = last.clone().unwrap_or_else(|| "0-0".into());
        let reply: redis::RedisResult<Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(key)
            .arg(&from)
            .query(con.as_mut().expect("connected"));
        let reply = match reply {
            Ok(v) => {
                faults.ok(&health.reader, url);
                v
            }
            Err(e) => {
                forget_if_lost(&mut con, &e);
                let why = format!("reading from {url} failed: {e} (resuming after {from})");
                if !faults.failed(&health.reader, &why, board) {
                    return;
                }
                continue;
            }
        };
        let entries = stream_entries(reply);
        let any = !entries.is_empty();
        for (id, payload) in entries {
            last = Some(id);
            let decoded = match codec::decode(payload, me, protocol) {
                Ok(d) => d,
                Err(e) => {
                    unreadable += 1;
                    if unreadable.is_power_of_two() {
                        warn!("cluster: skipping entries of stream {key} this node cannot read ({unreadable} so far): {e}");
                    }
                    continue;
                }
            };
            let previous = seen.insert(decoded.node, decoded.batch);
            match previous {
                Some(p) if decoded.batch <= p => {
                    seen.insert(decoded.node, p);
                    continue; // sent again after a broken connection: already taken
                }
                Some(p) if decoded.batch > p + 1 => warn!(
                    "cluster: gap: {} entries of node {:016x} were trimmed from the stream before this node read them",
                    decoded.batch - p - 1,
                    decoded.node
                ),
                _ => {}
            }
            let held: u64 = decoded
                .entries
                .iter()
                .map(|e| held_for(e.len()) as u64)
                .sum();
            order.post(Arc::from(decoded.entries), held);
            if decoded.node == me {
                // After posting: a loop that sees the ticket returned finds it in the order.
                outbox.read_back(decoded.batch);
            }
        }
        if any {
            order.ring_all();
        }
    }
}

/// Where the reader starts, found before the node serves anyone.
struct Start {
    con: redis::Connection,
    from: String,
    run_id: Option<String>,
}

/// The stream's end now, if Redis answers within a second: clients that join from now on
/// are sent every message sent after. (Without Redis, the reader finds its start when it
/// first gets through; other nodes cannot publish meanwhile unless they reach a Redis this
/// node does not.)
fn start_point(client: &redis::Client, key: &str, url: &str) -> Option<Start> {
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    let limit = Some(Duration::from_secs(1));
    con.set_read_timeout(limit).ok()?;
    con.set_write_timeout(limit).ok()?;
    let mut run_id = None;
    let (from, _) = resume_point(&mut con, key, None, &mut run_id, url).ok()?;
    let limit = Some(READ_BLOCK + Duration::from_secs(2));
    con.set_read_timeout(limit).ok()?;
    Some(Start { con, from, run_id })
}

/// A stream id as (milliseconds, sequence), for comparing.
fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// After (re)connecting: where to read from, and whether the stream was lost. The first
/// time, the stream's end. Later, the last id read, unless Redis restarted without it: then
/// that is logged, and the stream is read from its start if it is empty, after its newest
/// entry if that is older than the last id read (what is left is old), else after the last id
/// read (what was added since the restart is newer).
fn resume_point(
    con: &mut redis::Connection,
    key: &str,
    last: Option<&str>,
    run_id: &mut Option<String>,
    url: &str,
) -> redis::RedisResult<(String, bool)> {
    let info: String = redis::cmd("INFO").arg("server").query(con)?;
    let id = info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|s| s.trim().to_string());
    let restarted = run_id.is_some() && id.is_some() && *run_id != id;
    *run_id = id;
    let newest: Value = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(con)?;
    let end = stream_ids(newest).into_iter().next();
    let Some(last) = last else {
        return Ok((end.unwrap_or_else(|| "0-0".into()), false));
    };
    if !restarted || last == "0-0" {
        return Ok((last.to_string(), false));
    }
    let still: Value = redis::cmd("XRANGE")
        .arg(key)
        .arg(last)
        .arg(last)
        .query(con)?;
    if !stream_ids(still).is_empty() {
        info!("cluster: Redis at {url} restarted with the stream's data; reading on after {last}");
        return Ok((last.to_string(), false));
    }
    warn!("cluster: Redis at {url} restarted without the stream's data: messages not yet read are lost; going on with new ones");
    let from = match end {
        None => "0-0".to_string(),
        Some(end) if id_key(&end) < id_key(last) => end,
        Some(_) => last.to_string(),
    };
    Ok((from, true))
}

/// The ids of an `XRANGE`-style reply.
fn stream_ids(v: Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Array(mut pair) if !pair.is_empty() => as_string(pair.swap_remove(0)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The (id, payload) of each entry of a one-stream `XREAD` reply (RESP2 arrays, or RESP3 maps).
fn stream_entries(v: Value) -> Vec<(String, Bytes)> {
    let streams = match v {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => Some(kv.swap_remove(1)),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Value::Map(kv) => kv.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut pair) = entry else {
                continue;
            };
            if pair.len() != 2 {
                continue;
            }
            let fields = pair.swap_remove(1);
            let Some(id) = as_string(pair.swap_remove(0)) else {
                continue;
            };
            let Value::Array(fields) = fields else {
                continue;
            };
            // Fields: "m", payload.
            if let Some(Value::BulkString(payload)) = fields.into_iter().nth(1) {
                out.push((id, Bytes::from(payload)));
            }
        }
    }
    out
}

fn as_string(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_logged_without_its_password() {
        assert_eq!(redacted("redis://:pw@h:1/2"), "redis://***@h:1/2");
        assert_eq!(redacted("redis://u:p@ss@h:1"), "redis://***@h:1");
        assert_eq!(redacted("redis://:pa/ss@h:1"), "redis://***@h:1");
        assert_eq!(
            redacted("redis+unix:///tmp/x.sock?pass=TOPSECRET"),
            "redis+unix:///tmp/x.sock?..."
        );
        assert!(!redacted("nonsense:secret").contains("secret"));
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let bad = ClusterConfig {
            url: "redis://:secret@127.0.0.1:1/notanumber".into(),
            channel: "mob".into(),
            keep: 1,
        };
        let e = bad.client().unwrap_err();
        assert!(e.contains("--cluster") && !e.contains("secret"), "{e}");
        let empty = ClusterConfig {
            url: "redis://127.0.0.1:1".into(),
            channel: String::new(),
            keep: 1,
        };
        assert!(empty.client().unwrap_err().contains("--cluster-channel"));
    }
}
