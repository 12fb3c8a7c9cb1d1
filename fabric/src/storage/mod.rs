//! The kvstore-backed storage of volume groups: each volume's Raft log
//! ([`LogStore`]) and state machine ([`VolumeStateMachine`]) in the node's
//! one [`metro_kvstore::Store`].
//!
//! Model: a node opens one `Store` and wraps it in a [`NodeStorage`]; every
//! volume replica it hosts opens its pair with [`NodeStorage::open_group`].
//! All groups share the store's single writer, so appends from every group
//! are group-committed into one fdatasync. Namespaces are listed in
//! [`namespaces`].
//!
//! What is durable when:
//! - Log appends: durable when openraft's `IOFlushed` callback runs (it runs
//!   from the kvstore completion, i.e. after the fdatasync returned); readable
//!   as soon as `append` returns (an in-memory tail covers the gap).
//! - Vote, truncation, purge: durable when the call returns.
//! - Committed log id: kept in memory and written with the log's next write
//!   (optional in openraft).
//! - State machine: an applied entry's blocks and the applied log id travel
//!   in one batch, *not* awaited: they ride along with the group's next log
//!   write (or go alone past a size bound, or before any other state machine
//!   write), so that a replicated batch costs each node one fdatasync. Reads
//!   see them at once through an in-memory overlay. After a crash the
//!   applied log id read back is exactly the one matching the durable
//!   blocks, and openraft re-applies the log after it (the log, fsynced
//!   before commit, is the durability).
//! - Snapshots: pinned kvstore snapshots of the block map, durable when
//!   built or installed (see [`snapshot`]).
//!
//! kvstore runs batches in submission order (one writer, one FIFO queue), so
//! any batch being durable implies every batch submitted before it is too;
//! the storage relies on this ordering throughout. `Store::submit` blocks
//! while kvstore's queue is full; the state machine keeps at most
//! [`APPLY_IN_FLIGHT_MAX`](crate::limits::APPLY_IN_FLIGHT_MAX) of its batches queued so that one group cannot
//! fill it.

pub mod codec;
pub mod dr_catalogue;
mod durable;
pub mod log_store;
pub mod namespaces;
mod overlay;
pub mod sessions;
pub mod snapshot;
pub mod state_machine;

use std::io;
use std::sync::Arc;

use metro_kvstore::{Store, StoreError};

pub use dr_catalogue::{DrCatalogue, DrSnapshot};
pub use log_store::{LogReader, LogStore};
pub use namespaces::GroupNamespaces;
pub use snapshot::{PIECE_RECORDS_MAX, SnapshotData};
pub use state_machine::{DrSnapshotPage, VolumeHandle, VolumeStateMachine};

use crate::volume::VolumeId;

/// Errors of the kvstore-backed storage; openraft sees them as `io::Error`.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// kvstore failed the read or the write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored value does not decode: damage kvstore's checksums missed, or
    /// a bug. Never guessed at.
    #[error("corrupt {what} under key {key}: {reason}")]
    Corrupt {
        what: &'static str,
        key: u64,
        reason: String,
    },
    /// A value could not be encoded (a limit of the wire format).
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// A snapshot stream is malformed, out of order or from elsewhere.
    #[error("snapshot stream: {0}")]
    Snapshot(String),
    /// An earlier write of this group failed; its durability is unknown, so
    /// the group refuses further work until the node reopens the store.
    #[error("group storage stopped after a failed write: {0}")]
    Failed(String),
}

impl StorageError {
    /// Whether the error says this node's stored data is damaged (a
    /// checksum kvstore verified, or a value that does not decode).
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Self::Corrupt { .. } | Self::Store(StoreError::Corrupt { .. })
        )
    }
}

impl From<StorageError> for io::Error {
    fn from(err: StorageError) -> Self {
        io::Error::other(err)
    }
}

/// One node's kvstore, shared by every group the node hosts.
///
/// Its identity (the `Arc`) tells a snapshot received on this node apart
/// from one read from another store, so that installing it can swap a
/// staged namespace instead of copying.
///
/// A *witness* node's storage keeps each group's log and metadata (applied
/// log id, membership, size) but no blocks: applying a write changes no
/// block, and its snapshots, which would carry no blocks, refuse to be sent
/// (a data replica installing one would lose the volume).
#[derive(Debug)]
pub struct NodeStorage {
    store: Store,
    witness: bool,
    /// A planted bug for the simulator's checkers: apply a session's
    /// duplicate requests again (see [`Self::plant_ignore_request_numbers`]).
    ignore_request_numbers: std::sync::atomic::AtomicBool,
}

impl NodeStorage {
    /// Wraps the node's open store (whose `Writer` the caller drives).
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(Self {
            store,
            witness: false,
            ignore_request_numbers: Default::default(),
        })
    }

    /// Like [`Self::new`] for a witness node (see the type's docs).
    pub fn new_witness(store: Store) -> Arc<Self> {
        Arc::new(Self {
            store,
            witness: true,
            ignore_request_numbers: Default::default(),
        })
    }

    /// Whether this is a witness node's storage (no volume data).
    pub fn is_witness(&self) -> bool {
        self.witness
    }

    /// Plants a bug: the state machines on this storage apply duplicate
    /// session requests again, as if there were no sessions. Only for the
    /// simulator's `--bug no-dedup`, to show its checker catches the lost
    /// write that follows; never call it in a real node.
    pub fn plant_ignore_request_numbers(&self) {
        self.ignore_request_numbers
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`Self::plant_ignore_request_numbers`] was called.
    pub fn ignores_request_numbers(&self) -> bool {
        self.ignore_request_numbers
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Opens (recovering from kvstore) the log and state machine of
    /// `volume`'s group. `size_blocks` is the volume's size until a `Resize`
    /// entry or an installed snapshot says otherwise.
    pub fn open_group<RT: openraft::AsyncRuntime>(
        self: &Arc<Self>,
        volume: VolumeId,
        size_blocks: u64,
    ) -> Result<(LogStore<RT>, VolumeStateMachine<RT>), StorageError> {
        let sm = VolumeStateMachine::open(Arc::clone(self), volume, size_blocks)?;
        let log = LogStore::open_with(self.store.clone(), volume, Some(sm.rider()))?;
        Ok((log, sm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_is_told_apart_from_other_failures() {
        let crc = StorageError::Store(StoreError::Corrupt {
            file: "log-00000001.seg".into(),
            offset: 7,
            reason: "value CRC mismatch".into(),
        });
        let decode = StorageError::Corrupt {
            what: "block",
            key: 3,
            reason: "5 bytes".into(),
        };
        assert!(crc.is_damage() && decode.is_damage());
        let poisoned = StorageError::Store(StoreError::Poisoned("EIO".into()));
        let failed = StorageError::Failed("EIO".into());
        assert!(!poisoned.is_damage() && !failed.is_damage());
    }
}
