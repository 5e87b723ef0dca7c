//! Regression tests for bugs fixed in examples/kv_server.rs, over real sockets on 127.0.0.1.
//!
//! The example's source is included, so its server runs in this process and is always
//! built from the current source (`cargo test --test NAME` does not rebuild example
//! binaries). Two tests measure the process (its CPU time, its heap): every test here holds
//! [`serial`] so no other test's server or client is counted with theirs.

#[path = "it/common.rs"]
mod common;

// main() and its signal handling are the example's own: unused here.
#[allow(dead_code)]
#[path = "../examples/kv_server.rs"]
mod kv_server;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use common::{connect, round_trip, send, wait_for_stats};
use reactor_pool::ServerHandle;

/// The system allocator, counting the heap bytes in use and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every call is passed to `System` unchanged; only the counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            grew(new_size);
        }
        new
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Held by every test here, so the process-wide measurements see one test's work only.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The example's server, shut down when dropped (also when a test fails), so it stops
/// working before the next test measures.
struct Server(Option<ServerHandle>);

impl Server {
    fn start() -> Self {
        let addr: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
        Server(Some(
            kv_server::start(addr, None, None).expect("start kv_server"),
        ))
    }

    fn handle(&self) -> &ServerHandle {
        self.0.as_ref().expect("running")
    }

    fn addr(&self) -> SocketAddr {
        self.handle().local_addr().tcp().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.shutdown();
        }
    }
}

/// CPU time (user + system) of this whole process so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Sends `request` and reads until the reply is `expected`, failing as soon as what arrived
/// stops being a prefix of it (a wrong reply need not wait out the read timeout).
fn expect_reply(client: &mut TcpStream, request: &[u8], expected: &[u8]) {
    send(client, request);
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < expected.len() && expected.starts_with(&got) {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "reading the reply to {:?}: {e}",
                String::from_utf8_lossy(request)
            ),
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected),
        "reply to {:?}",
        String::from_utf8_lossy(request)
    );
}

/// CPU the whole process (server and client) may use for the million-key request. The
/// linear codec needs about 0.4 s unoptimized; the rescanning one needed several seconds.
const CPU_BUDGET: Duration = Duration::from_secs(2);

#[test]
fn kv_unterminated_multibulk_is_not_rescanned_on_every_read() {
    let _serial = serial();
    let server = Server::start();
    let mut client = connect(server.addr());
    round_trip(&mut client, b"SET k 1\r\n", b"+OK\r\n");

    // EXISTS with 1,000,000 one-byte keys (about 7 MB): every tenth one exists.
    let keys = 1_000_000;
    let mut request = format!("*{}\r\n$6\r\nEXISTS\r\n", keys + 1).into_bytes();
    for i in 0..keys {
        request.extend_from_slice(if i % 10 == 0 {
            b"$1\r\nk\r\n"
        } else {
            b"$1\r\nz\r\n"
        });
    }
    let expected = format!(":{}\r\n", keys / 10);

    let before = process_cpu();
    // Written 1 to 4 KiB at a time from another thread, so this one can watch the CPU
    // while it waits for the reply.
    let mut writer = client.try_clone().expect("clone the client socket");
    let sending = thread::spawn(move || -> io::Result<()> {
        let mut at = 0;
        let mut size = 1024;
        while at < request.len() {
            let end = request.len().min(at + size);
            writer.write_all(&request[at..end])?;
            at = end;
            size = 1024 + (size * 7 + 509) % 3072;
        }
        Ok(())
    });

    // Wait for the reply; a short read timeout lets the loop give up as soon as the budget
    // is spent instead of waiting out a quadratic parse.
    client
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("set_read_timeout");
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while reply.len() < expected.len() {
        let used = process_cpu() - before;
        if used > CPU_BUDGET {
            // Ends the connection, so the writer and the server stop too.
            let _ = client.shutdown(std::net::Shutdown::Both);
            panic!("{used:?} of CPU spent on a 7 MB request, and no reply yet");
        }
        match client.read(&mut buf) {
            Ok(0) => panic!("EOF after {:?}", String::from_utf8_lossy(&reply)),
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the reply: {e}"),
        }
    }
    let used = process_cpu() - before;
    sending
        .join()
        .expect("the writer thread")
        .expect("sending the request");
    assert_eq!(String::from_utf8_lossy(&reply), expected);
    assert!(used < CPU_BUDGET, "{used:?} of CPU spent on a 7 MB request");
}

#[test]
fn kv_multibulk_split_at_every_byte_decodes_the_same() {
    let _serial = serial();
    let server = Server::start();
    let mut client = connect(server.addr());
    // Two pipelined commands after an empty line and an empty multibulk, sent a byte at a
    // time: the kept progress must survive skipped bytes and start over after a request.
    let requests: &[u8] =
        b"\r\n*0\r\n*3\r\n$3\r\nSET\r\n$2\r\nab\r\n$10\r\n0123\r\n5678\r\n*2\r\n$3\r\nGET\r\n$2\r\nab\r\n";
    for byte in requests {
        send(&mut client, std::slice::from_ref(byte));
    }
    expect_reply(&mut client, b"", b"+OK\r\n$10\r\n0123\r\n5678\r\n");
}

#[test]
fn kv_huge_multibulk_count_does_not_reserve_memory_for_it() {
    let _serial = serial();
    let server = Server::start();
    // The server's threads allocate what they always do before the measurement starts.
    let mut warm = connect(server.addr());
    round_trip(&mut warm, b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n");
    wait_for_stats(server.handle(), "the PONG written out", |s| {
        s.bytes_buffered == 0
    });

    let connections = 32;
    // 1,048,576 arguments announced in 10 bytes, and only one of them sent.
    let partial = b"*1048576\r\n$1\r\na\r\n";
    let mut clients: Vec<TcpStream> = (0..connections).map(|_| connect(server.addr())).collect();
    let live_before = LIVE.load(Relaxed);
    PEAK.store(live_before, Relaxed);
    for client in &mut clients {
        send(client, partial);
    }
    // Input is buffered after the codec has looked at it and asked for more.
    wait_for_stats(server.handle(), "every partial request buffered", |s| {
        s.bytes_buffered == (connections * partial.len()) as u64
    });
    let grown = PEAK.load(Relaxed).saturating_sub(live_before);
    // The codec reserved 24 MiB (1 Mi argument slots of 24 bytes) on each attempt.
    assert!(
        grown < 1024 * 1024,
        "the heap grew by up to {grown} bytes for {} bytes received",
        connections * partial.len()
    );
}

#[test]
fn kv_expiry_over_32_bits_is_kept() {
    let _serial = serial();
    let server = Server::start();
    let mut client = connect(server.addr());
    // 2^32 seconds (and milliseconds) truncated to u32 were 0: an immediate expiry.
    expect_reply(&mut client, b"SET s v EX 4294967296\r\n", b"+OK\r\n");
    expect_reply(&mut client, b"SET m w PX 4294967296\r\n", b"+OK\r\n");
    expect_reply(&mut client, b"GET s\r\n", b"$1\r\nv\r\n");
    expect_reply(&mut client, b"GET m\r\n", b"$1\r\nw\r\n");
}

#[test]
fn kv_expiry_overflowing_i64_milliseconds_is_an_error_like_redis() {
    let _serial = serial();
    let server = Server::start();
    let mut client = connect(server.addr());
    let error = b"-ERR invalid expire time in 'set' command\r\n";
    // Seconds that overflow as milliseconds, and milliseconds that overflow once added to
    // the current unix time: redis-server refuses both and leaves the key as it was.
    expect_reply(&mut client, b"SET k old\r\n", b"+OK\r\n");
    expect_reply(&mut client, b"SET k v EX 9223372036854776\r\n", error);
    expect_reply(&mut client, b"SET k v PX 9223372036854775807\r\n", error);
    expect_reply(&mut client, b"GET k\r\n", b"$3\r\nold\r\n");
}

#[test]
fn kv_set_options_it_does_not_implement_are_a_syntax_error_once_redis_would_act() {
    let _serial = serial();
    let server = Server::start();
    let mut client = connect(server.addr());
    let error = b"-ERR syntax error\r\n";
    expect_reply(&mut client, b"SET k old\r\n", b"+OK\r\n");
    // redis-server would set the key (or not) by these; kv_server cannot honour them, so it
    // refuses and leaves the key, as it always has. The last two have an expiry that
    // redis-server discards unread (a later EX replaces it): read one by one, it was
    // refused as not an integer and as an invalid expire time.
    for options in [
        "NX",
        "xx",
        "GET",
        "KEEPTTL",
        "EXAT 4102444800",
        "PXAT 4102444800000",
        "EX 100 NX",
        "NX NX",
        "EX abc EX 100 NX",
        "EX 0 EX 100 GET",
    ] {
        expect_reply(
            &mut client,
            format!("SET k new {options}\r\n").as_bytes(),
            error,
        );
    }
    expect_reply(&mut client, b"GET k\r\n", b"$3\r\nold\r\n");
}
