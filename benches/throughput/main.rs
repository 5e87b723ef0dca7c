//! Throughput benchmark: reactor-pool's echo server against a thread-per-connection server
//! and a tokio server, each in its own process, under a closed-loop load generator.
//!
//! ```text
//! cargo bench --bench throughput               # full run, about 5-10 minutes on 2 cores
//! cargo bench --bench throughput -- --quick    # smoke run, under a minute (CI)
//! cargo bench --bench throughput -- --filter "c100 " --runs 1 --duration 2
//! cargo bench --bench throughput -- --list     # the scenario / server pairs
//! cargo bench --bench throughput --features tls -- --filter "tls"   # the TLS scenarios
//! # A/B against an older build (built with --all-features --examples --benches):
//! cargo bench --bench throughput --all-features -- --quick \
//!     --baseline-bench OLD/release/deps/throughput-HASH --baseline-examples OLD/release/examples
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
//! the figures next to it. "cs/req" is the server's context switches (voluntary +
//! nonvoluntary, summed over /proc/PID/task/*/status of every thread of every process of the
//! server) from the window's start to its end, over the requests of the window; "wakes/req"
//! counts the voluntary ones only (a thread blocked and had to be woken). Both are sampled
//! where the server's CPU time is, right after it; a thread that exits within the window
//! takes its count with it. The protocol tables have them too (the window there is the load
//! tool's run), the downloads per download, the fan-out per delivery.
//!
//! **A/B** (`baseline.rs`): `--baseline-bench PATH` (another build of this bench binary)
//! adds `reactor-pool@base`, `rp-inline@base` and `rp-concurrent@base` to every plain echo
//! scenario, PATH started with the same hidden `--serve ...` arguments as this bench's own
//! children; `--baseline-examples DIR` (another build's `target/release/examples`) adds
//! `echo_server@base` there (in quick mode too, with echo_server) and `kv_server@base` and
//! `http_hello@base` to the resp and http scenarios. A baseline server runs right after its
//! counterpart in each round, the two swapping places every other round; its ratios to
//! tokio, redis-server and nginx are reported like any server's, and its counterpart's row
//! has `vs base` (new / old req/s, the median of the per-round ratios). Each server's binary
//! is checked against /proc/PID/exe, and a baseline server's progress line shows it.
//! The blocking, hold, TLS, download and fan-out scenarios have no baseline server.
//!
//! **Protocols** (`protocols.rs`, scenarios `resp c50 P1`, `resp c50 P16`, `http c100`,
//! `http c1000`): `examples/kv_server.rs` against redis-server under redis-benchmark (once per
//! test, so each test has its own window for cs/req), and `examples/http_hello.rs` against
//! nginx under wrk, one run per server, in tables of their own (`proto_report.rs`). Quick mode runs a small form of them (`-n 2000` / `-n 20000`, `http c100` for 1 s);
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

mod baseline;
mod chart;
mod client;
mod download_report;
mod downloads;
mod echo;
mod fanout;
mod load;
mod loadgen;
mod options;
mod peers;
mod procfs;
mod proto_report;
mod protocols;
mod pubsub;
mod report;
mod rounds;
mod runner;
mod scenario;
mod schedule;
mod servers;
mod tables;
#[cfg(feature = "tls")]
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use options::{parse_options, reject_leftovers, Options, HELP};
use report::{Report, Scenario, Settings};
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

/// A scenario run against a pair of servers, ours and the reference (redis-server, nginx),
/// and in the protocol scenarios our baseline's (`--baseline-examples`) between them.
pub trait ServerPair {
    fn servers(&self) -> Vec<&'static str>;
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

fn bench_mode(opts: &Options) -> Result<(), String> {
    let started = Instant::now();
    let fd_limit = raise_fd_limit();
    let plan = echo::plan(opts, matrix(opts.quick));
    let filter = opts.filter.as_deref();
    let proto_plan = select(
        protocols::matrix(
            opts.quick,
            opts.duration.as_secs_f64().round() as u64,
            opts.baseline.examples.is_some(),
        ),
        filter,
    );
    let download_plan = select(downloads::matrix(opts.quick), filter);
    let fanout_plan = select(fanout::matrix(opts.duration, opts.warmup), filter);
    if opts.list {
        for (s, servers) in &plan {
            for &server in servers {
                println!("{}", echo::label(s, server));
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
    // The example binaries this run starts, built once before the first run, and those it
    // starts from the baseline's directory.
    let mut examples: Vec<&str> = Vec::new();
    let mut base_examples: Vec<&str> = Vec::new();
    let (echo_example, echo_example_base) = echo::examples(&plan);
    if echo_example {
        examples.push("echo_server");
    }
    if echo_example_base {
        base_examples.push("echo_server");
    }
    let servers = proto_plan
        .iter()
        .flat_map(|(_, servers)| servers)
        .chain(download_plan.iter().flat_map(|(_, servers)| servers))
        .chain(fanout_plan.iter().flat_map(|(_, servers)| servers));
    for &server in servers {
        let (name, list) = if baseline::is_base(server) {
            (baseline::current(server), &mut base_examples)
        } else {
            (server, &mut examples)
        };
        if protocols::is_example(name) && !list.contains(&name) {
            list.push(name);
        }
    }
    opts.baseline
        .check_examples(base_examples.iter().copied())?;
    if !examples.is_empty() {
        runner::build_examples(&examples).map_err(|e| e.to_string())?;
    }
    let total: usize = plan.iter().map(|(_, k)| k.len() * opts.runs).sum();
    let proto_total: usize = proto_plan.iter().map(|(_, s)| s.len()).sum::<usize>()
        + (download_plan.iter().map(|(_, s)| s.len()).sum::<usize>()
            + fanout_plan.iter().map(|(_, s)| s.len()).sum::<usize>())
            * opts.runs;
    echo::note_skipped(opts, &plan);
    eprintln!(
        "throughput: {} mode, {total} runs of {:?} (+{:?} warm-up) and {proto_total} protocol \
         runs, fd limit {fd_limit}",
        if opts.quick { "quick" } else { "full" },
        opts.duration,
        opts.warmup
    );
    for line in opts.baseline.describe() {
        eprintln!("{line}");
    }
    let mut outcomes = echo::run_all(opts, &plan, fd_limit, total)?;
    report::set_tokio_ratios(&mut outcomes);
    baseline::set_base_ratios(&mut outcomes);
    let dir = target_dir().join("bench");
    let proto_settings = |name: &str| protocols::ProtoSettings {
        reactors: opts.reactors,
        workers: opts.workers,
        threads: opts.threads,
        dir: dir.join(name),
        baseline_examples: opts.baseline.examples.clone(),
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
            baseline_bench: opts
                .baseline
                .bench
                .as_ref()
                .map(|p| p.display().to_string()),
            baseline_examples: opts
                .baseline
                .examples
                .as_ref()
                .map(|p| p.display().to_string()),
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
        proto_report::text(&report.protocols, &report.protocols_skipped)
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
