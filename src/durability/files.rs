//! The journal directory on disk: file names, the frame of a journal record, the snapshot
//! file, and the write-then-rename that makes a new file appear whole or not at all.
//!
//! A directory holds `snapshot-<generation>.bin` and `journal-<generation>.log` files
//! (generations in 16 hex digits, so names sort in order). The journal of generation `g`
//! holds the events after the snapshot of generation `g` was begun; recovery reads the
//! latest snapshot and every journal of its generation or later.
//!
//! A journal file starts with [`JOURNAL_MAGIC`], then records, each framed as:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | payload length `n`, little endian |
//! | 4..8 | CRC-32 (IEEE, as zlib's) of bytes 8..24+n |
//! | 8..16 | sequence number of the record's first event, little endian |
//! | 16..24 | wall-clock time of the write, milliseconds since the Unix epoch |
//! | 24..24+n | the events, one after the other, in the binary encoding of `codec` |
//!
//! A record holds the events appended since the journal's previous write (one, under
//! `SyncPolicy::Always` with one caller at a time; up to about [`BLOCK_FLUSH_BYTES`]
//! under `EverySec`), grouped by the journal's shards (the events of one SKU in the
//! order they were appended), numbered from its sequence number up. A record is whole
//! or not there: its checksum covers every event in it.
//!
//! Format 1 ([`JOURNAL_MAGIC_V1`], written before the binary encoding) framed each event
//! alone, as JSON, with the same header; recovery still reads it.
//!
//! A snapshot file is [`SNAPSHOT_MAGIC`], the payload length (8 bytes), its CRC-32 (4
//! bytes), and the snapshot as JSON.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::JournalError;

/// The first bytes of every journal file written now (format 2: records of binary events).
pub(crate) const JOURNAL_MAGIC: &[u8; 8] = b"SLJRNL02";
/// The first bytes of a journal file of format 1 (a record a JSON event), still read.
pub(crate) const JOURNAL_MAGIC_V1: &[u8; 8] = b"SLJRNL01";
/// The first bytes of every snapshot file (format 1).
pub(crate) const SNAPSHOT_MAGIC: &[u8; 8] = b"SLSNAP01";
/// Bytes of a record's frame before its payload.
pub(crate) const RECORD_HEADER_BYTES: usize = 24;
/// The largest payload a record may have (a hold of many lines fits easily): a length
/// past it is a torn or corrupt frame.
pub(crate) const RECORD_BYTES_MAX: usize = 256 << 20;
/// The journal writes its buffered events once those of one of its shards pass this many
/// bytes over the number of shards (1 MiB over 16), so its memory stays bounded (about
/// this much) whatever the policy.
pub(crate) const BLOCK_FLUSH_BYTES: usize = 1 << 20;

/// The kind of a file of the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Snapshot,
    Journal,
}

/// The path of the file of `kind` and `generation` in `dir`.
pub(crate) fn path(dir: &Path, kind: Kind, generation: u64) -> PathBuf {
    match kind {
        Kind::Snapshot => dir.join(format!("snapshot-{generation:016x}.bin")),
        Kind::Journal => dir.join(format!("journal-{generation:016x}.log")),
    }
}

/// The snapshot and journal files of `dir`, as `(kind, generation)`, sorted.
pub(crate) fn list(dir: &Path) -> Result<Vec<(Kind, u64)>, JournalError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|source| JournalError::io(dir, source))? {
        let entry = entry.map_err(|source| JournalError::io(dir, source))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let parsed = if let Some(rest) = name.strip_prefix("snapshot-") {
            rest.strip_suffix(".bin").map(|hex| (Kind::Snapshot, hex))
        } else if let Some(rest) = name.strip_prefix("journal-") {
            rest.strip_suffix(".log").map(|hex| (Kind::Journal, hex))
        } else {
            None
        };
        if let Some((kind, hex)) = parsed {
            if let Ok(generation) = u64::from_str_radix(hex, 16) {
                files.push((kind, generation));
            }
        }
    }
    files.sort_unstable();
    Ok(files)
}

/// Fills in the frame header at the start of `block` (the first [`RECORD_HEADER_BYTES`]
/// bytes, left for it), whose events follow: the first event's `sequence`, the time
/// `unix_ms`, the length and the checksum.
pub(crate) fn seal(block: &mut [u8], sequence: u64, unix_ms: u64) {
    let length = u32::try_from(block.len() - RECORD_HEADER_BYTES).unwrap_or(u32::MAX);
    block[0..4].copy_from_slice(&length.to_le_bytes());
    block[8..16].copy_from_slice(&sequence.to_le_bytes());
    block[16..24].copy_from_slice(&unix_ms.to_le_bytes());
    let crc = crc32fast::hash(&block[8..]);
    block[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A record read back from a journal file.
#[derive(Debug)]
pub(crate) struct Record<'a> {
    pub(crate) sequence: u64,
    pub(crate) unix_ms: u64,
    pub(crate) payload: &'a [u8],
}

/// The record at the start of `bytes` and its length in bytes; `None` when `bytes` does
/// not start with a whole record whose checksum matches (torn, or corrupt).
pub(crate) fn unframe(bytes: &[u8]) -> Option<(Record<'_>, usize)> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let long = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let length = word(0) as usize;
    if length > RECORD_BYTES_MAX {
        return None;
    }
    let end = RECORD_HEADER_BYTES + length;
    let body = bytes.get(8..end)?;
    if crc32fast::hash(body) != word(4) {
        return None;
    }
    let record = Record {
        sequence: long(8),
        unix_ms: long(16),
        payload: &bytes[RECORD_HEADER_BYTES..end],
    };
    Some((record, end))
}

/// Milliseconds since the Unix epoch now, by the system's wall clock (0 before 1970).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Makes the directory entry changes of `dir` durable (a new, renamed or removed file).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| JournalError::io(dir, source))
}

/// Writes `contents` to `path` whole or not at all: into a temporary file, synced, renamed
/// over `path`, and the directory synced.
pub(crate) fn write_whole(dir: &Path, path: &Path, contents: &[u8]) -> Result<(), JournalError> {
    let temporary = path.with_extension("tmp");
    let mut file =
        File::create(&temporary).map_err(|source| JournalError::io(&temporary, source))?;
    file.write_all(contents)
        .and_then(|()| file.sync_data())
        .map_err(|source| JournalError::io(&temporary, source))?;
    fs::rename(&temporary, path).map_err(|source| JournalError::io(path, source))?;
    sync_dir(dir)
}

/// A snapshot file's bytes for the JSON `payload`.
pub(crate) fn snapshot_file(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(20 + payload.len());
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// The JSON payload of a snapshot file's `bytes`.
///
/// # Errors
///
/// [`JournalError::Corrupt`] when the magic, length or checksum do not match.
pub(crate) fn snapshot_payload<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], JournalError> {
    let corrupt = |reason: &str| JournalError::corrupt(path, 0, reason);
    if bytes.get(..8) != Some(SNAPSHOT_MAGIC.as_slice()) {
        return Err(corrupt("not a snapshot file (magic)"));
    }
    let length = bytes
        .get(8..16)
        .map(|length| u64::from_le_bytes(length.try_into().expect("8 bytes")))
        .ok_or_else(|| corrupt("truncated header"))?;
    let crc = bytes
        .get(16..20)
        .map(|crc| u32::from_le_bytes(crc.try_into().expect("4 bytes")))
        .ok_or_else(|| corrupt("truncated header"))?;
    let payload = &bytes[20..];
    if payload.len() as u64 != length || crc32fast::hash(payload) != crc {
        return Err(corrupt("length or checksum mismatch"));
    }
    Ok(payload)
}

/// Creates the journal file of `generation` in `dir` with its magic, synced with its
/// directory entry; returns it open for appending.
pub(crate) fn create_journal(dir: &Path, generation: u64) -> Result<File, JournalError> {
    let path = path(dir, Kind::Journal, generation);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|source| JournalError::io(&path, source))?;
    file.write_all(JOURNAL_MAGIC)
        .and_then(|()| file.sync_data())
        .map_err(|source| JournalError::io(&path, source))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Removes the files of `dir` older than `generation` (already covered by its snapshot).
pub(crate) fn remove_before(dir: &Path, generation: u64) -> Result<(), JournalError> {
    for (kind, old) in list(dir)? {
        if old < generation {
            let path = path(dir, kind, old);
            fs::remove_file(&path).map_err(|source| JournalError::io(&path, source))?;
        }
    }
    sync_dir(dir)
}
