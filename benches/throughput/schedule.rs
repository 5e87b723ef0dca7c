//! When each waiting connection of a client thread sends its next request, with a think
//! time.
//!
//! The think time is the same for every connection, so requests scheduled after a reply
//! become due in the order they were scheduled: a FIFO holds them, O(1) each way. Only the
//! second request of each connection, at a random offset into the first think period, is
//! out of order; those (one per connection, once) go through a binary heap.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// (due instant, connection token) pairs, earliest first.
pub struct Schedule {
    think: Duration,
    /// Requests at arbitrary times (random offsets).
    timed: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Requests due `think` after a reply, in due order.
    next: VecDeque<(Instant, usize)>,
}

impl Schedule {
    pub fn new(think: Duration) -> Schedule {
        Schedule {
            think,
            timed: BinaryHeap::new(),
            next: VecDeque::new(),
        }
    }

    /// Schedules a request at `due`, whenever that is.
    pub fn at(&mut self, due: Instant, token: usize) {
        self.timed.push(Reverse((due, token)));
    }

    /// Schedules the next request of a connection that had a reply at `replied`.
    pub fn after_reply(&mut self, replied: Instant, token: usize) {
        let mut due = replied + self.think;
        // The caller's clock readings never go back, but keep the FIFO sorted regardless.
        if let Some(&(last, _)) = self.next.back() {
            due = due.max(last);
        }
        self.next.push_back((due, token));
    }

    /// The earliest due time, if anything is scheduled.
    pub fn next_due(&self) -> Option<Instant> {
        let first = self.timed.peek().map(|Reverse((due, _))| *due);
        let next = self.next.front().map(|(due, _)| *due);
        match (first, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes and returns the earliest entry due by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        let first = self.timed.peek().map(|Reverse(entry)| *entry);
        let next = self.next.front().copied();
        match (first, next) {
            (Some(a), Some(b)) if a.0 <= b.0 && a.0 <= now => self.timed.pop().map(|r| r.0),
            (Some(_), Some(b)) if b.0 <= now => self.next.pop_front(),
            (Some(a), None) if a.0 <= now => self.timed.pop().map(|r| r.0),
            (None, Some(b)) if b.0 <= now => self.next.pop_front(),
            _ => None,
        }
    }

    /// Forgets everything scheduled.
    pub fn clear(&mut self) {
        self.timed.clear();
        self.next.clear();
    }
}
