//! Configuring and starting a server: the [`Builder`], its settings checked before any
//! thread starts, and the wiring of acceptor, reactors and workers.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::acceptor::Acceptor;
use crate::codec::Codec;
#[cfg(doc)]
use crate::codec::DecodeError;
use crate::connection::Limits;
use crate::handle::{Running, ServerHandle, ShutdownTrigger, StatsReader, Threads};
use crate::handler::Handler;
use crate::message::Mailbox;
use crate::net::Listener;
use crate::pool::{Pool, WorkerShared};
use crate::reactor::{DynHandler, Reactor, ReactorParts};
use crate::stats::Counters;
use crate::sys::{spawn_thread, Spawn};
use crate::wire::WireConfig;

pub(crate) enum Listen {
    Addr(io::Result<Vec<SocketAddr>>),
    Listener(StdListener),
    UnixPath(PathBuf),
    UnixListener(std::os::unix::net::UnixListener),
    /// Sockets passed by a service manager (LISTEN_FDS).
    Passed,
}

/// Configures and starts a server. Every option has a default, given in its documentation.
/// Settings are checked by [`start`](Builder::start): one that cannot work (a zero count or
/// size) makes it fail with [`io::ErrorKind::InvalidInput`] naming the setting. Durations may
/// be as large as you like: `Duration::MAX` means "never".
///
/// ```no_run
/// use reactor_pool::{handler_fn, Builder, Context, LineCodec};
///
/// let handle = Builder::bind("127.0.0.1:7000")
///     .workers(32)
///     .start(LineCodec::new(), handler_fn(|line: Vec<u8>, _: &Context| line))?;
/// println!("listening on {}", handle.local_addr());
/// handle.join();
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "a Builder does nothing until start or serve is called"]
pub struct Builder {
    pub(crate) listen: Listen,
    pub(crate) wire: WireConfig,
    trigger: Option<ShutdownTrigger>,
    workers: usize,
    reactors: usize,
    backlog: u32,
    reuse_port: bool,
    max_connections: usize,
    job_queue_capacity: usize,
    read_buffer: usize,
    slow_handler: Duration,
    shutdown_timeout: Duration,
    connection_log_level: log::Level,
    thread_name: String,
    batch_scheduling: bool,
    worker_timer_slack: Option<Duration>,
    inline: bool,
    pub(crate) limits: Limits,
}

/// Room above the built-in codecs' maximum frame for framing bytes, so the connection's
/// backstop never rejects a frame the codec accepts.
const FRAMING_ALLOWANCE: usize = 64 * 1024;

fn default_parallelism() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

impl Builder {
    pub(crate) fn new(listen: Listen) -> Self {
        Builder {
            listen,
            wire: WireConfig::default(),
            trigger: None,
            workers: 4 * default_parallelism(),
            reactors: default_parallelism(),
            backlog: crate::sys::listen_backlog_limit(),
            reuse_port: false,
            max_connections: 10_000,
            job_queue_capacity: 1024,
            read_buffer: 64 * 1024,
            slow_handler: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(10),
            connection_log_level: log::Level::Debug,
            thread_name: "reactor-pool".into(),
            batch_scheduling: true,
            worker_timer_slack: Some(Duration::from_micros(1)),
            inline: false,
            limits: Limits {
                max_frame: crate::codec::DEFAULT_MAX_FRAME + FRAMING_ALLOWANCE,
                max_in_flight: 32,
                output_high_water: 256 * 1024,
                read_per_wakeup: 256 * 1024,
                linger: Duration::from_secs(2),
                idle_timeout: Some(Duration::from_secs(60)),
                partial_frame_timeout: Some(Duration::from_secs(30)),
                write_stall_timeout: Some(Duration::from_secs(30)),
                handshake_timeout: Some(Duration::from_secs(10)),
            },
        }
    }

    /// A server that will listen on `addr` (the first address it resolves to that binds).
    /// Port 0 picks a free port; [`ServerHandle::local_addr`] tells which.
    pub fn bind<A: ToSocketAddrs>(addr: A) -> Self {
        Self::new(Listen::Addr(
            addr.to_socket_addrs().map(|addrs| addrs.collect()),
        ))
    }

    /// A server that will accept on a listener bound elsewhere (for example by a parent
    /// process, or bound first to learn its port). The listener is made non-blocking.
    pub fn from_listener(listener: StdListener) -> Self {
        Self::new(Listen::Listener(listener))
    }

    /// Worker threads that run the handler. Default: 4 × the available cores. Size it to
    /// how many handler calls may block at once. Ignored with [`Builder::inline`].
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Reactor threads that own the sockets. Default: one per available core
    /// (`std::thread::available_parallelism`), so socket work uses every core when there
    /// are many connections; with few, the idle ones only sleep. Connections are spread over
    /// them round-robin.
    pub fn reactors(mut self, n: usize) -> Self {
        self.reactors = n;
        self
    }

    /// The listen backlog when this builder binds the socket (a TCP or Unix socket). Default:
    /// the most the system allows (Linux: `net.core.somaxconn`, 4096 on current kernels;
    /// elsewhere 1024), so a burst of connections waits in the queue instead of overflowing
    /// it into SYN retries.
    pub fn backlog(mut self, n: u32) -> Self {
        self.backlog = n;
        self
    }

    /// Sets SO_REUSEPORT on the socket this builder binds, so several server processes (or
    /// several servers in one process) can accept on the same port and the kernel spreads
    /// connections over them: the way past one process's file-descriptor limit. Default:
    /// off. Has no effect with [`Builder::from_listener`].
    pub fn reuse_port(mut self, enabled: bool) -> Self {
        self.reuse_port = enabled;
        self
    }

    /// Connections open at once. At the limit the server stops accepting (newcomers wait in
    /// the listen backlog) and resumes when one closes. Default: 10,000.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// The most bytes of one unfinished request a connection buffers, its framing (length
    /// prefix, line ending, headers) included: input beyond this without the codec producing
    /// a request is a [`DecodeError::FrameTooLarge`] protocol error. This bounds memory
    /// whatever the codec. It is a backstop: keep it above your codec's own maximum plus its
    /// framing, so the codec's check is the one that applies and a request at the codec's
    /// limit is accepted however TCP splits it. Default: 1 MiB + 64 KiB (the built-in codecs'
    /// [`DEFAULT_MAX_FRAME`](crate::DEFAULT_MAX_FRAME) plus room for framing). Zero is
    /// invalid.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.limits.max_frame = bytes;
        self
    }

    /// Requests of one connection handed to the pool and not yet answered. At the limit the
    /// server stops reading that connection until a reply is written. Default: 32.
    pub fn max_in_flight_per_connection(mut self, n: usize) -> Self {
        self.limits.max_in_flight = n;
        self
    }

    /// Requests waiting for a worker, over all connections. When the queue is full, a
    /// connection with a new request stops being read until there is room. Default: 1024.
    pub fn job_queue_capacity(mut self, n: usize) -> Self {
        self.job_queue_capacity = n;
        self
    }

    /// Unwritten output above which a connection is not read (its peer is not reading its
    /// replies). Requests in flight count with their input size, standing in for the
    /// replies still to come, so a connection's output stays under this mark plus one read.
    /// Default: 256 KiB.
    pub fn output_high_water(mut self, bytes: usize) -> Self {
        self.limits.output_high_water = bytes;
        self
    }

    /// Size of the buffer each `read()` fills (one per reactor). Default: 64 KiB.
    pub fn read_buffer(mut self, bytes: usize) -> Self {
        self.read_buffer = bytes;
        self
    }

    /// Bytes read from one connection per readiness event before the reactor turns to the
    /// others, so one busy peer cannot starve the rest. Default: 256 KiB.
    pub fn read_per_wakeup(mut self, bytes: usize) -> Self {
        self.limits.read_per_wakeup = bytes;
        self
    }

    /// A connection with no request in progress and nothing received for this long is closed.
    /// `None` disables it. Default: 60 s.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.idle_timeout = timeout;
        self
    }

    /// A connection whose request started arriving this long ago and is still unfinished is
    /// closed (a slowloris defence). `None` disables it. Default: 30 s.
    pub fn partial_frame_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.partial_frame_timeout = timeout;
        self
    }

    /// A connection with output waiting and no byte of it written for this long (its peer
    /// stopped reading) is closed. `None` disables it. Default: 30 s.
    pub fn write_stall_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.write_stall_timeout = timeout;
        self
    }

    /// After the server ends a connection itself (protocol error, timeout, shutdown) it
    /// shuts down its write side and reads and discards input for up to this long, so the
    /// peer reads the last reply instead of a reset. Default: 2 s.
    pub fn linger(mut self, timeout: Duration) -> Self {
        self.limits.linger = timeout;
        self
    }

    /// Handler calls running this long or longer are logged and counted (never killed).
    /// Default: 1 s. `Duration::MAX` turns the check off, and the workers then never read
    /// the clock around a call.
    pub fn slow_handler_threshold(mut self, threshold: Duration) -> Self {
        self.slow_handler = threshold;
        self
    }

    /// How long [`ServerHandle::shutdown`] lets requests in flight finish and replies flush
    /// before it closes what is left. Default: 10 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The level at which each accepted and each closed connection is logged (the close line
    /// gives its request count). Default: `Debug`.
    pub fn connection_log_level(mut self, level: log::Level) -> Self {
        self.connection_log_level = level;
        self
    }

    /// Prefix of the server's thread names: `{prefix}-acceptor`, `{prefix}-reactor-N`,
    /// `{prefix}-worker-N`. Default: `reactor-pool`. (Linux shows the first 15 bytes.)
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.thread_name = prefix.into();
        self
    }

    /// On Linux, runs the reactor and worker threads under the SCHED_BATCH scheduling
    /// policy. A thread woken by a hand-off (a request for a worker, a reply for a reactor)
    /// then does not preempt the thread running on that CPU; it takes an idle CPU or waits
    /// for the next scheduling point. The thread that handed off keeps running and hands off
    /// more, so work crosses between threads in batches instead of one context switch per
    /// request: on the 2-core benchmark machine this cut context switches per request about
    /// four-fold and raised echo throughput by about a quarter (see the README). The cost: a
    /// woken thread can wait up to one scheduler time slice (a few milliseconds) behind a
    /// busy thread of another program. Turn it off when the server shares its cores with
    /// CPU-bound work and tail latency matters more than throughput. No effect on other
    /// systems. Default: on.
    pub fn batch_scheduling(mut self, enabled: bool) -> Self {
        self.batch_scheduling = enabled;
        self
    }

    /// On Linux, the timer slack of the worker threads: how late the kernel may end a timed
    /// wait of the handler's (a sleep, a socket or lock timeout) so as to batch wake-ups. The
    /// kernel's default, 50 µs, makes a handler's 1 ms sleep take about 1.06 ms; with 1 µs it
    /// takes about 1.01 ms, and a pool of handlers that wait comes within 5% of its ideal
    /// throughput (the README's blocking workload: 0.92 → 0.95 of 64 workers / 1 ms). The
    /// cost is a few more timer wake-ups; waits on the job queue have no timeout and are not
    /// affected. `None` keeps the system's slack. No effect on other systems.
    /// Default: `Some(1 µs)`.
    pub fn worker_timer_slack(mut self, slack: Option<Duration>) -> Self {
        self.worker_timer_slack = slack;
        self
    }

    /// Inline mode: the handler runs on the reactor thread that read the request, and no
    /// worker thread is started ([`Builder::workers`] is ignored). It saves the two thread
    /// hand-offs per request, so it is the fastest way to serve a handler that never blocks
    /// (an in-memory lookup, a computed reply). A handler that blocks stalls every
    /// connection of its reactor for that long: keep the pool for anything that waits. Panics
    /// are still caught (that connection is closed) and slow calls still counted and logged.
    /// Default: off.
    pub fn inline(mut self, enabled: bool) -> Self {
        self.inline = enabled;
        self
    }

    /// The trigger that stops this server: firing it makes [`ServerHandle::join`] and
    /// [`Builder::serve`] shut the server down gracefully and return. Create it first, hand
    /// a clone to whatever decides when to stop (a signal-handling thread), then start.
    /// Default: a new trigger, which [`ServerHandle::shutdown_trigger`] returns.
    pub fn shutdown_trigger(mut self, trigger: ShutdownTrigger) -> Self {
        self.trigger = Some(trigger);
        self
    }

    /// Checks every setting; names the first that cannot work.
    fn validate(&self) -> io::Result<()> {
        let positive = [
            ("workers", if self.inline { 1 } else { self.workers }),
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
        match std::mem::replace(&mut self.listen, Listen::Addr(Ok(Vec::new()))) {
            Listen::Listener(listener) => Listener::tcp(listener),
            Listen::UnixListener(listener) => Listener::unix(listener),
            Listen::UnixPath(path) => Listener::bind_unix(&path, self.backlog as i32),
            Listen::Passed => Listener::from_listen_fds(),
            Listen::Addr(addrs) => {
                let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to bind");
                for addr in addrs? {
                    match Listener::bind_tcp(addr, self.backlog as i32, self.reuse_port) {
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
        self.start_with(codec, handler, None, &mut spawn_thread)
    }

    /// Starts a server whose connections' requests may run at the same time on different
    /// workers when a peer pipelines them (their replies are still written in request
    /// order): for stateless handlers only, since there is no session to share. The open
    /// and close hooks still run once per connection; the close hook may run before the
    /// connection's last calls have returned (they never see its session). Otherwise as
    /// [`start`](Builder::start).
    ///
    /// # Errors
    ///
    /// As [`start`](Builder::start).
    pub fn start_concurrent<C, H>(self, codec: C, handler: H) -> io::Result<ServerHandle>
    where
        C: Codec,
        H: Handler<Request = C::Request, Response = C::Response, Session = ()>,
    {
        fn fresh() {}
        self.start_with(codec, handler, Some(fresh), &mut spawn_thread)
    }

    /// [`start`](Builder::start) with the thread spawner given, so a test can make it fail.
    fn start_with<C, H>(
        mut self,
        codec: C,
        handler: H,
        concurrent: Option<fn() -> H::Session>,
        spawn: &mut Spawn<'_>,
    ) -> io::Result<ServerHandle>
    where
        C: Codec,
        H: Handler<Request = C::Request, Response = C::Response>,
    {
        self.validate()?;
        let listener = self.listener()?;
        let bound = listener.bound()?;

        let counters = Arc::new(Counters::default());
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
                    handler: Arc::clone(&dyn_handler),
                    inline: self.inline,
                    concurrent,
                    slow_handler: self.slow_handler,
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
        // Only reactors hold job senders: when the last reactor exits (or is dropped unstarted)
        // the workers finish the queue and exit too.
        drop(jobs_tx);
        let mailboxes: Arc<[Mailbox<C::Response, H::Session>]> = mailboxes.into();
        let stopping = Arc::new(AtomicBool::new(false));

        let workers = if self.inline { 0 } else { self.workers };
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
                drop(reactors);
                started.join(crate::clock::after(
                    std::time::Instant::now(),
                    self.shutdown_timeout,
                ));
                return Err(error);
            }
        };
        let mut threads = Box::new(Threads {
            gate,
            acceptor: None,
            reactors: Vec::with_capacity(reactors.len()),
            mailboxes,
            pool,
            jobs: jobs_rx.clone(),
            counters: Arc::clone(&counters),
            stopping,
            timeout: self.shutdown_timeout,
        });
        let batch_scheduling = self.batch_scheduling;
        let mut unstarted = reactors.into_iter().enumerate();
        while let Some((index, reactor)) = unstarted.next() {
            let name = format!("{}-reactor-{index}", self.thread_name);
            let run = Box::new(move || {
                if batch_scheduling {
                    crate::sys::prefer_batch_scheduling();
                }
                reactor.run()
            });
            match spawn(name, run) {
                Ok(thread) => threads.reactors.push(thread),
                Err(error) => {
                    // The reactors not started hold job senders: drop them, so the workers
                    // see every sender gone once the started reactors stop.
                    drop(unstarted);
                    return Err(stopped(threads, error));
                }
            }
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

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Starting failed part-way: stops and joins what did start, and returns `error`.
fn stopped<R: Running + 'static>(threads: Box<R>, error: io::Error) -> io::Error {
    log::error!("cannot start a server thread: {error}; stopping the threads already started");
    threads.stop();
    error
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("workers", &self.workers)
            .field("reactors", &self.reactors)
            .field("max_connections", &self.max_connections)
            .field("job_queue_capacity", &self.job_queue_capacity)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
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
        // 2 workers, then 2 reactors, then the acceptor.
        for fail_at in 0..5 {
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
                    None,
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
}
