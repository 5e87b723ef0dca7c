//! One connection, as its reactor drives it: the state machine ([`Connection`]) over any
//! [`Transport`](crate::transport::net::Transport) stream, its reads and writes under
//! edge-triggered readiness (`socket`), its requests between decoding and writing
//! (`pipeline`, with every codec call fenced), its output (`outgoing`: bytes, then file
//! regions and streamed bodies, written by `streaming.rs`), the hand-off to the pool (`outbox`, and
//! `work`: what goes to a worker, what comes back, and how a worker runs it), and its clocks
//! (`deadlines`). `connection.rs`, `input.rs` and `deadlines.rs` are one type's parts. Its
//! unit tests (`tests/`) drive it over an in-memory stream, with the
//! real worker loop answering.
//!
//! May import: `util`, `stats`, `body`, `codec`, `timer`, `push`, `handler`, `transport`. Nothing here owns a thread
//! or a poll: the runtime above calls in.

mod connection;
pub(crate) mod outbox;
pub(crate) mod outgoing;
pub(crate) mod pipeline;
pub(crate) mod socket;
pub(crate) mod work;

pub(crate) use connection::{Connection, Env, Limits, Step};
pub(crate) use outbox::Finish;
pub(crate) use work::{
    close_session, run_work, ConnKey, Dispatch, Dispatched, Done, Leftovers, Work,
};
