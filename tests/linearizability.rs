//! Linearizability of every store, checked on recorded concurrent histories.
//!
//! `4 × cores` threads call one store at random over a few SKUs and record every call:
//! its operation, its result, and the values of one shared atomic clock taken just before
//! the call and just after the return. Each SKU's history (at least 2,000 operations in
//! all) is then checked against the sequential specification [`SkuSpec`] with the
//! Wing–Gong algorithm and Lowe's memoisation (`support/wgl.rs`, sources cited there).
//!
//! **Single-line operations only.** Linearizability is local (Herlihy & Wing 1990): a
//! history of single-object operations is linearizable iff each object's sub-history is,
//! so per-SKU checks are complete. A multi-line request spans several objects and breaks
//! that locality; worse, the optimistic store's multi-line requests are documented as not
//! linearizable (a partial hold may be briefly visible and make a concurrent request
//! refuse, and a refused request bumps versions), so their per-SKU projections would be
//! wrongly refused. The model test (`tests/model.rs`) covers multi-line semantics
//! sequentially and the stress test (`tests/stress.rs`) their conservation under
//! contention.
//!
//! The operations per SKU: `restock`, `reserve`, `commit`, `release`, `sell` and `level`
//! (reads make the check strict: every level a reader saw must fit the order). Threads
//! share the ids of open holds, so commits and releases of one hold race, and exactly one
//! may win. Versions are part of every level, so the order of changes is checked too.
//!
//! Negative controls: hand-made histories the checker must refuse, and a naive store
//! local to this file with a get-then-put lost update, whose recorded history must be
//! refused.

#[path = "support/wgl.rs"]
mod wgl;

#[path = "support/rendezvous.rs"]
mod rendezvous;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rendezvous::Rendezvous;
use stockledger::{
    AdaptiveStore, MonitorStore, OptimisticStore, PessimisticStore, ReservationId, StockError,
    StockLevel, StockStore, WaitingStore,
};
use wgl::{Event, Refusal, Specification};

type Sku = u32;

/// SKUs the threads share.
const SKUS: Sku = 2;
/// Calls each thread makes.
const CALLS_PER_THREAD: usize = 400;
/// Initial on hand of every SKU.
const INITIAL_ON_HAND: u64 = 8;
/// Open holds whose ids the threads share, per SKU; the oldest is released past it.
const SHARED_HOLDS_MAX: usize = 6;
/// Search bound of the checker per SKU history.
const STEPS_MAX: u64 = 50_000_000;
/// The seed of the first thread's RNG (thread `i` uses `SEED + i`).
const SEED: u64 = 0x5EED_0003;

fn thread_count() -> usize {
    4 * thread::available_parallelism().map_or(1, usize::from)
}

// ---------------------------------------------------------------------------------------
// The sequential specification of one SKU.
// ---------------------------------------------------------------------------------------

/// A single-line operation on one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Restock(u64),
    Reserve(u64),
    Commit(ReservationId),
    Release(ReservationId),
    Sell(u64),
    Level,
    /// A waiting reserve (`reserve_timeout` of the monitor store) with a short timeout.
    ReserveWait(u64),
}

/// What the operation returned (the SKU and lines are left out: always this SKU, one line).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Restocked(Result<StockLevel, StockError<Sku>>),
    Reserved(Result<ReservationId, StockError<Sku>>),
    /// The units of the resolved hold.
    Resolved(Result<u64, StockError<Sku>>),
    Sold(Result<(), StockError<Sku>>),
    Level(Option<StockLevel>),
}

/// One SKU's state: its level and its open holds (id → units).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SkuState {
    sku: Sku,
    /// Whether the SKU was restocked yet: before its first restock it is unknown.
    exists: bool,
    level: StockLevel,
    open: BTreeMap<ReservationId, u64>,
}

/// The sequential spec of DESIGN.md for single-line calls on one SKU, absent until its
/// first restock.
struct SkuSpec;

impl SkuState {
    fn bumped(&self, on_hand: u64, reserved: u64) -> StockLevel {
        StockLevel {
            on_hand,
            reserved,
            version: self.level.version + 1,
        }
    }

    /// The refusal of taking `qty` units, if there are not enough available.
    fn short(&self, qty: u64) -> Option<StockError<Sku>> {
        let available = self.level.available();
        (qty > available).then_some(StockError::InsufficientStock {
            sku: self.sku,
            requested: qty,
            available,
        })
    }
}

impl Specification for SkuSpec {
    type State = SkuState;
    type Operation = Operation;
    type Result = Outcome;

    fn step(state: &SkuState, operation: &Operation, outcome: &Outcome) -> Option<SkuState> {
        if !state.exists {
            return SkuSpec::step_absent(state, operation, outcome);
        }
        let level = state.level;
        let mut next = state.clone();
        match (operation, outcome) {
            // The optimistic store may give up a hold or a sale after its retry bound:
            // nothing changed. A restock never gives up.
            (
                Operation::Reserve(_) | Operation::Sell(_),
                Outcome::Reserved(Err(StockError::Conflict { .. }))
                | Outcome::Sold(Err(StockError::Conflict { .. })),
            ) => {}
            // A waiting reserve may run out of time: nothing changed.
            (Operation::ReserveWait(_), Outcome::Reserved(Err(StockError::Timeout))) => {}
            (Operation::ReserveWait(qty), Outcome::Reserved(Ok(id)))
                if state.short(*qty).is_none() && !state.open.contains_key(id) =>
            {
                next.level = state.bumped(level.on_hand, level.reserved + qty);
                next.open.insert(*id, *qty);
            }
            (Operation::Level, Outcome::Level(seen)) => {
                if *seen != Some(level) {
                    return None;
                }
            }
            (Operation::Restock(qty), Outcome::Restocked(result)) => {
                next.level = state.bumped(level.on_hand + qty, level.reserved);
                if *result != Ok(next.level) {
                    return None;
                }
            }
            (Operation::Reserve(qty), Outcome::Reserved(result)) => {
                match (state.short(*qty), result) {
                    (Some(refusal), Err(error)) if refusal == *error => {}
                    (None, Ok(id)) if !state.open.contains_key(id) => {
                        next.level = state.bumped(level.on_hand, level.reserved + qty);
                        next.open.insert(*id, *qty);
                    }
                    _ => return None,
                }
            }
            (Operation::Sell(qty), Outcome::Sold(result)) => match (state.short(*qty), result) {
                (Some(refusal), Err(error)) if refusal == *error => {}
                (None, Ok(())) => next.level = state.bumped(level.on_hand - qty, level.reserved),
                _ => return None,
            },
            (Operation::Commit(id) | Operation::Release(id), Outcome::Resolved(result)) => {
                match (state.open.get(id), result) {
                    (None, Err(StockError::UnknownReservation(refused))) if refused == id => {}
                    (Some(qty), Ok(resolved)) if qty == resolved => {
                        let on_hand = match operation {
                            Operation::Commit(_) => level.on_hand - qty,
                            _ => level.on_hand,
                        };
                        next.level = state.bumped(on_hand, level.reserved - qty);
                        next.open.remove(id);
                    }
                    _ => return None,
                }
            }
            _ => return None,
        }
        Some(next)
    }
}

impl SkuSpec {
    /// A step on a SKU never restocked: reads see nothing, holds and sales name it
    /// unknown, and its first restock creates it at version 1 with exactly those units.
    fn step_absent(state: &SkuState, operation: &Operation, outcome: &Outcome) -> Option<SkuState> {
        let unknown = StockError::UnknownSku(state.sku);
        let mut next = state.clone();
        match (operation, outcome) {
            (Operation::Level, Outcome::Level(None)) => {}
            (Operation::Reserve(_) | Operation::ReserveWait(_), Outcome::Reserved(Err(error)))
            | (Operation::Sell(_), Outcome::Sold(Err(error)))
                if *error == unknown => {}
            (Operation::Commit(id) | Operation::Release(id), Outcome::Resolved(Err(error)))
                if *error == StockError::UnknownReservation(*id) => {}
            (Operation::Restock(qty), Outcome::Restocked(Ok(level)))
                if *level
                    == StockLevel {
                        on_hand: *qty,
                        reserved: 0,
                        version: 1,
                    } =>
            {
                next.exists = true;
                next.level = *level;
            }
            _ => return None,
        }
        Some(next)
    }
}

// ---------------------------------------------------------------------------------------
// Subjects and recording.
// ---------------------------------------------------------------------------------------

/// Single-line calls, as the recorder makes them (a local trait: the naive control must
/// not implement `StockStore`).
trait Subject: Sync {
    fn call(&self, sku: Sku, operation: Operation) -> Outcome;
}

/// A real store.
struct Real<S>(S);

impl<S: StockStore<Sku>> Subject for Real<S> {
    fn call(&self, sku: Sku, operation: Operation) -> Outcome {
        Real::call_on(&self.0, sku, operation)
    }
}

impl Real<()> {
    /// Makes the single-line call `operation` on `store`.
    fn call_on(store: &dyn StockStore<Sku>, sku: Sku, operation: Operation) -> Outcome {
        let units = |hold: stockledger::Reservation<Sku>| {
            assert_eq!(hold.lines().len(), 1, "a single-line hold");
            hold.lines()[0].1
        };
        match operation {
            Operation::Restock(qty) => Outcome::Restocked(store.restock(&sku, qty)),
            Operation::Reserve(qty) => {
                Outcome::Reserved(store.reserve(&[(sku, qty)]).map(|hold| hold.id()))
            }
            Operation::Commit(id) => Outcome::Resolved(store.commit(id).map(units)),
            Operation::Release(id) => Outcome::Resolved(store.release(id).map(units)),
            Operation::Sell(qty) => Outcome::Sold(store.sell(&[(sku, qty)])),
            Operation::Level => Outcome::Level(store.level(&sku)),
            Operation::ReserveWait(_) => unreachable!("only the monitor store waits"),
        }
    }
}

/// The monitor store, which also answers waiting reserves.
struct Waiting(MonitorStore<Sku>);

/// How long a recorded waiting reserve waits at most.
const WAIT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(2);

impl Subject for Waiting {
    fn call(&self, sku: Sku, operation: Operation) -> Outcome {
        match operation {
            Operation::ReserveWait(qty) => Outcome::Reserved(
                self.0
                    .reserve_timeout(&[(sku, qty)], WAIT_TIMEOUT)
                    .map(|hold| hold.id()),
            ),
            operation => Real::call_on(&self.0, sku, operation),
        }
    }
}

/// A recorded history, per SKU.
type Histories = BTreeMap<Sku, Vec<Event<Operation, Outcome>>>;

/// Who may resolve a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    /// Only the thread that reserved it (and then again, to be refused), so resolutions of
    /// one hold never overlap.
    Own,
    /// Any thread: the ids of recent holds are shared, so commits and releases of one hold
    /// race and exactly one may win.
    Racing,
}

/// Open holds a thread keeps per SKU in `Sharing::Own`; past it, it releases the oldest.
const OWN_HOLDS_MAX: usize = 3;

/// Ids of recent holds, shared by all threads, per SKU (`Sharing::Racing`).
struct SharedHolds(Vec<Mutex<Vec<ReservationId>>>);

/// Makes random single-line calls on `subject` from `4 × cores` threads and returns every
/// SKU's history. Every SKU is restocked with `INITIAL_ON_HAND` first (not recorded: it
/// is the initial state).
fn record(subject: &dyn Subject, sharing: Sharing) -> Histories {
    for sku in 0..SKUS {
        let outcome = subject.call(sku, Operation::Restock(INITIAL_ON_HAND));
        assert!(matches!(outcome, Outcome::Restocked(Ok(_))), "{outcome:?}");
    }
    let clock = AtomicU64::new(0);
    let shared = SharedHolds((0..SKUS).map(|_| Mutex::new(Vec::new())).collect());
    let events: Vec<(Sku, Event<Operation, Outcome>)> = thread::scope(|scope| {
        let threads: Vec<_> = (0..thread_count())
            .map(|index| {
                let recorder = Recorder {
                    subject,
                    clock: &clock,
                    shared: &shared,
                    sharing,
                    rng: StdRng::seed_from_u64(SEED + index as u64),
                    own: vec![Vec::new(); SKUS as usize],
                    resolved: vec![Vec::new(); SKUS as usize],
                    events: Vec::with_capacity(CALLS_PER_THREAD + CALLS_PER_THREAD / 4),
                };
                scope.spawn(move || recorder.run())
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|thread| thread.join().expect("recorder panicked"))
            .collect()
    });
    let mut histories = Histories::new();
    for (sku, event) in events {
        histories.entry(sku).or_default().push(event);
    }
    histories
}

/// One recording thread.
struct Recorder<'a> {
    subject: &'a dyn Subject,
    clock: &'a AtomicU64,
    shared: &'a SharedHolds,
    sharing: Sharing,
    rng: StdRng,
    /// This thread's open holds per SKU, oldest first (`Sharing::Own`).
    own: Vec<Vec<ReservationId>>,
    /// Ids this thread resolved, per SKU (`Sharing::Own`).
    resolved: Vec<Vec<ReservationId>>,
    events: Vec<(Sku, Event<Operation, Outcome>)>,
}

impl Recorder<'_> {
    /// Calls `operation` on `sku` and records it between two ticks of the shared clock.
    fn call(&mut self, sku: Sku, operation: Operation) -> Outcome {
        let invoked_at = self.clock.fetch_add(1, Ordering::SeqCst);
        let result = self.subject.call(sku, operation);
        let returned_at = self.clock.fetch_add(1, Ordering::SeqCst);
        let event = Event {
            invoked_at,
            returned_at,
            operation,
            result: result.clone(),
        };
        self.events.push((sku, event));
        result
    }

    /// `CALLS_PER_THREAD` random calls (plus the releases of evicted holds).
    fn run(mut self) -> Vec<(Sku, Event<Operation, Outcome>)> {
        for _ in 0..CALLS_PER_THREAD {
            let sku = self.rng.gen_range(0..SKUS);
            let operation = match self.rng.gen_range(0..100) {
                0..=14 => Operation::Level,
                15..=29 => Operation::Restock(self.rng.gen_range(1..=4)),
                30..=54 => Operation::Reserve(self.rng.gen_range(1..=3)),
                55..=69 => Operation::Sell(self.rng.gen_range(1..=2)),
                roll => {
                    let id = self.hold_to_resolve(sku);
                    if roll < 85 {
                        Operation::Commit(id)
                    } else {
                        Operation::Release(id)
                    }
                }
            };
            let outcome = self.call(sku, operation);
            if let Operation::Commit(id) | Operation::Release(id) = operation {
                self.resolved[sku as usize].push(id);
            }
            if let Outcome::Reserved(Ok(id)) = outcome {
                if let Some(evicted) = self.keep(sku, id) {
                    self.call(sku, Operation::Release(evicted));
                    self.resolved[sku as usize].push(evicted);
                }
            }
        }
        self.events
    }

    /// The id to commit or release next: an open hold (this thread's own, or anyone's
    /// when racing), sometimes an id already resolved or never issued.
    fn hold_to_resolve(&mut self, sku: Sku) -> ReservationId {
        let pick: usize = self.rng.gen();
        let never_issued = ReservationId::from_u64(u64::MAX - (pick % 4) as u64);
        if self.rng.gen_bool(0.1) {
            let resolved = &self.resolved[sku as usize];
            return resolved
                .get(pick % resolved.len().max(1))
                .copied()
                .unwrap_or(never_issued);
        }
        match self.sharing {
            Sharing::Own => {
                let own = &mut self.own[sku as usize];
                if own.is_empty() {
                    never_issued
                } else {
                    own.remove(pick % own.len())
                }
            }
            Sharing::Racing => {
                let shared = self.shared.0[sku as usize].lock().unwrap();
                shared
                    .get(pick % shared.len().max(1))
                    .copied()
                    .unwrap_or(never_issued)
            }
        }
    }

    /// Keeps the new hold `id`; returns the oldest hold to release when too many are open.
    fn keep(&mut self, sku: Sku, id: ReservationId) -> Option<ReservationId> {
        let (holds, max) = match self.sharing {
            Sharing::Own => (&mut self.own[sku as usize], OWN_HOLDS_MAX),
            Sharing::Racing => {
                let mut shared = self.shared.0[sku as usize].lock().unwrap();
                shared.push(id);
                return (shared.len() > SHARED_HOLDS_MAX).then(|| shared.remove(0));
            }
        };
        holds.push(id);
        (holds.len() > max).then(|| holds.remove(0))
    }
}

/// Checks every SKU's history; the refusals, per SKU.
fn check(histories: &Histories) -> Vec<(Sku, usize, Refusal)> {
    histories
        .iter()
        .filter_map(|(sku, history)| {
            let initial = SkuState {
                sku: *sku,
                exists: true,
                level: StockLevel {
                    on_hand: INITIAL_ON_HAND,
                    reserved: 0,
                    version: 1,
                },
                open: BTreeMap::new(),
            };
            wgl::check::<SkuSpec>(initial, history, STEPS_MAX)
                .err()
                .map(|refusal| (*sku, history.len(), refusal))
        })
        .collect()
}

/// Records `rounds` histories, each of a new subject, and asserts each is linearizable
/// and large enough.
fn assert_linearizable(
    name: &str,
    new_subject: fn() -> Box<dyn Subject>,
    sharing: Sharing,
    rounds: usize,
) {
    for round in 0..rounds {
        assert_linearizable_once(&format!("{name}, round {round}"), &*new_subject(), sharing);
    }
}

/// Records a history of `subject` and asserts it is linearizable and large enough.
fn assert_linearizable_once(name: &str, subject: &dyn Subject, sharing: Sharing) {
    let histories = record(subject, sharing);
    let operations: usize = histories.values().map(Vec::len).sum();
    assert!(operations >= 2_000, "{name}: only {operations} operations");
    let resolved = histories
        .values()
        .flatten()
        .filter(|event| matches!(event.result, Outcome::Resolved(Ok(_))))
        .count();
    let refused = histories
        .values()
        .flatten()
        .filter(|event| matches!(event.result, Outcome::Resolved(Err(_))))
        .count();
    assert!(
        resolved >= 100 && refused >= 100,
        "{name}: {resolved} resolved, {refused} refused resolutions"
    );
    let refusals = check(&histories);
    if let Some((sku, operations, refusal)) = refusals.first() {
        match refusal {
            Refusal::NotLinearizable {
                stuck,
                linearized_max,
                ..
            } => panic!(
                "{name}: SKU {sku}'s history of {operations} operations is not linearizable; \
                 the longest linearizable prefix has {linearized_max}, {stuck}"
            ),
            Refusal::GaveUp { .. } => panic!("{name}: SKU {sku}: {refusal:?}"),
        }
    }
}

/// Histories recorded and checked per store (each of at least 2,000 operations).
const ROUNDS: usize = 4;

#[test]
fn pessimistic_store_is_linearizable() {
    assert_linearizable(
        "pessimistic",
        || Box::new(Real(PessimisticStore::new())),
        Sharing::Own,
        ROUNDS,
    );
}

#[test]
fn optimistic_store_single_line_calls_are_linearizable() {
    assert_linearizable(
        "optimistic",
        || Box::new(Real(OptimisticStore::new())),
        Sharing::Own,
        ROUNDS,
    );
}

#[test]
fn adaptive_store_single_line_calls_are_linearizable() {
    assert_linearizable(
        "adaptive",
        || Box::new(Real(AdaptiveStore::new())),
        Sharing::Own,
        ROUNDS,
    );
}

/// The adaptive store tuned to switch all the time (see [`switching_adaptive`]).
#[test]
fn adaptive_store_is_linearizable_while_switching() {
    assert_linearizable(
        "adaptive switching",
        || Box::new(Real(switching_adaptive())),
        Sharing::Own,
        ROUNDS,
    );
}

/// An adaptive store with a window of one operation that turns hot after any conflict and
/// cold after an operation without one: its SKUs switch modes under the racing calls.
fn switching_adaptive() -> AdaptiveStore<Sku> {
    AdaptiveStore::builder()
        .window_ops(1)
        .hot_threshold_per_mille(1)
        .cold_threshold_per_mille(0)
        .build()
}

#[test]
fn monitor_store_is_linearizable() {
    assert_linearizable(
        "monitor",
        || Box::new(Real(MonitorStore::new())),
        Sharing::Own,
        ROUNDS,
    );
}

/// Rounds of the racing tests: one round shows the bug below in about 1 run of 10 on
/// 2 cores, so 40 rounds show it almost always.
const RACING_ROUNDS: usize = 40;

#[test]
fn pessimistic_store_is_linearizable_with_racing_resolutions() {
    assert_linearizable(
        "pessimistic",
        || Box::new(Real(PessimisticStore::new())),
        Sharing::Racing,
        RACING_ROUNDS,
    );
}

#[test]
fn optimistic_store_is_linearizable_with_racing_resolutions() {
    assert_linearizable(
        "optimistic",
        || Box::new(Real(OptimisticStore::new())),
        Sharing::Racing,
        RACING_ROUNDS,
    );
}

#[test]
fn adaptive_store_is_linearizable_with_racing_resolutions() {
    assert_linearizable(
        "adaptive",
        || Box::new(Real(switching_adaptive())),
        Sharing::Racing,
        RACING_ROUNDS,
    );
}

#[test]
fn monitor_store_is_linearizable_with_racing_resolutions() {
    assert_linearizable(
        "monitor",
        || Box::new(Real(MonitorStore::new())),
        Sharing::Racing,
        RACING_ROUNDS,
    );
}

// ---------------------------------------------------------------------------------------
// Negative controls.
// ---------------------------------------------------------------------------------------

fn event(
    invoked_at: u64,
    returned_at: u64,
    operation: Operation,
    result: Outcome,
) -> Event<Operation, Outcome> {
    Event {
        invoked_at,
        returned_at,
        operation,
        result,
    }
}

fn level(on_hand: u64, reserved: u64, version: u64) -> StockLevel {
    StockLevel {
        on_hand,
        reserved,
        version,
    }
}

fn initial(on_hand: u64) -> SkuState {
    SkuState {
        sku: 0,
        exists: true,
        level: level(on_hand, 0, 1),
        open: BTreeMap::new(),
    }
}

#[test]
fn checker_accepts_overlapping_calls_in_either_order() {
    // Two overlapping restocks: the second to return may be linearized first.
    let history = [
        event(
            0,
            3,
            Operation::Restock(1),
            Outcome::Restocked(Ok(level(3, 0, 3))),
        ),
        event(
            1,
            2,
            Operation::Restock(1),
            Outcome::Restocked(Ok(level(2, 0, 2))),
        ),
        event(4, 5, Operation::Level, Outcome::Level(Some(level(3, 0, 3)))),
    ];
    assert_eq!(wgl::check::<SkuSpec>(initial(1), &history, 1_000), Ok(()));
}

#[test]
fn negative_control_checker_refuses_a_lost_update() {
    // Two overlapping restocks of 1 both saw on hand 1: one update is lost.
    let history = [
        event(
            0,
            3,
            Operation::Restock(1),
            Outcome::Restocked(Ok(level(2, 0, 2))),
        ),
        event(
            1,
            2,
            Operation::Restock(1),
            Outcome::Restocked(Ok(level(2, 0, 2))),
        ),
    ];
    assert!(matches!(
        wgl::check::<SkuSpec>(initial(1), &history, 1_000),
        Err(Refusal::NotLinearizable { .. })
    ));
}

#[test]
fn negative_control_checker_refuses_a_stale_read() {
    // A read that starts after a restock returned must see it.
    let history = [
        event(
            0,
            1,
            Operation::Restock(1),
            Outcome::Restocked(Ok(level(2, 0, 2))),
        ),
        event(2, 3, Operation::Level, Outcome::Level(Some(level(1, 0, 1)))),
    ];
    assert!(matches!(
        wgl::check::<SkuSpec>(initial(1), &history, 1_000),
        Err(Refusal::NotLinearizable { .. })
    ));
}

#[test]
fn negative_control_checker_refuses_a_double_resolution() {
    // Two commits of one hold both won.
    let id = ReservationId::from_u64(7);
    let history = [
        event(0, 1, Operation::Reserve(1), Outcome::Reserved(Ok(id))),
        event(2, 5, Operation::Commit(id), Outcome::Resolved(Ok(1))),
        event(3, 4, Operation::Commit(id), Outcome::Resolved(Ok(1))),
    ];
    assert!(matches!(
        wgl::check::<SkuSpec>(initial(2), &history, 1_000),
        Err(Refusal::NotLinearizable { .. })
    ));
}

/// What a correct store answers to `operation` on `state`, taking new hold ids from
/// `next_id` (the negative controls answer with it, atomically or not).
fn answer(state: &SkuState, operation: Operation, next_id: &AtomicU64) -> Outcome {
    let unknown = || StockError::UnknownSku(state.sku);
    match operation {
        Operation::Level => Outcome::Level(state.exists.then_some(state.level)),
        Operation::Restock(qty) => Outcome::Restocked(Ok(
            state.bumped(state.level.on_hand + qty, state.level.reserved)
        )),
        Operation::Reserve(qty) | Operation::ReserveWait(qty) => {
            Outcome::Reserved(match (state.exists, state.short(qty)) {
                (false, _) => Err(unknown()),
                (true, Some(refusal)) => Err(refusal),
                (true, None) => Ok(ReservationId::from_u64(
                    u64::MAX / 2 + next_id.fetch_add(1, Ordering::Relaxed),
                )),
            })
        }
        Operation::Sell(qty) => Outcome::Sold(match (state.exists, state.short(qty)) {
            (false, _) => Err(unknown()),
            (true, refusal) => refusal.map_or(Ok(()), Err),
        }),
        Operation::Commit(id) | Operation::Release(id) => Outcome::Resolved(
            state
                .open
                .get(&id)
                .copied()
                .ok_or(StockError::UnknownReservation(id)),
        ),
    }
}

/// A naive store: each call reads the SKU's state, computes, and writes it back in a
/// second critical section (get-then-put), so overlapping calls lose updates. The first
/// two recorded restocks of SKU 0 are made to overlap, so the control does not depend on
/// luck: the one that writes last sets the version back or returns a level that no order
/// of the calls explains.
#[derive(Default)]
struct LostUpdateStore {
    skus: Mutex<BTreeMap<Sku, SkuState>>,
    next_id: AtomicU64,
    /// Restocks of SKU 0 so far (the first is the unrecorded setup).
    restocks: AtomicU64,
    overlap: Rendezvous,
}

impl Subject for LostUpdateStore {
    fn call(&self, sku: Sku, operation: Operation) -> Outcome {
        let read = self.skus.lock().unwrap().get(&sku).cloned();
        let mut state = read.unwrap_or(SkuState {
            sku,
            exists: true,
            level: StockLevel::default(),
            open: BTreeMap::new(),
        });
        if let (Operation::Restock(_), 0) = (operation, sku) {
            if self.restocks.fetch_add(1, Ordering::Relaxed) > 0 {
                self.overlap.meet();
            }
        }
        let outcome = answer(&state, operation, &self.next_id);
        // The spec computes the new state from the (possibly stale) state read above.
        if let Some(next) = SkuSpec::step(&state, &operation, &outcome) {
            state = next;
        }
        self.skus.lock().unwrap().insert(sku, state);
        outcome
    }
}

#[test]
fn negative_control_lost_update_store_is_not_linearizable() {
    let histories = record(&LostUpdateStore::default(), Sharing::Own);
    let refusals = check(&histories);
    assert!(
        refusals
            .iter()
            .any(|(_, _, refusal)| matches!(refusal, Refusal::NotLinearizable { .. })),
        "the lost update store passed: {refusals:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Creation: a SKU's first restock races reads, holds and sales of the SKU (issue 14).
// ---------------------------------------------------------------------------------------

/// Rounds of the creation race per store, each on a fresh store.
const CREATION_ROUNDS: usize = 3_000;
/// Threads racing in one creation round (more than 2 cores, so some are preempted
/// mid-call).
const CREATION_THREADS: usize = 4;
/// Calls each thread makes in one creation round.
const CREATION_CALLS: usize = 6;
/// The SKU of the creation races.
const NEW_SKU: Sku = 7;

/// The operations of a creation round: mostly reads and first restocks, plus holds and
/// sales that must find the SKU unknown or restocked, never empty (and waiting holds on
/// the monitor store).
fn creation_operation(rng: &mut StdRng, waits: bool) -> Operation {
    match rng.gen_range(0..100) {
        0..=29 => Operation::Level,
        30..=54 => Operation::Restock(rng.gen_range(1..=3)),
        55..=74 if waits => Operation::ReserveWait(1),
        55..=74 => Operation::Reserve(rng.gen_range(1..=2)),
        _ => Operation::Sell(1),
    }
}

/// Records one creation round on `subject`: `CREATION_THREADS` threads start together on
/// a SKU nobody restocked and make `CREATION_CALLS` calls each, the first thread opening
/// with a restock. Returns the SKU's history.
fn record_creation(
    subject: &dyn Subject,
    round: usize,
    waits: bool,
) -> Vec<Event<Operation, Outcome>> {
    let clock = AtomicU64::new(0);
    let start = std::sync::Barrier::new(CREATION_THREADS);
    thread::scope(|scope| {
        let threads: Vec<_> = (0..CREATION_THREADS)
            .map(|index| {
                let (clock, start) = (&clock, &start);
                let seed = SEED ^ (round * CREATION_THREADS + index) as u64;
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed);
                    start.wait();
                    (0..CREATION_CALLS)
                        .map(|call| {
                            let operation = if index == 0 && call == 0 {
                                Operation::Restock(INITIAL_ON_HAND)
                            } else {
                                creation_operation(&mut rng, waits)
                            };
                            let invoked_at = clock.fetch_add(1, Ordering::SeqCst);
                            let result = subject.call(NEW_SKU, operation);
                            let returned_at = clock.fetch_add(1, Ordering::SeqCst);
                            Event {
                                invoked_at,
                                returned_at,
                                operation,
                                result,
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|thread| thread.join().expect("creation recorder panicked"))
            .collect()
    })
}

/// The state of a SKU nobody restocked yet.
fn absent() -> SkuState {
    SkuState {
        sku: NEW_SKU,
        exists: false,
        level: StockLevel::default(),
        open: BTreeMap::new(),
    }
}

/// Runs `rounds` creation rounds, each on a fresh subject; returns the first refusal with
/// its round, and how many rounds had a read that found the SKU absent and one that found
/// it restocked (so the races really overlapped creation).
fn creation_refusal(
    new_subject: &dyn Fn() -> Box<dyn Subject>,
    rounds: usize,
    waits: bool,
) -> (Option<(usize, Refusal)>, usize) {
    let mut raced = 0;
    for round in 0..rounds {
        let history = record_creation(&*new_subject(), round, waits);
        let unknown = history.iter().any(|event| {
            matches!(
                event.result,
                Outcome::Level(None)
                    | Outcome::Reserved(Err(StockError::UnknownSku(_)))
                    | Outcome::Sold(Err(StockError::UnknownSku(_)))
            )
        });
        raced += usize::from(unknown);
        if let Err(refusal) = wgl::check::<SkuSpec>(absent(), &history, STEPS_MAX) {
            return (Some((round, refusal)), raced);
        }
    }
    (None, raced)
}

/// Asserts that every creation round of the store from `new_subject` is linearizable, and
/// that enough rounds raced creation to mean something.
fn assert_creation_linearizable(
    name: &str,
    new_subject: &dyn Fn() -> Box<dyn Subject>,
    waits: bool,
) {
    let (refusal, raced) = creation_refusal(new_subject, CREATION_ROUNDS, waits);
    if let Some((round, refusal)) = refusal {
        panic!("{name}: creation round {round} is not linearizable: {refusal:?}");
    }
    assert!(
        raced >= CREATION_ROUNDS / 10,
        "{name}: only {raced} of {CREATION_ROUNDS} rounds saw the SKU unknown"
    );
}

#[test]
fn pessimistic_store_creation_is_linearizable() {
    assert_creation_linearizable(
        "pessimistic",
        &|| Box::new(Real(PessimisticStore::new())),
        false,
    );
}

#[test]
fn optimistic_store_creation_is_linearizable() {
    assert_creation_linearizable(
        "optimistic",
        &|| Box::new(Real(OptimisticStore::new())),
        false,
    );
}

#[test]
fn adaptive_store_creation_is_linearizable() {
    assert_creation_linearizable("adaptive", &|| Box::new(Real(AdaptiveStore::new())), false);
}

#[test]
fn monitor_store_creation_is_linearizable() {
    assert_creation_linearizable("monitor", &|| Box::new(Real(MonitorStore::new())), false);
}

#[test]
fn monitor_store_creation_is_linearizable_with_waiting_holds() {
    assert_creation_linearizable(
        "monitor waiting",
        &|| Box::new(Waiting(MonitorStore::new())),
        true,
    );
}

/// A store that creates a SKU as the stores did before issue 14: it inserts an empty slot
/// (nothing on hand, version 0) and only then applies the first restock. Every call is
/// otherwise atomic and correct. The creating restock waits (up to 1 s) for another call
/// to find the empty slot, and every other call waits (up to 1 s) for the slot to exist,
/// so the control does not depend on luck: even on a loaded machine, where the creating
/// thread may start after the others have finished, a call overlaps the half-done
/// creation and sees it.
#[derive(Default)]
struct ZeroSlotStore {
    skus: Mutex<BTreeMap<Sku, SkuState>>,
    next_id: AtomicU64,
    /// Set when a call found an empty slot.
    seen_empty: Mutex<bool>,
    seen: std::sync::Condvar,
    /// Set when the empty slot was inserted.
    inserted: Mutex<bool>,
    inserted_cv: std::sync::Condvar,
}

impl Subject for ZeroSlotStore {
    fn call(&self, sku: Sku, operation: Operation) -> Outcome {
        if !matches!(operation, Operation::Restock(_)) {
            let inserted = self.inserted.lock().unwrap();
            drop(
                self.inserted_cv
                    .wait_timeout_while(inserted, std::time::Duration::from_secs(1), |inserted| {
                        !*inserted
                    })
                    .unwrap(),
            );
        }
        let mut skus = self.skus.lock().unwrap();
        if let (Operation::Restock(_), None) = (operation, skus.get(&sku)) {
            // Create the empty slot, let the others see it, then restock it.
            let mut empty = absent();
            empty.sku = sku;
            empty.exists = true;
            skus.insert(sku, empty);
            drop(skus);
            *self.inserted.lock().unwrap() = true;
            self.inserted_cv.notify_all();
            let seen = self.seen_empty.lock().unwrap();
            drop(
                self.seen
                    .wait_timeout_while(seen, std::time::Duration::from_secs(1), |seen| !*seen)
                    .unwrap(),
            );
            skus = self.skus.lock().unwrap();
        }
        let mut state = skus
            .get(&sku)
            .cloned()
            .unwrap_or_else(|| SkuState { sku, ..absent() });
        if state.exists && state.level.version == 0 {
            *self.seen_empty.lock().unwrap() = true;
            self.seen.notify_all();
        }
        let outcome = answer(&state, operation, &self.next_id);
        if let Some(next) = SkuSpec::step(&state, &operation, &outcome) {
            state = next;
        }
        if let Operation::Restock(_) = operation {
            state.exists = true;
        }
        skus.insert(sku, state);
        outcome
    }
}

#[test]
fn negative_control_zero_slot_creation_is_not_linearizable() {
    let (refusal, _) = creation_refusal(&|| Box::new(ZeroSlotStore::default()), 20, false);
    assert!(
        matches!(refusal, Some((_, Refusal::NotLinearizable { .. }))),
        "the zero-slot store passed 20 creation rounds: {refusal:?}"
    );
}

#[test]
fn negative_control_checker_refuses_an_empty_new_sku() {
    // A read that overlaps the first restock sees the SKU with nothing restocked.
    let history = [
        event(
            0,
            3,
            Operation::Restock(2),
            Outcome::Restocked(Ok(level(2, 0, 1))),
        ),
        event(1, 2, Operation::Level, Outcome::Level(Some(level(0, 0, 0)))),
    ];
    assert!(matches!(
        wgl::check::<SkuSpec>(SkuState { sku: 0, ..absent() }, &history, 1_000),
        Err(Refusal::NotLinearizable { .. })
    ));
    // ... while unknown then restocked is one order of the same calls.
    let history = [
        event(
            0,
            3,
            Operation::Restock(2),
            Outcome::Restocked(Ok(level(2, 0, 1))),
        ),
        event(1, 2, Operation::Level, Outcome::Level(None)),
        event(4, 5, Operation::Sell(1), Outcome::Sold(Ok(()))),
    ];
    assert_eq!(
        wgl::check::<SkuSpec>(SkuState { sku: 0, ..absent() }, &history, 1_000),
        Ok(())
    );
}
