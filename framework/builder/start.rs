//! Starting a server: every setting checked first, then the listener bound and the
//! threads started (pool, reactors, acceptor), each stopped again if a later one cannot
//! start.

use std::any::{Any, TypeId};
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{Builder, Listen, Mode};
#[cfg(doc)]
use crate::builder::handle::ShutdownTrigger;
use crate::builder::handle::{Running, ServerHandle, StatsReader, Threads};
use crate::codec::Codec;
use crate::conn::Work;
use crate::handler::Handler;
use crate::runtime::acceptor::Acceptor;
use crate::runtime::dispatch::DynHandler;
use crate::runtime::mailbox::Mailbox;
use crate::runtime::pool::{Crew, Pool, WorkerShared};
use crate::runtime::reactor::{Reactor, ReactorParts};
use crate::runtime::seat::{Seat, WatchShared, Watchdog};
use crate::stats::Counters;
use crate::sys::{spawn_thread, Spawn};
use crate::timer::{Job, Runner, Scheduler};
use crate::transport::net::Listener;
use crossbeam_channel::{Sender, TrySendError};

impl Builder {
    /// Checks every setting; names the first that cannot work.
    fn validate(&self) -> io::Result<()> {
        let positive = [
            (
                "workers",
                if self.mode == Mode::Inline {
                    1
                } else {
                    self.workers
                },
            ),
            ("reactors", self.reactors),
            ("max_connections", self.max_connections),
            ("job_queue_capacity", self.job_queue_capacity),
            ("read_buffer", self.read_buffer),
            ("read_per_wakeup", self.limits.read_per_wakeup),
            ("max_frame_size", self.limits.max_frame),
            ("max_in_flight_per_connection", self.limits.max_in_flight),
            ("output_high_water", self.limits.output_high_water),
        ];
        for (setting, value) in positive {
            if value == 0 {
                return Err(invalid(format!("{setting} must be at least 1")));
            }
        }
        if i32::try_from(self.backlog).is_err() {
            return Err(invalid(format!(
                "backlog must be at most {}, not {}",
                i32::MAX,
                self.backlog
            )));
        }
        #[cfg(feature = "tls")]
        if self
            .wire
            .tls
            .as_ref()
            .is_some_and(|c| c.max_early_data_size > 0)
        {
            // rustls keeps 0-RTT data apart, and it can be replayed: not served here.
            return Err(invalid(
                "tls: max_early_data_size must be 0 (0-RTT early data is not supported)".into(),
            ));
        }
        if self.thread_name.contains('\0') {
            return Err(invalid("thread_name must not contain a NUL byte".into()));
        }
        Ok(())
    }

    fn listener(&mut self) -> io::Result<Listener> {
        // `validate` refused a backlog over i32::MAX: the conversion cannot fail.
        let backlog = i32::try_from(self.backlog).unwrap_or(i32::MAX);
        match std::mem::replace(&mut self.listen, Listen::Addr(Ok(Vec::new()))) {
            Listen::Listener(listener) => Listener::tcp(listener),
            Listen::UnixListener(listener) => Listener::unix(listener),
            Listen::UnixPath(path) => Listener::bind_unix(&path, backlog),
            Listen::Passed => Listener::from_listen_fds(),
            Listen::Addr(addrs) => {
                let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to bind");
                for addr in addrs? {
                    match Listener::bind_tcp(addr, backlog, self.reuse_port) {
                        Ok(listener) => return Ok(listener),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    /// Binds (unless given a listener), starts every thread, and returns at once.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] naming the setting when one cannot work; the error of
    /// binding or listening; or the error of creating a poll or starting a thread, in which
    /// case every thread already started is stopped and joined before this returns.
    pub fn start<C, H>(self, codec: C, handler: H) -> io::Result<ServerHandle>
    where
        C: Codec,
        H: Handler<Request = C::Request, Response = C::Response>,
    {
        self.start_with(codec, handler, &mut spawn_thread)
    }

    /// [`start`](Builder::start) with the thread spawner given, so a test can make it fail.
    fn start_with<C, H>(
        mut self,
        codec: C,
        handler: H,
        spawn: &mut Spawn<'_>,
    ) -> io::Result<ServerHandle>
    where
        C: Codec,
        H: Handler<Request = C::Request, Response = C::Response>,
    {
        self.validate()?;
        let concurrent = match self.mode {
            Mode::Concurrent => Some(stateless_session::<H::Session>()?),
            Mode::Pool | Mode::Inline => None,
        };
        let inline = self.mode == Mode::Inline;
        let listener = self.listener()?;
        let bound = listener.bound()?;

        let counters = Arc::new(Counters::default());
        let scheduler = Arc::new(Scheduler::new(self.thread_name.clone(), counters.clone()));
        let (acceptor, gate) =
            Acceptor::new(listener, self.max_connections, Arc::clone(&counters))?;
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(self.job_queue_capacity);
        let handler = Arc::new(handler);
        let dyn_handler: Arc<DynHandler<C, H::Session>> = handler.clone();
        let mut reactors = Vec::with_capacity(self.reactors);
        let mut mailboxes = Vec::with_capacity(self.reactors);
        for index in 0..self.reactors {
            let (reactor, mailbox) = Reactor::new(
                index,
                ReactorParts {
                    codec: codec.clone(),
                    jobs: jobs_tx.clone(),
                    scheduler: Arc::clone(&scheduler),
                    push_limit: self.push_limit,
                    handler: Arc::clone(&dyn_handler),
                    inline,
                    concurrent,
                    slow_handler: self.slow_handler,
                    adaptive_inline: self.adaptive_inline,
                    counters: Arc::clone(&counters),
                    gate: Arc::clone(&gate),
                    limits: self.limits.clone(),
                    read_buffer: self.read_buffer,
                    log_level: self.connection_log_level,
                    wire: self.wire.clone(),
                },
            )?;
            reactors.push(reactor);
            mailboxes.push(mailbox);
        }
        // Only reactors (and, once the pool runs, the timer thread) hold job senders: when the
        // last reactor exits (or is dropped unstarted) the workers finish the queue and exit.
        let timer_jobs = jobs_tx;
        let mailboxes: Arc<[Mailbox<C::Response, H::Session>]> = mailboxes.into();
        let stopping = Arc::new(AtomicBool::new(false));

        let workers = if inline { 0 } else { self.workers };
        let shared = WorkerShared {
            handler,
            jobs: jobs_rx.clone(),
            mailboxes: Arc::clone(&mailboxes),
            counters: Arc::clone(&counters),
            slow_handler: self.slow_handler,
            batch_scheduling: self.batch_scheduling,
            timer_slack: self.worker_timer_slack,
            stopping: Arc::clone(&stopping),
        };
        let pool = match Pool::spawn(workers, &self.thread_name, shared, spawn) {
            Ok(pool) => pool,
            Err((error, started)) => {
                // Dropping the unstarted reactors drops every job sender: the workers exit.
                drop((reactors, timer_jobs));
                started.join(crate::util::clock::after(
                    std::time::Instant::now(),
                    self.shutdown_timeout,
                ));
                return Err(error);
            }
        };
        scheduler.set_runner(timer_runner(workers, timer_jobs));
        let mut threads = Box::new(Threads {
            scheduler: Arc::clone(&scheduler),
            gate,
            acceptor: None,
            reactors: Crew::new(),
            mailboxes,
            pool,
            jobs: jobs_rx.clone(),
            counters: Arc::clone(&counters),
            stopping,
            timeout: self.shutdown_timeout,
        });
        if let Err(error) = self.spawn_reactors(reactors, &mut threads.reactors, spawn) {
            return Err(stopped(threads, error));
        }
        let acceptor_mailboxes = Arc::clone(&threads.mailboxes);
        let name = format!("{}-acceptor", self.thread_name);
        match spawn(name, Box::new(move || acceptor.run(acceptor_mailboxes))) {
            Ok(thread) => threads.acceptor = Some(thread),
            Err(error) => return Err(stopped(threads, error)),
        }

        log::debug!("listening on {bound}");
        let queue = jobs_rx;
        Ok(ServerHandle {
            bound,
            stats: StatsReader {
                counters,
                queue_depth: Arc::new(move || queue.len()),
            },
            threads: Some(threads),
            trigger: self.trigger.unwrap_or_default(),
            scheduler,
        })
    }

    /// Starts the server and blocks until its [`ShutdownTrigger`] fires (give one with
    /// [`Builder::shutdown_trigger`], and fire it from a signal-handling thread, say), then
    /// shuts down gracefully as [`ServerHandle::shutdown`] does and returns.
    ///
    /// # Errors
    ///
    /// As [`start`](Builder::start).
    pub fn serve<C, H>(self, codec: C, handler: H) -> io::Result<()>
    where
        C: Codec,
        H: Handler<Request = C::Request, Response = C::Response>,
    {
        self.start(codec, handler)?.join();
        Ok(())
    }
}

impl Builder {
    /// Starts a thread per reactor, pushing each onto `started`, and with adaptive inline
    /// a standby thread per reactor and the watchdog (`runtime::seat`). When one cannot
    /// start, returns its error; the reactors not started are dropped with it, and with them
    /// their job senders, so the workers see every sender gone once the started reactors
    /// stop.
    fn spawn_reactors<C: Codec, S: Send + 'static>(
        &self,
        reactors: Vec<Reactor<C, S>>,
        started: &mut Crew,
        spawn: &mut Spawn<'_>,
    ) -> io::Result<()> {
        let batch_scheduling = self.batch_scheduling;
        let adaptive = self.mode != Mode::Inline && self.adaptive_inline.is_some();
        // With adaptive inline the handler may run on a reactor's thread: its timed waits
        // get the workers' slack there too.
        let slack = if adaptive {
            self.worker_timer_slack
        } else {
            None
        };
        let shared = WatchShared::new();
        let mut seats = Vec::with_capacity(reactors.len());
        for (index, reactor) in reactors.into_iter().enumerate() {
            let seat = Seat::new(Arc::clone(&shared));
            seats.push(Arc::clone(&seat));
            let name = format!("{}-reactor-{index}", self.thread_name);
            let reactor_seat = Arc::clone(&seat);
            let run = Box::new(move || {
                if batch_scheduling {
                    crate::sys::prefer_batch_scheduling();
                }
                if let Some(slack) = slack {
                    crate::sys::prefer_timer_slack(slack);
                }
                reactor.run(&reactor_seat);
            });
            // On an error, the reactors started so far end with the shutdown, and their
            // standbys with them; the watchdog is not started yet.
            started.spawn(spawn, name, run)?;
            if adaptive {
                let name = format!("{}-standby-{index}", self.thread_name);
                let standby = Box::new(move || {
                    if batch_scheduling {
                        crate::sys::prefer_batch_scheduling();
                    }
                    if let Some(slack) = slack {
                        crate::sys::prefer_timer_slack(slack);
                    }
                    Reactor::<C, S>::stand_by(&seat);
                });
                started.spawn(spawn, name, standby)?;
            }
        }
        if adaptive {
            let watchdog = Watchdog::new(seats, shared);
            let name = format!("{}-watchdog", self.thread_name);
            started.spawn(spawn, name, Box::new(move || watchdog.run()))?;
        }
        Ok(())
    }
}

/// Where due timers go: the pool (a full queue hands the job back, for the timer thread to
/// offer again), or, without one, the timer thread itself. The scheduler drops this sender
/// when it stops, first thing at shutdown, so the workers still see every sender gone.
fn timer_runner<Req, Resp, S>(workers: usize, jobs: Sender<Work<Req, Resp, S>>) -> Runner
where
    Req: Send + 'static,
    Resp: Send + 'static,
    S: Send + 'static,
{
    if workers == 0 {
        Arc::new(|job: Job| {
            job();
            Ok(())
        })
    } else {
        Arc::new(move |job| match jobs.try_send(Work::Timer(job)) {
            Err(TrySendError::Full(Work::Timer(job))) => Err(job),
            // Queued; or the pool is gone (the server is stopping) and the timer dropped.
            _ => Ok(()),
        })
    }
}

/// Concurrent mode's session maker: each request gets a fresh session, which only a
/// stateless handler (`Session = ()`) can do without.
fn stateless_session<S: 'static>() -> io::Result<fn() -> S> {
    fn unit<S: 'static>() -> S {
        // `S` is `()` (checked below): the box holds no memory and the downcast cannot fail.
        *(Box::new(()) as Box<dyn Any>)
            .downcast::<S>()
            .expect("concurrent mode's session is ()")
    }
    if TypeId::of::<S>() != TypeId::of::<()>() {
        return Err(invalid(format!(
            "mode: Mode::Concurrent needs a stateless handler (Session = ()), not Session = {}",
            std::any::type_name::<S>()
        )));
    }
    Ok(unit::<S>)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Starting failed part-way: stops and joins what did start, and returns `error`.
fn stopped<R: Running + 'static>(threads: Box<R>, error: io::Error) -> io::Error {
    log::error!("cannot start a server thread: {error}; stopping the threads already started");
    threads.stop();
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::LineCodec;
    use crate::handler::{handler_fn, Context};
    use crossbeam_channel::TryRecvError;

    /// Regression (bug 8): a thread that failed to start left the threads already started
    /// running forever. Each spawn position fails once; each time, every thread that did
    /// start has ended by the time `start` returns its error.
    #[test]
    fn a_failed_thread_spawn_stops_the_threads_already_started() {
        // 2 workers, then 2 reactors each with its standby, the watchdog, then the
        // acceptor.
        for fail_at in 0..8 {
            // Each started thread holds a sender: all gone means all threads ended.
            let (alive, all_ended) = crossbeam_channel::unbounded::<()>();
            let mut calls = 0;
            let mut spawn = |name: String, run: Box<dyn FnOnce() + Send>| {
                calls += 1;
                if calls > fail_at {
                    return Err(io::Error::other(format!("no thread for {name}")));
                }
                let alive = alive.clone();
                spawn_thread(
                    name,
                    Box::new(move || {
                        run();
                        drop(alive);
                    }),
                )
            };
            let error = Builder::bind("127.0.0.1:0")
                .workers(2)
                .reactors(2)
                .start_with(
                    LineCodec::new(),
                    handler_fn(|r: Vec<u8>, _: &Context| r),
                    &mut spawn,
                )
                .expect_err("a spawn failed");
            assert!(error.to_string().contains("no thread"), "{error}");
            drop(alive);
            assert_eq!(
                all_ended.try_recv(),
                Err(TryRecvError::Disconnected),
                "a thread started before spawn {fail_at} failed kept running"
            );
        }
    }

    /// One way to say each thing: concurrent mode is a setting like the others, and a
    /// handler with a session is refused by name, not by a missing method.
    #[test]
    fn concurrent_mode_refuses_a_handler_with_a_session() {
        struct Counting;
        impl Handler for Counting {
            type Request = Vec<u8>;
            type Response = Vec<u8>;
            type Session = u64;
            fn open(&self, _: &Context, _: &mut crate::handler::Replies<Vec<u8>>) -> u64 {
                0
            }
            fn call(
                &self,
                n: &mut u64,
                r: Vec<u8>,
                _: &Context,
                replies: &mut crate::handler::Replies<Vec<u8>>,
            ) {
                *n += 1;
                replies.send(r);
            }
        }
        let error = Builder::bind("127.0.0.1:0")
            .mode(Mode::Concurrent)
            .start(LineCodec::new(), Counting)
            .expect_err("a session cannot be shared by concurrent calls");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("Mode::Concurrent"), "{error}");
        let stateless = Builder::bind("127.0.0.1:0")
            .mode(Mode::Concurrent)
            .start(LineCodec::new(), handler_fn(|r: Vec<u8>, _: &Context| r))
            .expect("a stateless handler runs concurrently");
        stateless.shutdown();
    }
}
