//! A request can hold decoding until its reply is encoded, so the codec switches framing
//! for the bytes after it (SMTP's DATA, HTTP's Upgrade) even when the peer pipelined them.

use crate::common;

use crate::common::{connect, read_exactly, send};
use reactor_pool::{
    handler_fn, AfterReply, Builder, Codec, Context, DecodeError, Decoded, LineCodec, Output,
};

/// Lines; the reply `switch` makes the next request exactly 4 raw bytes, newlines and all.
#[derive(Clone, Default)]
struct Switching {
    lines: LineCodec,
    raw_next: bool,
    hold: bool,
}

impl Codec for Switching {
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        if self.raw_next {
            if input.len() < 4 {
                return Ok(None);
            }
            self.raw_next = false;
            let mut raw = b"raw:".to_vec();
            raw.extend_from_slice(&input[..4]);
            return Ok(Some((raw, 4)));
        }
        self.lines.decode(input)
    }

    fn encode(&mut self, response: Vec<u8>, output: &mut Output<'_>) -> AfterReply {
        if response == b"switch" {
            self.raw_next = true;
        }
        self.lines.encode(response, output)
    }

    fn holds_decoding(&self, request: &Vec<u8>) -> bool {
        self.hold && request == b"switch"
    }
}

fn exchange(hold: bool, reply_len: usize) -> Vec<u8> {
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("fs")
        .start(
            Switching {
                hold,
                ..Switching::default()
            },
            handler_fn(|request: Vec<u8>, _: &Context| request),
        )
        .expect("start");
    let mut client = connect(server.local_addr().tcp().unwrap());
    // One write: the switch, 4 raw bytes (with a newline inside), then two lines.
    send(&mut client, b"switch\nab\ncd\nx\n");
    let reply = read_exactly(&mut client, reply_len);
    drop(client);
    server.shutdown();
    reply
}

#[test]
fn bytes_after_a_holding_request_are_decoded_in_the_mode_its_reply_switched_to() {
    common::init_logging();
    let want = "switch\nraw:ab\nc\nd\nx\n";
    assert_eq!(String::from_utf8(exchange(true, want.len())).unwrap(), want);
}

/// The same codec without the hold decodes `ab` as a line before the switch happens: the
/// hold is what makes the switch work.
#[test]
fn without_the_hold_the_pipelined_bytes_are_decoded_in_the_old_mode() {
    common::init_logging();
    // `ab` comes back as a line of its own, decoded before `switch` was answered.
    let want = "switch\nab\n";
    assert_eq!(
        String::from_utf8(exchange(false, want.len())).unwrap(),
        want
    );
}
