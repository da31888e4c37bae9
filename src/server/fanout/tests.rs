use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

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
    let mut fanout = Fanout::new(t0);
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
    let mut fanout = Fanout::new(t0);
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
    let mut fanout = Fanout::new(t0);
    fanout.last_round = (t0, Duration::from_secs(1));
    fanout.visit_all_soon();
    assert_eq!(fanout.next_round_at(), Some(t0));
    let mut fanout = Fanout::new(t0);
    fanout.woken.push((3, 9));
    assert_eq!(fanout.next_round_at(), Some(t0));
}
