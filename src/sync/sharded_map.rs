//! A sharded concurrent map: the registry's open holds and the idempotency table's keys.
//!
//! Shards of a [`hashbrown::HashTable`] each behind a `parking_lot` mutex on a cache line
//! of its own; a key's hash, computed once, picks its shard (bits below the top 7) and its
//! place in the shard's table (hashbrown's own bits), as dashmap's `determine_shard`
//! does. It replaced dashmap there: with dashmap's read-write shard lock and its `insert`
//! (which searches for the key first and returns the value it replaced), a `reserve` +
//! `commit` took about 80 instructions more (callgrind, `benches/instructions.rs`: 831
//! against 753 for the pessimistic store).
//! Every operation locks one shard for the length of one table operation, except
//! [`remove_if`](ShardedMap::remove_if), whose callback runs under the shard's lock.
//!
//! Each shard also keeps a tally of the caller's type `T` (`()` for none), changed by
//! [`insert_new`](ShardedMap::insert_new) and [`remove_if`](ShardedMap::remove_if) under
//! the lock they already hold: the registry counts holds opened and resolved there, with
//! no atomic read-modify-write and no thread-local lookup of its own.
//!
//! Under loom its twin is one loom mutex around a `HashMap` (module `mocked`).

use std::hash::{BuildHasher, Hash};

use crossbeam_utils::CachePadded;
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};

use super::Hasher;

/// Fewest and most shards of a map.
const SHARDS_MIN: usize = 4;
const SHARDS_MAX: usize = 256;

/// A value of a [`ShardedMap`], locked in place: its shard stays locked while this lives.
pub(crate) type MapRef<'a, V> = MappedMutexGuard<'a, V>;

/// What one shard's lock guards: its entries and its tally.
struct Contents<K, V, T> {
    table: HashTable<(K, V)>,
    tally: T,
}

/// One shard: its entries and tally behind its lock.
type Shard<K, V, T> = Mutex<Contents<K, V, T>>;

/// A sharded concurrent map (see the module docs).
pub(crate) struct ShardedMap<K, V, S = Hasher, T = ()> {
    /// The shards: a power of two of them.
    shards: Box<[CachePadded<Shard<K, V, T>>]>,
    /// `64 − log2(shards)`: a hash shifted left by 7 and right by this picks the shard.
    shift: u32,
    /// The hasher of the keys: the seeded [`Hasher`] for keys that callers choose,
    /// [`IdHasher`](super::IdHasher) for the ids the crate issues.
    hasher: S,
}

/// The shift that [`shard_index`] takes for `shards` shards (a power of two): the hash is
/// 64 bits wide whatever the target's `usize`.
fn shift_of(shards: usize) -> u32 {
    u64::BITS - shards.trailing_zeros()
}

/// The shard of `hash` among `2^(64 − shift)` shards: the bits below the top 7, which are
/// hashbrown's tag within a shard.
#[inline(always)]
fn shard_index(hash: u64, shift: u32) -> usize {
    ((hash << 7) >> shift) as usize
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher + Default, T: Default> ShardedMap<K, V, S, T> {
    /// An empty map with four shards per available core (a power of two, 4 to 256), as
    /// dashmap has.
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        let shards = (cores * 4)
            .next_power_of_two()
            .clamp(SHARDS_MIN, SHARDS_MAX);
        Self {
            shards: (0..shards)
                .map(|_| {
                    CachePadded::new(Mutex::new(Contents {
                        table: HashTable::new(),
                        tally: T::default(),
                    }))
                })
                .collect(),
            shift: shift_of(shards),
            hasher: S::default(),
        }
    }

    /// The hash of `key` and its shard.
    #[inline(always)]
    fn shard(&self, key: &K) -> (u64, &Shard<K, V, T>) {
        let hash = self.hasher.hash_one(key);
        (hash, &self.shards[shard_index(hash, self.shift)])
    }

    /// The hash of a stored entry, for hashbrown's growth.
    #[inline(always)]
    fn rehash(&self) -> impl Fn(&(K, V)) -> u64 + '_ {
        |(key, _)| self.hasher.hash_one(key)
    }

    /// A clone of the value for `key`, or `None`.
    pub(crate) fn get_cloned(&self, key: &K) -> Option<V> {
        let (hash, shard) = self.shard(key);
        let contents = shard.lock();
        contents
            .table
            .find(hash, |(candidate, _)| candidate == key)
            .map(|(_, value)| value.clone())
    }

    /// Returns (a clone of) the value for `key`, inserting `init()` first when absent.
    pub(crate) fn get_or_insert_with(&self, key: &K, init: impl FnOnce() -> V) -> V {
        let (hash, shard) = self.shard(key);
        let mut contents = shard.lock();
        match contents
            .table
            .entry(hash, |(candidate, _)| candidate == key, self.rehash())
        {
            Entry::Occupied(entry) => entry.get().1.clone(),
            Entry::Vacant(entry) => entry.insert((key.clone(), init())).get().1.clone(),
        }
    }

    /// The value for `key`, locked in place (its shard stays locked while the returned
    /// guard lives); `None` when absent. Nothing is cloned.
    ///
    /// While the guard lives, the caller must not wait for anything nor touch this map:
    /// every other call on the shard waits for the guard. For a short read of a value (the
    /// registry's idempotent replay).
    pub(crate) fn get(&self, key: &K) -> Option<MapRef<'_, V>> {
        let (hash, shard) = self.shard(key);
        MutexGuard::try_map(shard.lock(), |contents| {
            contents
                .table
                .find_mut(hash, |(candidate, _)| candidate == key)
                .map(|(_, value)| value)
        })
        .ok()
    }

    /// Inserts `value` for `key`, which the caller knows is absent (a reservation id,
    /// never issued twice): no search for it first, and `tally` changes the shard's tally
    /// under the same lock. A `key` already present would be found twice, so a debug
    /// build checks.
    #[inline]
    pub(crate) fn insert_new(&self, key: K, value: V, tally: impl FnOnce(&mut T)) {
        let (hash, shard) = self.shard(&key);
        let mut contents = shard.lock();
        debug_assert!(contents
            .table
            .find(hash, |(candidate, _)| *candidate == key)
            .is_none());
        contents
            .table
            .insert_unique(hash, (key, value), self.rehash());
        tally(&mut contents.tally);
    }

    /// Removes and returns the value for `key`, or `None`.
    pub(crate) fn remove(&self, key: &K) -> Option<V> {
        self.remove_if(key, |_, _| true)
    }

    /// Locks `key`'s shard until the guard drops: a critical section of the caller's that
    /// covers `key`'s value ([`ShardGuard::with_entry`]) and whatever else it does there
    /// (the slot holds of `strategy::word_holds`, which read or change a hold's deadline
    /// only sometimes, and need the lock every time).
    #[inline]
    pub(crate) fn lock_shard<'a>(&'a self, key: &'a K) -> ShardGuard<'a, K, V, S, T> {
        let (hash, shard) = self.shard(key);
        ShardGuard {
            map: self,
            key,
            hash,
            contents: shard.lock(),
        }
    }

    /// Calls `f` with the value for `key` and its shard's tally under the shard's lock,
    /// and removes and returns the value when `f` returns `true`: one lookup. `None` when
    /// absent (`f` not called) or kept. `f` must not touch this map, and may wait only for
    /// locks whose holders never wait for this map.
    #[inline]
    pub(crate) fn remove_if(&self, key: &K, f: impl FnOnce(&mut V, &mut T) -> bool) -> Option<V> {
        let (hash, shard) = self.shard(key);
        let mut contents = shard.lock();
        let Contents { table, tally } = &mut *contents;
        let mut entry = table
            .find_entry(hash, |(candidate, _)| candidate == key)
            .ok()?;
        if f(&mut entry.get_mut().1, tally) {
            Some(entry.remove().0 .1)
        } else {
            None
        }
    }

    /// Calls `f` with every entry, each shard locked in turn (not a snapshot of one
    /// instant while other threads change the map; exact once they stopped). `f` must not
    /// touch this map.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        for shard in self.shards.iter() {
            for (key, value) in shard.lock().table.iter() {
                f(key, value);
            }
        }
    }

    /// Number of entries (each shard locked in turn: not a snapshot of one instant while
    /// other threads change the map).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().table.len())
            .sum()
    }

    /// Folds every shard's tally into `init` with `f`, each shard locked in turn (not a
    /// snapshot of one instant while other threads change the map; exact once they
    /// stopped).
    pub(crate) fn fold_tallies<A>(&self, init: A, mut f: impl FnMut(A, &T) -> A) -> A {
        self.shards
            .iter()
            .fold(init, |acc, shard| f(acc, &shard.lock().tally))
    }
}

/// One shard of a [`ShardedMap`] locked for one key ([`ShardedMap::lock_shard`]).
pub(crate) struct ShardGuard<'a, K, V, S, T> {
    map: &'a ShardedMap<K, V, S, T>,
    key: &'a K,
    hash: u64,
    contents: MutexGuard<'a, Contents<K, V, T>>,
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher + Default, T: Default>
    ShardGuard<'_, K, V, S, T>
{
    /// Runs `f` on the key's value (`None`: absent), and keeps what `f` leaves there: a
    /// value read, replaced, taken or put.
    pub(crate) fn with_entry<R>(&mut self, f: impl FnOnce(&mut Option<V>) -> R) -> R {
        let (hash, key) = (self.hash, self.key);
        let table = &mut self.contents.table;
        let mut value = table
            .find_entry(hash, |(candidate, _)| candidate == key)
            .ok()
            .map(|entry| entry.remove().0 .1);
        let result = f(&mut value);
        if let Some(value) = value {
            table.insert_unique(hash, (key.clone(), value), self.map.rehash());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::{shard_index, shift_of, ShardedMap, SHARDS_MAX, SHARDS_MIN};

    /// Whether `shift` sends every hash, the extremes included, to one of `shards` shards,
    /// the tag bits to none in particular, and the all-ones hash to the last shard.
    fn picks_every_shard_in_range(shards: usize, shift: u32) -> bool {
        [0, 1 << 56, u64::MAX >> 7, u64::MAX]
            .into_iter()
            .all(|hash| shard_index(hash, shift) < shards)
            && shard_index(u64::MAX << 57, shift) == 0
            && shard_index(u64::MAX, shift) == shards - 1
    }

    /// A locked shard's entry keeps what `with_entry` leaves there: a value put, read,
    /// replaced and taken, each seen by the next lock and by the map's own reads, and
    /// another key's value untouched.
    #[test]
    fn a_locked_entry_keeps_what_it_was_left() {
        let map = ShardedMap::<u64, u64>::new();
        map.insert_new(2, 20, |()| {});
        assert_eq!(
            map.lock_shard(&1).with_entry(|value| value.replace(10)),
            None
        );
        assert_eq!(map.get_cloned(&1), Some(10));
        assert_eq!(map.lock_shard(&1).with_entry(|value| *value), Some(10));
        let replaced = map.lock_shard(&1).with_entry(|value| value.replace(11));
        assert_eq!((replaced, map.get_cloned(&1)), (Some(10), Some(11)));
        assert_eq!(map.lock_shard(&1).with_entry(Option::take), Some(11));
        assert_eq!((map.get_cloned(&1), map.len()), (None, 1));
        assert_eq!(map.get_cloned(&2), Some(20));
    }

    /// Every hash picks a shard in range, for every shard count a map can have.
    #[test]
    fn every_hash_picks_a_shard_in_range() {
        let mut shards = SHARDS_MIN;
        while shards <= SHARDS_MAX {
            assert!(
                picks_every_shard_in_range(shards, shift_of(shards)),
                "{shards}"
            );
            shards *= 2;
        }
    }

    /// Negative control: a shift one bit short (as a shift counted in 32-bit `usize`s was
    /// on 32-bit targets, by far more) sends hashes past the last shard, and the check
    /// says so.
    #[test]
    fn negative_control_a_short_shift_overruns_the_shards() {
        assert!(!picks_every_shard_in_range(
            SHARDS_MIN,
            shift_of(SHARDS_MIN) - 1
        ));
    }

    #[test]
    fn inserts_finds_and_removes() {
        let map = ShardedMap::<u64, String>::new();
        for key in 0..1000 {
            map.insert_new(key, key.to_string(), |_| ());
        }
        assert_eq!(map.remove(&7).as_deref(), Some("7"));
        map.insert_new(7, "seven".to_string(), |_| ());
        assert_eq!(map.len(), 1000);
        assert_eq!(map.get_cloned(&7).as_deref(), Some("seven"));
        assert_eq!(map.get(&999).as_deref().map(String::as_str), Some("999"));
        assert!(map.get(&1000).is_none());
        assert_eq!(map.get_or_insert_with(&5, || unreachable!()), "5");
        assert_eq!(map.get_or_insert_with(&1000, || "new".to_string()), "new");
        assert_eq!(map.remove_if(&8, |_, _| false), None);
        assert_eq!(map.get_cloned(&8).as_deref(), Some("8"));
        assert_eq!(
            map.remove_if(&8, |value, _| value == "8").as_deref(),
            Some("8")
        );
        assert_eq!(map.remove(&8), None);
        assert_eq!(map.remove(&9).as_deref(), Some("9"));
        assert_eq!(map.remove_if(&9, |_, _| unreachable!()), None);
        assert_eq!(map.len(), 999);
        for key in (0..1001).filter(|key| ![8, 9].contains(key)) {
            assert!(map.get_cloned(&key).is_some(), "{key}");
        }
    }

    /// Threads inserting and removing at once: every entry left is found, and the shards'
    /// tallies, changed under the shard locks, add up to every insert and every removal.
    #[test]
    fn threads_see_each_others_entries_and_tallies() {
        /// Inserts and removals seen by one shard.
        #[derive(Default)]
        struct Tally {
            inserted: u64,
            removed: u64,
        }
        let map = ShardedMap::<u64, u64, crate::sync::Hasher, Tally>::new();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let map = &map;
                scope.spawn(move || {
                    for key in (thread..4000).step_by(4) {
                        map.insert_new(key, key * 2, |tally| tally.inserted += 1);
                        if key % 2 == 0 {
                            let removed = map.remove_if(&key, |_, tally| {
                                tally.removed += 1;
                                true
                            });
                            assert_eq!(removed, Some(key * 2));
                        }
                    }
                });
            }
        });
        assert_eq!(map.len(), 2000);
        assert!((0..4000).all(|key| map.get_cloned(&key) == (key % 2 == 1).then_some(key * 2)));
        let (inserted, removed) = map.fold_tallies((0, 0), |(inserted, removed), tally| {
            (inserted + tally.inserted, removed + tally.removed)
        });
        assert_eq!((inserted, removed), (4000, 2000));
    }

    /// Two threads each insert one key into a map with a tally, counting the insert with
    /// `count(map, key)`; returns the count left afterwards by `counted(map)`.
    fn inserts_counted(
        count: impl Fn(&ShardedMap<u64, u64, crate::sync::Hasher, u64>, u64) + Sync,
        counted: impl Fn(&ShardedMap<u64, u64, crate::sync::Hasher, u64>) -> u64,
    ) -> u64 {
        let map = ShardedMap::new();
        std::thread::scope(|scope| {
            for key in 0..2 {
                let (map, count) = (&map, &count);
                scope.spawn(move || count(map, key));
            }
        });
        counted(&map)
    }

    /// A tally changed under the shard lock counts both inserts.
    #[test]
    fn a_tally_under_the_lock_counts_every_insert() {
        let counted = inserts_counted(
            |map, key| map.insert_new(key, key, |tally| *tally += 1),
            |map| map.fold_tallies(0, |sum, tally| sum + tally),
        );
        assert_eq!(counted, 2);
    }

    /// Negative control: a count kept beside the map by a load and a store (the two
    /// threads made to load before either stores) loses an insert, and the same check
    /// says so.
    #[test]
    fn negative_control_a_count_outside_the_lock_loses_an_insert() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Barrier;

        let beside = AtomicU64::new(0);
        let both_loaded = Barrier::new(2);
        let counted = inserts_counted(
            |map, key| {
                let seen = beside.load(Ordering::Relaxed);
                both_loaded.wait();
                beside.store(seen + 1, Ordering::Relaxed);
                map.insert_new(key, key, |_| ());
            },
            |_| beside.load(Ordering::Relaxed),
        );
        assert_ne!(counted, 2);
    }
}
