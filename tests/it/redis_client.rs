//! A small RESP2 client for the kv_server tests: exact-reply round trips, commands as
//! redis-cli encodes them, a reply reader, and redis-cli itself.

use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use crate::common::{run_client, send, Example};

/// Sends `request` and reads until the reply is `expected`, failing as soon as what arrived
/// stops being a prefix of it (a wrong reply need not wait out the read timeout).
pub fn expect(client: &mut TcpStream, request: &str, expected: &str) {
    send(client, request.as_bytes());
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < expected.len() && expected.as_bytes().starts_with(&got) {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the reply to {request:?}: {e}"),
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        expected,
        "reply to {request:?}"
    );
}

/// A command as redis-cli sends it: a RESP array of bulk strings.
pub fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

/// A RESP2 reply.
#[derive(Debug, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<Resp>),
}

/// Reads one reply; a short read, a bad line or EOF fails the test.
pub fn read_resp(reader: &mut impl BufRead) -> Resp {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).expect("read a reply");
    let Some(text) = line.strip_suffix(b"\r\n").filter(|t| !t.is_empty()) else {
        panic!(
            "expected a reply line, got {:?}",
            String::from_utf8_lossy(&line)
        );
    };
    let rest = String::from_utf8_lossy(&text[1..]).into_owned();
    let number = || rest.parse::<i64>().expect("a number");
    match text[0] {
        b'+' => Resp::Simple(rest),
        b'-' => Resp::Error(rest),
        b':' => Resp::Int(number()),
        b'$' if number() < 0 => Resp::Bulk(None),
        b'$' => {
            let mut bulk = vec![0; number() as usize + 2];
            reader.read_exact(&mut bulk).expect("read a bulk string");
            assert!(bulk.ends_with(b"\r\n"), "a bulk string ends with CRLF");
            bulk.truncate(bulk.len() - 2);
            Resp::Bulk(Some(String::from_utf8(bulk).expect("UTF-8")))
        }
        b'*' => Resp::Array((0..number()).map(|_| read_resp(reader)).collect()),
        other => panic!("unexpected reply type {:?}", other as char),
    }
}

pub fn ok() -> Resp {
    Resp::Simple("OK".into())
}

pub fn queued() -> Resp {
    Resp::Simple("QUEUED".into())
}

/// A bulk reply holding an integer (a missing key counts as 0).
pub fn int_of(reply: &Resp) -> i64 {
    match reply {
        Resp::Bulk(None) => 0,
        Resp::Bulk(Some(text)) => text.parse().expect("an integer"),
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

/// redis-cli against `server`, the arguments given; returns its stdout without the
/// trailing newline.
pub fn cli(server: &Example, args: &[&str]) -> String {
    let port = server.addr.port().to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port, "--no-auth-warning"];
    all.extend_from_slice(args);
    let (status, out, err) = run_client("redis-cli", &all);
    assert!(status.success(), "redis-cli {args:?} failed: {err}");
    out.trim_end().to_string()
}

/// redis-cli fed `input` on stdin; returns its stdout.
pub fn cli_stdin(server: &Example, args: &[&str], input: &str) -> String {
    let port = server.addr.port().to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port, "--no-auth-warning"];
    all.extend_from_slice(args);
    let mut child = Command::new("redis-cli")
        .args(&all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli is installed (scripts/test.sh installs it)");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(input.as_bytes()).expect("write commands");
    drop(stdin);
    let output = child.wait_with_output().expect("redis-cli exits");
    assert!(output.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
