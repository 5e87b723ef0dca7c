//! Deadlines that never overflow: a timeout of `Duration::MAX` means "never", not a panic.

use std::time::{Duration, Instant};

/// `now + timeout`, or the furthest instant this platform can represent short of it when
/// that sum overflows (`Instant + Duration` panics there).
pub(crate) fn after(now: Instant, timeout: Duration) -> Instant {
    let mut timeout = timeout;
    loop {
        if let Some(at) = now.checked_add(timeout) {
            return at;
        }
        // Halving ends: a zero duration always fits.
        timeout /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_too_large_for_an_instant_saturates_far_ahead() {
        let now = Instant::now();
        let at = after(now, Duration::MAX);
        assert!(at > now + Duration::from_secs(100 * 365 * 24 * 3600));
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
