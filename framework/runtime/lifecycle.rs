//! A reactor's connections coming and going: an accepted connection registered and
//! driven, a closed one deregistered with its session handed to the close hook (on the
//! pool, or here), the shutdown begun, and what is left forced closed at its deadline. Part
//! of [`Reactor`]; kept apart so its loop reads alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;
use mio::Interest;

use super::{Entry, Reactor, Slot};
use crate::codec::Codec;
use crate::conn::{run_work, ConnKey, Connection, Finish, Work};
use crate::handler::{CloseReason, Context};
use crate::push::Link;
use crate::runtime::token;
use crate::stats::Counters;
use crate::transport::net::Stream;
use crate::transport::wire::Wire;

impl<C: Codec, S: Send + 'static> Reactor<C, S> {
    /// Hands the waiting close hooks to the pool (or runs them, inline); those the full
    /// queue refuses wait for the next turn.
    pub(super) fn queue_closes(&mut self) {
        for work in std::mem::take(&mut self.closing) {
            if self.hooks_here {
                self.run_close(work);
                continue;
            }
            match self.jobs.try_send(work) {
                Ok(()) => {}
                Err(TrySendError::Full(work)) => self.closing.push(work),
                // No worker is left (the server is being torn down): run it here.
                Err(TrySendError::Disconnected(work)) => {
                    self.run_close(work);
                }
            }
        }
    }

    /// The reactor is exiting: every close hook still waiting is queued, waiting up to one
    /// second in all for room, or else run here (a close hook that blocks then delays this
    /// exit only). Hooks that run here anyway (inline mode, non-blocking hooks) run now.
    pub(super) fn finish_closes(&mut self) {
        let run_here = self.hooks_here;
        let until = Instant::now() + Duration::from_secs(1);
        for work in std::mem::take(&mut self.closing) {
            let work = if run_here {
                work
            } else {
                match self.jobs.send_deadline(work, until) {
                    Ok(()) => continue,
                    Err(e) => e.into_inner(),
                }
            };
            self.run_close(work);
        }
    }

    /// Runs a close hook on this thread (it answers nothing).
    pub(super) fn run_close(&self, work: Work<C::Request, C::Response, S>) {
        run_work(
            &*self.handler,
            work,
            &self.counters,
            self.slow_handler,
            &mut |_| {},
        );
    }

    pub(super) fn add_connection(&mut self, stream: Stream, ctx: Context) {
        let mut stream = match Wire::new(stream, &self.wire) {
            Ok(wire) => wire,
            Err(e) => {
                log::error!(
                    "connection {} ({}): {e}; closing it",
                    ctx.connection_id,
                    ctx.peer
                );
                self.counters_closed();
                return;
            }
        };
        let slot = if let Some(slot) = self.free.pop() {
            slot
        } else {
            self.slots.push(Slot {
                generation: 0,
                entry: None,
            });
            // A slot per open connection, and each holds a descriptor (a C int): fewer than
            // 2^31 slots, so the conversion cannot fail.
            u32::try_from(self.slots.len() - 1).expect("fewer slots than descriptors")
        };
        let key = ConnKey {
            slot,
            generation: self.slots[slot as usize].generation,
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token::token(key), interest)
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
        let link = Arc::new(Link::new(
            key,
            ctx.connection_id,
            Arc::clone(&self.sink),
            self.push_limit,
            Arc::clone(&self.counters),
            Arc::clone(&self.scheduler),
        ));
        let conn = Connection::new(
            stream,
            (key, ctx, link),
            self.codec.clone(),
            &self.limits,
            self.concurrent,
            self.now,
        );
        self.slots[slot as usize].entry = Some(Entry {
            conn,
            armed: None,
            accounted: 0,
            drive_queued: false,
            stall_listed: false,
            revisit_listed: false,
        });
        self.live += 1;
        if self.draining.is_some() {
            self.with_conn(key, |conn, env| conn.shut_down(env));
        } else {
            // The peer may have sent its request before we registered: read now.
            self.with_conn(key, |conn, env| conn.drive(env));
        }
    }

    pub(super) fn begin_shutdown(&mut self, deadline: Instant) {
        self.draining = Some(deadline);
        for key in self.live_keys() {
            self.with_conn(key, |conn, env| conn.shut_down(env));
        }
    }

    pub(super) fn live_keys(&self) -> Vec<ConnKey> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.entry.is_some())
            .map(|(slot, s)| ConnKey {
                slot: u32::try_from(slot).expect("fewer slots than descriptors"),
                generation: s.generation,
            })
            .collect()
    }

    /// Drops connection `key`; `otherwise` is why it ended if the connection does not know.
    pub(super) fn close(&mut self, key: ConnKey, otherwise: CloseReason) {
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
        let (session, reason) = entry.conn.release(&self.counters, otherwise);
        match session {
            Finish::Here(session) => self.closing.push(Work::Close {
                ctx: *entry.conn.ctx(),
                session,
                reason,
            }),
            Finish::Out => {
                self.orphans.insert(key, reason);
            }
            Finish::Nothing => {}
        }
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

    pub(super) fn counters_closed(&self) {
        Counters::add(&self.counters.connections_closed, 1);
        self.gate.release();
    }

    pub(super) fn force_close_all(&mut self) {
        let keys = self.live_keys();
        if !keys.is_empty() {
            let unanswered: usize = self
                .slots
                .iter()
                .filter_map(|slot| slot.entry.as_ref())
                .map(|entry| entry.conn.in_flight())
                .sum();
            log::warn!(
                "reactor {}: shutdown deadline passed; closing {} connections with {unanswered} \
                 requests received and not answered (counted in replies_dropped)",
                self.index,
                keys.len()
            );
        }
        for key in keys {
            Counters::add(&self.counters.timeouts, 1);
            self.close(key, CloseReason::Shutdown);
        }
    }
}
