//! The threads and what they share: the acceptor (`acceptor`: accepts, spreads connections
//! over the reactors, backs off at the connection limit or on EMFILE), the reactors
//! (`reactor`: a mio poll each, owning connections, their timers and their dispatch), the
//! worker pool (`pool`), a reactor's inbox (`mailbox`, with coalesced wake-ups), the poll
//! token of a connection (`token`) and the reactor's timer wheel (`timers`).
//!
//! May import: everything below (`conn`, `transport`, `codec`, `handler`, `stats`, `util`,
//! `sys`). The builder above starts these threads and holds their handles.

pub(crate) mod acceptor;
pub(crate) mod adaptive;
pub(crate) mod dispatch;
pub(crate) mod mailbox;
pub(crate) mod pool;
pub(crate) mod reactor;
pub(crate) mod seat;
pub(crate) mod timers;
pub(crate) mod token;
