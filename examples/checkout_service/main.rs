//! A checkout service: stockledger inside an axum + tokio HTTP service.
//!
//! | route | does |
//! |---|---|
//! | `PUT /stock/{sku}` `{"qty": 10}` | restock (creates the SKU) |
//! | `GET /stock/{sku}` | the SKU's level |
//! | `POST /reservations` `{"lines": [{"sku": "a", "qty": 1}], "ttl_ms": 900000, "wait_ms": 2000}` | hold; with `wait_ms`, wait in FIFO order (`reserve_wait`, monitor store) |
//! | `POST /reservations/{id}/commit` | the hold becomes a sale |
//! | `DELETE /reservations/{id}` | release the hold |
//! | `POST /sales` `{"lines": [...]}` | sell without a hold |
//! | `GET /metrics` | the store's `stats()` in the Prometheus text format |
//!
//! The `Idempotency-Key` request header (IETF httpapi idempotency-key draft) of
//! `POST /reservations` is the store's idempotency key: a retried request holds once. Every
//! [`StockError`] is answered with a JSON problem body (RFC 9457) and a fitting status: 404
//! unknown SKU or reservation, 409 insufficient stock, conflict or a wait that ran out, 410
//! expired, 422 bad input, 503 unavailable. A [`Reaper`] expires holds past their TTL;
//! Ctrl-C shuts the server down gracefully (in-flight requests finish).
//!
//! Run it: `cargo run --release --example checkout_service -- --strategy monitor --listen 127.0.0.1:3000`,
//! then e.g. `curl -X PUT localhost:3000/stock/SKU1004 -H 'content-type: application/json' -d '{"qty": 5}'`.
//!
//! `--smoke` (CI) starts the service on `127.0.0.1:0` for every strategy and drives it with a
//! real HTTP client (reqwest) from 256 concurrent connections: a flash sale of 1,000 units to
//! 10,000 buyers must sell exactly 1,000; retried requests with one key hold once; abandoned
//! holds expire; a waiting request is served by a restock. A naive handler (read the level,
//! then write it) must be caught overselling by the same check: the negative control.
//! `--load` runs the flash sale per strategy and prints requests/s and p50/p99 latency.

mod checks;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use stockledger::{
    AdaptiveStore, MonitorStore, OptimisticStore, PessimisticStore, Reaper, Reservation,
    ReservationId, ReserveOptions, StockError, StockLevel, StockStore, WaitingStore,
};

/// The longest `wait_ms` a request may ask for.
const WAIT_MS_MAX: u64 = 60_000;
/// How often the reaper expires holds past their TTL (`--reap-ms` default).
const REAP_MS_DEFAULT: u64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Strategy {
    Pessimistic,
    Optimistic,
    Monitor,
    Adaptive,
}

const STRATEGIES: [Strategy; 4] = [
    Strategy::Pessimistic,
    Strategy::Optimistic,
    Strategy::Monitor,
    Strategy::Adaptive,
];

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::Pessimistic => "pessimistic",
            Strategy::Optimistic => "optimistic",
            Strategy::Monitor => "monitor",
            Strategy::Adaptive => "adaptive",
        }
    }
}

/// Checkout service over a stockledger store.
#[derive(Debug, Parser)]
struct Args {
    /// The store's concurrency control.
    #[arg(long, value_enum, default_value_t = Strategy::Monitor)]
    strategy: Strategy,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// How often the reaper expires holds past their TTL, in milliseconds.
    #[arg(long, default_value_t = REAP_MS_DEFAULT)]
    reap_ms: u64,
    /// Start the service on a free port for every strategy, drive it over HTTP, check
    /// conservation (and the negative control), and exit.
    #[arg(long)]
    smoke: bool,
    /// Run the flash sale on every strategy and print requests/s and p50/p99 latency.
    #[arg(long)]
    load: bool,
    /// Flash sale: units on sale.
    #[arg(long, default_value_t = 1_000)]
    units: u64,
    /// Flash sale: buyers (each a reservation, then a commit if it got one).
    #[arg(long, default_value_t = 10_000)]
    buyers: usize,
    /// Flash sale: concurrent client connections.
    #[arg(long, default_value_t = 256)]
    connections: usize,
}

// ---- JSON bodies: mirror types of the library's values ----
// (When the library's `serde` feature lands, `LineBody` and `LevelBody` can be the
// library's `(K, u64)` lines and `StockLevel` themselves; `ReservationBody` stays, since an
// `Instant` deadline means nothing to a client.)

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct LineBody {
    sku: String,
    qty: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct RestockBody {
    qty: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct LinesBody {
    lines: Vec<LineBody>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ReserveBody {
    lines: Vec<LineBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wait_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct LevelBody {
    sku: String,
    on_hand: u64,
    reserved: u64,
    available: u64,
    version: u64,
}

impl LevelBody {
    fn new(sku: String, level: StockLevel) -> Self {
        Self {
            sku,
            on_hand: level.on_hand,
            reserved: level.reserved,
            available: level.available(),
            version: level.version,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ReservationBody {
    id: u64,
    lines: Vec<LineBody>,
    /// Milliseconds left before the hold expires; absent for a hold without a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_in_ms: Option<u64>,
}

impl From<Reservation<String>> for ReservationBody {
    fn from(hold: Reservation<String>) -> Self {
        let lines = to_line_bodies(hold.lines());
        let expires_in_ms = hold.expires_at().map(|deadline| {
            let left = deadline.saturating_duration_since(Instant::now());
            u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
        });
        Self {
            id: hold.id().get(),
            lines,
            expires_in_ms,
        }
    }
}

fn to_line_bodies(lines: &[(String, u64)]) -> Vec<LineBody> {
    lines
        .iter()
        .map(|(sku, qty)| LineBody {
            sku: sku.clone(),
            qty: *qty,
        })
        .collect()
}

fn to_lines(lines: Vec<LineBody>) -> Vec<(String, u64)> {
    lines.into_iter().map(|line| (line.sku, line.qty)).collect()
}

/// A problem details body (RFC 9457).
#[derive(Debug, Serialize, Deserialize)]
struct Problem {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
}

// ---- errors ----

/// Every way a request fails: the store's errors, and bad input the store never sees.
#[derive(Debug)]
enum ApiError {
    Stock(StockError<String>),
    /// `wait_ms` past [`WAIT_MS_MAX`], or an `Idempotency-Key` that is not text.
    BadInput(String),
    /// A body or path axum could not read (its status: 400 bad JSON, 415 not JSON, 422
    /// JSON of the wrong shape, 400 a path segment that is not a number).
    Unreadable(StatusCode, String),
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::Unreadable(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::Unreadable(rejection.status(), rejection.body_text())
    }
}

/// axum's `Json`, with a problem body when the request's body cannot be read.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
struct Json<T>(T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// axum's `Path`, with a problem body when a path segment cannot be read.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
struct Path<T>(T);

impl From<StockError<String>> for ApiError {
    fn from(error: StockError<String>) -> Self {
        Self::Stock(error)
    }
}

impl ApiError {
    /// The status and the problem type (the last part of its URI) of this error.
    fn status(&self) -> (StatusCode, &'static str) {
        use StockError as E;
        match self {
            Self::BadInput(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad-input"),
            Self::Unreadable(status, _) => (*status, "unreadable-request"),
            Self::Stock(error) => match error {
                E::UnknownSku(_) => (StatusCode::NOT_FOUND, "unknown-sku"),
                E::UnknownReservation(_) => (StatusCode::NOT_FOUND, "unknown-reservation"),
                E::InsufficientStock { .. } => (StatusCode::CONFLICT, "insufficient-stock"),
                E::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
                E::IdempotencyConflict { .. } => (StatusCode::CONFLICT, "idempotency-conflict"),
                E::Timeout => (StatusCode::CONFLICT, "wait-timed-out"),
                E::Expired(_) => (StatusCode::GONE, "expired"),
                E::InvalidQuantity { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-quantity"),
                E::EmptyRequest => (StatusCode::UNPROCESSABLE_ENTITY, "empty-request"),
                E::Overflow { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "overflow"),
                E::InvalidIdempotencyKey { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid-idempotency-key")
                }
                E::InvalidSku(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-sku"),
                // A shared engine that could not decide: the client may retry with its
                // idempotency key. Any variant added later is treated the same.
                E::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status();
        let detail = match &self {
            Self::Stock(error) => error.to_string(),
            Self::BadInput(detail) | Self::Unreadable(_, detail) => detail.clone(),
        };
        let problem = Problem {
            kind: format!("https://stockledger.invalid/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail,
        };
        let content_type = [(header::CONTENT_TYPE, "application/problem+json")];
        (status, content_type, Json(problem)).into_response()
    }
}

// ---- the service ----

/// The service's state: the store (and, for the monitor, its waiting side), shared by
/// every request.
#[derive(Clone)]
struct App {
    strategy: Strategy,
    store: Arc<dyn StockStore<String>>,
    /// The same store as a [`WaitingStore`], when it is one (the monitor).
    waiting: Option<Arc<dyn WaitingStore<String>>>,
    /// The negative control's ledger (routes under `/naive`, only in checks).
    naive: Option<Arc<NaiveLedger>>,
}

impl App {
    fn new(strategy: Strategy) -> Self {
        let (store, waiting): (Arc<dyn StockStore<String>>, _) = match strategy {
            Strategy::Pessimistic => (Arc::new(PessimisticStore::new()), None),
            Strategy::Optimistic => (Arc::new(OptimisticStore::new()), None),
            Strategy::Adaptive => (Arc::new(AdaptiveStore::new()), None),
            Strategy::Monitor => {
                let monitor = Arc::new(MonitorStore::new());
                let waiting: Arc<dyn WaitingStore<String>> = monitor.clone();
                (monitor, Some(waiting))
            }
        };
        Self {
            strategy,
            store,
            waiting,
            naive: None,
        }
    }
}

/// Every route, in one table.
fn router(app: App) -> Router {
    let mut router = Router::new()
        .route("/stock/{sku}", put(restock).get(level))
        .route("/reservations", post(reserve))
        .route("/reservations/{id}/commit", post(commit))
        .route("/reservations/{id}", axum::routing::delete(release))
        .route("/sales", post(sell))
        .route("/metrics", get(metrics));
    if app.naive.is_some() {
        router = router
            .route("/naive/stock/{sku}", put(naive_restock))
            .route("/naive/sales", post(naive_sell));
    }
    router.with_state(app)
}

async fn restock(
    State(app): State<App>,
    Path(sku): Path<String>,
    Json(body): Json<RestockBody>,
) -> Result<Json<LevelBody>, ApiError> {
    let level = app.store.restock(&sku, body.qty)?;
    Ok(Json(LevelBody::new(sku, level)))
}

async fn level(
    State(app): State<App>,
    Path(sku): Path<String>,
) -> Result<Json<LevelBody>, ApiError> {
    let level = app
        .store
        .level(&sku)
        .ok_or_else(|| StockError::UnknownSku(sku.clone()))?;
    Ok(Json(LevelBody::new(sku, level)))
}

/// The store's options of a `POST /reservations`: its TTL and its `Idempotency-Key`.
fn reserve_options(headers: &HeaderMap, ttl_ms: Option<u64>) -> Result<ReserveOptions, ApiError> {
    let mut options = ReserveOptions::new();
    if let Some(ttl_ms) = ttl_ms {
        options = options.ttl(Duration::from_millis(ttl_ms));
    }
    if let Some(key) = headers.get("idempotency-key") {
        let key = key
            .to_str()
            .map_err(|_| ApiError::BadInput("Idempotency-Key is not visible ASCII".into()))?;
        // The draft makes the header a structured-field string: `"key"`.
        let key = key.trim().trim_matches('"');
        options = options.idempotency_key(key);
    }
    Ok(options)
}

async fn reserve(
    State(app): State<App>,
    headers: HeaderMap,
    Json(body): Json<ReserveBody>,
) -> Result<(StatusCode, Json<ReservationBody>), ApiError> {
    let options = reserve_options(&headers, body.ttl_ms)?;
    let lines = to_lines(body.lines);
    let hold = match (body.wait_ms, &app.waiting) {
        (Some(wait_ms), _) if wait_ms > WAIT_MS_MAX => {
            return Err(ApiError::BadInput(format!(
                "wait_ms {wait_ms} is past the maximum of {WAIT_MS_MAX}"
            )));
        }
        (Some(wait_ms), Some(waiting)) => {
            let wait = waiting.reserve_wait(&lines, &options);
            // The timeout drops the future when it runs out: it leaves the queue and gives
            // back what it held (`reserve_wait` is cancel safe).
            tokio::time::timeout(Duration::from_millis(wait_ms), wait)
                .await
                .unwrap_or(Err(StockError::Timeout))?
        }
        // A store that cannot wait answers at once.
        _ => app.store.reserve_with(&lines, &options)?,
    };
    Ok((StatusCode::CREATED, Json(hold.into())))
}

async fn commit(
    State(app): State<App>,
    Path(id): Path<u64>,
) -> Result<Json<ReservationBody>, ApiError> {
    let hold = app.store.commit(ReservationId::from_u64(id))?;
    Ok(Json(hold.into()))
}

async fn release(
    State(app): State<App>,
    Path(id): Path<u64>,
) -> Result<Json<ReservationBody>, ApiError> {
    let hold = app.store.release(ReservationId::from_u64(id))?;
    Ok(Json(hold.into()))
}

async fn sell(State(app): State<App>, Json(body): Json<LinesBody>) -> Result<StatusCode, ApiError> {
    app.store.sell(&to_lines(body.lines))?;
    Ok(StatusCode::NO_CONTENT)
}

/// The store's statistics in the Prometheus text exposition format.
async fn metrics(State(app): State<App>) -> impl IntoResponse {
    let stats = app.store.stats();
    let counters = [
        ("reserves", "Holds opened.", stats.reserves),
        ("commits", "Holds committed.", stats.commits),
        ("releases", "Holds released.", stats.releases),
        ("expirations", "Holds expired.", stats.expirations),
        ("extensions", "Holds extended.", stats.extensions),
        (
            "replays",
            "Requests answered from the idempotency table.",
            stats.replays,
        ),
        (
            "refusals",
            "Requests refused by a SKU's counts.",
            stats.refusals,
        ),
        (
            "cas_retries",
            "Compare-and-swap attempts lost.",
            stats.cas_retries,
        ),
        (
            "contended",
            "SKU updates that found the SKU busy.",
            stats.contended,
        ),
        ("waits", "Waiting lines that had to queue.", stats.waits),
        (
            "timeouts",
            "Blocking waits that ran out of time.",
            stats.timeouts,
        ),
    ];
    let strategy = app.strategy.name();
    let mut text = String::new();
    for (name, help, value) in counters {
        text.push_str(&format!(
            "# HELP stockledger_{name}_total {help}\n# TYPE stockledger_{name}_total counter\n\
             stockledger_{name}_total{{strategy=\"{strategy}\"}} {value}\n"
        ));
    }
    let content_type = [(header::CONTENT_TYPE, "text/plain; version=0.0.4")];
    (content_type, text)
}

// ---- the negative control: a naive handler ----

/// A ledger the naive handler reads, then writes, with an await in between (as a handler
/// that reads a row, then writes it back, would): concurrent requests overwrite each other.
#[derive(Debug, Default)]
struct NaiveLedger {
    available: Mutex<HashMap<String, u64>>,
}

async fn naive_restock(
    State(app): State<App>,
    Path(sku): Path<String>,
    Json(body): Json<RestockBody>,
) -> StatusCode {
    let naive = app
        .naive
        .expect("naive routes are only routed with a ledger");
    *naive.available.lock().unwrap().entry(sku).or_default() += body.qty;
    StatusCode::NO_CONTENT
}

async fn naive_sell(State(app): State<App>, Json(body): Json<LinesBody>) -> Response {
    let naive = app
        .naive
        .expect("naive routes are only routed with a ledger");
    let Some(line) = body.lines.first() else {
        return StatusCode::UNPROCESSABLE_ENTITY.into_response();
    };
    let read = naive.available.lock().unwrap().get(&line.sku).copied();
    let available = read.unwrap_or(0);
    if available < line.qty {
        return StatusCode::CONFLICT.into_response();
    }
    tokio::task::yield_now().await; // a database round trip, say
    let written = available - line.qty; // the bug: computed from a stale read
    naive
        .available
        .lock()
        .unwrap()
        .insert(line.sku.clone(), written);
    StatusCode::NO_CONTENT.into_response()
}

// ---- serving ----

/// A running service: its address, and what stops it.
struct Running {
    address: SocketAddr,
    app: App,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _reaper: Reaper,
}

impl Running {
    /// Starts `app` on `listen` (port 0: a free port) with a reaper every `reap`.
    async fn start(app: App, listen: SocketAddr, reap: Duration) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let reaper = Reaper::spawn(Arc::clone(&app.store), reap);
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
            _reaper: reaper,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Stops accepting, lets in-flight requests finish, stops the reaper.
    async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        self.server.await.expect("the server task panicked")
    }
}

/// Serves until Ctrl-C.
async fn serve(args: &Args) -> std::io::Result<()> {
    let reap = Duration::from_millis(args.reap_ms.max(1));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let app = App::new(args.strategy);
    let _reaper = Reaper::spawn(Arc::clone(&app.store), reap);
    eprintln!(
        "checkout_service: {} store on http://{} (Ctrl-C stops)",
        args.strategy.name(),
        listener.local_addr()?
    );
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            tokio::signal::ctrl_c().await.ok();
            eprintln!("checkout_service: shutting down");
        })
        .await
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let sale = checks::SaleArgs {
        units: args.units,
        buyers: args.buyers,
        connections: args.connections,
    };
    let outcome = if args.smoke {
        checks::smoke(&sale).await
    } else if args.load {
        checks::load(&sale).await
    } else {
        serve(&args).await.map_err(|error| error.to_string())
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("checkout_service: FAILED: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stock_error_has_its_status() {
        let id = ReservationId::from_u64(7);
        let sku = || "a".to_string();
        let cases = [
            (StockError::UnknownSku(sku()), 404),
            (StockError::UnknownReservation(id), 404),
            (
                StockError::InsufficientStock {
                    sku: sku(),
                    requested: 2,
                    available: 1,
                },
                409,
            ),
            (
                StockError::Conflict {
                    sku: sku(),
                    attempts: 3,
                },
                409,
            ),
            (
                StockError::IdempotencyConflict {
                    key: "k".into(),
                    id,
                },
                409,
            ),
            (StockError::Timeout, 409),
            (StockError::Expired(id), 410),
            (StockError::InvalidQuantity { sku: sku() }, 422),
            (StockError::EmptyRequest, 422),
            (StockError::Overflow { sku: sku() }, 422),
            (StockError::InvalidIdempotencyKey { length_bytes: 0 }, 422),
            (StockError::InvalidSku(sku()), 422),
            (
                StockError::Unavailable {
                    reason: "down".into(),
                },
                503,
            ),
        ];
        for (error, status) in cases {
            let response = ApiError::from(error.clone()).into_response();
            assert_eq!(response.status().as_u16(), status, "{error:?}");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
        }
        let too_long = ApiError::BadInput("wait_ms".into()).into_response();
        assert_eq!(too_long.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
