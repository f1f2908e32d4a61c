//! Why the journal could not be opened, read or compacted.

use std::path::{Path, PathBuf};

use super::snapshot::SnapshotError;

/// Why the journal could not be opened, read or compacted.
///
/// # Examples
///
/// ```
/// use stockledger::{JournalError, JournalSink, SyncPolicy};
///
/// let dir = std::env::temp_dir().join(format!("stockledger-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// std::fs::write(dir.join("snapshot-0000000000000001.bin"), b"not a snapshot")?;
/// let opened = JournalSink::<String>::open(&dir, SyncPolicy::Always);
/// assert!(matches!(opened, Err(JournalError::Corrupt { .. })));
/// std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A file is damaged somewhere other than a torn last record (which recovery drops):
    /// a bad checksum with whole records after it, a bad snapshot file, a record whose
    /// JSON does not parse, sequence numbers out of order.
    #[error("corrupt journal file {path} at byte {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Taking or checking a snapshot failed.
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// Recovery found holds open on a SKU for more units than the SKU's latest counts
    /// reserve: the record of a commit, release or expiry is missing while a later change
    /// of that SKU is there. Events reach the journal after the store's locks are
    /// released, so a crash between a change and its record can leave this (see
    /// [`JournalSink`](super::journal::JournalSink), **Order**); recovery stops rather than guess which hold ended.
    #[error(
        "SKU {sku}: recovered holds hold {held} units, its latest counts reserve {reserved}: \
         the record of a hold's end is missing"
    )]
    LostClose {
        /// The SKU, as `Debug` shows it.
        sku: String,
        /// Units of the recovered open holds on it.
        held: u64,
        /// Units its latest record reserves.
        reserved: u64,
    },
}

impl JournalError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, offset: u64, reason: &str) -> Self {
        Self::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.to_string(),
        }
    }
}
