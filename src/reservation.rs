//! The public value types of a hold: [`ReservationId`] and [`Reservation`], with the
//! merged lines a hold keeps ([`HoldLines`]). The registry that opens and resolves holds is
//! `lifecycle::registry`.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// The id of a reservation (hold).
///
/// Ids are unique across every store in the process: an id issued by one store is never
/// an open hold in another, and a resolved id is never issued again. They are opaque and
/// use all 64 bits (the pessimistic store's holds that live in their SKU's slot have the
/// top bit set): carry them to JavaScript as strings, whose numbers hold integers exactly
/// only up to 2⁵³.
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
///
/// With the `serde` feature it (de)serializes as its number: `42`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct ReservationId(u64);

impl ReservationId {
    /// The id with the raw value `raw`, for ids stored outside the process and read back.
    ///
    /// An id that no store issued is simply unknown: resolving it returns
    /// [`StockError::UnknownReservation`](crate::StockError::UnknownReservation).
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{PessimisticStore, ReservationId, StockError, StockStore};
    ///
    /// let store = PessimisticStore::<&str>::new();
    /// let never_issued = ReservationId::from_u64(u64::MAX);
    /// assert_eq!(store.release(never_issued), Err(StockError::UnknownReservation(never_issued)));
    /// ```
    pub const fn from_u64(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value of this id.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(stockledger::ReservationId::from_u64(42).get(), 42);
    /// ```
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What became of a hold that is no longer open: the answer of
/// [`StockError::HoldEnded`](crate::StockError::HoldEnded), when a request retried with
/// the idempotency key of a hold that has ended.
///
/// # Examples
///
/// ```
/// use stockledger::{HoldOutcome, PessimisticStore, ReserveOptions, StockError, StockStore};
///
/// let store = PessimisticStore::new();
/// store.restock(&"SKU1005", 2)?;
/// let options = ReserveOptions::new().idempotency_key("cart-7");
/// let hold = store.reserve_with(&[("SKU1005", 1)], &options)?;
/// store.release(hold.id())?; // payment failed
/// let retry = store.reserve_with(&[("SKU1005", 1)], &options);
/// assert_eq!(
///     retry,
///     Err(StockError::HoldEnded { key: "cart-7".into(), id: hold.id(), outcome: HoldOutcome::Released })
/// );
/// assert_eq!(HoldOutcome::Released.to_string(), "released");
/// # Ok::<(), StockError<&str>>(())
/// ```
///
/// With the `serde` feature it (de)serializes as its name: `"Committed"`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum HoldOutcome {
    /// Committed: its units were sold.
    Committed,
    /// Released: its units went back (a `release`, or a dropped guard).
    Released,
    /// Expired: it passed its deadline and its units went back.
    Expired,
}

impl fmt::Display for HoldOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HoldOutcome::Committed => "committed",
            HoldOutcome::Released => "released",
            HoldOutcome::Expired => "expired",
        })
    }
}

/// An all-or-nothing hold on one or more lines `(sku, units)`.
///
/// The lines are merged (one line per SKU, quantities summed) and sorted by SKU. Cloning
/// is cheap: a single line is kept inline (cloning clones its SKU), several lines are
/// shared.
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
///
/// With the `serde` feature it (de)serializes as `{"id":7,"lines":[["a",2],["b",2]],"ttl_ms":null}`:
/// the deadline goes out as `ttl_ms`, the milliseconds left to live at serialization
/// (measured from `Instant::now()`, rounded up; 0 once past; `null` without a deadline), and
/// comes back as `Instant::now() + ttl_ms`. With a [`ManualClock`](crate::ManualClock)
/// that was advanced, it is off by the advance. Reading one back checks that it has lines
/// and no zero quantity; the store still decides by id alone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(bound(deserialize = "K: serde::Deserialize<'de> + Ord"))
)]
pub struct Reservation<K> {
    pub(crate) id: ReservationId,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::serde_impls::hold_lines")
    )]
    pub(crate) lines: HoldLines<K>,
    #[cfg_attr(feature = "serde", serde(rename = "ttl_ms", default))]
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_impls::deadline_ttl_ms"))]
    pub(crate) expires_at: Option<Instant>,
}

impl<K> Reservation<K> {
    /// The id to commit or release this hold with.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{PessimisticStore, StockStore};
    ///
    /// let store = PessimisticStore::new();
    /// store.restock(&"tv", 1)?;
    /// let hold = store.reserve(&[("tv", 1)])?;
    /// store.commit(hold.id())?;
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn id(&self) -> ReservationId {
        self.id
    }

    /// The held lines `(sku, units)`: merged, sorted by SKU, every quantity at least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{PessimisticStore, StockStore};
    ///
    /// let store = PessimisticStore::new();
    /// store.restock(&"tv", 3)?;
    /// let hold = store.reserve(&[("tv", 1), ("tv", 2)])?;
    /// assert_eq!(hold.lines(), &[("tv", 3)]); // merged
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn lines(&self) -> &[(K, u64)] {
        &self.lines
    }

    /// When the hold expires; `None` for a hold without a deadline.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use stockledger::{PessimisticStore, ReserveOptions, StockStore};
    ///
    /// let store = PessimisticStore::new();
    /// store.restock(&"tv", 1)?;
    /// let hold = store.reserve_with(&[("tv", 1)], &ReserveOptions::new().ttl(Duration::from_secs(60)))?;
    /// assert!(hold.expires_at().is_some());
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }
}

/// The lines of a hold, merged and sorted by SKU: one line inline (a single-line hold,
/// most holds, takes no allocation of its own), or several in one shared allocation.
///
/// Immutable once the hold is open, so a plain `std` `Arc` even under loom: there is no
/// interleaving to model.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum HoldLines<K> {
    /// A single line.
    One([(K, u64); 1]),
    /// Two or more lines, shared by every copy of the reservation.
    Many(Arc<[(K, u64)]>),
}

impl<K> std::ops::Deref for HoldLines<K> {
    type Target = [(K, u64)];

    fn deref(&self) -> &[(K, u64)] {
        match self {
            HoldLines::One(line) => line,
            HoldLines::Many(lines) => lines,
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for HoldLines<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<K: Clone> From<std::borrow::Cow<'_, [(K, u64)]>> for HoldLines<K> {
    /// One line is cloned inline; several move into one shared allocation.
    fn from(lines: std::borrow::Cow<'_, [(K, u64)]>) -> Self {
        match &*lines {
            [line] => HoldLines::One([line.clone()]),
            _ => HoldLines::Many(lines.into_owned().into()),
        }
    }
}

impl<K> From<Vec<(K, u64)>> for HoldLines<K> {
    /// One line moves inline; several move into one shared allocation.
    fn from(mut lines: Vec<(K, u64)>) -> Self {
        match lines.pop() {
            Some(line) if lines.is_empty() => HoldLines::One([line]),
            Some(last) => {
                lines.push(last);
                HoldLines::Many(lines.into())
            }
            None => HoldLines::Many(lines.into()),
        }
    }
}

impl<K> Reservation<K> {
    /// A hold with these parts, for a store that keeps its holds outside this registry
    /// (the shared engine, feature `redis`): `lines` merged and sorted by SKU.
    #[cfg(feature = "redis")]
    pub(crate) fn from_parts(
        id: ReservationId,
        lines: Vec<(K, u64)>,
        expires_at: Option<Instant>,
    ) -> Self {
        Self {
            id,
            lines: lines.into(),
            expires_at,
        }
    }
}
