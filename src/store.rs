//! The `StockStore` trait every strategy implements, and `WaitingStore` for the monitor.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use crate::error::StockError;
use crate::level::StockLevel;
use crate::reservation::{Reservation, ReservationId};

/// What a SKU type must be: cloned into errors and holds, hashed for lookup, ordered for
/// deadlock-free acquisition, shared between threads.
///
/// Implemented for every type with these bounds (`String`, `&'static str`, integers, …).
pub trait Sku: Clone + Eq + Hash + Ord + Debug + Send + Sync + 'static {}

impl<K: Clone + Eq + Hash + Ord + Debug + Send + Sync + 'static> Sku for K {}

/// An in-memory stock ledger: restock, hold (reserve), commit or release, sell.
///
/// Three strategies implement it: [`PessimisticStore`](crate::PessimisticStore),
/// [`OptimisticStore`](crate::OptimisticStore) and [`MonitorStore`](crate::MonitorStore).
/// The trait is object safe, so a store can be picked at run time.
///
/// Rules every implementation obeys:
/// - **All or nothing**: a refused call changes nothing, on any line.
/// - **Lines are merged**: two lines of one SKU are one line of the summed quantity.
/// - **A hold resolves exactly once**: of racing `commit`/`release` calls on one id exactly
///   one wins; the others get [`StockError::UnknownReservation`].
/// - **Deadlock free**: multi-line requests take SKUs in ascending `Ord` order.
/// - **No blocking** beyond short internal critical sections.
///
/// # Examples
///
/// ```
/// use stockledger::{MonitorStore, OptimisticStore, PessimisticStore, StockStore};
///
/// let stores: Vec<Box<dyn StockStore<String>>> = vec![
///     Box::new(PessimisticStore::new()),
///     Box::new(OptimisticStore::new()),
///     Box::new(MonitorStore::new()),
/// ];
/// for store in &stores {
///     let sku = "SKU1004".to_string();
///     store.restock(&sku, 3)?;
///     let hold = store.reserve(&[(sku.clone(), 2)])?; // checkout
///     store.commit(hold.id())?;                        // payment succeeded
///     assert_eq!(store.level(&sku).unwrap().on_hand, 1);
/// }
/// # Ok::<(), stockledger::StockError<String>>(())
/// ```
pub trait StockStore<K>: Send + Sync {
    /// Adds `qty` units to `sku`'s on hand, creating the SKU when absent; returns the new
    /// level. Wakes waiters of a [`WaitingStore`].
    ///
    /// # Errors
    ///
    /// - [`StockError::InvalidQuantity`] when `qty` is 0.
    /// - [`StockError::Overflow`] when on hand would pass [`quantity_max`](Self::quantity_max).
    fn restock(&self, sku: &K, qty: u64) -> Result<StockLevel, StockError<K>>;

    /// The current counts of `sku`; `None` for a SKU never restocked.
    fn level(&self, sku: &K) -> Option<StockLevel>;

    /// Holds every line `(sku, units)`, all or nothing, and returns the hold.
    ///
    /// # Errors
    ///
    /// - [`StockError::EmptyRequest`] when `lines` is empty.
    /// - [`StockError::InvalidQuantity`] for a line with 0 units.
    /// - [`StockError::UnknownSku`] for a SKU never restocked.
    /// - [`StockError::InsufficientStock`] when a SKU has fewer units available than its
    ///   merged lines ask for.
    /// - [`StockError::Overflow`] when the lines of one SKU sum past `u64::MAX`, or a
    ///   version would pass its maximum.
    /// - [`StockError::Conflict`] (optimistic store only) after too many lost races.
    fn reserve(&self, lines: &[(K, u64)]) -> Result<Reservation<K>, StockError<K>>;

    /// Turns the hold `id` into a sale: `on_hand -= q` and `reserved -= q` on every line.
    /// Returns the resolved hold.
    ///
    /// # Errors
    ///
    /// [`StockError::UnknownReservation`] when `id` is not an open hold of this store
    /// (never issued, or already committed or released).
    fn commit(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>>;

    /// Gives the hold `id` back: `reserved -= q` on every line (the compensation step).
    /// Returns the resolved hold. Wakes waiters of a [`WaitingStore`].
    ///
    /// # Errors
    ///
    /// [`StockError::UnknownReservation`] when `id` is not an open hold of this store.
    fn release(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>>;

    /// Sells every line without a hold, all or nothing: `on_hand -= q`.
    ///
    /// # Errors
    ///
    /// The errors of [`reserve`](Self::reserve), for the same reasons.
    fn sell(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>>;

    /// The largest on hand (in units) this store can keep for one SKU: `u64::MAX`, or
    /// less when the store packs its counts (see
    /// [`OptimisticStore::QUANTITY_MAX`](crate::OptimisticStore::QUANTITY_MAX)).
    fn quantity_max(&self) -> u64 {
        u64::MAX
    }
}

/// A store whose callers can wait, in FIFO order, for stock to arrive.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use stockledger::{MonitorStore, StockError, StockStore, WaitingStore};
///
/// let store = MonitorStore::new();
/// store.restock(&"gpu", 1)?;
/// let first = store.reserve_timeout(&[("gpu", 1)], Duration::from_millis(10))?;
/// let second = store.reserve_timeout(&[("gpu", 1)], Duration::from_millis(10));
/// assert_eq!(second.unwrap_err(), StockError::Timeout);
/// store.release(first.id())?;
/// # Ok::<(), StockError<&str>>(())
/// ```
pub trait WaitingStore<K>: StockStore<K> {
    /// Holds every line like [`StockStore::reserve`], waiting up to `timeout` for stock.
    ///
    /// Waiters are served in arrival order per SKU, with no barging: while a waiter is
    /// queued on a SKU, non-waiting calls cannot take the units it is entitled to. SKUs
    /// are taken in ascending order, holding the earlier lines while waiting for later
    /// ones; on timeout every held line is given back.
    ///
    /// # Errors
    ///
    /// - [`StockError::Timeout`] when `timeout` passes first; nothing stays held.
    /// - [`StockError::EmptyRequest`], [`StockError::InvalidQuantity`],
    ///   [`StockError::UnknownSku`] and [`StockError::Overflow`] as for
    ///   [`StockStore::reserve`], before any waiting.
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread up to `timeout` (plus scheduling delay).
    fn reserve_timeout(
        &self,
        lines: &[(K, u64)],
        timeout: Duration,
    ) -> Result<Reservation<K>, StockError<K>>;
}
