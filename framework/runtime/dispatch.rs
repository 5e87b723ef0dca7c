//! Where a reactor's connections send their work: the pool's job queue ([`ToPool`]), or
//! the handler on the reactor's own thread ([`Inline`]: inline mode, and open and close
//! hooks that never block).

use std::collections::VecDeque;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

use crate::codec::Codec;
use crate::conn::{run_work, Dispatch, Dispatched, Work};
use crate::handler::Handler;
use crate::stats::Counters;
use crate::util::few::Few;

/// The handler, as a reactor holds it: run inline, or for a close hook that cannot be queued.
pub(crate) type DynHandler<C, S> =
    dyn Handler<Request = <C as Codec>::Request, Response = <C as Codec>::Response, Session = S>;

/// Batches a reactor keeps to run itself (adaptive inline).
pub(crate) type LocalBatches<C, S> =
    VecDeque<Work<<C as Codec>::Request, <C as Codec>::Response, S>>;

/// Where work goes: the pool's job queue; open and close hooks that never block run here
/// instead (`Handler::hooks_block`), and batches go to `local` while the handler has proven
/// fast (adaptive inline: the reactor runs them at the end of its turn).
pub(crate) struct ToPool<'a, C: Codec, S> {
    pub jobs: &'a Sender<Work<C::Request, C::Response, S>>,
    pub hooks_here: Option<Inline<'a, C, S>>,
    pub local: Option<&'a mut LocalBatches<C, S>>,
}

impl<C: Codec, S: Send + 'static> Dispatch<C::Request, C::Response, S> for ToPool<'_, C, S> {
    fn dispatch(
        &mut self,
        work: Work<C::Request, C::Response, S>,
    ) -> Dispatched<C::Request, C::Response, S> {
        if let (Some(here), Work::Open { .. } | Work::Close { .. }) = (&mut self.hooks_here, &work)
        {
            return here.dispatch(work);
        }
        if let (Some(local), Work::Batch { .. }) = (&mut self.local, &work) {
            // Queued as for a worker, and answered the same way (`Done`, through
            // `Reactor::apply_done`), so order, barriers and sessions are the pool's.
            local.push_back(work);
            return Dispatched::Queued;
        }
        match self.jobs.try_send(work) {
            Ok(()) => Dispatched::Queued,
            Err(TrySendError::Full(work)) => Dispatched::Full(work),
            Err(TrySendError::Disconnected(work)) => Dispatched::Gone(work),
        }
    }
}

/// Where work goes in inline mode: the handler, on this thread.
pub(crate) struct Inline<'a, C: Codec, S> {
    pub handler: &'a DynHandler<C, S>,
    pub counters: &'a Counters,
    pub slow_handler: Duration,
}

// Manual impls: a derive would require `C: Clone + Copy` and `S: Copy`.
impl<C: Codec, S> Clone for Inline<'_, C, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C: Codec, S> Copy for Inline<'_, C, S> {}

impl<C: Codec, S: Send + 'static> Dispatch<C::Request, C::Response, S> for Inline<'_, C, S> {
    fn dispatch(
        &mut self,
        work: Work<C::Request, C::Response, S>,
    ) -> Dispatched<C::Request, C::Response, S> {
        let mut answers = Few::new();
        run_work(
            self.handler,
            work,
            self.counters,
            self.slow_handler,
            &mut |done| answers.push(done),
        );
        Dispatched::Ran(answers)
    }
}
