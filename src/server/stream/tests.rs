//! A TLS receiver over a real loopback socket whose buffers are small, so that rustls holds
//! records the socket has not taken: what [`Connection::flush`] must still count as owed.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::Stream;
use crate::protocol::{Decoder, Protocol};
use crate::server::connection::{Connection, Transport};
use crate::server::cursor::Flushed;
use crate::server::log::Log;

/// A server `Stream` and a client session over a loopback connection, handshake done. The
/// server's send buffer and the client's receive buffer are as small as the kernel allows.
fn pair() -> (Stream, ClientConnection, TcpStream) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    client.set_recv_buffer_size(4096).unwrap();
    client
        .connect(&listener.local_addr().unwrap().into())
        .unwrap();
    let client: TcpStream = client.into();
    client.set_nonblocking(true).unwrap();
    let (server, _) = listener.accept().unwrap();
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .unwrap();
    server.set_nonblocking(true).unwrap();
    let mut stream = Stream::tls(
        mio::net::TcpStream::from_std(server),
        &Arc::new(server_config),
    )
    .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut session = ClientConnection::new(Arc::new(client_config), name).unwrap();
    let mut client = client;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut scratch = bytes::BytesMut::with_capacity(4096);
    let server_handshaking = |s: &Stream| matches!(s, Stream::Tls(t) if t.session.is_handshaking());
    while session.is_handshaking() || server_handshaking(&stream) || stream.wants_write() {
        assert!(Instant::now() < deadline, "no handshake");
        if session.wants_write() {
            let _ = session.write_tls(&mut client);
        }
        match stream.read_into(&mut scratch, 4096) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("server side of the handshake: {e}"),
        }
        if session.read_tls(&mut client).is_ok() {
            session.process_new_packets().unwrap();
        }
    }
    (stream, session, client)
}

/// Reads what the client was sent, until `n` bytes or nothing more comes for a moment.
fn client_reads(session: &mut ClientConnection, client: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < n && Instant::now() < deadline {
        match session.read_tls(client) {
            Ok(_) => {
                session.process_new_packets().unwrap();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
            Err(e) => panic!("client read: {e}"),
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match session.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("client plaintext: {e}"),
            }
        }
    }
    got
}

/// A message that rustls takes whole while records from before still wait for the socket:
/// the cursor is caught up, the records are not all out, and the receiver is not caught up
/// (nor finished) until they are.
#[test]
fn a_receiver_whose_records_wait_for_the_socket_is_not_caught_up() {
    let (stream, mut session, mut client) = pair();
    let mut conn = Connection::new(
        stream,
        "127.0.0.1:1".parse().unwrap(),
        1,
        Decoder::new(Protocol::Line, 1 << 20),
        Transport::Tcp,
        Instant::now(),
    );
    // Filler written past the cursor, until the socket and the session are both full.
    let filler = vec![b'f'; 16 * 1024];
    let mut filled = 0;
    loop {
        match conn.socket.write(&filler) {
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    assert!(conn.socket.wants_write());
    // The client takes a little: the socket has room for some records, not all.
    let mut got = client_reads(&mut session, &mut client, 8 * 1024);
    let mut log = Log::new();
    let message = b"the message\n".to_vec();
    log.append(Bytes::from(message.clone()), 2);
    let frames = Log::new();
    let mut sent = 0;
    let flushed = conn.flush(&log, &frames, true, &mut sent).unwrap();
    assert_eq!(sent, message.len() as u64, "the session took the message");
    assert!(!conn.cursor.is_behind(&log), "the cursor is caught up");
    assert!(conn.socket.wants_write(), "records are left for the socket");
    assert_eq!(flushed, Flushed::Blocked, "records left: not caught up");
    assert!(
        conn.wants_write(&log),
        "a flush still has something to write"
    );
    conn.eof_at = Some(log.end_seq());
    assert!(!conn.is_finished(), "not finished while records are left");
    // The client reads on; flushing again sends the rest, and then it is caught up.
    let total = filled + message.len();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        got.extend(client_reads(&mut session, &mut client, total));
        let flushed = conn.flush(&log, &frames, true, &mut sent).unwrap();
        if flushed == Flushed::CaughtUp && got.len() == total {
            break;
        }
        assert!(Instant::now() < deadline, "got {} of {total}", got.len());
    }
    assert!(got[filled..] == message[..]);
    assert!(conn.is_finished());
}
