//! `frame`: an 8-byte big-endian `u64` length, then that many payload bytes.
//!
//! Wire-compatible with the original mob series. A zero-length frame is a keepalive: it resets
//! the sender's idle timer (as any bytes do) and is never relayed.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::ProtocolError;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;

pub(super) fn encode(payload: &[u8], dst: &mut BytesMut) {
    dst.reserve(HEADER_LEN + payload.len());
    dst.put_u64(payload.len() as u64);
    dst.extend_from_slice(payload);
}

pub(super) fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, ProtocolError> {
    loop {
        let Some(len) = peek_len(buf) else {
            return Ok(None);
        };
        if len > max as u64 {
            return Err(ProtocolError::TooLarge { len, max });
        }
        if len == 0 {
            buf.advance(HEADER_LEN);
            continue;
        }
        // `len <= max`, which is a usize, so this cannot truncate.
        let total = HEADER_LEN + len as usize;
        if buf.len() < total {
            return Ok(None);
        }
        return Ok(Some(buf.split_to(total).freeze()));
    }
}

/// The error for a stream that ended inside a frame.
pub(super) fn truncated(buf: &BytesMut) -> ProtocolError {
    let need = peek_len(buf).map_or(HEADER_LEN as u64, |len| HEADER_LEN as u64 + len);
    ProtocolError::Truncated {
        have: buf.len() as u64,
        need,
    }
}

fn peek_len(buf: &[u8]) -> Option<u64> {
    let header: [u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    Some(u64::from_be_bytes(header))
}
