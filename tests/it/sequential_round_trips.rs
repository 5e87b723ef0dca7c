//! Many request-reply exchanges, one after another, on one connection: the client writes a
//! request, reads exactly its reply, and only then writes the next.

use crate::common;

use reactor_pool::{Builder, LineCodec, RawCodec};

use crate::common::{connect, echo, read_exactly, read_to_eof, send, wait_for_stats};

const ROUNDS: usize = 1000;

#[test]
fn a_thousand_line_round_trips_on_one_connection() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("seqln")
        .start(LineCodec::new(), echo())
        .expect("start the server");

    let mut client = connect(server.local_addr().tcp().unwrap());
    for i in 0..ROUNDS {
        let request = format!("message number {i}\n");
        send(&mut client, request.as_bytes());
        let reply = read_exactly(&mut client, request.len());
        assert_eq!(
            String::from_utf8_lossy(&reply),
            request,
            "reply to round trip {i}"
        );
    }
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown(Write)");
    assert_eq!(read_to_eof(&mut client).expect("clean EOF"), b"");

    let stats = wait_for_stats(&server, "the connection to close", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.requests, ROUNDS as u64);
    assert_eq!(stats.responses, ROUNDS as u64);
    server.shutdown();
}

#[test]
fn a_thousand_raw_echo_round_trips_on_one_connection() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("seqraw")
        .start(RawCodec::new(), echo())
        .expect("start the server");

    let mut client = connect(server.local_addr().tcp().unwrap());
    for i in 0..ROUNDS {
        // Vary the size so a reply that is too short or too long shows up as a mismatch.
        let request = format!("raw-{i}-{}", "x".repeat(i % 37));
        send(&mut client, request.as_bytes());
        let reply = read_exactly(&mut client, request.len());
        assert_eq!(
            String::from_utf8_lossy(&reply),
            request,
            "reply to round trip {i}"
        );
    }
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown(Write)");
    assert_eq!(read_to_eof(&mut client).expect("clean EOF"), b"");
    wait_for_stats(&server, "the connection to close", |s| {
        s.connections_closed == 1
    });
    server.shutdown();
}
