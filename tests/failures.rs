//! One client's failure closes that client only, with a log line naming it and the reason.

mod util;

use util::{Client, Server};

/// Connects `n` clients and proves all are registered (the last one's line reaches all).
fn connected(server: &Server, n: usize) -> Vec<Client> {
    let mut clients: Vec<Client> = (0..n).map(|_| server.connect()).collect();
    clients.last_mut().unwrap().send(b"ready\n");
    for c in &mut clients {
        c.expect(b"ready\n");
    }
    clients
}

/// A well-behaved and a soon-to-misbehave frame client, both registered; and the latter's
/// address, to find its log line.
fn frame_pair(server: &Server) -> (Client, Client, String) {
    let mut good = server.connect();
    let mut bad = server.connect();
    bad.send_frame(b"ready");
    assert_eq!(good.read_frame(), b"ready");
    let peer = bad.local_addr().to_string();
    (good, bad, peer)
}

fn frame_still_relaying(good: &mut Client) {
    good.send_frame(b"after");
    assert_eq!(good.read_frame(), b"after");
}

/// The survivors still relay to each other, in order, after the failure.
fn still_relaying(clients: &mut [Client]) {
    clients[0].send(b"still here\n");
    for c in clients.iter_mut() {
        c.expect(b"still here\n");
    }
}

#[test]
fn an_oversized_line_disconnects_only_its_sender() {
    let server = Server::start(&["--max-message", "16"]);
    let mut clients = connected(&server, 3);
    let mut bad = clients.pop().unwrap();
    let peer = bad.local_addr().to_string();
    bad.send(b"short\n");
    bad.send(b"this line is far longer than sixteen bytes\n");
    for c in &mut clients {
        c.expect(b"short\n");
    }
    bad.read_to_close();
    server
        .log
        .wait_for(&[&peer, "protocol error", "exceeds the limit of 16 bytes"]);
    still_relaying(&mut clients);
}

#[test]
fn an_oversized_frame_disconnects_only_its_sender() {
    let server = Server::start(&["--protocol", "frame", "--max-message", "1KiB"]);
    let (mut good, mut bad, peer) = frame_pair(&server);
    // A header announcing 2 KiB; the payload never needs to arrive.
    bad.send(&2048u64.to_be_bytes());
    bad.read_to_close();
    server
        .log
        .wait_for(&[&peer, "protocol error", "2048 bytes"]);
    frame_still_relaying(&mut good);
}

#[test]
fn garbage_length_prefixes_close_that_client_only() {
    let server = Server::start(&["--protocol", "frame"]);
    let (mut good, mut bad, peer) = frame_pair(&server);
    bad.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    bad.read_to_close();
    server.log.wait_for(&[&peer, "protocol error"]);
    frame_still_relaying(&mut good);
}

#[test]
fn a_reset_mid_line_closes_that_client_and_its_partial_line_is_not_relayed() {
    let server = Server::start(&[]);
    let mut clients = connected(&server, 3);
    let mut bad = clients.pop().unwrap();
    let peer = bad.local_addr().to_string();
    bad.send(b"half a li");
    bad.reset();
    server
        .log
        .wait_for(&[&peer, "disconnected", "connection error"]);
    // The first thing the survivors see after "ready" is "still here": no half line.
    still_relaying(&mut clients);
}

#[test]
fn a_reset_mid_frame_closes_that_client_only() {
    let server = Server::start(&["--protocol", "frame"]);
    let (mut good, mut bad, peer) = frame_pair(&server);
    bad.send(&100u64.to_be_bytes());
    bad.send(b"only part of it");
    bad.reset();
    server.log.wait_for(&[&peer, "disconnected"]);
    frame_still_relaying(&mut good);
}

#[test]
fn a_frame_cut_short_by_a_clean_close_is_reported_and_not_relayed() {
    let server = Server::start(&["--protocol", "frame"]);
    let (mut good, mut bad, peer) = frame_pair(&server);
    bad.send(&100u64.to_be_bytes());
    bad.send(b"only part of it");
    bad.stream.shutdown(std::net::Shutdown::Write).unwrap();
    server
        .log
        .wait_for(&[&peer, "stream ended inside a message (23 of 108 bytes"]);
    frame_still_relaying(&mut good);
}

#[test]
fn clients_that_vanish_while_being_written_do_not_disturb_the_rest() {
    let server = Server::start(&[]);
    let mut clients = connected(&server, 20);
    let mut survivors = clients.split_off(10);
    // Ten clients reset while the server has a stream of lines to send them.
    let big: Vec<u8> = (0..2000)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    survivors[0].send(&big);
    for c in clients {
        c.reset();
    }
    for c in &mut survivors {
        c.expect(&big);
    }
    still_relaying(&mut survivors);
}

/// A peer that vanishes without a word (machine off, cable pulled) is found on a quiet server
/// too: every client socket has TCP keepalive, so the kernel runs its keepalive timer on it.
#[test]
fn client_sockets_have_tcp_keepalive() {
    let server = Server::start(&[]);
    let clients = connected(&server, 1);
    let row = util::server_side_of(clients[0].local_addr(), server.addr)
        .expect("the server's side of the connection");
    // /proc/net/tcp's timer field: 2 is the keepalive timer.
    assert_eq!(row.timer, 2, "no keepalive timer on {row:?}");
}

/// A client cut off for failing is closed with a reset: what the kernel still held for it is
/// freed at once instead of lingering in FIN-WAIT-1 for as long as the peer neither reads nor
/// closes (megabytes per cut slow consumer, outside --max-pending).
#[test]
fn a_slow_consumer_is_cut_off_with_a_reset_that_frees_its_socket_buffers() {
    let server = Server::start(&["--max-pending", "1MiB"]);
    let mut stalled = Client::connect_small_buffer(server.addr);
    let mut publisher = server.connect();
    publisher.send(b"ready\n");
    stalled.expect(b"ready\n");
    publisher.expect(b"ready\n");
    publisher.discard_input();
    let peer = stalled.local_addr();
    // Publish (at most 64 MiB) until the stalled client is cut off.
    let line = [vec![b'x'; 1023], b"\n".to_vec()].concat();
    for _ in 0..64 * 1024 {
        if server.log.count("disconnected: slow consumer") > 0 {
            break;
        }
        publisher.send(&line);
    }
    server
        .log
        .wait_for(&[&peer.to_string(), "disconnected: slow consumer"]);
    let left = util::server_side_of(peer, server.addr);
    assert!(
        left.is_none(),
        "the cut-off client's socket lingers on the server's side: {left:?}"
    );
}
