//! A connection's side of the hand-off to the pool: where its session is, the requests
//! decoded and waiting for it, and work the full job queue gave back.
//!
//! In order (the default), a connection has at most one batch away at a time and the
//! session travels with it, so the handler gets it `&mut` without a lock and requests run
//! one after another; the requests that arrive meanwhile wait here and leave together as the
//! next batch, so a pipelined burst costs one hand-off. Concurrent mode sends every request
//! on its own with a fresh `()` session.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::conn::work::{ConnKey, Work};
use crate::handler::Context;
use crate::push::Link;
use crate::util::few::Few;

/// Where a connection's session is.
enum SessionAt<S> {
    /// The open hook has not been asked yet: the connection's preamble (a PROXY header, a
    /// TLS handshake) is not over.
    Unopened,
    /// The open hook has not returned it yet.
    Opening,
    /// Here, free to go with the next batch.
    Home(S),
    /// With a batch on a worker (or in the stalled work).
    Away,
    /// Never to come: the open hook panicked or never ran.
    Gone,
}

/// Requests waiting to be handed on, and the session they need.
pub(crate) struct Outbox<Req, Resp, S> {
    at: SessionAt<S>,
    waiting: VecDeque<(u64, Req)>,
    /// Work the full job queue refused; offered again before anything else.
    stalled: Option<Work<Req, Resp, S>>,
    /// Set in concurrent mode: the session each single-request batch gets.
    concurrent: Option<fn() -> S>,
}

impl<Req, Resp, S> Outbox<Req, Resp, S> {
    /// An outbox waiting for [`open`](Outbox::open).
    pub fn new(concurrent: Option<fn() -> S>) -> Self {
        Outbox {
            at: SessionAt::Unopened,
            waiting: VecDeque::new(),
            stalled: None,
            concurrent,
        }
    }

    /// Whether the open hook is yet to be asked.
    pub fn is_unopened(&self) -> bool {
        matches!(self.at, SessionAt::Unopened)
    }

    /// The connection is established: its first work is the open hook.
    pub fn open(&mut self, reactor: usize, key: ConnKey, ctx: Context, link: &Arc<Link<Resp>>) {
        debug_assert!(self.is_unopened() && self.stalled.is_none());
        self.at = SessionAt::Opening;
        self.stalled = Some(Work::Open {
            reactor,
            key,
            ctx,
            link: Arc::clone(link),
        });
    }

    pub fn push(&mut self, seq: u64, request: Req) {
        self.waiting.push_back((seq, request));
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled.is_some()
    }

    /// Whether requests wait for room in the job queue (not just the open hook).
    pub fn is_batch_stalled(&self) -> bool {
        matches!(self.stalled, Some(Work::Batch { .. }))
    }

    /// Whether the open hook has not answered yet (no reply may be written before its
    /// greeting).
    pub fn is_opening(&self) -> bool {
        matches!(self.at, SessionAt::Opening)
    }

    /// The next work to hand on: the stalled work, else the waiting requests (all of them as
    /// one batch in order, when the session is home; one request in concurrent mode).
    pub fn next(
        &mut self,
        reactor: usize,
        key: ConnKey,
        ctx: Context,
        link: &Arc<Link<Resp>>,
    ) -> Option<Work<Req, Resp, S>> {
        if let Some(work) = self.stalled.take() {
            return Some(work);
        }
        if self.waiting.is_empty() {
            return None;
        }
        if let Some(fresh) = self.concurrent {
            if matches!(self.at, SessionAt::Opening | SessionAt::Unopened) {
                return None;
            }
            let request = self.waiting.pop_front().expect("checked above");
            return Some(Work::Batch {
                reactor,
                key,
                ctx,
                requests: std::iter::once(request).collect(),
                session: fresh(),
                fresh: true,
                link: Arc::clone(link),
            });
        }
        if !matches!(self.at, SessionAt::Home(_)) {
            return None;
        }
        let SessionAt::Home(session) = std::mem::replace(&mut self.at, SessionAt::Away) else {
            unreachable!("checked above")
        };
        Some(Work::Batch {
            reactor,
            key,
            ctx,
            requests: self.waiting.drain(..).collect(),
            session,
            fresh: false,
            link: Arc::clone(link),
        })
    }

    /// The job queue was full: keep `work` to offer again.
    pub fn stall(&mut self, work: Work<Req, Resp, S>) {
        self.stalled = Some(work);
    }

    /// The session came back (from the open hook or a batch). A `fresh` one, a batch's
    /// throwaway in concurrent mode, is dropped: the connection's own stays home.
    pub fn home(&mut self, session: S, fresh: bool) {
        if !fresh {
            self.at = SessionAt::Home(session);
        }
    }

    /// The open hook panicked: there is no session.
    pub fn lost(&mut self) {
        self.at = SessionAt::Gone;
    }

    /// The connection ends before request `cut`: the requests from `cut` on that wait here
    /// (or in stalled work) are dropped, and their number returned. Stalled work before the
    /// cut stays, to be handed on when the queue has room: those requests were received and
    /// are owed their replies (a shutdown serves them). A stalled open hook stays too, unless
    /// no request is owed (`cut` 0).
    pub fn cut(&mut self, cut: u64) -> usize {
        let waiting = self.waiting.len();
        self.waiting.retain(|&(seq, _)| seq < cut);
        let mut dropped = waiting - self.waiting.len();
        match self.stalled.take() {
            Some(Work::Batch {
                reactor,
                key,
                ctx,
                requests,
                session,
                fresh,
                link,
            }) => {
                let stalled = requests.len();
                let kept: Few<(u64, Req)> =
                    requests.into_iter().filter(|(seq, _)| *seq < cut).collect();
                dropped += stalled - kept.len();
                if kept.is_empty() {
                    // The pool never saw it: the session is here after all.
                    self.home(session, fresh);
                } else {
                    self.stalled = Some(Work::Batch {
                        reactor,
                        key,
                        ctx,
                        requests: kept,
                        session,
                        fresh,
                        link,
                    });
                }
            }
            // The open hook never ran and no request needs it: no session, no close hook.
            Some(Work::Open { .. }) if cut == 0 => self.at = SessionAt::Gone,
            other => self.stalled = other,
        }
        dropped
    }

    /// The connection is being dropped: what becomes of its session, and how many requests
    /// waiting here are dropped with it.
    pub fn finish(&mut self) -> (Finish<S>, usize) {
        // Stalled work never reached the pool: its session is here after all.
        let dropped = self.cut(0);
        let finish = match std::mem::replace(&mut self.at, SessionAt::Gone) {
            SessionAt::Home(session) => Finish::Here(session),
            SessionAt::Opening | SessionAt::Away => Finish::Out,
            SessionAt::Unopened | SessionAt::Gone => Finish::Nothing,
        };
        (finish, dropped)
    }
}

/// Where a dropped connection's session is.
pub(crate) enum Finish<S> {
    /// Here: close it now.
    Here(S),
    /// On a worker (opening, or with a batch): close it when it comes back.
    Out,
    /// There is none (the open hook panicked or never ran).
    Nothing,
}
