//! A soak: for a while several client threads churn
//! connections to a line server and a raw echo server with a mix of faults: plain round
//! trips, half-closes, resets mid-request, garbage and oversized lines, idle-then-vanish,
//! slow readers. Afterwards the process's descriptors are back to baseline and its memory
//! has not grown past baseline + 64 MiB, and no timer entry is left behind.
//!
//! How long: REACTOR_POOL_SOAK_SECS if set; else 120 s with REACTOR_POOL_SOAK=1; else a
//! 5-second run, so `cargo test` always runs it (short) and never reports a skip as a pass.

#[path = "it/common.rs"]
mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reactor_pool::{Builder, LineCodec, RawCodec, ServerHandle, Stats};

use common::{open_fds, reset, rss_kib, wait_for_stats};

const MAX_LINE: usize = 4096;
const CLIENT_THREADS: usize = 6;

/// What the clients did, by kind of fault.
#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    round_trips: AtomicU64,
    half_closes: AtomicU64,
    resets_mid_request: AtomicU64,
    garbage: AtomicU64,
    oversized: AtomicU64,
    idle_vanish: AtomicU64,
    idle_timed_out: AtomicU64,
    slow_readers: AtomicU64,
    raw_echoes: AtomicU64,
    /// Unexpected outcomes: a wrong reply, a reset where a clean close was owed.
    failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn client(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    Ok(stream)
}

fn read_to_eof(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    stream.read_to_end(&mut out)?;
    Ok(out)
}

/// One connection with a randomly chosen behaviour; `Err` names the behaviour and what
/// went wrong.
fn one_connection(
    rng: &mut StdRng,
    lines: SocketAddr,
    raw: SocketAddr,
    tally: &Tally,
) -> Result<(), String> {
    bump(&tally.connections);
    let pick = rng.gen_range(0..100);
    match behave(pick, rng, lines, raw, tally) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("behaviour {pick}: wrong reply")),
        Err(e) => Err(format!("behaviour {pick}: {e} ({:?})", e.kind())),
    }
}

fn behave(
    pick: u32,
    rng: &mut StdRng,
    lines: SocketAddr,
    raw: SocketAddr,
    tally: &Tally,
) -> io::Result<bool> {
    match pick {
        // Round trips on the line server, then a clean close.
        0..=29 => {
            let mut s = client(lines)?;
            for i in 0..rng.gen_range(1..20) {
                let line = format!("req {i} {}\n", "p".repeat(rng.gen_range(0..200)));
                s.write_all(line.as_bytes())?;
                let mut got = vec![0; line.len()];
                s.read_exact(&mut got)?;
                if got != line.as_bytes() {
                    return Ok(false);
                }
            }
            bump(&tally.round_trips);
        }
        // Pipelined requests, then a half-close: every reply, then EOF.
        30..=44 => {
            let mut s = client(lines)?;
            let n = rng.gen_range(1..50);
            let mut sent = Vec::new();
            for i in 0..n {
                sent.extend_from_slice(format!("half {i}\n").as_bytes());
            }
            s.write_all(&sent)?;
            s.shutdown(Shutdown::Write)?;
            if read_to_eof(&mut s)? != sent {
                return Ok(false);
            }
            bump(&tally.half_closes);
        }
        // Half a request, then a reset.
        45..=54 => {
            let mut s = client(lines)?;
            s.write_all(b"complete\nincompl")?;
            if rng.gen_bool(0.5) {
                let mut got = [0u8; 9];
                s.read_exact(&mut got)?;
            }
            reset(s);
            bump(&tally.resets_mid_request);
        }
        // Garbage (a line over the limit in pieces, binary noise without newlines): the
        // server closes cleanly; the client sees EOF.
        55..=64 => {
            let noise: Vec<u8> = (0..MAX_LINE + 100)
                .map(|_| rng.gen_range(0..=255u8))
                .filter(|&b| b != b'\n')
                .collect();
            let mut s = client(lines)?;
            if rng.gen_bool(0.5) {
                s.write_all(&noise)?;
                bump(&tally.garbage);
            } else {
                let long = vec![b'o'; MAX_LINE * 3];
                for piece in long.chunks(1000) {
                    s.write_all(piece)?;
                }
                s.write_all(b"\n")?;
                bump(&tally.oversized);
            }
            let rest = read_to_eof(&mut s)?;
            if !rest.is_empty() {
                return Ok(false);
            }
        }
        // Idle, then vanish: sometimes before the idle timeout, sometimes after it.
        65..=74 => {
            let mut s = client(lines)?;
            s.write_all(b"hello\n")?;
            let mut got = [0u8; 6];
            s.read_exact(&mut got)?;
            if rng.gen_bool(0.3) {
                // Wait for the idle timeout's clean close.
                if !read_to_eof(&mut s)?.is_empty() {
                    return Ok(false);
                }
                bump(&tally.idle_timed_out);
            } else {
                thread::sleep(Duration::from_millis(rng.gen_range(0..200)));
                if rng.gen_bool(0.5) {
                    reset(s);
                }
                bump(&tally.idle_vanish);
            }
        }
        // A slow reader on the raw server: sends a lot, reads a little, goes away.
        75..=84 => {
            let mut s = client(raw)?;
            s.set_nonblocking(true)?;
            let chunk = vec![b's'; 64 * 1024];
            for _ in 0..rng.gen_range(4..64) {
                match s.write(&chunk) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            s.set_nonblocking(false)?;
            let mut buf = vec![0u8; 4096];
            for _ in 0..rng.gen_range(1..10) {
                s.read_exact(&mut buf)?;
                thread::sleep(Duration::from_millis(2));
            }
            if rng.gen_bool(0.5) {
                reset(s);
            }
            bump(&tally.slow_readers);
        }
        // Raw echo of random bytes, half-closed.
        _ => {
            // Made before connecting: the server's idle clock starts at accept.
            let data: Vec<u8> = (0..rng.gen_range(1..200_000)).map(|_| rng.gen()).collect();
            let mut s = client(raw)?;
            let mut writer = s.try_clone()?;
            let to_send = data.clone();
            let sender = thread::spawn(move || -> io::Result<()> {
                writer.write_all(&to_send)?;
                writer.shutdown(Shutdown::Write)
            });
            let got = read_to_eof(&mut s)?;
            sender
                .join()
                .map_err(|_| io::Error::other("sender panicked"))??;
            if got != data {
                let at = got.iter().zip(&data).position(|(a, b)| a != b);
                eprintln!(
                    "raw echo: sent {} got {} first diff {at:?}",
                    data.len(),
                    got.len()
                );
                return Ok(false);
            }
            bump(&tally.raw_echoes);
        }
    }
    Ok(true)
}

fn run_clients(lines: SocketAddr, raw: SocketAddr, duration: Duration, tally: &Arc<Tally>) {
    let until = Instant::now() + duration;
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            let tally = Arc::clone(tally);
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(0x5eed + t as u64);
                while Instant::now() < until {
                    if let Err(e) = one_connection(&mut rng, lines, raw, &tally) {
                        eprintln!("soak client {t}: unexpected outcome: {e}");
                        bump(&tally.failures);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("soak client thread");
    }
}

fn start_servers() -> (ServerHandle, ServerHandle) {
    let lines = Builder::bind("127.0.0.1:0")
        .workers(4)
        .idle_timeout(Some(Duration::from_millis(500)))
        .partial_frame_timeout(Some(Duration::from_millis(500)))
        .write_stall_timeout(Some(Duration::from_secs(1)))
        .lingering_time(Duration::from_millis(500))
        .thread_name("soak-lines")
        .start(LineCodec::with_max_frame(MAX_LINE), common::echo())
        .expect("start the line server");
    let raw = Builder::bind("127.0.0.1:0")
        .workers(4)
        .output_high_water(128 * 1024)
        .idle_timeout(Some(Duration::from_millis(500)))
        .write_stall_timeout(Some(Duration::from_secs(1)))
        .lingering_time(Duration::from_millis(500))
        .thread_name("soak-raw")
        .start(RawCodec::new(), common::echo())
        .expect("start the raw server");
    (lines, raw)
}

fn quiesce(server: &ServerHandle) -> Stats {
    wait_for_stats(server, "every connection closed", |s| {
        s.connections_open == 0 && s.in_flight == 0
    })
}

#[test]
fn soak_connection_churn_with_faults() {
    common::init_logging();
    let long = std::env::var("REACTOR_POOL_SOAK").ok().as_deref() == Some("1");
    let secs: u64 = std::env::var("REACTOR_POOL_SOAK_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("REACTOR_POOL_SOAK_SECS is a number of seconds")
        })
        .unwrap_or(if long { 120 } else { 5 });
    let (lines, raw) = start_servers();

    // Warm up, so that allocator arenas and thread stacks exist before the baseline.
    let warm = Arc::new(Tally::default());
    run_clients(
        lines.local_addr().tcp().unwrap(),
        raw.local_addr().tcp().unwrap(),
        Duration::from_secs(3),
        &warm,
    );
    quiesce(&lines);
    quiesce(&raw);
    let fds_before = open_fds();
    let rss_before = rss_kib();

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    run_clients(
        lines.local_addr().tcp().unwrap(),
        raw.local_addr().tcp().unwrap(),
        Duration::from_secs(secs),
        &tally,
    );
    let churned = started.elapsed();
    let line_stats = quiesce(&lines);
    let raw_stats = quiesce(&raw);
    let fds_after = open_fds();
    let rss_after = rss_kib();

    let t = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "soak: {:.0}s of churn, {CLIENT_THREADS} client threads",
        churned.as_secs_f64()
    );
    println!(
        "soak: fds before {fds_before}, after {fds_after}; RSS before {} KiB, after {} KiB \
         (+{} KiB)",
        rss_before,
        rss_after,
        rss_after as i64 - rss_before as i64
    );
    println!(
        "soak: client connections {} (round trips {}, half-closes {}, resets mid-request {}, \
         garbage {}, oversized {}, idle-vanish {}, idle-timed-out {}, slow readers {}, raw \
         echoes {}), unexpected outcomes {}",
        t(&tally.connections),
        t(&tally.round_trips),
        t(&tally.half_closes),
        t(&tally.resets_mid_request),
        t(&tally.garbage),
        t(&tally.oversized),
        t(&tally.idle_vanish),
        t(&tally.idle_timed_out),
        t(&tally.slow_readers),
        t(&tally.raw_echoes),
        t(&tally.failures)
    );
    println!("soak: line server {line_stats:?}");
    println!("soak: raw server {raw_stats:?}");

    assert_eq!(t(&tally.failures), 0, "unexpected client outcomes");
    assert!(
        fds_after <= fds_before + 4 && fds_after + 4 >= fds_before,
        "descriptors: {fds_before} before, {fds_after} after"
    );
    assert!(
        rss_after <= rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    for stats in [&line_stats, &raw_stats] {
        assert_eq!(stats.bytes_buffered, 0, "{stats:#?}");
        assert_eq!(
            stats.timers, 0,
            "a closed connection left a timer: {stats:#?}"
        );
        assert_eq!(
            stats.connections_accepted, stats.connections_closed,
            "{stats:#?}"
        );
    }
    lines.shutdown();
    raw.shutdown();
}
