//! Criterion scenarios: the four stores side by side with the naive peers and the
//! hardware limits, one group per scenario, variants as function names, thread count as
//! the parameter (`<group>/<variant>/<threads>`). Within a group the subjects take turns
//! at each thread count (see `common::ledgers`).
//!
//! Run: `cargo bench --bench scenarios` (about 10 minutes); quick mode:
//! `STOCKLEDGER_BENCH_QUICK=1 cargo bench --bench scenarios` (about 2 minutes). Then
//! `cargo run --release --example bench_report` writes `BENCHMARKS.md` and its charts
//! (`benches/charts/`).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput};
use serde_json::json;

use common::peers::{MutexCounter, PerThreadCounters};
use common::{handoff, workload, Limits, Peers, Visit, SKUS, THREADS, UNITS_PER_SKU};

/// Units of one S1 sell-out.
const SELL_OUT_UNITS: u64 = 10_000;

/// Zipf exponent of S3 (YCSB's default).
const ZIPF_EXPONENT: f64 = 0.99;

/// Benchmarks `run(threads, iters)` as `<group>/<name>/<threads>` with `elements`
/// operations per iteration.
fn bench(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    threads: usize,
    elements: u64,
    run: impl Fn(u64) -> Duration,
) {
    group.throughput(Throughput::Elements(elements));
    group.bench_function(BenchmarkId::new(name, threads), |bencher| {
        bencher.iter_custom(&run);
    });
}

/// Benchmarks every subject at each of `thread_counts` in turn (every subject at the first
/// count, then every subject at the next, ...) as `<group>/<prefix><subject>/<threads>`,
/// `threads` operations an iteration, each iteration `run(subject, threads, iters)`.
fn bench_in_turns(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    prefix: &str,
    subjects: &[(&str, Box<dyn Visit>)],
    thread_counts: &[usize],
    run: impl Fn(&dyn Visit, usize, u64) -> Duration,
) {
    for &threads in thread_counts {
        for (name, subject) in subjects {
            bench(
                group,
                &format!("{prefix}{name}"),
                threads,
                threads as u64,
                |iters| run(subject.as_ref(), threads, iters),
            );
        }
    }
}

/// Single-thread `sell` of 1 unit over 100k SKUs (uniform), and the uncontended mutex.
fn hot_sell(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("hot_sell");
    let streams = workload::uniform_skus(1, SKUS);
    for (name, subject) in common::ledgers(SKUS, UNITS_PER_SKU, Peers::Plain, Limits::IdealVec) {
        bench(&mut group, name, 1, 1, |iters| {
            subject.run_sells(1, iters, &streams)
        });
    }
    let counter = MutexCounter::new(u64::MAX);
    bench(&mut group, "mutex_u64", 1, 1, |iters| {
        common::run_threads(1, iters, &|_, _| {
            std::hint::black_box(counter.take(1));
        })
    });
    group.finish();
}

/// Single-thread `reserve` then `commit` of 1 unit over 100k SKUs (uniform).
fn hot_reserve_commit(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("hot_reserve_commit");
    let streams = workload::uniform_skus(1, SKUS);
    for (name, subject) in common::ledgers(SKUS, UNITS_PER_SKU, Peers::WithHolds, Limits::IdealVec)
    {
        bench(&mut group, name, 1, 1, |iters| {
            subject.run_reserve_commits(1, iters, &streams)
        });
    }
    group.finish();
}

/// Single-thread `reserve` with a TTL then `commit` of 1 unit over 100k SKUs (uniform),
/// the four stores: next to `hot_reserve_commit`, what a deadline adds to a hold.
fn hot_reserve_commit_ttl(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("hot_reserve_commit_ttl");
    let streams = workload::uniform_skus(1, SKUS);
    for (name, subject) in common::ttl_ledgers(SKUS, UNITS_PER_SKU) {
        bench(&mut group, name, 1, 1, |iters| {
            subject.run_reserve_commits(1, iters, &streams)
        });
    }
    group.finish();
}

/// S1 once more at the end of the run (unbounded stock only): how far one figure moves
/// within a run.
fn s1_repeat(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("S1_repeat");
    s1_unbounded(&mut group);
    group.finish();
}

/// S1's sales of 1 unit of one SKU with unbounded stock, every subject in turns at each
/// thread count, into `group`.
fn s1_unbounded(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let hot = vec![vec![0_u64]; THREADS[THREADS.len() - 1]];
    let subjects = common::ledgers(1, UNITS_PER_SKU, Peers::Plain, Limits::HotCounter);
    bench_in_turns(group, "", &subjects, &THREADS, |subject, threads, iters| {
        subject.run_sells(threads, iters, &hot)
    });
}

/// The scaling guard: per-thread padded counters share nothing, so 2 threads should give
/// about 2x one thread on an idle 2-core machine.
fn scaling_guard(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("scaling_guard");
    for threads in THREADS {
        let counters = PerThreadCounters::new(threads);
        bench(
            &mut group,
            "per_thread_counters",
            threads,
            threads as u64,
            |iters| common::run_threads(threads, iters, &|thread, _| counters.bump(thread)),
        );
    }
    group.finish();
}

/// S1 flash sale: one SKU, 1 unit a sale; unbounded stock, and sell-outs of 10k units.
fn s1_flash_sale(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("S1_flash_sale");
    s1_unbounded(&mut group);
    let mut subjects = common::ledgers(1, 0, Peers::Plain, Limits::HotCounter);
    subjects.retain(|(name, _)| *name != "atomic_fetch_sub"); // blind: it would oversell past zero
    for threads in THREADS {
        for (name, subject) in &subjects {
            let name = format!("{name}_sell_out");
            bench(&mut group, &name, threads, SELL_OUT_UNITS, |rounds| {
                subject.run_sell_out(threads, rounds, SELL_OUT_UNITS)
            });
        }
    }
    group.finish();
}

/// S2/S3: the request mix of `workload::Kind` on `streams`, at 1 and 2 threads.
fn request_mix(criterion: &mut Criterion, group_name: &str, streams: &[Vec<workload::Request>]) {
    let mut group = criterion.benchmark_group(group_name);
    let subjects = common::ledgers(SKUS, UNITS_PER_SKU, Peers::WithHolds, Limits::IdealVec);
    bench_in_turns(
        &mut group,
        "",
        &subjects,
        &THREADS,
        |subject, threads, iters| subject.run_requests(threads, iters, streams),
    );
    group.finish();
}

/// S4 TPC-C NewOrder stock: 5-15 lines, NURand items, 1-10 units, 1 % rollback.
fn s4_tpcc(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("S4_tpcc_new_order");
    let orders = workload::tpcc_orders(THREADS[THREADS.len() - 1]);
    let subjects = common::ledgers(SKUS, UNITS_PER_SKU, Peers::WithHolds, Limits::IdealVec);
    bench_in_turns(
        &mut group,
        "",
        &subjects,
        &THREADS,
        |subject, threads, iters| subject.run_orders(threads, iters, &orders),
    );
    group.finish();
}

/// S5 oversubscription: S1 (unbounded) and S3 at 4x and 16x threads per core.
fn s5_oversubscription(criterion: &mut Criterion, zipf: &[Vec<workload::Request>]) {
    let mut group = criterion.benchmark_group("S5_oversubscription");
    let oversubscribed = common::oversubscribed_threads();
    let hot = vec![vec![0_u64]; oversubscribed[1]];
    let subjects = common::ledgers(1, UNITS_PER_SKU, Peers::Plain, Limits::HotCounter);
    bench_in_turns(
        &mut group,
        "S1_",
        &subjects,
        &oversubscribed,
        |subject, threads, iters| subject.run_sells(threads, iters, &hot),
    );
    drop(subjects);
    let subjects = common::ledgers(SKUS, UNITS_PER_SKU, Peers::WithHolds, Limits::IdealVec);
    bench_in_turns(
        &mut group,
        "S3_",
        &subjects,
        &oversubscribed,
        |subject, threads, iters| subject.run_requests(threads, iters, zipf),
    );
    group.finish();
}

/// A named S6 handoff run: round trips -> wall time and latencies.
type HandoffVariant = (&'static str, fn(u64) -> handoff::Run);

/// S6 wait-queue handoff: round trips of 1 unit between two threads, through the monitor
/// store and through a bare condvar; then a fixed run for the latency percentiles.
fn s6_handoff(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("S6_wait_queue_handoff");
    let variants: [HandoffVariant; 2] = [
        ("monitor", handoff::monitor),
        ("condvar_pingpong", handoff::condvar_pingpong),
    ];
    let ran = std::cell::Cell::new(false);
    for (name, run) in variants {
        bench(&mut group, name, 2, 2, |round_trips| {
            ran.set(true);
            run(round_trips).elapsed
        });
    }
    group.finish();
    if !ran.get() {
        return; // filtered out
    }
    let round_trips = if common::quick() { 2_000 } else { 20_000 };
    let mut latency = serde_json::Map::new();
    for (name, run) in variants {
        let mut latencies = run(round_trips).latencies_ns;
        latencies.sort_unstable();
        latency.insert(
            name.to_string(),
            json!({
                "handoffs": latencies.len(),
                "p50_ns": handoff::quantile(&latencies, 0.50),
                "p99_ns": handoff::quantile(&latencies, 0.99),
                "max_ns": latencies.last(),
            }),
        );
    }
    common::write_side_file("handoff_latency", &serde_json::Value::Object(latency));
}

/// Threads of S7: the 2, 8 and 32 (4 and 16 per core on the 2-core machine).
const S7_THREADS: [usize; 3] = [2, 8, 32];

/// S7 hot and cold: 1 hot SKU taking half of the requests and 100k uniform cold SKUs,
/// every request a reserve then commit, at 2, 8 and 32 threads. Then one fixed run of the
/// adaptive store per thread count, for its switch counts (side file
/// `hot_and_cold_switches`).
fn s7_hot_and_cold(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("S7_hot_and_cold");
    let streams = workload::hot_and_cold_requests(S7_THREADS[S7_THREADS.len() - 1], SKUS);
    let ran = std::cell::Cell::new(false);
    let subjects = common::ledgers(SKUS + 1, UNITS_PER_SKU, Peers::WithHolds, Limits::IdealVec);
    bench_in_turns(
        &mut group,
        "",
        &subjects,
        &S7_THREADS,
        |subject, threads, iters| {
            ran.set(true);
            subject.run_requests(threads, iters, &streams)
        },
    );
    drop(subjects);
    group.finish();
    if !ran.get() {
        return; // filtered out
    }
    let requests_per_thread = if common::quick() { 20_000 } else { 200_000 };
    let mut switches = serde_json::Map::new();
    for threads in S7_THREADS {
        let subject = common::Subject(common::Store(stockledger::AdaptiveStore::<u64>::new()));
        common::fill(&subject.0, SKUS + 1, UNITS_PER_SKU);
        let elapsed = common::Visit::run_requests(&subject, threads, requests_per_thread, &streams);
        let stats = stockledger::StockStore::stats(&subject.0 .0);
        switches.insert(
            threads.to_string(),
            json!({
                "requests": requests_per_thread * threads as u64,
                "elapsed_ms": elapsed.as_millis(),
                "switches": stats.switches,
                "hot_skus": stats.hot_skus,
                "contended": stats.contended,
                "cas_retries": stats.cas_retries,
            }),
        );
    }
    common::write_side_file(
        "hot_and_cold_switches",
        &serde_json::Value::Object(switches),
    );
}

/// The 1-, 5- and 15-minute load averages (Linux), to show how busy the machine was.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The CPU model (Linux), named in the report's tables and chart captions.
fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|line| line.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn main() {
    let started = unix_seconds();
    let load_at_start = load_average();
    let mut criterion = common::criterion_config().configure_from_args();
    hot_sell(&mut criterion);
    hot_reserve_commit(&mut criterion);
    hot_reserve_commit_ttl(&mut criterion);
    scaling_guard(&mut criterion);
    s1_flash_sale(&mut criterion);
    let uniform = workload::uniform_requests(THREADS[THREADS.len() - 1], SKUS);
    request_mix(&mut criterion, "S2_uniform", &uniform);
    let zipf_threads = common::oversubscribed_threads()[1];
    let zipf = workload::zipf_requests(zipf_threads, SKUS, ZIPF_EXPONENT);
    request_mix(&mut criterion, "S3_zipf", &zipf);
    s4_tpcc(&mut criterion);
    s5_oversubscription(&mut criterion, &zipf);
    s6_handoff(&mut criterion);
    s7_hot_and_cold(&mut criterion);
    s1_repeat(&mut criterion);
    criterion.final_summary();
    common::write_side_file(
        "scenarios_run",
        &json!({
            "started_unix_s": started,
            "finished_unix_s": unix_seconds(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": load_average(),
            "quick": common::quick(),
            "source_revision": common::source_revision(),
            "args": std::env::args().skip(1).collect::<Vec<_>>(),
            "oversubscribed_threads": common::oversubscribed_threads(),
            "cpu": cpu_model(),
            "logical_cpus": std::thread::available_parallelism().map_or(0, |cpus| cpus.get()),
            "refusals": common::REFUSALS.load(Ordering::Relaxed),
        }),
    );
}
