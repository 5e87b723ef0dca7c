//! Starting and stopping a server: the [`Builder`], the running server's [`ServerHandle`],
//! and the [`ShutdownTrigger`] another thread (a signal handler) can use to stop it.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use socket2::{Domain, Protocol, Socket, Type};

use crate::acceptor::{AcceptGate, Acceptor};
use crate::codec::Codec;
#[cfg(doc)]
use crate::codec::DecodeError;
use crate::connection::{InlineHandler, Limits};
use crate::handler::Handler;
use crate::pool::{Job, Pool, WorkerShared};
use crate::reactor::{Inbound, Mailbox, Reactor, ReactorParts};
use crate::stats::{Counters, Stats};

enum Listen {
    Addr(io::Result<Vec<SocketAddr>>),
    Listener(StdListener),
}

/// Configures and starts a server. Every option has a default, given in its documentation.
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
pub struct Builder {
    listen: Listen,
    workers: usize,
    reactors: usize,
    backlog: i32,
    reuse_port: bool,
    max_connections: usize,
    job_queue_capacity: usize,
    read_buffer: usize,
    slow_handler: Duration,
    shutdown_timeout: Duration,
    connection_log_level: log::Level,
    thread_name: String,
    batch_scheduling: bool,
    inline: bool,
    limits: Limits,
}

fn default_parallelism() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

impl Builder {
    fn new(listen: Listen) -> Self {
        Builder {
            listen,
            workers: 4 * default_parallelism(),
            reactors: 1,
            backlog: 1024,
            reuse_port: false,
            max_connections: 10_000,
            job_queue_capacity: 1024,
            read_buffer: 64 * 1024,
            slow_handler: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(10),
            connection_log_level: log::Level::Debug,
            thread_name: "reactor-pool".into(),
            batch_scheduling: true,
            inline: false,
            limits: Limits {
                max_frame: 1 << 20,
                max_in_flight: 32,
                output_high_water: 256 * 1024,
                read_per_wakeup: 256 * 1024,
                linger: Duration::from_secs(2),
                idle_timeout: Some(Duration::from_secs(60)),
                partial_frame_timeout: Some(Duration::from_secs(30)),
                write_stall_timeout: Some(Duration::from_secs(30)),
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
        self.workers = n.max(1);
        self
    }

    /// Reactor threads that own the sockets. Default: 1. Connections are spread over them
    /// round-robin.
    pub fn reactors(mut self, n: usize) -> Self {
        self.reactors = n.max(1);
        self
    }

    /// The listen backlog when this builder binds the socket. Default: 1024.
    pub fn backlog(mut self, n: u32) -> Self {
        self.backlog = i32::try_from(n).unwrap_or(i32::MAX);
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
        self.max_connections = n.max(1);
        self
    }

    /// The most bytes of one request a connection buffers: input beyond this without the
    /// codec producing a request is a [`DecodeError::FrameTooLarge`] protocol error. This
    /// bounds memory whatever the codec; the built-in codecs also check their own maximum.
    /// Default: 1 MiB.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.limits.max_frame = bytes.max(1);
        self
    }

    /// Requests of one connection handed to the pool and not yet answered. At the limit the
    /// server stops reading that connection until a reply is written. Default: 32.
    pub fn max_in_flight_per_connection(mut self, n: usize) -> Self {
        self.limits.max_in_flight = n.max(1);
        self
    }

    /// Requests waiting for a worker, over all connections. When the queue is full, a
    /// connection with a new request stops being read until there is room. Default: 1024.
    pub fn job_queue_capacity(mut self, n: usize) -> Self {
        self.job_queue_capacity = n.max(1);
        self
    }

    /// Unwritten output above which a connection is not read (its peer is not reading its
    /// replies). Requests in flight count with their input size, standing in for the
    /// replies still to come, so a connection's output stays under this mark plus one read.
    /// Default: 256 KiB.
    pub fn output_high_water(mut self, bytes: usize) -> Self {
        self.limits.output_high_water = bytes.max(1);
        self
    }

    /// Size of the buffer each `read()` fills (one per reactor). Default: 64 KiB.
    pub fn read_buffer(mut self, bytes: usize) -> Self {
        self.read_buffer = bytes.max(1);
        self
    }

    /// Bytes read from one connection per readiness event before the reactor turns to the
    /// others, so one busy peer cannot starve the rest. Default: 256 KiB.
    pub fn read_per_wakeup(mut self, bytes: usize) -> Self {
        self.limits.read_per_wakeup = bytes.max(1);
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
    /// Default: 1 s.
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

    fn listener(&mut self) -> io::Result<StdListener> {
        match std::mem::replace(&mut self.listen, Listen::Addr(Ok(Vec::new()))) {
            Listen::Listener(listener) => Ok(listener),
            Listen::Addr(addrs) => {
                let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to bind");
                for addr in addrs? {
                    match bind(addr, self.backlog, self.reuse_port) {
                        Ok(listener) => return Ok(listener),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    /// Binds (unless given a listener), starts every thread, and returns at once.
    pub fn start<C, H>(mut self, codec: C, handler: H) -> io::Result<ServerHandle>
    where
        C: Codec,
        H: Handler<Request = C::Request, Response = C::Response>,
    {
        let std_listener = self.listener()?;
        std_listener.set_nonblocking(true)?;
        let local_addr = std_listener.local_addr()?;
        let listener = mio::net::TcpListener::from_std(std_listener);

        let counters = Arc::new(Counters::default());
        let (acceptor, gate) =
            Acceptor::new(listener, self.max_connections, Arc::clone(&counters))?;
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(self.job_queue_capacity);
        let handler = Arc::new(handler);
        let inline: Option<Arc<InlineHandler<C>>> = if self.inline {
            Some(handler.clone())
        } else {
            None
        };
        let mut reactors = Vec::with_capacity(self.reactors);
        let mut mailboxes = Vec::with_capacity(self.reactors);
        for index in 0..self.reactors {
            let (reactor, mailbox) = Reactor::new(
                index,
                ReactorParts {
                    codec: codec.clone(),
                    jobs: jobs_tx.clone(),
                    inline: inline.clone(),
                    slow_handler: self.slow_handler,
                    counters: Arc::clone(&counters),
                    gate: Arc::clone(&gate),
                    limits: self.limits.clone(),
                    read_buffer: self.read_buffer,
                    log_level: self.connection_log_level,
                },
            )?;
            reactors.push(reactor);
            mailboxes.push(mailbox);
        }
        // Only reactors hold job senders: when the last reactor exits, the workers finish
        // the queue and exit too.
        drop(jobs_tx);
        let mailboxes: Arc<[Mailbox<C::Response>]> = mailboxes.into();

        let pool = Pool::spawn(
            if self.inline { 0 } else { self.workers },
            &self.thread_name,
            WorkerShared {
                handler,
                jobs: jobs_rx.clone(),
                mailboxes: Arc::clone(&mailboxes),
                counters: Arc::clone(&counters),
                slow_handler: self.slow_handler,
                batch_scheduling: self.batch_scheduling,
            },
        )?;
        let mut reactor_threads = Vec::with_capacity(reactors.len());
        let batch_scheduling = self.batch_scheduling;
        for (index, reactor) in reactors.into_iter().enumerate() {
            reactor_threads.push(
                thread::Builder::new()
                    .name(format!("{}-reactor-{index}", self.thread_name))
                    .spawn(move || {
                        if batch_scheduling {
                            crate::sys::prefer_batch_scheduling();
                        }
                        reactor.run()
                    })?,
            );
        }
        let acceptor_mailboxes = Arc::clone(&mailboxes);
        let acceptor_thread = thread::Builder::new()
            .name(format!("{}-acceptor", self.thread_name))
            .spawn(move || acceptor.run(acceptor_mailboxes))?;

        let (trigger_tx, triggered) = crossbeam_channel::bounded(1);
        log::debug!("listening on {local_addr}");
        let queue = jobs_rx.clone();
        Ok(ServerHandle {
            local_addr,
            stats: StatsReader {
                counters,
                queue_depth: Arc::new(move || queue.len()),
            },
            threads: Box::new(Threads {
                gate,
                acceptor: acceptor_thread,
                reactors: reactor_threads,
                mailboxes,
                pool,
                jobs: jobs_rx,
                timeout: self.shutdown_timeout,
            }),
            trigger: ShutdownTrigger { tx: trigger_tx },
            triggered,
        })
    }

    /// Starts the server and blocks until a [`ShutdownTrigger`] stops it.
    pub fn serve<C, H>(self, codec: C, handler: H) -> io::Result<()>
    where
        C: Codec,
        H: Handler<Request = C::Request, Response = C::Response>,
    {
        self.start(codec, handler)?.join();
        Ok(())
    }
}

fn bind(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restarted server can bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if reuse_port {
        crate::sys::set_reuse_port(&socket)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
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

/// The threads of a running server, behind a trait object so the handle is not generic.
trait Running: Send {
    /// Stops accepting, drains, closes and joins; returns workers still stuck in a handler.
    fn stop(self: Box<Self>) -> usize;
}

struct Threads<Req, Resp> {
    gate: Arc<AcceptGate>,
    acceptor: JoinHandle<()>,
    reactors: Vec<JoinHandle<()>>,
    mailboxes: Arc<[Mailbox<Resp>]>,
    pool: Pool,
    jobs: Receiver<Job<Req>>,
    timeout: Duration,
}

/// Reads a running server's counters from any thread; from [`ServerHandle::stats_reader`].
#[derive(Clone)]
pub struct StatsReader {
    counters: Arc<Counters>,
    queue_depth: Arc<dyn Fn() -> usize + Send + Sync>,
}

impl StatsReader {
    /// A snapshot of the server's live counters.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot((self.queue_depth)())
    }
}

impl fmt::Debug for StatsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsReader").finish_non_exhaustive()
    }
}

impl<Req: Send, Resp: Send> Running for Threads<Req, Resp> {
    fn stop(self: Box<Self>) -> usize {
        let Threads {
            gate,
            acceptor,
            reactors,
            mailboxes,
            pool,
            jobs,
            timeout,
        } = *self;
        gate.stop();
        // The acceptor is the only thread that touches the listener: once it is joined the
        // listening socket is closed and no connection can arrive.
        let _ = acceptor.join();
        let deadline = Instant::now() + timeout;
        for mailbox in mailboxes.iter() {
            let _ = mailbox.send(Inbound::Shutdown { deadline });
        }
        for reactor in reactors {
            let _ = reactor.join();
        }
        // Jobs still queued have no connection left to answer: skip them.
        while jobs.try_recv().is_ok() {}
        pool.join(deadline)
    }
}

/// A running server: its address, its counters, and the way to stop it.
///
/// Dropping the handle leaves the server running in the background until the process exits.
pub struct ServerHandle {
    local_addr: SocketAddr,
    stats: StatsReader,
    threads: Box<dyn Running>,
    trigger: ShutdownTrigger,
    triggered: Receiver<()>,
}

impl ServerHandle {
    /// The address the server accepts on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the server's live counters.
    pub fn stats(&self) -> Stats {
        self.stats.stats()
    }

    /// A cloneable reader of the counters, for a thread that reports them.
    pub fn stats_reader(&self) -> StatsReader {
        self.stats.clone()
    }

    /// A cloneable trigger that makes [`join`](ServerHandle::join) shut the server down; for a
    /// signal-handling thread, say.
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        self.trigger.clone()
    }

    /// Shuts the server down gracefully and waits for it:
    ///
    /// 1. the listener closes at once (new connections are refused);
    /// 2. each connection stops taking requests; requests already handed to the pool finish
    ///    and their replies are written; then the connection closes cleanly (our FIN, input
    ///    drained so the peer sees no reset);
    /// 3. at the shutdown timeout ([`Builder::shutdown_timeout`]) whatever is left is closed,
    ///    and every thread is joined — except workers still blocked in a handler past the
    ///    deadline, which are left to finish on their own (and logged).
    pub fn shutdown(self) {
        let stuck = self.threads.stop();
        if stuck > 0 {
            log::warn!(
                "shutdown: {stuck} workers still in a handler past the deadline; left running"
            );
        }
        log::debug!("server on {} stopped", self.local_addr);
    }

    /// Blocks until a [`ShutdownTrigger`] fires, then shuts down as
    /// [`shutdown`](ServerHandle::shutdown) does.
    pub fn join(self) {
        // The handle keeps a trigger itself, so this waits for a message, never a disconnect.
        let _ = self.triggered.recv();
        self.shutdown();
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Makes a server's [`ServerHandle::join`] return after a graceful shutdown. Cheap to clone;
/// firing it more than once is harmless.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger {
    tx: Sender<()>,
}

impl ShutdownTrigger {
    /// Asks the server to shut down.
    pub fn fire(&self) {
        match self.tx.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}
