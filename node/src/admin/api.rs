//! The admin API's JSON bodies, shared by the server ([`super::routes`])
//! and the CLI's client ([`super::client`]). Field names are the API:
//! change them only with a new version prefix.
//!
//! Endpoints (all JSON; errors are [`ApiError`] with a 4xx/5xx status):
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | GET | `/v1/cluster` | → [`ClusterStatus`] |
//! | GET | `/v1/nodes` | → `[`[`NodeView`]`]` |
//! | GET | `/v1/domains` | → `[`[`DomainView`]`]` |
//! | POST | `/v1/domains/{name}/activate` | → [`DomainView`] |
//! | POST | `/v1/domains/{name}/deactivate` | → [`DomainView`] |
//! | GET | `/v1/volumes` | → `[`[`VolumeSummary`]`]` |
//! | POST | `/v1/volumes` | [`CreateVolume`] → 201 [`VolumeSummary`] |
//! | GET | `/v1/volumes/{name}` | → [`VolumeDetail`] |
//! | DELETE | `/v1/volumes/{name}` | → [`Deleted`] |
//! | GET | `/v1/volumes/{name}/snapshots` | → `[`[`SnapshotView`]`]` |
//! | POST | `/v1/volumes/{name}/snapshots` | [`CreateSnapshot`] → 201 [`SnapshotView`] |
//! | DELETE | `/v1/volumes/{name}/snapshots/{snapshot}` | → [`SnapshotView`] (as it was) |
//! | POST | `/v1/volumes/{name}/clone` | [`CloneVolume`] → 201 [`VolumeSummary`] once copied |
//! | GET | `/v1/clones` | → `[`[`CloneProgress`]`]` (this node's clone jobs) |
//! | GET | `/metrics` | → Prometheus text |
//! | GET | `/healthz` | → `ok` |

use metro_fabric::control::{DomainRole, DomainState, Member, MemberHealth, VolumeStatusRecord};
use metro_fabric::env::NodeId;
use serde::{Deserialize, Serialize};

/// Every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A stable machine-readable code (`bad_request`, `not_found`,
    /// `conflict`, `unavailable`, `method_not_allowed`, `internal`).
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// `POST /v1/volumes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateVolume {
    pub name: String,
    /// Whole 4 KiB blocks.
    pub size_bytes: u64,
    /// Data replicas, each in its own data domain (a witness is added by
    /// placement when only two data domains exist).
    pub replicas: u32,
}

/// `POST /v1/volumes/{name}/snapshots`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSnapshot {
    pub snapshot: String,
}

/// `POST /v1/volumes/{name}/clone`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneVolume {
    pub snapshot: String,
    /// The new volume's name.
    pub target: String,
}

/// A volume's crash-consistent snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotView {
    pub name: String,
    /// Its id in the volume's replicated snapshot catalogue.
    pub id: u64,
    pub volume: String,
    /// The volume's log index it was taken at: it holds every write
    /// acknowledged before it was asked for.
    pub log_index: u64,
    /// The volume's size then.
    pub size_bytes: u64,
    pub created_unix_ms: u64,
}

/// One clone job of the answering node (`GET /v1/clones`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneProgress {
    pub target: String,
    pub source: String,
    pub snapshot: String,
    /// `creating` (waiting for the new volume's group), `copying`, `done`,
    /// `failed`.
    pub state: String,
    pub total_blocks: u64,
    /// Blocks of the snapshot looked at so far.
    pub scanned_blocks: u64,
    /// Non-zero blocks written into the target so far.
    pub copied_blocks: u64,
    pub error: Option<String>,
}

/// `DELETE /v1/volumes/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub name: String,
    pub id: u64,
}

/// One volume as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSummary {
    pub name: String,
    pub id: u64,
    pub size_bytes: u64,
    pub replicas: u8,
    /// The desired members (empty until placed).
    pub placement: Vec<Member>,
    /// `pending` (not placed yet), `creating` (placed, group not created
    /// yet), `unknown` (created, health not measured yet, e.g. no leader
    /// now), `healthy`, `degraded`,
    /// `unavailable` (as the coordinator last published).
    pub health: String,
    /// The group's leader as this node knows it (only when it hosts a
    /// replica; `None` otherwise or during an election).
    pub leader: Option<NodeId>,
    /// The coordinator's last placement or group error, if any.
    pub error: Option<String>,
}

/// One replica's progress as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaProgress {
    pub node: NodeId,
    /// Highest log index known replicated there (`None`: nothing yet).
    pub matched_index: Option<u64>,
    /// Leader's last log index minus `matched_index`.
    pub lag_entries: u64,
    pub in_sync: bool,
}

/// This node's replica of a volume (when it hosts one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalReplica {
    pub node: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Per member, only when this node leads (empty otherwise: ask the
    /// leader's admin endpoint).
    pub progress: Vec<ReplicaProgress>,
}

/// `GET /v1/volumes/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDetail {
    #[serde(flatten)]
    pub summary: VolumeSummary,
    /// Per member health as the coordinator last published it.
    pub members: Vec<MemberHealth>,
    pub status: Option<VolumeStatusRecord>,
    /// The node that answered.
    pub answered_by: NodeId,
    pub local: Option<LocalReplica>,
    /// The volume's snapshots, by name.
    #[serde(default)]
    pub snapshots: Vec<SnapshotView>,
}

/// A node as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: NodeId,
    pub domain: String,
    /// Registered (its lease alive) = up; a placed node without a
    /// registration is listed as down.
    pub up: bool,
    pub quic_addr: String,
    pub nbd_addr: String,
    pub admin_addr: String,
    pub version: String,
    /// Replicas placed on it.
    pub replicas: usize,
}

/// A domain as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainView {
    pub name: String,
    pub role: DomainRole,
    pub state: DomainState,
    pub nodes_up: usize,
    pub nodes_down: usize,
}

/// `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster: String,
    /// The elected coordinator, if any.
    pub coordinator: Option<NodeId>,
    pub answered_by: NodeId,
    pub nodes: Vec<NodeView>,
    pub domains: Vec<DomainView>,
    pub volumes: Vec<VolumeSummary>,
    /// Store keys that did not decode (skipped).
    pub malformed: Vec<String>,
}
