//! `--auth-token-file`: a client joins only after presenting the token, which is never relayed
//! nor logged; every way of not presenting it closes the client with a line naming the peer.

mod util;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use util::ws::{RawHttp, Ws, UPGRADE};
use util::{Client, Server};

const TOKEN: &str = "open sesame/42";

/// A token file for this test (surrounding whitespace, as an editor leaves it).
fn token_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mob-auth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("  {TOKEN}\n\n")).unwrap();
    path
}

/// A server that wants the token (`name` keeps tests' files apart), with `args`.
fn start(name: &str, args: &[&str]) -> Server {
    let file = token_file(name);
    let mut all = vec!["--auth-token-file", file.to_str().unwrap()];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// A line client that has presented the token and is a receiver: it sent a line after the
/// token and received it back.
fn joined(server: &Server, name: &str) -> Client {
    let mut c = server.connect();
    c.send(format!("{TOKEN}\n{name} joined\n").as_bytes());
    c.skip_past(format!("{name} joined\n").as_bytes());
    c
}

#[test]
fn the_token_is_taken_first_and_never_relayed() {
    let server = start("relay", &["--protocol", "line"]);
    let mut a = joined(&server, "a");
    // The token and a message in one write, then a message split around nothing special.
    let mut b = server.connect();
    b.send(format!("{TOKEN}\nhello from b\n").as_bytes());
    a.expect(b"hello from b\n");
    b.expect(b"hello from b\n");
    a.send(b"hello from a\n");
    b.expect(b"hello from a\n");
    a.expect(b"hello from a\n");
    a.expect_nothing_pending();
    b.expect_nothing_pending();
}

#[test]
fn before_the_token_a_client_is_sent_nothing_and_relays_nothing() {
    let server = start("nothing", &[]);
    let mut a = joined(&server, "a");
    let mut waiting = server.connect();
    // Its token comes byte by byte; meanwhile others talk.
    let message = format!("{TOKEN}\n");
    let (first, rest) = message.as_bytes().split_at(5);
    for &byte in first {
        waiting.send(&[byte]);
    }
    a.send(b"while it types\n");
    a.expect(b"while it types\n");
    for &byte in rest {
        waiting.send(&[byte]);
    }
    waiting.send(b"now in\n");
    a.expect(b"now in\n");
    // The first thing it receives is its own line: nothing from before it joined.
    waiting.expect(b"now in\n");
}

#[test]
fn a_wrong_token_closes_the_client_with_a_line_that_names_it_and_not_the_token() {
    let server = start("wrong", &[]);
    let mut a = joined(&server, "a");
    let wrongs = [
        format!("{TOKEN}x\n"),                 // longer
        "open\n".to_string(),                  // shorter: refused at its newline, not at a time-out
        format!("{}\n", TOKEN.to_uppercase()), // same length
    ];
    for (i, wrong) in wrongs.iter().enumerate() {
        let mut bad = server.connect();
        let started = Instant::now();
        bad.send(format!("{wrong}must not be relayed\n").as_bytes());
        let (got, _) = bad.read_until_closed();
        assert!(got.is_empty(), "a refused client was sent {got:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused at once"
        );
        if i == 0 {
            // (The next ones within a second are counted into a later line.)
            server.log.wait_for(&[
                &format!("peer={}", bad.local_addr()),
                "the first message is not the token",
            ]);
        }
    }
    a.send(b"still here\n");
    a.expect(b"still here\n");
    let log = server.log.text();
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
    assert!(!log.contains("must not be relayed"));
}

#[test]
fn no_token_within_10_s_is_closed_as_auth() {
    let server = start("late", &[]);
    let mut silent = server.connect();
    let started = Instant::now();
    // Half a token is not one either.
    silent.send(&TOKEN.as_bytes()[..4]);
    let (got, _) = silent.read_until_closed();
    assert!(got.is_empty());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(9), "closed after {waited:?}");
    server.log.wait_for(&[
        &format!("peer={}", silent.local_addr()),
        "no token within 10s",
    ]);
}

#[test]
fn a_client_that_closes_before_its_token_is_logged_and_others_go_on() {
    let server = start("closes", &[]);
    let mut a = joined(&server, "a");
    let mut quitter = server.connect();
    quitter.send(b"open");
    let addr = quitter.local_addr();
    drop(quitter);
    server
        .log
        .wait_for(&[&format!("peer={addr}"), "closed before sending the token"]);
    a.send(b"on\n");
    a.expect(b"on\n");
}

#[test]
fn frame_and_raw_clients_present_the_token_in_their_own_wire_form() {
    let server = start("frame", &["--protocol", "frame"]);
    let mut good = server.connect();
    good.send_frame(TOKEN.as_bytes());
    good.send_frame(b"framed");
    assert_eq!(good.read_frame(), b"framed");
    // A frame of another length is refused as soon as its header is in.
    let mut bad = server.connect();
    bad.send(&(TOKEN.len() as u64 + 1).to_be_bytes());
    let (got, _) = bad.read_until_closed();
    assert!(got.is_empty());

    let server = start("raw", &["--protocol", "raw"]);
    let mut a = server.connect();
    a.send(format!("{TOKEN}\na in").as_bytes());
    // Once it has its own bytes back it is a receiver.
    a.expect(b"a in");
    let mut b = server.connect();
    b.send(format!("{TOKEN}\nraw bytes").as_bytes());
    a.expect(b"raw bytes");
}

#[test]
fn websocket_clients_give_the_token_in_the_url_or_a_bearer_header() {
    let server = start("ws", &["--http", "127.0.0.1:0"]);
    let http = server.http_addr();
    let mut tcp = joined(&server, "tcp");
    let encoded = "open%20sesame%2F42";
    let mut ws = Ws::connect_path(http, &format!("/ws?token={encoded}"));
    ws.send_text("by url");
    tcp.expect(b"by url\n");
    assert_eq!(ws.recv_text(), "by url");

    let mut bearer = RawHttp::connect(http);
    let head = UPGRADE.replacen(
        "\r\n\r\n",
        &format!("\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
        1,
    );
    bearer.send(head.as_bytes());
    assert!(bearer.read_head().starts_with("HTTP/1.1 101 "));

    for (target, extra, why) in [
        ("/ws", String::new(), "no token"),
        ("/ws?token=open", String::new(), "wrong token"),
        (
            "/ws",
            "Authorization: Bearer nope\r\n".to_string(),
            "wrong token",
        ),
    ] {
        let mut refused = RawHttp::connect(http);
        let head =
            UPGRADE
                .replacen("/ws", target, 1)
                .replacen("\r\n\r\n", &format!("\r\n{extra}\r\n"), 1);
        refused.send(head.as_bytes());
        let answer = String::from_utf8(refused.read_to_end()).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
            "{answer}"
        );
        assert!(answer.contains("WWW-Authenticate: Bearer"), "{answer}");
        assert!(answer.contains(why), "{answer}");
        if why == "no token" {
            // Logged when the connection ends (the answer lingers until the client closes);
            // the next within a second are counted into a later line.
            drop(refused);
            server.log.wait_for(&["401 Unauthorized", why]);
        }
    }
    let log = server.log.text();
    assert!(
        !log.contains(TOKEN) && !log.contains(encoded),
        "the token is in the log"
    );
}

#[test]
fn history_is_sent_after_the_token_and_refusals_count_as_auth() {
    let server = start("history", &["--history", "2", "--metrics", "127.0.0.1:0"]);
    let mut a = joined(&server, "a");
    a.send(b"one\ntwo\n");
    a.expect(b"one\ntwo\n");
    let mut late = server.connect();
    // Nothing before the token, not even history.
    late.send(b"wrong\n");
    late.read_until_closed();
    let mut late = server.connect();
    late.send(format!("{TOKEN}\nlate\n").as_bytes());
    late.expect(b"one\ntwo\nlate\n");
    let metrics = scrape_until(
        server.metrics_addr(),
        "mob_disconnects_total{reason=\"auth\"} 1",
    );
    assert!(metrics.contains("mob_disconnects_total{reason=\"auth\"} 1"));
}

/// Fetches `/metrics` until it contains `want` (values are published within a second).
fn scrape_until(addr: SocketAddr, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        if body.contains(want) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_unreadable_or_empty_token_file_stops_the_start_naming_it() {
    let dir = std::env::temp_dir().join(format!("mob-auth-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty-token");
    std::fs::write(&empty, " \n").unwrap();
    let missing = dir.join("missing-token");
    for (file, why) in [(&empty, "empty"), (&missing, "cannot read")] {
        let out = util::mob()
            .args(["serve", "--listen", "127.0.0.1:0", "--auth-token-file"])
            .arg(file)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(file.to_str().unwrap()) && err.contains(why),
            "{err}"
        );
    }
}

fn auth_server(name: &str, args: &[&str]) -> Server {
    let dir = std::env::temp_dir().join(format!("mob-auth-more-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, TOKEN).unwrap();
    let mut all = vec!["--auth-token-file", path.to_str().unwrap()];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// Clients that never present a token may hold a quarter of --max-connections: the one that
/// waited longest makes room for a newcomer, so a client with the token gets in.
#[test]
fn clients_without_the_token_cannot_keep_out_one_that_has_it() {
    let server = auth_server("lockout", &["--max-connections", "3"]);
    let squatters: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    let mut good = server.connect();
    good.send(format!("{TOKEN}\nhello\n").as_bytes());
    let (got, closed) = good.read_until_quiet(Duration::from_millis(1500));
    eprintln!(
        "token holder got {:?}, closed {closed}\n{}",
        String::from_utf8_lossy(&got),
        server.log.text()
    );
    drop(squatters);
    assert_eq!(
        got, b"hello\n",
        "the token holder was locked out by 3 silent connections"
    );
}

/// The WebSocket token in the query: a form-encoded space (`+`, as URLSearchParams and HTML
/// forms write it) is a space.
#[test]
fn a_plus_in_the_query_token_is_a_space_as_browsers_write_it() {
    use util::ws::RawHttp;
    let server = auth_server("plus", &["--http", "127.0.0.1:0"]);
    let mut raw = RawHttp::connect(server.http_addr());
    let req = util::ws::UPGRADE.replacen("/ws", "/ws?token=open+sesame%2F42", 1);
    raw.send(req.as_bytes());
    let head = raw.read_head();
    eprintln!("{head}");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

#[test]
fn a_burst_of_clients_with_the_token_all_get_in() {
    // 151 at once: more than a quarter of --max-connections wait to present their token.
    let file = token_file("burst");
    let server = Server::start(&[
        "--auth-token-file",
        file.to_str().unwrap(),
        "--max-connections",
        "400",
        "--no-echo-self",
    ]);
    let out = util::mob()
        .args(["bench", &server.addr.to_string(), "--token-file"])
        .arg(&file)
        .args(["--subscribers", "150", "--publishers", "1", "--rate", "100"])
        .args(["--duration", "1", "--warmup", "0.2", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn each_newcomer_displaces_at_most_one_client_that_has_waited() {
    // A quarter of 8 is 2, half is 4: four silent clients may wait, young ones undisturbed.
    let server = start("displace-one", &["--max-connections", "8"]);
    let mut silent: Vec<Client> = (0..4).map(|_| server.connect()).collect();
    for c in &mut silent {
        let (_, closed) = c.read_until_quiet(Duration::from_millis(100));
        assert!(!closed, "a young waiting client was displaced");
    }
    // They grow old (a time-based rule: nothing else to wait for).
    std::thread::sleep(Duration::from_millis(1200));
    let mut newcomer = server.connect();
    newcomer.send(format!("{TOKEN}\nnew\n").as_bytes());
    newcomer.expect(b"new\n");
    let closed: Vec<bool> = silent
        .iter_mut()
        .map(|c| c.read_until_quiet(Duration::from_millis(200)).1)
        .collect();
    // (With several loops, the oldest on the newcomer's loop.)
    let displaced = closed.iter().filter(|&&c| c).count();
    assert_eq!(displaced, 1, "one newcomer displaced {closed:?}");
}
