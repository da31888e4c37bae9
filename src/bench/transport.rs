//! How a bench connection's bytes travel: as they are, or through TLS. Nonblocking, driven by
//! the bench's mio loop; the rest of the bench sees plaintext only.
//!
//! # Implementation notes
//! The loop registers every socket for both readable and writable edges once, so no interest
//! changes as `wants_write()` does: a write that stops at `WouldBlock` is resumed by the next
//! writable edge, and what reading makes rustls want to send (handshake messages, alerts) is
//! written right after reading.

use std::io::{self, Read, Write};

use bytes::{Buf, BytesMut};
use mio::net::TcpStream;
use rustls::ClientConnection;

use crate::sys;

pub enum Transport {
    Plain,
    /// Boxed: a connection's TLS state is a few KiB, and most benches have none.
    Tls(Box<ClientConnection>),
}

impl Transport {
    /// The TLS handshake is still going on: the connection is not ready to be measured.
    pub fn is_handshaking(&self) -> bool {
        match self {
            Transport::Plain => false,
            Transport::Tls(conn) => conn.is_handshaking(),
        }
    }

    /// Something is waiting to be written that `out` does not show (TLS records).
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain => false,
            Transport::Tls(conn) => conn.wants_write(),
        }
    }

    /// Sends as much of `out` as the socket takes now, advancing `out` past it. `Ok` when
    /// everything went or the socket would block; `Err` when the connection failed.
    pub fn write(&mut self, socket: &mut TcpStream, out: &mut BytesMut) -> io::Result<()> {
        match self {
            Transport::Plain => {
                while !out.is_empty() {
                    match socket.write(out) {
                        Ok(n) => out.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return ok_if_blocked(e),
                    }
                }
                Ok(())
            }
            Transport::Tls(conn) => write_tls(conn, socket, out),
        }
    }

    /// Appends what arrived to `buf` (plaintext): like `read(2)`, `Ok(0)` at the end of the
    /// stream, `WouldBlock` when there is nothing more now.
    pub fn read(&mut self, socket: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
        let conn = match self {
            Transport::Plain => return sys::read_into(socket, buf, usize::MAX),
            Transport::Tls(conn) => conn,
        };
        loop {
            let at_end = conn.read_tls(socket)? == 0;
            let state = conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // Handshake messages or alerts to answer with.
            write_tls(conn, socket, &mut BytesMut::new())?;
            // Taken whole, so rustls holds no plaintext between calls and the next call may
            // start at the socket.
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let start = buf.len();
                buf.resize(start + n, 0);
                conn.reader().read_exact(&mut buf[start..])?;
                return Ok(n);
            }
            // The end, with a close_notify or without one (TCP closed): either way the end.
            if at_end || state.peer_has_closed() {
                return Ok(0);
            }
        }
    }

    /// Before a half-close: TLS says it too (`close_notify`), so the server sees a clean end.
    pub fn close_notify(&mut self, socket: &mut TcpStream) {
        if let Transport::Tls(conn) = self {
            conn.send_close_notify();
            let _ = write_tls(conn, socket, &mut BytesMut::new());
        }
    }
}

/// [`Transport::write`] through TLS.
fn write_tls(
    conn: &mut ClientConnection,
    socket: &mut TcpStream,
    out: &mut BytesMut,
) -> io::Result<()> {
    loop {
        // rustls takes plaintext up to its buffer limit (also while handshaking, to send when
        // the handshake is done); that much is then written out, and the loop takes more.
        while !out.is_empty() {
            let n = conn.writer().write(out)?;
            if n == 0 {
                break;
            }
            out.advance(n);
        }
        if !conn.wants_write() {
            return Ok(());
        }
        match conn.write_tls(socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return ok_if_blocked(e),
        }
    }
}

/// `WouldBlock` is no failure: the next writable edge resumes the write.
fn ok_if_blocked(e: io::Error) -> io::Result<()> {
    match e.kind() {
        io::ErrorKind::WouldBlock => Ok(()),
        _ => Err(e),
    }
}
