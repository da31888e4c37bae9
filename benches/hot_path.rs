//! The relay's hot paths, without sockets: decoding each wire format, encoding, and fanning
//! messages out to 1,000 receivers (log append, then the batched writes into in-memory sinks).
//!
//! A counting global allocator reports allocations per relayed message before the timings;
//! the goal is none per receiver.
//!
//!     cargo bench --bench hot_path

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::{self, IoSlice, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mob::protocol::{Decoder, Protocol};
use mob::server::{Cursor, Inbox, Log};

/// Counts every allocation, so a run can report allocations per message.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MESSAGES: usize = 1_000;
const RECEIVERS: usize = 1_000;
const SIZE: usize = 64;

/// A socket that takes everything: what the fan-out costs without the kernel.
struct Sink(u64);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        self.0 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn stream(protocol: Protocol) -> BytesMut {
    let mut wire = BytesMut::new();
    let payload = [b'x'; SIZE];
    for _ in 0..MESSAGES {
        protocol.encode(&payload, &mut wire);
    }
    wire
}

/// The server's path for one batch: cut a read's worth of messages off one buffer into log
/// entries (as `Inbox::absorb` does for every read), then write every receiver from its cursor.
fn relay_batch(wire: &BytesMut, log: &mut Log, cursors: &mut [Cursor], sinks: &mut [Sink]) {
    let mut scratch = wire.clone();
    let mut inbox = Inbox::new(Decoder::new(Protocol::Frame, 1 << 20));
    let mut batch = Vec::with_capacity(MESSAGES);
    inbox
        .absorb(
            &mut scratch,
            &mut Vec::with_capacity(MESSAGES),
            0,
            &mut batch,
            false,
        )
        .expect("valid stream");
    for entry in batch {
        log.push(entry);
    }
    for (c, s) in cursors.iter_mut().zip(sinks.iter_mut()) {
        c.flush(log, None, s).expect("sink never fails");
    }
    log.trim_before(log.end_seq());
}

fn report_allocations() {
    let wire = stream(Protocol::Frame);
    let mut log = Log::new();
    let mut cursors: Vec<Cursor> = (0..RECEIVERS).map(|_| Cursor::at(0)).collect();
    let mut sinks: Vec<Sink> = (0..RECEIVERS).map(|_| Sink(0)).collect();
    // Warm up: the log's ring and the buffers reach their steady size.
    relay_batch(&wire, &mut log, &mut cursors, &mut sinks);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let batches = 100;
    for _ in 0..batches {
        relay_batch(&wire, &mut log, &mut cursors, &mut sinks);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let messages = (batches * MESSAGES) as f64;
    println!(
        "allocations: {:.4} per relayed message, {:.6} per delivery ({} messages x {} receivers)",
        allocations as f64 / messages,
        allocations as f64 / (messages * RECEIVERS as f64),
        batches * MESSAGES,
        RECEIVERS
    );
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for protocol in [Protocol::Raw, Protocol::Line, Protocol::Frame] {
        let wire = stream(protocol);
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function(format!("{protocol} {MESSAGES} x {SIZE} B"), |b| {
            b.iter_batched_ref(
                || (wire.clone(), Decoder::new(protocol, 1 << 20)),
                |(buf, decoder)| {
                    while let Some(msg) = decoder.decode(buf).expect("valid") {
                        black_box(msg);
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    let payload = [b'x'; SIZE];
    let mut out = BytesMut::with_capacity(1 << 16);
    for protocol in [Protocol::Line, Protocol::Frame] {
        group.bench_function(format!("{protocol} {SIZE} B"), |b| {
            b.iter(|| {
                out.clear();
                protocol.encode(black_box(&payload), &mut out);
            })
        });
    }
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan-out");
    group.throughput(Throughput::Elements((MESSAGES * RECEIVERS) as u64));
    let wire = stream(Protocol::Frame);
    let mut log = Log::new();
    let mut cursors: Vec<Cursor> = (0..RECEIVERS).map(|_| Cursor::at(0)).collect();
    let mut sinks: Vec<Sink> = (0..RECEIVERS).map(|_| Sink(0)).collect();
    group.bench_function(
        format!("{MESSAGES} x {SIZE} B to {RECEIVERS} receivers (deliveries)"),
        |b| b.iter(|| relay_batch(&wire, &mut log, &mut cursors, &mut sinks)),
    );
    group.finish();
}

fn all(c: &mut Criterion) {
    report_allocations();
    decode(c);
    encode(c);
    fan_out(c);
}

criterion_group!(benches, all);
criterion_main!(benches);
