//! A half-closed connection still gets its replies: the client writes its requests and
//! shuts down its write side before reading. The peer's FIN means "no more requests",
//! never "drop the replies you owe me".

use crate::common;

use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use reactor_pool::{handler_fn, Builder, Context, LineCodec, RawCodec};

use crate::common::{connect, read_to_eof, send, wait_for_stats};

/// Long enough that the client's FIN reaches the server before the reply is ready.
const HANDLER_DELAY: Duration = Duration::from_millis(50);

#[test]
fn reply_to_a_request_sent_just_before_fin_arrives_then_eof() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("hclose")
        .start(
            RawCodec::new(),
            handler_fn(|request: Vec<u8>, _: &Context| {
                thread::sleep(HANDLER_DELAY);
                request
            }),
        )
        .expect("start the server");

    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"Hello,server!");
    client.shutdown(Shutdown::Write).expect("shutdown(Write)");
    let everything = read_to_eof(&mut client)
        .unwrap_or_else(|e| panic!("expected the reply then EOF, got {e} ({:?})", e.kind()));
    assert_eq!(
        String::from_utf8_lossy(&everything),
        "Hello,server!",
        "the reply, then nothing"
    );

    let stats = wait_for_stats(&server, "the connection to close", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.replies_dropped, 0, "{stats:#?}");
    assert_eq!(stats.resets, 0, "{stats:#?}");
    drop(client);
    server.shutdown();
}

#[test]
fn pipelined_lines_before_fin_all_get_replies_in_order_then_eof() {
    common::init_logging();
    const LINES: usize = 20;
    let server = Builder::bind("127.0.0.1:0")
        .workers(4)
        .thread_name("hclose2")
        .start(
            LineCodec::new(),
            handler_fn(|request: Vec<u8>, _: &Context| {
                // Later requests finish first, so replies come back out of order.
                let n: u64 = String::from_utf8_lossy(&request)
                    .trim_start_matches("req ")
                    .parse()
                    .expect("numbered request");
                thread::sleep(HANDLER_DELAY + Duration::from_millis(3 * (LINES as u64 - n)));
                format!("reply {n}").into_bytes()
            }),
        )
        .expect("start the server");

    let mut client = connect(server.local_addr().tcp().unwrap());
    let requests: String = (0..LINES).map(|i| format!("req {i}\n")).collect();
    send(&mut client, requests.as_bytes());
    client.shutdown(Shutdown::Write).expect("shutdown(Write)");
    let everything = read_to_eof(&mut client)
        .unwrap_or_else(|e| panic!("expected the replies then EOF, got {e} ({:?})", e.kind()));
    let expected: String = (0..LINES).map(|i| format!("reply {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&everything), expected);

    let stats = wait_for_stats(&server, "the connection to close", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.requests, LINES as u64);
    assert_eq!(stats.responses, LINES as u64);
    assert_eq!(stats.replies_dropped, 0, "{stats:#?}");
    drop(client);
    server.shutdown();
}

#[test]
fn crlf_lines_pipelined_before_fin_in_several_writes() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(3)
        .thread_name("hclose3")
        .start(
            LineCodec::new(),
            handler_fn(|request: Vec<u8>, _: &Context| {
                thread::sleep(HANDLER_DELAY);
                request.to_ascii_uppercase()
            }),
        )
        .expect("start the server");

    let mut client = connect(server.local_addr().tcp().unwrap());
    // The writes split lines in the middle, including between `\r` and `\n`.
    for part in ["one\r\ntw", "o\r", "\nthree\r\nfo", "ur\r\n"] {
        send(&mut client, part.as_bytes());
    }
    client.shutdown(Shutdown::Write).expect("shutdown(Write)");
    let everything = read_to_eof(&mut client)
        .unwrap_or_else(|e| panic!("expected the replies then EOF, got {e} ({:?})", e.kind()));
    assert_eq!(
        String::from_utf8_lossy(&everything),
        "ONE\nTWO\nTHREE\nFOUR\n"
    );
    drop(client);
    server.shutdown();
}

#[test]
fn more_pipelined_lines_than_the_in_flight_limit_before_fin_all_get_replies() {
    common::init_logging();
    // Over three times the per-connection limit: the server must keep reading after the
    // first batch, find the FIN behind the rest, and still answer everything.
    const LINES: usize = 100;
    const MAX_IN_FLIGHT: usize = 32;
    let server = Builder::bind("127.0.0.1:0")
        .workers(4)
        .max_in_flight_per_connection(MAX_IN_FLIGHT)
        .thread_name("hclose4")
        .start(
            LineCodec::new(),
            handler_fn(|request: Vec<u8>, _: &Context| {
                thread::sleep(Duration::from_millis(2));
                let mut reply = b"ok ".to_vec();
                reply.extend_from_slice(&request);
                reply
            }),
        )
        .expect("start the server");

    let mut client = connect(server.local_addr().tcp().unwrap());
    let requests: String = (0..LINES).map(|i| format!("line {i}\n")).collect();
    send(&mut client, requests.as_bytes());
    client.shutdown(Shutdown::Write).expect("shutdown(Write)");
    let everything = read_to_eof(&mut client)
        .unwrap_or_else(|e| panic!("expected the replies then EOF, got {e} ({:?})", e.kind()));
    let expected: String = (0..LINES).map(|i| format!("ok line {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&everything), expected);

    let stats = wait_for_stats(&server, "the connection to close", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.responses, LINES as u64, "{stats:#?}");
    drop(client);
    server.shutdown();
}
