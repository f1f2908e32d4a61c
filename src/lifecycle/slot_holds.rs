//! Holds that live with their SKU: a one-line hold kept in one word of its SKU's slot,
//! with an id that names the slot. This module has what every store shares (the ids, the
//! word, the deadlines beside it) and the locking stores' way (the pessimistic and monitor
//! stores): the word is written under the lock `reserve` takes anyway, so that `commit`
//! finds it with the one lock it takes anyway. The stores without SKU locks (optimistic,
//! adaptive) change their word by compare-and-swap instead: `strategy::word_holds`.
//!
//! A one-line `reserve` + `commit` through the registry locks the SKU and a hold shard at
//! each end: 8 locked read-modify-writes. A hold in its slot's word is written while the
//! SKU is locked for the stock, and cleared while the SKU is locked to move the stock back
//! or on: 4 (counted with `benches/locked_rmw.py`), as a `Mutex<HashMap>` that keeps its
//! holds beside its counts, with per-SKU concurrency that such a map lacks, and on the
//! cache line the SKU's counts are on anyway. (A table of holds per SKU, allocated beside the slot, was tried first: over
//! 100k SKUs its extra cache misses made a `reserve` + `commit` 409 ns against the
//! registry's 126.) Racing resolutions of one hold are decided under the SKU's lock: the
//! first finds and clears the word, the others find it cleared or holding another hold
//! (linearizable, as in the registry).
//!
//! The word has room for one hold: a second hold of the SKU while the first is open goes
//! to the registry, as does a hold with an idempotency key, a hold made with a TTL, a
//! hold of more than 2²⁴ − 1 units, a hold in a store with an event sink (the path of
//! `reserve` that builds no report is the only one that writes the word), and a hold of a
//! SKU at position 2²⁴ or beyond. A hold given a deadline later by `extend` stays in its
//! word, its deadline kept beside (the store's [`Deadlines`](super::backend::Deadlines), in its `Lifecycle`) and in
//! the registry's expiry index.
//!
//! **Ids.** A slot hold's id is `2⁶³ | position << 39 | n`, where `n` is a fresh value
//! of the process-wide reservation id counter (below 2³⁹; the counter's values above it
//! go to the registry only): unique in the process, so an id of one store is never a
//! hold of another (another store's slot at that position holds another `n`), and a
//! resolved id is never issued again. A snapshot restores every hold into the registry
//! and moves the counter past their `n`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend::{Backend, Deadlines, HeldOne, Lifecycle};
use super::registry::{Extension, Resolved};
use crate::error::StockError;
use crate::level::{Change, Limits};
use crate::lines::{self, LevelCell, LockedSkus, Moves};
use crate::reservation::{HoldLines, Reservation, ReservationId};
use crate::stats::Stat;
use crate::store::Sku;
use crate::sync::{self, MutexGuard, Position};

/// The bit every slot hold's id has, and no registry id.
const TAG: u64 = 1 << 63;
/// Bits of an id's counter value.
const SERIAL_BITS: u32 = 39;
/// The counter values a slot hold may carry: below this.
const SERIAL_END: u64 = 1 << SERIAL_BITS;
/// The slot positions whose holds may live in their slot: below this (2²⁴).
const POSITION_END: u64 = TAG >> SERIAL_BITS;
/// Bits of a word's quantity.
const QUANTITY_BITS: u32 = 24;
/// The quantities a word holds: below this (2²⁴).
const QUANTITY_END: u64 = 1 << QUANTITY_BITS;
/// The word's bit set while the hold has a deadline (kept in [`Deadlines`](super::backend::Deadlines)).
const TIMED: u64 = 1 << QUANTITY_BITS;
/// Where a word's counter value starts.
const SERIAL_SHIFT: u32 = QUANTITY_BITS + 1;
const _: () = assert!(SERIAL_BITS + SERIAL_SHIFT == 64);

/// The position and counter value of the slot hold `id`, or `None` for a registry id.
#[inline(always)]
pub(crate) fn parts(id: ReservationId) -> Option<(Position, u64)> {
    let raw = id.get();
    // Below 2²⁴ after the shift: the cast keeps every bit.
    #[allow(clippy::cast_possible_truncation)]
    let position = ((raw & !TAG) >> SERIAL_BITS) as Position;
    (raw & TAG != 0).then_some((position, raw & (SERIAL_END - 1)))
}

/// The counter value of a slot hold's id, for a restore to move the counter past.
pub(crate) fn serial_of(id: ReservationId) -> Option<u64> {
    parts(id).map(|(_, serial)| serial)
}

/// The id of the slot hold with counter value `serial` in the slot at `position`.
#[inline(always)]
pub(crate) fn id_of(position: Position, serial: u64) -> ReservationId {
    ReservationId::from_u64(TAG | u64::from(position) << SERIAL_BITS | serial)
}

/// Whether a hold of `quantity` units of the SKU at `position` fits a slot's word.
#[inline(always)]
pub(crate) fn fits(position: Position, quantity: u64) -> bool {
    quantity < QUANTITY_END && u64::from(position) < POSITION_END
}

/// A fresh counter value for a slot hold's id, or `None` past the slot holds' room (the
/// value then goes unused).
#[inline(always)]
pub(crate) fn next_serial() -> Option<u64> {
    Some(sync::next_reservation_id()).filter(|serial| *serial < SERIAL_END)
}

/// One slot's hold: `serial << 25 | timed << 24 | quantity`, or 0 for none.
/// Guarded by the slot's lock in the locking stores, changed by compare-and-swap in the
/// others.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HoldWord(u64);

impl HoldWord {
    /// The word of a hold of `quantity` (below [`QUANTITY_END`]) with counter value
    /// `serial` (from 1, below [`SERIAL_END`]), without a deadline.
    pub(crate) fn new(serial: u64, quantity: u64) -> Self {
        Self(serial << SERIAL_SHIFT | quantity)
    }

    /// The word as its bits, and back.
    pub(crate) fn bits(self) -> u64 {
        self.0
    }

    pub(crate) fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// Whether it holds the hold with counter value `serial`.
    #[inline(always)]
    pub(crate) fn is(self, serial: u64) -> bool {
        self.0 != 0 && self.0 >> SERIAL_SHIFT == serial
    }

    /// The counter value of its hold's id.
    pub(crate) fn serial(self) -> u64 {
        self.0 >> SERIAL_SHIFT
    }

    pub(crate) fn quantity(self) -> u64 {
        self.0 & (QUANTITY_END - 1)
    }

    pub(crate) fn timed(self) -> bool {
        self.0 & TIMED != 0
    }

    /// The word with its deadline bit set (`true`) or cleared.
    pub(crate) fn with_timed(self, timed: bool) -> Self {
        Self(if timed {
            self.0 | TIMED
        } else {
            self.0 & !TIMED
        })
    }

    /// Whether it holds a hold.
    pub(crate) fn is_open(self) -> bool {
        self.0 != 0
    }
}

/// A SKU's state that has a hold word.
pub(crate) trait HoldsCell: LevelCell {
    /// The SKU's hold word.
    fn hold_word(&mut self) -> &mut HoldWord;
}

/// A store whose one-line holds may live in their SKUs' slots under the SKU's lock (the
/// pessimistic and monitor stores).
pub(crate) trait SlotHeld<K: Sku>: LockedSkus<K, Cell: HoldsCell> + Backend<K> {
    /// Moves `quantity` held units of `slot`'s SKU by `change` (`Commit` or `Release`),
    /// then releases `cell` (the slot's lock): never refused.
    fn settle_locked(
        &self,
        slot: &Self::Slot,
        cell: MutexGuard<'_, Self::Cell>,
        quantity: u64,
        change: Change,
    );
}

/// Holds one validated line (quantity at least 1): locks the SKU, checks and moves the
/// stock, and, when `in_slot` (no deadline, no key, no event sink) and the slot's word is
/// free, writes the hold there before it unlocks. Otherwise the caller records it in the
/// registry, with the position of the SKU's slot to settle it by.
///
/// # Errors
///
/// [`StockError::UnknownSku`], [`StockError::InsufficientStock`] or
/// [`StockError::Overflow`], with nothing changed.
#[inline(always)]
pub(crate) fn hold<K: Sku, S: SlotHeld<K>>(
    store: &S,
    line @ (sku, quantity): &(K, u64),
    in_slot: bool,
) -> Result<HeldOne<K, Option<Position>>, StockError<K>> {
    // `lock_sku`'s lookup, with a claim of our own: sharing its closure with `sell` made
    // the compiler keep the probe out of line (callgrind: `sell` 182 -> 213 instructions).
    let claimed = store.slot_map().get_claiming(sku, |slot| store.lock(slot));
    let Some((position, _, mut cell)) = claimed else {
        return Err(StockError::UnknownSku(sku.clone()));
    };
    let after = lines::next_level(&*cell, line, Change::Reserve, Limits::U64)?;
    cell.set_level(after);
    if !in_slot || !fits(position, *quantity) || cell.hold_word().is_open() {
        return Ok(HeldOne::Reserved(Some(position)));
    }
    let Some(serial) = next_serial() else {
        return Ok(HeldOne::Reserved(Some(position)));
    };
    *cell.hold_word() = HoldWord::new(serial, *quantity);
    drop(cell);
    store.stats().count(Stat::SlotHoldsOpened);
    Ok(HeldOne::InSlot(Reservation {
        id: id_of(position, serial),
        lines: HoldLines::One([line.clone()]),
        expires_at: None,
    }))
}

/// The SKU and slot of the position `id` names, if `id` is a slot hold's id and this store
/// has a slot there, with the id's counter value.
#[inline(always)]
fn slot_of<K: Sku, S: SlotHeld<K>>(store: &S, id: ReservationId) -> Option<(&K, &S::Slot, u64)> {
    let (position, serial) = parts(id)?;
    let slots = store.slot_map();
    // A position past the map's entries is an id of another store's.
    ((position as usize) < slots.len()).then(|| {
        let (sku, slot) = slots.entry_at(position);
        (sku, slot, serial)
    })
}

/// The reservation of the slot hold `id` of `quantity` units of `sku`.
pub(crate) fn reservation<K: Sku>(
    id: ReservationId,
    sku: &K,
    quantity: u64,
    expires_at: Option<Instant>,
) -> Reservation<K> {
    Reservation {
        id,
        lines: HoldLines::One([(sku.clone(), quantity)]),
        expires_at,
    }
}

/// What follows every resolution of the slot hold `id` (by `change`, `expired` or not,
/// its deadline `deadline` if it had one), with no lock held, in every store: counts it
/// and takes its deadline out of the expiry index.
#[inline(always)]
pub(crate) fn resolved<K: Clone + PartialEq, H: Clone + Default>(
    life: &Lifecycle<K, H>,
    id: ReservationId,
    change: Change,
    expired: bool,
    deadline: Option<Instant>,
) {
    let stat = match (expired, change) {
        (true, _) => Stat::SlotHoldsExpired,
        (false, Change::Commit) => Stat::SlotHoldsCommitted,
        (false, _) => Stat::SlotHoldsReleased,
    };
    life.stats.count(stat);
    if let Some(deadline) = deadline {
        life.registry.unindex_deadline(deadline, id);
    }
}

/// The report of an expired slot hold, `reservation` (its stock already given back): what
/// `extend` and the expiry sweep return for it.
pub(crate) fn expired<K>(reservation: Reservation<K>) -> Resolved<K, Moves> {
    Resolved {
        reservation,
        expired: true,
        moved: Moves::Many(Vec::new()),
        key: None,
    }
}

/// Appends to `holds` the copy of the slot hold in `word` (the word of `sku`'s slot at
/// `position`), if it holds one, with its deadline from `deadlines`: a snapshot's copy.
pub(crate) fn copy_word<K: Sku>(
    holds: &mut Vec<(Reservation<K>, Option<Arc<str>>)>,
    deadlines: &Deadlines,
    (position, sku): (Position, &K),
    word: HoldWord,
) {
    if word.is_open() {
        let id = id_of(position, word.serial());
        let expires_at = deadlines.get_cloned(&id);
        holds.push((reservation(id, sku, word.quantity(), expires_at), None));
    }
}

/// The deadline of the slot hold `id`, whose word is `word`, if `extend` gave it one;
/// `take` removes it from [`Deadlines`](super::backend::Deadlines). Call under the hold's SKU lock.
fn deadline_of<K: Sku, S: SlotHeld<K>>(
    store: &S,
    id: ReservationId,
    word: HoldWord,
    take: bool,
) -> Option<Instant> {
    match (word.timed(), take) {
        (false, _) => None,
        (true, true) => store.lifecycle().deadlines.remove(&id),
        (true, false) => store.lifecycle().deadlines.get_cloned(&id),
    }
}

/// Expires the slot hold `id` (word `word`, of `sku`, locked as `cell` inside `gate`)
/// whose deadline `deadline` passed, its deadline already out of [`Deadlines`](super::backend::Deadlines): clears the
/// word, gives its units back, releases the lock and the gate, counts it and takes the
/// deadline out of the expiry index. What `extend` and `expire` do with a due hold.
fn expire_locked<K: Sku, S: SlotHeld<K>>(
    store: &S,
    (slot, mut cell): (&S::Slot, MutexGuard<'_, S::Cell>),
    gate: Option<sync::GateEntry<'_>>,
    (id, sku, word): (ReservationId, &K, HoldWord),
    deadline: Option<Instant>,
) -> Resolved<K, Moves> {
    *cell.hold_word() = HoldWord::default();
    store.settle_locked(slot, cell, word.quantity(), Change::Release);
    drop(gate);
    resolved(store.lifecycle(), id, Change::Release, true, deadline);
    expired(reservation(id, sku, word.quantity(), deadline))
}

/// Resolves the slot hold `id` by `change` (`Commit` or `Release`; `Release` whatever was
/// asked once past its deadline): under its SKU's lock, finds and clears its word and
/// moves its stock; with `part` (a partial commit of that many units, at most the hold's),
/// commits `part` and releases the rest. Returns the hold and whether it expired. `None`
/// when `id` is no slot hold of this store (a registry id, a restored slot hold, another
/// store's): the caller asks the registry.
///
#[inline(always)]
pub(crate) fn resolve<K: Sku, S: SlotHeld<K>>(
    store: &S,
    id: ReservationId,
    change: Change,
    part: Option<u64>,
) -> Option<(Reservation<K>, bool)> {
    let (sku, slot, serial) = slot_of(store, id)?;
    let registry = &store.lifecycle().registry;
    // The clock is user code, read with no lock held, and only for a hold that has a
    // deadline (its word says so): such a hold, found without a reading, sends us back
    // for one. So a slot hold without a deadline never reads the clock, even in a store
    // whose other holds have TTLs.
    let mut now = None;
    loop {
        let gate = registry.enter();
        let mut cell = store.lock(slot);
        let word = *cell.hold_word();
        if !word.is(serial) {
            return None;
        }
        let mut expires_at = None;
        if word.timed() {
            if now.is_none() {
                drop(cell);
                drop(gate);
                now = Some(registry.now());
                continue;
            }
            expires_at = deadline_of(store, id, word, true);
        }
        let expired = expires_at
            .zip(now)
            .is_some_and(|(deadline, now)| now >= deadline);
        *cell.hold_word() = HoldWord::default();
        let quantity = word.quantity();
        let settled = [change, Change::Release][usize::from(expired)];
        match part {
            Some(part) if settled == Change::Commit && part < quantity => {
                let level = cell
                    .level()
                    .apply(Change::Commit, part, 0, Limits::U64)
                    .expect("an open hold can always be resolved");
                cell.set_level(level);
                store.settle_locked(slot, cell, quantity - part, Change::Release);
            }
            _ => store.settle_locked(slot, cell, quantity, settled),
        }
        drop(gate);
        resolved(store.lifecycle(), id, change, expired, expires_at);
        return Some((reservation(id, sku, quantity, expires_at), expired));
    }
}

/// The slot hold `id` as it is now, or `None` when it is no open slot hold of this store.
/// No clock reading: a hold past its deadline is shown.
pub(crate) fn peek<K: Sku, S: SlotHeld<K>>(store: &S, id: ReservationId) -> Option<Reservation<K>> {
    let (sku, slot, serial) = slot_of(store, id)?;
    let mut cell = S::mutex(slot).lock();
    let word = *cell.hold_word();
    if !word.is(serial) {
        return None;
    }
    let expires_at = deadline_of(store, id, word, false);
    drop(cell);
    Some(reservation(id, sku, word.quantity(), expires_at))
}

/// Gives the slot hold `id` the deadline `now + ttl` (kept in [`Deadlines`](super::backend::Deadlines) and the
/// registry's expiry index, both written under the SKU's lock); a hold already past its
/// deadline expires instead, its stock moved back. `None` when `id` is no open slot hold
/// of this store.
pub(crate) fn extend<K: Sku, S: SlotHeld<K>>(
    store: &S,
    id: ReservationId,
    ttl: Duration,
) -> Option<Extension<K, Moves>> {
    let (sku, slot, serial) = slot_of(store, id)?;
    let registry = &store.lifecycle().registry;
    let now = registry.now();
    let deadline = now.checked_add(ttl);
    let gate = registry.enter();
    let mut cell = store.lock(slot);
    let word = *cell.hold_word();
    if !word.is(serial) {
        return None;
    }
    let before = deadline_of(store, id, word, true);
    if before.is_some_and(|before| now >= before) {
        let hold = (id, sku, word);
        let expired = expire_locked(store, (slot, cell), gate, hold, before);
        return Some(Extension::Expired(expired));
    }
    // Re-indexed under the SKU's lock, so no resolution of the hold runs between the
    // deadline change and the index change (as the registry's `extend`). Lock order: the
    // SKU, then the deadlines' and the expiry index's shards; nothing takes them the other
    // way round.
    *cell.hold_word() = match deadline {
        Some(deadline) => {
            store
                .lifecycle()
                .deadlines
                .insert_new(id, deadline, |()| {});
            registry.index_deadline(deadline, id);
            word.with_timed(true)
        }
        None => word.with_timed(false),
    };
    if let Some(before) = before.filter(|before| Some(*before) != deadline) {
        registry.unindex_deadline(before, id);
    }
    drop(cell);
    drop(gate);
    let quantity = word.quantity();
    Some(Extension::Extended(reservation(
        id, sku, quantity, deadline,
    )))
}

/// Expires the slot hold `id` if it is still open and due at `now` (taken out of the expiry
/// index by the sweep): its stock goes back. `None` when `id` is no slot hold of this
/// store; `Some(None)` when the hold is gone or not due.
pub(crate) fn expire<K: Sku, S: SlotHeld<K>>(
    store: &S,
    id: ReservationId,
    now: Instant,
) -> Option<Option<Resolved<K, Moves>>> {
    let (sku, slot, serial) = slot_of(store, id)?;
    let registry = &store.lifecycle().registry;
    let gate = registry.enter();
    let mut cell = store.lock(slot);
    let word = *cell.hold_word();
    if !word.is(serial) {
        return Some(None);
    }
    let deadline = deadline_of(store, id, word, false);
    if deadline.is_none_or(|deadline| now < deadline) {
        return Some(None);
    }
    store.lifecycle().deadlines.remove(&id);
    let hold = (id, sku, word);
    Some(Some(expire_locked(
        store,
        (slot, cell),
        gate,
        hold,
        deadline,
    )))
}

/// Appends a copy of every open slot hold (with no idempotency key) to `holds`, for a
/// snapshot (exact while the snapshot gate is closed): one lock of every SKU in turn.
pub(crate) fn copy_holds<K: Sku, S: SlotHeld<K>>(
    store: &S,
    holds: &mut Vec<(Reservation<K>, Option<Arc<str>>)>,
) {
    let mut position: Position = 0;
    store.slot_map().for_each(|sku, slot| {
        let word = *S::mutex(slot).lock().hold_word();
        copy_word(holds, &store.lifecycle().deadlines, (position, sku), word);
        position += 1;
    });
}

/// The [`Backend`] methods of a store that keeps one-line holds in its slots, written
/// once: expanded inside the store's `impl Backend<K>` with the module of its way of
/// keeping them, `lifecycle::slot_holds` (under the SKU's lock) or `strategy::word_holds`
/// (by compare-and-swap), each with `hold`, `resolve`, `peek`, `extend`, `expire` and
/// `copy_holds`.
macro_rules! slot_hold_methods {
    ($($module:ident)::+) => {
        #[inline(always)]
        fn hold_one(
            &self,
            line: &(K, u64),
            in_slot: bool,
        ) -> Result<
            $crate::lifecycle::backend::HeldOne<K, Self::Handle>,
            $crate::error::StockError<K>,
        > {
            $crate::$($module)::+::hold(self, line, in_slot)
        }

        #[inline(always)]
        fn resolve_in_slot(
            &self,
            id: $crate::reservation::ReservationId,
            change: $crate::level::Change,
            part: Option<u64>,
        ) -> Option<($crate::reservation::Reservation<K>, bool)> {
            $crate::$($module)::+::resolve(self, id, change, part)
        }

        fn peek_in_slot(
            &self,
            id: $crate::reservation::ReservationId,
        ) -> Option<$crate::reservation::Reservation<K>> {
            $crate::$($module)::+::peek(self, id)
        }

        fn extend_in_slot(
            &self,
            id: $crate::reservation::ReservationId,
            ttl: std::time::Duration,
        ) -> Option<$crate::lifecycle::registry::Extension<K, $crate::lines::Moves>> {
            $crate::$($module)::+::extend(self, id, ttl)
        }

        fn expire_in_slot(
            &self,
            id: $crate::reservation::ReservationId,
            now: std::time::Instant,
        ) -> Option<Option<$crate::lifecycle::registry::Resolved<K, $crate::lines::Moves>>> {
            $crate::$($module)::+::expire(self, id, now)
        }

        fn copy_slot_holds(
            &self,
            holds: &mut Vec<(
                $crate::reservation::Reservation<K>,
                Option<std::sync::Arc<str>>,
            )>,
        ) {
            $crate::$($module)::+::copy_holds(self, holds)
        }
    };
}

pub(crate) use slot_hold_methods;

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn an_id_names_its_position_and_counter_value() {
        let id = ReservationId::from_u64(TAG | 5 << SERIAL_BITS | 77);
        assert_eq!(parts(id), Some((5, 77)));
        assert_eq!(parts(ReservationId::from_u64(77)), None);
        let word = HoldWord::new(77, 3);
        assert!(word.is(77) && !word.is(78) && !HoldWord::default().is(0));
        assert_eq!((word.quantity(), word.timed()), (3, false));
        assert!(word.with_timed(true).is(77));
        assert_eq!(word.with_timed(true).quantity(), 3);
        assert_eq!(
            id_of(5, 77),
            ReservationId::from_u64(TAG | 5 << SERIAL_BITS | 77)
        );
    }
}
