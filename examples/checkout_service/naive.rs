//! The negative control: a naive handler, as a user might write one. It reads the
//! available units, then writes them back less the sale, with an await in between (a
//! database round trip, say): concurrent requests overwrite each other's writes (the lost
//! update), so it oversells. The checks must catch it.
//!
//! Its counts live in memory, or in Redis (`GET`, then `SET`) for the run on two
//! instances. Routed under `/naive` only when an `App` has a naive ledger (the checks).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use stockledger::StockError;

use crate::app::App;
use crate::bodies::{LinesBody, RestockBody};
use crate::error::ApiError;
use crate::routes::{Json, Path};

/// A ledger of available units per SKU, read and written in separate steps.
///
/// # Blocking
///
/// The Redis ledger makes a round trip per call (see `App::blocking`).
pub(crate) trait NaiveLedger: Send + Sync {
    /// Adds `qty` units (atomically: restocks are not what the control is about).
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] (Redis).
    fn restock(&self, sku: &str, qty: u64) -> Result<(), StockError<String>>;

    /// The available units of `sku`.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] (Redis).
    fn available(&self, sku: &str) -> Result<u64, StockError<String>>;

    /// Overwrites the available units of `sku`.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] (Redis).
    fn set_available(&self, sku: &str, qty: u64) -> Result<(), StockError<String>>;
}

/// The naive ledger of one instance, in memory.
#[derive(Debug, Default)]
pub(crate) struct MemoryNaive {
    available: Mutex<HashMap<String, u64>>,
}

impl NaiveLedger for MemoryNaive {
    fn restock(&self, sku: &str, qty: u64) -> Result<(), StockError<String>> {
        *self
            .available
            .lock()
            .unwrap()
            .entry(sku.to_string())
            .or_default() += qty;
        Ok(())
    }

    fn available(&self, sku: &str) -> Result<u64, StockError<String>> {
        Ok(self
            .available
            .lock()
            .unwrap()
            .get(sku)
            .copied()
            .unwrap_or(0))
    }

    fn set_available(&self, sku: &str, qty: u64) -> Result<(), StockError<String>> {
        self.available.lock().unwrap().insert(sku.to_string(), qty);
        Ok(())
    }
}

/// The naive ledger shared by instances on one Redis server: `checkout:{ns}:naive:<sku>`.
#[cfg(feature = "redis")]
#[derive(Debug)]
pub(crate) struct RedisNaive {
    pub(crate) pool: std::sync::Arc<crate::redis_pool::RedisPool>,
}

#[cfg(feature = "redis")]
impl NaiveLedger for RedisNaive {
    fn restock(&self, sku: &str, qty: u64) -> Result<(), StockError<String>> {
        let key = self.pool.key(&format!("naive:{sku}"));
        self.pool.with(|connection| {
            redis::cmd("INCRBY")
                .arg(&key)
                .arg(qty)
                .query::<()>(connection)
        })
    }

    fn available(&self, sku: &str) -> Result<u64, StockError<String>> {
        let key = self.pool.key(&format!("naive:{sku}"));
        let value: Option<u64> = self
            .pool
            .with(|connection| redis::cmd("GET").arg(&key).query(connection))?;
        Ok(value.unwrap_or(0))
    }

    fn set_available(&self, sku: &str, qty: u64) -> Result<(), StockError<String>> {
        let key = self.pool.key(&format!("naive:{sku}"));
        self.pool
            .with(|connection| redis::cmd("SET").arg(&key).arg(qty).query::<()>(connection))
    }
}

fn ledger(app: &App) -> &dyn NaiveLedger {
    app.naive
        .as_deref()
        .expect("naive routes are only routed with a ledger")
}

pub(crate) async fn naive_restock(
    State(app): State<App>,
    Path(sku): Path<String>,
    Json(body): Json<RestockBody>,
) -> Result<StatusCode, ApiError> {
    app.blocking(move |app| ledger(app).restock(&sku, body.qty))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn naive_sell(
    State(app): State<App>,
    Json(body): Json<LinesBody>,
) -> Result<Response, ApiError> {
    let Some(line) = body.lines.first().cloned() else {
        return Ok(StatusCode::UNPROCESSABLE_ENTITY.into_response());
    };
    let sku = line.sku.clone();
    let available = app.blocking(move |app| ledger(app).available(&sku)).await?;
    if available < line.qty {
        return Ok(StatusCode::CONFLICT.into_response());
    }
    tokio::task::yield_now().await; // a database round trip, say
    let written = available - line.qty; // the bug: computed from a stale read
    app.blocking(move |app| ledger(app).set_available(&line.sku, written))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
