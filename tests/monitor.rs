//! The waiting path: FIFO order, no barging, time-outs that give back. The first tests
//! run on every waiting store (the monitor store, and with feature `redis` a `RedisStore`:
//! on a Redis Cluster when `STOCKLEDGER_REDIS_CLUSTER` names its seeds, as `.ci/run` does,
//! else on the shared test server); the bound on waiters and the honest read after them
//! are the monitor store's own.

mod common;

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use stockledger::{MonitorStore, Reservation, StockError, StockStore, WaitingStore};

type Store = Arc<MonitorStore<&'static str>>;
type Waiting = JoinHandle<Result<Reservation<&'static str>, StockError<&'static str>>>;

/// A waiting store under test, with how many waiters are queued on a SKU.
trait Waits: WaitingStore<&'static str> + Send + Sync {
    fn queued_on(&self, sku: &'static str) -> usize;
}

impl Waits for MonitorStore<&'static str> {
    fn queued_on(&self, sku: &'static str) -> usize {
        self.queued(&sku)
    }
}

#[cfg(feature = "redis")]
impl Waits for stockledger::RedisStore<&'static str> {
    fn queued_on(&self, sku: &'static str) -> usize {
        self.queued(&sku).expect("the test server answers")
    }
}

/// Any waiting store.
type AnyStore = Arc<dyn Waits>;

/// Every waiting store, freshly built, with its name for failure messages.
fn waiting_stores() -> Vec<(&'static str, AnyStore)> {
    vec![
        ("monitor", Arc::new(MonitorStore::new())),
        #[cfg(feature = "redis")]
        ("redis", Arc::new(redis_store())),
    ]
}

/// A `RedisStore` with `&'static str` SKUs in a namespace of its own: on the cluster of
/// `STOCKLEDGER_REDIS_CLUSTER` when it is set, else on the shared test server.
#[cfg(feature = "redis")]
fn redis_store() -> stockledger::RedisStore<&'static str> {
    let namespace = common::redis_server::fresh_namespace("monitor");
    match std::env::var(common::REDIS_CLUSTER_VAR) {
        Ok(seeds) => stockledger::RedisCluster::new(seeds.split(',').map(String::from))
            .store(&namespace)
            .build(),
        Err(_) => {
            stockledger::RedisStore::builder(&common::redis_server::shared().url(), &namespace)
                .build()
        }
    }
    .expect("the test server answers")
}

/// Starts a waiter for `lines` on a waiting store and returns once it is queued on `sku`
/// as the `position`-th waiter (1-based).
fn wait_on<S: Waits + ?Sized + 'static>(
    store: &Arc<S>,
    lines: &'static [(&'static str, u64)],
    timeout: Duration,
    sku: &'static str,
    position: usize,
) -> Waiting {
    let waiter = {
        let store = Arc::clone(store);
        thread::spawn(move || store.reserve_timeout(lines, timeout))
    };
    while store.queued_on(sku) < position {
        thread::yield_now();
    }
    waiter
}

fn counts_of<S: Waits + ?Sized>(store: &Arc<S>, sku: &'static str) -> (u64, u64) {
    let level = store.level(&sku).unwrap();
    (level.on_hand, level.reserved)
}

/// Long enough never to pass in these tests: they end by stock arriving, not by time.
const NEVER: Duration = Duration::from_secs(600);

#[test]
fn available_stock_is_taken_at_once() {
    for (name, store) in waiting_stores() {
        eprintln!("store: {name}");
        store.restock(&"a", 2).unwrap();
        let hold = store.reserve_timeout(&[("a", 2)], Duration::ZERO).unwrap();
        assert_eq!(hold.lines(), &[("a", 2)]);
        assert_eq!(counts_of(&store, "a"), (2, 2));
    }
}

#[test]
fn a_waiter_is_served_by_a_restock() {
    for (name, store) in waiting_stores() {
        eprintln!("store: {name}");
        store.restock(&"a", 1).unwrap();
        store.sell(&[("a", 1)]).unwrap();
        let waiter = wait_on(&store, &[("a", 1)], NEVER, "a", 1);
        store.restock(&"a", 1).unwrap();
        let hold = waiter.join().unwrap().unwrap();
        assert_eq!(store.queued_on("a"), 0);
        assert_eq!(counts_of(&store, "a"), (1, 1));
        store.commit(hold.id()).unwrap();
        assert_eq!(counts_of(&store, "a"), (0, 0));
    }
}

#[test]
fn a_waiter_is_served_by_a_release() {
    for (name, store) in waiting_stores() {
        eprintln!("store: {name}");
        store.restock(&"a", 1).unwrap();
        let first = store.reserve(&[("a", 1)]).unwrap();
        let waiter = wait_on(&store, &[("a", 1)], NEVER, "a", 1);
        store.release(first.id()).unwrap();
        waiter.join().unwrap().unwrap();
        assert_eq!(counts_of(&store, "a"), (1, 1));
    }
}

#[test]
fn waiters_are_served_in_arrival_order() {
    for (name, store) in waiting_stores() {
        eprintln!("store: {name}");
        store.restock(&"a", 1).unwrap();
        store.sell(&[("a", 1)]).unwrap();
        let big = wait_on(&store, &[("a", 2)], NEVER, "a", 1);
        let small = wait_on(&store, &[("a", 1)], NEVER, "a", 2);
        // One unit would satisfy the small waiter, but the big one arrived first.
        store.restock(&"a", 1).unwrap();
        assert_eq!(store.queued_on("a"), 2);
        assert_eq!(counts_of(&store, "a"), (1, 0));
        store.restock(&"a", 1).unwrap();
        big.join().unwrap().unwrap();
        assert_eq!(store.queued_on("a"), 1);
        assert_eq!(counts_of(&store, "a"), (2, 2));
        store.restock(&"a", 1).unwrap();
        small.join().unwrap().unwrap();
        assert_eq!(counts_of(&store, "a"), (3, 3));
    }
}

#[test]
fn plain_calls_cannot_barge_past_a_queued_waiter() {
    for (name, store) in waiting_stores() {
        eprintln!("store: {name}");
        store.restock(&"a", 1).unwrap();
        let waiter = wait_on(&store, &[("a", 2)], NEVER, "a", 1);
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
        assert_eq!(counts_of(&store, "a"), (2, 2));
    }
}

#[test]
fn a_timeout_gives_back_every_held_line() {
    for (name, store) in waiting_stores() {
        eprintln!("store: {name}");
        store.restock(&"a", 5).unwrap();
        store.restock(&"b", 1).unwrap();
        store.sell(&[("b", 1)]).unwrap();
        let version_a = store.level(&"a").unwrap().version;
        let error = store
            .reserve_timeout(&[("b", 1), ("a", 2)], Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(error, StockError::Timeout);
        assert_eq!(counts_of(&store, "a"), (5, 0));
        assert_eq!(counts_of(&store, "b"), (0, 0));
        assert_eq!(store.queued_on("b"), 0);
        // `a` was held (ascending order) and given back: two changes.
        assert_eq!(store.level(&"a").unwrap().version, version_a + 2);
    }
}

#[test]
fn a_timed_out_head_passes_the_turn_on() {
    for (name, store) in waiting_stores() {
        eprintln!("store: {name}");
        store.restock(&"a", 1).unwrap();
        let head = wait_on(&store, &[("a", 2)], Duration::from_millis(50), "a", 1);
        let next = wait_on(&store, &[("a", 1)], NEVER, "a", 2);
        assert_eq!(head.join().unwrap().unwrap_err(), StockError::Timeout);
        // The unit the head was entitled to goes to the next waiter without any new stock.
        let hold = next.join().unwrap().unwrap();
        assert_eq!(hold.lines(), &[("a", 1)]);
        assert_eq!(counts_of(&store, "a"), (1, 1));
    }
}

#[test]
fn bad_waiting_requests_fail_before_waiting() {
    for (name, store) in waiting_stores() {
        eprintln!("store: {name}");
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
        assert_eq!(counts_of(&store, "a"), (1, 0));
        assert_eq!(store.level(&"a").unwrap().version, 1);
    }
}

// ------------------------------------------- the bound on waiters and the honest read

/// A store whose waiters may wait for `wait_units_max` units beyond on hand.
fn bounded(wait_units_max: u64) -> Store {
    Arc::new(
        MonitorStore::builder()
            .wait_units_max(wait_units_max)
            .build(),
    )
}

/// Whether `sku` is frozen: it has units available, yet a non-waiting caller can take none.
fn frozen(store: &Store, sku: &'static str) -> bool {
    let queue = store.queue_level(&sku).unwrap();
    queue.level.available() > 0 && queue.available_now == 0
}

/// The read and the refusal agree while a waiter keeps the units on hand for itself: the
/// read says 0 for a non-waiting caller and 5 units queued, and a sale of 1 is refused with
/// exactly that `available` (before, `level().available()` said 3 and nothing said 0).
#[test]
fn the_read_agrees_with_the_refusal_while_a_waiter_is_queued() {
    let store: Store = Arc::new(MonitorStore::new());
    store.restock(&"a", 3).unwrap();
    let waiter = wait_on(&store, &[("a", 5)], NEVER, "a", 1);
    let queue = store.queue_level(&"a").unwrap();
    assert_eq!(queue.level, store.level(&"a").unwrap());
    assert_eq!(queue.level.available(), 3);
    assert_eq!(queue.available_now, 0);
    assert_eq!((queue.queued_units, queue.waiters), (5, 1));
    assert_eq!(queue.wait_room, 3 + MonitorStore::<&str>::WAIT_UNITS_MAX);
    assert_eq!(
        store.sell(&[("a", 1)]).unwrap_err(),
        StockError::InsufficientStock {
            sku: "a",
            requested: 1,
            available: queue.available_now,
        }
    );
    store.restock(&"a", 2).unwrap();
    waiter.join().unwrap().unwrap();
    let served = store.queue_level(&"a").unwrap();
    assert_eq!(
        (served.available_now, served.queued_units, served.waiters),
        (0, 0, 0)
    );
    assert_eq!(served.level.available(), served.available_now);
}

/// A waiter for more than the SKU's wait room is refused at once (here a 5 s timeout would
/// otherwise end it with `Timeout`), nothing queues, and the SKU stays on sale.
#[test]
fn a_waiter_beyond_the_wait_room_is_refused_at_once_and_the_sku_stays_on_sale() {
    let store: Store = Arc::new(MonitorStore::new());
    store.restock(&"a", 3).unwrap();
    let limit = 3 + MonitorStore::<&str>::WAIT_UNITS_MAX;
    let refused = StockError::WaitTooLarge {
        sku: "a",
        requested: 1_000,
        limit,
    };
    let blocking = store.reserve_timeout(&[("a", 1_000)], Duration::from_secs(5));
    assert_eq!(blocking.unwrap_err(), refused);
    let options = stockledger::ReserveOptions::new();
    let future = futures_executor::block_on(store.reserve_wait(&[("a", 1_000)], &options));
    assert_eq!(future.unwrap_err(), refused);
    assert_eq!(store.queued(&"a"), 0);
    assert!(!frozen(&store, "a"));
    store.sell(&[("a", 1)]).unwrap();
    assert_eq!(counts_of(&store, "a"), (2, 0));
    assert_eq!(store.stats().waits, 0, "it never queued");
    // A request that fits the room waits as before (on hand 2: the room is 102).
    assert_eq!(limit - 1, 102);
    let fits = wait_on(&store, &[("a", 102)], NEVER, "a", 1);
    store.restock(&"a", 100).unwrap();
    fits.join().unwrap().unwrap();
}

/// Negative control: with no bound (`u64::MAX`, the old behaviour), the same waiter for
/// 1,000 units queues and freezes the SKU: `frozen` catches it, and every sale is refused.
#[test]
fn negative_control_an_unbounded_waiter_is_caught_freezing_a_sku() {
    let store = bounded(u64::MAX);
    store.restock(&"a", 3).unwrap();
    assert!(!frozen(&store, "a"));
    let waiter = wait_on(&store, &[("a", 1_000)], NEVER, "a", 1);
    assert!(frozen(&store, "a"), "the unbounded waiter froze the SKU");
    assert!(matches!(
        store.sell(&[("a", 1)]),
        Err(StockError::InsufficientStock { available: 0, .. })
    ));
    store.restock(&"a", 997).unwrap();
    waiter.join().unwrap().unwrap();
    assert!(!frozen(&store, "a"));
}

/// The room bounds each waiter by its SKU's on hand (held units included) plus the
/// setting: many small waiters all queue, one too large is refused, and the room grows
/// with a restock.
#[test]
fn the_wait_room_bounds_each_waiter_by_on_hand_plus_the_setting() {
    let store = bounded(4);
    store.restock(&"a", 2).unwrap();
    let held = store.reserve(&[("a", 2)]).unwrap(); // on hand 2, none available
    assert_eq!(store.queue_level(&"a").unwrap().wait_room, 6);
    let first = wait_on(&store, &[("a", 6)], NEVER, "a", 1);
    assert_eq!(
        store.reserve_timeout(&[("a", 7)], NEVER).unwrap_err(),
        StockError::WaitTooLarge {
            sku: "a",
            requested: 7,
            limit: 6,
        }
    );
    let second = wait_on(&store, &[("a", 6)], NEVER, "a", 2);
    let queue = store.queue_level(&"a").unwrap();
    assert_eq!(
        (queue.queued_units, queue.waiters, queue.wait_room),
        (12, 2, 6)
    );
    store.restock(&"a", 10).unwrap(); // on hand 12: the room is 16
    assert_eq!(store.queue_level(&"a").unwrap().wait_room, 16);
    store.release(held.id()).unwrap();
    first.join().unwrap().unwrap();
    second.join().unwrap().unwrap();
    assert_eq!(counts_of(&store, "a"), (12, 12));
}

/// A multi-line request whose later line does not fit is refused before any line is held:
/// the earlier SKU's counts and version are untouched.
#[test]
fn a_multi_line_waiter_beyond_the_room_holds_nothing() {
    let store = bounded(0);
    store.restock(&"a", 5).unwrap();
    store.restock(&"b", 1).unwrap();
    let version_a = store.level(&"a").unwrap().version;
    assert_eq!(
        store
            .reserve_timeout(&[("a", 2), ("b", 2)], Duration::from_secs(5))
            .unwrap_err(),
        StockError::WaitTooLarge {
            sku: "b",
            requested: 2,
            limit: 1,
        }
    );
    assert_eq!(counts_of(&store, "a"), (5, 0));
    assert_eq!(store.level(&"a").unwrap().version, version_a);
    // Within on hand, a zero bound still lets a waiter wait for a release.
    let hold = store.reserve(&[("b", 1)]).unwrap();
    let waiter = wait_on(&store, &[("b", 1)], NEVER, "b", 1);
    store.release(hold.id()).unwrap();
    waiter.join().unwrap().unwrap();
}

/// A waiting retry with the key of a hold that ended says so at once, blocking or async,
/// instead of answering `Ok` with a hold that holds nothing.
#[test]
fn a_waiting_retry_of_an_ended_hold_says_what_became_of_it() {
    use stockledger::{HoldOutcome, ReserveOptions};
    let store: Store = Arc::new(MonitorStore::new());
    store.restock(&"a", 1).unwrap();
    let options = ReserveOptions::new().idempotency_key("cart-1");
    let hold = store
        .reserve_timeout_with(&[("a", 1)], NEVER, &options)
        .unwrap();
    store.release(hold.id()).unwrap();
    let ended = StockError::HoldEnded {
        key: "cart-1".to_string(),
        id: hold.id(),
        outcome: HoldOutcome::Released,
    };
    let blocking = store.reserve_timeout_with(&[("a", 1)], NEVER, &options);
    assert_eq!(blocking.unwrap_err(), ended);
    let future = futures_executor::block_on(store.reserve_wait(&[("a", 1)], &options));
    assert_eq!(future.unwrap_err(), ended);
    assert_eq!(counts_of(&store, "a"), (1, 0));
    assert_eq!(store.stats().replays, 2);
}
