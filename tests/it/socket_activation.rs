//! Socket activation: echo_server serves the listening socket it is passed (LISTEN_FDS,
//! LISTEN_PID; fd 3), from `systemd-socket-activate` (TCP and Unix) and from a plain parent
//! process, which is how a restart hands the socket over with no downtime:
//!
//! - `systemd-socket-activate -l 127.0.0.1:PORT echo_server`: the echo works and the
//!   server's listening line names the passed address (its own `--addr` would differ);
//!   SIGTERM makes it exit 0;
//! - the same with `-l PATH` (a Unix socket): the passed socket is served, not `--unix`,
//!   and its file, which is not the server's, is left in place when the server exits;
//! - handover: the test binds a listener and starts server a on it through
//!   `bash -c 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@" 3<&N N<&-' echo_server ...`
//!   (`exec` keeps the shell's pid, so `$$` is the server's pid); clients loop on the
//!   address; server b is started the same way, the test closes its own copy of the socket,
//!   a gets SIGTERM and exits 0. No request is refused, reset or unanswered, b serves on,
//!   and b is then the only process holding the socket.
//!
//! `bash`, not `sh`: Debian's `sh` (dash) takes only one-digit descriptors in a redirection
//! (`3<&12` is "Bad fd number"), and the inherited descriptor is 10 or above.
//!
//! Needs `systemd-socket-activate` on the PATH (Debian package `systemd`).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::deploy_support::{
    echo_on, echo_server_command, echo_server_path, echo_tcp, free_port, listening_on, locked,
    Load, Proc, TempDir, IO_TIMEOUT, LISTENING,
};

const HELLO: &[u8] = b"Hello,server!";

/// `systemd-socket-activate -l LISTEN -E RUST_LOG=debug echo_server --workers 2 ARGS...`.
/// It listens, then execs the server (same pid) at the first connection. Returns `None` if
/// it exited before listening (the address was taken).
fn socket_activate(listen: &str, args: &[&str]) -> Option<Proc> {
    let server = echo_server_command(&[]);
    let mut command = Command::new("systemd-socket-activate");
    command
        .args(["-l", listen, "-E", "RUST_LOG=debug"])
        .arg(server.get_program())
        .args(server.get_args())
        .args(args)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES");
    let proc = Proc::spawn("systemd-socket-activate echo_server", &mut command);
    let listening = format!("Listening on {listen} as 3.");
    proc.log
        .try_wait_for("systemd-socket-activate listening", |l| {
            l.contains(&listening)
        })
        .map(|_| proc)
}

/// The server's listening line (logged once it has started on the passed socket).
fn server_listening(server: &Proc) -> String {
    let line = server
        .log
        .wait_for(&format!("{}'s listening line", server.name), |l| {
            l.contains(LISTENING)
        });
    listening_on(&line).to_owned()
}

/// SIGTERM, then exit 0.
fn stop(server: &mut Proc) {
    server.sigterm();
    let status = server.wait_exit("after SIGTERM");
    assert!(
        status.success(),
        "{} exited with {status}: {}",
        server.name,
        server.log.tail(20)
    );
}

#[test]
fn systemd_socket_activate_tcp_socket_is_served() {
    // The port is picked free, then bound by systemd-socket-activate: if another process
    // took it in between, it exits, and another port is tried.
    let (mut server, addr) = (0..5)
        .find_map(|_| {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            socket_activate(&addr.to_string(), &["--addr", "127.0.0.1:0"]).map(|p| (p, addr))
        })
        .expect("systemd-socket-activate did not listen (is it installed?)");
    // The first connection starts the server; it waits in the socket's backlog meanwhile.
    let client = echo_tcp(addr, HELLO).unwrap_or_else(|e| panic!("first echo: {e}"));
    assert_eq!(
        server_listening(&server),
        addr.to_string(),
        "the server listens where the passed socket does, not on its own --addr"
    );
    server
        .log
        .wait_for("the exec", |l| l.starts_with("Execing "));
    server.log.wait_for("the client's connection", |l| {
        l.ends_with(&format!("accepted from {client}"))
    });
    echo_tcp(addr, b"and again").unwrap_or_else(|e| panic!("second echo: {e}"));
    stop(&mut server);
}

#[test]
fn systemd_socket_activate_unix_socket_is_served() {
    let dir = TempDir::new("reactor-pool-activate");
    let path = dir.path().join("echo.sock");
    let own = dir.path().join("not-this.sock");
    let mut server = socket_activate(
        path.to_str().expect("UTF-8 path"),
        &["--unix", own.to_str().expect("UTF-8 path")],
    )
    .expect("systemd-socket-activate did not listen (is it installed?)");
    let mut stream =
        UnixStream::connect(&path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    echo_on(&mut stream, HELLO).unwrap_or_else(|e| panic!("echo over {}: {e}", path.display()));
    echo_on(&mut stream, b"twice on one connection").unwrap_or_else(|e| panic!("{e}"));
    drop(stream);
    assert_eq!(
        server_listening(&server),
        format!("unix:{}", path.display()),
        "the server listens on the passed socket, not on its own --unix"
    );
    stop(&mut server);
    assert!(!own.exists(), "the server created its own --unix socket");
    assert!(
        path.exists(),
        "the passed socket's file is systemd-socket-activate's: the server must leave it"
    );
}

/// `socket:[INODE]`, what /proc/PID/fd/N links to for a socket.
fn socket_link(fd: &impl AsRawFd) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("read_link fd")
}

/// The processes with a descriptor for `link`'s socket.
fn holders(link: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A process may exit meanwhile, or not be ours to look at: skip it.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == link))
        {
            pids.push(pid);
        }
    }
    pids
}

/// Starts echo_server on `listener` as a service manager would: the socket as fd 3, with
/// LISTEN_FDS=1 and LISTEN_PID set to the server's own pid by the shell that execs it.
/// Waits for its listening line and checks it names `listener`'s address.
fn start_on(name: &str, listener: &TcpListener) -> Proc {
    let addr = listener.local_addr().expect("local_addr");
    let server = Proc::spawn_with_fd(name, listener, |fd| {
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(format!(
                "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\" 3<&{fd} {fd}<&-"
            ))
            .arg(echo_server_path())
            .args(["--workers", "2", "--addr", "127.0.0.1:0"])
            .env("RUST_LOG", "debug")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES");
        command
    });
    assert_eq!(
        server_listening(&server),
        addr.to_string(),
        "{name} serves the socket it was passed"
    );
    // The shell exec'd the server in its own process, and fd 3 there is the socket.
    let pid = server.pid();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe"),
        echo_server_path()
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/3")).expect("fd 3"),
        socket_link(listener)
    );
    server
}

#[test]
fn handover_on_a_passed_socket_refuses_and_loses_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let link = socket_link(&listener);
    let accepted = |l: &str| l.contains(" accepted from ");

    let mut a = start_on("echo_server a", &listener);
    let mut load = Load::start(addr);
    a.log.wait_count("20 connections on a", 20, accepted);

    let b = start_on("echo_server b", &listener);
    // From now on the socket lives in the servers only.
    drop(listener);
    let done_at_term = load.done();
    a.sigterm();
    let status = a.wait_exit("after SIGTERM");
    let done_at_exit = load.done();
    let b_at_exit = b.log.count(accepted);
    assert!(
        status.success(),
        "a exited with {status}: {}",
        a.log.tail(20)
    );
    assert_eq!(holders(&link), vec![b.pid()], "only b holds the socket");

    // b carries on alone.
    load.wait_done(done_at_exit + 300, "300 echoes after a exited");
    b.log.wait_count(
        "300 connections on b after a exited",
        b_at_exit + 300,
        accepted,
    );
    let sent = load.finish();
    let done = load.done();
    let lost = std::mem::take(&mut *locked(&load.lost));
    eprintln!(
        "handover: sent {sent}, echoed {done}, lost {}; a served {} ({done_at_term} echoes before \
         its SIGTERM), b served {}",
        lost.len(),
        a.log.count(accepted),
        b.log.count(accepted)
    );
    for l in &lost {
        eprintln!(
            "handover:   lost {:?} {}: {}",
            l.at,
            l.request.trim(),
            l.error
        );
        // What the servers logged about that client: a connection a accepted and then
        // closed at its shutdown with no request is the race of a fresh connection.
        if let Some(client) = l.error.local {
            for server in [&a, &b] {
                for line in server.log.lines() {
                    if line.contains(&format!("{client} ")) || line.ends_with(&client.to_string()) {
                        eprintln!("handover:     {}: {line}", server.name);
                    }
                }
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {sent} requests refused, reset or unanswered during the handover: {lost:#?}\n\
         a's last lines:\n{}",
        lost.len(),
        a.log.tail(30)
    );
    assert_eq!(done, sent);
    // The socket b holds alone still takes new connections.
    echo_tcp(addr, HELLO).unwrap_or_else(|e| panic!("after the handover: {e}"));
}
