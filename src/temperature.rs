//! A SKU's temperature setting for adaptive concurrency control (MOCC's per-record
//! temperature, Wang & Kimura, VLDB 2016, simplified): when the
//! [`AdaptiveStore`](crate::AdaptiveStore) turns a SKU hot (locked) or cold (optimistic).
//! The builder keeps it; the adaptive store reads it.

use std::fmt;

/// When a SKU turns hot or cold: the builder's settings of the temperature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Temperature {
    /// Operations per window less one (the window is a power of two, so this is its
    /// mask); the mode is decided at the end of each window, when a change brings the
    /// SKU's version to a multiple of the window. The mask, not the window, so that the
    /// test of every change is one `test` (adaptive `sell` 2 instructions shorter in
    /// callgrind).
    pub(crate) window_mask: u64,
    /// A cold SKU turns hot when its conflicts per 1000 operations reach this.
    pub(crate) hot_per_mille: u64,
    /// A hot SKU turns cold when its conflicts per 1000 operations fall to this.
    pub(crate) cold_per_mille: u64,
}

impl fmt::Debug for Temperature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Temperature")
            .field("window_ops", &self.window_ops())
            .field("hot_per_mille", &self.hot_per_mille)
            .field("cold_per_mille", &self.cold_per_mille)
            .finish()
    }
}

impl Temperature {
    /// The defaults: [`AdaptiveStore::WINDOW_OPS`](crate::AdaptiveStore::WINDOW_OPS), [`AdaptiveStore::HOT_THRESHOLD_PER_MILLE`](crate::AdaptiveStore::HOT_THRESHOLD_PER_MILLE)
    /// and [`AdaptiveStore::COLD_THRESHOLD_PER_MILLE`](crate::AdaptiveStore::COLD_THRESHOLD_PER_MILLE).
    pub(crate) const DEFAULT: Self = Self {
        window_mask: 64 - 1,
        hot_per_mille: 500,
        cold_per_mille: 100,
    };

    /// Whether a change that brought its SKU to `version` ends a window: each version is
    /// reached by exactly one change, so exactly one change ends each window.
    pub(crate) fn ends_window(&self, version: u64) -> bool {
        version & self.window_mask == 0
    }

    /// Operations per window, a power of two.
    pub(crate) const fn window_ops(&self) -> u64 {
        self.window_mask + 1
    }

    /// The mode a SKU in mode `hot` takes after a window of `ops` operations with
    /// `conflicts` conflicts: hot at or above the hot threshold, cold at or below the cold
    /// one, unchanged in between (hysteresis).
    pub(crate) fn next_mode(&self, hot: bool, ops: u64, conflicts: u64) -> bool {
        let per_mille = conflicts.saturating_mul(1000) / ops.max(1);
        if per_mille >= self.hot_per_mille {
            true
        } else if per_mille <= self.cold_per_mille {
            false
        } else {
            hot
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_follows_the_thresholds_with_hysteresis() {
        let temperature = Temperature::DEFAULT;
        // 500 per mille and above: hot; 100 and below: cold; in between: unchanged.
        assert!(temperature.next_mode(false, 100, 50));
        assert!(!temperature.next_mode(false, 100, 49));
        assert!(temperature.next_mode(true, 100, 11));
        assert!(!temperature.next_mode(true, 100, 10));
        assert!(!temperature.next_mode(false, 100, 30));
    }
}
