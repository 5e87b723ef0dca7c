//! Throughput benchmark: reactor-pool's echo server against a thread-per-connection server
//! and a tokio server, each in its own process, under a closed-loop load generator.
//!
//! ```text
//! cargo bench --bench throughput               # full run, about 5-10 minutes on 2 cores
//! cargo bench --bench throughput -- --quick    # smoke run, under a minute (CI)
//! cargo bench --bench throughput -- --filter "c100 " --runs 1 --duration 2
//! cargo bench --bench throughput -- --list     # the scenario / server pairs
//! cargo bench --bench throughput --features tls -- --filter "tls"   # the TLS scenarios
//! ```
//!
//! Output: a table on stdout, a progress line per run on stderr, and `report.json`,
//! `report.md` and `throughput.svg` in `$CARGO_TARGET_DIR/bench` (default `target/bench`).
//!
//! **Processes.** The same binary is the server: the bench re-executes itself with the
//! hidden `--serve KIND ...` arguments (`servers.rs`), so each server's CPU time, memory,
//! threads and descriptors are its own; the parent reads them from /proc (`runner.rs`).
//! The example binaries (kv_server, http_hello, and echo_server as the README starts it)
//! are built and run as they are, with their own allocators.
//!
//! **Thread budget** (`--threads`, default 2 for a 2-core machine): tokio gets that many
//! worker threads, which do all its socket I/O; reactor-pool gets as many reactor threads
//! (`--reactors`), which do all its socket I/O, plus `--workers` (default: the budget)
//! workers that run the echo handler, and its acceptor thread; `rp-inline` (reactor-pool's
//! inline mode, echo scenarios only, reported beside the pool path) runs the handler on the
//! same reactors with no worker; the thread-per-connection server has no budget by design (one
//! thread per connection, 64 KiB stacks). In the blocking workload (1 ms sleep per request,
//! 256 connections) reactor-pool has 64 workers and tokio runs the sleep in `spawn_blocking`
//! with at most 64 blocking threads, so both are bounded by the ideal 64 / 1 ms = 64,000
//! req/s; the thread-per-connection server sleeps in its 256 connection threads and is not.
//!
//! **Load** (`loadgen.rs`, `client.rs`): closed loop (or a think time between a reply and
//! the next request: hold), `--client-threads` (default 2) mio event loops,
//! every echoed byte checked. Client sockets bind to 127.0.0.2, 127.0.0.3, ... before they
//! connect: one source address per 1,000 connections, at least 4, so no address comes near
//! its ephemeral ports even with earlier runs' sockets in TIME_WAIT (and the runner stops
//! the server before the clients close, which leaves TIME_WAIT on the server side anyway).
//! Every socket is on 127.0.0.0/8.
//!
//! **Hold** (`hold c19000 ...`): as many connections as one server process can hold (the
//! fd limit is 20,000 per process, and the load generator and each server are processes of
//! their own), each sending a 64 B ping, waiting for its echo, then thinking 2 s before the
//! next one, the first pause cut to a random fraction so pings are spread evenly; measured
//! for 10 s, so every connection pings at least four times. Reported in a table of its own:
//! connections established and served (had an echo in the window), latency, and the
//! server's idle and peak RSS and RSS per connection. Quick mode holds 2,000 connections
//! with a 250 ms think time instead. thread-per-conn runs it only up to
//! [`THREADS_HOLD_MAX`] connections: 19,000 threads would take most of this machine's pid
//! space (pid_max 32,768), shared with everything else running on it.
//!
//! **Figures**: req/s counts requests (messages of the scenario's size) whose whole echo
//! came back correct in the measured window; MB/s is that times the message size (payload
//! counted once, 10^6 bytes); latency is from queuing a request to its last echoed byte.
//! With `--runs N` the run with the median req/s is reported (all runs are in the JSON).
//! "bg CPU s" is what the rest of the machine used meanwhile: on a shared machine, read
//! the figures next to it.
//!
//! **Protocols** (`protocols.rs`, scenarios `resp c50 P1`, `resp c50 P16`, `http c100`,
//! `http c1000`): `examples/kv_server.rs` against redis-server under redis-benchmark, and
//! `examples/http_hello.rs` against nginx under wrk, one run per server, in tables of their
//! own. Quick mode runs a small form of them (`-n 2000` / `-n 20000`, `http c100` for 1 s);
//! a tool or peer that is not installed is skipped with a `skipped: X not installed` line.
//!
//! **Downloads** (`downloads.rs`, `download 20x200MB`, with `--features tls` also `download tls
//! 20x200MB`): 20 concurrent curl downloads of one 200 MB file from http_hello `--root` against
//! nginx `sendfile on;`: MB/s, the server's peak RSS and context switches per download.
//! **Fan-out** (`fanout.rs`, `pubsub.rs`, `fanout 1x1000`): one publisher and 1,000
//! subscribers of one channel, kv_server against redis-server: deliveries/s, delivery
//! latency, losses. Both run `--runs` rounds alternating the servers; quick mode runs them
//! small (20 MB files; 1 s of fan-out); a missing tool or peer is skipped likewise.
//!
//! **TLS** (built with `--features tls` only; `tls.rs`): `tls echo c100 64B d1` is the echo
//! scenario over TLS, one handshake per connection (in the warm-up), reactor-pool
//! (`Builder::tls`, the pool path with the echo settings) against tokio-rustls (the tokio
//! server's runtime and thread budget, `TlsAcceptor` per connection); `tls handshakes c100`
//! keeps 100 connections in flight, each doing connect, a full handshake (the client never
//! resumes), one 64 B echo and close_notify, then replaced by a new one: its figure is
//! handshakes (connections) per second, in a table of its own. Same embedded certificate,
//! same rustls ServerConfig (ring) for both servers; the load generator's threads speak TLS
//! with rustls' client in their mio loops. Quick mode runs both, 1 s each. Handshake
//! connections bind to all 64 source addresses, since each leaves a socket in TIME_WAIT.

mod chart;
mod client;
mod download_report;
mod downloads;
mod fanout;
mod load;
mod loadgen;
mod procfs;
mod protocols;
mod pubsub;
mod report;
mod rounds;
mod runner;
mod schedule;
mod servers;
mod tables;
#[cfg(feature = "tls")]
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use loadgen::LoadConfig;
use report::{Outcome, Report, Scenario, Settings};
use servers::{Kind, ServeArgs};

/// Workers (reactor-pool) and blocking threads (tokio) in the blocking workload.
const BLOCKING_WORKERS: usize = 64;
/// The blocking workload's handler sleep.
const BLOCKING_SLEEP_US: u64 = 1000;
/// Enough connections to keep 64 workers busy with a request always waiting.
const BLOCKING_CONNECTIONS: usize = 256;
/// The hold scenario, full mode: connections, think time, measured seconds.
const HOLD: (usize, u64, f64) = (19_000, 2000, 10.0);
/// The hold scenario, quick mode.
const HOLD_QUICK: (usize, u64, f64) = (2_000, 250, 1.0);
/// The hold scenario with large pings (connections, bytes, think ms, seconds): the RSS an
/// idle connection keeps after a large exchange.
const HOLD_LARGE: (usize, usize, u64, f64) = (1_000, 32 * 1024, 1000, 3.0);
/// The most connections thread-per-conn holds (one thread each) in a hold scenario.
const THREADS_HOLD_MAX: usize = 5_000;

const HELP: &str = "\
throughput: reactor-pool vs thread-per-connection vs tokio, echo over loopback

USAGE: cargo bench --bench throughput -- [OPTIONS]

OPTIONS:
  --quick               smoke run: small matrix, 1 s per run, 1 run (under a minute)
  --duration SECS       measured seconds per run [quick 1, full 5]; the hold scenario
                        measures at least 10 s in full mode (2.5 think times in quick)
  --warmup SECS         warm-up seconds per run [quick 0.3, full 1]
  --runs N              runs per scenario and server; the median is reported [quick 1, full 3]
  --filter TEXT         only scenario/server pairs whose \"SCENARIO / SERVER\" contains TEXT;
                        several alternatives separated by '|'
                        (protocol scenarios: \"resp c50 P1\", \"resp c50 P16\", \"http c100\",
                        \"http c1000\", \"download 20x200MB\", \"fanout 1x1000\"; servers
                        kv_server, redis-server, http_hello, nginx;
                        with --features tls: \"tls echo c100 64B d1\", \"tls handshakes c100\",
                        \"download tls 20x200MB\",
                        servers reactor-pool, tokio-rustls)
  --threads N           server thread budget: tokio worker threads, reactor-pool echo
                        workers unless --workers, nginx worker processes [2]
  --reactors N          reactor-pool reactor threads [--threads]
  --workers N           reactor-pool worker threads in the echo and protocol scenarios
                        [--threads]
  --client-threads N    load generator threads [2]
  --stack-kib N         stack of each thread-per-connection thread [64]
  --list                print the scenarios and exit
  -h, --help            this text
";

/// Options of the bench (parent) mode.
#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    duration: Duration,
    warmup: Duration,
    runs: usize,
    filter: Option<String>,
    threads: usize,
    reactors: usize,
    workers: usize,
    client_threads: usize,
    stack_kib: usize,
    list: bool,
}

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if args.contains(["-h", "--help"]) {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    // cargo passes --bench to harness = false benches (once more if the command line has it
    // after `--` too).
    while args.contains("--bench") {}
    let result = match args.opt_value_from_str::<_, String>("--serve") {
        Ok(Some(kind)) => serve_mode(&kind, args),
        Ok(None) => parse_options(args).and_then(|opts| bench_mode(&opts)),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// A scenario run against a pair of servers, ours and the reference (redis-server, nginx).
pub trait ServerPair {
    fn servers(&self) -> [&'static str; 2];
    fn label(&self, server: &str) -> String;
}

/// `scenarios`, each with the servers whose label `filter` keeps; those with none dropped.
fn select<S: ServerPair>(scenarios: Vec<S>, filter: Option<&str>) -> Vec<(S, Vec<&'static str>)> {
    scenarios
        .into_iter()
        .map(|s| {
            let servers: Vec<&'static str> = s
                .servers()
                .into_iter()
                .filter(|server| filter.is_none_or(|f| matches_filter(&s.label(server), f)))
                .collect();
            (s, servers)
        })
        .filter(|(_, servers)| !servers.is_empty())
        .collect()
}

/// The "SCENARIO / SERVER" labels of a plan.
fn labels<'a, S: ServerPair>(
    plan: &'a [(S, Vec<&'static str>)],
) -> impl Iterator<Item = String> + 'a {
    plan.iter()
        .flat_map(|(s, servers)| servers.iter().map(move |server| s.label(server)))
}

/// Whether `label` contains one of the `|`-separated alternatives of `filter`.
fn matches_filter(label: &str, filter: &str) -> bool {
    filter
        .split('|')
        .any(|alternative| label.contains(alternative))
}

fn reject_leftovers(args: pico_args::Arguments) -> Result<(), String> {
    let rest = args.finish();
    if rest.is_empty() {
        Ok(())
    } else {
        Err(format!("unexpected arguments {rest:?}; see --help"))
    }
}

fn secs(value: f64, name: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|_| format!("{name}: {value} is not a duration"))
}

fn parse_options(mut args: pico_args::Arguments) -> Result<Options, String> {
    let e = |e: pico_args::Error| e.to_string();
    let quick = args.contains("--quick");
    let duration: Option<f64> = args.opt_value_from_str("--duration").map_err(e)?;
    let warmup: Option<f64> = args.opt_value_from_str("--warmup").map_err(e)?;
    let runs: Option<usize> = args.opt_value_from_str("--runs").map_err(e)?;
    let filter: Option<String> = args.opt_value_from_str("--filter").map_err(e)?;
    let threads: usize = args
        .opt_value_from_str("--threads")
        .map_err(e)?
        .unwrap_or(2);
    // The budget is I/O threads: tokio's workers do its socket I/O, reactor-pool's reactors do.
    let reactors: usize = args
        .opt_value_from_str("--reactors")
        .map_err(e)?
        .unwrap_or(threads);
    let workers: Option<usize> = args.opt_value_from_str("--workers").map_err(e)?;
    let client_threads = args.opt_value_from_str("--client-threads").map_err(e)?;
    let stack_kib = args.opt_value_from_str("--stack-kib").map_err(e)?;
    let list = args.contains("--list");
    reject_leftovers(args)?;
    Ok(Options {
        quick,
        duration: secs(
            duration.unwrap_or(if quick { 1.0 } else { 5.0 }),
            "--duration",
        )?,
        warmup: secs(warmup.unwrap_or(if quick { 0.3 } else { 1.0 }), "--warmup")?,
        runs: runs.unwrap_or(if quick { 1 } else { 3 }).max(1),
        filter,
        threads: threads.max(1),
        reactors: reactors.max(1),
        workers: workers.unwrap_or(threads).max(1),
        client_threads: client_threads.unwrap_or(2usize).max(1),
        stack_kib: stack_kib.unwrap_or(64usize).max(16),
        list,
    })
}

fn serve_mode(kind: &str, mut args: pico_args::Arguments) -> Result<(), String> {
    let e = |e: pico_args::Error| e.to_string();
    let kind = Kind::parse(kind).ok_or_else(|| format!("unknown server kind {kind:?}"))?;
    let addr: SocketAddr = args.value_from_str("--addr").map_err(e)?;
    let serve = ServeArgs {
        kind,
        addr,
        threads: args.value_from_str("--threads").map_err(e)?,
        reactors: args.value_from_str("--reactors").map_err(e)?,
        workers: args.value_from_str("--workers").map_err(e)?,
        blocking: args.value_from_str("--blocking").map_err(e)?,
        sleep: Duration::from_micros(args.value_from_str("--sleep-us").map_err(e)?),
        stack_kib: args.value_from_str("--stack-kib").map_err(e)?,
        max_lifetime: Duration::from_secs(args.value_from_str("--max-lifetime").map_err(e)?),
        #[cfg(feature = "tls")]
        tls: args.contains("--tls"),
        #[cfg(not(feature = "tls"))]
        tls: false,
    };
    reject_leftovers(args)?;
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = env_logger::try_init();
    }
    servers::serve(&serve).map_err(|e| format!("{} server: {e}", kind.name()))?;
    // Nothing to clean up: the OS closes every socket.
    std::process::exit(0)
}

/// The scenarios of a mode, in the order they run: the TLS ones (feature `tls`) last.
fn matrix(quick: bool) -> Vec<Scenario> {
    #[allow(unused_mut)] // without the tls feature
    let mut scenarios = plain_matrix(quick);
    #[cfg(feature = "tls")]
    scenarios.extend([
        Scenario::tls_echo(100, 64, 1),
        Scenario::tls_handshakes(100),
    ]);
    scenarios
}

fn plain_matrix(quick: bool) -> Vec<Scenario> {
    let blocking = Scenario::blocking(BLOCKING_CONNECTIONS, BLOCKING_SLEEP_US, BLOCKING_WORKERS);
    if quick {
        let (connections, think_ms, duration_s) = HOLD_QUICK;
        return vec![
            Scenario::echo(1, 64, 1),
            Scenario::echo(100, 64, 1),
            Scenario::echo(1000, 64, 1),
            Scenario::echo(100, 4096, 1),
            Scenario::echo(100, 64, 16),
            blocking,
            Scenario::hold(connections, think_ms, duration_s),
        ];
    }
    let (connections, think_ms, duration_s) = HOLD;
    vec![
        Scenario::echo(1, 64, 1),
        Scenario::echo(100, 64, 1),
        Scenario::echo(1000, 64, 1),
        Scenario::echo(10_000, 64, 1),
        Scenario::echo(100, 4096, 1),
        Scenario::echo(100, 64, 16),
        blocking,
        Scenario::hold(connections, think_ms, duration_s),
        Scenario::hold_sized(HOLD_LARGE.0, HOLD_LARGE.1, HOLD_LARGE.2, HOLD_LARGE.3),
    ]
}

/// Whether `kind` runs `scenario`.
fn runs(scenario: &Scenario, kind: Kind) -> bool {
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

/// The measured window of a run of `scenario`.
fn duration(opts: &Options, scenario: &Scenario) -> Duration {
    opts.duration
        .max(Duration::from_secs_f64(scenario.min_duration_s))
}

/// The server's name in the labels and the report: tokio is tokio-rustls over TLS.
fn server_name(scenario: &Scenario, kind: Kind) -> &'static str {
    match kind {
        Kind::Tokio => report::tokio_name(scenario),
        _ => kind.name(),
    }
}

fn label(scenario: &Scenario, kind: Kind) -> String {
    format!("{} / {}", scenario.name, server_name(scenario, kind))
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

fn bench_mode(opts: &Options) -> Result<(), String> {
    let started = Instant::now();
    let fd_limit = raise_fd_limit();
    let plan: Vec<(Scenario, Vec<Kind>)> = matrix(opts.quick)
        .into_iter()
        .map(|s| {
            let kinds = Kind::ALL
                .into_iter()
                .filter(|&k| {
                    runs(&s, k)
                        // The smoke run does not build the example.
                        && !(opts.quick && k == Kind::EchoExample)
                        && opts
                            .filter
                            .as_ref()
                            .is_none_or(|f| matches_filter(&label(&s, k), f))
                })
                .collect::<Vec<_>>();
            (s, kinds)
        })
        .filter(|(_, kinds)| !kinds.is_empty())
        .collect();
    let filter = opts.filter.as_deref();
    let proto_plan = select(
        protocols::matrix(opts.quick, opts.duration.as_secs_f64().round() as u64),
        filter,
    );
    let download_plan = select(downloads::matrix(opts.quick), filter);
    let fanout_plan = select(fanout::matrix(opts.duration, opts.warmup), filter);
    if opts.list {
        for (s, kinds) in &plan {
            for &k in kinds {
                println!("{}", label(s, k));
            }
        }
        let pair_labels = labels(&proto_plan)
            .chain(labels(&download_plan))
            .chain(labels(&fanout_plan));
        for label in pair_labels {
            println!("{label}");
        }
        return Ok(());
    }
    if plan.is_empty()
        && proto_plan.is_empty()
        && download_plan.is_empty()
        && fanout_plan.is_empty()
    {
        return Err(format!("no scenario matches {:?}; see --list", opts.filter));
    }
    // The example binaries this run starts, built once before the first run.
    let mut examples: Vec<&str> = Vec::new();
    if plan
        .iter()
        .any(|(_, kinds)| kinds.contains(&Kind::EchoExample))
    {
        examples.push("echo_server");
    }
    let servers = proto_plan
        .iter()
        .flat_map(|(_, servers)| servers)
        .chain(download_plan.iter().flat_map(|(_, servers)| servers))
        .chain(fanout_plan.iter().flat_map(|(_, servers)| servers));
    for server in servers {
        if protocols::is_example(server) && !examples.contains(server) {
            examples.push(server);
        }
    }
    if !examples.is_empty() {
        runner::build_examples(&examples).map_err(|e| e.to_string())?;
    }
    let total: usize = plan.iter().map(|(_, k)| k.len() * opts.runs).sum();
    let proto_total: usize = proto_plan.iter().map(|(_, s)| s.len()).sum::<usize>()
        + (download_plan.iter().map(|(_, s)| s.len()).sum::<usize>()
            + fanout_plan.iter().map(|(_, s)| s.len()).sum::<usize>())
            * opts.runs;
    for (s, _) in &plan {
        let threads = label(s, Kind::Threads);
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
    eprintln!(
        "throughput: {} mode, {total} runs of {:?} (+{:?} warm-up) and {proto_total} protocol \
         runs, fd limit {fd_limit}",
        if opts.quick { "quick" } else { "full" },
        opts.duration,
        opts.warmup
    );
    #[cfg(feature = "tls")]
    let client_tls = if plan.iter().any(|(s, _)| s.tls) {
        Some(tls::client_config().map_err(|e| format!("TLS client configuration: {e}"))?)
    } else {
        None
    };
    let mut outcomes = Vec::new();
    let mut done = 0;
    for (scenario, kinds) in &plan {
        if scenario.connections as u64 + 64 > fd_limit {
            eprintln!(
                "warning: {} connections exceed the fd limit {fd_limit}; expect connect errors",
                scenario.connections
            );
        }
        let mut runs: Vec<(Vec<runner::RunMetrics>, Vec<String>)> =
            vec![(Vec::new(), Vec::new()); kinds.len()];
        // Runs of different servers alternate, so a noisy moment does not hit one server only.
        for run in 0..opts.runs {
            for (i, &kind) in kinds.iter().enumerate() {
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
                    label(scenario, kind),
                    run + 1,
                    opts.runs
                );
                match runner::run_once(&serve_args(opts, scenario, kind), &load) {
                    Ok(m) => {
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
                        eprintln!(
                            "{prefix}: {:>8.0} {unit}  p99 {:>6} us  errors {}  CPU s: srv {:.2} cli {:.2} bg {:.2}{hold}  ({:.1} s)",
                            m.req_per_s,
                            m.p99_us,
                            m.errors,
                            m.server_cpu_s,
                            m.client_cpu_s,
                            m.background_cpu_s,
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
                        runs[i].1.push(e.to_string());
                    }
                }
            }
        }
        for (&kind, (metrics, failed)) in kinds.iter().zip(runs) {
            outcomes.push(Outcome::new(
                scenario,
                server_name(scenario, kind),
                metrics,
                failed,
            ));
        }
    }
    report::set_tokio_ratios(&mut outcomes);
    let dir = target_dir().join("bench");
    let proto_settings = |name: &str| protocols::ProtoSettings {
        reactors: opts.reactors,
        workers: opts.workers,
        threads: opts.threads,
        dir: dir.join(name),
    };
    let (protocol_runs, protocols_skipped) =
        protocols::run_all(&proto_plan, &proto_settings("protocols"));
    let (downloads, downloads_skipped) =
        downloads::run_all(&download_plan, &proto_settings("downloads"), opts.runs);
    let (fanout, fanout_skipped) = fanout::run_all(
        &fanout_plan,
        &proto_settings("fanout"),
        opts.client_threads,
        opts.runs,
    );
    let report = Report {
        settings: Settings {
            mode: if opts.quick { "quick" } else { "full" }.into(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            duration_s: opts.duration.as_secs_f64(),
            warmup_s: opts.warmup.as_secs_f64(),
            runs: opts.runs,
            client_threads: opts.client_threads,
            server_threads: opts.threads,
            reactors: opts.reactors,
            echo_workers: opts.workers,
            blocking_workers: BLOCKING_WORKERS,
            thread_stack_kib: opts.stack_kib,
            filter: opts.filter.clone(),
        },
        generated_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        wall_s: started.elapsed().as_secs_f64(),
        outcomes,
        protocols: protocol_runs,
        protocols_skipped,
        downloads,
        downloads_skipped,
        fanout,
        fanout_skipped,
    };
    print!("{}", report::table(&report.outcomes));
    print!(
        "{}",
        protocols::text(&report.protocols, &report.protocols_skipped)
    );
    print!(
        "{}",
        download_report::text(&report.downloads, &report.downloads_skipped)
    );
    print!("{}", fanout::text(&report.fanout, &report.fanout_skipped));
    report::write_files(&dir, &report).map_err(|e| format!("{}: {e}", dir.display()))?;
    let svg = dir.join("throughput.svg");
    match chart::draw(&svg, &report.outcomes) {
        Ok(true) => eprintln!("wrote {}", svg.display()),
        Ok(false) => eprintln!("no connection-sweep scenario ran: no chart"),
        Err(e) => eprintln!("{e}"),
    }
    eprintln!(
        "wrote {} and report.md; took {:.1} s",
        dir.join("report.json").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `$CARGO_TARGET_DIR` if set, else this package's `target/`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}
