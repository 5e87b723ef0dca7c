//! The [`Builder`]'s transport settings: where the server listens (TCP, a Unix domain
//! socket, sockets passed by systemd) and what its connections speak beneath the protocol
//! (a PROXY protocol header, TLS).

use std::path::Path;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Duration;

use crate::builder::{Builder, Listen};

/// TCP keepalive probes for idle connections ([`Builder::tcp_keepalive`]): after `idle`
/// without traffic the kernel sends a probe every `interval`, and resets the connection
/// after `retries` unanswered ones, so a peer that vanished (a laptop closed, a NAT entry
/// expired) is found even on a connection that is quiet by design.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Quiet time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub retries: u32,
}

impl Builder {
    /// Turns on TCP keepalive for every accepted TCP connection (`SO_KEEPALIVE`,
    /// `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`); a connection the kernel drops this
    /// way is counted in [`Stats::resets`](crate::Stats::resets). Unix sockets need none.
    /// Default: `None` (the system's default: no probes).
    pub fn tcp_keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.wire.keepalive = keepalive.map(|k| {
            socket2::TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval)
                .with_retries(k.retries)
        });
        self
    }

    /// A server that will listen on a Unix domain socket at `path`, created when the server
    /// starts and removed when it stops (unless another server has replaced it by then).
    /// A socket file left by a server that is gone (a crash) is replaced; `start` fails with
    /// [`std::io::ErrorKind::AddrInUse`] if a server is still listening there, or if `path` is a
    /// file that is not a socket. Handlers see [`Peer::Unix`](crate::Peer::Unix) with the
    /// peer's uid, gid and pid ([`Context::credentials`](crate::Context::credentials)).
    ///
    /// Servers sharing `path` take turns under an exclusive `flock` on the sibling file
    /// `<path>.lock` (created if need be, mode 0666 less the umask): a starting server holds
    /// it from its check for a live server until it listens, a stopping one while it checks
    /// that the socket file is still its own and removes it. So of servers started on one
    /// path at once exactly one starts, the others failing with `AddrInUse`, and a server
    /// that replaces a stale file is never left without it. The lock file stays when the
    /// server stops: removing it would let two servers lock two different files of that
    /// name at once. A script that replaces the socket file itself can take the same lock
    /// (`flock(1)`); `start` waits while anyone holds it.
    pub fn bind_unix(path: impl AsRef<Path>) -> Self {
        Self::new(Listen::UnixPath(path.as_ref().to_path_buf()))
    }

    /// A server that will accept on a Unix domain socket bound elsewhere. Its file is left
    /// alone at shutdown. The listener is made non-blocking.
    pub fn from_unix_listener(listener: std::os::unix::net::UnixListener) -> Self {
        Self::new(Listen::UnixListener(listener))
    }

    /// A server that will accept on the listening socket a service manager passed to this
    /// process (systemd socket activation, `systemd-socket-activate`; `sd_listen_fds(3)`):
    /// the first of the `LISTEN_FDS` descriptors when `LISTEN_PID` is this process, TCP or
    /// Unix. Because the socket outlives the process, a restart refuses no connection: they
    /// wait in its backlog (see the README's "Socket activation and restarting without
    /// refusing a connection").
    ///
    /// # Errors
    ///
    /// Reported by [`start`](Builder::start): [`std::io::ErrorKind::NotFound`] when no socket
    /// was passed; [`std::io::ErrorKind::InvalidInput`] when the variables are malformed, the
    /// sockets were already taken in this process, or the socket is not a stream socket.
    pub fn from_listen_fds() -> Self {
        Self::new(Listen::Passed)
    }

    /// Whether the process was given listening sockets by a service manager, so
    /// [`from_listen_fds`](Builder::from_listen_fds) applies: `LISTEN_PID` names this process.
    #[must_use]
    pub fn listen_fds_passed() -> bool {
        std::env::var("LISTEN_PID")
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            == Some(std::process::id())
    }

    /// Expects every connection to start with a PROXY protocol header (version 1 or 2, as
    /// HAProxy's `send-proxy`/`send-proxy-v2`, nginx's `proxy_protocol on` and cloud load
    /// balancers send it), and reports the client it names as
    /// [`Context::peer`](crate::Context::peer); [`Context::proxy`](crate::Context::proxy) then gives the
    /// proxy's own address. The header is honoured only as the very first bytes of a
    /// connection, never later. A connection whose first bytes are not a valid header, or
    /// that ends inside one, is closed and counted in
    /// [`Stats::transport_errors`](crate::Stats::transport_errors); one whose header has not arrived within
    /// [`handshake_timeout`](Builder::handshake_timeout) is closed and counted in
    /// `timeouts`. A header that names no client (a proxy's health check, `LOCAL`) leaves
    /// the socket's peer. Only enable it behind a proxy that always sends the header:
    /// otherwise any client can claim any address. Default: off.
    pub fn proxy_protocol(mut self, enabled: bool) -> Self {
        self.wire.proxy_protocol = enabled;
        self
    }

    /// Serves every connection over TLS with `config` (rustls; ALPN, client authentication
    /// and the rest as `config` sets them). The handshake and the record layer run on the
    /// reactor without blocking; codec and handler see plaintext, with
    /// [`Context::is_tls`](crate::Context::is_tls) true. The session opens once the
    /// handshake is done. A client that sends something other than TLS, fails the
    /// handshake, or cuts a record short with its FIN is closed (with TLS's alert where one
    /// applies), logged, and counted in [`Stats::transport_errors`](crate::Stats::transport_errors);
    /// a handshake not done within [`handshake_timeout`](Builder::handshake_timeout) is
    /// closed and counted in `timeouts`. The server ends a connection with close_notify,
    /// then its FIN. A peer's FIN without close_notify, between records, ends its stream
    /// like a plain FIN. Needs the `tls` cargo feature. Default: plaintext.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.wire.tls = Some(config);
        self
    }

    /// How long a new connection may take to finish its preamble (the PROXY header, the TLS
    /// handshake) from the moment it is accepted; then it is closed without a reply. `None`
    /// disables it. Has no effect on a plain connection, which has no preamble.
    /// Default: 10 s.
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.handshake_timeout = timeout;
        self
    }
}
