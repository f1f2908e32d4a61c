//! The contract of DESIGN.md, one body run against every store.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use common::{counts, lines, sku, stores, with_stores};
use stockledger::{
    MonitorStore, OptimisticStore, PessimisticStore, ReservationId, StockError, StockLevel,
    StockStore,
};

/// A refused call: its name, what it returned, what it should return.
type Case = (
    &'static str,
    Result<(), StockError<String>>,
    StockError<String>,
);

/// Every level of `names`, to compare before and after a refused call.
fn snapshot(store: &dyn StockStore<String>, names: &[&str]) -> Vec<Option<StockLevel>> {
    names.iter().map(|name| store.level(&sku(name))).collect()
}

#[test]
fn stores_are_send_sync_debug_and_default() {
    fn check<T: Send + Sync + std::fmt::Debug + Default>() {}
    check::<PessimisticStore<String>>();
    check::<OptimisticStore<String>>();
    check::<MonitorStore<String>>();
    check::<stockledger::AdaptiveStore<String>>();
    let debug = format!("{:?}", PessimisticStore::<u32>::default());
    assert!(debug.contains("PessimisticStore"), "{debug}");
}

#[test]
fn restock_creates_the_sku_and_adds_on_hand() {
    with_stores(|name, store| {
        assert_eq!(store.level(&sku("a")), None, "{name}");
        let level = store.restock(&sku("a"), 3).unwrap();
        assert_eq!(
            (level.on_hand, level.reserved, level.version),
            (3, 0, 1),
            "{name}"
        );
        let level = store.restock(&sku("a"), 2).unwrap();
        assert_eq!((level.on_hand, level.version), (5, 2), "{name}");
        assert_eq!(store.level(&sku("a")), Some(level), "{name}");
    });
}

#[test]
fn reserve_then_commit_sells_the_held_units() {
    with_stores(|name, store| {
        store.restock(&sku("a"), 5).unwrap();
        let hold = store.reserve(&lines(&[("a", 2)])).unwrap();
        assert_eq!(counts(store, "a"), (5, 2), "{name}");
        assert_eq!(store.level(&sku("a")).unwrap().available(), 3, "{name}");
        let committed = store.commit(hold.id()).unwrap();
        assert_eq!(committed, hold, "{name}");
        assert_eq!(counts(store, "a"), (3, 0), "{name}");
        assert_eq!(store.level(&sku("a")).unwrap().version, 3, "{name}");
    });
}

#[test]
fn reserve_then_release_gives_the_units_back() {
    with_stores(|name, store| {
        store.restock(&sku("a"), 5).unwrap();
        let hold = store.reserve(&lines(&[("a", 5)])).unwrap();
        assert_eq!(store.level(&sku("a")).unwrap().available(), 0, "{name}");
        assert_eq!(store.release(hold.id()).unwrap(), hold, "{name}");
        assert_eq!(counts(store, "a"), (5, 0), "{name}");
        assert_eq!(store.level(&sku("a")).unwrap().version, 3, "{name}");
    });
}

#[test]
fn sell_takes_on_hand_without_a_hold() {
    with_stores(|name, store| {
        store.restock(&sku("a"), 5).unwrap();
        store.restock(&sku("b"), 5).unwrap();
        store.sell(&lines(&[("a", 2), ("b", 5)])).unwrap();
        assert_eq!(counts(store, "a"), (3, 0), "{name}");
        assert_eq!(counts(store, "b"), (0, 0), "{name}");
        assert!(store.level(&sku("b")).unwrap().version >= 2, "{name}");
    });
}

#[test]
fn multi_line_requests_are_all_or_nothing() {
    with_stores(|name, store| {
        store.restock(&sku("a"), 5).unwrap();
        store.restock(&sku("b"), 1).unwrap();
        let before = snapshot(store, &["a", "b"]);
        let short = StockError::InsufficientStock {
            sku: sku("b"),
            requested: 2,
            available: 1,
        };
        assert_eq!(
            store.reserve(&lines(&[("a", 1), ("b", 2)])),
            Err(short.clone()),
            "{name}"
        );
        assert_eq!(
            store.sell(&lines(&[("b", 2), ("a", 1)])),
            Err(short),
            "{name}"
        );
        let after = snapshot(store, &["a", "b"]);
        // The optimistic and adaptive stores may have reserved and compensated `a` (its
        // version moves);
        // the counts must be untouched in every store.
        let counts_of = |levels: &[Option<StockLevel>]| {
            levels
                .iter()
                .map(|level| level.map(|level| (level.on_hand, level.reserved)))
                .collect::<Vec<_>>()
        };
        assert_eq!(counts_of(&after), counts_of(&before), "{name}");
        if !matches!(name, "optimistic" | "adaptive") {
            assert_eq!(after, before, "{name}");
        }
    });
}

#[test]
fn duplicate_lines_are_merged_and_checked_as_one() {
    with_stores(|name, store| {
        store.restock(&sku("a"), 3).unwrap();
        store.restock(&sku("b"), 3).unwrap();
        let refused = store.reserve(&lines(&[("a", 2), ("a", 2)]));
        let expected = StockError::InsufficientStock {
            sku: sku("a"),
            requested: 4,
            available: 3,
        };
        assert_eq!(refused, Err(expected.clone()), "{name}");
        assert_eq!(
            store.sell(&lines(&[("a", 2), ("a", 2)])),
            Err(expected),
            "{name}"
        );
        let hold = store
            .reserve(&lines(&[("b", 1), ("a", 1), ("b", 1), ("a", 2)]))
            .unwrap();
        assert_eq!(
            hold.lines(),
            lines(&[("a", 3), ("b", 2)]).as_slice(),
            "{name}"
        );
        assert_eq!(counts(store, "a"), (3, 3), "{name}");
        assert_eq!(counts(store, "b"), (3, 2), "{name}");
    });
}

#[test]
fn every_bad_input_is_a_typed_error_that_changes_nothing() {
    with_stores(|name, store| {
        store.restock(&sku("a"), 5).unwrap();
        let held = store.reserve(&lines(&[("a", 1)])).unwrap();
        let before = snapshot(store, &["a", "zz"]);
        let a = sku("a");
        let max = store.quantity_max();
        let cases: Vec<Case> = vec![
            (
                "reserve []",
                store.reserve(&[]).map(drop),
                StockError::EmptyRequest,
            ),
            ("sell []", store.sell(&[]), StockError::EmptyRequest),
            (
                "reserve 0",
                store.reserve(&lines(&[("a", 1), ("a", 0)])).map(drop),
                StockError::InvalidQuantity { sku: a.clone() },
            ),
            (
                "sell 0",
                store.sell(&lines(&[("a", 0)])),
                StockError::InvalidQuantity { sku: a.clone() },
            ),
            (
                "restock 0",
                store.restock(&a, 0).map(drop),
                StockError::InvalidQuantity { sku: a.clone() },
            ),
            (
                "reserve unknown",
                store.reserve(&lines(&[("a", 1), ("zz", 1)])).map(drop),
                StockError::UnknownSku(sku("zz")),
            ),
            (
                "sell unknown",
                store.sell(&lines(&[("zz", 1)])),
                StockError::UnknownSku(sku("zz")),
            ),
            (
                "reserve too much",
                store.reserve(&lines(&[("a", 5)])).map(drop),
                StockError::InsufficientStock {
                    sku: a.clone(),
                    requested: 5,
                    available: 4,
                },
            ),
            (
                "restock past the maximum",
                store.restock(&a, max - 4).map(drop),
                StockError::Overflow { sku: a.clone() },
            ),
            (
                "lines summing past u64::MAX",
                store
                    .reserve(&lines(&[("a", u64::MAX), ("a", 1)]))
                    .map(drop),
                StockError::Overflow { sku: a.clone() },
            ),
            (
                "commit never issued",
                store.commit(ReservationId::from_u64(u64::MAX)).map(drop),
                StockError::UnknownReservation(ReservationId::from_u64(u64::MAX)),
            ),
            (
                "release never issued",
                store.release(ReservationId::from_u64(u64::MAX)).map(drop),
                StockError::UnknownReservation(ReservationId::from_u64(u64::MAX)),
            ),
        ];
        for (case, result, expected) in cases {
            assert_eq!(result, Err(expected), "{name}: {case}");
        }
        assert_eq!(
            snapshot(store, &["a", "zz"]),
            before,
            "{name}: state changed"
        );
        store.release(held.id()).unwrap();
    });
}

#[test]
fn restock_up_to_the_maximum_is_accepted() {
    with_stores(|name, store| {
        let max = store.quantity_max();
        assert_eq!(
            store.restock(&sku("a"), max).unwrap().on_hand,
            max,
            "{name}"
        );
        assert_eq!(
            store.restock(&sku("a"), 1),
            Err(StockError::Overflow { sku: sku("a") }),
            "{name}"
        );
        store.sell(&lines(&[("a", max)])).unwrap();
        assert_eq!(counts(store, "a"), (0, 0), "{name}");
    });
}

#[test]
fn a_hold_resolves_exactly_once() {
    with_stores(|name, store| {
        store.restock(&sku("a"), 4).unwrap();
        let committed = store.reserve(&lines(&[("a", 1)])).unwrap();
        let released = store.reserve(&lines(&[("a", 1)])).unwrap();
        store.commit(committed.id()).unwrap();
        store.release(released.id()).unwrap();
        let before = snapshot(store, &["a"]);
        for id in [committed.id(), released.id()] {
            let unknown = Err(StockError::UnknownReservation(id));
            assert_eq!(store.commit(id), unknown, "{name}");
            assert_eq!(store.release(id), unknown, "{name}");
        }
        assert_eq!(snapshot(store, &["a"]), before, "{name}");
        assert_eq!(counts(store, "a"), (3, 0), "{name}");
    });
}

#[test]
fn ids_are_unique_across_stores() {
    let mut all = stores();
    let (_, first) = all.remove(0);
    let (name, second) = all.remove(0);
    first.restock(&sku("a"), 1).unwrap();
    second.restock(&sku("a"), 1).unwrap();
    let hold = first.reserve(&lines(&[("a", 1)])).unwrap();
    assert_eq!(
        second.commit(hold.id()),
        Err(StockError::UnknownReservation(hold.id())),
        "{name}"
    );
    assert_eq!(counts(second.as_ref(), "a"), (1, 0), "{name}");
}

#[test]
fn the_version_grows_with_every_change_and_only_then() {
    with_stores(|name, store| {
        let mut versions = vec![store.restock(&sku("a"), 10).unwrap().version];
        let hold = store.reserve(&lines(&[("a", 2)])).unwrap();
        versions.push(store.level(&sku("a")).unwrap().version);
        store.sell(&lines(&[("a", 1)])).unwrap();
        versions.push(store.level(&sku("a")).unwrap().version);
        let _ = store.sell(&lines(&[("a", 100)]));
        versions.push(store.level(&sku("a")).unwrap().version);
        store.commit(hold.id()).unwrap();
        versions.push(store.level(&sku("a")).unwrap().version);
        assert_eq!(versions, vec![1, 2, 3, 3, 4], "{name}");
    });
}

#[test]
fn eight_threads_sell_exactly_the_stock() {
    const STOCK: u64 = 1_000;
    for (name, store) in stores() {
        let store: Arc<dyn StockStore<String>> = Arc::from(store);
        store.restock(&sku("hot"), STOCK).unwrap();
        let sold = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                let sold = Arc::clone(&sold);
                thread::spawn(move || loop {
                    match store.sell(&lines(&[("hot", 1)])) {
                        Ok(()) => {
                            sold.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(StockError::Conflict { .. }) => continue,
                        Err(StockError::InsufficientStock { available: 0, .. }) => break,
                        Err(other) => panic!("{other}"),
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(sold.load(Ordering::Relaxed), STOCK, "{name}");
        assert_eq!(counts(store.as_ref(), "hot"), (0, 0), "{name}");
        assert_eq!(
            store.level(&sku("hot")).unwrap().version,
            STOCK + 1,
            "{name}"
        );
    }
}

#[test]
fn errors_display_what_went_wrong() {
    let error = StockError::InsufficientStock {
        sku: sku("a"),
        requested: 2,
        available: 1,
    };
    assert_eq!(
        error.to_string(),
        "insufficient stock for SKU \"a\": requested 2 units, 1 available"
    );
    let id = ReservationId::from_u64(7);
    assert_eq!(
        StockError::<String>::UnknownReservation(id).to_string(),
        "unknown reservation #7"
    );
}

#[test]
fn commit_partial_commits_the_named_units_and_gives_back_the_rest() {
    with_stores(|name, store| {
        store.restock(&sku("a"), 5).unwrap();
        store.restock(&sku("b"), 5).unwrap();
        store.restock(&sku("c"), 5).unwrap();
        let hold = store
            .reserve(&lines(&[("a", 3), ("b", 2), ("c", 1)]))
            .unwrap();
        // Two of a (named twice: merged), all of c, none of b.
        let resolved = store
            .commit_partial(hold.id(), &lines(&[("c", 1), ("a", 1), ("a", 1)]))
            .unwrap();
        assert_eq!(resolved, hold, "{name}: the hold as it was made");
        assert_eq!(counts(store, "a"), (3, 0), "{name}");
        assert_eq!(counts(store, "b"), (5, 0), "{name}");
        assert_eq!(counts(store, "c"), (4, 0), "{name}");
        // Resolved once: nothing more to commit, release or commit in part.
        let unknown = Err(StockError::UnknownReservation(hold.id()));
        assert_eq!(store.commit(hold.id()), unknown, "{name}");
        assert_eq!(store.release(hold.id()), unknown, "{name}");
        assert_eq!(
            store.commit_partial(hold.id(), &lines(&[("a", 1)])),
            unknown,
            "{name}"
        );
        // Every unit of the hold named: a whole commit.
        let whole = store.reserve(&lines(&[("b", 2)])).unwrap();
        store
            .commit_partial(whole.id(), &lines(&[("b", 2)]))
            .unwrap();
        assert_eq!(counts(store, "b"), (3, 0), "{name}");
    });
}

#[test]
fn a_refused_commit_partial_changes_nothing_and_keeps_the_hold() {
    with_stores(|name, store| {
        store.restock(&sku("a"), 5).unwrap();
        store.restock(&sku("b"), 5).unwrap();
        let hold = store.reserve(&lines(&[("a", 3)])).unwrap();
        let id = hold.id();
        let before = snapshot(store, &["a", "b"]);
        let refusals = [
            (
                lines(&[("b", 1)]),
                StockError::NotInHold { id, sku: sku("b") },
            ),
            (
                lines(&[("a", 2), ("a", 2)]),
                StockError::AboveHold {
                    id,
                    sku: sku("a"),
                    held: 3,
                    requested: 4,
                },
            ),
            (Vec::new(), StockError::EmptyRequest),
            (
                lines(&[("a", 0)]),
                StockError::InvalidQuantity { sku: sku("a") },
            ),
        ];
        for (request, refusal) in refusals {
            assert_eq!(
                store.commit_partial(id, &request),
                Err(refusal),
                "{name}: {request:?}"
            );
            assert_eq!(snapshot(store, &["a", "b"]), before, "{name}: {request:?}");
        }
        assert_eq!(store.reservation(id), Some(hold), "{name}: still open");
        store.commit_partial(id, &lines(&[("a", 1)])).unwrap();
        assert_eq!(counts(store, "a"), (4, 0), "{name}");
    });
}

/// Racing `commit_partial`, `commit` and `release` of one hold: exactly one succeeds,
/// the others find it unknown, and the stock adds up to what the winner did.
#[test]
fn racing_partial_commits_commits_and_releases_of_one_hold_resolve_it_once() {
    const ROUNDS: u64 = 200;
    for (name, store) in stores() {
        let store: Arc<dyn StockStore<String>> = Arc::from(store);
        store.restock(&sku("a"), 2 * ROUNDS).unwrap();
        let mut sold = 0;
        for round in 0..ROUNDS {
            let hold = store.reserve(&lines(&[("a", 2)])).unwrap();
            let id = hold.id();
            let barrier = Arc::new(std::sync::Barrier::new(3));
            let racers: Vec<_> = (0..3)
                .map(|racer| {
                    let store = Arc::clone(&store);
                    let barrier = Arc::clone(&barrier);
                    thread::spawn(move || {
                        barrier.wait();
                        let outcome = match racer {
                            0 => store.commit_partial(id, &lines(&[("a", 1)])),
                            1 => store.commit(id),
                            _ => store.release(id),
                        };
                        (racer, outcome)
                    })
                })
                .collect();
            let outcomes: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
            let winners: Vec<_> = outcomes.iter().filter(|(_, o)| o.is_ok()).collect();
            assert_eq!(winners.len(), 1, "{name} round {round}: {outcomes:?}");
            for (_, outcome) in &outcomes {
                if let Err(error) = outcome {
                    assert_eq!(*error, StockError::UnknownReservation(id), "{name}");
                }
            }
            sold += [1, 2, 0][winners[0].0];
            assert_eq!(
                counts(store.as_ref(), "a"),
                (2 * ROUNDS - sold, 0),
                "{name} round {round}"
            );
        }
    }
}
