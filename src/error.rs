//! The one error type every store returns.

use crate::reservation::{HoldOutcome, ReservationId};

/// Why a stock operation was refused.
///
/// Every variant means **nothing changed**: a failed call leaves every count, every
/// version and every open hold exactly as it was (all or nothing). Two documented
/// exceptions touch versions only, never counts: a
/// [`WaitingStore::reserve_timeout`](crate::WaitingStore::reserve_timeout) that held some
/// lines before it was refused gives them back (each such SKU's version grows by 2), and
/// an [`OptimisticStore`](crate::OptimisticStore) multi-line request that lost a race after
/// its first lines were held compensates them the same way.
///
/// The type parameter `K` is the SKU type, so an error names the SKU that caused it.
///
/// # Examples
///
/// ```
/// use stockledger::{PessimisticStore, StockError, StockStore};
///
/// let store = PessimisticStore::new();
/// store.restock(&"apple", 1)?;
/// let err = store.sell(&[("apple", 2)]).unwrap_err();
/// assert_eq!(err, StockError::InsufficientStock { sku: "apple", requested: 2, available: 1 });
/// # Ok::<(), StockError<&str>>(())
/// ```
///
/// With the `serde` feature it (de)serializes tagged by variant name, its fields (in
/// `snake_case`) or value under `detail`:
/// `{"error":"InsufficientStock","detail":{"sku":"apple","requested":2,"available":1}}`,
/// `{"error":"UnknownReservation","detail":7}`, `{"error":"Timeout"}`. A variant unknown
/// to the reader is an error.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "error", content = "detail"))]
pub enum StockError<K> {
    /// The SKU was never restocked in this store.
    #[error("unknown SKU {0:?}")]
    UnknownSku(K),
    /// The SKU has fewer units available (`on_hand - reserved`, minus what queued
    /// waiters are entitled to in a [`MonitorStore`](crate::MonitorStore)) than requested.
    #[error(
        "insufficient stock for SKU {sku:?}: requested {requested} units, {available} available"
    )]
    InsufficientStock {
        /// The SKU that is short.
        sku: K,
        /// Units requested on this SKU (the merged quantity of all its lines).
        requested: u64,
        /// Units available to this caller when the request was checked.
        available: u64,
    },
    /// A line asked for zero units.
    #[error("invalid quantity 0 for SKU {sku:?}")]
    InvalidQuantity {
        /// The SKU of the zero line.
        sku: K,
    },
    /// The request had no lines.
    #[error("empty request: no lines")]
    EmptyRequest,
    /// A count would pass the store's maximum
    /// ([`StockStore::quantity_max`](crate::StockStore::quantity_max)) or a version would
    /// pass its maximum.
    #[error("overflow on SKU {sku:?}: a count would pass the store's maximum")]
    Overflow {
        /// The SKU whose count would overflow.
        sku: K,
    },
    /// The reservation was never issued, or was already committed, released or expired.
    #[error("unknown reservation {0}")]
    UnknownReservation(ReservationId),
    /// A waiting reservation ([`WaitingStore::reserve_timeout`](crate::WaitingStore::reserve_timeout))
    /// ran out of time; every line it held was given back.
    #[error("timed out waiting for stock")]
    Timeout,
    /// The optimistic store gave up after its retry bound: that many compare-and-swap
    /// attempts lost to other writers
    /// ([`OptimisticStore::RETRIES_MAX`](crate::OptimisticStore::RETRIES_MAX) by default, or
    /// the builder's [`retries_max`](crate::StoreBuilder::retries_max)).
    #[error("conflict on SKU {sku:?}: gave up after {attempts} attempts")]
    Conflict {
        /// The SKU whose word kept changing.
        sku: K,
        /// Compare-and-swap attempts made.
        attempts: u32,
    },
    /// The hold was past its deadline (its TTL ran out) when it was committed, released or
    /// extended: it expired on this call and its stock went back. From now on the id is
    /// unknown.
    #[error("reservation {0} expired")]
    Expired(ReservationId),
    /// The idempotency key was already used with other lines (while its hold is open or
    /// within the store's retention after it resolved); nothing was held.
    #[error("idempotency key {key:?} was used for reservation {id} with other lines")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The reservation the key stands for.
        id: ReservationId,
    },
    /// The idempotency key belongs to a hold that has ended (committed, released or
    /// expired) within the store's retention: a retry with it holds nothing, and there
    /// is no open hold to commit. `outcome` says what became of the hold; to hold again
    /// (for example after a failed payment), use a new key.
    #[error("idempotency key {key:?} made reservation {id}, which was already {outcome}")]
    HoldEnded {
        /// The key.
        key: String,
        /// The reservation the key made.
        id: ReservationId,
        /// What became of it.
        outcome: HoldOutcome,
    },
    /// A waiting request would have to queue for more units of one SKU than a
    /// [`MonitorStore`](crate::MonitorStore) (or `RedisStore`) lets a waiter wait for: the
    /// SKU's wait room, its on hand plus the store's
    /// [`wait_units_max`](crate::StoreBuilder::wait_units_max) (by default
    /// [`MonitorStore::WAIT_UNITS_MAX`](crate::MonitorStore::WAIT_UNITS_MAX), 100 units;
    /// `RedisStore`'s builder has the same setting; see
    /// [`MonitorStore::queue_level`](crate::MonitorStore::queue_level)). Refused before it
    /// queues, so it never keeps the SKU from other buyers; nothing stays held.
    #[error("a waiter may wait for at most {limit} units of SKU {sku:?}, not {requested}")]
    WaitTooLarge {
        /// The SKU.
        sku: K,
        /// Units requested on this SKU (the merged quantity of its lines).
        requested: u64,
        /// The most a waiter could wait for on this SKU when the request was checked (the
        /// SKU's `wait_room`).
        limit: u64,
    },
    /// The idempotency key was empty or longer than
    /// [`IDEMPOTENCY_KEY_BYTES_MAX`](crate::IDEMPOTENCY_KEY_BYTES_MAX) bytes; nothing was
    /// held.
    #[error("invalid idempotency key: {length_bytes} bytes (1 to 255 allowed)")]
    InvalidIdempotencyKey {
        /// The key's length in bytes of UTF-8.
        length_bytes: usize,
    },
    /// A [`commit_partial`](crate::StockStore::commit_partial) named a SKU the hold does not
    /// hold; nothing changed, the hold stays open.
    #[error("reservation {id} holds no units of SKU {sku:?}")]
    NotInHold {
        /// The hold.
        id: ReservationId,
        /// The SKU it does not hold.
        sku: K,
    },
    /// A [`commit_partial`](crate::StockStore::commit_partial) asked to commit more units of
    /// a SKU than the hold holds; nothing changed, the hold stays open.
    #[error("reservation {id} holds {held} units of SKU {sku:?}, not {requested}")]
    AboveHold {
        /// The hold.
        id: ReservationId,
        /// The SKU.
        sku: K,
        /// Units the hold holds of it.
        held: u64,
        /// Units asked to commit (the merged quantity of its lines).
        requested: u64,
    },
    /// The shared engine (`RedisStore`, feature `redis`) could not be
    /// reached, timed out or failed. **The call may or may not have taken effect**: retry a
    /// hold with an [`idempotency_key`](crate::ReserveOptions::idempotency_key), so that a
    /// retry never holds twice, and read the level back before retrying a sale.
    #[error("the stock engine is unavailable: {reason}")]
    Unavailable {
        /// What failed (the client's or the server's message).
        reason: String,
    },
    /// The SKU cannot be a key of the shared engine: its key is longer than
    /// `SKU_KEY_BYTES_MAX` bytes (feature `redis`). Nothing
    /// changed.
    #[error("SKU {0:?} cannot be a key of the shared engine")]
    InvalidSku(K),
}
