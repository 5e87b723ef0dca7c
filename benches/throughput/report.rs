//! The results: per scenario and server the median run, ratios, and the three outputs
//! (a table on stdout, report.json, report.md).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use serde::Serialize;

use crate::baseline;
use crate::procfs::per_request_cells;
use crate::protocols::ProtoRun;
use crate::runner::RunMetrics;
pub use crate::scenario::Scenario;
pub use crate::tables::{markdown_table, text_table, Settings};

/// One server in one scenario, over all its runs.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: Scenario,
    pub server: String,
    /// The run with the median req/s (the lower middle one for an even count).
    pub median: RunMetrics,
    /// Every run, in the order they ran.
    pub runs: Vec<RunMetrics>,
    /// Runs that could not run at all (the server did not start...), with the reason.
    pub failed_runs: Vec<String>,
    /// Errors summed over all runs (the median's own are in `median.errors`).
    pub errors_all_runs: u64,
    /// Median req/s over tokio's median req/s in the same scenario.
    pub vs_tokio: Option<f64>,
    /// The median over runs of (this run's req/s / tokio's run of the same round): runs of
    /// one round are measured back to back, so a slow stretch of the machine touches both
    /// sides of a pair and cancels out of its ratio.
    pub vs_tokio_paired: Option<f64>,
    /// Median req/s over the scenario's ideal (blocking workload only).
    pub of_ideal: Option<f64>,
    /// The median over rounds of this server's req/s over its baseline's (`SERVER@base`)
    /// in the same round; `None` without a baseline.
    pub vs_base: Option<f64>,
}

impl Outcome {
    pub fn new(
        scenario: &Scenario,
        server: &str,
        runs: Vec<RunMetrics>,
        failed: Vec<String>,
    ) -> Self {
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|&a, &b| runs[a].req_per_s.total_cmp(&runs[b].req_per_s));
        let median = match order.len() {
            0 => RunMetrics::default(),
            n => runs[order[(n - 1) / 2]].clone(),
        };
        let errors_all_runs = runs.iter().map(|r| r.errors).sum();
        let of_ideal = scenario
            .ideal_req_per_s()
            .map(|ideal| median.req_per_s / ideal);
        Outcome {
            scenario: scenario.clone(),
            server: server.to_string(),
            median,
            runs,
            failed_runs: failed,
            errors_all_runs,
            vs_tokio: None,
            vs_tokio_paired: None,
            of_ideal,
            vs_base: None,
        }
    }
}

/// The tokio server's name in the report: tokio-rustls in the TLS scenarios.
pub fn tokio_name(scenario: &Scenario) -> &'static str {
    if scenario.tls {
        "tokio-rustls"
    } else {
        "tokio"
    }
}

/// Fills in each outcome's ratios to tokio's (tokio-rustls's) in the same scenario.
pub fn set_tokio_ratios(outcomes: &mut [Outcome]) {
    let ratios: Vec<(Option<f64>, Option<f64>)> = outcomes
        .iter()
        .map(|o| {
            let tokio = outcomes.iter().find(|t| {
                t.scenario.name == o.scenario.name && t.server == tokio_name(&t.scenario)
            });
            tokio.map_or((None, None), |t| {
                let median =
                    Some(o.median.req_per_s / t.median.req_per_s).filter(|r| r.is_finite());
                (median, baseline::paired_ratio(o, t))
            })
        })
        .collect();
    for (outcome, (median, paired)) in outcomes.iter_mut().zip(ratios) {
        outcome.vs_tokio = median;
        outcome.vs_tokio_paired = paired;
    }
}

/// Server CPU time per request in microseconds: efficiency that time stolen by the
/// hypervisor does not distort the way it distorts req/s.
fn cpu_us_per_request(m: &RunMetrics) -> String {
    if m.requests == 0 {
        return "-".into();
    }
    format!("{:.2}", m.server_cpu_s * 1e6 / m.requests as f64)
}

/// Everything written to report.json.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub settings: Settings,
    pub generated_unix_s: u64,
    pub wall_s: f64,
    pub outcomes: Vec<Outcome>,
    /// The protocol scenarios (`protocols.rs`): one run per server.
    pub protocols: Vec<ProtoRun>,
    /// Protocol runs skipped because a tool or peer server is not installed.
    pub protocols_skipped: Vec<String>,
    /// The download scenarios (`downloads.rs`).
    pub downloads: Vec<crate::downloads::DownloadOutcome>,
    pub downloads_skipped: Vec<String>,
    /// The pub/sub fan-out scenario (`fanout.rs`).
    pub fanout: Vec<crate::fanout::FanoutOutcome>,
    pub fanout_skipped: Vec<String>,
}

/// The columns of the closed-loop table (`vs base` only when a baseline ran).
const HEADERS: [&str; 20] = [
    "scenario",
    "server",
    "req/s",
    "MB/s",
    "p50 us",
    "p99 us",
    "p999 us",
    "errors",
    "srv CPU s",
    "srv us/req",
    "cs/req",
    "wakes/req",
    "cli CPU s",
    "bg CPU s",
    "srv RSS MiB",
    "srv thr",
    "vs tokio",
    "paired",
    "of ideal",
    "vs base",
];

/// The columns of the hold scenarios' table.
const HOLD_HEADERS: [&str; 21] = [
    "scenario",
    "server",
    "conns",
    "served",
    "connect s",
    "req/s",
    "p50 us",
    "p99 us",
    "p999 us",
    "errors",
    "srv CPU s",
    "cs/req",
    "wakes/req",
    "bg CPU s",
    "idle RSS MiB",
    "peak RSS MiB",
    "RSS/conn KiB",
    "settled RSS MiB",
    "settled/conn KiB",
    "srv thr",
    "cli lag p99 us",
];

fn ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}"))
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn errors(o: &Outcome) -> String {
    if o.failed_runs.is_empty() {
        o.errors_all_runs.to_string()
    } else {
        format!("{} +{} failed runs", o.errors_all_runs, o.failed_runs.len())
    }
}

fn row(o: &Outcome) -> Vec<String> {
    let m = &o.median;
    let [cs, wakes] = per_request_cells(m.per_request);
    vec![
        o.scenario.name.clone(),
        o.server.clone(),
        format!("{:.0}", m.req_per_s),
        format!("{:.2}", m.mb_per_s),
        m.p50_us.to_string(),
        m.p99_us.to_string(),
        m.p999_us.to_string(),
        errors(o),
        format!("{:.2}", m.server_cpu_s),
        cpu_us_per_request(m),
        cs,
        wakes,
        format!("{:.2}", m.client_cpu_s),
        format!("{:.2}", m.background_cpu_s),
        mib(m.server_peak_rss_kib),
        m.server_threads.to_string(),
        ratio(o.vs_tokio),
        ratio(o.vs_tokio_paired),
        ratio(o.of_ideal),
        ratio(o.vs_base),
    ]
}

fn hold_row(o: &Outcome) -> Vec<String> {
    let m = &o.median;
    let [cs, wakes] = per_request_cells(m.per_request);
    vec![
        o.scenario.name.clone(),
        o.server.clone(),
        m.connections.to_string(),
        m.served.to_string(),
        format!("{:.2}", m.connect_s),
        format!("{:.0}", m.req_per_s),
        m.p50_us.to_string(),
        m.p99_us.to_string(),
        m.p999_us.to_string(),
        errors(o),
        format!("{:.2}", m.server_cpu_s),
        cs,
        wakes,
        format!("{:.2}", m.background_cpu_s),
        mib(m.server_idle_rss_kib),
        mib(m.server_peak_rss_kib),
        format!("{:.2}", m.rss_per_conn_kib),
        mib(m.server_settled_rss_kib),
        format!("{:.2}", m.settled_rss_per_conn_kib),
        m.server_threads.to_string(),
        m.send_lag_p99_us.to_string(),
    ]
}

/// The columns of the reconnecting (TLS handshake) scenarios' table.
const HANDSHAKE_HEADERS: [&str; 17] = [
    "scenario",
    "server",
    "handshakes/s",
    "p50 us",
    "p99 us",
    "p999 us",
    "errors",
    "srv CPU s",
    "srv us/hs",
    "cs/hs",
    "wakes/hs",
    "cli CPU s",
    "bg CPU s",
    "srv RSS MiB",
    "srv thr",
    "vs tokio",
    "paired",
];

fn handshake_row(o: &Outcome) -> Vec<String> {
    // The echo row without its MB/s, "of ideal" and "vs base" columns.
    let mut cells = row(o);
    cells.remove(3);
    cells.truncate(HANDSHAKE_HEADERS.len());
    cells
}

type Table = (Vec<&'static str>, Vec<Vec<String>>);

/// The closed-loop outcomes (main table; `vs base` only when a baseline ran), the hold
/// ones and the reconnecting ones, with their rows.
fn tables(outcomes: &[Outcome]) -> [Table; 3] {
    let with_base = outcomes.iter().any(|o| baseline::is_base(&o.server));
    let width = HEADERS.len() - usize::from(!with_base);
    let main = outcomes
        .iter()
        .filter(|o| !o.scenario.is_hold() && !o.scenario.reconnect)
        .map(|o| {
            let mut cells = row(o);
            cells.truncate(width);
            cells
        });
    let hold = outcomes
        .iter()
        .filter(|o| o.scenario.is_hold())
        .map(hold_row);
    let handshakes = outcomes
        .iter()
        .filter(|o| o.scenario.reconnect)
        .map(handshake_row);
    [
        (HEADERS[..width].to_vec(), main.collect()),
        (HOLD_HEADERS.to_vec(), hold.collect()),
        (HANDSHAKE_HEADERS.to_vec(), handshakes.collect()),
    ]
}

/// The plain-text tables printed on stdout: closed loop, hold, then handshakes (each only
/// if it ran).
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for (headers, rows) in tables(outcomes) {
        if rows.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        text_table(&headers, &rows, &mut out);
    }
    out
}

/// report.md: the settings, the tables, and what each column means.
pub fn markdown(report: &Report) -> String {
    let s = &report.settings;
    let mut md = String::new();
    let _ = writeln!(md, "# reactor-pool throughput ({} mode)\n", s.mode);
    let _ = writeln!(
        md,
        "{} cores; {} s measured per run after {} s of warm-up; median of {} run(s); \
         load generator: {} threads; whole run took {:.0} s.\n",
        s.cores, s.duration_s, s.warmup_s, s.runs, s.client_threads, report.wall_s
    );
    let _ = writeln!(
        md,
        "Thread budget: tokio {t} worker threads; reactor-pool {r} reactor(s) + {w} workers \
         (echo) or {b} workers (blocking workload); thread-per-conn: one thread per \
         connection ({k} KiB stacks). In the blocking workload tokio runs the sleep in \
         `spawn_blocking` with at most {b} blocking threads.\n",
        t = s.server_threads,
        r = s.reactors,
        w = s.echo_workers,
        b = s.blocking_workers,
        k = s.thread_stack_kib
    );
    if let Some(filter) = &s.filter {
        let _ = writeln!(md, "Scenarios filtered by `{filter}`.\n");
    }
    if let Some(bench) = &s.baseline_bench {
        let _ = writeln!(
            md,
            "Baseline bench (`@base` reactor-pool servers): `{bench}`.\n"
        );
    }
    if let Some(dir) = &s.baseline_examples {
        let _ = writeln!(
            md,
            "Baseline examples (`@base` example servers): `{dir}`.\n"
        );
    }
    let [(headers, rows), (hold_headers, hold_rows), (hs_headers, hs_rows)] =
        tables(&report.outcomes);
    if !rows.is_empty() {
        markdown_table(&headers, &rows, &mut md);
        md.push_str(
            "\n- **req/s**: requests whose whole echo came back, byte for byte correct, during \
             the measured window, per second. A request is one message of the scenario's size.\n\
             - **MB/s**: echoed payload in 10^6 bytes per second, counted once (req/s × message \
             size); the loopback carries it twice, once each way.\n\
             - **p50/p99/p999**: latency from queuing a request to receiving the last byte of \
             its echo, in microseconds, over every request of the measured window (all threads \
             merged).\n\
             - **errors**: failed connects + connections lost + mismatched replies + requests \
             never answered + connections that had no reply in the whole measured window, \
             summed over all runs.\n\
             - **srv CPU s**: the server process's user + system CPU time during the measured \
             window (of the median run); **srv us/req**: that CPU time per request, in \
             microseconds (efficiency that hypervisor steal distorts less than req/s); **srv \
             RSS MiB**: its peak resident set (VmHWM); \
             **srv thr**: its threads; **cli CPU s**: the load generator's CPU time; **bg CPU \
             s**: CPU time the machine spent on anything else in that window (other processes, \
             hypervisor steal): the noise.\n\
             - **cs/req**: the server's context switches during the measured window, voluntary \
             + nonvoluntary, summed over every thread of its process (/proc/PID/task/*/status, \
             sampled at the window's start and end, right after its CPU time), divided by the \
             requests of the window; **wakes/req**: the voluntary ones only, the times a server \
             thread blocked (epoll_wait, a futex, a read) and had to be woken. A thread that \
             exits during the window takes its count with it (it is missing from the end's \
             sum); one that starts during it counts from zero.\n\
             - **vs tokio**: median req/s over tokio's in the same scenario; **paired**: the \
             median over rounds of this server's req/s over tokio's in the same round (runs of \
             a round are back to back, so a slow stretch of the machine cancels out); **of \
             ideal**: over \
             `workers / sleep` (the blocking workload; the thread-per-connection server is not \
             bound by it: every connection has its own sleeping thread).\n",
        );
        if report.outcomes.iter().any(|o| baseline::is_base(&o.server)) {
            md.push_str(
                "- **SERVER@base**: the same server from the baseline build (`--baseline-bench`: \
                 another build of this bench started with the same `--serve` arguments; \
                 `--baseline-examples`: another build's echo_server), in the same rounds; it \
                 swaps places with its counterpart every other round. **vs base**: the median \
                 over rounds of this server's req/s over its baseline's in the same round \
                 (new / old).\n",
            );
        }
        if report.outcomes.iter().any(|o| o.scenario.tls) {
            md.push_str(
                "- **tls** scenarios: reactor-pool with `Builder::tls` against tokio-rustls \
                 (same thread budget as tokio, same rustls ServerConfig, ring provider, \
                 TLS 1.3); the handshake is once per connection, in the warm-up; **vs tokio** is \
                 against tokio-rustls.\n",
            );
        }
    }
    if !hold_rows.is_empty() {
        let mut windows: Vec<String> = report
            .outcomes
            .iter()
            .filter(|o| o.scenario.is_hold())
            .map(|o| format!("{:.1}", o.median.measured_s))
            .collect();
        windows.dedup();
        let _ = writeln!(
            md,
            "\n## Hold: many mostly idle connections\n\n\
             Each connection sends a 64 B ping, waits for its echo, then thinks (the scenario's \
             think time) before the next one. Its first ping goes out as soon as it is \
             established (the echo proves the server accepted it, which paces the connects), \
             the second at a random point of the first think period, so pings are spread \
             evenly over time. Measured window: {} s (at least 2.5 think times, so every \
             connection pings at least twice in it).\n",
            windows.join(" / ")
        );
        markdown_table(&hold_headers, &hold_rows, &mut md);
        md.push_str(
            "\n- **conns**: connections established; **served**: connections that had at \
             least one correct echo in the measured window (a connection with none counts as \
             an error); **connect s**: from the start of the load until every connection was \
             established (or had failed); **cs/req**, **wakes/req**: as in the first table, \
             per ping.\n\
             - **idle RSS MiB**: the server's resident set (VmRSS) right after it started, with \
             no connection; **peak RSS MiB**: its peak (VmHWM) over the run; **RSS/conn KiB**: \
             (peak - idle) / conns: the user-space memory one connection costs the server \
             (kernel socket buffers are not in it).\n\
             - **cli lag p99 us**: how late the load generator sent pings after their due time \
             (its own poll granularity and load), 99th percentile; the latencies start at the \
             actual send.\n",
        );
    }
    if !hs_rows.is_empty() {
        md.push_str(
            "\n## TLS handshakes: a new connection per request\n\n\
             Each client connection connects, does a full TLS handshake (the client never \
             resumes a session), sends one 64 B request, waits for its echo, sends \
             close_notify and closes; a new connection takes its place at once, so as many \
             connections as the scenario says are always in flight.\n\n",
        );
        markdown_table(&hs_headers, &hs_rows, &mut md);
        md.push_str(
            "\n- **handshakes/s**: connections per second that completed all of it (connect, \
             handshake, a correct echo) in the measured window; **p50/p99/p999**: from the \
             start of the connect to the echo's last byte, in microseconds; **srv us/hs**: \
             server CPU time per connection; **cs/hs**, **wakes/hs**: the server's context \
             switches and wake-ups per connection, as cs/req and wakes/req in the first table; **vs tokio**, **paired**: against \
             tokio-rustls, as in the first table.\n",
        );
    }
    crate::proto_report::markdown(&report.protocols, &report.protocols_skipped, s, &mut md);
    crate::download_report::markdown(&report.downloads, &report.downloads_skipped, s, &mut md);
    crate::fanout::markdown(&report.fanout, &report.fanout_skipped, s, &mut md);
    if !report.outcomes.is_empty() {
        let unit = if hs_rows.is_empty() {
            ""
        } else {
            " (handshakes/s in the handshake scenarios)"
        };
        let _ = writeln!(md, "\nPer-run req/s{unit}:\n");
    }
    for o in &report.outcomes {
        let runs: Vec<String> = o
            .runs
            .iter()
            .map(|r| format!("{:.0}", r.req_per_s))
            .collect();
        let _ = writeln!(
            md,
            "- {} / {}: {}",
            o.scenario.name,
            o.server,
            runs.join(", ")
        );
    }
    md
}

/// Writes report.json and report.md into `dir`.
pub fn write_files(dir: &Path, report: &Report) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    fs::write(dir.join("report.json"), json + "\n")?;
    fs::write(dir.join("report.md"), markdown(report))?;
    Ok(())
}
