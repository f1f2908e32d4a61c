#![cfg(loom)]
//! Wait/notify in the monitor store (the only [`WaitingStore`]): no lost wake-up, FIFO
//! service, and a waiter that times out passes its turn on and gives back what it held.
//!
//! How the time-out path is modelled (see `Condvar` in `src/sync.rs`, `mocked` module):
//! loom has no clock, so the length of a timeout selects what the deadline does.
//! `Duration::MAX` never passes: the waiter wakes only when notified, so a lost wake-up
//! shows up as a loom "deadlock". `PASSES_WHILE_WAITING` (any finite, non-zero timeout) passes
//! while the waiter waits, at a moment loom picks: the waiter releases the monitor's
//! mutex, and when it takes it again its deadline has passed, unless it was granted first.
//!
//! Run: `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom_wait_notify`

mod loom_common;

use std::sync::Arc;
use std::time::Duration;

use loom_common::{counts, explore, spawn, Sku, SKU};
use stockledger::{MonitorStore, StockError, StockStore, WaitingStore};

/// A timeout that never passes.
const NEVER: Duration = Duration::MAX;
/// A timeout that passes while the caller waits, at a moment loom picks.
const PASSES_WHILE_WAITING: Duration = Duration::from_secs(3600);

/// A monitor store holding `sku` with nothing on hand (restocked once, sold out).
fn sold_out(store: &MonitorStore<Sku>, sku: Sku) {
    store.restock(&sku, 1).unwrap();
    store.sell(&[(sku, 1)]).unwrap();
}

/// A waiter and a restocker: the restock's notification is never lost, whether it comes
/// before the waiter queues, while it queues, or while it waits.
fn waiter_gets_the_restock(store: MonitorStore<Sku>) {
    let store = Arc::new(store);
    sold_out(&store, SKU);
    let waiter = spawn(&store, |store| store.reserve_timeout(&[(SKU, 1)], NEVER));
    store.restock(&SKU, 1).unwrap();
    let hold = waiter.join().unwrap().unwrap();
    assert_eq!(hold.lines(), &[(SKU, 1)]);
    assert_eq!(counts(&*store, SKU), (1, 1, 4));
    assert_eq!(store.queued(&SKU), 0);
}

#[test]
fn waiter_gets_the_restock_monitor() {
    explore(
        "waiter_gets_the_restock::monitor",
        MonitorStore::new,
        waiter_gets_the_restock,
    );
}

/// A waiter and a release of the hold it waits behind: the release wakes it.
fn release_wakes_the_waiter(store: MonitorStore<Sku>) {
    let store = Arc::new(store);
    store.restock(&SKU, 1).unwrap();
    let first = store.reserve(&[(SKU, 1)]).unwrap();
    let waiter = spawn(&store, |store| store.reserve_timeout(&[(SKU, 1)], NEVER));
    store.release(first.id()).unwrap();
    waiter.join().unwrap().unwrap();
    assert_eq!(counts(&*store, SKU), (1, 1, 4));
}

#[test]
fn release_wakes_the_waiter_monitor() {
    explore(
        "release_wakes_the_waiter::monitor",
        MonitorStore::new,
        release_wakes_the_waiter,
    );
}

/// Waits (yielding to loom) until `count` waiters are queued on `sku`.
fn until_queued(store: &MonitorStore<Sku>, sku: Sku, count: usize) {
    while store.queued(&sku) < count {
        loom::thread::yield_now();
    }
}

/// Two waiters, the first for 2 units, the second for 1: stock goes to them in arrival
/// order. The second never takes a unit the first is waiting for, and neither does a
/// non-waiting hold (no barging).
fn waiters_served_in_arrival_order(store: MonitorStore<Sku>) {
    let store = Arc::new(store);
    sold_out(&store, SKU);
    let first = spawn(&store, |store| store.reserve_timeout(&[(SKU, 2)], NEVER));
    until_queued(&store, SKU, 1);
    let second = spawn(&store, |store| store.reserve_timeout(&[(SKU, 1)], NEVER));
    until_queued(&store, SKU, 2);

    let level = store.restock(&SKU, 1).unwrap();
    assert_eq!(level.reserved, 0, "the second waiter barged past the first");
    assert_eq!(
        store.reserve(&[(SKU, 1)]).unwrap_err(),
        StockError::InsufficientStock {
            sku: SKU,
            requested: 1,
            available: 0
        },
        "a non-waiting hold barged past the waiters"
    );
    store.restock(&SKU, 1).unwrap();
    first.join().unwrap().unwrap();
    store.restock(&SKU, 1).unwrap();
    second.join().unwrap().unwrap();
    assert_eq!(counts(&*store, SKU).0, 3);
    assert_eq!(counts(&*store, SKU).1, 3);
}

#[test]
fn waiters_served_in_arrival_order_monitor() {
    explore(
        "waiters_served_in_arrival_order::monitor",
        MonitorStore::new,
        waiters_served_in_arrival_order,
    );
}

/// The head of the queue waits for 2 units and times out; the waiter behind it, for 1
/// unit, must then be served from the unit restocked meanwhile (a head that times out
/// without passing its turn on strands the rest of the queue: loom reports a deadlock).
fn timed_out_head_passes_the_turn_on(store: MonitorStore<Sku>) {
    let store = Arc::new(store);
    sold_out(&store, SKU);
    let head = spawn(&store, |store| {
        store.reserve_timeout(&[(SKU, 2)], PASSES_WHILE_WAITING)
    });
    let behind = spawn(&store, |store| store.reserve_timeout(&[(SKU, 1)], NEVER));
    store.restock(&SKU, 1).unwrap();
    assert_eq!(head.join().unwrap(), Err(StockError::Timeout));
    behind.join().unwrap().unwrap();
    assert_eq!(counts(&*store, SKU).0, 1);
    assert_eq!(counts(&*store, SKU).1, 1);
    assert_eq!(store.queued(&SKU), 0);
}

#[test]
fn timed_out_head_passes_the_turn_on_monitor() {
    explore(
        "timed_out_head_passes_the_turn_on::monitor",
        MonitorStore::new,
        timed_out_head_passes_the_turn_on,
    );
}

/// A two-line waiter holds `cable` while it waits for `dock`, which never comes: when it
/// times out it gives `cable` back, and a waiter for `cable` gets it.
fn timeout_gives_back_held_lines(store: MonitorStore<Sku>) {
    const CABLE: Sku = "cable";
    const DOCK: Sku = "dock";
    let store = Arc::new(store);
    store.restock(&CABLE, 1).unwrap();
    sold_out(&store, DOCK);
    let both = spawn(&store, |store| {
        store.reserve_timeout(&[(DOCK, 1), (CABLE, 1)], PASSES_WHILE_WAITING)
    });
    let cable = spawn(&store, |store| store.reserve_timeout(&[(CABLE, 1)], NEVER));
    assert_eq!(both.join().unwrap(), Err(StockError::Timeout));
    cable.join().unwrap().unwrap();
    assert_eq!(counts(&*store, CABLE).0, 1);
    assert_eq!(counts(&*store, CABLE).1, 1);
    assert_eq!(counts(&*store, DOCK).1, 0);
    assert_eq!(store.queued(&CABLE) + store.queued(&DOCK), 0);
}

#[test]
fn timeout_gives_back_held_lines_monitor() {
    explore(
        "timeout_gives_back_held_lines::monitor",
        MonitorStore::new,
        timeout_gives_back_held_lines,
    );
}

/// Negative controls: naive monitors with the classic wait/notify bugs, which loom must
/// catch.
mod controls {
    use std::collections::VecDeque;
    // std's Arc on purpose: a loom Arc dropped during a deadlock report aborts the
    // process (loom issue 291), so `should_panic` would never see the panic.
    use std::sync::Arc;

    use loom::sync::atomic::{AtomicU64, Ordering};
    use loom::sync::{Condvar, Mutex};
    use loom::thread;

    /// A waiter checks for stock with `if` instead of `while`, so it takes a unit that an
    /// earlier waiter took after the same `notify_all`.
    struct IfInsteadOfWhile {
        on_hand: Mutex<u64>,
        restocked: Condvar,
    }

    impl IfInsteadOfWhile {
        fn take_one(&self) {
            let mut on_hand = self.on_hand.lock().unwrap();
            if *on_hand == 0 {
                on_hand = self.restocked.wait(on_hand).unwrap();
            }
            *on_hand = on_hand.checked_sub(1).expect("oversold");
        }

        fn restock(&self, units: u64) {
            *self.on_hand.lock().unwrap() += units;
            self.restocked.notify_all();
        }
    }

    #[test]
    #[should_panic(expected = "oversold")]
    fn if_instead_of_while() {
        loom::model(|| {
            let store = Arc::new(IfInsteadOfWhile {
                on_hand: Mutex::new(0),
                restocked: Condvar::new(),
            });
            let waiters = [(); 2].map(|()| {
                let store = Arc::clone(&store);
                thread::spawn(move || store.take_one())
            });
            store.restock(1);
            store.restock(1);
            for waiter in waiters {
                waiter.join().unwrap();
            }
        });
    }

    /// The restocker changes on hand and notifies without taking the waiter's mutex, so
    /// the notification can fall between the waiter's check and its wait.
    struct NotifyWithoutMutex {
        on_hand: AtomicU64,
        mutex: Mutex<()>,
        restocked: Condvar,
    }

    impl NotifyWithoutMutex {
        fn take_one(&self) {
            let mut guard = self.mutex.lock().unwrap();
            while self.on_hand.load(Ordering::SeqCst) == 0 {
                guard = self.restocked.wait(guard).unwrap();
            }
            self.on_hand.fetch_sub(1, Ordering::SeqCst);
        }

        fn restock(&self, units: u64) {
            self.on_hand.fetch_add(units, Ordering::SeqCst);
            self.restocked.notify_all();
        }
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn notify_without_the_mutex() {
        loom::model(|| {
            let store = Arc::new(NotifyWithoutMutex {
                on_hand: AtomicU64::new(0),
                mutex: Mutex::new(()),
                restocked: Condvar::new(),
            });
            let waiter = {
                let store = Arc::clone(&store);
                thread::spawn(move || store.take_one())
            };
            store.restock(1);
            waiter.join().unwrap();
        });
    }

    /// A FIFO monitor like the store's, whose timed-out waiter leaves the queue without
    /// serving the waiters behind it.
    struct NoHandOffOnTimeout {
        state: Mutex<State>,
        granted: Condvar,
    }

    #[derive(Default)]
    struct State {
        available: u64,
        /// `(ticket, units)` in arrival order.
        queue: VecDeque<(u64, u64)>,
        next_ticket: u64,
    }

    impl State {
        fn grant_waiters(&mut self) -> bool {
            let mut granted = false;
            while let Some(&(_, units)) = self.queue.front() {
                if units > self.available {
                    break;
                }
                self.available -= units;
                self.queue.pop_front();
                granted = true;
            }
            granted
        }
    }

    impl NoHandOffOnTimeout {
        fn restock(&self, units: u64) {
            let mut state = self.state.lock().unwrap();
            state.available += units;
            if state.grant_waiters() {
                self.granted.notify_all();
            }
        }

        /// Waits for `units`; with `times_out` the deadline passes while waiting, modelled
        /// as in `src/sync.rs`: the mutex is released and taken again.
        fn reserve_waiting(&self, units: u64, times_out: bool) -> bool {
            let mut state = self.state.lock().unwrap();
            if state.queue.is_empty() && state.available >= units {
                state.available -= units;
                return true;
            }
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.queue.push_back((ticket, units));
            loop {
                if times_out {
                    drop(state);
                    state = self.state.lock().unwrap();
                } else {
                    state = self.granted.wait(state).unwrap();
                }
                if state.queue.front().is_none_or(|&(head, _)| head > ticket) {
                    return true;
                }
                if times_out {
                    state.queue.retain(|&(waiter, _)| waiter != ticket);
                    // The bug: no `grant_waiters` + `notify_all` here.
                    return false;
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn timed_out_head_without_hand_off() {
        loom::model(|| {
            let store = Arc::new(NoHandOffOnTimeout {
                state: Mutex::new(State::default()),
                granted: Condvar::new(),
            });
            let head = {
                let store = Arc::clone(&store);
                thread::spawn(move || store.reserve_waiting(2, true))
            };
            let behind = {
                let store = Arc::clone(&store);
                thread::spawn(move || store.reserve_waiting(1, false))
            };
            store.restock(1);
            head.join().unwrap();
            behind.join().unwrap();
        });
    }
}
