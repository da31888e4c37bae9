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
    /// Whether `partial` is a copy of its own rather than a view of a shared block, so a
    /// receiver skipped ahead again and again copies it once.
    partial_owned: bool,
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
            partial_owned: false,
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

    /// Whether anything in `log` is still to be written, not counting messages from
    /// `skip_origin` (which [`flush`](Self::flush) steps over). Walks the log: for rare
    /// decisions, not the data path.
    pub fn owes(&self, log: &Log, skip_origin: Option<u64>) -> bool {
        self.partial.is_some()
            || log
                .from(self.next_seq)
                .any(|e| Some(e.origin()) != skip_origin)
    }

    /// Whether the log already forgot messages this receiver has not been sent.
    pub fn has_fallen_off(&self, log: &Log) -> bool {
        self.next_seq < log.first_seq()
    }

    /// Skips ahead to the newest message of the log (`--slow-consumer drop`); returns how many
    /// messages were skipped. The newest rather than the oldest held: a receiver resumed at the
    /// oldest would stay `--max-pending` behind, keep the log full and fall off again at once;
    /// resumed at the newest it gets the latest news, and the last message sent (the end of a
    /// stream, say) is never what it misses. A message already partly sent is still finished,
    /// so the receiver's stream stays well-formed; its rest is copied out (once) so that a
    /// receiver that never reads pins only those few bytes, not the block the message was read
    /// into.
    pub fn skip_to_newest(&mut self, log: &Log) -> u64 {
        let newest = log.end_seq().saturating_sub(1).max(log.first_seq());
        let skipped = newest.saturating_sub(self.next_seq);
        self.next_seq = self.next_seq.max(newest);
        if let Some(rest) = &mut self.partial {
            if !self.partial_owned {
                *rest = Bytes::copy_from_slice(rest);
                self.partial_owned = true;
            }
        }
        skipped
    }

    /// Takes what is left of a message a write stopped inside: a receiver being closed is
    /// sent that before its close frame.
    pub fn take_unsent(&mut self) -> Option<Bytes> {
        self.partial_owned = false;
        self.partial.take()
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
                // Adjacent messages of one block are handed over as one slice: the kernel
                // copies one run of bytes instead of one small iovec per message.
                let mut run: Option<Run> = None;
                let mut offered = 0;
                for e in log.from(self.next_seq) {
                    if offered >= MAX_WRITE {
                        break;
                    }
                    if Some(e.origin()) == skip_origin {
                        continue;
                    }
                    offered += e.len();
                    if let Some(r) = &mut run {
                        if r.extend(e) {
                            continue;
                        }
                        slices[n].write(IoSlice::new(r.bytes()));
                        n += 1;
                    }
                    if n == MAX_IOV {
                        run = None;
                        break;
                    }
                    run = Some(Run::new(e));
                }
                if let Some(r) = run {
                    slices[n].write(IoSlice::new(r.bytes()));
                    n += 1;
                }
                if n == 0 {
                    // Nothing to send but (perhaps) own messages: step over them. (Never
                    // back: a receiver that joined where the order ended may be ahead of this
                    // loop's log, and a WebSocket one is flushed for its control frames.)
                    self.next_seq = self.next_seq.max(log.end_seq());
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
            self.partial_owned = false;
        }
        for e in log.from(self.next_seq) {
            if written == 0 {
                break;
            }
            self.next_seq += 1;
            if Some(e.origin()) == skip_origin {
                continue;
            }
            if written < e.len() {
                self.partial = Some(e.tail_from(written));
                return;
            }
            written -= e.len();
        }
    }
}

/// A run of log entries that lie back to back in one block, to be written as one slice.
struct Run<'a> {
    first: &'a Entry,
    from: usize,
    to: usize,
}

impl<'a> Run<'a> {
    fn new(e: &'a Entry) -> Self {
        let range = e.range();
        Run {
            first: e,
            from: range.start,
            to: range.end,
        }
    }

    /// Adds `e` if it starts where the run ends, in the same block.
    fn extend(&mut self, e: &Entry) -> bool {
        match self.first.continued_by(self.to, e) {
            Some(end) => {
                self.to = end;
                true
            }
            None => false,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.first.block_slice(self.from, self.to)
    }
}

#[cfg(test)]
pub(crate) mod tests;
