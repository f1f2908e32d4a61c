//! A monitor per SKU (mutex + condition variable) with a FIFO queue of waiters.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::error::StockError;
use crate::level::{Change, Limits, StockLevel};
use crate::lines::{self, LevelCell};
use crate::reservation::{Registry, Reservation, ReservationId};
use crate::store::{Sku, StockStore, WaitingStore};
use crate::sync::{self, Arc, Condvar, Mutex, MutexGuard, ShardedMap};

/// A stock store built from **monitors**: each SKU has a mutex, a condition variable and a
/// FIFO queue of waiting reservations (wait/notify).
///
/// [`reserve_timeout`](WaitingStore::reserve_timeout) waits its turn; stock freed by a
/// restock or a release goes to the waiters in arrival order. There is no barging: while
/// a waiter is queued on a SKU, that SKU offers **0 units** to non-waiting `reserve` and
/// `sell` calls, because the head of the queue is entitled to everything up to its need and
/// nobody behind it goes first. So a large request is never starved by a stream of small
/// ones (the FIFO handoff of tokio's batch semaphore).
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
/// variable at a time with that SKU's mutex released.
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
    /// SKU -> its monitor.
    slots: ShardedMap<K, Arc<Monitor>>,
    /// Open holds.
    holds: Registry<K>,
}

/// One SKU's monitor.
#[derive(Debug)]
struct Monitor {
    /// The SKU's counts and wait queue.
    state: Mutex<MonitorState>,
    /// Notified (all) whenever queued waiters were granted stock.
    granted: Condvar,
}

/// The state of one SKU, guarded by [`Monitor::state`].
#[derive(Debug, Default)]
struct MonitorState {
    /// The SKU's counts; granted waiters' units are already in `reserved`.
    level: StockLevel,
    /// Waiters in arrival order, tickets ascending. A waiter is granted when it is popped
    /// from the front with its units reserved.
    queue: VecDeque<Waiter>,
    /// The ticket of the next waiter to arrive.
    next_ticket: u64,
}

/// A queued waiting request for one SKU.
#[derive(Debug, Clone, Copy)]
struct Waiter {
    /// Arrival order on this SKU.
    ticket: u64,
    /// Units it waits for (its merged line).
    quantity: u64,
}

impl LevelCell for MonitorState {
    fn level(&self) -> StockLevel {
        self.level
    }

    /// Everything, while a waiter is queued (no barging).
    fn withheld(&self) -> u64 {
        if self.queue.is_empty() {
            0
        } else {
            u64::MAX
        }
    }

    fn set_level(&mut self, level: StockLevel) {
        self.level = level;
    }
}

impl MonitorState {
    /// Grants queued waiters from the front while stock covers them; returns whether any
    /// was granted (the caller then notifies).
    fn grant_waiters(&mut self) -> bool {
        let mut granted = false;
        while let Some(head) = self.queue.front() {
            match self
                .level
                .apply(Change::Reserve, head.quantity, 0, Limits::U64)
            {
                Ok(level) => {
                    self.level = level;
                    self.queue.pop_front();
                    granted = true;
                }
                Err(_) => break,
            }
        }
        granted
    }

    /// Whether the waiter `ticket`, still waiting, has been granted: every waiter before
    /// it and itself have left the front of the queue.
    fn is_granted(&self, ticket: u64) -> bool {
        self.queue.front().is_none_or(|head| head.ticket > ticket)
    }
}

impl Monitor {
    fn new() -> Self {
        Self {
            state: Mutex::new(MonitorState::default()),
            granted: Condvar::new(),
        }
    }

    /// Grants waiters after `state` freed stock, and wakes them.
    fn hand_off(&self, state: &mut MonitorState) {
        if state.grant_waiters() {
            self.granted.notify_all();
        }
    }

    /// Reserves `quantity` units, waiting in FIFO order until `deadline`.
    fn reserve_waiting<K: Clone>(
        &self,
        sku: &K,
        quantity: u64,
        deadline: Option<Instant>,
    ) -> Result<(), StockError<K>> {
        let mut state = self.state.lock();
        if state.queue.is_empty() {
            match state.level.apply(Change::Reserve, quantity, 0, Limits::U64) {
                Ok(level) => {
                    state.level = level;
                    return Ok(());
                }
                Err(refusal @ crate::level::Refusal::Overflow) => {
                    return Err(refusal.into_error(sku.clone(), quantity));
                }
                Err(_) => {}
            }
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(Waiter { ticket, quantity });
        loop {
            let timed_out;
            (state, timed_out) = self.granted.wait_until(state, deadline);
            if state.is_granted(ticket) {
                return Ok(());
            }
            if timed_out || sync::deadline_passed(deadline) {
                // Leave the queue; if this waiter was the head, the next may now be served.
                state.queue.retain(|waiter| waiter.ticket != ticket);
                self.hand_off(&mut state);
                return Err(StockError::Timeout);
            }
        }
    }

    /// Changes held stock (`Release` or `Commit`) of `quantity` units, then hands off.
    fn resolve(&self, quantity: u64, change: Change) {
        let mut state = self.state.lock();
        state.level = state
            .level
            .apply(change, quantity, 0, Limits::U64)
            .expect("an open hold can always be resolved");
        self.hand_off(&mut state);
    }
}

impl<K: Sku> MonitorStore<K> {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            slots: ShardedMap::new(),
            holds: Registry::new(),
        }
    }

    /// Number of `reserve_timeout` callers queued on `sku` right now (0 for an unknown SKU).
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
    pub fn queued(&self, sku: &K) -> usize {
        self.slots
            .get_cloned(sku)
            .map_or(0, |monitor| monitor.state.lock().queue.len())
    }

    /// The monitors of merged `lines`, in the same order.
    fn monitors_of(&self, lines: &[(K, u64)]) -> Result<Vec<Arc<Monitor>>, StockError<K>> {
        lines
            .iter()
            .map(|(sku, _)| {
                self.slots
                    .get_cloned(sku)
                    .ok_or_else(|| StockError::UnknownSku(sku.clone()))
            })
            .collect()
    }

    /// Applies `change` to merged `lines` without waiting, all or nothing, locking in
    /// ascending SKU order.
    fn apply(&self, lines: &[(K, u64)], change: Change) -> Result<(), StockError<K>> {
        let monitors = self.monitors_of(lines)?;
        let mut guards: Vec<MutexGuard<'_, MonitorState>> = monitors
            .iter()
            .map(|monitor| monitor.state.lock())
            .collect();
        lines::apply_all(&mut guards, lines, change, Limits::U64)
    }

    /// Resolves the hold `id` with `change` (commit or release).
    fn resolve(&self, id: ReservationId, change: Change) -> Result<Reservation<K>, StockError<K>> {
        let reservation = self.holds.resolve(id)?;
        let monitors = self
            .monitors_of(reservation.lines())
            .expect("a held SKU exists");
        for (monitor, (_, quantity)) in monitors.iter().zip(reservation.lines()) {
            monitor.resolve(*quantity, change);
        }
        Ok(reservation)
    }
}

impl<K: Sku> StockStore<K> for MonitorStore<K> {
    fn restock(&self, sku: &K, qty: u64) -> Result<StockLevel, StockError<K>> {
        if qty == 0 {
            return Err(StockError::InvalidQuantity { sku: sku.clone() });
        }
        let monitor = self
            .slots
            .get_or_insert_with(sku, || Arc::new(Monitor::new()));
        let mut state = monitor.state.lock();
        state.level = state
            .level
            .apply(Change::Restock, qty, 0, Limits::U64)
            .map_err(|refusal| refusal.into_error(sku.clone(), qty))?;
        let level = state.level;
        monitor.hand_off(&mut state);
        Ok(level)
    }

    fn level(&self, sku: &K) -> Option<StockLevel> {
        self.slots
            .get_cloned(sku)
            .map(|monitor| monitor.state.lock().level)
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

impl<K: Sku> WaitingStore<K> for MonitorStore<K> {
    fn reserve_timeout(
        &self,
        lines: &[(K, u64)],
        timeout: Duration,
    ) -> Result<Reservation<K>, StockError<K>> {
        let lines = lines::merge(lines)?;
        let monitors = self.monitors_of(&lines)?;
        // A timeout too long to represent never passes.
        let deadline = Instant::now().checked_add(timeout);
        for (held, (monitor, (sku, quantity))) in monitors.iter().zip(&lines).enumerate() {
            if let Err(error) = monitor.reserve_waiting(sku, *quantity, deadline) {
                for (monitor, (_, quantity)) in monitors.iter().zip(&lines).take(held) {
                    monitor.resolve(*quantity, Change::Release);
                }
                return Err(error);
            }
        }
        Ok(self.holds.open(lines))
    }
}

impl<K: Sku> Default for MonitorStore<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Sku> fmt::Debug for MonitorStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorStore")
            .field("skus", &self.slots.len())
            .field("open_holds", &self.holds.len())
            .finish()
    }
}
