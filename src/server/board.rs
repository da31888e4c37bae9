//! What the event loops share apart from the order: their wakers, the connections handed from
//! the acceptor to each loop, the connection counts, and the shutdown flag.
//!
//! Loop 0 accepts for every loop (a mio source stays bound to the first `Poll` it is registered
//! with, so a socket is handed over before it is registered) and gives each new connection to
//! the loop with the fewest. `--max-connections` is counted here, over all loops. With one loop
//! the board is still there, touched once per accept and once per close.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mio::net::TcpStream;
use mio::Waker;

use super::metrics::Published;

/// A connection accepted by loop 0 for another loop, not yet registered with any poll.
#[derive(Debug)]
pub struct Arrival {
    pub socket: TcpStream,
    pub peer: SocketAddr,
    /// Where in the one order it joins: the messages sequenced from here on are its to receive.
    pub join_at: u64,
    /// Accepted on the HTTP listener: it sends a request head first.
    pub http: bool,
}

/// The connections waiting for one loop.
#[derive(Debug, Default)]
struct Arrivals {
    waiting: Vec<Arrival>,
    /// The loop has stopped: a connection handed to it now is closed at once.
    closed: bool,
}

/// One loop's waker, rung at most once until the loop answers (coalesced wakes).
#[derive(Debug)]
struct Bell {
    waker: Waker,
    pending: AtomicBool,
}

/// The state the loops share outside the order (see the module documentation).
#[derive(Debug)]
pub struct Board {
    bells: Vec<Bell>,
    /// Connections handed to each loop and not yet taken.
    arrivals: Vec<Mutex<Arrivals>>,
    /// Per loop, the lowest `join_at` among its arrivals (`u64::MAX` when none): the loop must
    /// not trim its log past it before it takes them.
    floors: Vec<AtomicU64>,
    /// Connections per loop, arrivals included, to balance new ones.
    loads: Vec<AtomicUsize>,
    /// Connections open over all loops, against `--max-connections`.
    open: AtomicUsize,
    /// Of those, TCP clients not joined yet (TLS handshake, token), over all loops.
    waiting: AtomicUsize,
    shutdown: AtomicBool,
    /// Wakes actually sent (a rung bell that was already pending sends none).
    wakes: AtomicU64,
    /// Each loop's counters as last published for `--metrics`.
    published: Vec<Published>,
    /// With `--cluster`: whether the node is connected to the backplane (`mob_cluster_up`).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Health>>,
}

impl Board {
    /// A board for one loop per waker.
    pub fn new(wakers: Vec<Waker>) -> Board {
        let n = wakers.len();
        Board {
            bells: wakers
                .into_iter()
                .map(|waker| Bell {
                    waker,
                    pending: AtomicBool::new(false),
                })
                .collect(),
            arrivals: (0..n).map(|_| Mutex::new(Arrivals::default())).collect(),
            floors: (0..n).map(|_| AtomicU64::new(u64::MAX)).collect(),
            loads: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            wakes: AtomicU64::new(0),
            published: (0..n).map(|_| Published::default()).collect(),
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// Every loop's counters as last published (`--metrics`).
    pub fn published(&self) -> &[Published] {
        &self.published
    }

    /// How many event loops there are.
    pub fn loops(&self) -> usize {
        self.bells.len()
    }

    /// Wakes loop `i` unless a wake is already pending for it. Returns whether it sent one.
    pub fn ring(&self, i: usize) -> bool {
        let bell = &self.bells[i];
        if bell.pending.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.wakes.fetch_add(1, Ordering::Relaxed);
        // A failed wake means that loop is gone already: nothing is left to tell it.
        let _ = bell.waker.wake();
        true
    }

    /// Loop `i` got its wake: later rings wake it again. Call before looking at what the wake
    /// was for, so nothing rung meanwhile goes unseen.
    pub fn answer(&self, i: usize) {
        self.bells[i].pending.store(false, Ordering::SeqCst);
    }

    /// Wakes actually sent so far.
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
    }

    /// Asks every loop to shut down gracefully.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for i in 0..self.loops() {
            self.ring(i);
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Connections open over all loops.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// For a connection just accepted (only the acceptor calls this): the loop to serve it,
    /// the one with the fewest connections, or `None` when `max` are open already.
    pub fn admit(&self, max: usize) -> Option<usize> {
        if self.open.load(Ordering::Relaxed) >= max {
            return None;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        let i = (0..self.loops())
            .min_by_key(|&i| self.loads[i].load(Ordering::Relaxed))
            .unwrap_or(0);
        self.loads[i].fetch_add(1, Ordering::Relaxed);
        Some(i)
    }

    /// TCP clients not joined yet, over all loops.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A client starts (`true`) or stops waiting to join.
    pub fn set_waiting(&self, waiting: bool) {
        if waiting {
            self.waiting.fetch_add(1, Ordering::Relaxed);
        } else {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A connection served by loop `i` was closed (or never taken in).
    pub fn closed(&self, i: usize) {
        self.loads[i].fetch_sub(1, Ordering::Relaxed);
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Hands an accepted connection to loop `i` and wakes it. `join_point` gives its place in
    /// the order and lowers the loop's floor to it (see `Sequencer::join_point`); it is called
    /// with the loop's arrivals locked, so the loop cannot take the connection (and reset the
    /// floor) in between. Returns the socket if that loop has stopped already (shutting
    /// down): the caller closes it.
    pub fn hand_over(
        &self,
        i: usize,
        socket: TcpStream,
        peer: SocketAddr,
        http: bool,
        join_point: impl FnOnce(&AtomicU64) -> u64,
    ) -> Option<TcpStream> {
        let mut arrivals = lock(&self.arrivals[i]);
        if arrivals.closed {
            drop(arrivals);
            self.closed(i);
            return Some(socket);
        }
        let join_at = join_point(&self.floors[i]);
        arrivals.waiting.push(Arrival {
            socket,
            peer,
            join_at,
            http,
        });
        drop(arrivals);
        self.ring(i);
        None
    }

    /// Takes the connections handed to loop `i` (into `into`, emptied first).
    pub fn take_arrivals(&self, i: usize, into: &mut Vec<Arrival>) {
        into.clear();
        let mut arrivals = lock(&self.arrivals[i]);
        std::mem::swap(&mut arrivals.waiting, into);
        self.floors[i].store(u64::MAX, Ordering::SeqCst);
    }

    /// Loop `i`, shutting down with no connections left, may stop if no connection waits for
    /// it: then later hand-overs give theirs back, and this returns true. If one waits, it
    /// returns false: the loop takes it in and drains it first (it was accepted before the
    /// shutdown, and is owed what was sequenced before it).
    pub fn stop_if_idle(&self, i: usize) -> bool {
        let mut arrivals = lock(&self.arrivals[i]);
        if !arrivals.waiting.is_empty() {
            return false;
        }
        arrivals.closed = true;
        true
    }

    /// Loop `i` has stopped (at the shutdown timeout, or after [`stop_if_idle`](Self::stop_if_idle)):
    /// returns what was handed to it meanwhile (to be closed), and makes later hand-overs
    /// give theirs back.
    pub fn stopped(&self, i: usize) -> Vec<Arrival> {
        let mut arrivals = lock(&self.arrivals[i]);
        arrivals.closed = true;
        let left = std::mem::take(&mut arrivals.waiting);
        self.floors[i].store(u64::MAX, Ordering::SeqCst);
        drop(arrivals);
        for _ in &left {
            self.closed(i);
        }
        left
    }

    /// The lowest place in the order at which a connection handed to loop `i` joins, while it
    /// waits to be taken in (`u64::MAX` when none waits).
    pub fn join_floor(&self, i: usize) -> u64 {
        self.floors[i].load(Ordering::SeqCst)
    }
}

/// Locks `m`; a panic elsewhere while it was held leaves plain data behind, still usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::time::Duration;

    fn board(n: usize) -> (Vec<Poll>, Board) {
        let polls: Vec<Poll> = (0..n).map(|_| Poll::new().unwrap()).collect();
        let wakers = polls
            .iter()
            .map(|p| Waker::new(p.registry(), Token(0)).unwrap())
            .collect();
        (polls, Board::new(wakers))
    }

    #[test]
    fn a_bell_rings_once_until_answered() {
        let (mut polls, board) = board(2);
        assert!(board.ring(1));
        assert!(
            !board.ring(1),
            "a second ring while one is pending sends nothing"
        );
        let mut events = Events::with_capacity(4);
        polls[1]
            .poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(events.iter().count(), 1);
        board.answer(1);
        assert!(board.ring(1));
        assert_eq!(board.wakes(), 2);
    }

    #[test]
    fn a_connection_handed_to_a_stopped_loop_comes_back_to_be_closed() {
        let (_polls, board) = board(2);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let socket = || {
            let _client = std::net::TcpStream::connect(addr).unwrap();
            TcpStream::from_std(listener.accept().unwrap().0)
        };
        let floor =
            |join_at| move |f: &AtomicU64| f.fetch_min(join_at, Ordering::SeqCst).min(join_at);
        assert_eq!(board.admit(10), Some(0));
        assert_eq!(board.admit(10), Some(1));
        assert!(board
            .hand_over(1, socket(), addr, false, floor(7))
            .is_none());
        assert_eq!(board.join_floor(1), 7, "the loop keeps its log from 7 on");
        assert!(!board.stop_if_idle(1), "a connection waits: drain it first");
        let left = board.stopped(1);
        assert_eq!(left.len(), 1, "what waited is given back to be closed");
        assert_eq!(left[0].join_at, 7);
        assert_eq!(board.join_floor(1), u64::MAX);
        assert_eq!(board.admit(10), Some(1));
        assert!(board
            .hand_over(1, socket(), addr, false, floor(9))
            .is_some());
        assert_eq!(board.open(), 1, "both closed connections uncounted");
        let to = board.admit(10).unwrap();
        assert!(board.stop_if_idle(to), "nothing waits for it");
        assert!(board
            .hand_over(to, socket(), addr, false, floor(9))
            .is_some());
    }

    #[test]
    fn connections_go_to_the_least_loaded_loop_within_the_limit() {
        let (_polls, board) = board(2);
        assert_eq!(board.admit(3), Some(0));
        assert_eq!(board.admit(3), Some(1));
        assert_eq!(board.admit(3), Some(0));
        assert_eq!(board.admit(3), None, "three open over both loops");
        board.closed(1);
        assert_eq!(board.admit(3), Some(1));
        assert_eq!(board.open(), 3);
    }
}
