//! Token authentication (`--auth-token-file`): the token, read from its file, and how a client
//! presents it.
//!
//! A TCP client's first message is the token, in the server's wire form; a WebSocket client
//! gives it in the request (`?token=` or `Authorization: Bearer`). Comparisons take the same
//! time whatever the bytes compared ([`subtle`]), so the time an answer takes does not tell a
//! guesser how much of a guess was right.

use std::fmt;
use std::path::Path;

use subtle::ConstantTimeEq;

use crate::protocol::{Protocol, FRAME_HEADER_LEN};

/// The longest token: enough for any generated secret, and a bound on what the server holds
/// for a client that has not presented it yet.
pub const MAX_TOKEN_LEN: usize = 1024;

/// A shared secret. Never printed: its `Debug` says only that it is there.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Vec<u8>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token from `path`: its contents, surrounding whitespace ignored. The error
    /// names the file and what is wrong with it (never the token).
    pub fn from_file(path: &Path) -> Result<Token, String> {
        let raw = std::fs::read(path)
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        Token::new(raw.trim_ascii()).map_err(|why| format!("token file {}: {why}", path.display()))
    }

    /// A token of these bytes: not empty, at most [`MAX_TOKEN_LEN`] bytes, no control
    /// characters (a line could not carry them, nor a header).
    pub fn new(bytes: &[u8]) -> Result<Token, String> {
        if bytes.is_empty() {
            return Err("empty (it must hold the token)".into());
        }
        if bytes.len() > MAX_TOKEN_LEN {
            return Err(format!("the token is over {MAX_TOKEN_LEN} bytes"));
        }
        if bytes.iter().any(|b| b.is_ascii_control()) {
            return Err("the token holds a control character (one line, no tabs)".into());
        }
        Ok(Token(bytes.to_vec()))
    }

    /// The token's bytes (for a client that sends it).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether `candidate` is the token, in time that depends only on their lengths.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0.ct_eq(candidate).into()
    }

    /// The token as a TCP client's first message in `protocol`'s wire form: a line (raw too:
    /// up to the first `\n`) or a frame.
    pub fn message(&self, protocol: Protocol) -> Vec<u8> {
        match protocol {
            Protocol::Raw | Protocol::Line => [self.0.as_slice(), b"\n"].concat(),
            Protocol::Frame => {
                let mut out = (self.0.len() as u64).to_be_bytes().to_vec();
                debug_assert_eq!(out.len(), FRAME_HEADER_LEN);
                out.extend_from_slice(&self.0);
                out
            }
        }
    }

    /// The token percent-encoded for a URL's query (`?token=`).
    pub fn query_value(&self) -> String {
        percent_encoding::percent_encode(&self.0, percent_encoding::NON_ALPHANUMERIC).to_string()
    }
}

/// What has arrived of a TCP client's first message, checked against the token as it comes.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstMessage {
    /// Could still be the token: read up to this many more bytes (never beyond the message).
    Need(usize),
    /// It is the token.
    Accepted,
    /// It is not.
    Refused,
}

/// Looks at `got`, the start of a client's input, which must be `expected` (a
/// [`Token::message`]). A message that has ended, or a frame that announced another length,
/// is refused at once; a whole one is compared in constant time.
pub fn check_first(got: &[u8], expected: &[u8], protocol: Protocol) -> FirstMessage {
    if got.len() >= expected.len() {
        let whole = &got[..expected.len()];
        return if expected.ct_eq(whole).into() && got.len() == expected.len() {
            FirstMessage::Accepted
        } else {
            FirstMessage::Refused
        };
    }
    let ended_early = match protocol {
        Protocol::Raw | Protocol::Line => got.contains(&b'\n'),
        Protocol::Frame => {
            got.len() >= FRAME_HEADER_LEN && got[..FRAME_HEADER_LEN] != expected[..FRAME_HEADER_LEN]
        }
    };
    if ended_early {
        FirstMessage::Refused
    } else {
        FirstMessage::Need(expected.len() - got.len())
    }
}

/// The token in a WebSocket request: `?token=` in its target (form-encoded, as browsers'
/// `URLSearchParams` write it: `+` is a space, `%2B` a plus), or `Authorization: Bearer`.
pub fn from_request(target: &str, authorization: Option<&str>) -> Option<Vec<u8>> {
    let bearer = authorization.and_then(|value| {
        let (scheme, rest) = value.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().as_bytes().to_vec())
    });
    if bearer.is_some() {
        return bearer;
    }
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(|v| percent_encoding::percent_decode_str(&v.replace('+', " ")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::new(b"s3cret/+ x").unwrap()
    }

    #[test]
    fn a_token_file_is_trimmed_and_refused_when_empty_or_multiline() {
        let dir = std::env::temp_dir().join(format!("mob-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  abc \n\n").unwrap();
        assert_eq!(Token::from_file(&file).unwrap().as_bytes(), b"abc");
        std::fs::write(&file, " \n\t").unwrap();
        let e = Token::from_file(&file).unwrap_err();
        assert!(e.contains("empty") && e.contains("token"), "{e}");
        std::fs::write(&file, "a\nb").unwrap();
        assert!(Token::from_file(&file).unwrap_err().contains("control"));
        let missing = dir.join("missing");
        assert!(Token::from_file(&missing).unwrap_err().contains("missing"));
        assert!(format!("{:?}", token()) == "Token(..)", "never printed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_first_message_is_checked_as_it_arrives() {
        let t = token();
        for protocol in [Protocol::Line, Protocol::Frame, Protocol::Raw] {
            let expected = t.message(protocol);
            // Any prefix could still be it; the whole is accepted.
            for i in 0..expected.len() {
                assert_eq!(
                    check_first(&expected[..i], &expected, protocol),
                    FirstMessage::Need(expected.len() - i)
                );
            }
            assert_eq!(
                check_first(&expected, &expected, protocol),
                FirstMessage::Accepted
            );
            // One byte off anywhere: refused.
            for i in 0..expected.len() {
                let mut wrong = expected.clone();
                wrong[i] ^= 1;
                assert_ne!(
                    check_first(&wrong, &expected, protocol),
                    FirstMessage::Accepted
                );
            }
        }
        // A shorter line, or a frame of another length, is refused before the length is in.
        let line = t.message(Protocol::Line);
        assert_eq!(
            check_first(b"s3c\n", &line, Protocol::Line),
            FirstMessage::Refused
        );
        let frame = t.message(Protocol::Frame);
        let mut other = frame[..8].to_vec();
        other[7] += 1;
        assert_eq!(
            check_first(&other, &frame, Protocol::Frame),
            FirstMessage::Refused
        );
    }

    #[test]
    fn a_websocket_request_carries_the_token_in_its_query_or_header() {
        let t = token();
        let target = format!("/ws?x=1&token={}", t.query_value());
        assert_eq!(from_request(&target, None).unwrap(), t.as_bytes());
        assert_eq!(
            from_request("/ws", Some("Bearer s3cret/+ x")).unwrap(),
            t.as_bytes()
        );
        assert_eq!(from_request("/ws", Some("Basic abc")), None);
        assert_eq!(
            from_request("/ws?token=a%20b", Some("Basic")).unwrap(),
            b"a b"
        );
        assert_eq!(from_request("/ws", None), None);
        assert_eq!(from_request("/ws?tokens=abc", None), None);
        assert_eq!(from_request("/ws?token=a+b%2Bc", None).unwrap(), b"a b+c");
    }
}
