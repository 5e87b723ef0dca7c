//! A/B against another build in the same run: `--baseline-bench PATH` (another build of this
//! bench binary, which serves `reactor-pool@base`, `rp-inline@base` and `rp-concurrent@base`
//! when started with the same hidden `--serve ...` arguments as this one's children) and
//! `--baseline-examples DIR` (another build's examples: `echo_server@base`, `kv_server@base`,
//! `http_hello@base`).
//!
//! A baseline server is planned right after its counterpart, takes part in the same rounds,
//! and swaps places with it every other round so that neither always runs first. Its ratios
//! to tokio, redis-server and nginx are reported like any server's; the counterpart's row
//! gets `vs base`: its req/s over the baseline's, the median of the per-round ratios. Every
//! server's process is checked to run the binary meant for it (/proc/PID/exe).

use std::fs;
use std::path::{Path, PathBuf};

use crate::report::Outcome;

/// What a baseline server's name ends with.
pub const SUFFIX: &str = "@base";

/// The older build, as the command line gave it (paths made absolute).
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    /// Another build of this bench binary.
    pub bench: Option<PathBuf>,
    /// Another build's examples directory.
    pub examples: Option<PathBuf>,
}

impl Baseline {
    /// Checks that `bench` is an executable file and `examples` a directory.
    pub fn new(bench: Option<PathBuf>, examples: Option<PathBuf>) -> Result<Baseline, String> {
        let bench = bench
            .map(|path| {
                if !is_executable(&path) {
                    return Err(format!(
                        "--baseline-bench {}: not an executable file",
                        path.display()
                    ));
                }
                absolute(&path)
            })
            .transpose()?;
        let examples = examples
            .map(|dir| {
                if !dir.is_dir() {
                    return Err(format!(
                        "--baseline-examples {}: not a directory",
                        dir.display()
                    ));
                }
                absolute(&dir)
            })
            .transpose()?;
        Ok(Baseline { bench, examples })
    }

    /// The baseline's build of the example `name`, with `--baseline-examples`.
    pub fn example(&self, name: &str) -> Option<PathBuf> {
        self.examples.as_ref().map(|dir| dir.join(name))
    }

    /// An error naming the first of `names` (examples this run starts `@base`) that the
    /// baseline's directory does not have.
    pub fn check_examples<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), String> {
        for name in names {
            if let Some(path) = self.example(name) {
                if !is_executable(&path) {
                    return Err(format!(
                        "--baseline-examples: no executable {} (build the baseline with \
                         --examples)",
                        path.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// One line per part given, for the start of the run.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(bench) = &self.bench {
            lines.push(format!(
                "baseline: reactor-pool@base, rp-inline@base, rp-concurrent@base run {}",
                bench.display()
            ));
        }
        if let Some(dir) = &self.examples {
            lines.push(format!(
                "baseline: echo_server@base, kv_server@base, http_hello@base run the examples \
                 in {}",
                dir.display()
            ));
        }
        lines
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    path.canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Whether `server` is a baseline server.
pub fn is_base(server: &str) -> bool {
    server.ends_with(SUFFIX)
}

/// The name of `server`'s counterpart in this build (`server` itself if it is not `@base`).
pub fn current(server: &str) -> &str {
    server.strip_suffix(SUFFIX).unwrap_or(server)
}

/// `server`'s baseline name.
pub fn base_name(server: &str) -> String {
    format!("{server}{SUFFIX}")
}

/// The baseline name of an example that has one (as a `&'static str`, the protocol plans'
/// server names).
pub fn base_example(example: &str) -> Option<&'static str> {
    match example {
        "echo_server" => Some("echo_server@base"),
        "kv_server" => Some("kv_server@base"),
        "http_hello" => Some("http_hello@base"),
        _ => None,
    }
}

/// The order in which round `round` runs `servers` (indices): as planned, except that a
/// server and its baseline, planned next to each other, swap places in odd rounds.
pub fn round_order<S: AsRef<str>>(servers: &[S], round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..servers.len()).collect();
    if round % 2 == 0 {
        return order;
    }
    let mut i = 0;
    while i + 1 < servers.len() {
        if servers[i + 1].as_ref() == base_name(servers[i].as_ref()) {
            order.swap(i, i + 1);
            i += 2;
        } else {
            i += 1;
        }
    }
    order
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[n / 2]),
        n => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The median over the rounds both ran of `ours` req/s over `theirs` in the same round.
pub fn paired_ratio(ours: &Outcome, theirs: &Outcome) -> Option<f64> {
    let ratios = ours
        .runs
        .iter()
        .filter_map(|run| {
            let other = theirs.runs.iter().find(|t| t.round == run.round)?;
            (other.req_per_s > 0.0).then(|| run.req_per_s / other.req_per_s)
        })
        .collect();
    median(ratios)
}

/// Fills in `vs_base` of each outcome that has a baseline outcome in the same scenario.
pub fn set_base_ratios(outcomes: &mut [Outcome]) {
    let ratios: Vec<Option<f64>> = outcomes
        .iter()
        .map(|o| {
            let base = base_name(&o.server);
            let theirs = outcomes
                .iter()
                .find(|b| b.scenario.name == o.scenario.name && b.server == base)?;
            paired_ratio(o, theirs)
        })
        .collect();
    for (outcome, ratio) in outcomes.iter_mut().zip(ratios) {
        outcome.vs_base = ratio;
    }
}

/// `Some(path)` of the binary process `pid` runs (/proc/PID/exe) if it is `expected`, else
/// an error saying which it runs.
pub fn check_exe(pid: u32, expected: &Path) -> Result<PathBuf, String> {
    let exe =
        fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| format!("/proc/{pid}/exe: {e}"))?;
    let expected = expected
        .canonicalize()
        .unwrap_or_else(|_| expected.to_path_buf());
    if exe == expected {
        Ok(exe)
    } else {
        Err(format!(
            "process {pid} runs {}, not {}",
            exe.display(),
            expected.display()
        ))
    }
}
