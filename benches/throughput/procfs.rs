//! What the scenarios read from /proc about a server: its processes (nginx: the master and
//! its workers), their peak resident sets, CPU time and context switches (every scenario's
//! `cs/req` and `wakes/req`), and the CPU time of this process's reaped children (the curl
//! clients).

use std::fs;

use serde::Serialize;

use crate::runner::{self, cpu_seconds, status_field};

/// `pid` and its direct children (nginx's workers), `pid` first.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    let mut children: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| p != pid && parent(p) == Some(pid))
        .collect();
    children.sort_unstable();
    pids.extend(children);
    pids
}

/// The parent of `pid`, from /proc/PID/stat (field 4, after the command name).
fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A process's peak resident set (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status_field(&status, "VmHWM:").unwrap_or(0)
}

/// A process's utime + stime so far (all its threads), in seconds.
pub fn cpu_s(pid: u32) -> f64 {
    cpu_seconds(&format!("/proc/{pid}/stat")).unwrap_or(0.0)
}

/// Context switches of a server's threads, as /proc/PID/task/TID/status counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Switches {
    /// `voluntary_ctxt_switches`: a thread blocked (in epoll_wait, a futex, a read...) and
    /// gave up its CPU, to be woken later: a wake-up.
    pub voluntary: u64,
    /// `nonvoluntary_ctxt_switches`: the scheduler took the CPU from a runnable thread.
    pub nonvoluntary: u64,
}

impl Switches {
    /// The sum over every live thread of every process of `pids` (a thread that has
    /// exited no longer counts: its switches are gone from /proc).
    pub fn of(pids: &[u32]) -> Switches {
        pids.iter().fold(Switches::default(), |sum, &pid| {
            let one = Switches::of_process(pid);
            Switches {
                voluntary: sum.voluntary + one.voluntary,
                nonvoluntary: sum.nonvoluntary + one.nonvoluntary,
            }
        })
    }

    /// The sum over /proc/PID/task/*/status: /proc/PID/status counts the main thread only.
    fn of_process(pid: u32) -> Switches {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return Switches::default();
        };
        tasks
            .filter_map(|t| fs::read_to_string(t.ok()?.path().join("status")).ok())
            .fold(Switches::default(), |sum, status| Switches {
                voluntary: sum.voluntary
                    + status_field(&status, "voluntary_ctxt_switches:").unwrap_or(0),
                nonvoluntary: sum.nonvoluntary
                    + status_field(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0),
            })
    }

    /// Voluntary + nonvoluntary.
    pub fn total(self) -> u64 {
        self.voluntary + self.nonvoluntary
    }

    /// The switches from `earlier` to `self` (none where a thread's exit made a count fall).
    pub fn since(self, earlier: Switches) -> Switches {
        Switches {
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            nonvoluntary: self.nonvoluntary.saturating_sub(earlier.nonvoluntary),
        }
    }

    /// (context switches, wake-ups) per request, `requests` of them; `None` without any.
    pub fn per_request(self, requests: u64) -> Option<PerRequest> {
        (requests > 0).then(|| PerRequest {
            cs: self.total() as f64 / requests as f64,
            wakes: self.voluntary as f64 / requests as f64,
        })
    }
}

/// A window's context switches per request (`cs/req`: voluntary + nonvoluntary) and
/// wake-ups per request (`wakes/req`: the voluntary ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PerRequest {
    pub cs: f64,
    pub wakes: f64,
}

/// A `cs/req` or `wakes/req` cell: 2 decimals, `-` when nothing was measured.
pub fn per_request_cells(p: Option<PerRequest>) -> [String; 2] {
    p.map_or(["-".into(), "-".into()], |p| {
        [format!("{:.2}", p.cs), format!("{:.2}", p.wakes)]
    })
}

/// utime + stime of this process's children that have been waited for, in seconds.
pub fn reaped_children_cpu_s() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the call's duration.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A sample of a server's processes and the machine, to subtract from a later one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// CPU seconds of the server's processes.
    pub server_cpu: f64,
    pub server_switches: Switches,
    /// CPU seconds of this process and its reaped children (the clients).
    pub client_cpu: f64,
    /// The machine's busy + stolen CPU seconds.
    pub machine: f64,
}

/// The machine's busy (user, nice, system, irq, softirq) + stolen CPU seconds so far. This
/// kernel accounts CPU time by ticks (no CONFIG_IRQ_TIME_ACCOUNTING): a softirq tick, such
/// as loopback TCP's receive path, is charged to the process it interrupted as well, so
/// busy - server - clients is the rest of the machine.
fn machine_cpu() -> f64 {
    let (busy, steal) = runner::machine_cpu();
    busy + steal
}

impl Sample {
    pub fn take(pids: &[u32]) -> Sample {
        Sample {
            server_cpu: pids.iter().map(|&p| cpu_s(p)).sum(),
            server_switches: Switches::of(pids),
            client_cpu: cpu_seconds("/proc/self/stat").unwrap_or(0.0) + reaped_children_cpu_s(),
            machine: machine_cpu(),
        }
    }

    /// CPU seconds the rest of the machine used between `self` and `later`: other
    /// processes, interrupts, the hypervisor's steal.
    pub fn background_s(&self, later: &Sample) -> f64 {
        ((later.machine - self.machine)
            - (later.server_cpu - self.server_cpu)
            - (later.client_cpu - self.client_cpu))
            .max(0.0)
    }
}
