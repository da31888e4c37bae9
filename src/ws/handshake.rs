//! The HTTP side of `--http`: one request head in, the answer out, as pure code.
//!
//! `GET /` is the bundled page; `GET /ws` with a valid RFC 6455 upgrade becomes a WebSocket
//! client (with `--auth-token-file`, only with the token: 401 otherwise); anything else gets
//! an error status and the connection is closed. The head is parsed
//! with `httparse`, the accept key derived with tungstenite's `derive_accept_key`.

use tungstenite::handshake::derive_accept_key;

use crate::auth::{self, Token};

/// The longest request head read; a longer one is answered 400 and closed.
pub const MAX_HEAD: usize = 8 * 1024;
/// Headers parsed at most (more is a malformed head for this server).
const MAX_HEADERS: usize = 64;

/// What a request head asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the page.
    Page,
    /// `GET /ws` with a valid upgrade: answer 101 with this `Sec-WebSocket-Accept`.
    Upgrade { accept: String },
    /// An error status, with a reason for the log (and the body).
    Refuse {
        status: Status,
        reason: &'static str,
    },
}

/// The error statuses this server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
}

impl Status {
    /// The status line's code and text, e.g. `404 Not Found`.
    pub fn line(self) -> &'static str {
        match self {
            Status::BadRequest => "400 Bad Request",
            Status::Unauthorized => "401 Unauthorized",
            Status::Forbidden => "403 Forbidden",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
        }
    }
}

/// Which browser origins may open a WebSocket besides the server's own host
/// (`--allowed-origin`, repeatable; `*` allows all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    any: bool,
    listed: Vec<String>,
}

impl Origins {
    pub fn new<S: AsRef<str>>(allowed: &[S]) -> Self {
        let mut origins = Origins::default();
        for a in allowed {
            let a = a.as_ref().trim();
            if a == "*" {
                origins.any = true;
            } else {
                origins.listed.push(normalize(a));
            }
        }
        origins
    }

    fn allows(&self, origin: &str) -> bool {
        self.any || self.listed.iter().any(|o| *o == normalize(origin))
    }
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// The result of looking at what has arrived of a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not all of it yet (and under [`MAX_HEAD`]).
    Incomplete,
    /// The head is `head_len` bytes long; bytes after it (WebSocket frames a client sent
    /// right away) belong to the connection.
    Done { route: Route, head_len: usize },
}

/// Looks at the start of an HTTP connection's input.
pub fn parse(buf: &[u8], origins: &Origins, token: Option<&Token>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Complete(_)) => {
            return refuse(Status::BadRequest, "head over 8 KiB", buf.len())
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Incomplete,
        Ok(httparse::Status::Partial) => {
            return refuse(Status::BadRequest, "head over 8 KiB", buf.len())
        }
        Err(httparse::Error::TooManyHeaders) => {
            return refuse(Status::BadRequest, "more than 64 header lines", buf.len())
        }
        Err(_) => return refuse(Status::BadRequest, "malformed request head", buf.len()),
    };
    let route = route(&req, origins, token);
    Parsed::Done { route, head_len }
}

fn refuse(status: Status, reason: &'static str, head_len: usize) -> Parsed {
    Parsed::Done {
        route: Route::Refuse { status, reason },
        head_len,
    }
}

fn route(req: &httparse::Request, origins: &Origins, token: Option<&Token>) -> Route {
    let refuse = |status, reason| Route::Refuse { status, reason };
    let target = req.path.unwrap_or("/");
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if req.method != Some("GET") {
        return refuse(Status::MethodNotAllowed, "only GET is served");
    }
    match path {
        "/" => return Route::Page,
        "/ws" => {}
        _ => return refuse(Status::NotFound, "no such path"),
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
        return refuse(Status::BadRequest, "GET /ws without a WebSocket upgrade");
    }
    if header("Sec-WebSocket-Version") != Some("13") {
        return refuse(Status::BadRequest, "Sec-WebSocket-Version is not 13");
    }
    let Some(key) = header("Sec-WebSocket-Key").filter(|k| is_key(k)) else {
        return refuse(Status::BadRequest, "missing or malformed Sec-WebSocket-Key");
    };
    if let Some(origin) = header("Origin") {
        let same_host = header("Host").is_some_and(|host| {
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            origin_host.trim_end_matches('/').eq_ignore_ascii_case(host)
        });
        if !same_host && !origins.allows(origin) {
            return refuse(
                Status::Forbidden,
                "Origin names another host (see --allowed-origin)",
            );
        }
    }
    if let Some(token) = token {
        match auth::from_request(target, header("Authorization")) {
            None => {
                return refuse(
                    Status::Unauthorized,
                    "no token (?token= or Authorization: Bearer; --auth-token-file)",
                )
            }
            Some(given) if !token.matches(&given) => {
                return refuse(Status::Unauthorized, "wrong token")
            }
            Some(_) => {}
        }
    }
    Route::Upgrade {
        accept: derive_accept_key(key.as_bytes()),
    }
}

/// A `Sec-WebSocket-Key`: 16 bytes in base64, so 24 characters ending in `==`.
fn is_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The 101 answer that makes the connection a WebSocket.
pub fn upgrade_response(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A whole response that ends the connection: status, type and body.
pub fn response(status_line: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status_line}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The error response for `status`.
pub fn error_response(status: Status, reason: &str) -> Vec<u8> {
    let mut body = status.line().to_string();
    body.push_str(": ");
    body.push_str(reason);
    body.push('\n');
    let mut out = response(status.line(), "text/plain; charset=utf-8", body.as_bytes());
    // Say what is allowed, or how to authenticate, in the head (before the blank line).
    let extra: &[u8] = match status {
        Status::MethodNotAllowed => b"\r\nAllow: GET",
        Status::Unauthorized => b"\r\nWWW-Authenticate: Bearer",
        _ => b"",
    };
    let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
    out.splice(at..at, extra.iter().copied());
    out
}

#[cfg(test)]
mod tests;
