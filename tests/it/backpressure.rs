//! Backpressure, not buffering: a client that writes without reading makes the server stop
//! reading it (memory stays under the output high-water mark plus one read), and a full job
//! queue pauses the connections that have a request for it without blocking the reactor.

use crate::common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded};
use reactor_pool::{handler_fn, Builder, Context, LineCodec, RawCodec};

use crate::common::{
    connect, expect_clean_eof, read_exactly, round_trip, send, wait_for_stats, Pattern,
    WAIT_DEADLINE,
};

const TOTAL: u64 = 64 << 20;
const HIGH_WATER: usize = 256 * 1024;
const READ_BUFFER: usize = 64 * 1024;
const CHUNK: usize = 64 * 1024;

#[test]
fn a_client_that_does_not_read_is_not_read_and_its_64_mib_come_back_intact() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .output_high_water(HIGH_WATER)
        .read_buffer(READ_BUFFER)
        .thread_name("bp-big")
        .start(RawCodec::new(), common::echo())
        .expect("start the server");

    let mut client = connect(server.local_addr().tcp().unwrap());
    let mut writer_stream = client.try_clone().expect("clone the client socket");
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let written = Arc::clone(&written);
        thread::spawn(move || {
            let pattern = Pattern::new();
            let mut chunk = vec![0u8; CHUNK];
            let mut offset = 0u64;
            while offset < TOTAL {
                pattern.fill(offset, &mut chunk);
                writer_stream
                    .write_all(&chunk)
                    .unwrap_or_else(|e| panic!("writing at offset {offset}: {e}"));
                offset += CHUNK as u64;
                written.store(offset, Ordering::Relaxed);
            }
            writer_stream
                .shutdown(Shutdown::Write)
                .expect("half-close after writing");
        })
    };

    // Wait until the server has stopped reading: requests and the writer's progress stay
    // the same for half a second (the writer is blocked in write()).
    let deadline = Instant::now() + WAIT_DEADLINE;
    let mut last = (u64::MAX, u64::MAX);
    let mut steady_since = Instant::now();
    loop {
        let now = (server.stats().requests, written.load(Ordering::Relaxed));
        if now != last {
            last = now;
            steady_since = Instant::now();
        } else if steady_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never stopped reading a client that does not read: {:#?}, written {}",
            server.stats(),
            written.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(20));
    }
    let blocked_at = written.load(Ordering::Relaxed);
    assert!(
        blocked_at < TOTAL,
        "the writer finished all {TOTAL} bytes without the client reading a byte"
    );

    // While blocked, the server holds at most the high-water mark plus one read.
    let bound = (HIGH_WATER + READ_BUFFER) as u64;
    let mut peak = 0;
    for _ in 0..25 {
        let stats = server.stats();
        assert!(
            stats.bytes_buffered <= bound,
            "bytes_buffered {} over high-water + read buffer {bound}: {stats:#?}",
            stats.bytes_buffered
        );
        peak = peak.max(stats.bytes_buffered);
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        peak >= (HIGH_WATER / 2) as u64,
        "expected the server to hold the unwritten replies (about the high-water mark), \
         peak bytes_buffered {peak}"
    );
    assert_eq!(
        written.load(Ordering::Relaxed),
        blocked_at,
        "the writer moved"
    );

    // Now read everything while the rest is written: byte-identical, then a clean EOF.
    let pattern = Pattern::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut expected = vec![0u8; buf.len()];
    let mut offset = 0u64;
    let mut max_seen = 0;
    while offset < TOTAL {
        let n = match client.read(&mut buf) {
            Ok(0) => panic!("EOF after {offset} of {TOTAL} bytes"),
            Ok(n) => n,
            Err(e) => panic!("read error after {offset} of {TOTAL} bytes: {e}"),
        };
        pattern.fill(offset, &mut expected[..n]);
        if buf[..n] != expected[..n] {
            let at = buf[..n]
                .iter()
                .zip(&expected[..n])
                .position(|(a, b)| a != b)
                .expect("a difference");
            panic!("echo differs at byte {}", offset + at as u64);
        }
        offset += n as u64;
        if offset % (4 << 20) < n as u64 {
            max_seen = max_seen.max(server.stats().bytes_buffered);
        }
    }
    assert!(
        max_seen <= bound,
        "bytes_buffered reached {max_seen} while streaming (bound {bound})"
    );
    let rest = expect_clean_eof(&mut client, "after the 64 MiB echo");
    assert!(rest.is_empty(), "{} bytes after the echo", rest.len());
    writer.join().expect("writer thread");

    let stats = wait_for_stats(&server, "the connection closed", |s| {
        s.connections_open == 0
    });
    assert_eq!(stats.bytes_buffered, 0, "{stats:#?}");
    assert_eq!(stats.requests, stats.responses, "{stats:#?}");
    assert_eq!(stats.resets, 0, "{stats:#?}");
    server.shutdown();
}

/// Lines of `LINE_LEN` bytes (newline included) the bursting client pipelines.
const LINE_LEN: usize = 512;
const BURST_LINES: usize = (4 << 20) / LINE_LEN;
const LINE_MAX: usize = 1024;

#[test]
fn a_full_job_queue_pauses_reading_but_the_reactor_keeps_serving() {
    common::init_logging();
    let (entered_tx, entered_rx) = unbounded::<Vec<u8>>();
    // Every handler call waits until the test drops `release`.
    let (release, gate) = bounded::<()>(0);
    let server = Builder::bind("127.0.0.1:0")
        .workers(1)
        .job_queue_capacity(1)
        // The job queue is what this test is about: every batch goes to the pool.
        .adaptive_inline(None)
        .read_buffer(READ_BUFFER)
        .idle_timeout(None)
        .thread_name("bp-queue")
        .start(
            LineCodec::with_max_frame(LINE_MAX),
            handler_fn(move |line: Vec<u8>, _ctx: &Context| {
                let _ = entered_tx.send(line.clone());
                let _ = gate.recv_timeout(WAIT_DEADLINE);
                line
            }),
        )
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();

    // A connection that will close while the queue is full.
    let closer = connect(addr);
    // A occupies the only worker, B the only queue slot.
    let mut a = connect(addr);
    send(&mut a, b"a1\n");
    assert_eq!(
        entered_rx
            .recv_timeout(WAIT_DEADLINE)
            .expect("the worker to start"),
        b"a1"
    );
    let mut b = connect(addr);
    send(&mut b, b"b1\n");
    wait_for_stats(&server, "B's request queued", |s| s.job_queue_depth == 1);

    // Three clients pipeline three requests each: their first is refused by the full queue.
    let mut cs: Vec<_> = (0..3)
        .map(|i| {
            let mut c = connect(addr);
            send(&mut c, format!("c{i}-1\nc{i}-2\nc{i}-3\n").as_bytes());
            c
        })
        .collect();

    // A client pipelines 4 MiB of lines: the server must stop reading it. (A small send
    // buffer keeps the kernel from taking it all on the client's side.)
    let burst = connect(addr);
    socket2::SockRef::from(&burst)
        .set_send_buffer_size(64 * 1024)
        .expect("set the send buffer size");
    let mut burst_writer = burst.try_clone().expect("clone");
    let burst_written = Arc::new(AtomicU64::new(0));
    let writer = {
        let burst_written = Arc::clone(&burst_written);
        thread::spawn(move || {
            let line = format!("{}\n", "x".repeat(LINE_LEN - 1));
            let chunk = line.repeat(64);
            let mut sent = 0;
            while sent < BURST_LINES {
                let n = (BURST_LINES - sent).min(64);
                burst_writer
                    .write_all(&chunk.as_bytes()[..n * LINE_LEN])
                    .expect("burst write");
                sent += n;
                burst_written.store((sent * LINE_LEN) as u64, Ordering::Relaxed);
            }
        })
    };

    // The reactor is not blocked: it accepts, handles a protocol error and a close...
    let mut bad = connect(addr);
    send(
        &mut bad,
        format!("{}\n", "y".repeat(2 * LINE_MAX)).as_bytes(),
    );
    let rest = expect_clean_eof(&mut bad, "a line over the limit while the queue is full");
    assert!(rest.is_empty(), "unexpected bytes {rest:?}");
    drop(bad);
    wait_for_stats(&server, "the protocol error counted", |s| {
        s.protocol_errors == 1
    });
    drop(closer);
    wait_for_stats(&server, "the closed connections counted", |s| {
        s.connections_closed == 2
    });

    // ...while the burst stays unread: the writer blocks and memory stays bounded.
    let bound = 6 * READ_BUFFER as u64;
    let mut steady = 0;
    let mut last = u64::MAX;
    let deadline = Instant::now() + WAIT_DEADLINE;
    while steady < 10 {
        let stats = server.stats();
        assert!(
            stats.bytes_buffered <= bound,
            "bytes_buffered {} over {bound} with the queue full: {stats:#?}",
            stats.bytes_buffered
        );
        let now = burst_written.load(Ordering::Relaxed);
        if now == last {
            steady += 1;
        } else {
            steady = 0;
            last = now;
        }
        assert!(Instant::now() < deadline, "the burst writer never blocked");
        thread::sleep(Duration::from_millis(30));
    }
    assert!(
        (last as usize) < BURST_LINES * LINE_LEN,
        "the whole burst was taken while the job queue was full"
    );
    let stats = server.stats();
    assert_eq!(stats.job_queue_depth, 1, "{stats:#?}");
    assert_eq!(stats.responses, 0, "{stats:#?}");

    // Release: everything is answered, in order.
    drop(release);
    assert_eq!(read_exactly(&mut a, 3), b"a1\n");
    assert_eq!(read_exactly(&mut b, 3), b"b1\n");
    for (i, c) in cs.iter_mut().enumerate() {
        let want = format!("c{i}-1\nc{i}-2\nc{i}-3\n");
        assert_eq!(
            String::from_utf8_lossy(&read_exactly(c, want.len())),
            want,
            "client c{i}"
        );
        round_trip(c, b"after\n", b"after\n");
    }
    let mut burst_reader = burst;
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let want_total = BURST_LINES * LINE_LEN;
    let line = format!("{}\n", "x".repeat(LINE_LEN - 1)).repeat(buf.len() / LINE_LEN + 1);
    while got < want_total {
        let n = burst_reader
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("burst read after {got} bytes: {e}"));
        assert!(n > 0, "EOF after {got} of {want_total} burst bytes");
        let phase = got % LINE_LEN;
        assert_eq!(&buf[..n], &line.as_bytes()[phase..phase + n], "at {got}");
        got += n;
    }
    writer.join().expect("burst writer");
    round_trip(&mut a, b"a2\n", b"a2\n");

    drop((a, b, cs, burst_reader));
    let stats = wait_for_stats(&server, "every connection closed", |s| {
        s.connections_open == 0
    });
    assert_eq!(stats.requests, stats.responses, "{stats:#?}");
    assert_eq!(stats.in_flight, 0, "{stats:#?}");
    assert_eq!(stats.bytes_buffered, 0, "{stats:#?}");
    server.shutdown();
}
