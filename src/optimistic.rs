//! Optimistic concurrency control: one versioned compare-and-swap word per SKU.

use std::fmt;

use crate::error::StockError;
use crate::level::{Change, Limits, StockLevel};
use crate::lines;
use crate::reservation::{Registry, Reservation, ReservationId};
use crate::store::{Sku, StockStore};
use crate::sync::{Backoff, LockFreeMap, Ordering, Word};

/// Bits of the word that hold `on_hand` (the lowest bits).
const COUNT_BITS: u32 = 40;
/// Bits of the word that hold `version` (the highest bits).
const VERSION_BITS: u32 = 128 - 2 * COUNT_BITS;
/// Where `reserved` starts in the word.
const RESERVED_SHIFT: u32 = COUNT_BITS;
/// Where `version` starts in the word.
const VERSION_SHIFT: u32 = 2 * COUNT_BITS;
/// Mask of one count field, before shifting.
const COUNT_MASK: u128 = (1 << COUNT_BITS) - 1;
/// The limits the packed word can hold.
const LIMITS: Limits = Limits {
    count_max: (1 << COUNT_BITS) - 1,
    version_max: (1 << VERSION_BITS) - 1,
};

/// Packs a level into a word (see the layout on [`OptimisticStore::skus`]).
fn pack(level: StockLevel) -> u128 {
    debug_assert!(level.on_hand <= LIMITS.count_max && level.version <= LIMITS.version_max);
    u128::from(level.on_hand)
        | u128::from(level.reserved) << RESERVED_SHIFT
        | u128::from(level.version) << VERSION_SHIFT
}

/// Unpacks a word into a level.
fn unpack(word: u128) -> StockLevel {
    // Each field is masked to at most 64 bits before the narrowing casts.
    StockLevel {
        on_hand: (word & COUNT_MASK) as u64,
        reserved: ((word >> RESERVED_SHIFT) & COUNT_MASK) as u64,
        version: (word >> VERSION_SHIFT) as u64,
    }
}

/// A stock store with **optimistic concurrency control**: each SKU's
/// `(on_hand, reserved, version)` lives in one 128-bit atomic word, changed by
/// read, compute, compare-and-swap, retry.
///
/// The single-SKU path is lock free and allocation free: a lookup in a lock-free map
/// (papaya), one load, one `compare_exchange` (`cmpxchg16b` on x86_64), and on a lost race
/// a retry with crossbeam's [`Backoff`](crossbeam_utils::Backoff), up to
/// [`RETRIES_MAX`](Self::RETRIES_MAX) attempts, then [`StockError::Conflict`].
///
/// A multi-line request reserves its SKUs one CAS at a time in ascending order; when a
/// later line is refused, the earlier lines are released again (compensation). The
/// request is all or nothing, but **a concurrent reader may briefly see the partial
/// hold**, and a concurrent request may be refused because of it. A multi-line `sell` is
/// a hold on every line that then becomes a sale, so a refused sale never touches on hand.
///
/// Counts are 40-bit and versions 48-bit: on hand is at most
/// [`QUANTITY_MAX`](Self::QUANTITY_MAX) (about 1.1 × 10¹² units), past which
/// [`StockError::Overflow`] is returned; `version + reserved` is at most 2⁴⁸ − 1 (about
/// 2.8 × 10¹⁴ changes per SKU).
///
/// Pick it when contention is rare or reads dominate: it never blocks, but under heavy
/// write contention on one SKU its retries cost more than a mutex's queue.
///
/// # Locking behaviour
///
/// No locks. Lookups pin papaya's epoch (thread-local); creating a SKU inserts into the map.
///
/// # Examples
///
/// ```
/// use stockledger::{OptimisticStore, StockError, StockStore};
///
/// let store = OptimisticStore::new();
/// store.restock(&7_u32, 2)?;
/// store.sell(&[(7, 2)])?;
/// assert_eq!(
///     store.sell(&[(7, 1)]),
///     Err(StockError::InsufficientStock { sku: 7, requested: 1, available: 0 }),
/// );
/// assert_eq!(
///     store.restock(&7, OptimisticStore::<u32>::QUANTITY_MAX + 1),
///     Err(StockError::Overflow { sku: 7 }),
/// );
/// # Ok::<(), StockError<u32>>(())
/// ```
pub struct OptimisticStore<K> {
    /// SKU -> its word. Layout, from the lowest bit:
    ///
    /// | bits | field |
    /// |---|---|
    /// | 0..40 | `on_hand` (`COUNT_BITS`) |
    /// | 40..80 | `reserved` (`RESERVED_SHIFT`) |
    /// | 80..128 | `version` (`VERSION_SHIFT`, `VERSION_BITS`) |
    skus: LockFreeMap<K, Word>,
    /// Open holds.
    holds: Registry<K>,
}

impl<K: Sku> OptimisticStore<K> {
    /// Compare-and-swap attempts on one SKU before a call gives up with
    /// [`StockError::Conflict`]. Every lost attempt means another writer succeeded.
    pub const RETRIES_MAX: u32 = 1024;

    /// The largest on hand of one SKU, in units: 2⁴⁰ − 1.
    pub const QUANTITY_MAX: u64 = LIMITS.count_max;

    /// An empty store.
    pub fn new() -> Self {
        Self {
            skus: LockFreeMap::new(),
            holds: Registry::new(),
        }
    }

    /// Applies `change` to one SKU's word with a CAS retry loop; returns the new level.
    fn update(
        sku: &K,
        word: &Word,
        change: Change,
        quantity: u64,
    ) -> Result<StockLevel, StockError<K>> {
        let backoff = Backoff::new();
        let mut current = word.load(Ordering::Acquire);
        for _ in 0..Self::RETRIES_MAX {
            let next = unpack(current)
                .apply(change, quantity, 0, LIMITS)
                .map_err(|refusal| refusal.into_error(sku.clone(), quantity))?;
            match word.compare_exchange(current, pack(next), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(next),
                Err(actual) => {
                    current = actual;
                    backoff.spin();
                }
            }
        }
        Err(StockError::Conflict {
            sku: sku.clone(),
            attempts: Self::RETRIES_MAX,
        })
    }

    /// Applies `change` to the SKU `sku`.
    fn update_sku(
        &self,
        sku: &K,
        change: Change,
        quantity: u64,
    ) -> Result<StockLevel, StockError<K>> {
        self.skus
            .with(sku, |word| Self::update(sku, word, change, quantity))
            .unwrap_or_else(|| Err(StockError::UnknownSku(sku.clone())))
    }

    /// Reserves merged `lines` in ascending order; on a refusal, releases the lines already
    /// reserved and returns the refusal.
    fn reserve_lines(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
        if let Some((sku, _)) = lines
            .iter()
            .find(|(sku, _)| self.skus.with(sku, |_| ()).is_none())
        {
            return Err(StockError::UnknownSku(sku.clone()));
        }
        // Check every line against its current level before changing any, so a request
        // refused without a race changes nothing, not even a version. A race after this
        // check is still caught by the CAS below and compensated.
        for (sku, quantity) in lines {
            let level = self
                .skus
                .with(sku, |word| unpack(word.load(Ordering::Acquire)));
            if let Some(Err(refusal)) =
                level.map(|level| level.apply(Change::Reserve, *quantity, 0, LIMITS))
            {
                return Err(refusal.into_error(sku.clone(), *quantity));
            }
        }
        for (done, (sku, quantity)) in lines.iter().enumerate() {
            if let Err(error) = self.update_sku(sku, Change::Reserve, *quantity) {
                self.resolve_lines(&lines[..done], Change::Release);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Commits or releases merged `lines` that are held.
    fn resolve_lines(&self, lines: &[(K, u64)], change: Change) {
        for (sku, quantity) in lines {
            self.resolve_line(sku, *quantity, change);
        }
    }

    /// Commits or releases one held line. The version rule of [`StockLevel`] leaves room
    /// for it, and only lost races repeat it, so it retries until it wins.
    fn resolve_line(&self, sku: &K, quantity: u64, change: Change) {
        loop {
            match self.update_sku(sku, change, quantity) {
                Ok(_) => return,
                Err(StockError::Conflict { .. }) => continue,
                Err(error) => unreachable!("a held line cannot be refused: {error:?}"),
            }
        }
    }

    /// Resolves the hold `id` with `change` (commit or release).
    fn resolve(&self, id: ReservationId, change: Change) -> Result<Reservation<K>, StockError<K>> {
        let reservation = self.holds.resolve(id)?;
        self.resolve_lines(reservation.lines(), change);
        Ok(reservation)
    }
}

impl<K: Sku> StockStore<K> for OptimisticStore<K> {
    fn restock(&self, sku: &K, qty: u64) -> Result<StockLevel, StockError<K>> {
        if qty == 0 {
            return Err(StockError::InvalidQuantity { sku: sku.clone() });
        }
        if qty > Self::QUANTITY_MAX {
            // Refused before the insert: a refused restock must not create the SKU.
            return Err(StockError::Overflow { sku: sku.clone() });
        }
        self.skus.with_or_insert(
            sku,
            || Word::new(pack(StockLevel::default())),
            |word| Self::update(sku, word, Change::Restock, qty),
        )
    }

    fn level(&self, sku: &K) -> Option<StockLevel> {
        self.skus
            .with(sku, |word| unpack(word.load(Ordering::Acquire)))
    }

    fn reserve(&self, lines: &[(K, u64)]) -> Result<Reservation<K>, StockError<K>> {
        let lines = lines::merge(lines)?;
        self.reserve_lines(&lines)?;
        Ok(self.holds.open(lines))
    }

    fn commit(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>> {
        self.resolve(id, Change::Commit)
    }

    fn release(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>> {
        self.resolve(id, Change::Release)
    }

    fn sell(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
        if let [(sku, quantity)] = lines {
            // The hot path: one CAS loop, no allocation.
            if *quantity == 0 {
                return Err(StockError::InvalidQuantity { sku: sku.clone() });
            }
            return self.update_sku(sku, Change::Sell, *quantity).map(|_| ());
        }
        let lines = lines::merge(lines)?;
        if let [(sku, quantity)] = lines.as_slice() {
            // Duplicate lines of one SKU: one change, as for a single line.
            return self.update_sku(sku, Change::Sell, *quantity).map(|_| ());
        }
        self.reserve_lines(&lines)?;
        self.resolve_lines(&lines, Change::Commit);
        Ok(())
    }

    fn quantity_max(&self) -> u64 {
        Self::QUANTITY_MAX
    }
}

impl<K: Sku> Default for OptimisticStore<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Sku> fmt::Debug for OptimisticStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OptimisticStore")
            .field("skus", &self.skus.len())
            .field("open_holds", &self.holds.len())
            .finish()
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
                on_hand: LIMITS.count_max,
                reserved: LIMITS.count_max,
                version: LIMITS.version_max,
            },
            StockLevel {
                on_hand: 5,
                reserved: 3,
                version: 9,
            },
        ] {
            assert_eq!(unpack(pack(level)), level);
        }
    }
}
