//! Reservations (holds) and the registry that decides which resolution wins.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::error::StockError;
use crate::sync::{self, ShardedMap};

/// The id of a reservation (hold).
///
/// Ids are unique across every store in the process: an id issued by one store is never
/// an open hold in another, and a resolved id is never issued again.
///
/// # Examples
///
/// ```
/// use stockledger::{MonitorStore, ReservationId, StockError, StockStore};
///
/// let store = MonitorStore::new();
/// store.restock(&1_u32, 3)?;
/// let hold = store.reserve(&[(1, 2)])?;
/// let id: ReservationId = hold.id();
/// assert_eq!(ReservationId::from_u64(id.get()), id); // e.g. after a round trip through a database
/// store.commit(id)?;
/// assert_eq!(store.commit(id), Err(StockError::UnknownReservation(id)));
/// # Ok::<(), StockError<u32>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReservationId(u64);

impl ReservationId {
    /// The id with the raw value `raw`, for ids stored outside the process and read back.
    ///
    /// An id that no store issued is simply unknown: resolving it returns
    /// [`StockError::UnknownReservation`].
    pub const fn from_u64(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value of this id.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// An all-or-nothing hold on one or more lines `(sku, units)`.
///
/// The lines are merged (one line per SKU, quantities summed) and sorted by SKU. Cloning
/// is cheap: the lines are shared.
///
/// # Examples
///
/// ```
/// use stockledger::{PessimisticStore, StockStore};
///
/// let store = PessimisticStore::new();
/// store.restock(&"b", 5)?;
/// store.restock(&"a", 5)?;
/// let hold = store.reserve(&[("b", 1), ("a", 2), ("b", 1)])?;
/// assert_eq!(hold.lines(), &[("a", 2), ("b", 2)]);
/// assert_eq!(hold.expires_at(), None);
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation<K> {
    id: ReservationId,
    /// Immutable once the hold is open, so a plain `std` `Arc` even under loom: there is
    /// no interleaving to model (and loom's `Arc` has no `From<Vec>` nor `PartialEq`).
    lines: Arc<[(K, u64)]>,
    expires_at: Option<Instant>,
}

impl<K> Reservation<K> {
    /// The id to commit or release this hold with.
    pub fn id(&self) -> ReservationId {
        self.id
    }

    /// The held lines `(sku, units)`: merged, sorted by SKU, every quantity at least 1.
    pub fn lines(&self) -> &[(K, u64)] {
        &self.lines
    }

    /// When the hold expires; `None` for a hold without a deadline.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }
}

/// The open holds of one store: reservation id -> its lines.
///
/// Removing an entry is what decides the single winner among racing commits and releases
/// of one hold: exactly one `resolve` gets the reservation, every other gets
/// [`StockError::UnknownReservation`], and only the winner moves stock.
pub(crate) struct Registry<K> {
    /// Open holds; an entry is inserted after its stock is held and removed before its
    /// stock moves again.
    holds: ShardedMap<ReservationId, Reservation<K>>,
}

impl<K: Clone> Registry<K> {
    pub(crate) fn new() -> Self {
        Self {
            holds: ShardedMap::new(),
        }
    }

    /// Records a hold whose stock is already reserved and returns it.
    pub(crate) fn open(&self, lines: Vec<(K, u64)>) -> Reservation<K> {
        let reservation = Reservation {
            id: ReservationId(sync::next_reservation_id()),
            lines: lines.into(),
            expires_at: None,
        };
        self.holds.insert(reservation.id, reservation.clone());
        reservation
    }

    /// Removes the hold `id`; the caller, the single winner, then moves its stock.
    ///
    /// # Errors
    ///
    /// [`StockError::UnknownReservation`] when `id` is not open (never issued here, or
    /// already resolved).
    pub(crate) fn resolve(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>> {
        self.holds
            .remove(&id)
            .ok_or(StockError::UnknownReservation(id))
    }

    /// Number of open holds.
    pub(crate) fn len(&self) -> usize {
        self.holds.len()
    }
}
