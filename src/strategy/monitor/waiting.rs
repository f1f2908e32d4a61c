//! Waiting for stock in a [`MonitorStore`]: one multi-line waiting request ([`Request`])
//! driven either by a blocked thread (`reserve_timeout_with`) or by an executor polling the
//! [`ReserveWait`] future (`reserve_wait`). Both queue in the same per-SKU FIFO queue
//! ([`WaitQueue`](crate::wait::WaitQueue)); a request that stops early (a timeout, a
//! refusal, a dropped future) gives back everything when it is dropped.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::{Monitor, MonitorState, MonitorStore};
use crate::error::StockError;
use crate::level::{Change, Limits, Moved, Refusal};
use crate::lifecycle::registry::Opened;
use crate::lifecycle::Backend;
use crate::lines::{self, LockedSkus};
use crate::options::ReserveOptions;
use crate::reservation::Reservation;
use crate::stats::{Stat, Stats};
use crate::store::{Sku, WaitFuture, WaitingStore};
use crate::sync::{self, MutexGuard};
use crate::wait::wait_room;

/// Where one waiting line stands after its turn at its SKU's monitor.
enum Turn {
    /// Its units are reserved for it.
    Held(Moved),
    /// It waits in the SKU's queue.
    Queued,
}

impl MonitorState {
    /// The turn of the waiting line `(sku, quantity)` whose ticket is `ticket` (`None`: not
    /// queued yet). Not queued: takes the units at once if nobody waits and they are
    /// available, else queues (setting `ticket`, counting a wait) if the line fits the
    /// SKU's wait room (at most `wait_units_max` units beyond on hand).
    /// Queued: picks up its grant if it was granted, else keeps `waker` (a task) to be
    /// woken by.
    ///
    /// # Errors
    ///
    /// [`StockError::Overflow`] when holding the line would pass a count's maximum;
    /// [`StockError::WaitTooLarge`] when it would have to queue and does not fit.
    fn take_turn<K: Clone>(
        &mut self,
        (sku, quantity): (&K, u64),
        ticket: &mut Option<u64>,
        waker: Option<&Waker>,
        stats: &Stats,
        wait_units_max: u64,
    ) -> Result<Turn, StockError<K>> {
        if let Some(queued) = *ticket {
            if let Some(moved) = self.waiters.take_grant(queued) {
                *ticket = None;
                // The grant's crossing, if any, goes out with this request's hold.
                return Ok(Turn::Held(moved));
            }
            if let Some(waker) = waker {
                self.waiters.register(queued, waker);
            }
            return Ok(Turn::Queued);
        }
        if self.waiters.is_empty() {
            let before = self.level;
            match before.apply(Change::Reserve, quantity, 0, Limits::U64) {
                Ok(level) => {
                    self.level = level;
                    let moved = Moved::new(before, level, self.waiters.low_stock_threshold());
                    return Ok(Turn::Held(moved));
                }
                Err(refusal @ Refusal::Overflow) => {
                    return Err(refusal.into_error(sku.clone(), quantity));
                }
                Err(_) => {}
            }
        }
        self.check_wait_room(sku, quantity, wait_units_max)?;
        stats.count(Stat::Waits);
        *ticket = Some(self.waiters.push(quantity, waker));
        Ok(Turn::Queued)
    }

    /// Whether a waiter for `quantity` units of `sku` fits the SKU's wait room.
    ///
    /// # Errors
    ///
    /// [`StockError::WaitTooLarge`] when it does not.
    fn check_wait_room<K: Clone>(
        &self,
        sku: &K,
        quantity: u64,
        wait_units_max: u64,
    ) -> Result<(), StockError<K>> {
        let limit = wait_room(self.level, wait_units_max);
        if quantity > limit {
            return Err(StockError::WaitTooLarge {
                sku: sku.clone(),
                requested: quantity,
                limit,
            });
        }
        Ok(())
    }
}

impl Monitor {
    /// Takes the waiter `ticket` out of this SKU's queue, under `state`'s lock. When it
    /// was granted meanwhile, returns what the grant moved: the caller holds those units
    /// and gives them back (which passes them on). Otherwise the waiters behind it may be
    /// served now: grants them and wakes whoever was granted.
    fn leave(&self, mut state: MutexGuard<'_, MonitorState>, ticket: u64) -> Option<Moved> {
        let granted = state.waiters.cancel(ticket);
        if granted.is_none() {
            let served = state.grant_waiters();
            self.notify(state, served);
        }
        granted
    }
}

/// How a waiting request starts.
enum Start<'a, K: Sku> {
    /// Answered without waiting: a hold of a request with an idempotency key that had the
    /// stock at once, or the replay of a key already seen.
    Done(Reservation<K>),
    /// Waits, line by line.
    Wait(Request<'a, K>),
}

/// A waiting request in progress: its merged lines (ascending SKU), their monitors, what
/// moved on the lines held so far (a prefix of `lines`) and the ticket of the line queued
/// now (the next one).
///
/// Cancel safe by construction: **dropping it** at any point leaves the queue it is in
/// (passing the turn on, or giving back a grant it had not picked up yet) and gives back
/// every line it holds, waking whoever that serves. Only [`finish`](Self::finish) keeps
/// the lines, as a recorded hold.
struct Request<'a, K: Sku> {
    store: &'a MonitorStore<K>,
    lines: Vec<(K, u64)>,
    monitors: Vec<&'a Monitor>,
    /// What moved on each held line; `held.len()` is the index of the line waited for.
    held: Vec<Moved>,
    /// The ticket of line `held.len()` in its SKU's queue, while it is queued.
    ticket: Option<u64>,
    options: ReserveOptions,
}

impl<'a, K: Sku> Request<'a, K> {
    /// Starts waiting for merged `lines`. With an idempotency key, first tries the hold
    /// without waiting through the idempotency table, so a key already seen is answered
    /// at once (and a key of a hold that gets its stock at once is recorded with it).
    ///
    /// # Errors
    ///
    /// [`StockError::InvalidIdempotencyKey`], [`StockError::IdempotencyConflict`],
    /// [`StockError::UnknownSku`], [`StockError::HoldEnded`], [`StockError::WaitTooLarge`],
    /// and with a key [`StockError::Overflow`].
    fn start(
        store: &'a MonitorStore<K>,
        lines: Vec<(K, u64)>,
        options: &ReserveOptions,
    ) -> Result<Start<'a, K>, StockError<K>> {
        let life = &store.lifecycle;
        if let Some(key) = &options.idempotency_key {
            crate::lifecycle::idempotency::validate_key(key)?;
            let opened = life
                .registry
                .reserve(lines.clone(), options, |lines| store.hold(lines));
            if !matches!(opened, Err(StockError::InsufficientStock { .. })) {
                life.stats.count_refusal(&opened);
                life.stats.count_ended_replay(&opened);
                return match opened? {
                    Opened::New(reservation, moved) => {
                        let key = options.idempotency_key.as_ref();
                        crate::lifecycle::report_opened(store, &reservation, &moved, key);
                        Ok(Start::Done(reservation))
                    }
                    Opened::Replay(reservation) => {
                        life.stats.count(Stat::Replays);
                        Ok(Start::Done(reservation))
                    }
                };
            }
            // Short of stock: wait for it below.
        }
        let monitors = lines::slots(store, &lines)?;
        // Refuse at once a line that could not queue now: before any line is held or any
        // wait begins (each line is checked again, authoritatively, at its turn).
        for ((sku, quantity), monitor) in lines.iter().zip(&monitors) {
            let state = store.lock(monitor);
            if state.level.available() < *quantity || !state.waiters.is_empty() {
                state.check_wait_room(sku, *quantity, store.wait_units_max)?;
            }
        }
        Ok(Start::Wait(Self {
            store,
            held: Vec::with_capacity(lines.len()),
            lines,
            monitors,
            ticket: None,
            options: options.clone(),
        }))
    }

    /// The index of the line to wait for next; `None` once every line is held.
    fn next_line(&self) -> Option<usize> {
        (self.held.len() < self.lines.len()).then_some(self.held.len())
    }

    /// The turn of the next line at its monitor, whose lock is `state`: `Ok(true)` when it
    /// is held now, `Ok(false)` while it is queued (`waker`: the task to wake).
    ///
    /// # Errors
    ///
    /// [`StockError::Overflow`] or [`StockError::WaitTooLarge`] (the request is then
    /// dropped, giving back what it holds).
    fn take_turn(
        &mut self,
        state: &mut MonitorState,
        waker: Option<&Waker>,
    ) -> Result<bool, StockError<K>> {
        let (sku, quantity) = &self.lines[self.held.len()];
        let stats = &self.store.lifecycle.stats;
        let wait_units_max = self.store.wait_units_max;
        match state.take_turn(
            (sku, *quantity),
            &mut self.ticket,
            waker,
            stats,
            wait_units_max,
        )? {
            Turn::Held(moved) => {
                self.held.push(moved);
                Ok(true)
            }
            Turn::Queued => Ok(false),
        }
    }

    /// Takes every turn it can, locking one SKU at a time; `Pending` when a line is queued
    /// (the task behind `waker` is woken when it is granted), `Ready` once every line is
    /// held.
    fn poll_lines(&mut self, waker: &Waker) -> Poll<Result<(), StockError<K>>> {
        while let Some(index) = self.next_line() {
            let monitor = self.monitors[index];
            let mut state = self.store.lock(monitor);
            if !self.take_turn(&mut state, Some(waker))? {
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Records the hold of the request, every line of which is held. With an idempotency
    /// key seen meanwhile (a racing request with the same key won), answers with that
    /// key's reservation, and dropping `self` gives these lines back.
    ///
    /// # Errors
    ///
    /// [`StockError::IdempotencyConflict`] when the key was used meanwhile with other lines.
    fn finish(&mut self) -> Result<Reservation<K>, StockError<K>> {
        debug_assert!(self.next_line().is_none() && self.ticket.is_none());
        let life = &self.store.lifecycle;
        let opened = life
            .registry
            .reserve(self.lines.clone(), &self.options, |_| Ok(()))?;
        match opened {
            Opened::New(reservation, ()) => {
                let held = std::mem::take(&mut self.held);
                let key = self.options.idempotency_key.as_ref();
                crate::lifecycle::report_opened(self.store, &reservation, &held, key);
                Ok(reservation)
            }
            Opened::Replay(reservation) => {
                life.stats.count(Stat::Replays);
                Ok(reservation)
            }
        }
    }
}

impl<K: Sku> Request<'_, K> {
    /// Leaves the queue of the line waited for, if it is queued; a grant it had not picked
    /// up joins the held lines (to be given back with them).
    fn leave(&mut self) {
        if self.ticket.is_some() {
            let monitor = self.monitors[self.held.len()];
            let state = self.store.lock(monitor);
            self.leave_locked(monitor, state);
        }
    }

    /// [`leave`](Self::leave) under `state`, the lock of `monitor`, the queued line's SKU.
    fn leave_locked(&mut self, monitor: &Monitor, state: MutexGuard<'_, MonitorState>) {
        if let Some(ticket) = self.ticket.take() {
            let granted = monitor.leave(state, ticket);
            self.held.extend(granted);
        }
    }
}

impl<K: Sku> Drop for Request<'_, K> {
    /// Leaves the queue, then gives back the lines held, each waking whoever it serves.
    fn drop(&mut self) {
        self.leave();
        if self.held.is_empty() {
            return;
        }
        let held = self.monitors.iter().zip(&self.lines).zip(&self.held);
        for ((monitor, (_, quantity)), _) in held {
            monitor.resolve(self.store.lock(monitor), *quantity, Change::Release);
        }
        // The lines held were visible, crossings included: report those, though the hold
        // is given back.
        let life = &self.store.lifecycle;
        life.crossings(&self.lines[..self.held.len()], &self.held);
        self.held.clear();
    }
}

impl<K: Sku> WaitingStore<K> for MonitorStore<K> {
    fn reserve_timeout_with(
        &self,
        lines: &[(K, u64)],
        timeout: Duration,
        options: &ReserveOptions,
    ) -> Result<Reservation<K>, StockError<K>> {
        let lines = lines::merge(lines)?.into_owned();
        // A timeout too long to represent never passes.
        let deadline = Instant::now().checked_add(timeout);
        let mut request = match Request::start(self, lines, options)? {
            Start::Done(reservation) => return Ok(reservation),
            Start::Wait(request) => request,
        };
        while let Some(index) = request.next_line() {
            let monitor = request.monitors[index];
            let mut state = self.lock(monitor);
            let mut timed_out = false;
            while !request.take_turn(&mut state, None)? {
                if timed_out || sync::deadline_passed(deadline) {
                    request.leave_locked(monitor, state);
                    self.lifecycle.stats.count(Stat::Timeouts);
                    return Err(StockError::Timeout); // dropping `request` gives back the rest
                }
                // Not served, so queued: the queues, and their signal, exist until this
                // request leaves them; `None` would only re-check the turn.
                if let Some(signal) = state.waiters.signal() {
                    (state, timed_out) = signal.wait_until(state, deadline);
                }
            }
        }
        request.finish()
    }

    fn reserve_wait<'a>(
        &'a self,
        lines: &[(K, u64)],
        options: &ReserveOptions,
    ) -> WaitFuture<'a, K> {
        Box::pin(MonitorStore::reserve_wait(self, lines, options))
    }
}

impl<K: Sku> MonitorStore<K> {
    /// Holds every line like [`reserve_with`](crate::StockStore::reserve_with), waiting
    /// asynchronously, in FIFO order, for stock: the future of
    /// [`WaitingStore::reserve_wait`] without its box.
    ///
    /// Async and blocking waiters ([`reserve_timeout`](WaitingStore::reserve_timeout)) share
    /// one queue per SKU: arrival order, no barging (the FIFO handoff of tokio's batch
    /// semaphore). SKUs are taken in ascending order, holding the earlier lines while
    /// waiting for later ones. The future has no deadline of its own: wrap it in your
    /// runtime's timeout (`tokio::time::timeout`) or race it in `select!`.
    ///
    /// **Cancel safe**: dropping the future at any point (before its first poll, while
    /// queued, while holding some lines, after a grant it has not picked up) leaves the
    /// queue, passes the turn to the waiter behind it and gives back every unit it held.
    /// Runtime agnostic: it keeps the task's [`Waker`] in its queue entry, no runtime
    /// needed.
    ///
    /// With an idempotency key, a key already seen answers at once; two racing requests
    /// with one key may both wait, and the one that finishes second gets the first's
    /// reservation and gives its own units back (to the next waiter).
    ///
    /// # Errors
    ///
    /// - [`StockError::EmptyRequest`], [`StockError::InvalidQuantity`],
    ///   [`StockError::UnknownSku`], [`StockError::InvalidIdempotencyKey`],
    ///   [`StockError::IdempotencyConflict`] and [`StockError::HoldEnded`], before any
    ///   waiting.
    /// - [`StockError::WaitTooLarge`] when a line would have to queue for more than its
    ///   SKU's wait room (see [`MonitorStore`]): checked before any waiting, and again when
    ///   the SKU is reached (lines already held are then given back).
    /// - [`StockError::Overflow`] as for [`reserve`](crate::StockStore::reserve), when the
    ///   SKU is reached (lines already held are given back).
    ///
    /// # Panics
    ///
    /// The future panics if polled again after it completed.
    ///
    /// # Locking behaviour
    ///
    /// Never blocks: each poll locks the monitor of one SKU at a time, for a few
    /// instructions; a queued line waits with no lock held, until its grant wakes the task.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{sync::Arc, thread};
    /// use stockledger::{MonitorStore, ReserveOptions, StockStore};
    ///
    /// let store = Arc::new(MonitorStore::new());
    /// store.restock(&"console", 1)?;
    /// store.sell(&[("console", 1)])?; // sold out
    /// let restocker = {
    ///     let store = Arc::clone(&store);
    ///     thread::spawn(move || {
    ///         while store.queued(&"console") == 0 {
    ///             thread::yield_now();
    ///         }
    ///         store.restock(&"console", 1)
    ///     })
    /// };
    /// // Any executor drives it; a tokio task would `.await` it.
    /// let hold = futures_executor::block_on(store.reserve_wait(&[("console", 1)], &ReserveOptions::new()))?;
    /// restocker.join().unwrap()?;
    /// store.commit(hold.id())?;
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn reserve_wait(&self, lines: &[(K, u64)], options: &ReserveOptions) -> ReserveWait<'_, K> {
        ReserveWait {
            store: self,
            phase: Phase::Start(lines::merge(lines).map(Cow::into_owned), options.clone()),
        }
    }
}

/// The future of [`MonitorStore::reserve_wait`]: a hold that waits its turn in FIFO order.
///
/// Dropping it before it completes leaves the queue, passes the turn on and gives back
/// every unit it held (see [`MonitorStore::reserve_wait`]).
///
/// # Examples
///
/// ```
/// use stockledger::{MonitorStore, ReserveOptions, ReserveWait, StockStore};
///
/// let store = MonitorStore::new();
/// store.restock(&"kettle", 1)?;
/// let wait: ReserveWait<'_, &str> = store.reserve_wait(&[("kettle", 1)], &ReserveOptions::new());
/// let hold = futures_executor::block_on(wait)?;
/// assert_eq!(hold.lines(), &[("kettle", 1)]);
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct ReserveWait<'a, K: Sku> {
    store: &'a MonitorStore<K>,
    phase: Phase<'a, K>,
}

/// Where a [`ReserveWait`] is.
enum Phase<'a, K: Sku> {
    /// Not polled yet: the merged lines (or why they are refused) and the options.
    Start(Result<Vec<(K, u64)>, StockError<K>>, ReserveOptions),
    /// Taking its turns, line by line.
    Waiting(Request<'a, K>),
    /// It returned its output.
    Done,
}

/// Nothing in a `ReserveWait` is ever pinned (no field is pin-projected): it may move
/// between polls even when `K` is not `Unpin`.
impl<K: Sku> Unpin for ReserveWait<'_, K> {}

impl<K: Sku> Future for ReserveWait<'_, K> {
    type Output = Result<Reservation<K>, StockError<K>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Phase::Start(..) = this.phase {
            let Phase::Start(lines, options) = std::mem::replace(&mut this.phase, Phase::Done)
            else {
                unreachable!("checked just above");
            };
            match lines.and_then(|lines| Request::start(this.store, lines, &options)) {
                Ok(Start::Wait(request)) => this.phase = Phase::Waiting(request),
                Ok(Start::Done(reservation)) => return Poll::Ready(Ok(reservation)),
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        let Phase::Waiting(request) = &mut this.phase else {
            panic!("`ReserveWait` polled after it completed");
        };
        let Poll::Ready(held) = request.poll_lines(cx.waker()) else {
            return Poll::Pending;
        };
        let output = held.and_then(|()| request.finish());
        // Drops the request: gives back whatever it still holds (nothing after a new hold).
        this.phase = Phase::Done;
        Poll::Ready(output)
    }
}

impl<K: Sku> fmt::Debug for ReserveWait<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ReserveWait");
        match &self.phase {
            Phase::Start(lines, _) => debug.field("phase", &"start").field("lines", lines),
            Phase::Waiting(request) => debug
                .field("phase", &"waiting")
                .field("lines", &request.lines)
                .field("held_lines", &request.held.len())
                .field("queued", &request.ticket.is_some()),
            Phase::Done => debug.field("phase", &"done"),
        };
        debug.finish()
    }
}
