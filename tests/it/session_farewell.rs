//! A connection the server ends through no fault of the peer's (a timeout, shutdown) gets
//! the codec's farewell after every reply it is owed, then a clean close.

use crate::common;

use std::time::Duration;

use crate::common::{connect, expect_clean_eof, round_trip, send, wait_for_stats};
use reactor_pool::{AfterReply, Builder, Codec, DecodeError, Decoded, Farewell, LineCodec, Output};

/// Lines, with SMTP-like farewells.
#[derive(Clone, Default)]
struct Polite(LineCodec);

impl Codec for Polite {
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        self.0.decode(input)
    }

    fn encode(&mut self, response: Vec<u8>, output: &mut Output<'_>) -> AfterReply {
        self.0.encode(response, output)
    }

    fn farewell(&mut self, why: Farewell, output: &mut Vec<u8>) {
        let text = match why {
            Farewell::IdleTimeout => "421 idle too long\n",
            Farewell::PartialFrameTimeout => "421 line too slow\n",
            _ => "421 shutting down\n",
        };
        output.extend_from_slice(text.as_bytes());
    }
}

fn start(
    name: &str,
    idle: Option<Duration>,
    partial: Option<Duration>,
) -> reactor_pool::ServerHandle {
    Builder::bind("127.0.0.1:0")
        .workers(1)
        .idle_timeout(idle)
        .partial_frame_timeout(partial)
        .lingering_time(Duration::from_millis(200))
        .thread_name(name)
        .start(Polite::default(), common::echo())
        .expect("start")
}

#[test]
fn an_idle_timeout_says_farewell_then_closes_cleanly() {
    common::init_logging();
    let server = start("sf-idle", Some(Duration::from_millis(200)), None);
    let mut client = connect(server.local_addr().tcp().unwrap());
    round_trip(&mut client, b"hi\n", b"hi\n");
    assert_eq!(
        expect_clean_eof(&mut client, "idle"),
        b"421 idle too long\n"
    );
    server.shutdown();
}

#[test]
fn a_partial_frame_timeout_says_farewell_then_closes_cleanly() {
    common::init_logging();
    let server = start("sf-partial", None, Some(Duration::from_millis(200)));
    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"no newline yet");
    assert_eq!(
        expect_clean_eof(&mut client, "slow line"),
        b"421 line too slow\n"
    );
    server.shutdown();
}

#[test]
fn shutdown_writes_owed_replies_then_the_farewell() {
    common::init_logging();
    let server = start("sf-stop", None, None);
    let mut client = connect(server.local_addr().tcp().unwrap());
    round_trip(&mut client, b"one\n", b"one\n");
    wait_for_stats(&server, "answered", |s| s.responses == 1);
    let stopper = std::thread::spawn(move || server.shutdown());
    assert_eq!(
        expect_clean_eof(&mut client, "at shutdown"),
        b"421 shutting down\n"
    );
    stopper.join().expect("shutdown");
}
