//! A connection's poll token: its slot, and on 64-bit targets its slot's generation, so an
//! event for a connection that closed is never applied to a later occupant of the slot.

use mio::Token;

use crate::conn::ConnKey;

/// What a readiness event's token says about its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventKey {
    pub slot: u32,
    /// `None` where the token is too narrow to carry the generation (32-bit targets); the
    /// event then applies to whatever occupies the slot. A stale event costs one drive that
    /// finds nothing to do; it cannot deliver data, which is read from the socket itself.
    pub generation: Option<u32>,
}

/// The token connection `key` registers with the poll.
pub(crate) fn token(key: ConnKey) -> Token {
    // Packed to usize::BITS bits: it fits a usize by construction.
    Token(usize::try_from(pack_token(key, usize::BITS)).expect("packed to usize::BITS"))
}

impl EventKey {
    pub fn from_token(token: Token) -> EventKey {
        unpack_token(token.0 as u64, usize::BITS)
    }

    /// Whether `key` is the connection this event was registered for.
    pub fn matches(self, key: ConnKey) -> bool {
        self.slot == key.slot && self.generation.is_none_or(|g| g == key.generation)
    }
}

/// Packs `key` into a token of `bits` bits: slot and generation where 64 bits fit both, the
/// slot alone otherwise.
fn pack_token(key: ConnKey, bits: u32) -> u64 {
    if bits >= 64 {
        (u64::from(key.generation) << 32) | u64::from(key.slot)
    } else {
        u64::from(key.slot)
    }
}

// Truncation is the unpacking: the low 32 bits are the slot, the high 32 the generation.
#[allow(clippy::cast_possible_truncation)]
fn unpack_token(raw: u64, bits: u32) -> EventKey {
    EventKey {
        slot: raw as u32,
        generation: (bits >= 64).then_some((raw >> 32) as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_on_64_bit_targets_carries_slot_and_generation() {
        let key = ConnKey {
            slot: 7,
            generation: 3,
        };
        let event = unpack_token(pack_token(key, 64), 64);
        assert!(event.matches(key));
        assert!(!event.matches(ConnKey {
            slot: 7,
            generation: 4
        }));
    }

    /// Regression: on 32-bit targets the token cut the generation off but the lookup still
    /// compared it, so a slot reused by a later connection (generation 1) got no events.
    #[test]
    fn token_on_32_bit_targets_still_reaches_a_reused_slot() {
        let reused = ConnKey {
            slot: 5,
            generation: 1,
        };
        let event = unpack_token(pack_token(reused, 32), 32);
        assert!(event.matches(reused));
        assert!(!event.matches(ConnKey {
            slot: 6,
            generation: 1
        }));
    }
}
