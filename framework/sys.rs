//! Every platform-specific fact the library depends on, in one place. The library itself
//! makes no `unsafe` call: sockets go through mio and socket2.

use std::io;

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
