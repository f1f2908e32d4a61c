//! Operation statistics: holds counted by the registry under the locks it already takes,
//! the rest on striped counters, so counting shares no hot cache line.

use crate::level::Change;
use crate::sync::StripedCounters;

/// Counts of what a store did since it was built, from [`StockStore::stats`](crate::StockStore::stats).
///
/// Holds opened, committed, released and expired are counted per shard of the store's
/// registry of holds, under the shard lock that opening or resolving the hold takes anyway;
/// the other counters are striped per thread (a `LongAdder`). So counting adds no cache
/// line that every thread writes. A snapshot taken while other threads work sums shards and
/// stripes one by one and is not one instant's state; taken after they were joined, it is
/// exact.
///
/// # Examples
///
/// ```
/// use stockledger::{PessimisticStore, StockStore};
///
/// let store = PessimisticStore::new();
/// store.restock(&"kettle", 1)?;
/// let hold = store.reserve(&[("kettle", 1)])?;
/// assert!(store.reserve(&[("kettle", 1)]).is_err()); // sold out: a refusal
/// store.commit(hold.id())?;
/// let stats = store.stats();
/// assert_eq!((stats.reserves, stats.refusals, stats.commits), (1, 1, 1));
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
///
/// With the `serde` feature it (de)serializes as an object of its counters,
/// `{"reserves":1,"commits":1,…,"switches":0}`; a counter missing on reading is 0.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct StoreStats {
    /// Holds opened (`reserve`, `reserve_with`, `reserve_timeout`; not idempotent replays).
    pub reserves: u64,
    /// Holds committed.
    pub commits: u64,
    /// Holds released (by `release` or a dropped [`ReservationGuard`](crate::ReservationGuard)).
    pub releases: u64,
    /// Holds expired (by `expire_due`, a [`Reaper`](crate::Reaper), or a `commit`, `release`
    /// or `extend` that found the hold past its deadline).
    pub expirations: u64,
    /// Holds whose deadline was moved by `extend`.
    pub extensions: u64,
    /// `reserve_with` calls answered from the idempotency table (nothing more held).
    pub replays: u64,
    /// `reserve`, `reserve_with` and `sell` calls refused by a SKU's counts:
    /// [`InsufficientStock`](crate::error::StockError::InsufficientStock),
    /// [`Overflow`](crate::error::StockError::Overflow) of a count or version, or
    /// [`Conflict`](crate::error::StockError::Conflict).
    pub refusals: u64,
    /// Compare-and-swap attempts lost to another writer (optimistic store; 0 elsewhere).
    pub cas_retries: u64,
    /// SKU updates that found the SKU busy: a mutex already locked (pessimistic and monitor
    /// stores), or a compare-and-swap loop that lost at least once (optimistic store).
    pub contended: u64,
    /// `reserve_timeout` and `reserve_wait` lines that had to queue and wait (monitor
    /// store; 0 elsewhere).
    pub waits: u64,
    /// `reserve_timeout` calls that ran out of time (monitor store; 0 elsewhere).
    pub timeouts: u64,
    /// SKUs that are hot (pessimistic) now (adaptive store; 0 elsewhere). Counted as
    /// switches to hot minus switches to cold, so a snapshot taken while SKUs switch may
    /// be off by the switches in flight.
    pub hot_skus: u64,
    /// Switches of a SKU between cold (optimistic) and hot (pessimistic), both ways
    /// (adaptive store; 0 elsewhere).
    pub switches: u64,
}

/// One counter of [`StoreStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stat {
    Extensions,
    Replays,
    Refusals,
    CasRetries,
    Contended,
    Waits,
    Timeouts,
    TurnedHot,
    TurnedCold,
    /// A one-line hold opened in its SKU's slot (`lifecycle::slot_holds`; the registry
    /// counts its own holds under its shard locks).
    SlotHoldsOpened,
    /// A slot hold committed.
    SlotHoldsCommitted,
    /// A slot hold released.
    SlotHoldsReleased,
    /// A slot hold expired.
    SlotHoldsExpired,
}

/// Number of [`Stat`]s.
const STAT_COUNT: usize = 13;

/// The counters of one store.
pub(crate) struct Stats {
    counters: StripedCounters<STAT_COUNT>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            counters: StripedCounters::new(),
        }
    }

    /// Adds `amount` to `stat`.
    #[inline]
    pub(crate) fn add(&self, stat: Stat, amount: u64) {
        self.counters.add(stat as usize, amount);
    }

    /// Adds one to `stat`.
    #[inline]
    pub(crate) fn count(&self, stat: Stat) {
        self.add(stat, 1);
    }

    /// How many holds the SKUs' slots opened and resolved.
    fn slot_holds(&self) -> HoldCounts {
        let sum = |stat: Stat| self.counters.sum(stat as usize);
        HoldCounts {
            opened: sum(Stat::SlotHoldsOpened),
            committed: sum(Stat::SlotHoldsCommitted),
            released: sum(Stat::SlotHoldsReleased),
            expired: sum(Stat::SlotHoldsExpired),
        }
    }

    /// How many holds are open in the SKUs' slots (exact once no hold opens or resolves
    /// meanwhile).
    pub(crate) fn slot_holds_open(&self) -> usize {
        let counts = self.slot_holds();
        let resolved = counts
            .committed
            .wrapping_add(counts.released)
            .wrapping_add(counts.expired);
        // A sum read while holds resolve may see a resolution before its opening.
        usize::try_from(counts.opened.saturating_sub(resolved)).unwrap_or(usize::MAX)
    }

    /// Counts a refusal when `result` is one.
    pub(crate) fn count_refusal<T, K>(&self, result: &Result<T, crate::error::StockError<K>>) {
        use crate::error::StockError::{Conflict, InsufficientStock, Overflow};
        if let Err(InsufficientStock { .. } | Overflow { .. } | Conflict { .. }) = result {
            self.count(Stat::Refusals);
        }
    }

    /// Counts a replay when `result` is the answer to the key of a hold that has ended
    /// ([`StockError::HoldEnded`](crate::error::StockError::HoldEnded)): a retry answered from the
    /// idempotency table, like a replay of an open hold.
    pub(crate) fn count_ended_replay<T, K>(&self, result: &Result<T, crate::error::StockError<K>>) {
        if let Err(crate::error::StockError::HoldEnded { .. }) = result {
            self.count(Stat::Replays);
        }
    }

    /// The counts now, with the registry's counts of holds (`holds`: what
    /// the registry's `counts` returned).
    pub(crate) fn snapshot(&self, holds: HoldCounts) -> StoreStats {
        let sum = |stat: Stat| self.counters.sum(stat as usize);
        let holds = holds.plus(&self.slot_holds());
        StoreStats {
            reserves: holds.opened,
            commits: holds.committed,
            releases: holds.released,
            expirations: holds.expired,
            extensions: sum(Stat::Extensions),
            replays: sum(Stat::Replays),
            refusals: sum(Stat::Refusals),
            cas_retries: sum(Stat::CasRetries),
            contended: sum(Stat::Contended),
            waits: sum(Stat::Waits),
            timeouts: sum(Stat::Timeouts),
            hot_skus: sum(Stat::TurnedHot).saturating_sub(sum(Stat::TurnedCold)),
            switches: sum(Stat::TurnedHot).wrapping_add(sum(Stat::TurnedCold)),
        }
    }
}

/// How many holds a registry opened, and how each of those that left it left: counted per
/// shard of its holds, under the shard's lock, by the call that opened or resolved the
/// hold. So counting costs `reserve`, `commit` and `release` no atomic read-modify-write
/// and no thread-local lookup of their own, and a hold is counted resolved exactly when it
/// leaves. Counts wrap, like the store's other counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HoldCounts {
    /// Holds opened.
    pub(crate) opened: u64,
    /// Holds committed.
    pub(crate) committed: u64,
    /// Holds released.
    pub(crate) released: u64,
    /// Holds expired (their stock went back at or past their deadline).
    pub(crate) expired: u64,
}

/// How a hold left the registry, decided under its shard lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// Committed: its stock is sold.
    Committed,
    /// Released: its stock went back.
    Released,
    /// Past its deadline: its stock went back, whatever the caller asked for.
    Expired,
}

impl From<Resolution> for crate::reservation::HoldOutcome {
    fn from(resolution: Resolution) -> Self {
        match resolution {
            Resolution::Committed => Self::Committed,
            Resolution::Released => Self::Released,
            Resolution::Expired => Self::Expired,
        }
    }
}

impl Resolution {
    /// How a hold asked to resolve by `change` (`Commit` or `Release`) leaves: `expired`,
    /// past its deadline, it expires instead.
    #[inline]
    pub(crate) fn of(change: Change, expired: bool) -> Self {
        match (expired, change) {
            (true, _) => Resolution::Expired,
            (false, Change::Commit) => Resolution::Committed,
            (false, _) => Resolution::Released,
        }
    }
}

impl HoldCounts {
    /// Counts a hold that left by `resolution`.
    #[inline]
    pub(crate) fn resolved(&mut self, resolution: Resolution) {
        let count = match resolution {
            Resolution::Committed => &mut self.committed,
            Resolution::Released => &mut self.released,
            Resolution::Expired => &mut self.expired,
        };
        *count = count.wrapping_add(1);
    }

    /// These counts plus `other`'s.
    pub(crate) fn plus(self, other: &Self) -> Self {
        Self {
            opened: self.opened.wrapping_add(other.opened),
            committed: self.committed.wrapping_add(other.committed),
            released: self.released.wrapping_add(other.released),
            expired: self.expired.wrapping_add(other.expired),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stat_has_its_own_counter() {
        let stats = Stats::new();
        let all = [
            Stat::Extensions,
            Stat::Replays,
            Stat::Refusals,
            Stat::CasRetries,
            Stat::Contended,
            Stat::Waits,
            Stat::Timeouts,
            Stat::TurnedHot,
            Stat::TurnedCold,
            Stat::SlotHoldsOpened,
            Stat::SlotHoldsCommitted,
            Stat::SlotHoldsReleased,
            Stat::SlotHoldsExpired,
        ];
        assert_eq!(all.len(), STAT_COUNT);
        for (index, stat) in all.into_iter().enumerate() {
            stats.add(stat, index as u64 + 5);
        }
        let holds = HoldCounts {
            opened: 1,
            committed: 2,
            released: 3,
            expired: 4,
        };
        let snapshot = stats.snapshot(holds);
        let values = [
            snapshot.reserves,
            snapshot.commits,
            snapshot.releases,
            snapshot.expirations,
            snapshot.extensions,
            snapshot.replays,
            snapshot.refusals,
            snapshot.cas_retries,
            snapshot.contended,
            snapshot.waits,
            snapshot.timeouts,
            snapshot.hot_skus,
            snapshot.switches,
        ];
        // The holds add the slots' (14 opened, 15 committed, 16 released, 17 expired) to
        // the registry's; 12 turned hot and 13 turned cold: none hot now (never below 0),
        // 25 switches.
        assert_eq!(values, [15, 17, 19, 21, 5, 6, 7, 8, 9, 10, 11, 0, 25]);
        // 14 opened, 48 resolved (as a sum read mid-resolution may see): none open.
        assert_eq!(stats.slot_holds_open(), 0);
        stats.add(Stat::SlotHoldsOpened, 40);
        assert_eq!(stats.slot_holds_open(), 6);
    }
}
