//! The hardening issue's regressions, each named after its bug, driven over the in-memory
//! stream of the state machine's unit tests.

use super::*;

/// Regression (bug 4): a reset was counted by the read and again by the write.
#[test]
fn a_reset_with_output_pending_is_counted_once() {
    let mut h = lines();
    h.stream().room = 1;
    h.peer_sends(b"a\n");
    h.answer_all(upper);
    h.stream().reset = true;
    assert_eq!(h.event(), Step::Close);
    assert_eq!(h.stats().resets, 1);
}

/// Regression (bug 11): after a half-close, a reply over the high-water mark was written
/// but nothing drove the connection to its FIN.
#[test]
fn half_close_after_a_reply_over_the_high_water_mark_still_closes() {
    let mut h = lines();
    h.stream().room = 100;
    h.stream().incoming.extend(b"big\n");
    h.peer_fin();
    h.answer_all(|_| vec![b'x'; 5000]);
    assert_eq!(h.state(), "Flushing");
    h.stream().room = usize::MAX;
    assert_eq!(h.event(), Step::Close);
    assert_eq!(h.stream().sent.len(), 5001);
}

/// Regression (bug 12): a request pipelined behind a reply over the high-water mark was
/// never dispatched once writing made room.
#[test]
fn a_request_pipelined_behind_a_reply_over_the_mark_is_answered() {
    let mut h = lines();
    h.stream().room = 100;
    // A request as large as the mark, then a small one, in one write.
    let mut input = vec![b'x'; 2000];
    input.extend_from_slice(b"\nping\n");
    h.peer_sends(&input);
    assert_eq!(h.queued(), 1, "the large request fills the room");
    h.answer_all(|r| r);
    assert!(h.queued() == 0, "output over the mark pauses dispatch");
    h.stream().room = usize::MAX;
    h.event();
    assert_eq!(h.queued(), 1, "writing made room: `ping` is dispatched");
    h.answer_all(|r| r);
    assert!(h.sent().ends_with("xx\nping\n"));
}

/// Regression (bug 9): small requests with large replies pinned the in-flight limit's
/// worth of large replies when the peer stopped reading.
#[test]
fn replies_larger_than_requests_keep_output_near_the_high_water_mark() {
    let mut h = lines();
    h.stream().room = 0;
    h.peer_sends(&b"get\n".repeat(32));
    for _ in 0..32 {
        h.answer_all(|_| vec![b'v'; 4096]);
    }
    let buffered = h.conn.buffered();
    assert!(
        buffered <= 2 * 4097 + 32 * 4,
        "{buffered} bytes buffered for a peer that reads nothing"
    );
    assert_eq!(h.stats().responses, 2);
}

/// Regression (bug 3): replies already back when a reply closed the connection were never
/// counted, so `in_flight` stayed above zero.
#[test]
fn replies_after_a_closing_reply_are_counted_as_dropped() {
    let mut h = Harness::concurrent(Cues(LineCodec::new()), limits());
    h.peer_sends(b"close\nafter\n");
    h.answer_in(&[1, 0], |r| r);
    assert_eq!(h.sent(), "close\n");
    assert_eq!(h.state(), "Lingering");
    let stats = h.stats();
    assert_eq!(
        (stats.in_flight, stats.replies_dropped),
        (0, 1),
        "{stats:?}"
    );
}

/// Regression (bug 1): a panic in the codec killed the reactor; now it ends its connection
/// after the replies owed before it.
#[test]
fn a_panic_in_decode_ends_only_the_connection_after_its_owed_replies() {
    let mut h = Harness::new(Cues(LineCodec::new()), limits());
    h.peer_sends(b"a\npanic\n");
    assert_eq!(h.state(), "Ending");
    h.answer_all(|r| r);
    assert_eq!((h.sent().as_str(), h.state()), ("a\n", "Lingering"));
    assert_eq!(h.stats().panics, 1);
}

#[test]
fn a_panic_in_encode_drops_its_half_written_reply_and_ends_the_connection() {
    let mut h = Harness::concurrent(Cues(LineCodec::new()), limits());
    h.peer_sends(b"a\nb\n");
    h.answer_in(&[1], |r| r);
    h.answer_in(&[0], |_| b"panic".to_vec());
    assert_eq!((h.sent().as_str(), h.state()), ("", "Lingering"));
    let stats = h.stats();
    assert_eq!((stats.panics, stats.in_flight), (1, 0), "{stats:?}");
}

/// Regression (bug 1, `clamp(1, 0)`): a codec that claims to use no bytes (or more than it
/// was given) is a protocol error, not a panic or a spin.
#[test]
fn a_codec_that_reports_using_no_bytes_is_a_protocol_error() {
    #[derive(Clone)]
    struct Zero;
    impl Codec for Zero {
        type Request = ();
        type Response = ();
        fn decode(&mut self, _: &[u8]) -> Result<Option<Decoded<()>>, DecodeError> {
            Ok(Some(((), 0)))
        }
        fn encode(&mut self, (): (), _: &mut Output<'_>) -> AfterReply {
            AfterReply::KeepOpen
        }
    }
    let mut h = Harness::new(Zero, limits());
    h.peer_sends(b"x");
    assert_eq!((h.state(), h.stats().protocol_errors), ("Lingering", 1));
}

/// Regression (bug 2): a legal frame at the codec's maximum was rejected by the
/// connection's own limit when TCP split it, because the limit counted the framing too.
#[test]
fn a_frame_at_the_codec_maximum_is_accepted_however_it_is_split() {
    let max = 4096;
    let mut frame = u32::try_from(max).unwrap().to_be_bytes().to_vec();
    frame.extend(vec![b'p'; max]);
    let mut limits = limits();
    limits.max_frame = max + 64;
    limits.output_high_water = 1 << 20;
    for chunk in [1, 7, 4095, 4099] {
        let mut h = Harness::new(LengthPrefixedCodec::with_max_frame(max), limits.clone());
        h.stream().read_chunk = chunk;
        h.peer_sends(&frame);
        assert_eq!((h.state(), h.queued()), ("Open", 1), "chunk {chunk}");
    }
}

/// Regression (bug 5): `Instant + Duration::MAX` panicked the reactor.
#[test]
fn huge_timeouts_saturate_instead_of_overflowing() {
    let mut limits = limits();
    limits.idle_timeout = Some(Duration::MAX);
    limits.linger = Duration::MAX;
    let mut h = Harness::new(LineCodec::new(), limits.clone());
    assert!(h.conn.next_deadline(&limits).is_some());
    // One request served, so the shutdown ends it at once (no first-request grace).
    h.peer_sends(b"a\n");
    h.answer_all(|r| r);
    h.with(|conn, env| conn.shut_down(env));
    assert_eq!(h.state(), "Lingering");
}

/// Answers every work at once, as inline mode does: opens with `()`, echoes requests.
struct InlineEcho;

impl Dispatch<Vec<u8>, Vec<u8>, ()> for InlineEcho {
    fn dispatch(&mut self, work: Work<Vec<u8>, Vec<u8>, ()>) -> Dispatched<Vec<u8>, Vec<u8>, ()> {
        let echo = Answering::new(|request: Vec<u8>| Some(one(request)));
        let mut answers = crate::util::few::Few::new();
        let counters = Counters::default();
        crate::conn::work::run_work(&echo, work, &counters, Duration::MAX, &mut |done| {
            answers.push(done);
        });
        Dispatched::Ran(answers)
    }
}

/// Review finding: inline, with data and FIN in one event, room came back inside the drive
/// (the inline handler answered), and the requests still buffered were thrown away as "an
/// unfinished request".
#[test]
fn inline_requests_sent_before_the_fin_are_all_answered() {
    let limits = limits();
    let now = Instant::now();
    let stream = MemStream {
        room: usize::MAX,
        incoming: b"a\nb\nc\nd\n".iter().copied().collect(),
        peer_fin: true,
        ..MemStream::default()
    };
    let ctx = Context::new(
        crate::handler::Peer::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 7500))),
        1,
    );
    let key = ConnKey {
        slot: 0,
        generation: 0,
    };
    let mut conn: Connection<LineCodec, (), MemStream> = Connection::new(
        stream,
        (
            key,
            ctx,
            test_link(key, &Arc::new(Posts::default()), &Arc::default()),
        ),
        LineCodec::new(),
        &limits,
        None,
        now,
    );
    let counters = Counters::default();
    let mut scratch = vec![0; 64 * 1024];
    let mut inline = InlineEcho;
    let mut env = Env {
        dispatch: &mut inline,
        reactor: 0,
        counters: &counters,
        limits: &limits,
        scratch: &mut scratch,
        now,
        drain_deadline: None,
    };
    conn.on_event(true, true, true);
    assert_eq!(conn.drive(&mut env), Step::Close);
    assert_eq!(conn.stream_mut().sent, b"a\nb\nc\nd\n");
}
