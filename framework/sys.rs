//! Every platform-specific fact the library depends on, in one place, and the library's only
//! `unsafe` code (one system call that no well-kept crate wraps on its own). Sockets go
//! through mio and socket2.

use std::io::{self, Read, Write};
use std::thread::{self, JoinHandle};

/// Starts a named thread; the server starts every thread through one of these, so a test
/// can stand in a spawner that fails.
pub(crate) type Spawn<'a> =
    dyn FnMut(String, Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>> + 'a;

/// The real [`Spawn`]: a named OS thread.
pub(crate) fn spawn_thread(
    name: String,
    run: Box<dyn FnOnce() + Send>,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name).spawn(run)
}

/// Whether a failed `accept()` means the process or system is out of descriptors or
/// memory (EMFILE, ENFILE, ENOBUFS, ENOMEM). Retrying such an error at once would spin:
/// the connection stays in the backlog and the same error comes back.
pub(crate) fn is_resource_exhaustion(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        if matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        ) {
            return true;
        }
    }
    error.kind() == io::ErrorKind::OutOfMemory
}

/// Sets SO_REUSEPORT, where the platform has it.
pub(crate) fn set_reuse_port(socket: &socket2::Socket) -> io::Result<()> {
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    return socket.set_reuse_port(true);
    #[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
    {
        let _ = socket;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_REUSEPORT is not available on this platform",
        ))
    }
}

/// Puts the calling thread under Linux's SCHED_BATCH policy: when another thread wakes it,
/// it does not preempt the thread running on that CPU but waits for the CPU's next
/// scheduling point (or takes an idle CPU). A no-op elsewhere.
pub(crate) fn set_batch_scheduling() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 names the calling thread; `param` is a valid, initialised
        // sched_param that outlives the call (the kernel only reads it); SCHED_BATCH requires
        // priority 0 and no privilege. The call touches no memory of ours.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// [`set_batch_scheduling`] for a server thread; a failure is logged once per process and
/// otherwise ignored (the thread runs under the default policy).
pub(crate) fn prefer_batch_scheduling() {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(e) = set_batch_scheduling() {
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::warn!("cannot put server threads under SCHED_BATCH: {e}");
        }
    }
}

/// A byte stream the connection reads and writes, and whose write side it can shut down.
pub(crate) trait Transport: Read + Write {
    /// Sends our FIN; the peer can still send to us.
    fn shutdown_write(&mut self) -> io::Result<()>;
}

impl Transport for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}
