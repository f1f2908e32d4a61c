//! An RAII hold, borrowing its store or owning an `Arc` of it: released when dropped
//! unresolved.

use std::fmt;
use std::sync::Arc;

use crate::error::StockError;
use crate::options::ReserveOptions;
use crate::reservation::{Reservation, ReservationId};
use crate::store::StockStore;

/// A hold that gives its stock back when dropped unless it was committed or released:
/// the compensation step runs even on an early `?` return or a panic.
///
/// Works with any store, also through `dyn StockStore<K>`.
///
/// # Examples
///
/// ```
/// use stockledger::{PessimisticStore, ReservationGuard, StockError, StockStore};
///
/// fn checkout(store: &PessimisticStore<&'static str>, pay: bool) -> Result<(), String> {
///     let hold = ReservationGuard::new(store, &[("SKU1002", 1)]).map_err(|e| e.to_string())?;
///     if !pay {
///         return Err("payment declined".into()); // the hold is released here
///     }
///     hold.commit().map_err(|e| e.to_string())?;
///     Ok(())
/// }
///
/// let store = PessimisticStore::new();
/// store.restock(&"SKU1002", 1)?;
/// assert!(checkout(&store, false).is_err());
/// assert_eq!(store.level(&"SKU1002").unwrap().available(), 1);
/// checkout(&store, true).unwrap();
/// assert_eq!(store.level(&"SKU1002").unwrap().on_hand, 0);
/// # Ok::<(), StockError<&str>>(())
/// ```
#[must_use = "dropping the guard releases the hold at once"]
pub struct ReservationGuard<'a, K, S: StockStore<K> + ?Sized> {
    store: &'a S,
    /// The hold.
    reservation: Reservation<K>,
    /// Whether dropping the guard releases the hold (false once `commit` or `release` ran).
    armed: bool,
}

impl<'a, K, S: StockStore<K> + ?Sized> ReservationGuard<'a, K, S> {
    /// Holds `lines` in `store` like [`StockStore::reserve`].
    ///
    /// # Errors
    ///
    /// The errors of [`StockStore::reserve`]: nothing is held then.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{PessimisticStore, ReservationGuard, StockStore};
    ///
    /// let store = PessimisticStore::new();
    /// store.restock(&"tv", 2)?;
    /// let hold = ReservationGuard::new(&store, &[("tv", 1)])?;
    /// assert_eq!(store.level(&"tv").unwrap().reserved, 1);
    /// drop(hold); // unresolved: released
    /// assert_eq!(store.level(&"tv").unwrap().reserved, 0);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn new(store: &'a S, lines: &[(K, u64)]) -> Result<Self, StockError<K>> {
        Self::with_options(store, lines, &ReserveOptions::new())
    }

    /// Holds `lines` in `store` like [`StockStore::reserve_with`] (a TTL, an idempotency
    /// key). Note that a guard made from a replayed idempotency key releases the key's
    /// hold when dropped, like any other.
    ///
    /// # Errors
    ///
    /// The errors of [`StockStore::reserve_with`]: nothing is held then.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use stockledger::{MonitorStore, ReservationGuard, ReserveOptions, StockStore};
    ///
    /// let store = MonitorStore::new();
    /// store.restock(&7_u32, 1)?;
    /// let options = ReserveOptions::new().ttl(Duration::from_secs(30));
    /// let hold = ReservationGuard::with_options(&store, &[(7, 1)], &options)?;
    /// assert!(hold.reservation().expires_at().is_some());
    /// drop(hold);
    /// assert_eq!(store.level(&7).unwrap().reserved, 0);
    /// # Ok::<(), stockledger::StockError<u32>>(())
    /// ```
    pub fn with_options(
        store: &'a S,
        lines: &[(K, u64)],
        options: &ReserveOptions,
    ) -> Result<Self, StockError<K>> {
        let reservation = store.reserve_with(lines, options)?;
        Ok(Self {
            store,
            reservation,
            armed: true,
        })
    }

    /// The id of the hold.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{PessimisticStore, ReservationGuard, StockStore};
    ///
    /// let store = PessimisticStore::new();
    /// store.restock(&"tv", 1)?;
    /// let hold = ReservationGuard::new(&store, &[("tv", 1)])?;
    /// assert_eq!(hold.id(), hold.reservation().id());
    /// assert_eq!(hold.reservation().lines(), &[("tv", 1)]);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn id(&self) -> ReservationId {
        self.reservation.id()
    }

    /// The hold.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{OptimisticStore, ReservationGuard, StockStore};
    ///
    /// let store = OptimisticStore::new();
    /// store.restock(&"tv", 1)?;
    /// let hold = ReservationGuard::new(&store, &[("tv", 1)])?;
    /// assert_eq!(hold.reservation().expires_at(), None);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn reservation(&self) -> &Reservation<K> {
        &self.reservation
    }

    /// Commits the hold (payment succeeded); the guard is spent.
    ///
    /// # Errors
    ///
    /// The errors of [`StockStore::commit`]: [`StockError::Expired`] when the hold ran
    /// past its deadline (its stock went back), [`StockError::UnknownReservation`] when it
    /// was resolved behind the guard's back (for example by `expire_due`).
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{MonitorStore, ReservationGuard, StockStore};
    ///
    /// let store = MonitorStore::new();
    /// store.restock(&"tv", 1)?;
    /// ReservationGuard::new(&store, &[("tv", 1)])?.commit()?; // payment succeeded
    /// assert_eq!(store.level(&"tv").unwrap().on_hand, 0);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn commit(mut self) -> Result<Reservation<K>, StockError<K>> {
        self.armed = false;
        self.store.commit(self.id())
    }

    /// Releases the hold now (payment failed); the guard is spent.
    ///
    /// # Errors
    ///
    /// The errors of [`StockStore::release`]: [`StockError::Expired`] or
    /// [`StockError::UnknownReservation`] as for [`commit`](Self::commit); the stock is
    /// back either way.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{MonitorStore, ReservationGuard, StockStore};
    ///
    /// let store = MonitorStore::new();
    /// store.restock(&"tv", 1)?;
    /// ReservationGuard::new(&store, &[("tv", 1)])?.release()?; // payment failed
    /// assert_eq!(store.level(&"tv").unwrap().available(), 1);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn release(mut self) -> Result<Reservation<K>, StockError<K>> {
        self.armed = false;
        self.store.release(self.id())
    }
}

impl<K, S: StockStore<K> + ?Sized> Drop for ReservationGuard<'_, K, S> {
    /// Releases the hold if it is still unresolved. An error (the hold expired or was
    /// resolved elsewhere) is ignored: its stock is back either way.
    fn drop(&mut self) {
        if self.armed {
            let _ = self.store.release(self.reservation.id());
        }
    }
}

impl<K: fmt::Debug, S: StockStore<K> + ?Sized> fmt::Debug for ReservationGuard<'_, K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReservationGuard")
            .field("reservation", &self.reservation)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

/// A [`ReservationGuard`] that owns a handle to its store (an `Arc`), so it is `'static`
/// and can move into a spawned thread or task, as tokio's `acquire_owned` permits do. It
/// gives its stock back when dropped unless it was committed or released.
///
/// Works with any store behind an `Arc`, also `Arc<dyn StockStore<K>>`.
///
/// # Examples
///
/// ```
/// use std::{sync::Arc, thread};
/// use stockledger::{OwnedReservationGuard, PessimisticStore, StockStore};
///
/// let store = Arc::new(PessimisticStore::new());
/// store.restock(&"SKU1002", 1)?;
/// let hold = OwnedReservationGuard::new(Arc::clone(&store), &[("SKU1002", 1)])?;
/// // The hold moves into the thread that handles the payment.
/// let paid = thread::spawn(move || hold.commit()).join().unwrap()?;
/// assert_eq!(paid.lines(), &[("SKU1002", 1)]);
/// assert_eq!(store.level(&"SKU1002").unwrap().on_hand, 0);
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
#[must_use = "dropping the guard releases the hold at once"]
pub struct OwnedReservationGuard<K, S: StockStore<K> + ?Sized> {
    store: Arc<S>,
    /// The hold.
    reservation: Reservation<K>,
    /// Whether dropping the guard releases the hold (false once `commit` or `release` ran).
    armed: bool,
}

impl<K, S: StockStore<K> + ?Sized> OwnedReservationGuard<K, S> {
    /// Holds `lines` in `store` like [`StockStore::reserve`].
    ///
    /// # Errors
    ///
    /// The errors of [`StockStore::reserve`]: nothing is held then.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use stockledger::{MonitorStore, OwnedReservationGuard, StockStore};
    ///
    /// let store: Arc<dyn StockStore<String>> = Arc::new(MonitorStore::new());
    /// store.restock(&"tv".to_string(), 2)?;
    /// let hold = OwnedReservationGuard::new(Arc::clone(&store), &[("tv".to_string(), 1)])?;
    /// assert_eq!(store.level(&"tv".to_string()).unwrap().reserved, 1);
    /// drop(hold); // unresolved: released
    /// assert_eq!(store.level(&"tv".to_string()).unwrap().reserved, 0);
    /// # Ok::<(), stockledger::StockError<String>>(())
    /// ```
    pub fn new(store: Arc<S>, lines: &[(K, u64)]) -> Result<Self, StockError<K>> {
        Self::with_options(store, lines, &ReserveOptions::new())
    }

    /// Holds `lines` in `store` like [`StockStore::reserve_with`] (a TTL, an idempotency
    /// key).
    ///
    /// # Errors
    ///
    /// The errors of [`StockStore::reserve_with`]: nothing is held then.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use stockledger::{OptimisticStore, OwnedReservationGuard, ReserveOptions, StockStore};
    ///
    /// let store = Arc::new(OptimisticStore::new());
    /// store.restock(&7_u32, 1)?;
    /// let options = ReserveOptions::new().ttl(Duration::from_secs(30));
    /// let hold = OwnedReservationGuard::with_options(store, &[(7, 1)], &options)?;
    /// assert!(hold.reservation().expires_at().is_some());
    /// # Ok::<(), stockledger::StockError<u32>>(())
    /// ```
    pub fn with_options(
        store: Arc<S>,
        lines: &[(K, u64)],
        options: &ReserveOptions,
    ) -> Result<Self, StockError<K>> {
        let reservation = store.reserve_with(lines, options)?;
        Ok(Self {
            store,
            reservation,
            armed: true,
        })
    }

    /// The id of the hold.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use stockledger::{OwnedReservationGuard, PessimisticStore, StockStore};
    ///
    /// let store = Arc::new(PessimisticStore::new());
    /// store.restock(&"tv", 1)?;
    /// let hold = OwnedReservationGuard::new(store, &[("tv", 1)])?;
    /// assert_eq!(hold.id(), hold.reservation().id());
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn id(&self) -> ReservationId {
        self.reservation.id()
    }

    /// The hold.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use stockledger::{AdaptiveStore, OwnedReservationGuard, StockStore};
    ///
    /// let store = Arc::new(AdaptiveStore::new());
    /// store.restock(&"tv", 1)?;
    /// let hold = OwnedReservationGuard::new(store, &[("tv", 1)])?;
    /// assert_eq!(hold.reservation().lines(), &[("tv", 1)]);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn reservation(&self) -> &Reservation<K> {
        &self.reservation
    }

    /// The store the hold is in.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use stockledger::{OwnedReservationGuard, PessimisticStore, StockStore};
    ///
    /// let store = Arc::new(PessimisticStore::new());
    /// store.restock(&"tv", 2)?;
    /// let hold = OwnedReservationGuard::new(store, &[("tv", 1)])?;
    /// assert_eq!(hold.store().level(&"tv").unwrap().available(), 1);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Commits the hold (payment succeeded); the guard is spent.
    ///
    /// # Errors
    ///
    /// The errors of [`StockStore::commit`]: [`StockError::Expired`] when the hold ran
    /// past its deadline (its stock went back), [`StockError::UnknownReservation`] when it
    /// was resolved behind the guard's back.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use stockledger::{MonitorStore, OwnedReservationGuard, StockStore};
    ///
    /// let store = Arc::new(MonitorStore::new());
    /// store.restock(&"tv", 1)?;
    /// OwnedReservationGuard::new(Arc::clone(&store), &[("tv", 1)])?.commit()?;
    /// assert_eq!(store.level(&"tv").unwrap().on_hand, 0);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn commit(mut self) -> Result<Reservation<K>, StockError<K>> {
        self.armed = false;
        self.store.commit(self.id())
    }

    /// Releases the hold now (payment failed); the guard is spent.
    ///
    /// # Errors
    ///
    /// The errors of [`StockStore::release`]: [`StockError::Expired`] or
    /// [`StockError::UnknownReservation`] as for [`commit`](Self::commit); the stock is
    /// back either way.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use stockledger::{MonitorStore, OwnedReservationGuard, StockStore};
    ///
    /// let store = Arc::new(MonitorStore::new());
    /// store.restock(&"tv", 1)?;
    /// OwnedReservationGuard::new(Arc::clone(&store), &[("tv", 1)])?.release()?;
    /// assert_eq!(store.level(&"tv").unwrap().available(), 1);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn release(mut self) -> Result<Reservation<K>, StockError<K>> {
        self.armed = false;
        self.store.release(self.id())
    }
}

impl<K, S: StockStore<K> + ?Sized> Drop for OwnedReservationGuard<K, S> {
    /// Releases the hold if it is still unresolved. An error (the hold expired or was
    /// resolved elsewhere) is ignored: its stock is back either way.
    fn drop(&mut self) {
        if self.armed {
            let _ = self.store.release(self.reservation.id());
        }
    }
}

impl<K: fmt::Debug, S: StockStore<K> + ?Sized> fmt::Debug for OwnedReservationGuard<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedReservationGuard")
            .field("reservation", &self.reservation)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}
