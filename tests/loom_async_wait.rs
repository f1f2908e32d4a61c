#![cfg(loom)]
//! `reserve_wait` in the monitor store under loom: no lost wake-up of a task, a dropped
//! head passes the turn on, and a grant racing a drop gives the units to the next waiter
//! or back, never loses them.
//!
//! Async waiters run on `loom::future::block_on`, whose waker unparks a loom thread: a
//! grant whose wake-up is lost leaves that thread parked for ever, which loom reports as
//! a deadlock. A future that is polled once by hand (with a waker that does nothing) and
//! then dropped models a task cancelled while queued.
//!
//! Run: `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom_async_wait`

mod loom_common;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use loom::future::block_on;
use loom_common::{assert_noted, counts, explore, note, spawn, Sku, SKU};
use stockledger::{MonitorStore, ReserveOptions, StockStore};

/// A store holding `SKU` with nothing on hand (restocked once, sold out).
fn sold_out() -> Arc<MonitorStore<Sku>> {
    let store = Arc::new(MonitorStore::new());
    store.restock(&SKU, 1).unwrap();
    store.sell(&[(SKU, 1)]).unwrap();
    store
}

/// Polls `future` once with a waker that does nothing; `true` if it is still pending.
fn pending_after_one_poll<F: Future + Unpin>(future: &mut F) -> bool {
    let poll = pin!(future).poll(&mut Context::from_waker(Waker::noop()));
    matches!(poll, Poll::Pending)
}

/// A task waits for a unit that a restock brings: its wake-up is never lost, whether the
/// restock comes before it queues, while it queues, or while it is parked.
#[test]
fn task_gets_the_restock() {
    explore("task_gets_the_restock", sold_out, |store| {
        let waiter = spawn(&store, |store| {
            block_on(store.reserve_wait(&[(SKU, 1)], &ReserveOptions::new()))
        });
        store.restock(&SKU, 1).unwrap();
        let hold = waiter.join().unwrap().unwrap();
        assert_eq!(hold.lines(), &[(SKU, 1)]);
        assert_eq!(counts(&*store, SKU), (1, 1, 4));
        assert_eq!(store.queued(&SKU), 0);
    });
}

/// The head of the queue waits for 2 units and is dropped while a unit arrives; the task
/// behind it, waiting for 1 unit, must then get it (a head dropped without passing its
/// turn on strands the queue: loom reports a deadlock).
#[test]
fn dropped_head_passes_the_turn_on() {
    explore("dropped_head_passes_the_turn_on", sold_out, |store| {
        let mut head = store.reserve_wait(&[(SKU, 2)], &ReserveOptions::new());
        assert!(pending_after_one_poll(&mut head));
        let behind = spawn(&store, |store| {
            block_on(store.reserve_wait(&[(SKU, 1)], &ReserveOptions::new()))
        });
        let restocker = spawn(&store, |store| store.restock(&SKU, 1).map(|_| ()));
        drop(head);
        restocker.join().unwrap().unwrap();
        behind.join().unwrap().unwrap();
        assert_eq!(counts(&*store, SKU).1, 1);
        assert_eq!(store.queued(&SKU), 0);
    });
}

/// A restock grants the queued head while the head's future is dropped: whether the drop
/// comes before the grant (the head is unlinked) or after it (the grant is given back),
/// the unit reaches the waiter behind, and nothing is lost.
#[test]
fn grant_racing_a_drop_reaches_the_next_waiter() {
    explore(
        "grant_racing_a_drop_reaches_the_next_waiter",
        sold_out,
        |store| {
            let mut head = store.reserve_wait(&[(SKU, 1)], &ReserveOptions::new());
            assert!(pending_after_one_poll(&mut head));
            let mut behind = store.reserve_wait(&[(SKU, 1)], &ReserveOptions::new());
            assert!(pending_after_one_poll(&mut behind));
            let restocker = spawn(&store, |store| store.restock(&SKU, 1).map(|_| ()));
            drop(head);
            restocker.join().unwrap().unwrap();
            // `behind` was granted by the restock or by the drop; it picks the grant up.
            let hold = block_on(behind).unwrap();
            assert_eq!(hold.lines(), &[(SKU, 1)]);
            let (_, reserved, version) = counts(&*store, SKU);
            assert_eq!(reserved, 1);
            assert_eq!(store.queued(&SKU), 0);
            // Versions: sold out at 2, restock 3, then a grant to `behind` (4), or a grant
            // to the head, its release by the drop and a grant to `behind` (6).
            match version {
                4 => note("dropped before the grant"),
                6 => note("granted, then dropped"),
                other => panic!("version {other}"),
            }
        },
    );
    assert_noted(
        "grant_racing_a_drop_reaches_the_next_waiter",
        &["dropped before the grant", "granted, then dropped"],
    );
}

/// A restock grants the only waiter while its future is dropped: the unit goes back to
/// available, whichever comes first.
#[test]
fn grant_racing_a_drop_gives_the_units_back() {
    explore(
        "grant_racing_a_drop_gives_the_units_back",
        sold_out,
        |store| {
            let mut waiter = store.reserve_wait(&[(SKU, 1)], &ReserveOptions::new());
            assert!(pending_after_one_poll(&mut waiter));
            let restocker = spawn(&store, |store| store.restock(&SKU, 1).map(|_| ()));
            drop(waiter);
            restocker.join().unwrap().unwrap();
            let level = store.level(&SKU).unwrap();
            assert_eq!((level.on_hand, level.reserved), (1, 0), "the unit was lost");
            assert_eq!(store.queued(&SKU), 0);
            // Versions: sold out at 2, restock 3, or also a grant (4) and its release (5).
            match level.version {
                3 => note("dropped before the grant"),
                5 => note("granted, then dropped"),
                other => panic!("version {other}"),
            }
        },
    );
    assert_noted(
        "grant_racing_a_drop_gives_the_units_back",
        &["dropped before the grant", "granted, then dropped"],
    );
}

/// A two-line waiter holds `cable` while it waits for `dock`, and is dropped: it gives
/// `cable` back, and a task waiting for `cable` gets it (a drop that kept the line would
/// leave that task parked: a deadlock).
#[test]
fn dropped_multi_line_wait_gives_back_held_lines() {
    const CABLE: Sku = "cable";
    const DOCK: Sku = "dock";
    let two_skus = || {
        let store = Arc::new(MonitorStore::new());
        store.restock(&CABLE, 1).unwrap();
        store.restock(&DOCK, 1).unwrap();
        store.sell(&[(DOCK, 1)]).unwrap();
        store
    };
    explore(
        "dropped_multi_line_wait_gives_back_held_lines",
        two_skus,
        |store| {
            let mut both = store.reserve_wait(&[(DOCK, 1), (CABLE, 1)], &ReserveOptions::new());
            assert!(pending_after_one_poll(&mut both));
            let cable = spawn(&store, |store| {
                block_on(store.reserve_wait(&[(CABLE, 1)], &ReserveOptions::new()))
            });
            drop(both);
            cable.join().unwrap().unwrap();
            assert_eq!(counts(&*store, CABLE).1, 1);
            assert_eq!(counts(&*store, DOCK).1, 0);
            assert_eq!(store.queued(&CABLE) + store.queued(&DOCK), 0);
        },
    );
}

/// Negative controls: naive async waiters with the classic bugs, which loom must catch.
mod controls {
    use std::future::Future;
    use std::pin::Pin;
    // std's Arc on purpose (loom issue 291, see `loom_common`).
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use loom::sync::Mutex;
    use loom::thread;

    /// Stock and the waker of the one waiting task.
    #[derive(Default)]
    struct State {
        available: u64,
        waker: Option<Waker>,
    }

    /// A future for one unit that checks for stock and registers its waker under two
    /// separate locks: a restock in between wakes nobody (the lost wake-up).
    struct CheckThenRegister(Arc<Mutex<State>>);

    impl Future for CheckThenRegister {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            {
                let mut state = self.0.lock().unwrap();
                if state.available > 0 {
                    state.available -= 1;
                    return Poll::Ready(());
                }
            }
            // The bug: the lock was released between the check and the registration.
            self.0.lock().unwrap().waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn restock(state: &Mutex<State>) {
        let waker = {
            let mut state = state.lock().unwrap();
            state.available += 1;
            state.waker.take()
        };
        waker.into_iter().for_each(Waker::wake);
    }

    /// Wakes a loom thread parked in [`block_on`].
    struct Unpark(thread::Thread);

    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    /// `loom::future::block_on` with a waker behind `std::sync::Arc`: loom's own waker is a
    /// loom `Arc`, and dropping one while loom unwinds from the deadlock it reports aborts
    /// the process (loom issue 291), so `should_panic` would never see the panic.
    fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let waker = Waker::from(Arc::new(Unpark(thread::current())));
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut Context::from_waker(&waker)) {
                return output;
            }
            thread::park();
        }
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn check_then_register_loses_the_wake_up() {
        loom::model(|| {
            let state = Arc::new(Mutex::new(State::default()));
            let waiter = {
                let state = Arc::clone(&state);
                thread::spawn(move || block_on(CheckThenRegister(state)))
            };
            restock(&state);
            waiter.join().unwrap();
        });
    }

    /// A queue whose cancelled waiter unlinks itself when still queued but forgets a
    /// grant it had not picked up: a grant racing the drop loses the unit.
    #[derive(Default)]
    struct Queue {
        available: u64,
        reserved: u64,
        queued: bool,
        granted: bool,
    }

    fn grant(queue: &Mutex<Queue>) {
        let mut queue = queue.lock().unwrap();
        queue.available += 1;
        if queue.queued {
            queue.queued = false;
            queue.available -= 1;
            queue.reserved += 1;
            queue.granted = true;
        }
    }

    fn cancel(queue: &Mutex<Queue>) {
        let mut queue = queue.lock().unwrap();
        if !queue.granted {
            queue.queued = false;
        }
        // The bug: a grant not picked up yet (`granted`) is not given back.
    }

    #[test]
    #[should_panic(expected = "the unit was lost")]
    fn drop_that_forgets_its_grant_loses_the_unit() {
        loom::model(|| {
            let queue = Arc::new(Mutex::new(Queue {
                queued: true,
                ..Queue::default()
            }));
            let restocker = {
                let queue = Arc::clone(&queue);
                thread::spawn(move || grant(&queue))
            };
            cancel(&queue);
            restocker.join().unwrap();
            let queue = queue.lock().unwrap();
            assert_eq!(
                (queue.available, queue.reserved),
                (1, 0),
                "the unit was lost"
            );
        });
    }
}
