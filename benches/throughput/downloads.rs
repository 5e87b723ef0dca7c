//! Download scenarios: many concurrent downloads of one large file, http_hello's static
//! files (`--root DIR`, sent with `FileRegion`: sendfile(2) on plain TCP, read and encrypted
//! 64 KiB at a time over TLS) against nginx (`sendfile on;`) serving the same file.
//!
//! - `download 20x200MB`: 20 concurrent `curl` processes each `GET /files/download.bin`, a
//!   200 MB file (20 MB in quick mode), over plain TCP.
//! - `download tls 20x200MB` (feature `tls`): the same over TLS 1.3 (nginx with
//!   `ssl_protocols TLSv1.3;`, since nginx 1.22 does not offer it by default), both servers
//!   with the bench's certificate (`tls.rs`), curl with `--insecure`: TLS_AES_256_GCM_SHA384
//!   with both.
//!
//! The file is made once per bench run in `<bench dir>/downloads/files/` (pseudo-random bytes,
//! so nothing on the way can compress it) and deleted when the scenarios are done; it is in
//! the page cache for every run (written just before, 24 GiB of RAM here), so the disk is
//! out of it. Same thread budget as the protocol scenarios: http_hello with the bench's
//! `--reactors` and `--workers`, nginx with `worker_processes` = `--threads`.
//!
//! Each run starts the server fresh, starts the 20 `curl -s --http1.1 -o /dev/null -w
//! '%{size_download} %{http_code}'` at once, waits for them all, and reads the server's
//! figures from /proc before stopping it: the peak resident set (VmHWM; for nginx, per
//! process and summed over the master and its workers), CPU time, and context switches
//! (voluntary + involuntary, summed over the live threads). A download counts if it got
//! status 200 and every byte. Rounds alternate the servers, the first server changing
//! every round; the median round (by MB/s) is reported per server.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

use crate::procfs::{self, Sample};
use crate::protocols::{self, ProtoSettings, Running};
use crate::rounds;
use crate::ServerPair;

/// The path under which http_hello serves `--root` (and nginx is configured to match).
pub const FILES_URL_PREFIX: &str = "/files/";
/// The downloaded file's name.
pub const FILE_NAME: &str = "download.bin";
/// Concurrent downloads.
pub const DOWNLOADS: usize = 20;
/// The file's size in full and quick mode (10^6-byte megabytes).
const FILE_BYTES: (u64, u64) = (200_000_000, 20_000_000);
/// The slowest rate a run may take before its curls give up, in bytes per second overall.
const SLOWEST: u64 = 20_000_000;

/// One download workload.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadScenario {
    pub name: String,
    pub tls: bool,
    pub downloads: usize,
    pub file_bytes: u64,
}

impl DownloadScenario {
    fn new(tls: bool, file_bytes: u64) -> Self {
        DownloadScenario {
            name: format!(
                "download{} {DOWNLOADS}x{}MB",
                if tls { " tls" } else { "" },
                file_bytes / 1_000_000
            ),
            tls,
            downloads: DOWNLOADS,
            file_bytes,
        }
    }
}

impl crate::ServerPair for DownloadScenario {
    /// (ours, the reference).
    fn servers(&self) -> Vec<&'static str> {
        vec!["http_hello", "nginx"]
    }

    fn label(&self, server: &str) -> String {
        format!("{} / {server}", self.name)
    }
}

/// The download scenarios of a mode (the TLS one with feature `tls` only).
pub fn matrix(quick: bool) -> Vec<DownloadScenario> {
    let bytes = if quick { FILE_BYTES.1 } else { FILE_BYTES.0 };
    let mut scenarios = vec![DownloadScenario::new(false, bytes)];
    if cfg!(feature = "tls") {
        scenarios.push(DownloadScenario::new(true, bytes));
    }
    scenarios
}

/// One round of one server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DownloadRun {
    pub round: usize,
    /// From starting the first curl to the last one's exit.
    pub wall_s: f64,
    /// Bytes of the complete downloads over the wall time, in 10^6 bytes per second.
    pub mb_per_s: f64,
    /// Downloads that got 200 and every byte.
    pub complete: usize,
    /// What the others got ("SIZE CODE" as curl printed it, or why curl failed).
    pub failures: Vec<String>,
    /// The server's peak resident set in KiB, summed over its processes.
    pub peak_rss_kib: u64,
    /// Each process's peak resident set (nginx: master first, then the workers).
    pub process_rss_kib: Vec<u64>,
    /// The server's context switches (voluntary + nonvoluntary) during the downloads, per
    /// download.
    pub ctx_per_download: f64,
    /// The voluntary ones only (a thread blocked and was woken), per download.
    pub wakes_per_download: f64,
    /// The server's CPU time during the downloads.
    pub server_cpu_s: f64,
    /// The curls' CPU time (and the bench's, waiting for them).
    pub client_cpu_s: f64,
    /// CPU time the rest of the machine used meanwhile.
    pub background_cpu_s: f64,
}

/// One server in one scenario, over its rounds.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadOutcome {
    pub scenario: DownloadScenario,
    pub server: String,
    /// The curl command line of one download.
    pub command: String,
    pub runs: Vec<DownloadRun>,
    /// Rounds that failed outright (the server did not start...).
    pub errors: Vec<String>,
    /// The run with the median MB/s (the lower middle one for an even count).
    pub median: Option<DownloadRun>,
    /// Median MB/s over nginx's median MB/s.
    pub vs_nginx: Option<f64>,
    /// The median over rounds of this server's MB/s over nginx's in the same round.
    pub paired: Option<f64>,
}

/// The file every download fetches, deleted (with its directory) when dropped.
struct TestFile {
    dir: PathBuf,
}

impl TestFile {
    /// Writes `bytes` pseudo-random bytes (xorshift64*: fast, incompressible) to
    /// `dir/FILE_NAME`.
    fn create(dir: &Path, bytes: u64) -> io::Result<TestFile> {
        fs::create_dir_all(dir)?;
        let file = TestFile {
            dir: dir.to_path_buf(),
        };
        let mut out = io::BufWriter::new(fs::File::create(dir.join(FILE_NAME))?);
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut block = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            for chunk in block.chunks_exact_mut(8) {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                chunk.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
            }
            let n = left.min(block.len() as u64) as usize;
            out.write_all(&block[..n])?;
            left -= n as u64;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(file)
    }
}

impl Drop for TestFile {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The TLS certificate and key files, when a TLS scenario runs.
type TlsFiles = Option<(PathBuf, PathBuf)>;

/// Runs every (scenario, server) of `plan` for `rounds` rounds, printing progress on
/// stderr. Servers or tools not installed are skipped with a line in the returned list.
pub fn run_all(
    plan: &[(DownloadScenario, Vec<&'static str>)],
    settings: &ProtoSettings,
    rounds: usize,
) -> (Vec<DownloadOutcome>, Vec<String>) {
    let mut outcomes = Vec::new();
    let mut skipped = Vec::new();
    if plan.is_empty() {
        return (outcomes, skipped);
    }
    let _ = fs::remove_dir_all(&settings.dir);
    let bytes = plan.iter().map(|(s, _)| s.file_bytes).max().unwrap_or(0);
    let t = Instant::now();
    let file = match TestFile::create(&settings.dir.join("files"), bytes) {
        Ok(file) => file,
        Err(e) => {
            skipped.push(format!(
                "skipped: downloads: cannot write the test file: {e}"
            ));
            eprintln!("{}", skipped[0]);
            return (outcomes, skipped);
        }
    };
    eprintln!(
        "downloads: wrote {} MB to {} in {:.1} s",
        bytes / 1_000_000,
        file.dir.display(),
        t.elapsed().as_secs_f64()
    );
    let tls_files = tls_files(plan, &settings.dir);
    let total: usize = plan.iter().map(|(_, s)| s.len() * rounds).sum();
    let mut done = 0;
    for (scenario, servers) in plan {
        let mut runnable = Vec::new();
        for &server in servers {
            let missing = protocols::missing_program(["curl", server]);
            match missing {
                Some(program) => {
                    let line = format!(
                        "skipped: {}: {program} not installed",
                        scenario.label(server)
                    );
                    eprintln!("{line}");
                    skipped.push(line);
                }
                None => runnable.push(server),
            }
        }
        let mut results: Vec<DownloadOutcome> = runnable
            .iter()
            .map(|server| DownloadOutcome {
                scenario: scenario.clone(),
                server: server.to_string(),
                command: String::new(),
                runs: Vec::new(),
                errors: Vec::new(),
                median: None,
                vs_nginx: None,
                paired: None,
            })
            .collect();
        rounds::alternating(results.len(), rounds, |round, i| {
            done += 1;
            let outcome = &mut results[i];
            let prefix =
                rounds::progress(done, total, &scenario.label(&outcome.server), round, rounds);
            let tls = tls_files.as_ref().filter(|_| scenario.tls);
            match run_one(scenario, &outcome.server, settings, &file, tls) {
                Ok((command, mut run)) => {
                    run.round = round;
                    eprintln!(
                        "{prefix}: {:>7.0} MB/s  {}/{} complete  {:.2} s  RSS {:.1} MiB  \
                         ctx/download {:.0}  CPU s: srv {:.2} cli {:.2} bg {:.2}",
                        run.mb_per_s,
                        run.complete,
                        scenario.downloads,
                        run.wall_s,
                        run.peak_rss_kib as f64 / 1024.0,
                        run.ctx_per_download,
                        run.server_cpu_s,
                        run.client_cpu_s,
                        run.background_cpu_s
                    );
                    outcome.command = command;
                    outcome.runs.push(run);
                }
                Err(e) => {
                    eprintln!("{prefix}: FAILED: {e}");
                    outcome.errors.push(e);
                }
            }
        });
        set_medians(&mut results);
        outcomes.extend(results);
    }
    drop(file);
    (outcomes, skipped)
}

/// The certificate files for the TLS scenario, written into `dir` (feature `tls`).
fn tls_files(plan: &[(DownloadScenario, Vec<&'static str>)], dir: &Path) -> TlsFiles {
    if !plan.iter().any(|(s, _)| s.tls) {
        return None;
    }
    #[cfg(feature = "tls")]
    {
        match crate::tls::write_server_pem(dir) {
            Ok(files) => return Some(files),
            Err(e) => eprintln!("downloads: cannot write the TLS files: {e}"),
        }
    }
    let _ = dir;
    None
}

/// The median run per outcome, and the ratios to nginx.
fn set_medians(results: &mut [DownloadOutcome]) {
    for o in results.iter_mut() {
        let mut runs = o.runs.clone();
        runs.sort_by(|a, b| a.mb_per_s.total_cmp(&b.mb_per_s));
        o.median = (!runs.is_empty()).then(|| runs[(runs.len() - 1) / 2].clone());
    }
    let Some(nginx) = results.iter().find(|o| o.server == "nginx").cloned() else {
        return;
    };
    for o in results.iter_mut() {
        o.vs_nginx = match (&o.median, &nginx.median) {
            (Some(a), Some(b)) if b.mb_per_s > 0.0 => Some(a.mb_per_s / b.mb_per_s),
            _ => None,
        };
        let mut paired: Vec<f64> = o
            .runs
            .iter()
            .filter_map(|r| {
                let n = nginx.runs.iter().find(|n| n.round == r.round)?;
                (n.mb_per_s > 0.0).then(|| r.mb_per_s / n.mb_per_s)
            })
            .collect();
        paired.sort_by(f64::total_cmp);
        o.paired = (!paired.is_empty()).then(|| paired[(paired.len() - 1) / 2]);
    }
}

/// nginx serving `files` under [`FILES_URL_PREFIX`] with sendfile, over TLS with `tls`.
fn start_nginx(
    settings: &ProtoSettings,
    dir: &Path,
    files: &Path,
    tls: Option<&(PathBuf, PathBuf)>,
) -> io::Result<(Running, std::net::SocketAddr)> {
    let port = protocols::free_port()?;
    let d = dir.display();
    let (ssl, certs) = match tls {
        Some((cert, key)) => (
            " ssl",
            format!(
                "\x20       ssl_protocols TLSv1.3;\n\
                 \x20       ssl_certificate {};\n\
                 \x20       ssl_certificate_key {};\n",
                cert.display(),
                key.display()
            ),
        ),
        None => ("", String::new()),
    };
    let conf = format!(
        "daemon off;\n\
         master_process on;\n\
         worker_processes {workers};\n\
         worker_rlimit_nofile 8192;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   sendfile on;\n\
         \x20   client_body_temp_path {d}/body;\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port}{ssl};\n\
         {certs}\
         \x20       location {FILES_URL_PREFIX} {{ alias {files}/; }}\n\
         \x20   }}\n\
         }}\n",
        workers = settings.threads,
        files = files.display(),
    );
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let mut command = Command::new(protocols::program("nginx"));
    command
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf_path);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    Ok((protocols::spawn_peer(command, dir, addr)?, addr))
}

/// One round of `server`: start it, run the downloads, read its figures, stop it.
fn run_one(
    scenario: &DownloadScenario,
    server: &str,
    settings: &ProtoSettings,
    file: &TestFile,
    tls: Option<&(PathBuf, PathBuf)>,
) -> Result<(String, DownloadRun), String> {
    if scenario.tls && tls.is_none() {
        return Err("no TLS certificate files".into());
    }
    let dir = settings
        .dir
        .join(format!("{}-{server}", scenario.name.replace(' ', "-")));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let started = match server {
        "http_hello" => {
            let mut extra = vec!["--root".to_string(), file.dir.display().to_string()];
            if let Some((cert, key)) = tls {
                extra.extend([
                    "--tls-cert".into(),
                    cert.display().to_string(),
                    "--tls-key".into(),
                    key.display().to_string(),
                ]);
            }
            protocols::start_example(server, settings, &extra)
        }
        "nginx" => start_nginx(settings, &dir, &file.dir, tls),
        other => Err(io::Error::other(format!("unknown server {other}"))),
    };
    let (running, addr) = started.map_err(|e| format!("{server}: {e}"))?;
    let scheme = if scenario.tls { "https" } else { "http" };
    let url = format!("{scheme}://{addr}{FILES_URL_PREFIX}{FILE_NAME}");
    let total = scenario.file_bytes * scenario.downloads as u64;
    let max_time = (total / SLOWEST).max(60);
    let mut args: Vec<String> = [
        "-s",
        "--http1.1",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{http_code}",
        "--max-time",
    ]
    .map(String::from)
    .to_vec();
    args.push(max_time.to_string());
    if scenario.tls {
        args.push("--insecure".into());
    }
    args.push(url);
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect();
    let command = format!("curl {}", quoted.join(" "));
    let pids = procfs::process_tree(running.pid());
    let before = Sample::take(&pids);
    let t = Instant::now();
    let outputs = download_all(&args, scenario.downloads);
    let wall_s = t.elapsed().as_secs_f64();
    let after = Sample::take(&pids);
    let process_rss_kib: Vec<u64> = pids.iter().map(|&p| procfs::peak_rss_kib(p)).collect();
    drop(running);
    let mut complete = 0;
    let mut failures = Vec::new();
    for output in outputs {
        match output {
            Ok(text) if text == format!("{} 200", scenario.file_bytes) => complete += 1,
            Ok(text) => failures.push(format!("got {text:?}")),
            Err(e) => failures.push(e),
        }
    }
    let switches = after.server_switches.since(before.server_switches);
    let run = DownloadRun {
        round: 0,
        wall_s,
        mb_per_s: (complete as u64 * scenario.file_bytes) as f64 / 1e6 / wall_s.max(1e-9),
        complete,
        failures,
        peak_rss_kib: process_rss_kib.iter().sum(),
        process_rss_kib,
        ctx_per_download: switches.total() as f64 / scenario.downloads as f64,
        wakes_per_download: switches.voluntary as f64 / scenario.downloads as f64,
        server_cpu_s: after.server_cpu - before.server_cpu,
        client_cpu_s: after.client_cpu - before.client_cpu,
        background_cpu_s: before.background_s(&after),
    };
    Ok((command, run))
}

/// Starts `n` curls with `args` at once and waits for them all: each one's trimmed stdout,
/// or why it failed.
fn download_all(args: &[String], n: usize) -> Vec<Result<String, String>> {
    let children: Vec<Result<std::process::Child, String>> = (0..n)
        .map(|_| {
            Command::new(protocols::program("curl"))
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("curl: {e}"))
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let output = child?
                .wait_with_output()
                .map_err(|e| format!("curl: {e}"))?;
            let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
            if output.status.success() {
                Ok(text)
            } else {
                Err(format!("curl {} (printed {text:?})", output.status))
            }
        })
        .collect()
}
