//! The worker pool: threads that take work from one bounded queue, run the handler's hooks
//! (which may block) and post what they produced to the reactor that owns the connection.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::conn::{close_session, run_work, Leftovers, Work};
use crate::handler::{CloseReason, Handler};
use crate::runtime::mailbox::{Inbound, Mailbox};
use crate::stats::Counters;
use crate::sys::Spawn;

/// Threads that can be joined with a deadline: each holds a sender of `exited`, dropped
/// when it ends, so waiting for them all is one `recv_timeout` and a thread stuck in a
/// handler past the deadline is left detached instead of blocking the shutdown.
pub(crate) struct Crew {
    threads: Vec<JoinHandle<()>>,
    exited: Receiver<()>,
    guard: Sender<()>,
}

impl Crew {
    pub fn new() -> Self {
        let (guard, exited) = crossbeam_channel::bounded::<()>(0);
        Crew {
            threads: Vec::new(),
            exited,
            guard,
        }
    }

    /// Starts a thread of the crew.
    pub fn spawn(
        &mut self,
        spawn: &mut Spawn<'_>,
        name: String,
        run: Box<dyn FnOnce() + Send>,
    ) -> io::Result<()> {
        let guard = self.guard.clone();
        let thread = spawn(
            name,
            Box::new(move || {
                let _exit_guard = guard;
                run();
            }),
        )?;
        self.threads.push(thread);
        Ok(())
    }

    /// Waits until every thread has stopped or `deadline` passes. Returns how many were
    /// still running (blocked in a handler) at the deadline; those are left detached.
    pub fn join(self, deadline: Instant) -> usize {
        let Crew {
            threads,
            exited,
            guard,
        } = self;
        drop(guard);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match exited.recv_timeout(left) {
                Ok(()) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    return threads.iter().filter(|t| !t.is_finished()).count();
                }
            }
        }
        for thread in threads {
            // A crew thread never panics (handler panics are caught), so join cannot fail.
            let _ = thread.join();
        }
        0
    }
}

/// Running worker threads.
pub(crate) struct Pool {
    crew: Crew,
}

/// What every worker shares.
pub(crate) struct WorkerShared<H: Handler> {
    pub handler: Arc<H>,
    pub jobs: Receiver<Work<H::Request, H::Response, H::Session>>,
    pub mailboxes: Arc<[Mailbox<H::Response, H::Session>]>,
    pub counters: Arc<Counters>,
    pub slow_handler: Duration,
    pub batch_scheduling: bool,
    /// The workers' timer slack; `None` keeps the system's.
    pub timer_slack: Option<Duration>,
    /// Set once every reactor has exited: work still queued belongs to connections that are
    /// gone, so requests are not run, but sessions are still closed.
    pub stopping: Arc<AtomicBool>,
}

impl<H: Handler> Clone for WorkerShared<H> {
    fn clone(&self) -> Self {
        WorkerShared {
            handler: Arc::clone(&self.handler),
            jobs: self.jobs.clone(),
            mailboxes: Arc::clone(&self.mailboxes),
            counters: Arc::clone(&self.counters),
            slow_handler: self.slow_handler,
            batch_scheduling: self.batch_scheduling,
            timer_slack: self.timer_slack,
            stopping: Arc::clone(&self.stopping),
        }
    }
}

impl Pool {
    /// Starts `count` workers. They run until every sender of the job queue is dropped and
    /// the queue is empty. When a thread cannot start, returns the error with the workers
    /// that did start, to be joined once the job senders are dropped.
    pub fn spawn<H: Handler>(
        count: usize,
        thread_name: &str,
        shared: WorkerShared<H>,
        spawn: &mut Spawn<'_>,
    ) -> Result<Pool, (io::Error, Pool)> {
        let mut pool = Pool { crew: Crew::new() };
        for i in 0..count {
            let shared = shared.clone();
            let name = format!("{thread_name}-worker-{i}");
            if let Err(error) = pool
                .crew
                .spawn(spawn, name, Box::new(move || run_worker(shared)))
            {
                return Err((error, pool));
            }
        }
        Ok(pool)
    }

    /// Waits until every worker has stopped or `deadline` passes. Returns how many workers
    /// were still running (blocked in a handler) at the deadline; those are left detached.
    pub fn join(self, deadline: Instant) -> usize {
        self.crew.join(deadline)
    }
}

fn run_worker<H: Handler>(shared: WorkerShared<H>) {
    if shared.batch_scheduling {
        crate::sys::prefer_batch_scheduling();
    }
    if let Some(slack) = shared.timer_slack {
        crate::sys::prefer_timer_slack(slack);
    }
    let handler = &*shared.handler;
    let counters = &shared.counters;
    for work in &shared.jobs {
        // Acquire: pairs with the Release store made after every reactor was joined, so a
        // worker that sees the flag also sees that no reactor will take a reply.
        if shared.stopping.load(Ordering::Acquire) {
            abandon(handler, work, counters);
            continue;
        }
        let reactor = match &work {
            Work::Open { reactor, .. }
            | Work::Batch { reactor, .. }
            | Work::Pull { reactor, .. } => *reactor,
            Work::Close { .. } | Work::Timer(_) => usize::MAX,
        };
        run_work(handler, work, counters, shared.slow_handler, &mut |done| {
            if let Err(Inbound::Done(done)) = shared.mailboxes[reactor].send(Inbound::Done(done)) {
                // The reactor has exited (shutdown past its deadline): nobody will write
                // these replies, but the session is still owed its close.
                leftover(handler, done.into_leftovers(), counters);
            }
        });
    }
}

/// Accounts for what came back for a connection that is gone: its requests are dropped
/// (counted, and logged: only a shutdown past its deadline gets here), its session closed.
pub(crate) fn leftover<H: Handler + ?Sized>(
    handler: &H,
    left: Leftovers<H::Session>,
    counters: &Counters,
) {
    Counters::add(&counters.replies_dropped, left.answered as u64);
    Counters::add(&counters.skipped, left.skipped as u64);
    if let Some((session, ctx)) = left.session {
        if left.answered + left.skipped > 0 {
            log::warn!(
                "connection {} ({}): shutdown deadline passed; {} requests dropped unanswered",
                ctx.connection_id,
                ctx.peer,
                left.answered + left.skipped
            );
        }
        close_session(handler, session, &ctx, CloseReason::Shutdown, counters);
    }
}

/// Work left in the queue after every reactor exited (the shutdown deadline passed):
/// requests are not run (their connections are gone) but counted and logged; sessions are
/// closed.
fn abandon<H: Handler>(
    handler: &H,
    work: Work<H::Request, H::Response, H::Session>,
    counters: &Counters,
) {
    let requests = work.requests();
    Counters::add(&counters.replies_dropped, requests as u64);
    match work {
        Work::Open { .. } | Work::Pull { .. } | Work::Timer(_) => {}
        Work::Batch {
            ctx,
            session,
            fresh,
            ..
        } => {
            log::warn!(
                "connection {} ({}): shutdown deadline passed; {requests} requests dropped unrun",
                ctx.connection_id,
                ctx.peer
            );
            // A concurrent batch's throwaway session is not the connection's: no close.
            if !fresh {
                close_session(handler, session, &ctx, CloseReason::Shutdown, counters);
            }
        }
        Work::Close {
            ctx,
            session,
            reason,
        } => close_session(handler, session, &ctx, reason, counters),
    }
}
