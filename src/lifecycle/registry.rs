//! The registry of open holds: which resolution of a hold wins, with the expiry index and
//! the idempotency table of its holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clock::Clock;
use super::expiry::ExpiryIndex;
use super::idempotency::{KeySlot, KeyTable, ResolvedKey};
use crate::error::StockError;
use crate::level::Change;
use crate::options::ReserveOptions;
use crate::reservation::{HoldLines, Reservation, ReservationId};
use crate::stats::{HoldCounts, Resolution};
use crate::sync::{self, AtomicBool, Gate, GateClosed, GateEntry, IdHasher, Ordering, ShardedMap};

/// An open hold as the registry keeps it.
#[derive(Debug, Clone)]
struct Hold<K, H> {
    /// The hold.
    reservation: Reservation<K>,
    /// The idempotency key that made it, if any.
    key: Option<Arc<str>>,
    /// What the store kept to settle it without looking its SKU up again (the pessimistic
    /// and monitor stores: the slot of a one-line hold); `H::default()` when nothing.
    handle: H,
}

impl<K, H> Hold<K, H> {
    /// Whether the hold is past its deadline at `now` (never without a deadline or a
    /// reading).
    fn is_due(&self, now: Option<Instant>) -> bool {
        self.reservation
            .expires_at
            .zip(now)
            .is_some_and(|(deadline, now)| now >= deadline)
    }

    /// Whether resolving the hold needs the time ([`needs_clock`]).
    fn needs_clock(&self) -> bool {
        needs_clock(&self.reservation, self.key.as_ref())
    }
}

/// Whether resolving a hold (`reservation`, made with idempotency `key`) needs the time:
/// for its deadline, or for its key's retention.
fn needs_clock<K>(reservation: &Reservation<K>, key: Option<&Arc<str>>) -> bool {
    reservation.expires_at.is_some() || key.is_some()
}

/// A hold that left the registry with its stock moved: by its resolution, or by its expiry.
#[derive(Debug)]
pub(crate) struct Resolved<K, M> {
    pub(crate) reservation: Reservation<K>,
    /// Its deadline had passed when it was resolved: it expired (its stock went back)
    /// whatever the caller asked for.
    pub(crate) expired: bool,
    /// What moving its stock returned.
    pub(crate) moved: M,
    /// The idempotency key it was made with, if any.
    pub(crate) key: Option<Arc<str>>,
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
pub(crate) enum Extension<K, M> {
    /// The hold has its new deadline.
    Extended(Reservation<K>),
    /// The hold was past its deadline: it expired (its stock went back) and left.
    Expired(Resolved<K, M>),
}

/// The open holds of one store: reservation id -> its lines and deadline, with the expiry
/// index of their deadlines and the idempotency table of their keys.
///
/// A hold is resolved (committed, released or expired) in one step on its entry of
/// `holds`, under the lock of the entry's shard: the entry is found, its stock
/// moved, and the entry removed, all in one lookup. So exactly one of racing commits,
/// releases and expiries of one hold moves its stock; every other waits for the shard lock
/// and then finds the hold gone ([`StockError::UnknownReservation`]), after the stock
/// moved: racing resolutions are linearizable. Whether the hold commits or expires is
/// decided by the clock, read before the lock: past the deadline the hold expires, never
/// before it (TigerBeetle's pending-transfer timeouts).
///
/// Moving stock under the shard lock waits for the SKUs' own locks (pessimistic and
/// monitor stores) and never the other way round: no code holds a SKU's lock while it
/// touches `holds`. No user code (clock, sink) runs under it.
pub(crate) struct Registry<K, H = ()> {
    /// Open holds; an entry is inserted after its stock is held, and removed by the call
    /// that moves its stock back or on (under the entry's shard lock).
    holds: ShardedMap<ReservationId, Hold<K, H>, IdHasher, HoldCounts>,
    /// Deadlines of the open holds that have one.
    expiry: ExpiryIndex,
    /// Idempotency keys.
    keys: KeyTable<K>,
    /// The time source of deadlines and retention: user code, so it is read before any
    /// internal lock is taken.
    clock: Arc<dyn Clock>,
    /// Set (for good) once a hold with a deadline or an idempotency key was opened: until
    /// then no resolution reads the clock.
    timed: AtomicBool,
    /// The snapshot gate (`StoreBuilder::snapshots`), if the store has one: every change
    /// of the store's stock or holds enters it (after any clock reading, before any other
    /// lock), and a snapshot closes it for its copy. `None`: no snapshots, no cost.
    gate: Option<Gate>,
}

impl<K, H> Registry<K, H> {
    /// Enters the snapshot gate for one change (`None` without a gate). Taken before any
    /// other lock of the store and after any clock reading; dropped before any event is
    /// delivered.
    #[inline(always)]
    pub(crate) fn enter(&self) -> Option<GateEntry<'_>> {
        self.gate.as_ref().map(Gate::enter)
    }

    /// Closes the snapshot gate: waits for the changes in progress, keeps new ones out
    /// while the guard lives. `None` without a gate.
    pub(crate) fn close(&self) -> Option<GateClosed<'_>> {
        self.gate.as_ref().map(Gate::close)
    }
}

impl<K: Clone + PartialEq, H: Clone + Default> Registry<K, H> {
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
            gate: None,
        }
    }

    /// This registry with a snapshot gate.
    pub(crate) fn with_gate(mut self) -> Self {
        self.gate = Some(Gate::default());
        self
    }

    /// The store's clock (read by a snapshot before it closes the gate).
    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
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
        let _gate = self.enter();
        let (Some(key), Some(now)) = (key, now) else {
            let moved = hold(&lines)?;
            let reservation = self.open(lines, expires_at, None, H::default());
            return Ok(Opened::New(reservation, moved));
        };
        self.keys.prune(now);
        self.keys.with_slot(key, |slot| {
            if let Some(replay) = slot.replay(key, &lines) {
                // While open, answer with the hold as it is now (`extend` may have moved it).
                return replay.map(|first| {
                    let current = self.holds.get(&first.id);
                    let current = current.map(|hold| hold.reservation.clone());
                    Opened::Replay(current.unwrap_or(first))
                });
            }
            let moved = hold(&lines)?;
            let reservation = self.open(lines, expires_at, Some(key.clone()), H::default());
            *slot = KeySlot::Open(reservation.clone());
            Ok(Opened::New(reservation, moved))
        })
    }

    /// The deadline `ttl` from now on the store's clock (`None`: past what an `Instant`
    /// holds, a hold that never expires), as `reserve` computes it.
    #[inline]
    pub(crate) fn deadline_after(&self, ttl: Duration) -> Option<Instant> {
        self.clock.now().checked_add(ttl)
    }

    /// The clock's reading (user code: call with no internal lock held).
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Adds `deadline` of the hold `id` (kept outside this registry) to the expiry index.
    pub(crate) fn index_deadline(&self, deadline: Instant, id: ReservationId) {
        self.expiry.insert(deadline, id);
    }

    /// Removes `deadline` of the hold `id` from the expiry index.
    pub(crate) fn unindex_deadline(&self, deadline: Instant, id: ReservationId) {
        self.expiry.remove(deadline, id);
    }

    /// Records a hold with the deadline `expires_at` (`None`: none) and no idempotency key
    /// whose stock is already reserved, and returns it: `reserve`'s common case. `handle`
    /// is what the store kept to settle it ([`resolve`](Self::resolve) hands it back).
    #[inline]
    pub(crate) fn open_quiet(
        &self,
        lines: HoldLines<K>,
        expires_at: Option<Instant>,
        handle: H,
    ) -> Reservation<K> {
        self.open(lines, expires_at, None, handle)
    }

    /// Records a hold whose stock is already reserved and returns it. Always inline: out
    /// of line (as the compiler left it for the monitor store), the hold was built in
    /// memory and copied through the call.
    #[inline(always)]
    fn open(
        &self,
        lines: HoldLines<K>,
        expires_at: Option<Instant>,
        key: Option<Arc<str>>,
        handle: H,
    ) -> Reservation<K> {
        if (expires_at.is_some() || key.is_some()) && !self.timed.load(Ordering::Relaxed) {
            // Before the hold is visible: whoever finds the hold (under its shard lock)
            // sees the flag too.
            self.timed.store(true, Ordering::Release);
        }
        let reservation = Reservation {
            id: ReservationId::from_u64(sync::next_reservation_id()),
            lines,
            expires_at,
        };
        let hold = Hold {
            reservation: reservation.clone(),
            key,
            handle,
        };
        // A new id: no hold has it.
        self.holds.insert_new(reservation.id, hold, |counts| {
            counts.opened = counts.opened.wrapping_add(1);
        });
        if let Some(deadline) = expires_at {
            self.expiry.insert(deadline, reservation.id);
        }
        reservation
    }

    /// Resolves the open hold `id` by `change` (`Commit` or `Release`): under its shard
    /// lock, moves its stock with `settle(lines, handle, change)` (`handle`: what the store
    /// kept when it opened the hold; `change`: `Release` when its deadline had passed, so
    /// its stock goes back whatever the caller asked for), counts it and removes it; then
    /// forgets its deadline and records its idempotency key as resolved, and returns
    /// `done(reservation, expired, moved)` (`expired`: its deadline had passed; `moved`:
    /// what `settle` returned). One lookup.
    ///
    /// `done` builds the caller's result from the hold's parts: through a `Resolved`
    /// returned and then taken apart, the hold was copied twice more (a one-line
    /// `reserve`+`commit` of the optimistic store took 621 instructions in callgrind, now
    /// 604).
    ///
    /// # Errors
    ///
    /// [`StockError::UnknownReservation`] when `id` is not open (never issued here, or
    /// already resolved), with `settle` and `done` never called; else what `done` returns.
    ///
    /// # Blocking
    ///
    /// `settle` runs under the lock of the hold's shard: calls on holds of that shard
    /// wait for it.
    #[inline]
    pub(crate) fn resolve<M, R>(
        &self,
        id: ReservationId,
        change: Change,
        settle: impl FnOnce(&[(K, u64)], &H, Change) -> M,
        done: impl FnOnce(Reservation<K>, bool, M, Option<Arc<str>>) -> Result<R, StockError<K>>,
    ) -> Result<R, StockError<K>> {
        // The clock is user code: read it before the hold's shard is locked, and only once
        // some hold needed it. A hold found needing it without a reading sends us back for
        // one (the flag was raised before that hold was opened).
        let mut now = self.timed.load(Ordering::Acquire).then(|| self.clock.now());
        let mut settle = settle;
        loop {
            let mut outcome = None;
            // `settle`, handed back when the hold needs a clock reading first.
            let mut unused = None;
            let gate = self.enter();
            let removed = self.holds.remove_if(&id, |hold, counts| {
                if now.is_none() && hold.needs_clock() {
                    unused = Some(settle);
                    return false;
                }
                let expired = hold.is_due(now);
                // Past its deadline, the hold's stock goes back whatever was asked. Picked
                // by index, not by a branch: with a branch the compiler called `settle`
                // from two places and kept it out of line (a one-line `reserve`+`commit`
                // of the optimistic store took 645 instructions in callgrind, now 621).
                let settled = [change, Change::Release][usize::from(expired)];
                let moved = settle(hold.reservation.lines(), &hold.handle, settled);
                counts.resolved(Resolution::of(change, expired));
                outcome = Some((expired, moved));
                true
            });
            // The hold is taken apart where it left the map (a tuple of the removed hold
            // and the outcome, or a `Resolved` returned, copied it more).
            if let Some(Hold {
                reservation, key, ..
            }) = removed
            {
                let (expired, moved) = outcome.expect("a removed hold was settled");
                let resolution = Resolution::of(change, expired);
                self.leave(&reservation, key.as_ref(), now, resolution);
                drop(gate);
                return done(reservation, expired, moved, key);
            }
            drop(gate);
            let Some(back) = unused else {
                return Err(StockError::UnknownReservation(id));
            };
            settle = back;
            now = Some(self.clock.now());
        }
    }

    /// Gives the hold `id` the deadline `now + ttl`; a hold already past its deadline
    /// expires instead, its stock moved back by `settle(lines)` under its shard lock (as
    /// [`resolve`](Self::resolve)).
    ///
    /// # Errors
    ///
    /// [`StockError::UnknownReservation`] when `id` is not open.
    pub(crate) fn extend<M>(
        &self,
        id: ReservationId,
        ttl: Duration,
        settle: impl FnOnce(&[(K, u64)]) -> M,
    ) -> Result<Extension<K, M>, StockError<K>> {
        let now = self.clock.now();
        let deadline = now.checked_add(ttl);
        let _gate = self.enter();
        let mut outcome = None;
        let removed = self.holds.remove_if(&id, |hold, counts| {
            if hold.is_due(Some(now)) {
                outcome = Some(Err(settle(hold.reservation.lines())));
                counts.resolved(Resolution::Expired);
                return true;
            }
            let reservation = &mut hold.reservation;
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
            outcome = Some(Ok(reservation.clone()));
            false
        });
        match (removed, outcome) {
            (_, None) => Err(StockError::UnknownReservation(id)),
            (_, Some(Ok(reservation))) => Ok(Extension::Extended(reservation)),
            (Some(hold), Some(Err(moved))) => {
                Ok(Extension::Expired(self.expired(hold, now, moved)))
            }
            (None, Some(Err(_))) => unreachable!("an expired hold is removed"),
        }
    }

    /// The ids of the holds due now, in deadline order, taken out of the expiry index, and
    /// the clock reading they are due at. The caller expires them one at a time with
    /// [`expire`](Self::expire). O(due · log n): only the due part of the expiry index is
    /// visited.
    pub(crate) fn take_due(&self) -> (Instant, Vec<ReservationId>) {
        let now = self.clock.now();
        self.keys.prune(now);
        let due = self.expiry.take_due(now);
        (now, due.into_iter().map(|(_, id)| id).collect())
    }

    /// Expires the hold `id` if it is still open and due at `now` (a hold resolved or
    /// extended since is left alone): moves its stock back with `settle(lines)` under its
    /// shard lock and removes it, as [`resolve`](Self::resolve).
    pub(crate) fn expire<M>(
        &self,
        id: ReservationId,
        now: Instant,
        settle: impl FnOnce(&[(K, u64)]) -> M,
    ) -> Option<Resolved<K, M>> {
        let _gate = self.enter();
        let mut moved = None;
        let removed = self.holds.remove_if(&id, |hold, counts| {
            if !hold.is_due(Some(now)) {
                return false;
            }
            moved = Some(settle(hold.reservation.lines()));
            counts.resolved(Resolution::Expired);
            true
        })?;
        let moved = moved.expect("a removed hold was settled");
        Some(self.expired(removed, now, moved))
    }

    /// Records the end of a hold removed with its stock moved (`reservation`, made with
    /// idempotency `key`): its deadline leaves the expiry index, and its key, if any,
    /// answers that the hold ended by `resolution` until pruned. `now` is the clock reading
    /// taken before the hold's shard was locked (`Some` whenever the hold has a deadline
    /// or a key). A hold with neither (most) costs one check. Takes the hold's parts, not
    /// the hold: a hold passed by value here was copied once more (callgrind
    /// `reserve`+`commit` +14 to +17).
    #[inline(always)]
    fn leave(
        &self,
        reservation: &Reservation<K>,
        key: Option<&Arc<str>>,
        now: Option<Instant>,
        resolution: Resolution,
    ) {
        if needs_clock(reservation, key) {
            self.forget(reservation, key, now, resolution);
        }
    }

    /// The hold `removed` by an expiry (of [`extend`](Self::extend) or
    /// [`expire`](Self::expire)) with its stock moved back (`moved`), after
    /// [`leave`](Self::leave).
    fn expired<M>(&self, removed: Hold<K, H>, now: Instant, moved: M) -> Resolved<K, M> {
        let Hold {
            reservation, key, ..
        } = removed;
        self.leave(&reservation, key.as_ref(), Some(now), Resolution::Expired);
        Resolved {
            reservation,
            expired: true,
            moved,
            key,
        }
    }

    /// [`leave`](Self::leave) for a hold with a deadline or an idempotency key.
    #[cold]
    fn forget(
        &self,
        reservation: &Reservation<K>,
        key: Option<&Arc<str>>,
        now: Option<Instant>,
        resolution: Resolution,
    ) {
        if let Some(deadline) = reservation.expires_at {
            self.expiry.remove(deadline, reservation.id);
        }
        if let Some((key, now)) = key.zip(now) {
            self.keys
                .resolved(key, reservation.id, now, resolution.into());
            self.keys.prune(now);
        }
    }

    /// The open hold `id`, as it is now (with its current deadline); `None` when it is
    /// not open: never issued here, resolved, or past its deadline (then it expires on its
    /// next resolution or sweep, and cannot be committed).
    /// The open hold `id` as it was made, whether or not its deadline passed (`get` hides
    /// a due hold); no clock reading.
    pub(crate) fn peek(&self, id: ReservationId) -> Option<Reservation<K>> {
        Some(self.holds.get(&id)?.reservation.clone())
    }

    pub(crate) fn get(&self, id: ReservationId) -> Option<Reservation<K>> {
        let reservation = self.holds.get(&id)?.reservation.clone();
        // The clock is user code: read after the shard lock is released.
        match reservation.expires_at {
            Some(deadline) if self.clock.now() >= deadline => None,
            _ => Some(reservation),
        }
    }

    /// A copy of every open hold with its idempotency key, for a snapshot (exact while the
    /// snapshot gate is closed).
    pub(crate) fn copy_holds(&self) -> Vec<(Reservation<K>, Option<Arc<str>>)> {
        let mut holds = Vec::with_capacity(self.holds.len());
        self.holds.for_each(|_, hold| {
            holds.push((hold.reservation.clone(), hold.key.clone()));
        });
        holds
    }

    /// A copy of the keys of resolved holds still remembered, oldest first.
    pub(crate) fn copy_resolved_keys(&self) -> Vec<ResolvedKey<K>> {
        self.keys.copy_resolved()
    }

    /// How long a resolved hold's key is remembered.
    pub(crate) fn retention(&self) -> Duration {
        self.keys.retention()
    }

    /// Records a restored open hold (its stock already reserved by the store's restore)
    /// under its own id, with its deadline and key. Call on a store nobody uses yet.
    pub(crate) fn restore_hold(&self, reservation: Reservation<K>, key: Option<Arc<str>>) {
        if reservation.expires_at.is_some() || key.is_some() {
            self.timed.store(true, Ordering::Release);
        }
        let id = reservation.id;
        if let Some(deadline) = reservation.expires_at {
            self.expiry.insert(deadline, id);
        }
        if let Some(key) = &key {
            let open = reservation.clone();
            self.keys.with_slot(key, |slot| *slot = KeySlot::Open(open));
        }
        let hold = Hold {
            reservation,
            key,
            handle: H::default(),
        };
        self.holds.insert_new(id, hold, |counts| {
            counts.opened = counts.opened.wrapping_add(1);
        });
    }

    /// Records a restored key of a resolved hold; call oldest first.
    pub(crate) fn restore_resolved_key(&self, resolved: ResolvedKey<K>) {
        self.keys.restore_resolved(resolved);
    }

    /// Number of open holds.
    pub(crate) fn len(&self) -> usize {
        self.holds.len()
    }

    /// How many holds were opened, committed, released and expired, summed over the
    /// shards (each locked in turn: exact once no hold opens or resolves meanwhile).
    pub(crate) fn counts(&self) -> HoldCounts {
        self.holds
            .fold_tallies(HoldCounts::default(), HoldCounts::plus)
    }

    /// Number of idempotency keys remembered and of expiry index entries.
    pub(crate) fn index_sizes(&self) -> (usize, usize) {
        (self.keys.len(), self.expiry.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens a one-line hold of `("a", 1)` with a deadline 1 s away on a registry over
    /// `clock`, then clears the registry's `timed` flag: as if a resolution had read the
    /// flag before the hold opened.
    fn registry_with_stale_flag(
        clock: &Arc<crate::lifecycle::clock::ManualClock>,
    ) -> (Registry<&'static str>, ReservationId) {
        let registry = Registry::new(clock.clone(), Duration::from_secs(60), 16);
        let options = ReserveOptions::new().ttl(Duration::from_secs(1));
        let opened = registry.reserve(vec![("a", 1)], &options, |_| Ok(()));
        let Ok(Opened::New(hold, ())) = opened else {
            panic!("a new hold: {opened:?}");
        };
        registry.timed.store(false, Ordering::Relaxed);
        (registry, hold.id())
    }

    /// Commits `id`, recording each settle call; returns `done`'s `expired` and the calls.
    fn commit_recording(
        registry: &Registry<&'static str>,
        id: ReservationId,
    ) -> (Result<bool, StockError<&'static str>>, Vec<Change>) {
        let mut settles = Vec::new();
        let outcome = registry.resolve(
            id,
            Change::Commit,
            |lines, _, change| {
                assert_eq!(lines, [("a", 1)]);
                settles.push(change);
            },
            |reservation, expired, (), _| {
                assert_eq!(reservation.id(), id);
                Ok(expired)
            },
        );
        (outcome, settles)
    }

    /// A resolution that finds a hold needing the clock without a reading (its `timed`
    /// reading was stale) goes back for one and settles the hold once, by that reading:
    /// past the deadline, the hold expires (its stock goes back).
    #[test]
    fn a_hold_found_needing_the_clock_is_settled_once_by_a_reading() {
        let clock = Arc::new(crate::lifecycle::clock::ManualClock::new());
        let (registry, id) = registry_with_stale_flag(&clock);
        clock.advance(Duration::from_secs(2));
        assert_eq!(
            commit_recording(&registry, id),
            (Ok(true), vec![Change::Release])
        );
        assert_eq!(registry.len(), 0);
        // Negative control: before its deadline the same hold commits, so the expiry above
        // came from the reading (without one, `is_due` is false and the hold would commit).
        let clock = Arc::new(crate::lifecycle::clock::ManualClock::new());
        let (registry, id) = registry_with_stale_flag(&clock);
        assert_eq!(
            commit_recording(&registry, id),
            (Ok(false), vec![Change::Commit])
        );
    }
}
