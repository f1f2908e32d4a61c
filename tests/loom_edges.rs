#![cfg(loom)]
//! User code at the edges (issue 9): an event sink that panics in an expiry sweep leaves
//! every hold of the sweep resolved, however a commit of one of them races the sweep; and
//! an optimistic multi-line hold that is compensated still reports the low-stock crossing
//! its partial hold made visible, and with no event sink (the path that builds no moves)
//! still gives its stock back.
//!
//! Run: `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom_edges`

mod loom_common;

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use loom_common::{assert_noted, counts, explore, note, spawn, Sku};
use stockledger::{
    Clock, EventSink, ManualClock, MonitorStore, OptimisticStore, PessimisticStore, ReserveOptions,
    StockError, StockEvent, StockStore, StoreBuilder,
};

/// The panic message of the panicking sink.
const SINK_BUG: &str = "sink bug";

/// Keeps the panicking sink's panics (one per interleaving) off stderr; every other panic
/// is reported as usual.
fn quiet_sink_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let report = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&SINK_BUG) {
                report(info);
            }
        }));
    });
}

/// A sink that records every event and, when `panics`, panics on the `Expired` event of
/// SKU `a` (the first hold of the sweep below).
#[derive(Default)]
struct Sink {
    panics: bool,
    events: Mutex<Vec<StockEvent<Sku>>>,
}

impl EventSink<Sku> for Sink {
    fn on_event(&self, event: &StockEvent<Sku>) {
        self.events.lock().unwrap().push(event.clone());
        let expired_a = matches!(event, StockEvent::Expired { lines, .. } if lines[0].sku == "a");
        if self.panics && expired_a {
            std::panic::panic_any(SINK_BUG);
        }
    }
}

/// A sweep of two due holds whose sink panics races a commit of the second hold: both
/// holds end resolved (expired by the sweep, or the second expired by the commit, which
/// finds it past its deadline), no stock stays reserved, and nothing is left to sweep.
fn panicking_sweep_leaves_both_resolved<S: StockStore<Sku> + 'static>(
    store: S,
    clock: Arc<ManualClock>,
) {
    let store = Arc::new(store);
    store.restock(&"a", 1).unwrap();
    store.restock(&"b", 1).unwrap();
    let ttl = ReserveOptions::new().ttl(Duration::from_secs(10));
    let first = store.reserve_with(&[("a", 1)], &ttl).unwrap();
    let second = store.reserve_with(&[("b", 1)], &ttl).unwrap();
    clock.advance(Duration::from_secs(10));
    let id = second.id();
    let committer = spawn(&store, move |store| store.commit(id));
    let swept = panic::catch_unwind(AssertUnwindSafe(|| store.expire_due()));
    let committed = committer.join().unwrap();
    match committed {
        Err(StockError::Expired(expired)) if expired == id => note("the commit expired it"),
        Err(StockError::UnknownReservation(unknown)) if unknown == id => {
            note("the sweep expired it")
        }
        other => panic!("a commit past the deadline returned {other:?}"),
    }
    assert!(
        swept.is_err(),
        "the sweep expired the first hold, and its sink panicked"
    );
    for hold in [&first, &second] {
        assert_eq!(
            store.release(hold.id()),
            Err(StockError::UnknownReservation(hold.id()))
        );
    }
    assert_eq!(counts(&*store, "a").1, 0, "a stays reserved");
    assert_eq!(counts(&*store, "b").1, 0, "b stays reserved");
    assert!(store.expire_due().is_empty());
    assert_eq!(store.stats().expirations, 2);
}

/// Runs [`panicking_sweep_leaves_both_resolved`] on the store `build` makes.
fn sweep_model<S: StockStore<Sku> + 'static>(
    name: &str,
    build: fn(StoreBuilder<Sku, S>) -> S,
    builder: fn() -> StoreBuilder<Sku, S>,
) {
    quiet_sink_panics();
    let new = move || {
        let clock = Arc::new(ManualClock::new());
        let sink = Arc::new(Sink {
            panics: true,
            ..Sink::default()
        });
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        (build(builder().clock(dyn_clock).event_sink(sink)), clock)
    };
    explore(name, new, |(store, clock)| {
        panicking_sweep_leaves_both_resolved(store, clock)
    });
    assert_noted(name, &["the commit expired it", "the sweep expired it"]);
}

#[test]
fn panicking_sweep_leaves_both_resolved_pessimistic() {
    sweep_model(
        "panicking_sweep::pessimistic",
        |b| b.build(),
        PessimisticStore::builder,
    );
}

#[test]
fn panicking_sweep_leaves_both_resolved_optimistic() {
    sweep_model(
        "panicking_sweep::optimistic",
        |b| b.build(),
        OptimisticStore::builder,
    );
}

#[test]
fn panicking_sweep_leaves_both_resolved_monitor() {
    sweep_model(
        "panicking_sweep::monitor",
        |b| b.build(),
        MonitorStore::builder,
    );
}

#[test]
fn panicking_sweep_leaves_both_resolved_adaptive() {
    sweep_model(
        "panicking_sweep::adaptive",
        |b| {
            b.window_ops(1)
                .hot_threshold_per_mille(1)
                .cold_threshold_per_mille(0)
                .build()
        },
        stockledger::AdaptiveStore::builder,
    );
}

/// An optimistic two-line hold races a sale of its second line's last unit. When the hold
/// passed its check and then lost the unit, it gives its first line back (compensation);
/// that first line was visibly held, taking `a` from 3 to 1 available, below the threshold
/// 2, so a `LowStock` for `a` must have gone out. Whatever the order, one `LowStock` per
/// crossing of `a`, and none when `a` never crossed.
#[test]
fn optimistic_compensation_reports_its_crossing() {
    let name = "optimistic_compensation_reports_its_crossing";
    let new = || {
        let sink = Arc::new(Sink::default());
        let store = OptimisticStore::builder().event_sink(sink.clone()).build();
        (store, sink)
    };
    explore_compensation(name, new, compensation_reports_its_crossing);
}

/// The same on the adaptive store, which compensates as the optimistic one does, built to
/// switch modes on every operation.
#[test]
fn adaptive_compensation_reports_its_crossing() {
    let name = "adaptive_compensation_reports_its_crossing";
    let new = || {
        let sink = Arc::new(Sink::default());
        let store = stockledger::AdaptiveStore::builder()
            .event_sink(sink.clone())
            .window_ops(1)
            .hot_threshold_per_mille(1)
            .cold_threshold_per_mille(0)
            .build();
        (store, sink)
    };
    explore_compensation(name, new, compensation_reports_its_crossing);
}

/// The race of the compensation models with no event sink, where a multi-line hold takes
/// the path that builds no moves: a hold that passed its check and then lost `b` gives `a`
/// back, and whatever the order nothing is left held and nothing is lost.
fn quiet_compensation_gives_back<S: StockStore<Sku> + 'static>(store: S) {
    let store = Arc::new(store);
    store.restock(&"a", 3).unwrap();
    let (on_hand, reserved, version) = compensation_race(&store);
    assert_eq!(on_hand, 3);
    assert_eq!(reserved, if version == 2 { 2 } else { 0 });
}

#[test]
fn optimistic_quiet_compensation_gives_back() {
    let name = "optimistic_quiet_compensation_gives_back";
    explore_compensation(name, OptimisticStore::new, quiet_compensation_gives_back);
}

#[test]
fn adaptive_quiet_compensation_gives_back() {
    let name = "adaptive_quiet_compensation_gives_back";
    let new = || {
        stockledger::AdaptiveStore::builder()
            .window_ops(1)
            .hot_threshold_per_mille(1)
            .cold_threshold_per_mille(0)
            .build()
    };
    explore_compensation(name, new, quiet_compensation_gives_back);
}

/// The body of the compensation models.
fn compensation_reports_its_crossing<S: StockStore<Sku> + 'static>((store, sink): (S, Arc<Sink>)) {
    let store = Arc::new(store);
    store.restock(&"a", 3).unwrap();
    store.set_low_stock_threshold(&"a", 2).unwrap();
    let (_, _, version) = compensation_race(&store);
    let crossings = sink
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|event| matches!(event, StockEvent::LowStock { sku: "a", .. }))
        .count();
    let expected = usize::from(version > 1);
    assert_eq!(
        crossings, expected,
        "LowStock events for a, version {version}"
    );
}

/// Explores a compensation model (`body` on a store from `new`) and checks that its
/// interleavings reached each outcome of [`compensation_race`].
fn explore_compensation<S: 'static>(
    name: &str,
    new: impl Fn() -> S + Send + Sync + 'static,
    body: impl Fn(S) + Send + Sync + 'static,
) {
    explore(name, new, body);
    assert_noted(
        name,
        &["held", "refused at the check: a never moved", "compensated"],
    );
}

/// The race of the compensation models, on a store where `a` has 3 units: a two-line hold
/// of 2 `a` and 1 `b` against a sale of `b`'s only unit. Exactly one gets `b`; the hold is
/// held (`a` at version 2, 2 reserved), refused at its check (`a` never moved), or
/// compensated (`a` held and given back: version 3). Returns `a`'s on hand, reserved and
/// version.
fn compensation_race<S: StockStore<Sku> + 'static>(store: &Arc<S>) -> (u64, u64, u64) {
    store.restock(&"b", 1).unwrap();
    let seller = spawn(store, |store| store.sell(&[("b", 1)]));
    let held = store.reserve(&[("a", 2), ("b", 1)]);
    let sold = seller.join().unwrap();
    assert!(
        held.is_ok() != sold.is_ok(),
        "exactly one gets b: {held:?} {sold:?}"
    );
    let counts = counts(&**store, "a");
    match (held.is_ok(), counts.2) {
        (true, 2) => {
            assert_eq!(counts.1, 2);
            note("held");
        }
        (false, 1) => note("refused at the check: a never moved"),
        (false, 3) => note("compensated"),
        other => panic!("unexpected {other:?}"),
    }
    counts
}

/// Negative control of the compensation models: a two-line hold over two counters of
/// available units that checks both lines, takes the first, and on losing the second
/// returns its refusal without giving the first back. Loom must find the interleaving
/// where the sale takes `b` between the check and the hold's second line.
mod controls {
    use std::sync::Arc;

    use loom::sync::atomic::{AtomicU64, Ordering};
    use loom::thread;

    /// Takes `units` from `available` by compare-and-swap unless fewer are left.
    fn take(available: &AtomicU64, units: u64) -> bool {
        available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(units)
            })
            .is_ok()
    }

    /// Holds 2 of `a` and 1 of `b`, all or nothing in intent, with no compensation.
    fn hold_without_compensation(a: &AtomicU64, b: &AtomicU64) -> bool {
        if a.load(Ordering::Acquire) < 2 || b.load(Ordering::Acquire) < 1 {
            return false;
        }
        take(a, 2) && take(b, 1)
    }

    #[test]
    #[should_panic(expected = "left held")]
    fn a_refused_hold_without_compensation_leaves_a_held() {
        loom::model(|| {
            let a = Arc::new(AtomicU64::new(3));
            let b = Arc::new(AtomicU64::new(1));
            let seller = {
                let b = Arc::clone(&b);
                thread::spawn(move || take(&b, 1))
            };
            let held = hold_without_compensation(&a, &b);
            let sold = seller.join().unwrap();
            assert!(held != sold, "exactly one gets b");
            if !held {
                assert_eq!(
                    a.load(Ordering::Acquire),
                    3,
                    "a left held by a refused hold"
                );
            }
        });
    }
}
