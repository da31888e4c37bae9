//! One client's input turned into log entries: the pure half of reading, with no I/O.
//!
//! Reads go into the loop's scratch block; [`Inbox::absorb`] cuts the complete messages in it
//! into [`Entry`]s that share that block (no copy) and copies only an incomplete last message
//! into the client's own `partial` buffer. A message that spans several reads is completed
//! there, in a buffer sized to it, so that no message keeps a larger block alive than what
//! `--max-pending` counts for it.

use bytes::{BufMut, BytesMut};

use super::log::Entry;
use crate::protocol::{Decoder, Next, ProtocolError};

/// Size of a fresh scratch block. Messages are split off it without a copy, so one block
/// carries the messages of many reads (of all clients) until every receiver has been sent them.
pub const READ_BLOCK: usize = 256 * 1024;

/// Start a fresh block when less than this is left in the current one: reads stay large (a
/// message completed from an earlier read is copied out, so the same stretch of a block can
/// serve read after read), and the room a block leaves unused stays under an eighth of it.
const MIN_READ: usize = 32 * 1024;

/// The most one read takes: a bound on what a single read can add to the log.
pub const MAX_READ: usize = 64 * 1024;

/// An incomplete message up to this long is continued in the scratch block (see
/// [`Inbox::prefix`]); a longer one in its own buffer, so it is not copied again per read.
const SMALL_PARTIAL: usize = 4 * 1024;

/// Makes room in the loop's scratch block for the next read.
pub fn reserve_for_read(scratch: &mut BytesMut) {
    if scratch.capacity() - scratch.len() < MIN_READ {
        scratch.reserve(READ_BLOCK);
    }
}

/// Bytes between the messages of one read may be at most this fraction (1/n) of theirs before
/// the messages are copied out rather than keep those bytes alive. With the room a block may
/// leave unused ([`MIN_READ`] of [`READ_BLOCK`]), this is what the quarter that each message
/// counts beyond its length (`Entry::held`) pays for.
const WASTE_RATIO: usize = 16;

/// Where the messages of one read live.
struct Block {
    bytes: bytes::Bytes,
    /// The messages were copied here back to back (offsets from 0), not cut out of scratch.
    is_copy: bool,
}

/// The state between reads of one client: its decoder and an incomplete message.
#[derive(Debug)]
pub struct Inbox {
    /// Splits this client's input into messages.
    decoder: Decoder,
    /// The start of a message an earlier read left incomplete; empty (and unallocated) for an
    /// idle client. Its buffer grows geometrically with what arrived, never past the message's
    /// length (a frame's, once its header is known; for a line `--max-message` + 1).
    partial: BytesMut,
}

impl Inbox {
    pub fn new(decoder: Decoder) -> Self {
        Inbox {
            decoder,
            partial: BytesMut::new(),
        }
    }

    /// The wire format this client speaks.
    pub fn protocol(&self) -> crate::protocol::Protocol {
        self.decoder.protocol()
    }

    /// Bytes held for an incomplete message (its buffer's capacity, which is what it costs).
    pub fn held(&self) -> usize {
        self.partial.capacity()
    }

    /// Before a read into the empty `scratch`: copies a small incomplete message to its front,
    /// so that the read continues it in place and, once complete, it lies in the shared block
    /// right before the messages that follow it (one slice for a writer, no buffer of its
    /// own). The partial itself stays until [`absorb`](Self::absorb) is told the read came:
    /// if none does, clear `scratch` and nothing is lost. Returns whether it copied.
    pub fn prefix(&self, scratch: &mut BytesMut) -> bool {
        debug_assert!(scratch.is_empty());
        let len = self.partial.len();
        if len == 0 || len > SMALL_PARTIAL || scratch.capacity().saturating_sub(len) < MIN_READ {
            return false;
        }
        scratch.put_slice(&self.partial);
        true
    }

    /// Takes everything in `scratch` (just read from the client, after the partial if
    /// [`prefix`](Self::prefix) put it there: `prefixed`; `scratch` is empty afterwards) and
    /// appends each message it completes to `batch`, in order. `spans` is the loop's reusable
    /// list of message positions.
    pub fn absorb(
        &mut self,
        scratch: &mut BytesMut,
        spans: &mut Vec<(usize, usize)>,
        origin: u64,
        batch: &mut Vec<Entry>,
        prefixed: bool,
    ) -> Result<(), ProtocolError> {
        if prefixed {
            // `scratch` now starts at a message boundary with the partial's bytes.
            self.partial = BytesMut::new();
        }
        let result = self.split(scratch, spans, origin, batch);
        // Whatever happened, the scratch block must hold nothing of this client when the next
        // one reads into it.
        scratch.clear();
        spans.clear();
        result
    }

    fn split(
        &mut self,
        scratch: &mut BytesMut,
        spans: &mut Vec<(usize, usize)>,
        origin: u64,
        batch: &mut Vec<Entry>,
    ) -> Result<(), ProtocolError> {
        let mut pos = 0;
        if !self.partial.is_empty() {
            match self.decoder.continue_partial(&self.partial, scratch)? {
                Next::Incomplete => {
                    self.grow_partial(scratch);
                    return Ok(());
                }
                Next::Skip(n) => {
                    self.partial = BytesMut::new();
                    pos = n;
                }
                Next::Message(n) => {
                    batch.extend(Entry::whole(self.complete(&scratch[..n]), origin));
                    pos = n;
                }
            }
        }
        // From `pos` on, `scratch` starts at a message boundary. Messages before a protocol
        // error are still relayed; the client is closed after them.
        let mut end = pos;
        let mut failed = None;
        loop {
            match self.decoder.next(&scratch[end..]) {
                Ok(Next::Message(n)) => {
                    spans.push((end, n));
                    end += n;
                }
                Ok(Next::Skip(n)) => end += n,
                Ok(Next::Incomplete) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if !spans.is_empty() {
            let block = self.block_of(scratch, spans, end);
            let mut at = 0;
            batch.extend(spans.iter().filter_map(|&(start, len)| {
                let start = if block.is_copy { at } else { start };
                at += len;
                Entry::new(block.bytes.clone(), start, len, origin)
            }));
            if !block.is_copy {
                end = 0;
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if scratch.len() > end {
            self.grow_partial(&scratch[end..]);
        }
        Ok(())
    }

    /// The block the messages at `spans` (within `scratch[..end]`) are to live in: the scratch
    /// bytes themselves, frozen without a copy, unless what lies between the messages (the
    /// end of a message completed in `partial`, keepalives) is more than a sixteenth of them;
    /// then the messages are copied into a block of their own and the scratch bytes are
    /// reused, so that bytes no message needs are never kept alive by one.
    fn block_of(&self, scratch: &mut BytesMut, spans: &[(usize, usize)], end: usize) -> Block {
        let needed: usize = spans.iter().map(|&(_, len)| len).sum();
        if (end - needed) * WASTE_RATIO <= needed {
            return Block {
                bytes: scratch.split_to(end).freeze(),
                is_copy: false,
            };
        }
        let mut copy = BytesMut::with_capacity(needed);
        for &(start, len) in spans {
            copy.put_slice(&scratch[start..start + len]);
        }
        Block {
            bytes: copy.freeze(),
            is_copy: true,
        }
    }

    /// At end of stream: a last unterminated line becomes a message; a partial frame is an
    /// error.
    pub fn finish(&mut self, origin: u64, batch: &mut Vec<Entry>) -> Result<(), ProtocolError> {
        let mut partial = std::mem::take(&mut self.partial);
        while let Some(msg) = self.decoder.decode_eof(&mut partial)? {
            // Rare (once per connection): a copy keeps the entry exactly its size.
            batch.extend(Entry::whole(bytes::Bytes::copy_from_slice(&msg), origin));
        }
        Ok(())
    }

    /// `partial` plus `rest` as one message, in a buffer of exactly its size.
    fn complete(&mut self, rest: &[u8]) -> bytes::Bytes {
        let mut partial = std::mem::take(&mut self.partial);
        let total = partial.len() + rest.len();
        if partial.capacity() != total {
            let mut exact = BytesMut::with_capacity(total);
            exact.put_slice(&partial);
            partial = exact;
        }
        partial.put_slice(rest);
        partial.freeze()
    }

    /// Appends `input` to the incomplete message, growing its buffer geometrically up to the
    /// message's length when the wire form says it (a frame header), else up to the longest
    /// message allowed. Never straight to a length a header merely claims: a client must send
    /// the bytes before the server holds memory for them.
    fn grow_partial(&mut self, input: &[u8]) {
        let need = self.partial.len() + input.len();
        if self.partial.capacity() < need {
            let limit = self
                .decoder
                .wire_len(&self.partial, input)
                .unwrap_or_else(|| self.decoder.max_wire_len());
            let cap = (2 * self.partial.capacity()).min(limit).max(need);
            let mut grown = BytesMut::with_capacity(cap);
            grown.put_slice(&self.partial);
            self.partial = grown;
        }
        self.partial.put_slice(input);
    }
}

#[cfg(test)]
mod tests;
