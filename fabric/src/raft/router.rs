//! The receiving side: decode an incoming frame and hand it to the right
//! volume group's `Raft` handle.
//!
//! Model: one [`GroupRouter`] per node holds the `Raft` handle of every
//! volume replica the node hosts, keyed by [`VolumeId`]. [`GroupRouter::dispatch`]
//! answers every request frame with a reply frame: the group's answer, or a
//! [`Message::Fault`] when the frame does not decode, the volume is not
//! hosted here, or the group has stopped. Snapshot chunks from one peer for
//! one volume are assembled in memory (bounded by
//! [`crate::wire::SNAPSHOT_BYTES_MAX`]) and installed when the last chunk arrives.
//!
//! Locks are held only to look up or update maps, never across an await.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Cursor;
use std::sync::{Mutex, PoisonError, RwLock};

use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::storage::RaftStateMachine;
use openraft::{AsyncRuntime, ReadPolicy};

use super::types::{Snapshot, SnapshotData, TypeConfig, VolumeRaft};
use crate::env::{Lane, NodeId, RequestHandler};
use crate::volume::{BlockData, VolumeId};
use crate::wire::{
    ClientReply, ClientRequest, Fault, FaultCode, Frame, Message, SnapshotChunk, decode, encode,
};

/// Read access to a volume's state machine, used to serve linearizable
/// reads forwarded to the leader.
pub trait VolumeRead: Send + 'static {
    /// Reads `len_blocks` blocks from `offset_blocks` as applied so far.
    fn read_blocks(
        &mut self,
        offset_blocks: u64,
        len_blocks: u32,
    ) -> impl Future<Output = Result<BlockData, String>> + Send + '_;
}

/// Why the router could not serve a request (sent back as a fault).
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The frame did not decode.
    #[error(transparent)]
    Wire(#[from] crate::wire::WireError),
    /// No group of this volume on this node.
    #[error("no group of {0} on this node")]
    UnknownVolume(VolumeId),
    /// The group stopped (shut down or fatal error).
    #[error("group of {volume} unavailable: {reason}")]
    Unavailable { volume: VolumeId, reason: String },
    /// The message is not a request.
    #[error("not a request: {0}")]
    Unsupported(&'static str),
    /// A snapshot chunk is out of order or breaks a limit.
    #[error("snapshot transfer for {volume} from node {from}: {reason}")]
    Snapshot {
        volume: VolumeId,
        from: NodeId,
        reason: String,
    },
}

impl RouterError {
    fn into_fault(self) -> Fault {
        let code = match &self {
            Self::Wire(_) | Self::Snapshot { .. } => FaultCode::Malformed,
            Self::UnknownVolume(_) => FaultCode::UnknownVolume,
            Self::Unavailable { .. } => FaultCode::Unavailable,
            Self::Unsupported(_) => FaultCode::Unsupported,
        };
        let mut message = self.to_string();
        message.truncate(crate::wire::TEXT_BYTES_MAX as usize);
        Fault { code, message }
    }
}

/// A snapshot being received.
struct Assembly {
    total_bytes: u64,
    data: Vec<u8>,
}

/// Routes incoming frames to the volume groups hosted on this node.
pub struct GroupRouter<RT, SM>
where
    RT: AsyncRuntime,
    SM: RaftStateMachine<TypeConfig<RT>, SnapshotData = SnapshotData>,
{
    groups: RwLock<BTreeMap<VolumeId, VolumeRaft<RT, SM>>>,
    snapshots: Mutex<BTreeMap<(NodeId, VolumeId), Assembly>>,
}

impl<RT, SM> std::fmt::Debug for GroupRouter<RT, SM>
where
    RT: AsyncRuntime,
    SM: RaftStateMachine<TypeConfig<RT>, SnapshotData = SnapshotData>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupRouter")
            .field("groups", &self.groups.read().map(|g| g.len()).unwrap_or(0))
            .finish()
    }
}

impl<RT, SM> Default for GroupRouter<RT, SM>
where
    RT: AsyncRuntime,
    SM: RaftStateMachine<TypeConfig<RT>, SnapshotData = SnapshotData>,
{
    fn default() -> Self {
        Self {
            groups: RwLock::new(BTreeMap::new()),
            snapshots: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<RT, SM> GroupRouter<RT, SM>
where
    RT: AsyncRuntime,
    SM: RaftStateMachine<TypeConfig<RT>, SnapshotData = SnapshotData> + VolumeRead,
{
    /// A router hosting no group yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hosts `raft` as the group of `volume`; returns the handle it replaces.
    pub fn insert(&self, volume: VolumeId, raft: VolumeRaft<RT, SM>) -> Option<VolumeRaft<RT, SM>> {
        let mut groups = self.groups.write().unwrap_or_else(PoisonError::into_inner);
        groups.insert(volume, raft)
    }

    /// Stops routing to the group of `volume`; returns its handle.
    pub fn remove(&self, volume: VolumeId) -> Option<VolumeRaft<RT, SM>> {
        let mut snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        snapshots.retain(|(_, vol), _| *vol != volume);
        drop(snapshots);
        let mut groups = self.groups.write().unwrap_or_else(PoisonError::into_inner);
        groups.remove(&volume)
    }

    /// The group of `volume`, if hosted here.
    pub fn get(&self, volume: VolumeId) -> Option<VolumeRaft<RT, SM>> {
        let groups = self.groups.read().unwrap_or_else(PoisonError::into_inner);
        groups.get(&volume).cloned()
    }

    /// The volumes hosted here, in order.
    pub fn volumes(&self) -> Vec<VolumeId> {
        let groups = self.groups.read().unwrap_or_else(PoisonError::into_inner);
        groups.keys().copied().collect()
    }

    /// Answers one request frame from `from` with a reply frame; never
    /// fails: errors travel back as [`Message::Fault`].
    pub async fn dispatch(&self, from: NodeId, request: &[u8]) -> Vec<u8> {
        let (volume, result) = match decode::<RT>(request) {
            Ok(frame) => (frame.volume, self.handle(from, frame).await),
            Err(err) => (VolumeId(0), Err(RouterError::Wire(err))),
        };
        let message = result.unwrap_or_else(|err| Message::Fault(err.into_fault()));
        let reply = Frame { volume, message };
        match encode(&reply) {
            Ok(bytes) => bytes,
            Err(err) => {
                let fault = RouterError::Unavailable {
                    volume,
                    reason: format!("reply does not encode: {err}"),
                };
                let message = Message::<RT>::Fault(fault.into_fault());
                // A fault with a bounded message always encodes.
                encode(&Frame { volume, message }).unwrap_or_default()
            }
        }
    }

    /// Serves one decoded request frame from `from`.
    pub async fn handle(&self, from: NodeId, frame: Frame<RT>) -> Result<Message<RT>, RouterError> {
        let volume = frame.volume;
        let raft = self.get(volume).ok_or(RouterError::UnknownVolume(volume))?;
        let unavailable = |reason: String| RouterError::Unavailable { volume, reason };
        Ok(match frame.message {
            Message::AppendEntries(rpc) => Message::AppendEntriesReply(
                raft.append_entries(rpc)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?,
            ),
            Message::Vote { pre_vote, request } => {
                let reply = if pre_vote {
                    raft.pre_vote(request).await
                } else {
                    raft.vote(request).await
                };
                Message::VoteReply(reply.map_err(|e| unavailable(e.to_string()))?)
            }
            Message::SnapshotChunk(chunk) => self.take_chunk(from, volume, &raft, chunk).await?,
            Message::TransferLeader(request) => Message::TransferLeaderReply(
                raft.handle_transfer_leader(request)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?,
            ),
            Message::Client(request) => Message::ClientReply(serve_client(&raft, request).await),
            Message::AppendEntriesReply(_)
            | Message::VoteReply(_)
            | Message::SnapshotReply(_)
            | Message::TransferLeaderReply(_)
            | Message::ClientReply(_)
            | Message::Fault(_) => return Err(RouterError::Unsupported("reply message")),
        })
    }

    /// Adds a chunk to the snapshot being received; installs it when done.
    async fn take_chunk(
        &self,
        from: NodeId,
        volume: VolumeId,
        raft: &VolumeRaft<RT, SM>,
        chunk: SnapshotChunk,
    ) -> Result<Message<RT>, RouterError> {
        let Some(data) = self.assemble(from, volume, &chunk)? else {
            return Ok(Message::SnapshotReply(None));
        };
        let snapshot = Snapshot {
            meta: chunk.meta,
            snapshot: Cursor::new(data),
        };
        let reply = raft
            .install_full_snapshot(chunk.vote, snapshot)
            .await
            .map_err(|e| RouterError::Unavailable {
                volume,
                reason: e.to_string(),
            })?;
        Ok(Message::SnapshotReply(Some(reply.vote)))
    }

    /// Appends `chunk`; returns the whole snapshot once its last chunk is in.
    fn assemble(
        &self,
        from: NodeId,
        volume: VolumeId,
        chunk: &SnapshotChunk,
    ) -> Result<Option<Vec<u8>>, RouterError> {
        let mut snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (from, volume);
        if chunk.offset == 0 {
            // A (re)started transfer replaces any partial one.
            snapshots.insert(
                key,
                Assembly {
                    total_bytes: chunk.total_bytes,
                    data: Vec::new(),
                },
            );
        }
        let in_order = snapshots.get(&key).is_some_and(|assembly| {
            assembly.total_bytes == chunk.total_bytes && assembly.data.len() as u64 == chunk.offset
        });
        if !in_order {
            snapshots.remove(&key);
            return Err(RouterError::Snapshot {
                volume,
                from,
                reason: format!("chunk at offset {} out of order", chunk.offset),
            });
        }
        let assembly = snapshots
            .get_mut(&key)
            .ok_or(RouterError::UnknownVolume(volume))?;
        assembly.data.extend_from_slice(&chunk.data);
        if !chunk.done {
            return Ok(None);
        }
        Ok(snapshots.remove(&key).map(|assembly| assembly.data))
    }
}

/// Serves a client operation on the group's leader, or redirects.
async fn serve_client<RT, SM>(raft: &VolumeRaft<RT, SM>, request: ClientRequest) -> ClientReply
where
    RT: AsyncRuntime,
    SM: RaftStateMachine<TypeConfig<RT>, SnapshotData = SnapshotData> + VolumeRead,
{
    match request {
        ClientRequest::Command(command) => match raft.client_write(command).await {
            Ok(written) => ClientReply::Applied {
                log_index: written.log_id.index,
                response: written.data,
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                ClientReply::Redirect {
                    leader: forward.leader_id,
                }
            }
            Err(err) => failed(err),
        },
        ClientRequest::Read {
            offset_blocks,
            len_blocks,
        } => match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => read_applied(raft, offset_blocks, len_blocks).await,
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward))) => {
                ClientReply::Redirect {
                    leader: forward.leader_id,
                }
            }
            Err(err) => failed(err),
        },
    }
}

async fn read_applied<RT, SM>(
    raft: &VolumeRaft<RT, SM>,
    offset_blocks: u64,
    len_blocks: u32,
) -> ClientReply
where
    RT: AsyncRuntime,
    SM: RaftStateMachine<TypeConfig<RT>, SnapshotData = SnapshotData> + VolumeRead,
{
    let read = raft
        .with_state_machine(move |sm: &mut SM| {
            Box::pin(sm.read_blocks(offset_blocks, len_blocks)) as openraft::base::BoxFuture<'_, _>
        })
        .await;
    match read {
        Ok(Ok(data)) => ClientReply::Read(data),
        Ok(Err(message)) => failed(message),
        Err(fatal) => failed(fatal),
    }
}

fn failed(err: impl std::fmt::Display) -> ClientReply {
    let mut message = err.to_string();
    message.truncate(crate::wire::TEXT_BYTES_MAX as usize);
    ClientReply::Failed { message }
}

impl<RT, SM> RequestHandler for GroupRouter<RT, SM>
where
    RT: AsyncRuntime,
    SM: RaftStateMachine<TypeConfig<RT>, SnapshotData = SnapshotData> + VolumeRead,
    VolumeRaft<RT, SM>: Send + Sync,
{
    async fn handle(&self, from: NodeId, _lane: Lane, request: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(self.dispatch(from, &request).await)
    }
}
