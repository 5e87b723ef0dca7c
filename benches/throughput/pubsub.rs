//! The fan-out scenario's load generator: `subscribers` RESP connections `SUBSCRIBE` one
//! channel, one publisher connection `PUBLISH`es to it, and every message every subscriber
//! receives is checked, counted and timed.
//!
//! 1. **subscribe**: the subscriber connections are opened one after another (blocking),
//!    each sends `SUBSCRIBE ch` and reads its confirmation (`*3 subscribe ch :1`, exactly),
//!    so all of them are subscribed before the first message; then they go, non-blocking,
//!    to `threads` mio event loops.
//! 2. **publish**: the publisher (a thread of its own, a blocking socket) sends
//!    `PUBLISH ch PAYLOAD` and waits for its reply (`:N`, N the subscribers that got it,
//!    checked), closed loop, with a delivery window: it sends message k only once message
//!    k - [`WINDOW`] has reached every subscriber. So neither server can let its subscribers'
//!    queues grow without bound (the latency measured stays the fan-out's, not a queue's),
//!    and a message lost on the way stops the publisher: the run fails after
//!    [`STALL`] with the message and how many subscribers got it. The payload is
//!    [`PAYLOAD_LEN`] bytes: the message's sequence number and its send time (nanoseconds
//!    since the run's start, this process's monotonic clock), in decimal, then padding.
//! 3. **warm-up**, then the **measured window**: deliveries (one message to one subscriber)
//!    received in the window are counted, and each one's latency, from the publisher's
//!    timestamp to the read that brought the message in, goes into a histogram.
//! 4. **drain**: publishing stops; the subscribers read until every message published has
//!    reached every subscriber (at most [`DRAIN_CAP`]). Each subscriber checks that its
//!    messages come in order with no gap: `lost` counts every (message, subscriber) pair
//!    never received.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};

/// Messages published and not yet received by every subscriber, at most.
pub const WINDOW: u64 = 8;
/// The payload's length in bytes.
pub const PAYLOAD_LEN: usize = 64;
/// How long the oldest message of the window may take to reach every subscriber.
pub const STALL: Duration = Duration::from_secs(5);
/// How long the drain may take.
pub const DRAIN_CAP: Duration = Duration::from_secs(5);
/// The channel.
const CHANNEL: &str = "ch";
/// Slots of the delivery ring: more than the window.
const RING: usize = 2 * WINDOW as usize;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;
const DONE: u8 = 3;

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub target: SocketAddr,
    pub subscribers: usize,
    /// Subscriber event loops.
    pub threads: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct FanoutResult {
    /// How long subscribing every connection took.
    pub subscribe_s: f64,
    pub measured_s: f64,
    /// Messages published in all (each one acknowledged).
    pub published: u64,
    /// Messages published in the measured window.
    pub published_in_window: u64,
    /// Deliveries received in the measured window.
    pub delivered_in_window: u64,
    /// Deliveries received in all.
    pub delivered: u64,
    /// (message, subscriber) pairs never received: published × subscribers - delivered.
    pub lost: u64,
    /// Delivery latency in microseconds, measured window only.
    pub latency_us: Histogram<u64>,
    /// What went wrong (a bad reply, a closed subscriber, a stall), first few.
    pub errors: Vec<String>,
}

/// Phase at which the coordinator calls back.
pub enum Event {
    MeasureStarted,
    MeasureEnded,
}

/// Which messages have reached every subscriber.
struct Window {
    /// Every message before this one reached every subscriber.
    oldest: u64,
    /// Deliveries per message, at `seq % RING`, for messages from `oldest` on.
    counts: [u32; RING],
}

struct Shared {
    phase: AtomicU8,
    /// Messages published (written) so far.
    published: AtomicU64,
    window: Mutex<Window>,
    advanced: Condvar,
    subscribers: u32,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < 10 {
            errors.push(e);
        }
    }

    /// Adds `deliveries` (message, count) to the window; wakes the publisher if the
    /// oldest message is now everywhere.
    fn delivered(&self, deliveries: &mut Vec<(u64, u32)>) {
        if deliveries.is_empty() {
            return;
        }
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        for &(seq, n) in deliveries.iter() {
            if seq >= w.oldest && seq < w.oldest + RING as u64 {
                w.counts[seq as usize % RING] += n;
            }
        }
        deliveries.clear();
        let before = w.oldest;
        while w.counts[w.oldest as usize % RING] >= self.subscribers {
            let slot = w.oldest as usize % RING;
            w.counts[slot] = 0;
            w.oldest += 1;
        }
        if w.oldest != before {
            self.advanced.notify_all();
        }
    }
}

fn resp_command(words: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        out.extend_from_slice(w);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What each delivery looks like on the wire before its payload.
fn message_header() -> Vec<u8> {
    format!(
        "*3\r\n$7\r\nmessage\r\n${}\r\n{CHANNEL}\r\n${PAYLOAD_LEN}\r\n",
        CHANNEL.len()
    )
    .into_bytes()
}

/// Runs one fan-out test against `cfg.target`, calling `on_event` at the measured
/// window's start and end.
pub fn run(cfg: &FanoutConfig, mut on_event: impl FnMut(Event)) -> io::Result<FanoutResult> {
    let epoch = Instant::now();
    let confirm = format!(
        "*3\r\n$9\r\nsubscribe\r\n${}\r\n{CHANNEL}\r\n:1\r\n",
        CHANNEL.len()
    );
    let subscribe = resp_command(&[b"SUBSCRIBE", CHANNEL.as_bytes()]);
    let mut streams = Vec::with_capacity(cfg.subscribers);
    for i in 0..cfg.subscribers {
        let mut s = TcpStream::connect(cfg.target)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&subscribe)?;
        let mut got = vec![0; confirm.len()];
        s.read_exact(&mut got).map_err(|e| {
            io::Error::other(format!("subscriber {i}: no SUBSCRIBE confirmation: {e}"))
        })?;
        if got != confirm.as_bytes() {
            return Err(io::Error::other(format!(
                "subscriber {i}: SUBSCRIBE answered {:?}",
                String::from_utf8_lossy(&got)
            )));
        }
        s.set_nonblocking(true)?;
        streams.push(s);
    }
    let subscribe_s = epoch.elapsed().as_secs_f64();
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(WARMUP),
        published: AtomicU64::new(0),
        window: Mutex::new(Window {
            oldest: 0,
            counts: [0; RING],
        }),
        advanced: Condvar::new(),
        subscribers: cfg.subscribers as u32,
        errors: Mutex::new(Vec::new()),
    });
    let threads = cfg.threads.clamp(1, cfg.subscribers.max(1));
    let mut groups: Vec<Vec<TcpStream>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in streams.into_iter().enumerate() {
        groups[i % threads].push(s);
    }
    let subscriber_threads: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let shared = Arc::clone(&shared);
            thread::spawn(move || subscriber_loop(group, &shared, epoch))
        })
        .collect();
    let publisher = {
        let stream = TcpStream::connect(cfg.target)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(STALL))?;
        let shared = Arc::clone(&shared);
        let subscribers = cfg.subscribers as u64;
        thread::spawn(move || publisher_loop(stream, &shared, epoch, subscribers))
    };
    thread::sleep(cfg.warmup);
    on_event(Event::MeasureStarted);
    let measure_start = Instant::now();
    shared.phase.store(MEASURE, Ordering::SeqCst);
    // Sleep the window out, unless the publisher gives up first (a stall, an error).
    while measure_start.elapsed() < cfg.duration && !publisher.is_finished() {
        thread::sleep(Duration::from_millis(10).min(cfg.duration));
    }
    shared.phase.store(STOP, Ordering::SeqCst);
    let measured_s = measure_start.elapsed().as_secs_f64();
    on_event(Event::MeasureEnded);
    let (published_in_window, publisher_error) = publisher
        .join()
        .map_err(|_| io::Error::other("publisher panicked"))?;
    if let Some(e) = publisher_error {
        shared.error(e);
    }
    let published = shared.published.load(Ordering::SeqCst);
    let drain_start = Instant::now();
    {
        let mut w = shared.window.lock().unwrap_or_else(|p| p.into_inner());
        while w.oldest < published && drain_start.elapsed() < DRAIN_CAP {
            w = shared
                .advanced
                .wait_timeout(w, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
    shared.phase.store(DONE, Ordering::SeqCst);
    let mut latency_us = new_histogram();
    let mut delivered = 0;
    let mut delivered_in_window = 0;
    for t in subscriber_threads {
        let r = t
            .join()
            .map_err(|_| io::Error::other("subscriber thread panicked"))?;
        latency_us.add(&r.latency_us).map_err(io::Error::other)?;
        delivered += r.delivered;
        delivered_in_window += r.delivered_in_window;
    }
    let errors = std::mem::take(&mut *shared.errors.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(FanoutResult {
        subscribe_s,
        measured_s,
        published,
        published_in_window,
        delivered_in_window,
        delivered,
        lost: (published * cfg.subscribers as u64).saturating_sub(delivered),
        latency_us,
        errors,
    })
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The publisher: closed loop within the delivery window; returns the messages published
/// in the measured window and why it stopped early, if it did.
fn publisher_loop(
    mut stream: TcpStream,
    shared: &Shared,
    epoch: Instant,
    subscribers: u64,
) -> (u64, Option<String>) {
    let expected = format!(":{subscribers}\r\n");
    let mut reply = Vec::with_capacity(32);
    let mut buf = [0u8; 64];
    let mut in_window = 0;
    let mut seq: u64 = 0;
    loop {
        {
            let mut w = shared.window.lock().unwrap_or_else(|p| p.into_inner());
            let waiting = Instant::now();
            while seq - w.oldest >= WINDOW {
                if shared.phase.load(Ordering::SeqCst) >= STOP {
                    return (in_window, None);
                }
                if waiting.elapsed() > STALL {
                    let oldest = w.oldest;
                    let got = w.counts[oldest as usize % RING];
                    return (
                        in_window,
                        Some(format!(
                            "message {oldest} reached {got} of {subscribers} subscribers in {STALL:?}: stalled"
                        )),
                    );
                }
                w = shared
                    .advanced
                    .wait_timeout(w, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let phase = shared.phase.load(Ordering::SeqCst);
        if phase >= STOP {
            return (in_window, None);
        }
        let sent_ns = epoch.elapsed().as_nanos() as u64;
        let mut payload = format!("{seq:020}{sent_ns:020}").into_bytes();
        payload.resize(PAYLOAD_LEN, b'x');
        let command = resp_command(&[b"PUBLISH", CHANNEL.as_bytes(), &payload]);
        if let Err(e) = stream.write_all(&command) {
            return (in_window, Some(format!("publisher: write: {e}")));
        }
        shared.published.store(seq + 1, Ordering::SeqCst);
        reply.clear();
        while !reply.ends_with(b"\r\n") {
            match stream.read(&mut buf) {
                Ok(0) => return (in_window, Some("publisher: connection closed".into())),
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e) => return (in_window, Some(format!("publisher: read: {e}"))),
            }
        }
        if reply != expected.as_bytes() {
            shared.error(format!(
                "PUBLISH {seq} answered {:?}, expected {expected:?}",
                String::from_utf8_lossy(&reply)
            ));
        }
        if phase == MEASURE {
            in_window += 1;
        }
        seq += 1;
    }
}

/// One subscriber connection's state.
struct Sub {
    stream: mio::net::TcpStream,
    /// The start of a message that has not all arrived.
    partial: Vec<u8>,
    next_seq: u64,
    open: bool,
}

/// What a subscriber thread counted.
struct SubResult {
    delivered: u64,
    delivered_in_window: u64,
    latency_us: Histogram<u64>,
}

/// One subscriber event loop over `streams`, until the coordinator says done.
fn subscriber_loop(streams: Vec<TcpStream>, shared: &Shared, epoch: Instant) -> SubResult {
    let header = message_header();
    let frame = header.len() + PAYLOAD_LEN + 2;
    let mut result = SubResult {
        delivered: 0,
        delivered_in_window: 0,
        latency_us: new_histogram(),
    };
    let poll = Poll::new().and_then(|poll| {
        let mut subs = Vec::with_capacity(streams.len());
        for (i, s) in streams.into_iter().enumerate() {
            let mut stream = mio::net::TcpStream::from_std(s);
            poll.registry()
                .register(&mut stream, Token(i), Interest::READABLE)?;
            subs.push(Sub {
                stream,
                partial: Vec::with_capacity(frame),
                next_seq: 0,
                open: true,
            });
        }
        Ok((poll, subs))
    });
    let (mut poll, mut subs) = match poll {
        Ok(p) => p,
        Err(e) => {
            shared.error(format!("subscriber thread: {e}"));
            return result;
        }
    };
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 * 1024];
    let mut deliveries: Vec<(u64, u32)> = Vec::new();
    while shared.phase.load(Ordering::SeqCst) != DONE {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(10))) {
            if e.kind() != io::ErrorKind::Interrupted {
                shared.error(format!("subscriber poll: {e}"));
                return result;
            }
        }
        let in_window = shared.phase.load(Ordering::SeqCst) == MEASURE;
        for event in events.iter() {
            let sub = &mut subs[event.token().0];
            while sub.open {
                let n = match sub.stream.read(&mut buf) {
                    Ok(0) => {
                        shared.error(format!(
                            "subscriber closed by the server at {}",
                            sub.next_seq
                        ));
                        sub.open = false;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        shared.error(format!("subscriber read: {e}"));
                        sub.open = false;
                        break;
                    }
                };
                let now_ns = epoch.elapsed().as_nanos() as u64;
                let mut data = &buf[..n];
                // Complete a message whose start came in an earlier read.
                if !sub.partial.is_empty() {
                    let need = (frame - sub.partial.len()).min(data.len());
                    sub.partial.extend_from_slice(&data[..need]);
                    data = &data[need..];
                    if sub.partial.len() < frame {
                        continue;
                    }
                    let message = std::mem::take(&mut sub.partial);
                    on_message(
                        &message,
                        &header,
                        sub,
                        now_ns,
                        in_window,
                        &mut result,
                        &mut deliveries,
                        shared,
                    );
                    sub.partial = message;
                    sub.partial.clear();
                }
                let mut chunks = data.chunks_exact(frame);
                for message in &mut chunks {
                    on_message(
                        message,
                        &header,
                        sub,
                        now_ns,
                        in_window,
                        &mut result,
                        &mut deliveries,
                        shared,
                    );
                }
                sub.partial.extend_from_slice(chunks.remainder());
            }
        }
        shared.delivered(&mut deliveries);
    }
    result
}

/// Checks and counts one message received by `sub`.
#[allow(clippy::too_many_arguments)]
fn on_message(
    message: &[u8],
    header: &[u8],
    sub: &mut Sub,
    now_ns: u64,
    in_window: bool,
    result: &mut SubResult,
    deliveries: &mut Vec<(u64, u32)>,
    shared: &Shared,
) {
    let payload = &message[header.len()..header.len() + PAYLOAD_LEN];
    let number = |bytes: &[u8]| -> Option<u64> { std::str::from_utf8(bytes).ok()?.parse().ok() };
    let parsed = (message.starts_with(header) && message.ends_with(b"\r\n"))
        .then(|| Some((number(&payload[..20])?, number(&payload[20..40])?)))
        .flatten();
    let Some((seq, sent_ns)) = parsed else {
        shared.error(format!(
            "subscriber got {:?}",
            String::from_utf8_lossy(&message[..message.len().min(80)])
        ));
        sub.open = false;
        return;
    };
    if seq < sub.next_seq {
        shared.error(format!(
            "message {seq} again (or out of order) after {}",
            sub.next_seq
        ));
        return;
    }
    // A gap (seq > next_seq) is counted in `lost` at the end: published × subscribers
    // minus what arrived.
    sub.next_seq = seq + 1;
    result.delivered += 1;
    if in_window {
        result.delivered_in_window += 1;
        let _ = result
            .latency_us
            .record(now_ns.saturating_sub(sent_ns) / 1000);
    }
    match deliveries.iter_mut().find(|(s, _)| *s == seq) {
        Some((_, n)) => *n += 1,
        None => deliveries.push((seq, 1)),
    }
}
