//! The Raft snapshots of a volume's state machine: pin the active block map
//! as the current snapshot, stage a received one in an unused slot, swap it
//! in, install (see `storage/snapshot.rs` for the data and its transfer).

use std::sync::Arc;

use metro_kvstore::WriteBatch;
use openraft::AsyncRuntime;

use super::super::StorageError;
use super::super::codec::{
    SnapshotRecord, encode_log_id, encode_meta, encode_snapshot_record, encode_u64,
};
use super::super::dr_catalogue::DrCatalogue;
use super::super::durable::submit;
use super::super::namespaces::{
    BLOCK_MAP_SLOTS, SM_KEY_ACTIVE_SLOT, SM_KEY_APPLIED, SM_KEY_MEMBERSHIP, SM_KEY_SIZE,
    SM_KEY_SNAPSHOT, SM_KEY_SNAPSHOT_META, SM_KEY_SNAPSHOT_SESSIONS,
};
use super::super::sessions::SessionTable;
use super::super::snapshot::SnapshotData;
use super::VolumeStateMachine;
use crate::raft::types::{Snapshot, SnapshotMeta};

// Staging rotates over the slots other than the active one.
const _: () = assert!(
    BLOCK_MAP_SLOTS >= 2,
    "staging needs a block-map slot besides the active one"
);

impl<RT: AsyncRuntime> VolumeStateMachine<RT> {
    /// Pins the active slot as the current Raft snapshot; durable on return.
    pub(super) async fn pin_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // The pinned block map must hold every applied change.
        self.flush_pending().await?;
        let shared = Arc::clone(&self.shared);
        let (slot, size_blocks, meta, old, sessions) = {
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
                Arc::new(state.sessions.clone()),
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
            )
            .put(
                shared.ns.sm_meta(),
                SM_KEY_SNAPSHOT_SESSIONS,
                sessions.encode_all(),
            );
        submit(shared.store(), batch).await?;
        {
            let mut state = shared.state();
            assert!(
                meta.last_log_id <= state.applied,
                "a snapshot never passes the applied log id"
            );
            assert_eq!(state.active_slot, slot, "a snapshot pins the active slot");
            state.current = Some((record, meta.clone(), Arc::clone(&sessions)));
        }
        if let Some(old) = old.filter(|old| old.slot == slot && old.seq != seq) {
            // Not awaited (only its place in the queue is): a transfer still
            // reading it fails and is retried.
            submit(shared.store(), WriteBatch::drop_snapshot(ns, old.seq))
                .queued()
                .await;
        }
        let data =
            SnapshotData::pinned(Arc::clone(&shared.node), shared.ns.volume, record, sessions);
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }

    /// Empties an unused block-map slot and returns it as a staging area.
    pub(super) async fn begin_staging(&mut self) -> Result<SnapshotData, StorageError> {
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
        sessions: &SessionTable,
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
        // The sessions as of the snapshot's last entry, replacing ours.
        batch.drop_namespace(ns.sessions());
        for (id, record) in sessions.iter() {
            batch.put(ns.sessions(), id, SessionTable::encode_record(record));
        }
        submit(self.shared.store(), batch).await?;
        let mut state = self.shared.state();
        assert!(
            state.applied <= meta.last_log_id,
            "installing a snapshot never moves the applied log id back"
        );
        state.dr = catalogue.clone();
        state.sessions = sessions.clone();
        state.active_slot = slot;
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.size_blocks = size_blocks;
        state.current = None;
        self.shared.overlay.lock().clear();
        Ok(())
    }

    pub(super) async fn install(
        &mut self,
        meta: &SnapshotMeta,
        mut data: SnapshotData,
    ) -> Result<(), StorageError> {
        self.shared.check()?;
        self.drain().await?;
        let (slot, size_blocks, catalogue, sessions) =
            match data.staged_slot(&self.shared.node, self.shared.ns.volume) {
                Some(slot) => (
                    slot,
                    data.size_blocks(),
                    data.received_catalogue(),
                    data.received_sessions(),
                ),
                None => {
                    let mut staging = self.begin_staging().await?;
                    data.copy_into(&mut staging).await?;
                    let slot = staging
                        .staged_slot(&self.shared.node, self.shared.ns.volume)
                        .ok_or_else(|| StorageError::Snapshot("empty snapshot stream".into()))?;
                    (
                        slot,
                        staging.size_blocks(),
                        staging.received_catalogue(),
                        staging.received_sessions(),
                    )
                }
            };
        self.swap_in(slot, size_blocks, meta, &catalogue, &sessions)
            .await?;
        self.pin_snapshot().await?;
        Ok(())
    }
}
