//! A connection's input side: reading under edge-triggered readiness, decoding what was
//! read (straight from the reactor's scratch buffer when nothing is left over), handing
//! requests on to the pool, and the ways input ends (the peer's FIN, a failed stream). Part
//! of [`Connection`]; kept apart so the state machine reads alone.

use std::io;
use std::time::Instant;

use super::{AfterFlush, Connection, Env, State};
use crate::codec::Codec;
use crate::conn::pipeline::{Decoded, EndReason};
use crate::conn::socket::Read;
use crate::conn::work::Dispatched;
use crate::handler::CloseReason;
use crate::stats::Counters;
use crate::transport::net::Transport;

// Every method here is on the per-request path and `#[inline]`: kept in a file of its own,
// its instances would land in another codegen unit than `drive`'s, out of the inliner's
// reach. Measured: without it, echo at 16 pipelined requests cost about 8% more server CPU
// per request than when these methods shared connection.rs (bench, d16, 5 alternations).
impl<C: Codec, S, T: Transport> Connection<C, S, T> {
    /// Reads until WouldBlock, a limit, or the end of this drive's `budget` of bytes.
    /// Returns whether anything was read (or the stream ended or failed).
    #[inline]
    pub(super) fn read(&mut self, env: &mut Env<'_, C, S>, budget: &mut usize) -> bool {
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
    #[inline]
    pub(super) fn take_input(&mut self, n: usize, env: &mut Env<'_, C, S>) {
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
    #[inline]
    pub(super) fn dispatch_buffered(&mut self, env: &mut Env<'_, C, S>) -> bool {
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
    #[inline]
    pub(super) fn decode_from(
        &mut self,
        src: &[u8],
        at_eof: bool,
        env: &mut Env<'_, C, S>,
    ) -> usize {
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
                    // Before it is handed on: a push its call makes goes after its reply.
                    self.link.decoded(seq + 1);
                    if last {
                        // Nothing after it is decoded: the close is decided before dispatch.
                        self.end(seq + 1, EndReason::CloseRequested, env.counters);
                    }
                }
                Ok(Some(Decoded::Refused(size))) => {
                    used += size;
                    self.link.decoded(self.pipeline.next_seq());
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
    #[inline]
    pub(super) fn decode_at_eof(&mut self, env: &mut Env<'_, C, S>) -> bool {
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
    #[inline]
    pub(super) fn open_if_established(&mut self, env: &mut Env<'_, C, S>) -> bool {
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
        self.outbox
            .open(env.reactor, self.key, self.ctx, &self.link);
        self.hand_on(env);
        true
    }

    /// Hands the outbox's work to the pool (a full queue gives it back and pauses this
    /// connection); returns whether any left.
    #[inline]
    pub(super) fn hand_on(&mut self, env: &mut Env<'_, C, S>) -> bool {
        let mut progress = false;
        while let Some(work) = self
            .outbox
            .next(env.reactor, self.key, self.ctx, &self.link)
        {
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
    #[inline]
    pub(super) fn track_partial(&mut self, now: Instant, progressed: bool) {
        if self.input.is_empty() {
            self.partial_since = None;
        } else if progressed || self.partial_since.is_none() {
            self.partial_since = Some(now);
        }
    }

    #[inline]
    pub(super) fn on_peer_eof(&mut self) {
        // No push is accepted from now on; those accepted before are still written.
        self.link.close();
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
    #[inline]
    pub(super) fn fail(&mut self, error: io::Error, counters: &Counters) {
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
}
