//! The summary at the top of the report: which store for which load, in four lines, each
//! with the figures of this run it rests on. A line whose figures the run lacks is left
//! out.

use std::fmt::Write as _;

use crate::data::{kind, Data, Kind, HOLD_PEERS, STORES};
use crate::format::{duration_ns, rate, ratio};

/// The thread count the multi-thread lines compare at (the targets' too).
const THREADS: usize = 2;

/// The summary section.
pub fn section(data: &Data, report: &mut String) {
    let lines: Vec<String> = [
        one_thread(data),
        many_skus(data),
        hot_sku(data),
        waiting(data),
    ]
    .into_iter()
    .flatten()
    .collect();
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(report, "## Which store for which load\n");
    for line in lines {
        let _ = writeln!(report, "- {line}");
    }
    let _ = writeln!(report);
}

/// The subject of `group` at one thread with the least time per operation among those
/// `keep` accepts.
fn fastest(data: &Data, group: &str, keep: impl Fn(&str) -> bool) -> Option<(String, f64)> {
    data.functions(group)
        .into_iter()
        .filter(|function| keep(function))
        .filter_map(|function| Some((function.clone(), data.cost(group, &function)?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// The stores' operations per second in `group` at `threads`, in table order.
fn stores_at(data: &Data, group: &str, threads: usize) -> Vec<(&'static str, f64)> {
    STORES
        .into_iter()
        .filter_map(|store| Some((store, data.ops(group, store, threads)?)))
        .collect()
}

/// `low–high` of `values` written by `write`, the unit once when both share it:
/// `10.33–10.53 M`, `1.20–1.52×`, `850.0 k–1.20 M`.
fn span(values: impl Iterator<Item = f64> + Clone, write: impl Fn(f64) -> String) -> String {
    let low = write(values.clone().fold(f64::INFINITY, f64::min));
    let high = write(values.fold(f64::NEG_INFINITY, f64::max));
    let unit = |text: &str| {
        text.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.')
            .to_string()
    };
    let low = match low.strip_suffix(&unit(&high)) {
        Some(number) if unit(&low) == unit(&high) => number.to_string(),
        _ => low,
    };
    format!("{low}–{high}")
}

/// Single thread: the fastest store for `sell` and for `reserve` + `commit`, and the
/// fastest naive peers beside them.
fn one_thread(data: &Data) -> Option<String> {
    let is_store = |f: &str| kind(f) == Kind::Store;
    let (sell_store, sell_ns) = fastest(data, "hot_sell", is_store)?;
    let (hold_store, hold_ns) = fastest(data, "hot_reserve_commit", is_store)?;
    let stores = if sell_store == hold_store {
        format!(
            "`{sell_store}` is the fastest store, `sell` {} and `reserve` + `commit` {}",
            duration_ns(sell_ns),
            duration_ns(hold_ns)
        )
    } else {
        format!(
            "`{sell_store}` sells fastest ({}), `{hold_store}` reserves and commits fastest \
             ({})",
            duration_ns(sell_ns),
            duration_ns(hold_ns)
        )
    };
    let peers = [
        fastest(data, "hot_sell", |f| kind(f) == Kind::Peer)
            .map(|(peer, ns)| format!("`{peer}` sells in {}", duration_ns(ns))),
        fastest(data, "hot_reserve_commit", |f| HOLD_PEERS.contains(&f))
            .map(|(peer, ns)| format!("`{peer}` reserves and commits in {}", duration_ns(ns))),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    Some(format!(
        "**One thread:** {stores}; the naive peers: {peers}."
    ))
}

/// The most the stores may differ for the summary to call them alike (5 %).
const ALIKE: f64 = 0.05;

/// Many SKUs with holds (S2, S3, S4) at [`THREADS`]: how close the stores are to each
/// other (the best named when they are not alike), and how far above the better hold peer.
fn many_skus(data: &Data) -> Option<String> {
    let groups = [
        ("S2_uniform", "S2 uniform", "requests"),
        ("S3_zipf", "S3 Zipf", "requests"),
        ("S4_tpcc_new_order", "S4 TPC-C", "orders"),
    ];
    let mut spread: f64 = 0.0;
    let mut over_peer = Vec::new();
    let mut figures = Vec::new();
    for (group, name, unit) in groups {
        let stores = stores_at(data, group, THREADS);
        if stores.is_empty() {
            continue;
        }
        let values = stores.iter().map(|(_, ops)| *ops);
        let (low, high) = (
            values.clone().fold(f64::INFINITY, f64::min),
            values.clone().fold(0.0, f64::max),
        );
        spread = spread.max(high / low - 1.0);
        let best = stores
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or("", |(store, _)| store);
        figures.push((
            format!("{name} {} {unit}/s", span(values.clone(), rate)),
            best,
        ));
        let best_peer = HOLD_PEERS
            .iter()
            .filter_map(|peer| data.ops(group, peer, THREADS))
            .reduce(f64::max);
        if let Some(best_peer) = best_peer {
            over_peer.extend(values.map(|ops| ops / best_peer));
        }
    }
    if figures.is_empty() {
        return None;
    }
    let peers = if over_peer.is_empty() {
        String::new()
    } else {
        format!(
            "; {} the better naive peer with holds",
            span(over_peer.into_iter(), |value| ratio(Some(value)))
        )
    };
    let text = if spread <= ALIKE {
        let figures: Vec<String> = figures.into_iter().map(|(text, _)| text).collect();
        format!(
            "any store: the four are within {:.0} % of each other ({})",
            (spread * 100.0).ceil(),
            figures.join(", ")
        )
    } else {
        let figures: Vec<String> = figures
            .into_iter()
            .map(|(text, best)| format!("{text}, best `{best}`"))
            .collect();
        format!("the stores differ: {}", figures.join("; "))
    };
    Some(format!("**Many SKUs, {THREADS} threads:** {text}{peers}."))
}

/// One hot SKU: the best store in S1 at [`THREADS`] and at the most threads of S5, the
/// plain `Mutex<HashMap>` beside it, and the adaptive store where one SKU is hot among
/// cold ones (S7).
fn hot_sku(data: &Data) -> Option<String> {
    let group = "S1_flash_sale";
    let stores = stores_at(data, group, THREADS);
    let (best, best_ops) = stores.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1))?;
    let others = stores
        .iter()
        .filter(|(store, _)| *store != best)
        .map(|(_, ops)| *ops);
    let mut text = format!(
        "**One hot SKU (S1):** `{best}` at {THREADS} threads ({} sales/s, the other stores {})",
        rate(best_ops),
        span(others, rate)
    );
    let most = data
        .functions("S5_oversubscription")
        .iter()
        .flat_map(|function| data.threads("S5_oversubscription", function))
        .max();
    let at_most = most.and_then(|threads| {
        STORES
            .into_iter()
            .filter_map(|store| {
                let ops = data.ops("S5_oversubscription", &format!("S1_{store}"), threads)?;
                Some((store, ops))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(store, ops)| (threads, store, ops))
    });
    if let Some((threads, store, ops)) = at_most {
        let who = if store == best {
            "and".to_string()
        } else {
            format!("`{store}`")
        };
        let _ = write!(text, ", {who} at {threads} threads ({})", rate(ops));
    }
    if let Some(ops) = data.ops(group, "mutex_hashmap", THREADS) {
        let _ = write!(
            text,
            "; a `Mutex<HashMap>` without holds sells {} at {THREADS} threads",
            rate(ops)
        );
    }
    let adaptive: Vec<f64> = data
        .threads("S7_hot_and_cold", "adaptive")
        .into_iter()
        .filter_map(|threads| {
            let better = ["pessimistic", "optimistic"]
                .into_iter()
                .filter_map(|store| data.ops("S7_hot_and_cold", store, threads))
                .reduce(f64::max)?;
            Some(data.ops("S7_hot_and_cold", "adaptive", threads)? / better)
        })
        .collect();
    if !adaptive.is_empty() {
        let _ = write!(
            text,
            ". One hot SKU among 100k cold ones (S7): `adaptive` runs at {} the better of \
             `pessimistic` and `optimistic`",
            span(adaptive.into_iter(), |value| ratio(Some(value)))
        );
    }
    text.push('.');
    Some(text)
}

/// Waiting for restock (S6): the monitor's handoff latency beside a bare condvar.
fn waiting(data: &Data) -> Option<String> {
    let p50 = |name: &str| data.latency[name]["p50_ns"].as_f64();
    let monitor = p50("monitor")?;
    let bare = p50("condvar_pingpong").map_or(String::new(), |ns| {
        format!("; a bare condvar ping-pong: {}", duration_ns(ns))
    });
    Some(format!(
        "**Waiting for restock (S6):** `monitor`, the store with a wait queue \
         (`reserve_wait`): a restocked unit reaches a queued waiter in {} (p50{bare}).",
        duration_ns(monitor)
    ))
}
