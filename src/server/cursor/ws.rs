//! Writing a WebSocket receiver: each message goes out as a frame header built for it (from
//! its opcode and payload length only, so the same for every receiver) and the shared payload,
//! sliced out of the message's wire form. No payload is copied per receiver.

use std::io::{self, IoSlice, Write};
use std::mem::MaybeUninit;

use bytes::Bytes;

use super::{Cursor, Flushed, MAX_IOV, MAX_WRITE};
use crate::protocol::{Protocol, FRAME_HEADER_LEN};
use crate::server::log::{Entry, Log};
use crate::ws::frame::data_header;

/// The unsent rest of a frame header: `bytes[from..to]`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PendingHead {
    bytes: [u8; 10],
    from: u8,
    to: u8,
}

impl PendingHead {
    fn rest(&self) -> &[u8] {
        &self.bytes[self.from as usize..self.to as usize]
    }
}

/// Where a message's payload lies in its wire form (`wire` is the server's `--protocol`).
fn payload_range(wire: Protocol, e: &Entry) -> (usize, usize) {
    let len = e.len();
    match wire {
        Protocol::Raw => (0, len),
        Protocol::Line => (0, len.saturating_sub(1)),
        Protocol::Frame => (FRAME_HEADER_LEN.min(len), len),
    }
}

/// The frame header a WebSocket receiver gets before `e`'s payload.
fn header(wire: Protocol, e: &Entry) -> ([u8; 10], usize) {
    let (a, b) = payload_range(wire, e);
    data_header(!e.is_binary(), b - a)
}

/// Messages per `writev`: two slices each.
const MESSAGES_PER_WRITE: usize = MAX_IOV / 2 - 1;

impl Cursor {
    /// [`flush`](Cursor::flush) for a WebSocket receiver: the log from this cursor as frames,
    /// header and payload slices per message, many messages per `write_vectored`, advancing
    /// exactly through partial writes (inside a header or a payload).
    pub fn flush_ws<W: Write>(
        &mut self,
        log: &Log,
        skip_origin: Option<u64>,
        wire: Protocol,
        out: &mut W,
    ) -> io::Result<Flushed> {
        debug_assert!(!self.has_fallen_off(log));
        // Each message's header is built once per write and kept for `advance_ws`;
        // uninitialised, so preparing a write costs nothing per unused slot.
        let mut heads = [const { MaybeUninit::<([u8; 10], usize)>::uninit() }; MESSAGES_PER_WRITE];
        loop {
            let mut count = 0;
            let mut offered = 0;
            for e in log.from(self.next_seq) {
                if count == MESSAGES_PER_WRITE || offered >= MAX_WRITE {
                    break;
                }
                if Some(e.origin()) == skip_origin {
                    continue;
                }
                heads[count].write(header(wire, e));
                offered += e.len();
                count += 1;
            }
            // SAFETY: the first `count` slots were initialised above, and MaybeUninit<T> has
            // the layout of T.
            let heads: &[([u8; 10], usize)] =
                unsafe { std::slice::from_raw_parts(heads.as_ptr().cast(), count) };
            let result = {
                let mut slices = [const { MaybeUninit::<IoSlice<'_>>::uninit() }; MAX_IOV];
                let mut n = 0;
                if !self.head.rest().is_empty() {
                    slices[n].write(IoSlice::new(self.head.rest()));
                    n += 1;
                }
                if let Some(rest) = &self.partial {
                    slices[n].write(IoSlice::new(rest));
                    n += 1;
                }
                let own = |e: &&Entry| Some(e.origin()) != skip_origin;
                for (e, (bytes, used)) in log.from(self.next_seq).filter(own).zip(heads) {
                    slices[n].write(IoSlice::new(&bytes[..*used]));
                    let (a, b) = payload_range(wire, e);
                    slices[n + 1].write(IoSlice::new(&e.bytes()[a..b]));
                    n += 2;
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
                Ok(written) => self.advance_ws(log, skip_origin, wire, heads, written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes what is left of a message a write stopped inside (the rest of its frame header,
    /// then of its payload): a receiver being closed is sent that before its close frame.
    pub fn take_unsent(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        let head = std::mem::take(&mut self.head);
        if !head.rest().is_empty() {
            out.push(Bytes::copy_from_slice(head.rest()));
        }
        if let Some(rest) = self.partial.take() {
            out.push(rest);
        }
        self.partial_owned = false;
        out
    }

    /// Moves the cursor over `written` bytes of what `flush_ws` offered: the unsent rest of a
    /// message, then the messages whose headers are `heads`.
    fn advance_ws(
        &mut self,
        log: &Log,
        skip_origin: Option<u64>,
        wire: Protocol,
        heads: &[([u8; 10], usize)],
        mut written: usize,
    ) {
        let pending = self.head.rest().len();
        if pending > 0 {
            if written < pending {
                self.head.from += written as u8;
                return;
            }
            written -= pending;
            self.head = PendingHead::default();
        }
        if let Some(rest) = &mut self.partial {
            if written < rest.len() {
                *rest = rest.slice(written..);
                return;
            }
            written -= rest.len();
            self.partial = None;
            self.partial_owned = false;
        }
        let mut heads = heads.iter();
        for e in log.from(self.next_seq) {
            if written == 0 {
                break;
            }
            self.next_seq += 1;
            if Some(e.origin()) == skip_origin {
                continue;
            }
            let Some(&(bytes, used)) = heads.next() else {
                debug_assert!(false, "more written than offered");
                return;
            };
            let (a, b) = payload_range(wire, e);
            if written < used {
                self.head = PendingHead {
                    bytes,
                    from: written as u8,
                    to: used as u8,
                };
                self.partial = Some(e.slice(a, b));
                return;
            }
            written -= used;
            if written < b - a {
                self.partial = Some(e.slice(a + written, b));
                return;
            }
            written -= b - a;
        }
    }
}

#[cfg(test)]
mod tests;
