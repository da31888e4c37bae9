use bytes::BytesMut;
use proptest::prelude::*;

use super::*;
use crate::protocol::Protocol;

/// Feeds `stream` to an inbox in reads of the given sizes, through one scratch block as the
/// loop does, and returns the messages and the most the inbox ever held for a partial.
fn absorb_in_reads(
    protocol: Protocol,
    max: usize,
    stream: &[u8],
    reads: &[usize],
) -> (Result<Vec<Vec<u8>>, ProtocolError>, usize) {
    let mut inbox = Inbox::new(Decoder::new(protocol, max));
    let mut scratch = BytesMut::new();
    let mut spans = Vec::new();
    let mut batch = Vec::new();
    let mut most_held = 0;
    let mut rest = stream;
    let mut sizes = reads.iter().copied().cycle();
    let mut result = Ok(());
    while !rest.is_empty() && result.is_ok() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        // As the server reads: a small partial goes to the front of the scratch block first.
        reserve_for_read(&mut scratch);
        let prefixed = inbox.prefix(&mut scratch);
        scratch.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        result = inbox.absorb(&mut scratch, &mut spans, 7, &mut batch, prefixed);
        assert!(scratch.is_empty(), "scratch keeps a client's bytes");
        most_held = most_held.max(inbox.held());
    }
    if result.is_ok() {
        result = inbox.finish(7, &mut batch);
    }
    let msgs = batch.iter().map(|e| e.bytes().to_vec()).collect();
    assert!(batch.iter().all(|e| e.origin() == 7));
    (result.map(|_| msgs), most_held)
}

fn lines(payloads: &[Vec<u8>]) -> Vec<u8> {
    payloads
        .iter()
        .flat_map(|p| p.iter().copied().chain([b'\n']))
        .collect()
}

fn frames(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut wire = BytesMut::new();
    for p in payloads {
        Protocol::Frame.encode(p, &mut wire);
    }
    wire.to_vec()
}

#[test]
fn a_line_split_over_reads_is_one_message() {
    let (msgs, held) = absorb_in_reads(Protocol::Line, 100, b"x\ny\nzz\n", &[1]);
    assert_eq!(
        msgs.unwrap(),
        vec![b"x\n".to_vec(), b"y\n".to_vec(), b"zz\n".to_vec()]
    );
    assert!(held <= 101);
}

#[test]
fn a_frame_partial_grows_with_what_arrived_never_past_its_length() {
    let wire = frames(&[vec![b'a'; 1000]]);
    let (msgs, held) = absorb_in_reads(Protocol::Frame, 4096, &wire, &[10, 100]);
    assert_eq!(msgs.unwrap().len(), 1);
    assert!(held <= 1008, "held {held} for a frame of 1008 bytes");
    // A header alone claiming a large frame costs what arrived, not what it claims.
    let mut header = frames(&[vec![b'b'; 4000]]);
    header.truncate(20);
    let (_, held) = absorb_in_reads(Protocol::Frame, 4096, &header, &[20]);
    assert!(held <= 40, "a 20-byte partial holds {held} bytes");
}

#[test]
fn keepalives_split_over_reads_are_skipped() {
    let mut wire = frames(&[vec![]]);
    wire.extend(frames(&[b"hi".to_vec(), vec![]]));
    let (msgs, _) = absorb_in_reads(Protocol::Frame, 100, &wire, &[3]);
    assert_eq!(msgs.unwrap(), vec![frames(&[b"hi".to_vec()])]);
}

#[test]
fn messages_before_a_protocol_error_are_kept() {
    let mut inbox = Inbox::new(Decoder::new(Protocol::Line, 4));
    let mut scratch = BytesMut::from(&b"ok\ntoo long\n"[..]);
    let mut batch = Vec::new();
    let err = inbox.absorb(&mut scratch, &mut Vec::new(), 1, &mut batch, false);
    assert!(matches!(err, Err(ProtocolError::TooLarge { .. })));
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].bytes(), b"ok\n");
    assert!(scratch.is_empty());
}

#[test]
fn messages_of_one_read_share_one_block_and_continue_each_other() {
    let mut inbox = Inbox::new(Decoder::new(Protocol::Line, 100));
    let mut scratch = BytesMut::from(&b"a\nb\nc"[..]);
    let mut batch = Vec::new();
    inbox
        .absorb(&mut scratch, &mut Vec::new(), 1, &mut batch, false)
        .unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0].continued_by(2, &batch[1]), Some(4));
    assert_eq!(inbox.held(), 1);
}

fn payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
        0..max,
    )
}

proptest! {
    #[test]
    fn lines_split_anywhere_give_the_same_messages_and_hold_at_most_one_line(
        payloads in proptest::collection::vec(payload(300), 0..40),
        reads in proptest::collection::vec(1usize..400, 1..8),
    ) {
        let stream = lines(&payloads);
        let (msgs, held) = absorb_in_reads(Protocol::Line, 300, &stream, &reads);
        let want: Vec<Vec<u8>> = payloads.iter().map(|p| lines(std::slice::from_ref(p))).collect();
        prop_assert_eq!(msgs.unwrap(), want);
        prop_assert!(held <= 301, "held {} for lines of at most 301 bytes", held);
    }

    #[test]
    fn frames_split_anywhere_give_the_same_messages_and_hold_at_most_one_frame(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..40),
        reads in proptest::collection::vec(1usize..400, 1..8),
    ) {
        let stream = frames(&payloads);
        let (msgs, held) = absorb_in_reads(Protocol::Frame, 300, &stream, &reads);
        let want: Vec<Vec<u8>> = payloads
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| frames(std::slice::from_ref(p)))
            .collect();
        prop_assert_eq!(msgs.unwrap(), want);
        prop_assert!(held <= 308, "held {} for frames of at most 308 bytes", held);
    }
}
