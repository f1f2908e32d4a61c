//! `--journal DIR`: the in-memory runs on a journaled store that starts from what the
//! journal recovered.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use stockledger::{
    AdaptiveStore, JournalSink, MonitorStore, OptimisticStore, PessimisticStore, Recovery,
    StockStore, SyncPolicy,
};

use crate::{Checkout, Immediate, Strategy, Waiting, MONITOR_TIMEOUT_MS};

/// A store of `strategy` journaled in `dir` (synced before each call returns), built from
/// what the journal recovered there; prints what it recovered and releases the holds the
/// last run left open (their orders died with it). `None` for a strategy that does not
/// live in this process.
pub(crate) fn checkout(
    strategy: Strategy,
    dir: &Path,
) -> Result<Option<Box<dyn Checkout>>, String> {
    let in_memory = [
        Strategy::Pessimistic,
        Strategy::Optimistic,
        Strategy::Monitor,
        Strategy::Adaptive,
    ];
    if !in_memory.contains(&strategy) {
        return Ok(None);
    }
    let opened = JournalSink::<String>::open(dir, SyncPolicy::Always);
    let (journal, recovery) =
        opened.map_err(|error| format!("--journal {}: {error}", dir.display()))?;
    print_recovery(strategy, dir, &recovery);
    let holds: Vec<_> = recovery.snapshot.holds.iter().map(|hold| hold.id).collect();
    let snapshot = recovery.snapshot;
    let refused =
        |error: stockledger::SnapshotError| format!("--journal {}: {error}", dir.display());
    let sink = |journal: &Arc<JournalSink<String>>| journal.clone();
    let checkout: Box<dyn Checkout> = match strategy {
        Strategy::Optimistic => Box::new(Immediate(
            OptimisticStore::builder()
                .restore(snapshot)
                .map_err(refused)?
                .event_sink(sink(&journal))
                .build(),
        )),
        Strategy::Adaptive => Box::new(Immediate(
            AdaptiveStore::builder()
                .restore(snapshot)
                .map_err(refused)?
                .event_sink(sink(&journal))
                .build(),
        )),
        Strategy::Monitor => Box::new(Waiting {
            store: MonitorStore::builder()
                .restore(snapshot)
                .map_err(refused)?
                .event_sink(sink(&journal))
                .build(),
            timeout: Duration::from_millis(MONITOR_TIMEOUT_MS),
        }),
        _ => Box::new(Immediate(
            PessimisticStore::builder()
                .restore(snapshot)
                .map_err(refused)?
                .event_sink(sink(&journal))
                .build(),
        )),
    };
    for id in holds {
        let _ = checkout.store().release(id);
    }
    Ok(Some(checkout))
}

/// The on hand of each of `skus` when `store` recovered any of them (a journaled run after
/// an earlier one); `None` for a new store.
pub(crate) fn recovered_stock(store: &dyn StockStore<String>, skus: &[String]) -> Option<Vec<u64>> {
    skus.iter().any(|sku| store.level(sku).is_some()).then(|| {
        skus.iter()
            .map(|sku| store.level(sku).map_or(0, |level| level.on_hand))
            .collect()
    })
}

/// Prints what the journal in `dir` gave back.
fn print_recovery(strategy: Strategy, dir: &Path, recovery: &Recovery<String>) {
    let snapshot = &recovery.snapshot;
    let on_hand: u64 = snapshot.skus.iter().map(|sku| sku.on_hand).sum();
    let reserved: u64 = snapshot.skus.iter().map(|sku| sku.reserved).sum();
    println!(
        "{}: journal {}: recovered {} SKUs ({on_hand} units on hand, {reserved} reserved), \
         {} open holds (released: their orders died with the last run), {} records after \
         the snapshot, a torn tail of {} bytes dropped",
        strategy.name(),
        dir.display(),
        snapshot.skus.len(),
        snapshot.holds.len(),
        recovery.records,
        recovery.torn_bytes,
    );
}
