//! The pub/sub fan-out scenario, `fanout 1x1000`: kv_server's `SUBSCRIBE`/`PUBLISH`
//! (messages pushed to the subscribers with `Pusher`) against redis-server's, one publisher
//! and 1,000 subscribers of one channel, driven by the bench's own load generator
//! (`pubsub.rs`: the publisher closed loop within a delivery window of
//! [`pubsub::WINDOW`] messages, 64-byte payloads carrying their send time).
//!
//! Servers as in the protocol scenarios: kv_server with the bench's `--reactors` and
//! `--workers`, redis-server with `--io-threads 1`, `--save ""`, `--appendonly no`. The
//! subscribers are spread over `--client-threads` mio loops. Measured for `--duration` (1 s
//! in quick mode) after `--warmup`; rounds alternate the servers, the first changing every
//! round; the median round (by deliveries per second) is reported per server.

use std::fmt::Write as _;
use std::fs;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procfs::{self, Sample};
use crate::protocols::{self, ProtoSettings};
use crate::pubsub::{self, Event, FanoutConfig};
use crate::rounds;
use crate::ServerPair;

/// Subscribers of the scenario.
const SUBSCRIBERS: usize = 1000;

/// One fan-out workload.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutScenario {
    pub name: String,
    pub subscribers: usize,
    pub window: u64,
    pub payload_bytes: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
}

impl crate::ServerPair for FanoutScenario {
    /// (ours, the reference).
    fn servers(&self) -> Vec<&'static str> {
        vec!["kv_server", "redis-server"]
    }

    fn label(&self, server: &str) -> String {
        format!("{} / {server}", self.name)
    }
}

/// The fan-out scenario measured for `duration`, after `warmup`.
pub fn matrix(duration: Duration, warmup: Duration) -> Vec<FanoutScenario> {
    vec![FanoutScenario {
        name: format!("fanout 1x{SUBSCRIBERS}"),
        subscribers: SUBSCRIBERS,
        window: pubsub::WINDOW,
        payload_bytes: pubsub::PAYLOAD_LEN,
        duration_s: duration.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
    }]
}

/// One round of one server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FanoutRun {
    pub round: usize,
    pub subscribe_s: f64,
    pub measured_s: f64,
    /// Deliveries (a message received by one subscriber) per second, measured window.
    pub delivered_per_s: f64,
    /// Messages published per second, measured window.
    pub published_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub published: u64,
    pub delivered: u64,
    /// (message, subscriber) pairs never received.
    pub lost: u64,
    pub errors: Vec<String>,
    pub server_cpu_s: f64,
    /// The server's context switches (voluntary + nonvoluntary) in the measured window, per
    /// delivery.
    pub ctx_per_delivery: f64,
    /// The voluntary ones only (a thread blocked and was woken), per delivery.
    pub wakes_per_delivery: f64,
    pub peak_rss_kib: u64,
    pub client_cpu_s: f64,
    pub background_cpu_s: f64,
}

/// One server over its rounds.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutOutcome {
    pub scenario: FanoutScenario,
    pub server: String,
    pub runs: Vec<FanoutRun>,
    /// Rounds that failed outright.
    pub failed: Vec<String>,
    /// The run with the median deliveries per second.
    pub median: Option<FanoutRun>,
    /// The median over rounds of p50 and p99 (each on its own).
    pub p50_us: u64,
    pub p99_us: u64,
    /// Median deliveries/s over redis-server's.
    pub vs_redis: Option<f64>,
    /// The median over rounds of this server's deliveries/s over redis-server's in the
    /// same round.
    pub paired: Option<f64>,
    /// Median p99 over redis-server's median p99 (lower is better).
    pub p99_vs_redis: Option<f64>,
}

/// Runs every (scenario, server) of `plan` for `rounds` rounds.
pub fn run_all(
    plan: &[(FanoutScenario, Vec<&'static str>)],
    settings: &ProtoSettings,
    client_threads: usize,
    rounds: usize,
) -> (Vec<FanoutOutcome>, Vec<String>) {
    let mut outcomes = Vec::new();
    let mut skipped = Vec::new();
    if plan.is_empty() {
        return (outcomes, skipped);
    }
    let _ = fs::remove_dir_all(&settings.dir);
    let total: usize = plan.iter().map(|(_, s)| s.len() * rounds).sum();
    let mut done = 0;
    for (scenario, servers) in plan {
        let mut results: Vec<FanoutOutcome> = Vec::new();
        for &server in servers {
            if protocols::missing_program([server]).is_some() {
                let line = format!(
                    "skipped: {}: {server} not installed",
                    scenario.label(server)
                );
                eprintln!("{line}");
                skipped.push(line);
                continue;
            }
            results.push(FanoutOutcome {
                scenario: scenario.clone(),
                server: server.to_string(),
                runs: Vec::new(),
                failed: Vec::new(),
                median: None,
                p50_us: 0,
                p99_us: 0,
                vs_redis: None,
                paired: None,
                p99_vs_redis: None,
            });
        }
        rounds::alternating(results.len(), rounds, |round, i| {
            done += 1;
            let outcome = &mut results[i];
            let prefix =
                rounds::progress(done, total, &scenario.label(&outcome.server), round, rounds);
            let t = Instant::now();
            match run_one(scenario, &outcome.server, settings, client_threads) {
                Ok(mut run) => {
                    run.round = round;
                    eprintln!(
                        "{prefix}: {:>8.0} deliveries/s ({:.0} msg/s)  p99 {} us  lost {}  \
                         errors {}  RSS {:.1} MiB  CPU s: srv {:.2} cli {:.2} bg {:.2}  ({:.1} s)",
                        run.delivered_per_s,
                        run.published_per_s,
                        run.p99_us,
                        run.lost,
                        run.errors.len(),
                        run.peak_rss_kib as f64 / 1024.0,
                        run.server_cpu_s,
                        run.client_cpu_s,
                        run.background_cpu_s,
                        t.elapsed().as_secs_f64()
                    );
                    for e in &run.errors {
                        eprintln!("{prefix}: error: {e}");
                    }
                    outcome.runs.push(run);
                }
                Err(e) => {
                    eprintln!("{prefix}: FAILED: {e}");
                    outcome.failed.push(e);
                }
            }
        });
        set_medians(&mut results);
        outcomes.extend(results);
    }
    (outcomes, skipped)
}

/// The lower middle of `values` (0 if empty).
fn median<T: Copy + PartialOrd>(mut values: Vec<T>, zero: T) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(zero)
}

fn set_medians(results: &mut [FanoutOutcome]) {
    for o in results.iter_mut() {
        let mut runs = o.runs.clone();
        runs.sort_by(|a, b| a.delivered_per_s.total_cmp(&b.delivered_per_s));
        o.median = (!runs.is_empty()).then(|| runs[(runs.len() - 1) / 2].clone());
        o.p50_us = median(o.runs.iter().map(|r| r.p50_us).collect(), 0);
        o.p99_us = median(o.runs.iter().map(|r| r.p99_us).collect(), 0);
    }
    let Some(redis) = results
        .iter()
        .find(|o| o.server == "redis-server" && o.median.is_some())
        .cloned()
    else {
        return;
    };
    let redis_rate = redis.median.as_ref().map_or(0.0, |m| m.delivered_per_s);
    for o in results.iter_mut() {
        let Some(m) = &o.median else { continue };
        o.vs_redis = (redis_rate > 0.0).then(|| m.delivered_per_s / redis_rate);
        o.p99_vs_redis = (redis.p99_us > 0).then(|| o.p99_us as f64 / redis.p99_us as f64);
        let paired: Vec<f64> = o
            .runs
            .iter()
            .filter_map(|r| {
                let theirs = redis.runs.iter().find(|t| t.round == r.round)?;
                (theirs.delivered_per_s > 0.0).then(|| r.delivered_per_s / theirs.delivered_per_s)
            })
            .collect();
        o.paired = (!paired.is_empty()).then(|| median(paired, 0.0));
    }
}

/// One round: start `server`, subscribe, publish, read its figures, stop it.
fn run_one(
    scenario: &FanoutScenario,
    server: &str,
    settings: &ProtoSettings,
    client_threads: usize,
) -> Result<FanoutRun, String> {
    let dir = settings
        .dir
        .join(format!("{}-{server}", scenario.name.replace(' ', "-")));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (running, addr) =
        protocols::start_server(server, settings, &dir).map_err(|e| format!("{server}: {e}"))?;
    let pids = [running.pid()];
    let mut before = Sample::default();
    let mut after = Sample::default();
    let config = FanoutConfig {
        target: addr,
        subscribers: scenario.subscribers,
        threads: client_threads,
        warmup: Duration::from_secs_f64(scenario.warmup_s),
        duration: Duration::from_secs_f64(scenario.duration_s),
    };
    let result = pubsub::run(&config, |event| match event {
        Event::MeasureStarted => before = Sample::take(&pids),
        Event::MeasureEnded => after = Sample::take(&pids),
    });
    let peak_rss_kib = procfs::peak_rss_kib(pids[0]);
    drop(running);
    let r = result.map_err(|e| e.to_string())?;
    let secs = r.measured_s.max(1e-9);
    let q = |quantile: f64| r.latency_us.value_at_quantile(quantile);
    let switches = after.server_switches.since(before.server_switches);
    Ok(FanoutRun {
        round: 0,
        subscribe_s: r.subscribe_s,
        measured_s: r.measured_s,
        delivered_per_s: r.delivered_in_window as f64 / secs,
        published_per_s: r.published_in_window as f64 / secs,
        p50_us: q(0.50),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: r.latency_us.max(),
        published: r.published,
        delivered: r.delivered,
        lost: r.lost,
        errors: r.errors,
        server_cpu_s: after.server_cpu - before.server_cpu,
        ctx_per_delivery: switches.total() as f64 / r.delivered_in_window.max(1) as f64,
        wakes_per_delivery: switches.voluntary as f64 / r.delivered_in_window.max(1) as f64,
        peak_rss_kib,
        client_cpu_s: after.client_cpu - before.client_cpu,
        background_cpu_s: before.background_s(&after),
    })
}

const HEADERS: [&str; 16] = [
    "scenario",
    "server",
    "deliveries/s",
    "min-max",
    "msg/s",
    "p50 us",
    "p99 us",
    "p99 min-max",
    "lost",
    "srv CPU s",
    "cs/delivery",
    "wakes/delivery",
    "bg CPU s",
    "peak RSS MiB",
    "vs redis (paired)",
    "p99 vs redis",
];

fn rows(outcomes: &[FanoutOutcome]) -> Vec<Vec<String>> {
    outcomes
        .iter()
        .map(|o| {
            let mut row = vec![o.scenario.name.clone(), o.server.clone()];
            let Some(m) = &o.median else {
                row.push("FAILED".into());
                row.extend(std::iter::repeat_n("-".to_string(), HEADERS.len() - 3));
                return row;
            };
            let spread = |f: &dyn Fn(&FanoutRun) -> f64| {
                let (lo, hi) = o.runs.iter().fold((f64::MAX, 0.0f64), |(lo, hi), r| {
                    (lo.min(f(r)), hi.max(f(r)))
                });
                format!("{lo:.0}-{hi:.0}")
            };
            let lost: u64 = o.runs.iter().map(|r| r.lost).sum();
            let published: u64 = o.runs.iter().map(|r| r.published).sum();
            row.extend([
                format!("{:.0}", m.delivered_per_s),
                spread(&|r| r.delivered_per_s),
                format!("{:.0}", m.published_per_s),
                o.p50_us.to_string(),
                o.p99_us.to_string(),
                spread(&|r| r.p99_us as f64),
                format!("{lost} of {}", published * o.scenario.subscribers as u64),
                format!("{:.2}", m.server_cpu_s),
                format!("{:.2}", m.ctx_per_delivery),
                format!("{:.2}", m.wakes_per_delivery),
                format!("{:.2}", m.background_cpu_s),
                format!(
                    "{:.1}",
                    o.runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0
                ),
                match (o.vs_redis, o.paired) {
                    (Some(r), Some(p)) => format!("{r:.2} ({p:.2})"),
                    _ => "-".into(),
                },
                o.p99_vs_redis.map_or("-".into(), |r| format!("{r:.2}")),
            ]);
            row
        })
        .collect()
}

fn problems(outcomes: &[FanoutOutcome]) -> Vec<String> {
    let mut lines = Vec::new();
    for o in outcomes {
        let label = o.scenario.label(&o.server);
        lines.extend(o.failed.iter().map(|e| format!("FAILED: {label}: {e}")));
        for r in &o.runs {
            for e in &r.errors {
                lines.push(format!("ERROR: {label} round {}: {e}", r.round + 1));
            }
        }
    }
    lines
}

/// The stdout part.
pub fn text(outcomes: &[FanoutOutcome], skipped: &[String]) -> String {
    crate::tables::text_section(
        &HEADERS,
        &rows(outcomes),
        problems(outcomes).iter().chain(skipped),
    )
}

/// The report.md section.
pub fn markdown(
    outcomes: &[FanoutOutcome],
    skipped: &[String],
    settings: &crate::tables::Settings,
    md: &mut String,
) {
    if outcomes.is_empty() && skipped.is_empty() {
        return;
    }
    let intro = format!(
        "\n## Pub/sub fan-out: kv_server against redis-server\n\n\
         1,000 subscribers of one channel, one publisher (`PUBLISH ch PAYLOAD`, 64-byte \
         payloads carrying their send time), closed loop within a delivery window: message k \
         is published once its reply is in and message k - {window} has reached every \
         subscriber. The subscribers are spread over {c} mio loops of the bench. kv_server \
         with {r} reactor(s) and {w} workers; redis-server `--io-threads 1`, no persistence. \
         Median round by deliveries/s, rounds alternating the servers.\n",
        window = pubsub::WINDOW,
        c = settings.client_threads,
        r = settings.reactors,
        w = settings.echo_workers,
    );
    crate::tables::markdown_section(
        &intro,
        &HEADERS,
        &rows(outcomes),
        "\n- **deliveries/s**: messages received by subscribers in the measured window \
             (one message to 1,000 subscribers is 1,000), per second; **msg/s**: messages \
             published.\n\
             - **p50/p99 us**: delivery latency, from the publisher's timestamp to the read \
             that brought the message to the subscriber; each the median over the rounds \
             (**p99 min-max**: its spread).\n\
             - **lost**: (message, subscriber) pairs never received, over all rounds; every \
             subscriber checks its messages arrive in order without a gap.\n\
             - **cs/delivery**: the server's voluntary + nonvoluntary context switches in the \
             measured window (every thread of its process, sampled at the window's start and \
             end; a thread that exits in between loses its count) per delivery; \
             **wakes/delivery**: the voluntary ones only (a thread blocked and had to be \
             woken).\n\
             - **vs redis (paired)**: median deliveries/s over redis-server's (the median of the \
             per-round ratios), higher is better; **p99 vs redis**: median p99 over \
             redis-server's, lower is better.\n",
        md,
    );
    let notes: Vec<String> = problems(outcomes)
        .into_iter()
        .chain(skipped.iter().cloned())
        .map(|l| format!("- {l}"))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "\nFailures and skips:\n\n{}", notes.join("\n"));
    }
}
