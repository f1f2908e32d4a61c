//! The Redis table of the report: `RedisStore` next to the peers on the same
//! server (`benches/redis.rs`, groups [`REDIS_GROUPS`](crate::data::REDIS_GROUPS)), and its
//! target, `sell` ≥ 0.7× the bare `EVALSHA` script at every thread count. Written only
//! when the run holds those results.

use std::fmt::Write as _;

use crate::data::Data;
use crate::format::{divide, rate, ratio, utc};

/// `RedisStore::sell` must reach this share of the bare script's ops/s.
pub const SELL_OVER_BARE_MIN: f64 = 0.7;

/// The sell group.
const SELL: &str = "R1_redis_sell";
/// The reserve + commit group.
const RESERVE_COMMIT: &str = "R2_redis_reserve_commit";

/// One column of the table: title, group, function.
const COLUMNS: [(&str, &str, &str); 6] = [
    ("`redis_store` sell", SELL, "redis_store"),
    (
        "`redis_store` reserve+commit",
        RESERVE_COMMIT,
        "redis_store",
    ),
    ("`bare_script` sell", SELL, "bare_script"),
    ("`get_set_oversells` sell", SELL, "get_set_oversells"),
    ("`pessimistic` sell (in memory)", SELL, "pessimistic"),
    (
        "`pessimistic` reserve+commit (in memory)",
        RESERVE_COMMIT,
        "pessimistic",
    ),
];

/// The cluster group.
const CLUSTER: &str = "R3_redis_cluster_sell";

/// The cluster table's columns: title and function.
const CLUSTER_COLUMNS: [(&str, &str); 4] = [
    ("one namespace", "one_namespace"),
    ("three namespaces", "three_namespaces"),
    ("one namespace, `WAIT 1`", "one_namespace_wait1"),
    ("three namespaces, `WAIT 1`", "three_namespaces_wait1"),
];

/// The Redis Cluster table: `sell` on one namespace (one primary) against three namespaces
/// (one on each primary), with and without `wait_replicas(1, ..)`. Written only when the
/// run holds the cluster group.
fn cluster_table(data: &Data, report: &mut String) {
    let mut threads: Vec<usize> = data
        .results
        .keys()
        .filter(|(group, _, _)| group == CLUSTER)
        .map(|(_, _, threads)| *threads)
        .collect();
    threads.sort_unstable();
    threads.dedup();
    if threads.is_empty() {
        return;
    }
    let cluster = &data.redis_run["cluster"];
    let number = |key: &str| cluster[key].as_u64().map_or("?".into(), |n| n.to_string());
    let _ = writeln!(
        report,
        "#### Redis Cluster\n\n`RedisStore::sell` of 1 unit on a local cluster of {} primaries \
         with {} replica each (`redis-server` {}, started by the bench), {} connections per \
         node: every thread on one namespace (one primary), or thread `t` on namespace \
         `t mod 3`, one namespace on each primary (three stores on one `RedisCluster` \
         handle); `WAIT 1`: `wait_replicas(1, {} ms)`, each change confirmed by the \
         primary's replica before it returns. All six servers and the client threads share \
         the same 2 cores, so the three primaries cannot run side by side here: the table \
         shows what routing and `WAIT` cost, not how a cluster scales on its own hosts.\n",
        number("primaries"),
        number("replicas_per_primary"),
        data.redis_run["redis_version"].as_str().unwrap_or("?"),
        number("pool_size_per_node"),
        number("wait_timeout_ms"),
    );
    let mut header = "| threads |".to_string();
    let mut rule = "|---:|".to_string();
    for (title, _) in CLUSTER_COLUMNS {
        let _ = write!(header, " {title} ops/s |");
        rule.push_str("---:|");
    }
    let _ = writeln!(
        report,
        "{header} three × one | `WAIT 1` × none (one namespace) |\n{rule}---:|---:|"
    );
    for count in threads {
        let _ = write!(report, "| {count} |");
        for (_, function) in CLUSTER_COLUMNS {
            let cell = data.ops(CLUSTER, function, count).map_or("–".into(), rate);
            let _ = write!(report, " {cell} |");
        }
        let ops = |function| data.ops(CLUSTER, function, count);
        let _ = writeln!(
            report,
            " {} | {} |",
            ratio(divide(ops("three_namespaces"), ops("one_namespace"))),
            ratio(divide(ops("one_namespace_wait1"), ops("one_namespace"))),
        );
    }
    let _ = writeln!(report);
}

/// `RedisStore::sell` over the bare script at `threads`, and whether it meets the target.
pub fn sell_over_bare(data: &Data, threads: usize) -> (Option<f64>, Option<bool>) {
    let value = divide(
        data.ops(SELL, "redis_store", threads),
        data.ops(SELL, "bare_script", threads),
    );
    (value, value.map(|value| value >= SELL_OVER_BARE_MIN))
}

/// Thread counts of the Redis groups, ascending.
fn thread_counts(data: &Data) -> Vec<usize> {
    let mut threads: Vec<usize> = data
        .results
        .keys()
        .filter(|(group, _, _)| group == SELL || group == RESERVE_COMMIT)
        .map(|(_, _, threads)| *threads)
        .collect();
    threads.sort_unstable();
    threads.dedup();
    threads
}

/// `met`, `**missed**` or `no data`.
fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "no data",
    }
}

/// The run line: command, commit, date, server and settings, from `redis_run.json`.
fn run_line(data: &Data, report: &mut String) {
    let run = &data.redis_run;
    let text = |key: &str| run[key].as_str().unwrap_or("?").to_string();
    let number = |key: &str| run[key].as_u64().map_or("?".into(), |n| n.to_string());
    // The commit is named once in the report: here only when it is not the scenarios'.
    let commit = text("source_revision");
    let commit = if commit == data.commit() {
        String::new()
    } else {
        format!(" of `{commit}`")
    };
    let _ = writeln!(
        report,
        "From `cargo bench --features redis --bench redis`{commit} ({}, load average {} at \
         the start), apart from the scenarios run: one `redis-server` {} in memory on the same \
         machine, {} SKUs (uniform), 1 unit an operation, client threads sharing a pool of {} \
         connections (the `RedisStore` default, `POOL_SIZE`; the peers use a pool of the same \
         size). `bare_script` is one `EVALSHA` of a Lua script that `DECRBY`s a counter when \
         it holds enough, the least a correct server-side sale costs; `get_set_oversells` \
         reads with `GET` and writes the difference with `SET`, the lost update; \
         `pessimistic` is the in-memory store, for scale. A reserve+commit op is the pair.\n",
        run["started_unix_s"].as_u64().map_or("?".into(), utc),
        text("load_average_at_start"),
        text("redis_version"),
        number("skus"),
        number("pool_size"),
    );
}

/// The Redis section, when the run holds the Redis groups.
pub fn section(data: &Data, report: &mut String) {
    if !data.has_redis() {
        return;
    }
    let _ = writeln!(report, "### Redis\n");
    run_line(data, report);
    let mut header = "| threads |".to_string();
    let mut rule = "|---:|".to_string();
    for (title, _, _) in COLUMNS {
        let _ = write!(header, " {title} ops/s |");
        rule.push_str("---:|");
    }
    let _ = writeln!(
        report,
        "{header} `redis_store` sell × `bare_script` | target ≥ {SELL_OVER_BARE_MIN}× |\n\
         {rule}---:|---|"
    );
    let threads = thread_counts(data);
    for &count in &threads {
        let _ = write!(report, "| {count} |");
        for (_, group, function) in COLUMNS {
            let cell = data.ops(group, function, count).map_or("–".into(), rate);
            let _ = write!(report, " {cell} |");
        }
        let (value, met) = sell_over_bare(data, count);
        let _ = writeln!(report, " {} | {} |", ratio(value), verdict(met));
    }
    let verdicts: Vec<Option<bool>> = threads
        .iter()
        .map(|&count| sell_over_bare(data, count).1)
        .collect();
    let met = verdicts.iter().filter(|met| **met == Some(true)).count();
    let _ = writeln!(
        report,
        "\nTarget: `RedisStore::sell` ≥ {SELL_OVER_BARE_MIN}× the bare script at \
         every thread count: met at {met} of {} thread counts.",
        verdicts.len()
    );
    let lost = &data.redis_run["peers"]["get_set_oversells"];
    if let (Some(sold), Some(lost_units)) = (lost["sold"].as_u64(), lost["lost_units"].as_i64()) {
        let _ = writeln!(
            report,
            "`get_set_oversells` acknowledged {sold} sales in the run but took {} units off its \
             counters: oversold by {lost_units} units (lost updates).",
            sold.saturating_sub(lost_units.unsigned_abs()),
        );
    }
    let _ = writeln!(report);
    cluster_table(data, report);
}
