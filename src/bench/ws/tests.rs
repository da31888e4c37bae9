//! The bench's WebSocket client against what a server sends, and against mob's own server-side
//! codec (`crate::ws`): each side reads what the other writes.

use bytes::BytesMut;
use tungstenite::protocol::frame::coding::{Control, OpCode};

use super::*;
use crate::bench::payload::{self, Stamp};
use crate::ws::frame::{close_frame_bytes, data_opcode, server_header, Decoder, Received};
use crate::ws::handshake::{self, Origins, Parsed, Route, Status};

/// The 101 mob's server answers the bench's request with.
fn upgrade_answer() -> Vec<u8> {
    let mut request = BytesMut::new();
    upgrade_request("127.0.0.1:8080", "/ws", &mut request);
    let Parsed::Done {
        route: Route::Upgrade { accept },
        head_len,
    } = handshake::parse(&request, &Origins::default(), None)
    else {
        panic!("mob refuses the bench's upgrade request");
    };
    assert_eq!(head_len, request.len());
    handshake::upgrade_response(&accept)
}

/// An unmasked server frame carrying `payload`.
fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let (header, used) = server_header(opcode, payload.len());
    let mut frame = header[..used].to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// Parses all of `stream` handed over one byte at a time, as reads that split it anywhere
/// would: every item, with its bytes.
fn parse_bytewise(stream: &[u8]) -> Vec<(Item, Vec<u8>)> {
    let mut items = Vec::new();
    let (mut start, mut end) = (0, 0);
    while end < stream.len() {
        end += 1;
        while let Some((used, item)) = parse(&stream[start..end]).unwrap() {
            let part = match &item {
                Item::Message(r) | Item::Ping(r) => stream[start..end][r.clone()].to_vec(),
                _ => Vec::new(),
            };
            items.push((item, part));
            start += used;
        }
    }
    assert_eq!(start, stream.len(), "all of the stream is parsed");
    items
}

#[test]
fn the_upgrade_request_is_one_mob_accepts_without_an_origin() {
    let mut request = BytesMut::new();
    upgrade_request("localhost:9000", "/chat?room=1", &mut request);
    let text = String::from_utf8(request.to_vec()).unwrap();
    assert!(text.starts_with("GET /chat?room=1 HTTP/1.1\r\nHost: localhost:9000\r\n"));
    assert!(text.ends_with("\r\n\r\n"));
    assert!(!text.to_ascii_lowercase().contains("origin"));
    assert!(!upgrade_answer().is_empty());
}

#[test]
fn the_101_and_the_frames_behind_it_parse_split_at_every_byte() {
    let short = vec![b'a'; 125];
    let medium = vec![b'b'; 126];
    let long = vec![b'c'; 70_000];
    let mut stream = upgrade_answer();
    stream.extend(server_frame(data_opcode(true), &short));
    stream.extend(server_frame(
        OpCode::Control(Control::Ping),
        b"are you there",
    ));
    stream.extend(server_frame(data_opcode(false), &medium));
    stream.extend(server_frame(OpCode::Control(Control::Pong), b""));
    stream.extend(server_frame(data_opcode(true), &long));
    // 2, 4 and 10 byte headers.
    assert_eq!(server_header(data_opcode(true), 125).1, 2);
    assert_eq!(server_header(data_opcode(true), 126).1, 4);
    assert_eq!(server_header(data_opcode(true), 70_000).1, 10);
    let items = parse_bytewise(&stream);
    let kinds: Vec<&Item> = items.iter().map(|(item, _)| item).collect();
    assert!(matches!(
        kinds[..],
        [
            Item::Upgraded,
            Item::Message(_),
            Item::Ping(_),
            Item::Message(_),
            Item::Other,
            Item::Message(_)
        ]
    ));
    assert_eq!(items[1].1, short);
    assert_eq!(items[2].1, b"are you there");
    assert_eq!(items[3].1, medium);
    assert_eq!(items[5].1, long);
}

#[test]
fn a_refused_upgrade_is_an_error_naming_the_status() {
    let answer = handshake::error_response(Status::NotFound, "no such path");
    let err = parse(&answer).unwrap_err();
    assert!(err.contains("404"), "{err}");
    let wrong_key = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n";
    assert!(parse(wrong_key).unwrap_err().contains("Accept"));
    let no_upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    assert!(parse(no_upgrade).unwrap_err().contains("Upgrade"));
    let rfc_example = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                        Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    let used = rfc_example.len();
    assert_eq!(parse(rfc_example).unwrap(), Some((used, Item::Upgraded)));
}

#[test]
fn a_close_from_the_server_is_an_error_with_its_code() {
    let err = parse(&close_frame_bytes(1001)).unwrap_err();
    assert!(err.contains("closed") && err.contains("1001"), "{err}");
    assert_eq!(parse(&close_frame_bytes(1001)[..3]).unwrap(), None);
}

#[test]
fn what_a_server_must_not_send_is_an_error() {
    let masked = [0x81, 0x80 | 1, 1, 2, 3, 4, b'x'];
    assert!(parse(&masked).unwrap_err().contains("masked"));
    let reserved_bit = [0xc1, 1, b'x'];
    assert!(parse(&reserved_bit).unwrap_err().contains("reserved"));
    let first_fragment = [0x01, 1, b'x'];
    assert!(parse(&first_fragment).unwrap_err().contains("fragmented"));
    let continuation = [0x80, 1, b'x'];
    assert!(parse(&continuation).unwrap_err().contains("fragmented"));
    let reserved_opcode = [0x83, 0];
    assert!(parse(&reserved_opcode).is_err());
}

#[test]
fn published_messages_are_masked_text_frames_mob_decodes() {
    let mut decoder = Decoder::new(1 << 20);
    for (size, header) in [(32, 2 + 4), (126, 4 + 4), (70_000, 10 + 4)] {
        let stamp = Stamp {
            publisher: 2,
            seq: size as u64,
            sent_ns: 9,
        };
        let m = mask(stamp.seq);
        let mut out = BytesMut::new();
        message(size, m, &mut out, |out| payload::write(stamp, size, out));
        assert_eq!(
            out.len(),
            header + size,
            "the header takes the shortest form"
        );
        assert_eq!(out[header - 4..header], m, "the mask is in the header");
        let mut sent = BytesMut::new();
        payload::write(stamp, size, &mut sent);
        assert_ne!(out[header..header + 4], sent[..4], "the payload is masked");
        let received = decoder.decode(&mut out).unwrap();
        let Some(Received::Message { text, payload }) = received else {
            panic!("{received:?}")
        };
        assert!(text, "ASCII payloads go as text");
        assert_eq!(payload, sent);
        assert!(out.is_empty());
    }
}

#[test]
fn pongs_echo_the_ping_and_the_goodbye_is_a_normal_close() {
    let mut out = BytesMut::new();
    pong(b"are you there", &mut out);
    close(&mut out);
    let mut pong_frame = out.split_to(2 + 4 + 13);
    apply_mask(&mut pong_frame[6..], CONTROL_MASK);
    assert_eq!(pong_frame[0], 0x8a, "a final pong");
    assert_eq!(&pong_frame[6..], b"are you there");
    let mut decoder = Decoder::new(1024);
    assert_eq!(
        decoder.decode(&mut out).unwrap(),
        Some(Received::Close { code: Some(1000) })
    );
}

#[test]
fn masks_change_from_frame_to_frame_and_have_no_zero_byte() {
    let masks: Vec<[u8; 4]> = (0..1000).map(mask).collect();
    assert!(masks.iter().all(|m| !m.contains(&0)));
    let mut distinct = masks.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 990, "{} distinct masks", distinct.len());
}
