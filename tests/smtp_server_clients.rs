//! examples/smtp_server against real SMTP clients (Python's smtplib, swaks), raw sockets on
//! 127.0.0.1, and its codec fed every way TCP could split the input.
//!
//! The example's source is included, so its server runs in this process (with short
//! timeouts, and a handle to shut it down) and is always built from the current source. One
//! test runs the built binary instead, for its flags and its SIGTERM handling.

mod common;

// main() and its signal handling are the example's own: unused here.
#[allow(dead_code)]
#[path = "../examples/smtp_server.rs"]
mod smtp_server;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use common::{connect, expect_clean_eof, run_client, start_example, wait_until};
use reactor_pool::{Codec, DecodeError, ServerHandle};
use smtp_server::smtp_codec::{Reply, Request, SmtpCodec, CHUNK, MAX_LINE};
use smtp_server::Config;

const HOST: &str = "mx.test";
const OK_SENDER: &str = "250 2.1.0 Sender OK\r\n";
const OK_RCPT: &str = "250 2.1.5 Recipient OK\r\n";
const GO_AHEAD: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";
const BAD_SEQUENCE: &str = "503 5.5.1 Bad sequence of commands\r\n";
const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed maximum message size\r\n";
const FAREWELL: &str = "421 4.4.2 mx.test closing connection\r\n";

/// A maildir of one test, under the system's temp dir; removed when dropped. It does not
/// exist until the server creates it.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("smtp-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TestDir(dir)
    }

    /// Files in `sub` (`new` or `tmp`), sorted by name.
    fn files(&self, sub: &str) -> Vec<String> {
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
    fn message(&self, id: &str) -> Stored {
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
struct Stored {
    return_path: String,
    envelope_to: Vec<String>,
    received: String,
    body: Vec<u8>,
}

impl Stored {
    fn parse(bytes: &[u8]) -> Stored {
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

    fn check(&self, from: &str, to: &[&str], body: &[u8]) {
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
struct Server {
    handle: Option<ServerHandle>,
    dir: TestDir,
}

impl Server {
    fn start(name: &str, tweak: impl FnOnce(&mut Config)) -> Server {
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

    fn addr(&self) -> SocketAddr {
        self.handle.as_ref().expect("running").local_addr()
    }

    fn client(&self) -> Client {
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
struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        let stream = connect(addr);
        let reader = BufReader::new(stream.try_clone().expect("clone the stream"));
        Client { stream, reader }
    }

    fn send(&mut self, bytes: &[u8]) {
        common::send(&mut self.stream, bytes);
    }

    /// One whole reply, every line of a multiline one, line ends included.
    fn reply(&mut self) -> String {
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
    fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Reads a `250 2.0.0 OK queued as ID` reply; returns the ID.
    fn queued(&mut self) -> String {
        queued_id(&self.reply())
    }

    fn expect_eof(&mut self, what: &str) {
        let rest = expect_clean_eof(self.reader.get_mut(), what);
        assert!(
            self.reader.buffer().is_empty() && rest.is_empty(),
            "{what}: {rest:?}"
        );
    }
}

/// The ID in a `250 2.0.0 OK queued as ID` reply.
fn queued_id(reply: &str) -> String {
    let id = reply.strip_prefix("250 2.0.0 OK queued as ");
    id.unwrap_or_else(|| panic!("expected queued, got {reply:?}"))
        .trim_end()
        .to_string()
}

/// Dot-stuffs `body` (every line starting with `.` gets another) and ends it with the dot.
fn stuffed(body: &[u8]) -> Vec<u8> {
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

const SMTPLIB_SCRIPT: &str = r#"
import json, smtplib, sys
port, messages = int(sys.argv[1]), json.loads(sys.argv[2])
with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
    smtp.ehlo("smtplib.test")
    out = {"features": smtp.esmtp_features, "queued": []}
    for m in messages:
        body = m["body"].encode()
        code, reply = smtp.mail(m["from"], ["SIZE=%d" % len(body), "BODY=8BITMIME"])
        assert code == 250, (code, reply)
        for to in m["to"]:
            code, reply = smtp.rcpt(to)
            assert code == 250, (code, reply)
        out["queued"].append(list(smtp.data(body)))
        out["queued"][-1][1] = out["queued"][-1][1].decode()
    out["quit"] = smtp.quit()[0]
print(json.dumps(out))
"#;

#[test]
fn smtplib_sends_several_messages_to_several_recipients_on_one_connection() {
    let server = Server::start("smtplib", |_| {});
    let bodies = [
        "Subject: one\r\n\r\nHello.\r\n.\r\n.leading dot\r\n..two dots\r\nRSET\r\n".to_string(),
        "Subject: two\r\n\r\nh\u{e9}llo, 8 bits\r\n.\r\n...\r\nlast\r\n".to_string(),
        "Subject: three\r\n\r\n.\r\n".to_string(),
    ];
    let envelopes: [(&str, &[&str]); 3] = [
        (
            "alice@example.org",
            &["bob@example.org", "carol@example.net"],
        ),
        (
            "dave@example.org",
            &["erin@example.com", "frank@example.com", "postmaster"],
        ),
        ("", &["grace@example.org", "heidi@example.org"]),
    ];
    let messages: Vec<serde_json::Value> = envelopes
        .iter()
        .zip(&bodies)
        .map(|((from, to), body)| serde_json::json!({"from": from, "to": to, "body": body}))
        .collect();
    let port = server.addr().port().to_string();
    let json = serde_json::to_string(&messages).unwrap();
    let (status, out, err) = run_client("python3", &["-c", SMTPLIB_SCRIPT, &port, &json]);
    assert!(status.success(), "smtplib failed: {out}{err}");
    let out: serde_json::Value = serde_json::from_str(&out).expect("the script's JSON");

    let features = &out["features"];
    assert_eq!(features["pipelining"], "");
    assert_eq!(features["size"], "10485760");
    assert_eq!(features["8bitmime"], "");
    assert_eq!(out["quit"], 221);
    let queued = out["queued"].as_array().expect("a list");
    assert_eq!(queued.len(), 3);
    let mut ids = Vec::new();
    for (((from, to), body), reply) in envelopes.iter().zip(&bodies).zip(queued) {
        assert_eq!(reply[0], 250, "{reply}");
        let text = reply[1].as_str().unwrap();
        let id = text.strip_prefix("2.0.0 OK queued as ").expect(text);
        server.dir.message(id).check(from, to, body.as_bytes());
        ids.push(id.to_string());
    }
    ids.sort();
    assert_eq!(server.dir.files("new"), ids, "one file per message");
    assert!(server.dir.files("tmp").is_empty());
}

/// Runs swaks against `server`, checks the message it stored; returns swaks's transcript.
fn swaks(server: &Server, extra: &[&str]) -> String {
    let port = server.addr().port().to_string();
    let mut args = vec![
        "--server",
        "127.0.0.1",
        "--port",
        &port,
        "--helo",
        "swaks.test",
        "--from",
        "sender@example.org",
        "--to",
        "a@example.org,b@example.org",
        "--header",
        "Subject: via swaks",
        "--body",
        "first line\n.dot line\nlast line",
        "--timeout",
        "30",
    ];
    args.extend_from_slice(extra);
    let (status, out, err) = run_client("swaks", &args);
    assert!(status.success(), "swaks failed: {out}{err}");
    let id = out
        .lines()
        .find_map(|line| line.split_once("<-  250 2.0.0 OK queued as "))
        .unwrap_or_else(|| panic!("no queued reply: {out}"))
        .1;
    let stored = server.dir.message(id.trim());
    assert_eq!(stored.return_path, "<sender@example.org>");
    assert_eq!(stored.envelope_to, ["<a@example.org>", "<b@example.org>"]);
    assert!(
        stored.received.contains("from swaks.test ([127.0.0.1])"),
        "{stored:?}"
    );
    // Stored is what swaks sent after the 354 (its transcript shows it), dot-unstuffed.
    let sent: String = out
        .lines()
        .skip_while(|line| !line.starts_with("<-  354 "))
        .skip(1)
        .take_while(|line| *line != " -> .")
        .map(|line| line.strip_prefix(" -> ").expect("a line sent"))
        .map(|line| format!("{}\r\n", line.strip_prefix('.').unwrap_or(line)))
        .collect();
    assert!(sent.contains("Subject: via swaks\r\n"), "{out}");
    assert!(
        sent.contains("\r\n\r\nfirst line\r\n.dot line\r\nlast line\r\n"),
        "{out}"
    );
    common::assert_same_bytes(&stored.body, sent.as_bytes(), "the message swaks sent");
    out
}

#[test]
fn swaks_sends_a_message() {
    let server = Server::start("swaks", |_| {});
    let transcript = swaks(&server, &[]);
    assert!(
        transcript.contains("<-  221 2.0.0 mx.test closing connection"),
        "{transcript}"
    );
}

#[test]
fn swaks_pipelines_a_message() {
    let server = Server::start("swaks-pipeline", |_| {});
    let transcript = swaks(&server, &["--pipeline"]);
    // Pipelined: DATA went out before the reply to MAIL came back.
    let data_sent = transcript.find(" -> DATA").expect(&transcript);
    let mail_answered = transcript
        .find("<-  250 2.1.0 Sender OK")
        .expect(&transcript);
    assert!(data_sent < mail_answered, "not pipelined:\n{transcript}");
}

#[test]
fn the_greeting_comes_first_even_to_a_client_that_talks_first() {
    let server = Server::start("greeting", |_| {});
    // `Server::client` reads the greeting before sending anything.
    let mut polite = server.client();
    assert_eq!(polite.command("HELO polite.test"), "250 mx.test\r\n");

    let mut eager = Client::new(server.addr());
    eager.send(b"NOOP\r\nEHLO eager.test\r\n");
    assert_eq!(eager.reply(), "220 mx.test ESMTP reactor-pool\r\n");
    assert_eq!(eager.reply(), "250 2.0.0 OK\r\n");
    assert_eq!(
        eager.reply(),
        "250-mx.test greets eager.test\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n\
         250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
    );
}

#[test]
fn commands_out_of_sequence_get_503_and_bad_ones_500_or_501_on_an_open_connection() {
    let server = Server::start("sequence", |_| {});
    let mut client = server.client();
    assert_eq!(client.command("MAIL FROM:<a@example.org>"), BAD_SEQUENCE);
    assert_eq!(client.command("RCPT TO:<b@example.org>"), BAD_SEQUENCE);
    assert_eq!(client.command("DATA"), BAD_SEQUENCE);
    assert_eq!(client.command("HELO client.test"), "250 mx.test\r\n");
    assert_eq!(client.command("RCPT TO:<b@example.org>"), BAD_SEQUENCE);
    assert_eq!(client.command("DATA"), BAD_SEQUENCE);
    assert_eq!(client.command("MAIL FROM:<a@example.org>"), OK_SENDER);
    assert_eq!(
        client.command("MAIL FROM:<again@example.org>"),
        BAD_SEQUENCE
    );
    assert_eq!(client.command("DATA"), BAD_SEQUENCE, "DATA before RCPT");
    assert_eq!(client.command("RCPT TO:<b@example.org>"), OK_RCPT);
    assert_eq!(client.command("RSET"), "250 2.0.0 OK\r\n");
    assert_eq!(
        client.command("DATA"),
        BAD_SEQUENCE,
        "RSET forgot the envelope"
    );

    let unknown = "500 5.5.2 Command unrecognized\r\n";
    assert_eq!(client.command("VRFY someone"), unknown);
    assert_eq!(client.command("MAILFROM:<a@example.org>"), unknown);
    assert_eq!(
        client.command(""),
        "500 5.5.2 Syntax error: empty command\r\n"
    );
    let mail_syntax = "501 5.5.4 Syntax: MAIL FROM:<address>\r\n";
    assert_eq!(client.command("MAIL FROM:a@example.org"), mail_syntax);
    assert_eq!(client.command("MAIL TO:<a@example.org>"), mail_syntax);
    assert_eq!(client.command("MAIL FROM:<a b@example.org>"), mail_syntax);
    assert_eq!(
        client.command("MAIL FROM:<a@example.org> SIZE=big"),
        "501 5.5.4 Syntax: SIZE=<bytes>\r\n"
    );
    assert_eq!(
        client.command("MAIL FROM:<a@example.org> AUTH=<>"),
        "555 5.5.4 Unsupported parameter AUTH\r\n"
    );
    assert_eq!(
        client.command("HELO"),
        "501 5.5.4 Syntax: HELO hostname\r\n"
    );
    assert_eq!(
        client.command("DATA now"),
        "501 5.5.4 Syntax: DATA takes no argument\r\n"
    );
    assert_eq!(
        client.command("mail from: <>"),
        OK_SENDER,
        "case, space, null path"
    );
    assert_eq!(
        client.command("RCPT TO:<>"),
        "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
    );
    assert_eq!(client.command("rcpt to:<c@example.org>"), OK_RCPT);
    assert_eq!(client.command("NOOP"), "250 2.0.0 OK\r\n");
    assert!(server.dir.files("new").is_empty());
}

/// Sends one message over `client` in the same transaction; returns DATA's final reply.
fn send_message(client: &mut Client, body: &[u8]) -> String {
    assert_eq!(client.command("MAIL FROM:<a@example.org>"), OK_SENDER);
    assert_eq!(client.command("RCPT TO:<b@example.org>"), OK_RCPT);
    assert_eq!(client.command("DATA"), GO_AHEAD);
    client.send(&stuffed(body));
    client.reply()
}

#[test]
fn oversized_messages_get_552_and_the_connection_stays_usable() {
    const MAX: usize = 100_000;
    let server = Server::start("oversized", |config| config.max_size = MAX);
    let mut client = server.client();
    assert!(client
        .command("EHLO client.test")
        .contains("250-SIZE 100000\r\n"));
    assert_eq!(
        client.command("MAIL FROM:<a@example.org> SIZE=100001"),
        TOO_BIG
    );
    assert_eq!(
        client.command("MAIL FROM:<a@example.org> SIZE=100000"),
        OK_SENDER
    );
    assert_eq!(client.command("RSET"), "250 2.0.0 OK\r\n");

    // Four times the framework's 1 MiB frame limit: a codec that held the message until its
    // dot would have the connection closed, not answered 552.
    let line = format!("{}\r\n", "x".repeat(998));
    let huge = line.repeat(4 * 1024 * 1024 / line.len());
    assert_eq!(send_message(&mut client, huge.as_bytes()), TOO_BIG);
    assert!(
        server.dir.files("tmp").is_empty(),
        "the partial file is removed"
    );

    // The limit counts the message as sent, dot-unstuffed: MAX bytes pass, one more not.
    let exact: Vec<u8> = (0..MAX)
        .map(|i| if i % 100 >= 98 { b"\r\n"[i % 2] } else { b'.' })
        .collect();
    let over = [&b"."[..], &exact].concat();
    assert_eq!(send_message(&mut client, &over), TOO_BIG);
    let id = queued_id(&send_message(&mut client, &exact));
    server
        .dir
        .message(&id)
        .check("a@example.org", &["b@example.org"], &exact);
    assert_eq!(client.command("NOOP"), "250 2.0.0 OK\r\n");
    assert_eq!(server.dir.files("new"), [id]);
    assert!(server.dir.files("tmp").is_empty());
}

#[test]
fn a_large_message_is_streamed_to_disk_intact() {
    let server = Server::start("large", |_| {});
    let mut client = server.client();
    client.command("EHLO client.test");
    // 3 MiB, with a 2 MiB line (more than the framework's frame limit), dots at line
    // starts, and bare LF and CR in the data, which end no line: `\n.\n` is not the end.
    let mut body = b"Subject: large\r\n\r\n".to_vec();
    for i in 0..20_000u32 {
        let dots = ".".repeat((i % 3) as usize);
        body.extend_from_slice(
            format!("{dots}line {i} {}\r\n", "y".repeat((i % 97) as usize)).as_bytes(),
        );
    }
    body.extend_from_slice(b"bare\n.\nLF and bare\r.\rCR\r\n");
    body.extend(std::iter::repeat_n(b'z', 2 * 1024 * 1024));
    body.extend_from_slice(b"\r\n.\r\n..\r\nend\r\n");
    assert!(body.len() > 3 * 1024 * 1024);
    let id = queued_id(&send_message(&mut client, &body));
    server
        .dir
        .message(&id)
        .check("a@example.org", &["b@example.org"], &body);
}

#[test]
fn quit_gets_221_then_a_clean_eof() {
    let server = Server::start("quit", |_| {});
    let mut client = server.client();
    assert_eq!(
        client.command("QUIT"),
        "221 2.0.0 mx.test closing connection\r\n"
    );
    client.expect_eof("after QUIT");

    // Commands pipelined after QUIT are not served.
    let mut client = server.client();
    client.send(b"NOOP\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(client.reply(), "250 2.0.0 OK\r\n");
    assert_eq!(client.reply(), "221 2.0.0 mx.test closing connection\r\n");
    client.expect_eof("after a pipelined QUIT");
}

#[test]
fn a_command_line_over_the_limit_gets_500_then_a_clean_close() {
    let server = Server::start("long-line", |_| {});
    let mut client = server.client();
    let longest = format!("NOOP {}", "x".repeat(MAX_LINE - 5));
    assert_eq!(
        client.command(&longest),
        "250 2.0.0 OK\r\n",
        "a line at the limit"
    );
    client.send(format!("NOOP {}", "x".repeat(MAX_LINE)).as_bytes());
    assert_eq!(client.reply(), "500 5.5.6 Line too long\r\n");
    client.expect_eof("after a line too long");
}

#[test]
fn an_idle_connection_gets_421_and_a_message_cut_short_is_dropped() {
    let server = Server::start("idle", |config| {
        config.idle_timeout = Duration::from_secs(1);
    });
    let mut idle = server.client();
    assert!(idle.command("EHLO idle.test").starts_with("250-"));
    assert_eq!(idle.reply(), FAREWELL, "421 after the idle timeout");
    idle.expect_eof("after the idle timeout");

    let mut sending = server.client();
    sending.command("HELO sending.test");
    assert_eq!(sending.command("MAIL FROM:<a@example.org>"), OK_SENDER);
    assert_eq!(sending.command("RCPT TO:<b@example.org>"), OK_RCPT);
    assert_eq!(sending.command("DATA"), GO_AHEAD);
    sending.send(b"Subject: never finished\r\n\r\nhalf a li");
    assert_eq!(sending.reply(), FAREWELL, "421 in the middle of a message");
    sending.expect_eof("after a timeout in a message");
    // The connection ends (and its close hook runs) once our FIN ends the server's linger.
    drop(sending);
    wait_until("the close hook to remove the partial message", || {
        server.dir.files("tmp").is_empty().then_some(())
    });
    assert!(server.dir.files("new").is_empty());
}

#[test]
fn shutdown_says_421_to_connected_clients() {
    let mut server = Server::start("shutdown", |_| {});
    let mut idle = server.client();
    assert!(idle.command("EHLO idle.test").starts_with("250-"));
    let mut sending = server.client();
    sending.command("HELO sending.test");
    assert_eq!(sending.command("MAIL FROM:<a@example.org>"), OK_SENDER);
    assert_eq!(sending.command("RCPT TO:<b@example.org>"), OK_RCPT);
    assert_eq!(sending.command("DATA"), GO_AHEAD);
    sending.send(b"Subject: cut short\r\n\r\n");
    wait_until("the message file to be started", || {
        (server.dir.files("tmp").len() == 1).then_some(())
    });

    let handle = server.handle.take().expect("running");
    let stopping = std::thread::spawn(move || handle.shutdown());
    assert_eq!(idle.reply(), FAREWELL);
    idle.expect_eof("after the shutdown's 421");
    assert_eq!(sending.reply(), FAREWELL);
    sending.expect_eof("after the shutdown's 421");
    drop((idle, sending));
    stopping.join().expect("shutdown returns");
    assert!(
        server.dir.files("tmp").is_empty(),
        "the cut-short message is dropped"
    );
    assert!(server.dir.files("new").is_empty());
}

#[test]
fn a_transaction_pipelined_in_one_write_gets_every_reply_in_order() {
    let server = Server::start("pipelined", |_| {});
    let mut client = Client::new(server.addr());
    // Lines of the message that read as commands must be stored, not run.
    let first = b"Subject: one\r\n\r\nRSET\r\nQUIT\r\nMAIL FROM:<evil@example.org>\r\n.hidden\r\n";
    let second = b"Subject: two\r\n\r\nDATA\r\n";
    let mut write = b"EHLO pipe.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n\
        RCPT TO:<c@example.org>\r\nDATA\r\n"
        .to_vec();
    write.extend_from_slice(&stuffed(first));
    write.extend_from_slice(b"MAIL FROM:<d@example.org>\r\nRCPT TO:<e@example.org>\r\nDATA\r\n");
    write.extend_from_slice(&stuffed(second));
    write.extend_from_slice(b"QUIT\r\n");
    client.send(&write);

    assert_eq!(client.reply(), "220 mx.test ESMTP reactor-pool\r\n");
    assert!(client
        .reply()
        .starts_with("250-mx.test greets pipe.test\r\n"));
    for expected in [OK_SENDER, OK_RCPT, OK_RCPT, GO_AHEAD] {
        assert_eq!(client.reply(), expected);
    }
    let one = client.queued();
    for expected in [OK_SENDER, OK_RCPT, GO_AHEAD] {
        assert_eq!(client.reply(), expected);
    }
    let two = client.queued();
    assert_eq!(client.reply(), "221 2.0.0 mx.test closing connection\r\n");
    client.expect_eof("after QUIT");
    let both = ["b@example.org", "c@example.org"];
    server
        .dir
        .message(&one)
        .check("a@example.org", &both, first);
    server
        .dir
        .message(&two)
        .check("d@example.org", &["e@example.org"], second);
}

#[test]
fn after_a_rejected_data_the_pipelined_message_is_read_as_commands() {
    let server = Server::start("rejected-data", |_| {});
    let mut client = server.client();
    client.command("EHLO pipe.test");
    client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:bad\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n");
    assert_eq!(client.reply(), OK_SENDER);
    assert_eq!(client.reply(), "501 5.5.4 Syntax: RCPT TO:<address>\r\n");
    assert_eq!(client.reply(), BAD_SEQUENCE, "DATA without a recipient");
    assert_eq!(
        client.reply(),
        "500 5.5.2 Command unrecognized\r\n",
        "hello"
    );
    assert_eq!(client.reply(), "500 5.5.2 Command unrecognized\r\n", ".");
    assert_eq!(client.reply(), "221 2.0.0 mx.test closing connection\r\n");
    client.expect_eof("after QUIT");
    assert!(server.dir.files("new").is_empty());
}

/// What the codec made of a byte stream: requests (consecutive chunks merged, as their
/// split depends on how the bytes arrived) and refusals.
#[derive(Debug, PartialEq)]
enum Seen {
    Request(Request),
    Refused(String),
}

/// Decodes `pieces` arriving one after another the way the framework does: each decode
/// gets every byte not yet consumed, and DATA is answered 354 before decoding goes on.
fn decode_pieces(pieces: &[&[u8]], max_size: usize) -> Vec<Seen> {
    let mut codec = SmtpCodec::new(HOST, max_size);
    let (mut input, mut seen) = (Vec::new(), Vec::new());
    for piece in pieces {
        input.extend_from_slice(piece);
        loop {
            let (next, used) = match codec.decode(&input) {
                Ok(Some((request, used))) => (Seen::Request(request), used),
                Err(DecodeError::Refused { consumed, reason }) => (Seen::Refused(reason), consumed),
                Ok(None) => break,
                Err(e) => panic!("decode error {e}"),
            };
            assert!(used > 0 && used <= input.len());
            input.drain(..used);
            if let Seen::Request(Request::Chunk(bytes)) = &next {
                assert!(bytes.len() <= CHUNK);
            }
            if next == Seen::Request(Request::Data) {
                codec.encode(Reply::new(354, "go"), &mut Vec::new());
            }
            match (seen.last_mut(), next) {
                (Some(Seen::Request(Request::Chunk(all))), Seen::Request(Request::Chunk(more))) => {
                    all.extend_from_slice(&more)
                }
                (_, next) => seen.push(next),
            }
        }
    }
    assert!(
        input.is_empty(),
        "left undecoded: {:?}",
        String::from_utf8_lossy(&input)
    );
    seen
}

const SESSION: &[u8] = b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n\
    ..\r\n.x\r\n...\r\n\r\n.\r\r\n.\n.\r\na\rb\nc\r\n..\r\n.\r\nNOPE\nQUIT\r\n";

fn expected_session(message: &[u8], oversized: bool) -> Vec<Seen> {
    let mut expected = vec![
        Seen::Request(Request::Hello {
            name: "a".into(),
            extended: true,
        }),
        Seen::Request(Request::Mail {
            from: "a@b".into(),
            size: None,
        }),
        Seen::Request(Request::Rcpt { to: "c@d".into() }),
        Seen::Request(Request::Data),
    ];
    if !message.is_empty() || oversized {
        expected.push(Seen::Request(Request::Chunk(message.to_vec())));
    }
    expected.extend([
        Seen::Request(Request::EndOfData { oversized }),
        Seen::Refused("500 5.5.2 Command unrecognized".into()),
        Seen::Request(Request::Quit),
    ]);
    expected
}

#[test]
fn the_codec_decodes_alike_however_the_input_is_split() {
    let message = b".\r\nx\r\n..\r\n\r\n\r\r\n\n.\r\na\rb\nc\r\n.\r\n";
    let expected = expected_session(message, false);
    assert_eq!(decode_pieces(&[SESSION], 1000), expected, "in one piece");
    let bytes: Vec<&[u8]> = SESSION.chunks(1).collect();
    assert_eq!(decode_pieces(&bytes, 1000), expected, "a byte at a time");
    for split in 1..SESSION.len() {
        let (a, b) = SESSION.split_at(split);
        assert_eq!(decode_pieces(&[a, b], 1000), expected, "split at {split}");
    }
    // With a limit one byte short, what went on before the limit was seen is a part of the
    // message; the rest is skipped and the end says oversized, however the input arrives.
    let max = message.len() - 1;
    for split in 1..SESSION.len() {
        let (a, b) = SESSION.split_at(split);
        let mut seen = decode_pieces(&[a, b], max);
        let Seen::Request(Request::Chunk(kept)) = &mut seen[4] else {
            panic!("split at {split}: {seen:?}");
        };
        assert!(
            kept.len() <= max && message.starts_with(kept),
            "split at {split}"
        );
        kept.clear();
        assert_eq!(seen, expected_session(b"", true), "split at {split}");
    }
    assert_eq!(
        decode_pieces(&[SESSION], message.len()),
        expected,
        "exactly the limit"
    );
}

#[test]
fn the_codec_unstuffs_dots_across_its_chunk_boundary() {
    // A `\r\n..x` line start placed at every offset around CHUNK.
    for at in CHUNK - 4..CHUNK + 4 {
        let mut message = vec![b'a'; at];
        message.extend_from_slice(b"\r\n.x\r\n.\r\ntail\r\n");
        let mut session = b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
        session.extend_from_slice(&stuffed(&message));
        session.extend_from_slice(b"NOPE\nQUIT\r\n");
        let seen = decode_pieces(&[&session], 1 << 20);
        assert_eq!(seen, expected_session(&message, false), "at {at}");
    }
}

#[test]
fn the_binary_takes_its_flags_and_says_421_on_sigterm() {
    let dir = TestDir::new("binary");
    let maildir = dir.0.to_str().expect("a UTF-8 temp dir");
    let mut server = start_example(
        "smtp_server",
        &[
            "--addr",
            "127.0.0.1:0",
            "--maildir",
            maildir,
            "--max-size",
            "5000",
            "--hostname",
            HOST,
            "--workers",
            "2",
        ],
    );
    let mut client = Client::new(server.addr);
    assert_eq!(client.reply(), "220 mx.test ESMTP reactor-pool\r\n");
    assert!(client
        .command("EHLO bin.test")
        .contains("250-SIZE 5000\r\n"));
    let over = [&[b'.'; 4999][..], b"\r\n"].concat();
    assert_eq!(send_message(&mut client, &over), TOO_BIG);
    let body = b"Subject: from the binary\r\n\r\nhi\r\n";
    let id = queued_id(&send_message(&mut client, body));
    dir.message(&id)
        .check("a@example.org", &["b@example.org"], body);

    // SAFETY: kill(2) only sends a signal, to the child this test started.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
        0
    );
    assert_eq!(client.reply(), FAREWELL);
    client.expect_eof("after SIGTERM");
    drop(client);
    let status = wait_until("the server to exit", || {
        server.child.try_wait().expect("try_wait")
    });
    assert!(status.success(), "exit status {status}");
}
