//! The volume host: one per node, it runs every volume replica the node
//! holds and answers every request that reaches the node.
//!
//! Model: a [`VolumeHost`] owns the node's [`NodeStorage`](crate::storage::NodeStorage) (one kvstore for
//! all groups), a [`GroupRouter`](crate::raft::router::GroupRouter) with the
//! `Raft` handle of each hosted replica, and the node's [`Transport`](crate::env::Transport). It is
//! generic over the async runtime and the transport, so the same code runs
//! on tokio + QUIC in production and on the simulator's runtime and network.
//!
//! Contracts:
//! - Catalogue: every replica the node hosts is recorded durably in a
//!   catalogue namespace of the node's kvstore ([`catalogue`]) *before* its
//!   group starts; [`VolumeHost::open_existing`] reopens exactly those at
//!   restart. Dropping a replica removes its groups' namespaces and its
//!   catalogue entry in one atomic batch.
//! - Create: [`VolumeHost::create_volume`] is idempotent. The coordinating
//!   node (whichever received the request) asks each member to open an
//!   empty replica ([`ClientRequest::OpenReplica`](crate::wire::ClientRequest::OpenReplica)); each member records it,
//!   starts the group and initializes it with the *same* membership, which
//!   openraft allows (identical initial configurations cannot split).
//! - Writes go through the group's leader: committed on a majority (durable
//!   there) before they are acknowledged. Reads are linearizable: the
//!   leader confirms its leadership (read-index) and waits until it applied
//!   that index before reading.
//! - Forwarding: a client request that reaches a follower is forwarded to
//!   the leader, following at most [`FORWARD_HOPS_MAX`](crate::limits::FORWARD_HOPS_MAX) redirects, each hop
//!   bounded by [`FORWARD_TIMEOUT_MS`](crate::limits::FORWARD_TIMEOUT_MS) and the whole forward (the
//!   local serve included) by [`FORWARD_DEADLINE_MS`](crate::limits::FORWARD_DEADLINE_MS), which
//!   clients outlast per attempt; when no leader is known the client
//!   gets [`ClientReply::Redirect`](crate::wire::ClientReply::Redirect) and retries. Requests from other nodes
//!   (forwarded client operations) are answered locally, never forwarded
//!   again, so forwarding cannot loop.
//! - Callers: ids in [`HostConfig::peers`] (and the node itself) are nodes;
//!   any other authenticated caller is a client and may only send client
//!   requests on [`Lane::Client`](crate::env::Lane::Client), never Raft
//!   traffic or replica control.
//! - [`VolumeHost::status`] reports a replica's leader, membership, applied
//!   index and a digest of its block map at that index
//!   ([`crate::wire::VolumeStatus`]); replicas at the same applied index
//!   with equal digests read identically.
//! - Replacement: [`VolumeHost::open_learner`] (or `OpenReplica` with no
//!   members) opens an empty replica without initializing its group; the
//!   leader then adds it as a learner. The host implements the
//!   coordinator's [`GroupAdmin`](crate::control::GroupAdmin) (`admin_impl`).
//! - DR snapshots ([`VolumeHost::create_snapshot`],
//!   [`VolumeHost::read_snapshot`]): taken through the leader, read from any
//!   replica holding them (`dr_snapshots`).
//! - Witness: a witness node's host keeps each group's log and metadata
//!   but no blocks, serves no I/O, and leads only to hand entries on
//!   (`witness`, [`HostConfig::witness`]).
//! - Deterministic: no wall clock, no spawning, ordered maps only; every
//!   wait is on the runtime `RT`.

mod admin_impl;
pub mod catalogue;
mod dr_snapshots;
mod group_change;
mod handler;
mod session;
mod status;
mod volume_host;
mod witness;

use std::collections::BTreeSet;
use std::sync::Arc;

pub use catalogue::{Catalogue, KIND_HOST_CATALOGUE};
pub use handler::HostHandler;
pub use session::{RequestId, SessionWindow};
pub use volume_host::VolumeHost;
pub use witness::WitnessPass;

use crate::env::NodeId;
use crate::limits::{
    ELECTION_TIMEOUT_MAX_MS, ELECTION_TIMEOUT_MIN_MS, HEARTBEAT_INTERVAL_MS,
    ORPHAN_LEARNER_GRACE_MS, VOLUMES_MAX, WITNESS_ELECTION_FACTOR,
};
use crate::raft::network::CallError;
use crate::storage::StorageError;
use crate::volume::{VolumeId, VolumeResponse};

/// What a node's host needs to know besides its storage and transport.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// This node.
    pub node: NodeId,
    /// The other nodes of the cluster (not clients).
    pub peers: BTreeSet<NodeId>,
    /// The Raft configuration of every group.
    pub raft: Arc<openraft::Config>,
    /// Whether this is a witness node (see `witness`): its storage must be
    /// a witness's too.
    pub witness: bool,
    /// How long a learner outside a group's voters stays before this
    /// node, leading the group, removes it ([`ORPHAN_LEARNER_GRACE_MS`];
    /// the simulator shortens it).
    pub orphan_grace_ms: u64,
    /// A test fault, 0 in production: a repair run here waits this long
    /// between its learner's catch-up and its promotion, so that a test
    /// can act mid-repair (kill the coordinator).
    pub promotion_hold_ms: u64,
}

/// The Raft configuration every group starts from (not yet validated).
///
/// `enable_leader_restore` is off: openraft would otherwise let a leader
/// that restarts before anyone else campaigns resume leading its old term
/// at once, with the committed log id it read back from disk. Ours lags:
/// `save_committed` is not awaited and apply batches are not awaited (see
/// `storage`), so the restored leader can serve a read-index read below an
/// entry it had acknowledged before the crash — a stale read of an
/// acknowledged write (found by the simulator: `metro-sim run --seed 94
/// --env`). Without it, a restarted leader campaigns for a new term and
/// commits a blank entry of that term before it serves anything.
pub fn base_raft_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "metro".into(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        enable_leader_restore: Some(false),
        ..Default::default()
    }
}

impl HostConfig {
    /// The default configuration for `node` among `peers`.
    pub fn new(node: NodeId, peers: impl IntoIterator<Item = NodeId>) -> Result<Self, HostError> {
        let raft = base_raft_config()
            .validate()
            .map_err(|err| HostError::Invalid(format!("raft config: {err}")))?;
        let peers = peers.into_iter().filter(|peer| *peer != node).collect();
        Ok(Self {
            node,
            peers,
            raft: Arc::new(raft),
            witness: false,
            orphan_grace_ms: ORPHAN_LEARNER_GRACE_MS,
            promotion_hold_ms: 0,
        })
    }

    /// This configuration for a witness node: elections time out
    /// [`WITNESS_ELECTION_FACTOR`] times later, and no log entry is purged
    /// automatically after a snapshot (the witness purges to the leader's
    /// log floor only; see `witness`).
    pub fn into_witness(self) -> Result<Self, HostError> {
        let raft = openraft::Config {
            election_timeout_min: self.raft.election_timeout_min * WITNESS_ELECTION_FACTOR,
            election_timeout_max: self.raft.election_timeout_max * WITNESS_ELECTION_FACTOR,
            max_in_snapshot_log_to_keep: u64::MAX,
            ..(*self.raft).clone()
        };
        let raft = raft
            .validate()
            .map_err(|err| HostError::Invalid(format!("raft config: {err}")))?;
        Ok(Self {
            raft: Arc::new(raft),
            witness: true,
            ..self
        })
    }

    /// Whether `id` is a node of the cluster (this one or a peer).
    pub fn is_node(&self, id: NodeId) -> bool {
        id == self.node || self.peers.contains(&id)
    }
}

/// Errors of the volume host, split by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The request is wrong (bad members, size, range): do not retry.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No replica of the volume on this node (or, for a forwarded request,
    /// on any node asked).
    #[error("no replica of {0} here")]
    UnknownVolume(VolumeId),
    /// The node already hosts [`VOLUMES_MAX`] volumes.
    #[error("this node hosts the maximum of {VOLUMES_MAX} volumes")]
    Full,
    /// No leader is known now: back off and retry.
    #[error("{0} has no known leader now")]
    NoLeader(VolumeId),
    /// A peer could not be reached or failed the call: retry.
    #[error("node {peer}: {reason}")]
    Peer { peer: NodeId, reason: String },
    /// The group or the leader failed the operation: retry.
    #[error("{volume}: {reason}")]
    Failed { volume: VolumeId, reason: String },
    /// The state machine refused the command (deterministically on every
    /// replica, e.g. a range past the end): do not retry.
    #[error("{volume} refused the command: {response:?}")]
    Refused {
        volume: VolumeId,
        response: VolumeResponse,
    },
    /// The node's storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The catalogue holds a value that does not decode.
    #[error("corrupt catalogue entry of {volume}: {reason}")]
    Catalogue { volume: VolumeId, reason: String },
}

impl HostError {
    fn peer(peer: NodeId, err: &CallError) -> Self {
        Self::Peer {
            peer,
            reason: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restarted leader must not resume its old term: its persisted
    /// committed log id may lag what it acknowledged, so it would serve
    /// stale reads (see [`base_raft_config`]).
    #[test]
    fn a_restarted_leader_campaigns_instead_of_restoring() {
        let config = HostConfig::new(1, [1, 2, 3]).expect("the default config is valid");
        assert_eq!(config.raft.enable_leader_restore, Some(false));
        assert_eq!(base_raft_config().enable_leader_restore, Some(false));
    }
}
