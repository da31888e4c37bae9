//! `--history N`: a client that joins is first sent the last N messages relayed before it, then
//! the live stream, with no gap and no duplicate between the two.

mod util;

use std::io::Read;
use std::thread;
use std::time::Duration;

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

/// Fills the log with lines `from..from + n` of 1000 bytes, paced by `publisher`'s own echo.
fn fill(publisher: &mut Client, from: u32, n: u32) {
    for chunk in (from..from + n).collect::<Vec<u32>>().chunks(50) {
        let wire: String = chunk.iter().map(|&i| format!("{i:0999}\n")).collect();
        publisher.send(wire.as_bytes());
        publisher.expect(wire.as_bytes());
    }
}

/// Reads 1000-byte numbered lines from `c` until `last`; returns their numbers.
fn numbers_until(c: &mut Client, last: u32) -> Vec<u32> {
    let mut got = Vec::new();
    loop {
        let line = c.read_line();
        let n: u32 = String::from_utf8(line).unwrap().parse().unwrap();
        got.push(n);
        if n == last {
            return got;
        }
    }
}

#[test]
fn a_joiner_that_lags_inside_its_history_loses_its_oldest_history_not_its_connection() {
    // History takes at most half of --max-pending (2 MiB of 4): then 3 MB of live messages
    // the joiner does not read yet push the log past 4 MiB, into its unsent history.
    let server = Server::start(&["--history", "1000000", "--max-pending", "4MiB"]);
    let mut publisher = server.connect();
    fill(&mut publisher, 0, 6000);
    let mut joiner = Client::connect_small_buffer(server.addr);
    // Its own line marks the join (read after it joined); 1000 bytes like the others.
    joiner.send(format!("{:0999}\n", 500_000).as_bytes());
    publisher.skip_past(format!("{:0999}\n", 500_000).as_bytes());
    fill(&mut publisher, 100_000, 3000);
    let got = numbers_until(&mut joiner, 100_000 + 2999);
    let marker = got
        .iter()
        .position(|&n| n == 500_000)
        .expect("its own line");
    let (history, live) = (&got[..marker], &got[marker + 1..]);
    assert!(!history.is_empty(), "some history is left");
    assert_eq!(
        *history.last().unwrap(),
        5999,
        "history ends where it joined"
    );
    for w in history.windows(2) {
        assert_eq!(w[1], w[0] + 1, "history is one run");
    }
    assert_eq!(
        live,
        (100_000..103_000).collect::<Vec<u32>>(),
        "live: all, in order"
    );
    let log = server.log.text();
    assert!(!log.contains("disconnected: slow consumer"), "{log}");
}

/// A joiner that lags only `lag` lines of live traffic (far less than --max-pending) is cut
/// as a slow consumer when it joined with a full history; without history it is not.
fn joiner_lagging(history: &str, lag: u32) -> (usize, bool, String) {
    let server = Server::start(&["--history", history, "--max-pending", "16MiB"]);
    let mut publisher = server.connect();
    fill(&mut publisher, 0, 14000); // ~14 MB: history is as full as --max-pending allows
    let mut joiner = Client::connect_small_buffer(server.addr);
    joiner.send(b"joined\n");
    publisher.skip_past(b"joined\n"); // the joiner is a receiver now
    fill(&mut publisher, 100_000, lag); // live traffic the joiner has not read yet
    let (got, closed) = joiner.read_until_quiet(Duration::from_millis(1500));
    let lines = got.iter().filter(|&&b| b == b'\n').count();
    (lines, closed, server.log.text())
}

#[test]
fn a_history_joiner_that_lags_less_than_max_pending_is_not_cut() {
    let (lines, closed, log) = joiner_lagging("0", 6000);
    eprintln!("no history: {lines} lines, closed {closed}");
    assert!(!closed, "control: a 6 MB lag is no slow consumer\n{log}");
    let (lines, closed, log) = joiner_lagging("1000000", 6000);
    eprintln!("history: {lines} lines, closed {closed}\n{log}");
    assert!(
        !closed,
        "a history joiner that lagged 6 MB (of 16 MiB) was cut\n{log}"
    );
}

/// A WebSocket joiner with a full history: its history is rendered again on top of the log
/// (memory past --max-pending) and the next trim cuts it after a tiny lag.
fn ws_joiner_lagging(history: &str, lag: u32) -> (usize, bool, String, u64, u64) {
    use util::ws::RawHttp;
    let server = Server::start(&[
        "--history",
        history,
        "--max-pending",
        "16MiB",
        "--http",
        "127.0.0.1:0",
    ]);
    let http = server.http_addr();
    let mut publisher = server.connect();
    fill(&mut publisher, 0, 14000);
    let rss_before = server.peak_rss();
    let mut joiner = RawHttp::upgrade_small_buffer(http); // joined once the 101 is read
    fill(&mut publisher, 100_000, lag);
    let rss_after = server.peak_rss();
    joiner
        .stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let (mut got, mut closed) = (0usize, false);
    let mut buf = [0u8; 65536];
    loop {
        match joiner.stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    if closed {
        server.log.wait_for(&["disconnected"]);
    }
    (got, closed, server.log.text(), rss_before, rss_after)
}

#[test]
fn a_websocket_history_joiner_is_not_cut_for_a_small_lag_nor_grows_the_server() {
    let (got, closed, log, b, a) = ws_joiner_lagging("0", 10);
    eprintln!("ws no history: {got} bytes, closed {closed}, peak rss {b} -> {a}");
    assert!(!closed, "control\n{log}");
    let (got, closed, log, b, a) = ws_joiner_lagging("1000000", 10);
    eprintln!("ws history: {got} bytes, closed {closed}, peak rss {b} -> {a}\n{log}");
    assert!(
        !closed,
        "a WebSocket history joiner that lagged 10 KB (of 16 MiB) was cut\n{log}"
    );
    // History and its WebSocket rendition together stay within --max-pending (16 MiB) and
    // a quarter, plus the reading's slack.
    assert!(a.saturating_sub(b) < 24 << 20, "grew {} MiB", (a - b) >> 20);
}
