#![cfg(loom)]
//! Creation: a SKU's first restock racing a read and a hold of the new SKU. Every answer
//! is one a sequential order of the three calls gives: the SKU is unknown before the
//! restock and holds all its units at version 1 after it, never anything in between
//! (issue 14: stores once inserted an empty slot and filled it afterwards).
//!
//! Run: `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom_creation`

mod loom_common;

use std::sync::Arc;

use loom_common::{assert_noted, note, on_every_store, spawn, Sku, SKU};
use stockledger::{StockError, StockLevel, StockStore};

/// Units of the first restock.
const UNITS: u64 = 2;

/// The level right after the first restock.
const RESTOCKED: StockLevel = StockLevel {
    on_hand: UNITS,
    reserved: 0,
    version: 1,
};

/// A first restock races a `level` and a one-unit `reserve` of the new SKU.
fn first_restock_races_level_and_reserve<S: StockStore<Sku> + 'static>(store: S) {
    let store = Arc::new(store);
    let reader = spawn(&store, |store| store.level(&SKU));
    let buyer = spawn(&store, |store| {
        store.reserve(&[(SKU, 1)]).map(|hold| hold.id())
    });
    assert_eq!(store.restock(&SKU, UNITS), Ok(RESTOCKED));
    let seen = reader.join().unwrap();
    let held = buyer.join().unwrap();
    match seen {
        None => note("read before"),
        Some(level) if level == RESTOCKED => note("read after the restock"),
        Some(level) => {
            // Only the hold may have come in between.
            let after_hold = StockLevel {
                reserved: 1,
                version: 2,
                ..RESTOCKED
            };
            assert_eq!(level, after_hold, "a read saw a half-created SKU");
            assert!(held.is_ok(), "a read saw a hold that did not happen");
            note("read after the hold");
        }
    }
    let expected = match held {
        Ok(_) => {
            note("held");
            StockLevel {
                reserved: 1,
                version: 2,
                ..RESTOCKED
            }
        }
        Err(error) => {
            assert_eq!(
                error,
                StockError::UnknownSku(SKU),
                "a hold saw a half-created SKU"
            );
            note("unknown to the buyer");
            RESTOCKED
        }
    };
    assert_eq!(store.level(&SKU), Some(expected));
}

/// Two first restocks race: both count, and exactly one of them created the SKU.
fn two_first_restocks_both_count<S: StockStore<Sku> + 'static>(store: S) {
    let store = Arc::new(store);
    let other = spawn(&store, |store| store.restock(&SKU, 1));
    let mine = store.restock(&SKU, UNITS).unwrap();
    let theirs = other.join().unwrap().unwrap();
    let mut versions = [mine.version, theirs.version];
    versions.sort_unstable();
    assert_eq!(
        versions,
        [1, 2],
        "one restock created the SKU, the other added to it"
    );
    assert_eq!(
        store
            .level(&SKU)
            .map(|level| (level.on_hand, level.version)),
        Some((UNITS + 1, 2))
    );
}

on_every_store!(
    first_restock_races_level_and_reserve,
    two_first_restocks_both_count
);

/// The outcomes the creation race must reach on every store, so loom explored both sides.
#[test]
fn every_outcome_is_reached() {
    for (name, run) in [
        ("pessimistic", run_on(stockledger::PessimisticStore::new)),
        ("optimistic", run_on(stockledger::OptimisticStore::new)),
        ("monitor", run_on(stockledger::MonitorStore::new)),
    ] {
        run();
        assert_noted(
            name,
            &[
                "read before",
                "read after the restock",
                "held",
                "unknown to the buyer",
            ],
        );
    }
}

/// A runner of the creation race on the store from `new`.
fn run_on<S: StockStore<Sku> + 'static>(new: fn() -> S) -> Box<dyn Fn()> {
    Box::new(move || loom_common::explore("creation", new, first_restock_races_level_and_reserve))
}
