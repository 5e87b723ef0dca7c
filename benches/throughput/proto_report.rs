//! The protocol scenarios' part of the report: the RESP and HTTP tables on stdout and a
//! section of report.md (`protocols.rs` runs them).

use std::fmt::Write as _;

use crate::baseline;
use crate::procfs::per_request_cells;
use crate::protocols::{Proto, ProtoRun, ProtoScenario, ToolResult, RESP_TESTS};

fn find<'a>(runs: &'a [ProtoRun], scenario: &str, server: &str) -> Option<&'a ProtoRun> {
    runs.iter()
        .find(|r| r.scenario.name == scenario && r.server == server)
}

/// `run`'s result of `test`, if it ran without error.
fn result<'a>(run: Option<&'a ProtoRun>, test: &str) -> Option<&'a ToolResult> {
    run.filter(|r| r.error.is_none())?
        .results
        .iter()
        .find(|t| t.test == test)
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}"))
}

/// `ours` req/s over `theirs`, 2 decimals, or `-`.
fn ratio(ours: &ToolResult, theirs: Option<&ToolResult>) -> String {
    match theirs {
        Some(t) if t.req_per_s > 0.0 => format!("{:.2}", ours.req_per_s / t.req_per_s),
        _ => "-".into(),
    }
}

/// The RESP table: one row per scenario, redis-benchmark test and server.
const RESP_HEADERS: [&str; 9] = [
    "scenario",
    "test",
    "server",
    "req/s",
    "p50 ms",
    "cs/req",
    "wakes/req",
    "vs redis",
    "vs base",
];

/// The HTTP table: one row per scenario and server.
const HTTP_HEADERS: [&str; 11] = [
    "scenario",
    "server",
    "req/s",
    "p50 ms",
    "p99 ms",
    "socket errors",
    "non-2xx/3xx",
    "cs/req",
    "wakes/req",
    "vs nginx",
    "vs base",
];

type Table = (Vec<&'static str>, Vec<Vec<String>>);

/// The cells of one server's result: figures, then `vs REFERENCE` and `vs base` (the
/// baseline's run of this server, if any).
fn cells(
    runs: &[ProtoRun],
    scenario: &ProtoScenario,
    server: &str,
    test: &str,
    t: &ToolResult,
) -> Vec<String> {
    let [_, reference] = scenario.pair();
    let base = (!baseline::is_base(server))
        .then(|| {
            result(
                find(runs, &scenario.name, &baseline::base_name(server)),
                test,
            )
        })
        .flatten();
    let [cs, wakes] = per_request_cells(t.per_request);
    let mut row = vec![format!("{:.0}", t.req_per_s), ms(t.p50_ms)];
    if scenario.proto == Proto::Http {
        row.extend([
            ms(t.p99_ms),
            t.socket_errors.map_or("-".into(), |n| n.to_string()),
            t.non_2xx.map_or("-".into(), |n| n.to_string()),
        ]);
    }
    row.extend([
        cs,
        wakes,
        ratio(t, result(find(runs, &scenario.name, reference), test)),
        base.map_or("-".into(), |b| ratio(t, Some(b))),
    ]);
    row
}

/// The protocol tables (RESP, HTTP), each with its rows (empty if none ran); `vs base`
/// only when a baseline server ran.
pub fn tables(runs: &[ProtoRun]) -> [Table; 2] {
    let mut names: Vec<&ProtoScenario> = Vec::new();
    for r in runs {
        if !names.iter().any(|s| s.name == r.scenario.name) {
            names.push(&r.scenario);
        }
    }
    let mut resp = Vec::new();
    let mut http = Vec::new();
    for scenario in names {
        let (tests, rows) = match scenario.proto {
            Proto::Resp => (RESP_TESTS.to_vec(), &mut resp),
            Proto::Http => (vec!["GET /"], &mut http),
        };
        for test in tests {
            for server in scenario.servers() {
                let Some(run) = find(runs, &scenario.name, server) else {
                    continue;
                };
                let mut row = vec![scenario.name.clone()];
                if scenario.proto == Proto::Resp {
                    row.push(test.to_string());
                }
                row.push(server.to_string());
                match result(Some(run), test) {
                    Some(t) => row.extend(cells(runs, scenario, server, test, t)),
                    None => row.push("FAILED".into()),
                }
                rows.push(row);
            }
        }
    }
    let with_base = runs.iter().any(|r| baseline::is_base(&r.server));
    let shape = |headers: &[&'static str], mut rows: Vec<Vec<String>>| {
        let width = headers.len() - usize::from(!with_base);
        for row in &mut rows {
            row.resize(width, "-".into());
        }
        (headers[..width].to_vec(), rows)
    };
    [shape(&RESP_HEADERS, resp), shape(&HTTP_HEADERS, http)]
}

/// The first columns of a table that hold text (scenario, [test,] server).
fn text_columns(headers: &[&str]) -> usize {
    if headers.get(1) == Some(&"test") {
        3
    } else {
        2
    }
}

/// Failed runs, one line each.
fn failures(runs: &[ProtoRun]) -> Vec<String> {
    runs.iter()
        .filter_map(|r| {
            r.error
                .as_ref()
                .map(|e| format!("FAILED: {}: {e}", r.scenario.label(&r.server)))
        })
        .collect()
}

/// The stdout part: the tables, failures and skips.
pub fn text(runs: &[ProtoRun], skipped: &[String]) -> String {
    let mut out = String::new();
    for (headers, rows) in tables(runs) {
        if rows.is_empty() {
            continue;
        }
        out.push('\n');
        crate::tables::text_table_with(&headers, &rows, text_columns(&headers), &mut out);
    }
    for line in failures(runs).iter().chain(skipped) {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// What the columns the two tables share mean.
const LEGEND: &str = "\n- **cs/req**: the server's context switches (voluntary + \
    nonvoluntary, summed over every thread of every process of the server: nginx's master \
    and workers, redis-server's threads) while the load tool ran, divided by the requests it \
    completed (redis-benchmark's `-n`, wrk's count). Sampled from /proc/PID/task/*/status \
    just before the tool starts and just after it exits, so a test's connects and closes are \
    in it; a thread that exits in between takes its count with it. **wakes/req**: the \
    voluntary ones only: times a server thread blocked and had to be woken.\n";

/// The `vs base` line of the legend, when a baseline ran.
fn base_legend(runs: &[ProtoRun]) -> &'static str {
    if runs.iter().any(|r| baseline::is_base(&r.server)) {
        "- **SERVER@base**: the same example from `--baseline-examples` (another build), run \
         like this build's; **vs base**: this build's req/s over its baseline's (one run \
         each).\n"
    } else {
        ""
    }
}

/// The report.md section.
pub fn markdown(
    runs: &[ProtoRun],
    skipped: &[String],
    settings: &crate::tables::Settings,
    md: &mut String,
) {
    if runs.is_empty() && skipped.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Protocols: the example servers against redis-server and nginx\n\n\
         One run per server. kv_server and http_hello (the example binaries, built by this \
         bench and run as the README starts them) have {r} reactor(s) and {w} workers; \
         redis-server executes commands on one thread and is started with `--io-threads 1`; \
         nginx has `worker_processes {t};`. The load tools share the machine's cores with the \
         servers. Each server was started fresh on 127.0.0.1 for its run.\n",
        r = settings.reactors,
        w = settings.echo_workers,
        t = settings.server_threads
    );
    let [(resp_headers, resp_rows), (http_headers, http_rows)] = tables(runs);
    if !resp_rows.is_empty() {
        md.push_str(
            "### RESP: kv_server vs redis-server (redis-benchmark)\n\n\
             `redis-benchmark -h 127.0.0.1 -p PORT -c 50 -t TEST -q -n N`, once per test \
             (scenario `P16`: plus `-P 16`, 16 commands pipelined per connection); req/s and \
             p50 as redis-benchmark reports them; **vs redis**: req/s over redis-server's in \
             the same test.\n\n",
        );
        crate::tables::markdown_table_with(&resp_headers, &resp_rows, 3, md);
        md.push_str(LEGEND);
        md.push_str(base_legend(runs));
    }
    if !http_rows.is_empty() {
        md.push_str(
            "\n### HTTP: http_hello vs nginx (wrk)\n\n\
             `wrk -t2 -cC -dDs --latency http://127.0.0.1:PORT/`, nginx answering \
             `return 200 \"Hello, world!\";`. p50/p99 are wrk's latency distribution; \
             **socket errors**: connect + read + write + timeout; **non-2xx/3xx**: wrk's count \
             of other responses; **vs nginx**: req/s over nginx's in the same scenario.\n\n",
        );
        crate::tables::markdown_table(&http_headers, &http_rows, md);
        if resp_rows.is_empty() {
            md.push_str(LEGEND);
            md.push_str(base_legend(runs));
        }
    }
    let mut notes: Vec<String> = runs
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| {
            let exe = if baseline::is_base(&r.server) {
                format!(" (`{}`)", r.server_exe)
            } else {
                String::new()
            };
            format!("- {}: `{}`{exe}", r.scenario.label(&r.server), r.command)
        })
        .collect();
    notes.extend(failures(runs).into_iter().map(|l| format!("- {l}")));
    notes.extend(skipped.iter().map(|l| format!("- {l}")));
    let _ = writeln!(
        md,
        "\nCommands, failures and skips:\n\n{}",
        notes.join("\n")
    );
}
