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
//! **The life of a request**, from `accept` to the last `write` (ARCHITECTURE.md has the
//! map): the acceptor thread accepts and posts the stream to a reactor's mailbox; the
//! reactor registers it and drives it (`Connection::drive`): it reads into its scratch
//! buffer, decodes with your [`Codec`] ([`Codec::decode`], after [`Codec::skip`]; then
//! [`Codec::holds_decoding`] and [`Codec::closes_after`]), and hands the requests that
//! arrived together, with the connection's session, to the job queue as one batch (or,
//! while the handler has proven fast, runs the batch itself at the end of its turn:
//! [`Builder::adaptive_inline`]); a worker
//! runs [`Handler::call`] for each in order and posts each one's [`Replies`] to the
//! reactor's mailbox as soon as the call returns, waking the reactor only if it sleeps; the
//! reactor puts them in request order, encodes them ([`Codec::encode`]) and writes them.
//!
//! **Large replies and replies nobody asked for.** A codec writes a reply into an [`Output`]:
//! bytes, a [`FileRegion`] (sent with `sendfile(2)`), or a [`BodyStream`] whose pieces a
//! worker makes as the socket drains, so memory follows connections, not reply sizes. A
//! [`Pusher`] ([`Replies::pusher`]) writes to a connection from any thread, between its
//! replies, within a bound; [`Pusher::after`], [`Pusher::every`], [`ServerHandle::after`] and
//! [`ServerHandle::every`] run code later on a worker.
//!
//! How a connection ends follows TCP's four-way close: when the peer sends FIN (`read()`
//! returns 0) every reply it is still owed is written before the server sends its own FIN,
//! and the server never resets a connection that closed cleanly.
//!
//! [mio]: https://docs.rs/mio
//! [crossbeam-channel]: https://docs.rs/crossbeam-channel

#![deny(missing_docs)]
#![deny(unsafe_code)]
// clippy::pedantic, curated: CI runs clippy with -D warnings, so each pedantic lint holds
// except these, each allowed for a reason.
#![warn(clippy::pedantic)]
// A closure naming its arguments reads better than a method path through the crate's
// generic types (`with_conn(key, |conn, env| conn.drive(env))`).
#![allow(clippy::redundant_closure_for_method_calls)]
// The crate's values travel by value on purpose: a request, a response or a session is
// handed on and must not stay behind with the caller.
#![allow(clippy::needless_pass_by_value)]

// Layers, lowest first; a module imports only from layers below its own (each folder's
// module doc says what it owns and what it may import; ARCHITECTURE.md draws the map):
//   sys, util        platform facts and the only unsafe code; buffer, short list, clock
//   stats, body, codec      counters; file regions and streamed bodies; framing
//   timer, push, handler    user timers; pushing to a connection; the handler, its replies
//   transport        listeners, accepted streams, PROXY header, TLS, the wire beneath
//   conn             one connection: state machine, input, output, pipeline, outbox, the
//                    work it hands to the pool and how a worker runs it
//   runtime          the threads: acceptor, reactors, pool, mailbox, token, timers
//   builder          Builder (settings, validation, start-up), ServerHandle, ShutdownTrigger
mod body;
mod builder;
mod codec;
mod conn;
mod handler;
mod push;
mod runtime;
mod stats;
mod sys;
mod timer;
mod transport;
mod util;

pub use body::{Body, BodyStream, FileRegion, Framing};
pub use builder::handle::{ServerHandle, ShutdownTrigger, StatsReader};
pub use builder::{Builder, Keepalive, Mode};
pub use codec::{
    AfterReply, Codec, DecodeError, Decoded, Farewell, LengthPrefixedCodec, LineCodec, Output,
    RawCodec, DEFAULT_MAX_FRAME,
};
pub use handler::{
    handler_fn, CloseReason, Context, Credentials, Handler, HandlerFn, Peer, Replies,
};
pub use push::{PushError, Pusher};
pub use stats::Stats;
pub use timer::Timer;
pub use transport::ListenAddr;

/// The rustls this crate was built with, for [`Builder::tls`]'s configuration (feature
/// `tls`).
#[cfg(feature = "tls")]
pub use rustls;

/// The README's Rust examples compile as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
