//! The echo, blocking, hold and TLS scenarios: which servers run each, and the rounds that
//! run them (each server in a process of its own, `runner::run_once`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::baseline;
use crate::loadgen::LoadConfig;
use crate::options::Options;
use crate::report::{self, Outcome, Scenario};
use crate::runner::{self, Program, RunMetrics};
use crate::servers::{Kind, ServeArgs};
use crate::{matches_filter, BLOCKING_WORKERS, THREADS_HOLD_MAX};

/// A server of the echo scenarios: a kind, of this build or of the baseline's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    pub kind: Kind,
    /// `--baseline-bench` (reactor-pool kinds) or `--baseline-examples` (echo_server).
    pub base: bool,
}

impl Server {
    /// Its name in the labels and the report: tokio is tokio-rustls over TLS, a baseline
    /// server's ends with `@base`.
    pub fn name(self, scenario: &Scenario) -> String {
        let name = match self.kind {
            Kind::Tokio => report::tokio_name(scenario),
            kind => kind.name(),
        };
        if self.base {
            baseline::base_name(name)
        } else {
            name.to_string()
        }
    }

    /// The binary it runs.
    fn program(self, opts: &Options) -> Result<Program, String> {
        let current = || std::env::current_exe().map_err(|e| format!("this bench's path: {e}"));
        let missing = || format!("{:?}: no baseline given", self.kind);
        Ok(match (self.kind, self.base) {
            (Kind::EchoExample, false) => {
                Program::Example(runner::example_path("echo_server").map_err(|e| e.to_string())?)
            }
            (Kind::EchoExample, true) => {
                Program::Example(opts.baseline.example("echo_server").ok_or_else(missing)?)
            }
            (_, false) => Program::Bench(current()?),
            (_, true) => Program::Bench(opts.baseline.bench.clone().ok_or_else(missing)?),
        })
    }
}

/// Whether `kind` runs `scenario`.
pub fn runs(scenario: &Scenario, kind: Kind) -> bool {
    if scenario.tls {
        // reactor-pool's default (pool) path against tokio-rustls.
        return matches!(kind, Kind::ReactorPool | Kind::Tokio);
    }
    match kind {
        Kind::Threads => !(scenario.is_hold() && scenario.connections > THREADS_HOLD_MAX),
        // The example as the README starts it: plain echo (its defaults allow 10,000
        // connections), in the full run.
        Kind::EchoExample => {
            scenario.sleep_us == 0 && !scenario.is_hold() && scenario.connections <= 10_000
        }
        // Inline mode is for handlers that never block, and is reported beside the pool
        // path, not instead of it: the echo scenarios only.
        Kind::ReactorPoolInline | Kind::ReactorPoolConcurrent => {
            scenario.sleep_us == 0 && !scenario.is_hold()
        }
        _ => true,
    }
}

/// Whether `kind` has a baseline server in `scenario` with these options: in the plain
/// echo scenarios, the reactor-pool kinds with `--baseline-bench` and echo_server with
/// `--baseline-examples`.
fn runs_base(opts: &Options, scenario: &Scenario, kind: Kind) -> bool {
    let echo = scenario.sleep_us == 0 && !scenario.is_hold() && !scenario.tls;
    echo && match kind {
        Kind::ReactorPool | Kind::ReactorPoolInline | Kind::ReactorPoolConcurrent => {
            opts.baseline.bench.is_some()
        }
        Kind::EchoExample => opts.baseline.examples.is_some(),
        Kind::Threads | Kind::Tokio => false,
    }
}

/// The measured window of a run of `scenario`.
pub fn duration(opts: &Options, scenario: &Scenario) -> Duration {
    opts.duration
        .max(Duration::from_secs_f64(scenario.min_duration_s))
}

pub fn label(scenario: &Scenario, server: Server) -> String {
    format!("{} / {}", scenario.name, server.name(scenario))
}

fn serve_args(opts: &Options, scenario: &Scenario, kind: Kind) -> ServeArgs {
    let blocking = scenario.sleep_us > 0;
    ServeArgs {
        kind,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        threads: opts.threads,
        reactors: opts.reactors,
        workers: if blocking {
            scenario.blocking_workers
        } else {
            opts.workers
        },
        blocking: BLOCKING_WORKERS,
        sleep: Duration::from_micros(scenario.sleep_us),
        stack_kib: opts.stack_kib,
        // A safety net only: the parent stops the child long before.
        max_lifetime: duration(opts, scenario)
            + opts.warmup
            + Duration::from_millis(scenario.think_ms)
            + Duration::from_secs(120),
        tls: scenario.tls,
    }
}

/// The scenarios of `matrix` with the servers that run each (a baseline server right after
/// its counterpart), those the filter leaves none dropped.
pub fn plan(opts: &Options, matrix: Vec<Scenario>) -> Vec<(Scenario, Vec<Server>)> {
    // The smoke run does not build the example, unless its baseline is to be compared.
    let echo_example = !opts.quick || opts.baseline.examples.is_some();
    matrix
        .into_iter()
        .map(|s| {
            let servers = Kind::ALL
                .into_iter()
                .filter(|&k| runs(&s, k) && (k != Kind::EchoExample || echo_example))
                .flat_map(|kind| {
                    let base = runs_base(opts, &s, kind).then_some(Server { kind, base: true });
                    [Some(Server { kind, base: false }), base]
                })
                .flatten()
                .filter(|&server| {
                    opts.filter
                        .as_ref()
                        .is_none_or(|f| matches_filter(&label(&s, server), f))
                })
                .collect::<Vec<_>>();
            (s, servers)
        })
        .filter(|(_, servers)| !servers.is_empty())
        .collect()
}

/// Runs every scenario of `plan`, `opts.runs` rounds each (every server once a round, a
/// server and its baseline swapping places every other round), `total` runs in all; prints
/// a progress line per run on stderr.
pub fn run_all(
    opts: &Options,
    plan: &[(Scenario, Vec<Server>)],
    fd_limit: u64,
    total: usize,
) -> Result<Vec<Outcome>, String> {
    #[cfg(feature = "tls")]
    let client_tls = if plan.iter().any(|(s, _)| s.tls) {
        Some(crate::tls::client_config().map_err(|e| format!("TLS client configuration: {e}"))?)
    } else {
        None
    };
    let mut outcomes = Vec::new();
    let mut done = 0;
    for (scenario, servers) in plan {
        if scenario.connections as u64 + 64 > fd_limit {
            eprintln!(
                "warning: {} connections exceed the fd limit {fd_limit}; expect connect errors",
                scenario.connections
            );
        }
        let names: Vec<String> = servers.iter().map(|s| s.name(scenario)).collect();
        let mut runs: Vec<(Vec<RunMetrics>, Vec<String>)> =
            vec![(Vec::new(), Vec::new()); servers.len()];
        // Runs of different servers alternate, so a noisy moment does not hit one server only.
        for run in 0..opts.runs {
            for i in baseline::round_order(&names, run) {
                let server = servers[i];
                done += 1;
                let t = Instant::now();
                let load = LoadConfig {
                    target: SocketAddr::from(([127, 0, 0, 1], 0)),
                    connections: scenario.connections,
                    message_size: scenario.message_size,
                    depth: scenario.depth,
                    think: Duration::from_millis(scenario.think_ms),
                    warmup: opts.warmup,
                    duration: duration(opts, scenario),
                    threads: opts.client_threads,
                    #[cfg(feature = "tls")]
                    tls: client_tls.as_ref().filter(|_| scenario.tls).cloned(),
                    reconnect: scenario.reconnect,
                };
                let prefix = format!(
                    "[{done:>3}/{total}] {:<40} run {}/{}",
                    label(scenario, server),
                    run + 1,
                    opts.runs
                );
                let result = server.program(opts).and_then(|program| {
                    runner::run_once(&serve_args(opts, scenario, server.kind), &program, &load)
                        .map_err(|e| e.to_string())
                });
                match result {
                    Ok(mut m) => {
                        m.round = run;
                        eprintln!(
                            "{prefix}: {}  ({:.1} s)",
                            progress(scenario, server, &m),
                            t.elapsed().as_secs_f64()
                        );
                        if m.listen_overflows > 0 {
                            eprintln!(
                                "{prefix}: warning: {} listen queue overflows on this machine during the run",
                                m.listen_overflows
                            );
                        }
                        runs[i].0.push(m);
                    }
                    Err(e) => {
                        eprintln!("{prefix}: FAILED: {e}");
                        runs[i].1.push(e);
                    }
                }
            }
        }
        for (name, (metrics, failed)) in names.iter().zip(runs) {
            outcomes.push(Outcome::new(scenario, name, metrics, failed));
        }
    }
    Ok(outcomes)
}

/// A run's figures on its progress line.
fn progress(scenario: &Scenario, server: Server, m: &RunMetrics) -> String {
    let hold = if scenario.is_hold() {
        format!(
            "  conns {} served {} (connect {:.2} s)  RSS {:.1} MiB, {:.2} KiB/conn",
            m.connections,
            m.served,
            m.connect_s,
            m.server_peak_rss_kib as f64 / 1024.0,
            m.rss_per_conn_kib
        )
    } else {
        String::new()
    };
    let unit = if scenario.reconnect {
        "handshakes/s"
    } else {
        "req/s"
    };
    let [cs, wakes] = crate::procfs::per_request_cells(m.per_request);
    // A baseline server's binary, as /proc/PID/exe showed it: the proof it is the old one.
    let exe = if server.base {
        format!("  [{}]", m.server_exe)
    } else {
        String::new()
    };
    format!(
        "{:>8.0} {unit}  p99 {:>6} us  errors {}  CPU s: srv {:.2} cli {:.2} bg {:.2}  \
         cs/req {cs} wakes/req {wakes}{hold}{exe}",
        m.req_per_s, m.p99_us, m.errors, m.server_cpu_s, m.client_cpu_s, m.background_cpu_s,
    )
}

/// The examples this plan starts from this build (built before the first run) and from the
/// baseline's directory.
pub fn examples(plan: &[(Scenario, Vec<Server>)]) -> (bool, bool) {
    let uses = |base: bool| {
        plan.iter().any(|(_, servers)| {
            servers.contains(&Server {
                kind: Kind::EchoExample,
                base,
            })
        })
    };
    (uses(false), uses(true))
}

/// The thread-per-conn hold runs left out (over [`THREADS_HOLD_MAX`] connections), one note
/// each on stderr.
pub fn note_skipped(opts: &Options, plan: &[(Scenario, Vec<Server>)]) {
    for (s, _) in plan {
        let threads = label(
            s,
            Server {
                kind: Kind::Threads,
                base: false,
            },
        );
        if s.is_hold()
            && !runs(s, Kind::Threads)
            && opts
                .filter
                .as_ref()
                .is_none_or(|f| matches_filter(&threads, f))
        {
            eprintln!(
                "note: skipping {threads}: over {THREADS_HOLD_MAX} connections (one thread each)"
            );
        }
    }
}
