//! The four-way close: after its last reply the client shuts down its write side (FIN); the
//! server answers with its own FIN, so the client reads a clean EOF, never a reset.

use crate::common;

use std::net::Shutdown;

use reactor_pool::{Builder, LineCodec, RawCodec};

use crate::common::{connect, echo, read_exactly, read_to_eof, send, wait_for_stats};

#[test]
fn client_fin_after_its_reply_gets_a_clean_eof() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("ceof")
        .start(RawCodec::new(), echo())
        .expect("start the server");

    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"Hello,server!");
    assert_eq!(read_exactly(&mut client, 13), b"Hello,server!");
    client.shutdown(Shutdown::Write).expect("shutdown(Write)");
    match read_to_eof(&mut client) {
        Ok(rest) => assert!(rest.is_empty(), "bytes after the reply: {rest:?}"),
        Err(e) => panic!("expected a clean EOF, got {e} ({:?})", e.kind()),
    }

    let stats = wait_for_stats(&server, "the server to close the connection", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.connections_open, 0);
    assert_eq!(stats.resets, 0, "a clean close is not a reset: {stats:#?}");
    assert_eq!(stats.replies_dropped, 0);
    drop(client);
    server.shutdown();
}

#[test]
fn several_clients_closing_one_after_another_all_get_clean_eofs() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("ceof2")
        .start(LineCodec::new(), echo())
        .expect("start the server");

    const CLIENTS: u64 = 20;
    for i in 0..CLIENTS {
        let mut client = connect(server.local_addr().tcp().unwrap());
        let line = format!("client {i}\n");
        send(&mut client, line.as_bytes());
        assert_eq!(read_exactly(&mut client, line.len()), line.as_bytes());
        client.shutdown(Shutdown::Write).expect("shutdown(Write)");
        match read_to_eof(&mut client) {
            Ok(rest) => assert!(rest.is_empty(), "client {i}: bytes after the reply"),
            Err(e) => panic!("client {i}: expected a clean EOF, got {e} ({:?})", e.kind()),
        }
        wait_for_stats(&server, "the server to close the connection", |s| {
            s.connections_closed == i + 1
        });
    }
    let stats = server.stats();
    assert_eq!(stats.resets, 0, "{stats:#?}");
    assert_eq!(stats.connections_open, 0);
    server.shutdown();
}

#[test]
fn client_fin_after_an_unfinished_line_gets_its_replies_and_a_clean_eof() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("ceof3")
        .start(LineCodec::new(), echo())
        .expect("start the server");

    let mut client = connect(server.local_addr().tcp().unwrap());
    // One whole line and the start of another that never ends: the whole one is answered,
    // the unfinished one is dropped, and the close is still clean.
    send(&mut client, b"whole\nunfinis");
    client.shutdown(Shutdown::Write).expect("shutdown(Write)");
    match read_to_eof(&mut client) {
        Ok(everything) => assert_eq!(String::from_utf8_lossy(&everything), "whole\n"),
        Err(e) => panic!(
            "expected the reply then a clean EOF, got {e} ({:?})",
            e.kind()
        ),
    }
    let stats = wait_for_stats(&server, "the server to close the connection", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.requests, 1, "{stats:#?}");
    assert_eq!(stats.resets, 0, "{stats:#?}");
    drop(client);
    server.shutdown();
}
