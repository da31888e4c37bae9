//! The client side of WebSocket (RFC 6455) for the bench, as pure code: the upgrade request,
//! the server's `101` answer, masked client frames out and the server's frames in.
//!
//! # Notes
//! The bench asks for no extension and no subprotocol, and sends no `Origin` (it is not a
//! browser). So a server frame with a reserved bit set, a masked server frame or a fragmented
//! message is an error here: a broadcast server relays whole, unfragmented messages, and
//! reassembling fragments would cost every subscriber a copy the other targets do not pay.

use std::io::Cursor;

use bytes::{BufMut, BytesMut};
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::target::Item;

/// The `Sec-WebSocket-Key` of every upgrade: RFC 6455's own example. A fixed key is enough:
/// the accept key the server derives from it proves it understood the request, and the bench
/// goes through no proxy the key's randomness protects.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Headers taken in the `101` answer.
const MAX_HEADERS: usize = 32;

/// Mask of the bench's control frames (pong, close): any will do, the server just removes it.
const CONTROL_MASK: [u8; 4] = *b"mob!";

/// Close code of the bench's goodbye: normal closure.
const NORMAL_CLOSURE: u16 = 1000;

/// Appends the upgrade request for `path` on `host` (the address as given, `host:port`).
pub fn upgrade_request(host: &str, path: &str, out: &mut BytesMut) {
    out.extend_from_slice(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    );
}

/// A cheap mask that changes from frame to frame and has no zero byte: a server that forgot
/// to unmask would garble every byte of every payload, and the checker would count it corrupt.
pub fn mask(seed: u64) -> [u8; 4] {
    let mixed = (seed as u32 ^ (seed >> 32) as u32).wrapping_mul(0x9e37_79b9);
    (mixed | 0x0101_0101).to_be_bytes()
}

/// Appends one masked, unfragmented client frame whose `len` bytes of payload `payload`
/// appends.
fn frame(
    opcode: OpCode,
    len: usize,
    mask: [u8; 4],
    out: &mut BytesMut,
    payload: impl FnOnce(&mut BytesMut),
) {
    let header = FrameHeader {
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    // Writing into memory cannot fail.
    let _ = header.format(len as u64, &mut (&mut *out).writer());
    let start = out.len();
    payload(out);
    debug_assert_eq!(
        out.len() - start,
        len,
        "the payload is as long as announced"
    );
    apply_mask(&mut out[start..], mask);
}

/// Appends a text message carrying what `payload` appends (`len` bytes): the bench's payloads
/// are ASCII, so text is valid, and it is what a chat client sends (the server checks UTF-8 as
/// it would for real traffic).
pub fn message(len: usize, mask: [u8; 4], out: &mut BytesMut, payload: impl FnOnce(&mut BytesMut)) {
    frame(OpCode::Data(Data::Text), len, mask, out, payload);
}

/// Appends the answer to a ping carrying `data`.
pub fn pong(data: &[u8], out: &mut BytesMut) {
    frame(
        OpCode::Control(Control::Pong),
        data.len(),
        CONTROL_MASK,
        out,
        |out| out.extend_from_slice(data),
    );
}

/// Appends a close frame (normal closure): a server counts a connection that just ends as
/// closed abnormally (1006).
pub fn close(out: &mut BytesMut) {
    frame(
        OpCode::Control(Control::Close),
        2,
        CONTROL_MASK,
        out,
        |out| out.put_u16(NORMAL_CLOSURE),
    );
}

/// Parses the item at the front of what the server sent: the `101` head, then frames.
///
/// # Implementation notes
/// No state tells the head from the frames: a server frame never starts with `H` (0x48 sets
/// RSV1, which needs an extension the bench never asks for), so `H` means the head.
pub fn parse(buf: &[u8]) -> Result<Option<(usize, Item)>, String> {
    if buf.first() == Some(&b'H') {
        return parse_head(buf);
    }
    let mut cursor = Cursor::new(buf);
    let Some((header, len)) =
        FrameHeader::parse(&mut cursor).map_err(|e| format!("bad WebSocket frame: {e}"))?
    else {
        return Ok(None);
    };
    if header.mask.is_some() {
        return Err("the server masked a frame (RFC 6455 5.1: only clients mask)".into());
    }
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err("the server set a reserved bit (no extension was negotiated)".into());
    }
    if !header.is_final || header.opcode == OpCode::Data(Data::Continue) {
        return Err("the server fragmented a message: the bench takes whole messages only".into());
    }
    let start = cursor.position() as usize;
    let len = usize::try_from(len).map_err(|_| format!("WebSocket frame of {len} bytes"))?;
    let Some(end) = start.checked_add(len).filter(|&end| end <= buf.len()) else {
        return Ok(None);
    };
    let item = match header.opcode {
        OpCode::Data(_) => Item::Message(start..end),
        OpCode::Control(Control::Ping) => Item::Ping(start..end),
        OpCode::Control(Control::Close) => return Err(closed(&buf[start..end])),
        // Pongs (the bench sends no ping); reserved opcodes fail in FrameHeader::parse.
        OpCode::Control(_) => Item::Other,
    };
    Ok(Some((end, item)))
}

/// The answer to the upgrade request: `101` with the accept key of [`KEY`], or an error.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Item)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let status = response
        .parse(buf)
        .map_err(|e| format!("bad HTTP answer to the WebSocket upgrade: {e}"))?;
    let httparse::Status::Complete(used) = status else {
        return Ok(None);
    };
    if response.code != Some(101) {
        return Err(format!(
            "the server answered the WebSocket upgrade with {} {} (is the path right?)",
            response.code.unwrap_or_default(),
            response.reason.unwrap_or_default()
        ));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket")) {
        return Err("the server's 101 does not say Upgrade: websocket".into());
    }
    if header("sec-websocket-accept") != Some(derive_accept_key(KEY.as_bytes()).as_bytes()) {
        return Err("the server's 101 has a wrong Sec-WebSocket-Accept".into());
    }
    Ok(Some((used, Item::Upgraded)))
}

/// What a close frame from the server says, as an error.
fn closed(body: &[u8]) -> String {
    match body {
        [hi, lo, reason @ ..] => format!(
            "the server closed the WebSocket ({} {})",
            u16::from_be_bytes([*hi, *lo]),
            String::from_utf8_lossy(reason)
        ),
        _ => "the server closed the WebSocket".into(),
    }
}

/// XORs `payload` with `mask`, four bytes at a time.
fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let word = u32::from_ne_bytes(chunk.try_into().expect("4 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

#[cfg(test)]
mod tests;
