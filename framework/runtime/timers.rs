//! A reactor's timers: at most one entry per open connection, removed when it closes, so
//! memory follows the connections open, not how many have come and gone.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use crate::conn::ConnKey;
use crate::stats::Counters;

/// Deadlines, earliest first. A connection's entry is the earliest deadline it has had
/// since its last one fired; a deadline that moved later is found when that entry fires and
/// the connection, asked again, names the later one.
pub(crate) struct Timers {
    entries: BTreeSet<(Instant, ConnKey)>,
    counters: Arc<Counters>,
}

impl Timers {
    pub fn new(counters: Arc<Counters>) -> Self {
        Timers {
            entries: BTreeSet::new(),
            counters,
        }
    }

    /// Gives `key` an entry at `deadline` unless it has one as early; `armed` is the
    /// connection's record of its entry.
    pub fn arm(&mut self, key: ConnKey, armed: &mut Option<Instant>, deadline: Option<Instant>) {
        let Some(deadline) = deadline else {
            return;
        };
        if armed.is_some_and(|at| at <= deadline) {
            return;
        }
        self.disarm(key, armed);
        self.entries.insert((deadline, key));
        Counters::add(&self.counters.timers, 1);
        *armed = Some(deadline);
    }

    /// Removes `key`'s entry, if it has one.
    pub fn disarm(&mut self, key: ConnKey, armed: &mut Option<Instant>) {
        if let Some(at) = armed.take() {
            if self.entries.remove(&(at, key)) {
                Counters::sub(&self.counters.timers, 1);
            }
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.entries.first().map(|&(at, _)| at)
    }

    /// Takes the earliest entry if it is due at `now`; its connection must forget it.
    pub fn pop_due(&mut self, now: Instant) -> Option<ConnKey> {
        let &(at, key) = self.entries.first()?;
        if at > now {
            return None;
        }
        self.entries.pop_first();
        Counters::sub(&self.counters.timers, 1);
        Some(key)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(slot: u32) -> ConnKey {
        ConnKey {
            slot,
            generation: 0,
        }
    }

    #[test]
    fn a_connection_holds_one_entry_and_leaves_none_when_disarmed() {
        let counters = Arc::new(Counters::default());
        let mut timers = Timers::new(Arc::clone(&counters));
        let now = Instant::now();
        let mut armed = None;
        timers.arm(key(1), &mut armed, Some(now + Duration::from_secs(5)));
        timers.arm(key(1), &mut armed, Some(now + Duration::from_secs(9)));
        assert_eq!(
            timers.len(),
            1,
            "a later deadline waits for the earlier entry"
        );
        timers.arm(key(1), &mut armed, Some(now + Duration::from_secs(1)));
        assert_eq!(timers.len(), 1, "an earlier deadline replaces the entry");
        assert_eq!(timers.next(), Some(now + Duration::from_secs(1)));
        timers.disarm(key(1), &mut armed);
        assert_eq!((timers.len(), armed), (0, None));
        assert_eq!(counters.snapshot(0).timers, 0);
    }

    #[test]
    fn only_due_entries_pop() {
        let mut timers = Timers::new(Arc::new(Counters::default()));
        let now = Instant::now();
        let (mut a, mut b) = (None, None);
        timers.arm(key(1), &mut a, Some(now));
        timers.arm(key(2), &mut b, Some(now + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(now), Some(key(1)));
        assert_eq!(timers.pop_due(now), None);
        assert_eq!(timers.len(), 1);
    }
}
