//! Speaking without being spoken to: a [`Pusher`] sends responses to one connection from any
//! thread, closes it, and runs timers for it.
//!
//! A pusher holds the connection's [`Link`]: its key (slot and generation, so a push never
//! reaches a later occupant of the slot), the reactor's mailbox, and the count that bounds
//! what pushes may hold in memory.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::stats::Counters;
use crate::timer::{Scheduler, Timer};

/// Names a connection slot and the generation of its current occupant, so a reply or an
/// event for a connection that closed is never applied to a later one in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ConnKey {
    pub slot: u32,
    pub generation: u32,
}

/// What a pusher posts to the connection's reactor.
pub(crate) enum Posted<R> {
    /// Write `response` after the replies to the first `u64` requests (those the
    /// connection had decoded when the push was made).
    Push(ConnKey, u64, R),
    /// Close the connection after the replies already owed and the pushes before this.
    Close(ConnKey),
}

/// Where a link posts: the mailbox of the reactor that owns the connection.
pub(crate) trait PushSink<R>: Send + Sync {
    /// Posts `posted`; hands it back when the reactor is gone.
    fn post(&self, posted: Posted<R>) -> Result<(), Posted<R>>;
}

/// A sink for a link that belongs to no connection (a [`Replies`](crate::Replies) made
/// outside a server): it takes nothing.
struct Nowhere;

impl<R> PushSink<R> for Nowhere {
    fn post(&self, posted: Posted<R>) -> Result<(), Posted<R>> {
        Err(posted)
    }
}

/// What a connection and its pushers share.
pub(crate) struct Link<R> {
    key: ConnKey,
    connection_id: u64,
    sink: Arc<dyn PushSink<R>>,
    /// Pushes accepted and not yet encoded (or dropped): at most `limit`.
    queued: AtomicUsize,
    limit: usize,
    /// Set once the connection ends: pushes are refused from then on.
    closed: AtomicBool,
    /// Set once a timer was set for the connection: its end cancels them.
    timers_set: AtomicBool,
    /// Requests the connection has decoded: a push made now goes after their replies.
    decoded: AtomicU64,
    counters: Arc<Counters>,
    scheduler: Option<Arc<Scheduler>>,
}

impl<R> Link<R> {
    pub fn new(
        key: ConnKey,
        connection_id: u64,
        sink: Arc<dyn PushSink<R>>,
        limit: usize,
        counters: Arc<Counters>,
        scheduler: Arc<Scheduler>,
    ) -> Self {
        Link {
            key,
            connection_id,
            sink,
            queued: AtomicUsize::new(0),
            limit,
            closed: AtomicBool::new(false),
            timers_set: AtomicBool::new(false),
            decoded: AtomicU64::new(0),
            counters,
            scheduler: Some(scheduler),
        }
    }

    /// A link to no connection: every push is refused as closed.
    pub fn detached() -> Self
    where
        R: 'static,
    {
        Link {
            key: ConnKey {
                slot: u32::MAX,
                generation: 0,
            },
            connection_id: 0,
            sink: Arc::new(Nowhere),
            queued: AtomicUsize::new(0),
            limit: 0,
            closed: AtomicBool::new(true),
            timers_set: AtomicBool::new(false),
            decoded: AtomicU64::new(0),
            counters: Arc::default(),
            scheduler: None,
        }
    }

    /// The connection ended: no push is accepted from now on, and its timers are cancelled.
    pub fn close(&self) {
        // SeqCst, with `timers_set` and `Pusher::set_timer`: of the store here and the one
        // there, one comes first in the single order of SeqCst operations, so either this
        // sees the timer flag (and cancels what is set), or the pusher, which checks
        // `closed` after adding its timer, sees this and cancels it. No timer outlives its
        // connection. Pushes load it with Acquire (see `push`).
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.timers_set.load(Ordering::SeqCst) {
            if let Some(scheduler) = &self.scheduler {
                scheduler.cancel_owned(self.connection_id);
            }
        }
    }

    /// The connection has decoded `requests` requests (before handing any of them on).
    #[inline]
    pub fn decoded(&self, requests: u64) {
        // Relaxed. A push made by a call of one of these requests reads at least this
        // much: the reactor stores it before it hands the request to the job queue, whose
        // send and receive order it before the worker's load. A push from a thread that
        // learned of a later request only through the peer (a PUBLISH answered, then a
        // request from the subscriber) read its count before that request was decoded, so
        // its count is at most that request's number: it goes before the reply. A push
        // with no such chain may read an older count and be written a little earlier: no
        // order was promised between them.
        self.decoded.store(requests, Ordering::Relaxed);
    }

    /// `n` pushes were encoded or dropped: they no longer count against the limit.
    pub fn release(&self, n: usize) {
        if n > 0 {
            // Relaxed: the count is a bound on memory, not a fence; a pusher that reads a
            // stale, higher count refuses one push it could have made, never the reverse.
            self.queued.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// A handle to one connection, for writing to it from any thread: a response nobody asked
/// for (a pub/sub message, a notification, a job's result), a close, a timer. Get one from
/// [`Replies::pusher`](crate::Replies::pusher) in [`Handler::open`](crate::Handler::open) or
/// [`Handler::call`](crate::Handler::call); clone it freely (`Clone + Send + Sync`).
///
/// **Order.** A pushed response is written after every reply the connection owed when the
/// push was made (replies to the requests it had received, earlier pushes) and before the
/// replies to requests received after (so a subscriber that sends a command after a
/// PUBLISH was answered gets the message first, as from redis); never inside another
/// reply. One thread's pushes are written in the order it made them.
///
/// **Bounds** ([`Builder::push_limit`](crate::Builder::push_limit), default 1,024): at most
/// that many pushes wait, per connection, to be encoded; they are encoded only while the
/// connection's output is under its high-water mark. So a peer that stops reading holds at
/// most the limit's pushes and the high-water mark in memory, and a push past the limit is
/// refused ([`PushError::Full`], counted in [`Stats::pushes_refused`](crate::Stats::pushes_refused)),
/// handing the response back. What to do then is the caller's choice: drop the message,
/// retry later, or, as redis does with a pub/sub client past its output limit,
/// [`close`](Pusher::close) the connection.
///
/// **Lifetime.** Once the connection ends, pushes fail with [`PushError::Closed`]; the
/// handle never reaches a later connection that reuses its slot. `Ok` means the push was
/// accepted, not that it was written: a connection that ends first (the peer resets it,
/// say) drops it.
pub struct Pusher<R> {
    link: Arc<Link<R>>,
}

impl<R> Clone for Pusher<R> {
    fn clone(&self) -> Self {
        Pusher {
            link: Arc::clone(&self.link),
        }
    }
}

impl<R> fmt::Debug for Pusher<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pusher")
            .field("connection_id", &self.link.connection_id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<R> Pusher<R> {
    /// Whether the connection has ended (or is ending): pushes are refused.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.link.closed.load(Ordering::Acquire)
    }

    /// The connection's [`Context::connection_id`](crate::Context::connection_id).
    #[must_use]
    pub fn connection_id(&self) -> u64 {
        self.link.connection_id
    }
}

impl<R: Send + 'static> Pusher<R> {
    pub(crate) fn new(link: Arc<Link<R>>) -> Self {
        Pusher { link }
    }

    /// Sends `response` to the connection, to be written after the replies it owes.
    ///
    /// # Errors
    ///
    /// [`PushError::Closed`] when the connection has ended (or is ending);
    /// [`PushError::Full`] when the push limit is reached. Either hands `response` back.
    pub fn push(&self, response: R) -> Result<(), PushError<R>> {
        let link = &*self.link;
        // Acquire: pairs with `Link::close`'s Release store.
        if link.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed(response));
        }
        // Relaxed: see `Link::release`. The increment reserves a place; a refused push
        // gives it back at once.
        if link.queued.fetch_add(1, Ordering::Relaxed) >= link.limit {
            link.queued.fetch_sub(1, Ordering::Relaxed);
            Counters::add(&link.counters.pushes_refused, 1);
            return Err(PushError::Full(response));
        }
        // Relaxed: see `Link::decoded`.
        let after = link.decoded.load(Ordering::Relaxed);
        match link.sink.post(Posted::Push(link.key, after, response)) {
            Ok(()) => Ok(()),
            Err(Posted::Push(_, _, response)) => {
                link.queued.fetch_sub(1, Ordering::Relaxed);
                Err(PushError::Closed(response))
            }
            Err(Posted::Close(_)) => unreachable!("a push comes back as a push"),
        }
    }

    /// Closes the connection after the replies it owes and the pushes made before (a clean
    /// close, as [`Replies::close`](crate::Replies::close) makes): a barrier, no request
    /// received after the close reaches the reactor is run.
    ///
    /// # Errors
    ///
    /// [`PushError::Closed`] when the connection has already ended.
    pub fn close(&self) -> Result<(), PushError<()>> {
        let link = &*self.link;
        if link.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed(()));
        }
        link.sink
            .post(Posted::Close(link.key))
            .map_err(|_| PushError::Closed(()))
    }

    /// Runs `f` once, after `delay`, on a worker thread (where it may block), unless the
    /// connection has ended by then (its end cancels it): a heartbeat, a per-session
    /// deadline. The returned [`Timer`] cancels it.
    pub fn after<F>(&self, delay: Duration, f: F) -> Timer
    where
        F: FnOnce(&Pusher<R>) + Send + 'static,
    {
        let pusher = self.clone();
        let job = Box::new(move || {
            if !pusher.is_closed() {
                f(&pusher);
            }
        });
        self.set_timer(|scheduler, owner| scheduler.after(delay, job, owner))
    }

    /// Runs `f` every `period` (the first run one period from now), on a worker thread,
    /// until the connection ends or the timer is cancelled. A run still going when the
    /// next is due makes that next one skip.
    pub fn every<F>(&self, period: Duration, mut f: F) -> Timer
    where
        F: FnMut(&Pusher<R>) + Send + 'static,
    {
        let pusher = self.clone();
        let task = Box::new(move || {
            if pusher.is_closed() {
                return false;
            }
            f(&pusher);
            true
        });
        self.set_timer(|scheduler, owner| scheduler.every(period, task, owner))
    }

    /// Sets a timer owned by this connection: cancelled when it ends, even if that end
    /// races with the setting (see `Link::close`).
    fn set_timer(&self, set: impl FnOnce(&Arc<Scheduler>, Option<u64>) -> Timer) -> Timer {
        let link = &*self.link;
        let Some(scheduler) = &link.scheduler else {
            return Timer::inert();
        };
        if link.closed.load(Ordering::Acquire) {
            return Timer::inert();
        }
        link.timers_set.store(true, Ordering::SeqCst);
        let timer = set(scheduler, Some(link.connection_id));
        if link.closed.load(Ordering::SeqCst) {
            timer.cancel();
        }
        timer
    }
}

/// Why a push or a close was not accepted; a refused push hands its response back.
#[derive(PartialEq, Eq)]
pub enum PushError<T> {
    /// The connection has ended (or is ending).
    Closed(T),
    /// The connection's push limit is reached: the peer is not reading fast enough.
    Full(T),
}

impl<T> PushError<T> {
    /// The response that was not pushed.
    pub fn into_inner(self) -> T {
        match self {
            PushError::Closed(value) | PushError::Full(value) => value,
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self, PushError::Closed(_))
    }

    /// Whether the push limit refused it.
    pub fn is_full(&self) -> bool {
        matches!(self, PushError::Full(_))
    }
}

impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Closed(_) => f.write_str("Closed(..)"),
            PushError::Full(_) => f.write_str("Full(..)"),
        }
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Closed(_) => f.write_str("the connection has closed"),
            PushError::Full(_) => f.write_str("the connection's push limit is reached"),
        }
    }
}

impl<T> std::error::Error for PushError<T> {}
