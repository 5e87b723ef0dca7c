//! The worker pool: threads that take jobs from one bounded queue, run the handler (which may
//! block) and post the response to the reactor that owns the connection.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::handler::{panic_message, Handler};
use crate::message::{HandlerPanicked, Inbound, Job, Mailbox, Reply};
use crate::stats::Counters;
use crate::sys::Spawn;

/// Running worker threads; dropped senders of `exited` tell when they have all stopped.
pub(crate) struct Pool {
    workers: Vec<JoinHandle<()>>,
    exited: Receiver<()>,
}

/// What every worker shares.
pub(crate) struct WorkerShared<H: Handler> {
    pub handler: Arc<H>,
    pub jobs: Receiver<Job<H::Request>>,
    pub mailboxes: Arc<[Mailbox<H::Response>]>,
    pub counters: Arc<Counters>,
    pub slow_handler: Duration,
    pub batch_scheduling: bool,
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
        let (exit_guard, exited) = crossbeam_channel::bounded::<()>(0);
        let mut pool = Pool {
            workers: Vec::with_capacity(count),
            exited,
        };
        for i in 0..count {
            let shared = shared.clone();
            let guard = exit_guard.clone();
            let name = format!("{thread_name}-worker-{i}");
            match spawn(name, Box::new(move || run_worker(shared, guard))) {
                Ok(worker) => pool.workers.push(worker),
                Err(error) => return Err((error, pool)),
            }
        }
        Ok(pool)
    }

    /// Waits until every worker has stopped or `deadline` passes. Returns how many workers
    /// were still running (blocked in a handler) at the deadline; those are left detached.
    pub fn join(self, deadline: Instant) -> usize {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.exited.recv_timeout(left) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    return self.workers.iter().filter(|w| !w.is_finished()).count();
                }
            }
        }
        for worker in self.workers {
            // A worker never panics (handler panics are caught), so join cannot fail.
            let _ = worker.join();
        }
        0
    }
}

fn run_worker<H: Handler>(shared: WorkerShared<H>, _exit_guard: Sender<()>) {
    if shared.batch_scheduling {
        crate::sys::prefer_batch_scheduling();
    }
    for job in shared.jobs.iter() {
        let reactor = job.reactor;
        let reply = run_job(&*shared.handler, job, &shared.counters, shared.slow_handler);
        // The reactor is gone only when the server is shutting down past its deadline:
        // nobody waits for this reply any more.
        let _ = shared.mailboxes[reactor].send(Inbound::Reply(reply));
    }
}

/// Runs the handler on one job, catching a panic, and counts a slow or panicking call. The
/// workers call it, and so does a reactor in inline mode.
pub(crate) fn run_job<H: Handler + ?Sized>(
    handler: &H,
    job: Job<H::Request>,
    counters: &Counters,
    slow_handler: Duration,
) -> Reply<H::Response> {
    let Job {
        key,
        seq,
        request,
        ctx,
        ..
    } = job;
    let started = Instant::now();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| handler.call(request, &ctx)));
    let took = started.elapsed();
    if took >= slow_handler {
        Counters::add(&counters.slow_handlers, 1);
        log::warn!(
            "handler for connection {} ({}) ran for {:?}",
            ctx.connection_id,
            ctx.peer,
            took
        );
    }
    let outcome = outcome.map_err(|payload| {
        Counters::add(&counters.panics, 1);
        log::error!(
            "handler panicked on connection {} ({}): {}; closing that connection",
            ctx.connection_id,
            ctx.peer,
            panic_message(&*payload)
        );
        HandlerPanicked
    });
    Reply { key, seq, outcome }
}
