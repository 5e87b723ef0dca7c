//! The load generator: client threads, each with its own mio event loop ([`crate::client`]),
//! keep `depth` requests outstanding on each of their connections and check every echoed
//! byte. With a `think` time a connection instead pauses that long after each reply before
//! its next request (the hold scenario: many connections, mostly idle).
//!
//! A run goes through four phases, driven by [`run`] on the calling thread:
//!
//! 1. **connect**: each thread opens its share of the connections, with at most
//!    [`pending_connects`] in progress at a time over all threads, so the server's listen
//!    backlog never overflows (an overflow costs a one-second SYN retransmission). A
//!    connection is in progress until its first reply, since the kernel completes a connect
//!    before the server accepts it. Each connection sends its first request as soon as it
//!    is established, think time or not. Each socket binds to one of several source addresses (`127.0.0.2`,
//!    `127.0.0.3`, ...) before it connects; see [`source_addresses`].
//! 2. **warm-up**: requests flow but are not counted, for the warm-up time and until every
//!    connection has had at least one reply (or failed), within [`WARMUP_CAP`]. With a think
//!    time, the request after a connection's first reply goes out at a random offset in
//!    `[0, think)`, and every later one `think` after the previous reply, so the requests of
//!    thousands of connections are spread evenly over time instead of arriving in waves.
//! 3. **measure**: completions are counted and their latency is recorded, and so is each
//!    connection's first reply in the window (a connection with none is an error).
//! 4. **drain**: no new request is sent; replies still owed are awaited for at most
//!    [`DRAIN_CAP`], and whatever is still unanswered then counts as an error.
//!
//! After the drain the connections stay open, idle, until the caller's `on_event` returns from
//! [`Event::Drained`]: the runner reads the server's figures and stops the server first, so
//! the server's side of each connection, not ours, is left in TIME_WAIT.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::RngCore;
use serde::Serialize;

use crate::client::Client;

/// Connections in progress at once over all client threads, as a fraction of the server's
/// listen backlog: half of it, so the backlog is never more than half full with our
/// connects.
const PENDING_PER_BACKLOG: usize = 2;
/// The fewest connections in progress at once, whatever the backlog.
const MIN_PENDING_CONNECTS: usize = 16;
/// A connection not established after this long counts as a failed connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest warm-up (beyond the think time) when some connection has not had its first
/// reply yet.
pub const WARMUP_CAP: Duration = Duration::from_secs(15);
/// Longest wait for the replies still owed once the measured window ends.
pub const DRAIN_CAP: Duration = Duration::from_secs(5);
/// One source address per this many connections, and 4 to 64 addresses whatever the count.
const CONNECTIONS_PER_SOURCE: usize = 1000;
const MIN_SOURCES: usize = 4;
const MAX_SOURCES: usize = 64;
/// Longest time a client thread's poll sleeps, so it notices phase changes promptly.
pub const POLL_TICK: Duration = Duration::from_millis(5);
/// Size of the random pattern every message is cut from.
pub const PATTERN_LEN: usize = 1 << 16;

pub const WARMUP: u8 = 0;
pub const MEASURE: u8 = 1;
pub const DRAIN: u8 = 2;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub connections: usize,
    pub message_size: usize,
    pub depth: usize,
    /// Pause between a reply and the connection's next request; zero is a closed loop
    /// (the next request goes out as soon as a reply is in).
    pub think: Duration,
    pub warmup: Duration,
    pub duration: Duration,
    pub threads: usize,
    /// Speak TLS with this client configuration (the TLS scenarios): each connection's
    /// handshake starts once it is established; its requests wait in rustls until the
    /// handshake is done.
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<reactor_pool::rustls::ClientConfig>>,
    /// One request per connection: once its echo is in, the connection closes (after TLS's
    /// close_notify) and a new one takes its place (the handshake scenario).
    pub reconnect: bool,
}

/// Moments of a run the caller may want to act on (sample the server's CPU time...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    MeasureStarted,
    MeasureEnded,
    /// Replies are drained; connections are still open until `on_event` returns.
    Drained,
}

/// What went wrong, by kind, over the whole run (warm-up and drain included). The total is
/// what the report calls errors.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ErrorCounts {
    /// Connections that could not be established (refused, timed out, out of descriptors).
    pub connect: u64,
    /// Established connections that failed (reset, unexpected EOF, read or write error).
    pub lost: u64,
    /// Replies whose bytes differ from the request's, or bytes nobody asked for.
    pub mismatch: u64,
    /// Requests never answered: outstanding at the end of the drain or on a lost connection.
    pub unanswered: u64,
    /// Established connections, still open at the end, that had no correct reply during
    /// the measured window (starved).
    pub unserved: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.lost + self.mismatch + self.unanswered + self.unserved
    }

    pub fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.lost += other.lost;
        self.mismatch += other.mismatch;
        self.unanswered += other.unanswered;
        self.unserved += other.unserved;
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Requests whose whole reply arrived, correct, during the measured window.
    pub completed: u64,
    /// The measured window's real length.
    pub measured: Duration,
    /// From the start of the run until every connection was established or had failed.
    pub connect_time: Duration,
    /// Latency of each completed request in microseconds, send to last reply byte.
    pub latency_us: Histogram<u64>,
    /// With a think time: how late each request of the measured window went out after its
    /// due time, in microseconds (the load generator's own lag: poll granularity and load).
    pub send_lag_us: Histogram<u64>,
    /// Connections established.
    pub established: u64,
    /// Connections that had at least one correct reply during the measured window.
    pub served: u64,
    pub errors: ErrorCounts,
}

/// The source addresses the client sockets are spread over, round-robin.
///
/// Linux picks a client port per source address from the ephemeral range (28,232 ports by
/// default) and keeps it busy through TIME_WAIT. One address per 1,000 connections, and
/// never fewer than 4, leaves each address far from that limit even after many runs in a row.
pub fn source_addresses(connections: usize) -> Vec<Ipv4Addr> {
    let count = connections
        .div_ceil(CONNECTIONS_PER_SOURCE)
        .clamp(MIN_SOURCES, MAX_SOURCES);
    (0..count)
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
        .collect()
}

/// How many connections may be in progress at once over all client threads: half the
/// backlog the servers ask for, or of `net.core.somaxconn` if the kernel caps it lower.
pub fn pending_connects() -> usize {
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let backlog = usize::try_from(crate::servers::BACKLOG)
        .unwrap_or(0)
        .min(somaxconn);
    (backlog / PENDING_PER_BACKLOG).max(MIN_PENDING_CONNECTS)
}

/// State the client threads and the driving thread share.
pub struct Shared {
    pub phase: AtomicU8,
    /// Connections that are established or failed.
    pub connects_done: AtomicUsize,
    /// Connections that had a first reply or failed.
    pub settled: AtomicUsize,
}

/// What one client thread measured.
pub struct ThreadResult {
    pub completed: u64,
    pub latency_us: Histogram<u64>,
    pub send_lag_us: Histogram<u64>,
    pub established: u64,
    pub served: u64,
    pub errors: ErrorCounts,
}

/// Runs one load test against `cfg.target`, calling `on_event` at each phase boundary.
pub fn run(cfg: &LoadConfig, mut on_event: impl FnMut(Event)) -> io::Result<LoadResult> {
    if !cfg.target.ip().is_loopback() {
        let why = format!("{}: the bench only connects to loopback", cfg.target);
        return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    }
    let started = Instant::now();
    let mut pattern = vec![0u8; PATTERN_LEN + cfg.message_size];
    rand::thread_rng().fill_bytes(&mut pattern);
    let pattern: Arc<[u8]> = pattern.into();
    // A reconnecting run leaves a socket in TIME_WAIT per connection, each holding its
    // source port for a minute: all the addresses there are.
    let sources = if cfg.reconnect {
        source_addresses(MAX_SOURCES * CONNECTIONS_PER_SOURCE)
    } else {
        source_addresses(cfg.connections)
    };
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(WARMUP),
        connects_done: AtomicUsize::new(0),
        settled: AtomicUsize::new(0),
    });
    let threads = cfg.threads.clamp(1, cfg.connections.max(1));
    let pending_per_thread = (pending_connects() / threads).max(1);
    // Every thread gives up on its own at this point, whatever happens here.
    let hard_deadline = Instant::now()
        + CONNECT_TIMEOUT * 2
        + cfg.warmup
        + cfg.think
        + WARMUP_CAP
        + cfg.duration
        + DRAIN_CAP;
    let (results_tx, results_rx) = mpsc::channel();
    let mut releases = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let ids: Vec<usize> = (t..cfg.connections).step_by(threads).collect();
        let client = Client::new(
            cfg,
            ids,
            pending_per_thread,
            &sources,
            &pattern,
            &shared,
            hard_deadline,
        )?;
        let results_tx = results_tx.clone();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        releases.push(release_tx);
        handles.push(
            thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || {
                    let client = client.run(&results_tx);
                    // Hold the connections open until the runner has stopped the server.
                    let _ = release_rx.recv_timeout(Duration::from_secs(60));
                    drop(client);
                })?,
        );
    }
    drop(results_tx);

    let connect_time = wait_for_warmup(cfg, &shared, hard_deadline) - started;
    shared.phase.store(MEASURE, Ordering::Release);
    let measure_start = Instant::now();
    on_event(Event::MeasureStarted);
    thread::sleep(cfg.duration);
    shared.phase.store(DRAIN, Ordering::Release);
    let measured = measure_start.elapsed();
    on_event(Event::MeasureEnded);

    let mut result = LoadResult {
        completed: 0,
        measured,
        connect_time,
        latency_us: new_histogram(),
        send_lag_us: new_histogram(),
        established: 0,
        served: 0,
        errors: ErrorCounts::default(),
    };
    for _ in 0..threads {
        let left = hard_deadline.saturating_duration_since(Instant::now()) + POLL_TICK * 4;
        match results_rx.recv_timeout(left) {
            Ok(part) => {
                result.completed += part.completed;
                let _ = result.latency_us.add(&part.latency_us);
                let _ = result.send_lag_us.add(&part.send_lag_us);
                result.established += part.established;
                result.served += part.served;
                result.errors.add(&part.errors);
            }
            Err(_) => break,
        }
    }
    on_event(Event::Drained);
    drop(releases);
    for handle in handles {
        let _ = handle.join();
    }
    Ok(result)
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Waits until every connection is established and has had a reply (or failed) and the
/// warm-up time has passed since the last connect, within the caps. Returns when the last
/// connect ended (or the connect phase timed out).
fn wait_for_warmup(cfg: &LoadConfig, shared: &Shared, hard_deadline: Instant) -> Instant {
    let connect_deadline = Instant::now() + CONNECT_TIMEOUT * 2;
    while shared.connects_done.load(Ordering::Acquire) < cfg.connections
        && Instant::now() < connect_deadline
    {
        thread::sleep(POLL_TICK);
    }
    let connected = Instant::now();
    let warm_until = connected + cfg.warmup;
    let cap = (connected + cfg.warmup + cfg.think + WARMUP_CAP).min(hard_deadline);
    loop {
        let now = Instant::now();
        let settled = shared.settled.load(Ordering::Acquire) >= cfg.connections;
        if (now >= warm_until && settled) || now >= cap {
            return connected;
        }
        thread::sleep(POLL_TICK);
    }
}
