//! The example servers on a Unix domain socket (`--unix PATH`) against the clients users
//! already have (socat, OpenBSD netcat, curl, redis-cli), and the socket file's life:
//! a stale file is replaced, a live server's is left alone, and the file goes at shutdown.

use crate::common;

use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{
    example_path, run_client_with_input, start_example_unix, wait_until, TempDir, UnixExample,
};

/// `name` listening on `NAME.sock` in a fresh temp dir; returns both (the dir outlives it).
fn start_unix(name: &str, extra: &[&str]) -> (TempDir, UnixExample) {
    let dir = TempDir::new("unix");
    let path = dir.arg(&format!("{name}.sock"));
    let mut args = vec!["--unix", &path];
    args.extend_from_slice(extra);
    let server = start_example_unix(name, &args);
    assert_eq!(server.path, Path::new(&path), "the path it logs");
    (dir, server)
}

fn path_arg(server: &UnixExample) -> &str {
    server.path.to_str().expect("a UTF-8 path")
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket())
}

/// Sends `Hello,server!` on a raw connection and expects it back.
fn echo_round_trip(path: &Path) -> UnixStream {
    let mut client = common::connect_unix(path);
    client.write_all(b"Hello,server!").expect("send");
    let mut reply = [0u8; 13];
    client.read_exact(&mut reply).expect("the echo");
    assert_eq!(&reply, b"Hello,server!");
    client
}

#[test]
fn socat_and_netcat_get_their_bytes_echoed() {
    let (_dir, server) = start_unix("echo_server", &[]);
    let socket = format!("UNIX-CONNECT:{}", path_arg(&server));
    // socat half-closes at the end of its stdin and waits (-t) for the server's EOF.
    let (status, out, err) =
        run_client_with_input("socat", &["-t", "30", "-", &socket], b"Hello,server!");
    assert!(status.success(), "socat failed: {out}\n{err}");
    assert_eq!(out, "Hello,server!", "socat: {err}");

    // OpenBSD netcat: -N shuts the socket's write side at the end of stdin, then it reads
    // until the server closes.
    let (status, out, err) = run_client_with_input(
        "nc.openbsd",
        &["-N", "-U", path_arg(&server)],
        b"Hello,server!",
    );
    assert!(status.success(), "nc failed: {out}\n{err}");
    assert_eq!(out, "Hello,server!", "nc: {err}");
}

#[test]
fn curl_over_the_unix_socket_gets_hello_world_and_an_echo() {
    let (_dir, server) = start_unix("http_hello", &[]);
    let curl = |extra: &[&str], url: &str| {
        let mut args = vec![
            "-sS",
            "--max-time",
            "30",
            "--unix-socket",
            path_arg(&server),
        ];
        args.extend_from_slice(extra);
        args.push(url);
        let (status, out, err) = run_client_with_input("curl", &args, b"");
        assert!(status.success(), "curl {args:?} failed: {out}\n{err}");
        out
    };
    let reply = curl(&["-i"], "http://localhost/");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nHello, world!"), "{reply}");
    let echoed = curl(
        &["--data-binary", "over a unix socket"],
        "http://localhost/echo",
    );
    assert_eq!(echoed, "over a unix socket");
}

#[test]
fn redis_cli_over_the_unix_socket() {
    let (_dir, server) = start_unix("kv_server", &[]);
    let cli = |args: &[&str], input: &[u8]| {
        let mut all = vec!["-s", path_arg(&server)];
        all.extend_from_slice(args);
        let (status, out, err) = run_client_with_input("redis-cli", &all, input);
        assert!(status.success(), "redis-cli {args:?} failed: {out}\n{err}");
        assert!(err.is_empty(), "redis-cli {args:?}: {err}");
        out
    };
    assert_eq!(cli(&["PING"], b""), "PONG\n");
    assert_eq!(
        cli(&[], b"SET k unix\nGET k\nINCR n\nINCR n\n"),
        "OK\nunix\n1\n2\n"
    );
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = TempDir::new("stale");
    let path = dir.join("echo.sock");
    // A server that is gone: std's listener leaves its file behind when dropped.
    drop(UnixListener::bind(&path).expect("bind a listener"));
    assert!(is_socket(&path), "the stale socket file is there");
    // Nobody listens on it. (A child another test forks at this moment holds a copy of the
    // listener until it execs: wait for that copy to close.)
    wait_until("the dropped listener to be gone", || {
        UnixStream::connect(&path).is_err().then_some(())
    });

    let server = start_example_unix("echo_server", &["--unix", &dir.arg("echo.sock")]);
    assert_eq!(server.path, path);
    echo_round_trip(&path);
}

/// Runs echo_server on `path`, expecting it to refuse to start; returns its log.
fn refused_to_start(path: &Path) -> String {
    let child = Command::new(example_path("echo_server"))
        .arg("--unix")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start echo_server");
    // Killed on drop, should it serve after all.
    let mut server = UnixExample {
        child,
        path: path.to_path_buf(),
    };
    let status = wait_until("echo_server to exit", || {
        server.child.try_wait().expect("try_wait")
    });
    let mut log = String::new();
    let mut stderr = server.child.stderr.take().expect("piped stderr");
    stderr.read_to_string(&mut log).expect("read its log");
    assert!(!status.success(), "it started: {log}");
    log
}

#[test]
fn a_live_socket_or_another_file_is_left_alone_and_the_example_exits_with_an_error() {
    let dir = TempDir::new("live");
    let path = dir.join("echo.sock");
    let live = UnixListener::bind(&path).expect("bind a listener");
    let log = refused_to_start(&path);
    assert!(
        log.contains(&format!("a server is listening on {}", path.display())),
        "{log}"
    );
    // The live server's socket is still there and still its own.
    let _client = common::connect_unix(&path);
    live.accept().expect("the listener still accepts");

    let file = dir.join("not-a-socket");
    std::fs::write(&file, "precious").expect("write a file");
    let log = refused_to_start(&file);
    assert!(log.contains("exists and is not a socket"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&file).expect("the file"),
        "precious"
    );
}

#[test]
fn sigterm_removes_the_socket_file_and_exits_0() {
    let (_dir, mut server) = start_unix("echo_server", &[]);
    let path = server.path.clone();
    assert!(is_socket(&path));
    let mut client = echo_round_trip(&path);

    // SAFETY: kill(2) only sends a signal, to the child this test started.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
        0
    );
    // The open connection is closed, cleanly.
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .expect("a clean EOF at shutdown");
    assert!(rest.is_empty(), "{rest:?}");
    // Our close ends the server's linger (it waits up to 2 s for it after its own FIN).
    drop(client);
    let status = wait_until("echo_server to exit", || {
        server.child.try_wait().expect("try_wait")
    });
    assert!(status.success(), "exit status {status}");
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "{} is still there",
        path.display()
    );
}
