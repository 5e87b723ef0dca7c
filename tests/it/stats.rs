//! The counters move as `Stats` documents them: connections accepted, closed and open;
//! requests, responses and in flight; the job queue's depth; bytes buffered; protocol
//! errors, timeouts, resets and dropped replies, each counted once per connection.

use crate::common;

use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use reactor_pool::{
    handler_fn, AfterReply, Builder, Codec, Context, DecodeError, Decoded, LineCodec, Output,
    ServerHandle, Stats,
};

use crate::common::{
    connect, expect_clean_eof, read_exactly, read_until_end, reset, round_trip, send,
    wait_for_stats, WAIT_DEADLINE,
};

/// A line server whose handler blocks on lines starting with `hold` until the returned
/// sender is dropped, and reports each call's line on the returned receiver.
fn holding_server(name: &str, workers: usize) -> (ServerHandle, Sender<()>, Receiver<Vec<u8>>) {
    let (release, gate) = bounded::<()>(0);
    let (entered_tx, entered) = unbounded();
    let server = Builder::bind("127.0.0.1:0")
        .workers(workers)
        // The job queue and the workers are what these tests are about: every batch goes
        // to the pool.
        .adaptive_inline(None)
        .thread_name(name)
        .start(
            LineCodec::new(),
            handler_fn(move |line: Vec<u8>, _ctx: &Context| {
                let _ = entered_tx.send(line.clone());
                if line.starts_with(b"hold") {
                    let _ = gate.recv_timeout(WAIT_DEADLINE);
                }
                line
            }),
        )
        .expect("start the server");
    (server, release, entered)
}

fn all_closed(server: &ServerHandle) -> Stats {
    wait_for_stats(server, "every connection closed", |s| {
        s.connections_open == 0
    })
}

#[test]
fn connection_counters_follow_accepts_and_closes() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("st-conn")
        .start(LineCodec::new(), common::echo())
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();
    assert_eq!(
        server.stats(),
        Stats::default(),
        "a new server counts nothing"
    );

    let mut clients: Vec<_> = (0..3).map(|_| connect(addr)).collect();
    for c in &mut clients {
        round_trip(c, b"x\n", b"x\n");
    }
    let stats = server.stats();
    assert_eq!(
        (
            stats.connections_accepted,
            stats.connections_open,
            stats.connections_closed
        ),
        (3, 3, 0),
        "{stats:#?}"
    );
    clients.truncate(1);
    let stats = wait_for_stats(&server, "two closed", |s| s.connections_closed == 2);
    assert_eq!(
        (stats.connections_accepted, stats.connections_open),
        (3, 1),
        "{stats:#?}"
    );
    drop(clients);
    let stats = all_closed(&server);
    assert_eq!(
        (stats.connections_accepted, stats.connections_closed),
        (3, 3),
        "{stats:#?}"
    );
    assert_eq!((stats.requests, stats.responses), (3, 3), "{stats:#?}");
    assert_eq!(stats.bytes_buffered, 0, "{stats:#?}");
    assert_eq!(stats.resets + stats.timeouts + stats.protocol_errors, 0);
    server.shutdown();
}

#[test]
fn requests_responses_in_flight_and_queue_depth_follow_blocked_handlers() {
    common::init_logging();
    const WORKERS: usize = 2;
    let (server, release, entered) = holding_server("st-flight", WORKERS);
    let addr = server.local_addr().tcp().unwrap();

    let mut first = connect(addr);
    send(&mut first, b"a\nb\nc\nd\ne\n");
    assert_eq!(read_exactly(&mut first, 10), b"a\nb\nc\nd\ne\n");
    let stats = server.stats();
    assert_eq!((stats.requests, stats.responses), (5, 5), "{stats:#?}");
    assert_eq!(
        (stats.in_flight, stats.job_queue_depth),
        (0, 0),
        "{stats:#?}"
    );

    // Both workers blocked...
    let mut holders: Vec<_> = (0..WORKERS).map(|_| connect(addr)).collect();
    for h in &mut holders {
        send(h, b"hold\n");
    }
    let mut held = 0;
    while held < WORKERS {
        if entered.recv_timeout(WAIT_DEADLINE).expect("a handler call") == b"hold" {
            held += 1;
        }
    }
    let stats = server.stats();
    assert_eq!((stats.requests, stats.responses), (7, 5), "{stats:#?}");
    assert_eq!(
        (stats.in_flight, stats.job_queue_depth),
        (2, 0),
        "{stats:#?}"
    );

    // ...so three more requests wait in the queue.
    let mut waiting: Vec<_> = (0..3).map(|_| connect(addr)).collect();
    for (i, w) in waiting.iter_mut().enumerate() {
        send(w, format!("hold queued {i}\n").as_bytes());
    }
    let stats = wait_for_stats(&server, "three queued", |s| s.job_queue_depth == 3);
    assert_eq!((stats.requests, stats.responses), (10, 5), "{stats:#?}");
    assert_eq!(stats.in_flight, 5, "{stats:#?}");

    drop(release);
    for h in &mut holders {
        assert_eq!(read_exactly(h, 5), b"hold\n");
    }
    for (i, w) in waiting.iter_mut().enumerate() {
        let want = format!("hold queued {i}\n");
        assert_eq!(read_exactly(w, want.len()), want.as_bytes());
    }
    let stats = wait_for_stats(&server, "everything answered", |s| s.responses == 10);
    assert_eq!(
        (stats.in_flight, stats.job_queue_depth),
        (0, 0),
        "{stats:#?}"
    );
    drop((first, holders, waiting));
    let stats = all_closed(&server);
    assert_eq!(stats.replies_dropped, 0, "{stats:#?}");
    assert_eq!(stats.bytes_buffered, 0, "{stats:#?}");
    server.shutdown();
}

#[test]
fn protocol_errors_and_timeouts_count_the_connections_they_end() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .idle_timeout(Some(Duration::from_millis(800)))
        .thread_name("st-errs")
        .start(LineCodec::with_max_frame(8), common::echo())
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();

    let mut bad = connect(addr);
    round_trip(&mut bad, b"ok\n", b"ok\n");
    send(&mut bad, b"much too long\n");
    let rest = expect_clean_eof(&mut bad, "a line over the limit");
    assert!(rest.is_empty());
    drop(bad);
    let stats = wait_for_stats(&server, "the protocol error", |s| s.connections_closed == 1);
    assert_eq!(
        (stats.protocol_errors, stats.timeouts),
        (1, 0),
        "{stats:#?}"
    );

    let mut idle = connect(addr);
    let rest = expect_clean_eof(&mut idle, "an idle connection");
    assert!(rest.is_empty());
    drop(idle);
    let stats = wait_for_stats(&server, "the idle close", |s| s.connections_closed == 2);
    assert_eq!(
        (stats.protocol_errors, stats.timeouts),
        (1, 1),
        "{stats:#?}"
    );
    assert_eq!(stats.resets, 0, "{stats:#?}");
    server.shutdown();
}

/// A connection the server ends itself and whose peer then ignores the server's FIN is
/// closed at the end of the linger; that is still one connection ended by one cause.
#[test]
fn a_timed_out_connection_counts_one_timeout_even_if_the_peer_never_closes() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .idle_timeout(Some(Duration::from_millis(300)))
        .lingering_time(Duration::from_millis(300))
        .thread_name("st-idle1")
        .start(LineCodec::new(), common::echo())
        .expect("start the server");
    let mut idle = connect(server.local_addr().tcp().unwrap());
    let rest = expect_clean_eof(&mut idle, "an idle connection");
    assert!(rest.is_empty());
    // The client keeps its socket open: the server closes at the end of its linger.
    let stats = wait_for_stats(&server, "the connection closed", |s| {
        s.connections_closed == 1
    });
    assert_eq!(
        stats.timeouts, 1,
        "one idle connection closed, counted as {} timeouts: {stats:#?}",
        stats.timeouts
    );
    drop(idle);
    server.shutdown();
}

#[test]
fn a_protocol_error_is_not_also_a_timeout_when_the_peer_never_closes() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .lingering_time(Duration::from_millis(300))
        .thread_name("st-err1")
        .start(LineCodec::with_max_frame(8), common::echo())
        .expect("start the server");
    let mut bad = connect(server.local_addr().tcp().unwrap());
    send(&mut bad, b"much too long\n");
    let rest = expect_clean_eof(&mut bad, "a line over the limit");
    assert!(rest.is_empty());
    let stats = wait_for_stats(&server, "the connection closed", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.protocol_errors, 1, "{stats:#?}");
    assert_eq!(
        stats.timeouts, 0,
        "a connection ended by a protocol error also counted as a timeout: {stats:#?}"
    );
    drop(bad);
    server.shutdown();
}

#[test]
fn resets_and_dropped_replies_are_counted() {
    common::init_logging();
    let (server, release, entered) = holding_server("st-reset", 2);
    let addr = server.local_addr().tcp().unwrap();
    let mut witness = connect(addr);
    round_trip(&mut witness, b"w\n", b"w\n");

    // The client resets while its request is in a handler: the connection closes as a
    // reset, and the reply that comes later is dropped.
    let mut gone = connect(addr);
    send(&mut gone, b"hold me\n");
    assert_eq!(entered.recv_timeout(WAIT_DEADLINE).expect("handler"), b"w");
    assert_eq!(
        entered.recv_timeout(WAIT_DEADLINE).expect("handler"),
        b"hold me"
    );
    reset(gone);
    let stats = wait_for_stats(&server, "the reset", |s| s.connections_closed == 1);
    assert_eq!(stats.resets, 1, "{stats:#?}");
    assert_eq!(stats.in_flight, 1, "{stats:#?}");
    drop(release);
    let stats = wait_for_stats(&server, "the dropped reply", |s| s.replies_dropped == 1);
    assert_eq!(stats.in_flight, 0, "{stats:#?}");
    assert_eq!((stats.requests, stats.responses), (2, 1), "{stats:#?}");
    round_trip(&mut witness, b"still\n", b"still\n");
    drop(witness);
    let stats = all_closed(&server);
    assert_eq!(stats.resets, 1, "{stats:#?}");
    assert_eq!(stats.bytes_buffered, 0, "{stats:#?}");
    server.shutdown();
}

/// The line codec, telling the test about each request it decodes.
#[derive(Clone)]
struct ReportingLines {
    inner: LineCodec,
    decoded: Sender<Vec<u8>>,
}

impl Codec for ReportingLines {
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        let decoded = self.inner.decode(input)?;
        if let Some((line, _)) = &decoded {
            let _ = self.decoded.send(line.clone());
        }
        Ok(decoded)
    }

    fn encode(&mut self, response: Vec<u8>, output: &mut Output<'_>) -> AfterReply {
        self.inner.encode(response, output)
    }
}

/// A request decoded while the job queue is full waits on its connection. If the
/// connection then ends (here: an earlier request's handler panics), that request is never
/// answered, and the counters must not keep it in flight forever.
#[test]
fn in_flight_returns_to_zero_when_a_connection_ends_with_a_request_waiting_for_the_queue() {
    common::init_logging();
    let (decoded_tx, decoded) = unbounded::<Vec<u8>>();
    let (entered_tx, entered) = unbounded::<Vec<u8>>();
    let (release_hold, hold_gate) = bounded::<()>(0);
    let (release_boom, boom_gate) = bounded::<()>(0);
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .job_queue_capacity(1)
        // A full job queue is what this test is about: every batch goes to the pool.
        .adaptive_inline(None)
        .thread_name("st-stall")
        .start(
            ReportingLines {
                inner: LineCodec::new(),
                decoded: decoded_tx,
            },
            handler_fn(move |line: Vec<u8>, _ctx: &Context| {
                let _ = entered_tx.send(line.clone());
                if line == b"hold" {
                    let _ = hold_gate.recv_timeout(WAIT_DEADLINE);
                }
                if line == b"boom" {
                    let _ = boom_gate.recv_timeout(WAIT_DEADLINE);
                    panic!("boom");
                }
                line
            }),
        )
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();
    let next_decoded = || {
        decoded
            .recv_timeout(WAIT_DEADLINE)
            .expect("a decoded request")
    };
    let next_entered = || entered.recv_timeout(WAIT_DEADLINE).expect("a handler call");

    // Both workers busy: one holding, one about to panic.
    let mut holder = connect(addr);
    send(&mut holder, b"hold\n");
    assert_eq!(next_entered(), b"hold");
    let mut victim = connect(addr);
    send(&mut victim, b"boom\n");
    assert_eq!(next_entered(), b"boom");
    // The queue's one slot taken by another connection.
    let mut queued = connect(addr);
    send(&mut queued, b"queued\n");
    wait_for_stats(&server, "a request queued", |s| s.job_queue_depth == 1);
    // The victim's next request cannot be queued: it waits on the connection.
    while next_decoded() != b"queued" {}
    send(&mut victim, b"stalled\n");
    while next_decoded() != b"stalled" {}

    // The panic ends the victim's connection, with its stalled request never run.
    drop(release_boom);
    let (_, got) = read_until_end(&mut victim, "the panicking connection");
    assert_eq!(got, 0);
    drop(victim);
    assert_eq!(read_exactly(&mut queued, 7), b"queued\n");
    drop(release_hold);
    assert_eq!(read_exactly(&mut holder, 5), b"hold\n");
    drop((holder, queued));
    let stats = all_closed(&server);
    assert_eq!(stats.panics, 1, "{stats:#?}");
    assert_eq!(
        stats.in_flight, 0,
        "in_flight stuck with every connection closed: {stats:#?}"
    );
    // The stalled request was received (counted when decoded) and never run: skipped.
    assert_eq!(
        (stats.requests, stats.skipped),
        (stats.responses + stats.replies_dropped + stats.skipped, 1),
        "{stats:#?}"
    );
    server.shutdown();
}
