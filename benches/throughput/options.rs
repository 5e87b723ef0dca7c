//! The bench's command line (bench mode; the hidden `--serve` mode is parsed in `main`).

use std::time::Duration;

use crate::baseline::Baseline;

pub const HELP: &str = "\
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
                        servers reactor-pool, tokio-rustls; with a baseline, its servers are
                        SERVER@base, e.g. \"echo c1 64B d1 / reactor-pool@base\")
  --baseline-bench PATH another build of this bench binary (target/release/deps/throughput-*
                        of an older checkout): every echo scenario also runs reactor-pool@base
                        (and rp-inline@base, rp-concurrent@base where those run), PATH started
                        with the same hidden --serve arguments; a \"vs base\" column gives
                        new / old, paired by round
  --baseline-examples DIR
                        an older build's examples directory (target/release/examples):
                        echo_server@base, kv_server@base and http_hello@base run its binaries
                        beside echo_server, kv_server and http_hello (echo and resp/http
                        scenarios; with --quick, echo_server and echo_server@base run too)
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
pub struct Options {
    pub quick: bool,
    pub duration: Duration,
    pub warmup: Duration,
    pub runs: usize,
    pub filter: Option<String>,
    pub threads: usize,
    pub reactors: usize,
    pub workers: usize,
    pub client_threads: usize,
    pub stack_kib: usize,
    pub list: bool,
    /// `--baseline-bench`, `--baseline-examples`: the older build run beside this one.
    pub baseline: Baseline,
}

pub fn reject_leftovers(args: pico_args::Arguments) -> Result<(), String> {
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

pub fn parse_options(mut args: pico_args::Arguments) -> Result<Options, String> {
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
    let baseline = Baseline::new(
        args.opt_value_from_os_str("--baseline-bench", |s| {
            Ok::<_, String>(std::path::PathBuf::from(s))
        })
        .map_err(e)?,
        args.opt_value_from_os_str("--baseline-examples", |s| {
            Ok::<_, String>(std::path::PathBuf::from(s))
        })
        .map_err(e)?,
    )?;
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
        baseline,
    })
}
