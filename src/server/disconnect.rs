//! Why a connection was closed: logged with the peer's address and counted.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::protocol::ProtocolError;
use crate::ws::frame::FrameError;
use crate::ws::handshake::Status;

/// The reason one client's connection ended. Each closes that client only.
#[derive(Debug)]
pub enum DisconnectReason {
    /// The client closed its side, and everything owed to it was sent.
    Closed,
    /// The socket failed: reset by the peer, broken pipe, and the like.
    Reset(io::Error),
    /// The TLS session failed (`--tls-cert`): a bad handshake, a record that does not
    /// decrypt, a client speaking plain text to a TLS port. Counted as `protocol`.
    Tls(rustls::Error),
    /// The client sent something that cannot be relayed.
    Protocol(ProtocolError),
    /// The client read too slowly and fell more than `--max-pending` bytes behind.
    SlowConsumer { max_pending: usize },
    /// Nothing arrived from the client for `--idle-timeout`.
    Idle(Duration),
    /// The server is stopping and the shutdown timeout ran out: before the client was sent all
    /// (`owed`), or before it closed its side after being sent all.
    Shutdown { owed: bool },
    /// A WebSocket client sent a close frame (with this code).
    WsClosed(Option<u16>),
    /// A WebSocket client broke the protocol, sent a message too large, or one the server's
    /// `--protocol` cannot carry; it is sent a close frame with the code.
    WsProtocol(FrameError),
    /// An HTTP request was answered with an error status.
    Refused {
        status: Status,
        reason: &'static str,
    },
    /// An HTTP request was answered with the page.
    PageServed,
    /// An HTTP client did not send its request head (or take its answer) in time.
    HttpTimeout,
    /// A TCP client did not present the token (`--auth-token-file`).
    Auth(AuthFailure),
}

/// How a TCP client failed to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Its first message was not the token.
    WrongToken,
    /// No token within the deadline.
    NoToken,
    /// It closed before its first message was complete.
    ClosedFirst,
    /// It had waited longest when the connections without a token were at their limit.
    Displaced,
}

impl DisconnectReason {
    /// A short, stable name for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            DisconnectReason::Closed => "closed",
            DisconnectReason::Reset(_) => "reset",
            DisconnectReason::Protocol(_) | DisconnectReason::Tls(_) => "protocol",
            DisconnectReason::SlowConsumer { .. } => "slow_consumer",
            DisconnectReason::Idle(_) => "idle",
            DisconnectReason::Shutdown { .. } => "shutdown",
            DisconnectReason::WsClosed(_) | DisconnectReason::PageServed => "closed",
            DisconnectReason::Refused {
                status: Status::Unauthorized,
                ..
            } => "auth",
            DisconnectReason::WsProtocol(_) | DisconnectReason::Refused { .. } => "protocol",
            DisconnectReason::HttpTimeout => "idle",
            DisconnectReason::Auth(_) => "auth",
        }
    }

    /// Whether this is the client's failure (logged at `warn`) rather than a normal end (`info`).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            DisconnectReason::Reset(_)
                | DisconnectReason::Protocol(_)
                | DisconnectReason::Tls(_)
                | DisconnectReason::SlowConsumer { .. }
                | DisconnectReason::WsProtocol(_)
                | DisconnectReason::Auth(_)
                | DisconnectReason::Refused {
                    status: Status::BadRequest | Status::Forbidden | Status::Unauthorized,
                    ..
                }
        )
    }

    /// Whether the client is cut off rather than ended with: its socket is then closed with a
    /// reset, so that what the kernel still holds for it (up to megabytes it may never read)
    /// is freed at once instead of lingering as long as the peer neither reads nor closes.
    /// A client still owed data when the shutdown timeout ends is reset too: an orderly end of
    /// stream would pass a message cut short for a whole one.
    pub fn aborts(&self) -> bool {
        // Those answered over HTTP or with a close frame were waited for after the answer.
        let answered = matches!(
            self,
            DisconnectReason::WsProtocol(_) | DisconnectReason::Refused { .. }
        );
        (self.is_failure() && !answered)
            || matches!(
                self,
                DisconnectReason::Idle(_)
                    | DisconnectReason::Shutdown { owed: true }
                    | DisconnectReason::HttpTimeout
            )
    }

    /// Whether this is logged one by one only at `debug`: a normal end, or the end of a
    /// shutdown, which is summed up in one line of its own.
    pub fn is_quiet(&self) -> bool {
        matches!(
            self,
            DisconnectReason::Closed
                | DisconnectReason::Shutdown { .. }
                | DisconnectReason::WsClosed(_)
                // Logged when it was found (see `EventLoop::read_queued`), not again at the close.
                | DisconnectReason::WsProtocol(_)
                | DisconnectReason::PageServed
                | DisconnectReason::Refused {
                    status: Status::NotFound | Status::MethodNotAllowed,
                    ..
                }
        )
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Closed => f.write_str("client closed the connection"),
            DisconnectReason::Reset(e) => write!(f, "connection error: {e}"),
            DisconnectReason::Tls(e) => write!(f, "TLS: {e}"),
            DisconnectReason::Protocol(e) => write!(f, "protocol error: {e}"),
            DisconnectReason::SlowConsumer { max_pending } => write!(
                f,
                "slow consumer: fell more than {max_pending} bytes behind (--max-pending)"
            ),
            DisconnectReason::Idle(t) => {
                write!(f, "idle: nothing received for {}s", t.as_secs_f64())
            }
            DisconnectReason::Shutdown { owed: true } => {
                f.write_str("server shutting down: shutdown timeout reached before all was sent")
            }
            DisconnectReason::Shutdown { owed: false } => f.write_str(
                "server shutting down: all was sent, but the client did not close within the shutdown timeout",
            ),
            DisconnectReason::WsClosed(Some(code)) => {
                write!(f, "WebSocket client closed the connection (code {code})")
            }
            DisconnectReason::WsClosed(None) => {
                f.write_str("WebSocket client closed the connection")
            }
            DisconnectReason::WsProtocol(e) => write!(f, "WebSocket protocol error: {e}"),
            DisconnectReason::Refused { status, reason } => {
                write!(f, "HTTP request answered {}: {reason}", status.line())
            }
            DisconnectReason::PageServed => f.write_str("served the page"),
            DisconnectReason::HttpTimeout => write!(
                f,
                "client did not complete its HTTP request, or take what it was owed and close, within {}s",
                super::web::SIDE_TIMEOUT.as_secs()
            ),
            DisconnectReason::Auth(AuthFailure::WrongToken) => {
                f.write_str("authentication failed: the first message is not the token")
            }
            DisconnectReason::Auth(AuthFailure::NoToken) => write!(
                f,
                "authentication failed: no token within {}s",
                super::web::SIDE_TIMEOUT.as_secs()
            ),
            DisconnectReason::Auth(AuthFailure::ClosedFirst) => {
                f.write_str("authentication failed: closed before sending the token")
            }
            DisconnectReason::Auth(AuthFailure::Displaced) => f.write_str(
                "authentication failed: no token yet, closed for a newer connection (a quarter of --max-connections may wait for theirs)",
            ),
        }
    }
}

impl DisconnectReason {
    /// Why a read or write that failed with `e` ends the connection: its TLS session failed,
    /// or its socket did.
    pub fn from_io(e: io::Error) -> Self {
        match super::stream::tls_error(&e) {
            Some(tls) => DisconnectReason::Tls(tls.clone()),
            None => DisconnectReason::Reset(e),
        }
    }
}

impl From<ProtocolError> for DisconnectReason {
    fn from(e: ProtocolError) -> Self {
        DisconnectReason::Protocol(e)
    }
}
