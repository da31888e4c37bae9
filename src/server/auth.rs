//! A TCP client that has not presented the token yet (`--auth-token-file`).
//!
//! It is no receiver: it is sent nothing and nothing of it is relayed. Its first message is
//! read into a buffer of its own, never more bytes than the token's message has, so that what
//! follows the token stays in the socket for the ordinary read path once it has joined. The
//! deadline is the side connections' ([`SIDE_TIMEOUT`](super::web::SIDE_TIMEOUT)), in their
//! queue.

use std::io;
use std::time::Instant;

use bytes::BytesMut;

use super::disconnect::{AuthFailure, DisconnectReason};
use super::stream::Stream;
use super::web::SIDE_TIMEOUT;
use crate::auth::{check_first, FirstMessage};
use crate::protocol::Protocol;

/// What has arrived of a client's first message.
#[derive(Debug)]
pub struct AuthWait {
    got: BytesMut,
    /// When it is closed if it has not presented the token.
    pub deadline: Instant,
}

/// How reading a client's first message ended for now.
#[derive(Debug)]
pub enum Authenticated {
    /// Not all of it yet.
    Pending,
    /// It was the token: the client joins.
    Yes,
    /// Close it for this reason.
    No(DisconnectReason),
}

impl AuthWait {
    pub fn new(now: Instant) -> Self {
        AuthWait {
            got: BytesMut::new(),
            deadline: now + SIDE_TIMEOUT,
        }
    }

    /// Reads what the socket holds of the first message, which must be `expected` (the
    /// token's message in `protocol`). Under TLS, first sends what the session has to send
    /// (its handshake), as far as the socket takes it (the rest on a writable event).
    pub fn read(
        &mut self,
        socket: &mut Stream,
        expected: &[u8],
        protocol: Protocol,
    ) -> Authenticated {
        if let Err(e) = socket.send_pending() {
            return Authenticated::No(DisconnectReason::from_io(e));
        }
        loop {
            let need = match check_first(&self.got, expected, protocol) {
                FirstMessage::Accepted => return Authenticated::Yes,
                FirstMessage::Refused => {
                    return Authenticated::No(DisconnectReason::Auth(AuthFailure::WrongToken))
                }
                FirstMessage::Need(n) => n,
            };
            self.got.reserve(need);
            let read = socket.read_into(&mut self.got, need);
            // Under TLS a read may have made the session want to send (its handshake).
            if let Err(e) = socket.send_pending() {
                return Authenticated::No(DisconnectReason::from_io(e));
            }
            match read {
                Ok(0) => {
                    return Authenticated::No(DisconnectReason::Auth(AuthFailure::ClosedFirst))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Authenticated::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Authenticated::No(DisconnectReason::from_io(e)),
            }
        }
    }
}
