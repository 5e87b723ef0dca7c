//! Live counters, shared by every thread of a server as plain atomics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The server's counters, updated with relaxed atomics as things happen.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections_accepted: AtomicU64,
    pub connections_closed: AtomicU64,
    pub requests: AtomicU64,
    pub responses: AtomicU64,
    pub bytes_buffered: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub panics: AtomicU64,
    pub slow_handlers: AtomicU64,
    pub accept_errors: AtomicU64,
    pub resets: AtomicU64,
    pub replies_dropped: AtomicU64,
    pub skipped: AtomicU64,
    pub timers: AtomicU64,
    pub refused: AtomicU64,
    pub transport_errors: AtomicU64,
    pub pushes: AtomicU64,
    pub pushes_refused: AtomicU64,
    pub body_errors: AtomicU64,
    pub user_timers: AtomicU64,
    pub batches_inline: AtomicU64,
    pub inline_overruns: AtomicU64,
}

impl Counters {
    /// Adds `n`; adding nothing touches no cache line (the counters are shared by every
    /// thread, and most calls on the hot path add zero: requests skipped, dropped).
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }

    pub fn snapshot(&self, job_queue_depth: usize) -> Stats {
        let accepted = self.connections_accepted.load(Relaxed);
        let closed = self.connections_closed.load(Relaxed);
        let requests = self.requests.load(Relaxed);
        let responses = self.responses.load(Relaxed);
        let replies_dropped = self.replies_dropped.load(Relaxed);
        let skipped = self.skipped.load(Relaxed);
        Stats {
            connections_open: accepted.saturating_sub(closed),
            connections_accepted: accepted,
            connections_closed: closed,
            requests,
            responses,
            in_flight: requests.saturating_sub(responses + replies_dropped + skipped),
            job_queue_depth: job_queue_depth as u64,
            bytes_buffered: self.bytes_buffered.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            panics: self.panics.load(Relaxed),
            slow_handlers: self.slow_handlers.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
            resets: self.resets.load(Relaxed),
            replies_dropped,
            skipped,
            timers: self.timers.load(Relaxed),
            refused: self.refused.load(Relaxed),
            transport_errors: self.transport_errors.load(Relaxed),
            pushes: self.pushes.load(Relaxed),
            pushes_refused: self.pushes_refused.load(Relaxed),
            body_errors: self.body_errors.load(Relaxed),
            user_timers: self.user_timers.load(Relaxed),
            batches_inline: self.batches_inline.load(Relaxed),
            inline_overruns: self.inline_overruns.load(Relaxed),
        }
    }
}

/// A snapshot of a server's counters, from [`ServerHandle::stats`](crate::ServerHandle::stats).
///
/// Each field is read on its own, so a snapshot taken while the server is busy may be off by
/// a request or two between fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted since the server started.
    pub connections_accepted: u64,
    /// Connections closed since the server started, for whatever reason.
    pub connections_closed: u64,
    /// Requests decoded (those the codec refused and answered itself included). Each ends
    /// in exactly one of `responses`, `replies_dropped` and `skipped`; until then it is
    /// `in_flight`.
    pub requests: u64,
    /// Requests answered: their replies (none, one or several) encoded into the output.
    pub responses: u64,
    /// Requests counted in `requests` that are neither answered, dropped nor skipped yet:
    /// waiting for a worker (or for room in the job queue), running, or waiting for their
    /// turn to be written.
    pub in_flight: u64,
    /// Work waiting in the job queue for a worker: batches of one connection's requests,
    /// and open and close hooks.
    pub job_queue_depth: u64,
    /// Bytes held in connections' input and output buffers.
    pub bytes_buffered: u64,
    /// Connections ended by a decode error.
    pub protocol_errors: u64,
    /// Connections closed by a timeout (idle, partial frame, write stall, drain deadline).
    pub timeouts: u64,
    /// Calls of user code (handler or codec) that panicked.
    pub panics: u64,
    /// Handler calls that ran longer than the slow-handler threshold.
    pub slow_handlers: u64,
    /// `accept()` calls that failed.
    pub accept_errors: u64,
    /// Connections the peer reset or that failed with an I/O error.
    pub resets: u64,
    /// Requests whose replies were never written: the peer reset the connection or stopped
    /// reading, the handler panicked in that call or the codec while encoding it, or the
    /// shutdown deadline passed first (then each connection's loss is also logged).
    pub replies_dropped: u64,
    /// Requests received but never run, because their connection was ending before them:
    /// they came after a close (the handler's [`Replies::close`](crate::Replies::close),
    /// the codec's [`Codec::closes_after`](crate::Codec::closes_after) or
    /// [`AfterReply::Close`](crate::AfterReply::Close)) or after a request whose handler
    /// panicked.
    pub skipped: u64,
    /// Timer entries the reactors hold: at most one per open connection.
    pub timers: u64,
    /// Requests the codec refused and answered itself ([`DecodeError::Refused`](crate::DecodeError::Refused)),
    /// the connection kept open. They count in `requests` and `responses` too.
    pub refused: u64,
    /// Connections closed for bad input below the protocol: a TLS failure (garbage instead of
    /// a ClientHello, a record that fails its checks or is cut short by the peer's FIN, a
    /// handshake abandoned half-way) or a PROXY header that is not one or is cut short.
    pub transport_errors: u64,
    /// Pushed responses ([`Pusher::push`](crate::Pusher::push)) encoded into their
    /// connection's output. They are not requests: `requests` and `responses` do not count
    /// them.
    pub pushes: u64,
    /// Pushes refused because their connection's push limit was reached
    /// ([`PushError::Full`](crate::PushError::Full)).
    pub pushes_refused: u64,
    /// Response bodies that failed while being written, each closing its connection: a file
    /// that shrank or could not be read, a streamed body that failed, panicked, or did not
    /// match its announced length.
    pub body_errors: u64,
    /// User timers pending ([`Pusher::after`](crate::Pusher::after),
    /// [`ServerHandle::every`](crate::ServerHandle::every), ...): set and not yet fired,
    /// cancelled or stopped.
    pub user_timers: u64,
    /// Batches of requests a reactor ran itself, with no hand-off to a worker, because the
    /// handler had proven fast ([`Builder::adaptive_inline`](crate::Builder::adaptive_inline)).
    pub batches_inline: u64,
    /// Batches run on a reactor that took longer than the adaptive-inline budget, each
    /// sending that reactor's batches back to the pool for a while.
    pub inline_overruns: u64,
}
