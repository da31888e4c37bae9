use proptest::prelude::*;

use super::*;
use crate::server::cursor::tests::Sink;
use crate::server::cursor::{Cursor, Flushed};

/// Server frames back into (binary, payload).
fn parse_frames(mut bytes: &[u8]) -> Vec<(bool, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(
            bytes[0] == 0x81 || bytes[0] == 0x82,
            "not a final text/binary frame"
        );
        assert_eq!(bytes[1] & 0x80, 0, "server frames are not masked");
        let (len, head) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        out.push((bytes[0] == 0x82, bytes[head..head + len].to_vec()));
        bytes = &bytes[head + len..];
    }
    out
}

/// The messages in `wire` form, back to back in one block as a read leaves them.
fn log_of(wire: Protocol, msgs: &[(Vec<u8>, bool, u64)]) -> Log {
    let mut block = bytes::BytesMut::new();
    let mut spans = Vec::new();
    for (payload, _, _) in msgs {
        let start = block.len();
        wire.encode(payload, &mut block);
        spans.push((start, block.len() - start));
    }
    let block = block.freeze();
    let mut log = Log::new();
    for ((start, len), (_, binary, origin)) in spans.into_iter().zip(msgs) {
        let mut e = Entry::new(block.clone(), start, len, *origin).unwrap();
        e.set_binary(*binary);
        log.push(e);
    }
    log
}

#[test]
fn each_message_is_one_frame_with_its_opcode() {
    let msgs = vec![
        (b"hello".to_vec(), false, 1),
        (vec![0xff; 300], true, 2),
        (Vec::new(), false, 1),
    ];
    for wire in [Protocol::Line, Protocol::Frame, Protocol::Raw] {
        let msgs: Vec<_> = if wire == Protocol::Raw {
            msgs.iter().filter(|m| !m.0.is_empty()).cloned().collect()
        } else {
            msgs.clone()
        };
        let log = log_of(wire, &msgs);
        let mut frames = Rendition::new(1, wire);
        frames.catch_up(&log);
        let mut sink = Sink::new(vec![Some(usize::MAX)]);
        let mut c = Cursor::at(0);
        assert_eq!(
            c.flush(&frames.log, None, &mut sink).unwrap(),
            Flushed::CaughtUp
        );
        let want: Vec<(bool, Vec<u8>)> = msgs.iter().map(|(p, b, _)| (*b, p.clone())).collect();
        assert_eq!(parse_frames(&sink.got), want, "{wire:?}");
    }
}

proptest! {
    /// Any messages, any partial writes and `WouldBlock`s, with or without the receiver's own
    /// messages left out: the frames received are exactly the messages, whole and in order.
    #[test]
    fn partial_writes_anywhere_give_whole_frames(
        msgs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..400), any::<bool>(), 0u64..3), 1..30),
        script in proptest::collection::vec(proptest::option::of(1usize..700), 1..8),
        frame in any::<bool>(),
        skip in proptest::option::of(0u64..3),
    ) {
        let wire = if frame { Protocol::Frame } else { Protocol::Line };
        let msgs: Vec<_> = msgs
            .into_iter()
            .map(|(p, b, o)| (p.into_iter().filter(|&c| c != b'\n').collect::<Vec<u8>>(), b, o))
            .collect();
        let log = log_of(wire, &msgs);
        // Rendered in two goes, as a loop renders what arrived since its last flush.
        let mut frames = Rendition::new(1, wire);
        frames.catch_up(&log_of(wire, &msgs[..msgs.len() / 2]));
        frames.catch_up(&log);
        let mut script = script;
        script.push(Some(5)); // always some progress
        let mut sink = Sink::new(script);
        let mut c = Cursor::at(0);
        for _ in 0..100_000 {
            if !c.is_behind(&log) {
                break;
            }
            c.flush(&frames.log, skip, &mut sink).unwrap();
        }
        prop_assert!(!c.is_behind(&log));
        let want: Vec<(bool, Vec<u8>)> = msgs
            .iter()
            .filter(|m| Some(m.2) != skip)
            .map(|(p, b, _)| (*b, p.clone()))
            .collect();
        prop_assert_eq!(parse_frames(&sink.got), want);
    }
}

#[test]
fn a_rendition_left_behind_starts_again_at_the_logs_oldest_message() {
    let msgs: Vec<_> = (0..6u8).map(|i| (vec![b'a' + i], false, 0)).collect();
    let mut log = log_of(Protocol::Line, &msgs);
    let mut frames = Rendition::new(1, Protocol::Line);
    frames.catch_up(&log);
    frames.clear(&log);
    assert_eq!((frames.log.first_seq(), frames.log.end_seq()), (6, 6));
    // The log moves on without it, then trims past where it stopped.
    for i in 0..4u8 {
        log.append(bytes::Bytes::from(vec![b'0' + i, b'\n']), 0);
    }
    log.trim_before(8);
    frames.catch_up(&log);
    assert_eq!((frames.log.first_seq(), frames.log.end_seq()), (8, 10));
    let mut sink = Sink::new(vec![Some(usize::MAX)]);
    Cursor::at(8).flush(&frames.log, None, &mut sink).unwrap();
    assert_eq!(
        parse_frames(&sink.got),
        vec![(false, b"2".to_vec()), (false, b"3".to_vec())]
    );
    frames.trim(log.first_seq());
    log.trim_before(10);
    frames.trim(log.first_seq());
    assert_eq!(frames.log.held(), 0);
}
