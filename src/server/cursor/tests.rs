use std::io::{self, Write};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::server::Entry;

/// An in-memory socket that accepts a scripted number of bytes per write, then `WouldBlock`.
pub(crate) struct Sink {
    pub(crate) got: Vec<u8>,
    /// Per call: `Some(n)` takes up to n bytes, `None` is `WouldBlock`; cycles.
    script: Vec<Option<usize>>,
    call: usize,
    writes: usize,
}

impl Sink {
    pub(crate) fn new(script: Vec<Option<usize>>) -> Self {
        Sink {
            got: Vec::new(),
            script,
            call: 0,
            writes: 0,
        }
    }
}

impl Sink {
    /// A sink following `script` plus one step that takes bytes, so that retrying always
    /// finishes.
    fn progressing(mut script: Vec<Option<usize>>) -> Self {
        script.push(Some(7));
        Sink::new(script)
    }
}

/// Keeps offering writes until the receiver has everything.
fn finish(c: &mut Cursor, log: &Log, skip: Option<u64>, sink: &mut Sink) {
    for _ in 0..10_000 {
        if !c.is_behind(log) {
            return;
        }
        c.flush(log, skip, sink).unwrap();
    }
    panic!("still behind after 10,000 flushes");
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let step = self.script[self.call % self.script.len()];
        self.call += 1;
        let Some(mut room) = step else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        self.writes += 1;
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(room);
            self.got.extend_from_slice(&b[..take]);
            room -= take;
            n += take;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Appends `msgs` as the server does with the messages of one read: ranges of one block.
fn append_block(log: &mut Log, msgs: &[(&[u8], u64)]) {
    let block: Bytes = msgs.iter().flat_map(|(m, _)| m.iter().copied()).collect();
    let mut start = 0;
    for (m, origin) in msgs {
        log.push(Entry::new(block.clone(), start, m.len(), *origin).unwrap());
        start += m.len();
    }
}

fn log_with(msgs: &[(&'static [u8], u64)]) -> Log {
    let mut log = Log::new();
    for (m, origin) in msgs {
        log.append(Bytes::from_static(m), *origin);
    }
    log
}

#[test]
fn many_messages_go_out_in_one_write() {
    let log = log_with(&[(b"a\n", 1), (b"b\n", 2), (b"c\n", 1)]);
    let mut c = Cursor::at(0);
    let mut sink = Sink::new(vec![Some(usize::MAX)]);
    assert_eq!(c.flush(&log, None, &mut sink).unwrap(), Flushed::CaughtUp);
    assert_eq!(sink.got, b"a\nb\nc\n");
    assert_eq!(sink.writes, 1);
    assert!(!c.is_behind(&log));
}

#[test]
fn own_messages_are_skipped() {
    let log = log_with(&[(b"a\n", 1), (b"b\n", 2), (b"c\n", 1)]);
    let mut c = Cursor::at(0);
    let mut sink = Sink::new(vec![Some(usize::MAX)]);
    c.flush(&log, Some(1), &mut sink).unwrap();
    assert_eq!(sink.got, b"b\n");
    assert_eq!(c.next_seq(), 3);
}

#[test]
fn a_message_partly_sent_is_finished_even_after_the_log_forgets_it() {
    let mut log = log_with(&[(b"hello\n", 1), (b"world\n", 1)]);
    let mut c = Cursor::at(0);
    let mut sink = Sink::new(vec![Some(3), None]);
    assert_eq!(c.flush(&log, None, &mut sink).unwrap(), Flushed::Blocked);
    log.trim_to(0);
    assert!(c.has_fallen_off(&log));
    assert_eq!(c.skip_to_newest(&log), 1, "world, never begun, is skipped");
    assert_eq!(c.skip_to_newest(&log), 0, "skipping again skips nothing");
    log.append(Bytes::from_static(b"again\n"), 1);
    let mut rest = Sink::new(vec![Some(usize::MAX)]);
    c.flush(&log, None, &mut rest).unwrap();
    sink.got.extend_from_slice(&rest.got);
    assert_eq!(sink.got, b"hello\nagain\n");
}

#[test]
fn socket_errors_are_returned() {
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let log = log_with(&[(b"a\n", 1)]);
    let err = Cursor::at(0).flush(&log, None, &mut Broken).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
}

#[test]
fn adjacent_messages_of_one_batch_go_out_as_one_slice() {
    let mut log = Log::new();
    append_block(&mut log, &[(b"a\n", 1), (b"b\n", 1), (b"c\n", 1)]);
    struct Slices(Vec<usize>);
    impl Write for Slices {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.len());
            Ok(buf.len())
        }
        fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            self.0.extend(bufs.iter().map(|b| b.len()));
            Ok(bufs.iter().map(|b| b.len()).sum())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut out = Slices(Vec::new());
    Cursor::at(0).flush(&log, None, &mut out).unwrap();
    assert_eq!(out.0, vec![6]);
    // The sender's own message in the middle splits the run.
    let mut out = Slices(Vec::new());
    let mut log2 = Log::new();
    append_block(&mut log2, &[(b"a\n", 1), (b"b\n", 2), (b"c\n", 1)]);
    Cursor::at(0).flush(&log2, Some(2), &mut out).unwrap();
    assert_eq!(out.0, vec![2, 2]);
}

proptest! {
    /// The same with messages split off shared buffers, as the server appends them, so runs of
    /// them are merged into single slices and writes stop inside those runs.
    #[test]
    fn merged_runs_are_delivered_exactly(
        batches in proptest::collection::vec(
            proptest::collection::vec((proptest::collection::vec(any::<u8>(), 1..20), 0u64..3), 1..20),
            1..8,
        ),
        script in proptest::collection::vec(proptest::option::weighted(0.8, 1usize..50), 1..10),
        skip in proptest::option::of(0u64..3),
    ) {
        let mut log = Log::new();
        let mut c = Cursor::at(0);
        let mut sink = Sink::progressing(script);
        let mut want = Vec::new();
        for msgs in &batches {
            let msgs: Vec<(&[u8], u64)> = msgs.iter().map(|(m, o)| (&m[..], *o)).collect();
            append_block(&mut log, &msgs);
            for (m, origin) in &msgs {
                if Some(*origin) != skip {
                    want.extend_from_slice(m);
                }
            }
            let _ = c.flush(&log, skip, &mut sink).unwrap();
        }
        finish(&mut c, &log, skip, &mut sink);
        prop_assert_eq!(sink.got, want);
    }

    /// Partial writes and `WouldBlock` at any byte lose, duplicate and reorder nothing, with
    /// messages appended between flushes.
    #[test]
    fn any_write_pattern_delivers_the_log_exactly(
        msgs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 1..20), 0u64..3), 1..60),
        script in proptest::collection::vec(proptest::option::weighted(0.8, 1usize..50), 1..10),
        batch in 1usize..10,
        skip in proptest::option::of(0u64..3),
    ) {
        let mut log = Log::new();
        let mut c = Cursor::at(0);
        let mut sink = Sink::progressing(script);
        for chunk in msgs.chunks(batch) {
            for (m, origin) in chunk {
                log.append(Bytes::from(m.clone()), *origin);
            }
            let _ = c.flush(&log, skip, &mut sink).unwrap();
        }
        finish(&mut c, &log, skip, &mut sink);
        let want: Vec<u8> = msgs
            .iter()
            .filter(|(_, o)| Some(*o) != skip)
            .flat_map(|(m, _)| m.clone())
            .collect();
        prop_assert_eq!(sink.got, want);
    }
}

#[test]
fn a_receiver_skipped_again_and_again_copies_its_unsent_rest_once() {
    let block = Bytes::from_static(b"hello\n");
    let mut log = Log::new();
    log.push(Entry::whole(block.clone(), 1).unwrap());
    let mut c = Cursor::at(0);
    let mut sink = Sink::new(vec![Some(2), None]);
    assert_eq!(c.flush(&log, None, &mut sink).unwrap(), Flushed::Blocked);
    let shared = c.partial.as_ref().unwrap().as_ptr();
    assert_eq!(
        shared,
        block[2..].as_ptr(),
        "before any skip it shares the block"
    );
    log.trim_to(0);
    c.skip_to_newest(&log);
    let copied = c.partial.as_ref().unwrap().as_ptr();
    assert_ne!(
        copied, shared,
        "the first skip copies the rest out of the block"
    );
    log.append(Bytes::from_static(b"more\n"), 1);
    log.trim_to(0);
    c.skip_to_newest(&log);
    assert_eq!(
        c.partial.as_ref().unwrap().as_ptr(),
        copied,
        "later skips do not copy again"
    );
    let mut rest = Sink::new(vec![Some(usize::MAX)]);
    c.flush(&log, None, &mut rest).unwrap();
    assert_eq!(rest.got, b"llo\n");
}

#[test]
fn a_skipped_receiver_resumes_at_the_newest_message() {
    let mut log = log_with(&[(b"a\n", 1), (b"b\n", 1), (b"c\n", 1)]);
    log.trim_before(1);
    let mut c = Cursor::at(0);
    assert!(c.has_fallen_off(&log));
    assert_eq!(c.skip_to_newest(&log), 2, "a and b are skipped");
    let mut sink = Sink::new(vec![Some(usize::MAX)]);
    c.flush(&log, None, &mut sink).unwrap();
    assert_eq!(sink.got, b"c\n");
}

#[test]
fn a_cursor_ahead_of_the_log_stays_where_it_is() {
    // A receiver that joined where the order ended, ahead of its loop's log (several loops),
    // and is flushed before that log catches up (a WebSocket receiver owed its 101).
    let log = log_with(&[(b"a\n", 1), (b"b\n", 1)]);
    let mut c = Cursor::at(5);
    let mut sink = Sink::new(vec![Some(usize::MAX)]);
    assert_eq!(c.flush(&log, None, &mut sink).unwrap(), Flushed::CaughtUp);
    assert_eq!(c.next_seq(), 5);
    assert!(sink.got.is_empty());
}
