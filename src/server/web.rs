//! Connections of the `--http` listener: the request head, the page or an error status, the
//! upgrade to WebSocket, and a WebSocket client's reading and control frames.
//!
//! An HTTP connection is a *side* connection until it upgrades: it is no receiver of the log
//! and is driven by its own readiness events ([`Side::drive`]). After `101` it is a WebSocket
//! receiver like a TCP one (the fan-out writes it from the log rendered as frames, see
//! `rendition.rs`), whose input is decoded frame by frame into messages in the server's wire
//! form ([`WsState::read`]). A WebSocket client that is closed with a close frame becomes a
//! side connection again: it is sent the rest of the message under way and the close frame,
//! then lingers until the client closes.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::connection::Input;
use super::disconnect::DisconnectReason;
use super::inbox;
use super::log::{self, Entry};
use super::pack::Packer;
use super::stream::Stream;
use crate::auth::Token;
use crate::protocol::Protocol;
use crate::ws::frame::{self, close, Decoder, FrameError, Received};
use crate::ws::handshake::{self, Origins, Parsed, Route, MAX_HEAD};

/// How long an HTTP connection may take to send its request head, and a side connection to
/// take its answer and close.
pub const SIDE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes a side connection may send after its answer before it is cut off rather than waited
/// for (a browser closes at once; this is for clients that keep sending).
const LINGER_LIMIT: usize = 1 << 20;

/// A connection that is not (or no longer) a receiver: an HTTP request being read, or an
/// answer (a response, a close frame) being written before the connection closes.
#[derive(Debug)]
pub struct Side {
    /// When it is closed whatever its state.
    pub deadline: Instant,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    /// Reading the request head (at most [`MAX_HEAD`] bytes).
    Head(BytesMut),
    /// Writing `out`, then closing our side and waiting for the client's end of stream;
    /// `then` is why the connection ends (logged when it does).
    Finish {
        out: VecDeque<Bytes>,
        then: Option<DisconnectReason>,
        shut: bool,
        lingered: usize,
    },
}

/// What driving a side connection came to.
#[derive(Debug)]
pub enum SideEvent {
    /// Waiting for the socket.
    Pending,
    /// A valid upgrade: answer `101` with this accept key; `rest` is what the client sent
    /// after the head (its first frames).
    Upgrade { accept: String, rest: BytesMut },
    /// Over: close it (gracefully, the answer was delivered) for this reason.
    Done(DisconnectReason),
}

impl Side {
    /// A connection accepted on the HTTP listener.
    pub fn new(now: Instant) -> Self {
        Side {
            deadline: now + SIDE_TIMEOUT,
            phase: Phase::Head(BytesMut::new()),
        }
    }

    /// A WebSocket client being closed: `out` (the rest of a message under way, then the close
    /// frame) is written, then the connection lingers until the client closes.
    pub fn goodbye(out: VecDeque<Bytes>, then: DisconnectReason, now: Instant) -> Self {
        Side {
            deadline: now + SIDE_TIMEOUT,
            phase: Phase::Finish {
                out,
                then: Some(then),
                shut: false,
                lingered: 0,
            },
        }
    }

    /// Reads, answers and lingers as far as the socket allows.
    pub fn drive(
        &mut self,
        socket: &mut Stream,
        origins: &Origins,
        token: Option<&Token>,
    ) -> SideEvent {
        match self.step(socket, origins, token) {
            Ok(event) => event,
            // Once answered, the answer is what the connection ended with, whether the client
            // then closed, reset or stopped.
            Err(e) => SideEvent::Done(self.end(DisconnectReason::from_io(e))),
        }
    }

    /// Why the connection ends at its deadline: a time-out (closed with a reset, so the
    /// kernel lets go of what it still holds for a client that stopped reading) unless its
    /// answer was written whole and only its end of stream was awaited.
    pub fn timed_out(&mut self) -> DisconnectReason {
        match &mut self.phase {
            Phase::Finish { out, then, .. } if out.is_empty() => {
                then.take().unwrap_or(DisconnectReason::HttpTimeout)
            }
            _ => DisconnectReason::HttpTimeout,
        }
    }

    /// Why the connection ends now: what it was answered for, once it was; else `otherwise`.
    pub fn end(&mut self, otherwise: DisconnectReason) -> DisconnectReason {
        match &mut self.phase {
            Phase::Finish { then, .. } => then.take().unwrap_or(otherwise),
            Phase::Head(_) => otherwise,
        }
    }

    fn step(
        &mut self,
        socket: &mut Stream,
        origins: &Origins,
        token: Option<&Token>,
    ) -> io::Result<SideEvent> {
        loop {
            match &mut self.phase {
                Phase::Head(head) => {
                    if head.capacity() == head.len() {
                        head.reserve((MAX_HEAD - head.len()).min(1024));
                    }
                    let room = MAX_HEAD - head.len();
                    let n = match socket.read_into(head, room) {
                        Ok(0) => return Ok(SideEvent::Done(DisconnectReason::Closed)),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(SideEvent::Pending)
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    debug_assert!(n > 0);
                    let (route, head_len) = match handshake::parse(head, origins, token) {
                        Parsed::Incomplete => continue,
                        Parsed::Done { route, head_len } => (route, head_len),
                    };
                    let (answer, then) = match route {
                        Route::Upgrade { accept } => {
                            let rest = BytesMut::from(&head[head_len.min(head.len())..]);
                            return Ok(SideEvent::Upgrade { accept, rest });
                        }
                        Route::Page => (page_response(), DisconnectReason::PageServed),
                        Route::Refuse { status, reason } => (
                            Bytes::from(handshake::error_response(status, reason)),
                            DisconnectReason::Refused { status, reason },
                        ),
                    };
                    self.phase = Phase::Finish {
                        out: VecDeque::from([answer]),
                        then: Some(then),
                        shut: false,
                        lingered: 0,
                    };
                }
                Phase::Finish {
                    out,
                    then,
                    shut,
                    lingered,
                } => {
                    while let Some(front) = out.front_mut() {
                        match socket.write(front) {
                            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                            Ok(n) if n < front.len() => {
                                bytes::Buf::advance(front, n);
                            }
                            Ok(_) => {
                                out.pop_front();
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Ok(SideEvent::Pending)
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    // Under TLS a close_notify goes first, which may wait for the socket.
                    if !*shut {
                        if !socket.shut_write()? {
                            return Ok(SideEvent::Pending);
                        }
                        *shut = true;
                    }
                    // Read what the client still sends until it closes: closing with unread
                    // input would send a reset that can destroy the answer before it is read.
                    let mut sink = [0u8; 4096];
                    loop {
                        match io::Read::read(socket, &mut sink) {
                            Ok(0) => {
                                let why = then.take().unwrap_or(DisconnectReason::Closed);
                                return Ok(SideEvent::Done(why));
                            }
                            Ok(n) => {
                                *lingered += n;
                                if *lingered > LINGER_LIMIT {
                                    // Its own fault, whatever it was answered: a reset.
                                    return Ok(SideEvent::Done(DisconnectReason::Reset(
                                        io::Error::other(
                                            "kept sending after the connection was answered",
                                        ),
                                    )));
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Ok(SideEvent::Pending)
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
    }
}

/// The page's response (the page is in the binary; the response is built once per request,
/// which is no data path).
fn page_response() -> Bytes {
    Bytes::from(handshake::response(
        "200 OK",
        "text/html; charset=utf-8",
        crate::ws::PAGE.as_bytes(),
    ))
}

/// A WebSocket client's state beside its cursor: its frame decoder, an incomplete frame, and
/// the control frames owed to it. An idle client holds no buffer.
#[derive(Debug)]
pub struct WsState {
    decoder: Decoder,
    /// The start of a frame a read left incomplete (empty and unallocated when none).
    input: BytesMut,
    /// Control bytes being written (the `101` answer first, then pongs and pings), always
    /// whole frames, written only between whole messages.
    ctrl: BytesMut,
    /// The payloads of the pings not yet answered, oldest first: each is answered, in order
    /// (Autobahn's case 2.10 sends ten in one write and expects ten pongs). At most
    /// [`PONGS_OWED`]: past that the oldest is dropped (RFC 6455 section 5.5.3 allows
    /// answering only the latest), so a client sending pings it never reads the answers to
    /// cannot make this grow.
    pongs: VecDeque<Bytes>,
    /// A keepalive ping is to be sent.
    ping_due: bool,
    /// A keepalive ping was sent and nothing has arrived since.
    pub ping_sent: bool,
    /// The server's `--protocol`: the wire form messages are stored in.
    pub wire: Protocol,
    /// The close frame was queued (the server is shutting down): no control frame follows.
    closing: bool,
}

impl WsState {
    /// A client just upgraded: `101` with `accept` is its first output, `rest` its first input.
    pub fn new(max_message: usize, wire: Protocol, accept: &str, rest: BytesMut) -> Self {
        WsState {
            decoder: Decoder::new(max_message),
            input: rest,
            ctrl: BytesMut::from(&handshake::upgrade_response(accept)[..]),
            pongs: VecDeque::new(),
            ping_due: false,
            ping_sent: false,
            wire,
            closing: false,
        }
    }

    /// Whether a control frame waits to be written.
    pub fn has_ctrl(&self) -> bool {
        !self.ctrl.is_empty() || (!self.closing && (!self.pongs.is_empty() || self.ping_due))
    }

    /// Asks for a keepalive ping (`--idle-timeout`): the client's pong counts as input.
    pub fn ping(&mut self) {
        if !self.ping_sent {
            self.ping_due = true;
            self.ping_sent = true;
        }
    }

    /// Queues the close frame of a shutdown (after the pongs owed), once; nothing follows it.
    pub fn going_away(&mut self) {
        if self.closing {
            return;
        }
        for payload in self.pongs.drain(..) {
            control_frame(&mut self.ctrl, frame::Control::Pong, &payload);
        }
        self.ping_due = false;
        self.ctrl.extend_from_slice(&going_away());
        self.closing = true;
    }

    /// The control bytes not yet written (whole frames, or the rest of one begun).
    pub fn take_ctrl(&mut self) -> Option<Bytes> {
        let mut out = std::mem::take(&mut self.ctrl);
        for payload in self.pongs.drain(..) {
            control_frame(&mut out, frame::Control::Pong, &payload);
        }
        (!out.is_empty()).then(|| out.freeze())
    }

    /// Writes the control frames owed; the caller makes sure no message is under way.
    /// Returns false if the socket took all it could first.
    pub fn write_ctrl(&mut self, out: &mut impl Write) -> io::Result<bool> {
        loop {
            if self.ctrl.is_empty() {
                if self.closing {
                    self.ctrl = BytesMut::new();
                    return Ok(true);
                }
                if let Some(payload) = self.pongs.pop_front() {
                    control_frame(&mut self.ctrl, frame::Control::Pong, &payload);
                } else if std::mem::take(&mut self.ping_due) {
                    control_frame(&mut self.ctrl, frame::Control::Ping, b"");
                } else {
                    // Idle clients hold no buffer.
                    self.ctrl = BytesMut::new();
                    self.pongs = VecDeque::new();
                    return Ok(true);
                }
            }
            match out.write(&self.ctrl) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.ctrl.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Decodes the frames in `buf` (the loop's scratch after a read, or `self.input`):
    /// messages go to `batch` in the server's wire form, copied into `wire` (one block per
    /// read, shared by its messages); pings are answered later. Returns the messages' count
    /// as `--max-pending` counts it, per `held_for`.
    fn decode(
        decoder: &mut Decoder,
        pongs: &mut VecDeque<Bytes>,
        buf: &mut BytesMut,
        into: &mut Decoded<'_>,
    ) -> Result<(), DisconnectReason> {
        loop {
            let received = decoder.decode(buf).map_err(DisconnectReason::WsProtocol);
            match received {
                Ok(None) => return Ok(()),
                Ok(Some(Received::Message { text, payload })) => into.message(text, &payload)?,
                Ok(Some(Received::Ping(payload))) => {
                    if pongs.len() == PONGS_OWED {
                        pongs.pop_front();
                    }
                    // Copied: a slice would keep the whole read block alive until it is sent.
                    pongs.push_back(Bytes::copy_from_slice(&payload));
                }
                Ok(Some(Received::Pong)) => {}
                Ok(Some(Received::Close { code })) => {
                    return Err(DisconnectReason::WsClosed(code));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads like [`Connection::read`](super::connection::Connection::read) does for a TCP
    /// client (the same budgets), decoding frames instead of the wire protocol.
    #[allow(clippy::too_many_arguments)]
    pub fn read(
        &mut self,
        socket: &mut Stream,
        bufs: &mut super::connection::ReadBuffers,
        origin: u64,
        budget: usize,
        held_budget: usize,
        last_input: &mut Instant,
        now: Instant,
    ) -> Result<Input, DisconnectReason> {
        let (mut taken, mut held) = (0, 0);
        let mut result = Ok(Input::More);
        // Frames left from before (after the request head, or a visit's budget) first.
        let overhead = bufs.overhead;
        if !self.input.is_empty() {
            let (counted, decoded) = self.decode_read(bufs, origin);
            held += counted;
            decoded?;
        }
        while taken < budget && held < held_budget {
            inbox::reserve_for_read(&mut bufs.scratch);
            // The shortest message a client can send is a 6-byte frame; a read holds no more
            // such messages than the held budget left allows (but reads at least READ_FLOOR).
            let per = log::counted(FRAME_MIN + crate::protocol::FRAME_HEADER_LEN, overhead);
            let most = ((held_budget - held) as u128 * FRAME_MIN as u128 / per as u128)
                .min(usize::MAX as u128) as usize;
            let most = most
                .max(super::connection::READ_FLOOR)
                .min(budget - taken)
                .min(inbox::MAX_READ);
            let read = socket.read_into(&mut bufs.scratch, most);
            match read {
                Ok(0) => {
                    bufs.scratch.clear();
                    result = Ok(Input::Eof);
                    break;
                }
                Ok(n) => {
                    taken += n;
                    bufs.bytes_in += n as u64;
                    *last_input = now;
                    self.ping_sent = false;
                    let (counted, decoded) = self.decode_read(bufs, origin);
                    held += counted;
                    if let Err(e) = decoded {
                        result = Err(e);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    bufs.scratch.clear();
                    result = Ok(Input::Drained);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => bufs.scratch.clear(),
                Err(e) => {
                    bufs.scratch.clear();
                    result = Err(DisconnectReason::from_io(e));
                    break;
                }
            }
        }
        result
    }
}

impl WsState {
    /// Decodes what was just read into `bufs.scratch` (empty when only frames left in
    /// `self.input` are to be decoded) after those left from before, appending the messages to
    /// `bufs.batch`. Returns what they count against `--max-pending`, and how decoding ended.
    /// An incomplete frame is kept in `self.input`, a buffer of its own sized to it.
    fn decode_read(
        &mut self,
        bufs: &mut super::connection::ReadBuffers,
        origin: u64,
    ) -> (usize, Result<(), DisconnectReason>) {
        let scratch = &mut bufs.scratch;
        let mut into = Decoded::new(
            &mut bufs.packer,
            &mut bufs.batch,
            bufs.overhead,
            self.wire,
            origin,
        );
        let decoded = if self.input.is_empty() {
            let decoded = Self::decode(&mut self.decoder, &mut self.pongs, scratch, &mut into);
            if !scratch.is_empty() {
                self.input = BytesMut::from(&scratch[..]);
            }
            decoded
        } else {
            self.input.extend_from_slice(scratch);
            Self::decode(
                &mut self.decoder,
                &mut self.pongs,
                &mut self.input,
                &mut into,
            )
        };
        scratch.clear();
        let counted = into.finish();
        if self.input.is_empty() {
            // Idle clients hold no buffer.
            self.input = BytesMut::new();
        } else if self.input.capacity() > 4 * self.input.len().max(1024) {
            // The start of a short frame left in a buffer a long one grew.
            self.input = BytesMut::from(&self.input[..]);
        }
        (counted, decoded)
    }
}

/// Pongs owed to one client at most (each up to 125 bytes of payload).
const PONGS_OWED: usize = 16;

/// The shortest client frame: two bytes of header and four of mask.
const FRAME_MIN: usize = 6;

/// The messages of one read being stored in the server's wire form, in order.
struct Decoded<'a> {
    packer: &'a mut Packer,
    batch: &'a mut Vec<Entry>,
    overhead: usize,
    wire: Protocol,
    origin: u64,
    /// What the messages pushed count against `--max-pending`.
    held: usize,
}

impl<'a> Decoded<'a> {
    fn new(
        packer: &'a mut Packer,
        batch: &'a mut Vec<Entry>,
        overhead: usize,
        wire: Protocol,
        origin: u64,
    ) -> Self {
        Decoded {
            packer,
            batch,
            overhead,
            wire,
            origin,
            held: 0,
        }
    }

    /// One message from the client, stored in the server's wire form.
    fn message(&mut self, text: bool, payload: &[u8]) -> Result<(), DisconnectReason> {
        if self.wire == Protocol::Line && memchr::memchr(b'\n', payload).is_some() {
            return Err(DisconnectReason::WsProtocol(FrameError {
                code: close::INVALID_DATA,
                reason: "message contains a newline, which --protocol line cannot relay",
            }));
        }
        if self.wire == Protocol::Raw && payload.is_empty() {
            return Ok(()); // carries nothing
        }
        let most = payload.len() + crate::protocol::FRAME_HEADER_LEN;
        let (wire, batch, held, overhead) =
            (self.wire, &mut *self.batch, &mut self.held, self.overhead);
        self.packer.add(
            most,
            self.origin,
            !text,
            |out| wire.encode(payload, out),
            &mut |e: Entry| {
                *held += log::counted(e.len(), overhead);
                batch.push(e);
            },
        );
        Ok(())
    }

    /// Appends what is left to the batch; returns what the read's messages count.
    fn finish(self) -> usize {
        let Decoded {
            packer,
            batch,
            overhead,
            mut held,
            ..
        } = self;
        packer.flush(&mut |e: Entry| {
            held += log::counted(e.len(), overhead);
            batch.push(e);
        });
        held
    }
}

/// Appends an unmasked control frame.
fn control_frame(out: &mut BytesMut, control: frame::Control, payload: &[u8]) {
    let (head, used) = frame::server_header(frame::OpCode::Control(control), payload.len());
    out.put_slice(&head[..used]);
    out.put_slice(payload);
}

/// The close frame a WebSocket client is sent when it is closed for `reason`, if any: the
/// client's own code echoed, or the code of what it did wrong.
pub fn close_frame_for(reason: &DisconnectReason) -> Option<Bytes> {
    let code = match reason {
        DisconnectReason::WsClosed(code) => *code,
        DisconnectReason::WsProtocol(e) => Some(e.code),
        _ => return None,
    };
    let mut out = BytesMut::new();
    match code {
        Some(code) => control_frame(&mut out, frame::Control::Close, &code.to_be_bytes()),
        None => control_frame(&mut out, frame::Control::Close, b""),
    }
    Some(out.freeze())
}

/// The close frame sent to every WebSocket client when the server shuts down.
pub fn going_away() -> Bytes {
    let mut out = BytesMut::new();
    control_frame(
        &mut out,
        frame::Control::Close,
        &close::GOING_AWAY.to_be_bytes(),
    );
    out.freeze()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Instant;

    use super::*;
    use crate::server::connection::{ReadBuffers, READ_FLOOR};
    use crate::server::log::Log;

    /// A flood of the smallest frames (empty text, six bytes each) is read no faster than the
    /// held budget allows: a read takes at most `READ_FLOOR` bytes of them when the budget is
    /// small, so one visit stops within a read of its budget.
    #[test]
    fn tiny_frames_are_read_within_the_held_budget() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut server = Stream::from(mio::net::TcpStream::from_std(server));
        // 6-byte masked empty text frames, 64 KiB of them.
        let frame = [0x81u8, 0x80, 1, 2, 3, 4];
        let flood: Vec<u8> = frame.iter().copied().cycle().take(6 * 10_922).collect();
        client.write_all(&flood).unwrap();
        let log = Log::new();
        let mut bufs = ReadBuffers::new(&log);
        let mut ws = WsState::new(1 << 20, Protocol::Line, "x", BytesMut::new());
        // Messages count 129 bytes or more here: the budget is about 775 of them. A read
        // takes no more frames than the budget left could count (about 4 KiB of them at
        // first), so the visit ends with at most one read's worth past it.
        let held_budget = 100_000;
        let now = Instant::now();
        let mut last_input = now;
        // The bytes may arrive in pieces: read until something was taken.
        while bufs.batch.is_empty() {
            let _ = ws
                .read(
                    &mut server,
                    &mut bufs,
                    0,
                    1 << 20,
                    held_budget,
                    &mut last_input,
                    now,
                )
                .unwrap();
        }
        let most = held_budget / log.held_for(1) + held_budget / log.held_for(FRAME_MIN + 8);
        assert!(
            bufs.batch.len() <= most + READ_FLOOR / FRAME_MIN,
            "one visit took {} messages",
            bufs.batch.len()
        );
    }
}
