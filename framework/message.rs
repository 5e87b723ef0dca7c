//! What crosses between threads: the key that names a connection, work on its way to a
//! worker ([`Work`]: open a session, run a batch of requests, close a session), what comes
//! back ([`Done`]), and the reactor's [`Mailbox`].
//!
//! This module sits below every thread's module (acceptor, reactor, connection, pool) and
//! imports nothing above it, so those can each import it without importing one another.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use mio::{Token, Waker};

use crate::few::Few;
use crate::handler::{CloseReason, Context, Replies};
use crate::net::Stream;

/// Names a connection slot and the generation of its current occupant, so a reply or an
/// event for a connection that closed is never applied to a later one in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ConnKey {
    pub slot: u32,
    pub generation: u32,
}

/// What a readiness event's token says about its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventKey {
    pub slot: u32,
    /// `None` where the token is too narrow to carry the generation (32-bit targets); the
    /// event then applies to whatever occupies the slot. A stale event costs one drive that
    /// finds nothing to do; it cannot deliver data, which is read from the socket itself.
    pub generation: Option<u32>,
}

impl ConnKey {
    /// The token this connection registers with the poll.
    pub fn token(self) -> Token {
        Token(pack_token(self, usize::BITS) as usize)
    }
}

impl EventKey {
    pub fn from_token(token: Token) -> EventKey {
        unpack_token(token.0 as u64, usize::BITS)
    }

    /// Whether `key` is the connection this event was registered for.
    pub fn matches(self, key: ConnKey) -> bool {
        self.slot == key.slot && self.generation.is_none_or(|g| g == key.generation)
    }
}

/// Packs `key` into a token of `bits` bits: slot and generation where 64 bits fit both, the
/// slot alone otherwise.
fn pack_token(key: ConnKey, bits: u32) -> u64 {
    if bits >= 64 {
        (u64::from(key.generation) << 32) | u64::from(key.slot)
    } else {
        u64::from(key.slot)
    }
}

fn unpack_token(raw: u64, bits: u32) -> EventKey {
    EventKey {
        slot: raw as u32,
        generation: (bits >= 64).then_some((raw >> 32) as u32),
    }
}

/// Work for the pool (or, in inline mode, for the reactor's own thread).
pub(crate) enum Work<Req, S> {
    /// A connection was accepted: run the handler's open hook.
    Open {
        reactor: usize,
        key: ConnKey,
        ctx: Context,
    },
    /// Run these requests of one connection, one after another in this order, with its
    /// session; each carries its sequence number on the connection.
    Batch {
        reactor: usize,
        key: ConnKey,
        ctx: Context,
        requests: Few<(u64, Req)>,
        session: S,
        /// The session is a throwaway of concurrent mode, made for this batch: it is never
        /// handed to the close hook (the connection's own session is).
        fresh: bool,
    },
    /// The connection ended: hand the session to the handler's close hook.
    Close {
        ctx: Context,
        session: S,
        reason: CloseReason,
    },
}

impl<Req, S> Work<Req, S> {
    /// Requests this work carries.
    pub fn requests(&self) -> usize {
        match self {
            Work::Batch { requests, .. } => requests.len(),
            _ => 0,
        }
    }
}

/// How one request was answered.
pub(crate) enum Answer<Resp> {
    /// The call returned: its responses, and whether they close the connection.
    Replied(Replies<Resp>),
    /// The handler panicked: the connection ends after the replies before this one.
    Panicked,
}

/// What the pool sends back to the reactor that owns the connection.
pub(crate) enum Done<Resp, S> {
    /// The open hook ran: the session and the greeting, or `Err` if it panicked.
    Opened {
        key: ConnKey,
        ctx: Context,
        outcome: Result<(S, Replies<Resp>), HandlerPanicked>,
    },
    /// One request of a batch was answered and more of the batch are to run: posted as soon
    /// as its call returns, so a slow request behind it does not hold its replies.
    Answered {
        key: ConnKey,
        seq: u64,
        answer: Answer<Resp>,
    },
    /// A batch is over: its last answer (a batch of one costs one message), the requests
    /// not run because a close or a panic came before them, and the session, coming home.
    Ran {
        key: ConnKey,
        ctx: Context,
        last: Option<(u64, Answer<Resp>)>,
        skipped: usize,
        session: S,
        /// As in [`Work::Batch`]: a throwaway session, dropped when it comes back.
        fresh: bool,
    },
}

/// What is left of work whose connection is gone: requests run whose replies nobody will
/// write, requests never run, and the session (with its connection), if it carried one.
pub(crate) struct Leftovers<S> {
    pub answered: usize,
    pub skipped: usize,
    pub session: Option<(S, Context)>,
}

impl<Resp, S> Done<Resp, S> {
    pub fn key(&self) -> ConnKey {
        match self {
            Done::Opened { key, .. } | Done::Answered { key, .. } | Done::Ran { key, .. } => *key,
        }
    }

    /// Whether this ends the trip of the connection's session: it comes home, or (the open
    /// hook panicked) it never will. A connection closed while its session was out is
    /// closed for good then.
    pub fn ends_session_trip(&self) -> bool {
        match self {
            Done::Opened { .. } => true,
            Done::Answered { .. } => false,
            Done::Ran { fresh, .. } => !fresh,
        }
    }

    /// What is left to account for when the connection is gone.
    pub fn into_leftovers(self) -> Leftovers<S> {
        match self {
            Done::Opened { outcome, ctx, .. } => Leftovers {
                answered: 0,
                skipped: 0,
                session: outcome.ok().map(|(session, _)| (session, ctx)),
            },
            Done::Answered { .. } => Leftovers {
                answered: 1,
                skipped: 0,
                session: None,
            },
            Done::Ran {
                last,
                skipped,
                session,
                ctx,
                fresh,
                ..
            } => Leftovers {
                answered: usize::from(last.is_some()),
                skipped,
                session: (!fresh).then_some((session, ctx)),
            },
        }
    }
}

/// The handler panicked.
#[derive(Debug)]
pub(crate) struct HandlerPanicked;

/// What other threads send a reactor.
pub(crate) enum Inbound<Resp, S> {
    /// The pool finished some work of one of its connections.
    Done(Done<Resp, S>),
    /// A connection from the acceptor.
    Connection(Stream, Context),
    /// Stop: finish in-flight requests, flush, close; force-close what is left at `deadline`.
    Shutdown { deadline: Instant },
}

/// The sending side of a reactor's inbox, with coalesced wake-ups: a sender wakes the
/// reactor only when no wake-up is pending, so a burst of replies costs one `Waker::wake`.
pub(crate) struct Mailbox<Resp, S> {
    tx: Sender<Inbound<Resp, S>>,
    waker: Arc<Waker>,
    wake_pending: Arc<AtomicBool>,
}

/// The reactor's side of the wake-up protocol (see [`Mailbox::send`]).
pub(crate) struct WakeFlag(Arc<AtomicBool>);

impl<Resp, S> Mailbox<Resp, S> {
    /// A mailbox over `tx` whose reactor polls with `waker`, and the flag the reactor keeps.
    pub fn new(tx: Sender<Inbound<Resp, S>>, waker: Arc<Waker>) -> (Self, WakeFlag) {
        let wake_pending = Arc::new(AtomicBool::new(false));
        let flag = WakeFlag(Arc::clone(&wake_pending));
        (
            Mailbox {
                tx,
                waker,
                wake_pending,
            },
            flag,
        )
    }

    /// Posts a message; fails, handing it back, only when the reactor has exited.
    // The message is handed back whole, as crossbeam does; boxing it would cost an
    // allocation per reply on the hot path to shrink an error that happens once, at exit.
    #[allow(clippy::result_large_err)]
    pub fn send(&self, message: Inbound<Resp, S>) -> Result<(), Inbound<Resp, S>> {
        self.tx.send(message).map_err(|e| e.into_inner())?;
        // The reactor keeps the flag set while it is awake and drains its inbox on every
        // turn; it clears the flag just before it sleeps and then drains once more. With a
        // SeqCst fence on both sides, either the reactor's last drain sees our message, or
        // our swap below sees the flag it cleared and wakes it: never neither.
        fence(Ordering::SeqCst);
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.waker.wake() {
                log::error!("cannot wake reactor: {e}");
            }
        }
        Ok(())
    }
}

impl WakeFlag {
    /// The reactor is about to sleep: from now on a sender must wake it. The caller drains
    /// its inbox once more after this, so a message sent before the flag cleared is seen.
    pub fn about_to_sleep(&self) {
        self.0.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// The reactor is awake and will drain its inbox before it sleeps: no wake-up needed.
    pub fn awake(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What became of work handed to [`Dispatch::dispatch`].
pub(crate) enum Dispatched<Req, Resp, S> {
    /// A worker will do it.
    Queued,
    /// The job queue is full: the work comes back, to be offered again later.
    Full(Work<Req, S>),
    /// Done at once (inline mode): what the work answered, in order (nothing for a close).
    Ran(Few<Done<Resp, S>>),
    /// Nobody is left to do it: the server is being torn down.
    Gone(Work<Req, S>),
}

/// Where a connection's work goes: the worker pool, or the handler inline.
pub(crate) trait Dispatch<Req, Resp, S> {
    fn dispatch(&mut self, work: Work<Req, S>) -> Dispatched<Req, Resp, S>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_on_64_bit_targets_carries_slot_and_generation() {
        let key = ConnKey {
            slot: 7,
            generation: 3,
        };
        let event = unpack_token(pack_token(key, 64), 64);
        assert!(event.matches(key));
        assert!(!event.matches(ConnKey {
            slot: 7,
            generation: 4
        }));
    }

    /// Regression: on 32-bit targets the token cut the generation off but the lookup still
    /// compared it, so a slot reused by a later connection (generation 1) got no events.
    #[test]
    fn token_on_32_bit_targets_still_reaches_a_reused_slot() {
        let reused = ConnKey {
            slot: 5,
            generation: 1,
        };
        let event = unpack_token(pack_token(reused, 32), 32);
        assert!(event.matches(reused));
        assert!(!event.matches(ConnKey {
            slot: 6,
            generation: 1
        }));
    }
}
