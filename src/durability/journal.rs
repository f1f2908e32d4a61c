//! The journal: an [`EventSink`] that appends every event to a file (under `Always`,
//! answering only once it is on disk, with group commit; under `EverySec` and `No`, from a
//! buffer in memory written once a second); and its compaction by snapshots.

use std::cell::RefCell;
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
use smallvec::SmallVec;

use super::codec;
use super::error::JournalError;
use super::files::{self, Kind};
use super::recovery::{self, Recovery};
use super::snapshot::{Snapshot, SnapshotError};
use crate::lifecycle::event::{EventLine, EventSink, StockEvent};
use crate::store::Sku;
use crate::sync::{Condvar, Hasher, Mutex, MutexGuard};

/// When the journal writes an appended event to its file and makes it durable, named
/// after Redis's
/// [`appendfsync`](https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/)
/// settings.
///
/// They differ in what a crash may lose of the changes already acknowledged (returned to
/// their callers): under `Always` nothing, whether the process or the machine (power,
/// kernel) crashes; under `EverySec` about the last second of changes either way, as
/// with PostgreSQL's `synchronous_commit = off` (and unlike Redis's `everysec`, which
/// writes each change to the file before it replies); under `No` the same for a crash of
/// the process, and for a crash of the machine whatever the operating system had not
/// written back yet. Whatever is lost is a suffix: recovery gives back the state as of
/// some moment, never a change without the changes before it on its SKUs.
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
    /// Write and `fdatasync` before `on_event` returns: a change is acknowledged to its
    /// caller only once it is on disk. Concurrent callers share one write and one sync
    /// (group commit).
    #[default]
    Always,
    /// Buffer in memory; a thread of the journal writes the buffer to the file and
    /// `fdatasync`s it once a second. `on_event` makes no system call (it writes itself
    /// only when the buffer passes 1 MiB, without a sync), so it adds to a change
    /// only its encoding and an append under a lock; in exchange a crash of the process or of the machine
    /// loses the changes of about the last second (up to the last tick, plus the time
    /// that tick's write and sync take). [`JournalSink::sync`], compaction and dropping
    /// the sink write and sync the buffer too.
    EverySec,
    /// Buffer in memory as `EverySec` does, written to the file once a second (and at 1
    /// MiB, [`JournalSink::sync`], compaction and drop) but never synced by the thread:
    /// the operating system writes the file back when it likes (on Linux, within about 30
    /// s). A crash of the process loses about the last second; of the machine, more.
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

thread_local! {
    /// A caller's encoding buffer, kept between its events: no allocation an event.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A caller keeps an encoding buffer of at most this many bytes between its events.
const SCRATCH_BYTES_MAX: usize = 64 << 10;

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
/// **Records.** Each event but `LowStock` (which recovery does not need) is encoded in a
/// compact binary form (a few bytes a field; the SKU as JSON) and appended to a buffer in
/// memory. A write takes the whole buffer to the file as one record: its length, a CRC-32
/// checksum, the sequence number of its first event, the wall-clock time and the events
/// (layout in the module `files`). A record is whole on disk or dropped whole by recovery.
///
/// **When the buffer is written.** Under `Always`, before `on_event` returns (see **Group
/// commit**). Under `EverySec` and `No`, once a second by the journal's thread, and
/// sooner when the buffer passes 1 MiB (by the caller whose event passed it), by
/// [`sync`](Self::sync), by [`compact`](Self::compact) and when the sink is dropped: so
/// under those policies a crash of the *process*, not only of the machine, loses the
/// changes of about the last second (see [`SyncPolicy`]), and at most about 1 MiB of
/// events waits in memory.
///
/// **Group commit.** Under `Always`, a caller whose event is not yet durable either
/// becomes the leader, which writes every event appended so far as one record and runs
/// one `fdatasync` (`File::sync_data`) for it, or waits for the leader in progress; so
/// concurrent callers share one write and one sync, as in PostgreSQL's WAL flush and
/// MySQL's binary-log group commit. A machine that syncs 64 bytes in 3 ms thus
/// acknowledges far more than 333 changes a second.
///
/// **Compaction.** [`compact`](Self::compact) starts a new journal file, takes a snapshot of
/// the store, writes it and removes the files before it, so a journal never grows past
/// what happened since the last snapshot.
///
/// **Order.** A store delivers events after its locks are released, so two threads'
/// events may reach the journal in the other order than their changes. Recovery does not
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
/// PostgreSQL does since 2018, the journal then refuses to go on: the call that wrote
/// (when it was a caller's) and every later one panic (after a failed `fdatasync` the
/// kernel may have dropped the dirty pages, so retrying could acknowledge a change that
/// is not on disk). A failure of the once-a-second thread's write stops that thread and
/// surfaces at the next `on_event`.
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
    /// The thread that writes the buffer once a second under `EverySec` and `No`.
    flusher: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Held by a compaction: one at a time.
    compaction: Mutex<()>,
}

/// What the sink's callers and its flusher share.
///
/// Lock order: [`writer`](Self::writer), then [`state`](Self::state); never the other
/// way round.
struct Shared<K> {
    dir: PathBuf,
    policy: SyncPolicy,
    /// Held while a record is written (one writer at a time, so records reach the file in
    /// the order their buffers were taken; not while it is synced): the spare buffer,
    /// which the next writer swaps in for the one it takes.
    writer: Mutex<Vec<u8>>,
    /// Everything below; held while an event is appended to the buffer (not while the
    /// buffer is written or synced).
    state: Mutex<State<K>>,
    /// Signalled after an append when a record waits for its turn (**Order**).
    appended: Condvar,
    /// Signalled when a sync ends.
    synced: Condvar,
    /// Signalled when the sink closes: the flusher stops.
    closed: Condvar,
}

/// The journal's state, guarded by [`Shared::state`].
struct State<K> {
    /// The journal file written to.
    file: Arc<File>,
    /// Its generation.
    generation: u64,
    /// The events appended and not yet written: room for a record's frame header
    /// ([`files::RECORD_HEADER_BYTES`]), then the events, encoded.
    block: Vec<u8>,
    /// The sequence number of the first event in `block`.
    block_first: u64,
    /// The sequence number of the next event appended.
    next_sequence: u64,
    /// Every event numbered below this is written to the file.
    written_sequence: u64,
    /// Every event numbered below this is on disk.
    durable_sequence: u64,
    /// Bytes written to the file (its length).
    written: u64,
    /// Bytes of it known to be on disk.
    durable: u64,
    /// Whether a leader is syncing the file now.
    syncing: bool,
    /// Why the journal stopped, once a write or sync failed.
    failed: Option<String>,
    /// Per SKU, what **Order** needs to know of the file (after the events in `block`).
    skus: HashMap<K, SkuOrder, Hasher>,
    /// Holds whose opening event was appended and whose closing one was not: their SKUs.
    open: HashMap<u64, SmallVec<[K; 2]>, Hasher>,
    /// Closing events of holds whose opening event was not appended yet, with their
    /// sequence numbers (to forget the oldest first and write them again in order).
    orphans: HashMap<u64, (u64, Vec<u8>), Hasher>,
    /// The ids of `orphans`, oldest first (an id already gone is skipped).
    orphan_order: VecDeque<u64>,
    /// The last [`RECENT_ENDS`] holds whose end was appended, oldest first: a second event
    /// of one end (a partial commit reports its released part, then its committed part)
    /// is not an orphan.
    recent_ends: VecDeque<u64>,
    /// Callers waiting for their turn (**Order**): an append wakes them only when there
    /// are any.
    order_waiters: usize,
    /// Set when the sink is dropped: the flusher stops.
    closing: bool,
    /// The longest a record waits for an earlier hold end's record ([`ORDER_WAIT_MAX`]
    /// unless set otherwise).
    order_wait: Duration,
}

/// What the journal keeps of one SKU for **Order**.
#[derive(Debug, Default)]
struct SkuOrder {
    /// The SKU's highest version appended and the units reserved at it.
    top: (u64, u64),
    /// The holds open on it (appended, not closed): `(hold id, the SKU's version at the
    /// open, units)` (version 0 for a hold recovered from a snapshot).
    holds: Vec<(u64, u64, u64)>,
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
    /// in the type's docs (**Order**); [`JournalError::Io`] also when the thread of
    /// `EverySec` and `No` cannot be started.
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
        let next_sequence = recovery.last_sequence.map_or(1, |last| last + 1);
        let state = State {
            file: Arc::new(file),
            generation,
            block: empty_block(),
            block_first: next_sequence,
            next_sequence,
            written_sequence: next_sequence,
            durable_sequence: next_sequence,
            written: files::JOURNAL_MAGIC.len() as u64,
            durable: files::JOURNAL_MAGIC.len() as u64,
            syncing: false,
            failed: None,
            skus: sku_orders(&recovery.snapshot),
            open: recovery
                .snapshot
                .holds
                .iter()
                .map(|hold| {
                    let skus = hold.lines.iter().map(|(sku, _)| sku.clone()).collect();
                    (hold.id.get(), skus)
                })
                .collect(),
            orphans: HashMap::default(),
            orphan_order: VecDeque::new(),
            recent_ends: VecDeque::new(),
            order_waiters: 0,
            closing: false,
            order_wait: ORDER_WAIT_MAX,
        };
        let shared = Arc::new(Shared {
            dir,
            policy,
            writer: Mutex::new(empty_block()),
            state: Mutex::new(state),
            appended: Condvar::new(),
            synced: Condvar::new(),
            closed: Condvar::new(),
        });
        let flusher = if policy == SyncPolicy::Always {
            None
        } else {
            let weak = Arc::downgrade(&shared);
            let spawned = std::thread::Builder::new()
                .name("stockledger-journal".into())
                .spawn(move || flush_every_second(&weak));
            Some(spawned.map_err(|source| JournalError::io(&shared.dir, source))?)
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
    /// # Panics
    ///
    /// When a write or sync of the journal failed (see the type's docs, **Failure**).
    ///
    /// # Blocking
    ///
    /// Writes the buffered events and syncs the old file and the new ones, and writes the
    /// whole snapshot; appends wait only while the files are switched.
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

    /// Writes and syncs the current file, switches to a new one and writes the orphan
    /// closes there (synced); returns the new generation.
    fn rotate(&self) -> Result<u64, JournalError> {
        let shared = &self.shared;
        let failed = |failure: String| -> ! {
            panic!("the journal in {} failed: {failure}", shared.dir.display())
        };
        // The writer lock, held throughout: nothing reaches the old file after its sync.
        let mut spare = shared.writer.lock();
        let everything = shared.state.lock().next_sequence;
        write_holding(shared, &mut spare, everything).unwrap_or_else(|why| failed(why));
        sync_written(shared, everything).unwrap_or_else(|why| failed(why));
        let mut state = shared.state.lock();
        let generation = state.generation + 1;
        let file = files::create_journal(&shared.dir, generation)?;
        state.file = Arc::new(file);
        state.generation = generation;
        state.written = files::JOURNAL_MAGIC.len() as u64;
        state.durable = state.written;
        // Events appended since the write above go to the new file, before the orphans.
        let mut orphans: Vec<(u64, Vec<u8>)> = state.orphans.values().cloned().collect();
        orphans.sort_unstable_by_key(|(order, _)| *order);
        for (_, payload) in orphans {
            state.append(&payload);
        }
        // On disk before the snapshot lets the older file go: they stand in for it.
        let everything = state.next_sequence;
        drop(state);
        write_holding(shared, &mut spare, everything).unwrap_or_else(|why| failed(why));
        sync_written(shared, everything).unwrap_or_else(|why| failed(why));
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
    /// survives a crash of the machine. Under `Always` it covers every event whose
    /// `on_event` has returned; under `EverySec` and `No`, the events up to the last
    /// sync (the once-a-second thread's under `EverySec`, or [`sync`](Self::sync)).
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

    /// Writes every event appended so far (the buffer of `EverySec` and `No`) to the file
    /// and syncs it (what `EverySec` does each second): when it returns, every change
    /// whose `on_event` returned before it was called survives a crash of the machine.
    ///
    /// # Panics
    ///
    /// When a write or sync of the journal failed (see the type's docs, **Failure**).
    ///
    /// # Blocking
    ///
    /// For one `write` and one `fdatasync` (`File::sync_data`), after any in progress.
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
        let shared = &self.shared;
        let everything = shared.state.lock().next_sequence;
        flush(shared, everything, true).unwrap_or_else(|failure| {
            panic!("the journal in {} failed: {failure}", shared.dir.display())
        });
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
}

/// A buffer with room for a record's frame header and no event yet.
fn empty_block() -> Vec<u8> {
    vec![0; files::RECORD_HEADER_BYTES]
}

/// Writes every event numbered below `upto` to the file (with the events appended since,
/// as one record) and, with `sync`, makes it durable, unless that is done already.
///
/// # Errors
///
/// Why the journal failed: this write or sync, or an earlier one.
fn flush<K>(shared: &Shared<K>, upto: u64, sync: bool) -> Result<(), String> {
    let written = {
        let state = shared.state.lock();
        if let Some(failure) = &state.failed {
            return Err(failure.clone());
        }
        state.written_sequence >= upto
    };
    if !written {
        let mut spare = shared.writer.lock();
        write_holding(shared, &mut spare, upto)?;
    }
    if sync {
        sync_written(shared, upto)?;
    }
    Ok(())
}

/// Writes the buffer as one record, unless every event numbered below `upto` is written
/// already (by the writer before, which took it along); for a caller that holds the
/// writer lock, whose guarded spare buffer is `spare`. Appends go on meanwhile.
///
/// # Errors
///
/// Why the journal failed: this write, or an earlier write or sync.
fn write_holding<K>(shared: &Shared<K>, spare: &mut Vec<u8>, upto: u64) -> Result<(), String> {
    let mut state = shared.state.lock();
    if let Some(failure) = &state.failed {
        return Err(failure.clone());
    }
    if state.written_sequence >= upto {
        return Ok(());
    }
    let mut block = std::mem::replace(&mut state.block, std::mem::take(spare));
    let first = state.block_first;
    let end = state.next_sequence;
    state.block_first = end;
    let file = Arc::clone(&state.file);
    drop(state);
    let mut outcome = Ok(0);
    if block.len() > files::RECORD_HEADER_BYTES {
        files::seal(&mut block, first, files::unix_ms());
        outcome = (&*file)
            .write_all(&block)
            .map(|()| block.len() as u64)
            .map_err(|error| format!("write: {error}"));
    }
    block.truncate(files::RECORD_HEADER_BYTES);
    *spare = block;
    let mut state = shared.state.lock();
    match outcome {
        Ok(bytes) => {
            state.written += bytes;
            state.written_sequence = end;
            Ok(())
        }
        Err(failure) => {
            state.failed = Some(failure.clone());
            Err(failure)
        }
    }
}

/// Waits until every event numbered below `upto`, written already, is on disk, syncing as
/// the leader when no sync is in progress (group commit: one `fdatasync` for everything
/// written so far, while later events are appended and written).
///
/// # Errors
///
/// Why the journal failed: this sync, or an earlier write or sync.
fn sync_written<K>(shared: &Shared<K>, upto: u64) -> Result<(), String> {
    let mut state = shared.state.lock();
    debug_assert!(state.written_sequence >= upto, "synced before written");
    loop {
        if let Some(failure) = &state.failed {
            return Err(failure.clone());
        }
        if state.durable_sequence >= upto {
            return Ok(());
        }
        if state.syncing {
            state = shared.synced.wait_until(state, None).0;
            continue;
        }
        // The leader: one sync for everything written so far.
        state.syncing = true;
        let (sequence, bytes) = (state.written_sequence, state.written);
        let (generation, file) = (state.generation, Arc::clone(&state.file));
        drop(state);
        let synced = file.sync_data();
        state = shared.state.lock();
        state.syncing = false;
        match synced {
            Ok(()) => {
                // A compaction syncs the old file before it switches to a new one.
                state.durable_sequence = state.durable_sequence.max(sequence);
                if state.generation == generation {
                    state.durable = state.durable.max(bytes);
                }
            }
            Err(error) => state.failed = Some(format!("fdatasync: {error}")),
        }
        shared.synced.notify_all();
    }
}

/// The thread of `EverySec` and `No`: writes the buffer once a second (and syncs it under
/// `EverySec`) until the sink is dropped or the journal fails.
fn flush_every_second<K>(shared: &Weak<Shared<K>>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut state = shared.state.lock();
        let deadline = Instant::now() + Duration::from_secs(1);
        while !state.closing && Instant::now() < deadline {
            state = shared.closed.wait_until(state, Some(deadline)).0;
        }
        if state.closing || state.failed.is_some() {
            return;
        }
        let everything = state.next_sequence;
        drop(state);
        if flush(&shared, everything, shared.policy == SyncPolicy::EverySec).is_err() {
            return;
        }
    }
}

impl<K> State<K> {
    /// Appends one encoded event to the buffer; returns its sequence number.
    fn append(&mut self, event: &[u8]) -> u64 {
        self.block.extend_from_slice(event);
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        sequence
    }

    /// Bytes of events in the buffer.
    fn buffered(&self) -> usize {
        self.block.len() - files::RECORD_HEADER_BYTES
    }
}

impl<K: Sku> State<K> {
    /// Notes the hold `id` that `event` opens (`opens`) or closes; the close of a hold whose
    /// opening event was not appended yet is kept as an orphan, with its encoding
    /// `payload`.
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
                    match self.skus.get_mut(&line.sku) {
                        Some(order) => order.holds.push(entry),
                        None => {
                            let order = SkuOrder {
                                top: (0, 0),
                                holds: vec![entry],
                            };
                            self.skus.insert(line.sku.clone(), order);
                        }
                    }
                }
                let skus = event.lines().iter().map(|line| line.sku.clone()).collect();
                self.open.insert(id, skus);
            }
        } else if let Some(skus) = self.open.remove(&id) {
            for sku in &skus {
                if let Some(order) = self.skus.get_mut(sku) {
                    order.holds.retain(|(hold, _, _)| *hold != id);
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

    /// Whether appending `event` now keeps the file consistent: on each of its SKUs, the
    /// holds open in the file (after `event`) that opened at or before the SKU's highest
    /// version in the file (after `event`) hold at most the units that version's counts
    /// reserve. More means the end (commit, release, expiry) of one of those holds changed
    /// the SKU before a change already appended, or before `event`, and its event has not
    /// come yet: a crash then would leave a change without the end before it. `hold` is
    /// the hold `event` opens (`true`) or closes (`false`), if any.
    fn in_order(&self, event: &StockEvent<K>, hold: Option<(u64, bool)>) -> bool {
        // A hold whose close came first is never opened in the file.
        let opens = hold.filter(|(id, opens)| *opens && !self.orphans.contains_key(id));
        let closes = hold.filter(|(_, opens)| !*opens).map(|(id, _)| id);
        event
            .lines()
            .iter()
            .all(|line| line_in_order(self.skus.get(&line.sku), line, opens.is_some(), closes))
    }

    /// [`in_order`](Self::in_order) then [`note_top`](Self::note_top) for an event of one
    /// line on a SKU the journal knows, with one lookup (the common case); `false`, with
    /// nothing changed, for any other event or when it must wait.
    fn admit_one_line(&mut self, event: &StockEvent<K>, hold: Option<(u64, bool)>) -> bool {
        let [line] = event.lines() else {
            return false;
        };
        let opens = hold.filter(|(id, opens)| *opens && !self.orphans.contains_key(id));
        let closes = hold.filter(|(_, opens)| !*opens).map(|(id, _)| id);
        let Some(order) = self.skus.get_mut(&line.sku) else {
            return false;
        };
        if !line_in_order(Some(order), line, opens.is_some(), closes) {
            return false;
        }
        if order.top.0 < line.level.version {
            order.top = (line.level.version, line.level.reserved);
        }
        true
    }

    /// Notes the counts of `event`'s SKUs, appended now: each SKU's highest version.
    fn note_top(&mut self, event: &StockEvent<K>) {
        for line in event.lines() {
            let level = (line.level.version, line.level.reserved);
            match self.skus.get_mut(&line.sku) {
                Some(order) if order.top.0 >= level.0 => {}
                Some(order) => order.top = level,
                None => {
                    let order = SkuOrder {
                        top: level,
                        holds: Vec::new(),
                    };
                    self.skus.insert(line.sku.clone(), order);
                }
            }
        }
    }
}

impl<K: Sku + Serialize + DeserializeOwned> EventSink<K> for JournalSink<K> {
    /// Appends `event` (unless it is a `LowStock`) to the journal's buffer; under
    /// [`SyncPolicy::Always`], writes and syncs it (or waits for the writer that does)
    /// before it returns, under `EverySec` and `No` only when the buffer passes 1 MiB
    /// (see the type's docs, **When the buffer is written**).
    ///
    /// # Panics
    ///
    /// When a write or sync of the journal failed (see the type's docs, **Failure**), and
    /// when the event does not encode (a SKU type whose `Serialize` fails in JSON, such as
    /// a map with keys that are not strings, or an event of more than 64 MiB); the change
    /// itself is complete either way.
    fn on_event(&self, event: &StockEvent<K>) {
        let hold = match event {
            StockEvent::Reserved { id, .. } => Some((id.get(), true)),
            StockEvent::Committed { id, .. }
            | StockEvent::Released { id, .. }
            | StockEvent::Expired { id, .. } => Some((id.get(), false)),
            StockEvent::LowStock { .. } => return,
            _ => None,
        };
        // Encoded before the lock: only the append is serialized.
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut payload) => {
                payload.clear();
                self.record(event, hold, &mut payload);
                if payload.capacity() > SCRATCH_BYTES_MAX {
                    *payload = Vec::new();
                }
            }
            Err(_) => self.record(event, hold, &mut Vec::new()),
        });
    }
}

impl<K: Sku + Serialize + DeserializeOwned> JournalSink<K> {
    /// [`EventSink::on_event`] of an event that is journaled, with `payload` to encode it
    /// into; `hold` is the hold it opens (`true`) or closes (`false`), if any.
    fn record(&self, event: &StockEvent<K>, hold: Option<(u64, bool)>, payload: &mut Vec<u8>) {
        let shared = &self.shared;
        codec::encode(event, payload).unwrap_or_else(|why| panic!("{why}"));
        assert!(
            payload.len() <= files::RECORD_BYTES_MAX,
            "an event of {} bytes is past the journal's record limit",
            payload.len()
        );
        let mut state = shared.state.lock();
        if let Some(failure) = &state.failed {
            panic!("the journal in {} failed: {failure}", shared.dir.display());
        }
        let fits = state.buffered() + payload.len() <= files::RECORD_BYTES_MAX;
        if !(fits && state.admit_one_line(event, hold)) {
            state = self.admit(state, event, hold, payload.len());
        }
        if let Some((id, opens)) = hold {
            state.track(id, opens, event, payload);
        }
        let sequence = state.append(payload);
        if state.order_waiters > 0 {
            // Wakes changes waiting for this event to come first.
            shared.appended.notify_all();
        }
        let full = state.buffered() >= files::BLOCK_FLUSH_BYTES;
        drop(state);
        let sync = shared.policy == SyncPolicy::Always;
        if sync || full {
            flush(shared, sequence + 1, sync).unwrap_or_else(|failure| {
                panic!("the journal in {} failed: {failure}", shared.dir.display())
            });
        }
    }

    /// Waits until `event` may be appended (**Order**, at most the order wait) and its
    /// `bytes` fit in the buffer's record (writing the buffer first when not), then
    /// notes its SKUs' counts; returns the lock.
    fn admit<'a>(
        &'a self,
        mut state: MutexGuard<'a, State<K>>,
        event: &StockEvent<K>,
        hold: Option<(u64, bool)>,
        bytes: usize,
    ) -> MutexGuard<'a, State<K>> {
        let shared = &self.shared;
        loop {
            if let Some(failure) = &state.failed {
                panic!("the journal in {} failed: {failure}", shared.dir.display());
            }
            // A change after a hold's end on one SKU waits for the end's event (**Order**).
            if !state.in_order(event, hold) {
                let deadline = Instant::now() + state.order_wait;
                state.order_waiters += 1;
                while !state.in_order(event, hold) && Instant::now() < deadline {
                    state = shared.appended.wait_until(state, Some(deadline)).0;
                }
                state.order_waiters -= 1;
            }
            if state.buffered() + bytes <= files::RECORD_BYTES_MAX {
                state.note_top(event);
                return state;
            }
            // The record would pass its limit: write the buffer first.
            let everything = state.next_sequence;
            drop(state);
            flush(shared, everything, false).unwrap_or_else(|failure| {
                panic!("the journal in {} failed: {failure}", shared.dir.display())
            });
            state = shared.state.lock();
        }
    }
}

impl<K> Drop for JournalSink<K> {
    /// Stops the once-a-second thread, then writes the buffered events and (under
    /// `Always` and `EverySec`) syncs them; a failure is ignored here (the journal's
    /// earlier calls panicked on it already, or recovery sees the file as it is).
    fn drop(&mut self) {
        let shared = &self.shared;
        let everything = {
            let mut state = shared.state.lock();
            state.closing = true;
            shared.closed.notify_all();
            state.next_sequence
        };
        let flusher = self.flusher.get_mut().map(Option::take);
        if let Ok(Some(flusher)) = flusher {
            let _ = flusher.join();
        }
        let _ = flush(shared, everything, shared.policy != SyncPolicy::No);
    }
}

impl<K> fmt::Debug for JournalSink<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("JournalSink")
            .field("dir", &self.shared.dir)
            .field("policy", &self.shared.policy)
            .field("generation", &state.generation)
            .field("buffered", &state.buffered())
            .field("written", &state.written)
            .field("durable", &state.durable)
            .field("failed", &state.failed)
            .finish_non_exhaustive()
    }
}

/// Whether `line`'s SKU, whose [`SkuOrder`] is `order`, stays consistent in the file
/// with `line` appended (see [`State::in_order`]): `opens` when its event opens a hold
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

/// Per SKU of `snapshot`, its [`SkuOrder`]: its counts, and its open holds (opened at
/// version 0: before every event after the snapshot).
fn sku_orders<K: Sku>(snapshot: &Snapshot<K>) -> HashMap<K, SkuOrder, Hasher> {
    let mut orders: HashMap<K, SkuOrder, Hasher> = snapshot
        .skus
        .iter()
        .map(|sku| {
            let order = SkuOrder {
                top: (sku.version, sku.reserved),
                holds: Vec::new(),
            };
            (sku.sku.clone(), order)
        })
        .collect();
    for hold in &snapshot.holds {
        for (sku, units) in &hold.lines {
            let entry = (hold.id.get(), 0, *units);
            orders.entry(sku.clone()).or_default().holds.push(entry);
        }
    }
    orders
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
