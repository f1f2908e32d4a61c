//! Snapshots of the in-memory stores: a round trip through `restore` on every store, bad
//! snapshots refused, and snapshots taken under load, each checked against the events of
//! the run to be the state at one point of its history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stockledger::{
    AdaptiveStore, EventSink, HoldOutcome, ManualClock, MonitorStore, OptimisticStore,
    PessimisticStore, ReservationId, ReserveOptions, Snapshot, SnapshotError, StockError,
    StockEvent, StockStore, StoreBuilder,
};

/// A store type that snapshots and restores (the four in-memory stores).
trait Durable: StockStore<String> + Sized + 'static {
    const NAME: &'static str;
    fn builder() -> StoreBuilder<String, Self>;
    fn take(&self) -> Result<Snapshot<String>, SnapshotError>;
    fn restore(
        builder: StoreBuilder<String, Self>,
        snapshot: Snapshot<String>,
    ) -> Result<StoreBuilder<String, Self>, SnapshotError>;
    fn finish(builder: StoreBuilder<String, Self>) -> Self;
}

macro_rules! durable {
    ($store:ident, $name:literal) => {
        impl Durable for $store<String> {
            const NAME: &'static str = $name;
            fn builder() -> StoreBuilder<String, Self> {
                $store::builder()
            }
            fn take(&self) -> Result<Snapshot<String>, SnapshotError> {
                self.snapshot()
            }
            fn restore(
                builder: StoreBuilder<String, Self>,
                snapshot: Snapshot<String>,
            ) -> Result<StoreBuilder<String, Self>, SnapshotError> {
                builder.restore(snapshot)
            }
            fn finish(builder: StoreBuilder<String, Self>) -> Self {
                builder.build()
            }
        }
    };
}

durable!(PessimisticStore, "pessimistic");
durable!(OptimisticStore, "optimistic");
durable!(MonitorStore, "monitor");
durable!(AdaptiveStore, "adaptive");

/// Runs `body::<S>()` for each store type.
macro_rules! on_every_store {
    ($body:ident) => {
        $body::<PessimisticStore<String>>();
        $body::<OptimisticStore<String>>();
        $body::<MonitorStore<String>>();
        $body::<AdaptiveStore<String>>();
    };
}

fn sku(name: &str) -> String {
    name.to_string()
}

/// Every SKU, hold, key and threshold comes back; restored holds resolve, keep their ids,
/// answer their keys' retries, and new ids do not collide with them.
fn round_trip<S: Durable>() {
    let name = S::NAME;
    let clock = Arc::new(ManualClock::new());
    let store = S::finish(S::builder().snapshots().clock(clock.clone()));
    store.restock(&sku("a"), 10).unwrap();
    store.restock(&sku("b"), 5).unwrap();
    store.set_low_stock_threshold(&sku("a"), 3).unwrap();
    let keyed = ReserveOptions::new()
        .ttl(Duration::from_secs(60))
        .idempotency_key("order-1");
    let open = store
        .reserve_with(&[(sku("a"), 2), (sku("b"), 1)], &keyed)
        .unwrap();
    let short = store
        .reserve_with(
            &[(sku("b"), 2)],
            &ReserveOptions::new().ttl(Duration::from_secs(5)),
        )
        .unwrap();
    let done = store
        .reserve_with(
            &[(sku("a"), 1)],
            &ReserveOptions::new().idempotency_key("order-0"),
        )
        .unwrap();
    store.commit(done.id()).unwrap();
    store.sell(&[(sku("a"), 1)]).unwrap();
    clock.advance(Duration::from_secs(2));

    let snapshot = store.take().unwrap();
    assert_eq!(snapshot.skus.len(), 2, "{name}");
    assert_eq!(snapshot.holds.len(), 2, "{name}");
    assert_eq!(
        snapshot
            .holds
            .iter()
            .find(|h| h.id == short.id())
            .unwrap()
            .ttl_ms,
        Some(3000)
    );
    assert_eq!(snapshot.resolved_keys.len(), 1, "{name}");
    assert_eq!(
        snapshot.resolved_keys[0].outcome,
        HoldOutcome::Committed,
        "{name}"
    );

    let clock2 = Arc::new(ManualClock::new());
    let copy = S::finish(S::restore(S::builder().clock(clock2.clone()), snapshot.clone()).unwrap());
    for name in ["a", "b"] {
        assert_eq!(
            copy.level(&sku(name)),
            store.level(&sku(name)),
            "{}",
            S::NAME
        );
    }
    assert_eq!(
        copy.take().unwrap(),
        snapshot,
        "{name}: a restored store snapshots the same"
    );
    // The keyed retry answers with the restored hold; the resolved key says how it ended.
    assert_eq!(
        copy.reserve_with(&[(sku("a"), 2), (sku("b"), 1)], &keyed)
            .unwrap()
            .id(),
        open.id(),
        "{name}"
    );
    let retry = copy.reserve_with(
        &[(sku("a"), 1)],
        &ReserveOptions::new().idempotency_key("order-0"),
    );
    assert!(
        matches!(
            retry,
            Err(StockError::HoldEnded {
                outcome: HoldOutcome::Committed,
                ..
            })
        ),
        "{name}: {retry:?}"
    );
    // New holds get new ids.
    let fresh = copy.reserve(&[(sku("a"), 1)]).unwrap();
    assert!(
        ![open.id(), short.id(), done.id()].contains(&fresh.id()),
        "{name}"
    );
    // The short hold is past its deadline 3 s later, on the restored store's clock.
    clock2.advance(Duration::from_secs(3));
    assert_eq!(
        copy.commit(short.id()),
        Err(StockError::Expired(short.id())),
        "{name}"
    );
    copy.commit(open.id()).unwrap();
    copy.release(fresh.id()).unwrap();
    let a = copy.level(&sku("a")).unwrap();
    assert_eq!((a.on_hand, a.reserved), (10 - 1 - 1 - 2, 0), "{name}");
    let b = copy.level(&sku("b")).unwrap();
    assert_eq!((b.on_hand, b.reserved), (5 - 1, 0), "{name}");
}

#[test]
fn a_restored_store_is_the_store_it_was_copied_from() {
    on_every_store!(round_trip);
}

/// A hold restored past its deadline expires as usual: a sweep gives its units back.
fn restored_past_deadline<S: Durable>() {
    let clock = Arc::new(ManualClock::new());
    let store = S::finish(S::builder().snapshots().clock(clock.clone()));
    store.restock(&sku("a"), 4).unwrap();
    let hold = store
        .reserve_with(
            &[(sku("a"), 3)],
            &ReserveOptions::new().ttl(Duration::from_secs(1)),
        )
        .unwrap();
    clock.advance(Duration::from_secs(5));
    let snapshot = store.take().unwrap();
    assert_eq!(snapshot.holds[0].ttl_ms, Some(0), "{}", S::NAME);
    let copy = S::finish(S::restore(S::builder(), snapshot).unwrap());
    let expired = copy.expire_due();
    assert_eq!(
        expired.iter().map(|hold| hold.id()).collect::<Vec<_>>(),
        [hold.id()],
        "{}",
        S::NAME
    );
    assert_eq!(copy.level(&sku("a")).unwrap().available(), 4, "{}", S::NAME);
}

#[test]
fn a_hold_restored_past_its_deadline_expires() {
    on_every_store!(restored_past_deadline);
}

fn refusals<S: Durable>() {
    let name = S::NAME;
    assert_eq!(
        S::finish(S::builder()).take(),
        Err(SnapshotError::Disabled),
        "{name}"
    );
    let store = S::finish(S::builder().snapshots());
    store.restock(&sku("a"), 4).unwrap();
    store.restock(&sku("b"), 4).unwrap();
    store.reserve(&[(sku("a"), 1), (sku("b"), 2)]).unwrap();
    let good = store.take().unwrap();
    let refused = |change: &dyn Fn(&mut Snapshot<String>)| {
        let mut bad = good.clone();
        change(&mut bad);
        S::restore(S::builder(), bad).err()
    };
    assert_eq!(
        refused(&|s| s.format_version = 2),
        Some(SnapshotError::UnsupportedVersion {
            found: 2,
            supported: 1
        }),
        "{name}"
    );
    let invalid =
        |error: Option<SnapshotError>| matches!(error, Some(SnapshotError::Invalid { .. }));
    assert!(
        invalid(refused(&|s| s.skus[0].reserved += 1)),
        "{name}: units no hold owns"
    );
    assert!(
        invalid(refused(&|s| s.holds[0].lines.reverse())),
        "{name}: unsorted lines"
    );
    assert!(
        invalid(refused(&|s| s.holds[0].lines[0].1 = 0)),
        "{name}: a line of 0 units"
    );
    assert!(
        invalid(refused(&|s| {
            s.skus.remove(0);
        })),
        "{name}: a hold on an unlisted SKU"
    );
    assert!(
        invalid(refused(&|s| {
            let hold = s.holds[0].clone();
            s.holds.push(hold);
        })),
        "{name}: a hold twice"
    );
    assert!(
        invalid(refused(&|s| {
            s.skus[0].on_hand = 0;
        })),
        "{name}: reserved past on hand"
    );
    assert!(
        invalid(refused(
            &|s| s.holds[0].idempotency_key = Some(String::new())
        )),
        "{name}"
    );
    assert!(
        S::restore(S::builder(), good).is_ok(),
        "{name}: the unchanged snapshot restores"
    );
}

#[test]
fn a_snapshot_that_contradicts_itself_is_refused() {
    on_every_store!(refusals);
}

#[test]
fn counts_past_a_compare_and_swap_stores_limit_are_refused() {
    let mut snapshot = {
        let store = PessimisticStore::builder().snapshots().build();
        store
            .restock(&sku("a"), OptimisticStore::<String>::QUANTITY_MAX + 1)
            .unwrap();
        store.snapshot().unwrap()
    };
    assert!(matches!(
        OptimisticStore::builder().restore(snapshot.clone()),
        Err(SnapshotError::Invalid { .. })
    ));
    assert!(matches!(
        AdaptiveStore::builder().restore(snapshot.clone()),
        Err(SnapshotError::Invalid { .. })
    ));
    snapshot.skus[0].on_hand = OptimisticStore::<String>::QUANTITY_MAX;
    assert!(OptimisticStore::builder().restore(snapshot).is_ok());
}

/// Records every event, in the order the sink got them.
#[derive(Default)]
struct Log(Mutex<Vec<StockEvent<String>>>);

impl EventSink<String> for Log {
    fn on_event(&self, event: &StockEvent<String>) {
        self.0.lock().unwrap().push(event.clone());
    }
}

const SKUS: usize = 6;
const START_UNITS: u64 = 400;

/// Why `snapshot` is not the state of the run after some prefix of its changes: checked
/// against every event of the run (`events`), by the versions each carries.
///
/// The snapshot's version of each SKU names how many of that SKU's changes it holds. It is
/// one state of the history when: each SKU's on hand is the on hand of its event at that
/// version (or the last before it: versions a refused compare-and-swap request bumped
/// carry no event and no change of on hand); every change of several SKUs is in it on all
/// of them or on none (one linearization point); its holds are exactly those opened and
/// not closed by the changes it holds; `restocked = on hand + sold` per SKU.
fn check(snapshot: &Snapshot<String>, events: &[StockEvent<String>]) -> Result<(), String> {
    let version: HashMap<&String, u64> = snapshot
        .skus
        .iter()
        .map(|sku| (&sku.sku, sku.version))
        .collect();
    let within = |sku: &String, v: u64| version.get(sku).is_some_and(|at| v <= *at);
    let mut last_on_hand: HashMap<&String, (u64, u64)> = HashMap::new();
    let mut restocked: BTreeMap<&String, u64> = BTreeMap::new();
    let mut sold: BTreeMap<&String, u64> = BTreeMap::new();
    let mut open: BTreeSet<ReservationId> = BTreeSet::new();
    let mut closed: BTreeSet<ReservationId> = BTreeSet::new();
    for event in events {
        let lines = event.lines();
        let inside: Vec<bool> = lines
            .iter()
            .map(|l| within(&l.sku, l.level.version))
            .collect();
        if inside.iter().any(|i| *i) != inside.iter().all(|i| *i) {
            return Err(format!("{event:?} is in the snapshot on some SKUs only"));
        }
        if !inside.first().copied().unwrap_or(false) {
            continue;
        }
        for line in lines {
            let last = last_on_hand.entry(&line.sku).or_insert((0, 0));
            if line.level.version >= last.0 {
                *last = (line.level.version, line.level.on_hand);
            }
        }
        match event {
            StockEvent::Restocked { line } => {
                *restocked.entry(&line.sku).or_default() += line.quantity
            }
            StockEvent::Sold { lines } | StockEvent::Committed { lines, .. } => {
                for line in lines {
                    *sold.entry(&line.sku).or_default() += line.quantity;
                }
            }
            _ => {}
        }
        // Events reach the sink after the store's locks are released, so a hold's close
        // may come before its open (a sweep expired it first): open minus closed.
        match event {
            StockEvent::Reserved { id, .. } => {
                open.insert(*id);
            }
            StockEvent::Committed { id, .. }
            | StockEvent::Released { id, .. }
            | StockEvent::Expired { id, .. } => {
                closed.insert(*id);
            }
            _ => {}
        }
    }
    let open: BTreeSet<ReservationId> = open.difference(&closed).copied().collect();
    for sku in &snapshot.skus {
        let expected = last_on_hand.get(&sku.sku).map(|(_, on_hand)| *on_hand);
        if expected != Some(sku.on_hand) {
            return Err(format!(
                "{:?}: on hand {} where its events say {expected:?}",
                sku.sku, sku.on_hand
            ));
        }
        let (r, s) = (
            restocked.get(&sku.sku).copied().unwrap_or(0),
            sold.get(&sku.sku).copied().unwrap_or(0),
        );
        if r != sku.on_hand + s {
            return Err(format!(
                "{:?}: restocked {r} != on hand {} + sold {s}",
                sku.sku, sku.on_hand
            ));
        }
    }
    let holds: BTreeSet<ReservationId> = snapshot.holds.iter().map(|hold| hold.id).collect();
    if holds != open {
        return Err(format!("holds {holds:?}, the events say {open:?}"));
    }
    Ok(())
}

/// One worker's random orders until `stop`: sales, holds (some with a short TTL) that it
/// commits or releases, sweeps of due holds.
fn work(store: &dyn StockStore<String>, seed: u64, stop: &AtomicBool) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let pick = |n: u64| sku(&format!("sku-{n}"));
    while !stop.load(Ordering::Relaxed) {
        let a = pick(next(SKUS as u64));
        let b = pick(next(SKUS as u64));
        match next(6) {
            0 => drop(store.sell(&[(a, 1)])),
            1 => drop(store.sell(&[(a, 1), (b, 1)])),
            2 | 3 => {
                let ttl = ReserveOptions::new().ttl(Duration::from_micros(next(2000)));
                if let Ok(hold) = store.reserve_with(&[(a, 1 + next(2)), (b, 1)], &ttl) {
                    if next(2) == 0 {
                        let _ = store.commit(hold.id());
                    } else {
                        let _ = store.release(hold.id());
                    }
                }
            }
            4 => drop(store.restock(&a, 1)),
            _ => drop(store.expire_due()),
        }
    }
}

/// Threads sell, hold, commit, release, restock and expire while another takes snapshots;
/// each snapshot is one state of the history and restores.
fn under_load<S: Durable>() {
    let log = Arc::new(Log::default());
    let store = Arc::new(S::finish(S::builder().snapshots().event_sink(log.clone())));
    for n in 0..SKUS {
        store
            .restock(&sku(&format!("sku-{n}")), START_UNITS)
            .unwrap();
    }
    let stop = AtomicBool::new(false);
    let snapshots = std::thread::scope(|scope| {
        for seed in 1..=3 {
            let (store, stop) = (&store, &stop);
            scope.spawn(move || work(store.as_ref(), seed, stop));
        }
        let mut snapshots = Vec::new();
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(2));
            snapshots.push(store.take().unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        snapshots
    });
    let events = log.0.lock().unwrap().clone();
    let mut changed = 0;
    for (index, snapshot) in snapshots.iter().enumerate() {
        if let Err(why) = check(snapshot, &events) {
            panic!("{}: snapshot {index}: {why}", S::NAME);
        }
        let restored = S::restore(S::builder(), snapshot.clone());
        assert!(restored.is_ok(), "{}: {:?}", S::NAME, restored.err());
        changed += usize::from(index > 0 && snapshots[index - 1] != *snapshot);
    }
    assert!(
        changed > 10,
        "{}: the snapshots were taken while the store changed ({changed})",
        S::NAME
    );
    // Negative controls of the checker: a copy torn between two moments (one SKU's count
    // from later than the rest) and a hold dropped from the copy are caught.
    let mut torn = snapshots[20].clone();
    let later = snapshots.last().unwrap();
    let moved = (0..SKUS)
        .find(|n| torn.skus[*n] != later.skus[*n])
        .expect("a SKU changed");
    torn.skus[moved] = later.skus[moved].clone();
    assert!(
        check(&torn, &events).is_err(),
        "{}: a torn copy passed the check",
        S::NAME
    );
    let mut dropped = snapshots
        .iter()
        .find(|s| !s.holds.is_empty())
        .expect("a snapshot with a hold")
        .clone();
    dropped.holds.pop();
    assert!(
        check(&dropped, &events).is_err(),
        "{}: a copy without a hold passed",
        S::NAME
    );
}

#[test]
fn snapshots_under_load_are_states_of_the_history() {
    on_every_store!(under_load);
}

#[cfg(feature = "serde")]
#[test]
fn a_snapshot_round_trips_through_json() {
    let store = MonitorStore::builder().snapshots().build();
    store.restock(&sku("a"), 3).unwrap();
    let options = ReserveOptions::new()
        .ttl(Duration::from_secs(9))
        .idempotency_key("k");
    store.reserve_with(&[(sku("a"), 2)], &options).unwrap();
    let snapshot = store.snapshot().unwrap();
    let json = serde_json::to_value(&snapshot).unwrap();
    assert_eq!(json["format_version"], 1);
    assert_eq!(
        json["skus"][0],
        serde_json::json!({"sku":"a","on_hand":3,"reserved":2,"version":2,"low_stock_threshold":0})
    );
    assert_eq!(json["holds"][0]["idempotency_key"], "k");
    let back: Snapshot<String> = serde_json::from_value(json).unwrap();
    assert_eq!(back, snapshot);
}

/// Events of holds carry their idempotency key; JSON written before the field existed
/// reads as no key.
#[cfg(feature = "serde")]
#[test]
fn hold_events_carry_their_key() {
    let log = Arc::new(Log::default());
    let store = PessimisticStore::builder().event_sink(log.clone()).build();
    store.restock(&sku("a"), 3).unwrap();
    let hold = store
        .reserve_with(
            &[(sku("a"), 1)],
            &ReserveOptions::new().idempotency_key("order-7"),
        )
        .unwrap();
    store.commit(hold.id()).unwrap();
    let events = log.0.lock().unwrap().clone();
    let keys: Vec<Option<&str>> = events
        .iter()
        .filter_map(|event| match event {
            StockEvent::Reserved { key, .. } | StockEvent::Committed { key, .. } => {
                Some(key.as_deref())
            }
            _ => None,
        })
        .collect();
    assert_eq!(keys, [Some("order-7"), Some("order-7")]);
    let json = serde_json::to_value(&events[1]).unwrap();
    assert_eq!(json["detail"]["key"], "order-7");
    let old = r#"{"event":"Released","detail":{"id":7,"lines":[]}}"#;
    let old: StockEvent<String> = serde_json::from_str(old).unwrap();
    assert!(matches!(old, StockEvent::Released { key: None, .. }));
}

/// A monitor store's waiter that holds its first line while it waits for the second is not
/// in a snapshot (no hold yet): its units count as free, as if it had not been served, and
/// the snapshot restores; once the waiter has its hold, the next snapshot has it.
#[test]
fn a_waiter_half_served_is_not_in_a_snapshot() {
    use stockledger::WaitingStore;
    let store = Arc::new(MonitorStore::builder().snapshots().build());
    store.restock(&sku("a"), 2).unwrap();
    store.restock(&sku("b"), 1).unwrap();
    store.sell(&[(sku("b"), 1)]).unwrap(); // b sold out: the waiter holds a, waits for b
    let waiter = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.reserve_timeout(&[(sku("a"), 2), (sku("b"), 1)], Duration::from_secs(60))
        })
    };
    while store.level(&sku("a")).unwrap().reserved < 2 {
        std::thread::yield_now();
    }
    let half = store.snapshot().unwrap();
    assert!(half.holds.is_empty());
    assert_eq!((half.skus[0].on_hand, half.skus[0].reserved), (2, 0));
    let copy = MonitorStore::builder().restore(half).unwrap().build();
    assert_eq!(copy.level(&sku("a")).unwrap().available(), 2);
    store.restock(&sku("b"), 1).unwrap();
    let hold = waiter.join().unwrap().unwrap();
    let whole = store.snapshot().unwrap();
    assert_eq!(
        whole.holds.iter().map(|h| h.id).collect::<Vec<_>>(),
        [hold.id()]
    );
    assert_eq!((whole.skus[0].reserved, whole.skus[1].reserved), (2, 1));
}

/// The new public types can cross threads.
#[test]
fn snapshots_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Snapshot<String>>();
    send_sync::<SnapshotError>();
    send_sync::<StoreBuilder<String, PessimisticStore<String>>>();
}
