//! Helpers shared by the integration tests: start the real `mob` binary, talk to it over real
//! sockets, and wait for events under a deadline (never for a fixed time).
#![allow(dead_code)] // each test binary uses its own subset

pub mod webdriver;
pub mod ws;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single expectation may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The `mob` binary cargo built for these tests, or the one named by `MOB_TEST_BINARY` (to show
/// that a test fails against an older build).
pub fn mob() -> Command {
    match std::env::var_os("MOB_TEST_BINARY") {
        Some(path) => Command::new(path),
        None => Command::new(env!("CARGO_BIN_EXE_mob")),
    }
}

/// Event loops for the servers the tests start: `MOB_TEST_THREADS` (CI runs the suite with 1
/// and with 2), 1 when unset. A test that passes `--threads` itself keeps its own.
pub fn threads() -> usize {
    match std::env::var("MOB_TEST_THREADS") {
        Ok(n) => n
            .parse()
            .unwrap_or_else(|_| panic!("MOB_TEST_THREADS={n:?} is not a number")),
        Err(_) => 1,
    }
}

/// `mob` with a hard limit of `n` open descriptors, to run it out of them.
pub fn mob_with_fd_limit(n: u64) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = mob();
    // SAFETY: setrlimit is async-signal-safe; the child gets a hard limit of `n` descriptors.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Lets one test process open thousands of sockets.
pub fn raise_fd_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    });
}

/// Lines a process wrote to stderr, collected by a thread, with a way to wait for one.
#[derive(Clone, Default)]
pub struct Output {
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Output {
    pub fn collect(self, stream: impl Read + Send + 'static) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let (lock, cvar) = &*self.lines;
                lock.lock().unwrap().push(line);
                cvar.notify_all();
            }
        })
    }

    /// Waits until a line containing all of `needles` has appeared; returns it.
    pub fn wait_for(&self, needles: &[&str]) -> String {
        let (lock, cvar) = &*self.lines;
        let deadline = Instant::now() + DEADLINE;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no log line containing {needles:?} within {DEADLINE:?}; log was:\n{}",
                lines.join("\n")
            );
            lines = cvar.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Lines containing `needle` so far.
    pub fn count(&self, needle: &str) -> usize {
        let lines = self.lines.0.lock().unwrap();
        lines.iter().filter(|l| l.contains(needle)).count()
    }

    pub fn text(&self) -> String {
        self.lines.0.lock().unwrap().join("\n")
    }
}

/// A `mob serve` process on a free loopback port; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Output,
    /// What the server printed on stdout (its listening lines).
    pub stdout: Output,
}

impl Server {
    /// Starts `mob serve --listen 127.0.0.1:0 ARGS...` and waits for its `listening on` line.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(mob(), args)
    }

    pub fn start_with(mut cmd: Command, args: &[&str]) -> Server {
        raise_fd_limit();
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
        if !args.contains(&"--threads") {
            cmd.args(["--threads", &threads().to_string()]);
        }
        // A test's own filter (set on `cmd`) wins over the default.
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env(
                "RUST_LOG",
                std::env::var("MOB_TEST_LOG").unwrap_or("info".into()),
            );
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mob serve");
        let log = Output::default();
        log.clone().collect(child.stderr.take().unwrap());
        let stdout = Output::default();
        stdout.clone().collect(child.stdout.take().unwrap());
        let line = stdout.wait_for(&["listening on "]);
        let addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Server {
            child,
            addr,
            log,
            stdout,
        }
    }

    /// The `--metrics` address, from its `metrics on IP:PORT` line.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.printed_addr("metrics on ")
    }

    /// The `--http` address, from the `http on IP:PORT` line printed after `listening on`.
    pub fn http_addr(&self) -> SocketAddr {
        self.printed_addr("http on ")
    }

    /// The address on the stdout line that starts with `what`.
    fn printed_addr(&self, what: &str) -> SocketAddr {
        let line = self.stdout.wait_for(&[what]);
        line.rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the PID of a child we started and have not reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill failed");
    }

    /// Waits for the server to exit, failing the test after the deadline.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let status = wait_exit(&mut self.child, within);
        assert!(
            status.is_some(),
            "server still running after {within:?}; log:\n{}",
            self.log.text()
        );
        status.unwrap()
    }

    /// Peak resident set size of the server so far, from /proc (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Current resident set size, in bytes.
    pub fn rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:") * 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Waits up to `within` for `child` to exit; `None` if it is still running. (A child's exit has
/// no event to wait on with a deadline here, so this polls every 10 ms.)
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        poll_tick();
    }
}

/// The polling interval for conditions that have no event to wait on (a process exit, the
/// state of another process).
pub fn poll_tick() {
    thread::sleep(Duration::from_millis(10));
}

/// A test client over a real socket.
pub struct Client {
    pub stream: TcpStream,
    /// Bytes read but not yet consumed by an expectation.
    pending: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            pending: Vec::new(),
        }
    }

    /// Connects with a small receive buffer, so a client that stops reading is noticed soon.
    pub fn connect_small_buffer(addr: SocketAddr) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&addr.into()).expect("connect");
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            pending: Vec::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn send_frame(&mut self, payload: &[u8]) {
        let mut wire = (payload.len() as u64).to_be_bytes().to_vec();
        wire.extend_from_slice(payload);
        self.send(&wire);
    }

    /// Reads more into `pending`; `Ok(0)` at end of stream.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 64 * 1024];
        let n = self.stream.read(&mut buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    /// Waits for up to `max` bytes, whatever arrives first; empty at the end of the stream.
    pub fn read_some(&mut self, max: usize) -> Vec<u8> {
        if self.pending.is_empty() {
            let deadline = Instant::now() + DEADLINE;
            if let Err(e) = self.fill(deadline) {
                panic!("waiting for bytes: {e}");
            }
        }
        let n = self.pending.len().min(max);
        self.pending.drain(..n).collect()
    }

    /// Reads exactly `len` bytes of what this client is sent, on a thread (so the caller can
    /// send meanwhile); join the handle for them.
    pub fn read_on_thread(&self, len: usize) -> thread::JoinHandle<io::Result<Vec<u8>>> {
        let mut reader = self.stream.try_clone().expect("clone socket");
        reader.set_read_timeout(Some(DEADLINE)).unwrap();
        thread::spawn(move || {
            let mut got = vec![0u8; len];
            reader.read_exact(&mut got).map(|_| got)
        })
    }

    /// Reads and drops everything up to and including the first `marker`, quickly (a client
    /// that reads slowly would become a slow consumer).
    pub fn skip_past(&mut self, marker: &[u8]) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(i) = self.pending.windows(marker.len()).position(|w| w == marker) {
                self.pending.drain(..i + marker.len());
                return;
            }
            // Keep only what could be the start of the marker.
            let keep = self.pending.len().min(marker.len() - 1);
            self.pending.drain(..self.pending.len() - keep);
            match self.fill(deadline) {
                Ok(0) => panic!(
                    "connection closed before {:?}",
                    String::from_utf8_lossy(marker)
                ),
                Ok(_) => {}
                Err(e) => panic!("waiting for {:?}: {e}", String::from_utf8_lossy(marker)),
            }
        }
    }

    /// Waits for exactly `n` more bytes.
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        while self.pending.len() < n {
            match self.fill(deadline) {
                Ok(0) => panic!(
                    "connection closed after {} of {n} expected bytes",
                    self.pending.len()
                ),
                Ok(_) => {}
                Err(e) => panic!(
                    "waiting for {n} bytes, got {} ({e}): {:?}",
                    self.pending.len(),
                    String::from_utf8_lossy(&self.pending)
                ),
            }
        }
        self.pending.drain(..n).collect()
    }

    /// Waits for `expected` as the next bytes.
    pub fn expect(&mut self, expected: &[u8]) {
        let got = self.read_exact(expected.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }

    /// Waits for the next line (without its `\n`).
    pub fn read_line(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=i).collect();
                line.pop();
                return line;
            }
            match self.fill(deadline) {
                Ok(0) => panic!("connection closed while waiting for a line"),
                Ok(_) => {}
                Err(e) => panic!("waiting for a line: {e}"),
            }
        }
    }

    /// Waits for the next `n` lines; returns them as received, each with its `\n`.
    pub fn read_lines(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.extend(self.read_line());
            out.push(b'\n');
        }
        out
    }

    /// Waits for the next frame's payload.
    pub fn read_frame(&mut self) -> Vec<u8> {
        let header = self.read_exact(8);
        let len = u64::from_be_bytes(header.try_into().unwrap()) as usize;
        self.read_exact(len)
    }

    /// Reads until the server closes the connection, in order or with a reset; returns
    /// everything read. Fails the test if the connection is still open at the deadline.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        self.read_until_closed().0
    }

    /// Reads until the server ends the stream in order (FIN); fails the test on a reset.
    pub fn read_to_eof(&mut self) -> Vec<u8> {
        let (got, reset) = self.read_until_closed();
        assert!(!reset, "the connection was reset after {} bytes", got.len());
        got
    }

    /// Reads until the server closes the connection; returns what was read and whether it
    /// ended with a reset rather than an orderly end of stream.
    pub fn read_until_closed(&mut self) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.fill(deadline) {
                Ok(0) => return (std::mem::take(&mut self.pending), false),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return (std::mem::take(&mut self.pending), true)
                }
                Err(e) => panic!("connection not closed by the server: {e}"),
            }
        }
    }

    /// Reads everything until the server closes (or resets) the connection or nothing
    /// arrives for `quiet`; returns what was read and whether it was closed. (For a client
    /// that must *not* be closed: the quiet spell is the check's deadline.)
    pub fn read_until_quiet(&mut self, quiet: Duration) -> (Vec<u8>, bool) {
        self.stream.set_read_timeout(Some(quiet)).unwrap();
        let mut out = std::mem::take(&mut self.pending);
        let mut buf = [0u8; 65536];
        let closed = loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    break false
                }
                Err(_) => break true,
            }
        };
        self.stream.set_read_timeout(Some(DEADLINE)).unwrap();
        (out, closed)
    }

    /// Asserts nothing arrives within `quiet` (used only after a positive check proved that
    /// anything sent before would already have arrived).
    pub fn expect_nothing_pending(&mut self) {
        assert!(
            self.pending.is_empty(),
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&self.pending)
        );
    }

    /// Reads and discards everything the server sends, on a thread, until it closes: for a
    /// client that publishes and must not become a slow consumer of its own echoes.
    pub fn discard_input(&self) {
        let mut stream = self.stream.try_clone().expect("clone socket");
        stream.set_read_timeout(None).unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        });
    }

    /// Resets the connection (RST instead of FIN), as a crashed client would.
    pub fn reset(self) {
        let socket = socket2::Socket::from(self.stream);
        socket.set_linger(Some(Duration::ZERO)).unwrap();
        drop(socket);
    }
}

/// One row of /proc/net/tcp: an IPv4 TCP socket of this machine.
#[derive(Debug, Clone)]
pub struct TcpRow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The TCP state, as the kernel numbers it (1 established, 4 FIN-WAIT-1, ...).
    pub state: u8,
    /// Bytes in the send queue.
    pub tx_queue: u64,
    /// Bytes received and not yet read by the socket's owner.
    pub rx_queue: u64,
    /// Which timer runs: 0 none, 1 retransmit, 2 keepalive, 3 TIME-WAIT, 4 zero-window probe.
    pub timer: u8,
}

/// The IPv4 TCP sockets of this machine (all processes: filter by address).
pub fn tcp_sockets() -> Vec<TcpRow> {
    fn addr(hex: &str) -> SocketAddr {
        let (ip, port) = hex.split_once(':').expect("ip:port");
        let ip = u32::from_str_radix(ip, 16).expect("hex ip");
        let port = u16::from_str_radix(port, 16).expect("hex port");
        // The kernel prints the address in host (little-endian) order.
        SocketAddr::from((ip.to_le_bytes(), port))
    }
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = f.get(4)?.split_once(':')?;
            let (timer, _) = f.get(5)?.split_once(':')?;
            Some(TcpRow {
                local: addr(f.get(1)?),
                remote: addr(f.get(2)?),
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                tx_queue: u64::from_str_radix(tx, 16).ok()?,
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
                timer: timer.parse().ok()?,
            })
        })
        .collect()
}

/// The server's side of the connection `client` has to it, if it still exists.
pub fn server_side_of(client: SocketAddr, server: SocketAddr) -> Option<TcpRow> {
    tcp_sockets()
        .into_iter()
        .find(|row| row.local == server && row.remote == client)
}

/// CPU time (user + system) the process has used so far, from /proc/PID/stat.
pub fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Waits until the process has exited but is not reaped yet (a zombie keeps its
/// /proc/PID/stat, with its final CPU times); fails the test after `within`.
pub fn wait_zombie(pid: i32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
        let state = stat[stat.rfind(')').expect("comm") + 2..].chars().next();
        if state == Some('Z') {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} still running after {within:?}"
        );
        poll_tick();
    }
}

/// Bytes the process has read with read(2) and the like so far (`rchar` in /proc/PID/io).
pub fn bytes_read(pid: i32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar in /proc/PID/io")
}

/// Bytes read (`rchar`) by each thread of process `pid` whose name starts with `prefix`, by
/// thread name (from /proc/PID/task/*/comm and io).
pub fn bytes_read_by_threads(pid: i32, prefix: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task") {
        let path = task.expect("task entry").path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        let name = name.trim().to_string();
        if !name.starts_with(prefix) {
            continue;
        }
        let Ok(io) = std::fs::read_to_string(path.join("io")) else {
            continue;
        };
        let rchar = io
            .lines()
            .find_map(|l| l.strip_prefix("rchar:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("rchar in /proc/PID/task/TID/io");
        out.push((name, rchar));
    }
    out.sort();
    out
}

/// A client that types numbered lines without pause on a thread (at most a million, so it
/// stops by itself) until [`stop`](Self::stop), then closes its sending side.
pub struct Typist {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl Typist {
    /// Types `line(i)` for i = 0, 1, ... on a clone of `client`'s socket.
    pub fn start(client: &Client, line: impl Fn(u32) -> String + Send + 'static) -> Typist {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let mut out = client.stream.try_clone().expect("clone socket");
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            for i in 0..1_000_000u32 {
                if stopped.load(Ordering::SeqCst) || out.write_all(line(i).as_bytes()).is_err() {
                    break;
                }
            }
            let _ = out.shutdown(std::net::Shutdown::Write);
        });
        Typist { stop, thread }
    }

    pub fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().expect("typist failed");
    }
}
