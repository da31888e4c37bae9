//! WebSocket clients for the tests: tungstenite's client (a real implementation nobody here
//! wrote), and raw frames for what a well-behaved client never sends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use super::DEADLINE;

/// A WebSocket client connected to `/ws`.
pub struct Ws {
    pub socket: WebSocket<TcpStream>,
}

impl Ws {
    pub fn connect(http: SocketAddr) -> Ws {
        Ws::connect_path(http, "/ws")
    }

    pub fn connect_path(http: SocketAddr, path: &str) -> Ws {
        let stream = TcpStream::connect(http).expect("connect to the http port");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let url = format!("ws://{http}{path}");
        let (socket, response) = tungstenite::client(url.as_str(), stream).expect("upgrade");
        assert_eq!(response.status(), 101);
        Ws { socket }
    }

    pub fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text))
            .expect("send a text message");
    }

    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.socket
            .send(Message::binary(bytes.to_vec()))
            .expect("send a binary message");
    }

    /// The next data message (pings are answered by tungstenite while reading).
    pub fn recv(&mut self) -> Message {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "no message within {DEADLINE:?}");
            match self.socket.read().expect("read a message") {
                m @ (Message::Text(_) | Message::Binary(_) | Message::Close(_)) => return m,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// The next message, which must be text.
    pub fn recv_text(&mut self) -> String {
        match self.recv() {
            Message::Text(t) => t.to_string(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Reads until the server's close frame; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.socket.read() {
                Ok(Message::Close(Some(CloseFrame { code, .. }))) => return u16::from(code),
                Ok(Message::Close(None)) => return 1005,
                Ok(_) => continue,
                Err(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
    }

    pub fn close(&mut self) {
        let _ = self.socket.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }));
    }
}

/// A connection to the http port that speaks raw bytes.
pub struct RawHttp {
    pub stream: TcpStream,
}

/// A valid upgrade request for `/ws`.
pub const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
     Sec-WebSocket-Version: 13\r\n\r\n";

impl RawHttp {
    pub fn connect(http: SocketAddr) -> RawHttp {
        let stream = TcpStream::connect(http).expect("connect to the http port");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        RawHttp { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Everything until the server closes (or resets) the connection.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads the response head (through the blank line); returns it as text.
    pub fn read_head(&mut self) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match self.stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                other => panic!(
                    "response head ended early ({other:?}): {:?}",
                    String::from_utf8_lossy(&head)
                ),
            }
        }
        String::from_utf8(head).expect("head is text")
    }

    /// Upgrades, checking the 101.
    pub fn upgrade(http: SocketAddr) -> RawHttp {
        RawHttp::upgrade_on(RawHttp::connect(http))
    }

    /// Upgrades a client with a 4 KiB receive buffer, so the server blocks writing to it.
    pub fn upgrade_small_buffer(http: SocketAddr) -> RawHttp {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&http.into()).expect("connect");
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        RawHttp::upgrade_on(RawHttp { stream })
    }

    /// Reads the header of the next server frame: (opcode, payload length).
    pub fn read_frame_head(&mut self) -> (u8, usize) {
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).expect("frame header");
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        assert_eq!(head[0] & 0x80, 0x80, "server messages are not fragmented");
        let len = match head[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                self.stream.read_exact(&mut l).unwrap();
                u16::from_be_bytes(l) as usize
            }
            127 => {
                let mut l = [0u8; 8];
                self.stream.read_exact(&mut l).unwrap();
                u64::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        (head[0] & 0x0f, len)
    }

    fn upgrade_on(mut raw: RawHttp) -> RawHttp {
        raw.send(UPGRADE.as_bytes());
        let head = raw.read_head();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw
    }

    /// Reads one server frame: (opcode, payload). Server frames are never masked and (from
    /// this server) never fragmented.
    pub fn read_frame(&mut self) -> (u8, Vec<u8>) {
        let (op, len) = self.read_frame_head();
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).expect("frame payload");
        (op, payload)
    }

    /// Reads frames until a close frame; returns its code.
    pub fn read_close_code(&mut self) -> u16 {
        loop {
            let (op, payload) = self.read_frame();
            if op == 8 {
                assert!(payload.len() >= 2, "close frame without a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

/// A client frame: FIN set, masked (unless `masked` is false).
pub fn client_frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    client_fragment(opcode, payload, masked, true)
}

/// A client frame with FIN as given.
pub fn client_fragment(opcode: u8, payload: &[u8], masked: bool, fin: bool) -> Vec<u8> {
    let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}
