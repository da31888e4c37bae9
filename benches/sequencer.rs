//! The sequencer hand-off: what it costs a loop to give a read batch its place in the one order
//! and to take the batches of the other loops into its own log, with 1, 2 and 4 loops (threads)
//! sequencing at once. `alone` is `--threads 1`'s plain append, for comparison.
//!
//! Each loop sequences batches of [`BATCH`] messages of 64 bytes and, when its waker has fired,
//! catches up, then trims its log as a flush round would. An iteration is one batch per loop.
//! After the timings, the wakes sent per batch sequenced are printed.
//!
//!     cargo bench --bench sequencer

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mio::{Events, Poll, Token, Waker};
use mob::server::{Board, Entry, Log, Order, Sequencer};

/// Messages per batch: a read of 2 KiB of 64-byte messages.
const BATCH: usize = 32;
const SIZE: usize = 64;

/// One block holding a batch's messages, as a read leaves them.
fn template() -> Vec<Entry> {
    let block = Bytes::from(vec![b'x'; BATCH * SIZE]);
    (0..BATCH)
        .map(|i| Entry::new(block.clone(), i * SIZE, SIZE, 0).unwrap())
        .collect()
}

/// A loop's part: `iters` batches sequenced, catching up whenever woken, log trimmed after.
fn run_loop(mut poll: Poll, mut s: Sequencer, board: Option<(&Board, usize)>, iters: u64) {
    let template = template();
    let mut log = Log::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut events = Events::with_capacity(8);
    for _ in 0..iters {
        batch.extend(template.iter().cloned());
        s.sequence(&mut batch, &mut log);
        if let Some((board, me)) = board {
            poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
            if !events.is_empty() {
                board.answer(me);
                s.catch_up(&mut log);
            }
        }
        log.trim_before(log.end_seq());
    }
}

/// Runs `loops` threads sequencing `iters` batches each; returns the time and the wakes sent
/// per batch.
fn shared(loops: usize, iters: u64) -> (Duration, f64) {
    let polls: Vec<Poll> = (0..loops).map(|_| Poll::new().unwrap()).collect();
    let wakers = polls
        .iter()
        .map(|p| Waker::new(p.registry(), Token(0)).unwrap())
        .collect();
    let board = Arc::new(Board::new(wakers));
    let order = Order::new(Arc::clone(&board), usize::MAX);
    let start = Arc::new(Barrier::new(loops + 1));
    let threads: Vec<_> = polls
        .into_iter()
        .enumerate()
        .map(|(me, poll)| {
            let s = order.member(me);
            let (board, start) = (Arc::clone(&board), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                run_loop(poll, s, Some((&board, me)), iters);
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    let took = t0.elapsed();
    (took, board.wakes() as f64 / order.batches().max(1) as f64)
}

fn hand_off(c: &mut Criterion) {
    let mut group = c.benchmark_group("sequence");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("alone", |b| {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            run_loop(Poll::new().unwrap(), Sequencer::Alone, None, iters);
            t0.elapsed()
        })
    });
    for loops in [1, 2, 4] {
        // Per iteration every loop sequences a batch: loops × BATCH messages.
        group.throughput(Throughput::Elements((loops * BATCH) as u64));
        group.bench_function(format!("shared/{loops}"), |b| {
            b.iter_custom(|iters| shared(loops, iters).0)
        });
    }
    group.finish();
    for loops in [2, 4] {
        let (took, wakes) = shared(loops, 200_000);
        let batches = 200_000.0 * loops as f64;
        println!(
            "shared/{loops}: {:.0} batches/s, {:.1} ns per message, {wakes:.3} wakes sent per batch sequenced",
            batches / took.as_secs_f64(),
            took.as_secs_f64() * 1e9 / (batches * BATCH as f64),
        );
    }
}

criterion_group!(benches, hand_off);
criterion_main!(benches);
