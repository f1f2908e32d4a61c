//! The reservation lifecycle, written once for every store: holding with options, commit,
//! release, expiry, extension, and the events and statistics of each.
//!
//! A store supplies only its stock movements ([`Backend::hold`] and [`Backend::settle`]);
//! everything about holds (the registry that picks the single winner, deadlines,
//! idempotency keys, events, counts) lives here and in the registry.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::event::{EventLine, Events, StockEvent};
use super::registry::{Extension, Opened, Registry, Resolved};
use crate::error::StockError;
use crate::level::{Change, LowStock, Moved};
use crate::lines::{self, LockedSkus, Moves};
use crate::options::ReserveOptions;
use crate::reservation::{HoldLines, Reservation, ReservationId};
use crate::stats::{Resolution, Stat, Stats, StoreStats};
use crate::store::Sku;
use crate::sync::{IdHasher, ShardedMap};

/// The parts every store shares: its holds, its event sink, its counters.
pub(crate) struct Lifecycle<K, H = ()> {
    /// Open holds, their deadlines and idempotency keys.
    pub(crate) registry: Registry<K, H>,
    /// Where events go.
    pub(crate) events: Events<K>,
    /// What the store counted.
    pub(crate) stats: Stats,
    /// The deadlines of the holds kept in their SKU's slot that `extend` gave one
    /// ([`slot_holds`](super::slot_holds)).
    pub(crate) deadlines: Deadlines,
}

/// The deadlines of the slot holds that `extend` gave one (most have none): hold id ->
/// deadline. Written and read under the hold's SKU lock in the locking stores (lock
/// order: the SKU, then a shard of this map), and under the deadline's own shard lock in
/// the others (`strategy::word_holds`).
pub(crate) type Deadlines = ShardedMap<ReservationId, Instant, IdHasher>;

/// The stock movements of one store, which the lifecycle drives.
pub(crate) trait Backend<K: Sku> {
    /// What the store keeps with a hold to settle it without a lookup (`()`: nothing).
    type Handle: Clone + Default;

    /// The store's shared parts.
    fn lifecycle(&self) -> &Lifecycle<K, Self::Handle>;

    /// Reserves merged `lines` without waiting, all or nothing; returns what moved per line.
    ///
    /// # Errors
    ///
    /// [`StockError::UnknownSku`], [`StockError::InsufficientStock`],
    /// [`StockError::Overflow`] or [`StockError::Conflict`], with nothing held.
    fn hold(&self, lines: &[(K, u64)]) -> Result<Moves, StockError<K>>;

    /// Commits or releases merged `lines` that an open hold owned; never refused.
    fn settle(&self, lines: &[(K, u64)], change: Change) -> Moves;

    /// [`hold`](Self::hold) for a caller that needs no report of the moves (no event
    /// sink): the same hold, all or nothing, with no move built.
    ///
    /// # Errors
    ///
    /// As [`hold`](Self::hold).
    #[inline]
    fn hold_lines_quiet(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
        self.hold(lines).map(drop)
    }

    /// [`settle`](Self::settle) for a caller that needs no report of the moves (no event
    /// sink); `handle` is the one kept with the hold (`Default` when it was opened
    /// otherwise than by [`hold_one`](Self::hold_one)).
    #[inline]
    fn settle_quiet(&self, lines: &[(K, u64)], handle: &Self::Handle, change: Change) {
        let _ = handle;
        self.settle(lines, change);
    }

    /// [`hold`](Self::hold) of one validated line (quantity at least 1) for a caller that
    /// needs no report of the move (no event sink): in its SKU's slot when `in_slot` (no
    /// deadline) and the store keeps holds there
    /// ([`slot_holds::hold`](super::slot_holds::hold) in the locking stores,
    /// `strategy::word_holds::hold` in the others), else returning the handle to record the
    /// hold with in the registry (by default, none).
    ///
    /// # Errors
    ///
    /// As [`hold`](Self::hold).
    #[inline(always)]
    fn hold_one(
        &self,
        line: &(K, u64),
        in_slot: bool,
    ) -> Result<HeldOne<K, Self::Handle>, StockError<K>> {
        let _ = in_slot;
        self.hold(std::slice::from_ref(line))
            .map(|_| HeldOne::Reserved(Self::Handle::default()))
    }

    /// Resolves the slot hold `id` ([`slot_holds::resolve`](super::slot_holds::resolve)):
    /// the hold and whether it expired, or `None` when `id` is no open slot hold of this
    /// store (the registry may have it).
    #[inline(always)]
    fn resolve_in_slot(
        &self,
        id: ReservationId,
        change: Change,
        part: Option<u64>,
    ) -> Option<(Reservation<K>, bool)> {
        let _ = (id, change, part);
        None
    }

    /// The open slot hold `id`, or `None` when `id` is no open slot hold of this store.
    fn peek_in_slot(&self, id: ReservationId) -> Option<Reservation<K>> {
        let _ = id;
        None
    }

    /// [`extend`] of an open slot hold, or `None` when `id` is no open slot hold of this
    /// store.
    fn extend_in_slot(&self, id: ReservationId, ttl: Duration) -> Option<Extension<K, Moves>> {
        let _ = (id, ttl);
        None
    }

    /// Expires the slot hold `id` if open and due at `now`, or `None` when `id` is no slot
    /// hold of this store.
    fn expire_in_slot(
        &self,
        id: ReservationId,
        now: Instant,
    ) -> Option<Option<Resolved<K, Moves>>> {
        let _ = (id, now);
        None
    }

    /// Appends a copy of every open slot hold to `holds` (a snapshot).
    fn copy_slot_holds(&self, holds: &mut Vec<(Reservation<K>, Option<Arc<str>>)>) {
        let _ = holds;
    }
}

/// What [`Backend::hold_one`] did.
#[derive(Debug)]
pub(crate) enum HeldOne<K, H> {
    /// The hold lives in its SKU's slot: done.
    InSlot(Reservation<K>),
    /// The stock is reserved: record the hold in the registry with this handle.
    Reserved(H),
}

/// The [`StockStore`](crate::StockStore) methods that every store answers from its
/// [`Lifecycle`] alone, written once: `reserve_with`, `commit`, `release`, `extend`,
/// `expire_due`, `stats` and `reservation`. Expanded inside each store's `impl StockStore<K>`; the store
/// implements [`Backend`] and keeps its lifecycle in a field named `lifecycle`.
macro_rules! lifecycle_methods {
    () => {
        fn reserve(
            &self,
            lines: &[(K, u64)],
        ) -> Result<$crate::reservation::Reservation<K>, $crate::error::StockError<K>> {
            $crate::lifecycle::reserve(self, lines)
        }

        fn reserve_with(
            &self,
            lines: &[(K, u64)],
            options: &$crate::options::ReserveOptions,
        ) -> Result<$crate::reservation::Reservation<K>, $crate::error::StockError<K>> {
            $crate::lifecycle::reserve_with(self, lines, options)
        }

        fn commit(
            &self,
            id: $crate::reservation::ReservationId,
        ) -> Result<$crate::reservation::Reservation<K>, $crate::error::StockError<K>> {
            $crate::lifecycle::resolve(self, id, $crate::level::Change::Commit)
        }

        fn release(
            &self,
            id: $crate::reservation::ReservationId,
        ) -> Result<$crate::reservation::Reservation<K>, $crate::error::StockError<K>> {
            $crate::lifecycle::resolve(self, id, $crate::level::Change::Release)
        }

        fn commit_partial(
            &self,
            id: $crate::reservation::ReservationId,
            lines: &[(K, u64)],
        ) -> Result<$crate::reservation::Reservation<K>, $crate::error::StockError<K>> {
            $crate::lifecycle::commit_partial(self, id, lines)
        }

        fn extend(
            &self,
            id: $crate::reservation::ReservationId,
            ttl: std::time::Duration,
        ) -> Result<$crate::reservation::Reservation<K>, $crate::error::StockError<K>> {
            $crate::lifecycle::extend(self, id, ttl)
        }

        fn expire_due(&self) -> Vec<$crate::reservation::Reservation<K>> {
            $crate::lifecycle::expire_due(self)
        }

        fn stats(&self) -> $crate::stats::StoreStats {
            self.lifecycle.stats()
        }

        fn reservation(
            &self,
            id: $crate::reservation::ReservationId,
        ) -> Option<$crate::reservation::Reservation<K>> {
            $crate::lifecycle::reservation(self, id)
        }
    };
}

pub(crate) use lifecycle_methods;

/// [`StockStore::reserve`](crate::StockStore::reserve) for any store: `reserve_with`
/// without options. Its common case, one line and no event sink, goes straight to the
/// stock and the registry: no merge, no clock, no key, no move report built.
#[inline]
pub(crate) fn reserve<K: Sku, B: Backend<K>>(
    store: &B,
    lines: &[(K, u64)],
) -> Result<Reservation<K>, StockError<K>> {
    let life = store.lifecycle();
    match lines {
        [line] if line.1 != 0 && !life.events.enabled() => reserve_one(store, line, None),
        _ => reserve_with(store, lines, &ReserveOptions::new()),
    }
}

/// [`StockStore::reserve_with`](crate::StockStore::reserve_with) for any store.
pub(crate) fn reserve_with<K: Sku, B: Backend<K>>(
    store: &B,
    lines: &[(K, u64)],
    options: &ReserveOptions,
) -> Result<Reservation<K>, StockError<K>> {
    let life = store.lifecycle();
    if let ([line], Some(ttl), None) = (lines, options.ttl, &options.idempotency_key) {
        if line.1 != 0 && !life.events.enabled() {
            // One line with a TTL and nothing listening: `reserve`'s path, with a deadline.
            // (Through the generic path below, a reserve + commit over 100k SKUs took 400
            // ns against 290, one thread.)
            let expires_at = life.registry.deadline_after(ttl);
            return reserve_one(store, line, expires_at);
        }
    }
    // A single line stays inline (no allocation for the hold's lines); several go into
    // one shared allocation.
    let lines = HoldLines::merged(lines)?;
    if let Some(key) = &options.idempotency_key {
        crate::lifecycle::idempotency::validate_key(key)?;
    }
    let events = life.events.enabled();
    let opened = life.registry.reserve(lines, options, |lines| {
        if events {
            store.hold(lines)
        } else {
            // Nobody listens: no move to report, so none is built (an empty `Many`
            // allocates nothing).
            store
                .hold_lines_quiet(lines)
                .map(|()| Moves::Many(Vec::new()))
        }
    });
    life.stats.count_refusal(&opened);
    life.stats.count_ended_replay(&opened);
    match opened? {
        Opened::New(reservation, moved) => {
            let key = options.idempotency_key.as_ref();
            report_opened(store, &reservation, &moved, key);
            Ok(reservation)
        }
        Opened::Replay(reservation) => {
            life.stats.count(Stat::Replays);
            Ok(reservation)
        }
    }
}

/// A hold of one line (quantity at least 1) with no idempotency key and no event sink,
/// deadline `expires_at` (`None`: none): the stock held straight away, kept with the
/// handle that settles it without a lookup. The fast path of [`reserve`] and of
/// [`reserve_with`] with a TTL.
#[inline]
fn reserve_one<K: Sku, B: Backend<K>>(
    store: &B,
    line: &(K, u64),
    expires_at: Option<std::time::Instant>,
) -> Result<Reservation<K>, StockError<K>> {
    let life = store.lifecycle();
    let _gate = life.registry.enter();
    // In its SKU's slot if the store keeps holds there: 2 locked read-modify-writes (the
    // SKU's lock), not 4 (and a hold shard's lock).
    let held = store.hold_one(line, expires_at.is_none());
    life.stats.count_refusal(&held);
    let handle = match held? {
        HeldOne::InSlot(reservation) => return Ok(reservation),
        HeldOne::Reserved(handle) => handle,
    };
    Ok(life
        .registry
        .open_quiet(HoldLines::One([line.clone()]), expires_at, handle))
}

/// Reports the new hold `reservation` (its stock moved as `moved`) to the event sink. When
/// the sink panics, the hold is released before the panic goes on: its caller never gets
/// the hold's id, so a hold left open would be one that nobody knows and, without a TTL,
/// stock reserved for good. The release is reported to the same sink; if that panics too,
/// the hold is released all the same and the first panic goes on.
pub(crate) fn report_opened<K: Sku, B: Backend<K>>(
    store: &B,
    reservation: &Reservation<K>,
    moved: &[Moved],
    key: Option<&Arc<str>>,
) {
    let life = store.lifecycle();
    let reported = panic::catch_unwind(AssertUnwindSafe(|| life.opened(reservation, moved, key)));
    if let Err(sink_panic) = reported {
        let id = reservation.id();
        let _released =
            panic::catch_unwind(AssertUnwindSafe(|| resolve(store, id, Change::Release)));
        panic::resume_unwind(sink_panic);
    }
}

/// [`StockStore::sell`](crate::StockStore::sell) for a store that locks its SKUs (the
/// pessimistic and monitor stores): all or nothing, without waiting. One line (most
/// sales) is neither merged nor batched, and allocates nothing.
#[inline(always)]
pub(crate) fn sell_locked<K: Sku, H, S: LockedSkus<K>>(
    store: &S,
    life: &Lifecycle<K, H>,
    lines: &[(K, u64)],
) -> Result<(), StockError<K>> {
    if let [line @ (sku, quantity)] = lines {
        if *quantity == 0 {
            return Err(StockError::InvalidQuantity { sku: sku.clone() });
        }
        let gate = life.registry.enter();
        if !life.events.enabled() {
            // Nobody listens: no move to report, so none is built.
            let sold = lines::apply_one_quiet(store, line, Change::Sell);
            life.stats.count_refusal(&sold);
            return sold;
        }
        let sold = lines::apply_one(store, line, Change::Sell);
        drop(gate);
        life.stats.count_refusal(&sold);
        life.sold(lines, &[sold?]);
        return Ok(());
    }
    let lines = lines::merge(lines)?;
    let gate = life.registry.enter();
    if !life.events.enabled() {
        let sold = lines::apply_quiet(store, &lines, Change::Sell);
        life.stats.count_refusal(&sold);
        return sold;
    }
    let sold = lines::apply(store, &lines, Change::Sell);
    drop(gate);
    life.stats.count_refusal(&sold);
    life.sold(&lines, &sold?);
    Ok(())
}

/// [`StockStore::commit`](crate::StockStore::commit) (`change` = `Commit`) and
/// [`StockStore::release`](crate::StockStore::release) (`Release`) for any store.
#[inline]
pub(crate) fn resolve<K: Sku, B: Backend<K>>(
    store: &B,
    id: ReservationId,
    change: Change,
) -> Result<Reservation<K>, StockError<K>> {
    // A hold in its SKU's slot is resolved there. (Only a store with no event sink opens
    // such holds, so there is no move to report.)
    if let Some((reservation, expired)) = store.resolve_in_slot(id, change, None) {
        return if expired {
            Err(StockError::Expired(id))
        } else {
            Ok(reservation)
        };
    }
    let life = store.lifecycle();
    if life.events.enabled() {
        return resolve_reported(store, id, change);
    }
    // Nobody listens: no move to report, so none is built. The registry counts the hold.
    life.registry.resolve(
        id,
        change,
        |lines, handle, change| store.settle_quiet(lines, handle, change),
        |reservation, expired, (), _| {
            if expired {
                Err(StockError::Expired(id))
            } else {
                Ok(reservation)
            }
        },
    )
}

/// [`resolve`] when an event sink listens: the moves are built and reported.
#[inline(never)]
fn resolve_reported<K: Sku, B: Backend<K>>(
    store: &B,
    id: ReservationId,
    change: Change,
) -> Result<Reservation<K>, StockError<K>> {
    let life = store.lifecycle();
    // Past its deadline, a hold's stock goes back (`change` is then `Release`) whatever
    // the caller asked for.
    let resolved = life.registry.resolve(
        id,
        change,
        |lines, _, change| store.settle(lines, change),
        |reservation, expired, moved, key| {
            Ok(Resolved {
                reservation,
                expired,
                moved,
                key,
            })
        },
    )?;
    report(life, resolved, change)
}

/// [`StockStore::commit_partial`](crate::StockStore::commit_partial) for any store: checks
/// `lines` against the hold, then resolves it once (as `commit`), moving its stock in two
/// steps under the hold's shard lock: the rest released, then the named units committed.
///
/// # Errors
///
/// As [`StockStore::commit_partial`](crate::StockStore::commit_partial).
pub(crate) fn commit_partial<K: Sku, B: Backend<K>>(
    store: &B,
    id: ReservationId,
    lines: &[(K, u64)],
) -> Result<Reservation<K>, StockError<K>> {
    let life = store.lifecycle();
    let committed = lines::merge(lines)?;
    // A hold's lines never change, so they are checked here, before it is resolved: a
    // refusal changes nothing and leaves the hold open.
    if let Some(hold) = store.peek_in_slot(id) {
        let (part, _rest) = split_hold(id, hold.lines(), &committed)?;
        let units = part.iter().map(|(_, quantity)| quantity).sum();
        // A slot hold never moves to the registry: gone from its slot, it was resolved
        // meanwhile.
        return match store.resolve_in_slot(id, Change::Commit, Some(units)) {
            None => Err(StockError::UnknownReservation(id)),
            Some((_, true)) => Err(StockError::Expired(id)),
            Some((reservation, false)) => Ok(reservation),
        };
    }
    let Some(hold) = life.registry.peek(id) else {
        return Err(StockError::UnknownReservation(id));
    };
    let (part, rest) = split_hold(id, hold.lines(), &committed)?;
    let resolved = life.registry.resolve(
        id,
        Change::Commit,
        |held, _, change| {
            if change == Change::Release {
                // Past its deadline: everything goes back, as for `commit`.
                return (store.settle(held, Change::Release), Moves::Many(Vec::new()));
            }
            let released = if rest.is_empty() {
                Moves::Many(Vec::new())
            } else {
                store.settle(&rest, Change::Release)
            };
            (released, store.settle(&part, Change::Commit))
        },
        |reservation, expired, moved, key| Ok((reservation, expired, moved, key)),
    )?;
    let (reservation, expired, (released, committed_moves), key) = resolved;
    if expired {
        life.emit(reservation.lines(), &released, |lines| {
            StockEvent::Expired { id, lines, key }
        });
        return Err(StockError::Expired(id));
    }
    if !rest.is_empty() {
        let key = key.clone();
        life.emit(&rest, &released, |lines| StockEvent::Released {
            id,
            lines,
            key,
        });
    }
    life.emit(&part, &committed_moves, |lines| StockEvent::Committed {
        id,
        lines,
        key,
    });
    Ok(reservation)
}

/// Lines of a hold, SKU and units, in SKU order.
type Lines<K> = Vec<(K, u64)>;

/// The parts of the hold `id` with lines `held` that a partial commit of the merged lines
/// `committed` makes: the committed lines and the rest (`held` less `committed`, SKUs left
/// at 0 dropped), both in SKU order.
///
/// # Errors
///
/// [`StockError::NotInHold`] for a SKU of `committed` that `held` lacks,
/// [`StockError::AboveHold`] for a quantity above the held one.
pub(crate) fn split_hold<K: Sku>(
    id: ReservationId,
    held: &[(K, u64)],
    committed: &[(K, u64)],
) -> Result<(Lines<K>, Lines<K>), StockError<K>> {
    for (sku, requested) in committed {
        match held.binary_search_by(|(held_sku, _)| held_sku.cmp(sku)) {
            Err(_) => {
                return Err(StockError::NotInHold {
                    id,
                    sku: sku.clone(),
                })
            }
            Ok(at) if held[at].1 < *requested => {
                return Err(StockError::AboveHold {
                    id,
                    sku: sku.clone(),
                    held: held[at].1,
                    requested: *requested,
                })
            }
            Ok(_) => {}
        }
    }
    let rest = held
        .iter()
        .filter_map(|(sku, quantity)| {
            let taken = committed
                .binary_search_by(|(committed_sku, _)| committed_sku.cmp(sku))
                .map_or(0, |at| committed[at].1);
            (*quantity > taken).then(|| (sku.clone(), quantity - taken))
        })
        .collect();
    Ok((committed.to_vec(), rest))
}

/// [`StockStore::extend`](crate::StockStore::extend) for any store.
pub(crate) fn extend<K: Sku, B: Backend<K>>(
    store: &B,
    id: ReservationId,
    ttl: Duration,
) -> Result<Reservation<K>, StockError<K>> {
    let life = store.lifecycle();
    let extension = match store.extend_in_slot(id, ttl) {
        Some(extension) => extension,
        None => life
            .registry
            .extend(id, ttl, |lines| store.settle(lines, Change::Release))?,
    };
    match extension {
        Extension::Extended(reservation) => {
            life.stats.count(Stat::Extensions);
            Ok(reservation)
        }
        Extension::Expired(resolved) => report(life, resolved, Change::Release),
    }
}

/// [`StockStore::expire_due`](crate::StockStore::expire_due) for any store.
///
/// Expires the due holds one at a time, each in one step (its stock moved back and the
/// hold removed under the hold's shard lock); only when every hold of the sweep is
/// expired does the event sink hear of any. So whatever the sink does (panic, block,
/// resolve another hold of the sweep), no hold is left half done and no caller of another
/// hold waits for it.
pub(crate) fn expire_due<K: Sku, B: Backend<K>>(store: &B) -> Vec<Reservation<K>> {
    let life = store.lifecycle();
    let (now, due) = life.registry.take_due();
    let mut expired = Vec::with_capacity(due.len());
    let mut moves = Vec::new();
    let mut keys = Vec::new();
    for id in due {
        let resolved = match store.expire_in_slot(id, now) {
            Some(resolved) => resolved,
            None => life
                .registry
                .expire(id, now, |lines| store.settle(lines, Change::Release)),
        };
        let Some(resolved) = resolved else {
            continue;
        };
        if life.events.enabled() {
            moves.push(resolved.moved);
            keys.push(resolved.key);
        }
        expired.push(resolved.reservation);
    }
    // User code last, with no lock held.
    for ((reservation, moved), key) in expired.iter().zip(&moves).zip(keys) {
        let id = reservation.id();
        life.emit(reservation.lines(), moved, |lines| StockEvent::Expired {
            id,
            lines,
            key,
        });
    }
    expired
}

/// [`StockStore::reservation`](crate::StockStore::reservation) for any store: the open
/// hold `id` as it is now, `None` when not open or past its deadline.
pub(crate) fn reservation<K: Sku, B: Backend<K>>(
    store: &B,
    id: ReservationId,
) -> Option<Reservation<K>> {
    let life = store.lifecycle();
    let Some(reservation) = store.peek_in_slot(id) else {
        return life.registry.get(id);
    };
    // The clock is user code: read after the SKU's lock is released.
    match reservation.expires_at {
        Some(deadline) if life.registry.now() >= deadline => None,
        _ => Some(reservation),
    }
}

/// The open holds of `store`: the registry's and the slots'.
pub(crate) fn open_holds<K: Sku, B: Backend<K>>(store: &B) -> usize {
    let life = store.lifecycle();
    life.registry.len() + life.stats.slot_holds_open()
}

/// Reports a hold resolved by `change` (`Commit` or `Release`; its stock already moved,
/// the hold gone and counted by the registry).
///
/// # Errors
///
/// [`StockError::Expired`] when the hold was past its deadline (its stock went back).
fn report<K: Sku, H>(
    life: &Lifecycle<K, H>,
    resolved: Resolved<K, Moves>,
    change: Change,
) -> Result<Reservation<K>, StockError<K>> {
    let reservation = resolved.reservation;
    let id = reservation.id();
    let key = resolved.key;
    let resolution = Resolution::of(change, resolved.expired);
    life.emit(
        reservation.lines(),
        &resolved.moved,
        |lines| match resolution {
            Resolution::Expired => StockEvent::Expired { id, lines, key },
            Resolution::Committed => StockEvent::Committed { id, lines, key },
            Resolution::Released => StockEvent::Released { id, lines, key },
        },
    );
    if resolved.expired {
        Err(StockError::Expired(id))
    } else {
        Ok(reservation)
    }
}

impl<K: Sku, H: Clone + Default> Lifecycle<K, H> {
    /// The store's statistics: the striped counters (with the counts of the holds that
    /// live in SKUs' slots), and the registry's counts of holds.
    pub(crate) fn stats(&self) -> StoreStats {
        self.stats.snapshot(self.registry.counts())
    }
}

impl<K: Sku, H> Lifecycle<K, H> {
    /// Reports a new hold (counted by the registry, made with idempotency `key`) whose
    /// stock moved as `moved`.
    pub(crate) fn opened(
        &self,
        reservation: &Reservation<K>,
        moved: &[Moved],
        key: Option<&Arc<str>>,
    ) {
        self.emit(reservation.lines(), moved, |lines| StockEvent::Reserved {
            id: reservation.id(),
            lines,
            expires_at: reservation.expires_at(),
            key: key.cloned(),
        });
    }

    /// Reports a sale of merged `lines` that moved as `moved`.
    pub(crate) fn sold(&self, lines: &[(K, u64)], moved: &[Moved]) {
        self.emit(lines, moved, |lines| StockEvent::Sold { lines });
    }

    /// Reports a restock of `quantity` units of `sku` that moved as `moved`.
    pub(crate) fn restocked(&self, sku: &K, quantity: u64, moved: Moved) {
        if self.events.enabled() {
            self.emit(&[(sku.clone(), quantity)], &[moved], |mut lines| {
                StockEvent::Restocked {
                    line: lines.remove(0),
                }
            });
        }
    }

    /// Delivers the event `make` builds from the event lines of `lines` and `moved`, then a
    /// `LowStock` event for every line that crossed its threshold. Builds nothing without
    /// a sink: then it costs its caller one inlined check, not a call. Call with no
    /// internal lock held.
    #[inline]
    pub(crate) fn emit(
        &self,
        lines: &[(K, u64)],
        moved: &[Moved],
        make: impl FnOnce(Vec<EventLine<K>>) -> StockEvent<K>,
    ) {
        if self.events.enabled() {
            self.build_and_deliver(lines, moved, make);
        }
    }

    /// Delivers a `LowStock` event for every line of `lines` whose move in `moved` crossed
    /// its threshold, and nothing else: for a hold that was visible and then given back (a
    /// timed-out waiting hold, a compensated optimistic hold). Call with no internal lock
    /// held.
    pub(crate) fn crossings(&self, lines: &[(K, u64)], moved: &[Moved]) {
        if !self.events.enabled() {
            return;
        }
        let events: Vec<_> = lines
            .iter()
            .zip(moved)
            .filter_map(|((sku, _), moved)| Some(low_stock_event(sku, moved.low_stock?)))
            .collect();
        if !events.is_empty() {
            self.events.deliver(&events);
        }
    }

    /// [`emit`](Self::emit) when a sink listens.
    fn build_and_deliver(
        &self,
        lines: &[(K, u64)],
        moved: &[Moved],
        make: impl FnOnce(Vec<EventLine<K>>) -> StockEvent<K>,
    ) {
        debug_assert_eq!(lines.len(), moved.len());
        let event_lines = lines
            .iter()
            .zip(moved)
            .map(|((sku, quantity), moved)| EventLine {
                sku: sku.clone(),
                quantity: *quantity,
                level: moved.level,
            })
            .collect();
        let mut events = vec![make(event_lines)];
        for ((sku, _), moved) in lines.iter().zip(moved) {
            if let Some(low) = moved.low_stock {
                events.push(low_stock_event(sku, low));
            }
        }
        self.events.deliver(&events);
    }
}

/// The `LowStock` event of the crossing `low` on `sku`.
fn low_stock_event<K: Clone>(sku: &K, low: LowStock) -> StockEvent<K> {
    StockEvent::LowStock {
        sku: sku.clone(),
        available: low.available,
        threshold: low.threshold,
        version: low.version,
    }
}
