//! Conversions between openraft's (and metro's) types and the header mirror
//! structs. Towards the wire they are total; from the wire they check every
//! limit and invariant and return [`WireError::Malformed`] instead of
//! building a value openraft would trip over.

use std::collections::{BTreeMap, BTreeSet};

use super::WireError;
use super::header::{
    WireBlockCommand, WireCommand, WireEntry, WireLogId, WireMembership, WireNode, WirePayload,
    WireResponse, WireSnapshotMeta, WireVote,
};
use crate::limits::{MEMBERS_MAX, TEXT_BYTES_MAX};
use crate::raft::types::{
    Entry, EntryPayload, LeaderId, LogId, Membership, RaftNode, SnapshotMeta, StoredMembership,
    Vote,
};
use crate::volume::{BLOCK_BYTES, BlockData, OnceCommand, VolumeCommand, VolumeResponse};

pub(crate) fn malformed(what: impl Into<String>) -> WireError {
    WireError::Malformed(what.into())
}

/// Hands out a frame's blocks in order to the parts of a message that own
/// them; the message is malformed unless every block is taken exactly once.
pub(crate) struct BlockCursor<'a> {
    blocks: std::slice::Iter<'a, &'a [u8]>,
}

impl<'a> BlockCursor<'a> {
    pub(crate) fn new(blocks: &'a [&'a [u8]]) -> Self {
        Self {
            blocks: blocks.iter(),
        }
    }

    /// The next `count` blocks, concatenated.
    pub(crate) fn take(&mut self, count: u32) -> Result<Vec<u8>, WireError> {
        if count as usize > self.blocks.len() {
            return Err(malformed(format!(
                "header names {count} blocks, frame has {} left",
                self.blocks.len()
            )));
        }
        let mut data = Vec::with_capacity(count as usize * BLOCK_BYTES);
        for block in self.blocks.by_ref().take(count as usize) {
            data.extend_from_slice(block);
        }
        Ok(data)
    }

    /// Fails if blocks are left over.
    pub(crate) fn finish(self) -> Result<(), WireError> {
        match self.blocks.len() {
            0 => Ok(()),
            left => Err(malformed(format!("{left} blocks not named by the header"))),
        }
    }
}

pub(crate) fn text_from_wire(text: String) -> Result<String, WireError> {
    if text.len() > TEXT_BYTES_MAX as usize {
        return Err(malformed(format!("text of {} bytes", text.len())));
    }
    Ok(text)
}

pub(crate) fn vote_to_wire(vote: &Vote) -> WireVote {
    WireVote {
        term: vote.leader_id.term,
        node_id: vote.leader_id.node_id,
        committed: vote.committed,
    }
}

pub(crate) fn vote_from_wire(vote: WireVote) -> Vote {
    Vote {
        leader_id: LeaderId {
            term: vote.term,
            node_id: vote.node_id,
        },
        committed: vote.committed,
    }
}

pub(crate) fn log_id_to_wire(log_id: &LogId) -> WireLogId {
    WireLogId {
        term: log_id.leader_id.term,
        node_id: log_id.leader_id.node_id,
        index: log_id.index,
    }
}

pub(crate) fn log_id_from_wire(log_id: WireLogId) -> LogId {
    LogId::new(
        LeaderId {
            term: log_id.term,
            node_id: log_id.node_id,
        },
        log_id.index,
    )
}

pub(crate) fn opt_log_id_to_wire(log_id: Option<&LogId>) -> Option<WireLogId> {
    log_id.map(log_id_to_wire)
}

pub(crate) fn opt_log_id_from_wire(log_id: Option<WireLogId>) -> Option<LogId> {
    log_id.map(log_id_from_wire)
}

pub(crate) fn membership_to_wire(membership: &Membership) -> WireMembership {
    WireMembership {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|config| config.iter().copied().collect())
            .collect(),
        nodes: membership
            .nodes()
            .map(|(id, node)| WireNode {
                id: *id,
                addr: node.addr.clone(),
            })
            .collect(),
    }
}

pub(crate) fn membership_from_wire(wire: WireMembership) -> Result<Membership, WireError> {
    if wire.configs.len() > 2 || wire.nodes.len() > MEMBERS_MAX as usize {
        return Err(malformed("membership exceeds its limits"));
    }
    if wire.configs.is_empty() && wire.nodes.is_empty() {
        return Ok(Membership::default());
    }
    let mut configs = Vec::with_capacity(wire.configs.len());
    for config in wire.configs {
        let set: BTreeSet<u64> = config.iter().copied().collect();
        if set.len() != config.len() || set.len() > MEMBERS_MAX as usize {
            return Err(malformed("membership config repeats or exceeds members"));
        }
        configs.push(set);
    }
    let mut nodes = BTreeMap::new();
    for node in wire.nodes {
        let addr = text_from_wire(node.addr)?;
        if nodes.insert(node.id, RaftNode { addr }).is_some() {
            return Err(malformed(format!("node {} listed twice", node.id)));
        }
    }
    Membership::new(configs, nodes).map_err(|err| malformed(format!("membership: {err}")))
}

/// The header form of `command`, appending a write's blocks to `blocks`.
pub(crate) fn command_to_wire<'a>(
    command: &'a VolumeCommand,
    blocks: &mut Vec<&'a [u8]>,
) -> WireCommand {
    match command {
        VolumeCommand::Write {
            offset_blocks,
            data,
        } => {
            blocks.extend(data.blocks());
            WireCommand::Write {
                offset_blocks: *offset_blocks,
                block_count: data.block_count(),
            }
        }
        VolumeCommand::Trim {
            offset_blocks,
            len_blocks,
        } => WireCommand::Trim {
            offset_blocks: *offset_blocks,
            len_blocks: *len_blocks,
        },
        VolumeCommand::WriteZeroes {
            offset_blocks,
            len_blocks,
        } => WireCommand::WriteZeroes {
            offset_blocks: *offset_blocks,
            len_blocks: *len_blocks,
        },
        VolumeCommand::Resize { size_blocks } => WireCommand::Resize {
            size_blocks: *size_blocks,
        },
        VolumeCommand::CreateSnapshot { snapshot_id } => WireCommand::CreateSnapshot {
            snapshot_id: *snapshot_id,
        },
        VolumeCommand::DeleteSnapshot { snapshot_id } => WireCommand::DeleteSnapshot {
            snapshot_id: *snapshot_id,
        },
        VolumeCommand::RegisterSession => WireCommand::RegisterSession,
        VolumeCommand::Once(once) => WireCommand::Once {
            session: once.session(),
            request: once.request(),
            command: match command_to_wire(once.command(), blocks) {
                WireCommand::Write {
                    offset_blocks,
                    block_count,
                } => WireBlockCommand::Write {
                    offset_blocks,
                    block_count,
                },
                WireCommand::Trim {
                    offset_blocks,
                    len_blocks,
                } => WireBlockCommand::Trim {
                    offset_blocks,
                    len_blocks,
                },
                WireCommand::WriteZeroes {
                    offset_blocks,
                    len_blocks,
                } => WireBlockCommand::WriteZeroes {
                    offset_blocks,
                    len_blocks,
                },
                other => unreachable!("a Once carries a block command, not {other:?}"),
            },
        },
    }
}

fn block_command_from_wire(
    wire: WireBlockCommand,
    blocks: &mut BlockCursor<'_>,
) -> Result<VolumeCommand, WireError> {
    command_from_wire(
        match wire {
            WireBlockCommand::Write {
                offset_blocks,
                block_count,
            } => WireCommand::Write {
                offset_blocks,
                block_count,
            },
            WireBlockCommand::Trim {
                offset_blocks,
                len_blocks,
            } => WireCommand::Trim {
                offset_blocks,
                len_blocks,
            },
            WireBlockCommand::WriteZeroes {
                offset_blocks,
                len_blocks,
            } => WireCommand::WriteZeroes {
                offset_blocks,
                len_blocks,
            },
        },
        blocks,
    )
}

pub(crate) fn command_from_wire(
    wire: WireCommand,
    blocks: &mut BlockCursor<'_>,
) -> Result<VolumeCommand, WireError> {
    Ok(match wire {
        WireCommand::Write {
            offset_blocks,
            block_count,
        } => {
            let data = BlockData::new(blocks.take(block_count)?)
                .map_err(|err| malformed(format!("write payload: {err}")))?;
            VolumeCommand::Write {
                offset_blocks,
                data,
            }
        }
        WireCommand::Trim {
            offset_blocks,
            len_blocks,
        } => VolumeCommand::Trim {
            offset_blocks,
            len_blocks,
        },
        WireCommand::WriteZeroes {
            offset_blocks,
            len_blocks,
        } => VolumeCommand::WriteZeroes {
            offset_blocks,
            len_blocks,
        },
        WireCommand::Resize { size_blocks } => VolumeCommand::Resize { size_blocks },
        WireCommand::CreateSnapshot { snapshot_id } => {
            VolumeCommand::CreateSnapshot { snapshot_id }
        }
        WireCommand::DeleteSnapshot { snapshot_id } => {
            VolumeCommand::DeleteSnapshot { snapshot_id }
        }
        WireCommand::RegisterSession => VolumeCommand::RegisterSession,
        WireCommand::Once {
            session,
            request,
            command,
        } => {
            let command = block_command_from_wire(command, blocks)?;
            VolumeCommand::Once(
                OnceCommand::new(session, request, command)
                    .ok_or_else(|| malformed("a session request numbered 0"))?,
            )
        }
    })
}

pub(crate) fn entry_to_wire<'a>(entry: &'a Entry, blocks: &mut Vec<&'a [u8]>) -> WireEntry {
    let payload = match &entry.payload {
        EntryPayload::Blank => WirePayload::Blank,
        EntryPayload::Normal(command) => WirePayload::Normal(command_to_wire(command, blocks)),
        EntryPayload::Membership(membership) => {
            WirePayload::Membership(membership_to_wire(membership))
        }
    };
    WireEntry {
        log_id: log_id_to_wire(&entry.log_id),
        payload,
    }
}

pub(crate) fn entry_from_wire(
    wire: WireEntry,
    blocks: &mut BlockCursor<'_>,
) -> Result<Entry, WireError> {
    let payload = match wire.payload {
        WirePayload::Blank => EntryPayload::Blank,
        WirePayload::Normal(command) => EntryPayload::Normal(command_from_wire(command, blocks)?),
        WirePayload::Membership(membership) => {
            EntryPayload::Membership(membership_from_wire(membership)?)
        }
    };
    Ok(Entry {
        log_id: log_id_from_wire(wire.log_id),
        payload,
    })
}

pub(crate) fn response_to_wire(response: &VolumeResponse) -> WireResponse {
    match response {
        VolumeResponse::Applied => WireResponse::Applied,
        VolumeResponse::OutOfRange { size_blocks } => WireResponse::OutOfRange {
            size_blocks: *size_blocks,
        },
        VolumeResponse::SnapshotLimit { max } => WireResponse::SnapshotLimit { max: *max },
        VolumeResponse::SnapshotConflict { snapshot_id } => WireResponse::SnapshotConflict {
            snapshot_id: *snapshot_id,
        },
        VolumeResponse::SessionExpired { session } => {
            WireResponse::SessionExpired { session: *session }
        }
        VolumeResponse::RequestStale { session, request } => WireResponse::RequestStale {
            session: *session,
            request: *request,
        },
    }
}

pub(crate) fn response_from_wire(wire: WireResponse) -> VolumeResponse {
    match wire {
        WireResponse::Applied => VolumeResponse::Applied,
        WireResponse::OutOfRange { size_blocks } => VolumeResponse::OutOfRange { size_blocks },
        WireResponse::SnapshotLimit { max } => VolumeResponse::SnapshotLimit { max },
        WireResponse::SnapshotConflict { snapshot_id } => {
            VolumeResponse::SnapshotConflict { snapshot_id }
        }
        WireResponse::SessionExpired { session } => VolumeResponse::SessionExpired { session },
        WireResponse::RequestStale { session, request } => {
            VolumeResponse::RequestStale { session, request }
        }
    }
}

pub(crate) fn snapshot_meta_to_wire(meta: &SnapshotMeta) -> WireSnapshotMeta {
    WireSnapshotMeta {
        last_log_id: opt_log_id_to_wire(meta.last_log_id.as_ref()),
        membership_log_id: opt_log_id_to_wire(meta.last_membership.log_id().as_ref()),
        membership: membership_to_wire(meta.last_membership.membership()),
    }
}

pub(crate) fn snapshot_meta_from_wire(wire: WireSnapshotMeta) -> Result<SnapshotMeta, WireError> {
    let membership = membership_from_wire(wire.membership)?;
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_wire(wire.last_log_id),
        last_membership: StoredMembership::new(
            opt_log_id_from_wire(wire.membership_log_id),
            membership,
        ),
    })
}
