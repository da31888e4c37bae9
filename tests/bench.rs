//! `mob bench` against real servers: mob in every protocol and over WebSocket, Redis (also over
//! TLS), NATS and
//! a WebSocket broadcast server (the Node peer), and a relay that loses and reorders on purpose
//! (the checker must be able to fail); with several addresses, two mob cluster nodes over one
//! Redis and two routed NATS servers.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use serde_json::Value;
use util::{mob, Output, Server};

/// Runs a short `mob bench --json` and returns its exit success and report.
fn bench(addr: SocketAddr, target: &str, extra: &[&str]) -> (bool, Value) {
    bench_nodes(&[addr], target, extra)
}

/// [`bench`] given several addresses (the nodes of one cluster).
fn bench_nodes(addrs: &[SocketAddr], target: &str, extra: &[&str]) -> (bool, Value) {
    let out = mob()
        .arg("bench")
        .args(addrs.iter().map(|a| a.to_string()))
        .args(["--target", target])
        .args([
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--subscribers",
            "20",
            "--json",
        ])
        .args(extra)
        .output()
        .expect("run mob bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

fn assert_clean(ok: bool, report: &Value) {
    for field in [
        "lost",
        "duplicated",
        "out_of_order",
        "diverged",
        "corrupt",
        "disconnects",
    ] {
        assert_eq!(report[field], 0, "{field} in {report}");
    }
    assert!(
        report["delivered"].as_u64().unwrap() > 0,
        "nothing delivered: {report}"
    );
    assert!(ok, "bench failed: {report}");
}

#[test]
fn bench_finds_no_loss_against_mob_in_every_protocol() {
    for (protocol, publishers) in [("line", "3"), ("frame", "3"), ("raw", "1")] {
        let server = Server::start(&["--protocol", protocol, "--no-echo-self"]);
        let target = format!("mob-{protocol}");
        let (ok, report) = bench(server.addr, &target, &["--publishers", publishers]);
        assert_clean(ok, &report);
        // Open loop too: every message scheduled was delivered to all 20 subscribers.
        let (ok, report) = bench(
            server.addr,
            &target,
            &["--publishers", publishers, "--rate", "2000"],
        );
        assert_clean(ok, &report);
    }
}

#[test]
fn bench_finds_no_loss_against_mob_over_websocket() {
    for protocol in ["line", "frame"] {
        let args = [
            "--protocol",
            protocol,
            "--no-echo-self",
            "--http",
            "127.0.0.1:0",
        ];
        let server = Server::start(&args);
        let http = server.http_addr();
        let (ok, report) = bench(http, "mob-ws", &["--publishers", "3"]);
        assert_clean(ok, &report);
        let (ok, report) = bench(http, "mob-ws", &["--publishers", "3", "--rate", "2000"]);
        assert_clean(ok, &report);
    }
}

#[test]
fn bench_finds_no_loss_against_mob_with_a_token_over_tcp_and_websocket() {
    let dir = std::env::temp_dir().join(format!("mob-bench-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "bench/token+1\n").unwrap();
    let file = file.to_str().unwrap();
    for protocol in ["line", "frame"] {
        let server = Server::start(&[
            "--protocol",
            protocol,
            "--no-echo-self",
            "--auth-token-file",
            file,
            "--http",
            "127.0.0.1:0",
        ]);
        let extra = ["--publishers", "3", "--token-file", file];
        let (ok, report) = bench(server.addr, &format!("mob-{protocol}"), &extra);
        assert_clean(ok, &report);
        let (ok, report) = bench(server.http_addr(), "mob-ws", &extra);
        assert_clean(ok, &report);
        // Without the token nobody is let in: the bench cannot start.
        let (ok, _) = bench_result(server.addr, &format!("mob-{protocol}"));
        assert!(!ok, "a bench without the token ran");
    }
}

#[test]
fn bench_spreads_its_connections_over_the_source_addresses_given() {
    // The server logs every connect with its peer at debug.
    let mut cmd = mob();
    cmd.env("RUST_LOG", "mob=debug");
    let server = Server::start_with(cmd, &["--no-echo-self"]);
    let extra = [
        "--source",
        "127.0.0.1,127.0.0.2",
        "--publishers",
        "2",
        "--rate",
        "1000",
    ];
    let (ok, report) = bench(server.addr, "mob-line", &extra);
    assert_clean(ok, &report);
    assert_eq!(
        report["sources"],
        serde_json::json!(["127.0.0.1", "127.0.0.2"])
    );
    // 20 subscribers and 2 publishers take the two addresses in turn: 11 connections each.
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let from = format!("connected peer={ip}:");
        let deadline = Instant::now() + util::DEADLINE;
        while server.log.count(&from) < 11 && Instant::now() < deadline {
            util::poll_tick();
        }
        assert_eq!(server.log.count(&from), 11, "{}", server.log.text());
    }
}

#[test]
fn bench_opens_thousands_of_connections_in_one_go_from_repeated_sources() {
    // Past what is connected at once (256) several times over, from two addresses given as
    // two flags; every subscriber is synced and checked as with twenty.
    let server = Server::start(&["--no-echo-self"]);
    let out = mob()
        .args(["bench", &server.addr.to_string(), "--json"])
        .args(["--subscribers", "2000", "--rate", "100", "--duration", "1"])
        .args([
            "--warmup",
            "0.2",
            "--source",
            "127.0.0.3",
            "--source",
            "127.0.0.4",
        ])
        .output()
        .expect("run mob bench");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_clean(out.status.success(), &report);
    assert_eq!(
        report["sources"],
        serde_json::json!(["127.0.0.3", "127.0.0.4"])
    );
    // The measured second's messages were published (100 are due in it; the last may fall
    // just past its end), and every message of the run reached all 2,000 (nothing lost, and
    // the deliveries a whole multiple of them).
    let published = report["published"].as_u64().unwrap();
    assert!((95..=100).contains(&published), "{report}");
    let total = report["delivered_total"].as_u64().unwrap();
    assert!(total >= 200_000 && total % 2000 == 0, "{report}");
    assert!(report["setup_s"].as_f64().unwrap() > 0.0, "{report}");
}

#[test]
fn bench_holds_every_connection_idle_before_publishing_when_asked() {
    let server = Server::start(&["--no-echo-self"]);
    let out = mob()
        .args(["bench", &server.addr.to_string(), "--json", "--idle", "0.5"])
        .args(["--subscribers", "20", "--rate", "1000", "--duration", "0.5"])
        .output()
        .expect("run mob bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Said when it begins, so a script can read the server's memory meanwhile.
    assert!(
        stderr.contains("21 connections set up in") && stderr.contains("idle for 500ms"),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_clean(out.status.success(), &report);
}

#[test]
fn bench_refuses_a_source_address_it_cannot_use() {
    let server = Server::start(&[]);
    let run = |source: &str| {
        let out = mob()
            .args(["bench", &server.addr.to_string(), "--source", source])
            .args(["--duration", "0.2", "--warmup", "0", "--subscribers", "2"])
            .output()
            .expect("run mob bench");
        assert!(!out.status.success(), "{source}: the bench ran");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Not an address of this machine (TEST-NET-1), and not of the server's family.
    let stderr = run("192.0.2.1");
    assert!(
        stderr.contains("--source 192.0.2.1: cannot bind to it") && stderr.contains("127.0.0.0/8"),
        "{stderr}"
    );
    let stderr = run("::1");
    assert!(stderr.contains("one is IPv4, the other IPv6"), "{stderr}");
    // The same address twice is one set of ports, not two.
    let stderr = run("127.0.0.1,127.0.0.1");
    assert!(
        stderr.contains("--source 127.0.0.1 is given twice"),
        "{stderr}"
    );
    // More connections from one address to one server than there can be ports: refused
    // before any is opened, with the flag to add (where the kernel says what its range is).
    let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        eprintln!("no ip_local_port_range here: the port check is skipped");
        return;
    };
    let bounds: Vec<usize> = range
        .split_whitespace()
        .map(|f| f.parse().expect("a port"))
        .collect();
    let need = 70_001usize.div_ceil(bounds[1] - bounds[0] + 1);
    let out = mob()
        .args(["bench", &server.addr.to_string(), "--subscribers", "70000"])
        .output()
        .expect("run mob bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let list: Vec<String> = (1..=need.clamp(2, 4))
        .map(|i| format!("127.0.0.{i}"))
        .collect();
    let advice = format!(
        "--source {}{}",
        list.join(","),
        if need > 4 { ",..." } else { " " }
    );
    assert!(
        !out.status.success()
            && stderr.contains("ip_local_port_range")
            && stderr.contains(&format!("at least {need} source addresses"))
            && stderr.contains(&advice),
        "{advice:?} in {stderr}"
    );
}

#[test]
fn bench_refuses_more_connections_than_its_open_files_limit_allows() {
    let server = Server::start(&[]);
    // 31 connections and the bench's own files under a limit of 40 (sh sets both limits).
    let out = Command::new("sh")
        .args(["-c", "ulimit -n 40 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_mob"))
        .args(["bench", &server.addr.to_string(), "--subscribers", "30"])
        .output()
        .expect("run mob bench under sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("this process may open 40"),
        "{stderr}"
    );
}

/// Whether a bench run without extra flags succeeded (it may print no report).
fn bench_result(addr: SocketAddr, target: &str) -> (bool, String) {
    let out = mob()
        .args(["bench", &addr.to_string(), "--target", target])
        .args(["--duration", "1", "--warmup", "0.2", "--subscribers", "2"])
        .output()
        .expect("run mob bench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bench_runs_clean_against_a_server_with_history_again_and_again() {
    // The second run's subscribers are first sent the first run's last messages.
    let server = Server::start(&["--history", "3", "--no-echo-self"]);
    for _ in 0..2 {
        let (ok, report) = bench(server.addr, "mob-line", &["--rate", "500"]);
        assert_clean(ok, &report);
        assert_eq!(report["corrupt"], 0, "{report}");
    }
}

#[test]
fn bench_checker_reports_loss_and_reordering() {
    let addr = faulty_relay();
    let (ok, report) = bench(addr, "mob-line", &["--rate", "1000"]);
    assert!(!ok, "the bench must fail against a lossy server: {report}");
    // Per subscriber: the message dropped, and the one torn (it never arrived whole).
    assert_eq!(report["lost"], 40, "two lost for each subscriber: {report}");
    assert_eq!(
        report["out_of_order"], 20,
        "one swap seen by each subscriber: {report}"
    );
    assert_eq!(
        report["duplicated"], 20,
        "one repeat seen by each subscriber: {report}"
    );
}

#[test]
fn bench_checker_reports_subscribers_that_saw_another_order() {
    // Each publisher's messages arrive once each and in order everywhere, so only comparing the
    // subscribers' orders can tell that half of them saw two publishers interleaved otherwise.
    let addr = two_faced_relay();
    let (ok, report) = bench(addr, "mob-line", &["--publishers", "2", "--rate", "1000"]);
    assert!(!ok, "the bench must fail when orders differ: {report}");
    for field in ["lost", "duplicated", "out_of_order", "corrupt"] {
        assert_eq!(report[field], 0, "{field} in {report}");
    }
    assert_eq!(
        report["diverged"], 10,
        "the 10 odd subscribers saw one pair swapped: {report}"
    );
}

#[test]
fn bench_finds_no_loss_against_redis() {
    let Some(peer) = redis() else { return };
    let (ok, report) = bench(peer.addr, "redis", &["--publishers", "2"]);
    assert_clean(ok, &report);
}

#[test]
fn bench_finds_no_loss_against_redis_over_tls() {
    let dir = std::env::temp_dir().join(format!("mob-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let peer = Peer::start(
        "redis-server",
        |port| {
            let mut args: Vec<String> = ["--port", "0", "--tls-port", &port.to_string()]
                .map(String::from)
                .to_vec();
            for (flag, file) in [
                ("--tls-cert-file", &cert),
                ("--tls-key-file", &key),
                ("--tls-ca-cert-file", &cert),
            ] {
                args.extend([flag.to_string(), file.clone()]);
            }
            args.extend(
                [
                    "--tls-auth-clients",
                    "no",
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ]
                .map(String::from),
            );
            args.extend(["--appendonly".into(), "no".into()]);
            args
        },
        "Ready to accept connections",
    );
    let Some(peer) = peer else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let (ok, report) = bench(peer.addr, "redis", &["--publishers", "2", "--ca", &cert]);
    assert_clean(ok, &report);
    // The built-in roots do not vouch for a certificate made here: the bench must refuse it.
    let out = mob()
        .args([
            "bench",
            &peer.addr.to_string(),
            "--target",
            "redis",
            "--tls",
        ])
        .args(["--duration", "0.2", "--warmup", "0", "--subscribers", "2"])
        .output()
        .expect("run mob bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_finds_no_loss_against_nats() {
    let Some(peer) = Peer::start(
        "nats-server",
        |port| {
            vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ]
        },
        "Server is ready",
    ) else {
        return;
    };
    let (ok, report) = bench(peer.addr, "nats", &["--publishers", "2"]);
    assert_clean(ok, &report);
}

#[test]
fn bench_finds_no_loss_against_a_websocket_broadcast_server() {
    // The Node `ws` peer: needs node, and `npm ci` run in bench/ws-peer.
    let peer_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/ws-peer");
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("SKIPPED: node is not installed");
        return;
    }
    if !peer_dir.join("node_modules/ws").is_dir() {
        eprintln!("SKIPPED: no bench/ws-peer/node_modules (run `npm ci` in bench/ws-peer)");
        return;
    }
    let server = peer_dir.join("server.js").display().to_string();
    let Some(peer) = Peer::start(
        "node",
        |port| vec![server.clone(), "--port".into(), port.to_string()],
        "listening on",
    ) else {
        return;
    };
    let (ok, report) = bench(peer.addr, "ws", &["--publishers", "2"]);
    assert_clean(ok, &report);
    let path = format!("ws://{}/any/path", peer.addr);
    let out = mob()
        .args(["bench", &path, "--target", "ws", "--duration", "0.5"])
        .args(["--warmup", "0", "--subscribers", "5", "--rate", "1000"])
        .output()
        .expect("run mob bench");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn bench_finds_one_order_across_two_cluster_nodes() {
    let Some(redis) = redis() else { return };
    let url = format!("redis://{}", redis.addr);
    let nodes: Vec<Server> = (0..2)
        .map(|_| Server::start(&["--cluster", &url, "--no-echo-self"]))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    // W1's shape: one publisher (on the first node), half the subscribers on the other.
    let (ok, report) = bench_nodes(&addrs, "mob-line", &[]);
    assert_clean(ok, &report);
    assert_eq!(report["addrs"].as_array().unwrap().len(), 2, "{report}");
    // W4's: publishers on both nodes, whose messages every subscriber must see in one order
    // (the digest comparison; per publisher alone, two interleavings would both pass).
    let (ok, report) = bench_nodes(&addrs, "mob-line", &["--publishers", "4", "--rate", "2000"]);
    assert_clean(ok, &report);
}

#[test]
fn bench_finds_no_loss_across_two_routed_nats_servers() {
    let [a, b] = [free_port(), free_port()];
    let node = |cluster: u16, route: u16| {
        move |port: u16| {
            ["-a", "127.0.0.1", "-p", &port.to_string()]
                .iter()
                .map(|s| s.to_string())
                .chain([
                    "-cluster".into(),
                    format!("nats://127.0.0.1:{cluster}"),
                    "-routes".into(),
                    format!("nats://127.0.0.1:{route}"),
                ])
                .collect()
        }
    };
    let Some(first) = Peer::start("nats-server", node(a, b), "Server is ready") else {
        return;
    };
    let Some(second) = Peer::start("nats-server", node(b, a), "Server is ready") else {
        return;
    };
    // The route may not be up yet: the bench's sync from each node's publishers must wait for
    // it (a confirmed subscription on one node says nothing about the other).
    let (ok, report) = bench_nodes(
        &[first.addr, second.addr],
        "nats",
        &["--publishers", "4", "--rate", "2000"],
    );
    assert_clean(ok, &report);
}

/// A `redis-server` without persistence, or `None` when it is not installed (a failure under
/// `MOB_REQUIRE_REDIS=1`).
fn redis() -> Option<Peer> {
    Peer::start(
        "redis-server",
        |port| {
            ["--port", &port.to_string(), "--bind", "127.0.0.1"]
                .iter()
                .chain(&["--save", "", "--appendonly", "no"])
                .map(|s| s.to_string())
                .collect()
        },
        "Ready to accept connections",
    )
}

/// A peer server (Redis, NATS, Node) on a free loopback port, killed when dropped.
struct Peer {
    child: Child,
    addr: SocketAddr,
}

impl Peer {
    /// Starts `program` and waits for its ready line. Without the program installed this
    /// returns `None` (the test passes vacuously, saying so) unless `CI` is set, where `.ci/run`
    /// installs it and its absence is a failure (or, for Redis, `MOB_REQUIRE_REDIS=1`).
    fn start(program: &str, args: impl Fn(u16) -> Vec<String>, ready: &str) -> Option<Peer> {
        if Command::new(program).arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{program} is not installed (.ci/run installs it)"
            );
            assert!(
                program != "redis-server"
                    || std::env::var("MOB_REQUIRE_REDIS").as_deref() != Ok("1"),
                "redis-server is not installed and MOB_REQUIRE_REDIS=1"
            );
            eprintln!("SKIPPED: {program} is not installed (apt-get install {program})");
            return None;
        }
        let port = free_port();
        let mut child = Command::new(program)
            .args(args(port))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let log = Output::default();
        log.clone().collect(child.stdout.take().unwrap());
        log.clone().collect(child.stderr.take().unwrap());
        log.wait_for(&[ready]);
        Some(Peer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A line relay with two faces: connections accepted at an odd position get, once, two
/// consecutive messages of different publishers swapped (from the 100th message on); the others
/// get everything in the order it came. Per publisher, every connection's order is right.
fn two_faced_relay() -> SocketAddr {
    #[derive(Default)]
    struct Relay {
        clients: Vec<TcpStream>,
        count: u64,
        /// The message the odd connections have not been sent yet.
        held: Option<Vec<u8>>,
        swapped: bool,
    }
    impl Relay {
        fn send(&mut self, line: &[u8], odd: bool) {
            for (i, c) in self.clients.iter_mut().enumerate() {
                if (i % 2 == 1) == odd {
                    let _ = c.write_all(line);
                }
            }
        }
        fn relay(&mut self, line: Vec<u8>) {
            if line.starts_with(b"ffffffff") {
                self.send(&line, false);
                self.send(&line, true);
                return;
            }
            self.count += 1;
            self.send(&line, false);
            match self.held.take() {
                // The first 8 bytes name the publisher.
                Some(held) if held[..8] != line[..8] => {
                    self.send(&line, true);
                    self.send(&held, true);
                    self.swapped = true;
                }
                Some(held) => {
                    self.send(&held, true);
                    self.held = Some(line);
                }
                None if !self.swapped && self.count >= 100 => self.held = Some(line),
                None => self.send(&line, true),
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let relay: Arc<Mutex<Relay>> = Arc::default();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            relay
                .lock()
                .unwrap()
                .clients
                .push(stream.try_clone().unwrap());
            let relay = Arc::clone(&relay);
            thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n') {
                    let Ok(mut line) = line else { break };
                    line.push(b'\n');
                    relay.lock().unwrap().relay(line);
                }
            });
        }
    });
    addr
}

/// A line relay that swaps the 100th and 101st messages, loses the 200th, sends the 300th twice
/// and tears the 400th (the bench's sync message, publisher id ffffffff, always goes through).
fn faulty_relay() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let clients: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let count = Arc::new(AtomicU64::new(0));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            clients.lock().unwrap().push(stream.try_clone().unwrap());
            let (clients, count) = (Arc::clone(&clients), Arc::clone(&count));
            thread::spawn(move || {
                let broadcast = |line: &[u8]| {
                    for c in clients.lock().unwrap().iter_mut() {
                        let _ = c.write_all(line);
                    }
                };
                let mut held = None;
                for line in BufReader::new(stream).split(b'\n') {
                    let Ok(mut line) = line else { break };
                    line.push(b'\n');
                    if line.starts_with(b"ffffffff") {
                        broadcast(&line);
                        continue;
                    }
                    match count.fetch_add(1, Ordering::SeqCst) {
                        100 => held = Some(line),
                        101 => {
                            broadcast(&line);
                            broadcast(&held.take().unwrap());
                        }
                        200 => {}
                        300 => {
                            broadcast(&line);
                            broadcast(&line);
                        }
                        400 => broadcast(&line[10..]),
                        _ => broadcast(&line),
                    }
                }
            });
        }
    });
    addr
}
