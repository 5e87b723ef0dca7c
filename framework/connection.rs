//! One TCP connection as its reactor sees it: buffers, sequence numbers, and the state
//! machine that decides when to read, what to write, and how to close cleanly.
//!
//! The rule the whole file serves (the seed's four-way close): a FIN from the peer means
//! "no more requests", never "drop the replies you owe me"; and the server never closes a
//! socket with unread input in the kernel, because that makes the kernel send a reset.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use mio::net::TcpStream;

use crate::buffer::Buffer;
use crate::codec::{AfterReply, Codec, DecodeError};
use crate::handler::{Context, Handler};
use crate::pool::{self, Job, Reply};
use crate::reactor::ConnKey;
use crate::stats::Counters;

/// Per-connection limits, copied from the builder.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_frame: usize,
    pub max_in_flight: usize,
    pub output_high_water: usize,
    pub read_per_wakeup: usize,
    pub linger: Duration,
    pub idle_timeout: Option<Duration>,
    pub partial_frame_timeout: Option<Duration>,
    pub write_stall_timeout: Option<Duration>,
}

/// Where a connection is in its life.
#[derive(Debug)]
enum State {
    /// Reading, decoding, dispatching and writing.
    Open,
    /// The peer sent FIN (read returned 0): no more requests will come, but every request
    /// already received is still served and answered before the server closes.
    ReadClosed,
    /// The server decided to end the connection. Replies for requests before `cut` are
    /// still written, then the reason's error reply (if any); input is read and discarded.
    Ending {
        cut: u64,
        reason: EndReason,
        then: AfterFlush,
    },
    /// Nothing more will be added to the output: write it out, then `then`.
    Flushing { then: AfterFlush },
    /// Our FIN is sent (write side shut down); input is read and discarded until the peer's
    /// FIN or `until`, so the peer reads our last bytes instead of a reset.
    Lingering { until: Instant },
    /// Done: the reactor deregisters and drops the socket.
    Closed,
}

/// What to do once the output is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterFlush {
    /// The peer has already sent its FIN: close now, our FIN completes the four-way close.
    Close,
    /// The peer may still be sending: shut down our write side and linger.
    Linger,
}

/// Why the server ends a connection.
#[derive(Debug)]
pub(crate) enum EndReason {
    Protocol(DecodeError),
    HandlerPanicked,
    CloseRequested,
    Timeout(&'static str),
    ServerShutdown,
}

/// Whether a readiness event may still have something for us. Readiness is edge-triggered:
/// once the socket is drained nothing more is announced until new data (or room) arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// There may be more: a short read or write means the socket is drained.
    Ready,
    /// The poll also reported the peer's FIN: read until `read()` returns 0, however short
    /// the reads, because no further event will announce that end of stream.
    ReadyToEof,
    /// Drained: wait for the next event.
    Exhausted,
}

/// What the reactor should do with the connection after driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Wait for the next event, reply or timer.
    Wait,
    /// It stopped reading only because of the per-wake-up cap: drive it again soon.
    Revisit,
    /// Deregister and drop it.
    Close,
}

/// A handler run on the reactor thread (inline mode).
pub(crate) type InlineHandler<C> =
    dyn Handler<Request = <C as Codec>::Request, Response = <C as Codec>::Response>;

/// What a connection needs from its reactor while being driven.
pub(crate) struct Io<'a, C: Codec> {
    pub jobs: &'a Sender<Job<C::Request>>,
    /// Set in inline mode: requests are answered here instead of going to the pool.
    pub inline: Option<&'a InlineHandler<C>>,
    pub slow_handler: Duration,
    pub reactor: usize,
    pub counters: &'a Counters,
    pub limits: &'a Limits,
    pub scratch: &'a mut [u8],
    pub now: Instant,
    /// Set while the server shuts down: nothing lingers past it.
    pub drain_deadline: Option<Instant>,
}

/// One accepted connection.
pub(crate) struct Connection<C: Codec> {
    stream: TcpStream,
    key: ConnKey,
    ctx: Context,
    codec: C,
    state: State,
    input: Buffer,
    output: Buffer,
    /// Sequence number of the next request to dispatch.
    next_seq: u64,
    /// Sequence number of the next reply to write; `next_seq - write_seq` are in flight.
    write_seq: u64,
    /// Replies that came back before an earlier one; index 0 is `write_seq`.
    reorder: VecDeque<Option<C::Response>>,
    /// Input bytes of each request in flight, oldest first: a stand-in for the size of the
    /// replies still to come, so output stays near the high-water mark.
    request_sizes: VecDeque<usize>,
    in_flight_bytes: usize,
    /// A decoded request the full job queue refused; reading pauses until it is taken.
    stalled: Option<Job<C::Request>>,
    read_readiness: Readiness,
    write_readiness: Readiness,
    last_read: Instant,
    last_write: Instant,
    /// When the unfinished frame at the front of `input` started arriving.
    partial_since: Option<Instant>,
    /// The deadline this connection has in the reactor's timer heap.
    pub(crate) armed: Option<Instant>,
    /// Bytes last reported to `Counters::bytes_buffered`.
    accounted: usize,
    /// A reply arrived and the reactor has this connection on its list to drive.
    pub(crate) drive_queued: bool,
}

impl<C: Codec> Connection<C> {
    pub fn new(stream: TcpStream, key: ConnKey, ctx: Context, codec: C, now: Instant) -> Self {
        Connection {
            stream,
            key,
            ctx,
            codec,
            state: State::Open,
            input: Buffer::default(),
            output: Buffer::default(),
            next_seq: 0,
            write_seq: 0,
            reorder: VecDeque::new(),
            request_sizes: VecDeque::new(),
            in_flight_bytes: 0,
            stalled: None,
            read_readiness: Readiness::Ready,
            write_readiness: Readiness::Ready,
            last_read: now,
            last_write: now,
            partial_since: None,
            armed: None,
            accounted: 0,
            drive_queued: false,
        }
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn ctx(&self) -> &Context {
        &self.ctx
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.next_seq
    }

    fn in_flight(&self) -> usize {
        (self.next_seq - self.write_seq) as usize
    }

    /// Bytes this connection holds in its buffers, for the stats.
    pub fn buffered(&self) -> usize {
        self.input.len() + self.output.len()
    }

    pub fn accounted_mut(&mut self) -> &mut usize {
        &mut self.accounted
    }

    /// Readiness reported by the poll; `read_closed` when it also reported the peer's FIN.
    pub fn on_event(&mut self, readable: bool, read_closed: bool, writable: bool) {
        if read_closed {
            self.read_readiness = Readiness::ReadyToEof;
        } else if readable && self.read_readiness == Readiness::Exhausted {
            self.read_readiness = Readiness::Ready;
        }
        if writable {
            self.write_readiness = Readiness::Ready;
        }
    }

    /// A handler finished one of this connection's requests. Nothing is written yet: the
    /// reactor drives the connection once after taking every reply waiting in its inbox,
    /// so replies that arrive together leave in one write.
    pub fn on_reply(&mut self, reply: Reply<C::Response>, counters: &Counters, now: Instant) {
        let cut = match &self.state {
            State::Open | State::ReadClosed => u64::MAX,
            State::Ending { cut, .. } => *cut,
            _ => 0,
        };
        if reply.seq >= cut || reply.seq < self.write_seq {
            Counters::add(&counters.replies_dropped, 1);
            return;
        }
        match reply.outcome {
            Ok(response) => {
                let index = (reply.seq - self.write_seq) as usize;
                if self.reorder.len() <= index {
                    self.reorder.resize_with(index + 1, || None);
                }
                self.reorder[index] = Some(response);
                self.encode_ready(counters, now);
            }
            Err(_) => {
                Counters::add(&counters.replies_dropped, 1);
                self.end(reply.seq, EndReason::HandlerPanicked);
            }
        }
    }

    /// Encodes the replies that are next in order.
    fn encode_ready(&mut self, counters: &Counters, now: Instant) {
        if self.output.is_empty() {
            // The write-stall clock starts when there is something to write.
            self.last_write = now;
        }
        while let Some(Some(_)) = self.reorder.front() {
            let response = self.reorder.pop_front().flatten().expect("checked above");
            let seq = self.write_seq;
            self.write_seq += 1;
            self.in_flight_bytes -= self.request_sizes.pop_front().unwrap_or(0);
            Counters::add(&counters.responses, 1);
            if self.codec.encode(response, self.output.tail()) == AfterReply::Close {
                self.end(seq + 1, EndReason::CloseRequested);
                return;
            }
        }
    }

    /// The server ends the connection: replies before `cut` are still owed.
    pub fn end(&mut self, mut cut: u64, reason: EndReason) {
        if let Some(job) = &self.stalled {
            // The pool never took it: no reply will come for it or anything after it.
            cut = cut.min(job.seq);
        }
        let then = match self.state {
            State::Open => AfterFlush::Linger,
            State::ReadClosed => AfterFlush::Close,
            State::Ending { cut: earlier, .. } if earlier <= cut => return,
            State::Ending { then, .. } => then,
            State::Flushing { .. } | State::Lingering { .. } | State::Closed => return,
        };
        match &reason {
            EndReason::Protocol(e) => log::warn!(
                "connection {} ({}): protocol error: {e}; closing it",
                self.ctx.connection_id,
                self.ctx.peer
            ),
            EndReason::Timeout(which) => log::info!(
                "connection {} ({}): {which} timeout; closing it",
                self.ctx.connection_id,
                self.ctx.peer
            ),
            _ => {}
        }
        self.stalled = None;
        self.input.clear();
        self.partial_since = None;
        self.state = State::Ending { cut, reason, then };
    }

    /// Makes every possible bit of progress: dispatch, read, encode, write, change state.
    pub fn drive(&mut self, io: &mut Io<'_, C>) -> Step {
        let mut budget = io.limits.read_per_wakeup;
        loop {
            self.dispatch_buffered(io);
            let step = self.read(io, &mut budget);
            self.advance(io);
            let written = self.write(io);
            if matches!(self.state, State::Closed) {
                return Step::Close;
            }
            // Writing may have made room to read again, and edge-triggered readiness will
            // not announce bytes that were already waiting: go round while that is so.
            let again = written > 0
                && step == Step::Wait
                && self.read_readiness != Readiness::Exhausted
                && self.wants_input(io.limits);
            if !again {
                return step;
            }
        }
    }

    /// Whether another request may be dispatched: no stalled job, fewer than the in-flight
    /// limit, and output plus replies to come under the high-water mark.
    fn has_room(&self, limits: &Limits) -> bool {
        self.stalled.is_none()
            && self.in_flight() < limits.max_in_flight
            && self.output.len() + self.in_flight_bytes < limits.output_high_water
    }

    /// Whether reading now is allowed: the state wants input and no limit is reached.
    fn wants_input(&self, limits: &Limits) -> bool {
        match self.state {
            State::Open => self.has_room(limits),
            // Input is discarded there, to keep the kernel buffer empty for a clean close.
            State::Ending { .. } | State::Flushing { .. } | State::Lingering { .. } => true,
            State::ReadClosed | State::Closed => false,
        }
    }

    fn takes_requests(&self) -> bool {
        matches!(self.state, State::Open | State::ReadClosed)
    }

    /// Reads until WouldBlock, a limit, or the end of this wake-up's `budget` of bytes.
    fn read(&mut self, io: &mut Io<'_, C>, budget: &mut usize) -> Step {
        while self.read_readiness != Readiness::Exhausted && self.wants_input(io.limits) {
            if *budget == 0 {
                return Step::Revisit;
            }
            match self.stream.read(io.scratch) {
                Ok(0) => {
                    self.on_peer_eof();
                    break;
                }
                Ok(n) => {
                    *budget = budget.saturating_sub(n);
                    if n < io.scratch.len() && self.read_readiness == Readiness::Ready {
                        // A short read drained the socket: skip the read that would only
                        // say WouldBlock. New data raises a new edge.
                        self.read_readiness = Readiness::Exhausted;
                    }
                    self.last_read = io.now;
                    if self.takes_requests() {
                        self.take_input(n, io);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.read_readiness = Readiness::Exhausted;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(e, io.counters);
                    break;
                }
            }
        }
        Step::Wait
    }

    /// Decodes the `n` bytes just read into `io.scratch`, keeping what is left over.
    fn take_input(&mut self, n: usize, io: &mut Io<'_, C>) {
        if self.input.is_empty() {
            // The common case: decode straight from the scratch buffer, copy only leftovers.
            let scratch = std::mem::take(&mut io.scratch);
            let used = self.decode_from(&scratch[..n], io);
            if used < n && self.takes_requests() {
                self.input.tail().extend_from_slice(&scratch[used..n]);
            }
            io.scratch = scratch;
            self.track_partial(io.now, used > 0);
        } else {
            self.input.tail().extend_from_slice(&io.scratch[..n]);
            self.dispatch_buffered(io);
        }
    }

    /// Dispatches the stalled job, then whatever the input buffer decodes to.
    fn dispatch_buffered(&mut self, io: &mut Io<'_, C>) {
        if let Some(job) = self.stalled.take() {
            if !self.send_job(job, io) {
                return;
            }
        }
        if self.input.is_empty() || !self.takes_requests() {
            return;
        }
        let input = std::mem::take(&mut self.input);
        let used = self.decode_from(input.pending(), io);
        if self.takes_requests() {
            self.input = input;
            self.input.consume(used);
        }
        self.track_partial(io.now, used > 0);
    }

    /// Decodes and dispatches requests from `src` while limits allow; returns bytes used.
    fn decode_from(&mut self, src: &[u8], io: &mut Io<'_, C>) -> usize {
        let mut used = 0;
        while self.has_room(io.limits) && self.takes_requests() {
            match self.codec.decode(&src[used..]) {
                Ok(Some((request, consumed))) => {
                    debug_assert!(consumed > 0, "a codec must consume what it decodes");
                    let consumed = consumed.clamp(1, src.len() - used);
                    used += consumed;
                    self.request_sizes.push_back(consumed);
                    self.in_flight_bytes += consumed;
                    let job = Job {
                        reactor: io.reactor,
                        key: self.key,
                        seq: self.next_seq,
                        request,
                        ctx: self.ctx,
                    };
                    self.next_seq += 1;
                    self.send_job(job, io);
                }
                Ok(None) if src.len() - used > io.limits.max_frame => {
                    // The codec keeps waiting, but no request may be this large.
                    let error = DecodeError::FrameTooLarge {
                        size: src.len() - used,
                        max: io.limits.max_frame,
                    };
                    Counters::add(&io.counters.protocol_errors, 1);
                    self.end(self.next_seq, EndReason::Protocol(error));
                    break;
                }
                Ok(None) => break,
                Err(error) => {
                    Counters::add(&io.counters.protocol_errors, 1);
                    self.end(self.next_seq, EndReason::Protocol(error));
                    break;
                }
            }
        }
        used
    }

    /// Hands a job to the pool (a full queue keeps it here and pauses this connection), or
    /// in inline mode answers it at once.
    fn send_job(&mut self, job: Job<C::Request>, io: &mut Io<'_, C>) -> bool {
        if let Some(handler) = io.inline {
            Counters::add(&io.counters.requests, 1);
            let reply = pool::run_job(handler, job, io.counters, io.slow_handler);
            self.on_reply(reply, io.counters, io.now);
            return true;
        }
        match io.jobs.try_send(job) {
            Ok(()) => {
                // Counted when the pool has it, so a stalled request dropped with its
                // connection never shows as in flight.
                Counters::add(&io.counters.requests, 1);
                true
            }
            Err(TrySendError::Full(job)) => {
                self.stalled = Some(job);
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                // Only while the server is torn down: there is nobody to answer.
                self.state = State::Closed;
                false
            }
        }
    }

    /// Keeps `partial_since` at the instant the unfinished request at the front of the input
    /// started: reset when a request was decoded (`progressed`), cleared when input is empty.
    fn track_partial(&mut self, now: Instant, progressed: bool) {
        if self.input.is_empty() {
            self.partial_since = None;
        } else if progressed || self.partial_since.is_none() {
            self.partial_since = Some(now);
        }
    }

    /// Whether this connection holds a request stalled on a full job queue.
    pub fn is_stalled(&self) -> bool {
        self.stalled.is_some()
    }

    fn on_peer_eof(&mut self) {
        self.read_readiness = Readiness::Exhausted;
        self.state = match std::mem::replace(&mut self.state, State::Closed) {
            State::Open => State::ReadClosed,
            State::Ending { cut, reason, .. } => State::Ending {
                cut,
                reason,
                then: AfterFlush::Close,
            },
            State::Flushing { .. } => State::Flushing {
                then: AfterFlush::Close,
            },
            State::ReadClosed | State::Lingering { .. } | State::Closed => State::Closed,
        };
    }

    fn fail(&mut self, error: io::Error, counters: &Counters) {
        Counters::add(&counters.resets, 1);
        log::info!(
            "connection {} ({}): {error}; closing it",
            self.ctx.connection_id,
            self.ctx.peer
        );
        self.state = State::Closed;
    }

    /// Moves to the next state once the current one has nothing left to wait for.
    fn advance(&mut self, io: &Io<'_, C>) {
        if let State::ReadClosed = self.state {
            let drained = self.in_flight() == 0 && self.has_room(io.limits);
            if drained {
                if !self.input.is_empty() {
                    log::debug!(
                        "connection {} ({}): peer closed with {} bytes of an unfinished request",
                        self.ctx.connection_id,
                        self.ctx.peer,
                        self.input.len()
                    );
                    self.input.clear();
                }
                self.state = State::Flushing {
                    then: AfterFlush::Close,
                };
            }
        }
        if let State::Ending { cut, .. } = self.state {
            if self.write_seq >= cut {
                let State::Ending { reason, then, .. } =
                    std::mem::replace(&mut self.state, State::Closed)
                else {
                    unreachable!("matched above")
                };
                self.reorder.clear();
                if let EndReason::Protocol(error) = &reason {
                    self.codec.error_reply(error, self.output.tail());
                }
                self.state = State::Flushing { then };
            }
        }
    }

    /// Writes output until WouldBlock, then finishes a flush. Returns the bytes written.
    fn write(&mut self, io: &mut Io<'_, C>) -> usize {
        let mut written = 0;
        while !self.output.is_empty() && self.write_readiness == Readiness::Ready {
            match self.stream.write(self.output.pending()) {
                Ok(0) => {
                    self.fail(io::ErrorKind::WriteZero.into(), io.counters);
                    return written;
                }
                Ok(n) => {
                    if n < self.output.len() {
                        // A short write filled the socket buffer: wait for room.
                        self.write_readiness = Readiness::Exhausted;
                    }
                    self.output.consume(n);
                    self.last_write = io.now;
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.write_readiness = Readiness::Exhausted;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(e, io.counters);
                    return written;
                }
            }
        }
        if let State::Flushing { then } = self.state {
            if self.output.is_empty() {
                self.state = match then {
                    AfterFlush::Close => State::Closed,
                    AfterFlush::Linger => {
                        // Our FIN goes out now; the peer still reads everything before it.
                        let _ = self.stream.shutdown(Shutdown::Write);
                        let until = io.now + io.limits.linger;
                        State::Lingering {
                            until: io.drain_deadline.map_or(until, |d| d.min(until)),
                        }
                    }
                };
                if let State::Lingering { .. } = self.state {
                    // The peer's FIN may already be in the buffer.
                    self.read_readiness = Readiness::ReadyToEof;
                    self.read(io, &mut io.limits.read_per_wakeup.clone());
                }
            }
        }
        written
    }

    /// The earliest instant at which a timeout would end this connection.
    pub fn next_deadline(&self, limits: &Limits) -> Option<Instant> {
        let after = |since: Instant, limit: Option<Duration>| limit.map(|d| since + d);
        // Requests in flight or stalled mean the server, not the peer, is the one to wait for.
        let waiting_on_peer = self.in_flight() == 0 && self.stalled.is_none();
        match self.state {
            State::Lingering { until } => Some(until),
            State::Closed => None,
            _ if !self.output.is_empty() => after(self.last_write, limits.write_stall_timeout),
            State::Open | State::ReadClosed if waiting_on_peer => match self.partial_since {
                Some(since) => after(since, limits.partial_frame_timeout),
                None if matches!(self.state, State::Open) => {
                    after(self.last_read.max(self.last_write), limits.idle_timeout)
                }
                None => None,
            },
            _ => None,
        }
    }

    /// A timer fired: ends the connection if one of its deadlines has passed.
    pub fn on_timer(&mut self, io: &mut Io<'_, C>) -> Step {
        let Some(deadline) = self.next_deadline(io.limits) else {
            return Step::Wait;
        };
        if deadline > io.now {
            return Step::Wait;
        }
        if let State::Lingering { .. } = self.state {
            // The end of a lingering close, not a timeout of the connection: it was
            // counted under the reason it was ended for.
            self.state = State::Closed;
            return Step::Close;
        }
        Counters::add(&io.counters.timeouts, 1);
        if !self.output.is_empty() {
            log::info!(
                "connection {} ({}): peer stopped reading (write-stall timeout); closing it",
                self.ctx.connection_id,
                self.ctx.peer
            );
            self.state = State::Closed;
            return Step::Close;
        }
        let which = if self.partial_since.is_some() {
            "partial-frame"
        } else {
            "idle"
        };
        self.end(self.next_seq, EndReason::Timeout(which));
        self.drive(io)
    }

    /// The server is shutting down: finish what is in flight, then close.
    pub fn shut_down(&mut self, io: &mut Io<'_, C>) -> Step {
        self.end(self.next_seq, EndReason::ServerShutdown);
        self.drive(io)
    }
}
