//! Headless Chromium for the tests, driven over chromedriver's W3C WebDriver HTTP API with a
//! minimal HTTP/1.1 client: JSON in, JSON out, one connection per request. The requests are
//! the ones docs/notes/chromium-webdriver.md shows working.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{poll_tick, wait_exit, Output, DEADLINE};

/// The key under which WebDriver's JSON carries an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// WebDriver's code for the Enter key, typed as a character of the text.
pub const ENTER: char = '\u{E007}';

/// Chromium's flags: headless; no sandbox (the tests may run as root, where the sandbox refuses
/// to start); no GPU, update checks or first-run dialogs, none of which a test needs; two
/// device pixels per CSS pixel, for a screenshot that stays sharp on high-density screens.
const FLAGS: &[&str] = &[
    "--headless",
    "--force-device-scale-factor=2",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
];

/// The two programs a browser test needs, found on `PATH`.
pub struct Tools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl Tools {
    /// Both programs, or which one is missing.
    pub fn find() -> Result<Tools, String> {
        let find = |name: &str| which(name).ok_or_else(|| format!("no {name} on PATH"));
        Ok(Tools {
            chromium: find("chromium")?,
            chromedriver: find("chromedriver")?,
        })
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A running chromedriver and its profile directory; dropping it stops both.
struct Driver {
    /// chromedriver, leader of its own process group, which the Chromium it starts joins: one
    /// signal to the group stops them all, and nothing else.
    child: Child,
    /// Where chromedriver listens (loopback; it takes local connections only).
    addr: SocketAddr,
    /// What chromedriver printed, for the failure message when it does not start.
    output: Output,
    /// A fresh profile: two browsers must not share one, and none is left behind.
    profile: PathBuf,
}

impl Driver {
    fn start(tools: &Tools) -> Driver {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let profile =
            std::env::temp_dir().join(format!("mob-chromium-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&profile).expect("create the profile directory");
        let mut child = Command::new(&tools.chromedriver)
            .arg("--port=0")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromedriver");
        let output = Output::default();
        output.clone().collect(child.stdout.take().unwrap());
        output.clone().collect(child.stderr.take().unwrap());
        let mut driver = Driver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            output,
            profile,
        };
        // "ChromeDriver was started successfully on port 41235." (an earlier line says "on
        // port 0", the one asked for).
        let line = driver.output.wait_for(&["started successfully on port "]);
        let port = line
            .rsplit(' ')
            .next()
            .and_then(|p| p.trim_end_matches('.').parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        driver.addr.set_port(port);
        driver
    }

    /// Signals chromedriver's whole process group (it and the browser it started).
    fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) on the process group led by a child we started and have not reaped.
        unsafe { libc::kill(-(self.child.id() as i32), sig) };
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.signal_group(libc::SIGTERM);
        if wait_exit(&mut self.child, Duration::from_secs(5)).is_none() {
            self.signal_group(libc::SIGKILL);
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One headless Chromium session; dropping it closes the browser and stops chromedriver, also
/// when the test fails.
pub struct Browser {
    /// The session's id, in the path of every request.
    session: String,
    /// Dropped after the session is deleted (fields drop after `Browser::drop`).
    driver: Driver,
}

/// An element of the page, as WebDriver refers to it.
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium with a `width` x `height` window.
    pub fn start(tools: &Tools, (width, height): (u32, u32)) -> Browser {
        let driver = Driver::start(tools);
        let mut args: Vec<String> = FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--window-size={width},{height}"));
        args.push(format!("--user-data-dir={}", driver.profile.display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": tools.chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let created =
            request(driver.addr, "POST", "/session", Some(&capabilities)).unwrap_or_else(|e| {
                panic!(
                    "no browser session: {e}\nchromedriver said:\n{}",
                    driver.output.text()
                )
            });
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {created}"))
            .to_string();
        Browser { session, driver }
    }

    /// A request to this session: `path` follows `/session/ID`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        request(self.driver.addr, method, &path, body.as_ref())
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// Loads `url` (returns once the page has loaded).
    pub fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The first element matching the CSS `selector`.
    pub fn find(&self, selector: &str) -> Element {
        let found = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": selector})),
        );
        match found[ELEMENT_KEY].as_str() {
            Some(id) => Element(id.to_string()),
            None => panic!("no element reference in {found}"),
        }
    }

    pub fn is_enabled(&self, element: &Element) -> bool {
        self.call("GET", &format!("/element/{}/enabled", element.0), None) == json!(true)
    }

    /// Types `text` into `element` key by key, as trusted key events ([`ENTER`] submits).
    pub fn type_keys(&self, element: &Element, text: &str) {
        let path = format!("/element/{}/value", element.0);
        self.call("POST", &path, Some(json!({ "text": text })));
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub fn run(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Asks `check` until it returns something, for a page that changes on its own (WebSocket
    /// events); fails the test with `what` and the browser's console after the deadline.
    pub fn wait_for<T>(&self, what: &str, mut check: impl FnMut(&Browser) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(done) = check(self) {
                return done;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what} within {DEADLINE:?}; browser console:\n{}",
                self.console().join("\n")
            );
            poll_tick();
        }
    }

    /// The browser console's entries since the last call ("LEVEL message"), which chromedriver
    /// keeps because the session asked for `goog:loggingPrefs`.
    pub fn console(&self) -> Vec<String> {
        let entries = self.call("POST", "/se/log", Some(json!({"type": "browser"})));
        let entries = entries.as_array().cloned().unwrap_or_default();
        entries
            .iter()
            .map(|e| {
                let field = |name: &str| e[name].as_str().unwrap_or_default().to_string();
                format!("{} {}", field("level"), field("message"))
            })
            .collect()
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        let encoded = self.call("GET", "/screenshot", None);
        let encoded = encoded.as_str().expect("the screenshot as a base64 string");
        base64_decode(encoded).expect("the screenshot in valid base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closes Chromium in order; the driver's process group is signalled after anyway.
        let path = format!("/session/{}", self.session);
        let _ = request(self.driver.addr, "DELETE", &path, None);
    }
}

/// One HTTP/1.1 request with a JSON body to chromedriver, on its own connection; the `value` of
/// the JSON answer, or what went wrong (WebDriver errors come as 4xx/5xx with
/// `{"value": {"error", "message"}}`). An error, not a panic, so `Drop` can use it.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() {
        write!(
            head,
            "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            body.len()
        )
        .unwrap();
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    // Creating a session starts Chromium, the slowest request (about a second).
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(format!("{head}{body}").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let (head, body) = read_response(&mut stream)?;
    let status = head.split(' ').nth(1).unwrap_or_default();
    let json: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{e} in the answer {:?}", String::from_utf8_lossy(&body)))?;
    match status {
        "200" => Ok(json["value"].clone()),
        _ => Err(format!("{status}: {}", json["value"])),
    }
}

/// Reads an answer's head and its `Content-Length` bytes of body. (The end of the stream does
/// not mark the end of the answer, despite `Connection: close`: the Chromium that creating a
/// session starts inherits the connection's socket and keeps it open.)
fn read_response(stream: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut read = |got: &mut Vec<u8>| match stream.read(&mut buf) {
        Ok(0) => Err(format!(
            "the answer ends early: {:?}",
            String::from_utf8_lossy(got)
        )),
        Ok(n) => {
            got.extend_from_slice(&buf[..n]);
            Ok(())
        }
        Err(e) => Err(format!("read the answer: {e}")),
    };
    let head_len = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read(&mut got)?;
    };
    let head = String::from_utf8_lossy(&got[..head_len]).into_owned();
    let body_len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    while got.len() < head_len + body_len {
        read(&mut got)?;
    }
    Ok((head, got[head_len..head_len + body_len].to_vec()))
}

/// Standard base64 (RFC 4648, with padding) to bytes; `None` on a character outside it.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut bits = 0u32;
        for &c in chunk {
            bits = (bits << 6) | sextet(c)?;
        }
        // A chunk of n characters carries n * 6 bits: 3, 2 or 1 whole bytes.
        let bytes = chunk.len() * 6 / 8;
        bits <<= 6 * (4 - chunk.len());
        out.extend_from_slice(&bits.to_be_bytes()[1..1 + bytes]);
    }
    Some(out)
}
