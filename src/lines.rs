//! Validation and merging of request lines, and the all-or-nothing batch over locked SKUs.

use std::ops::DerefMut;

use crate::error::StockError;
use crate::level::{Change, Limits, Moved, StockLevel};

/// Validates `lines` and merges them: one line per SKU with the summed quantity, sorted by
/// SKU (the ascending order in which every store acquires SKUs, Havender's ordered
/// acquisition).
///
/// # Errors
///
/// - [`StockError::EmptyRequest`] when `lines` is empty.
/// - [`StockError::InvalidQuantity`] for the first line with quantity 0.
/// - [`StockError::Overflow`] when the lines of one SKU sum past `u64::MAX`.
pub(crate) fn merge<K: Clone + Ord>(lines: &[(K, u64)]) -> Result<Vec<(K, u64)>, StockError<K>> {
    if lines.is_empty() {
        return Err(StockError::EmptyRequest);
    }
    if let Some((sku, _)) = lines.iter().find(|(_, quantity)| *quantity == 0) {
        return Err(StockError::InvalidQuantity { sku: sku.clone() });
    }
    let mut sorted = lines.to_vec();
    sorted.sort_by(|(a, _), (b, _)| a.cmp(b));
    let mut merged: Vec<(K, u64)> = Vec::with_capacity(sorted.len());
    for (sku, quantity) in sorted {
        match merged.last_mut() {
            Some((last, total)) if *last == sku => {
                *total = total
                    .checked_add(quantity)
                    .ok_or_else(|| StockError::Overflow { sku: sku.clone() })?;
            }
            _ => merged.push((sku, quantity)),
        }
    }
    Ok(merged)
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
/// nothing. Returns what moved on each line, in the order of `lines`.
///
/// # Errors
///
/// [`StockError::InsufficientStock`] or [`StockError::Overflow`] naming the first line
/// refused.
pub(crate) fn apply_all<K: Clone, C: LevelCell, G: DerefMut<Target = C>>(
    cells: &mut [G],
    lines: &[(K, u64)],
    change: Change,
    limits: Limits,
) -> Result<Vec<Moved>, StockError<K>> {
    debug_assert_eq!(cells.len(), lines.len());
    let mut moved = Vec::with_capacity(lines.len());
    for (cell, (sku, quantity)) in cells.iter().zip(lines) {
        let before = cell.level();
        let after = before
            .apply(change, *quantity, cell.withheld(), limits)
            .map_err(|refusal| refusal.into_error(sku.clone(), *quantity))?;
        moved.push(Moved::new(before, after, cell.low_stock_threshold()));
    }
    for (cell, moved) in cells.iter_mut().zip(&moved) {
        cell.set_level(moved.level);
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sorts_and_sums_duplicate_skus() {
        let merged = merge(&[("b", 1), ("a", 2), ("b", 3)]).unwrap();
        assert_eq!(merged, vec![("a", 2), ("b", 4)]);
    }

    #[test]
    fn merge_rejects_bad_requests() {
        assert_eq!(merge::<&str>(&[]), Err(StockError::EmptyRequest));
        assert_eq!(
            merge(&[("a", 1), ("b", 0)]),
            Err(StockError::InvalidQuantity { sku: "b" })
        );
        assert_eq!(
            merge(&[("a", u64::MAX), ("a", 1)]),
            Err(StockError::Overflow { sku: "a" })
        );
    }
}
