//! Configuring and starting a server: the [`Builder`] and its settings (here), its
//! transport settings (`listen`), checking them and wiring acceptor, reactors and workers
//! (`start`), and the running server's [`ServerHandle`] and [`ShutdownTrigger`] (`handle`).
//!
//! May import: everything below (`runtime`, `conn`, `transport`, `codec`, `handler`,
//! `stats`, `util`, `sys`). The top of the crate: nothing imports it but `lib.rs`.

pub(crate) mod handle;
mod listen;
mod start;

pub use listen::Keepalive;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

#[cfg(doc)]
use crate::codec::DecodeError;
use crate::conn::Limits;
use crate::transport::wire::WireConfig;
#[cfg(doc)]
use handle::ServerHandle;
use handle::ShutdownTrigger;

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
    mode: Mode,
    adaptive_inline: Option<Duration>,
    push_limit: usize,
    pub(crate) limits: Limits,
}

/// Where a server runs its handler ([`Builder::mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// On the worker pool; one connection's requests run one after another in arrival
    /// order, with its session `&mut`, a pipelined burst as one batch. The handler may
    /// block. While it proves fast, a reactor runs the batches itself
    /// ([`Builder::adaptive_inline`]), in the same order. The default.
    #[default]
    Pool,
    /// On the worker pool; one connection's pipelined requests may run at the same time on
    /// different workers (their replies are still written in request order). For stateless
    /// handlers only (`Handler::Session = ()`; [`Builder::start`] refuses any other with
    /// `InvalidInput`), since there is no session to share. The open and close hooks still
    /// run once per connection; the close hook may run before the connection's last calls
    /// have returned (they never see its session), and a close a handler asks for cannot
    /// stop the connection's requests already running beside it. While the handler proves
    /// fast, a reactor runs the requests itself, one after another
    /// ([`Builder::adaptive_inline`]).
    Concurrent,
    /// On the reactor thread that read the request; no worker thread is started
    /// ([`Builder::workers`] is ignored). It saves the two thread hand-offs per request, so
    /// it is the fastest way to serve a handler that never blocks (an in-memory lookup, a
    /// computed reply). A handler that blocks stalls every connection of its reactor for
    /// that long: keep the pool for anything that waits. Panics are still caught (that
    /// connection is closed) and slow calls still counted and logged.
    Inline,
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
            mode: Mode::Pool,
            adaptive_inline: Some(Duration::from_micros(50)),
            push_limit: 1024,
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
    /// how many handler calls may block at once. Ignored in [`Mode::Inline`].
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Reactor threads that own the sockets. Default: one per available core
    /// (`std::thread::available_parallelism`), so socket work uses every core when there
    /// are many connections; with few, the idle ones only sleep. Connections are spread over
    /// them round-robin. With [`adaptive_inline`](Builder::adaptive_inline) each reactor
    /// also has a standby thread, asleep until it takes the reactor over, and the server one
    /// watchdog thread.
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
    /// peer reads the last reply instead of a reset: nginx's lingering close, and its name
    /// (`lingering_time`). Not `SO_LINGER`, which the server never sets. Default: 2 s.
    pub fn lingering_time(mut self, timeout: Duration) -> Self {
        self.limits.linger = timeout;
        self
    }

    /// Handler calls running this long or longer are logged and counted (never killed).
    /// `None` turns the check off, and the workers then never read the clock around a
    /// call. Default: `Some(1 s)`.
    pub fn slow_handler_threshold(mut self, threshold: Option<Duration>) -> Self {
        // Internally "never" is the saturating Duration::MAX, as every other deadline.
        self.slow_handler = threshold.unwrap_or(Duration::MAX);
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
    /// four-fold and raised echo throughput by about a quarter (docs/bench/README.md). The cost: a
    /// woken thread can wait up to one scheduler time slice (a few milliseconds) behind a
    /// busy thread of another program. Turn it off when the server shares its cores with
    /// CPU-bound work and tail latency matters more than throughput. No effect on other
    /// systems. Default: on.
    pub fn batch_scheduling(mut self, enabled: bool) -> Self {
        self.batch_scheduling = enabled;
        self
    }

    /// On Linux, the timer slack of the threads that run the handler (the workers, and with
    /// [`adaptive_inline`](Builder::adaptive_inline) the reactors and their standbys): how late the kernel may end a timed
    /// wait of the handler's (a sleep, a socket or lock timeout) so as to batch wake-ups. The
    /// kernel's default, 50 µs, makes a handler's 1 ms sleep take about 1.06 ms; with 1 µs it
    /// takes about 1.01 ms, and a pool of handlers that wait comes within 5% of its ideal
    /// throughput (the blocking workload of docs/bench/README.md: 0.92 → 0.95 of ideal). The
    /// cost is a few more timer wake-ups; waits on the job queue have no timeout and are not
    /// affected. `None` keeps the system's slack. No effect on other systems.
    /// Default: `Some(1 µs)`.
    pub fn worker_timer_slack(mut self, slack: Option<Duration>) -> Self {
        self.worker_timer_slack = slack;
        self
    }

    /// How many pushed responses ([`Pusher::push`](crate::Pusher::push)) may wait, per
    /// connection, to be encoded; a push past it is refused with
    /// [`PushError::Full`](crate::PushError::Full) (counted in
    /// [`Stats::pushes_refused`](crate::Stats::pushes_refused)). Pushes are encoded only while the
    /// connection's output is under [`output_high_water`](Builder::output_high_water), so
    /// a peer that stops reading holds at most this many pushes plus the high-water mark.
    /// Default: 1,024.
    pub fn push_limit(mut self, n: usize) -> Self {
        self.push_limit = n;
        self
    }

    /// Where the handler runs: on the worker pool, one connection's requests one after
    /// another ([`Mode::Pool`]); on the pool, one connection's pipelined requests at once
    /// ([`Mode::Concurrent`], stateless handlers only); or on the reactor thread
    /// ([`Mode::Inline`], handlers that never block). Default: [`Mode::Pool`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Adaptive inline, for [`Mode::Pool`] and [`Mode::Concurrent`]: while the handler has
    /// proven fast, a reactor runs a connection's batch itself, at the end of the turn that
    /// read it, instead of handing it to a worker and taking the replies back (two thread
    /// wake-ups per request when the load is light). The batch is queued and answered as it
    /// would be on the pool, so order, sessions and closes are the same; only the thread
    /// differs. A batch that takes longer than `budget` per request (up to 16 requests'
    /// worth for a pipelined batch) sends that reactor's batches back to the pool for a
    /// cool-down of 10 ms, doubling with each slow batch after it up to 10 s, and starting
    /// over after 1,000 fast ones in a row; [`Stats::batches_inline`](crate::Stats::batches_inline)
    /// and [`Stats::inline_overruns`](crate::Stats::inline_overruns) count them. So a handler
    /// that blocks runs on the pool, probed on a reactor once per cool-down: that one call
    /// stalls the reactor's other connections for as long as it takes. A handler that may
    /// block for long on any call (a lock held across a slow query, an external service)
    /// should turn this off with `None`. No effect in [`Mode::Inline`].
    /// Default: `Some(50 µs)`.
    pub fn adaptive_inline(mut self, budget: Option<Duration>) -> Self {
        self.adaptive_inline = budget;
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
