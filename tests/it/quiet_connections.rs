//! Connections quiet by design: `Builder::tcp_keepalive` turns keepalive probes on for
//! accepted sockets (as `ss` shows them), and only when asked; `Replies::set_idle_timeout`
//! exempts a connection from the idle timeout (`None`) or gives it its own (`Some`).

use crate::common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use reactor_pool::{Builder, Context, Handler, Keepalive, LineCodec, Replies, ServerHandle};

use crate::common::{
    connect, expect_clean_eof, round_trip, run_client, wait_for_stats, wait_until,
};

/// `ss`'s line for the server's side of each established connection on `port` (the
/// socket whose local port it is), with its timer.
fn server_sockets(port: u16) -> Vec<String> {
    let filter = format!("sport = :{port}");
    let (status, out, err) = run_client("ss", &["-tnoH", "state", "established", &filter]);
    assert!(status.success(), "ss failed: {err}");
    out.lines().map(str::to_owned).collect()
}

/// The seconds left on a `timer:(keepalive,{N}sec,0)` in `line`, if it shows one.
fn keepalive_seconds(line: &str) -> Option<u64> {
    let rest = line.split("timer:(keepalive,").nth(1)?;
    let left = rest.split(',').next()?;
    // Under a minute: "44sec" (or "950ms" just before a probe).
    match left.strip_suffix("sec") {
        Some(secs) => secs.parse().ok(),
        None => left.strip_suffix("ms").map(|_| 0),
    }
}

fn echo_server(name: &str, configure: impl FnOnce(Builder) -> Builder) -> ServerHandle {
    common::init_logging();
    configure(Builder::bind("127.0.0.1:0").workers(2).thread_name(name))
        .start(LineCodec::new(), common::echo())
        .expect("start")
}

#[test]
fn tcp_keepalive_is_set_on_accepted_connections_when_asked() {
    const IDLE: u64 = 50;
    let server = echo_server("qc-ka", |b| {
        b.tcp_keepalive(Some(Keepalive {
            idle: Duration::from_secs(IDLE),
            interval: Duration::from_secs(5),
            retries: 3,
        }))
    });
    let addr = server.local_addr().tcp().unwrap();
    let mut client = connect(addr);
    round_trip(&mut client, b"hello\n", b"hello\n");
    let line = wait_until("ss to show the connection", || {
        server_sockets(addr.port()).into_iter().next()
    });
    let left = keepalive_seconds(&line)
        .unwrap_or_else(|| panic!("no keepalive timer on the server's socket: {line}"));
    // The builder's idle time, not the system's default of two hours.
    assert!(
        left <= IDLE && left + 30 >= IDLE,
        "keepalive due in {left} s, not within the {IDLE} s asked: {line}"
    );
    drop(client);
    server.shutdown();
}

#[test]
fn tcp_keepalive_is_off_by_default() {
    let server = echo_server("qc-noka", |b| b);
    let addr = server.local_addr().tcp().unwrap();
    let mut client = connect(addr);
    round_trip(&mut client, b"hello\n", b"hello\n");
    let line = wait_until("ss to show the connection", || {
        server_sockets(addr.port()).into_iter().next()
    });
    assert!(
        !line.contains("keepalive"),
        "a keepalive timer nobody asked for: {line}"
    );
    drop(client);
    server.shutdown();
}

/// `quiet` exempts its connection from the idle timeout, `patient` gives it 2 s; anything
/// else is echoed.
struct Quiet;

const PATIENCE: Duration = Duration::from_secs(2);

impl Handler for Quiet {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    type Session = ();

    fn open(&self, _: &Context, _: &mut Replies<Vec<u8>>) {}

    fn call(&self, _: &mut (), line: Vec<u8>, _: &Context, replies: &mut Replies<Vec<u8>>) {
        match &line[..] {
            b"quiet" => replies.set_idle_timeout(None),
            b"patient" => replies.set_idle_timeout(Some(PATIENCE)),
            _ => {}
        }
        replies.send(line);
    }
}

/// A server whose idle timeout is 300 ms.
fn quiet_server(name: &str) -> (ServerHandle, SocketAddr) {
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .idle_timeout(Some(Duration::from_millis(300)))
        .thread_name(name)
        .start(LineCodec::new(), Quiet)
        .expect("start");
    let addr = server.local_addr().tcp().unwrap();
    (server, addr)
}

/// A connection that spoke after `earlier` did is closed by the server's idle timeout:
/// `earlier` was quiet for longer, so the server's timeout no longer applies to it.
fn outlived_by(addr: SocketAddr, earlier: &mut TcpStream) {
    let mut later = connect(addr);
    round_trip(&mut later, b"hello\n", b"hello\n");
    assert!(
        expect_clean_eof(&mut later, "the idle timeout").is_empty(),
        "nothing but the close"
    );
    round_trip(earlier, b"still here\n", b"still here\n");
}

#[test]
fn a_connection_exempted_from_the_idle_timeout_outlives_it() {
    let (server, addr) = quiet_server("qc-none");
    let mut quiet = connect(addr);
    round_trip(&mut quiet, b"quiet\n", b"quiet\n");
    outlived_by(addr, &mut quiet);
    let stats = wait_for_stats(&server, "one timeout", |s| s.connections_closed == 1);
    assert_eq!(
        (stats.timeouts, stats.connections_open),
        (1, 1),
        "{stats:#?}"
    );
    drop(quiet);
    server.shutdown();
}

#[test]
fn a_connection_with_an_idle_timeout_of_its_own_keeps_to_it() {
    let (server, addr) = quiet_server("qc-some");
    let mut patient = connect(addr);
    round_trip(&mut patient, b"patient\n", b"patient\n");
    outlived_by(addr, &mut patient);
    // And its own timeout does end it, no sooner.
    let since = Instant::now();
    assert!(expect_clean_eof(&mut patient, "its own idle timeout").is_empty());
    let quiet_for = since.elapsed();
    assert!(
        quiet_for >= PATIENCE - Duration::from_millis(300),
        "closed after {quiet_for:?} of quiet, before its own {PATIENCE:?}"
    );
    let stats = wait_for_stats(&server, "two timeouts", |s| s.connections_closed == 2);
    assert_eq!(stats.timeouts, 2, "{stats:#?}");
    drop(patient);
    server.shutdown();
}
