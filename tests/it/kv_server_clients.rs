//! examples/kv_server against real Redis clients (redis-cli, redis-benchmark) and raw sockets.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::{connect, read_exactly, read_to_eof, run_client, send, start_example};

fn cli(server: &common::Example, args: &[&str]) -> String {
    let port = server.addr.port().to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port];
    all.extend_from_slice(args);
    let (status, out, err) = run_client("redis-cli", &all);
    assert!(status.success(), "redis-cli {args:?} failed: {err}");
    out.trim_end().to_string()
}

#[test]
fn redis_cli_commands_get_redis_replies() {
    let server = start_example("kv_server", &["--addr", "127.0.0.1:0"]);
    assert_eq!(cli(&server, &["PING"]), "PONG");
    assert_eq!(cli(&server, &["SET", "a", "1"]), "OK");
    assert_eq!(cli(&server, &["GET", "a"]), "1");
    assert_eq!(cli(&server, &["INCR", "a"]), "2");
    assert_eq!(cli(&server, &["GET", "missing"]), "");
    assert_eq!(cli(&server, &["MSET", "x", "1", "y", "2"]), "OK");
    // The missing key prints as an empty line, which `cli` trims.
    assert_eq!(cli(&server, &["MGET", "x", "y", "z"]), "1\n2");
    assert_eq!(cli(&server, &["EXISTS", "x", "y", "z"]), "2");
    assert_eq!(cli(&server, &["DEL", "x", "z"]), "1");
    assert_eq!(cli(&server, &["ECHO", "hi there"]), "hi there");
    assert_eq!(cli(&server, &["SET", "s", "text"]), "OK");
    assert_eq!(
        cli(&server, &["INCR", "s"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        cli(&server, &["GET"]),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(cli(&server, &["SET", "k", "v", "EX"]), "ERR syntax error");
    assert!(cli(&server, &["NOPE"]).starts_with("ERR unknown command"));
}

#[test]
fn set_with_px_expires() {
    let server = start_example("kv_server", &["--addr", "127.0.0.1:0"]);
    assert_eq!(cli(&server, &["SET", "short", "v", "PX", "50"]), "OK");
    assert_eq!(cli(&server, &["SET", "long", "v", "EX", "100"]), "OK");
    common::wait_until("the PX key to expire", || {
        (cli(&server, &["GET", "short"]).is_empty()).then_some(())
    });
    assert_eq!(cli(&server, &["GET", "long"]), "v");
}

#[test]
fn redis_cli_reading_commands_from_stdin_like_a_session() {
    let server = start_example("kv_server", &["--addr", "127.0.0.1:0"]);
    let port = server.addr.port().to_string();
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli is installed (scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(b"SET z 5\nINCR z\nGET z\nQUIT\n")
        .expect("write commands");
    let output = child.wait_with_output().expect("redis-cli exits");
    assert!(output.status.success());
    // redis-cli handles QUIT itself and prints nothing for it when not on a terminal.
    assert_eq!(String::from_utf8_lossy(&output.stdout), "OK\n6\n6\n");
}

#[test]
fn inline_commands_and_errors_keep_the_connection_open() {
    let server = start_example("kv_server", &["--addr", "127.0.0.1:0"]);
    let mut client = connect(server.addr);
    send(&mut client, b"PING\r\nGET\r\n\r\nSET b 2\nGET b\r\n");
    let expected =
        b"+PONG\r\n-ERR wrong number of arguments for 'get' command\r\n+OK\r\n$1\r\n2\r\n";
    assert_eq!(
        String::from_utf8_lossy(&read_exactly(&mut client, expected.len())),
        String::from_utf8_lossy(expected)
    );
    send(&mut client, b"QUIT\r\n");
    let rest = read_to_eof(&mut client).expect("a clean close after QUIT");
    assert_eq!(rest, b"+OK\r\n");
}

#[test]
fn protocol_violation_gets_an_error_then_a_clean_close() {
    let server = start_example("kv_server", &["--addr", "127.0.0.1:0"]);
    let mut client = connect(server.addr);
    send(&mut client, b"*1\r\n$4\r\nPING\r\n*2\r\n+oops\r\n");
    let reply = read_to_eof(&mut client).expect("a clean close, not a reset");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "+PONG\r\n-ERR Protocol error: expected '$', got '+'\r\n"
    );
}

fn benchmark(server: &common::Example, extra: &[&str]) {
    let port = server.addr.port().to_string();
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "ping,set,get,incr,mset",
        "-q",
        "-n",
        "2000",
        "-c",
        "20",
    ];
    args.extend_from_slice(extra);
    let (status, out, err) = run_client("redis-benchmark", &args);
    assert!(status.success(), "redis-benchmark failed: {out}{err}");
    // -q prints a progress line that it overwrites with '\r', then the result.
    let results: Vec<&str> = out
        .split(['\n', '\r'])
        .filter(|line| line.contains("requests per second"))
        .collect();
    for test in ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR", "MSET"] {
        assert!(
            results
                .iter()
                .any(|line| line.trim_start().starts_with(test)),
            "no result for {test}: {out}"
        );
    }
    let all = format!("{out}{err}");
    assert!(
        !all.contains("rror"),
        "redis-benchmark reported errors: {all}"
    );
}

#[test]
fn redis_benchmark_runs_with_zero_errors() {
    let server = start_example("kv_server", &["--addr", "127.0.0.1:0"]);
    benchmark(&server, &[]);
}

#[test]
fn redis_benchmark_pipelined_runs_with_zero_errors() {
    let server = start_example("kv_server", &["--addr", "127.0.0.1:0"]);
    benchmark(&server, &["-P", "16"]);
}
