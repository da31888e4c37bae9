//! A client's byte stream: its TCP socket, or that socket under TLS (`--tls-cert`).
//!
//! Everything the loop reads from or writes to a client goes through [`Stream`], so TLS applies
//! alike to TCP receivers, WebSocket receivers and HTTP side connections. A plain stream is a
//! `match` in front of the same system calls as before: no allocation, no copy.
//!
//! # Implementation notes
//!
//! TLS receivers cannot share bytes: each has its own ciphertext. What rustls holds per
//! connection is bounded: at most [`TLS_BUFFER_LIMIT`] of records to send (plaintext is taken
//! only while they fit, so a receiver that does not read pushes back on its cursor like a full
//! socket buffer), one record being received (about 16 KiB, rustls's own limit), and the
//! decrypted input not yet taken (at most 16 KiB, and taken at once by every read).
//!
//! What rustls still has to send is part of what a receiver is owed: a receiver whose cursor
//! is caught up but whose records have not all left is not caught up
//! ([`send_pending`](Stream::send_pending) says `false`, and it stays WRITABLE until they
//! have). Reading can make rustls want to write (the handshake, a key update): every read
//! sends what it can at once, and the caller wakes the receiver for the rest
//! ([`wants_write`](Stream::wants_write)).

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use bytes::BytesMut;
use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::{ServerConfig, ServerConnection};

use crate::sys;

/// Most bytes of TLS records waiting to be sent that one connection holds (rustls's buffer
/// limit); plaintext is taken from the log only while its records fit. 64 KiB: a few records
/// of 16 KiB, as much as a socket buffer takes at once from a fast reader, so a TLS receiver
/// is written in writes as large as a plain one.
pub const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// A client's socket, with its TLS session if the listener has one.
///
/// It has no file descriptor of its own to offer (no `AsRawFd`): a raw `read(2)` on a TLS
/// connection would take ciphertext for input, so every read must come through here (socket
/// options go through [`tcp`](Self::tcp)).
#[derive(Debug)]
pub enum Stream {
    /// Bytes go to the socket as they are.
    Plain(TcpStream),
    /// Bytes go through rustls (boxed: the session is large, plain streams stay small).
    Tls(Box<Tls>),
}

/// A socket and its TLS session.
#[derive(Debug)]
pub struct Tls {
    socket: TcpStream,
    session: ServerConnection,
}

/// A TLS failure (a bad handshake, a record that does not decrypt, a plain-text client on a
/// TLS port), as an `io::Error` so it travels the read and write paths; see
/// [`tls_error`].
#[derive(Debug)]
struct TlsFailure(rustls::Error);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TlsFailure {}

/// The TLS failure an `io::Error` carries, if it is one.
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsFailure>())
        .map(|f| &f.0)
}

impl From<TcpStream> for Stream {
    fn from(socket: TcpStream) -> Self {
        Stream::Plain(socket)
    }
}

impl Stream {
    /// `socket` as the server side of a new TLS session under `config`.
    pub fn tls(socket: TcpStream, config: &Arc<ServerConfig>) -> Result<Stream, rustls::Error> {
        let mut session = ServerConnection::new(Arc::clone(config))?;
        session.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(Stream::Tls(Box::new(Tls { socket, session })))
    }

    /// The TCP socket underneath (socket options, shutdown).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => &tls.socket,
        }
    }

    /// Reads what the client sent (plaintext) into the spare capacity of `buf`, at most `max`
    /// bytes, and extends `buf` by it, as [`sys::read_into`] does. `Ok(0)` is the end of the
    /// stream (under TLS: a close_notify, or the socket's end without one: a broadcast client
    /// that simply closes has said all it had to say). A TLS failure is an error that
    /// [`tls_error`] recognises.
    pub fn read_into(&mut self, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => sys::read_into(socket, buf, max),
            Stream::Tls(tls) => {
                // rustls hands plaintext out through `io::Read`, which wants initialised
                // bytes: zeroing the room costs little beside the decryption.
                let start = buf.len();
                let len = max.min(buf.capacity() - start);
                buf.resize(start + len, 0);
                let read = tls.read(&mut buf[start..]);
                buf.truncate(start + *read.as_ref().unwrap_or(&0));
                read
            }
        }
    }

    /// Whether bytes wait to be sent that the socket has not taken yet (TLS records; never for
    /// a plain stream).
    pub fn wants_write(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(tls) => tls.session.wants_write(),
        }
    }

    /// Sends what waits to be sent (see [`wants_write`](Self::wants_write)); `Ok(true)` once
    /// all has gone, `Ok(false)` if the socket is full (wait until it is writable).
    pub fn send_pending(&mut self) -> io::Result<bool> {
        match self {
            Stream::Plain(_) => Ok(true),
            Stream::Tls(tls) => tls.send(),
        }
    }

    /// Ends our sending side: under TLS a close_notify first (so the client can tell the end
    /// from a cut), then the TCP half-close. `Ok(false)` if what precedes the half-close could
    /// not all be sent yet: call again once the socket is writable.
    pub fn shut_write(&mut self) -> io::Result<bool> {
        if let Stream::Tls(tls) = self {
            tls.session.send_close_notify(); // once: rustls ignores a second
            if !tls.send()? {
                return Ok(false);
            }
        }
        self.tcp().shutdown(Shutdown::Write)?;
        Ok(true)
    }
}

impl Tls {
    /// Plaintext into `out`: what rustls decrypted already, else what the socket brings.
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.session.reader().read(out) {
                // Ok(0): the client's close_notify.
                Ok(n) => return Ok(n),
                // The socket ended without a close_notify (after all the plaintext before it).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Nothing decrypted is left: more records from the socket. (Its end is seen by
            // the reader above once rustls has processed everything before it.)
            let read = self.session.read_tls(&mut self.socket);
            if let Err(e) = &read {
                if e.kind() == io::ErrorKind::WouldBlock {
                    // Whatever the last records made rustls want to send goes now.
                    self.send()?;
                }
            }
            read?;
            let processed = self.session.process_new_packets();
            // The handshake's answers, a key update, or the alert that tells the client why it
            // is being closed: sent at once, as far as the socket takes them.
            let sent = self.send();
            if let Err(e) = processed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, TlsFailure(e)));
            }
            sent?;
        }
    }

    /// Writes TLS records to the socket until none is left (`true`) or it is full (`false`).
    fn send(&mut self) -> io::Result<bool> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut self.socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Plaintext into the session as far as its records fit under [`TLS_BUFFER_LIMIT`], sent
    /// on as far as the socket takes them. `WouldBlock` only when nothing was taken.
    fn write_with(
        &mut self,
        put: impl FnOnce(&mut rustls::Writer<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        // Room first: records from before go out before new ones are made.
        self.send()?;
        let taken = put(&mut self.session.writer())?;
        self.send()?;
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }
}

impl Read for Stream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(out),
            Stream::Tls(tls) => tls.read(out),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write(buf),
            Stream::Tls(_) if buf.is_empty() => Ok(0),
            Stream::Tls(tls) => tls.write_with(|w| w.write(buf)),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write_vectored(bufs),
            Stream::Tls(tls) => {
                // A flush offers up to megabytes in a thousand slices; rustls takes at most
                // its buffer limit, and copies the slice list it is given: offer no more.
                let (mut n, mut offered) = (0, 0);
                while n < bufs.len() && offered < TLS_BUFFER_LIMIT {
                    offered += bufs[n].len();
                    n += 1;
                }
                if offered == 0 {
                    return Ok(0);
                }
                tls.write_with(|w| w.write_vectored(&bufs[..n]))
            }
        }
    }

    /// Sends what TLS holds; `WouldBlock` if the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        match self.send_pending()? {
            true => Ok(()),
            false => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Registered with the poll as its socket is.
impl Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.register(registry, token, interest),
            Stream::Tls(tls) => tls.socket.register(registry, token, interest),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.reregister(registry, token, interest),
            Stream::Tls(tls) => tls.socket.reregister(registry, token, interest),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.deregister(registry),
            Stream::Tls(tls) => tls.socket.deregister(registry),
        }
    }
}

#[cfg(test)]
mod tests;
