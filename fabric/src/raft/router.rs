//! The receiving side: decode an incoming frame and hand it to the right
//! volume group's `Raft` handle.
//!
//! Model: one [`GroupRouter`] per node holds the `Raft` handle of every
//! volume replica the node hosts, keyed by [`VolumeId`]. [`GroupRouter::dispatch`]
//! answers every request frame with a reply frame: the group's answer, or a
//! [`Message::Fault`] when the frame does not decode, the volume is not
//! hosted here, or the group has stopped. A snapshot arrives one piece per
//! chunk ([`crate::storage::snapshot`]): the first piece asks the group's
//! state machine for a staging area ([`ReceiveSnapshot`]), every piece is
//! written there (durably) before it is acknowledged, and the last one
//! installs it. One transfer per volume at a time; a new first piece
//! replaces a partial transfer. Nothing but the current piece is in memory.
//!
//! AppendEntries from one leader are handed to the group in the leader's
//! order ([`super::append_order`]): the leader pipelines them, and the
//! transport may deliver them in any order.
//!
//! Locks are held only to look up or update maps, never across an await.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::storage::RaftStateMachine;
use openraft::{AsyncRuntime, ReadPolicy};
use parking_lot::{Mutex, RwLock};

use super::append_order::AppendOrder;
use super::types::{Snapshot, SnapshotData, SnapshotMeta, TypeConfig, VolumeRaft};
use crate::env::{Lane, NodeId, RequestHandler};
use crate::storage::snapshot::piece_number;
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
    ) -> impl Future<Output = Result<BlockData, ReadFailure>> + Send + '_;
}

/// Why a read of applied blocks failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadFailure {
    pub message: String,
    /// The replica's own data is damaged (a checksum or decode failure):
    /// it must stop serving the volume (fail-stop), so that a healthy
    /// replica leads instead of this one failing every read of it.
    pub damaged: bool,
}

/// Where a volume's state machine stages a snapshot being received.
pub trait ReceiveSnapshot: Send + 'static {
    /// An empty staging area; the router writes the pieces into it and
    /// hands it to `install_full_snapshot` once the last one is in.
    fn begin_receive(&mut self) -> impl Future<Output = Result<SnapshotData, String>> + Send + '_;
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
    /// The fault that answers a request this error stopped.
    pub fn into_fault(self) -> Fault {
        let code = match &self {
            Self::Wire(_) | Self::Snapshot { .. } => FaultCode::Malformed,
            Self::UnknownVolume(_) => FaultCode::UnknownVolume,
            Self::Unavailable { .. } => FaultCode::Unavailable,
            Self::Unsupported(_) => FaultCode::Unsupported,
        };
        let mut message = self.to_string();
        message.truncate(crate::limits::TEXT_BYTES_MAX as usize);
        Fault { code, message }
    }
}

/// A snapshot being received: from whom, what, and its staging area.
struct Assembly {
    from: NodeId,
    meta: SnapshotMeta,
    data: SnapshotData,
}

/// Routes incoming frames to the volume groups hosted on this node.
pub struct GroupRouter<RT, SM>
where
    RT: AsyncRuntime,
    SM: RaftStateMachine<TypeConfig<RT>, SnapshotData = SnapshotData>,
{
    groups: RwLock<BTreeMap<VolumeId, VolumeRaft<RT, SM>>>,
    snapshots: Mutex<BTreeMap<VolumeId, Assembly>>,
    append_order: AppendOrder,
}

impl<RT, SM> std::fmt::Debug for GroupRouter<RT, SM>
where
    RT: AsyncRuntime,
    SM: RaftStateMachine<TypeConfig<RT>, SnapshotData = SnapshotData>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupRouter")
            .field("groups", &self.groups.read().len())
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
            append_order: AppendOrder::default(),
        }
    }
}

impl<RT, SM> GroupRouter<RT, SM>
where
    RT: AsyncRuntime,
    SM: RaftStateMachine<TypeConfig<RT>, SnapshotData = SnapshotData>
        + VolumeRead
        + ReceiveSnapshot,
{
    /// A router hosting no group yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hosts `raft` as the group of `volume`; returns the handle it replaces.
    pub fn insert(&self, volume: VolumeId, raft: VolumeRaft<RT, SM>) -> Option<VolumeRaft<RT, SM>> {
        let mut groups = self.groups.write();
        groups.insert(volume, raft)
    }

    /// Stops routing to the group of `volume`; returns its handle.
    pub fn remove(&self, volume: VolumeId) -> Option<VolumeRaft<RT, SM>> {
        let mut snapshots = self.snapshots.lock();
        snapshots.remove(&volume);
        drop(snapshots);
        self.append_order.forget(volume);
        let mut groups = self.groups.write();
        groups.remove(&volume)
    }

    /// The group of `volume`, if hosted here.
    pub fn get(&self, volume: VolumeId) -> Option<VolumeRaft<RT, SM>> {
        let groups = self.groups.read();
        groups.get(&volume).cloned()
    }

    /// The volumes hosted here, in order.
    pub fn volumes(&self) -> Vec<VolumeId> {
        let groups = self.groups.read();
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
                self.append_in_order(from, volume, &raft, rpc)
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

    /// Hands `rpc` to the group in its leader's order (see
    /// [`super::append_order`]), then waits for the group's answer.
    async fn append_in_order(
        &self,
        from: NodeId,
        volume: VolumeId,
        raft: &VolumeRaft<RT, SM>,
        rpc: AppendEntriesRequest<TypeConfig<RT>>,
    ) -> Result<AppendEntriesResponse<TypeConfig<RT>>, RaftError<TypeConfig<RT>>> {
        let vote = rpc.vote;
        let last = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        self.append_order
            .wait_turn::<RT>(volume, from, &vote, rpc.prev_log_id)
            .await;
        let mut append = pin!(raft.append_entries(rpc));
        // The first poll queues the request in the group's API channel.
        let first = std::future::poll_fn(|cx| Poll::Ready(append.as_mut().poll(cx))).await;
        self.append_order.handed(volume, from, &vote, last);
        match first {
            Poll::Ready(result) => result,
            Poll::Pending => append.await,
        }
    }

    /// Writes one received piece to the staging area; installs the snapshot
    /// after the last one.
    async fn take_chunk(
        &self,
        from: NodeId,
        volume: VolumeId,
        raft: &VolumeRaft<RT, SM>,
        chunk: SnapshotChunk,
    ) -> Result<Message<RT>, RouterError> {
        let fail = |reason: String| RouterError::Snapshot {
            volume,
            from,
            reason,
        };
        let unavailable = |reason: String| RouterError::Unavailable { volume, reason };
        let piece = piece_number(&chunk.data).map_err(|e| fail(e.to_string()))?;
        let mut assembly = if piece == 0 {
            // A (re)started transfer replaces any partial one.
            self.snapshots.lock().remove(&volume);
            let data = raft
                .with_state_machine(|sm: &mut SM| {
                    Box::pin(sm.begin_receive())
                        as openraft::base::BoxFuture<'_, Result<SnapshotData, String>>
                })
                .await
                .map_err(|e| unavailable(e.to_string()))?
                .map_err(fail)?;
            Assembly {
                from,
                meta: chunk.meta.clone(),
                data,
            }
        } else {
            match self.snapshots.lock().remove(&volume) {
                Some(assembly) if assembly.from == from && assembly.meta == chunk.meta => assembly,
                _ => return Err(fail(format!("piece {piece} of no transfer in progress"))),
            }
        };
        assembly
            .data
            .write_piece(&chunk.data)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !chunk.done {
            self.snapshots.lock().insert(volume, assembly);
            return Ok(Message::SnapshotReply(None));
        }
        let snapshot = Snapshot {
            meta: chunk.meta,
            snapshot: assembly.data,
        };
        let reply = raft
            .install_full_snapshot(chunk.vote, snapshot)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(Message::SnapshotReply(Some(reply.vote)))
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
        // Host-level requests are served by `crate::host`, never by a group.
        ClientRequest::CreateVolume { .. }
        | ClientRequest::OpenReplica { .. }
        | ClientRequest::DeleteVolume
        | ClientRequest::DropReplica
        | ClientRequest::Status
        | ClientRequest::LogFloor
        | ClientRequest::ReplaceMember { .. }
        | ClientRequest::InSync { .. }
        | ClientRequest::ReadSnapshot { .. } => failed("host-level request sent to a group router"),
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
    let read: Result<Result<BlockData, ReadFailure>, _> = raft
        .with_state_machine(move |sm: &mut SM| {
            Box::pin(sm.read_blocks(offset_blocks, len_blocks)) as openraft::base::BoxFuture<'_, _>
        })
        .await;
    match read {
        Ok(Ok(data)) => ClientReply::Read(data),
        Ok(Err(failure)) => {
            if failure.damaged {
                // Fail-stop: this replica's data cannot be trusted; its
                // group stops here and the others elect a leader (found
                // by the simulator: `metro-sim run --seed 635`).
                let _ = raft.shutdown().await;
            }
            failed(failure.message)
        }
        Err(fatal) => failed(fatal),
    }
}

fn failed(err: impl std::fmt::Display) -> ClientReply {
    let mut message = err.to_string();
    message.truncate(crate::limits::TEXT_BYTES_MAX as usize);
    ClientReply::Failed { message }
}

impl<RT, SM> RequestHandler for GroupRouter<RT, SM>
where
    RT: AsyncRuntime,
    SM: RaftStateMachine<TypeConfig<RT>, SnapshotData = SnapshotData>
        + VolumeRead
        + ReceiveSnapshot,
    VolumeRaft<RT, SM>: Send + Sync,
{
    async fn handle(&self, from: NodeId, _lane: Lane, request: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(self.dispatch(from, &request).await)
    }
}
