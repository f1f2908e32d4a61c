//! A monitor per SKU (mutex + condition variable) with a FIFO queue of waiters.

mod waiting;

use std::fmt;

use crate::error::StockError;
use crate::level::{Change, Limits, Moved, Refusal, StockLevel};
use crate::lifecycle::builder::StoreBuilder;
use crate::lifecycle::slot_holds::{self, HoldWord, HoldsCell, SlotHeld};
use crate::lifecycle::{self, Backend, Lifecycle};
use crate::lines::{self, LevelCell, LockedSkus, Moves};
use crate::stats::Stats;
use crate::store::{Sku, StockStore};
use crate::sync::{Fill, GrowOnlyMap, Mutex, MutexGuard, Position};
use crate::wait::{QueueLevel, WaitQueue};

pub use waiting::ReserveWait;

/// A stock store built from **monitors**: each SKU has a mutex, a condition variable and a
/// FIFO queue of waiting reservations (wait/notify).
///
/// [`reserve_timeout`](crate::WaitingStore::reserve_timeout) (blocking) and
/// [`reserve_wait`](MonitorStore::reserve_wait) (a future) wait their turn in one FIFO
/// queue per SKU; stock freed by a restock, a release or an expiry goes to the waiters in
/// arrival order.
///
/// **The rule, up front.** This store is fair, as tokio's `Semaphore` is: stock goes out
/// in the order it was asked for, with no barging. So while a waiter is queued on a SKU,
/// that SKU offers **0 units** to non-waiting `reserve` and `sell` calls, even when it has
/// units available: the head of the queue is entitled to everything up to its need, and
/// nobody behind it goes first. A waiter for 5 units of a SKU with 3 available keeps those
/// 3 from a `sell` of 1 until it is served or leaves. That way a large request is never
/// starved by a stream of small ones (the FIFO handoff of tokio's batch semaphore), and
/// two limits keep the price bounded:
///
/// - **A bound on what a waiter waits for.** A waiter may wait for at most its SKU's on
///   hand plus [`wait_units_max`](crate::StoreBuilder::wait_units_max) units (default
///   [`WAIT_UNITS_MAX`](Self::WAIT_UNITS_MAX)): no request waits for a restock larger
///   than that. A waiting request that does not fit is refused at once with
///   [`StockError::WaitTooLarge`], before it queues, so a request for far more than will
///   arrive never takes a SKU off sale for its whole timeout.
/// - **An honest read.** [`queue_level`](Self::queue_level) tells, under one lock, what a
///   non-waiting caller can take now (`available_now`, 0 while anyone waits), how many
///   units the waiters are queued for, and the most a new waiter may wait for; a refusal
///   never contradicts it. [`level`](crate::StockStore::level) gives the counts
///   alone: its `available()` includes units kept for the queue.
///
/// Waiters leave the queue when served, on their timeout, or when their future is dropped.
///
/// A multi-line waiting request takes its SKUs in ascending order, holding the earlier lines
/// while it waits for the later ones (ordered acquisition keeps this deadlock free); when it
/// times out, every held line is given back and the waiters behind it are served. A
/// concurrent reader may see such a partial hold while the request waits.
///
/// Non-waiting methods behave as in [`PessimisticStore`](crate::PessimisticStore).
///
/// # Locking behaviour
///
/// Every method locks the monitors of the SKUs it touches in ascending SKU order, for a
/// few instructions. Only `reserve_timeout` waits, and it waits on one SKU's condition
/// variable at a time with that SKU's mutex released; a `reserve_wait` future waits with
/// no lock held, its waker kept in its queue entry and woken after the granting change
/// released the lock. No user code runs under a lock
/// (events reach the sink after every lock is released). A `reserve_with` with an
/// idempotency key locks the key first (keys before SKUs). Finding a SKU takes no lock; a
/// restock that creates one takes the SKU map's writer lock for the insert.
///
/// # Examples
///
/// ```
/// use std::{sync::Arc, thread, time::Duration};
/// use stockledger::{MonitorStore, StockStore, WaitingStore};
///
/// let store = Arc::new(MonitorStore::new());
/// store.restock(&"console", 1)?;
/// store.sell(&[("console", 1)])?; // sold out
///
/// let buyer = {
///     let store = Arc::clone(&store);
///     thread::spawn(move || store.reserve_timeout(&[("console", 1)], Duration::from_secs(10)))
/// };
/// store.restock(&"console", 1)?; // the waiter gets it, in FIFO order
/// let hold = buyer.join().unwrap()?;
/// store.commit(hold.id())?;
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
pub struct MonitorStore<K> {
    /// SKU -> its monitor (found without a lock, locked in place: see `PessimisticStore`).
    slots: GrowOnlyMap<K, Monitor>,
    /// Units beyond a SKU's on hand one waiter may wait for.
    wait_units_max: u64,
    /// Open holds (but those kept in their SKU's slot), events, counters.
    lifecycle: Lifecycle<K, MonitorHandle>,
}

/// What a one-line hold keeps to settle without a lookup: its SKU's position in the map.
type MonitorHandle = Option<Position>;

/// One SKU's monitor: its mutex and the state it guards.
///
/// [`MonitorState`]'s non-waiting fields come first, so that a `sell` or `reserve` (the
/// mutex, the level, the threshold, the wait queue's pointer) reads the first cache line
/// of the monitor. The wait queues and the condition variable blocked waiters sleep on
/// are allocated only while somebody waits on the SKU ([`WaitQueue`]), so a monitor takes
/// 48 bytes, not 144.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Monitor {
    /// The SKU's counts and wait queue.
    state: Mutex<MonitorState>,
}

impl Default for Monitor {
    fn default() -> Self {
        Self::new(StockLevel::default())
    }
}

impl Fill for Monitor {
    fn fill(&self, from: Self) {
        self.state.fill(from.state);
    }
}

/// The state of one SKU, guarded by [`Monitor::state`].
///
/// Fields in the order of [`Monitor`]'s layout note: what every change reads first.
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct MonitorState {
    /// The SKU's counts; granted waiters' units are already in `reserved`.
    level: StockLevel,
    /// The one-line hold that lives in the slot, if any ([`slot_holds`]).
    hold: HoldWord,
    /// Waiters (threads and tasks) in arrival order, their grants not picked up yet, and
    /// the low-stock threshold.
    waiters: WaitQueue,
}

impl HoldsCell for MonitorState {
    #[inline(always)]
    fn hold_word(&mut self) -> &mut HoldWord {
        &mut self.hold
    }
}

impl LevelCell for MonitorState {
    fn level(&self) -> StockLevel {
        self.level
    }

    /// Everything, while a waiter is queued (no barging).
    fn withheld(&self) -> u64 {
        if self.waiters.is_empty() {
            0
        } else {
            u64::MAX
        }
    }

    fn set_level(&mut self, level: StockLevel) {
        self.level = level;
    }

    fn low_stock_threshold(&self) -> u64 {
        self.waiters.low_stock_threshold()
    }
}

impl MonitorState {
    /// Grants queued waiters from the front while stock covers them (tasks' wakers go to
    /// the wake list); returns whether any was granted (the caller then notifies, with
    /// [`Monitor::notify`]). Each grant is a visible change of its own, so each is judged
    /// for a low-stock crossing on its own (from the level before it), and the granted
    /// waiter reports the crossing with its hold.
    fn grant_waiters(&mut self) -> bool {
        let mut granted = false;
        while let Some(quantity) = self.waiters.head_quantity() {
            let before = self.level;
            match before.apply(Change::Reserve, quantity, 0, Limits::U64) {
                Ok(level) => {
                    self.level = level;
                    let moved = Moved::new(before, level, self.waiters.low_stock_threshold());
                    self.waiters.grant_head(moved);
                    granted = true;
                }
                Err(_) => break,
            }
        }
        granted
    }

    /// Applies the held-stock `change` (commit, release, restock) of `quantity` units, and
    /// grants waiters; returns what the change moved and whether waiters must be woken.
    /// The change and each grant are judged for a low-stock crossing on their own: a
    /// restock handed straight to a waiter is a rise, then a fall, as the events show.
    fn change_and_grant(
        &mut self,
        change: Change,
        quantity: u64,
    ) -> Result<(Moved, bool), Refusal> {
        let before = self.level;
        self.level = before.apply(change, quantity, 0, Limits::U64)?;
        let moved = Moved::new(before, self.level, self.waiters.low_stock_threshold());
        let granted = self.grant_waiters();
        Ok((moved, granted))
    }
}

impl Monitor {
    /// A monitor whose SKU starts at `level` (its first restock), with no waiter.
    fn new(level: StockLevel) -> Self {
        Self {
            state: Mutex::new(MonitorState {
                level,
                ..MonitorState::default()
            }),
        }
    }

    /// Changes held stock (`Release` or `Commit`) of `quantity` units, then hands off.
    fn resolve(
        &self,
        mut state: MutexGuard<'_, MonitorState>,
        quantity: u64,
        change: Change,
    ) -> Moved {
        let (moved, granted) = state
            .change_and_grant(change, quantity)
            .expect("an open hold can always be resolved");
        self.notify(state, granted);
        moved
    }

    /// Releases `state`'s lock, then wakes the waiters granted under it: blocked threads
    /// (if `granted`) and the tasks on the wake list, after the lock is released (tokio's
    /// `WakeList`), so that no woken waiter runs into the lock.
    fn notify(&self, mut state: MutexGuard<'_, MonitorState>, granted: bool) {
        let wakers = state.waiters.take_wakers();
        // Only a grant wakes sleepers, so only a grant clones the queues' signal.
        let signal = if granted {
            state.waiters.signal()
        } else {
            None
        };
        drop(state);
        if let Some(signal) = signal {
            signal.notify_all();
        }
        wakers.into_iter().for_each(std::task::Waker::wake);
    }
}

impl<K: Sku> MonitorStore<K> {
    /// How many units beyond a SKU's on hand one waiter may wait for, by default: 100,
    /// ten times the largest order line of TPC-C's New-Order (1 to 10 units
    /// a line). Set per store with
    /// [`StoreBuilder::wait_units_max`](crate::StoreBuilder::wait_units_max).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use stockledger::{MonitorStore, StockError, StockStore, WaitingStore};
    ///
    /// assert_eq!(MonitorStore::<&str>::WAIT_UNITS_MAX, 100);
    /// let store = MonitorStore::new();
    /// store.restock(&"tv", 3)?;
    /// // 1,000 units could only come from a restock far larger than the bound: refused at
    /// // once, instead of keeping the 3 units from every other buyer while it waits.
    /// assert_eq!(
    ///     store.reserve_timeout(&[("tv", 1_000)], Duration::from_secs(60)),
    ///     Err(StockError::WaitTooLarge { sku: "tv", requested: 1_000, limit: 103 })
    /// );
    /// store.sell(&[("tv", 1)])?; // still on sale
    /// # Ok::<(), StockError<&str>>(())
    /// ```
    pub const WAIT_UNITS_MAX: u64 = crate::wait::WAIT_UNITS_MAX;

    /// An empty store with the default settings: `MonitorStore::builder().build()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{MonitorStore, StockStore};
    ///
    /// let store = MonitorStore::<String>::new();
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
    /// use stockledger::{ChannelSink, MonitorStore, StockStore};
    ///
    /// let (sink, _events) = ChannelSink::unbounded();
    /// let store = MonitorStore::<String>::builder().event_sink(sink).build();
    /// assert_eq!(store.stats().waits, 0);
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
    /// use stockledger::{MonitorStore, StockStore};
    ///
    /// let store = MonitorStore::<String>::new();
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
        lines::read_one(self, sku, |state| state.level)
    }

    /// Number of waiters (`reserve_timeout` and `reserve_wait` lines) queued on `sku` right
    /// now (0 for an unknown SKU). `sku` may be any borrowed form of the SKU type (a `&str`
    /// for a `String`-keyed store).
    ///
    /// # Locking behaviour
    ///
    /// Locks `sku`'s monitor for a moment.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{MonitorStore, StockStore};
    ///
    /// let store = MonitorStore::new();
    /// store.restock(&"tv", 1)?;
    /// assert_eq!(store.queued(&"tv"), 0);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn queued<Q: std::hash::Hash + Eq + ?Sized>(&self, sku: &Q) -> usize
    where
        K: std::borrow::Borrow<Q>,
    {
        self.slots
            .get(sku)
            .map_or(0, |monitor| monitor.state.lock().waiters.len())
    }

    /// `sku` as a caller sees it, read under one lock: its counts, what a non-waiting
    /// `reserve` or `sell` can take now, what its waiters are queued for and the most a new
    /// waiter may wait for (see [`QueueLevel`]); `None` for a SKU never restocked. `sku` may
    /// be any borrowed form of the SKU type.
    ///
    /// # Locking behaviour
    ///
    /// Locks `sku`'s monitor for a moment.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{sync::Arc, thread, time::Duration};
    /// use stockledger::{MonitorStore, StockError, StockStore, WaitingStore};
    ///
    /// let store = Arc::new(MonitorStore::new());
    /// store.restock(&"tv", 3)?;
    /// let waiter = {
    ///     let store = Arc::clone(&store);
    ///     thread::spawn(move || store.reserve_timeout(&[("tv", 5)], Duration::from_secs(60)))
    /// };
    /// while store.queued(&"tv") == 0 {
    ///     thread::yield_now();
    /// }
    /// let queue = store.queue_level(&"tv").unwrap();
    /// assert_eq!((queue.level.available(), queue.available_now, queue.queued_units), (3, 0, 5));
    /// // The refusal agrees with the read: the 3 units are kept for the waiter.
    /// assert_eq!(
    ///     store.sell(&[("tv", 1)]),
    ///     Err(StockError::InsufficientStock { sku: "tv", requested: 1, available: queue.available_now })
    /// );
    /// store.restock(&"tv", 2)?; // the waiter is served
    /// waiter.join().unwrap()?;
    /// # Ok::<(), StockError<&str>>(())
    /// ```
    pub fn queue_level<Q: std::hash::Hash + Eq + ?Sized>(&self, sku: &Q) -> Option<QueueLevel>
    where
        K: std::borrow::Borrow<Q>,
    {
        let monitor = self.slots.get(sku)?;
        let state = monitor.state.lock();
        Some(QueueLevel::of(
            state.level,
            &state.waiters,
            self.wait_units_max,
        ))
    }
}

impl<K: Sku> MonitorStore<K> {
    /// Commits or releases `quantity` held units on `monitor`'s SKU, with no report of the
    /// move; grants and wakes its waiters, if any. Always inline: with its two callers in
    /// `settle_quiet`, the compiler kept it out of line (callgrind: 12 instructions more per
    /// `reserve` + `commit`).
    #[inline(always)]
    fn settle_quiet_on(&self, monitor: &Monitor, quantity: u64, change: Change) {
        let state = self.lock(monitor);
        self.settle_locked(monitor, state, quantity, change);
    }
}

impl<K: Sku> LockedSkus<K> for MonitorStore<K> {
    type Slot = Monitor;
    type Cell = MonitorState;

    #[inline]
    fn slot_map(&self) -> &GrowOnlyMap<K, Monitor> {
        &self.slots
    }

    fn mutex(monitor: &Self::Slot) -> &Mutex<MonitorState> {
        &monitor.state
    }

    fn stats(&self) -> &Stats {
        &self.lifecycle.stats
    }
}

impl<K: Sku> StoreBuilder<K, MonitorStore<K>> {
    /// Builds the monitor store with these settings.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{MonitorStore, StockStore};
    ///
    /// let store = MonitorStore::<&str>::builder().build();
    /// assert_eq!(store.queued(&"anything"), 0);
    /// ```
    pub fn build(mut self) -> MonitorStore<K> {
        let restored = self.take_restored();
        let store = MonitorStore {
            slots: GrowOnlyMap::new(),
            wait_units_max: self.wait_units_max,
            lifecycle: self.lifecycle(),
        };
        if let Some(snapshot) = restored {
            crate::durability::capture::apply(&store, snapshot);
        }
        store
    }

    /// How many units beyond a SKU's on hand one waiter may wait for (default:
    /// [`MonitorStore::WAIT_UNITS_MAX`]). A waiting request with a line for more than its
    /// SKU's on hand plus this is refused at once with [`StockError::WaitTooLarge`]. `0`: waiters may wait only for units on hand (held by
    /// others, to be released); `u64::MAX`: no bound, as before this setting existed (one
    /// waiter for more than will ever arrive then keeps the SKU from every non-waiting
    /// buyer until its timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use stockledger::{MonitorStore, StockError, StockStore, WaitingStore};
    ///
    /// let store = MonitorStore::builder().wait_units_max(10).build();
    /// store.restock(&"tv", 1)?;
    /// store.sell(&[("tv", 1)])?; // sold out: on hand 0
    /// assert_eq!(store.queue_level(&"tv").unwrap().wait_room, 10);
    /// assert_eq!(
    ///     store.reserve_timeout(&[("tv", 11)], Duration::from_secs(60)),
    ///     Err(StockError::WaitTooLarge { sku: "tv", requested: 11, limit: 10 })
    /// );
    /// # Ok::<(), StockError<&str>>(())
    /// ```
    pub fn wait_units_max(mut self, units: u64) -> Self {
        self.wait_units_max = units;
        self
    }
}

impl<K: Sku> SlotHeld<K> for MonitorStore<K> {
    /// The freed units go to the SKU's waiters, if any (also `settle_quiet_on`'s body).
    #[inline(always)]
    fn settle_locked(
        &self,
        monitor: &Monitor,
        mut state: MutexGuard<'_, MonitorState>,
        quantity: u64,
        change: Change,
    ) {
        if !state.waiters.is_idle() {
            monitor.resolve(state, quantity, change);
            return;
        }
        // Nobody waits: nobody to grant or wake, only the level changes.
        state.level = state
            .level
            .apply(change, quantity, 0, Limits::U64)
            .expect("an open hold can always be resolved");
    }
}

impl<K: Sku> Backend<K> for MonitorStore<K> {
    type Handle = MonitorHandle;

    slot_holds::slot_hold_methods!(lifecycle::slot_holds);

    fn lifecycle(&self) -> &Lifecycle<K, MonitorHandle> {
        &self.lifecycle
    }

    fn hold(&self, lines: &[(K, u64)]) -> Result<Moves, StockError<K>> {
        lines::apply(self, lines, Change::Reserve)
    }

    fn hold_lines_quiet(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
        lines::apply_quiet(self, lines, Change::Reserve)
    }

    #[inline]
    fn settle_quiet(&self, lines: &[(K, u64)], handle: &Self::Handle, change: Change) {
        if let (Some(position), [(_, quantity)]) = (handle, lines) {
            return self.settle_quiet_on(self.slots.at(*position), *quantity, change);
        }
        for (sku, quantity) in lines {
            let monitor = self.slot(sku).expect("a held SKU exists");
            self.settle_quiet_on(monitor, *quantity, change);
        }
    }

    /// Line by line, each SKU's monitor handing the freed stock to its waiters.
    fn settle(&self, lines: &[(K, u64)], change: Change) -> Moves {
        lines
            .iter()
            .map(|(sku, quantity)| {
                let monitor = self.slot(sku).expect("a held SKU exists");
                monitor.resolve(self.lock(monitor), *quantity, change)
            })
            .collect()
    }
}

impl<K: Sku> crate::durability::capture::SkuTable<K> for MonitorStore<K> {
    const LIMITS: Limits = Limits::U64;

    fn sku_count(&self) -> usize {
        self.slots.len()
    }

    fn each_sku<'a>(&'a self, f: &mut dyn FnMut(&'a K, StockLevel, u64)) {
        self.slots.for_each(|sku, monitor| {
            let state = monitor.state.lock();
            f(sku, state.level, state.waiters.low_stock_threshold());
        });
    }

    fn restore_sku(&self, sku: &K, level: StockLevel, threshold: u64) -> bool {
        let monitor = self.slots.get_or_insert_with(sku, || Monitor::new(level));
        if let Some((monitor, _)) = monitor {
            monitor
                .state
                .lock()
                .waiters
                .set_low_stock_threshold(threshold);
        }
        monitor.is_some()
    }
}

impl<K: Sku> StockStore<K> for MonitorStore<K> {
    lifecycle::lifecycle_methods!();

    fn restock(&self, sku: &K, qty: u64) -> Result<StockLevel, StockError<K>> {
        if qty == 0 {
            return Err(StockError::InvalidQuantity { sku: sku.clone() });
        }
        // A new SKU has no waiter to grant (a waiter needs the SKU to exist).
        let gate = self.lifecycle.registry.enter();
        let moved = lines::restock_sku(
            &self.slots,
            sku,
            qty,
            Limits::U64,
            Monitor::new,
            |monitor| {
                let mut state = self.lock(monitor);
                let (moved, granted) = state
                    .change_and_grant(Change::Restock, qty)
                    .map_err(|refusal| refusal.into_error(sku.clone(), qty))?;
                monitor.notify(state, granted);
                Ok(moved)
            },
        )?;
        drop(gate);
        self.lifecycle.restocked(sku, qty, moved);
        Ok(moved.level)
    }

    #[inline]
    fn level(&self, sku: &K) -> Option<StockLevel> {
        self.level_of(sku)
    }

    fn set_low_stock_threshold(&self, sku: &K, threshold: u64) -> Result<(), StockError<K>> {
        let monitor = self
            .slots
            .get(sku)
            .ok_or_else(|| StockError::UnknownSku(sku.clone()))?;
        monitor
            .state
            .lock()
            .waiters
            .set_low_stock_threshold(threshold);
        Ok(())
    }

    fn sell(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
        lifecycle::sell_locked(self, &self.lifecycle, lines)
    }

    fn as_waiting(&self) -> Option<&dyn crate::store::WaitingStore<K>> {
        Some(self)
    }
}

impl<K: Sku> Default for MonitorStore<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Sku> fmt::Debug for MonitorStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (keys, deadlines) = self.lifecycle.registry.index_sizes();
        f.debug_struct("MonitorStore")
            .field("skus", &self.slots.len())
            .field("wait_units_max", &self.wait_units_max)
            .field("open_holds", &lifecycle::open_holds(self))
            .field("deadlines", &deadlines)
            .field("idempotency_keys", &keys)
            .field("events", &self.lifecycle.events)
            .finish()
    }
}
