//! What lies beneath a connection's protocol: listeners (TCP, Unix, a socket systemd passed)
//! and the accepted streams they give ([`net`]), a PROXY protocol header ([`proxy`]), TLS
//! ([`tls`], feature `tls`), and the wire that puts them together for one connection
//! ([`wire`]). Owns every socket call but the platform's own ([`crate::sys`]).
//!
//! May import: `sys`, `util`, `handler` (who the peer is). Nothing here knows about requests,
//! connections' state or threads.

mod listen_addr;
pub(crate) mod net;

pub use listen_addr::ListenAddr;
pub(crate) mod proxy;
#[cfg(feature = "tls")]
pub(crate) mod tls;
pub(crate) mod wire;
