//! The handlers of the route table (`app::router`).

use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use stockledger::{ReserveOptions, StockError};

use crate::app::{App, LINES_MAX, WAIT_MS_MAX};
use crate::auth::Customer;
use crate::bodies::{to_lines, LevelBody, LinesBody, ReservationBody, ReserveBody, RestockBody};
use crate::error::ApiError;
use crate::holds::{new_token, unix_ms_now, HoldEntry};
use crate::idempotency::{self, Reply};
use crate::telemetry::OPENMETRICS;

/// axum's `Json`, with a problem body when the request's body cannot be read.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct Json<T>(pub(crate) T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// axum's `Path`, with a problem body when a path segment cannot be read.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct Path<T>(pub(crate) T);

pub(crate) async fn restock(
    State(app): State<App>,
    Path(sku): Path<String>,
    Json(body): Json<RestockBody>,
) -> Result<Json<LevelBody>, ApiError> {
    app.blocking(move |app| {
        let level = app.store.restock(&sku, body.qty)?;
        Ok(Json(LevelBody::new(sku, level)))
    })
    .await
}

pub(crate) async fn level(
    State(app): State<App>,
    Path(sku): Path<String>,
) -> Result<Json<LevelBody>, ApiError> {
    app.blocking(move |app| {
        // `try_level`: a Redis server that is down is a 503, not an unknown SKU.
        let level = app
            .store
            .try_level(&sku)?
            .ok_or_else(|| StockError::UnknownSku(sku.clone()))?;
        Ok(Json(LevelBody::new(sku, level)))
    })
    .await
}

pub(crate) async fn sell(
    State(app): State<App>,
    Json(body): Json<LinesBody>,
) -> Result<StatusCode, ApiError> {
    if body.lines.len() > LINES_MAX {
        return Err(too_many_lines(body.lines.len()));
    }
    app.blocking(move |app| app.store.sell(&to_lines(&body.lines)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn too_many_lines(lines: usize) -> ApiError {
    ApiError::BadInput(format!("{lines} lines is past the maximum of {LINES_MAX}"))
}

/// A `POST /reservations` within the service's limits.
#[derive(Debug, Clone)]
struct HoldRequest {
    lines: Vec<(String, u64)>,
    ttl: Duration,
    wait: Option<Duration>,
}

impl HoldRequest {
    /// Checks `body` against the limits: at most [`LINES_MAX`] lines, a `ttl_ms` of 1 to
    /// the maximum (absent: the default), a `wait_ms` up to [`WAIT_MS_MAX`].
    fn check(body: &ReserveBody, app: &App) -> Result<Self, ApiError> {
        if body.lines.len() > LINES_MAX {
            return Err(too_many_lines(body.lines.len()));
        }
        let ttl_max_ms = app.limits.ttl_max.as_millis();
        let ttl = match body.ttl_ms {
            None => app.limits.ttl_default,
            Some(ttl_ms) if ttl_ms == 0 || u128::from(ttl_ms) > ttl_max_ms => {
                return Err(ApiError::BadInput(format!(
                    "ttl_ms must be 1 to {ttl_max_ms} (the service's maximum), not {ttl_ms}"
                )));
            }
            Some(ttl_ms) => Duration::from_millis(ttl_ms),
        };
        if let Some(wait_ms) = body.wait_ms.filter(|wait_ms| *wait_ms > WAIT_MS_MAX) {
            return Err(ApiError::BadInput(format!(
                "wait_ms {wait_ms} is past the maximum of {WAIT_MS_MAX}"
            )));
        }
        Ok(Self {
            lines: to_lines(&body.lines),
            ttl,
            wait: body.wait_ms.map(Duration::from_millis),
        })
    }
}

/// `POST /reservations`: a hold of the caller's, with a deadline, once per
/// `Idempotency-Key`.
pub(crate) async fn reserve(
    State(app): State<App>,
    customer: Customer,
    headers: HeaderMap,
    Json(body): Json<ReserveBody>,
) -> Result<Response, ApiError> {
    let request = HoldRequest::check(&body, &app)?;
    let Some(key) = idempotency::key_of(&headers)? else {
        let (status, hold) = hold(app, customer, request, None).await?;
        return Ok((status, Json(hold)).into_response());
    };
    let fingerprint = idempotency::fingerprint(&request.lines, body.ttl_ms, body.wait_ms);
    let store_key = idempotency::scope(&customer, &key);
    let request_wait = request.wait.unwrap_or_default();
    let run = {
        let (app, customer) = (app.clone(), customer.clone());
        async move { Reply::of(hold(app, customer, request, Some(store_key)).await) }
    };
    idempotency::once(&app, &customer, &key, fingerprint, request_wait, run).await
}

/// Holds `request` for `customer` (the store's idempotency key `store_key`, if any) and
/// gives the hold its token.
async fn hold(
    app: App,
    customer: Customer,
    request: HoldRequest,
    store_key: Option<String>,
) -> Result<(StatusCode, ReservationBody), ApiError> {
    let mut options = ReserveOptions::new().ttl(request.ttl);
    if let Some(store_key) = store_key {
        options = options.idempotency_key(store_key);
    }
    let (lines, ttl) = (request.lines, request.ttl);
    let started = Instant::now();
    let held = match (request.wait, app.store.as_waiting()) {
        (Some(wait), Some(_)) if app.blocks => {
            // RedisStore waits by blocking (XREAD BLOCK), on the blocking pool: the one
            // handle is asked for its waiting side there.
            let held = app
                .blocking(move |app| match app.store.as_waiting() {
                    Some(waiting) => waiting.reserve_timeout_with(&lines, wait, &options),
                    None => app.store.reserve_with(&lines, &options),
                })
                .await;
            app.metrics.waiting.observe(started.elapsed().as_secs_f64());
            held
        }
        (Some(wait), Some(waiting)) => {
            // The timeout drops the future when it runs out: it leaves the queue and gives
            // back what it held (`reserve_wait` is cancel safe).
            let held = tokio::time::timeout(wait, waiting.reserve_wait(&lines, &options))
                .await
                .unwrap_or(Err(StockError::Timeout));
            app.metrics.waiting.observe(started.elapsed().as_secs_f64());
            held
        }
        // A store that cannot wait answers at once.
        _ => {
            let held = app
                .blocking(move |app| app.store.reserve_with(&lines, &options))
                .await;
            app.metrics.reserve.observe(started.elapsed().as_secs_f64());
            held
        }
    }?;
    let token = new_token();
    let entry = HoldEntry::new(&customer, &held, ttl);
    app.blocking(move |app| match app.holds.insert(&token, &entry) {
        Ok(()) => Ok((StatusCode::CREATED, entry.body(&token))),
        Err(error) => {
            // No token, no way to resolve it: give it back now rather than at its deadline.
            let _ = app.store.release(held.id());
            Err(error.into())
        }
    })
    .await
}

/// `GET /reservations/{id}`: the caller's open hold.
pub(crate) async fn read_hold(
    State(app): State<App>,
    customer: Customer,
    Path(token): Path<String>,
) -> Result<Json<ReservationBody>, ApiError> {
    app.blocking(move |app| {
        let entry = app
            .holds
            .find(&token, &customer)?
            .ok_or(ApiError::UnknownHold)?;
        if entry.expires_at_unix_ms <= unix_ms_now() {
            return Err(ApiError::HoldExpired);
        }
        Ok(Json(entry.body(&token)))
    })
    .await
}

/// `POST /reservations/{id}/commit`: the caller's hold becomes a sale.
pub(crate) async fn commit(
    State(app): State<App>,
    customer: Customer,
    Path(token): Path<String>,
) -> Result<Json<ReservationBody>, ApiError> {
    let started = Instant::now();
    let committed = resolve(&app, customer, token, Resolution::Commit).await;
    app.metrics.commit.observe(started.elapsed().as_secs_f64());
    committed
}

/// `DELETE /reservations/{id}`: the caller's hold is given back.
pub(crate) async fn release(
    State(app): State<App>,
    customer: Customer,
    Path(token): Path<String>,
) -> Result<Json<ReservationBody>, ApiError> {
    resolve(&app, customer, token, Resolution::Release).await
}

#[derive(Debug, Clone, Copy)]
enum Resolution {
    Commit,
    Release,
}

/// Resolves the hold of `token` if it is `customer`'s; another customer's token finds
/// nothing (404), as a token never issued.
async fn resolve(
    app: &App,
    customer: Customer,
    token: String,
    how: Resolution,
) -> Result<Json<ReservationBody>, ApiError> {
    app.blocking(move |app| {
        let entry = app
            .holds
            .find(&token, &customer)?
            .ok_or(ApiError::UnknownHold)?;
        let resolved = match how {
            Resolution::Commit => app.store.commit(entry.id()),
            Resolution::Release => app.store.release(entry.id()),
        };
        let settled = matches!(
            resolved,
            Ok(_) | Err(StockError::UnknownReservation(_) | StockError::Expired(_))
        );
        if settled {
            if let Err(error) = app.holds.remove(&token) {
                // The token lapses on its own past the hold's deadline.
                tracing::warn!(%error, "a resolved hold's token was not removed");
            }
        }
        resolved?;
        Ok(Json(entry.body(&token)))
    })
    .await
}

/// `GET /metrics`: latency histograms and the store's statistics, OpenMetrics text.
pub(crate) async fn metrics(State(app): State<App>) -> impl IntoResponse {
    let stats = app.blocking(|app| app.store.try_stats()).await;
    let stats = stats
        .inspect_err(|error| tracing::warn!(%error, "the store's statistics could not be read"))
        .ok();
    let text = app.metrics.render(app.label, stats.as_ref());
    ([(header::CONTENT_TYPE, OPENMETRICS)], text)
}
