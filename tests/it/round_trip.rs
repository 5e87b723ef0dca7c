//! The seed's scenario: one client sends `Hello,server!` to the echo server and reads the
//! same bytes back.

use crate::common;

use reactor_pool::{Builder, RawCodec};

use crate::common::{connect, echo, read_exactly, read_to_eof, send, wait_for_stats};

#[test]
fn hello_server_comes_back_unchanged() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("rtrip")
        .start(RawCodec::new(), echo())
        .expect("start the server");

    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"Hello,server!");
    let reply = read_exactly(&mut client, b"Hello,server!".len());
    assert_eq!(reply, b"Hello,server!", "echo of the request");

    // Nothing more is owed: our FIN is answered by the server's, with no extra bytes.
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown(Write)");
    let rest = read_to_eof(&mut client).expect("clean EOF after the reply");
    assert!(
        rest.is_empty(),
        "unexpected bytes after the reply: {rest:?}"
    );

    let stats = wait_for_stats(&server, "the connection to close", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.requests, stats.responses, "every request answered");
    assert!(stats.requests >= 1);
    drop(client);
    server.shutdown();
}
