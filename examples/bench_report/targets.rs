//! The performance targets, each met or missed from the figures of this run.
//!
//! A multi-thread target whose run failed the scaling guard is still judged, and marked †:
//! its threads did not run in parallel, so the verdict says little about the store.

use std::fmt::Write as _;

use crate::data::{Data, HOLD_PEERS, STORES};
use crate::format::{divide, duration_ns, number, rate, ratio};
use crate::run::load_average;

/// One row of the targets table.
#[derive(Debug, Clone)]
pub struct Target {
    /// What must hold.
    pub target: String,
    /// What this run measured.
    pub measured: String,
    /// `Some(true)` met, `Some(false)` missed, `None` no data.
    pub met: Option<bool>,
    /// Whether the target compares multi-thread runs (and so depends on the scaling guard).
    pub multi_thread: bool,
}

impl Target {
    /// `met`, `**missed**` or `no data`, with † when the scaling guard failed.
    pub fn verdict(&self, data: &Data) -> String {
        let mark = if self.multi_thread && self.met.is_some() && !data.multi_thread_meaningful() {
            " †"
        } else {
            ""
        };
        match self.met {
            None => "no data".into(),
            Some(true) => format!("met{mark}"),
            Some(false) => format!("**missed**{mark}"),
        }
    }
}

/// A target `value <= limit` (`at_most`) or `value >= limit`.
fn judged(value: Option<f64>, limit: f64, at_most: bool) -> Option<bool> {
    value.map(|value| {
        if at_most {
            value <= limit
        } else {
            value >= limit
        }
    })
}

/// Callgrind: `sell` ≤ 200, `reserve`+`commit` ≤ 600, `level` ≤ 100 instructions.
fn instruction_targets(data: &Data, targets: &mut Vec<Target>) {
    for (operation, title, limit) in [
        ("sell", "`sell`", 200.0),
        ("reserve_commit", "`reserve`+`commit`", 600.0),
        ("level", "`level`", 100.0),
    ] {
        for store in STORES {
            let value = data.instructions_per_op(&format!("{store}/{operation}"));
            targets.push(Target {
                target: format!("callgrind: {store} {title} ≤ {limit:.0} instructions"),
                measured: number(value, 0),
                met: judged(value, limit, true),
                multi_thread: false,
            });
        }
    }
}

/// Single-thread `sell` ≤ 1.0× DashMap; `reserve`+`commit` ≤ 2.5× own sell and ≤ 1.0×
/// `mutex_hashmap_holds`.
fn hot_targets(data: &Data, targets: &mut Vec<Target>) {
    let time = |group: &str, name: &str| data.cost(group, name).map_or("–".into(), duration_ns);
    for store in STORES {
        let value = divide(
            data.cost("hot_sell", store),
            data.cost("hot_sell", "dashmap"),
        );
        targets.push(Target {
            target: format!("single-thread `sell`, 100k SKUs: {store} ≤ 1.0× the DashMap peer"),
            measured: format!(
                "{} ({} vs {})",
                ratio(value),
                time("hot_sell", store),
                time("hot_sell", "dashmap")
            ),
            met: judged(value, 1.0, true),
            multi_thread: false,
        });
    }
    for store in STORES {
        let value = divide(
            data.cost("hot_reserve_commit", store),
            data.cost("hot_sell", store),
        );
        let instructions = divide(
            data.instructions_per_op(&format!("{store}/reserve_commit")),
            data.instructions_per_op(&format!("{store}/sell")),
        );
        targets.push(Target {
            target: format!("single-thread `reserve`+`commit`: {store} ≤ 2.5× its own `sell`"),
            measured: format!(
                "{} time, {} instructions",
                ratio(value),
                ratio(instructions)
            ),
            met: judged(value, 2.5, true),
            multi_thread: false,
        });
    }
    for store in STORES {
        let group = "hot_reserve_commit";
        let value = divide(
            data.cost(group, store),
            data.cost(group, "mutex_hashmap_holds"),
        );
        targets.push(Target {
            target: format!(
                "single-thread `reserve`+`commit`: {store} ≤ 1.0× `mutex_hashmap_holds`"
            ),
            measured: format!(
                "{} ({} vs {})",
                ratio(value),
                time(group, store),
                time(group, "mutex_hashmap_holds")
            ),
            met: judged(value, 1.0, true),
            multi_thread: false,
        });
    }
}

/// Single-thread `reserve` with a TTL + `commit` ≤ 1.3× the same without a TTL.
fn ttl_targets(data: &Data, targets: &mut Vec<Target>) {
    let time = |group: &str, name: &str| data.cost(group, name).map_or("–".into(), duration_ns);
    for store in STORES {
        let value = divide(
            data.cost("hot_reserve_commit_ttl", store),
            data.cost("hot_reserve_commit", store),
        );
        targets.push(Target {
            target: format!(
                "single-thread `reserve`+`commit`: {store} with a TTL ≤ 1.3× without one"
            ),
            measured: format!(
                "{} ({} vs {})",
                ratio(value),
                time("hot_reserve_commit_ttl", store),
                time("hot_reserve_commit", store)
            ),
            met: judged(value, 1.3, true),
            multi_thread: false,
        });
    }
}

/// S1 at 2 threads: pessimistic and monitor ≥ 0.9× `Mutex<HashMap>`, optimistic ≥ 0.8×
/// the CAS loop; S2, S3, S4 at 2 threads ≥ 1.2× the better hold peer.
fn scaling_targets(data: &Data, targets: &mut Vec<Target>) {
    for (store, peer, limit) in [
        ("pessimistic", "mutex_hashmap", 0.9),
        ("optimistic", "atomic_cas", 0.8),
        ("monitor", "mutex_hashmap", 0.9),
    ] {
        let value = divide(
            data.ops("S1_flash_sale", store, 2),
            data.ops("S1_flash_sale", peer, 2),
        );
        targets.push(Target {
            target: format!("S1 hot SKU at 2 threads: {store} ≥ {limit}× `{peer}`"),
            measured: ratio(value),
            met: judged(value, limit, false),
            multi_thread: true,
        });
    }
    for group in ["S2_uniform", "S3_zipf", "S4_tpcc_new_order"] {
        let peers = HOLD_PEERS.map(|peer| (peer, data.ops(group, peer, 2)));
        let best = peers
            .iter()
            .filter_map(|(peer, ops)| Some((*peer, (*ops)?)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        for store in STORES {
            let ops = data.ops(group, store, 2);
            let value = divide(ops, best.map(|(_, ops)| ops));
            targets.push(Target {
                target: format!(
                    "{group} at 2 threads: {store} ≥ 1.2× the better of the hold peers"
                ),
                measured: format!(
                    "{} ({} vs {} {}/s)",
                    ratio(value),
                    ops.map_or("–".into(), rate),
                    best.map_or("–", |(peer, _)| peer),
                    best.map_or("–".into(), |(_, ops)| rate(ops)),
                ),
                met: judged(value, 1.2, false),
                multi_thread: true,
            });
        }
    }
}

/// S5: every store at 8 and 32 threads ≥ 0.9× its own 2-thread figure (S1 and S3).
fn oversubscription_targets(data: &Data, targets: &mut Vec<Target>) {
    for (scenario, base_group) in [("S1", "S1_flash_sale"), ("S3", "S3_zipf")] {
        for store in STORES {
            let function = format!("{scenario}_{store}");
            for threads in data.threads("S5_oversubscription", &function) {
                let value = divide(
                    data.ops("S5_oversubscription", &function, threads),
                    data.ops(base_group, store, 2),
                );
                targets.push(Target {
                    target: format!(
                        "S5 {scenario} at {threads} threads: {store} ≥ 0.9× itself at 2 threads"
                    ),
                    measured: ratio(value),
                    met: judged(value, 0.9, false),
                    multi_thread: true,
                });
            }
        }
    }
}

/// ≤ 96 bytes per SKU at 1M SKUs, every store.
fn memory_targets(data: &Data, targets: &mut Vec<Target>) {
    for store in STORES {
        let bytes = data.memory[store]["bytes_per_sku"].as_f64();
        targets.push(Target {
            target: format!("{store}: ≤ 96 bytes per SKU at 1M SKUs"),
            measured: number(bytes, 1),
            met: judged(bytes, 96.0, true),
            multi_thread: false,
        });
    }
}

/// The throughput of `function` at `threads` over the better of the same function of the
/// pessimistic and optimistic stores (`function` names the adaptive store).
fn over_better_fixed(data: &Data, group: &str, function: &str, threads: usize) -> Option<f64> {
    let adaptive = data.ops(group, function, threads)?;
    let better = ["pessimistic", "optimistic"]
        .into_iter()
        .filter_map(|store| data.ops(group, &function.replace("adaptive", store), threads))
        .reduce(f64::max)?;
    divide(Some(adaptive), Some(better))
}

/// The adaptive store: ≥ 1.2× the better fixed strategy in S7 at 8 and 32 threads, and
/// ≥ 0.9× it in every row of S1–S5 (one target per scenario, judged on its worst row).
fn adaptive_targets(data: &Data, targets: &mut Vec<Target>) {
    for threads in [8, 32] {
        let value = over_better_fixed(data, "S7_hot_and_cold", "adaptive", threads);
        targets.push(Target {
            target: format!("adaptive: S7 at {threads} threads ≥ 1.2× the better fixed store"),
            measured: ratio(value),
            met: judged(value, 1.2, false),
            multi_thread: true,
        });
    }
    for group in [
        "S1_flash_sale",
        "S2_uniform",
        "S3_zipf",
        "S4_tpcc_new_order",
        "S5_oversubscription",
    ] {
        let worst = data
            .functions(group)
            .into_iter()
            .filter(|function| crate::data::base_name(function) == "adaptive")
            .flat_map(|function| {
                data.threads(group, &function)
                    .into_iter()
                    .filter_map(|threads| over_better_fixed(data, group, &function, threads))
                    .collect::<Vec<_>>()
            })
            .reduce(f64::min);
        targets.push(Target {
            target: format!("adaptive: every {group} row ≥ 0.9× the better fixed store"),
            measured: ratio(worst),
            met: judged(worst, 0.9, false),
            multi_thread: true,
        });
    }
}

/// Every performance target, judged on `data`.
pub fn targets(data: &Data) -> Vec<Target> {
    let mut targets = Vec::new();
    instruction_targets(data, &mut targets);
    hot_targets(data, &mut targets);
    ttl_targets(data, &mut targets);
    scaling_targets(data, &mut targets);
    oversubscription_targets(data, &mut targets);
    memory_targets(data, &mut targets);
    adaptive_targets(data, &mut targets);
    targets
}

/// `N met, N missed, N without data` of `targets`.
pub fn summary(targets: &[Target]) -> String {
    let count = |met: Option<bool>| targets.iter().filter(|t| t.met == met).count();
    format!(
        "{} met, {} missed, {} without data (of {})",
        count(Some(true)),
        count(Some(false)),
        count(None),
        targets.len()
    )
}

/// The targets section: the summary with the scaling guard and load average, then one
/// row per target.
pub fn targets_section(data: &Data, targets: &[Target], report: &mut String) {
    let _ = writeln!(report, "## Targets\n");
    let guard = if data.multi_thread_meaningful() {
        "passes"
    } else {
        "fails: multi-thread verdicts (†) compare threads that did not run in parallel"
    };
    let _ = writeln!(
        report,
        "**{}.** Scaling guard {} ({guard}); load average (1, 5, 15 min) {}.\n",
        summary(targets),
        ratio(data.guard()),
        load_average(data)
    );
    let _ = writeln!(
        report,
        "Cost ratios (≤) divide time per operation; throughput ratios (≥) divide operations \
         per second; both come from this run's criterion figures (the callgrind instruction \
         ratio is printed beside a time ratio because it does not drift with load). No test \
         asserts a timing.\n"
    );
    let _ = writeln!(report, "| target | measured | verdict |");
    let _ = writeln!(report, "|---|---|---|");
    for target in targets {
        let _ = writeln!(
            report,
            "| {} | {} | {} |",
            target.target,
            target.measured,
            target.verdict(data)
        );
    }
    let _ = writeln!(report);
    s1_repeat_table(data, report);
}

/// How far one figure moves within a run: S1 at 2 threads at the start of the run and
/// again at its end (`S1_repeat`), each store over `mutex_hashmap` (`atomic_cas` for the
/// optimistic store) in each. Nothing when the run has no repeat.
fn s1_repeat_table(data: &Data, report: &mut String) {
    if data.functions("S1_repeat").is_empty() {
        return;
    }
    let _ = writeln!(
        report,
        "S1 at 2 threads was run again at the end of the run (`S1_repeat`), to show how far \
         one figure moves within a run:\n"
    );
    let _ = writeln!(
        report,
        "| store | sales/s, start | over its peer, start | sales/s, end | over its peer, end |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|");
    for store in STORES {
        let peer = if store == "optimistic" {
            "atomic_cas"
        } else {
            "mutex_hashmap"
        };
        let cells = ["S1_flash_sale", "S1_repeat"].map(|group| {
            let ops = data.ops(group, store, 2);
            (
                ops.map_or("–".into(), rate),
                ratio(divide(ops, data.ops(group, peer, 2))),
            )
        });
        let _ = writeln!(
            report,
            "| {store} | {} | {} `{peer}` | {} | {} `{peer}` |",
            cells[0].0, cells[0].1, cells[1].0, cells[1].1
        );
    }
    let _ = writeln!(report);
}
