//! The results: per scenario and server the median run, ratios, and the three outputs
//! (a table on stdout, report.json, report.md).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use serde::Serialize;

use crate::protocols::ProtoRun;
use crate::runner::RunMetrics;
pub use crate::tables::{markdown_table, text_table, Settings};

/// One workload.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub connections: usize,
    pub message_size: usize,
    /// Requests outstanding per connection.
    pub depth: usize,
    /// Handler sleep per request (the blocking workload), microseconds; 0 for plain echo.
    pub sleep_us: u64,
    /// Threads allowed to block in the handler (reactor-pool workers, tokio's blocking
    /// threads) in the blocking workload; 0 for plain echo.
    pub blocking_workers: usize,
    /// Pause between a reply and the connection's next request, milliseconds; 0 for a
    /// closed loop. Non-zero in the hold scenario.
    pub think_ms: u64,
    /// The measured window is at least this long whatever `--duration` says (the hold
    /// scenario: every connection pings at least twice).
    pub min_duration_s: f64,
    /// Over TLS (feature `tls`): the servers are reactor-pool with `Builder::tls` and
    /// tokio-rustls; the handshake is once per connection unless `reconnect`.
    #[serde(skip_serializing_if = "is_false")]
    pub tls: bool,
    /// Each connection sends one request, and once its echo is in closes (after TLS's
    /// close_notify) and a new connection takes its place: req/s counts connections, each
    /// with its handshake (the `tls handshakes` scenario). Latency is from the start of the
    /// connect to the echo.
    #[serde(skip_serializing_if = "is_false")]
    pub reconnect: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

impl Scenario {
    pub fn echo(connections: usize, message_size: usize, depth: usize) -> Scenario {
        Scenario {
            name: format!("echo c{connections} {} d{depth}", size_label(message_size)),
            connections,
            message_size,
            depth,
            sleep_us: 0,
            blocking_workers: 0,
            think_ms: 0,
            min_duration_s: 0.0,
            tls: false,
            reconnect: false,
        }
    }

    pub fn blocking(connections: usize, sleep_us: u64, workers: usize) -> Scenario {
        Scenario {
            name: format!("blocking c{connections} 64B d1 sleep{}ms", sleep_us / 1000),
            connections,
            message_size: 64,
            depth: 1,
            sleep_us,
            blocking_workers: workers,
            think_ms: 0,
            min_duration_s: 0.0,
            tls: false,
            reconnect: false,
        }
    }

    /// Many mostly idle connections: each sends a 64 B ping, waits for its echo, thinks
    /// `think_ms`, and so on, for at least `duration_s` (and at least 2.5 think times, so
    /// every connection pings at least twice in the window).
    pub fn hold(connections: usize, think_ms: u64, duration_s: f64) -> Scenario {
        Scenario::hold_sized(connections, 64, think_ms, duration_s)
    }

    /// [`Scenario::hold`] with `message_size`-byte pings: what an idle connection keeps
    /// after large exchanges (the settled RSS columns).
    pub fn hold_sized(
        connections: usize,
        message_size: usize,
        think_ms: u64,
        duration_s: f64,
    ) -> Scenario {
        let think = if think_ms % 1000 == 0 {
            format!("{}s", think_ms / 1000)
        } else {
            format!("{think_ms}ms")
        };
        Scenario {
            name: format!(
                "hold c{connections} {} think{think}",
                size_label(message_size)
            ),
            connections,
            message_size,
            depth: 1,
            sleep_us: 0,
            blocking_workers: 0,
            think_ms,
            min_duration_s: duration_s.max(2.5 * think_ms as f64 / 1000.0),
            tls: false,
            reconnect: false,
        }
    }

    /// [`Scenario::echo`] over TLS: one handshake per connection, then echoes.
    #[cfg(feature = "tls")]
    pub fn tls_echo(connections: usize, message_size: usize, depth: usize) -> Scenario {
        let echo = Scenario::echo(connections, message_size, depth);
        Scenario {
            name: format!("tls {}", echo.name),
            tls: true,
            ..echo
        }
    }

    /// Connections with a full TLS handshake, one 64 B echo and close_notify each, over and
    /// over, `connections` at a time.
    #[cfg(feature = "tls")]
    pub fn tls_handshakes(connections: usize) -> Scenario {
        Scenario {
            name: format!("tls handshakes c{connections}"),
            reconnect: true,
            ..Scenario::tls_echo(connections, 64, 1)
        }
    }

    pub fn is_hold(&self) -> bool {
        self.think_ms > 0
    }

    /// `workers / sleep`: what a pool of that many threads each sleeping per request allows.
    pub fn ideal_req_per_s(&self) -> Option<f64> {
        (self.sleep_us > 0).then(|| self.blocking_workers as f64 * 1e6 / self.sleep_us as f64)
    }

    /// Whether this scenario is a point of the connection sweep drawn in the chart.
    pub fn in_sweep(&self) -> bool {
        self.sleep_us == 0
            && self.think_ms == 0
            && self.message_size == 64
            && self.depth == 1
            && !self.tls
    }
}

pub fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{}KiB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}

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
    let tokio: Vec<(String, f64, Vec<f64>)> = outcomes
        .iter()
        .filter(|o| o.server == tokio_name(&o.scenario))
        .map(|o| {
            let runs = o.runs.iter().map(|r| r.req_per_s).collect();
            (o.scenario.name.clone(), o.median.req_per_s, runs)
        })
        .collect();
    for outcome in outcomes.iter_mut() {
        let Some((_, median, runs)) = tokio
            .iter()
            .find(|(name, _, _)| *name == outcome.scenario.name)
        else {
            continue;
        };
        outcome.vs_tokio = Some(outcome.median.req_per_s / median).filter(|r| r.is_finite());
        let mut paired: Vec<f64> = outcome
            .runs
            .iter()
            .zip(runs)
            .filter(|(_, &theirs)| theirs > 0.0)
            .map(|(ours, &theirs)| ours.req_per_s / theirs)
            .collect();
        paired.sort_by(f64::total_cmp);
        outcome.vs_tokio_paired = match paired.len() {
            0 => None,
            n if n % 2 == 1 => Some(paired[n / 2]),
            n => Some((paired[n / 2 - 1] + paired[n / 2]) / 2.0),
        };
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

const HEADERS: [&str; 17] = [
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
    "cli CPU s",
    "bg CPU s",
    "srv RSS MiB",
    "srv thr",
    "vs tokio",
    "paired",
    "of ideal",
];

/// The columns of the hold scenarios' table.
const HOLD_HEADERS: [&str; 19] = [
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
        format!("{:.2}", m.client_cpu_s),
        format!("{:.2}", m.background_cpu_s),
        mib(m.server_peak_rss_kib),
        m.server_threads.to_string(),
        ratio(o.vs_tokio),
        ratio(o.vs_tokio_paired),
        ratio(o.of_ideal),
    ]
}

fn hold_row(o: &Outcome) -> Vec<String> {
    let m = &o.median;
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
const HANDSHAKE_HEADERS: [&str; 15] = [
    "scenario",
    "server",
    "handshakes/s",
    "p50 us",
    "p99 us",
    "p999 us",
    "errors",
    "srv CPU s",
    "srv us/hs",
    "cli CPU s",
    "bg CPU s",
    "srv RSS MiB",
    "srv thr",
    "vs tokio",
    "paired",
];

fn handshake_row(o: &Outcome) -> Vec<String> {
    // The echo row without its MB/s and "of ideal" columns.
    let mut cells = row(o);
    cells.remove(3);
    cells.pop();
    cells
}

type Table = (&'static [&'static str], Vec<Vec<String>>);

/// The closed-loop outcomes (main table), the hold ones and the reconnecting ones, with
/// their rows.
fn tables(outcomes: &[Outcome]) -> [Table; 3] {
    let main = outcomes
        .iter()
        .filter(|o| !o.scenario.is_hold() && !o.scenario.reconnect)
        .map(row);
    let hold = outcomes
        .iter()
        .filter(|o| o.scenario.is_hold())
        .map(hold_row);
    let handshakes = outcomes
        .iter()
        .filter(|o| o.scenario.reconnect)
        .map(handshake_row);
    [
        (&HEADERS, main.collect()),
        (&HOLD_HEADERS, hold.collect()),
        (&HANDSHAKE_HEADERS, handshakes.collect()),
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
        text_table(headers, &rows, &mut out);
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
    let [(headers, rows), (hold_headers, hold_rows), (hs_headers, hs_rows)] =
        tables(&report.outcomes);
    if !rows.is_empty() {
        markdown_table(headers, &rows, &mut md);
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
             - **vs tokio**: median req/s over tokio's in the same scenario; **paired**: the \
             median over rounds of this server's req/s over tokio's in the same round (runs of \
             a round are back to back, so a slow stretch of the machine cancels out); **of \
             ideal**: over \
             `workers / sleep` (the blocking workload; the thread-per-connection server is not \
             bound by it: every connection has its own sleeping thread).\n",
        );
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
        markdown_table(hold_headers, &hold_rows, &mut md);
        md.push_str(
            "\n- **conns**: connections established; **served**: connections that had at \
             least one correct echo in the measured window (a connection with none counts as \
             an error); **connect s**: from the start of the load until every connection was \
             established (or had failed).\n\
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
        markdown_table(hs_headers, &hs_rows, &mut md);
        md.push_str(
            "\n- **handshakes/s**: connections per second that completed all of it (connect, \
             handshake, a correct echo) in the measured window; **p50/p99/p999**: from the \
             start of the connect to the echo's last byte, in microseconds; **srv us/hs**: \
             server CPU time per connection; **vs tokio**, **paired**: against \
             tokio-rustls, as in the first table.\n",
        );
    }
    crate::protocols::markdown(&report.protocols, &report.protocols_skipped, s, &mut md);
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
