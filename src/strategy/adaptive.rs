//! Adaptive concurrency control: per SKU optimistic while it is cold, locked while it is hot
//! (MOCC, Wang & Kimura, VLDB 2016).

use std::fmt;

use crate::error::StockError;
use crate::level::{Change, StockLevel};
use crate::lifecycle::builder::StoreBuilder;
use crate::lifecycle::{self, Backend, Lifecycle};
use crate::lines;
use crate::stats::Stat;
use crate::store::{Sku, StockStore};
use crate::strategy::word::{attempt, pack, Attempt, LIMITS};
use crate::strategy::word_lines::{WordHandle, WordSlot, WordStore};
use crate::sync::{
    lock_noting_contention, AtomicBool, AtomicU64, Backoff, Fill, GrowOnlyMap, Mutex, Ordering,
    Tally, Word,
};
use crate::temperature::Temperature;

/// Compare-and-swap attempts of a cold SKU's update before it takes the SKU's lock (it
/// then waits its turn instead of racing on; the update is never refused for contention).
const OPTIMISTIC_ATTEMPTS_MAX: u32 = 64;

/// A stock store with **adaptive concurrency control**: each SKU is optimistic
/// (versioned compare-and-swap) while it is cold and pessimistic (a lock) while it is hot,
/// and turns from one to the other by its own temperature, after MOCC ("Mostly-Optimistic
/// Concurrency Control for Highly Contended Dynamic Workloads on a Thousand Cores", Wang
/// and Kimura, VLDB 2016).
///
/// Each SKU keeps its `(on_hand, reserved, version)` in one 128-bit word, as the
/// [`OptimisticStore`](crate::OptimisticStore) does, and beside it a mutex, a mode flag
/// (cold or hot) and its temperature. Every writer, in either mode, changes the word only
/// by compare-and-swap; the word is the single source of truth:
///
/// - **Cold**: read, compute, CAS, back off and retry, as the optimistic store. After
///   64 lost races, or when it sees the SKU turned hot,
///   the update takes the SKU's lock instead, so it is never refused for contention
///   (this store never returns [`StockError::Conflict`]).
/// - **Hot**: lock the SKU's mutex, then read, compute, CAS. Writers queue on the mutex
///   instead of racing, so the CAS wins at once, unless a cold writer that started
///   before the switch is still in flight; then it retries, still under the lock, until it
///   wins.
///
/// So a switch needs no handshake for correctness: the mode decides only whether writers
/// queue on the mutex, and the CAS on the word applies each change exactly once whatever
/// mode each writer saw (model-checked in `tests/loom_adaptive.rs`, with a negative
/// control whose hot writers store the word blindly under the lock and lose an update).
/// Only the mutex is a lock, held around one SKU's CAS and never while another is taken,
/// so the store is deadlock free.
///
/// **Temperature** (MOCC's per-record temperature, simplified): each SKU counts a
/// conflict for each lost CAS race and for a mutex found locked, and needs no counter of
/// its operations: its version, which every change bumps by one, is that count. So a
/// conflict-free update of a cold SKU writes nothing but its word (no second shared write
/// beside the compare-and-swap), and a hot SKU's update counts its conflicts under the
/// lock it already holds. The change that brings a SKU's version to a multiple of
/// [`WINDOW_OPS`](Self::WINDOW_OPS) ends a window (one change reaches each version, so
/// exactly one ends each window, however many race): the SKU
/// turns hot if the window's conflicts per 1000 operations reach
/// [`HOT_THRESHOLD_PER_MILLE`](Self::HOT_THRESHOLD_PER_MILLE), cold if they are at most
/// [`COLD_THRESHOLD_PER_MILLE`](Self::COLD_THRESHOLD_PER_MILLE), and keeps its mode in
/// between (hysteresis); then the window starts again (the decay: only the last window
/// counts). MOCC decays a logarithmic temperature by time and locks per transaction; here
/// one window of operations per SKU plays that part.
///
/// **A new SKU starts cold**, on the path that costs less when nobody contends: a cold
/// update is one compare-and-swap, a hot one locks the mutex, compare-and-swaps and
/// unlocks (three atomic read-modify-writes where one does). Only the SKU's measured
/// conflicts turn it hot.
///
/// The defaults turn a SKU hot at a lost race every other operation (500 per mille) and
/// cold again at one in ten (100): a lost race here costs one more compare-and-swap, far
/// less than MOCC's aborted transaction, so the lock only pays once the retries pile up.
/// With 100 and 20, one SKU sold by 2 threads on the 2-core development machine lost about
/// one race in eight and flipped between the modes 4,238 times in 4 million sales; with
/// 500 and 100 it stayed cold (a scratch run reading `stats().switches`).
/// [`StockStore::stats`] reports the
/// hot SKUs now (`hot_skus`) and the switches so far (`switches`).
///
/// A multi-line request checks every line first, then reserves its SKUs one at a time in
/// ascending order (each by its own mode); when a later line is refused, the earlier
/// lines are released again (compensation). The request is all or nothing, but **a
/// concurrent reader may briefly see the partial hold**, as with the optimistic store.
/// A multi-line `sell` is a hold on every line that then becomes a sale.
///
/// Counts are 40-bit and versions 48-bit: on hand is at most
/// [`QUANTITY_MAX`](Self::QUANTITY_MAX), past which [`StockError::Overflow`] is returned.
///
/// Pick it for a catalogue with a few hot SKUs (a flash sale) among many cold ones.
///
/// # Locking behaviour
///
/// A cold SKU takes no lock. A hot SKU's update locks that SKU's mutex for one
/// compare-and-swap (retried only against a cold writer still in flight); a
/// multi-line request holds at most one SKU's mutex at a time. No user code runs under a
/// lock. Lookups take no lock and write nothing shared (creating a SKU takes the SKU
/// map's writer lock); the registry of holds takes short internal locks, and a
/// `reserve_with` with an idempotency key locks the key while it holds.
///
/// A one-line `reserve` with no TTL, key or event sink keeps its hold in a 64-bit word
/// beside the SKU's counts (one such hold per SKU at a time; the others go to the
/// registry): `reserve` writes it by a compare-and-swap, with no lock, and `commit`,
/// `release`, `extend` and `reservation` work on it under a short lock of one shard of the
/// store's hold deadlines, moving the units before the word is cleared (so racing
/// resolutions stay linearizable).
///
/// # Examples
///
/// ```
/// use stockledger::{AdaptiveStore, StockError, StockStore};
///
/// let store = AdaptiveStore::new();
/// store.restock(&"flash-sale", 2)?;
/// store.sell(&[("flash-sale", 2)])?;
/// assert_eq!(
///     store.sell(&[("flash-sale", 1)]),
///     Err(StockError::InsufficientStock { sku: "flash-sale", requested: 1, available: 0 }),
/// );
/// assert_eq!(store.stats().hot_skus, 0); // one thread never conflicts
/// # Ok::<(), StockError<&str>>(())
/// ```
pub struct AdaptiveStore<K> {
    /// SKU -> its slot. The word's layout, from the lowest bit:
    ///
    /// | bits | field |
    /// |---|---|
    /// | 0..40 | `on_hand` (`COUNT_BITS`, in `word.rs`, shared with the other CAS store) |
    /// | 40..64 | `version`, its low 24 bits (`VERSION_HALF_BITS`) |
    /// | 64..104 | `reserved` |
    /// | 104..128 | `version`, its high 24 bits |
    ///
    /// The slot's mode, from its `hot` flag:
    ///
    /// | `hot` | writers | conflicts counted |
    /// |---|---|---|
    /// | `false` (cold) | CAS loop with back-off, lock after 64 lost races | lost races |
    /// | `true` (hot) | lock the mutex, then CAS until it wins | mutex found locked, lost races |
    skus: GrowOnlyMap<K, Slot>,
    /// Open holds, events, counters.
    lifecycle: Lifecycle<K, WordHandle>,
    /// When a SKU turns hot or cold.
    temperature: Temperature,
}

/// One SKU: its counts word, its lock and mode, its temperature, its low-stock threshold,
/// its hold word.
#[derive(Debug)]
pub(crate) struct Slot {
    /// `(on_hand, reserved, version)`, packed (see [`AdaptiveStore::skus`]); changed only
    /// by compare-and-swap, in either mode.
    word: Word,
    /// Hot writers queue here; it guards no data (the word is changed by CAS alone).
    lock: Mutex<()>,
    /// Whether the SKU is hot (writers lock `lock` first) or cold.
    hot: AtomicBool,
    /// Conflicts in the current window (a heuristic: read by no correctness decision),
    /// saturating at `u32::MAX`. The window's operations need no counter: the version in
    /// `word` counts them. 32 bits, so that the slot with its hold word fits in 48 bytes
    /// (a SKU map entry of 64 bytes, one cache line, with a key of up to 16 bytes).
    window_conflicts: Tally,
    /// The low-stock threshold (0: none); read only when an event sink is set.
    low_stock_threshold: AtomicU64,
    /// A one-line hold kept with its SKU (`strategy::word_holds`), 0 for none.
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
            lock: _,
            hot,
            window_conflicts,
            low_stock_threshold,
            hold,
        } = from;
        self.word
            .store(word.load(Ordering::Relaxed), Ordering::Relaxed);
        self.hot
            .store(hot.load(Ordering::Relaxed), Ordering::Relaxed);
        let conflicts = window_conflicts.load(Ordering::Relaxed);
        self.window_conflicts.store(conflicts, Ordering::Relaxed);
        let threshold = low_stock_threshold.load(Ordering::Relaxed);
        self.low_stock_threshold.store(threshold, Ordering::Relaxed);
        self.hold
            .store(hold.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Slot {
    /// A cold SKU's slot starting at `level` (its first restock), with no threshold.
    fn new(level: StockLevel) -> Self {
        Self {
            word: Word::new(pack(level)),
            lock: Mutex::new(()),
            hot: AtomicBool::new(false),
            window_conflicts: Tally::new(0),
            low_stock_threshold: AtomicU64::new(0),
            hold: AtomicU64::new(0),
        }
    }

    /// Adds one update's `conflicts` (at least 1) to the window, saturating.
    #[cold]
    fn add_conflicts(&self, conflicts: u64) {
        let conflicts = u32::try_from(conflicts).unwrap_or(u32::MAX);
        // `fetch_update` never fails with a closure that always returns `Some`.
        let _ =
            self.window_conflicts
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |window| {
                    Some(window.saturating_add(conflicts))
                });
    }
}

impl<K: Sku> AdaptiveStore<K> {
    /// The largest on hand of one SKU, in units: 2⁴⁰ − 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{AdaptiveStore, StockStore};
    ///
    /// let store = AdaptiveStore::new();
    /// assert_eq!(AdaptiveStore::<u32>::QUANTITY_MAX, (1 << 40) - 1);
    /// assert_eq!(store.quantity_max(), AdaptiveStore::<u32>::QUANTITY_MAX);
    /// store.restock(&1_u32, AdaptiveStore::<u32>::QUANTITY_MAX)?;
    /// # Ok::<(), stockledger::StockError<u32>>(())
    /// ```
    pub const QUANTITY_MAX: u64 = LIMITS.count_max;

    /// Operations of one SKU per temperature window, by default (set another with
    /// [`StoreBuilder::window_ops`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::AdaptiveStore;
    ///
    /// assert_eq!(AdaptiveStore::<u32>::WINDOW_OPS, 64);
    /// ```
    pub const WINDOW_OPS: u64 = Temperature::DEFAULT.window_ops();

    /// Conflicts per 1000 operations of a window at which a cold SKU turns hot, by default
    /// (set another with [`StoreBuilder::hot_threshold_per_mille`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::AdaptiveStore;
    ///
    /// assert_eq!(AdaptiveStore::<u32>::HOT_THRESHOLD_PER_MILLE, 500);
    /// ```
    pub const HOT_THRESHOLD_PER_MILLE: u64 = Temperature::DEFAULT.hot_per_mille;

    /// Conflicts per 1000 operations of a window at or below which a hot SKU turns cold,
    /// by default (set another with [`StoreBuilder::cold_threshold_per_mille`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::AdaptiveStore;
    ///
    /// assert_eq!(AdaptiveStore::<u32>::COLD_THRESHOLD_PER_MILLE, 100);
    /// ```
    pub const COLD_THRESHOLD_PER_MILLE: u64 = Temperature::DEFAULT.cold_per_mille;

    /// An empty store with the default settings: `AdaptiveStore::builder().build()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{AdaptiveStore, StockStore};
    ///
    /// let store = AdaptiveStore::<String>::new();
    /// assert_eq!(store.level(&"SKU1001".to_string()), None);
    /// ```
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a store with a clock, an event sink, idempotency settings or a
    /// temperature of its own.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{AdaptiveStore, StockStore};
    ///
    /// let store = AdaptiveStore::<u32>::builder().hot_threshold_per_mille(200).build();
    /// store.restock(&1, 1)?;
    /// # Ok::<(), stockledger::StockError<u32>>(())
    /// ```
    pub fn builder() -> StoreBuilder<K, Self> {
        StoreBuilder::new(OPTIMISTIC_ATTEMPTS_MAX)
    }

    /// [`level`](crate::StockStore::level) by any borrowed form of the SKU type, as
    /// `HashMap::get` takes it: a `String`-keyed store answers a `&str` with no
    /// allocation. `None` for a SKU never restocked.
    ///
    /// # Locking behaviour
    ///
    /// As `level`: no lock on the optimistic path, the SKU's lock for a moment on the pessimistic one.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{AdaptiveStore, StockStore};
    ///
    /// let store = AdaptiveStore::<String>::new();
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

    /// Turns `sku` hot or cold now, as its temperature would (for tests and models of a
    /// switch); `false` when `sku` is unknown.
    #[doc(hidden)]
    pub fn force_mode(&self, sku: &K, hot: bool) -> bool {
        self.skus
            .get(sku)
            .map(|slot| self.set_mode(slot, hot))
            .is_some()
    }

    /// Sets `slot`'s mode to `hot`, counting a switch when it changed.
    fn set_mode(&self, slot: &Slot, hot: bool) {
        if slot.hot.swap(hot, Ordering::AcqRel) != hot {
            let stat = if hot {
                Stat::TurnedHot
            } else {
                Stat::TurnedCold
            };
            self.lifecycle.stats.count(stat);
        }
    }

    /// Counts one update's `conflicts` in `slot`'s window and in the store's statistics
    /// (nothing when none: the conflict-free update writes only its word).
    fn count_conflicts(&self, slot: &Slot, conflicts: u64) {
        if conflicts > 0 {
            slot.add_conflicts(conflicts);
            self.count_lost(conflicts);
        }
    }

    /// Ends `slot`'s window: decides the SKU's mode from the window's conflicts and starts
    /// the next window. Called by the one change whose version ends the window
    /// ([`Temperature::ends_window`]); conflicts of racing updates may land on either side.
    #[cold]
    fn end_window(&self, slot: &Slot) {
        let conflicts = u64::from(slot.window_conflicts.swap(0, Ordering::Relaxed));
        let hot = slot.hot.load(Ordering::Relaxed);
        let next = self
            .temperature
            .next_mode(hot, self.temperature.window_ops(), conflicts);
        if next != hot {
            self.set_mode(slot, next);
        }
    }

    /// The cold path after its first attempt lost a race: a CAS loop with back-off, as
    /// the optimistic store's; after [`OPTIMISTIC_ATTEMPTS_MAX`] lost races, or once the
    /// SKU turned hot, the locked path.
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
        for lost in 1..OPTIMISTIC_ATTEMPTS_MAX {
            // Lost to another writer. If the SKU turned hot meanwhile, queue on its lock;
            // else back off and read the word afresh (see the optimistic store for why not
            // the stale value the CAS returned).
            if slot.hot.load(Ordering::Acquire) {
                return self.update_locked(sku, slot, change, quantity, u64::from(lost), report);
            }
            backoff.snooze();
            match attempt(&slot.word, change, quantity) {
                Attempt::Won(before, after) => {
                    self.count_conflicts(slot, u64::from(lost));
                    return Ok(self.won(slot, before, after, report));
                }
                Attempt::Refused(refusal) => {
                    self.count_conflicts(slot, u64::from(lost));
                    return Err(refusal.into_error(sku.clone(), quantity));
                }
                Attempt::Lost => {}
            }
        }
        let lost = u64::from(OPTIMISTIC_ATTEMPTS_MAX);
        self.update_locked(sku, slot, change, quantity, lost, report)
    }

    /// The hot path: lock the SKU, then CAS until the change wins or is refused (a loss
    /// under the lock can only be to a cold writer that started before the SKU turned
    /// hot, so each loss is another change applied). `conflicts` were met before. Out of
    /// line: the cold path, inlined at every update, stays short.
    #[inline(never)]
    fn update_locked<R>(
        &self,
        sku: &K,
        slot: &Slot,
        change: Change,
        quantity: u64,
        mut conflicts: u64,
        report: impl FnOnce(StockLevel, StockLevel) -> R,
    ) -> Result<R, StockError<K>> {
        let (guard, contended) = lock_noting_contention(&slot.lock);
        conflicts += u64::from(contended);
        let backoff = Backoff::new();
        let outcome = loop {
            match attempt(&slot.word, change, quantity) {
                Attempt::Won(before, after) => break Ok((before, after)),
                Attempt::Refused(refusal) => break Err(refusal),
                Attempt::Lost => {
                    conflicts += 1;
                    backoff.snooze();
                }
            }
        };
        if conflicts > 0 {
            // Under the lock, on the cache line its lock and CAS just made this writer's;
            // the statistics (per-thread stripes) after it.
            slot.add_conflicts(conflicts);
        }
        let outcome = outcome.map(|(before, after)| self.won(slot, before, after, report));
        drop(guard);
        if conflicts > 0 {
            self.count_lost(conflicts);
        }
        outcome.map_err(|refusal| refusal.into_error(sku.clone(), quantity))
    }

    /// `report(before, after)` of a won change from `before` to `after` on `slot`; ends
    /// the SKU's window first when the change's version does
    /// ([`Temperature::ends_window`]).
    #[inline]
    fn won<R>(
        &self,
        slot: &Slot,
        before: StockLevel,
        after: StockLevel,
        report: impl FnOnce(StockLevel, StockLevel) -> R,
    ) -> R {
        if self.temperature.ends_window(after.version) {
            self.end_window(slot);
        }
        report(before, after)
    }

    /// Counts the `lost` conflicts (at least 1) of one update in the store's statistics.
    #[cold]
    fn count_lost(&self, lost: u64) {
        self.lifecycle.stats.add(Stat::CasRetries, lost);
        self.lifecycle.stats.count(Stat::Contended);
    }
}

impl<K: Sku> StoreBuilder<K, AdaptiveStore<K>> {
    /// Operations of one SKU per temperature window (default:
    /// [`AdaptiveStore::WINDOW_OPS`]); at the end of each window the SKU's mode is decided
    /// from that window's conflicts alone. A window's operations are the changes to the
    /// SKU (updates refused for its counts change nothing and are not counted), counted by
    /// its version: a window ends when a change brings the version to a multiple of
    /// `window_ops`, so `window_ops` is rounded up to a power of two (the test is a mask).
    ///
    /// # Panics
    ///
    /// When `window_ops` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::AdaptiveStore;
    ///
    /// let quick = AdaptiveStore::<String>::builder().window_ops(16).build();
    /// ```
    pub fn window_ops(mut self, window_ops: u64) -> Self {
        assert!(window_ops > 0, "window_ops must be at least 1");
        let window_ops = window_ops
            .checked_next_power_of_two()
            .unwrap_or(1 << (u64::BITS - 1));
        self.temperature.window_mask = window_ops - 1;
        self
    }

    /// Conflicts per 1000 operations of a window at which a cold SKU turns hot (default:
    /// [`AdaptiveStore::HOT_THRESHOLD_PER_MILLE`]). Must stay above the cold threshold
    /// (checked at `build`).
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::AdaptiveStore;
    ///
    /// let reluctant = AdaptiveStore::<String>::builder().hot_threshold_per_mille(900).build();
    /// ```
    pub fn hot_threshold_per_mille(mut self, per_mille: u64) -> Self {
        self.temperature.hot_per_mille = per_mille;
        self
    }

    /// Conflicts per 1000 operations of a window at or below which a hot SKU turns cold
    /// (default: [`AdaptiveStore::COLD_THRESHOLD_PER_MILLE`]). Must stay below the hot
    /// threshold (checked at `build`).
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::AdaptiveStore;
    ///
    /// let sticky = AdaptiveStore::<String>::builder().cold_threshold_per_mille(0).build();
    /// ```
    pub fn cold_threshold_per_mille(mut self, per_mille: u64) -> Self {
        self.temperature.cold_per_mille = per_mille;
        self
    }

    /// Builds the adaptive store with these settings; every SKU starts cold.
    ///
    /// # Panics
    ///
    /// When the cold threshold is not below the hot one (no hysteresis).
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{AdaptiveStore, StockStore};
    ///
    /// let store = AdaptiveStore::<&str>::builder().build();
    /// assert_eq!(store.quantity_max(), AdaptiveStore::<&str>::QUANTITY_MAX);
    /// ```
    pub fn build(mut self) -> AdaptiveStore<K> {
        let temperature = self.temperature;
        assert!(
            temperature.cold_per_mille < temperature.hot_per_mille,
            "the cold threshold must be below the hot threshold"
        );
        let restored = self.take_restored();
        let store = AdaptiveStore {
            skus: GrowOnlyMap::new(),
            lifecycle: self.lifecycle(),
            temperature,
        };
        if let Some(snapshot) = restored {
            crate::durability::capture::apply(&store, snapshot);
        }
        store
    }
}

impl<K: Sku> WordStore<K> for AdaptiveStore<K> {
    type Slot = Slot;

    #[inline]
    fn skus(&self) -> &GrowOnlyMap<K, Slot> {
        &self.skus
    }

    /// The adaptive policy, by the SKU's mode: never refused for contention. A hot SKU's
    /// writer queues on its lock ([`update_locked`](Self::update_locked)); a cold SKU's
    /// first attempt is inline, and a lost race goes on in
    /// [`update_contended`](Self::update_contended).
    #[inline(always)]
    fn update_then<R>(
        &self,
        sku: &K,
        slot: &Slot,
        change: Change,
        quantity: u64,
        report: impl FnOnce(StockLevel, StockLevel) -> R,
    ) -> Result<R, StockError<K>> {
        if slot.hot.load(Ordering::Acquire) {
            return self.update_locked(sku, slot, change, quantity, 0, report);
        }
        match attempt(&slot.word, change, quantity) {
            Attempt::Won(before, after) => Ok(self.won(slot, before, after, report)),
            Attempt::Refused(refusal) => Err(refusal.into_error(sku.clone(), quantity)),
            Attempt::Lost => self.update_contended(sku, slot, change, quantity, report),
        }
    }
}

impl<K: Sku> Backend<K> for AdaptiveStore<K> {
    crate::strategy::word_lines::word_backend_methods!();
}

impl<K: Sku> crate::durability::capture::SkuTable<K> for AdaptiveStore<K> {
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

impl<K: Sku> StockStore<K> for AdaptiveStore<K> {
    lifecycle::lifecycle_methods!();

    fn restock(&self, sku: &K, qty: u64) -> Result<StockLevel, StockError<K>> {
        if qty == 0 {
            return Err(StockError::InvalidQuantity { sku: sku.clone() });
        }
        let gate = self.lifecycle.registry.enter();
        let moved = lines::restock_sku(&self.skus, sku, qty, LIMITS, Slot::new, |slot| {
            self.update_slot(sku, slot, Change::Restock, qty)
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

impl<K: Sku> Default for AdaptiveStore<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Sku> fmt::Debug for AdaptiveStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (keys, deadlines) = self.lifecycle.registry.index_sizes();
        f.debug_struct("AdaptiveStore")
            .field("skus", &self.skus.len())
            .field("hot_skus", &self.lifecycle.stats().hot_skus)
            .field("open_holds", &lifecycle::open_holds(self))
            .field("deadlines", &deadlines)
            .field("idempotency_keys", &keys)
            .field("events", &self.lifecycle.events)
            .field("temperature", &self.temperature)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(loom))]
    fn a_slot_fits_in_48_bytes() {
        // With a key of up to 16 bytes (a `u64` in its `OnceLock`), a SKU map entry of one
        // 64-byte line, as the other stores'.
        assert!(
            std::mem::size_of::<Slot>() <= 48,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    #[test]
    fn window_conflicts_saturate() {
        let slot = Slot::new(StockLevel::default());
        slot.add_conflicts(u64::MAX);
        slot.add_conflicts(1);
        assert_eq!(slot.window_conflicts.load(Ordering::Relaxed), u32::MAX);
    }

    #[test]
    fn windows_round_up_to_a_power_of_two_and_end_at_multiples_of_the_version() {
        let temperature = |window_ops| {
            AdaptiveStore::<u32>::builder()
                .window_ops(window_ops)
                .build()
                .temperature
        };
        assert_eq!(temperature(1).window_ops(), 1);
        assert_eq!(temperature(48).window_ops(), 64);
        assert_eq!(temperature(u64::MAX).window_ops(), 1 << 63);
        let window = temperature(4);
        let ends: Vec<u64> = (1..=12).filter(|&v| window.ends_window(v)).collect();
        assert_eq!(ends, [4, 8, 12]);
        assert!((1..=5).all(|version| temperature(1).ends_window(version)));
    }

    #[test]
    fn a_window_of_conflicts_turns_a_sku_hot_and_a_quiet_one_cold() {
        let store = AdaptiveStore::<u32>::builder().window_ops(2).build();
        store.restock(&1, 10).unwrap(); // version 1: no window ends
        let slot_hot = || {
            store
                .skus
                .get(&1)
                .map(|slot| slot.hot.load(Ordering::Relaxed))
        };
        store
            .skus
            .get(&1)
            .map(|slot| store.count_conflicts(slot, 1))
            .unwrap();
        assert_eq!(slot_hot(), Some(false), "mid-window: no decision yet");
        store.sell(&[(1, 1)]).unwrap(); // version 2 ends the window
        assert_eq!(
            slot_hot(),
            Some(true),
            "1 conflict in 2 operations: 500 per mille"
        );
        assert_eq!((store.stats().hot_skus, store.stats().switches), (1, 1));
        store.sell(&[(1, 1)]).unwrap();
        assert_eq!(slot_hot(), Some(true), "mid-window again");
        store.sell(&[(1, 1)]).unwrap(); // version 4: a quiet window
        assert_eq!(slot_hot(), Some(false), "a quiet window cools it");
        assert_eq!((store.stats().hot_skus, store.stats().switches), (0, 2));
        assert_eq!(store.level(&1).unwrap().on_hand, 7);
        assert_eq!(
            store.sell(&[(1, 8)]),
            Err(StockError::InsufficientStock {
                sku: 1,
                requested: 8,
                available: 7
            })
        );
        assert_eq!(
            store.level(&1).unwrap().version,
            4,
            "a refusal is no change"
        );
    }
}
