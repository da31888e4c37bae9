//! `--cluster redis://HOST:PORT`: several nodes over one Redis serve one broadcast, in one
//! order, through the faults the backplane can have.

mod util;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::thread;

use util::{Client, Server};

/// A `redis-server` on a free loopback port, without persistence; killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts one, or returns `None` (after saying why) when `redis-server` is not installed
    /// and `MOB_REQUIRE_REDIS` is not set.
    fn start() -> Option<Redis> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis::start_on(port)
    }

    fn start_on(port: u16) -> Option<Redis> {
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) if std::env::var_os("MOB_REQUIRE_REDIS").is_none() => {
                eprintln!("skipped: cannot start redis-server ({e})");
                return None;
            }
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let out = BufReader::new(child.stdout.take().unwrap());
        for line in out.lines() {
            if line.unwrap().contains("Ready to accept connections") {
                break;
            }
        }
        Some(Redis { child, port })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node of the cluster on `redis`, with `args`.
fn node(redis: &Redis, args: &[&str]) -> Server {
    let url = redis.url();
    let mut all = vec!["--cluster", url.as_str()];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// A client of `addr` that is a receiver once this returns: its own line came back through
/// Redis, after it joined.
fn joined(addr: SocketAddr, name: &str) -> Client {
    let mut c = Client::connect(addr);
    let hello = format!("hello {name}\n");
    c.send(hello.as_bytes());
    c.skip_past(hello.as_bytes());
    c
}

/// Reads lines from `c` until it has `n` that start with `prefix`; returns those.
fn lines_with(c: &mut Client, prefix: &str, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let line = String::from_utf8(c.read_line()).unwrap();
        if line.starts_with(prefix) {
            got.push(line);
        }
    }
    got
}

#[test]
fn three_nodes_one_order_for_every_client() {
    let Some(redis) = Redis::start() else { return };
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis, &[])).collect();
    let mut clients: Vec<Client> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| {
            [
                joined(n.addr, &format!("{i}a")),
                joined(n.addr, &format!("{i}b")),
            ]
        })
        .collect();
    const EACH: usize = 300;
    let senders: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let mut s = c.stream.try_clone().unwrap();
            thread::spawn(move || {
                for chunk in (0..EACH).collect::<Vec<_>>().chunks(30) {
                    let wire: String = chunk.iter().map(|i| format!("m {k} {i}\n")).collect();
                    std::io::Write::write_all(&mut s, wire.as_bytes()).unwrap();
                }
            })
        })
        .collect();
    let total = EACH * clients.len();
    let seen: Vec<Vec<String>> = clients
        .iter_mut()
        .map(|c| lines_with(c, "m ", total))
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s, &seen[0], "client {i} saw another order than client 0");
    }
    for k in 0..clients.len() {
        let from_k: Vec<usize> = seen[0]
            .iter()
            .filter_map(|l| {
                let mut parts = l.split(' ').skip(1);
                let sender: usize = parts.next()?.parse().ok()?;
                (sender == k).then(|| parts.next()?.parse().ok())?
            })
            .collect();
        assert_eq!(
            from_k,
            (0..EACH).collect::<Vec<_>>(),
            "publisher {k}'s order"
        );
    }
}

/// Sends one command to Redis (inline form) and returns its first reply line.
fn redis_command(redis: &Redis, command: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    std::io::Write::write_all(&mut s, format!("{command}\r\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

/// Publishers on every node send `each` numbered lines while `fault` runs; every client then
/// has seen all of them, in one order, each publisher's in its order.
fn one_order_through(redis: &Redis, nodes: &[Server], each: usize, fault: impl FnOnce()) {
    let mut clients: Vec<Client> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| joined(n.addr, &format!("{i}")))
        .collect();
    let senders: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let mut s = c.stream.try_clone().unwrap();
            thread::spawn(move || {
                for chunk in (0..each).collect::<Vec<_>>().chunks(10) {
                    let wire: String = chunk.iter().map(|i| format!("m {k} {i}\n")).collect();
                    std::io::Write::write_all(&mut s, wire.as_bytes()).unwrap();
                    thread::yield_now();
                }
            })
        })
        .collect();
    fault();
    let total = each * clients.len();
    let seen: Vec<Vec<String>> = clients
        .iter_mut()
        .map(|c| lines_with(c, "m ", total))
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s, &seen[0], "client {i} saw another order than client 0");
    }
    for k in 0..clients.len() {
        let from_k: Vec<usize> = seen[0]
            .iter()
            .filter_map(|l| {
                let mut parts = l.split(' ').skip(1);
                let sender: usize = parts.next()?.parse().ok()?;
                (sender == k).then(|| parts.next()?.parse().ok())?
            })
            .collect();
        assert_eq!(
            from_k,
            (0..each).collect::<Vec<_>>(),
            "publisher {k}'s order"
        );
    }
    let _ = redis;
}

#[test]
fn nodes_whose_redis_connections_are_killed_reconnect_and_miss_nothing() {
    let Some(redis) = Redis::start() else { return };
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis, &[])).collect();
    one_order_through(&redis, &nodes, 3000, || {
        for _ in 0..5 {
            let killed = redis_command(&redis, "CLIENT KILL TYPE normal");
            assert!(killed.starts_with(':'), "{killed}");
        }
    });
    for n in &nodes {
        n.log.wait_for(&["cluster:", "reconnect"]);
    }
}

#[test]
fn a_node_started_before_redis_serves_once_it_is_up() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    // The listening line is printed without Redis.
    let early = Server::start(&["--cluster", &url]);
    early.log.wait_for(&["cannot reach"]);
    let mut waiting = Client::connect(early.addr);
    waiting.send(b"sent before redis\n");
    let Some(redis) = Redis::start_on(port) else {
        return;
    };
    waiting.expect(b"sent before redis\n");
    let late = node(&redis, &[]);
    one_order_through(&redis, &[early, late], 200, || {});
}

#[test]
fn a_redis_that_stops_answering_for_a_while_loses_nothing() {
    let Some(redis) = Redis::start() else { return };
    let nodes: Vec<Server> = (0..2).map(|_| node(&redis, &[])).collect();
    let pid = redis.child.id() as i32;
    one_order_through(&redis, &nodes, 2000, || {
        // SAFETY: kill(2) on the PID of a child this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        // The nodes find it gone (their reads time out) while clients keep sending.
        for n in &nodes {
            n.log.wait_for(&["cluster:", "failed"]);
        }
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    });
}

#[test]
fn a_redis_restarted_without_its_data_is_logged_and_the_nodes_go_on_in_one_order() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.port;
    let nodes: Vec<Server> = (0..2).map(|_| node(&redis, &[])).collect();
    one_order_through(&redis, &nodes, 200, || {});
    drop(redis);
    let Some(redis) = Redis::start_on(port) else {
        return;
    };
    for n in &nodes {
        n.log.wait_for(&["restarted without the stream's data"]);
    }
    one_order_through(&redis, &nodes, 200, || {});
}

#[test]
fn a_client_that_sends_then_closes_gets_its_own_last_messages_back_first() {
    let Some(redis) = Redis::start() else { return };
    let nodes: Vec<Server> = (0..2).map(|_| node(&redis, &[])).collect();
    let mut other = joined(nodes[1].addr, "other");
    for round in 0..20 {
        let mut c = joined(nodes[0].addr, &format!("closer {round}"));
        let last = format!("last words {round}\n");
        c.send(last.as_bytes());
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        // Its own line came back through Redis before its end of stream.
        let (got, reset) = c.read_until_closed();
        assert!(!reset);
        assert!(
            String::from_utf8_lossy(&got).ends_with(&last),
            "round {round}: {:?}",
            String::from_utf8_lossy(&got)
        );
        other.skip_past(last.as_bytes());
    }
}

#[test]
fn no_echo_self_history_and_websocket_clients_hold_across_nodes() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &["--no-echo-self", "--history", "3"]);
    let b = node(
        &redis,
        &["--no-echo-self", "--history", "3", "--http", "127.0.0.1:0"],
    );
    // The WebSocket client is a receiver once its 101 came; `on_a` once its own line is read
    // (after it joined): when the first hears the second, both are.
    let mut ws = util::ws::Ws::connect(b.http_addr());
    let mut on_a = Client::connect(a.addr);
    on_a.send(b"a in\n");
    assert_eq!(ws.recv_text(), "a in");
    // Each hears the other, never itself, across nodes.
    ws.send_text("from ws");
    on_a.expect(b"from ws\n");
    for i in 0..5 {
        on_a.send(format!("n {i}\n").as_bytes());
    }
    for i in 0..5 {
        assert_eq!(ws.recv_text(), format!("n {i}"));
    }
    // A late joiner on node b gets the last 3 in the cluster's order.
    let mut late = Client::connect(b.addr);
    late.send(b"late\n");
    on_a.expect(b"late\n");
    late.expect(b"n 2\nn 3\nn 4\n");
    on_a.expect_nothing_pending();
}

#[test]
fn a_node_stopped_for_a_while_catches_up_without_being_cut_off() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut reader = joined(a.addr, "reader");
    let mut publisher = joined(b.addr, "publisher");
    a.signal(libc::SIGSTOP);
    let mut wire = String::new();
    for i in 0..20_000 {
        wire.push_str(&format!("m {i}\n"));
    }
    publisher.send(wire.as_bytes());
    publisher.skip_past(b"m 19999\n");
    a.signal(libc::SIGCONT);
    let got = lines_with(&mut reader, "m ", 20_000);
    let expected: Vec<String> = (0..20_000).map(|i| format!("m {i}")).collect();
    assert_eq!(got, expected);
}

/// Fetches `/metrics` until it contains `want` (within 10 s).
fn scrape_until(addr: SocketAddr, want: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        std::io::Read::read_to_string(&mut s, &mut body).unwrap();
        if body.contains(want) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {want:?} in:\n{body}"
        );
        thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn mob_cluster_up_says_whether_the_node_reaches_redis() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.port;
    let n = node(&redis, &["--metrics", "127.0.0.1:0"]);
    let metrics = n.metrics_addr();
    scrape_until(metrics, "\nmob_cluster_up 1\n");
    drop(redis);
    // A client's input waits meanwhile.
    let mut c = Client::connect(n.addr);
    c.send(b"while redis is down\n");
    scrape_until(metrics, "\nmob_cluster_up 0\n");
    n.log.wait_for(&["cluster:", "failed"]);
    let Some(_redis) = Redis::start_on(port) else {
        return;
    };
    scrape_until(metrics, "\nmob_cluster_up 1\n");
    c.expect(b"while redis is down\n");
    // Without --cluster there is no such metric.
    let plain = Server::start(&["--metrics", "127.0.0.1:0"]);
    let body = scrape_until(plain.metrics_addr(), "mob_connections");
    assert!(!body.contains("mob_cluster_up"));
}

#[test]
fn a_node_that_falls_behind_what_the_stream_keeps_logs_the_gap_and_goes_on() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &["--cluster-keep", "100"]);
    let b = node(&redis, &["--cluster-keep", "100"]);
    let mut reader = joined(a.addr, "reader");
    let mut publisher = joined(b.addr, "publisher");
    a.signal(libc::SIGSTOP);
    // One entry each (each waits for the one before to come back), far more than 100.
    for i in 0..1000 {
        let line = format!("m {i}\n");
        publisher.send(line.as_bytes());
        publisher.expect(line.as_bytes());
    }
    a.signal(libc::SIGCONT);
    a.log.wait_for(&["cluster: gap"]);
    // It goes on: what the stream still held arrives, in order, up to the newest, and it
    // was not cut off.
    let mut got = Vec::new();
    loop {
        let line = String::from_utf8(reader.read_line()).unwrap();
        if let Some(n) = line.strip_prefix("m ") {
            let n: usize = n.parse().unwrap();
            got.push(n);
            if n == 999 {
                break;
            }
        }
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    assert!(got.len() < 1000, "nothing was trimmed");
}
