//! The naive peers (what a user writes instead of a store) and the hardware limits.
//!
//! Peers keep only the available units of a SKU (`u64`): a hold is the caller's copy of
//! its lines, `commit` is a no-op and `release` adds the units back. None of them
//! implements `StockStore`.

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
