//! A reply that comes back after its connection closed is dropped, never delivered to the
//! connection that took over the same slot.

use crate::common;

use std::net::Shutdown;

use crossbeam_channel::{bounded, unbounded};
use reactor_pool::{handler_fn, Builder, Context, LineCodec};
use socket2::SockRef;

use crate::common::{connect, read_exactly, read_to_eof, send, wait_for_stats, WAIT_DEADLINE};

#[test]
fn late_reply_for_a_reset_connection_is_not_delivered_to_its_successor() {
    common::init_logging();
    let (entered_tx, entered_rx) = unbounded::<(Vec<u8>, u64)>();
    let (release_a_tx, release_a_rx) = bounded::<()>(1);
    let (release_b_tx, release_b_rx) = bounded::<()>(1);
    let server = Builder::bind("127.0.0.1:0")
        .workers(4)
        .thread_name("late")
        .start(
            LineCodec::new(),
            handler_fn(move |request: Vec<u8>, ctx: &Context| {
                let release = match &request[..] {
                    b"hold a" => &release_a_rx,
                    b"hold b" => &release_b_rx,
                    _ => {
                        let mut reply = b"echo ".to_vec();
                        reply.extend_from_slice(&request);
                        return reply;
                    }
                };
                entered_tx
                    .send((request.clone(), ctx.connection_id()))
                    .expect("test alive");
                let released = release.recv_timeout(WAIT_DEADLINE).is_ok();
                let mut reply = if released {
                    b"late reply to ".to_vec()
                } else {
                    b"never released: ".to_vec()
                };
                reply.extend_from_slice(&request);
                reply
            }),
        )
        .expect("start the server");

    // A's request (its sequence number 0) is held in the handler; then A resets.
    let mut a = connect(server.local_addr().tcp().unwrap());
    send(&mut a, b"hold a\n");
    let (held, a_id) = entered_rx.recv_timeout(WAIT_DEADLINE).expect("A's handler");
    assert_eq!(held, b"hold a");
    SockRef::from(&a)
        .set_linger(Some(std::time::Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(a); // RST
    let stats = wait_for_stats(&server, "the server to close A", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.resets, 1, "A's reset is counted: {stats:#?}");
    assert_eq!(
        stats.in_flight, 1,
        "A's request is still running: {stats:#?}"
    );

    // B takes A's place (the freed slot) and has its own request 0 in flight, so a late
    // reply misdelivered by slot alone would be taken for B's.
    let mut b = connect(server.local_addr().tcp().unwrap());
    send(&mut b, b"hold b\n");
    let (held, b_id) = entered_rx.recv_timeout(WAIT_DEADLINE).expect("B's handler");
    assert_eq!(held, b"hold b");
    assert_ne!(a_id, b_id);

    release_a_tx.send(()).expect("release A's handler");
    // The late reply is either dropped (right) or written somewhere (wrong).
    let stats = wait_for_stats(&server, "A's late reply to be dealt with", |s| {
        s.replies_dropped + s.responses >= 1
    });
    assert_eq!(
        stats.responses, 0,
        "A's late reply was written to another connection: {stats:#?}"
    );
    assert_eq!(stats.replies_dropped, 1, "{stats:#?}");

    release_b_tx.send(()).expect("release B's handler");
    let expected = b"late reply to hold b\n";
    let reply = read_exactly(&mut b, expected.len());
    assert_eq!(
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(expected),
        "B reads its own reply, not A's"
    );
    // One more round trip, then FIN: the stream holds exactly B's replies.
    send(&mut b, b"second\n");
    b.shutdown(Shutdown::Write).expect("shutdown(Write)");
    let rest = read_to_eof(&mut b).expect("clean EOF");
    assert_eq!(String::from_utf8_lossy(&rest), "echo second\n");

    let stats = wait_for_stats(&server, "B to close", |s| s.connections_closed == 2);
    assert_eq!(stats.replies_dropped, 1, "{stats:#?}");
    assert_eq!(stats.responses, 2, "{stats:#?}");
    drop(b);
    server.shutdown();
}
