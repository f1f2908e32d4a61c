//! Shared parts of the loom models (`tests/loom_*.rs`): one model body, run on every store.
//!
//! A model body is a generic `fn(store)`; [`on_every_store!`] turns it into one `#[test]`
//! per store (`<body>::pessimistic`, `<body>::optimistic`, `<body>::monitor`,
//! `<body>::adaptive`, the adaptive store tuned to switch modes all the time), each an
//! exhaustive `loom::model` of the body with the bound of `LOOM_MAX_PREEMPTIONS`.
//!
//! The stores are shared between model threads through `std::sync::Arc`, not loom's: the
//! count of references to the store is not a property under test, and a loom `Arc`
//! dropped while loom unwinds from a deadlock panics again and aborts the test process
//! (loom issue 291), which would hide the "deadlock" report.

#![allow(dead_code)] // each test file uses a part of this module

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use stockledger::{StockError, StockStore};

/// The SKU type of every model: cheap to clone, so the models explore the stores' steps.
pub type Sku = &'static str;

/// The result of a store call in a model.
pub type Outcome<T> = Result<T, StockError<Sku>>;

/// The one SKU of single-SKU models.
pub const SKU: Sku = "SKU1004";

/// Runs `body` on a fresh store from `new` in every interleaving loom explores, and
/// prints how many it explored (each model runs more than one, or it checks nothing).
///
/// # Panics
///
/// When `body` panics in some interleaving (loom reports it with the failing schedule),
/// or when loom finds a deadlock.
pub fn explore<S: 'static>(
    name: &str,
    new: impl Fn() -> S + Send + Sync + 'static,
    body: impl Fn(S) + Send + Sync + 'static,
) {
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        eprintln!("{name}: LOOM_MAX_PREEMPTIONS is unset, so the exploration is unbounded");
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    loom::model(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        body(new());
    });
    let runs = runs.load(Ordering::Relaxed);
    eprintln!("{name}: {runs} interleavings explored");
    assert!(runs > 1, "{name}: the model explored one interleaving only");
}

std::thread_local! {
    /// Outcomes noted by the executions of the model running on this test thread (loom
    /// runs a model's threads as coroutines on the thread that calls `loom::model`).
    static NOTES: std::cell::RefCell<std::collections::BTreeSet<&'static str>> =
        const { std::cell::RefCell::new(std::collections::BTreeSet::new()) };
}

/// Notes that an execution of the current model reached `outcome`.
pub fn note(outcome: &'static str) {
    NOTES.with(|notes| notes.borrow_mut().insert(outcome));
}

/// Checks that the executions of the model just explored on this thread reached every
/// outcome in `expected` (so the model's branches were all explored), and forgets them.
///
/// # Panics
///
/// When an outcome was never reached.
pub fn assert_noted(name: &str, expected: &[&'static str]) {
    let noted = NOTES.with(|notes| std::mem::take(&mut *notes.borrow_mut()));
    for outcome in expected {
        assert!(
            noted.contains(outcome),
            "{name}: no interleaving reached `{outcome}`: {noted:?}"
        );
    }
}

/// Spawns a model thread that runs `call` on the shared `store`.
pub fn spawn<S, T>(
    store: &Arc<S>,
    call: impl FnOnce(&S) -> T + Send + 'static,
) -> loom::thread::JoinHandle<T>
where
    S: Send + Sync + 'static,
    T: Send + 'static,
{
    let store = Arc::clone(store);
    loom::thread::spawn(move || call(&store))
}

/// `(on_hand, reserved, version)` of `sku`; panics for an unknown SKU.
pub fn counts<S: StockStore<Sku> + ?Sized>(store: &S, sku: Sku) -> (u64, u64, u64) {
    let level = store.level(&sku).expect("the SKU was restocked");
    (level.on_hand, level.reserved, level.version)
}

/// The adaptive store of the models: a window of one operation, hot after any conflict
/// (a lost race or a locked mutex), cold after an operation without one, so its SKUs
/// switch modes in the middle of the races every model sets up.
pub fn switching_adaptive() -> stockledger::AdaptiveStore<Sku> {
    stockledger::AdaptiveStore::builder()
        .window_ops(1)
        .hot_threshold_per_mille(1)
        .cold_threshold_per_mille(0)
        .build()
}

/// Generates, for each generic model body `fn name<S: StockStore<Sku>>(store: S)`, a
/// module `name` with one loom test per store.
#[allow(unused_macros)] // not every file runs a model on every store
macro_rules! on_every_store {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn pessimistic() {
                    $crate::loom_common::explore(
                        concat!(stringify!($name), "::pessimistic"),
                        stockledger::PessimisticStore::new,
                        super::$name,
                    );
                }

                #[test]
                fn optimistic() {
                    $crate::loom_common::explore(
                        concat!(stringify!($name), "::optimistic"),
                        stockledger::OptimisticStore::new,
                        super::$name,
                    );
                }

                #[test]
                fn monitor() {
                    $crate::loom_common::explore(
                        concat!(stringify!($name), "::monitor"),
                        stockledger::MonitorStore::new,
                        super::$name,
                    );
                }

                #[test]
                fn adaptive() {
                    $crate::loom_common::explore(
                        concat!(stringify!($name), "::adaptive"),
                        $crate::loom_common::switching_adaptive,
                        super::$name,
                    );
                }
            }
        )+
    };
}

#[allow(unused_imports)]
pub(crate) use on_every_store;
