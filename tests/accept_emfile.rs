//! accept() failing with EMFILE never spins and never kills the server: it backs off, keeps
//! serving the connections already open, and resumes accepting when descriptors free up.
//!
//! The server runs in a child process (this binary re-executed with `CHILD_ENV` set) whose
//! RLIMIT_NOFILE is lowered to leave room for only a few connections; the parent opens more
//! than that and asks the child for its counters over stdin/stdout, one JSON line each.
//! This file is a `harness = false` test (see Cargo.toml): `main` is the test.

#[path = "it/common.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use reactor_pool::{Builder, RawCodec};
use rlimit::Resource;
use serde_json::Value;

use common::{connect, read_exactly, round_trip, WAIT_DEADLINE};

const TEST_NAME: &str = "accept_emfile_backs_off_and_recovers";
const CHILD_ENV: &str = "REACTOR_POOL_EMFILE_CHILD";
/// Free descriptors the child keeps below its limit: its connection capacity.
const ROOM: u64 = 12;
/// Connections the parent opens beyond what the child can accept.
const EXTRA: usize = 10;
/// How many waiting connections get in when the parent closes some.
const FREED: usize = 4;
/// /proc reports CPU times in USER_HZ, which Linux fixes at 100 per second.
const USER_HZ: f64 = 100.0;

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    if !selected() {
        println!("\nrunning 0 tests (filtered out: {TEST_NAME})\n");
        return;
    }
    println!("\nrunning 1 test");
    let started = Instant::now();
    parent();
    println!(
        "test {TEST_NAME} ... ok\n\ntest result: ok. 1 passed; finished in {:.2}s\n",
        started.elapsed().as_secs_f64()
    );
}

/// Whether the libtest-style arguments cargo passes select this test: no filter, or a
/// filter it matches (`--exact` honoured), and not `--ignored` (it is not ignored).
/// `--list` lists it and runs nothing.
fn selected() -> bool {
    let mut filters = Vec::new();
    let mut exact = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--list" => {
                println!("{TEST_NAME}: test");
                std::process::exit(0);
            }
            "--ignored" => return false,
            "--exact" => exact = true,
            "--skip" => {
                if args.next().is_some_and(|skip| TEST_NAME.contains(&skip)) {
                    return false;
                }
            }
            "--test-threads" | "--color" | "--format" | "--logfile" | "-Z" => {
                let _ = args.next();
            }
            a if a.starts_with('-') => {}
            filter => filters.push(filter.to_owned()),
        }
    }
    filters.is_empty()
        || filters.iter().any(|f| {
            if exact {
                f == TEST_NAME
            } else {
                TEST_NAME.contains(f.as_str())
            }
        })
}

/// The child: an echo server that can accept only about `ROOM` connections.
fn child() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .idle_timeout(None)
        .thread_name("emf")
        .start(RawCodec::new(), common::echo())
        .expect("child: start the server");
    // Every descriptor the server needs besides connections is open now. New descriptors
    // take the lowest free numbers, so a limit just above the ROOM-th free number leaves
    // room for ROOM connections (descriptors above it, inherited ones say, stay usable).
    let open: std::collections::HashSet<u64> = std::fs::read_dir("/proc/self/fd")
        .expect("child: read /proc/self/fd")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // (The directory's own descriptor is among them, and closed by now: one more free slot
    // below the limit, which the count of free numbers leaves out on purpose.)
    let soft = (0u64..)
        .filter(|fd| !open.contains(fd))
        .nth(ROOM as usize - 1)
        .expect("a free descriptor number")
        + 1;
    let (_, hard) = rlimit::getrlimit(Resource::NOFILE).expect("child: getrlimit");
    rlimit::setrlimit(Resource::NOFILE, soft, hard).expect("child: setrlimit");
    println!("ADDR {}", server.local_addr().tcp().unwrap());
    println!("LIMIT {soft}");
    for line in std::io::stdin().lines() {
        match line.expect("child: read stdin").trim() {
            "stats" => {
                let s = server.stats();
                println!(
                    "{}",
                    serde_json::json!({
                        "connections_open": s.connections_open,
                        "connections_accepted": s.connections_accepted,
                        "connections_closed": s.connections_closed,
                        "accept_errors": s.accept_errors,
                        "requests": s.requests,
                        "responses": s.responses,
                    })
                );
            }
            "quit" => break,
            other => panic!("child: unknown command {other:?}"),
        }
    }
    server.shutdown();
}

struct Child {
    process: std::process::Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Child {
    fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT_DEADLINE)
            .unwrap_or_else(|e| panic!("no line from the child within {WAIT_DEADLINE:?}: {e}"))
    }

    fn stats(&mut self) -> Value {
        writeln!(self.stdin, "stats").expect("write to the child");
        let line = self.line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad stats line {line:?}: {e}"))
    }

    fn wait_for_stats(&mut self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            let stats = self.stats();
            if condition(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; child stats: {stats}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// CPU seconds the child's acceptor thread has used.
    fn acceptor_cpu(&self) -> f64 {
        let pid = self.process.id();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("list the child's threads")
            .flatten()
        {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let Some((name, rest)) = stat.split_once(") ") else {
                continue;
            };
            if !name.ends_with("(emf-acceptor") {
                continue;
            }
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = fields[11].parse::<u64>().expect("utime")
                + fields[12].parse::<u64>().expect("stime");
            return ticks as f64 / USER_HZ;
        }
        panic!("no emf-acceptor thread in the child");
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

fn n(stats: &Value, field: &str) -> u64 {
    stats[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {stats}"))
}

fn parent() {
    let exe = std::env::current_exe().expect("current_exe");
    let mut process = Command::new(exe)
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child server");
    let stdin = process.stdin.take().expect("child stdin");
    let stdout = process.stdout.take().expect("child stdout");
    let (tx, lines) = unbounded();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut child = Child {
        process,
        stdin,
        lines,
    };
    let addr_line = child.line();
    let addr: SocketAddr = addr_line
        .strip_prefix("ADDR ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("expected ADDR <address>, got {addr_line:?}"));
    let limit_line = child.line();
    println!("child {}: {limit_line}", child.process.id());

    // More clients than the child has descriptors for; each sends its name at once.
    let total = ROOM as usize + EXTRA;
    let mut clients: Vec<Option<TcpStream>> = Vec::new();
    for i in 0..total {
        let mut c = connect(addr);
        c.write_all(format!("c{i:02}").as_bytes())
            .expect("client write");
        clients.push(Some(c));
    }
    let stats = child.wait_for_stats("accept() to fail for lack of descriptors", |s| {
        n(s, "accept_errors") > 0
    });
    let accepted = n(&stats, "connections_open") as usize;
    println!("accepted {accepted} of {total} before EMFILE; {stats}");
    assert!(accepted >= FREED, "only {accepted} connections accepted");
    assert!(
        accepted < total,
        "all {total} connections accepted: the limit did not bite"
    );
    // The listen backlog is first in, first out: the first `accepted` clients are in.
    for (i, c) in clients.iter_mut().enumerate().take(accepted) {
        let c = c.as_mut().expect("open");
        let want = format!("c{i:02}");
        assert_eq!(read_exactly(c, want.len()), want.as_bytes(), "client {i}");
    }

    // A second of waiting: the open connections keep echoing, accept() is retried at a
    // backed-off pace, and the acceptor does not burn CPU.
    let before = child.stats();
    let cpu_before = child.acceptor_cpu();
    let window = Instant::now();
    let mut round = 0;
    while window.elapsed() < Duration::from_secs(1) {
        let i = round % accepted;
        let c = clients[i].as_mut().expect("open");
        let msg = format!("r{round}");
        round_trip(c, msg.as_bytes(), msg.as_bytes());
        round += 1;
        thread::sleep(Duration::from_millis(20));
    }
    let after = child.stats();
    let cpu = child.acceptor_cpu() - cpu_before;
    let secs = window.elapsed().as_secs_f64();
    let errors = n(&after, "accept_errors") - n(&before, "accept_errors");
    let rate = errors as f64 / secs;
    println!(
        "over {secs:.2}s: {errors} accept errors ({rate:.1}/s), acceptor CPU {cpu:.2}s, \
         {round} round trips"
    );
    assert!(
        rate <= 30.0,
        "accept() retried {errors} times in {secs:.2}s: a spin, not a back-off"
    );
    assert!(
        errors > 0,
        "accept() was not retried at all in {secs:.2}s while connections waited"
    );
    assert!(
        cpu <= 0.2 * secs,
        "the acceptor used {cpu:.2}s of CPU in {secs:.2}s while out of descriptors"
    );
    assert_eq!(n(&after, "connections_open") as usize, accepted, "{after}");

    // Close some: as many waiting connections get in and are echoed, in backlog order.
    for c in clients.iter_mut().take(FREED) {
        drop(c.take());
    }
    for (i, c) in clients.iter_mut().enumerate().skip(accepted).take(FREED) {
        let c = c.as_mut().expect("open");
        let want = format!("c{i:02}");
        assert_eq!(
            read_exactly(c, want.len()),
            want.as_bytes(),
            "waiting client {i} after descriptors were freed"
        );
        round_trip(c, b"and more", b"and more");
    }
    let stats = child.wait_for_stats("the freed slots taken", |s| {
        n(s, "connections_accepted") as usize == accepted + FREED
            && n(s, "connections_closed") as usize == FREED
    });
    assert_eq!(n(&stats, "connections_open") as usize, accepted, "{stats}");

    // Everyone leaves: every connection is eventually accepted, and closed.
    drop(clients);
    let stats = child.wait_for_stats("every connection accepted and closed", |s| {
        n(s, "connections_accepted") as usize == total && n(s, "connections_open") == 0
    });
    println!("after all clients closed: {stats}");

    writeln!(child.stdin, "quit").expect("tell the child to quit");
    let deadline = Instant::now() + WAIT_DEADLINE;
    let status = loop {
        if let Some(status) = child.process.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the child did not exit");
        thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "child exit status {status}");
}
