//! `Builder::adaptive_inline`: a fast handler runs on the reactor that read its request (no
//! hand-off to a worker); a handler that blocks there is taken over (the reactor's standby
//! runs the reactor on within a few milliseconds, so the reactor's other connections are
//! served meanwhile), and from then on its batches go to the pool.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded};
use reactor_pool::{handler_fn, Builder, Context, LineCodec};

use crate::common::{self, connect, read_exactly, send, WAIT_DEADLINE};

/// The name of the thread a handler call ran on.
fn this_thread() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

/// Which threads answered 20 pings on one connection of a one-reactor server.
/// Returns the thread of each call, and `Stats::batches_inline` and `inline_overruns`.
fn threads_of_twenty_pings(prefix: &str, builder: Builder) -> (Vec<String>, u64, u64) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let server = builder
        .reactors(1)
        .workers(2)
        .thread_name(prefix)
        .start(
            LineCodec::new(),
            handler_fn(move |line: Vec<u8>, _: &Context| {
                record.lock().unwrap().push(this_thread());
                line
            }),
        )
        .expect("start the server");
    let mut client = connect(server.local_addr().tcp().unwrap());
    for _ in 0..20 {
        send(&mut client, b"ping\n");
        assert_eq!(read_exactly(&mut client, 5), b"ping\n");
    }
    let stats = server.stats();
    drop(client);
    server.shutdown();
    let threads = seen.lock().unwrap().clone();
    (threads, stats.batches_inline, stats.inline_overruns)
}

/// A budget no call here overruns, however loaded the machine: only a take-over (a call
/// that held its reactor past 1 ms, say because its thread was preempted) sends batches
/// to the pool.
const GENEROUS: Duration = Duration::from_secs(1);

#[test]
fn a_fast_handler_runs_on_the_reactor_that_read_its_request() {
    common::init_logging();
    let (threads, inline, overruns) = threads_of_twenty_pings(
        "ai-fast",
        Builder::bind("127.0.0.1:0").adaptive_inline(Some(GENEROUS)),
    );
    let on_workers = threads.iter().filter(|t| t.contains("-worker-")).count();
    assert_eq!(
        threads.first().map(String::as_str),
        Some("ai-fast-reactor-0"),
        "the first call runs on the reactor: {threads:?}"
    );
    assert_eq!(
        inline,
        (20 - on_workers) as u64,
        "Stats::batches_inline: {threads:?}"
    );
    if overruns == 0 {
        // Nothing was taken over (no call was preempted for a millisecond): every call ran
        // on the reactor.
        assert_eq!(on_workers, 0, "{threads:?}");
    }
}

#[test]
fn with_adaptive_inline_off_every_call_runs_on_a_worker() {
    common::init_logging();
    let (threads, inline, _) =
        threads_of_twenty_pings("ai-off", Builder::bind("127.0.0.1:0").adaptive_inline(None));
    assert!(
        threads.iter().all(|t| t.starts_with("ai-off-worker-")),
        "the threads that ran the calls: {threads:?}"
    );
    assert_eq!(inline, 0, "Stats::batches_inline");
}

/// A handler that proved fast, then blocks on the reactor: the reactor's other connection is
/// served while it blocks (the standby took the reactor over), and the blocked call's reply
/// comes when it returns.
#[test]
fn a_call_that_blocks_on_a_reactor_does_not_stall_its_other_connections() {
    common::init_logging();
    let (release, gate) = bounded::<()>(0);
    let (entered_tx, entered) = unbounded::<(Vec<u8>, String)>();
    let server = Builder::bind("127.0.0.1:0")
        .reactors(1)
        .workers(2)
        .adaptive_inline(Some(GENEROUS))
        .thread_name("ai-block")
        .start(
            LineCodec::new(),
            handler_fn(move |line: Vec<u8>, _: &Context| {
                let _ = entered_tx.send((line.clone(), this_thread()));
                if line == b"block" {
                    let _ = gate.recv_timeout(WAIT_DEADLINE);
                }
                line
            }),
        )
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();
    let mut blocked = connect(addr);
    let mut other = connect(addr);
    // Proven fast on the reactor first (a call preempted past 1 ms on a loaded machine is
    // taken over, and the next ones go to the pool for a cool-down: warm up until one runs
    // on the reactor again).
    let next = || entered.recv_timeout(WAIT_DEADLINE).expect("a handler call");
    // The reactor runs on its own thread, or on its standby after a take-over.
    let on_the_reactor =
        |thread: &str| thread == "ai-block-reactor-0" || thread == "ai-block-standby-0";
    let mut warm = 0;
    loop {
        warm += 1;
        assert!(warm <= 1000, "no call ran on the reactor in 1,000 tries");
        send(&mut other, b"warm\n");
        assert_eq!(read_exactly(&mut other, 5), b"warm\n");
        if on_the_reactor(&next().1) {
            break;
        }
    }

    send(&mut blocked, b"block\n");
    let (line, thread) = next();
    assert_eq!(line, b"block");
    assert!(on_the_reactor(&thread), "block ran on {thread}");
    // The thread that ran `block` is still in the handler: the other connection is served.
    for _ in 0..10 {
        send(&mut other, b"ping\n");
        assert_eq!(read_exactly(&mut other, 5), b"ping\n");
    }
    let stats = server.stats();
    assert!(stats.inline_overruns >= 1, "{stats:#?}");
    assert_eq!(stats.requests - stats.responses, 1, "{stats:#?}");
    drop(release);
    assert_eq!(read_exactly(&mut blocked, 6), b"block\n");
    drop((blocked, other));
    server.shutdown();
}
