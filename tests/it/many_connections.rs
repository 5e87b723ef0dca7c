//! Hundreds of connections open at once, each with its own stream of round trips: every
//! reply is the one its connection asked for.

use crate::common;

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;

use crossbeam_channel::{bounded, RecvTimeoutError};
use reactor_pool::{handler_fn, Builder, Context, LineCodec};

use crate::common::{connect, read_exactly, read_to_eof, send, wait_for_stats, WAIT_DEADLINE};

const THREADS: usize = 50;
const CONNS_PER_THREAD: usize = 10;
const CONNECTIONS: usize = THREADS * CONNS_PER_THREAD;
const ROUNDS: usize = 20;

/// The handler's reply; the line codec adds the `\n`.
fn reply_to(request: &str) -> String {
    format!("ok {request}")
}

#[test]
fn five_hundred_concurrent_connections_times_twenty_round_trips() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(4)
        .thread_name("many")
        .start(
            LineCodec::new(),
            handler_fn(|request: Vec<u8>, _: &Context| {
                reply_to(&String::from_utf8(request).expect("utf-8")).into_bytes()
            }),
        )
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();

    let (connected_tx, connected_rx) = bounded::<()>(THREADS);
    let (go_tx, go_rx) = bounded::<()>(THREADS);
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let connected_tx = connected_tx.clone();
            let go_rx = go_rx.clone();
            thread::spawn(move || client_thread(t, addr, connected_tx, go_rx))
        })
        .collect();
    drop(connected_tx);

    // All connections are open at once before any round trip starts.
    for _ in 0..THREADS {
        connected_rx
            .recv_timeout(WAIT_DEADLINE)
            .expect("every client thread to connect");
    }
    let stats = wait_for_stats(&server, "every connection to be accepted", |s| {
        s.connections_accepted == CONNECTIONS as u64
    });
    assert_eq!(stats.connections_closed, 0, "{stats:#?}");
    for _ in 0..THREADS {
        go_tx.send(()).expect("client thread alive");
    }
    for (t, client) in clients.into_iter().enumerate() {
        if let Err(panic) = client.join() {
            eprintln!("client thread {t} failed");
            std::panic::resume_unwind(panic);
        }
    }

    let stats = wait_for_stats(&server, "every connection to close", |s| {
        s.connections_closed == CONNECTIONS as u64
    });
    assert_eq!(stats.requests, (CONNECTIONS * ROUNDS) as u64, "{stats:#?}");
    assert_eq!(stats.responses, (CONNECTIONS * ROUNDS) as u64, "{stats:#?}");
    assert_eq!(stats.resets, 0, "{stats:#?}");
    server.shutdown();
}

fn client_thread(
    t: usize,
    addr: SocketAddr,
    connected: crossbeam_channel::Sender<()>,
    go: crossbeam_channel::Receiver<()>,
) {
    let mut conns: Vec<(usize, TcpStream)> = (0..CONNS_PER_THREAD)
        .map(|k| {
            let i = t * CONNS_PER_THREAD + k;
            (i, connect(addr))
        })
        .collect();
    connected.send(()).expect("test alive");
    match go.recv_timeout(WAIT_DEADLINE) {
        Ok(()) => {}
        // The test failed elsewhere and dropped its sender; or it hung.
        Err(RecvTimeoutError::Disconnected) => return,
        Err(RecvTimeoutError::Timeout) => panic!("no go signal"),
    }
    for j in 0..ROUNDS {
        // Interleaved: every connection of this thread has a request in flight at once.
        for (i, conn) in conns.iter_mut() {
            send(conn, format!("conn-{i}-msg-{j}\n").as_bytes());
        }
        for (i, conn) in conns.iter_mut() {
            let expected = reply_to(&format!("conn-{i}-msg-{j}")) + "\n";
            let reply = read_exactly(conn, expected.len());
            assert_eq!(
                String::from_utf8_lossy(&reply),
                expected,
                "connection {i}, round {j}"
            );
        }
    }
    for (i, conn) in conns.iter_mut() {
        conn.shutdown(Shutdown::Write).expect("shutdown(Write)");
        let rest = read_to_eof(conn).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert!(
            rest.is_empty(),
            "connection {i}: bytes after the last reply"
        );
    }
}
