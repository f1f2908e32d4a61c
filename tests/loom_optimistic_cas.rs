#![cfg(loom)]
//! Optimistic compare-and-swap: two threads × two operations on one SKU. Under loom the
//! optimistic store's word is a loom mutex exposing `load` and `compare_exchange`, so loom
//! runs another thread's write between a thread's load and its compare-and-swap: the
//! retry path runs. Every level a call returns must then be the level after exactly
//! `version - 1` operations of some interleaving that respects each thread's order, and
//! the version must grow by one per operation. The same model runs on the other stores,
//! which keep the same version rule.
//!
//! Run: `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom_optimistic_cas`

mod loom_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use loom_common::{counts, on_every_store, spawn, Sku, SKU};
use stockledger::{OptimisticStore, StockLevel, StockStore};

/// On hand after the initial restock (version 1).
const START: u64 = 4;

/// The level after the first `restocks` restocks of the restocking thread and the first
/// `sales` steps of the selling thread (a sale of 1, then a hold of 1), with the initial
/// restock: version `1 + restocks + sales`.
fn level_after(restocks: u64, sales: u64) -> StockLevel {
    StockLevel {
        on_hand: START + restocks - u64::from(sales >= 1),
        reserved: u64::from(sales >= 2),
        version: 1 + restocks + sales,
    }
}

/// One thread restocks 1 unit twice while another sells 1 unit, then holds 1 unit. Each
/// restock returns its new level: it must be a level some interleaving reaches.
fn versions_grow_by_one<S: StockStore<Sku> + 'static>(store: S) {
    two_threads_two_operations(&Arc::new(store));
}

/// The body of [`versions_grow_by_one`] on a shared store.
fn two_threads_two_operations<S: StockStore<Sku> + 'static>(store: &Arc<S>) {
    store.restock(&SKU, START).unwrap();
    let restocker = spawn(store, |store| {
        [
            store.restock(&SKU, 1).unwrap(),
            store.restock(&SKU, 1).unwrap(),
        ]
    });
    store.sell(&[(SKU, 1)]).unwrap();
    store.reserve(&[(SKU, 1)]).unwrap();
    let levels = restocker.join().unwrap();
    for (restocks, level) in (1..).zip(levels) {
        // The selling thread's steps linearized before this restock.
        let sales = level
            .version
            .checked_sub(1 + restocks)
            .filter(|&sales| sales <= 2)
            .unwrap_or_else(|| panic!("version out of range: {levels:?}"));
        assert_eq!(level, level_after(restocks, sales), "{levels:?}");
    }
    assert!(levels[0].version < levels[1].version, "version went back");
    assert_eq!(counts(&**store, SKU), (START + 1, 1, 5));
}

/// The optimistic store's retry path runs in the model above: in some interleaving a
/// compare-and-swap loses to the other thread's write (`StoreStats::cas_retries`), so
/// [`versions_grow_by_one`] checks the levels the retries compute.
#[test]
fn retry_path_is_explored_optimistic() {
    static LOST: AtomicU64 = AtomicU64::new(0);
    loom::model(|| {
        let store = Arc::new(OptimisticStore::new());
        two_threads_two_operations(&store);
        LOST.fetch_add(store.stats().cas_retries, Ordering::Relaxed);
    });
    assert!(
        LOST.load(Ordering::Relaxed) > 0,
        "no interleaving lost a compare-and-swap"
    );
}

/// Two threads each sell 1 unit, then restock 1 unit: on hand ends where it started and
/// the version counts all five changes.
fn sell_then_restock_twice<S: StockStore<Sku> + 'static>(store: S) {
    let store = Arc::new(store);
    store.restock(&SKU, 2).unwrap();
    let round_trip = |store: &S| {
        store.sell(&[(SKU, 1)]).unwrap();
        store.restock(&SKU, 1).unwrap()
    };
    let other = spawn(&store, move |store| round_trip(store));
    let mine = round_trip(&store);
    let theirs = other.join().unwrap();
    assert_ne!(mine.version, theirs.version, "two changes, one version");
    assert_eq!(mine.version.max(theirs.version), 5);
    assert_eq!(counts(&*store, SKU), (2, 0, 5));
}

on_every_store!(versions_grow_by_one, sell_then_restock_twice);

/// Negative control: a "compare-and-swap" that loads, then stores blindly, which loom
/// must catch losing a version bump.
mod controls {
    use std::sync::Arc;

    use loom::sync::atomic::{AtomicU64, Ordering};
    use loom::thread;

    /// `(on_hand << 32) | version`, updated by load then store.
    struct BlindStoreWord(AtomicU64);

    impl BlindStoreWord {
        fn restock(&self, units: u64) {
            let word = self.0.load(Ordering::Acquire);
            let (on_hand, version) = (word >> 32, word & 0xffff_ffff);
            self.0
                .store((on_hand + units) << 32 | (version + 1), Ordering::Release);
        }
    }

    #[test]
    #[should_panic(expected = "lost update")]
    fn load_then_blind_store_loses_a_version() {
        loom::model(|| {
            let word = Arc::new(BlindStoreWord(AtomicU64::new(0)));
            let other = {
                let word = Arc::clone(&word);
                thread::spawn(move || word.restock(1))
            };
            word.restock(1);
            other.join().unwrap();
            let word = word.0.load(Ordering::Acquire);
            assert_eq!((word >> 32, word & 0xffff_ffff), (2, 2), "lost update");
        });
    }
}
