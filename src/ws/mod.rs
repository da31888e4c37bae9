//! WebSocket (RFC 6455) for browsers: the frame codec and the HTTP upgrade, as pure code.
//!
//! `frame`: client frames in (checked, unmasked, reassembled), server frame headers out.
//! `handshake`: an HTTP/1.1 request head in, what to answer out (the page, the upgrade, or an
//! error status).

pub mod frame;
pub mod handshake;

/// The page served at `GET /`: self-contained (no external scripts, fonts or styles), it
/// connects to `/ws` on the same host, shows the stream and a live count, sends a line on
/// Enter, and reconnects with backoff.
pub const PAGE: &str = include_str!("page.html");

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", " src=", "@import"] {
            assert!(!PAGE.contains(needle), "the page refers to {needle}");
        }
        // The one link is an empty icon inline, so browsers ask for no /favicon.ico.
        for link in PAGE.split("<link").skip(1) {
            let link = &link[..link.find('>').expect("a closed tag")];
            assert!(link.contains("href=\"data:"), "the page links to {link}");
        }
        assert!(PAGE.contains("\"/ws\""), "the page connects to /ws");
    }
}
