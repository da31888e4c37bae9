//! `--tls-cert` / `--tls-key`: TLS on the listener and on the `--http` listener. Certificates
//! are made in the test (rcgen); the clients are rustls (blocking), tungstenite over rustls,
//! and one nobody here wrote (Python's `ssl`).

mod util;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::Message;

use util::{Server, DEADLINE};

const MIB: usize = 1 << 20;

/// A throwaway certificate for `localhost` and 127.0.0.1, its key, and the files holding them.
struct Cert {
    dir: PathBuf,
    der: CertificateDer<'static>,
    key_pem: String,
}

impl Cert {
    fn new(name: &str) -> Cert {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("make a certificate");
        let dir = std::env::temp_dir().join(format!("mob-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
        let key_pem = made.signing_key.serialize_pem();
        std::fs::write(dir.join("key.pem"), &key_pem).unwrap();
        Cert {
            dir,
            der: made.cert.der().clone(),
            key_pem,
        }
    }

    fn cert_path(&self) -> String {
        self.dir.join("cert.pem").display().to_string()
    }

    fn key_path(&self) -> String {
        self.dir.join("key.pem").display().to_string()
    }

    /// Writes `contents` to a file of this certificate's directory; returns its path.
    fn file(&self, name: &str, contents: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    }

    /// `mob serve` over TLS with this certificate, and `args`.
    /// (Its log says at debug level when a client has joined: see [`TlsClient::join`].)
    fn serve(&self, args: &[&str]) -> Server {
        let (cert, key) = (self.cert_path(), self.key_path());
        let tls = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
        let mut cmd = util::mob();
        cmd.env("RUST_LOG", "info,rustls=off,mob::server::event_loop=debug");
        Server::start_with(cmd, &[&tls[..], args].concat())
    }

    /// A client configuration that trusts this certificate only.
    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking rustls client; every read waits at most [`DEADLINE`].
struct TlsClient {
    tls: StreamOwned<ClientConnection, TcpStream>,
    /// Bytes read but not yet consumed.
    pending: Vec<u8>,
}

impl TlsClient {
    fn connect(cert: &Cert, addr: SocketAddr) -> TlsClient {
        TlsClient::over(cert, TcpStream::connect(addr).expect("connect"))
    }

    /// Connected to `server`'s TCP port and a receiver: a TLS client joins once the server
    /// has its handshake's last message, a moment after the client's handshake is done (on
    /// any loop), so this waits for the server's word.
    fn join(cert: &Cert, server: &Server) -> TlsClient {
        TlsClient::connect(cert, server.addr).joined(server)
    }

    /// As [`join`](Self::join), with a 4 KiB receive buffer.
    fn join_small_buffer(cert: &Cert, server: &Server) -> TlsClient {
        TlsClient::connect_small_buffer(cert, server.addr).joined(server)
    }

    fn joined(self, server: &Server) -> TlsClient {
        // The whole field, so port 4000 does not match 40001.
        let peer = format!("joined peer={} event_loop=", self.local_addr());
        server.log.wait_for(&[&peer]);
        self
    }

    /// With a 4 KiB receive buffer, so that the server's writes stop part way.
    fn connect_small_buffer(cert: &Cert, addr: SocketAddr) -> TlsClient {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&addr.into()).expect("connect");
        TlsClient::over(cert, socket.into())
    }

    /// The TLS session over `socket`, its handshake completed before anything is sent: the
    /// server must answer a handshake with nothing to relay.
    fn over(cert: &Cert, socket: TcpStream) -> TlsClient {
        socket.set_nodelay(true).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(cert.client_config(), name).unwrap();
        let mut tls = StreamOwned::new(conn, socket);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .expect("TLS handshake within the deadline");
        }
        TlsClient {
            tls,
            pending: Vec::new(),
        }
    }

    fn local_addr(&self) -> SocketAddr {
        self.tls.sock.local_addr().unwrap()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).expect("send");
        self.tls.flush().expect("send");
    }

    /// Reads more into `pending`; `Ok(0)` at a clean end (close_notify).
    fn fill(&mut self) -> io::Result<usize> {
        let mut buf = [0u8; 64 * 1024];
        let n = self.tls.read(&mut buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        while self.pending.len() < n {
            assert!(Instant::now() < deadline, "{n} bytes not read in time");
            match self.fill() {
                Ok(0) => panic!("end of stream after {} of {n} bytes", self.pending.len()),
                Ok(_) => {}
                Err(e) => panic!("reading after {} of {n} bytes: {e}", self.pending.len()),
            }
        }
        self.pending.drain(..n).collect()
    }

    fn expect(&mut self, expected: &[u8]) {
        let got = self.read_exact(expected.len());
        assert!(
            got == expected,
            "expected {:?}, got {:?}",
            String::from_utf8_lossy(&expected[..expected.len().min(200)]),
            String::from_utf8_lossy(&got[..got.len().min(200)])
        );
    }

    fn read_line(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                return self.pending.drain(..=i).collect();
            }
            assert!(Instant::now() < deadline, "no line in time");
            match self.fill() {
                Ok(0) => panic!("end of stream before a whole line"),
                Ok(_) => {}
                Err(e) => panic!("reading a line: {e}"),
            }
        }
    }

    /// Everything up to the server's clean end (its close_notify, then end of stream); fails
    /// on an end without close_notify, which could hide a cut.
    fn read_to_clean_end(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "no end of stream in time");
            match self.fill() {
                Ok(0) => return std::mem::take(&mut self.pending),
                Ok(_) => {}
                Err(e) => panic!(
                    "the stream ended without close_notify after {} bytes: {e}",
                    self.pending.len()
                ),
            }
        }
    }
}

fn numbered_lines(from: &str, total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + 64);
    let mut i = 0;
    while out.len() < total {
        out.extend_from_slice(format!("{from} {i:08} padding to make it longer\n").as_bytes());
        i += 1;
    }
    out
}

#[test]
fn tls_line_clients_relay_to_each_other_in_order() {
    let cert = Cert::new("relay");
    let server = cert.serve(&[]);
    let mut a = TlsClient::join(&cert, &server);
    let mut b = TlsClient::join(&cert, &server);
    a.send(b"ready\n");
    b.expect(b"ready\n");
    a.expect(b"ready\n");
    // Each sends 64 KiB of numbered lines while the other does too.
    let (a_lines, b_lines) = (
        numbered_lines("a", 64 * 1024),
        numbered_lines("b", 64 * 1024),
    );
    let total = a_lines.len() + b_lines.len();
    a.send(&a_lines);
    b.send(&b_lines);
    let (got_a, got_b) = (a.read_exact(total), b.read_exact(total));
    assert!(got_a == got_b, "the two clients saw different orders");
    for (from, sent) in [("a ", &a_lines), ("b ", &b_lines)] {
        let theirs: Vec<u8> = got_a
            .split_inclusive(|&c| c == b'\n')
            .filter(|l| l.starts_with(from.as_bytes()))
            .flatten()
            .copied()
            .collect();
        assert!(
            theirs == *sent,
            "{from}'s lines arrived out of order or not all"
        );
    }
}

/// tungstenite's client over a rustls stream to `--http`'s `/ws` (wss).
fn wss(
    cert: &Cert,
    http: SocketAddr,
) -> tungstenite::WebSocket<StreamOwned<ClientConnection, TcpStream>> {
    let tls = TlsClient::connect(cert, http).tls;
    let url = format!("ws://localhost:{}/ws", http.port());
    let (ws, response) = tungstenite::client(url.as_str(), tls).expect("upgrade over TLS");
    assert_eq!(response.status(), 101);
    ws
}

#[test]
fn tls_and_wss_clients_share_one_order() {
    let cert = Cert::new("wss");
    let server = cert.serve(&["--http", "127.0.0.1:0"]);
    let mut line = TlsClient::join(&cert, &server);
    let mut ws = wss(&cert, server.http_addr());
    ws.send(Message::text("hello from wss")).unwrap();
    line.expect(b"hello from wss\n");
    // Both send 200 messages each without waiting; both must see one order.
    for i in 0..200 {
        line.send(format!("line {i}\n").as_bytes());
        ws.send(Message::text(format!("ws {i}"))).unwrap();
    }
    let mut from_ws = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while from_ws.len() < 401 {
        assert!(
            Instant::now() < deadline,
            "the wss client was not sent all in time"
        );
        match ws.read().expect("read over wss") {
            Message::Text(t) => from_ws.push(t.to_string()),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(from_ws[0], "hello from wss");
    let from_line: Vec<String> = (0..400)
        .map(|_| {
            let l = line.read_line();
            String::from_utf8(l[..l.len() - 1].to_vec()).unwrap()
        })
        .collect();
    assert_eq!(
        from_line,
        from_ws[1..],
        "TLS and wss clients saw different orders"
    );
    for who in ["line", "ws"] {
        let theirs: Vec<&String> = from_line.iter().filter(|m| m.starts_with(who)).collect();
        let expected: Vec<String> = (0..200).map(|i| format!("{who} {i}")).collect();
        assert!(
            theirs.iter().copied().eq(expected.iter()),
            "{who}'s messages out of order"
        );
    }
    // The page is served over https too.
    let mut page = TlsClient::connect(&cert, server.http_addr());
    page.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    // Answered, then ended with close_notify before the half-close.
    let answer = String::from_utf8_lossy(&page.read_to_clean_end()).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.trim_end().ends_with("</html>"),
        "the page was cut short"
    );
}

#[test]
fn a_large_burst_reaches_a_tls_receiver_whole() {
    let cert = Cert::new("burst");
    // 16 MiB of short lines count about 70 MiB against --max-pending (bookkeeping).
    let server = cert.serve(&["--no-echo-self", "--max-pending", "256MiB"]);
    // Its 4 KiB buffer, and not reading until the whole burst was sent, fill the server's
    // socket: writes stop part way through rustls's records, and the last records wait for
    // the socket after the receiver's cursor has caught up.
    let mut receiver = TlsClient::join_small_buffer(&cert, &server);
    let mut sender = TlsClient::join(&cert, &server);
    sender.send(b"ready\n");
    receiver.expect(b"ready\n");
    let burst = numbered_lines("burst", 16 * MIB);
    sender.send(&burst);
    let got = receiver.read_exact(burst.len());
    assert!(got == burst, "the burst arrived changed or out of order");
}

#[test]
fn a_plain_text_client_on_a_tls_port_is_closed_and_logged_naming_it() {
    let cert = Cert::new("plain");
    // A server each: a second failure within a second would be counted, not logged.
    for http in [false, true] {
        let server = cert.serve(&["--http", "127.0.0.1:0"]);
        let addr = if http {
            server.http_addr()
        } else {
            server.addr
        };
        let mut plain = TcpStream::connect(addr).unwrap();
        plain.set_read_timeout(Some(DEADLINE)).unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\nhello\n")
            .unwrap();
        let peer = plain.local_addr().unwrap().to_string();
        // The server closes it (after a TLS alert): end of stream or a reset, never silence.
        let mut sink = Vec::new();
        match plain.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the plain-text client was not closed: {e}"),
        }
        let line = server.log.wait_for(&["TLS: ", &peer]);
        assert!(line.contains("disconnected"), "{line}");
        // TLS clients are still served.
        let mut ok = TlsClient::join(&cert, &server);
        ok.send(b"still here\n");
        ok.expect(b"still here\n");
    }
}

/// Runs `mob serve ARGS` that must fail at start; returns its stderr.
fn fails_to_start(args: &[&str]) -> String {
    let mut child = util::mob()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = util::wait_exit(&mut child, DEADLINE);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let Some(status) = status else {
        let _ = child.kill();
        panic!("mob serve {args:?} did not exit; stderr: {stderr}");
    };
    assert!(
        !status.success(),
        "mob serve {args:?} started; stderr: {stderr}"
    );
    stderr
}

#[test]
fn bad_certificate_or_key_files_are_refused_at_start_naming_the_file() {
    let cert = Cert::new("bad");
    let (good_cert, good_key) = (cert.cert_path(), cert.key_path());
    let other = Cert::new("other");
    let cases = [
        (
            "/nonexistent/cert.pem".to_string(),
            good_key.clone(),
            "/nonexistent/cert.pem",
        ),
        (
            cert.file("garbage-cert.pem", "not a certificate\n"),
            good_key.clone(),
            "garbage-cert.pem",
        ),
        (
            cert.file("empty-cert.pem", ""),
            good_key.clone(),
            "empty-cert.pem",
        ),
        (
            good_cert.clone(),
            cert.file("empty-key.pem", ""),
            "empty-key.pem",
        ),
        (
            good_cert.clone(),
            "/nonexistent/key.pem".to_string(),
            "/nonexistent/key.pem",
        ),
        // A certificate's PEM where the key should be.
        (
            good_cert.clone(),
            cert.file(
                "cert-as-key.pem",
                &std::fs::read_to_string(&good_cert).unwrap(),
            ),
            "cert-as-key.pem",
        ),
        // Someone else's key.
        (
            good_cert.clone(),
            cert.file("other-key.pem", &other.key_pem),
            "other-key.pem",
        ),
    ];
    for (c, k, named) in cases {
        let stderr = fails_to_start(&["--tls-cert", &c, "--tls-key", &k]);
        assert!(
            stderr.contains(named),
            "the error does not name {named}: {stderr}"
        );
    }
    // Both flags or neither.
    let stderr = fails_to_start(&["--tls-cert", &good_cert]);
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let stderr = fails_to_start(&["--tls-key", &good_key]);
    assert!(stderr.contains("--tls-cert"), "{stderr}");
}

#[test]
fn tls_receivers_that_never_read_are_cut_as_slow_consumers_and_memory_stays_bounded() {
    let cert = Cert::new("slow");
    let server = cert.serve(&["--max-pending", "1MiB", "--no-echo-self"]);
    // Each would take up to the whole log into its TLS session before its socket is seen to
    // be full, if the server took plaintext into sessions without bound: 40 of them, over
    // 40 MiB. Bounded, each holds at most 64 KiB of records.
    let stalled: Vec<TlsClient> = (0..40)
        .map(|_| TlsClient::join_small_buffer(&cert, &server))
        .collect();
    let mut sender = TlsClient::join(&cert, &server);
    let chunk = numbered_lines("flood", MIB);
    for _ in 0..64 {
        sender.send(&chunk);
    }
    // One line names the first; the rest within the second are counted, not listed.
    let peers: Vec<String> = stalled.iter().map(|c| c.local_addr().to_string()).collect();
    let line = server.log.wait_for(&["disconnected: slow consumer"]);
    assert!(
        peers.iter().any(|p| line.contains(p.as_str())),
        "{line} names none of the stalled clients"
    );
    let peak = server.peak_rss();
    assert!(
        peak < 32 * MIB as u64,
        "peak RSS {} MiB with 40 stalled TLS receivers and --max-pending 1MiB",
        peak / MIB as u64
    );
    drop(stalled);
}

#[test]
fn slow_tls_receivers_hold_at_most_64_kib_of_ciphertext_each() {
    let cert = Cert::new("held");
    let server = cert.serve(&["--max-pending", "64MiB", "--no-echo-self"]);
    let mut slow: Vec<TlsClient> = (0..20)
        .map(|_| TlsClient::join_small_buffer(&cert, &server))
        .collect();
    let mut reader = TlsClient::join(&cert, &server);
    let mut sender = TlsClient::join(&cert, &server);
    // 8 MiB of 1 KiB lines; the reader's copy says the server has it all in its log.
    let line = |i: usize| format!("{i:08} {}\n", "x".repeat(1014)).into_bytes();
    let burst: Vec<u8> = (0..8 * 1024).flat_map(line).collect();
    let sent = burst.clone();
    // The sender is kept open: closing it with input unread (its session tickets) would
    // be a reset, which can destroy what the server has not read yet.
    let writer = thread::spawn(move || {
        sender.send(&sent);
        sender
    });
    reader.expect(&burst);
    let _sender = writer.join().unwrap();
    // Each slow receiver now takes half (more than its socket held), so the server writes
    // it again: if it took plaintext into a session without bound, each would then hold the
    // rest of the log (4 MiB) as ciphertext of its own.
    let half = burst.len() / 2;
    for c in &mut slow {
        c.expect(&burst[..half]);
    }
    let peak = server.peak_rss();
    // About 14 MiB here; 47 MiB when sessions took plaintext without bound.
    assert!(
        peak < 32 * MIB as u64,
        "peak RSS {} MiB: 20 slow TLS receivers of an 8 MiB log held more than their 64 KiB",
        peak / MIB as u64
    );
    for c in &mut slow {
        c.expect(&burst[half..]);
    }
}

#[test]
fn shutdown_delivers_everything_queued_to_a_tls_client_then_closes_cleanly() {
    let cert = Cert::new("shutdown");
    let mut server = cert.serve(&["--max-pending", "64MiB", "--no-echo-self"]);
    let mut stalled = TlsClient::join_small_buffer(&cert, &server);
    let mut reader = TlsClient::join(&cert, &server);
    let mut publisher = TlsClient::join(&cert, &server);
    publisher.send(b"ready\n");
    stalled.expect(b"ready\n");
    reader.expect(b"ready\n");
    let lines = numbered_lines("queued", 8 * MIB);
    let sent = lines.clone();
    let writer = thread::spawn(move || {
        publisher.send(&sent);
        publisher
    });
    // The reader's copy says the server has it all: the stalled client's waits in its log.
    reader.expect(&lines);
    let publisher = writer.join().unwrap();
    server.signal(libc::SIGTERM);
    server.log.wait_for(&["shutting down (SIGTERM)"]);
    drop(publisher);
    let got = stalled.read_to_clean_end();
    assert!(
        got == lines,
        "the stalled TLS client did not get all that was queued"
    );
    assert!(reader.read_to_clean_end().is_empty());
    drop((stalled, reader));
    assert!(server.wait_exit(DEADLINE).success());
}

/// One client nobody here wrote: Python's `ssl` module sends a line and reads it back (and a
/// rustls client sees it too).
#[test]
fn a_python_ssl_client_is_served() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import ssl"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: python3 with its ssl module is not installed");
        return;
    }
    let cert = Cert::new("python");
    let server = cert.serve(&[]);
    let mut watcher = TlsClient::join(&cert, &server);
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
# The throwaway certificate is its own issuer, not a CA: strict X.509 checks would refuse it.
ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
with socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=20) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"from python\n")
        got = b""
        while not got.endswith(b"\n"):
            more = s.recv(4096)
            if not more:
                break
            got += more
        print(got.decode().strip(), s.version())
"#;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &cert.cert_path(),
            &server.addr.port().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    watcher.expect(b"from python\n");
    let status = util::wait_exit(&mut child, DEADLINE).expect("python exits in time");
    let mut out = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "python failed: {err}");
    assert!(
        out.starts_with("from python TLSv1."),
        "python printed {out:?} ({err})"
    );
}

#[test]
fn tls_clients_present_the_token_and_mob_bench_speaks_tls_to_mob() {
    let cert = Cert::new("token");
    let token = cert.file("token", "tls token\n");
    let server = cert.serve(&["--auth-token-file", &token, "--no-echo-self"]);
    let mut a = TlsClient::connect(&cert, server.addr);
    a.send(b"tls token\na in\n");
    let mut a = a.joined(&server);
    let mut b = TlsClient::connect(&cert, server.addr);
    // The token split over records, then a line in the same record as its end.
    b.send(b"tls ");
    b.send(b"token\nb in\n");
    a.expect(b"b in\n");
    // A wrong token over TLS is refused like one in the clear.
    let mut wrong = TlsClient::connect(&cert, server.addr);
    wrong.send(b"not it\n");
    server.log.wait_for(&[
        &format!("peer={}", wrong.local_addr()),
        "the first message is not the token",
    ]);
    // mob bench over TLS with the token: every connection in, nothing lost.
    let out = util::mob()
        .args(["bench", &server.addr.to_string(), "--target", "mob-line"])
        .args(["--ca", &cert.cert_path(), "--token-file", &token])
        .args(["--duration", "1", "--warmup", "0.2", "--subscribers", "10"])
        .args(["--publishers", "2", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    assert!(out.status.success(), "{report}");
    for field in [
        "lost",
        "duplicated",
        "out_of_order",
        "corrupt",
        "disconnects",
    ] {
        assert_eq!(report[field], 0, "{field} in {report}");
    }
    assert!(report["delivered"].as_u64().unwrap() > 0);
}

// ---- review (revtls): reproductions ----

/// A TLS client that ends its stream (close_notify, its socket left open) is owed what was
/// sequenced before: it must get it, then the server's close_notify, so it can tell a
/// complete stream from a cut (the TLS equivalent of the FIN a plain client gets).
#[test]
fn a_client_that_sends_close_notify_gets_all_then_close_notify() {
    let cert = Cert::new("review-eof");
    let server = cert.serve(&[]);
    let mut client = TlsClient::join(&cert, &server);
    client.send(b"one\ntwo\n");
    client.expect(b"one\n");
    client.tls.conn.send_close_notify();
    client.tls.flush().expect("send close_notify");
    let rest = client.read_to_clean_end();
    assert_eq!(rest, b"two\n");
}

/// The same with a TCP half-close instead of close_notify (README: taken as the end of the
/// stream, like a FIN).
#[test]
fn a_client_that_half_closes_gets_all_then_close_notify() {
    let cert = Cert::new("review-fin");
    let server = cert.serve(&[]);
    let mut client = TlsClient::join(&cert, &server);
    client.send(b"one\ntwo\n");
    client.expect(b"one\n");
    client.tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let rest = client.read_to_clean_end();
    assert_eq!(rest, b"two\n");
}

/// Connections that never finish their TLS handshake: each holds a partial ClientHello
/// (rustls buffers up to 64 KiB of handshake) and, being a receiver already, up to 64 KiB of
/// plaintext copied out of the log, with no deadline. The README promises 64 KiB of records
/// each plus one incoming record (about 16 KiB).
#[test]
fn connections_that_never_finish_the_handshake_hold_at_most_80_kib_each() {
    const N: usize = 200;
    let cert = Cert::new("review-hs");
    let server = cert.serve(&["--no-echo-self"]);
    let mut reader = TlsClient::join(&cert, &server);
    let mut sender = TlsClient::join(&cert, &server);
    sender.send(b"warm\n");
    reader.expect(b"warm\n");
    let before = server.rss();
    let record = |p: &[u8]| {
        let mut r = vec![0x16, 0x03, 0x01];
        r.extend_from_slice(&(p.len() as u16).to_be_bytes());
        r.extend_from_slice(p);
        r
    };
    let mut hello = vec![0x01, 0x00, 0xff, 0xf0, 0x03, 0x03];
    hello.resize(16_000, b'A');
    let mut flight = record(&hello);
    for _ in 0..2 {
        flight.extend(record(&[b'B'; 16_000]));
    }
    flight.extend(record(&[b'C'; 12_000]));
    let stalled: Vec<TcpStream> = (0..N)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(&flight).unwrap();
            s
        })
        .collect();
    let lines = numbered_lines("while-handshaking", 256 * 1024);
    sender.send(&lines);
    reader.expect(&lines);
    // The stalled connections' reads are done once the server has answered a ping after them.
    sender.send(b"ping\n");
    reader.expect(b"ping\n");
    let grown = server.rss().saturating_sub(before);
    let per = grown / N as u64;
    drop(stalled);
    assert!(
        per < 80 * 1024,
        "{N} connections that never finished the TLS handshake grew the server by {} KiB \
         ({} KiB each)",
        grown / 1024,
        per / 1024
    );
}

#[test]
fn a_client_that_never_completes_its_handshake_is_closed_after_10_s_and_sent_nothing() {
    let cert = Cert::new("silent");
    let server = cert.serve(&[]);
    let mut publisher = TlsClient::join(&cert, &server);
    // A plain-text listener (nc) on the TLS port: it says nothing, so no alert either.
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    let started = std::time::Instant::now();
    publisher.send(b"not for the silent one\n");
    publisher.expect(b"not for the silent one\n");
    let mut got = Vec::new();
    let _ = silent.read_to_end(&mut got);
    assert!(got.is_empty(), "it was sent {} bytes", got.len());
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(9),
        "closed after {waited:?}"
    );
    let peer = silent.local_addr().unwrap().to_string();
    server
        .log
        .wait_for(&["TLS handshake not completed within 10s", &peer]);
}
