//! examples/http_hello against real HTTP clients (curl, wrk, ab) and raw sockets.

use crate::common;

use crate::common::{connect, read_to_eof, run_client, send, start_example};

fn url(example: &common::Example, path: &str) -> String {
    format!("http://{}{path}", example.addr)
}

#[test]
fn curl_gets_hello_world_and_the_documented_status_codes() {
    let server = start_example("http_hello", &["--addr", "127.0.0.1:0", "--workers", "2"]);
    let (status, body, err) = run_client("curl", &["-sS", "-i", &url(&server, "/")]);
    assert!(status.success(), "curl failed: {err}");
    assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{body}");
    assert!(body.ends_with("\r\n\r\nHello, world!"), "{body}");

    let code = |extra: &[&str], path: &str| {
        let mut args = vec!["-sS", "-o", "/dev/null", "-w", "%{http_code}"];
        args.extend_from_slice(extra);
        let target = url(&server, path);
        args.push(&target);
        let (status, out, err) = run_client("curl", &args);
        assert!(status.success(), "curl {args:?} failed: {err}");
        out
    };
    assert_eq!(code(&[], "/missing"), "404");
    assert_eq!(code(&["-X", "DELETE"], "/"), "405");
    let big_header = format!("X-Big: {}", "a".repeat(9000));
    assert_eq!(code(&["-H", &big_header], "/"), "431");
    let body_file = std::env::temp_dir().join(format!("http_hello_413_{}", std::process::id()));
    std::fs::write(&body_file, vec![b'b'; 1024 * 1024 + 1]).expect("write the body file");
    let body_arg = format!("@{}", body_file.display());
    let too_large = code(&["--data-binary", &body_arg], "/echo");
    let _ = std::fs::remove_file(&body_file);
    assert_eq!(too_large, "413");

    let (status, echoed, err) = run_client(
        "curl",
        &["-sS", "--data-binary", "ping", &url(&server, "/echo")],
    );
    assert!(status.success(), "curl failed: {err}");
    assert_eq!(echoed, "ping");
}

#[test]
fn malformed_request_gets_400_then_a_clean_close() {
    let server = start_example("http_hello", &["--addr", "127.0.0.1:0"]);
    let mut client = connect(server.addr);
    send(&mut client, b"GARBAGE WITH SPACES\x01\r\n\r\n");
    let reply = read_to_eof(&mut client).expect("a clean EOF after the 400, not a reset");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(reply.contains("Connection: close\r\n"), "{reply}");
}

#[test]
fn connection_close_is_honoured_after_the_reply() {
    let server = start_example("http_hello", &["--addr", "127.0.0.1:0"]);
    let mut client = connect(server.addr);
    send(
        &mut client,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let reply = read_to_eof(&mut client).expect("a clean EOF after the reply");
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 1, "{reply}");
    assert!(reply.contains("Connection: close\r\n"), "{reply}");
    assert!(reply.ends_with("Hello, world!"), "{reply}");
}

#[test]
fn pipelined_keep_alive_requests_are_answered_in_order() {
    let server = start_example("http_hello", &["--addr", "127.0.0.1:0", "--workers", "4"]);
    let mut client = connect(server.addr);
    let mut requests = Vec::new();
    for i in 0..10 {
        let body = format!("request-{i}");
        requests.extend_from_slice(
            format!(
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    requests.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    send(&mut client, &requests);
    let reply = read_to_eof(&mut client).expect("a clean EOF after the last reply");
    let reply = String::from_utf8_lossy(&reply);
    let bodies: Vec<&str> = reply
        .split("HTTP/1.1 200 OK\r\n")
        .skip(1)
        .map(|response| response.split("\r\n\r\n").nth(1).unwrap_or_default())
        .collect();
    let mut expected: Vec<String> = (0..10).map(|i| format!("request-{i}")).collect();
    expected.push("Hello, world!".into());
    assert_eq!(bodies, expected);
}

#[test]
fn wrk_runs_with_zero_errors() {
    let server = start_example("http_hello", &["--addr", "127.0.0.1:0"]);
    let (status, out, err) = run_client("wrk", &["-t1", "-c20", "-d1s", &url(&server, "/")]);
    assert!(status.success(), "wrk failed: {out}{err}");
    assert!(out.contains("Requests/sec:"), "{out}");
    assert!(
        !out.contains("Socket errors"),
        "wrk saw socket errors: {out}"
    );
    assert!(!out.contains("Non-2xx"), "wrk saw non-2xx replies: {out}");
    let requests: u64 = out
        .split_whitespace()
        .zip(out.split_whitespace().skip(1))
        .find(|(_, next)| *next == "requests")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    assert!(requests > 0, "wrk made no requests: {out}");
}

#[test]
fn ab_keep_alive_runs_with_zero_failures() {
    let server = start_example("http_hello", &["--addr", "127.0.0.1:0"]);
    let (status, out, err) = run_client(
        "ab",
        &["-k", "-q", "-n", "2000", "-c", "10", &url(&server, "/")],
    );
    assert!(status.success(), "ab failed: {out}{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in ab output: {out}"))
    };
    assert_eq!(field("Complete requests:"), "2000");
    assert_eq!(field("Failed requests:"), "0");
    assert_eq!(field("Keep-Alive requests:"), "2000");
}
