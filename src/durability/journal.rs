//! The journal: an [`EventSink`] that appends every event to a file and answers only once
//! it is on disk, with group commit; and its compaction by snapshots.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::JournalError;
use super::files::{self, Kind};
use super::recovery::{self, Recovery};
use super::snapshot::{Snapshot, SnapshotError};
use crate::lifecycle::event::{EventSink, StockEvent};
use crate::store::Sku;
use crate::sync::{Condvar, Mutex, MutexGuard};

/// When the journal makes an appended record durable, named after Redis's
/// [`appendfsync`](https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/)
/// settings.
///
/// Every policy writes each record to the file (the operating system's page cache) before
/// `on_event` returns, so a crash of the process loses nothing; they differ in what a crash
/// of the machine (power, kernel) may lose.
///
/// # Examples
///
/// ```
/// use stockledger::SyncPolicy;
///
/// assert_eq!(SyncPolicy::default(), SyncPolicy::Always);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SyncPolicy {
    /// `fdatasync` before `on_event` returns: a change is acknowledged to its caller only
    /// once it is on disk. Concurrent callers share one sync (group commit).
    #[default]
    Always,
    /// `fdatasync` once a second, from a thread of the journal: a machine crash loses at
    /// most about the last second of acknowledged changes.
    EverySec,
    /// Never sync; the operating system writes the file back when it likes (on Linux,
    /// within about 30 s).
    No,
}

/// A place in the journal: a file's generation and a byte offset in it.
///
/// # Examples
///
/// ```
/// use stockledger::JournalPosition;
///
/// let a = JournalPosition { generation: 1, offset: 900 };
/// assert!(a < JournalPosition { generation: 2, offset: 8 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct JournalPosition {
    /// The generation of the journal file.
    pub generation: u64,
    /// Bytes from the start of that file.
    pub offset: u64,
}

/// Ends of holds the journal remembers, to know a second record of one end from the
/// close of a hold whose opening record has not come.
const RECENT_ENDS: usize = 1024;

/// The longest a record waits for the record of a hold's end that changed one of its SKUs
/// before it (see [`JournalSink`], **Order**); past it, the record is written all the
/// same.
pub const ORDER_WAIT_MAX: Duration = Duration::from_millis(500);

/// Holds whose close the journal saw before their open, kept at most this many (oldest
/// forgotten first); see [`JournalSink::compact`].
pub const ORPHAN_CLOSES_MAX: usize = 100_000;

/// A durable [`EventSink`]: appends every change of a store to a journal file in a
/// directory, and, under [`SyncPolicy::Always`], returns from `on_event` (so the store
/// returns to its caller) only once the change is on disk. Recovery
/// ([`open`](Self::open)) gives back the store's state as of the last whole record.
///
/// **Records.** Each event but `LowStock` (which recovery does not need) is one record:
/// its length, a CRC-32 checksum, the journal's sequence number, the wall-clock time and
/// the event as JSON (layout in the module `files`). A record is written with one `write`
/// before `on_event` returns, whatever the policy.
///
/// **Group commit.** Under `Always`, a caller whose record is not yet durable either
/// becomes the leader, which runs one `fdatasync` (`File::sync_data`) for every record
/// appended so far, or waits for the leader in progress; so concurrent callers share one
/// sync, as in PostgreSQL's WAL flush and MySQL's binary-log group commit. A machine that
/// syncs 64 bytes in 3 ms thus acknowledges far more than 333 changes a second.
///
/// **Compaction.** [`compact`](Self::compact) starts a new journal file, takes a snapshot of
/// the store, writes it and removes the files before it, so a journal never grows past
/// what happened since the last snapshot.
///
/// **Order.** A store delivers events after its locks are released, so two threads'
/// records may reach the journal in the other order than their changes. Recovery does not
/// depend on the file's order: each SKU's counts come from its record of highest version,
/// and a hold is open when its opening record is there and no closing one (a close may
/// come first). What the file must not hold is a change of a SKU without the end (commit,
/// release, expiry) of a hold that came before it on that SKU: recovery would find the
/// later counts with the hold still open. So the journal keeps, per SKU, the units its
/// highest version written reserves, and a record after which the holds open in the file
/// (opened at or before that version) would hold more waits, with no store lock held,
/// until the record of the missing end is written first: a change whose counts already
/// left a hold's units, or a hold's opening record that comes after such a change. It
/// waits at most [`set_order_wait_max`](Self::set_order_wait_max) ([`ORDER_WAIT_MAX`] by
/// default, reached only when the end's caller is stalled, or when two multi-line
/// resolutions of the optimistic or adaptive store cross); a record is then written all
/// the same, and if a crash leaves the file so, recovery answers
/// [`JournalError::LostClose`] rather than guess.
///
/// **One store a directory.** A journal records one store's changes: give each store a
/// directory of its own. Low-stock thresholds are kept by snapshots only (setting one is
/// not an event): set them again after a recovery, or compact after setting them. TTLs
/// in records are measured by the system clock (`Instant` and the wall clock), whatever
/// clock the store was given.
///
/// **Failure.** A failed `write` or `fdatasync` cannot be returned through `on_event`; as
/// PostgreSQL does since 2018, the journal then refuses to go on: this call and every
/// later one panic (after a failed `fdatasync` the kernel may have dropped the dirty
/// pages, so retrying could acknowledge a change that is not on disk).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use stockledger::{JournalSink, PessimisticStore, StockStore, SyncPolicy};
///
/// let dir = std::env::temp_dir().join(format!("stockledger-journal-doc-{}", std::process::id()));
/// {
///     let (journal, recovered) = JournalSink::<String>::open(&dir, SyncPolicy::Always)?;
///     assert!(recovered.snapshot.skus.is_empty()); // a new directory
///     let store = PessimisticStore::builder()
///         .restore(recovered.snapshot)?
///         .event_sink(journal.clone())
///         .build();
///     store.restock(&"SKU1004".to_string(), 5).unwrap();
///     store.sell(&[("SKU1004".to_string(), 2)]).unwrap(); // on disk when it returns
/// } // the process dies here
/// let (_journal, recovered) = JournalSink::<String>::open(&dir, SyncPolicy::Always)?;
/// let store = PessimisticStore::builder().restore(recovered.snapshot)?.build();
/// assert_eq!(store.level(&"SKU1004".to_string()).unwrap().on_hand, 3);
/// std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct JournalSink<K> {
    shared: Arc<Shared<K>>,
    /// The thread that syncs once a second under `EverySec`.
    flusher: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Held by a compaction: one at a time.
    compaction: Mutex<()>,
}

/// What the sink's callers and its flusher share.
struct Shared<K> {
    dir: PathBuf,
    policy: SyncPolicy,
    /// Everything below; held while a record is written (not while it is synced).
    state: Mutex<State<K>>,
    /// Signalled when a sync ends (and when the sink closes).
    synced: Condvar,
}

/// The journal's state, guarded by [`Shared::state`].
struct State<K> {
    /// The journal file appended to.
    file: Arc<File>,
    /// Its generation.
    generation: u64,
    /// Bytes written to it (its length).
    written: u64,
    /// Bytes of it known to be on disk.
    durable: u64,
    /// Whether a leader is syncing now.
    syncing: bool,
    /// The sequence number of the next record.
    next_sequence: u64,
    /// Why the journal stopped, once a write or sync failed.
    failed: Option<String>,
    /// Holds whose opening record was written and whose closing one was not: their SKUs.
    open: HashMap<u64, Vec<K>>,
    /// Per SKU, the holds of `open` on it: `(hold id, the SKU's version at the open,
    /// units)` (version 0 for a hold recovered from a snapshot).
    open_on: HashMap<K, Vec<(u64, u64, u64)>>,
    /// Per SKU, its highest version in the file and the units reserved at it.
    top: HashMap<K, (u64, u64)>,
    /// Closing records of holds whose opening record was not written yet, with the order
    /// they came in (to forget the oldest first).
    orphans: HashMap<u64, (u64, Vec<u8>)>,
    /// The ids of `orphans`, oldest first (an id already gone is skipped).
    orphan_order: VecDeque<u64>,
    /// The last [`RECENT_ENDS`] holds whose end was written, oldest first: a second record
    /// of one end (a partial commit reports its released part, then its committed part)
    /// is not an orphan.
    recent_ends: VecDeque<u64>,
    /// Set when the sink is dropped: the flusher stops.
    closing: bool,
    /// The longest a record waits for an earlier hold end's record ([`ORDER_WAIT_MAX`]
    /// unless set otherwise).
    order_wait: Duration,
}

impl<K: Sku + Serialize + DeserializeOwned> JournalSink<K> {
    /// Recovers the state kept in `dir` (created if missing) and opens a journal there
    /// for appending. Returns the sink, to give to the store's builder
    /// ([`event_sink`](crate::StoreBuilder::event_sink)), and the [`Recovery`], whose
    /// snapshot the store is built from ([`restore`](crate::StoreBuilder::restore)).
    ///
    /// Opening writes the recovered state as a new snapshot and starts a new journal file,
    /// then removes the older files: a torn tail is gone for good, and the next crash
    /// recovers from here.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`] when the directory or a file cannot be read or written,
    /// [`JournalError::Corrupt`] for damage other than a torn last record,
    /// [`JournalError::Snapshot`] for a snapshot file this build cannot read or a
    /// recovered state that contradicts itself, [`JournalError::LostClose`] for the window
    /// in the type's docs (**Order**); [`JournalError::Io`] also when the `EverySec` thread
    /// cannot be started.
    ///
    /// # Blocking
    ///
    /// Reads every file of the directory and syncs the new ones.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{JournalSink, PessimisticStore, StockStore, SyncPolicy};
    ///
    /// let dir = std::env::temp_dir().join(format!("stockledger-open-{}", std::process::id()));
    /// let (journal, recovered) = JournalSink::<String>::open(&dir, SyncPolicy::Always)?;
    /// let store = PessimisticStore::builder()
    ///     .restore(recovered.snapshot)?
    ///     .event_sink(journal.clone())
    ///     .build();
    /// store.restock(&"SKU1004".to_string(), 3)?; // on disk when it returns
    /// journal.compact(|| store.snapshot())?;
    /// store.sell(&[("SKU1004".to_string(), 1)])?;
    /// drop((store, journal));
    ///
    /// // After a crash (here: the next run), the same directory gives the stock back.
    /// let (_journal, recovered) = JournalSink::<String>::open(&dir, SyncPolicy::Always)?;
    /// let store = PessimisticStore::builder().restore(recovered.snapshot)?.build();
    /// assert_eq!(store.level(&"SKU1004".to_string()).unwrap().on_hand, 2);
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(
        dir: impl AsRef<Path>,
        policy: SyncPolicy,
    ) -> Result<(Arc<Self>, Recovery<K>), JournalError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| JournalError::io(&dir, source))?;
        let recovery = recovery::recover::<K>(&dir)?;
        let generation = recovery.generation + 1;
        write_snapshot(&dir, generation, &recovery.snapshot)?;
        let file = files::create_journal(&dir, generation)?;
        files::remove_before(&dir, generation)?;
        let state = State {
            file: Arc::new(file),
            generation,
            written: files::JOURNAL_MAGIC.len() as u64,
            durable: files::JOURNAL_MAGIC.len() as u64,
            syncing: false,
            next_sequence: recovery.last_sequence.map_or(1, |last| last + 1),
            failed: None,
            open: recovery
                .snapshot
                .holds
                .iter()
                .map(|hold| {
                    (
                        hold.id.get(),
                        hold.lines.iter().map(|(sku, _)| sku.clone()).collect(),
                    )
                })
                .collect(),
            open_on: open_on(&recovery.snapshot),
            top: recovery
                .snapshot
                .skus
                .iter()
                .map(|sku| (sku.sku.clone(), (sku.version, sku.reserved)))
                .collect(),
            orphans: HashMap::new(),
            orphan_order: VecDeque::new(),
            recent_ends: VecDeque::new(),
            closing: false,
            order_wait: ORDER_WAIT_MAX,
        };
        let shared = Arc::new(Shared {
            dir,
            policy,
            state: Mutex::new(state),
            synced: Condvar::new(),
        });
        let flusher = if policy == SyncPolicy::EverySec {
            let weak = Arc::downgrade(&shared);
            let spawned = std::thread::Builder::new()
                .name("stockledger-journal".into())
                .spawn(move || flush_every_second(&weak));
            Some(spawned.map_err(|source| JournalError::io(&shared.dir, source))?)
        } else {
            None
        };
        let sink = Arc::new(Self {
            shared,
            flusher: std::sync::Mutex::new(flusher),
            compaction: Mutex::new(()),
        });
        Ok((sink, recovery))
    }

    /// Compacts the journal: starts a new journal file, calls `snapshot` (the store's
    /// `snapshot()`), writes what it returns, and removes the older files. Changes go on
    /// meanwhile, into the new file; recovery replays it over the snapshot (a change that
    /// the snapshot holds already is recognised by its SKU versions and its hold ids).
    ///
    /// Holds whose closing record came before their opening one are written again at the
    /// start of the new file (at most [`ORPHAN_CLOSES_MAX`]), so that an opening record
    /// that comes late cannot bring back a hold the snapshot no longer has.
    ///
    /// # Errors
    ///
    /// What `snapshot` returns (as [`JournalError::Snapshot`]), [`JournalError::Io`]. On
    /// an error the journal goes on in the new file and recovery still finds everything.
    ///
    /// # Blocking
    ///
    /// Syncs the old file and the new ones, and writes the whole snapshot; appends wait
    /// only while the files are switched.
    ///
    /// # Examples
    ///
    /// See [`open`](Self::open): `journal.compact(|| store.snapshot())`.
    pub fn compact(
        &self,
        snapshot: impl FnOnce() -> Result<Snapshot<K>, SnapshotError>,
    ) -> Result<JournalPosition, JournalError> {
        let _one = self.compaction.lock();
        let generation = self.rotate()?;
        let snapshot = snapshot()?;
        let dir = &self.shared.dir;
        write_snapshot(dir, generation, &snapshot)?;
        files::remove_before(dir, generation)?;
        Ok(JournalPosition {
            generation,
            offset: 0,
        })
    }

    /// Syncs the current file, switches to a new one and writes the orphan closes there;
    /// returns the new generation.
    fn rotate(&self) -> Result<u64, JournalError> {
        let shared = &self.shared;
        let mut state = shared.state.lock();
        let written = state.written;
        state = self.wait_durable(state, written);
        let generation = state.generation + 1;
        let file = files::create_journal(&shared.dir, generation)?;
        state.file = Arc::new(file);
        state.generation = generation;
        state.written = files::JOURNAL_MAGIC.len() as u64;
        state.durable = state.written;
        let mut orphans: Vec<(u64, Vec<u8>)> = state.orphans.values().cloned().collect();
        orphans.sort_unstable_by_key(|(order, _)| *order);
        for (_, payload) in orphans {
            state.append(&payload, &shared.dir);
        }
        // On disk before the snapshot lets the older file go: they stand in for it.
        let written = state.written;
        drop(self.wait_durable(state, written));
        Ok(generation)
    }
}

impl<K> JournalSink<K> {
    /// The directory of the journal.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{JournalSink, SyncPolicy};
    ///
    /// let dir = std::env::temp_dir().join(format!("stockledger-dir-doc-{}", std::process::id()));
    /// let (journal, _) = JournalSink::<String>::open(&dir, SyncPolicy::No)?;
    /// assert_eq!(journal.dir(), dir);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), stockledger::JournalError>(())
    /// ```
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The sync policy.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{JournalSink, SyncPolicy};
    ///
    /// let dir = std::env::temp_dir().join(format!("stockledger-policy-doc-{}", std::process::id()));
    /// let (journal, _) = JournalSink::<String>::open(&dir, SyncPolicy::EverySec)?;
    /// assert_eq!(journal.policy(), SyncPolicy::EverySec);
    /// # drop(journal);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), stockledger::JournalError>(())
    /// ```
    pub fn policy(&self) -> SyncPolicy {
        self.shared.policy
    }

    /// How far the journal is known to be on disk: every record before this position
    /// survives a crash of the machine. Under `Always` it covers every record whose
    /// `on_event` has returned.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{JournalSink, PessimisticStore, StockStore, SyncPolicy};
    ///
    /// let dir = std::env::temp_dir().join(format!("stockledger-durable-doc-{}", std::process::id()));
    /// let (journal, _) = JournalSink::<String>::open(&dir, SyncPolicy::Always)?;
    /// let before = journal.durable();
    /// let store = PessimisticStore::builder().event_sink(journal.clone()).build();
    /// store.restock(&"tv".to_string(), 1).unwrap();
    /// assert!(journal.durable() > before);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), stockledger::JournalError>(())
    /// ```
    pub fn durable(&self) -> JournalPosition {
        let state = self.shared.state.lock();
        JournalPosition {
            generation: state.generation,
            offset: state.durable,
        }
    }

    /// Syncs every record written so far (what `EverySec` does each second).
    ///
    /// # Panics
    ///
    /// When a write or sync of the journal failed (see the type's docs, **Failure**).
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{JournalSink, PessimisticStore, StockStore, SyncPolicy};
    ///
    /// let dir = std::env::temp_dir().join(format!("stockledger-sync-doc-{}", std::process::id()));
    /// let (journal, _) = JournalSink::<String>::open(&dir, SyncPolicy::No)?;
    /// let store = PessimisticStore::builder().event_sink(journal.clone()).build();
    /// store.restock(&"tv".to_string(), 1).unwrap();
    /// let written = journal.durable();
    /// journal.sync();
    /// assert!(journal.durable() > written);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), stockledger::JournalError>(())
    /// ```
    pub fn sync(&self) {
        let state = self.shared.state.lock();
        let written = state.written;
        drop(self.wait_durable(state, written));
    }

    /// Sets the longest a record waits for the record of a hold's end that changed one
    /// of its SKUs before it (default [`ORDER_WAIT_MAX`]; see the type's docs, **Order**).
    /// `Duration::ZERO` never waits: records go to the file in the order they come, and a
    /// crash may leave a change without the end of a hold before it
    /// ([`JournalError::LostClose`] on recovery).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use stockledger::{JournalSink, SyncPolicy};
    ///
    /// let dir = std::env::temp_dir().join(format!("stockledger-wait-doc-{}", std::process::id()));
    /// let (journal, _) = JournalSink::<String>::open(&dir, SyncPolicy::Always)?;
    /// journal.set_order_wait_max(Duration::from_millis(50));
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), stockledger::JournalError>(())
    /// ```
    pub fn set_order_wait_max(&self, wait: Duration) {
        self.shared.state.lock().order_wait = wait;
    }

    /// Waits until the first `target` bytes of the current file are durable, syncing as
    /// the leader when no sync is in progress (group commit); returns the lock.
    fn wait_durable<'a>(
        &'a self,
        state: MutexGuard<'a, State<K>>,
        target: u64,
    ) -> MutexGuard<'a, State<K>> {
        wait_durable(&self.shared, state, target)
    }
}

/// [`JournalSink::wait_durable`], for the sink and its flusher.
fn wait_durable<'a, K>(
    shared: &'a Shared<K>,
    mut state: MutexGuard<'a, State<K>>,
    target: u64,
) -> MutexGuard<'a, State<K>> {
    let generation = state.generation;
    loop {
        if let Some(failure) = &state.failed {
            panic!("the journal in {} failed: {failure}", shared.dir.display());
        }
        if state.generation != generation || state.durable >= target {
            return state;
        }
        if state.syncing {
            state = shared.synced.wait_until(state, None).0;
            continue;
        }
        // The leader: one sync for everything written so far.
        state.syncing = true;
        let upto = state.written;
        let file = Arc::clone(&state.file);
        drop(state);
        let synced = file.sync_data();
        state = shared.state.lock();
        state.syncing = false;
        match synced {
            Ok(()) if state.generation == generation => state.durable = state.durable.max(upto),
            Ok(()) => {}
            Err(error) => state.failed = Some(format!("fdatasync: {error}")),
        }
        shared.synced.notify_all();
    }
}

/// The `EverySec` thread: syncs once a second until the sink is dropped.
fn flush_every_second<K>(shared: &Weak<Shared<K>>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut state = shared.state.lock();
        let deadline = Instant::now() + Duration::from_secs(1);
        while !state.closing && Instant::now() < deadline {
            state = shared.synced.wait_until(state, Some(deadline)).0;
        }
        if state.closing || state.failed.is_some() {
            return;
        }
        let written = state.written;
        drop(wait_durable(&shared, state, written));
    }
}

impl<K> State<K> {
    /// Writes one record of `payload` to the current file.
    fn append(&mut self, payload: &[u8], dir: &Path) {
        if let Some(failure) = &self.failed {
            panic!("the journal in {} failed: {failure}", dir.display());
        }
        let record = files::frame(self.next_sequence, files::unix_ms(), payload);
        match (&*self.file).write_all(&record) {
            Ok(()) => {
                self.next_sequence += 1;
                self.written += record.len() as u64;
            }
            Err(error) => {
                let failure = format!("write: {error}");
                self.failed = Some(failure.clone());
                panic!("the journal in {} failed: {failure}", dir.display());
            }
        }
    }
}

impl<K: Sku> State<K> {
    /// Notes the hold `id` that `event` opens (`opens`) or closes; the close of a hold whose
    /// opening record was not written yet is kept as an orphan, with its record `payload`.
    fn track(&mut self, id: u64, opens: bool, event: &StockEvent<K>, payload: &[u8]) {
        if opens {
            if self.orphans.remove(&id).is_some() {
                // Its id stays in `orphan_order` until skipped; drop the gone ones at times.
                if self.orphan_order.len() > 2 * self.orphans.len() + 64 {
                    let orphans = &self.orphans;
                    self.orphan_order.retain(|id| orphans.contains_key(id));
                }
            } else {
                for line in event.lines() {
                    let entry = (id, line.level.version, line.quantity);
                    self.open_on
                        .entry(line.sku.clone())
                        .or_default()
                        .push(entry);
                }
                let skus = event.lines().iter().map(|line| line.sku.clone()).collect();
                self.open.insert(id, skus);
            }
        } else if let Some(skus) = self.open.remove(&id) {
            for sku in skus {
                if let Some(holds) = self.open_on.get_mut(&sku) {
                    holds.retain(|(hold, _, _)| *hold != id);
                    if holds.is_empty() {
                        self.open_on.remove(&sku);
                    }
                }
            }
            if self.recent_ends.len() == RECENT_ENDS {
                self.recent_ends.pop_front();
            }
            self.recent_ends.push_back(id);
        } else if !self.recent_ends.contains(&id) {
            while self.orphans.len() >= ORPHAN_CLOSES_MAX {
                let Some(oldest) = self.orphan_order.pop_front() else {
                    break;
                };
                self.orphans.remove(&oldest);
            }
            let order = self.next_sequence;
            self.orphans.insert(id, (order, payload.to_vec()));
            self.orphan_order.push_back(id);
        }
    }

    /// Whether writing `event` now keeps the file consistent: on each of its SKUs, the
    /// holds open in the file (after `event`) that opened at or before the SKU's highest
    /// version in the file (after `event`) hold at most the units that version's counts
    /// reserve. More means the end (commit, release, expiry) of one of those holds changed
    /// the SKU before a change already written, or before `event`, and its record has not
    /// come yet: a crash then would leave a change without the end before it. `hold` is
    /// the hold `event` opens (`true`) or closes (`false`), if any.
    fn in_order(&self, event: &StockEvent<K>, hold: Option<(u64, bool)>) -> bool {
        // A hold whose close came first is never opened in the file.
        let opens = hold.filter(|(id, opens)| *opens && !self.orphans.contains_key(id));
        let closes = hold.filter(|(_, opens)| !*opens).map(|(id, _)| id);
        event.lines().iter().all(|line| {
            let (top, reserved) = match self.top.get(&line.sku) {
                Some(&(version, reserved)) if version >= line.level.version => (version, reserved),
                _ => (line.level.version, line.level.reserved),
            };
            let mut held: u64 = self.open_on.get(&line.sku).map_or(0, |holds| {
                holds
                    .iter()
                    .filter(|(id, at, _)| Some(*id) != closes && *at <= top)
                    .map(|(_, _, units)| units)
                    .sum()
            });
            if opens.is_some() && line.level.version <= top {
                held += line.quantity;
            }
            held <= reserved
        })
    }

    /// Notes the counts of `event`'s SKUs, written now: each SKU's highest version.
    fn note_top(&mut self, event: &StockEvent<K>) {
        for line in event.lines() {
            let level = (line.level.version, line.level.reserved);
            match self.top.get_mut(&line.sku) {
                Some(top) if top.0 >= level.0 => {}
                Some(top) => *top = level,
                None => {
                    self.top.insert(line.sku.clone(), level);
                }
            }
        }
    }
}

impl<K: Sku + Serialize + DeserializeOwned> EventSink<K> for JournalSink<K> {
    /// Appends `event` (unless it is a `LowStock`) and, under [`SyncPolicy::Always`],
    /// waits until it is on disk.
    ///
    /// # Panics
    ///
    /// When a write or sync of the journal failed (see the type's docs, **Failure**), and
    /// when the event does not encode as JSON (a SKU type whose `Serialize` fails, such as
    /// a map with keys that are not strings); the change itself is complete either way.
    fn on_event(&self, event: &StockEvent<K>) {
        let hold = match event {
            StockEvent::Reserved { id, .. } => Some((id.get(), true)),
            StockEvent::Committed { id, .. }
            | StockEvent::Released { id, .. }
            | StockEvent::Expired { id, .. } => Some((id.get(), false)),
            StockEvent::LowStock { .. } => return,
            _ => None,
        };
        // Encoded before the lock: only the write is serialized.
        let payload = serde_json::to_vec(event).expect("a stock event encodes as JSON");
        let shared = &self.shared;
        let mut state = shared.state.lock();
        // A change after a hold's end on one SKU waits for the end's record (**Order**).
        if !state.in_order(event, hold) {
            let deadline = Instant::now() + state.order_wait;
            while !state.in_order(event, hold) && Instant::now() < deadline {
                state = shared.synced.wait_until(state, Some(deadline)).0;
            }
        }
        if let Some((id, opens)) = hold {
            state.track(id, opens, event, &payload);
        }
        state.append(&payload, &shared.dir);
        state.note_top(event);
        // Wakes changes waiting for this record to come first.
        shared.synced.notify_all();
        if shared.policy == SyncPolicy::Always {
            let written = state.written;
            drop(self.wait_durable(state, written));
        }
    }
}

impl<K> Drop for JournalSink<K> {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state.lock();
            state.closing = true;
            self.shared.synced.notify_all();
            if self.shared.policy == SyncPolicy::EverySec && state.failed.is_none() {
                let _ = state.file.sync_data();
            }
        }
        let flusher = self.flusher.get_mut().map(Option::take);
        if let Ok(Some(flusher)) = flusher {
            let _ = flusher.join();
        }
    }
}

impl<K> fmt::Debug for JournalSink<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("JournalSink")
            .field("dir", &self.shared.dir)
            .field("policy", &self.shared.policy)
            .field("generation", &state.generation)
            .field("written", &state.written)
            .field("durable", &state.durable)
            .field("failed", &state.failed)
            .finish_non_exhaustive()
    }
}

/// Per SKU, the open holds of `snapshot` as [`State::open_on`] keeps them (opened at
/// version 0: before every record after the snapshot).
fn open_on<K: Sku>(snapshot: &Snapshot<K>) -> HashMap<K, Vec<(u64, u64, u64)>> {
    let mut open_on: HashMap<K, Vec<(u64, u64, u64)>> = HashMap::new();
    for hold in &snapshot.holds {
        for (sku, units) in &hold.lines {
            open_on
                .entry(sku.clone())
                .or_default()
                .push((hold.id.get(), 0, *units));
        }
    }
    open_on
}

/// Writes `snapshot` as the snapshot file of `generation` in `dir`, whole or not at all.
fn write_snapshot<K: Serialize>(
    dir: &Path,
    generation: u64,
    snapshot: &Snapshot<K>,
) -> Result<(), JournalError> {
    let path = files::path(dir, Kind::Snapshot, generation);
    let payload = serde_json::to_vec(snapshot).map_err(|error| {
        JournalError::corrupt(&path, 0, &format!("the snapshot does not encode: {error}"))
    })?;
    files::write_whole(dir, &path, &files::snapshot_file(&payload))
}
