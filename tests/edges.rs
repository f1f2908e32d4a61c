//! User code at the edges (issue 9): event sinks and clocks that do what real ones do
//! (panic, block, call back into the store, log it) never strand a hold, never keep another
//! caller waiting, and never lose a low-stock alert, on every store.
//!
//! A call that could deadlock runs under [`finishes`], which fails the test when the call
//! has not returned after 30 s: a liveness check (on the old code these calls never
//! returned), not a timing assertion.

mod common;

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use common::{lines, sku};
use stockledger::{
    AdaptiveStore, Clock, EventSink, ManualClock, MonitorStore, OptimisticStore, PessimisticStore,
    Reaper, Reservation, ReserveOptions, StockError, StockEvent, StockStore, StoreBuilder,
    WaitingStore,
};

/// How long a call may take before [`finishes`] calls it a deadlock.
const DEADLOCK: Duration = Duration::from_secs(30);
/// The time to live of the tests' holds.
const TTL: Duration = Duration::from_secs(10);

/// Runs `call` on another thread and returns its result, or fails the test naming `what`
/// when it has not returned within [`DEADLOCK`] (the thread is left behind).
fn finishes<T: Send + 'static>(what: &str, call: impl FnOnce() -> T + Send + 'static) -> T {
    finishes_within(what, DEADLOCK, call)
}

/// [`finishes`] with the limit `limit`.
fn finishes_within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    call: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(panic::catch_unwind(AssertUnwindSafe(call)));
    });
    match receiver.recv_timeout(limit) {
        Ok(Ok(value)) => value,
        Ok(Err(panicked)) => panic::resume_unwind(panicked),
        Err(_) => panic!("deadlock: {what} did not return within {limit:?}"),
    }
}

/// The liveness check catches a call that never returns (one that waits for a message
/// nobody sends).
#[test]
#[should_panic(expected = "deadlock: a self-deadlocking call")]
fn negative_control_finishes_reports_a_call_that_never_returns() {
    finishes_within(
        "a self-deadlocking call",
        Duration::from_millis(100),
        || {
            let mutex = Mutex::new(());
            let _held = mutex.lock().unwrap();
            let (_sender, receiver) = std::sync::mpsc::channel::<()>();
            let _never = receiver.recv(); // nobody sends: the call never returns
        },
    );
}

type Store = dyn StockStore<String>;

/// What the test sink does on an `Expired` event.
type OnExpired = Box<dyn Fn(&Store, &StockEvent<String>) + Send + Sync>;

/// An event sink that records every event and runs a test's reaction to `Expired` events
/// (with the store, which it reaches through a weak reference set after building).
#[derive(Default)]
struct Sink {
    events: Mutex<Vec<StockEvent<String>>>,
    store: OnceLock<Weak<Store>>,
    on_expired: OnceLock<OnExpired>,
}

impl Sink {
    fn events(&self) -> Vec<StockEvent<String>> {
        self.events.lock().unwrap().clone()
    }

    /// The `LowStock` events recorded: `(sku, available)`.
    fn low_stock(&self) -> Vec<(String, u64)> {
        self.events()
            .into_iter()
            .filter_map(|event| match event {
                StockEvent::LowStock { sku, available, .. } => Some((sku, available)),
                _ => None,
            })
            .collect()
    }
}

impl EventSink<String> for Sink {
    fn on_event(&self, event: &StockEvent<String>) {
        self.events.lock().unwrap().push(event.clone());
        if let StockEvent::Expired { .. } = event {
            let store = self.store.get().and_then(Weak::upgrade);
            if let (Some(store), Some(react)) = (store, self.on_expired.get()) {
                react(&*store, event);
            }
        }
    }
}

/// Every store, built with `clock` and `sink` behind an `Arc`, the sink knowing its store.
fn stores(
    clock: Arc<dyn Clock>,
    sink: impl Fn() -> Arc<Sink>,
) -> Vec<(&'static str, Arc<Store>, Arc<Sink>)> {
    fn build<S: StockStore<String> + 'static>(
        builder: StoreBuilder<String, S>,
        clock: &Arc<dyn Clock>,
        sink: Arc<Sink>,
        finish: fn(StoreBuilder<String, S>) -> S,
    ) -> (Arc<Store>, Arc<Sink>) {
        let store: Arc<Store> = Arc::new(finish(
            builder.clock(clock.clone()).event_sink(sink.clone()),
        ));
        let _ = sink.store.set(Arc::downgrade(&store));
        (store, sink)
    }
    let (pessimistic, pessimistic_sink) =
        build(PessimisticStore::builder(), &clock, sink(), |builder| {
            builder.build()
        });
    let (optimistic, optimistic_sink) =
        build(OptimisticStore::builder(), &clock, sink(), |builder| {
            builder.build()
        });
    let (monitor, monitor_sink) = build(MonitorStore::builder(), &clock, sink(), |builder| {
        builder.build()
    });
    let (adaptive, adaptive_sink) = build(AdaptiveStore::builder(), &clock, sink(), |builder| {
        builder.build()
    });
    vec![
        ("pessimistic", pessimistic, pessimistic_sink),
        ("optimistic", optimistic, optimistic_sink),
        ("monitor", monitor, monitor_sink),
        ("adaptive", adaptive, adaptive_sink),
    ]
}

/// Two holds of one unit each (on two SKUs), both with deadline `TTL` from now, and the
/// clock moved past it.
fn two_due_holds(store: &Store, clock: &ManualClock) -> [Reservation<String>; 2] {
    store.restock(&sku("a"), 1).unwrap();
    store.restock(&sku("b"), 1).unwrap();
    let ttl = ReserveOptions::new().ttl(TTL);
    let holds = [
        store.reserve_with(&lines(&[("a", 1)]), &ttl).unwrap(),
        store.reserve_with(&lines(&[("b", 1)]), &ttl).unwrap(),
    ];
    clock.advance(TTL);
    holds
}

/// Asserts that neither hold is open and both SKUs have their unit back.
fn assert_both_expired(name: &str, store: &Arc<Store>, holds: &[Reservation<String>; 2]) {
    for hold in holds {
        let (id, store) = (hold.id(), Arc::clone(store));
        let committed = finishes("commit of a hold of the sweep", move || store.commit(id));
        assert_eq!(committed, Err(StockError::UnknownReservation(id)), "{name}");
    }
    for name_of_sku in ["a", "b"] {
        let level = store.level(&sku(name_of_sku)).unwrap();
        assert_eq!(
            (level.on_hand, level.reserved),
            (1, 0),
            "{name}: {name_of_sku}"
        );
    }
    assert!(
        store.expire_due().is_empty(),
        "{name}: a later sweep found more"
    );
    assert_eq!(store.stats().expirations, 2, "{name}");
}

#[test]
fn a_sink_that_panics_during_a_sweep_leaves_every_hold_of_it_expired() {
    let clock = Arc::new(ManualClock::new());
    for (name, store, sink) in stores(clock.clone(), Arc::default) {
        let _ = sink.on_expired.set(Box::new(|_, _| panic!("sink bug")));
        let holds = two_due_holds(&*store, &clock);
        let sweep = panic::catch_unwind(AssertUnwindSafe(|| store.expire_due()));
        assert!(
            sweep.is_err(),
            "{name}: the sink's panic reaches the sweeper"
        );
        assert_both_expired(name, &store, &holds);
    }
}

#[test]
fn a_sink_that_resolves_another_hold_of_its_sweep_does_not_deadlock() {
    let clock = Arc::new(ManualClock::new());
    for (name, store, sink) in stores(clock.clone(), Arc::default) {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&answers);
        let holds = two_due_holds(&*store, &clock);
        let ids = [holds[0].id(), holds[1].id()];
        let _ = sink.on_expired.set(Box::new(move |store, event| {
            let StockEvent::Expired { id, .. } = event else {
                return;
            };
            let other = if *id == ids[0] { ids[1] } else { ids[0] };
            recorded.lock().unwrap().push((other, store.release(other)));
        }));
        let sweeper = Arc::clone(&store);
        let swept = finishes("a sweep whose sink releases", move || sweeper.expire_due());
        assert_eq!(swept, holds.to_vec(), "{name}");
        let answers = answers.lock().unwrap().clone();
        assert_eq!(answers.len(), 2, "{name}");
        for (other, released) in answers {
            assert_eq!(
                released,
                Err(StockError::UnknownReservation(other)),
                "{name}"
            );
        }
        assert_both_expired(name, &store, &holds);
    }
}

/// A gate a sink blocks at until the test opens it (or 30 s pass).
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, bool)>, // (a sink is blocked, the gate is open)
    changed: Condvar,
}

impl Gate {
    fn block(&self) {
        let mut state = self.state.lock().unwrap();
        state.0 = true;
        self.changed.notify_all();
        let _open = self
            .changed
            .wait_timeout_while(state, DEADLOCK, |state| !state.1)
            .unwrap();
    }

    fn wait_until_blocked(&self) {
        let state = self.state.lock().unwrap();
        let _blocked = self
            .changed
            .wait_timeout_while(state, DEADLOCK, |state| !state.0)
            .unwrap();
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

#[test]
fn a_sink_that_blocks_keeps_no_caller_of_another_hold_waiting() {
    let clock = Arc::new(ManualClock::new());
    for (name, store, sink) in stores(clock.clone(), Arc::default) {
        let gate = Arc::new(Gate::default());
        let blocking = Arc::clone(&gate);
        let _ = sink.on_expired.set(Box::new(move |_, _| blocking.block()));
        let holds = two_due_holds(&*store, &clock);
        let sweeper = {
            let store = Arc::clone(&store);
            thread::spawn(move || store.expire_due())
        };
        gate.wait_until_blocked();
        // The sink blocks on the sweep's first event; the other hold is already expired.
        let (id, other) = (holds[1].id(), Arc::clone(&store));
        let released = finishes("release while the sink blocks", move || other.release(id));
        assert_eq!(released, Err(StockError::UnknownReservation(id)), "{name}");
        gate.open();
        assert_eq!(sweeper.join().unwrap(), holds.to_vec(), "{name}");
        assert_both_expired(name, &store, &holds);
    }
}

#[test]
fn a_reaper_whose_sink_panics_keeps_sweeping() {
    let clock = Arc::new(ManualClock::new());
    for (name, store, sink) in stores(clock.clone(), Arc::default) {
        let _ = sink.on_expired.set(Box::new(|_, _| panic!("sink bug")));
        let holds = two_due_holds(&*store, &clock);
        let reaper = Reaper::spawn(Arc::clone(&store), Duration::from_millis(1));
        let start = Instant::now();
        while reaper.sweeps_panicked() == 0 && start.elapsed() < DEADLOCK {
            thread::yield_now();
        }
        assert!(
            reaper.sweeps_panicked() >= 1,
            "{name}: the sink never panicked"
        );
        // A later abandoned hold is still expired by the same reaper.
        store.restock(&sku("c"), 1).unwrap();
        store
            .reserve_with(
                &lines(&[("c", 1)]),
                &ReserveOptions::new().ttl(Duration::ZERO),
            )
            .unwrap();
        while store.level(&sku("c")).unwrap().reserved > 0 && start.elapsed() < DEADLOCK {
            thread::yield_now();
        }
        assert_eq!(
            store.level(&sku("c")).unwrap().reserved,
            0,
            "{name}: the reaper stopped"
        );
        // Its sink hears of the expiry (and panics again) after the stock is back.
        while reaper.sweeps_panicked() < 2 && start.elapsed() < DEADLOCK {
            thread::yield_now();
        }
        assert!(reaper.sweeps_panicked() >= 2, "{name}");
        drop(reaper);
        assert_both_expired_but_c(name, &store, &holds);
    }
}

/// [`assert_both_expired`] for the reaper test, where a third SKU `c` was also swept.
fn assert_both_expired_but_c(name: &str, store: &Arc<Store>, holds: &[Reservation<String>; 2]) {
    for hold in holds {
        assert_eq!(
            store.commit(hold.id()),
            Err(StockError::UnknownReservation(hold.id())),
            "{name}"
        );
    }
    for name_of_sku in ["a", "b", "c"] {
        assert_eq!(
            store.level(&sku(name_of_sku)).unwrap().reserved,
            0,
            "{name}: {name_of_sku}"
        );
    }
}

/// A clock that, like a tracing clock, looks at the store on every reading: it formats
/// the store (`{store:?}`, which counts its open holds and keys) and reads a level.
struct LookingClock {
    inner: ManualClock,
    look: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl Clock for LookingClock {
    fn now(&self) -> Instant {
        if let Some(look) = self.look.get() {
            look();
        }
        self.inner.now()
    }
}

/// Runs every call that reads the clock on `store`, built with `clock`.
fn exercise_the_clock(name: &str, store: Arc<Store>, clock: &LookingClock) {
    store.restock(&sku("a"), 10).unwrap();
    let options = ReserveOptions::new().ttl(TTL).idempotency_key("order-1");
    let calls = {
        let store = Arc::clone(&store);
        move || {
            let first = store.reserve_with(&lines(&[("a", 1)]), &options)?;
            let again = store.reserve_with(&lines(&[("a", 1)]), &options)?;
            assert_eq!(first.id(), again.id());
            store.extend(first.id(), TTL)?;
            store.commit(first.id())?;
            let ttl = ReserveOptions::new().ttl(TTL);
            let released = store.reserve_with(&lines(&[("a", 1)]), &ttl)?;
            store.release(released.id())?;
            let _abandoned = store.reserve_with(&lines(&[("a", 1)]), &ttl)?;
            Ok::<_, StockError<String>>(())
        }
    };
    finishes("calls with a clock that looks at the store", calls).unwrap();
    clock.inner.advance(TTL);
    let sweeper = Arc::clone(&store);
    assert_eq!(
        finishes("a sweep", move || sweeper.expire_due()).len(),
        1,
        "{name}"
    );
    let level = store.level(&sku("a")).unwrap();
    assert_eq!((level.on_hand, level.reserved), (9, 0), "{name}");
}

#[test]
fn a_clock_that_looks_at_the_store_does_not_deadlock() {
    fn check<S: StockStore<String> + std::fmt::Debug + 'static>(
        name: &str,
        builder: StoreBuilder<String, S>,
        build: fn(StoreBuilder<String, S>) -> S,
    ) {
        let clock = Arc::new(LookingClock {
            inner: ManualClock::new(),
            look: OnceLock::new(),
        });
        let store = Arc::new(build(builder.clock(clock.clone())));
        let weak = Arc::downgrade(&store);
        let _ = clock.look.set(Box::new(move || {
            if let Some(store) = weak.upgrade() {
                let traced = format!("{store:?} {:?}", store.level(&sku("a")));
                assert!(!traced.is_empty());
            }
        }));
        exercise_the_clock(name, store, &clock);
    }
    check("pessimistic", PessimisticStore::builder(), |builder| {
        builder.build()
    });
    check("optimistic", OptimisticStore::builder(), |builder| {
        builder.build()
    });
    check("monitor", MonitorStore::builder(), |builder| {
        builder.build()
    });
    check("adaptive", AdaptiveStore::builder(), |builder| {
        builder.build()
    });
}

// ---------------------------------------------------------------------------------------
// Low-stock crossings on every path (the optimistic compensation is a loom model:
// `loom_edges`).
// ---------------------------------------------------------------------------------------

/// A monitor store with a recording sink.
fn monitor() -> (Arc<MonitorStore<String>>, Arc<Sink>) {
    let sink = Arc::new(Sink::default());
    (
        Arc::new(MonitorStore::builder().event_sink(sink.clone()).build()),
        sink,
    )
}

/// Waits until `count` callers are queued on `name`.
fn until_queued(store: &MonitorStore<String>, name: &str, count: usize) {
    let start = Instant::now();
    while store.queued(&sku(name)) < count {
        assert!(start.elapsed() < DEADLOCK, "nobody queued on {name}");
        thread::yield_now();
    }
}

/// Spawns a waiting hold of `units` of `name` with `timeout`.
fn waiter(
    store: &Arc<MonitorStore<String>>,
    name: &'static str,
    units: u64,
    timeout: Duration,
) -> thread::JoinHandle<Result<Reservation<String>, StockError<String>>> {
    let store = Arc::clone(store);
    thread::spawn(move || store.reserve_timeout(&lines(&[(name, units)]), timeout))
}

#[test]
fn monitor_a_grant_after_the_head_times_out_sends_low_stock() {
    let (store, sink) = monitor();
    store.restock(&sku("a"), 3).unwrap();
    store.sell(&lines(&[("a", 3)])).unwrap();
    store.set_low_stock_threshold(&sku("a"), 2).unwrap();
    let head = waiter(&store, "a", 5, Duration::from_millis(50));
    until_queued(&store, "a", 1);
    let second = waiter(&store, "a", 2, DEADLOCK);
    until_queued(&store, "a", 2);
    store.restock(&sku("a"), 3).unwrap(); // available 3: not enough for the head
    assert_eq!(head.join().unwrap(), Err(StockError::Timeout));
    second.join().unwrap().unwrap(); // granted when the head left: available 3 -> 1
    assert_eq!(sink.low_stock(), [(sku("a"), 1)]);
}

#[test]
fn monitor_a_restock_handed_straight_to_a_waiter_sends_low_stock() {
    let (store, sink) = monitor();
    store.restock(&sku("a"), 1).unwrap();
    store.sell(&lines(&[("a", 1)])).unwrap();
    store.set_low_stock_threshold(&sku("a"), 2).unwrap();
    let buyer = waiter(&store, "a", 3, DEADLOCK);
    until_queued(&store, "a", 1);
    store.restock(&sku("a"), 4).unwrap(); // available 0 -> 4, then the grant: 4 -> 1
    buyer.join().unwrap().unwrap();
    assert_eq!(sink.low_stock(), [(sku("a"), 1)]);
}

#[test]
fn monitor_a_timed_out_partial_hold_reports_its_crossing() {
    let (store, sink) = monitor();
    store.restock(&sku("a"), 3).unwrap();
    store.set_low_stock_threshold(&sku("a"), 2).unwrap();
    store.restock(&sku("b"), 1).unwrap();
    store.sell(&lines(&[("b", 1)])).unwrap();
    // Holds a (3 -> 1, visible to every reader), waits for b, times out, gives a back.
    let refused = store.reserve_timeout(&lines(&[("a", 2), ("b", 1)]), Duration::from_millis(20));
    assert_eq!(refused, Err(StockError::Timeout));
    assert_eq!(store.level(&sku("a")).unwrap().available(), 3);
    assert_eq!(sink.low_stock(), [(sku("a"), 1)]);
}

/// An event sink that panics on every `Reserved` event, and counts the `Released` ones.
#[derive(Default)]
struct PanicsOnReserved {
    released: Mutex<u64>,
}

impl EventSink<String> for PanicsOnReserved {
    fn on_event(&self, event: &StockEvent<String>) {
        match event {
            StockEvent::Reserved { .. } => panic!("sink bug"),
            StockEvent::Released { .. } => *self.released.lock().unwrap() += 1,
            _ => {}
        }
    }
}

/// Every store with a sink that panics on `Reserved`.
fn stores_panicking_on_reserved() -> Vec<(&'static str, Box<Store>, Arc<PanicsOnReserved>)> {
    let sinks: [Arc<PanicsOnReserved>; 4] = Default::default();
    vec![
        (
            "pessimistic",
            Box::new(
                PessimisticStore::builder()
                    .event_sink(sinks[0].clone())
                    .build(),
            ),
            sinks[0].clone(),
        ),
        (
            "optimistic",
            Box::new(
                OptimisticStore::builder()
                    .event_sink(sinks[1].clone())
                    .build(),
            ),
            sinks[1].clone(),
        ),
        (
            "monitor",
            Box::new(MonitorStore::builder().event_sink(sinks[2].clone()).build()),
            sinks[2].clone(),
        ),
        (
            "adaptive",
            Box::new(
                AdaptiveStore::builder()
                    .event_sink(sinks[3].clone())
                    .build(),
            ),
            sinks[3].clone(),
        ),
    ]
}

#[test]
fn a_sink_that_panics_on_a_new_hold_leaves_no_hold_that_nobody_knows() {
    // A correct store: the caller gets the sink's panic, never the hold's id, so the hold
    // is given back before the panic goes on; nothing stays reserved, even without a TTL.
    for (name, store, sink) in stores_panicking_on_reserved() {
        store.restock(&sku("a"), 3).unwrap();
        let plain = panic::catch_unwind(AssertUnwindSafe(|| store.reserve(&lines(&[("a", 1)]))));
        assert!(
            plain.is_err(),
            "{name}: the sink's panic reaches the caller"
        );
        let keyed = ReserveOptions::new().idempotency_key("order-1");
        let keyed_hold = panic::catch_unwind(AssertUnwindSafe(|| {
            store.reserve_with(&lines(&[("a", 2)]), &keyed)
        }));
        assert!(
            keyed_hold.is_err(),
            "{name}: the sink's panic reaches the caller"
        );
        let level = store.level(&sku("a")).unwrap();
        assert_eq!((level.on_hand, level.reserved), (3, 0), "{name}");
        assert_eq!(*sink.released.lock().unwrap(), 2, "{name}: each given back");
        assert_eq!(store.stats().reserves, 2, "{name}: both were opened first");
    }
}

#[test]
fn a_sink_that_panics_on_a_granted_wait_leaves_no_hold_that_nobody_knows() {
    // A correct store: as above, for a hold that a waiting call was granted.
    let sink = Arc::new(PanicsOnReserved::default());
    let store = MonitorStore::builder().event_sink(sink.clone()).build();
    store.restock(&sku("a"), 2).unwrap();
    let waited = panic::catch_unwind(AssertUnwindSafe(|| {
        store.reserve_timeout(&lines(&[("a", 2)]), Duration::from_secs(5))
    }));
    assert!(
        waited.is_err(),
        "the sink's panic reaches the waiting caller"
    );
    let level = store.level(&sku("a")).unwrap();
    assert_eq!((level.on_hand, level.reserved), (2, 0));
    assert_eq!(*sink.released.lock().unwrap(), 1);

    // Sold out: the call queues, and a restock grants it its hold.
    store.sell(&lines(&[("a", 2)])).unwrap();
    thread::scope(|scope| {
        scope.spawn(|| {
            while store.queued(&sku("a")) == 0 {
                thread::yield_now();
            }
            store.restock(&sku("a"), 2).unwrap();
        });
        let waited = panic::catch_unwind(AssertUnwindSafe(|| {
            store.reserve_timeout(&lines(&[("a", 2)]), DEADLOCK)
        }));
        assert!(
            waited.is_err(),
            "the sink's panic reaches the caller that waited"
        );
    });
    let level = store.level(&sku("a")).unwrap();
    assert_eq!((level.on_hand, level.reserved), (2, 0));
    assert_eq!(*sink.released.lock().unwrap(), 2);
    assert!(store.stats().waits >= 1, "the second call waited");
}
