//! The single point of order: where decoded input gets its place in the one order.
//!
//! Each event loop holds a [`Sequencer`] and its own view of the log. The interface is small:
//! [`sequence`](Sequencer::sequence) hands over one read visit's batch (never one call per
//! message); [`catch_up`](Sequencer::catch_up) brings the loop's log up to date with what
//! others sequenced; [`join_point`](Sequencer::join_point) says where the order ends (where a
//! new client joins); [`trimmed`](Sequencer::trimmed) reports a trim of the loop's log, and
//! [`pressure`](Sequencer::pressure) says how much input is held because some loop has not
//! trimmed it yet. After `sequence` or `catch_up` the loop's log holds a prefix of the one
//! order, the same prefix for every loop, with each sender's messages in the order it sent them.
//!
//! - [`Sequencer::Alone`], with one loop: sequencing is appending to the loop's log, a plain
//!   call with no lock and no atomics.
//! - [`Sequencer::Shared`], with several loops: an [`Order`] behind one mutex holds the batches
//!   that some loop has not taken yet. Sequencing a batch takes, under the lock, the batches
//!   sequenced before it by other loops, then gives the batch the next place; the entries are
//!   then appended to the loop's own log outside the lock (each loop's log holds its own clone
//!   of each entry: a reference to the shared bytes, never a copy of them). Every other loop is
//!   woken with its `mio::Waker`, at most once until it answers.
//!
//! Reading is bounded as with one loop: a loop stops reading while the input sequenced since
//! the *slowest* loop's last trim counts a round's budget (one loop in a long flush round holds
//! everyone's reading back, as one loop's round holds its own), and is woken when that loop's
//! trim takes it below.
//!
//! A Redis backplane is a third implementation of the same seam: `sequence` publishes, and
//! what comes back from Redis is what `catch_up` appends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::board::{lock, Board};
use super::log::{Entry, Log};
use crate::cluster::Outbox;

/// Gives each loop's input its place in the one order (see the module documentation).
#[derive(Debug)]
pub enum Sequencer {
    /// The only loop: append.
    Alone,
    /// One of several loops sharing an [`Order`].
    Shared(Member),
    /// A node of a cluster: input goes to the backplane (`outbox`); what comes back from it
    /// is posted to the [`Order`] by the backplane's reader, and taken like other loops' batches.
    Cluster(Member, Arc<Outbox>),
}

impl Sequencer {
    /// Gives every message of `batch` (emptied) its place at the end of the order, and brings
    /// `log` up to it: the messages others sequenced before, then these. Returns a ticket that
    /// [`settled`](Self::settled) says is in the order: at once, but in a cluster only once
    /// the batch came back from the backplane.
    pub fn sequence(&mut self, batch: &mut Vec<Entry>, log: &mut Log) -> u64 {
        if let Sequencer::Cluster(member, outbox) = self {
            let mut ticket = 0;
            if !batch.is_empty() && !member.order.board.shutting_down() {
                let held = batch.iter().map(|e| log.held_for(e.len())).sum();
                ticket = outbox.push(member.me, Arc::from(batch.as_slice()), held);
            }
            batch.clear();
            member.catch_up(log);
            return ticket;
        }
        match self {
            Sequencer::Alone => {
                for entry in batch.drain(..) {
                    log.push(entry);
                }
            }
            Sequencer::Shared(member) => member.sequence(batch, log),
            Sequencer::Cluster(..) => unreachable!("handled above"),
        }
        0
    }

    /// Whether what was sequenced with `ticket` is in the order (so a client that sent it and
    /// closed is owed up to where the order ends now, its own last messages included).
    pub fn settled(&self, ticket: u64) -> bool {
        match self {
            Sequencer::Cluster(_, outbox) => outbox.returned() >= ticket,
            _ => true,
        }
    }

    /// Appends to `log` what other loops sequenced since this loop last looked.
    pub fn catch_up(&mut self, log: &mut Log) {
        if let Sequencer::Shared(member) | Sequencer::Cluster(member, _) = self {
            member.catch_up(log);
        }
    }

    /// Where the order ends now: a client accepted now is sent what is sequenced from here on.
    /// With several loops this may be ahead of `log`, which catches up when woken. `floor`, if
    /// given, is lowered to the point, atomically with reading it: the loop the client is
    /// handed to must keep its log from there until it has taken the client in.
    pub fn join_point(&self, log: &Log, floor: Option<&AtomicU64>) -> u64 {
        match self {
            Sequencer::Alone => {
                let end = log.end_seq();
                if let Some(floor) = floor {
                    floor.fetch_min(end, Ordering::SeqCst);
                }
                end
            }
            Sequencer::Shared(member) | Sequencer::Cluster(member, _) => {
                // Under the lock, so no loop takes a batch past this point before the floor
                // is lowered: its trim after taking it sees the floor.
                let state = lock(&member.order.state);
                if let Some(floor) = floor {
                    floor.fetch_min(state.end, Ordering::SeqCst);
                }
                state.end
            }
        }
    }

    /// This loop's log was trimmed; `trimmed_held` is its [`Log::appended_held`] then: the
    /// input it no longer holds back.
    /// `backlog` is about what the slowest of the loop's receivers still had to be sent
    /// then (`Fanout::backlog`).
    pub fn trimmed(&mut self, trimmed_held: u64, backlog: usize) {
        if let Sequencer::Shared(member) | Sequencer::Cluster(member, _) = self {
            member.trimmed(trimmed_held, backlog);
        }
    }

    /// Input (as `--max-pending` counts it) sequenced since the slowest loop last trimmed its
    /// log; 0 with one loop, whose reading counts its own log's input.
    pub fn pressure(&self) -> usize {
        match self {
            Sequencer::Alone => 0,
            Sequencer::Shared(member) => member.order.pressure.0.load(Ordering::Relaxed),
            // Input waiting to be published counts too: while Redis is slow or unreachable
            // the loops stop reading (and are woken when the publisher has made room).
            Sequencer::Cluster(member, outbox) => member
                .order
                .pressure
                .0
                .load(Ordering::Relaxed)
                .max(outbox.held()),
        }
    }

    /// The pressure is at or over the read budget: returns whether this loop should stop
    /// reading until it is woken (it will be, once a trim has taken the pressure below).
    pub fn stall(&self) -> bool {
        match self {
            Sequencer::Alone => false,
            Sequencer::Shared(member) => member.stall(),
            // Held back by input not trimmed yet, or by input not published yet (the
            // backplane is slow or unreachable: the input waits in the clients' sockets).
            Sequencer::Cluster(member, outbox) => member.stall() || outbox.stall(member.me),
        }
    }
}

/// The order several loops share: the batches not yet taken by every loop.
#[derive(Debug)]
pub struct Order {
    state: Mutex<OrderState>,
    /// [`OrderState::pressure`], readable without the lock: a hint (a loop about to stall
    /// checks again under the lock), on a cache line of its own, away from the lock's.
    pressure: CacheLine<AtomicUsize>,
    /// At this pressure, loops stop reading until the slowest loop has trimmed its log.
    read_budget: usize,
    /// Signalled when a trim relieves the pressure (for the cluster's reader).
    relief: std::sync::Condvar,
    board: Arc<Board>,
}

#[derive(Debug)]
struct OrderState {
    /// Batches some loop has not taken yet; `posted[0]` is batch number `first`.
    posted: VecDeque<Arc<[Entry]>>,
    first: u64,
    /// Per loop: the number of the next batch it takes; `u64::MAX` once it has left.
    next: Vec<u64>,
    /// Messages sequenced so far.
    end: u64,
    /// Input ever sequenced, as `--max-pending` counts it.
    sequenced_held: u64,
    /// Per loop: `sequenced_held` up to where its last trim reached; `u64::MAX` once it left.
    trimmed_at: Vec<u64>,
    /// Loops waiting for the pressure to drop below the read budget.
    stalled: Vec<bool>,
    /// Per loop: about what its slowest receiver had still to be sent at its last trim.
    backlog: Vec<usize>,
}

impl OrderState {
    /// Input sequenced since the slowest loop's last trim.
    fn pressure(&self) -> usize {
        let slowest = self.trimmed_at.iter().copied().min().unwrap_or(u64::MAX);
        usize::try_from(self.sequenced_held.saturating_sub(slowest)).unwrap_or(usize::MAX)
    }

    /// Moves the batches loop `me` has not taken into `taken` (cheap: reference counts).
    fn take(&mut self, me: usize, taken: &mut Vec<Arc<[Entry]>>) {
        let skip = usize::try_from(self.next[me] - self.first).unwrap_or(usize::MAX);
        taken.extend(self.posted.iter().skip(skip).map(Arc::clone));
        self.next[me] = self.first + self.posted.len() as u64;
    }

    /// Forgets the batches every loop has taken.
    fn release(&mut self) {
        let oldest = self.next.iter().copied().min().unwrap_or(u64::MAX);
        while self.first < oldest && self.posted.pop_front().is_some() {
            self.first += 1;
        }
    }
}

impl Order {
    /// An order for the board's loops; a loop stops reading while the input some loop has not
    /// trimmed yet counts `read_budget`.
    pub fn new(board: Arc<Board>, read_budget: usize) -> Arc<Order> {
        let n = board.loops();
        Arc::new(Order {
            state: Mutex::new(OrderState {
                posted: VecDeque::new(),
                first: 0,
                next: vec![0; n],
                end: 0,
                sequenced_held: 0,
                trimmed_at: vec![0; n],
                stalled: vec![false; n],
                backlog: vec![0; n],
            }),
            pressure: CacheLine(AtomicUsize::new(0)),
            read_budget,
            relief: std::sync::Condvar::new(),
            board,
        })
    }

    /// The sequencer of loop `me`.
    pub fn member(self: &Arc<Order>, me: usize) -> Sequencer {
        Sequencer::Shared(Member {
            order: Arc::clone(self),
            me,
            taken: Vec::new(),
        })
    }

    /// Posts a batch from outside the loops (the cluster's reader: what came back from the
    /// backplane) at the end of the order; [`ring_all`](Self::ring_all) then wakes the loops.
    /// Not after shutdown began (the loops have taken their last).
    pub fn post(&self, entries: Arc<[Entry]>, held: u64) {
        if entries.is_empty() {
            return;
        }
        let mut state = lock(&self.state);
        if self.board.shutting_down() {
            return;
        }
        state.end += entries.len() as u64;
        state.sequenced_held += held;
        state.posted.push_back(entries);
        self.pressure.0.store(state.pressure(), Ordering::Relaxed);
    }

    /// Wakes every loop (after [`post`](Self::post)s).
    pub fn ring_all(&self) {
        for i in 0..self.board.loops() {
            self.board.ring(i);
        }
    }

    /// For the cluster's reader: whether the input the loops have not trimmed yet is under
    /// the read budget (it must be: what a node catches up on waits in Redis, not here), and
    /// whether every loop's slowest receiver had less than twice that still to be sent at
    /// its last trim (when it has more, posting more at once would make a slow consumer of a
    /// client that reads as fast as it can while the node catches up).
    pub fn room(&self) -> (bool, bool) {
        let state = lock(&self.state);
        self.room_in(&state)
    }

    fn room_in(&self, state: &OrderState) -> (bool, bool) {
        let backlog = state.backlog.iter().copied().max().unwrap_or(0);
        (
            state.pressure() < self.read_budget,
            backlog < 2 * self.read_budget,
        )
    }

    /// Waits (up to `at_most`) until a trim leaves [`room`](Self::room) of both kinds.
    pub fn wait_for_room(&self, at_most: std::time::Duration) {
        let state = lock(&self.state);
        let _ = self
            .relief
            .wait_timeout_while(state, at_most, |s| self.room_in(s) != (true, true));
    }

    /// The sequencer of loop `me` of a cluster node: its input goes to `outbox`.
    pub fn cluster_member(self: &Arc<Order>, me: usize, outbox: Arc<Outbox>) -> Sequencer {
        Sequencer::Cluster(
            Member {
                order: Arc::clone(self),
                me,
                taken: Vec::new(),
            },
            outbox,
        )
    }

    /// Batches sequenced so far.
    pub fn batches(&self) -> u64 {
        let state = lock(&self.state);
        state.first + state.posted.len() as u64
    }

    /// Publishes the pressure; returns the stalled loops to wake if it is below the budget.
    fn relieve(&self, state: &mut OrderState) -> Vec<usize> {
        let pressure = state.pressure();
        self.pressure.0.store(pressure, Ordering::Relaxed);
        let mut wake = Vec::new();
        self.relief.notify_all();
        if pressure < self.read_budget {
            for (i, stalled) in state.stalled.iter_mut().enumerate() {
                if std::mem::take(stalled) {
                    wake.push(i);
                }
            }
        }
        wake
    }
}

/// A value alone on its cache line, so writing it does not slow down whoever uses its
/// neighbours (here: the order's lock, taken by every loop).
#[derive(Debug)]
#[repr(align(64))]
struct CacheLine<T>(T);

/// One loop's handle on a shared [`Order`]; leaves it when dropped (the loop ended or
/// panicked), so batches are no longer kept, nor reading held back, for it.
#[derive(Debug)]
pub struct Member {
    order: Arc<Order>,
    me: usize,
    /// Batches taken under the lock, appended after it (reused).
    taken: Vec<Arc<[Entry]>>,
}

impl Member {
    fn sequence(&mut self, batch: &mut Vec<Entry>, log: &mut Log) {
        if batch.is_empty() {
            return;
        }
        let Member { order, me, taken } = self;
        let me = *me;
        // Built before the lock is taken: the lock covers only the bookkeeping.
        let entries: Arc<[Entry]> = Arc::from(batch.as_slice());
        let held: u64 = entries.iter().map(|e| log.held_for(e.len()) as u64).sum();
        let mut state = lock(&order.state);
        state.take(me, taken);
        // Input read after shutdown began is not relayed (as with one loop): the cut is the
        // moment the flag was set, and every loop that saw it finds all sequenced before.
        let posted = !order.board.shutting_down();
        if posted {
            state.posted.push_back(entries);
            state.end += batch.len() as u64;
            state.sequenced_held += held;
            state.next[me] += 1;
        }
        state.release();
        // Only higher: nobody to wake.
        order.pressure.0.store(state.pressure(), Ordering::Relaxed);
        drop(state);
        append(taken, log);
        if posted {
            for entry in batch.drain(..) {
                log.push(entry);
            }
            for i in (0..order.board.loops()).filter(|&i| i != me) {
                order.board.ring(i);
            }
        } else {
            batch.clear();
        }
    }

    fn catch_up(&mut self, log: &mut Log) {
        let Member { order, me, taken } = self;
        let mut state = lock(&order.state);
        state.take(*me, taken);
        state.release();
        drop(state);
        append(taken, log);
    }

    fn trimmed(&mut self, trimmed_held: u64, backlog: usize) {
        let mut state = lock(&self.order.state);
        state.trimmed_at[self.me] = trimmed_held;
        state.backlog[self.me] = backlog;
        let wake = self.order.relieve(&mut state);
        drop(state);
        for i in wake {
            self.order.board.ring(i);
        }
    }

    fn stall(&self) -> bool {
        let mut state = lock(&self.order.state);
        let stall = state.pressure() >= self.order.read_budget;
        state.stalled[self.me] = stall;
        stall
    }
}

/// Appends the entries of the batches in `taken` (emptied) to `log`, in order.
fn append(taken: &mut Vec<Arc<[Entry]>>, log: &mut Log) {
    for entries in taken.drain(..) {
        for entry in entries.iter() {
            log.push(entry.clone());
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut state = lock(&self.order.state);
        state.next[self.me] = u64::MAX;
        state.trimmed_at[self.me] = u64::MAX;
        state.backlog[self.me] = 0;
        state.stalled[self.me] = false;
        state.release();
        let wake = self.order.relieve(&mut state);
        drop(state);
        for i in wake {
            self.order.board.ring(i);
        }
    }
}

#[cfg(test)]
mod tests;
