//! User timers: one thread per server (started at the first timer) keeps every timer's
//! deadline and, when one is due, hands its code to the worker pool, where it may block
//! ([`Pusher::after`](crate::Pusher::after), [`ServerHandle::every`](crate::ServerHandle::every)).
//! No thread per timer, and none at all for a server that sets none.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::stats::Counters;
use crate::util::clock;
use crate::util::panic::message as panic_message;

/// Code a timer runs once.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// Code a periodic timer runs each period; returns `false` to stop.
pub(crate) type Task = Box<dyn FnMut() -> bool + Send>;

/// Where due jobs go: the worker pool's queue (or, without a pool, the timer thread). Hands
/// the job back when there is no room now; it never blocks.
pub(crate) type Runner = Arc<dyn Fn(Job) -> Result<(), Job> + Send + Sync>;

/// How long the timer thread waits before offering a due job again to a full job queue.
const FULL_QUEUE_RETRY: Duration = Duration::from_millis(1);

/// A periodic timer's code, shared by its runs.
struct Periodic {
    task: Mutex<Task>,
    /// Set when the task asked to stop or the timer was cancelled.
    done: AtomicBool,
    period: Duration,
}

enum Entry {
    Once(Job),
    Every(Arc<Periodic>),
}

/// A timer set and not yet fired or cancelled, and whose it is.
struct Pending {
    entry: Entry,
    /// The connection (by id) whose end cancels it, if any.
    owner: Option<u64>,
}

#[derive(Default)]
struct State {
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    entries: HashMap<u64, Pending>,
    /// The pending timers of each owner (a connection, by its id), so they can be
    /// cancelled together when it ends.
    owned: HashMap<u64, HashSet<u64>>,
    next_id: u64,
    thread: Option<JoinHandle<()>>,
    stopped: bool,
}

/// The server's timers.
pub(crate) struct Scheduler {
    state: Mutex<State>,
    changed: Condvar,
    runner: Mutex<Option<Runner>>,
    thread_name: String,
    counters: Arc<Counters>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks but user code, which runs outside them.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Scheduler {
    pub fn new(thread_name: String, counters: Arc<Counters>) -> Self {
        Scheduler {
            state: Mutex::default(),
            changed: Condvar::new(),
            runner: Mutex::new(None),
            thread_name,
            counters,
        }
    }

    /// Where due jobs go from now on.
    pub fn set_runner(&self, runner: Runner) {
        *lock(&self.runner) = Some(runner);
    }

    /// Runs `job` once after `delay`; `owner`'s timers can be cancelled together.
    pub fn after(self: &Arc<Self>, delay: Duration, job: Job, owner: Option<u64>) -> Timer {
        self.add(delay, Entry::Once(job), owner)
    }

    /// Runs `task` every `period` until it returns `false` or is cancelled.
    pub fn every(self: &Arc<Self>, period: Duration, task: Task, owner: Option<u64>) -> Timer {
        let period = period.max(Duration::from_millis(1));
        let periodic = Arc::new(Periodic {
            task: Mutex::new(task),
            done: AtomicBool::new(false),
            period,
        });
        self.add(period, Entry::Every(periodic), owner)
    }

    fn add(self: &Arc<Self>, delay: Duration, entry: Entry, owner: Option<u64>) -> Timer {
        let mut state = lock(&self.state);
        if state.stopped {
            return Timer::inert();
        }
        let id = state.next_id;
        state.next_id += 1;
        let at = clock::after(Instant::now(), delay);
        state.due.push(Reverse((at, id)));
        state.entries.insert(id, Pending { entry, owner });
        if let Some(owner) = owner {
            state.owned.entry(owner).or_default().insert(id);
        }
        Counters::add(&self.counters.user_timers, 1);
        if state.thread.is_none() {
            let scheduler = Arc::clone(self);
            match std::thread::Builder::new()
                .name(format!("{}-timers", self.thread_name))
                .spawn(move || scheduler.run())
            {
                Ok(thread) => state.thread = Some(thread),
                Err(e) => log::error!("cannot start the timer thread: {e}; timers will not fire"),
            }
        }
        drop(state);
        self.changed.notify_one();
        Timer {
            id,
            scheduler: Arc::downgrade(self),
        }
    }

    fn cancel(&self, id: u64) -> bool {
        let removed = remove(&mut lock(&self.state), id);
        if let Some(Entry::Every(periodic)) = &removed {
            periodic.done.store(true, Ordering::Relaxed);
        }
        if removed.is_some() {
            Counters::sub(&self.counters.user_timers, 1);
        }
        removed.is_some()
    }

    /// Cancels every pending timer of `owner` (a connection that ended), so its timers
    /// hold no memory past it, however far off they were.
    pub fn cancel_owned(&self, owner: u64) {
        let mut state = lock(&self.state);
        let Some(ids) = state.owned.remove(&owner) else {
            return;
        };
        for id in ids {
            if let Some(pending) = state.entries.remove(&id) {
                if let Entry::Every(periodic) = pending.entry {
                    periodic.done.store(true, Ordering::Relaxed);
                }
                Counters::sub(&self.counters.user_timers, 1);
            }
        }
    }

    /// Stops the thread; timers not yet due never fire. Waits for the thread (unless called
    /// on it).
    pub fn stop(&self) {
        let thread = {
            let mut state = lock(&self.state);
            state.stopped = true;
            let pending = state.entries.len() as u64;
            state.entries.clear();
            state.due.clear();
            state.owned.clear();
            Counters::sub(&self.counters.user_timers, pending);
            state.thread.take()
        };
        *lock(&self.runner) = None;
        self.changed.notify_all();
        if let Some(thread) = thread {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }

    /// Hands a due job to the runner; while the job queue is full, offers it again every
    /// [`FULL_QUEUE_RETRY`] until it goes or the scheduler stops (never blocking in a send,
    /// so a stop, which waits for this thread, is never held by a full queue).
    fn hand_over(&self, mut job: Job) -> std::sync::MutexGuard<'_, State> {
        loop {
            // Cloned out of its lock, so `stop` can take it away meanwhile.
            let runner = lock(&self.runner).clone();
            let Some(runner) = runner else {
                return lock(&self.state);
            };
            match runner(job) {
                Ok(()) => return lock(&self.state),
                Err(back) => job = back,
            }
            let state = lock(&self.state);
            if state.stopped {
                return state;
            }
            drop(
                self.changed
                    .wait_timeout(state, FULL_QUEUE_RETRY)
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
    }

    fn run(&self) {
        let mut state = lock(&self.state);
        loop {
            if state.stopped {
                return;
            }
            let now = Instant::now();
            let Some(&Reverse((at, id))) = state.due.peek() else {
                state = self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            if at > now {
                state = self
                    .changed
                    .wait_timeout(state, at - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            state.due.pop();
            let job: Job = match state.entries.get(&id).map(|pending| &pending.entry) {
                // Cancelled.
                None => continue,
                // A periodic timer going on stays where it is, due again a period on.
                Some(Entry::Every(periodic)) if !periodic.done.load(Ordering::Relaxed) => {
                    let periodic = Arc::clone(periodic);
                    // Fixed rate; ticks missed while the thread was late are not made up.
                    let next = clock::after(at, periodic.period).max(now);
                    state.due.push(Reverse((next, id)));
                    Box::new(move || {
                        // A run still going makes this one skip.
                        if let Ok(mut task) = periodic.task.try_lock() {
                            if !task() {
                                periodic.done.store(true, Ordering::Relaxed);
                            }
                        }
                    })
                }
                // A one-shot timer firing, or a periodic one that asked to stop.
                Some(_) => {
                    Counters::sub(&self.counters.user_timers, 1);
                    match remove(&mut state, id) {
                        Some(Entry::Once(job)) => job,
                        _ => continue,
                    }
                }
            };
            drop(state);
            let counters = Arc::clone(&self.counters);
            let fenced: Job = Box::new(move || {
                if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(job)) {
                    Counters::add(&counters.panics, 1);
                    log::error!("a timer panicked: {}", panic_message(&*payload));
                }
            });
            state = self.hand_over(fenced);
        }
    }
}

/// Takes timer `id` out of `state`, with its owner's record of it.
fn remove(state: &mut State, id: u64) -> Option<Entry> {
    let Pending { entry, owner } = state.entries.remove(&id)?;
    if let Some(owner) = owner {
        if let Some(ids) = state.owned.get_mut(&owner) {
            ids.remove(&id);
            if ids.is_empty() {
                state.owned.remove(&owner);
            }
        }
    }
    Some(entry)
}

/// A timer set with [`Pusher::after`](crate::Pusher::after),
/// [`Pusher::every`](crate::Pusher::every), [`ServerHandle::after`](crate::ServerHandle::after)
/// or [`ServerHandle::every`](crate::ServerHandle::every). Dropping it leaves the timer
/// running; [`cancel`](Timer::cancel) stops it.
pub struct Timer {
    id: u64,
    scheduler: Weak<Scheduler>,
}

impl Timer {
    /// A timer that never fires (its server has stopped).
    pub(crate) fn inert() -> Self {
        Timer {
            id: u64::MAX,
            scheduler: Weak::new(),
        }
    }

    /// Stops the timer: a one-shot timer that has not fired never will, a periodic one
    /// fires no more (a run already handed to a worker still runs). Returns whether it was
    /// still pending.
    // Called for its effect; the answer is for those who care (a test, a log line).
    #[allow(clippy::must_use_candidate)]
    pub fn cancel(&self) -> bool {
        self.scheduler
            .upgrade()
            .is_some_and(|scheduler| scheduler.cancel(self.id))
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
