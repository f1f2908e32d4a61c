//! The monitor store's waiting path: FIFO order, no barging, time-outs that give back.

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use stockledger::{MonitorStore, Reservation, StockError, StockStore, WaitingStore};

type Store = Arc<MonitorStore<&'static str>>;
type Waiting = JoinHandle<Result<Reservation<&'static str>, StockError<&'static str>>>;

/// Long enough never to pass in these tests: they end by stock arriving, not by time.
const NEVER: Duration = Duration::from_secs(600);

/// Starts a waiter for `lines` and returns once it is queued on `sku` as the
/// `position`-th waiter (1-based).
fn wait_for(
    store: &Store,
    lines: &'static [(&'static str, u64)],
    timeout: Duration,
    sku: &'static str,
    position: usize,
) -> Waiting {
    let waiter = {
        let store = Arc::clone(store);
        thread::spawn(move || store.reserve_timeout(lines, timeout))
    };
    while store.queued(&sku) < position {
        thread::yield_now();
    }
    waiter
}

fn counts(store: &Store, sku: &'static str) -> (u64, u64) {
    let level = store.level(&sku).unwrap();
    (level.on_hand, level.reserved)
}

#[test]
fn available_stock_is_taken_at_once() {
    let store: Store = Arc::new(MonitorStore::new());
    store.restock(&"a", 2).unwrap();
    let hold = store.reserve_timeout(&[("a", 2)], Duration::ZERO).unwrap();
    assert_eq!(hold.lines(), &[("a", 2)]);
    assert_eq!(counts(&store, "a"), (2, 2));
}

#[test]
fn a_waiter_is_served_by_a_restock() {
    let store: Store = Arc::new(MonitorStore::new());
    store.restock(&"a", 1).unwrap();
    store.sell(&[("a", 1)]).unwrap();
    let waiter = wait_for(&store, &[("a", 1)], NEVER, "a", 1);
    store.restock(&"a", 1).unwrap();
    let hold = waiter.join().unwrap().unwrap();
    assert_eq!(store.queued(&"a"), 0);
    assert_eq!(counts(&store, "a"), (1, 1));
    store.commit(hold.id()).unwrap();
    assert_eq!(counts(&store, "a"), (0, 0));
}

#[test]
fn a_waiter_is_served_by_a_release() {
    let store: Store = Arc::new(MonitorStore::new());
    store.restock(&"a", 1).unwrap();
    let first = store.reserve(&[("a", 1)]).unwrap();
    let waiter = wait_for(&store, &[("a", 1)], NEVER, "a", 1);
    store.release(first.id()).unwrap();
    waiter.join().unwrap().unwrap();
    assert_eq!(counts(&store, "a"), (1, 1));
}

#[test]
fn waiters_are_served_in_arrival_order() {
    let store: Store = Arc::new(MonitorStore::new());
    store.restock(&"a", 1).unwrap();
    store.sell(&[("a", 1)]).unwrap();
    let big = wait_for(&store, &[("a", 2)], NEVER, "a", 1);
    let small = wait_for(&store, &[("a", 1)], NEVER, "a", 2);
    // One unit would satisfy the small waiter, but the big one arrived first.
    store.restock(&"a", 1).unwrap();
    assert_eq!(store.queued(&"a"), 2);
    assert_eq!(counts(&store, "a"), (1, 0));
    store.restock(&"a", 1).unwrap();
    big.join().unwrap().unwrap();
    assert_eq!(store.queued(&"a"), 1);
    assert_eq!(counts(&store, "a"), (2, 2));
    store.restock(&"a", 1).unwrap();
    small.join().unwrap().unwrap();
    assert_eq!(counts(&store, "a"), (3, 3));
}

#[test]
fn plain_calls_cannot_barge_past_a_queued_waiter() {
    let store: Store = Arc::new(MonitorStore::new());
    store.restock(&"a", 1).unwrap();
    let waiter = wait_for(&store, &[("a", 2)], NEVER, "a", 1);
    assert_eq!(store.level(&"a").unwrap().available(), 1);
    let barged = StockError::InsufficientStock {
        sku: "a",
        requested: 1,
        available: 0,
    };
    assert_eq!(store.reserve(&[("a", 1)]).unwrap_err(), barged);
    assert_eq!(store.sell(&[("a", 1)]).unwrap_err(), barged);
    store.restock(&"a", 1).unwrap();
    waiter.join().unwrap().unwrap();
    assert_eq!(counts(&store, "a"), (2, 2));
}

#[test]
fn a_timeout_gives_back_every_held_line() {
    let store: Store = Arc::new(MonitorStore::new());
    store.restock(&"a", 5).unwrap();
    store.restock(&"b", 1).unwrap();
    store.sell(&[("b", 1)]).unwrap();
    let version_a = store.level(&"a").unwrap().version;
    let error = store
        .reserve_timeout(&[("b", 1), ("a", 2)], Duration::from_millis(20))
        .unwrap_err();
    assert_eq!(error, StockError::Timeout);
    assert_eq!(counts(&store, "a"), (5, 0));
    assert_eq!(counts(&store, "b"), (0, 0));
    assert_eq!(store.queued(&"b"), 0);
    // `a` was held (ascending order) and given back: two changes.
    assert_eq!(store.level(&"a").unwrap().version, version_a + 2);
}

#[test]
fn a_timed_out_head_passes_the_turn_on() {
    let store: Store = Arc::new(MonitorStore::new());
    store.restock(&"a", 1).unwrap();
    let head = wait_for(&store, &[("a", 2)], Duration::from_millis(50), "a", 1);
    let next = wait_for(&store, &[("a", 1)], NEVER, "a", 2);
    assert_eq!(head.join().unwrap().unwrap_err(), StockError::Timeout);
    // The unit the head was entitled to goes to the next waiter without any new stock.
    let hold = next.join().unwrap().unwrap();
    assert_eq!(hold.lines(), &[("a", 1)]);
    assert_eq!(counts(&store, "a"), (1, 1));
}

#[test]
fn bad_waiting_requests_fail_before_waiting() {
    let store: Store = Arc::new(MonitorStore::new());
    store.restock(&"a", 1).unwrap();
    let cases = [
        (store.reserve_timeout(&[], NEVER), StockError::EmptyRequest),
        (
            store.reserve_timeout(&[("a", 0)], NEVER),
            StockError::InvalidQuantity { sku: "a" },
        ),
        (
            store.reserve_timeout(&[("a", 1), ("zz", 1)], NEVER),
            StockError::UnknownSku("zz"),
        ),
    ];
    for (result, expected) in cases {
        assert_eq!(result.unwrap_err(), expected);
    }
    assert_eq!(counts(&store, "a"), (1, 0));
    assert_eq!(store.level(&"a").unwrap().version, 1);
}
