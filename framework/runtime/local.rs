//! A reactor running batches itself (adaptive inline, `runtime::adaptive`): [`Hands`], what
//! the thread holding the reactor needs to run them while the reactor waits in its seat
//! (`runtime::seat`), and to answer as a worker would if the reactor is taken over
//! meanwhile. Part of [`Reactor`]; kept apart so its loop reads alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Reactor;
use crate::codec::Codec;
use crate::conn::{run_work, Done};
use crate::runtime::dispatch::DynHandler;
use crate::runtime::mailbox::{Inbound, Mailbox};
use crate::runtime::pool::leftover;
use crate::runtime::seat::Seat;
use crate::stats::Counters;

/// What one thread holds to run its reactor's batches: taken from the reactor once per
/// thread, so a batch costs no reference count.
pub(super) struct Hands<C: Codec, S> {
    handler: Arc<DynHandler<C, S>>,
    counters: Arc<Counters>,
    mailbox: Mailbox<C::Response, S>,
    slow_handler: Duration,
    /// Each batch run: its requests, and how long it took.
    timings: Vec<(usize, Duration)>,
}

impl<C: Codec, S: Send + 'static> Hands<C, S> {
    pub(super) fn new(reactor: &Reactor<C, S>) -> Self {
        Hands {
            handler: Arc::clone(&reactor.handler),
            counters: Arc::clone(&reactor.counters),
            mailbox: reactor.mailbox.clone(),
            slow_handler: reactor.slow_handler,
            timings: Vec::new(),
        }
    }

    /// Runs the batches the reactor kept for this thread, the reactor waiting in `seat`
    /// meanwhile; applies their answers and drives the connections that got one. Returns
    /// the reactor, or `None` if the standby took it over while a batch ran: the answers
    /// then went through its mailbox, and this thread is to stand by.
    pub(super) fn run_local(
        &mut self,
        reactor: Box<Reactor<C, S>>,
        seat: &Seat<Reactor<C, S>>,
    ) -> Option<Box<Reactor<C, S>>> {
        seat.leave(reactor);
        // One batch at a time from the parked reactor's list: if the reactor is taken over,
        // the batches not yet started are the new holder's, to hand to the pool at once.
        // One clock read per batch: a batch's end is the next one's start.
        let mut clock = Instant::now();
        while let Some(work) = seat.with_parked(|reactor| reactor.local.pop_front()) {
            let requests = work.requests();
            let (handler, counters, mailbox) = (&*self.handler, &*self.counters, &self.mailbox);
            run_work(handler, work, counters, self.slow_handler, &mut |done| {
                // Applied to the parked reactor as it comes, so an answer does not wait for
                // the calls behind it in its batch, whoever holds the reactor by then.
                let mut done = Some(done);
                seat.with_parked(|reactor| done.take().map(|done| reactor.apply_done(done)));
                if let Some(done) = done {
                    // Taken over: the answer goes through the mailbox, as a worker's does.
                    post::<C, S>(mailbox, handler, counters, done);
                }
            });
            let now = Instant::now();
            self.timings.push((requests, now - clock));
            clock = now;
            Counters::add(&self.counters.batches_inline, 1);
        }
        let Some(mut reactor) = seat.come_back() else {
            self.timings.clear();
            return None;
        };
        reactor.now = clock;
        for (requests, took) in self.timings.drain(..) {
            if reactor.rule.ran(requests, took, reactor.now) {
                Counters::add(&self.counters.inline_overruns, 1);
                log::debug!(
                    "reactor {}: a batch of {requests} ran {took:?} here; batches go to the pool for a while",
                    reactor.index
                );
            }
        }
        reactor.drive_replied();
        Some(reactor)
    }
}

/// Posts an answer to the reactor's mailbox; if the reactor has exited (a shutdown past its
/// deadline), accounts for it as a worker does.
fn post<C: Codec, S: Send + 'static>(
    mailbox: &Mailbox<C::Response, S>,
    handler: &DynHandler<C, S>,
    counters: &Counters,
    done: Done<C::Response, S>,
) {
    if let Err(Inbound::Done(done)) = mailbox.send(Inbound::Done(done)) {
        leftover(handler, done.into_leftovers(), counters);
    }
}
