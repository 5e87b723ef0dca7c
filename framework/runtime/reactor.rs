//! A reactor: one thread with a mio `Poll` that owns a set of connections. It reads, decodes,
//! dispatches to the pool, and writes the replies that come back through its [`Mailbox`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Poll, Token, Waker};

use crate::codec::Codec;
use crate::conn::{ConnKey, Connection, Dispatch, Done, Env, Limits, Step, Work};
use crate::handler::CloseReason;
use crate::push::{Posted, PushSink};
use crate::runtime::acceptor::AcceptGate;
use crate::runtime::adaptive::LocalRule;
use crate::runtime::dispatch::{DynHandler, Inline, LocalBatches, ToPool};
use crate::runtime::mailbox::{Inbound, Mailbox, WakeFlag};
use crate::runtime::seat::{Seat, TAKE_OVER_AFTER};
use crate::runtime::timers::Timers;
use crate::runtime::token::EventKey;
use crate::stats::Counters;
use crate::timer::Scheduler;
use crate::transport::wire::{Wire, WireConfig};

const WAKER: Token = Token(usize::MAX);

/// How long a reactor waits before retrying connections whose request the full job queue
/// refused, when no reply of its own is due to wake it earlier.
const STALL_RETRY: Duration = Duration::from_millis(5);

/// How many times one turn runs the batches its own runs led to (the next batch of a
/// connection whose session came home), before it polls again.
const LOCAL_ROUNDS: usize = 4;

/// An open connection and what the reactor keeps about it.
struct Entry<C: Codec, S> {
    conn: Connection<C, S, Wire>,
    /// The deadline of this connection's entry in the reactor's timers.
    armed: Option<Instant>,
    /// Bytes last reported to `Counters::bytes_buffered`.
    accounted: usize,
    /// A reply arrived and the connection is on the reactor's list to drive.
    drive_queued: bool,
    /// The connection is on the `stalled` list (once, however often it is driven).
    stall_listed: bool,
    /// The connection is on the `revisit` list.
    revisit_listed: bool,
}

impl<C: Codec, S> Entry<C, S> {
    /// Something came back for this connection: it is driven once after the inbox drain
    /// (listed on `replied` once, however many messages it got).
    fn drive_after_drain(&mut self, key: ConnKey, replied: &mut Vec<ConnKey>) {
        if !self.drive_queued {
            self.drive_queued = true;
            replied.push(key);
        }
    }
}

struct Slot<C: Codec, S> {
    generation: u32,
    entry: Option<Entry<C, S>>,
}

/// Puts a list taken out for a pass back in its place, emptied, so its capacity serves the
/// next pass: a list taken for good made the next push allocate it again (a malloc and a
/// realloc per drain of the inbox). Items listed anew during the pass are kept instead.
fn give_back<T>(place: &mut Vec<T>, mut emptied: Vec<T>) {
    if place.is_empty() {
        emptied.clear();
        *place = emptied;
    }
}

/// The connection `key` names, if it is still open: same slot, same generation.
fn live_entry<C: Codec, S>(slots: &mut [Slot<C, S>], key: ConnKey) -> Option<&mut Entry<C, S>> {
    slots
        .get_mut(key.slot as usize)
        .filter(|slot| slot.generation == key.generation)
        .and_then(|slot| slot.entry.as_mut())
}

/// Everything a reactor thread owns.
pub(crate) struct Reactor<C: Codec, S> {
    index: usize,
    poll: Poll,
    inbox: Receiver<Inbound<C::Response, S>>,
    wake_flag: WakeFlag,
    slots: Vec<Slot<C, S>>,
    free: Vec<u32>,
    live: usize,
    timers: Timers,
    /// Connections that hit the per-wake-up read cap and still have input.
    revisit: Vec<ConnKey>,
    /// Connections holding a request the full job queue refused.
    stalled: Vec<ConnKey>,
    /// Connections that got replies during this inbox drain, to be driven once each.
    replied: Vec<ConnKey>,
    /// Close hooks waiting for room in the job queue.
    closing: Vec<Work<C::Request, C::Response, S>>,
    /// Batches this reactor runs itself at the end of its turn (adaptive inline).
    local: LocalBatches<C, S>,
    /// Whether the handler has proven fast enough to run batches here.
    rule: LocalRule,
    /// Connections closed while their session was out (opening, or with a batch): why, for
    /// the close hook when the session comes back.
    orphans: HashMap<ConnKey, CloseReason>,
    codec: C,
    jobs: Sender<Work<C::Request, C::Response, S>>,
    handler: Arc<DynHandler<C, S>>,
    inline: bool,
    /// This reactor's own mailbox: for a thread that ran a batch and found the reactor
    /// taken over, to answer through.
    mailbox: Mailbox<C::Response, S>,
    /// The same, for its connections' pushers.
    sink: Arc<dyn PushSink<C::Response>>,
    scheduler: Arc<Scheduler>,
    push_limit: usize,
    /// Open and close hooks run on this thread: inline mode, or `Handler::hooks_block` is
    /// false (asked once, here, not on every drive).
    hooks_here: bool,
    concurrent: Option<fn() -> S>,
    slow_handler: Duration,
    counters: Arc<Counters>,
    gate: Arc<AcceptGate>,
    limits: Limits,
    scratch: Vec<u8>,
    log_level: log::Level,
    wire: WireConfig,
    draining: Option<Instant>,
    /// The time this turn of the loop started: one clock read per turn, not per connection.
    now: Instant,
}

/// What a reactor needs to be built; see [`Reactor::new`].
pub(crate) struct ReactorParts<C: Codec, S> {
    pub codec: C,
    pub jobs: Sender<Work<C::Request, C::Response, S>>,
    pub scheduler: Arc<Scheduler>,
    pub push_limit: usize,
    pub handler: Arc<DynHandler<C, S>>,
    /// Inline mode: the handler runs on the reactor thread.
    pub inline: bool,
    /// Concurrent mode: the session each request gets.
    pub concurrent: Option<fn() -> S>,
    pub slow_handler: Duration,
    /// Adaptive inline: the time a request may take for batches to run here.
    pub adaptive_inline: Option<Duration>,
    pub counters: Arc<Counters>,
    pub gate: Arc<AcceptGate>,
    pub limits: Limits,
    pub read_buffer: usize,
    pub log_level: log::Level,
    pub wire: WireConfig,
}

impl<C: Codec, S: Send + 'static> Reactor<C, S> {
    /// Creates reactor number `index` and the mailbox other threads use to reach it.
    pub fn new(
        index: usize,
        parts: ReactorParts<C, S>,
    ) -> io::Result<(Self, Mailbox<C::Response, S>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, inbox) = crossbeam_channel::unbounded();
        let (mailbox, wake_flag) = Mailbox::new(tx, waker);
        let reactor = Reactor {
            index,
            poll,
            inbox,
            wake_flag,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            timers: Timers::new(Arc::clone(&parts.counters)),
            revisit: Vec::new(),
            stalled: Vec::new(),
            replied: Vec::new(),
            closing: Vec::new(),
            local: VecDeque::new(),
            rule: LocalRule::new(if parts.inline {
                None
            } else {
                parts.adaptive_inline
            }),
            orphans: HashMap::new(),
            codec: parts.codec,
            jobs: parts.jobs,
            hooks_here: parts.inline || !parts.handler.hooks_block(),
            handler: parts.handler,
            inline: parts.inline,
            mailbox: mailbox.clone(),
            sink: Arc::new(mailbox.clone()),
            scheduler: parts.scheduler,
            push_limit: parts.push_limit,
            concurrent: parts.concurrent,
            slow_handler: parts.slow_handler,
            counters: parts.counters,
            gate: parts.gate,
            limits: parts.limits,
            scratch: vec![0; parts.read_buffer],
            log_level: parts.log_level,
            wire: parts.wire,
            draining: None,
            now: Instant::now(),
        };
        Ok((reactor, mailbox))
    }

    /// Runs on the thread it was started on until shutdown has closed every connection (or
    /// its deadline passed), handing itself over through `seat` when a batch it runs takes
    /// too long (see `runtime::seat`).
    pub fn run(self, seat: &Seat<Self>) {
        Self::drive_from(Box::new(self), seat);
    }

    /// The standby thread: waits for the reactor to be handed over, then runs it on.
    pub fn stand_by(seat: &Seat<Self>) {
        while let Some(mut reactor) = seat.stand_by() {
            // The batch that kept its thread was not fast after all.
            reactor.now = Instant::now();
            reactor.rule.overran(reactor.now);
            Counters::add(&reactor.counters.inline_overruns, 1);
            // The batches its thread had not started yet go to the pool now, not after
            // the slow one.
            reactor.hand_local_to_pool();
            log::debug!(
                "reactor {}: a batch ran past {TAKE_OVER_AFTER:?}; a standby thread runs the reactor on",
                reactor.index
            );
            Self::drive_from(reactor, seat);
        }
    }

    /// The reactor's loop, on whichever thread holds it. Returns when the loop has ended,
    /// or when this thread ran a batch and found its reactor taken over, and the loop then
    /// ended while it stood by.
    fn drive_from(mut reactor: Box<Self>, seat: &Seat<Self>) {
        let mut events = Events::with_capacity(1024);
        let mut hands = Hands::new(&reactor);
        loop {
            if !reactor.turn(&mut events) {
                break;
            }
            let mut round = 0;
            while !reactor.local.is_empty() && round < LOCAL_ROUNDS {
                round += 1;
                reactor = match hands.run_local(reactor, seat) {
                    Some(reactor) => reactor,
                    None => match seat.stand_by() {
                        Some(taken) => {
                            // Handed back to this thread, after another took it over.
                            hands = Hands::new(&taken);
                            taken
                        }
                        None => return,
                    },
                };
            }
        }
        log::debug!("reactor {} stopped", reactor.index);
        drop(reactor);
        seat.finish();
    }

    /// One turn of the loop: poll, handle events, replies, revisits, stalls, timers, closes.
    /// Returns `false` when the reactor is done.
    fn turn(&mut self, events: &mut Events) -> bool {
        let mut timeout = self.poll_timeout();
        if timeout != Some(Duration::ZERO) {
            // About to sleep: from now on a reply must wake us.
            self.wake_flag.about_to_sleep();
            // What this drain brings (a connection, a reply) is stamped with the time
            // it arrives, not with the start of the turn that went before: a connection
            // accepted now had its clocks start up to a turn early, and a 600 ms
            // handshake timeout fired at 597 ms.
            self.now = Instant::now();
            if self.drain_inbox() {
                timeout = Some(Duration::ZERO);
            }
        }
        let polled = self.poll.poll(events, timeout);
        // Awake: replies are picked up below without a wake-up each.
        self.wake_flag.awake();
        self.now = Instant::now();
        if let Err(e) = polled {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("reactor {}: poll failed: {e}", self.index);
                std::thread::sleep(Duration::from_millis(10));
            }
            return true;
        }
        for event in &*events {
            if event.token() == WAKER {
                continue;
            }
            let Some(key) = self.key_for(EventKey::from_token(event.token())) else {
                continue;
            };
            let readable = event.is_readable();
            // An error is reported by the next read or write; make sure one happens.
            let read_closed = event.is_read_closed() || event.is_error();
            let writable = event.is_writable() || event.is_write_closed() || event.is_error();
            self.with_conn(key, |conn, env| {
                conn.on_event(readable, read_closed, writable);
                conn.drive(env)
            });
        }
        self.drain_inbox();
        let mut revisit = std::mem::take(&mut self.revisit);
        for key in revisit.drain(..) {
            if let Some(entry) = live_entry(&mut self.slots, key) {
                entry.revisit_listed = false;
            }
            self.with_conn(key, |conn, env| conn.drive(env));
        }
        give_back(&mut self.revisit, revisit);
        self.retry_stalled();
        self.fire_timers();
        self.queue_closes();
        if let Some(deadline) = self.draining {
            let sessions_out =
                !self.orphans.is_empty() || !self.closing.is_empty() || !self.local.is_empty();
            if self.live == 0 && !sessions_out {
                return false;
            }
            if self.now >= deadline {
                self.force_close_all();
                self.abandon_local();
                // Sessions still out are closed by the worker that holds them when it
                // finds this reactor gone. One that a worker posts between this last
                // drain and the inbox being dropped is lost without its close hook: a
                // gap only past the shutdown deadline.
                self.drain_inbox();
                self.finish_closes();
                return false;
            }
        }
        true
    }

    /// The connection an event is for, if it is still open.
    fn key_for(&self, event: EventKey) -> Option<ConnKey> {
        let slot = self.slots.get(event.slot as usize)?;
        slot.entry.as_ref()?;
        let key = ConnKey {
            slot: event.slot,
            generation: slot.generation,
        };
        event.matches(key).then_some(key)
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.revisit.is_empty() || !self.local.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut until = self.timers.next();
        if let Some(deadline) = self.draining {
            until = Some(until.map_or(deadline, |at| at.min(deadline)));
        }
        let mut timeout = until.map(|at| at.saturating_duration_since(now));
        if !self.stalled.is_empty() || !self.closing.is_empty() {
            timeout = Some(timeout.map_or(STALL_RETRY, |t| t.min(STALL_RETRY)));
        }
        // Round up so a timer is not polled for just before it is due, over and over.
        timeout.map(|t| t.saturating_add(Duration::from_micros(500)))
    }

    /// Handles every message waiting in the inbox; returns whether there was any. Replies
    /// are applied first and each connection that got one is driven once afterwards.
    fn drain_inbox(&mut self) -> bool {
        let mut any = false;
        while let Ok(message) = self.inbox.try_recv() {
            any = true;
            match message {
                Inbound::Done(done) => self.apply_done(done),
                Inbound::Posted(posted) => self.apply_posted(posted),
                Inbound::Connection(stream, ctx) => self.add_connection(stream, ctx),
                Inbound::Shutdown { deadline } => self.begin_shutdown(deadline),
            }
        }
        self.drive_replied();
        any
    }

    /// Drives once each connection that got something back since the last time.
    fn drive_replied(&mut self) {
        let mut replied = std::mem::take(&mut self.replied);
        for key in replied.drain(..) {
            self.with_conn(key, |conn, env| conn.drive(env));
        }
        give_back(&mut self.replied, replied);
    }

    /// Offers the batches kept for this thread to the pool; those the full queue refuses
    /// stay, to run here.
    fn hand_local_to_pool(&mut self) {
        for _ in 0..self.local.len() {
            let Some(work) = self.local.pop_front() else {
                break;
            };
            if let Err(e) = self.jobs.try_send(work) {
                self.local.push_back(e.into_inner());
            }
        }
    }

    /// The shutdown deadline passed with batches kept for this thread not run: their
    /// requests are dropped (counted), and each session goes to the close hook.
    fn abandon_local(&mut self) {
        for work in std::mem::take(&mut self.local) {
            let requests = work.requests();
            Counters::add(&self.counters.replies_dropped, requests as u64);
            if let Work::Batch {
                key,
                ctx,
                session,
                fresh: false,
                ..
            } = work
            {
                let reason = self.orphans.remove(&key).unwrap_or(CloseReason::Shutdown);
                self.closing.push(Work::Close {
                    ctx,
                    session,
                    reason,
                });
            }
        }
    }

    fn apply_done(&mut self, done: Done<C::Response, S>) {
        let key = done.key();
        let Some(entry) = live_entry(&mut self.slots, key) else {
            // Its connection closed while this was out: account for the requests, and give
            // the session to the close hook.
            let trip_over = done.ends_session_trip();
            let left = done.into_leftovers();
            Counters::add(&self.counters.replies_dropped, left.answered as u64);
            Counters::add(&self.counters.skipped, left.skipped as u64);
            if trip_over {
                let reason = self.orphans.remove(&key).unwrap_or(CloseReason::Shutdown);
                if let Some((session, ctx)) = left.session {
                    self.closing.push(Work::Close {
                        ctx,
                        session,
                        reason,
                    });
                }
            }
            return;
        };
        entry.conn.on_done(done, &self.counters, self.now);
        entry.drive_after_drain(key, &mut self.replied);
    }

    /// A pusher's response or close, for a connection that may have closed since.
    fn apply_posted(&mut self, posted: Posted<C::Response>) {
        let key = match &posted {
            Posted::Push(key, ..) | Posted::Close(key) => *key,
        };
        let Some(entry) = live_entry(&mut self.slots, key) else {
            return;
        };
        match posted {
            Posted::Push(_, after, response) => {
                entry
                    .conn
                    .on_push(after, response, &self.counters, self.now);
            }
            Posted::Close(_) => entry.conn.on_push_close(&self.counters),
        }
        entry.drive_after_drain(key, &mut self.replied);
    }

    fn retry_stalled(&mut self) {
        for key in std::mem::take(&mut self.stalled) {
            if let Some(entry) = live_entry(&mut self.slots, key) {
                entry.stall_listed = false;
            }
            self.with_conn(key, |conn, env| conn.drive(env));
        }
    }

    fn fire_timers(&mut self) {
        while let Some(key) = self.timers.pop_due(self.now) {
            if let Some(entry) = live_entry(&mut self.slots, key) {
                // Its entry is gone: the connection is asked for its next deadline below.
                entry.armed = None;
            }
            self.with_conn(key, |conn, env| conn.on_timer(env));
        }
    }

    /// Runs `f` on the connection `key` names, if it is still there, then applies the
    /// step it returns: the stats' buffered-bytes gauge, closing, revisiting, the stalled
    /// list, and the connection's timer.
    fn with_conn<F>(&mut self, key: ConnKey, f: F)
    where
        F: FnOnce(&mut Connection<C, S, Wire>, &mut Env<'_, C, S>) -> Step,
    {
        let Some(entry) = live_entry(&mut self.slots, key) else {
            return;
        };
        entry.drive_queued = false;
        let inline = Inline::<C, S> {
            handler: &*self.handler,
            counters: &self.counters,
            slow_handler: self.slow_handler,
        };
        let runs_here = !self.inline && self.rule.runs_here(self.now);
        let mut to_pool = ToPool {
            jobs: &self.jobs,
            hooks_here: self.hooks_here.then_some(inline),
            local: runs_here.then_some(&mut self.local),
        };
        let mut inline = inline;
        let dispatch: &mut dyn Dispatch<C::Request, C::Response, S> = if self.inline {
            &mut inline
        } else {
            &mut to_pool
        };
        let mut env = Env {
            dispatch,
            reactor: self.index,
            counters: &self.counters,
            limits: &self.limits,
            scratch: &mut self.scratch,
            now: self.now,
            drain_deadline: self.draining,
        };
        let step = f(&mut entry.conn, &mut env);
        let buffered = entry.conn.buffered();
        if buffered > entry.accounted {
            Counters::add(
                &self.counters.bytes_buffered,
                (buffered - entry.accounted) as u64,
            );
        } else {
            Counters::sub(
                &self.counters.bytes_buffered,
                (entry.accounted - buffered) as u64,
            );
        }
        entry.accounted = buffered;
        match step {
            Step::Close => {
                self.close(key, CloseReason::PeerClosed);
                return;
            }
            Step::Revisit if !entry.revisit_listed => {
                entry.revisit_listed = true;
                self.revisit.push(key);
            }
            Step::Revisit | Step::Wait => {}
        }
        if entry.conn.is_stalled() && !entry.stall_listed {
            entry.stall_listed = true;
            self.stalled.push(key);
        }
        let deadline = entry.conn.next_deadline(&self.limits);
        self.timers.arm(key, &mut entry.armed, deadline);
    }
}

// Connections coming and going, in a file of their own; a child of this module, so it sees
// the reactor's private state.
#[path = "lifecycle.rs"]
mod lifecycle;

#[path = "local.rs"]
mod local;
use local::Hands;
