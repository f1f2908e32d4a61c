//! The public snapshot of an in-memory store: every SKU, every open hold, the remembered
//! idempotency keys, in one versioned, serializable value.

use crate::reservation::{HoldOutcome, ReservationId};

/// The format version this build writes into every [`Snapshot`] and the only one it
/// restores. It changes whenever a field changes meaning.
///
/// # Examples
///
/// ```
/// assert_eq!(stockledger::SNAPSHOT_FORMAT_VERSION, 1);
/// ```
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// A consistent copy of an in-memory store at one instant: what
/// `snapshot()` on [`PessimisticStore`](crate::PessimisticStore),
/// [`OptimisticStore`](crate::OptimisticStore), [`MonitorStore`](crate::MonitorStore) or
/// [`AdaptiveStore`](crate::AdaptiveStore) returns, and what
/// [`StoreBuilder::restore`](crate::StoreBuilder::restore) builds a store from.
///
/// **One linearization point.** The snapshot is copied while the store's snapshot gate is
/// closed ([`StoreBuilder::snapshots`](crate::StoreBuilder::snapshots)): every change
/// (restock, sale, hold, commit, release, extension, expiry) is wholly before it or wholly
/// after it, on every SKU at once. Changes wait while the copy runs; the copy is
/// O(SKUs + open holds + remembered keys).
///
/// **Its position in the event sequence** is the version of each SKU: an event line of SKU
/// `s` at version `v` is reflected in the snapshot exactly when `v <=` the version in
/// `skus` for `s` (versions only grow). A journal replays what came after.
///
/// **Reserved units belong to holds.** Each SKU's `reserved` is the sum of the lines of the
/// open holds in `holds`. On a [`MonitorStore`](crate::MonitorStore), units granted to a
/// waiter that has not finished its hold are not in it: the snapshot is the state as if
/// that waiter had not been served yet (it would be given its units back by a restore).
///
/// Deadlines and key retention are times to live in milliseconds, measured by the store's
/// clock at the snapshot, rounded up: a restore counts them from its own clock, so a
/// hold's time does not run while no store holds it.
///
/// With the `serde` feature it (de)serializes with its field names, SKUs as `K` does,
/// hold ids as numbers.
///
/// # Examples
///
/// ```
/// use stockledger::{OptimisticStore, ReserveOptions, StockStore};
/// use std::time::Duration;
///
/// let store = OptimisticStore::builder().snapshots().build();
/// store.restock(&"SKU1004", 5)?;
/// let options = ReserveOptions::new().ttl(Duration::from_secs(900)).idempotency_key("order-1");
/// let hold = store.reserve_with(&[("SKU1004", 2)], &options)?;
///
/// let snapshot = store.snapshot().expect("built with snapshots");
/// assert_eq!((snapshot.skus[0].on_hand, snapshot.skus[0].reserved), (5, 2));
/// assert_eq!(snapshot.holds[0].id, hold.id());
///
/// // The same state in a new store: the hold can be committed there.
/// let restored = OptimisticStore::builder().restore(snapshot).expect("a valid snapshot").build();
/// restored.commit(hold.id())?;
/// assert_eq!(restored.level(&"SKU1004").unwrap().on_hand, 3);
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Snapshot<K> {
    /// [`SNAPSHOT_FORMAT_VERSION`] of the build that took it.
    pub format_version: u32,
    /// Every SKU, sorted by SKU.
    pub skus: Vec<SkuSnapshot<K>>,
    /// Every open hold, sorted by id.
    pub holds: Vec<HoldSnapshot<K>>,
    /// The idempotency keys of resolved holds still remembered, oldest first (the keys of
    /// open holds are in `holds`).
    pub resolved_keys: Vec<KeySnapshot<K>>,
    /// How long the store remembered a resolved hold's key, in milliseconds (its
    /// [`idempotency_retention`](crate::StoreBuilder::idempotency_retention)); a restore
    /// keeps each key for what is left of it (`KeySnapshot::retained_ms`).
    pub idempotency_retention_ms: u64,
}

/// One SKU of a [`Snapshot`]: its counts, version and low-stock threshold.
///
/// # Examples
///
/// ```
/// use stockledger::{PessimisticStore, StockStore};
///
/// let store = PessimisticStore::builder().snapshots().build();
/// store.restock(&"cable", 4)?;
/// store.set_low_stock_threshold(&"cable", 2)?;
/// let sku = &store.snapshot().unwrap().skus[0];
/// assert_eq!((sku.sku, sku.on_hand, sku.version, sku.low_stock_threshold), ("cable", 4, 1, 2));
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SkuSnapshot<K> {
    /// The SKU.
    pub sku: K,
    /// Units on hand.
    pub on_hand: u64,
    /// Units held by the open holds of the snapshot (their sum on this SKU).
    pub reserved: u64,
    /// The SKU's version: the position of the snapshot in this SKU's events.
    pub version: u64,
    /// The low-stock threshold in units (0: none).
    pub low_stock_threshold: u64,
}

/// One open hold of a [`Snapshot`].
///
/// # Examples
///
/// ```
/// use stockledger::{MonitorStore, StockStore};
///
/// let store = MonitorStore::builder().snapshots().build();
/// store.restock(&"lamp", 4)?;
/// let hold = store.reserve(&[("lamp", 1), ("lamp", 2)])?;
/// let snapshot = store.snapshot().unwrap();
/// assert_eq!(snapshot.holds[0].lines, [("lamp", 3)]);
/// assert_eq!(snapshot.holds[0].ttl_ms, None); // no TTL
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HoldSnapshot<K> {
    /// The hold's id (a restore keeps it, so callers can still commit it).
    pub id: ReservationId,
    /// Its lines, merged and sorted by SKU.
    pub lines: Vec<(K, u64)>,
    /// Milliseconds it had left to live, rounded up (0: past its deadline, so it expires
    /// as soon as the restored store looks at it); `None` without a TTL.
    pub ttl_ms: Option<u64>,
    /// The idempotency key it was made with, if any.
    pub idempotency_key: Option<String>,
}

/// The idempotency key of a resolved hold, as a [`Snapshot`] remembers it: a retry with it
/// is answered [`StockError::HoldEnded`](crate::StockError::HoldEnded) after a restore too.
///
/// # Examples
///
/// ```
/// use stockledger::{HoldOutcome, PessimisticStore, ReserveOptions, StockStore};
///
/// let store = PessimisticStore::builder().snapshots().build();
/// store.restock(&"desk", 1)?;
/// let hold = store.reserve_with(&[("desk", 1)], &ReserveOptions::new().idempotency_key("o-1"))?;
/// store.commit(hold.id())?;
/// let key = &store.snapshot().unwrap().resolved_keys[0];
/// assert_eq!((key.key.as_str(), key.outcome), ("o-1", HoldOutcome::Committed));
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KeySnapshot<K> {
    /// The key.
    pub key: String,
    /// The hold it made.
    pub id: ReservationId,
    /// That hold's lines (a retry with other lines is an
    /// [`IdempotencyConflict`](crate::StockError::IdempotencyConflict)).
    pub lines: Vec<(K, u64)>,
    /// How the hold ended.
    pub outcome: HoldOutcome,
    /// Milliseconds the key had left to be remembered, rounded up.
    pub retained_ms: u64,
}

/// Why a snapshot could not be taken or restored.
///
/// # Examples
///
/// ```
/// use stockledger::{PessimisticStore, SnapshotError};
///
/// let store = PessimisticStore::<&str>::new(); // built without `snapshots()`
/// assert_eq!(store.snapshot(), Err(SnapshotError::Disabled));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum SnapshotError {
    /// The store was built without a snapshot gate
    /// ([`StoreBuilder::snapshots`](crate::StoreBuilder::snapshots)), so it cannot copy a
    /// consistent state while it runs.
    #[error("this store was built without snapshots (StoreBuilder::snapshots)")]
    Disabled,
    /// The snapshot was written in a format this build does not read.
    #[error("snapshot format version {found}, this build reads {supported}")]
    UnsupportedVersion {
        /// The snapshot's `format_version`.
        found: u32,
        /// [`SNAPSHOT_FORMAT_VERSION`].
        supported: u32,
    },
    /// The snapshot contradicts itself or the store's limits (a hold on a SKU it does not
    /// list, reserved units no hold owns, a count past the store's maximum, ...).
    #[error("invalid snapshot: {reason}")]
    Invalid {
        /// What is wrong, in words.
        reason: String,
    },
}

impl<K> Snapshot<K> {
    /// A snapshot of an empty store.
    ///
    /// # Examples
    ///
    /// ```
    /// let empty = stockledger::Snapshot::<String>::empty();
    /// assert!(empty.skus.is_empty() && empty.holds.is_empty());
    /// ```
    pub fn empty() -> Self {
        Self {
            format_version: SNAPSHOT_FORMAT_VERSION,
            skus: Vec::new(),
            holds: Vec::new(),
            resolved_keys: Vec::new(),
            idempotency_retention_ms: duration_ms(crate::IDEMPOTENCY_RETENTION),
        }
    }
}

/// `duration` in whole milliseconds, rounded up, saturating.
pub(crate) fn duration_ms(duration: std::time::Duration) -> u64 {
    let ms = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}
