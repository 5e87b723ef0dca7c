//! Bad input ends only the connection it came on, cleanly: the codec's error reply (if it
//! has one), then the server's FIN, never a reset, even while the peer keeps sending (the
//! lingering close). Peers that reset mid-request or mid-reply are closed and counted while
//! another connection keeps working.

use crate::common;

use std::io::{self, Read, Write};
use std::thread;
use std::time::Duration;

use reactor_pool::{
    handler_fn, AfterReply, Builder, Codec, Context, DecodeError, Decoded, LengthPrefixedCodec,
    LineCodec, Output, RawCodec, ServerHandle,
};

use crate::common::{
    connect, connect_with_recv_buffer, expect_clean_eof, read_exactly, reset, round_trip, send,
    wait_for_stats,
};

/// The length-prefixed codec with an error reply: a frame saying what went wrong.
#[derive(Clone)]
struct FramedWithErrors(LengthPrefixedCodec);

impl Codec for FramedWithErrors {
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        self.0.decode(input)
    }

    fn encode(&mut self, response: Vec<u8>, output: &mut Output<'_>) -> AfterReply {
        self.0.encode(response, output)
    }

    fn error_reply(&mut self, error: &DecodeError, output: &mut Vec<u8>) {
        let text: &[u8] = match error {
            DecodeError::FrameTooLarge { .. } => b"ERR frame too large\n",
            _ => b"ERR invalid\n",
        };
        output.extend_from_slice(&Output::capture(|out| self.0.encode(text.to_vec(), out)).0);
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// A strict line protocol: `CMD <word>\n`, answered `OK <word>\n`. Anything else, as soon
/// as it cannot be a prefix of such a line, is a protocol error answered `ERR bad request\n`.
#[derive(Clone)]
struct StrictCodec;

const ERR_LINE: &[u8] = b"ERR bad request\n";

impl Codec for StrictCodec {
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        let head = &input[..input.len().min(4)];
        if !b"CMD ".starts_with(head) {
            return Err(DecodeError::Invalid(format!("bad start {head:?}")));
        }
        let Some(end) = input.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let word = input.get(4..end).unwrap_or_default();
        if word.is_empty() || !word.iter().all(u8::is_ascii_alphanumeric) {
            return Err(DecodeError::Invalid("bad word".into()));
        }
        Ok(Some((word.to_vec(), end + 1)))
    }

    fn encode(&mut self, response: Vec<u8>, output: &mut Output<'_>) -> AfterReply {
        output.extend_from_slice(b"OK ");
        output.extend_from_slice(&response);
        output.push(b'\n');
        AfterReply::KeepOpen
    }

    fn error_reply(&mut self, _error: &DecodeError, output: &mut Vec<u8>) {
        output.extend_from_slice(ERR_LINE);
    }
}

fn strict_server(name: &str, linger: Duration) -> ServerHandle {
    Builder::bind("127.0.0.1:0")
        .workers(2)
        .lingering_time(linger)
        .thread_name(name)
        .start(
            StrictCodec,
            handler_fn(|word: Vec<u8>, _ctx: &Context| {
                if word == b"slow" {
                    thread::sleep(Duration::from_millis(200));
                }
                word
            }),
        )
        .expect("start the server")
}

/// After the client closed too: the server never saw a reset, holds no bytes.
fn assert_closed_cleanly(server: &ServerHandle, protocol_errors: u64) {
    let stats = wait_for_stats(server, "every connection closed", |s| {
        s.connections_open == 0
    });
    assert_eq!(stats.protocol_errors, protocol_errors, "{stats:#?}");
    assert_eq!(stats.resets, 0, "{stats:#?}");
    assert_eq!(stats.bytes_buffered, 0, "{stats:#?}");
}

const MAX_FRAME: usize = 1024;

#[test]
fn an_oversized_length_prefix_gets_the_error_reply_then_a_clean_eof() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("bad-len")
        .start(
            FramedWithErrors(LengthPrefixedCodec::with_max_frame(MAX_FRAME)),
            common::echo(),
        )
        .expect("start the server");
    let mut client = connect(server.local_addr().tcp().unwrap());
    round_trip(&mut client, &frame(b"ping"), &frame(b"ping"));
    // A frame of exactly the maximum is fine.
    let max = vec![b'm'; MAX_FRAME];
    round_trip(&mut client, &frame(&max), &frame(&max));

    // The prefix announces one byte more than the maximum, and the payload follows.
    let mut oversized = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    oversized.extend_from_slice(&vec![b'x'; MAX_FRAME + 1]);
    send(&mut client, &oversized);
    let got = expect_clean_eof(&mut client, "after an oversized frame");
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&frame(b"ERR frame too large\n")),
    );
    assert_eq!(server.stats().protocol_errors, 1);
    drop(client);
    assert_closed_cleanly(&server, 1);
    server.shutdown();
}

const MAX_LINE: usize = 64;

fn line_server(name: &str) -> ServerHandle {
    Builder::bind("127.0.0.1:0")
        .workers(2)
        // Only the protocol error may end these connections.
        .idle_timeout(None)
        .partial_frame_timeout(None)
        .thread_name(name)
        .start(LineCodec::with_max_frame(MAX_LINE), common::echo())
        .expect("start the server")
}

#[test]
fn a_line_crossing_the_limit_at_a_read_boundary_is_rejected_when_the_extra_byte_arrives() {
    common::init_logging();
    let server = line_server("bad-line");
    let mut client = connect(server.local_addr().tcp().unwrap());
    round_trip(&mut client, b"short\n", b"short\n");

    // Exactly the maximum arrives in one read...
    send(&mut client, &[b'a'; MAX_LINE]);
    wait_for_stats(&server, "the first MAX bytes buffered", |s| {
        s.bytes_buffered == MAX_LINE as u64
    });
    assert_eq!(server.stats().protocol_errors, 0);
    // ...then one more byte that is not a line end (nor the `\r` of one): the line is now
    // longer than the maximum whatever follows, so that is a protocol error at once.
    send(&mut client, b"a");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set_read_timeout");
    let mut buf = [0u8; 64];
    match client.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "expected EOF after the over-long line, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!(
            "expected EOF after a line of {} bytes without a newline (max {MAX_LINE}): {e}; \
             stats: {:#?}",
            MAX_LINE + 1,
            server.stats()
        ),
    }
    assert_eq!(server.stats().protocol_errors, 1);
    drop(client);
    assert_closed_cleanly(&server, 1);
    server.shutdown();
}

#[test]
fn a_line_of_exactly_the_limit_is_accepted_when_split_across_reads() {
    common::init_logging();
    let server = line_server("ok-line");
    let mut client = connect(server.local_addr().tcp().unwrap());

    // MAX bytes, then the newline in a later read.
    let line = [b'a'; MAX_LINE];
    send(&mut client, &line);
    wait_for_stats(&server, "MAX bytes buffered", |s| {
        s.bytes_buffered == MAX_LINE as u64
    });
    send(&mut client, b"\n");
    let mut want = line.to_vec();
    want.push(b'\n');
    assert_eq!(read_exactly(&mut client, want.len()), want);

    // MAX bytes, then `\r` (MAX + 1 bytes without a newline: not an error yet), then `\n`.
    let line = [b'b'; MAX_LINE];
    send(&mut client, &line);
    wait_for_stats(&server, "MAX bytes buffered", |s| {
        s.bytes_buffered == MAX_LINE as u64
    });
    send(&mut client, b"\r");
    wait_for_stats(&server, "MAX + 1 bytes buffered", |s| {
        s.bytes_buffered == MAX_LINE as u64 + 1
    });
    send(&mut client, b"\n");
    let mut want = line.to_vec();
    want.push(b'\n');
    assert_eq!(read_exactly(&mut client, want.len()), want);

    round_trip(&mut client, b"still open\n", b"still open\n");
    assert_eq!(server.stats().protocol_errors, 0);
    drop(client);
    assert_closed_cleanly(&server, 0);
    server.shutdown();
}

#[test]
fn garbage_for_a_strict_codec_gets_owed_replies_then_the_error_reply_then_a_clean_eof() {
    common::init_logging();
    let server = strict_server("bad-strict", Duration::from_secs(2));
    let mut client = connect(server.local_addr().tcp().unwrap());
    round_trip(&mut client, b"CMD hello\n", b"OK hello\n");
    // A request still in the handler when the garbage arrives is answered first.
    send(&mut client, b"CMD slow\nGARBAGE\x00\xff\n");
    let got = expect_clean_eof(&mut client, "after garbage");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "OK slow\nERR bad request\n",
        "the owed reply, then the error reply, then EOF"
    );
    drop(client);
    assert_closed_cleanly(&server, 1);
    let stats = server.stats();
    assert_eq!((stats.requests, stats.responses), (2, 2), "{stats:#?}");
    server.shutdown();
}

#[test]
fn a_client_that_keeps_sending_after_a_protocol_error_still_reads_the_error_reply() {
    common::init_logging();
    // The linger is long so that only a bug, not the clock, can cut the drain short.
    let server = strict_server("bad-linger", Duration::from_secs(20));
    let mut client = connect(server.local_addr().tcp().unwrap());
    round_trip(&mut client, b"CMD first\n", b"OK first\n");
    send(&mut client, b"NOT A COMMAND\n");
    // The client does not look: it keeps sending 1 MiB for a while, then reads.
    let chunk = [b'z'; 16 * 1024];
    for i in 0..64 {
        if let Err(e) = client.write_all(&chunk) {
            panic!("write {i} after the protocol error failed ({e}): the server did not drain");
        }
        thread::sleep(Duration::from_millis(5));
    }
    let got = expect_clean_eof(&mut client, "reading after sending 1 MiB past the error");
    assert_eq!(String::from_utf8_lossy(&got), "ERR bad request\n");
    drop(client);
    assert_closed_cleanly(&server, 1);
    server.shutdown();
}

#[test]
fn a_peer_reset_mid_request_closes_only_that_connection() {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("rst-req")
        .start(LengthPrefixedCodec::new(), common::echo())
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();
    let mut witness = connect(addr);
    round_trip(&mut witness, &frame(b"before"), &frame(b"before"));

    let mut victim = connect(addr);
    round_trip(&mut victim, &frame(b"one"), &frame(b"one"));
    // Half a frame: the prefix announces 100 bytes, 10 arrive.
    let mut half = 100u32.to_be_bytes().to_vec();
    half.extend_from_slice(&[b'h'; 10]);
    send(&mut victim, &half);
    wait_for_stats(&server, "the half frame buffered", |s| {
        s.bytes_buffered == 14
    });
    round_trip(&mut witness, &frame(b"during"), &frame(b"during"));
    reset(victim);

    let stats = wait_for_stats(&server, "the reset connection closed", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.connections_open, 1, "{stats:#?}");
    assert_eq!(stats.resets, 1, "{stats:#?}");
    assert_eq!(stats.bytes_buffered, 0, "{stats:#?}");
    assert_eq!(stats.protocol_errors, 0, "{stats:#?}");
    for i in 0..5 {
        let msg = format!("after {i}");
        round_trip(&mut witness, &frame(msg.as_bytes()), &frame(msg.as_bytes()));
    }
    drop(witness);
    wait_for_stats(&server, "all closed", |s| s.connections_open == 0);
    server.shutdown();
}

#[test]
fn a_peer_reset_while_its_reply_is_being_written_closes_only_that_connection() {
    common::init_logging();
    const HIGH_WATER: usize = 64 * 1024;
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .output_high_water(HIGH_WATER)
        .thread_name("rst-write")
        .start(RawCodec::new(), common::echo())
        .expect("start the server");
    let addr = server.local_addr().tcp().unwrap();
    let mut witness = connect(addr);
    round_trip(&mut witness, b"before", b"before");

    // The victim sends without reading until its socket blocks: the server has stopped
    // reading it, with unwritten echo in its output.
    let mut victim = connect_with_recv_buffer(addr, 16 * 1024);
    victim.set_nonblocking(true).expect("set_nonblocking");
    let chunk = [b'v'; 64 * 1024];
    let mut sent = 0usize;
    let mut blocked = 0;
    // Blocked several times in a row, with pauses: the server is not catching up.
    while blocked < 20 {
        match victim.write(&chunk) {
            Ok(n) => {
                sent += n;
                blocked = 0;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                blocked += 1;
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("victim write after {sent} bytes: {e}"),
        }
        assert!(sent < 256 << 20, "the server never pushed back");
    }
    wait_for_stats(&server, "the server holding the victim's echo", |s| {
        s.bytes_buffered >= (HIGH_WATER / 2) as u64
    });
    round_trip(&mut witness, b"during", b"during");
    victim.set_nonblocking(false).expect("set_nonblocking");
    reset(victim);

    let stats = wait_for_stats(&server, "the reset connection closed", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.connections_open, 1, "{stats:#?}");
    assert_eq!(stats.resets, 1, "{stats:#?}");
    for i in 0..5 {
        let msg = format!("after {i}");
        round_trip(&mut witness, msg.as_bytes(), msg.as_bytes());
    }
    let stats = server.stats();
    assert_eq!(stats.bytes_buffered, 0, "{stats:#?}");
    drop(witness);
    wait_for_stats(&server, "all closed", |s| s.connections_open == 0);
    server.shutdown();
}
