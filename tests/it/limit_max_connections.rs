//! `max_connections(N)`: N clients are served, the next ones wait in the listen backlog
//! (connected by the kernel, never read by the server), and each close admits one waiter.

use crate::common;

use std::net::TcpStream;

use reactor_pool::{Builder, RawCodec};

use crate::common::{assert_no_reply, connect, round_trip, send, wait_for_stats};

const MAX: usize = 4;

#[test]
fn connections_over_the_limit_wait_in_the_backlog_until_one_closes() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .max_connections(MAX)
        .thread_name("lim")
        .start(RawCodec::new(), common::echo())
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();

    let mut served: Vec<TcpStream> = (0..MAX).map(|_| connect(addr)).collect();
    for (i, client) in served.iter_mut().enumerate() {
        let msg = format!("hello from {i}");
        round_trip(client, msg.as_bytes(), msg.as_bytes());
    }
    wait_for_stats(&server, "the first N accepted", |s| {
        s.connections_accepted == MAX as u64
    });

    // Two more: the kernel completes their handshakes, the server does not accept them.
    let mut waiting: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
    send(&mut waiting[0], b"first waiter");
    send(&mut waiting[1], b"second waiter");
    assert_no_reply(&mut waiting[0], "a connection over the limit");
    let stats = server.stats();
    assert_eq!(stats.connections_accepted, MAX as u64, "{stats:#?}");
    assert_eq!(stats.connections_open, MAX as u64, "{stats:#?}");

    // The N already open keep working at the limit.
    for (i, client) in served.iter_mut().enumerate() {
        let msg = format!("still served {i}");
        round_trip(client, msg.as_bytes(), msg.as_bytes());
    }

    // One closes: exactly one waiter (the first in the backlog) is accepted and answered.
    drop(served.remove(0));
    let mut first = waiting.remove(0);
    round_trip(&mut first, b"", b"first waiter");
    round_trip(&mut first, b" again", b" again");
    let stats = wait_for_stats(&server, "the first waiter accepted", |s| {
        s.connections_accepted == MAX as u64 + 1 && s.connections_closed == 1
    });
    assert_eq!(stats.connections_open, MAX as u64, "{stats:#?}");
    assert_no_reply(&mut waiting[0], "the second waiter while N are open again");
    assert_eq!(server.stats().connections_accepted, MAX as u64 + 1);

    // Another closes: the second waiter gets its turn.
    drop(first);
    round_trip(&mut waiting[0], b"", b"second waiter");
    let stats = wait_for_stats(&server, "the second waiter accepted", |s| {
        s.connections_accepted == MAX as u64 + 2 && s.connections_closed == 2
    });
    assert_eq!(stats.connections_open, MAX as u64, "{stats:#?}");

    drop(waiting);
    drop(served);
    let stats = wait_for_stats(&server, "every connection closed", |s| {
        s.connections_open == 0
    });
    assert_eq!(stats.connections_accepted, MAX as u64 + 2, "{stats:#?}");
    assert_eq!(stats.accept_errors, 0, "{stats:#?}");
    server.shutdown();
}
