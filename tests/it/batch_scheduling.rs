//! `Builder::batch_scheduling`: on Linux the reactor and worker threads (and each reactor's
//! standby, which may run the reactor on) run under SCHED_BATCH by default, and under the
//! normal policy when it is turned off. The acceptor, the watchdog and the caller's threads
//! are never touched.
#![cfg(target_os = "linux")]

use crate::common;

use reactor_pool::{Builder, RawCodec};

use std::time::{Duration, Instant};

use crate::common::{connect, echo, round_trip};

/// The `policy` field of /proc/self/task/*/stat (field 41) for every thread whose name
/// starts with `prefix`, as (name, policy).
fn policies(prefix: &str) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .flatten()
    {
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("stat")),
        ) else {
            continue; // the thread exited meanwhile
        };
        let comm = comm.trim_end().to_owned();
        if comm.starts_with(prefix) {
            found.push((comm, policy_of(&stat)));
        }
    }
    found.sort();
    found
}

/// Field 41 of a `stat` line.
fn policy_of(stat: &str) -> u32 {
    // The name in parentheses may hold spaces: count fields after the last ')', where
    // field 3 (state) starts.
    let after = &stat[stat.rfind(')').expect("stat has the name in parentheses") + 1..];
    after
        .split_whitespace()
        .nth(41 - 3)
        .expect("stat has a policy field")
        .parse()
        .expect("policy is a number")
}

const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

/// Starts a server with one reactor and one worker, makes a round trip, and reads the
/// policies of its threads until they are `want` (a thread picks its policy when it starts
/// running, and the round trip may not involve the worker: a reactor runs a fast handler
/// itself) or 30 s have passed; returns what it read last.
fn policies_after_round_trip(
    prefix: &str,
    builder: Builder,
    want: &[(&str, u32)],
) -> Vec<(String, u32)> {
    let server = builder
        .reactors(1)
        .workers(1)
        .thread_name(prefix)
        .start(RawCodec::new(), echo())
        .expect("start the server");
    let mut client = connect(server.local_addr().tcp().unwrap());
    round_trip(&mut client, b"policy?", b"policy?");
    let want: Vec<(String, u32)> = want.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut found = policies(prefix);
    while found != want && Instant::now() < deadline {
        std::thread::yield_now();
        found = policies(prefix);
    }
    drop(client);
    server.shutdown();
    found
}

#[test]
fn reactor_and_worker_threads_run_under_sched_batch_by_default() {
    common::init_logging();
    let want = [
        ("bs1-acceptor", SCHED_OTHER),
        ("bs1-reactor-0", SCHED_BATCH),
        ("bs1-standby-0", SCHED_BATCH),
        ("bs1-watchdog", SCHED_OTHER),
        ("bs1-worker-0", SCHED_BATCH),
    ];
    let found = policies_after_round_trip("bs1", Builder::bind("127.0.0.1:0"), &want);
    assert_eq!(found, want.map(|(n, p)| (n.to_owned(), p)));
    assert_eq!(
        policy_of(&std::fs::read_to_string("/proc/thread-self/stat").expect("own stat")),
        SCHED_OTHER,
        "the thread that started the server keeps its policy"
    );
}

#[test]
fn batch_scheduling_off_leaves_the_normal_policy() {
    common::init_logging();
    let want = [
        ("bs0-acceptor", SCHED_OTHER),
        ("bs0-reactor-0", SCHED_OTHER),
        ("bs0-standby-0", SCHED_OTHER),
        ("bs0-watchdog", SCHED_OTHER),
        ("bs0-worker-0", SCHED_OTHER),
    ];
    let found = policies_after_round_trip(
        "bs0",
        Builder::bind("127.0.0.1:0").batch_scheduling(false),
        &want,
    );
    assert_eq!(found, want.map(|(n, p)| (n.to_owned(), p)));
}
