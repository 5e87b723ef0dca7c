//! Every state transition, short reads and writes at every byte, and the property that
//! every request is answered in order however the input is split.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

#[test]
fn open_decodes_and_hands_on_one_batch_then_writes_replies_in_request_order() {
    let mut h = lines();
    h.peer_sends(b"a\nb\nc\n");
    assert_eq!(
        (h.state(), h.jobs.queued.len(), h.queued()),
        ("Open", 1, 2),
        "two fit before a reply, in one batch"
    );
    h.answer_all(upper);
    assert_eq!(h.sent(), "A\nB\n");
    assert_eq!(
        h.queued(),
        1,
        "the next batch leaves when the session is back"
    );
    h.answer_all(upper);
    assert_eq!((h.sent().as_str(), h.state()), ("A\nB\nC\n", "Open"));
    assert_eq!(h.stats().in_flight, 0);
}

#[test]
fn concurrent_mode_hands_on_each_request_and_reorders_the_replies() {
    let mut h = Harness::concurrent(LineCodec::new(), limits());
    h.peer_sends(b"a\nb\n");
    assert_eq!((h.jobs.queued.len(), h.queued()), (2, 2));
    h.answer_in(&[1], upper);
    assert_eq!(h.sent(), "", "b waits for a");
    h.answer_all(upper);
    assert_eq!(h.sent(), "A\nB\n");
}

#[test]
fn read_closed_answers_what_was_received_then_closes() {
    let mut h = lines();
    h.stream().incoming.extend(b"a\nb");
    assert_eq!(h.peer_fin(), Step::Wait);
    assert_eq!(h.state(), "ReadClosed");
    assert_eq!(h.answer_all(upper), Step::Close);
    assert_eq!(h.sent(), "A\n", "the unfinished `b` gets nothing");
    assert!(!h.stream().fin_sent, "our FIN is the close itself");
}

#[test]
fn ending_writes_owed_replies_then_the_error_reply_then_lingers_until_the_peer_fin() {
    let mut h = Harness::new(Cues(LineCodec::with_max_frame(4)), limits());
    h.peer_sends(b"ok\ntoolong\n");
    assert_eq!(h.state(), "Ending");
    assert_eq!(h.sent(), "", "the owed reply comes first");
    h.answer_all(|r| r);
    assert_eq!(h.state(), "Lingering");
    assert_eq!(
        h.sent(),
        "ok\nERR frame of 7 bytes exceeds the maximum of 4\n"
    );
    assert!(h.stream().fin_sent);
    assert_eq!(h.peer_sends(b"more input is discarded"), Step::Wait);
    assert_eq!(h.peer_fin(), Step::Close);
}

#[test]
fn flushing_waits_for_room_and_lingering_ends_at_its_deadline() {
    let mut h = lines();
    h.stream().room = 2;
    h.peer_sends(b"abcd\n");
    h.answer_all(upper);
    h.with(|conn, env| conn.shut_down(env));
    assert_eq!(h.state(), "Flushing");
    h.stream().room = usize::MAX;
    h.event();
    assert_eq!((h.state(), h.sent().as_str()), ("Lingering", "ABCD\n"));
    h.now += Duration::from_secs(3);
    assert_eq!(h.with(|conn, env| conn.on_timer(env)), Step::Close);
    assert_eq!(
        h.stats().timeouts,
        0,
        "the end of a linger is not a timeout"
    );
}

#[test]
fn short_reads_at_every_byte_still_give_every_reply_in_order() {
    let input = b"one\ntwo\r\nthree\nfour\n";
    for chunk in 1..=input.len() {
        let mut h = lines();
        h.stream().read_chunk = chunk;
        h.stream().incoming.extend(input);
        h.stream().peer_fin = true;
        for _ in 0..100 {
            if h.event() == Step::Close || h.answer_all(upper) == Step::Close {
                break;
            }
        }
        assert_eq!(
            h.sent(),
            "ONE\nTWO\nTHREE\nFOUR\n",
            "reads of {chunk} bytes"
        );
        assert_eq!(h.step, Step::Close);
    }
}

#[test]
fn short_writes_at_every_byte_still_write_everything_then_close() {
    let want = "ALPHA\nBETA\n";
    for chunk in 1..=want.len() {
        let mut h = lines();
        h.stream().write_chunk = chunk;
        h.stream().room = chunk;
        h.stream().incoming.extend(b"alpha\nbeta\n");
        h.stream().peer_fin = true;
        h.event();
        h.answer_all(upper);
        h.answer_all(upper);
        for _ in 0..100 {
            if h.step == Step::Close {
                break;
            }
            h.stream().room = chunk;
            h.event();
        }
        assert_eq!((h.sent().as_str(), h.step), (want, Step::Close), "{chunk}");
    }
}

#[test]
fn a_stalled_request_pauses_reading_until_the_queue_takes_it() {
    let mut h = lines();
    h.jobs.full = true;
    h.peer_sends(b"a\nb\n");
    assert!(h.conn.is_stalled());
    assert_eq!(
        (h.stats().requests, h.stats().in_flight),
        (2, 2),
        "counted when decoded: in flight while they wait for room"
    );
    h.jobs.full = false;
    h.event();
    assert_eq!((h.queued(), h.stats().requests), (2, 2));
}

#[test]
fn a_handler_panic_ends_the_connection_after_the_replies_before_it() {
    let mut h = lines();
    h.peer_sends(b"a\nb\n");
    h.run_in(&[0], |r| (r != b"b").then(|| one(r)));
    assert_eq!((h.sent().as_str(), h.state()), ("a\n", "Lingering"));
    assert_eq!(h.stats().in_flight, 0);
}

#[test]
fn the_open_hook_waits_for_the_preamble_and_requests_that_came_with_its_end_follow_it() {
    let mut h = Harness::behind_preamble(LineCodec::new(), limits(), None, 6);
    assert!(h.jobs.queued.is_empty(), "no open hook before the preamble");
    h.peer_sends(b"PRE");
    assert!(h.jobs.queued.is_empty(), "half a preamble is not enough");
    assert_eq!(
        h.conn.next_deadline(&h.limits),
        Some(h.now + Duration::from_secs(10))
    );
    // The rest of the preamble and the first request in one read.
    h.peer_sends(b"AMBa\n");
    assert!(
        matches!(h.jobs.queued[0], Work::Open { .. }),
        "the open hook first"
    );
    assert_eq!(h.queued(), 0, "the request waits for the session");
    h.open(Replies::new(None));
    assert_eq!(h.queued(), 1);
    h.answer_all(upper);
    assert_eq!(h.sent(), "A\n");
}

#[test]
fn a_preamble_not_done_within_the_handshake_timeout_ends_without_a_farewell() {
    let mut h = Harness::behind_preamble(Cues(LineCodec::new()), limits(), None, 100);
    h.peer_sends(b"slow");
    let deadline = h
        .conn
        .next_deadline(&h.limits)
        .expect("the handshake deadline");
    h.now = deadline;
    h.step = h.with(|conn, env| conn.on_timer(env));
    assert_eq!((h.sent().as_str(), h.state()), ("", "Lingering"));
    assert!(h.stream().fin_sent);
    assert!(h.jobs.queued.is_empty(), "no open hook ever ran");
    assert_eq!(h.stats().timeouts, 1);
    let (finish, reason) = h.conn.release(&h.counters, CloseReason::PeerClosed);
    assert!(matches!(finish, Finish::Nothing), "no session to close");
    assert_eq!(reason, CloseReason::Timeout);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Bugs 11 and 12 as a property: whatever the reply sizes around the high-water mark,
    /// however the input is split and wherever the FIN falls, every request is answered in
    /// order and then the connection closes.
    #[test]
    fn every_request_is_answered_in_order_then_the_connection_closes(
        sizes in prop::collection::vec(0usize..3000, 1..12),
        read_chunk in 1usize..40,
        room_step in 1usize..3000,
        fin_early in any::<bool>(),
        reverse in any::<bool>(),
    ) {
        // In order, or concurrent with the replies coming back in reverse.
        let mut h = if reverse {
            Harness::concurrent(LineCodec::new(), limits())
        } else {
            lines()
        };
        let requests: String = (0..sizes.len()).map(|i| format!("{i}\n")).collect();
        let want: String = sizes.iter().map(|&n| format!("{}\n", "r".repeat(n))).collect();
        h.stream().read_chunk = read_chunk;
        h.stream().room = 0;
        h.stream().incoming.extend(requests.as_bytes());
        h.stream().peer_fin = fin_early;
        let sizes = std::sync::Arc::new(sizes);
        let size_of = {
            let sizes = std::sync::Arc::clone(&sizes);
            move |r: Vec<u8>| {
                let i: usize = String::from_utf8(r).unwrap().parse().unwrap();
                vec![b'r'; sizes[i]]
            }
        };
        // Enough turns for every reply byte at `room_step` bytes a turn, one turn per request
        // and byte of input, and slack: a bound that only a stuck connection reaches.
        let turns = want.len() / room_step + requests.len() + 100;
        for _ in 0..turns {
            if h.step == Step::Close {
                break;
            }
            h.event();
            let n = h.jobs.queued.len();
            let order: Vec<usize> = if reverse { (0..n).rev().collect() } else { (0..n).collect() };
            h.answer_in(&order, size_of.clone());
            h.stream().room = room_step;
            if h.stream().incoming.is_empty() {
                h.stream().peer_fin = true;
            }
        }
        prop_assert_eq!(h.step, Step::Close);
        prop_assert_eq!(h.sent(), want);
        prop_assert_eq!(h.stats().in_flight, 0);
    }
}
