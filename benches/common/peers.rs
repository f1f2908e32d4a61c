//! The naive peers (what a user writes instead of a store) and the hardware limits.
//!
//! The plain peers ([`MutexHashMap`], [`DashMapPeer`]) keep only the available units of a
//! SKU (`u64`): a hold is the caller's copy of its lines, `commit` is a no-op and `release`
//! adds the units back. The hold peers ([`MutexHashMapHolds`], [`DashMapHolds`]) keep what a
//! user who needs holds writes by hand: on hand and reserved per SKU and a map of open holds
//! (id -> lines), so a hold is resolved by its id like a store's. None of them implements
//! `StockStore`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use parking_lot::Mutex;

use super::{Ledger, Sku};

/// Naive peer 1: one `parking_lot::Mutex` around a `HashMap<SKU, available units>`.
/// A multi-line request checks and writes every line under the one lock.
#[derive(Debug, Default)]
pub struct MutexHashMap(Mutex<HashMap<Sku, u64>>);

impl MutexHashMap {
    /// An empty peer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Ledger for MutexHashMap {
    type Hold = ();

    fn restock(&self, sku: Sku, units: u64) {
        *self.0.lock().entry(sku).or_insert(0) += units;
    }

    fn available(&self, sku: Sku) -> Option<u64> {
        self.0.lock().get(&sku).copied()
    }

    fn sell(&self, lines: &[(Sku, u64)]) -> bool {
        self.reserve(lines).is_some()
    }

    fn reserve(&self, lines: &[(Sku, u64)]) -> Option<()> {
        let mut map = self.0.lock();
        // Duplicate SKUs are checked against their sum by checking in place as we go and
        // undoing on a refusal.
        for (done, (sku, units)) in lines.iter().enumerate() {
            match map.get_mut(sku) {
                Some(available) if *available >= *units => *available -= units,
                _ => {
                    for (sku, units) in &lines[..done] {
                        *map.get_mut(sku).expect("taken above") += units;
                    }
                    return None;
                }
            }
        }
        Some(())
    }

    fn commit(&self, _hold: (), _lines: &[(Sku, u64)]) {}

    fn release(&self, _hold: (), lines: &[(Sku, u64)]) {
        let mut map = self.0.lock();
        for (sku, units) in lines {
            *map.get_mut(sku).expect("a held SKU exists") += units;
        }
    }
}

/// Naive peer 2: a `DashMap<SKU, available units>`, `get_mut` with a check. A multi-line
/// request takes one line at a time (holding two shard guards can self-deadlock) and
/// gives the earlier lines back when a later one is refused.
#[derive(Debug, Default)]
pub struct DashMapPeer(DashMap<Sku, u64>);

impl DashMapPeer {
    /// An empty peer.
    pub fn new() -> Self {
        Self::default()
    }

    fn take(&self, sku: Sku, units: u64) -> bool {
        match self.0.get_mut(&sku) {
            Some(mut available) if *available >= units => {
                *available -= units;
                true
            }
            _ => false,
        }
    }

    fn give_back(&self, lines: &[(Sku, u64)]) {
        for (sku, units) in lines {
            *self.0.get_mut(sku).expect("a held SKU exists") += units;
        }
    }
}

impl Ledger for DashMapPeer {
    type Hold = ();

    fn restock(&self, sku: Sku, units: u64) {
        *self.0.entry(sku).or_insert(0) += units;
    }

    fn available(&self, sku: Sku) -> Option<u64> {
        self.0.get(&sku).map(|available| *available)
    }

    fn sell(&self, lines: &[(Sku, u64)]) -> bool {
        self.reserve(lines).is_some()
    }

    fn reserve(&self, lines: &[(Sku, u64)]) -> Option<()> {
        for (done, (sku, units)) in lines.iter().enumerate() {
            if !self.take(*sku, *units) {
                self.give_back(&lines[..done]);
                return None;
            }
        }
        Some(())
    }

    fn commit(&self, _hold: (), _lines: &[(Sku, u64)]) {}

    fn release(&self, _hold: (), lines: &[(Sku, u64)]) {
        self.give_back(lines);
    }
}

/// The ideal ledger (a hardware limit, not a usable store): `Vec<CachePadded<AtomicU64>>`
/// indexed by SKU number, a checked CAS per line, no map, no registry, no versions.
#[derive(Debug)]
pub struct AtomicVec(Vec<CachePadded<AtomicU64>>);

impl AtomicVec {
    /// `skus` SKUs numbered `0..skus`, each with 0 units.
    pub fn new(skus: u64) -> Self {
        Self(
            (0..skus)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        )
    }

    fn take(&self, sku: Sku, units: u64) -> bool {
        checked_take(&self.0[sku as usize], units)
    }
}

impl Ledger for AtomicVec {
    type Hold = ();

    fn restock(&self, sku: Sku, units: u64) {
        self.0[sku as usize].fetch_add(units, Ordering::AcqRel);
    }

    fn available(&self, sku: Sku) -> Option<u64> {
        self.0
            .get(sku as usize)
            .map(|units| units.load(Ordering::Acquire))
    }

    fn sell(&self, lines: &[(Sku, u64)]) -> bool {
        self.reserve(lines).is_some()
    }

    fn reserve(&self, lines: &[(Sku, u64)]) -> Option<()> {
        for (done, (sku, units)) in lines.iter().enumerate() {
            if !self.take(*sku, *units) {
                self.release((), &lines[..done]);
                return None;
            }
        }
        Some(())
    }

    fn commit(&self, _hold: (), _lines: &[(Sku, u64)]) {}

    fn release(&self, _hold: (), lines: &[(Sku, u64)]) {
        for (sku, units) in lines {
            self.0[*sku as usize].fetch_add(*units, Ordering::AcqRel);
        }
    }
}

/// A checked decrement: a CAS loop that never takes `units` it does not see.
#[inline]
pub fn checked_take(available: &AtomicU64, units: u64) -> bool {
    let mut current = available.load(Ordering::Acquire);
    loop {
        if current < units {
            return false;
        }
        match available.compare_exchange_weak(
            current,
            current - units,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return true,
            Err(actual) => current = actual,
        }
    }
}

/// The hot-SKU limits of S1: one cache-padded counter of available units for SKU 0.
/// `BLIND` is the blind `fetch_sub` (the ceiling of one SKU: no check, it could
/// oversell); otherwise a checked CAS loop (the cheapest sale that never oversells).
#[derive(Debug, Default)]
pub struct HotCounter<const BLIND: bool>(CachePadded<AtomicU64>);

impl<const BLIND: bool> HotCounter<BLIND> {
    /// A counter with 0 units.
    pub fn new() -> Self {
        Self(CachePadded::new(AtomicU64::new(0)))
    }

    #[inline]
    fn take(&self, units: u64) -> bool {
        if BLIND {
            self.0.fetch_sub(units, Ordering::AcqRel) >= units
        } else {
            checked_take(&self.0, units)
        }
    }
}

impl<const BLIND: bool> Ledger for HotCounter<BLIND> {
    type Hold = ();

    fn restock(&self, sku: Sku, units: u64) {
        assert_eq!(sku, 0, "a hot counter has one SKU");
        self.0.fetch_add(units, Ordering::AcqRel);
    }

    fn available(&self, _sku: Sku) -> Option<u64> {
        Some(self.0.load(Ordering::Acquire))
    }

    fn sell(&self, lines: &[(Sku, u64)]) -> bool {
        self.reserve(lines).is_some()
    }

    fn reserve(&self, lines: &[(Sku, u64)]) -> Option<()> {
        match lines {
            [(_, units)] => self.take(*units).then_some(()),
            _ => unimplemented!("a hot counter takes one line"),
        }
    }

    fn commit(&self, _hold: (), _lines: &[(Sku, u64)]) {}

    fn release(&self, _hold: (), lines: &[(Sku, u64)]) {
        for (_, units) in lines {
            self.0.fetch_add(*units, Ordering::AcqRel);
        }
    }
}

/// The scaling guard: one cache-padded counter per thread, so threads share nothing.
#[derive(Debug)]
pub struct PerThreadCounters(Vec<CachePadded<AtomicU64>>);

impl PerThreadCounters {
    /// Counters for `threads` threads.
    pub fn new(threads: usize) -> Self {
        Self(
            (0..threads)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        )
    }

    /// Counts one operation of `thread`.
    #[inline]
    pub fn bump(&self, thread: usize) {
        self.0[thread].fetch_add(1, Ordering::Relaxed);
    }
}

/// An uncontended `parking_lot::Mutex<u64>`: the cost of lock, check, decrement, unlock
/// with no map lookup.
#[derive(Debug)]
pub struct MutexCounter(CachePadded<Mutex<u64>>);

impl MutexCounter {
    /// A counter holding `units`.
    pub fn new(units: u64) -> Self {
        Self(CachePadded::new(Mutex::new(units)))
    }

    /// Takes `units` when at least that many are left.
    #[inline]
    pub fn take(&self, units: u64) -> bool {
        let mut available = self.0.lock();
        if *available >= units {
            *available -= units;
            true
        } else {
            false
        }
    }
}

/// One step of [`all_or_nothing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Take the line's units; `false` when refused.
    Take,
    /// Give back units taken before (always succeeds).
    GiveBack,
}

/// Takes every line in order with `apply(sku, units, Step::Take)`; when one is refused,
/// gives the earlier ones back with [`Step::GiveBack`] and returns `false` (all or nothing,
/// one line at a time).
#[inline]
fn all_or_nothing(lines: &[(Sku, u64)], mut apply: impl FnMut(Sku, u64, Step) -> bool) -> bool {
    for (done, (sku, units)) in lines.iter().enumerate() {
        if !apply(*sku, *units, Step::Take) {
            for (sku, units) in &lines[..done] {
                apply(*sku, *units, Step::GiveBack);
            }
            return false;
        }
    }
    true
}

/// One SKU's counts in a hold peer: units in stock and units held by open holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Units in stock, held ones included.
    pub on_hand: u64,
    /// Units held by open holds (`reserved <= on_hand`).
    pub reserved: u64,
}

impl Counts {
    /// Units a new hold or sale may take.
    #[inline]
    pub fn available(&self) -> u64 {
        self.on_hand - self.reserved
    }

    /// Holds `units` when that many are available.
    #[inline]
    fn hold(&mut self, units: u64) -> bool {
        let enough = self.available() >= units;
        if enough {
            self.reserved += units;
        }
        enough
    }

    /// Sells `units` when that many are available.
    #[inline]
    fn sell(&mut self, units: u64) -> bool {
        let enough = self.available() >= units;
        if enough {
            self.on_hand -= units;
        }
        enough
    }

    /// Turns `units` held into a sale.
    #[inline]
    fn commit(&mut self, units: u64) {
        self.reserved -= units;
        self.on_hand -= units;
    }
}

/// The books of [`MutexHashMapHolds`], all behind its one mutex.
#[derive(Debug, Default)]
struct Books {
    /// Counts per SKU.
    levels: HashMap<Sku, Counts>,
    /// Open holds: id -> the lines it holds.
    holds: HashMap<u64, Vec<(Sku, u64)>>,
    /// The id of the next hold.
    next_hold: u64,
}

/// Hold peer 1: what a user who needs holds writes first: one `parking_lot::Mutex` over a
/// `HashMap` of levels (on hand, reserved) and a `HashMap` of open holds (id -> lines).
/// `reserve` checks and holds every line and inserts the hold; `commit` and `release`
/// remove the hold and move its stock, all under the one lock.
#[derive(Debug, Default)]
pub struct MutexHashMapHolds(Mutex<Books>);

impl MutexHashMapHolds {
    /// An empty peer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Ledger for MutexHashMapHolds {
    type Hold = u64;

    fn restock(&self, sku: Sku, units: u64) {
        self.0.lock().levels.entry(sku).or_default().on_hand += units;
    }

    fn available(&self, sku: Sku) -> Option<u64> {
        self.0.lock().levels.get(&sku).map(Counts::available)
    }

    fn sell(&self, lines: &[(Sku, u64)]) -> bool {
        let levels = &mut self.0.lock().levels;
        all_or_nothing(lines, |sku, units, step| {
            let counts = levels.get_mut(&sku);
            match step {
                Step::Take => counts.is_some_and(|counts| counts.sell(units)),
                Step::GiveBack => counts.map(|counts| counts.on_hand += units).is_some(),
            }
        })
    }

    fn reserve(&self, lines: &[(Sku, u64)]) -> Option<u64> {
        let mut books = self.0.lock();
        let held = all_or_nothing(lines, |sku, units, step| {
            let counts = books.levels.get_mut(&sku);
            match step {
                Step::Take => counts.is_some_and(|counts| counts.hold(units)),
                Step::GiveBack => counts.map(|counts| counts.reserved -= units).is_some(),
            }
        });
        if !held {
            return None;
        }
        let hold = books.next_hold;
        books.next_hold += 1;
        books.holds.insert(hold, lines.to_vec());
        Some(hold)
    }

    fn commit(&self, hold: u64, _lines: &[(Sku, u64)]) {
        let mut books = self.0.lock();
        let lines = books.holds.remove(&hold).expect("commit an open hold");
        for (sku, units) in lines {
            books
                .levels
                .get_mut(&sku)
                .expect("a held SKU")
                .commit(units);
        }
    }

    fn release(&self, hold: u64, _lines: &[(Sku, u64)]) {
        let mut books = self.0.lock();
        let lines = books.holds.remove(&hold).expect("release an open hold");
        for (sku, units) in lines {
            books.levels.get_mut(&sku).expect("a held SKU").reserved -= units;
        }
    }
}

/// Hold peer 2: [`MutexHashMapHolds`] on two DashMaps (levels, open holds) and an atomic
/// hold counter. A multi-line request takes one line at a time (holding two shard guards
/// can self-deadlock) and gives the earlier lines back when a later one is refused; the
/// hold is inserted once every line is held, and `commit`/`release` remove it first, so a
/// hold resolves once.
#[derive(Debug, Default)]
pub struct DashMapHolds {
    levels: DashMap<Sku, Counts>,
    holds: DashMap<u64, Vec<(Sku, u64)>>,
    next_hold: AtomicU64,
}

impl DashMapHolds {
    /// An empty peer.
    pub fn new() -> Self {
        Self::default()
    }

    fn update(&self, sku: Sku, change: impl FnOnce(&mut Counts) -> bool) -> bool {
        self.levels
            .get_mut(&sku)
            .is_some_and(|mut counts| change(&mut counts))
    }

    /// Removes the open hold `hold` and applies `change` to each of its lines.
    fn resolve(&self, hold: u64, change: impl Fn(&mut Counts, u64)) {
        let (_, lines) = self.holds.remove(&hold).expect("resolve an open hold");
        for (sku, units) in lines {
            let resolved = self.update(sku, |counts| {
                change(counts, units);
                true
            });
            assert!(resolved, "a held SKU exists");
        }
    }
}

impl Ledger for DashMapHolds {
    type Hold = u64;

    fn restock(&self, sku: Sku, units: u64) {
        self.levels.entry(sku).or_default().on_hand += units;
    }

    fn available(&self, sku: Sku) -> Option<u64> {
        self.levels.get(&sku).map(|counts| counts.available())
    }

    fn sell(&self, lines: &[(Sku, u64)]) -> bool {
        all_or_nothing(lines, |sku, units, step| {
            self.update(sku, |counts| match step {
                Step::Take => counts.sell(units),
                Step::GiveBack => {
                    counts.on_hand += units;
                    true
                }
            })
        })
    }

    fn reserve(&self, lines: &[(Sku, u64)]) -> Option<u64> {
        let held = all_or_nothing(lines, |sku, units, step| {
            self.update(sku, |counts| match step {
                Step::Take => counts.hold(units),
                Step::GiveBack => {
                    counts.reserved -= units;
                    true
                }
            })
        });
        if !held {
            return None;
        }
        let hold = self.next_hold.fetch_add(1, Ordering::Relaxed);
        self.holds.insert(hold, lines.to_vec());
        Some(hold)
    }

    fn commit(&self, hold: u64, _lines: &[(Sku, u64)]) {
        self.resolve(hold, |counts, units| counts.commit(units));
    }

    fn release(&self, hold: u64, _lines: &[(Sku, u64)]) {
        self.resolve(hold, |counts, units| counts.reserved -= units);
    }
}
