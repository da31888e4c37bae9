//! `raw`: bytes are relayed in the chunks they were read in.

use bytes::{Bytes, BytesMut};

/// Everything buffered is one message, cut at `max` bytes so no message exceeds the limit.
pub(super) fn decode(buf: &mut BytesMut, max: usize) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(max);
    Some(buf.split_to(n).freeze())
}
