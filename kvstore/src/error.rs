//! [`StoreError`]: what can go wrong at the kvstore boundary.

use crate::disk::DiskError;

/// Errors of the kvstore. `Poisoned` and `Closed` are final for this
/// [`crate::Store`] instance: reopen it (recovery decides what is durable).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk failed an operation.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Data on disk is damaged in a way that is not a torn tail: recovery
    /// refuses to guess, so no acknowledged write is silently dropped.
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// An earlier write or fsync failed; durability of anything after it is
    /// unknown, so the store refuses further work until it is reopened.
    #[error("store poisoned by an earlier I/O failure: {0}")]
    Poisoned(String),
    /// The writer has stopped (shut down or poisoned and gone).
    #[error("store writer has stopped")]
    Closed,
    /// The submission queue and the line behind it are full: the batch was
    /// not submitted (only an async submit refuses; see `gate.rs`).
    #[error("submission queue full and {waiting} submissions waiting behind it")]
    Overloaded { waiting: usize },
    /// The store's options are out of range.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The batch breaks a rule (size limits, snapshot ops alone, ...).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The snapshot named does not exist (never taken, or dropped).
    #[error("no snapshot at seq {seq} in namespace {kind}/{id}")]
    NoSuchSnapshot { kind: u8, id: u64, seq: u64 },
}
