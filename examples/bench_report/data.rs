//! What the report reads: criterion's `new/{benchmark,estimates}.json` of the latest
//! `scenarios` run (and of the latest `redis` run for the Redis groups) and the side files
//! of the benches (`stockledger/*.json`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The scaling guard: 2 threads on independent counters must give at least this many
/// times one thread, or the multi-thread rows are not meaningful on this machine.
pub const GUARD_MIN: f64 = 1.8;

/// The stores, in table order.
pub const STORES: [&str; 4] = ["pessimistic", "optimistic", "monitor", "adaptive"];

/// The groups of `benches/redis.rs` (feature `redis`), judged by that bench's own run
/// (`stockledger/redis_run.json`), since it runs apart from `scenarios`.
pub const REDIS_GROUPS: [&str; 3] = [
    "R1_redis_sell",
    "R2_redis_reserve_commit",
    "R3_redis_cluster_sell",
];

/// The naive peers that keep open holds by id (the fair peers of reserve+commit).
pub const HOLD_PEERS: [&str; 2] = ["mutex_hashmap_holds", "dashmap_holds"];

/// Every subject in table order: stores, naive peers, hardware limits.
const ORDER: [&str; 13] = [
    "pessimistic",
    "optimistic",
    "monitor",
    "adaptive",
    "mutex_hashmap",
    "dashmap",
    "mutex_hashmap_holds",
    "dashmap_holds",
    "ideal_vec",
    "atomic_cas",
    "atomic_fetch_sub",
    "mutex_u64",
    "condvar_pingpong",
];

/// What a subject is, which decides its line style in the charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One of the crate's stores (solid line).
    Store,
    /// A naive peer a user would write instead (dashed line).
    Peer,
    /// A hardware limit, not a usable store (dotted line).
    Limit,
}

/// The kind of `subject` (a function name, with or without its `S1_`/`S3_` prefix or
/// `_sell_out` suffix).
pub fn kind(subject: &str) -> Kind {
    let base = base_name(subject);
    if STORES.contains(&base) {
        Kind::Store
    } else if base.starts_with("mutex_hashmap") || base.starts_with("dashmap") {
        Kind::Peer
    } else {
        Kind::Limit
    }
}

/// The subject of a function name: without the `S1_`/`S3_` prefix of S5 and the
/// `_sell_out` suffix of S1's sell-outs.
pub fn base_name(function: &str) -> &str {
    let name = function
        .strip_prefix("S1_")
        .or_else(|| function.strip_prefix("S3_"))
        .unwrap_or(function);
    name.strip_suffix("_sell_out").unwrap_or(name)
}

/// Table order: stores, peers, limits (S5's `S3_` functions after its `S1_` ones).
pub fn rank(name: &str) -> usize {
    let prefix = usize::from(name.starts_with("S3_")) * 100;
    let base = base_name(name);
    prefix + ORDER.iter().position(|o| *o == base).unwrap_or(50)
}

/// One criterion result.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Criterion's time per iteration (the slope of its linear fit, else the mean), ns.
    pub ns: f64,
    /// Operations per iteration (criterion's `Throughput::Elements`).
    pub elements: u64,
}

impl Measurement {
    /// Operations per second.
    pub fn ops_per_s(&self) -> f64 {
        self.elements as f64 * 1e9 / self.ns
    }

    /// Nanoseconds per operation.
    pub fn ns_per_op(&self) -> f64 {
        self.ns / self.elements as f64
    }
}

/// Everything the report reads.
#[derive(Debug, Default, Clone)]
pub struct Data {
    /// `(group, function, threads)` -> result.
    pub results: BTreeMap<(String, String, usize), Measurement>,
    /// `stockledger/scenarios_run.json`: when, where and how the scenarios ran.
    pub run: Value,
    /// `stockledger/memory.json`: bytes per SKU and allocations per operation.
    pub memory: Value,
    /// `stockledger/instructions.json`: callgrind instructions per operation.
    pub instructions: Value,
    /// `stockledger/handoff_latency.json`: S6 handoff percentiles.
    pub latency: Value,
    /// `stockledger/hot_and_cold_switches.json`: the adaptive store's switches in S7, by
    /// thread count.
    pub switches: Value,
    /// `stockledger/redis_run.json`: when, where and how the Redis bench ran (`Null`
    /// without one).
    pub redis_run: Value,
}

impl Data {
    /// Reads the criterion directory `dir`: results of the latest `scenarios` run, and of
    /// the latest `redis` run for the [`REDIS_GROUPS`].
    pub fn load(dir: &Path) -> Self {
        let side = dir.join("stockledger");
        let mut data = Data {
            run: read_json(&side.join("scenarios_run.json")),
            memory: read_json(&side.join("memory.json")),
            instructions: read_json(&side.join("instructions.json")),
            latency: read_json(&side.join("handoff_latency.json")),
            switches: read_json(&side.join("hot_and_cold_switches.json")),
            redis_run: read_json(&side.join("redis_run.json")),
            ..Data::default()
        };
        let start = |run: &Value| {
            run["started_unix_s"]
                .as_u64()
                .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        };
        let (scenarios_since, redis_since) = (start(&data.run), start(&data.redis_run));
        let since = |group: &str| {
            if REDIS_GROUPS.contains(&group) {
                redis_since
            } else {
                scenarios_since
            }
        };
        collect(dir, &since, &mut data);
        data
    }

    /// Whether the run holds results of the Redis groups.
    pub fn has_redis(&self) -> bool {
        self.results
            .keys()
            .any(|(group, _, _)| REDIS_GROUPS.contains(&group.as_str()))
    }

    /// The result of `group/function/threads`.
    pub fn get(&self, group: &str, function: &str, threads: usize) -> Option<&Measurement> {
        self.results
            .get(&(group.to_string(), function.to_string(), threads))
    }

    /// Operations per second of `group/function/threads`.
    pub fn ops(&self, group: &str, function: &str, threads: usize) -> Option<f64> {
        self.get(group, function, threads)
            .map(Measurement::ops_per_s)
    }

    /// Nanoseconds per operation of `group/function` on one thread.
    pub fn cost(&self, group: &str, function: &str) -> Option<f64> {
        self.get(group, function, 1).map(Measurement::ns_per_op)
    }

    /// Functions of `group` in table order.
    pub fn functions(&self, group: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .results
            .keys()
            .filter(|(g, _, _)| g == group)
            .map(|(_, f, _)| f.clone())
            .collect();
        names.dedup();
        names.sort_by_key(|name| (rank(name), name.clone()));
        names
    }

    /// Thread counts measured for `group/function`, ascending.
    pub fn threads(&self, group: &str, function: &str) -> Vec<usize> {
        self.results
            .keys()
            .filter(|(g, f, _)| g == group && f == function)
            .map(|(_, _, t)| *t)
            .collect()
    }

    /// Callgrind instructions per operation of `<subject>/<operation>`.
    pub fn instructions_per_op(&self, workload: &str) -> Option<f64> {
        self.instructions["workloads"][workload]["per_op"].as_f64()
    }

    /// Heap allocations per `operation` (`sell`, `reserve_commit`, `level`) of `subject`.
    pub fn allocations(&self, subject: &str, operation: &str) -> Option<f64> {
        self.memory[subject][format!("allocations_per_{operation}")].as_f64()
    }

    /// Subjects of the memory bench, in table order.
    pub fn memory_subjects(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .memory
            .as_object()
            .map(|subjects| {
                subjects
                    .iter()
                    .filter(|(_, value)| value["bytes_per_sku"].is_number())
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default();
        names.sort_by_key(|name| (rank(name), name.clone()));
        names
    }

    /// Ratio of 2 threads to 1 on the per-thread counters.
    pub fn guard(&self) -> Option<f64> {
        Some(
            self.ops("scaling_guard", "per_thread_counters", 2)?
                / self.ops("scaling_guard", "per_thread_counters", 1)?,
        )
    }

    /// Whether the scaling guard passed, so multi-thread figures compare parallel runs.
    pub fn multi_thread_meaningful(&self) -> bool {
        self.guard().is_some_and(|guard| guard >= GUARD_MIN)
    }

    /// The benchmarked commit (`-dirty` when the tree had changes), as the run recorded it.
    pub fn commit(&self) -> &str {
        self.run["source_revision"].as_str().unwrap_or("?")
    }

    /// The machine of the run: the CPU model and logical CPUs the run recorded, else this
    /// machine's (runs before the side file named them).
    pub fn machine(&self) -> String {
        let cpu = self.run["cpu"]
            .as_str()
            .map(str::to_string)
            .or_else(|| first_line_with("/proc/cpuinfo", "model name"))
            .unwrap_or_else(|| "?".into());
        let cpus = self.run["logical_cpus"].as_u64().unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(0, |cpus| cpus.get() as u64)
        });
        format!("{cpu} ({cpus} logical CPUs)")
    }
}

/// The JSON in `path`, or `Null` when it is missing or malformed.
pub fn read_json(path: &Path) -> Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null)
}

/// The value after `key:` on the first line of `path` that starts with `key`.
pub fn first_line_with(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|line| line.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// Whether `path` is criterion's `<benchmark>/new/benchmark.json`.
fn is_new_benchmark(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name == "benchmark.json")
        && path
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|name| name == "new")
}

/// Collects every `new/benchmark.json` under `dir` whose estimates were written at or
/// after `since(group)` (its run's start; every one when `None`).
fn collect(dir: &Path, since: &dyn Fn(&str) -> Option<SystemTime>, out: &mut Data) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, since, out);
            continue;
        }
        if !is_new_benchmark(&path) {
            continue;
        }
        let estimates_path = path.with_file_name("estimates.json");
        let Some((key, measurement)) = parse(&read_json(&path), &read_json(&estimates_path)) else {
            continue;
        };
        let modified = std::fs::metadata(&estimates_path).and_then(|meta| meta.modified());
        if let (Some(since), Ok(modified)) = (since(&key.0), modified) {
            if modified < since {
                continue;
            }
        }
        out.results.insert(key, measurement);
    }
}

/// One criterion result from its `benchmark.json` and `estimates.json`.
fn parse(benchmark: &Value, estimates: &Value) -> Option<((String, String, usize), Measurement)> {
    let estimate = if estimates["slope"].is_object() {
        &estimates["slope"]
    } else {
        &estimates["mean"]
    };
    let group = benchmark["group_id"].as_str()?;
    let function = benchmark["function_id"].as_str()?;
    let threads = benchmark["value_str"].as_str()?.parse().ok()?;
    let ns = estimate["point_estimate"].as_f64()?;
    let elements = benchmark["throughput"]["Elements"].as_u64()?;
    Some((
        (group.to_string(), function.to_string(), threads),
        Measurement { ns, elements },
    ))
}
