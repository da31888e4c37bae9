//! Wire formats: pure code that turns bytes into messages and back, with no I/O.
//!
//! A [`Decoder`] splits complete messages off the front of a buffer and returns each one in its
//! *wire form*, the exact bytes that are relayed to receivers (a line with its `\n`, a frame with
//! its header). The relay therefore never re-encodes: the bytes a sender wrote are split off the
//! read buffer without a copy (`BytesMut::split_to`) and shared by every receiver.

mod frame;
mod line;
mod raw;

use std::fmt;
use std::str::FromStr;

use bytes::{Buf, Bytes, BytesMut};

pub use frame::HEADER_LEN as FRAME_HEADER_LEN;

/// The wire format a server speaks with all its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Every chunk read is a message, relayed as is: a byte relay like `ncat --broker`.
    Raw,
    /// A message is a line ending in `\n`, relayed byte for byte with its `\n`.
    Line,
    /// An 8-byte big-endian length, then that many payload bytes (the original series' format).
    Frame,
}

impl Protocol {
    /// Appends `payload` to `dst` in this wire format. For `Line` the payload must not contain
    /// `\n` (it would split into several messages); for `Raw` it is appended as is.
    pub fn encode(self, payload: &[u8], dst: &mut BytesMut) {
        match self {
            Protocol::Raw => dst.extend_from_slice(payload),
            Protocol::Line => line::encode(payload, dst),
            Protocol::Frame => frame::encode(payload, dst),
        }
    }

    /// The payload inside one message in wire form (as returned by [`Decoder::decode`]).
    pub fn payload(self, wire: &[u8]) -> &[u8] {
        match self {
            Protocol::Raw => wire,
            Protocol::Line => wire.strip_suffix(b"\n").unwrap_or(wire),
            Protocol::Frame => wire.get(frame::HEADER_LEN..).unwrap_or_default(),
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(Protocol::Raw),
            "line" => Ok(Protocol::Line),
            "frame" => Ok(Protocol::Frame),
            other => Err(format!(
                "unknown protocol {other:?} (expected raw, line or frame)"
            )),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Raw => "raw",
            Protocol::Line => "line",
            Protocol::Frame => "frame",
        })
    }
}

/// Why a client's input cannot be relayed. Each one closes that client, and only that client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A message over `--max-message`. For `frame` there is no way to resynchronise after it.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    /// The stream ended inside a frame: the partial frame cannot be delivered.
    #[error("stream ended inside a message ({have} of {need} bytes received)")]
    Truncated { have: u64, need: u64 },
}

/// What [`Decoder::next`] found at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The first `len` bytes are one message in wire form.
    Message(usize),
    /// The first `len` bytes are to be consumed and not relayed (a frame keepalive).
    Skip(usize),
    /// No complete message yet: everything there is the start of one.
    Incomplete,
}

/// Per-connection decoding state for one protocol.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Which wire format to split.
    protocol: Protocol,
    /// Largest payload accepted, in bytes.
    max_message: usize,
    /// Line only: how many bytes at the front of the buffer are known to hold no `\n`, so a
    /// long line arriving in many reads is scanned once, not once per read.
    scanned: usize,
}

impl Decoder {
    pub fn new(protocol: Protocol, max_message: usize) -> Self {
        Decoder {
            protocol,
            max_message: max_message.max(1),
            scanned: 0,
        }
    }

    /// The wire format this decoder splits.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Looks at the front of `buf`, which starts at a message boundary, without consuming it.
    pub fn next(&mut self, buf: &[u8]) -> Result<Next, ProtocolError> {
        match self.protocol {
            Protocol::Raw => Ok(raw::next(buf, self.max_message)),
            Protocol::Line => line::next(buf, self.max_message, &mut self.scanned),
            Protocol::Frame => frame::next(buf, self.max_message),
        }
    }

    /// With `partial` holding the start of a message that an earlier read left incomplete (what
    /// [`next`](Self::next) called [`Next::Incomplete`]), says how the front of `input`
    /// continues it: [`Next::Message`]`(n)` means `partial` plus the first `n` bytes of `input`
    /// are one message. Each byte of `input` is looked at once, however many reads the message
    /// spans.
    pub fn continue_partial(
        &mut self,
        partial: &[u8],
        input: &[u8],
    ) -> Result<Next, ProtocolError> {
        let next = match self.protocol {
            // A raw chunk is never incomplete; a partial cannot exist.
            Protocol::Raw => Ok(raw::next(input, self.max_message)),
            Protocol::Line => line::continue_partial(partial.len(), input, self.max_message),
            Protocol::Frame => frame::continue_partial(partial, input, self.max_message),
        }?;
        if next != Next::Incomplete {
            self.scanned = 0;
        }
        Ok(next)
    }

    /// The length of the whole message that `partial` then `input` begin, once its wire form
    /// says (a frame whose header is there); `None` when only its end will tell (a line).
    pub fn wire_len(&self, partial: &[u8], input: &[u8]) -> Option<usize> {
        match self.protocol {
            Protocol::Frame => frame::wire_len(partial, input, self.max_message),
            Protocol::Raw | Protocol::Line => None,
        }
    }

    /// The longest a message can be in wire form.
    pub fn max_wire_len(&self) -> usize {
        match self.protocol {
            Protocol::Raw => self.max_message,
            Protocol::Line => self.max_message.saturating_add(1),
            Protocol::Frame => self.max_message.saturating_add(frame::HEADER_LEN),
        }
    }

    /// Splits the next complete message off the front of `buf`, in wire form. `Ok(None)` means
    /// `buf` holds no complete message yet (what is there stays for the next call). Frame
    /// keepalives (zero-length frames) are consumed and never returned.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        loop {
            match self.next(buf)? {
                Next::Message(len) => return Ok(Some(buf.split_to(len).freeze())),
                Next::Skip(len) => buf.advance(len),
                Next::Incomplete => return Ok(None),
            }
        }
    }

    /// Like [`decode`](Self::decode), once the peer has closed its side: a last unterminated
    /// line is completed with `\n`; a partial frame is an error.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        if let Some(msg) = self.decode(buf)? {
            return Ok(Some(msg));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        match self.protocol {
            Protocol::Raw => Ok(None),
            Protocol::Line => {
                self.scanned = 0;
                buf.extend_from_slice(b"\n");
                Ok(Some(buf.split().freeze()))
            }
            Protocol::Frame => Err(frame::truncated(buf)),
        }
    }
}

#[cfg(test)]
mod tests;
