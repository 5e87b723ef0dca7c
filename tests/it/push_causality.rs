//! Regression: a push made before a peer sends a request was written after that request's
//! reply when the push crossed reactors, found by kv_server's pub/sub (a PUBLISH on one
//! connection, then a PING on the subscriber's: redis-server answers the message first,
//! kv_server mostly the PONG). A push is now placed by the requests its connection had
//! decoded when it was made, not by when it reached the reactor.
//!
//! Two connections on two reactors (round-robin: the first on reactor 0, the second on 1).
//! `sub` registers its pusher; then, each round, `pub` asks for a push to `sub` and reads
//! the reply (the push is posted to `sub`'s reactor before that reply is even made), and
//! only then does `sub` send `ping`. `sub` must read the pushed line, then `ping`'s echo.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;

use crate::common::{connect, send};
use reactor_pool::{Builder, Context, Handler, LineCodec, Pusher, Replies};

/// `register` keeps the connection's pusher; `push N` pushes `pushed N` to it and answers
/// `done`; any other line is echoed.
#[derive(Default)]
struct Relay {
    target: Mutex<Option<Pusher<Vec<u8>>>>,
}

impl Handler for Relay {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    type Session = ();

    fn open(&self, _: &Context, _: &mut Replies<Vec<u8>>) {}

    fn call(&self, _: &mut (), line: Vec<u8>, _: &Context, replies: &mut Replies<Vec<u8>>) {
        if line == b"register" {
            *self.target.lock().unwrap() = Some(replies.pusher());
            replies.send(b"registered".to_vec());
        } else if let Some(n) = line.strip_prefix(b"push ") {
            let target = self.target.lock().unwrap().clone().expect("registered");
            target
                .push([b"pushed ", n].concat())
                .expect("the push is accepted");
            replies.send(b"done".to_vec());
        } else {
            replies.send(line);
        }
    }
}

fn line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read a line");
    line.trim_end().to_string()
}

#[test]
fn a_push_is_written_before_replies_to_requests_sent_after_it() {
    let server = Builder::bind("127.0.0.1:0")
        .reactors(2)
        .workers(2)
        .start(LineCodec::new(), Relay::default())
        .expect("start");
    let addr: SocketAddr = server.local_addr().tcp().expect("TCP");
    let mut sub = BufReader::new(connect(addr));
    let mut publisher = BufReader::new(connect(addr));
    send(sub.get_mut(), b"register\n");
    assert_eq!(line(&mut sub), "registered");
    let rounds = 1_000;
    let mut overtaken = Vec::new();
    for i in 0..rounds {
        send(publisher.get_mut(), format!("push {i}\n").as_bytes());
        assert_eq!(line(&mut publisher), "done");
        // The push was posted before `done` was made; `ping` is sent after `done` arrived.
        send(sub.get_mut(), b"ping\n");
        let first = line(&mut sub);
        let second = line(&mut sub);
        if first == "ping" {
            assert_eq!(second, format!("pushed {i}"));
            overtaken.push(i);
        }
    }
    assert!(
        overtaken.is_empty(),
        "in {} of {rounds} rounds, `ping`'s echo came before the push made before it was \
         sent (rounds {:?}...)",
        overtaken.len(),
        &overtaken[..overtaken.len().min(10)]
    );
}
