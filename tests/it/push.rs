//! Pushes (`Replies::pusher`): responses sent from another thread arrive in order, after
//! the replies the connection owed when they were made; a pusher's close comes after the
//! pushes before it; once the connection is gone pushes are refused with the response
//! handed back, and never reach a later connection in the same slot; a flood to a peer that
//! does not read is refused past the push limit with memory bounded, and what was accepted
//! all arrives, in order, once the peer reads.

use crate::common;

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{unbounded, Receiver, Sender};
use reactor_pool::{
    Builder, Context, Handler, LineCodec, PushError, Pusher, Replies, ServerHandle,
};

use crate::common::{
    assert_no_reply, connect, expect_clean_eof, read_exactly, send, wait_for_stats, wait_until,
    WAIT_DEADLINE,
};

/// What the handler shares with the test.
struct Shared {
    /// Every pusher a `sub` made, in order.
    pushers: Mutex<Vec<Pusher<Vec<u8>>>>,
    /// A `wait` says here that it runs, then waits on `release`.
    running: Sender<()>,
    release: Receiver<()>,
}

/// `sub` hands the connection's pusher to the test and answers `subscribed` (`sub and
/// wait` only once the test releases it); `wait` blocks until the test releases it, then
/// answers `waited`; anything else is echoed.
struct PushServer(Arc<Shared>);

impl Handler for PushServer {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    type Session = ();

    fn open(&self, _: &Context, _: &mut Replies<Vec<u8>>) {}

    fn call(&self, _: &mut (), line: Vec<u8>, _: &Context, replies: &mut Replies<Vec<u8>>) {
        match &line[..] {
            b"sub" | b"sub and wait" => {
                let pusher = replies.pusher();
                self.0.pushers.lock().unwrap().push(pusher);
                if line == b"sub and wait" {
                    let _ = self.0.running.send(());
                    let _ = self.0.release.recv_timeout(WAIT_DEADLINE);
                }
                replies.send(b"subscribed".to_vec());
            }
            b"wait" => {
                let _ = self.0.running.send(());
                let released = self.0.release.recv_timeout(WAIT_DEADLINE).is_ok();
                replies.send(if released {
                    b"waited".to_vec()
                } else {
                    b"timed out".to_vec()
                });
            }
            _ => replies.send(line),
        }
    }
}

struct Server {
    handle: ServerHandle,
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Receiver<()>,
    release: Sender<()>,
}

impl Server {
    /// The pusher of the `n`th `sub` (from 0), once it is made.
    fn pusher(&self, n: usize) -> Pusher<Vec<u8>> {
        wait_until(&format!("sub number {n}"), || {
            self.shared.pushers.lock().unwrap().get(n).cloned()
        })
    }
}

fn start(name: &str, configure: impl FnOnce(Builder) -> Builder) -> Server {
    common::init_logging();
    let (running_tx, running) = unbounded();
    let (release, release_rx) = unbounded();
    let shared = Arc::new(Shared {
        pushers: Mutex::default(),
        running: running_tx,
        release: release_rx,
    });
    let handle = configure(Builder::bind("127.0.0.1:0").workers(2).thread_name(name))
        .start(LineCodec::new(), PushServer(Arc::clone(&shared)))
        .expect("start");
    let addr = handle.local_addr().tcp().unwrap();
    Server {
        handle,
        addr,
        shared,
        running,
        release,
    }
}

/// Subscribes on a new connection and reads the reply; returns it with its pusher.
fn subscribe(server: &Server, n: usize) -> (TcpStream, Pusher<Vec<u8>>) {
    let mut client = connect(server.addr);
    send(&mut client, b"sub\n");
    let pusher = server.pusher(n);
    assert_eq!(read_exactly(&mut client, 11), b"subscribed\n");
    (client, pusher)
}

fn push(pusher: &Pusher<Vec<u8>>, message: &str) {
    pusher
        .push(message.as_bytes().to_vec())
        .unwrap_or_else(|e| panic!("push {message:?}: {e}"));
}

#[test]
fn pushes_arrive_in_order_after_the_reply_to_the_request_that_subscribed() {
    let server = start("pu-order", |b| b);
    let mut client = connect(server.addr);
    send(&mut client, b"sub and wait\n");
    // Pushed while the request that made the pusher still runs, before its reply exists.
    server
        .running
        .recv_timeout(WAIT_DEADLINE)
        .expect("the handler to run `sub and wait`");
    let pusher = server.pusher(0);
    let mut want = b"subscribed\n".to_vec();
    for i in 0..100 {
        push(&pusher, &format!("push {i}"));
        want.extend(format!("push {i}\n").into_bytes());
    }
    server.release.send(()).expect("release the handler");
    let got = read_exactly(&mut client, want.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
    // Requests after the pushes are answered after them.
    common::round_trip(&mut client, b"after\n", b"after\n");
    let stats = wait_for_stats(&server.handle, "the pushes counted", |s| s.pushes == 100);
    assert_eq!(
        (stats.requests, stats.responses, stats.pushes_refused),
        (2, 2, 0),
        "{stats:#?}"
    );
    assert_eq!(pusher.connection_id(), 1);
    drop(client);
    server.handle.shutdown();
}

#[test]
fn a_push_made_while_an_earlier_request_runs_is_written_after_its_reply() {
    let server = start("pu-running", |b| b);
    let (mut client, pusher) = subscribe(&server, 0);
    send(&mut client, b"wait\n");
    server
        .running
        .recv_timeout(WAIT_DEADLINE)
        .expect("the handler to run `wait`");
    push(&pusher, "pushed");
    server.release.send(()).expect("release the handler");
    assert_eq!(
        String::from_utf8_lossy(&read_exactly(&mut client, 14)),
        "waited\npushed\n"
    );
    common::round_trip(&mut client, b"after\n", b"after\n");
    drop(client);
    server.handle.shutdown();
}

#[test]
fn a_pushers_close_comes_after_the_pushes_made_before_it() {
    let server = start("pu-close", |b| b);
    let (mut client, pusher) = subscribe(&server, 0);
    push(&pusher, "one");
    push(&pusher, "two");
    pusher.close().expect("close the connection");
    assert_eq!(
        String::from_utf8_lossy(&expect_clean_eof(&mut client, "after the pusher's close")),
        "one\ntwo\n"
    );
    wait_until("the pusher to see its connection closed", || {
        pusher.is_closed().then_some(())
    });
    assert!(matches!(
        pusher.push(b"late".to_vec()),
        Err(PushError::Closed(_))
    ));
    assert!(matches!(pusher.close(), Err(PushError::Closed(()))));
    drop(client);
    server.handle.shutdown();
}

#[test]
fn once_the_peer_has_gone_a_push_is_refused_and_its_response_handed_back() {
    let server = start("pu-gone", |b| b);
    let (client, pusher) = subscribe(&server, 0);
    push(&pusher, "before");
    drop(client);
    wait_until("the pusher to see its connection closed", || {
        pusher.is_closed().then_some(())
    });
    match pusher.push(b"late".to_vec()) {
        Err(PushError::Closed(response)) => assert_eq!(response, b"late"),
        other => panic!("a push to a closed connection: {other:?}"),
    }
    server.handle.shutdown();
}

#[test]
fn a_pusher_of_a_closed_connection_never_reaches_the_next_one_in_its_slot() {
    // One reactor: the next connection takes the slot the first one left.
    let server = start("pu-slot", |b| b.reactors(1));
    let (first, pusher) = subscribe(&server, 0);
    drop(first);
    wait_until("the pusher to see its connection closed", || {
        pusher.is_closed().then_some(())
    });
    wait_for_stats(&server.handle, "the first connection gone", |s| {
        s.connections_closed == 1
    });
    let mut next = connect(server.addr);
    common::round_trip(&mut next, b"hello\n", b"hello\n");
    let pushed = pusher.push(b"for the first connection".to_vec());
    // Whatever the pusher said, the next connection gets its own replies and nothing else.
    common::round_trip(&mut next, b"again\n", b"again\n");
    assert_no_reply(&mut next, "the next connection in the slot");
    match pushed {
        Err(PushError::Closed(response)) => assert_eq!(response, b"for the first connection"),
        other => panic!("a push to a closed connection: {other:?}"),
    }
    drop(next);
    server.handle.shutdown();
}

/// The size of each pushed line, its `\n` included.
const PUSH: usize = 64 * 1024;

/// Push `i`: its number, then filler that depends on it, `PUSH` bytes with the `\n`.
fn numbered(i: usize) -> Vec<u8> {
    let mut line = format!("push {i:06} ").into_bytes();
    let filler = (line.len()..PUSH - 1).map(|j| b'a' + ((i + j) % 26) as u8);
    line.extend(filler);
    line
}

#[test]
fn a_push_flood_to_a_peer_that_does_not_read_is_refused_with_memory_bounded_and_then_delivered() {
    const HIGH_WATER: usize = 64 * 1024;
    const LIMIT: usize = 4;
    let server = start("pu-flood", |b| {
        b.output_high_water(HIGH_WATER).push_limit(LIMIT)
    });
    let mut client = common::connect_with_recv_buffer(server.addr, 4096);
    send(&mut client, b"sub\n");
    let pusher = server.pusher(0);
    assert_eq!(read_exactly(&mut client, 11), b"subscribed\n");
    // What a connection may hold: the mark, the push that crossed it, and a little.
    let bound = (HIGH_WATER + 2 * PUSH) as u64;
    let mut accepted = 0;
    let mut peak = 0;
    loop {
        assert!(
            accepted < 1000,
            "{accepted} pushes of {PUSH} bytes accepted and none refused (buffered now: {})",
            server.handle.stats().bytes_buffered
        );
        match pusher.push(numbered(accepted)) {
            Ok(()) => accepted += 1,
            Err(PushError::Full(response)) => {
                assert_eq!(response, numbered(accepted), "the refused push handed back");
                // Refused for good when pushes wait that the reactor does not encode (the
                // output is at its mark, the socket full); not when this thread merely
                // outran the reactor, which then encodes every push accepted.
                let encoded = server.handle.stats().pushes;
                std::thread::sleep(common::NO_REPLY_WAIT);
                let now = server.handle.stats().pushes;
                if now == encoded && now < accepted as u64 {
                    break;
                }
            }
            Err(e) => panic!("push {accepted}: {e}"),
        }
        peak = peak.max(server.handle.stats().bytes_buffered);
        assert!(
            peak <= bound,
            "{peak} bytes buffered after {accepted} pushes (bound {bound})"
        );
    }
    let stats = server.handle.stats();
    assert!(stats.pushes_refused >= 1, "{stats:#?}");
    assert!(
        stats.bytes_buffered <= bound,
        "{} bytes buffered at the refusal (bound {bound})",
        stats.bytes_buffered
    );
    // Now the peer reads: every push accepted, in order, intact; nothing else.
    for i in 0..accepted {
        let got = read_exactly(&mut client, PUSH);
        let mut want = numbered(i);
        want.push(b'\n');
        common::assert_same_bytes(&got, &want, &format!("push {i} of {accepted}"));
    }
    common::round_trip(&mut client, b"end\n", b"end\n");
    let stats = wait_for_stats(&server.handle, "every push encoded", |s| {
        s.pushes == accepted as u64
    });
    assert_eq!(stats.resets + stats.timeouts, 0, "{stats:#?}");
    drop(client);
    server.handle.shutdown();
}
