//! Bytes per SKU at 1M SKUs, and heap allocations per operation, for every store and
//! naive peer, measured with a counting global allocator.
//!
//! Run: `cargo bench --bench memory` (part of `cargo bench`); writes
//! `target/criterion/stockledger/memory.json` for `examples/bench_report.rs`.
//! Bytes are the sizes requested from the allocator (live after building, minus live
//! before); the allocator's own rounding and headers are not included.

#[allow(dead_code)] // each bench target uses a part of the shared harness
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use common::{
    AtomicVec, DashMapHolds, DashMapPeer, Ledger, MutexHashMap, MutexHashMapHolds, Sku, Store,
};

/// Live bytes requested and not yet freed.
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
/// Allocation calls (`alloc`, `alloc_zeroed`, `realloc`) so far.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting what passes through it.
struct Counting;

// Safety: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees are ours; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // Safety: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // Safety: forwarded unchanged, as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // Safety: `ptr` came from `System` with `layout` (every allocation goes through us).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // Safety: forwarded unchanged, as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// SKUs of the bytes-per-SKU measurement.
const SKUS_MEMORY: u64 = 1_000_000;
/// Operations of the allocations-per-operation measurement.
const OPS: u64 = 100_000;

/// Allocation calls per call of `op` over [`OPS`] calls.
fn allocations_per_op(mut op: impl FnMut(Sku)) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..OPS {
        op((i * 7_919) % SKUS_MEMORY);
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / OPS as f64
}

/// Measures one subject: bytes per SKU at 1M SKUs, allocations per sell, per
/// reserve+commit and per level read.
fn measure<L: Ledger>(name: &str, make: impl FnOnce() -> L) -> serde_json::Value {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let ledger = make();
    common::fill(&ledger, SKUS_MEMORY, common::UNITS_PER_SKU);
    let bytes = LIVE_BYTES.load(Ordering::Relaxed) - before;
    let sell = allocations_per_op(|sku| assert!(ledger.sell(&[(sku, 1)])));
    let reserve_commit = allocations_per_op(|sku| {
        let lines = [(sku, 1)];
        let hold = ledger.reserve(&lines).expect("stock never runs out");
        ledger.commit(hold, &lines);
    });
    let level = allocations_per_op(|sku| {
        std::hint::black_box(ledger.available(sku));
    });
    let bytes_per_sku = bytes as f64 / SKUS_MEMORY as f64;
    println!(
        "memory/{name}: {bytes_per_sku:.1} bytes per SKU at {SKUS_MEMORY} SKUs; \
         allocations per op: sell {sell:.2}, reserve+commit {reserve_commit:.2}, level {level:.2}"
    );
    json!({
        "skus": SKUS_MEMORY,
        "bytes": bytes,
        "bytes_per_sku": bytes_per_sku,
        "allocations_per_sell": sell,
        "allocations_per_reserve_commit": reserve_commit,
        "allocations_per_level": level,
    })
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return; // criterion-style listing: nothing to list
    }
    let mut results = serde_json::Map::new();
    let mut add = |name: &str, value| {
        results.insert(name.to_string(), value);
    };
    add(
        "pessimistic",
        measure(
            "pessimistic",
            || Store(stockledger::PessimisticStore::new()),
        ),
    );
    add(
        "optimistic",
        measure("optimistic", || Store(stockledger::OptimisticStore::new())),
    );
    add(
        "monitor",
        measure("monitor", || Store(stockledger::MonitorStore::new())),
    );
    add("mutex_hashmap", measure("mutex_hashmap", MutexHashMap::new));
    add("dashmap", measure("dashmap", DashMapPeer::new));
    add(
        "mutex_hashmap_holds",
        measure("mutex_hashmap_holds", MutexHashMapHolds::new),
    );
    add("dashmap_holds", measure("dashmap_holds", DashMapHolds::new));
    add(
        "ideal_vec",
        measure("ideal_vec", || AtomicVec::new(SKUS_MEMORY)),
    );
    results.insert(
        "source_revision".to_string(),
        json!(common::source_revision()),
    );
    common::write_side_file("memory", &serde_json::Value::Object(results));
}
