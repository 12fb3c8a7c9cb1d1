//! The openraft type configuration of a volume's Raft group.
//!
//! [`TypeConfig`] is generic over the async runtime so that the same groups
//! run on `openraft-rt-tokio` in production and on `openraft-rt-sim` (virtual
//! time, seeded randomness) in the simulator. Every other type in it is
//! concrete and runtime-independent, so log entries, votes and log ids are
//! the same Rust types whatever the runtime (see the aliases below).
//!
//! Snapshot data ([`SnapshotData`]) is a cursor over a pinned (or staged)
//! kvstore view of the volume's block map, read and written in pieces of at
//! most [`crate::limits::SNAPSHOT_CHUNK_BYTES`] (see [`crate::storage::snapshot`]);
//! a snapshot is never whole in memory.

use std::cmp::Ordering;
use std::fmt;
use std::marker::PhantomData;

use openraft::impls::leader_id_adv;
use openraft::{AsyncRuntime, OptionalSend, RaftTypeConfig};

use crate::env::NodeId;
use crate::volume::{VolumeCommand, VolumeResponse};

/// The openraft type configuration of every volume group, for runtime `RT`.
///
/// Zero-sized; `PhantomData<fn() -> RT>` keeps it `Send + Sync + Copy`
/// whatever `RT` is.
pub struct TypeConfig<RT> {
    _runtime: PhantomData<fn() -> RT>,
}

/// The node information stored in a group's membership. Nodes find each
/// other by [`NodeId`] through the `Transport`; `addr` is informational.
pub type RaftNode = openraft::BasicNode;

/// A Raft term.
pub type Term = u64;

/// A leader's identity: term and node (the "advanced" leader id, which lets
/// several candidates share a term).
pub type LeaderId = leader_id_adv::LeaderId<Term, NodeId>;

/// A vote, as stored and as carried by requests.
pub type Vote = openraft::Vote<LeaderId>;

/// The id of one log entry: committed leader id and index.
pub type LogId = openraft::LogId<LeaderId>;

/// The payload of one log entry.
pub type EntryPayload = openraft::EntryPayload<VolumeCommand, NodeId, RaftNode>;

/// One log entry.
pub type Entry = openraft::Entry<LeaderId, EntryPayload>;

/// A group's membership configuration.
pub type Membership = openraft::Membership<NodeId, RaftNode>;

/// A membership configuration with the log id that stored it.
pub type StoredMembership = openraft::StoredMembership<LeaderId, NodeId, RaftNode>;

/// The metadata of a state-machine snapshot.
pub type SnapshotMeta = openraft::SnapshotMeta<LeaderId, NodeId, RaftNode>;

/// The data of a state-machine snapshot: a piece-by-piece cursor over
/// kvstore (see the module docs).
pub type SnapshotData = crate::storage::SnapshotData;

/// A snapshot: metadata and data.
pub type Snapshot = openraft::Snapshot<LeaderId, NodeId, RaftNode, SnapshotData>;

impl<RT> TypeConfig<RT> {
    /// The (only) value of the type.
    pub const fn new() -> Self {
        Self {
            _runtime: PhantomData,
        }
    }
}

impl<RT> Clone for TypeConfig<RT> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<RT> Copy for TypeConfig<RT> {}

impl<RT> Default for TypeConfig<RT> {
    fn default() -> Self {
        Self::new()
    }
}

impl<RT> fmt::Debug for TypeConfig<RT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypeConfig")
    }
}

impl<RT> PartialEq for TypeConfig<RT> {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl<RT> Eq for TypeConfig<RT> {}

impl<RT> PartialOrd for TypeConfig<RT> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<RT> Ord for TypeConfig<RT> {
    fn cmp(&self, _other: &Self) -> Ordering {
        Ordering::Equal
    }
}

impl<RT: AsyncRuntime> RaftTypeConfig for TypeConfig<RT> {
    type D = VolumeCommand;
    type R = VolumeResponse;
    type NodeId = NodeId;
    type Node = RaftNode;
    type Term = Term;
    type LeaderId = LeaderId;
    type Vote = Vote;
    type Payload = EntryPayload;
    type Entry = Entry;
    type AsyncRuntime = RT;
    type Responder<T>
        = openraft::impls::ProgressResponder<Self, T>
    where
        T: OptionalSend + 'static;
    type Batch<T>
        = openraft::impls::InlineBatch<T>
    where
        T: OptionalSend + 'static;
    type ErrorSource = openraft::impls::BoxedErrorSource;
}

/// A volume group's Raft handle on runtime `RT` with state machine `SM`.
pub type VolumeRaft<RT, SM> = openraft::Raft<TypeConfig<RT>, SM>;
