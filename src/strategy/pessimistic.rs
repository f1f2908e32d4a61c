//! Pessimistic concurrency control: one mutex per SKU.

use std::fmt;

use crate::error::StockError;
use crate::level::{Change, Limits, Moved, StockLevel};
use crate::lifecycle::builder::StoreBuilder;
use crate::lifecycle::slot_holds::{self, HoldWord, HoldsCell, SlotHeld};
use crate::lifecycle::{self, Backend, Lifecycle};
use crate::lines::{self, LevelCell, LockedSkus, Moves};
use crate::stats::Stats;
use crate::store::{Sku, StockStore};
use crate::sync::{GrowOnlyMap, Mutex, MutexGuard, Position};

/// A stock store with **pessimistic concurrency control**: every SKU has its own mutex
/// (parking_lot), found in the store's SKU map.
///
/// The lock is the SKU's own slot in the map, never a temporary value. The map only grows
/// (a store never forgets a SKU), so a slot never moves and lives as long as the store: a
/// lookup finds it without taking any lock and without touching a reference count (it
/// writes nothing shared), and the slot is locked where it sits. A multi-line request
/// locks its SKUs in ascending order (Havender's ordered acquisition, 1968), checks every
/// line, then writes every line, so it is all or nothing and deadlock free.
///
/// A one-line hold (no TTL, no idempotency key, no event sink) lives in its SKU's slot,
/// one word beside the counts, written and cleared under the lock the stock moves under:
/// a `reserve` + `commit` takes 4 locked read-modify-writes, where a hold kept in the
/// store's registry of holds takes 8 (the hold shard's lock at each end). Its id names
/// the slot. A SKU has one such word: a second hold of it while the first is open, and
/// every other hold, live in the registry. Both kinds resolve alike, linearizably (see
/// `lifecycle::slot_holds`).
///
/// Pick it as the every-day default: it never retries and never refuses for contention,
/// and its critical sections are a few instructions long.
///
/// # Locking behaviour
///
/// Every method locks the slots of the SKUs it touches, in ascending SKU order, for a
/// few instructions; no lock is held while another is awaited out of order, and no user
/// code runs under a lock (events reach the sink after every lock is released). A
/// `reserve_with` with an idempotency key locks the key first (keys before SKUs). Finding
/// a SKU takes no lock; a restock that creates one takes the SKU map's writer lock for the
/// insert (and, when the map's table passes half full, for building one twice the size).
///
/// # Examples
///
/// ```
/// use stockledger::{PessimisticStore, StockError, StockStore};
///
/// let store = PessimisticStore::new();
/// store.restock(&"SKU1002", 2)?;
/// store.restock(&"addon:Accessory", 1)?;
/// let hold = store.reserve(&[("SKU1002", 1), ("addon:Accessory", 1)])?;
/// store.release(hold.id())?; // payment failed: the compensation step
/// assert_eq!(store.level(&"SKU1002").unwrap().available(), 2);
/// # Ok::<(), StockError<&str>>(())
/// ```
pub struct PessimisticStore<K> {
    /// SKU -> its slot; each slot's mutex guards that SKU's counts and threshold.
    slots: GrowOnlyMap<K, Mutex<Slot>>,
    /// Open holds (but those kept in their SKU's slot), events, counters.
    lifecycle: Lifecycle<K, SlotHandle>,
}

/// What a one-line hold keeps to settle without a lookup: its SKU's position in the map.
type SlotHandle = Option<Position>;

/// One SKU's state, guarded by its slot's mutex.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// The SKU's counts.
    level: StockLevel,
    /// Its low-stock threshold (0: none).
    low_stock_threshold: u64,
    /// The one-line hold that lives in the slot, if any ([`slot_holds`]).
    hold: HoldWord,
}

impl HoldsCell for Slot {
    #[inline(always)]
    fn hold_word(&mut self) -> &mut HoldWord {
        &mut self.hold
    }
}

impl LevelCell for Slot {
    fn level(&self) -> StockLevel {
        self.level
    }

    fn withheld(&self) -> u64 {
        0
    }

    fn set_level(&mut self, level: StockLevel) {
        self.level = level;
    }

    fn low_stock_threshold(&self) -> u64 {
        self.low_stock_threshold
    }
}

impl<K: Sku> PessimisticStore<K> {
    /// An empty store with the default settings: `PessimisticStore::builder().build()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{PessimisticStore, StockStore};
    ///
    /// let store = PessimisticStore::<String>::new();
    /// assert_eq!(store.level(&"SKU1001".to_string()), None);
    /// ```
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a store with a clock, an event sink or idempotency settings of its own.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use stockledger::{ManualClock, PessimisticStore, StockStore};
    ///
    /// let store = PessimisticStore::<String>::builder()
    ///     .clock(Arc::new(ManualClock::new()))
    ///     .build();
    /// assert_eq!(store.stats().reserves, 0);
    /// ```
    pub fn builder() -> StoreBuilder<K, Self> {
        StoreBuilder::new(0)
    }

    /// [`level`](crate::StockStore::level) by any borrowed form of the SKU type, as
    /// `HashMap::get` takes it: a `String`-keyed store answers a `&str` with no
    /// allocation. `None` for a SKU never restocked.
    ///
    /// # Locking behaviour
    ///
    /// As `level`: locks the SKU's slot for a moment.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{PessimisticStore, StockStore};
    ///
    /// let store = PessimisticStore::<String>::new();
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
        lines::read_one(self, sku, |slot| slot.level)
    }
}

impl<K: Sku> LockedSkus<K> for PessimisticStore<K> {
    type Slot = Mutex<Slot>;
    type Cell = Slot;

    #[inline]
    fn slot_map(&self) -> &GrowOnlyMap<K, Mutex<Slot>> {
        &self.slots
    }

    fn mutex(slot: &Self::Slot) -> &Mutex<Slot> {
        slot
    }

    fn stats(&self) -> &Stats {
        &self.lifecycle.stats
    }
}

impl<K: Sku> StoreBuilder<K, PessimisticStore<K>> {
    /// Builds the pessimistic store with these settings.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{PessimisticStore, StockStore};
    ///
    /// let store = PessimisticStore::<&str>::builder().build();
    /// assert_eq!(store.level(&"anything"), None);
    /// ```
    pub fn build(mut self) -> PessimisticStore<K> {
        let restored = self.take_restored();
        let store = PessimisticStore {
            slots: GrowOnlyMap::new(),
            lifecycle: self.lifecycle(),
        };
        if let Some(snapshot) = restored {
            crate::durability::capture::apply(&store, snapshot);
        }
        store
    }
}

impl<K: Sku> crate::durability::capture::SkuTable<K> for PessimisticStore<K> {
    const LIMITS: Limits = Limits::U64;

    fn sku_count(&self) -> usize {
        self.slots.len()
    }

    fn each_sku<'a>(&'a self, f: &mut dyn FnMut(&'a K, StockLevel, u64)) {
        self.slots.for_each(|sku, slot| {
            let slot = slot.lock();
            f(sku, slot.level, slot.low_stock_threshold);
        });
    }

    fn restore_sku(&self, sku: &K, level: StockLevel, threshold: u64) -> bool {
        let slot = || {
            Mutex::new(Slot {
                level,
                low_stock_threshold: threshold,
                hold: HoldWord::default(),
            })
        };
        self.slots.get_or_insert_with(sku, slot).is_some()
    }
}

impl<K: Sku> SlotHeld<K> for PessimisticStore<K> {
    #[inline(always)]
    fn settle_locked(
        &self,
        _slot: &Mutex<Slot>,
        mut cell: MutexGuard<'_, Slot>,
        quantity: u64,
        change: Change,
    ) {
        cell.level = cell
            .level
            .apply(change, quantity, 0, Limits::U64)
            .expect("an open hold can always be resolved");
    }
}

impl<K: Sku> Backend<K> for PessimisticStore<K> {
    type Handle = SlotHandle;

    slot_holds::slot_hold_methods!(lifecycle::slot_holds);

    fn lifecycle(&self) -> &Lifecycle<K, SlotHandle> {
        &self.lifecycle
    }

    fn hold(&self, lines: &[(K, u64)]) -> Result<Moves, StockError<K>> {
        lines::apply(self, lines, Change::Reserve)
    }

    fn hold_lines_quiet(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
        lines::apply_quiet(self, lines, Change::Reserve)
    }

    fn settle(&self, lines: &[(K, u64)], change: Change) -> Moves {
        lines::apply(self, lines, change).expect("an open hold can always be resolved")
    }

    #[inline]
    fn settle_quiet(&self, lines: &[(K, u64)], handle: &Self::Handle, change: Change) {
        let settled = match (handle, lines) {
            (Some(position), [(_, quantity)]) => {
                let slot = self.slots.at(*position);
                return self.settle_locked(slot, self.lock(slot), *quantity, change);
            }
            _ => lines::apply_quiet(self, lines, change),
        };
        settled.expect("an open hold can always be resolved");
    }
}

impl<K: Sku> StockStore<K> for PessimisticStore<K> {
    lifecycle::lifecycle_methods!();

    fn restock(&self, sku: &K, qty: u64) -> Result<StockLevel, StockError<K>> {
        if qty == 0 {
            return Err(StockError::InvalidQuantity { sku: sku.clone() });
        }
        let new_slot = |level| {
            Mutex::new(Slot {
                level,
                low_stock_threshold: 0,
                hold: HoldWord::default(),
            })
        };
        let gate = self.lifecycle.registry.enter();
        let moved = lines::restock_sku(&self.slots, sku, qty, Limits::U64, new_slot, |slot| {
            let mut slot = self.lock(slot);
            let before = slot.level;
            slot.level = before
                .apply(Change::Restock, qty, 0, Limits::U64)
                .map_err(|refusal| refusal.into_error(sku.clone(), qty))?;
            Ok(Moved::new(before, slot.level, slot.low_stock_threshold))
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
        let slot = self
            .slots
            .get(sku)
            .ok_or_else(|| StockError::UnknownSku(sku.clone()))?;
        slot.lock().low_stock_threshold = threshold;
        Ok(())
    }

    fn sell(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
        lifecycle::sell_locked(self, &self.lifecycle, lines)
    }
}

impl<K: Sku> Default for PessimisticStore<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> fmt::Debug for PessimisticStore<K>
where
    K: Sku,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (keys, deadlines) = self.lifecycle.registry.index_sizes();
        f.debug_struct("PessimisticStore")
            .field("skus", &self.slots.len())
            .field("open_holds", &lifecycle::open_holds(self))
            .field("deadlines", &deadlines)
            .field("idempotency_keys", &keys)
            .field("events", &self.lifecycle.events)
            .finish()
    }
}
