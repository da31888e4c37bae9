use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

/// Feeds `stream` to a decoder in the given chunk sizes, as successive reads would deliver it,
/// and returns every message decoded (plus what the end of stream yields).
fn decode_in_chunks(
    protocol: Protocol,
    max: usize,
    stream: &[u8],
    chunks: &[usize],
) -> Result<Vec<Bytes>, ProtocolError> {
    let mut decoder = Decoder::new(protocol, max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(msg) = decoder.decode(&mut buf)? {
            out.push(msg);
        }
    }
    while let Some(msg) = decoder.decode_eof(&mut buf)? {
        out.push(msg);
    }
    Ok(out)
}

fn encode_all(protocol: Protocol, payloads: &[Vec<u8>]) -> BytesMut {
    let mut wire = BytesMut::new();
    for p in payloads {
        protocol.encode(p, &mut wire);
    }
    wire
}

#[test]
fn line_splits_on_newline_and_keeps_it() {
    let msgs = decode_in_chunks(Protocol::Line, 100, b"a\nbc\n\nd", &[3]).unwrap();
    assert_eq!(msgs, vec![&b"a\n"[..], b"bc\n", b"\n", b"d\n"]);
}

#[test]
fn line_accepts_any_bytes() {
    let msgs = decode_in_chunks(Protocol::Line, 100, b"\xff\x00\r\n", &[1]).unwrap();
    assert_eq!(msgs, vec![&b"\xff\x00\r\n"[..]]);
}

#[test]
fn line_over_limit_is_rejected_before_its_newline_arrives() {
    let mut d = Decoder::new(Protocol::Line, 4);
    let mut buf = BytesMut::from(&b"abcd"[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"e");
    assert_eq!(
        d.decode(&mut buf),
        Err(ProtocolError::TooLarge { len: 5, max: 4 })
    );
}

#[test]
fn line_at_exactly_the_limit_is_accepted() {
    let msgs = decode_in_chunks(Protocol::Line, 4, b"abcd\n", &[2]).unwrap();
    assert_eq!(msgs, vec![&b"abcd\n"[..]]);
}

#[test]
fn frame_keeps_its_header_and_skips_keepalives() {
    let mut wire = BytesMut::new();
    Protocol::Frame.encode(b"", &mut wire);
    Protocol::Frame.encode(b"hello", &mut wire);
    Protocol::Frame.encode(b"", &mut wire);
    let msgs = decode_in_chunks(Protocol::Frame, 100, &wire, &[5]).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(&msgs[0][..8], &5u64.to_be_bytes());
    assert_eq!(Protocol::Frame.payload(&msgs[0]), b"hello");
}

#[test]
fn frame_over_limit_is_rejected_from_its_header_alone() {
    let mut d = Decoder::new(Protocol::Frame, 10);
    let mut buf = BytesMut::from(&11u64.to_be_bytes()[..]);
    assert_eq!(
        d.decode(&mut buf),
        Err(ProtocolError::TooLarge { len: 11, max: 10 })
    );
    let mut buf = BytesMut::from(&u64::MAX.to_be_bytes()[..]);
    assert!(matches!(
        d.decode(&mut buf),
        Err(ProtocolError::TooLarge { .. })
    ));
}

#[test]
fn frame_cut_short_at_eof_is_an_error() {
    let mut d = Decoder::new(Protocol::Frame, 100);
    let mut buf = BytesMut::from(&10u64.to_be_bytes()[..]);
    buf.extend_from_slice(b"abc");
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(
        d.decode_eof(&mut buf),
        Err(ProtocolError::Truncated { have: 11, need: 18 })
    );
    let mut buf = BytesMut::from(&b"abc"[..]);
    assert_eq!(
        d.decode_eof(&mut buf),
        Err(ProtocolError::Truncated { have: 3, need: 8 })
    );
}

#[test]
fn raw_cuts_chunks_at_the_limit() {
    let mut d = Decoder::new(Protocol::Raw, 3);
    let mut buf = BytesMut::from(&b"abcdefg"[..]);
    let mut out = Vec::new();
    while let Some(m) = d.decode(&mut buf).unwrap() {
        out.push(m);
    }
    assert_eq!(out, vec![&b"abc"[..], b"def", b"g"]);
}

#[test]
fn payload_strips_framing() {
    assert_eq!(Protocol::Line.payload(b"hi\n"), b"hi");
    assert_eq!(Protocol::Raw.payload(b"hi\n"), b"hi\n");
    let mut w = BytesMut::new();
    Protocol::Frame.encode(b"hi", &mut w);
    assert_eq!(Protocol::Frame.payload(&w), b"hi");
}

#[test]
fn protocols_parse_by_name() {
    for p in [Protocol::Raw, Protocol::Line, Protocol::Frame] {
        assert_eq!(p.to_string().parse::<Protocol>(), Ok(p));
    }
    assert!("http".parse::<Protocol>().is_err());
}

fn line_payload() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
        0..64,
    )
}

fn frame_payload() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 1..64)
}

proptest! {
    #[test]
    fn line_any_split_decodes_the_same_messages(
        payloads in proptest::collection::vec(line_payload(), 0..20),
        chunks in proptest::collection::vec(1usize..40, 1..10),
    ) {
        let wire = encode_all(Protocol::Line, &payloads);
        let msgs = decode_in_chunks(Protocol::Line, 64, &wire, &chunks).unwrap();
        let got: Vec<&[u8]> = msgs.iter().map(|m| Protocol::Line.payload(m)).collect();
        let want: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        prop_assert_eq!(got, want);
        // Relayed bytes are exactly the bytes sent.
        prop_assert_eq!(msgs.concat(), wire.to_vec());
    }

    #[test]
    fn frame_any_split_decodes_the_same_messages(
        payloads in proptest::collection::vec(frame_payload(), 0..20),
        chunks in proptest::collection::vec(1usize..40, 1..10),
    ) {
        let wire = encode_all(Protocol::Frame, &payloads);
        let msgs = decode_in_chunks(Protocol::Frame, 64, &wire, &chunks).unwrap();
        let got: Vec<&[u8]> = msgs.iter().map(|m| Protocol::Frame.payload(m)).collect();
        let want: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(msgs.concat(), wire.to_vec());
    }

    #[test]
    fn raw_any_split_relays_the_same_bytes(
        stream in proptest::collection::vec(any::<u8>(), 0..300),
        chunks in proptest::collection::vec(1usize..40, 1..10),
        max in 1usize..50,
    ) {
        let msgs = decode_in_chunks(Protocol::Raw, max, &stream, &chunks).unwrap();
        prop_assert!(msgs.iter().all(|m| !m.is_empty() && m.len() <= max));
        prop_assert_eq!(msgs.concat(), stream);
    }

    #[test]
    fn line_unterminated_tail_gets_a_newline(payload in line_payload()) {
        prop_assume!(!payload.is_empty());
        let msgs = decode_in_chunks(Protocol::Line, 64, &payload, &[7]).unwrap();
        prop_assert_eq!(msgs.len(), 1);
        prop_assert_eq!(Protocol::Line.payload(&msgs[0]), &payload[..]);
    }

    #[test]
    fn oversized_messages_are_rejected(
        extra in 1usize..100,
        max in 1usize..100,
        protocol in prop_oneof![Just(Protocol::Line), Just(Protocol::Frame)],
        chunk in 1usize..50,
    ) {
        let payload = vec![b'x'; max + extra];
        let wire = encode_all(protocol, &[payload]);
        let result = decode_in_chunks(protocol, max, &wire, &[chunk]);
        let rejected = matches!(result, Err(ProtocolError::TooLarge { .. }));
        prop_assert!(rejected);
    }

    #[test]
    fn garbage_never_panics(
        stream in proptest::collection::vec(any::<u8>(), 0..200),
        protocol in prop_oneof![Just(Protocol::Raw), Just(Protocol::Line), Just(Protocol::Frame)],
        chunks in proptest::collection::vec(1usize..40, 1..5),
    ) {
        let _ = decode_in_chunks(protocol, 64, &stream, &chunks);
    }
}
