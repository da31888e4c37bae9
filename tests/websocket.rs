//! WebSocket clients and the page on `--http`: one broadcast, one order with the TCP clients,
//! the mapping of messages between the two, and every bad input closed with its reason.

mod util;

use tungstenite::Message;
use util::ws::{client_fragment, client_frame, RawHttp, Ws, UPGRADE};
use util::Server;

fn start(args: &[&str]) -> (Server, std::net::SocketAddr) {
    let mut all = vec!["--http", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let server = Server::start(&all);
    let http = server.http_addr();
    (server, http)
}

#[test]
fn the_http_line_follows_the_listening_line_with_the_real_port() {
    let (server, http) = start(&[]);
    assert_ne!(http.port(), 0);
    assert_ne!(http.port(), server.addr.port());
}

#[test]
fn the_page_is_served_at_the_root() {
    let (_server, http) = start(&[]);
    let mut raw = RawHttp::connect(http);
    raw.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let response = String::from_utf8(raw.read_to_end()).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("Content-Type: text/html"), "{response}");
    assert!(response.contains("<html"), "{response}");
    assert!(response.contains("/ws"), "the page connects to /ws");
}

#[test]
fn websocket_and_tcp_clients_see_one_order() {
    let (server, http) = start(&[]);
    let mut tcp = server.connect();
    let mut ws = Ws::connect(http);
    // The last to join speaks first: once everyone has its line, everyone is a receiver.
    ws.send_text("ready");
    tcp.expect(b"ready\n");
    assert_eq!(ws.recv_text(), "ready");
    for i in 0..100 {
        if i % 2 == 0 {
            tcp.send(format!("tcp {i}\n").as_bytes());
        } else {
            ws.send_text(&format!("ws {i}"));
        }
    }
    let tcp_seen = String::from_utf8(tcp.read_lines(100)).unwrap();
    let ws_seen: Vec<String> = (0..100).map(|_| ws.recv_text()).collect();
    let tcp_seen: Vec<&str> = tcp_seen.lines().collect();
    assert_eq!(
        tcp_seen, ws_seen,
        "TCP and WebSocket receivers disagree on the order"
    );
}

#[test]
fn text_stays_text_binary_stays_binary_and_tcp_bytes_that_are_not_utf8_are_binary() {
    let (server, http) = start(&[]);
    let mut tcp = server.connect();
    let mut ws = Ws::connect(http);
    ws.send_text("ready");
    tcp.expect(b"ready\n");
    assert_eq!(ws.recv_text(), "ready");

    ws.send_binary(b"bin");
    tcp.expect(b"bin\n");
    assert_eq!(ws.recv(), Message::binary(b"bin".to_vec()));

    tcp.send(b"h\xc3\xa9llo\n");
    assert_eq!(ws.recv(), Message::text("héllo"));
    tcp.send(b"\xff\xfe\n");
    assert_eq!(ws.recv(), Message::binary(b"\xff\xfe".to_vec()));
    tcp.expect(b"h\xc3\xa9llo\n\xff\xfe\n");

    // An empty message is an empty line.
    ws.send_text("");
    tcp.expect(b"\n");
    assert_eq!(ws.recv_text(), "");
}

#[test]
fn in_frame_mode_websocket_messages_get_the_frame_header() {
    let (server, http) = start(&["--protocol", "frame"]);
    let mut tcp = server.connect();
    let mut ws = Ws::connect(http);
    ws.send_text("ready");
    assert_eq!(tcp.read_frame(), b"ready");
    assert_eq!(ws.recv_text(), "ready");
    ws.send_binary(b"a\nb");
    assert_eq!(tcp.read_frame(), b"a\nb");
    assert_eq!(ws.recv(), Message::binary(b"a\nb".to_vec()));
    tcp.send_frame(b"from tcp");
    assert_eq!(ws.recv_text(), "from tcp");
    assert_eq!(tcp.read_frame(), b"from tcp");
    // An empty message is a zero-length frame: a keepalive for TCP frame clients, an empty
    // message for WebSocket ones.
    ws.send_text("");
    assert_eq!(ws.recv_text(), "");
    assert_eq!(tcp.read_frame(), b"");
}

#[test]
fn in_raw_mode_websocket_messages_are_their_bytes_and_empty_ones_carry_nothing() {
    let (server, http) = start(&["--protocol", "raw"]);
    let mut tcp = server.connect();
    let mut ws = Ws::connect(http);
    ws.send_text("ready");
    tcp.expect(b"ready");
    assert_eq!(ws.recv_text(), "ready");
    ws.send_text("");
    ws.send_binary(b"xyz");
    tcp.expect(b"xyz");
    assert_eq!(ws.recv(), Message::binary(b"xyz".to_vec()));
}

#[test]
fn fragmented_messages_with_a_ping_between_are_one_message_and_the_ping_is_answered() {
    let (server, http) = start(&[]);
    let mut tcp = server.connect();
    let mut raw = RawHttp::upgrade(http);
    raw.send(&client_frame(1, b"ready", true));
    tcp.expect(b"ready\n");
    assert_eq!(raw.read_frame(), (1, b"ready".to_vec()));
    let mut bytes = client_fragment(1, b"one ", true, false);
    bytes.extend(client_frame(9, b"are you there", true));
    bytes.extend(client_fragment(0, b"two ", true, false));
    bytes.extend(client_fragment(0, b"three", true, true));
    // Split anywhere: byte by byte.
    for b in bytes {
        raw.send(&[b]);
    }
    tcp.expect(b"one two three\n");
    let mut frames = vec![raw.read_frame(), raw.read_frame()];
    frames.sort();
    assert_eq!(
        frames,
        vec![
            (1, b"one two three".to_vec()),
            (10, b"are you there".to_vec())
        ]
    );
}

#[test]
fn every_ping_of_a_burst_is_answered_in_order() {
    let (_server, http) = start(&[]);
    let mut raw = RawHttp::upgrade(http);
    // Ten pings in one write, as Autobahn's case 2.10 sends them.
    let pings: Vec<Vec<u8>> = (0..10).map(|i| format!("ping {i}").into_bytes()).collect();
    let burst: Vec<u8> = pings
        .iter()
        .flat_map(|p| client_frame(9, p, true))
        .collect();
    raw.send(&burst);
    for ping in pings {
        assert_eq!(raw.read_frame(), (10, ping));
    }
}

#[test]
fn a_close_gets_a_close_reply_with_the_same_code() {
    let (server, http) = start(&[]);
    let mut raw = RawHttp::upgrade(http);
    raw.send(&client_frame(8, &3001u16.to_be_bytes(), true));
    assert_eq!(raw.read_close_code(), 3001);
    // Then the server closes the connection.
    assert!(raw.read_to_end().is_empty());
    // Nobody else is hurt.
    let mut tcp = server.connect();
    let mut ws = Ws::connect(http);
    ws.send_text("on");
    tcp.expect(
        b"on
",
    );
}

#[test]
fn a_newline_in_a_message_under_line_closes_that_client_with_1007() {
    let (server, http) = start(&[]);
    let mut tcp = server.connect();
    let mut bad = Ws::connect(http);
    bad.send_text("ready");
    tcp.expect(b"ready\n");
    bad.send_text("two\nlines");
    assert_eq!(bad.expect_close(), 1007);
    drop(bad);
    let line = server.log.wait_for(&["newline"]);
    assert!(
        line.contains("127.0.0.1:"),
        "the line names the peer: {line}"
    );
    // Nobody else is hurt, and nothing of it was relayed.
    let mut other = Ws::connect(http);
    other.send_text("still here");
    tcp.expect(b"still here\n");
}

#[test]
fn a_message_over_max_message_closes_with_1009() {
    let (server, http) = start(&["--max-message", "1000"]);
    let mut raw = RawHttp::upgrade(http);
    raw.send(&client_frame(2, &[7u8; 1001], true));
    assert_eq!(raw.read_close_code(), 1009);
    drop(raw);
    server.log.wait_for(&["--max-message", "1009"]);
    // Fragments count together.
    let mut raw = RawHttp::upgrade(http);
    raw.send(&client_fragment(2, &[7u8; 600], true, false));
    raw.send(&client_fragment(0, &[7u8; 600], true, true));
    assert_eq!(raw.read_close_code(), 1009);
}

#[test]
fn an_unmasked_client_frame_closes_with_1002() {
    let (server, http) = start(&[]);
    let mut raw = RawHttp::upgrade(http);
    raw.send(&client_frame(1, b"naked", false));
    assert_eq!(raw.read_close_code(), 1002);
    drop(raw);
    server.log.wait_for(&["not masked"]);
}

#[test]
fn bad_requests_get_their_status() {
    let (server, http) = start(&["--allowed-origin", "https://friend.example"]);
    let cases: &[(&str, &str)] = &[
        ("GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", "404"),
        ("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "405",
        ),
        ("NOT HTTP AT ALL\r\n\r\n", "400"),
    ];
    for (request, status) in cases {
        let mut raw = RawHttp::connect(http);
        raw.send(request.as_bytes());
        let head = raw.read_head();
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{request:?}: {head}"
        );
    }
    let with_origin = |origin: &str| {
        UPGRADE.replace(
            "Host: 127.0.0.1\r\n",
            &format!("Host: 127.0.0.1\r\nOrigin: {origin}\r\n"),
        )
    };
    let mut raw = RawHttp::connect(http);
    raw.send(with_origin("https://evil.example").as_bytes());
    assert!(raw.read_head().starts_with("HTTP/1.1 403"));
    for allowed in ["https://friend.example", "http://127.0.0.1"] {
        let mut raw = RawHttp::connect(http);
        raw.send(with_origin(allowed).as_bytes());
        let head = raw.read_head();
        assert!(head.starts_with("HTTP/1.1 101"), "{allowed}: {head}");
    }
    server.log.wait_for(&["403"]);
}

#[test]
fn an_oversized_request_head_gets_400_and_is_closed() {
    let (server, http) = start(&[]);
    let mut raw = RawHttp::connect(http);
    let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    while head.len() < 9 * 1024 {
        head.push_str(&format!("X-Filler: {}\r\n", "a".repeat(400)));
    }
    raw.send(head.as_bytes());
    let response = String::from_utf8_lossy(&raw.read_to_end()).to_string();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    drop(raw);
    server.log.wait_for(&["8 KiB"]);
}

#[test]
fn a_slow_websocket_client_is_cut_off_like_a_tcp_one() {
    let (server, http) = start(&["--max-pending", "256KiB"]);
    let mut tcp = server.connect();
    // Upgraded, then never reads.
    let slow = RawHttp::upgrade(http);
    let mut marker = Ws::connect(http);
    marker.send_text("ready");
    tcp.expect(b"ready\n");
    let line = vec![b'x'; 1000];
    let mut line = line;
    line.push(b'\n');
    let reader = tcp.read_on_thread(4000 * 1001);
    for _ in 0..4000 {
        tcp.send(&line);
    }
    let got = reader.join().unwrap().unwrap();
    assert_eq!(got.len(), 4000 * 1001, "the TCP client got everything");
    server.log.wait_for(&["slow consumer"]);
    drop(slow);
}
