#![cfg(loom)]
//! Adaptive store: a SKU switching between cold (CAS) and hot (lock, then CAS) while sales,
//! holds and resolutions race on it never loses or doubles a change, and a multi-line hold
//! over a hot and a cold SKU stays all or nothing, in every interleaving loom explores.
//! Every model of the other `loom_*` files also runs on the adaptive store, tuned to
//! switch modes all the time (`loom_common::switching_adaptive`).
//!
//! Run: `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom_adaptive`

mod loom_common;

use std::sync::Arc;

use loom_common::{assert_noted, counts, explore, note, spawn, Sku, SKU};
use stockledger::{AdaptiveStore, StockError, StockStore};

/// A second SKU, above [`SKU`] in order.
const OTHER: Sku = "SKU1005";

/// Notes whether some update of `store` lost a race or found a lock taken.
fn note_contention(store: &AdaptiveStore<Sku>) {
    if store.stats().contended > 0 {
        note("contended");
    } else {
        note("uncontended");
    }
}

/// A switch to hot and back races two sales: both count, once each.
#[test]
fn switch_races_sales() {
    explore("switch_races_sales", AdaptiveStore::new, |store| {
        let store = Arc::new(store);
        store.restock(&SKU, 3).unwrap();
        let switcher = spawn(&store, |store| {
            assert!(store.force_mode(&SKU, true));
            assert!(store.force_mode(&SKU, false));
        });
        let seller = spawn(&store, |store| store.sell(&[(SKU, 1)]));
        store.sell(&[(SKU, 1)]).unwrap();
        seller.join().unwrap().unwrap();
        switcher.join().unwrap();
        assert_eq!(counts(&*store, SKU), (1, 0, 3), "lost or doubled update");
        assert_eq!(store.stats().switches, 2);
        assert_eq!(store.stats().hot_skus, 0);
        note_contention(&store);
    });
    assert_noted("switch_races_sales", &["contended", "uncontended"]);
}

/// A switch to hot races a hold on the last unit and the commit of an earlier hold: the
/// hold wins, the commit counts once.
#[test]
fn switch_races_holds_and_a_commit() {
    explore(
        "switch_races_holds_and_a_commit",
        AdaptiveStore::new,
        |store| {
            let store = Arc::new(store);
            store.restock(&SKU, 2).unwrap();
            let first = store.reserve(&[(SKU, 1)]).unwrap().id();
            let committer = spawn(&store, move |store| store.commit(first).map(drop));
            let switcher = spawn(&store, |store| assert!(store.force_mode(&SKU, true)));
            let second = store.reserve(&[(SKU, 1)]);
            committer.join().unwrap().unwrap();
            switcher.join().unwrap();
            assert!(second.is_ok(), "the second unit was available: {second:?}");
            // restock, hold, commit, hold: on hand 1, reserved 1, version 4.
            assert_eq!(counts(&*store, SKU), (1, 1, 4), "lost or doubled update");
            assert_eq!(store.stats().hot_skus, 1);
            note_contention(&store);
        },
    );
    assert_noted(
        "switch_races_holds_and_a_commit",
        &["contended", "uncontended"],
    );
}

/// Two carts over a hot and a cold SKU race for their last units while the cold one turns
/// hot: exactly one cart gets both, the other nothing (all or nothing, no deadlock).
#[test]
fn multi_line_holds_over_hot_and_cold_skus() {
    explore(
        "multi_line_holds_over_hot_and_cold_skus",
        AdaptiveStore::new,
        |store| {
            let store = Arc::new(store);
            store.restock(&SKU, 1).unwrap();
            store.restock(&OTHER, 1).unwrap();
            assert!(store.force_mode(&SKU, true));
            let cart = [(OTHER, 1), (SKU, 1)];
            let rival = spawn(&store, move |store| store.reserve(&cart).map(drop));
            let switcher = spawn(&store, |store| assert!(store.force_mode(&OTHER, true)));
            let mine = store.reserve(&cart).map(drop);
            let theirs = rival.join().unwrap();
            switcher.join().unwrap();
            let outcomes = [mine, theirs];
            let winners = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
            assert_eq!(winners, 1, "exactly one cart wins: {outcomes:?}");
            for outcome in outcomes.iter().filter(|outcome| outcome.is_err()) {
                assert!(
                    matches!(outcome, Err(StockError::InsufficientStock { .. })),
                    "{outcome:?}"
                );
            }
            // The loser fails on its first line (SKU, ascending), so it never held a unit:
            // restock and the winner's hold, one unit on hand and reserved on each SKU.
            assert_eq!(counts(&*store, SKU), (1, 1, 2), "partial or lost hold");
            assert_eq!(counts(&*store, OTHER), (1, 1, 2), "partial or lost hold");
            note_contention(&store);
        },
    );
}

/// Negative control: an adaptive SKU whose hot writers, trusting the lock, store the new
/// word blindly instead of compare-and-swap. A cold writer that read the word before the
/// switch can then land between the hot writer's read and its store, and one sale is
/// lost. loom must find that interleaving; the same structure with a CAS under the lock
/// (the store's design) keeps every sale.
mod controls {
    use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    /// One SKU's on hand, its lock and its mode, as in the store.
    struct Slot {
        on_hand: AtomicU64,
        lock: Mutex<()>,
        hot: AtomicBool,
        /// Whether hot writers CAS (the store) or store blindly (the bug).
        cas_when_hot: bool,
    }

    impl Slot {
        fn new(on_hand: u64, cas_when_hot: bool) -> Self {
            Self {
                on_hand: AtomicU64::new(on_hand),
                lock: Mutex::new(()),
                hot: AtomicBool::new(false),
                cas_when_hot,
            }
        }

        /// Sells one unit by the SKU's current mode; on hand is never 0 in these models.
        fn sell_one(&self) {
            if self.hot.load(Ordering::Acquire) {
                let _guard = self.lock.lock().unwrap();
                if !self.cas_when_hot {
                    let current = self.on_hand.load(Ordering::Acquire);
                    self.on_hand.store(current - 1, Ordering::Release);
                    return;
                }
                self.cas_loop();
            } else {
                self.cas_loop();
            }
        }

        fn cas_loop(&self) {
            let mut current = self.on_hand.load(Ordering::Acquire);
            while let Err(actual) = self.on_hand.compare_exchange(
                current,
                current - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                current = actual;
                thread::yield_now();
            }
        }
    }

    /// A cold sale races a switch to hot followed by a hot sale.
    fn model(cas_when_hot: bool) {
        loom::model(move || {
            let slot = Arc::new(Slot::new(2, cas_when_hot));
            let cold = {
                let slot = Arc::clone(&slot);
                thread::spawn(move || slot.sell_one())
            };
            slot.hot.store(true, Ordering::Release);
            slot.sell_one();
            cold.join().unwrap();
            assert_eq!(slot.on_hand.load(Ordering::Acquire), 0, "lost update");
        });
    }

    #[test]
    #[should_panic(expected = "lost update")]
    fn blind_store_under_the_lock_loses_an_update() {
        model(false);
    }

    #[test]
    fn compare_and_swap_under_the_lock_keeps_every_update() {
        model(true);
    }
}
