//! A connection's output side: what the pool sends back (the greeting, each request's
//! answer, a batch's end with the session), encoded in request order, and written until the
//! socket is full. Part of [`Connection`]; kept apart so the state machine reads alone.

use std::time::Instant;

use super::{Connection, Env, State};
use crate::codec::Codec;
use crate::conn::pipeline::EndReason;
use crate::conn::work::{Answer, Done};
use crate::handler::{IdleTimeout, Replies};
use crate::stats::Counters;
use crate::transport::net::Transport;

// Every method here is on the per-request path and `#[inline]`: kept in a file of its own,
// its instances would land in another codegen unit than `drive`'s, out of the inliner's
// reach. Measured: without it, echo at 16 pipelined requests cost about 8% more server CPU
// per request than when these methods shared connection.rs (bench, d16, 5 alternations).
impl<C: Codec, S, T: Transport> Connection<C, S, T> {
    /// The pool finished work of this connection. Nothing is written yet: the reactor
    /// drives the connection once after taking everything waiting in its inbox, so replies
    /// arriving together leave in one write.
    #[inline]
    pub fn on_done(&mut self, done: Done<C::Response, S>, counters: &Counters, now: Instant) {
        match done {
            Done::Opened { outcome, .. } => {
                if let Ok((session, greeting)) = outcome {
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
                } else {
                    self.outbox.lost();
                    self.end(0, EndReason::HandlerPanicked, counters);
                }
            }
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
            Done::Pulled { stream, piece, .. } => self.pulled(stream, piece, counters),
        }
        self.encode_ready(counters, now);
    }

    /// Keeps one request's answer; a close or a panic in it ends the connection there, so
    /// nothing after it is handed on.
    #[inline]
    pub(super) fn answered(&mut self, seq: u64, answer: Answer<C::Response>, counters: &Counters) {
        if let Answer::Replied(Replies {
            idle_timeout: IdleTimeout::Set(timeout),
            ..
        }) = &answer
        {
            self.idle_timeout = *timeout;
        }
        if let Some((cut, reason)) = self.pipeline.answered(seq, answer, self.cut(), counters) {
            self.end(cut, reason, counters);
        }
    }

    /// Encodes the replies that are next in order (none before the greeting).
    #[inline]
    pub(super) fn encode_ready(&mut self, counters: &Counters, now: Instant) {
        if self.outbox.is_opening() {
            return;
        }
        if self.output.is_empty() {
            // The write-stall clock starts when there is something to write.
            self.last_write = now;
        }
        let cut = self.cut();
        match self
            .pipeline
            .encode_ready(&mut self.output, cut, &self.ctx, counters)
        {
            Ok(encoded) => self.link.release(encoded.pushes),
            // Nothing after the last reply written is encoded.
            Err(reason) => self.end(self.pipeline.write_seq(), reason, counters),
        }
    }

    /// Writes output until WouldBlock: the bytes, then the parts behind them (a file, a
    /// stream's pieces as they come); returns whether anything was written (or the stream
    /// failed).
    #[inline]
    pub(super) fn write(&mut self, env: &mut Env<'_, C, S>) -> bool {
        if let State::Closed = self.state {
            return false;
        }
        let mut progress = match self.socket.write(&mut self.output.bytes) {
            Ok(wrote) => wrote,
            Err(e) => {
                self.fail(e, env.counters);
                return true;
            }
        };
        if !self.output.parts.is_empty() || self.pipeline.has_pushes() {
            // The uncommon case, out of line: a body behind the bytes, or pushes that wait
            // for the output to drain.
            progress |= self.write_parts(env);
        }
        if progress {
            self.last_write = env.now;
        }
        progress
    }
}
