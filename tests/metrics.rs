//! `--metrics`: the exposition is valid (checked with Python's prometheus_client, a parser
//! nobody here wrote), the values follow what clients do, `/healthz` answers.

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Instant;

use util::{Server, DEADLINE};

/// `GET path` on the metrics port: (status line, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics port");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The samples of an OpenMetrics exposition, parsed by Python's prometheus_client
/// (`name{labels}` -> value). `None` when the module is not installed (CI installs it; set
/// MOB_REQUIRE_PROMETHEUS=1 to fail instead of skipping).
fn parse_with_prometheus_client(text: &str) -> Option<HashMap<String, f64>> {
    const SCRIPT: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'prometheus_client'") {
        assert!(
            std::env::var_os("MOB_REQUIRE_PROMETHEUS").is_none(),
            "prometheus_client is required (pip install prometheus_client)"
        );
        eprintln!("skipped the exposition check: pip install prometheus_client to run it");
        return None;
    }
    assert!(
        out.status.success(),
        "the parser refused the exposition: {stderr}\n{text}"
    );
    let mut samples = HashMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (name, value) = line.rsplit_once(' ').unwrap();
        samples.insert(name.to_owned(), value.parse().unwrap());
    }
    Some(samples)
}

/// Scrapes until `ok` holds for the samples (values are at most a quarter second old), up to
/// the deadline.
fn scrape_until(addr: SocketAddr, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        if ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics never got there:\n{body}"
        );
        util::poll_tick();
    }
}

fn value(body: &str, sample: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_what_clients_do_and_parse_as_openmetrics() {
    let server = Server::start(&["--metrics", "127.0.0.1:0", "--max-message", "16"]);
    let metrics = server.metrics_addr();
    let (status, body) = get(metrics, "/healthz");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    assert!(get(metrics, "/nope").0.contains("404"));

    let mut a = server.connect();
    let mut b = server.connect();
    b.send(b"one\n");
    a.expect(b"one\n");
    b.expect(b"one\n");
    a.send(b"two\n");
    a.expect(b"two\n");
    b.expect(b"two\n");
    // A protocol error: a line over --max-message.
    let mut bad = server.connect();
    bad.send(b"this line is far too long for sixteen bytes\n");
    let _ = bad.read_until_closed();

    let body = scrape_until(metrics, |b| {
        value(b, "mob_disconnects_total{reason=\"protocol\"}") == Some(1.0)
            && value(b, "mob_messages_received_total") == Some(2.0)
            && value(b, "mob_connections") == Some(2.0)
    });
    assert_eq!(value(&body, "mob_connections_accepted_total"), Some(3.0));
    assert_eq!(value(&body, "mob_connections_rejected_total"), Some(0.0));
    assert_eq!(value(&body, "mob_dropped_messages_total"), Some(0.0));
    // Read: 4 + 4 bytes, and what the bad client sent before it was cut off.
    assert!(value(&body, "mob_bytes_received_total").unwrap() >= 8.0);
    // Sent: two lines to two clients.
    assert_eq!(value(&body, "mob_bytes_sent_total"), Some(16.0));
    assert!(value(&body, "mob_log_bytes").is_some());
    for reason in [
        "closed",
        "reset",
        "slow_consumer",
        "idle",
        "shutdown",
        "auth",
    ] {
        let sample = format!("mob_disconnects_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&body, &sample), Some(0.0), "{sample}");
    }

    if let Some(samples) = parse_with_prometheus_client(&body) {
        assert_eq!(samples["mob_connections{}"], 2.0);
        assert_eq!(samples["mob_messages_received_total{}"], 2.0);
        assert_eq!(samples["mob_disconnects_total{reason=\"protocol\"}"], 1.0);
    }

    // A client leaving shows within a second.
    drop(a);
    scrape_until(metrics, |b| {
        value(b, "mob_connections") == Some(1.0)
            && value(b, "mob_disconnects_total{reason=\"closed\"}") == Some(1.0)
    });
}

#[test]
fn the_metrics_line_comes_last_with_the_real_port() {
    let server = Server::start(&["--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    assert_ne!(metrics.port(), 0);
    let out = server.stdout.text();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("listening on "), "{out}");
    assert!(lines[1].starts_with("http on "), "{out}");
    assert_eq!(lines[2], format!("metrics on {metrics}"));
}

/// Silent or trickling connections to the metrics port neither lock scrapes out nor hold the
/// server up at shutdown.
#[test]
fn silent_scrapers_neither_block_scrapes_nor_the_shutdown() {
    let mut server = Server::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let mut silent: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    // One trickles a request head byte by byte, never finishing it.
    silent[0].write_all(b"GET /metr").unwrap();
    let started = Instant::now();
    let (status, body) = get(metrics, "/healthz");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "a scrape waited {:?} behind silent connections",
        started.elapsed()
    );
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(std::time::Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    drop(silent);
}

/// WebSocket traffic counts: the frames read, and the frames and lines written.
#[test]
fn websocket_bytes_are_counted() {
    let server = Server::start(&["--metrics", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let mut tcp = server.connect();
    let mut ws = util::ws::Ws::connect(server.http_addr());
    // An 8-byte client frame (2 header, 4 mask, "hi"): "hi\n" to the TCP client (3 bytes)
    // and a 4-byte frame back to the WebSocket client, after its 101 (129 bytes).
    ws.send_text("hi");
    tcp.expect(b"hi\n");
    assert_eq!(ws.recv_text(), "hi");
    let body = scrape_until(metrics, |b| {
        value(b, "mob_messages_received_total") == Some(1.0)
            && value(b, "mob_bytes_sent_total") == Some(3.0 + 4.0 + 129.0)
    });
    assert_eq!(value(&body, "mob_bytes_received_total"), Some(8.0));
}
