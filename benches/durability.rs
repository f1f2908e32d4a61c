//! Criterion groups of the durable in-memory store (`PessimisticStore<u64>` over 1,000 SKUs
//! drawn uniformly, 1 unit a call):
//!
//! - `D1_journal_sell`: `sell` at 1, 8 and 32 threads, with no journal (`none`), with an
//!   event sink that does nothing (`noop_sink`: what building and delivering the events
//!   costs the store, the floor of any sink), and with a `JournalSink` at
//!   `SyncPolicy::EverySec` (`everysec`: events buffered in memory, written and synced
//!   once a second) and `SyncPolicy::Always` (`always`: every call returns once its
//!   record is `fdatasync`'d, concurrent calls sharing a write and a sync);
//! - `D2_journal_reserve_commit`: `reserve` + `commit`, the same variants;
//! - `D3_snapshot`: `snapshot()` of a store of 1,000,000 SKUs (`snapshot_1m`) and
//!   `restore` of that snapshot into a new store (`restore_1m`).
//!
//! With the `redis` feature too, `D4_redis_appendfsync`: `RedisStore<u64>::sell` and
//! `reserve` + `commit` (`sell_always`, `reserve_commit_always`, `sell_everysec`,
//! `reserve_commit_everysec`) at 1, 8 and 32 threads on a `redis-server` of the bench's
//! own (from `PATH`, its directory on the same disk) with `appendonly yes` and
//! `appendfsync always` or `everysec`, one pooled connection per thread.
//!
//! Functions as above, thread count as the parameter (`<group>/<variant>/<threads>`, as in
//! `benches/scenarios.rs`). The journals live in a temporary directory under criterion's
//! output directory (the disk the target directory is on, never a tmpfs). Side file
//! `target/criterion/stockledger/durability_run.json`: the snapshot's bytes as JSON, its
//! time, and the longest a `sell` waited for the snapshot gate while a snapshot of 1M SKUs
//! was taken (the pause the store's writers see).
//!
//! Run: `cargo bench --features journal --bench durability` (about three minutes), with
//! `--features journal,redis` for the Redis rows (about two more).

#[allow(dead_code)] // each bench target uses a part of the shared harness
mod common;
#[cfg(feature = "redis")]
#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use serde_json::json;
use stockledger::{
    EventSink, JournalSink, PessimisticStore, Snapshot, StockEvent, StockStore, SyncPolicy,
};

use common::{output_dir, run_threads};

/// Client threads of the journal benchmarks (the 1, 8 and 32).
const THREADS: [usize; 3] = [1, 8, 32];
/// SKUs of the journal benchmarks.
const SKUS: u64 = 1_000;
/// SKUs of the snapshot benchmarks.
const SNAPSHOT_SKUS: u64 = 1_000_000;
/// Units of each SKU before a run: no benchmark sells out.
const UNITS_PER_SKU: u64 = 1 << 36;

/// What a store of the journal benchmarks delivers its events to.
#[derive(Debug, Clone, Copy)]
enum Variant {
    /// No sink: the store builds no event at all.
    None,
    /// A sink that does nothing: what building and delivering the events costs the store,
    /// the floor of any sink.
    Noop,
    /// A `JournalSink` with this policy.
    Journal(SyncPolicy),
}

/// The journal variants, by name.
const VARIANTS: [(&str, Variant); 4] = [
    ("none", Variant::None),
    ("noop_sink", Variant::Noop),
    ("everysec", Variant::Journal(SyncPolicy::EverySec)),
    ("always", Variant::Journal(SyncPolicy::Always)),
];

/// An [`EventSink`] that drops every event.
struct NoopSink;

impl EventSink<u64> for NoopSink {
    fn on_event(&self, event: &StockEvent<u64>) {
        std::hint::black_box(event);
    }
}

/// A stocked store of `variant`, its journal in a new directory under `root`.
fn store(
    root: &std::path::Path,
    variant: Variant,
) -> (PessimisticStore<u64>, Option<Arc<JournalSink<u64>>>) {
    let builder = PessimisticStore::builder();
    let (store, journal) = match variant {
        Variant::None => (builder.build(), None),
        Variant::Noop => (builder.event_sink(Arc::new(NoopSink)).build(), None),
        Variant::Journal(policy) => {
            let dir = tempfile::tempdir_in(root)
                .expect("a journal directory")
                .keep();
            let (journal, _) = JournalSink::<u64>::open(&dir, policy).expect("open the journal");
            (builder.event_sink(journal.clone()).build(), Some(journal))
        }
    };
    for sku in 0..SKUS {
        store.restock(&sku, UNITS_PER_SKU).expect("stock");
    }
    (store, journal)
}

/// A SKU for thread `thread`'s `i`-th call: a cheap mix, uniform enough over `SKUS`.
fn sku(thread: usize, i: u64) -> u64 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (thread as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93))
        % SKUS
}

/// The two operations of the journal groups.
#[derive(Clone, Copy)]
enum Operation {
    /// `sell` of 1 unit.
    Sell,
    /// `reserve` of 1 unit, then `commit`.
    ReserveCommit,
}

/// Benchmarks `operation` on `store` at `threads` threads as `id` in `group`.
fn bench_operation<S: StockStore<u64> + Sync>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    store: &S,
    threads: usize,
    operation: Operation,
) {
    group.throughput(Throughput::Elements(threads as u64));
    group.bench_function(id, |bencher| {
        bencher.iter_custom(|iters| {
            run_threads(threads, iters, &|thread, i| {
                let line = [(sku(thread, i), 1)];
                match operation {
                    Operation::Sell => store.sell(&line).expect("in stock"),
                    Operation::ReserveCommit => {
                        let hold = store.reserve(&line).expect("in stock");
                        store.commit(hold.id()).expect("open");
                    }
                }
            })
        });
    });
}

fn journal_groups(c: &mut Criterion, root: &std::path::Path) {
    for (group, operation) in [
        ("D1_journal_sell", Operation::Sell),
        ("D2_journal_reserve_commit", Operation::ReserveCommit),
    ] {
        let mut group = c.benchmark_group(group);
        for (name, variant) in VARIANTS {
            let (store, _journal) = store(root, variant);
            for threads in THREADS {
                let id = BenchmarkId::new(name, threads);
                bench_operation(&mut group, id, &store, threads, operation);
            }
        }
        group.finish();
    }
}

/// A store of [`SNAPSHOT_SKUS`] SKUs with snapshots on.
fn big_store() -> PessimisticStore<u64> {
    let store = PessimisticStore::builder().snapshots().build();
    for sku in 0..SNAPSHOT_SKUS {
        store.restock(&sku, 1_000).expect("stock");
    }
    store
}

/// The longest a `sell` waited while `store.snapshot()` ran on another thread, and the
/// snapshot's own time.
fn pause_seen_by_a_writer(store: &PessimisticStore<u64>) -> (Duration, Duration) {
    let stop = AtomicBool::new(false);
    let longest_ns = AtomicU64::new(0);
    let taken = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                store.sell(&[(i % SNAPSHOT_SKUS, 1)]).expect("in stock");
                let waited = began.elapsed().as_nanos() as u64;
                longest_ns.fetch_max(waited, Ordering::Relaxed);
                i += 1;
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        let began = Instant::now();
        let snapshot = store.snapshot().expect("snapshots on");
        let taken = began.elapsed();
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        drop(snapshot);
        taken
    });
    (Duration::from_nanos(longest_ns.into_inner()), taken)
}

fn snapshot_group(c: &mut Criterion) {
    let store = big_store();
    let mut group = c.benchmark_group("D3_snapshot");
    group.sample_size(10);
    group.bench_function("snapshot_1m", |bencher| {
        bencher.iter(|| store.snapshot().expect("snapshots on"));
    });
    let snapshot: Snapshot<u64> = store.snapshot().expect("snapshots on");
    group.bench_function("restore_1m", |bencher| {
        bencher.iter(|| {
            let builder = PessimisticStore::builder().restore(snapshot.clone());
            builder.expect("a valid snapshot").build()
        });
    });
    group.finish();
    let bytes = serde_json::to_vec(&snapshot).expect("encode").len();
    let pauses: Vec<(Duration, Duration)> =
        (0..5).map(|_| pause_seen_by_a_writer(&store)).collect();
    let longest = pauses
        .iter()
        .map(|(pause, _)| *pause)
        .max()
        .unwrap_or_default();
    let slowest = pauses
        .iter()
        .map(|(_, taken)| *taken)
        .max()
        .unwrap_or_default();
    println!(
        "snapshot of {SNAPSHOT_SKUS} SKUs: {bytes} bytes of JSON; over 5 snapshots under a \
         selling thread the longest sale took {:.1} ms, the slowest snapshot {:.1} ms",
        longest.as_secs_f64() * 1e3,
        slowest.as_secs_f64() * 1e3
    );
    common::write_side_file(
        "durability_run",
        &json!({
            "snapshot_skus": SNAPSHOT_SKUS,
            "snapshot_json_bytes": bytes,
            "longest_sale_during_snapshot_ms": longest.as_secs_f64() * 1e3,
            "slowest_snapshot_ms": slowest.as_secs_f64() * 1e3,
            "source": common::source_revision(),
        }),
    );
}

/// `RedisStore` on a server with an append-only file synced `always` or `everysec`.
#[cfg(feature = "redis")]
fn redis_group(c: &mut Criterion) {
    use redis_server::{Durability, RedisServer};
    use stockledger::RedisStore;

    let server = RedisServer::start(Durability::Memory);
    let client = redis::Client::open(server.url()).expect("a client");
    let mut connection = client
        .get_connection()
        .expect("the bench's redis-server answers");
    let mut group = c.benchmark_group("D4_redis_appendfsync");
    for policy in ["always", "everysec"] {
        for (name, value) in [("appendonly", "yes"), ("appendfsync", policy)] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(value)
                .query(&mut connection)
                .expect("CONFIG SET");
        }
        for threads in THREADS {
            let namespace = format!("durability-{policy}-{threads}");
            let pool = u32::try_from(threads + 1).expect("a small pool");
            let store = RedisStore::<u64>::builder(&server.url(), &namespace)
                .pool_size(pool)
                .build()
                .expect("connect to the bench's redis-server");
            for sku in 0..SKUS {
                store.restock(&sku, UNITS_PER_SKU).expect("stock");
            }
            for (name, operation) in [
                ("sell", Operation::Sell),
                ("reserve_commit", Operation::ReserveCommit),
            ] {
                let id = BenchmarkId::new(format!("{name}_{policy}"), threads);
                bench_operation(&mut group, id, &store, threads, operation);
            }
        }
    }
    group.finish();
}

fn main() {
    let root = output_dir().join("stockledger").join("journals");
    std::fs::create_dir_all(&root).expect("the journals' directory");
    let mut c = common::criterion_config().configure_from_args();
    journal_groups(&mut c, &root);
    snapshot_group(&mut c);
    #[cfg(feature = "redis")]
    redis_group(&mut c);
    c.final_summary();
    let _ = std::fs::remove_dir_all(&root);
}
