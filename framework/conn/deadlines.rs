//! A connection's clocks: when a timeout would end it, what happens when one does, and the
//! server's shutdown. Part of [`Connection`]; kept apart so the state machine reads alone.

use std::time::{Duration, Instant};

use super::{AfterFlush, Connection, Env, Limits, Shutdown, State, Step};

/// At shutdown, how long a connection that has not sent its first request yet (most often
/// one accepted an instant before, its request on the way) may still send it. Without it,
/// a server told to stop while a load balancer is still sending it connections drops those
/// requests; with it, an idle client that connected and said nothing delays the exit by
/// this much at most.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
use crate::codec::{Codec, Farewell};
use crate::conn::pipeline::EndReason;
use crate::handler::CloseReason;
use crate::stats::Counters;
use crate::transport::net::Transport;
use crate::util::clock;

impl<C: Codec, S, T: Transport> Connection<C, S, T> {
    /// The earliest instant at which a timeout would end this connection.
    pub fn next_deadline(&self, limits: &Limits) -> Option<Instant> {
        let timeout = self.next_timeout(limits);
        match self.shutdown {
            Shutdown::Grace { until } if self.takes_requests() => {
                Some(timeout.map_or(until, |t| t.min(until)))
            }
            _ => timeout,
        }
    }

    fn next_timeout(&self, limits: &Limits) -> Option<Instant> {
        let after = |since: Instant, limit: Option<Duration>| limit.map(|d| clock::after(since, d));
        // Requests in flight or stalled mean the server, not the peer, is the one to wait for.
        let waiting_on_peer =
            self.in_flight() == 0 && !self.outbox.is_stalled() && !self.outbox.is_opening();
        match self.state {
            State::Lingering { until } => Some(until),
            State::Closed => None,
            // The preamble's clock runs whatever it is waiting for (even its own output).
            State::Open | State::ReadClosed if self.outbox.is_unopened() => {
                // Without a handshake timeout, the idle timeout keeps a silent peer from
                // holding its slot forever.
                after(
                    self.accepted,
                    limits.handshake_timeout.or(limits.idle_timeout),
                )
            }
            // A body's piece being made on a worker is the server's wait, not the peer's.
            _ if self.has_output() && !self.waits_for_piece() => {
                after(self.last_write, limits.write_stall_timeout)
            }
            _ if self.has_output() => None,
            State::Open | State::ReadClosed if waiting_on_peer => match self.partial_since {
                Some(since) => after(since, limits.partial_frame_timeout),
                None if matches!(self.state, State::Open) => {
                    after(self.last_read.max(self.last_write), self.idle_timeout)
                }
                None => None,
            },
            _ => None,
        }
    }

    /// A timer fired: ends the connection if one of its deadlines has passed.
    pub fn on_timer(&mut self, env: &mut Env<'_, C, S>) -> Step {
        match self.next_deadline(env.limits) {
            Some(deadline) if deadline <= env.now => {}
            _ => return Step::Wait,
        }
        if let Shutdown::Grace { until } = self.shutdown {
            if until <= env.now && self.takes_requests() {
                // The shutdown's grace is over without a first request.
                self.end(
                    self.pipeline.next_seq(),
                    EndReason::ServerShutdown,
                    env.counters,
                );
                return self.drive(env);
            }
        }
        if let State::Lingering { .. } = self.state {
            // The end of a lingering close, not a timeout of the connection: it was
            // counted under the reason it was ended for.
            self.state = State::Closed;
            return Step::Close;
        }
        Counters::add(&env.counters.timeouts, 1);
        if self.outbox.is_unopened() && self.takes_requests() {
            log::info!(
                "connection {} ({}): preamble (PROXY header, TLS handshake) not done within \
                 the handshake timeout; closing it",
                self.ctx.connection_id,
                self.ctx.peer
            );
            self.ended.get_or_insert(CloseReason::Timeout);
            self.input.clear();
            if self.has_output() {
                // The peer does not even read its handshake: nothing clean is possible.
                self.state = State::Closed;
                return Step::Close;
            }
            self.state = State::Flushing {
                then: AfterFlush::Linger,
            };
            return self.drive(env);
        }
        if self.has_output() {
            log::info!(
                "connection {} ({}): peer stopped reading (write-stall timeout); closing it",
                self.ctx.connection_id,
                self.ctx.peer
            );
            self.ended.get_or_insert(CloseReason::Timeout);
            self.state = State::Closed;
            return Step::Close;
        }
        let which = if self.partial_since.is_some() {
            Farewell::PartialFrameTimeout
        } else {
            Farewell::IdleTimeout
        };
        self.end(
            self.pipeline.next_seq(),
            EndReason::Timeout(which),
            env.counters,
        );
        self.drive(env)
    }

    /// The server is shutting down. "Received" means that a request's bytes reached this
    /// connection's kernel buffer before now: each such request is served and answered
    /// (within the shutdown timeout), so the connection keeps reading until a read finds
    /// that buffer empty, even where backpressure had paused it (a peer that pipelines and
    /// reads slowly); then it ends. A request still on its way when that read comes is not
    /// served; an unfinished one is dropped with the codec's farewell.
    pub fn shut_down(&mut self, env: &mut Env<'_, C, S>) -> Step {
        if self.requests() == 0 && self.takes_requests() {
            // Accepted an instant ago, or mid-preamble (a TLS handshake, a PROXY header on
            // its way): its first requests may be on the wire. They are served if they
            // come within the grace (and the drain's deadline); then it closes.
            let grace = clock::after(env.now, FIRST_REQUEST_GRACE);
            self.shutdown = Shutdown::Grace {
                until: env.drain_deadline.map_or(grace, |d| d.min(grace)),
            };
        } else {
            self.shutdown = Shutdown::Draining;
        }
        // Reads what reached the kernel, and ends the connection once that is taken.
        self.drive(env)
    }
}
