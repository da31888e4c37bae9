use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::{Interest, Token};

use super::*;
use crate::server::connection::Transport;

#[test]
fn a_receiver_that_joins_during_a_round_keeps_what_it_needs() {
    // The round visited a receiver at 5, which then left; one joined at 7 into the slot the
    // round had passed. The trim must keep 7 on, not everything (u64::MAX).
    let mut round = Round::new(vec![(0, 1)], true, Instant::now());
    round.visited(5);
    round.joined(7);
    assert_eq!(round.trim_point(9), 5);
    let mut round = Round::new(vec![(0, 1)], true, Instant::now());
    round.joined(7);
    assert_eq!(
        round.trim_point(9),
        7,
        "a round whose visited receivers all left"
    );
    let round = Round::new(Vec::new(), true, Instant::now());
    assert_eq!(
        round.trim_point(9),
        9,
        "nobody at all: trim to the end, no further"
    );
}

#[test]
fn joining_during_a_round_is_counted_by_the_fanout() {
    let t0 = Instant::now();
    let mut fanout = Fanout::new(t0, 1, Protocol::Line);
    fanout.log.append(Bytes::from_static(b"a\n"), 1);
    fanout.round = Some(Round::new(Vec::new(), true, t0));
    // What `join` does to the round, without a socket.
    let end = fanout.log.end_seq();
    if let Some(round) = &mut fanout.round {
        round.joined(end);
    }
    fanout.log.append(Bytes::from_static(b"b\n"), 1);
    let round = fanout.round.as_ref().unwrap();
    fanout
        .log
        .trim_before(round.trim_point(fanout.log.end_seq()));
    assert_eq!(fanout.log.first_seq(), 1, "b, sent after the join, is kept");
}

#[test]
fn small_rounds_wait_for_more_input_but_not_longer_than_the_ceiling() {
    let t0 = Instant::now();
    let mut fanout = Fanout::new(t0, 1, Protocol::Line);
    assert_eq!(fanout.next_round_at(), None, "nothing new: no round");
    fanout.last_round = (t0, Duration::from_micros(10));
    fanout.log.append(Bytes::from_static(b"a\n"), 1);
    assert_eq!(
        fanout.next_round_at(),
        Some(t0 + Duration::from_micros(10) * FLUSH_SPACING)
    );
    fanout.last_round = (t0, Duration::from_secs(1));
    assert_eq!(fanout.next_round_at(), Some(t0 + MAX_FLUSH_DELAY));
    fanout
        .log
        .append(Bytes::from(vec![b'x'; COALESCE_BYTES as usize]), 1);
    assert_eq!(fanout.next_round_at(), Some(t0), "much is new: at once");
}

#[test]
fn woken_receivers_or_a_requested_full_round_are_due_at_once() {
    let t0 = Instant::now();
    let mut fanout = Fanout::new(t0, 1, Protocol::Line);
    fanout.last_round = (t0, Duration::from_secs(1));
    fanout.visit_all_soon();
    assert_eq!(fanout.next_round_at(), Some(t0));
    let mut fanout = Fanout::new(t0, 1, Protocol::Line);
    fanout.woken.push((3, 9));
    assert_eq!(fanout.next_round_at(), Some(t0));
}

/// Accepted loopback connections as the server holds them, joined to `fanout` at its end.
fn connections(
    fanout: &mut Fanout,
    poll: &mio::Poll,
    ids: std::ops::Range<u64>,
) -> (Slab<Connection>, Vec<std::net::TcpStream>) {
    let end = fanout.log.end_seq();
    connections_joining_at(fanout, poll, ids, end)
}

/// The same, joined at `join_at` (where the order ended when they were accepted).
fn connections_joining_at(
    fanout: &mut Fanout,
    poll: &mio::Poll,
    ids: std::ops::Range<u64>,
    join_at: u64,
) -> (Slab<Connection>, Vec<std::net::TcpStream>) {
    use crate::protocol::{Decoder, Protocol};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut conns = Slab::new();
    let mut clients = Vec::new();
    for id in ids {
        clients.push(std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap());
        let (socket, peer) = listener.accept().unwrap();
        socket.set_nonblocking(true).unwrap();
        let mut socket = mio::net::TcpStream::from_std(socket);
        let entry = conns.vacant_entry();
        let key = entry.key();
        poll.registry()
            .register(&mut socket, Token(key), Interest::READABLE)
            .unwrap();
        let decoder = Decoder::new(Protocol::Line, 1024);
        let conn = entry.insert(Connection::new(
            socket,
            peer,
            id,
            decoder,
            Transport::Tcp,
            Instant::now(),
        ));
        fanout.join(key, conn, join_at);
    }
    (conns, clients)
}

/// One step of the fan-out (starting a round if none is under way); returns the connections
/// it would close.
fn step(
    fanout: &mut Fanout,
    conns: &mut Slab<Connection>,
    poll: &mio::Poll,
    policy: Policy,
) -> Vec<(usize, DisconnectReason)> {
    let mut closing = Vec::new();
    let mut limit = LogLimit::default();
    let registry = poll.registry();
    fanout.step(
        Instant::now(),
        conns,
        registry,
        policy,
        &mut limit,
        &mut closing,
    );
    closing
}

fn policy() -> Policy {
    Policy {
        echo_self: true,
        max_pending: 1 << 20,
        slow_consumer: SlowConsumerPolicy::Disconnect,
        draining: false,
        join_floor: u64::MAX,
    }
}

/// The defect from the issue, through `Fanout::join` and `Fanout::step`: a round begins, the
/// only receiver it was to visit leaves, another joins (into the freed slot) and a message is
/// sent to it. The round ends without having visited anyone: its trim must keep that message.
#[test]
fn a_receiver_joining_a_round_whose_receivers_all_left_keeps_its_messages() {
    let poll = mio::Poll::new().unwrap();
    let t0 = Instant::now();
    let mut fanout = Fanout::new(t0, 1, Protocol::Line);
    let (mut conns, _clients) = connections(&mut fanout, &poll, 0..1);
    fanout.log.append(Bytes::from_static(b"before\n"), 9);
    // Start the round (it visits the one receiver), without letting it finish yet.
    fanout.start_round(&mut conns, t0);
    let leaving = conns.remove(0);
    fanout.leave((leaving.member_index, leaving.id), false, &mut conns);
    drop(leaving);
    let (mut joined, _more_clients) = connections(&mut fanout, &poll, 1..2);
    // The new receiver took slot 0 of its own slab; move it into the round's slab.
    let conn = joined.remove(0);
    let key = conns.insert(conn);
    assert_eq!(key, 0, "the freed slot is reused");
    fanout.log.append(Bytes::from_static(b"after\n"), 9);
    let closing = step(&mut fanout, &mut conns, &poll, policy());
    assert!(!fanout.in_round());
    let newcomer = &conns[0];
    assert!(
        !newcomer.cursor.has_fallen_off(&fanout.log),
        "the trim took what the newcomer needs: log starts at {}, it needs {}",
        fanout.log.first_seq(),
        newcomer.cursor.next_seq()
    );
    assert!(closing.is_empty());
}

/// With several loops a connection joins where the order ended when it was accepted, which its
/// loop's log may have passed by the time it is taken in (the trim keeps those messages for it:
/// `join_floor`). It must be sent them without waiting for new input, which may never come.
#[test]
fn a_newcomer_joining_behind_the_log_end_is_visited_without_new_input() {
    let poll = mio::Poll::new().unwrap();
    let t0 = Instant::now();
    let mut fanout = Fanout::new(t0, 2, Protocol::Line);
    fanout.log.append(Bytes::from_static(b"sync\n"), 9);
    let waiting = Policy {
        join_floor: 0,
        ..policy()
    };
    // A full round over no one: the trim keeps the message for the connection waiting to join.
    let mut conns = Slab::new();
    assert!(step(&mut fanout, &mut conns, &poll, waiting).is_empty());
    assert!(!fanout.in_round());
    assert_eq!(fanout.log.first_seq(), 0, "the join floor kept the message");
    let (mut conns, mut clients) = connections_joining_at(&mut fanout, &poll, 0..1, 0);
    assert!(
        fanout.next_round_at().is_some(),
        "a newcomer owed a message is left waiting for input that may never come"
    );
    let closing = step(&mut fanout, &mut conns, &poll, policy());
    assert!(closing.is_empty());
    assert_eq!(conns[0].cursor.next_seq(), 1);
    let mut got = [0u8; 5];
    clients[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    std::io::Read::read_exact(&mut clients[0], &mut got).unwrap();
    assert_eq!(&got, b"sync\n");
}

/// With a WebSocket receiver the log and its rendition are trimmed together to --max-pending:
/// a receiver behind by less than that (both counted) is not cut, one further behind is, and
/// what is left fits; the rendition keeps only what WebSocket receivers still need. (Found by
/// review: the rendition's size before the trim was taken off the log's share, so receivers
/// were cut at about a quarter of --max-pending; and it kept frames no WebSocket receiver
/// needed.)
#[test]
fn log_and_rendition_are_trimmed_together_to_max_pending() {
    use crate::server::web::WsState;
    let poll = mio::Poll::new().unwrap();
    let t0 = Instant::now();
    let mut fanout = Fanout::new(t0, 1, Protocol::Line);
    let (mut conns, clients) = connections(&mut fanout, &poll, 0..3);
    // Receiver 1 becomes a WebSocket receiver (as an upgrade does).
    fanout.leave((conns[1].member_index, 1), false, &mut conns);
    let ws = WsState::new(1 << 20, Protocol::Line, "x", bytes::BytesMut::new());
    conns[1].transport = Transport::Ws(Box::new(ws));
    fanout.join(1, &mut conns[1], 0);
    let mut line = vec![b'x'; 999];
    line.push(b'\n');
    for _ in 0..700 {
        fanout.log.append(Bytes::from(line.clone()), 9);
    }
    // Rendered as far as the WebSocket receiver was written before it blocked at 500.
    fanout.rendition.catch_up(&fanout.log);
    let at = [100, 500, 300]; // TCP, WebSocket, TCP
    for (key, seq) in at.into_iter().enumerate() {
        conns[key].blocked = true;
        conns[key].cursor = Cursor::at(seq);
    }
    let mut closing = Vec::new();
    for _ in 0..1000 {
        closing.extend(step(&mut fanout, &mut conns, &poll, policy()));
        if !fanout.in_round() {
            break;
        }
    }
    let rendered = fanout.rendition.log.held();
    let held = fanout.log.held() + rendered;
    let cut: Vec<usize> = closing.iter().map(|c| c.0).collect();
    // Receiver 0 needs 600 lines of log (827 KB as counted) and 200 frames (276 KB): more
    // than 1 MiB together, though the log alone would fit. Receiver 2 needs 551 + 276 KB.
    assert_eq!(
        cut,
        vec![0],
        "only the receiver further behind than --max-pending is cut"
    );
    assert!(
        held <= policy().max_pending,
        "log and rendition hold {held} bytes"
    );
    assert_eq!(
        fanout.rendition.log.first_seq(),
        500,
        "frames nobody needs were kept"
    );
    assert!(rendered > 0, "the rendition was made and counted");
    // The last WebSocket receiver leaving lets go of the rendition.
    fanout.leave((conns[1].member_index, 1), true, &mut conns);
    assert_eq!(
        fanout.rendition.log.held(),
        0,
        "the rendition outlived its receivers"
    );
    drop((clients, conns));
}
