//! `frame`: an 8-byte big-endian `u64` length, then that many payload bytes.
//!
//! Wire-compatible with the original mob series. A zero-length frame is a keepalive: it resets
//! the sender's idle timer (as any bytes do) and is never relayed.

use bytes::{BufMut, BytesMut};

use super::{Next, ProtocolError};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;

pub(super) fn encode(payload: &[u8], dst: &mut BytesMut) {
    dst.reserve(HEADER_LEN + payload.len());
    dst.put_u64(payload.len() as u64);
    dst.extend_from_slice(payload);
}

pub(super) fn next(buf: &[u8], max: usize) -> Result<Next, ProtocolError> {
    match wire_len_checked(buf, max)? {
        None => Ok(Next::Incomplete),
        Some(HEADER_LEN) => Ok(Next::Skip(HEADER_LEN)),
        Some(total) if buf.len() >= total => Ok(Next::Message(total)),
        Some(_) => Ok(Next::Incomplete),
    }
}

/// A frame of which `partial` arrived earlier, continued by `input`.
pub(super) fn continue_partial(
    partial: &[u8],
    input: &[u8],
    max: usize,
) -> Result<Next, ProtocolError> {
    let (header, have) = header_of(partial, input);
    let Some(total) = wire_len_checked(&header[..have], max)? else {
        return Ok(Next::Incomplete);
    };
    let need = total - partial.len();
    if input.len() < need {
        Ok(Next::Incomplete)
    } else if total == HEADER_LEN {
        Ok(Next::Skip(need))
    } else {
        Ok(Next::Message(need))
    }
}

/// The whole frame's length once its header is there in `partial` then `input` (and within
/// `max`).
pub(super) fn wire_len(partial: &[u8], input: &[u8], max: usize) -> Option<usize> {
    let (header, have) = header_of(partial, input);
    wire_len_checked(&header[..have], max).ok().flatten()
}

/// The first bytes of `partial` then `input`, up to a header's worth, and how many there are.
/// Only the header ever needs both pieces at once; it is small enough to copy.
fn header_of(partial: &[u8], input: &[u8]) -> ([u8; HEADER_LEN], usize) {
    let mut header = [0u8; HEADER_LEN];
    let from_partial = partial.len().min(HEADER_LEN);
    header[..from_partial].copy_from_slice(&partial[..from_partial]);
    let from_input = (HEADER_LEN - from_partial).min(input.len());
    header[from_partial..from_partial + from_input].copy_from_slice(&input[..from_input]);
    (header, from_partial + from_input)
}

fn wire_len_checked(buf: &[u8], max: usize) -> Result<Option<usize>, ProtocolError> {
    let Some(len) = peek_len(buf) else {
        return Ok(None);
    };
    if len > max as u64 {
        return Err(ProtocolError::TooLarge { len, max });
    }
    // `len <= max`, a usize; `max` is capped well below usize::MAX - HEADER_LEN by the config,
    // and saturating keeps a library caller's extreme `max` from wrapping.
    Ok(Some(HEADER_LEN.saturating_add(len as usize)))
}

/// The error for a stream that ended inside a frame.
pub(super) fn truncated(buf: &BytesMut) -> ProtocolError {
    let need = peek_len(buf).map_or(HEADER_LEN as u64, |len| {
        (HEADER_LEN as u64).saturating_add(len)
    });
    ProtocolError::Truncated {
        have: buf.len() as u64,
        need,
    }
}

fn peek_len(buf: &[u8]) -> Option<u64> {
    let header: [u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    Some(u64::from_be_bytes(header))
}
