//! Validation and merging of request lines, and the all-or-nothing batch over locked SKUs.

use std::borrow::Cow;
use std::ops::{Deref, DerefMut};

use smallvec::SmallVec;

use crate::error::StockError;
use crate::level::{Change, Limits, Moved, StockLevel};
use crate::reservation::HoldLines;
use crate::stats::{Stat, Stats};
use crate::store::Sku;
use crate::sync::{self, Fill, GrowOnlyMap, Mutex, MutexGuard, Position};

/// Validates `lines` and merges them: one line per SKU with the summed quantity, sorted by
/// SKU (the ascending order in which every store acquires SKUs, Havender's ordered
/// acquisition). A single line, or lines already in ascending SKU order with no SKU twice,
/// are already merged and are borrowed, not copied: no key is cloned. Other lines are
/// cloned once, into the `Vec` they are sorted in.
///
/// # Errors
///
/// - [`StockError::EmptyRequest`] when `lines` is empty.
/// - [`StockError::InvalidQuantity`] for the first line with quantity 0.
/// - [`StockError::Overflow`] when the lines of one SKU sum past `u64::MAX` (the first
///   such SKU in ascending order).
pub(crate) fn merge<K: Clone + Ord>(
    lines: &[(K, u64)],
) -> Result<Cow<'_, [(K, u64)]>, StockError<K>> {
    match lines {
        [] => return Err(StockError::EmptyRequest),
        [(sku, 0)] => return Err(StockError::InvalidQuantity { sku: sku.clone() }),
        [_] => return Ok(Cow::Borrowed(lines)),
        _ => {}
    }
    if let Some((sku, _)) = lines.iter().find(|(_, quantity)| *quantity == 0) {
        return Err(StockError::InvalidQuantity { sku: sku.clone() });
    }
    if lines.windows(2).all(|pair| pair[0].0 < pair[1].0) {
        return Ok(Cow::Borrowed(lines));
    }
    // Sorted and merged in one `Vec`; equal SKUs are summed, so stability does not matter.
    let mut merged = lines.to_vec();
    merged.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    let mut overflow = None;
    merged.dedup_by(|(sku, quantity), (kept, total)| {
        if sku != kept {
            return false;
        }
        match total.checked_add(*quantity) {
            Some(sum) => *total = sum,
            None => {
                overflow.get_or_insert_with(|| sku.clone());
            }
        }
        true
    });
    match overflow {
        Some(sku) => Err(StockError::Overflow { sku }),
        None => Ok(Cow::Owned(merged)),
    }
}

impl<K: Clone + Ord> HoldLines<K> {
    /// The lines of a request, validated and merged ([`merge`]). Two or more lines
    /// are cloned into one shared allocation and sorted there: one allocation, where a
    /// merge into a `Vec` and then into an `Arc` took two and a copy. A request that names
    /// a SKU twice takes the general path.
    ///
    /// # Errors
    ///
    /// As [`merge`]: [`StockError::EmptyRequest`], [`StockError::InvalidQuantity`]
    /// or [`StockError::Overflow`].
    pub(crate) fn merged(lines: &[(K, u64)]) -> Result<Self, StockError<K>> {
        if lines.len() < 2 || lines.iter().any(|(_, quantity)| *quantity == 0) {
            return merge(lines).map(Self::from);
        }
        let mut shared: std::sync::Arc<[(K, u64)]> = std::sync::Arc::from(lines);
        if let Some(sorted) = std::sync::Arc::get_mut(&mut shared) {
            sorted.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
            if sorted.windows(2).all(|pair| pair[0].0 != pair[1].0) {
                return Ok(HoldLines::Many(shared));
            }
        }
        merge(lines).map(Self::from)
    }
}

/// Lines of one request whose guards or slots stay on the stack before a multi-line
/// request spills to the heap: TPC-C's NewOrder has 5 to 15 lines. With the hold's lines
/// sorted in their shared allocation ([`HoldLines::merged`]), an S4 order makes one heap
/// allocation where it made four (locking stores) or three (compare-and-swap stores):
/// callgrind's count of `malloc` calls over 20,000 orders.
///
pub(crate) const LINES_INLINE: usize = 16;

/// One value per line of a request (a guard, a slot), on the stack up to [`LINES_INLINE`]
/// lines.
pub(crate) type PerLine<T> = SmallVec<[T; LINES_INLINE]>;

/// What moved on each line of a request, in the order of its lines. A request of one line
/// (most requests) keeps its move inline: no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Moves {
    /// The move of a one-line request.
    One(Moved),
    /// The moves of any other number of lines.
    Many(Vec<Moved>),
}

impl Deref for Moves {
    type Target = [Moved];

    fn deref(&self) -> &[Moved] {
        match self {
            Moves::One(moved) => std::slice::from_ref(moved),
            Moves::Many(moves) => moves,
        }
    }
}

impl FromIterator<Moved> for Moves {
    /// Collects without allocating when the iterator yields exactly one move.
    fn from_iter<I: IntoIterator<Item = Moved>>(moves: I) -> Self {
        let mut moves = moves.into_iter();
        let Some(first) = moves.next() else {
            return Moves::Many(Vec::new());
        };
        let Some(second) = moves.next() else {
            return Moves::One(first);
        };
        let mut many = Vec::with_capacity(moves.size_hint().0 + 2);
        many.extend([first, second]);
        many.extend(moves);
        Moves::Many(many)
    }
}

/// Restocks `qty` units (at least 1) of `sku` in `slots`, a store's SKU map, counts bounded
/// by `limits`. A new SKU is inserted already holding its first restock
/// (`new_slot(level)`), so no reader ever sees it exist with nothing restocked (creation
/// is linearizable); an existing one is restocked by `restock`. Returns what moved.
///
/// # Errors
///
/// [`StockError::Overflow`] when `qty` passes `limits`, when `restock` returns it, or when
/// `sku` is new and the map already holds its most SKUs (2³⁰).
pub(crate) fn restock_sku<K: Sku, V: Fill>(
    slots: &GrowOnlyMap<K, V>,
    sku: &K,
    qty: u64,
    limits: Limits,
    new_slot: impl FnOnce(StockLevel) -> V,
    restock: impl FnOnce(&V) -> Result<Moved, StockError<K>>,
) -> Result<Moved, StockError<K>> {
    let first = Moved::first_restock(qty, limits)
        .map_err(|refusal| refusal.into_error(sku.clone(), qty))?;
    match slots.get_or_insert_with(sku, || new_slot(first.level)) {
        Some((_, true)) => Ok(first),
        Some((slot, false)) => restock(slot),
        None => Err(StockError::Overflow { sku: sku.clone() }),
    }
}

/// A store that keeps each SKU's state behind a mutex of its own (the pessimistic and
/// monitor stores), as [`apply`] locks it.
///
/// Each SKU's slot sits in the store's [`GrowOnlyMap`], where it lives as long as the
/// store: it is found and locked in place, with no lock on the map and no reference count
/// (a lookup writes nothing shared), so nothing ever waits for a slot's lock while holding
/// another lock of the map.
pub(crate) trait LockedSkus<K> {
    /// One SKU's slot: its mutex and what the store keeps beside it.
    type Slot;
    /// The SKU's state, guarded by the slot's mutex.
    type Cell: LevelCell;

    /// The store's SKU map.
    fn slot_map(&self) -> &GrowOnlyMap<K, Self::Slot>;

    /// The mutex of `slot`.
    fn mutex(slot: &Self::Slot) -> &Mutex<Self::Cell>;

    /// The slot of `sku`; `None` for a SKU never restocked.
    #[inline(always)]
    fn slot(&self, sku: &K) -> Option<&Self::Slot>
    where
        K: Sku,
    {
        self.slot_map().get(sku)
    }

    /// The store's counters.
    fn stats(&self) -> &Stats;

    /// Finds `sku`'s slot and locks it before it reads anything else of the slot's cache
    /// line ([`GrowOnlyMap::get_claiming`]); returns the slot's position and the guard, or
    /// `None` for a SKU never restocked.
    ///
    /// Only for a caller that holds no slot's lock (a single-line change): a tag collision
    /// may make it wait for another SKU's lock, which is safe only while it holds nothing
    /// that SKU's holder could wait for (every other lock of the store comes before slot
    /// locks in the lock order: the snapshot gate, idempotency keys, hold shards).
    #[inline(always)]
    fn lock_sku(&self, sku: &K) -> Option<(Position, MutexGuard<'_, Self::Cell>)>
    where
        K: Sku,
    {
        self.slot_map()
            .get_claiming(sku, |slot| self.lock(slot))
            .map(|(position, _, cell)| (position, cell))
    }

    /// Locks `slot`, counting the lock as contended if it was held.
    #[inline(always)]
    fn lock<'a>(&self, slot: &'a Self::Slot) -> MutexGuard<'a, Self::Cell> {
        let (guard, contended) = sync::lock_noting_contention(Self::mutex(slot));
        if contended {
            count_contended(self.stats());
        }
        guard
    }
}

/// Counts a contended lock: out of line, so that the counter's code (the thread's stripe,
/// claimed on first use) stays out of every lock's inlined path (inline, it pushed
/// `GrowOnlyMap::get_claiming`'s probe out of line: callgrind, `sell` 182 -> 213).
#[cold]
#[inline(never)]
fn count_contended(stats: &Stats) {
    stats.count(Stat::Contended);
}

/// The slots of merged `lines`, in the same order.
///
/// # Errors
///
/// [`StockError::UnknownSku`] for the first SKU never restocked.
pub(crate) fn slots<'a, K: Sku, S: LockedSkus<K>>(
    store: &'a S,
    lines: &[(K, u64)],
) -> Result<Vec<&'a S::Slot>, StockError<K>> {
    // Sized once: a `collect` into a `Result` sees no length and grew the vector by
    // reallocation (callgrind: a third of an S4 order's instructions with the moves').
    let mut slots = Vec::with_capacity(lines.len());
    for (sku, _) in lines {
        slots.push(slot(store, sku)?);
    }
    Ok(slots)
}

/// The slot of `sku`, or [`StockError::UnknownSku`].
fn slot<'a, K: Sku, S: LockedSkus<K>>(store: &'a S, sku: &K) -> Result<&'a S::Slot, StockError<K>> {
    store
        .slot(sku)
        .ok_or_else(|| StockError::UnknownSku(sku.clone()))
}

/// Applies `change` to merged `lines` of a locking store without waiting, all or nothing:
/// locks their slots in ascending SKU order ([`lock_all`]), then [`apply_all`]. Counts
/// are `u64` ([`Limits::U64`]). One line (most requests) takes no allocation
/// ([`apply_one`]).
///
/// # Errors
///
/// [`StockError::UnknownSku`], [`StockError::InsufficientStock`] or
/// [`StockError::Overflow`], with nothing changed.
pub(crate) fn apply<K: Sku, S: LockedSkus<K>>(
    store: &S,
    lines: &[(K, u64)],
    change: Change,
) -> Result<Moves, StockError<K>> {
    if let [line] = lines {
        return apply_one(store, line, change).map(Moves::One);
    }
    let mut cells = PerLine::new();
    lock_all(store, lines, &mut cells)?;
    apply_all(&mut cells, lines, change, Limits::U64)
}

/// [`apply`] for a caller that needs no report of the moves (no event sink): the same
/// change, all or nothing, checked on every line before any is written, with no move
/// built. No allocation up to [`LINES_INLINE`] lines (the guards stay on the stack).
///
/// # Errors
///
/// As [`apply`].
pub(crate) fn apply_quiet<K: Sku, S: LockedSkus<K>>(
    store: &S,
    lines: &[(K, u64)],
    change: Change,
) -> Result<(), StockError<K>> {
    if let [line] = lines {
        return apply_one_quiet(store, line, change);
    }
    let mut cells = PerLine::new();
    lock_all(store, lines, &mut cells)?;
    for (cell, line) in cells.iter().zip(lines) {
        next_level(&**cell, line, change, Limits::U64)?;
    }
    for (cell, line) in cells.iter_mut().zip(lines) {
        // Checked above, under the same locks: nothing changed since. (Keeping the levels
        // of the check in a vector of their own cost more than computing them again:
        // callgrind, 4,575 -> 5,037 instructions an S4 order.)
        let level = next_level(&**cell, line, change, Limits::U64)
            .expect("a line checked under its lock still applies");
        cell.set_level(level);
    }
    Ok(())
}

/// Locks the slots of merged `lines` (ascending SKUs, so every caller takes them in one
/// order: no deadlock) and pushes their guards onto the caller's `cells`, in the order of
/// `lines`. A lookup takes no lock and never waits, so looking a SKU up while holding the
/// guards of smaller ones cannot deadlock; on an unknown SKU the caller returns the error
/// and drops the guards taken, nothing changed. (Looking every slot up into a vector of
/// its own first cost one more allocation.) Up to [`LINES_INLINE`] guards stay on the
/// caller's stack, which they never leave (returning them copied the whole vector:
/// callgrind, 140 instructions an S4 order).
///
/// # Errors
///
/// [`StockError::UnknownSku`] for the first SKU never restocked.
fn lock_all<'a, K: Sku, S: LockedSkus<K>>(
    store: &'a S,
    lines: &[(K, u64)],
    cells: &mut PerLine<MutexGuard<'a, S::Cell>>,
) -> Result<(), StockError<K>> {
    cells.reserve_exact(lines.len());
    for (sku, _) in lines {
        cells.push(store.lock(slot(store, sku)?));
    }
    Ok(())
}

/// Reads `sku`'s state with `f` under its lock; `None` for a SKU never restocked. `sku`
/// may be any borrowed form of the SKU type (as `HashMap::get` takes it).
#[inline]
pub(crate) fn read_one<K, Q, S, R>(store: &S, sku: &Q, f: impl FnOnce(&S::Cell) -> R) -> Option<R>
where
    K: Sku + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
    S: LockedSkus<K>,
{
    let slot = store.slot_map().get(sku)?;
    let cell = S::mutex(slot).lock();
    Some(f(&cell))
}

/// Applies `change` to one validated line (quantity at least 1) of a locking store
/// without waiting: the single-line fast path of [`apply`], and of the stores' `sell`.
/// Allocates nothing.
///
/// The slot is locked where it sits in the store's [`GrowOnlyMap`]: the lookup holds no
/// lock of the map, so a busy SKU never delays a restock that creates another. (Under
/// dashmap, slots were cloned out of the map first: locking one in place under the shard's
/// read lock let overlapping readers of a busy SKU starve a creation in that shard, one
/// of 2,000 waiting 20 s with 8 threads selling one SKU on 2 cores.)
///
/// # Errors
///
/// [`StockError::UnknownSku`], [`StockError::InsufficientStock`] or
/// [`StockError::Overflow`], with nothing changed.
#[inline]
pub(crate) fn apply_one<K: Sku, S: LockedSkus<K>>(
    store: &S,
    line: &(K, u64),
    change: Change,
) -> Result<Moved, StockError<K>> {
    let Some((_, mut cell)) = store.lock_sku(&line.0) else {
        return Err(StockError::UnknownSku(line.0.clone()));
    };
    let moved = next_move(&*cell, line, change, Limits::U64)?;
    cell.set_level(moved.level);
    Ok(moved)
}

/// [`apply_one`] for a caller that needs no report of the move (no event sink): the same
/// change, without building the [`Moved`] or reading the low-stock threshold. (It repeats
/// `apply_one`'s lookup and lock rather than sharing them through a closure: that cost 5
/// to 9 instructions per `sell` in callgrind.)
///
/// # Errors
///
/// [`StockError::UnknownSku`], [`StockError::InsufficientStock`] or
/// [`StockError::Overflow`], with nothing changed.
#[inline]
pub(crate) fn apply_one_quiet<K: Sku, S: LockedSkus<K>>(
    store: &S,
    line @ (sku, _): &(K, u64),
    change: Change,
) -> Result<(), StockError<K>> {
    let Some((_, mut cell)) = store.lock_sku(sku) else {
        return Err(StockError::UnknownSku(sku.clone()));
    };
    let after = next_level(&*cell, line, change, Limits::U64)?;
    cell.set_level(after);
    Ok(())
}

/// A SKU's state behind its lock, as the batch below reads and writes it.
pub(crate) trait LevelCell {
    /// The SKU's counts.
    fn level(&self) -> StockLevel;
    /// Units of `available` not offered to non-waiting callers.
    fn withheld(&self) -> u64;
    /// Replaces the SKU's counts.
    fn set_level(&mut self, level: StockLevel);
    /// The SKU's low-stock threshold (0: none).
    fn low_stock_threshold(&self) -> u64;
}

/// Applies `change` to every line, all or nothing: `cells[i]` is the locked state of
/// `lines[i]`'s SKU, locked in the order of `lines` (ascending SKU).
///
/// Every new level is computed before any is written, so a refusal on any line changes
/// nothing. Returns what moved on each line, in the order of `lines`. For two lines or
/// more: [`apply`] takes one line on a path of its own.
///
/// # Errors
///
/// [`StockError::InsufficientStock`] or [`StockError::Overflow`] naming the first line
/// refused.
fn apply_all<K: Clone, C: LevelCell, G: DerefMut<Target = C>>(
    cells: &mut [G],
    lines: &[(K, u64)],
    change: Change,
    limits: Limits,
) -> Result<Moves, StockError<K>> {
    debug_assert_eq!(cells.len(), lines.len());
    // Sized once, as `slots`.
    let mut moves = Vec::with_capacity(lines.len());
    for (cell, line) in cells.iter().zip(lines) {
        moves.push(next_move(&**cell, line, change, limits)?);
    }
    for (cell, moved) in cells.iter_mut().zip(&moves) {
        cell.set_level(moved.level);
    }
    Ok(Moves::Many(moves))
}

/// What `change` of `line` would move on `cell`, which holds `line`'s SKU; writes nothing.
///
/// # Errors
///
/// [`StockError::InsufficientStock`] or [`StockError::Overflow`] naming `line`'s SKU.
fn next_move<K: Clone, C: LevelCell>(
    cell: &C,
    line: &(K, u64),
    change: Change,
    limits: Limits,
) -> Result<Moved, StockError<K>> {
    let after = next_level(cell, line, change, limits)?;
    Ok(Moved::new(cell.level(), after, cell.low_stock_threshold()))
}

/// The level `change` of `line` would leave on `cell`, which holds `line`'s SKU; writes
/// nothing.
///
/// # Errors
///
/// [`StockError::InsufficientStock`] or [`StockError::Overflow`] naming `line`'s SKU.
#[inline(always)]
pub(crate) fn next_level<K: Clone, C: LevelCell>(
    cell: &C,
    (sku, quantity): &(K, u64),
    change: Change,
    limits: Limits,
) -> Result<StockLevel, StockError<K>> {
    cell.level()
        .apply(change, *quantity, cell.withheld(), limits)
        .map_err(|refusal| refusal.into_error(sku.clone(), *quantity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_hold_lines_are_the_merge_of_the_request() {
        let requests: [&[(&str, u64)]; 6] = [
            &[("b", 1), ("a", 2), ("c", 3)],
            &[("b", 1), ("a", 2), ("b", 3)],
            &[("a", 1), ("a", 2)],
            &[("a", 1)],
            &[("b", u64::MAX), ("a", 1), ("b", 1)],
            &[("a", 1), ("b", 0)],
        ];
        for request in requests {
            let merged = HoldLines::merged(request).map(|lines| lines.to_vec());
            let expected = merge(request).map(|lines| lines.into_owned());
            assert_eq!(merged, expected, "{request:?}");
        }
        // Negative control: the first two requests as given (out of order; a SKU twice)
        // are not their merge, so a `merged` that skipped the sort or the merge fails above.
        for request in &requests[..2] {
            let expected = merge(request).map(|lines| lines.into_owned());
            assert_ne!(Ok(request.to_vec()), expected, "{request:?}");
        }
        assert_eq!(
            HoldLines::<&str>::merged(&[]),
            Err(StockError::EmptyRequest)
        );
        assert!(matches!(
            HoldLines::merged(&[("a", 1), ("a", 2)]),
            Ok(HoldLines::One([("a", 3)]))
        ));
    }

    #[test]
    fn merge_sorts_and_sums_duplicate_skus() {
        let merged = merge(&[("b", 1), ("a", 2), ("b", 3)]).unwrap();
        assert_eq!(*merged, [("a", 2), ("b", 4)]);
        assert!(matches!(merge(&[("a", 1)]), Ok(Cow::Borrowed(_))));
        // Sorted, distinct lines are borrowed as they are; any other order is copied.
        assert!(matches!(
            merge(&[("a", 1), ("b", 2), ("c", 3)]),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(merge(&[("b", 1), ("a", 2)]), Ok(Cow::Owned(_))));
        assert!(matches!(merge(&[("a", 1), ("a", 2)]), Ok(Cow::Owned(_))));
    }

    #[test]
    fn moves_of_one_line_are_inline() {
        let moved = Moved::new(StockLevel::default(), StockLevel::default(), 0);
        assert_eq!(std::iter::once(moved).collect::<Moves>(), Moves::One(moved));
        let three: Moves = [moved; 3].into_iter().collect();
        assert_eq!(three, Moves::Many(vec![moved; 3]));
        assert!(std::iter::empty().collect::<Moves>().is_empty());
    }

    #[test]
    fn merge_rejects_bad_requests() {
        assert_eq!(merge::<&str>(&[]), Err(StockError::EmptyRequest));
        assert_eq!(
            merge(&[("a", 0)]),
            Err(StockError::InvalidQuantity { sku: "a" })
        );
        assert_eq!(
            merge(&[("a", 1), ("b", 0)]),
            Err(StockError::InvalidQuantity { sku: "b" })
        );
        assert_eq!(
            merge(&[("b", u64::MAX), ("a", 1), ("b", 1), ("a", u64::MAX)]),
            Err(StockError::Overflow { sku: "a" })
        );
    }
}
