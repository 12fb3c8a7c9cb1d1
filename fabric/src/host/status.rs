//! One replica's [`VolumeStatus`]: Raft's view (leader, membership) from
//! the group's metrics, and the applied index with a digest of the block map
//! computed inside the state machine's task, so no entry is applied while
//! the blocks are hashed (the digest is exactly "the blocks at
//! `applied_index`").

use openraft::AsyncRuntime;
use openraft::base::BoxFuture;
use openraft::rt::WatchReceiver;

use super::HostError;
use crate::env::NodeId;
use crate::limits::DIGEST_CHUNK_BLOCKS;
use crate::raft::types::VolumeRaft;
use crate::storage::{VolumeHandle, VolumeStateMachine};
use crate::volume::{BLOCK_BYTES, VolumeId};
use crate::wire::VolumeStatus;

/// What the digest covers: applied index, size, non-zero blocks, CRC32C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockDigest {
    pub applied_index: Option<u64>,
    pub size_blocks: u64,
    pub blocks_nonzero: u64,
    pub digest: u32,
}

/// Hashes every non-zero block of `handle` in index order (see
/// [`VolumeStatus`]). The caller keeps applies out while it runs.
pub(crate) fn block_digest(handle: &VolumeHandle) -> Result<BlockDigest, HostError> {
    let applied_index = handle.applied().map(|log_id| log_id.index);
    let size_blocks = handle.size_blocks();
    let mut digest = 0u32;
    let mut blocks_nonzero = 0u64;
    let mut offset = 0u64;
    while offset < size_blocks {
        let len = (size_blocks - offset).min(u64::from(DIGEST_CHUNK_BLOCKS)) as u32;
        let data = handle.read_blocks(offset, len)?;
        for (i, block) in data.blocks().enumerate() {
            debug_assert_eq!(block.len(), BLOCK_BYTES);
            if block.iter().all(|b| *b == 0) {
                continue;
            }
            let index = offset + i as u64;
            digest = crc32c::crc32c_append(digest, &index.to_le_bytes());
            digest = crc32c::crc32c_append(digest, block);
            blocks_nonzero += 1;
        }
        offset += u64::from(len);
    }
    Ok(BlockDigest {
        applied_index,
        size_blocks,
        blocks_nonzero,
        digest,
    })
}

/// The status of `node`'s replica of `volume`.
pub(crate) async fn replica_status<RT: AsyncRuntime>(
    node: NodeId,
    volume: VolumeId,
    raft: &VolumeRaft<RT, VolumeStateMachine<RT>>,
) -> Result<VolumeStatus, HostError> {
    let metrics = raft.metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let learners: Vec<NodeId> = membership.learner_ids().collect();
    let digest: BlockDigest = raft
        .with_state_machine(|sm: &mut VolumeStateMachine<RT>| {
            let handle = sm.handle();
            Box::pin(async move { block_digest(&handle) })
                as BoxFuture<'_, Result<BlockDigest, HostError>>
        })
        .await
        .map_err(|fatal| HostError::Failed {
            volume,
            reason: fatal.to_string(),
        })??;
    Ok(VolumeStatus {
        node,
        leader: metrics.current_leader,
        voters,
        learners,
        applied_index: digest.applied_index,
        size_blocks: digest.size_blocks,
        blocks_nonzero: digest.blocks_nonzero,
        digest: digest.digest,
    })
}
