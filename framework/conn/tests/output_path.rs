//! The output path driven over the in-memory stream: pushes in order and bounded, a
//! pusher's close, streamed bodies pulled as the socket drains, file regions read through
//! memory (the in-memory stream, like TLS, cannot `sendfile`), and bodies that fail.

use std::io::Write as _;

use super::*;
use crate::body::{BodyStream, FileRegion, Framing};
use crate::push::{PushError, Pusher};

/// A line codec whose responses may carry a body after a head line.
#[derive(Clone)]
struct Bodies;

enum Reply {
    Line(Vec<u8>),
    Stream(BodyStream, Framing),
    File(FileRegion),
}

impl Codec for Bodies {
    type Request = Vec<u8>;
    type Response = Reply;
    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        LineCodec::new().decode(input)
    }
    fn encode(&mut self, response: Reply, output: &mut Output<'_>) -> AfterReply {
        match response {
            Reply::Line(line) => {
                output.extend_from_slice(&line);
                output.push(b'\n');
            }
            Reply::Stream(body, framing) => {
                output.extend_from_slice(b"body:");
                output.stream(body, framing);
                output.extend_from_slice(b":end\n");
            }
            Reply::File(region) => {
                output.extend_from_slice(b"file:");
                output.file(region);
                output.extend_from_slice(b":end\n");
            }
        }
        AfterReply::KeepOpen
    }
}

impl<C: Codec> Harness<C> {
    fn pusher(&self) -> Pusher<C::Response> {
        Pusher::new(Arc::clone(&self.conn.link))
    }

    /// The reactor takes what the pushers posted, then drives the connection once.
    fn take_posts(&mut self) -> Step {
        let posts: Vec<_> = self.sink.0.lock().unwrap().drain(..).collect();
        for posted in posts {
            match posted {
                Posted::Push(_, after, response) => {
                    self.conn.on_push(after, response, &self.counters, self.now);
                }
                Posted::Close(_) => self.conn.on_push_close(&self.counters),
            }
        }
        self.step = self.with(|conn, env| conn.drive(env));
        self.step
    }

    /// Streamed bodies' pieces asked for so far.
    fn pulls(&self) -> usize {
        self.jobs
            .queued
            .iter()
            .filter(|work| matches!(work, Work::Pull { .. }))
            .count()
    }

    /// A worker makes the pieces asked for, and the reactor takes them.
    fn make_pieces(&mut self) -> Step {
        let handler = Answering::new(|_: C::Request| None::<Replies<C::Response>>);
        let (pulls, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.jobs.queued)
            .into_iter()
            .partition(|work| matches!(work, Work::Pull { .. }));
        self.jobs.queued = rest;
        for work in pulls {
            let posted = &mut self.posted;
            crate::conn::work::run_work(&handler, work, &self.counters, Duration::MAX, &mut |d| {
                posted.push_back(d);
            });
        }
        self.deliver(usize::MAX)
    }

    /// The peer reads `n` more bytes (the socket takes that much more).
    fn peer_reads(&mut self, n: usize) -> Step {
        self.stream().room += n;
        self.event()
    }
}

fn bodies() -> Harness<Bodies> {
    Harness::new(Bodies, limits())
}

fn echo(request: Vec<u8>) -> Reply {
    Reply::Line(request)
}

#[test]
fn a_push_is_written_after_the_replies_owed_when_it_arrived() {
    let mut h = lines();
    h.peer_sends(b"a\nb\n");
    h.pusher().push(b"pushed".to_vec()).unwrap();
    h.take_posts();
    assert_eq!(h.sent(), "", "the push waits for the replies to a and b");
    h.peer_sends(b"c\n");
    h.answer_all(upper);
    // c arrived after the push: its reply comes after it.
    h.answer_all(upper);
    assert_eq!(h.sent(), "A\nB\npushed\nC\n");
    assert_eq!(h.stats().pushes, 1);
    assert_eq!(h.stats().responses, 3, "a push is not a response");
    h.pusher().push(b"now".to_vec()).unwrap();
    h.take_posts();
    assert_eq!(
        h.sent(),
        "A\nB\npushed\nC\nnow\n",
        "nothing owed: written at once"
    );
}

#[test]
fn pushes_to_a_peer_that_stops_reading_wait_within_the_limit_and_are_refused_past_it() {
    // High-water mark 1 KiB, push limit 4 (the harness's link).
    let mut h = lines();
    h.stream().room = 0;
    let big = |i: u8| vec![b'a' + i; 600];
    let pusher = h.pusher();
    for i in 0..4 {
        pusher.push(big(i)).unwrap();
    }
    let refused = pusher.push(big(4)).unwrap_err();
    assert!(refused.is_full());
    assert_eq!(refused.into_inner(), big(4), "the response is handed back");
    assert_eq!(h.stats().pushes_refused, 1);
    h.take_posts();
    // Two encoded (the second passed the mark), two wait unencoded: the memory bound.
    assert_eq!(h.stats().pushes, 2);
    assert!(h.conn.output.len() <= 2 * 601, "{}", h.conn.output.len());
    pusher.push(big(5)).unwrap();
    pusher.push(big(6)).unwrap();
    assert!(pusher.push(big(7)).unwrap_err().is_full());
    h.take_posts();
    h.peer_reads(usize::MAX / 2);
    let expected: Vec<u8> = [0, 1, 2, 3, 5, 6]
        .into_iter()
        .flat_map(|i| {
            let mut line = big(i);
            line.push(b'\n');
            line
        })
        .collect();
    assert_eq!(h.stream().sent, expected, "every accepted push, in order");
    assert_eq!(h.stats().pushes, 6);
}

#[test]
fn a_push_to_an_ended_connection_is_refused_and_handed_back() {
    let mut h = lines();
    let pusher = h.pusher();
    h.peer_fin();
    assert!(pusher.is_closed(), "the peer's FIN closes the link");
    match pusher.push(b"late".to_vec()) {
        Err(PushError::Closed(response)) => assert_eq!(response, b"late"),
        other => panic!("{other:?}"),
    }
    assert!(pusher.close().unwrap_err().is_closed());
}

#[test]
fn a_pusher_close_comes_after_what_is_owed_and_is_a_barrier() {
    let mut h = lines();
    h.peer_sends(b"a\n");
    let pusher = h.pusher();
    pusher.push(b"pushed".to_vec()).unwrap();
    pusher.close().unwrap();
    h.take_posts();
    assert!(pusher.is_closed());
    h.peer_sends(b"after\n");
    h.answer_all(upper);
    assert_eq!(h.sent(), "A\npushed\n");
    assert_eq!(h.state(), "Lingering");
    assert_eq!(h.queued(), 0, "`after` never ran");
    assert_eq!(h.conn.ended, Some(CloseReason::Requested));
}

#[test]
fn a_streamed_body_is_pulled_a_piece_at_a_time_as_the_socket_drains() {
    let mut h = bodies();
    h.stream().room = 0;
    h.peer_sends(b"get\nnext\n");
    let pieces = (0..40u8).map(|i| vec![b'a' + i % 26; 10_000]);
    let body = BodyStream::from_pieces(pieces.clone().collect::<Vec<_>>());
    let first = Mutex::new(Some(body));
    h.run_in(&[0], move |request| {
        let mut replies = Replies::new(None);
        if request == b"get" {
            replies.send(Reply::Stream(
                first.lock().unwrap().take().unwrap(),
                Framing::Raw,
            ));
        } else {
            replies.send(echo(request));
        }
        Some(replies)
    });
    // While the body is being written the connection takes no new request.
    h.peer_sends(b"later\n");
    // The peer reads 2,000 bytes a round, a piece is 10,000: production must wait for it.
    let mut pulled = 0;
    for _ in 0..1000 {
        assert!(h.pulls() <= 1, "one piece asked for at a time");
        if h.conn.output.has_body() {
            assert_eq!(
                h.queued(),
                0,
                "no request is taken while the body is written"
            );
        }
        pulled += h.pulls();
        h.make_pieces();
        // Never more than the look-ahead and a piece held.
        assert!(
            h.conn.output.len() <= 64 * 1024 + 10_000,
            "{}",
            h.conn.output.len()
        );
        if h.stream().sent.len() >= 400_000 {
            break;
        }
        h.peer_reads(2_000);
    }
    h.peer_reads(usize::MAX / 2);
    let mut expected = b"body:".to_vec();
    expected.extend(pieces.flatten());
    expected.extend_from_slice(b":end\nnext\n");
    assert!(
        h.stream().sent == expected,
        "the body, then the reply after it"
    );
    assert!(pulled >= 40, "{pulled}");
    assert_eq!(h.queued(), 1, "`later` is taken once the body is out");
}

#[test]
fn a_chunked_body_frames_each_piece_and_ends_with_the_last_chunk() {
    let mut h = bodies();
    h.peer_sends(b"get\n");
    h.run_in(&[0], |_| {
        let pieces = vec![b"hello".to_vec(), Vec::new(), vec![b'x'; 26]];
        let mut replies = Replies::new(None);
        replies.send(Reply::Stream(
            BodyStream::from_pieces(pieces),
            Framing::Chunked,
        ));
        Some(replies)
    });
    while h.pulls() > 0 {
        h.make_pieces();
    }
    assert_eq!(
        h.sent(),
        format!(
            "body:5\r\nhello\r\n1a\r\n{}\r\n0\r\n\r\n:end\n",
            "x".repeat(26)
        )
    );
}

/// Runs one streamed body of `framing` whose producer yields `pieces` then `end`, and
/// returns what was sent.
fn stream_ending(
    framing: Framing,
    pieces: Vec<Vec<u8>>,
    end: fn() -> std::io::Result<Option<Vec<u8>>>,
) -> Harness<Bodies> {
    let mut h = bodies();
    h.peer_sends(b"get\nnever\n");
    let pieces = Mutex::new(Some(pieces.into_iter()));
    h.run_in(&[0], move |request| {
        if request != b"get" {
            return Some(one(echo(request)));
        }
        let mut left = pieces.lock().unwrap().take().unwrap();
        let body = BodyStream::new(move || match left.next() {
            Some(piece) => Ok(Some(piece)),
            None => end(),
        });
        let mut replies = Replies::new(None);
        replies.send(Reply::Stream(body, framing));
        Some(replies)
    });
    while h.pulls() > 0 {
        h.make_pieces();
    }
    h
}

#[test]
fn a_failed_body_ends_the_connection_after_what_was_written() {
    let failing = || Err(std::io::Error::other("database went away"));
    let mut h = stream_ending(Framing::Chunked, vec![b"abc".to_vec()], failing);
    assert_eq!(
        h.sent(),
        "body:3\r\nabc\r\n",
        "no last chunk, nothing after"
    );
    assert_eq!(h.stats().body_errors, 1);
    assert_eq!(h.conn.ended, Some(CloseReason::BodyFailed));
    assert_eq!(
        h.state(),
        "Lingering",
        "a clean close: our FIN, then linger"
    );
    assert_eq!(
        h.stats().replies_dropped,
        1,
        "`never`'s reply is not written"
    );
}

#[test]
fn a_body_that_ends_short_of_its_length_ends_the_connection() {
    let mut h = stream_ending(Framing::Length(10), vec![b"abc".to_vec()], || Ok(None));
    assert_eq!(h.sent(), "body:abc");
    assert_eq!(h.stats().body_errors, 1);
    assert_eq!(h.state(), "Lingering");
}

#[test]
fn a_body_that_runs_past_its_length_is_cut_at_it() {
    let pieces = vec![b"abc".to_vec(), b"defgh".to_vec()];
    let mut h = stream_ending(Framing::Length(5), pieces, || Ok(None));
    assert_eq!(h.sent(), "body:abcde");
    assert_eq!(h.stats().body_errors, 1);
}

#[test]
fn a_body_of_exactly_its_length_goes_on_to_the_next_reply() {
    let pieces = vec![b"abc".to_vec(), b"de".to_vec()];
    let mut h = stream_ending(Framing::Length(5), pieces, || Ok(None));
    assert_eq!(h.sent(), "body:abcde:end\nnever\n");
    assert_eq!(h.stats().body_errors, 0);
}

#[test]
fn a_panicking_producer_ends_only_its_connection() {
    let mut h = stream_ending(Framing::Raw, vec![b"ab".to_vec()], || panic!("producer"));
    assert_eq!(h.sent(), "body:ab");
    assert_eq!(h.stats().body_errors, 1);
    assert_eq!(h.stats().panics, 1);
}

fn temp_file(name: &str, content: &[u8]) -> std::fs::File {
    let path = std::env::temp_dir().join(format!("rp-{}-{name}", std::process::id()));
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(content).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    file
}

#[test]
fn a_file_region_is_read_a_piece_at_a_time_where_the_stream_cannot_sendfile() {
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let file = temp_file("region", &content);
    let mut h = bodies();
    h.stream().room = 0;
    h.peer_sends(b"get\nnext\n");
    let file = Mutex::new(Some(file));
    h.run_in(&[0], move |request| {
        let mut replies = Replies::new(None);
        if request == b"get" {
            let region = FileRegion::new(file.lock().unwrap().take().unwrap(), 1000, 250_000);
            replies.send(Reply::File(region));
        } else {
            replies.send(echo(request));
        }
        Some(replies)
    });
    for _ in 0..100 {
        // The file is read as the socket drains: one piece in memory at a time.
        assert!(
            h.conn.output.len() <= 64 * 1024 + 16,
            "{}",
            h.conn.output.len()
        );
        h.peer_reads(20_000);
    }
    h.peer_reads(usize::MAX / 2);
    let mut expected = b"file:".to_vec();
    expected.extend_from_slice(&content[1000..251_000]);
    expected.extend_from_slice(b":end\nnext\n");
    assert!(h.stream().sent == expected);
}

#[test]
fn a_file_shorter_than_its_region_ends_the_connection() {
    let file = temp_file("short", b"only this");
    let mut h = bodies();
    h.peer_sends(b"get\n");
    let file = Mutex::new(Some(file));
    h.run_in(&[0], move |_| {
        let mut replies = Replies::new(None);
        replies.send(Reply::File(FileRegion::new(
            file.lock().unwrap().take().unwrap(),
            0,
            100,
        )));
        Some(replies)
    });
    assert_eq!(h.sent(), "file:only this");
    assert_eq!(h.stats().body_errors, 1);
    assert_eq!(h.conn.ended, Some(CloseReason::BodyFailed));
    assert_eq!(h.state(), "Lingering");
}

#[test]
fn a_reply_can_exempt_its_connection_from_the_idle_timeout() {
    let mut h = lines();
    let idle = h.with(|conn, env| conn.next_deadline(env.limits));
    assert!(idle.is_some(), "the builder's idle timeout runs");
    h.peer_sends(b"quiet\n");
    h.run_in(&[0], |_| {
        let mut replies = Replies::new(None);
        replies.set_idle_timeout(None);
        replies.send(b"ok".to_vec());
        Some(replies)
    });
    assert_eq!(h.sent(), "ok\n");
    let quiet = h.with(|conn, env| conn.next_deadline(env.limits));
    assert_eq!(quiet, None, "no idle deadline once exempted");
}

/// Regression (found by `kv_server`'s pub/sub against redis-server): a push that reached the
/// reactor after a request it was made before was written after that request's reply. A
/// PUBLISH answered on one connection, then a PING from the subscriber on another reactor:
/// the PONG came first. A push is placed by the requests decoded when it was made.
#[test]
fn a_push_made_before_a_request_arrived_goes_before_its_reply_whenever_it_reaches_the_reactor() {
    let mut h = lines();
    h.pusher().push(b"pushed".to_vec()).unwrap();
    // The request arrives and is decoded before the reactor takes the push.
    h.peer_sends(b"ping\n");
    h.take_posts();
    h.answer_all(upper);
    assert_eq!(h.sent(), "pushed\nPING\n");
}
