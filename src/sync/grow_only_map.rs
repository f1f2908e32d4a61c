//! A concurrent hash map that only grows: the SKU map of every in-memory store.
//!
//! A store never forgets a SKU, so its SKU map never removes an entry, and that is what
//! this map is built on. Entries live in segments that are allocated once and never move;
//! the hash table holds only their positions. So:
//!
//! - a **lookup** writes nothing shared (no lock, no reference count, no epoch pin): it
//!   loads the current table, probes it, and returns a reference to the entry, which lives
//!   as long as the map. It is wait free: the table is at most half full, so a probe meets
//!   an empty slot within a few steps;
//! - an **insert** (a SKU's first restock) takes the map's writer lock, writes the entry
//!   into its segment, and then one empty slot of the table; when the table would pass
//!   half full, it first builds a table twice the size from the old one and publishes it.
//!   A table is never freed while the map lives (a reader may still be probing it): all
//!   the old tables together take less room than the current one.
//!
//! General concurrent maps pay for removal: dashmap with a shard lock on every lookup,
//! papaya with an epoch pin (`seize`). A single-line `sell` spent about 100 of its
//! instructions on papaya's pin and lookup, and the locking stores about 30 on dashmap's
//! shard lock and the slot's reference count (callgrind, `benches/instructions.rs`).
//!
//! Every entry of a segment holds a value from the segment's allocation on (`V::default()`),
//! and an insert fills it in place ([`Fill`]) before it writes the key; the key sits beside
//! the value in a `OnceLock` that readers check. So [`get_claiming`](GrowOnlyMap::get_claiming)
//! can lock a candidate's value before it reads anything else of the entry's cache line,
//! and read the key (and the `OnceLock`'s state) under the lock. Read first, they left a
//! window between fetching the line for reading and taking it for writing, in which the
//! other thread took it back: with two threads selling one SKU, locking first took about
//! 15 % off a sale (the pessimistic store, 63.9 against 75.3 ns, medians of 10 alternating
//! runs of one harness).
//!
//! The table is linear probing (Knuth, TAOCP vol. 3, 6.4, algorithm L) over 32-bit slots.
//! A slot is 0 while empty, then for good the entry's position plus one in its low bits
//! (as many as the table's capacity has: a position is below half the capacity) and the
//! high bits of the key's hash above them as a tag, so a probe skips most other keys'
//! slots without touching their entries (the tag is 11 bits at 1M entries). A slot keeps
//! its tag in place (`tag | position + 1`), so a probe compares it with one mask.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::OnceLock;

use super::{AtomicU32, AtomicUsize, Hasher, Mutex, Ordering};

/// A value the map keeps in place from its segment's allocation on: a default value until
/// an insert fills it, through a shared reference, before any reader can reach it.
pub(crate) trait Fill: Default {
    /// Makes `self` (a default value no reader reaches yet) hold `from`'s state.
    fn fill(&self, from: Self);
}

impl<T: Default> Fill for Mutex<T> {
    fn fill(&self, from: Self) {
        std::mem::swap(&mut *self.lock(), &mut *from.lock());
    }
}

/// Log2 of the first table's slots (2 slots under loom, so that a model's second insert
/// grows the table).
const FIRST_TABLE_BITS: u32 = if cfg!(loom) { 1 } else { 4 };
/// Log2 of the largest table's slots: a position below half of it and its tag fit in a
/// 32-bit slot.
const TABLE_BITS_MAX: u32 = 31;
/// Tables a map can build, each twice the one before.
// Read only by the compile-time check below, which Rust 1.85 does not count as a use.
#[allow(dead_code)]
const LEVELS: usize = (TABLE_BITS_MAX - FIRST_TABLE_BITS + 1) as usize;
/// Length of the arrays of tables and of segments: a power of two at least [`LEVELS`] and
/// [`SEGMENTS`], so that a masked index needs no bounds check on a lookup.
const ARRAY_LEN: usize = 32;
const _: () = assert!(ARRAY_LEN.is_power_of_two() && LEVELS <= ARRAY_LEN && SEGMENTS <= ARRAY_LEN);
/// The most entries a map holds (2³⁰): half its largest table.
pub(crate) const ENTRIES_MAX: usize = 1 << (TABLE_BITS_MAX - 1);
/// The position of an entry in its map (below [`ENTRIES_MAX`], so 32 bits hold it): what a
/// caller keeps to find the entry again with [`GrowOnlyMap::at`].
pub(crate) type Position = u32;
/// Log2 of the first segment's entries; segment `s` holds `16 << s`.
const FIRST_SEGMENT_BITS: u32 = 4;
/// Segments enough for [`ENTRIES_MAX`] entries.
// Read by the compile-time check above and a test, which Rust 1.85 does not count as a use.
#[allow(dead_code)]
const SEGMENTS: usize = (TABLE_BITS_MAX - FIRST_SEGMENT_BITS) as usize;

/// A concurrent map whose entries are never removed nor moved (see the module docs).
///
/// Keys are hashed with the maps' [`Hasher`] (foldhash's quality hasher, seeded per map).
/// It holds at most [`ENTRIES_MAX`] entries.
pub(crate) struct GrowOnlyMap<K, V> {
    /// Every entry, its value and key, at its position: segment `s` holds positions
    /// `16·(2^s − 1)` to `16·(2^(s+1) − 1) − 1`, allocated by the insert of its first.
    segments: [OnceLock<Segment<K, V>>; ARRAY_LEN],
    /// Every table built: table `i` has `2^(FIRST_TABLE_BITS + i)` slots; `current` is in
    /// use.
    tables: [OnceLock<Table>; ARRAY_LEN],
    /// The position in `tables` of the table in use; stored (`Release`) after the table
    /// is filled, loaded (`Acquire`) by every lookup.
    current: AtomicUsize,
    /// Entries inserted; written by the writer only.
    len: AtomicUsize,
    /// The most entries this map takes: [`ENTRIES_MAX`] (less in a test of a full map).
    entries_max: usize,
    /// Held by an insert: one writer at a time changes the table.
    writer: Mutex<()>,
    /// The hasher of the keys.
    hasher: Hasher,
    /// The bug a loom model's negative control plants, if any.
    #[cfg(all(test, loom))]
    fault: Option<Fault>,
}

/// A bug a negative control of the loom models (module `loom_model`) plants in the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// A growth publishes its table before filling it.
    PublishBeforeFill,
    /// An insert trusts its lookup before the writer lock, without looking again under it.
    NoLookupUnderLock,
}

/// One segment of entries, each on cache lines of its own.
type Segment<K, V> = Box<[Line<Entry<K, V>>]>;

/// One entry: a value from the segment's allocation on, and the key, written once when
/// the value is filled (a position the table points to has both).
struct Entry<K, V> {
    value: V,
    key: OnceLock<K>,
}

impl<K, V> Entry<K, V> {
    /// The key of an entry the table points to.
    #[inline(always)]
    fn key(&self) -> &K {
        self.key
            .get()
            .expect("an entry is written before a slot points to it")
    }
}

/// A value aligned to a cache line (64 bytes on the targets this crate is measured on), so
/// that an entry of up to 64 bytes (a SKU's key, its lock or word, and its counts) is read
/// with one cache miss, never two. Entries of 48 to 64 bytes straddled two lines at an
/// 8- or 16-byte alignment: a single-thread `sell` over 100k SKUs took about 1.25× the
/// time (criterion, `hot_sell`).
#[repr(align(64))]
struct Line<T>(T);

/// One hash table: slots of entry positions and tags (see the module docs).
struct Table {
    /// Its capacity (a power of two) minus one; a slot's position bits.
    mask: usize,
    /// The bits of a slot above its position: the tag's (`!mask`, in 32 bits).
    tag_mask: u32,
    /// 0 when empty, else `tag | (position + 1)`.
    slots: Box<[AtomicU32]>,
}

impl Table {
    /// An empty table of `2^bits` slots.
    fn new(bits: u32) -> Self {
        let mask = (1_usize << bits) - 1;
        Self {
            mask,
            tag_mask: !(mask as u32),
            slots: (0..=mask).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// The tag of `hash` in this table, in place in a slot: the bits of the hash's high
    /// half that lie above a position.
    #[inline(always)]
    fn tag(&self, hash: u64) -> u32 {
        #[cfg(all(test, not(loom)))]
        if tests::TAGLESS.with(std::cell::Cell::get) {
            return 0;
        }
        (hash >> 32) as u32 & self.tag_mask
    }

    /// The position a non-empty `slot` holds.
    #[inline(always)]
    fn position(&self, slot: u32) -> usize {
        (slot & self.mask as u32) as usize - 1
    }

    /// Writes the slot of the entry at `position` (hash `hash`) into the first empty slot
    /// from its home. Only the writer (under the map's lock) calls this, and a table is at
    /// most half full.
    fn place(&self, hash: u64, position: usize) {
        let slot = self.tag(hash) | (position as u32 + 1);
        let mut index = hash as usize & self.mask;
        while self.slots[index].load(Ordering::Relaxed) != 0 {
            index = (index + 1) & self.mask;
        }
        // Release: a reader that sees the slot sees the entry it points to.
        self.slots[index].store(slot, Ordering::Release);
    }
}

/// The segment of `position` and its offset in the segment: `position + 16` without its
/// top bit, which names the segment. (The top bit is cleared with an exclusive or, one
/// `btc`; subtracted, it took 3 instructions more a lookup in callgrind.)
#[inline]
fn locate(position: usize) -> (usize, usize) {
    let biased = position + (1 << FIRST_SEGMENT_BITS);
    let top = usize::BITS - 1 - biased.leading_zeros();
    ((top - FIRST_SEGMENT_BITS) as usize, biased ^ (1 << top))
}

impl<K: Hash + Eq, V> GrowOnlyMap<K, V> {
    /// An empty map.
    pub(crate) fn new() -> Self {
        let tables: [OnceLock<Table>; ARRAY_LEN] = std::array::from_fn(|_| OnceLock::new());
        tables[0]
            .set(Table::new(FIRST_TABLE_BITS))
            .unwrap_or_else(|_| unreachable!("a new lock is empty"));
        Self {
            segments: std::array::from_fn(|_| OnceLock::new()),
            tables,
            current: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            entries_max: ENTRIES_MAX,
            writer: Mutex::new(()),
            hasher: Hasher::default(),
            #[cfg(all(test, loom))]
            fault: None,
        }
    }

    /// Whether a negative control planted `fault` (never, outside the loom models).
    #[inline(always)]
    fn planted(&self, fault: Fault) -> bool {
        #[cfg(all(test, loom))]
        return self.fault == Some(fault);
        #[cfg(not(all(test, loom)))]
        {
            let _ = fault;
            false
        }
    }

    /// The table in use.
    #[inline(always)]
    fn table(&self) -> &Table {
        let current = self.current.load(Ordering::Acquire);
        self.tables[current & (ARRAY_LEN - 1)]
            .get()
            .expect("a table is set before it is made current")
    }

    /// The entry at `position` (reads nothing of the entry itself).
    #[inline(always)]
    fn entry(&self, position: usize) -> &Entry<K, V> {
        let (segment, offset) = locate(position);
        let segment = self.segments[segment & (ARRAY_LEN - 1)]
            .get()
            .expect("a segment is allocated before a slot points into it");
        &segment[offset].0
    }

    /// The value for `key` (any borrowed form of the key type, as `HashMap::get`), or
    /// `None`. Wait free; writes nothing shared.
    #[inline(always)]
    pub(crate) fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.get_positioned(key).map(|(_, value)| value)
    }

    /// The position of `key`'s entry (for [`at`](Self::at)) and its value, or `None`.
    /// Wait free; writes nothing shared.
    #[inline(always)]
    pub(crate) fn get_positioned<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<(Position, &V)>
    where
        K: Borrow<Q>,
    {
        let hash = self.hasher.hash_one(key);
        self.get_hashed(key, hash)
            .map(|(position, value)| (position as Position, value))
    }

    /// The value of the entry at `position`, as [`get_positioned`](Self::get_positioned)
    /// returned it: no hashing, no probing.
    ///
    /// # Panics
    ///
    /// When no entry of this map has that position (a position from another map).
    #[inline]
    pub(crate) fn at(&self, position: Position) -> &V {
        &self.entry(position as usize).value
    }

    /// The key and value of the entry at `position`, as
    /// [`get_positioned`](Self::get_positioned) returned it.
    ///
    /// # Panics
    ///
    /// As [`at`](Self::at).
    #[inline]
    pub(crate) fn entry_at(&self, position: Position) -> (&K, &V) {
        let entry = self.entry(position as usize);
        (entry.key(), &entry.value)
    }

    /// The entry of `key` (a borrowed form of the key type: equal keys hash equal, the
    /// contract of `Borrow`) whose hash is `hash`.
    #[inline(always)]
    fn get_hashed<Q: Eq + ?Sized>(&self, key: &Q, hash: u64) -> Option<(usize, &V)>
    where
        K: Borrow<Q>,
    {
        self.probe(hash, |position, entry| {
            (entry.key().borrow() == key).then_some((position, &entry.value))
        })
    }

    /// The position of `key`'s entry, its value, and what `claim` returned for it; `None`
    /// when `key` is absent. `claim` (a lock of the value) runs on each candidate entry
    /// (one whose table slot carries the key's tag) *before* the entry's key is read, so
    /// that the key is read under the claim (see the module docs); a claim of a candidate
    /// whose key differs (a tag collision, about 1 probe in 2¹¹ at 1M entries) is dropped
    /// and the probe goes on. Wait free but for `claim`.
    ///
    /// So `claim` may wait for another key's value: call this only holding nothing that a
    /// holder of another value's claim may wait for (no other entry claimed), or a tag
    /// collision could close a cycle of waits.
    #[inline(always)]
    pub(crate) fn get_claiming<'a, Q, G>(
        &'a self,
        key: &Q,
        mut claim: impl FnMut(&'a V) -> G,
    ) -> Option<(Position, &'a V, G)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        self.probe(
            hash,
            #[inline(always)]
            |position, entry| {
                let claimed = claim(&entry.value);
                if entry.key().borrow() == key {
                    Some((position as Position, &entry.value, claimed))
                } else {
                    drop(claimed);
                    None
                }
            },
        )
    }

    /// Probes the table for `hash`: calls `visit` with each entry whose slot carries the
    /// hash's tag, in probe order, until it returns `Some` or an empty slot ends the probe.
    #[inline(always)]
    fn probe<'a, R>(
        &'a self,
        hash: u64,
        mut visit: impl FnMut(usize, &'a Entry<K, V>) -> Option<R>,
    ) -> Option<R> {
        let table = self.table();
        let tag = table.tag(hash);
        // The mask taken from the slice itself, and the slice known not to be empty, lets
        // the compiler see that a masked index is in bounds: no check on each probe.
        let slots = &*table.slots;
        let mask = slots.len().checked_sub(1)?;
        let mut index = hash as usize & mask;
        loop {
            // Acquire: pairs with `Table::place`, so the entry is there.
            let slot = slots[index].load(Ordering::Acquire);
            if slot == 0 {
                return None;
            }
            if slot & table.tag_mask == tag {
                let position = table.position(slot);
                if let Some(found) = visit(position, self.entry(position)) {
                    return Some(found);
                }
            }
            index = (index + 1) & mask;
        }
    }

    /// The value for `key` and `false`; when absent, inserts `init()` and returns it and
    /// `true` (the caller's value is the one in the map, so it can be inserted already
    /// complete: a SKU visible with its first restock). `init` runs under the writer lock
    /// and must not touch this map; its value is moved into the entry's default value
    /// ([`Fill`]) before the key is written and the table points to it. `None` when `key`
    /// is absent and the map already holds [`ENTRIES_MAX`] entries (`init` not called).
    pub(crate) fn get_or_insert_with(&self, key: &K, init: impl FnOnce() -> V) -> Option<(&V, bool)>
    where
        K: Clone,
        V: Fill,
    {
        let hash = self.hasher.hash_one(key);
        if let Some((_, value)) = self.get_hashed(key, hash) {
            return Some((value, false));
        }
        let _writer = self.writer.lock();
        // Tables change only under the lock: this lookup is the last word.
        if !self.planted(Fault::NoLookupUnderLock) {
            if let Some((_, value)) = self.get_hashed(key, hash) {
                return Some((value, false));
            }
        }
        let position = self.len.load(Ordering::Relaxed);
        if position == self.entries_max {
            return None;
        }
        let (segment, offset) = locate(position);
        let segment = self.segments[segment].get_or_init(|| {
            (0..16_usize << segment)
                .map(|_| {
                    Line(Entry {
                        value: V::default(),
                        key: OnceLock::new(),
                    })
                })
                .collect()
        });
        let entry = &segment[offset].0;
        entry.value.fill(init());
        entry
            .key
            .set(key.clone())
            .unwrap_or_else(|_| unreachable!("each position is written once, by the writer"));
        let mut table = self.table();
        if (position + 1) * 2 > table.slots.len() {
            table = self.grow();
        }
        table.place(hash, position);
        self.len.store(position + 1, Ordering::Release);
        Some((&entry.value, true))
    }

    /// Builds a table twice the size of the current one holding its slots, makes it
    /// current, and returns it. Only the writer calls this, below [`ENTRIES_MAX`] entries.
    fn grow(&self) -> &Table {
        let level = self.current.load(Ordering::Relaxed);
        let old = self.table();
        let next = &self.tables[level + 1];
        next.set(Table::new(old.mask.count_ones() + 1))
            .unwrap_or_else(|_| unreachable!("each level is set once, by the writer"));
        let table = next.get().expect("the table was just set");
        if self.planted(Fault::PublishBeforeFill) {
            self.current.store(level + 1, Ordering::Release);
        }
        for slot in old.slots.iter() {
            let slot = slot.load(Ordering::Relaxed);
            if slot != 0 {
                let position = old.position(slot);
                let key = self.entry(position).key();
                table.place(self.hasher.hash_one(key), position);
            }
        }
        // Release: a reader that loads this level sees the table filled.
        self.current.store(level + 1, Ordering::Release);
        table
    }

    /// Calls `f` with the value for `key`, or `absent()` when there is none. (The word
    /// stores' update goes through here rather than a `match` on [`get`](Self::get): with
    /// the `match`, the compiler kept the update's closure out of line, 18 more
    /// instructions per optimistic `sell` in callgrind.)
    #[inline]
    pub(crate) fn with_or_else<R>(
        &self,
        key: &K,
        f: impl FnOnce(&V) -> R,
        absent: impl FnOnce() -> R,
    ) -> R {
        match self.get(key) {
            Some(value) => f(value),
            None => absent(),
        }
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Calls `f` with every entry, in insertion order (a snapshot's walk over the SKUs).
    /// Entries inserted while it runs may or may not be seen. Wait free; writes nothing.
    pub(crate) fn for_each<'a>(&'a self, mut f: impl FnMut(&'a K, &'a V)) {
        let len = self.len.load(Ordering::Acquire);
        for position in 0..len {
            let entry = self.entry(position);
            f(entry.key(), &entry.value);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    std::thread_local! {
        /// Set by a test: every key of this thread's maps gets tag 0, so that every entry
        /// on a probe's way is a candidate (a tag collision at every step).
        pub(super) static TAGLESS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// With every tag colliding, `get_claiming` claims entries of other keys on its way,
    /// drops each of those claims, and returns the claim of the key's own entry; an absent
    /// key leaves nothing claimed. The claims are `try_lock`s, so a claim left held would
    /// show as a failed one, not as a hang.
    #[test]
    fn claims_of_other_keys_on_the_way_are_dropped() {
        TAGLESS.with(|tagless| tagless.set(true));
        let map = GrowOnlyMap::new();
        const KEYS: u64 = 1_000;
        for key in 0..KEYS {
            map.get_or_insert_with(&key, || Mutex::new(key));
        }
        let claims = std::cell::Cell::new(0_u64);
        for key in 0..KEYS + 100 {
            let found = map.get_claiming(&key, |value| {
                claims.set(claims.get() + 1);
                value.try_lock()
            });
            match found {
                Some((position, value, Some(guard))) => {
                    assert_eq!(*guard, key, "the claim is of the key's own entry");
                    assert!(std::ptr::eq(value, map.at(position)));
                }
                Some((_, _, None)) => panic!("key {key}: a claim left held by an earlier probe"),
                None => assert!(key >= KEYS, "key {key} not found"),
            }
        }
        TAGLESS.with(|tagless| tagless.set(false));
        assert!(
            claims.get() > KEYS,
            "no probe met another key's entry ({} claims): the test tests nothing",
            claims.get()
        );
        map.for_each(|key, value| {
            assert!(value.try_lock().is_some(), "key {key} left claimed");
        });
    }

    /// The value a lookup found, read under its lock.
    fn read(value: Option<&Mutex<u64>>) -> Option<u64> {
        value.map(|value| *value.lock())
    }

    #[test]
    fn finds_every_key_inserted_across_growths() {
        let map = GrowOnlyMap::new();
        for key in 0..10_000_u64 {
            let (value, created) = map
                .get_or_insert_with(&key, || Mutex::new(key * 3))
                .unwrap();
            assert!(created);
            assert_eq!(*value.lock(), key * 3);
        }
        assert_eq!(map.len(), 10_000);
        for key in 0..10_000_u64 {
            assert_eq!(read(map.get(&key)), Some(key * 3));
            let (value, created) = map.get_or_insert_with(&key, || Mutex::new(0)).unwrap();
            assert!(!created);
            assert_eq!(*value.lock(), key * 3);
        }
        assert!(map.get(&10_000).is_none());
        assert_eq!(map.len(), 10_000);
    }

    /// A full map refuses a new key without calling its initialiser, and still finds and
    /// returns the keys it holds.
    #[test]
    fn a_full_map_refuses_new_keys_and_keeps_the_old() {
        let map = GrowOnlyMap {
            entries_max: 3,
            ..GrowOnlyMap::new()
        };
        for key in 0..3_u64 {
            let (value, created) = map.get_or_insert_with(&key, || Mutex::new(key)).unwrap();
            assert_eq!((*value.lock(), created), (key, true));
        }
        let mut called = false;
        let refused = map.get_or_insert_with(&3, || {
            called = true;
            Mutex::new(3)
        });
        assert!(refused.is_none());
        assert!(!called, "the initialiser of a refused key ran");
        let (value, created) = map.get_or_insert_with(&1, || Mutex::new(9)).unwrap();
        assert_eq!((*value.lock(), created), (1, false));
        assert_eq!(map.len(), 3);
        assert!(map.get(&3).is_none());
    }

    /// Writers racing to create overlapping keys while the table grows: every key is
    /// created exactly once, every caller sees the creator's value, and readers never see
    /// a key vanish once they saw it.
    #[test]
    fn racing_writers_create_each_key_once() {
        const WRITERS: u64 = 4;
        const KEYS: u64 = 20_000;
        let map = GrowOnlyMap::new();
        let created = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for writer in 0..WRITERS {
                let (map, created) = (&map, &created);
                scope.spawn(move || {
                    // Each writer walks the keys from its own offset, so all four race on
                    // every key at some point.
                    for step in 0..KEYS {
                        let key = (step + writer * KEYS / WRITERS) % KEYS;
                        let (value, new) = map
                            .get_or_insert_with(&key, || Mutex::new((key, writer)))
                            .expect("far below the limit");
                        assert_eq!(value.lock().0, key);
                        if new {
                            assert_eq!(value.lock().1, writer, "a creator sees its own value");
                            created.fetch_add(1, Ordering::Relaxed);
                        }
                        // Every key this writer touched stays found, with one value.
                        assert!(map
                            .get(&key)
                            .is_some_and(|found| std::ptr::eq(found, value)));
                    }
                });
            }
        });
        assert_eq!(
            created.load(Ordering::Relaxed),
            KEYS,
            "each key created once"
        );
        assert_eq!(map.len(), KEYS as usize);
        for key in 0..KEYS {
            assert_eq!(map.get(&key).map(|value| value.lock().0), Some(key));
        }
    }

    /// Positions fill the segments in order, each segment `16 << s` long, and the last
    /// position a map may hold falls in the last segment.
    #[test]
    fn positions_fill_segments_in_order() {
        let mut expected = (0, 0);
        for position in 0..10_000 {
            assert_eq!(locate(position), expected, "position {position}");
            expected.1 += 1;
            if expected.1 == 16 << expected.0 {
                expected = (expected.0 + 1, 0);
            }
        }
        let (segment, offset) = locate(ENTRIES_MAX - 1);
        assert_eq!(segment, SEGMENTS - 1);
        assert!(offset < 16 << segment);
    }

    /// Readers probing while a writer inserts and grows the table always find every key
    /// inserted before they looked, with its value.
    #[test]
    fn readers_find_keys_inserted_while_the_table_grows() {
        let map = GrowOnlyMap::new();
        let inserted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| loop {
                    let known = inserted.load(Ordering::Acquire);
                    for key in known.saturating_sub(64)..known {
                        assert_eq!(read(map.get(&key)), Some(!key), "key {key} of {known}");
                    }
                    if known == 50_000 {
                        break;
                    }
                });
            }
            for key in 0..50_000_u64 {
                map.get_or_insert_with(&key, || Mutex::new(!key));
                inserted.store(key + 1, Ordering::Release);
            }
        });
        assert_eq!(map.len(), 50_000);
    }
}

/// The loom model of the map's one lock-free step: lookups racing an insert that grows the
/// table, and racing creations of one key. Run by `.ci/run` (step `loom-map`):
/// `cargo test --release --lib loom_model` under `--cfg loom`.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;

    /// The value a lookup found, read under its lock.
    fn read(value: Option<&Mutex<u64>>) -> Option<u64> {
        value.map(|value| *value.lock())
    }

    /// A shared map of `u64` keys and values with `fault` planted (none: the real map).
    fn shared_map(fault: Option<Fault>) -> loom::sync::Arc<GrowOnlyMap<u64, Mutex<u64>>> {
        loom::sync::Arc::new(GrowOnlyMap {
            fault,
            ..GrowOnlyMap::new()
        })
    }

    /// A reader looks keys up while a writer inserts a second key, which fills the first
    /// table past half and so builds and publishes the second. The reader sees the first key
    /// whichever table it probes, and the second key either absent or with its value,
    /// never half made; after the writer is joined, both are found.
    #[test]
    fn lookups_race_an_insert_that_grows_the_table() {
        lookups_race_a_growth(None);
    }

    /// Negative control: a growth that publishes its table before filling it loses the
    /// first key for a reader that probes the new table in between, and loom finds that
    /// interleaving.
    #[test]
    #[should_panic(expected = "the first key was lost")]
    fn negative_control_publishing_an_empty_table_loses_keys() {
        lookups_race_a_growth(Some(Fault::PublishBeforeFill));
    }

    fn lookups_race_a_growth(fault: Option<Fault>) {
        loom::model(move || {
            let map = shared_map(fault);
            map.get_or_insert_with(&1_u64, || Mutex::new(10_u64));
            let reader = {
                let map = map.clone();
                loom::thread::spawn(move || {
                    assert_eq!(read(map.get(&1)), Some(10), "the first key was lost");
                    let second = read(map.get(&2));
                    assert!(matches!(second, None | Some(20)), "{second:?}");
                    // Once seen, never lost (the newer table holds it too).
                    if second.is_some() {
                        assert_eq!(read(map.get(&2)), Some(20));
                    }
                    assert_eq!(read(map.get(&1)), Some(10), "the first key was lost");
                })
            };
            let (value, created) = map.get_or_insert_with(&2, || Mutex::new(20)).unwrap();
            assert_eq!((*value.lock(), created), (20, true));
            reader.join().unwrap();
            assert_eq!(read(map.get(&2)), Some(20));
            assert_eq!(
                map.current.load(Ordering::Relaxed),
                1,
                "the insert grew the table"
            );
        });
    }

    /// Two writers race to create one key: one creates it, the other finds it, and both
    /// see the creator's value.
    #[test]
    fn racing_inserts_of_one_key_create_it_once() {
        racing_inserts_of_one_key(None);
    }

    /// Negative control: an insert that does not look again under the writer lock creates
    /// the key a second time when both writers missed it before the lock, and loom finds
    /// that interleaving.
    #[test]
    #[should_panic(expected = "exactly one creates the key")]
    fn negative_control_no_lookup_under_the_lock_creates_twice() {
        racing_inserts_of_one_key(Some(Fault::NoLookupUnderLock));
    }

    fn racing_inserts_of_one_key(fault: Option<Fault>) {
        loom::model(move || {
            let map = shared_map(fault);
            let other = {
                let map = map.clone();
                loom::thread::spawn(move || {
                    let (value, created) = map
                        .get_or_insert_with(&7_u64, || Mutex::new(1_u64))
                        .unwrap();
                    let value = *value.lock();
                    (value, created)
                })
            };
            let (value, created) = map.get_or_insert_with(&7, || Mutex::new(2)).unwrap();
            let value = *value.lock();
            let (other_value, other_created) = other.join().unwrap();
            assert_ne!(created, other_created, "exactly one creates the key");
            assert_eq!(value, other_value);
            assert_eq!(value, if created { 2 } else { 1 });
            assert_eq!(map.len(), 1);
        });
    }
}
