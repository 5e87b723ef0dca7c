//! The connection state machine driven over an in-memory stream: every state transition,
//! short reads and writes at every byte, and the regressions of the hardening issue.

// Tests build their expected output with `map(format!).collect()`: clearer than a `fold`.
#![allow(clippy::format_collect)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::codec::{
    AfterReply, Codec, DecodeError, Decoded, LengthPrefixedCodec, LineCodec, Output,
};
use crate::conn::work::{Dispatch, Dispatched, Done, Work};
use crate::handler::Replies;
use crate::push::{Link, Posted, PushSink};
use crate::timer::Scheduler;

/// The peer's end of an in-memory connection, as the server's socket sees it.
#[derive(Default)]
struct MemStream {
    /// Bytes the peer sent that the server has not read.
    incoming: VecDeque<u8>,
    /// The peer sent FIN after `incoming`.
    peer_fin: bool,
    /// The next read fails with a reset.
    reset: bool,
    /// Most bytes one read returns (0: no limit).
    read_chunk: usize,
    /// Bytes the socket buffer takes before WouldBlock.
    room: usize,
    /// Most bytes one write takes (0: no limit).
    write_chunk: usize,
    /// What the server wrote, in order.
    sent: Vec<u8>,
    /// The server shut down its write side (sent FIN).
    fin_sent: bool,
    /// Bytes of a preamble (a PROXY header, say) still to come before the stream is
    /// established; reads consume them and return none.
    preamble: usize,
}

impl Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let skip = self.preamble.min(self.incoming.len());
        self.preamble -= skip;
        self.incoming.drain(..skip);
        if self.incoming.is_empty() {
            return if self.peer_fin {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let mut n = buf.len().min(self.incoming.len());
        if self.read_chunk > 0 {
            n = n.min(self.read_chunk);
        }
        for (slot, byte) in buf.iter_mut().zip(self.incoming.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }
}

impl Write for MemStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        assert!(!self.fin_sent, "write after shutdown(Write)");
        if self.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let mut n = buf.len().min(self.room);
        if self.write_chunk > 0 {
            n = n.min(self.write_chunk);
        }
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.room -= n;
        self.sent.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for MemStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.fin_sent = true;
        Ok(())
    }

    fn is_established(&self) -> bool {
        self.preamble == 0
    }
}

/// A stand-in for the reactor's mailbox, for pushers: keeps what they post.
struct Posts<R>(Mutex<VecDeque<Posted<R>>>);

impl<R> Default for Posts<R> {
    fn default() -> Self {
        Posts(Mutex::new(VecDeque::new()))
    }
}

impl<R: Send> PushSink<R> for Posts<R> {
    fn post(&self, posted: Posted<R>) -> Result<(), Posted<R>> {
        self.0.lock().unwrap().push_back(posted);
        Ok(())
    }
}

/// A link for connection `key` whose pushes go to `sink`, with a push limit of 4.
fn test_link<R: Send + 'static>(
    key: ConnKey,
    sink: &Arc<Posts<R>>,
    counters: &Arc<Counters>,
) -> Arc<Link<R>> {
    let counters = Arc::clone(counters);
    Arc::new(Link::new(
        key,
        1,
        Arc::clone(sink) as Arc<dyn PushSink<R>>,
        4,
        Arc::clone(&counters),
        Arc::new(Scheduler::new("test".into(), counters)),
    ))
}

/// Work as the harness's connection hands it on.
type TestWork<C> = Work<<C as Codec>::Request, <C as Codec>::Response, ()>;

/// A stand-in for the pool: keeps the work; refuses it while `full`.
struct Jobs<Req, Resp> {
    queued: Vec<Work<Req, Resp, ()>>,
    full: bool,
}

impl<Req, Resp> Dispatch<Req, Resp, ()> for Jobs<Req, Resp> {
    fn dispatch(&mut self, work: Work<Req, Resp, ()>) -> Dispatched<Req, Resp, ()> {
        if self.full {
            return Dispatched::Full(work);
        }
        self.queued.push(work);
        Dispatched::Queued
    }
}

/// A line codec whose user code misbehaves on cue: decoding `panic` panics, encoding
/// `panic` panics, and a reply `close` ends the connection.
#[derive(Clone)]
struct Cues(LineCodec);

impl Codec for Cues {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        assert!(!input.starts_with(b"panic\n"), "decode cue");
        self.0.decode(input)
    }
    fn encode(&mut self, response: Vec<u8>, output: &mut Output<'_>) -> AfterReply {
        output.extend_from_slice(b"partial");
        assert!(response != b"panic", "encode cue");
        let len = output.len();
        output.truncate(len - 7);
        let close = response == b"close";
        self.0.encode(response, output);
        if close {
            AfterReply::Close
        } else {
            AfterReply::KeepOpen
        }
    }
    fn error_reply(&mut self, error: &DecodeError, output: &mut Vec<u8>) {
        output.extend_from_slice(format!("ERR {error}\n").as_bytes());
    }
}

fn limits() -> Limits {
    Limits {
        max_frame: 1 << 20,
        max_in_flight: 32,
        output_high_water: 1024,
        read_per_wakeup: 1 << 20,
        linger: Duration::from_secs(2),
        idle_timeout: Some(Duration::from_secs(60)),
        partial_frame_timeout: Some(Duration::from_secs(30)),
        write_stall_timeout: Some(Duration::from_secs(30)),
        handshake_timeout: Some(Duration::from_secs(10)),
    }
}

/// A handler that answers each request with `answer` (`None`: it panics), for the real
/// worker loop to run.
struct Answering<F, Req, Resp> {
    answer: F,
    _types: std::marker::PhantomData<fn(Req) -> Resp>,
}

impl<F, Req, Resp> Answering<F, Req, Resp> {
    fn new(answer: F) -> Self {
        Answering {
            answer,
            _types: std::marker::PhantomData,
        }
    }
}

impl<F, Req, Resp> crate::handler::Handler for Answering<F, Req, Resp>
where
    F: Fn(Req) -> Option<Replies<Resp>> + Send + Sync + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Request = Req;
    type Response = Resp;
    type Session = ();

    fn open(&self, _: &Context, _: &mut Replies<Resp>) {}

    fn call(&self, (): &mut (), request: Req, _: &Context, replies: &mut Replies<Resp>) {
        let Some(answer) = (self.answer)(request) else {
            panic!("the handler panics on cue");
        };
        let close = answer.closes();
        replies.idle_timeout = answer.idle_timeout;
        for response in answer.into_responses() {
            replies.send(response);
        }
        if close {
            replies.close();
        }
    }
}

/// One connection, its peer's stream, and a stand-in pool.
struct Harness<C: Codec> {
    conn: Connection<C, (), MemStream>,
    jobs: Jobs<C::Request, C::Response>,
    /// What the connection's pushers posted and the reactor has not taken yet.
    sink: Arc<Posts<C::Response>>,
    /// What the workers posted and the reactor has not taken yet.
    posted: VecDeque<Done<C::Response, ()>>,
    counters: Arc<Counters>,
    limits: Limits,
    scratch: Vec<u8>,
    now: Instant,
    step: Step,
}

impl<C: Codec> Harness<C> {
    /// A connection whose open hook has run (no greeting), in order.
    fn new(codec: C, limits: Limits) -> Self {
        let mut h = Self::opening(codec, limits, None);
        h.open(Replies::new(None));
        h
    }

    /// A connection in concurrent mode, opened.
    fn concurrent(codec: C, limits: Limits) -> Self {
        fn fresh() {}
        let mut h = Self::opening(codec, limits, Some(fresh));
        h.open(Replies::new(None));
        h
    }

    /// The open hook answers with `greeting`.
    fn open(&mut self, greeting: Replies<C::Response>) -> Step {
        let open = self.jobs.queued.remove(0);
        let Work::Open { key, ctx, .. } = open else {
            panic!("the first work is the open hook")
        };
        let done = Done::Opened {
            key,
            ctx,
            outcome: Ok(((), greeting)),
        };
        self.conn.on_done(done, &self.counters, self.now);
        self.event()
    }

    /// A connection whose open hook is still out.
    fn opening(codec: C, limits: Limits, concurrent: Option<fn()>) -> Self {
        Self::behind_preamble(codec, limits, concurrent, 0)
    }

    /// A connection whose stream is established once `preamble` bytes have arrived.
    fn behind_preamble(
        codec: C,
        limits: Limits,
        concurrent: Option<fn()>,
        preamble: usize,
    ) -> Self {
        let now = Instant::now();
        let stream = MemStream {
            room: usize::MAX,
            preamble,
            ..MemStream::default()
        };
        let ctx = Context::new(
            crate::handler::Peer::Tcp(SocketAddr::from(([127, 0, 0, 1], 7500))),
            1,
        );
        let key = ConnKey {
            slot: 0,
            generation: 0,
        };
        let sink = Arc::new(Posts::default());
        let counters = Arc::new(Counters::default());
        let mut h = Harness {
            conn: Connection::new(
                stream,
                (key, ctx, test_link(key, &sink, &counters)),
                codec,
                &limits,
                concurrent,
                now,
            ),
            sink,
            jobs: Jobs {
                queued: Vec::new(),
                full: false,
            },
            posted: VecDeque::new(),
            counters,
            limits,
            scratch: vec![0; 64 * 1024],
            now,
            step: Step::Wait,
        };
        h.event();
        h
    }

    fn with<R>(
        &mut self,
        f: impl FnOnce(&mut Connection<C, (), MemStream>, &mut Env<'_, C, ()>) -> R,
    ) -> R {
        let mut env = Env {
            dispatch: &mut self.jobs,
            reactor: 0,
            counters: &self.counters,
            limits: &self.limits,
            scratch: &mut self.scratch,
            now: self.now,
            drain_deadline: None,
        };
        f(&mut self.conn, &mut env)
    }

    /// A readiness event for whatever the stream has, then a drive, as the reactor does;
    /// again while the drive took some of the input (bytes still waiting after a short read
    /// arrived later, so the kernel announces them with a new edge).
    fn event(&mut self) -> Step {
        loop {
            let (fin, waiting) = (self.stream().peer_fin, self.stream().incoming.len());
            self.conn.on_event(true, fin, true);
            self.step = self.with(|conn, env| conn.drive(env));
            let left = self.stream().incoming.len();
            if self.step == Step::Close || left == 0 || left == waiting {
                return self.step;
            }
        }
    }

    fn stream(&mut self) -> &mut MemStream {
        self.conn.stream_mut()
    }

    fn peer_sends(&mut self, bytes: &[u8]) -> Step {
        self.stream().incoming.extend(bytes);
        self.event()
    }

    fn peer_fin(&mut self) -> Step {
        self.stream().peer_fin = true;
        self.event()
    }

    /// Requests handed to the pool and not yet answered.
    fn queued(&self) -> usize {
        self.jobs.queued.iter().map(|w| w.requests()).sum()
    }

    /// Workers run the queued batches in the order given by `order` (indices into the
    /// queue, each once) with the real worker loop (`pool::run_work`), each request answered
    /// by `answer` (`None`: the handler panics); what they post waits in `posted`.
    fn work_in(
        &mut self,
        order: &[usize],
        answer: impl Fn(C::Request) -> Option<Replies<C::Response>> + Send + Sync + 'static,
    ) {
        let handler = Answering::new(answer);
        let mut batches: Vec<Option<TestWork<C>>> = std::mem::take(&mut self.jobs.queued)
            .into_iter()
            .map(Some)
            .collect();
        for &i in order {
            let work = batches[i].take().expect("each work is run once");
            assert!(matches!(work, Work::Batch { .. }), "work {i} is a batch");
            let posted = &mut self.posted;
            crate::conn::work::run_work(
                &handler,
                work,
                &self.counters,
                Duration::MAX,
                &mut |done| posted.push_back(done),
            );
        }
        self.jobs.queued = batches.into_iter().flatten().collect();
    }

    /// The reactor takes up to `n` of the messages the workers posted, then drives the
    /// connection once (a worker still busy with a slow call has posted only some).
    fn deliver(&mut self, n: usize) -> Step {
        for _ in 0..n {
            let Some(done) = self.posted.pop_front() else {
                break;
            };
            self.conn.on_done(done, &self.counters, self.now);
        }
        self.step = self.with(|conn, env| conn.drive(env));
        self.step
    }

    /// Workers run the queued batches in `order` and the reactor takes all they posted.
    fn run_in(
        &mut self,
        order: &[usize],
        answer: impl Fn(C::Request) -> Option<Replies<C::Response>> + Send + Sync + 'static,
    ) -> Step {
        self.work_in(order, answer);
        self.deliver(usize::MAX)
    }

    /// Workers answer the queued batches in the order given, one response per request.
    fn answer_in(
        &mut self,
        order: &[usize],
        answer: impl Fn(C::Request) -> C::Response + Send + Sync + 'static,
    ) -> Step {
        self.run_in(order, move |request| Some(one(answer(request))))
    }

    fn answer_all(
        &mut self,
        answer: impl Fn(C::Request) -> C::Response + Send + Sync + 'static,
    ) -> Step {
        let order: Vec<usize> = (0..self.jobs.queued.len()).collect();
        self.answer_in(&order, answer)
    }

    fn sent(&mut self) -> String {
        String::from_utf8_lossy(&self.stream().sent).into_owned()
    }

    fn state(&self) -> &'static str {
        match self.conn.state {
            State::Open => "Open",
            State::ReadClosed => "ReadClosed",
            State::Ending { .. } => "Ending",
            State::Flushing { .. } => "Flushing",
            State::Lingering { .. } => "Lingering",
            State::Closed => "Closed",
        }
    }

    fn stats(&self) -> crate::Stats {
        self.counters.snapshot(0)
    }
}

fn one<R>(response: R) -> Replies<R> {
    let mut replies = Replies::new(None);
    replies.send(response);
    replies
}

fn upper(line: Vec<u8>) -> Vec<u8> {
    line.to_ascii_uppercase()
}

fn lines() -> Harness<LineCodec> {
    Harness::new(LineCodec::new(), limits())
}

#[path = "regressions.rs"]
mod regressions;

#[path = "barriers.rs"]
mod barriers;

#[path = "states.rs"]
mod states;

#[path = "output_path.rs"]
mod output_path;
