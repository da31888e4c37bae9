//! The bench's message payload: who sent it, its number, when it was due, padded to a size.
//!
//! `PPPPPPPPSSSSSSSSSSSSTTTTTTTTTTTTxxxx…`: publisher id (8 hex digits), sequence number (12),
//! send time in nanoseconds since the run began (12), then `x` up to the requested size. Plain
//! ASCII with no `\n` or `\r`, so it is valid in every wire format, line and RESP included.

use bytes::BytesMut;

/// Bytes of the header; the smallest payload size.
pub const HEADER_LEN: usize = 32;

/// Publisher id of the sync message that proves every subscriber of a mob server is connected.
pub const SYNC_PUBLISHER: u32 = u32::MAX;

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u64,
    /// Nanoseconds since the run began, when the message was due to be sent.
    pub sent_ns: u64,
}

/// Appends a payload of `size` bytes (at least [`HEADER_LEN`]) carrying `stamp` to `out`.
pub fn write(stamp: Stamp, size: usize, out: &mut BytesMut) {
    let mut header = [0u8; HEADER_LEN];
    hex(&mut header[0..8], u64::from(stamp.publisher));
    hex(&mut header[8..20], stamp.seq);
    hex(&mut header[20..32], stamp.sent_ns);
    out.extend_from_slice(&header);
    out.resize(out.len() + size.saturating_sub(HEADER_LEN), b'x');
}

/// Reads the stamp at the front of a payload; `None` if it is not one of ours.
pub fn read(payload: &[u8]) -> Option<Stamp> {
    let header = payload.get(..HEADER_LEN)?;
    Some(Stamp {
        publisher: u32::try_from(unhex(&header[0..8])?).ok()?,
        seq: unhex(&header[8..20])?,
        sent_ns: unhex(&header[20..32])?,
    })
}

fn hex(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

fn unhex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stamps_round_trip_at_any_size(
            publisher in any::<u32>(),
            seq in 0u64..(1 << 48),
            sent_ns in 0u64..(1 << 48),
            size in HEADER_LEN..300,
        ) {
            let stamp = Stamp { publisher, seq, sent_ns };
            let mut buf = BytesMut::new();
            write(stamp, size, &mut buf);
            prop_assert_eq!(buf.len(), size);
            prop_assert!(!buf.contains(&b'\n') && !buf.contains(&b'\r'));
            prop_assert_eq!(read(&buf), Some(stamp));
        }
    }

    #[test]
    fn foreign_payloads_are_not_read() {
        assert_eq!(read(b"hello"), None);
        assert_eq!(read(&[b'z'; 40]), None);
    }
}
