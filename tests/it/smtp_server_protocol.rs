//! examples/smtp_server over raw sockets on 127.0.0.1 (greeting, sequence errors, size
//! limit, QUIT, farewells, pipelining through DATA's framing switch), and its codec fed every
//! way TCP could split the input.

use std::time::Duration;

use crate::common::wait_until;
use crate::smtp_support::smtp_server::smtp_codec::{Reply, Request, SmtpCodec, CHUNK, MAX_LINE};
use crate::smtp_support::*;
use reactor_pool::{Codec, DecodeError};

#[test]
fn the_greeting_comes_first_even_to_a_client_that_talks_first() {
    let server = Server::start("greeting", |_| {});
    // `Server::client` reads the greeting before sending anything.
    let mut polite = server.client();
    assert_eq!(polite.command("HELO polite.test"), "250 mx.test\r\n");

    let mut eager = Client::new(server.addr());
    eager.send(b"NOOP\r\nEHLO eager.test\r\n");
    assert_eq!(eager.reply(), "220 mx.test ESMTP reactor-pool\r\n");
    assert_eq!(eager.reply(), "250 2.0.0 OK\r\n");
    assert_eq!(
        eager.reply(),
        "250-mx.test greets eager.test\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n\
         250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
    );
}

#[test]
fn commands_out_of_sequence_get_503_and_bad_ones_500_or_501_on_an_open_connection() {
    let server = Server::start("sequence", |_| {});
    let mut client = server.client();
    assert_eq!(client.command("MAIL FROM:<a@example.org>"), BAD_SEQUENCE);
    assert_eq!(client.command("RCPT TO:<b@example.org>"), BAD_SEQUENCE);
    assert_eq!(client.command("DATA"), BAD_SEQUENCE);
    assert_eq!(client.command("HELO client.test"), "250 mx.test\r\n");
    assert_eq!(client.command("RCPT TO:<b@example.org>"), BAD_SEQUENCE);
    assert_eq!(client.command("DATA"), BAD_SEQUENCE);
    assert_eq!(client.command("MAIL FROM:<a@example.org>"), OK_SENDER);
    assert_eq!(
        client.command("MAIL FROM:<again@example.org>"),
        BAD_SEQUENCE
    );
    assert_eq!(client.command("DATA"), BAD_SEQUENCE, "DATA before RCPT");
    assert_eq!(client.command("RCPT TO:<b@example.org>"), OK_RCPT);
    assert_eq!(client.command("RSET"), "250 2.0.0 OK\r\n");
    assert_eq!(
        client.command("DATA"),
        BAD_SEQUENCE,
        "RSET forgot the envelope"
    );

    let unknown = "500 5.5.2 Command unrecognized\r\n";
    assert_eq!(client.command("VRFY someone"), unknown);
    assert_eq!(client.command("MAILFROM:<a@example.org>"), unknown);
    assert_eq!(
        client.command(""),
        "500 5.5.2 Syntax error: empty command\r\n"
    );
    let mail_syntax = "501 5.5.4 Syntax: MAIL FROM:<address>\r\n";
    assert_eq!(client.command("MAIL FROM:a@example.org"), mail_syntax);
    assert_eq!(client.command("MAIL TO:<a@example.org>"), mail_syntax);
    assert_eq!(client.command("MAIL FROM:<a b@example.org>"), mail_syntax);
    assert_eq!(
        client.command("MAIL FROM:<a@example.org> SIZE=big"),
        "501 5.5.4 Syntax: SIZE=<bytes>\r\n"
    );
    assert_eq!(
        client.command("MAIL FROM:<a@example.org> AUTH=<>"),
        "555 5.5.4 Unsupported parameter AUTH\r\n"
    );
    assert_eq!(
        client.command("HELO"),
        "501 5.5.4 Syntax: HELO hostname\r\n"
    );
    assert_eq!(
        client.command("DATA now"),
        "501 5.5.4 Syntax: DATA takes no argument\r\n"
    );
    assert_eq!(
        client.command("mail from: <>"),
        OK_SENDER,
        "case, space, null path"
    );
    assert_eq!(
        client.command("RCPT TO:<>"),
        "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
    );
    assert_eq!(client.command("rcpt to:<c@example.org>"), OK_RCPT);
    assert_eq!(client.command("NOOP"), "250 2.0.0 OK\r\n");
    assert!(server.dir.files("new").is_empty());
}

#[test]
fn oversized_messages_get_552_and_the_connection_stays_usable() {
    const MAX: usize = 100_000;
    let server = Server::start("oversized", |config| config.max_size = MAX);
    let mut client = server.client();
    assert!(client
        .command("EHLO client.test")
        .contains("250-SIZE 100000\r\n"));
    assert_eq!(
        client.command("MAIL FROM:<a@example.org> SIZE=100001"),
        TOO_BIG
    );
    assert_eq!(
        client.command("MAIL FROM:<a@example.org> SIZE=100000"),
        OK_SENDER
    );
    assert_eq!(client.command("RSET"), "250 2.0.0 OK\r\n");

    // Four times the framework's 1 MiB frame limit: a codec that held the message until its
    // dot would have the connection closed, not answered 552.
    let line = format!("{}\r\n", "x".repeat(998));
    let huge = line.repeat(4 * 1024 * 1024 / line.len());
    assert_eq!(send_message(&mut client, huge.as_bytes()), TOO_BIG);
    assert!(
        server.dir.files("tmp").is_empty(),
        "the partial file is removed"
    );

    // The limit counts the message as sent, dot-unstuffed: MAX bytes pass, one more not.
    let exact: Vec<u8> = (0..MAX)
        .map(|i| if i % 100 >= 98 { b"\r\n"[i % 2] } else { b'.' })
        .collect();
    let over = [&b"."[..], &exact].concat();
    assert_eq!(send_message(&mut client, &over), TOO_BIG);
    let id = queued_id(&send_message(&mut client, &exact));
    server
        .dir
        .message(&id)
        .check("a@example.org", &["b@example.org"], &exact);
    assert_eq!(client.command("NOOP"), "250 2.0.0 OK\r\n");
    assert_eq!(server.dir.files("new"), [id]);
    assert!(server.dir.files("tmp").is_empty());
}

#[test]
fn a_large_message_is_streamed_to_disk_intact() {
    let server = Server::start("large", |_| {});
    let mut client = server.client();
    client.command("EHLO client.test");
    // 3 MiB, with a 2 MiB line (more than the framework's frame limit), dots at line
    // starts, and bare LF and CR in the data, which end no line: `\n.\n` is not the end.
    let mut body = b"Subject: large\r\n\r\n".to_vec();
    for i in 0..20_000u32 {
        let dots = ".".repeat((i % 3) as usize);
        body.extend_from_slice(
            format!("{dots}line {i} {}\r\n", "y".repeat((i % 97) as usize)).as_bytes(),
        );
    }
    body.extend_from_slice(b"bare\n.\nLF and bare\r.\rCR\r\n");
    body.extend(std::iter::repeat_n(b'z', 2 * 1024 * 1024));
    body.extend_from_slice(b"\r\n.\r\n..\r\nend\r\n");
    assert!(body.len() > 3 * 1024 * 1024);
    let id = queued_id(&send_message(&mut client, &body));
    server
        .dir
        .message(&id)
        .check("a@example.org", &["b@example.org"], &body);
}

#[test]
fn quit_gets_221_then_a_clean_eof() {
    let server = Server::start("quit", |_| {});
    let mut client = server.client();
    assert_eq!(
        client.command("QUIT"),
        "221 2.0.0 mx.test closing connection\r\n"
    );
    client.expect_eof("after QUIT");

    // Commands pipelined after QUIT are not served.
    let mut client = server.client();
    client.send(b"NOOP\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(client.reply(), "250 2.0.0 OK\r\n");
    assert_eq!(client.reply(), "221 2.0.0 mx.test closing connection\r\n");
    client.expect_eof("after a pipelined QUIT");
}

#[test]
fn a_command_line_over_the_limit_gets_500_then_a_clean_close() {
    let server = Server::start("long-line", |_| {});
    let mut client = server.client();
    let longest = format!("NOOP {}", "x".repeat(MAX_LINE - 5));
    assert_eq!(
        client.command(&longest),
        "250 2.0.0 OK\r\n",
        "a line at the limit"
    );
    client.send(format!("NOOP {}", "x".repeat(MAX_LINE)).as_bytes());
    assert_eq!(client.reply(), "500 5.5.6 Line too long\r\n");
    client.expect_eof("after a line too long");
}

#[test]
fn an_idle_connection_gets_421_and_a_message_cut_short_is_dropped() {
    let server = Server::start("idle", |config| {
        config.idle_timeout = Duration::from_secs(1);
    });
    let mut idle = server.client();
    assert!(idle.command("EHLO idle.test").starts_with("250-"));
    assert_eq!(idle.reply(), FAREWELL, "421 after the idle timeout");
    idle.expect_eof("after the idle timeout");

    let mut sending = server.client();
    sending.command("HELO sending.test");
    assert_eq!(sending.command("MAIL FROM:<a@example.org>"), OK_SENDER);
    assert_eq!(sending.command("RCPT TO:<b@example.org>"), OK_RCPT);
    assert_eq!(sending.command("DATA"), GO_AHEAD);
    sending.send(b"Subject: never finished\r\n\r\nhalf a li");
    assert_eq!(sending.reply(), FAREWELL, "421 in the middle of a message");
    sending.expect_eof("after a timeout in a message");
    // The connection ends (and its close hook runs) once our FIN ends the server's linger.
    drop(sending);
    wait_until("the close hook to remove the partial message", || {
        server.dir.files("tmp").is_empty().then_some(())
    });
    assert!(server.dir.files("new").is_empty());
}

#[test]
fn shutdown_says_421_to_connected_clients() {
    let mut server = Server::start("shutdown", |_| {});
    let mut idle = server.client();
    assert!(idle.command("EHLO idle.test").starts_with("250-"));
    let mut sending = server.client();
    sending.command("HELO sending.test");
    assert_eq!(sending.command("MAIL FROM:<a@example.org>"), OK_SENDER);
    assert_eq!(sending.command("RCPT TO:<b@example.org>"), OK_RCPT);
    assert_eq!(sending.command("DATA"), GO_AHEAD);
    sending.send(b"Subject: cut short\r\n\r\n");
    wait_until("the message file to be started", || {
        (server.dir.files("tmp").len() == 1).then_some(())
    });

    let handle = server.handle.take().expect("running");
    let stopping = std::thread::spawn(move || handle.shutdown());
    assert_eq!(idle.reply(), FAREWELL);
    idle.expect_eof("after the shutdown's 421");
    assert_eq!(sending.reply(), FAREWELL);
    sending.expect_eof("after the shutdown's 421");
    drop((idle, sending));
    stopping.join().expect("shutdown returns");
    assert!(
        server.dir.files("tmp").is_empty(),
        "the cut-short message is dropped"
    );
    assert!(server.dir.files("new").is_empty());
}

#[test]
fn a_transaction_pipelined_in_one_write_gets_every_reply_in_order() {
    let server = Server::start("pipelined", |_| {});
    let mut client = Client::new(server.addr());
    // Lines of the message that read as commands must be stored, not run.
    let first = b"Subject: one\r\n\r\nRSET\r\nQUIT\r\nMAIL FROM:<evil@example.org>\r\n.hidden\r\n";
    let second = b"Subject: two\r\n\r\nDATA\r\n";
    let mut write = b"EHLO pipe.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n\
        RCPT TO:<c@example.org>\r\nDATA\r\n"
        .to_vec();
    write.extend_from_slice(&stuffed(first));
    write.extend_from_slice(b"MAIL FROM:<d@example.org>\r\nRCPT TO:<e@example.org>\r\nDATA\r\n");
    write.extend_from_slice(&stuffed(second));
    write.extend_from_slice(b"QUIT\r\n");
    client.send(&write);

    assert_eq!(client.reply(), "220 mx.test ESMTP reactor-pool\r\n");
    assert!(client
        .reply()
        .starts_with("250-mx.test greets pipe.test\r\n"));
    for expected in [OK_SENDER, OK_RCPT, OK_RCPT, GO_AHEAD] {
        assert_eq!(client.reply(), expected);
    }
    let one = client.queued();
    for expected in [OK_SENDER, OK_RCPT, GO_AHEAD] {
        assert_eq!(client.reply(), expected);
    }
    let two = client.queued();
    assert_eq!(client.reply(), "221 2.0.0 mx.test closing connection\r\n");
    client.expect_eof("after QUIT");
    let both = ["b@example.org", "c@example.org"];
    server
        .dir
        .message(&one)
        .check("a@example.org", &both, first);
    server
        .dir
        .message(&two)
        .check("d@example.org", &["e@example.org"], second);
}

#[test]
fn after_a_rejected_data_the_pipelined_message_is_read_as_commands() {
    let server = Server::start("rejected-data", |_| {});
    let mut client = server.client();
    client.command("EHLO pipe.test");
    client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:bad\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n");
    assert_eq!(client.reply(), OK_SENDER);
    assert_eq!(client.reply(), "501 5.5.4 Syntax: RCPT TO:<address>\r\n");
    assert_eq!(client.reply(), BAD_SEQUENCE, "DATA without a recipient");
    assert_eq!(
        client.reply(),
        "500 5.5.2 Command unrecognized\r\n",
        "hello"
    );
    assert_eq!(client.reply(), "500 5.5.2 Command unrecognized\r\n", ".");
    assert_eq!(client.reply(), "221 2.0.0 mx.test closing connection\r\n");
    client.expect_eof("after QUIT");
    assert!(server.dir.files("new").is_empty());
}

/// What the codec made of a byte stream: requests (consecutive chunks merged, as their
/// split depends on how the bytes arrived) and refusals.
#[derive(Debug, PartialEq)]
enum Seen {
    Request(Request),
    Refused(String),
}

/// Decodes `pieces` arriving one after another the way the framework does: each decode
/// gets every byte not yet consumed, and DATA is answered 354 before decoding goes on.
fn decode_pieces(pieces: &[&[u8]], max_size: usize) -> Vec<Seen> {
    let mut codec = SmtpCodec::new(HOST, max_size);
    let (mut input, mut seen) = (Vec::new(), Vec::new());
    for piece in pieces {
        input.extend_from_slice(piece);
        loop {
            // As the connection does: bytes the codec skips first, before and after a
            // decode that needs more.
            let skipped = codec.skip(&input);
            if skipped > 0 {
                input.drain(..skipped);
                continue;
            }
            let (next, used) = match codec.decode(&input) {
                Ok(Some((request, used))) => (Seen::Request(request), used),
                Err(DecodeError::Refused { consumed, reason }) => (Seen::Refused(reason), consumed),
                Ok(None) => {
                    let skipped = codec.skip(&input);
                    if skipped == 0 {
                        break;
                    }
                    input.drain(..skipped);
                    continue;
                }
                Err(e) => panic!("decode error {e}"),
            };
            assert!(used > 0 && used <= input.len());
            input.drain(..used);
            if let Seen::Request(Request::Chunk(bytes)) = &next {
                assert!(bytes.len() <= CHUNK);
            }
            if next == Seen::Request(Request::Data) {
                reactor_pool::Output::capture(|out| codec.encode(Reply::new(354, "go"), out));
            }
            match (seen.last_mut(), next) {
                (Some(Seen::Request(Request::Chunk(all))), Seen::Request(Request::Chunk(more))) => {
                    all.extend_from_slice(&more)
                }
                (_, next) => seen.push(next),
            }
        }
    }
    assert!(
        input.is_empty(),
        "left undecoded: {:?}",
        String::from_utf8_lossy(&input)
    );
    seen
}

const SESSION: &[u8] = b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n\
    ..\r\n.x\r\n...\r\n\r\n.\r\r\n.\n.\r\na\rb\nc\r\n..\r\n.\r\nNOPE\nQUIT\r\n";

fn expected_session(message: &[u8], oversized: bool) -> Vec<Seen> {
    let mut expected = vec![
        Seen::Request(Request::Hello {
            name: "a".into(),
            extended: true,
        }),
        Seen::Request(Request::Mail {
            from: "a@b".into(),
            size: None,
        }),
        Seen::Request(Request::Rcpt { to: "c@d".into() }),
        Seen::Request(Request::Data),
    ];
    if !message.is_empty() {
        expected.push(Seen::Request(Request::Chunk(message.to_vec())));
    }
    expected.extend([
        Seen::Request(Request::EndOfData { oversized }),
        Seen::Refused("500 5.5.2 Command unrecognized".into()),
        Seen::Request(Request::Quit),
    ]);
    expected
}

#[test]
fn the_codec_decodes_alike_however_the_input_is_split() {
    let message = b".\r\nx\r\n..\r\n\r\n\r\r\n\n.\r\na\rb\nc\r\n.\r\n";
    let expected = expected_session(message, false);
    assert_eq!(decode_pieces(&[SESSION], 1000), expected, "in one piece");
    let bytes: Vec<&[u8]> = SESSION.chunks(1).collect();
    assert_eq!(decode_pieces(&bytes, 1000), expected, "a byte at a time");
    for split in 1..SESSION.len() {
        let (a, b) = SESSION.split_at(split);
        assert_eq!(decode_pieces(&[a, b], 1000), expected, "split at {split}");
    }
    // With a limit one byte short, what went on before the limit was seen is a part of the
    // message; the rest is skipped and the end says oversized, however the input arrives.
    let max = message.len() - 1;
    for split in 1..SESSION.len() {
        let (a, b) = SESSION.split_at(split);
        let mut seen = decode_pieces(&[a, b], max);
        // What was kept before the limit (if anything) went on as a chunk, never more.
        if let Seen::Request(Request::Chunk(kept)) = &seen[4] {
            assert!(
                !kept.is_empty() && kept.len() <= max && message.starts_with(kept),
                "split at {split}: {kept:?}"
            );
            seen.remove(4);
        }
        assert_eq!(seen, expected_session(b"", true), "split at {split}");
    }
    assert_eq!(
        decode_pieces(&[SESSION], message.len()),
        expected,
        "exactly the limit"
    );
}

#[test]
fn the_codec_unstuffs_dots_across_its_chunk_boundary() {
    // A `\r\n..x` line start placed at every offset around CHUNK.
    for at in CHUNK - 4..CHUNK + 4 {
        let mut message = vec![b'a'; at];
        message.extend_from_slice(b"\r\n.x\r\n.\r\ntail\r\n");
        let mut session = b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
        session.extend_from_slice(&stuffed(&message));
        session.extend_from_slice(b"NOPE\nQUIT\r\n");
        let seen = decode_pieces(&[&session], 1 << 20);
        assert_eq!(seen, expected_session(&message, false), "at {at}");
    }
}
