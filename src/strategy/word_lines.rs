//! The request lines of a store whose SKUs each change by one compare-and-swap of their own
//! packed word (the optimistic and adaptive stores, [`crate::word`]): one line is one
//! update; several are checked first, then applied one at a time in ascending SKU order
//! and compensated on a refusal.

use crate::error::StockError;
use crate::level::{Change, LowStock, Moved, StockLevel};
use crate::lifecycle::Backend;
use crate::lines::{self, Moves, PerLine};
use crate::store::{Sku, StockStore};
use crate::strategy::word::{unpack, LIMITS};
use crate::sync::{AtomicU64, Fill, GrowOnlyMap, Ordering, Position, Word};

/// One SKU's slot in a word store: its packed word, beside whatever else the store keeps.
pub(crate) trait WordSlot: Send + Sync {
    /// The SKU's `(on_hand, reserved, version)` word ([`crate::word`]).
    fn word(&self) -> &Word;

    /// The SKU's low-stock threshold in units (0: none); read only when an event sink is
    /// set.
    fn low_stock_threshold(&self) -> &AtomicU64;

    /// The SKU's hold word: a [`HoldWord`](crate::lifecycle::slot_holds::HoldWord)'s bits,
    /// 0 for none ([`word_holds`](super::word_holds)).
    fn hold_word(&self) -> &AtomicU64;
}

/// [`SkuTable::each_sku`](crate::durability::capture::SkuTable::each_sku) of any word
/// store: every SKU with its level (one atomic load of its word) and its low-stock
/// threshold.
pub(crate) fn each_sku<'a, K: Sku, S: WordStore<K>>(
    store: &'a S,
    f: &mut dyn FnMut(&'a K, StockLevel, u64),
) {
    store.skus().for_each(|sku, slot| {
        let threshold = slot.low_stock_threshold().load(Ordering::Relaxed);
        f(sku, S::slot_level(slot), threshold);
    });
}

/// [`SkuTable::restore_sku`](crate::durability::capture::SkuTable::restore_sku) of any
/// word store: `sku` created in the slot `new_slot` makes (at the restored level), with
/// `threshold`; `false` when the map is full.
pub(crate) fn restore_sku<K: Sku, S: WordStore<K>>(
    store: &S,
    sku: &K,
    threshold: u64,
    new_slot: impl FnOnce() -> S::Slot,
) -> bool {
    let slot = store.skus().get_or_insert_with(sku, new_slot);
    if let Some((slot, _)) = slot {
        slot.low_stock_threshold()
            .store(threshold, Ordering::Relaxed);
    }
    slot.is_some()
}

/// What a one-line hold of a word store keeps to settle without a lookup: its SKU's
/// position in the store's map (`None`: a hold opened otherwise, found again by its SKUs).
pub(crate) type WordHandle = Option<Position>;

/// A store whose SKUs each change by one compare-and-swap of their own word. It gives its
/// SKU map and its policy for one slot's update on a lost race
/// ([`update_then`](Self::update_then)); the level of a slot, the reporting and quiet
/// updates, the lookups, the one-line holds that keep their slot's position and the
/// multi-line logic, written once here, do the rest.
///
/// A multi-line request is all or nothing, but not isolated: between its first line and
/// its last, a concurrent reader may see the lines already held (the compensation of a
/// refused request gives them back).
pub(crate) trait WordStore<K: Sku>: Backend<K> + StockStore<K> {
    /// One SKU's state: its word and what the store keeps beside it.
    type Slot: WordSlot + Fill;

    /// The store's SKU map.
    fn skus(&self) -> &GrowOnlyMap<K, Self::Slot>;

    /// The level in `slot`'s word now.
    #[inline]
    fn slot_level(slot: &Self::Slot) -> StockLevel {
        unpack(slot.word().load(Ordering::Acquire))
    }

    /// Applies `change` of `quantity` units to `sku`, whose slot is `slot`, by the store's
    /// policy on a lost race, and returns `report(before, after)` of the winning change:
    /// what moved, or nothing for a caller with no event sink. Writes nothing when
    /// refused.
    ///
    /// # Errors
    ///
    /// [`StockError::InsufficientStock`], [`StockError::Overflow`], or
    /// [`StockError::Conflict`] when the store gives up on contention (the optimistic
    /// store, after its retries; the adaptive store never does).
    fn update_then<R>(
        &self,
        sku: &K,
        slot: &Self::Slot,
        change: Change,
        quantity: u64,
        report: impl FnOnce(StockLevel, StockLevel) -> R,
    ) -> Result<R, StockError<K>>;

    /// What moved from `before` to `after` on `slot`; reads the threshold only when an
    /// event sink listens.
    #[inline]
    fn moved(&self, slot: &Self::Slot, before: StockLevel, after: StockLevel) -> Moved {
        let threshold = if self.lifecycle().events.enabled() {
            slot.low_stock_threshold().load(Ordering::Relaxed)
        } else {
            0
        };
        Moved::new(before, after, threshold)
    }

    /// [`StockStore::set_low_stock_threshold`]: sets `sku`'s threshold to `threshold`
    /// units (0: none).
    ///
    /// # Errors
    ///
    /// [`StockError::UnknownSku`] for a SKU never restocked.
    fn set_threshold(&self, sku: &K, threshold: u64) -> Result<(), StockError<K>> {
        let slot = self
            .skus()
            .get(sku)
            .ok_or_else(|| StockError::UnknownSku(sku.clone()))?;
        slot.low_stock_threshold()
            .store(threshold, Ordering::Relaxed);
        Ok(())
    }

    /// [`update_then`](Self::update_then) reporting what moved (the threshold crossing
    /// only when an event sink listens).
    ///
    /// # Errors
    ///
    /// As [`update_then`](Self::update_then).
    #[inline]
    fn update_slot(
        &self,
        sku: &K,
        slot: &Self::Slot,
        change: Change,
        quantity: u64,
    ) -> Result<Moved, StockError<K>> {
        self.update_then(sku, slot, change, quantity, |before, after| {
            self.moved(slot, before, after)
        })
    }

    /// [`update_then`](Self::update_then) for a caller that needs no report of the move
    /// (no event sink).
    ///
    /// # Errors
    ///
    /// As [`update_then`](Self::update_then).
    #[inline(always)]
    fn update_slot_quiet(
        &self,
        sku: &K,
        slot: &Self::Slot,
        change: Change,
        quantity: u64,
    ) -> Result<(), StockError<K>> {
        self.update_then(sku, slot, change, quantity, |_, _| ())
    }

    /// Applies `change` of `quantity` units to `sku`; writes nothing when refused.
    ///
    /// # Errors
    ///
    /// [`StockError::UnknownSku`], or as [`update_slot`](Self::update_slot).
    #[inline]
    fn update_sku(&self, sku: &K, change: Change, quantity: u64) -> Result<Moved, StockError<K>> {
        with_known_sku(self.skus(), sku, |slot| {
            self.update_slot(sku, slot, change, quantity)
        })
    }

    /// [`update_sku`](Self::update_sku) for a caller that needs no report of the move (no
    /// event sink).
    ///
    /// # Errors
    ///
    /// As [`update_sku`](Self::update_sku).
    #[inline]
    fn update_sku_quiet(
        &self,
        sku: &K,
        change: Change,
        quantity: u64,
    ) -> Result<(), StockError<K>> {
        with_known_sku(self.skus(), sku, |slot| {
            self.update_slot_quiet(sku, slot, change, quantity)
        })
    }

    /// Commits or releases (`change`) `quantity` held units of `sku`, whose slot is `slot`,
    /// with no report of the move, retrying past `Conflict`s: never refused.
    ///
    /// # Panics
    ///
    /// When the counts refuse the move (a broken invariant of the store).
    #[inline(always)]
    fn settle_slot_quiet(&self, sku: &K, slot: &Self::Slot, quantity: u64, change: Change) {
        retry_past_conflicts(|| self.update_slot_quiet(sku, slot, change, quantity));
    }

    /// Commits or releases (`change`) held `lines` with no report of the moves: a one-line
    /// hold on the slot at its `handle`'s position, else each line found by its SKU.
    #[inline(always)]
    fn settle_quiet_lines(&self, lines: &[(K, u64)], handle: &WordHandle, change: Change) {
        if let (Some(position), [(sku, quantity)]) = (handle, lines) {
            let slot = self.skus().at(*position);
            self.settle_slot_quiet(sku, slot, *quantity, change);
            return;
        }
        for (sku, quantity) in lines {
            // Its slot, then the quiet update of the slot: one caller more of the quiet
            // update of a SKU (`update_sku_quiet`) cost the one-line `sell` 12 to 13
            // instructions in callgrind.
            let slot = self.skus().get(sku).expect("a held SKU is in the store");
            self.settle_slot_quiet(sku, slot, *quantity, change);
        }
    }

    /// Reserves merged `lines` in ascending order; on a refusal, releases the lines already
    /// reserved and returns the refusal. One lookup a line: several lines keep the slots
    /// [`check_lines`](Self::check_lines) found.
    ///
    /// # Errors
    ///
    /// As [`check_lines`](Self::check_lines), or what the first refused update returns.
    fn reserve_lines(&self, lines: &[(K, u64)]) -> Result<Moves, StockError<K>> {
        if let [(sku, quantity)] = lines {
            // One update, which writes nothing when it refuses: nothing to check first.
            return self
                .update_sku(sku, Change::Reserve, *quantity)
                .map(Moves::One);
        }
        let slots = self.check_lines(lines)?;
        let mut moves = Vec::with_capacity(lines.len());
        for ((sku, quantity), slot) in lines.iter().zip(&slots) {
            match self.update_slot(sku, slot, Change::Reserve, *quantity) {
                Ok(moved) => moves.push(moved),
                Err(refusal) => {
                    let held = &lines[..moves.len()];
                    self.release_slots_quiet(held, &slots);
                    // The partial hold was visible, crossings included: report those,
                    // though it is given back (a sale in between may keep a SKU low).
                    self.lifecycle().crossings(held, &moves);
                    return Err(refusal);
                }
            }
        }
        Ok(Moves::Many(moves))
    }

    /// [`reserve_lines`](Self::reserve_lines) for a caller that needs no report of the
    /// moves (no event sink): the same hold and compensation, with no move built.
    ///
    /// # Errors
    ///
    /// As [`reserve_lines`](Self::reserve_lines).
    fn reserve_lines_quiet(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
        // One line: the reporting update, its report dropped (one caller more of the quiet
        // update of a SKU cost the one-line `sell` instructions: 4 in the optimistic store).
        if let [(sku, quantity)] = lines {
            return self.update_sku(sku, Change::Reserve, *quantity).map(drop);
        }
        let slots = self.check_lines(lines)?;
        for (held, ((sku, quantity), slot)) in lines.iter().zip(&slots).enumerate() {
            if let Err(refusal) = self.update_slot_quiet(sku, slot, Change::Reserve, *quantity) {
                self.release_slots_quiet(&lines[..held], &slots);
                return Err(refusal);
            }
        }
        Ok(())
    }

    /// Releases held `lines` whose slots are the first of `slots` (the compensation of a
    /// refused multi-line reserve), retrying past `Conflict`s: never refused.
    fn release_slots_quiet(&self, lines: &[(K, u64)], slots: &[&Self::Slot]) {
        for ((sku, quantity), slot) in lines.iter().zip(slots) {
            self.settle_slot_quiet(sku, slot, *quantity, Change::Release);
        }
    }

    /// Checks every line of a multi-line reserve against its SKU's current level before
    /// any line changes, one lookup a line, so a request refused without a race changes
    /// nothing, not even a version; returns the lines' slots, in the order of `lines`. A
    /// race after this check is still caught by the compare-and-swap of
    /// [`reserve_lines`](Self::reserve_lines) and compensated.
    ///
    /// # Errors
    ///
    /// [`StockError::UnknownSku`] for the first SKU never restocked, whatever the other
    /// lines (as the locking stores); else [`StockError::InsufficientStock`] or
    /// [`StockError::Overflow`] for the first line refused.
    fn check_lines(&self, lines: &[(K, u64)]) -> Result<PerLine<&Self::Slot>, StockError<K>> {
        let mut slots = PerLine::with_capacity(lines.len());
        // The first refused line, as an index and a `Refusal` (small and `Copy`): its error
        // is built once, at the end.
        let mut refused = None;
        for (index, (sku, quantity)) in lines.iter().enumerate() {
            let slot = self
                .skus()
                .get(sku)
                .ok_or_else(|| StockError::UnknownSku(sku.clone()))?;
            if refused.is_none() {
                if let Err(refusal) =
                    Self::slot_level(slot).apply(Change::Reserve, *quantity, 0, LIMITS)
                {
                    refused = Some((index, refusal));
                }
            }
            slots.push(slot);
        }
        match refused {
            None => Ok(slots),
            Some((index, refusal)) => {
                let (sku, quantity) = &lines[index];
                Err(refusal.into_error(sku.clone(), *quantity))
            }
        }
    }

    /// Commits or releases merged `lines` that are held. The version rule of
    /// [`StockLevel`] leaves room for each, and only lost races repeat
    /// one, so a line that meets [`StockError::Conflict`] retries until it wins.
    ///
    /// # Panics
    ///
    /// When a held line is refused by its counts (a broken invariant of the store).
    fn resolve_lines(&self, lines: &[(K, u64)], change: Change) -> Moves {
        lines
            .iter()
            .map(|(sku, quantity)| self.resolve_line(sku, *quantity, change))
            .collect()
    }

    /// Commits or releases `quantity` held units of `sku`, retrying past `Conflict`s:
    /// never refused.
    #[inline]
    fn resolve_line(&self, sku: &K, quantity: u64, change: Change) -> Moved {
        retry_past_conflicts(|| self.update_sku(sku, change, quantity))
    }

    /// [`StockStore::sell`]: one line is one update with no allocation (an event sink adds
    /// its events); several are a hold on every line that then becomes a sale.
    ///
    /// # Errors
    ///
    /// [`StockError::EmptyRequest`], [`StockError::InvalidQuantity`], or what
    /// [`reserve_lines`](Self::reserve_lines) returns, with nothing sold.
    #[inline]
    fn sell_lines(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
        let life = self.lifecycle();
        match lines {
            [(sku, quantity)] if *quantity != 0 && !life.events.enabled() => {
                // Nobody listens: no move to report, so none is built.
                let _gate = life.registry.enter();
                let sold = self.update_sku_quiet(sku, Change::Sell, *quantity);
                life.stats.count_refusal(&sold);
                sold
            }
            _ => self.sell_lines_slow(lines),
        }
    }

    /// [`sell_lines`](Self::sell_lines) but for its common case, one line with no event
    /// sink; out of line, so that the common case keeps few registers (callgrind: the
    /// adaptive store's one-line `sell` 201.8 -> 199.9 instructions, the optimistic
    /// store's 192.8 -> 190.8).
    ///
    /// # Errors
    ///
    /// As [`sell_lines`](Self::sell_lines).
    #[inline(never)]
    fn sell_lines_slow(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
        let life = self.lifecycle();
        if let [(sku, quantity)] = lines {
            if *quantity == 0 {
                return Err(StockError::InvalidQuantity { sku: sku.clone() });
            }
            let gate = life.registry.enter();
            let sold = self.update_sku(sku, Change::Sell, *quantity);
            drop(gate);
            life.stats.count_refusal(&sold);
            let moved = sold?;
            if life.events.enabled() {
                life.sold(&[(sku.clone(), *quantity)], &[moved]);
            }
            return Ok(());
        }
        let lines = lines::merge(lines)?;
        if lines.len() == 1 {
            // Duplicate lines of one SKU: one change, as for a single line.
            return self.sell_lines(&lines);
        }
        let gate = life.registry.enter();
        if !life.events.enabled() {
            // Nobody listens: no move to report, so none is built.
            let held = self.reserve_lines_quiet(&lines);
            life.stats.count_refusal(&held);
            held?;
            self.settle_quiet_lines(&lines, &None, Change::Commit);
            return Ok(());
        }
        let held = self.reserve_lines(&lines);
        life.stats.count_refusal(&held);
        let held = held?;
        let committed = self.resolve_lines(&lines, Change::Commit);
        drop(gate);
        if life.events.enabled() {
            // Available fell at the hold; the commit leaves it as it is. Report the sale's
            // levels with the crossing of the hold, at the sale's version.
            let moved: Vec<Moved> = held
                .iter()
                .zip(committed.iter())
                .map(|(held, committed)| Moved {
                    level: committed.level,
                    low_stock: held.low_stock.map(|low| LowStock {
                        version: committed.level.version,
                        ..low
                    }),
                })
                .collect();
            life.sold(&lines, &moved);
        }
        Ok(())
    }
}

/// Calls `update` with the slot of `sku` in `slots` (the SKU map of a word store).
///
/// # Errors
///
/// [`StockError::UnknownSku`] for a SKU never restocked, or what `update` returns.
#[inline(always)]
pub(crate) fn with_known_sku<K: Sku, V: Send + Sync, R>(
    slots: &GrowOnlyMap<K, V>,
    sku: &K,
    update: impl FnOnce(&V) -> Result<R, StockError<K>>,
) -> Result<R, StockError<K>> {
    slots.with_or_else(sku, update, || Err(StockError::UnknownSku(sku.clone())))
}

/// Runs `update` (a commit or release of held stock) until it is not refused for
/// contention: the version rule of [`StockLevel`] leaves room for each,
/// and only lost races repeat one.
///
/// # Panics
///
/// When `update` is refused by the counts (a broken invariant of the store).
#[inline(always)]
fn retry_past_conflicts<K: Sku, T>(mut update: impl FnMut() -> Result<T, StockError<K>>) -> T {
    loop {
        match update() {
            Ok(done) => break done,
            Err(StockError::Conflict { .. }) => continue,
            Err(error) => unreachable!("a held line cannot be refused: {error:?}"),
        }
    }
}

/// The [`Backend`] methods of a [`WordStore`], written once: a hold is
/// [`reserve_lines`](WordStore::reserve_lines), a settlement
/// [`resolve_lines`](WordStore::resolve_lines), and a one-line hold without an event sink
/// keeps its SKU's position ([`WordHandle`]) to settle without a lookup. Expanded inside
/// the store's `impl Backend<K>`; the store keeps its lifecycle in a field named
/// `lifecycle`.
macro_rules! word_backend_methods {
    () => {
        type Handle = $crate::strategy::word_lines::WordHandle;

        fn lifecycle(&self) -> &$crate::lifecycle::Lifecycle<K, Self::Handle> {
            &self.lifecycle
        }

        fn hold(
            &self,
            lines: &[(K, u64)],
        ) -> Result<$crate::lines::Moves, $crate::error::StockError<K>> {
            $crate::strategy::word_lines::WordStore::reserve_lines(self, lines)
        }

        fn hold_lines_quiet(&self, lines: &[(K, u64)]) -> Result<(), $crate::error::StockError<K>> {
            $crate::strategy::word_lines::WordStore::reserve_lines_quiet(self, lines)
        }

        fn settle(
            &self,
            lines: &[(K, u64)],
            change: $crate::level::Change,
        ) -> $crate::lines::Moves {
            $crate::strategy::word_lines::WordStore::resolve_lines(self, lines, change)
        }

        #[inline]
        fn settle_quiet(
            &self,
            lines: &[(K, u64)],
            handle: &Self::Handle,
            change: $crate::level::Change,
        ) {
            $crate::strategy::word_lines::WordStore::settle_quiet_lines(
                self, lines, handle, change,
            );
        }

        $crate::lifecycle::slot_holds::slot_hold_methods!(strategy::word_holds);
    };
}

pub(crate) use word_backend_methods;
