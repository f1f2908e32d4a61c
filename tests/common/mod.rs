//! The shared harness: one test body, run against every store (papaya's `with_map`).

#![allow(dead_code)]

use stockledger::{MonitorStore, OptimisticStore, PessimisticStore, StockStore};

/// A store under test, with its strategy name for failure messages.
pub type Store = Box<dyn StockStore<String>>;

/// Every strategy, freshly built.
pub fn stores() -> Vec<(&'static str, Store)> {
    vec![
        ("pessimistic", Box::new(PessimisticStore::<String>::new())),
        ("optimistic", Box::new(OptimisticStore::<String>::new())),
        ("monitor", Box::new(MonitorStore::<String>::new())),
    ]
}

/// Runs `body` once on each strategy.
pub fn with_stores(body: impl Fn(&'static str, &dyn StockStore<String>)) {
    for (name, store) in stores() {
        body(name, store.as_ref());
    }
}

/// The SKU named `name`.
pub fn sku(name: &str) -> String {
    name.to_string()
}

/// A request of `(sku, units)` lines.
pub fn lines(request: &[(&str, u64)]) -> Vec<(String, u64)> {
    request
        .iter()
        .map(|(name, units)| (sku(name), *units))
        .collect()
}

/// `(on_hand, reserved)` of `name`; panics for an unknown SKU.
pub fn counts(store: &dyn StockStore<String>, name: &str) -> (u64, u64) {
    let level = store.level(&sku(name)).expect("SKU exists");
    (level.on_hand, level.reserved)
}
