//! What a connection speaks over its socket before and beneath its protocol: an optional
//! PROXY protocol header, then plaintext or TLS. The connection sees a [`Wire`] as one
//! [`Transport`] of plaintext; the wire tells it when the preamble (header, handshake) is
//! done, so the session opens only then, with the client the header named.

use std::io::{self, Read, Write};
#[cfg(feature = "tls")]
use std::sync::Arc;

use crate::handler::{Context, Peer};
use crate::transport::net::{Stream, Transport};
use crate::transport::proxy::{self, Parsed, MAX_HEADER};
#[cfg(feature = "tls")]
use crate::transport::tls::Tls;

/// The transports every connection of a server gets.
#[derive(Clone, Default)]
pub(crate) struct WireConfig {
    /// Expect a PROXY protocol header (v1 or v2) first.
    pub proxy_protocol: bool,
    /// TCP keepalive for accepted TCP streams.
    pub keepalive: Option<socket2::TcpKeepalive>,
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Where the PROXY header stands.
enum Header {
    /// Not expected.
    None,
    /// Expected: the bytes received so far.
    Awaited(Vec<u8>),
    /// Received: what it said, until the connection takes it.
    Received(proxy::ProxyHeader),
    /// Received and taken.
    Taken,
}

/// A connection's socket with its preamble and encryption.
pub(crate) struct Wire {
    beneath: Beneath,
    header: Header,
    #[cfg(feature = "tls")]
    tls: Option<Box<Tls>>,
}

/// The socket, with the bytes that arrived after the PROXY header served first: what TLS
/// (or the plaintext protocol) reads from.
struct Beneath {
    stream: Stream,
    /// Bytes that arrived after the PROXY header: the start of the stream proper.
    early: Vec<u8>,
    early_read: usize,
    /// An error the socket gave while topping up a read of `early` bytes: the next read's.
    deferred: Option<io::Error>,
}

impl Wire {
    /// Wraps `stream` as `config` says.
    ///
    /// Errors: rustls refusing the configuration.
    // Without the `tls` feature nothing can fail, but the signature is one for both builds.
    #[cfg_attr(not(feature = "tls"), allow(clippy::unnecessary_wraps))]
    pub fn new(stream: Stream, config: &WireConfig) -> io::Result<Self> {
        if let (Some(keepalive), Stream::Tcp(tcp)) = (&config.keepalive, &stream) {
            socket2::SockRef::from(tcp).set_tcp_keepalive(keepalive)?;
        }
        Ok(Wire {
            beneath: Beneath {
                stream,
                early: Vec::new(),
                early_read: 0,
                deferred: None,
            },
            header: if config.proxy_protocol {
                Header::Awaited(Vec::new())
            } else {
                Header::None
            },
            #[cfg(feature = "tls")]
            tls: match &config.tls {
                Some(tls) => Some(Box::new(Tls::new(tls)?)),
                None => None,
            },
        })
    }

    /// Reads the PROXY header; Ok once it is complete.
    fn read_header(&mut self) -> io::Result<()> {
        let Header::Awaited(got) = &mut self.header else {
            return Ok(());
        };
        loop {
            match proxy::parse(got) {
                Ok(Parsed::Complete { header, len }) => {
                    self.beneath.early = got.split_off(len);
                    self.header = Header::Received(header);
                    return Ok(());
                }
                Ok(Parsed::Incomplete) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("PROXY header: {e}"),
                    ))
                }
            }
            let mut chunk = [0u8; 256];
            let want = (MAX_HEADER - got.len()).clamp(1, chunk.len());
            match self.beneath.stream.read(&mut chunk[..want]) {
                Ok(0) if got.is_empty() => {
                    // A probe (a proxy's health check) that connected and left.
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "PROXY header: the peer closed before the header was complete",
                    ))
                }
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e),
            }
        }
    }

    /// What the preamble taught about the connection, applied to `ctx` (once): the client
    /// a PROXY header named, and whether it is encrypted.
    fn apply_preamble(&mut self, ctx: &mut Context) {
        #[cfg(feature = "tls")]
        {
            ctx.tls = self.tls.is_some();
        }
        if let Header::Received(header) = std::mem::replace(&mut self.header, Header::Taken) {
            if let Some(source) = header.source {
                ctx.proxy = Some(ctx.peer);
                ctx.peer = Peer::Tcp(source);
            }
        } else if let Header::Awaited(_) = self.header {
            unreachable!("applied before the header arrived");
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.read_header() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_deref_mut() {
            return tls.read(&mut self.beneath, buf);
        }
        self.beneath.read(buf)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_deref_mut() {
            return tls.write(&mut self.beneath, buf);
        }
        self.beneath.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Wire {
    fn shutdown_write(&mut self) -> io::Result<()> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_deref_mut() {
            return tls.shutdown_write(&mut self.beneath);
        }
        self.beneath.stream.shutdown_write()
    }

    /// Over once the PROXY header (if expected) arrived and the TLS handshake (if any) is
    /// done.
    fn is_established(&self) -> bool {
        if let Header::Awaited(_) = self.header {
            return false;
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return !tls.is_handshaking();
        }
        true
    }

    /// Encrypted records, and our FIN after them.
    fn holds_output(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return tls.holds_output();
        }
        false
    }

    fn read_pending(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return tls.read_pending();
        }
        false
    }

    fn flush_held(&mut self) -> io::Result<()> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_deref_mut() {
            return tls.flush(&mut self.beneath);
        }
        Ok(())
    }

    fn apply_to(&mut self, ctx: &mut Context) {
        self.apply_preamble(ctx);
    }

    /// Plaintext only: under TLS the file's bytes must be encrypted here.
    fn send_file(
        &mut self,
        file: &std::fs::File,
        offset: &mut u64,
        count: usize,
    ) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return Err(io::ErrorKind::Unsupported.into());
        }
        self.beneath.stream.send_file(file, offset, count)
    }

    fn before_close(&mut self) {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.close_notify(&mut self.beneath);
        }
    }
}

source_via!(Wire, wire => &mut wire.beneath.stream);

impl Read for Beneath {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.early_read < self.early.len() {
            let n = (self.early.len() - self.early_read).min(buf.len());
            buf[..n].copy_from_slice(&self.early[self.early_read..self.early_read + n]);
            self.early_read += n;
            if self.early_read == self.early.len() {
                self.early = Vec::new();
                self.early_read = 0;
            }
            if n == buf.len() {
                return Ok(n);
            }
            // A short read must mean the socket is drained (the edge-triggered contract):
            // top up from the socket.
            return match self.stream.read(&mut buf[n..]) {
                Ok(more) => Ok(n + more),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
                Err(e) => {
                    self.deferred = Some(e);
                    Ok(n)
                }
            };
        }
        if let Some(error) = self.deferred.take() {
            return Err(error);
        }
        self.stream.read(buf)
    }
}

impl Write for Beneath {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Beneath {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.shutdown_write()
    }
}
