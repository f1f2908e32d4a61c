//! Shared bench harness: the local [`Ledger`] trait, the adapters of the three stores, the
//! naive peers and hardware limits, the workloads and the barrier-started thread runner.
//!
//! The naive peers deliberately do **not** implement `StockStore` (the trait grows in
//! issue 6, and a peer is not a store: it keeps no holds registry and no versions); they
//! implement the small local [`Ledger`] instead.

pub mod handoff;
pub mod peers;
pub mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::Criterion;
use stockledger::{ReservationId, StockError, StockStore};

pub use peers::{
    AtomicVec, DashMapHolds, DashMapPeer, HotCounter, MutexHashMap, MutexHashMapHolds,
};

/// SKUs are numbered, so the ideal ledger can index a `Vec` by SKU number.
pub type Sku = u64;

/// SKUs of the S2, S3 and S4 scenarios and of the single-thread hot path.
pub const SKUS: u64 = 100_000;

/// Units restocked per SKU before a run: enough that no run sells out (the optimistic store
/// holds at most 2^40 - 1 units per SKU).
pub const UNITS_PER_SKU: u64 = 1 << 36;

/// Environment variable that selects the quick mode (any value but `0`).
pub const QUICK_VAR: &str = "STOCKLEDGER_BENCH_QUICK";

/// Whether the quick mode is on: shorter warm-up and measurement, fewer samples.
pub fn quick() -> bool {
    std::env::var_os(QUICK_VAR).is_some_and(|value| value != "0")
}

/// The criterion settings of every group: about 4.5 s a benchmark in the full run (so the
/// whole `cargo bench` stays under 15 minutes), about 0.5 s in the quick mode. Criterion's
/// own flags (`--warm-up-time`, `--measurement-time`, `--sample-size`) still override them.
pub fn criterion_config() -> Criterion {
    let (warm_up_ms, measurement_ms, samples) = if quick() {
        (100, 300, 10)
    } else {
        (1_000, 3_000, 20)
    };
    Criterion::default()
        .warm_up_time(Duration::from_millis(warm_up_ms))
        .measurement_time(Duration::from_millis(measurement_ms))
        .sample_size(samples)
        .without_plots()
}

/// Where criterion writes (`CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else
/// `target/criterion` in the package); the side files of these benches go under
/// `stockledger/` in it, where `examples/bench_report.rs` reads them.
pub fn output_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

/// `git describe`-like identity of the benchmarked tree: commit, plus `-dirty` when `src/`
/// or `benches/` have uncommitted changes.
pub fn source_revision() -> Option<String> {
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git").args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "benches",
        "Cargo.toml",
    ])?;
    Some(if dirty.is_empty() {
        commit
    } else {
        format!("{commit}-dirty")
    })
}

/// Writes `json` to `stockledger/<name>.json` under [`output_dir`].
pub fn write_side_file(name: &str, json: &serde_json::Value) {
    let dir = output_dir().join("stockledger");
    std::fs::create_dir_all(&dir).expect("create the side-file directory");
    let text = serde_json::to_string_pretty(json).expect("serialise a side file");
    std::fs::write(dir.join(format!("{name}.json")), text).expect("write a side file");
}

/// Requests refused although stock never runs out (the optimistic store's
/// `Conflict` after its retry bound); reported beside the results.
pub static REFUSALS: AtomicU64 = AtomicU64::new(0);

/// Counts one refused request (see [`REFUSALS`]).
#[cold]
pub fn count_refusal() {
    REFUSALS.fetch_add(1, Ordering::Relaxed);
}

/// Thread counts of the scaling runs: 1 and 2.
pub const THREADS: [usize; 2] = [1, 2];

/// The oversubscribed thread counts of S5: 4 and 16 threads per core.
pub fn oversubscribed_threads() -> [usize; 2] {
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    [4 * cores, 16 * cores]
}

/// Runs `threads` threads that each call `op(thread, i)` for `i` in `0..iters`, released
/// together by a barrier; returns the wall time from the release until the last finished.
///
/// Thread start-up is outside the timed span; criterion divides the span by `iters`, so a
/// benchmark's time per iteration is the time of `threads` concurrent operations.
pub fn run_threads<F>(threads: usize, iters: u64, op: &F) -> Duration
where
    F: Fn(usize, u64) + Sync,
{
    let start = Barrier::new(threads + 1);
    let end = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let (start, end) = (&start, &end);
            scope.spawn(move || {
                start.wait();
                for i in 0..iters {
                    op(thread, i);
                }
                end.wait();
            });
        }
        start.wait();
        let began = Instant::now();
        end.wait();
        began.elapsed()
    })
}

/// The `i`-th element of `stream`, cycling; streams have a power-of-two length, so this is a
/// mask, not a division.
#[inline]
pub fn at<T: Copy>(stream: &[T], i: u64) -> T {
    debug_assert!(stream.len().is_power_of_two());
    stream[i as usize & (stream.len() - 1)]
}

/// What every bench subject offers: stores through [`Store`], naive peers directly.
///
/// A peer keeps only the available units per SKU: its hold is the caller's own copy of
/// the lines, `commit` does nothing and `release` adds the units back (what a user who
/// writes it by hand does). The stores keep on hand, reserved, a version and a registry.
pub trait Ledger: Send + Sync {
    /// What `reserve` hands back to resolve the hold with.
    type Hold: Send;

    /// Adds `units` to `sku`, creating it.
    fn restock(&self, sku: Sku, units: u64);
    /// Units available on `sku`.
    fn available(&self, sku: Sku) -> Option<u64>;
    /// Sells `lines` all or nothing; `false` when refused.
    fn sell(&self, lines: &[(Sku, u64)]) -> bool;
    /// Holds `lines` all or nothing; `None` when refused.
    fn reserve(&self, lines: &[(Sku, u64)]) -> Option<Self::Hold>;
    /// Turns the hold of `lines` into a sale.
    fn commit(&self, hold: Self::Hold, lines: &[(Sku, u64)]);
    /// Gives the hold of `lines` back.
    fn release(&self, hold: Self::Hold, lines: &[(Sku, u64)]);
}

/// A `StockStore` seen through [`Ledger`].
#[derive(Debug, Default)]
pub struct Store<S>(pub S);

/// Whether a refusal is one a contended run may see (sold out, or the optimistic store's
/// retry bound); any other error is a harness bug.
fn refused(error: &StockError<Sku>) -> bool {
    matches!(
        error,
        StockError::InsufficientStock { .. } | StockError::Conflict { .. }
    )
}

impl<S: StockStore<Sku>> Ledger for Store<S> {
    type Hold = ReservationId;

    fn restock(&self, sku: Sku, units: u64) {
        self.0.restock(&sku, units).expect("restock");
    }

    fn available(&self, sku: Sku) -> Option<u64> {
        self.0.level(&sku).map(|level| level.available())
    }

    fn sell(&self, lines: &[(Sku, u64)]) -> bool {
        match self.0.sell(lines) {
            Ok(()) => true,
            Err(error) if refused(&error) => false,
            Err(error) => panic!("sell failed: {error:?}"),
        }
    }

    fn reserve(&self, lines: &[(Sku, u64)]) -> Option<ReservationId> {
        match self.0.reserve(lines) {
            Ok(hold) => Some(hold.id()),
            Err(error) if refused(&error) => None,
            Err(error) => panic!("reserve failed: {error:?}"),
        }
    }

    fn commit(&self, hold: ReservationId, _lines: &[(Sku, u64)]) {
        self.0.commit(hold).expect("commit an open hold");
    }

    fn release(&self, hold: ReservationId, _lines: &[(Sku, u64)]) {
        self.0.release(hold).expect("release an open hold");
    }
}

/// A store whose every hold has a TTL ([`HOLD_TTL`]): what a hold with a deadline costs
/// next to [`Store`]'s holds without one. Everything but `reserve` is [`Store`]'s.
#[derive(Debug, Default)]
pub struct TtlStore<S>(pub Store<S>);

/// The TTL of [`TtlStore`]'s holds: longer than any run, so no hold expires.
pub const HOLD_TTL: Duration = Duration::from_secs(3600);

impl<S: StockStore<Sku>> Ledger for TtlStore<S> {
    type Hold = ReservationId;

    fn restock(&self, sku: Sku, units: u64) {
        self.0.restock(sku, units);
    }

    fn available(&self, sku: Sku) -> Option<u64> {
        self.0.available(sku)
    }

    fn sell(&self, lines: &[(Sku, u64)]) -> bool {
        self.0.sell(lines)
    }

    fn reserve(&self, lines: &[(Sku, u64)]) -> Option<ReservationId> {
        let options = stockledger::ReserveOptions::new().ttl(HOLD_TTL);
        match self.0 .0.reserve_with(lines, &options) {
            Ok(hold) => Some(hold.id()),
            Err(error) if refused(&error) => None,
            Err(error) => panic!("reserve failed: {error:?}"),
        }
    }

    fn commit(&self, hold: ReservationId, lines: &[(Sku, u64)]) {
        self.0.commit(hold, lines);
    }

    fn release(&self, hold: ReservationId, lines: &[(Sku, u64)]) {
        self.0.release(hold, lines);
    }
}

/// The four stores with a TTL on every hold, named as in [`ledgers`].
pub fn ttl_ledgers(skus: u64, units: u64) -> Vec<(&'static str, Box<dyn Visit>)> {
    vec![
        made(
            "pessimistic",
            TtlStore(Store(stockledger::PessimisticStore::new())),
            skus,
            units,
        ),
        made(
            "optimistic",
            TtlStore(Store(stockledger::OptimisticStore::new())),
            skus,
            units,
        ),
        made(
            "monitor",
            TtlStore(Store(stockledger::MonitorStore::new())),
            skus,
            units,
        ),
        made(
            "adaptive",
            TtlStore(Store(stockledger::AdaptiveStore::new())),
            skus,
            units,
        ),
    ]
}

/// Creates SKUs `0..skus` with `units` each (0 units: restocked with 1 and sold).
pub fn fill<L: Ledger>(ledger: &L, skus: u64, units: u64) {
    for sku in 0..skus {
        if units == 0 {
            ledger.restock(sku, 1);
            assert!(ledger.sell(&[(sku, 1)]), "sell the only unit");
        } else {
            ledger.restock(sku, units);
        }
    }
}

/// Which hardware limits [`ledgers`] adds to the stores and naive peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limits {
    /// The ideal ledger: `Vec<CachePadded<AtomicU64>>` by SKU number (`ideal_vec`).
    IdealVec,
    /// The one-SKU limits of S1: blind `fetch_sub` (`atomic_fetch_sub`) and the checked
    /// CAS loop (`atomic_cas`).
    HotCounter,
}

/// Which naive peers [`ledgers`] makes beside the stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peers {
    /// The plain peers (`mutex_hashmap`, `dashmap`): available units only, free holds.
    Plain,
    /// The plain peers and the hold peers (`mutex_hashmap_holds`, `dashmap_holds`), which
    /// keep open holds by id as a store does: for every scenario that reserves and commits.
    WithHolds,
}

/// Every store, `peers` and `limits`, each freshly made and filled with SKUs `0..skus` of
/// `units` units, by name, in the report's order.
///
/// A scenario makes them all first and then measures them in turns, one thread count at a
/// time (every subject at 1 thread, then every subject at 2, ...), so that the ratios the
/// report draws between subjects at one thread count compare runs seconds apart, not a
/// whole group apart: on a shared 2-core machine the load drifts within a group.
pub fn ledgers(
    skus: u64,
    units: u64,
    peers: Peers,
    limits: Limits,
) -> Vec<(&'static str, Box<dyn Visit>)> {
    let mut all = vec![
        made(
            "pessimistic",
            Store(stockledger::PessimisticStore::new()),
            skus,
            units,
        ),
        made(
            "optimistic",
            Store(stockledger::OptimisticStore::new()),
            skus,
            units,
        ),
        made(
            "monitor",
            Store(stockledger::MonitorStore::new()),
            skus,
            units,
        ),
        made(
            "adaptive",
            Store(stockledger::AdaptiveStore::new()),
            skus,
            units,
        ),
        made("mutex_hashmap", MutexHashMap::new(), skus, units),
        made("dashmap", DashMapPeer::new(), skus, units),
    ];
    if peers == Peers::WithHolds {
        all.push(made(
            "mutex_hashmap_holds",
            MutexHashMapHolds::new(),
            skus,
            units,
        ));
        all.push(made("dashmap_holds", DashMapHolds::new(), skus, units));
    }
    match limits {
        Limits::IdealVec => all.push(made("ideal_vec", AtomicVec::new(skus), skus, units)),
        Limits::HotCounter => {
            assert_eq!(skus, 1, "the hot counters have one SKU");
            all.push(made(
                "atomic_fetch_sub",
                HotCounter::<true>::new(),
                skus,
                units,
            ));
            all.push(made("atomic_cas", HotCounter::<false>::new(), skus, units));
        }
    }
    all
}

/// `ledger`, filled with SKUs `0..skus` of `units` units, as a named subject.
fn made<L: Ledger + 'static>(
    name: &'static str,
    ledger: L,
    skus: u64,
    units: u64,
) -> (&'static str, Box<dyn Visit>) {
    fill(&ledger, skus, units);
    (name, Box::new(Subject(ledger)))
}

/// A ledger behind a non-generic face, so one loop can visit every kind; each workload is a
/// method here, monomorphised for the ledger inside.
pub trait Visit {
    /// Runs `iters` requests of `streams` per thread on `threads` threads (see
    /// [`workload::Request`]).
    fn run_requests(
        &self,
        threads: usize,
        iters: u64,
        streams: &[Vec<workload::Request>],
    ) -> Duration;
    /// Runs `iters` orders of `orders` per thread on `threads` threads.
    fn run_orders(&self, threads: usize, iters: u64, orders: &[workload::Orders]) -> Duration;
    /// Runs `iters` single-line sales of 1 unit per thread, SKUs from `streams`.
    fn run_sells(&self, threads: usize, iters: u64, streams: &[Vec<Sku>]) -> Duration;
    /// Runs `iters` single-line reserve-then-commit pairs per thread, SKUs from `streams`.
    fn run_reserve_commits(&self, threads: usize, iters: u64, streams: &[Vec<Sku>]) -> Duration;
    /// Runs `rounds` sell-outs of SKU 0 (see [`run_sell_out`]).
    fn run_sell_out(&self, threads: usize, rounds: u64, units: u64) -> Duration;
}

/// Runs `rounds` flash-sale sell-outs on SKU 0: each round restocks `units` units, then
/// `threads` threads sell 1 unit at a time until refused. Returns the summed time of the
/// rounds, from the release of the threads until the last saw the SKU sold out.
///
/// # Panics
///
/// When a round ends with units left or oversold (a harness or store bug).
pub fn run_sell_out<L: Ledger>(ledger: &L, threads: usize, rounds: u64, units: u64) -> Duration {
    let start = Barrier::new(threads + 1);
    let end = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (start, end) = (&start, &end);
            scope.spawn(move || {
                for _ in 0..rounds {
                    start.wait();
                    // A refusal ends the round only once nothing is left (the optimistic
                    // store's `Conflict` is a refusal too).
                    while ledger.sell(&[(0, 1)]) || ledger.available(0) != Some(0) {}
                    end.wait();
                }
            });
        }
        let mut total = Duration::ZERO;
        for _ in 0..rounds {
            ledger.restock(0, units);
            start.wait();
            let began = Instant::now();
            end.wait();
            total += began.elapsed();
            assert_eq!(ledger.available(0), Some(0), "a sell-out sells every unit");
        }
        total
    })
}

/// The [`Visit`] face of a ledger.
pub struct Subject<L>(pub L);

impl<L: Ledger> Visit for Subject<L> {
    fn run_requests(
        &self,
        threads: usize,
        iters: u64,
        streams: &[Vec<workload::Request>],
    ) -> Duration {
        run_threads(threads, iters, &|thread, i| {
            let stream = &streams[thread];
            workload::serve(&self.0, at(stream, i));
        })
    }

    fn run_orders(&self, threads: usize, iters: u64, orders: &[workload::Orders]) -> Duration {
        run_threads(threads, iters, &|thread, i| {
            let orders = &orders[thread];
            let (lines, rollback) = orders.get(i);
            workload::new_order(&self.0, lines, rollback);
        })
    }

    fn run_sells(&self, threads: usize, iters: u64, streams: &[Vec<Sku>]) -> Duration {
        run_threads(threads, iters, &|thread, i| {
            let stream = &streams[thread];
            let sku = at(stream, i);
            if !self.0.sell(&[(sku, 1)]) {
                count_refusal();
            }
        })
    }

    fn run_sell_out(&self, threads: usize, rounds: u64, units: u64) -> Duration {
        run_sell_out(&self.0, threads, rounds, units)
    }

    fn run_reserve_commits(&self, threads: usize, iters: u64, streams: &[Vec<Sku>]) -> Duration {
        run_threads(threads, iters, &|thread, i| {
            let stream = &streams[thread];
            let lines = [(at(stream, i), 1)];
            match self.0.reserve(&lines) {
                Some(hold) => self.0.commit(hold, &lines),
                None => count_refusal(),
            }
        })
    }
}
