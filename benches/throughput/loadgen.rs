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
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::client::Client;
pub use crate::load::*;

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
