//! `ShutdownTrigger`: once fired it stays fired, for every server started with it or a clone
//! of it, whether they wait in `join` (or `serve`) before or after it fires; firing it again
//! changes nothing.

use crate::common;

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;

use reactor_pool::{Builder, LineCodec, ServerHandle, ShutdownTrigger};

/// An echo server that `trigger` stops.
fn start(trigger: &ShutdownTrigger) -> ServerHandle {
    common::init_logging();
    Builder::bind("127.0.0.1:0")
        .reactors(1)
        .workers(1)
        .shutdown_trigger(trigger.clone())
        .start(LineCodec::new(), common::echo())
        .expect("start")
}

/// Joins `server` on a thread of its own; the receiver hears once `join` has returned.
fn join_in_background(server: ServerHandle) -> mpsc::Receiver<()> {
    let (joined, rx) = mpsc::channel();
    std::thread::spawn(move || {
        server.join();
        let _ = joined.send(());
    });
    rx
}

/// Waits for a background `join` (or `serve`) to return; a hang fails the test.
fn expect_returned(joined: &mpsc::Receiver<()>, what: &str) {
    joined
        .recv_timeout(common::WAIT_DEADLINE)
        .unwrap_or_else(|_| {
            panic!(
                "{what} still running {:?} after the trigger fired",
                common::WAIT_DEADLINE
            )
        });
}

fn assert_refused(addr: SocketAddr) {
    match TcpStream::connect(addr) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        other => panic!("{addr} after its server stopped: expected a refusal, got {other:?}"),
    }
}

/// Regression: the trigger was a one-slot channel whose single message the first `join`
/// took, so a trigger shared by two servers stopped only one of them, and the other's
/// `join` never returned.
#[test]
fn one_fire_stops_every_server_sharing_the_trigger() {
    let trigger = ShutdownTrigger::new();
    let first = start(&trigger);
    let first_addr = first.local_addr().tcp().unwrap();
    let first_joined = join_in_background(first);
    // The second in `serve`, the other way to wait on a trigger.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let second_addr = listener.local_addr().expect("addr");
    let (second_served, second_joined) = mpsc::channel();
    let stopper = trigger.clone();
    std::thread::spawn(move || {
        let served = Builder::from_listener(listener)
            .reactors(1)
            .workers(1)
            .shutdown_trigger(stopper)
            .serve(LineCodec::new(), common::echo());
        let _ = second_served.send(served.map_err(|e| e.to_string()));
    });
    let mut client = common::connect(second_addr);
    common::round_trip(&mut client, b"up\n", b"up\n");
    drop(client);

    trigger.fire();
    expect_returned(&first_joined, "the first server's join");
    second_joined
        .recv_timeout(common::WAIT_DEADLINE)
        .expect("the second server's serve still running after the trigger fired")
        .expect("serve returned Ok");
    assert_refused(first_addr);
    assert_refused(second_addr);
}

/// A trigger that fired before the servers started stops each of them as soon as it is
/// joined.
#[test]
fn a_trigger_fired_before_start_stops_every_server_at_once() {
    let trigger = ShutdownTrigger::new();
    trigger.fire();
    let servers = [start(&trigger), start(&trigger)];
    let addrs = servers
        .each_ref()
        .map(|server| server.local_addr().tcp().unwrap());
    let joined = servers.map(join_in_background);
    for (i, joined) in joined.iter().enumerate() {
        expect_returned(joined, &format!("server {i}'s join"));
    }
    addrs.into_iter().for_each(assert_refused);
}

/// Firing a trigger that already fired, before or after its server stopped, changes
/// nothing: it stays fired (it does not toggle back, nor block, nor panic).
#[test]
fn firing_twice_is_harmless() {
    fn clone_debug_default_send_sync<T: Clone + std::fmt::Debug + Default + Send + Sync>() {}
    clone_debug_default_send_sync::<ShutdownTrigger>();

    let trigger = ShutdownTrigger::default();
    trigger.fire();
    trigger.fire();
    expect_returned(&join_in_background(start(&trigger)), "a join");
    trigger.clone().fire();
    expect_returned(&join_in_background(start(&trigger)), "a later join");
}
