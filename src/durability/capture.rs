//! Taking a [`Snapshot`] of a store and building a store from one: the hooks each
//! in-memory store implements ([`SkuTable`]) and the code written once over them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::snapshot::{
    duration_ms, HoldSnapshot, KeySnapshot, SkuSnapshot, Snapshot, SnapshotError,
    SNAPSHOT_FORMAT_VERSION,
};
use crate::level::{Limits, StockLevel};
use crate::lifecycle::idempotency::{validate_key, ResolvedKey};
use crate::lifecycle::{slot_holds, Backend};
use crate::reservation::{HoldLines, Reservation};
use crate::store::Sku;

/// What a store offers a snapshot besides its lifecycle: a walk over its SKUs and a way to
/// create a SKU in a given state.
pub(crate) trait SkuTable<K: Sku>: Backend<K> {
    /// The store's count limits (the compare-and-swap stores pack their counts).
    const LIMITS: Limits;

    /// Number of SKUs.
    fn sku_count(&self) -> usize;

    /// Calls `f` with every SKU (borrowed from the store's map, where it stays put for the
    /// store's life), its level and its low-stock threshold, each read under the SKU's own
    /// lock or in one atomic load. Called with the snapshot gate closed.
    fn each_sku<'a>(&'a self, f: &mut dyn FnMut(&'a K, StockLevel, u64));

    /// Creates `sku` at `level` with `threshold`, on a store nobody uses yet; `false` when
    /// the store's SKU map is full.
    fn restore_sku(&self, sku: &K, level: StockLevel, threshold: u64) -> bool;
}

/// The snapshot of `store` (see [`Snapshot`]).
///
/// # Errors
///
/// [`SnapshotError::Disabled`] for a store built without a snapshot gate.
pub(crate) fn take<K: Sku, S: SkuTable<K>>(store: &S) -> Result<Snapshot<K>, SnapshotError> {
    let registry = &store.lifecycle().registry;
    // The clock is user code: read before the gate closes.
    let now = registry.clock().now();
    // Room for every SKU before the gate closes (one that appears meanwhile grows it).
    let mut skus: Vec<(&K, StockLevel, u64)> = Vec::with_capacity(store.sku_count() + 64);
    let closed = registry.close().ok_or(SnapshotError::Disabled)?;
    // The pause: counts read, SKUs borrowed (cloned after the gate reopens), holds copied.
    store.each_sku(&mut |sku, level, threshold| skus.push((sku, level, threshold)));
    let mut holds = registry.copy_holds();
    store.copy_slot_holds(&mut holds);
    drop(closed);
    let skus = skus
        .into_iter()
        .map(|(sku, level, threshold)| (sku.clone(), level, threshold))
        .collect();
    // Keys of resolved holds are not part of any count; pruning may forget some
    // meanwhile, as it would have a moment later.
    let keys = registry.copy_resolved_keys();
    let retention = registry.retention();
    Ok(assemble(skus, holds, keys, retention, now))
}

/// The snapshot from the copied parts (outside the gate: sorting and summing are not part
/// of the pause).
fn assemble<K: Sku>(
    mut skus: Vec<(K, StockLevel, u64)>,
    mut holds: Vec<(Reservation<K>, Option<Arc<str>>)>,
    keys: Vec<ResolvedKey<K>>,
    retention: Duration,
    now: Instant,
) -> Snapshot<K> {
    let mut reserved: HashMap<&K, u64> = HashMap::new();
    for (hold, _) in &holds {
        for (sku, quantity) in hold.lines() {
            *reserved.entry(sku).or_default() += quantity;
        }
    }
    let reserved: HashMap<K, u64> = reserved
        .into_iter()
        .map(|(sku, units)| (sku.clone(), units))
        .collect();
    skus.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    holds.sort_unstable_by_key(|(hold, _)| hold.id());
    let ttl_ms = |deadline: Instant| duration_ms(deadline.saturating_duration_since(now));
    Snapshot {
        format_version: SNAPSHOT_FORMAT_VERSION,
        skus: skus
            .into_iter()
            .map(|(sku, level, threshold)| SkuSnapshot {
                reserved: reserved.get(&sku).copied().unwrap_or(0),
                sku,
                on_hand: level.on_hand,
                version: level.version,
                low_stock_threshold: threshold,
            })
            .collect(),
        holds: holds
            .into_iter()
            .map(|(hold, key)| HoldSnapshot {
                id: hold.id(),
                ttl_ms: hold.expires_at().map(ttl_ms),
                lines: hold.lines().to_vec(),
                idempotency_key: key.map(|key| key.to_string()),
            })
            .collect(),
        resolved_keys: keys
            .into_iter()
            .map(|key| KeySnapshot {
                key: key.key.to_string(),
                id: key.reservation.id(),
                lines: key.reservation.lines().to_vec(),
                outcome: key.outcome,
                retained_ms: key
                    .resolved_at
                    .checked_add(retention)
                    .map_or(u64::MAX, ttl_ms),
            })
            .collect(),
        idempotency_retention_ms: duration_ms(retention),
    }
}

/// Checks that `snapshot` is whole and fits a store with `limits`.
///
/// # Errors
///
/// [`SnapshotError::UnsupportedVersion`] or [`SnapshotError::Invalid`].
pub(crate) fn validate<K: Sku>(
    snapshot: &Snapshot<K>,
    limits: Limits,
) -> Result<(), SnapshotError> {
    if snapshot.format_version != SNAPSHOT_FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion {
            found: snapshot.format_version,
            supported: SNAPSHOT_FORMAT_VERSION,
        });
    }
    let invalid = |reason: String| Err(SnapshotError::Invalid { reason });
    let mut held: HashMap<&K, u64> = HashMap::new();
    let mut ids = HashSet::new();
    for hold in &snapshot.holds {
        if !ids.insert(hold.id) {
            return invalid(format!("hold {} appears twice", hold.id));
        }
        check_lines(&hold.lines).map_err(|reason| SnapshotError::Invalid {
            reason: format!("hold {}: {reason}", hold.id),
        })?;
        if let Some(key) = &hold.idempotency_key {
            check_key(key)?;
        }
        for (sku, quantity) in &hold.lines {
            let units = held.entry(sku).or_default();
            *units = units.checked_add(*quantity).unwrap_or(u64::MAX);
        }
    }
    let mut seen = HashSet::new();
    for sku in &snapshot.skus {
        if !seen.insert(&sku.sku) {
            return invalid(format!("SKU {:?} appears twice", sku.sku));
        }
        let holds = held.remove(&sku.sku).unwrap_or(0);
        if sku.reserved != holds {
            return invalid(format!(
                "SKU {:?} has {} reserved units, its holds {holds}",
                sku.sku, sku.reserved
            ));
        }
        let fits = sku.reserved <= sku.on_hand
            && sku.on_hand <= limits.count_max
            && sku
                .version
                .checked_add(sku.reserved)
                .is_some_and(|sum| sum <= limits.version_max);
        if !fits {
            return invalid(format!(
                "SKU {:?}: on hand {}, reserved {}, version {} do not fit this store",
                sku.sku, sku.on_hand, sku.reserved, sku.version
            ));
        }
    }
    if let Some(sku) = held.keys().next() {
        return invalid(format!("a hold is on SKU {sku:?}, which is not listed"));
    }
    for key in &snapshot.resolved_keys {
        check_key(&key.key)?;
        check_lines(&key.lines).map_err(|reason| SnapshotError::Invalid {
            reason: format!("key {:?}: {reason}", key.key),
        })?;
    }
    Ok(())
}

/// Checks that hold lines are non-empty, merged and sorted, with no zero quantity.
fn check_lines<K: Sku>(lines: &[(K, u64)]) -> Result<(), String> {
    if lines.is_empty() {
        return Err("no lines".into());
    }
    if lines.iter().any(|(_, quantity)| *quantity == 0) {
        return Err("a line of 0 units".into());
    }
    if !lines.windows(2).all(|pair| pair[0].0 < pair[1].0) {
        return Err("lines not merged and sorted by SKU".into());
    }
    Ok(())
}

/// Checks an idempotency key as `reserve_with` does.
fn check_key(key: &str) -> Result<(), SnapshotError> {
    validate_key::<()>(key).map_err(|_| SnapshotError::Invalid {
        reason: format!("idempotency key of {} bytes", key.len()),
    })
}

/// Puts `store`, just built and used by nobody, in the state of `snapshot` (validated for
/// its limits by [`validate`]). Holds get their remaining TTL from the store's clock now;
/// ids issued from now on are past every restored hold's.
pub(crate) fn apply<K: Sku, S: SkuTable<K>>(store: &S, snapshot: Snapshot<K>) {
    let registry = &store.lifecycle().registry;
    let now = registry.clock().now();
    for sku in &snapshot.skus {
        let level = StockLevel {
            on_hand: sku.on_hand,
            reserved: sku.reserved,
            version: sku.version,
        };
        let created = store.restore_sku(&sku.sku, level, sku.low_stock_threshold);
        debug_assert!(created, "a snapshot has no more SKUs than a store holds");
    }
    let mut largest_id = 0;
    for hold in snapshot.holds {
        // A hold that lived in its SKU's slot comes back into the registry; the counter
        // moves past its value, so no new hold gets its id.
        let serial = slot_holds::serial_of(hold.id).unwrap_or(hold.id.get());
        largest_id = largest_id.max(serial);
        let reservation = Reservation {
            id: hold.id,
            lines: HoldLines::from(hold.lines),
            expires_at: hold
                .ttl_ms
                .and_then(|ms| now.checked_add(Duration::from_millis(ms))),
        };
        registry.restore_hold(reservation, hold.idempotency_key.map(Arc::from));
    }
    crate::sync::skip_reservation_ids_through(largest_id);
    let retention = registry.retention();
    for key in snapshot.resolved_keys {
        largest_id = largest_id.max(key.id.get());
        // Remembered for what was left of its retention: resolved that long before.
        let left = Duration::from_millis(key.retained_ms).min(retention);
        let resolved_at = now.checked_sub(retention - left).unwrap_or(now);
        registry.restore_resolved_key(ResolvedKey {
            key: Arc::from(key.key),
            reservation: Reservation {
                id: key.id,
                lines: HoldLines::from(key.lines),
                expires_at: None,
            },
            outcome: key.outcome,
            resolved_at,
        });
    }
    crate::sync::skip_reservation_ids_through(largest_id);
}

/// `snapshot()` and the builder's `restore()` for one in-memory store type, with its docs.
macro_rules! snapshot_methods {
    ($store:ident) => {
        impl<K: $crate::store::Sku> $crate::$store<K> {
            /// A consistent copy of this store at one instant: every SKU, every open hold, the
            /// remembered idempotency keys (see [`Snapshot`](crate::Snapshot)).
            ///
            /// # Blocking
            ///
            /// Closes the store's snapshot gate for the copy: changes started before wait
            /// to finish, changes started meanwhile wait for the copy, reads do not wait.
            /// The copy is linear in SKUs, open holds and keys (at one million SKUs, a
            /// pause of tens of milliseconds: the figures are in the benchmark report).
            /// The clock is read before the gate closes; no user code runs while it is
            /// closed.
            ///
            /// # Errors
            ///
            /// [`SnapshotError::Disabled`](crate::SnapshotError::Disabled) when the store
            /// was built without [`snapshots`](crate::StoreBuilder::snapshots).
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("use stockledger::{", stringify!($store), ", StockStore};")]
            ///
            #[doc = concat!("let store = ", stringify!($store), "::builder().snapshots().build();")]
            /// store.restock(&"SKU1004", 2)?;
            /// store.sell(&[("SKU1004", 1)])?;
            /// let snapshot = store.snapshot().expect("built with snapshots");
            /// assert_eq!((snapshot.skus[0].on_hand, snapshot.skus[0].version), (1, 2));
            /// # Ok::<(), stockledger::StockError<&str>>(())
            /// ```
            pub fn snapshot(&self) -> Result<$crate::Snapshot<K>, $crate::SnapshotError> {
                $crate::durability::capture::take(self)
            }
        }

        impl<K: $crate::store::Sku> $crate::StoreBuilder<K, $crate::$store<K>> {
            /// Builds the store in the state of `snapshot` (every SKU, open hold and
            /// remembered key), with a snapshot gate. Holds keep their ids and get what was
            /// left of their TTL from the store's clock: a hold restored past its deadline
            /// expires as usual (a `commit` answers `Expired`, a sweep gives its units
            /// back). Ids the store issues from now on are past every restored one. Other
            /// settings (clock, sink, retention) are this builder's.
            ///
            /// # Errors
            ///
            /// [`SnapshotError::UnsupportedVersion`](crate::SnapshotError::UnsupportedVersion)
            /// for another format, [`SnapshotError::Invalid`](crate::SnapshotError::Invalid)
            /// for a snapshot that contradicts itself (reserved units that no hold owns,
            /// unsorted lines, a hold on an unlisted SKU, an invalid key) or exceeds this
            /// store's limits.
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("use stockledger::{", stringify!($store), ", StockStore};")]
            ///
            #[doc = concat!("let store = ", stringify!($store), "::builder().snapshots().build();")]
            /// store.restock(&"SKU1004", 2)?;
            /// let hold = store.reserve(&[("SKU1004", 1)])?;
            /// let snapshot = store.snapshot().expect("built with snapshots");
            #[doc = concat!("let copy = ", stringify!($store), "::builder().restore(snapshot).expect(\"valid\").build();")]
            /// assert_eq!(copy.level(&"SKU1004"), store.level(&"SKU1004"));
            /// copy.release(hold.id())?;
            /// # Ok::<(), stockledger::StockError<&str>>(())
            /// ```
            pub fn restore(
                self,
                snapshot: $crate::Snapshot<K>,
            ) -> Result<Self, $crate::SnapshotError> {
                let limits = <$crate::$store<K> as $crate::durability::capture::SkuTable<K>>::LIMITS;
                $crate::durability::capture::validate(&snapshot, limits)?;
                Ok(self.set_restored(snapshot))
            }
        }
    };
}

snapshot_methods!(PessimisticStore);
snapshot_methods!(OptimisticStore);
snapshot_methods!(MonitorStore);
snapshot_methods!(AdaptiveStore);
