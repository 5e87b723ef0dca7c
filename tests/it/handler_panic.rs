//! A handler that panics: the panic is caught on the worker, that connection is closed and
//! counted, and the pool keeps its size; every other connection carries on.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use reactor_pool::{handler_fn, Builder, Context, LineCodec, ServerHandle};

use crate::common::{
    connect, read_exactly, read_until_end, round_trip, send, wait_for_stats, WAIT_DEADLINE,
};

const WORKERS: usize = 2;

/// A line server whose handler panics on `panic`, panics on `panic together` once every
/// worker is in such a call, sleeps on `slow`, echoes the rest, and records how many calls
/// ran at once.
fn server(name: &str) -> (ServerHandle, Arc<AtomicUsize>) {
    let together = AtomicUsize::new(0);
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let most_seen = Arc::clone(&most);
    let server = Builder::bind("127.0.0.1:0")
        .workers(WORKERS)
        .thread_name(name)
        .start(
            LineCodec::new(),
            handler_fn(move |line: Vec<u8>, _ctx: &Context| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                if line == b"panic together" {
                    together.fetch_add(1, Ordering::SeqCst);
                    let deadline = Instant::now() + WAIT_DEADLINE;
                    while together.load(Ordering::SeqCst) < WORKERS && Instant::now() < deadline {
                        thread::sleep(Duration::from_millis(1));
                    }
                }
                if line.starts_with(b"panic") {
                    running.fetch_sub(1, Ordering::SeqCst);
                    panic!("the handler was asked to panic");
                }
                if line.starts_with(b"slow") {
                    thread::sleep(Duration::from_millis(100));
                }
                running.fetch_sub(1, Ordering::SeqCst);
                line
            }),
        )
        .expect("start the server");
    (server, most_seen)
}

#[test]
fn a_panicking_handler_closes_only_its_connection() {
    common::init_logging();
    let (server, _) = server("panic-one");
    let addr = server.local_addr().tcp().unwrap();
    let mut bystanders: Vec<_> = (0..3).map(|_| connect(addr)).collect();
    for (i, b) in bystanders.iter_mut().enumerate() {
        let msg = format!("before {i}\n");
        round_trip(b, msg.as_bytes(), msg.as_bytes());
    }
    // One bystander has a request in a handler while the panic happens.
    send(&mut bystanders[0], b"slow in flight\n");

    // Replies owed before the panicking request are still written; then the connection
    // ends (the request after it is never answered).
    let mut victim = connect(addr);
    round_trip(&mut victim, b"fine\n", b"fine\n");
    send(&mut victim, b"owed\npanic\nnever answered\n");
    assert_eq!(read_exactly(&mut victim, 5), b"owed\n");
    let (_, extra) = read_until_end(&mut victim, "the panicking connection");
    assert_eq!(extra, 0, "bytes after the owed reply");
    let stats = wait_for_stats(&server, "the panic counted", |s| s.panics == 1);
    assert_eq!(stats.panics, 1, "{stats:#?}");
    drop(victim);
    wait_for_stats(&server, "the panicking connection closed", |s| {
        s.connections_closed == 1
    });

    assert_eq!(read_exactly(&mut bystanders[0], 15), b"slow in flight\n");
    for (i, b) in bystanders.iter_mut().enumerate() {
        for j in 0..3 {
            let msg = format!("after {i}.{j}\n");
            round_trip(b, msg.as_bytes(), msg.as_bytes());
        }
    }
    let stats = server.stats();
    assert_eq!(stats.panics, 1, "{stats:#?}");
    assert_eq!(stats.connections_open, 3, "{stats:#?}");
    assert_eq!(stats.connections_closed, 1, "{stats:#?}");
    drop(bystanders);
    wait_for_stats(&server, "all closed", |s| s.connections_open == 0);
    server.shutdown();
}

#[test]
fn after_panics_on_every_worker_the_pool_still_serves_in_parallel() {
    common::init_logging();
    let (server, most) = server("panic-pool");
    let addr = server.local_addr().tcp().unwrap();
    // Every worker panics (each waits in the handler until all are there), one connection
    // each, and then one more.
    let mut victims: Vec<_> = (0..WORKERS).map(|_| connect(addr)).collect();
    for victim in &mut victims {
        send(victim, b"panic together\n");
    }
    for (i, victim) in victims.iter_mut().enumerate() {
        let (_, got) = read_until_end(victim, "a panicking connection");
        assert_eq!(got, 0, "victim {i} got bytes");
    }
    let mut victim = connect(addr);
    send(&mut victim, b"panic\n");
    let (_, got) = read_until_end(&mut victim, "a panicking connection");
    assert_eq!(got, 0, "the last victim got bytes");
    const PANICS: u64 = WORKERS as u64 + 1;
    wait_for_stats(&server, "the panics counted", |s| s.panics == PANICS);
    drop((victims, victim));
    assert_eq!(
        most.load(Ordering::SeqCst),
        WORKERS,
        "the panicking calls ran on every worker at once"
    );
    most.store(0, Ordering::SeqCst);

    // 20 concurrent slow requests from 20 connections: all answered, WORKERS at a time.
    let mut clients: Vec<_> = (0..20).map(|_| connect(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        send(c, format!("slow {i}\n").as_bytes());
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let want = format!("slow {i}\n");
        assert_eq!(
            String::from_utf8_lossy(&read_exactly(c, want.len())),
            want,
            "client {i}"
        );
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        WORKERS,
        "handler calls running at once after the panics"
    );
    let stats = server.stats();
    assert_eq!(stats.panics, PANICS, "{stats:#?}");
    drop(clients);
    let stats = wait_for_stats(&server, "all closed", |s| s.connections_open == 0);
    assert_eq!(stats.in_flight, 0, "{stats:#?}");
    server.shutdown();
}
