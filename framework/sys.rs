//! Every platform-specific fact the library depends on, in one place, and the library's only
//! `unsafe` code, each block with its contract: the calls no well-kept crate wraps on their
//! own (`sched_setscheduler`, `getsockopt(SO_PEERCRED)`, `prctl(PR_SET_TIMERSLACK)`, and
//! `flock` on a Unix socket path's lock file, std's `File::lock` being newer than our MSRV)
//! and the adoption of the listening socket systemd passes (`fcntl(F_GETFD)`, a borrowed
//! then an owned descriptor 3). Sockets go through mio and socket2.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Whether a failed `accept()` only means that one connection is gone (the peer reset or
/// aborted it while it waited in the backlog, ECONNABORTED, EPROTO, EPERM by a firewall):
/// the next one can be taken at once. Anything else (out of descriptors or memory, a
/// listener that cannot accept) comes straight back if retried, so accepting pauses.
pub(crate) fn is_peer_gone(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        if matches!(
            error.raw_os_error(),
            Some(
                libc::ECONNABORTED
                    | libc::EPROTO
                    | libc::EPERM
                    | libc::ENETDOWN
                    | libc::EHOSTUNREACH
                    | libc::ENETUNREACH
                    | libc::ECONNRESET
            )
        ) {
            return true;
        }
    }
    error.kind() == io::ErrorKind::ConnectionAborted
        || error.kind() == io::ErrorKind::ConnectionReset
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
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const param) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// [`set_batch_scheduling`] for a server thread; a failure is logged once per process and
/// otherwise ignored (the thread runs under the default policy).
pub(crate) fn prefer_batch_scheduling() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    warn_once(
        &WARNED,
        "cannot put server threads under SCHED_BATCH",
        set_batch_scheduling(),
    );
}

/// Logs `result`'s error, the first time `warned` sees one: a per-thread setting that fails
/// fails on every thread, and one line says it.
fn warn_once(warned: &AtomicBool, what: &str, result: io::Result<()>) {
    if let Err(e) = result {
        // Relaxed: the flag only keeps the line from repeating; it orders no other memory.
        if !warned.swap(true, Ordering::Relaxed) {
            log::warn!("{what}: {e}");
        }
    }
}

/// Who is at the other end of a Unix domain socket, as the kernel recorded it when the peer
/// connected (Linux and Android: `SO_PEERCRED`): uid, gid and pid.
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
        // A ucred is 12 bytes: it fits a socklen_t.
        let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>())
            .expect("a ucred fits a socklen_t");
        // SAFETY: `socket` is a valid descriptor for the duration of the borrow; `cred` is a
        // writable ucred and `len` holds its exact size, so the kernel writes at most that
        // many bytes into memory we own; both outlive the call.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &raw mut len,
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

/// Takes an exclusive `flock(2)` lock on `file`, waiting while another open file
/// description holds it (in this process or another). The lock belongs to the open file
/// description, so it is released when the last descriptor of it closes; a second open of
/// the same file, even in this process, is another description and waits for the first.
///
/// # Errors
///
/// The error of `flock` (EINTR is retried).
#[cfg(unix)]
pub(crate) fn lock_exclusive(file: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: `file` is an open descriptor for the duration of the borrow; flock takes
        // it and the operation by value and reads or writes no memory of ours.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        // A signal handler ran while we waited: the lock is not ours yet, wait again.
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Whether a failed write (`sendfile` included) says the peer is gone (counted as a reset),
/// not that what was being written failed (a file that cannot be read: a body error).
pub(crate) fn is_peer_gone_on_write(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::TimedOut
    ) || matches!(
        error.raw_os_error(),
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ENETDOWN)
    )
}

/// Copies up to `count` bytes of `file`, from `offset`, to the socket `socket` inside the
/// kernel (`sendfile(2)`), without the bytes passing through user space, and advances
/// `offset` by what it sent. Linux and Android; `Unsupported` elsewhere, where the caller
/// reads and writes instead.
///
/// Returns the bytes sent: 0 when `offset` is at or past the file's end (it shrank), fewer
/// than `count` when the socket's buffer filled.
///
/// # Errors
///
/// `WouldBlock` when the (non-blocking) socket is full; the error of `sendfile` otherwise
/// (EPIPE or ECONNRESET when the peer left, EIO when the file cannot be read).
pub(crate) fn send_file(
    socket: std::os::fd::BorrowedFd<'_>,
    file: &std::fs::File,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let mut off = libc::off64_t::try_from(*offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset too large"))?;
        // SAFETY: both descriptors are open for the duration of the borrows; sendfile64
        // reads and writes no memory of ours but `off`, a live local it updates in place.
        // `count` is any size: the kernel sends at most what it can.
        #[allow(unsafe_code)]
        let sent =
            unsafe { libc::sendfile64(socket.as_raw_fd(), file.as_raw_fd(), &raw mut off, count) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        *offset = u64::try_from(off).unwrap_or(*offset);
        Ok(usize::try_from(sent).unwrap_or(0))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (socket, file, offset, count);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Keeps the file at `path` (a symlink itself, not followed) from giving up its inode for as
/// long as the returned file is open, even once the file is removed: its device and inode
/// then name it alone, where a file system such as ext4 gives a freed inode number to the
/// next file it creates (a successor's socket, bound where ours was). Linux and Android: an
/// `O_PATH` descriptor, which any file, a socket too, can be opened as without being read.
/// `None` elsewhere.
///
/// # Errors
///
/// The error of `open`.
pub(crate) fn pin_inode(path: &std::path::Path) -> io::Result<Option<std::fs::File>> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_PATH ignores the access mode; std adds O_CLOEXEC, which O_PATH keeps.
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(path)
            .map(Some)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = path;
        Ok(None)
    }
}

/// The first descriptor a socket-activating service manager passes (`sd_listen_fds(3)`).
#[cfg(unix)]
const SD_LISTEN_FDS_START: i32 = 3;

/// Takes the listening socket systemd (or `systemd-socket-activate`) passed this process:
/// the first of the `LISTEN_FDS` descriptors (`sd_listen_fds(3)`: they start at 3), when
/// `LISTEN_PID` names this process and descriptor 3 is an open, listening stream socket.
/// `None` when nothing was passed. Any further descriptors are left alone, open: they are
/// not ours to close. The variables are left as they are: a child process cannot mistake
/// them for its own, because of the `LISTEN_PID` check.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidInput`] when the variables are malformed, the socket was already
/// taken in this process, or descriptor 3 is not an open listening stream socket.
#[cfg(unix)]
pub(crate) fn take_listen_fd() -> io::Result<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::{BorrowedFd, FromRawFd};
    static TAKEN: AtomicBool = AtomicBool::new(false);

    let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (our parent, most often).
        return Ok(None);
    }
    let count: i32 = std::env::var("LISTEN_FDS")
        .map_err(|_| invalid("LISTEN_PID is set but LISTEN_FDS is not".into()))?
        .trim()
        .parse()
        .map_err(|e| invalid(format!("LISTEN_FDS is not a count: {e}")))?;
    if count < 1 {
        return Ok(None);
    }
    if count > 1 {
        log::warn!("{count} listening sockets passed; serving the first, leaving the rest");
    }
    let fd = SD_LISTEN_FDS_START;
    // SAFETY: F_GETFD only reads the descriptor's flags; it touches no memory of ours and is
    // harmless on a descriptor that is not open (it fails with EBADF).
    #[allow(unsafe_code)]
    let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
    if !open {
        return Err(invalid(format!(
            "LISTEN_FDS names descriptor {fd}, which is not open"
        )));
    }
    // SAFETY: the descriptor is open (checked above) and stays open for this borrow, which
    // ends before this function returns.
    #[allow(unsafe_code)]
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let socket = socket2::SockRef::from(&borrowed);
    let listening = socket.r#type().ok() == Some(socket2::Type::STREAM)
        && socket.is_listener().unwrap_or(false);
    if !listening {
        return Err(invalid(format!(
            "descriptor {fd} from LISTEN_FDS is not a listening stream socket"
        )));
    }
    // Relaxed is enough: the flag only guards against a second claim in this process; it
    // orders no other memory.
    if TAKEN.swap(true, Ordering::Relaxed) {
        return Err(invalid(
            "the LISTEN_FDS socket was already taken in this process".into(),
        ));
    }
    // SAFETY: the service manager's contract (`sd_listen_fds(3)`) is that descriptor 3 is
    // passed to this process (LISTEN_PID checked above) for it to own, and it is an open
    // listening socket (checked above), not some file of ours that reused the number; TAKEN
    // makes this the only claim in the process, so it gets exactly one owner, which closes
    // it once.
    #[allow(unsafe_code)]
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    Ok(Some(owned))
}

/// Sets the calling thread's timer slack (Linux's `PR_SET_TIMERSLACK`): how late the kernel
/// may fire its timed waits (a sleep, a timeout) to batch wake-ups. The default, 50 µs, makes
/// a 1 ms sleep take about 1.06 ms. A no-op elsewhere.
pub(crate) fn set_timer_slack(slack: std::time::Duration) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // 0 would mean "back to the default": the smallest slack is 1 ns.
        let nanos = libc::c_ulong::try_from(slack.as_nanos().max(1)).unwrap_or(libc::c_ulong::MAX);
        // SAFETY: PR_SET_TIMERSLACK takes its argument by value and changes only the calling
        // thread's timer slack; it reads and writes no memory of ours.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, nanos, 0, 0, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = slack;
    Ok(())
}

/// [`set_timer_slack`] for a worker thread; a failure is logged once per process and
/// otherwise ignored.
pub(crate) fn prefer_timer_slack(slack: std::time::Duration) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    warn_once(
        &WARNED,
        "cannot set the workers' timer slack",
        set_timer_slack(slack),
    );
}

/// The largest listen backlog the system honours (Linux: `/proc/sys/net/core/somaxconn`,
/// which caps whatever `listen` asks for); 1024 where it cannot be read.
pub(crate) fn listen_backlog_limit() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&n| n > 0)
        .map_or(1024, |n| n.min(i32::MAX as u32))
}
