//! Timeouts: an idle connection, a slowloris, and a peer that stops reading are each closed
//! at their own deadline; a slow handler is counted but never cut short.
//!
//! The server's timeouts are short so the tests are quick; the client-side bounds only
//! detect hangs, or tell one deadline from another much longer one.

use crate::common;

use std::io::{self, Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use reactor_pool::{handler_fn, Builder, Context, LineCodec};

use crate::common::{
    connect, connect_with_recv_buffer, expect_clean_eof, read_exactly, read_until_end, round_trip,
    send, wait_for_stats,
};

/// Far longer than any deadline under test: a close before this is not that timeout.
const LONG: Duration = Duration::from_secs(60);
/// Sooner than [`LONG`] by a wide margin, and generous for a loaded machine.
const PROMPT: Duration = Duration::from_secs(15);

#[test]
fn an_idle_connection_is_closed_at_the_idle_timeout() {
    common::init_logging();
    let idle = Duration::from_millis(500);
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .idle_timeout(Some(idle))
        .partial_frame_timeout(Some(LONG))
        .write_stall_timeout(Some(LONG))
        .thread_name("to-idle")
        .start(LineCodec::new(), common::echo())
        .expect("start the server");
    let mut client = connect(server.local_addr().tcp().unwrap());
    round_trip(&mut client, b"hello\n", b"hello\n");
    let quiet_since = Instant::now();
    let rest = expect_clean_eof(&mut client, "an idle connection");
    let waited = quiet_since.elapsed();
    assert!(rest.is_empty(), "unexpected bytes {rest:?}");
    // The server's clock started when it wrote the reply, a little before we read it.
    assert!(
        waited >= idle.mul_f32(0.7),
        "closed after {waited:?}, before the idle timeout of {idle:?}"
    );
    assert!(waited < PROMPT, "closed only after {waited:?}");
    assert_eq!(server.stats().timeouts, 1);
    drop(client);
    let stats = wait_for_stats(&server, "the connection closed", |s| {
        s.connections_open == 0
    });
    assert_eq!(stats.timeouts, 1, "{stats:#?}");
    assert_eq!(stats.resets, 0, "{stats:#?}");
    server.shutdown();
}

#[test]
fn activity_keeps_a_connection_past_the_idle_timeout() {
    common::init_logging();
    let idle = Duration::from_millis(1000);
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .idle_timeout(Some(idle))
        .thread_name("to-busy")
        .start(LineCodec::new(), common::echo())
        .expect("start the server");
    let mut client = connect(server.local_addr().tcp().unwrap());
    let started = Instant::now();
    let mut last = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let mut i = 0;
    // Round trips every 50 ms for 2.5 idle timeouts.
    while started.elapsed() < idle * 5 / 2 {
        thread::sleep(Duration::from_millis(50));
        let msg = format!("tick {i}\n");
        longest_gap = longest_gap.max(last.elapsed());
        round_trip(&mut client, msg.as_bytes(), msg.as_bytes());
        last = Instant::now();
        i += 1;
    }
    let stats = server.stats();
    assert_eq!(
        (stats.timeouts, stats.connections_closed),
        (0, 0),
        "longest quiet gap {longest_gap:?} (idle timeout {idle:?}): {stats:#?}"
    );
    drop(client);
    server.shutdown();
}

#[test]
fn a_slowloris_is_closed_at_the_partial_frame_deadline_not_the_idle_one() {
    common::init_logging();
    let partial = Duration::from_millis(600);
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .idle_timeout(Some(LONG))
        .partial_frame_timeout(Some(partial))
        .thread_name("to-loris")
        .start(LineCodec::new(), common::echo())
        .expect("start the server");
    let mut client = connect(server.local_addr().tcp().unwrap());
    round_trip(&mut client, b"hi\n", b"hi\n");
    client
        .set_read_timeout(Some(partial / 2))
        .expect("set_read_timeout");

    // One byte of a line every half partial-frame timeout, never a newline.
    let started = Instant::now();
    let mut trickled = 0;
    let waited = loop {
        assert!(
            started.elapsed() < PROMPT,
            "still open after {:?} of trickling",
            started.elapsed()
        );
        if client.write_all(b"x").is_ok() {
            trickled += 1;
        }
        let mut buf = [0u8; 16];
        match client.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Ok(n) => panic!("unexpected reply {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("expected EOF, got {e}"),
        }
    };
    assert!(
        waited >= partial,
        "closed after {waited:?}, before the partial-frame timeout of {partial:?}"
    );
    assert!(
        trickled >= 2,
        "only {trickled} bytes trickled before the close"
    );
    let stats = server.stats();
    assert_eq!(stats.timeouts, 1, "{stats:#?}");
    assert_eq!(stats.protocol_errors, 0, "{stats:#?}");
    drop(client);
    wait_for_stats(&server, "the connection closed", |s| {
        s.connections_open == 0
    });
    server.shutdown();
}

#[test]
fn the_partial_frame_deadline_restarts_with_each_completed_request() {
    common::init_logging();
    let partial = Duration::from_millis(1200);
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .idle_timeout(Some(LONG))
        .partial_frame_timeout(Some(partial))
        .thread_name("to-pipe")
        .start(LineCodec::new(), common::echo())
        .expect("start the server");
    let mut client = connect(server.local_addr().tcp().unwrap());
    // The input is never empty: each write completes one line and starts the next.
    send(&mut client, b"l0");
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < partial * 2 {
        thread::sleep(Duration::from_millis(100));
        send(&mut client, format!("\nl{}", i + 1).as_bytes());
        let want = format!("l{i}\n");
        assert_eq!(
            String::from_utf8_lossy(&read_exactly(&mut client, want.len())),
            want
        );
        i += 1;
    }
    send(&mut client, b"\n");
    let want = format!("l{i}\n");
    assert_eq!(
        String::from_utf8_lossy(&read_exactly(&mut client, want.len())),
        want
    );
    assert_eq!(server.stats().timeouts, 0);
    drop(client);
    server.shutdown();
}

#[test]
fn a_peer_that_stops_reading_is_closed_at_the_write_stall_timeout() {
    common::init_logging();
    const REPLY: usize = 16 << 20;
    let stall = Duration::from_millis(500);
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .idle_timeout(Some(LONG))
        .partial_frame_timeout(Some(LONG))
        .write_stall_timeout(Some(stall))
        .output_high_water(64 * 1024)
        .thread_name("to-stall")
        .start(
            LineCodec::new(),
            handler_fn(|line: Vec<u8>, _ctx: &Context| {
                if line == b"big" {
                    vec![b'B'; REPLY]
                } else {
                    line
                }
            }),
        )
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();
    let mut witness = connect(addr);
    let mut client = connect_with_recv_buffer(addr, 4096);
    round_trip(&mut client, b"small\n", b"small\n");

    let asked = Instant::now();
    send(&mut client, b"big\n");
    // The client never reads: the server's output stalls and it gives up.
    let stats = wait_for_stats(&server, "the stalled connection closed", |s| {
        s.connections_closed == 1
    });
    let waited = asked.elapsed();
    assert!(
        waited >= stall,
        "closed after {waited:?}, before the write-stall timeout of {stall:?}"
    );
    assert!(waited < PROMPT, "closed only after {waited:?}");
    assert_eq!(stats.timeouts, 1, "{stats:#?}");
    assert_eq!(stats.bytes_buffered, 0, "{stats:#?}");
    round_trip(&mut witness, b"unaffected\n", b"unaffected\n");

    // What the kernel had already taken still arrives, then the connection ends: the
    // reply was cut short.
    let (_, got) = read_until_end(&mut client, "the stalled client");
    assert!(
        got < REPLY + 1,
        "the whole reply ({got} bytes) arrived although the connection was closed"
    );
    drop(witness);
    server.shutdown();
}

/// The workers read the clock once between two calls of a batch (one call's end is the
/// next one's start): the fast call after a slow one in the same pipelined batch is not
/// counted as slow too.
#[test]
fn in_a_pipelined_batch_only_the_slow_call_is_counted() {
    common::init_logging();
    let threshold = Duration::from_millis(300);
    let slow = Duration::from_millis(600);
    let server = Builder::bind("127.0.0.1:0")
        .workers(1)
        .slow_handler_threshold(Some(threshold))
        .thread_name("to-slowb")
        .start(
            LineCodec::new(),
            handler_fn(move |line: Vec<u8>, _ctx: &Context| {
                if line == b"slow" {
                    thread::sleep(slow);
                }
                line
            }),
        )
        .expect("start the server");
    let mut client = connect(server.local_addr().tcp().unwrap());
    round_trip(&mut client, b"fast 1\n", b"fast 1\n");
    // Nothing is in flight: the three arrive in one segment and run as one batch.
    send(&mut client, b"slow\nfast 2\nfast 3\n");
    assert_eq!(read_exactly(&mut client, 19), b"slow\nfast 2\nfast 3\n");
    let stats = wait_for_stats(&server, "the slow call counted", |s| s.slow_handlers >= 1);
    assert_eq!(stats.slow_handlers, 1, "{stats:#?}");
    drop(client);
    server.shutdown();
}

#[test]
fn a_slow_handler_is_counted_and_its_reply_still_arrives() {
    common::init_logging();
    let threshold = Duration::from_millis(500);
    let slow = Duration::from_millis(1200);
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .slow_handler_threshold(Some(threshold))
        .thread_name("to-slowh")
        .start(
            LineCodec::new(),
            handler_fn(move |line: Vec<u8>, _ctx: &Context| {
                if line == b"slow" {
                    thread::sleep(slow);
                    b"done slow".to_vec()
                } else {
                    line
                }
            }),
        )
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();
    let mut client = connect(addr);
    let mut other = connect(addr);
    for i in 0..3 {
        let msg = format!("fast {i}\n");
        round_trip(&mut client, msg.as_bytes(), msg.as_bytes());
    }
    assert_eq!(server.stats().slow_handlers, 0);

    let asked = Instant::now();
    send(&mut client, b"slow\n");
    // Meanwhile another connection is served by the other worker.
    round_trip(&mut other, b"meanwhile\n", b"meanwhile\n");
    assert_eq!(read_exactly(&mut client, 10), b"done slow\n");
    assert!(asked.elapsed() >= slow, "the slow handler was cut short");
    let stats = wait_for_stats(&server, "the slow handler counted", |s| {
        s.slow_handlers >= 1
    });
    assert_eq!(stats.slow_handlers, 1, "{stats:#?}");
    round_trip(&mut client, b"fast again\n", b"fast again\n");
    assert_eq!(server.stats().slow_handlers, 1);
    drop((client, other));
    server.shutdown();
}
