//! A checkout service: stockledger inside an axum + tokio HTTP service.
//!
//! ```sh
//! cargo run --release --example checkout_service -- --strategy monitor --listen 127.0.0.1:3000
//! curl -X PUT localhost:3000/stock/SKU1004 -H 'content-type: application/json' -d '{"qty": 5}'
//!
//! # A hold belongs to its customer: `Authorization: Bearer <customer>` (kept simple here;
//! # a real deployment verifies a signed token). No ttl_ms: the default, 15 minutes.
//! curl -i localhost:3000/reservations -H 'authorization: Bearer alice' \
//!   -H 'idempotency-key: "order-42"' -H 'content-type: application/json' \
//!   -d '{"lines": [{"sku": "SKU1004", "qty": 2}]}'
//! # 201 {"id":"5f0c…(32 hex digits)","lines":[{"sku":"SKU1004","qty":2}],"expires_in_ms":900000}
//! # Same key, same body again: the same 201, with `Idempotent-Replayed: true`.
//! # Same key, other lines or ttl_ms: 422. While the first is still running: 409.
//!
//! curl -X POST localhost:3000/reservations/5f0c…/commit -H 'authorization: Bearer alice'  # 200
//! curl -X DELETE localhost:3000/reservations/5f0c… -H 'authorization: Bearer bob'         # 404
//! # "ttl_ms": 7200000 (past --ttl-ms-max 3600000): 422
//! ```
//!
//! | route | does |
//! |---|---|
//! | `PUT /stock/{sku}` `{"qty": 10}` | restock (creates the SKU) |
//! | `GET /stock/{sku}` | the SKU's level |
//! | `POST /reservations` `{"lines": [{"sku": "a", "qty": 1}], "ttl_ms": 900000, "wait_ms": 2000}` | a hold of the caller's; with `wait_ms`, wait in FIFO order (monitor, Redis) |
//! | `GET /reservations/{id}` | the caller's open hold |
//! | `POST /reservations/{id}/commit` | the caller's hold becomes a sale |
//! | `DELETE /reservations/{id}` | the caller's hold is given back |
//! | `POST /sales` `{"lines": [...]}` | sell without a hold |
//! | `GET /metrics` | latency histograms (reserve, commit, waiting) and the store's statistics, OpenMetrics text |
//!
//! The rules a copy of it should keep:
//!
//! - **Holds belong to their customer.** The reservation routes need
//!   `Authorization: Bearer <customer>` (else 401). A hold is named by a random 128-bit
//!   token that the service maps to the store's `ReservationId` (a small dense integer
//!   that never leaves the service) and to the customer; another customer's token, or a
//!   guessed one, is 404 as if the hold did not exist (`holds.rs`).
//! - **Every hold expires.** Without `ttl_ms` a hold gets `--ttl-ms-default` (15 min); a
//!   `ttl_ms` of 0 or past `--ttl-ms-max` (1 h) is 422. An expiry loop gives the stock of
//!   due holds back (`try_expire_due`, every `--reap-ms`).
//! - **`Idempotency-Key`** (IETF draft `draft-ietf-httpapi-idempotency-key-header`),
//!   scoped per customer: a retry gets the first response (status and body); another
//!   payload is 422; a retry while the first is still running waits for it up to
//!   `--idempotency-wait-ms` and then is 409 (`idempotency.rs`).
//! - **Every error is problem JSON** (RFC 9457, `application/problem+json`), unknown routes
//!   (404) and wrong methods (405) included: 401 no customer, 404 unknown SKU or hold, 409
//!   insufficient stock or a wait that ran out, 410 expired, 422 bad input, 503 the shared
//!   engine unavailable (`error.rs`).
//! - **Several instances, one ledger**: `--redis-url URL [--namespace NAME]` (feature
//!   `redis`) runs on `RedisStore`; hold tokens and idempotency records are kept in the
//!   same Redis, so a hold made through one instance is committed through another. Its
//!   calls block, so they run on tokio's blocking pool (`App::blocking`).
//! - Request logs through `tower-http`'s `TraceLayer` (`RUST_LOG`, default `info`);
//!   Ctrl-C shuts down gracefully (in-flight requests finish).
//!
//! `--smoke` (CI) starts the service on `127.0.0.1:0` for every strategy and drives it with a
//! real HTTP client (reqwest) from 256 concurrent connections: a flash sale of 1,000 units to
//! 10,000 buyers must sell exactly 1,000; then the rules above over HTTP. A naive handler
//! (read the level, then write it) must be caught overselling by the same check: the
//! negative control. `--load` runs the flash sale per strategy and prints requests/s and
//! p50/p99 latency; `--load --redis-url URL` adds `RedisStore`, once with its calls on
//! `spawn_blocking` (as the service runs them) and once inline on the async workers, to
//! show what `spawn_blocking` costs. The tests (`cargo test --example checkout_service`, with
//! `--all-features` also two instances on one `redis-server`) are in `checks.rs` and
//! `tests.rs`.

mod app;
mod auth;
mod bodies;
mod checks;
mod error;
mod holds;
mod idempotency;
mod naive;
#[cfg(feature = "redis")]
mod redis_pool;
/// The tests' own `redis-server` (a free port, a temporary directory, killed on drop),
/// shared with the library's Redis tests.
#[cfg(all(test, feature = "redis"))]
#[path = "../../tests/support/redis_server.rs"]
mod redis_server;
mod routes;
mod rules;
mod telemetry;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use app::{App, Limits, Running, TTL_MS_DEFAULT, TTL_MS_MAX};

/// How often the expiry loop gives the stock of due holds back (`--reap-ms` default).
const REAP_MS_DEFAULT: u64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Strategy {
    Pessimistic,
    Optimistic,
    Monitor,
    Adaptive,
}

pub(crate) const STRATEGIES: [Strategy; 4] = [
    Strategy::Pessimistic,
    Strategy::Optimistic,
    Strategy::Monitor,
    Strategy::Adaptive,
];

impl Strategy {
    pub(crate) fn name(self) -> &'static str {
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
    /// The in-memory store's concurrency control (without --redis-url).
    #[arg(long, value_enum, default_value_t = Strategy::Monitor)]
    strategy: Strategy,
    /// Run on the RedisStore at this URL (feature `redis`), e.g. redis://127.0.0.1:6379/:
    /// every instance on the same server and namespace shares one ledger.
    #[arg(long)]
    redis_url: Option<String>,
    /// The ledger's namespace on Redis.
    #[arg(long, default_value = "checkout")]
    namespace: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// A hold's time to live when the request names no ttl_ms, in milliseconds.
    #[arg(long, default_value_t = TTL_MS_DEFAULT)]
    ttl_ms_default: u64,
    /// The longest ttl_ms a request may ask for; past it, 422.
    #[arg(long, default_value_t = TTL_MS_MAX)]
    ttl_ms_max: u64,
    /// How long a request waits for an earlier one with its Idempotency-Key to finish
    /// before it is answered 409.
    #[arg(long, default_value_t = idempotency::WAIT_MS_DEFAULT)]
    idempotency_wait_ms: u64,
    /// How often due holds are expired, in milliseconds.
    #[arg(long, default_value_t = REAP_MS_DEFAULT)]
    reap_ms: u64,
    /// Start the service on a free port for every strategy, drive it over HTTP, check
    /// conservation, the rules (and the negative control), and exit.
    #[arg(long)]
    smoke: bool,
    /// Run the flash sale on every strategy and print requests/s and p50/p99 latency;
    /// with `--redis-url`, on `RedisStore` too, through `spawn_blocking` and inline.
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

/// The app the command line asks for.
async fn app_of(args: &Args, limits: Limits) -> Result<App, String> {
    let Some(url) = args.redis_url.clone() else {
        return Ok(App::memory(args.strategy, limits));
    };
    #[cfg(feature = "redis")]
    {
        let namespace = args.namespace.clone();
        // Connecting blocks: off the async workers.
        tokio::task::spawn_blocking(move || App::redis(&url, &namespace, limits, false))
            .await
            .map_err(|error| error.to_string())?
    }
    #[cfg(not(feature = "redis"))]
    {
        Err(format!(
            "--redis-url {url}: built without the `redis` feature \
             (cargo run --features redis --example checkout_service -- --redis-url ...)"
        ))
    }
}

/// Serves until Ctrl-C.
async fn serve(args: &Args) -> Result<(), String> {
    telemetry::init_logs();
    let limits = Limits::from_ms(
        args.ttl_ms_default,
        args.ttl_ms_max,
        args.idempotency_wait_ms,
    )?;
    let app = app_of(args, limits).await?;
    let label = app.label;
    let reap = Duration::from_millis(args.reap_ms.max(1));
    let running = Running::start(app, args.listen, reap)
        .await
        .map_err(|error| format!("listening on {}: {error}", args.listen))?;
    tracing::info!(
        store = label,
        "checkout_service on http://{} (Ctrl-C stops)",
        running.address
    );
    let shutdown = async {
        tokio::signal::ctrl_c().await.ok();
        tracing::info!("shutting down");
    };
    running
        .until(shutdown)
        .await
        .map_err(|error| error.to_string())
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
        checks::load(&sale, args.redis_url.as_deref()).await
    } else {
        serve(&args).await
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("checkout_service: FAILED: {error}");
            ExitCode::FAILURE
        }
    }
}
