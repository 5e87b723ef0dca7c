//! Streamed bodies (`Output::stream`): pieces produced on a worker and written as the
//! socket drains, framed chunked (each piece a chunk, then the last chunk) or by length,
//! with the replies after them in order; a producer that blocks holds no other connection;
//! one that fails, panics, or breaks its announced length ends its connection cleanly after
//! the bytes written, counted in `body_errors`, and the server serves on.

use crate::common;
use crate::line_or::{self, Frame, LineOrCodec};

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};

use crossbeam_channel::{unbounded, Receiver, Sender};
use reactor_pool::{
    BodyStream, Builder, CloseReason, Context, Framing, Handler, Output, Replies, ServerHandle,
};

use crate::common::{connect, expect_clean_eof, read_exactly, send, wait_for_stats, WAIT_DEADLINE};

/// A streamed body between `BODY chunked\n` / `BODY {len}\n` and `END\n`.
struct BodyReply {
    framing: Framing,
    body: BodyStream,
}

impl Frame for BodyReply {
    fn encode(self, output: &mut Output<'_>) {
        let BodyReply { framing, body } = self;
        match framing {
            Framing::Length(len) => writeln!(output, "BODY {len}"),
            _ => writeln!(output, "BODY chunked"),
        }
        .expect("write to memory");
        output.stream(body, framing);
        output.extend_from_slice(b"END\n");
    }
}

type Reply = line_or::Reply<BodyReply>;
/// Lines in; a line, or `BODY chunked\n` / `BODY {len}\n`, the framed body, `END\n` out.
type StreamCodec = LineOrCodec<BodyReply>;

/// Piece `i` of a body: `k` bytes that differ from piece to piece.
fn piece(i: usize, k: usize) -> Vec<u8> {
    (0..k).map(|j| ((i * 131 + j * 7) % 251) as u8).collect()
}

/// `n` pieces of `k` bytes as chunked transfer coding frames them, with the last chunk
/// when `complete`.
fn chunked(n: usize, k: usize, complete: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        write!(out, "{k:x}\r\n").unwrap();
        out.extend(piece(i, k));
        out.extend_from_slice(b"\r\n");
    }
    if complete {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    out
}

/// `n` pieces of `k` bytes one after another.
fn raw(n: usize, k: usize) -> Vec<u8> {
    (0..n).flat_map(|i| piece(i, k)).collect()
}

/// What each body does after its `n` pieces of `k` bytes.
#[derive(Clone, Copy, PartialEq)]
enum Ending {
    /// Ends.
    Ends,
    /// Returns an error.
    Fails,
    /// Panics.
    Panics,
}

/// A producer of `n` pieces of `k` bytes, then `ending`; when `gate` is given it first
/// says it started and waits to be released (it blocks its worker meanwhile).
fn producer(
    n: usize,
    k: usize,
    ending: Ending,
    gate: Option<(Sender<()>, Receiver<()>)>,
) -> BodyStream {
    let mut i = 0;
    let mut gate = gate;
    BodyStream::new(move || {
        if let Some((started, release)) = gate.take() {
            let _ = started.send(());
            if release.recv_timeout(WAIT_DEADLINE).is_err() {
                return Err(io::Error::other("the test never released the producer"));
            }
        }
        if i < n {
            i += 1;
            return Ok(Some(piece(i - 1, k)));
        }
        match ending {
            Ending::Ends => Ok(None),
            Ending::Fails => Err(io::Error::other("the producer failed on purpose")),
            Ending::Panics => panic!("the producer panicked on purpose"),
        }
    })
}

/// `chunked N K`, `length N K`, `short N K` (announces 10 bytes more than it makes),
/// `long N K` (10 bytes fewer), `fail N K`, `panic N K`, `held N K` (chunked; its producer
/// blocks until the test releases it): a body of N pieces of K bytes. Anything else is
/// echoed. Each close reason goes to `closes`.
struct StreamServer {
    closes: Sender<CloseReason>,
    /// The held producer tells `started` it runs, then waits on `release`.
    started: Sender<()>,
    release: Receiver<()>,
}

impl Handler for StreamServer {
    type Request = Vec<u8>;
    type Response = Reply;
    type Session = ();

    fn open(&self, _: &Context, _: &mut Replies<Reply>) {}

    fn call(&self, _: &mut (), line: Vec<u8>, _: &Context, replies: &mut Replies<Reply>) {
        let text = String::from_utf8_lossy(&line).into_owned();
        let words: Vec<&str> = text.split_whitespace().collect();
        let reply = match words.as_slice() {
            [what, n, k] => {
                let (n, k): (usize, usize) = (n.parse().expect("n"), k.parse().expect("k"));
                let len = (n * k) as u64;
                let (framing, ending, gate) = match *what {
                    "chunked" => (Framing::Chunked, Ending::Ends, None),
                    "length" => (Framing::Length(len), Ending::Ends, None),
                    "short" => (Framing::Length(len + 10), Ending::Ends, None),
                    "long" => (Framing::Length(len - 10), Ending::Ends, None),
                    "fail" => (Framing::Chunked, Ending::Fails, None),
                    "panic" => (Framing::Chunked, Ending::Panics, None),
                    "held" => (
                        Framing::Chunked,
                        Ending::Ends,
                        Some((self.started.clone(), self.release.clone())),
                    ),
                    _ => panic!("bad request {text:?}"),
                };
                Reply::Framed(BodyReply {
                    framing,
                    body: producer(n, k, ending, gate),
                })
            }
            _ => Reply::Line(line),
        };
        replies.send(reply);
    }

    fn close(&self, _: (), _: &Context, reason: CloseReason) {
        let _ = self.closes.send(reason);
    }
}

struct Server {
    handle: ServerHandle,
    addr: SocketAddr,
    closed: Receiver<CloseReason>,
    started: Receiver<()>,
    release: Sender<()>,
}

fn start(name: &str) -> Server {
    common::init_logging();
    let (closes, closed) = unbounded();
    let (started_tx, started) = unbounded();
    let (release, release_rx) = unbounded();
    let handle = Builder::bind("127.0.0.1:0")
        .workers(2)
        // One reactor: a producer that held it would hold every connection.
        .reactors(1)
        .thread_name(name)
        .start(
            StreamCodec::default(),
            StreamServer {
                closes,
                started: started_tx,
                release: release_rx,
            },
        )
        .expect("start");
    let addr = handle.local_addr().tcp().unwrap();
    Server {
        handle,
        addr,
        closed,
        started,
        release,
    }
}

/// Reads exactly `want` and compares, reporting the first difference.
fn expect(client: &mut TcpStream, want: &[u8], what: &str) {
    let got = read_exactly(client, want.len());
    common::assert_same_bytes(&got, want, what);
}

/// Another connection is served: the server is alive.
fn served(addr: SocketAddr) {
    let mut other = connect(addr);
    send(&mut other, b"still here\n");
    expect(&mut other, b"still here\n", "another connection's reply");
}

#[test]
fn a_chunked_stream_comes_as_its_chunks_and_the_last_chunk_before_the_reply_after_it() {
    let server = start("sb-chunk");
    let mut client = connect(server.addr);
    send(&mut client, b"chunked 5 1000\nafter\n");
    let mut want = b"BODY chunked\n".to_vec();
    want.extend(chunked(5, 1000, true));
    want.extend_from_slice(b"END\nafter\n");
    expect(&mut client, &want, "a chunked body between the replies");
    // Megabytes, pulled as the socket drains, then a reply right after.
    send(&mut client, b"chunked 64 65536\nagain\n");
    let mut want = b"BODY chunked\n".to_vec();
    want.extend(chunked(64, 65536, true));
    want.extend_from_slice(b"END\nagain\n");
    expect(&mut client, &want, "a 4 MiB chunked body");
    let stats = server.handle.stats();
    assert_eq!((stats.body_errors, stats.panics), (0, 0), "{stats:#?}");
    drop(client);
    server.handle.shutdown();
}

#[test]
fn a_stream_of_a_given_length_comes_as_its_bytes_before_the_reply_after_it() {
    let server = start("sb-length");
    let mut client = connect(server.addr);
    send(&mut client, b"length 3 1000\nafter\n");
    let mut want = b"BODY 3000\n".to_vec();
    want.extend(raw(3, 1000));
    want.extend_from_slice(b"END\nafter\n");
    expect(
        &mut client,
        &want,
        "a body of 3000 bytes between the replies",
    );
    // 4 MB to a client with a small window: pieces come back while bytes still wait.
    let mut slow = common::connect_with_recv_buffer(server.addr, 16 * 1024);
    send(&mut slow, b"length 100 40000\nagain\n");
    let mut want = b"BODY 4000000\n".to_vec();
    want.extend(raw(100, 40000));
    want.extend_from_slice(b"END\nagain\n");
    expect(&mut slow, &want, "a body of 4 MB");
    assert_eq!(server.handle.stats().body_errors, 0);
    drop((client, slow));
    server.handle.shutdown();
}

#[test]
fn a_producer_that_blocks_holds_no_other_connection() {
    let server = start("sb-held");
    let mut held = connect(server.addr);
    send(&mut held, b"held 3 1000\nafter\n");
    server
        .started
        .recv_timeout(WAIT_DEADLINE)
        .expect("the producer to start");
    // The producer blocks a worker now; another connection (on the same reactor) is served.
    let mut other = connect(server.addr);
    send(&mut other, b"hello\n");
    expect(&mut other, b"hello\n", "the other connection's reply");
    server.release.send(()).expect("release the producer");
    let mut want = b"BODY chunked\n".to_vec();
    want.extend(chunked(3, 1000, true));
    want.extend_from_slice(b"END\nafter\n");
    expect(&mut held, &want, "the held body, once released");
    assert_eq!(server.handle.stats().body_errors, 0);
    drop((held, other));
    server.handle.shutdown();
}

/// Sends `request` (and a request after it that must never be answered), expects exactly
/// `want` and then a clean EOF; then one body error, the close hook told `BodyFailed`, and
/// the server serving another connection.
fn cut_short(server: Server, request: &str, want: &[u8]) -> ServerHandle {
    let mut client = connect(server.addr);
    send(&mut client, format!("{request}\nnever\n").as_bytes());
    let got = expect_clean_eof(&mut client, request);
    common::assert_same_bytes(&got, want, &format!("{request}: what came before the EOF"));
    let stats = wait_for_stats(&server.handle, "the connection closed", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.body_errors, 1, "{stats:#?}");
    assert_eq!(
        server
            .closed
            .recv_timeout(WAIT_DEADLINE)
            .expect("the close hook"),
        CloseReason::BodyFailed
    );
    served(server.addr);
    drop(client);
    server.handle
}

#[test]
fn a_producer_that_fails_mid_way_cuts_the_body_there_and_closes_the_connection_cleanly() {
    let server = start("sb-fail");
    let mut want = b"BODY chunked\n".to_vec();
    // Three chunks, no last chunk, no `END`.
    want.extend(chunked(3, 1000, false));
    let handle = cut_short(server, "fail 3 1000", &want);
    assert_eq!(handle.stats().panics, 0);
    handle.shutdown();
}

#[test]
fn a_producer_that_panics_mid_way_is_counted_and_its_connection_closed_cleanly() {
    let server = start("sb-panic");
    let mut want = b"BODY chunked\n".to_vec();
    want.extend(chunked(2, 1000, false));
    let handle = cut_short(server, "panic 2 1000", &want);
    let stats = wait_for_stats(&handle, "the panic counted", |s| s.panics == 1);
    assert_eq!(stats.body_errors, 1, "{stats:#?}");
    handle.shutdown();
}

#[test]
fn a_stream_that_ends_short_of_its_length_closes_the_connection_after_its_bytes() {
    let server = start("sb-short");
    let mut want = b"BODY 3010\n".to_vec();
    want.extend(raw(3, 1000));
    cut_short(server, "short 3 1000", &want).shutdown();
}

#[test]
fn a_stream_that_runs_past_its_length_is_cut_at_it_and_closes_the_connection() {
    let server = start("sb-long");
    let mut want = b"BODY 2990\n".to_vec();
    // Exactly its length: the 10 bytes past it are not sent.
    want.extend(&raw(3, 1000)[..2990]);
    cut_short(server, "long 3 1000", &want).shutdown();
}
