#![cfg(loom)]
//! The time-deal deadlock, from a real incident: every option line of an order also takes
//! its parent item, so orders lock the item and its options in different request orders.
//!
//! Order A = [option 230, item, option 240, item], order B = [option 240, item],
//! order C = [item, option 230], on three threads. Locking rows in request order
//! deadlocks (A holds option 230 and waits for the item, C holds the item and waits for
//! option 230: the control below); the stores take SKUs in ascending order (Havender's
//! ordered acquisition), so every interleaving finishes (loom panics with "deadlock"
//! otherwise), each order is all or nothing, and the item's on hand always equals the sum
//! of its options' on hand.
//!
//! Run: `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom_time_deal`

mod loom_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loom_common::{counts, explore, on_every_store, spawn, Outcome, Sku};
use stockledger::{MonitorStore, StockError, StockStore, WaitingStore};

const ITEM: Sku = "item";
const OPTION_230: Sku = "option 230";
const OPTION_240: Sku = "option 240";

const ORDER_A: &[(Sku, u64)] = &[(OPTION_230, 1), (ITEM, 1), (OPTION_240, 1), (ITEM, 1)];
const ORDER_B: &[(Sku, u64)] = &[(OPTION_240, 1), (ITEM, 1)];
const ORDER_C: &[(Sku, u64)] = &[(ITEM, 1), (OPTION_230, 1)];

/// An order's lines and how it ended.
type Ended = (&'static [(Sku, u64)], Outcome<()>);

/// Units restocked: one option 230 and two option 240, so A and C compete for option 230,
/// and the item's on hand is the sum of its options'.
const RESTOCK: [(Sku, u64); 3] = [(ITEM, 3), (OPTION_230, 1), (OPTION_240, 2)];

/// Restocks the deal and returns the shared store.
fn stock_the_deal<S: StockStore<Sku>>(store: S) -> Arc<S> {
    for (sku, units) in RESTOCK {
        store.restock(&sku, units).unwrap();
    }
    Arc::new(store)
}

/// Checks that every order was all or nothing, and that the item still equals the sum of
/// its options: on hand is what was restocked minus exactly the orders that succeeded,
/// and `reserved` is exactly the holds still open (`held` of the orders that succeeded).
/// A refused order was refused for `refusal` (`InsufficientStock`, or `Timeout` when
/// waiting), nothing else.
fn assert_all_or_nothing<S: StockStore<Sku>>(
    store: &S,
    orders: [Ended; 3],
    held: bool,
    refusal: fn(&StockError<Sku>) -> bool,
) {
    for (sku, restocked) in RESTOCK {
        let taken: u64 = orders
            .iter()
            .filter(|(_, outcome)| outcome.is_ok())
            .flat_map(|(lines, _)| lines.iter())
            .filter(|(line_sku, _)| *line_sku == sku)
            .map(|(_, units)| units)
            .sum();
        let (on_hand, reserved, _) = counts(store, sku);
        let expected = if held {
            (restocked, taken)
        } else {
            (restocked - taken, 0)
        };
        assert_eq!((on_hand, reserved), expected, "{sku}: {orders:?}");
    }
    for (_, outcome) in &orders {
        assert!(outcome.as_ref().err().is_none_or(refusal), "{outcome:?}");
    }
    let (item, item_reserved, _) = counts(store, ITEM);
    let (option_230, option_230_reserved, _) = counts(store, OPTION_230);
    let (option_240, option_240_reserved, _) = counts(store, OPTION_240);
    assert_eq!(item, option_230 + option_240, "item = sum of its options");
    assert_eq!(
        item_reserved,
        option_230_reserved + option_240_reserved,
        "held items = sum of held options"
    );
}

/// The three orders as direct sales.
fn orders_sold<S: StockStore<Sku> + 'static>(store: S) {
    let store = stock_the_deal(store);
    let a = spawn(&store, |store| store.sell(ORDER_A));
    let b = spawn(&store, |store| store.sell(ORDER_B));
    let c = store.sell(ORDER_C);
    let orders = [
        (ORDER_A, a.join().unwrap()),
        (ORDER_B, b.join().unwrap()),
        (ORDER_C, c),
    ];
    assert_all_or_nothing(&*store, orders, false, insufficient);
}

/// The three orders as holds (checkout); the holds then stay open.
fn orders_held<S: StockStore<Sku> + 'static>(store: S) {
    let store = stock_the_deal(store);
    let hold = |store: &S, order| store.reserve(order).map(|_| ());
    let a = spawn(&store, move |store| hold(store, ORDER_A));
    let b = spawn(&store, move |store| hold(store, ORDER_B));
    let c = hold(&store, ORDER_C);
    let orders = [
        (ORDER_A, a.join().unwrap()),
        (ORDER_B, b.join().unwrap()),
        (ORDER_C, c),
    ];
    assert_all_or_nothing(&*store, orders, true, insufficient);
}

on_every_store!(orders_sold, orders_held);

/// The refusal of a non-waiting order.
fn insufficient(error: &StockError<Sku>) -> bool {
    matches!(error, StockError::InsufficientStock { .. })
}

/// The three orders as waiting holds on the monitor store, each with a deadline that
/// passes while it waits (see `tests/loom_wait_notify.rs`): a waiting order holds its
/// earlier lines while it waits for a later one, in ascending SKU order, so the waits
/// never form a cycle. Every order ends held or timed out with nothing held.
fn orders_waiting(store: MonitorStore<Sku>) {
    const TIMEOUT: Duration = Duration::from_secs(3600);
    let store = stock_the_deal(store);
    let a = spawn(&store, |store| {
        store.reserve_timeout(ORDER_A, TIMEOUT).map(|_| ())
    });
    let b = spawn(&store, |store| {
        store.reserve_timeout(ORDER_B, TIMEOUT).map(|_| ())
    });
    let c = store.reserve_timeout(ORDER_C, TIMEOUT).map(|_| ());
    let orders = [
        (ORDER_A, a.join().unwrap()),
        (ORDER_B, b.join().unwrap()),
        (ORDER_C, c),
    ];
    assert_all_or_nothing(&*store, orders, true, |error| *error == StockError::Timeout);
    for (sku, _) in RESTOCK {
        assert_eq!(store.queued(&sku), 0);
    }
    let stats = store.stats();
    WAITED.fetch_add(stats.waits, Ordering::Relaxed);
    TIMED_OUT.fetch_add(stats.timeouts, Ordering::Relaxed);
}

/// Lines of `orders_waiting` that queued, and its orders that timed out, over all its
/// interleavings.
static WAITED: AtomicU64 = AtomicU64::new(0);
static TIMED_OUT: AtomicU64 = AtomicU64::new(0);

#[test]
fn orders_waiting_monitor() {
    explore("orders_waiting::monitor", MonitorStore::new, orders_waiting);
    // The model reached the waiting and the time-out paths.
    assert!(WAITED.load(Ordering::Relaxed) > 0, "no order ever waited");
    assert!(
        TIMED_OUT.load(Ordering::Relaxed) > 0,
        "no order ever timed out"
    );
}

/// Negative control: row locks taken in request order, which loom must find deadlocking.
mod controls {
    use std::collections::BTreeMap;
    // std's Arc on purpose: a loom Arc dropped during the deadlock report aborts the
    // process (loom issue 291), so `should_panic` would never see the panic.
    use std::sync::Arc;

    use loom::sync::{Mutex, MutexGuard};
    use loom::thread;

    use super::{Sku, ORDER_A, ORDER_B, ORDER_C, RESTOCK};

    /// One mutex per row, locked the first time a line names it, in request order.
    struct RequestOrderRows(BTreeMap<Sku, Mutex<u64>>);

    impl RequestOrderRows {
        fn sell(&self, lines: &[(Sku, u64)]) -> bool {
            let mut locked: Vec<(Sku, MutexGuard<'_, u64>)> = Vec::new();
            for (sku, _) in lines {
                if locked.iter().all(|(held, _)| held != sku) {
                    locked.push((sku, self.0[sku].lock().unwrap()));
                }
            }
            let wanted = |sku: Sku| -> u64 {
                lines
                    .iter()
                    .filter(|(line, _)| *line == sku)
                    .map(|(_, units)| units)
                    .sum()
            };
            if locked.iter().any(|(sku, on_hand)| **on_hand < wanted(sku)) {
                return false;
            }
            for (sku, on_hand) in &mut locked {
                **on_hand -= wanted(sku);
            }
            true
        }
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn rows_locked_in_request_order() {
        loom::model(|| {
            let rows = RESTOCK.map(|(sku, units)| (sku, Mutex::new(units)));
            let store = Arc::new(RequestOrderRows(rows.into_iter().collect()));
            let orders = [ORDER_A, ORDER_B].map(|order| {
                let store = Arc::clone(&store);
                thread::spawn(move || store.sell(order))
            });
            store.sell(ORDER_C);
            for order in orders {
                order.join().unwrap();
            }
        });
    }
}
