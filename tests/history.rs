//! `--history N`: a client that joins is first sent the last N messages relayed before it, then
//! the live stream, with no gap and no duplicate between the two.

mod util;

use std::thread;

use util::ws::Ws;
use util::{Client, Server};

/// Sends lines `from..=to` (as numbers) from `c` and waits until it has them back.
fn send_numbers(c: &mut Client, from: u32, to: u32) {
    let mut wire = Vec::new();
    for i in from..=to {
        wire.extend_from_slice(format!("{i}\n").as_bytes());
    }
    c.send(&wire);
    c.expect(&wire);
}

/// Reads lines from `c` until (and including) `last`.
fn lines_until(c: &mut Client, last: &str) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = String::from_utf8(c.read_line()).unwrap();
        let line = line.trim_end_matches('\n').to_string();
        let done = line == last;
        lines.push(line);
        if done {
            return lines;
        }
    }
}

#[test]
fn a_late_joiner_gets_the_last_n_messages_then_the_live_stream() {
    let server = Server::start(&["--history", "3"]);
    let mut a = server.connect();
    send_numbers(&mut a, 1, 5);
    let mut b = server.connect();
    // Its own line is read after it joined and before anything else is: it comes right after
    // the history.
    b.send(b"b is here\n");
    b.expect(b"3\n4\n5\nb is here\n");
    a.expect(b"b is here\n");
    send_numbers(&mut a, 6, 6);
    b.expect(b"6\n");
    b.expect_nothing_pending();
}

#[test]
fn a_joiner_gets_fewer_when_fewer_were_relayed_and_none_by_default() {
    let server = Server::start(&["--history", "10"]);
    let mut a = server.connect();
    send_numbers(&mut a, 1, 2);
    let mut b = server.connect();
    b.send(b"b\n");
    b.expect(b"1\n2\nb\n");

    let plain = Server::start(&[]);
    let mut a = plain.connect();
    send_numbers(&mut a, 1, 2);
    let mut b = plain.connect();
    b.send(b"b\n");
    b.expect(b"b\n");
}

#[test]
fn history_is_bounded_by_max_pending() {
    // 2,000 lines of 100 bytes are 200 KB: far more than 64 KiB holds.
    let server = Server::start(&["--history", "100000", "--max-pending", "64KiB"]);
    let mut a = server.connect();
    let line = |i: u32| format!("{i:099}\n");
    for chunk in (1..=2000).collect::<Vec<u32>>().chunks(100) {
        let wire: String = chunk.iter().map(|&i| line(i)).collect();
        a.send(wire.as_bytes());
        a.expect(wire.as_bytes());
    }
    let mut b = server.connect();
    b.send(b"b\n");
    let got = lines_until(&mut b, "b");
    let numbers: Vec<u32> = got[..got.len() - 1]
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(!numbers.is_empty(), "some history is kept");
    let bytes = numbers.len() * 100;
    assert!(
        bytes <= 64 << 10,
        "history of {bytes} bytes passes --max-pending"
    );
    assert_eq!(*numbers.last().unwrap(), 2000, "the newest are kept");
    for w in numbers.windows(2) {
        assert_eq!(w[1], w[0] + 1, "history has a gap or a duplicate");
    }
}

#[test]
fn joiners_during_a_stream_get_no_gap_and_no_duplicate() {
    const HISTORY: usize = 50;
    const TOTAL: u32 = 4000;
    let server = Server::start(&["--history", &HISTORY.to_string()]);
    let mut publisher = server.connect();
    // The history is full before anyone joins.
    send_numbers(&mut publisher, 0, HISTORY as u32);
    let addr = server.addr;
    let sender = thread::spawn(move || {
        for chunk in (HISTORY as u32 + 1..TOTAL).collect::<Vec<u32>>().chunks(20) {
            let wire: String = chunk.iter().map(|i| format!("{i}\n")).collect();
            publisher.send(wire.as_bytes());
            // Paced by its own echo (joiners' lines come in between).
            lines_until(&mut publisher, &chunk.last().unwrap().to_string());
        }
    });
    let mut watcher = Client::connect(addr);
    let joiners: Vec<_> = (0..12u32)
        .map(|k| {
            // Spread over the stream: each joins after a different count of messages.
            lines_until(&mut watcher, &(HISTORY as u32 + 1 + k * 250).to_string());
            let mut joiner = Client::connect(addr);
            let me = format!("joiner {k}");
            // Read after it joined: what it receives before this line is its history (and
            // what was sequenced between its join and this line).
            joiner.send(format!("{me}\n").as_bytes());
            thread::spawn(move || (me, lines_until(&mut joiner, &(TOTAL - 1).to_string())))
        })
        .collect();
    sender.join().unwrap();
    for j in joiners {
        let (me, lines) = j.join().unwrap();
        let before_me = lines.iter().position(|l| *l == me).expect("its own line");
        let numbers: Vec<u32> = lines.iter().filter_map(|l| l.parse().ok()).collect();
        let history = lines[..before_me]
            .iter()
            .filter(|l| l.parse::<u32>().is_ok())
            .count();
        assert!(
            history >= HISTORY,
            "{me} got {history} messages before its own line: its history is missing"
        );
        for w in numbers.windows(2) {
            assert_eq!(
                w[1],
                w[0] + 1,
                "a gap or a duplicate between history and stream"
            );
        }
    }
}

#[test]
fn a_websocket_joiner_gets_history_another_websocket_client_was_sent_already() {
    let server = Server::start(&["--history", "3", "--http", "127.0.0.1:0"]);
    let http = server.http_addr();
    let mut a = server.connect();
    let mut first = Ws::connect(http);
    first.send_text("first");
    assert_eq!(first.recv_text(), "first");
    // History or live: either way once.
    a.expect(b"first\n");
    send_numbers(&mut a, 1, 5);
    for i in 1..=5 {
        assert_eq!(first.recv_text(), i.to_string());
    }
    // Give the loop a turn to trim what `first` was sent (a flush round ends after this).
    first.send_text("again");
    assert_eq!(first.recv_text(), "again");
    a.expect(b"again\n");
    let mut late = Ws::connect(http);
    late.send_text("late");
    let got: Vec<String> = (0..4).map(|_| late.recv_text()).collect();
    assert_eq!(got, ["4", "5", "again", "late"]);
    a.send(b"live\n");
    assert_eq!(late.recv_text(), "live");
}

#[test]
fn history_holds_on_an_idle_server_and_is_given_to_each_joiner() {
    let server = Server::start(&["--history", "2"]);
    let mut a = server.connect();
    send_numbers(&mut a, 1, 3);
    drop(a);
    // Each joiner's own line becomes history for the next.
    let expected: [&[u8]; 3] = [
        b"2\n3\njoiner 0\n",
        b"3\njoiner 0\njoiner 1\n",
        b"joiner 0\njoiner 1\njoiner 2\n",
    ];
    for (k, expected) in expected.iter().enumerate() {
        let mut b = server.connect();
        b.send(format!("joiner {k}\n").as_bytes());
        b.expect(expected);
    }
}
