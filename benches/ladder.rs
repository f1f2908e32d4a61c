//! The flash-sale ladder: where the time of a sale on one hot SKU goes.
//!
//! It starts from the code a user would write (`Mutex<HashMap>`, one global lock) and adds
//! one thing the pessimistic store does at a time, each step a function of its own in one
//! criterion group, at 1 and 2 threads, taking turns at each thread count, so that the
//! step that costs shows as the jump between two neighbouring rows:
//!
//! | step | adds |
//! |---|---|
//! | `0_mutex_hashmap` | the peer: one `parking_lot::Mutex<HashMap<u64, u64>>` |
//! | `1_sku_lock` | a read-only SKU map (foldhash), a lock per SKU, found without a lock; the SKU's key, lock and count on one cache line, the key compared before the lock is taken (a read of the line before the lock's compare-and-swap) |
//! | `2_try_lock` | `try_lock` before `lock` on every sale, to note contention (the store's) |
//! | `3_sampled_try_lock` | instead, `try_lock` on one sale in 32 of each thread (measured, not taken: see `lock_noting_contention` in `src/sync.rs`) |
//! | `4_version` | on rung 2: the SKU's `(on_hand, reserved, version)`, the version bumped per change |
//! | `5_low_stock` | the low-stock check of the level after the change |
//! | `6_contended_tally` | a striped counter of contended locks (per-thread line) |
//! | `7_sink_check` | the event-sink check (`Option` of a sink, not taken) |
//! | `8_key_apart` | the key on a cache line apart from the lock and the counts (not taken: 64 bytes more a SKU) |
//! | `9_lock_first` | instead, the key compared after the lock is taken (the store's `GrowOnlyMap::get_claiming`) |
//! | `pessimistic` | the real `PessimisticStore::sell` |
//!
//! Steps 1-9 copy what the store does with the same crates (parking_lot, foldhash,
//! crossbeam's `CachePadded`); the last row is the store itself, so the gap between row 9
//! and it is what the ladder has not named. Each sale takes 1 unit of a SKU with unbounded
//! stock.
//!
//! Run: `cargo bench --bench ladder` (about 1 minute); read the rows of one run side by
//! side, on an otherwise idle machine.

#[allow(dead_code)] // each bench target uses a part of the shared harness
mod common;

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, MutexGuard};
use stockledger::{PessimisticStore, StockStore};

/// The one hot SKU.
const HOT: u64 = 0;
/// SKUs in the maps (the hot one among idle ones, as in S1).
const SKUS: u64 = 1;
/// Stock that never runs out within a run.
const UNITS: u64 = u64::MAX / 4;
/// Stripes of the contended-lock counter (as the store's striped counters).
const STRIPES: usize = 8;
/// One lock in this many is a contention sample (as the store's).
const SAMPLE: u32 = 32;

/// One SKU's counts, as the stores keep them.
#[derive(Default, Clone, Copy)]
struct Level {
    on_hand: u64,
    reserved: u64,
    version: u64,
}

/// A slot of the laddered store: the counts and the low-stock threshold.
#[derive(Default)]
struct Slot {
    level: Level,
    low_stock_threshold: u64,
}

/// A SKU map entry as the store's: the key and the value on one 64-byte line.
#[repr(align(64))]
struct Entry<T> {
    key: u64,
    value: T,
}

/// The SKU map of the rungs: built once, read without a lock; a lookup compares the
/// entry's key, as the store's map does.
struct Slots<T> {
    map: HashMap<u64, Entry<T>, foldhash::quality::RandomState>,
}

impl<T> Slots<T> {
    fn new(make: impl Fn() -> T) -> Self {
        let mut map = HashMap::with_hasher(foldhash::quality::RandomState::default());
        for sku in 0..SKUS {
            map.insert(
                sku,
                Entry {
                    key: sku,
                    value: make(),
                },
            );
        }
        Self { map }
    }

    #[inline]
    fn get(&self, sku: u64) -> &T {
        let entry = self.entry(sku);
        assert_eq!(std::hint::black_box(entry.key), sku);
        &entry.value
    }

    /// `sku`'s entry, its key not read (the hash table's own probe aside).
    #[inline]
    fn entry(&self, sku: u64) -> &Entry<T> {
        let hash = self.map.hasher().hash_one(sku);
        std::hint::black_box(hash);
        &self.map[&sku]
    }
}

/// What every step shares: the maps and counters of every rung (each step uses its own).
struct Ladder {
    peer: Mutex<HashMap<u64, u64>>,
    counts: Slots<Mutex<u64>>,
    slots: Slots<Mutex<Slot>>,
    apart: Slots<CachePadded<Mutex<Slot>>>,
    tally: [CachePadded<AtomicU64>; STRIPES],
    sink: Option<Box<dyn Fn(u64) + Send + Sync>>,
    store: PessimisticStore<u64>,
}

impl Ladder {
    fn new() -> Self {
        let full = || {
            Mutex::new(Slot {
                level: Level {
                    on_hand: UNITS,
                    ..Level::default()
                },
                low_stock_threshold: 0,
            })
        };
        let store = PessimisticStore::new();
        for sku in 0..SKUS {
            store.restock(&sku, UNITS).unwrap();
        }
        Self {
            peer: Mutex::new((0..SKUS).map(|sku| (sku, UNITS)).collect()),
            counts: Slots::new(|| Mutex::new(UNITS)),
            slots: Slots::new(full),
            apart: Slots::new(|| CachePadded::new(full())),
            tally: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
            sink: None,
            store,
        }
    }

    /// Locks `mutex` with a `try_lock` first; returns whether it was held.
    #[inline]
    fn try_then_lock<T>(mutex: &Mutex<T>) -> (MutexGuard<'_, T>, bool) {
        match mutex.try_lock() {
            Some(guard) => (guard, false),
            None => (mutex.lock(), true),
        }
    }

    /// Locks `mutex` with a `try_lock` first on one lock in [`SAMPLE`] of this thread;
    /// returns whether a sample found it held.
    #[inline]
    fn sampled_lock<T>(mutex: &Mutex<T>) -> (MutexGuard<'_, T>, bool) {
        std::thread_local! {
            static COUNTDOWN: Cell<u32> = const { Cell::new(0) };
        }
        let sample = COUNTDOWN.with(|countdown| {
            let left = countdown.get();
            countdown.set(if left == 0 { SAMPLE - 1 } else { left - 1 });
            left == 0
        });
        if sample {
            Self::try_then_lock(mutex)
        } else {
            (mutex.lock(), false)
        }
    }

    /// Takes 1 unit from `slot` as the stores do: check, version, low-stock test.
    #[inline]
    fn take(slot: &mut Slot, low_stock: bool) -> bool {
        let level = slot.level;
        if level.on_hand - level.reserved < 1 {
            return false;
        }
        slot.level = Level {
            on_hand: level.on_hand - 1,
            version: level.version + 1,
            ..level
        };
        if low_stock {
            let threshold = slot.low_stock_threshold;
            let (before, after) = (level.on_hand - level.reserved, slot.level.on_hand);
            std::hint::black_box(before >= threshold && after < threshold);
        }
        true
    }

    /// Steps 7 to 9: a sale on the slot `lock` locks, with everything of the store the
    /// ladder names.
    #[inline(always)]
    fn full_sale<'a>(
        &self,
        lock: impl FnOnce() -> (MutexGuard<'a, Slot>, bool),
        thread: usize,
    ) -> bool {
        let (mut slot, contended) = lock();
        let sold = Self::take(&mut slot, true);
        drop(slot);
        if contended {
            self.tally[thread % STRIPES].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sink) = &self.sink {
            sink(HOT);
        }
        sold
    }

    /// One sale of 1 unit of the hot SKU on rung `STEP` (an index of [`STEPS`]; a
    /// constant, so each rung compiles to its own code with no dispatch).
    #[inline(always)]
    fn sell<const STEP: usize>(&self, thread: usize) -> bool {
        let units = |mut units: MutexGuard<'_, u64>| {
            *units >= 1 && {
                *units -= 1;
                true
            }
        };
        match STEP {
            0 => {
                let mut map = self.peer.lock();
                match map.get_mut(&HOT) {
                    Some(units) if *units >= 1 => {
                        *units -= 1;
                        true
                    }
                    _ => false,
                }
            }
            1 => units(self.counts.get(HOT).lock()),
            2 => {
                let (guard, contended) = Self::try_then_lock(self.counts.get(HOT));
                std::hint::black_box(contended);
                units(guard)
            }
            3 => {
                let (guard, contended) = Self::sampled_lock(self.counts.get(HOT));
                std::hint::black_box(contended);
                units(guard)
            }
            4 | 5 => {
                let (mut slot, contended) = Self::try_then_lock(self.slots.get(HOT));
                std::hint::black_box(contended);
                Self::take(&mut slot, STEP == 5)
            }
            6 => {
                let (mut slot, contended) = Self::try_then_lock(self.slots.get(HOT));
                let sold = Self::take(&mut slot, true);
                drop(slot);
                if contended {
                    self.tally[thread % STRIPES].fetch_add(1, Ordering::Relaxed);
                }
                sold
            }
            7 => self.full_sale(|| Self::try_then_lock(self.slots.get(HOT)), thread),
            8 => self.full_sale(|| Self::try_then_lock(self.apart.get(HOT)), thread),
            9 => self.full_sale(
                || {
                    let entry = self.slots.entry(HOT);
                    let locked = Self::try_then_lock(&entry.value);
                    assert_eq!(std::hint::black_box(entry.key), HOT);
                    locked
                },
                thread,
            ),
            10 => self.store.sell(&[(HOT, 1)]).is_ok(),
            _ => unreachable!("no rung {STEP}"),
        }
    }
}

/// The rungs, in order.
const STEPS: [&str; 11] = [
    "0_mutex_hashmap",
    "1_sku_lock",
    "2_try_lock",
    "3_sampled_try_lock",
    "4_version",
    "5_low_stock",
    "6_contended_tally",
    "7_sink_check",
    "8_key_apart",
    "9_lock_first",
    "pessimistic",
];

/// Benchmarks rung `STEP` at `threads` threads in `group`.
fn rung<const STEP: usize>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    ladder: &Ladder,
    threads: usize,
) {
    group.bench_function(BenchmarkId::new(STEPS[STEP], threads), |bencher| {
        bencher.iter_custom(|iters| -> Duration {
            common::run_threads(threads, iters, &|thread, _| {
                std::hint::black_box(ladder.sell::<STEP>(thread));
            })
        });
    });
}

/// Every rung at 1 thread, then every rung at 2.
fn ladder(criterion: &mut Criterion) {
    let ladder = Ladder::new();
    // Every rung sells: a rung that refused would measure a refusal, not a sale.
    let sold = [
        ladder.sell::<0>(0),
        ladder.sell::<1>(0),
        ladder.sell::<2>(0),
        ladder.sell::<3>(0),
        ladder.sell::<4>(0),
        ladder.sell::<5>(0),
        ladder.sell::<6>(0),
        ladder.sell::<7>(0),
        ladder.sell::<8>(0),
        ladder.sell::<9>(0),
        ladder.sell::<10>(0),
    ];
    assert!(
        sold.iter().all(|&sold| sold),
        "a rung refused a sale: {sold:?}"
    );
    let mut group = criterion.benchmark_group("S1_ladder");
    for threads in common::THREADS {
        group.throughput(Throughput::Elements(threads as u64));
        rung::<0>(&mut group, &ladder, threads);
        rung::<1>(&mut group, &ladder, threads);
        rung::<2>(&mut group, &ladder, threads);
        rung::<3>(&mut group, &ladder, threads);
        rung::<4>(&mut group, &ladder, threads);
        rung::<5>(&mut group, &ladder, threads);
        rung::<6>(&mut group, &ladder, threads);
        rung::<7>(&mut group, &ladder, threads);
        rung::<8>(&mut group, &ladder, threads);
        rung::<9>(&mut group, &ladder, threads);
        rung::<10>(&mut group, &ladder, threads);
    }
    group.finish();
}

fn main() {
    let mut criterion = common::criterion_config().configure_from_args();
    ladder(&mut criterion);
    criterion.final_summary();
}
