//! The archived header of a frame: plain mirror structs of openraft's and
//! metro's message types, derived with rkyv.
//!
//! Rules: fixed-width integers only (never `usize`); block payloads are not
//! in the header, only their counts (`block_count`), in the order the blocks
//! follow the header; every collection is bounded by a limit in
//! [`super`] and checked on decode. Changing any type here changes the
//! layout: bump [`super::WIRE_VERSION`].

use rkyv::{Archive, Deserialize, Serialize};

/// The root of every header: which volume (Raft group) and what message.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub volume: u64,
    pub body: Body,
}

/// Every message kind on the wire.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Body {
    AppendEntries(AppendEntriesHeader),
    AppendEntriesReply(AppendReplyHeader),
    Vote(VoteHeader),
    VoteReply(VoteReplyHeader),
    SnapshotChunk(SnapshotChunkHeader),
    /// `None`: chunk taken, send the next; `Some`: snapshot installed.
    SnapshotReply(Option<WireVote>),
    TransferLeader(TransferLeaderHeader),
    TransferLeaderReply(TransferReplyHeader),
    Client(ClientOpHeader),
    ClientReply(ClientReplyHeader),
    Fault(FaultHeader),
}

/// openraft's advanced leader id plus the vote's committed flag.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireVote {
    pub term: u64,
    pub node_id: u64,
    pub committed: bool,
}

/// A log id: committed leader id and index.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLogId {
    pub term: u64,
    pub node_id: u64,
    pub index: u64,
}

/// One member's node information.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireNode {
    pub id: u64,
    pub addr: String,
}

/// A (possibly joint) membership configuration.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireMembership {
    pub configs: Vec<Vec<u64>>,
    pub nodes: Vec<WireNode>,
}

/// A volume command; a write's blocks follow the header.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireCommand {
    Write {
        offset_blocks: u64,
        block_count: u32,
    },
    Trim {
        offset_blocks: u64,
        len_blocks: u64,
    },
    WriteZeroes {
        offset_blocks: u64,
        len_blocks: u64,
    },
    Resize {
        size_blocks: u64,
    },
    CreateSnapshot {
        snapshot_id: u64,
    },
    DeleteSnapshot {
        snapshot_id: u64,
    },
    RegisterSession,
    Once {
        session: u64,
        request: u64,
        command: WireBlockCommand,
    },
}

/// The block command a session's `Once` carries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireBlockCommand {
    Write {
        offset_blocks: u64,
        block_count: u32,
    },
    Trim {
        offset_blocks: u64,
        len_blocks: u64,
    },
    WriteZeroes {
        offset_blocks: u64,
        len_blocks: u64,
    },
}

/// A log entry's payload.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WirePayload {
    Blank,
    Normal(WireCommand),
    Membership(WireMembership),
}

/// One log entry.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireEntry {
    pub log_id: WireLogId,
    pub payload: WirePayload,
}

/// openraft's `AppendEntriesRequest`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AppendEntriesHeader {
    pub vote: WireVote,
    pub prev_log_id: Option<WireLogId>,
    pub leader_commit: Option<WireLogId>,
    pub entries: Vec<WireEntry>,
}

/// openraft's `AppendEntriesResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AppendReplyHeader {
    Success,
    PartialSuccess(Option<WireLogId>),
    Conflict,
    HigherVote(WireVote),
}

/// openraft's `VoteRequest`; `pre_vote` picks the pre-vote RPC.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct VoteHeader {
    pub vote: WireVote,
    pub last_log_id: Option<WireLogId>,
    pub leadership_transfer: bool,
    pub pre_vote: bool,
}

/// openraft's `VoteResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct VoteReplyHeader {
    pub vote: WireVote,
    pub vote_granted: bool,
    pub last_log_id: Option<WireLogId>,
}

/// A snapshot's metadata.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireSnapshotMeta {
    pub last_log_id: Option<WireLogId>,
    pub membership_log_id: Option<WireLogId>,
    pub membership: WireMembership,
}

/// One chunk of a snapshot transfer; `chunk_bytes` of data follow in
/// `ceil(chunk_bytes / 4096)` blocks, the last one zero-padded.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunkHeader {
    pub vote: WireVote,
    pub meta: WireSnapshotMeta,
    pub offset: u64,
    pub total_bytes: u64,
    pub chunk_bytes: u32,
    pub done: bool,
}

/// openraft's `TransferLeaderRequest`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TransferLeaderHeader {
    pub from_leader: WireVote,
    pub to_node_id: u64,
    pub last_log_id: Option<WireLogId>,
}

/// openraft's `TransferLeaderResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum TransferReplyHeader {
    Accepted,
    VoteChanged {
        expected: WireVote,
        actual: WireVote,
    },
    LogNotFlushed {
        expected: Option<WireLogId>,
        actual: Option<WireLogId>,
    },
}

/// A client operation forwarded to a volume's leader.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ClientOpHeader {
    Command(WireCommand),
    Read {
        offset_blocks: u64,
        len_blocks: u32,
    },
    // Host-level requests (see `crate::host`); appended after the original
    // variants so that the layout of existing messages is unchanged.
    CreateVolume {
        size_blocks: u64,
        members: Vec<u64>,
    },
    OpenReplica {
        size_blocks: u64,
        members: Vec<u64>,
    },
    DeleteVolume,
    DropReplica,
    Status,
    LogFloor,
    ReplaceMember {
        size_blocks: u64,
        members: Vec<u64>,
        dead: u64,
        replacement: u64,
    },
    InSync {
        members: Vec<u64>,
    },
    ReadSnapshot {
        snapshot_id: u64,
        from_block: u64,
        max_blocks: u32,
    },
}

/// One replica's report on its volume (see `crate::host`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct VolumeStatusHeader {
    pub node: u64,
    pub leader: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub applied_index: Option<u64>,
    pub size_blocks: u64,
    pub blocks_nonzero: u64,
    pub digest: u32,
}

/// The state machine's answer to one command.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireResponse {
    Applied,
    OutOfRange { size_blocks: u64 },
    SnapshotConflict { snapshot_id: u64 },
    SnapshotLimit { max: u64 },
    SessionExpired { session: u64 },
    RequestStale { session: u64, request: u64 },
}

/// The leader's answer to a client operation; read data follows as blocks.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ClientReplyHeader {
    Applied {
        log_index: u64,
        response: WireResponse,
    },
    Read {
        block_count: u32,
    },
    Redirect {
        leader: Option<u64>,
    },
    Failed {
        message: String,
    },
    // Host-level replies, appended (see `ClientOpHeader`).
    Done,
    Status(VolumeStatusHeader),
    LogFloor {
        index: Option<u64>,
    },
    InSync {
        nodes: Vec<u64>,
    },
    SnapshotPage(Option<SnapshotPageHeader>),
    Diverged {
        voters: Vec<u64>,
    },
    Running {
        what: String,
    },
}

/// A DR snapshot page; its blocks follow, one per index.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPageHeader {
    pub log_index: u64,
    pub size_blocks: u64,
    pub indexes: Vec<u64>,
    pub next: Option<u64>,
}

/// An error answer from the receiving host instead of the expected reply.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FaultHeader {
    pub code: u16,
    pub message: String,
}
