//! openraft's network for one volume group, over the [`Transport`] seam.
//!
//! Model: every node hosts many groups (one per volume replica) and keeps
//! one set of per-peer connections in its `Transport`. A [`NetworkFactory`]
//! belongs to one group: each RPC it sends is one frame tagged with the
//! group's [`VolumeId`], so that the peer's [`super::router::GroupRouter`]
//! hands it to the right `Raft` handle. Raft RPCs travel on [`Lane::Raft`],
//! snapshots on [`Lane::Bulk`] one piece per chunk (at most
//! [`crate::limits::SNAPSHOT_CHUNK_BYTES`], read from kvstore as it is sent),
//! forwarded client operations on [`Lane::Client`].
//!
//! Errors: [`TransportError::Unreachable`] and the peer's "no such group /
//! group unavailable" faults become openraft's `Unreachable` (back off);
//! everything else (transport failure, undecodable or unexpected reply)
//! becomes `NetworkError` (retry).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use futures_util::Stream;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{AsyncRuntime, OptionalSend, RaftNetworkFactory, RaftNetworkV2};

use super::pipeline::{AppendCall, AppendItem, AppendPipeline};
use super::types::{RaftNode, Snapshot, SnapshotData, TypeConfig, Vote};
use crate::env::{Lane, NodeId, Transport, TransportError};
use crate::storage::StorageError;
use crate::volume::VolumeId;
use crate::wire::{
    ClientReply, ClientRequest, Fault, FaultCode, Frame, Message, SnapshotChunk, WireError, decode,
    encode,
};

/// Why one call to a peer's group failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The transport could not deliver the request or its reply.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The request could not be encoded or the reply decoded.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer's host refused the request.
    #[error("peer refused the request ({code:?}): {message}")]
    Fault { code: FaultCode, message: String },
    /// The peer answered with a message that does not answer the request.
    #[error("unexpected reply to {request}: {reply}")]
    UnexpectedReply {
        request: &'static str,
        reply: String,
    },
    /// The local snapshot could not be read (e.g. a newer one replaced it
    /// mid-transfer): openraft retries with the current snapshot.
    #[error("reading the snapshot to send: {0}")]
    Snapshot(#[from] StorageError),
}

impl CallError {
    /// Whether the caller should back off (the peer or its group is not
    /// there now) rather than retry at once.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Transport(TransportError::Unreachable { .. }) => true,
            Self::Fault { code, .. } => {
                matches!(code, FaultCode::UnknownVolume | FaultCode::Unavailable)
            }
            _ => false,
        }
    }

    fn into_rpc<RT: AsyncRuntime>(self) -> RPCError<TypeConfig<RT>> {
        if self.is_unreachable() {
            RPCError::Unreachable(Unreachable::new(&self))
        } else {
            RPCError::Network(NetworkError::new(&self))
        }
    }
}

/// Sends `message` for `volume` to `peer` on `lane` and decodes the reply;
/// a [`Message::Fault`] reply becomes [`CallError::Fault`].
pub async fn call_peer<T: Transport, RT: AsyncRuntime>(
    transport: &T,
    peer: NodeId,
    lane: Lane,
    volume: VolumeId,
    message: Message<RT>,
) -> Result<Message<RT>, CallError> {
    call_peer_within(transport, peer, lane, volume, message, None).await
}

/// [`call_peer`], with the transport's per-call cap set to `timeout_ms`
/// when given (see [`Transport::call_within`]).
async fn call_peer_within<T: Transport, RT: AsyncRuntime>(
    transport: &T,
    peer: NodeId,
    lane: Lane,
    volume: VolumeId,
    message: Message<RT>,
    timeout_ms: Option<u64>,
) -> Result<Message<RT>, CallError> {
    let request = encode(&Frame { volume, message })?;
    let reply = match timeout_ms {
        Some(ms) => transport.call_within(peer, lane, request, ms).await?,
        None => transport.call(peer, lane, request).await?,
    };
    let frame = decode::<RT>(&reply)?;
    if frame.volume != volume {
        return Err(CallError::UnexpectedReply {
            request: "call",
            reply: format!("reply for {}", frame.volume),
        });
    }
    match frame.message {
        Message::Fault(Fault { code, message }) => Err(CallError::Fault { code, message }),
        message => Ok(message),
    }
}

/// Forwards a client operation on `volume` to `peer` (its leader, as far as
/// the caller knows); a [`ClientReply::Redirect`] names the leader to try.
pub async fn forward_client<T: Transport, RT: AsyncRuntime>(
    transport: &T,
    peer: NodeId,
    volume: VolumeId,
    request: ClientRequest,
) -> Result<ClientReply, CallError> {
    let message = Message::<RT>::Client(request);
    match call_peer(transport, peer, Lane::Client, volume, message).await? {
        Message::ClientReply(reply) => Ok(reply),
        other => Err(unexpected("client request", &other)),
    }
}

/// [`forward_client`] for an operation that runs up to `timeout_ms` on the
/// peer: the transport's per-call cap is `timeout_ms` for this call.
pub async fn forward_client_within<T: Transport, RT: AsyncRuntime>(
    transport: &T,
    peer: NodeId,
    volume: VolumeId,
    request: ClientRequest,
    timeout_ms: u64,
) -> Result<ClientReply, CallError> {
    let message = Message::<RT>::Client(request);
    match call_peer_within(
        transport,
        peer,
        Lane::Client,
        volume,
        message,
        Some(timeout_ms),
    )
    .await?
    {
        Message::ClientReply(reply) => Ok(reply),
        other => Err(unexpected("client request", &other)),
    }
}

fn unexpected<RT: AsyncRuntime>(request: &'static str, reply: &Message<RT>) -> CallError {
    let mut text = format!("{reply:?}");
    text.truncate(200);
    CallError::UnexpectedReply {
        request,
        reply: text,
    }
}

/// Creates the per-peer clients of one volume group.
pub struct NetworkFactory<T, RT> {
    transport: Arc<T>,
    volume: VolumeId,
    _runtime: PhantomData<fn() -> RT>,
}

impl<T, RT> NetworkFactory<T, RT> {
    /// The network of `volume`'s group, over the node's shared `transport`.
    pub fn new(transport: Arc<T>, volume: VolumeId) -> Self {
        Self {
            transport,
            volume,
            _runtime: PhantomData,
        }
    }
}

impl<T, RT> std::fmt::Debug for NetworkFactory<T, RT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NetworkFactory({})", self.volume)
    }
}

impl<T: Transport, RT: AsyncRuntime> RaftNetworkFactory<TypeConfig<RT>> for NetworkFactory<T, RT> {
    type Network = GroupNetwork<T, RT>;

    async fn new_client(&mut self, target: NodeId, _node: &RaftNode) -> Self::Network {
        GroupNetwork {
            transport: Arc::clone(&self.transport),
            volume: self.volume,
            target,
            _runtime: PhantomData,
        }
    }
}

/// One volume group's client to one peer.
pub struct GroupNetwork<T, RT> {
    transport: Arc<T>,
    volume: VolumeId,
    target: NodeId,
    _runtime: PhantomData<fn() -> RT>,
}

impl<T, RT> std::fmt::Debug for GroupNetwork<T, RT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupNetwork({} -> node {})", self.volume, self.target)
    }
}

/// Sends one AppendEntries request for `volume` to `peer`.
async fn append_call<T: Transport, RT: AsyncRuntime>(
    transport: &T,
    peer: NodeId,
    volume: VolumeId,
    rpc: AppendEntriesRequest<TypeConfig<RT>>,
) -> Result<AppendEntriesResponse<TypeConfig<RT>>, RPCError<TypeConfig<RT>>> {
    let message = Message::AppendEntries(rpc);
    match call_peer(transport, peer, Lane::Raft, volume, message).await {
        Ok(Message::AppendEntriesReply(reply)) => Ok(reply),
        Ok(other) => Err(unexpected("append-entries", &other).into_rpc()),
        Err(err) => Err(err.into_rpc()),
    }
}

impl<T: Transport, RT: AsyncRuntime> GroupNetwork<T, RT> {
    async fn call(&self, lane: Lane, message: Message<RT>) -> Result<Message<RT>, CallError> {
        call_peer(&*self.transport, self.target, lane, self.volume, message).await
    }

    async fn vote_rpc(
        &self,
        pre_vote: bool,
        request: VoteRequest<TypeConfig<RT>>,
    ) -> Result<VoteResponse<TypeConfig<RT>>, RPCError<TypeConfig<RT>>> {
        let message = Message::Vote { pre_vote, request };
        match self.call(Lane::Raft, message).await {
            Ok(Message::VoteReply(reply)) => Ok(reply),
            Ok(other) => Err(unexpected("vote", &other).into_rpc()),
            Err(err) => Err(err.into_rpc()),
        }
    }

    /// Streams the snapshot piece by piece (one [`SnapshotChunk`] each, see
    /// [`crate::storage::snapshot`]); stops early if `cancel` fires. Only
    /// one piece is in memory at a time.
    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed>,
    ) -> Result<Vote, StreamingError<TypeConfig<RT>>> {
        let Snapshot { meta, snapshot } = snapshot;
        let mut data: SnapshotData = snapshot;
        let mut cancel = pin!(cancel);
        loop {
            let poll = std::future::poll_fn(|cx| Poll::Ready(cancel.as_mut().poll(cx))).await;
            if let Poll::Ready(closed) = poll {
                return Err(StreamingError::Closed(closed));
            }
            let (piece, done) = match data.next_piece() {
                Ok(Some(next)) => next,
                Ok(None) => {
                    let err = CallError::Snapshot(StorageError::Snapshot(
                        "stream ended before its last piece".into(),
                    ));
                    return Err(err.into_rpc().into());
                }
                Err(err) => return Err(CallError::from(err).into_rpc().into()),
            };
            // Each chunk is one whole piece: the stream's length is not
            // known up front, so offset/total describe the piece alone.
            let chunk = SnapshotChunk {
                vote,
                meta: meta.clone(),
                offset: 0,
                total_bytes: piece.len() as u64,
                done,
                data: piece,
            };
            match self.call(Lane::Bulk, Message::SnapshotChunk(chunk)).await {
                Ok(Message::SnapshotReply(Some(vote))) => return Ok(vote),
                Ok(Message::SnapshotReply(None)) if !done => {}
                Ok(other) => return Err(unexpected("snapshot chunk", &other).into_rpc().into()),
                Err(err) => return Err(err.into_rpc().into()),
            }
        }
    }
}

impl<T: Transport, RT: AsyncRuntime> RaftNetworkV2<TypeConfig<RT>> for GroupNetwork<T, RT> {
    type SnapshotData = SnapshotData;

    /// Pipelined: up to [`crate::limits::APPEND_WINDOW_MAX`] requests in flight, results in
    /// order (see [`super::pipeline`]).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, AppendItem<RT>>, RPCError<TypeConfig<RT>>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig<RT>>> + OptionalSend + Unpin + 'static,
    {
        let transport = Arc::clone(&self.transport);
        let (volume, target) = (self.volume, self.target);
        let send = move |rpc| -> AppendCall<RT> {
            let transport = Arc::clone(&transport);
            Box::pin(async move { append_call(&*transport, target, volume, rpc).await })
        };
        let stream: BoxStream<'s, AppendItem<RT>> = Box::pin(AppendPipeline::new(input, send));
        Box::pin(std::future::ready(Ok(stream)))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig<RT>>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig<RT>>, RPCError<TypeConfig<RT>>> {
        append_call(&*self.transport, self.target, self.volume, rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig<RT>>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig<RT>>, RPCError<TypeConfig<RT>>> {
        self.vote_rpc(false, rpc).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig<RT>>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig<RT>>, RPCError<TypeConfig<RT>>> {
        self.vote_rpc(true, rpc).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig<RT>>, StreamingError<TypeConfig<RT>>> {
        let vote = self.send_snapshot(vote, snapshot, cancel).await?;
        Ok(SnapshotResponse::new(vote))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig<RT>>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig<RT>>, RPCError<TypeConfig<RT>>> {
        match self.call(Lane::Raft, Message::TransferLeader(req)).await {
            Ok(Message::TransferLeaderReply(reply)) => Ok(reply),
            Ok(other) => Err(unexpected("transfer-leader", &other).into_rpc()),
            Err(err) => Err(err.into_rpc()),
        }
    }
}
