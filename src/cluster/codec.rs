//! One stream entry: the messages of one or more read batches of one node, packed together
//! (Redis's cost is per command, not per byte).
//!
//! ```text
//! version u8 | protocol u8 | node u64 | batch u64 | count u32 | count x (meta u64 | len u32 | bytes)
//! ```
//!
//! `node` is the publishing node's random id, `batch` its count of entries published (each
//! entry once, however often it is sent again after a broken connection: readers drop a
//! batch number they have seen). `meta` is the message's origin (the connection id on its
//! node) with the binary flag in the top bit, as [`Entry`] keeps it. Messages are in the
//! server's wire form, so a reader's entries are slices of the entry it read (no copy).

use bytes::Bytes;

use crate::protocol::Protocol;
use crate::server::Entry;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 1 + 8 + 8 + 4;
const PER_MESSAGE: usize = 8 + 4;

/// A message from another node gets this bit in its origin, so it never equals a local
/// connection id (which stay far below it) and `--no-echo-self` skips only one's own.
pub const REMOTE: u64 = 1 << 62;

fn protocol_code(p: Protocol) -> u8 {
    match p {
        Protocol::Raw => 0,
        Protocol::Line => 1,
        Protocol::Frame => 2,
    }
}

/// Packs `batches` (in order) into one entry.
pub fn encode<'a>(
    node: u64,
    batch: u64,
    protocol: Protocol,
    batches: impl Iterator<Item = &'a [Entry]> + Clone,
) -> Vec<u8> {
    let (count, bytes) = batches
        .clone()
        .flatten()
        .fold((0usize, 0usize), |(c, b), e| (c + 1, b + e.len()));
    let mut out = Vec::with_capacity(HEADER + count * PER_MESSAGE + bytes);
    out.push(VERSION);
    out.push(protocol_code(protocol));
    out.extend_from_slice(&node.to_be_bytes());
    out.extend_from_slice(&batch.to_be_bytes());
    out.extend_from_slice(&(count as u32).to_be_bytes());
    for e in batches.flatten() {
        out.extend_from_slice(&e.meta().to_be_bytes());
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(e.bytes());
    }
    out
}

/// A decoded entry.
#[derive(Debug)]
pub struct Decoded {
    pub node: u64,
    pub batch: u64,
    pub entries: Vec<Entry>,
}

/// Unpacks an entry read from the stream; messages of node `me` keep their origin, others'
/// get [`REMOTE`]. An entry this version cannot read, or of another protocol, is an error
/// (said in the log by the caller).
pub fn decode(payload: Bytes, me: u64, protocol: Protocol) -> Result<Decoded, String> {
    let p = &payload[..];
    if p.len() < HEADER {
        return Err(format!(
            "entry of {} bytes is shorter than a header",
            p.len()
        ));
    }
    if p[0] != VERSION {
        return Err(format!(
            "entry of version {} (this node reads {VERSION})",
            p[0]
        ));
    }
    if p[1] != protocol_code(protocol) {
        return Err(format!(
            "entry from a node of another --protocol (code {}; this node: {protocol})",
            p[1]
        ));
    }
    let u64_at = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().expect("4 bytes")) as usize;
    let node = u64_at(2);
    let batch = u64_at(10);
    let count = u32_at(18);
    let mut at = HEADER;
    let mut entries = Vec::with_capacity(count.min(p.len() / PER_MESSAGE));
    for _ in 0..count {
        if p.len() < at + PER_MESSAGE {
            return Err("entry cut short".into());
        }
        let meta = u64_at(at);
        let len = u32_at(at + 8);
        at += PER_MESSAGE;
        let origin = if node == me {
            meta
        } else {
            (meta & !(1 << 63)) | REMOTE
        };
        let mut e = Entry::new(payload.clone(), at, len, origin).ok_or("entry cut short")?;
        e.set_binary(meta >> 63 == 1);
        entries.push(e);
        at += len;
    }
    if at != p.len() {
        return Err("entry has bytes after its messages".into());
    }
    Ok(Decoded {
        node,
        batch,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bytes: &'static [u8], origin: u64, binary: bool) -> Entry {
        let mut e = Entry::whole(Bytes::from_static(bytes), origin).unwrap();
        e.set_binary(binary);
        e
    }

    #[test]
    fn entries_come_back_as_they_went_with_remote_origins_marked() {
        let a = [entry(b"one\n", 3, false), entry(b"\xff\n", 5, true)];
        let b = [entry(b"three\n", 7, false)];
        let wire = encode(42, 9, Protocol::Line, [&a[..], &b[..]].into_iter());
        let wire = Bytes::from(wire);
        let mine = decode(wire.clone(), 42, Protocol::Line).unwrap();
        assert_eq!((mine.node, mine.batch), (42, 9));
        let got: Vec<(&[u8], u64, bool)> = mine
            .entries
            .iter()
            .map(|e| (e.bytes(), e.origin(), e.is_binary()))
            .collect();
        assert_eq!(
            got,
            [
                (&b"one\n"[..], 3, false),
                (&b"\xff\n"[..], 5, true),
                (&b"three\n"[..], 7, false)
            ]
        );
        let theirs = decode(wire.clone(), 1, Protocol::Line).unwrap();
        assert!(theirs.entries.iter().all(|e| e.origin() & REMOTE != 0));
        assert!(theirs.entries[1].is_binary());
        // Of another protocol, cut short, or with bytes after: refused.
        assert!(decode(wire.clone(), 1, Protocol::Frame).is_err());
        assert!(decode(wire.slice(..wire.len() - 1), 1, Protocol::Line).is_err());
        let mut longer = wire.to_vec();
        longer.push(0);
        assert!(decode(Bytes::from(longer), 1, Protocol::Line).is_err());
        assert!(decode(Bytes::from_static(b"\x01"), 1, Protocol::Line).is_err());
    }
}
