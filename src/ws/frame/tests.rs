use proptest::prelude::*;

use super::*;

/// A client frame: masked with `mask`, as a browser sends it.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Received>, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(r) = decoder.decode(&mut buf)? {
        out.push(r);
    }
    Ok(out)
}

fn text(s: &str) -> Received {
    Received::Message {
        text: true,
        payload: Bytes::copy_from_slice(s.as_bytes()),
    }
}

#[test]
fn a_masked_text_frame_is_one_message() {
    let mut d = Decoder::new(1024);
    let got = decode_all(&mut d, &client_frame(true, 1, b"Hello", MASK)).unwrap();
    assert_eq!(got, [text("Hello")]);
}

#[test]
fn fragments_with_a_ping_between_them_make_one_message() {
    let mut wire = client_frame(false, 1, b"Hel", MASK);
    wire.extend(client_frame(true, 9, b"p", MASK));
    wire.extend(client_frame(false, 0, b"l", MASK));
    wire.extend(client_frame(true, 0, b"o", MASK));
    let got = decode_all(&mut Decoder::new(1024), &wire).unwrap();
    assert_eq!(
        got,
        [Received::Ping(Bytes::from_static(b"p")), text("Hello")]
    );
}

#[test]
fn lengths_of_two_and_eight_bytes_are_read() {
    for n in [125, 126, 65_535, 65_536, 70_000] {
        let payload = vec![b'x'; n];
        let got = decode_all(
            &mut Decoder::new(1 << 20),
            &client_frame(true, 2, &payload, MASK),
        )
        .unwrap();
        assert_eq!(
            got,
            [Received::Message {
                text: false,
                payload: Bytes::from(payload)
            }],
            "length {n}"
        );
    }
}

#[test]
fn each_bad_input_names_its_close_code() {
    let cases: Vec<(Vec<u8>, u16)> = vec![
        // Not masked.
        (vec![0x81, 0x02, b'h', b'i'], close::PROTOCOL),
        // Reserved bit.
        (client_frame(true, 0x40 | 1, b"x", MASK), close::PROTOCOL),
        // Reserved opcodes.
        (client_frame(true, 3, b"x", MASK), close::PROTOCOL),
        (client_frame(true, 0xB, b"", MASK), close::PROTOCOL),
        // A control frame fragmented, or too long.
        (client_frame(false, 9, b"", MASK), close::PROTOCOL),
        (client_frame(true, 9, &[0; 126], MASK), close::PROTOCOL),
        // Continuation with nothing to continue.
        (client_frame(true, 0, b"x", MASK), close::PROTOCOL),
        // A 64-bit length with its most significant bit set (not a size at all).
        (
            [0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4].to_vec(),
            close::PROTOCOL,
        ),
        // Close codes that must never be sent, or are not defined.
        (
            client_frame(true, 8, &1005u16.to_be_bytes(), MASK),
            close::PROTOCOL,
        ),
        (
            client_frame(true, 8, &1015u16.to_be_bytes(), MASK),
            close::PROTOCOL,
        ),
        (
            client_frame(true, 8, &5000u16.to_be_bytes(), MASK),
            close::PROTOCOL,
        ),
        // Not UTF-8.
        (
            client_frame(true, 1, &[0xff, 0xfe], MASK),
            close::INVALID_DATA,
        ),
        // Over --max-message (16 here), also announced before any payload arrives.
        (client_frame(true, 2, &[0; 17], MASK), close::TOO_BIG),
        (
            client_frame(true, 2, &[0; 17], MASK)[..6].to_vec(),
            close::TOO_BIG,
        ),
        // Close frames: one byte, an invalid code, a reason not UTF-8.
        (client_frame(true, 8, &[3], MASK), close::PROTOCOL),
        (client_frame(true, 8, &[0x03, 0xEC], MASK), close::PROTOCOL), // 1004
        (
            client_frame(true, 8, &[0x03, 0xE8, 0xff], MASK),
            close::INVALID_DATA,
        ),
    ];
    for (wire, code) in cases {
        let got = decode_all(&mut Decoder::new(16), &wire);
        assert_eq!(got.map_err(|e| e.code), Err(code), "{wire:02x?}");
    }
    // A new message while a fragmented one is open.
    let mut wire = client_frame(false, 1, b"a", MASK);
    wire.extend(client_frame(true, 1, b"b", MASK));
    assert_eq!(
        decode_all(&mut Decoder::new(16), &wire).map_err(|e| e.code),
        Err(close::PROTOCOL)
    );
    // Fragments that add up to more than --max-message.
    let mut wire = client_frame(false, 2, &[0; 10], MASK);
    wire.extend(client_frame(true, 0, &[0; 10], MASK));
    assert_eq!(
        decode_all(&mut Decoder::new(16), &wire).map_err(|e| e.code),
        Err(close::TOO_BIG)
    );
}

#[test]
fn invalid_text_fails_at_the_fragment_that_makes_it_so() {
    // Autobahn 6.4.1: the second fragment is not UTF-8; the third is never needed.
    let mut wire = client_frame(false, 1, "κόσμε".as_bytes(), MASK);
    wire.extend(client_frame(false, 0, b"\xce\xbd\xed\xa0\x80", MASK));
    assert_eq!(
        decode_all(&mut Decoder::new(1024), &wire).map_err(|e| e.code),
        Err(close::INVALID_DATA)
    );
    // Autobahn 6.4.2: a fragment ending in a character cut short that can no longer be valid.
    let wire = client_frame(false, 1, b"ok\xf4\x90", MASK);
    assert_eq!(
        decode_all(&mut Decoder::new(1024), &wire).map_err(|e| e.code),
        Err(close::INVALID_DATA)
    );
}

#[test]
fn characters_cut_by_fragments_are_whole_again() {
    let smile = "😀".as_bytes();
    // "é" cut after its first byte, "😀" after its first and third.
    let mut wire = client_frame(false, 1, b"h\xc3", MASK);
    wire.extend(client_frame(
        false,
        0,
        &[b"\xa9".as_slice(), &smile[..1]].concat(),
        MASK,
    ));
    wire.extend(client_frame(false, 0, &smile[1..3], MASK));
    wire.extend(client_frame(true, 0, &smile[3..], MASK));
    let got = decode_all(&mut Decoder::new(1024), &wire).unwrap();
    assert_eq!(got, [text("hé😀")]);
    // A character still cut when the message ends is not text.
    let mut wire = client_frame(false, 1, b"a\xc3", MASK);
    wire.extend(client_frame(true, 0, b"", MASK));
    assert_eq!(
        decode_all(&mut Decoder::new(1024), &wire).map_err(|e| e.code),
        Err(close::INVALID_DATA)
    );
}

#[test]
fn close_frames_are_read_with_or_without_a_code() {
    let got = decode_all(&mut Decoder::new(16), &client_frame(true, 8, b"", MASK)).unwrap();
    assert_eq!(got, [Received::Close { code: None }]);
    let got = decode_all(
        &mut Decoder::new(16),
        &client_frame(true, 8, &[0x03, 0xE8, b'o', b'k'], MASK),
    )
    .unwrap();
    assert_eq!(got, [Received::Close { code: Some(1000) }]);
    // Registered since RFC 6455 (service restart, try again later, bad gateway).
    for code in [1012u16, 1013, 1014] {
        let frame = client_frame(true, 8, &code.to_be_bytes(), MASK);
        let got = decode_all(&mut Decoder::new(16), &frame).unwrap();
        assert_eq!(got, [Received::Close { code: Some(code) }]);
    }
}

#[test]
fn an_unfinished_message_holds_its_own_bytes_not_the_read_buffer() {
    let mut decoder = Decoder::new(1 << 20);
    let mut buf = BytesMut::with_capacity(256 * 1024);
    buf.extend_from_slice(&client_frame(false, 1, b"x", MASK));
    // And the start of the next fragment, as a read may leave it.
    buf.extend_from_slice(&client_frame(true, 0, b"hello", MASK)[..4]);
    assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    // The fragment is a copy: nothing else refers to the read buffer's block.
    assert!(
        buf.freeze().is_unique(),
        "the fragment pins the read buffer"
    );
    assert!(decoder.held() < 64, "holds {} bytes", decoder.held());
}

#[test]
fn server_headers_have_the_shortest_length_form() {
    let (h, n) = server_header(data_opcode(true), 5);
    assert_eq!(&h[..n], &[0x81, 5]);
    let (h, n) = server_header(data_opcode(false), 300);
    assert_eq!(&h[..n], &[0x82, 126, 0x01, 0x2c]);
    let (h, n) = server_header(data_opcode(false), 70_000);
    assert_eq!(&h[..n], &[0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
    assert_eq!(close_frame_bytes(1000), [0x88, 2, 0x03, 0xE8]);
}

#[test]
fn unmasking_eight_at_a_time_matches_byte_by_byte() {
    for n in 0..40 {
        let plain: Vec<u8> = (0..n as u8).collect();
        let mut masked: Vec<u8> = plain
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4])
            .collect();
        unmask(&mut masked, MASK);
        assert_eq!(masked, plain);
    }
}

proptest! {
    /// A text message cut into fragments anywhere (inside characters too) is accepted exactly
    /// when the whole is UTF-8.
    #[test]
    fn fragmented_text_is_valid_exactly_when_the_whole_is(
        payload in prop_oneof![
            any::<String>().prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..40),
        ],
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut ends: Vec<usize> = cuts.iter().map(|c| c.index(payload.len() + 1)).collect();
        ends.sort();
        ends.push(payload.len());
        let mut wire = Vec::new();
        let mut from = 0;
        for (i, &to) in ends.iter().enumerate() {
            let opcode = if i == 0 { 1 } else { 0 };
            wire.extend(client_frame(i + 1 == ends.len(), opcode, &payload[from..to], MASK));
            from = to;
        }
        let got = decode_all(&mut Decoder::new(1 << 20), &wire);
        match std::str::from_utf8(&payload) {
            Ok(s) => prop_assert_eq!(got, Ok(vec![text(s)])),
            Err(_) => prop_assert_eq!(got.map_err(|e| e.code), Err(close::INVALID_DATA)),
        }
    }

    /// Messages fragmented at random, pings between fragments, the stream cut at random
    /// points: the same messages and pings, in order, whatever the cuts.
    #[test]
    fn splitting_the_stream_anywhere_gives_the_same_messages(
        msgs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..300), 1usize..4, any::<bool>()), 1..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        mask in any::<[u8; 4]>(),
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for (payload, parts, ping) in &msgs {
            let size = payload.len().div_ceil(*parts).max(1);
            let chunks: Vec<&[u8]> = if payload.is_empty() { vec![&[][..]] } else { payload.chunks(size).collect() };
            if *ping {
                want.push(Received::Ping(Bytes::from_static(b"ping")));
            }
            for (i, chunk) in chunks.iter().enumerate() {
                let opcode = if i == 0 { 2 } else { 0 };
                let last = i + 1 == chunks.len();
                // The ping goes between the first two fragments, or before a lone frame.
                if *ping && i == 0 && last {
                    wire.extend(client_frame(true, 9, b"ping", mask));
                }
                wire.extend(client_frame(last, opcode, chunk, mask));
                if *ping && i == 0 && !last {
                    wire.extend(client_frame(true, 9, b"ping", mask));
                }
            }
            want.push(Received::Message { text: false, payload: Bytes::from(payload.clone()) });
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.sort();
        let mut decoder = Decoder::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut from = 0;
        for to in points.into_iter().chain([wire.len()]) {
            buf.extend_from_slice(&wire[from..to]);
            from = to;
            while let Some(r) = decoder.decode(&mut buf).unwrap() {
                got.push(r);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #[test]
    fn data_headers_are_what_tungstenite_formats(
        text in any::<bool>(),
        len in prop_oneof![0usize..300, 65_000usize..70_000, any::<u32>().prop_map(|n| n as usize)],
    ) {
        prop_assert_eq!(data_header(text, len), server_header(data_opcode(text), len));
    }
}
