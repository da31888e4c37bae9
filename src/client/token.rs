//! The token a server started with `--auth-token-file` wants before anything else, in the
//! place a WebSocket request gives it (`?token=`). The token itself, its file and its first
//! message on TCP are [`crate::auth::Token`]'s, shared with the server.

use crate::auth::Token;

/// The WebSocket request target `path` with `token=` added to its query, percent-encoded.
pub fn with_token(path: &str, token: &Token) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}token={}", token.query_value())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth;

    #[test]
    fn the_token_joins_the_query_percent_encoded_and_the_server_reads_it_back() {
        let t = |s: &str| Token::new(s.as_bytes()).unwrap();
        assert_eq!(with_token("/ws", &t("abc1")), "/ws?token=abc1");
        assert_eq!(with_token("/ws?x=1", &t("a b")), "/ws?x=1&token=a%20b");
        for raw in ["a+b/c=d&e?é", "plain", "%41"] {
            let target = with_token("/ws?x=1", &t(raw));
            assert_eq!(auth::from_request(&target, None).unwrap(), raw.as_bytes());
        }
    }
}
