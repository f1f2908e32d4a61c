//! The expiry index: hold deadlines in order, so expiring costs O(due · log n), not a scan.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::reservation::ReservationId;
use crate::sync::Mutex;

/// Shards of the index: holds are spread over them by id, so opening and resolving holds
/// with deadlines on different threads seldom meet on one lock.
const SHARDS: usize = 8;

/// One shard: `(deadline, id)` entries in deadline order.
type Shard = Mutex<BTreeSet<(Instant, ReservationId)>>;

/// The deadlines of the open holds that have one, as ordered sets of `(deadline, id)`.
///
/// The index is a hint, the registry is the truth: an entry is inserted when a hold gets a
/// deadline and removed when the hold resolves or its deadline moves, but an entry may
/// outlive its hold for a moment (a hold resolved while `extend` re-indexes it). Whoever
/// takes an entry out checks the hold in the registry before acting on it, so a stale
/// entry costs one lookup and is gone.
pub(crate) struct ExpiryIndex {
    /// Each shard's mutex guards its set; no other lock is taken while one is held.
    shards: Box<[Shard]>,
}

impl ExpiryIndex {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(BTreeSet::new())).collect(),
        }
    }

    fn shard(&self, id: ReservationId) -> &Shard {
        // The modulo is below SHARDS, so the cast back cannot truncate.
        &self.shards[(id.get() % SHARDS as u64) as usize]
    }

    /// Indexes the hold `id` under `deadline`. O(log n).
    pub(crate) fn insert(&self, deadline: Instant, id: ReservationId) {
        self.shard(id).lock().insert((deadline, id));
    }

    /// Removes the entry of hold `id` under `deadline`, if present. O(log n).
    pub(crate) fn remove(&self, deadline: Instant, id: ReservationId) {
        self.shard(id).lock().remove(&(deadline, id));
    }

    /// Takes out every entry due at `now` (deadline `<= now`), in deadline order (ties by
    /// id). O(SHARDS + due · log n).
    pub(crate) fn take_due(&self, now: Instant) -> Vec<(Instant, ReservationId)> {
        let mut due = Vec::new();
        for shard in self.shards.iter() {
            let mut entries = shard.lock();
            while let Some(entry) = entries.first().copied().filter(|(at, _)| *at <= now) {
                entries.pop_first();
                due.push(entry);
            }
        }
        due.sort_unstable();
        due
    }

    /// Number of entries (open holds with a deadline, plus stale entries).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn take_due_returns_only_due_entries_in_deadline_order() {
        let index = ExpiryIndex::new();
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        for (seconds, raw) in [(5, 1), (1, 2), (3, 3), (9, 4), (3, 12)] {
            index.insert(at(seconds), ReservationId::from_u64(raw));
        }
        index.remove(at(9), ReservationId::from_u64(4));
        let due = index.take_due(at(5));
        let ids: Vec<u64> = due.iter().map(|(_, id)| id.get()).collect();
        assert_eq!(ids, [2, 3, 12, 1]);
        assert_eq!(index.len(), 0);
        assert!(index.take_due(at(100)).is_empty());
    }
}
