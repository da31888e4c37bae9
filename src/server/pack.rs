//! Messages written into blocks of our own (rather than cut out of a read): a WebSocket
//! client's messages in the server's wire form, and the log rendered as WebSocket frames.
//!
//! Short messages are packed back to back into shared blocks, so a writer hands many of them
//! to the kernel as one slice; a long one gets a buffer of exactly its size. A block's unused
//! tail, left when the next message does not fit, is under a sixteenth of it.

use bytes::{Bytes, BytesMut};

use super::log::Entry;

/// A message longer than this (in its packed form) gets a buffer of its own.
pub const OWN_BUFFER: usize = 4 * 1024;

/// Size of a block short messages are packed into, shared by the messages of many calls.
const BLOCK: usize = 64 * 1024;

/// The block being filled and the messages written into it since the last [`flush`](Self::flush).
#[derive(Debug, Default)]
pub struct Packer {
    block: BytesMut,
    /// (start in `block`, length, origin, binary) of each message packed since the last flush.
    spans: Vec<(usize, usize, u64, bool)>,
}

impl Packer {
    /// Adds a message of at most `most` bytes, which `write` appends to the buffer it is
    /// given. Messages reach `out` in the order added (a long one flushes those before it).
    pub fn add(
        &mut self,
        most: usize,
        origin: u64,
        binary: bool,
        write: impl FnOnce(&mut BytesMut),
        out: &mut impl FnMut(Entry),
    ) {
        if most > OWN_BUFFER {
            self.flush(out);
            let mut own = BytesMut::with_capacity(most);
            write(&mut own);
            let len = own.len();
            if let Some(mut entry) = Entry::new(own.freeze(), 0, len, origin) {
                entry.set_binary(binary);
                out(entry);
            }
            return;
        }
        if self.block.capacity() - self.block.len() < most {
            self.flush(out);
            self.block = BytesMut::with_capacity(BLOCK);
        }
        let start = self.block.len();
        write(&mut self.block);
        self.spans
            .push((start, self.block.len() - start, origin, binary));
    }

    /// Hands the messages packed since the last flush to `out`, all sharing one frozen part of
    /// the block (so writers see them back to back in one block).
    pub fn flush(&mut self, out: &mut impl FnMut(Entry)) {
        if self.spans.is_empty() {
            return;
        }
        let block: Bytes = self.block.split().freeze();
        for (start, len, origin, binary) in self.spans.drain(..) {
            if let Some(mut entry) = Entry::new(block.clone(), start, len, origin) {
                entry.set_binary(binary);
                out(entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_messages_share_a_block_in_order_and_long_ones_have_their_own() {
        let mut packer = Packer::default();
        let mut got: Vec<Entry> = Vec::new();
        let mut out = |e: Entry| got.push(e);
        packer.add(3, 1, false, |b| b.extend_from_slice(b"abc"), &mut out);
        packer.add(2, 2, true, |b| b.extend_from_slice(b"de"), &mut out);
        let long = vec![b'x'; OWN_BUFFER + 1];
        packer.add(
            long.len(),
            3,
            false,
            |b| b.extend_from_slice(&long),
            &mut out,
        );
        packer.add(1, 4, false, |b| b.extend_from_slice(b"f"), &mut out);
        packer.flush(&mut out);
        let seen: Vec<(&[u8], u64, bool)> = got
            .iter()
            .map(|e| (e.bytes(), e.origin(), e.is_binary()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (&b"abc"[..], 1, false),
                (&b"de"[..], 2, true),
                (&long[..], 3, false),
                (&b"f"[..], 4, false)
            ]
        );
        // The first two lie back to back in one block: one slice for a writer.
        assert_eq!(got[0].continued_by(got[0].range().end, &got[1]), Some(5));
        assert_eq!(got[2].range(), 0..OWN_BUFFER + 1);
    }
}
