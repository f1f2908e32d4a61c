//! Pessimistic concurrency control: one mutex per SKU.

use std::fmt;

use crate::error::StockError;
use crate::level::{Change, Limits, StockLevel};
use crate::lines::{self, LevelCell};
use crate::reservation::{Registry, Reservation, ReservationId};
use crate::store::{Sku, StockStore};
use crate::sync::{Arc, Mutex, ShardedMap};

/// A stock store with **pessimistic concurrency control**: every SKU has its own mutex
/// (parking_lot), found in a sharded concurrent map (dashmap).
///
/// The lock is the SKU's own slot in the map, never a temporary value: the slot handle is
/// cloned out of the map and the map guard dropped before the slot is locked (holding a
/// dashmap guard while locking can deadlock: dashmap issues 74 and 233). A multi-line
/// request locks its SKUs in ascending order (Havender's ordered acquisition, 1968), checks
/// every line, then writes every line, so it is all or nothing and deadlock free.
///
/// Pick it as the every-day default: it never retries and never refuses for contention,
/// and its critical sections are a few instructions long.
///
/// # Locking behaviour
///
/// Every method locks the slots of the SKUs it touches, in ascending SKU order, for a
/// few instructions; no lock is held while another is awaited out of order, and no user
/// code runs under a lock.
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
    /// SKU -> its slot; each slot's mutex guards that SKU's counts.
    slots: ShardedMap<K, Arc<Mutex<StockLevel>>>,
    /// Open holds.
    holds: Registry<K>,
}

impl LevelCell for StockLevel {
    fn level(&self) -> StockLevel {
        *self
    }

    fn withheld(&self) -> u64 {
        0
    }

    fn set_level(&mut self, level: StockLevel) {
        *self = level;
    }
}

impl<K: Sku> PessimisticStore<K> {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            slots: ShardedMap::new(),
            holds: Registry::new(),
        }
    }

    /// The slots of merged `lines`, in the same order.
    fn slots_of(&self, lines: &[(K, u64)]) -> Result<Vec<Arc<Mutex<StockLevel>>>, StockError<K>> {
        lines
            .iter()
            .map(|(sku, _)| {
                self.slots
                    .get_cloned(sku)
                    .ok_or_else(|| StockError::UnknownSku(sku.clone()))
            })
            .collect()
    }

    /// Applies `change` to merged `lines`, all or nothing, locking in ascending SKU order.
    fn apply(&self, lines: &[(K, u64)], change: Change) -> Result<(), StockError<K>> {
        let slots = self.slots_of(lines)?;
        let mut guards: Vec<_> = slots.iter().map(|slot| slot.lock()).collect();
        lines::apply_all(&mut guards, lines, change, Limits::U64)
    }

    /// Resolves the hold `id` with `change` (commit or release).
    fn resolve(&self, id: ReservationId, change: Change) -> Result<Reservation<K>, StockError<K>> {
        let reservation = self.holds.resolve(id)?;
        self.apply(reservation.lines(), change)
            .expect("an open hold can always be resolved");
        Ok(reservation)
    }
}

impl<K: Sku> StockStore<K> for PessimisticStore<K> {
    fn restock(&self, sku: &K, qty: u64) -> Result<StockLevel, StockError<K>> {
        if qty == 0 {
            return Err(StockError::InvalidQuantity { sku: sku.clone() });
        }
        let slot = self
            .slots
            .get_or_insert_with(sku, || Arc::new(Mutex::new(StockLevel::default())));
        let mut level = slot.lock();
        *level = level
            .apply(Change::Restock, qty, 0, Limits::U64)
            .map_err(|refusal| refusal.into_error(sku.clone(), qty))?;
        Ok(*level)
    }

    fn level(&self, sku: &K) -> Option<StockLevel> {
        self.slots.get_cloned(sku).map(|slot| *slot.lock())
    }

    fn reserve(&self, lines: &[(K, u64)]) -> Result<Reservation<K>, StockError<K>> {
        let lines = lines::merge(lines)?;
        self.apply(&lines, Change::Reserve)?;
        Ok(self.holds.open(lines))
    }

    fn commit(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>> {
        self.resolve(id, Change::Commit)
    }

    fn release(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>> {
        self.resolve(id, Change::Release)
    }

    fn sell(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
        let lines = lines::merge(lines)?;
        self.apply(&lines, Change::Sell)
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
        f.debug_struct("PessimisticStore")
            .field("skus", &self.slots.len())
            .field("open_holds", &self.holds.len())
            .finish()
    }
}
