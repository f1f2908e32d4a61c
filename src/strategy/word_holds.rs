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
//! [`Deadlines`](crate::lifecycle::slot_holds::Deadlines) and the registry's expiry index,
//! and its word's `TIMED` bit says so. The deadline and the word are two places, so the
//! thread that reads or changes a deadline (`extend`, the expiry sweep, the resolution or
//! a read of a hold with a deadline) first sets the word's `BUSY` bit by compare-and-swap
//! and clears it when done: without it, a resolution could read a deadline, lose it to an
//! `extend`, and still find the word unchanged. Other threads wait while the bit is set
//! (spinning, then yielding), for the few instructions of a map update. A hold without a
//! deadline never sets it, and its resolution reads no clock.

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
use crate::sync::{Backoff, GateEntry, Ordering, Position};

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

/// The slot of the position `id` names, if `id` is a slot hold's id and this store has a
/// slot there, with the id's counter value.
#[inline(always)]
fn slot_of<K: Sku, S: WordStore<K>>(
    store: &S,
    id: ReservationId,
) -> Option<(Position, &S::Slot, u64)> {
    let (position, serial) = slot_holds::parts(id)?;
    let slots = store.skus();
    // A position past the map's entries is an id of another store's.
    ((position as usize) < slots.len()).then(|| (position, slots.at(position), serial))
}

/// The word of the hold with counter value `serial` in `slot`, once no thread has it
/// busy, or `None` when the word holds no such hold.
#[inline(always)]
fn open_word<S: WordSlot>(slot: &S, serial: u64, backoff: &Backoff) -> Option<HoldWord> {
    loop {
        let word = HoldWord::from_bits(slot.hold_word().load(Ordering::Acquire));
        if !word.busy() {
            return word.is(serial).then_some(word);
        }
        backoff.snooze();
    }
}

/// Sets the busy bit of `slot`'s hold word, which was `word`: `false` when it changed.
fn claim<S: WordSlot>(slot: &S, word: HoldWord) -> bool {
    slot.hold_word()
        .compare_exchange(
            word.bits(),
            word.claimed().bits(),
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_ok()
}

/// Moves `quantity` held units of the SKU at `position` by `change` (`Commit` or
/// `Release`): never refused.
fn settle<K: Sku, S: WordStore<K>>(store: &S, position: Position, quantity: u64, change: Change) {
    let skus = store.skus();
    let (sku, slot) = (skus.key_at(position), skus.at(position));
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
    let (position, slot, serial) = slot_of(store, id)?;
    let life = store.lifecycle();
    let backoff = Backoff::new();
    // The clock is user code, read before the word is claimed, and only for a hold that
    // has a deadline (its word says so).
    let mut now = None;
    let (gate, word, expires_at) = loop {
        let gate = life.registry.enter();
        let word = open_word(slot, serial, &backoff)?;
        if !word.timed() {
            if slot
                .hold_word()
                .compare_exchange(word.bits(), 0, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                break (gate, word, None);
            }
            continue;
        }
        let Some(now) = now else {
            drop(gate);
            now = Some(life.registry.now());
            continue;
        };
        if claim(slot, word) {
            let expires_at = life.deadlines.remove(&id);
            slot.hold_word().store(0, Ordering::Release);
            break (gate, word, expires_at.map(|deadline| (deadline, now)));
        }
    };
    let expired = expires_at.is_some_and(|(deadline, now)| now >= deadline);
    let quantity = word.quantity();
    match part {
        Some(part) if !expired && change == Change::Commit && part < quantity => {
            settle(store, position, part, Change::Commit);
            settle(store, position, quantity - part, Change::Release);
        }
        _ => settle(store, position, quantity, [change, Change::Release][usize::from(expired)]),
    }
    drop(gate);
    slot_holds::count_resolution(&life.stats, change, expired);
    let deadline = expires_at.map(|(deadline, _)| deadline);
    if let Some(deadline) = deadline {
        life.registry.unindex_deadline(deadline, id);
    }
    let sku = store.skus().key_at(position);
    Some((slot_holds::reservation(id, sku, quantity, deadline), expired))
}

/// The slot hold `id` as it is now, or `None` when it is no open slot hold of this store.
/// No clock reading: a hold past its deadline is shown.
pub(crate) fn peek<K: Sku, S: WordStore<K>>(store: &S, id: ReservationId) -> Option<Reservation<K>> {
    let (position, slot, serial) = slot_of(store, id)?;
    let backoff = Backoff::new();
    let (word, expires_at) = loop {
        let word = open_word(slot, serial, &backoff)?;
        if !word.timed() {
            break (word, None);
        }
        if claim(slot, word) {
            let expires_at = store.lifecycle().deadlines.get_cloned(&id);
            slot.hold_word().store(word.bits(), Ordering::Release);
            break (word, expires_at);
        }
    };
    let sku = store.skus().key_at(position);
    Some(slot_holds::reservation(id, sku, word.quantity(), expires_at))
}

/// Claims the open slot hold `id` of this store for a change of its deadline: the gate
/// entered, its position, slot and word (now busy). `None` when `id` is no slot hold of
/// this store; `Some(None)` when it is not open.
#[allow(clippy::type_complexity)]
fn claim_hold<'a, K: Sku, S: WordStore<K>>(
    store: &'a S,
    id: ReservationId,
) -> Option<Option<(Option<GateEntry<'a>>, Position, &'a S::Slot, HoldWord)>> {
    let (position, slot, serial) = slot_of(store, id)?;
    let backoff = Backoff::new();
    loop {
        let gate = store.lifecycle().registry.enter();
        let Some(word) = open_word(slot, serial, &backoff) else {
            return Some(None);
        };
        if claim(slot, word) {
            return Some(Some((gate, position, slot, word)));
        }
    }
}

/// Expires the claimed slot hold `id` (word `word`, at `position`) whose deadline
/// `deadline` passed, its deadline already out of the store's deadlines: clears the word,
/// gives its units back, leaves the gate, counts it and takes the deadline out of the
/// expiry index.
fn expire_claimed<K: Sku, S: WordStore<K>>(
    store: &S,
    gate: Option<GateEntry<'_>>,
    (id, position, slot, word): (ReservationId, Position, &S::Slot, HoldWord),
    deadline: Option<Instant>,
) -> Resolved<K, Moves> {
    slot.hold_word().store(0, Ordering::Release);
    settle(store, position, word.quantity(), Change::Release);
    drop(gate);
    let life = store.lifecycle();
    slot_holds::count_resolution(&life.stats, Change::Release, true);
    if let Some(deadline) = deadline {
        life.registry.unindex_deadline(deadline, id);
    }
    let sku = store.skus().key_at(position);
    Resolved {
        reservation: slot_holds::reservation(id, sku, word.quantity(), deadline),
        expired: true,
        moved: Moves::Many(Vec::new()),
        key: None,
    }
}

/// Gives the slot hold `id` the deadline `now + ttl` (kept in the store's deadlines and the
/// registry's expiry index, both written while its word is busy); a hold already past its
/// deadline expires instead, its stock moved back. `None` when `id` is no open slot hold
/// of this store.
pub(crate) fn extend<K: Sku, S: WordStore<K>>(
    store: &S,
    id: ReservationId,
    ttl: Duration,
) -> Option<Extension<K, Moves>> {
    let life = store.lifecycle();
    let now = life.registry.now();
    let deadline = now.checked_add(ttl);
    let (gate, position, slot, word) = claim_hold(store, id)??;
    let before = if word.timed() {
        life.deadlines.remove(&id)
    } else {
        None
    };
    if before.is_some_and(|before| now >= before) {
        let hold = (id, position, slot, word);
        return Some(Extension::Expired(expire_claimed(store, gate, hold, before)));
    }
    if let Some(deadline) = deadline {
        life.deadlines.insert_new(id, deadline, |()| {});
        life.registry.index_deadline(deadline, id);
    }
    if let Some(before) = before.filter(|before| Some(*before) != deadline) {
        life.registry.unindex_deadline(before, id);
    }
    let extended = word.with_timed(deadline.is_some());
    slot.hold_word().store(extended.bits(), Ordering::Release);
    drop(gate);
    let sku = store.skus().key_at(position);
    Some(Extension::Extended(slot_holds::reservation(
        id,
        sku,
        word.quantity(),
        deadline,
    )))
}

/// Expires the slot hold `id` if it is still open and due at `now` (taken out of the
/// expiry index by the sweep): its stock goes back. `None` when `id` is no slot hold of
/// this store; `Some(None)` when the hold is gone or not due.
pub(crate) fn expire<K: Sku, S: WordStore<K>>(
    store: &S,
    id: ReservationId,
    now: Instant,
) -> Option<Option<Resolved<K, Moves>>> {
    let Some((gate, position, slot, word)) = claim_hold(store, id)? else {
        return Some(None);
    };
    let life = store.lifecycle();
    let deadline = word
        .timed()
        .then(|| life.deadlines.get_cloned(&id))
        .flatten();
    if deadline.is_none_or(|deadline| now < deadline) {
        slot.hold_word().store(word.bits(), Ordering::Release);
        return Some(None);
    }
    life.deadlines.remove(&id);
    let hold = (id, position, slot, word);
    Some(Some(expire_claimed(store, gate, hold, deadline)))
}

/// Appends a copy of every open slot hold (with no idempotency key) to `holds`, for a
/// snapshot (exact while the snapshot gate is closed: no change is in progress, and a
/// read's busy bit is waited out).
pub(crate) fn copy_holds<K: Sku, S: WordStore<K>>(
    store: &S,
    holds: &mut Vec<(Reservation<K>, Option<Arc<str>>)>,
) {
    let mut position: Position = 0;
    let backoff = Backoff::new();
    store.skus().for_each(|sku, slot| {
        let word = loop {
            let word = HoldWord::from_bits(slot.hold_word().load(Ordering::Acquire));
            if !word.busy() {
                break word;
            }
            backoff.snooze();
        };
        if word.is_open() {
            let id = slot_holds::id_of(position, word.serial());
            let expires_at = store.lifecycle().deadlines.get_cloned(&id);
            let reservation = slot_holds::reservation(id, sku, word.quantity(), expires_at);
            holds.push((reservation, None));
        }
        position += 1;
    });
}

/// The [`Backend`](crate::lifecycle::Backend) methods of a [`WordStore`] that keeps one-line holds in its slots,
/// written once: expanded inside the store's `impl Backend<K>`, after
/// `word_backend_methods!`.
macro_rules! word_hold_methods {
    () => {
        #[inline(always)]
        fn hold_one(
            &self,
            line: &(K, u64),
            in_slot: bool,
        ) -> Result<
            $crate::lifecycle::backend::HeldOne<K, Self::Handle>,
            $crate::error::StockError<K>,
        > {
            $crate::strategy::word_holds::hold(self, line, in_slot)
        }

        #[inline(always)]
        fn resolve_in_slot(
            &self,
            id: $crate::reservation::ReservationId,
            change: $crate::level::Change,
            part: Option<u64>,
        ) -> Option<($crate::reservation::Reservation<K>, bool)> {
            $crate::strategy::word_holds::resolve(self, id, change, part)
        }

        fn peek_in_slot(
            &self,
            id: $crate::reservation::ReservationId,
        ) -> Option<$crate::reservation::Reservation<K>> {
            $crate::strategy::word_holds::peek(self, id)
        }

        fn extend_in_slot(
            &self,
            id: $crate::reservation::ReservationId,
            ttl: std::time::Duration,
        ) -> Option<$crate::lifecycle::registry::Extension<K, $crate::lines::Moves>> {
            $crate::strategy::word_holds::extend(self, id, ttl)
        }

        fn expire_in_slot(
            &self,
            id: $crate::reservation::ReservationId,
            now: std::time::Instant,
        ) -> Option<Option<$crate::lifecycle::registry::Resolved<K, $crate::lines::Moves>>> {
            $crate::strategy::word_holds::expire(self, id, now)
        }

        fn copy_slot_holds(
            &self,
            holds: &mut Vec<(
                $crate::reservation::Reservation<K>,
                Option<std::sync::Arc<str>>,
            )>,
        ) {
            $crate::strategy::word_holds::copy_holds(self, holds)
        }
    };
}

pub(crate) use word_hold_methods;
