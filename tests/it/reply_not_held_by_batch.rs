//! Regression: a fast reply never waits for the slow requests behind it.
//!
//! A connection's pipelined requests leave for the pool as one batch, and one worker runs
//! them one after another. The worker posted the batch's answers only when its last call
//! returned, so the reply to a request that was answered at once waited, unwritten, for every
//! slower request behind it in the batch: `fast\nslow\n` got `fast` only when `slow` was done.
//!
//! The connection is warmed first (twenty round trips) so the reactor decodes deep ahead, and
//! the requests are sent in one write, so they are read, decoded and handed on together. A
//! `slow` request blocks until the test releases it; the test looks for the earlier reply with
//! a read timeout while `slow` is still blocked, then releases it either way, so nothing hangs.

use crate::common;

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};
use reactor_pool::{handler_fn, Builder, Context, LineCodec, ServerHandle};

use crate::common::{
    assert_no_reply, connect, read_exactly, round_trip, send, IO_TIMEOUT, WAIT_DEADLINE,
};

/// How long the earlier reply may take while `slow` is blocked. Only a reply held back hits
/// it (a fixed server writes it within milliseconds, even on a loaded machine).
const FAST_REPLY_WAIT: Duration = Duration::from_secs(5);

/// An echo server where `slow` blocks until the test releases it.
struct Fixture {
    /// Dropped first: a `slow` still blocked returns at once, so the server's drop does not
    /// wait for it.
    release: Sender<()>,
    entered: Receiver<()>,
    server: ServerHandle,
}

impl Fixture {
    fn start(name: &str) -> Fixture {
        common::init_logging();
        let (entered_tx, entered) = unbounded();
        let (release, gate) = unbounded::<()>();
        let server = Builder::bind("127.0.0.1:0")
            .workers(2)
            .reactors(1)
            .thread_name(name)
            .start(
                LineCodec::new(),
                handler_fn(move |line: Vec<u8>, _: &Context| {
                    if line == b"slow" {
                        let _ = entered_tx.send(());
                        let _ = gate.recv_timeout(WAIT_DEADLINE);
                    }
                    line
                }),
            )
            .expect("start the server");
        Fixture {
            release,
            entered,
            server,
        }
    }

    /// A connection warmed by twenty round trips, so the reactor decodes deep ahead.
    fn warm_client(&self) -> TcpStream {
        let mut client = connect(self.server.local_addr().tcp().unwrap());
        for i in 0..20 {
            let line = format!("warm {i}\n");
            round_trip(&mut client, line.as_bytes(), line.as_bytes());
        }
        client
    }

    /// Waits until `slow` is blocked in the handler.
    fn wait_slow_running(&self) {
        self.entered
            .recv_timeout(WAIT_DEADLINE)
            .expect("`slow` running in the handler");
    }

    fn release_slow(&self) {
        self.release.send(()).expect("release `slow`");
    }
}

/// Reads up to `n` bytes within `wait`: returns what arrived, and what went wrong if that
/// is fewer than `n` (a timeout, EOF, an error). Restores the normal read timeout.
fn read_within(stream: &mut TcpStream, n: usize, wait: Duration) -> (Vec<u8>, Option<String>) {
    stream
        .set_read_timeout(Some(wait))
        .expect("set_read_timeout");
    let mut buf = vec![0u8; n];
    let mut got = 0;
    let mut failed = None;
    while got < n {
        match stream.read(&mut buf[got..]) {
            Ok(0) => failed = Some("EOF".to_owned()),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                failed = Some(format!("nothing within {wait:?}"))
            }
            Err(e) => failed = Some(e.to_string()),
        }
        if failed.is_some() {
            break;
        }
    }
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    buf.truncate(got);
    let failed = failed.map(|why| {
        format!(
            "{why} after {got} of {n} bytes ({:?})",
            String::from_utf8_lossy(&buf)
        )
    });
    (buf, failed)
}

/// Sends `requests` in one write on a warm connection, with `slow` among them. While `slow`
/// is blocked, reads `before` (the replies to the requests ahead of it) within
/// [`FAST_REPLY_WAIT`] and checks nothing else came; then releases `slow` and reads the rest
/// of `all`. Fails if the replies ahead of `slow` did not all come before the release.
fn replies_ahead_of_slow_come_before_it_returns(
    name: &str,
    requests: &str,
    before: &str,
    all: &str,
) {
    let fx = Fixture::start(name);
    let mut client = fx.warm_client();
    send(&mut client, requests.as_bytes());
    fx.wait_slow_running();
    let (early, failed) = read_within(&mut client, before.len(), FAST_REPLY_WAIT);
    if failed.is_none() {
        // What follows `slow` runs after it returns, and its replies come after `slow`'s.
        assert_no_reply(
            &mut client,
            "a reply after `slow`'s while `slow` is blocked",
        );
    }
    fx.release_slow();
    let late = read_exactly(&mut client, all.len() - early.len());
    let (early, late) = (
        String::from_utf8_lossy(&early).into_owned(),
        String::from_utf8_lossy(&late).into_owned(),
    );
    if let Some(why) = failed {
        panic!(
            "{before:?} was held back by the slow request behind it in its batch: while `slow` \
             was blocked the client read {early:?} ({why}); only after `slow` was released did \
             it read {late:?}"
        );
    }
    assert_eq!(
        early, before,
        "the replies ahead of `slow`, before it returns"
    );
    assert_eq!(format!("{early}{late}"), all, "every reply, in order");
}

#[test]
fn a_fast_reply_never_waits_for_the_slow_request_behind_it() {
    replies_ahead_of_slow_come_before_it_returns(
        "rnh-two",
        "fast\nslow\n",
        "fast\n",
        "fast\nslow\n",
    );
}

#[test]
fn a_fast_reply_before_a_slow_request_arrives_first_and_the_one_after_waits_its_turn() {
    replies_ahead_of_slow_come_before_it_returns(
        "rnh-three",
        "a\nslow\nb\n",
        "a\n",
        "a\nslow\nb\n",
    );
}
