//! Graceful shutdown: idle connections see EOF at once (one that has not sent its first
//! request yet gets a second to send it), requests in flight get their
//! replies first, a silent client cannot hold shutdown past its deadline, and the listener
//! refuses connections once `shutdown()` returns. The echo_server example exits 0 on SIGTERM
//! and on SIGINT.

use crate::common;

use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver};
use reactor_pool::{handler_fn, Builder, Context, LineCodec};

use crate::common::{
    connect, connect_with_recv_buffer, expect_clean_eof, round_trip, send, wait_for_stats,
    wait_until, WAIT_DEADLINE,
};

/// Names of this process's threads that start with `prefix`.
fn threads_named(prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .flatten()
    {
        // A thread may exit between listing and reading: skip it.
        if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
            if comm.starts_with(prefix) {
                names.push(comm.trim_end().to_owned());
            }
        }
    }
    names
}

fn assert_threads_gone(prefix: &str) {
    wait_until(&format!("every {prefix}* thread to exit"), || {
        threads_named(prefix).is_empty().then_some(())
    });
}

fn assert_refused(addr: SocketAddr) {
    match TcpStream::connect(addr) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("connecting after shutdown: expected a refusal, got {e}"),
        Ok(_) => panic!("a connection was accepted after shutdown returned"),
    }
}

#[test]
fn shutdown_closes_idle_connections_promptly() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .shutdown_timeout(Duration::from_secs(30))
        .idle_timeout(None)
        .thread_name("gsidle")
        .start(LineCodec::new(), common::echo())
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();
    let mut clients: Vec<_> = (0..3).map(|_| connect(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("hi {i}\n");
        round_trip(c, msg.as_bytes(), msg.as_bytes());
    }
    wait_for_stats(&server, "three open", |s| s.connections_open == 3);

    let started = Instant::now();
    let stopper = thread::spawn(move || {
        server.shutdown();
        started.elapsed()
    });
    for (i, c) in clients.iter_mut().enumerate() {
        let rest = expect_clean_eof(c, &format!("idle client {i} at shutdown"));
        assert!(rest.is_empty(), "client {i} got {rest:?}");
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "EOF only {took:?} after shutdown began (shutdown timeout 30 s)"
        );
    }
    drop(clients);
    let took = stopper.join().expect("shutdown thread");
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?} with only idle connections (shutdown timeout 30 s)"
    );
    assert_refused(addr);
    assert_threads_gone("gsidle-");
}

#[test]
fn shutdown_delivers_replies_in_flight_then_closes() {
    common::init_logging();
    const CLIENTS: usize = 4;
    let (entered_tx, entered_rx) = unbounded::<()>();
    let (release, gate) = bounded::<()>(0);
    let server = Builder::bind("127.0.0.1:0")
        .workers(CLIENTS)
        .shutdown_timeout(Duration::from_secs(30))
        .thread_name("gsinfl")
        .start(
            LineCodec::new(),
            handler_fn(move |line: Vec<u8>, _ctx: &Context| {
                let _ = entered_tx.send(());
                let _ = gate.recv_timeout(WAIT_DEADLINE);
                let mut reply = b"done ".to_vec();
                reply.extend_from_slice(&line);
                reply
            }),
        )
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| connect(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        send(c, format!("req {i}\n").as_bytes());
    }
    for _ in 0..CLIENTS {
        entered_rx
            .recv_timeout(WAIT_DEADLINE)
            .expect("every request in a handler");
    }
    assert_eq!(server.stats().in_flight, CLIENTS as u64);

    let started = Instant::now();
    let stopper = thread::spawn(move || {
        server.shutdown();
        started.elapsed()
    });
    // Shutdown has begun once the listener is closed; only then do the handlers finish.
    wait_until("the listener to close", || match TcpStream::connect(addr) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Some(()),
        _ => None,
    });
    drop(release);
    for (i, c) in clients.iter_mut().enumerate() {
        let got = expect_clean_eof(c, &format!("client {i} with a request in flight"));
        assert_eq!(String::from_utf8_lossy(&got), format!("done req {i}\n"));
    }
    drop(clients);
    let took = stopper.join().expect("shutdown thread");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert_refused(addr);
    assert_threads_gone("gsinfl-");
}

#[test]
fn shutdown_returns_by_its_deadline_despite_clients_that_never_read_nor_close() {
    common::init_logging();
    let timeout = Duration::from_secs(1);
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .shutdown_timeout(timeout)
        // Nothing but the shutdown deadline may end these connections.
        .lingering_time(Duration::from_secs(60))
        .idle_timeout(None)
        .partial_frame_timeout(None)
        .write_stall_timeout(None)
        .output_high_water(64 * 1024)
        .thread_name("gssilent")
        .start(
            LineCodec::new(),
            handler_fn(|line: Vec<u8>, _ctx: &Context| {
                if line == b"big" {
                    vec![b'B'; 16 << 20]
                } else {
                    line
                }
            }),
        )
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();
    // One says nothing at all; the other asks for 16 MiB and never reads it.
    let mut silent = connect(addr);
    let mut stuck = connect_with_recv_buffer(addr, 4096);
    send(&mut stuck, b"big\n");
    wait_for_stats(&server, "the big reply stuck in the output", |s| {
        s.connections_open == 2 && s.responses == 1 && s.bytes_buffered > 0
    });

    let started = Instant::now();
    server.shutdown();
    let took = started.elapsed();
    assert!(
        took >= timeout,
        "shutdown returned after {took:?}, before its deadline, with a reply unwritten"
    );
    assert!(
        took < timeout + Duration::from_secs(9),
        "shutdown took {took:?} with a deadline of {timeout:?}"
    );
    assert_refused(addr);
    assert_threads_gone("gssilent-");
    let rest = expect_clean_eof(&mut silent, "the silent client");
    assert!(rest.is_empty(), "the silent client got {rest:?}");
    drop(stuck);
}

/// The echo_server example next to this test binary (`cargo test` builds examples).
fn echo_server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in <target>/<profile>/deps");
    let path = profile_dir
        .join("examples")
        .join(format!("echo_server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "the echo_server example is not built at {}: run the whole `cargo test` (it builds \
         the examples) or `cargo build --example echo_server` before this test",
        path.display()
    );
    path
}

/// Sends `signal` to process `pid`.
fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits in pid_t");
    // SAFETY: kill(2) takes two integers and touches none of our memory. `pid` is our own
    // child that has not been waited for, so the id cannot have been reused by another
    // process.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        io::Error::last_os_error()
    );
}

/// Whether process `pid` has a handler installed for `signal` (SigCgt in its status).
fn catches(pid: u32, signal: libc::c_int) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

/// Kills the child if the test fails before it exits.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn example_exits_0_on(signal: libc::c_int) {
    let child = Command::new(echo_server_binary())
        .args(["--addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the echo_server example");
    let mut child = Reaper(child);
    let pid = child.0.id();
    let stderr = child.0.stderr.take().expect("piped stderr");
    let (lines_tx, lines): (_, Receiver<String>) = unbounded();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let marker = "echo server listening on ";
    let addr: SocketAddr = loop {
        let line = lines
            .recv_timeout(WAIT_DEADLINE)
            .unwrap_or_else(|e| panic!("no listening line from echo_server ({e}); log: {log:#?}"));
        log.push(line.clone());
        if let Some(at) = line.find(marker) {
            let addr = line[at + marker.len()..].trim();
            break addr
                .parse()
                .unwrap_or_else(|e| panic!("bad address {addr:?} in {line:?}: {e}"));
        }
    };
    let mut client = connect(addr);
    round_trip(&mut client, b"Hello,server!", b"Hello,server!");
    // The example logs its address before it installs its signal handlers.
    wait_until("the example's signal handlers", || {
        catches(pid, signal).then_some(())
    });

    send_signal(pid, signal);
    let rest = expect_clean_eof(&mut client, "a client of the example at shutdown");
    assert!(rest.is_empty(), "got {rest:?}");
    drop(client);
    let deadline = Instant::now() + WAIT_DEADLINE;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "echo_server still running {WAIT_DEADLINE:?} after signal {signal}"
        );
        thread::sleep(Duration::from_millis(10));
    };
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        log.push(line);
    }
    assert_eq!(
        status.code(),
        Some(0),
        "echo_server exit status after signal {signal}: {status}; log: {log:#?}"
    );
    assert!(
        log.iter().any(|l| l.contains("echo server stopped")),
        "no 'echo server stopped' line; log: {log:#?}"
    );
}

#[test]
fn echo_server_example_exits_0_on_sigterm() {
    example_exits_0_on(libc::SIGTERM);
}

#[test]
fn echo_server_example_exits_0_on_sigint() {
    example_exits_0_on(libc::SIGINT);
}

/// Regression (haproxy test): a connection accepted an instant before the shutdown, its
/// first request still on the wire, was closed unanswered. It now has a grace to send it.
#[test]
fn a_connection_whose_first_request_comes_just_after_the_shutdown_is_served() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .reactors(1)
        .start(
            LineCodec::new(),
            handler_fn(|line: Vec<u8>, _: &Context| line),
        )
        .expect("start");
    let addr = server.local_addr().tcp().unwrap();
    // `used` has had its request: the shutdown closes it at once. `fresh` has said nothing.
    let mut used = connect(addr);
    round_trip(&mut used, b"one\n", b"one\n");
    let mut fresh = connect(addr);
    wait_for_stats(&server, "both accepted", |s| s.connections_open == 2);
    let trigger = server.shutdown_trigger();
    let stopping = thread::spawn(move || server.join());
    trigger.fire();
    // `used` sees EOF: the reactor has begun the shutdown.
    expect_clean_eof(&mut used, "the used connection");
    round_trip(&mut fresh, b"late\n", b"late\n");
    expect_clean_eof(&mut fresh, "the fresh connection after its reply");
    stopping.join().expect("stopped");
}
