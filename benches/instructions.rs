//! Instructions per operation of the single-thread hot paths, counted by valgrind's
//! callgrind: counts that do not drift with machine load, unlike times.
//!
//! Run: `cargo bench --bench instructions` (part of `cargo bench`). The binary re-runs
//! itself under `valgrind --tool=callgrind --toggle-collect=*callgrind_measured*` once per
//! workload, so only the measured loop is counted (the 100k-SKU setup is not), and writes
//! `target/criterion/stockledger/instructions.json` plus each workload's callgrind profile
//! (`callgrind/<workload>.out`, for `callgrind_annotate`). Without valgrind it writes
//! `"available": false` and exits successfully.

#[allow(dead_code)] // each bench target uses a part of the shared harness
mod common;

use std::process::Command;

use serde_json::json;

use common::peers::MutexCounter;
use common::{
    AtomicVec, DashMapHolds, DashMapPeer, Ledger, MutexHashMap, MutexHashMapHolds, Sku, Store,
    SKUS, UNITS_PER_SKU,
};

/// The operations of one workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    /// `sell` of 1 unit.
    Sell,
    /// `reserve` of 1 unit, then `commit`.
    ReserveCommit,
    /// `level` (a read).
    Level,
    /// `reserve` of 1 unit, then `commit`, over the first [`WARM_SKUS`] SKUs only, each
    /// restocked [`WARM_CHANGES`] times before the measured loop: SKUs that are busy, not
    /// met for the first time (the stores keep a busy SKU's one-line holds in its slot).
    ReserveCommitWarm,
}

const OPERATIONS: [(&str, Operation); 4] = [
    ("sell", Operation::Sell),
    ("reserve_commit", Operation::ReserveCommit),
    ("level", Operation::Level),
    ("reserve_commit_warm", Operation::ReserveCommitWarm),
];

/// SKUs of the `reserve_commit_warm` workload.
const WARM_SKUS: Sku = 1_000;
/// Restocks of each of them before its measured loop (the stores' `WARM_VERSION`).
const WARM_CHANGES: u64 = 64;

/// The subjects that are stores of this crate.
const STORES: [&str; 4] = ["pessimistic", "optimistic", "monitor", "adaptive"];

const SUBJECTS: [&str; 9] = [
    "pessimistic",
    "optimistic",
    "monitor",
    "adaptive",
    "mutex_hashmap",
    "dashmap",
    "mutex_hashmap_holds",
    "dashmap_holds",
    "ideal_vec",
];

/// The only function callgrind counts: `ops` calls of `op`, SKUs uniform over `SKUS`
/// from a precomputed stream.
#[inline(never)]
fn callgrind_measured(ops: u64, skus: &[Sku], mut op: impl FnMut(Sku)) {
    for i in 0..ops {
        op(common::at(skus, i));
    }
}

fn run_ledger<L: Ledger>(ledger: L, operation: Operation, ops: u64, skus: &[Sku]) {
    common::fill(&ledger, SKUS, UNITS_PER_SKU);
    match operation {
        Operation::Sell => callgrind_measured(ops, skus, |sku| {
            assert!(ledger.sell(&[(sku, 1)]));
        }),
        Operation::ReserveCommit => callgrind_measured(ops, skus, |sku| {
            let lines = [(sku, 1)];
            let hold = ledger.reserve(&lines).expect("stock never runs out");
            ledger.commit(hold, &lines);
        }),
        Operation::Level => callgrind_measured(ops, skus, |sku| {
            std::hint::black_box(ledger.available(sku));
        }),
        Operation::ReserveCommitWarm => unreachable!("run by `run_warm`"),
    }
}

/// The `reserve_commit_warm` workload of a store. The stores only: a peer keeps nothing per
/// SKU that a busy SKU would change, and the peers' code instantiated for this workload
/// changed how the compiler inlined their other workloads' hashing (callgrind:
/// `mutex_hashmap` `sell` 177 -> 227 instructions).
fn run_warm<S: stockledger::StockStore<Sku>>(store: S, ops: u64, skus: &[Sku]) {
    let ledger = Store(store);
    common::fill(&ledger, SKUS, UNITS_PER_SKU);
    for sku in 0..WARM_SKUS {
        for _ in 0..WARM_CHANGES {
            ledger.restock(sku, 1);
        }
    }
    let warm: Vec<Sku> = skus.iter().map(|sku| sku % WARM_SKUS).collect();
    // `run_ledger`'s `reserve_commit` step, written again: through one shared helper the
    // peers' hashing went out of line (callgrind: `mutex_hashmap` `sell` 177 -> 227).
    callgrind_measured(ops, &warm, |sku| {
        let lines = [(sku, 1)];
        let hold = ledger.reserve(&lines).expect("stock never runs out");
        ledger.commit(hold, &lines);
    })
}

/// Runs the workload `<subject>/<operation>` (or `mutex_u64/sell`, `empty_loop/none`).
fn run_workload(workload: &str, ops: u64) {
    let skus = &common::workload::uniform_skus(1, SKUS)[0];
    let (subject, operation) = workload.split_once('/').expect("<subject>/<operation>");
    if subject == "empty_loop" {
        return callgrind_measured(ops, skus, |sku| {
            std::hint::black_box(sku);
        });
    }
    if subject == "mutex_u64" {
        let counter = MutexCounter::new(u64::MAX);
        return callgrind_measured(ops, skus, |_| {
            assert!(counter.take(1));
        });
    }
    let operation = OPERATIONS
        .iter()
        .find(|(name, _)| *name == operation)
        .expect("a known operation")
        .1;
    if operation == Operation::ReserveCommitWarm {
        return match subject {
            "pessimistic" => run_warm(stockledger::PessimisticStore::new(), ops, skus),
            "optimistic" => run_warm(stockledger::OptimisticStore::new(), ops, skus),
            "monitor" => run_warm(stockledger::MonitorStore::new(), ops, skus),
            "adaptive" => run_warm(stockledger::AdaptiveStore::new(), ops, skus),
            _ => panic!("`reserve_commit_warm` runs on the stores only, not {subject}"),
        };
    }
    match subject {
        "pessimistic" => run_ledger(
            Store(stockledger::PessimisticStore::new()),
            operation,
            ops,
            skus,
        ),
        "optimistic" => run_ledger(
            Store(stockledger::OptimisticStore::new()),
            operation,
            ops,
            skus,
        ),
        "monitor" => run_ledger(
            Store(stockledger::MonitorStore::new()),
            operation,
            ops,
            skus,
        ),
        "adaptive" => run_ledger(
            Store(stockledger::AdaptiveStore::new()),
            operation,
            ops,
            skus,
        ),
        "mutex_hashmap" => run_ledger(MutexHashMap::new(), operation, ops, skus),
        "dashmap" => run_ledger(DashMapPeer::new(), operation, ops, skus),
        "mutex_hashmap_holds" => run_ledger(MutexHashMapHolds::new(), operation, ops, skus),
        "dashmap_holds" => run_ledger(DashMapHolds::new(), operation, ops, skus),
        "ideal_vec" => run_ledger(AtomicVec::new(SKUS), operation, ops, skus),
        _ => panic!("unknown subject {subject}"),
    }
}

/// The value after `--flag` in the arguments.
fn argument(flag: &str) -> Option<String> {
    let mut args = std::env::args().skip_while(|arg| arg != flag);
    args.next()?;
    args.next()
}

/// Counts the instructions of `workload` under callgrind; `None` when valgrind fails.
fn count(workload: &str, ops: u64, profile: &std::path::Path) -> Option<u64> {
    let exe = std::env::current_exe().expect("the path of this binary");
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--toggle-collect=*callgrind_measured*")
        .arg(format!("--callgrind-out-file={}", profile.display()))
        .arg(exe)
        .args(["--workload", workload, "--ops", &ops.to_string()])
        .output()
        .ok()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("callgrind failed on {workload}:\n{stderr}");
        return None;
    }
    // "==123== Collected : 4567"
    stderr
        .lines()
        .find_map(|line| line.split("Collected :").nth(1))
        .and_then(|count| count.trim().parse().ok())
}

fn main() {
    if let Some(workload) = argument("--workload") {
        let ops = argument("--ops").map_or(1_000, |ops| ops.parse().expect("--ops N"));
        return run_workload(&workload, ops);
    }
    if std::env::args().any(|arg| arg == "--list") {
        return; // criterion-style listing: nothing to list
    }
    let valgrind = Command::new("valgrind").arg("--version").output();
    let Ok(version) =
        valgrind.map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    else {
        println!("instructions: valgrind not found, skipped");
        common::write_side_file("instructions", &json!({ "available": false }));
        return;
    };
    let ops: u64 = if common::quick() { 20_000 } else { 100_000 };
    let profiles = common::output_dir().join("stockledger").join("callgrind");
    std::fs::create_dir_all(&profiles).expect("create the profile directory");
    let mut workloads = vec!["empty_loop/none".to_string(), "mutex_u64/sell".to_string()];
    for subject in SUBJECTS {
        for (operation, kind) in OPERATIONS {
            if kind == Operation::ReserveCommitWarm && !STORES.contains(&subject) {
                continue;
            }
            workloads.push(format!("{subject}/{operation}"));
        }
    }
    let mut results = serde_json::Map::new();
    for workload in &workloads {
        let profile = profiles.join(format!("{}.out", workload.replace('/', "-")));
        let Some(instructions) = count(workload, ops, &profile) else {
            continue;
        };
        let per_op = instructions as f64 / ops as f64;
        println!("instructions/{workload}: {per_op:.1} per op");
        results.insert(
            workload.clone(),
            json!({ "instructions": instructions, "ops": ops, "per_op": per_op }),
        );
    }
    common::write_side_file(
        "instructions",
        &json!({
            "available": true,
            "valgrind": version,
            "command": "valgrind --tool=callgrind --toggle-collect=*callgrind_measured* <bench binary> --workload <w> --ops <n>",
            "skus": SKUS,
            "source_revision": common::source_revision(),
            "workloads": results,
        }),
    );
}
