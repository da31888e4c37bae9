//! WebSocket (RFC 6455) for browsers: the frame codec and the HTTP upgrade, as pure code.
//!
//! `frame`: client frames in (checked, unmasked, reassembled), server frame headers out.
//! `handshake`: an HTTP/1.1 request head in, what to answer out (the page, the upgrade, or an
//! error status).

pub mod frame;
pub mod handshake;
