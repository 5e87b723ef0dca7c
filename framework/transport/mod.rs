//! What lies beneath a connection's protocol: listeners (TCP, Unix, a socket systemd passed)
//! and the accepted streams they give ([`net`]), a PROXY protocol header ([`proxy`]), TLS
//! ([`tls`], feature `tls`), and the wire that puts them together for one connection
//! ([`wire`]). Owns every socket call but the platform's own ([`crate::sys`]).
//!
//! May import: `sys`, `util`, `handler` (who the peer is). Nothing here knows about requests,
//! connections' state or threads.

/// Implements mio's `Source` for `$ty` by handing each call to the socket `$inner` borrows
/// (`$this` being the value): the listener, the stream and the wire each wrap one.
macro_rules! source_via {
    ($ty:ty, $this:ident => $inner:expr) => {
        impl mio::event::Source for $ty {
            fn register(
                &mut self,
                registry: &mio::Registry,
                token: mio::Token,
                interest: mio::Interest,
            ) -> std::io::Result<()> {
                let $this = self;
                mio::event::Source::register($inner, registry, token, interest)
            }

            fn reregister(
                &mut self,
                registry: &mio::Registry,
                token: mio::Token,
                interest: mio::Interest,
            ) -> std::io::Result<()> {
                let $this = self;
                mio::event::Source::reregister($inner, registry, token, interest)
            }

            fn deregister(&mut self, registry: &mio::Registry) -> std::io::Result<()> {
                let $this = self;
                mio::event::Source::deregister($inner, registry)
            }
        }
    };
}

mod listen_addr;
pub(crate) mod net;

pub use listen_addr::ListenAddr;
pub(crate) mod proxy;
#[cfg(feature = "tls")]
pub(crate) mod tls;
pub(crate) mod wire;
