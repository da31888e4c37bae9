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

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    /// Starts one, or returns `None` (after saying why) when `redis-server` is not installed
    /// and `MOB_REQUIRE_REDIS` is not set.
    fn start() -> Option<Redis> {
        Redis::start_on(free_port())
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
    // Two clients on each node, all publishing.
    let twice: Vec<&Server> = nodes.iter().chain(&nodes).collect();
    one_order_through(&redis, &twice, 300, || {});
}

/// Sends one command to Redis (inline form) and returns its first reply line.
fn redis_command(redis: &Redis, command: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    std::io::Write::write_all(&mut s, format!("{command}\r\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

/// A numeric field of `INFO section` (a bulk reply: its length line, then `field:value` lines).
fn redis_info_field(redis: &Redis, section: &str, field: &str) -> u64 {
    let s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    std::io::Write::write_all(&mut &s, format!("INFO {section}\r\n").as_bytes()).unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let len: usize = line
        .trim_start_matches('$')
        .trim()
        .parse()
        .expect("a bulk reply");
    let mut body = vec![0; len];
    std::io::Read::read_exact(&mut reader, &mut body).unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
}

/// Publishers on every node send `each` numbered lines while `fault` runs; every client then
/// has seen all of them, in one order, each publisher's in its order.
fn one_order_through<S: std::borrow::Borrow<Server>>(
    redis: &Redis,
    nodes: &[S],
    each: usize,
    fault: impl FnOnce(),
) {
    let mut clients: Vec<Client> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| joined(n.borrow().addr, &format!("{i}")))
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
        n.log.wait_for(&["cluster:", "failed", "retrying"]);
    }
}

#[test]
fn a_node_started_before_redis_serves_once_it_is_up() {
    let port = free_port();
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
    stopped_node_catches_up(0);
}

/// The reader once sized its reads by the entries it had seen: after a run of tiny ones it
/// asked for 256 full entries at once (64 MiB, 32 times its budget), and a client reading as
/// fast as it could was cut as a slow consumer. Its reads are sized for full entries now.
#[test]
fn a_node_that_saw_only_tiny_entries_catches_up_within_its_budget() {
    stopped_node_catches_up(100);
}

/// Node `a` is stopped while 20 MB is published on `b` (after `tiny` one-line entries), then
/// resumed: its reader gets every line in order, is not cut, and `a` stays within its bounds.
fn stopped_node_catches_up(tiny: usize) {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut reader = joined(a.addr, "reader");
    let mut publisher = joined(b.addr, "publisher");
    for i in 0..tiny {
        // One entry each: the next is sent once this one came back.
        let line = format!("t {i}\n");
        publisher.send(line.as_bytes());
        publisher.skip_past(line.as_bytes());
        reader.skip_past(line.as_bytes());
    }
    let peak_before = a.peak_rss();
    a.signal(libc::SIGSTOP);
    // 20 MB: more than --max-pending (8 MiB) holds; Redis holds it while `a` is stopped.
    let pad = "x".repeat(990);
    let publishing = thread::spawn(move || {
        for chunk in (0..20_000).collect::<Vec<u32>>().chunks(100) {
            let wire: String = chunk.iter().map(|i| format!("m {i:05} {pad}\n")).collect();
            publisher.send(wire.as_bytes());
            publisher.skip_past(wire.as_bytes());
        }
    });
    publishing.join().unwrap();
    a.signal(libc::SIGCONT);
    let got = lines_with(&mut reader, "m ", 20_000);
    for (i, line) in got.iter().enumerate() {
        assert!(
            line.starts_with(&format!("m {i:05} ")),
            "line {i}: {:.20}",
            line
        );
    }
    let log = a.log.text();
    assert!(!log.contains("disconnected: slow consumer"), "{log}");
    // --max-pending (8 MiB) and a read budget of a few MiB; 64 MiB read at once was ~70 MB.
    let grew = a.peak_rss().saturating_sub(peak_before);
    assert!(
        grew < 32 << 20,
        "node a grew {} MiB catching up",
        grew >> 20
    );
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

/// With Redis unreachable, the node stops reading client input once a round's worth waits to
/// be published (README, "Redis unreachable"): the input waits in the client's socket.
#[test]
fn an_unreachable_redis_stops_client_input_and_the_node_does_not_grow() {
    use std::io::Write;
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let n = Server::start(&["--cluster", &url]);
    n.log.wait_for(&["cannot reach"]);
    let mut s = std::net::TcpStream::connect(n.addr).unwrap();
    s.set_write_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let chunk = [b"x".repeat(1023), b"\n".to_vec()].concat().repeat(64);
    let mut sent = 0usize;
    // Stop at 128 MiB or once the node stops reading (the write times out).
    while sent < 128 << 20 {
        match s.write(&chunk) {
            Ok(k) => sent += k,
            Err(_) => break,
        }
    }
    // A 2 MiB round budget plus kernel socket buffers is far below 64 MiB.
    assert!(
        sent < 64 << 20,
        "the node took {} MiB of input while Redis was unreachable",
        sent >> 20
    );
}

/// Review reproduction: one entry should hold about a round's worth of input (the outbox's
/// budget, `--max-pending / 4` = 2 MiB by default); it holds whatever the outbox gathered.
#[test]
fn stream_entries_stay_near_the_round_budget() {
    use std::io::Write;
    let Some(redis) = Redis::start() else { return };
    let n = node(&redis, &[]);
    let c = joined(n.addr, "sender");
    let mut r = c.stream.try_clone().unwrap();
    let drain = thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        while got < 20 << 20 {
            match std::io::Read::read(&mut r, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
    });
    let mut s = c.stream.try_clone().unwrap();
    let chunk = [b"x".repeat(1023), b"\n".to_vec()].concat().repeat(64);
    for _ in 0..(20 << 20) / chunk.len() {
        if s.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = drain.join();
    // The largest entry: each bulk string's length in the raw RESP reply of XRANGE.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    s.write_all(b"XRANGE mob - +\r\n").unwrap();
    let mut rd = BufReader::new(s);
    let mut biggest = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        match rd.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(len) = line.strip_prefix('$') {
            let len: usize = len.trim().parse().unwrap();
            biggest = biggest.max(len);
            let mut skip = vec![0u8; len + 2];
            std::io::Read::read_exact(&mut rd, &mut skip).unwrap();
        }
    }
    assert!(
        biggest <= 4 << 20,
        "an entry of {} MiB (round budget 2 MiB)",
        biggest >> 20
    );
}

#[test]
fn error_replies_from_redis_are_retried_with_backoff_not_in_a_tight_loop() {
    let Some(redis) = Redis::start() else { return };
    let n = node(&redis, &["--cluster-channel", "taken"]);
    let mut c = joined(n.addr, "before");
    // The stream's key becomes a string: every XADD and XREAD is answered WRONGTYPE.
    assert!(redis_command(&redis, "DEL taken").starts_with(':'));
    assert!(redis_command(&redis, "SET taken string").starts_with('+'));
    c.send(b"while the key is wrong\n");
    n.log.wait_for(&["WRONGTYPE"]);
    // What Redis answered with errors over one second (backoff waits 50 ms, doubling up to 2 s,
    // so a handful each for the publisher and the reader; a tight loop, thousands). Time is
    // what is measured here, so the test waits it out.
    let errors = || redis_info_field(&redis, "stats", "total_error_replies");
    let before = errors();
    let lines = n.log.text().lines().count();
    thread::sleep(std::time::Duration::from_secs(1));
    let during = errors() - before;
    assert!(during <= 20, "{during} error replies in a second");
    assert!(
        n.log.text().lines().count() - lines <= 2,
        "{}",
        n.log.text()
    );
    // Mended, it goes on with what waited.
    assert!(redis_command(&redis, "DEL taken").starts_with(':'));
    c.skip_past(b"while the key is wrong\n");
}

#[test]
fn a_client_that_closes_while_redis_is_frozen_on_a_new_stream_still_gets_its_own_line() {
    let Some(redis) = Redis::start() else { return };
    let n = node(&redis, &[]);
    let mut c = joined(n.addr, "first");
    let pid = redis.child.id() as i32;
    // SAFETY: kill(2) on the PID of a child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    c.send(b"last words\n");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    n.log.wait_for(&["cluster:", "failed"]);
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let (got, _) = c.read_until_closed();
    assert!(
        String::from_utf8_lossy(&got).ends_with("last words\n"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}
