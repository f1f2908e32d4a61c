//! The journal's **Order** bookkeeping (see `JournalSink`'s docs), in shards: the state of
//! a SKU lives in the shard its hash picks, the state of a hold in the shard its id picks,
//! and an event locks only the shards it touches, so changes of other SKUs append in
//! parallel.
//!
//! Lock order: the hold shard of the event (at most one), then its SKU shards in
//! ascending index. A writer takes every SKU shard, ascending, and nothing else.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use smallvec::SmallVec;

use super::snapshot::Snapshot;
use crate::lifecycle::event::{EventLine, StockEvent};
use crate::store::Sku;
use crate::sync::{AtomicU64, Hasher, Mutex, MutexGuard, Ordering};

/// Shards of each kind (SKU and hold): a power of two.
pub(super) const SHARDS: usize = 16;

/// Ends of holds a hold shard remembers, to know a second event of one end from the close
/// of a hold whose opening event has not come.
const RECENT_ENDS: usize = 1024;

/// A value on cache lines of its own (two, as the adjacent-line prefetcher pairs them), so
/// that callers on different shards do not share lines.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(super) struct Padded<T>(pub(super) T);

/// What the journal keeps of one SKU.
#[derive(Debug, Default)]
pub(super) struct SkuOrder {
    /// The SKU's highest version appended and the units reserved at it.
    top: (u64, u64),
    /// The holds open on it (appended, not closed): `(hold id, the SKU's version at the
    /// open, units)` (version 0 for a hold recovered from a snapshot).
    holds: Vec<(u64, u64, u64)>,
}

/// One SKU shard: its SKUs' [`SkuOrder`]s and the events appended under it and not yet
/// taken by a writer.
#[derive(Debug)]
pub(super) struct SkuShard<K> {
    orders: HashMap<K, SkuOrder, Hasher>,
    /// Encoded events, one after the other.
    pub(super) block: Vec<u8>,
    /// How many events `block` holds.
    pub(super) events: u64,
}

/// One hold shard: the holds whose id it picks.
#[derive(Debug)]
pub(super) struct HoldShard<K> {
    /// Holds whose opening event was appended and whose closing one was not: their SKUs.
    open: HashMap<u64, SmallVec<[K; 2]>, Hasher>,
    /// Closing events of holds whose opening event was not appended yet: their order of
    /// arrival and encoding (written again at each compaction).
    orphans: HashMap<u64, (u64, Vec<u8>), Hasher>,
    /// The ids of `orphans`, oldest first (an id already gone is skipped).
    orphan_order: VecDeque<u64>,
    /// Orphans kept so far (their order of arrival).
    orphans_seen: u64,
    /// The last [`RECENT_ENDS`] holds whose end was appended, oldest first: a second event
    /// of one end (a partial commit reports its released part, then its committed part)
    /// is not an orphan.
    recent_ends: VecDeque<u64>,
}

impl<K> HoldShard<K> {
    /// The orphan closes of this shard, with their order of arrival.
    pub(super) fn orphans(&self) -> impl Iterator<Item = &(u64, Vec<u8>)> {
        self.orphans.values()
    }
}

/// Every shard, and how to pick one.
#[derive(Debug)]
pub(super) struct Shards<K> {
    hasher: Hasher,
    pub(super) skus: Box<[Padded<Mutex<SkuShard<K>>>]>,
    pub(super) holds: Box<[Padded<Mutex<HoldShard<K>>>]>,
    /// The most orphan closes a hold shard keeps.
    orphans_max: usize,
}

/// The shards an event locked: its hold's (if any) and its SKUs' (ascending).
pub(super) struct Locked<'a, K> {
    hold: Option<MutexGuard<'a, HoldShard<K>>>,
    indexes: SmallVec<[usize; 4]>,
    skus: SmallVec<[MutexGuard<'a, SkuShard<K>>; 4]>,
}

impl<K: Sku> Shards<K> {
    /// Shards holding the SKUs and open holds of `snapshot`, keeping at most
    /// `orphans_max` orphan closes in all.
    pub(super) fn new(snapshot: &Snapshot<K>, orphans_max: usize) -> Self {
        let hasher = Hasher::default();
        let sku_shard = || SkuShard {
            orders: HashMap::default(),
            block: Vec::new(),
            events: 0,
        };
        let hold_shard = || HoldShard {
            open: HashMap::default(),
            orphans: HashMap::default(),
            orphan_order: VecDeque::new(),
            orphans_seen: 0,
            recent_ends: VecDeque::new(),
        };
        let shards = Self {
            hasher,
            skus: (0..SHARDS)
                .map(|_| Padded(Mutex::new(sku_shard())))
                .collect(),
            holds: (0..SHARDS)
                .map(|_| Padded(Mutex::new(hold_shard())))
                .collect(),
            orphans_max: orphans_max.div_ceil(SHARDS),
        };
        for sku in &snapshot.skus {
            let order = SkuOrder {
                top: (sku.version, sku.reserved),
                holds: Vec::new(),
            };
            let index = shards.sku_index(&sku.sku);
            shards.skus[index]
                .0
                .lock()
                .orders
                .insert(sku.sku.clone(), order);
        }
        for hold in &snapshot.holds {
            let id = hold.id.get();
            for (sku, units) in &hold.lines {
                let mut shard = shards.skus[shards.sku_index(sku)].0.lock();
                let order = shard.orders.entry(sku.clone()).or_default();
                order.holds.push((id, 0, *units));
            }
            let skus = hold.lines.iter().map(|(sku, _)| sku.clone()).collect();
            shards.holds[hold_index(id)].0.lock().open.insert(id, skus);
        }
        shards
    }

    /// Appends an event of one line and no hold (a sale or restock) when its SKU is known
    /// and the event is in order (the common case), with one lock and one lookup; returns
    /// the length in bytes of the block it went to and the epoch read under its lock, or
    /// `None`, with nothing changed, when the general path must take it.
    pub(super) fn append_one_line(
        &self,
        event: &StockEvent<K>,
        payload: &[u8],
        epoch: &AtomicU64,
    ) -> Option<(usize, u64)> {
        let [line] = event.lines() else {
            return None;
        };
        let mut shard = self.skus[self.sku_index(&line.sku)].0.lock();
        let order = shard.orders.get_mut(&line.sku)?;
        if !line_in_order(Some(order), line, false, None) {
            return None;
        }
        if order.top.0 < line.level.version {
            order.top = (line.level.version, line.level.reserved);
        }
        shard.block.extend_from_slice(payload);
        shard.events += 1;
        Some((shard.block.len(), epoch.load(Ordering::Relaxed)))
    }

    /// [`append_one_line`](Self::append_one_line) for an event of one line that opens
    /// (`opens`) or closes the hold `id` of that one SKU: two locks, no allocation for a
    /// SKU stored inline; `None`, with nothing changed, when the general path must take
    /// it (a hold of several SKUs, a close before its open, a change that must wait).
    pub(super) fn append_one_line_hold(
        &self,
        event: &StockEvent<K>,
        (id, opens): (u64, bool),
        payload: &[u8],
        epoch: &AtomicU64,
    ) -> Option<(usize, u64)> {
        let [line] = event.lines() else {
            return None;
        };
        let mut hold = self.holds[hold_index(id)].0.lock();
        if opens {
            if hold.orphans.contains_key(&id) {
                return None;
            }
        } else if hold
            .open
            .get(&id)
            .is_none_or(|skus| skus.len() != 1 || skus[0] != line.sku)
        {
            return None;
        }
        let mut shard = self.skus[self.sku_index(&line.sku)].0.lock();
        let order = shard.orders.get_mut(&line.sku)?;
        let closes = (!opens).then_some(id);
        if !line_in_order(Some(order), line, opens, closes) {
            return None;
        }
        if order.top.0 < line.level.version {
            order.top = (line.level.version, line.level.reserved);
        }
        if opens {
            order.holds.push((id, line.level.version, line.quantity));
            let mut skus = SmallVec::new();
            skus.push(line.sku.clone());
            hold.open.insert(id, skus);
        } else {
            order.holds.retain(|(hold, _, _)| *hold != id);
            hold.open.remove(&id);
            if hold.recent_ends.len() == RECENT_ENDS {
                hold.recent_ends.pop_front();
            }
            hold.recent_ends.push_back(id);
        }
        shard.block.extend_from_slice(payload);
        shard.events += 1;
        Some((shard.block.len(), epoch.load(Ordering::Relaxed)))
    }

    fn sku_index(&self, sku: &K) -> usize {
        (self.hasher.hash_one(sku) >> 32) as usize & (SHARDS - 1)
    }

    /// Locks the shards `event` touches: its hold's (`hold`: the hold it opens, `true`, or
    /// closes, `false`), its SKUs', and for a close the SKUs' of every line of the hold (a
    /// partial commit's first event may name only some).
    pub(super) fn lock(&self, event: &StockEvent<K>, hold: Option<(u64, bool)>) -> Locked<'_, K> {
        let hold_guard = hold.map(|(id, _)| self.holds[hold_index(id)].0.lock());
        let mut indexes: SmallVec<[usize; 4]> = event
            .lines()
            .iter()
            .map(|line| self.sku_index(&line.sku))
            .collect();
        if let (Some((id, false)), Some(shard)) = (hold, &hold_guard) {
            if let Some(skus) = shard.open.get(&id) {
                indexes.extend(skus.iter().map(|sku| self.sku_index(sku)));
            }
        }
        indexes.sort_unstable();
        indexes.dedup();
        let skus = indexes
            .iter()
            .map(|&index| self.skus[index].0.lock())
            .collect();
        Locked {
            hold: hold_guard,
            indexes,
            skus,
        }
    }
}

/// The hold shard of the hold `id`.
pub(super) fn hold_index(id: u64) -> usize {
    id as usize & (SHARDS - 1)
}

impl<K: Sku> Locked<'_, K> {
    /// The locked shard of `sku` (locked by [`Shards::lock`]).
    fn shard(&mut self, shards: &Shards<K>, sku: &K) -> &mut SkuShard<K> {
        let index = shards.sku_index(sku);
        let at = self
            .indexes
            .binary_search(&index)
            .expect("the SKU's shard is locked");
        &mut self.skus[at]
    }

    fn order(&self, shards: &Shards<K>, sku: &K) -> Option<&SkuOrder> {
        let index = shards.sku_index(sku);
        let at = self.indexes.binary_search(&index).ok()?;
        self.skus[at].orders.get(sku)
    }

    /// Whether appending `event` now keeps the file consistent: on each of its SKUs, the
    /// holds open in the file (after `event`) that opened at or before the SKU's highest
    /// version in the file (after `event`) hold at most the units that version's counts
    /// reserve. More means the end (commit, release, expiry) of one of those holds changed
    /// the SKU before a change already appended, or before `event`, and its event has not
    /// come yet: a crash then would leave a change without the end before it. `hold` is
    /// the hold `event` opens (`true`) or closes (`false`), if any.
    pub(super) fn in_order(
        &self,
        shards: &Shards<K>,
        event: &StockEvent<K>,
        hold: Option<(u64, bool)>,
    ) -> bool {
        // A hold whose close came first is never opened in the file.
        let orphan = |id: &u64| {
            self.hold
                .as_ref()
                .is_some_and(|shard| shard.orphans.contains_key(id))
        };
        let opens = hold.is_some_and(|(id, opens)| opens && !orphan(&id));
        let closes = hold.filter(|(_, opens)| !*opens).map(|(id, _)| id);
        event
            .lines()
            .iter()
            .all(|line| line_in_order(self.order(shards, &line.sku), line, opens, closes))
    }

    /// Notes `event` as appended (its SKUs' counts, the hold it opens or closes) and
    /// appends its encoding `payload` to the block of its first SKU shard; returns that
    /// block's length in bytes.
    pub(super) fn admit(
        &mut self,
        shards: &Shards<K>,
        event: &StockEvent<K>,
        hold: Option<(u64, bool)>,
        payload: &[u8],
    ) -> usize {
        for line in event.lines() {
            let level = (line.level.version, line.level.reserved);
            let shard = self.shard(shards, &line.sku);
            match shard.orders.get_mut(&line.sku) {
                Some(order) if order.top.0 >= level.0 => {}
                Some(order) => order.top = level,
                None => {
                    let order = SkuOrder {
                        top: level,
                        holds: Vec::new(),
                    };
                    shard.orders.insert(line.sku.clone(), order);
                }
            }
        }
        if let Some((id, opens)) = hold {
            self.track(shards, id, opens, event, payload);
        }
        let first = &mut self.skus[0];
        first.block.extend_from_slice(payload);
        first.events += 1;
        first.block.len()
    }

    /// Notes the hold `id` that `event` opens (`opens`) or closes; the close of a hold whose
    /// opening event was not appended yet is kept as an orphan, with its encoding
    /// `payload`.
    fn track(
        &mut self,
        shards: &Shards<K>,
        id: u64,
        opens: bool,
        event: &StockEvent<K>,
        payload: &[u8],
    ) {
        let mut hold = self.hold.take().expect("the hold's shard is locked");
        if opens {
            if hold.orphans.remove(&id).is_some() {
                // Its id stays in `orphan_order` until skipped; drop the gone ones at times.
                if hold.orphan_order.len() > 2 * hold.orphans.len() + 64 {
                    let HoldShard {
                        orphans,
                        orphan_order,
                        ..
                    } = &mut *hold;
                    orphan_order.retain(|id| orphans.contains_key(id));
                }
            } else {
                for line in event.lines() {
                    let entry = (id, line.level.version, line.quantity);
                    let order = self.shard(shards, &line.sku).orders.get_mut(&line.sku);
                    order.expect("noted above").holds.push(entry);
                }
                let skus = event.lines().iter().map(|line| line.sku.clone()).collect();
                hold.open.insert(id, skus);
            }
        } else if let Some(skus) = hold.open.remove(&id) {
            for sku in &skus {
                if let Some(order) = self.shard(shards, sku).orders.get_mut(sku) {
                    order.holds.retain(|(hold, _, _)| *hold != id);
                }
            }
            if hold.recent_ends.len() == RECENT_ENDS {
                hold.recent_ends.pop_front();
            }
            hold.recent_ends.push_back(id);
        } else if !hold.recent_ends.contains(&id) {
            while hold.orphans.len() >= shards.orphans_max {
                let Some(oldest) = hold.orphan_order.pop_front() else {
                    break;
                };
                hold.orphans.remove(&oldest);
            }
            hold.orphans_seen += 1;
            let seen = hold.orphans_seen;
            hold.orphans.insert(id, (seen, payload.to_vec()));
            hold.orphan_order.push_back(id);
        }
        self.hold = Some(hold);
    }
}

/// Whether `line`'s SKU, whose [`SkuOrder`] is `order`, stays consistent in the file
/// with `line` appended (see [`Locked::in_order`]): `opens` when its event opens a hold
/// not closed already, `closes` the hold its event closes.
fn line_in_order<K>(
    order: Option<&SkuOrder>,
    line: &EventLine<K>,
    opens: bool,
    closes: Option<u64>,
) -> bool {
    let (top, reserved) = match order.map(|order| order.top) {
        Some((version, reserved)) if version >= line.level.version => (version, reserved),
        _ => (line.level.version, line.level.reserved),
    };
    let mut held: u64 = order.map_or(0, |order| {
        order
            .holds
            .iter()
            .filter(|(id, at, _)| Some(*id) != closes && *at <= top)
            .map(|(_, _, units)| units)
            .sum()
    });
    if opens && line.level.version <= top {
        held += line.quantity;
    }
    held <= reserved
}
