//! `Builder::mode(Mode::Inline)`: the handler runs on the reactor thread that read the request,
//! no worker thread exists, pipelined replies keep their order, and a panic still closes only
//! its own connection after the replies it owes.

use crate::common;

use reactor_pool::{handler_fn, Builder, Context, LineCodec, Mode, ServerHandle};

use crate::common::{connect, expect_clean_eof, read_exactly, round_trip, send, wait_for_stats};

/// A line server in inline mode: `thread?` answers the name of the thread running the
/// handler, `panic` panics, anything else is echoed.
fn server(name: &str) -> ServerHandle {
    Builder::bind("127.0.0.1:0")
        .mode(Mode::Inline)
        .reactors(1)
        .workers(8) // ignored in inline mode
        .thread_name(name)
        .start(
            LineCodec::new(),
            handler_fn(|line: Vec<u8>, _: &Context| {
                if line == b"thread?" {
                    return std::thread::current()
                        .name()
                        .unwrap_or("?")
                        .as_bytes()
                        .to_vec();
                }
                if line == b"panic" {
                    panic!("the handler was asked to panic");
                }
                line
            }),
        )
        .expect("start the server")
}

#[test]
fn the_handler_runs_on_the_reactor_thread_and_no_worker_starts() {
    common::init_logging();
    // Linux shows 15 bytes of a thread name: keep the prefix short and unique.
    let server = server("in1");
    let mut client = connect(server.local_addr().tcp().unwrap());
    round_trip(&mut client, b"thread?\n", b"in1-reactor-0\n");
    let threads = common::threads_named("in1-");
    assert_eq!(
        threads,
        vec!["in1-acceptor".to_owned(), "in1-reactor-0".to_owned()],
        "inline mode starts no worker"
    );
    drop(client);
    server.shutdown();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    common::init_logging();
    let server = server("inl-pipe");
    let mut client = connect(server.local_addr().tcp().unwrap());
    let requests: String = (0..500).map(|i| format!("request {i}\n")).collect();
    send(&mut client, requests.as_bytes());
    let replies = read_exactly(&mut client, requests.len());
    assert_eq!(String::from_utf8_lossy(&replies), requests);
    let stats = wait_for_stats(&server, "every reply counted", |s| s.responses == 500);
    assert_eq!(stats.requests, 500);
    assert_eq!(stats.in_flight, 0);
    drop(client);
    server.shutdown();
}

#[test]
fn a_panic_closes_only_its_connection_after_the_replies_it_owes() {
    common::init_logging();
    let server = server("inl-panic");
    let mut bystander = connect(server.local_addr().tcp().unwrap());
    round_trip(&mut bystander, b"before\n", b"before\n");

    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"one\ntwo\npanic\nthree\n");
    let rest = expect_clean_eof(&mut client, "the panicking connection");
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "one\ntwo\n",
        "the replies owed before the panic, then a clean close"
    );
    drop(client); // ends the server's lingering close at once
    let stats = wait_for_stats(&server, "the panic counted", |s| {
        s.panics == 1 && s.connections_closed == 1
    });
    assert_eq!(stats.connections_open, 1);

    round_trip(&mut bystander, b"after\n", b"after\n");
    drop(bystander);
    server.shutdown();
}
