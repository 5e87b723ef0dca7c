//! File regions (`Output::file`): a file is sent whole and intact (sendfile(2) over TCP and
//! Unix sockets, read through memory under TLS), between the replies before and after it;
//! a range of it; to a peer that reads slowly; a file that shrinks mid-way ends the
//! connection cleanly after the bytes sent (counted, `CloseReason::BodyFailed`); a peer
//! that vanishes mid-file is closed and the server serves on.

use crate::common;
use crate::line_or::{self, Frame, LineOrCodec};

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};
use reactor_pool::{
    Builder, CloseReason, Context, FileRegion, Handler, Output, Replies, ServerHandle,
};

use crate::common::{
    connect, connect_unix, connect_with_recv_buffer, expect_clean_eof, send, wait_for_stats,
    Pattern, TempDir, WAIT_DEADLINE,
};

/// A file region between `FILE {name} {len}\n` and `END {name}\n`.
struct FileReply {
    name: String,
    region: FileRegion,
}

impl Frame for FileReply {
    fn encode(self, output: &mut Output<'_>) {
        let FileReply { name, region } = self;
        let _ = writeln!(output, "FILE {name} {}", region.len());
        output.file(region);
        let _ = writeln!(output, "END {name}");
    }
}

type Reply = line_or::Reply<FileReply>;
/// Lines in; a line or `FILE {name} {len}\n`, the region's bytes, `END {name}\n` out.
type FileCodec = LineOrCodec<FileReply>;

/// `get NAME` answers with the whole file `NAME` of its directory, `get NAME OFFSET LEN`
/// with that range of it; any other line is echoed. Each close reason goes to `closes`.
struct FileServer {
    dir: PathBuf,
    closes: Sender<CloseReason>,
}

impl Handler for FileServer {
    type Request = Vec<u8>;
    type Response = Reply;
    type Session = ();

    fn open(&self, _: &Context, _: &mut Replies<Reply>) {}

    fn call(&self, _: &mut (), line: Vec<u8>, _: &Context, replies: &mut Replies<Reply>) {
        let text = String::from_utf8_lossy(&line).into_owned();
        let words: Vec<&str> = text.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["get", name, rest @ ..] => {
                let file = std::fs::File::open(self.dir.join(name)).expect("open the file");
                let region = match rest {
                    [] => FileRegion::whole(file).expect("file metadata"),
                    [offset, len] => FileRegion::new(
                        file,
                        offset.parse().expect("offset"),
                        len.parse().expect("len"),
                    ),
                    _ => panic!("bad request {text:?}"),
                };
                Reply::Framed(FileReply {
                    name: (*name).to_owned(),
                    region,
                })
            }
            _ => Reply::Line(line),
        };
        replies.send(reply);
    }

    fn close(&self, _: (), _: &Context, reason: CloseReason) {
        let _ = self.closes.send(reason);
    }
}

/// A directory with `big` (6 MiB and an odd tail) and `small` (1 MiB) of [`Pattern`] bytes
/// (`small` from offset 0 as well).
struct Files {
    dir: TempDir,
    pattern: Pattern,
}

const BIG: usize = 6 * 1024 * 1024 + 4321;
const SMALL: usize = 1024 * 1024;
/// Large enough that the kernel's buffers (at most 4 MiB of send buffer on Linux by
/// default) cannot hold it all while the peer reads slowly.
const HUGE: usize = 16 * 1024 * 1024;

impl Files {
    fn new(what: &str) -> Files {
        let dir = TempDir::new(what);
        let pattern = Pattern::new();
        for (name, len) in [("big", BIG), ("small", SMALL)] {
            std::fs::write(dir.join(name), pattern.bytes(0, len)).expect("write a test file");
        }
        Files { dir, pattern }
    }

    fn add(&self, name: &str, len: usize) -> PathBuf {
        let path = self.dir.join(name);
        let mut file = std::fs::File::create(&path).expect("create a test file");
        let mut at = 0;
        while at < len {
            let n = (len - at).min(1 << 20);
            file.write_all(&self.pattern.bytes(at as u64, n))
                .expect("write a test file");
            at += n;
        }
        path
    }
}

fn server(name: &str, builder: Builder, dir: &Path) -> (ServerHandle, Receiver<CloseReason>) {
    common::init_logging();
    let (closes, closed) = unbounded();
    let server = builder
        .workers(2)
        .thread_name(name)
        .start(
            FileCodec::default(),
            FileServer {
                dir: dir.to_owned(),
                closes,
            },
        )
        .expect("start");
    (server, closed)
}

fn tcp_server(name: &str, dir: &Path) -> (ServerHandle, Receiver<CloseReason>) {
    server(name, Builder::bind("127.0.0.1:0"), dir)
}

/// Reads exactly `n` bytes from `stream`, failing with context on an error or early EOF.
fn read_n(stream: &mut impl Read, n: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0; n];
    let mut got = 0;
    while got < n {
        match stream.read(&mut buf[got..]) {
            Ok(0) => panic!("{what}: EOF after {got} of {n} bytes"),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("{what}: {e} after {got} of {n} bytes"),
        }
    }
    buf
}

/// Reads one line (through its `\n`), a byte at a time so nothing after it is consumed.
fn read_line(stream: &mut impl Read, what: &str) -> String {
    let mut line = Vec::new();
    while line.last() != Some(&b'\n') {
        line.extend(read_n(stream, 1, what));
        assert!(line.len() < 200, "{what}: no line ending in {line:?}");
    }
    String::from_utf8(line).expect("a UTF-8 line")
}

/// Sends `a`, `get big` and `b` in one write, and expects `a`, the whole of `big` between
/// its header and trailer, and `b`, in that order.
fn download_between_replies<S: Read + Write>(stream: &mut S, files: &Files) {
    stream
        .write_all(b"echo a\nget big\necho b\n")
        .expect("send the requests");
    assert_eq!(read_line(stream, "the reply before"), "echo a\n");
    assert_eq!(read_line(stream, "the header"), format!("FILE big {BIG}\n"));
    let body = read_n(stream, BIG, "the file");
    common::assert_same_bytes(&body, &files.pattern.bytes(0, BIG), "the file");
    assert_eq!(read_line(stream, "the trailer"), "END big\n");
    assert_eq!(read_line(stream, "the reply after"), "echo b\n");
}

#[test]
fn a_file_of_megabytes_comes_intact_between_the_replies_around_it_over_tcp() {
    let files = Files::new("fr-tcp");
    let (server, _closed) = tcp_server("fr-tcp", &files.dir.0);
    let mut client = connect(server.local_addr().tcp().unwrap());
    download_between_replies(&mut client, &files);
    // And again on the same connection: the region is gone, the connection is as before.
    download_between_replies(&mut client, &files);
    let stats = server.stats();
    assert_eq!((stats.body_errors, stats.resets), (0, 0), "{stats:#?}");
    drop(client);
    server.shutdown();
}

#[test]
fn a_file_of_megabytes_comes_intact_between_the_replies_around_it_over_a_unix_socket() {
    let files = Files::new("fr-unix");
    let path = files.dir.join("sock");
    let (server, _closed) = server("fr-unix", Builder::bind_unix(&path), &files.dir.0);
    let mut client = connect_unix(&path);
    download_between_replies(&mut client, &files);
    assert_eq!(server.stats().body_errors, 0);
    drop(client);
    server.shutdown();
}

#[test]
fn a_range_of_a_file_comes_as_asked() {
    let files = Files::new("fr-range");
    let (server, _closed) = tcp_server("fr-range", &files.dir.0);
    let mut client = connect(server.local_addr().tcp().unwrap());
    // One in the middle, at an odd offset; the file's last bytes; an empty range.
    for (offset, len) in [(1_000_003, 300_007), (BIG - 10, 10), (5, 0)] {
        send(&mut client, format!("get big {offset} {len}\n").as_bytes());
        assert_eq!(
            read_line(&mut client, "the header"),
            format!("FILE big {len}\n")
        );
        let body = read_n(&mut client, len, "the range");
        common::assert_same_bytes(
            &body,
            &files.pattern.bytes(offset as u64, len),
            &format!("{len} bytes from {offset}"),
        );
        assert_eq!(read_line(&mut client, "the trailer"), "END big\n");
    }
    send(&mut client, b"echo done\n");
    assert_eq!(read_line(&mut client, "the last reply"), "echo done\n");
    drop(client);
    server.shutdown();
}

#[test]
fn a_peer_that_reads_slowly_gets_the_file_intact() {
    let files = Files::new("fr-slow");
    files.add("huge", HUGE);
    // An idle timeout shorter than the client's pauses: a connection writing a body waits on
    // its peer's window (the write-stall timeout's business), it is not idle.
    let builder = Builder::bind("127.0.0.1:0").idle_timeout(Some(Duration::from_millis(200)));
    let (server, _closed) = server("fr-slow", builder, &files.dir.0);
    let mut client = connect_with_recv_buffer(server.local_addr().tcp().unwrap(), 8 * 1024);
    send(&mut client, b"get huge\necho after\n");
    assert_eq!(
        read_line(&mut client, "the header"),
        format!("FILE huge {HUGE}\n")
    );
    // The client paces itself: 32 KiB, then a pause, over and over, and a long pause every
    // 4 MiB (the file is larger than the kernel's buffers can hold: the server is still
    // sending it).
    let mut body = Vec::with_capacity(HUGE);
    while body.len() < HUGE {
        let n = (HUGE - body.len()).min(32 * 1024);
        body.extend(read_n(&mut client, n, "the file, slowly"));
        let pause = match body.len() {
            HUGE => 0,
            n if n % (4 << 20) == 0 => 300,
            _ => 1,
        };
        std::thread::sleep(Duration::from_millis(pause));
    }
    common::assert_same_bytes(&body, &files.pattern.bytes(0, HUGE), "the file");
    assert_eq!(read_line(&mut client, "the trailer"), "END huge\n");
    assert_eq!(read_line(&mut client, "the reply after"), "echo after\n");
    assert_eq!(server.stats().body_errors, 0);
    drop(client);
    server.shutdown();
}

/// Starts downloading `huge` on a connection with a small receive buffer, reads the header
/// and the first 64 KiB, shrinks the file to `new_len` bytes, then reads to the end: the
/// bytes the server sent (a prefix of the file, fewer than its old length) and a clean EOF
/// (read returns 0, not a reset), no trailer. The server counts a body error, the close
/// hook is told `BodyFailed`, and another connection is served. Returns the bytes received.
fn shrink_mid_download(name: &str, new_len: u64) -> usize {
    let files = Files::new(name);
    let path = files.add("huge", HUGE);
    let (server, closed) = tcp_server(name, &files.dir.0);
    let addr = server.local_addr().tcp().unwrap();
    let mut client = connect_with_recv_buffer(addr, 16 * 1024);
    send(&mut client, b"get huge\n");
    assert_eq!(
        read_line(&mut client, "the header"),
        format!("FILE huge {HUGE}\n")
    );
    let mut body = read_n(&mut client, 64 * 1024, "the start of the file");
    OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open the file to shrink it")
        .set_len(new_len)
        .expect("shrink the file");
    body.extend(expect_clean_eof(&mut client, "after the file shrank"));
    assert!(
        body.len() < HUGE,
        "the whole file arrived ({} bytes): the shrinking came too late to test anything",
        body.len()
    );
    common::assert_same_bytes(
        &body,
        &files.pattern.bytes(0, body.len()),
        "the bytes sent before the file shrank",
    );
    let stats = wait_for_stats(&server, "the connection closed", |s| {
        s.connections_closed == 1
    });
    assert_eq!(
        (stats.body_errors, stats.timeouts, stats.resets),
        (1, 0, 0),
        "a body error, not a write-stall timeout: {stats:#?}"
    );
    assert_eq!(
        closed.recv_timeout(WAIT_DEADLINE).expect("the close hook"),
        CloseReason::BodyFailed
    );
    // The server serves on.
    let mut other = connect(addr);
    send(&mut other, b"echo still here\n");
    assert_eq!(
        read_line(&mut other, "another connection"),
        "echo still here\n"
    );
    drop((client, other));
    server.shutdown();
    body.len()
}

#[test]
fn a_file_that_shrinks_behind_the_server_ends_the_connection_cleanly_after_the_bytes_sent() {
    // Emptied: the server has sent at least what the client read, so its next sendfile
    // finds the file already ended.
    shrink_mid_download("fr-behind", 0);
}

#[test]
fn a_file_that_shrinks_ahead_of_the_server_ends_the_connection_cleanly_at_its_new_end() {
    // 8 MiB: beyond what the server can have sent (the client read 64 KiB; its receive
    // buffer is small and the server's send buffer at most 4 MiB by default), so the server
    // sends up to the new end, and the sendfile that reaches it comes back short.
    const NEW_LEN: usize = 8 * 1024 * 1024;
    let got = shrink_mid_download("fr-ahead", NEW_LEN as u64);
    assert_eq!(got, NEW_LEN, "every byte up to the file's new end");
}

#[test]
fn a_peer_that_vanishes_mid_file_is_closed_and_the_next_one_is_served_intact() {
    vanish_mid_file("fr-vanish", false);
}

#[test]
fn a_peer_that_half_closes_then_vanishes_mid_file_is_closed_and_the_next_one_is_served_intact() {
    // Its FIN first (the server's socket is then in CLOSE_WAIT), then its reset: the
    // server's next sendfile fails with EPIPE rather than ECONNRESET.
    vanish_mid_file("fr-vanish-fin", true);
}

/// A client reads the start of a file and vanishes (after shutting its write side when
/// `half_close`) with unread bytes, so the kernel resets the connection: counted as a
/// reset, not a body error; the close hook is told `Reset`; the next client gets a file
/// intact.
fn vanish_mid_file(name: &str, half_close: bool) {
    let files = Files::new(name);
    files.add("huge", HUGE);
    let (server, closed) = tcp_server(name, &files.dir.0);
    let addr = server.local_addr().tcp().unwrap();
    let mut client = connect_with_recv_buffer(addr, 16 * 1024);
    send(&mut client, b"get huge\n");
    assert_eq!(
        read_line(&mut client, "the header"),
        format!("FILE huge {HUGE}\n")
    );
    read_n(&mut client, 64 * 1024, "the start of the file");
    if half_close {
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("shut down the write side");
    }
    // Gone, with unread bytes in its buffer: the kernel resets the connection.
    drop(client);
    let stats = wait_for_stats(&server, "the connection closed", |s| {
        s.connections_closed == 1
    });
    assert_eq!(
        (stats.resets, stats.body_errors),
        (1, 0),
        "a peer that left is a reset, not a body error: {stats:#?}"
    );
    assert_eq!(
        closed.recv_timeout(WAIT_DEADLINE).expect("the close hook"),
        CloseReason::Reset
    );
    let mut next = connect(addr);
    send(&mut next, b"get small\n");
    assert_eq!(
        read_line(&mut next, "the header"),
        format!("FILE small {SMALL}\n")
    );
    let body = read_n(&mut next, SMALL, "the file");
    common::assert_same_bytes(&body, &files.pattern.bytes(0, SMALL), "the file");
    assert_eq!(read_line(&mut next, "the trailer"), "END small\n");
    drop(next);
    server.shutdown();
}

#[cfg(feature = "tls")]
#[test]
fn a_file_comes_intact_over_tls() {
    use crate::tls::{certs, Client};
    use std::sync::Arc;

    let files = Files::new("fr-tls");
    let certs = certs();
    let builder = Builder::bind("127.0.0.1:0").tls(Arc::clone(&certs.server));
    let (server, _closed) = server("fr-tls", builder, &files.dir.0);
    let mut client = Client::connect(&server, &certs);
    client.send(b"echo a\nget big\necho b\n");
    let want_head = format!("echo a\nFILE big {BIG}\n");
    assert_eq!(
        String::from_utf8_lossy(&client.read_exactly(want_head.len())),
        want_head
    );
    let body = client.read_exactly(BIG);
    common::assert_same_bytes(&body, &files.pattern.bytes(0, BIG), "the file over TLS");
    let want_tail = "END big\necho b\n";
    assert_eq!(
        String::from_utf8_lossy(&client.read_exactly(want_tail.len())),
        want_tail
    );
    assert_eq!(server.stats().body_errors, 0);
    drop(client);
    server.shutdown();
}
