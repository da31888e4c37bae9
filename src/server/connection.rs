//! One client: its socket, its undecoded input and its place in the log.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::TcpStream;
use socket2::{SockRef, TcpKeepalive};

use super::auth::AuthWait;
use super::cursor::{Cursor, Flushed};
use super::disconnect::DisconnectReason;
use super::inbox::{self, Inbox};
use super::log::{self, Entry, Log};
use super::pack::Packer;
use super::stream::Stream;
use super::web::{Side, WsState};
use crate::protocol::Decoder;

/// TCP keepalive on every client socket, so a peer that vanished (a machine switched off, a
/// cable pulled) is found on a quiet server too: probes after this much silence...
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// ...every this often...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and the connection fails after this many unanswered ones.
const KEEPALIVE_PROBES: u32 = 6;

/// The least a read asks for, however little of the held budget is left: reads stay of a
/// useful size, and one read passes the budget by at most this many bytes' worth.
pub const READ_FLOOR: usize = 2 * 1024;

/// How the reading of a connection ended for this turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Read until `WouldBlock`: the next readable event will say when there is more.
    Drained,
    /// The read budget ran out with input perhaps left: come back without waiting for an event
    /// (edge-triggered readiness will not be reported again for data already there).
    More,
    /// The client closed its sending side; its last message, if any, is in the batch.
    Eof,
}

/// The loop's buffers for reading, shared by all its connections so an idle connection holds
/// none of its own. Bounded by one round's input; [`shrink`](Self::shrink) gives back what a
/// burst grew.
#[derive(Debug)]
pub struct ReadBuffers {
    /// Input is read here and messages are cut off it without a copy.
    pub scratch: BytesMut,
    /// Positions of the messages of one read (reused).
    spans: Vec<(usize, usize)>,
    /// Messages read since the batch was last handed to the sequencer, in order.
    pub batch: Vec<Entry>,
    /// What each message counts beyond its bytes ([`Log::held_for`] of the loop's log).
    pub(super) overhead: usize,
    /// WebSocket clients' messages are stored here in the server's wire form.
    pub(super) packer: Packer,
    /// Mark TCP messages that are not UTF-8 as binary for WebSocket receivers (only with
    /// `--http`: the check costs a pass over every message).
    pub mark_binary: bool,
    /// Bytes read from clients (`--metrics`).
    pub bytes_in: u64,
}

impl ReadBuffers {
    /// Buffers for a loop whose log counts messages as `log` does.
    pub fn new(log: &Log) -> Self {
        ReadBuffers {
            scratch: BytesMut::new(),
            spans: Vec::new(),
            batch: Vec::new(),
            overhead: log.held_for(0),
            packer: Packer::default(),
            mark_binary: false,
            bytes_in: 0,
        }
    }

    /// What a message of `len` bytes counts against `--max-pending` ([`Log::held_for`]).
    pub(super) fn held_for(&self, len: usize) -> usize {
        log::counted(len, self.overhead)
    }

    /// After a batch of `used` messages was handed over: lets go of room that an earlier burst
    /// of tiny messages grew and that is now far more than used.
    pub fn shrink(&mut self, used: usize) {
        const KEEP: usize = 1024;
        let keep = used.max(KEEP);
        if self.batch.capacity() > 4 * keep {
            self.batch.shrink_to(2 * keep);
        }
        if self.spans.capacity() > 4 * keep {
            self.spans.shrink_to(2 * keep);
        }
    }
}

/// What a connection speaks.
#[derive(Debug)]
pub enum Transport {
    /// The server's `--protocol`, through [`Inbox`].
    Tcp,
    /// WebSocket frames (after an upgrade on the `--http` listener).
    Ws(Box<WsState>),
    /// Not a receiver: an HTTP request being read, or an answer being written before the
    /// connection closes (see [`Side`]).
    Side(Box<Side>),
    /// Not a receiver yet: a TCP client that has not presented the token (see [`AuthWait`]).
    Auth(Box<AuthWait>),
}

/// A connected client.
#[derive(Debug)]
pub struct Connection {
    /// The client's socket (under TLS with `--tls-cert`), registered with the loop under this
    /// connection's token. Every byte read or written goes through it.
    pub socket: Stream,
    /// The client's address, for every log line about it.
    pub peer: SocketAddr,
    /// Unique for the life of the server (tokens are reused), so `--no-echo-self` can tell a
    /// sender's messages from those of a later client in the same slab slot.
    pub id: u64,
    /// This client's decoder and incomplete message.
    inbox: Inbox,
    /// What this client has been sent of the log.
    pub cursor: Cursor,
    /// When bytes last arrived, for `--idle-timeout`.
    pub last_input: Instant,
    /// The last write hit `WouldBlock`: wait for a writable event before writing again.
    pub blocked: bool,
    /// Whether WRITABLE is part of the registered interest (only while blocked, so a caught-up
    /// receiver costs no wake-ups).
    pub wants_writable: bool,
    /// Set when the client closed its side: close once it has been sent the log up to here
    /// (`u64::MAX` while its last messages are on their way into the order: see
    /// `Sequencer::settled`).
    pub eof_at: Option<u64>,
    /// The sequencer's ticket for this client's last batch of messages.
    pub last_ticket: u64,
    /// During shutdown: our sending side is closed (all was sent); waiting for the client's EOF.
    pub write_shut: bool,
    /// Whether the token is in the loop's queue of connections with input left to read.
    pub queued: bool,
    /// Whether the token is in the fan-out's list of receivers to visit without new input.
    pub woken: bool,
    /// Index of this connection in the fan-out's list of members.
    pub member_index: usize,
    /// The shortest message this client sent in its last visit with messages (`usize::MAX`
    /// until it has sent one): how much input a read may take within the budget left.
    shortest: usize,
    /// Messages skipped under `--slow-consumer drop`.
    pub dropped: u64,
    /// Where it joined the order: what it is sent before is history (`--history`), sent as
    /// far as the log still holds it.
    pub live_from: u64,
    /// TCP, WebSocket, or an HTTP connection not (or no longer) receiving.
    pub transport: Transport,
    /// Why the connection ends once it has been sent all up to `eof_at`, when that is not a
    /// plain end of stream (a WebSocket client's close frame or fault: it gets a close frame).
    pub end: Option<DisconnectReason>,
    /// With `end`: when the client is cut off if it has not taken what it is owed by then.
    pub end_by: Option<Instant>,
}

impl Connection {
    pub fn new(
        socket: impl Into<Stream>,
        peer: SocketAddr,
        id: u64,
        decoder: Decoder,
        transport: Transport,
        now: Instant,
    ) -> Self {
        Connection {
            socket: socket.into(),
            peer,
            id,
            inbox: Inbox::new(decoder),
            cursor: Cursor::at(0),
            last_input: now,
            blocked: false,
            wants_writable: false,
            eof_at: None,
            last_ticket: 0,
            write_shut: false,
            queued: false,
            woken: false,
            member_index: 0,
            shortest: usize::MAX,
            dropped: 0,
            live_from: 0,
            transport,
            end: None,
            end_by: None,
        }
    }

    /// Socket options for a freshly accepted client: no Nagle delay (each message is sent as
    /// soon as it is written) and TCP keepalive.
    pub fn configure(socket: &TcpStream) -> io::Result<()> {
        socket.set_nodelay(true)?;
        let keepalive = TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES);
        SockRef::from(socket).set_tcp_keepalive(&keepalive)
    }

    /// Reads until `WouldBlock`, end of stream, `budget` bytes read, or messages that count
    /// `held_budget` bytes against `--max-pending` (see [`Entry::held`]), appending every
    /// complete message to `bufs.batch`.
    ///
    /// No read takes more bytes than the held budget left could count if the input were all
    /// messages as short as the shortest this client sent in its last visit with messages
    /// (until it has sent one: one byte; but at least [`READ_FLOOR`]). A client of large
    /// messages thus reads in large chunks, and one that sends tiny ones in small chunks. The
    /// budget is passed by at most one read if a client sends shorter messages than in its
    /// last visit (at most [`inbox::MAX_READ`] bytes of one-byte messages), plus one message
    /// that an earlier read left incomplete.
    pub fn read(
        &mut self,
        bufs: &mut ReadBuffers,
        budget: usize,
        held_budget: usize,
        now: Instant,
    ) -> Result<Input, DisconnectReason> {
        match &mut self.transport {
            Transport::Tcp => {}
            Transport::Ws(ws) => {
                let last_input = &mut self.last_input;
                return ws.read(
                    &mut self.socket,
                    bufs,
                    self.id,
                    budget,
                    held_budget,
                    last_input,
                    now,
                );
            }
            Transport::Side(_) | Transport::Auth(_) => return Ok(Input::Drained),
        }
        let before = bufs.batch.len();
        let mut seen = usize::MAX;
        let result = self.read_visit(bufs, budget, held_budget, now, &mut seen);
        if bufs.mark_binary {
            let wire = self.inbox.protocol();
            for e in &mut bufs.batch[before..] {
                let text = std::str::from_utf8(wire.payload(e.bytes())).is_ok();
                e.set_binary(!text);
            }
        }
        // The last visit's shortest message sizes the next visit's reads: a client that sent
        // one empty line long ago is not read in small chunks for ever.
        if seen != usize::MAX {
            self.shortest = seen;
        }
        result
    }

    fn read_visit(
        &mut self,
        bufs: &mut ReadBuffers,
        budget: usize,
        held_budget: usize,
        now: Instant,
        seen: &mut usize,
    ) -> Result<Input, DisconnectReason> {
        debug_assert!(
            bufs.scratch.is_empty(),
            "scratch holds another client's bytes"
        );
        let (mut taken, mut held) = (0, 0);
        let wire_from = self.socket.wire_in();
        while taken < budget && held < held_budget {
            inbox::reserve_for_read(&mut bufs.scratch);
            // Until the client has sent a message, assume the worst: one byte each.
            let shortest = match self.shortest.min(*seen) {
                usize::MAX => 1,
                known => known,
            };
            let most = ((held_budget - held) as u128 * shortest as u128
                / bufs.held_for(shortest) as u128)
                .min(usize::MAX as u128) as usize;
            let most = most
                .max(READ_FLOOR)
                .min(budget - taken)
                .min(inbox::MAX_READ);
            let prefixed = self.inbox.prefix(&mut bufs.scratch);
            let read = self.socket.read_into(&mut bufs.scratch, most);
            if !matches!(read, Ok(n) if n > 0) {
                // No new bytes: the partial stays where it was; its copy goes.
                bufs.scratch.clear();
            }
            match read {
                Ok(0) => {
                    self.inbox.finish(self.id, &mut bufs.batch)?;
                    return Ok(Input::Eof);
                }
                Ok(n) => {
                    // Under TLS the records count when they are more than the plaintext.
                    let wire = (self.socket.wire_in() - wire_from) as usize;
                    taken = (taken + n).max(wire);
                    bufs.bytes_in += n as u64;
                    self.last_input = now;
                    let before = bufs.batch.len();
                    let absorbed = self.inbox.absorb(
                        &mut bufs.scratch,
                        &mut bufs.spans,
                        self.id,
                        &mut bufs.batch,
                        prefixed,
                    );
                    for entry in &bufs.batch[before..] {
                        held += bufs.held_for(entry.len());
                        *seen = (*seen).min(entry.len().max(1));
                    }
                    absorbed?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Input::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DisconnectReason::from_io(e)),
            }
        }
        Ok(Input::More)
    }

    /// During shutdown: reads and throws away what the client sends (relaying has stopped), so
    /// that closing the socket later does not find unread input and send a reset, which would
    /// make the client's kernel discard what we delivered but it has not read yet.
    pub fn discard(
        &mut self,
        scratch: &mut BytesMut,
        budget: usize,
        now: Instant,
    ) -> Result<Input, DisconnectReason> {
        let mut taken = 0;
        while taken < budget {
            inbox::reserve_for_read(scratch);
            let read = self.socket.read_into(scratch, budget - taken);
            scratch.clear();
            match read {
                Ok(0) => return Ok(Input::Eof),
                Ok(n) => {
                    taken += n;
                    self.last_input = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Input::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DisconnectReason::from_io(e)),
            }
        }
        Ok(Input::More)
    }

    /// Writes what this client is owed of `log` (see [`Cursor::flush`]); a WebSocket client
    /// is written from `frames`, the log rendered as WebSocket frames, and the control frames
    /// it is owed go out between whole messages. Under TLS it is caught up only once its
    /// records have left too. Bytes written (plaintext) are added to `sent`.
    pub fn flush(
        &mut self,
        log: &super::Log,
        frames: &super::Log,
        echo_self: bool,
        sent: &mut u64,
    ) -> io::Result<Flushed> {
        let flushed = self.flush_messages(log, frames, echo_self, sent)?;
        // (Plain streams: always true, nothing to send.)
        if flushed == Flushed::CaughtUp && !self.socket.send_pending()? {
            return Ok(Flushed::Blocked);
        }
        Ok(flushed)
    }

    fn flush_messages(
        &mut self,
        log: &super::Log,
        frames: &super::Log,
        echo_self: bool,
        sent: &mut u64,
    ) -> io::Result<Flushed> {
        let skip = (!echo_self).then_some(self.id);
        let mut out = Counting {
            inner: &mut self.socket,
            sent,
        };
        let ws = match &mut self.transport {
            Transport::Tcp => return self.cursor.flush(log, skip, &mut out),
            Transport::Ws(ws) => ws,
            Transport::Side(_) | Transport::Auth(_) => return Ok(Flushed::CaughtUp),
        };
        loop {
            if !self.cursor.in_message() && !ws.write_ctrl(&mut out)? {
                return Ok(Flushed::Blocked);
            }
            if self.cursor.flush(frames, skip, &mut out)? == Flushed::Blocked {
                return Ok(Flushed::Blocked);
            }
            if !ws.has_ctrl() {
                return Ok(Flushed::CaughtUp);
            }
        }
    }

    /// Whether a flush has something to write: messages, or control frames, or TLS records.
    pub fn wants_write(&self, log: &super::Log) -> bool {
        self.cursor.is_behind(log) || self.has_ctrl()
    }

    /// Whether bytes other than messages wait to be written: WebSocket control frames, or TLS
    /// records (a handshake's answer, the rest of what the socket did not take).
    pub fn has_ctrl(&self) -> bool {
        matches!(&self.transport, Transport::Ws(ws) if ws.has_ctrl()) || self.socket.wants_write()
    }

    /// Whether this is a WebSocket receiver.
    pub fn is_websocket(&self) -> bool {
        matches!(self.transport, Transport::Ws(_))
    }

    /// Whether this connection is one of the fan-out's receivers (TCP or WebSocket).
    pub fn is_member(&self) -> bool {
        matches!(self.transport, Transport::Tcp | Transport::Ws(_))
    }

    /// Makes a WebSocket receiver a side connection that is sent the rest of the message
    /// under way, then `frame` (a close frame), and closes once the client has closed (see
    /// [`Side::goodbye`]). The caller removed it from the fan-out.
    pub fn say_goodbye(&mut self, frame: bytes::Bytes, then: DisconnectReason, now: Instant) {
        // A message under way is finished first; control frames (the 101 answer, a pong) are
        // written only between messages, so none of them has begun if one is under way.
        let mut out: std::collections::VecDeque<bytes::Bytes> =
            self.cursor.take_unsent().into_iter().collect();
        if let Transport::Ws(ws) = &mut self.transport {
            out.extend(ws.take_ctrl());
        }
        out.push_back(frame);
        self.transport = Transport::Side(Box::new(Side::goodbye(out, then, now)));
    }

    /// Whether anything in `log` is still to be sent to this client (its own messages do not
    /// count under `--no-echo-self`).
    pub fn owes(&self, log: &super::Log, echo_self: bool) -> bool {
        let skip = (!echo_self).then_some(self.id);
        self.cursor.owes(log, skip) || self.socket.wants_write()
    }

    /// Why a finished connection ends (see [`end`](Self::end)).
    pub fn end_reason(&mut self) -> DisconnectReason {
        self.end.take().unwrap_or(DisconnectReason::Closed)
    }

    /// Whether the client closed its side and has now been sent all it is owed.
    pub fn is_finished(&self) -> bool {
        self.eof_at.is_some_and(|end| {
            self.cursor.next_seq() >= end && !self.cursor.in_message() && !self.socket.wants_write()
        })
    }

    /// Closes our sending side (the client reads the end of the stream after all it was
    /// sent); a WebSocket client is sent a close frame (going away) first, a TLS client a
    /// close_notify. Returns false if those could not be written whole yet: the socket is not
    /// shut, and this is to be called again once it is writable.
    pub fn shut_write(&mut self) -> io::Result<bool> {
        if let Transport::Ws(ws) = &mut self.transport {
            ws.going_away();
            if !ws.write_ctrl(&mut self.socket)? {
                return Ok(false);
            }
        }
        if !self.socket.shut_write()? {
            return Ok(false);
        }
        self.write_shut = true;
        Ok(true)
    }

    /// Under TLS, sends a close_notify and ends our side, if not done yet (best effort: for
    /// an orderly close).
    pub fn end_tls(&mut self) {
        if matches!(self.socket, Stream::Tls(_)) && !self.write_shut {
            self.write_shut = true;
            let _ = self.socket.shut_write();
        }
    }

    /// Makes closing the socket send a reset at once: for a client that failed, so that what
    /// the kernel still holds for it (up to megabytes it will never read) is freed now rather
    /// than after a FIN-WAIT that lasts as long as the peer neither reads nor closes.
    pub fn abort_on_close(&self) {
        // Failing only means a graceful close instead.
        let _ = SockRef::from(self.socket.tcp()).set_linger(Some(Duration::ZERO));
    }
}

/// A writer that counts what it wrote (one addition per system call).
struct Counting<'a, W> {
    inner: &'a mut W,
    sent: &'a mut u64,
}

impl<W: io::Write> io::Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        *self.sent += n as u64;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.inner.write_vectored(bufs)?;
        *self.sent += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
