//! The FIFO queue of waiting reservations on one SKU, shared by blocking waiters
//! ([`reserve_timeout`](crate::WaitingStore::reserve_timeout), woken through the queue's
//! condition variable) and async waiters ([`reserve_wait`](crate::WaitingStore::reserve_wait),
//! woken through the [`Waker`] kept in their queue entry).
//!
//! The hand-off is tokio's batch semaphore's: stock goes to the **head** of the queue first,
//! in arrival order; a granted waiter's units are reserved for it before it wakes, so nobody
//! can take them in between (no barging); the wakers of granted tasks are collected under the
//! SKU's lock ([`WaitQueue::take_wakers`], tokio's `WakeList`) and woken after it is
//! released, so a woken task never runs into the lock its waker still holds.
//!
//! A waiter that leaves (a timeout, a dropped future) calls [`WaitQueue::cancel`]: either it
//! was granted meanwhile and must give its units back (and report the grant's low-stock
//! crossing, which was visible), or it is unlinked and the waiters behind it may now be
//! served (the caller grants again).

use std::collections::VecDeque;
use std::task::Waker;

use crate::level::{Moved, StockLevel};
use crate::sync::{Arc, Condvar};

/// How many units beyond a SKU's on hand one waiter may wait for, by default:
/// see [`MonitorStore::WAIT_UNITS_MAX`](crate::MonitorStore::WAIT_UNITS_MAX).
pub(crate) const WAIT_UNITS_MAX: u64 = 100;

/// A SKU of a [`MonitorStore`](crate::MonitorStore) as a caller sees it: its counts, what a
/// non-waiting `reserve` or `sell` can take now, and what its queued waiters wait for
/// (from [`MonitorStore::queue_level`](crate::MonitorStore::queue_level)).
///
/// All of it is read under one lock, so it agrees with itself and with the answers of
/// that instant: while a waiter is queued, `available_now` is 0 and a non-waiting request
/// is refused with [`StockError::InsufficientStock`](crate::StockError::InsufficientStock)
/// `{ available: 0, .. }`, though `level.available()` may be more (those units are kept
/// for the head of the queue); a waiting request for more than `wait_room` units is refused
/// with [`StockError::WaitTooLarge`](crate::StockError::WaitTooLarge) instead of queuing.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use stockledger::{MonitorStore, StockError, StockStore, WaitingStore};
///
/// let store = MonitorStore::new();
/// store.restock(&"tv", 3)?;
/// let queue = store.queue_level(&"tv").unwrap();
/// assert_eq!((queue.available_now, queue.queued_units, queue.waiters), (3, 0, 0));
/// assert_eq!(queue.wait_room, 3 + MonitorStore::<&str>::WAIT_UNITS_MAX);
/// assert_eq!(queue.level.available(), 3);
/// # Ok::<(), StockError<&str>>(())
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueLevel {
    /// The SKU's counts, as [`level`](crate::StockStore::level) reads them (units granted
    /// to waiters are already in `reserved`).
    pub level: StockLevel,
    /// Units a non-waiting `reserve` or `sell` can take now: `level.available()` while
    /// nobody waits, 0 while a waiter is queued (no barging).
    pub available_now: u64,
    /// Units the queued waiters wait for on this SKU, in total.
    pub queued_units: u64,
    /// Number of queued waiters (as [`MonitorStore::queued`](crate::MonitorStore::queued)).
    pub waiters: usize,
    /// The most units a new waiter may wait for on this SKU now: on hand plus the store's
    /// [`wait_units_max`](crate::StoreBuilder::wait_units_max) (saturating at `u64::MAX`).
    pub wait_room: u64,
}

impl QueueLevel {
    /// The read of a SKU at `level` whose queue is `queue`, in a store whose waiters may
    /// wait for `wait_units_max` units beyond on hand.
    pub(crate) fn of(level: StockLevel, queue: &WaitQueue, wait_units_max: u64) -> Self {
        let queued_units = queue.queued_units();
        Self {
            level,
            available_now: if queue.is_empty() {
                level.available()
            } else {
                0
            },
            queued_units,
            waiters: queue.len(),
            wait_room: wait_room(level, wait_units_max),
        }
    }
}

/// The most units a new waiter may wait for on a SKU at `level`: on hand plus
/// `wait_units_max`.
#[inline]
pub(crate) fn wait_room(level: StockLevel, wait_units_max: u64) -> u64 {
    level.on_hand.saturating_add(wait_units_max)
}

/// The waiters of one SKU, in arrival order, and the grants they have not picked up yet.
///
/// Guarded by the SKU's monitor mutex (a field of `MonitorState`), like every field here.
/// One pointer while nobody waits: the queues (and the condition variable blocked waiters
/// sleep on) are allocated when the first waiter arrives and freed when the last grant is
/// picked up, so the many SKUs nobody waits for carry 8 bytes of wait state, not 104
/// (`benches/memory.rs`, bytes per SKU). Tickets restart then: no waiter holds one. The
/// SKU's low-stock threshold lives here too (kept allocated while it is set): so the
/// monitor's first cache line has room for the hold that lives in the slot.
#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    /// `None`: nobody waits and no grant is left to pick up.
    busy: Option<Box<Queues>>,
}

/// The queues of a SKU somebody waits on.
#[derive(Debug, Default)]
struct Queues {
    /// Waiters in arrival order, tickets ascending. A waiter leaves from the front when it
    /// is granted (its units reserved), or from anywhere when it cancels.
    queue: VecDeque<Waiter>,
    /// Granted waiters that have not picked up their grant yet: their ticket and what their
    /// grant moved (the level right after it, for their `Reserved` event, and the low-stock
    /// crossing it caused, if any). At most one entry per waiting request (a request waits
    /// on one SKU at a time).
    granted: Vec<Grant>,
    /// Wakers of the tasks granted under the current lock, to wake once it is released.
    wake_list: Vec<Waker>,
    /// The ticket of the next waiter to arrive.
    next_ticket: u64,
    /// The SKU's low-stock threshold (0: none).
    low_stock_threshold: u64,
    /// Notified (all) whenever queued waiters were granted stock: blocked threads sleep on
    /// it with the SKU's mutex released. Shared, so that a sleeper holds it without
    /// borrowing the state its mutex guards; a sleeper is queued or granted, so these
    /// queues (and this condition variable) outlive its sleep.
    signal: Arc<Condvar>,
}

impl Queues {
    /// Whether nobody is left: no waiter, no grant to pick up, no waker to wake.
    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.granted.is_empty() && self.wake_list.is_empty()
    }
}

/// A queued waiting line.
#[derive(Debug)]
struct Waiter {
    /// Arrival order on this SKU.
    ticket: u64,
    /// Units it waits for (its merged line).
    quantity: u64,
    /// How to wake it: `None` for a blocked thread (woken by the queues' condition
    /// variable), the task's waker for an async waiter (the latest one it was polled with).
    waker: Option<Waker>,
}

/// A grant not picked up yet.
#[derive(Debug, Clone, Copy)]
struct Grant {
    ticket: u64,
    moved: Moved,
}

impl WaitQueue {
    /// Whether the queue holds nothing at all: no waiter, no grant to pick up, no waker to
    /// wake (its queues are freed), so a change of the SKU has nobody to grant or wake.
    #[inline]
    pub(crate) fn is_idle(&self) -> bool {
        self.busy.as_ref().is_none_or(|busy| busy.is_idle())
    }

    /// The SKU's low-stock threshold (0: none).
    #[inline]
    pub(crate) fn low_stock_threshold(&self) -> u64 {
        self.busy
            .as_ref()
            .map_or(0, |busy| busy.low_stock_threshold)
    }

    /// Sets the SKU's low-stock threshold (0: none); the queues stay allocated while it is
    /// set.
    pub(crate) fn set_low_stock_threshold(&mut self, threshold: u64) {
        if threshold == 0 && self.busy.is_none() {
            return;
        }
        self.busy
            .get_or_insert_with(Box::default)
            .low_stock_threshold = threshold;
        self.free_when_idle();
    }

    /// Whether nobody waits.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.busy.as_ref().is_none_or(|busy| busy.queue.is_empty())
    }

    /// The condition variable blocked waiters sleep on; `None` when nobody waits and no
    /// grant is left (then nobody sleeps either).
    pub(crate) fn signal(&self) -> Option<Arc<Condvar>> {
        self.busy.as_ref().map(|busy| Arc::clone(&busy.signal))
    }

    /// Number of queued waiters (granted ones not counted).
    pub(crate) fn len(&self) -> usize {
        self.busy.as_ref().map_or(0, |busy| busy.queue.len())
    }

    /// Units the queued waiters wait for, in total (granted ones not counted; saturating
    /// at `u64::MAX`). Walks the queue: for reads, not for the hand-off.
    pub(crate) fn queued_units(&self) -> u64 {
        self.busy.as_ref().map_or(0, |busy| {
            busy.queue
                .iter()
                .fold(0, |sum: u64, waiter| sum.saturating_add(waiter.quantity))
        })
    }

    /// Queues a waiter for `quantity` units, woken by `waker` (`None`: a blocked thread);
    /// returns its ticket. The caller checked that `quantity` fits the SKU's wait room.
    pub(crate) fn push(&mut self, quantity: u64, waker: Option<&Waker>) -> u64 {
        let busy = self.busy.get_or_insert_with(Box::default);
        let ticket = busy.next_ticket;
        busy.next_ticket += 1;
        busy.queue.push_back(Waiter {
            ticket,
            quantity,
            waker: waker.cloned(),
        });
        ticket
    }

    /// Units the head of the queue waits for; `None` when nobody waits.
    #[inline]
    pub(crate) fn head_quantity(&self) -> Option<u64> {
        self.busy
            .as_ref()?
            .queue
            .front()
            .map(|waiter| waiter.quantity)
    }

    /// Grants the head of the queue, whose units the caller has just reserved, as `moved`;
    /// its waker (if a task) goes to the wake list.
    ///
    /// # Panics
    ///
    /// When nobody waits (a bug in the caller).
    pub(crate) fn grant_head(&mut self, moved: Moved) {
        let busy = self.busy.as_mut().expect("a waiter to grant");
        let head = busy.queue.pop_front().expect("a waiter to grant");
        busy.granted.push(Grant {
            ticket: head.ticket,
            moved,
        });
        busy.wake_list.extend(head.waker);
    }

    /// What the grant of the waiter `ticket` moved, if it was granted (and forgets the
    /// grant: each waiter picks it up once).
    pub(crate) fn take_grant(&mut self, ticket: u64) -> Option<Moved> {
        let busy = self.busy.as_mut()?;
        let index = busy
            .granted
            .iter()
            .position(|grant| grant.ticket == ticket)?;
        let moved = busy.granted.swap_remove(index).moved;
        self.free_when_idle();
        Some(moved)
    }

    /// Keeps `waker` as the one to wake the queued waiter `ticket` (a task polled again,
    /// perhaps by another executor thread). Nothing to do if it was granted meanwhile.
    pub(crate) fn register(&mut self, ticket: u64, waker: &Waker) {
        let Some(busy) = self.busy.as_mut() else {
            return;
        };
        if let Ok(index) = busy.position(ticket) {
            match &mut busy.queue[index].waker {
                Some(kept) if kept.will_wake(waker) => {}
                kept => *kept = Some(waker.clone()),
            }
        }
    }

    /// Takes the waiter `ticket` out: `Some` with what its grant moved if it was granted
    /// meanwhile (the caller holds those units and gives them back), `None` when it is
    /// unlinked from the queue (the caller grants the waiters behind it).
    ///
    /// # Panics
    ///
    /// When `ticket` is neither queued nor granted (a bug in the caller).
    pub(crate) fn cancel(&mut self, ticket: u64) -> Option<Moved> {
        if let Some(moved) = self.take_grant(ticket) {
            return Some(moved);
        }
        let busy = self.busy.as_mut().expect("a queued waiter");
        let index = busy.position(ticket).expect("a queued waiter");
        busy.queue.remove(index);
        self.free_when_idle();
        None
    }

    /// The wakers of the tasks granted since the last call, to wake after the lock is
    /// released. No allocation when no task was granted.
    #[inline]
    pub(crate) fn take_wakers(&mut self) -> Vec<Waker> {
        let Some(busy) = self.busy.as_mut() else {
            return Vec::new();
        };
        let wakers = std::mem::take(&mut busy.wake_list);
        self.free_when_idle();
        wakers
    }

    /// Frees the queues once nothing is left in them (nobody, and no threshold).
    fn free_when_idle(&mut self) {
        if self
            .busy
            .as_ref()
            .is_some_and(|busy| busy.is_idle() && busy.low_stock_threshold == 0)
        {
            self.busy = None;
        }
    }
}

impl Queues {
    /// The index of the queued waiter `ticket` (tickets ascend along the queue).
    fn position(&self, ticket: u64) -> Result<usize, usize> {
        self.queue
            .binary_search_by_key(&ticket, |waiter| waiter.ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved() -> Moved {
        Moved::new(StockLevel::default(), StockLevel::default(), 0)
    }

    #[test]
    fn grants_go_to_the_head_in_arrival_order() {
        let mut queue = WaitQueue::default();
        let first = queue.push(2, None);
        let second = queue.push(1, None);
        assert_eq!(queue.head_quantity(), Some(2));
        queue.grant_head(moved());
        assert_eq!(queue.head_quantity(), Some(1));
        assert_eq!(queue.take_grant(second), None);
        assert!(queue.take_grant(first).is_some());
        assert_eq!(queue.take_grant(first), None, "a grant is picked up once");
    }

    #[test]
    fn cancel_unlinks_or_reports_the_grant() {
        let mut queue = WaitQueue::default();
        let head = queue.push(1, None);
        let middle = queue.push(1, None);
        let tail = queue.push(1, None);
        queue.grant_head(moved());
        assert_eq!(queue.cancel(head), Some(moved()));
        assert_eq!(queue.cancel(tail), None);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.cancel(middle), None);
        assert!(queue.is_empty());
    }

    #[test]
    fn queued_units_follow_pushes_grants_and_cancels() {
        let mut queue = WaitQueue::default();
        assert_eq!(queue.queued_units(), 0);
        let _head = queue.push(5, None);
        let middle = queue.push(2, None);
        let _tail = queue.push(1, None);
        assert_eq!(queue.queued_units(), 8);
        queue.grant_head(moved());
        assert_eq!(queue.queued_units(), 3, "a granted waiter no longer waits");
        assert_eq!(queue.cancel(middle), None);
        assert_eq!(queue.queued_units(), 1);
        let level = StockLevel {
            on_hand: 3,
            reserved: 0,
            version: 1,
        };
        assert_eq!(wait_room(level, 10), 13);
        assert_eq!(wait_room(level, u64::MAX), u64::MAX);
    }

    #[test]
    fn the_queues_are_freed_once_idle_and_not_before() {
        let mut queue = WaitQueue::default();
        assert!(queue.busy.is_none(), "no allocation while nobody waits");
        let first = queue.push(1, None);
        let second = queue.push(1, None);
        queue.grant_head(moved());
        queue.grant_head(moved());
        assert!(queue.take_wakers().is_empty());
        assert!(queue.busy.is_some(), "grants are still to pick up");
        assert!(queue.take_grant(first).is_some());
        assert!(queue.busy.is_some(), "one grant is still to pick up");
        assert!(queue.take_grant(second).is_some());
        assert!(queue.busy.is_none(), "freed with the last grant picked up");
        let third = queue.push(1, None);
        assert_eq!(queue.cancel(third), None);
        assert!(queue.busy.is_none(), "freed with the last waiter gone");
    }

    #[test]
    fn a_threshold_keeps_the_queues_and_nobody_waits() {
        let mut queue = WaitQueue::default();
        queue.set_low_stock_threshold(0);
        assert!(queue.busy.is_none(), "no allocation for no threshold");
        queue.set_low_stock_threshold(5);
        assert_eq!(queue.low_stock_threshold(), 5);
        assert!(
            queue.is_idle() && queue.is_empty(),
            "a threshold is nobody waiting"
        );
        let ticket = queue.push(1, None);
        assert!(!queue.is_idle());
        assert_eq!(queue.cancel(ticket), None);
        assert_eq!(queue.low_stock_threshold(), 5, "kept past the last waiter");
        queue.set_low_stock_threshold(0);
        assert!(queue.busy.is_none(), "freed with the threshold cleared");
    }
}
