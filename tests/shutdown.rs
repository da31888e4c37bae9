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
    let mut stalled = Client::connect_small_buffer(server.addr);
    let mut reader = server.connect();
    let mut publisher = server.connect();
    publisher.discard_input();
    publisher.send(b"ready\n");
    stalled.expect(b"ready\n");
    reader.expect(b"ready\n");
    // More than the kernel's socket buffers hold, so most of it waits in the server's log.
    let expected = numbered_lines(16 << 20);
    publisher.send(&expected);
    // Once the reader has it all, the server holds it for the stalled client.
    reader.expect(&expected);
    server.signal(libc::SIGTERM);
    server.log.wait_for(&["shutting down (SIGTERM)"]);
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "a new connection was accepted during shutdown"
    );
    let got = stalled.read_to_close();
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
    assert!(a.read_to_close().is_empty());
    assert!(b.read_to_close().is_empty());
    drop((a, b));
    // Far less than the 600 s ceiling.
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn shutdown_timeout_caps_the_wait_for_a_client_that_never_reads() {
    let mut server = Server::start(&["--shutdown-timeout", "0.5", "--max-pending", "64MiB"]);
    let stalled = Client::connect_small_buffer(server.addr);
    let mut reader = server.connect();
    let mut publisher = server.connect();
    publisher.discard_input();
    let peer = stalled.local_addr().to_string();
    publisher.send(b"ready\n");
    reader.expect(b"ready\n");
    // More than the kernel's socket buffers hold, so most of it waits in the server's log.
    let lines = numbered_lines(16 << 20);
    publisher.send(&lines);
    publisher.send(b"last\n");
    // Once the reader has it all, the server holds it for the stalled client.
    reader.expect(&lines);
    reader.expect(b"last\n");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(util::DEADLINE).success());
    server.log.wait_for(&[&peer, "shutdown timeout reached"]);
    drop(stalled);
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

/// About `total` bytes of distinct 100-byte lines.
fn numbered_lines(total: usize) -> Vec<u8> {
    (0..total / 100)
        .flat_map(|i| format!("{i:0>99}\n").into_bytes())
        .collect()
}
