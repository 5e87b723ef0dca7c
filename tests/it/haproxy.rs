//! Behind a real HAProxy (`mode tcp`, `balance roundrobin`, `send-proxy-v2`, health
//! checks, `retries 3`, `option redispatch`) in front of two echo_server processes run with
//! `--proxy-protocol`:
//!
//! - both servers get connections, and each names the real client (the client socket's own
//!   address) in its log line `PROXY header names client ADDR`;
//! - the address check is not vacuous: servers run without `--proxy-protocol` echo the
//!   PROXY header back and name no client, and the check says so;
//! - server a, drained in HAProxy first (`set server be/a state drain`, as a deployment
//!   does), then sent SIGTERM while clients keep coming: no request is lost, a exits 0,
//!   HAProxy marks it DOWN and b serves on;
//! - SIGTERM to a with no drain, with plain `check` (a TCP connect, no PROXY header) and with
//!   `check-send-proxy`: a exits 0, b serves on, and every request a received gets its
//!   echo. A request can still be lost when a never received it: HAProxy had connected (the
//!   kernel completed the handshake) and sent it, but a closed its listener with the
//!   connection still queued, or accepted it and shut down before its bytes arrived.
//!   HAProxy cannot resend data in `mode tcp`. The test asserts that every loss is of that
//!   kind, and prints how many there were.
//!
//! Needs `haproxy` on the PATH (Debian package `haproxy`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::deploy_support::{
    echo_tcp, free_port, locked, proxied_clients, start_echo_server, Load, Lost, Proc, TempDir,
    CLIENT_THREADS, DEADLINE, NAMES_CLIENT,
};

const HELLO: &[u8] = b"Hello,server!";

/// The echo servers' flags behind HAProxy.
const PROXIED: &[&str] = &["--proxy-protocol", "--addr", "127.0.0.1:0"];

/// A running haproxy (foreground, `-db`) with its configuration directory; killed on drop.
struct Haproxy {
    proc: Proc,
    frontend: SocketAddr,
    admin: PathBuf,
    _dir: TempDir,
}

impl Haproxy {
    /// Starts haproxy balancing over `backends` (servers `a` and `b`) with health checks
    /// `check` ("check" or "check check-send-proxy"). The frontend port is picked free just
    /// before; if haproxy cannot bind it (`noreuseport` makes a taken port an error rather
    /// than a shared one) another is tried.
    fn start(backends: [SocketAddr; 2], check: &str) -> Haproxy {
        let mut failures = Vec::new();
        for _attempt in 0..5 {
            let dir = TempDir::new("reactor-pool-haproxy");
            let admin = dir.path().join("admin.sock");
            let frontend = SocketAddr::from(([127, 0, 0, 1], free_port()));
            // tcplog's format plus %bi:%bp, the address HAProxy connected to the server
            // from (what the server logs as "accepted from").
            let config = format!(
                "global\n\
                 \x20   log stderr format raw local0 info\n\
                 \x20   noreuseport\n\
                 \x20   stats socket {admin} level admin\n\
                 defaults\n\
                 \x20   mode tcp\n\
                 \x20   log global\n\
                 \x20   log-format \"%ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts \
                 %ac/%fc/%bc/%sc/%rc %sq/%bq %bi:%bp\"\n\
                 \x20   timeout connect 500ms\n\
                 \x20   timeout client 5s\n\
                 \x20   timeout server 5s\n\
                 \x20   retries 3\n\
                 \x20   option redispatch\n\
                 frontend fe\n\
                 \x20   bind {frontend}\n\
                 \x20   default_backend be\n\
                 backend be\n\
                 \x20   balance roundrobin\n\
                 \x20   default-server inter 300ms fall 2 rise 2\n\
                 \x20   server a {a} send-proxy-v2 {check}\n\
                 \x20   server b {b} send-proxy-v2 {check}\n",
                admin = admin.display(),
                a = backends[0],
                b = backends[1],
            );
            let path = dir.path().join("haproxy.cfg");
            std::fs::write(&path, config).expect("write haproxy.cfg");
            let mut command = Command::new("haproxy");
            command.arg("-db").arg("-f").arg(&path);
            let mut proc = Proc::spawn("haproxy", &mut command);
            // Ready once its admin socket answers: every listener is bound by then.
            let deadline = Instant::now() + DEADLINE;
            loop {
                if let Some(status) = proc.exited() {
                    failures.push(format!("{status}: {}", proc.log.tail(10)));
                    break;
                }
                if admin_command(&admin, "show info").is_ok() {
                    return Haproxy {
                        proc,
                        frontend,
                        admin,
                        _dir: dir,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy did not come up; last lines:\n{}",
                    proc.log.tail(30)
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
        panic!("haproxy did not start (is it installed?): {failures:#?}");
    }

    fn admin(&self, command: &str) -> String {
        admin_command(&self.admin, command)
            .unwrap_or_else(|e| panic!("haproxy admin command {command:?}: {e}"))
    }

    /// Server `name`'s line of `show stat`, by column name (status, scur, check_status...).
    fn stat(&self, name: &str) -> HashMap<String, String> {
        let csv = self.admin("show stat");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .unwrap_or_else(|| panic!("no header in show stat:\n{csv}"))
            .split(',')
            .collect();
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&"be") && fields.get(1) == Some(&name))
            .map(|fields| {
                header
                    .iter()
                    .zip(fields)
                    .map(|(k, v)| ((*k).to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_else(|| panic!("no server {name} in show stat:\n{csv}"))
    }

    /// Waits until `show stat` for server `name` satisfies `pred`; returns that line.
    fn wait_stat(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&HashMap<String, String>) -> bool,
    ) -> HashMap<String, String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let stat = self.stat(name);
            if pred(&stat) {
                return stat;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for haproxy server {name}: {what}; status {:?}, check {:?}",
                stat.get("status"),
                stat.get("check_status")
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// HAProxy's log lines, one per client session.
    fn sessions(&self) -> Vec<Session> {
        self.proc
            .log
            .lines()
            .iter()
            .filter_map(|line| Session::parse(line))
            .collect()
    }
}

/// Sends one command to haproxy's admin socket and returns the answer.
fn admin_command(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// One session line of HAProxy's log: `CLIENT [DATE] fe be/SERVER Tw/Tc/Tt BYTES TERM
/// act/fe/be/srv/RETRIES sq/bq SERVER_SIDE_SOURCE`.
#[derive(Debug)]
struct Session {
    line: String,
    server: String,
    /// Bytes sent to the client.
    bytes: String,
    /// Retries of the connection to a server; `+` in front when it was redispatched.
    retries: String,
    /// The address HAProxy connected to the server from.
    source: String,
}

impl Session {
    fn parse(line: &str) -> Option<Session> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|&f| f == "fe")?;
        Some(Session {
            line: line.to_owned(),
            server: fields.get(at + 1)?.strip_prefix("be/")?.to_owned(),
            bytes: (*fields.get(at + 3)?).to_owned(),
            retries: fields.get(at + 5)?.rsplit('/').next()?.to_owned(),
            source: (*fields.get(at + 7)?).to_owned(),
        })
    }
}

/// Two echo servers (`a`, `b`) with `args`, and haproxy in front of them.
fn start_pair(args: &[&str], check: &str) -> (Proc, Proc, Haproxy) {
    let (a, addr_a) = start_echo_server("echo_server a", args);
    let (b, addr_b) = start_echo_server("echo_server b", args);
    let haproxy = Haproxy::start([addr_a, addr_b], check);
    (a, b, haproxy)
}

/// Whether a server log line says a connection that carried requests closed
/// (`connection N from ADDR closed after K requests`, K > 0).
fn closed_with_requests(line: &str) -> bool {
    line.contains(" closed after ") && !line.contains(" closed after 0 requests")
}

/// Waits until the servers have logged the close of `n` connections that carried requests:
/// each connection's PROXY line comes before its close line, from the same thread.
fn wait_served(servers: &[&Proc], n: usize) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let closed: usize = servers
            .iter()
            .map(|s| s.log.count(closed_with_requests))
            .sum();
        if closed >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} connections to close on the servers (saw {closed})"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// The check of the client addresses: every address in `clients` is named by some server's
/// PROXY header log line, and every server named at least one. Returns how many each named.
fn check_named_clients(servers: &[&Proc], clients: &[SocketAddr]) -> Result<Vec<usize>, String> {
    let named: Vec<Vec<SocketAddr>> = servers.iter().map(|s| proxied_clients(&s.log)).collect();
    let missing: Vec<&SocketAddr> = clients
        .iter()
        .filter(|client| !named.iter().any(|n| n.contains(client)))
        .collect();
    let counts: Vec<usize> = named.iter().map(Vec::len).collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} of {} client addresses named by no server's \"{NAMES_CLIENT}\" line: \
             {missing:?}; lines per server: {counts:?}",
            missing.len(),
            clients.len()
        ));
    }
    if let Some(idle) = counts.iter().position(|&n| n == 0) {
        return Err(format!(
            "{} named no client: {counts:?}",
            servers[idle].name
        ));
    }
    Ok(counts)
}

#[test]
fn haproxy_spreads_connections_and_each_server_sees_the_real_client() {
    let (a, b, haproxy) = start_pair(PROXIED, "check");
    let mut clients = Vec::new();
    for i in 0..20 {
        let client = echo_tcp(haproxy.frontend, HELLO)
            .unwrap_or_else(|e| panic!("client {i} through haproxy: {e}"));
        clients.push(client);
    }
    wait_served(&[&a, &b], clients.len());
    let counts = check_named_clients(&[&a, &b], &clients)
        .unwrap_or_else(|e| panic!("{e}\na:\n{}\nb:\n{}", a.log.tail(20), b.log.tail(20)));
    assert_eq!(counts.iter().sum::<usize>(), clients.len(), "{counts:?}");
    // HAProxy's own log agrees: it sent sessions to both.
    let sessions = haproxy.sessions();
    for server in ["a", "b"] {
        assert!(
            sessions.iter().any(|s| s.server == server),
            "haproxy logged no session on {server}: {sessions:#?}"
        );
    }
}

#[test]
fn the_client_check_fails_when_servers_ignore_the_proxy_header() {
    // No --proxy-protocol: the header HAProxy sends is echoed as data, and no server names
    // a client. The check the test above relies on must say so.
    let (a, b, haproxy) = start_pair(&["--addr", "127.0.0.1:0"], "check");
    let mut clients = Vec::new();
    for i in 0..4 {
        let error = echo_tcp(haproxy.frontend, HELLO)
            .expect_err("the echo should start with the PROXY v2 header");
        // The v2 signature: \r\n\r\n\0\r\nQUIT\n.
        assert!(error.what.contains("QUIT"), "client {i}: {error}");
        clients.push(error.local.expect("connected"));
    }
    wait_served(&[&a, &b], clients.len());
    let error = check_named_clients(&[&a, &b], &clients).expect_err("no server names a client");
    assert!(error.contains("4 of 4 client addresses"), "{error}");
}

/// Whether `server_lines` (a server's whole log) show that the server got the request of
/// `client`'s connection, or may have: the last line about that client is its PROXY header
/// line (the connection never logged its close: a crash) or a close after requests. A
/// connection whose header never arrived has no line; one closed before its request came
/// ends with "closed after 0 requests". (The last line counts: a client port can come round
/// again.)
fn may_have_received(server_lines: &[String], client: SocketAddr) -> bool {
    let named = format!("{NAMES_CLIENT}{client}");
    let closed = format!("from {client} closed after ");
    server_lines
        .iter()
        .rev()
        .find(|l| l.ends_with(&named) || l.contains(&closed))
        .is_some_and(|l| l.ends_with(&named) || closed_with_requests(l))
}

/// SIGTERM to server a while clients loop through haproxy, drained in haproxy first or not.
fn sigterm_a_under_load(check: &str, drain_first: bool) {
    let tag = format!("[{check}{}]", if drain_first { ", drained" } else { "" });
    let (mut a, b, haproxy) = start_pair(PROXIED, check);
    // The health checks run and pass before the load starts.
    for server in ["a", "b"] {
        haproxy.wait_stat(server, "a passed health check", |s| {
            s["status"] == "UP" && s["check_status"] == "L4OK"
        });
    }
    let mut load = Load::start(haproxy.frontend);
    // Both servers are in the rotation before anything happens to a.
    for server in [&a, &b] {
        let what = format!("30 proxied connections on {}", server.name);
        server
            .log
            .wait_count(&what, 30, |l| l.contains(NAMES_CLIENT));
    }
    if drain_first {
        let answer = haproxy.admin("set server be/a state drain");
        assert!(
            answer.trim().is_empty(),
            "set server be/a state drain: {answer}"
        );
        haproxy.wait_stat("a", "drained, no session left", |s| {
            s["status"] == "DRAIN" && s["scur"] == "0"
        });
    }
    let done_at_term = load.done();
    let term_at = load.started.elapsed();
    a.sigterm();
    let status = a.wait_exit("after SIGTERM");
    let exit_at = load.started.elapsed();
    let done_at_exit = load.done();
    let b_at_exit = b.log.count(|l| l.contains(NAMES_CLIENT));
    // HAProxy's checks see a gone; then b carries every request.
    haproxy.wait_stat("a", "marked DOWN", |s| s["status"].starts_with("DOWN"));
    let down_at = load.started.elapsed();
    load.wait_done(load.done() + 200, "200 requests after a was marked DOWN");
    let sent = load.finish();
    let done = load.done();
    let lost = std::mem::take(&mut *locked(&load.lost));

    // Each lost request: a session HAProxy ran on a (logged when it ended), where a never
    // got the request: it never accepted the connection, or closed it without a request.
    a.log
        .wait_for("a's last line", |l| l.contains("echo server stopped"));
    let a_lines = a.log.lines();
    let mut never_accepted = 0;
    let mut unexplained = Vec::new();
    for l in &lost {
        let Some(client) = l.error.local else {
            unexplained.push(format!("{l:?}: no connection"));
            continue;
        };
        let session = haproxy
            .proc
            .log
            .wait_for(&format!("haproxy's log of {client}"), |line| {
                line.starts_with(&format!("{client} ["))
            });
        let session = Session::parse(&session).expect("a session line");
        let nothing_back = session.bytes == "0" && l.error.what.contains(" after 0 of ");
        if session.server != "a" || !nothing_back || may_have_received(&a_lines, client) {
            unexplained.push(format!("{l:?}\n  haproxy: {}", session.line));
        } else if !a_lines
            .iter()
            .any(|line| line.ends_with(&format!("accepted from {}", session.source)))
        {
            never_accepted += 1;
        }
        eprintln!(
            "{tag}   lost {:?} {}: {}",
            l.at,
            l.request.trim(),
            session.line
        );
    }
    let sessions = haproxy.sessions();
    let redispatched = sessions.iter().filter(|s| s.retries != "0").count();
    let a_served = a.log.count(|l| l.contains(NAMES_CLIENT));
    let b_served = b.log.count(|l| l.contains(NAMES_CLIENT));
    eprintln!(
        "{tag} sent {sent}, echoed {done}, lost {} ({never_accepted} never accepted by a, {} \
         accepted without their request); SIGTERM at {term_at:?} after {done_at_term} echoes, a \
         exited at {exit_at:?} ({status}), marked DOWN at {down_at:?}; a served {a_served}, b \
         served {b_served} ({} after a exited); {redispatched} sessions retried",
        lost.len(),
        lost.len() - never_accepted - unexplained.len(),
        b_served - b_at_exit,
    );

    assert!(
        unexplained.is_empty(),
        "{tag} requests lost that a received, or not lost on a:\n{}\na's last lines:\n{}",
        unexplained.join("\n"),
        a.log.tail(40)
    );
    // Each client thread has one connection at a time, and only those open at a's close
    // can be lost: the ones after it are refused by a and redispatched to b.
    let early: Vec<&Lost> = lost.iter().filter(|l| l.at < term_at).collect();
    assert!(
        early.is_empty(),
        "{tag} lost before the SIGTERM: {early:#?}"
    );
    assert!(
        lost.len() <= CLIENT_THREADS,
        "{tag} {} requests lost, more than the {CLIENT_THREADS} connections that were open when \
         a closed its listener: {lost:#?}",
        lost.len()
    );
    if drain_first {
        assert!(
            lost.is_empty(),
            "{tag} {} of {sent} requests lost though a was drained first: {lost:#?}",
            lost.len()
        );
    }
    assert!(
        status.success(),
        "a exited with {status}: {}",
        a.log.tail(20)
    );
    assert_eq!(done + lost.len(), sent);
    assert!(done > done_at_exit, "nothing was served after a exited");
    b.log.wait_count(
        "200 connections on b after a exited",
        b_at_exit + 200,
        |l| l.contains(NAMES_CLIENT),
    );
}

#[test]
fn sigterm_after_a_haproxy_drain_loses_no_request() {
    sigterm_a_under_load("check", true);
}

#[test]
fn sigterm_without_drain_loses_only_requests_never_received_tcp_checks() {
    sigterm_a_under_load("check", false);
}

#[test]
fn sigterm_without_drain_loses_only_requests_never_received_proxy_checks() {
    sigterm_a_under_load("check check-send-proxy", false);
}
