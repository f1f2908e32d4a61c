//! The idempotency table: key -> the hold it made, kept while the hold is open and for a
//! bounded retention after it resolves.

use std::collections::VecDeque;
use std::sync::Arc as SharedKey;
use std::time::{Duration, Instant};

use crate::error::StockError;
use crate::reservation::{HoldOutcome, Reservation, ReservationId};
use crate::sync::{Arc, Mutex, ShardedMap};

/// How long a store remembers the idempotency key of a resolved hold, by default: 24
/// hours (the retention of Stripe's idempotency keys). Within it, a retry with the same
/// key and lines holds nothing and is answered [`StockError::HoldEnded`], naming what
/// became of the hold; after it, the key is forgotten and a request with it holds anew. Set per store with
/// [`StoreBuilder::idempotency_retention`](crate::StoreBuilder::idempotency_retention).
///
/// # Examples
///
/// ```
/// assert_eq!(stockledger::IDEMPOTENCY_RETENTION.as_secs(), 24 * 60 * 60);
/// ```
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How many keys of resolved holds a store remembers at most, by default. Past it, the
/// keys resolved longest ago are forgotten first, even within
/// [`IDEMPOTENCY_RETENTION`]. Keys of open holds are never forgotten (there is one per
/// open hold). Set per store with
/// [`StoreBuilder::idempotency_keys_max`](crate::StoreBuilder::idempotency_keys_max).
///
/// # Examples
///
/// ```
/// assert_eq!(stockledger::IDEMPOTENCY_KEYS_MAX, 100_000);
/// ```
pub const IDEMPOTENCY_KEYS_MAX: usize = 100_000;

/// The longest idempotency key a store accepts, in bytes of UTF-8: 255 (the limit of
/// Stripe's `Idempotency-Key`). A longer key, or an empty one, is refused with
/// [`StockError::InvalidIdempotencyKey`], so
/// that remembered keys stay bounded in memory.
///
/// # Examples
///
/// ```
/// use stockledger::{
///     PessimisticStore, ReserveOptions, StockError, StockStore, IDEMPOTENCY_KEY_BYTES_MAX,
/// };
///
/// let store = PessimisticStore::new();
/// store.restock(&"SKU1003", 1)?;
/// let too_long = ReserveOptions::new().idempotency_key("k".repeat(IDEMPOTENCY_KEY_BYTES_MAX + 1));
/// assert_eq!(
///     store.reserve_with(&[("SKU1003", 1)], &too_long),
///     Err(StockError::InvalidIdempotencyKey { length_bytes: 256 }),
/// );
/// # Ok::<(), StockError<&str>>(())
/// ```
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// Checks an idempotency key against [`IDEMPOTENCY_KEY_BYTES_MAX`].
///
/// # Errors
///
/// [`StockError::InvalidIdempotencyKey`] for an empty key or one longer than the limit.
pub(crate) fn validate_key<K>(key: &str) -> Result<(), StockError<K>> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(StockError::InvalidIdempotencyKey {
            length_bytes: key.len(),
        });
    }
    Ok(())
}

/// What a key stands for, guarded by its slot's mutex.
#[derive(Debug)]
pub(crate) enum KeySlot<K> {
    /// Just created: no hold yet. A slot left vacant is removed before its lock is released.
    Vacant,
    /// The key's hold is open.
    Open(Reservation<K>),
    /// The key's hold resolved, as the outcome says; remembered until pruned.
    Resolved(Reservation<K>, HoldOutcome),
    /// Pruned: no longer in the table. Whoever finds it looks the key up again.
    Removed,
}

/// A key of a resolved hold as a snapshot copies it (and a restore brings it back).
#[derive(Debug, Clone)]
pub(crate) struct ResolvedKey<K> {
    /// The key.
    pub(crate) key: SharedKey<str>,
    /// The hold it made.
    pub(crate) reservation: Reservation<K>,
    /// How the hold ended.
    pub(crate) outcome: HoldOutcome,
    /// When it ended, by the store's clock.
    pub(crate) resolved_at: Instant,
}

/// A resolved key waiting to be forgotten, in resolution order.
#[derive(Debug)]
struct Retired {
    resolved_at: Instant,
    key: SharedKey<str>,
    id: ReservationId,
}

/// The idempotency keys of one store.
///
/// Lock order (deadlock freedom): a key's slot is locked before any SKU lock and before any
/// registry or map lock, and no one locks a slot while holding any of those; no one locks
/// two slots at once; the `retired` queue is never held while a slot is locked.
pub(crate) struct KeyTable<K> {
    /// Key -> its slot; each slot's mutex guards what the key stands for.
    slots: ShardedMap<SharedKey<str>, Arc<Mutex<KeySlot<K>>>>,
    /// Resolved keys, oldest first; its mutex guards only the queue.
    retired: Mutex<VecDeque<Retired>>,
    /// How long a resolved key is remembered.
    retention: Duration,
    /// How many resolved keys are remembered at most.
    keys_max: usize,
}

impl<K: Clone> KeyTable<K> {
    pub(crate) fn new(retention: Duration, keys_max: usize) -> Self {
        Self {
            slots: ShardedMap::new(),
            retired: Mutex::new(VecDeque::new()),
            retention,
            keys_max,
        }
    }

    /// Calls `f` with `key`'s slot locked (created vacant when absent), and removes the slot
    /// if `f` leaves it vacant. Concurrent calls with one key run `f` one after the other.
    ///
    /// Terminates: a retry happens only when another caller removed the slot meanwhile.
    pub(crate) fn with_slot<R>(
        &self,
        key: &SharedKey<str>,
        f: impl FnOnce(&mut KeySlot<K>) -> R,
    ) -> R {
        loop {
            let slot = self
                .slots
                .get_or_insert_with(key, || Arc::new(Mutex::new(KeySlot::Vacant)));
            let mut state = slot.lock();
            if matches!(*state, KeySlot::Removed) {
                continue;
            }
            let result = f(&mut state);
            if matches!(*state, KeySlot::Vacant) {
                *state = KeySlot::Removed;
                self.slots.remove(key);
            }
            return result;
        }
    }

    /// Records that the hold `id` of `key` resolved at `now`, as `outcome` says.
    pub(crate) fn resolved(
        &self,
        key: &SharedKey<str>,
        id: ReservationId,
        now: Instant,
        outcome: HoldOutcome,
    ) {
        let Some(slot) = self.slots.get_cloned(key) else {
            return;
        };
        {
            let mut state = slot.lock();
            match &*state {
                KeySlot::Open(reservation) if reservation.id() == id => {
                    *state = KeySlot::Resolved(reservation.clone(), outcome);
                }
                _ => return,
            }
        }
        self.retired.lock().push_back(Retired {
            resolved_at: now,
            key: key.clone(),
            id,
        });
    }

    /// Forgets resolved keys past the retention at `now`, and the oldest ones past
    /// `keys_max`. Amortised O(1) per resolved key.
    pub(crate) fn prune(&self, now: Instant) {
        let mut forgotten = Vec::new();
        {
            let mut retired = self.retired.lock();
            while let Some(oldest) = retired.front() {
                let expired = oldest
                    .resolved_at
                    .checked_add(self.retention)
                    .is_some_and(|until| until <= now);
                if !expired && retired.len() <= self.keys_max {
                    break;
                }
                forgotten.extend(retired.pop_front());
            }
        }
        for Retired { key, id, .. } in forgotten {
            let Some(slot) = self.slots.get_cloned(&key) else {
                continue;
            };
            let mut state = slot.lock();
            if matches!(&*state, KeySlot::Resolved(reservation, _) if reservation.id() == id) {
                *state = KeySlot::Removed;
                self.slots.remove(&key);
            }
        }
    }

    /// How long a resolved key is remembered.
    pub(crate) fn retention(&self) -> Duration {
        self.retention
    }

    /// A copy of the resolved keys still remembered, oldest first. The retired queue is
    /// copied under its lock, then each slot is read alone (the lock order above).
    pub(crate) fn copy_resolved(&self) -> Vec<ResolvedKey<K>> {
        let retired: Vec<(SharedKey<str>, ReservationId, Instant)> = self
            .retired
            .lock()
            .iter()
            .map(|retired| (retired.key.clone(), retired.id, retired.resolved_at))
            .collect();
        let mut keys = Vec::with_capacity(retired.len());
        for (key, id, resolved_at) in retired {
            let Some(slot) = self.slots.get_cloned(&key) else {
                continue;
            };
            let state = slot.lock();
            if let KeySlot::Resolved(reservation, outcome) = &*state {
                if reservation.id() == id {
                    keys.push(ResolvedKey {
                        key,
                        reservation: reservation.clone(),
                        outcome: *outcome,
                        resolved_at,
                    });
                }
            }
        }
        keys
    }

    /// Records a restored key of a resolved hold (call oldest first, on a table nobody
    /// uses yet).
    pub(crate) fn restore_resolved(&self, resolved: ResolvedKey<K>) {
        let ResolvedKey {
            key,
            reservation,
            outcome,
            resolved_at,
        } = resolved;
        let id = reservation.id();
        self.with_slot(&key, |slot| *slot = KeySlot::Resolved(reservation, outcome));
        self.retired.lock().push_back(Retired {
            resolved_at,
            key,
            id,
        });
    }

    /// Number of keys remembered (open and resolved).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

impl<K: Clone + PartialEq> KeySlot<K> {
    /// The answer to a retry with `lines`: the key's open reservation when the lines
    /// match, [`StockError::HoldEnded`] when they match a hold that has ended, or
    /// [`StockError::IdempotencyConflict`]. `None` for a vacant slot (hold anew).
    pub(crate) fn replay(
        &self,
        key: &SharedKey<str>,
        lines: &[(K, u64)],
    ) -> Option<Result<Reservation<K>, StockError<K>>> {
        let (KeySlot::Open(reservation) | KeySlot::Resolved(reservation, _)) = self else {
            return None;
        };
        Some(if reservation.lines() != lines {
            Err(StockError::IdempotencyConflict {
                key: key.to_string(),
                id: reservation.id(),
            })
        } else if let KeySlot::Resolved(_, outcome) = self {
            Err(StockError::HoldEnded {
                key: key.to_string(),
                id: reservation.id(),
                outcome: *outcome,
            })
        } else {
            Ok(reservation.clone())
        })
    }
}
