//! Regression: a graceful shutdown serves every request it has received.
//!
//! With one worker and a job queue of one, a blocked handler fills the pool: one request runs,
//! the next waits in the queue, and the connections behind it hold their requests as work the
//! full queue refused (stalled). The shutdown cut each connection after the requests it had
//! received, but took the stalled work back as never handed on: those clients, whose requests
//! the server had read, got a clean EOF and no reply.
//!
//! Determinism: the blocked handler is released only once the reactor has begun the shutdown
//! (an idle observer connection, served before, reads its EOF: with one reactor, that reactor
//! has then gone over every connection), so the shutdown certainly finds the pool full.

use crate::common;

use std::io::Read;
use std::net::TcpStream;
use std::thread;

use crossbeam_channel::{bounded, unbounded};
use reactor_pool::{handler_fn, Builder, Context, LineCodec};

use crate::common::{connect, expect_clean_eof, round_trip, send, wait_for_stats, WAIT_DEADLINE};

const CLIENTS: usize = 4;

#[test]
fn a_graceful_shutdown_serves_every_request_it_has_received() {
    common::init_logging();
    let (entered_tx, entered) = unbounded();
    let (release, gate) = bounded::<()>(0);
    let server = Builder::bind("127.0.0.1:0")
        .workers(1)
        .reactors(1)
        .job_queue_capacity(1)
        // Requests waiting for room in the job queue are what this test is about: every
        // batch goes to the pool.
        .adaptive_inline(None)
        .thread_name("ssr")
        .start(
            LineCodec::new(),
            handler_fn(move |line: Vec<u8>, _: &Context| {
                if line == b"client 0" {
                    let _ = entered_tx.send(());
                    // Until the test drops `release`.
                    let _ = gate.recv_timeout(WAIT_DEADLINE);
                }
                line
            }),
        )
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();
    let stats = server.stats_reader();

    // Served before the pool fills; idle at the shutdown, it sees its EOF at once.
    let mut observer = connect(addr);
    round_trip(&mut observer, b"observer\n", b"observer\n");

    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(addr)).collect();
    send(&mut clients[0], b"client 0\n");
    entered
        .recv_timeout(WAIT_DEADLINE)
        .expect("client 0's request blocking the only worker");
    for (i, client) in clients.iter_mut().enumerate().skip(1) {
        // Once the write returns, on loopback the line is in the server's receive buffer.
        send(client, format!("client {i}\n").as_bytes());
    }
    let before = wait_for_stats(&server, "every connection accepted, the queue full", |s| {
        s.connections_accepted == CLIENTS as u64 + 1 && s.job_queue_depth == 1
    });
    eprintln!("before the shutdown: {before:#?}");

    let stopper = thread::spawn(move || server.shutdown());
    let rest = expect_clean_eof(&mut observer, "the idle observer at the shutdown");
    assert!(rest.is_empty(), "the observer got {rest:?}");
    drop(observer);
    // The reactor has begun the shutdown: now the handler may finish.
    drop(release);

    let outcomes: Vec<String> = clients
        .into_iter()
        .map(|mut client| {
            let mut got = Vec::new();
            match client.read_to_end(&mut got) {
                Ok(_) => format!("{:?} then EOF", String::from_utf8_lossy(&got)),
                Err(e) => format!("{:?} then {e}", String::from_utf8_lossy(&got)),
            }
        })
        .collect();
    stopper.join().expect("shutdown thread");
    let after = stats.stats();
    eprintln!("after the shutdown: {after:#?}");
    let want: Vec<String> = (0..CLIENTS)
        .map(|i| format!("{:?} then EOF", format!("client {i}\n")))
        .collect();
    assert_eq!(
        outcomes, want,
        "every request the server received before its shutdown gets its reply, then a clean \
         EOF (replies_dropped {}, requests {}, responses {})",
        after.replies_dropped, after.requests, after.responses
    );
}
