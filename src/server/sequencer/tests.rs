use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use mio::{Events, Poll, Token, Waker};
use proptest::prelude::*;

use super::*;

/// `n` loops' polls, their board and one sequencer and log each.
fn loops(n: usize, read_budget: usize) -> (Vec<Poll>, Arc<Board>, Vec<(Sequencer, Log)>) {
    let polls: Vec<Poll> = (0..n).map(|_| Poll::new().unwrap()).collect();
    let wakers = polls
        .iter()
        .map(|p| Waker::new(p.registry(), Token(0)).unwrap())
        .collect();
    let board = Arc::new(Board::new(wakers));
    let order = Order::new(Arc::clone(&board), read_budget);
    let members = (0..n)
        .map(|i| (order.member(i), Log::for_loops(n)))
        .collect();
    (polls, board, members)
}

/// A batch of messages `producer:k` for `k` in `from..from + len`.
fn batch(producer: usize, from: usize, len: usize) -> Vec<Entry> {
    (from..from + len)
        .map(|k| Entry::whole(Bytes::from(format!("{producer}:{k}")), producer as u64).unwrap())
        .collect()
}

fn contents(log: &Log) -> Vec<String> {
    log.from(0)
        .map(|e| String::from_utf8(e.bytes().to_vec()).unwrap())
        .collect()
}

#[test]
fn alone_is_a_plain_append() {
    let mut s = Sequencer::Alone;
    let mut log = Log::new();
    let mut b = batch(0, 0, 3);
    s.sequence(&mut b, &mut log);
    assert!(b.is_empty());
    assert_eq!(contents(&log), ["0:0", "0:1", "0:2"]);
    assert_eq!(s.join_point(&log, None), 3);
    assert_eq!(s.pressure(), 0);
    assert!(!s.stall());
}

#[test]
fn a_batch_comes_after_what_others_sequenced_before_it() {
    let (_polls, board, mut m) = loops(2, 1 << 20);
    let (a, b) = m.split_at_mut(1);
    let ((sa, la), (sb, lb)) = (&mut a[0], &mut b[0]);
    sa.sequence(&mut batch(0, 0, 2), la);
    sb.sequence(&mut batch(1, 0, 1), lb);
    assert_eq!(
        contents(lb),
        ["0:0", "0:1", "1:0"],
        "b takes a's batch first"
    );
    let floor = AtomicU64::new(u64::MAX);
    assert_eq!(
        sa.join_point(la, Some(&floor)),
        3,
        "the order's end, ahead of a's log"
    );
    assert_eq!(
        floor.load(Ordering::SeqCst),
        3,
        "the floor is lowered to the join point"
    );
    sa.catch_up(la);
    assert_eq!(contents(la), contents(lb));
    assert_eq!(board.wakes(), 2, "one wake per batch for the other loop");
}

#[test]
fn wakes_are_coalesced_until_answered() {
    let (mut polls, board, mut m) = loops(2, 1 << 20);
    let (sa, la) = &mut m[0];
    for k in 0..10 {
        sa.sequence(&mut batch(0, k, 1), la);
    }
    assert_eq!(
        board.wakes(),
        1,
        "one wake while the other loop has not answered"
    );
    let mut events = Events::with_capacity(4);
    polls[1]
        .poll(&mut events, Some(Duration::from_secs(5)))
        .unwrap();
    board.answer(1);
    let (sb, lb) = &mut m[1];
    sb.catch_up(lb);
    assert_eq!(lb.end_seq(), 10);
    let (sa, la) = &mut m[0];
    sa.sequence(&mut batch(0, 10, 1), la);
    assert_eq!(board.wakes(), 2);
}

/// Reading is held back by the loop that has trimmed least, not by the one that has taken
/// least: a loop in a long flush round takes input every turn but trims once a round.
#[test]
fn the_pressure_stalls_readers_until_the_slowest_loop_trims() {
    let held = Log::for_loops(2).held_for(3) as u64;
    let (_polls, board, mut m) = loops(2, 2 * held as usize);
    let (sa, la) = &mut m[0];
    sa.sequence(&mut batch(0, 0, 1), la);
    assert!(!sa.stall(), "one message is below the budget of two");
    sa.sequence(&mut batch(0, 1, 1), la);
    assert_eq!(sa.pressure() as u64, 2 * held);
    assert!(sa.stall());
    sa.trimmed(la.appended_held(), 0);
    assert_eq!(
        sa.pressure() as u64,
        2 * held,
        "b holds it all: not trimmed yet"
    );
    board.answer(0);
    board.answer(1);
    let before = board.wakes();
    let (sb, lb) = &mut m[1];
    sb.catch_up(lb);
    assert_eq!(sb.pressure() as u64, 2 * held, "taking is not trimming");
    assert_eq!(
        board.wakes(),
        before,
        "nobody is woken by b taking the input"
    );
    sb.trimmed(held, 0);
    assert_eq!(
        sb.pressure() as u64,
        held,
        "b trimmed the first message only"
    );
    assert_eq!(board.wakes(), before + 1, "the stalled loop is woken");
    sb.trimmed(lb.appended_held(), 0);
    assert_eq!(sb.pressure(), 0);
}

#[test]
fn a_loop_that_left_holds_nothing_back() {
    let (_polls, _board, mut m) = loops(2, 1 << 20);
    let (sb, lb) = m.pop().unwrap();
    drop((sb, lb));
    let (sa, la) = &mut m[0];
    sa.sequence(&mut batch(0, 0, 5), la);
    sa.trimmed(la.appended_held(), 0);
    assert_eq!(sa.pressure(), 0, "no loop left to hold it back for");
}

#[test]
fn nothing_is_sequenced_after_shutdown_began() {
    let (_polls, board, mut m) = loops(2, 1 << 20);
    let (sa, la) = &mut m[0];
    sa.sequence(&mut batch(0, 0, 1), la);
    board.request_shutdown();
    let mut late = batch(0, 1, 1);
    sa.sequence(&mut late, la);
    assert!(late.is_empty());
    assert_eq!(contents(la), ["0:0"]);
    let (sb, lb) = &mut m[1];
    sb.catch_up(lb);
    assert_eq!(contents(lb), ["0:0"]);
}

/// Checks the logs of all loops: the same sequence, every message once, each producer's in
/// the order it produced them.
fn check_one_order(logs: &[Vec<String>], produced: &[usize]) {
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(log, &logs[0], "loop {i} saw another order than loop 0");
    }
    let mut next = vec![0; produced.len()];
    for m in &logs[0] {
        let (p, k) = m.split_once(':').unwrap();
        let (p, k): (usize, usize) = (p.parse().unwrap(), k.parse().unwrap());
        assert_eq!(k, next[p], "producer {p}'s messages out of order or lost");
        next[p] += 1;
    }
    assert_eq!(next, produced, "messages lost");
}

proptest! {
    /// Any interleaving of batches from N producers, and of their catching up, yields one
    /// order, the same in every loop, that keeps each producer's order and loses nothing.
    #[test]
    fn any_interleaving_yields_one_order(
        n in 2usize..5,
        steps in proptest::collection::vec((0usize..4, 0usize..4, any::<bool>()), 1..60),
    ) {
        let (_polls, _board, mut m) = loops(n, usize::MAX);
        let mut produced = vec![0; n];
        for (who, len, catch_up) in steps {
            let who = who % n;
            let (s, log) = &mut m[who];
            if catch_up {
                s.catch_up(log);
            } else {
                s.sequence(&mut batch(who, produced[who], len), log);
                produced[who] += len;
            }
        }
        for (s, log) in &mut m {
            s.catch_up(log);
        }
        let logs: Vec<Vec<String>> = m.iter().map(|(_, log)| contents(log)).collect();
        check_one_order(&logs, &produced);
        for (s, log) in &mut m {
            s.trimmed(log.appended_held(), 0);
        }
        prop_assert_eq!(m[0].0.pressure(), 0);
    }
}

/// The same with real threads racing: each loop sequences its batches and catches up when
/// woken, as the event loops do.
#[test]
fn threads_racing_agree_on_one_order() {
    const N: usize = 4;
    const BATCHES: usize = 500;
    let (polls, board, members) = loops(N, usize::MAX);
    let handles: Vec<_> = polls
        .into_iter()
        .zip(members)
        .enumerate()
        .map(|(who, (mut poll, (mut s, mut log)))| {
            let board = Arc::clone(&board);
            std::thread::spawn(move || {
                let mut events = Events::with_capacity(8);
                for b in 0..BATCHES {
                    s.sequence(&mut batch(who, b * 3, 3), &mut log);
                    poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
                    if !events.is_empty() {
                        board.answer(who);
                        s.catch_up(&mut log);
                    }
                }
                (s, log)
            })
        })
        .collect();
    let mut done: Vec<(Sequencer, Log)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (s, log) in &mut done {
        s.catch_up(log);
    }
    let logs: Vec<Vec<String>> = done.iter().map(|(_, log)| contents(log)).collect();
    check_one_order(&logs, &[BATCHES * 3; N]);
}
