//! `--threads`: several event loops, one order. The rest of the suite runs with any number of
//! loops (`MOB_TEST_THREADS=2`); these tests always use two and check what only several loops
//! can get wrong. Connections are given to the loop with the fewest, so clients connecting one
//! after another alternate between the two loops.

mod util;

use std::io::{ErrorKind, Read};
use std::thread;
use std::time::Instant;

use mio::{Events, Interest, Poll, Token};
use util::{Client, Server};

const PUBLISHERS: usize = 4;
const RECEIVERS: usize = 4;
/// Lines per publisher and round: enough for the loops to sequence batches at the same time
/// (a build that appended a loop's own batch before the others' it had not taken yet failed
/// 2 rounds in 5).
const LINES: usize = 50_000;
const ROUNDS: usize = 5;

/// Publishers on both loops send at once, in writes of varying size (so every loop sequences
/// many batches while the other does too); every client, on either loop, must receive the
/// same sequence, with each publisher's lines in the order sent and none lost.
#[test]
fn clients_on_both_loops_see_one_order() {
    let server = Server::start(&["--threads", "2"]);
    let mut receivers: Vec<Client> = (0..RECEIVERS).map(|_| server.connect()).collect();
    let mut publishers: Vec<Client> = (0..PUBLISHERS).map(|_| server.connect()).collect();
    publishers.last_mut().unwrap().send(b"ready\n");
    for c in receivers.iter_mut().chain(publishers.iter_mut()) {
        c.expect(b"ready\n");
    }
    for _ in 0..ROUNDS {
        (receivers, publishers) = publish_concurrently(receivers, publishers);
    }
    // Both loops read client input: the clients really were spread over them.
    let loops = util::bytes_read_by_threads(server.pid(), "mob");
    assert_eq!(loops.len(), 2, "two event loop threads: {loops:?}");
    for (name, read) in &loops {
        assert!(
            *read > 20_000,
            "thread {name} read only {read} bytes: it served no publisher ({loops:?})"
        );
    }
}

/// One round: every publisher sends [`LINES`] at once while every client reads; checks that
/// all received the same sequence, each publisher's lines in order, none lost.
fn publish_concurrently(
    receivers: Vec<Client>,
    publishers: Vec<Client>,
) -> (Vec<Client>, Vec<Client>) {
    let total = PUBLISHERS * LINES;
    let readers: Vec<_> = receivers
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                let got = c.read_lines(total);
                (c, got)
            })
        })
        .collect();
    let writers: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, mut c)| {
            thread::spawn(move || {
                let mut i = 0;
                while i < LINES {
                    let n = (1 + (i * 7 + p * 13) % 37).min(LINES - i);
                    let chunk: String = (i..i + n).map(|k| format!("p{p}:{k}\n")).collect();
                    c.send(chunk.as_bytes());
                    i += n;
                }
                // Publishers receive everything too (their own lines included).
                let got = c.read_lines(total);
                (c, got)
            })
        })
        .collect();
    let readers: Vec<(Client, Vec<u8>)> = readers
        .into_iter()
        .map(|h| h.join().expect("a receiver failed"))
        .collect();
    let writers: Vec<(Client, Vec<u8>)> = writers
        .into_iter()
        .map(|h| h.join().expect("a publisher failed"))
        .collect();
    let got: Vec<&Vec<u8>> = readers.iter().chain(&writers).map(|(_, g)| g).collect();
    for (i, seq) in got.iter().enumerate() {
        assert!(
            *seq == got[0],
            "client {i} received another order than client 0"
        );
    }
    let mut next = [0usize; PUBLISHERS];
    for line in got[0].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = std::str::from_utf8(line).unwrap();
        let (p, k) = line[1..].split_once(':').unwrap();
        let (p, k): (usize, usize) = (p.parse().unwrap(), k.parse().unwrap());
        assert_eq!(
            k, next[p],
            "publisher {p}: line {k} out of order (or one lost)"
        );
        next[p] += 1;
    }
    assert_eq!(next, [LINES; PUBLISHERS]);
    (
        readers.into_iter().map(|(c, _)| c).collect(),
        writers.into_iter().map(|(c, _)| c).collect(),
    )
}

/// A client joins the order when it is accepted, whichever loop then serves it: a message sent
/// by a client that connected after it is never missed, even when the newcomer is still being
/// handed to its loop while the other loop already reads that message.
#[test]
fn a_client_receives_what_is_sent_after_it_connected_whatever_its_loop() {
    let server = Server::start(&["--threads", "2"]);
    for i in 0..200 {
        newcomers_then_a_sender(&server, i);
    }
}

/// Two or three early clients, then a sender, connecting one after another: they alternate
/// between the loops, so the sender is on either loop and early clients are on both (those on
/// the sender's loop admitted at once, the others handed over). The sender sends at once;
/// everyone must receive it. Returns the line.
fn newcomers_then_a_sender(server: &Server, i: usize) -> String {
    let mut early: Vec<Client> = (0..2 + i % 2).map(|_| server.connect()).collect();
    let mut sender = server.connect();
    let line = format!("round {i}\n");
    sender.send(line.as_bytes());
    for c in early.iter_mut().chain([&mut sender]) {
        c.expect(line.as_bytes());
    }
    line
}

/// The same while both loops are busy with long flush rounds (thousands of receivers, a round
/// spanning several turns), so newcomers join while a round is under way. (The race in which a
/// newcomer's loop has already taken the message before taking it in, and then no input
/// follows, once lost bench W5's sync message for 128 of 10,000 subscribers; this test does
/// not force that interleaving: `a_newcomer_joining_behind_the_log_end_is_visited_without_new_input`
/// in `src/server/fanout/tests.rs` does.)
#[test]
fn newcomers_joining_during_long_rounds_get_what_was_sent_after_they_connected() {
    let server = Server::start(&["--threads", "2"]);
    let mut crowd: Vec<Client> = (0..4_000).map(|_| server.connect()).collect();
    crowd.last_mut().unwrap().send(b"crowd\n");
    for c in &mut crowd {
        c.expect(b"crowd\n");
    }
    let pending: Vec<String> = (0..100)
        .map(|i| newcomers_then_a_sender(&server, i))
        .collect();
    // The crowd got every round's line too, in one order.
    let all: String = pending.concat();
    let mut first: Option<Vec<u8>> = None;
    for c in &mut crowd {
        let got = c.read_lines(pending.len());
        assert_eq!(got.len(), all.len());
        match &first {
            None => first = Some(got),
            Some(f) => assert!(&got == f, "two receivers saw different orders"),
        }
    }
}

/// `--max-connections` counts the connections of every loop, and a close on either loop frees
/// a place.
#[test]
fn max_connections_counts_every_loop() {
    let server = Server::start(&["--threads", "2", "--max-connections", "3"]);
    let mut ok: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    ok[2].send(b"ready\n");
    for c in &mut ok {
        c.expect(b"ready\n");
    }
    let mut extra = server.connect();
    assert!(
        extra.read_to_close().is_empty(),
        "a fourth connection was served"
    );
    // ok[1] is on the second loop: closing it frees a place for a new client. (Reset, so the
    // server logs it and the test knows when it was closed.)
    let gone = ok.remove(1);
    let peer = gone.local_addr().to_string();
    gone.reset();
    server.log.wait_for(&[&peer, "disconnected"]);
    let mut again = server.connect();
    again.send(b"in again\n");
    for c in ok.iter_mut().chain([&mut again]) {
        c.expect(b"in again\n");
    }
}

/// A loop in a long flush round (a thousand receivers: four steps of writes) takes input from
/// another loop every turn but trims its log once a round; reading must wait for that trim, as
/// it waits for its own loop's with one loop. Otherwise a round collects many rounds' worth of
/// input and its trim to `--max-pending` overtakes receivers that were caught up when it
/// began: a build that stopped waiting once the busy loop had *taken* the input cut exactly
/// 256 healthy receivers here (and under `--slow-consumer drop` made them skip messages).
#[test]
fn receivers_on_a_busy_loop_are_not_cut_by_a_publisher_on_another() {
    const RECEIVERS: usize = 1_000;
    let server = Server::start(&[
        "--threads",
        "2",
        "--max-pending",
        "128KiB",
        "--no-echo-self",
    ]);
    // Connections alternate between the loops: keep those of the second loop, and end the
    // others (waiting until the server has closed them, so the counts are exact).
    let mut all: Vec<Client> = (0..2 * RECEIVERS).map(|_| server.connect()).collect();
    let mut receivers = Vec::with_capacity(RECEIVERS);
    let mut leaving = Vec::with_capacity(RECEIVERS);
    for (i, c) in all.drain(..).enumerate() {
        if i % 2 == 1 {
            receivers.push(c);
        } else {
            c.stream.shutdown(std::net::Shutdown::Write).unwrap();
            leaving.push(c);
        }
    }
    for mut c in leaving {
        c.read_to_close();
    }
    // The loop with the fewest connections: the first, alone with the publisher.
    let mut publisher = server.connect();
    publisher.send(b"ready\n");
    for c in &mut receivers {
        c.expect(b"ready\n");
    }
    let line = [b"x".repeat(99), b"\n".to_vec()].concat();
    let lines = (1 << 20) / line.len();
    let flood = thread::spawn(move || {
        let chunk = line.repeat(650);
        for _ in 0..lines / 650 {
            publisher.send(&chunk);
        }
        publisher
    });
    let total = lines / 650 * 650 * 100;
    // One thread reads all receivers as they become readable.
    let mut poll = Poll::new().unwrap();
    let mut streams: Vec<mio::net::TcpStream> = receivers
        .into_iter()
        .map(|c| {
            c.stream.set_nonblocking(true).unwrap();
            mio::net::TcpStream::from_std(c.stream)
        })
        .collect();
    for (i, s) in streams.iter_mut().enumerate() {
        poll.registry()
            .register(s, Token(i), Interest::READABLE)
            .unwrap();
    }
    let mut got = vec![0usize; RECEIVERS];
    let (mut done, mut cut) = (0, 0);
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 1 << 20];
    let deadline = Instant::now() + util::DEADLINE;
    while done + cut < RECEIVERS {
        assert!(
            Instant::now() < deadline,
            "{done} done, {cut} cut at the deadline"
        );
        poll.poll(&mut events, Some(util::DEADLINE)).unwrap();
        for event in &events {
            let i = event.token().0;
            if got[i] == usize::MAX {
                continue;
            }
            loop {
                match streams[i].read(&mut buf) {
                    Ok(0) => {
                        cut += 1;
                        got[i] = usize::MAX;
                        break;
                    }
                    Ok(n) => {
                        got[i] += n;
                        if got[i] == total {
                            done += 1;
                            got[i] = usize::MAX;
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        cut += 1;
                        got[i] = usize::MAX;
                        break;
                    }
                }
            }
        }
    }
    drop(flood.join().unwrap());
    assert_eq!(
        cut, 0,
        "{cut} healthy receivers were cut off ({done} got everything)"
    );
}

/// SIGTERM reaches loop 0 while a client of loop 1 publishes without pause: the shutdown is
/// one cut of the order. A reader on loop 0 must be sent exactly what the server says it
/// relayed, a prefix of the publisher's lines, before its end of stream (loop 0 must take in
/// what loop 1 sequenced before the cut before it half-closes its clients). The count in the
/// "stopped" line is the server's, not a sum over loops.
#[test]
fn sigterm_cuts_the_order_once_for_every_loop() {
    for round in 0..20 {
        let mut server = Server::start(&["--threads", "2", "--no-echo-self"]);
        let mut reader = server.connect(); // loop 0
        let mut publisher = server.connect(); // loop 1
        publisher.send(b"ready\n");
        reader.expect(b"ready\n");
        let typing = util::Typist::start(&publisher, |i| format!("{i}\n"));
        // Let some lines through first: the reader sees the first hundred.
        for i in 0..100 {
            reader.expect(format!("{i}\n").as_bytes());
        }
        server.signal(libc::SIGTERM);
        let rest = reader.read_to_eof();
        typing.stop();
        drop(publisher);
        drop(reader);
        assert!(server.wait_exit(util::DEADLINE).success());
        let got = 100
            + rest
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
        for (k, line) in rest
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            assert_eq!(
                line,
                (100 + k).to_string().as_bytes(),
                "round {round}: out of order"
            );
        }
        let stopped = server.log.wait_for(&["stopped:", "messages relayed"]);
        let relayed: usize = stopped
            .split(" messages relayed")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {stopped:?}"));
        // Relayed: "ready" and the lines; the reader got all but "ready".
        assert_eq!(
            got + 1,
            relayed,
            "round {round}: the reader got {got} lines of {} relayed",
            relayed - 1
        );
    }
}
