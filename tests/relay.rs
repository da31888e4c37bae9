//! What every client is sent: the relay guarantees, in every protocol.

mod util;

use std::collections::HashMap;
use std::thread;

use util::{Client, Server};

#[test]
fn every_client_receives_every_message_including_its_own() {
    let server = Server::start(&[]);
    let mut clients: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    sync(&mut clients);
    clients[1].send(b"hello\n");
    for c in &mut clients {
        c.expect(b"hello\n");
    }
}

#[test]
fn no_echo_self_leaves_the_sender_out() {
    let server = Server::start(&["--no-echo-self"]);
    let mut a = server.connect();
    let mut b = server.connect();
    // `b` connected last, so when `a` receives this, both are registered.
    b.send(b"from b\n");
    a.expect(b"from b\n");
    a.send(b"from a\n");
    // `b` was not sent its own line: the first thing it receives is `a`'s.
    b.expect(b"from a\n");
    b.send(b"marker\n");
    // `a` was not sent its own line either.
    a.expect(b"marker\n");
}

#[test]
fn lines_split_over_many_writes_or_batched_in_one_arrive_whole() {
    let server = Server::start(&[]);
    let mut clients: Vec<Client> = (0..2).map(|_| server.connect()).collect();
    sync(&mut clients);
    for &b in b"one line, byte by byte\n" {
        clients[0].send(&[b]);
    }
    clients[0].send(b"two\nthree\nfour");
    clients[0].send(b"\n");
    for c in &mut clients {
        c.expect(b"one line, byte by byte\ntwo\nthree\nfour\n");
    }
}

#[test]
fn any_bytes_are_relayed_in_a_line() {
    let server = Server::start(&[]);
    let mut clients: Vec<Client> = (0..2).map(|_| server.connect()).collect();
    sync(&mut clients);
    clients[0].send(b"\x00\xff\xfe\r\n");
    clients[1].expect(b"\x00\xff\xfe\r\n");
}

#[test]
fn an_unterminated_last_line_is_delivered_with_a_newline_at_eof() {
    let server = Server::start(&[]);
    let mut clients: Vec<Client> = (0..2).map(|_| server.connect()).collect();
    sync(&mut clients);
    clients[0].send(b"no newline");
    clients[0]
        .stream
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    clients[1].expect(b"no newline\n");
    // The half-closed sender is sent its own last line too, then closed.
    assert_eq!(clients[0].read_to_close(), b"no newline\n");
}

#[test]
fn frame_messages_keep_their_header_and_keepalives_are_not_relayed() {
    let server = Server::start(&["--protocol", "frame"]);
    let mut a = server.connect();
    let mut b = server.connect();
    a.send_frame(b"");
    b.send_frame(b"sync");
    assert_eq!(a.read_frame(), b"sync");
    assert_eq!(b.read_frame(), b"sync");
    a.send_frame(b"");
    a.send_frame(b"");
    a.send_frame(b"payload with \n inside");
    assert_eq!(b.read_frame(), b"payload with \n inside");
    assert_eq!(a.read_frame(), b"payload with \n inside");
}

#[test]
fn frame_messages_split_at_any_byte_arrive_whole() {
    let server = Server::start(&["--protocol", "frame"]);
    let mut a = server.connect();
    let mut b = server.connect();
    b.send_frame(b"sync");
    assert_eq!(a.read_frame(), b"sync");
    assert_eq!(b.read_frame(), b"sync");
    let mut wire = Vec::new();
    for i in 0..50u64 {
        let payload = format!("message {i}");
        wire.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        wire.extend_from_slice(payload.as_bytes());
    }
    for chunk in wire.chunks(7) {
        a.send(chunk);
    }
    for i in 0..50 {
        assert_eq!(b.read_frame(), format!("message {i}").as_bytes());
    }
}

#[test]
fn raw_relays_bytes_as_they_come() {
    let server = Server::start(&["--protocol", "raw"]);
    let mut a = server.connect();
    let mut b = server.connect();
    b.send(b"x");
    a.expect(b"x");
    b.expect(b"x");
    a.send(b"no framing at all \x00 \n \xff");
    b.expect(b"no framing at all \x00 \n \xff");
}

/// Every receiver sees one and the same total order, each sender's messages in the order sent,
/// nothing lost or duplicated, while several senders write at once.
#[test]
fn all_receivers_see_one_total_order_that_keeps_each_senders_order() {
    for protocol in ["line", "frame"] {
        let server = Server::start(&["--protocol", protocol]);
        const SENDERS: usize = 4;
        const RECEIVERS: usize = 4;
        const MESSAGES: usize = 2_000;
        let mut clients: Vec<Client> = (0..SENDERS + RECEIVERS).map(|_| server.connect()).collect();
        sync_protocol(&mut clients, protocol);
        let mut receivers = clients.split_off(SENDERS);
        let frame = protocol == "frame";
        let senders: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(s, mut c)| {
                thread::spawn(move || {
                    let mut batch = Vec::new();
                    for i in 0..MESSAGES {
                        let msg = format!("{s}:{i}");
                        encode(&mut batch, msg.as_bytes(), frame);
                        if batch.len() > 1000 || i == MESSAGES - 1 {
                            c.send(&batch);
                            batch.clear();
                        }
                    }
                    c
                })
            })
            .collect();
        let readers: Vec<_> = receivers
            .drain(..)
            .map(|mut r| {
                thread::spawn(move || {
                    (0..SENDERS * MESSAGES)
                        .map(|_| {
                            let m = if frame { r.read_frame() } else { r.read_line() };
                            String::from_utf8(m).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let orders: Vec<Vec<String>> = readers.into_iter().map(|h| h.join().unwrap()).collect();
        // Senders are joined only after all was read so they stay connected meanwhile.
        let senders: Vec<Client> = senders.into_iter().map(|h| h.join().unwrap()).collect();
        drop(senders);
        for order in &orders[1..] {
            assert!(
                order == &orders[0],
                "receivers saw different orders ({protocol})"
            );
        }
        let mut next: HashMap<&str, usize> = HashMap::new();
        for msg in &orders[0] {
            let (s, i) = msg.split_once(':').unwrap();
            let want = next.entry(s).or_default();
            assert_eq!(
                i.parse::<usize>().unwrap(),
                *want,
                "sender {s} out of order ({protocol})"
            );
            *want += 1;
        }
        assert_eq!(next.len(), SENDERS);
        assert!(
            next.values().all(|&n| n == MESSAGES),
            "lost messages ({protocol})"
        );
    }
}

#[test]
fn a_thousand_concurrent_clients_all_receive_every_message() {
    let server = Server::start(&[]);
    let mut clients: Vec<Client> = (0..1_000).map(|_| server.connect()).collect();
    sync(&mut clients);
    for i in 0..10 {
        clients[i * 97].send(format!("message {i}\n").as_bytes());
    }
    // Ten senders, without waiting for each other: they may be read in any order (with
    // `--threads 2` they are read by two loops at once), but every receiver sees the same one.
    let mut first: Option<Vec<u8>> = None;
    for c in &mut clients {
        let got = c.read_lines(10);
        match &first {
            None => {
                let mut sorted: Vec<&[u8]> = got.split_inclusive(|&b| b == b'\n').collect();
                sorted.sort();
                let want: Vec<Vec<u8>> = (0..10)
                    .map(|i| format!("message {i}\n").into_bytes())
                    .collect();
                assert_eq!(sorted, want, "each message exactly once");
                first = Some(got);
            }
            Some(first) => assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(first),
                "two receivers saw different orders"
            ),
        }
    }
}

/// With thousands of receivers a flush round spans several turns of the loop; messages that
/// arrive meanwhile must still reach the receivers the round already passed, with no further
/// event to prompt it.
#[test]
fn messages_arriving_during_a_long_flush_round_reach_everyone() {
    let server = Server::start(&[]);
    let mut clients: Vec<Client> = (0..3_000).map(|_| server.connect()).collect();
    sync(&mut clients);
    for i in 0..20 {
        clients[0].send(format!("burst {i}\n").as_bytes());
    }
    let expected: Vec<u8> = (0..20)
        .flat_map(|i| format!("burst {i}\n").into_bytes())
        .collect();
    for c in &mut clients {
        c.expect(&expected);
    }
}

/// Makes sure every client is registered: the last one to connect sends a line and all wait
/// for it (the server only relays to connected clients, so this proves each one is).
fn sync(clients: &mut [Client]) {
    sync_protocol(clients, "line")
}

fn sync_protocol(clients: &mut [Client], protocol: &str) {
    let frame = protocol == "frame";
    let mut wire = Vec::new();
    encode(&mut wire, b"sync", frame);
    clients.last_mut().unwrap().send(&wire);
    for c in clients.iter_mut() {
        c.expect(&wire);
    }
}

fn encode(out: &mut Vec<u8>, payload: &[u8], frame: bool) {
    if frame {
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        out.extend_from_slice(payload);
    } else {
        out.extend_from_slice(payload);
        out.push(b'\n');
    }
}
