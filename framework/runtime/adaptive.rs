//! When a reactor runs a batch itself instead of handing it to the pool (adaptive inline,
//! `Builder::adaptive_inline`): while the handler has proven fast on this reactor.
//!
//! A hand-off to a worker and back costs two thread wake-ups per request when the load is
//! light, and a host where a wake-up is dear pays for them in latency and CPU; a handler
//! that answers in a microsecond gains nothing from a pool. So a reactor runs its batches
//! itself, at the end of its turn (`Reactor::run_local`), for as long as each took less than
//! the budget per request. One that took longer sends this reactor's batches back to the
//! pool for a cool-down, which doubles with each slow probe (10 ms, 20 ms, ... up to 10 s)
//! and starts again from 10 ms after a long run of fast ones: a handler that blocks is
//! probed rarely, one call at a time, and a handler that blocks now and then loses little.

use std::time::{Duration, Instant};

/// The first cool-down after a slow batch.
const FIRST_COOL_DOWN: Duration = Duration::from_millis(10);
/// The longest cool-down: how often, at least, a handler that always blocks is probed.
const LONGEST_COOL_DOWN: Duration = Duration::from_secs(10);
/// Fast batches in a row after which the next slow one starts the cool-downs over.
const FORGIVEN_AFTER: u32 = 1000;
/// A batch's budget grows with its requests up to this many (16 pipelined requests get 16
/// budgets; 100 get 16 too, so a batch never stalls the reactor for long).
const BUDGETED_REQUESTS: u32 = 16;

/// One reactor's record of how fast the handler has been on it.
pub(crate) struct LocalRule {
    /// The time one request may take; `None`: never run here.
    budget: Option<Duration>,
    /// Batches go to the pool until then.
    cooling_until: Option<Instant>,
    /// The cool-down the next slow batch starts.
    next_cool_down: Duration,
    /// Fast batches since the last slow one.
    streak: u32,
}

impl LocalRule {
    pub fn new(budget: Option<Duration>) -> Self {
        LocalRule {
            budget,
            cooling_until: None,
            next_cool_down: FIRST_COOL_DOWN,
            streak: 0,
        }
    }

    /// Whether a batch dispatched at `now` runs on the reactor.
    pub fn runs_here(&mut self, now: Instant) -> bool {
        if self.budget.is_none() {
            return false;
        }
        match self.cooling_until {
            Some(until) if now < until => false,
            Some(_) => {
                self.cooling_until = None;
                true
            }
            None => true,
        }
    }

    /// A batch here ran so long that the reactor was taken over (`runtime::seat`): counts
    /// as a slow batch.
    pub fn overran(&mut self, now: Instant) {
        if self.budget.is_some() {
            self.streak = 0;
            self.cooling_until = Some(now + self.next_cool_down);
            self.next_cool_down = (self.next_cool_down * 2).min(LONGEST_COOL_DOWN);
        }
    }

    /// A batch of `requests` ran here in `took`; returns whether it overran its budget
    /// (batches go to the pool from now on, for a while).
    pub fn ran(&mut self, requests: usize, took: Duration, now: Instant) -> bool {
        let Some(budget) = self.budget else {
            return false;
        };
        let budgeted = u32::try_from(requests)
            .unwrap_or(u32::MAX)
            .clamp(1, BUDGETED_REQUESTS);
        if took <= budget * budgeted {
            self.streak = self.streak.saturating_add(1);
            if self.streak >= FORGIVEN_AFTER {
                self.next_cool_down = FIRST_COOL_DOWN;
            }
            return false;
        }
        self.overran(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_micros(50);

    #[test]
    fn a_fast_handler_keeps_running_here() {
        let mut rule = LocalRule::new(Some(BUDGET));
        let t = Instant::now();
        for _ in 0..100 {
            assert!(rule.runs_here(t));
            assert!(!rule.ran(1, Duration::from_micros(3), t));
        }
    }

    #[test]
    fn a_pipelined_batch_gets_a_budget_per_request_up_to_sixteen() {
        let mut rule = LocalRule::new(Some(BUDGET));
        let t = Instant::now();
        assert!(!rule.ran(16, BUDGET * 16, t));
        assert!(rule.ran(100, BUDGET * 17, t));
    }

    #[test]
    fn a_slow_batch_sends_work_to_the_pool_for_a_doubling_cool_down() {
        let mut rule = LocalRule::new(Some(BUDGET));
        let t = Instant::now();
        assert!(rule.ran(1, Duration::from_millis(1), t));
        assert!(!rule.runs_here(t + Duration::from_millis(9)));
        assert!(rule.runs_here(t + Duration::from_millis(10)));
        let t = t + Duration::from_millis(10);
        assert!(rule.ran(1, Duration::from_millis(1), t));
        assert!(!rule.runs_here(t + Duration::from_millis(19)));
        assert!(rule.runs_here(t + Duration::from_millis(20)));
    }

    #[test]
    fn the_cool_down_stops_doubling_at_ten_seconds_and_is_forgiven_after_a_fast_streak() {
        let mut rule = LocalRule::new(Some(BUDGET));
        let mut t = Instant::now();
        for _ in 0..20 {
            rule.ran(1, Duration::from_millis(1), t);
            t += LONGEST_COOL_DOWN;
        }
        assert_eq!(rule.next_cool_down, LONGEST_COOL_DOWN);
        for _ in 0..FORGIVEN_AFTER {
            rule.ran(1, Duration::from_micros(1), t);
        }
        rule.ran(1, Duration::from_millis(1), t);
        assert!(rule.runs_here(t + FIRST_COOL_DOWN));
    }

    #[test]
    fn no_budget_never_runs_here() {
        let mut rule = LocalRule::new(None);
        assert!(!rule.runs_here(Instant::now()));
    }
}
