//! One client: its socket, its undecoded input and its place in the log.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use mio::net::TcpStream;

use super::cursor::{Cursor, Flushed};
use super::disconnect::DisconnectReason;
use super::log::Log;
use crate::protocol::Decoder;
use crate::sys;

/// Size of a fresh read block. Messages are split off it without a copy, so one block carries
/// the messages of many reads until every receiver has been sent them.
const READ_BLOCK: usize = 64 * 1024;

/// Start a fresh block when less than this is left in the current one.
const MIN_READ: usize = 8 * 1024;

/// How the reading of a connection ended for this turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Read until `WouldBlock`: the next readable event will say when there is more.
    Drained,
    /// The read budget ran out with input perhaps left: come back without waiting for an event
    /// (edge-triggered readiness will not be reported again for data already there).
    More,
    /// The client closed its sending side; its last message, if any, is in the log.
    Eof,
}

/// A connected client.
#[derive(Debug)]
pub struct Connection {
    /// The client's socket, registered with the loop under this connection's token.
    pub socket: TcpStream,
    /// The client's address, for every log line about it.
    pub peer: SocketAddr,
    /// Unique for the life of the server (tokens are reused), so `--no-echo-self` can tell a
    /// sender's messages from those of a later client in the same slab slot.
    pub id: u64,
    /// Splits this client's input into messages.
    decoder: Decoder,
    /// An incomplete message, kept between reads. Empty (and unallocated) for an idle client:
    /// reads go to the loop's scratch buffer and only a partial message is copied here.
    tail: BytesMut,
    /// What this client has been sent of the log.
    pub cursor: Cursor,
    /// When bytes last arrived, for `--idle-timeout`.
    pub last_input: Instant,
    /// The last write hit `WouldBlock`: wait for a writable event before writing again.
    pub blocked: bool,
    /// Whether WRITABLE is part of the registered interest (only while blocked, so a caught-up
    /// receiver costs no wake-ups).
    pub wants_writable: bool,
    /// Set when the client closed its side: close once it has been sent the log up to here.
    pub eof_at: Option<u64>,
    /// Whether the token is in the loop's queue of connections with input left to read.
    pub queued: bool,
    /// Messages skipped under `--slow-consumer drop`.
    pub dropped: u64,
}

impl Connection {
    pub fn new(socket: TcpStream, peer: SocketAddr, id: u64, decoder: Decoder, log: &Log) -> Self {
        Connection {
            socket,
            peer,
            id,
            decoder,
            tail: BytesMut::new(),
            cursor: Cursor::at(log.end_seq()),
            last_input: Instant::now(),
            blocked: false,
            wants_writable: false,
            eof_at: None,
            queued: false,
            dropped: 0,
        }
    }

    /// Reads until `WouldBlock`, end of stream or `budget` bytes, appending every complete
    /// message to `log`. Input goes into `scratch` (shared by all connections of the loop)
    /// unless a partial message is pending, in which case it continues that message in `tail`.
    pub fn read(
        &mut self,
        scratch: &mut BytesMut,
        log: &mut Log,
        budget: usize,
        now: Instant,
    ) -> Result<Input, DisconnectReason> {
        debug_assert!(scratch.is_empty(), "scratch holds another client's bytes");
        let mut taken = 0;
        while taken < budget {
            let from_scratch = self.tail.is_empty();
            let buf = if from_scratch {
                &mut *scratch
            } else {
                &mut self.tail
            };
            if buf.capacity() - buf.len() < MIN_READ {
                buf.reserve(READ_BLOCK);
            }
            match sys::read_into(&self.socket, buf) {
                Ok(0) => {
                    while let Some(msg) = self.decoder.decode_eof(&mut self.tail)? {
                        log.append(msg, self.id);
                    }
                    self.tail = BytesMut::new();
                    return Ok(Input::Eof);
                }
                Ok(n) => {
                    taken += n;
                    self.last_input = now;
                    let decoded = decode_into(&mut self.decoder, buf, log, self.id);
                    if from_scratch {
                        // Keep only the incomplete rest; the scratch block goes on serving
                        // reads, and must hold nothing of this client when the next one reads.
                        if decoded.is_ok() {
                            self.tail.extend_from_slice(scratch);
                        }
                        scratch.clear();
                    }
                    decoded?;
                    if !from_scratch && self.tail.is_empty() {
                        // Let go of the block the finished message lives in.
                        self.tail = BytesMut::new();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Input::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DisconnectReason::Reset(e)),
            }
        }
        Ok(Input::More)
    }

    /// Writes what this client is owed of `log`; see [`Cursor::flush`].
    pub fn flush(&mut self, log: &Log, echo_self: bool) -> io::Result<Flushed> {
        let skip = (!echo_self).then_some(self.id);
        self.cursor.flush(log, skip, &mut self.socket)
    }

    /// Whether the client closed its side and has now been sent all it is owed.
    pub fn is_finished(&self) -> bool {
        self.eof_at
            .is_some_and(|end| self.cursor.next_seq() >= end && !self.cursor.in_message())
    }
}

/// Appends every complete message in `buf` to `log`, as one batch.
fn decode_into(
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    log: &mut Log,
    origin: u64,
) -> Result<(), DisconnectReason> {
    // Everything decoded here is split off `buf` in turn: one batch.
    let batch = log.batch();
    while let Some(msg) = decoder.decode(buf)? {
        log.append_in_batch(msg, origin, batch);
    }
    Ok(())
}
