//! What the load generator's driving thread and its client threads share: the settings of
//! a run, its phases, the counters and results, and the constants that bound it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicUsize};
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Connections in progress at once over all client threads, as a fraction of the server's
/// listen backlog: half of it, so the backlog is never more than half full with our
/// connects.
pub const PENDING_PER_BACKLOG: usize = 2;
/// The fewest connections in progress at once, whatever the backlog.
pub const MIN_PENDING_CONNECTS: usize = 16;
/// A connection not established after this long counts as a failed connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest warm-up (beyond the think time) when some connection has not had its first
/// reply yet.
pub const WARMUP_CAP: Duration = Duration::from_secs(15);
/// Longest wait for the replies still owed once the measured window ends.
pub const DRAIN_CAP: Duration = Duration::from_secs(5);
/// One source address per this many connections, and 4 to 64 addresses whatever the count.
pub const CONNECTIONS_PER_SOURCE: usize = 1000;
pub const MIN_SOURCES: usize = 4;
pub const MAX_SOURCES: usize = 64;
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

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}
