//! Where and how the example servers listen: the flags they share.
//!
//! ```text
//! --addr HOST:PORT        TCP address (each example has its own default port)
//! --unix PATH             a Unix domain socket instead (a stale file is replaced)
//! --tls-cert PEM --tls-key PEM
//!                         TLS with this certificate chain and private key
//!                         (build with `--features tls`)
//! --proxy-protocol        expect a PROXY protocol v1/v2 header first (behind HAProxy)
//! ```
//!
//! Started by systemd (or `systemd-socket-activate`) with a listening socket passed in
//! `LISTEN_FDS`, an example serves that socket and ignores `--addr` and `--unix`.

#![allow(dead_code)] // each example uses the part it needs

use std::net::SocketAddr;
use std::path::PathBuf;

use reactor_pool::{Builder, ListenAddr, ServerHandle};

/// The listening flags of an example server.
#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: SocketAddr,
    pub unix: Option<PathBuf>,
    /// Certificate chain and private key, PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub proxy_protocol: bool,
}

impl From<SocketAddr> for Listen {
    fn from(addr: SocketAddr) -> Self {
        Listen {
            addr,
            unix: None,
            tls: None,
            proxy_protocol: false,
        }
    }
}

impl Listen {
    /// Takes `--addr` (default `default_addr`), `--unix`, `--tls-cert`, `--tls-key` and
    /// `--proxy-protocol` from `args`.
    pub fn from_args(
        args: &mut pico_args::Arguments,
        default_addr: &str,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let addr = match args.opt_value_from_str("--addr")? {
            Some(addr) => addr,
            None => default_addr.parse()?,
        };
        let unix: Option<PathBuf> = args.opt_value_from_str("--unix")?;
        let cert: Option<PathBuf> = args.opt_value_from_str("--tls-cert")?;
        let key: Option<PathBuf> = args.opt_value_from_str("--tls-key")?;
        let tls = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        let proxy_protocol = args.contains("--proxy-protocol");
        Ok(Listen {
            addr,
            unix,
            tls,
            proxy_protocol,
        })
    }

    /// A builder listening where the flags say (sockets passed by systemd first), with the
    /// PROXY protocol and TLS as asked.
    pub fn builder(&self) -> std::io::Result<Builder> {
        let builder = if Builder::listen_fds_passed() {
            Builder::from_listen_fds()
        } else if let Some(path) = &self.unix {
            Builder::bind_unix(path)
        } else {
            Builder::bind(self.addr)
        };
        let builder = builder.proxy_protocol(self.proxy_protocol);
        match &self.tls {
            None => Ok(builder),
            Some((cert, key)) => with_tls(builder, cert, key),
        }
    }

    /// How to reach `server`, for the "listening on" line: `scheme://addr`, or the socket
    /// path.
    pub fn describe(&self, server: &ServerHandle, scheme: &str) -> String {
        let proxy = if self.proxy_protocol {
            " (PROXY protocol)"
        } else {
            ""
        };
        match server.local_addr() {
            ListenAddr::Tcp(addr) if !scheme.is_empty() => format!("{scheme}://{addr}{proxy}"),
            addr => format!("{addr}{proxy}"),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

#[cfg(feature = "tls")]
fn with_tls(
    builder: Builder,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<Builder> {
    use reactor_pool::rustls::pki_types::pem::PemObject;
    use reactor_pool::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: {e}", what.display()),
        )
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, &e))?;
    let mut config = reactor_pool::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| invalid(cert, &e))?;
    // HTTP/1.1 is the only protocol the examples speak that ALPN names.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(builder.tls(std::sync::Arc::new(config)))
}

#[cfg(not(feature = "tls"))]
fn with_tls(
    _builder: Builder,
    _cert: &std::path::Path,
    _key: &std::path::Path,
) -> std::io::Result<Builder> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "built without TLS: rebuild with `--features tls`",
    ))
}
