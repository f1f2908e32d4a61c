//! One error type for every route, answered as RFC 9457 problem JSON
//! (`application/problem+json`) with a fitting status; the router's own 404 and 405 too.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use stockledger::{HoldOutcome, StockError};

/// The media type of every error body (RFC 9457).
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// A problem details body (RFC 9457).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Problem {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) title: String,
    pub(crate) status: u16,
    pub(crate) detail: String,
}

/// Every way a request fails: the store's errors, and what the service refuses itself.
#[derive(Debug)]
pub(crate) enum ApiError {
    Stock(StockError<String>),
    /// Input the store never sees: a `ttl_ms` or `wait_ms` out of bounds, too many lines,
    /// an `Idempotency-Key` that is not a short string.
    BadInput(String),
    /// A body or path axum could not read (its status: 400 bad JSON, 415 not JSON, 422
    /// JSON of the wrong shape).
    Unreadable(StatusCode, String),
    /// No `Authorization: Bearer <customer>`, or a malformed one.
    Unauthenticated(String),
    /// No open hold with this token for this customer: never issued, resolved, or another
    /// customer's (told apart from nothing, so that tokens cannot be probed).
    UnknownHold,
    /// The hold's deadline passed: its stock went back.
    HoldExpired,
    /// The hold an `Idempotency-Key` made has ended (a retry after its commit, release or
    /// expiry, past the service's own record of the answer): the store says how.
    HoldEnded(HoldOutcome),
    /// The `Idempotency-Key` was used before with another payload (draft: 422).
    KeyReused,
    /// The first request with this `Idempotency-Key` is still being processed (draft: 409).
    KeyInFlight,
    /// No route has this path.
    NoRoute(String),
    /// The route has no handler for this method.
    NoMethod(String),
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

impl From<StockError<String>> for ApiError {
    fn from(error: StockError<String>) -> Self {
        match error {
            // Hold ids stay inside the service: answer by what the client knows.
            StockError::UnknownReservation(_) => Self::UnknownHold,
            StockError::Expired(_) => Self::HoldExpired,
            StockError::HoldEnded { outcome, .. } => Self::HoldEnded(outcome),
            error => Self::Stock(error),
        }
    }
}

impl ApiError {
    /// The status and the problem type (the last part of its URI) of this error.
    pub(crate) fn status(&self) -> (StatusCode, &'static str) {
        use StockError as E;
        match self {
            Self::BadInput(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad-input"),
            Self::Unreadable(status, _) => (*status, "unreadable-request"),
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::UnknownHold => (StatusCode::NOT_FOUND, "unknown-reservation"),
            Self::HoldExpired => (StatusCode::GONE, "expired"),
            Self::HoldEnded(_) => (StatusCode::CONFLICT, "hold-ended"),
            Self::KeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused"),
            Self::KeyInFlight => (StatusCode::CONFLICT, "idempotency-key-in-flight"),
            Self::NoRoute(_) => (StatusCode::NOT_FOUND, "no-route"),
            Self::NoMethod(_) => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
            Self::Stock(error) => match error {
                E::UnknownSku(_) => (StatusCode::NOT_FOUND, "unknown-sku"),
                E::UnknownReservation(_) => (StatusCode::NOT_FOUND, "unknown-reservation"),
                E::Expired(_) => (StatusCode::GONE, "expired"),
                E::InsufficientStock { .. } => (StatusCode::CONFLICT, "insufficient-stock"),
                E::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
                E::IdempotencyConflict { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused")
                }
                E::Timeout => (StatusCode::CONFLICT, "wait-timed-out"),
                E::InvalidQuantity { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-quantity"),
                E::EmptyRequest => (StatusCode::UNPROCESSABLE_ENTITY, "empty-request"),
                E::Overflow { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "overflow"),
                E::InvalidIdempotencyKey { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid-idempotency-key")
                }
                E::InvalidSku(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-sku"),
                E::WaitTooLarge { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "wait-too-large"),
                // A shared engine that could not decide: the client may retry with its
                // idempotency key. Any variant added later is treated the same.
                _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            },
        }
    }

    /// This error's problem body.
    pub(crate) fn problem(&self) -> Problem {
        let (status, kind) = self.status();
        let detail = match self {
            Self::Stock(error) => error.to_string(),
            Self::BadInput(detail)
            | Self::Unreadable(_, detail)
            | Self::Unauthenticated(detail) => detail.clone(),
            Self::UnknownHold => "no open hold of yours has this id".into(),
            Self::HoldExpired => "the hold passed its deadline; its stock went back".into(),
            Self::HoldEnded(outcome) => {
                format!("the hold this Idempotency-Key made has ended: it was {outcome}")
            }
            Self::KeyReused => {
                "this Idempotency-Key was used with another payload (lines, ttl_ms or wait_ms)"
                    .into()
            }
            Self::KeyInFlight => {
                "the first request with this Idempotency-Key is still being processed; retry later"
                    .into()
            }
            Self::NoRoute(path) => format!("no route for {path}"),
            Self::NoMethod(method) => format!("this route does not answer {method}"),
        };
        Problem {
            kind: format!("https://stockledger.invalid/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status();
        let body = serde_json::to_string(&self.problem()).expect("a problem serializes");
        let mut response = (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response();
        if matches!(self, Self::Unauthenticated(_)) {
            let challenge = HeaderValue::from_static("Bearer realm=\"checkout\"");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// The router's fallback: 404 with a problem body.
pub(crate) async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_string())
}

/// The fallback of a route without a handler for the method: 405 with a problem body
/// (axum still sets the `Allow` header).
pub(crate) async fn no_method(method: axum::http::Method) -> ApiError {
    ApiError::NoMethod(method.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockledger::ReservationId;

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
                422,
            ),
            (StockError::Timeout, 409),
            (StockError::Expired(id), 410),
            (StockError::InvalidQuantity { sku: sku() }, 422),
            (StockError::EmptyRequest, 422),
            (StockError::Overflow { sku: sku() }, 422),
            (StockError::InvalidIdempotencyKey { length_bytes: 0 }, 422),
            (StockError::InvalidSku(sku()), 422),
            (
                StockError::WaitTooLarge {
                    sku: sku(),
                    requested: 1_000,
                    limit: 103,
                },
                422,
            ),
            (
                StockError::HoldEnded {
                    key: "k".into(),
                    id,
                    outcome: HoldOutcome::Committed,
                },
                409,
            ),
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
            assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        }
        let unauthenticated = ApiError::Unauthenticated("no token".into()).into_response();
        assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
        assert!(unauthenticated
            .headers()
            .contains_key(header::WWW_AUTHENTICATE));
    }

    /// A hold's internal id never reaches a client through an error's detail.
    #[test]
    fn hold_errors_do_not_name_the_internal_id() {
        let id = ReservationId::from_u64(1_234_567);
        let ended = StockError::HoldEnded {
            key: "k".into(),
            id,
            outcome: HoldOutcome::Released,
        };
        for error in [
            StockError::UnknownReservation(id),
            StockError::Expired(id),
            ended,
        ] {
            let problem = ApiError::from(error).problem();
            assert!(!problem.detail.contains("1234567"), "{problem:?}");
        }
        // Negative control: the store's own message names it.
        assert!(StockError::<String>::UnknownReservation(id)
            .to_string()
            .contains("1234567"));
    }
}
