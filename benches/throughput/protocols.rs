//! Protocol scenarios: the example servers against the real thing, driven by the real tools.
//!
//! - `resp c50 P1` / `resp c50 P16`: `examples/kv_server.rs` against `redis-server`, each driven
//!   by `redis-benchmark -c 50 -t ping,set,get,incr -q -n N` (`-P 16` in the second); req/s
//!   per test (PING_INLINE, PING_MBULK, SET, GET, INCR) and kv_server / redis.
//! - `http c100` / `http c1000`: `examples/http_hello.rs` against nginx returning the same
//!   body (`return 200 "Hello, world!";`), driven by `wrk -t2 -cC -dDs --latency`; req/s,
//!   wrk's p50/p99 latency, socket errors and non-2xx/3xx responses, and http_hello / nginx.
//!
//! Same thread budget: kv_server and http_hello run with the bench's `--reactors` reactors and
//! `--workers` workers (2 and 2 by default), nginx with `worker_processes` = `--threads`, and
//! redis-server executes commands on one thread (`--io-threads 1`: no I/O threads either).
//! The load tools run on the same cores as the servers.
//!
//! The example servers run as the example binaries the README starts (built by this bench
//! with `cargo build --release --example ...`, since `cargo bench` does not build examples),
//! with their own allocator (kv_server: mimalloc, `examples/support/allocator.rs`, as
//! redis-server has jemalloc) and their default logging, on a free port. redis-server and nginx run with configurations bound to 127.0.0.1 on a
//! free port, in a directory under the bench output directory, and are stopped (SIGTERM, then
//! SIGKILL after 5 s) when their run ends, whatever happened. A missing tool or peer is
//! skipped with a `skipped: X not installed` line.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::runner::{self, ServerProcess};

/// redis-benchmark's tests, in the order it runs them with `-t ping,set,get,incr`.
pub const RESP_TESTS: [&str; 5] = ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"];
/// How long a peer may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer may take to exit after SIGTERM before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The protocol a scenario speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Proto {
    Resp,
    Http,
}

/// One protocol workload.
#[derive(Debug, Clone, Serialize)]
pub struct ProtoScenario {
    pub name: String,
    pub proto: Proto,
    pub connections: usize,
    /// redis-benchmark `-P` (1: no pipelining); 0 for HTTP.
    pub pipeline: usize,
    /// redis-benchmark `-n` (requests per test); 0 for HTTP.
    pub requests: u64,
    /// wrk `-d` seconds; 0 for RESP.
    pub duration_s: u64,
}

impl ProtoScenario {
    fn resp(connections: usize, pipeline: usize, requests: u64) -> Self {
        ProtoScenario {
            name: format!("resp c{connections} P{pipeline}"),
            proto: Proto::Resp,
            connections,
            pipeline,
            requests,
            duration_s: 0,
        }
    }

    fn http(connections: usize, duration_s: u64) -> Self {
        ProtoScenario {
            name: format!("http c{connections}"),
            proto: Proto::Http,
            connections,
            pipeline: 0,
            requests: 0,
            duration_s,
        }
    }

    /// (ours, the reference) for this protocol.
    pub fn servers(&self) -> [&'static str; 2] {
        match self.proto {
            Proto::Resp => ["kv_server", "redis-server"],
            Proto::Http => ["http_hello", "nginx"],
        }
    }

    /// The load tool.
    pub fn tool(&self) -> &'static str {
        match self.proto {
            Proto::Resp => "redis-benchmark",
            Proto::Http => "wrk",
        }
    }

    pub fn label(&self, server: &str) -> String {
        format!("{} / {server}", self.name)
    }
}

impl crate::ServerPair for ProtoScenario {
    fn servers(&self) -> [&'static str; 2] {
        ProtoScenario::servers(self)
    }

    fn label(&self, server: &str) -> String {
        ProtoScenario::label(self, server)
    }
}

/// The protocol scenarios of a mode: full about a minute, quick a few seconds.
/// `duration_s` is wrk's `-d` (the bench's `--duration`, at least 1 s).
pub fn matrix(quick: bool, duration_s: u64) -> Vec<ProtoScenario> {
    let d = duration_s.max(1);
    if quick {
        return vec![
            ProtoScenario::resp(50, 1, 2_000),
            ProtoScenario::resp(50, 16, 20_000),
            ProtoScenario::http(100, d),
        ];
    }
    vec![
        ProtoScenario::resp(50, 1, 50_000),
        ProtoScenario::resp(50, 16, 300_000),
        ProtoScenario::http(100, d),
        ProtoScenario::http(1000, d),
    ]
}

/// One load tool measurement (a redis-benchmark test, or a wrk run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ToolResult {
    /// redis-benchmark's test name, or `GET /` for wrk.
    pub test: String,
    pub req_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// wrk: connect + read + write + timeout socket errors.
    pub socket_errors: Option<u64>,
    /// wrk's "Socket errors:" line as printed (empty when it printed none: no errors).
    pub socket_error_detail: Option<String>,
    /// wrk: "Non-2xx or 3xx responses".
    pub non_2xx: Option<u64>,
}

/// One server in one protocol scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ProtoRun {
    pub scenario: ProtoScenario,
    pub server: String,
    /// The load tool's command line.
    pub command: String,
    pub results: Vec<ToolResult>,
    /// Why the run failed, if it did (then `results` may be empty).
    pub error: Option<String>,
    pub wall_s: f64,
}

/// The settings the protocol runs share.
#[derive(Debug, Clone)]
pub struct ProtoSettings {
    pub reactors: usize,
    pub workers: usize,
    /// nginx worker processes.
    pub threads: usize,
    /// The peers' directories go under this one.
    pub dir: PathBuf,
}

/// `name` if it is an executable on PATH, /usr/sbin or /sbin.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `name`'s path as [`find_program`] finds it, else `name` (for the error message).
pub(crate) fn program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| name.into())
}

/// Whether `server` is one of this crate's examples (run as its own binary, as the README
/// starts it), not a peer installed on the machine.
pub fn is_example(server: &str) -> bool {
    matches!(server, "kv_server" | "http_hello")
}

/// The first of `programs` (the crate's examples aside) not installed on the machine.
pub fn missing_program<'a>(programs: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    programs
        .into_iter()
        .filter(|p| !is_example(p))
        .find(|p| find_program(p).is_none())
}

/// A running server under test, stopped when dropped (also on error paths).
pub(crate) enum Running {
    /// An example binary (kv_server, http_hello).
    Own(Option<ServerProcess>),
    /// redis-server or nginx.
    Peer(Child),
}

impl Running {
    /// The server's process id (nginx: its master process).
    pub(crate) fn pid(&self) -> u32 {
        match self {
            Running::Own(process) => process.as_ref().map_or(0, ServerProcess::pid),
            Running::Peer(child) => child.id(),
        }
    }

    fn addr_check(&mut self) -> io::Result<()> {
        if let Running::Peer(child) = self {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!("exited early: {status}")));
            }
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Running::Own(process) => {
                if let Some(p) = process.take() {
                    p.stop();
                }
            }
            Running::Peer(child) => {
                let _ = runner::terminate(child);
                let deadline = Instant::now() + EXIT_TIMEOUT;
                while Instant::now() < deadline {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => return,
                        Ok(None) => thread::sleep(Duration::from_millis(10)),
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `addr` accepts a connection (or the peer exits, or time runs out).
fn wait_accepting(running: &mut Running, addr: SocketAddr, log: &Path) -> io::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let tail = || {
            let text = fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().rev().take(5).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
        };
        if let Err(e) = running.addr_check() {
            return Err(io::Error::other(format!("{e}; log: {}", tail())));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "{addr} not accepting after {STARTUP_TIMEOUT:?}; log: {}",
                tail()
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns a peer with its output in `dir/NAME.log`, and waits until it accepts on `addr`.
pub(crate) fn spawn_peer(
    mut command: Command,
    dir: &Path,
    addr: SocketAddr,
) -> io::Result<Running> {
    let log_path = dir.join("server.log");
    let log = fs::File::create(&log_path)?;
    let child = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut running = Running::Peer(child);
    wait_accepting(&mut running, addr, &log_path)?;
    Ok(running)
}

/// Starts the example binary `name` with the bench's `--reactors` and `--workers`, and
/// `extra` arguments after them.
pub(crate) fn start_example(
    name: &str,
    settings: &ProtoSettings,
    extra: &[String],
) -> io::Result<(Running, SocketAddr)> {
    let mut args = vec![
        "--reactors".to_string(),
        settings.reactors.to_string(),
        "--workers".to_string(),
        settings.workers.to_string(),
    ];
    args.extend_from_slice(extra);
    let process = ServerProcess::spawn_example(name, &args)?;
    let addr = process.addr;
    Ok((Running::Own(Some(process)), addr))
}

/// Starts `server` (an example, redis-server, or nginx answering `Hello, world!`) for a
/// run whose files go in `dir`.
pub(crate) fn start_server(
    server: &str,
    settings: &ProtoSettings,
    dir: &Path,
) -> io::Result<(Running, SocketAddr)> {
    match server {
        "kv_server" | "http_hello" => start_example(server, settings, &[]),
        "redis-server" => {
            let port = free_port()?;
            let mut command = Command::new(program("redis-server"));
            command.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--io-threads",
                "1",
                "--protected-mode",
                "no",
                "--dir",
                &dir.display().to_string(),
                "--maxclients",
                "10000",
            ]);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            Ok((spawn_peer(command, dir, addr)?, addr))
        }
        "nginx" => {
            let port = free_port()?;
            let d = dir.display();
            let conf = format!(
                "daemon off;\n\
                 master_process on;\n\
                 worker_processes {workers};\n\
                 worker_rlimit_nofile 8192;\n\
                 pid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n\
                 \x20   access_log off;\n\
                 \x20   client_body_temp_path {d}/body;\n\
                 \x20   server {{\n\
                 \x20       listen 127.0.0.1:{port};\n\
                 \x20       location / {{ return 200 \"Hello, world!\"; }}\n\
                 \x20   }}\n\
                 }}\n",
                workers = settings.threads,
            );
            let conf_path = dir.join("nginx.conf");
            fs::write(&conf_path, conf)?;
            let mut command = Command::new(program("nginx"));
            command
                .arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&conf_path);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            Ok((spawn_peer(command, dir, addr)?, addr))
        }
        other => Err(io::Error::other(format!("unknown server {other}"))),
    }
}

/// The load tool's command line for `scenario` against `addr`.
fn tool_args(scenario: &ProtoScenario, addr: SocketAddr) -> Vec<String> {
    let mut args: Vec<String> = match scenario.proto {
        Proto::Resp => [
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-c",
            &scenario.connections.to_string(),
            "-t",
            "ping,set,get,incr",
            "-q",
            "-n",
            &scenario.requests.to_string(),
        ]
        .map(String::from)
        .to_vec(),
        Proto::Http => [
            "-t2".to_string(),
            format!("-c{}", scenario.connections),
            format!("-d{}s", scenario.duration_s),
            "--latency".to_string(),
            format!("http://{addr}/"),
        ]
        .to_vec(),
    };
    if scenario.proto == Proto::Resp && scenario.pipeline > 1 {
        args.extend(["-P".to_string(), scenario.pipeline.to_string()]);
    }
    args
}

/// Runs `program args` with its output in `dir`, killing it after `timeout`; returns its
/// exit status and stdout + stderr.
fn run_tool(
    program: &str,
    args: &[String],
    dir: &Path,
    timeout: Duration,
) -> io::Result<(ExitStatus, String)> {
    let out_path = dir.join(format!("{program}.out"));
    let out = fs::File::create(&out_path)?;
    let mut child = Command::new(self::program(program))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!(
                "{program} still running after {timeout:?}: killed"
            )));
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok((status, fs::read_to_string(&out_path)?))
}

/// The results of `redis-benchmark -q`: one "TEST: N requests per second, p50=X msec" line
/// per test, between `\r`-ended progress lines.
pub fn parse_redis_benchmark(output: &str) -> Result<Vec<ToolResult>, String> {
    if output.contains("rror") {
        let lines: Vec<&str> = output
            .split(['\r', '\n'])
            .filter(|l| l.contains("rror"))
            .take(3)
            .collect();
        return Err(format!("redis-benchmark reported: {}", lines.join(" | ")));
    }
    let mut results = Vec::new();
    for line in output.split(['\r', '\n']).map(str::trim) {
        let Some((test, rest)) = line.split_once(": ") else {
            continue;
        };
        let Some((rps, after)) = rest.split_once(" requests per second") else {
            continue;
        };
        let p50_ms = after
            .split_once("p50=")
            .and_then(|(_, p)| p.split_whitespace().next())
            .and_then(|p| p.parse().ok());
        results.push(ToolResult {
            test: test.to_string(),
            req_per_s: rps
                .trim()
                .parse()
                .map_err(|_| format!("bad req/s in {line:?}"))?,
            p50_ms,
            ..ToolResult::default()
        });
    }
    for test in RESP_TESTS {
        if !results.iter().any(|r| r.test == test) {
            return Err(format!("no {test} result in redis-benchmark's output"));
        }
    }
    Ok(results)
}

/// A wrk duration ("795.00us", "4.57ms", "1.02s", "2.00m") in milliseconds.
fn wrk_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        "h" => value * 3_600_000.0,
        _ => return None,
    })
}

/// The results of `wrk --latency`.
pub fn parse_wrk(output: &str) -> Result<ToolResult, String> {
    let mut result = ToolResult {
        test: "GET /".into(),
        socket_errors: Some(0),
        non_2xx: Some(0),
        ..ToolResult::default()
    };
    let mut rps = None;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => rps = value.parse().ok(),
            ["50%", value] => result.p50_ms = wrk_ms(value),
            ["99%", value] => result.p99_ms = wrk_ms(value),
            ["Non-2xx", "or", "3xx", "responses:", n] => result.non_2xx = n.parse().ok(),
            ["Socket", "errors:", ..] => {
                let total = line
                    .trim_start_matches("Socket errors:")
                    .split(',')
                    .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum();
                result.socket_errors = Some(total);
                result.socket_error_detail = Some(line.to_string());
            }
            _ => {}
        }
    }
    result.req_per_s = rps.ok_or("no Requests/sec in wrk's output")?;
    Ok(result)
}

/// One run: starts `server`, drives `scenario` at it, stops it.
fn run_one(
    scenario: &ProtoScenario,
    server: &str,
    settings: &ProtoSettings,
) -> (String, Result<Vec<ToolResult>, String>) {
    let dir = settings
        .dir
        .join(format!("{}-{server}", scenario.name.replace(' ', "-")));
    let timeout = match scenario.proto {
        // Generous: at 5,000 req/s, the slowest plausible, every test of the full mode fits.
        Proto::Resp => Duration::from_secs(30 + 5 * scenario.requests / 5_000),
        Proto::Http => Duration::from_secs(scenario.duration_s + 30),
    };
    let mut command = scenario.tool().to_string();
    let result = (|| -> Result<Vec<ToolResult>, String> {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (running, addr) =
            start_server(server, settings, &dir).map_err(|e| format!("{server}: {e}"))?;
        let args = tool_args(scenario, addr);
        command = format!("{} {}", scenario.tool(), args.join(" "));
        let ran = run_tool(scenario.tool(), &args, &dir, timeout);
        // Stop the server before anything else (SIGTERM, wait).
        drop(running);
        let (status, output) = ran.map_err(|e| format!("{}: {e}", scenario.tool()))?;
        let parsed = match scenario.proto {
            Proto::Resp => parse_redis_benchmark(&output),
            Proto::Http => parse_wrk(&output).map(|r| vec![r]),
        };
        if !status.success() {
            let last = output.lines().last().unwrap_or_default().to_string();
            return Err(format!("{} failed ({status}): {last}", scenario.tool()));
        }
        parsed
    })();
    (command, result)
}

/// Runs every (scenario, server) of `plan`, printing progress on stderr. Pairs whose tool or
/// peer is not installed are skipped, with a line in the returned list.
pub fn run_all(
    plan: &[(ProtoScenario, Vec<&'static str>)],
    settings: &ProtoSettings,
) -> (Vec<ProtoRun>, Vec<String>) {
    let mut runs = Vec::new();
    let mut skipped = Vec::new();
    // The peers' directories (configs, logs, tool output) of this bench run only.
    if !plan.is_empty() {
        let _ = fs::remove_dir_all(&settings.dir);
    }
    let total: usize = plan.iter().map(|(_, s)| s.len()).sum();
    let mut done = 0;
    for (scenario, servers) in plan {
        for &server in servers {
            done += 1;
            let prefix = format!("[{done:>3}/{total}] {:<40}", scenario.label(server));
            let missing = missing_program([scenario.tool(), server]);
            if let Some(program) = missing {
                let line = format!(
                    "skipped: {}: {program} not installed",
                    scenario.label(server)
                );
                eprintln!("{prefix}: {line}");
                skipped.push(line);
                continue;
            }
            let t = Instant::now();
            let (command, result) = run_one(scenario, server, settings);
            let wall_s = t.elapsed().as_secs_f64();
            let (results, error) = match result {
                Ok(results) => {
                    let summary: Vec<String> = results
                        .iter()
                        .map(|r| format!("{} {:.0}", r.test, r.req_per_s))
                        .collect();
                    let extra = results
                        .first()
                        .filter(|r| r.p99_ms.is_some())
                        .map(|r| {
                            format!(
                                "  p99 {:.2} ms  socket errors {}  non-2xx {}",
                                r.p99_ms.unwrap_or(f64::NAN),
                                r.socket_errors.unwrap_or(0),
                                r.non_2xx.unwrap_or(0)
                            )
                        })
                        .unwrap_or_default();
                    eprintln!(
                        "{prefix}: {} req/s{extra}  ({wall_s:.1} s)",
                        summary.join(", ")
                    );
                    (results, None)
                }
                Err(e) => {
                    eprintln!("{prefix}: FAILED: {e}");
                    (Vec::new(), Some(e))
                }
            };
            runs.push(ProtoRun {
                scenario: scenario.clone(),
                server: server.to_string(),
                command,
                results,
                error,
                wall_s,
            });
        }
    }
    (runs, skipped)
}

fn find<'a>(runs: &'a [ProtoRun], scenario: &str, server: &str) -> Option<&'a ProtoRun> {
    runs.iter()
        .find(|r| r.scenario.name == scenario && r.server == server)
}

fn rps_cell(run: Option<&ProtoRun>, test: &str) -> (String, Option<f64>) {
    match run {
        None => ("-".into(), None),
        Some(r) if r.error.is_some() => ("FAILED".into(), None),
        Some(r) => match r.results.iter().find(|t| t.test == test) {
            Some(t) => (format!("{:.0}", t.req_per_s), Some(t.req_per_s)),
            None => ("-".into(), None),
        },
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}"))
}

/// The RESP table: one row per scenario and redis-benchmark test.
const RESP_HEADERS: [&str; 7] = [
    "scenario",
    "test",
    "kv_server req/s",
    "redis req/s",
    "kv/redis",
    "kv p50 ms",
    "redis p50 ms",
];

/// The HTTP table: one row per scenario and server.
const HTTP_HEADERS: [&str; 8] = [
    "scenario",
    "server",
    "req/s",
    "p50 ms",
    "p99 ms",
    "socket errors",
    "non-2xx/3xx",
    "vs nginx",
];

/// The protocol tables (RESP, HTTP), each with its rows (empty if none ran).
pub fn tables(runs: &[ProtoRun]) -> [(&'static [&'static str], Vec<Vec<String>>); 2] {
    let mut names: Vec<&ProtoScenario> = Vec::new();
    for r in runs {
        if !names.iter().any(|s| s.name == r.scenario.name) {
            names.push(&r.scenario);
        }
    }
    let mut resp = Vec::new();
    let mut http = Vec::new();
    for scenario in names {
        let [ours, reference] = scenario.servers();
        let ours_run = find(runs, &scenario.name, ours);
        let ref_run = find(runs, &scenario.name, reference);
        match scenario.proto {
            Proto::Resp => {
                for test in RESP_TESTS {
                    let (a, a_rps) = rps_cell(ours_run, test);
                    let (b, b_rps) = rps_cell(ref_run, test);
                    let p50 = |run: Option<&ProtoRun>| {
                        ms(run
                            .and_then(|r| r.results.iter().find(|t| t.test == test))
                            .and_then(|t| t.p50_ms))
                    };
                    let ratio = match (a_rps, b_rps) {
                        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                        _ => "-".into(),
                    };
                    resp.push(vec![
                        scenario.name.clone(),
                        test.to_string(),
                        a,
                        b,
                        ratio,
                        p50(ours_run),
                        p50(ref_run),
                    ]);
                }
            }
            Proto::Http => {
                let (_, ref_rps) = rps_cell(ref_run, "GET /");
                for run in [ours_run, ref_run].into_iter().flatten() {
                    let Some(t) = run.results.first().filter(|_| run.error.is_none()) else {
                        let mut row = vec![scenario.name.clone(), run.server.clone()];
                        row.push("FAILED".into());
                        row.extend(std::iter::repeat_n("-".to_string(), 5));
                        http.push(row);
                        continue;
                    };
                    let ratio = match ref_rps {
                        Some(r) if r > 0.0 => format!("{:.2}", t.req_per_s / r),
                        _ => "-".into(),
                    };
                    http.push(vec![
                        scenario.name.clone(),
                        run.server.clone(),
                        format!("{:.0}", t.req_per_s),
                        ms(t.p50_ms),
                        ms(t.p99_ms),
                        t.socket_errors.map_or("-".into(), |n| n.to_string()),
                        t.non_2xx.map_or("-".into(), |n| n.to_string()),
                        ratio,
                    ]);
                }
            }
        }
    }
    [(&RESP_HEADERS, resp), (&HTTP_HEADERS, http)]
}

/// Failed runs, one line each.
fn failures(runs: &[ProtoRun]) -> Vec<String> {
    runs.iter()
        .filter_map(|r| {
            r.error
                .as_ref()
                .map(|e| format!("FAILED: {}: {e}", r.scenario.label(&r.server)))
        })
        .collect()
}

/// The stdout part: the tables, failures and skips.
pub fn text(runs: &[ProtoRun], skipped: &[String]) -> String {
    let mut out = String::new();
    for (headers, rows) in tables(runs) {
        if rows.is_empty() {
            continue;
        }
        out.push('\n');
        crate::tables::text_table(headers, &rows, &mut out);
    }
    for line in failures(runs).iter().chain(skipped) {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// The report.md section.
pub fn markdown(
    runs: &[ProtoRun],
    skipped: &[String],
    settings: &crate::tables::Settings,
    md: &mut String,
) {
    if runs.is_empty() && skipped.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Protocols: the example servers against redis-server and nginx\n\n\
         One run per server. kv_server and http_hello (the example binaries, built by this \
         bench and run as the README starts them) have {r} reactor(s) and {w} workers; redis-server executes commands on one \
         thread and is started with `--io-threads 1`; nginx has `worker_processes {t};`. \
         The load tools share the machine's cores with the servers. Each server was started \
         fresh on 127.0.0.1 for its run.\n",
        r = settings.reactors,
        w = settings.echo_workers,
        t = settings.server_threads
    );
    let [(resp_headers, resp_rows), (http_headers, http_rows)] = tables(runs);
    if !resp_rows.is_empty() {
        md.push_str(
            "### RESP: kv_server vs redis-server (redis-benchmark)\n\n\
             `redis-benchmark -h 127.0.0.1 -p PORT -c 50 -t ping,set,get,incr -q -n N` \
             (scenario `P16`: plus `-P 16`, 16 commands pipelined per connection); req/s and \
             p50 as redis-benchmark reports them.\n\n",
        );
        crate::tables::markdown_table(resp_headers, &resp_rows, md);
    }
    if !http_rows.is_empty() {
        md.push_str(
            "\n### HTTP: http_hello vs nginx (wrk)\n\n\
             `wrk -t2 -cC -dDs --latency http://127.0.0.1:PORT/`, nginx answering \
             `return 200 \"Hello, world!\";`. p50/p99 are wrk's latency distribution; \
             **socket errors**: connect + read + write + timeout; **non-2xx/3xx**: wrk's count \
             of other responses; **vs nginx**: req/s over nginx's in the same scenario.\n\n",
        );
        crate::tables::markdown_table(http_headers, &http_rows, md);
    }
    let mut notes: Vec<String> = runs
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| format!("- {}: `{}`", r.scenario.label(&r.server), r.command))
        .collect();
    notes.extend(failures(runs).into_iter().map(|l| format!("- {l}")));
    notes.extend(skipped.iter().map(|l| format!("- {l}")));
    let _ = writeln!(
        md,
        "\nCommands, failures and skips:\n\n{}",
        notes.join("\n")
    );
}
