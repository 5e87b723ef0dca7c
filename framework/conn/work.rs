//! What a connection hands to the pool ([`Work`]: open a session, run a batch of requests,
//! close a session), what comes back ([`Done`]), where the work goes ([`Dispatch`]: the
//! pool, or the handler inline), and how a worker runs it ([`run_work`]): the handler's
//! hooks, each fenced against panics, a batch's answers posted as their calls return.
//!
//! It sits below every thread's module (reactor, pool, acceptor) and imports nothing above
//! it, so each of them can import it without importing one another.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::body::BodyStream;
use crate::handler::{CloseReason, Context, Handler, Replies};
pub(crate) use crate::push::ConnKey;
use crate::push::Link;
use crate::stats::Counters;
use crate::timer::Job;
use crate::util::few::Few;
use crate::util::panic::message as panic_message;

/// Work for the pool (or, in inline mode, for the reactor's own thread).
pub(crate) enum Work<Req, Resp, S> {
    /// A connection was accepted: run the handler's open hook.
    Open {
        reactor: usize,
        key: ConnKey,
        ctx: Context,
        link: Arc<Link<Resp>>,
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
        link: Arc<Link<Resp>>,
    },
    /// The connection ended: hand the session to the handler's close hook.
    Close {
        ctx: Context,
        session: S,
        reason: CloseReason,
    },
    /// The connection's output drained below its mark while writing a streamed body: make
    /// the body's next piece.
    Pull {
        reactor: usize,
        key: ConnKey,
        stream: BodyStream,
    },
    /// A user timer is due: run its code.
    Timer(Job),
}

impl<Req, Resp, S> Work<Req, Resp, S> {
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
    /// A streamed body's next piece (`None` at its end), and the body, coming back.
    Pulled {
        key: ConnKey,
        stream: BodyStream,
        piece: Result<Option<Vec<u8>>, PullFailed>,
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
            Done::Opened { key, .. }
            | Done::Answered { key, .. }
            | Done::Ran { key, .. }
            | Done::Pulled { key, .. } => *key,
        }
    }

    /// Whether this ends the trip of the connection's session: it comes home, or (the open
    /// hook panicked) it never will. A connection closed while its session was out is
    /// closed for good then.
    pub fn ends_session_trip(&self) -> bool {
        match self {
            Done::Opened { .. } => true,
            Done::Answered { .. } | Done::Pulled { .. } => false,
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
            Done::Pulled { .. } => Leftovers {
                answered: 0,
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

/// Why a streamed body's piece did not come.
#[derive(Debug)]
pub(crate) enum PullFailed {
    /// The body's producer returned an error.
    Error(io::Error),
    /// It panicked (logged and counted).
    Panicked,
}

/// What became of work handed to [`Dispatch::dispatch`].
pub(crate) enum Dispatched<Req, Resp, S> {
    /// A worker will do it.
    Queued,
    /// The job queue is full: the work comes back, to be offered again later.
    Full(Work<Req, Resp, S>),
    /// Done at once (inline mode): what the work answered, in order (nothing for a close).
    Ran(Few<Done<Resp, S>>),
    /// Nobody is left to do it: the server is being torn down.
    Gone(Work<Req, Resp, S>),
}

/// Where a connection's work goes: the worker pool, or the handler inline.
pub(crate) trait Dispatch<Req, Resp, S> {
    fn dispatch(&mut self, work: Work<Req, Resp, S>) -> Dispatched<Req, Resp, S>;
}

/// Runs one piece of work, catching panics, and counts slow or panicking calls; gives what
/// goes back to the reactor to `post` (nothing for a close). The workers call it, and so
/// does a reactor in inline mode.
///
/// A batch's requests run one after another with the session. Each request's answer is
/// posted as soon as its call has returned (before the next call starts, which may block),
/// so a slow request delays only the replies behind it; the last answer travels with the
/// session. A call that closes the connection ([`Replies::close`]) or panics is a barrier:
/// the requests after it are not run, only counted.
pub(crate) fn run_work<H: Handler + ?Sized>(
    handler: &H,
    work: Work<H::Request, H::Response, H::Session>,
    counters: &Counters,
    slow_handler: Duration,
    post: &mut dyn FnMut(Done<H::Response, H::Session>),
) {
    match work {
        Work::Open { key, ctx, link, .. } => {
            let mut greeting = Replies::new(Some(link));
            let outcome = timed(&ctx, "open", counters, slow_handler, &mut None, || {
                handler.open(&ctx, &mut greeting)
            });
            post(Done::Opened {
                key,
                ctx,
                outcome: outcome.map(|session| (session, greeting)),
            });
        }
        Work::Batch {
            key,
            ctx,
            requests,
            mut session,
            fresh,
            link,
            ..
        } => {
            let mut link = Some(link);
            let total = requests.len();
            let mut ran = 0;
            let mut last: Option<(u64, Answer<H::Response>)> = None;
            let mut clock = None;
            for (seq, request) in requests {
                if let Some((seq, answer)) = last.take() {
                    // The call before returned: its replies leave now, whatever this one does.
                    post(Done::Answered { key, seq, answer });
                }
                ran += 1;
                let mut replies = Replies::new(link.take());
                let outcome = timed(&ctx, "call", counters, slow_handler, &mut clock, || {
                    handler.call(&mut session, request, &ctx, &mut replies);
                });
                // Lent to the call, not given: the next call gets it back.
                link = replies.link.take();
                let barrier = if let Ok(()) = outcome {
                    let closes = replies.closes();
                    last = Some((seq, Answer::Replied(replies)));
                    closes
                } else {
                    // The session may be half-updated: run nothing more with it.
                    last = Some((seq, Answer::Panicked));
                    true
                };
                if barrier {
                    break;
                }
            }
            post(Done::Ran {
                key,
                ctx,
                last,
                skipped: total - ran,
                session,
                fresh,
            });
        }
        Work::Close {
            ctx,
            session,
            reason,
        } => close_session(handler, session, &ctx, reason, counters),
        Work::Pull {
            key, mut stream, ..
        } => {
            let piece = match panic::catch_unwind(AssertUnwindSafe(|| stream.next_piece())) {
                Ok(Ok(piece)) => Ok(piece),
                Ok(Err(e)) => Err(PullFailed::Error(e)),
                Err(payload) => {
                    Counters::add(&counters.panics, 1);
                    log::error!(
                        "a streamed body panicked: {}; closing its connection",
                        panic_message(&*payload)
                    );
                    Err(PullFailed::Panicked)
                }
            };
            post(Done::Pulled { key, stream, piece });
        }
        // Fenced by the scheduler that made it.
        Work::Timer(job) => job(),
    }
}

/// Runs the handler's close hook, catching a panic.
pub(crate) fn close_session<H: Handler + ?Sized>(
    handler: &H,
    session: H::Session,
    ctx: &Context,
    reason: CloseReason,
    counters: &Counters,
) {
    let _ = timed(ctx, "close", counters, Duration::MAX, &mut None, || {
        handler.close(session, ctx, reason);
    });
}

/// Runs one hook of the handler, catching a panic; logs and counts a slow or panicking one.
///
/// `clock` is when the hook starts, if the caller knows (the end of the hook run just before
/// it on this thread), and becomes when it ended: a batch's calls run back to back, so one
/// clock read ends one call and starts the next (n + 1 reads for n calls, not 2n: at 16
/// pipelined GETs the reads were 4% of the workers' CPU). With `slow_handler` at
/// `Duration::MAX` nothing is timed and the clock is not read.
fn timed<T>(
    ctx: &Context,
    hook: &str,
    counters: &Counters,
    slow_handler: Duration,
    clock: &mut Option<Instant>,
    f: impl FnOnce() -> T,
) -> Result<T, HandlerPanicked> {
    if slow_handler == Duration::MAX {
        return panic::catch_unwind(AssertUnwindSafe(f))
            .map_err(|payload| panicked(ctx, hook, counters, payload));
    }
    let started = clock.unwrap_or_else(Instant::now);
    let outcome = panic::catch_unwind(AssertUnwindSafe(f));
    let ended = Instant::now();
    *clock = Some(ended);
    let took = ended.saturating_duration_since(started);
    if took >= slow_handler {
        Counters::add(&counters.slow_handlers, 1);
        log::warn!(
            "handler {hook} for connection {} ({}) ran for {took:?}",
            ctx.connection_id,
            ctx.peer
        );
    }
    outcome.map_err(|payload| panicked(ctx, hook, counters, payload))
}

/// Counts and logs a hook's panic.
fn panicked(
    ctx: &Context,
    hook: &str,
    counters: &Counters,
    payload: Box<dyn std::any::Any + Send>,
) -> HandlerPanicked {
    Counters::add(&counters.panics, 1);
    log::error!(
        "handler {hook} panicked on connection {} ({}): {}; closing that connection",
        ctx.connection_id,
        ctx.peer,
        panic_message(&*payload)
    );
    HandlerPanicked
}
