//! Recovery: the latest snapshot of a journal directory plus the journal after it, as one
//! [`Snapshot`] to build a store from.
//!
//! Events reach the journal in the order their callers deliver them, which is not always
//! the order of their changes (a store delivers after releasing its locks). So recovery
//! applies nothing in file order:
//!
//! - **Counts.** A SKU's on hand and version come from its line of highest version, in the
//!   snapshot or any record. Every line carries the SKU's counts right after its change,
//!   and versions only grow, so the highest one holds every change before it, whether or
//!   not that change's own record made it to disk. (On hand never shows a half-done
//!   request: a multi-line sale of a compare-and-swap store holds, then commits.)
//! - **Holds.** A hold is open when the snapshot has it or a record opens it, and no record
//!   closes it (commit, release, expiry), in whichever order the two records came. The
//!   journal writes again, after each compaction, the closes it saw before their opens
//!   (`JournalSink::compact`).
//! - **Reserved** units are the sum of the open holds' lines. A hold whose opening record
//!   was lost was never acknowledged to its caller: its units are free again, as if it had
//!   been released at the crash (the line of highest version may still count them, as it
//!   may count a compare-and-swap store's passing partial hold).
//! - **Idempotency keys** come back with their holds, and a closing record's key is
//!   remembered as that hold's outcome for what is left of the retention (measured from
//!   the wall-clock time of the record's write, which under `SyncPolicy::EverySec` may
//!   come up to about a second after the close: the key is kept that much longer).
//! - **TTLs** come back as the wall-clock deadline the record holds (format 2; format 1
//!   counted the TTL from the record's time), so a hold's deadline does not move while
//!   the process is down.
//!
//! A torn last record (the file ends inside it, or its checksum fails with no whole record
//! after it) was never acknowledged under `SyncPolicy::Always`: it is dropped, with every
//! event in it, and counted in [`Recovery::torn_bytes`]. Damage anywhere else is
//! [`JournalError::Corrupt`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::capture;
use super::codec;
use super::error::JournalError;
use super::files::{self, Kind, Record};
use super::snapshot::{
    duration_ms, HoldSnapshot, KeySnapshot, SkuSnapshot, Snapshot, SnapshotError,
};
use crate::level::Limits;
use crate::lifecycle::event::StockEvent;
use crate::reservation::{HoldOutcome, ReservationId};
use crate::store::Sku;

/// What [`JournalSink::open`](crate::JournalSink::open) recovered from a directory.
///
/// # Examples
///
/// ```
/// use stockledger::{JournalSink, SyncPolicy};
///
/// let dir = std::env::temp_dir().join(format!("stockledger-recovery-doc-{}", std::process::id()));
/// let (_journal, recovered) = JournalSink::<String>::open(&dir, SyncPolicy::Always)?;
/// assert_eq!((recovered.records, recovered.torn_bytes), (0, 0));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), stockledger::JournalError>(())
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery<K> {
    /// The recovered state: build the store from it with
    /// [`StoreBuilder::restore`](crate::StoreBuilder::restore).
    pub snapshot: Snapshot<K>,
    /// The generation of the snapshot file it started from (`None`: none, an empty store).
    pub snapshot_generation: Option<u64>,
    /// The newest generation of any file in the directory (0 when empty).
    pub generation: u64,
    /// Journal events replayed over the snapshot (a record of the journal holds one event
    /// or more).
    pub records: u64,
    /// The sequence number of the last event replayed, if any.
    pub last_sequence: Option<u64>,
    /// Bytes of a torn last record dropped (0: the journal ended on a whole record).
    pub torn_bytes: u64,
}

/// The state being rebuilt.
struct Rebuild<K> {
    skus: BTreeMap<K, SkuSnapshot<K>>,
    /// Per SKU, the reserved units of its line of highest version (the snapshot's, or a
    /// record's): what the store held for open holds (and passing partial holds, and
    /// waiters' grants) right after that change.
    top_reserved: HashMap<K, u64>,
    holds: BTreeMap<ReservationId, HoldSnapshot<K>>,
    /// Per open hold from a record, the version of each of its SKUs when it opened (holds
    /// of the snapshot opened before every version there).
    opened_at: HashMap<ReservationId, Vec<u64>>,
    closed: std::collections::HashSet<ReservationId>,
    keys: HashMap<String, KeySnapshot<K>>,
    key_order: Vec<String>,
    retention: Duration,
    now_unix_ms: u64,
}

/// Recovers the state kept in `dir` (see the module docs).
///
/// # Errors
///
/// [`JournalError::Io`], [`JournalError::Corrupt`], [`JournalError::Snapshot`].
pub(crate) fn recover<K: Sku + DeserializeOwned>(dir: &Path) -> Result<Recovery<K>, JournalError> {
    let files = files::list(dir)?;
    let generation = files
        .iter()
        .map(|(_, generation)| *generation)
        .max()
        .unwrap_or(0);
    let snapshot_generation = files
        .iter()
        .filter(|(kind, _)| *kind == Kind::Snapshot)
        .map(|(_, generation)| *generation)
        .max();
    let snapshot = match snapshot_generation {
        Some(generation) => read_snapshot(&files::path(dir, Kind::Snapshot, generation))?,
        None => Snapshot::empty(),
    };
    let mut rebuild = Rebuild::from_snapshot(snapshot);
    let journals: Vec<u64> = files
        .iter()
        .filter(|(kind, generation)| {
            *kind == Kind::Journal && *generation >= snapshot_generation.unwrap_or(0)
        })
        .map(|(_, generation)| *generation)
        .collect();
    let mut records = 0;
    let mut last_sequence = None;
    let mut torn_bytes = 0;
    for (index, journal) in journals.iter().enumerate() {
        let path = files::path(dir, Kind::Journal, *journal);
        let bytes = std::fs::read(&path).map_err(|source| JournalError::io(&path, source))?;
        let last = index + 1 == journals.len();
        torn_bytes = read_records(&path, &bytes, last, |record, offset, format| {
            let corrupt = |reason: &str| JournalError::corrupt(&path, offset, reason);
            let mut replay = |sequence: u64, event: StockEvent<K>| {
                if last_sequence.is_some_and(|previous| sequence <= previous) {
                    return Err(corrupt("sequence numbers go back"));
                }
                rebuild.apply(event, record.unix_ms);
                last_sequence = Some(sequence);
                records += 1;
                Ok(())
            };
            if format == Format::Json {
                let event = serde_json::from_slice(record.payload)
                    .map_err(|error| corrupt(&format!("record does not parse: {error}")))?;
                return replay(record.sequence, event);
            }
            let mut events = record.payload;
            let mut sequence = record.sequence;
            while !events.is_empty() {
                let event = codec::decode(&mut events, record.unix_ms)
                    .map_err(|error| corrupt(&format!("record does not parse: {error}")))?;
                replay(sequence, event)?;
                sequence = sequence.saturating_add(1);
            }
            Ok(())
        })?;
    }
    let snapshot = rebuild.finish()?;
    Ok(Recovery {
        snapshot,
        snapshot_generation,
        generation,
        records,
        last_sequence,
        torn_bytes,
    })
}

/// Reads and checks the snapshot file at `path`.
fn read_snapshot<K: Sku + DeserializeOwned>(path: &Path) -> Result<Snapshot<K>, JournalError> {
    let bytes = std::fs::read(path).map_err(|source| JournalError::io(path, source))?;
    let payload = files::snapshot_payload(path, &bytes)?;
    let snapshot: Snapshot<K> = serde_json::from_slice(payload).map_err(|error| {
        JournalError::corrupt(path, 20, &format!("snapshot does not parse: {error}"))
    })?;
    capture::validate(&snapshot, Limits::U64)?;
    Ok(snapshot)
}

/// The format of a journal file, by its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Format 1: a record is one event, as JSON.
    Json,
    /// Format 2: a record is events in the binary encoding of `codec`.
    Binary,
}

/// Calls `apply` with every whole record of the journal file `bytes` (at `path`), its
/// offset and the file's format; returns the bytes of a torn tail dropped (only when
/// `last`, the newest file).
fn read_records(
    path: &Path,
    bytes: &[u8],
    last: bool,
    mut apply: impl FnMut(Record<'_>, u64, Format) -> Result<(), JournalError>,
) -> Result<u64, JournalError> {
    let magic = files::JOURNAL_MAGIC.as_slice();
    if bytes.len() < magic.len() && last && magic.starts_with(bytes) {
        return Ok(bytes.len() as u64); // torn while its magic was written
    }
    let format = if bytes.starts_with(magic) {
        Format::Binary
    } else if bytes.starts_with(files::JOURNAL_MAGIC_V1) {
        Format::Json
    } else {
        return Err(JournalError::corrupt(path, 0, "not a journal file (magic)"));
    };
    let mut offset = magic.len();
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        match files::unframe(rest) {
            Some((record, length)) => {
                apply(record, offset as u64, format)?;
                offset += length;
            }
            None if last && !whole_record_after(rest) => {
                return Ok(rest.len() as u64);
            }
            None => {
                return Err(JournalError::corrupt(
                    path,
                    offset as u64,
                    "bad record checksum or length with whole records after it",
                ));
            }
        }
    }
    Ok(0)
}

/// Whether a bad record at the start of `rest` is followed by a whole one: then the damage
/// is in the middle of the journal, not a torn tail. Looks where the bad record's own
/// length says the next one starts.
fn whole_record_after(rest: &[u8]) -> bool {
    let Some(length) = rest.get(..4) else {
        return false;
    };
    let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
    if length > files::RECORD_BYTES_MAX {
        return false;
    }
    rest.get(files::RECORD_HEADER_BYTES + length..)
        .is_some_and(|next| !next.is_empty() && files::unframe(next).is_some())
}

impl<K: Sku> Rebuild<K> {
    fn from_snapshot(snapshot: Snapshot<K>) -> Self {
        let retention = Duration::from_millis(snapshot.idempotency_retention_ms);
        let mut key_order = Vec::new();
        let mut keys = HashMap::new();
        for key in snapshot.resolved_keys {
            key_order.push(key.key.clone());
            keys.insert(key.key.clone(), key);
        }
        Self {
            top_reserved: snapshot
                .skus
                .iter()
                .map(|sku| (sku.sku.clone(), sku.reserved))
                .collect(),
            opened_at: HashMap::new(),
            skus: snapshot
                .skus
                .into_iter()
                .map(|sku| (sku.sku.clone(), sku))
                .collect(),
            holds: snapshot
                .holds
                .into_iter()
                .map(|hold| (hold.id, hold))
                .collect(),
            closed: std::collections::HashSet::new(),
            keys,
            key_order,
            retention,
            now_unix_ms: files::unix_ms(),
        }
    }

    /// Applies one event, appended at `unix_ms`.
    fn apply(&mut self, event: StockEvent<K>, unix_ms: u64) {
        for line in event.lines() {
            let sku = self
                .skus
                .entry(line.sku.clone())
                .or_insert_with(|| SkuSnapshot {
                    sku: line.sku.clone(),
                    on_hand: 0,
                    reserved: 0,
                    version: 0,
                    low_stock_threshold: 0,
                });
            if line.level.version > sku.version {
                sku.on_hand = line.level.on_hand;
                sku.version = line.level.version;
                self.top_reserved
                    .insert(line.sku.clone(), line.level.reserved);
            }
        }
        let elapsed = Duration::from_millis(self.now_unix_ms.saturating_sub(unix_ms));
        let (id, outcome, key) = match event {
            StockEvent::Reserved {
                id,
                lines,
                expires_at,
                key,
            } => {
                if !self.closed.contains(&id) {
                    // The record's TTL was measured at its append; time has passed since.
                    let ttl_ms = expires_at.map(|deadline| {
                        let ttl = deadline.saturating_duration_since(Instant::now());
                        duration_ms(ttl.saturating_sub(elapsed))
                    });
                    let versions = lines.iter().map(|line| line.level.version).collect();
                    self.opened_at.insert(id, versions);
                    let hold = HoldSnapshot {
                        id,
                        lines: lines
                            .into_iter()
                            .map(|line| (line.sku, line.quantity))
                            .collect(),
                        ttl_ms,
                        idempotency_key: key.map(|key| key.to_string()),
                    };
                    self.holds.insert(id, hold);
                }
                return;
            }
            StockEvent::Committed { id, key, .. } => (id, HoldOutcome::Committed, key),
            StockEvent::Released { id, key, .. } => (id, HoldOutcome::Released, key),
            StockEvent::Expired { id, key, .. } => (id, HoldOutcome::Expired, key),
            _ => return,
        };
        let hold = self.holds.remove(&id);
        self.opened_at.remove(&id);
        self.closed.insert(id);
        let Some(key) = key else {
            return;
        };
        let lines = match hold {
            Some(hold) => hold.lines,
            None => {
                // A second record of one end: a partial commit reports its released part,
                // then its committed part. The hold's key says it was committed.
                let key = self.keys.get_mut(key.as_ref());
                if let Some(known) = key.filter(|known| known.id == id) {
                    if outcome == HoldOutcome::Committed {
                        known.outcome = outcome;
                    }
                }
                return;
            }
        };
        let retained_ms = duration_ms(self.retention.saturating_sub(elapsed));
        if lines.is_empty() || retained_ms == 0 {
            return;
        }
        let key = key.to_string();
        self.key_order.push(key.clone());
        self.keys.insert(
            key.clone(),
            KeySnapshot {
                key,
                id,
                lines,
                outcome,
                retained_ms,
            },
        );
    }

    /// Checks that no hold is open here that the counts say was closed: per SKU, the open
    /// holds opened at or before its line of highest version hold at most the units
    /// reserved in that line (a store's reserved units cover every open hold, and more only
    /// for passing partial holds and waiters' grants). More means a commit, release or
    /// expiry changed the counts while its own record never reached the journal, though a
    /// later change of the SKU did (see `JournalSink`'s docs, **Order**).
    ///
    /// # Errors
    ///
    /// [`JournalError::LostClose`] naming the SKU.
    fn check_no_close_lost(&self) -> Result<(), JournalError> {
        let mut held: HashMap<&K, u64> = HashMap::new();
        for hold in self.holds.values() {
            let opened = self.opened_at.get(&hold.id);
            for (index, (sku, quantity)) in hold.lines.iter().enumerate() {
                let at = opened
                    .and_then(|versions| versions.get(index))
                    .copied()
                    .unwrap_or(0);
                let top = self.skus.get(sku).map_or(0, |sku| sku.version);
                if at <= top {
                    *held.entry(sku).or_default() += quantity;
                }
            }
        }
        for (sku, units) in held {
            let reserved = self.top_reserved.get(sku).copied().unwrap_or(0);
            if units > reserved {
                return Err(JournalError::LostClose {
                    sku: format!("{sku:?}"),
                    held: units,
                    reserved,
                });
            }
        }
        Ok(())
    }

    /// The recovered snapshot: reserved units from the open holds.
    ///
    /// # Errors
    ///
    /// [`JournalError::Snapshot`] when the open holds of a SKU exceed its on hand (the
    /// window named in `JournalSink`'s docs, **Order**).
    fn finish(self) -> Result<Snapshot<K>, JournalError> {
        self.check_no_close_lost()?;
        let Self {
            mut skus,
            holds,
            mut keys,
            key_order,
            retention,
            ..
        } = self;
        for sku in skus.values_mut() {
            sku.reserved = 0;
        }
        for hold in holds.values() {
            for (sku, quantity) in &hold.lines {
                if let Some(sku) = skus.get_mut(sku) {
                    sku.reserved = sku.reserved.saturating_add(*quantity);
                }
            }
        }
        let mut resolved_keys = Vec::new();
        for key in key_order {
            if let Some(key) = keys.remove(&key) {
                if !holds.contains_key(&key.id) {
                    resolved_keys.push(key);
                }
            }
        }
        let snapshot = Snapshot {
            format_version: super::snapshot::SNAPSHOT_FORMAT_VERSION,
            skus: skus.into_values().collect(),
            holds: holds.into_values().collect(),
            resolved_keys,
            idempotency_retention_ms: duration_ms(retention),
        };
        if let Some(sku) = snapshot.skus.iter().find(|sku| sku.reserved > sku.on_hand) {
            return Err(JournalError::Snapshot(SnapshotError::Invalid {
                reason: format!(
                    "recovered holds reserve {} units of SKU {:?}, which has {} on hand",
                    sku.reserved, sku.sku, sku.on_hand
                ),
            }));
        }
        capture::validate(&snapshot, Limits::U64)?;
        Ok(snapshot)
    }
}
