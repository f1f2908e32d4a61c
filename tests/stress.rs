//! Conservation stress test, in the style of Jepsen's bank test.
//!
//! `4 × cores` threads run a bounded number of random reserve / commit / release / sell /
//! restock calls over one hot SKU plus 1,000 SKUs drawn from a Zipf(0.99) law, on every
//! store (the monitor twice: once also waiting with `reserve_timeout`). Every thread keeps
//! its own tally of what it restocked, sold and holds. Meanwhile a sampler thread reads
//! every SKU's level again and again and checks `reserved <= on_hand` and that versions
//! never go back. At the end, with every thread joined:
//!
//! - per SKU, `on_hand = restocked - sold` and `reserved = sum of the open holds` of all
//!   threads' tallies;
//! - every open hold then resolves with exactly the lines its thread recorded, after which
//!   `reserved = 0` and `restocked = on_hand + sold` on every SKU.
//!
//! Negative control: a naive ledger local to this file with get-then-put updates (the
//! classic lost update) must fail these checks. It does not implement `StockStore`; the
//! harness drives every subject through the small local [`Ledger`] trait.
//!
//! Every random choice comes from a seeded RNG per thread (the seed is in each failure
//! message); the interleaving is up to the OS.

#[path = "support/rendezvous.rs"]
mod rendezvous;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use rendezvous::Rendezvous;
use stockledger::{
    AdaptiveStore, MonitorStore, OptimisticStore, PessimisticStore, Reservation, ReservationId,
    StockError, StockLevel, StockStore, StoreStats, WaitingStore,
};

type Sku = u32;
type Lines = Vec<(Sku, u64)>;

/// The hot SKU every thread hits often.
const HOT_SKU: Sku = 0;
/// Cold SKUs `1..=COLD_SKUS`, drawn by a Zipf law.
const COLD_SKUS: u64 = 1_000;
/// The Zipf exponent of the cold SKUs.
const ZIPF_EXPONENT: f64 = 0.99;
/// Calls each thread makes.
const CALLS_PER_THREAD: usize = 10_000;
/// Open holds a thread keeps at most; past it, it resolves one instead of reserving.
const OPEN_HOLDS_MAX: usize = 8;
/// Initial on hand of the hot SKU and of each cold SKU.
const HOT_INITIAL: u64 = 500;
const COLD_INITIAL: u64 = 20;
/// Timeout of the waiting reservations (monitor store only).
const WAIT_TIMEOUT: Duration = Duration::from_millis(1);
/// The seed of the first thread's RNG (thread `i` uses `SEED + i`).
const SEED: u64 = 0x5EED_0004;
/// How long the workers may run before the sampler declares them stuck: it then prints
/// what each worker was doing and aborts the test binary (a run takes about a second; a
/// hang would otherwise last until CI kills the job, with the test's output captured and
/// lost).
const STALL_LIMIT: Duration = Duration::from_secs(120);

fn all_skus() -> impl Iterator<Item = Sku> {
    0..=COLD_SKUS as Sku
}

/// Threads: 4 per core, as the issue asks.
fn thread_count() -> usize {
    4 * thread::available_parallelism().map_or(1, usize::from)
}

// ---------------------------------------------------------------------------------------
// The subjects, behind a local trait.
// ---------------------------------------------------------------------------------------

/// What the harness calls. Errors are `StockError`s, so a naive ledger speaks the same
/// language as the stores.
trait Ledger: Sync {
    fn restock(&self, sku: Sku, qty: u64) -> Result<StockLevel, StockError<Sku>>;
    fn level(&self, sku: Sku) -> Option<StockLevel>;
    /// Returns the hold's id and lines.
    fn reserve(&self, lines: &[(Sku, u64)]) -> Result<(ReservationId, Lines), StockError<Sku>>;
    /// A waiting reservation; `reserve` for a store that cannot wait.
    fn reserve_waiting(
        &self,
        lines: &[(Sku, u64)],
    ) -> Result<(ReservationId, Lines), StockError<Sku>> {
        self.reserve(lines)
    }
    fn commit(&self, id: ReservationId) -> Result<Lines, StockError<Sku>>;
    fn release(&self, id: ReservationId) -> Result<Lines, StockError<Sku>>;
    fn sell(&self, lines: &[(Sku, u64)]) -> Result<(), StockError<Sku>>;
    /// The store's statistics (none for the naive ledger).
    fn stats(&self) -> Option<StoreStats> {
        None
    }
}

/// A real store's `reserve_timeout`, for [`Real::wait`].
type Wait<S> = fn(&S, &[(Sku, u64)]) -> Result<Reservation<Sku>, StockError<Sku>>;

/// A real store; with `wait`, its `reserve_waiting` is that store's `reserve_timeout`.
struct Real<S> {
    store: S,
    wait: Option<Wait<S>>,
}

impl<S: StockStore<Sku>> Real<S> {
    /// The store driven without waiting.
    fn plain(store: S) -> Self {
        Self { store, wait: None }
    }
}

impl<S: WaitingStore<Sku>> Real<S> {
    /// The store, whose waiting reservations wait up to [`WAIT_TIMEOUT`].
    fn waiting(store: S) -> Self {
        Self {
            store,
            wait: Some(|store, lines| store.reserve_timeout(lines, WAIT_TIMEOUT)),
        }
    }
}

/// A hold's id and lines.
fn held(hold: Reservation<Sku>) -> (ReservationId, Lines) {
    (hold.id(), hold.lines().to_vec())
}

impl<S: StockStore<Sku>> Ledger for Real<S> {
    fn restock(&self, sku: Sku, qty: u64) -> Result<StockLevel, StockError<Sku>> {
        self.store.restock(&sku, qty)
    }
    fn level(&self, sku: Sku) -> Option<StockLevel> {
        self.store.level(&sku)
    }
    fn reserve(&self, lines: &[(Sku, u64)]) -> Result<(ReservationId, Lines), StockError<Sku>> {
        self.store.reserve(lines).map(held)
    }
    fn reserve_waiting(
        &self,
        lines: &[(Sku, u64)],
    ) -> Result<(ReservationId, Lines), StockError<Sku>> {
        match self.wait {
            Some(wait) => wait(&self.store, lines).map(held),
            None => self.reserve(lines),
        }
    }
    fn commit(&self, id: ReservationId) -> Result<Lines, StockError<Sku>> {
        Ok(self.store.commit(id)?.lines().to_vec())
    }
    fn release(&self, id: ReservationId) -> Result<Lines, StockError<Sku>> {
        Ok(self.store.release(id)?.lines().to_vec())
    }
    fn sell(&self, lines: &[(Sku, u64)]) -> Result<(), StockError<Sku>> {
        self.store.sell(lines)
    }
    fn stats(&self) -> Option<StoreStats> {
        Some(self.store.stats())
    }
}

// ---------------------------------------------------------------------------------------
// The workers and their tallies.
// ---------------------------------------------------------------------------------------

/// One thread's own record of what it did.
#[derive(Debug, Default)]
struct Tally {
    /// Units restocked per SKU (including the setup restock, in the main thread's tally).
    restocked: BTreeMap<Sku, u128>,
    /// Units sold per SKU: successful sells and commits.
    sold: BTreeMap<Sku, u128>,
    /// Holds this thread opened and has not resolved.
    open: Vec<(ReservationId, Lines)>,
    /// Ids this thread resolved (a second resolution must be refused).
    resolved: Vec<ReservationId>,
    /// Contract violations seen by this thread.
    violations: Vec<String>,
    /// Successful calls and refusals, by kind (`"reserve"`, `"sell: InsufficientStock"`, …).
    outcomes: BTreeMap<String, u64>,
}

impl Tally {
    fn count(&mut self, what: &str, result: Result<(), &StockError<Sku>>) {
        let key = match result {
            Ok(()) => what.to_string(),
            Err(error) => format!(
                "{what}: {}",
                format!("{error:?}").split([' ', '(']).next().unwrap_or("")
            ),
        };
        *self.outcomes.entry(key).or_default() += 1;
    }

    fn add(map: &mut BTreeMap<Sku, u128>, lines: &[(Sku, u64)]) {
        for &(sku, qty) in lines {
            *map.entry(sku).or_default() += u128::from(qty);
        }
    }
}

/// Merges request lines as the contract says: summed per SKU, sorted by SKU.
fn merged(lines: &[(Sku, u64)]) -> Lines {
    let mut merged = BTreeMap::new();
    for &(sku, qty) in lines {
        *merged.entry(sku).or_insert(0) += qty;
    }
    merged.into_iter().collect()
}

/// Whether `error` is an allowed refusal of a reserve or sell under contention.
fn allowed_refusal(error: &StockError<Sku>) -> bool {
    matches!(
        error,
        StockError::InsufficientStock { .. } | StockError::Conflict { .. } | StockError::Timeout
    )
}

/// A worker's random choices.
struct Worker {
    rng: StdRng,
    zipf: Zipf<f64>,
    waits: bool,
    tally: Tally,
    seed: u64,
}

impl Worker {
    fn new(index: usize, waits: bool) -> Self {
        let seed = SEED + index as u64;
        Self {
            rng: StdRng::seed_from_u64(seed),
            zipf: Zipf::new(COLD_SKUS, ZIPF_EXPONENT).expect("valid Zipf"),
            waits,
            tally: Tally::default(),
            seed,
        }
    }

    fn sku(&mut self) -> Sku {
        if self.rng.gen_bool(0.3) {
            HOT_SKU
        } else {
            // Zipf samples are integers in 1..=COLD_SKUS.
            self.zipf.sample(&mut self.rng) as Sku
        }
    }

    /// 1 to 3 lines of 1 to 3 units (duplicate SKUs possible).
    fn lines(&mut self) -> Lines {
        let count = self.rng.gen_range(1..=3);
        (0..count)
            .map(|_| (self.sku(), self.rng.gen_range(1..=3)))
            .collect()
    }

    fn violation(&mut self, what: String) {
        self.tally
            .violations
            .push(format!("thread seed {}: {what}", self.seed));
    }

    /// Makes [`CALLS_PER_THREAD`] random calls, publishing in `progress` the number of
    /// each call and its kind (see [`describe_progress`]) before making it, and
    /// `CALLS_PER_THREAD` when done.
    fn run(mut self, ledger: &dyn Ledger, progress: &AtomicU64) -> Tally {
        for call in 0..CALLS_PER_THREAD {
            let choice = self.rng.gen_range(0..100);
            progress.store(((call as u64) << 8) | choice, Ordering::Relaxed);
            match choice {
                0..=29 if self.tally.open.len() < OPEN_HOLDS_MAX => self.reserve(ledger),
                0..=44 => self.resolve(ledger, true),
                45..=59 => self.resolve(ledger, false),
                60..=84 => self.sell(ledger),
                85..=97 => self.restock(ledger),
                _ => self.resolve_again(ledger),
            }
        }
        progress.store((CALLS_PER_THREAD as u64) << 8, Ordering::Relaxed);
        self.tally
    }

    fn reserve(&mut self, ledger: &dyn Ledger) {
        let lines = self.lines();
        let waiting = self.waits && self.rng.gen_bool(0.3);
        let result = if waiting {
            ledger.reserve_waiting(&lines)
        } else {
            ledger.reserve(&lines)
        };
        let kind = if waiting {
            "reserve_waiting"
        } else {
            "reserve"
        };
        self.tally.count(kind, result.as_ref().map(|_| ()));
        match result {
            Ok((id, held)) => {
                if held != merged(&lines) {
                    self.violation(format!("reserve {lines:?} held {held:?}"));
                }
                self.tally.open.push((id, held));
            }
            Err(error) if allowed_refusal(&error) => {}
            Err(error) => self.violation(format!("reserve {lines:?}: {error:?}")),
        }
    }

    /// Commits (or releases) one of this thread's open holds, chosen at random.
    fn resolve(&mut self, ledger: &dyn Ledger, commit: bool) {
        if self.tally.open.is_empty() {
            return;
        }
        let index = self.rng.gen_range(0..self.tally.open.len());
        let (id, lines) = self.tally.open.swap_remove(index);
        let result = if commit {
            ledger.commit(id)
        } else {
            ledger.release(id)
        };
        self.tally.count(
            if commit { "commit" } else { "release" },
            result.as_ref().map(|_| ()),
        );
        match result {
            Ok(resolved) if resolved == lines => {
                if commit {
                    Tally::add(&mut self.tally.sold, &lines);
                }
            }
            other => self.violation(format!("resolving {id} {lines:?}: {other:?}")),
        }
        self.tally.resolved.push(id);
    }

    /// Resolves an id this thread already resolved: must be refused, changing nothing.
    fn resolve_again(&mut self, ledger: &dyn Ledger) {
        if self.tally.resolved.is_empty() {
            return;
        }
        let id = self.tally.resolved[self.rng.gen_range(0..self.tally.resolved.len())];
        let result = if self.rng.gen_bool(0.5) {
            ledger.commit(id)
        } else {
            ledger.release(id)
        };
        if result != Err(StockError::UnknownReservation(id)) {
            self.violation(format!("second resolution of {id}: {result:?}"));
        }
    }

    fn sell(&mut self, ledger: &dyn Ledger) {
        let lines = self.lines();
        let result = ledger.sell(&lines);
        self.tally.count("sell", result.as_ref().map(|_| ()));
        match result {
            Ok(()) => Tally::add(&mut self.tally.sold, &lines),
            Err(error) if allowed_refusal(&error) => {}
            Err(error) => self.violation(format!("sell {lines:?}: {error:?}")),
        }
    }

    fn restock(&mut self, ledger: &dyn Ledger) {
        let sku = self.sku();
        let qty = self.rng.gen_range(1..=8);
        let result = ledger.restock(sku, qty);
        self.tally.count("restock", result.as_ref().map(|_| ()));
        match result {
            Ok(_) => Tally::add(&mut self.tally.restocked, &[(sku, qty)]),
            Err(StockError::Conflict { .. }) => {}
            Err(error) => self.violation(format!("restock {sku} {qty}: {error:?}")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The sampler and the final accounting.
// ---------------------------------------------------------------------------------------

/// Reads every SKU once, checking `reserved <= on_hand` and that versions never go back.
fn sample_pass(ledger: &dyn Ledger, versions: &mut [u64], violations: &mut Vec<String>) {
    for sku in all_skus() {
        let Some(level) = ledger.level(sku) else {
            violations.push(format!("sampler: SKU {sku} vanished"));
            continue;
        };
        if level.reserved > level.on_hand {
            violations.push(format!("sampler: SKU {sku} reserved > on hand: {level:?}"));
        }
        let last = &mut versions[sku as usize];
        if level.version < *last {
            violations.push(format!(
                "sampler: SKU {sku} version went back from {last} to {}",
                level.version
            ));
        }
        *last = level.version;
    }
}

/// The outcome of a stress run.
#[derive(Debug, Default)]
struct Report {
    /// Contract violations seen by the workers (unexpected errors, wrong lines).
    calls: Vec<String>,
    /// Violations seen by the sampler during the run and in its final pass.
    sampler: Vec<String>,
    /// Conservation violations at the quiescent points.
    conservation: Vec<String>,
    /// Full sampler passes: the first starts as the workers do (they wait for it), the
    /// last ends after they finished.
    passes: usize,
    /// Outcomes of all threads' calls, by kind.
    outcomes: BTreeMap<String, u64>,
}

impl Report {
    fn is_clean(&self) -> bool {
        self.calls.is_empty() && self.sampler.is_empty() && self.conservation.is_empty()
    }
}

/// Checks per SKU that `on_hand = restocked - sold` and `reserved = open`.
fn check_conservation(
    ledger: &dyn Ledger,
    when: &str,
    restocked: &BTreeMap<Sku, u128>,
    sold: &BTreeMap<Sku, u128>,
    open: &BTreeMap<Sku, u128>,
    violations: &mut Vec<String>,
) {
    for sku in all_skus() {
        let get = |map: &BTreeMap<Sku, u128>| map.get(&sku).copied().unwrap_or_default();
        let Some(level) = ledger.level(sku) else {
            violations.push(format!("{when}: SKU {sku} vanished"));
            continue;
        };
        if u128::from(level.on_hand) + get(sold) != get(restocked) {
            violations.push(format!(
                "{when}: SKU {sku}: on hand {} + sold {} != restocked {}",
                level.on_hand,
                get(sold),
                get(restocked)
            ));
        }
        if u128::from(level.reserved) != get(open) {
            violations.push(format!(
                "{when}: SKU {sku}: reserved {} != open holds {}",
                level.reserved,
                get(open)
            ));
        }
    }
}

/// Runs the stress test on `ledger` (`waits`: also reserve with waiting).
fn stress(ledger: &dyn Ledger, waits: bool) -> Report {
    let mut setup = Tally::default();
    for sku in all_skus() {
        let qty = if sku == HOT_SKU {
            HOT_INITIAL
        } else {
            COLD_INITIAL
        };
        ledger.restock(sku, qty).expect("setup restock");
        Tally::add(&mut setup.restocked, &[(sku, qty)]);
    }
    let done = AtomicBool::new(false);
    let sampling = &AtomicBool::new(false);
    let mut report = Report::default();
    let mut versions = vec![0; COLD_SKUS as usize + 1];
    let progress: &[AtomicU64] = &(0..thread_count())
        .map(|_| AtomicU64::new(u64::MAX))
        .collect::<Vec<_>>();
    let tallies: Vec<Tally> = thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let started = Instant::now();
            let mut violations = Vec::new();
            let mut passes = 0;
            // The workers wait for this: the first pass starts before their first call
            // and before `done`, so every run is sampled, however quickly it ends.
            sampling.store(true, Ordering::Release);
            loop {
                sample_pass(ledger, &mut versions, &mut violations);
                passes += 1;
                if done.load(Ordering::Acquire) {
                    break;
                }
                if started.elapsed() > STALL_LIMIT {
                    abort_stalled(ledger, progress, passes);
                }
            }
            (violations, passes)
        });
        let workers: Vec<_> = (0..thread_count())
            .map(|index| {
                scope.spawn(move || {
                    while !sampling.load(Ordering::Acquire) {
                        thread::yield_now();
                    }
                    Worker::new(index, waits).run(ledger, &progress[index])
                })
            })
            .collect();
        // Every worker is joined and the sampler stopped before a worker's panic is
        // passed on: a panicking worker fails the test instead of leaving the sampler
        // running (and the test hanging).
        let joined: Vec<_> = workers.into_iter().map(|worker| worker.join()).collect();
        done.store(true, Ordering::Release);
        (report.sampler, report.passes) = sampler.join().expect("sampler panicked");
        joined
            .into_iter()
            .map(|tally| tally.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });

    // Quiescent point 1: every thread's tally against the store.
    let mut restocked = setup.restocked;
    let mut sold = BTreeMap::new();
    let mut open = BTreeMap::new();
    for tally in &tallies {
        report.calls.extend(tally.violations.iter().cloned());
        for (kind, count) in &tally.outcomes {
            *report.outcomes.entry(kind.clone()).or_default() += count;
        }
        for (sku, qty) in &tally.restocked {
            *restocked.entry(*sku).or_default() += qty;
        }
        for (sku, qty) in &tally.sold {
            *sold.entry(*sku).or_default() += qty;
        }
        for (_, lines) in &tally.open {
            Tally::add(&mut open, lines);
        }
    }
    let mut conservation = Vec::new();
    check_conservation(
        ledger,
        "after the run",
        &restocked,
        &sold,
        &open,
        &mut conservation,
    );

    // Resolve every open hold (alternately commit and release) with its recorded lines.
    for (index, (id, lines)) in tallies.iter().flat_map(|tally| &tally.open).enumerate() {
        let commit = index % 2 == 0;
        let result = if commit {
            ledger.commit(*id)
        } else {
            ledger.release(*id)
        };
        match result {
            Ok(resolved) if resolved == *lines => {
                if commit {
                    Tally::add(&mut sold, lines);
                }
            }
            other => report
                .calls
                .push(format!("final resolution of {id} {lines:?}: {other:?}")),
        }
    }

    // Quiescent point 2: nothing reserved, everything accounted for.
    check_conservation(
        ledger,
        "at the end",
        &restocked,
        &sold,
        &BTreeMap::new(),
        &mut conservation,
    );
    sample_pass(ledger, &mut versions, &mut report.sampler);
    report.conservation = conservation;
    report
}

/// What a worker's `progress` word says: the call it is making, or that it finished.
fn describe_progress(progress: u64) -> String {
    if progress == u64::MAX {
        return "not started".to_string();
    }
    let kind = match progress & 0xFF {
        0..=29 => "reserve (or commit, with its holds full)",
        30..=44 => "commit",
        45..=59 => "release",
        60..=84 => "sell",
        85..=97 => "restock",
        _ => "resolve again",
    };
    if progress >> 8 == CALLS_PER_THREAD as u64 {
        return "finished".to_string();
    }
    format!("call {} ({kind})", progress >> 8)
}

/// Prints what every worker is doing and the hot SKU's level to the real standard error
/// (the test's captured output would be lost), then aborts: the workers are stuck.
fn abort_stalled(ledger: &dyn Ledger, progress: &[AtomicU64], passes: usize) -> ! {
    let mut report = format!(
        "stress: the workers ran past {STALL_LIMIT:?} ({passes} sampler passes); \
         hot SKU level {:?}; statistics {:?}\n",
        ledger.level(HOT_SKU),
        ledger.stats(),
    );
    for (index, word) in progress.iter().enumerate() {
        report += &format!(
            "  worker {index} (seed {}): {}\n",
            SEED + index as u64,
            describe_progress(word.load(Ordering::Relaxed))
        );
    }
    let _ = std::io::stderr().write_all(report.as_bytes());
    std::process::abort();
}

/// Asserts that the run found no violation and was not vacuous: every kind of call
/// succeeded many times. (That the sampler ran during the run is by construction: the
/// workers wait for its first pass to start.)
fn assert_clean(name: &str, report: &Report) {
    eprintln!(
        "{name}: {} sampler passes, outcomes {:?}",
        report.passes, report.outcomes
    );
    for kind in ["reserve", "commit", "release", "sell", "restock"] {
        let successes = report.outcomes.get(kind).copied().unwrap_or_default();
        assert!(
            successes >= 100,
            "{name}: only {successes} successful {kind} calls"
        );
    }
    let first = |violations: &[String]| violations.iter().take(5).cloned().collect::<Vec<_>>();
    assert!(
        report.is_clean(),
        "{name}: {} call, {} sampler, {} conservation violations; first: {:?} {:?} {:?}",
        report.calls.len(),
        report.sampler.len(),
        report.conservation.len(),
        first(&report.calls),
        first(&report.sampler),
        first(&report.conservation),
    );
}

#[test]
fn pessimistic_store_conserves_stock_under_contention() {
    let report = stress(&Real::plain(PessimisticStore::new()), false);
    assert_clean("pessimistic", &report);
}

#[test]
fn optimistic_store_conserves_stock_under_contention() {
    let report = stress(&Real::plain(OptimisticStore::new()), false);
    assert_clean("optimistic", &report);
}

#[test]
fn adaptive_store_conserves_stock_under_contention() {
    let report = stress(&Real::plain(AdaptiveStore::new()), false);
    assert_clean("adaptive", &report);
}

/// The adaptive store tuned to switch all the time (a window of one operation, hot after
/// any conflict, cold after an operation without one): switches race every operation.
#[test]
fn adaptive_store_conserves_stock_while_switching() {
    let store = AdaptiveStore::builder()
        .window_ops(1)
        .hot_threshold_per_mille(1)
        .cold_threshold_per_mille(0)
        .build();
    let report = stress(&Real::plain(store), false);
    assert_clean("adaptive, switching", &report);
}

#[test]
fn monitor_store_conserves_stock_under_contention() {
    let report = stress(&Real::plain(MonitorStore::new()), false);
    assert_clean("monitor", &report);
}

#[test]
fn monitor_store_conserves_stock_with_waiting_reservations() {
    let report = stress(&Real::waiting(MonitorStore::new()), true);
    assert_clean("monitor with reserve_timeout", &report);
}

// ---------------------------------------------------------------------------------------
// Negative control: a naive ledger with lost updates.
// ---------------------------------------------------------------------------------------

/// A ledger that reads a level, computes, and writes the level back in a second critical
/// section: a get-then-put with a lost update whenever two callers overlap. The first two
/// reserves and the first two sells of the hot SKU are made to overlap (so the control
/// does not depend on luck). Arithmetic wraps, as unchecked arithmetic in a release build.
#[derive(Default)]
struct LostUpdateLedger {
    levels: Mutex<BTreeMap<Sku, StockLevel>>,
    holds: Mutex<BTreeMap<ReservationId, Lines>>,
    next_id: Mutex<u64>,
    hot_reserves: Rendezvous,
    hot_sells: Rendezvous,
}

impl LostUpdateLedger {
    fn get(&self, sku: Sku) -> Result<StockLevel, StockError<Sku>> {
        let levels = self.levels.lock().unwrap();
        levels.get(&sku).copied().ok_or(StockError::UnknownSku(sku))
    }

    fn put(&self, sku: Sku, level: StockLevel) {
        self.levels.lock().unwrap().insert(sku, level);
    }

    /// Takes `lines` from `available` (reserve or sell), line by line, get-then-put.
    fn take(
        &self,
        lines: &[(Sku, u64)],
        rendezvous: &Rendezvous,
        change: fn(&mut StockLevel, u64),
    ) -> Result<Lines, StockError<Sku>> {
        let lines = merged(lines);
        let mut next = Vec::new();
        for &(sku, qty) in &lines {
            let mut level = self.get(sku)?;
            let available = level.on_hand.saturating_sub(level.reserved);
            if qty > available {
                return Err(StockError::InsufficientStock {
                    sku,
                    requested: qty,
                    available,
                });
            }
            change(&mut level, qty);
            level.version = level.version.wrapping_add(1);
            next.push((sku, level));
        }
        if lines.iter().any(|(sku, _)| *sku == HOT_SKU) {
            rendezvous.meet();
        }
        for (sku, level) in next {
            self.put(sku, level);
        }
        Ok(lines)
    }

    fn resolve(&self, id: ReservationId, commit: bool) -> Result<Lines, StockError<Sku>> {
        let lines = self
            .holds
            .lock()
            .unwrap()
            .remove(&id)
            .ok_or(StockError::UnknownReservation(id))?;
        for &(sku, qty) in &lines {
            let mut level = self.get(sku)?;
            level.reserved = level.reserved.wrapping_sub(qty);
            if commit {
                level.on_hand = level.on_hand.wrapping_sub(qty);
            }
            level.version = level.version.wrapping_add(1);
            self.put(sku, level);
        }
        Ok(lines)
    }
}

impl Ledger for LostUpdateLedger {
    fn restock(&self, sku: Sku, qty: u64) -> Result<StockLevel, StockError<Sku>> {
        let mut level = self.get(sku).unwrap_or_default();
        level.on_hand = level.on_hand.wrapping_add(qty);
        level.version = level.version.wrapping_add(1);
        self.put(sku, level);
        Ok(level)
    }
    fn level(&self, sku: Sku) -> Option<StockLevel> {
        self.get(sku).ok()
    }
    fn reserve(&self, lines: &[(Sku, u64)]) -> Result<(ReservationId, Lines), StockError<Sku>> {
        let lines = self.take(lines, &self.hot_reserves, |level, qty| {
            level.reserved = level.reserved.wrapping_add(qty);
        })?;
        let mut next_id = self.next_id.lock().unwrap();
        *next_id += 1;
        let id = ReservationId::from_u64(u64::MAX - *next_id);
        self.holds.lock().unwrap().insert(id, lines.clone());
        Ok((id, lines))
    }
    fn commit(&self, id: ReservationId) -> Result<Lines, StockError<Sku>> {
        self.resolve(id, true)
    }
    fn release(&self, id: ReservationId) -> Result<Lines, StockError<Sku>> {
        self.resolve(id, false)
    }
    fn sell(&self, lines: &[(Sku, u64)]) -> Result<(), StockError<Sku>> {
        self.take(lines, &self.hot_sells, |level, qty| {
            level.on_hand = level.on_hand.wrapping_sub(qty);
        })
        .map(|_| ())
    }
}

#[test]
fn negative_control_lost_updates_are_caught() {
    // The forced lost sell leaves on hand too high and the forced lost reserve leaves
    // reserved short of the open holds (wrapping below zero once both resolve, which the
    // sampler's last pass sees as reserved > on hand). The natural lost updates add more,
    // in both directions (a lost restock lowers on hand, a lost commit or release raises
    // reserved), so in one run they can offset the forced ones by chance: release runs
    // saw it about once in 150 (on hand off on 3 SKUs and reserved on none, or a sampler
    // that saw nothing). So each checker gets up to `RUNS` runs to catch the lost updates,
    // and must catch them in at least one: a checker that cannot catch them fails every
    // run.
    const RUNS: usize = 5;
    let any = |violations: &[String], what: &str| violations.iter().any(|v| v.contains(what));
    let (mut conservation_caught, mut sampler_caught) = (false, false);
    let mut counts = Vec::new();
    for _ in 0..RUNS {
        let report = stress(&LostUpdateLedger::default(), false);
        conservation_caught |=
            any(&report.conservation, "on hand") || any(&report.conservation, "reserved");
        sampler_caught |=
            any(&report.sampler, "reserved > on hand") || any(&report.sampler, "version went back");
        counts.push((report.conservation.len(), report.sampler.len()));
        if conservation_caught && sampler_caught {
            break;
        }
    }
    assert!(
        conservation_caught,
        "the conservation check missed the lost updates in {RUNS} runs \
         (conservation, sampler violations per run: {counts:?})"
    );
    assert!(
        sampler_caught,
        "the sampler missed the lost updates in {RUNS} runs \
         (conservation, sampler violations per run: {counts:?})"
    );
}
