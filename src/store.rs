//! The `StockStore` trait every strategy implements, and `WaitingStore` for the monitor.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::StockError;
use crate::level::StockLevel;
use crate::options::ReserveOptions;
use crate::reservation::{Reservation, ReservationId};
use crate::stats::StoreStats;

/// What a SKU type must be: cloned into errors and holds, hashed for lookup, ordered for
/// deadlock-free acquisition, shared between threads.
///
/// Implemented for every type with these bounds (`String`, `&'static str`, integers, …).
///
/// # Examples
///
/// ```
/// fn takes_a_sku<K: stockledger::Sku>(_sku: K) {}
/// takes_a_sku("SKU1004");
/// takes_a_sku(String::from("SKU1004"));
/// takes_a_sku(1004_u64);
/// ```
pub trait Sku: Clone + Eq + Hash + Ord + Debug + Send + Sync + 'static {}

impl<K: Clone + Eq + Hash + Ord + Debug + Send + Sync + 'static> Sku for K {}

/// A stock ledger: restock, hold (reserve), commit or release, sell.
///
/// Four in-memory stores implement it: [`PessimisticStore`](crate::PessimisticStore),
/// [`OptimisticStore`](crate::OptimisticStore), [`MonitorStore`](crate::MonitorStore) and
/// [`AdaptiveStore`](crate::AdaptiveStore); with the `redis` feature, `RedisStore` runs
/// the same contract on a shared Redis server. The trait is object safe, so a store can be
/// picked at run time. `Arc<S>` and `Box<S>` of a store (a trait object too) are stores,
/// forwarding every call: an `Arc<dyn WaitingStore<K>>` goes wherever a `StockStore` is
/// wanted, with no trait upcasting (Rust 1.86), and [`as_waiting`](Self::as_waiting) goes
/// the other way.
///
/// Rules every implementation obeys:
/// - **All or nothing**: a refused call changes nothing, on any line.
/// - **Lines are merged**: two lines of one SKU are one line of the summed quantity.
/// - **A hold resolves exactly once**: of racing `commit`/`release`/expiry calls on one id
///   exactly one wins; the others get [`StockError::UnknownReservation`], and only after
///   the winner's stock has moved (racing resolutions are linearizable).
/// - **Never expired early**: a hold with a TTL expires only once the store's
///   [`Clock`](crate::Clock) reaches its deadline; from then on it cannot be committed.
/// - **Deadlock free**: multi-line requests take SKUs in ascending `Ord` order.
/// - **No waiting for stock**: the in-memory stores block only for short internal critical
///   sections; only [`WaitingStore`]'s methods wait. `RedisStore`'s calls are network round
///   trips: they block the calling thread (in async code, call them from
///   `spawn_blocking`).
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
    /// Creation is linearizable: a SKU becomes visible already holding its first restock
    /// (`level` never shows it with nothing restocked, and a concurrent `reserve` or `sell`
    /// finds it either unknown or restocked). A restock is never refused for contention:
    /// the optimistic store retries it until it wins, as it does commits and releases.
    ///
    /// # Errors
    ///
    /// - [`StockError::InvalidQuantity`] when `qty` is 0.
    /// - [`StockError::Overflow`] when on hand would pass [`quantity_max`](Self::quantity_max),
    ///   or when `sku` is new and an in-memory store already holds 2³⁰ SKUs (its SKU map's
    ///   limit).
    fn restock(&self, sku: &K, qty: u64) -> Result<StockLevel, StockError<K>>;

    /// The current counts of `sku`; `None` for a SKU never restocked.
    fn level(&self, sku: &K) -> Option<StockLevel>;

    /// Holds every line `(sku, units)`, all or nothing, and returns the hold: no deadline,
    /// no idempotency key (`reserve_with(lines, &ReserveOptions::new())`).
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
    fn reserve(&self, lines: &[(K, u64)]) -> Result<Reservation<K>, StockError<K>> {
        self.reserve_with(lines, &ReserveOptions::new())
    }

    /// Holds every line `(sku, units)`, all or nothing, with `options`: a TTL after which
    /// the hold expires, and an idempotency key that deduplicates retries.
    ///
    /// With a key already seen, the same merged lines hold nothing more: while its hold is
    /// open they return that reservation (as it is now); once it has ended (committed,
    /// released or expired, within the store's retention) they are refused with
    /// [`StockError::HoldEnded`], which says what became of it, so a retry never gets a
    /// hold that holds nothing. Racing calls with one key hold once: the key is locked
    /// from its lookup until its hold is recorded (keys are locked before SKUs).
    ///
    /// # Errors
    ///
    /// - The errors of [`reserve`](Self::reserve), for the same reasons (a refused request
    ///   is not remembered: retrying it with its key may succeed).
    /// - [`StockError::IdempotencyConflict`] when the key was seen with other lines.
    /// - [`StockError::HoldEnded`] when the key's hold has ended (its `outcome` says how).
    /// - [`StockError::InvalidIdempotencyKey`] when the key is empty or longer than
    ///   [`IDEMPOTENCY_KEY_BYTES_MAX`](crate::IDEMPOTENCY_KEY_BYTES_MAX) bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use stockledger::{HoldOutcome, PessimisticStore, ReserveOptions, StockError, StockStore};
    ///
    /// let store = PessimisticStore::new();
    /// store.restock(&"SKU1005", 2)?;
    /// let options = ReserveOptions::new().ttl(Duration::from_secs(900)).idempotency_key("cart-7");
    /// let hold = store.reserve_with(&[("SKU1005", 1)], &options)?;
    /// // A retry while the hold is open gets it back, holding nothing more:
    /// assert_eq!(store.reserve_with(&[("SKU1005", 1)], &options)?.id(), hold.id());
    /// store.commit(hold.id())?;
    /// // A retry after the commit is told so:
    /// assert_eq!(
    ///     store.reserve_with(&[("SKU1005", 1)], &options),
    ///     Err(StockError::HoldEnded { key: "cart-7".into(), id: hold.id(), outcome: HoldOutcome::Committed })
    /// );
    /// assert!(matches!(
    ///     store.reserve_with(&[("SKU1005", 2)], &options),
    ///     Err(StockError::IdempotencyConflict { .. })
    /// ));
    /// assert_eq!(store.level(&"SKU1005").unwrap().on_hand, 1);
    /// # Ok::<(), StockError<&str>>(())
    /// ```
    fn reserve_with(
        &self,
        lines: &[(K, u64)],
        options: &ReserveOptions,
    ) -> Result<Reservation<K>, StockError<K>>;

    /// Turns the hold `id` into a sale: `on_hand -= q` and `reserved -= q` on every line.
    /// Returns the resolved hold.
    ///
    /// # Errors
    ///
    /// - [`StockError::UnknownReservation`] when `id` is not an open hold of this store
    ///   (never issued, or already committed, released or expired).
    /// - [`StockError::Expired`] when the hold is past its deadline: it expires now, its
    ///   stock goes back, even if no sweep ran yet.
    fn commit(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>>;

    /// Turns part of the hold `id` into a sale and gives the rest back, resolving it once,
    /// as [`commit`](Self::commit) does (TigerBeetle's post of less than the pending
    /// amount). `lines` are SKU, units to commit (merged like a request's: a SKU named
    /// twice commits the sum); each SKU must be one of the hold's, with at most the units
    /// it holds; a SKU of the hold left out is given back whole. Returns the hold as it
    /// was made.
    ///
    /// The stock moves in two steps while the hold is resolved: first `reserved -= rest`
    /// on the lines with units left over (a [`StockEvent::Released`](crate::StockEvent)
    /// of those, waking waiters of a [`WaitingStore`]), then `on_hand -= q` and
    /// `reserved -= q` on the committed lines (a `Committed` event of those); each SKU's
    /// version grows by one per step. A hold resolves once: racing `commit`,
    /// `commit_partial`, `release` and expiry of one hold, exactly one succeeds.
    ///
    /// # Errors
    ///
    /// Each refusal changes nothing and leaves the hold open, except `Expired`:
    ///
    /// - [`StockError::EmptyRequest`] when `lines` is empty (use
    ///   [`release`](Self::release) to give everything back).
    /// - [`StockError::InvalidQuantity`] for a line of 0 units; [`StockError::Overflow`]
    ///   when the lines of one SKU sum past `u64::MAX`.
    /// - [`StockError::NotInHold`] for a SKU the hold does not hold.
    /// - [`StockError::AboveHold`] for more units of a SKU than the hold holds.
    /// - [`StockError::UnknownReservation`] when `id` is not an open hold of this store.
    /// - [`StockError::Expired`] when the hold is past its deadline: its stock goes back
    ///   whole, as an expiry.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{PessimisticStore, StockStore};
    ///
    /// let store = PessimisticStore::new();
    /// store.restock(&"cable", 5)?;
    /// store.restock(&"plug", 5)?;
    /// let hold = store.reserve(&[("cable", 3), ("plug", 2)])?;
    /// // Two cables were in stock at the packing table, and no plug.
    /// store.commit_partial(hold.id(), &[("cable", 2)])?;
    /// let (cable, plug) = (store.level(&"cable").unwrap(), store.level(&"plug").unwrap());
    /// assert_eq!((cable.on_hand, cable.reserved, plug.on_hand, plug.reserved), (3, 0, 5, 0));
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    fn commit_partial(
        &self,
        id: ReservationId,
        lines: &[(K, u64)],
    ) -> Result<Reservation<K>, StockError<K>>;

    /// Gives the hold `id` back: `reserved -= q` on every line (the compensation step).
    /// Returns the resolved hold. Wakes waiters of a [`WaitingStore`].
    ///
    /// # Errors
    ///
    /// - [`StockError::UnknownReservation`] when `id` is not an open hold of this store.
    /// - [`StockError::Expired`] when the hold is past its deadline: its stock goes back
    ///   all the same, as an expiry.
    fn release(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>>;

    /// Gives the open hold `id` the deadline `now + ttl` (on the store's clock), whether
    /// it had one or not, and returns it. Shortening is allowed too.
    ///
    /// # Errors
    ///
    /// - [`StockError::UnknownReservation`] when `id` is not an open hold of this store.
    /// - [`StockError::Expired`] when the hold is already past its deadline: it expires
    ///   now and its stock goes back.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use stockledger::{ManualClock, MonitorStore, ReserveOptions, StockStore};
    ///
    /// let clock = Arc::new(ManualClock::new());
    /// let store = MonitorStore::builder().clock(clock.clone()).build();
    /// store.restock(&"tent", 1)?;
    /// let minute = Duration::from_secs(60);
    /// let hold = store.reserve_with(&[("tent", 1)], &ReserveOptions::new().ttl(minute))?;
    /// clock.advance(Duration::from_secs(50));
    /// store.extend(hold.id(), minute)?; // payment is slow: one more minute
    /// clock.advance(Duration::from_secs(50));
    /// assert!(store.expire_due().is_empty());
    /// store.commit(hold.id())?;
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    fn extend(&self, id: ReservationId, ttl: Duration) -> Result<Reservation<K>, StockError<K>>;

    /// Expires every hold whose deadline has passed, in deadline order, giving its stock
    /// back (and waking waiters of a [`WaitingStore`]); returns the expired holds.
    ///
    /// Costs O(d · log n) for d holds due among n with a deadline: only the due part of
    /// an ordered expiry index is visited, never every hold. A [`Reaper`](crate::Reaper)
    /// calls it periodically.
    ///
    /// # Panics
    ///
    /// Only when the event sink panics. The due holds are expired one at a time, each in
    /// one step (stock back, hold gone, under the hold's lock in the registry); the sink
    /// hears of the sweep's `Expired` events only after every hold of the sweep is
    /// expired, with no lock held. So a sink that panics, blocks, or resolves another hold
    /// of the same sweep (which then answers [`StockError::UnknownReservation`]) leaves
    /// no hold half done and keeps no other caller waiting; a panic stops the delivery of
    /// the rest of the sweep's events.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use stockledger::{ManualClock, PessimisticStore, ReserveOptions, StockStore};
    ///
    /// let clock = Arc::new(ManualClock::new());
    /// let store = PessimisticStore::builder().clock(clock.clone()).build();
    /// store.restock(&"bike", 2)?;
    /// let ttl = |seconds| ReserveOptions::new().ttl(Duration::from_secs(seconds));
    /// let late = store.reserve_with(&[("bike", 1)], &ttl(20))?;
    /// let early = store.reserve_with(&[("bike", 1)], &ttl(10))?;
    /// clock.advance(Duration::from_secs(9));
    /// assert!(store.expire_due().is_empty()); // never early
    /// clock.advance(Duration::from_secs(11));
    /// assert_eq!(store.expire_due(), vec![early, late]); // deadline order
    /// assert_eq!(store.level(&"bike").unwrap().available(), 2);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    fn expire_due(&self) -> Vec<Reservation<K>>;

    /// Sets `sku`'s low-stock threshold: a [`StockEvent::LowStock`](crate::StockEvent::LowStock)
    /// goes to the event sink each time a change takes `sku`'s available units from at
    /// least `threshold` to below it (once per crossing; climbing back and falling again
    /// is a new crossing). `0` removes the threshold. Setting it sends no event, even if
    /// available is already below. Without an event sink it has no effect.
    ///
    /// # Errors
    ///
    /// [`StockError::UnknownSku`] for a SKU never restocked.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{ChannelSink, OptimisticStore, StockEvent, StockStore};
    ///
    /// let (sink, events) = ChannelSink::unbounded();
    /// let store = OptimisticStore::builder().event_sink(sink).build();
    /// store.restock(&"SKU1004", 10)?;
    /// store.set_low_stock_threshold(&"SKU1004", 3)?;
    /// store.sell(&[("SKU1004", 8)])?;
    /// let low = events.try_iter().find(|event| matches!(event, StockEvent::LowStock { .. }));
    /// assert_eq!(
    ///     low,
    ///     Some(StockEvent::LowStock { sku: "SKU1004", available: 2, threshold: 3, version: 2 })
    /// );
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    fn set_low_stock_threshold(&self, sku: &K, threshold: u64) -> Result<(), StockError<K>>;

    /// What this store counted since it was built (see [`StoreStats`]).
    ///
    /// # Locking
    ///
    /// The in-memory stores sum per-thread stripes and the counts of holds that their
    /// registry keeps per shard, locking each shard of the registry in turn for a moment
    /// (as a `reserve` or a `commit` of a hold in that shard does); no SKU is locked. A
    /// `RedisStore` (feature `redis`) reads its counters on the server.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{MonitorStore, StockStore};
    ///
    /// let store = MonitorStore::new();
    /// store.restock(&"pen", 1)?;
    /// store.release(store.reserve(&[("pen", 1)])?.id())?;
    /// assert_eq!((store.stats().reserves, store.stats().releases), (1, 1));
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    fn stats(&self) -> StoreStats;

    /// Sells every line without a hold, all or nothing: `on_hand -= q`.
    ///
    /// # Errors
    ///
    /// The errors of [`reserve`](Self::reserve), for the same reasons.
    fn sell(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>>;

    /// [`level`](Self::level), telling an engine failure apart from an unknown SKU.
    ///
    /// The in-memory stores never fail: their answer is `Ok(self.level(sku))` (the default).
    /// A shared engine (`RedisStore`) answers
    /// [`StockError::Unavailable`] when it cannot be reached, where the infallible
    /// [`level`](Self::level) answers `None`.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] (shared engine only) when the engine fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{PessimisticStore, StockStore};
    ///
    /// let store = PessimisticStore::new();
    /// assert_eq!(store.try_level(&"lamp")?, None);
    /// store.restock(&"lamp", 2)?;
    /// assert_eq!(store.try_level(&"lamp")?.map(|level| level.on_hand), Some(2));
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    fn try_level(&self, sku: &K) -> Result<Option<StockLevel>, StockError<K>> {
        Ok(self.level(sku))
    }

    /// [`expire_due`](Self::expire_due), reporting an engine failure.
    ///
    /// The in-memory stores never fail (the default calls `expire_due`). A shared engine
    /// answers [`StockError::Unavailable`] when it cannot be reached, where the infallible
    /// [`expire_due`](Self::expire_due) expires nothing and returns an empty list; holds
    /// expired before the failure stay expired.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] (shared engine only) when the engine fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{MonitorStore, StockStore};
    ///
    /// let store = MonitorStore::<&str>::new();
    /// assert!(store.try_expire_due()?.is_empty());
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    fn try_expire_due(&self) -> Result<Vec<Reservation<K>>, StockError<K>> {
        Ok(self.expire_due())
    }

    /// [`stats`](Self::stats), reporting an engine failure.
    ///
    /// The in-memory stores never fail (the default calls `stats`). A shared engine answers
    /// [`StockError::Unavailable`] when it cannot be reached, where the infallible
    /// [`stats`](Self::stats) answers all zeros.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] (shared engine only) when the engine fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{OptimisticStore, StockStore};
    ///
    /// let store = OptimisticStore::new();
    /// store.restock(&"cable", 1)?;
    /// store.reserve(&[("cable", 1)])?;
    /// assert_eq!(store.try_stats()?.reserves, 1);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    fn try_stats(&self) -> Result<StoreStats, StockError<K>> {
        Ok(self.stats())
    }

    /// The open hold `id` as it is now (its lines and current deadline); `None` when `id`
    /// is not an open hold of this store: never issued here, already committed, released
    /// or expired, or past its deadline (a commit would answer [`StockError::Expired`]).
    ///
    /// The in-memory stores look it up in their registry, `RedisStore` on its server (a
    /// server it cannot reach answers `None` too; its `try_reservation` tells the two
    /// apart). The default answers `None`: a store that keeps its holds elsewhere
    /// overrides it.
    ///
    /// # Locking behaviour
    ///
    /// Locks the shard of the registry that keeps `id` for a moment (as a `commit` of a
    /// hold in that shard does); reads the clock, with no lock held, for a hold with a
    /// deadline.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{MonitorStore, StockStore};
    ///
    /// let store = MonitorStore::new();
    /// store.restock(&"lamp", 2)?;
    /// let hold = store.reserve(&[("lamp", 2)])?;
    /// assert_eq!(store.reservation(hold.id()), Some(hold.clone()));
    /// store.commit(hold.id())?;
    /// assert_eq!(store.reservation(hold.id()), None);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    fn reservation(&self, id: ReservationId) -> Option<Reservation<K>> {
        let _ = id;
        None
    }

    /// This store as a [`WaitingStore`], when it is one: one `Arc<dyn StockStore<K>>`
    /// handle then serves both plain calls and waits, whatever store was picked at run
    /// time. The default answers `None`; [`MonitorStore`](crate::MonitorStore) and
    /// `RedisStore` answer `Some`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use stockledger::{MonitorStore, PessimisticStore, StockStore};
    ///
    /// let stores: [Arc<dyn StockStore<String>>; 2] =
    ///     [Arc::new(PessimisticStore::new()), Arc::new(MonitorStore::new())];
    /// for store in &stores {
    ///     let sku = "SKU1004".to_string();
    ///     store.restock(&sku, 1)?;
    ///     let hold = match store.as_waiting() {
    ///         Some(waiting) => waiting.reserve_timeout(&[(sku, 1)], Duration::from_secs(1))?,
    ///         None => store.reserve(&[(sku, 1)])?,
    ///     };
    ///     store.commit(hold.id())?;
    /// }
    /// assert!(stores[0].as_waiting().is_none() && stores[1].as_waiting().is_some());
    /// # Ok::<(), stockledger::StockError<String>>(())
    /// ```
    fn as_waiting(&self) -> Option<&dyn WaitingStore<K>> {
        None
    }

    /// The largest on hand (in units) this store can keep for one SKU: `u64::MAX`, or
    /// less when the store packs its counts (see
    /// [`OptimisticStore::QUANTITY_MAX`](crate::OptimisticStore::QUANTITY_MAX)).
    fn quantity_max(&self) -> u64 {
        u64::MAX
    }
}

/// A shared or boxed store is a store: `Arc<S>` and `Box<S>` forward every call to `S`,
/// also when `S` is a trait object. So an `Arc<dyn WaitingStore<K>>` (one handle for a
/// store that waits) goes wherever a [`StockStore`] is wanted, on every supported Rust
/// (trait upcasting, `Arc<dyn WaitingStore<K>>` to `Arc<dyn StockStore<K>>`, needs Rust
/// 1.86; the crate supports 1.85).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use stockledger::{MonitorStore, StockStore, WaitingStore};
///
/// fn on_hand(store: &dyn StockStore<String>, sku: &str) -> u64 {
///     store.level(&sku.to_string()).map_or(0, |level| level.on_hand)
/// }
///
/// let store: Arc<dyn WaitingStore<String>> = Arc::new(MonitorStore::new());
/// store.restock(&"SKU1004".to_string(), 2)?;
/// assert_eq!(on_hand(&store, "SKU1004"), 2); // the handle itself is a StockStore
/// let plain: Arc<dyn StockStore<String>> = Arc::new(Arc::clone(&store));
/// assert!(plain.as_waiting().is_some());
/// # Ok::<(), stockledger::StockError<String>>(())
/// ```
macro_rules! forward_stock_store {
    ($($pointer:ident),*) => {$(
        impl<K, S: StockStore<K> + ?Sized> StockStore<K> for $pointer<S> {
            fn restock(&self, sku: &K, qty: u64) -> Result<StockLevel, StockError<K>> {
                (**self).restock(sku, qty)
            }

            fn level(&self, sku: &K) -> Option<StockLevel> {
                (**self).level(sku)
            }

            fn reserve(&self, lines: &[(K, u64)]) -> Result<Reservation<K>, StockError<K>> {
                (**self).reserve(lines)
            }

            fn reserve_with(
                &self,
                lines: &[(K, u64)],
                options: &ReserveOptions,
            ) -> Result<Reservation<K>, StockError<K>> {
                (**self).reserve_with(lines, options)
            }

            fn commit(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>> {
                (**self).commit(id)
            }

            fn release(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>> {
                (**self).release(id)
            }

            fn commit_partial(
                &self,
                id: ReservationId,
                lines: &[(K, u64)],
            ) -> Result<Reservation<K>, StockError<K>> {
                (**self).commit_partial(id, lines)
            }

            fn extend(
                &self,
                id: ReservationId,
                ttl: Duration,
            ) -> Result<Reservation<K>, StockError<K>> {
                (**self).extend(id, ttl)
            }

            fn expire_due(&self) -> Vec<Reservation<K>> {
                (**self).expire_due()
            }

            fn set_low_stock_threshold(
                &self,
                sku: &K,
                threshold: u64,
            ) -> Result<(), StockError<K>> {
                (**self).set_low_stock_threshold(sku, threshold)
            }

            fn stats(&self) -> StoreStats {
                (**self).stats()
            }

            fn sell(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
                (**self).sell(lines)
            }

            fn try_level(&self, sku: &K) -> Result<Option<StockLevel>, StockError<K>> {
                (**self).try_level(sku)
            }

            fn try_expire_due(&self) -> Result<Vec<Reservation<K>>, StockError<K>> {
                (**self).try_expire_due()
            }

            fn try_stats(&self) -> Result<StoreStats, StockError<K>> {
                (**self).try_stats()
            }

            fn reservation(&self, id: ReservationId) -> Option<Reservation<K>> {
                (**self).reservation(id)
            }

            fn quantity_max(&self) -> u64 {
                (**self).quantity_max()
            }

            fn as_waiting(&self) -> Option<&dyn WaitingStore<K>> {
                (**self).as_waiting()
            }
        }
    )*};
}

forward_stock_store!(Arc, Box);

/// The future of [`WaitingStore::reserve_wait`] through the trait: boxed, so that the trait
/// stays object safe (`Box<dyn WaitingStore<K>>` works). A store may also offer its own
/// named future ([`MonitorStore::reserve_wait`](crate::MonitorStore::reserve_wait) returns a
/// [`ReserveWait`](crate::ReserveWait)).
pub type WaitFuture<'a, K> =
    Pin<Box<dyn Future<Output = Result<Reservation<K>, StockError<K>>> + Send + 'a>>;

/// A store whose callers can wait, in FIFO order, for stock to arrive: blocking a thread
/// ([`reserve_timeout`](Self::reserve_timeout)) or as a future
/// ([`reserve_wait`](Self::reserve_wait)), both in one queue per SKU.
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
    /// Holds every line like [`StockStore::reserve`], waiting up to `timeout` for stock:
    /// [`reserve_timeout_with`](Self::reserve_timeout_with) with `ReserveOptions::new()`
    /// (no TTL, no idempotency key).
    ///
    /// # Errors
    ///
    /// The errors of [`reserve_timeout_with`](Self::reserve_timeout_with) but the
    /// idempotency ones: [`StockError::Timeout`], [`StockError::EmptyRequest`],
    /// [`StockError::InvalidQuantity`], [`StockError::UnknownSku`], [`StockError::Overflow`].
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread up to `timeout` (plus scheduling delay).
    fn reserve_timeout(
        &self,
        lines: &[(K, u64)],
        timeout: Duration,
    ) -> Result<Reservation<K>, StockError<K>> {
        self.reserve_timeout_with(lines, timeout, &ReserveOptions::new())
    }

    /// Holds every line like [`StockStore::reserve_with`] (TTL and idempotency key from
    /// `options`), waiting up to `timeout` for stock.
    ///
    /// Waiters are served in arrival order per SKU, with no barging: while a waiter is
    /// queued on a SKU, non-waiting calls cannot take the units it is entitled to. SKUs
    /// are taken in ascending order, holding the earlier lines while waiting for later
    /// ones; on timeout every held line is given back. The TTL runs from when the hold is
    /// opened (after the wait). With an idempotency key, a key already seen answers at
    /// once, without waiting.
    ///
    /// # Errors
    ///
    /// - [`StockError::Timeout`] when `timeout` passes first; nothing stays held.
    /// - [`StockError::EmptyRequest`], [`StockError::InvalidQuantity`],
    ///   [`StockError::UnknownSku`], [`StockError::InvalidIdempotencyKey`],
    ///   [`StockError::IdempotencyConflict`] and [`StockError::HoldEnded`] as for
    ///   [`StockStore::reserve_with`], before any waiting.
    /// - [`StockError::WaitTooLarge`] when a line would have to wait for more than the
    ///   store lets waiters wait for (a [`MonitorStore`](crate::MonitorStore)'s wait room),
    ///   before it queues.
    /// - [`StockError::Overflow`] as for [`StockStore::reserve`], when the SKU is reached.
    ///
    /// On `Timeout`, `WaitTooLarge` or `Overflow`, lines already held are given back: counts are as before,
    /// and each such SKU's version has grown by 2 (its hold and its release).
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread up to `timeout` (plus scheduling delay).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use stockledger::{MonitorStore, ReserveOptions, StockStore, WaitingStore};
    ///
    /// let store = MonitorStore::new();
    /// store.restock(&"gpu", 1)?;
    /// let options = ReserveOptions::new().ttl(Duration::from_secs(900)).idempotency_key("order-1");
    /// let hold = store.reserve_timeout_with(&[("gpu", 1)], Duration::from_secs(1), &options)?;
    /// let retry = store.reserve_timeout_with(&[("gpu", 1)], Duration::from_secs(1), &options)?;
    /// assert_eq!(retry.id(), hold.id()); // held once
    /// assert!(hold.expires_at().is_some());
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    fn reserve_timeout_with(
        &self,
        lines: &[(K, u64)],
        timeout: Duration,
        options: &ReserveOptions,
    ) -> Result<Reservation<K>, StockError<K>>;

    /// Holds every line like [`StockStore::reserve_with`], waiting asynchronously, in the
    /// same FIFO queue as [`reserve_timeout`](Self::reserve_timeout), for stock.
    ///
    /// Runtime agnostic (any executor), and **cancel safe**: dropping the future at any
    /// point leaves the queue, passes the turn on and gives back every line it held. So
    /// the timeout is the runtime's: `tokio::time::timeout(d, store.reserve_wait(..))`.
    /// See [`MonitorStore::reserve_wait`](crate::MonitorStore::reserve_wait).
    ///
    /// # Errors
    ///
    /// The errors of [`reserve_timeout_with`](Self::reserve_timeout_with) but
    /// [`StockError::Timeout`] (the future waits until it is dropped).
    ///
    /// # Locking behaviour
    ///
    /// Never blocks the executor: a poll locks one SKU at a time for a few instructions.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{MonitorStore, ReserveOptions, StockStore, WaitingStore};
    ///
    /// let store: Box<dyn WaitingStore<&str>> = Box::new(MonitorStore::new());
    /// store.restock(&"gpu", 2)?;
    /// let hold = futures_executor::block_on(store.reserve_wait(&[("gpu", 2)], &ReserveOptions::new()))?;
    /// assert_eq!(store.level(&"gpu").unwrap().reserved, 2);
    /// store.release(hold.id())?;
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    fn reserve_wait<'a>(
        &'a self,
        lines: &[(K, u64)],
        options: &ReserveOptions,
    ) -> WaitFuture<'a, K>;
}
