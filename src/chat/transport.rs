//! The chat's connection as two halves, one per thread: a [`Sender`] for stdin's lines and a
//! [`Receiver`] for the server's messages, over plain TCP or TLS.
//!
//! # Implementation notes
//! `rustls::StreamOwned` is one object that both reads and writes, so it cannot be split
//! between a thread blocked reading and one writing. Here the two threads share the
//! `ClientConnection` behind a mutex, each with its own clone of the socket: the receiver waits
//! on the socket *without* the lock, then takes it to decrypt; the sender takes it to encrypt
//! and write. TLS records leave in order because every write to the socket happens under the
//! lock.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection};

/// Encrypted bytes read from the socket at a time: at most a TLS record and a bit, so what
/// they decrypt to always fits rustls's buffer of received plaintext.
const RAW_BLOCK: usize = 16 * 1024;

type Shared = Arc<Mutex<ClientConnection>>;

/// Connects the halves over `stream`; with `tls`, finishes the handshake first, so a server
/// with the wrong certificate fails here, before anything is sent.
pub fn split(
    stream: TcpStream,
    tls: Option<(Arc<ClientConfig>, rustls::pki_types::ServerName<'static>)>,
) -> io::Result<(Sender, Receiver)> {
    let shared = match tls {
        None => None,
        Some((config, name)) => {
            let mut conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
            let mut socket = &stream;
            while conn.is_handshaking() {
                conn.complete_io(&mut socket)?;
            }
            Some(Arc::new(Mutex::new(conn)))
        }
    };
    let sender = Sender {
        socket: stream.try_clone()?,
        tls: shared.clone(),
    };
    let receiver = Receiver {
        socket: stream,
        tls: shared.map(|conn| TlsInput {
            conn,
            raw: vec![0; RAW_BLOCK],
            unfed: 0..0,
        }),
    };
    Ok((sender, receiver))
}

fn lock(conn: &Shared) -> MutexGuard<'_, ClientConnection> {
    // A thread that panicked holding the lock left nothing half-done that matters here.
    conn.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes what rustls has to send (records, alerts) to the socket, blocking.
fn flush(conn: &mut ClientConnection, mut socket: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(&mut socket)?;
    }
    Ok(())
}

/// The half that sends.
pub struct Sender {
    socket: TcpStream,
    tls: Option<Shared>,
}

impl Sender {
    /// Sends `bytes`, blocking until the socket took them.
    pub fn send(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return (&self.socket).write_all(bytes);
        };
        let mut conn = lock(tls);
        while !bytes.is_empty() {
            // rustls takes plaintext up to its buffer limit; flushing makes room for more.
            let n = conn.writer().write(bytes)?;
            bytes = &bytes[n..];
            flush(&mut conn, &self.socket)?;
        }
        Ok(())
    }

    /// Says nothing more will be sent (TLS `close_notify`, then a half-close), and lets the
    /// receiver wait at most `linger` for what the server still owes.
    pub fn finish(&mut self, linger: Duration) -> io::Result<()> {
        if let Some(tls) = &self.tls {
            let mut conn = lock(tls);
            conn.send_close_notify();
            flush(&mut conn, &self.socket)?;
        }
        self.socket.shutdown(Shutdown::Write)?;
        // The receiver shares this socket: stop it from waiting forever on a server that stays
        // open.
        self.socket.set_read_timeout(Some(linger))
    }
}

/// The half that receives: plaintext, as [`Read`].
pub struct Receiver {
    socket: TcpStream,
    tls: Option<TlsInput>,
}

struct TlsInput {
    conn: Shared,
    /// Encrypted bytes read from the socket...
    raw: Vec<u8>,
    /// ...of which these rustls has not taken yet.
    unfed: std::ops::Range<usize>,
}

impl Read for Receiver {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &mut self.tls else {
            return (&self.socket).read(buf);
        };
        loop {
            {
                let mut conn = lock(&tls.conn);
                match conn.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    done => return done,
                }
                if !tls.unfed.is_empty() {
                    let mut unfed = &tls.raw[tls.unfed.clone()];
                    tls.unfed.start += conn.read_tls(&mut unfed)?;
                    conn.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    // Alerts or a key update to answer.
                    flush(&mut conn, &self.socket)?;
                    continue;
                }
            }
            // Nothing to decrypt: wait for the server without holding the sender up.
            let n = (&self.socket).read(&mut tls.raw)?;
            if n == 0 {
                // The server closed the connection, with or without a close_notify: either
                // way nothing more will come, and nothing decrypted is left.
                return Ok(0);
            }
            tls.unfed = 0..n;
        }
    }
}
