//! The single point of order: where decoded input gets its place in the one order.
//!
//! Each event loop holds a [`Sequencer`] and its own view of the log. The interface is small:
//! [`sequence`](Sequencer::sequence) hands over one read visit's batch (never one call per
//! message), [`catch_up`](Sequencer::catch_up) brings the loop's log up to date with what
//! others sequenced, [`end_seq`](Sequencer::end_seq) says where the order ends (where a new
//! client joins) and [`backlog`](Sequencer::backlog) how much sequenced input some loop has not
//! taken yet. After either call the loop's log holds a prefix of the one order, the same prefix
//! for every loop, and each sender's messages in the order it sent them.
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
//! A Redis backplane is a third implementation of the same seam: `sequence` publishes, and
//! what comes back from Redis is what `catch_up` appends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::board::{lock, Board};
use super::log::{Entry, Log};

/// Gives each loop's input its place in the one order (see the module documentation).
#[derive(Debug)]
pub enum Sequencer {
    /// The only loop: append.
    Alone,
    /// One of several loops sharing an [`Order`].
    Shared(Member),
}

impl Sequencer {
    /// Gives every message of `batch` (emptied) its place at the end of the order, and brings
    /// `log` up to it: the messages others sequenced before, then these.
    pub fn sequence(&mut self, batch: &mut Vec<Entry>, log: &mut Log) {
        match self {
            Sequencer::Alone => {
                for entry in batch.drain(..) {
                    log.push(entry);
                }
            }
            Sequencer::Shared(member) => member.sequence(batch, log),
        }
    }

    /// Appends to `log` what other loops sequenced since this loop last looked.
    pub fn catch_up(&mut self, log: &mut Log) {
        if let Sequencer::Shared(member) = self {
            member.catch_up(log);
        }
    }

    /// Where the order ends now: a client joining now is sent what is sequenced from here on.
    /// With several loops this may be ahead of `log`, which catches up when woken.
    pub fn end_seq(&self, log: &Log) -> u64 {
        match self {
            Sequencer::Alone => log.end_seq(),
            Sequencer::Shared(member) => member.order.end.load(Ordering::SeqCst),
        }
    }

    /// Bytes (as `--max-pending` counts them) of sequenced batches that some loop has not
    /// taken into its log yet.
    pub fn backlog(&self) -> usize {
        match self {
            Sequencer::Alone => 0,
            Sequencer::Shared(member) => member.order.backlog.load(Ordering::Relaxed),
        }
    }

    /// The backlog is at or over the read budget: returns whether this loop should stop
    /// reading until it is woken (it will be, once the backlog has dropped below).
    pub fn stall(&self) -> bool {
        match self {
            Sequencer::Alone => false,
            Sequencer::Shared(member) => member.stall(),
        }
    }
}

/// One sequenced batch, kept until every loop has taken it.
#[derive(Debug)]
struct Posted {
    entries: Arc<[Entry]>,
    /// What the batch counts against `--max-pending`.
    held: usize,
}

/// The order several loops share: the batches not yet taken by every loop.
#[derive(Debug)]
pub struct Order {
    state: Mutex<OrderState>,
    /// Messages sequenced so far: the sequence number the next one gets.
    end: AtomicU64,
    /// [`OrderState::backlog`], readable without the lock.
    backlog: AtomicUsize,
    /// Above this backlog, loops stop reading until the slowest loop has caught up.
    read_budget: usize,
    board: Arc<Board>,
    /// Batches sequenced, for the benchmark's wakes per batch.
    batches: AtomicU64,
}

#[derive(Debug)]
struct OrderState {
    /// Batches some loop has not taken yet; `posted[0]` is batch number `first`.
    posted: VecDeque<Posted>,
    first: u64,
    /// Per loop: the number of the next batch it takes; `u64::MAX` once it has left.
    next: Vec<u64>,
    /// Held bytes of `posted`.
    backlog: usize,
    /// Loops waiting for the backlog to drop below the read budget.
    stalled: Vec<bool>,
    /// Messages sequenced so far.
    end: u64,
}

impl Order {
    /// An order for the board's loops; a loop whose input would take the backlog past
    /// `read_budget` waits for the others to take it first.
    pub fn new(board: Arc<Board>, read_budget: usize) -> Arc<Order> {
        let n = board.loops();
        Arc::new(Order {
            state: Mutex::new(OrderState {
                posted: VecDeque::new(),
                first: 0,
                next: vec![0; n],
                backlog: 0,
                stalled: vec![false; n],
                end: 0,
            }),
            end: AtomicU64::new(0),
            backlog: AtomicUsize::new(0),
            read_budget,
            board,
            batches: AtomicU64::new(0),
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

    /// Batches sequenced so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

/// One loop's handle on a shared [`Order`]; leaves it when dropped (the loop ended or
/// panicked), so batches are no longer kept for it.
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
        let held = entries.iter().map(|e| log.held_for(e.len())).sum();
        let mut state = lock(&order.state);
        state.take(me, taken);
        // Input read after shutdown began is not relayed (as with one loop): the cut is the
        // moment the flag was set, and every loop that saw it finds all sequenced before.
        let posted = !order.board.shutting_down();
        if posted {
            state.posted.push_back(Posted { entries, held });
            state.backlog += held;
            state.end += batch.len() as u64;
            state.next[me] += 1;
            order.end.store(state.end, Ordering::SeqCst);
            order.batches.fetch_add(1, Ordering::Relaxed);
        }
        // What this loop was the last to take is forgotten; its own batch stays for the
        // others, every one of which is woken below (stalled or not).
        order.release(&mut state);
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
        let wake = order.release(&mut state);
        drop(state);
        append(taken, log);
        for i in wake {
            order.board.ring(i);
        }
    }

    fn stall(&self) -> bool {
        let mut state = lock(&self.order.state);
        let stall = state.backlog >= self.order.read_budget;
        state.stalled[self.me] = stall;
        stall
    }
}

impl OrderState {
    /// Moves the batches loop `me` has not taken into `taken` (cheap: reference counts).
    fn take(&mut self, me: usize, taken: &mut Vec<Arc<[Entry]>>) {
        let skip = usize::try_from(self.next[me] - self.first).unwrap_or(usize::MAX);
        taken.extend(
            self.posted
                .iter()
                .skip(skip)
                .map(|p| Arc::clone(&p.entries)),
        );
        self.next[me] = self.first + self.posted.len() as u64;
    }
}

impl Order {
    /// Forgets the batches every loop has taken; returns the loops to wake because the backlog
    /// dropped below the read budget while they waited for that.
    fn release(&self, state: &mut OrderState) -> Vec<usize> {
        let oldest = state.next.iter().copied().min().unwrap_or(u64::MAX);
        while state.first < oldest {
            let Some(p) = state.posted.pop_front() else {
                break;
            };
            state.backlog -= p.held;
            state.first += 1;
        }
        self.backlog.store(state.backlog, Ordering::Relaxed);
        if state.backlog >= self.read_budget {
            return Vec::new();
        }
        let mut wake = Vec::new();
        for (i, stalled) in state.stalled.iter_mut().enumerate() {
            if std::mem::take(stalled) {
                wake.push(i);
            }
        }
        wake
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
        let wake = self.order.release(&mut state);
        drop(state);
        for i in wake {
            self.order.board.ring(i);
        }
    }
}

#[cfg(test)]
mod tests;
