//! The log as WebSocket frames, for a loop's WebSocket receivers.
//!
//! A WebSocket receiver needs each message as a frame header (built from its opcode and
//! payload length only) followed by the payload, which never lies that way in the log (a line
//! has its `\n` after the payload, a frame its 8-byte header before it). Rather than write two
//! slices per message to every receiver, each message is rendered once per loop: header and
//! payload copied back to back into shared blocks ([`Packer`]), in a second log with the same
//! sequence numbers. WebSocket receivers are then written from it exactly as TCP receivers are
//! written from the log, in runs of messages, with the same cursor and the same function.
//!
//! The rendition only exists while the loop has WebSocket receivers, is rendered only as far
//! as they are written, and is trimmed with the log. What it holds counts against
//! `--max-pending` together with the log.

use super::log::{Entry, Log};
use super::pack::Packer;
use crate::protocol::{Protocol, FRAME_HEADER_LEN};
use crate::ws::frame::data_header;

/// The rendition of one loop's log.
#[derive(Debug)]
pub struct Rendition {
    /// The frames, entry for entry with the log from `log.first_seq()` on.
    pub log: Log,
    packer: Packer,
    /// The server's `--protocol`: where a message's payload lies in its wire form.
    wire: Protocol,
}

/// Where `e`'s payload lies in its wire form (`wire` is the server's `--protocol`).
pub fn payload_range(wire: Protocol, e: &Entry) -> (usize, usize) {
    let len = e.len();
    match wire {
        Protocol::Raw => (0, len),
        Protocol::Line => (0, len.saturating_sub(1)),
        Protocol::Frame => (FRAME_HEADER_LEN.min(len), len),
    }
}

impl Rendition {
    /// An empty rendition for a log of one of `loops` loops in `wire` form.
    pub fn new(loops: usize, wire: Protocol) -> Self {
        Rendition {
            log: Log::for_loops(loops),
            packer: Packer::default(),
            wire,
        }
    }

    /// Renders what `log` holds beyond the rendition's end. A rendition left behind the log
    /// (it was not needed while the log moved on) starts again at the log's oldest message.
    pub fn catch_up(&mut self, log: &Log) {
        if self.log.end_seq() >= log.end_seq() {
            return;
        }
        if self.log.end_seq() < log.first_seq() {
            self.log.restart_at(log.first_seq());
        }
        let from = self.log.end_seq();
        let (packer, wire, out) = (&mut self.packer, self.wire, &mut self.log);
        let mut push = |e: Entry| out.push(e);
        for e in log.from(from) {
            let (a, b) = payload_range(wire, e);
            let payload = &e.bytes()[a..b];
            let (head, used) = data_header(!e.is_binary(), payload.len());
            packer.add(
                used + payload.len(),
                e.origin(),
                e.is_binary(),
                |buf| {
                    buf.extend_from_slice(&head[..used]);
                    buf.extend_from_slice(payload);
                },
                &mut push,
            );
        }
        packer.flush(&mut push);
    }

    /// Forgets the frames before `seq`: what the log forgot, or what every WebSocket
    /// receiver has been sent.
    pub fn trim(&mut self, seq: u64) {
        self.log.trim_before(seq);
    }

    /// Makes the rendition start at `seq` or before (a receiver joined with history older
    /// than the rendition): it is rendered again from there, `seq` at or after the log's
    /// oldest message. Receivers in the middle of a frame hold its rest themselves.
    pub fn reach_back(&mut self, seq: u64) {
        if seq < self.log.first_seq() {
            self.log.restart_at(seq);
        }
    }

    /// Forgets everything (no WebSocket receiver is left to need it).
    pub fn clear(&mut self, log: &Log) {
        self.log.restart_at(log.end_seq());
    }
}

#[cfg(test)]
mod tests;
