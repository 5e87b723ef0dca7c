//! Helpers for the deployment tests (`haproxy.rs`, `socket_activation.rs`), which run real
//! programs next to the echo_server example: child processes that are killed on drop and
//! whose output is collected line by line, waits on log lines and on exits (never sleeps),
//! free ports, temporary directories, and an echo client that says how an exchange failed.

use crate::common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long to wait for a condition (a log line, an exit, a reply) before declaring a
/// hang. Only hangs reach it.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Read, write and connect timeout of the test clients.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// The lines a child wrote to stdout and stderr, as they arrive.
pub struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

struct LogState {
    lines: Vec<String>,
    /// Streams still open (stdout and stderr): 0 once the child and its heirs closed both.
    open: usize,
}

impl Log {
    fn new(open: usize) -> Arc<Self> {
        Arc::new(Log {
            state: Mutex::new(LogState {
                lines: Vec::new(),
                open,
            }),
            changed: Condvar::new(),
        })
    }

    fn collect(self: &Arc<Self>, stream: impl Read + Send + 'static) {
        let log = Arc::clone(self);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                locked(&log.state).lines.push(line);
                log.changed.notify_all();
            }
            locked(&log.state).open -= 1;
            log.changed.notify_all();
        });
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        locked(&self.state).lines.clone()
    }

    /// How many lines so far satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        locked(&self.state)
            .lines
            .iter()
            .filter(|line| pred(line))
            .count()
    }

    /// The last `n` lines, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let state = locked(&self.state);
        let from = state.lines.len().saturating_sub(n);
        state.lines[from..].join("\n")
    }

    /// Waits until `n` lines satisfy `pred`; returns the `n`th. Panics (with the log's tail)
    /// at the deadline or when the output ends first.
    pub fn wait_count(&self, what: &str, n: usize, pred: impl Fn(&str) -> bool) -> String {
        self.try_wait_count(what, n, pred).unwrap_or_else(|| {
            panic!(
                "the output ended while waiting for {what}; last lines:\n{}",
                self.tail(30)
            )
        })
    }

    /// Like [`wait_count`](Log::wait_count), but `None` when the output ends first (the
    /// process exited); still panics at the deadline.
    pub fn try_wait_count(
        &self,
        what: &str,
        n: usize,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + DEADLINE;
        let mut state = locked(&self.state);
        loop {
            if let Some(line) = state.lines.iter().filter(|line| pred(line)).nth(n - 1) {
                return Some(line.clone());
            }
            if state.open == 0 {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                let from = state.lines.len().saturating_sub(30);
                panic!(
                    "timed out waiting for {what}; last lines:\n{}",
                    state.lines[from..].join("\n")
                );
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Like [`wait_for`](Log::wait_for), but `None` when the output ends first.
    pub fn try_wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.try_wait_count(what, 1, pred)
    }

    /// Waits for the first line that satisfies `pred` and returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_count(what, 1, pred)
    }
}

/// A child process, killed (SIGKILL) and reaped on drop unless it has exited already.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: Arc<Log>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `command` with stdin from /dev/null and its stdout and stderr collected.
    pub fn spawn(name: &str, command: &mut Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({command:?}): {e}"));
        let log = Log::new(2);
        log.collect(child.stdout.take().expect("piped stdout"));
        log.collect(child.stderr.take().expect("piped stderr"));
        Proc {
            name: name.to_owned(),
            child,
            log,
            status: None,
        }
    }

    /// Spawns `command` with a duplicate of `fd` that it inherits, so a shell in `command`
    /// can move it where it wants; `command` is built from the duplicate's number by `make`.
    /// The duplicate is close-on-exec in this process and loses the flag in the child only,
    /// between fork and exec: a child another test of this process spawns at the same
    /// moment (any test, through any helper) never inherits it. It is closed here once the
    /// child is spawned.
    pub fn spawn_with_fd(name: &str, fd: &impl AsRawFd, make: impl FnOnce(i32) -> Command) -> Proc {
        // At 10 or above, the duplicate is never 3, where the shell moves it.
        // SAFETY: plain fcntl on a descriptor the caller owns; the result is checked.
        let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
        assert!(
            dup >= 0,
            "dup the listening socket: {}",
            io::Error::last_os_error()
        );
        // SAFETY: `dup` is a new descriptor, from the fcntl above, owned by nothing else.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        let inheritable = dup.as_raw_fd();
        let mut command = make(inheritable);
        // SAFETY: the hook runs in the child between fork and exec and calls only fcntl,
        // which is async-signal-safe, on a descriptor the child has (a copy of ours).
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(inheritable, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let proc = Self::spawn(name, &mut command);
        drop(dup);
        proc
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (the child must still be running: it has not been reaped).
    pub fn sigterm(&self) {
        assert!(self.status.is_none(), "{} was already reaped", self.name);
        // SAFETY: kill(2) on our own child's pid, which stays reserved until we reap it.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(
            rc,
            0,
            "SIGTERM to {}: {}",
            self.name,
            io::Error::last_os_error()
        );
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("wait for {}: {e}", self.name));
        }
        self.status
    }

    /// Waits (bounded) for it to exit and returns its status.
    pub fn wait_exit(&mut self, what: &str) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {} to exit ({what}); last lines:\n{}",
                self.name,
                self.log.tail(30)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The echo_server example, which `cargo test` builds next to the test binaries.
pub fn echo_server_path() -> PathBuf {
    common::example_path("echo_server")
}

/// The echo_server command with `args`, logging at debug level (so the PROXY header lines
/// show) and two workers.
pub fn echo_server_command(args: &[&str]) -> Command {
    let mut command = Command::new(echo_server_path());
    command
        .args(["--workers", "2"])
        .args(args)
        .env("RUST_LOG", "debug")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES");
    command
}

pub const LISTENING: &str = "echo server listening on ";

/// The word after "echo server listening on " in `line`: `127.0.0.1:PORT` or
/// `unix:/path`.
pub fn listening_on(line: &str) -> &str {
    let (_, rest) = line
        .split_once(LISTENING)
        .unwrap_or_else(|| panic!("not a listening line: {line}"));
    rest.split_whitespace().next().unwrap_or_default()
}

/// Starts echo_server with `args` (which should bind port 0) and waits for its listening
/// line; returns the process and the address it listens on.
pub fn start_echo_server(name: &str, args: &[&str]) -> (Proc, SocketAddr) {
    let server = Proc::spawn(name, &mut echo_server_command(args));
    let line = server
        .log
        .wait_for(&format!("{name}'s listening line"), |l| {
            l.contains(LISTENING)
        });
    let addr = listening_on(&line)
        .parse()
        .unwrap_or_else(|e| panic!("{name}: no address in {line:?}: {e}"));
    (server, addr)
}

pub const NAMES_CLIENT: &str = "PROXY header names client ";

/// The clients that PROXY headers named, from a server's debug log lines
/// `connection N (PROXY_ADDR): PROXY header names client CLIENT_ADDR`.
pub fn proxied_clients(log: &Log) -> Vec<SocketAddr> {
    log.lines()
        .iter()
        .filter_map(|line| line.split_once(NAMES_CLIENT))
        .map(|(_, rest)| {
            let word = rest.split_whitespace().next().unwrap_or_default();
            word.parse()
                .unwrap_or_else(|e| panic!("bad client address {word:?}: {e}"))
        })
        .collect()
}

/// A port that was free a moment ago on 127.0.0.1, for a program that cannot bind port 0
/// itself (another process may take it in between: callers retry on a bind failure).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `request` on `stream` and reads exactly its echo; says what went wrong otherwise
/// (a write error, EOF or a reset before the whole echo, different bytes).
pub fn echo_on(stream: &mut (impl Read + Write), request: &[u8]) -> Result<(), String> {
    stream
        .write_all(request)
        .map_err(|e| format!("write: {e} ({:?})", e.kind()))?;
    let mut got = vec![0u8; request.len()];
    let mut have = 0;
    while have < got.len() {
        match stream.read(&mut got[have..]) {
            Ok(0) => {
                return Err(format!(
                    "EOF after {have} of {} bytes ({:?})",
                    got.len(),
                    String::from_utf8_lossy(&got[..have])
                ))
            }
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                    "read: {e} ({:?}) after {have} of {} bytes",
                    e.kind(),
                    got.len()
                ))
            }
        }
    }
    if got != request {
        return Err(format!(
            "got {:?}, expected {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(request)
        ));
    }
    Ok(())
}

/// A failed echo exchange: what failed, and the client's address if it got that far.
#[derive(Debug)]
pub struct EchoError {
    pub local: Option<SocketAddr>,
    pub what: String,
}

impl std::fmt::Display for EchoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.local {
            Some(local) => write!(f, "client {local}: {}", self.what),
            None => write!(f, "{}", self.what),
        }
    }
}

/// Connects to `addr` (with timeouts), sends `request`, reads its exact echo, closes.
/// Returns the client's own address (which a PROXY header should name), or what failed.
pub fn echo_tcp(addr: SocketAddr, request: &[u8]) -> Result<SocketAddr, EchoError> {
    let failed = |local, what| EchoError { local, what };
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| failed(None, format!("connect: {e} ({:?})", e.kind())))?;
    let local = stream
        .local_addr()
        .map_err(|e| failed(None, format!("local_addr: {e}")))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| failed(Some(local), format!("socket options: {e}")))?;
    echo_on(&mut stream, request)
        .map(|()| local)
        .map_err(|what| failed(Some(local), what))
}

/// A request that got no echo.
#[derive(Debug)]
pub struct Lost {
    pub at: Duration,
    pub request: String,
    pub error: EchoError,
}

/// Client threads that loop connect → send a unique request → read the whole echo → close
/// to one address, each for at most [`MAX_ITERATIONS`] requests, until stopped.
pub struct Load {
    stop: AtomicBool,
    done: AtomicUsize,
    pub started: Instant,
    pub lost: Mutex<Vec<Lost>>,
}

pub const MAX_ITERATIONS: usize = 4_000;
pub const CLIENT_THREADS: usize = 4;

pub fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Load {
    /// Starts [`CLIENT_THREADS`] client threads against `addr`.
    pub fn start(addr: SocketAddr) -> Clients {
        let load = Arc::new(Load {
            stop: AtomicBool::new(false),
            done: AtomicUsize::new(0),
            started: Instant::now(),
            lost: Mutex::new(Vec::new()),
        });
        let threads = (0..CLIENT_THREADS)
            .map(|t| {
                let load = Arc::clone(&load);
                thread::spawn(move || load.run(addr, t))
            })
            .collect();
        Clients { load, threads }
    }

    fn run(&self, frontend: SocketAddr, thread: usize) -> usize {
        let mut sent = 0;
        for i in 0..MAX_ITERATIONS {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let request = format!("request {thread}/{i}: {:0>40}\n", i * 7919);
            sent += 1;
            match echo_tcp(frontend, request.as_bytes()) {
                Ok(_) => {
                    self.done.fetch_add(1, Ordering::AcqRel);
                }
                Err(error) => locked(&self.lost).push(Lost {
                    at: self.started.elapsed(),
                    request,
                    error,
                }),
            }
        }
        sent
    }

    pub fn done(&self) -> usize {
        self.done.load(Ordering::Acquire)
    }

    /// Waits until `n` requests got their echo; fails if the threads ran out of iterations
    /// (or everything fails) first.
    pub fn wait_done(&self, n: usize, what: &str) {
        let deadline = Instant::now() + DEADLINE;
        while self.done() < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {} requests echoed; lost: {:#?}",
                self.done(),
                locked(&self.lost)
            );
            thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The client threads of a [`Load`]; stopped and joined on drop (a failing test does not
/// leave them running).
pub struct Clients {
    pub load: Arc<Load>,
    threads: Vec<JoinHandle<usize>>,
}

impl Clients {
    /// Stops the threads; returns how many requests they sent.
    pub fn finish(&mut self) -> usize {
        self.load.stop.store(true, Ordering::Release);
        self.threads
            .drain(..)
            .map(|t| t.join().expect("client thread"))
            .sum()
    }
}

impl std::ops::Deref for Clients {
    type Target = Load;

    fn deref(&self) -> &Load {
        &self.load
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.load.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
