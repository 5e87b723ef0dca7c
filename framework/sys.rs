//! Every platform-specific fact the library depends on, in one place, and the library's only
//! `unsafe` code (one system call that no well-kept crate wraps on its own). Sockets go
//! through mio and socket2.

use std::io;
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

/// Who is at the other end of a Unix domain socket, as the kernel recorded it when the peer
/// connected (Linux and Android: SO_PEERCRED): uid, gid and pid.
///
/// # Errors
///
/// The error of `getsockopt`; [`io::ErrorKind::Unsupported`] on other platforms.
#[cfg(unix)]
pub(crate) fn peer_credentials(
    socket: std::os::fd::BorrowedFd<'_>,
) -> io::Result<(u32, u32, Option<u32>)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `socket` is a valid descriptor for the duration of the borrow; `cred` is a
        // writable ucred and `len` holds its exact size, so the kernel writes at most that
        // many bytes into memory we own; both outlive the call.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((
            cred.uid,
            cred.gid,
            u32::try_from(cred.pid).ok().filter(|&pid| pid > 0),
        ))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = socket;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "peer credentials are not available on this platform",
        ))
    }
}

/// The first descriptor a socket-activating service manager passes (sd_listen_fds(3)).
#[cfg(unix)]
const SD_LISTEN_FDS_START: i32 = 3;

/// Takes the listening sockets systemd (or `systemd-socket-activate`) passed this process:
/// `LISTEN_FDS` descriptors from 3 on, when `LISTEN_PID` names this process. Empty when
/// there are none. The variables are left as they are: a child process is protected from
/// mistaking them for its own by the `LISTEN_PID` check.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidInput`] when the variables are malformed or the sockets were
/// already taken by an earlier call in this process.
#[cfg(unix)]
pub(crate) fn take_listen_fds() -> io::Result<Vec<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);

    let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (our parent, most often).
        return Ok(Vec::new());
    }
    let count: i32 = std::env::var("LISTEN_FDS")
        .map_err(|_| invalid("LISTEN_PID is set but LISTEN_FDS is not".into()))?
        .trim()
        .parse()
        .map_err(|e| invalid(format!("LISTEN_FDS is not a count: {e}")))?;
    if !(0..=1024).contains(&count) {
        return Err(invalid(format!("LISTEN_FDS={count} is out of range")));
    }
    // Relaxed is enough: the flag only guards against a second claim in this process; it
    // orders no other memory.
    if TAKEN.swap(true, Ordering::Relaxed) {
        return Err(invalid(
            "the LISTEN_FDS sockets were already taken in this process".into(),
        ));
    }
    let mut fds = Vec::with_capacity(count as usize);
    for fd in SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + count {
        // SAFETY: the service manager's contract (sd_listen_fds(3)) is that descriptors
        // 3..3+LISTEN_FDS are open, belong to this process (LISTEN_PID checked above) and
        // are owned by no one else in it; TAKEN makes this the only claim, so each
        // descriptor gets exactly one owner, which closes it once.
        #[allow(unsafe_code)]
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        fds.push(owned);
    }
    Ok(fds)
}
