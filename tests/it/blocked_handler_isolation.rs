//! A handler that blocks on one connection holds only its worker: other connections keep
//! getting their replies. The blocked handlers wait on the test's signal, so nothing here
//! depends on timing.

use crate::common;

use std::net::Shutdown;

use crossbeam_channel::{bounded, unbounded};
use reactor_pool::{handler_fn, Builder, Context, LineCodec};

use crate::common::{connect, read_exactly, read_to_eof, send, wait_for_stats, WAIT_DEADLINE};

const WORKERS: usize = 4;
/// Every worker but one is blocked.
const BLOCKED: usize = WORKERS - 1;

#[test]
fn blocked_handlers_do_not_delay_another_connection() {
    common::init_logging();
    let (entered_tx, entered_rx) = unbounded::<u64>();
    let (release_tx, release_rx) = bounded::<()>(BLOCKED);
    let server = Builder::bind("127.0.0.1:0")
        .workers(WORKERS)
        .thread_name("blk")
        .start(
            LineCodec::new(),
            handler_fn(move |request: Vec<u8>, ctx: &Context| {
                if request == b"block" {
                    entered_tx.send(ctx.connection_id()).expect("test alive");
                    // Bounded so a failing test cannot leave the worker stuck forever.
                    return match release_rx.recv_timeout(WAIT_DEADLINE) {
                        Ok(()) => b"released".to_vec(),
                        Err(_) => b"never released".to_vec(),
                    };
                }
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&request);
                reply
            }),
        )
        .expect("start the server");

    let mut blocked: Vec<_> = (0..BLOCKED)
        .map(|_| {
            let mut client = connect(server.local_addr().tcp().unwrap());
            send(&mut client, b"block\n");
            client
        })
        .collect();
    let mut ids = Vec::new();
    for _ in 0..BLOCKED {
        ids.push(
            entered_rx
                .recv_timeout(WAIT_DEADLINE)
                .expect("a blocking handler to start"),
        );
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), BLOCKED, "one blocked handler per connection");

    // BLOCKED handlers are running and will not return until released; another connection
    // still gets every reply from the one free worker.
    let mut free = connect(server.local_addr().tcp().unwrap());
    for i in 0..20 {
        let request = format!("ping {i}\n");
        send(&mut free, request.as_bytes());
        let expected = format!("echo:ping {i}\n");
        assert_eq!(
            String::from_utf8_lossy(&read_exactly(&mut free, expected.len())),
            expected
        );
    }
    let stats = server.stats();
    assert_eq!(
        stats.in_flight, BLOCKED as u64,
        "the blocked requests are still in flight: {stats:#?}"
    );

    for _ in 0..BLOCKED {
        release_tx.send(()).expect("release a handler");
    }
    for (i, client) in blocked.iter_mut().enumerate() {
        assert_eq!(
            String::from_utf8_lossy(&read_exactly(client, b"released\n".len())),
            "released\n",
            "reply to blocked client {i}"
        );
        client.shutdown(Shutdown::Write).expect("shutdown(Write)");
        assert_eq!(read_to_eof(client).expect("clean EOF"), b"");
    }
    free.shutdown(Shutdown::Write).expect("shutdown(Write)");
    assert_eq!(read_to_eof(&mut free).expect("clean EOF"), b"");
    wait_for_stats(&server, "every connection to close", |s| {
        s.connections_closed == BLOCKED as u64 + 1
    });
    drop(blocked);
    drop(free);
    server.shutdown();
}
