//! The acceptor: one thread that accepts connections and hands them round-robin to the
//! reactors. It stops accepting at the connection limit (newcomers wait in the listen
//! backlog) and backs off when the process runs out of file descriptors.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};

use crate::handler::Context;
use crate::runtime::mailbox::{Inbound, Mailbox};
use crate::stats::Counters;
use crate::sys::is_peer_gone;
use crate::transport::net::Listener;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

/// How long accepting pauses after the process or system ran out of file descriptors
/// (EMFILE, ENFILE) or memory: long enough to keep the CPU idle, short enough to resume
/// promptly once descriptors free up.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most one accept-error log line per this interval, so a storm does not flood the log.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Shared between the acceptor and the reactors: counts open connections against the limit,
/// and lets a reactor wake the acceptor when a slot frees up or the server stops.
pub(crate) struct AcceptGate {
    open: AtomicUsize,
    max: usize,
    stop: AtomicBool,
    waker: Waker,
}

impl AcceptGate {
    /// A connection closed: if the acceptor was paused at the limit, it resumes.
    pub fn release(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) >= self.max {
            let _ = self.waker.wake();
        }
    }

    /// Tells the acceptor to close the listener and exit.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

/// The acceptor thread's state.
pub(crate) struct Acceptor {
    poll: Poll,
    listener: Listener,
    next_reactor: usize,
    gate: Arc<AcceptGate>,
    counters: Arc<Counters>,
    next_id: u64,
    paused_until: Option<Instant>,
    last_error_log: Option<Instant>,
}

impl Acceptor {
    pub fn new(
        mut listener: Listener,
        max_connections: usize,
        counters: Arc<Counters>,
    ) -> io::Result<(Self, Arc<AcceptGate>)> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let gate = Arc::new(AcceptGate {
            open: AtomicUsize::new(0),
            max: max_connections.max(1),
            stop: AtomicBool::new(false),
            waker: Waker::new(poll.registry(), WAKER)?,
        });
        let acceptor = Acceptor {
            poll,
            listener,
            next_reactor: 0,
            gate: Arc::clone(&gate),
            counters,
            next_id: 1,
            paused_until: None,
            last_error_log: None,
        };
        Ok((acceptor, gate))
    }

    /// Accepts, handing connections to `reactors` round-robin, until told to stop; dropping
    /// `self` then closes the listener.
    pub fn run<Resp, S>(mut self, reactors: Arc<[Mailbox<Resp, S>]>) {
        let mut events = Events::with_capacity(8);
        while !self.gate.stop.load(Ordering::Acquire) {
            // With edge-triggered readiness an unaccepted backlog raises no new event, so
            // every wake-up (a connection freed, a backoff ended) retries accept().
            self.accept_ready(&reactors);
            let timeout = self
                .paused_until
                .map(|until| until.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("acceptor: poll failed: {e}");
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
        // Connections the kernel completed before we stop wait in the backlog: closing a
        // listener we made would reset them, so take them; the shutdown serves what they
        // already sent. A passed listener lives on elsewhere: its successor takes them.
        if self.listener.queue_ends_with_us() {
            self.accept_ready(&reactors);
        }
        log::debug!("acceptor stopped; listener closed");
    }

    fn accept_ready<Resp, S>(&mut self, reactors: &[Mailbox<Resp, S>]) {
        if let Some(until) = self.paused_until {
            if Instant::now() < until {
                return;
            }
            self.paused_until = None;
        }
        // Bounded without a stop check: each turn takes a connection (at most up to the
        // limit) or skips a vanished one; any other error pauses accepting.
        while self.gate.open.load(Ordering::Acquire) < self.gate.max {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    self.gate.open.fetch_add(1, Ordering::AcqRel);
                    Counters::add(&self.counters.connections_accepted, 1);
                    self.next_id += 1;
                    let ctx = Context::new(peer, self.next_id - 1);
                    let reactor = self.next_reactor;
                    self.next_reactor = (self.next_reactor + 1) % reactors.len();
                    if reactors[reactor]
                        .send(Inbound::Connection(stream, ctx))
                        .is_err()
                    {
                        // The reactor has exited: the server is stopping.
                        Counters::add(&self.counters.connections_closed, 1);
                        self.gate.release();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    Counters::add(&self.counters.accept_errors, 1);
                    if !is_peer_gone(&e) {
                        // Out of descriptors or memory, or a listener that cannot accept
                        // (EINVAL: not listening): retrying at once would spin.
                        self.log_error(&e, "pausing accept");
                        self.paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        return;
                    }
                    // The peer gave up before we accepted it (ECONNABORTED, EPROTO...):
                    // nothing to back off from, take the next one.
                    self.log_error(&e, "skipped");
                }
            }
        }
    }

    fn log_error(&mut self, error: &io::Error, action: &str) {
        let now = Instant::now();
        if self
            .last_error_log
            .is_none_or(|last| now.duration_since(last) >= ACCEPT_LOG_INTERVAL)
        {
            self.last_error_log = Some(now);
            log::warn!(
                "accept failed: {error}; {action} ({} accept errors so far)",
                self.counters.accept_errors.load(Ordering::Relaxed)
            );
        }
    }
}
