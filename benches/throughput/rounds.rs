//! The rounds of the paired scenarios (downloads, pub/sub fan-out): every server of a
//! scenario once a round, the first one changing every round.

/// Calls `one(round, i)` for each of `rounds` rounds and each of the `servers` indices, the
/// order reversed every other round so that a drift of the machine hits both servers.
pub fn alternating(servers: usize, rounds: usize, mut one: impl FnMut(usize, usize)) {
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..servers).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            one(round, i);
        }
    }
}

/// The start of a progress line on stderr: `[done/total] label round r/rounds`.
pub fn progress(done: usize, total: usize, label: &str, round: usize, rounds: usize) -> String {
    format!(
        "[{done:>3}/{total}] {label:<40} round {}/{rounds}",
        round + 1
    )
}
