//! A blocking multi-threaded TCP server framework for request-response protocols.
//!
//! A [mio] reactor owns every socket: it accepts, reads, decodes and writes. A pool of worker
//! threads runs your [`Handler`], which may block (a database call, a sleep). Requests go to
//! the pool over a bounded [crossbeam-channel] queue; replies come back to the reactor over
//! a channel and one coalesced `mio::Waker`, and are written in request order.
//!
//! You implement a [`Handler`]: a session per connection (`open`, `close`) and a `call` per
//! request, run on a worker with the session `&mut`, one connection's requests in the order
//! they arrived; [`handler_fn`] makes a stateless one from a closure. And a [`Codec`] for
//! framing unless a built-in one fits: [`RawCodec`] (whatever arrived: echo),
//! [`LineCodec`] and [`LengthPrefixedCodec`].
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::TcpStream;
//! use reactor_pool::{handler_fn, Builder, Context, LineCodec};
//!
//! // A line server that may block in its handler: shouts each line back.
//! let server = Builder::bind("127.0.0.1:0")
//!     .workers(4)
//!     .start(
//!         LineCodec::new(),
//!         handler_fn(|line: Vec<u8>, _ctx: &Context| line.to_ascii_uppercase()),
//!     )?;
//!
//! let mut client = TcpStream::connect(server.local_addr())?;
//! client.write_all(b"Hello,server!\n")?;
//! let mut reply = [0u8; 14];
//! client.read_exact(&mut reply)?;
//! assert_eq!(&reply, b"HELLO,SERVER!\n");
//!
//! drop(client);
//! server.shutdown(); // finishes requests in flight, closes cleanly, joins every thread
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Beneath the protocol a connection may speak TLS (`Builder::tls`, cargo feature `tls`,
//! rustls), start with a PROXY protocol header ([`Builder::proxy_protocol`]), arrive on a
//! Unix domain socket ([`Builder::bind_unix`]) or on a socket systemd passed
//! ([`Builder::from_listen_fds`]); the handler sees who the peer is in its [`Context`].
//!
//! How a connection ends follows TCP's four-way close: when the peer sends FIN (`read()`
//! returns 0) every reply it is still owed is written before the server sends its own FIN,
//! and the server never resets a connection that closed cleanly.
//!
//! [mio]: https://docs.rs/mio
//! [crossbeam-channel]: https://docs.rs/crossbeam-channel

#![deny(missing_docs)]
#![deny(unsafe_code)]

// Layers, lowest first; a module imports only from layers below its own:
//   sys, clock, buffer, few, stats, codec, handler   (no crate imports but these)
//   net           the sockets: listeners (TCP, Unix, passed fds), accepted streams, Transport
//   message       the types that cross threads: ConnKey, Job, Reply, Inbound, Mailbox
//   pipeline      one connection's requests in flight and the guarded codec calls
//   outbox        one connection's session and the requests waiting to be handed on
//   proxy, tls    a PROXY protocol header; TLS over a non-blocking socket (feature "tls")
//   wire          a connection's transport: PROXY header, then plaintext or TLS
//   socket        a stream under edge-triggered readiness: reads and writes that track it
//   connection    the per-connection state machine over any Read + Write stream
//   timers, pool, acceptor
//   reactor       owns connections, timers, dispatch to the pool
//   handle        ServerHandle, ShutdownTrigger, StatsReader: the running server
//   server        Builder: settings, validation, starting the threads
//   listen        Builder's transport settings (Unix sockets, systemd, PROXY, TLS)
mod acceptor;
mod buffer;
mod clock;
mod codec;
mod connection;
mod few;
mod handle;
mod handler;
mod listen;
mod message;
mod net;
mod outbox;
mod pipeline;
mod pool;
mod proxy;
mod reactor;
mod server;
mod socket;
mod stats;
mod sys;
mod timers;
#[cfg(feature = "tls")]
mod tls;
mod wire;

pub use codec::{
    AfterReply, Codec, DecodeError, Decoded, Farewell, LengthPrefixedCodec, LineCodec, RawCodec,
    DEFAULT_MAX_FRAME,
};
pub use handle::{ServerHandle, ShutdownTrigger, StatsReader};
pub use handler::{
    handler_fn, CloseReason, Context, Credentials, Handler, HandlerFn, Peer, Replies,
};
pub use server::Builder;
pub use stats::Stats;

/// The rustls this crate was built with, for [`Builder::tls`]'s configuration (feature
/// `tls`).
#[cfg(feature = "tls")]
pub use rustls;

/// The README's Rust examples compile as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
