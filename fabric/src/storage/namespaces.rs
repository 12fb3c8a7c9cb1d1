//! Where a volume group's state lives in the node's kvstore: one place that
//! names every namespace kind and every metadata key.
//!
//! | kind | id | keys | values |
//! |---|---|---|---|
//! | [`KIND_RAFT_LOG`] | volume | log index | one encoded log entry (see `codec.rs`) |
//! | [`KIND_RAFT_META`] | volume | [`RAFT_KEY_VOTE`], [`RAFT_KEY_COMMITTED`], [`RAFT_KEY_LAST_PURGED`] | fixed width |
//! | [`KIND_SM_META`] | volume | `SM_KEY_*` | fixed width, membership as a wire frame |
//! | [`KIND_DR_SNAPSHOTS`] | volume | snapshot id | one DR snapshot record (see `dr_catalogue.rs`) |
//! | [`KIND_SESSIONS`] | volume | session id | one session record (see `sessions.rs`) |
//! | [`KIND_BLOCK_MAP_BASE`] + slot | volume | block index | one 4 KiB block |
//!
//! A volume's block map lives in one of [`BLOCK_MAP_SLOTS`] slot namespaces;
//! [`SM_KEY_ACTIVE_SLOT`] names the live one. Snapshots being received are
//! staged in another slot and swapped in by rewriting that pointer in the
//! same batch that drops the old slot (see `snapshot.rs`).

use metro_kvstore::Namespace;

use crate::volume::VolumeId;

/// A group's Raft log: key = log index.
pub const KIND_RAFT_LOG: u8 = 1;
/// A group's Raft metadata: vote, committed, last purged log id.
pub const KIND_RAFT_META: u8 = 2;
/// A volume's state-machine metadata: applied log id, membership, size,
/// active block-map slot, current snapshot.
pub const KIND_SM_META: u8 = 3;
/// A volume's DR snapshot catalogue: key = snapshot id.
pub const KIND_DR_SNAPSHOTS: u8 = 4;
/// A volume's client sessions: key = session id (see `sessions.rs`).
pub const KIND_SESSIONS: u8 = 5;
/// The first of the block-map slot kinds; slot `s` is kind `BASE + s`.
pub const KIND_BLOCK_MAP_BASE: u8 = 16;
/// How many block-map slots a volume has: the live one, one being received,
/// one abandoned transfer whose last write may still be in flight, and one
/// spare so that consecutive transfers never reuse a slot.
pub const BLOCK_MAP_SLOTS: u8 = 4;

/// Raft metadata key: the vote (`codec::encode_vote`).
pub const RAFT_KEY_VOTE: u64 = 1;
/// Raft metadata key: the committed log id (`codec::encode_log_id`).
pub const RAFT_KEY_COMMITTED: u64 = 2;
/// Raft metadata key: the last purged log id (`codec::encode_log_id`).
pub const RAFT_KEY_LAST_PURGED: u64 = 3;

/// State-machine key: the last applied log id.
pub const SM_KEY_APPLIED: u64 = 1;
/// State-machine key: the last applied membership (a wire frame).
pub const SM_KEY_MEMBERSHIP: u64 = 2;
/// State-machine key: the volume size in blocks.
pub const SM_KEY_SIZE: u64 = 3;
/// State-machine key: the active block-map slot.
pub const SM_KEY_ACTIVE_SLOT: u64 = 4;
/// State-machine key: the current Raft snapshot (slot, kvstore seq, size).
pub const SM_KEY_SNAPSHOT: u64 = 5;
/// State-machine key: the current Raft snapshot's metadata (a wire frame).
pub const SM_KEY_SNAPSHOT_META: u64 = 6;

/// State-machine key: the session table as of the current Raft snapshot
/// (`SessionTable::encode_all`), written with [`SM_KEY_SNAPSHOT`].
pub const SM_KEY_SNAPSHOT_SESSIONS: u64 = 7;

/// The namespaces of one volume's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupNamespaces {
    pub volume: VolumeId,
}

impl GroupNamespaces {
    pub const fn new(volume: VolumeId) -> Self {
        Self { volume }
    }

    pub const fn raft_log(&self) -> Namespace {
        Namespace::new(KIND_RAFT_LOG, self.volume.0)
    }

    pub const fn raft_meta(&self) -> Namespace {
        Namespace::new(KIND_RAFT_META, self.volume.0)
    }

    pub const fn sm_meta(&self) -> Namespace {
        Namespace::new(KIND_SM_META, self.volume.0)
    }

    pub const fn dr_snapshots(&self) -> Namespace {
        Namespace::new(KIND_DR_SNAPSHOTS, self.volume.0)
    }

    pub const fn sessions(&self) -> Namespace {
        Namespace::new(KIND_SESSIONS, self.volume.0)
    }

    /// The block map in `slot` (`slot < BLOCK_MAP_SLOTS`).
    pub fn block_map(&self, slot: u8) -> Namespace {
        assert!(slot < BLOCK_MAP_SLOTS, "block-map slot {slot} out of range");
        Namespace::new(KIND_BLOCK_MAP_BASE + slot, self.volume.0)
    }
}
