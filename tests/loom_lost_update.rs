#![cfg(loom)]
//! Lost update: concurrent holds and sales of one SKU are all counted, and the last unit
//! goes to exactly one buyer, in every interleaving loom explores, on every store.
//!
//! Run: `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom_lost_update`

mod loom_common;

use std::sync::Arc;

use loom_common::{counts, on_every_store, spawn, Outcome, Sku, SKU};
use stockledger::{StockError, StockStore};

/// Three buyers each hold one of three units: every hold succeeds and `reserved` counts
/// all three (a lost update would leave it at 2 with three holds open).
fn reserve_all_succeed<S: StockStore<Sku> + 'static>(store: S) {
    let store = Arc::new(store);
    store.restock(&SKU, 3).unwrap();
    let buyers = [
        spawn(&store, |store| store.reserve(&[(SKU, 1)])),
        spawn(&store, |store| store.reserve(&[(SKU, 1)])),
    ];
    let mine = store.reserve(&[(SKU, 1)]);
    let mut ids = vec![mine.unwrap().id()];
    for buyer in buyers {
        ids.push(buyer.join().unwrap().unwrap().id());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "hold ids are unique");
    assert_eq!(counts(&*store, SKU), (3, 3, 4));
}

/// Three buyers each buy one of three units: every sale succeeds and on hand reaches 0.
fn sell_all_succeed<S: StockStore<Sku> + 'static>(store: S) {
    let store = Arc::new(store);
    store.restock(&SKU, 3).unwrap();
    let buyers = [
        spawn(&store, |store| store.sell(&[(SKU, 1)])),
        spawn(&store, |store| store.sell(&[(SKU, 1)])),
    ];
    store.sell(&[(SKU, 1)]).unwrap();
    for buyer in buyers {
        buyer.join().unwrap().unwrap();
    }
    assert_eq!(counts(&*store, SKU), (0, 0, 4));
}

/// Three buyers race for the last unit with holds: exactly one wins, the others are told
/// nothing is available.
fn reserve_last_unit_once<S: StockStore<Sku> + 'static>(store: S) {
    let store = Arc::new(store);
    store.restock(&SKU, 1).unwrap();
    let buyers = [
        spawn(&store, |store| store.reserve(&[(SKU, 1)]).map(|_| ())),
        spawn(&store, |store| store.reserve(&[(SKU, 1)]).map(|_| ())),
    ];
    let mut outcomes = vec![store.reserve(&[(SKU, 1)]).map(|_| ())];
    outcomes.extend(buyers.map(|buyer| buyer.join().unwrap()));
    assert_one_winner(&outcomes);
    assert_eq!(counts(&*store, SKU), (1, 1, 2));
}

/// A hold and two direct sales race for the last unit: exactly one wins.
fn sell_or_reserve_last_unit_once<S: StockStore<Sku> + 'static>(store: S) {
    let store = Arc::new(store);
    store.restock(&SKU, 1).unwrap();
    let buyers = [
        spawn(&store, |store| store.sell(&[(SKU, 1)])),
        spawn(&store, |store| store.sell(&[(SKU, 1)])),
    ];
    let hold = store.reserve(&[(SKU, 1)]);
    let held = u64::from(hold.is_ok());
    let mut outcomes = vec![hold.map(|_| ())];
    outcomes.extend(buyers.map(|buyer| buyer.join().unwrap()));
    assert_one_winner(&outcomes);
    // Sold: on hand 0; held: on hand 1 and reserved 1.
    assert_eq!(counts(&*store, SKU), (held, held, 2));
}

/// Exactly one outcome is `Ok`; the others found nothing available.
fn assert_one_winner(outcomes: &[Outcome<()>]) {
    let winners = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(
        winners, 1,
        "exactly one buyer gets the last unit: {outcomes:?}"
    );
    for outcome in outcomes.iter().filter(|outcome| outcome.is_err()) {
        assert_eq!(
            outcome,
            &Err(StockError::InsufficientStock {
                sku: SKU,
                requested: 1,
                available: 0
            })
        );
    }
}

on_every_store!(
    reserve_all_succeed,
    sell_all_succeed,
    reserve_last_unit_once,
    sell_or_reserve_last_unit_once,
);

/// Negative controls: naive stores that lose updates, which loom must catch.
mod controls {
    use std::sync::Arc;

    use loom::sync::atomic::{AtomicU64, Ordering};
    use loom::sync::Mutex;
    use loom::thread;

    /// The naive peer's API: sell `units`, all or nothing.
    trait NaiveSell: Send + Sync + 'static {
        fn sell(&self, units: u64) -> bool;
        fn on_hand(&self) -> u64;
    }

    /// Reads on hand under one lock acquisition, writes it under a second one.
    struct TwoLockAcquisitions(Mutex<u64>);

    impl NaiveSell for TwoLockAcquisitions {
        fn sell(&self, units: u64) -> bool {
            let on_hand = *self.0.lock().unwrap();
            if on_hand < units {
                return false;
            }
            *self.0.lock().unwrap() = on_hand - units;
            true
        }

        fn on_hand(&self) -> u64 {
            *self.0.lock().unwrap()
        }
    }

    /// Loads the word, then stores the result blindly instead of compare-and-swap.
    struct LoadThenBlindStore(AtomicU64);

    impl NaiveSell for LoadThenBlindStore {
        fn sell(&self, units: u64) -> bool {
            let on_hand = self.0.load(Ordering::Acquire);
            if on_hand < units {
                return false;
            }
            self.0.store(on_hand - units, Ordering::Release);
            true
        }

        fn on_hand(&self) -> u64 {
            self.0.load(Ordering::Acquire)
        }
    }

    /// Two buyers each buy one of two units; both succeed, so on hand must reach 0.
    fn two_sales(store: impl NaiveSell) {
        let store = Arc::new(store);
        let buyer = {
            let store = Arc::clone(&store);
            thread::spawn(move || store.sell(1))
        };
        let sold = [store.sell(1), buyer.join().unwrap()];
        let sold_units: u64 = sold.iter().map(|&sold| u64::from(sold)).sum();
        assert_eq!(
            store.on_hand(),
            2 - sold_units,
            "lost update: {sold_units} units sold from 2"
        );
    }

    #[test]
    #[should_panic(expected = "lost update")]
    fn read_then_write_in_two_lock_acquisitions() {
        loom::model(|| two_sales(TwoLockAcquisitions(Mutex::new(2))));
    }

    #[test]
    #[should_panic(expected = "lost update")]
    fn load_then_blind_store() {
        loom::model(|| two_sales(LoadThenBlindStore(AtomicU64::new(2))));
    }
}
