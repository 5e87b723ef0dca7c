//! The sockets: what the server listens on (TCP, a Unix domain socket, or sockets a service
//! manager passed), what it accepts, and how each is bound. A [`Stream`] is one accepted
//! socket, whichever kind; everything above this layer treats them alike.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use mio::event::Source;
use socket2::{Domain, Protocol, Socket, Type};

use crate::handler::{Context, Credentials, Peer};
use crate::sys;
use crate::transport::ListenAddr;

/// A byte stream the connection reads and writes, and whose write side it can shut down.
///
/// Reads and writes keep the edge-triggered contract: they come up short, or say
/// WouldBlock, only when the socket underneath did (or ended).
pub(crate) trait Transport: Read + Write {
    /// Sends our FIN; the peer can still send to us.
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Whether the preamble (a PROXY header, a TLS handshake) is over, so the connection's
    /// session may open.
    fn is_established(&self) -> bool {
        true
    }

    /// Whether the last read left something to read that no readiness event will announce
    /// (plaintext or the end of the stream, decrypted from bytes already taken off the
    /// socket): read again without waiting.
    fn read_pending(&self) -> bool {
        false
    }

    /// Whether bytes already written wait inside the transport (encrypted records).
    fn holds_output(&self) -> bool {
        false
    }

    /// Sends what the transport holds; WouldBlock when the socket is full.
    fn flush_held(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Last words before the socket is closed, sent if they fit (TLS's `close_notify`): the
    /// peer has ended its side, so no FIN is needed first. Nothing for a plain stream.
    fn before_close(&mut self) {}

    /// What the preamble taught about the connection (the client a PROXY header named,
    /// encryption), applied to `ctx` once it is established.
    fn apply_to(&mut self, ctx: &mut Context) {
        let _ = ctx;
    }

    /// Writes up to `count` bytes of `file` from `offset` straight from the file to the
    /// socket (`sendfile(2)`), advancing `offset`; 0 when the file ends first.
    /// `Unsupported` where the bytes must pass through this process (TLS, another
    /// platform): the caller then reads the file and writes what it read.
    fn send_file(
        &mut self,
        file: &std::fs::File,
        offset: &mut u64,
        count: usize,
    ) -> io::Result<usize> {
        let _ = (file, offset, count);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// One accepted connection's socket.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Stream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        }
    }

    fn send_file(
        &mut self,
        file: &std::fs::File,
        offset: &mut u64,
        count: usize,
    ) -> io::Result<usize> {
        let socket = match &*self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        };
        sys::send_file(socket, file, offset, count)
    }
}

impl Stream {
    /// The mio socket underneath, whichever kind it is.
    fn source(&mut self) -> &mut dyn Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }
}

source_via!(Stream, stream => stream.source());

/// A listening socket, non-blocking, owned by the acceptor.
pub(crate) struct Listener {
    socket: ListenSocket,
    /// Whether this server made the socket, so nobody else accepts from its queue.
    ours: bool,
}

enum ListenSocket {
    Tcp(mio::net::TcpListener),
    Unix {
        listener: mio::net::UnixListener,
        /// The socket file this server created, removed when the listener is dropped.
        #[expect(dead_code, reason = "held for its Drop, which removes the file")]
        file: Option<SocketFile>,
    },
}

impl Listener {
    /// Takes a listener bound elsewhere, made non-blocking.
    pub fn tcp(listener: std::net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Listener {
            socket: ListenSocket::Tcp(mio::net::TcpListener::from_std(listener)),
            ours: false,
        })
    }

    /// Takes a Unix listener bound elsewhere, made non-blocking; its file is left alone.
    pub fn unix(listener: std::os::unix::net::UnixListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Listener {
            socket: ListenSocket::Unix {
                listener: mio::net::UnixListener::from_std(listener),
                file: None,
            },
            ours: false,
        })
    }

    /// Whether closing the listener ends its queue (this server made the socket), so what
    /// waits there should be accepted first. A socket passed in may live on in another
    /// process, which will accept what waits.
    pub fn queue_ends_with_us(&self) -> bool {
        self.ours
    }

    /// Binds a TCP listener on `addr` with SO_REUSEADDR (and SO_REUSEPORT if asked).
    pub fn bind_tcp(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // A restarted server can bind while old connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
        if reuse_port {
            sys::set_reuse_port(&socket)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(backlog)?;
        let mut listener = Self::tcp(socket.into())?;
        listener.ours = true;
        Ok(listener)
    }

    /// Binds a Unix domain socket at `path`. A socket file left there by a server that is
    /// gone (connecting to it is refused) is replaced; a live server's socket, or a file
    /// that is not a socket, is an error ([`io::ErrorKind::AddrInUse`]).
    ///
    /// The probe, the removal of a stale file, `bind` and `listen` run under the path's
    /// [`PathLock`]: unlocked, two servers starting at once could both find the file stale
    /// and the second remove the first's, and a socket bound but not yet listening refuses
    /// a probe just as a stale one does.
    pub fn bind_unix(path: &Path, backlog: i32) -> io::Result<Self> {
        let lock = PathLock::take(path)?;
        remove_if_stale(path)?;
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.bind(&socket2::SockAddr::unix(path)?)?;
        let pin = sys::pin_inode(path)?;
        let identity = identity(path, pin.as_ref())?;
        let listening = socket.listen(backlog).and_then(|()| {
            let listener: std::os::unix::net::UnixListener = socket.into();
            listener.set_nonblocking(true)?;
            Ok(listener)
        });
        // No SocketFile exists before this succeeds: dropping one takes the lock again,
        // through another open file description, and would wait for this one forever.
        let std_listener = match listening {
            Ok(listener) => listener,
            Err(e) => {
                remove_if_ours(path, identity);
                return Err(e);
            }
        };
        let file = SocketFile {
            path: path.to_path_buf(),
            identity,
            _pin: pin,
        };
        drop(lock);
        Ok(Listener {
            socket: ListenSocket::Unix {
                listener: mio::net::UnixListener::from_std(std_listener),
                file: Some(file),
            },
            ours: true,
        })
    }

    /// The listening socket a service manager passed (`sd_listen_fds(3)`): the first of
    /// them, TCP or Unix, whichever it is.
    pub fn from_listen_fds() -> io::Result<Self> {
        match sys::take_listen_fd()? {
            Some(fd) => Self::from_fd(fd),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no listening socket passed (LISTEN_FDS and LISTEN_PID are not set for this process)",
            )),
        }
    }

    fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let socket = Socket::from(fd);
        // Passed descriptors come without close-on-exec: our children must not inherit it.
        socket.set_cloexec(true)?;
        if socket.local_addr()?.is_unix() {
            Self::unix(socket.into())
        } else {
            Self::tcp(socket.into())
        }
    }

    pub fn bound(&self) -> io::Result<ListenAddr> {
        Ok(match &self.socket {
            ListenSocket::Tcp(l) => ListenAddr::Tcp(l.local_addr()?),
            ListenSocket::Unix { listener, .. } => {
                ListenAddr::Unix(listener.local_addr()?.as_pathname().map(Path::to_path_buf))
            }
        })
    }

    /// Accepts one connection: its socket and who is at the other end.
    pub fn accept(&self) -> io::Result<(Stream, Peer)> {
        match &self.socket {
            ListenSocket::Tcp(l) => {
                let (stream, addr) = l.accept()?;
                if let Err(e) = stream.set_nodelay(true) {
                    log::debug!("set_nodelay for {addr}: {e}");
                }
                Ok((Stream::Tcp(stream), Peer::Tcp(addr)))
            }
            ListenSocket::Unix { listener, .. } => {
                let (stream, _) = listener.accept()?;
                let credentials = match sys::peer_credentials(stream.as_fd()) {
                    Ok((uid, gid, pid)) => Some(Credentials { uid, gid, pid }),
                    Err(e) => {
                        log::debug!("no credentials for a unix socket peer: {e}");
                        None
                    }
                };
                Ok((Stream::Unix(stream), Peer::Unix(credentials)))
            }
        }
    }
}

impl Listener {
    /// The mio listener underneath, whichever kind it is.
    fn source(&mut self) -> &mut dyn Source {
        match &mut self.socket {
            ListenSocket::Tcp(l) => l,
            ListenSocket::Unix { listener, .. } => listener,
        }
    }
}

source_via!(Listener, listener => listener.source());

/// Removes the socket file at `path` if no server listens on it (connecting is refused);
/// fails with [`io::ErrorKind::AddrInUse`] if one does, or if `path` is not a socket. Call
/// it under the path's [`PathLock`].
fn remove_if_stale(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    // A non-blocking probe: a live server with a full backlog must not hang us.
    let probe = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    probe.set_nonblocking(true)?;
    match probe.connect(&socket2::SockAddr::unix(path)?) {
        Ok(()) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("a server is listening on {}", path.display()),
        )),
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock
                || e.raw_os_error() == Some(libc::EINPROGRESS) =>
        {
            Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "a server is listening on {} (its backlog is full)",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale socket file {}", path.display());
            match std::fs::remove_file(path) {
                // A server that does not take the lock (or a person) removed it: as good.
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot tell whether {} is in use: {e}", path.display()),
        )),
    }
}

/// An exclusive lock on a Unix socket path, shared by every server of this crate (in any
/// process) that binds or removes the socket file there: a `flock` on the sibling file
/// `<path>.lock`, held until dropped. The lock file is left in place: were it removed, a
/// server could lock the removed file while another created and locked a new one under the
/// same name, and both would go ahead.
struct PathLock {
    /// Held for the lock: closing it releases the lock.
    _file: std::fs::File,
}

impl PathLock {
    /// Waits for the lock of the socket at `path`, creating its lock file if need be (mode
    /// 0666 less the umask; close-on-exec, as std opens every file, so a child we spawn
    /// does not hold our lock).
    fn take(path: &Path) -> io::Result<Self> {
        let mut name = path.as_os_str().to_owned();
        name.push(".lock");
        let lock_path = PathBuf::from(name);
        let context =
            |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", lock_path.display()));
        // Opened for writing, which NFS's emulation of flock needs for an exclusive lock;
        // read-only when we may not write it (another user made it), which a local file
        // system's flock accepts.
        let file = match std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            // Nothing is ever written to it; another server may hold it this instant.
            .truncate(false)
            .open(&lock_path)
        {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                std::fs::File::open(&lock_path).map_err(context)?
            }
            opened => opened.map_err(context)?,
        };
        sys::lock_exclusive(file.as_fd()).map_err(context)?;
        Ok(PathLock { _file: file })
    }
}

/// The device and inode of the file at `path` (of `pinned`, the same file held open, when
/// there is one), which tell one socket file from another that replaced it under the same
/// name.
fn identity(path: &Path, pinned: Option<&std::fs::File>) -> io::Result<(u64, u64)> {
    let meta = match pinned {
        Some(file) => file.metadata()?,
        None => std::fs::symlink_metadata(path)?,
    };
    Ok((meta.dev(), meta.ino()))
}

/// Removes the socket file at `path` if it is still the one whose [`identity`] is `ours`.
/// Call it under the path's [`PathLock`], or a server that replaced the file between the
/// check and the removal loses its file.
fn remove_if_ours(path: &Path, ours: (u64, u64)) {
    match identity(path, None) {
        Ok(found) if found == ours => {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("cannot remove {}: {e}", path.display());
            }
        }
        _ => log::debug!(
            "{} was replaced or removed by someone else: left alone",
            path.display()
        ),
    }
}

/// A socket file this server created. Dropping it removes the file, unless it is no longer
/// ours: a new server (a restart) that replaced it keeps its own.
pub(crate) struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file we bound, to recognise it.
    identity: (u64, u64),
    /// The file we bound, held so that its inode number is not given to a file that
    /// replaces it (see [`sys::pin_inode`]); `None` where it cannot be held.
    _pin: Option<std::fs::File>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _lock = match PathLock::take(&self.path) {
            Ok(lock) => lock,
            Err(e) => {
                // Unlocked, the file might be a successor's by the time we remove it; a
                // stale file left behind is harmless: the next server replaces it.
                log::warn!(
                    "{} left in place: cannot take its lock: {e}",
                    self.path.display()
                );
                return;
            }
        };
        remove_if_ours(&self.path, self.identity);
    }
}
