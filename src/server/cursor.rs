//! A receiver's position in the [`Log`], and the one function that writes a receiver.

use std::io::{self, IoSlice, Write};
use std::mem::MaybeUninit;

use bytes::Bytes;

use super::log::{Entry, Log};

/// Most slices handed to one `writev`: Linux's `IOV_MAX`.
const MAX_IOV: usize = 1024;

/// Bytes offered to one `writev` before it is sent: more than any socket buffer takes at once,
/// and a bound on how much of the log one call walks.
const MAX_WRITE: usize = 4 << 20;

/// Where a receiver is in the log. A receiver owns no queue: what it owes is the log from here.
#[derive(Debug)]
pub struct Cursor {
    /// Sequence number of the next whole message to send.
    next_seq: u64,
    /// The unsent rest of a message a previous write stopped inside. Held here rather than as an
    /// offset so the log may forget that message while this receiver still finishes it.
    partial: Option<Bytes>,
}

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything up to the log's end was written.
    CaughtUp,
    /// The socket took all it could (`WouldBlock`); wait for it to become writable.
    Blocked,
}

impl Cursor {
    /// A cursor that owes nothing of a log whose next message will be `seq`.
    pub fn at(seq: u64) -> Self {
        Cursor {
            next_seq: seq,
            partial: None,
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether a write stopped inside a message that is not finished yet.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Whether anything in `log` remains to be written.
    pub fn is_behind(&self, log: &Log) -> bool {
        self.partial.is_some() || self.next_seq < log.end_seq()
    }

    /// Whether the log already forgot messages this receiver has not been sent.
    pub fn has_fallen_off(&self, log: &Log) -> bool {
        self.next_seq < log.first_seq()
    }

    /// Skips to the oldest message still held; returns how many messages were skipped. A message
    /// already partly sent is still finished, so the receiver's stream stays well-formed.
    pub fn skip_to_first(&mut self, log: &Log) -> u64 {
        let skipped = log.first_seq().saturating_sub(self.next_seq);
        self.next_seq = self.next_seq.max(log.first_seq());
        if let Some(rest) = self.partial.take() {
            // Copy the rest out so a receiver that never reads pins only its own few bytes, not
            // the whole read block the message was split from.
            self.partial = Some(Bytes::copy_from_slice(&rest));
        }
        skipped
    }

    /// Writes the log from this cursor into `out` until caught up or `WouldBlock`, many messages
    /// per `write_vectored`, advancing exactly through partial writes. Messages from `skip_origin`
    /// (the receiver itself, under `--no-echo-self`) are stepped over.
    ///
    /// The caller must first deal with a cursor that [`has_fallen_off`](Self::has_fallen_off).
    pub fn flush<W: Write>(
        &mut self,
        log: &Log,
        skip_origin: Option<u64>,
        out: &mut W,
    ) -> io::Result<Flushed> {
        debug_assert!(!self.has_fallen_off(log));
        loop {
            let result = {
                // Uninitialised, so preparing a write costs nothing per unused slot (an
                // initialised array would be 16 KiB of stores per write).
                let mut slices = [const { MaybeUninit::<IoSlice<'_>>::uninit() }; MAX_IOV];
                let mut n = 0;
                if let Some(rest) = &self.partial {
                    slices[0].write(IoSlice::new(rest));
                    n = 1;
                }
                // Adjacent messages of one batch are handed over as one slice: the kernel
                // copies one run of bytes instead of one small iovec per message.
                let mut run: Option<Run> = None;
                let mut offered = 0;
                for e in log.from(self.next_seq) {
                    if offered >= MAX_WRITE {
                        break;
                    }
                    if Some(e.origin) == skip_origin {
                        continue;
                    }
                    offered += e.bytes.len();
                    if let Some(r) = &mut run {
                        if r.extend(e) {
                            continue;
                        }
                        slices[n].write(r.slice());
                        n += 1;
                    }
                    if n == MAX_IOV {
                        run = None;
                        break;
                    }
                    run = Some(Run::new(e));
                }
                if let Some(r) = run {
                    slices[n].write(r.slice());
                    n += 1;
                }
                if n == 0 {
                    // Nothing to send but (perhaps) own messages: step over them.
                    self.next_seq = log.end_seq();
                    return Ok(Flushed::CaughtUp);
                }
                // SAFETY: the first `n` slots were initialised above, and MaybeUninit<T> has
                // the layout of T.
                let ready =
                    unsafe { std::slice::from_raw_parts(slices.as_ptr().cast::<IoSlice<'_>>(), n) };
                out.write_vectored(ready)
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.advance(log, skip_origin, written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves the cursor over `written` bytes of what `flush` offered.
    fn advance(&mut self, log: &Log, skip_origin: Option<u64>, mut written: usize) {
        if let Some(rest) = &mut self.partial {
            if written < rest.len() {
                *rest = rest.slice(written..);
                return;
            }
            written -= rest.len();
            self.partial = None;
        }
        for e in log.from(self.next_seq) {
            if written == 0 {
                break;
            }
            self.next_seq += 1;
            if Some(e.origin) == skip_origin {
                continue;
            }
            if written < e.bytes.len() {
                self.partial = Some(e.bytes.slice(written..));
                return;
            }
            written -= e.bytes.len();
        }
    }
}

/// A run of log entries that lie back to back in one allocation, to be written as one slice.
struct Run<'a> {
    first: &'a [u8],
    len: usize,
    batch: u64,
}

impl<'a> Run<'a> {
    fn new(e: &'a Entry) -> Self {
        Run {
            first: &e.bytes,
            len: e.bytes.len(),
            batch: e.batch,
        }
    }

    /// Adds `e` if it starts where the run ends and belongs to the same batch.
    fn extend(&mut self, e: &Entry) -> bool {
        let end = self.first.as_ptr().wrapping_add(self.len);
        if e.batch != self.batch || e.bytes.as_ptr() != end {
            return false;
        }
        self.len += e.bytes.len();
        true
    }

    fn slice(&self) -> IoSlice<'a> {
        // SAFETY: entries of one batch are pieces of one allocation (the contract of
        // `Log::append_in_batch`), and each entry added started where the run ended, so the
        // `len` bytes from `first` are initialised bytes of that allocation, which the log
        // keeps alive (and unchanged: `Bytes` are immutable) for as long as `'a`.
        IoSlice::new(unsafe { std::slice::from_raw_parts(self.first.as_ptr(), self.len) })
    }
}

#[cfg(test)]
mod tests;
