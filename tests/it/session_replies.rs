//! Reply control: a call answers with none, one or several responses and may close the
//! connection; a codec answers a bad but recoverable request itself without the pool.

use crate::common;

use std::net::Shutdown;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::{connect, expect_clean_eof, read_exactly, send, wait_for_stats};
use reactor_pool::{
    AfterReply, Builder, Codec, Context, DecodeError, Decoded, Handler, LineCodec, Output, Replies,
};

/// `quiet` gets no reply, `twice X` two, `end` one and then the close; anything else is echoed.
#[derive(Clone, Default)]
struct Control {
    calls: Arc<AtomicUsize>,
}

impl Handler for Control {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    type Session = ();

    fn open(&self, _: &Context, _: &mut Replies<Vec<u8>>) {}

    fn call(&self, _: &mut (), line: Vec<u8>, _: &Context, replies: &mut Replies<Vec<u8>>) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match line.strip_prefix(b"twice ") {
            Some(x) => {
                replies.send(x.to_vec());
                replies.send(x.to_vec());
            }
            None if line == b"quiet" => {}
            None if line == b"end" => {
                replies.send(b"the end".to_vec());
                replies.close();
            }
            None => replies.send(line),
        }
    }
}

fn start(
    name: &str,
    codec: impl Codec<Request = Vec<u8>, Response = Vec<u8>>,
    handler: Control,
) -> reactor_pool::ServerHandle {
    Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name(name)
        .start(codec, handler)
        .expect("start")
}

#[test]
fn a_request_may_get_no_reply_and_the_next_one_still_gets_its_own() {
    common::init_logging();
    let server = start("sr-none", LineCodec::new(), Control::default());
    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"quiet\nquiet\nafter\n");
    assert_eq!(read_exactly(&mut client, 6), b"after\n");
    let stats = wait_for_stats(&server, "three answered", |s| s.responses == 3);
    assert_eq!(stats.in_flight, 0, "{stats:#?}");
    client.shutdown(Shutdown::Write).unwrap();
    assert!(expect_clean_eof(&mut client, "nothing more").is_empty());
    drop(client);
    server.shutdown();
}

#[test]
fn a_request_may_get_several_replies_in_order_with_the_others() {
    common::init_logging();
    let server = start("sr-many", LineCodec::new(), Control::default());
    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"a\ntwice b\nc\n");
    assert_eq!(read_exactly(&mut client, 8), b"a\nb\nb\nc\n");
    drop(client);
    server.shutdown();
}

#[test]
fn the_handler_closes_the_connection_after_its_reply_and_skips_later_requests() {
    common::init_logging();
    let control = Control::default();
    let server = start("sr-close", LineCodec::new(), control.clone());
    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"a\nend\nnever run\n");
    assert_eq!(expect_clean_eof(&mut client, "after end"), b"a\nthe end\n");
    assert_eq!(
        control.calls.load(Ordering::SeqCst),
        2,
        "the request after `end` never ran"
    );
    drop(client);
    server.shutdown();
}

/// Lines, but `bogus ...` is refused by the codec itself with `ERR bogus`.
#[derive(Clone, Default)]
struct Refusing(LineCodec);

impl Codec for Refusing {
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        match self.0.decode(input)? {
            Some((line, used)) if line.starts_with(b"bogus") => Err(DecodeError::Refused {
                consumed: used,
                reason: "bogus".into(),
            }),
            other => Ok(other),
        }
    }

    fn encode(&mut self, response: Vec<u8>, output: &mut Output<'_>) -> AfterReply {
        self.0.encode(response, output)
    }

    fn error_reply(&mut self, error: &DecodeError, output: &mut Vec<u8>) {
        output.extend_from_slice(format!("ERR {error}\n").as_bytes());
    }
}

#[test]
fn a_codec_refuses_a_request_itself_in_order_and_the_connection_stays_open() {
    common::init_logging();
    let control = Control::default();
    let server = start("sr-refuse", Refusing::default(), control.clone());
    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"a\nbogus 1\nb\n");
    let want = b"a\nERR request refused: bogus\nb\n";
    assert_eq!(read_exactly(&mut client, want.len()), want);
    send(&mut client, b"c\n");
    assert_eq!(read_exactly(&mut client, 2), b"c\n");
    assert_eq!(
        control.calls.load(Ordering::SeqCst),
        3,
        "the refused request never reached the pool"
    );
    let stats = wait_for_stats(&server, "all answered", |s| s.responses == 4);
    assert_eq!(
        (stats.refused, stats.protocol_errors, stats.in_flight),
        (1, 0, 0),
        "{stats:#?}"
    );
    drop(client);
    server.shutdown();
}
