//! A running server: the [`ServerHandle`] that stops it, the [`ShutdownTrigger`] another
//! thread (a signal handler) fires, and the [`StatsReader`] that reads its counters.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::conn::Work;
use crate::runtime::acceptor::AcceptGate;
use crate::runtime::mailbox::{Inbound, Mailbox};
use crate::runtime::pool::{Crew, Pool};
use crate::stats::{Counters, Stats};
use crate::timer::{Scheduler, Timer};
use crate::transport::ListenAddr;
use crate::util::clock;

/// The threads of a running server, behind a trait object so the handle is not generic.
pub(crate) trait Running: Send + Sync {
    /// Stops accepting, drains, closes and joins; returns workers still stuck in a handler.
    fn stop(self: Box<Self>) -> usize;
}

/// Every thread of a server, or those started so far when starting failed part-way.
pub(crate) struct Threads<Req, Resp, S> {
    /// The user timers: stopped first, so no timer's code starts during the drain.
    pub scheduler: Arc<Scheduler>,
    pub gate: Arc<AcceptGate>,
    /// `None` until the acceptor thread started.
    pub acceptor: Option<JoinHandle<()>>,
    /// The reactor threads, and with adaptive inline their standbys and the watchdog.
    pub reactors: Crew,
    pub mailboxes: Arc<[Mailbox<Resp, S>]>,
    pub pool: Pool,
    pub jobs: Receiver<Work<Req, Resp, S>>,
    pub counters: Arc<Counters>,
    /// Tells the workers that every reactor has exited.
    pub stopping: Arc<AtomicBool>,
    pub timeout: Duration,
}

impl<Req: Send, Resp: Send, S: Send> Running for Threads<Req, Resp, S> {
    fn stop(self: Box<Self>) -> usize {
        let Threads {
            scheduler,
            gate,
            acceptor,
            reactors,
            mailboxes,
            pool,
            jobs,
            counters,
            stopping,
            timeout,
        } = *self;
        scheduler.stop();
        gate.stop();
        // The acceptor is the only thread that touches the listener: once it is joined the
        // listening socket is closed and no connection can arrive.
        if let Some(acceptor) = acceptor {
            let _ = acceptor.join();
        }
        let deadline = clock::after(Instant::now(), timeout);
        for mailbox in mailboxes.iter() {
            let _ = mailbox.send(Inbound::Shutdown { deadline });
        }
        // A reactor ends by its deadline; a thread of theirs that ran a batch and was
        // taken over may still be in the handler, as a worker may: left, and counted.
        let stuck = reactors.join(clock::after(deadline, Duration::from_secs(1)));
        // Work still queued has no connection left to answer: the workers skip its requests
        // (counted as dropped) and run its close hooks. Release: pairs with the workers'
        // Acquire load, after every reactor is joined. The reactors held the last job
        // senders, so the workers then drain the queue and exit.
        stopping.store(true, Ordering::Release);
        drop((jobs, counters));
        stuck + pool.join(deadline)
    }
}

/// Reads a running server's counters from any thread; from [`ServerHandle::stats_reader`].
#[derive(Clone)]
pub struct StatsReader {
    pub(crate) counters: Arc<Counters>,
    pub(crate) queue_depth: Arc<dyn Fn() -> usize + Send + Sync>,
}

impl StatsReader {
    /// A snapshot of the server's live counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.counters.snapshot((self.queue_depth)())
    }
}

impl fmt::Debug for StatsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsReader").finish_non_exhaustive()
    }
}

/// A running server: its address, its counters, and the way to stop it.
///
/// It is `Send` and `Sync`: one thread may wait in [`join`](ServerHandle::join) while others
/// read [`stats`](ServerHandle::stats). **Dropping the handle shuts the server down** as
/// [`shutdown`](ServerHandle::shutdown) does, and waits for it; keep the handle for as long
/// as the server should run.
#[must_use = "dropping a ServerHandle shuts the server down at once"]
pub struct ServerHandle {
    pub(crate) bound: ListenAddr,
    pub(crate) stats: StatsReader,
    /// `None` once stopped.
    pub(crate) threads: Option<Box<dyn Running>>,
    pub(crate) trigger: ShutdownTrigger,
    pub(crate) scheduler: Arc<Scheduler>,
}

impl ServerHandle {
    /// The address the server accepts on: TCP (with the real port when bound to port 0)
    /// or a Unix domain socket's path. [`ListenAddr::tcp`] gives a TCP server's
    /// `SocketAddr`.
    #[must_use]
    pub fn local_addr(&self) -> ListenAddr {
        self.bound.clone()
    }

    /// A snapshot of the server's live counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats.stats()
    }

    /// A cloneable reader of the counters, for a thread that reports them.
    #[must_use]
    pub fn stats_reader(&self) -> StatsReader {
        self.stats.clone()
    }

    /// A cloneable trigger that makes [`join`](ServerHandle::join) shut the server down; for a
    /// signal-handling thread, say. It is the trigger given to
    /// [`Builder::shutdown_trigger`](crate::Builder::shutdown_trigger), if one was.
    #[must_use]
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        self.trigger.clone()
    }

    /// Runs `f` once, after `delay`, on a worker thread (where it may block; on the timer
    /// thread in [`Mode::Inline`](crate::Mode::Inline)). One thread per server keeps every
    /// timer, started with the first. A panic in `f` is caught, logged and counted in
    /// [`Stats::panics`](crate::Stats::panics). Timers not yet due when the server shuts
    /// down never fire.
    pub fn after<F>(&self, delay: Duration, f: F) -> Timer
    where
        F: FnOnce() + Send + 'static,
    {
        self.scheduler.after(delay, Box::new(f), None)
    }

    /// Runs `f` every `period` (the first run one period from now; at least 1 ms) on a
    /// worker thread, until the timer is cancelled or the server shuts down: an expiry
    /// sweep, a heartbeat to every subscriber. Ticks are at a fixed rate; one due while the
    /// previous run is still going is skipped, and ticks missed while the pool was busy are
    /// not made up.
    pub fn every<F>(&self, period: Duration, mut f: F) -> Timer
    where
        F: FnMut() + Send + 'static,
    {
        self.scheduler.every(
            period,
            Box::new(move || {
                f();
                true
            }),
            None,
        )
    }

    /// Shuts the server down gracefully and waits for it:
    ///
    /// 1. the listener closes at once (new connections are refused; those already in its
    ///    backlog are accepted);
    /// 2. every request the server has *received* is served: one whose bytes reached the
    ///    server's kernel before the shutdown reached its connection. Requests waiting for a
    ///    worker or for room in the job queue run, and each connection keeps reading until
    ///    a read finds its kernel buffer empty (even where backpressure had paused it), so
    ///    what a pipelining client sent is served too; a connection accepted an instant
    ///    before has a second to send its first request. Then the connection writes what it
    ///    owes and the codec's farewell, and closes cleanly (our FIN, input drained so the
    ///    peer sees no reset);
    /// 3. at the shutdown timeout ([`Builder::shutdown_timeout`](crate::Builder::shutdown_timeout))
    ///    whatever is left is closed — requests received and not answered by then are
    ///    counted in [`Stats::replies_dropped`](crate::Stats::replies_dropped) and logged —
    ///    and every thread is joined, except workers still blocked in a handler past the
    ///    deadline, which are left to finish on their own (and logged).
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Blocks until the server's [`ShutdownTrigger`] fires, then shuts down as
    /// [`shutdown`](ServerHandle::shutdown) does.
    pub fn join(mut self) {
        self.trigger.wait();
        self.stop();
    }

    fn stop(&mut self) {
        let Some(threads) = self.threads.take() else {
            return;
        };
        let stuck = threads.stop();
        if stuck > 0 {
            log::warn!(
                "shutdown: {stuck} workers still in a handler past the deadline; left running"
            );
        }
        log::debug!("server on {} stopped", self.bound);
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

/// Makes a server's [`ServerHandle::join`] (and so [`Builder::serve`](crate::Builder::serve))
/// return after a graceful shutdown. Cheap to clone; every clone is the same trigger, and
/// one trigger may stop several servers. Once fired it stays fired: every server started
/// with it or a clone of it stops, whether its `join` waits already or comes later (it then
/// stops at once). Firing it more than once is harmless.
#[derive(Clone, Default)]
pub struct ShutdownTrigger {
    /// Whether it has fired (never reset), and where every `wait` sleeps until it has. A
    /// flag, not a message: a message is taken by one waiter, a flag is seen by all.
    state: Arc<(Mutex<bool>, Condvar)>,
}

impl ShutdownTrigger {
    /// A trigger not yet tied to a server; give it to
    /// [`Builder::shutdown_trigger`](crate::Builder::shutdown_trigger).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every server started with this trigger (or a clone of it) to shut down. Call it
    /// from a thread (a signal-handling thread, say), not inside a signal handler: it takes
    /// a lock.
    pub fn fire(&self) {
        let (fired, woken) = &*self.state;
        *lock(fired) = true;
        // Every waiter: each is a different server's join.
        woken.notify_all();
    }

    /// Blocks until the trigger fires; returns at once if it already has.
    fn wait(&self) {
        let (fired, woken) = &*self.state;
        let mut fired = lock(fired);
        // The flag, not the wake-up, says it fired: waits can wake spuriously.
        while !*fired {
            fired = woken.wait(fired).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn fired(&self) -> bool {
        *lock(&self.state.0)
    }
}

/// Locks the flag. Nothing panics while holding it, but a poisoned bool is still a bool.
fn lock(fired: &Mutex<bool>) -> MutexGuard<'_, bool> {
    fired.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for ShutdownTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownTrigger")
            .field("fired", &self.fired())
            .finish()
    }
}
