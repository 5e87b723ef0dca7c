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

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{Codec, Farewell};
use crate::conn::outbox::{Finish, Outbox};
use crate::conn::outgoing::Outgoing;
use crate::conn::pipeline::{EndReason, Pipeline, Room};
use crate::conn::socket::Socket;
use crate::conn::work::{ConnKey, Dispatch};
use crate::handler::{CloseReason, Context};
use crate::push::Link;
use crate::stats::Counters;
use crate::transport::net::Transport;
use crate::util::buffer::Buffer;
use crate::util::clock;

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
    output: Outgoing,
    pipeline: Pipeline<C>,
    outbox: Outbox<C::Request, C::Response, S>,
    /// What the connection shares with its pushers.
    link: Arc<Link<C::Response>>,
    /// The idle timeout: the builder's, unless a reply set the connection's own.
    idle_timeout: Option<Duration>,
    /// A streamed body's next piece waits for room in the job queue.
    pull_stalled: bool,
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
        (key, ctx, link): (ConnKey, Context, Arc<Link<C::Response>>),
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
            output: Outgoing::default(),
            pipeline: Pipeline::new(
                codec,
                Room {
                    max_frame: limits.max_frame,
                    max_in_flight: limits.max_in_flight,
                    output_high_water: limits.output_high_water,
                },
            ),
            outbox: Outbox::new(concurrent),
            link,
            idle_timeout: limits.idle_timeout,
            pull_stalled: false,
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

    /// Requests received and not answered yet (waiting, running, or to be written).
    pub fn in_flight(&self) -> usize {
        self.pipeline.in_flight()
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
        self.outbox.is_stalled() || self.pull_stalled
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
                log::warn!("connection {id} ({peer}): protocol error: {e}; closing it");
            }
            EndReason::Timeout(which) => {
                log::info!("connection {id} ({peer}): {which:?}; closing it");
            }
            _ => {}
        }
        let skipped = self.outbox.cut(cut);
        Counters::add(&counters.skipped, skipped as u64);
        // Pushes from now on are refused; those accepted before are still written.
        self.link.close();
        self.ended.get_or_insert(match &reason {
            EndReason::Protocol(_) => CloseReason::ProtocolError,
            EndReason::CodecPanicked | EndReason::HandlerPanicked => CloseReason::Panicked,
            EndReason::CloseRequested => CloseReason::Requested,
            EndReason::Timeout(_) => CloseReason::Timeout,
            EndReason::ServerShutdown => CloseReason::Shutdown,
            EndReason::BodyFailed => CloseReason::BodyFailed,
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
        !self.outbox.is_batch_stalled()
            && self
                .pipeline
                .has_room(self.output.weight(self.pipeline.high_water()))
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

    /// Moves to the next state if the current one has nothing left to wait for; returns
    /// whether it moved.
    fn advance(&mut self, env: &mut Env<'_, C, S>) -> bool {
        match self.state {
            State::ReadClosed
                if self.in_flight() == 0
                    && !self.pipeline.has_pushes()
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
                let pushes = self.pipeline.drop_unwritten(env.counters);
                self.link.release(pushes);
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
                            .error_reply(error, &mut self.output, ctx, counters);
                    }
                    EndReason::Timeout(why) => {
                        self.pipeline
                            .farewell(*why, &mut self.output, ctx, counters);
                    }
                    EndReason::ServerShutdown => {
                        let why = Farewell::Shutdown;
                        self.pipeline.farewell(why, &mut self.output, ctx, counters);
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
        self.link.close();
        let pushes = self.pipeline.drop_unwritten(counters);
        self.link.release(pushes);
        let (finish, dropped) = self.outbox.finish();
        Counters::add(&counters.replies_dropped, dropped as u64);
        (finish, self.ended.unwrap_or(otherwise))
    }
}

// The parts of `Connection` kept in files of their own, so the state machine reads alone;
// children of this module, so they see its private state.
#[path = "deadlines.rs"]
mod deadlines;
#[path = "input.rs"]
mod input;
#[path = "output.rs"]
mod output;
#[path = "streaming.rs"]
mod streaming;

#[cfg(test)]
#[path = "tests/mod.rs"]
mod tests;
