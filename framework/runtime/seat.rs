//! Handing a reactor to another thread while its own runs a batch (adaptive inline): the
//! reactor's [`Seat`], a standby thread per reactor, and one [`Watchdog`] per server.
//!
//! A reactor that runs a batch itself leaves its state (`Box<Reactor>`) in its seat for the
//! batch's duration and takes it back after: two uncontended lock round trips, no wake-up.
//! If the batch runs past [`TAKE_OVER_AFTER`], the watchdog hands the seat to the reactor's
//! standby thread, which takes the reactor and runs its loop on; the thread that ran the
//! batch, when it returns, posts the answers through the reactor's mailbox as a worker
//! would and becomes the standby in its turn. So a handler that proved fast and then
//! blocks stalls its reactor's other connections for a millisecond or two, never for as
//! long as it blocks. This is the leader/followers pattern, with the hand-over done only
//! when it is needed, instead of on every event.
//!
//! The watchdog ticks every [`TICK`] while any reactor has run a batch within the last
//! [`IDLE_TICKS`] ticks, and sleeps otherwise; a reactor that starts a batch wakes it only
//! if it sleeps. An idle server, or one whose handler runs on the pool, costs it nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How often the watchdog looks at the seats while batches run on reactors.
const TICK: Duration = Duration::from_millis(1);
/// How long a batch may keep its reactor's seat before the standby takes the reactor.
pub(crate) const TAKE_OVER_AFTER: Duration = Duration::from_millis(1);
/// Ticks with no batch run on any reactor after which the watchdog sleeps.
const IDLE_TICKS: u32 = 100;

/// What the watchdog and the seats share.
pub(crate) struct WatchShared {
    epoch: Instant,
    /// The watchdog sleeps until a seat wakes it (see [`Seat::leave`]).
    sleeping: AtomicBool,
    /// The watchdog thread, set when it starts.
    thread: OnceLock<Thread>,
}

impl WatchShared {
    pub fn new() -> Arc<Self> {
        Arc::new(WatchShared {
            epoch: Instant::now(),
            sleeping: AtomicBool::new(false),
            thread: OnceLock::new(),
        })
    }

    /// Nanoseconds since the epoch, never 0 (0 means "no batch running").
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn wake(&self) {
        // SeqCst, paired with the watchdog's SeqCst store of `sleeping` and its re-read of
        // the seats' `runs`: either this load sees it asleep, or its re-read sees our run.
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }
}

struct SeatState<R> {
    /// The reactor, while the thread that runs it is running a batch (or nobody runs it).
    parked: Option<Box<R>>,
    /// The watchdog asked the standby to take the parked reactor.
    hand_over: bool,
    /// The reactor's loop has ended: the standby exits.
    finished: bool,
}

/// Where a reactor waits while the thread that runs it runs a batch.
pub(crate) struct Seat<R> {
    state: Mutex<SeatState<R>>,
    changed: Condvar,
    /// When the batch now running started ([`WatchShared::now`]); 0: none is running.
    busy_since: AtomicU64,
    /// Batches started: a change tells the watchdog the seat is in use.
    runs: AtomicU64,
    shared: Arc<WatchShared>,
}

impl<R> Seat<R> {
    pub fn new(shared: Arc<WatchShared>) -> Arc<Self> {
        Arc::new(Seat {
            state: Mutex::new(SeatState {
                parked: None,
                hand_over: false,
                finished: false,
            }),
            changed: Condvar::new(),
            busy_since: AtomicU64::new(0),
            runs: AtomicU64::new(0),
            shared,
        })
    }

    fn lock(&self) -> MutexGuard<'_, SeatState<R>> {
        // Nothing panics while holding the lock; a poisoned lock's state is still whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The thread running the reactor is about to run a batch: the reactor waits here.
    pub fn leave(&self, reactor: Box<R>) {
        self.lock().parked = Some(reactor);
        // Release: the watchdog that reads this time (Acquire) and then locks the seat finds
        // the reactor parked, or already taken back.
        self.busy_since.store(self.shared.now(), Ordering::Release);
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.shared.wake();
    }

    /// Runs `f` on the parked reactor, if it is still parked here (not taken over).
    pub fn with_parked<T>(&self, f: impl FnOnce(&mut R) -> Option<T>) -> Option<T> {
        self.lock().parked.as_mut().and_then(|reactor| f(reactor))
    }

    /// The batch is over: the reactor back, or `None` if the standby has taken it.
    pub fn come_back(&self) -> Option<Box<R>> {
        self.busy_since.store(0, Ordering::Release);
        let mut state = self.lock();
        // A hand-over asked for but not yet taken is called off: the reactor is ours again.
        state.hand_over = false;
        state.parked.take()
    }

    /// Waits until the watchdog hands this thread the reactor, or the reactor's loop ends
    /// (`None`).
    pub fn stand_by(&self) -> Option<Box<R>> {
        let mut state = self.lock();
        loop {
            if state.finished {
                return None;
            }
            if state.hand_over {
                if let Some(reactor) = state.parked.take() {
                    state.hand_over = false;
                    return Some(reactor);
                }
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// The reactor's loop has ended: the standby exits, and so does the watchdog once every
    /// seat is finished.
    pub fn finish(&self) {
        self.lock().finished = true;
        self.changed.notify_all();
        self.shared.sleeping.store(false, Ordering::SeqCst);
        if let Some(thread) = self.shared.thread.get() {
            thread.unpark();
        }
    }

    fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// The watchdog's look at the seat at `now`: whether a batch is running, and whether it
    /// has run so long that the standby must take the reactor.
    fn check(&self, now: u64) -> bool {
        let since = self.busy_since.load(Ordering::Acquire);
        if since == 0 {
            return false;
        }
        if now.saturating_sub(since) >= u64::try_from(TAKE_OVER_AFTER.as_nanos()).unwrap_or(0) {
            let mut state = self.lock();
            if state.parked.is_some() && !state.hand_over {
                state.hand_over = true;
                drop(state);
                self.changed.notify_all();
            }
        }
        true
    }
}

/// The server's watchdog over its reactors' seats.
pub(crate) struct Watchdog<R> {
    seats: Vec<Arc<Seat<R>>>,
    shared: Arc<WatchShared>,
}

impl<R> Watchdog<R> {
    pub fn new(seats: Vec<Arc<Seat<R>>>, shared: Arc<WatchShared>) -> Self {
        Watchdog { seats, shared }
    }

    /// Runs until every seat is finished.
    pub fn run(self) {
        let _ = self.shared.thread.set(thread::current());
        let mut runs: Vec<u64> = vec![0; self.seats.len()];
        let mut idle = 0;
        loop {
            if self.seats.iter().all(|seat| seat.is_finished()) {
                return;
            }
            thread::sleep(TICK);
            let now = self.shared.now();
            let mut active = false;
            for (seat, seen) in self.seats.iter().zip(runs.iter_mut()) {
                active |= seat.check(now);
                let started = seat.runs.load(Ordering::SeqCst);
                active |= started != *seen;
                *seen = started;
            }
            idle = if active { 0 } else { idle + 1 };
            if idle >= IDLE_TICKS {
                self.sleep(&runs);
                idle = 0;
            }
        }
    }

    /// Sleeps until a seat starts a batch or finishes.
    fn sleep(&self, runs: &[u64]) {
        self.shared.sleeping.store(true, Ordering::SeqCst);
        // Re-read after the store (see `WatchShared::wake`).
        let started = self
            .seats
            .iter()
            .zip(runs)
            .any(|(seat, seen)| seat.runs.load(Ordering::SeqCst) != *seen);
        if started || self.seats.iter().any(|seat| seat.is_finished()) {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        while self.shared.sleeping.load(Ordering::SeqCst) {
            thread::park();
        }
    }
}
