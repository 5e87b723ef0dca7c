//! A reactor: one thread with a mio `Poll` that owns a set of connections. It reads, decodes,
//! dispatches to the pool, and writes the replies that come back through its [`Mailbox`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::acceptor::AcceptGate;
use crate::codec::Codec;
use crate::connection::{Connection, InlineHandler, Io, Limits, Step};
use crate::handler::Context;
use crate::pool::{Job, Reply};
use crate::stats::Counters;

const WAKER: Token = Token(usize::MAX);

/// How long a reactor waits before retrying connections whose request the full job queue
/// refused, when no reply of its own is due to wake it earlier.
const STALL_RETRY: Duration = Duration::from_millis(5);

/// Names a connection slot and the generation of its current occupant, so a reply or an
/// event for a connection that closed is never applied to a later one in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnKey {
    slot: u32,
    generation: u32,
}

impl ConnKey {
    fn token(self) -> Token {
        // On 32-bit targets the generation is cut off and only the slot check remains.
        Token(((u64::from(self.generation) << 32) | u64::from(self.slot)) as usize)
    }

    fn from_token(token: Token) -> ConnKey {
        let raw = token.0 as u64;
        ConnKey {
            slot: raw as u32,
            generation: (raw >> 32) as u32,
        }
    }
}

/// What other threads send a reactor.
pub(crate) enum Inbound<Resp> {
    /// A handler's reply.
    Reply(Reply<Resp>),
    /// A connection from the acceptor.
    Connection(TcpStream, Context),
    /// Stop: finish in-flight requests, flush, close; force-close what is left at `deadline`.
    Shutdown { deadline: Instant },
}

/// The sending side of a reactor's inbox, with coalesced wake-ups: a sender wakes the
/// reactor only when no wake-up is pending, so a burst of replies costs one `Waker::wake`.
pub(crate) struct Mailbox<Resp> {
    tx: Sender<Inbound<Resp>>,
    waker: Arc<Waker>,
    wake_pending: Arc<AtomicBool>,
}

impl<Resp> Mailbox<Resp> {
    /// Posts a message; fails only when the reactor has exited.
    pub fn send(&self, message: Inbound<Resp>) -> Result<(), Inbound<Resp>> {
        self.tx.send(message).map_err(|e| e.into_inner())?;
        // The reactor keeps the flag set while it is awake and drains its inbox on every
        // turn; it clears the flag just before it sleeps and then drains once more. With a
        // fence on both sides, a message that last drain missed sees the flag cleared here.
        fence(Ordering::SeqCst);
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.waker.wake() {
                log::error!("cannot wake reactor: {e}");
            }
        }
        Ok(())
    }
}

struct Slot<C: Codec> {
    generation: u32,
    conn: Option<Connection<C>>,
}

/// The connection `key` names, if it is still open: same slot, same generation.
fn live_conn<C: Codec>(slots: &mut [Slot<C>], key: ConnKey) -> Option<&mut Connection<C>> {
    slots
        .get_mut(key.slot as usize)
        .filter(|slot| slot.generation == key.generation)
        .and_then(|slot| slot.conn.as_mut())
}

/// Everything a reactor thread owns.
pub(crate) struct Reactor<C: Codec> {
    index: usize,
    poll: Poll,
    inbox: Receiver<Inbound<C::Response>>,
    wake_pending: Arc<AtomicBool>,
    slots: Vec<Slot<C>>,
    free: Vec<u32>,
    live: usize,
    /// Deadlines, earliest first; an entry is stale unless it equals its connection's `armed`.
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
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
        let wake_pending = Arc::new(AtomicBool::new(false));
        let mailbox = Mailbox {
            tx,
            waker,
            wake_pending: Arc::clone(&wake_pending),
        };
        let reactor = Reactor {
            index,
            poll,
            inbox,
            wake_pending,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            timers: BinaryHeap::new(),
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
            scratch: vec![0; parts.read_buffer.max(1)],
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
                self.wake_pending.store(false, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                if self.drain_inbox() {
                    timeout = Some(Duration::ZERO);
                }
            }
            let polled = self.poll.poll(&mut events, timeout);
            // Awake: replies are picked up below without a wake-up each.
            self.wake_pending.store(true, Ordering::SeqCst);
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
                let key = ConnKey::from_token(event.token());
                let readable = event.is_readable();
                // An error is reported by the next read or write; make sure one happens.
                let read_closed = event.is_read_closed() || event.is_error();
                let writable = event.is_writable() || event.is_write_closed() || event.is_error();
                self.with_conn(key, |conn, io| {
                    conn.on_event(readable, read_closed, writable);
                    conn.drive(io)
                });
            }
            self.drain_inbox();
            for key in std::mem::take(&mut self.revisit) {
                self.with_conn(key, |conn, io| conn.drive(io));
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

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.revisit.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut until = self.timers.peek().map(|Reverse((at, _, _))| *at);
        if let Some(deadline) = self.draining {
            until = Some(until.map_or(deadline, |at| at.min(deadline)));
        }
        let mut timeout = until.map(|at| at.saturating_duration_since(now));
        if !self.stalled.is_empty() {
            timeout = Some(timeout.map_or(STALL_RETRY, |t| t.min(STALL_RETRY)));
        }
        // Round up so a timer is not polled for just before it is due, over and over.
        timeout.map(|t| t + Duration::from_micros(500))
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
            self.with_conn(key, |conn, io| {
                conn.drive_queued = false;
                conn.drive(io)
            });
        }
        any
    }

    fn apply_reply(&mut self, reply: Reply<C::Response>) {
        let key = reply.key;
        let Some(conn) = live_conn(&mut self.slots, key) else {
            Counters::add(&self.counters.replies_dropped, 1);
            log::trace!("dropped a reply for a connection that closed");
            return;
        };
        conn.on_reply(reply, &self.counters, self.now);
        if !conn.drive_queued {
            conn.drive_queued = true;
            self.replied.push(key);
        }
    }

    fn add_connection(&mut self, mut stream: TcpStream, ctx: Context) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
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
        let conn = Connection::new(stream, key, ctx, self.codec.clone(), self.now);
        self.slots[slot as usize].conn = Some(conn);
        self.live += 1;
        if self.draining.is_some() {
            self.with_conn(key, |conn, io| conn.shut_down(io));
        } else {
            // The peer may have sent its request before we registered: read now.
            self.with_conn(key, |conn, io| conn.drive(io));
        }
    }

    fn begin_shutdown(&mut self, deadline: Instant) {
        self.draining = Some(deadline);
        let keys: Vec<ConnKey> = self.live_keys().collect();
        for key in keys {
            self.with_conn(key, |conn, io| conn.shut_down(io));
        }
    }

    fn live_keys(&self) -> impl Iterator<Item = ConnKey> + '_ {
        self.slots.iter().enumerate().filter_map(|(slot, s)| {
            s.conn.as_ref().map(|_| ConnKey {
                slot: slot as u32,
                generation: s.generation,
            })
        })
    }

    fn retry_stalled(&mut self) {
        if self.stalled.is_empty() {
            return;
        }
        for key in std::mem::take(&mut self.stalled) {
            self.with_conn(key, |conn, io| conn.drive(io));
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        while let Some(Reverse((at, slot, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let key = ConnKey { slot, generation };
            self.with_conn(key, |conn, io| {
                if conn.armed != Some(at) {
                    return Step::Wait;
                }
                conn.armed = None;
                conn.on_timer(io)
            });
        }
    }

    /// Runs `f` on the connection `key` names, if it is still there, then applies the
    /// step it returns. Returns whether the connection was found.
    fn with_conn<F>(&mut self, key: ConnKey, f: F) -> bool
    where
        F: FnOnce(&mut Connection<C>, &mut Io<'_, C>) -> Step,
    {
        let Some(conn) = live_conn(&mut self.slots, key) else {
            return false;
        };
        let mut io = Io {
            jobs: &self.jobs,
            inline: self.inline.as_deref(),
            slow_handler: self.slow_handler,
            reactor: self.index,
            counters: &self.counters,
            limits: &self.limits,
            scratch: &mut self.scratch,
            now: self.now,
            drain_deadline: self.draining,
        };
        let step = f(conn, &mut io);
        // Keep the stats' buffered-bytes gauge current.
        let buffered = conn.buffered();
        let accounted = conn.accounted_mut();
        if buffered > *accounted {
            Counters::add(
                &self.counters.bytes_buffered,
                (buffered - *accounted) as u64,
            );
        } else {
            Counters::sub(
                &self.counters.bytes_buffered,
                (*accounted - buffered) as u64,
            );
        }
        *accounted = buffered;
        match step {
            Step::Close => {
                self.close(key);
                return true;
            }
            Step::Revisit => self.revisit.push(key),
            Step::Wait => {}
        }
        if conn.is_stalled() {
            self.stalled.push(key);
        }
        if let Some(deadline) = conn.next_deadline(&self.limits) {
            if conn.armed.is_none_or(|armed| deadline < armed) {
                conn.armed = Some(deadline);
                self.timers
                    .push(Reverse((deadline, key.slot, key.generation)));
            }
        }
        true
    }

    fn close(&mut self, key: ConnKey) {
        let slot = &mut self.slots[key.slot as usize];
        let Some(mut conn) = slot.conn.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(key.slot);
        self.live -= 1;
        let _ = self.poll.registry().deregister(conn.stream());
        Counters::sub(&self.counters.bytes_buffered, *conn.accounted_mut() as u64);
        log::log!(
            self.log_level,
            "connection {} from {} closed after {} requests",
            conn.ctx().connection_id,
            conn.ctx().peer,
            conn.requests()
        );
        drop(conn);
        self.counters_closed();
    }

    fn counters_closed(&self) {
        Counters::add(&self.counters.connections_closed, 1);
        self.gate.release();
    }

    fn force_close_all(&mut self) {
        let keys: Vec<ConnKey> = self.live_keys().collect();
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
