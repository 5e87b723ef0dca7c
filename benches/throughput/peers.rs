//! The servers the protocol, download and fan-out scenarios start: the example binaries
//! (this build's, or the baseline's `NAME@base`) and the peers installed on the machine
//! (redis-server, nginx), each stopped when its [`Running`] is dropped.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::baseline;
use crate::procfs;
use crate::protocols::ProtoSettings;
use crate::runner::{self, ServerProcess};

/// How long a peer may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer may take to exit after SIGTERM before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// `name` if it is an executable on PATH, /usr/sbin or /sbin.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `name`'s path as [`find_program`] finds it, else `name` (for the error message).
pub(crate) fn program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| name.into())
}

/// Whether `server` is one of this crate's examples (run as its own binary, as the README
/// starts it), not a peer installed on the machine.
pub fn is_example(server: &str) -> bool {
    matches!(server, "kv_server" | "http_hello")
}

/// The first of `programs` (the crate's examples and the baseline's aside) not installed on
/// the machine.
pub fn missing_program<'a>(programs: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    programs
        .into_iter()
        .filter(|p| !is_example(baseline::current(p)))
        .find(|p| find_program(p).is_none())
}

/// A running server under test, stopped when dropped (also on error paths).
pub(crate) enum Running {
    /// An example binary (kv_server, http_hello).
    Own(Option<ServerProcess>),
    /// redis-server or nginx.
    Peer(Child),
}

impl Running {
    /// The server's process id (nginx: its master process).
    pub(crate) fn pid(&self) -> u32 {
        match self {
            Running::Own(process) => process.as_ref().map_or(0, ServerProcess::pid),
            Running::Peer(child) => child.id(),
        }
    }

    /// The binary it runs (/proc/PID/exe).
    pub(crate) fn exe(&self) -> String {
        let exe = match self {
            Running::Own(Some(process)) => Some(process.exe.clone()),
            _ => fs::read_link(format!("/proc/{}/exe", self.pid())).ok(),
        };
        exe.map_or_else(|| "?".into(), |p| p.display().to_string())
    }

    /// Its processes: the server's, and its children (nginx's `workers` of them, waited for
    /// up to [`STARTUP_TIMEOUT`]).
    pub(crate) fn pids(&self, workers: usize) -> Vec<u32> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let pids = procfs::process_tree(self.pid());
            if pids.len() > workers || Instant::now() > deadline {
                return pids;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn addr_check(&mut self) -> io::Result<()> {
        if let Running::Peer(child) = self {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!("exited early: {status}")));
            }
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Running::Own(process) => {
                if let Some(p) = process.take() {
                    p.stop();
                }
            }
            Running::Peer(child) => {
                let _ = runner::terminate(child);
                let deadline = Instant::now() + EXIT_TIMEOUT;
                while Instant::now() < deadline {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => return,
                        Ok(None) => thread::sleep(Duration::from_millis(10)),
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `addr` accepts a connection (or the peer exits, or time runs out).
fn wait_accepting(running: &mut Running, addr: SocketAddr, log: &Path) -> io::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let tail = || {
            let text = fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().rev().take(5).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
        };
        if let Err(e) = running.addr_check() {
            return Err(io::Error::other(format!("{e}; log: {}", tail())));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "{addr} not accepting after {STARTUP_TIMEOUT:?}; log: {}",
                tail()
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns a peer with its output in `dir/NAME.log`, and waits until it accepts on `addr`.
pub(crate) fn spawn_peer(
    mut command: Command,
    dir: &Path,
    addr: SocketAddr,
) -> io::Result<Running> {
    let log_path = dir.join("server.log");
    let log = fs::File::create(&log_path)?;
    let child = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut running = Running::Peer(child);
    wait_accepting(&mut running, addr, &log_path)?;
    Ok(running)
}

/// Starts the example binary `name` (this build's, or `NAME@base`: the baseline's) with the
/// bench's `--reactors` and `--workers`, and `extra` arguments after them.
pub(crate) fn start_example(
    name: &str,
    settings: &ProtoSettings,
    extra: &[String],
) -> io::Result<(Running, SocketAddr)> {
    let mut args = vec![
        "--reactors".to_string(),
        settings.reactors.to_string(),
        "--workers".to_string(),
        settings.workers.to_string(),
    ];
    args.extend_from_slice(extra);
    let process = if baseline::is_base(name) {
        let dir = settings
            .baseline_examples
            .as_ref()
            .ok_or_else(|| io::Error::other(format!("{name}: no --baseline-examples directory")))?;
        ServerProcess::spawn_example_at(&dir.join(baseline::current(name)), &args)?
    } else {
        ServerProcess::spawn_example(name, &args)?
    };
    let addr = process.addr;
    Ok((Running::Own(Some(process)), addr))
}

/// Starts `server` (an example, redis-server, or nginx answering `Hello, world!`) for a
/// run whose files go in `dir`.
pub(crate) fn start_server(
    server: &str,
    settings: &ProtoSettings,
    dir: &Path,
) -> io::Result<(Running, SocketAddr)> {
    match server {
        "kv_server" | "http_hello" | "kv_server@base" | "http_hello@base" => {
            start_example(server, settings, &[])
        }
        "redis-server" => {
            let port = free_port()?;
            let mut command = Command::new(program("redis-server"));
            command.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--io-threads",
                "1",
                "--protected-mode",
                "no",
                "--dir",
                &dir.display().to_string(),
                "--maxclients",
                "10000",
            ]);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            Ok((spawn_peer(command, dir, addr)?, addr))
        }
        "nginx" => {
            let port = free_port()?;
            let d = dir.display();
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
                 \x20   client_body_temp_path {d}/body;\n\
                 \x20   server {{\n\
                 \x20       listen 127.0.0.1:{port};\n\
                 \x20       location / {{ return 200 \"Hello, world!\"; }}\n\
                 \x20   }}\n\
                 }}\n",
                workers = settings.threads,
            );
            let conf_path = dir.join("nginx.conf");
            fs::write(&conf_path, conf)?;
            let mut command = Command::new(program("nginx"));
            command
                .arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&conf_path);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            Ok((spawn_peer(command, dir, addr)?, addr))
        }
        other => Err(io::Error::other(format!("unknown server {other}"))),
    }
}
