//! The JSON bodies of the routes: mirror types of the library's values.
//!
//! (With the library's `serde` feature, `LineBody` and `LevelBody` could be the library's
//! `(K, u64)` lines and `StockLevel` themselves; `ReservationBody` stays, since a hold's
//! internal id and `Instant` deadline mean nothing to a client.)

use serde::{Deserialize, Serialize};
use stockledger::StockLevel;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct LineBody {
    pub(crate) sku: String,
    pub(crate) qty: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RestockBody {
    pub(crate) qty: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LinesBody {
    pub(crate) lines: Vec<LineBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReserveBody {
    pub(crate) lines: Vec<LineBody>,
    /// The hold's time to live; absent: the service's default (`--ttl-ms-default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ttl_ms: Option<u64>,
    /// Wait up to this long for stock (FIFO, no barging); absent: answer at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) wait_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct LevelBody {
    pub(crate) sku: String,
    pub(crate) on_hand: u64,
    pub(crate) reserved: u64,
    pub(crate) available: u64,
    pub(crate) version: u64,
}

impl LevelBody {
    pub(crate) fn new(sku: String, level: StockLevel) -> Self {
        Self {
            sku,
            on_hand: level.on_hand,
            reserved: level.reserved,
            available: level.available(),
            version: level.version,
        }
    }
}

/// A hold as a client sees it: its unguessable token, its lines, its time left.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ReservationBody {
    /// The hold's token (32 hex digits, 128 random bits), valid only with its customer's
    /// bearer token.
    pub(crate) id: String,
    pub(crate) lines: Vec<LineBody>,
    /// Milliseconds left before the hold expires (every hold has a deadline).
    pub(crate) expires_in_ms: u64,
}

pub(crate) fn to_line_bodies(lines: &[(String, u64)]) -> Vec<LineBody> {
    lines
        .iter()
        .map(|(sku, qty)| LineBody {
            sku: sku.clone(),
            qty: *qty,
        })
        .collect()
}

pub(crate) fn to_lines(lines: &[LineBody]) -> Vec<(String, u64)> {
    lines
        .iter()
        .map(|line| (line.sku.clone(), line.qty))
        .collect()
}
