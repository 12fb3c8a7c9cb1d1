//! [`VolumeStateMachine`]: openraft's `RaftStateMachine` for one volume, its
//! block map in kvstore.
//!
//! Apply: each committed entry's block changes (puts, or a `delete_range`
//! for trim / write-zeroes / shrink) and the new applied log id (plus
//! membership or size when they change) are added to the group's *pending*
//! apply batch, which is neither submitted nor awaited at once: it rides
//! along in the group's next log write ([`ApplyRider`], one kvstore batch,
//! so one fdatasync per replicated batch instead of one for the log and
//! another for the apply, which the next append then queued behind). It is
//! submitted on its own when it grows past [`PENDING_APPLY_BYTES_MAX`](crate::limits::PENDING_APPLY_BYTES_MAX) or
//! [`PENDING_APPLY_ENTRIES_MAX`](crate::limits::PENDING_APPLY_ENTRIES_MAX), and before any other write of the state
//! machine (snapshot, staging, install), so kvstore's FIFO order is the
//! apply order. Not waiting is safe: the entry is already durable in the log
//! of a majority, and on restart the applied log id read back matches the
//! blocks of the same batch, so openraft re-applies exactly the entries
//! after it. The client is answered at once; reads see the applied data
//! through a [`BlockOverlay`] of not-yet-durable changes (kvstore shows a
//! batch only once durable), so a read never misses an applied write.
//! At most [`APPLY_IN_FLIGHT_MAX`] batches of its own are queued per volume.
//!
//! On a witness node (`NodeStorage::is_witness`) block changes are not
//! applied at all: only the applied log id, membership and size are kept.
//!
//! Blocks never written read as zeroes. Commands past the volume's end are
//! answered [`VolumeResponse::OutOfRange`] on every replica alike.
//!
//! DR snapshots (`CreateSnapshot` / `DeleteSnapshot`, see `dr_catalogue.rs`):
//! applying a create submits the pending changes, pins the active block map
//! (its own kvstore batch, awaited: the only apply that waits for a write)
//! and records the snapshot with the entry's applied log id in the pending
//! batch; a crash in between leaves an unrecorded pin, dropped at the next
//! open, and the entry is applied again. A delete records the removal, then
//! queues the unpin behind it. Reads of a snapshot's blocks
//! ([`VolumeHandle::read_dr_snapshot`]) see the pinned view.
//!
//! Client sessions (`RegisterSession`, `Once`; see `sessions.rs`): the
//! table lives in the state and each change rides in the pending batch
//! like the entry's block changes; a duplicate or refused `Once` changes
//! no block. A snapshot carries the table as of its last applied entry.
//!
//! Snapshots: see `snapshot.rs`. Building pins the active block-map slot
//! (awaited, durable); installing swaps a staged slot in (awaited, durable).

mod apply;
mod handle;
mod machine;
mod raft_snapshot;

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;

use metro_kvstore::{Store, WriteBatch};
use parking_lot::{Mutex, MutexGuard};

use super::codec::SnapshotRecord;
use super::dr_catalogue::DrCatalogue;
use super::durable::Durable;
use super::namespaces::GroupNamespaces;
use super::overlay::BlockOverlay;
use super::sessions::SessionTable;
use super::{NodeStorage, StorageError};
use crate::raft::types::{LogId, SnapshotMeta, StoredMembership};

pub(crate) use apply::ApplyRider;
pub use handle::{DrSnapshotPage, VolumeHandle};
pub use machine::VolumeSnapshotBuilder;

/// The state machine's view beyond kvstore's durable one.
#[derive(Debug)]
struct SmState {
    applied: Option<LogId>,
    membership: StoredMembership,
    size_blocks: u64,
    active_slot: u8,
    /// The current Raft snapshot: where it is pinned, its metadata, and
    /// the session table as of its last applied entry.
    current: Option<(SnapshotRecord, SnapshotMeta, Arc<SessionTable>)>,
    /// The slot used for staging last (staging rotates over the others).
    last_staging: u8,
    /// Why an earlier write failed.
    failure: Option<String>,
    /// The volume's DR snapshots.
    dr: DrCatalogue,
    /// The volume's client sessions.
    sessions: SessionTable,
}

#[derive(Debug)]
struct SmShared {
    node: Arc<NodeStorage>,
    ns: GroupNamespaces,
    state: Mutex<SmState>,
    overlay: Mutex<BlockOverlay>,
    /// Applied changes not yet submitted to kvstore (lock order: pending,
    /// then state, then overlay).
    pending: Mutex<PendingApply>,
}

/// Applied entries' changes waiting for a batch to ride in.
#[derive(Debug, Default)]
struct PendingApply {
    batch: WriteBatch,
    /// Overlay tickets of the entries in `batch`.
    tickets: Vec<u64>,
}

/// What a completed kvstore batch reports to the state machine whose
/// pending changes it carried.
type ApplyHook = Box<dyn FnOnce(&Result<u64, metro_kvstore::StoreError>) + Send>;

/// The state machine of one volume group.
pub struct VolumeStateMachine<RT> {
    shared: Arc<SmShared>,
    /// Apply batches submitted and not yet known durable, oldest first.
    in_flight: VecDeque<Durable>,
    _runtime: PhantomData<fn() -> RT>,
}

impl<RT> std::fmt::Debug for VolumeStateMachine<RT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeStateMachine({})", self.shared.ns.volume)
    }
}

impl SmShared {
    fn state(&self) -> MutexGuard<'_, SmState> {
        self.state.lock()
    }

    fn store(&self) -> &Store {
        self.node.store()
    }

    fn check(&self) -> Result<(), StorageError> {
        match &self.state().failure {
            Some(why) => Err(StorageError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn note(&self, result: &Result<u64, metro_kvstore::StoreError>) {
        if let Err(err) = result {
            self.state().failure.get_or_insert_with(|| err.to_string());
        }
    }

    fn sm_value(&self, key: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.store().get(self.ns.sm_meta(), key)?)
    }
}
