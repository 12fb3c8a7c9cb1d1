//! [`VolumeStateMachine`] opened from kvstore (its state read back, a
//! crash's leftovers dropped) and openraft's traits on it.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;

use metro_kvstore::WriteBatch;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{AsyncRuntime, OptionalSend, RaftSnapshotBuilder};
use parking_lot::Mutex;

use super::super::codec::{
    SnapshotRecord, decode_log_id, decode_meta, decode_snapshot_record, decode_u64,
};
use super::super::dr_catalogue::DrCatalogue;
use super::super::durable::submit;
use super::super::namespaces::{
    BLOCK_MAP_SLOTS, GroupNamespaces, SM_KEY_ACTIVE_SLOT, SM_KEY_APPLIED, SM_KEY_MEMBERSHIP,
    SM_KEY_SIZE, SM_KEY_SNAPSHOT, SM_KEY_SNAPSHOT_META, SM_KEY_SNAPSHOT_SESSIONS,
};
use super::super::overlay::BlockOverlay;
use super::super::sessions::SessionTable;
use super::super::snapshot::SnapshotData;
use super::super::{NodeStorage, StorageError};
use super::{ApplyRider, PendingApply, SmShared, SmState, VolumeHandle, VolumeStateMachine};
use crate::raft::router::{ReadFailure, ReceiveSnapshot, VolumeRead};
use crate::raft::types::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::volume::{BlockData, VolumeId};

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
    let sessions = SessionTable::load(shared.store(), shared.ns.sessions())?;
    Ok(SmState {
        applied,
        membership,
        size_blocks,
        active_slot,
        current,
        last_staging: active_slot,
        failure: None,
        dr,
        sessions,
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
) -> Result<Option<(SnapshotRecord, SnapshotMeta, Arc<SessionTable>)>, StorageError> {
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
    let sessions = match shared.sm_value(SM_KEY_SNAPSHOT_SESSIONS)? {
        None => SessionTable::default(),
        Some(bytes) => SessionTable::decode_all(&bytes).ok_or_else(|| StorageError::Corrupt {
            what: "snapshot session table",
            key: SM_KEY_SNAPSHOT_SESSIONS,
            reason: format!("{} bytes", bytes.len()),
        })?,
    };
    Ok(Some((record, meta, Arc::new(sessions))))
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
        sessions: SessionTable::default(),
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

    async fn apply<S>(&mut self, entries: S) -> Result<(), io::Error>
    where
        S: futures_util::Stream<Item = Result<EntryResponder<TypeConfig<RT>>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        self.apply_entries(entries).await
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
        Ok(state
            .current
            .as_ref()
            .map(|(record, meta, sessions)| Snapshot {
                meta: meta.clone(),
                snapshot: SnapshotData::pinned(
                    Arc::clone(&self.shared.node),
                    self.shared.ns.volume,
                    *record,
                    Arc::clone(sessions),
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
