//! Options of one reservation: its time to live and its idempotency key.

use std::sync::Arc;
use std::time::Duration;

/// How to hold a reservation: an optional time to live (TTL) and an optional idempotency
/// key. [`StockStore::reserve`](crate::StockStore::reserve) is
/// [`reserve_with`](crate::StockStore::reserve_with) with `ReserveOptions::new()`: no
/// deadline, no key.
///
/// - **TTL**: the hold expires at `now + ttl` on the store's [`Clock`](crate::Clock). It is
///   never expired early; past its deadline it can no longer be committed (TigerBeetle's
///   pending-transfer timeouts).
/// - **Idempotency key**: a retried request with the same key and the same merged lines gets
///   the same reservation back and holds nothing more, while the hold is open and for a
///   bounded retention after it resolves (see [`IDEMPOTENCY_RETENTION`](crate::IDEMPOTENCY_RETENTION)).
///   The same key with other lines is refused with
///   [`StockError::IdempotencyConflict`](crate::StockError::IdempotencyConflict). Only the
///   lines are compared: a retry with another TTL still gets the first reservation.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use stockledger::{OptimisticStore, ReserveOptions, StockStore};
///
/// let store = OptimisticStore::new();
/// store.restock(&"SKU1003", 4)?;
/// let options = ReserveOptions::new()
///     .ttl(Duration::from_secs(15 * 60))
///     .idempotency_key("order-42");
/// let hold = store.reserve_with(&[("SKU1003", 1)], &options)?;
/// let retried = store.reserve_with(&[("SKU1003", 1)], &options)?; // the client timed out and retried
/// assert_eq!(retried.id(), hold.id());
/// assert_eq!(store.level(&"SKU1003").unwrap().reserved, 1);
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
///
/// With the `serde` feature it (de)serializes as `{"ttl_ms":900000,"idempotency_key":"order-42"}`:
/// the TTL in whole milliseconds (rounded up), `null` or missing for none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct ReserveOptions {
    /// Time to live of the hold; `None` for a hold without a deadline.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "ttl_ms", with = "crate::serde_impls::ttl_ms")
    )]
    pub(crate) ttl: Option<Duration>,
    /// The idempotency key; `None` for a request that is not deduplicated.
    pub(crate) idempotency_key: Option<Arc<str>>,
}

impl ReserveOptions {
    /// No deadline, no idempotency key: what [`reserve`](crate::StockStore::reserve) uses.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{PessimisticStore, ReserveOptions, StockStore};
    ///
    /// let store = PessimisticStore::new();
    /// store.restock(&"tv", 1)?;
    /// let hold = store.reserve_with(&[("tv", 1)], &ReserveOptions::new())?;
    /// assert_eq!(hold.expires_at(), None);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub const fn new() -> Self {
        Self {
            ttl: None,
            idempotency_key: None,
        }
    }

    /// The hold expires `ttl` after it is opened (on the store's clock). A TTL too long
    /// for [`Instant`](std::time::Instant) to represent is a hold without a deadline.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use stockledger::{OptimisticStore, ReserveOptions, StockStore};
    ///
    /// let store = OptimisticStore::new();
    /// store.restock(&"tv", 1)?;
    /// let hold = store.reserve_with(&[("tv", 1)], &ReserveOptions::new().ttl(Duration::from_secs(900)))?;
    /// assert!(hold.expires_at().is_some());
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Deduplicates the request by `key` (for example an order id or an `Idempotency-Key`
    /// header): 1 to [`IDEMPOTENCY_KEY_BYTES_MAX`](crate::IDEMPOTENCY_KEY_BYTES_MAX) bytes,
    /// else [`reserve_with`](crate::StockStore::reserve_with) refuses it with
    /// [`StockError::InvalidIdempotencyKey`](crate::StockError::InvalidIdempotencyKey).
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{MonitorStore, ReserveOptions, StockStore};
    ///
    /// let store = MonitorStore::new();
    /// store.restock(&"tv", 2)?;
    /// let checkout = ReserveOptions::new().idempotency_key("order-9");
    /// let first = store.reserve_with(&[("tv", 1)], &checkout)?;
    /// let retry = store.reserve_with(&[("tv", 1)], &checkout)?; // the client retried
    /// assert_eq!(retry.id(), first.id());
    /// assert_eq!(store.level(&"tv").unwrap().reserved, 1);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(Arc::from(key.into()));
        self
    }
}
