//! The shared harness: one test body, run against every store (`with_stores`, as papaya's
//! `with_map`).

#![allow(dead_code)]

use stockledger::{AdaptiveStore, MonitorStore, OptimisticStore, PessimisticStore, StockStore};

/// The real `redis-server` the `RedisStore` runs of these tests use (feature `redis`).
#[cfg(feature = "redis")]
#[path = "../support/redis_server.rs"]
pub mod redis_server;

/// A store under test, with its strategy name for failure messages.
pub type Store = Box<dyn StockStore<String>>;

/// Every strategy, freshly built.
pub fn stores() -> Vec<(&'static str, Store)> {
    vec![
        ("pessimistic", Box::new(PessimisticStore::<String>::new())),
        ("optimistic", Box::new(OptimisticStore::<String>::new())),
        ("monitor", Box::new(MonitorStore::<String>::new())),
        ("adaptive", Box::new(AdaptiveStore::<String>::new())),
        #[cfg(feature = "redis")]
        ("redis", Box::new(redis_store())),
    ]
}

/// A `RedisStore` on the shared test server, in a namespace of its own.
#[cfg(feature = "redis")]
pub fn redis_store() -> stockledger::RedisStore<String> {
    redis_builder(&redis_server::fresh_namespace("contract"))
        .build()
        .expect("the test server answers")
}

/// The variable that runs these suites' Redis stores on a Redis Cluster instead of the
/// shared test server: its seed URLs, comma-separated (`.ci/run` runs the contract and
/// lifecycle suites so once more, on a cluster of 3 primaries and 3 replicas).
#[cfg(feature = "redis")]
pub const REDIS_CLUSTER_VAR: &str = "STOCKLEDGER_REDIS_CLUSTER";

/// A builder of the `RedisStore` of `namespace`: on the cluster of [`REDIS_CLUSTER_VAR`]
/// when it is set (one handle, so one pool per node, for every store of the run), else on
/// the shared test server.
#[cfg(feature = "redis")]
pub fn redis_builder(namespace: &str) -> stockledger::RedisStoreBuilder<String> {
    static CLUSTER: std::sync::OnceLock<Option<stockledger::RedisCluster>> =
        std::sync::OnceLock::new();
    let cluster = CLUSTER.get_or_init(|| {
        let seeds = std::env::var(REDIS_CLUSTER_VAR).ok()?;
        Some(stockledger::RedisCluster::new(
            seeds.split(',').map(String::from),
        ))
    });
    match cluster {
        Some(cluster) => cluster.store(namespace),
        None => stockledger::RedisStore::builder(&redis_server::shared().url(), namespace),
    }
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

/// What a lifecycle test needs beside its store: the store's manual clock and the events
/// it sent.
pub struct Rig {
    /// The store's clock; time moves only when a test advances it.
    pub clock: std::sync::Arc<stockledger::ManualClock>,
    /// Every event the store sent, in the order the sink received them.
    pub events: std::sync::Arc<Recorder>,
}

/// An event sink that records every event.
#[derive(Default)]
pub struct Recorder(std::sync::Mutex<Vec<stockledger::StockEvent<String>>>);

impl Recorder {
    /// Takes the events recorded so far.
    pub fn take(&self) -> Vec<stockledger::StockEvent<String>> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl stockledger::EventSink<String> for Recorder {
    fn on_event(&self, event: &stockledger::StockEvent<String>) {
        self.0.lock().unwrap().push(event.clone());
    }
}

/// Settings of the rigged stores beyond the clock and the recorder.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// The idempotency retention, when not the default.
    pub idempotency_retention: Option<std::time::Duration>,
    /// The bound of remembered resolved keys, when not the default.
    pub idempotency_keys_max: Option<usize>,
}

impl Rig {
    fn new() -> Self {
        Self {
            clock: std::sync::Arc::new(stockledger::ManualClock::new()),
            events: std::sync::Arc::new(Recorder::default()),
        }
    }

    /// `builder` with this rig's clock and recorder and `settings`.
    fn configure<S>(
        &self,
        builder: stockledger::StoreBuilder<String, S>,
        settings: Settings,
    ) -> stockledger::StoreBuilder<String, S> {
        let mut builder = builder
            .clock(self.clock.clone())
            .event_sink(self.events.clone());
        if let Some(retention) = settings.idempotency_retention {
            builder = builder.idempotency_retention(retention);
        }
        if let Some(keys_max) = settings.idempotency_keys_max {
            builder = builder.idempotency_keys_max(keys_max);
        }
        builder
    }
}

/// Every strategy, freshly built with a manual clock and an event recorder of its own.
pub fn rigged_stores(settings: Settings) -> Vec<(&'static str, Store, Rig)> {
    let (pessimistic, optimistic, monitor) = (Rig::new(), Rig::new(), Rig::new());
    let adaptive = Rig::new();
    vec![
        (
            "pessimistic",
            Box::new(
                pessimistic
                    .configure(PessimisticStore::builder(), settings)
                    .build(),
            ),
            pessimistic,
        ),
        (
            "optimistic",
            Box::new(
                optimistic
                    .configure(OptimisticStore::builder(), settings)
                    .build(),
            ),
            optimistic,
        ),
        (
            "monitor",
            Box::new(monitor.configure(MonitorStore::builder(), settings).build()),
            monitor,
        ),
        (
            "adaptive",
            Box::new(
                adaptive
                    .configure(AdaptiveStore::builder(), settings)
                    .build(),
            ),
            adaptive,
        ),
        #[cfg(feature = "redis")]
        {
            let redis = Rig::new();
            let store = redis.configure_redis(settings);
            ("redis", Box::new(store), redis)
        },
    ]
}

#[cfg(feature = "redis")]
impl Rig {
    /// A `RedisStore` on the shared test server with this rig's clock and recorder and
    /// `settings`, in a namespace of its own.
    fn configure_redis(&self, settings: Settings) -> stockledger::RedisStore<String> {
        let namespace = redis_server::fresh_namespace("lifecycle");
        let mut builder = redis_builder(&namespace)
            .clock(self.clock.clone())
            .event_sink(self.events.clone());
        if let Some(retention) = settings.idempotency_retention {
            builder = builder.idempotency_retention(retention);
        }
        if let Some(keys_max) = settings.idempotency_keys_max {
            builder = builder.idempotency_keys_max(keys_max);
        }
        builder.build().expect("the test server answers")
    }
}

/// Runs `body` once on each strategy, each store with its own rig and default settings.
pub fn with_rigged_stores(body: impl Fn(&'static str, &dyn StockStore<String>, &Rig)) {
    with_rigged_stores_using(Settings::default(), body);
}

/// Runs `body` once on each strategy, each store with its own rig and `settings`.
pub fn with_rigged_stores_using(
    settings: Settings,
    body: impl Fn(&'static str, &dyn StockStore<String>, &Rig),
) {
    for (name, store, rig) in rigged_stores(settings) {
        body(name, store.as_ref(), &rig);
    }
}
