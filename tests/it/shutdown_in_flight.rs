//! A graceful shutdown while requests are in flight: every request already received is
//! answered, each client then reads a clean EOF, and once `shutdown()` returns none of the
//! server's threads is left.

use crate::common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use reactor_pool::{handler_fn, Builder, Context, LineCodec};

use crate::common::{connect, read_to_eof, send, threads_named, wait_for_stats, wait_until};

/// Unique to this test: thread names are `{PREFIX}-worker-N`, `{PREFIX}-reactor-N`,
/// `{PREFIX}-standby-N`, `{PREFIX}-watchdog`, `{PREFIX}-acceptor` (15 bytes at most,
/// Linux's limit).
const PREFIX: &str = "sdn9";
const WORKERS: usize = 8;
const REACTORS: usize = 2;
const CLIENTS: usize = 8;
/// Requests each client pipelines before the shutdown.
const PER_CLIENT: usize = 2;
const HANDLER_TIME: Duration = Duration::from_millis(300);

#[test]
fn shutdown_answers_requests_in_flight_then_closes_and_joins_every_thread() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(WORKERS)
        .reactors(REACTORS)
        .thread_name(PREFIX)
        .start(
            LineCodec::new(),
            handler_fn(|request: Vec<u8>, _: &Context| {
                thread::sleep(HANDLER_TIME);
                let mut reply = b"done ".to_vec();
                reply.extend_from_slice(&request);
                reply
            }),
        )
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();
    let prefix = format!("{PREFIX}-");
    // A new thread names itself when it starts running: wait for all of them to show up.
    let expected_threads = WORKERS + 2 * REACTORS + 2;
    wait_until("the server's threads to be named", || {
        (threads_named(&prefix).len() == expected_threads).then_some(())
    });

    let clients: Vec<_> = (0..CLIENTS).map(|c| spawn_client(c, addr)).collect();
    // A connection with nothing in flight is closed cleanly too.
    let mut idle = connect(addr);
    let idle = thread::spawn(move || read_to_eof(&mut idle));
    let total = (CLIENTS * PER_CLIENT) as u64;
    let stats = wait_for_stats(&server, "every request to reach the pool", |s| {
        s.requests == total && s.connections_accepted == CLIENTS as u64 + 1
    });
    assert!(
        stats.responses < total,
        "requests must still be in flight when shutdown starts: {stats:#?}"
    );

    let started = Instant::now();
    server.shutdown();
    eprintln!("shutdown took {:?}", started.elapsed());

    for (c, client) in clients.into_iter().enumerate() {
        let everything = client.join().expect("client thread");
        let everything =
            everything.unwrap_or_else(|e| panic!("client {c}: expected replies then EOF, got {e}"));
        let expected: String = (0..PER_CLIENT)
            .map(|r| format!("done client {c} request {r}\n"))
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&everything),
            expected,
            "client {c}: every reply, then EOF"
        );
    }

    let idle = idle.join().expect("idle client thread");
    match idle {
        Ok(bytes) => assert!(bytes.is_empty(), "idle client got {bytes:?}"),
        Err(e) => panic!("idle client: expected a clean EOF, got {e}"),
    }

    // `shutdown()` joined the threads; a joined thread may linger in /proc for an instant
    // while the kernel finishes its exit, so allow a short grace period.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = threads_named(&prefix);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server threads still alive after shutdown returned: {left:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Connects, pipelines its requests, and reads until EOF (which only the shutdown brings).
fn spawn_client(c: usize, addr: SocketAddr) -> thread::JoinHandle<std::io::Result<Vec<u8>>> {
    let mut client = connect(addr);
    let requests: String = (0..PER_CLIENT)
        .map(|r| format!("client {c} request {r}\n"))
        .collect();
    send(&mut client, requests.as_bytes());
    thread::spawn(move || read_to_eof(&mut client))
}
