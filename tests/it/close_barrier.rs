//! Regression: a close is a barrier, no request after it runs.
//!
//! `Replies::close` says "requests the peer sent after this one are not served", and
//! redis-server never runs a command pipelined after `QUIT`. But a connection's requests leave
//! for the pool in batches (the ones that arrived while the session was away, or that one read
//! brought), and the worker ran every request of its batch: the replies to the requests after
//! the close were dropped, yet the handler had run them, with their side effects (a `DEL` that
//! deleted, an `INCR` that counted).
//!
//! The line tests make the batch certain: on a warm connection (twenty round trips, so the
//! reactor decodes far ahead; a cold one decodes only two requests ahead), a `hold` request
//! blocks the only worker while the burst arrives; a codec that records what it decodes tells
//! when the server has read the whole burst; then `hold` returns and the burst leaves as one
//! batch. The kv_server tests use the example binary as a client would.

use crate::common;

use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{unbounded, Receiver, Sender};
use reactor_pool::{
    AfterReply, Builder, CloseReason, Codec, Context, DecodeError, Decoded, Handler, LineCodec,
    Output, Replies, ServerHandle,
};

use crate::common::{
    connect, expect_clean_eof, round_trip, send, start_example, wait_until, WAIT_DEADLINE,
};

/// Lines, in order.
type Lines = Arc<Mutex<Vec<Vec<u8>>>>;

fn len(lines: &Lines) -> usize {
    lines.lock().unwrap().len()
}

fn show(lines: &[Vec<u8>]) -> Vec<String> {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

/// [`LineCodec`] that records every line it decodes: the test's way to know the server has
/// read (and decoded) a burst.
#[derive(Clone)]
struct Tap {
    lines: LineCodec,
    decoded: Lines,
    /// The line the codec itself calls the connection's last (`Codec::closes_after`).
    last: Option<&'static [u8]>,
}

impl Codec for Tap {
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        let decoded = self.lines.decode(input)?;
        if let Some((line, _)) = &decoded {
            self.decoded.lock().unwrap().push(line.clone());
        }
        Ok(decoded)
    }

    fn encode(&mut self, response: Vec<u8>, output: &mut Output<'_>) -> AfterReply {
        self.lines.encode(response, output)
    }

    fn closes_after(&self, line: &Vec<u8>) -> bool {
        self.last == Some(line.as_slice())
    }
}

/// A tiny stateful line protocol: `SET x` and `DEL x` answer `done <line>`, `QUIT` answers
/// `bye` and closes, `hold` waits until the test releases it and answers `held`; anything
/// else is echoed. Every call is logged before it does anything, and every close is reported.
struct Store {
    ran: Lines,
    entered: Sender<()>,
    gate: Receiver<()>,
    closed: Sender<CloseReason>,
}

impl Handler for Store {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    /// Requests served on this connection.
    type Session = u64;

    fn open(&self, _: &Context, _: &mut Replies<Vec<u8>>) -> u64 {
        0
    }

    fn call(&self, served: &mut u64, line: Vec<u8>, _: &Context, replies: &mut Replies<Vec<u8>>) {
        self.ran.lock().unwrap().push(line.clone());
        *served += 1;
        if line == b"hold" {
            let _ = self.entered.send(());
            // Released by the test (a message, or its sender dropped when the test ends).
            let _ = self.gate.recv_timeout(WAIT_DEADLINE);
            replies.send(b"held".to_vec());
        } else if line == b"QUIT" {
            replies.send(b"bye".to_vec());
            replies.close();
        } else if line.starts_with(b"SET ") || line.starts_with(b"DEL ") {
            let mut reply = b"done ".to_vec();
            reply.extend_from_slice(&line);
            replies.send(reply);
        } else {
            replies.send(line);
        }
    }

    fn close(&self, _: u64, _: &Context, reason: CloseReason) {
        let _ = self.closed.send(reason);
    }
}

/// One server with one worker and one reactor, and the test's ends of its channels.
struct Fixture {
    /// Dropped first: a `hold` still waiting returns at once, so the server's drop does
    /// not wait for it.
    release: Sender<()>,
    entered: Receiver<()>,
    closed: Receiver<CloseReason>,
    ran: Lines,
    decoded: Lines,
    server: ServerHandle,
}

impl Fixture {
    fn start(name: &str) -> Fixture {
        Fixture::start_with(name, None)
    }

    /// A server whose codec calls `last` the connection's last line.
    fn start_with(name: &str, last: Option<&'static [u8]>) -> Fixture {
        common::init_logging();
        let (ran, decoded) = (Lines::default(), Lines::default());
        let (entered_tx, entered) = unbounded();
        let (release, gate) = unbounded();
        let (closed_tx, closed) = unbounded();
        let server = Builder::bind("127.0.0.1:0")
            .workers(1)
            .reactors(1)
            .thread_name(name)
            .start(
                Tap {
                    lines: LineCodec::new(),
                    decoded: Arc::clone(&decoded),
                    last,
                },
                Store {
                    ran: Arc::clone(&ran),
                    entered: entered_tx,
                    gate,
                    closed: closed_tx,
                },
            )
            .expect("start the server");
        Fixture {
            release,
            entered,
            closed,
            ran,
            decoded,
            server,
        }
    }

    /// A connection warmed by twenty round trips, so the reactor decodes deep ahead.
    fn warm_client(&self) -> TcpStream {
        let mut client = connect(self.server.local_addr().tcp().unwrap());
        for i in 0..20 {
            let line = format!("ping {i}\n");
            round_trip(&mut client, line.as_bytes(), line.as_bytes());
        }
        client
    }

    /// On a warm connection: `hold` blocks the worker, `burst` (lines, sent in one write)
    /// arrives and is decoded meanwhile, then `hold` is released, so the burst leaves as one
    /// batch. Returns what the client read up to a clean EOF (the EOF must come: the burst
    /// holds a `QUIT`) and the lines the handler ran from `hold` on, once the connection's
    /// close hook has run (after its last call returned).
    fn held_burst(&self, burst: &[&str]) -> (String, Vec<String>) {
        let mut client = self.warm_client();
        let ran_before = len(&self.ran);
        send(&mut client, b"hold\n");
        self.entered
            .recv_timeout(WAIT_DEADLINE)
            .expect("`hold` running on the worker");
        let decoded_before = len(&self.decoded);
        send(&mut client, lines(burst).as_bytes());
        wait_until("the server to decode the whole burst", || {
            (len(&self.decoded) >= decoded_before + burst.len()).then_some(())
        });
        self.release.send(()).expect("release `hold`");
        self.finish(client, ran_before)
    }

    /// Reads `client` to a clean EOF, closes it, waits for its close hook; returns what it read and
    /// what the handler ran from `ran_before` on.
    fn finish(&self, mut client: TcpStream, ran_before: usize) -> (String, Vec<String>) {
        let got = expect_clean_eof(&mut client, "after QUIT");
        // Our FIN ends the server's lingering close at once, and with it the connection.
        drop(client);
        let reason = self
            .closed
            .recv_timeout(WAIT_DEADLINE)
            .expect("the connection's close hook to run");
        assert_eq!(reason, CloseReason::Requested, "why the connection closed");
        let ran = show(&self.ran.lock().unwrap()[ran_before..]);
        (String::from_utf8_lossy(&got).into_owned(), ran)
    }
}

fn lines(burst: &[&str]) -> String {
    burst.iter().map(|l| format!("{l}\n")).collect()
}

/// What the protocol promises for `burst`, sent after `prefix` (already run): the requests
/// up to and including the first `QUIT` run, and their replies, then the close.
fn expected(prefix: &[&str], burst: &[&str]) -> (String, Vec<String>) {
    let quit = burst
        .iter()
        .position(|&l| l == "QUIT")
        .expect("a burst with a QUIT");
    let ran: Vec<String> = prefix
        .iter()
        .chain(&burst[..=quit])
        .map(|l| l.to_string())
        .collect();
    let replies = ran
        .iter()
        .map(|l| match l.as_str() {
            "hold" => "held\n".to_owned(),
            "QUIT" => "bye\n".to_owned(),
            l if l.starts_with("SET ") || l.starts_with("DEL ") => format!("done {l}\n"),
            l => format!("{l}\n"),
        })
        .collect();
    (replies, ran)
}

fn assert_barrier(burst: &[&str], got: &str, ran: &[String], prefix: &[&str]) {
    let (want_replies, want_ran) = expected(prefix, burst);
    assert_eq!(
        got, want_replies,
        "burst {burst:?}: the replies up to QUIT's, then a clean EOF"
    );
    assert_eq!(
        ran, want_ran,
        "burst {burst:?}: the handler ran a request sent after QUIT (a close is a barrier: \
         the requests after it must never run)"
    );
}

#[test]
fn a_close_is_a_barrier_the_request_after_quit_never_runs() {
    let fx = Fixture::start("cb-mid");
    let burst = ["SET a", "QUIT", "DEL a"];
    let (got, ran) = fx.held_burst(&burst);
    assert_eq!(
        got, "held\ndone SET a\nbye\n",
        "the replies, then a clean EOF"
    );
    assert!(
        !ran.iter().any(|l| l == "DEL a"),
        "the handler ran `DEL a`, sent after QUIT; it ran {ran:?}"
    );
    assert_barrier(&burst, &got, &ran, &["hold"]);
    let stats = fx.server.stats();
    assert_eq!(
        (stats.skipped, stats.in_flight),
        (1, 0),
        "`DEL a` counted as skipped: {stats:#?}"
    );
}

/// The codec's close (`Codec::closes_after`, as HTTP's `Connection: close`) is decided when
/// the request is decoded: nothing after it is even decoded, let alone run.
#[test]
fn a_codec_close_is_decided_before_dispatch_and_nothing_after_it_is_decoded() {
    let fx = Fixture::start_with("cb-codec", Some(b"BYE"));
    let mut client = fx.warm_client();
    let ran_before = len(&fx.ran);
    send(&mut client, b"SET a\nBYE\nDEL a\nSET b\n");
    let (got, ran) = fx.finish(client, ran_before);
    assert_eq!(
        got, "done SET a\nBYE\n",
        "the replies up to BYE's, then EOF"
    );
    assert_eq!(ran, ["SET a", "BYE"], "ran after the codec's close");
    let decoded = show(&fx.decoded.lock().unwrap());
    assert_eq!(
        decoded.last().map(String::as_str),
        Some("BYE"),
        "decoded after BYE"
    );
}

#[test]
fn a_close_on_the_first_request_of_a_batch_is_a_barrier() {
    let fx = Fixture::start("cb-first");
    let burst = ["QUIT", "SET a", "DEL a"];
    let (got, ran) = fx.held_burst(&burst);
    assert_barrier(&burst, &got, &ran, &["hold"]);
}

#[test]
fn a_close_is_a_barrier_for_every_request_behind_it() {
    let fx = Fixture::start("cb-many");
    let burst = [
        "SET a", "QUIT", "DEL a", "SET b", "DEL b", "QUIT", "SET c", "echo", "DEL c",
    ];
    let (got, ran) = fx.held_burst(&burst);
    assert_barrier(&burst, &got, &ran, &["hold"]);
}

/// No blocked worker: a warm connection, the burst in one write. The reactor reads it in
/// one go and hands it on as one batch (the session is home: the client read the last
/// reply, and the reply is written when the session comes back).
#[test]
fn a_close_is_a_barrier_in_a_burst_read_at_once() {
    let fx = Fixture::start("cb-burst");
    let burst = ["SET a", "QUIT", "DEL a"];
    let mut client = fx.warm_client();
    let ran_before = len(&fx.ran);
    send(&mut client, lines(&burst).as_bytes());
    let (got, ran) = fx.finish(client, ran_before);
    assert_barrier(&burst, &got, &ran, &[]);
}

/// The property over several pipelined patterns, each on a fresh connection of one server:
/// every request up to the first QUIT runs and is answered, none after it runs.
#[test]
fn a_close_is_a_barrier_whatever_the_pipelined_pattern() {
    let fx = Fixture::start("cb-patterns");
    let patterns: &[&[&str]] = &[
        &["QUIT", "DEL a"],
        &["SET a", "QUIT", "DEL a"],
        &["SET a", "SET b", "QUIT", "DEL a", "DEL b"],
        &["SET a", "QUIT", "QUIT", "DEL a"],
        &["QUIT", "x", "y", "z", "SET a", "DEL a", "QUIT"],
        // Controls: nothing after the close.
        &["QUIT"],
        &["SET a", "DEL a", "QUIT"],
    ];
    let mut broken = Vec::new();
    for burst in patterns {
        let (got, ran) = fx.held_burst(burst);
        let (want_replies, want_ran) = expected(&["hold"], burst);
        if got != want_replies || ran != want_ran {
            broken.push(format!(
                "burst {burst:?}: read {got:?} (want {want_replies:?}); the handler ran \
                 {ran:?} (want {want_ran:?})"
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "requests after QUIT were run (a close is a barrier):\n{}",
        broken.join("\n")
    );
}

/// kv_server, the example binary: what a redis client sees. Warms a connection with 20
/// PINGs, sends `commands` (after `QUIT`) in one write, expects `+OK` then a clean EOF; then
/// a new connection's `GET k` must find nothing: redis-server never runs a command sent
/// after QUIT.
fn kv_quit_then(commands: &str) {
    common::init_logging();
    let server = start_example("kv_server", &["--addr", "127.0.0.1:0"]);
    let mut client = connect(server.addr);
    for _ in 0..20 {
        round_trip(&mut client, b"PING\r\n", b"+PONG\r\n");
    }
    send(&mut client, format!("QUIT\r\n{commands}").as_bytes());
    let got = expect_clean_eof(&mut client, "after QUIT");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "+OK\r\n",
        "QUIT's reply, then EOF"
    );
    drop(client);

    let mut probe = connect(server.addr);
    send(&mut probe, b"GET k\r\n");
    probe
        .shutdown(Shutdown::Write)
        .expect("half-close the probe");
    let got = expect_clean_eof(&mut probe, "GET k, then our FIN");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "$-1\r\n",
        "GET k after a connection sent {:?} behind QUIT: a command sent after QUIT ran",
        commands.lines().next().unwrap_or_default()
    );
}

#[test]
fn kv_server_does_not_run_a_set_sent_after_quit() {
    kv_quit_then("SET k 1\r\n");
}

#[test]
fn kv_server_does_not_run_commands_pipelined_after_quit() {
    kv_quit_then(&"INCR k\r\n".repeat(50));
}
