//! The session's life: opened on a worker before any request (and able to speak first),
//! private to its connection, and handed to the close hook exactly once however the
//! connection ends.

use crate::common;

use std::collections::HashMap;
use std::net::Shutdown;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{connect, expect_clean_eof, read_exactly, round_trip, send, wait_until};
use reactor_pool::{
    Builder, CloseReason, Context, Handler, LineCodec, Mode, Replies, ServerHandle,
};

/// Counts per connection; `panic` panics, `bye` closes, `greet` is the greeting.
#[derive(Clone, Default)]
struct Counting {
    closes: Arc<Mutex<HashMap<u64, Vec<CloseReason>>>>,
    /// Thread names the open hooks ran on.
    opened_on: Arc<Mutex<Vec<String>>>,
}

struct Tally {
    id: u64,
    calls: u64,
}

impl Handler for Counting {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    type Session = Tally;

    fn open(&self, ctx: &Context, greeting: &mut Replies<Vec<u8>>) -> Tally {
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        self.opened_on.lock().unwrap().push(thread);
        greeting.send(format!("hello {}", ctx.connection_id()).into_bytes());
        Tally {
            id: ctx.connection_id(),
            calls: 0,
        }
    }

    fn call(
        &self,
        tally: &mut Tally,
        line: Vec<u8>,
        ctx: &Context,
        replies: &mut Replies<Vec<u8>>,
    ) {
        assert_eq!(
            tally.id,
            ctx.connection_id(),
            "a session stays with its connection"
        );
        tally.calls += 1;
        match line.as_slice() {
            b"panic" => panic!("a handler bug"),
            b"bye" => {
                replies.send(b"bye".to_vec());
                replies.close();
            }
            _ => replies
                .send(format!("{} #{}", String::from_utf8_lossy(&line), tally.calls).into_bytes()),
        }
    }

    fn close(&self, tally: Tally, ctx: &Context, reason: CloseReason) {
        assert_eq!(tally.id, ctx.connection_id());
        self.closes
            .lock()
            .unwrap()
            .entry(tally.id)
            .or_default()
            .push(reason);
    }
}

fn start(name: &str, handler: Counting) -> ServerHandle {
    start_idle(name, handler, None)
}

fn start_idle(name: &str, handler: Counting, idle: Option<Duration>) -> ServerHandle {
    Builder::bind("127.0.0.1:0")
        .workers(2)
        .idle_timeout(idle)
        .lingering_time(Duration::from_millis(200))
        .thread_name(name)
        .start(LineCodec::with_max_frame(16), handler)
        .expect("start")
}

fn greeting(client: &mut std::net::TcpStream) -> u64 {
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        line.extend(read_exactly(client, 1));
    }
    let text = String::from_utf8(line).unwrap();
    text.trim_end()
        .strip_prefix("hello ")
        .expect("the greeting first")
        .parse()
        .unwrap()
}

#[test]
fn the_greeting_comes_first_from_a_worker_even_when_requests_arrive_with_the_connection() {
    common::init_logging();
    let handler = Counting::default();
    let server = start("sh-greet", handler.clone());
    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"a\nb\n"); // before the greeting could have been read
    let id = greeting(&mut client);
    assert_eq!(read_exactly(&mut client, 10), b"a #1\nb #2\n");
    assert_eq!(id, 1);
    let opened_on = handler.opened_on.lock().unwrap().clone();
    assert!(
        opened_on.iter().all(|t| t.starts_with("sh-greet-worker")),
        "{opened_on:?}"
    );
    drop(client);
    server.shutdown();
}

#[test]
fn sessions_are_private_to_their_connection() {
    common::init_logging();
    let server = start("sh-iso", Counting::default());
    let mut one = connect(server.local_addr().tcp().unwrap());
    let mut two = connect(server.local_addr().tcp().unwrap());
    greeting(&mut one);
    greeting(&mut two);
    round_trip(&mut one, b"x\n", b"x #1\n");
    round_trip(&mut one, b"x\n", b"x #2\n");
    round_trip(&mut two, b"y\n", b"y #1\n");
    round_trip(&mut one, b"x\n", b"x #3\n");
    drop((one, two));
    server.shutdown();
}

/// Every way a connection can end hands its session to the close hook exactly once, with
/// the reason.
#[test]
fn the_close_hook_runs_exactly_once_for_every_kind_of_ending() {
    common::init_logging();
    let handler = Counting::default();
    let server = start("sh-close", handler.clone());
    let addr = server.local_addr().tcp().unwrap();
    let mut expected = HashMap::new();

    let mut fin = connect(addr);
    expected.insert(greeting(&mut fin), CloseReason::PeerClosed);
    round_trip(&mut fin, b"a\n", b"a #1\n");
    fin.shutdown(Shutdown::Write).unwrap();
    expect_clean_eof(&mut fin, "after our FIN");

    let mut reset = connect(addr);
    expected.insert(greeting(&mut reset), CloseReason::Reset);
    send(&mut reset, b"a\n");
    read_exactly(&mut reset, 5);
    common::reset(reset);

    let mut bad = connect(addr);
    expected.insert(greeting(&mut bad), CloseReason::ProtocolError);
    send(&mut bad, b"a line far over sixteen bytes\n");
    bad.shutdown(Shutdown::Write).unwrap();
    expect_clean_eof(&mut bad, "after a protocol error");

    let mut bye = connect(addr);
    expected.insert(greeting(&mut bye), CloseReason::Requested);
    send(&mut bye, b"bye\nnot served\n");
    assert_eq!(expect_clean_eof(&mut bye, "after bye"), b"bye\n");

    let mut panics = connect(addr);
    expected.insert(greeting(&mut panics), CloseReason::Panicked);
    send(&mut panics, b"ok\npanic\nnever\n");
    assert_eq!(expect_clean_eof(&mut panics, "after a panic"), b"ok #1\n");

    let mut at_shutdown = connect(addr);
    expected.insert(greeting(&mut at_shutdown), CloseReason::Shutdown);
    round_trip(&mut at_shutdown, b"a\n", b"a #1\n");

    let closes = Arc::clone(&handler.closes);
    wait_until("five close hooks", || {
        (closes.lock().unwrap().len() == 5).then_some(())
    });
    server.shutdown();
    expect_clean_eof(&mut at_shutdown, "at shutdown");

    let closes = handler.closes.lock().unwrap().clone();
    for (id, reason) in &expected {
        assert_eq!(
            closes.get(id),
            Some(&vec![*reason]),
            "connection {id}: {closes:?}"
        );
    }
    assert_eq!(closes.len(), expected.len(), "{closes:?}");
}

#[test]
fn the_close_hook_hears_of_an_idle_timeout() {
    common::init_logging();
    let handler = Counting::default();
    let server = start_idle("sh-idle", handler.clone(), Some(Duration::from_millis(200)));
    let mut idle = connect(server.local_addr().tcp().unwrap());
    let id = greeting(&mut idle);
    expect_clean_eof(&mut idle, "an idle connection");
    let closes = Arc::clone(&handler.closes);
    wait_until("the close hook", || {
        (closes.lock().unwrap().len() == 1).then_some(())
    });
    assert_eq!(
        handler.closes.lock().unwrap().get(&id),
        Some(&vec![CloseReason::Timeout])
    );
    server.shutdown();
}

/// Blocks its open hook and its calls until the test lets each go.
#[derive(Clone)]
struct Held {
    open_gate: crossbeam_channel::Receiver<()>,
    call_gate: crossbeam_channel::Receiver<()>,
    entered: crossbeam_channel::Sender<&'static str>,
    closes: Arc<Mutex<Vec<CloseReason>>>,
}

impl Handler for Held {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    type Session = ();

    fn open(&self, _: &Context, _: &mut Replies<Vec<u8>>) {
        let _ = self.entered.send("open");
        let _ = self.open_gate.recv();
    }

    fn call(&self, _: &mut (), line: Vec<u8>, _: &Context, replies: &mut Replies<Vec<u8>>) {
        let _ = self.entered.send("call");
        let _ = self.call_gate.recv();
        replies.send(line);
    }

    fn close(&self, _: (), _: &Context, reason: CloseReason) {
        self.closes.lock().unwrap().push(reason);
    }
}

/// The test's ends of a [`Held`]'s gates: let an open hook or a call go, and hear which
/// hook has started.
struct Gates {
    open_tx: crossbeam_channel::Sender<()>,
    call_tx: crossbeam_channel::Sender<()>,
    entered_rx: crossbeam_channel::Receiver<&'static str>,
}

impl Held {
    fn new() -> (Held, Gates) {
        let (open_tx, open_gate) = crossbeam_channel::unbounded();
        let (call_tx, call_gate) = crossbeam_channel::unbounded();
        let (entered, entered_rx) = crossbeam_channel::unbounded();
        let held = Held {
            open_gate,
            call_gate,
            entered,
            closes: Arc::default(),
        };
        let gates = Gates {
            open_tx,
            call_tx,
            entered_rx,
        };
        (held, gates)
    }
}

/// A connection reset while its session is out (in the open hook, then in a call) still
/// has it closed exactly once, when it comes back, with the reason it ended for.
#[test]
fn the_close_hook_runs_once_when_the_connection_ends_while_its_session_is_on_a_worker() {
    common::init_logging();
    let (
        held,
        Gates {
            open_tx,
            call_tx,
            entered_rx,
        },
    ) = Held::new();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("sh-away")
        .start(LineCodec::new(), held.clone())
        .expect("start");
    let addr = server.local_addr().tcp().unwrap();

    // Reset while the open hook runs.
    let opening = connect(addr);
    assert_eq!(entered_rx.recv_timeout(common::WAIT_DEADLINE), Ok("open"));
    common::reset(opening);
    common::wait_for_stats(&server, "the reset seen", |s| s.connections_closed == 1);
    open_tx.send(()).unwrap();

    // Reset while a call runs.
    let mut calling = connect(addr);
    assert_eq!(entered_rx.recv_timeout(common::WAIT_DEADLINE), Ok("open"));
    open_tx.send(()).unwrap();
    send(&mut calling, b"slow\n");
    assert_eq!(entered_rx.recv_timeout(common::WAIT_DEADLINE), Ok("call"));
    common::reset(calling);
    common::wait_for_stats(&server, "the reset seen", |s| s.connections_closed == 2);
    call_tx.send(()).unwrap();

    let closes = Arc::clone(&held.closes);
    wait_until("two close hooks", || {
        (closes.lock().unwrap().len() == 2).then_some(())
    });
    let stats = server.stats();
    server.shutdown();
    assert_eq!(
        *held.closes.lock().unwrap(),
        vec![CloseReason::Reset, CloseReason::Reset]
    );
    assert_eq!(
        (stats.in_flight, stats.replies_dropped),
        (0, 1),
        "{stats:#?}"
    );
}

/// Review finding: in concurrent mode each batch's throwaway session went to the close hook
/// too, so a connection reset while a call was out was closed twice.
#[test]
fn concurrent_mode_closes_a_connection_once_even_with_a_call_still_out() {
    common::init_logging();
    let (
        held,
        Gates {
            open_tx,
            call_tx,
            entered_rx,
        },
    ) = Held::new();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("sh-conc")
        .mode(Mode::Concurrent)
        .start(LineCodec::new(), held.clone())
        .expect("start");
    let mut client = connect(server.local_addr().tcp().unwrap());
    assert_eq!(entered_rx.recv_timeout(common::WAIT_DEADLINE), Ok("open"));
    open_tx.send(()).unwrap();
    send(&mut client, b"a\n");
    assert_eq!(entered_rx.recv_timeout(common::WAIT_DEADLINE), Ok("call"));
    common::reset(client);
    common::wait_for_stats(&server, "the reset seen", |s| s.connections_closed == 1);
    // The call comes back to a closed connection, with its batch's throwaway session.
    call_tx.send(()).unwrap();
    common::wait_for_stats(&server, "the call back", |s| s.in_flight == 0);
    // Shutdown joins the workers: any close hook queued late has run by then.
    server.shutdown();
    assert_eq!(*held.closes.lock().unwrap(), vec![CloseReason::Reset]);
}

/// Answers every line with 8 MiB; records close reasons.
#[derive(Clone, Default)]
struct Flood {
    closes: Arc<Mutex<Vec<CloseReason>>>,
}

impl Handler for Flood {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    type Session = ();

    fn open(&self, _: &Context, _: &mut Replies<Vec<u8>>) {}

    fn call(&self, _: &mut (), _: Vec<u8>, _: &Context, replies: &mut Replies<Vec<u8>>) {
        replies.send(vec![b'f'; 8 << 20]);
    }

    fn close(&self, _: (), _: &Context, reason: CloseReason) {
        self.closes.lock().unwrap().push(reason);
    }
}

/// Review finding: in inline mode, a connection force-closed at the shutdown deadline had
/// its close hook queued for workers that inline mode does not have, so it never ran.
#[test]
fn inline_mode_runs_the_close_hook_of_a_connection_forced_shut_at_the_deadline() {
    common::init_logging();
    let flood = Flood::default();
    let server = Builder::bind("127.0.0.1:0")
        .mode(Mode::Inline)
        .shutdown_timeout(Duration::from_millis(200))
        .thread_name("sh-force")
        .start(LineCodec::new(), flood.clone())
        .expect("start");
    let mut stuck = common::connect_with_recv_buffer(server.local_addr().tcp().unwrap(), 4096);
    send(&mut stuck, b"flood\n");
    common::wait_for_stats(&server, "the reply out", |s| s.responses == 1);
    server.shutdown(); // the peer never reads: forced shut at the deadline
    assert_eq!(*flood.closes.lock().unwrap(), vec![CloseReason::Shutdown]);
    drop(stuck);
}
