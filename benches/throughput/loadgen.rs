//! The closed-loop load generator: client threads, each with its own mio event loop, keep
//! `depth` requests outstanding on each of their connections and check every echoed byte.
//!
//! A run goes through four phases, driven by [`run`] on the calling thread:
//!
//! 1. **connect**: each thread opens its share of the connections, at most
//!    [`MAX_PENDING_CONNECTS`] in progress at a time so the server's listen backlog never
//!    overflows (an overflow costs a one-second SYN retransmission). Each socket binds to one
//!    of several source addresses (`127.0.0.2`, `127.0.0.3`, ...) before it connects; see
//!    [`source_addresses`].
//! 2. **warm-up**: requests flow but are not counted, for the warm-up time and until every
//!    connection has had at least one reply (or failed), within [`WARMUP_CAP`].
//! 3. **measure**: completions are counted and their latency is recorded.
//! 4. **drain**: no new request is sent; replies still owed are awaited for at most
//!    [`DRAIN_CAP`], and whatever is still unanswered then counts as an error.
//!
//! After the drain the connections stay open, idle, until the caller's `on_event` returns from
//! [`Event::Drained`]: the runner reads the server's figures and stops the server first, so
//! the server's side of each connection, not ours, is left in TIME_WAIT.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rand::RngCore;
use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Connections one client thread has in the middle of connecting at once.
pub const MAX_PENDING_CONNECTS: usize = 256;
/// A connection not established after this long counts as a failed connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest warm-up when some connection has not had its first reply yet.
pub const WARMUP_CAP: Duration = Duration::from_secs(15);
/// Longest wait for the replies still owed once the measured window ends.
pub const DRAIN_CAP: Duration = Duration::from_secs(5);
/// One source address per this many connections, and 4 to 64 addresses whatever the count.
const CONNECTIONS_PER_SOURCE: usize = 1000;
const MIN_SOURCES: usize = 4;
const MAX_SOURCES: usize = 64;
/// Longest time a client thread's poll sleeps, so it notices phase changes promptly.
const POLL_TICK: Duration = Duration::from_millis(5);
/// Size of the random pattern every message is cut from.
const PATTERN_LEN: usize = 1 << 16;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const DRAIN: u8 = 2;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub connections: usize,
    pub message_size: usize,
    pub depth: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub threads: usize,
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
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.lost + self.mismatch + self.unanswered
    }

    fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.lost += other.lost;
        self.mismatch += other.mismatch;
        self.unanswered += other.unanswered;
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Requests whose whole reply arrived, correct, during the measured window.
    pub completed: u64,
    /// The measured window's real length.
    pub measured: Duration,
    /// Latency of each completed request in microseconds, send to last reply byte.
    pub latency_us: Histogram<u64>,
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

struct Shared {
    phase: AtomicU8,
    /// Connections that are established or failed.
    connects_done: AtomicUsize,
    /// Connections that had a first reply or failed.
    settled: AtomicUsize,
}

struct ThreadResult {
    completed: u64,
    latency_us: Histogram<u64>,
    errors: ErrorCounts,
}

/// Runs one load test against `cfg.target`, calling `on_event` at each phase boundary.
pub fn run(cfg: &LoadConfig, mut on_event: impl FnMut(Event)) -> io::Result<LoadResult> {
    if !cfg.target.ip().is_loopback() {
        let why = format!("{}: the bench only connects to loopback", cfg.target);
        return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    }
    let mut pattern = vec![0u8; PATTERN_LEN + cfg.message_size];
    rand::thread_rng().fill_bytes(&mut pattern);
    let pattern: Arc<[u8]> = pattern.into();
    let sources = source_addresses(cfg.connections);
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(WARMUP),
        connects_done: AtomicUsize::new(0),
        settled: AtomicUsize::new(0),
    });
    let threads = cfg.threads.clamp(1, cfg.connections.max(1));
    // Every thread gives up on its own at this point, whatever happens here.
    let hard_deadline =
        Instant::now() + CONNECT_TIMEOUT * 2 + cfg.warmup + WARMUP_CAP + cfg.duration + DRAIN_CAP;
    let (results_tx, results_rx) = mpsc::channel();
    let mut releases = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let ids: Vec<usize> = (t..cfg.connections).step_by(threads).collect();
        let client = Client::new(cfg, ids, &sources, &pattern, &shared, hard_deadline)?;
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

    wait_for_warmup(cfg, &shared, hard_deadline);
    shared.phase.store(MEASURE, Ordering::Release);
    let started = Instant::now();
    on_event(Event::MeasureStarted);
    thread::sleep(cfg.duration);
    shared.phase.store(DRAIN, Ordering::Release);
    let measured = started.elapsed();
    on_event(Event::MeasureEnded);

    let mut result = LoadResult {
        completed: 0,
        measured,
        latency_us: new_histogram(),
        errors: ErrorCounts::default(),
    };
    for _ in 0..threads {
        let left = hard_deadline.saturating_duration_since(Instant::now()) + POLL_TICK * 4;
        match results_rx.recv_timeout(left) {
            Ok(part) => {
                result.completed += part.completed;
                let _ = result.latency_us.add(&part.latency_us);
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

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Waits until every connection is established and has had a reply (or failed) and the
/// warm-up time has passed since the last connect, within the caps.
fn wait_for_warmup(cfg: &LoadConfig, shared: &Shared, hard_deadline: Instant) {
    let connect_deadline = Instant::now() + CONNECT_TIMEOUT * 2;
    while shared.connects_done.load(Ordering::Acquire) < cfg.connections
        && Instant::now() < connect_deadline
    {
        thread::sleep(POLL_TICK);
    }
    let connected = Instant::now();
    let warm_until = connected + cfg.warmup;
    let cap = (connected + cfg.warmup + WARMUP_CAP).min(hard_deadline);
    loop {
        let now = Instant::now();
        let settled = shared.settled.load(Ordering::Acquire) >= cfg.connections;
        if (now >= warm_until && settled) || now >= cap {
            return;
        }
        thread::sleep(POLL_TICK);
    }
}

/// A request sent and not yet fully answered.
struct Pending {
    /// Where its bytes start in the pattern.
    offset: usize,
    sent: Instant,
}

enum ConnState {
    Connecting { since: Instant },
    Open,
    Dead,
}

struct Conn {
    stream: TcpStream,
    state: ConnState,
    out: Vec<u8>,
    out_pos: usize,
    pending: VecDeque<Pending>,
    /// Bytes of the front pending request's reply received so far.
    recv_off: usize,
    /// Whether any byte of the front reply so far was wrong.
    front_bad: bool,
    replied: bool,
    rng: u64,
}

/// One client thread and its connections; the index in `conns` is the mio token.
struct Client {
    poll: Poll,
    conns: Vec<Conn>,
    /// Global connection ids still to open, in order.
    to_open: VecDeque<usize>,
    connecting: usize,
    target: SocketAddr,
    sources: Vec<Ipv4Addr>,
    pattern: Arc<[u8]>,
    size: usize,
    depth: usize,
    shared: Arc<Shared>,
    hard_deadline: Instant,
    completed: u64,
    latency_us: Histogram<u64>,
    errors: ErrorCounts,
    outstanding: usize,
    scratch: Vec<u8>,
}

impl Client {
    fn new(
        cfg: &LoadConfig,
        ids: Vec<usize>,
        sources: &[Ipv4Addr],
        pattern: &Arc<[u8]>,
        shared: &Arc<Shared>,
        hard_deadline: Instant,
    ) -> io::Result<Client> {
        Ok(Client {
            poll: Poll::new()?,
            conns: Vec::with_capacity(ids.len()),
            to_open: ids.into(),
            connecting: 0,
            target: cfg.target,
            sources: sources.to_vec(),
            pattern: Arc::clone(pattern),
            size: cfg.message_size.max(1),
            depth: cfg.depth.max(1),
            shared: Arc::clone(shared),
            hard_deadline,
            completed: 0,
            latency_us: new_histogram(),
            errors: ErrorCounts::default(),
            outstanding: 0,
            scratch: vec![0; 64 * 1024],
        })
    }

    /// Runs the phases; returns itself so the caller decides when the sockets close.
    fn run(mut self, results: &mpsc::Sender<ThreadResult>) -> Self {
        let mut events = Events::with_capacity(1024);
        let mut drain_deadline: Option<Instant> = None;
        loop {
            self.open_more();
            if let Err(e) = self.poll.poll(&mut events, Some(POLL_TICK)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    break;
                }
            }
            for event in events.iter() {
                self.on_event(event.token().0);
            }
            let now = Instant::now();
            self.expire_connects(now);
            if self.shared.phase.load(Ordering::Acquire) == DRAIN && drain_deadline.is_none() {
                drain_deadline = Some((now + DRAIN_CAP).min(self.hard_deadline));
            }
            let drained = drain_deadline.is_some() && self.outstanding == 0;
            if drained || drain_deadline.is_some_and(|d| now >= d) || now >= self.hard_deadline {
                break;
            }
        }
        self.errors.unanswered += self.outstanding as u64;
        self.errors.connect += self.to_open.len() as u64;
        let _ = results.send(ThreadResult {
            completed: self.completed,
            latency_us: std::mem::replace(&mut self.latency_us, new_histogram()),
            errors: self.errors,
        });
        self
    }

    fn open_more(&mut self) {
        while self.connecting < MAX_PENDING_CONNECTS {
            let Some(id) = self.to_open.pop_front() else {
                return;
            };
            let source = self.sources[id % self.sources.len()];
            match self.start_connect(source, self.conns.len()) {
                Ok(stream) => {
                    self.connecting += 1;
                    self.conns.push(Conn {
                        stream,
                        state: ConnState::Connecting {
                            since: Instant::now(),
                        },
                        out: Vec::new(),
                        out_pos: 0,
                        pending: VecDeque::with_capacity(self.depth),
                        recv_off: 0,
                        front_bad: false,
                        replied: false,
                        rng: (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    });
                }
                Err(_) => {
                    self.errors.connect += 1;
                    self.settle_one(true);
                }
            }
        }
    }

    fn start_connect(&self, source: Ipv4Addr, token: usize) -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket.set_nodelay(true)?;
        socket.bind(&SockAddr::from(SocketAddrV4::new(source, 0)))?;
        match socket.connect(&SockAddr::from(self.target)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(socket.into());
        self.poll.registry().register(
            &mut stream,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(stream)
    }

    /// A connection attempt ended; a `failed` one also counts as settled (it will never
    /// have a first reply to wait for).
    fn settle_one(&self, failed: bool) {
        self.shared.connects_done.fetch_add(1, Ordering::AcqRel);
        if failed {
            self.shared.settled.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn expire_connects(&mut self, now: Instant) {
        if self.connecting == 0 {
            return;
        }
        for token in 0..self.conns.len() {
            if let ConnState::Connecting { since } = self.conns[token].state {
                if now.duration_since(since) >= CONNECT_TIMEOUT {
                    self.errors.connect += 1;
                    self.connecting -= 1;
                    self.kill(token);
                    self.settle_one(true);
                }
            }
        }
    }

    fn on_event(&mut self, token: usize) {
        match self.conns[token].state {
            ConnState::Dead => {}
            ConnState::Connecting { .. } => self.finish_connect(token),
            ConnState::Open => {
                self.read(token);
                self.write(token);
            }
        }
    }

    fn finish_connect(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        let failed = match conn.stream.take_error() {
            Ok(Some(_)) | Err(_) => true,
            Ok(None) => match conn.stream.peer_addr() {
                Ok(_) => false,
                // Not connected yet: a spurious wake-up; wait for the next event.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => true,
            },
        };
        self.connecting -= 1;
        if failed {
            self.errors.connect += 1;
            self.kill(token);
            self.settle_one(true);
            return;
        }
        self.conns[token].state = ConnState::Open;
        self.settle_one(false);
        let now = Instant::now();
        for _ in 0..self.depth {
            self.enqueue(token, now);
        }
        self.write(token);
        // Readiness is edge-triggered: a reply may already be waiting.
        self.read(token);
    }

    /// Queues one new request on the connection.
    fn enqueue(&mut self, token: usize, now: Instant) {
        let size = self.size;
        let conn = &mut self.conns[token];
        // xorshift64: a different slice of the pattern for every request.
        conn.rng ^= conn.rng << 13;
        conn.rng ^= conn.rng >> 7;
        conn.rng ^= conn.rng << 17;
        let offset = (conn.rng % PATTERN_LEN as u64) as usize;
        if conn.out_pos == conn.out.len() {
            conn.out.clear();
            conn.out_pos = 0;
        }
        conn.out
            .extend_from_slice(&self.pattern[offset..offset + size]);
        conn.pending.push_back(Pending { offset, sent: now });
        self.outstanding += 1;
    }

    fn write(&mut self, token: usize) {
        loop {
            let conn = &mut self.conns[token];
            if conn.out_pos == conn.out.len() {
                return;
            }
            match conn.stream.write(&conn.out[conn.out_pos..]) {
                Ok(0) => return self.lose(token),
                Ok(n) => conn.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.lose(token),
            }
        }
    }

    fn read(&mut self, token: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        loop {
            if !matches!(self.conns[token].state, ConnState::Open) {
                break;
            }
            match self.conns[token].stream.read(&mut scratch) {
                Ok(0) => {
                    self.lose(token);
                    break;
                }
                Ok(n) => self.take_reply_bytes(token, &scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.lose(token);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Checks received bytes against the requests outstanding, completing requests.
    fn take_reply_bytes(&mut self, token: usize, mut data: &[u8]) {
        let size = self.size;
        let mut now: Option<Instant> = None;
        while !data.is_empty() {
            let conn = &mut self.conns[token];
            let Some(front) = conn.pending.front() else {
                // Bytes nobody asked for.
                self.errors.mismatch += 1;
                return;
            };
            let expected = &self.pattern[front.offset + conn.recv_off..front.offset + size];
            let take = expected.len().min(data.len());
            if data[..take] != expected[..take] {
                conn.front_bad = true;
            }
            conn.recv_off += take;
            data = &data[take..];
            if conn.recv_off < size {
                continue;
            }
            let done = conn.pending.pop_front().expect("checked above");
            let bad = std::mem::take(&mut conn.front_bad);
            conn.recv_off = 0;
            self.outstanding -= 1;
            if !std::mem::replace(&mut conn.replied, true) {
                self.shared.settled.fetch_add(1, Ordering::AcqRel);
            }
            let at = *now.get_or_insert_with(Instant::now);
            let phase = self.shared.phase.load(Ordering::Relaxed);
            if bad {
                self.errors.mismatch += 1;
            } else if phase == MEASURE {
                self.completed += 1;
                let us = at.duration_since(done.sent).as_micros();
                self.latency_us
                    .saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
            }
            if phase != DRAIN {
                self.enqueue(token, at);
            }
        }
        self.write(token);
    }

    /// An established connection failed: its outstanding requests will never be answered.
    fn lose(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        if !matches!(conn.state, ConnState::Open) {
            return;
        }
        self.errors.lost += 1;
        let unanswered = conn.pending.len();
        self.errors.unanswered += unanswered as u64;
        self.outstanding -= unanswered;
        conn.pending.clear();
        if !conn.replied {
            conn.replied = true;
            self.shared.settled.fetch_add(1, Ordering::AcqRel);
        }
        self.kill(token);
    }

    fn kill(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        conn.state = ConnState::Dead;
        let _ = self.poll.registry().deregister(&mut conn.stream);
        conn.out = Vec::new();
        conn.out_pos = 0;
    }
}
