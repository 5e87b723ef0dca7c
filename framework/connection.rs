//! One connection as its reactor sees it: buffers, sequence numbers, and the state machine
//! that decides when to read, what to write, and how to close cleanly.
//!
//! The rule the whole file serves (the seed's four-way close): a FIN from the peer means
//! "no more requests", never "drop the replies you owe me"; and the server never closes a
//! socket with unread input in the kernel, because that makes the kernel send a reset.
//!
//! The connection runs over any [`Transport`] and hands requests to any [`Dispatch`], so its
//! unit tests drive it over an in-memory stream. [`Connection::drive`] makes every bit of
//! progress there is (dispatch, read, change state, write) until none is left, so what the
//! connection does depends on its state, never on which event happened to come next.

use std::io;
use std::time::{Duration, Instant};

use crate::buffer::Buffer;
use crate::clock;
use crate::codec::{Codec, Farewell};
use crate::handler::{CloseReason, Context};
use crate::message::{Answer, ConnKey, Dispatch, Dispatched, Done};
use crate::net::Transport;
use crate::outbox::{Finish, Outbox};
use crate::pipeline::{Decoded, EndReason, Pipeline, Room};
use crate::socket::{Read, Socket};
use crate::stats::Counters;

/// Per-connection limits, validated by the builder.
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
    /// How long the preamble (PROXY header, TLS handshake) may take from the accept.
    pub handshake_timeout: Option<Duration>,
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

/// Where a connection is in the server's shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    /// The server is running.
    Running,
    /// The server is shutting down: every request that reached this connection's kernel
    /// buffer before is still read and served, so it keeps reading until a read finds that
    /// buffer empty (and what was read is decoded, all but an unfinished frame); then it
    /// ends, after the replies it owes.
    Draining,
    /// The server shut down before this connection's first request (or before its preamble
    /// was over): it may still send it until `until`, then drains as above.
    Grace { until: Instant },
}

/// What to do once the output is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterFlush {
    /// The peer has already sent its FIN: close now, our FIN completes the four-way close.
    Close,
    /// The peer may still be sending: shut down our write side and linger.
    Linger,
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

/// What a connection needs from its reactor while being driven.
pub(crate) struct Env<'a, C: Codec, S> {
    pub dispatch: &'a mut dyn Dispatch<C::Request, C::Response, S>,
    pub reactor: usize,
    pub counters: &'a Counters,
    pub limits: &'a Limits,
    /// The reactor's read buffer, shared by its connections.
    pub scratch: &'a mut Vec<u8>,
    pub now: Instant,
    /// Set while the server shuts down: nothing lingers past it.
    pub drain_deadline: Option<Instant>,
}

/// One accepted connection, with session type `S`, over stream `T`.
pub(crate) struct Connection<C: Codec, S, T> {
    socket: Socket<T>,
    key: ConnKey,
    ctx: Context,
    state: State,
    input: Buffer,
    output: Buffer,
    pipeline: Pipeline<C>,
    outbox: Outbox<C::Request, S>,
    /// Why it ended, once that is known: what the handler's close hook is told.
    ended: Option<CloseReason>,
    last_read: Instant,
    last_write: Instant,
    /// When the unfinished frame at the front of `input` started arriving.
    partial_since: Option<Instant>,
    /// When it was accepted: the preamble's clock.
    accepted: Instant,
    shutdown: Shutdown,
}

impl<C: Codec, S, T: Transport> Connection<C, S, T> {
    /// A new connection; its first work, the open hook, goes out with the first drive after
    /// the stream's preamble (if any) is over.
    /// `concurrent` is set in concurrent mode: the session each request gets.
    pub fn new(
        stream: T,
        (key, ctx): (ConnKey, Context),
        codec: C,
        limits: &Limits,
        concurrent: Option<fn() -> S>,
        now: Instant,
    ) -> Self {
        Connection {
            socket: Socket::new(stream),
            key,
            ctx,
            state: State::Open,
            input: Buffer::default(),
            output: Buffer::default(),
            pipeline: Pipeline::new(
                codec,
                Room {
                    max_frame: limits.max_frame,
                    max_in_flight: limits.max_in_flight,
                    output_high_water: limits.output_high_water,
                },
            ),
            outbox: Outbox::new(concurrent),
            ended: None,
            last_read: now,
            last_write: now,
            partial_since: None,
            accepted: now,
            shutdown: Shutdown::Running,
        }
    }

    pub fn stream_mut(&mut self) -> &mut T {
        self.socket.stream_mut()
    }

    pub fn ctx(&self) -> &Context {
        &self.ctx
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.pipeline.next_seq()
    }

    fn in_flight(&self) -> usize {
        self.pipeline.in_flight()
    }

    /// Requests received and not answered yet (waiting, running, or to be written).
    pub fn unanswered(&self) -> u64 {
        self.in_flight() as u64
    }

    /// Whether anything waits to be written: output, or records inside the stream.
    fn has_output(&self) -> bool {
        !self.output.is_empty() || self.socket.holds_output()
    }

    /// Bytes this connection holds in its buffers, for the stats.
    pub fn buffered(&self) -> usize {
        self.input.len() + self.output.len()
    }

    /// Whether this connection holds work stalled on a full job queue.
    pub fn is_stalled(&self) -> bool {
        self.outbox.is_stalled()
    }

    /// Readiness reported by the poll; `read_closed` when it also reported the peer's FIN.
    pub fn on_event(&mut self, readable: bool, read_closed: bool, writable: bool) {
        self.socket.on_event(readable, read_closed, writable);
    }

    /// Replies for requests at or after this are not written.
    fn cut(&self) -> u64 {
        match &self.state {
            State::Open | State::ReadClosed => u64::MAX,
            State::Ending { cut, .. } => *cut,
            _ => 0,
        }
    }

    /// The pool finished work of this connection. Nothing is written yet: the reactor
    /// drives the connection once after taking everything waiting in its inbox, so replies
    /// arriving together leave in one write.
    pub fn on_done(&mut self, done: Done<C::Response, S>, counters: &Counters, now: Instant) {
        match done {
            Done::Opened { outcome, .. } => match outcome {
                Ok((session, greeting)) => {
                    self.outbox.home(session, false);
                    if self.takes_requests() || matches!(self.state, State::Ending { .. }) {
                        let result = self.pipeline.encode_unsolicited(
                            greeting,
                            &mut self.output,
                            &self.ctx,
                            counters,
                        );
                        if let Err(reason) = result {
                            self.end(0, reason, counters);
                        }
                    }
                }
                Err(_) => {
                    self.outbox.lost();
                    self.end(0, EndReason::HandlerPanicked, counters);
                }
            },
            Done::Answered { seq, answer, .. } => self.answered(seq, answer, counters),
            Done::Ran {
                last,
                skipped,
                session,
                fresh,
                ..
            } => {
                self.outbox.home(session, fresh);
                Counters::add(&counters.skipped, skipped as u64);
                if let Some((seq, answer)) = last {
                    self.answered(seq, answer, counters);
                }
            }
        }
        self.encode_ready(counters, now);
    }

    /// Keeps one request's answer; a close or a panic in it ends the connection there, so
    /// nothing after it is handed on.
    fn answered(&mut self, seq: u64, answer: Answer<C::Response>, counters: &Counters) {
        if let Some((cut, reason)) = self.pipeline.answered(seq, answer, self.cut(), counters) {
            self.end(cut, reason, counters);
        }
    }

    /// Encodes the replies that are next in order (none before the greeting).
    fn encode_ready(&mut self, counters: &Counters, now: Instant) {
        if self.outbox.is_opening() {
            return;
        }
        if self.output.is_empty() {
            // The write-stall clock starts when there is something to write.
            self.last_write = now;
        }
        let cut = self.cut();
        if let Err(reason) = self
            .pipeline
            .encode_ready(&mut self.output, cut, &self.ctx, counters)
        {
            // Nothing after the last reply written is encoded.
            self.end(self.pipeline.write_seq(), reason, counters);
        }
    }

    /// The server ends the connection: the requests before `cut` are still served and
    /// answered; those after it that were not handed on yet never will be (counted as
    /// skipped). This is the one place that decides where a connection ends.
    pub fn end(&mut self, cut: u64, reason: EndReason, counters: &Counters) {
        let then = match self.state {
            State::Open => AfterFlush::Linger,
            State::ReadClosed => AfterFlush::Close,
            State::Ending { cut: earlier, .. } if earlier <= cut => return,
            State::Ending { then, .. } => then,
            State::Flushing { .. } | State::Lingering { .. } | State::Closed => return,
        };
        let (id, peer) = (self.ctx.connection_id, self.ctx.peer);
        match &reason {
            EndReason::Protocol(e) => {
                log::warn!("connection {id} ({peer}): protocol error: {e}; closing it")
            }
            EndReason::Timeout(which) => {
                log::info!("connection {id} ({peer}): {which:?}; closing it")
            }
            _ => {}
        }
        let skipped = self.outbox.cut(cut);
        Counters::add(&counters.skipped, skipped as u64);
        self.ended.get_or_insert(match &reason {
            EndReason::Protocol(_) => CloseReason::ProtocolError,
            EndReason::CodecPanicked | EndReason::HandlerPanicked => CloseReason::Panicked,
            EndReason::CloseRequested => CloseReason::Requested,
            EndReason::Timeout(_) => CloseReason::Timeout,
            EndReason::ServerShutdown => CloseReason::Shutdown,
        });
        self.input.clear();
        self.partial_since = None;
        self.state = State::Ending { cut, reason, then };
    }

    /// Makes every bit of progress there is: dispatch, read, change state, write, and again
    /// while any of them did something (a write may make room to dispatch or read more, and
    /// edge-triggered readiness will not announce bytes that were already waiting).
    pub fn drive(&mut self, env: &mut Env<'_, C, S>) -> Step {
        let mut budget = env.limits.read_per_wakeup;
        loop {
            let mut progress = self.dispatch_buffered(env);
            progress |= self.read(env, &mut budget);
            // A read that brings data opens the session before decoding it; one that only
            // finished the preamble (or found nothing, on a plain stream) opens it here.
            progress |= self.open_if_established(env);
            if self.drained_for_shutdown() {
                // Every request received before the shutdown is decoded and handed on.
                self.end(
                    self.pipeline.next_seq(),
                    EndReason::ServerShutdown,
                    env.counters,
                );
                progress = true;
            }
            progress |= self.advance(env);
            progress |= self.write(env);
            if let State::Closed = self.state {
                return Step::Close;
            }
            if !progress {
                break;
            }
        }
        if self.is_idle() {
            // Whatever the last exchange's size, an idle connection keeps little memory.
            self.input.shrink_idle();
            self.output.shrink_idle();
        }
        if budget == 0 && self.socket.may_read() && self.wants_input() {
            Step::Revisit
        } else {
            Step::Wait
        }
    }

    /// Whether the connection waits for its peer with nothing of its own to do: no request
    /// in flight or waiting, no output, no input kept.
    fn is_idle(&self) -> bool {
        self.in_flight() == 0 && self.input.is_empty() && !self.has_output()
    }

    /// Whether a shutdown may end the connection now: it took every request that reached
    /// it before (a read found the kernel's buffer empty, and the input left is at most an
    /// unfinished frame, since there is room to decode more and nothing was decoded).
    fn drained_for_shutdown(&mut self) -> bool {
        match self.shutdown {
            Shutdown::Running => return false,
            Shutdown::Grace { .. } if self.outbox.is_unopened() || self.requests() == 0 => {
                return false
            }
            // The first request came within the grace: from now on, drain as any other.
            Shutdown::Grace { .. } => self.shutdown = Shutdown::Draining,
            Shutdown::Draining => {}
        }
        self.takes_requests()
            && !self.socket.may_read()
            && (self.input.is_empty() || self.has_room())
    }

    /// Whether another request may be decoded: no batch waiting for room in the job queue,
    /// fewer than the in-flight limit, and output plus the replies to come under the mark.
    /// (Requests are decoded while the open hook waits for the queue, up to the limit, so a
    /// protocol error is still seen.)
    fn has_room(&self) -> bool {
        !self.outbox.is_batch_stalled() && self.pipeline.has_room(self.output.len())
    }

    /// Whether reading now is allowed: the state wants input and no limit is reached.
    fn wants_input(&self) -> bool {
        match self.state {
            State::Open => self.has_room(),
            // Input is discarded there, to keep the kernel buffer empty for a clean close.
            State::Ending { .. } | State::Flushing { .. } | State::Lingering { .. } => true,
            State::ReadClosed | State::Closed => false,
        }
    }

    fn takes_requests(&self) -> bool {
        matches!(self.state, State::Open | State::ReadClosed)
    }

    /// Reads until WouldBlock, a limit, or the end of this drive's `budget` of bytes.
    /// Returns whether anything was read (or the stream ended or failed).
    fn read(&mut self, env: &mut Env<'_, C, S>, budget: &mut usize) -> bool {
        let mut progress = false;
        while *budget > 0 && self.socket.may_read() && self.wants_input() {
            match self.socket.read(env.scratch) {
                Read::Data(n) => {
                    progress = true;
                    *budget = budget.saturating_sub(n);
                    self.last_read = env.now;
                    // The read that ends a preamble may carry the first request.
                    self.open_if_established(env);
                    if self.takes_requests() {
                        self.take_input(n, env);
                    }
                }
                Read::Eof => {
                    self.on_peer_eof();
                    return true;
                }
                Read::Drained => {}
                Read::Failed(e) => {
                    self.fail(e, env.counters);
                    return true;
                }
            }
        }
        progress
    }

    /// Decodes the `n` bytes just read into `env.scratch`, keeping what is left over.
    fn take_input(&mut self, n: usize, env: &mut Env<'_, C, S>) {
        if self.input.is_empty() {
            // The common case: decode straight from the scratch buffer, copy only leftovers.
            let scratch = std::mem::take(env.scratch);
            let used = self.decode_from(&scratch[..n], false, env);
            if used < n && self.takes_requests() {
                self.input.tail().extend_from_slice(&scratch[used..n]);
            }
            *env.scratch = scratch;
            self.track_partial(env.now, used > 0);
        } else {
            self.input.tail().extend_from_slice(&env.scratch[..n]);
            self.dispatch_buffered(env);
        }
    }

    /// Hands on what waits (the stalled work first), then decodes what the input buffer
    /// holds and hands that on. Returns whether anything left or was decoded.
    fn dispatch_buffered(&mut self, env: &mut Env<'_, C, S>) -> bool {
        let mut progress = self.hand_on(env);
        if !self.input.is_empty() && self.takes_requests() {
            let input = std::mem::take(&mut self.input);
            let used = self.decode_from(input.pending(), false, env);
            if self.takes_requests() {
                self.input = input;
                self.input.consume(used);
            }
            self.track_partial(env.now, used > 0);
            progress |= used > 0;
        }
        progress
    }

    /// Decodes requests from `src` while limits allow, then hands them on together; returns
    /// bytes used.
    fn decode_from(&mut self, src: &[u8], at_eof: bool, env: &mut Env<'_, C, S>) -> usize {
        let mut used = 0;
        while used < src.len() && self.has_room() && self.takes_requests() {
            match self
                .pipeline
                .decode(&src[used..], at_eof, &self.ctx, env.counters)
            {
                Ok(Some(Decoded::Request {
                    request,
                    seq,
                    size,
                    last,
                })) => {
                    used += size;
                    self.outbox.push(seq, request);
                    if last {
                        // Nothing after it is decoded: the close is decided before dispatch.
                        self.end(seq + 1, EndReason::CloseRequested, env.counters);
                    }
                }
                Ok(Some(Decoded::Refused(size))) => {
                    used += size;
                    self.encode_ready(env.counters, env.now);
                }
                Ok(Some(Decoded::Skipped(size))) => used += size,
                Ok(None) => break,
                Err(reason) => {
                    self.end(self.pipeline.next_seq(), reason, env.counters);
                    break;
                }
            }
        }
        self.hand_on(env);
        used
    }

    /// The peer's FIN came after an unfinished frame: asks the codec's `decode_eof` about
    /// it. Returns whether that decoded (or skipped) anything.
    fn decode_at_eof(&mut self, env: &mut Env<'_, C, S>) -> bool {
        let input = std::mem::take(&mut self.input);
        let used = self.decode_from(input.pending(), true, env);
        if self.takes_requests() {
            self.input = input;
            self.input.consume(used);
        }
        used > 0 || !self.takes_requests()
    }

    /// Once the stream's preamble is over, learns what it said (the client a PROXY header
    /// named) and hands the open hook on; returns whether it did.
    fn open_if_established(&mut self, env: &mut Env<'_, C, S>) -> bool {
        if !self.outbox.is_unopened() || !self.takes_requests() || !self.socket.is_established() {
            return false;
        }
        self.socket.stream_mut().apply_to(&mut self.ctx);
        // The idle clock starts with the session, not with the accept.
        self.last_read = env.now;
        if let Some(proxy) = self.ctx.proxy {
            log::debug!(
                "connection {} ({proxy}): PROXY header names client {}",
                self.ctx.connection_id,
                self.ctx.peer
            );
        }
        self.outbox.open(env.reactor, self.key, self.ctx);
        self.hand_on(env);
        true
    }

    /// Hands the outbox's work to the pool (a full queue gives it back and pauses this
    /// connection); returns whether any left.
    fn hand_on(&mut self, env: &mut Env<'_, C, S>) -> bool {
        let mut progress = false;
        while let Some(work) = self.outbox.next(env.reactor, self.key, self.ctx) {
            match env.dispatch.dispatch(work) {
                Dispatched::Queued => {}
                Dispatched::Ran(answers) => {
                    for done in answers {
                        self.on_done(done, env.counters, env.now);
                    }
                }
                Dispatched::Full(work) => {
                    self.outbox.stall(work);
                    return progress;
                }
                Dispatched::Gone(_) => {
                    // Only while the server is torn down: nobody is left to answer.
                    self.state = State::Closed;
                    return progress;
                }
            }
            progress = true;
        }
        progress
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

    fn on_peer_eof(&mut self) {
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

    /// The stream failed (a reset, most often): the connection is closed at once, counted
    /// once however many calls then fail.
    fn fail(&mut self, error: io::Error, counters: &Counters) {
        if let State::Closed = self.state {
            return;
        }
        let (id, peer) = (self.ctx.connection_id, self.ctx.peer);
        if error.kind() == io::ErrorKind::InvalidData {
            // The transport's bad input: a TLS failure, a PROXY header that is not one. Once
            // the server is ending the connection anyway it is not worth a count.
            if self.takes_requests() {
                Counters::add(&counters.transport_errors, 1);
            }
            log::info!("connection {id} ({peer}): {error}; closing it");
            self.ended.get_or_insert(CloseReason::ProtocolError);
        } else {
            Counters::add(&counters.resets, 1);
            if self.requests() == 0 && self.input.is_empty() {
                // A probe (a load balancer's health check) that connected and reset.
                log::debug!("connection {id} ({peer}): {error} before any request; closing it");
            } else {
                log::info!("connection {id} ({peer}): {error}; closing it");
            }
            self.ended.get_or_insert(CloseReason::Reset);
        }
        self.state = State::Closed;
    }

    /// Moves to the next state if the current one has nothing left to wait for; returns
    /// whether it moved.
    fn advance(&mut self, env: &mut Env<'_, C, S>) -> bool {
        match self.state {
            State::ReadClosed
                if self.in_flight() == 0
                    && !self.outbox.is_stalled()
                    && !self.outbox.is_opening()
                    && (self.input.is_empty() || self.has_room()) =>
            {
                // Room may have come back since the input was last decoded (an inline
                // handler answers within the drive): decode again before deciding.
                if !self.input.is_empty() && self.dispatch_buffered(env) {
                    return true;
                }
                if !matches!(self.state, State::ReadClosed) {
                    // Decoding it ended the connection (a protocol error).
                    return true;
                }
                // Everything decodable was decoded and answered: what is left is the start
                // of a request that will never be finished. The codec may still make
                // something of it.
                if !self.input.is_empty() && self.decode_at_eof(env) {
                    return true;
                }
                if !self.input.is_empty() {
                    log::debug!(
                        "connection {} ({}): peer closed with {} bytes of an unfinished request",
                        self.ctx.connection_id,
                        self.ctx.peer,
                        self.input.len()
                    );
                    self.input.clear();
                    self.partial_since = None;
                }
                self.state = State::Flushing {
                    then: AfterFlush::Close,
                };
            }
            // The greeting, if the open hook is still out, comes before the last words.
            State::Ending { cut, .. }
                if self.pipeline.write_seq() >= cut && !self.outbox.is_opening() =>
            {
                let State::Ending { reason, then, .. } =
                    std::mem::replace(&mut self.state, State::Closed)
                else {
                    unreachable!("matched above")
                };
                self.pipeline.drop_unwritten(env.counters);
                if self.output.is_empty() {
                    // The write-stall clock starts with these last words.
                    self.last_write = env.now;
                }
                let (ctx, counters) = (&self.ctx, env.counters);
                // Before the preamble is over the peer does not speak the protocol yet.
                let speaks = !self.outbox.is_unopened();
                match &reason {
                    _ if !speaks => {}
                    EndReason::Protocol(error) => {
                        self.pipeline
                            .error_reply(error, &mut self.output, ctx, counters)
                    }
                    EndReason::Timeout(why) => {
                        self.pipeline
                            .farewell(*why, &mut self.output, ctx, counters)
                    }
                    EndReason::ServerShutdown => {
                        let why = Farewell::Shutdown;
                        self.pipeline.farewell(why, &mut self.output, ctx, counters)
                    }
                    _ => {}
                }
                self.state = State::Flushing { then };
            }
            State::Flushing { then } if !self.has_output() => {
                self.state = match then {
                    AfterFlush::Close => {
                        self.socket.stream_mut().before_close();
                        State::Closed
                    }
                    AfterFlush::Linger => {
                        // Our FIN goes out now; the peer still reads everything before it.
                        self.socket.shutdown_write();
                        let until = clock::after(env.now, env.limits.linger);
                        // The peer's FIN may already be waiting: read until told otherwise.
                        self.socket.expect_eof();
                        State::Lingering {
                            until: env.drain_deadline.map_or(until, |d| d.min(until)),
                        }
                    }
                };
            }
            _ => return false,
        }
        true
    }

    /// The reactor is dropping this connection: account for what it still held.
    /// `otherwise` is why it ended if nothing else said so (the peer's FIN, most often).
    /// Returns where its session is, and why the connection ended, for the close hook.
    pub fn release(
        &mut self,
        counters: &Counters,
        otherwise: CloseReason,
    ) -> (Finish<S>, CloseReason) {
        self.pipeline.drop_unwritten(counters);
        let (finish, dropped) = self.outbox.finish();
        Counters::add(&counters.replies_dropped, dropped as u64);
        (finish, self.ended.unwrap_or(otherwise))
    }

    /// Writes output until WouldBlock; returns whether anything was written (or the
    /// stream failed).
    fn write(&mut self, env: &mut Env<'_, C, S>) -> bool {
        if let State::Closed = self.state {
            return false;
        }
        match self.socket.write(&mut self.output) {
            Ok(false) => false,
            Ok(true) => {
                self.last_write = env.now;
                true
            }
            Err(e) => {
                self.fail(e, env.counters);
                true
            }
        }
    }
}

#[path = "connection_deadlines.rs"]
mod deadlines;

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
