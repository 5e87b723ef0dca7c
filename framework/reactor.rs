//! A reactor: one thread with a mio `Poll` that owns a set of connections. It reads, decodes,
//! dispatches to the pool, and writes the replies that come back through its [`Mailbox`].

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::acceptor::AcceptGate;
use crate::codec::Codec;
use crate::connection::{Connection, Env, Limits, Step};
use crate::handler::{Context, Handler};
use crate::message::{
    ConnKey, Dispatch, Dispatched, EventKey, Inbound, Job, Mailbox, Reply, WakeFlag,
};
use crate::pool;
use crate::stats::Counters;
use crate::timers::Timers;

const WAKER: Token = Token(usize::MAX);

/// How long a reactor waits before retrying connections whose request the full job queue
/// refused, when no reply of its own is due to wake it earlier.
const STALL_RETRY: Duration = Duration::from_millis(5);

/// A handler run on the reactor thread (inline mode).
pub(crate) type InlineHandler<C> =
    dyn Handler<Request = <C as Codec>::Request, Response = <C as Codec>::Response>;

/// Where requests go: the pool's job queue.
struct ToPool<'a, Req>(&'a Sender<Job<Req>>);

impl<Req, Resp> Dispatch<Req, Resp> for ToPool<'_, Req> {
    fn dispatch(&mut self, job: Job<Req>) -> Dispatched<Req, Resp> {
        match self.0.try_send(job) {
            Ok(()) => Dispatched::Queued,
            Err(TrySendError::Full(job)) => Dispatched::Full(job),
            // Only while the server is torn down: there is nobody to answer.
            Err(TrySendError::Disconnected(_)) => Dispatched::Gone,
        }
    }
}

/// Where requests go in inline mode: the handler, on this thread.
struct Inline<'a, C: Codec> {
    handler: &'a InlineHandler<C>,
    counters: &'a Counters,
    slow_handler: Duration,
}

impl<C: Codec> Dispatch<C::Request, C::Response> for Inline<'_, C> {
    fn dispatch(&mut self, job: Job<C::Request>) -> Dispatched<C::Request, C::Response> {
        Dispatched::Answered(pool::run_job(
            self.handler,
            job,
            self.counters,
            self.slow_handler,
        ))
    }
}

/// An open connection and what the reactor keeps about it.
struct Entry<C: Codec> {
    conn: Connection<C, TcpStream>,
    /// The deadline of this connection's entry in the reactor's timers.
    armed: Option<Instant>,
    /// Bytes last reported to `Counters::bytes_buffered`.
    accounted: usize,
    /// A reply arrived and the connection is on the reactor's list to drive.
    drive_queued: bool,
}

struct Slot<C: Codec> {
    generation: u32,
    entry: Option<Entry<C>>,
}

/// The connection `key` names, if it is still open: same slot, same generation.
fn live_entry<C: Codec>(slots: &mut [Slot<C>], key: ConnKey) -> Option<&mut Entry<C>> {
    slots
        .get_mut(key.slot as usize)
        .filter(|slot| slot.generation == key.generation)
        .and_then(|slot| slot.entry.as_mut())
}

/// Everything a reactor thread owns.
pub(crate) struct Reactor<C: Codec> {
    index: usize,
    poll: Poll,
    inbox: Receiver<Inbound<C::Response>>,
    wake_flag: WakeFlag,
    slots: Vec<Slot<C>>,
    free: Vec<u32>,
    live: usize,
    timers: Timers,
    /// Connections that hit the per-wake-up read cap and still have input.
    revisit: Vec<ConnKey>,
    /// Connections holding a request the full job queue refused.
    stalled: Vec<ConnKey>,
    /// Connections that got replies during this inbox drain, to be driven once each.
    replied: Vec<ConnKey>,
    codec: C,
    jobs: Sender<Job<C::Request>>,
    inline: Option<Arc<InlineHandler<C>>>,
    slow_handler: Duration,
    counters: Arc<Counters>,
    gate: Arc<AcceptGate>,
    limits: Limits,
    scratch: Vec<u8>,
    log_level: log::Level,
    draining: Option<Instant>,
    /// The time this turn of the loop started: one clock read per turn, not per connection.
    now: Instant,
}

/// What a reactor needs to be built; see [`Reactor::new`].
pub(crate) struct ReactorParts<C: Codec> {
    pub codec: C,
    pub jobs: Sender<Job<C::Request>>,
    /// Inline mode: the handler, run on the reactor thread.
    pub inline: Option<Arc<InlineHandler<C>>>,
    pub slow_handler: Duration,
    pub counters: Arc<Counters>,
    pub gate: Arc<AcceptGate>,
    pub limits: Limits,
    pub read_buffer: usize,
    pub log_level: log::Level,
}

impl<C: Codec> Reactor<C> {
    /// Creates reactor number `index` and the mailbox other threads use to reach it.
    pub fn new(index: usize, parts: ReactorParts<C>) -> io::Result<(Self, Mailbox<C::Response>)> {
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
            codec: parts.codec,
            jobs: parts.jobs,
            inline: parts.inline,
            slow_handler: parts.slow_handler,
            counters: parts.counters,
            gate: parts.gate,
            limits: parts.limits,
            scratch: vec![0; parts.read_buffer],
            log_level: parts.log_level,
            draining: None,
            now: Instant::now(),
        };
        Ok((reactor, mailbox))
    }

    /// Runs until shutdown has closed every connection (or its deadline passed).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let mut timeout = self.poll_timeout();
            if timeout != Some(Duration::ZERO) {
                // About to sleep: from now on a reply must wake us.
                self.wake_flag.about_to_sleep();
                if self.drain_inbox() {
                    timeout = Some(Duration::ZERO);
                }
            }
            let polled = self.poll.poll(&mut events, timeout);
            // Awake: replies are picked up below without a wake-up each.
            self.wake_flag.awake();
            self.now = Instant::now();
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("reactor {}: poll failed: {e}", self.index);
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in events.iter() {
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
            for key in std::mem::take(&mut self.revisit) {
                self.with_conn(key, |conn, env| conn.drive(env));
            }
            self.retry_stalled();
            self.fire_timers();
            if let Some(deadline) = self.draining {
                if self.live == 0 {
                    break;
                }
                if self.now >= deadline {
                    self.force_close_all();
                    break;
                }
            }
        }
        log::debug!("reactor {} stopped", self.index);
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
        if !self.revisit.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut until = self.timers.next();
        if let Some(deadline) = self.draining {
            until = Some(until.map_or(deadline, |at| at.min(deadline)));
        }
        let mut timeout = until.map(|at| at.saturating_duration_since(now));
        if !self.stalled.is_empty() {
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
                Inbound::Reply(reply) => self.apply_reply(reply),
                Inbound::Connection(stream, ctx) => self.add_connection(stream, ctx),
                Inbound::Shutdown { deadline } => self.begin_shutdown(deadline),
            }
        }
        for key in std::mem::take(&mut self.replied) {
            self.with_conn(key, |conn, env| conn.drive(env));
        }
        any
    }

    fn apply_reply(&mut self, reply: Reply<C::Response>) {
        let key = reply.key;
        let Some(entry) = live_entry(&mut self.slots, key) else {
            Counters::add(&self.counters.replies_dropped, 1);
            log::trace!("dropped a reply for a connection that closed");
            return;
        };
        entry.conn.on_reply(reply, &self.counters, self.now);
        if !entry.drive_queued {
            entry.drive_queued = true;
            self.replied.push(key);
        }
    }

    fn add_connection(&mut self, mut stream: TcpStream, ctx: Context) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let key = ConnKey {
            slot,
            generation: self.slots[slot as usize].generation,
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, key.token(), interest)
        {
            log::error!("cannot register connection from {}: {e}", ctx.peer);
            self.free.push(slot);
            self.counters_closed();
            return;
        }
        log::log!(
            self.log_level,
            "connection {} accepted from {}",
            ctx.connection_id,
            ctx.peer
        );
        let conn = Connection::new(stream, key, ctx, self.codec.clone(), &self.limits, self.now);
        self.slots[slot as usize].entry = Some(Entry {
            conn,
            armed: None,
            accounted: 0,
            drive_queued: false,
        });
        self.live += 1;
        if self.draining.is_some() {
            self.with_conn(key, |conn, env| conn.shut_down(env));
        } else {
            // The peer may have sent its request before we registered: read now.
            self.with_conn(key, |conn, env| conn.drive(env));
        }
    }

    fn begin_shutdown(&mut self, deadline: Instant) {
        self.draining = Some(deadline);
        for key in self.live_keys() {
            self.with_conn(key, |conn, env| conn.shut_down(env));
        }
    }

    fn live_keys(&self) -> Vec<ConnKey> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.entry.is_some())
            .map(|(slot, s)| ConnKey {
                slot: slot as u32,
                generation: s.generation,
            })
            .collect()
    }

    fn retry_stalled(&mut self) {
        for key in std::mem::take(&mut self.stalled) {
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
        F: FnOnce(&mut Connection<C, TcpStream>, &mut Env<'_, C>) -> Step,
    {
        let Some(entry) = live_entry(&mut self.slots, key) else {
            return;
        };
        entry.drive_queued = false;
        let mut to_pool = ToPool(&self.jobs);
        let mut inline;
        let dispatch: &mut dyn Dispatch<C::Request, C::Response> = match &self.inline {
            Some(handler) => {
                inline = Inline::<C> {
                    handler: &**handler,
                    counters: &self.counters,
                    slow_handler: self.slow_handler,
                };
                &mut inline
            }
            None => &mut to_pool,
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
                self.close(key);
                return;
            }
            Step::Revisit => self.revisit.push(key),
            Step::Wait => {}
        }
        if entry.conn.is_stalled() {
            self.stalled.push(key);
        }
        let deadline = entry.conn.next_deadline(&self.limits);
        self.timers.arm(key, &mut entry.armed, deadline);
    }

    fn close(&mut self, key: ConnKey) {
        let slot = &mut self.slots[key.slot as usize];
        let Some(mut entry) = slot.entry.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(key.slot);
        self.live -= 1;
        self.timers.disarm(key, &mut entry.armed);
        let _ = self.poll.registry().deregister(entry.conn.stream_mut());
        Counters::sub(&self.counters.bytes_buffered, entry.accounted as u64);
        entry.conn.release(&self.counters);
        log::log!(
            self.log_level,
            "connection {} from {} closed after {} requests",
            entry.conn.ctx().connection_id,
            entry.conn.ctx().peer,
            entry.conn.requests()
        );
        drop(entry);
        self.counters_closed();
    }

    fn counters_closed(&self) {
        Counters::add(&self.counters.connections_closed, 1);
        self.gate.release();
    }

    fn force_close_all(&mut self) {
        let keys = self.live_keys();
        if !keys.is_empty() {
            log::warn!(
                "reactor {}: shutdown deadline passed; closing {} connections",
                self.index,
                keys.len()
            );
        }
        for key in keys {
            Counters::add(&self.counters.timeouts, 1);
            self.close(key);
        }
    }
}
