//! WebSocket frames (RFC 6455 section 5), as pure code: client frames in, whole messages and
//! control frames out; server frame headers for the fan-out.
//!
//! The header is parsed with tungstenite's [`FrameHeader`]; what a server must check about it
//! (masking, reserved bits, control frame rules, fragmentation, sizes, UTF-8, close codes) is
//! here, each failure naming the close code the connection must be closed with. Text is
//! checked fragment by fragment, so a message fails at the fragment that makes it invalid.

use std::io::Cursor;

use bytes::{Bytes, BytesMut};
pub use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Close codes this server sends (RFC 6455 section 7.4.1).
pub mod close {
    /// Normal closure: the answer to a client's close.
    pub const NORMAL: u16 = 1000;
    /// Going away: the server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// A text message that is not UTF-8, or a message the server's protocol cannot carry
    /// (`\n` inside a message under `--protocol line`).
    pub const INVALID_DATA: u16 = 1007;
    /// A message over `--max-message`.
    pub const TOO_BIG: u16 = 1009;
}

/// What a client sent, frame by frame, reassembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A whole data message (all its fragments), unmasked.
    Message { text: bool, payload: Bytes },
    /// A ping: answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong (an answer to our keepalive ping): counts as input, nothing else.
    Pong,
    /// A close: answer with a close (echoing the code) and close the connection.
    Close { code: Option<u16> },
}

/// Why a client's frames cannot be accepted: the close code to send, and a reason to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close code {code})")]
pub struct FrameError {
    pub code: u16,
    pub reason: &'static str,
}

fn protocol(reason: &'static str) -> FrameError {
    FrameError {
        code: close::PROTOCOL,
        reason,
    }
}

/// One client's frame decoder: keeps the message being reassembled from fragments.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// The fragments of a message begun and not finished.
    partial: Option<Partial>,
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Partial {
    text: bool,
    /// The payload so far.
    payload: BytesMut,
    /// For text: how much of `payload` is known to be whole UTF-8 characters (the rest is at
    /// most one character a fragment cut), so each byte is checked once and invalid text
    /// fails at the fragment that makes it so, not at the end of the message.
    checked: usize,
}

impl Partial {
    /// Checks the text received so far, up to a character the last fragment cut.
    fn check_text(&mut self) -> Result<(), FrameError> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.payload[self.checked..]) {
            Ok(_) => self.checked = self.payload.len(),
            // Only cut short, not wrong (yet): the next fragment decides.
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(not_utf8()),
        }
        Ok(())
    }
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            partial: None,
        }
    }

    /// Takes the next complete frame off the front of `buf` and returns what it completes:
    /// `Ok(None)` when `buf` holds no complete frame yet (or a fragment that completes
    /// nothing). Data frames are unmasked in place; an unfragmented message's payload is split
    /// off `buf` without a copy.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Received>, FrameError> {
        loop {
            let mut cursor = Cursor::new(&buf[..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(None),
                Err(_) => return Err(protocol("reserved opcode")),
            };
            let head = cursor.position() as usize;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(protocol("reserved bits set (no extension was negotiated)"));
            }
            let Some(mask) = header.mask else {
                return Err(protocol("client frame not masked"));
            };
            let is_control = matches!(header.opcode, OpCode::Control(_));
            if is_control && (len > 125 || !header.is_final) {
                return Err(protocol("control frame fragmented or over 125 bytes"));
            }
            if len >> 63 != 0 {
                return Err(protocol("frame length with its most significant bit set"));
            }
            let so_far = self.partial.as_ref().map_or(0, |p| p.payload.len());
            if !is_control && len > (self.max_message - so_far) as u64 {
                return Err(FrameError {
                    code: close::TOO_BIG,
                    reason: "message over --max-message",
                });
            }
            let len = len as usize; // at most --max-message or 125 here
            if buf.len() < head + len {
                // The caller reads more (how much room to give is its policy: the frame needs
                // `head + len` bytes in all).
                return Ok(None);
            }
            let _ = buf.split_to(head);
            let mut payload = buf.split_to(len);
            unmask(&mut payload, mask);
            match header.opcode {
                OpCode::Control(Control::Ping) => {
                    return Ok(Some(Received::Ping(payload.freeze())))
                }
                OpCode::Control(Control::Pong) => return Ok(Some(Received::Pong)),
                OpCode::Control(Control::Close) => return close_frame(&payload).map(Some),
                OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                    return Err(protocol("reserved opcode"))
                }
                OpCode::Data(Data::Continue) => {
                    let Some(mut partial) = self.partial.take() else {
                        return Err(protocol("continuation frame without a message"));
                    };
                    partial.payload.extend_from_slice(&payload);
                    if !header.is_final {
                        partial.check_text()?;
                        self.partial = Some(partial);
                        continue;
                    }
                    let Partial {
                        text,
                        payload,
                        checked,
                    } = partial;
                    return message(text, payload.freeze(), checked).map(Some);
                }
                OpCode::Data(data) => {
                    if self.partial.is_some() {
                        return Err(protocol("new message before the last one ended"));
                    }
                    let text = data == Data::Text;
                    if !header.is_final {
                        let mut partial = Partial {
                            text,
                            // Copied: a slice of the read buffer would keep all of it (the
                            // loop's shared block) alive while the message stays unfinished.
                            payload: BytesMut::from(&payload[..]),
                            checked: 0,
                        };
                        partial.check_text()?;
                        self.partial = Some(partial);
                        continue;
                    }
                    return message(text, payload.freeze(), 0).map(Some);
                }
            }
        }
    }

    /// Bytes held for a message being reassembled.
    pub fn held(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.payload.capacity())
    }
}

/// A whole message, its text checked from `checked` on (what came before was checked
/// fragment by fragment).
fn message(text: bool, payload: Bytes, checked: usize) -> Result<Received, FrameError> {
    if text && std::str::from_utf8(&payload[checked..]).is_err() {
        return Err(not_utf8());
    }
    Ok(Received::Message { text, payload })
}

fn not_utf8() -> FrameError {
    FrameError {
        code: close::INVALID_DATA,
        reason: "text message not UTF-8",
    }
}

/// A close frame's body: nothing, or a valid code and a UTF-8 reason.
fn close_frame(body: &[u8]) -> Result<Received, FrameError> {
    match body {
        [] => Ok(Received::Close { code: None }),
        [_] => Err(protocol("close frame of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // 1012-1014 are registered with IANA since RFC 6455; 1004-1006 and 1015 must
            // never be sent.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(FrameError {
                    code: close::INVALID_DATA,
                    reason: "close reason not UTF-8",
                });
            }
            Ok(Received::Close { code: Some(code) })
        }
    }
}

/// XORs `payload` with the client's mask, eight bytes at a time where it can.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// The header of an unmasked, unfragmented server frame: `(bytes, length used)`.
pub fn server_header(opcode: OpCode, len: usize) -> ([u8; 10], usize) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let mut out = [0u8; 10];
    let used = header.len(len as u64);
    let mut cursor = Cursor::new(&mut out[..]);
    // Ten bytes hold any unmasked header; writing into them cannot fail.
    let _ = header.format(len as u64, &mut cursor);
    (out, used)
}

/// [`server_header`] of a data message (text or binary), computed in a few instructions: the
/// fan-out builds one per message it writes, where tungstenite's general `format` (through
/// `io::Write`) showed as a tenth of the server's time. A test checks it against
/// `server_header` for every length form.
#[inline]
pub fn data_header(text: bool, len: usize) -> ([u8; 10], usize) {
    let mut out = [0u8; 10];
    out[0] = 0x80 | if text { 0x1 } else { 0x2 };
    let used = if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= 0xffff {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (out, used)
}

/// The opcode a message is sent to WebSocket clients with.
pub fn data_opcode(text: bool) -> OpCode {
    OpCode::Data(if text { Data::Text } else { Data::Binary })
}

/// A close frame with `code`, whole (header and body).
pub fn close_frame_bytes(code: u16) -> Vec<u8> {
    let (header, used) = server_header(OpCode::Control(Control::Close), 2);
    let mut out = header[..used].to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out
}

#[cfg(test)]
mod tests;
