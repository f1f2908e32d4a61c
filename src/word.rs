//! The packed `(on_hand, reserved, version)` word of the compare-and-swap stores (the
//! optimistic and the adaptive store): its layout, limits, and packing.
//!
//! Layout, from the lowest bit:
//!
//! | bits | field |
//! |---|---|
//! | 0..40 | `on_hand` ([`COUNT_BITS`]) |
//! | 40..80 | `reserved` ([`RESERVED_SHIFT`]) |
//! | 80..128 | `version` ([`VERSION_SHIFT`], [`VERSION_BITS`]) |

use crate::level::{Limits, StockLevel};

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
