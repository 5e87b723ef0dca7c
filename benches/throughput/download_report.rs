//! The download scenarios' part of the report: a table on stdout and a section of
//! report.md (`downloads.rs` runs them).

use std::fmt::Write as _;

use crate::downloads::{DownloadOutcome, DOWNLOADS, FILES_URL_PREFIX, FILE_NAME};
use crate::ServerPair;

const HEADERS: [&str; 13] = [
    "scenario",
    "server",
    "MB/s",
    "MB/s min-max",
    "wall s",
    "complete",
    "peak RSS MiB",
    "per process MiB",
    "ctx sw/download",
    "wakes/download",
    "srv CPU s",
    "bg CPU s",
    "vs nginx (paired)",
];

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// One row per (scenario, server).
fn rows(outcomes: &[DownloadOutcome]) -> Vec<Vec<String>> {
    outcomes
        .iter()
        .map(|o| {
            let mut row = vec![o.scenario.name.clone(), o.server.clone()];
            let Some(m) = &o.median else {
                row.push("FAILED".into());
                row.extend(std::iter::repeat_n("-".to_string(), HEADERS.len() - 3));
                return row;
            };
            let (lo, hi) = o.runs.iter().fold((f64::MAX, 0.0f64), |(lo, hi), r| {
                (lo.min(r.mb_per_s), hi.max(r.mb_per_s))
            });
            let complete: usize = o.runs.iter().map(|r| r.complete).sum();
            let asked = o.runs.len() * o.scenario.downloads;
            // The target is a bound on the peak: the highest over the rounds.
            let peak = o.runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
            let per_process = if m.process_rss_kib.len() > 1 {
                m.process_rss_kib
                    .iter()
                    .map(|&k| mib(k))
                    .collect::<Vec<_>>()
                    .join(" + ")
            } else {
                "-".into()
            };
            let ratio = match (o.vs_nginx, o.paired) {
                (Some(r), Some(p)) => format!("{r:.2} ({p:.2})"),
                _ => "-".into(),
            };
            row.extend([
                format!("{:.0}", m.mb_per_s),
                format!("{lo:.0}-{hi:.0}"),
                format!("{:.2}", m.wall_s),
                format!("{complete}/{asked}"),
                mib(peak),
                per_process,
                format!("{:.0}", m.ctx_per_download),
                format!("{:.0}", m.wakes_per_download),
                format!("{:.2}", m.server_cpu_s),
                format!("{:.2}", m.background_cpu_s),
                ratio,
            ]);
            row
        })
        .collect()
}

/// Failed rounds and incomplete downloads, one line each.
fn problems(outcomes: &[DownloadOutcome]) -> Vec<String> {
    let mut lines = Vec::new();
    for o in outcomes {
        let label = o.scenario.label(&o.server);
        lines.extend(o.errors.iter().map(|e| format!("FAILED: {label}: {e}")));
        for r in &o.runs {
            if let Some(first) = r.failures.first() {
                lines.push(format!(
                    "INCOMPLETE: {label} round {}: {} of {} downloads failed, e.g. {first}",
                    r.round + 1,
                    r.failures.len(),
                    o.scenario.downloads
                ));
            }
        }
    }
    lines
}

/// The stdout part: the table, failures and skips.
pub fn text(outcomes: &[DownloadOutcome], skipped: &[String]) -> String {
    crate::tables::text_section(
        &HEADERS,
        &rows(outcomes),
        problems(outcomes).iter().chain(skipped),
    )
}

/// The report.md section.
pub fn markdown(
    outcomes: &[DownloadOutcome],
    skipped: &[String],
    settings: &crate::tables::Settings,
    md: &mut String,
) {
    if outcomes.is_empty() && skipped.is_empty() {
        return;
    }
    let intro = format!(
        "\n## Downloads: http_hello's static files against nginx\n\n\
         {DOWNLOADS} concurrent `curl` downloads of one file of pseudo-random bytes (in the page \
         cache), `GET {FILES_URL_PREFIX}{FILE_NAME}`; http_hello `--root DIR` with {r} \
         reactor(s) and {w} workers (sendfile(2) on plain TCP, 64 KiB reads over TLS), nginx \
         with `sendfile on;` and `worker_processes {t};`. Median round by MB/s, rounds \
         alternating the servers.\n",
        r = settings.reactors,
        w = settings.echo_workers,
        t = settings.server_threads
    );
    crate::tables::markdown_section(
        &intro,
        &HEADERS,
        &rows(outcomes),
        "\n- **MB/s**: bytes of complete downloads (status 200, every byte) over the wall \
             time from starting the first curl to the last one's exit, 10^6 bytes per second; \
             **complete**: over all rounds.\n\
             - **peak RSS MiB**: the server's VmHWM read just before it was stopped, the \
             highest over the rounds, summed over nginx's processes (shared pages count in \
             each); **per process**: nginx's master + workers in the median round.\n\
             - **ctx sw/download**: the server's voluntary + involuntary context switches \
             during the downloads (its live threads), per download; **wakes/download**: the \
             voluntary ones only (a thread blocked and had to be woken); **srv CPU s**, **bg \
             CPU s**: as in the first table; **vs nginx (paired)**: median MB/s over nginx's \
             (the median of the per-round ratios).\n",
        md,
    );
    let mut notes: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.command.is_empty())
        .map(|o| format!("- {}: `{}`", o.scenario.label(&o.server), o.command))
        .collect();
    notes.extend(problems(outcomes).into_iter().map(|l| format!("- {l}")));
    notes.extend(skipped.iter().map(|l| format!("- {l}")));
    let _ = writeln!(
        md,
        "\nCommands (each run starts {DOWNLOADS} of them at once), failures and skips:\n\n{}",
        notes.join("\n")
    );
}
