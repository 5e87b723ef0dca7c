//! The results: per scenario and server the median run, ratios, and the three outputs
//! (a table on stdout, report.json, report.md).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use serde::Serialize;

use crate::runner::RunMetrics;

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
        }
    }

    /// `workers / sleep`: what a pool of that many threads each sleeping per request allows.
    pub fn ideal_req_per_s(&self) -> Option<f64> {
        (self.sleep_us > 0).then(|| self.blocking_workers as f64 * 1e6 / self.sleep_us as f64)
    }

    /// Whether this scenario is a point of the connection sweep drawn in the chart.
    pub fn in_sweep(&self) -> bool {
        self.sleep_us == 0 && self.message_size == 64 && self.depth == 1
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
            of_ideal,
        }
    }
}

/// Fills in each outcome's ratio to tokio's in the same scenario.
pub fn set_tokio_ratios(outcomes: &mut [Outcome]) {
    let tokio: Vec<(String, f64)> = outcomes
        .iter()
        .filter(|o| o.server == "tokio")
        .map(|o| (o.scenario.name.clone(), o.median.req_per_s))
        .collect();
    for outcome in outcomes.iter_mut() {
        outcome.vs_tokio = tokio
            .iter()
            .find(|(name, _)| *name == outcome.scenario.name)
            .filter(|(_, rps)| *rps > 0.0)
            .map(|(_, rps)| outcome.median.req_per_s / rps);
    }
}

/// The settings a report was made with.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub mode: String,
    pub cores: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub runs: usize,
    pub client_threads: usize,
    /// Tokio worker threads, and reactor-pool's worker threads in the echo scenarios.
    pub server_threads: usize,
    pub reactors: usize,
    pub echo_workers: usize,
    /// reactor-pool workers and tokio blocking threads in the blocking workload.
    pub blocking_workers: usize,
    pub thread_stack_kib: usize,
    pub filter: Option<String>,
}

/// Everything written to report.json.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub settings: Settings,
    pub generated_unix_s: u64,
    pub wall_s: f64,
    pub outcomes: Vec<Outcome>,
}

const HEADERS: [&str; 15] = [
    "scenario",
    "server",
    "req/s",
    "MB/s",
    "p50 us",
    "p99 us",
    "p999 us",
    "errors",
    "srv CPU s",
    "cli CPU s",
    "bg CPU s",
    "srv RSS MiB",
    "srv thr",
    "vs tokio",
    "of ideal",
];

fn ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}"))
}

fn row(o: &Outcome) -> [String; 15] {
    let m = &o.median;
    [
        o.scenario.name.clone(),
        o.server.clone(),
        format!("{:.0}", m.req_per_s),
        format!("{:.2}", m.mb_per_s),
        m.p50_us.to_string(),
        m.p99_us.to_string(),
        m.p999_us.to_string(),
        if o.failed_runs.is_empty() {
            o.errors_all_runs.to_string()
        } else {
            format!("{} +{} failed runs", o.errors_all_runs, o.failed_runs.len())
        },
        format!("{:.2}", m.server_cpu_s),
        format!("{:.2}", m.client_cpu_s),
        format!("{:.2}", m.background_cpu_s),
        format!("{:.1}", m.server_peak_rss_kib as f64 / 1024.0),
        m.server_threads.to_string(),
        ratio(o.vs_tokio),
        ratio(o.of_ideal),
    ]
}

/// The plain-text table printed on stdout.
pub fn table(outcomes: &[Outcome]) -> String {
    let rows: Vec<[String; 15]> = outcomes.iter().map(row).collect();
    let mut widths = HEADERS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let sep = if i == 0 { "" } else { "  " };
            // Text columns left-aligned, numbers right-aligned.
            if i < 2 {
                let _ = write!(out, "{sep}{cell:<w$}");
            } else {
                let _ = write!(out, "{sep}{cell:>w$}");
            }
        }
        out.push('\n');
    };
    line(&HEADERS.map(String::from), &mut out);
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for r in &rows {
        line(r, &mut out);
    }
    out
}

/// report.md: the settings, the table, and what each column means.
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
    let _ = writeln!(md, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(
        md,
        "|{}",
        HEADERS
            .iter()
            .enumerate()
            .map(|(i, _)| if i < 2 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for o in &report.outcomes {
        let _ = writeln!(md, "| {} |", row(o).join(" | "));
    }
    md.push_str(
        "\n- **req/s**: requests whose whole echo came back, byte for byte correct, during the \
         measured window, per second. A request is one message of the scenario's size.\n\
         - **MB/s**: echoed payload in 10^6 bytes per second, counted once (req/s × message \
         size); the loopback carries it twice, once each way.\n\
         - **p50/p99/p999**: latency from queuing a request to receiving the last byte of its \
         echo, in microseconds, over every request of the measured window (all threads merged).\n\
         - **errors**: failed connects + connections lost + mismatched replies + requests never \
         answered, summed over all runs.\n\
         - **srv CPU s**: the server process's user + system CPU time during the measured \
         window (of the median run); **srv RSS MiB**: its peak resident set (VmHWM); \
         **srv thr**: its threads; **cli CPU s**: the load generator's CPU time; **bg CPU s**: \
         CPU time the machine spent on anything else in that window (other processes, \
         hypervisor steal): the noise.\n\
         - **vs tokio**: median req/s over tokio's in the same scenario; **of ideal**: over \
         `workers / sleep` (the blocking workload; the thread-per-connection server is not \
         bound by it: every connection has its own sleeping thread).\n",
    );
    let _ = writeln!(md, "\nPer-run req/s:\n");
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
