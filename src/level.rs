//! A SKU's counts and the one place their arithmetic is written.
//!
//! Every store keeps a [`StockLevel`] per SKU (the pessimistic store behind a mutex, the
//! optimistic store packed into one atomic word, the monitor store inside its monitor) and
//! changes it only through [`StockLevel::apply`], so the rules below hold in every store.

use crate::error::StockError;

/// A SKU's counts at one instant.
///
/// `reserved <= on_hand` always holds; `version` grows by one with every change to the SKU
/// and never goes back, so two levels of one SKU are ordered by their versions.
///
/// # Examples
///
/// ```
/// use stockledger::{OptimisticStore, StockStore};
///
/// let store = OptimisticStore::new();
/// store.restock(&"pear", 5)?;
/// let hold = store.reserve(&[("pear", 2)])?;
/// let level = store.level(&"pear").unwrap();
/// assert_eq!((level.on_hand, level.reserved, level.available()), (5, 2, 3));
/// assert_eq!(level.version, 2); // restock, reserve
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
///
/// With the `serde` feature it (de)serializes as `{"on_hand":5,"reserved":2,"version":2}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StockLevel {
    /// Units physically in stock and not yet sold.
    pub on_hand: u64,
    /// Units held by open reservations (`reserved <= on_hand`).
    pub reserved: u64,
    /// Number of changes made to this SKU so far (restock, reserve, commit, release, sell).
    pub version: u64,
}

impl StockLevel {
    /// Units a new reservation or sale may take: `on_hand - reserved`.
    ///
    /// # Examples
    ///
    /// ```
    /// let level = stockledger::StockLevel { on_hand: 10, reserved: 3, version: 7 };
    /// assert_eq!(level.available(), 7);
    /// ```
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }

    /// Returns the level after `change` of `quantity` units, or why it is refused.
    ///
    /// `withheld` units of `available` are not offered to this caller (the monitor store
    /// withholds stock that queued waiters are entitled to). `limits` are the store's
    /// maxima. Every change bumps the version.
    ///
    /// The version rule: `version + reserved <= limits.version_max` after every change.
    /// Each open hold owns at least one reserved unit, so this leaves room for the version
    /// bump of every commit or release still to come: those two can never be refused.
    #[inline]
    pub(crate) fn apply(
        self,
        change: Change,
        quantity: u64,
        withheld: u64,
        limits: Limits,
    ) -> Result<StockLevel, Refusal> {
        let available = self.available().saturating_sub(withheld);
        let (on_hand, reserved) = match change {
            Change::Restock => {
                let on_hand = self
                    .on_hand
                    .checked_add(quantity)
                    .filter(|on_hand| *on_hand <= limits.count_max)
                    .ok_or(Refusal::Overflow)?;
                (on_hand, self.reserved)
            }
            Change::Reserve | Change::Sell if quantity > available => {
                return Err(Refusal::Insufficient { available });
            }
            Change::Reserve => (self.on_hand, self.reserved + quantity),
            Change::Sell => (self.on_hand - quantity, self.reserved),
            Change::Commit | Change::Release => {
                debug_assert!(quantity <= self.reserved, "resolving more than is reserved");
                let reserved = self
                    .reserved
                    .checked_sub(quantity)
                    .ok_or(Refusal::Overflow)?;
                let on_hand = match change {
                    Change::Commit => self.on_hand - quantity,
                    _ => self.on_hand,
                };
                (on_hand, reserved)
            }
        };
        let version = self.version + 1;
        if version
            .checked_add(reserved)
            .is_none_or(|sum| sum > limits.version_max)
        {
            return Err(Refusal::Overflow);
        }
        let next = StockLevel {
            on_hand,
            reserved,
            version,
        };
        debug_assert!(next.reserved <= next.on_hand, "reserved passed on hand");
        debug_assert!(next.version > self.version, "version went back");
        Ok(next)
    }
}

/// What one change did to one SKU, for events: the counts right after the change, and the
/// low-stock threshold crossing it caused, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    /// The SKU's counts right after the change.
    pub(crate) level: StockLevel,
    /// The crossing of the SKU's low-stock threshold, if the change (with whatever else
    /// happened under the same lock, such as grants to waiters) caused one.
    pub(crate) low_stock: Option<LowStock>,
}

/// A crossing of a low-stock threshold: available went from at least `threshold` to below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LowStock {
    /// Available units after the crossing.
    pub(crate) available: u64,
    /// The threshold crossed.
    pub(crate) threshold: u64,
    /// The SKU's version after the crossing.
    pub(crate) version: u64,
}

impl LowStock {
    /// The crossing of `threshold` from `before` to `after`, if available went from at
    /// least `threshold` to below it. A threshold of 0 is never crossed (it is unset).
    #[inline]
    pub(crate) fn crossing(before: StockLevel, after: StockLevel, threshold: u64) -> Option<Self> {
        if threshold == 0 {
            return None; // the common case: no threshold, nothing to compute
        }
        let crossed = before.available() >= threshold && after.available() < threshold;
        crossed.then_some(LowStock {
            available: after.available(),
            threshold,
            version: after.version,
        })
    }
}

impl Moved {
    /// The move of a SKU's first restock of `quantity` units: from nothing to
    /// `quantity` on hand at version 1, no threshold yet. A store inserts the SKU already
    /// holding this level, so the SKU never exists without its first restock.
    ///
    /// # Errors
    ///
    /// [`Refusal::Overflow`] when `quantity` passes `limits`.
    pub(crate) fn first_restock(quantity: u64, limits: Limits) -> Result<Self, Refusal> {
        let before = StockLevel::default();
        let after = before.apply(Change::Restock, quantity, 0, limits)?;
        Ok(Self::new(before, after, 0))
    }

    /// The move from `before` to `after` under a SKU with low-stock `threshold`.
    #[inline]
    pub(crate) fn new(before: StockLevel, after: StockLevel, threshold: u64) -> Self {
        Self {
            level: after,
            low_stock: LowStock::crossing(before, after, threshold),
        }
    }
}

/// One kind of change to a SKU's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// `on_hand += q`.
    Restock,
    /// `reserved += q`, if `q <= available`.
    Reserve,
    /// `on_hand -= q`, `reserved -= q`: a hold becomes a sale.
    Commit,
    /// `reserved -= q`: a hold is given back.
    Release,
    /// `on_hand -= q`, if `q <= available`: a sale without a hold.
    Sell,
}

/// The maxima of a store's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The largest `on_hand` (and so `reserved`) the store can hold.
    pub(crate) count_max: u64,
    /// The largest `version + reserved` the store can hold (see [`StockLevel::apply`]).
    pub(crate) version_max: u64,
}

impl Limits {
    /// The limits of a store that keeps each count in its own `u64`.
    pub(crate) const U64: Limits = Limits {
        count_max: u64::MAX,
        version_max: u64::MAX,
    };
}

/// Why [`StockLevel::apply`] refused a change; the caller adds the SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Fewer units available to this caller than requested.
    Insufficient {
        /// Units available to this caller.
        available: u64,
    },
    /// A count or the version would pass the store's limits.
    Overflow,
}

impl Refusal {
    /// The public error for this refusal of `requested` units of `sku`.
    pub(crate) fn into_error<K>(self, sku: K, requested: u64) -> StockError<K> {
        match self {
            Refusal::Insufficient { available } => StockError::InsufficientStock {
                sku,
                requested,
                available,
            },
            Refusal::Overflow => StockError::Overflow { sku },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limits = Limits {
        count_max: 10,
        version_max: 20,
    };

    fn level(on_hand: u64, reserved: u64, version: u64) -> StockLevel {
        StockLevel {
            on_hand,
            reserved,
            version,
        }
    }

    #[test]
    fn each_change_moves_the_right_counts_and_bumps_the_version() {
        let start = level(5, 2, 3);
        let apply = |change, quantity| start.apply(change, quantity, 0, Limits::U64);
        assert_eq!(apply(Change::Restock, 4), Ok(level(9, 2, 4)));
        assert_eq!(apply(Change::Reserve, 3), Ok(level(5, 5, 4)));
        assert_eq!(apply(Change::Commit, 2), Ok(level(3, 0, 4)));
        assert_eq!(apply(Change::Release, 2), Ok(level(5, 0, 4)));
        assert_eq!(apply(Change::Sell, 3), Ok(level(2, 2, 4)));
    }

    #[test]
    fn reserve_and_sell_refuse_more_than_available_minus_withheld() {
        let start = level(5, 2, 0);
        let refused = Err(Refusal::Insufficient { available: 3 });
        assert_eq!(start.apply(Change::Reserve, 4, 0, Limits::U64), refused);
        assert_eq!(start.apply(Change::Sell, 4, 0, Limits::U64), refused);
        let withheld = Err(Refusal::Insufficient { available: 1 });
        assert_eq!(start.apply(Change::Sell, 2, 2, Limits::U64), withheld);
    }

    #[test]
    fn low_stock_is_a_crossing_from_at_least_the_threshold_to_below() {
        let crossing = |before: u64, after: u64, threshold| {
            LowStock::crossing(level(before, 0, 1), level(after, 0, 2), threshold)
        };
        let crossed = Some(LowStock {
            available: 2,
            threshold: 3,
            version: 2,
        });
        assert_eq!(crossing(3, 2, 3), crossed);
        assert_eq!(crossing(9, 2, 3), crossed);
        assert_eq!(crossing(2, 1, 3), None, "already below");
        assert_eq!(crossing(9, 3, 3), None, "not below");
        assert_eq!(crossing(1, 0, 0), None, "unset");
    }

    #[test]
    fn counts_and_versions_never_pass_the_limits() {
        assert_eq!(
            level(8, 0, 0).apply(Change::Restock, 3, 0, SMALL),
            Err(Refusal::Overflow)
        );
        assert_eq!(
            level(u64::MAX, 0, 0).apply(Change::Restock, 1, 0, Limits::U64),
            Err(Refusal::Overflow)
        );
        // version 15 + 1, reserved 0 + 5 = 21 > 20: refused; commit still has room.
        assert_eq!(
            level(10, 0, 15).apply(Change::Reserve, 5, 0, SMALL),
            Err(Refusal::Overflow)
        );
        let held = level(10, 4, 14)
            .apply(Change::Reserve, 1, 0, SMALL)
            .unwrap();
        assert_eq!(held, level(10, 5, 15));
        let committed = held.apply(Change::Commit, 5, 0, SMALL).unwrap();
        assert_eq!(committed, level(5, 0, 16));
    }
}
