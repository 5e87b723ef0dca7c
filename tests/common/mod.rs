//! Helpers shared by the integration tests: clients with timeouts, waiting on conditions
//! (never sleeping for correctness), and a look at the process's thread names.
//!
//! Every test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::fmt::Debug;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use reactor_pool::{handler_fn, Context, Handler, ServerHandle, Stats, StatsReader};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Read and write timeout of every client socket: a bug makes a test fail, not hang.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for a condition before declaring a hang. Only hangs hit it.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(30);

/// Turns on `RUST_LOG`-driven logging for a test (harmless when called twice).
pub fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// An echo handler for byte codecs.
pub fn echo() -> impl Handler<Request = Vec<u8>, Response = Vec<u8>> {
    handler_fn(|request: Vec<u8>, _ctx: &Context| request)
}

/// Connects to `addr` with read and write timeouts and `TCP_NODELAY`.
pub fn connect(addr: SocketAddr) -> TcpStream {
    with_timeouts(TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}")))
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

/// Reads until EOF. A reset (or a read timeout) comes back as an error.
pub fn read_to_eof(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Polls `probe` until it returns `Some`, panicking after [`WAIT_DEADLINE`] with `what`.
pub fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT_DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls the server's stats until `condition` holds; returns the snapshot that satisfied it.
pub fn wait_for_stats(
    server: &ServerHandle,
    what: &str,
    condition: impl Fn(&Stats) -> bool,
) -> Stats {
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        let stats = server.stats();
        if condition(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT_DEADLINE:?} waiting for {what}; last stats: {stats:#?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Names (`comm`, at most 15 bytes on Linux) of this process's threads that start with
/// `prefix`.
pub fn threads_named(prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let tasks = std::fs::read_dir("/proc/self/task").expect("read /proc/self/task");
    for task in tasks.flatten() {
        // A thread may exit between listing and reading: skip it.
        if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
            let comm = comm.trim_end_matches('\n');
            if comm.starts_with(prefix) {
                names.push(comm.to_owned());
            }
        }
    }
    names.sort();
    names
}

/// Asserts two byte strings are equal, reporting the first difference rather than
/// printing megabytes.
pub fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    if let Some(at) = actual.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {at} of {} (got {} bytes): got {:?}, expected {:?}",
            expected.len(),
            actual.len(),
            excerpt(actual, at),
            excerpt(expected, at)
        );
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: lengths differ (the shorter is a prefix of the other)"
    );
}

fn excerpt(bytes: &[u8], at: usize) -> impl Debug + '_ {
    &bytes[at..bytes.len().min(at + 16)]
}

/// One of this package's example binaries, running as a child process; killed on drop.
pub struct Example {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of example `name`, which `cargo test` builds next to the test binaries.
pub fn example_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test binary> -> target/<profile>/examples/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary in target/<profile>/deps")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        path.display()
    );
    path
}

/// Starts example `name` with `args` (which should bind port 0) and waits for its log line
/// `... listening on ADDR`, whose last word gives the address (an `http://` prefix and a
/// trailing `/` are ignored).
pub fn start_example(name: &str, args: &[&str]) -> Example {
    use std::io::BufRead;
    let mut child = std::process::Command::new(example_path(name))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut lines = io::BufReader::new(stderr).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once("listening on ") {
                let word = rest.split_whitespace().next().unwrap_or_default();
                let addr = word.trim_start_matches("http://").trim_end_matches('/');
                let _ = tx.send(addr.parse::<SocketAddr>().ok());
                break;
            }
        }
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let addr = rx
        .recv_timeout(WAIT_DEADLINE)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{name} did not log its listening address"));
    Example { child, addr }
}

/// Runs an external client program to completion, returning its stdout and stderr; panics
/// with a hint when the program is not installed.
pub fn run_client(program: &str, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); .ci/run installs it with apt-get"));
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The one short wait the tests allow: a negative check that no reply has come (yet).
pub const NO_REPLY_WAIT: Duration = Duration::from_millis(300);

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

/// [`wait_for_stats`] through a [`StatsReader`], for threads that do not own the handle.
pub fn wait_reader(reader: &StatsReader, what: &str, condition: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        let stats = reader.stats();
        if condition(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT_DEADLINE:?} waiting for {what}; last stats: {stats:#?}"
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
