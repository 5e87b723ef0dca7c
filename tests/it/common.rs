//! Helpers shared by the integration tests: clients with timeouts, waiting on conditions
//! (never sleeping for correctness), and a look at the process's thread names.
//!
//! A module of the `it` test crate; the test crates that must run alone (allocations_per_request,
//! kv_server_regressions, accept_emfile, soak) include it by path and use only part of it.
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

/// An example binary listening on a Unix socket at `path`; killed on drop.
pub struct UnixExample {
    pub child: std::process::Child,
    pub path: std::path::PathBuf,
}

impl Drop for UnixExample {
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
/// `... listening on ADDR`, whose first word gives the address (an `http://` or `https://`
/// prefix and a trailing `/` are ignored).
pub fn start_example(name: &str, args: &[&str]) -> Example {
    let (child, word) = spawn_example(name, args);
    let addr = word
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let addr = addr
        .parse()
        .unwrap_or_else(|e| panic!("{name} listens on {word:?}, not a TCP address: {e}"));
    Example { child, addr }
}

/// Starts example `name` with `args` (which should include `--unix PATH`) and waits for
/// its log line `... listening on unix:PATH`.
pub fn start_example_unix(name: &str, args: &[&str]) -> UnixExample {
    let (child, word) = spawn_example(name, args);
    let path = word
        .strip_prefix("unix:")
        .unwrap_or_else(|| panic!("{name} listens on {word:?}, not on unix:PATH"));
    UnixExample {
        child,
        path: path.into(),
    }
}

/// Spawns example `name` and returns it with the first word after `listening on ` in its
/// `INFO` log line (the address; paths with spaces are not supported). Panics if it exits
/// or stays silent instead.
fn spawn_example(name: &str, args: &[&str]) -> (std::process::Child, String) {
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
        let mut seen = String::new();
        for line in lines.by_ref().map_while(Result::ok) {
            // The info line only: an error can say "a server is listening on PATH" too.
            let info = line.contains(" INFO ");
            if let Some((_, rest)) = line.split_once("listening on ").filter(|_| info) {
                let word = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(Ok(word.to_owned()));
                break;
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        // Its log up to here, should it have exited instead (a dropped sender otherwise).
        let _ = tx.send(Err(seen));
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(WAIT_DEADLINE) {
        Ok(Ok(word)) => (child, word),
        Ok(Err(log)) => {
            let status = child.wait();
            panic!("{name} exited ({status:?}) without listening; its log:\n{log}")
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not log its listening address in {WAIT_DEADLINE:?}")
        }
    }
}

/// Runs an external client program to completion, returning its stdout and stderr; panics
/// with a hint when the program is not installed.
pub fn run_client(program: &str, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); scripts/test.sh installs it with apt-get")
        });
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs an external client program with `input` on its stdin (closed after it) to
/// completion, returning its exit status, stdout and stderr. A program still running after
/// [`WAIT_DEADLINE`] is killed and fails the test: a hang shows as a failure.
pub fn run_client_with_input(
    program: &str,
    args: &[&str],
    input: &[u8],
) -> (std::process::ExitStatus, String, String) {
    use std::process::Stdio;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); scripts/test.sh installs it with apt-get")
        });
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    // A program may exit without reading all of it: a write error is not ours to report.
    let writer = std::thread::spawn(move || drop(stdin.write_all(&input)));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + WAIT_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
            panic!("{program} {args:?} still running after {WAIT_DEADLINE:?}; stdout: {out}\nstderr: {err}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

/// A directory under the system's temp dir, unique to this process and this call;
/// removed with its contents on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Short: a Unix socket's path must fit in 108 bytes.
        let dir = std::env::temp_dir().join(format!("rp-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }

    /// `name` inside the directory, as a `&str` argument for a command line.
    pub fn arg(&self, name: &str) -> String {
        self.join(name)
            .to_str()
            .expect("a UTF-8 temp dir")
            .to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A throwaway PKI made with the `openssl` CLI, in its own [`TempDir`]: a root CA
/// (`ca.pem`, what clients trust), an intermediate CA, and a server certificate for
/// `localhost` and `127.0.0.1` (subjectAltName) signed by the intermediate. `cert.pem` is
/// the chain a server sends (server certificate, then intermediate), `key.pem` its private
/// key (PKCS#8). ECDSA P-256, valid for two days.
pub struct TestPki {
    pub dir: TempDir,
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = TempDir::new("pki");
        let openssl = |args: &[&str]| {
            let (status, out, err) = run_client_with_input("openssl", args, b"");
            assert!(status.success(), "openssl {args:?} failed: {out}{err}");
        };
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        // Names unique to this PKI: another one's root must not even look like its issuer.
        let tag = dir.0.file_name().unwrap().to_string_lossy().into_owned();
        let (ca, ca_key) = (dir.arg("ca.pem"), dir.arg("ca.key"));
        let root_subject = format!("/CN=reactor-pool test root {tag}");
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", &root_subject];
        args.extend(new_key);
        args.extend(["-keyout", &ca_key, "-out", &ca]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(&args);
        // A key and a request, then the issuer's signature with `extensions`.
        let issue = |name: &str, subject: &str, issuer: (&str, &str), extensions: &str| {
            let (key, csr, ext, pem) = (
                dir.arg(&format!("{name}.key")),
                dir.arg(&format!("{name}.csr")),
                dir.arg(&format!("{name}.ext")),
                dir.arg(&format!("{name}.pem")),
            );
            let mut args = vec!["req", "-subj", subject, "-keyout", &key, "-out", &csr];
            args.extend(new_key);
            openssl(&args);
            std::fs::write(&ext, extensions).expect("write the extensions file");
            let (issuer_cert, issuer_key) = issuer;
            openssl(&[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                issuer_cert,
                "-CAkey",
                issuer_key,
                "-set_serial",
                "2",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ]);
            (pem, key)
        };
        let (intermediate, intermediate_key) = issue(
            "intermediate",
            &format!("/CN=reactor-pool test intermediate {tag}"),
            (&ca, &ca_key),
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
        );
        let (server, key) = issue(
            "server",
            "/CN=localhost",
            (&intermediate, &intermediate_key),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        );
        let chain = [server, intermediate]
            .map(|pem| std::fs::read_to_string(pem).expect("read a certificate"))
            .concat();
        let cert = dir.arg("cert.pem");
        std::fs::write(&cert, chain).expect("write cert.pem");
        TestPki { dir, ca, cert, key }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// Connects to `path` with the usual timeouts.
pub fn connect_unix(path: &std::path::Path) -> std::os::unix::net::UnixStream {
    let stream = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("set_write_timeout");
    stream
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
