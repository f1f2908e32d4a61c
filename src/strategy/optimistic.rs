//! Optimistic concurrency control: one versioned compare-and-swap word per SKU.

use std::fmt;

use crate::error::StockError;
use crate::level::{Change, Moved, StockLevel};
use crate::lifecycle::builder::StoreBuilder;
use crate::lifecycle::{self, Backend, Lifecycle};
use crate::lines;
use crate::stats::Stat;
use crate::store::{Sku, StockStore};
use crate::strategy::word::{attempt, pack, Attempt, LIMITS};
use crate::strategy::word_lines::{WordHandle, WordSlot, WordStore};
use crate::sync::{AtomicU64, Backoff, Fill, GrowOnlyMap, Ordering, Word};

/// A stock store with **optimistic concurrency control**: each SKU's
/// `(on_hand, reserved, version)` lives in one 128-bit atomic word, changed by
/// read, compute, compare-and-swap, retry.
///
/// The single-SKU path is lock free and allocation free: a wait-free lookup in the
/// store's SKU map (it writes nothing shared), one load, one `compare_exchange`
/// (`cmpxchg16b` on x86_64), and on a lost race a back-off
/// ([`Backoff::snooze`](crossbeam_utils::Backoff::snooze): spinning at first, then
/// yielding the processor), a fresh load and a retry, up to
/// [`RETRIES_MAX`](Self::RETRIES_MAX) attempts (or the builder's
/// [`retries_max`](StoreBuilder::retries_max)), then [`StockError::Conflict`]. Without an
/// event sink the single-line `sell` reads nothing else: no threshold, no shared counter
/// (statistics count only lost races and refusals there, on per-thread stripes).
///
/// A multi-line request reserves its SKUs one CAS at a time in ascending order; when a
/// later line is refused, the earlier lines are released again (compensation). The
/// request is all or nothing, but **a concurrent reader may briefly see the partial
/// hold**, and a concurrent request may be refused because of it. A multi-line `sell` is
/// a hold on every line that then becomes a sale, so a refused sale never touches on hand,
/// and each SKU's version grows by 2 (hold, then commit) where a single-line sale adds 1.
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
/// No locks on the SKUs. Lookups take no lock and never wait. Creating a SKU (its first
/// restock) takes the SKU map's writer lock for the insert, and the insert that fills the
/// map's table past half builds one twice the size before it returns. The registry of holds
/// (shared by every store) takes short internal locks, and a `reserve_with` with an
/// idempotency key locks the key while it holds.
///
/// A one-line `reserve` with no TTL, key or event sink keeps its hold in a 64-bit word
/// beside the SKU's counts (one such hold per SKU at a time; the others go to the
/// registry): `reserve` writes it by a compare-and-swap, with no lock, and `commit`,
/// `release`, `extend` and `reservation` work on it under a short lock of one shard of the
/// store's hold deadlines, moving the units before the word is cleared (so racing
/// resolutions stay linearizable): 5 locked read-modify-writes a `reserve` + `commit`,
/// against 6 through the registry.
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
    /// | 0..40 | `on_hand` (`COUNT_BITS`, in `word.rs`, shared with the other CAS store) |
    /// | 40..64 | `version`, its low 24 bits (`VERSION_HALF_BITS`) |
    /// | 64..104 | `reserved` |
    /// | 104..128 | `version`, its high 24 bits |
    skus: GrowOnlyMap<K, Slot>,
    /// Open holds, events, counters.
    lifecycle: Lifecycle<K, WordHandle>,
    /// Compare-and-swap attempts per SKU update before [`StockError::Conflict`] (at least 1).
    retries_max: u32,
}

/// One SKU: its counts word, its low-stock threshold and its hold word.
#[derive(Debug)]
pub(crate) struct Slot {
    /// `(on_hand, reserved, version)`, packed (see [`OptimisticStore::skus`]).
    word: Word,
    /// The low-stock threshold (0: none); read only when an event sink is set.
    low_stock_threshold: AtomicU64,
    /// A one-line hold kept with its SKU (`strategy::word_holds`), 0 for none. In the
    /// 16-byte alignment's padding after the threshold: the slot stays 32 bytes.
    hold: AtomicU64,
}

impl WordSlot for Slot {
    #[inline]
    fn word(&self) -> &Word {
        &self.word
    }

    #[inline]
    fn low_stock_threshold(&self) -> &AtomicU64 {
        &self.low_stock_threshold
    }

    #[inline(always)]
    fn hold_word(&self) -> &AtomicU64 {
        &self.hold
    }
}

impl Default for Slot {
    fn default() -> Self {
        Self::new(StockLevel::default())
    }
}

impl Fill for Slot {
    fn fill(&self, from: Self) {
        // Relaxed: the SKU map publishes the entry (a Release store of its table slot).
        let Self {
            word,
            low_stock_threshold,
            hold,
        } = from;
        self.word
            .store(word.load(Ordering::Relaxed), Ordering::Relaxed);
        let threshold = low_stock_threshold.load(Ordering::Relaxed);
        self.low_stock_threshold.store(threshold, Ordering::Relaxed);
        self.hold
            .store(hold.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Slot {
    /// A SKU's slot starting at `level` (its first restock), with no threshold.
    fn new(level: StockLevel) -> Self {
        Self {
            word: Word::new(pack(level)),
            low_stock_threshold: AtomicU64::new(0),
            hold: AtomicU64::new(0),
        }
    }
}

impl<K: Sku> OptimisticStore<K> {
    /// Compare-and-swap attempts on one SKU before a call gives up with
    /// [`StockError::Conflict`], by default (set another with
    /// [`StoreBuilder::retries_max`]). Every lost attempt means another writer succeeded.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::OptimisticStore;
    ///
    /// assert_eq!(OptimisticStore::<u32>::RETRIES_MAX, 1024);
    /// let patient = OptimisticStore::<u32>::builder().retries_max(4096).build();
    /// # drop(patient);
    /// ```
    pub const RETRIES_MAX: u32 = 1024;

    /// The largest on hand of one SKU, in units: 2⁴⁰ − 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{OptimisticStore, StockStore};
    ///
    /// let store = OptimisticStore::new();
    /// assert_eq!(OptimisticStore::<u32>::QUANTITY_MAX, (1 << 40) - 1);
    /// assert_eq!(store.quantity_max(), OptimisticStore::<u32>::QUANTITY_MAX);
    /// store.restock(&1_u32, OptimisticStore::<u32>::QUANTITY_MAX)?;
    /// # Ok::<(), stockledger::StockError<u32>>(())
    /// ```
    pub const QUANTITY_MAX: u64 = LIMITS.count_max;

    /// An empty store with the default settings: `OptimisticStore::builder().build()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{OptimisticStore, StockStore};
    ///
    /// let store = OptimisticStore::<String>::new();
    /// assert_eq!(store.level(&"SKU1001".to_string()), None);
    /// ```
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a store with a clock, an event sink, idempotency settings or a retry
    /// bound of its own.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{OptimisticStore, StockStore};
    ///
    /// let store = OptimisticStore::<u32>::builder().retries_max(16).build();
    /// store.restock(&1, 1)?;
    /// # Ok::<(), stockledger::StockError<u32>>(())
    /// ```
    pub fn builder() -> StoreBuilder<K, Self> {
        StoreBuilder::new(Self::RETRIES_MAX)
    }

    /// [`level`](crate::StockStore::level) by any borrowed form of the SKU type, as
    /// `HashMap::get` takes it: a `String`-keyed store answers a `&str` with no
    /// allocation. `None` for a SKU never restocked.
    ///
    /// # Locking behaviour
    ///
    /// As `level`: no lock; one atomic read of the SKU's word.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{OptimisticStore, StockStore};
    ///
    /// let store = OptimisticStore::<String>::new();
    /// store.restock(&"SKU1004".to_string(), 3)?;
    /// assert_eq!(store.level_of("SKU1004").map(|level| level.on_hand), Some(3));
    /// assert_eq!(store.level_of("SKU9999"), None);
    /// # Ok::<(), stockledger::StockError<String>>(())
    /// ```
    #[inline]
    pub fn level_of<Q: std::hash::Hash + Eq + ?Sized>(&self, sku: &Q) -> Option<StockLevel>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.skus.get(sku).map(Self::slot_level)
    }

    /// The rest of [`update_then`](Self::update_then) after its first attempt lost a race:
    /// a CAS retry loop with back-off, up to the store's retry bound, then `Conflict`.
    #[cold]
    #[inline(never)]
    fn update_contended<R>(
        &self,
        sku: &K,
        slot: &Slot,
        change: Change,
        quantity: u64,
        report: impl FnOnce(StockLevel, StockLevel) -> R,
    ) -> Result<R, StockError<K>> {
        let backoff = Backoff::new();
        for lost in 1..self.retries_max {
            // Lost to another writer. Back off, then read the word afresh: the value the
            // failed CAS returned is stale once we have waited, and retrying from it (as
            // this loop once did) lost every race to a writer that did not wait, up to
            // `Conflict` with stock to spare. `snooze` spins for its first steps and then
            // yields the processor, which lets preempted writers run on an oversubscribed
            // machine.
            backoff.snooze();
            match attempt(&slot.word, change, quantity) {
                Attempt::Won(before, after) => {
                    self.count_lost(lost);
                    return Ok(report(before, after));
                }
                Attempt::Refused(refusal) => {
                    self.count_lost(lost);
                    return Err(refusal.into_error(sku.clone(), quantity));
                }
                Attempt::Lost => {}
            }
        }
        self.count_lost(self.retries_max);
        Err(StockError::Conflict {
            sku: sku.clone(),
            attempts: self.retries_max,
        })
    }

    /// Counts `lost` compare-and-swap attempts of one update (nothing when none was lost:
    /// the uncontended path touches no counter).
    fn count_lost(&self, lost: u32) {
        if lost > 0 {
            self.lifecycle.stats.add(Stat::CasRetries, u64::from(lost));
            self.lifecycle.stats.count(Stat::Contended);
        }
    }

    /// Restocks `quantity` units on an existing SKU's `slot`. A restock is never refused
    /// for contention: like a commit or a release it retries until it wins (every lost
    /// race is another writer's win, so the loop is lock free), and only
    /// [`StockError::Overflow`] refuses it.
    fn restock_slot(&self, sku: &K, slot: &Slot, quantity: u64) -> Result<Moved, StockError<K>> {
        loop {
            match self.update_slot(sku, slot, Change::Restock, quantity) {
                Err(StockError::Conflict { .. }) => continue,
                moved => return moved,
            }
        }
    }
}

impl<K: Sku> StoreBuilder<K, OptimisticStore<K>> {
    /// Compare-and-swap attempts per SKU update before a call gives up with
    /// [`StockError::Conflict`] (default: [`OptimisticStore::RETRIES_MAX`]). Restocks, and
    /// commits and releases of held stock, never give up: they retry until they win.
    ///
    /// # Panics
    ///
    /// When `retries_max` is 0: no update could ever be attempted.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::OptimisticStore;
    ///
    /// let impatient = OptimisticStore::<String>::builder().retries_max(1).build();
    /// ```
    pub fn retries_max(mut self, retries_max: u32) -> Self {
        assert!(retries_max > 0, "retries_max must be at least 1");
        self.retries_max = retries_max;
        self
    }

    /// Builds the optimistic store with these settings.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{OptimisticStore, StockStore};
    ///
    /// let store = OptimisticStore::<&str>::builder().build();
    /// assert_eq!(store.quantity_max(), OptimisticStore::<&str>::QUANTITY_MAX);
    /// ```
    pub fn build(mut self) -> OptimisticStore<K> {
        let retries_max = self.retries_max;
        let restored = self.take_restored();
        let store = OptimisticStore {
            skus: GrowOnlyMap::new(),
            lifecycle: self.lifecycle(),
            retries_max,
        };
        if let Some(snapshot) = restored {
            crate::durability::capture::apply(&store, snapshot);
        }
        store
    }
}

impl<K: Sku> WordStore<K> for OptimisticStore<K> {
    type Slot = Slot;

    #[inline]
    fn skus(&self) -> &GrowOnlyMap<K, Slot> {
        &self.skus
    }

    /// The optimistic policy: the first attempt is inline; a lost race goes on in
    /// [`update_contended`](Self::update_contended), up to the store's retry bound.
    #[inline(always)]
    fn update_then<R>(
        &self,
        sku: &K,
        slot: &Slot,
        change: Change,
        quantity: u64,
        report: impl FnOnce(StockLevel, StockLevel) -> R,
    ) -> Result<R, StockError<K>> {
        match attempt(&slot.word, change, quantity) {
            Attempt::Won(before, after) => Ok(report(before, after)),
            Attempt::Refused(refusal) => Err(refusal.into_error(sku.clone(), quantity)),
            Attempt::Lost => self.update_contended(sku, slot, change, quantity, report),
        }
    }
}

impl<K: Sku> Backend<K> for OptimisticStore<K> {
    crate::strategy::word_lines::word_backend_methods!();
}

impl<K: Sku> crate::durability::capture::SkuTable<K> for OptimisticStore<K> {
    const LIMITS: crate::level::Limits = LIMITS;

    fn sku_count(&self) -> usize {
        self.skus.len()
    }

    fn each_sku<'a>(&'a self, f: &mut dyn FnMut(&'a K, StockLevel, u64)) {
        crate::strategy::word_lines::each_sku(self, f);
    }

    fn restore_sku(&self, sku: &K, level: StockLevel, threshold: u64) -> bool {
        crate::strategy::word_lines::restore_sku(self, sku, threshold, || Slot::new(level))
    }
}

impl<K: Sku> StockStore<K> for OptimisticStore<K> {
    lifecycle::lifecycle_methods!();

    fn restock(&self, sku: &K, qty: u64) -> Result<StockLevel, StockError<K>> {
        if qty == 0 {
            return Err(StockError::InvalidQuantity { sku: sku.clone() });
        }
        let gate = self.lifecycle.registry.enter();
        let moved = lines::restock_sku(&self.skus, sku, qty, LIMITS, Slot::new, |slot| {
            self.restock_slot(sku, slot, qty)
        })?;
        drop(gate);
        self.lifecycle.restocked(sku, qty, moved);
        Ok(moved.level)
    }

    #[inline]
    fn level(&self, sku: &K) -> Option<StockLevel> {
        self.level_of(sku)
    }

    fn set_low_stock_threshold(&self, sku: &K, threshold: u64) -> Result<(), StockError<K>> {
        self.set_threshold(sku, threshold)
    }

    fn sell(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
        self.sell_lines(lines)
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
        let (keys, deadlines) = self.lifecycle.registry.index_sizes();
        f.debug_struct("OptimisticStore")
            .field("skus", &self.skus.len())
            .field("open_holds", &lifecycle::open_holds(self))
            .field("deadlines", &deadlines)
            .field("idempotency_keys", &keys)
            .field("events", &self.lifecycle.events)
            .field("retries_max", &self.retries_max)
            .finish()
    }
}
