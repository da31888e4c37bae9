//! The token a server started with `--auth-token-file` wants before anything else: read from
//! a file, and put in each wire format (the first message on TCP, `?token=` on WebSocket).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context};
use bytes::BytesMut;

use crate::protocol::Protocol;

/// The token in the file at `path`: one token, surrounding whitespace ignored.
pub fn read_file(path: &Path) -> anyhow::Result<String> {
    let name = path.display();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {name}"))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the token file {name} is empty");
    }
    // A line break inside would end the token early in the line protocol.
    if token.contains(['\n', '\r']) {
        bail!("the token file {name} holds more than one line");
    }
    Ok(token.to_string())
}

/// Appends the token as the first message in `protocol`: a line for line and raw (raw has no
/// messages, so the server reads the token up to the newline), one frame for frame.
pub fn encode(protocol: Protocol, token: &str, out: &mut BytesMut) {
    match protocol {
        Protocol::Raw => {
            out.extend_from_slice(token.as_bytes());
            out.extend_from_slice(b"\n");
        }
        Protocol::Line | Protocol::Frame => protocol.encode(token.as_bytes(), out),
    }
}

/// The WebSocket request target `path` with `token=` added to its query, percent-encoded.
pub fn with_token(path: &str, token: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut target = format!("{path}{separator}token=");
    for &b in token.as_bytes() {
        // RFC 3986's unreserved characters stand for themselves; every other byte is escaped.
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            target.push(b as char);
        } else {
            let _ = write!(target, "%{b:02X}");
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_the_first_message_in_each_protocol() {
        let encoded = |p: Protocol| {
            let mut out = BytesMut::new();
            encode(p, "s3cret", &mut out);
            out.to_vec()
        };
        assert_eq!(encoded(Protocol::Line), b"s3cret\n");
        assert_eq!(encoded(Protocol::Raw), b"s3cret\n");
        assert_eq!(encoded(Protocol::Frame), b"\0\0\0\0\0\0\0\x06s3cret");
    }

    #[test]
    fn the_token_joins_the_query_percent_encoded() {
        assert_eq!(with_token("/ws", "abc-1._~"), "/ws?token=abc-1._~");
        assert_eq!(with_token("/ws?x=1", "a b"), "/ws?x=1&token=a%20b");
        assert_eq!(
            with_token("/", "a+b/c=d&e?é"),
            "/?token=a%2Bb%2Fc%3Dd%26e%3F%C3%A9"
        );
    }

    #[test]
    fn token_files_are_trimmed_and_must_hold_one_token() {
        let dir = std::env::temp_dir().join(format!("mob-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        assert_eq!(read_file(&file("ok", "  tok\n\n")).unwrap(), "tok");
        let err = read_file(&file("blank", " \n ")).unwrap_err().to_string();
        assert!(err.contains("blank") && err.contains("empty"), "{err}");
        let err = read_file(&file("two", "a\nb\n")).unwrap_err().to_string();
        assert!(err.contains("two"), "{err}");
        let err = format!("{:#}", read_file(&dir.join("absent")).unwrap_err());
        assert!(err.contains("absent"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
