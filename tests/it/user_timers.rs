//! User timers: a pusher's one-shot and periodic timers deliver to its connection (the
//! periodic one stops when the connection ends); the server's `after` and `every` run;
//! a cancelled timer never fires; a panicking timer is counted and the rest still fire;
//! a pending timer does not hold the shutdown, and the timer thread goes with the server.

use crate::common;

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use reactor_pool::{Builder, Context, Handler, LineCodec, Replies, ServerHandle};

use crate::common::{
    connect, read_exactly, send, threads_named, wait_for_stats, wait_reader, wait_until,
    WAIT_DEADLINE,
};

/// `later` answers `scheduled` and pushes `later` 50 ms after; `tick` answers `ticking`
/// and pushes `tick N` every 20 ms; `someday` sets a timer an hour away; `block` says so on
/// `blocked` and holds its worker until `release` gives the word (or the wait deadline).
#[derive(Clone)]
struct TimerServer {
    blocked: Sender<()>,
    release: Receiver<()>,
}

impl Handler for TimerServer {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    type Session = ();

    fn open(&self, _: &Context, _: &mut Replies<Vec<u8>>) {}

    fn call(&self, _: &mut (), line: Vec<u8>, _: &Context, replies: &mut Replies<Vec<u8>>) {
        let pusher = replies.pusher();
        match &line[..] {
            b"later" => {
                pusher.after(Duration::from_millis(50), |p| {
                    let _ = p.push(b"later".to_vec());
                });
                replies.send(b"scheduled".to_vec());
            }
            b"tick" => {
                let mut n = 0;
                pusher.every(Duration::from_millis(20), move |p| {
                    let _ = p.push(format!("tick {n}").into_bytes());
                    n += 1;
                });
                replies.send(b"ticking".to_vec());
            }
            b"someday" => {
                pusher.after(Duration::from_secs(3600), |p| {
                    let _ = p.push(b"a whole hour later".to_vec());
                });
                replies.send(b"someday".to_vec());
            }
            b"block" => {
                let _ = self.blocked.send(());
                let _ = self.release.recv_timeout(WAIT_DEADLINE);
                replies.send(b"unblocked".to_vec());
            }
            _ => replies.send(line),
        }
    }
}

fn start(name: &str, workers: usize) -> ServerHandle {
    let (blocked, _) = unbounded();
    let (_, release) = unbounded();
    start_with(
        name,
        Builder::bind("127.0.0.1:0").workers(workers),
        TimerServer { blocked, release },
    )
}

fn start_with(name: &str, builder: Builder, handler: TimerServer) -> ServerHandle {
    common::init_logging();
    builder
        .thread_name(name)
        .start(LineCodec::new(), handler)
        .expect("start")
}

fn client(server: &ServerHandle) -> TcpStream {
    connect(server.local_addr().tcp().unwrap())
}

fn expect(client: &mut TcpStream, want: &str) {
    let got = read_exactly(client, want.len());
    assert_eq!(String::from_utf8_lossy(&got), want);
}

#[test]
fn a_pushers_one_shot_timer_pushes_to_its_connection() {
    let server = start("ut-later", 2);
    let mut client = client(&server);
    send(&mut client, b"later\n");
    expect(&mut client, "scheduled\nlater\n");
    wait_for_stats(&server, "the timer gone", |s| s.user_timers == 0);
    common::round_trip(&mut client, b"after\n", b"after\n");
    drop(client);
    server.shutdown();
}

/// Regression: a connection's timer an hour away outlived the connection (holding its
/// closure and pusher until due), so sessions that each set one piled timers up as
/// connections came and went. A connection's end now cancels its timers.
#[test]
fn a_connections_far_off_timer_goes_when_the_connection_does() {
    let server = start("ut-someday", 2);
    for _ in 0..3 {
        let mut client = client(&server);
        common::round_trip(&mut client, b"someday\n", b"someday\n");
        drop(client);
    }
    assert!(server.stats().user_timers <= 3);
    let stats = wait_for_stats(
        &server,
        "the hour-away timers gone with their connections",
        |s| s.user_timers == 0 && s.connections_closed == 3,
    );
    assert_eq!(stats.connections_open, 0, "{stats:#?}");
    server.shutdown();
}

#[test]
fn a_pushers_periodic_timer_ticks_until_its_connection_ends() {
    let server = start("ut-every", 2);
    let mut client = client(&server);
    send(&mut client, b"tick\n");
    expect(&mut client, "ticking\ntick 0\ntick 1\ntick 2\n");
    assert_eq!(server.stats().user_timers, 1);
    drop(client);
    wait_for_stats(&server, "the periodic timer stopped", |s| {
        s.user_timers == 0 && s.connections_closed == 1
    });
    server.shutdown();
}

#[test]
fn the_servers_timers_run_once_and_every_period_until_cancelled() {
    let server = start("ut-server", 2);
    let (tx, rx) = unbounded();
    let once = tx.clone();
    server.after(Duration::from_millis(10), move || {
        let _ = once.send("once".to_owned());
    });
    let mut n = 0;
    let every = server.every(Duration::from_millis(10), move || {
        let _ = tx.send(format!("tick {n}"));
        n += 1;
    });
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|m: &&String| m.starts_with("tick"))
        .count()
        < 3
    {
        seen.push(rx.recv_timeout(WAIT_DEADLINE).expect("a timer to fire"));
    }
    assert!(every.cancel(), "the periodic timer was pending");
    assert!(!every.cancel(), "cancelled already");
    let stats = wait_for_stats(&server, "no timer left", |s| s.user_timers == 0);
    // The one-shot timer came (before or among the ticks) and the ticks in order.
    let mut rest: Vec<_> = rx.try_iter().collect();
    seen.append(&mut rest);
    assert!(seen.contains(&"once".to_owned()), "{seen:?}");
    let ticks: Vec<_> = seen.iter().filter(|m| m.starts_with("tick")).collect();
    for (i, tick) in ticks.iter().enumerate() {
        assert_eq!(**tick, format!("tick {i}"), "{seen:?}");
    }
    assert_eq!(stats.panics, 0);
    server.shutdown();
}

#[test]
fn a_cancelled_timer_never_fires() {
    // One worker: timers due earlier run first.
    let server = start("ut-cancel", 1);
    let (tx, rx) = unbounded();
    let cancelled = tx.clone();
    let timer = server.after(Duration::from_millis(20), move || {
        let _ = cancelled.send("the cancelled timer");
    });
    assert!(timer.cancel(), "it was pending");
    server.after(Duration::from_millis(100), move || {
        let _ = tx.send("the sentinel");
    });
    assert_eq!(
        rx.recv_timeout(WAIT_DEADLINE).expect("the sentinel"),
        "the sentinel",
        "the first timer to run"
    );
    assert!(!timer.cancel(), "cancelled already");
    wait_for_stats(&server, "no timer left", |s| s.user_timers == 0);
    assert!(rx.try_recv().is_err(), "the cancelled timer ran");
    server.shutdown();
}

#[test]
fn a_panicking_timer_is_counted_and_later_timers_still_fire() {
    // One worker: the later timers run on the worker the panic happened on.
    let server = start("ut-panic", 1);
    server.after(Duration::from_millis(10), || {
        panic!("a timer panics on purpose")
    });
    let mut first = true;
    server.every(Duration::from_millis(10), move || {
        if std::mem::take(&mut first) {
            panic!("a periodic timer panics on purpose");
        }
    });
    let (tx, rx) = bounded(1);
    server.after(Duration::from_millis(50), move || {
        let _ = tx.send(());
    });
    rx.recv_timeout(WAIT_DEADLINE)
        .expect("a timer after the panicking ones to fire");
    let stats = wait_for_stats(&server, "both panics counted", |s| s.panics == 2);
    // The periodic timer goes on after its panic.
    assert_eq!(stats.user_timers, 1, "{stats:#?}");
    // And connections are served.
    let mut client = client(&server);
    common::round_trip(&mut client, b"hello\n", b"hello\n");
    drop(client);
    server.shutdown();
}

#[test]
fn pending_timers_do_not_hold_the_shutdown_and_the_timer_thread_goes_with_it() {
    let server = start("ut-shut", 2);
    let reader = server.stats_reader();
    server.after(Duration::from_secs(3600), || panic!("ran an hour later"));
    server.every(Duration::from_secs(3600), || panic!("ran an hour later"));
    let mut client = client(&server);
    send(&mut client, b"someday\n");
    expect(&mut client, "someday\n");
    wait_reader(&reader, "three timers pending", |s| s.user_timers == 3);
    // The thread names itself once it runs.
    wait_until("the timer thread", || {
        (threads_named("ut-shut-timers") == ["ut-shut-timers"]).then_some(())
    });
    let (done, finished) = bounded(1);
    let started = Instant::now();
    thread::spawn(move || {
        server.shutdown();
        let _ = done.send(started.elapsed());
    });
    let took = finished
        .recv_timeout(WAIT_DEADLINE)
        .expect("the shutdown to return");
    assert!(
        took < Duration::from_secs(5),
        "the shutdown took {took:?} with only timers pending"
    );
    let (ending, _) = common::read_until_end(&mut client, "the connection at shutdown");
    assert_eq!(ending, common::Ending::Eof);
    wait_until("every ut-shut thread to exit", || {
        threads_named("ut-shut").is_empty().then_some(())
    });
    assert_eq!(reader.stats().user_timers, 0);
}

#[test]
fn a_timer_due_while_the_job_queue_is_full_does_not_hold_the_shutdown_past_its_deadline() {
    let (blocked_tx, blocked) = unbounded();
    let (release, release_rx) = unbounded();
    let server = start_with(
        "ut-full",
        Builder::bind("127.0.0.1:0")
            .workers(1)
            .job_queue_capacity(1)
            .shutdown_timeout(Duration::from_millis(500)),
        TimerServer {
            blocked: blocked_tx,
            release: release_rx,
        },
    );
    // The only worker is held by a handler; a timer due every millisecond fills the queue
    // (one job) and the next one has nowhere to go.
    let mut client = client(&server);
    send(&mut client, b"block\n");
    blocked
        .recv_timeout(WAIT_DEADLINE)
        .expect("the handler to block");
    server.every(Duration::from_millis(1), || {});
    wait_for_stats(&server, "the job queue full", |s| s.job_queue_depth == 1);
    // The next tick is due within a millisecond: let it meet the full queue.
    thread::sleep(Duration::from_millis(20));
    let (done, finished) = bounded(1);
    let stopper = thread::spawn(move || {
        server.shutdown();
        let _ = done.send(());
    });
    // The shutdown leaves a worker stuck past its deadline running, and returns.
    let returned = finished.recv_timeout(Duration::from_secs(10));
    let _ = release.send(());
    stopper.join().expect("the shutdown thread");
    returned.expect("the shutdown to return by its deadline (500 ms) with a handler stuck");
    drop(client);
}
