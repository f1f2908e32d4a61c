//! Model-based property test: every store against the sequential specification.
//!
//! [`Model`] is the sequential spec of DESIGN.md written as a proptest-state-machine
//! [`ReferenceStateMachine`]: per-SKU levels (on hand, reserved, version), the open holds
//! and the expected outcome of each call. [`StoreTest`] applies the same random sequence of
//! calls to a store and checks, after every step, that the store returned exactly what the
//! model expected, that every SKU's level equals the model's, that `reserved <= on_hand`,
//! that conservation holds per SKU (`restocked = on_hand + sold`, `reserved = sum of the
//! open holds`), and that a refused call changed nothing.
//!
//! The calls include the bad ones: zero quantities, quantities at and near
//! `store.quantity_max()` and `u64::MAX` (so sums of lines and the version rule overflow),
//! empty requests, unknown SKUs, duplicate lines, ids never issued
//! ([`ReservationId::from_u64`]), ids issued by another store, and ids already resolved.
//!
//! Cases: 256 by default, `PROPTEST_CASES=n` overrides. A failure shrinks to a short
//! sequence of calls, printed with the expected and actual outcome.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use stockledger::{
    MonitorStore, OptimisticStore, PessimisticStore, Reservation, ReservationId, StockError,
    StockLevel, StockStore, WaitingStore,
};

/// The SKU type of the test: small integers, so random lines collide often.
type Sku = u8;

/// SKUs that restock may create.
const RESTOCKED_SKUS: Sku = 3;
/// SKUs that lines may name: the restocked ones plus one that is never restocked.
const NAMED_SKUS: Sku = RESTOCKED_SKUS + 1;
/// Calls per generated sequence.
const CALLS: std::ops::Range<usize> = 1..64;
/// Cases when `PROPTEST_CASES` is not set (CI sets 256 too).
const CASES_DEFAULT: u32 = 256;

/// The proptest configuration: `PROPTEST_CASES` cases, 256 when unset.
fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(CASES_DEFAULT);
    Config {
        cases,
        // The minimal failing sequence is printed; seeds of state machine runs are not
        // worth a regressions file.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------
// The stores under test, behind a small local API (test doubles must not implement
// `StockStore`, see TEAM.md), so the negative controls below can be run the same way.
// ---------------------------------------------------------------------------------------

/// What the state machine test needs of a store.
trait Subject: Debug {
    /// Whether the store is a [`WaitingStore`] (then `reserve_timeout` is exercised).
    const WAITS: bool;
    /// The store's largest `version + reserved` (its version rule, see TEAM.md and the
    /// `OptimisticStore` docs: 2^48 - 1 for the optimistic store, `u64::MAX` otherwise).
    const VERSION_MAX: u64;
    /// Whether a sell of several SKUs is a hold on every line that then becomes a sale
    /// (the optimistic store's documented multi-line sell): two changes, so each SKU's
    /// version grows by 2.
    const SELL_HOLDS_FIRST: bool;
    /// Units beyond a SKU's on hand one waiter may wait for: a `reserve_timeout` line that
    /// would have to wait for more is refused with `WaitTooLarge` before any line is held
    /// (`u64::MAX`: no bound).
    const WAIT_UNITS_MAX: u64 = u64::MAX;

    fn new() -> Self;
    fn quantity_max(&self) -> u64;
    fn restock(&self, sku: Sku, qty: u64) -> Result<StockLevel, StockError<Sku>>;
    fn level(&self, sku: Sku) -> Option<StockLevel>;
    fn reserve(&self, lines: &[(Sku, u64)]) -> Result<Reservation<Sku>, StockError<Sku>>;
    fn reserve_timeout(&self, lines: &[(Sku, u64)]) -> Result<Reservation<Sku>, StockError<Sku>>;
    fn commit(&self, id: ReservationId) -> Result<Reservation<Sku>, StockError<Sku>>;
    fn commit_partial(
        &self,
        id: ReservationId,
        lines: &[(Sku, u64)],
    ) -> Result<Reservation<Sku>, StockError<Sku>>;
    fn release(&self, id: ReservationId) -> Result<Reservation<Sku>, StockError<Sku>>;
    fn sell(&self, lines: &[(Sku, u64)]) -> Result<(), StockError<Sku>>;
}

/// Implements [`Subject`] for a real store by delegating to its `StockStore` methods.
macro_rules! subject {
    ($store:ty, version_max: $version_max:expr, sell_holds_first: $holds:expr, waits: $waits:tt $(, wait_units_max: $wait:expr)?) => {
        subject!($store, new: <$store>::new(), version_max: $version_max, sell_holds_first: $holds, waits: $waits $(, wait_units_max: $wait)?);
    };
    ($store:ty, new: $new:expr, version_max: $version_max:expr, sell_holds_first: $holds:expr, waits: $waits:tt $(, wait_units_max: $wait:expr)?) => {
        impl Subject for $store {
            const WAITS: bool = $waits;
            $(const WAIT_UNITS_MAX: u64 = $wait;)?
            const VERSION_MAX: u64 = $version_max;
            const SELL_HOLDS_FIRST: bool = $holds;

            fn new() -> Self {
                $new
            }
            fn quantity_max(&self) -> u64 {
                StockStore::quantity_max(self)
            }
            fn restock(&self, sku: Sku, qty: u64) -> Result<StockLevel, StockError<Sku>> {
                StockStore::restock(self, &sku, qty)
            }
            fn level(&self, sku: Sku) -> Option<StockLevel> {
                StockStore::level(self, &sku)
            }
            fn reserve(&self, lines: &[(Sku, u64)]) -> Result<Reservation<Sku>, StockError<Sku>> {
                StockStore::reserve(self, lines)
            }
            fn reserve_timeout(
                &self,
                lines: &[(Sku, u64)],
            ) -> Result<Reservation<Sku>, StockError<Sku>> {
                subject!(@timeout $waits, self, lines)
            }
            fn commit(&self, id: ReservationId) -> Result<Reservation<Sku>, StockError<Sku>> {
                StockStore::commit(self, id)
            }
            fn commit_partial(
                &self,
                id: ReservationId,
                lines: &[(Sku, u64)],
            ) -> Result<Reservation<Sku>, StockError<Sku>> {
                StockStore::commit_partial(self, id, lines)
            }
            fn release(&self, id: ReservationId) -> Result<Reservation<Sku>, StockError<Sku>> {
                StockStore::release(self, id)
            }
            fn sell(&self, lines: &[(Sku, u64)]) -> Result<(), StockError<Sku>> {
                StockStore::sell(self, lines)
            }
        }
    };
    (@timeout true, $self:ident, $lines:ident) => {
        WaitingStore::reserve_timeout($self, $lines, Duration::ZERO)
    };
    (@timeout false, $self:ident, $lines:ident) => {
        unreachable!("not a waiting store: {:?}", $lines)
    };
}

subject!(PessimisticStore<Sku>, version_max: u64::MAX, sell_holds_first: false, waits: false);
subject!(OptimisticStore<Sku>, version_max: (1 << 48) - 1, sell_holds_first: true, waits: false);
subject!(
    MonitorStore<Sku>,
    version_max: u64::MAX,
    sell_holds_first: false,
    waits: true,
    wait_units_max: MonitorStore::<Sku>::WAIT_UNITS_MAX
);
subject!(stockledger::AdaptiveStore<Sku>, version_max: (1 << 48) - 1, sell_holds_first: true, waits: false);
#[cfg(feature = "redis")]
subject!(
    stockledger::RedisStore<Sku>,
    new: {
        let url = redis_server::shared().url();
        stockledger::RedisStore::connect(&url, &redis_server::fresh_namespace("model")).unwrap()
    },
    version_max: stockledger::RedisStore::<Sku>::QUANTITY_MAX,
    sell_holds_first: false,
    waits: true,
    wait_units_max: stockledger::RedisStore::<Sku>::WAIT_UNITS_MAX
);

#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;

// ---------------------------------------------------------------------------------------
// The reference model: the sequential spec.
// ---------------------------------------------------------------------------------------

/// A reservation id as a generated call names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldRef {
    /// The `n`th hold this store issued (open, or already resolved).
    Issued(usize),
    /// An id no store issued (ids start at 1, so 0 and values near `u64::MAX`).
    NeverIssued(u64),
    /// An open hold of another store.
    Foreign,
}

/// One call of the generated sequence.
#[derive(Debug, Clone)]
enum Call {
    Restock(Sku, u64),
    Reserve(Vec<(Sku, u64)>),
    /// `reserve_timeout` with a zero timeout (waiting stores only).
    ReserveTimeout(Vec<(Sku, u64)>),
    Sell(Vec<(Sku, u64)>),
    Commit(HoldRef),
    /// `commit_partial` of the hold with these lines (random: often valid, sometimes a SKU
    /// the hold lacks or more units than it holds).
    CommitPartial(HoldRef, Vec<(Sku, u64)>),
    Release(HoldRef),
}

/// What the model says the last call returns. Ids are the store's: the model names a
/// hold by its issue order, and `Unknown` means `UnknownReservation(the id passed)`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Nothing,
    Restock(Result<StockLevel, StockError<Sku>>),
    /// The merged lines of the new hold, or the refusal.
    Reserve(Result<Vec<(Sku, u64)>, StockError<Sku>>),
    Sell(Result<(), StockError<Sku>>),
    /// The resolved hold's lines, or `None` for `UnknownReservation`.
    Resolve(Option<Vec<(Sku, u64)>>),
    /// A partial commit: the hold's lines, or the refusal.
    Partial(Result<Vec<(Sku, u64)>, PartialRefusal>),
}

/// Why the model refuses a partial commit (the store's errors name the hold's id, which the
/// model does not know).
#[derive(Debug, Clone, PartialEq, Eq)]
enum PartialRefusal {
    /// An error of the lines themselves (empty, a zero quantity, overflow).
    Lines(StockError<Sku>),
    Unknown,
    NotInHold(Sku),
    AboveHold {
        sku: Sku,
        held: u64,
        requested: u64,
    },
}

/// The store's limits, as the model needs them.
#[derive(Debug, Clone, Copy)]
struct Limits {
    quantity_max: u64,
    version_max: u64,
    sell_holds_first: bool,
    waits: bool,
    wait_units_max: u64,
}

/// The sequential state: what every store must agree with after every call.
#[derive(Debug, Clone)]
struct ModelState {
    limits: Limits,
    levels: BTreeMap<Sku, StockLevel>,
    /// Units restocked and sold so far, per SKU (u128: the sum of many near-max restocks).
    restocked: BTreeMap<Sku, u128>,
    sold: BTreeMap<Sku, u128>,
    /// Every hold issued, in issue order; `None` once resolved.
    holds: Vec<Option<Vec<(Sku, u64)>>>,
    expected: Expected,
}

/// The kinds of change to one SKU (the spec of `StockLevel`'s arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Restock,
    Reserve,
    Sell,
    Commit,
    Release,
}

impl ModelState {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            levels: BTreeMap::new(),
            restocked: BTreeMap::new(),
            sold: BTreeMap::new(),
            holds: Vec::new(),
            expected: Expected::Nothing,
        }
    }

    /// The level of `sku` after `change` of `qty` units, or the refusal. Spec: reserve and
    /// sell take at most `available`; on hand stays within `quantity_max`; every change
    /// bumps the version by one, and `version + reserved <= version_max` after it.
    fn changed(&self, sku: Sku, change: Change, qty: u64) -> Result<StockLevel, StockError<Sku>> {
        let level = self.levels.get(&sku).copied().unwrap_or_default();
        let available = level.on_hand - level.reserved;
        let overflow = StockError::Overflow { sku };
        let (on_hand, reserved) = match change {
            Change::Restock => match level.on_hand.checked_add(qty) {
                Some(on_hand) if on_hand <= self.limits.quantity_max => (on_hand, level.reserved),
                _ => return Err(overflow),
            },
            Change::Reserve | Change::Sell if qty > available => {
                return Err(StockError::InsufficientStock {
                    sku,
                    requested: qty,
                    available,
                })
            }
            Change::Reserve => (level.on_hand, level.reserved + qty),
            Change::Sell => (level.on_hand - qty, level.reserved),
            Change::Commit => (level.on_hand - qty, level.reserved - qty),
            Change::Release => (level.on_hand, level.reserved - qty),
        };
        let version = level.version + 1;
        if u128::from(version) + u128::from(reserved) > u128::from(self.limits.version_max) {
            return Err(overflow);
        }
        Ok(StockLevel {
            on_hand,
            reserved,
            version,
        })
    }

    /// Validates and merges request lines. Spec, in order of precedence: no lines is
    /// `EmptyRequest`; the first zero line (request order) is `InvalidQuantity`; the lowest
    /// SKU whose lines sum past `u64::MAX` is `Overflow`; the lowest SKU never restocked is
    /// `UnknownSku`.
    fn merge(&self, lines: &[(Sku, u64)]) -> Result<Vec<(Sku, u64)>, StockError<Sku>> {
        let result = Self::merge_lines(lines)?;
        if let Some(&(sku, _)) = result
            .iter()
            .find(|(sku, _)| !self.levels.contains_key(sku))
        {
            return Err(StockError::UnknownSku(sku));
        }
        Ok(result)
    }

    /// `merge` without the check that every SKU is known (a partial commit checks its
    /// lines against the hold instead).
    fn merge_lines(lines: &[(Sku, u64)]) -> Result<Vec<(Sku, u64)>, StockError<Sku>> {
        if lines.is_empty() {
            return Err(StockError::EmptyRequest);
        }
        if let Some(&(sku, _)) = lines.iter().find(|(_, qty)| *qty == 0) {
            return Err(StockError::InvalidQuantity { sku });
        }
        let mut merged = BTreeMap::<Sku, u128>::new();
        for &(sku, qty) in lines {
            *merged.entry(sku).or_default() += u128::from(qty);
        }
        let mut result = Vec::new();
        for (sku, qty) in merged {
            let qty = u64::try_from(qty).map_err(|_| StockError::Overflow { sku })?;
            result.push((sku, qty));
        }
        Ok(result)
    }

    /// Applies `change` to every merged line, all or nothing: the first line refused (in
    /// ascending SKU order) is the error and nothing changes.
    fn change_all(&mut self, lines: &[(Sku, u64)], change: Change) -> Result<(), StockError<Sku>> {
        let next = lines
            .iter()
            .map(|&(sku, qty)| self.changed(sku, change, qty).map(|level| (sku, level)))
            .collect::<Result<Vec<_>, _>>()?;
        self.levels.extend(next);
        Ok(())
    }

    fn restock(&mut self, sku: Sku, qty: u64) -> Result<StockLevel, StockError<Sku>> {
        if qty == 0 {
            return Err(StockError::InvalidQuantity { sku });
        }
        let level = self.changed(sku, Change::Restock, qty)?;
        self.levels.insert(sku, level);
        *self.restocked.entry(sku).or_default() += u128::from(qty);
        Ok(level)
    }

    fn reserve(&mut self, lines: &[(Sku, u64)]) -> Result<Vec<(Sku, u64)>, StockError<Sku>> {
        let merged = self.merge(lines)?;
        self.change_all(&merged, Change::Reserve)?;
        self.holds.push(Some(merged.clone()));
        Ok(merged)
    }

    /// `reserve_timeout` with a zero timeout, sequentially (so no waiter is ever queued):
    /// lines are taken one at a time in ascending SKU order; a line that is short times
    /// out, and a line refused for overflow fails; either way the lines already held are
    /// given back (each held-then-returned line is two changes: its version grows by 2,
    /// its counts are as before), as the `WaitingStore` docs describe for a timeout. (So
    /// an `Overflow` on a later line also bumps the versions of the earlier lines: the
    /// monitor store checks a line for overflow only when it gets to it.) Before any line
    /// is held, a line that would have to wait for more than its SKU's on hand plus the
    /// store's wait bound is refused with `WaitTooLarge`, and nothing changes.
    fn reserve_timeout(
        &mut self,
        lines: &[(Sku, u64)],
    ) -> Result<Vec<(Sku, u64)>, StockError<Sku>> {
        let merged = self.merge(lines)?;
        for &(sku, qty) in &merged {
            let level = self.levels[&sku];
            let limit = level.on_hand.saturating_add(self.limits.wait_units_max);
            if qty > level.available() && qty > limit {
                return Err(StockError::WaitTooLarge {
                    sku,
                    requested: qty,
                    limit,
                });
            }
        }
        for (held, &(sku, qty)) in merged.iter().enumerate() {
            let refusal = match self.changed(sku, Change::Reserve, qty) {
                Ok(level) => {
                    self.levels.insert(sku, level);
                    continue;
                }
                Err(StockError::InsufficientStock { .. }) => StockError::Timeout,
                Err(error) => error,
            };
            for &(sku, qty) in &merged[..held] {
                let level = self.changed(sku, Change::Release, qty).expect("held");
                self.levels.insert(sku, level);
            }
            return Err(refusal);
        }
        self.holds.push(Some(merged.clone()));
        Ok(merged)
    }

    fn sell(&mut self, lines: &[(Sku, u64)]) -> Result<(), StockError<Sku>> {
        let merged = self.merge(lines)?;
        if self.limits.sell_holds_first && merged.len() >= 2 {
            self.change_all(&merged, Change::Reserve)?;
            self.change_all(&merged, Change::Commit).expect("held");
        } else {
            self.change_all(&merged, Change::Sell)?;
        }
        for (sku, qty) in merged {
            *self.sold.entry(sku).or_default() += u128::from(qty);
        }
        Ok(())
    }

    /// Commits or releases: only an issued, still open hold resolves; it resolves once.
    fn resolve(&mut self, hold: HoldRef, change: Change) -> Option<Vec<(Sku, u64)>> {
        let HoldRef::Issued(index) = hold else {
            return None;
        };
        let lines = self.holds[index].take()?;
        self.change_all(&lines, change)
            .expect("an open hold always resolves");
        if change == Change::Commit {
            for &(sku, qty) in &lines {
                *self.sold.entry(sku).or_default() += u128::from(qty);
            }
        }
        Some(lines)
    }

    /// A partial commit: the lines are checked (as a request's, then against the hold);
    /// the rest of the hold is released, then the named units are committed, each step
    /// one version on every SKU it touches; the hold resolves once.
    fn commit_partial(
        &mut self,
        hold: HoldRef,
        lines: &[(Sku, u64)],
    ) -> Result<Vec<(Sku, u64)>, PartialRefusal> {
        let committed = Self::merge_lines(lines).map_err(PartialRefusal::Lines)?;
        let held = match hold {
            HoldRef::Issued(index) => self.holds[index].clone(),
            _ => None,
        }
        .ok_or(PartialRefusal::Unknown)?;
        for &(sku, requested) in &committed {
            match held.iter().find(|(held_sku, _)| *held_sku == sku) {
                None => return Err(PartialRefusal::NotInHold(sku)),
                Some(&(_, qty)) if qty < requested => {
                    return Err(PartialRefusal::AboveHold {
                        sku,
                        held: qty,
                        requested,
                    })
                }
                Some(_) => {}
            }
        }
        let HoldRef::Issued(index) = hold else {
            unreachable!("only an issued hold is open")
        };
        self.holds[index] = None;
        let rest: Vec<(Sku, u64)> = held
            .iter()
            .filter_map(|&(sku, qty)| {
                let taken = committed
                    .iter()
                    .find(|(committed_sku, _)| *committed_sku == sku)
                    .map_or(0, |(_, taken)| *taken);
                (qty > taken).then_some((sku, qty - taken))
            })
            .collect();
        if !rest.is_empty() {
            self.change_all(&rest, Change::Release)
                .expect("an open hold always resolves");
        }
        self.change_all(&committed, Change::Commit)
            .expect("an open hold always resolves");
        for &(sku, qty) in &committed {
            *self.sold.entry(sku).or_default() += u128::from(qty);
        }
        Ok(held)
    }

    /// Units of `sku` held by open holds.
    fn held(&self, sku: Sku) -> u64 {
        self.holds
            .iter()
            .flatten()
            .flatten()
            .filter(|(line_sku, _)| *line_sku == sku)
            .map(|(_, qty)| qty)
            .sum()
    }
}

/// The reference state machine of the store type `S`.
struct Model<S>(PhantomData<S>);

/// Quantities: mostly small, sometimes zero, at and near `quantity_max`, half of it (so
/// two lines sum past it), and at and near `u64::MAX`.
fn quantity(quantity_max: u64) -> BoxedStrategy<u64> {
    prop_oneof![
        12 => 1..=4_u64,
        1 => Just(0),
        1 => (0..3_u64).prop_map(move |below| quantity_max - below),
        1 => (0..2_u64).prop_map(move |above| quantity_max / 2 + above),
        1 => (0..3_u64).prop_map(|below| u64::MAX - below),
    ]
    .boxed()
}

/// Request lines: 0 to 3 lines over the named SKUs (rarely the never restocked one), so
/// empty requests, duplicate lines and unknown SKUs all occur.
fn lines(quantity_max: u64) -> BoxedStrategy<Vec<(Sku, u64)>> {
    let sku = prop_oneof![12 => 0..RESTOCKED_SKUS, 1 => Just(RESTOCKED_SKUS)];
    let line = (sku, quantity(quantity_max));
    prop_oneof![
        1 => Just(Vec::new()),
        12 => proptest::collection::vec(line, 1..=3),
    ]
    .boxed()
}

/// A hold to resolve: mostly an open one, sometimes one already resolved, an id never
/// issued or an open hold of another store.
fn hold_ref(state: &ModelState) -> BoxedStrategy<HoldRef> {
    let bad = prop_oneof![
        Just(HoldRef::NeverIssued(0)),
        (0..2_u64).prop_map(|below| HoldRef::NeverIssued(u64::MAX - below)),
        Just(HoldRef::Foreign),
    ];
    let open: Vec<usize> = (0..state.holds.len())
        .filter(|index| state.holds[*index].is_some())
        .collect();
    match (state.holds.len(), open.is_empty()) {
        (0, _) => bad.boxed(),
        (issued, true) => prop_oneof![2 => (0..issued).prop_map(HoldRef::Issued), 1 => bad].boxed(),
        (issued, false) => prop_oneof![
            8 => proptest::sample::select(open).prop_map(HoldRef::Issued),
            2 => (0..issued).prop_map(HoldRef::Issued),
            1 => bad,
        ]
        .boxed(),
    }
}

impl<S: Subject> ReferenceStateMachine for Model<S> {
    type State = ModelState;
    type Transition = Call;

    /// An empty store, then a restock of 1 to 10 units of most SKUs (so calls find stock).
    fn init_state() -> BoxedStrategy<ModelState> {
        let limits = Limits {
            quantity_max: S::new().quantity_max(),
            version_max: S::VERSION_MAX,
            sell_holds_first: S::SELL_HOLDS_FIRST,
            waits: S::WAITS,
            wait_units_max: S::WAIT_UNITS_MAX,
        };
        let on_hand = proptest::option::weighted(0.75, 1..=10_u64);
        proptest::collection::vec(on_hand, RESTOCKED_SKUS as usize)
            .prop_map(move |initial| {
                let mut state = ModelState::new(limits);
                for (sku, qty) in (0..RESTOCKED_SKUS).zip(initial) {
                    if let Some(qty) = qty {
                        state.restock(sku, qty).expect("a small restock");
                    }
                }
                state
            })
            .boxed()
    }

    fn transitions(state: &ModelState) -> BoxedStrategy<Call> {
        let max = state.limits.quantity_max;
        let restock_qty = prop_oneof![4 => 1..=10_u64, 1 => quantity(max)];
        let hold = hold_ref(state);
        let timeout_weight = if state.limits.waits { 2 } else { 0 };
        let resolve_weight = if state.holds.iter().any(Option::is_some) {
            2
        } else {
            1
        };
        prop_oneof![
            3 => (0..RESTOCKED_SKUS, restock_qty).prop_map(|(sku, qty)| Call::Restock(sku, qty)),
            3 => lines(max).prop_map(Call::Reserve),
            timeout_weight => lines(max).prop_map(Call::ReserveTimeout),
            2 => lines(max).prop_map(Call::Sell),
            resolve_weight => hold.clone().prop_map(Call::Commit),
            resolve_weight => (hold.clone(), lines(4)).prop_map(|(hold, lines)| Call::CommitPartial(hold, lines)),
            resolve_weight => hold.prop_map(Call::Release),
        ]
        .boxed()
    }

    fn preconditions(state: &ModelState, call: &Call) -> bool {
        match call {
            Call::Commit(HoldRef::Issued(index))
            | Call::Release(HoldRef::Issued(index))
            | Call::CommitPartial(HoldRef::Issued(index), _) => *index < state.holds.len(),
            Call::ReserveTimeout(_) => state.limits.waits,
            _ => true,
        }
    }

    fn apply(mut state: ModelState, call: &Call) -> ModelState {
        state.expected = match call {
            Call::Restock(sku, qty) => Expected::Restock(state.restock(*sku, *qty)),
            Call::Reserve(lines) => Expected::Reserve(state.reserve(lines)),
            Call::ReserveTimeout(lines) => Expected::Reserve(state.reserve_timeout(lines)),
            Call::Sell(lines) => Expected::Sell(state.sell(lines)),
            Call::Commit(hold) => Expected::Resolve(state.resolve(*hold, Change::Commit)),
            Call::CommitPartial(hold, lines) => {
                Expected::Partial(state.commit_partial(*hold, lines))
            }
            Call::Release(hold) => Expected::Resolve(state.resolve(*hold, Change::Release)),
        };
        state
    }
}

// ---------------------------------------------------------------------------------------
// The system under test: a store, the ids it issued, and a foreign store's open hold.
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Sut<S> {
    store: S,
    /// Ids of the holds the store issued, in issue order (the model's `HoldRef::Issued`).
    ids: Vec<ReservationId>,
    /// An open hold of another store: unknown to this one.
    foreign: ReservationId,
}

impl<S: Subject> Sut<S> {
    fn id(&self, hold: HoldRef) -> ReservationId {
        match hold {
            HoldRef::Issued(index) => self.ids[index],
            HoldRef::NeverIssued(raw) => ReservationId::from_u64(raw),
            HoldRef::Foreign => self.foreign,
        }
    }

    /// Every named SKU's level (the whole observable state of the counts).
    fn levels(&self) -> Vec<Option<StockLevel>> {
        (0..NAMED_SKUS).map(|sku| self.store.level(sku)).collect()
    }

    /// Checks a reserve outcome and records the new hold's id.
    fn check_reserve(
        &mut self,
        actual: Result<Reservation<Sku>, StockError<Sku>>,
        expected: &Expected,
    ) {
        let actual_lines = actual.as_ref().map(|hold| hold.lines().to_vec());
        assert_eq!(
            Expected::Reserve(actual_lines.map_err(Clone::clone)),
            *expected
        );
        if let Ok(hold) = actual {
            assert_eq!(
                hold.expires_at(),
                None,
                "a hold without a TTL has no deadline"
            );
            assert!(
                !self.ids.contains(&hold.id()),
                "id {} issued twice",
                hold.id()
            );
            self.ids.push(hold.id());
        }
    }

    fn check_resolve(
        &self,
        id: ReservationId,
        actual: Result<Reservation<Sku>, StockError<Sku>>,
        expected: &Expected,
    ) {
        match (actual, expected) {
            (Ok(hold), Expected::Resolve(Some(lines))) => {
                assert_eq!(hold.id(), id);
                assert_eq!(hold.lines(), lines.as_slice());
            }
            (Err(error), Expected::Resolve(None)) => {
                assert_eq!(error, StockError::UnknownReservation(id));
            }
            (actual, expected) => panic!("resolving {id}: got {actual:?}, expected {expected:?}"),
        }
    }
}

/// The state machine test of the store type `S`.
struct StoreTest<S>(PhantomData<S>);

impl<S: Subject> StateMachineTest for StoreTest<S> {
    type SystemUnderTest = Sut<S>;
    type Reference = Model<S>;

    fn init_test(initial: &ModelState) -> Sut<S> {
        let other = PessimisticStore::new();
        Subject::restock(&other, 0, 1).expect("restock");
        let foreign = Subject::reserve(&other, &[(0, 1)]).expect("reserve").id();
        let store = S::new();
        for (sku, qty) in &initial.restocked {
            let qty = u64::try_from(*qty).expect("a small restock");
            store.restock(*sku, qty).expect("a small restock");
        }
        Sut {
            store,
            ids: Vec::new(),
            foreign,
        }
    }

    fn apply(mut sut: Sut<S>, model: &ModelState, call: Call) -> Sut<S> {
        let before = sut.levels();
        let expected = &model.expected;
        let mut counts_only = false;
        let failed = match call {
            Call::Restock(sku, qty) => {
                let actual = sut.store.restock(sku, qty);
                assert_eq!(Expected::Restock(actual.clone()), *expected);
                actual.is_err()
            }
            Call::Reserve(lines) => {
                let actual = sut.store.reserve(&lines);
                let failed = actual.is_err();
                sut.check_reserve(actual, expected);
                failed
            }
            Call::ReserveTimeout(lines) => {
                let actual = sut.store.reserve_timeout(&lines);
                let failed = actual.is_err();
                sut.check_reserve(actual, expected);
                // A refused waiting request that held some lines gave them back: the
                // counts are as before, the versions of the returned lines grew (checked
                // against the model's levels).
                counts_only = true;
                failed
            }
            Call::Sell(lines) => {
                let actual = sut.store.sell(&lines);
                assert_eq!(Expected::Sell(actual.clone()), *expected);
                actual.is_err()
            }
            Call::Commit(hold) => {
                let id = sut.id(hold);
                let actual = sut.store.commit(id);
                let failed = actual.is_err();
                sut.check_resolve(id, actual, expected);
                failed
            }
            Call::CommitPartial(hold, lines) => {
                let id = sut.id(hold);
                let actual = sut.store.commit_partial(id, &lines);
                let failed = actual.is_err();
                let actual = actual
                    .map(|hold| {
                        assert_eq!(hold.id(), id);
                        hold.lines().to_vec()
                    })
                    .map_err(|error| match error {
                        StockError::UnknownReservation(named) if named == id => {
                            PartialRefusal::Unknown
                        }
                        StockError::NotInHold { id: named, sku } if named == id => {
                            PartialRefusal::NotInHold(sku)
                        }
                        StockError::AboveHold {
                            id: named,
                            sku,
                            held,
                            requested,
                        } if named == id => PartialRefusal::AboveHold {
                            sku,
                            held,
                            requested,
                        },
                        other => PartialRefusal::Lines(other),
                    });
                assert_eq!(Expected::Partial(actual), *expected);
                failed
            }
            Call::Release(hold) => {
                let id = sut.id(hold);
                let actual = sut.store.release(id);
                let failed = actual.is_err();
                sut.check_resolve(id, actual, expected);
                failed
            }
        };
        if failed {
            let counts = |levels: Vec<Option<StockLevel>>| {
                levels
                    .into_iter()
                    .map(|level| level.map(|level| (level.on_hand, level.reserved)))
                    .collect::<Vec<_>>()
            };
            if counts_only {
                assert_eq!(
                    counts(sut.levels()),
                    counts(before),
                    "a refused call changed a count"
                );
            } else {
                assert_eq!(sut.levels(), before, "a refused call changed a level");
            }
        }
        sut
    }

    fn check_invariants(sut: &Sut<S>, model: &ModelState) {
        for sku in 0..NAMED_SKUS {
            let actual = sut.store.level(sku);
            assert_eq!(
                actual,
                model.levels.get(&sku).copied(),
                "level of SKU {sku}"
            );
            let Some(level) = actual else { continue };
            assert!(
                level.reserved <= level.on_hand,
                "reserved > on hand: {level:?}"
            );
            let restocked = model.restocked.get(&sku).copied().unwrap_or_default();
            let sold = model.sold.get(&sku).copied().unwrap_or_default();
            assert_eq!(
                restocked,
                u128::from(level.on_hand) + sold,
                "conservation of {sku}"
            );
            assert_eq!(
                level.reserved,
                model.held(sku),
                "reserved = open holds of {sku}"
            );
        }
    }
}

/// Runs the state machine test of `S` for `config.cases` random sequences; the error of
/// the first failing sequence (after shrinking), if any.
fn run<S: Subject>(config: Config) -> Result<(), String> {
    let mut runner = TestRunner::new(config.clone());
    runner
        .run(
            &Model::<S>::sequential_strategy(CALLS),
            |(initial, calls, seen)| {
                StoreTest::<S>::test_sequential(config.clone(), initial, calls, seen);
                Ok(())
            },
        )
        .map_err(|error| error.to_string())
}

#[test]
fn pessimistic_store_follows_the_model() {
    run::<PessimisticStore<Sku>>(config()).unwrap();
}

#[test]
fn optimistic_store_follows_the_model() {
    run::<OptimisticStore<Sku>>(config()).unwrap();
}

#[test]
fn monitor_store_follows_the_model() {
    run::<MonitorStore<Sku>>(config()).unwrap();
}

#[test]
fn adaptive_store_follows_the_model() {
    run::<stockledger::AdaptiveStore<Sku>>(config()).unwrap();
}

/// Fewer cases on Redis: every call is a round trip to a real server.
#[cfg(feature = "redis")]
#[test]
fn redis_store_follows_the_model() {
    let config = config();
    let cases = config.cases.min(64);
    run::<stockledger::RedisStore<Sku>>(Config { cases, ..config }).unwrap();
}

// ---------------------------------------------------------------------------------------
// Negative controls: stores with a classic bug must make the test fail.
// ---------------------------------------------------------------------------------------

/// A pessimistic store whose `sell` checks and sells line by line: not all or nothing,
/// and a cart with the same item twice passes a per-line check.
#[derive(Debug)]
struct PerLineSell(PessimisticStore<Sku>);

/// A pessimistic store whose `restock` clamps at the maximum instead of refusing with
/// `Overflow` (units silently lost).
#[derive(Debug)]
struct ClampingRestock(PessimisticStore<Sku>);

/// Implements [`Subject`] for a wrapper of a pessimistic store, delegating all but the
/// methods given.
macro_rules! mutant {
    ($mutant:ident { $($method:item)* }) => {
        impl Subject for $mutant {
            const WAITS: bool = false;
            const VERSION_MAX: u64 = u64::MAX;
            const SELL_HOLDS_FIRST: bool = false;

            fn new() -> Self {
                Self(PessimisticStore::new())
            }
            fn quantity_max(&self) -> u64 {
                u64::MAX
            }
            fn level(&self, sku: Sku) -> Option<StockLevel> {
                Subject::level(&self.0, sku)
            }
            fn reserve(&self, lines: &[(Sku, u64)]) -> Result<Reservation<Sku>, StockError<Sku>> {
                Subject::reserve(&self.0, lines)
            }
            fn reserve_timeout(
                &self,
                lines: &[(Sku, u64)],
            ) -> Result<Reservation<Sku>, StockError<Sku>> {
                unreachable!("not a waiting store: {lines:?}")
            }
            fn commit(&self, id: ReservationId) -> Result<Reservation<Sku>, StockError<Sku>> {
                Subject::commit(&self.0, id)
            }
            fn release(&self, id: ReservationId) -> Result<Reservation<Sku>, StockError<Sku>> {
                Subject::release(&self.0, id)
            }
            $($method)*
        }
    };
}

mutant!(PerLineSell {
    fn commit_partial(
        &self,
        id: ReservationId,
        lines: &[(Sku, u64)],
    ) -> Result<Reservation<Sku>, StockError<Sku>> {
        Subject::commit_partial(&self.0, id, lines)
    }
    fn restock(&self, sku: Sku, qty: u64) -> Result<StockLevel, StockError<Sku>> {
        Subject::restock(&self.0, sku, qty)
    }
    fn sell(&self, lines: &[(Sku, u64)]) -> Result<(), StockError<Sku>> {
        if lines.is_empty() {
            return Err(StockError::EmptyRequest);
        }
        lines.iter().try_for_each(|line| Subject::sell(&self.0, std::slice::from_ref(line)))
    }
});

mutant!(ClampingRestock {
    fn commit_partial(
        &self,
        id: ReservationId,
        lines: &[(Sku, u64)],
    ) -> Result<Reservation<Sku>, StockError<Sku>> {
        Subject::commit_partial(&self.0, id, lines)
    }
    fn restock(&self, sku: Sku, qty: u64) -> Result<StockLevel, StockError<Sku>> {
        let on_hand = Subject::level(&self.0, sku).map_or(0, |level| level.on_hand);
        let room = u64::MAX - on_hand;
        Subject::restock(&self.0, sku, qty.min(room).max(u64::from(room == 0)))
    }
    fn sell(&self, lines: &[(Sku, u64)]) -> Result<(), StockError<Sku>> {
        Subject::sell(&self.0, lines)
    }
});

/// A pessimistic store whose `commit_partial` commits the whole hold, whatever lines it is
/// given (the rest is sold instead of given back).
#[derive(Debug)]
struct WholeCommit(PessimisticStore<Sku>);

mutant!(WholeCommit {
    fn restock(&self, sku: Sku, qty: u64) -> Result<StockLevel, StockError<Sku>> {
        Subject::restock(&self.0, sku, qty)
    }
    fn sell(&self, lines: &[(Sku, u64)]) -> Result<(), StockError<Sku>> {
        Subject::sell(&self.0, lines)
    }
    fn commit_partial(
        &self,
        id: ReservationId,
        lines: &[(Sku, u64)],
    ) -> Result<Reservation<Sku>, StockError<Sku>> {
        let _ = lines;
        Subject::commit(&self.0, id)
    }
});

/// A quieter, shorter run for the negative controls: no regression files.
fn control_config() -> Config {
    config()
}

#[test]
fn negative_control_per_line_sell_is_caught() {
    let error = run::<PerLineSell>(control_config()).expect_err("a per-line sell must fail");
    assert!(error.contains("Sell"), "{error}");
}

#[test]
fn negative_control_whole_commit_is_caught() {
    let error = run::<WholeCommit>(control_config()).expect_err("a whole commit must fail");
    assert!(error.contains("CommitPartial"), "{error}");
}

#[test]
fn negative_control_clamping_restock_is_caught() {
    let error = run::<ClampingRestock>(control_config()).expect_err("a clamping restock must fail");
    assert!(error.contains("Restock"), "{error}");
}
