//! Pipelined requests on one connection run concurrently on several workers and finish in
//! any order, but their replies are written in request order.

use crate::common;

use std::io::{BufRead, BufReader};
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use rand::Rng;
use reactor_pool::{handler_fn, Builder, Context, LineCodec};

use crate::common::{connect, send, wait_for_stats};

const REQUESTS: usize = 200;

#[test]
fn two_hundred_pipelined_lines_with_random_delays_come_back_in_order() {
    common::init_logging();
    // Eight workers and (by default) up to 32 requests in flight per connection: plenty
    // run at once and finish out of order.
    let server = Builder::bind("127.0.0.1:0")
        .workers(8)
        .thread_name("pipe")
        .start(
            LineCodec::new(),
            handler_fn(|request: Vec<u8>, _: &Context| {
                thread::sleep(Duration::from_millis(rand::thread_rng().gen_range(0..=20)));
                let request = String::from_utf8(request).expect("utf-8 request");
                let n = request.strip_prefix("req-").expect("numbered request");
                format!("reply-{n}").into_bytes()
            }),
        )
        .expect("start the server");

    let mut client = connect(server.local_addr().tcp().unwrap());
    let all: String = (0..REQUESTS).map(|i| format!("req-{i}\n")).collect();
    // A few writes, cut mid-line.
    let bytes = all.as_bytes();
    let cuts = [0, bytes.len() / 3 + 1, 2 * bytes.len() / 3 + 2, bytes.len()];
    for pair in cuts.windows(2) {
        send(&mut client, &bytes[pair[0]..pair[1]]);
    }

    let mut reader = BufReader::new(client.try_clone().expect("clone"));
    for i in 0..REQUESTS {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading reply {i}: {e}"));
        assert!(n > 0, "EOF before reply {i}");
        assert_eq!(line, format!("reply-{i}\n"), "reply {i} out of order");
    }
    client.shutdown(Shutdown::Write).expect("shutdown(Write)");
    let mut rest = String::new();
    let n = reader.read_line(&mut rest).expect("clean EOF");
    assert_eq!(n, 0, "unexpected bytes after the last reply: {rest:?}");

    let stats = wait_for_stats(&server, "the connection to close", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.requests, REQUESTS as u64);
    assert_eq!(stats.responses, REQUESTS as u64);
    drop(reader);
    drop(client);
    server.shutdown();
}
