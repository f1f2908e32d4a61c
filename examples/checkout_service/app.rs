//! The service's state (`App`, shared by every request in an `Arc`), its route table, and
//! a running instance with its expiry loop and graceful shutdown.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post, put};
use axum::Router;
use stockledger::{AdaptiveStore, MonitorStore, OptimisticStore, PessimisticStore, StockStore};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::{no_method, no_route};
use crate::holds::{HoldDirectory, MemoryHolds};
use crate::idempotency::{KeyRecords, MemoryKeys, WAIT_MS_DEFAULT};
use crate::naive::{naive_restock, naive_sell, MemoryNaive, NaiveLedger};
use crate::routes::{commit, level, metrics, read_hold, release, reserve, restock, sell};
use crate::telemetry::Metrics;
use crate::Strategy;

/// A hold's time to live when the request names none (`--ttl-ms-default`): 15 minutes.
pub(crate) const TTL_MS_DEFAULT: u64 = 15 * 60 * 1_000;
/// The longest time to live a request may ask for (`--ttl-ms-max`): 1 hour.
pub(crate) const TTL_MS_MAX: u64 = 60 * 60 * 1_000;
/// The longest `wait_ms` a request may ask for.
pub(crate) const WAIT_MS_MAX: u64 = 60_000;
/// The most lines one request may have.
pub(crate) const LINES_MAX: usize = 100;

/// The service's limits on requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// A hold's time to live when the request names none.
    pub(crate) ttl_default: Duration,
    /// The longest time to live a request may ask for.
    pub(crate) ttl_max: Duration,
    /// How long a duplicate waits for the first request with its `Idempotency-Key`.
    pub(crate) idempotency_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ttl_default: Duration::from_millis(TTL_MS_DEFAULT),
            ttl_max: Duration::from_millis(TTL_MS_MAX),
            idempotency_wait: Duration::from_millis(WAIT_MS_DEFAULT),
        }
    }
}

impl Limits {
    /// Limits from the command line's milliseconds.
    ///
    /// # Errors
    ///
    /// When a TTL is zero or the default is past the maximum.
    pub(crate) fn from_ms(
        ttl_default_ms: u64,
        ttl_max_ms: u64,
        idempotency_wait_ms: u64,
    ) -> Result<Self, String> {
        if ttl_default_ms == 0 || ttl_default_ms > ttl_max_ms {
            return Err(format!(
                "--ttl-ms-default ({ttl_default_ms}) must be 1 to --ttl-ms-max ({ttl_max_ms})"
            ));
        }
        Ok(Self {
            ttl_default: Duration::from_millis(ttl_default_ms),
            ttl_max: Duration::from_millis(ttl_max_ms),
            idempotency_wait: Duration::from_millis(idempotency_wait_ms),
        })
    }
}

/// The service's state, shared by every request.
#[derive(Clone)]
pub(crate) struct App {
    /// `store="..."` in the metrics: the strategy, or `redis`.
    pub(crate) label: &'static str,
    /// The one handle on the store: plain calls, and waits through
    /// [`as_waiting`](StockStore::as_waiting) when it is a store that waits (monitor, Redis).
    pub(crate) store: Arc<dyn StockStore<String>>,
    /// The store's calls block on the network (`RedisStore`): run them off the workers.
    pub(crate) blocks: bool,
    pub(crate) holds: Arc<dyn HoldDirectory>,
    pub(crate) keys: Arc<dyn KeyRecords>,
    /// The negative control's ledger (routes under `/naive`, only in the checks).
    pub(crate) naive: Option<Arc<dyn NaiveLedger>>,
    pub(crate) metrics: Metrics,
    pub(crate) limits: Limits,
}

impl App {
    /// An instance on an in-memory store of `strategy`.
    pub(crate) fn memory(strategy: Strategy, limits: Limits) -> Self {
        let store: Arc<dyn StockStore<String>> = match strategy {
            Strategy::Pessimistic => Arc::new(PessimisticStore::new()),
            Strategy::Optimistic => Arc::new(OptimisticStore::new()),
            Strategy::Adaptive => Arc::new(AdaptiveStore::new()),
            Strategy::Monitor => Arc::new(MonitorStore::new()),
        };
        Self {
            label: strategy.name(),
            store,
            blocks: false,
            holds: Arc::new(MemoryHolds::default()),
            keys: Arc::new(MemoryKeys::default()),
            naive: None,
            metrics: Metrics::default(),
            limits,
        }
    }

    /// With the negative control's routes (`/naive/...`) on an in-memory ledger.
    pub(crate) fn with_memory_naive(mut self) -> Self {
        self.naive = Some(Arc::new(MemoryNaive::default()));
        self
    }

    /// An instance on the `RedisStore` at `url` in `namespace`: every instance opened on
    /// the same server and namespace shares the ledger, the hold tokens and the
    /// idempotency records. With `naive`, also the negative control's routes, on Redis.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached.
    ///
    /// # Blocking
    ///
    /// Connects: call it from `spawn_blocking`.
    #[cfg(feature = "redis")]
    pub(crate) fn redis(
        url: &str,
        namespace: &str,
        limits: Limits,
        naive: bool,
    ) -> Result<Self, String> {
        use crate::holds::RedisHolds;
        use crate::idempotency::RedisKeys;
        use crate::naive::RedisNaive;
        use crate::redis_pool::RedisPool;

        let store = stockledger::RedisStore::<String>::connect(url, namespace)
            .map_err(|error| format!("RedisStore on {url}: {error}"))?;
        let store = Arc::new(store);
        let pool = Arc::new(
            RedisPool::open(url, namespace).map_err(|error| format!("Redis on {url}: {error}"))?,
        );
        let naive: Option<Arc<dyn NaiveLedger>> = if naive {
            Some(Arc::new(RedisNaive {
                pool: Arc::clone(&pool),
            }))
        } else {
            None
        };
        Ok(Self {
            label: "redis",
            store,
            blocks: true,
            holds: Arc::new(RedisHolds {
                pool: Arc::clone(&pool),
            }),
            keys: Arc::new(RedisKeys { pool }),
            naive,
            metrics: Metrics::default(),
            limits,
        })
    }

    /// Runs `work` on this app: inline for the in-memory stores, whose calls never wait
    /// beyond short critical sections; on tokio's blocking pool (`spawn_blocking`) when
    /// the store is `RedisStore`, whose calls block on a network round trip and must not
    /// hold an async worker thread meanwhile. The service's own Redis records go the same
    /// way.
    pub(crate) async fn blocking<T, F>(&self, work: F) -> T
    where
        F: FnOnce(&App) -> T + Send + 'static,
        T: Send + 'static,
    {
        if !self.blocks {
            return work(self);
        }
        let app = self.clone();
        match tokio::task::spawn_blocking(move || work(&app)).await {
            Ok(answer) => answer,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}

/// Every route, in one table; 404 and 405 answered with problem bodies; one log line per
/// request (`TraceLayer`, level INFO).
pub(crate) fn router(app: App) -> Router {
    let mut router = Router::new()
        .route("/stock/{sku}", put(restock).get(level))
        .route("/reservations", post(reserve))
        .route("/reservations/{id}", get(read_hold).delete(release))
        .route("/reservations/{id}/commit", post(commit))
        .route("/sales", post(sell))
        .route("/metrics", get(metrics));
    if app.naive.is_some() {
        router = router
            .route("/naive/stock/{sku}", put(naive_restock))
            .route("/naive/sales", post(naive_sell));
    }
    router
        .method_not_allowed_fallback(no_method)
        .fallback(no_route)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .with_state(app)
}

/// Expires due holds every `interval` until aborted, and forgets the tokens of holds long
/// past their deadline.
///
/// The library's `Reaper` thread does the first part with the infallible `expire_due`;
/// this loop calls `try_expire_due` instead, so that a Redis server that cannot be reached
/// is logged, not mistaken for "nothing due". Several instances on one Redis may all run
/// it: each due hold expires once, in one server-side script.
async fn expire_loop(app: App, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let swept = app
            .blocking(|app| {
                let expired = app.store.try_expire_due();
                app.holds.sweep();
                expired
            })
            .await;
        match swept {
            Ok(expired) if !expired.is_empty() => {
                tracing::debug!(holds = expired.len(), "expired holds past their deadline");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not expire due holds"),
        }
    }
}

/// A running instance: its address, and what stops it.
pub(crate) struct Running {
    pub(crate) address: SocketAddr,
    pub(crate) app: App,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    expiry: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts `app` on `listen` (port 0: a free port), expiring holds every `reap`.
    ///
    /// # Errors
    ///
    /// When `listen` cannot be bound.
    pub(crate) async fn start(
        app: App,
        listen: SocketAddr,
        reap: Duration,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let expiry = tokio::spawn(expire_loop(app.clone(), reap));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            axum::serve(listener, router(app.clone()))
                .with_graceful_shutdown(async {
                    stopped.await.ok();
                })
                .into_future(),
        );
        Ok(Self {
            address,
            app,
            stop,
            server,
            expiry,
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Stops accepting, lets in-flight requests finish, then stops the expiry loop.
    ///
    /// # Errors
    ///
    /// The server's error, if it failed.
    pub(crate) async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        let served = self.server.await.expect("the server task panicked");
        self.expiry.abort();
        served
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    ///
    /// # Errors
    ///
    /// The server's error, if it failed.
    pub(crate) async fn until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        shutdown.await;
        self.stop().await
    }
}
