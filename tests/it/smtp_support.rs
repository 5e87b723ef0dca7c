//! What the SMTP tests share: the example's server in this process, a raw SMTP client, a
//! maildir per test and the messages stored in it.
#![allow(dead_code)]

// main() and its signal handling are the example's own: unused here.
#[allow(dead_code)]
#[path = "../../examples/smtp_server.rs"]
pub mod smtp_server;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

use crate::common::{self, connect, expect_clean_eof};
use reactor_pool::ServerHandle;
use smtp_server::Config;

pub const HOST: &str = "mx.test";
pub const OK_SENDER: &str = "250 2.1.0 Sender OK\r\n";
pub const OK_RCPT: &str = "250 2.1.5 Recipient OK\r\n";
pub const GO_AHEAD: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";
pub const BAD_SEQUENCE: &str = "503 5.5.1 Bad sequence of commands\r\n";
pub const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed maximum message size\r\n";
pub const FAREWELL: &str = "421 4.4.2 mx.test closing connection\r\n";

/// A maildir of one test, under the system's temp dir; removed when dropped. It does not
/// exist until the server creates it.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("smtp-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TestDir(dir)
    }

    /// Files in `sub` (`new` or `tmp`), sorted by name.
    pub fn files(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.0.join(sub))
            .unwrap_or_else(|e| panic!("read {sub}/: {e}"))
            .map(|entry| {
                entry
                    .expect("a dir entry")
                    .file_name()
                    .into_string()
                    .unwrap()
            })
            .collect();
        names.sort();
        names
    }

    /// Message `id` as stored in `new/`.
    pub fn message(&self, id: &str) -> Stored {
        let bytes = std::fs::read(self.0.join("new").join(id))
            .unwrap_or_else(|e| panic!("message {id} in new/: {e}"));
        Stored::parse(&bytes)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A stored message: the headers the server added, then what the client sent.
#[derive(Debug)]
pub struct Stored {
    pub return_path: String,
    pub envelope_to: Vec<String>,
    pub received: String,
    pub body: Vec<u8>,
}

impl Stored {
    pub fn parse(bytes: &[u8]) -> Stored {
        let mut rest = bytes;
        let mut line = || {
            let end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("a header line")
                + 2;
            let (head, tail) = rest.split_at(end);
            rest = tail;
            String::from_utf8(head[..end - 2].to_vec()).expect("an ASCII header")
        };
        let return_path = line();
        let mut envelope_to = Vec::new();
        let mut header = line();
        while let Some(to) = header.strip_prefix("X-Envelope-To: ") {
            envelope_to.push(to.to_string());
            header = line();
        }
        let received = format!("{header} {} {}", line(), line());
        Stored {
            return_path: return_path.strip_prefix("Return-Path: ").unwrap().into(),
            envelope_to,
            received,
            body: rest.to_vec(),
        }
    }

    pub fn check(&self, from: &str, to: &[&str], body: &[u8]) {
        assert_eq!(self.return_path, format!("<{from}>"));
        let to: Vec<String> = to.iter().map(|to| format!("<{to}>")).collect();
        assert_eq!(self.envelope_to, to, "the envelope's recipients");
        assert!(
            self.received.starts_with("Received: from "),
            "{}",
            self.received
        );
        common::assert_same_bytes(&self.body, body, "the stored message");
    }
}

/// The example's server on a free port, shut down when dropped.
pub struct Server {
    pub handle: Option<ServerHandle>,
    pub dir: TestDir,
}

impl Server {
    pub fn start(name: &str, tweak: impl FnOnce(&mut Config)) -> Server {
        let dir = TestDir::new(name);
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.0.clone());
        config.hostname = HOST.into();
        config.workers = Some(4);
        tweak(&mut config);
        let handle = smtp_server::start(&config).expect("start smtp_server");
        Server {
            handle: Some(handle),
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle
            .as_ref()
            .expect("running")
            .local_addr()
            .tcp()
            .unwrap()
    }

    pub fn client(&self) -> Client {
        let mut client = Client::new(self.addr());
        assert_eq!(client.reply(), "220 mx.test ESMTP reactor-pool\r\n");
        client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown();
        }
    }
}

/// A raw SMTP client.
pub struct Client {
    pub stream: TcpStream,
    pub reader: BufReader<TcpStream>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        let stream = connect(addr);
        let reader = BufReader::new(stream.try_clone().expect("clone the stream"));
        Client { stream, reader }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        common::send(&mut self.stream, bytes);
    }

    /// One whole reply, every line of a multiline one, line ends included.
    pub fn reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("reading a reply: {e}; got {reply:?}"));
            assert!(
                n > 0 && line.ends_with("\r\n"),
                "EOF in a reply: {reply:?}{line:?}"
            );
            reply.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return reply;
            }
        }
    }

    /// Sends `line` with CRLF and returns the reply.
    pub fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Reads a `250 2.0.0 OK queued as ID` reply; returns the ID.
    pub fn queued(&mut self) -> String {
        queued_id(&self.reply())
    }

    pub fn expect_eof(&mut self, what: &str) {
        let rest = expect_clean_eof(self.reader.get_mut(), what);
        assert!(
            self.reader.buffer().is_empty() && rest.is_empty(),
            "{what}: {rest:?}"
        );
    }
}

/// The ID in a `250 2.0.0 OK queued as ID` reply.
pub fn queued_id(reply: &str) -> String {
    let id = reply.strip_prefix("250 2.0.0 OK queued as ");
    id.unwrap_or_else(|| panic!("expected queued, got {reply:?}"))
        .trim_end()
        .to_string()
}

/// Dot-stuffs `body` (every line starting with `.` gets another) and ends it with the dot.
pub fn stuffed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    let mut at_line_start = true;
    for (i, &b) in body.iter().enumerate() {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n' && i > 0 && body[i - 1] == b'\r';
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Sends one message over `client` in the same transaction; returns DATA's final reply.
pub fn send_message(client: &mut Client, body: &[u8]) -> String {
    assert_eq!(client.command("MAIL FROM:<a@example.org>"), OK_SENDER);
    assert_eq!(client.command("RCPT TO:<b@example.org>"), OK_RCPT);
    assert_eq!(client.command("DATA"), GO_AHEAD);
    client.send(&stuffed(body));
    client.reply()
}
