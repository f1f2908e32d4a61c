#![cfg(loom)]
//! Exactly-once resolution with the reservation lifecycle: a hold with a deadline is
//! resolved once however commit, release, `extend` and `expire_due` race with the clock
//! passing its deadline, and an idempotency key opens one hold however its retries race.
//! Every store, with a [`ManualClock`] (its counter is a loom atomic under `--cfg loom`, so
//! loom interleaves the clock's advance with the other steps).
//!
//! Run: `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom_lifecycle`

mod loom_common;

use std::sync::Arc;
use std::time::Duration;

use loom_common::{counts, spawn, Outcome, Sku, SKU};
use stockledger::{
    Clock, HoldOutcome, ManualClock, MonitorStore, OptimisticStore, PessimisticStore, Reservation,
    ReserveOptions, StockError, StockStore, WaitingStore,
};

/// The time to live of the model's hold.
const TTL: Duration = Duration::from_secs(10);
/// How far the clock moves: past the hold's deadline.
const PAST_THE_DEADLINE: Duration = Duration::from_secs(20);

/// Whether `outcome` resolved `hold`: it won (`Ok`) or found it past its deadline and
/// expired it (`Expired`); `UnknownReservation` means another call resolved it.
fn resolved(hold: &Reservation<Sku>, outcome: &Outcome<Reservation<Sku>>) -> bool {
    match outcome {
        Ok(reservation) => {
            assert_eq!(reservation.id(), hold.id());
            true
        }
        Err(StockError::Expired(id)) => {
            assert_eq!(*id, hold.id());
            true
        }
        Err(error) => {
            assert_eq!(error, &StockError::UnknownReservation(hold.id()));
            false
        }
    }
}

/// The store behind an `Arc`, with `on_hand` units of [`SKU`] and a hold of 1 unit
/// expiring [`TTL`] from now.
fn held_with_ttl<S: StockStore<Sku>>(store: S, on_hand: u64) -> (Arc<S>, Reservation<Sku>) {
    let store = Arc::new(store);
    store.restock(&SKU, on_hand).unwrap();
    let hold = store
        .reserve_with(&[(SKU, 1)], &ReserveOptions::new().ttl(TTL))
        .unwrap();
    (store, hold)
}

/// [`held_with_ttl`] by way of a plain hold then given its deadline by `extend`: in the
/// pessimistic store, a hold that lives in its SKU's slot, its deadline kept beside it.
fn held_then_extended<S: StockStore<Sku>>(store: S, on_hand: u64) -> (Arc<S>, Reservation<Sku>) {
    let store = Arc::new(store);
    store.restock(&SKU, on_hand).unwrap();
    let hold = store.reserve(&[(SKU, 1)]).unwrap();
    let hold = store.extend(hold.id(), TTL).unwrap();
    (store, hold)
}

/// How a model's hold is made: [`held_with_ttl`] or [`held_then_extended`].
type Held<S> = fn(S, u64) -> (Arc<S>, Reservation<Sku>);

/// A commit, a release, and the clock passing the deadline followed by `expire_due`, race
/// on one hold: exactly one of them resolves it, and stock moves once (sold only if the
/// commit won before the deadline).
fn commit_release_expiry_once<S: StockStore<Sku> + 'static>(store: S, clock: Arc<ManualClock>) {
    commit_release_expiry_once_of(store, clock, held_with_ttl);
}

/// [`commit_release_expiry_once`] on a hold made by `held`.
fn commit_release_expiry_once_of<S: StockStore<Sku> + 'static>(
    store: S,
    clock: Arc<ManualClock>,
    held: Held<S>,
) {
    let (store, hold) = held(store, 2);
    let id = hold.id();
    let committer = spawn(&store, move |store| store.commit(id));
    let sweeper = spawn(&store, move |store| {
        clock.advance(PAST_THE_DEADLINE);
        store.expire_due()
    });
    let released = store.release(id);
    let committed = committer.join().unwrap();
    let swept = sweeper.join().unwrap();

    let winners = usize::from(resolved(&hold, &committed))
        + usize::from(resolved(&hold, &released))
        + swept.len();
    assert_eq!(winners, 1, "{committed:?} {released:?} {swept:?}");
    assert!(swept.iter().all(|expired| *expired == hold));
    let sold = u64::from(committed.is_ok());
    assert_eq!(counts(&*store, SKU), (2 - sold, 0, 3));
    loom_common::note(match (&committed, &released) {
        (Ok(_), _) => "committed",
        (_, Ok(_)) => "released",
        _ => "expired",
    });
    let stats = store.stats();
    assert_eq!(stats.commits, sold);
    assert_eq!(stats.commits + stats.releases + stats.expirations, 1);
}

/// `extend` races the clock passing the deadline and `expire_due`: the hold is either
/// extended (and still open, so it can be committed) or expired, once.
fn extend_races_expiry<S: StockStore<Sku> + 'static>(store: S, clock: Arc<ManualClock>) {
    extend_races_expiry_of(store, clock, held_with_ttl);
}

/// [`extend_races_expiry`] on a hold made by `held`.
fn extend_races_expiry_of<S: StockStore<Sku> + 'static>(
    store: S,
    clock: Arc<ManualClock>,
    held: Held<S>,
) {
    let (store, hold) = held(store, 1);
    let id = hold.id();
    let extender = spawn(&store, move |store| store.extend(id, 6 * TTL));
    clock.advance(PAST_THE_DEADLINE);
    let swept = store.expire_due();
    let extended = extender.join().unwrap();

    let expired = !swept.is_empty() || extended == Err(StockError::Expired(id));
    assert_eq!(usize::from(resolved(&hold, &extended)) + swept.len(), 1);
    loom_common::note(if expired { "expired" } else { "extended" });
    if expired {
        assert_eq!(counts(&*store, SKU), (1, 0, 3));
        assert_eq!(store.commit(id), Err(StockError::UnknownReservation(id)));
    } else {
        // Extended to `now + 60 s` with now at most 20 s: open, and not due.
        assert_eq!(extended.unwrap().id(), id);
        assert!(store.expire_due().is_empty());
        assert_eq!(store.commit(id).unwrap().id(), id);
        assert_eq!(counts(&*store, SKU), (0, 0, 3));
    }
    assert!(store.expire_due().is_empty(), "nothing left to expire");
}

/// `extend` races a commit: whichever wins, no deadline of the resolved hold stays in the
/// expiry index (read from the store's `Debug`, which counts the indexed deadlines).
fn extend_races_commit<S: StockStore<Sku> + std::fmt::Debug + 'static>(
    store: S,
    clock: Arc<ManualClock>,
) {
    extend_races_commit_of(store, clock, held_with_ttl);
}

/// [`extend_races_commit`] on a hold made by `held`.
fn extend_races_commit_of<S: StockStore<Sku> + std::fmt::Debug + 'static>(
    store: S,
    _: Arc<ManualClock>,
    held: Held<S>,
) {
    let (store, hold) = held(store, 1);
    let id = hold.id();
    let extender = spawn(&store, move |store| store.extend(id, 6 * TTL));
    store.commit(id).unwrap();
    let extended = extender.join().unwrap();
    loom_common::note(if extended.is_ok() {
        "extended"
    } else {
        "committed first"
    });
    let debug = format!("{store:?}");
    assert!(
        debug.contains("deadlines: 0"),
        "a resolved hold's deadline stayed indexed: {debug}"
    );
}

/// Two extensions of one hold race, one of them back to the hold's first deadline: the
/// index keeps the deadline the hold ends with, so once the clock passes the first
/// deadline, `expire_due` expires the hold if that is its deadline (a commit then finds it
/// gone), and otherwise leaves it open (a commit succeeds). A hold past its deadline that
/// the sweep missed would make the commit report `Expired`.
fn extensions_race<S: StockStore<Sku> + 'static>(store: S, clock: Arc<ManualClock>) {
    extensions_race_of(store, clock, held_with_ttl);
}

/// [`extensions_race`] on a hold made by `held`.
fn extensions_race_of<S: StockStore<Sku> + 'static>(
    store: S,
    clock: Arc<ManualClock>,
    held: Held<S>,
) {
    let (store, hold) = held(store, 1);
    let id = hold.id();
    let later = spawn(&store, move |store| store.extend(id, 6 * TTL).unwrap());
    store.extend(id, TTL).unwrap(); // the first deadline again
    later.join().unwrap();
    clock.advance(PAST_THE_DEADLINE);
    let swept = store.expire_due();
    let committed = store.commit(id);
    match swept.as_slice() {
        [] => {
            assert_eq!(
                committed.unwrap().id(),
                id,
                "a due hold was missed by the sweep"
            );
            loom_common::note("ends with the later deadline");
        }
        [expired] => {
            assert_eq!(expired.id(), id);
            assert_eq!(committed, Err(StockError::UnknownReservation(id)));
            loom_common::note("ends with the first deadline");
        }
        _ => panic!("one hold expired twice: {swept:?}"),
    }
}

/// Two retries of one checkout (same idempotency key) race, and the first caller commits
/// what it got: one hold is opened in all, every call answers with it (or, after the
/// commit, says it was committed), one unit is sold.
fn idempotent_retries_hold_once<S: StockStore<Sku> + 'static>(store: S, _: Arc<ManualClock>) {
    let store = Arc::new(store);
    store.restock(&SKU, 2).unwrap();
    let checkout = || ReserveOptions::new().idempotency_key("cart-7");
    let retry = spawn(&store, move |store| {
        store.reserve_with(&[(SKU, 1)], &checkout())
    });
    let first = store.reserve_with(&[(SKU, 1)], &checkout()).unwrap();
    store.commit(first.id()).unwrap();
    match retry.join().unwrap() {
        Ok(retried) => {
            assert_eq!(retried.id(), first.id(), "a retry opened a second hold");
            loom_common::note("the retry answers with the open hold");
        }
        Err(ended) => {
            let committed = StockError::HoldEnded {
                key: "cart-7".into(),
                id: first.id(),
                outcome: HoldOutcome::Committed,
            };
            assert_eq!(ended, committed, "a retry after the commit");
            loom_common::note("the retry says the hold was committed");
        }
    }
    assert_eq!(counts(&*store, SKU), (1, 0, 3));
    let stats = store.stats();
    assert_eq!((stats.reserves, stats.replays, stats.commits), (1, 1, 1));
}

/// A waiter queues for the unit a hold with a deadline keeps; the clock passes the
/// deadline and `expire_due` gives the unit back: the expiry wakes the waiter (monitor).
fn expiry_wakes_the_waiter(store: MonitorStore<Sku>, clock: Arc<ManualClock>) {
    let (store, hold) = held_with_ttl(store, 1);
    let waiter = spawn(&store, |store| {
        store.reserve_timeout(&[(SKU, 1)], Duration::MAX)
    });
    clock.advance(PAST_THE_DEADLINE);
    assert_eq!(store.expire_due(), vec![hold]);
    waiter.join().unwrap().unwrap();
    assert_eq!(counts(&*store, SKU), (1, 1, 4));
}

#[test]
fn expiry_wakes_the_waiter_monitor() {
    clocked(
        "expiry_wakes_the_waiter::monitor",
        |clock| MonitorStore::builder().clock(clock).build(),
        expiry_wakes_the_waiter,
        &[],
    );
}

/// Generates, for each body `fn name<S>(store: S, clock: Arc<ManualClock>)`, a module with
/// one loom test per store, each store built on a fresh manual clock.
macro_rules! on_every_clocked_store {
    ($($name:ident => $outcomes:expr),+ $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[test]
                fn pessimistic() {
                    clocked(concat!(stringify!($name), "::pessimistic"), |clock| {
                        PessimisticStore::builder().clock(clock).build()
                    }, super::$name, $outcomes);
                }

                #[test]
                fn optimistic() {
                    clocked(concat!(stringify!($name), "::optimistic"), |clock| {
                        OptimisticStore::builder().clock(clock).build()
                    }, super::$name, $outcomes);
                }

                #[test]
                fn monitor() {
                    clocked(concat!(stringify!($name), "::monitor"), |clock| {
                        MonitorStore::builder().clock(clock).build()
                    }, super::$name, $outcomes);
                }

                #[test]
                fn adaptive() {
                    clocked(concat!(stringify!($name), "::adaptive"), |clock| {
                        stockledger::AdaptiveStore::builder()
                            .clock(clock)
                            .window_ops(1)
                            .hot_threshold_per_mille(1)
                            .cold_threshold_per_mille(0)
                            .build()
                    }, super::$name, $outcomes);
                }
            }
        )+
    };
}

/// Runs `body` on a store built by `build` on a fresh manual clock, in every interleaving,
/// and checks that the interleavings reached every one of `outcomes`.
fn clocked<S: 'static>(
    name: &str,
    build: fn(Arc<dyn Clock>) -> S,
    body: fn(S, Arc<ManualClock>),
    outcomes: &[&'static str],
) {
    let new = move || {
        let clock = Arc::new(ManualClock::new());
        (build(clock.clone()), clock)
    };
    loom_common::explore(name, new, move |(store, clock)| body(store, clock));
    loom_common::assert_noted(name, outcomes);
}

on_every_clocked_store!(
    commit_release_expiry_once => &["committed", "released", "expired"],
    extend_races_expiry => &["extended", "expired"],
    idempotent_retries_hold_once => &[
        "the retry answers with the open hold",
        "the retry says the hold was committed",
    ],
    extend_races_commit => &["extended", "committed first"],
    extensions_race => &["ends with the later deadline", "ends with the first deadline"],
);

/// [`held_then_extended`], checked to live in its slot (its id has the slot tag).
fn held_in_slot<S: StockStore<Sku>>(store: S, on_hand: u64) -> (Arc<S>, Reservation<Sku>) {
    let (store, hold) = held_then_extended(store, on_hand);
    assert_ne!(hold.id().get() & 1 << 63, 0, "a slot hold: {hold:?}");
    (store, hold)
}

/// The races above on a hold that lives in its SKU's slot (a plain one-line hold, then
/// given a deadline by `extend`): its deadline lives beside the slot and in the expiry
/// index, and the SKU's lock (the pessimistic and monitor stores) or the hold's lock, its
/// shard of the store's deadlines (the optimistic and adaptive stores), decides every
/// race.
macro_rules! slot_hold_models {
    ($($name:ident => $store:expr),+ $(,)?) => {$(
        mod $name {
            use super::*;

            #[test]
            fn commit_release_expiry_once() {
                clocked(
                    concat!(stringify!($name), "::commit_release_expiry_once"),
                    $store,
                    |store, clock| super::commit_release_expiry_once_of(store, clock, held_in_slot),
                    &["committed", "released", "expired"],
                );
            }

            #[test]
            fn extend_races_expiry() {
                clocked(
                    concat!(stringify!($name), "::extend_races_expiry"),
                    $store,
                    |store, clock| super::extend_races_expiry_of(store, clock, held_in_slot),
                    &["extended", "expired"],
                );
            }

            #[test]
            fn extend_races_commit() {
                clocked(
                    concat!(stringify!($name), "::extend_races_commit"),
                    $store,
                    |store, clock| super::extend_races_commit_of(store, clock, held_in_slot),
                    &["extended", "committed first"],
                );
            }

            #[test]
            fn extensions_race() {
                clocked(
                    concat!(stringify!($name), "::extensions_race"),
                    $store,
                    |store, clock| super::extensions_race_of(store, clock, held_in_slot),
                    &["ends with the later deadline", "ends with the first deadline"],
                );
            }
        }
    )+};
}

slot_hold_models!(
    slot_hold_pessimistic => |clock| PessimisticStore::builder().clock(clock).build(),
    slot_hold_monitor => |clock| MonitorStore::builder().clock(clock).build(),
    slot_hold_optimistic => |clock| OptimisticStore::builder().clock(clock).build(),
    slot_hold_adaptive => |clock| stockledger::AdaptiveStore::builder().clock(clock).build(),
);

/// With one compare-and-swap attempt per update (`retries_max(1)`), two sales of one unit
/// race: some interleaving makes one lose its attempt and get `Conflict` (loom explores it
/// deterministically, where a test on real threads can only wait for it), and whatever
/// happens a refused sale changes nothing: on hand, the version and the statistics count
/// the successful sales only.
fn optimistic_conflict_changes_nothing(store: OptimisticStore<Sku>) {
    let store = Arc::new(store);
    store.restock(&SKU, 2).unwrap();
    let racer = spawn(&store, |store| store.sell(&[(SKU, 1)]));
    let mine = store.sell(&[(SKU, 1)]);
    let theirs = racer.join().unwrap();
    let mut sold = 0;
    for outcome in [mine, theirs] {
        match outcome {
            Ok(()) => sold += 1,
            Err(StockError::Conflict {
                sku: SKU,
                attempts: 1,
            }) => loom_common::note("conflict"),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    // A compare-and-swap fails only because another succeeded.
    assert!(sold >= 1, "both sales lost");
    if sold == 2 {
        loom_common::note("both sold");
    }
    assert_eq!(counts(&*store, SKU), (2 - sold, 0, 1 + sold));
    let stats = store.stats();
    assert_eq!((stats.refusals, stats.cas_retries), (2 - sold, 2 - sold));
}

#[test]
fn optimistic_conflict_changes_nothing_optimistic() {
    let name = "optimistic_conflict_changes_nothing::optimistic";
    loom_common::explore(
        name,
        || OptimisticStore::builder().retries_max(1).build(),
        optimistic_conflict_changes_nothing,
    );
    loom_common::assert_noted(name, &["conflict", "both sold"]);
}

/// Negative control: a commit and an expiry sweep that each find the hold, then remove it
/// in a second step (check-then-act), which loom must catch resolving one hold twice.
mod controls {
    use std::collections::HashMap;
    use std::sync::Arc;

    use loom::sync::atomic::{AtomicU64, Ordering};
    use loom::sync::Mutex;
    use loom::thread;

    /// Open holds `id -> deadline` (in clock ticks), and the clock.
    struct CheckThenRemove {
        holds: Mutex<HashMap<u64, u64>>,
        now: AtomicU64,
    }

    impl CheckThenRemove {
        /// Commits `id` if it is open and not due.
        fn commit(&self, id: u64) -> bool {
            let deadline = self.holds.lock().unwrap().get(&id).copied();
            if deadline.is_none_or(|deadline| self.now.load(Ordering::SeqCst) >= deadline) {
                return false;
            }
            self.holds.lock().unwrap().remove(&id);
            true
        }

        /// Expires the due holds; returns how many.
        fn expire_due(&self) -> usize {
            let now = self.now.load(Ordering::SeqCst);
            let due: Vec<u64> = (self.holds.lock().unwrap().iter())
                .filter(|(_, deadline)| **deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in &due {
                self.holds.lock().unwrap().remove(id);
            }
            due.len()
        }
    }

    #[test]
    #[should_panic(expected = "resolved twice")]
    fn commit_and_expiry_check_then_remove() {
        loom::model(|| {
            let store = Arc::new(CheckThenRemove {
                holds: Mutex::new(HashMap::from([(7, 10)])),
                now: AtomicU64::new(0),
            });
            let committer = {
                let store = Arc::clone(&store);
                thread::spawn(move || store.commit(7))
            };
            store.now.store(20, Ordering::SeqCst);
            let expired = store.expire_due();
            let committed = committer.join().unwrap();
            let winners = expired + usize::from(committed);
            assert_eq!(winners, 1, "resolved twice");
        });
    }
}
