//! Graceful shutdown on SIGTERM/SIGINT, and the idle timeout.

mod util;

use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use util::{Client, Server};

#[test]
fn sigterm_refuses_new_clients_delivers_what_is_queued_and_exits_zero() {
    let mut server = Server::start(&["--max-pending", "64MiB"]);
    let mut stalled = [Client::connect_small_buffer(server.addr)];
    let (_reader, _publisher, expected) = held_for(&server, &mut stalled, 16 << 20);
    let [mut stalled] = stalled;
    server.signal(libc::SIGTERM);
    server.log.wait_for(&["shutting down (SIGTERM)"]);
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "a new connection was accepted during shutdown"
    );
    let got = stalled.read_to_eof();
    assert!(
        got == expected,
        "the stalled client did not get all that was queued"
    );
    assert!(server.wait_exit(util::DEADLINE).success());
}

#[test]
fn sigint_with_nothing_queued_exits_as_soon_as_the_clients_close() {
    let mut server = Server::start(&["--shutdown-timeout", "600"]);
    let mut a = server.connect();
    let mut b = server.connect();
    b.send(b"ready\n");
    a.expect(b"ready\n");
    b.expect(b"ready\n");
    server.signal(libc::SIGINT);
    // Each client reads the end of the stream at once (nothing was owed), and closes.
    assert!(a.read_to_eof().is_empty());
    assert!(b.read_to_eof().is_empty());
    drop((a, b));
    // Far less than the 600 s ceiling.
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

/// The shutdown timeout caps the wait for a client that never reads. That client is reset, so
/// it cannot take a message cut short by the deadline for a whole one, and one line (not
/// rate-limited) says who was still owed data.
#[test]
fn shutdown_timeout_caps_the_wait_for_a_client_that_never_reads() {
    let mut server = Server::start(&["--shutdown-timeout", "0.5", "--max-pending", "64MiB"]);
    let mut stalled: Vec<Client> = (0..3)
        .map(|_| Client::connect_small_buffer(server.addr))
        .collect();
    let (mut reader, mut publisher, _) = held_for(&server, &mut stalled, 16 << 20);
    publisher.send(b"last\n");
    reader.expect(b"last\n");
    server.signal(libc::SIGTERM);
    let line = server
        .log
        .wait_for(&["shutdown timeout reached before all was sent"]);
    assert!(line.contains("3 clients still owed data"), "{line}");
    let peer = stalled[0].local_addr().to_string();
    assert!(line.contains(&peer), "{line} does not name {peer}");
    assert!(server.wait_exit(util::DEADLINE).success());
    for c in &mut stalled {
        let (got, reset) = c.read_until_closed();
        assert!(
            reset,
            "a client cut off at the deadline ended in order after {} bytes",
            got.len()
        );
    }
    drop(reader);
}

#[test]
fn idle_clients_are_closed_and_keepalives_keep_a_client_open() {
    let server = Server::start(&["--protocol", "frame", "--idle-timeout", "0.5"]);
    let mut silent = server.connect();
    let mut alive = server.connect();
    alive.send_frame(b"ready");
    assert_eq!(silent.read_frame(), b"ready");
    assert_eq!(alive.read_frame(), b"ready");
    let peer = silent.local_addr().to_string();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let mut keepalive = alive.stream.try_clone().unwrap();
    let pinger = thread::spawn(move || {
        use std::io::Write;
        // A keepalive every 50 ms, until told to stop.
        while stop_rx.recv_timeout(Duration::from_millis(50)).is_err() {
            keepalive.write_all(&0u64.to_be_bytes()).unwrap();
        }
    });
    // The silent client is closed for idleness...
    assert!(silent.read_to_close().is_empty());
    server.log.wait_for(&[&peer, "idle"]);
    // ...while the one sending only keepalives, connected as long, is still served.
    stop_tx.send(()).unwrap();
    pinger.join().unwrap();
    alive.send_frame(b"still here");
    assert_eq!(alive.read_frame(), b"still here");
}

/// A chat user who keeps typing while the server stops: the server has stopped relaying, but
/// closing a socket with unread input sends a reset, and a reset makes the client's kernel
/// throw away what it received and the client has not read yet. The server must keep reading
/// (and discarding), end our stream with a FIN and wait for the client's, so the client reads
/// every message that was relayed before shutdown began: the same stream as a reader's.
#[test]
fn a_client_that_keeps_sending_through_shutdown_still_receives_everything_relayed() {
    let mut server = Server::start(&["--shutdown-timeout", "10"]);
    // Relayed before shutdown and not read yet by the chatty client: more than its socket
    // buffer holds, so much of it waits in the server's socket buffers, sent but not
    // delivered, which a reset throws away.
    let mut chatty = [Client::connect_small_buffer(server.addr)];
    let (mut reader, publisher, backlog) = held_for(&server, &mut chatty, 1 << 20);
    let [mut chatty] = chatty;
    // The chatty client types on and on.
    let typing = util::Typist::start(&chatty, |i| format!("typed {i}\n"));
    server.signal(libc::SIGTERM);
    server.log.wait_for(&["shutting down (SIGTERM)"]);
    // What the reader got is what was relayed: the backlog and the typing relayed before the
    // signal. The chatty client must get exactly that too (a reset would cut it short).
    let relayed = reader.read_to_eof();
    let got = chatty.read_to_eof();
    typing.stop();
    let want = [&backlog[..], &relayed[..]].concat();
    assert!(
        got == want,
        "the chatty client got {} bytes of the {} relayed",
        got.len(),
        want.len()
    );
    drop((reader, chatty, publisher));
    assert!(server.wait_exit(util::DEADLINE).success());
}

/// `--idle-timeout` is about clients that send nothing while they could. One that has closed
/// its sending side and is still being sent its backlog is not idle: it is served to the end.
#[test]
fn a_half_closed_client_still_owed_its_backlog_is_not_idle() {
    use std::net::Shutdown;

    let Backlogged {
        server,
        slow: mut owed,
        slow_alive: owed_alive,
        publisher,
        publisher_alive,
        backlog,
    } = backlogged(&["--idle-timeout", "0.5"], 8 << 20);
    // The owed client goes quiet first and closes its side; then the publisher goes quiet.
    owed_alive.stop();
    owed.stream.shutdown(Shutdown::Write).unwrap();
    publisher_alive.stop();
    // The publisher is closed as idle; the half-closed client, quiet for longer, must not be.
    let peer = publisher.local_addr().to_string();
    server.log.wait_for(&[&peer, "idle"]);
    let got = owed.read_to_eof();
    assert!(
        got == backlog,
        "the half-closed client got {} of {} bytes",
        got.len(),
        backlog.len()
    );
}

/// A client that goes quiet while it slowly reads its backlog during a graceful shutdown is not
/// cut off as idle: the idle timeout is for serving, the shutdown timeout bounds the drain.
#[test]
fn no_client_is_cut_off_as_idle_while_the_server_drains() {
    let Backlogged {
        mut server,
        mut slow,
        slow_alive,
        publisher,
        publisher_alive,
        backlog,
    } = backlogged(
        &["--idle-timeout", "0.3", "--shutdown-timeout", "20"],
        4 << 20,
    );
    // The slow client goes quiet once the drain has begun.
    publisher_alive.stop();
    drop(publisher);
    server.signal(libc::SIGTERM);
    server.log.wait_for(&["shutting down (SIGTERM)"]);
    slow_alive.stop();
    // A slow reader: a pause of 30 ms every 128 KiB, so draining 4 MiB outlasts the idle
    // timeout several times over (this paces the client; nothing waits on it for
    // synchronisation).
    let mut got = Vec::new();
    let mut paced = 0;
    loop {
        let chunk = slow.read_some(64 * 1024);
        if chunk.is_empty() {
            break;
        }
        got.extend_from_slice(&chunk);
        if got.len() - paced >= 128 * 1024 {
            paced = got.len();
            thread::sleep(Duration::from_millis(30));
        }
    }
    assert!(
        got == backlog,
        "the slow client got {} of {} bytes",
        got.len(),
        backlog.len()
    );
    drop(slow);
    assert!(server.wait_exit(util::DEADLINE).success());
    assert_eq!(
        server.log.count("disconnected: idle"),
        0,
        "{}",
        server.log.text()
    );
}

/// A frame server (with `args`) holding about `size` bytes of frames for a client with a small
/// receive buffer that has not read them; it and the publisher send keepalives (zero-length
/// frames, never relayed) so that neither is idle however long the set-up takes.
struct Backlogged {
    server: Server,
    slow: Client,
    slow_alive: Keepalive,
    publisher: Client,
    publisher_alive: Keepalive,
    backlog: Vec<u8>,
}

/// Connects a reader and a publisher after `stalled` (clients that do not read), syncs all on
/// a line from the publisher, then publishes `size` bytes of numbered lines, more than the
/// kernel's socket buffers hold, and waits until the reader has them: what the stalled clients
/// have not taken now waits in the server's log. Returns the reader, the publisher (whose
/// echoes are read and thrown away) and the lines.
fn held_for(server: &Server, stalled: &mut [Client], size: usize) -> (Client, Client, Vec<u8>) {
    let mut reader = server.connect();
    let mut publisher = server.connect();
    publisher.discard_input();
    publisher.send(b"ready\n");
    reader.expect(b"ready\n");
    for c in stalled.iter_mut() {
        c.expect(b"ready\n");
    }
    let lines = numbered_lines(size);
    publisher.send(&lines);
    reader.expect(&lines);
    (reader, publisher, lines)
}

fn backlogged(args: &[&str], size: usize) -> Backlogged {
    let args = [&["--protocol", "frame", "--max-pending", "64MiB"], args].concat();
    let server = Server::start(&args);
    let mut slow = Client::connect_small_buffer(server.addr);
    let mut publisher = server.connect();
    publisher.send_frame(b"ready");
    assert_eq!(slow.read_frame(), b"ready");
    assert_eq!(publisher.read_frame(), b"ready");
    let slow_alive = keepalive(&slow);
    let publisher_alive = keepalive(&publisher);
    let backlog = frames_of(numbered_lines(size));
    // The publisher's own echo says when the server has taken it all.
    let echo = publisher.read_on_thread(backlog.len());
    publisher_alive.send_all(&backlog);
    assert!(echo.join().unwrap().expect("echo") == backlog);
    Backlogged {
        server,
        slow,
        slow_alive,
        publisher,
        publisher_alive,
        backlog,
    }
}

/// Sends zero-length frames (keepalives) on `client`'s socket every 50 ms from a thread, and
/// anything else through the same thread so that frames never interleave.
struct Keepalive {
    tx: mpsc::Sender<Option<Vec<u8>>>,
    thread: thread::JoinHandle<()>,
}

fn keepalive(client: &Client) -> Keepalive {
    use std::io::Write;
    let mut out = client.stream.try_clone().unwrap();
    let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>();
    let thread = thread::spawn(move || loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Some(bytes)) => out.write_all(&bytes).unwrap(),
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if out.write_all(&0u64.to_be_bytes()).is_err() {
                    return;
                }
            }
        }
    });
    Keepalive { tx, thread }
}

impl Keepalive {
    fn send_all(&self, bytes: &[u8]) {
        self.tx.send(Some(bytes.to_vec())).unwrap();
    }

    fn stop(self) {
        let _ = self.tx.send(None);
        self.thread.join().unwrap();
    }
}

/// `bytes` cut into frames of at most 1000 bytes of payload, in wire form.
fn frames_of(bytes: Vec<u8>) -> Vec<u8> {
    bytes
        .chunks(1000)
        .flat_map(|p| {
            (p.len() as u64)
                .to_be_bytes()
                .into_iter()
                .chain(p.iter().copied())
        })
        .collect()
}

/// About `total` bytes of distinct 100-byte lines.
fn numbered_lines(total: usize) -> Vec<u8> {
    (0..total / 100)
        .flat_map(|i| format!("{i:0>99}\n").into_bytes())
        .collect()
}
