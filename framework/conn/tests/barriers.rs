//! The promises of the barrier issue, driven over the in-memory stream with the real worker
//! loop: a close is a barrier, each reply leaves as soon as its call returns, a shutdown
//! serves what it received, and an idle connection keeps little memory.

use std::sync::{Arc, Mutex};

use super::*;
use crate::util::buffer::IDLE_CAPACITY;

/// Lines; a line starting with `last` is the connection's last ([`Codec::closes_after`]);
/// `skip` skips the bytes of lines starting with `#`; at EOF, an unterminated line is
/// served as a request.
#[derive(Clone)]
struct Framing(LineCodec, Skipping);

/// Whether [`Framing`] is inside a comment that started in an earlier read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Skipping {
    No,
    Comment,
}

impl Codec for Framing {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        self.0.decode(input)
    }
    fn encode(&mut self, response: Vec<u8>, output: &mut Output<'_>) -> AfterReply {
        self.0.encode(response, output)
    }
    fn closes_after(&self, request: &Vec<u8>) -> bool {
        request.starts_with(b"last")
    }
    fn skip(&mut self, input: &[u8]) -> usize {
        if self.1 == Skipping::No && input.first() != Some(&b'#') {
            return 0;
        }
        // As much of the comment as has arrived, its newline included.
        if let Some(i) = input.iter().position(|&b| b == b'\n') {
            self.1 = Skipping::No;
            i + 1
        } else {
            self.1 = Skipping::Comment;
            input.len()
        }
    }
    fn decode_eof(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        if input.starts_with(b"bad") {
            return Err(DecodeError::Invalid("cut short".into()));
        }
        Ok(Some((input.to_vec(), input.len())))
    }
    fn error_reply(&mut self, error: &DecodeError, output: &mut Vec<u8>) {
        output.extend_from_slice(format!("ERR {error}\n").as_bytes());
    }
}

/// Every request the handler ran, in order.
type Ran = Arc<Mutex<Vec<String>>>;

/// A handler that logs each request it runs and answers it with itself; `close` also closes
/// the connection.
fn logging(ran: &Ran) -> impl Fn(Vec<u8>) -> Option<Replies<Vec<u8>>> + Send + Sync + 'static {
    let ran = Arc::clone(ran);
    move |request: Vec<u8>| {
        ran.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&request).into_owned());
        let mut replies = one(request.clone());
        if request.starts_with(b"close") {
            replies.close();
        }
        Some(replies)
    }
}

/// A connection warmed with `n` round trips, so the reactor decodes deep ahead (a cold one
/// decodes two requests before it knows its replies' size).
fn warm<C: Codec<Request = Vec<u8>, Response = Vec<u8>>>(codec: C, n: usize) -> Harness<C> {
    let mut h = Harness::new(codec, limits());
    for i in 0..n {
        h.peer_sends(format!("w{i}\n").as_bytes());
        h.answer_all(|r| r);
    }
    h.stream().sent.clear();
    h
}

/// Regression (barrier issue, 1): the worker ran every request of a batch, those after a
/// `Replies::close` included, with their side effects.
#[test]
fn requests_after_a_handler_close_in_the_same_batch_never_run() {
    let mut h = warm(LineCodec::new(), 20);
    h.peer_sends(b"SET a\nclose\nDEL a\nDEL b\n");
    assert_eq!(h.queued(), 4, "one batch of four: the connection is warm");
    let ran = Ran::default();
    h.run_in(&[0], logging(&ran));
    assert_eq!(*ran.lock().unwrap(), ["SET a", "close"]);
    assert_eq!(h.sent(), "SET a\nclose\n");
    assert_eq!(h.state(), "Lingering");
    let stats = h.stats();
    assert_eq!((stats.skipped, stats.in_flight), (2, 0));
}

/// Regression (barrier issue, 1): requests decoded after a close that was still waiting for
/// the session were handed on in the next batch.
#[test]
fn requests_waiting_for_the_session_behind_a_close_are_skipped() {
    let mut h = warm(LineCodec::new(), 20);
    h.peer_sends(b"close\n");
    h.peer_sends(b"after\nand after\n");
    assert_eq!(h.queued(), 1, "the rest wait for the session");
    let ran = Ran::default();
    h.run_in(&[0], logging(&ran));
    assert_eq!(h.queued(), 0, "nothing after the close is handed on");
    assert_eq!(*ran.lock().unwrap(), ["close"]);
    assert_eq!((h.sent().as_str(), h.stats().skipped), ("close\n", 2));
}

/// Regression (barrier issue, 1): a codec-level close was decided at encode time, after the
/// requests behind it had run. `closes_after` decides it at decode time.
#[test]
fn a_codec_close_decided_at_decode_time_stops_decoding_and_running() {
    let mut h = warm(Framing(LineCodec::new(), Skipping::No), 20);
    h.peer_sends(b"a\nlast\nb\nc\n");
    assert_eq!(h.queued(), 2, "nothing after `last` is decoded");
    let ran = Ran::default();
    h.run_in(&[0], logging(&ran));
    assert_eq!(*ran.lock().unwrap(), ["a", "last"]);
    assert_eq!((h.sent().as_str(), h.state()), ("a\nlast\n", "Lingering"));
    assert_eq!(h.peer_fin(), Step::Close);
    let (_, reason) = h.conn.release(&h.counters, CloseReason::PeerClosed);
    assert_eq!(reason, CloseReason::Requested);
}

/// Regression (barrier issue, 3): a batch's replies came back only when its last call
/// returned, so a fast reply waited for the slow requests behind it.
#[test]
fn each_reply_is_written_as_soon_as_its_call_returns() {
    let mut h = warm(LineCodec::new(), 20);
    h.peer_sends(b"fast\nslow\nlast\n");
    assert_eq!(h.queued(), 3);
    h.work_in(&[0], |r| Some(one(r)));
    // The worker is still in `slow`: it has posted `fast`'s answer only.
    h.deliver(1);
    assert_eq!(h.sent(), "fast\n");
    h.deliver(1);
    assert_eq!(h.sent(), "fast\nslow\n");
    h.deliver(1);
    assert_eq!(h.sent(), "fast\nslow\nlast\n");
    assert_eq!(h.stats().in_flight, 0);
}

/// Regression (barrier issue, 2): at shutdown the cut took back a batch stalled on the full
/// job queue, so requests already received got a clean close and no reply.
#[test]
fn a_shutdown_serves_requests_stalled_on_the_full_job_queue() {
    let mut h = lines();
    h.jobs.full = true;
    h.peer_sends(b"a\nb\n");
    assert!(h.conn.is_stalled());
    h.with(|conn, env| conn.shut_down(env));
    assert_eq!(h.state(), "Ending");
    h.jobs.full = false;
    h.event();
    assert_eq!(h.queued(), 2, "the stalled batch is handed on after all");
    h.answer_all(upper);
    assert_eq!((h.sent().as_str(), h.state()), ("A\nB\n", "Lingering"));
    assert_eq!(h.stats().replies_dropped + h.stats().skipped, 0);
}

/// Barrier issue, 2: "received" is what reached the kernel before the shutdown; a peer
/// whose pipelined requests wait there behind backpressure still gets them served.
#[test]
fn a_shutdown_serves_what_waits_in_the_kernel_behind_backpressure() {
    let mut limits = limits();
    limits.max_in_flight = 2;
    let mut h = Harness::new(LineCodec::new(), limits);
    // Reads that fill the buffer: the kernel may hold more.
    h.scratch = vec![0; 4];
    h.peer_sends(b"a\nb\nc\nd\ne\n");
    assert_eq!(h.stats().in_flight, 2, "paused at the in-flight limit");
    assert_eq!(h.stream().incoming.len(), 6, "the rest waits in the kernel");
    h.with(|conn, env| conn.shut_down(env));
    assert_eq!(h.state(), "Open", "still taking what was received");
    for _ in 0..10 {
        if h.state() != "Open" {
            break;
        }
        h.answer_all(upper);
    }
    h.answer_all(upper);
    assert_eq!(h.sent(), "A\nB\nC\nD\nE\n");
    assert_eq!(h.state(), "Lingering");
}

/// Barrier issue, 5: an idle connection keeps at most a small floor, whatever its last
/// reply's size.
#[test]
fn an_idle_connection_gives_its_buffers_back_after_a_large_reply() {
    let mut h = lines();
    h.stream().room = 10_000;
    h.peer_sends(b"big\n");
    h.answer_all(|_| vec![b'x'; 30_000]);
    assert!(
        h.conn.output.bytes.capacity() > IDLE_CAPACITY,
        "busy: it keeps it"
    );
    h.stream().room = usize::MAX;
    h.event();
    assert_eq!(h.sent().len(), 30_001);
    assert!(
        h.conn.output.bytes.capacity() <= IDLE_CAPACITY,
        "idle with {} bytes of output buffer",
        h.conn.output.bytes.capacity()
    );
}

/// Barrier issue, 7: a codec consumes bytes without producing a request.
#[test]
fn skipped_bytes_reach_neither_the_pool_nor_the_reply_order() {
    let mut h = lines_framing();
    h.peer_sends(b"# a comment\na\n#partial");
    assert_eq!(h.queued(), 1);
    h.peer_sends(b" comment\nb\n");
    h.answer_all(upper);
    h.answer_all(upper);
    assert_eq!(h.sent(), "A\nB\n");
    assert_eq!(h.stats().requests, 2);
}

/// Barrier issue, 7: the codec is told of a frame cut short by the peer's FIN.
#[test]
fn decode_eof_serves_or_answers_a_frame_cut_short() {
    let mut h = lines_framing();
    h.stream().incoming.extend(b"a\nunterminated");
    h.peer_fin();
    h.answer_all(upper);
    h.answer_all(upper);
    assert_eq!(
        (h.sent().as_str(), h.step),
        ("A\nUNTERMINATED\n", Step::Close)
    );

    let mut h = lines_framing();
    h.stream().incoming.extend(b"a\nbad");
    h.peer_fin();
    assert_eq!(h.answer_all(upper), Step::Close);
    assert_eq!(h.sent(), "A\nERR invalid input: cut short\n");
    assert_eq!(h.stats().protocol_errors, 1);
}

fn lines_framing() -> Harness<Framing> {
    Harness::new(Framing(LineCodec::new(), Skipping::No), limits())
}

/// What a request of the property test below does.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Plain,
    /// The handler answers and closes.
    HandlerClose,
    /// The codec says it is the last (`closes_after`).
    CodecClose,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => Just(Kind::Plain),
        1 => Just(Kind::HandlerClose),
        1 => Just(Kind::CodecClose),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The barrier as a property: on a warm connection, with closes mixed into pipelined
    /// batches, however the input is split and however slowly the worker's answers come
    /// back, every request up to the first close is answered in order, none after it runs,
    /// and the connection then closes.
    #[test]
    fn every_request_before_a_close_is_answered_in_order_and_none_after_it_runs(
        kinds in prop::collection::vec(kind(), 1..24),
        read_chunk in 1usize..40,
        delivered_per_turn in 1usize..4,
        warmth in 0usize..20,
    ) {
        let mut h = warm(Framing(LineCodec::new(), Skipping::No), warmth);
        let line = |i: usize, kind: Kind| match kind {
            Kind::Plain => format!("p{i}"),
            Kind::HandlerClose => format!("close{i}"),
            Kind::CodecClose => format!("last{i}"),
        };
        let requests: String = kinds.iter().enumerate().map(|(i, &k)| line(i, k) + "\n").collect();
        let end = kinds
            .iter()
            .position(|k| !matches!(k, Kind::Plain))
            .map_or(kinds.len(), |i| i + 1);
        let owed: Vec<String> = kinds.iter().enumerate().take(end).map(|(i, &k)| line(i, k)).collect();
        let want: String = owed.iter().map(|l| format!("{l}\n")).collect();
        h.stream().read_chunk = read_chunk;
        h.stream().incoming.extend(requests.as_bytes());
        let ran = Ran::default();
        for _ in 0..(requests.len() + 100) {
            if h.step == Step::Close {
                break;
            }
            h.event();
            let n = h.jobs.queued.len();
            h.work_in(&(0..n).collect::<Vec<_>>(), logging(&ran));
            h.deliver(delivered_per_turn);
            let sent = h.sent();
            prop_assert!(want.starts_with(&sent), "{:?} is not a prefix of {:?}", sent, want);
            if h.stream().incoming.is_empty() && h.posted.is_empty() {
                h.stream().peer_fin = true;
            }
        }
        prop_assert_eq!(h.step, Step::Close);
        prop_assert_eq!(h.sent(), want);
        let ran: Vec<String> = ran.lock().unwrap().iter().filter(|r| !r.starts_with('w')).cloned().collect();
        prop_assert_eq!(ran, owed);
        prop_assert_eq!(h.stats().in_flight, 0);
    }
}

/// Barrier issue, 1, concurrent mode: a close that comes back before the replies ahead of
/// it (its request ran on another worker) still cuts at once what was not handed on yet,
/// instead of when its reply's turn to be encoded comes.
#[test]
fn a_close_answered_out_of_order_cuts_what_was_not_handed_on() {
    let mut h = Harness::concurrent(LineCodec::new(), limits());
    for i in 0..20 {
        h.peer_sends(format!("w{i}\n").as_bytes());
        h.answer_all(|r| r);
    }
    h.stream().sent.clear();
    h.peer_sends(b"a\nclose\n");
    assert_eq!(h.jobs.queued.len(), 2);
    h.jobs.full = true;
    h.peer_sends(b"b\nc\n");
    assert!(h.conn.is_stalled(), "b and c wait for room in the queue");
    let ran = Ran::default();
    h.work_in(&[1], logging(&ran));
    h.deliver(usize::MAX);
    assert_eq!(h.sent(), "", "`a` is still running");
    h.jobs.full = false;
    h.event();
    assert_eq!(
        h.queued(),
        1,
        "only `a` is out: nothing after the close is handed on"
    );
    h.run_in(&[0], logging(&ran));
    assert_eq!((h.sent().as_str(), h.state()), ("a\nclose\n", "Lingering"));
    assert_eq!(*ran.lock().unwrap(), ["close", "a"]);
    assert_eq!(h.stats().skipped, 2);
}

/// Regression (barrier issue, 2): at shutdown the cut dropped an open hook still waiting
/// for room in the job queue, and with it every request the connection had sent.
#[test]
fn a_shutdown_runs_an_open_hook_stalled_on_the_full_job_queue_and_serves_its_requests() {
    let mut h = Harness::behind_preamble(LineCodec::new(), limits(), None, 3);
    h.jobs.full = true;
    h.peer_sends(b"PREa\nb\n");
    assert!(h.conn.is_stalled(), "the open hook waits for room");
    h.with(|conn, env| conn.shut_down(env));
    assert_eq!(h.state(), "Ending");
    h.jobs.full = false;
    h.event();
    h.open(Replies::new(None));
    h.answer_all(upper);
    assert_eq!((h.sent().as_str(), h.state()), ("A\nB\n", "Lingering"));
    assert_eq!(h.stats().replies_dropped + h.stats().skipped, 0);
}
