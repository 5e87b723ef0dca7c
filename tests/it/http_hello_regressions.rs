//! Regression tests for bugs fixed in examples/http_hello.rs, over real sockets on 127.0.0.1.
//!
//! The example's source is included, so its server runs in this process and is always
//! built from the current source (`cargo test --test NAME` does not rebuild example
//! binaries).

use crate::http_hello;

use crate::common::{connect, expect_clean_eof, send};
use reactor_pool::ServerHandle;

/// The example's server, shut down when dropped (also when a test fails).
struct Server(Option<ServerHandle>);

impl Server {
    fn start() -> Self {
        let addr: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
        Server(Some(
            http_hello::start(addr, None, None, None).expect("start http_hello"),
        ))
    }

    /// Sends `request` on a new connection and returns everything before the server's EOF.
    fn exchange(&self, request: &str) -> String {
        let addr = self
            .0
            .as_ref()
            .expect("running")
            .local_addr()
            .tcp()
            .unwrap();
        let mut client = connect(addr);
        send(&mut client, request.as_bytes());
        String::from_utf8_lossy(&expect_clean_eof(&mut client, request)).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.shutdown();
        }
    }
}

/// Asserts `reply` is one `400 Bad Request` and nothing else: one status line, then the
/// close the server announced.
fn assert_one_400(reply: &str, case: &str) {
    let status_lines = reply.split('\n').filter(|l| l.starts_with("HTTP/")).count();
    assert_eq!(
        status_lines, 1,
        "{case:?}: one response expected, got {reply:?}"
    );
    assert!(
        reply.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{case:?}: {reply:?}"
    );
    assert!(
        reply.contains("\r\nConnection: close\r\n"),
        "{case:?}: {reply:?}"
    );
}

/// A request that ends after its headers, so whatever follows is the next request.
const SMUGGLED: &str = "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

#[test]
fn http_differing_content_lengths_get_one_400_then_close() {
    let server = Server::start();
    let n = SMUGGLED.len();
    let cases = [
        // The last header won: an empty POST, then SMUGGLED answered as a second request.
        format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {n}\r\nContent-Length: 0\r\n\r\n{SMUGGLED}"),
        format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"),
        format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0, {n}\r\n\r\n{SMUGGLED}"),
        format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {n}\r\nContent-Length: {n}, 0\r\n\r\n{SMUGGLED}"),
    ];
    for request in &cases {
        assert_one_400(&server.exchange(request), request);
    }
}

#[test]
fn http_content_length_that_is_not_all_digits_gets_one_400_then_close() {
    let server = Server::start();
    // `str::parse` took the sign: `+5` was a five-byte body.
    for value in ["+5", "-5", "5 5", "0x5", "5,", ""] {
        let request = format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {value}\r\nConnection: close\r\n\r\nhello"
        );
        assert_one_400(&server.exchange(&request), &request);
    }
}

#[test]
fn http_content_length_too_big_for_a_u64_gets_one_400_then_close() {
    let server = Server::start();
    // Digits that overflow a u64 saturated to u64::MAX, a valid length over the limit: 413.
    // A value that is no valid length makes the message invalid (RFC 9112 section 6.3).
    for value in [
        "18446744073709551616",
        "99999999999999999999",
        "18446744073709551615, 18446744073709551616",
    ] {
        let request = format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {value}\r\nConnection: close\r\n\r\nhello"
        );
        assert_one_400(&server.exchange(&request), &request);
    }
}

#[test]
fn http_content_length_over_the_body_limit_still_gets_413() {
    let server = Server::start();
    // Valid lengths: u64::MAX is the largest, and leading zeros do not overflow.
    for value in [
        "1048577",
        "18446744073709551615",
        "000000000000000000000001048577",
    ] {
        let request =
            format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {value}\r\n\r\nhello");
        let reply = server.exchange(&request);
        assert!(
            reply.starts_with("HTTP/1.1 413 Content Too Large\r\n"),
            "{request:?}: {reply:?}"
        );
        assert!(
            reply.contains("\r\nConnection: close\r\n"),
            "{request:?}: {reply:?}"
        );
    }
}

#[test]
fn http_transfer_encoding_with_content_length_gets_one_400_then_close() {
    let server = Server::start();
    // Either order: the length must not depend on which header a reader looks at first.
    for headers in [
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
    ] {
        let request =
            format!("POST /echo HTTP/1.1\r\nHost: t\r\n{headers}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        assert_one_400(&server.exchange(&request), &request);
    }
}

#[test]
fn http_transfer_encoding_not_ending_in_chunked_gets_one_400_then_close() {
    let server = Server::start();
    // RFC 9112 section 6.3: the body's end cannot be known, so 400, not 501.
    for codings in ["gzip", "chunked, gzip", ""] {
        let request =
            format!("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {codings}\r\n\r\nhello");
        assert_one_400(&server.exchange(&request), &request);
    }
}

#[test]
fn http_identical_content_lengths_still_frame_one_body() {
    let server = Server::start();
    // Allowed by RFC 9110 section 8.6, and what the strict checks must keep working.
    for lengths in ["5\r\nContent-Length: 5", "5, 05", " 5 "] {
        let request = format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {lengths}\r\nConnection: close\r\n\r\nhello"
        );
        let reply = server.exchange(&request);
        assert!(
            reply.starts_with("HTTP/1.1 200 OK\r\n"),
            "{request:?}: {reply:?}"
        );
        assert!(reply.ends_with("\r\n\r\nhello"), "{request:?}: {reply:?}");
    }
    let chunked =
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    let reply = server.exchange(chunked);
    assert!(
        reply.starts_with("HTTP/1.1 501 Not Implemented\r\n"),
        "{reply:?}"
    );
}
