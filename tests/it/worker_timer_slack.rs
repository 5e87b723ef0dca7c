//! `Builder::worker_timer_slack`: on Linux the workers' timed waits get a 1 µs timer slack
//! by default (the kernel's is 50 µs), and the system's when it is turned off.
#![cfg(target_os = "linux")]

use crate::common;

use std::time::Duration;

use reactor_pool::{handler_fn, Builder, Context, LineCodec};

use crate::common::{connect, round_trip};

/// The calling thread's timer slack in nanoseconds (PR_GET_TIMERSLACK).
fn timer_slack_ns() -> i64 {
    // SAFETY: PR_GET_TIMERSLACK reads the calling thread's slack and returns it; it touches
    // no memory of ours.
    i64::from(unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) })
}

/// Asks a worker of the server `configure` builds for its timer slack; expects `slack_ns`.
fn assert_worker_slack(configure: impl FnOnce(Builder) -> Builder, slack_ns: i64) {
    common::init_logging();
    let server = configure(Builder::bind("127.0.0.1:0").workers(1))
        .start(
            LineCodec::new(),
            handler_fn(|_: Vec<u8>, _: &Context| timer_slack_ns().to_string().into_bytes()),
        )
        .expect("start");
    let mut client = connect(server.local_addr().tcp().unwrap());
    round_trip(&mut client, b"slack?\n", format!("{slack_ns}\n").as_bytes());
}

#[test]
fn workers_wait_with_a_one_microsecond_timer_slack_by_default() {
    assert_worker_slack(|b| b, 1_000);
}

#[test]
fn a_chosen_slack_is_applied() {
    assert_worker_slack(
        |b| b.worker_timer_slack(Some(Duration::from_micros(20))),
        20_000,
    );
}

#[test]
fn without_it_workers_keep_the_systems_slack() {
    // Threads inherit their creator's slack: the test thread's is the system's here.
    assert_worker_slack(|b| b.worker_timer_slack(None), timer_slack_ns());
}
