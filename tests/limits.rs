//! Bounded memory, slow consumers, and the limits on connections and descriptors.

mod util;

use std::sync::mpsc;
use std::thread;

use util::{Client, Server};

const MIB: u64 = 1 << 20;

/// Prints `bytes` of memory (the tests' measurements are worth seeing with --nocapture) and
/// fails the test when they reach `limit_mib`.
fn assert_mib_below(what: &str, bytes: u64, limit_mib: u64) {
    let mib = bytes as f64 / MIB as f64;
    eprintln!("{what}: {mib:.1} MiB");
    assert!(
        bytes < limit_mib * MIB,
        "{what}: {mib:.1} MiB, limit {limit_mib} MiB"
    );
}

/// Connects `n` clients that never read (small receive buffers, so they fall behind soon) and
/// one that does, and proves all are registered. Returns (readers-to-be, non-readers).
fn clients(server: &Server, non_readers: usize) -> (Client, Client, Vec<Client>) {
    let mut stalled: Vec<Client> = (0..non_readers)
        .map(|_| Client::connect_small_buffer(server.addr))
        .collect();
    let mut reader = server.connect();
    let mut publisher = server.connect();
    publisher.send(b"ready\n");
    reader.expect(b"ready\n");
    publisher.expect(b"ready\n");
    for c in &mut stalled {
        c.expect(b"ready\n");
    }
    (publisher, reader, stalled)
}

/// Publishes `total` bytes of numbered lines as fast as the one reader keeps up (never more than
/// `window` bytes ahead of it, so the reader itself is never a slow consumer), then "END".
/// Checks the reader got every line, in order; returns the number of lines.
fn publish_flat_out(publisher: Client, mut reader: Client, total: u64, window: u64) -> u64 {
    let line_len = 1000u64;
    let lines = total / line_len;
    let (progress_tx, progress_rx) = mpsc::channel::<u64>();
    let reading = thread::spawn(move || {
        for i in 0..lines {
            let line = reader.read_line();
            let want = format!("{i:0>999}");
            assert!(line == want.as_bytes(), "line {i} lost or out of order");
            if i % 256 == 0 {
                let _ = progress_tx.send(i * line_len);
            }
        }
        reader.expect(b"END\n");
        reader
    });
    let mut publisher = publisher;
    publisher.discard_input();
    let mut read_up_to = 0u64;
    let mut batch = Vec::with_capacity(64 * 1024);
    for i in 0..lines {
        batch.extend_from_slice(format!("{i:0>999}\n").as_bytes());
        if batch.len() >= 64 * 1024 || i == lines - 1 {
            publisher.send(&batch);
            batch.clear();
            while (i + 1) * line_len > read_up_to + window {
                read_up_to = progress_rx.recv().expect("reader stopped");
            }
        }
    }
    publisher.send(b"END\n");
    drop(reading.join().expect("reader failed"));
    drop(publisher);
    lines
}

#[test]
fn slow_consumers_are_disconnected_and_the_others_lose_nothing() {
    let server = Server::start(&["--max-pending", "1MiB"]);
    let (publisher, reader, mut stalled) = clients(&server, 10);
    publish_flat_out(publisher, reader, 32 * MIB, 512 * 1024);
    for c in &mut stalled {
        c.read_to_close();
    }
    // The first is logged with its peer; the rest within a second are counted, not listed.
    let line = server.log.wait_for(&["disconnected: slow consumer"]);
    let peers: Vec<String> = stalled.iter().map(|c| c.local_addr().to_string()).collect();
    assert!(
        peers.iter().any(|p| line.contains(p.as_str())),
        "{line} names none of the stalled clients"
    );
}

#[test]
fn slow_consumers_under_drop_skip_ahead_with_whole_messages() {
    let server = Server::start(&["--max-pending", "1MiB", "--slow-consumer", "drop"]);
    let (publisher, reader, mut stalled) = clients(&server, 3);
    let lines = publish_flat_out(publisher, reader, 32 * MIB, 512 * 1024);
    server
        .log
        .wait_for(&["slow consumer", "skipping to the newest"]);
    // A stalled client starts reading again: it gets whole lines, in order, with a gap, up to END.
    let c = &mut stalled[0];
    let mut last: Option<u64> = None;
    let mut gaps = 0;
    loop {
        let line = c.read_line();
        if line == b"END" {
            break;
        }
        let n: u64 = std::str::from_utf8(&line)
            .ok()
            .filter(|s| s.len() == 999)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("torn line: {:?}", String::from_utf8_lossy(&line)));
        if let Some(prev) = last {
            assert!(n > prev, "line {n} after {prev}: out of order");
            if n > prev + 1 {
                gaps += 1;
            }
        }
        last = Some(n);
    }
    assert!(
        gaps >= 1,
        "a client that stopped reading should have missed messages"
    );
    assert_eq!(last, Some(lines - 1));
}

#[test]
fn clients_that_never_read_do_not_grow_the_server() {
    let server = Server::start(&["--slow-consumer", "drop"]);
    let (publisher, reader, stalled) = clients(&server, 1_000);
    publish_flat_out(publisher, reader, 128 * MIB, 4 * MIB);
    let peak = server.peak_rss();
    // 32 MiB plus --max-pending.
    assert_mib_below("peak RSS with 1,000 stalled clients", peak, 40);
    drop(stalled);
}

#[test]
fn ten_thousand_idle_clients_fit_in_32_mib() {
    let server = Server::start(&[]);
    let mut clients: Vec<Client> = (0..10_000).map(|_| server.connect()).collect();
    clients.last_mut().unwrap().send(b"ready\n");
    for c in &mut clients {
        c.expect(b"ready\n");
    }
    let rss = server.rss();
    assert_mib_below("RSS with 10,000 idle clients", rss, 32);
}

#[test]
fn connections_over_the_limit_are_closed_at_once_and_the_rest_are_served() {
    let server = Server::start(&["--max-connections", "3"]);
    let mut ok: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    ok[2].send(b"ready\n");
    for c in &mut ok {
        c.expect(b"ready\n");
    }
    let mut extra = server.connect();
    let peer = extra.local_addr().to_string();
    assert!(extra.read_to_close().is_empty());
    server
        .log
        .wait_for(&[&peer, "rejected", "--max-connections"]);
    // A flood at the limit: every one closed at once, but not a log line each.
    for _ in 0..20 {
        assert!(server.connect().read_to_close().is_empty());
    }
    let lines = server.log.count("rejected:");
    assert!(lines < 5, "{lines} log lines for 21 rejections");
    ok[0].send(b"still served\n");
    for c in &mut ok {
        c.expect(b"still served\n");
    }
}

#[test]
fn running_out_of_descriptors_is_logged_and_backed_off_not_spun_on() {
    let cmd = util::mob_with_fd_limit(32);
    let server = Server::start_with(cmd, &[]);
    server.log.wait_for(&["open-files limit is 32"]);
    let mut clients: Vec<Client> = (0..40).map(|_| server.connect()).collect();
    server
        .log
        .wait_for(&["accept failed", "out of file descriptors"]);
    // Free descriptors: the server sees these close and the queued connections get accepted.
    let mut waiting = clients.split_off(30);
    drop(clients);
    waiting.last_mut().unwrap().send(b"accepted at last\n");
    for c in &mut waiting {
        c.expect(b"accepted at last\n");
    }
    let failures = server.log.count("accept failed");
    assert!(
        failures < 100,
        "{failures} accept failures logged: the server spun instead of backing off"
    );
}

/// An idle server costs no CPU: with clients connected and nothing to do, it sleeps in
/// `epoll_wait` with no timeout (no timers, no polling). Read from /proc/PID/syscall: the
/// syscall a sleeping process is in, with its arguments.
#[test]
fn an_idle_server_sleeps_in_epoll_wait_without_a_timeout() {
    idle_server_sleeps(&[]);
}

/// The same with two loops and the metrics endpoint (after it answered a scrape): every
/// thread sleeps without a timeout.
#[test]
fn an_idle_server_with_metrics_and_two_loops_sleeps_without_a_timeout() {
    idle_server_sleeps(&["--threads", "2", "--metrics", "127.0.0.1:0"]);
}

fn idle_server_sleeps(args: &[&str]) {
    let server = Server::start(args);
    let mut clients: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    clients[2].send(b"ready\n");
    for c in &mut clients {
        c.expect(b"ready\n");
    }
    if args.contains(&"--metrics") {
        use std::io::{Read, Write};
        let mut scrape = std::net::TcpStream::connect(server.metrics_addr()).unwrap();
        scrape.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        scrape.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let deadline = std::time::Instant::now() + util::DEADLINE;
    let (mut last, mut timers) = (Vec::new(), Vec::new());
    while std::time::Instant::now() < deadline {
        // x86_64: 232 is epoll_wait, 281 epoll_pwait; the fourth argument is the timeout.
        last = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
            .expect("read /proc/PID/task")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("syscall")).ok())
            .collect();
        let waiting = |l: &String| matches!(l.split_whitespace().next(), Some("232" | "281"));
        // The timeout is an int: -1, no timeout, reads as 32 bits of ones.
        let forever = |l: &String| {
            matches!(
                l.split_whitespace().nth(4),
                Some("0xffffffff" | "0xffffffffffffffff")
            )
        };
        // Deadlines go to the loops' timerfds instead: they must be disarmed too. (A last
        // publish of the metrics may still be due a quarter second after the traffic.)
        timers = timerfd_values(server.pid());
        assert!(!timers.is_empty(), "no timerfd found");
        let disarmed = timers.iter().all(|v| v == "(0, 0)");
        if last.iter().all(|l| waiting(l) && forever(l)) && disarmed {
            return;
        }
        util::poll_tick();
    }
    panic!(
        "the idle server never slept in epoll_wait without a timeout and its timers disarmed; \
         last seen: {last:?}, timers {timers:?}"
    );
}

/// The `it_value` of each of the process's timerfds, from /proc/PID/fdinfo: `(0, 0)` when
/// disarmed.
fn timerfd_values(pid: i32) -> Vec<String> {
    let mut values = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo") {
        let Ok(info) = std::fs::read_to_string(entry.expect("fdinfo entry").path()) else {
            continue;
        };
        if info.lines().any(|l| l.starts_with("clockid:")) {
            if let Some(v) = info.lines().find_map(|l| l.strip_prefix("it_value:")) {
                values.push(v.trim().to_string());
            }
        }
    }
    values
}

/// The epoll interest masks of the server's registered descriptors, from /proc/PID/fdinfo.
fn epoll_masks(pid: i32) -> Vec<u32> {
    let mut masks = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo") {
        let Ok(info) = std::fs::read_to_string(entry.expect("fdinfo entry").path()) else {
            continue;
        };
        for line in info.lines().filter(|l| l.starts_with("tfd:")) {
            let mut words = line.split_whitespace();
            if let Some(mask) = words.find(|w| *w == "events:").and_then(|_| words.next()) {
                masks.push(u32::from_str_radix(mask, 16).expect("hex mask"));
            }
        }
    }
    masks
}

/// WRITABLE interest is registered exactly while a receiver is behind: a caught-up server
/// gets no writable wake-ups.
#[test]
fn writable_interest_is_held_only_while_a_receiver_is_behind() {
    const EPOLLOUT: u32 = 0x4;
    let server = Server::start(&["--max-pending", "64MiB"]);
    let (publisher, reader, mut stalled) = clients(&server, 1);
    let writable = |server: &Server| {
        epoll_masks(server.pid())
            .iter()
            .filter(|m| *m & EPOLLOUT != 0)
            .count()
    };
    let wait_until = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + util::DEADLINE;
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            util::poll_tick();
        }
    };
    assert_eq!(
        writable(&server),
        0,
        "caught up, yet waiting for writability"
    );
    // 16 MiB for a client that does not read: the server must wait for it to drain.
    publish_flat_out(publisher, reader, 16 * MIB, 4 * MIB);
    wait_until("the stalled client's socket gains WRITABLE", &|| {
        writable(&server) == 1
    });
    let got = stalled[0].read_exact(16 * MIB as usize / 1000 * 1000);
    assert_eq!(got.len(), 16 * MIB as usize / 1000 * 1000);
    stalled[0].expect(b"END\n");
    wait_until("WRITABLE is dropped once caught up", &|| {
        writable(&server) == 0
    });
}

/// A message that arrives split over two reads must not hold more than it counts. Each "x\n"
/// here is sent as "x", then (once the server has read it) "\n", while a stalled receiver keeps
/// every message in the log: before the fix each such 2-byte message pinned a 4 KiB-64 KiB read
/// block (about 4 MiB for 2,000 of them; 0.1 MiB now) that --max-pending never counted.
#[test]
fn messages_split_over_reads_hold_only_what_they_count() {
    // Room for everything below, so the stalled client stays and the log holds it all.
    let server = Server::start(&["--max-pending", "64MiB"]);
    let mut stalled = Client::connect_small_buffer(server.addr);
    let mut reader = server.connect();
    let mut splitter = server.connect();
    splitter.send(b"ready\n");
    for c in [&mut stalled, &mut reader, &mut splitter] {
        c.expect(b"ready\n");
    }
    splitter.discard_input();
    // Fill the stalled client's socket buffers, so what follows waits in the server's log.
    let filler: Vec<u8> = (0..6 * 1024u64)
        .flat_map(|i| format!("{i:0>1023}\n").into_bytes())
        .collect();
    splitter.send(&filler);
    reader.expect(&filler);
    let before = server.rss();
    let n = 2_000;
    for _ in 0..n {
        // Only the splitter sends now: the server's count of bytes read tells when it read "x".
        let read = util::bytes_read(server.pid());
        splitter.send(b"x");
        let deadline = std::time::Instant::now() + util::DEADLINE;
        while util::bytes_read(server.pid()) == read {
            assert!(
                std::time::Instant::now() < deadline,
                "the server stopped reading"
            );
            // Polling (nothing to wait on but /proc): briefly, without spinning a core the
            // server needs on a loaded machine.
            thread::sleep(std::time::Duration::from_micros(50));
        }
        splitter.send(b"\n");
    }
    for _ in 0..n {
        reader.expect(b"x\n");
    }
    let growth = server.rss().saturating_sub(before);
    assert!(
        util::server_side_of(stalled.local_addr(), server.addr).is_some(),
        "the stalled client was cut off: the log no longer held the messages measured"
    );
    assert_mib_below(
        &format!("RSS growth for {n} messages split over two reads"),
        growth,
        1,
    );
    drop(stalled);
}

/// Running out of descriptors pauses accepting; a shutdown that begins meanwhile must not spin
/// on the pause (the listener is gone, so nothing would ever clear it): the server sleeps until
/// its clients are served or the shutdown timeout ends. CPU time over the shutdown shows it.
#[test]
fn a_shutdown_during_an_accept_pause_does_not_spin() {
    let cmd = util::mob_with_fd_limit(32);
    let server = Server::start_with(cmd, &["--max-pending", "64MiB", "--shutdown-timeout", "2"]);
    let mut stalled = Client::connect_small_buffer(server.addr);
    let mut publisher = server.connect();
    publisher.send(b"ready\n");
    stalled.expect(b"ready\n");
    publisher.expect(b"ready\n");
    // A backlog the stalled client is owed, so the shutdown lasts until its timeout.
    let backlog: Vec<u8> = (0..16 * 1024u64)
        .flat_map(|i| format!("{i:0>1023}\n").into_bytes())
        .collect();
    let echo = publisher.read_on_thread(backlog.len());
    publisher.send(&backlog);
    assert!(echo.join().unwrap().expect("echo") == backlog);
    let _flood: Vec<Client> = (0..40).map(|_| server.connect()).collect();
    server
        .log
        .wait_for(&["accept failed", "out of file descriptors"]);
    let before = util::cpu_time(server.pid());
    server.signal(libc::SIGTERM);
    util::wait_zombie(server.pid(), util::DEADLINE);
    let used = util::cpu_time(server.pid()) - before;
    eprintln!("CPU time over a 2 s shutdown during an accept pause: {used:?}");
    assert!(
        used < std::time::Duration::from_millis(1000),
        "the server used {used:?} of CPU over a 2 s shutdown: it spun"
    );
    drop(stalled);
}

/// A flood of the smallest messages (empty lines) from many clients, with a receiver that never
/// reads, is bounded like a few large ones: each counts its bookkeeping against --max-pending,
/// and reading stops when a round's input counts a quarter of it. (Before: 130 MiB.)
#[test]
fn a_flood_of_empty_lines_is_bounded_like_large_messages() {
    // Under `drop` the stalled client stays, so the log stays full all along.
    let server = Server::start(&["--slow-consumer", "drop"]);
    let stalled = Client::connect_small_buffer(server.addr);
    let mut flooders: Vec<Client> = (0..8).map(|_| server.connect()).collect();
    // The last to connect sends it: the server accepted every other client before it, so
    // all receive it (a client is sent what is read after it was accepted; with several
    // loops, one loop may read a line before another has accepted a client that connected
    // just before it was sent).
    flooders.last_mut().unwrap().send(b"ready\n");
    for c in &mut flooders {
        c.expect(b"ready\n");
    }
    // Each sends 1 MiB of empty lines, flat out, and reads what it is sent (on a thread).
    let senders: Vec<_> = flooders
        .iter()
        .map(|c| {
            c.discard_input();
            let mut out = c.stream.try_clone().unwrap();
            thread::spawn(move || {
                use std::io::Write;
                let burst = vec![b'\n'; 64 * 1024];
                for _ in 0..16 {
                    if out.write_all(&burst).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    // Everything sent has been relayed once each flooder's marker, sent after its flood,
    // comes back.
    let mut probe = server.connect();
    for (i, c) in flooders.iter_mut().enumerate() {
        let marker = format!("done {i}\n");
        c.send(marker.as_bytes());
        probe.skip_past(marker.as_bytes());
    }
    assert!(
        util::server_side_of(stalled.local_addr(), server.addr).is_some(),
        "the stalled client was cut off"
    );
    let peak = server.peak_rss();
    // --max-pending (8 MiB) plus a round's input and one read (10 MiB at most), plus the
    // process's own few MiB.
    assert_mib_below("peak RSS with 8 clients flooding empty lines", peak, 24);
    drop((stalled, flooders));
}
