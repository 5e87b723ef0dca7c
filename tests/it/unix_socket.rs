//! Unix domain sockets (`Builder::bind_unix`, `Builder::from_unix_listener`): the peer's
//! credentials reach the handler, a stale socket file is replaced, a live one or a file that
//! is not a socket is refused, and the file goes away on shutdown unless it is no longer ours.
//! Servers starting and stopping on one path take turns under its `.lock` file.

use crate::common;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};

use reactor_pool::{handler_fn, Builder, Context, LineCodec, Peer, ServerHandle};

/// Answers each line with what the handler knows of its peer.
fn start(builder: Builder) -> std::io::Result<ServerHandle> {
    common::init_logging();
    builder.workers(2).start(
        LineCodec::new(),
        handler_fn(|line: Vec<u8>, ctx: &Context| {
            let who = match ctx.peer() {
                Peer::Unix(Some(c)) => format!("uid={} gid={} pid={:?}", c.uid, c.gid, c.pid),
                other => format!("{other:?}"),
            };
            let mut reply = line;
            reply.extend_from_slice(format!(" {who} addr={:?}", ctx.peer_addr()).as_bytes());
            reply
        }),
    )
}

fn request(stream: &mut UnixStream, line: &str) -> String {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .expect("write");
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while reply.last() != Some(&b'\n') {
        assert_eq!(stream.read(&mut byte).expect("read"), 1, "EOF");
        reply.push(byte[0]);
    }
    String::from_utf8(reply).expect("utf-8")
}

/// Our own uid and gid, as the file system records them for a file we create.
fn our_ids(dir: &common::TempDir) -> (u32, u32) {
    let probe = dir.join("probe");
    std::fs::write(&probe, b"").expect("write probe");
    let meta = std::fs::metadata(&probe).expect("metadata");
    (meta.uid(), meta.gid())
}

/// Leaves a stale socket file at `path`, as a crashed server does: bound, then closed
/// without removing the file.
fn leave_stale_socket_file(path: &std::path::Path) {
    drop(UnixListener::bind(path).expect("bind"));
    // A child another test forks at this moment holds a copy of the listener until it
    // execs: wait for that copy to close, or the file is rightly taken as live.
    common::wait_until("the dropped listener to be gone", || {
        UnixStream::connect(path).is_err().then_some(())
    });
}

#[test]
fn the_handler_sees_the_peers_credentials_and_no_address() {
    let dir = common::TempDir::new("creds");
    let path = dir.join("server.sock");
    let server = start(Builder::bind_unix(&path)).expect("start");
    assert_eq!(server.local_addr().unix_path(), Some(path.as_path()));
    // A Unix server says so: no made-up TCP address (it used to report 0.0.0.0:0).
    assert_eq!(server.local_addr().tcp(), None);
    assert_eq!(
        server.local_addr().to_string(),
        format!("unix:{}", path.display())
    );
    let (uid, gid) = our_ids(&dir);
    let mut client = common::connect_unix(&path);
    assert_eq!(
        request(&mut client, "who"),
        format!(
            "who uid={uid} gid={gid} pid=Some({}) addr=None\n",
            std::process::id()
        )
    );
}

#[test]
fn a_half_closed_unix_peer_gets_every_reply_then_eof() {
    let dir = common::TempDir::new("half");
    let path = dir.join("server.sock");
    let server = start(Builder::bind_unix(&path)).expect("start");
    let mut client = common::connect_unix(&path);
    client.write_all(b"a\nb\nc\n").expect("write");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut all = String::new();
    client.read_to_string(&mut all).expect("clean EOF");
    assert_eq!(all.lines().count(), 3, "{all}");
    assert!(all.starts_with("a uid="), "{all}");
    common::wait_for_stats(&server, "the close", |s| s.connections_open == 0);
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = common::TempDir::new("stale");
    let path = dir.join("server.sock");
    leave_stale_socket_file(&path);
    assert!(path.exists());
    let server = start(Builder::bind_unix(&path)).expect("start over a stale file");
    let mut client = common::connect_unix(&path);
    assert!(request(&mut client, "hi").starts_with("hi uid="));
    drop(server);
}

#[test]
fn a_live_socket_or_a_file_that_is_not_a_socket_is_refused() {
    let dir = common::TempDir::new("live");
    let path = dir.join("server.sock");
    let live = UnixListener::bind(&path).expect("bind");
    let error = start(Builder::bind_unix(&path)).expect_err("a server listens there");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
    // The live server's socket is untouched: it still accepts.
    let _client = UnixStream::connect(&path).expect("the live socket still works");
    live.accept().expect("accept");

    let file = dir.join("notes.txt");
    std::fs::write(&file, b"keep me").expect("write");
    let error = start(Builder::bind_unix(&file)).expect_err("not a socket");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
}

#[test]
fn the_socket_file_is_removed_on_shutdown() {
    let dir = common::TempDir::new("remove");
    let path = dir.join("server.sock");
    let server = start(Builder::bind_unix(&path)).expect("start");
    assert!(path.exists());
    server.shutdown();
    assert!(!path.exists(), "the socket file outlived the server");
}

#[test]
fn a_socket_file_replaced_by_a_successor_is_left_alone() {
    let dir = common::TempDir::new("successor");
    let path = dir.join("server.sock");
    let old = start(Builder::bind_unix(&path)).expect("start");
    // A new server (a restart) binds its socket elsewhere and moves it into place.
    let staging = dir.join("next.sock");
    let successor = UnixListener::bind(&staging).expect("bind successor");
    std::fs::rename(&staging, &path).expect("rename");
    old.shutdown();
    assert!(path.exists(), "the successor's socket file was removed");
    let _client = UnixStream::connect(&path).expect("the successor accepts");
    successor.accept().expect("accept");
}

#[test]
fn a_listener_bound_elsewhere_is_served_and_its_file_left_alone() {
    let dir = common::TempDir::new("given");
    let path = dir.join("server.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let server = start(Builder::from_unix_listener(listener)).expect("start");
    let mut client = common::connect_unix(&path);
    assert!(request(&mut client, "x").starts_with("x uid="));
    drop(client);
    server.shutdown();
    assert!(path.exists(), "the caller's file is the caller's to remove");
}

/// Regression (review): the stale-file probe was a blocking connect, which waits forever on
/// a live server whose backlog is full.
#[test]
fn a_live_server_with_a_full_backlog_is_refused_not_waited_on() {
    let dir = common::TempDir::new("full");
    let path = dir.join("server.sock");
    let socket =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&socket2::SockAddr::unix(&path).expect("addr"))
        .expect("bind");
    socket.listen(1).expect("listen");
    // Fill its backlog: non-blocking connects until the kernel says it is full.
    let mut waiting = Vec::new();
    loop {
        let client = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
            .expect("socket");
        client.set_nonblocking(true).expect("nonblocking");
        match client.connect(&socket2::SockAddr::unix(&path).expect("addr")) {
            Ok(()) => waiting.push(client),
            Err(_) => break,
        }
        assert!(waiting.len() < 10_000, "the backlog never filled");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let probe_path = path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(start(Builder::bind_unix(&probe_path)).map(drop));
    });
    let result = rx
        .recv_timeout(common::WAIT_DEADLINE)
        .expect("bind_unix hung on a live server with a full backlog");
    let error = result.expect_err("a server is listening there");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
}

/// Regression: probing, removing a stale file, binding and listening ran unlocked, so
/// servers starting together on one stale file could both start: the second removed the
/// first's file (or found it bound but not yet listening, which a probe takes for stale),
/// leaving the first unreachable. The bug report saw two `Ok`s in 66 rounds of 2,000.
#[test]
fn concurrent_starts_on_a_stale_socket_file_give_one_server() {
    const RACERS: usize = 4;
    // Unlocked, 65 to 99 rounds of 2,000 gave more than one `Ok` on the 2-core test
    // machine (the first by round 44 in ten runs): 500 rounds miss it with odds near 1e-9
    // and take about 3 s when all pass.
    const ROUNDS: usize = 500;
    let dir = common::TempDir::new("race");
    let path = dir.join("server.sock");
    for round in 0..ROUNDS {
        leave_stale_socket_file(&path);
        let barrier = std::sync::Barrier::new(RACERS);
        let results: Vec<_> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..RACERS)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        start(Builder::bind_unix(&path).reactors(1).workers(1))
                    })
                })
                .collect();
            racers
                .into_iter()
                .map(|racer| racer.join().expect("racer"))
                .collect()
        });
        let mut servers = Vec::new();
        for result in results {
            match result {
                Ok(server) => servers.push(server),
                Err(e) => assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::AddrInUse,
                    "round {round}: a loser failed with {e}"
                ),
            }
        }
        assert_eq!(
            servers.len(),
            1,
            "round {round}: {} of {RACERS} concurrent starts succeeded",
            servers.len()
        );
        let mut client = common::connect_unix(&path);
        assert!(
            request(&mut client, "hi").starts_with("hi uid="),
            "round {round}: the winner does not answer"
        );
        drop(client);
        // Shut down: its file goes, and the next round leaves a stale one in its place.
        drop(servers);
        assert!(
            !path.exists(),
            "round {round}: the winner's file outlived it"
        );
    }
}

/// `flock(1)` holding the exclusive lock on `file` until dropped, as a deploy script (or a
/// server in the middle of starting) would.
struct LockHolder(std::process::Child);

impl LockHolder {
    fn take(file: &std::path::Path) -> Self {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new("flock")
            .arg(file)
            .args(["sh", "-c", "echo locked; exec cat >/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run flock ({e}); scripts/test.sh installs it with apt-get")
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let holder = LockHolder(child);
        let line = rx
            .recv_timeout(common::WAIT_DEADLINE)
            .expect("flock never took the lock");
        assert_eq!(line, "locked\n", "flock failed");
        holder
    }
}

impl Drop for LockHolder {
    /// Releases the lock: `cat` ends at its input's EOF, and with it the lock's holder.
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Regression: a stopping server checked that its socket file was still its own, then
/// removed it, without the lock a starting server holds from its probe to its `listen`; a
/// successor that replaced the file between the check and the removal lost it, and could
/// never be reached. Here the successor is a script that follows the documented protocol:
/// it holds `<path>.lock` while it replaces the file. Its new file, made just after the old
/// one is removed, gets the old one's inode number on ext4 unless the stopping server still
/// holds that inode: the device-and-inode check must not take it for the old file.
#[test]
fn a_stopping_server_leaves_a_socket_file_replaced_under_the_lock() {
    let dir = common::TempDir::new("handover");
    let path = dir.join("server.sock");
    let old = start(Builder::bind_unix(&path)).expect("start");
    let holder = LockHolder::take(&dir.join("server.sock.lock"));
    let (stopped, stopping) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        old.shutdown();
        let _ = stopped.send(());
    });
    // The old listener is closed: its file is stale, and ours to replace under the lock.
    common::wait_until("the old listener to close", || {
        UnixStream::connect(&path).is_err().then_some(())
    });
    std::fs::remove_file(&path).expect("the stopping server removed its file under our lock");
    let successor = UnixListener::bind(&path).expect("bind the successor");
    drop(holder);
    stopping
        .recv_timeout(common::WAIT_DEADLINE)
        .expect("the old server's shutdown hung");
    assert!(
        path.exists(),
        "the stopping server removed its successor's socket file"
    );
    let _client = UnixStream::connect(&path).expect("the successor accepts");
    successor.accept().expect("accept");
}
