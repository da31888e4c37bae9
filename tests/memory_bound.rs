//! What the log holds is what `--max-pending` counts, for any way a client splits its messages.
//!
//! The server's read path (`Inbox::absorb` over the loop's scratch block, then the log) is
//! driven with random messages cut at random points, with a receiver that never reads (nothing
//! is trimmed), and the heap it really uses is measured with a counting allocator. This is a
//! test binary of its own so that no other test allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use mob::protocol::{Decoder, Protocol};
use mob::server::{reserve_for_read, Inbox, Log, READ_BLOCK};
use proptest::prelude::*;

thread_local! {
    /// Bytes allocated and not yet freed by this thread (the test's own; proptest or another
    /// test allocating on another thread does not count). Const-initialised: no allocation.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn live() -> isize {
    LIVE.with(|l| l.get())
}

fn count(delta: isize) {
    // `try_with`: a thread being torn down has no counter left; its frees do not matter.
    let _ = LIVE.try_with(|l| l.set(l.get() + delta));
}

struct Counting;

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Sends `stream` through the read path in reads of the given sizes, keeping every message
/// (a stuck receiver); returns (heap used, bytes counted by the log and the inbox).
fn held_and_counted(protocol: Protocol, stream: &[u8], reads: &[usize]) -> (isize, usize) {
    let before = live();
    let mut log = Log::new();
    let mut inbox = Inbox::new(Decoder::new(protocol, 1 << 20));
    let mut scratch = BytesMut::new();
    let mut spans = Vec::new();
    let mut batch = Vec::new();
    let mut rest = stream;
    let mut sizes = reads.iter().copied().cycle();
    while !rest.is_empty() {
        reserve_for_read(&mut scratch);
        // As the server reads: a small partial goes to the front of the scratch block first;
        // a read takes at most the spare room left, as read(2) does.
        let prefixed = inbox.prefix(&mut scratch);
        let room = scratch.capacity() - scratch.len();
        let n = sizes.next().unwrap().clamp(1, rest.len()).min(room);
        scratch.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        inbox
            .absorb(&mut scratch, &mut spans, 1, &mut batch, prefixed)
            .expect("valid stream");
        for entry in batch.drain(..) {
            log.push(entry);
        }
    }
    // The loop's own buffers are there whatever clients do: leave them out.
    drop((scratch, spans, batch));
    let used = live() - before;
    let counted = log.held() + inbox.held();
    drop((log, inbox));
    (used, counted)
}

fn stream_of(protocol: Protocol, lens: &[usize]) -> Vec<u8> {
    let mut wire = BytesMut::new();
    for &len in lens {
        protocol.encode(&vec![b'm'; len], &mut wire);
    }
    wire.to_vec()
}

/// Slack for the one scratch block the last messages may still be in, partly unused.
const SLACK: isize = 2 * READ_BLOCK as isize;

#[test]
fn tiny_messages_split_in_two_reads_hold_what_they_count() {
    // The attack from the issue: "x" then "\n", 20,000 times.
    let stream = stream_of(Protocol::Line, &[1; 20_000]);
    let (used, counted) = held_and_counted(Protocol::Line, &stream, &[1]);
    eprintln!("20,000 split 2-byte lines: {used} bytes used, {counted} counted");
    assert!(
        used <= counted as isize + SLACK,
        "{used} used, {counted} counted"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_split_of_any_messages_holds_at_most_what_is_counted(
        lens in proptest::collection::vec(prop_oneof![0usize..8, 0usize..200, 0usize..20_000], 1..2000),
        reads in proptest::collection::vec(prop_oneof![1usize..4, 1usize..100, 1usize..70_000], 1..16),
        frame in any::<bool>(),
    ) {
        let protocol = if frame { Protocol::Frame } else { Protocol::Line };
        let stream = stream_of(protocol, &lens);
        let (used, counted) = held_and_counted(protocol, &stream, &reads);
        prop_assert!(used <= counted as isize + SLACK, "{} used, {} counted", used, counted);
    }
}
