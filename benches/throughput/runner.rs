//! One measured run: start a server in its own process, drive load at it, read the server's
//! CPU time, context switches and peak memory from /proc, stop it.

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::loadgen::{self, ErrorCounts, Event, LoadConfig};
use crate::procfs::{PerRequest, Switches};
use crate::servers::ServeArgs;

/// How long a child may take to print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child may take to exit after SIGTERM before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fresh child runs before its idle memory is read, so its threads have started.
const IDLE_SETTLE: Duration = Duration::from_millis(50);
/// Clock ticks per second of /proc/<pid>/stat's utime and stime. Linux fixes USER_HZ at 100
/// in its user-space ABI on every architecture this bench runs on.
const USER_HZ: f64 = 100.0;

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunMetrics {
    /// The round this run was part of (0-based): runs of one round are back to back.
    pub round: usize,
    /// The binary the server process ran (/proc/PID/exe).
    pub server_exe: String,
    pub requests: u64,
    pub measured_s: f64,
    pub req_per_s: f64,
    /// Echoed payload, counted once (the wire carries it twice), in 10^6 bytes per second.
    pub mb_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub errors: u64,
    pub error_kinds: ErrorCounts,
    /// Connections established.
    pub connections: u64,
    /// Connections that had at least one correct reply in the measured window.
    pub served: u64,
    /// From the start of the load until every connection was established (or failed).
    pub connect_s: f64,
    /// With a think time: how late the load generator sent requests after their due time,
    /// 99th percentile, in microseconds (its own lag, not the server's).
    pub send_lag_p99_us: u64,
    /// The machine's listen queue overflows (TcpExtListenOverflows, every socket of the
    /// network namespace) during the whole run: connects the server's backlog dropped.
    pub listen_overflows: u64,
    /// utime + stime of the server process during the measured window.
    pub server_cpu_s: f64,
    /// Context switches of the server's threads during the measured window (the live ones
    /// at its end: a thread that exits in the window takes its count with it).
    pub server_switches: Switches,
    /// `server_switches` per request: all of them (`cs/req`) and the voluntary ones, when a
    /// thread blocked and had to be woken (`wakes/req`); `None` with no request.
    pub per_request: Option<PerRequest>,
    /// The server process's peak resident set (VmHWM) at the end of the run.
    pub server_peak_rss_kib: u64,
    /// The server process's resident set (VmRSS) right after it started, with no connection.
    pub server_idle_rss_kib: u64,
    /// (peak RSS - idle RSS) / connections established, in KiB.
    pub rss_per_conn_kib: f64,
    /// The server's resident set (VmRSS) once the load is over, every connection still
    /// open and idle.
    pub server_settled_rss_kib: u64,
    /// (settled RSS - idle RSS) / connections established, in KiB: what an idle connection
    /// keeps after its exchanges.
    pub settled_rss_per_conn_kib: f64,
    /// The server's threads at the end of the measured window.
    pub server_threads: u64,
    /// The server's open file descriptors at the end of the measured window.
    pub server_fds: u64,
    /// utime + stime of this (load generator) process during the measured window.
    pub client_cpu_s: f64,
    /// CPU time the machine spent on anything else during the measured window: other
    /// processes, interrupts, and time stolen by the hypervisor. A noise indicator: on a
    /// quiet machine it is close to zero.
    pub background_cpu_s: f64,
}

/// A server child process.
pub struct ServerProcess {
    child: Child,
    /// Held open: the child exits when it reads EOF here.
    stdin: Option<ChildStdin>,
    pub addr: SocketAddr,
    /// The binary it runs, as /proc/PID/exe names it (checked to be the one started).
    pub exe: PathBuf,
}

/// The binary a server of the echo scenarios runs.
#[derive(Debug, Clone)]
pub enum Program {
    /// A build of this bench (this one, or `--baseline-bench`), started with `--serve ...`.
    Bench(PathBuf),
    /// An example binary started as the README does (echo_server).
    Example(PathBuf),
}

impl ServerProcess {
    /// Starts `program`: a bench build in server mode (`args`), or the echo_server example
    /// as the README does, but on a free port; waits for its address.
    pub fn spawn(args: &ServeArgs, program: &Program) -> io::Result<ServerProcess> {
        match program {
            Program::Bench(exe) => ServerProcess::spawn_with(exe, args.to_args()),
            Program::Example(path) => ServerProcess::spawn_example_at(path, &[]),
        }
    }

    /// Starts the example binary target/<profile>/examples/`name` with `args`: see
    /// [`ServerProcess::spawn_example_at`].
    pub fn spawn_example(name: &str, args: &[String]) -> io::Result<ServerProcess> {
        ServerProcess::spawn_example_at(&example_path(name)?, args)
    }

    /// Starts the example binary `path` with `args`, on a free port (`--addr
    /// 127.0.0.1:0`), and takes its address from its "listening on" log line (after a
    /// `scheme://`, if any). Its log (info unless `RUST_LOG` says otherwise, as a terminal
    /// would show it) is read and discarded.
    pub fn spawn_example_at(path: &Path, args: &[String]) -> io::Result<ServerProcess> {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let mut child = Command::new(path)
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            let mut announced = false;
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                if !announced {
                    if let Some((_, rest)) = line.split_once("listening on ") {
                        let word = rest.split_whitespace().next().unwrap_or_default();
                        let addr = word.split_once("://").map_or(word, |(_, addr)| addr);
                        let _ = tx.send(addr.to_string());
                        announced = true;
                    }
                }
                line.clear();
            }
        });
        let word = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(word) => word,
            Err(_) => return Err(fail_spawn(child, format!("{name} printed no address"))),
        };
        match word.parse() {
            Ok(addr) => ServerProcess::checked(child, None, addr, path),
            Err(_) => Err(fail_spawn(child, format!("bad address {word:?}"))),
        }
    }

    /// The process, once /proc/PID/exe shows it runs `path`.
    fn checked(
        child: Child,
        stdin: Option<ChildStdin>,
        addr: SocketAddr,
        path: &Path,
    ) -> io::Result<ServerProcess> {
        match crate::baseline::check_exe(child.id(), path) {
            Ok(exe) => Ok(ServerProcess {
                child,
                stdin,
                addr,
                exe,
            }),
            Err(e) => Err(fail_spawn(child, e)),
        }
    }

    /// Executes `exe` (this bench binary, or another build of it) with `args` (a `--serve
    /// ...` command line) and waits for the address the child prints first.
    pub fn spawn_with(exe: &Path, args: Vec<String>) -> io::Result<ServerProcess> {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            // Keep reading (and discarding) so the child never blocks on a full pipe.
            let mut sink = Vec::new();
            while matches!(reader.read_until(b'\n', &mut sink), Ok(n) if n > 0) {
                sink.clear();
            }
        });
        let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(fail_spawn(child, e.to_string())),
            Err(_) => return Err(fail_spawn(child, "no address printed in time".into())),
        };
        let addr: SocketAddr = match line.trim().parse() {
            Ok(addr) => addr,
            // An empty line: it exited, e.g. another build that does not take these
            // arguments (its reason is on stderr, above).
            Err(_) => {
                let why = format!("{} printed {line:?}, not an address", exe.display());
                return Err(fail_spawn(child, why));
            }
        };
        ServerProcess::checked(child, stdin, addr, exe)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's utime + stime so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.pid())).unwrap_or(f64::NAN)
    }

    /// (peak RSS in KiB, threads) from /proc/<pid>/status.
    pub fn memory_and_threads(&self) -> (u64, u64) {
        let status = self.status();
        (
            status_field(&status, "VmHWM:").unwrap_or(0),
            status_field(&status, "Threads:").unwrap_or(0),
        )
    }

    /// The current resident set in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        status_field(&self.status(), "VmRSS:").unwrap_or(0)
    }

    fn status(&self) -> String {
        fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default()
    }

    pub fn open_fds(&self) -> u64 {
        fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count() as u64)
    }

    /// SIGTERM, then wait; SIGKILL if it has not exited within [`EXIT_TIMEOUT`].
    pub fn stop(mut self) {
        let _ = terminate(&self.child);
        drop(self.stdin.take());
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => thread::sleep(Duration::from_millis(5)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// target/<profile>/examples/`name`, beside this bench's target/<profile>/deps/.
pub fn example_path(name: &str) -> io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| io::Error::other("bench binary not in target/<profile>/deps"))?;
    Ok(dir.join("examples").join(name))
}

/// Builds the example binaries `names` in release mode (`cargo bench` does not build
/// examples), with the cargo that runs this bench and the features it was built with.
pub fn build_examples(names: &[&str]) -> io::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "--release"]);
    for name in names {
        command.args(["--example", name]);
    }
    if cfg!(feature = "tls") {
        command.args(["--features", "tls"]);
    }
    let status = command.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cargo build --release --example {}: {status}",
            names.join(" --example ")
        )))
    }
}

fn fail_spawn(mut child: Child, why: String) -> io::Error {
    let _ = child.kill();
    let _ = child.wait();
    io::Error::other(format!("server child: {why}"))
}

/// Sends SIGTERM to `child`.
///
/// Contract: `child` is a process this process spawned and has not yet reaped (`Child` is
/// only reaped by `wait`/`try_wait`, which `stop` calls after this), so its pid cannot have
/// been reused by an unrelated process. kill(2) takes no pointers and touches no memory of
/// ours; the only obligation is that pid, which the borrow of an unreaped `Child` upholds.
pub fn terminate(child: &Child) -> io::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    // SAFETY: see the contract above; kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// utime + stime, in seconds, from a /proc/<pid>/stat file.
pub fn cpu_seconds(path: &str) -> Option<f64> {
    let stat = fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// CPU time (busy, stolen) of the whole machine so far, in seconds, from /proc/stat.
pub fn machine_cpu() -> (f64, f64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0.0) / USER_HZ;
    // user nice system idle iowait irq softirq steal
    (at(0) + at(1) + at(2) + at(5) + at(6), at(7))
}

/// A sample of the CPU counters a run compares: server, this process, the machine.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSample {
    server: f64,
    client: f64,
    machine_busy: f64,
    machine_steal: f64,
    /// Taken after the CPU times, at either end of the window: reading thousands of
    /// threads' status (thread-per-conn) takes a while, so it starts and ends a little
    /// later, by about as much.
    server_switches: Switches,
}

impl CpuSample {
    fn take(server: &ServerProcess) -> CpuSample {
        let (machine_busy, machine_steal) = machine_cpu();
        let mut sample = CpuSample {
            server: server.cpu_seconds(),
            client: cpu_seconds("/proc/self/stat").unwrap_or(f64::NAN),
            machine_busy,
            machine_steal,
            server_switches: Switches::default(),
        };
        sample.server_switches = Switches::of(&[server.pid()]);
        sample
    }
}

/// TcpExtListenOverflows from /proc/net/netstat: a header line of names, then one of values.
fn listen_overflows() -> u64 {
    let netstat = fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let lines: Vec<&str> = netstat.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        if !names.starts_with("TcpExt:") || !values.starts_with("TcpExt:") {
            continue;
        }
        let at = names
            .split_whitespace()
            .position(|name| name == "ListenOverflows");
        if let Some(value) = at.and_then(|i| values.split_whitespace().nth(i)) {
            return value.parse().unwrap_or(0);
        }
    }
    0
}

pub fn status_field(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// Runs `load` against a fresh server: `program` started with `serve`.
pub fn run_once(serve: &ServeArgs, program: &Program, load: &LoadConfig) -> io::Result<RunMetrics> {
    let overflows_before = listen_overflows();
    let server = ServerProcess::spawn(serve, program)?;
    let server_exe = server.exe.display().to_string();
    thread::sleep(IDLE_SETTLE);
    let idle_rss = server.rss_kib();
    let load = LoadConfig {
        target: server.addr,
        ..load.clone()
    };
    let mut cpu_start = CpuSample::default();
    let mut cpu_end = CpuSample::default();
    let mut threads_fds = (0, 0);
    let mut peak_rss = 0;
    let mut settled_rss = 0;
    let mut server = Some(server);
    let result = loadgen::run(&load, |event| {
        let Some(srv) = server.as_ref() else { return };
        match event {
            Event::MeasureStarted => cpu_start = CpuSample::take(srv),
            Event::MeasureEnded => {
                cpu_end = CpuSample::take(srv);
                threads_fds = (srv.memory_and_threads().1, srv.open_fds());
            }
            Event::Drained => {
                peak_rss = srv.memory_and_threads().0;
                settled_rss = srv.rss_kib();
                // Stopped before the client closes its side, so TIME_WAIT is the server's.
                if let Some(srv) = server.take() {
                    srv.stop();
                }
            }
        }
    });
    if let Some(srv) = server.take() {
        srv.stop();
    }
    let result = result?;
    let secs = result.measured.as_secs_f64().max(1e-9);
    let q = |quantile: f64| result.latency_us.value_at_quantile(quantile);
    let req_per_s = result.completed as f64 / secs;
    let per_conn = |rss: u64| {
        if result.established == 0 {
            0.0
        } else {
            rss.saturating_sub(idle_rss) as f64 / result.established as f64
        }
    };
    let (rss_per_conn_kib, settled_rss_per_conn_kib) = (per_conn(peak_rss), per_conn(settled_rss));
    let server_switches = cpu_end.server_switches.since(cpu_start.server_switches);
    Ok(RunMetrics {
        round: 0,
        server_exe,
        requests: result.completed,
        measured_s: secs,
        req_per_s,
        mb_per_s: req_per_s * load.message_size as f64 / 1e6,
        p50_us: q(0.50),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: result.latency_us.max(),
        errors: result.errors.total(),
        error_kinds: result.errors,
        connections: result.established,
        served: result.served,
        connect_s: result.connect_time.as_secs_f64(),
        send_lag_p99_us: if load.think.is_zero() {
            0
        } else {
            result.send_lag_us.value_at_quantile(0.99)
        },
        listen_overflows: listen_overflows().saturating_sub(overflows_before),
        server_cpu_s: cpu_end.server - cpu_start.server,
        server_switches,
        per_request: server_switches.per_request(result.completed),
        server_peak_rss_kib: peak_rss,
        server_idle_rss_kib: idle_rss,
        rss_per_conn_kib,
        server_settled_rss_kib: settled_rss,
        settled_rss_per_conn_kib,
        server_threads: threads_fds.0,
        server_fds: threads_fds.1,
        client_cpu_s: cpu_end.client - cpu_start.client,
        background_cpu_s: ((cpu_end.machine_busy - cpu_start.machine_busy)
            - (cpu_end.server - cpu_start.server)
            - (cpu_end.client - cpu_start.client)
            + (cpu_end.machine_steal - cpu_start.machine_steal))
            .max(0.0),
    })
}
