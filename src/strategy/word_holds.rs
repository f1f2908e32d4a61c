//! Holds that live with their SKU in the stores without SKU locks (the optimistic and
//! adaptive stores): a one-line hold kept in a 64-bit word beside its SKU's counts word,
//! with an id that names the slot (the encoding of [`slot_holds`], shared with the locking
//! stores).
//!
//! - `reserve` moves the units by the counts' compare-and-swap, then writes the hold into
//!   the free word by a second one (when the word is taken, by another hold or a racing
//!   `reserve`, the hold goes to the registry, its units already reserved). No lock: the
//!   hold is nobody's to resolve before `reserve` returns its id.
//! - Everything else done to the hold (`commit`, `release`, `extend`, the expiry sweep, a
//!   read of it) runs under the lock of the hold's shard of the store's
//!   [`Deadlines`](crate::lifecycle::backend::Deadlines), which also keeps the deadline
//!   `extend` may give it. Under the lock the word is checked to be the hold's, the units
//!   are moved by the counts' compare-and-swap, and only then is the word cleared.
//!
//! So a `reserve` + `commit` takes 5 locked read-modify-writes: the counts' and the word's
//! compare-and-swap, then the shard's lock, the counts' compare-and-swap and the unlock;
//! through the registry it takes 6. The lock is what makes racing resolutions
//! linearizable: a resolution that finds the word cleared (or holding another hold) knows
//! the winner's units already moved, and one that finds the word still the hold's waits on
//! the lock for the winner to finish. Claiming the word by compare-and-swap with no lock,
//! as first built, let the loser answer `UnknownReservation` while the winner's units had
//! not moved yet: a level read after that answer showed the hold's units still reserved
//! (`loom_resolution`, `a_loser_sees_the_winners_move`; the linearizability suite caught it
//! first). A word that is a hold's changes only under that hold's lock, so the lock holder
//! writes it with plain stores. A hold without a deadline reads no clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::StockError;
use crate::level::Change;
use crate::lifecycle::backend::HeldOne;
use crate::lifecycle::registry::{Extension, Resolved};
use crate::lifecycle::slot_holds::{self, HoldWord};
use crate::lines::Moves;
use crate::reservation::{Reservation, ReservationId};
use crate::stats::Stat;
use crate::store::Sku;
use crate::strategy::word_lines::{WordHandle, WordSlot, WordStore};
use crate::sync::{IdHasher, Ordering, Position, ShardGuard};

/// Holds one validated line (quantity at least 1): moves the stock by the counts'
/// compare-and-swap, then, when `in_slot` (no deadline, no key, no event sink) and the
/// slot's hold word is free, writes the hold there. Otherwise the caller records it in the
/// registry, with the position of the SKU's slot to settle it by.
///
/// # Errors
///
/// [`StockError::UnknownSku`], [`StockError::InsufficientStock`],
/// [`StockError::Overflow`] or [`StockError::Conflict`], with nothing changed.
#[inline(always)]
pub(crate) fn hold<K: Sku, S: WordStore<K>>(
    store: &S,
    (sku, quantity): &(K, u64),
    in_slot: bool,
) -> Result<HeldOne<K, WordHandle>, StockError<K>> {
    let Some((position, slot)) = store.skus().get_positioned(sku) else {
        return Err(StockError::UnknownSku(sku.clone()));
    };
    store.update_slot_quiet(sku, slot, Change::Reserve, *quantity)?;
    let word = slot.hold_word();
    if !in_slot || !slot_holds::fits(position, *quantity) || word.load(Ordering::Relaxed) != 0 {
        return Ok(HeldOne::Reserved(Some(position)));
    }
    let Some(serial) = slot_holds::next_serial() else {
        return Ok(HeldOne::Reserved(Some(position)));
    };
    let new = HoldWord::new(serial, *quantity).bits();
    // Release: whoever claims the hold sees its units reserved.
    if word
        .compare_exchange(0, new, Ordering::Release, Ordering::Relaxed)
        .is_err()
    {
        return Ok(HeldOne::Reserved(Some(position)));
    }
    store.lifecycle().stats.count(Stat::SlotHoldsOpened);
    Ok(HeldOne::InSlot(slot_holds::reservation(
        slot_holds::id_of(position, serial),
        sku,
        *quantity,
        None,
    )))
}

/// The SKU and slot of the position `id` names, if `id` is a slot hold's id and this store
/// has a slot there, with the id's counter value.
#[inline(always)]
fn slot_of<K: Sku, S: WordStore<K>>(store: &S, id: ReservationId) -> Option<((&K, &S::Slot), u64)> {
    let (position, serial) = slot_holds::parts(id)?;
    let slots = store.skus();
    // A position past the map's entries is an id of another store's.
    ((position as usize) < slots.len()).then(|| (slots.entry_at(position), serial))
}

/// The word of the hold with counter value `serial` in `slot`, or `None` when the word
/// holds no such hold.
#[inline(always)]
fn open_word<S: WordSlot>(slot: &S, serial: u64) -> Option<HoldWord> {
    let word = HoldWord::from_bits(slot.hold_word().load(Ordering::Acquire));
    word.is(serial).then_some(word)
}

/// What a change of a slot hold found under its lock.
enum Locked<T> {
    /// The hold has a deadline and the caller read no clock: read it, then come again.
    NeedsClock,
    /// Done, with what the change returns.
    Done(T),
}

/// The lock of a slot hold: its shard of the store's deadlines, locked.
type HoldLock<'a> = ShardGuard<'a, ReservationId, Instant, IdHasher, ()>;

/// Runs `change` on the open slot hold `id` of this store under its lock (the lock of its
/// shard of the store's deadlines), inside the gate: `change` gets the hold's SKU and
/// slot, its word (checked to be the hold's under the lock) and the lock, through which it
/// reads or changes the hold's deadline. The clock is read with no lock held, once
/// `change` asks for it, and handed to it after. `None` when `id` is no open slot hold of
/// this store.
#[inline(always)]
fn locked<'a, K: Sku, S: WordStore<K>, T>(
    store: &'a S,
    id: &ReservationId,
    mut change: impl FnMut(
        (&'a K, &'a S::Slot),
        HoldWord,
        &mut HoldLock<'_>,
        Option<Instant>,
    ) -> Locked<T>,
) -> Option<T> {
    let (entry @ (_, slot), serial) = slot_of(store, *id)?;
    let life = store.lifecycle();
    let mut now = None;
    loop {
        // A word that is not the hold's, read with no lock: the hold was resolved, its
        // units moved before its word was cleared.
        open_word(slot, serial)?;
        let gate = life.registry.enter();
        let mut lock = life.deadlines.lock_shard(id);
        let word = open_word(slot, serial)?;
        let done = change(entry, word, &mut lock, now);
        drop(lock);
        drop(gate);
        match done {
            Locked::Done(done) => return Some(done),
            Locked::NeedsClock => now = Some(life.registry.now()),
        }
    }
}

/// Resolves the slot hold `id` by `change` (`Commit` or `Release`; `Release` whatever was
/// asked once past its deadline): under its lock, moves its stock, then clears its word;
/// with `part` (a partial commit of that many units, at most the hold's), commits `part`
/// and releases the rest. Returns the hold and whether it expired. `None` when `id` is no
/// open slot hold of this store (a registry id, a restored slot hold, another store's):
/// the caller asks the registry.
#[inline(always)]
pub(crate) fn resolve<K: Sku, S: WordStore<K>>(
    store: &S,
    id: ReservationId,
    change: Change,
    part: Option<u64>,
) -> Option<(Reservation<K>, bool)> {
    let life = store.lifecycle();
    let (sku, quantity, expires_at, expired) = locked(store, &id, |entry, word, lock, now| {
        let (expires_at, expired) = if word.timed() {
            let Some(now) = now else {
                return Locked::NeedsClock;
            };
            let expires_at = lock.with_entry(Option::take);
            (
                expires_at,
                expires_at.is_some_and(|deadline| now >= deadline),
            )
        } else {
            (None, false)
        };
        let quantity = word.quantity();
        match part {
            Some(part) if !expired && change == Change::Commit && part < quantity => {
                store.settle_slot_quiet(entry.0, entry.1, part, Change::Commit);
                store.settle_slot_quiet(entry.0, entry.1, quantity - part, Change::Release);
            }
            _ => {
                let settled = [change, Change::Release][usize::from(expired)];
                store.settle_slot_quiet(entry.0, entry.1, quantity, settled);
            }
        }
        entry.1.hold_word().store(0, Ordering::Release);
        Locked::Done((entry.0, quantity, expires_at, expired))
    })?;
    slot_holds::resolved(life, id, change, expired, expires_at);
    Some((
        slot_holds::reservation(id, sku, quantity, expires_at),
        expired,
    ))
}

/// The slot hold `id` as it is now, or `None` when it is no open slot hold of this store.
/// No clock reading: a hold past its deadline is shown.
pub(crate) fn peek<K: Sku, S: WordStore<K>>(
    store: &S,
    id: ReservationId,
) -> Option<Reservation<K>> {
    locked(store, &id, |(sku, _), word, lock, _| {
        let deadline = if word.timed() {
            lock.with_entry(|deadline| *deadline)
        } else {
            None
        };
        Locked::Done(slot_holds::reservation(id, sku, word.quantity(), deadline))
    })
}

/// Under the hold's lock: expires the hold of `entry` with word `word` if its deadline
/// passed at `now`: gives its units back, clears its word and takes its deadline out.
/// Returns the expired hold, or `None` when not due.
fn expire_if_due<K: Sku, S: WordStore<K>>(
    store: &S,
    id: ReservationId,
    (entry, word, lock): ((&K, &S::Slot), HoldWord, &mut HoldLock<'_>),
    now: Instant,
) -> Option<Resolved<K, Moves>> {
    if !word.timed() {
        return None;
    }
    let expires_at = lock.with_entry(|deadline| {
        deadline
            .filter(|deadline| now >= *deadline)
            .and_then(|_| deadline.take())
    })?;
    store.settle_slot_quiet(entry.0, entry.1, word.quantity(), Change::Release);
    entry.1.hold_word().store(0, Ordering::Release);
    let reservation = slot_holds::reservation(id, entry.0, word.quantity(), Some(expires_at));
    Some(slot_holds::expired(reservation))
}

/// What follows the expiry of a slot hold, with no lock held ([`slot_holds::resolved`]).
fn count_expired<K: Sku, S: WordStore<K>>(store: &S, expired: &Resolved<K, Moves>) {
    let reservation = &expired.reservation;
    let (id, deadline) = (reservation.id, reservation.expires_at);
    slot_holds::resolved(store.lifecycle(), id, Change::Release, true, deadline);
}

/// Gives the slot hold `id` the deadline `now + ttl` (kept in the store's deadlines and the
/// registry's expiry index, both written under the hold's lock); a hold already past its
/// deadline expires instead, its stock moved back. `None` when `id` is no open slot hold
/// of this store.
pub(crate) fn extend<K: Sku, S: WordStore<K>>(
    store: &S,
    id: ReservationId,
    ttl: Duration,
) -> Option<Extension<K, Moves>> {
    let registry = &store.lifecycle().registry;
    let now = registry.now();
    let deadline = now.checked_add(ttl);
    let extended = locked(store, &id, |entry, word, lock, _| {
        if let Some(expired) = expire_if_due(store, id, (entry, word, lock), now) {
            return Locked::Done(Extension::Expired(expired));
        }
        let before = lock.with_entry(|entry_deadline| std::mem::replace(entry_deadline, deadline));
        // Lock order: the hold's shard, then the expiry index's; nothing takes them the
        // other way round.
        if let Some(deadline) = deadline.filter(|deadline| Some(*deadline) != before) {
            registry.index_deadline(deadline, id);
        }
        if let Some(before) = before.filter(|before| Some(*before) != deadline) {
            registry.unindex_deadline(before, id);
        }
        let timed = word.with_timed(deadline.is_some());
        entry.1.hold_word().store(timed.bits(), Ordering::Release);
        let reservation = slot_holds::reservation(id, entry.0, word.quantity(), deadline);
        Locked::Done(Extension::Extended(reservation))
    })?;
    if let Extension::Expired(expired) = &extended {
        count_expired(store, expired);
    }
    Some(extended)
}

/// Expires the slot hold `id` if it is still open and due at `now` (taken out of the
/// expiry index by the sweep): its stock goes back. `None` when `id` is no slot hold of
/// this store; `Some(None)` when the hold is gone or not due.
pub(crate) fn expire<K: Sku, S: WordStore<K>>(
    store: &S,
    id: ReservationId,
    now: Instant,
) -> Option<Option<Resolved<K, Moves>>> {
    slot_of(store, id)?;
    let expired = locked(store, &id, |entry, word, lock, _| {
        Locked::Done(expire_if_due(store, id, (entry, word, lock), now))
    })
    .flatten();
    if let Some(expired) = &expired {
        count_expired(store, expired);
    }
    Some(expired)
}

/// Appends a copy of every open slot hold (with no idempotency key) to `holds`, for a
/// snapshot (exact while the snapshot gate is closed: no change is in progress).
pub(crate) fn copy_holds<K: Sku, S: WordStore<K>>(
    store: &S,
    holds: &mut Vec<(Reservation<K>, Option<Arc<str>>)>,
) {
    let mut position: Position = 0;
    store.skus().for_each(|sku, slot| {
        let word = HoldWord::from_bits(slot.hold_word().load(Ordering::Acquire));
        slot_holds::copy_word(holds, &store.lifecycle().deadlines, (position, sku), word);
        position += 1;
    });
}
