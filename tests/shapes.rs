//! Shapes that fit Rust users' habits: borrowed lookups, an owned guard, one trait-object
//! handle for a store that waits, the channel crates re-exported, an async event sink.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{counts, lines, sku, stores};
use stockledger::{
    AdaptiveStore, MonitorStore, OptimisticStore, OwnedReservationGuard, PessimisticStore,
    StockStore, WaitingStore,
};

/// Every in-memory store answers a `&str` lookup on `String` keys, as `HashMap::get` does,
/// and agrees with `level`.
#[test]
fn lookups_take_a_borrowed_sku() {
    let key = sku("SKU1004");
    let pessimistic = PessimisticStore::<String>::new();
    let optimistic = OptimisticStore::<String>::new();
    let monitor = MonitorStore::<String>::new();
    let adaptive = AdaptiveStore::<String>::new();
    for store in [
        &pessimistic as &dyn StockStore<String>,
        &optimistic,
        &monitor,
        &adaptive,
    ] {
        store.restock(&key, 3).unwrap();
        store.reserve(&lines(&[("SKU1004", 1)])).unwrap();
    }
    let by_str = [
        pessimistic.level_of("SKU1004"),
        optimistic.level_of("SKU1004"),
        monitor.level_of("SKU1004"),
        adaptive.level_of("SKU1004"),
    ];
    for level in by_str {
        assert_eq!(
            level.map(|level| (level.on_hand, level.reserved)),
            Some((3, 1))
        );
    }
    assert_eq!(pessimistic.level_of("SKU1004"), pessimistic.level(&key));
    assert_eq!(optimistic.level_of("nope"), None);
    assert_eq!(monitor.queued("SKU1004"), 0);
    let queue = monitor.queue_level("SKU1004").unwrap();
    assert_eq!(queue.available_now, 2);
}

/// An owned guard moves into another thread and resolves there; dropped there unresolved,
/// it releases its hold; on every store, through `Arc<dyn StockStore<String>>`.
#[test]
fn an_owned_guard_moves_into_a_thread_on_every_store() {
    for (name, store) in stores() {
        let store: Arc<dyn StockStore<String>> = Arc::from(store);
        store.restock(&sku("a"), 3).unwrap();
        let paid = OwnedReservationGuard::new(Arc::clone(&store), &lines(&[("a", 1)])).unwrap();
        let dropped = OwnedReservationGuard::new(Arc::clone(&store), &lines(&[("a", 1)])).unwrap();
        assert_eq!(counts(store.as_ref(), "a"), (3, 2), "{name}");
        thread::spawn(move || {
            paid.commit().unwrap();
            drop(dropped); // payment failed: released
        })
        .join()
        .unwrap();
        assert_eq!(counts(store.as_ref(), "a"), (2, 0), "{name}");
    }
}

/// The owned guard can live in a spawned thread or task: `Send`, `Sync` and `'static` for a
/// store behind `Arc<dyn StockStore<K>>`.
#[test]
fn the_owned_guard_is_send_sync_and_static() {
    fn send_sync_static<T: Send + Sync + 'static>() {}
    send_sync_static::<OwnedReservationGuard<String, dyn StockStore<String>>>();
    send_sync_static::<OwnedReservationGuard<&'static str, MonitorStore<&'static str>>>();
}

/// One handle for a store that waits: `Arc<dyn WaitingStore<K>>` goes where a `StockStore`
/// is wanted (without trait upcasting, so on Rust 1.85 too), and a plain
/// `Arc<dyn StockStore<K>>` reaches the waiting calls through `as_waiting` when the store
/// waits.
#[test]
fn one_handle_serves_plain_calls_and_waits() {
    fn sell_one(store: &dyn StockStore<String>) {
        store.sell(&lines(&[("a", 1)])).unwrap();
    }
    let waiting: Arc<dyn WaitingStore<String>> = Arc::new(MonitorStore::new());
    waiting.restock(&sku("a"), 2).unwrap();
    sell_one(&waiting);
    let plain: Arc<dyn StockStore<String>> = Arc::new(Arc::clone(&waiting));
    let hold = plain
        .as_waiting()
        .expect("a monitor store waits")
        .reserve_timeout(&lines(&[("a", 1)]), Duration::from_secs(5))
        .unwrap();
    assert_eq!(waiting.reservation(hold.id()), Some(hold.clone()));
    plain.commit(hold.id()).unwrap();
    assert_eq!(counts(plain.as_ref(), "a"), (0, 0));
    // Only the monitor store and the Redis store wait.
    for (name, store) in stores() {
        let waits = store.as_waiting().is_some();
        assert_eq!(waits, name == "monitor" || name == "redis", "{name}");
    }
    // A boxed store is a store too.
    let boxed: Box<dyn StockStore<String>> = Box::new(Box::new(PessimisticStore::new()));
    boxed.restock(&sku("b"), 1).unwrap();
    assert_eq!(boxed.level(&sku("b")).unwrap().on_hand, 1);
}

/// What the public API hands out is reachable through the crate: the crossbeam receiver of
/// `ChannelSink` needs no dependency of its own.
#[test]
fn the_channel_crate_is_re_exported() {
    let (sink, events): (_, stockledger::crossbeam_channel::Receiver<_>) =
        stockledger::ChannelSink::unbounded();
    let store = PessimisticStore::builder().event_sink(sink).build();
    store.restock(&"a", 1).unwrap();
    assert_eq!(events.len(), 1);
}

/// The async sink: an event reaches a task awaiting the receiver on another runtime's
/// thread, in per-SKU version order; a full bounded channel drops and counts, never
/// blocking the store's caller.
#[cfg(feature = "async-channel")]
#[test]
fn the_async_channel_sink_delivers_to_an_awaiting_task() {
    use stockledger::{AsyncChannelSink, StockEvent};
    let (sink, events) = AsyncChannelSink::unbounded();
    let store = Arc::new(MonitorStore::builder().event_sink(sink.clone()).build());
    let consumer = thread::spawn(move || {
        futures_executor::block_on(async {
            let mut versions = Vec::new();
            while versions.len() < 3 {
                let event: StockEvent<&str> = events.recv().await.unwrap();
                versions.extend(event.lines().iter().map(|line| line.level.version));
            }
            versions
        })
    });
    store.restock(&"a", 2).unwrap();
    let hold = store.reserve(&[("a", 1)]).unwrap();
    store.commit(hold.id()).unwrap();
    assert_eq!(consumer.join().unwrap(), [1, 2, 3]);
    assert_eq!(sink.dropped(), 0);
    let (full, _events) = AsyncChannelSink::bounded(1);
    let store = PessimisticStore::builder().event_sink(full.clone()).build();
    store.restock(&"a", 1).unwrap();
    store.restock(&"a", 1).unwrap();
    assert_eq!(full.dropped(), 1);
}
