//! The user's code: a [`Handler`] opens a session per connection, serves that connection's
//! requests in order with it, and closes it when the connection ends.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::push::{Link, Pusher};
use crate::util::few::Few;

/// What a handler knows about the connection a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub(crate) peer: Peer,
    /// The socket's own peer when a PROXY header named another client.
    pub(crate) proxy: Option<Peer>,
    pub(crate) connection_id: u64,
    pub(crate) tls: bool,
}

impl Context {
    pub(crate) fn new(peer: Peer, connection_id: u64) -> Self {
        Context {
            peer,
            proxy: None,
            connection_id,
            tls: false,
        }
    }

    /// Who the client is: the socket's peer, or, behind a proxy speaking the PROXY protocol
    /// ([`Builder::proxy_protocol`](crate::Builder::proxy_protocol)), the client the proxy's
    /// header names.
    #[must_use]
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// The client's IP address and port ([`peer`](Context::peer) when it is a TCP peer);
    /// `None` for a peer on a Unix domain socket.
    #[must_use]
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self.peer {
            Peer::Tcp(addr) => Some(addr),
            Peer::Unix(_) => None,
        }
    }

    /// The uid, gid and pid of a peer on a Unix domain socket, where the platform gives
    /// them (Linux: SO_PEERCRED); `None` otherwise.
    #[must_use]
    pub fn credentials(&self) -> Option<Credentials> {
        match self.peer {
            Peer::Unix(credentials) => credentials,
            Peer::Tcp(_) => None,
        }
    }

    /// The proxy the connection came through, when a PROXY header named the client: the
    /// socket's own peer. `None` without the PROXY protocol, or when the header named no
    /// client (a proxy's health check).
    #[must_use]
    pub fn proxy(&self) -> Option<Peer> {
        self.proxy
    }

    /// Whether the connection is encrypted with TLS ([`Builder::tls`](crate::Builder)).
    #[must_use]
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// A number unique to this connection for the server's lifetime (the first connection
    /// accepted is 1). Requests from one connection share it.
    #[must_use]
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A client over TCP (or one a PROXY header named), by address.
    Tcp(SocketAddr),
    /// A client on a Unix domain socket, with its credentials where the platform gives them.
    Unix(Option<Credentials>),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Unix(None) => write!(f, "unix socket peer"),
            Peer::Unix(Some(c)) => match c.pid {
                Some(pid) => write!(f, "unix socket peer uid {} pid {pid}", c.uid),
                None => write!(f, "unix socket peer uid {}", c.uid),
            },
        }
    }
}

/// The credentials of a peer on a Unix domain socket, as the kernel recorded them when it
/// connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Credentials {
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
    /// The peer's process id, where the platform records it.
    pub pid: Option<u32>,
}

/// What one call answers: none, one or several responses, written in this order after the
/// replies to every earlier request of the connection; and whether the connection closes
/// after them.
pub struct Replies<R> {
    responses: Few<R>,
    pub(crate) close: bool,
    /// The connection's link, lent for the call (moved in and out, not cloned, so a call
    /// that makes no pusher costs no reference count).
    pub(crate) link: Option<Arc<Link<R>>>,
    /// A new idle timeout for the connection, when the call set one.
    pub(crate) idle_timeout: IdleTimeout,
}

/// What a call said about its connection's idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdleTimeout {
    /// Nothing: it stays as it was.
    Unchanged,
    /// From now on this (`None`: never).
    Set(Option<Duration>),
}

impl<R> fmt::Debug for Replies<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replies")
            .field("len", &self.responses.len())
            .field("close", &self.close)
            .finish_non_exhaustive()
    }
}

impl<R> Replies<R> {
    pub(crate) fn new(link: Option<Arc<Link<R>>>) -> Self {
        Replies {
            responses: Few::new(),
            close: false,
            link,
            idle_timeout: IdleTimeout::Unchanged,
        }
    }

    /// Queues `response` to be written.
    pub fn send(&mut self, response: R) {
        self.responses.push(response);
    }

    /// The responses, in the order they were sent.
    pub(crate) fn into_responses(self) -> impl Iterator<Item = R> {
        self.responses.into_iter()
    }

    /// Closes the connection once these responses (and every earlier one) are written.
    /// This is a barrier: no request the peer sent after this one is handed to the handler
    /// (not even one already decoded into the same batch); they are counted in
    /// [`Stats::skipped`](crate::Stats::skipped). The close is clean: our FIN, then the
    /// peer's input is drained for a while so it reads our last bytes, not a reset.
    pub fn close(&mut self) {
        self.close = true;
    }

    /// Responses queued so far.
    pub fn len(&self) -> usize {
        self.responses.len()
    }

    /// Whether no response is queued.
    pub fn is_empty(&self) -> bool {
        self.responses.is_empty()
    }

    /// Whether [`close`](Replies::close) was called.
    pub fn closes(&self) -> bool {
        self.close
    }

    /// Sets the connection's idle timeout from this reply on, replacing
    /// [`Builder::idle_timeout`](crate::Builder::idle_timeout) for this connection alone:
    /// `None` exempts it (a subscriber that only listens to pushes), `Some(d)` sets its own.
    /// Writing a push counts as activity either way.
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.idle_timeout = IdleTimeout::Set(timeout);
    }
}

impl<R: Send + 'static> Replies<R> {
    /// A handle that sends responses to this connection from any thread, closes it, and
    /// runs timers for it, for as long as it is open (see [`Pusher`]).
    #[must_use]
    pub fn pusher(&mut self) -> Pusher<R> {
        let link = self.link.get_or_insert_with(|| Arc::new(Link::detached()));
        Pusher::new(Arc::clone(link))
    }
}

/// Why a connection ended, as [`Handler::close`] is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed its side (FIN) and every reply it was owed was written.
    PeerClosed,
    /// The peer reset the connection, or a read or write failed.
    Reset,
    /// An idle, partial-frame or write-stall timeout.
    Timeout,
    /// The peer broke the protocol: the codec's decode error.
    ProtocolError,
    /// The handler ([`Replies::close`]) or the codec ([`AfterReply::Close`](crate::AfterReply))
    /// asked for it.
    Requested,
    /// The handler or the codec panicked.
    Panicked,
    /// A response's body failed while it was being written: a file that shrank or could
    /// not be read, a streamed body that returned an error, ended short of its length, or
    /// panicked. The connection is closed after the bytes already written.
    BodyFailed,
    /// The server shut down.
    Shutdown,
}

/// Serves one connection's requests, with a session of its own.
///
/// **What runs where, and in what order.** For each connection:
/// 1. [`open`](Handler::open) runs once, on a worker thread (it may block, say to check out a
///    database connection), before any request of that connection; what it sends (a
///    greeting) is written before any reply.
/// 2. [`call`](Handler::call) runs once per request, on a worker thread (it may block), with
///    the session `&mut`. A connection's requests run one after another in the order they
///    arrived, each seeing what the earlier ones did; requests of different connections run
///    in parallel on the pool. When a peer pipelines requests, one worker runs the ones that
///    have arrived back to back, so a pipelined batch costs one hand-off between threads;
///    each request's replies leave for the socket as soon as its call returns, so a slow
///    request delays only the replies behind it. A call that closes the connection
///    ([`Replies::close`]) or panics is a barrier: the requests after it are not run.
///    While calls prove fast, the reactor that read a batch runs it itself instead of a
///    worker, with the same order, session and barriers
///    ([`Builder::adaptive_inline`](crate::Builder::adaptive_inline)); a call that then
///    blocks has the reactor taken over by its standby thread within a millisecond or two.
/// 3. [`close`](Handler::close) runs exactly once when the connection ends, whatever the
///    reason (see [`CloseReason`]), on a worker thread, after the last call has returned.
///
/// In [`Mode::Inline`](crate::Mode::Inline) all three run on the reactor thread instead,
/// where they must not block. In [`Mode::Concurrent`](crate::Mode::Concurrent) (stateless
/// handlers only) one connection's requests may run at the same time on different workers.
///
/// One handler value is shared by every worker, hence `&self` and `Sync`; what belongs to
/// one connection lives in its `Session`. A panic in any of the three is caught: that
/// connection is closed (after the replies it was owed before the panic) and counted, and
/// the worker and every other connection carry on.
pub trait Handler: Send + Sync + 'static {
    /// The request type, as the codec decodes it.
    type Request: Send + 'static;
    /// The response type, as the codec encodes it.
    type Response: Send + 'static;
    /// Per-connection state: `()` for a stateless protocol.
    type Session: Send + 'static;

    /// A connection was accepted: returns its session. Responses sent to `greeting` are
    /// written first (SMTP's `220`, a handshake); calling `greeting.close()` refuses the
    /// connection after them.
    fn open(&self, ctx: &Context, greeting: &mut Replies<Self::Response>) -> Self::Session;

    /// Serves `request`: send its responses (usually one) to `replies`.
    fn call(
        &self,
        session: &mut Self::Session,
        request: Self::Request,
        ctx: &Context,
        replies: &mut Replies<Self::Response>,
    );

    /// The connection ended: the session is handed back, once. The default drops it.
    fn close(&self, session: Self::Session, ctx: &Context, reason: CloseReason) {
        let _ = (session, ctx, reason);
    }

    /// Whether [`open`](Handler::open) and [`close`](Handler::close) may block. When both
    /// are cheap and never block, return `false`: they then run on the reactor thread,
    /// which saves two hand-offs per connection and lets a new connection's first request
    /// go straight to the pool. Default: `true` (they run on a worker).
    fn hooks_block(&self) -> bool {
        true
    }
}

/// A stateless [`Handler`] made from a closure; see [`handler_fn`].
pub struct HandlerFn<F, Req, Resp> {
    f: F,
    // fn(Req) -> Resp keeps HandlerFn Send + Sync whatever Req and Resp are.
    _types: PhantomData<fn(Req) -> Resp>,
}

/// Makes a stateless [`Handler`] from a closure `Fn(Request, &Context) -> Response`: each
/// request gets exactly one response, and the session is `()`.
///
/// ```
/// let echo = reactor_pool::handler_fn(|request: Vec<u8>, _ctx: &reactor_pool::Context| request);
/// # let _ = echo;
/// ```
pub fn handler_fn<F, Req, Resp>(f: F) -> HandlerFn<F, Req, Resp>
where
    F: Fn(Req, &Context) -> Resp + Send + Sync + 'static,
{
    HandlerFn {
        f,
        _types: PhantomData,
    }
}

impl<F, Req, Resp> Handler for HandlerFn<F, Req, Resp>
where
    F: Fn(Req, &Context) -> Resp + Send + Sync + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Request = Req;
    type Response = Resp;
    type Session = ();

    fn open(&self, _ctx: &Context, _greeting: &mut Replies<Resp>) {}

    fn call(&self, _session: &mut (), request: Req, ctx: &Context, replies: &mut Replies<Resp>) {
        replies.send((self.f)(request, ctx));
    }

    fn hooks_block(&self) -> bool {
        false
    }
}

impl<F, Req, Resp> fmt::Debug for HandlerFn<F, Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerFn")
    }
}
