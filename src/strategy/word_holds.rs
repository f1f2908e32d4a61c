//! Holds that live with their SKU in the stores without SKU locks (the optimistic and
//! adaptive stores): a one-line hold kept in a 64-bit word beside its SKU's counts word,
//! changed by compare-and-swap, with an id that names the slot (the encoding of
//! [`slot_holds`], shared with the locking stores).
//!
//! A one-line `reserve` + `commit` through the registry takes a hold shard's lock at each
//! end beside the counts' compare-and-swap: 6 locked read-modify-writes. Here it takes 4:
//!
//! - `reserve` moves the units by the counts' compare-and-swap, then writes the hold into
//!   the free word by a second one (when the word is taken, by another hold or a racing
//!   `reserve`, the hold goes to the registry, its units already reserved);
//! - `commit` and `release` claim the hold by a compare-and-swap of its word to empty (the
//!   one that wins resolves it; the others find the word empty or holding another hold, so
//!   racing resolutions are linearizable, as in the registry), then move its units by the
//!   counts' compare-and-swap.
//!
//! Between the two steps of each a concurrent reader may see the units reserved and the
//! hold not yet (or no longer) open, as with a registry hold, whose units also move in a
//! step of their own.
//!
//! **Deadlines.** A hold given a deadline by `extend` keeps it in the store's
//! [`Deadlines`](crate::lifecycle::backend::Deadlines) and the registry's expiry index,
//! and its word's `TIMED` bit says so. The deadline and the word are two places, so every
//! read or change of a deadline (`extend`, the expiry sweep, the resolution or a read of a
//! hold with a deadline) runs under the lock of the hold's shard of the deadlines map and
//! checks the word again there: a timed word changes only under that lock, so a
//! resolution cannot read a deadline, lose it to an `extend`, and still find the word
//! unchanged. A hold without a deadline takes no lock, and its resolution reads no
//! clock. Nothing ever waits for a word: a thread that finds it changed starts again.

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
use crate::strategy::word_lines::{retry_past_conflicts, WordHandle, WordSlot, WordStore};
use crate::sync::{Ordering, Position};

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

/// Changes `slot`'s hold word from `word` to `new`: `false` when it was no longer `word`.
#[inline(always)]
fn swap<S: WordSlot>(slot: &S, word: HoldWord, new: HoldWord) -> bool {
    slot.hold_word()
        .compare_exchange(word.bits(), new.bits(), Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
}

/// Moves `quantity` held units of `sku`, whose slot is `slot`, by `change` (`Commit` or
/// `Release`): never refused.
#[inline(always)]
fn settle<K: Sku, S: WordStore<K>>(
    store: &S,
    (sku, slot): (&K, &S::Slot),
    quantity: u64,
    change: Change,
) {
    retry_past_conflicts(|| store.update_slot_quiet(sku, slot, change, quantity));
}

/// Resolves the slot hold `id` by `change` (`Commit` or `Release`; `Release` whatever was
/// asked once past its deadline): claims its word, then moves its stock; with `part` (a
/// partial commit of that many units, at most the hold's), commits `part` and releases the
/// rest. Returns the hold and whether it expired. `None` when `id` is no open slot hold of
/// this store (a registry id, a restored slot hold, another store's): the caller asks the
/// registry.
#[inline(always)]
pub(crate) fn resolve<K: Sku, S: WordStore<K>>(
    store: &S,
    id: ReservationId,
    change: Change,
    part: Option<u64>,
) -> Option<(Reservation<K>, bool)> {
    let (entry @ (sku, slot), serial) = slot_of(store, id)?;
    let life = store.lifecycle();
    // The clock is user code, read with no lock held, and only for a hold that has a
    // deadline (its word says so).
    let mut now = None;
    let (gate, word, expires_at) = loop {
        let gate = life.registry.enter();
        let word = open_word(slot, serial)?;
        if !word.timed() {
            if swap(slot, word, HoldWord::default()) {
                break (gate, word, None);
            }
            continue;
        }
        let Some(now) = now else {
            drop(gate);
            now = Some(life.registry.now());
            continue;
        };
        // A timed word changes only under its deadline's lock: checked again there, it
        // and the deadline are read as one.
        let taken = life.deadlines.with_entry(&id, |deadline| {
            swap(slot, word, HoldWord::default()).then(|| deadline.take())
        });
        if let Some(deadline) = taken {
            break (gate, word, deadline.map(|deadline| (deadline, now)));
        }
    };
    let expired = expires_at.is_some_and(|(deadline, now)| now >= deadline);
    let quantity = word.quantity();
    match part {
        Some(part) if !expired && change == Change::Commit && part < quantity => {
            settle(store, entry, part, Change::Commit);
            settle(store, entry, quantity - part, Change::Release);
        }
        _ => settle(
            store,
            entry,
            quantity,
            [change, Change::Release][usize::from(expired)],
        ),
    }
    drop(gate);
    slot_holds::count_resolution(&life.stats, change, expired);
    let deadline = expires_at.map(|(deadline, _)| deadline);
    if let Some(deadline) = deadline {
        life.registry.unindex_deadline(deadline, id);
    }
    Some((
        slot_holds::reservation(id, sku, quantity, deadline),
        expired,
    ))
}

/// The slot hold `id` as it is now, or `None` when it is no open slot hold of this store.
/// No clock reading: a hold past its deadline is shown.
pub(crate) fn peek<K: Sku, S: WordStore<K>>(
    store: &S,
    id: ReservationId,
) -> Option<Reservation<K>> {
    let ((sku, slot), serial) = slot_of(store, id)?;
    let deadlines = &store.lifecycle().deadlines;
    let (word, expires_at) = loop {
        let word = open_word(slot, serial)?;
        if !word.timed() {
            break (word, None);
        }
        let read = deadlines.with_entry(&id, |deadline| {
            (slot.hold_word().load(Ordering::Acquire) == word.bits()).then_some(*deadline)
        });
        if let Some(expires_at) = read {
            break (word, expires_at);
        }
    };
    Some(slot_holds::reservation(
        id,
        sku,
        word.quantity(),
        expires_at,
    ))
}

/// What a change of a slot hold's deadline found under the deadline's lock.
enum Locked<T> {
    /// The word changed before the lock was taken: read it again.
    Changed,
    /// The hold's deadline had passed: its word is cleared and its deadline taken out of
    /// the deadlines (this one); the caller gives its units back.
    Due(Option<Instant>),
    /// Done.
    Done(T),
}

/// Runs `change` on the open slot hold `id` of this store, under the lock of its deadline
/// (`change` gets the hold's word, checked unchanged under the lock, and its deadline
/// entry), inside the gate; expires it when `change` finds it due. `None` when `id` is no
/// slot hold of this store; `Some(None)` when it is not open.
fn change_deadline<K: Sku, S: WordStore<K>, T>(
    store: &S,
    id: ReservationId,
    mut change: impl FnMut(HoldWord, &mut Option<Instant>) -> Locked<T>,
) -> Option<Option<Result<T, Resolved<K, Moves>>>> {
    let ((sku, slot), serial) = slot_of(store, id)?;
    let life = store.lifecycle();
    loop {
        let gate = life.registry.enter();
        let Some(word) = open_word(slot, serial) else {
            return Some(None);
        };
        let locked = life.deadlines.with_entry(&id, |deadline| {
            if slot.hold_word().load(Ordering::Acquire) != word.bits() {
                return Locked::Changed;
            }
            change(word, deadline)
        });
        let deadline = match locked {
            Locked::Changed => continue,
            Locked::Done(done) => return Some(Some(Ok(done))),
            Locked::Due(deadline) => deadline,
        };
        settle(store, (sku, slot), word.quantity(), Change::Release);
        drop(gate);
        slot_holds::count_resolution(&life.stats, Change::Release, true);
        if let Some(deadline) = deadline {
            life.registry.unindex_deadline(deadline, id);
        }
        return Some(Some(Err(Resolved {
            reservation: slot_holds::reservation(id, sku, word.quantity(), deadline),
            expired: true,
            moved: Moves::Many(Vec::new()),
            key: None,
        })));
    }
}

/// Under the deadline's lock, with the word `word` checked: clears the word and takes the
/// deadline out if it passed at `now`.
fn take_if_due<T>(
    slot: &impl WordSlot,
    word: HoldWord,
    deadline: &mut Option<Instant>,
    now: Instant,
) -> Option<Locked<T>> {
    if !word.timed() || deadline.is_none_or(|deadline| now < deadline) {
        return None;
    }
    // Under the lock a timed word does not change: the swap cannot fail.
    if !swap(slot, word, HoldWord::default()) {
        return Some(Locked::Changed);
    }
    Some(Locked::Due(deadline.take()))
}

/// Gives the slot hold `id` the deadline `now + ttl` (kept in the store's deadlines and the
/// registry's expiry index, both written under the deadline's lock); a hold already past
/// its deadline expires instead, its stock moved back. `None` when `id` is no open slot
/// hold of this store.
pub(crate) fn extend<K: Sku, S: WordStore<K>>(
    store: &S,
    id: ReservationId,
    ttl: Duration,
) -> Option<Extension<K, Moves>> {
    let registry = &store.lifecycle().registry;
    let now = registry.now();
    let deadline = now.checked_add(ttl);
    let (sku, slot) = slot_of(store, id)?.0;
    let extended = change_deadline(store, id, |word, entry| {
        if let Some(due) = take_if_due(slot, word, entry, now) {
            return due;
        }
        // Set (or cleared) under the lock: a resolution without it that read the word
        // before finds it changed.
        if !swap(slot, word, word.with_timed(deadline.is_some())) {
            return Locked::Changed;
        }
        let before = std::mem::replace(entry, deadline);
        // Lock order: the deadline's shard, then the expiry index's; nothing takes them
        // the other way round.
        if let Some(deadline) = deadline.filter(|deadline| Some(*deadline) != before) {
            registry.index_deadline(deadline, id);
        }
        if let Some(before) = before.filter(|before| Some(*before) != deadline) {
            registry.unindex_deadline(before, id);
        }
        Locked::Done(word.quantity())
    })??;
    Some(match extended {
        Ok(quantity) => Extension::Extended(slot_holds::reservation(id, sku, quantity, deadline)),
        Err(expired) => Extension::Expired(expired),
    })
}

/// Expires the slot hold `id` if it is still open and due at `now` (taken out of the
/// expiry index by the sweep): its stock goes back. `None` when `id` is no slot hold of
/// this store; `Some(None)` when the hold is gone or not due.
pub(crate) fn expire<K: Sku, S: WordStore<K>>(
    store: &S,
    id: ReservationId,
    now: Instant,
) -> Option<Option<Resolved<K, Moves>>> {
    let slot = slot_of(store, id)?.0 .1;
    let expired = change_deadline(store, id, |word, entry| {
        take_if_due(slot, word, entry, now).unwrap_or(Locked::Done(()))
    })?;
    Some(expired.and_then(Result::err))
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
        if word.is_open() {
            let id = slot_holds::id_of(position, word.serial());
            let expires_at = store.lifecycle().deadlines.get_cloned(&id);
            let reservation = slot_holds::reservation(id, sku, word.quantity(), expires_at);
            holds.push((reservation, None));
        }
        position += 1;
    });
}
