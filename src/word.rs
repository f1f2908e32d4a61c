//! The packed `(on_hand, reserved, version)` word of the compare-and-swap stores (the
//! optimistic and the adaptive store): its layout, limits, packing, and the one
//! compare-and-swap step ([`attempt`]) both stores retry by their own policy.
//!
//! Layout, from the lowest bit:
//!
//! | bits | field |
//! |---|---|
//! | 0..40 | `on_hand` ([`COUNT_BITS`]) |
//! | 40..80 | `reserved` ([`RESERVED_SHIFT`]) |
//! | 80..128 | `version` ([`VERSION_SHIFT`], [`VERSION_BITS`]) |

use crate::level::{Change, Limits, Refusal, StockLevel};
use crate::sync::{Ordering, Word};

/// Bits of the word that hold `on_hand` (the lowest bits), and `reserved`.
pub(crate) const COUNT_BITS: u32 = 40;
/// Bits of the word that hold `version` (the highest bits).
pub(crate) const VERSION_BITS: u32 = 128 - 2 * COUNT_BITS;
/// Where `reserved` starts in the word.
pub(crate) const RESERVED_SHIFT: u32 = COUNT_BITS;
/// Where `version` starts in the word.
pub(crate) const VERSION_SHIFT: u32 = 2 * COUNT_BITS;
/// Mask of one count field, before shifting.
const COUNT_MASK: u128 = (1 << COUNT_BITS) - 1;
/// The limits the packed word can hold.
pub(crate) const LIMITS: Limits = Limits {
    count_max: (1 << COUNT_BITS) - 1,
    version_max: (1 << VERSION_BITS) - 1,
};

/// Packs a level into a word.
pub(crate) fn pack(level: StockLevel) -> u128 {
    debug_assert!(level.on_hand <= LIMITS.count_max && level.version <= LIMITS.version_max);
    u128::from(level.on_hand)
        | u128::from(level.reserved) << RESERVED_SHIFT
        | u128::from(level.version) << VERSION_SHIFT
}

/// Unpacks a word into a level.
pub(crate) fn unpack(word: u128) -> StockLevel {
    // Each field is masked to at most 64 bits before the narrowing casts.
    StockLevel {
        on_hand: (word & COUNT_MASK) as u64,
        reserved: ((word >> RESERVED_SHIFT) & COUNT_MASK) as u64,
        version: (word >> VERSION_SHIFT) as u64,
    }
}

/// How one compare-and-swap of a change on a SKU's word went ([`attempt`]).
pub(crate) enum Attempt {
    /// The change is in the word: the levels before and after it.
    Won(StockLevel, StockLevel),
    /// The change was refused by the counts (nothing written).
    Refused(Refusal),
    /// Another writer changed the word first (nothing written).
    Lost,
}

/// One attempt of `change` of `quantity` units on `word`: read it afresh, apply the change
/// to its level, and compare-and-swap the result in. The one step both compare-and-swap
/// stores repeat, each with its own policy on a lost race.
#[inline(always)]
pub(crate) fn attempt(word: &Word, change: Change, quantity: u64) -> Attempt {
    let current = word.load(Ordering::Acquire);
    let before = unpack(current);
    match before.apply(change, quantity, 0, LIMITS) {
        Err(refusal) => Attempt::Refused(refusal),
        Ok(after) => {
            match word.compare_exchange(current, pack(after), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => Attempt::Won(before, after),
                Err(_) => Attempt::Lost,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_the_extremes() {
        for level in [
            StockLevel::default(),
            StockLevel {
                on_hand: 7,
                reserved: 3,
                version: 9,
            },
            StockLevel {
                on_hand: LIMITS.count_max,
                reserved: LIMITS.count_max,
                version: LIMITS.version_max,
            },
        ] {
            assert_eq!(unpack(pack(level)), level);
        }
    }
}
