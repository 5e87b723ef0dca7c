//! Protocol scenarios: the example servers against the real thing, driven by the real tools.
//!
//! - `resp c50 P1` / `resp c50 P16`: `examples/kv_server.rs` against `redis-server`, each driven
//!   by `redis-benchmark -c 50 -t TEST -q -n N` (`-P 16` in the second), once per test
//!   (PING_INLINE, PING_MBULK, SET, GET, INCR); req/s per test and kv_server / redis.
//! - `http c100` / `http c1000`: `examples/http_hello.rs` against nginx returning the same
//!   body (`return 200 "Hello, world!";`), driven by `wrk -t2 -cC -dDs --latency`; req/s,
//!   wrk's p50/p99 latency, socket errors and non-2xx/3xx responses, and http_hello / nginx.
//!
//! Each result carries the server's context switches while its tool ran (every thread of
//! every process: nginx's master and workers), per request: `cs/req` and `wakes/req`. With
//! `--baseline-examples`, `kv_server@base` and `http_hello@base` (the baseline's builds of
//! the examples) run between ours and the reference.
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

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::baseline;
pub(crate) use crate::peers::{
    free_port, is_example, missing_program, program, spawn_peer, start_example, start_server,
    Running,
};
use crate::procfs::{self, PerRequest, Switches};

/// redis-benchmark's tests, in the order it runs them with `-t ping,set,get,incr`.
pub const RESP_TESTS: [&str; 5] = ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"];

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
    /// `--baseline-examples`: the baseline's build of our example runs too
    /// (`kv_server@base`, `http_hello@base`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub base: bool,
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
            base: false,
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
            base: false,
        }
    }

    /// (ours, the reference) for this protocol.
    pub fn pair(&self) -> [&'static str; 2] {
        match self.proto {
            Proto::Resp => ["kv_server", "redis-server"],
            Proto::Http => ["http_hello", "nginx"],
        }
    }

    /// Ours, ours `@base` (with `--baseline-examples`), the reference: the order they run in.
    pub fn servers(&self) -> Vec<&'static str> {
        let [ours, reference] = self.pair();
        let base = baseline::base_example(ours).filter(|_| self.base);
        [Some(ours), base, Some(reference)]
            .into_iter()
            .flatten()
            .collect()
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
    fn servers(&self) -> Vec<&'static str> {
        ProtoScenario::servers(self)
    }

    fn label(&self, server: &str) -> String {
        ProtoScenario::label(self, server)
    }
}

/// The protocol scenarios of a mode: full about a minute, quick a few seconds.
/// `duration_s` is wrk's `-d` (the bench's `--duration`, at least 1 s); with `base` the
/// baseline's example runs in each too.
pub fn matrix(quick: bool, duration_s: u64, base: bool) -> Vec<ProtoScenario> {
    let d = duration_s.max(1);
    let scenarios = if quick {
        vec![
            ProtoScenario::resp(50, 1, 2_000),
            ProtoScenario::resp(50, 16, 20_000),
            ProtoScenario::http(100, d),
        ]
    } else {
        vec![
            ProtoScenario::resp(50, 1, 50_000),
            ProtoScenario::resp(50, 16, 300_000),
            ProtoScenario::http(100, d),
            ProtoScenario::http(1000, d),
        ]
    };
    scenarios
        .into_iter()
        .map(|s| ProtoScenario { base, ..s })
        .collect()
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
    /// Requests the tool completed: redis-benchmark's `-n`, wrk's "N requests in".
    pub requests: u64,
    /// The server's context switches while the tool ran (every thread of every process).
    pub server_switches: Switches,
    /// `server_switches` per request: `cs/req` and `wakes/req`.
    pub per_request: Option<PerRequest>,
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
    /// The server's binary (/proc/PID/exe; nginx: its master's).
    pub server_exe: String,
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
    /// `--baseline-examples`: where `kv_server@base` and `http_hello@base` are.
    pub baseline_examples: Option<PathBuf>,
}

/// The load tool's command line for `scenario` against `addr`, running redis-benchmark's
/// test `test` (lower case) only.
fn tool_args(scenario: &ProtoScenario, addr: SocketAddr, test: &str) -> Vec<String> {
    let mut args: Vec<String> = match scenario.proto {
        Proto::Resp => [
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-c",
            &scenario.connections.to_string(),
            "-t",
            test,
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

/// The load tool's runs for `scenario`: redis-benchmark once per test, so that each test
/// has a window of its own for the server's context switches; wrk once. Each with the test
/// it runs (lower case; empty for wrk).
fn tool_tests(scenario: &ProtoScenario) -> Vec<String> {
    match scenario.proto {
        Proto::Resp => RESP_TESTS.iter().map(|t| t.to_lowercase()).collect(),
        Proto::Http => vec![String::new()],
    }
}

/// Runs `program args` with its output in `dir/PROGRAM[-TEST].out`, killing it after
/// `timeout`; returns its exit status and stdout + stderr.
fn run_tool(
    program: &str,
    args: &[String],
    dir: &Path,
    test: &str,
    timeout: Duration,
) -> io::Result<(ExitStatus, String)> {
    let out_path = if test.is_empty() {
        dir.join(format!("{program}.out"))
    } else {
        dir.join(format!("{program}-{test}.out"))
    };
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
/// per test, between `\r`-ended progress lines; every test of `expected` must be there.
pub fn parse_redis_benchmark(output: &str, expected: &[&str]) -> Result<Vec<ToolResult>, String> {
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
    for &test in expected {
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
            [n, "requests", "in", ..] => result.requests = n.parse().unwrap_or(0),
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

/// One run: starts `server`, drives `scenario` at it (redis-benchmark once per test),
/// stops it. Returns the tool's command line, the server's binary and the results, each
/// with the server's context switches while its tool ran.
fn run_one(
    scenario: &ProtoScenario,
    server: &str,
    settings: &ProtoSettings,
) -> (String, String, Result<Vec<ToolResult>, String>) {
    let dir = settings
        .dir
        .join(format!("{}-{server}", scenario.name.replace(' ', "-")));
    let timeout = match scenario.proto {
        // Generous: at 5,000 req/s, the slowest plausible, every test of the full mode fits.
        Proto::Resp => Duration::from_secs(30 + scenario.requests / 5_000),
        Proto::Http => Duration::from_secs(scenario.duration_s + 30),
    };
    let mut command = scenario.tool().to_string();
    let mut exe = String::new();
    let result = (|| -> Result<Vec<ToolResult>, String> {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (running, addr) =
            start_server(server, settings, &dir).map_err(|e| format!("{server}: {e}"))?;
        exe = running.exe();
        let pids = running.pids(if server == "nginx" {
            settings.threads
        } else {
            0
        });
        let tests = tool_tests(scenario);
        command = format!(
            "{} {}",
            scenario.tool(),
            tool_args(scenario, addr, "TEST").join(" ")
        );
        if scenario.proto == Proto::Resp {
            command = command.replace("-t TEST", &format!("-t {}", tests.join("|")));
            command.push_str(" (one run per test)");
        }
        let mut results = Vec::new();
        for test in &tests {
            let args = tool_args(scenario, addr, test);
            let before = Switches::of(&pids);
            let ran = run_tool(scenario.tool(), &args, &dir, test, timeout);
            let switches = Switches::of(&pids).since(before);
            let (status, output) = ran.map_err(|e| format!("{}: {e}", scenario.tool()))?;
            let parsed = match scenario.proto {
                Proto::Resp => {
                    let name = RESP_TESTS
                        .iter()
                        .find(|t| t.eq_ignore_ascii_case(test))
                        .copied();
                    parse_redis_benchmark(&output, name.as_slice()).map(|mut results| {
                        for r in &mut results {
                            r.requests = scenario.requests;
                        }
                        results
                    })
                }
                Proto::Http => parse_wrk(&output).map(|r| vec![r]),
            };
            if !status.success() {
                let last = output.lines().last().unwrap_or_default().to_string();
                return Err(format!("{} failed ({status}): {last}", scenario.tool()));
            }
            for mut r in parsed? {
                r.server_switches = switches;
                r.per_request = switches.per_request(r.requests);
                results.push(r);
            }
        }
        // Stop the server before anything else (SIGTERM, wait).
        drop(running);
        Ok(results)
    })();
    (command, exe, result)
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
            let (command, server_exe, result) = run_one(scenario, server, settings);
            let wall_s = t.elapsed().as_secs_f64();
            let (results, error) = match result {
                Ok(results) => {
                    let summary: Vec<String> = results
                        .iter()
                        .map(|r| {
                            let [cs, wakes] = procfs::per_request_cells(r.per_request);
                            format!("{} {:.0} ({cs} cs, {wakes} wakes/req)", r.test, r.req_per_s)
                        })
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
                    // A baseline server's binary, as /proc/PID/exe showed it.
                    let exe = if baseline::is_base(server) {
                        format!("  [{server_exe}]")
                    } else {
                        String::new()
                    };
                    eprintln!(
                        "{prefix}: {} req/s{extra}  ({wall_s:.1} s){exe}",
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
                server_exe,
            });
        }
    }
    (runs, skipped)
}
