//! `raw`: bytes are relayed in the chunks they were read in.

use super::Next;

/// Everything buffered is one message, cut at `max` bytes so no message exceeds the limit.
pub(super) fn next(buf: &[u8], max: usize) -> Next {
    if buf.is_empty() {
        Next::Incomplete
    } else {
        Next::Message(buf.len().min(max))
    }
}
