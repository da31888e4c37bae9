//! The bundled page in a real browser: headless Chromium types into the page `--http` serves, a
//! TCP client reads it, and what the TCP client sends appears on the page.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium chromium-driver`);
//! without them the test says so and passes, unless `MOB_REQUIRE_BROWSER=1` (CI sets it).
//!
//! The README's screenshot comes from this test:
//!
//! ```text
//! MOB_SCREENSHOT=docs/page.png cargo test --release --test browser
//! ```

mod util;

use std::io::Write;

use serde_json::{json, Value};
use util::webdriver::{Browser, Tools, ENTER};
use util::Server;

/// The browser window, as the screenshot shows it.
const WINDOW: (u32, u32) = (900, 600);

#[test]
fn what_the_page_types_reaches_tcp_clients_and_what_they_send_appears_on_the_page() {
    let Some(tools) = browser_tools() else {
        return;
    };
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let http = server.http_addr();

    // The TCP client is a receiver before the page exists: it has had its own line back. (The
    // page does not see that line: a client joins at the end of the order.)
    let mut tcp = server.connect();
    tcp.send(b"tcp client here\n");
    tcp.expect(b"tcp client here\n");

    let browser = Browser::start(&tools, WINDOW);
    browser.open(&format!("http://{http}/"));
    let msg = browser.find("#msg");
    // The page enables its input once its WebSocket is open.
    browser.wait_for("#msg enabled", |b| b.is_enabled(&msg).then_some(()));
    let connected = page(&browser);
    assert_eq!(connected["state"], "open", "{connected}");
    assert_eq!(connected["statetext"], "connected", "{connected}");

    browser.type_keys(&msg, &format!("hello from the browser{ENTER}"));
    tcp.expect(b"hello from the browser\n");
    // The page's own message was sequenced before this one, so it is shown first.
    tcp.send(b"hello from tcp\n");
    tcp.expect(b"hello from tcp\n");
    let shown = showing(&browser, 2);
    assert_eq!(
        shown["log"],
        json!(["hello from the browser", "hello from tcp"]),
        "{shown}"
    );
    assert_eq!(shown["count"], "2", "{shown}");

    // More lines from both sides, so the screenshot shows a conversation. The TCP client reads
    // each back before the next is sent, which fixes their order.
    let more = [
        (Sender::Tcp, "every client gets every message, in one order"),
        (Sender::Page, "the page is one client more"),
        (Sender::Tcp, "nc, telnet and browsers share one stream"),
        (Sender::Page, "and a slow reader is cut off, not waited for"),
    ];
    for (sender, line) in more {
        match sender {
            Sender::Page => browser.type_keys(&msg, &format!("{line}{ENTER}")),
            Sender::Tcp => tcp.send(format!("{line}\n").as_bytes()),
        }
        tcp.expect(format!("{line}\n").as_bytes());
    }
    let shown = showing(&browser, 2 + more.len());
    let mut all = vec!["hello from the browser", "hello from tcp"];
    all.extend(more.iter().map(|(_, line)| line));
    assert_eq!(shown["log"], json!(all), "{shown}");
    assert_eq!(shown["count"], all.len().to_string(), "{shown}");
    let png = browser.screenshot();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is no PNG"
    );
    if let Some(path) = std::env::var_os("MOB_SCREENSHOT") {
        std::fs::write(&path, &png).expect("write the screenshot");
        say(&format!("screenshot saved to {}", path.to_string_lossy()));
    }
    // Nothing may fail (the page's icon is inline: no /favicon.ico request and its 404).
    let errors: Vec<String> = browser
        .console()
        .into_iter()
        .filter(|e| e.starts_with("SEVERE"))
        .collect();
    assert!(errors.is_empty(), "the browser logged errors: {errors:#?}");
}

/// Who sends a line.
#[derive(Clone, Copy)]
enum Sender {
    Page,
    Tcp,
}

/// What the page shows: its connection state, the messages in #log and the count #n.
fn page(browser: &Browser) -> Value {
    browser.run(
        "const text = (id) => document.getElementById(id).textContent;
         return {
             state: document.getElementById('state').className,
             statetext: text('statetext'),
             log: Array.from(document.querySelectorAll('#log li > span'), (e) => e.textContent),
             count: text('n'),
         };",
    )
}

/// The page once #log has at least `n` messages.
fn showing(browser: &Browser, n: usize) -> Value {
    browser.wait_for(&format!("{n} messages"), |b| {
        let shown = page(b);
        (shown["log"].as_array().map_or(0, Vec::len) >= n).then_some(shown)
    })
}

/// The browser's programs, or `None` after saying why the test is skipped; with
/// `MOB_REQUIRE_BROWSER=1` a missing browser fails the test instead.
fn browser_tools() -> Option<Tools> {
    match Tools::find() {
        Ok(tools) => Some(tools),
        Err(missing) if std::env::var("MOB_REQUIRE_BROWSER").as_deref() == Ok("1") => {
            panic!("{missing}, and MOB_REQUIRE_BROWSER=1 asks for the browser test")
        }
        Err(missing) => {
            say(&format!(
                "skipped the browser test: {missing}; on Debian: apt-get install chromium \
                 chromium-driver (with MOB_REQUIRE_BROWSER=1 this fails instead)"
            ));
            None
        }
    }
}

/// Writes to stderr past the test harness, which hides `eprintln!` of tests that pass.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}
