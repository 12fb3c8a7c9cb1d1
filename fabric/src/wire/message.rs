//! Typed messages and their encoding into frames.
//!
//! [`encode`] turns a [`Frame`] (volume id + [`Message`]) into bytes;
//! [`decode`] turns bytes back, validating everything (see [`super`]). The
//! Raft messages are openraft's own request/response types for
//! [`TypeConfig<RT>`]; the rest (snapshot chunks, forwarded client
//! operations, faults) are metro's.

use openraft::AsyncRuntime;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderError, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};

use super::WireError;
use super::convert::{
    BlockCursor, command_from_wire, command_to_wire, entry_from_wire, entry_to_wire,
    log_id_from_wire, malformed, opt_log_id_from_wire, opt_log_id_to_wire, response_from_wire,
    response_to_wire, snapshot_meta_from_wire, snapshot_meta_to_wire, text_from_wire,
    vote_from_wire, vote_to_wire,
};
use super::frame::{decode_frame, encode_frame};
use super::header::{
    AppendEntriesHeader, AppendReplyHeader, ArchivedEnvelope, Body, ClientOpHeader,
    ClientReplyHeader, Envelope, FaultHeader, SnapshotChunkHeader, SnapshotPageHeader,
    TransferLeaderHeader, TransferReplyHeader, VolumeStatusHeader, VoteHeader, VoteReplyHeader,
};
use crate::env::NodeId;
use crate::limits::{
    APPEND_ENTRIES_MAX, MEMBERS_MAX, SNAPSHOT_BYTES_MAX, SNAPSHOT_CHUNK_BYTES,
    SNAPSHOT_READ_BLOCKS_MAX,
};
use crate::raft::types::{SnapshotMeta, TypeConfig, Vote};
use crate::volume::{BLOCK_BYTES, BlockData, VolumeCommand, VolumeId, VolumeResponse};

/// One frame's content: the volume (Raft group) it is for, and the message.
#[derive(Debug)]
pub struct Frame<RT: AsyncRuntime> {
    pub volume: VolumeId,
    pub message: Message<RT>,
}

/// Every message between nodes.
#[derive(Debug)]
pub enum Message<RT: AsyncRuntime> {
    /// Raft AppendEntries (also heartbeats), on `Lane::Raft`.
    AppendEntries(AppendEntriesRequest<TypeConfig<RT>>),
    AppendEntriesReply(AppendEntriesResponse<TypeConfig<RT>>),
    /// Raft RequestVote, or PreVote when `pre_vote`.
    Vote {
        pre_vote: bool,
        request: VoteRequest<TypeConfig<RT>>,
    },
    VoteReply(VoteResponse<TypeConfig<RT>>),
    /// One chunk of a full snapshot, on `Lane::Bulk`.
    SnapshotChunk(SnapshotChunk),
    /// `None`: chunk taken, send the next; `Some(vote)`: the receiver
    /// installed the snapshot (openraft's `SnapshotResponse`).
    SnapshotReply(Option<Vote>),
    TransferLeader(TransferLeaderRequest<TypeConfig<RT>>),
    TransferLeaderReply(TransferLeaderResponse<TypeConfig<RT>>),
    /// A client operation forwarded to the volume's leader, on `Lane::Client`.
    Client(ClientRequest),
    ClientReply(ClientReply),
    /// The receiver could not serve the request at all.
    Fault(Fault),
}

/// One chunk of a snapshot: `data` is the bytes at `offset` of a snapshot of
/// `total_bytes`; `done` marks the last chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub total_bytes: u64,
    pub done: bool,
    pub data: Vec<u8>,
}

/// A client operation forwarded to a volume's leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    /// Propose a command to the volume's log.
    Command(VolumeCommand),
    /// Read `len_blocks` blocks from `offset_blocks`, linearizably.
    Read { offset_blocks: u64, len_blocks: u32 },
    /// Host level, from a client to any node: create the volume with a
    /// replica on each of `members` (idempotent).
    CreateVolume {
        size_blocks: u64,
        members: Vec<NodeId>,
    },
    /// Host level, between nodes: open an empty replica of the volume here
    /// and initialize its group with `members` (idempotent).
    OpenReplica {
        size_blocks: u64,
        members: Vec<NodeId>,
    },
    /// Host level, from a client to any node: delete the volume on every
    /// node that hosts a replica (idempotent).
    DeleteVolume,
    /// Host level, between nodes: stop and delete this node's replica.
    DropReplica,
    /// Host level: this node's report on its replica ([`VolumeStatus`]).
    Status,
    /// Host level, between nodes (a witness asks the leader): the highest
    /// log index every voter of the group has durably matched, below which
    /// no voter needs entries from another's log ([`ClientReply::LogFloor`]).
    LogFloor,
    /// Host level, between nodes (the coordinator asks the group's leader):
    /// replace voter `dead` by `replacement` in the group whose desired
    /// voters are `members` (see `GroupAdmin::replace_member`).
    ReplaceMember {
        size_blocks: u64,
        members: Vec<NodeId>,
        dead: NodeId,
        replacement: NodeId,
    },
    /// Host level, between nodes: which of `members` the leader reports in
    /// sync ([`ClientReply::InSync`]).
    InSync { members: Vec<NodeId> },
    /// Host level, to a replica: up to `max_blocks` (at most
    /// [`SNAPSHOT_READ_BLOCKS_MAX`]) non-zero blocks of DR snapshot
    /// `snapshot_id` from `from_block` on, from this replica's own copy
    /// ([`ClientReply::SnapshotPage`]).
    ReadSnapshot {
        snapshot_id: u64,
        from_block: u64,
        max_blocks: u32,
    },
}

/// One page of a DR snapshot's non-zero blocks, as read by one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPage {
    /// The log index the snapshot was taken at.
    pub log_index: u64,
    /// The volume's size in blocks then.
    pub size_blocks: u64,
    /// The index of each block in `data`, ascending.
    pub indexes: Vec<u64>,
    /// The blocks, `None` when the page holds none.
    pub data: Option<BlockData>,
    /// Where the next page starts, `None` after the last.
    pub next: Option<u64>,
}

impl ClientRequest {
    /// Whether this is a host-level request (served by `crate::host`, not
    /// by a group's Raft).
    pub fn is_host_level(&self) -> bool {
        !matches!(self, Self::Command(_) | Self::Read { .. })
    }
}

/// One replica's report on its volume: who leads, the membership, how far
/// it applied, and a digest of its block map at that point.
///
/// `digest` is CRC32C over `(block index u64 LE, 4096 bytes)` of every
/// block that does not read as zeroes, in index order, all at
/// `applied_index`: two replicas at the same applied index have the same
/// digest exactly when their blocks read the same.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeStatus {
    pub node: NodeId,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub applied_index: Option<u64>,
    pub size_blocks: u64,
    pub blocks_nonzero: u64,
    pub digest: u32,
}

/// The leader's answer to a [`ClientRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientReply {
    /// The command was committed at `log_index` and applied.
    Applied {
        log_index: u64,
        response: VolumeResponse,
    },
    /// The blocks read.
    Read(BlockData),
    /// This node is not the leader; `leader` is, if known.
    Redirect { leader: Option<NodeId> },
    /// The operation failed; retrying may succeed.
    Failed { message: String },
    /// A host-level request succeeded.
    Done,
    /// The answer to [`ClientRequest::Status`].
    Status(VolumeStatus),
    /// The leader's answer to [`ClientRequest::LogFloor`]; `None` while a
    /// voter's progress is unknown.
    LogFloor { index: Option<u64> },
    /// The leader's answer to [`ClientRequest::InSync`].
    InSync { nodes: Vec<NodeId> },
    /// The answer to [`ClientRequest::ReadSnapshot`]; `None` when this
    /// replica does not hold that snapshot's content.
    SnapshotPage(Option<SnapshotPage>),
    /// The leader refused a [`ClientRequest::ReplaceMember`] computed from
    /// other voters than the group's, which are `voters`.
    Diverged { voters: Vec<NodeId> },
    /// The leader runs the [`ClientRequest::ReplaceMember`] asked for (or
    /// another of the group's) as a job: ask again later.
    Running { what: String },
}

/// Why a receiving host could not serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FaultCode {
    /// The frame did not decode.
    Malformed = 1,
    /// No group of that volume on this node.
    UnknownVolume = 2,
    /// The group is shutting down or failed.
    Unavailable = 3,
    /// The message kind is not a request this host serves.
    Unsupported = 4,
}

impl FaultCode {
    fn from_wire(code: u16) -> Result<Self, WireError> {
        Ok(match code {
            1 => Self::Malformed,
            2 => Self::UnknownVolume,
            3 => Self::Unavailable,
            4 => Self::Unsupported,
            other => return Err(malformed(format!("unknown fault code {other}"))),
        })
    }
}

/// An error answer in place of the expected reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub code: FaultCode,
    pub message: String,
}

/// Encodes `frame` into bytes for the transport.
pub fn encode<RT: AsyncRuntime>(frame: &Frame<RT>) -> Result<Vec<u8>, WireError> {
    let mut blocks: Vec<&[u8]> = Vec::new();
    let mut padded_tail = Vec::new();
    let body = body_to_wire(&frame.message, &mut blocks, &mut padded_tail)?;
    if !padded_tail.is_empty() {
        blocks.push(&padded_tail);
    }
    let envelope = Envelope {
        volume: frame.volume.0,
        body,
    };
    let header = rkyv::to_bytes::<rkyv::rancor::Error>(&envelope)
        .map_err(|err| WireError::Encode(err.to_string()))?;
    encode_frame(&header, &blocks)
}

/// Decodes and validates bytes from the transport.
pub fn decode<RT: AsyncRuntime>(bytes: &[u8]) -> Result<Frame<RT>, WireError> {
    let raw = decode_frame(bytes)?;
    let archived = rkyv::access::<ArchivedEnvelope, rkyv::rancor::Error>(&raw.header)
        .map_err(|err| WireError::Archive(err.to_string()))?;
    let envelope = rkyv::deserialize::<Envelope, rkyv::rancor::Error>(archived)
        .map_err(|err| WireError::Archive(err.to_string()))?;
    let mut cursor = BlockCursor::new(&raw.blocks);
    let message = body_from_wire(envelope.body, &mut cursor)?;
    cursor.finish()?;
    Ok(Frame {
        volume: VolumeId(envelope.volume),
        message,
    })
}

fn body_to_wire<'a, RT: AsyncRuntime>(
    message: &'a Message<RT>,
    blocks: &mut Vec<&'a [u8]>,
    padded_tail: &mut Vec<u8>,
) -> Result<Body, WireError> {
    Ok(match message {
        Message::AppendEntries(request) => Body::AppendEntries(append_to_wire(request, blocks)?),
        Message::AppendEntriesReply(reply) => Body::AppendEntriesReply(append_reply_to_wire(reply)),
        Message::Vote { pre_vote, request } => Body::Vote(VoteHeader {
            vote: vote_to_wire(&request.vote),
            last_log_id: opt_log_id_to_wire(request.last_log_id.as_ref()),
            leadership_transfer: request.leadership_transfer,
            pre_vote: *pre_vote,
        }),
        Message::VoteReply(reply) => Body::VoteReply(VoteReplyHeader {
            vote: vote_to_wire(&reply.vote),
            vote_granted: reply.vote_granted,
            last_log_id: opt_log_id_to_wire(reply.last_log_id.as_ref()),
        }),
        Message::SnapshotChunk(chunk) => {
            Body::SnapshotChunk(chunk_to_wire(chunk, blocks, padded_tail)?)
        }
        Message::SnapshotReply(vote) => Body::SnapshotReply(vote.as_ref().map(vote_to_wire)),
        Message::TransferLeader(request) => Body::TransferLeader(TransferLeaderHeader {
            from_leader: vote_to_wire(request.from_leader()),
            to_node_id: *request.to_node_id(),
            last_log_id: opt_log_id_to_wire(request.last_log_id()),
        }),
        Message::TransferLeaderReply(reply) => {
            Body::TransferLeaderReply(transfer_reply_to_wire(reply))
        }
        Message::Client(request) => Body::Client(client_op_to_wire(request, blocks)?),
        Message::ClientReply(reply) => Body::ClientReply(client_reply_to_wire(reply, blocks)),
        Message::Fault(fault) => Body::Fault(FaultHeader {
            code: fault.code as u16,
            message: fault.message.clone(),
        }),
    })
}

fn body_from_wire<RT: AsyncRuntime>(
    body: Body,
    blocks: &mut BlockCursor<'_>,
) -> Result<Message<RT>, WireError> {
    Ok(match body {
        Body::AppendEntries(header) => Message::AppendEntries(append_from_wire(header, blocks)?),
        Body::AppendEntriesReply(header) => {
            Message::AppendEntriesReply(append_reply_from_wire(header))
        }
        Body::Vote(header) => Message::Vote {
            pre_vote: header.pre_vote,
            request: VoteRequest {
                vote: vote_from_wire(header.vote),
                last_log_id: opt_log_id_from_wire(header.last_log_id),
                leadership_transfer: header.leadership_transfer,
            },
        },
        Body::VoteReply(header) => Message::VoteReply(VoteResponse {
            vote: vote_from_wire(header.vote),
            vote_granted: header.vote_granted,
            last_log_id: opt_log_id_from_wire(header.last_log_id),
        }),
        Body::SnapshotChunk(header) => Message::SnapshotChunk(chunk_from_wire(header, blocks)?),
        Body::SnapshotReply(vote) => Message::SnapshotReply(vote.map(vote_from_wire)),
        Body::TransferLeader(header) => Message::TransferLeader(TransferLeaderRequest::new(
            vote_from_wire(header.from_leader),
            header.to_node_id,
            opt_log_id_from_wire(header.last_log_id),
        )),
        Body::TransferLeaderReply(header) => {
            Message::TransferLeaderReply(transfer_reply_from_wire(header))
        }
        Body::Client(header) => Message::Client(client_op_from_wire(header, blocks)?),
        Body::ClientReply(header) => Message::ClientReply(client_reply_from_wire(header, blocks)?),
        Body::Fault(header) => Message::Fault(Fault {
            code: FaultCode::from_wire(header.code)?,
            message: text_from_wire(header.message)?,
        }),
    })
}

fn append_to_wire<'a, RT: AsyncRuntime>(
    request: &'a AppendEntriesRequest<TypeConfig<RT>>,
    blocks: &mut Vec<&'a [u8]>,
) -> Result<AppendEntriesHeader, WireError> {
    if request.entries.len() > APPEND_ENTRIES_MAX as usize {
        return Err(WireError::Encode(format!(
            "{} entries exceed the {APPEND_ENTRIES_MAX}-entry limit",
            request.entries.len()
        )));
    }
    Ok(AppendEntriesHeader {
        vote: vote_to_wire(&request.vote),
        prev_log_id: opt_log_id_to_wire(request.prev_log_id.as_ref()),
        leader_commit: opt_log_id_to_wire(request.leader_commit.as_ref()),
        entries: request
            .entries
            .iter()
            .map(|entry| entry_to_wire(entry, blocks))
            .collect(),
    })
}

fn append_from_wire<RT: AsyncRuntime>(
    header: AppendEntriesHeader,
    blocks: &mut BlockCursor<'_>,
) -> Result<AppendEntriesRequest<TypeConfig<RT>>, WireError> {
    if header.entries.len() > APPEND_ENTRIES_MAX as usize {
        return Err(malformed(format!("{} entries", header.entries.len())));
    }
    let mut entries = Vec::with_capacity(header.entries.len());
    for entry in header.entries {
        entries.push(entry_from_wire(entry, blocks)?);
    }
    Ok(AppendEntriesRequest {
        vote: vote_from_wire(header.vote),
        prev_log_id: opt_log_id_from_wire(header.prev_log_id),
        leader_commit: opt_log_id_from_wire(header.leader_commit),
        entries,
    })
}

fn append_reply_to_wire<RT: AsyncRuntime>(
    reply: &AppendEntriesResponse<TypeConfig<RT>>,
) -> AppendReplyHeader {
    match reply {
        AppendEntriesResponse::Success => AppendReplyHeader::Success,
        AppendEntriesResponse::PartialSuccess(log_id) => {
            AppendReplyHeader::PartialSuccess(opt_log_id_to_wire(log_id.as_ref()))
        }
        AppendEntriesResponse::Conflict => AppendReplyHeader::Conflict,
        AppendEntriesResponse::HigherVote(vote) => {
            AppendReplyHeader::HigherVote(vote_to_wire(vote))
        }
    }
}

fn append_reply_from_wire<RT: AsyncRuntime>(
    header: AppendReplyHeader,
) -> AppendEntriesResponse<TypeConfig<RT>> {
    match header {
        AppendReplyHeader::Success => AppendEntriesResponse::Success,
        AppendReplyHeader::PartialSuccess(log_id) => {
            AppendEntriesResponse::PartialSuccess(log_id.map(log_id_from_wire))
        }
        AppendReplyHeader::Conflict => AppendEntriesResponse::Conflict,
        AppendReplyHeader::HigherVote(vote) => {
            AppendEntriesResponse::HigherVote(vote_from_wire(vote))
        }
    }
}

fn chunk_to_wire<'a>(
    chunk: &'a SnapshotChunk,
    blocks: &mut Vec<&'a [u8]>,
    padded_tail: &mut Vec<u8>,
) -> Result<SnapshotChunkHeader, WireError> {
    let chunk_bytes = u32::try_from(chunk.data.len())
        .ok()
        .filter(|len| *len <= SNAPSHOT_CHUNK_BYTES)
        .ok_or_else(|| WireError::Encode(format!("chunk of {} bytes", chunk.data.len())))?;
    let mut whole = chunk.data.chunks_exact(BLOCK_BYTES);
    blocks.extend(whole.by_ref());
    let tail = whole.remainder();
    if !tail.is_empty() {
        padded_tail.extend_from_slice(tail);
        padded_tail.resize(BLOCK_BYTES, 0);
    }
    Ok(SnapshotChunkHeader {
        vote: vote_to_wire(&chunk.vote),
        meta: snapshot_meta_to_wire(&chunk.meta),
        offset: chunk.offset,
        total_bytes: chunk.total_bytes,
        chunk_bytes,
        done: chunk.done,
    })
}

fn chunk_from_wire(
    header: SnapshotChunkHeader,
    blocks: &mut BlockCursor<'_>,
) -> Result<SnapshotChunk, WireError> {
    let end = header.offset.checked_add(u64::from(header.chunk_bytes));
    let fits = end.is_some_and(|end| end <= header.total_bytes);
    if header.chunk_bytes > SNAPSHOT_CHUNK_BYTES || header.total_bytes > SNAPSHOT_BYTES_MAX || !fits
    {
        return Err(malformed("snapshot chunk exceeds its limits"));
    }
    if header.done && end != Some(header.total_bytes) {
        return Err(malformed("last snapshot chunk does not end the snapshot"));
    }
    let block_count = (header.chunk_bytes as usize).div_ceil(BLOCK_BYTES) as u32;
    let mut data = blocks.take(block_count)?;
    if data[header.chunk_bytes as usize..].iter().any(|b| *b != 0) {
        return Err(WireError::Padding);
    }
    data.truncate(header.chunk_bytes as usize);
    Ok(SnapshotChunk {
        vote: vote_from_wire(header.vote),
        meta: snapshot_meta_from_wire(header.meta)?,
        offset: header.offset,
        total_bytes: header.total_bytes,
        done: header.done,
        data,
    })
}

fn transfer_reply_to_wire<RT: AsyncRuntime>(
    reply: &TransferLeaderResponse<TypeConfig<RT>>,
) -> TransferReplyHeader {
    match reply {
        Ok(()) => TransferReplyHeader::Accepted,
        Err(TransferLeaderError::VoteChanged { expected, actual }) => {
            TransferReplyHeader::VoteChanged {
                expected: vote_to_wire(expected),
                actual: vote_to_wire(actual),
            }
        }
        Err(TransferLeaderError::LogNotFlushed { expected, actual }) => {
            TransferReplyHeader::LogNotFlushed {
                expected: opt_log_id_to_wire(expected.as_ref()),
                actual: opt_log_id_to_wire(actual.as_ref()),
            }
        }
    }
}

fn transfer_reply_from_wire<RT: AsyncRuntime>(
    header: TransferReplyHeader,
) -> TransferLeaderResponse<TypeConfig<RT>> {
    match header {
        TransferReplyHeader::Accepted => Ok(()),
        TransferReplyHeader::VoteChanged { expected, actual } => {
            Err(TransferLeaderError::VoteChanged {
                expected: vote_from_wire(expected),
                actual: vote_from_wire(actual),
            })
        }
        TransferReplyHeader::LogNotFlushed { expected, actual } => {
            Err(TransferLeaderError::LogNotFlushed {
                expected: opt_log_id_from_wire(expected),
                actual: opt_log_id_from_wire(actual),
            })
        }
    }
}

fn client_reply_to_wire<'a>(
    reply: &'a ClientReply,
    blocks: &mut Vec<&'a [u8]>,
) -> ClientReplyHeader {
    match reply {
        ClientReply::Applied {
            log_index,
            response,
        } => ClientReplyHeader::Applied {
            log_index: *log_index,
            response: response_to_wire(response),
        },
        ClientReply::Read(data) => {
            blocks.extend(data.blocks());
            ClientReplyHeader::Read {
                block_count: data.block_count(),
            }
        }
        ClientReply::Redirect { leader } => ClientReplyHeader::Redirect { leader: *leader },
        ClientReply::Failed { message } => ClientReplyHeader::Failed {
            message: message.clone(),
        },
        ClientReply::Done => ClientReplyHeader::Done,
        ClientReply::Status(status) => ClientReplyHeader::Status(VolumeStatusHeader {
            node: status.node,
            leader: status.leader,
            voters: status.voters.clone(),
            learners: status.learners.clone(),
            applied_index: status.applied_index,
            size_blocks: status.size_blocks,
            blocks_nonzero: status.blocks_nonzero,
            digest: status.digest,
        }),
        ClientReply::LogFloor { index } => ClientReplyHeader::LogFloor { index: *index },
        ClientReply::InSync { nodes } => ClientReplyHeader::InSync {
            nodes: nodes.clone(),
        },
        ClientReply::Diverged { voters } => ClientReplyHeader::Diverged {
            voters: voters.clone(),
        },
        ClientReply::Running { what } => ClientReplyHeader::Running { what: what.clone() },
        ClientReply::SnapshotPage(None) => ClientReplyHeader::SnapshotPage(None),
        ClientReply::SnapshotPage(Some(page)) => {
            if let Some(data) = &page.data {
                blocks.extend(data.blocks());
            }
            ClientReplyHeader::SnapshotPage(Some(SnapshotPageHeader {
                log_index: page.log_index,
                size_blocks: page.size_blocks,
                indexes: page.indexes.clone(),
                next: page.next,
            }))
        }
    }
}

fn client_reply_from_wire(
    header: ClientReplyHeader,
    blocks: &mut BlockCursor<'_>,
) -> Result<ClientReply, WireError> {
    Ok(match header {
        ClientReplyHeader::Applied {
            log_index,
            response,
        } => ClientReply::Applied {
            log_index,
            response: response_from_wire(response),
        },
        ClientReplyHeader::Read { block_count } => {
            let data = BlockData::new(blocks.take(block_count)?)
                .map_err(|err| malformed(format!("read payload: {err}")))?;
            ClientReply::Read(data)
        }
        ClientReplyHeader::Redirect { leader } => ClientReply::Redirect { leader },
        ClientReplyHeader::Failed { message } => ClientReply::Failed {
            message: text_from_wire(message)?,
        },
        ClientReplyHeader::Done => ClientReply::Done,
        ClientReplyHeader::Status(header) => ClientReply::Status(VolumeStatus {
            node: header.node,
            leader: header.leader,
            voters: members_from_wire(header.voters)?,
            learners: members_from_wire(header.learners)?,
            applied_index: header.applied_index,
            size_blocks: header.size_blocks,
            blocks_nonzero: header.blocks_nonzero,
            digest: header.digest,
        }),
        ClientReplyHeader::LogFloor { index } => ClientReply::LogFloor { index },
        ClientReplyHeader::InSync { nodes } => ClientReply::InSync {
            nodes: members_from_wire(nodes)?,
        },
        ClientReplyHeader::Diverged { voters } => ClientReply::Diverged {
            voters: members_from_wire(voters)?,
        },
        ClientReplyHeader::Running { what } => ClientReply::Running { what },
        ClientReplyHeader::SnapshotPage(None) => ClientReply::SnapshotPage(None),
        ClientReplyHeader::SnapshotPage(Some(header)) => {
            let count = header.indexes.len();
            let ascending = header.indexes.windows(2).all(|w| w[0] < w[1]);
            let in_range = header
                .indexes
                .last()
                .is_none_or(|l| *l < header.size_blocks);
            if count > SNAPSHOT_READ_BLOCKS_MAX as usize || !ascending || !in_range {
                return Err(malformed("snapshot page indexes out of order or range"));
            }
            let data = if count == 0 {
                None
            } else {
                Some(
                    BlockData::new(blocks.take(count as u32)?)
                        .map_err(|err| malformed(format!("snapshot page: {err}")))?,
                )
            };
            ClientReply::SnapshotPage(Some(SnapshotPage {
                log_index: header.log_index,
                size_blocks: header.size_blocks,
                indexes: header.indexes,
                data,
                next: header.next,
            }))
        }
    })
}

fn members_to_wire(members: &[NodeId]) -> Result<Vec<u64>, WireError> {
    if members.len() > MEMBERS_MAX as usize {
        return Err(WireError::Encode(format!(
            "{} members exceed the {MEMBERS_MAX}-member limit",
            members.len()
        )));
    }
    Ok(members.to_vec())
}

/// Members from the wire: at most [`MEMBERS_MAX`], none repeated.
fn members_from_wire(members: Vec<u64>) -> Result<Vec<NodeId>, WireError> {
    let distinct: std::collections::BTreeSet<u64> = members.iter().copied().collect();
    if members.len() > MEMBERS_MAX as usize || distinct.len() != members.len() {
        return Err(malformed("member list repeats or exceeds its limit"));
    }
    Ok(members)
}

fn client_op_to_wire<'a>(
    request: &'a ClientRequest,
    blocks: &mut Vec<&'a [u8]>,
) -> Result<ClientOpHeader, WireError> {
    Ok(match request {
        ClientRequest::Command(command) => {
            ClientOpHeader::Command(command_to_wire(command, blocks))
        }
        ClientRequest::Read {
            offset_blocks,
            len_blocks,
        } => ClientOpHeader::Read {
            offset_blocks: *offset_blocks,
            len_blocks: *len_blocks,
        },
        ClientRequest::CreateVolume {
            size_blocks,
            members,
        } => ClientOpHeader::CreateVolume {
            size_blocks: *size_blocks,
            members: members_to_wire(members)?,
        },
        ClientRequest::OpenReplica {
            size_blocks,
            members,
        } => ClientOpHeader::OpenReplica {
            size_blocks: *size_blocks,
            members: members_to_wire(members)?,
        },
        ClientRequest::DeleteVolume => ClientOpHeader::DeleteVolume,
        ClientRequest::DropReplica => ClientOpHeader::DropReplica,
        ClientRequest::Status => ClientOpHeader::Status,
        ClientRequest::LogFloor => ClientOpHeader::LogFloor,
        ClientRequest::ReplaceMember {
            size_blocks,
            members,
            dead,
            replacement,
        } => ClientOpHeader::ReplaceMember {
            size_blocks: *size_blocks,
            members: members_to_wire(members)?,
            dead: *dead,
            replacement: *replacement,
        },
        ClientRequest::InSync { members } => ClientOpHeader::InSync {
            members: members_to_wire(members)?,
        },
        ClientRequest::ReadSnapshot {
            snapshot_id,
            from_block,
            max_blocks,
        } => ClientOpHeader::ReadSnapshot {
            snapshot_id: *snapshot_id,
            from_block: *from_block,
            max_blocks: *max_blocks,
        },
    })
}

fn client_op_from_wire(
    header: ClientOpHeader,
    blocks: &mut BlockCursor<'_>,
) -> Result<ClientRequest, WireError> {
    Ok(match header {
        ClientOpHeader::Command(command) => {
            ClientRequest::Command(command_from_wire(command, blocks)?)
        }
        ClientOpHeader::Read {
            offset_blocks,
            len_blocks,
        } => ClientRequest::Read {
            offset_blocks,
            len_blocks,
        },
        ClientOpHeader::CreateVolume {
            size_blocks,
            members,
        } => ClientRequest::CreateVolume {
            size_blocks,
            members: members_from_wire(members)?,
        },
        ClientOpHeader::OpenReplica {
            size_blocks,
            members,
        } => ClientRequest::OpenReplica {
            size_blocks,
            members: members_from_wire(members)?,
        },
        ClientOpHeader::DeleteVolume => ClientRequest::DeleteVolume,
        ClientOpHeader::DropReplica => ClientRequest::DropReplica,
        ClientOpHeader::Status => ClientRequest::Status,
        ClientOpHeader::LogFloor => ClientRequest::LogFloor,
        ClientOpHeader::ReplaceMember {
            size_blocks,
            members,
            dead,
            replacement,
        } => ClientRequest::ReplaceMember {
            size_blocks,
            members: members_from_wire(members)?,
            dead,
            replacement,
        },
        ClientOpHeader::InSync { members } => ClientRequest::InSync {
            members: members_from_wire(members)?,
        },
        ClientOpHeader::ReadSnapshot {
            snapshot_id,
            from_block,
            max_blocks,
        } => {
            if max_blocks == 0 || max_blocks > SNAPSHOT_READ_BLOCKS_MAX {
                return Err(malformed(format!(
                    "snapshot read of {max_blocks} blocks (1..={SNAPSHOT_READ_BLOCKS_MAX})"
                )));
            }
            ClientRequest::ReadSnapshot {
                snapshot_id,
                from_block,
                max_blocks,
            }
        }
    })
}
