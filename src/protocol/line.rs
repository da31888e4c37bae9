//! `line`: a message is any bytes up to and including `\n`.

use bytes::BytesMut;

use super::{Next, ProtocolError};

pub(super) fn encode(payload: &[u8], dst: &mut BytesMut) {
    dst.reserve(payload.len() + 1);
    dst.extend_from_slice(payload);
    dst.extend_from_slice(b"\n");
}

/// `scanned` bytes at the front of `buf` are known to hold no `\n`; it is kept up to date so
/// that each byte is searched once however many reads a line arrives in. A line whose payload
/// (without its `\n`) exceeds `max` is rejected as soon as that many bytes are buffered.
pub(super) fn next(buf: &[u8], max: usize, scanned: &mut usize) -> Result<Next, ProtocolError> {
    let from = (*scanned).min(buf.len());
    match memchr::memchr(b'\n', &buf[from..]) {
        Some(i) => {
            *scanned = 0;
            let end = from + i;
            if end > max {
                return Err(too_large(end, max));
            }
            Ok(Next::Message(end + 1))
        }
        None => {
            *scanned = buf.len();
            if buf.len() > max {
                return Err(too_large(buf.len(), max));
            }
            Ok(Next::Incomplete)
        }
    }
}

/// A line of which `have` bytes (no `\n` among them) arrived earlier, continued by `input`.
pub(super) fn continue_partial(
    have: usize,
    input: &[u8],
    max: usize,
) -> Result<Next, ProtocolError> {
    let mut scanned = 0;
    match next(input, max.saturating_sub(have), &mut scanned) {
        Ok(next) => Ok(next),
        Err(ProtocolError::TooLarge { len, .. }) => Err(too_large(have + len as usize, max)),
        Err(e) => Err(e),
    }
}

fn too_large(len: usize, max: usize) -> ProtocolError {
    ProtocolError::TooLarge {
        len: len as u64,
        max,
    }
}
