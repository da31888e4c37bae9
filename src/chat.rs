//! `mob chat`: an interactive client. Lines typed on stdin go to the server; every message
//! received is printed on stdout, one per line. Over plain TCP or TLS (`transport.rs`).

mod transport;

use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;

use crate::client::{tls, Access};
use crate::protocol::{Decoder, Protocol};
use transport::{Receiver, Sender};

/// Largest message the client will print; a bigger one means the stream is not what we think.
const MAX_MESSAGE: usize = 64 << 20;

/// After stdin ends, how long to wait for the server to send what it owes us and close.
const LINGER: Duration = Duration::from_secs(2);

/// Connects to `addr` (over TLS and sending the token first, as `access` says) and chats
/// until stdin ends (then waits briefly for the server to send what it owes and close) or the
/// server closes the connection.
pub fn run(addr: &str, protocol: Protocol, access: &Access) -> anyhow::Result<()> {
    if protocol == Protocol::Raw {
        bail!("mob chat speaks line or frame; raw has no message boundaries to print");
    }
    let stream = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let tls = match &access.tls {
        Some(config) => Some((Arc::clone(config), tls::server_name(addr)?)),
        None => None,
    };
    let (mut sender, receiver) =
        transport::split(stream, tls).with_context(|| format!("TLS handshake with {addr}"))?;
    if let Some(token) = &access.token {
        sender
            .send(&token.message(protocol))
            .context("cannot send the token")?;
    }
    thread::spawn(move || {
        if let Err(e) = send_stdin(sender, protocol) {
            tracing::warn!("sending stopped: {e}");
        }
    });
    receive(receiver, protocol)
}

/// Sends each stdin line as one message; at the end of stdin, closes the sending side.
fn send_stdin(mut sender: Sender, protocol: Protocol) -> io::Result<()> {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    let mut wire = BytesMut::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let payload = line.strip_suffix(b"\n").unwrap_or(&line);
        wire.clear();
        protocol.encode(payload, &mut wire);
        sender.send(&wire)?;
    }
    sender.finish(LINGER)
}

/// Prints every message received until the server closes (or stops sending after our EOF).
fn receive(mut stream: Receiver, protocol: Protocol) -> anyhow::Result<()> {
    let mut decoder = Decoder::new(protocol, MAX_MESSAGE);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e).context("connection lost"),
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(msg) = decoder
            .decode(&mut buf)
            .context("bad message from server")?
        {
            if !print(&mut out, protocol.payload(&msg))? {
                return Ok(());
            }
        }
        if !flush(&mut out)? {
            return Ok(());
        }
    }
    Ok(())
}

/// Writes one message and its newline; `false` when stdout was closed (a clean exit, not an
/// error, as in `mob chat | head -1`).
fn print(out: &mut impl Write, payload: &[u8]) -> anyhow::Result<bool> {
    match out.write_all(payload).and_then(|_| out.write_all(b"\n")) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

fn flush(out: &mut impl Write) -> anyhow::Result<bool> {
    match out.flush() {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}
