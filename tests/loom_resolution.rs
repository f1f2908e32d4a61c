#![cfg(loom)]
//! Exactly-once resolution: of racing commits and releases of one hold exactly one wins,
//! the others get `UnknownReservation`, stock moves once, and a loser that reads the SKU
//! after its answer sees the winner's move, on every store.
//!
//! Run: `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom_resolution`

mod loom_common;

use std::sync::Arc;

use loom_common::{counts, on_every_store, spawn, Outcome, Sku, SKU};
use stockledger::{Reservation, ReservationId, StockError, StockStore};

/// Checks that exactly one of `outcomes` resolved `hold` and the others were told it is
/// unknown; returns the index of the winner.
fn assert_one_resolution(hold: &Reservation<Sku>, outcomes: &[Outcome<Reservation<Sku>>]) -> usize {
    let winners: Vec<usize> = (0..outcomes.len())
        .filter(|&index| outcomes[index].is_ok())
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one resolution wins: {outcomes:?}"
    );
    for (index, outcome) in outcomes.iter().enumerate() {
        if index == winners[0] {
            assert_eq!(outcome.as_ref().unwrap(), hold, "the winner gets the hold");
        } else {
            assert_eq!(outcome, &Err(StockError::UnknownReservation(hold.id())));
        }
    }
    winners[0]
}

/// Commit, release and a second commit race on one hold of 1 unit (of 2 on hand).
fn commit_release_commit<S: StockStore<Sku> + 'static>(store: S) {
    let store = Arc::new(store);
    store.restock(&SKU, 2).unwrap();
    let hold = store.reserve(&[(SKU, 1)]).unwrap();
    let id = hold.id();
    let racers = [
        spawn(&store, move |store| store.commit(id)),
        spawn(&store, move |store| store.release(id)),
    ];
    let mut outcomes = vec![store.commit(id)];
    outcomes.extend(racers.map(|racer| racer.join().unwrap()));
    let winner = assert_one_resolution(&hold, &outcomes);
    let on_hand = if winner == 2 { 2 } else { 1 }; // index 2 is the release
    assert_eq!(counts(&*store, SKU), (on_hand, 0, 3));
}

/// Release, a second release and a commit race on one hold of two lines: both lines move
/// together, once.
fn two_line_hold_resolves_once<S: StockStore<Sku> + 'static>(store: S) {
    const CABLE: Sku = "cable";
    let store = Arc::new(store);
    store.restock(&SKU, 1).unwrap();
    store.restock(&CABLE, 2).unwrap();
    let hold = store.reserve(&[(CABLE, 2), (SKU, 1)]).unwrap();
    let id = hold.id();
    let racers = [
        spawn(&store, move |store| store.release(id)),
        spawn(&store, move |store| store.release(id)),
    ];
    let mut outcomes = vec![store.commit(id)];
    outcomes.extend(racers.map(|racer| racer.join().unwrap()));
    let committed = assert_one_resolution(&hold, &outcomes) == 0;
    let (sku_left, cable_left) = if committed { (0, 0) } else { (1, 2) };
    assert_eq!(counts(&*store, SKU), (sku_left, 0, 3));
    assert_eq!(counts(&*store, CABLE), (cable_left, 0, 3));
}

/// Two releases of the hold on the last unit race a new hold for it: one release wins,
/// and the new hold gets the unit only if it came after that release (never twice).
fn release_races_a_new_hold<S: StockStore<Sku> + 'static>(store: S) {
    let store = Arc::new(store);
    store.restock(&SKU, 1).unwrap();
    let hold = store.reserve(&[(SKU, 1)]).unwrap();
    let id: ReservationId = hold.id();
    let buyer = spawn(&store, |store| store.reserve(&[(SKU, 1)]).map(|_| ()));
    let racer = spawn(&store, move |store| store.release(id));
    let outcomes = [store.release(id), racer.join().unwrap()];
    assert_one_resolution(&hold, &outcomes);
    let bought = buyer.join().unwrap();
    match bought {
        Ok(()) => assert_eq!(counts(&*store, SKU), (1, 1, 4)),
        Err(error) => {
            assert_eq!(
                error,
                StockError::InsufficientStock {
                    sku: SKU,
                    requested: 1,
                    available: 0
                }
            );
            assert_eq!(counts(&*store, SKU), (1, 0, 3));
        }
    }
}

/// A commit and a release race on one hold; whichever loses, having been told the hold is
/// unknown, then reads the SKU: the winner's move must be there. (A resolution that lets
/// the hold disappear before its stock moves is not linearizable: the loser's answer says
/// the hold was resolved, and the level read after it says it was not.)
fn a_loser_sees_the_winners_move<S: StockStore<Sku> + 'static>(store: S) {
    let store = Arc::new(store);
    store.restock(&SKU, 2).unwrap();
    let hold = store.reserve(&[(SKU, 1)]).unwrap();
    let id = hold.id();
    let committer = spawn(&store, move |store| {
        let committed = store.commit(id);
        (committed.clone(), counts(store, SKU))
    });
    let released = store.release(id);
    let seen_by_releaser = counts(&*store, SKU);
    let (committed, seen_by_committer) = committer.join().unwrap();
    let winner = assert_one_resolution(&hold, &[committed, released]);
    // The winner's move: a commit sells the unit, a release gives it back.
    let after = if winner == 0 { (1, 0, 3) } else { (2, 0, 3) };
    let loser_saw = if winner == 0 {
        seen_by_releaser
    } else {
        seen_by_committer
    };
    assert_eq!(
        loser_saw, after,
        "the loser read the SKU before the winner's move"
    );
}

on_every_store!(
    commit_release_commit,
    two_line_hold_resolves_once,
    release_races_a_new_hold,
    a_loser_sees_the_winners_move,
);

/// Negative control: a registry that checks for the hold, then removes it in a second
/// step (check-then-act), which loom must catch releasing one hold twice.
mod controls {
    use std::collections::HashMap;
    use std::sync::Arc;

    use loom::sync::Mutex;
    use loom::thread;

    /// Holds `id -> units` and the SKU's reserved count, each behind its own lock.
    struct CheckThenAct {
        holds: Mutex<HashMap<u64, u64>>,
        reserved: Mutex<u64>,
    }

    impl CheckThenAct {
        fn release(&self, id: u64) -> bool {
            let Some(units) = self.holds.lock().unwrap().get(&id).copied() else {
                return false;
            };
            self.holds.lock().unwrap().remove(&id);
            let mut reserved = self.reserved.lock().unwrap();
            *reserved = reserved.checked_sub(units).expect("double release");
            true
        }
    }

    #[test]
    #[should_panic(expected = "double release")]
    fn check_then_act_resolution() {
        loom::model(|| {
            let store = Arc::new(CheckThenAct {
                holds: Mutex::new(HashMap::from([(7, 1)])),
                reserved: Mutex::new(1),
            });
            let racer = {
                let store = Arc::clone(&store);
                thread::spawn(move || store.release(7))
            };
            let released = [store.release(7), racer.join().unwrap()];
            assert_eq!(released.iter().filter(|&&won| won).count(), 1);
        });
    }
}
