//! The journal: an [`EventSink`] that appends every event to a file (under `Always`,
//! answering only once it is on disk, with group commit; under `EverySec` and `No`, from a
//! buffer in memory written once a second); and its compaction by snapshots.

use std::cell::RefCell;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec;
use super::error::JournalError;
use super::files::{self, Kind};
use super::order::{Locked, Shards, SHARDS};
use super::recovery::{self, Recovery};
use super::snapshot::{Snapshot, SnapshotError};
use crate::lifecycle::event::{EventSink, StockEvent};
use crate::store::Sku;
use crate::sync::{self, AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering};

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
    /// `fdatasync`s it once a second. `on_event` makes no system call (but when the
    /// buffer is full, see [`JournalSink`]: then it writes, without a sync), so it adds
    /// to a change only its encoding and an append under a short lock (one of 16, picked
    /// by the SKU). In exchange a crash of the *process* or of the machine loses the
    /// changes acknowledged since the thread's last write (or sync, for the machine):
    /// about the last second, plus the time that write and sync take.
    /// [`JournalSink::sync`], compaction and dropping the sink write and sync the buffer
    /// too.
    EverySec,
    /// Buffer in memory as `EverySec` does, written to the file once a second (and when
    /// full, by [`JournalSink::sync`], compaction and drop) but never synced by the
    /// thread: the operating system writes the file back when it likes (on Linux, within
    /// about 30 s). A crash of the process loses about the last second; of the machine,
    /// more.
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

/// The largest encoded event the journal takes (about 700,000 lines): with every shard's
/// events before a write, a record stays within [`files::RECORD_BYTES_MAX`].
pub(crate) const EVENT_BYTES_MAX: usize = 15 << 20;

/// A caller keeps an encoding buffer of at most this many bytes between its events.
const SCRATCH_BYTES_MAX: usize = 64 << 10;

/// The longest an event waits for the event of a hold's end that changed one of its SKUs
/// before it (see [`JournalSink`], **Order**); past it, the event is appended all the
/// same. Set another per journal with
/// [`set_order_wait_max`](JournalSink::set_order_wait_max).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// assert_eq!(stockledger::ORDER_WAIT_MAX, Duration::from_millis(500));
/// ```
pub const ORDER_WAIT_MAX: Duration = Duration::from_millis(500);

/// Holds whose close the journal saw before their open, kept at most this many (oldest
/// forgotten first); see [`JournalSink::compact`].
///
/// # Examples
///
/// ```
/// assert_eq!(stockledger::ORPHAN_CLOSES_MAX, 100_000);
/// ```
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
/// sooner when the events appended under one of the buffer's 16 locks pass 64 KiB (by
/// the caller whose event passed it), by [`sync`](Self::sync), by
/// [`compact`](Self::compact) and when the sink is dropped: so under those policies a
/// crash of the *process*, not only of the machine, loses the changes of about the last
/// second (see [`SyncPolicy`]), and about 1 MiB of events at most waits in memory.
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
/// highest version appended reserves, and an event after which the holds open in the
/// journal (opened at or before that version) would hold more waits, with no store lock
/// held, until the missing end is appended: a change whose counts already left a hold's
/// units, or a hold's opening event that comes after such a change. A write takes every
/// event appended before it at once (one record, whole or dropped), so the file never
/// holds the change without the end. It
/// waits at most [`set_order_wait_max`](Self::set_order_wait_max) ([`ORDER_WAIT_MAX`] by
/// default, reached only when the end's caller is stalled, or when two multi-line
/// resolutions of the optimistic or adaptive store cross); an event is then appended all
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
/// Lock order: [`writer`](Self::writer), then the shards (see the module `order`), then
/// [`meta`](Self::meta); [`waiting`](Self::waiting) before the shards.
struct Shared<K> {
    dir: PathBuf,
    policy: SyncPolicy,
    /// The **Order** bookkeeping and the appended events not yet written, in shards.
    shards: Shards<K>,
    /// Writes begun (each takes every SKU shard's events): an event appended while it is
    /// `e` is written by the write that makes it `e + 1`. Changed only with every SKU
    /// shard locked.
    epoch: AtomicU64,
    /// Set when a write or sync failed (the reason is in [`Meta::failed`]).
    failed: AtomicBool,
    /// Callers waiting for their turn (**Order**): an append wakes them only when there
    /// are any.
    order_waiters: AtomicUsize,
    /// The longest a record waits for an earlier hold end's record, in nanoseconds
    /// ([`ORDER_WAIT_MAX`] unless set otherwise).
    order_wait_ns: AtomicU64,
    /// Held by a caller waiting for its turn while it checks, and by an append that wakes
    /// such callers (so no wake-up is lost).
    waiting: Mutex<()>,
    /// Signalled after an append when a record waits for its turn (**Order**).
    appended: Condvar,
    /// Held while a record is written (one writer at a time, so records reach the file in
    /// the order their events were taken; not while it is synced).
    writer: Mutex<Writer>,
    /// The file and what of it is written and synced.
    meta: Mutex<Meta>,
    /// Signalled when a sync ends.
    synced: Condvar,
    /// Signalled when the sink closes: the flusher stops.
    closed: Condvar,
}

/// The writer's buffers, guarded by [`Shared::writer`].
struct Writer {
    /// Per SKU shard, the empty buffer swapped in for the one a write takes.
    spares: Vec<Vec<u8>>,
    /// The record being written: frame header, then every shard's events.
    record: Vec<u8>,
}

/// The journal file and its progress, guarded by [`Shared::meta`].
struct Meta {
    /// The journal file written to.
    file: Arc<File>,
    /// Its generation.
    generation: u64,
    /// The sequence number of the next event written.
    next_sequence: u64,
    /// Every event of an epoch below this is written to the file.
    written_epoch: u64,
    /// Every event of an epoch below this is on disk.
    durable_epoch: u64,
    /// Bytes written to the file (its length).
    written: u64,
    /// Bytes of it known to be on disk.
    durable: u64,
    /// Whether a leader is syncing the file now.
    syncing: bool,
    /// Why the journal stopped, once a write or sync failed.
    failed: Option<String>,
    /// Set when the sink is dropped: the flusher stops.
    closing: bool,
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
        let meta = Meta {
            file: Arc::new(file),
            generation,
            next_sequence: recovery.last_sequence.map_or(1, |last| last + 1),
            written_epoch: 0,
            durable_epoch: 0,
            written: files::JOURNAL_MAGIC.len() as u64,
            durable: files::JOURNAL_MAGIC.len() as u64,
            syncing: false,
            failed: None,
            closing: false,
        };
        let shared = Arc::new(Shared {
            dir,
            policy,
            shards: Shards::new(&recovery.snapshot, ORPHAN_CLOSES_MAX),
            epoch: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            order_waiters: AtomicUsize::new(0),
            order_wait_ns: AtomicU64::new(nanos(ORDER_WAIT_MAX)),
            waiting: Mutex::new(()),
            appended: Condvar::new(),
            writer: Mutex::new(Writer {
                spares: vec![Vec::new(); SHARDS],
                record: Vec::new(),
            }),
            meta: Mutex::new(meta),
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
    /// whole snapshot; appends go on meanwhile (those of holds wait while the orphan
    /// closes are copied).
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
        let mut writer = shared.writer.lock();
        let everything = shared.everything();
        write_holding(shared, &mut writer, everything).unwrap_or_else(|why| failed(why));
        sync_written(shared, everything).unwrap_or_else(|why| failed(why));
        let generation = shared.meta.lock().generation + 1;
        let file = files::create_journal(&shared.dir, generation)?;
        {
            let mut meta = shared.meta.lock();
            meta.file = Arc::new(file);
            meta.generation = generation;
            meta.written = files::JOURNAL_MAGIC.len() as u64;
            meta.durable = meta.written;
        }
        // Events appended since the write above go to the new file, and the orphans.
        let holds: Vec<_> = shared
            .shards
            .holds
            .iter()
            .map(|shard| shard.0.lock())
            .collect();
        let mut orphans: Vec<&(u64, Vec<u8>)> =
            holds.iter().flat_map(|shard| shard.orphans()).collect();
        orphans.sort_unstable_by_key(|(order, _)| *order);
        {
            let mut first = shared.shards.skus[0].0.lock();
            for (_, payload) in orphans {
                first.block.extend_from_slice(payload);
                first.events += 1;
            }
        }
        drop(holds);
        // On disk before the snapshot lets the older file go: they stand in for it.
        let everything = shared.everything();
        write_holding(shared, &mut writer, everything).unwrap_or_else(|why| failed(why));
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
        let meta = self.shared.meta.lock();
        JournalPosition {
            generation: meta.generation,
            offset: meta.durable,
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
        flush(shared, shared.everything(), true).unwrap_or_else(|failure| {
            panic!("the journal in {} failed: {failure}", shared.dir.display())
        });
    }

    /// Sets the longest an event waits for the event of a hold's end that changed one of
    /// its SKUs before it (default [`ORDER_WAIT_MAX`]; see the type's docs, **Order**).
    /// `Duration::ZERO` never waits: events are appended in the order they come, and a
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
        let nanos = nanos(wait);
        self.shared.order_wait_ns.store(nanos, Ordering::Relaxed);
    }
}

/// Whole nanoseconds of `duration`, at most `u64::MAX` (585 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl<K> Shared<K> {
    /// The epoch bound that covers every event appended before now: what `sync`, a
    /// compaction, the flusher and `Drop` write.
    fn everything(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst) + 1
    }

    /// Records `failure` as the journal's (the first one stays) and returns it.
    fn fail(&self, meta: &mut Meta, failure: String) -> String {
        self.failed.store(true, Ordering::SeqCst);
        meta.failed.get_or_insert(failure).clone()
    }

    /// Panics with the journal's failure.
    fn panic_failed(&self) -> ! {
        let failure = self.meta.lock().failed.clone().unwrap_or_default();
        panic!("the journal in {} failed: {failure}", self.dir.display())
    }
}

/// Writes every event of an epoch below `upto` to the file (with the events appended
/// since, as one record) and, with `sync`, makes it durable, unless that is done already.
///
/// # Errors
///
/// Why the journal failed: this write or sync, or an earlier one.
fn flush<K>(shared: &Shared<K>, upto: u64, sync: bool) -> Result<(), String> {
    let written = {
        let meta = shared.meta.lock();
        if let Some(failure) = &meta.failed {
            return Err(failure.clone());
        }
        meta.written_epoch >= upto
    };
    if !written {
        let mut writer = shared.writer.lock();
        write_holding(shared, &mut writer, upto)?;
    }
    if sync {
        sync_written(shared, upto)?;
    }
    Ok(())
}

/// Takes every SKU shard's events (all shards locked at once, so the record holds a
/// consistent cut: every event whose bookkeeping another event's admission saw) and
/// writes them as one record, unless every event of an epoch below `upto` is written
/// already (by the writer before, which took it along); for a caller that holds the
/// writer lock. Appends go on while the record is written.
///
/// # Errors
///
/// Why the journal failed: this write, or an earlier write or sync.
fn write_holding<K>(shared: &Shared<K>, writer: &mut Writer, upto: u64) -> Result<(), String> {
    {
        let meta = shared.meta.lock();
        if let Some(failure) = &meta.failed {
            return Err(failure.clone());
        }
        if meta.written_epoch >= upto {
            return Ok(());
        }
    }
    let mut events = 0;
    let epoch = {
        let mut shards: Vec<_> = shared
            .shards
            .skus
            .iter()
            .map(|shard| shard.0.lock())
            .collect();
        let epoch = shared.epoch.load(Ordering::Relaxed) + 1;
        shared.epoch.store(epoch, Ordering::SeqCst);
        for (shard, spare) in shards.iter_mut().zip(&mut writer.spares) {
            std::mem::swap(&mut shard.block, spare);
            events += std::mem::take(&mut shard.events);
        }
        epoch
    };
    let record = &mut writer.record;
    record.clear();
    record.resize(files::RECORD_HEADER_BYTES, 0);
    for spare in &mut writer.spares {
        record.extend_from_slice(spare);
        spare.clear();
    }
    let (first, file) = {
        let mut meta = shared.meta.lock();
        let first = meta.next_sequence;
        meta.next_sequence += events;
        (first, Arc::clone(&meta.file))
    };
    let mut outcome = Ok(0);
    if events > 0 {
        files::seal(record, first, files::unix_ms());
        outcome = (&*file)
            .write_all(record)
            .map(|()| record.len() as u64)
            .map_err(|error| format!("write: {error}"));
    }
    if record.capacity() > 4 * files::BLOCK_FLUSH_BYTES {
        *record = Vec::new(); // after a burst of large events
    }
    let mut meta = shared.meta.lock();
    match outcome {
        Ok(bytes) => {
            meta.written += bytes;
            meta.written_epoch = epoch;
            Ok(())
        }
        Err(failure) => Err(shared.fail(&mut meta, failure)),
    }
}

/// Waits until every event of an epoch below `upto`, written already, is on disk,
/// syncing as the leader when no sync is in progress (group commit: one `fdatasync` for
/// everything written so far, while later events are appended and written).
///
/// # Errors
///
/// Why the journal failed: this sync, or an earlier write or sync.
fn sync_written<K>(shared: &Shared<K>, upto: u64) -> Result<(), String> {
    let mut meta = shared.meta.lock();
    debug_assert!(meta.written_epoch >= upto, "synced before written");
    loop {
        if let Some(failure) = &meta.failed {
            return Err(failure.clone());
        }
        if meta.durable_epoch >= upto {
            return Ok(());
        }
        if meta.syncing {
            meta = shared.synced.wait_until(meta, None).0;
            continue;
        }
        // The leader: one sync for everything written so far.
        meta.syncing = true;
        let (epoch, bytes) = (meta.written_epoch, meta.written);
        let (generation, file) = (meta.generation, Arc::clone(&meta.file));
        drop(meta);
        let synced = file.sync_data();
        meta = shared.meta.lock();
        meta.syncing = false;
        match synced {
            Ok(()) => {
                // A compaction syncs the old file before it switches to a new one.
                meta.durable_epoch = meta.durable_epoch.max(epoch);
                if meta.generation == generation {
                    meta.durable = meta.durable.max(bytes);
                }
            }
            Err(error) => {
                shared.fail(&mut meta, format!("fdatasync: {error}"));
            }
        }
        shared.synced.notify_all();
    }
}

/// The thread of `EverySec` and `No`: writes the buffered events once a second (and syncs
/// them under `EverySec`) until the sink is dropped or the journal fails.
fn flush_every_second<K>(shared: &Weak<Shared<K>>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut meta = shared.meta.lock();
        let deadline = Instant::now() + Duration::from_secs(1);
        while !meta.closing && Instant::now() < deadline {
            meta = shared.closed.wait_until(meta, Some(deadline)).0;
        }
        if meta.closing || meta.failed.is_some() {
            return;
        }
        drop(meta);
        let sync = shared.policy == SyncPolicy::EverySec;
        if flush(&shared, shared.everything(), sync).is_err() {
            return;
        }
    }
}

impl<K: Sku + Serialize + DeserializeOwned> EventSink<K> for JournalSink<K> {
    /// Appends `event` (unless it is a `LowStock`) to the journal's buffer; under
    /// [`SyncPolicy::Always`], writes and syncs it (or waits for the writer that does)
    /// before it returns, under `EverySec` and `No` only when the buffer is full
    /// (see the type's docs, **When the buffer is written**).
    ///
    /// # Panics
    ///
    /// When a write or sync of the journal failed (see the type's docs, **Failure**), and
    /// when the event does not encode (a SKU type whose `Serialize` fails in JSON, such as
    /// a map with keys that are not strings, or an event of more than 15 MiB, some
    /// 700,000 lines); the change itself is complete either way.
    ///
    /// # Blocking
    ///
    /// Under `Always`, for a `write` and an `fdatasync` (its own or the ones it shares).
    /// Under `EverySec` and `No`, for a `write` of about 1 MiB when its event fills the
    /// buffer, else only for the short lock of a shard. Under any policy, an event that
    /// must wait for a hold's end (**Order**) waits up to the order wait.
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
            payload.len() <= EVENT_BYTES_MAX,
            "an event of {} bytes is past the journal's limit of {EVENT_BYTES_MAX}",
            payload.len()
        );
        if shared.failed.load(Ordering::Relaxed) {
            shared.panic_failed();
        }
        let shards = &shared.shards;
        let fast = match hold {
            None => shards.append_one_line(event, payload, &shared.epoch),
            Some(hold) => shards.append_one_line_hold(event, hold, payload, &shared.epoch),
        };
        // The epoch is read under the shard's lock: the write that takes this event makes
        // it `epoch + 1`.
        let (bytes, epoch) = fast.unwrap_or_else(|| {
            let mut locked = shards.lock(event, hold);
            let waited = !locked.in_order(shards, event, hold);
            if waited {
                // A change after a hold's end on one SKU waits for the end's event
                // (**Order**).
                drop(locked);
                locked = self.wait_for_order(event, hold);
            }
            let bytes = locked.admit(shards, event, hold, payload);
            let epoch = shared.epoch.load(Ordering::Relaxed);
            drop(locked);
            if waited {
                shared.order_waiters.fetch_sub(1, Ordering::SeqCst);
            }
            (bytes, epoch)
        });
        if shared.order_waiters.load(Ordering::SeqCst) > 0 {
            // Wakes changes waiting for this event to come first.
            let _waiting = shared.waiting.lock();
            shared.appended.notify_all();
        }
        let sync = shared.policy == SyncPolicy::Always;
        if sync || bytes >= files::BLOCK_FLUSH_BYTES / SHARDS {
            flush(shared, epoch + 1, sync).unwrap_or_else(|failure| {
                panic!("the journal in {} failed: {failure}", shared.dir.display())
            });
        }
    }

    /// Waits, with no shard locked, until `event` may be appended (**Order**) or the order
    /// wait has passed; returns its shards, locked. Counts itself in the order waiters
    /// (the caller takes itself off once it has appended).
    fn wait_for_order(&self, event: &StockEvent<K>, hold: Option<(u64, bool)>) -> Locked<'_, K> {
        let shared = &self.shared;
        let shards = &shared.shards;
        let wait = Duration::from_nanos(shared.order_wait_ns.load(Ordering::Relaxed));
        let deadline = Instant::now().checked_add(wait);
        shared.order_waiters.fetch_add(1, Ordering::SeqCst);
        let mut waiting = shared.waiting.lock();
        loop {
            // Checked with `waiting` held: an append that comes after the check wakes the
            // wait below.
            let locked = shards.lock(event, hold);
            if locked.in_order(shards, event, hold) || sync::deadline_passed(deadline) {
                return locked;
            }
            drop(locked);
            waiting = shared.appended.wait_until(waiting, deadline).0;
        }
    }
}

impl<K> Drop for JournalSink<K> {
    /// Stops the once-a-second thread, then writes the buffered events and (under
    /// `Always` and `EverySec`) syncs them; a failure is ignored here (the journal's
    /// earlier calls panicked on it already, or recovery sees the file as it is).
    fn drop(&mut self) {
        let shared = &self.shared;
        {
            let mut meta = shared.meta.lock();
            meta.closing = true;
            shared.closed.notify_all();
        }
        let flusher = self.flusher.get_mut().map(Option::take);
        if let Ok(Some(flusher)) = flusher {
            let _ = flusher.join();
        }
        let _ = flush(shared, shared.everything(), shared.policy != SyncPolicy::No);
    }
}

impl<K> fmt::Debug for JournalSink<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let meta = self.shared.meta.lock();
        f.debug_struct("JournalSink")
            .field("dir", &self.shared.dir)
            .field("policy", &self.shared.policy)
            .field("generation", &meta.generation)
            .field("written", &meta.written)
            .field("durable", &meta.durable)
            .field("failed", &meta.failed)
            .finish_non_exhaustive()
    }
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
