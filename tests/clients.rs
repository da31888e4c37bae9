//! `mob chat` and `mob bench` as clients of a server that wants a token or TLS: servers made
//! in the test speak the contract (`serve --auth-token-file`, `--tls-cert`) byte for byte, so
//! these pass or fail on the clients alone.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use util::{mob, Output, DEADLINE};

/// A directory of files for one test, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("mob-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for localhost and 127.0.0.1, and its key.
struct Cert {
    der: CertificateDer<'static>,
    key: Vec<u8>,
    pem: String,
}

fn certificate() -> Cert {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    Cert {
        der: made.cert.der().clone(),
        key: made.signing_key.serialize_der(),
        pem: made.cert.pem(),
    }
}

/// The first connection to `listener`, or a failure after the deadline.
/// A rustls server configuration showing `cert`.
fn server_config(cert: &Cert) -> ServerConfig {
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key.clone())),
        )
        .unwrap()
}

fn accept(listener: TcpListener) -> TcpStream {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(listener.accept().map(|(s, _)| s));
    });
    let stream = rx
        .recv_timeout(DEADLINE)
        .expect("the client did not connect")
        .unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// `mob chat ARGS...` with stdin to type into and stdout collected.
fn chat(args: &[&str]) -> (Child, ChildStdin, Output) {
    let mut child = mob()
        .arg("chat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mob chat");
    let stdin = child.stdin.take().unwrap();
    let printed = Output::default();
    printed.clone().collect(child.stdout.take().unwrap());
    (child, stdin, printed)
}

fn finish(mut child: Child, stdin: ChildStdin) {
    drop(stdin);
    let status = util::wait_exit(&mut child, DEADLINE);
    if status.is_none() {
        let _ = child.kill();
    }
    assert!(status.is_some_and(|s| s.success()), "mob chat: {status:?}");
}

fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .expect("a line within the deadline");
    line
}

#[test]
fn chat_sends_the_token_first_in_its_protocol() {
    let dir = Dir::new("chat-token");
    let token = dir.file("token", "  s3cret \n");
    for protocol in ["line", "frame"] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let args = [&addr, "--protocol", protocol, "--token-file"];
        let (child, mut stdin, printed) = chat(&[&args[..], &[token.to_str().unwrap()]].concat());
        // Typed before the server even accepted: the token must still come first.
        stdin.write_all(b"hello\n").unwrap();
        let mut server = accept(listener);
        let framed = |payload: &[u8]| {
            let mut frame = (payload.len() as u64).to_be_bytes().to_vec();
            frame.extend_from_slice(payload);
            frame
        };
        let expected: Vec<u8> = match protocol {
            "line" => b"s3cret\nhello\n".to_vec(),
            _ => [framed(b"s3cret"), framed(b"hello")].concat(),
        };
        let mut got = vec![0; expected.len()];
        server.read_exact(&mut got).unwrap();
        assert_eq!(got, expected, "{protocol}");
        let welcome = match protocol {
            "line" => b"welcome\n".to_vec(),
            _ => framed(b"welcome"),
        };
        server.write_all(&welcome).unwrap();
        printed.wait_for(&["welcome"]);
        drop(server);
        finish(child, stdin);
    }
}

#[test]
fn chat_speaks_tls_to_a_server_whose_certificate_the_ca_file_holds() {
    let dir = Dir::new("chat-tls");
    let cert = certificate();
    let ca = dir.file("ca.pem", &cert.pem);
    let config = server_config(&cert);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (child, mut stdin, printed) = chat(&[&addr, "--ca", ca.to_str().unwrap()]);
    stdin.write_all(b"hi from chat\n").unwrap();
    let conn = ServerConnection::new(Arc::new(config)).unwrap();
    let mut tls = BufReader::new(StreamOwned::new(conn, accept(listener)));
    assert_eq!(read_line(&mut tls), "hi from chat\n");
    tls.get_mut().write_all(b"hi from server\n").unwrap();
    tls.get_mut().flush().unwrap();
    printed.wait_for(&["hi from server"]);
    tls.get_mut().conn.send_close_notify();
    let _ = tls.get_mut().flush();
    drop(tls);
    finish(child, stdin);
}

#[test]
fn chat_refuses_a_certificate_its_ca_file_does_not_vouch_for() {
    let dir = Dir::new("chat-tls-wrong-ca");
    let (served, other) = (certificate(), certificate());
    let ca = dir.file("other.pem", &other.pem);
    let config = server_config(&served);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut child = mob()
        .args(["chat", &addr, "--ca", ca.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Output::default();
    let collected = stderr.clone().collect(child.stderr.take().unwrap());
    let mut tls = StreamOwned::new(
        ServerConnection::new(Arc::new(config)).unwrap(),
        accept(listener),
    );
    // The client's alert ends the handshake on this side too.
    assert!(tls.read(&mut [0; 1]).is_err());
    let status = util::wait_exit(&mut child, DEADLINE).expect("mob chat exits");
    let _ = collected.join();
    assert!(!status.success());
    let text = stderr.text();
    assert!(text.contains("invalid peer certificate"), "{text}");
}

/// `mob ARGS...` fails at once, with `needle` on stderr.
fn fails_naming(args: &[&str], needle: &str) {
    let out = mob()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mob");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mob {args:?} should fail");
    assert!(
        stderr.contains(needle),
        "mob {args:?}: no {needle:?} in {stderr}"
    );
}

#[test]
fn unreadable_ca_and_empty_token_files_are_errors_naming_the_file() {
    let dir = Dir::new("bad-files");
    let empty = dir.file("empty-token", " \n");
    let not_pem = dir.file("not-a-ca.pem", "hello\n");
    let missing = dir.0.join("missing-ca.pem");
    let (empty, not_pem, missing) = (
        empty.to_str().unwrap(),
        not_pem.to_str().unwrap(),
        missing.to_str().unwrap(),
    );
    // The files are read before connecting: no server is needed to see these fail.
    for command in ["chat", "bench"] {
        fails_naming(&[command, "127.0.0.1:1", "--token-file", empty], empty);
        fails_naming(&[command, "127.0.0.1:1", "--ca", not_pem], not_pem);
        fails_naming(&[command, "127.0.0.1:1", "--ca", missing], missing);
    }
}

#[test]
fn bench_sends_the_token_first_on_every_connection() {
    let dir = Dir::new("bench-token");
    let token = dir.file("token", "tok-en\n");
    let relay = TokenRelay::start("tok-en");
    let out = mob()
        .args(["bench", &relay.addr, "--target", "mob-line"])
        .args(["--token-file", token.to_str().unwrap()])
        .args(["--subscribers", "5", "--publishers", "2", "--rate", "1000"])
        .args(["--duration", "0.5", "--warmup", "0.1", "--json"])
        .output()
        .expect("run mob bench");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(relay.admitted.load(Ordering::SeqCst), 7);
    assert_eq!(relay.refused.load(Ordering::SeqCst), 0);
}

/// A line relay that, like `serve --auth-token-file`, relays nothing to or from a connection
/// before its first line, which must be the token (or the connection is closed).
struct TokenRelay {
    addr: String,
    admitted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

impl TokenRelay {
    fn start(token: &'static str) -> TokenRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let admitted = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let clients: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (a, r) = (Arc::clone(&admitted), Arc::clone(&refused));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (clients, admitted, refused) =
                    (Arc::clone(&clients), Arc::clone(&a), Arc::clone(&r));
                thread::spawn(move || {
                    let writer = stream.try_clone().unwrap();
                    let mut lines = BufReader::new(stream).split(b'\n');
                    match lines.next() {
                        Some(Ok(first)) if first == token.as_bytes() => {
                            admitted.fetch_add(1, Ordering::SeqCst);
                            clients.lock().unwrap().push(writer);
                        }
                        _ => {
                            refused.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    for line in lines {
                        let Ok(mut line) = line else { break };
                        line.push(b'\n');
                        for c in clients.lock().unwrap().iter_mut() {
                            let _ = c.write_all(&line);
                        }
                    }
                });
            }
        });
        TokenRelay {
            addr,
            admitted,
            refused,
        }
    }
}
