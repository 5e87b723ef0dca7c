//! What other threads send a reactor ([`Inbound`]: work done, a new connection, the
//! shutdown), and the [`Mailbox`] they send it through, with coalesced wake-ups.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use mio::Waker;

use crate::conn::Done;
use crate::handler::Context;
use crate::push::{Posted, PushSink};
use crate::transport::net::Stream;

/// What other threads send a reactor.
pub(crate) enum Inbound<Resp, S> {
    /// The pool finished some work of one of its connections.
    Done(Done<Resp, S>),
    /// A pusher's response or close for one of its connections.
    Posted(Posted<Resp>),
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

impl<Resp, S> Clone for Mailbox<Resp, S> {
    fn clone(&self) -> Self {
        Mailbox {
            tx: self.tx.clone(),
            waker: Arc::clone(&self.waker),
            wake_pending: Arc::clone(&self.wake_pending),
        }
    }
}

impl<Resp: Send, S: Send> PushSink<Resp> for Mailbox<Resp, S> {
    fn post(&self, posted: Posted<Resp>) -> Result<(), Posted<Resp>> {
        self.send(Inbound::Posted(posted))
            .map_err(|message| match message {
                Inbound::Posted(posted) => posted,
                _ => unreachable!("send hands back what it was given"),
            })
    }
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
