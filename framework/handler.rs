//! The user's code: a [`Handler`] turns one request into one response on a worker thread.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;

/// What a handler knows about the connection a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub(crate) peer: SocketAddr,
    pub(crate) connection_id: u64,
}

impl Context {
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// A number unique to this connection for the server's lifetime (the first connection
    /// accepted is 1). Requests from one connection share it.
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }
}

/// Serves one request: runs on a worker thread and may block (a database call, a sleep), or,
/// with [`Builder::inline`](crate::Builder::inline), on the reactor thread, where it must not.
///
/// One handler value is shared by every worker, hence `&self` and `Sync`. Requests from one
/// connection may run at the same time on different workers when the peer pipelines them;
/// their responses are still written in request order. A panic is caught: that connection is
/// closed and counted, the worker and every other connection carry on.
pub trait Handler: Send + Sync + 'static {
    /// The request type, as the codec decodes it.
    type Request: Send + 'static;
    /// The response type, as the codec encodes it.
    type Response: Send + 'static;

    /// Turns `request` into its response.
    fn call(&self, request: Self::Request, ctx: &Context) -> Self::Response;
}

/// A [`Handler`] made from a closure; see [`handler_fn`].
pub struct HandlerFn<F, Req, Resp> {
    f: F,
    // fn(Req) -> Resp keeps HandlerFn Send + Sync whatever Req and Resp are.
    _types: PhantomData<fn(Req) -> Resp>,
}

/// Makes a [`Handler`] from a closure `Fn(Request, &Context) -> Response`.
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

    fn call(&self, request: Req, ctx: &Context) -> Resp {
        (self.f)(request, ctx)
    }
}

impl<F, Req, Resp> fmt::Debug for HandlerFn<F, Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerFn")
    }
}

/// The message a panic in user code carried, for the log line that reports it.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}
