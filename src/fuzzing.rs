//! The properties the fuzz targets check (`fuzz/fuzz_targets/*.rs`), kept here so that the
//! stable `tests/fuzz_replay.rs` runs the very same code over the saved corpora.
//!
//! Each function takes the fuzzer's bytes, reads its knobs (protocol, limit, split points) from
//! the first few, and panics when a property fails. See `docs/FUZZING.md`.

use bytes::BytesMut;

use std::collections::BTreeMap;

use clap::error::ErrorKind;
use clap::{ArgAction, FromArgMatches};

use crate::auth::{self, FirstMessage, Token};
use crate::cli::{self, ServeArgs};
use crate::config::{self, SlowConsumerPolicy};
use crate::config_file::{self, SettingsError};
use crate::protocol::{Decoder, Next, Protocol};
use crate::ws::frame::{self, Received};
use crate::ws::handshake::{self, Origins, Parsed, Route};

/// A target's property: panics on an input for which it fails.
pub type Property = fn(&[u8]);

/// The fuzz targets, by name, with the property each one checks.
pub const TARGETS: [(&str, Property); 6] = [
    ("line_frame", line_frame),
    ("ws_frame", ws_frame),
    ("http_head", http_head),
    ("auth", auth),
    ("sizes", sizes),
    ("config_file", config_file),
];

/// `line`, `frame` and `raw` decoding. Input: protocol, limit, two chunk sizes, then the stream.
///
/// - Read in chunks the way the server reads them (`next`, then `continue_partial` for a
///   message a read left incomplete), the stream gives the same messages, the same error (or
///   none) and the same incomplete rest as decoded in one piece (`line`, `frame`).
/// - Each message re-encodes from its payload to its exact wire bytes, and fits the limit.
/// - At the end of the stream a rest is a last line (`line`) or a truncation error (`frame`).
/// - `raw`: the messages, in order, are the stream, each within the limit.
pub fn line_frame(data: &[u8]) {
    let [p, m, c1, c2, ref stream @ ..] = *data else {
        return;
    };
    let protocol = [Protocol::Line, Protocol::Frame, Protocol::Raw][usize::from(p % 3)];
    // Small limits reach the too-large paths; 255 means "no limit to speak of".
    let max = if m == 255 { 1 << 20 } else { usize::from(m) };
    let chunks = [usize::from(c1).max(1), usize::from(c2).max(1)];

    let mut decoder = Decoder::new(protocol, max);
    let mut buf = BytesMut::from(stream);
    let mut whole = Vec::new();
    let mut whole_err = false;
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(msg)) => whole.push(msg.to_vec()),
            Ok(None) => break,
            Err(_) => {
                whole_err = true;
                break;
            }
        }
    }
    for msg in &whole {
        assert!(!msg.is_empty() && msg.len() <= decoder.max_wire_len());
        let payload = protocol.payload(msg);
        if protocol == Protocol::Line {
            assert!(
                !payload.contains(&b'\n'),
                "a line's payload holds a newline"
            );
        }
        let mut again = BytesMut::new();
        protocol.encode(payload, &mut again);
        assert_eq!(
            &again[..],
            &msg[..],
            "a message does not re-encode to its bytes"
        );
    }

    if protocol == Protocol::Raw {
        assert!(buf.is_empty() && !whole_err);
        assert_eq!(whole.concat(), stream, "raw messages are not the stream");
        return;
    }

    let (chunked, chunked_err, rest) = decode_chunked(protocol, max, stream, chunks);
    assert_eq!(chunked, whole, "split reads give other messages");
    assert_eq!(chunked_err, whole_err, "split reads give another outcome");
    if whole_err {
        return;
    }
    assert_eq!(rest, &buf[..], "split reads leave another rest");

    match decoder.decode_eof(&mut buf) {
        Ok(Some(last)) => {
            assert_eq!(protocol, Protocol::Line);
            assert_eq!(&last[..], [&rest[..], b"\n"].concat());
        }
        Ok(None) => assert!(rest.is_empty()),
        Err(_) => assert!(protocol == Protocol::Frame && !rest.is_empty()),
    }
}

/// The server's way of reading (`server/inbox.rs`): each chunk is a read; a message it leaves
/// incomplete is kept as `partial` and continued by the next read. Returns the messages,
/// whether it failed, and the incomplete rest.
fn decode_chunked(
    protocol: Protocol,
    max: usize,
    stream: &[u8],
    sizes: [usize; 2],
) -> (Vec<Vec<u8>>, bool, Vec<u8>) {
    let mut decoder = Decoder::new(protocol, max);
    let mut out = Vec::new();
    let mut partial = Vec::new();
    let mut rest = stream;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).min(rest.len());
        let input = &rest[..n];
        rest = &rest[n..];
        let mut pos = 0;
        if !partial.is_empty() {
            if let Some(total) = decoder.wire_len(&partial, input) {
                assert!(total > partial.len() && total <= decoder.max_wire_len());
            }
            match decoder.continue_partial(&partial, input) {
                Err(_) => return (out, true, partial),
                Ok(Next::Incomplete) => {
                    partial.extend_from_slice(input);
                    assert!(partial.len() <= decoder.max_wire_len());
                    continue;
                }
                Ok(Next::Skip(n)) => {
                    assert!(n <= input.len());
                    partial.clear();
                    pos = n;
                }
                Ok(Next::Message(n)) => {
                    assert!(n <= input.len());
                    partial.extend_from_slice(&input[..n]);
                    out.push(std::mem::take(&mut partial));
                    pos = n;
                }
            }
        }
        loop {
            match decoder.next(&input[pos..]) {
                Ok(Next::Message(n)) => {
                    out.push(input[pos..pos + n].to_vec());
                    pos += n;
                }
                Ok(Next::Skip(n)) => pos += n,
                Ok(Next::Incomplete) => break,
                Err(_) => return (out, true, partial),
            }
        }
        partial.extend_from_slice(&input[pos..]);
    }
    (out, false, partial)
}

/// What a WebSocket decoder made of a stream: what it returned, its error if any, the rest.
type WsOutcome = (Vec<Received>, Option<frame::FrameError>, Vec<u8>);

/// The WebSocket frame decoder. Input: a limit (two bytes), a split point (two bytes), the
/// client's bytes. Split anywhere, the stream gives the same messages, control frames, error
/// and rest as in one piece; what it returns obeys RFC 6455 (limits, UTF-8, close codes).
pub fn ws_frame(data: &[u8]) {
    let [m1, m2, s1, s2, ref stream @ ..] = *data else {
        return;
    };
    let max = usize::from(u16::from_be_bytes([m1, m2]));
    let at = usize::from(u16::from_be_bytes([s1, s2])) % (stream.len() + 1);

    let whole = ws_decode(max, &[stream]);
    let split = ws_decode(max, &[&stream[..at], &stream[at..]]);
    assert_eq!(split, whole, "split at {at}: another outcome");

    for received in &whole.0 {
        match received {
            Received::Message { text, payload } => {
                assert!(payload.len() <= max);
                assert!(!text || std::str::from_utf8(payload).is_ok());
            }
            Received::Ping(payload) => assert!(payload.len() <= 125),
            Received::Pong => {}
            Received::Close { code } => {
                assert!(code.map_or(true, |c| (1000..5000).contains(&c)));
            }
        }
    }
}

fn ws_decode(max: usize, reads: &[&[u8]]) -> WsOutcome {
    let mut decoder = frame::Decoder::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(received)) => out.push(received),
                Ok(None) => break,
                // What follows an error stops mattering (the client is closed), so the rest is
                // compared only when there is none.
                Err(e) => return (out, Some(e), Vec::new()),
            }
            assert!(
                decoder.held() <= 2 * max.max(64),
                "a partial message outgrew its bound"
            );
        }
    }
    (out, None, buf.to_vec())
}

/// The token the `http_head` and `auth` targets use when the input asks for one.
const TOKEN: &[u8] = b"s3cret/+ x";

/// The HTTP request head parser. Input: a flag byte (token, origins), then the head.
///
/// - No panic; `Incomplete` only under 8 KiB; a `Done` head length within the buffer.
/// - The head alone decides: parsing just its `head_len` bytes gives the same answer (what
///   follows belongs to the WebSocket).
/// - A token only ever turns an upgrade away: an upgrade with the token is one without it.
pub fn http_head(data: &[u8]) {
    let [flags, ref buf @ ..] = *data else {
        return;
    };
    let origins = match flags & 0b110 {
        0 => Origins::default(),
        2 => Origins::new(&["*"]),
        _ => Origins::new(&["https://a.example/", "HTTP://B.example"]),
    };
    let token = Token::new(TOKEN).expect("a valid token");
    let token = (flags & 1 == 1).then_some(&token);

    let parsed = handshake::parse(buf, &origins, token);
    match &parsed {
        Parsed::Incomplete => assert!(buf.len() < handshake::MAX_HEAD),
        Parsed::Done { route, head_len } => {
            assert!(*head_len <= buf.len(), "head_len past the buffer");
            assert_eq!(handshake::parse(&buf[..*head_len], &origins, token), parsed);
            if let Route::Upgrade { accept } = route {
                assert_eq!(accept.len(), 28, "an accept key is 20 bytes in base64");
                if token.is_some() {
                    assert_eq!(handshake::parse(buf, &origins, None), parsed);
                }
            }
        }
    }
}

/// The token handshake. Input: protocol, token length, token, then the client's first bytes.
///
/// - `check_first` accepts exactly the token message: never anything else, and every prefix
///   of the token message is `Need` of what is missing, never refused.
/// - `from_request`: no panic on any target or header; a token in the query as
///   `Token::query_value` writes it, or as `Authorization: Bearer`, is read back as it was.
pub fn auth(data: &[u8]) {
    let [p, k, ref rest @ ..] = *data else {
        return;
    };
    let protocol = [Protocol::Line, Protocol::Frame, Protocol::Raw][usize::from(p % 3)];
    let (token, got) = rest.split_at(usize::from(k).min(rest.len()));

    let target = String::from_utf8_lossy(got);
    let _ = auth::from_request(&target, None);
    let _ = auth::from_request("/ws", Some(&target));
    let _ = auth::from_request(&target, Some(&String::from_utf8_lossy(token)));

    let Ok(token) = Token::new(token) else {
        return;
    };
    let expected = token.message(protocol);
    match auth::check_first(got, &expected, protocol) {
        FirstMessage::Accepted => assert_eq!(got, &expected[..], "accepted another message"),
        FirstMessage::Need(n) => {
            assert!(got.len() < expected.len() && n == expected.len() - got.len());
        }
        FirstMessage::Refused => assert_ne!(got, &expected[..], "refused the token"),
    }
    for i in 0..expected.len() {
        assert_eq!(
            auth::check_first(&expected[..i], &expected, protocol),
            FirstMessage::Need(expected.len() - i)
        );
    }
    assert_eq!(
        auth::check_first(&expected, &expected, protocol),
        FirstMessage::Accepted
    );

    let query = format!("/ws?a=1&token={}&b=2", token.query_value());
    assert_eq!(
        auth::from_request(&query, None).as_deref(),
        Some(token.as_bytes())
    );
    if let Ok(text) = std::str::from_utf8(token.as_bytes()) {
        if text.trim() == text {
            let header = format!("Bearer {text}");
            assert_eq!(
                auth::from_request("/ws", Some(&header)).as_deref(),
                Some(token.as_bytes())
            );
        }
    }
}

/// Sizes, durations and the named choices of the command line and the config file.
///
/// - No panic on any text.
/// - A size that parses, written as bytes (`4096`, `4096B`), parses to the same.
/// - A duration that parses is at most a year; written back as seconds it parses to the
///   same, to within the few nanoseconds an `f64` of a year's seconds can tell apart.
/// - A protocol or slow-consumer policy that parses writes back as the same text.
pub fn sizes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    if let Ok(n) = config::parse_size(text) {
        assert_eq!(config::parse_size(&n.to_string()), Ok(n));
        assert_eq!(config::parse_size(&format!("{n}B")), Ok(n));
    }
    if let Ok(d) = config::parse_secs(text) {
        assert!(d <= config::MAX_DURATION);
        let again = config::parse_secs(&d.as_secs_f64().to_string()).expect("written back");
        assert!(
            again.max(d) - again.min(d) <= std::time::Duration::from_nanos(8),
            "{text:?}: {d:?} written back parses to {again:?}"
        );
    }
    if let Ok(p) = text.parse::<Protocol>() {
        assert_eq!(p.to_string(), text);
    }
    if let Ok(p) = text.parse::<SlowConsumerPolicy>() {
        assert_eq!(p.to_string(), text);
    }
}

/// The config file of `mob serve --config`. Input: the file's text (read as UTF-8, a bad byte
/// replaced).
///
/// - No panic, and an error names a key the file has (an unknown key is no flag of `serve`).
/// - What a file stands for is one `--key=value` per key (per item of a repeatable flag's
///   list), the key a long flag of `serve` other than `config` and `help`.
/// - `serve` parses those flags or refuses a value (or a flag's missing partner), never the
///   flags themselves; what it parses converts to `ServeArgs`, and it read each flag's value
///   as the file gave it (for a repeatable flag, every item in order).
/// - Written back as a file of strings, the flags parse to themselves: a number or a switch
///   in a file is its text, and any string survives the `--key=value` form.
pub fn config_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let flags = match config_file::flags(&text) {
        Ok(flags) => flags,
        Err(SettingsError::Toml(_)) => return,
        Err(SettingsError::UnknownKey(key)) => {
            let table: toml::Table = text.parse().expect("the file parsed");
            assert!(
                table.contains_key(&key),
                "unknown key {key:?} not in the file"
            );
            assert!(
                ["config", "help"].contains(&key.as_str())
                    || cli::serve_command()
                        .get_arguments()
                        .all(|a| a.get_long() != Some(&key)),
                "{key:?} is a flag"
            );
            return;
        }
        Err(SettingsError::WrongKind { key, .. }) => {
            let table: toml::Table = text.parse().expect("the file parsed");
            assert!(
                table.contains_key(&key),
                "wrong key {key:?} not in the file"
            );
            return;
        }
    };

    let table: toml::Table = text.parse().expect("the file parsed");
    let expected: usize = table
        .values()
        .map(|v| v.as_array().map_or(1, Vec::len))
        .sum();
    assert_eq!(flags.len(), expected, "not one flag per value");
    // Each flag carries the file's value (in the table's key order; a list's items in the
    // file's order), written as TOML reads it (`0x10` is the integer 16, so `16`): a value
    // changed on the way (off by one, trimmed, `+16`) fails, as does a fraction given to a flag
    // that is no number of seconds.
    let serve_cmd = cli::serve_command();
    let items = table.iter().flat_map(|(key, value)| {
        let items: Vec<&toml::Value> = match value {
            toml::Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        items.into_iter().map(move |item| (key, item))
    });
    for (flag, (key, item)) in flags.iter().zip(items) {
        let flag = flag.to_str().expect("a flag from text is text");
        let text = flag
            .strip_prefix(&format!("--{key}="))
            .unwrap_or_else(|| panic!("{flag:?} is not --{key}=..."));
        let same = match item {
            toml::Value::String(s) => text == s,
            toml::Value::Integer(n) => text == n.to_string(),
            toml::Value::Boolean(b) => text == b.to_string(),
            toml::Value::Float(f) => {
                let secs = serve_arg(&serve_cmd, key)
                    .get_value_names()
                    .is_some_and(|n| n == ["SECS"]);
                assert!(
                    secs,
                    "{key} = {f} taken by a flag that is no number of seconds"
                );
                text == f.to_string()
            }
            other => panic!("{key} = {other:?} was taken as a flag's value"),
        };
        assert!(same, "{key} = {item:?} became {flag:?}");
    }
    let serve = cli::serve_command();
    // Each key's values, in the order of the flags.
    let mut values: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for flag in &flags {
        let flag = flag.to_str().expect("a flag from text is text");
        let (key, value) = flag
            .strip_prefix("--")
            .and_then(|f| f.split_once('='))
            .unwrap_or_else(|| panic!("{flag:?} is not --key=value"));
        assert!(table.contains_key(key) && !["config", "help"].contains(&key));
        values.entry(key).or_default().push(value);
    }

    let argv = std::iter::once("serve".into()).chain(flags.iter().cloned());
    match serve.clone().try_get_matches_from(argv) {
        Ok(matches) => {
            for (key, given) in &values {
                let raw: Vec<&str> = matches
                    .get_raw(serve_arg(&serve, key).get_id().as_str())
                    .expect("a flag given has a value")
                    .map(|v| v.to_str().expect("text"))
                    .collect();
                assert_eq!(&raw, given, "--{key} read as another value");
            }
            if let Err(e) = ServeArgs::from_arg_matches(&matches) {
                panic!("parsed but not converted: {e}");
            }
        }
        Err(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::InvalidValue
                    | ErrorKind::ValueValidation
                    | ErrorKind::MissingRequiredArgument
            ),
            "serve refused the file's flags themselves: {:?} {e}",
            e.kind()
        ),
    }

    let mut again = String::new();
    for (key, given) in &values {
        let items: Vec<String> = given.iter().map(|v| toml_string(v)).collect();
        // Only a repeatable flag takes a list.
        if matches!(serve_arg(&serve, key).get_action(), ArgAction::Append) {
            again.push_str(&format!("{key} = [{}]\n", items.join(", ")));
        } else {
            again.push_str(&format!("{key} = {}\n", items.concat()));
        }
    }
    assert_eq!(
        config_file::flags(&again).expect("the flags written back parse"),
        flags,
        "written back as {again:?}"
    );
}

/// `serve`'s flag `--key`.
fn serve_arg<'a>(serve: &'a clap::Command, key: &str) -> &'a clap::Arg {
    serve
        .get_arguments()
        .find(|a| a.get_long() == Some(key))
        .unwrap_or_else(|| panic!("--{key} is no flag of serve"))
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
