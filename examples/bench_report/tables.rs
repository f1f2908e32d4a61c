//! The charts and tables of the report: every chart in one section, then one table per
//! scenario, the instruction counts and the memory figures.

use std::fmt::Write as _;

use crate::charts::Drawn;
use crate::data::Data;
use crate::format::{divide, duration_ns, number, rate, ratio};

/// The reference columns of a scenario table: (column title, function to divide by).
type References<'a> = &'a [(&'a str, &'a str)];

/// The fewest threads any function of `group` that `filter` keeps was measured at: the
/// base of the table's "× itself" column (S7 starts at 2 threads).
fn base_threads(data: &Data, group: &str, filter: &impl Fn(&str) -> bool) -> usize {
    data.functions(group)
        .iter()
        .filter(|function| filter(function))
        .flat_map(|function| data.threads(group, function))
        .min()
        .unwrap_or(1)
}

/// A scenario table: every function and thread count of `group`, with ops/s, time per
/// operation, each reference ratio at the same thread count and the scaling against the
/// fewest threads of the group (S5: against 2 threads in S1 or S3).
pub fn scenario_table(
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
    let base = base_threads(data, group, &filter);
    header.push_str(&if group == "S5_oversubscription" {
        " × itself at 2 threads |".to_string()
    } else if base == 1 {
        " × itself at 1 thread |".to_string()
    } else {
        format!(" × itself at {base} threads |")
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
                _ if threads == base => None,
                _ => divide(Some(ops), data.ops(group, function, base)),
            };
            let _ = writeln!(report, " {} |", ratio(own));
        }
    }
    let _ = writeln!(report);
}

/// Single-thread hot path: time, cost ratios to `references`, callgrind instructions and
/// allocations per op.
fn hot_table(data: &Data, group: &str, operation: &str, references: &[&str], report: &mut String) {
    let mut header = "| variant | time/op | ops/s |".to_string();
    let mut rule = "|---|---:|---:|".to_string();
    for reference in references {
        let _ = write!(header, " cost × {reference} |");
        rule.push_str("---:|");
    }
    header
        .push_str(" instructions/op (callgrind) | instructions × dashmap | heap allocations/op |");
    rule.push_str("---:|---:|---:|");
    let _ = writeln!(report, "{header}\n{rule}");
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
        let _ = write!(
            report,
            "| {function} | {} | {} |",
            duration_ns(ns),
            rate(measurement.ops_per_s()),
        );
        for reference in references {
            let _ = write!(
                report,
                " {} |",
                ratio(divide(Some(ns), data.cost(group, reference)))
            );
        }
        let _ = writeln!(
            report,
            " {} | {} | {} |",
            number(instructions, 0),
            ratio(divide(instructions, instructions_of("dashmap"))),
            number(data.allocations(&function, operation), 2),
        );
    }
    let _ = writeln!(report);
}

/// S6: criterion's round trip and the handoff latency percentiles.
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

/// S7: the adaptive store's switches in one fixed run per thread count (nothing when the
/// run has no such side file).
fn s7_switches_table(data: &Data, report: &mut String) {
    let Some(runs) = data.switches.as_object() else {
        return;
    };
    let _ = writeln!(
        report,
        "The adaptive store in one more run of the same requests per thread count, for its \
         statistics (`StoreStats::switches`, `hot_skus` at the end, `contended`):\n"
    );
    let _ = writeln!(
        report,
        "| threads | requests | switches | hot SKUs at the end | contended updates |"
    );
    let _ = writeln!(report, "|---:|---:|---:|---:|---:|");
    let mut rows: Vec<(u64, &serde_json::Value)> = runs
        .iter()
        .filter_map(|(threads, run)| Some((threads.parse().ok()?, run)))
        .collect();
    rows.sort_by_key(|(threads, _)| *threads);
    let cell = |value: &serde_json::Value| value.as_u64().map_or("–".into(), |n| n.to_string());
    for (threads, run) in rows {
        let _ = writeln!(
            report,
            "| {threads} | {} | {} | {} | {} |",
            cell(&run["requests"]),
            cell(&run["switches"]),
            cell(&run["hot_skus"]),
            cell(&run["contended"]),
        );
    }
    let _ = writeln!(report);
}

/// Bytes per SKU and allocations per operation of every subject of the memory bench.
pub fn memory_table(data: &Data, report: &mut String) {
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
    for name in data.memory_subjects() {
        let subject = &data.memory[&name];
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

/// Callgrind instructions per `sell`, `reserve` + `commit` and `level` of every subject.
pub fn instructions_table(data: &Data, report: &mut String) {
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
    let _ = writeln!(
        report,
        "*reserve+commit, busy SKUs*: the same over the first 1,000 SKUs, each restocked 64 \
         times before the measured loop (the stores only: a peer keeps nothing a busy SKU \
         changes).\n"
    );
    let _ = writeln!(
        report,
        "| subject | sell | reserve+commit | reserve+commit, busy SKUs | level |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|");
    for name in [
        "pessimistic",
        "optimistic",
        "monitor",
        "adaptive",
        "mutex_hashmap",
        "dashmap",
        "mutex_hashmap_holds",
        "dashmap_holds",
        "ideal_vec",
        "mutex_u64",
    ] {
        let cell =
            |operation: &str| number(data.instructions_per_op(&format!("{name}/{operation}")), 0);
        let _ = writeln!(
            report,
            "| {name} | {} | {} | {} | {} |",
            cell("sell"),
            cell("reserve_commit"),
            cell("reserve_commit_warm"),
            cell("level")
        );
    }
    let _ = writeln!(report);
}

/// The charts in report order (the order of the tables).
const CHART_ORDER: [&str; 10] = [
    "hot_sell",
    "hot_reserve_commit",
    "S1_flash_sale",
    "S1_flash_sale_sell_out",
    "S2_uniform",
    "S3_zipf",
    "S4_tpcc_new_order",
    "S6_wait_queue_handoff",
    "S7_hot_and_cold",
    "memory",
];

/// The charts section: how to read the charts, then every chart `drawn`, linked under
/// `link_dir`.
pub fn charts_section(drawn: &[Drawn], link_dir: &str, report: &mut String) {
    if drawn.is_empty() {
        return;
    }
    let _ = writeln!(
        report,
        "## Charts\n\nThroughput against threads, both axes logarithmic: a solid line and \
         filled markers for each store, dashed and hollow for each naive peer, dotted for each \
         hardware limit; S5's 8 and 32 threads are drawn in S1 and S3. Bars: single-thread \
         time per operation, S6 handoff latency, bytes per SKU.\n"
    );
    let rank = |stem: &str| CHART_ORDER.iter().position(|s| *s == stem);
    let mut charts: Vec<&Drawn> = drawn.iter().collect();
    charts.sort_by_key(|chart| rank(&chart.stem).unwrap_or(CHART_ORDER.len()));
    for chart in charts {
        let _ = writeln!(
            report,
            "![{}]({link_dir}/{}.svg)\n",
            chart.title, chart.stem
        );
    }
}

/// The scenarios and their titles, in report order: `(group, title, unit)`.
const SECTIONS: [(&str, &str, &str); 9] = [
    (
        "hot_sell",
        "Single-thread `sell` of 1 unit, 100k SKUs (uniform)",
        "",
    ),
    (
        "hot_reserve_commit",
        "Single-thread `reserve` + `commit` of 1 unit, 100k SKUs",
        "",
    ),
    (
        "S1_flash_sale",
        "S1 flash sale: one SKU, 1 unit a sale",
        "sale",
    ),
    (
        "S2_uniform",
        "S2 uniform: 100k SKUs, 20 % level, 50 % reserve+commit, 30 % reserve+release",
        "request",
    ),
    (
        "S3_zipf",
        "S3 Zipf(0.99), scrambled (YCSB), 100k SKUs, same mix as S2",
        "request",
    ),
    (
        "S4_tpcc_new_order",
        "S4 TPC-C NewOrder stock: 5–15 lines, NURand(8191, 1, 100000), 1–10 units, 1 % rollback",
        "order",
    ),
    (
        "S5_oversubscription",
        "S5 oversubscription: S1 (unbounded) and S3 at 4× and 16× threads per core",
        "request",
    ),
    (
        "S6_wait_queue_handoff",
        "S6 wait-queue handoff: 1 unit restocked to a queued waiter",
        "",
    ),
    (
        "S7_hot_and_cold",
        "S7 hot and cold: 1 hot SKU taking 50 % of requests + 100k uniform cold SKUs, reserve+commit, 2/8/32 threads",
        "request",
    ),
];

/// Reference columns of the scenarios that hold and commit: the plain and hold peers and
/// the ideal ledger.
const HOLDS: References<'static> = &[
    ("mutex_hashmap", "mutex_hashmap"),
    ("dashmap", "dashmap"),
    ("mutex_hashmap_holds", "mutex_hashmap_holds"),
    ("dashmap_holds", "dashmap_holds"),
    ("ideal_vec", "ideal_vec"),
];

/// Reference columns of the one-SKU scenarios: the plain peers and the CAS loop.
const HOT: References<'static> = &[
    ("mutex_hashmap", "mutex_hashmap"),
    ("dashmap", "dashmap"),
    ("atomic_cas", "atomic_cas"),
];

/// S1: the unbounded table and the sell-out table.
fn s1_tables(data: &Data, report: &mut String) {
    let group = "S1_flash_sale";
    let _ = writeln!(report, "Unbounded stock (one sale = one op):\n");
    scenario_table(
        data,
        group,
        |f| !f.ends_with("_sell_out"),
        HOT,
        "sale",
        report,
    );
    let _ = writeln!(
        report,
        "Sell-outs of 10,000 units (threads sell until refused; a unit sold = one op; time \
         includes the barrier release of each round):\n"
    );
    scenario_table(
        data,
        group,
        |f| f.ends_with("_sell_out"),
        HOT,
        "unit",
        report,
    );
}

/// S5: its figures are drawn in the S1 and S3 charts (8 and 32 threads).
fn s5_tables(data: &Data, report: &mut String) {
    let group = "S5_oversubscription";
    let _ = writeln!(
        report,
        "Drawn at 8 and 32 threads in the S1 and S3 charts. Peer and limit ratios are \
         at the same thread count; the last column compares with the same variant at 2 \
         threads in S1 or S3 (the S5 target).\n"
    );
    scenario_table(data, group, |f| f.starts_with("S1_"), HOT, "sale", report);
    scenario_table(
        data,
        group,
        |f| f.starts_with("S3_"),
        HOLDS,
        "request",
        report,
    );
}

/// Every scenario's tables, under its title.
pub fn scenarios_section(data: &Data, report: &mut String) {
    for (group, title, unit) in SECTIONS {
        if data.functions(group).is_empty() {
            continue;
        }
        let _ = writeln!(report, "### {title}\n");
        match group {
            "hot_sell" => hot_table(data, group, "sell", &["dashmap", "mutex_hashmap"], report),
            "hot_reserve_commit" => hot_table(
                data,
                group,
                "reserve_commit",
                &[
                    "dashmap",
                    "mutex_hashmap",
                    "mutex_hashmap_holds",
                    "dashmap_holds",
                ],
                report,
            ),
            "S1_flash_sale" => s1_tables(data, report),
            "S5_oversubscription" => s5_tables(data, report),
            "S6_wait_queue_handoff" => s6_table(data, report),
            "S2_uniform" | "S3_zipf" | "S4_tpcc_new_order" => {
                scenario_table(data, group, |_| true, HOLDS, unit, report);
            }
            "S7_hot_and_cold" => {
                scenario_table(data, group, |_| true, HOLDS, unit, report);
                s7_switches_table(data, report);
            }
            _ => {}
        }
    }
}
