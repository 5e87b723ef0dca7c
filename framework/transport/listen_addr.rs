//! [`ListenAddr`]: the address a server accepts on, TCP or a Unix domain socket, said as
//! such.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The address a server accepts on ([`ServerHandle::local_addr`](crate::ServerHandle::local_addr)):
/// TCP or a Unix domain socket, said as such.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenAddr {
    /// A TCP listener's address, with the real port when it was bound to port 0.
    Tcp(SocketAddr),
    /// A Unix domain socket, by its path; `None` for an unnamed socket (one passed by a
    /// parent process, say).
    Unix(Option<PathBuf>),
}

impl ListenAddr {
    /// The TCP address; `None` for a Unix domain socket.
    #[must_use]
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(addr) => Some(*addr),
            ListenAddr::Unix(_) => None,
        }
    }

    /// The Unix domain socket's path; `None` for TCP or an unnamed socket.
    #[must_use]
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            ListenAddr::Unix(path) => path.as_deref(),
            ListenAddr::Tcp(_) => None,
        }
    }
}

/// So `TcpStream::connect(server.local_addr())` works for a TCP server; for a Unix domain
/// socket it fails with `InvalidInput`.
impl std::net::ToSocketAddrs for ListenAddr {
    type Iter = std::option::IntoIter<SocketAddr>;

    fn to_socket_addrs(&self) -> io::Result<Self::Iter> {
        match self {
            ListenAddr::Tcp(addr) => Ok(Some(*addr).into_iter()),
            ListenAddr::Unix(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{self} is a Unix domain socket, not a TCP address"),
            )),
        }
    }
}

/// `127.0.0.1:20000`, `unix:/run/echo.sock`, or `an unnamed unix socket`.
impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(Some(path)) => write!(f, "unix:{}", path.display()),
            ListenAddr::Unix(None) => write!(f, "an unnamed unix socket"),
        }
    }
}
