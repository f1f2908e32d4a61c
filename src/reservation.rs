//! Reservations (holds) and the registry that decides which resolution wins, with the
//! expiry index and idempotency table of its holds.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::error::StockError;
use crate::expiry::ExpiryIndex;
use crate::idempotency::{KeySlot, KeyTable};
use crate::options::ReserveOptions;
use crate::sync::{self, AtomicBool, Condvar, Mutex, Ordering, ShardedMap};

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
    /// [`StockError::UnknownReservation`].
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
    serde(bound(deserialize = "K: serde::Deserialize<'de>"))
)]
pub struct Reservation<K> {
    id: ReservationId,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::serde_impls::hold_lines")
    )]
    lines: HoldLines<K>,
    #[cfg_attr(feature = "serde", serde(rename = "ttl_ms", default))]
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_impls::deadline_ttl_ms"))]
    expires_at: Option<Instant>,
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

/// An open hold as the registry keeps it.
#[derive(Debug, Clone)]
struct Hold<K> {
    /// The hold; taken by the caller that claims it (a claim moves it out rather than
    /// cloning its lines). `None`: a caller won this hold and is moving its stock; the
    /// entry leaves `holds` when the stock has moved ([`Registry::finish`]).
    reservation: Option<Reservation<K>>,
    /// The idempotency key that made it, if any.
    key: Option<Arc<str>>,
    /// A racing call waits for the winner to finish (on [`Registry::settled`]).
    waiters: bool,
}

impl<K: Clone> Hold<K> {
    /// Marks the hold as won by the caller and returns what the caller needs to settle it;
    /// `now` is the clock read before the claim (`None` only for a hold that needs none).
    /// `None` when it was already claimed.
    fn claim(&mut self, now: Option<Instant>) -> Option<Resolved<K>> {
        let reservation = self.reservation.take()?;
        let deadline = reservation.expires_at;
        Some(Resolved {
            reservation,
            key: self.key.clone(),
            expired: deadline
                .zip(now)
                .is_some_and(|(deadline, now)| now >= deadline),
            now,
        })
    }

    /// Whether a caller won this hold and is moving its stock.
    fn is_claimed(&self) -> bool {
        self.reservation.is_none()
    }

    /// The hold's deadline; `None` without one, or once claimed.
    fn expires_at(&self) -> Option<Instant> {
        self.reservation.as_ref()?.expires_at
    }

    /// Whether resolving the hold needs the time: for its deadline, or for its idempotency
    /// key's retention.
    fn needs_clock(&self) -> bool {
        self.expires_at().is_some() || self.key.is_some()
    }
}

/// A hold its caller removed from the registry and so won: the caller moves its stock,
/// then calls [`Registry::finish`].
#[derive(Debug)]
pub(crate) struct Resolved<K> {
    pub(crate) reservation: Reservation<K>,
    key: Option<Arc<str>>,
    /// Its deadline had passed when it was removed: it expires (its stock goes back)
    /// whatever the caller asked for.
    pub(crate) expired: bool,
    /// The clock, read before the claim (never between the claim and
    /// [`Registry::finish`]: the clock is user code); `Some` whenever the hold has a
    /// deadline or an idempotency key.
    now: Option<Instant>,
}

/// What `reserve` found: a new hold, or the hold of an idempotency key already seen.
#[derive(Debug)]
pub(crate) enum Opened<K, M> {
    /// A new hold, and what holding its stock returned.
    New(Reservation<K>, M),
    /// The reservation of a key already seen with the same lines; nothing more held.
    Replay(Reservation<K>),
}

/// What `extend` did.
#[derive(Debug)]
pub(crate) enum Extension<K> {
    /// The hold has its new deadline.
    Extended(Reservation<K>),
    /// The hold was past its deadline: removed, and the caller expires it.
    Expired(Resolved<K>),
}

/// The open holds of one store: reservation id -> its lines and deadline, with the expiry
/// index of their deadlines and the idempotency table of their keys.
///
/// Claiming an entry of `holds` (taking its reservation out, under its shard lock) is what
/// decides the single winner among racing commits, releases and expiries of one hold:
/// exactly one caller gets the hold, every other gets [`StockError::UnknownReservation`],
/// and only the winner moves stock. The entry stays until the winner's stock has moved, and
/// a racing call waits for that before it answers, so a call refused as unknown always
/// comes after the stock moved: racing resolutions are linearizable. Whether the winner
/// commits or expires is decided by the clock **after** the claim: past the deadline the
/// hold expires, never before it (TigerBeetle's pending-transfer timeouts).
pub(crate) struct Registry<K> {
    /// Open holds; an entry is inserted after its stock is held, claimed by the winner of
    /// its resolution, and removed after the winner moved its stock.
    holds: ShardedMap<ReservationId, Hold<K>>,
    /// Deadlines of the open holds that have one.
    expiry: ExpiryIndex,
    /// Idempotency keys.
    keys: KeyTable<K>,
    /// The time source of deadlines and retention: user code, so it is read before any
    /// internal lock is taken and never between a claim and its finish.
    clock: Arc<dyn Clock>,
    /// Set (for good) once a hold with a deadline or an idempotency key was opened: until
    /// then no resolution reads the clock.
    timed: AtomicBool,
    /// Taken by a call that waits for a hold's winner, and by a winner that found waiters,
    /// to wake them (guards nothing else; taken before a `holds` shard, never after).
    settled_lock: Mutex<()>,
    /// Notified when a hold with waiters leaves `holds`.
    settled: Condvar,
}

impl<K: Clone + PartialEq> Registry<K> {
    pub(crate) fn new(
        clock: Arc<dyn Clock>,
        idempotency_retention: Duration,
        idempotency_keys_max: usize,
    ) -> Self {
        Self {
            holds: ShardedMap::new(),
            expiry: ExpiryIndex::new(),
            keys: KeyTable::new(idempotency_retention, idempotency_keys_max),
            clock,
            timed: AtomicBool::new(false),
            settled_lock: Mutex::new(()),
            settled: Condvar::new(),
        }
    }

    /// Holds merged `lines` with `hold` (which takes the stock, all or nothing) and records
    /// the hold, or answers from the idempotency table when `options` has a key already
    /// seen. With a key, the key's slot stays locked from the lookup until the hold is
    /// recorded, so racing requests with one key hold once.
    ///
    /// # Errors
    ///
    /// What `hold` returns, or [`StockError::IdempotencyConflict`] for a key already seen
    /// with other lines.
    pub(crate) fn reserve<M>(
        &self,
        lines: impl Into<HoldLines<K>>,
        options: &ReserveOptions,
        hold: impl FnOnce(&[(K, u64)]) -> Result<M, StockError<K>>,
    ) -> Result<Opened<K, M>, StockError<K>> {
        // The hold's lines, made once, here: one line inline, several shared by every copy
        // of the reservation (the registry's, the caller's, an idempotency key's).
        let lines = lines.into();
        // The clock is read here, before any lock, and only when a deadline or a key needs it.
        let key = options.idempotency_key.as_ref();
        let now = (options.ttl.is_some() || key.is_some()).then(|| self.clock.now());
        let expires_at = options
            .ttl
            .zip(now)
            .and_then(|(ttl, now)| now.checked_add(ttl));
        let (Some(key), Some(now)) = (key, now) else {
            let moved = hold(&lines)?;
            return Ok(Opened::New(self.open(lines, expires_at, None), moved));
        };
        self.keys.prune(now);
        self.keys.with_slot(key, |slot| {
            if let Some(replay) = slot.replay(key, &lines) {
                // While open, answer with the hold as it is now (`extend` may have moved it).
                return replay.map(|first| {
                    let current = self.holds.get(&first.id);
                    let current = current.and_then(|hold| hold.reservation.clone());
                    Opened::Replay(current.unwrap_or(first))
                });
            }
            let moved = hold(&lines)?;
            let reservation = self.open(lines, expires_at, Some(key.clone()));
            *slot = KeySlot::Open(reservation.clone());
            Ok(Opened::New(reservation, moved))
        })
    }

    /// Records a hold whose stock is already reserved and returns it.
    fn open(
        &self,
        lines: HoldLines<K>,
        expires_at: Option<Instant>,
        key: Option<Arc<str>>,
    ) -> Reservation<K> {
        if (expires_at.is_some() || key.is_some()) && !self.timed.load(Ordering::Relaxed) {
            // Before the hold is visible: whoever finds the hold (under its shard lock)
            // sees the flag too.
            self.timed.store(true, Ordering::Release);
        }
        let reservation = Reservation {
            id: ReservationId(sync::next_reservation_id()),
            lines,
            expires_at,
        };
        let hold = Hold {
            reservation: Some(reservation.clone()),
            key,
            waiters: false,
        };
        self.holds.insert(reservation.id, hold);
        if let Some(deadline) = expires_at {
            self.expiry.insert(deadline, reservation.id);
        }
        reservation
    }

    /// Runs `f` on the open hold `id` under its shard lock, once no other caller is
    /// resolving it; `None` when `id` is not open.
    ///
    /// While another caller resolves the hold, this waits until that caller is done: it
    /// is moving a few SKUs' stock and then removes the entry, so the wait is as short as
    /// a critical section, and whoever finds the hold gone sees its stock moved.
    ///
    /// # Blocking
    ///
    /// Only when racing another resolution of the same hold.
    fn with_unclaimed<R>(
        &self,
        id: ReservationId,
        mut f: impl FnMut(&mut Hold<K>) -> R,
    ) -> Option<R> {
        loop {
            let found = self.holds.update(&id, |hold| {
                if hold.is_claimed() {
                    hold.waiters = true;
                    None
                } else {
                    Some(f(hold))
                }
            });
            match found {
                None => return None,
                Some(Some(result)) => return Some(result),
                Some(None) => self.wait_settled(id),
            }
        }
    }

    /// Waits until the hold `id`, being resolved by another caller, leaves `holds`.
    ///
    /// No lost wake-up: the check runs under `settled_lock`, and a winner that saw
    /// `waiters` removes the entry before it takes `settled_lock` to notify.
    fn wait_settled(&self, id: ReservationId) {
        let mut guard = self.settled_lock.lock();
        while self.holds.update(&id, |hold| hold.is_claimed()) == Some(true) {
            guard = self.settled.wait_until(guard, None).0;
        }
    }

    /// Claims the hold `id`; the caller, the single winner, then moves its stock (a
    /// release if the hold expired) and calls [`finish`](Self::finish).
    ///
    /// # Errors
    ///
    /// [`StockError::UnknownReservation`] when `id` is not open (never issued here, or
    /// already resolved).
    pub(crate) fn resolve(&self, id: ReservationId) -> Result<Resolved<K>, StockError<K>> {
        // The clock is user code: read it before the hold's shard is locked, and only once
        // some hold needed it. A hold found needing it without a reading sends us back for
        // one (the flag was raised before that hold was opened).
        let mut now = self.timed.load(Ordering::Acquire).then(|| self.clock.now());
        loop {
            // `Err`: the hold needs a clock reading first.
            let claimed = self.with_unclaimed(id, |hold| {
                if now.is_none() && hold.needs_clock() {
                    return Err(());
                }
                Ok(hold.claim(now))
            });
            let resolved = match claimed {
                Some(Err(())) => {
                    now = Some(self.clock.now());
                    continue;
                }
                Some(Ok(Some(resolved))) => resolved,
                // Not open (an unclaimed hold always has its reservation to claim).
                None | Some(Ok(None)) => return Err(StockError::UnknownReservation(id)),
            };
            if let Some(deadline) = resolved.reservation.expires_at {
                self.expiry.remove(deadline, id);
            }
            return Ok(resolved);
        }
    }

    /// Gives the hold `id` the deadline `now + ttl`.
    ///
    /// # Errors
    ///
    /// [`StockError::UnknownReservation`] when `id` is not open.
    pub(crate) fn extend(
        &self,
        id: ReservationId,
        ttl: Duration,
    ) -> Result<Extension<K>, StockError<K>> {
        let now = self.clock.now();
        let deadline = now.checked_add(ttl);
        let due = |hold: &Hold<K>| hold.expires_at().is_some_and(|at| at <= now);
        let updated = self.with_unclaimed(id, |hold| {
            if due(hold) {
                return hold.claim(Some(now)).map(Err);
            }
            let reservation = hold.reservation.as_mut()?;
            let before = reservation.expires_at;
            reservation.expires_at = deadline;
            // Re-index while the hold's entry is locked, so that no resolve or other extend
            // of this hold runs between the deadline change and the index change (a resolve
            // there left the new deadline indexed for a hold gone: loom model
            // `extend_races_commit`). Lock order: holds shard, then expiry shard; nothing
            // takes them the other way round. The new deadline goes in before the old one
            // comes out, so the hold is never missing from the index.
            if let Some(deadline) = deadline {
                self.expiry.insert(deadline, id);
            }
            if let Some(before) = before.filter(|before| Some(*before) != deadline) {
                self.expiry.remove(before, id);
            }
            Some(Ok(reservation.clone()))
        });
        match updated.flatten() {
            None => Err(StockError::UnknownReservation(id)),
            Some(Ok(reservation)) => Ok(Extension::Extended(reservation)),
            Some(Err(resolved)) => {
                if let Some(deadline) = resolved.reservation.expires_at {
                    self.expiry.remove(deadline, id);
                }
                Ok(Extension::Expired(resolved))
            }
        }
    }

    /// The ids of the holds due now, in deadline order, taken out of the expiry index, and
    /// the clock reading they are due at. The caller claims them **one at a time** with
    /// [`claim_due`](Self::claim_due), settles and [`finish`](Self::finish)es each, so no
    /// more than one hold of a sweep is ever claimed at once. O(due · log n): only the due
    /// part of the expiry index is visited.
    pub(crate) fn take_due(&self) -> (Instant, Vec<ReservationId>) {
        let now = self.clock.now();
        self.keys.prune(now);
        let due = self.expiry.take_due(now);
        (now, due.into_iter().map(|(_, id)| id).collect())
    }

    /// Claims the hold `id` if it is due at `now` and nobody else is resolving it (a hold
    /// being resolved is left to its winner; a hold extended since is not due).
    pub(crate) fn claim_due(&self, id: ReservationId, now: Instant) -> Option<Resolved<K>> {
        let due = |hold: &Hold<K>| hold.expires_at().is_some_and(|at| at <= now);
        self.holds
            .update(&id, |hold| {
                // A claimed hold has no deadline left to be due.
                due(hold).then(|| hold.claim(Some(now))).flatten()
            })
            .flatten()
    }

    /// Records the end of a resolved hold whose stock has moved: the hold leaves the
    /// registry (racing calls waiting on it now answer `UnknownReservation`), and its
    /// idempotency key, if any, answers with the resolved reservation until pruned.
    pub(crate) fn finish(&self, resolved: &Resolved<K>) {
        let removed = self.holds.remove(&resolved.reservation.id);
        debug_assert!(
            removed.as_ref().is_some_and(Hold::is_claimed),
            "finished an unclaimed hold"
        );
        if removed.is_some_and(|hold| hold.waiters) {
            let _guard = self.settled_lock.lock();
            self.settled.notify_all();
        }
        if let Some((key, now)) = resolved.key.as_ref().zip(resolved.now) {
            // `now` was read before the claim: no user code runs between claim and finish.
            self.keys.resolved(key, resolved.reservation.id, now);
            self.keys.prune(now);
        }
    }

    /// Number of open holds.
    pub(crate) fn len(&self) -> usize {
        self.holds.len()
    }

    /// Number of idempotency keys remembered and of expiry index entries.
    pub(crate) fn index_sizes(&self) -> (usize, usize) {
        (self.keys.len(), self.expiry.len())
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
