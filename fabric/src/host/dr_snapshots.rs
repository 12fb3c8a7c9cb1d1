//! DR snapshots through the host: take and delete them through the
//! volume's leader (replicated `CreateSnapshot` / `DeleteSnapshot`
//! entries), list them from a local replica, and read a snapshot's blocks
//! from whichever replica holds them (see `storage::dr_catalogue`).
//!
//! Contract: [`VolumeHost::read_snapshot`] asks this node's replica first,
//! then the other nodes (one forwarding hop each); a replica that lacks
//! the content (a witness, or one whose transfer's sender no longer held
//! it) answers "not here" and the next is asked. Every page
//! of one snapshot reads the same pinned state whichever replica serves it:
//! all replicas pinned their block map at the same log entry.

use openraft::AsyncRuntime;

use super::{HostError, VolumeHost};
use crate::env::{NodeId, Transport};
use crate::limits::SNAPSHOT_READ_BLOCKS_MAX;
use crate::storage::{DrCatalogue, StorageError};
use crate::volume::{BlockData, VolumeCommand, VolumeId};
use crate::wire::{ClientReply, ClientRequest, SnapshotPage};

impl<RT: AsyncRuntime, T: Transport> VolumeHost<RT, T> {
    /// Takes DR snapshot `snapshot_id` of `volume` through its leader; the
    /// log index it was taken at. A taken id is refused
    /// ([`HostError::Refused`] with `SnapshotConflict`), as is a volume at
    /// its snapshot limit (`SnapshotLimit`).
    pub async fn create_snapshot(
        &self,
        volume: VolumeId,
        snapshot_id: u64,
    ) -> Result<u64, HostError> {
        self.command(volume, VolumeCommand::CreateSnapshot { snapshot_id })
            .await
    }

    /// Deletes DR snapshot `snapshot_id` of `volume` through its leader; an
    /// unknown id is refused (`SnapshotConflict`).
    pub async fn delete_snapshot(
        &self,
        volume: VolumeId,
        snapshot_id: u64,
    ) -> Result<u64, HostError> {
        self.command(volume, VolumeCommand::DeleteSnapshot { snapshot_id })
            .await
    }

    /// The DR snapshots of `volume` as this node's replica applied them
    /// (which may lag the leader's by the entries it has not applied yet).
    pub async fn snapshots_here(&self, volume: VolumeId) -> Result<DrCatalogue, HostError> {
        Ok(self.replica_handle(volume).await?.dr_snapshots())
    }

    /// A page of snapshot `snapshot_id` from this node's replica; `None`
    /// when it does not hold the snapshot's content.
    pub(crate) async fn read_snapshot_here(
        &self,
        volume: VolumeId,
        snapshot_id: u64,
        from_block: u64,
        max_blocks: u32,
    ) -> Result<Option<SnapshotPage>, HostError> {
        let handle = self.replica_handle(volume).await?;
        let max = max_blocks.clamp(1, SNAPSHOT_READ_BLOCKS_MAX) as usize;
        let Some(page) = handle.read_dr_snapshot(snapshot_id, from_block, max)? else {
            return Ok(None);
        };
        let indexes: Vec<u64> = page.blocks.iter().map(|(index, _)| *index).collect();
        let data = if page.blocks.is_empty() {
            None
        } else {
            let bytes: Vec<u8> = page.blocks.into_iter().flat_map(|(_, b)| b).collect();
            Some(BlockData::new(bytes).map_err(|err| StorageError::Snapshot(err.to_string()))?)
        };
        Ok(Some(SnapshotPage {
            log_index: page.snapshot.log_index,
            size_blocks: page.snapshot.size_blocks,
            indexes,
            data,
            next: page.next,
        }))
    }

    /// Up to `max_blocks` non-zero blocks of DR snapshot `snapshot_id` of
    /// `volume` from `from_block` on, from the first replica (this node's,
    /// then the others) that holds its content.
    pub async fn read_snapshot(
        &self,
        volume: VolumeId,
        snapshot_id: u64,
        from_block: u64,
        max_blocks: u32,
    ) -> Result<SnapshotPage, HostError> {
        let mut tried: Vec<String> = Vec::new();
        match self
            .read_snapshot_here(volume, snapshot_id, from_block, max_blocks)
            .await
        {
            Ok(Some(page)) => return Ok(page),
            Ok(None) => tried.push(format!("node {}: not held", self.node())),
            Err(HostError::UnknownVolume(_)) => {}
            Err(err) => tried.push(format!("node {}: {err}", self.node())),
        }
        let request = ClientRequest::ReadSnapshot {
            snapshot_id,
            from_block,
            max_blocks: max_blocks.clamp(1, SNAPSHOT_READ_BLOCKS_MAX),
        };
        let peers: Vec<NodeId> = self.config().peers.iter().copied().collect();
        for peer in peers {
            match self.hop(peer, volume, &request).await {
                Ok(ClientReply::SnapshotPage(Some(page))) => return Ok(page),
                Ok(ClientReply::SnapshotPage(None)) => {
                    tried.push(format!("node {peer}: not held"));
                }
                Err(HostError::UnknownVolume(_)) => {}
                Ok(other) => tried.push(format!("node {peer}: answered {other:?}")),
                Err(err) => tried.push(format!("node {peer}: {err}")),
            }
        }
        Err(HostError::Failed {
            volume,
            reason: format!(
                "no reachable replica holds snapshot {snapshot_id} ({})",
                if tried.is_empty() {
                    "no replica found".to_owned()
                } else {
                    tried.join("; ")
                }
            ),
        })
    }
}
