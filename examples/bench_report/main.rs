//! Turns the output of `cargo bench` into `BENCHMARKS.md`.
//!
//! Reads `target/criterion/**/new/{benchmark,estimates}.json` (criterion) and the side
//! files of the benches in `target/criterion/stockledger/` (run metadata, bytes per SKU,
//! allocations and callgrind instructions per operation, handoff latency percentiles),
//! then writes one table per scenario with operations per second and the ratio to each
//! naive peer and hardware limit measured in the same run, the scaling guard, and the
//! targets of issue 5 with met / missed and why.
//!
//! ```text
//! cargo bench                                   # or STOCKLEDGER_BENCH_QUICK=1 cargo bench
//! cargo run --release --example bench_report -- [--criterion-dir DIR] [--out FILE] [--note TEXT]
//! ```
//!
//! Only results written by the latest `scenarios` run are used (older files in the
//! criterion directory are ignored), so every ratio compares numbers of one run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The scaling guard: 2 threads on independent counters must give at least this many
/// times one thread, or the multi-thread rows are not meaningful on this machine.
const GUARD_MIN: f64 = 1.8;

/// The stores, in table order.
const STORES: [&str; 3] = ["pessimistic", "optimistic", "monitor"];

/// One criterion result.
#[derive(Debug, Clone)]
struct Measurement {
    /// Criterion's time per iteration (the slope of its linear fit, else the mean), ns.
    ns: f64,
    /// Operations per iteration (criterion's `Throughput::Elements`).
    elements: u64,
}

impl Measurement {
    fn ops_per_s(&self) -> f64 {
        self.elements as f64 * 1e9 / self.ns
    }

    fn ns_per_op(&self) -> f64 {
        self.ns / self.elements as f64
    }
}

/// Everything the report reads.
#[derive(Debug, Default)]
struct Data {
    /// `(group, function, threads)` -> result.
    results: BTreeMap<(String, String, usize), Measurement>,
    run: Value,
    memory: Value,
    instructions: Value,
    latency: Value,
}

impl Data {
    fn get(&self, group: &str, function: &str, threads: usize) -> Option<&Measurement> {
        self.results
            .get(&(group.to_string(), function.to_string(), threads))
    }

    fn ops(&self, group: &str, function: &str, threads: usize) -> Option<f64> {
        self.get(group, function, threads)
            .map(Measurement::ops_per_s)
    }

    /// Functions of `group` in first-seen order of `order`, then the rest sorted.
    fn functions(&self, group: &str) -> Vec<String> {
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

    fn threads(&self, group: &str, function: &str) -> Vec<usize> {
        self.results
            .keys()
            .filter(|(g, f, _)| g == group && f == function)
            .map(|(_, _, t)| *t)
            .collect()
    }

    fn instructions_per_op(&self, workload: &str) -> Option<f64> {
        self.instructions["workloads"][workload]["per_op"].as_f64()
    }

    fn allocations(&self, subject: &str, operation: &str) -> Option<f64> {
        self.memory[subject][format!("allocations_per_{operation}")].as_f64()
    }

    /// Ratio of 2 threads to 1 on the per-thread counters.
    fn guard(&self) -> Option<f64> {
        Some(
            self.ops("scaling_guard", "per_thread_counters", 2)?
                / self.ops("scaling_guard", "per_thread_counters", 1)?,
        )
    }

    fn multi_thread_meaningful(&self) -> bool {
        self.guard().is_some_and(|guard| guard >= GUARD_MIN)
    }
}

/// Table order: stores, peers, limits.
fn rank(name: &str) -> usize {
    let base = name
        .trim_start_matches("S1_")
        .trim_start_matches("S3_")
        .trim_end_matches("_sell_out");
    let order = [
        "pessimistic",
        "optimistic",
        "monitor",
        "mutex_hashmap",
        "dashmap",
        "ideal_vec",
        "atomic_cas",
        "atomic_fetch_sub",
        "mutex_u64",
        "condvar_pingpong",
    ];
    let prefix = usize::from(name.starts_with("S3_")) * 100;
    prefix + order.iter().position(|o| *o == base).unwrap_or(50)
}

fn read_json(path: &Path) -> Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null)
}

/// Collects every `new/benchmark.json` under `dir` written at or after `since`.
fn collect(dir: &Path, since: Option<SystemTime>, out: &mut Data) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, since, out);
            continue;
        }
        if path.file_name().is_none_or(|name| name != "benchmark.json")
            || path
                .parent()
                .and_then(Path::file_name)
                .is_none_or(|name| name != "new")
        {
            continue;
        }
        let estimates_path = path.with_file_name("estimates.json");
        let modified = std::fs::metadata(&estimates_path).and_then(|meta| meta.modified());
        if let (Some(since), Ok(modified)) = (since, modified) {
            if modified < since {
                continue;
            }
        }
        let benchmark = read_json(&path);
        let estimates = read_json(&estimates_path);
        let estimate = if estimates["slope"].is_object() {
            &estimates["slope"]
        } else {
            &estimates["mean"]
        };
        let (Some(group), Some(function), Some(threads), Some(ns), Some(elements)) = (
            benchmark["group_id"].as_str(),
            benchmark["function_id"].as_str(),
            benchmark["value_str"]
                .as_str()
                .and_then(|value| value.parse().ok()),
            estimate["point_estimate"].as_f64(),
            benchmark["throughput"]["Elements"].as_u64(),
        ) else {
            continue;
        };
        out.results.insert(
            (group.to_string(), function.to_string(), threads),
            Measurement { ns, elements },
        );
    }
}

fn rate(ops_per_s: f64) -> String {
    match ops_per_s {
        r if r >= 1e9 => format!("{:.2} G", r / 1e9),
        r if r >= 1e6 => format!("{:.2} M", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k", r / 1e3),
        r => format!("{r:.0}"),
    }
}

fn duration_ns(ns: f64) -> String {
    match ns {
        ns if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.2} µs", ns / 1e3),
        ns => format!("{ns:.1} ns"),
    }
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_string(), |value| format!("{value:.2}×"))
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_string(), |value| format!("{value:.decimals$}"))
}

fn divide(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?)
}

/// Civil date (UTC) of a Unix time, `YYYY-MM-DD HH:MM UTC` (Howard Hinnant's algorithm).
fn utc(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let seconds = unix_s % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        seconds / 3_600,
        seconds % 3_600 / 60
    )
}

fn first_line_with(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|line| line.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The machine and run section.
fn machine(data: &Data, note: Option<&str>, report: &mut String) {
    let cpu = first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |cores| cores.get());
    let memory = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|total| total.trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or_else(|| "?".into(), |kib| format!("{:.1} GiB", kib / 1_048_576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |text| text.trim().to_string());
    let rustc = command_output("rustc", &["-V"]).unwrap_or_else(|| "?".into());
    let run = &data.run;
    let quick = run["quick"].as_bool().unwrap_or(false);
    let command = if quick {
        "STOCKLEDGER_BENCH_QUICK=1 cargo bench"
    } else {
        "cargo bench"
    };
    let args = run["args"]
        .as_array()
        .map(|args| {
            args.iter()
                .filter_map(Value::as_str)
                .filter(|arg| *arg != "--bench")
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let started = run["started_unix_s"].as_u64();
    let finished = run["finished_unix_s"].as_u64();
    let _ = writeln!(report, "## Machine and run\n");
    let _ = writeln!(report, "| | |\n|---|---|");
    let _ = writeln!(report, "| CPU | {cpu} ({cores} logical CPUs visible) |");
    let _ = writeln!(report, "| memory | {memory} |");
    let _ = writeln!(report, "| OS | Linux {kernel} |");
    let _ = writeln!(
        report,
        "| compiler | {rustc}, `bench` profile (release, debug = 1) |"
    );
    let extra = if args.is_empty() {
        String::new()
    } else {
        format!(" (bench arguments: `{args}`)")
    };
    let _ = writeln!(report, "| command | `{command}`{extra} |");
    let mode = if quick {
        "quick (0.1 s warm-up, 0.3 s measurement, 10 samples a benchmark)"
    } else {
        "full (1 s warm-up, 3 s measurement, 20 samples a benchmark)"
    };
    let _ = writeln!(report, "| mode | {mode} |");
    if let (Some(started), Some(finished)) = (started, finished) {
        let _ = writeln!(
            report,
            "| run | {} – {} ({} s for the scenarios) |",
            utc(started),
            utc(finished),
            finished.saturating_sub(started)
        );
    }
    let _ = writeln!(
        report,
        "| load average (1, 5, 15 min) | at start {}, at end {} |",
        run["load_average_at_start"].as_str().unwrap_or("?"),
        run["load_average_at_end"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        report,
        "| source | {} |",
        run["source_revision"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        report,
        "| refused requests | {} (optimistic `Conflict`s in runs where stock never runs out) |",
        run["refusals"]
            .as_u64()
            .map_or("?".into(), |n| n.to_string())
    );
    if let Some(note) = note {
        let _ = writeln!(report, "\n**Note:** {note}");
    }
    let _ = writeln!(report);
}

/// The scaling-guard section; returns whether multi-thread rows are meaningful.
fn guard_section(data: &Data, report: &mut String) {
    let _ = writeln!(report, "## Scaling guard\n");
    let one = data.ops("scaling_guard", "per_thread_counters", 1);
    let two = data.ops("scaling_guard", "per_thread_counters", 2);
    let _ = writeln!(
        report,
        "Per-thread cache-padded counters share nothing, so 2 threads should give about 2× one \
         thread. 1 thread: {} ops/s; 2 threads: {} ops/s; ratio **{}** (needs ≥ {GUARD_MIN}×).\n",
        one.map_or("–".into(), rate),
        two.map_or("–".into(), rate),
        ratio(data.guard())
    );
    if data.multi_thread_meaningful() {
        let _ = writeln!(
            report,
            "The guard passes: multi-thread rows below compare real parallel runs.\n"
        );
    } else {
        let _ = writeln!(
            report,
            "**The guard fails: every multi-thread row (2 threads and more, marked †) is not \
             meaningful on this machine** (the threads did not run in parallel; other \
             processes held the cores). Their numbers are printed for completeness only; the \
             single-thread rows, the instruction counts and the memory figures stand.\n"
        );
    }
}

/// The reference columns of a scenario table: (column title, function to divide by).
type References<'a> = &'a [(&'a str, &'a str)];

/// A scenario table: every function and thread count of `group`, with ops/s, time per
/// operation, each reference ratio at the same thread count and the scaling vs 1 thread.
fn scenario_table(
    data: &Data,
    group: &str,
    filter: impl Fn(&str) -> bool,
    references: References<'_>,
    unit: &str,
    report: &mut String,
) {
    let mut header = format!("| variant | threads | {unit}/s | time/{unit} |");
    let mut rule = "|---|---:|---:|---:|".to_string();
    for (title, _) in references {
        let _ = write!(header, " × {title} |");
        rule.push_str("---:|");
    }
    header.push_str(if group == "S5_oversubscription" {
        " × itself at 2 threads |"
    } else {
        " × itself at 1 thread |"
    });
    rule.push_str("---:|");
    let _ = writeln!(report, "{header}\n{rule}");
    let meaningful = data.multi_thread_meaningful();
    for function in data.functions(group).iter().filter(|f| filter(f)) {
        for threads in data.threads(group, function) {
            let Some(measurement) = data.get(group, function, threads) else {
                continue;
            };
            let ops = measurement.ops_per_s();
            let mark = if threads > 1 && !meaningful {
                " †"
            } else {
                ""
            };
            let _ = write!(
                report,
                "| {function} | {threads}{mark} | {} | {} |",
                rate(ops),
                duration_ns(measurement.ns_per_op())
            );
            let suffix = function
                .strip_prefix("S1_")
                .or_else(|| function.strip_prefix("S3_"))
                .map(|_| &function[..3])
                .unwrap_or("");
            let sell_out = function.ends_with("_sell_out");
            for (_, reference) in references {
                let reference = format!(
                    "{suffix}{reference}{}",
                    if sell_out { "_sell_out" } else { "" }
                );
                let value = divide(Some(ops), data.ops(group, &reference, threads));
                let _ = write!(report, " {} |", ratio(value));
            }
            let own = match function.split_once('_') {
                Some(("S1", store)) if group == "S5_oversubscription" => {
                    divide(Some(ops), data.ops("S1_flash_sale", store, 2))
                }
                Some(("S3", store)) if group == "S5_oversubscription" => {
                    divide(Some(ops), data.ops("S3_zipf", store, 2))
                }
                _ if threads == 1 => None,
                _ => divide(Some(ops), data.ops(group, function, 1)),
            };
            let _ = writeln!(report, " {} |", ratio(own));
        }
    }
    let _ = writeln!(report);
}

/// Single-thread hot path: time and callgrind instructions and allocations per op.
fn hot_table(data: &Data, group: &str, operation: &str, report: &mut String) {
    let _ = writeln!(
        report,
        "| variant | time/op | ops/s | cost × dashmap | cost × mutex_hashmap | instructions/op \
         (callgrind) | instructions × dashmap | heap allocations/op |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let reference = |peer: &str| data.get(group, peer, 1).map(Measurement::ns_per_op);
    let instructions_of = |subject: &str| {
        let workload = if subject == "mutex_u64" {
            "mutex_u64/sell".to_string()
        } else {
            format!("{subject}/{operation}")
        };
        data.instructions_per_op(&workload)
    };
    for function in data.functions(group) {
        let Some(measurement) = data.get(group, &function, 1) else {
            continue;
        };
        let ns = measurement.ns_per_op();
        let instructions = instructions_of(&function);
        let _ = writeln!(
            report,
            "| {function} | {} | {} | {} | {} | {} | {} | {} |",
            duration_ns(ns),
            rate(measurement.ops_per_s()),
            ratio(divide(Some(ns), reference("dashmap"))),
            ratio(divide(Some(ns), reference("mutex_hashmap"))),
            number(instructions, 0),
            ratio(divide(instructions, instructions_of("dashmap"))),
            number(data.allocations(&function, operation), 2),
        );
    }
    let _ = writeln!(report);
}

fn s6_table(data: &Data, report: &mut String) {
    let _ = writeln!(
        report,
        "| variant | round trip (criterion) | handoffs | p50 handoff | p99 handoff | max | \
         p50 × condvar_pingpong |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|---:|---:|");
    let base = data.latency["condvar_pingpong"]["p50_ns"].as_f64();
    for name in ["monitor", "condvar_pingpong"] {
        let latency = &data.latency[name];
        let round_trip = data
            .get("S6_wait_queue_handoff", name, 2)
            .map_or("–".into(), |m| duration_ns(m.ns));
        let _ = writeln!(
            report,
            "| {name} | {round_trip} | {} | {} | {} | {} | {} |",
            latency["handoffs"]
                .as_u64()
                .map_or("–".into(), |n| n.to_string()),
            latency["p50_ns"].as_f64().map_or("–".into(), duration_ns),
            latency["p99_ns"].as_f64().map_or("–".into(), duration_ns),
            latency["max_ns"].as_f64().map_or("–".into(), duration_ns),
            ratio(divide(latency["p50_ns"].as_f64(), base)),
        );
    }
    let _ = writeln!(report);
}

fn memory_table(data: &Data, report: &mut String) {
    let skus = data.memory["pessimistic"]["skus"].as_u64().unwrap_or(0);
    let _ = writeln!(
        report,
        "Bytes requested from the allocator and still live after restocking {skus} SKUs \
         (`u64` keys), divided by {skus}; the allocator's own headers and rounding are not \
         included. Allocations per operation over 100k single-line operations.\n"
    );
    let _ = writeln!(
        report,
        "| subject | bytes/SKU | allocations/sell | allocations/reserve+commit | allocations/level |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|");
    for name in [
        "pessimistic",
        "optimistic",
        "monitor",
        "mutex_hashmap",
        "dashmap",
        "ideal_vec",
    ] {
        let subject = &data.memory[name];
        let _ = writeln!(
            report,
            "| {name} | {} | {} | {} | {} |",
            number(subject["bytes_per_sku"].as_f64(), 1),
            number(subject["allocations_per_sell"].as_f64(), 2),
            number(subject["allocations_per_reserve_commit"].as_f64(), 2),
            number(subject["allocations_per_level"].as_f64(), 2),
        );
    }
    let _ = writeln!(report);
}

fn instructions_table(data: &Data, report: &mut String) {
    if data.instructions["available"].as_bool() != Some(true) {
        let _ = writeln!(
            report,
            "valgrind was not available: no instruction counts.\n"
        );
        return;
    }
    let _ = writeln!(
        report,
        "{}; single thread, {} ops a workload over {} SKUs (uniform), only the measured loop \
         counted (`{}`). Includes about {} instructions/op of loop overhead (`empty_loop`).\n",
        data.instructions["valgrind"].as_str().unwrap_or("valgrind"),
        data.instructions["workloads"]["empty_loop/none"]["ops"]
            .as_u64()
            .unwrap_or(0),
        data.instructions["skus"].as_u64().unwrap_or(0),
        data.instructions["command"].as_str().unwrap_or(""),
        number(data.instructions_per_op("empty_loop/none"), 0),
    );
    let _ = writeln!(report, "| subject | sell | reserve+commit | level |");
    let _ = writeln!(report, "|---|---:|---:|---:|");
    for name in [
        "pessimistic",
        "optimistic",
        "monitor",
        "mutex_hashmap",
        "dashmap",
        "ideal_vec",
        "mutex_u64",
    ] {
        let cell =
            |operation: &str| number(data.instructions_per_op(&format!("{name}/{operation}")), 0);
        let _ = writeln!(
            report,
            "| {name} | {} | {} | {} |",
            cell("sell"),
            cell("reserve_commit"),
            cell("level")
        );
    }
    let _ = writeln!(report);
}

/// One row of the targets table.
struct Target {
    target: String,
    measured: String,
    verdict: String,
    why: String,
}

fn verdict(met: Option<bool>, multi_thread: bool, data: &Data) -> String {
    match met {
        None => "no data".into(),
        Some(_) if multi_thread && !data.multi_thread_meaningful() => {
            "not meaningful on this machine".into()
        }
        Some(true) => "met".into(),
        Some(false) => "**missed**".into(),
    }
}

fn guard_why(data: &Data) -> String {
    format!(
        "scaling guard {} < {GUARD_MIN}×: the 2 threads did not run in parallel",
        ratio(data.guard())
    )
}

fn hot_targets(data: &Data, targets: &mut Vec<Target>) {
    let cost = |group: &str, name: &str| data.get(group, name, 1).map(Measurement::ns_per_op);
    for (store, limit) in [("optimistic", 1.0), ("pessimistic", 1.3), ("monitor", 1.5)] {
        let value = divide(cost("hot_sell", store), cost("hot_sell", "dashmap"));
        let instructions = divide(
            data.instructions_per_op(&format!("{store}/sell")),
            data.instructions_per_op("dashmap/sell"),
        );
        let met = value.map(|value| value <= limit);
        // What a sell does beyond the lookup that the peer does not (from the code).
        let rest = if store == "optimistic" {
            "a load and a 128-bit CAS (`lock cmpxchg16b`) of the SKU's word"
        } else {
            "the slot's `Arc` clone and drop and its own mutex (the peer only locks the map's \
             shard: 2 atomic read-modify-writes a sell against 6) and the SKU's state in its \
             own allocation (one more cache line to miss at 100k SKUs)"
        };
        let why = if met == Some(false) {
            format!(
                "{} instructions per sell vs {} (callgrind), of which the SKU lookup alone \
                 (`level`) is {} vs {}; beyond it: {rest}, and the version and limit checks; \
                 {} heap allocations per sell (dashmap peer: {})",
                number(data.instructions_per_op(&format!("{store}/sell")), 0),
                number(data.instructions_per_op("dashmap/sell"), 0),
                number(data.instructions_per_op(&format!("{store}/level")), 0),
                number(data.instructions_per_op("dashmap/level"), 0),
                number(data.allocations(store, "sell"), 0),
                number(data.allocations("dashmap", "sell"), 0),
            )
        } else {
            String::new()
        };
        targets.push(Target {
            target: format!("single-thread `sell`, 100k SKUs: {store} ≤ {limit:.1}× DashMap peer"),
            measured: format!(
                "{} time, {} instructions",
                ratio(value),
                ratio(instructions)
            ),
            verdict: verdict(met, false, data),
            why,
        });
    }
    for store in STORES {
        let value = divide(cost("hot_reserve_commit", store), cost("hot_sell", store));
        let instructions = divide(
            data.instructions_per_op(&format!("{store}/reserve_commit")),
            data.instructions_per_op(&format!("{store}/sell")),
        );
        let met = value.map(|value| value <= 3.0);
        let why = if met == Some(false) {
            format!(
                "reserve+commit moves the SKU's stock twice (a SKU lookup, {} instructions \
                 (`level`), each time) and records the hold in the registry of holds, which \
                 a sell does not: an id, the lines copied into a `Vec` and then into the \
                 hold's `Arc<[lines]>`, an insert into a sharded map, then a lookup, claim and \
                 removal at the commit; \
                 {} heap allocations vs {} for sell",
                number(data.instructions_per_op(&format!("{store}/level")), 0),
                number(data.allocations(store, "reserve_commit"), 0),
                number(data.allocations(store, "sell"), 0),
            )
        } else {
            String::new()
        };
        targets.push(Target {
            target: format!("{store}: reserve+commit ≤ 3× sell (single thread)"),
            measured: format!(
                "{} time, {} instructions",
                ratio(value),
                ratio(instructions)
            ),
            verdict: verdict(met, false, data),
            why,
        });
    }
}

fn scaling_targets(data: &Data, targets: &mut Vec<Target>) {
    let meaningful = data.multi_thread_meaningful();
    let guarded = |why: String| if meaningful { why } else { guard_why(data) };
    let value = divide(
        data.ops("S1_flash_sale", "optimistic", 2),
        data.ops("S1_flash_sale", "atomic_cas", 2),
    );
    let met = value.map(|value| value >= 0.7);
    targets.push(Target {
        target: "S1 at 2 threads: optimistic ≥ 0.7× the CAS loop".into(),
        measured: ratio(value),
        verdict: verdict(met, true, data),
        why: if met == Some(true) && meaningful {
            String::new()
        } else {
            guarded("the store's lookup, version word and 128-bit CAS per sale".into())
        },
    });
    for group in ["S2_uniform", "S3_zipf"] {
        for store in STORES {
            let value = divide(
                data.ops(group, store, 2),
                data.ops(group, "mutex_hashmap", 2),
            );
            let met = value.map(|value| value >= 1.5);
            targets.push(Target {
                target: format!("{group} at 2 threads: {store} ≥ 1.5× `Mutex<HashMap>`"),
                measured: ratio(value),
                verdict: verdict(met, true, data),
                why: if met == Some(true) && meaningful {
                    String::new()
                } else {
                    guarded(format!(
                        "single-thread reserve+commit costs {} instructions vs {} for the peer",
                        number(
                            data.instructions_per_op(&format!("{store}/reserve_commit")),
                            0
                        ),
                        number(data.instructions_per_op("mutex_hashmap/reserve_commit"), 0),
                    ))
                },
            });
        }
    }
    for (scenario, base_group) in [("S1", "S1_flash_sale"), ("S3", "S3_zipf")] {
        for store in STORES {
            for threads in data.threads("S5_oversubscription", &format!("{scenario}_{store}")) {
                let value = divide(
                    data.ops(
                        "S5_oversubscription",
                        &format!("{scenario}_{store}"),
                        threads,
                    ),
                    data.ops(base_group, store, 2),
                );
                let met = value.map(|value| value >= 0.8);
                targets.push(Target {
                    target: format!(
                        "S5 {scenario} at {threads} threads: {store} ≥ 0.8× itself at 2 threads"
                    ),
                    measured: ratio(value),
                    verdict: verdict(met, true, data),
                    why: if met == Some(true) && meaningful {
                        String::new()
                    } else {
                        guarded("preempted lock holders or lost CAS races".into())
                    },
                });
            }
        }
    }
}

fn other_targets(data: &Data, targets: &mut Vec<Target>) {
    let p50 = |name: &str| data.latency[name]["p50_ns"].as_f64();
    let value = divide(p50("monitor"), p50("condvar_pingpong"));
    let met = value.map(|value| value <= 1.5);
    targets.push(Target {
        target: "S6 handoff p50 ≤ 1.5× condvar ping-pong".into(),
        measured: format!(
            "{} ({} vs {})",
            ratio(value),
            p50("monitor").map_or("–".into(), duration_ns),
            p50("condvar_pingpong").map_or("–".into(), duration_ns)
        ),
        verdict: verdict(met, false, data),
        why: if met == Some(false) {
            "the taker's wake-up also pays the monitor's lookup and grant; 2 threads on a busy \
             machine"
                .into()
        } else {
            String::new()
        },
    });
    for (store, limit) in [
        ("pessimistic", 128.0),
        ("optimistic", 128.0),
        ("monitor", 192.0),
    ] {
        let bytes = data.memory[store]["bytes_per_sku"].as_f64();
        let met = bytes.map(|bytes| bytes <= limit);
        targets.push(Target {
            target: format!("{store}: ≤ {limit} bytes per SKU at 1M SKUs"),
            measured: number(bytes, 1),
            verdict: verdict(met, false, data),
            why: String::new(),
        });
    }
}

fn targets_section(data: &Data, report: &mut String) {
    let mut targets = Vec::new();
    hot_targets(data, &mut targets);
    scaling_targets(data, &mut targets);
    other_targets(data, &mut targets);
    let _ = writeln!(report, "## Targets\n");
    let _ = writeln!(
        report,
        "Cost ratios (≤) divide time (or instructions) per operation; throughput ratios (≥) \
         divide operations per second. A verdict uses the criterion times of this run; the \
         callgrind instruction ratio is printed beside it because it does not drift with load.\n"
    );
    let _ = writeln!(report, "| target | measured | verdict | why |");
    let _ = writeln!(report, "|---|---|---|---|");
    for target in &targets {
        let _ = writeln!(
            report,
            "| {} | {} | {} | {} |",
            target.target, target.measured, target.verdict, target.why
        );
    }
    let _ = writeln!(report);
}

fn scenarios_section(data: &Data, report: &mut String) {
    let peers: References<'_> = &[("mutex_hashmap", "mutex_hashmap"), ("dashmap", "dashmap")];
    let ideal: References<'_> = &[
        ("mutex_hashmap", "mutex_hashmap"),
        ("dashmap", "dashmap"),
        ("ideal_vec", "ideal_vec"),
    ];
    let hot: References<'_> = &[
        ("mutex_hashmap", "mutex_hashmap"),
        ("dashmap", "dashmap"),
        ("atomic_cas", "atomic_cas"),
    ];
    let sections: [(&str, &str, &str); 8] = [
        ("hot_sell", "Single-thread `sell` of 1 unit, 100k SKUs (uniform)", ""),
        ("hot_reserve_commit", "Single-thread `reserve` + `commit` of 1 unit, 100k SKUs", ""),
        ("S1_flash_sale", "S1 flash sale: one SKU, 1 unit a sale", "sale"),
        ("S2_uniform", "S2 uniform: 100k SKUs, 20 % level, 50 % reserve+commit, 30 % reserve+release", "request"),
        ("S3_zipf", "S3 Zipf(0.99), scrambled (YCSB), 100k SKUs, same mix as S2", "request"),
        ("S4_tpcc_new_order", "S4 TPC-C NewOrder stock: 5–15 lines, NURand(8191, 1, 100000), 1–10 units, 1 % rollback", "order"),
        ("S5_oversubscription", "S5 oversubscription: S1 (unbounded) and S3 at 4× and 16× threads per core", "request"),
        ("S6_wait_queue_handoff", "S6 wait-queue handoff: 1 unit restocked to a queued waiter", ""),
    ];
    for (group, title, unit) in sections {
        let _ = writeln!(report, "### {title}\n");
        match group {
            "hot_sell" => hot_table(data, group, "sell", report),
            "hot_reserve_commit" => hot_table(data, group, "reserve_commit", report),
            "S1_flash_sale" => {
                let _ = writeln!(report, "Unbounded stock (one sale = one op):\n");
                scenario_table(
                    data,
                    group,
                    |f| !f.ends_with("_sell_out"),
                    hot,
                    unit,
                    report,
                );
                let _ = writeln!(
                    report,
                    "Sell-outs of 10,000 units (threads sell until refused; a unit sold = one \
                     op; time includes the barrier release of each round):\n"
                );
                scenario_table(
                    data,
                    group,
                    |f| f.ends_with("_sell_out"),
                    hot,
                    "unit",
                    report,
                );
            }
            "S5_oversubscription" => {
                let _ = writeln!(
                    report,
                    "Peer and limit ratios are at the same thread count; the last column \
                     compares with the same variant at 2 threads in S1 or S3 (the S5 target).\n"
                );
                scenario_table(data, group, |f| f.starts_with("S1_"), hot, "sale", report);
                scenario_table(data, group, |f| f.starts_with("S3_"), ideal, unit, report);
            }
            "S6_wait_queue_handoff" => s6_table(data, report),
            "S2_uniform" | "S3_zipf" | "S4_tpcc_new_order" => {
                scenario_table(data, group, |_| true, ideal, unit, report);
            }
            _ => scenario_table(data, group, |_| true, peers, unit, report),
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut criterion_dir = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"))
                .join("criterion")
        });
    let mut out = PathBuf::from("BENCHMARKS.md");
    let mut note = None;
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--criterion-dir" => criterion_dir = PathBuf::from(value()),
            "--out" => out = PathBuf::from(value()),
            "--note" => note = Some(value()),
            other => panic!("unknown argument {other}; see the doc comment of bench_report.rs"),
        }
    }
    let side = criterion_dir.join("stockledger");
    let mut data = Data {
        run: read_json(&side.join("scenarios_run.json")),
        memory: read_json(&side.join("memory.json")),
        instructions: read_json(&side.join("instructions.json")),
        latency: read_json(&side.join("handoff_latency.json")),
        ..Data::default()
    };
    let since = data.run["started_unix_s"]
        .as_u64()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s));
    collect(&criterion_dir, since, &mut data);
    assert!(
        !data.results.is_empty(),
        "no criterion results in {}: run `cargo bench` first",
        criterion_dir.display()
    );

    let mut report = String::new();
    let _ = writeln!(report, "# Benchmarks\n");
    let _ = writeln!(
        report,
        "Generated by `cargo run --release --example bench_report` from one run of the \
         benches; do not edit by hand. Subjects: the three stores (`pessimistic`, \
         `optimistic`, `monitor`); the naive peers a user would write instead \
         (`mutex_hashmap`: `parking_lot::Mutex<HashMap<u64, u64>>`; `dashmap`: `DashMap<u64, \
         u64>` with `get_mut` and a check; both keep only available units, so their hold is \
         free: `commit` does nothing, `release` adds back); and hardware limits (`ideal_vec`: \
         `Vec<CachePadded<AtomicU64>>` by SKU number with a checked CAS; `atomic_cas` / \
         `atomic_fetch_sub`: one cache-padded `AtomicU64`; `mutex_u64`: an uncontended \
         `parking_lot::Mutex<u64>`; `per_thread_counters`; `condvar_pingpong`). SKUs are \
         `u64`. Ratios `× X` divide this row's ops/s by X's ops/s at the same thread count \
         (above 1: faster than X) unless a column says *cost*.\n"
    );
    machine(&data, note.as_deref(), &mut report);
    let _ = writeln!(
        report,
        "## Reproduce\n\n```sh\ncargo bench                              # full: ~9 min on 2 cores\n\
         STOCKLEDGER_BENCH_QUICK=1 cargo bench    # quick mode: ~2 min, to check the pipeline\n\
         cargo bench --bench scenarios -- S3_zipf # one group (criterion filter)\n\
         cargo run --release --example bench_report -- --note \"...\"   # writes BENCHMARKS.md\n```\n"
    );
    targets_section(&data, &mut report);
    guard_section(&data, &mut report);
    let _ = writeln!(report, "## Scenarios\n");
    scenarios_section(&data, &mut report);
    let _ = writeln!(report, "## Instructions per operation (callgrind)\n");
    instructions_table(&data, &mut report);
    let _ = writeln!(report, "## Memory\n");
    memory_table(&data, &mut report);
    std::fs::write(&out, report).expect("write the report");
    println!("wrote {} ({} results)", out.display(), data.results.len());
}
