//! The commands a volume's Raft log carries and the state machine's answers.
//!
//! Contract: a [`VolumeCommand`] is what one log entry asks the volume's
//! state machine to do once the entry is committed; applying the same
//! committed sequence of commands to the same starting state always yields
//! the same blocks (commands carry their data, never a reference to local
//! state). Offsets and lengths count [`BLOCK_BYTES`](super::BLOCK_BYTES)
//! blocks; block payloads are whole blocks.

use std::fmt;
use std::sync::Arc;

use super::{BLOCK_BYTES, BLOCK_BYTES_U64};
use crate::limits::WRITE_BLOCKS_MAX;

/// Errors building a [`BlockData`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockDataError {
    /// The payload is not a whole number of blocks.
    #[error("payload of {len} bytes is not a multiple of the {BLOCK_BYTES}-byte block")]
    Partial { len: u64 },
    /// The payload holds no block at all.
    #[error("payload holds no block")]
    Empty,
    /// The payload holds more than [`WRITE_BLOCKS_MAX`] blocks.
    #[error("payload of {blocks} blocks exceeds the {WRITE_BLOCKS_MAX}-block limit")]
    TooLarge { blocks: u64 },
}

/// One or more whole blocks of data, cheap to clone (log entries are cloned
/// by the Raft core and by log readers).
///
/// Invariant: `1 <= len / BLOCK_BYTES <= WRITE_BLOCKS_MAX` and
/// `len % BLOCK_BYTES == 0`.
#[derive(Clone, PartialEq, Eq)]
pub struct BlockData(Arc<[u8]>);

impl BlockData {
    /// Wraps `bytes`, checking that it is between one and
    /// [`WRITE_BLOCKS_MAX`] whole blocks.
    pub fn new(bytes: Vec<u8>) -> Result<Self, BlockDataError> {
        let len = bytes.len() as u64;
        if len == 0 {
            return Err(BlockDataError::Empty);
        }
        if !len.is_multiple_of(BLOCK_BYTES_U64) {
            return Err(BlockDataError::Partial { len });
        }
        let blocks = len / BLOCK_BYTES_U64;
        if blocks > u64::from(WRITE_BLOCKS_MAX) {
            return Err(BlockDataError::TooLarge { blocks });
        }
        Ok(Self(bytes.into()))
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// How many blocks the payload holds.
    pub fn block_count(&self) -> u32 {
        (self.0.len() / BLOCK_BYTES) as u32
    }

    /// The payload split into its blocks, in order.
    pub fn blocks(&self) -> impl Iterator<Item = &[u8]> {
        self.0.chunks_exact(BLOCK_BYTES)
    }
}

impl fmt::Debug for BlockData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockData({} blocks)", self.block_count())
    }
}

/// What one committed log entry does to a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeCommand {
    /// Writes `data` (whole blocks) starting at block `offset_blocks`.
    Write { offset_blocks: u64, data: BlockData },
    /// Discards `len_blocks` blocks from `offset_blocks`: they read as zeroes
    /// afterwards and may release their space.
    Trim { offset_blocks: u64, len_blocks: u64 },
    /// Makes `len_blocks` blocks from `offset_blocks` read as zeroes.
    WriteZeroes { offset_blocks: u64, len_blocks: u64 },
    /// Sets the volume's size; blocks past a shrunk end are discarded.
    Resize { size_blocks: u64 },
    /// Takes the crash-consistent snapshot `snapshot_id` at this entry's log
    /// index.
    CreateSnapshot { snapshot_id: u64 },
    /// Deletes the snapshot `snapshot_id`.
    DeleteSnapshot { snapshot_id: u64 },
    /// Opens a client session; its id is this entry's log index (the
    /// `log_index` the client is answered with). See `storage/sessions.rs`.
    RegisterSession,
    /// A block command of a client session, applied at most once.
    Once(OnceCommand),
}

/// A block command (`Write`, `Trim`, `WriteZeroes`) tagged with its client
/// session and request number, so that the state machine applies it at
/// most once however often it is delivered (see `storage/sessions.rs`).
///
/// Invariant (checked by [`OnceCommand::new`]): the session id and request
/// number are positive and the command is a block command (never a nested
/// `Once`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnceCommand {
    session: u64,
    request: u64,
    command: Box<VolumeCommand>,
}

impl OnceCommand {
    /// Tags `command`; `None` unless it is a block command and both ids are
    /// positive.
    pub fn new(session: u64, request: u64, command: VolumeCommand) -> Option<Self> {
        let block = matches!(
            command,
            VolumeCommand::Write { .. }
                | VolumeCommand::Trim { .. }
                | VolumeCommand::WriteZeroes { .. }
        );
        (block && session > 0 && request > 0).then(|| Self {
            session,
            request,
            command: Box::new(command),
        })
    }

    /// The session (the log index that registered it).
    pub fn session(&self) -> u64 {
        self.session
    }

    /// The request number within the session (from 1).
    pub fn request(&self) -> u64 {
        self.request
    }

    /// The block command.
    pub fn command(&self) -> &VolumeCommand {
        &self.command
    }
}

impl VolumeCommand {
    /// The block range `(offset_blocks, len_blocks)` the command changes, if
    /// it changes data blocks.
    pub fn block_range(&self) -> Option<(u64, u64)> {
        match self {
            Self::Write {
                offset_blocks,
                data,
            } => Some((*offset_blocks, u64::from(data.block_count()))),
            Self::Trim {
                offset_blocks,
                len_blocks,
            }
            | Self::WriteZeroes {
                offset_blocks,
                len_blocks,
            } => Some((*offset_blocks, *len_blocks)),
            Self::Once(once) => once.command.block_range(),
            Self::Resize { .. }
            | Self::CreateSnapshot { .. }
            | Self::DeleteSnapshot { .. }
            | Self::RegisterSession => None,
        }
    }
}

impl fmt::Display for VolumeCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Write {
                offset_blocks,
                data,
            } => write!(f, "write@{offset_blocks}+{}", data.block_count()),
            Self::Trim {
                offset_blocks,
                len_blocks,
            } => write!(f, "trim@{offset_blocks}+{len_blocks}"),
            Self::WriteZeroes {
                offset_blocks,
                len_blocks,
            } => write!(f, "write-zeroes@{offset_blocks}+{len_blocks}"),
            Self::Resize { size_blocks } => write!(f, "resize({size_blocks})"),
            Self::CreateSnapshot { snapshot_id } => write!(f, "create-snapshot({snapshot_id})"),
            Self::DeleteSnapshot { snapshot_id } => write!(f, "delete-snapshot({snapshot_id})"),
            Self::RegisterSession => write!(f, "register-session"),
            Self::Once(once) => write!(f, "{}#{}.{}", once.command, once.session, once.request),
        }
    }
}

/// The state machine's answer to one applied [`VolumeCommand`].
///
/// A rejected command is still a committed log entry: every replica rejects
/// it the same way, so the answer is deterministic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeResponse {
    /// The command took effect.
    Applied,
    /// The command's block range ends past the volume's end.
    OutOfRange { size_blocks: u64 },
    /// The named snapshot does not exist (delete) or already exists (create).
    SnapshotConflict { snapshot_id: u64 },
    /// The volume already has `max` snapshots (create).
    SnapshotLimit { max: u64 },
    /// The session is unknown here (evicted, or never registered): nothing
    /// was applied; the client registers a new session, and the outcome of
    /// its requests still in flight under the old one is unknown.
    SessionExpired { session: u64 },
    /// The request is older than the session's window of remembered
    /// requests: a stale duplicate, not applied.
    RequestStale { session: u64, request: u64 },
}
