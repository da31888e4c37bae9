//! `line`: a message is any bytes up to and including `\n`.

use bytes::{Bytes, BytesMut};

use super::ProtocolError;

pub(super) fn encode(payload: &[u8], dst: &mut BytesMut) {
    dst.reserve(payload.len() + 1);
    dst.extend_from_slice(payload);
    dst.extend_from_slice(b"\n");
}

/// `scanned` bytes at the front of `buf` are known to hold no `\n`; it is kept up to date so
/// that each byte is searched once however many reads a line arrives in. A line whose payload
/// (without its `\n`) exceeds `max` is rejected as soon as that many bytes are buffered.
pub(super) fn decode(
    buf: &mut BytesMut,
    max: usize,
    scanned: &mut usize,
) -> Result<Option<Bytes>, ProtocolError> {
    match memchr::memchr(b'\n', &buf[*scanned..]) {
        Some(i) => {
            let end = *scanned + i;
            *scanned = 0;
            if end > max {
                return Err(too_large(end, max));
            }
            Ok(Some(buf.split_to(end + 1).freeze()))
        }
        None => {
            *scanned = buf.len();
            if buf.len() > max {
                return Err(too_large(buf.len(), max));
            }
            Ok(None)
        }
    }
}

fn too_large(len: usize, max: usize) -> ProtocolError {
    ProtocolError::TooLarge {
        len: len as u64,
        max,
    }
}
