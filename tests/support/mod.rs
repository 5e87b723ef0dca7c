//! Helpers for the fault and limit tests: clients with timeouts, resets, waiting on
//! conditions (sleeping only to pace a client, never for correctness), and a look at the
//! process's descriptors and memory.
//!
//! Every test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use reactor_pool::{handler_fn, Context, Handler, ServerHandle, Stats, StatsReader};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Read and write timeout of client sockets: a bug makes a test fail instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for a condition before calling it a hang. Only hangs reach it.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The one short wait the tests allow: a negative check that no reply has come (yet).
pub const NO_REPLY_WAIT: Duration = Duration::from_millis(300);

/// Turns on `RUST_LOG`-driven logging (harmless when called twice).
pub fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// An echo handler for the byte codecs.
pub fn echo() -> impl Handler<Request = Vec<u8>, Response = Vec<u8>> {
    handler_fn(|request: Vec<u8>, _ctx: &Context| request)
}

fn with_timeouts(stream: TcpStream) -> TcpStream {
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("set_write_timeout");
    stream.set_nodelay(true).expect("set_nodelay");
    stream
}

/// Connects with read and write timeouts and `TCP_NODELAY`.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    with_timeouts(stream)
}

/// Connects with a small receive buffer set before the handshake (so the window the
/// server sees is small too): a client that stops reading stalls the server quickly.
pub fn connect_with_recv_buffer(addr: SocketAddr, bytes: usize) -> TcpStream {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .expect("create a socket");
    socket
        .set_recv_buffer_size(bytes)
        .expect("set the receive buffer size");
    socket
        .connect(&addr.into())
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    with_timeouts(socket.into())
}

/// Writes all of `bytes`, panicking with context on error.
pub fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream
        .write_all(bytes)
        .unwrap_or_else(|e| panic!("writing {} bytes: {e}", bytes.len()));
}

/// Reads exactly `n` bytes, panicking with what arrived so far on error or early EOF.
pub fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match stream.read(&mut buf[got..]) {
            Ok(0) => panic!(
                "EOF after {got} of {n} bytes; got {:?}",
                String::from_utf8_lossy(&buf[..got])
            ),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "read error after {got} of {n} bytes: {e}; got {:?}",
                String::from_utf8_lossy(&buf[..got])
            ),
        }
    }
    buf
}

/// Sends `request` and expects exactly `reply` back.
pub fn round_trip(stream: &mut TcpStream, request: &[u8], reply: &[u8]) {
    send(stream, request);
    let got = read_exactly(stream, reply.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(reply),
        "reply to {:?}",
        String::from_utf8_lossy(request)
    );
}

/// Reads until EOF and returns what came before it. A reset, any other error, or the
/// read timeout fails the test: the server was expected to close cleanly.
pub fn expect_clean_eof(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "{what}: expected a clean EOF, got {e} ({:?}) after {} bytes: {:?}",
                e.kind(),
                got.len(),
                String::from_utf8_lossy(&got[..got.len().min(200)])
            ),
        }
    }
}

/// How a connection ended, as its client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    Eof,
    Reset,
}

/// Reads and discards until the connection ends with EOF or a reset; a read timeout (the
/// connection stayed open) fails the test. Returns how it ended and the bytes read.
pub fn read_until_end(stream: &mut TcpStream, what: &str) -> (Ending, usize) {
    let mut total = 0;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (Ending::Eof, total),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return (Ending::Reset, total)
            }
            Err(e) => panic!("{what}: expected the connection to end, got {e} after {total} bytes"),
        }
    }
}

/// Asserts nothing arrives within [`NO_REPLY_WAIT`] (the read times out), then restores
/// the normal read timeout.
pub fn assert_no_reply(stream: &mut TcpStream, what: &str) {
    stream
        .set_read_timeout(Some(NO_REPLY_WAIT))
        .expect("set_read_timeout");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        Ok(0) => panic!("{what}: expected no reply yet, got EOF"),
        Ok(n) => panic!(
            "{what}: expected no reply yet, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("{what}: expected no reply yet, got {e}"),
    }
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
}

/// Closes `stream` abortively: SO_LINGER 0 makes the kernel send a reset, not a FIN.
pub fn reset(stream: TcpStream) {
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER 0");
    drop(stream);
}

/// Polls `probe` until it returns `Some`, panicking after [`DEADLINE`] with `what`.
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Polls the stats until `condition` holds; returns the snapshot that satisfied it.
pub fn wait_stats(server: &ServerHandle, what: &str, condition: impl Fn(&Stats) -> bool) -> Stats {
    wait_reader(&server.stats_reader(), what, condition)
}

/// [`wait_stats`] through a [`StatsReader`], for threads that do not own the handle.
pub fn wait_reader(reader: &StatsReader, what: &str, condition: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stats = reader.stats();
        if condition(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}; last stats: {stats:#?}"
        );
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    // The directory handle read_dir holds is one of the entries: leave it out.
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
        .saturating_sub(1)
}

/// Resident set size of this process, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Deterministic test bytes: a pseudo-random block of a prime length, repeated, so no
/// chunk size lines up with it and a misplaced chunk shows as a difference.
pub struct Pattern {
    block: Vec<u8>,
}

impl Pattern {
    const LEN: usize = 1_000_003;

    pub fn new() -> Self {
        let mut x: u32 = 0x9e37_79b9;
        let block = (0..Self::LEN)
            .map(|_| {
                // xorshift32
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        Pattern { block }
    }

    /// Fills `out` with the stream's bytes from `offset` on.
    pub fn fill(&self, offset: u64, out: &mut [u8]) {
        let mut at = (offset % Self::LEN as u64) as usize;
        let mut done = 0;
        while done < out.len() {
            let n = (Self::LEN - at).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.block[at..at + n]);
            done += n;
            at = 0;
        }
    }

    /// The stream's `len` bytes from `offset` on.
    pub fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.fill(offset, &mut out);
        out
    }
}

impl Default for Pattern {
    fn default() -> Self {
        Self::new()
    }
}
