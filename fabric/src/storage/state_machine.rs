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
//! submitted on its own when it grows past [`PENDING_APPLY_BYTES_MAX`] or
//! [`PENDING_APPLY_ENTRIES_MAX`], and before any other write of the state
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
//! Snapshots: see `snapshot.rs`. Building pins the active block-map slot
//! (awaited, durable); installing swaps a staged slot in (awaited, durable).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::TryStreamExt;
use metro_kvstore::{Store, WriteBatch};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{AsyncRuntime, OptionalSend, RaftSnapshotBuilder};

use super::codec::{
    SnapshotRecord, check_block, decode_log_id, decode_meta, decode_snapshot_record, decode_u64,
    encode_log_id, encode_meta, encode_snapshot_record, encode_u64,
};
use super::dr_catalogue::{CatalogueRefusal, DR_SNAPSHOTS_MAX, DrCatalogue, DrSnapshot};
use super::durable::{Durable, submit, submit_then};
use super::namespaces::{
    BLOCK_MAP_SLOTS, GroupNamespaces, SM_KEY_ACTIVE_SLOT, SM_KEY_APPLIED, SM_KEY_MEMBERSHIP,
    SM_KEY_SIZE, SM_KEY_SNAPSHOT, SM_KEY_SNAPSHOT_META,
};
use super::overlay::{BlockOverlay, Lookup};
use super::snapshot::SnapshotData;
use super::{APPLY_IN_FLIGHT_MAX, NodeStorage, StorageError};
use crate::raft::router::{ReadFailure, ReceiveSnapshot, VolumeRead};
use crate::raft::types::{
    Entry, EntryPayload, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::volume::{BLOCK_BYTES, BlockData, VolumeCommand, VolumeId, VolumeResponse};

/// The state machine's view beyond kvstore's durable one.
#[derive(Debug)]
struct SmState {
    applied: Option<LogId>,
    membership: StoredMembership,
    size_blocks: u64,
    active_slot: u8,
    /// The current Raft snapshot: where it is pinned, and its metadata.
    current: Option<(SnapshotRecord, SnapshotMeta)>,
    /// The slot used for staging last (staging rotates over the others).
    last_staging: u8,
    /// Why an earlier write failed.
    failure: Option<String>,
    /// The volume's DR snapshots.
    dr: DrCatalogue,
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

/// Pending apply changes above this many bytes go to kvstore on their own.
pub const PENDING_APPLY_BYTES_MAX: usize = 4 << 20;
/// Pending applied entries above this many go to kvstore on their own.
pub const PENDING_APPLY_ENTRIES_MAX: usize = 256;

/// What a completed kvstore batch reports to the state machine whose
/// pending changes it carried.
type ApplyHook = Box<dyn FnOnce(&Result<u64, metro_kvstore::StoreError>) + Send>;

/// The log store's handle on its group's pending apply changes: every log
/// store write goes through [`ApplyRider::submit`], which puts the pending
/// changes first in the same batch.
#[derive(Debug, Clone)]
pub(crate) struct ApplyRider {
    shared: Arc<SmShared>,
}

impl ApplyRider {
    /// Submits a batch built by `fill` (about `fill_bytes` encoded bytes)
    /// with the pending apply changes in front of it: in the same batch when
    /// both fit in one, else in a batch of their own just before it. `hook`
    /// runs once the batch is durable (or failed).
    pub(crate) fn submit(
        &self,
        fill_bytes: usize,
        fill: impl FnOnce(&mut WriteBatch),
        hook: impl FnOnce(&Result<u64, metro_kvstore::StoreError>) + Send + 'static,
    ) -> Durable {
        let store = self.shared.store();
        // Held until submitted: a state machine write that finds nothing
        // pending must not overtake the changes this batch carries.
        let mut pending = lock(&self.shared.pending);
        let Some((mut batch, done)) = self.shared.take_pending(&mut pending) else {
            let mut batch = WriteBatch::new();
            fill(&mut batch);
            return submit_then(store, batch, hook);
        };
        if batch.encoded_len() + fill_bytes > metro_kvstore::BATCH_BYTES_MAX {
            drop(submit_then(store, batch, done));
            batch = WriteBatch::new();
            fill(&mut batch);
            return submit_then(store, batch, hook);
        }
        fill(&mut batch);
        submit_then(store, batch, move |result| {
            done(result);
            hook(result);
        })
    }
}

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

/// A cloneable read handle on a volume's applied blocks (for tests,
/// metrics, and local reads that tolerate racing a snapshot install).
#[derive(Clone, Debug)]
pub struct VolumeHandle {
    shared: Arc<SmShared>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SmShared {
    fn state(&self) -> MutexGuard<'_, SmState> {
        lock(&self.state)
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

    /// Empties `pending`: its batch and the hook that settles its tickets.
    fn take_pending(
        self: &Arc<Self>,
        pending: &mut PendingApply,
    ) -> Option<(WriteBatch, ApplyHook)> {
        if pending.batch.is_empty() {
            return None;
        }
        let batch = std::mem::take(&mut pending.batch);
        let tickets = std::mem::take(&mut pending.tickets);
        let shared = Arc::clone(self);
        let hook: ApplyHook = Box::new(move |result| {
            shared.note(result);
            let mut overlay = lock(&shared.overlay);
            for ticket in tickets {
                overlay.durable(ticket);
            }
        });
        Some((batch, hook))
    }
}

/// What `open` reads back from the metadata namespace.
fn load_state<RT: AsyncRuntime>(
    shared: &SmShared,
    size_blocks: u64,
) -> Result<SmState, StorageError> {
    let volume = shared.ns.volume;
    let applied = shared
        .sm_value(SM_KEY_APPLIED)?
        .map(|b| decode_log_id(SM_KEY_APPLIED, &b))
        .transpose()?;
    let membership = shared
        .sm_value(SM_KEY_MEMBERSHIP)?
        .map(|b| decode_meta::<RT>(volume, SM_KEY_MEMBERSHIP, &b))
        .transpose()?
        .map(|meta| meta.last_membership)
        .unwrap_or_default();
    let size_blocks = shared
        .sm_value(SM_KEY_SIZE)?
        .map(|b| decode_u64("volume size", SM_KEY_SIZE, &b))
        .transpose()?
        .unwrap_or(size_blocks);
    let active_slot = match shared.sm_value(SM_KEY_ACTIVE_SLOT)? {
        None => 0,
        Some(b) => match decode_u64("active slot", SM_KEY_ACTIVE_SLOT, &b)? {
            slot if slot < u64::from(BLOCK_MAP_SLOTS) => slot as u8,
            slot => {
                return Err(StorageError::Corrupt {
                    what: "active slot",
                    key: SM_KEY_ACTIVE_SLOT,
                    reason: format!("slot {slot}"),
                });
            }
        },
    };
    let current = load_current::<RT>(shared, active_slot)?;
    let dr = load_catalogue(shared, active_slot)?;
    Ok(SmState {
        applied,
        membership,
        size_blocks,
        active_slot,
        current,
        last_staging: active_slot,
        failure: None,
        dr,
    })
}

/// The recorded DR snapshots; a record whose pin kvstore no longer has
/// (its slot was swapped out) keeps no content.
fn load_catalogue(shared: &SmShared, active_slot: u8) -> Result<DrCatalogue, StorageError> {
    let mut catalogue = DrCatalogue::load(shared.store(), shared.ns.dr_snapshots())?;
    let present: Vec<u64> = shared
        .store()
        .snapshots(shared.ns.block_map(active_slot))
        .iter()
        .map(|s| s.seq)
        .collect();
    catalogue.keep_pins(&present);
    Ok(catalogue)
}

/// The recorded current snapshot, if it is still pinned in the active slot.
fn load_current<RT: AsyncRuntime>(
    shared: &SmShared,
    active_slot: u8,
) -> Result<Option<(SnapshotRecord, SnapshotMeta)>, StorageError> {
    let Some(record) = shared.sm_value(SM_KEY_SNAPSHOT)? else {
        return Ok(None);
    };
    let record = decode_snapshot_record(SM_KEY_SNAPSHOT, &record)?;
    let pinned = shared.store().snapshots(shared.ns.block_map(active_slot));
    if record.slot != active_slot || !pinned.iter().any(|s| s.seq == record.seq) {
        return Ok(None);
    }
    let Some(meta) = shared.sm_value(SM_KEY_SNAPSHOT_META)? else {
        return Ok(None);
    };
    let meta = decode_meta::<RT>(shared.ns.volume, SM_KEY_SNAPSHOT_META, &meta)?;
    Ok(Some((record, meta)))
}

impl<RT: AsyncRuntime> VolumeStateMachine<RT> {
    /// Opens `volume`'s state machine from `node`'s store; `size_blocks` is
    /// the size until a stored one says otherwise. Empties stale staging
    /// slots and unpins snapshots no longer current (queued, not awaited:
    /// later writes are ordered after them).
    pub fn open(
        node: Arc<NodeStorage>,
        volume: VolumeId,
        size_blocks: u64,
    ) -> Result<Self, StorageError> {
        let shared = SmShared {
            node,
            ns: GroupNamespaces::new(volume),
            state: Mutex::new(placeholder_state()),
            overlay: Mutex::new(BlockOverlay::default()),
            pending: Mutex::new(PendingApply::default()),
        };
        let state = load_state::<RT>(&shared, size_blocks)?;
        *shared.state() = state;
        let shared = Arc::new(shared);
        clean_up(&shared);
        Ok(Self {
            shared,
            in_flight: VecDeque::new(),
            _runtime: PhantomData,
        })
    }

    /// A read handle sharing this state machine's view.
    pub fn handle(&self) -> VolumeHandle {
        VolumeHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The log store's handle on this state machine's pending changes.
    pub(crate) fn rider(&self) -> ApplyRider {
        ApplyRider {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Submits the pending apply changes on their own (if any); waits only
    /// while [`APPLY_IN_FLIGHT_MAX`] such batches are queued. Every other
    /// write of the state machine calls this first, so that it is ordered
    /// after the changes already applied.
    async fn flush_pending(&mut self) -> Result<(), StorageError> {
        while self.in_flight.front().is_some_and(Durable::is_done) {
            if let Some(done) = self.in_flight.pop_front() {
                done.await?;
            }
        }
        if self.in_flight.len() >= APPLY_IN_FLIGHT_MAX
            && let Some(oldest) = self.in_flight.pop_front()
        {
            oldest.await?;
        }
        let durable = {
            let mut pending = lock(&self.shared.pending);
            match self.shared.take_pending(&mut pending) {
                Some((batch, hook)) => submit_then(self.shared.store(), batch, hook),
                None => return Ok(()),
            }
        };
        self.in_flight.push_back(durable);
        Ok(())
    }

    /// For a `CreateSnapshot` entry this replica will record with content:
    /// submits the changes applied before it, then pins the active block
    /// map (durable on return); its kvstore sequence number.
    async fn pin_for(&mut self, entry: &Entry) -> Result<Option<u64>, StorageError> {
        let EntryPayload::Normal(VolumeCommand::CreateSnapshot { snapshot_id }) = &entry.payload
        else {
            return Ok(None);
        };
        if self.shared.node.is_witness() {
            return Ok(None);
        }
        let (allowed, slot) = {
            let state = self.shared.state();
            let plan = state.dr.plan_create(*snapshot_id, entry.log_id.index);
            (plan.is_ok(), state.active_slot)
        };
        if !allowed {
            return Ok(None);
        }
        self.flush_pending().await?;
        let ns = self.shared.ns.block_map(slot);
        let seq = submit(self.shared.store(), WriteBatch::create_snapshot(ns)).await?;
        Ok(Some(seq))
    }

    /// For a `DeleteSnapshot` entry: the pin to release if the snapshot
    /// has content here.
    fn unpin_for(&self, entry: &Entry) -> Option<u64> {
        let EntryPayload::Normal(VolumeCommand::DeleteSnapshot { snapshot_id }) = &entry.payload
        else {
            return None;
        };
        self.shared.state().dr.get(*snapshot_id)?.pinned
    }

    /// Waits until every applied change is durable.
    async fn drain(&mut self) -> Result<(), StorageError> {
        self.flush_pending().await?;
        while let Some(durable) = self.in_flight.pop_front() {
            durable.await?;
        }
        Ok(())
    }

    /// Pins the active slot as the current Raft snapshot; durable on return.
    async fn pin_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // The pinned block map must hold every applied change.
        self.flush_pending().await?;
        let shared = Arc::clone(&self.shared);
        let (slot, size_blocks, meta, old) = {
            let state = shared.state();
            let meta = SnapshotMeta {
                last_log_id: state.applied,
                last_membership: state.membership.clone(),
            };
            (
                state.active_slot,
                state.size_blocks,
                meta,
                state.current.as_ref().map(|c| c.0),
            )
        };
        let ns = shared.ns.block_map(slot);
        let seq = submit(shared.store(), WriteBatch::create_snapshot(ns)).await?;
        let record = SnapshotRecord {
            slot,
            seq,
            size_blocks,
        };
        let mut batch = WriteBatch::new();
        batch
            .put(
                shared.ns.sm_meta(),
                SM_KEY_SNAPSHOT,
                encode_snapshot_record(&record),
            )
            .put(
                shared.ns.sm_meta(),
                SM_KEY_SNAPSHOT_META,
                encode_meta::<RT>(shared.ns.volume, &meta)?,
            );
        submit(shared.store(), batch).await?;
        shared.state().current = Some((record, meta.clone()));
        if let Some(old) = old.filter(|old| old.slot == slot && old.seq != seq) {
            // Not awaited: a transfer still reading it fails and is retried.
            drop(submit(
                shared.store(),
                WriteBatch::drop_snapshot(ns, old.seq),
            ));
        }
        let data = SnapshotData::pinned(Arc::clone(&shared.node), shared.ns.volume, record);
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }

    /// Empties an unused block-map slot and returns it as a staging area.
    async fn begin_staging(&mut self) -> Result<SnapshotData, StorageError> {
        let slot = {
            let mut state = self.shared.state();
            let mut slot = state.last_staging;
            loop {
                slot = (slot + 1) % BLOCK_MAP_SLOTS;
                if slot != state.active_slot {
                    break;
                }
            }
            state.last_staging = slot;
            slot
        };
        self.flush_pending().await?;
        let mut batch = WriteBatch::new();
        batch.drop_namespace(self.shared.ns.block_map(slot));
        submit(self.shared.store(), batch).await?;
        let node = Arc::clone(&self.shared.node);
        Ok(SnapshotData::staging(node, self.shared.ns.volume, slot))
    }

    /// Points the volume at the staged `slot` with `meta`'s applied state,
    /// dropping the old block map; durable on return.
    async fn swap_in(
        &mut self,
        slot: u8,
        size_blocks: u64,
        meta: &SnapshotMeta,
        catalogue: &DrCatalogue,
    ) -> Result<(), StorageError> {
        let ns = self.shared.ns;
        let volume = ns.volume;
        let sm = ns.sm_meta();
        let old = self.shared.state().active_slot;
        let membership = SnapshotMeta {
            last_log_id: None,
            last_membership: meta.last_membership.clone(),
        };
        let mut batch = WriteBatch::new();
        batch
            .put(sm, SM_KEY_ACTIVE_SLOT, encode_u64(u64::from(slot)))
            .put(
                sm,
                SM_KEY_MEMBERSHIP,
                encode_meta::<RT>(volume, &membership)?,
            )
            .put(sm, SM_KEY_SIZE, encode_u64(size_blocks))
            .delete(sm, SM_KEY_SNAPSHOT)
            .delete(sm, SM_KEY_SNAPSHOT_META);
        match &meta.last_log_id {
            Some(id) => batch.put(sm, SM_KEY_APPLIED, encode_log_id(id)),
            None => batch.delete(sm, SM_KEY_APPLIED),
        };
        if old != slot {
            batch.drop_namespace(ns.block_map(old));
        }
        // The old slot's pins go with it; the records are the transfer's,
        // with the pins it made in the staged slot.
        batch.drop_namespace(ns.dr_snapshots());
        for record in catalogue.iter() {
            batch.put(ns.dr_snapshots(), record.id, record.encode());
        }
        submit(self.shared.store(), batch).await?;
        let mut state = self.shared.state();
        state.dr = catalogue.clone();
        state.active_slot = slot;
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.size_blocks = size_blocks;
        state.current = None;
        lock(&self.shared.overlay).clear();
        Ok(())
    }

    async fn install(
        &mut self,
        meta: &SnapshotMeta,
        mut data: SnapshotData,
    ) -> Result<(), StorageError> {
        self.shared.check()?;
        self.drain().await?;
        let (slot, size_blocks, catalogue) =
            match data.staged_slot(&self.shared.node, self.shared.ns.volume) {
                Some(slot) => (slot, data.size_blocks(), data.received_catalogue()),
                None => {
                    let mut staging = self.begin_staging().await?;
                    data.copy_into(&mut staging).await?;
                    let slot = staging
                        .staged_slot(&self.shared.node, self.shared.ns.volume)
                        .ok_or_else(|| StorageError::Snapshot("empty snapshot stream".into()))?;
                    (slot, staging.size_blocks(), staging.received_catalogue())
                }
            };
        self.swap_in(slot, size_blocks, meta, &catalogue).await?;
        self.pin_snapshot().await?;
        Ok(())
    }
}

fn placeholder_state() -> SmState {
    SmState {
        applied: None,
        membership: StoredMembership::default(),
        size_blocks: 0,
        active_slot: 0,
        current: None,
        last_staging: 0,
        failure: None,
        dr: DrCatalogue::default(),
    }
}

/// Empties slots other than the active one and unpins snapshots of the
/// active slot other than the current one and the DR snapshots (leftovers
/// of a crash).
fn clean_up(shared: &SmShared) {
    let store = shared.store();
    let (active, current, dr) = {
        let state = shared.state();
        (
            state.active_slot,
            state.current.as_ref().map(|c| c.0.seq),
            state.dr.clone(),
        )
    };
    for slot in (0..BLOCK_MAP_SLOTS).filter(|s| *s != active) {
        let ns = shared.ns.block_map(slot);
        let used = !store.snapshots(ns).is_empty()
            || store
                .scan(ns, 0..u64::MAX, 1)
                .is_ok_and(|page| !page.is_empty());
        if used {
            let mut batch = WriteBatch::new();
            batch.drop_namespace(ns);
            drop(submit(store, batch));
        }
    }
    let ns = shared.ns.block_map(active);
    for snapshot in store.snapshots(ns) {
        if Some(snapshot.seq) != current && !dr.pins(snapshot.seq) {
            drop(submit(store, WriteBatch::drop_snapshot(ns, snapshot.seq)));
        }
    }
}

/// Adds `command`'s block changes to `batch` and the overlay.
fn apply_command(
    shared: &SmShared,
    state: &mut SmState,
    overlay: &mut BlockOverlay,
    ticket: u64,
    command: &VolumeCommand,
    at: (u64, Option<u64>),
    batch: &mut WriteBatch,
) -> VolumeResponse {
    let (log_index, pin) = at;
    let size_blocks = state.size_blocks;
    if let Some((offset, len)) = command.block_range()
        && offset.checked_add(len).is_none_or(|end| end > size_blocks)
    {
        return VolumeResponse::OutOfRange { size_blocks };
    }
    let ns = shared.ns.block_map(state.active_slot);
    let witness = shared.node.is_witness();
    match command {
        // A witness keeps no blocks (see `NodeStorage`); it still checks
        // ranges and tracks the size, so it answers as every replica does.
        VolumeCommand::Write { .. }
        | VolumeCommand::Trim { .. }
        | VolumeCommand::WriteZeroes { .. }
            if witness => {}
        VolumeCommand::Write {
            offset_blocks,
            data,
        } => {
            for (i, block) in data.blocks().enumerate() {
                batch.put(ns, offset_blocks + i as u64, block.to_vec());
            }
            overlay.write(ticket, *offset_blocks, data);
        }
        VolumeCommand::Trim {
            offset_blocks,
            len_blocks,
        }
        | VolumeCommand::WriteZeroes {
            offset_blocks,
            len_blocks,
        } => {
            let end = offset_blocks + len_blocks;
            batch.delete_range(ns, *offset_blocks, end);
            overlay.zero(ticket, *offset_blocks..end);
        }
        VolumeCommand::Resize { size_blocks: size } => {
            if *size < size_blocks && !witness {
                batch.delete_range(ns, *size, u64::MAX);
                overlay.zero(ticket, *size..u64::MAX);
            }
            state.size_blocks = *size;
            batch.put(shared.ns.sm_meta(), SM_KEY_SIZE, encode_u64(*size));
        }
        VolumeCommand::CreateSnapshot { snapshot_id } => {
            match state.dr.plan_create(*snapshot_id, log_index) {
                Err(CatalogueRefusal::Conflict) => {
                    return VolumeResponse::SnapshotConflict {
                        snapshot_id: *snapshot_id,
                    };
                }
                Err(CatalogueRefusal::Full) => {
                    return VolumeResponse::SnapshotLimit {
                        max: DR_SNAPSHOTS_MAX as u64,
                    };
                }
                Ok(_) => {
                    let record = DrSnapshot {
                        id: *snapshot_id,
                        log_index,
                        size_blocks,
                        pinned: pin,
                    };
                    batch.put(shared.ns.dr_snapshots(), record.id, record.encode());
                    state.dr.insert(record);
                }
            }
        }
        VolumeCommand::DeleteSnapshot { snapshot_id } => {
            if state.dr.remove(*snapshot_id).is_err() {
                return VolumeResponse::SnapshotConflict {
                    snapshot_id: *snapshot_id,
                };
            }
            batch.delete(shared.ns.dr_snapshots(), *snapshot_id);
        }
    }
    VolumeResponse::Applied
}

impl SmShared {
    /// Adds the changes applying `entry` to the pending batch, updating
    /// state and overlay; returns the response and whether the pending
    /// batch should now go on its own.
    /// `pin`: the kvstore snapshot taken for a `CreateSnapshot` entry.
    fn prepare<RT: AsyncRuntime>(
        &self,
        entry: &Entry,
        pin: Option<u64>,
    ) -> Result<(VolumeResponse, bool), StorageError> {
        let mut pending = lock(&self.pending);
        let pending = &mut *pending;
        let mut state = self.state();
        let mut overlay = lock(&self.overlay);
        let ticket = overlay.ticket();
        pending.tickets.push(ticket);
        let sm = self.ns.sm_meta();
        let batch = &mut pending.batch;
        batch.put(sm, SM_KEY_APPLIED, encode_log_id(&entry.log_id));
        state.applied = Some(entry.log_id);
        let response = match &entry.payload {
            EntryPayload::Blank => VolumeResponse::Applied,
            EntryPayload::Membership(membership) => {
                state.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                let meta = SnapshotMeta {
                    last_log_id: None,
                    last_membership: state.membership.clone(),
                };
                batch.put(
                    sm,
                    SM_KEY_MEMBERSHIP,
                    encode_meta::<RT>(self.ns.volume, &meta)?,
                );
                VolumeResponse::Applied
            }
            EntryPayload::Normal(command) => apply_command(
                self,
                &mut state,
                &mut overlay,
                ticket,
                command,
                (entry.log_id.index, pin),
                batch,
            ),
        };
        let full = batch.encoded_len() >= PENDING_APPLY_BYTES_MAX
            || pending.tickets.len() >= PENDING_APPLY_ENTRIES_MAX;
        Ok((response, full))
    }
}

impl VolumeHandle {
    /// Reads `len_blocks` applied blocks from `offset_blocks` (zeroes where
    /// never written).
    pub fn read_blocks(
        &self,
        offset_blocks: u64,
        len_blocks: u32,
    ) -> Result<BlockData, StorageError> {
        self.shared.check()?;
        let end = offset_blocks.saturating_add(u64::from(len_blocks));
        let (slot, size_blocks) = {
            let state = self.shared.state();
            (state.active_slot, state.size_blocks)
        };
        if end > size_blocks {
            return Err(StorageError::Snapshot(format!(
                "read of blocks {offset_blocks}..{end} passes the volume end {size_blocks}"
            )));
        }
        // The overlay first, then kvstore: a batch that turns durable in
        // between is then seen in one place or the other, never neither.
        let pending: Vec<Option<Option<Vec<u8>>>> = {
            let overlay = lock(&self.shared.overlay);
            (offset_blocks..end)
                .map(|block| match overlay.lookup(block) {
                    Lookup::Data(bytes) => Some(Some(bytes.to_vec())),
                    Lookup::Zero => Some(None),
                    Lookup::Miss => None,
                })
                .collect()
        };
        let ns = self.shared.ns.block_map(slot);
        let stored = self
            .shared
            .store()
            .scan(ns, offset_blocks..end, len_blocks as usize)?;
        let mut out = vec![0u8; len_blocks as usize * BLOCK_BYTES];
        for (block, value) in stored {
            check_block(block, &value)?;
            let at = (block - offset_blocks) as usize * BLOCK_BYTES;
            out[at..at + BLOCK_BYTES].copy_from_slice(&value);
        }
        for (i, pending) in pending.into_iter().enumerate() {
            if let Some(bytes) = pending {
                let target = &mut out[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES];
                match bytes {
                    Some(bytes) => target.copy_from_slice(&bytes),
                    None => target.fill(0),
                }
            }
        }
        BlockData::new(out).map_err(|err| StorageError::Snapshot(err.to_string()))
    }

    /// One applied block (zeroes if never written).
    pub fn block(&self, index: u64) -> Result<Vec<u8>, StorageError> {
        Ok(self.read_blocks(index, 1)?.as_bytes().to_vec())
    }

    /// The last applied log id.
    pub fn applied(&self) -> Option<LogId> {
        self.shared.state().applied
    }

    /// The volume's size in blocks.
    pub fn size_blocks(&self) -> u64 {
        self.shared.state().size_blocks
    }

    /// The volume's DR snapshots as this replica applied them.
    pub fn dr_snapshots(&self) -> DrCatalogue {
        self.shared.state().dr.clone()
    }

    /// Up to `max_blocks` blocks of DR snapshot `id` that do not read as
    /// zeroes, from block `from_block` on, in index order; `None` when this
    /// replica does not hold the snapshot's content (unknown id, a witness,
    /// or a transfer whose sender no longer held it).
    pub fn read_dr_snapshot(
        &self,
        id: u64,
        from_block: u64,
        max_blocks: usize,
    ) -> Result<Option<DrSnapshotPage>, StorageError> {
        self.shared.check()?;
        let (slot, snapshot) = {
            let state = self.shared.state();
            (state.active_slot, state.dr.get(id).copied())
        };
        let Some(snapshot) = snapshot else {
            return Ok(None);
        };
        let Some(seq) = snapshot.pinned else {
            return Ok(None);
        };
        let view = metro_kvstore::Snapshot {
            ns: self.shared.ns.block_map(slot),
            seq,
        };
        let max_blocks = max_blocks.max(1);
        let end = snapshot.size_blocks;
        let stored = self
            .shared
            .store()
            .scan_at(view, from_block.min(end)..end, max_blocks)?;
        let full = stored.len() == max_blocks;
        let last_scanned = stored.last().map(|(index, _)| *index);
        let mut blocks = Vec::with_capacity(stored.len());
        for (index, value) in stored {
            check_block(index, &value)?;
            if value.iter().any(|b| *b != 0) {
                blocks.push((index, value));
            }
        }
        let next = last_scanned
            .filter(|_| full)
            .and_then(|last| last.checked_add(1))
            .filter(|next| *next < end);
        Ok(Some(DrSnapshotPage {
            snapshot,
            blocks,
            next,
        }))
    }
}

/// One page of a DR snapshot's blocks ([`VolumeHandle::read_dr_snapshot`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrSnapshotPage {
    pub snapshot: DrSnapshot,
    /// Block index and its 4 KiB, ascending; blocks reading as zeroes are
    /// left out.
    pub blocks: Vec<(u64, Vec<u8>)>,
    /// Where the next page starts, `None` after the last.
    pub next: Option<u64>,
}

/// Hands out the snapshot pinned when the builder was made.
#[derive(Debug)]
pub struct VolumeSnapshotBuilder {
    snapshot: Option<Result<Snapshot, StorageError>>,
}

impl<RT: AsyncRuntime> RaftSnapshotBuilder<TypeConfig<RT>> for VolumeSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        match self.snapshot.take() {
            Some(result) => Ok(result?),
            None => Err(io::Error::other("snapshot builder used twice")),
        }
    }
}

impl<RT: AsyncRuntime> RaftStateMachine<TypeConfig<RT>> for VolumeStateMachine<RT> {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = VolumeSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.shared.check()?;
        let state = self.shared.state();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: futures_util::Stream<Item = Result<EntryResponder<TypeConfig<RT>>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            self.shared.check()?;
            let pin = self.pin_for(&entry).await?;
            let unpin = self.unpin_for(&entry);
            let (response, full) = self.shared.prepare::<RT>(&entry, pin)?;
            debug_assert!(pin.is_none() || response == VolumeResponse::Applied);
            if let Some(seq) = unpin.filter(|_| response == VolumeResponse::Applied) {
                // The removal first, then the unpin (a snapshot operation
                // travels alone): a crash between leaves an unrecorded pin,
                // dropped at the next open.
                self.flush_pending().await?;
                let ns = self.shared.ns.block_map(self.shared.state().active_slot);
                drop(submit(
                    self.shared.store(),
                    WriteBatch::drop_snapshot(ns, seq),
                ));
            } else if full {
                self.flush_pending().await?;
            }
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let snapshot = match self.shared.check() {
            Ok(()) => self.pin_snapshot().await,
            Err(err) => Err(err),
        };
        VolumeSnapshotBuilder {
            snapshot: Some(snapshot),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        Ok(self.install(meta, snapshot).await?)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        self.shared.check()?;
        let state = self.shared.state();
        Ok(state.current.as_ref().map(|(record, meta)| Snapshot {
            meta: meta.clone(),
            snapshot: SnapshotData::pinned(
                Arc::clone(&self.shared.node),
                self.shared.ns.volume,
                *record,
            ),
        }))
    }
}

impl<RT: AsyncRuntime> VolumeRead for VolumeStateMachine<RT> {
    fn read_blocks(
        &mut self,
        offset_blocks: u64,
        len_blocks: u32,
    ) -> impl Future<Output = Result<BlockData, ReadFailure>> + Send + '_ {
        let result = self
            .handle()
            .read_blocks(offset_blocks, len_blocks)
            .map_err(|err| ReadFailure {
                damaged: err.is_damage(),
                message: err.to_string(),
            });
        std::future::ready(result)
    }
}

impl<RT: AsyncRuntime> ReceiveSnapshot for VolumeStateMachine<RT> {
    async fn begin_receive(&mut self) -> Result<SnapshotData, String> {
        self.begin_staging().await.map_err(|err| err.to_string())
    }
}
