//! The `Disk` seam: a flat directory of files, as kvstore needs it.
//!
//! Contract (what is durable when):
//! - `DiskFile::write_at` changes what later reads see, but the bytes are
//!   durable only once `DiskFile::sync_data` has returned `Ok`.
//! - Creating, renaming and removing a file changes what `Disk::list` and
//!   `Disk::open` see at once, but survives a crash only once `Disk::sync_dir`
//!   has returned `Ok`.
//! - A crash may tear a write that was not yet synced: any prefix of it (or
//!   nothing, or all of it) may survive.
//!
//! Two implementations: [`crate::FileDisk`] (real files, `fdatasync`) and
//! [`crate::FaultyDisk`] (in memory; drops unsynced data at a simulated crash,
//! tears the last write, injects EIO and latent corruption). The trait lives in
//! kvstore, not in fabric's `env.rs`, because kvstore sits below fabric in the
//! dependency graph; `metro_fabric::env` re-exports it beside the other seams.

use std::fmt;
use std::sync::Arc;

/// Errors from a [`Disk`] or a [`DiskFile`].
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The operating system (or the simulated disk) failed the operation.
    #[error("{op} {name}: {source}")]
    Io {
        op: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// The file does not exist.
    #[error("{name}: no such file")]
    NotFound { name: String },
    /// A read asked for bytes beyond the end of the file.
    #[error(
        "{name}: read of {len} bytes at offset {offset} passes the end of the file ({file_len} bytes)"
    )]
    ShortRead {
        name: String,
        offset: u64,
        len: usize,
        file_len: u64,
    },
}

impl DiskError {
    /// Builds an [`DiskError::Io`] for operation `op` on file `name`.
    pub fn io(op: &'static str, name: &str, source: std::io::Error) -> Self {
        DiskError::Io {
            op,
            name: name.to_owned(),
            source,
        }
    }
}

/// How [`Disk::open`] treats a missing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file; a missing one is [`DiskError::NotFound`].
    Existing,
    /// Open the file, creating it empty if missing (the creation is durable
    /// only after [`Disk::sync_dir`]).
    Create,
}

/// A flat directory of files (names hold no `/`).
pub trait Disk: Send + Sync + fmt::Debug + 'static {
    /// Opens `name` for reading and writing.
    fn open(&self, name: &str, mode: OpenMode) -> Result<Arc<dyn DiskFile>, DiskError>;
    /// Names of all files, sorted.
    fn list(&self) -> Result<Vec<String>, DiskError>;
    /// Removes `name`; removing a missing file is not an error.
    fn remove(&self, name: &str) -> Result<(), DiskError>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &str, to: &str) -> Result<(), DiskError>;
    /// Makes earlier creations, renames and removals durable.
    fn sync_dir(&self) -> Result<(), DiskError>;
}

/// One open file. Shared by readers and the single writer; positional I/O only.
#[allow(clippy::len_without_is_empty)] // a file's length is a fact to read, not a container size
pub trait DiskFile: Send + Sync + fmt::Debug {
    /// The file's name inside its [`Disk`], for error messages.
    fn name(&self) -> &str;
    /// Fills `buf` from `offset`; fails with [`DiskError::ShortRead`] past the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError>;
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError>;
    /// Makes every earlier write to this file durable (`fdatasync`).
    fn sync_data(&self) -> Result<(), DiskError>;
    /// The current length in bytes (including unsynced writes).
    fn len(&self) -> Result<u64, DiskError>;
    /// Truncates or extends the file to `len` bytes (durable after `sync_data`).
    fn set_len(&self, len: u64) -> Result<(), DiskError>;
}
