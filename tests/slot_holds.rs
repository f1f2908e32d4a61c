//! Holds that live in their SKU's slot (every store's one-line holds with no TTL, key or
//! sink: under the SKU's lock in the pessimistic and monitor stores, in a hold word beside
//! the counts in the optimistic and adaptive stores): what the registry's holds do, they do
//! too, and an id of one never reaches a hold it did not name. The contract, model, loom and
//! linearizability suites run them as well (every plain one-line `reserve` of a store makes
//! one); these tests pin what only they have: their ids, the one word a SKU has for them,
//! and their way through `extend`, expiry, partial commits, statistics and snapshots.

use std::sync::Arc;
use std::time::Duration;

use stockledger::{
    AdaptiveStore, Clock, ManualClock, MonitorStore, OptimisticStore, PessimisticStore,
    ReservationId, ReserveOptions, StockError, StockStore, WaitingStore,
};

/// The bit of a slot hold's id (`lifecycle::slot_holds`).
const SLOT_TAG: u64 = 1 << 63;

fn in_slot(id: ReservationId) -> bool {
    id.get() & SLOT_TAG != 0
}

/// A clock that counts its readings.
#[derive(Debug, Default)]
struct CountingClock {
    inner: ManualClock,
    readings: std::sync::atomic::AtomicU64,
}

impl Clock for CountingClock {
    fn now(&self) -> std::time::Instant {
        self.readings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.now()
    }
}

impl CountingClock {
    fn readings(&self) -> u64 {
        self.readings.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The tests below, once per store that keeps holds in its slots.
macro_rules! slot_hold_tests {
    ($($name:ident => $Store:ident),+ $(,)?) => {$(
    mod $name {
        use super::*;

        /// A plain one-line hold lives in its slot; a second one of the same SKU, while the
        /// first is open, and holds with a TTL, a key or two lines, live in the registry. All of
        /// them resolve alike.
        #[test]
        fn one_hold_a_sku_lives_in_its_slot_the_rest_in_the_registry() {
            let store = $Store::new();
            store.restock(&"tv", 10).unwrap();
            store.restock(&"cable", 10).unwrap();
            let first = store.reserve(&[("tv", 1)]).unwrap();
            let second = store.reserve(&[("tv", 2)]).unwrap();
            let timed = store
                .reserve_with(
                    &[("cable", 1)],
                    &ReserveOptions::new().ttl(Duration::from_secs(60)),
                )
                .unwrap();
            let keyed = store
                .reserve_with(&[("cable", 1)], &ReserveOptions::new().idempotency_key("k"))
                .unwrap();
            let two_lines = store.reserve(&[("tv", 1), ("cable", 1)]).unwrap();
            let placed: Vec<bool> = [&first, &second, &timed, &keyed, &two_lines]
                .iter()
                .map(|hold| in_slot(hold.id()))
                .collect();
            assert_eq!(placed, [true, false, false, false, false]);
            // The store's `Debug` counts the slot hold with the registry's four.
            assert!(format!("{store:?}").contains("open_holds: 5"), "{store:?}");
            // Negative control of the check above: a registry id lacks the tag.
            assert!(!in_slot(ReservationId::from_u64(42)));
            assert_eq!(store.reservation(first.id()), Some(first.clone()));
            assert_eq!(store.level(&"tv").unwrap().reserved, 4);
            // The slot's word is free again once its hold is resolved: the next hold takes it.
            assert_eq!(store.commit(first.id()), Ok(first.clone()));
            assert_eq!(
                store.commit(first.id()),
                Err(StockError::UnknownReservation(first.id()))
            );
            assert_eq!(store.reservation(first.id()), None);
            let third = store.reserve(&[("tv", 1)]).unwrap();
            assert!(in_slot(third.id()) && third.id() != first.id());
            for hold in [second, timed, keyed, two_lines, third] {
                store.release(hold.id()).unwrap();
            }
            let tv = store.level(&"tv").unwrap();
            assert_eq!((tv.on_hand, tv.reserved), (9, 0));
            let stats = store.stats();
            assert_eq!((stats.reserves, stats.commits, stats.releases), (6, 1, 5));
            assert!(format!("{store:?}").contains("open_holds: 0"));
        }

        /// A hold of more units than a slot's word carries (2²⁴ or more) lives in the registry.
        #[test]
        fn a_hold_too_large_for_the_word_lives_in_the_registry() {
            let store = $Store::new();
            store.restock(&"bolt", 1 << 25).unwrap();
            let small = store.reserve(&[("bolt", (1 << 24) - 1)]).unwrap();
            store.release(small.id()).unwrap();
            let large = store.reserve(&[("bolt", 1 << 24)]).unwrap();
            assert!(in_slot(small.id()) && !in_slot(large.id()));
            assert_eq!(
                store.commit(large.id()).unwrap().lines(),
                [("bolt", 1 << 24)]
            );
            assert_eq!(store.level(&"bolt").unwrap().on_hand, (1 << 25) - (1 << 24));
        }

        /// An id names a slot position, not a store: the same position in another store (whose
        /// slot holds a hold of its own) does not answer to it, and neither does a store with no
        /// SKU there.
        #[test]
        fn an_id_of_one_store_is_unknown_to_another() {
            let a = $Store::new();
            let b = $Store::new();
            let empty = $Store::<&str>::new();
            for store in [&a, &b] {
                store.restock(&"tv", 5).unwrap();
            }
            let of_a = a.reserve(&[("tv", 1)]).unwrap();
            let of_b = b.reserve(&[("tv", 1)]).unwrap();
            assert!(in_slot(of_a.id()) && in_slot(of_b.id()));
            // Same SKU at the same position: only the counter value tells them apart.
            assert_ne!(of_a.id(), of_b.id());
            for (store, id) in [(&b, of_a.id()), (&a, of_b.id()), (&empty, of_a.id())] {
                assert_eq!(store.commit(id), Err(StockError::UnknownReservation(id)));
                assert_eq!(store.release(id), Err(StockError::UnknownReservation(id)));
                assert_eq!(store.reservation(id), None);
                assert_eq!(
                    store.extend(id, Duration::from_secs(1)),
                    Err(StockError::UnknownReservation(id))
                );
            }
            // Negative control: each store resolves its own.
            assert_eq!(b.commit(of_b.id()), Ok(of_b));
            assert_eq!(a.release(of_a.id()), Ok(of_a));
            assert_eq!(a.level(&"tv").unwrap().on_hand, 5);
            assert_eq!(b.level(&"tv").unwrap().on_hand, 4);
        }

        /// `extend` gives a slot hold a deadline: it can then be committed before it, is swept by
        /// `expire_due` after it, and a commit after it is refused as expired.
        #[test]
        fn an_extended_slot_hold_expires_at_its_deadline() {
            let clock = Arc::new(ManualClock::new());
            let store = $Store::builder().clock(clock.clone()).build();
            store.restock(&"tv", 5).unwrap();
            let kept = store.reserve(&[("tv", 1)]).unwrap();
            assert!(in_slot(kept.id()) && kept.expires_at().is_none());
            let extended = store.extend(kept.id(), Duration::from_secs(10)).unwrap();
            assert_eq!(
                extended.expires_at(),
                Some(clock.now() + Duration::from_secs(10))
            );
            assert_eq!(store.reservation(kept.id()), Some(extended.clone()));
            clock.advance(Duration::from_secs(5));
            assert_eq!(store.expire_due(), []);
            // Extended again, then past the deadline: the sweep expires it, once.
            store.extend(kept.id(), Duration::from_secs(10)).unwrap();
            clock.advance(Duration::from_secs(11));
            assert_eq!(
                store.reservation(kept.id()),
                None,
                "hidden past its deadline"
            );
            let swept = store.expire_due();
            assert_eq!(swept.len(), 1);
            assert_eq!(swept[0].id(), kept.id());
            assert_eq!(store.expire_due(), []);
            assert_eq!(
                store.commit(kept.id()),
                Err(StockError::UnknownReservation(kept.id()))
            );
            // A second slot hold, extended and left past its deadline: the commit expires it.
            let late = store.reserve(&[("tv", 2)]).unwrap();
            assert!(in_slot(late.id()));
            store.extend(late.id(), Duration::from_secs(1)).unwrap();
            clock.advance(Duration::from_secs(2));
            assert_eq!(store.commit(late.id()), Err(StockError::Expired(late.id())));
            let tv = store.level(&"tv").unwrap();
            assert_eq!((tv.on_hand, tv.reserved), (5, 0), "every unit went back");
            assert_eq!(store.stats().expirations, 2);
            // Negative control: extended and committed before its deadline, a hold sells.
            let sold = store.reserve(&[("tv", 1)]).unwrap();
            store.extend(sold.id(), Duration::from_secs(10)).unwrap();
            clock.advance(Duration::from_secs(9));
            assert!(store.commit(sold.id()).is_ok());
            assert_eq!(store.level(&"tv").unwrap().on_hand, 4);
        }

        /// A slot hold without a deadline never reads the clock, even in a store whose
        /// other holds have TTLs (the registry then reads it at every resolution).
        #[test]
        fn a_slot_hold_without_a_deadline_reads_no_clock() {
            let clock = Arc::new(CountingClock::default());
            let store = $Store::builder().clock(clock.clone()).build();
            store.restock(&"tv", 5).unwrap();
            store.restock(&"cable", 5).unwrap();
            let timed = store
                .reserve_with(&[("cable", 1)], &ReserveOptions::new().ttl(Duration::from_secs(60)))
                .unwrap();
            let before = clock.readings();
            let plain = store.reserve(&[("tv", 1)]).unwrap();
            assert!(in_slot(plain.id()));
            store.commit(plain.id()).unwrap();
            assert_eq!(clock.readings(), before, "no reading for the slot hold");
            // Control: the hold with a TTL reads the clock at its commit.
            store.commit(timed.id()).unwrap();
            assert!(clock.readings() > before);
        }

        /// A partial commit of a slot hold sells the named units and gives the rest back; a
        /// refused one changes nothing and leaves the hold open.
        #[test]
        fn a_slot_hold_commits_in_part() {
            let store = $Store::new();
            store.restock(&"tv", 10).unwrap();
            store.restock(&"cable", 10).unwrap();
            let hold = store.reserve(&[("tv", 4)]).unwrap();
            assert!(in_slot(hold.id()));
            assert_eq!(
                store.commit_partial(hold.id(), &[("tv", 5)]),
                Err(StockError::AboveHold {
                    id: hold.id(),
                    sku: "tv",
                    held: 4,
                    requested: 5
                })
            );
            assert_eq!(
                store.commit_partial(hold.id(), &[("cable", 1)]),
                Err(StockError::NotInHold {
                    id: hold.id(),
                    sku: "cable"
                })
            );
            assert_eq!(store.reservation(hold.id()), Some(hold.clone()));
            assert_eq!(
                store.commit_partial(hold.id(), &[("tv", 3)]),
                Ok(hold.clone())
            );
            let tv = store.level(&"tv").unwrap();
            assert_eq!((tv.on_hand, tv.reserved), (7, 0));
            assert_eq!(
                store.commit_partial(hold.id(), &[("tv", 1)]),
                Err(StockError::UnknownReservation(hold.id()))
            );
        }

        /// A snapshot carries open slot holds (one with a deadline) into a restored store's
        /// registry: they keep their ids and deadlines and resolve there, and new holds of the
        /// restored store never get their ids.
        #[test]
        fn slot_holds_survive_a_snapshot() {
            let clock = Arc::new(ManualClock::new());
            let store = $Store::builder()
                .snapshots()
                .clock(clock.clone())
                .build();
            store.restock(&"tv".to_string(), 5).unwrap();
            store.restock(&"cable".to_string(), 5).unwrap();
            let plain = store.reserve(&[("tv".to_string(), 2)]).unwrap();
            let timed = store.reserve(&[("cable".to_string(), 1)]).unwrap();
            store.extend(timed.id(), Duration::from_secs(30)).unwrap();
            assert!(in_slot(plain.id()) && in_slot(timed.id()));
            let snapshot = store.snapshot().unwrap();
            assert_eq!(snapshot.holds.len(), 2);
            let ttl = snapshot.holds.iter().find(|hold| hold.id == timed.id());
            assert_eq!(ttl.and_then(|hold| hold.ttl_ms), Some(30_000));

            let copy = $Store::builder()
                .clock(Arc::new(ManualClock::new()))
                .restore(snapshot)
                .unwrap()
                .build();
            assert_eq!(
                copy.level(&"tv".to_string()),
                store.level(&"tv".to_string())
            );
            let fresh = copy.reserve(&[("tv".to_string(), 1)]).unwrap();
            assert!(fresh.id() != plain.id() && fresh.id() != timed.id());
            assert_eq!(copy.commit(plain.id()).unwrap().lines(), plain.lines());
            assert_eq!(copy.release(timed.id()).unwrap().id(), timed.id());
            assert_eq!(copy.commit(fresh.id()).unwrap().id(), fresh.id());
            let tv = copy.level(&"tv".to_string()).unwrap();
            assert_eq!((tv.on_hand, tv.reserved), (2, 0));
            assert_eq!(copy.level(&"cable".to_string()).unwrap().reserved, 0);
        }
    }
    )+};
}

slot_hold_tests!(
    pessimistic => PessimisticStore,
    monitor => MonitorStore,
    optimistic => OptimisticStore,
    adaptive => AdaptiveStore,
);

/// The monitor store's slot hold, released, hands its units to the SKU's first waiter.
#[test]
fn a_released_slot_hold_grants_the_monitor_waiter() {
    let store = Arc::new(MonitorStore::new());
    store.restock(&"tv", 1).unwrap();
    let hold = store.reserve(&[("tv", 1)]).unwrap();
    assert!(in_slot(hold.id()));
    let waiter = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.reserve_timeout(&[("tv", 1)], Duration::from_secs(60)))
    };
    while store.queued(&"tv") == 0 {
        std::thread::yield_now();
    }
    store.release(hold.id()).unwrap();
    let granted = waiter.join().unwrap().unwrap();
    let tv = store.level(&"tv").unwrap();
    assert_eq!((tv.on_hand, tv.reserved), (1, 1));
    store.commit(granted.id()).unwrap();
    assert_eq!(store.level(&"tv").unwrap().on_hand, 0);
}
