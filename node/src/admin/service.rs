//! [`AdminService`]: the admin API's operations over the desired-state
//! store ([`MetaStore`]) and this node's [`VolumeHost`](metro_fabric::host::VolumeHost).
//!
//! Model: the store holds what an operator asked for; the coordinator
//! places volumes and creates their groups, and publishes each volume's
//! health ([`VolumeStatusRecord`]). This service only writes records and
//! reads them back, plus what this node's own replicas know (leader,
//! indexes, and on a leader each follower's progress).
//!
//! Contracts:
//! - **Create** allocates the volume id from a counter record
//!   (`/metro/<cluster>/counters/volume-id`, the last id handed out) and
//!   writes the counter and the [`VolumeRecord`] in one transaction guarded
//!   by the counter's mod revision and the name's absence: two concurrent
//!   creates never get the same id, a name is never created twice. A lost
//!   race on the counter is retried ([`ID_CAS_ATTEMPTS_MAX`]); a taken name
//!   is a conflict. Ids also stay above every id already recorded.
//! - **Delete** is refused (`unavailable`, nothing changed) while a node of
//!   the placement is not registered. Otherwise it removes the group's
//!   replicas (this node and every peer, idempotent), then the record and
//!   its status in one transaction guarded by the record's mod revision. A
//!   peer that cannot be reached midway fails the call with `unavailable`
//!   and keeps the record (some replicas may be gone): retrying finishes it.
//! - **Snapshots and clones**: see [`super::snapshots`]. Deleting a volume
//!   removes its snapshots' names too (their content goes with the group).
//! - **This node** is held weakly ([`NodeSlot`]): the admin endpoint never
//!   keeps a stopped node's host (and its kvstore) alive. While the slot is
//!   empty, answers that need the host are `unavailable`; the demo re-points
//!   the slot at a running node ([`AdminService::set_node`]).
//! - Errors say what to do: [`ServiceError::Unavailable`] (store or peer
//!   unreachable) means retry; 4xx means the request is wrong as asked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};

use metro_fabric::control::{
    ClusterKeys, DomainInfo, DomainRole, DomainState, Health, LoadedView, Member, StoreError,
    VolumeRecord, VolumeSpec, VolumeStatusRecord, decode, encode, load_view, set_domain_state,
    status_key, status_prefix,
};
use metro_fabric::env::NodeId;
use metro_fabric::host::HostError;
use metro_fabric::limits::REPLICAS_MAX;
use metro_fabric::meta::{Compare, MetaError, MetaStore, TxnOp};
use metro_fabric::volume::{BLOCK_BYTES_U64, VolumeId};
use openraft::rt::WatchReceiver as _;
use parking_lot::RwLock;

use super::api::{
    ClusterStatus, CreateVolume, Deleted, DomainView, LocalReplica, NodeView, ReplicaProgress,
    VolumeDetail, VolumeSummary,
};
use super::metrics::replication_lags;
use super::snapshots::CloneJobs;
use crate::daemon::control_plane::{ControlPlane, ControlStatus, NodeMetaStore};
use crate::daemon::{Node, NodeHost};
use crate::limits::{ID_CAS_ATTEMPTS_MAX, NAME_BYTES_MAX, VOLUME_BYTES_MAX};
use crate::transport::QuicTransport;

/// Why an admin operation failed, by what the caller should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The store or a peer cannot be reached now: retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// The API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::BadRequest(_) => "bad_request",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::Unavailable(_) => "unavailable",
            ServiceError::Internal(_) => "internal",
        }
    }
}

impl From<MetaError> for ServiceError {
    fn from(error: MetaError) -> Self {
        if error.is_unreachable() {
            ServiceError::Unavailable(error.to_string())
        } else {
            ServiceError::Internal(error.to_string())
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Meta(e) => e.into(),
            StoreError::UnknownDomain(name) => {
                ServiceError::NotFound(format!("no domain named {name:?}"))
            }
            StoreError::Contended { .. } => ServiceError::Unavailable(error.to_string()),
            StoreError::Decode(e) => ServiceError::Internal(e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, ServiceError>;

/// Checks a volume or snapshot name: 1..=63 bytes of `a-z`,
/// `0-9`, `-`, `_`, `.`, starting with a letter or digit.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if name.len() > NAME_BYTES_MAX || !ok_first || !ok_rest {
        return Err(ServiceError::BadRequest(format!(
            "{what} name {name:?} must be 1..={NAME_BYTES_MAX} characters of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
        )));
    }
    Ok(())
}

/// Checks a domain name as `metro node run` accepts it (1..=64 of
/// `A-Z a-z 0-9 . _ -`).
pub fn check_domain_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(ServiceError::BadRequest(format!(
            "domain name {name:?} must be 1..=64 characters of A-Z, a-z, 0-9, '.', '_', '-'"
        )));
    }
    Ok(())
}

/// The API's word for a health state.
pub fn health_word(health: &Health) -> &'static str {
    match health {
        Health::Pending => "pending",
        Health::Healthy { .. } => "healthy",
        Health::Degraded { .. } => "degraded",
        Health::Unavailable { .. } => "unavailable",
    }
}

/// The node an admin endpoint answers for, held weakly.
#[derive(Debug, Clone)]
pub struct NodeSlot {
    pub host: Weak<NodeHost>,
    pub transport: Weak<QuicTransport>,
    /// For the control plane's counters in `/metrics`.
    pub control: Weak<dyn ControlStatus>,
}

impl Default for NodeSlot {
    fn default() -> Self {
        Self {
            host: Weak::new(),
            transport: Weak::new(),
            control: Weak::<ControlPlane>::new(),
        }
    }
}

impl NodeSlot {
    pub fn new(host: &Arc<NodeHost>, transport: Option<&Arc<QuicTransport>>) -> Self {
        Self {
            host: Arc::downgrade(host),
            transport: transport.map(Arc::downgrade).unwrap_or_default(),
            control: Weak::<ControlPlane>::new(),
        }
    }

    /// Everything of a running node.
    pub fn of<M: NodeMetaStore>(node: &Node<M>) -> Self {
        let control: Arc<dyn ControlStatus> = node.control.clone();
        Self {
            host: Arc::downgrade(&node.host),
            transport: Arc::downgrade(&node.transport),
            control: Arc::downgrade(&control),
        }
    }
}

/// The admin operations of one node. See the module docs.
#[derive(Debug)]
pub struct AdminService<M: MetaStore> {
    membership: M,
    keys: ClusterKeys,
    cluster: String,
    node: RwLock<NodeSlot>,
    clones: CloneJobs,
}

impl<M: MetaStore> AdminService<M> {
    pub fn new(membership: M, cluster: &str, node: NodeSlot) -> Self {
        Self {
            membership,
            keys: ClusterKeys::new(cluster),
            cluster: cluster.to_owned(),
            node: RwLock::new(node),
            clones: CloneJobs::default(),
        }
    }

    pub(super) fn keys(&self) -> &ClusterKeys {
        &self.keys
    }

    pub(super) fn membership(&self) -> &M {
        &self.membership
    }

    pub(super) fn clones(&self) -> &CloneJobs {
        &self.clones
    }

    /// Answers for `node` from now on.
    pub fn set_node(&self, node: NodeSlot) {
        *self.node.write() = node;
    }

    /// The node answered for, if it still runs.
    pub fn node_slot(&self) -> NodeSlot {
        self.node.read().clone()
    }

    /// This node's host, if it still runs.
    pub fn host(&self) -> Option<Arc<NodeHost>> {
        self.node_slot().host.upgrade()
    }

    pub(super) fn running_host(&self) -> Result<Arc<NodeHost>> {
        self.host().ok_or_else(|| {
            ServiceError::Unavailable("the node behind this admin endpoint is stopped".into())
        })
    }

    /// The id of the node answering (0 when it is stopped).
    fn answering(&self) -> NodeId {
        self.host().map_or(0, |h| h.node())
    }

    /// The id counter's key.
    pub fn id_counter_key(&self) -> String {
        let status = status_prefix(&self.keys);
        let root = status.strip_suffix("status/").unwrap_or(&status);
        format!("{root}counters/volume-id")
    }

    async fn load(&self) -> Result<LoadedView> {
        Ok(load_view(&self.membership, &self.keys).await?)
    }

    fn leader_here(&self, id: u64) -> Option<NodeId> {
        let raft = self.host()?.raft(VolumeId(id))?;
        raft.metrics().borrow_watched().current_leader
    }

    pub(super) fn summary(
        &self,
        record: &VolumeRecord,
        status: Option<&VolumeStatusRecord>,
    ) -> VolumeSummary {
        let placement = record
            .placement
            .as_ref()
            .map(|p| p.members.clone())
            .unwrap_or_default();
        let health = match (&record.placement, status) {
            (None, _) => "pending",
            (Some(_), None) => "creating",
            (Some(_), Some(s)) if !s.group_created => "creating",
            (Some(_), Some(s)) if s.health == Health::Pending => "unknown",
            (Some(_), Some(s)) => health_word(&s.health),
        };
        VolumeSummary {
            name: record.spec.name.clone(),
            id: record.spec.id,
            size_bytes: record.spec.size_bytes,
            replicas: record.spec.replicas,
            placement,
            health: health.to_owned(),
            leader: self.leader_here(record.spec.id),
            error: status.and_then(|s| s.error.clone()),
        }
    }

    /// `GET /v1/volumes`.
    pub async fn list_volumes(&self) -> Result<Vec<VolumeSummary>> {
        let loaded = self.load().await?;
        Ok(self.summaries(&loaded))
    }

    fn summaries(&self, loaded: &LoadedView) -> Vec<VolumeSummary> {
        loaded
            .view
            .volumes
            .values()
            .map(|record| self.summary(record, loaded.statuses.get(&record.spec.name)))
            .collect()
    }

    /// `POST /v1/volumes`.
    pub async fn create_volume(&self, request: &CreateVolume) -> Result<VolumeSummary> {
        check_name("volume", &request.name)?;
        let size = request.size_bytes;
        if size == 0 || !size.is_multiple_of(BLOCK_BYTES_U64) || size > VOLUME_BYTES_MAX {
            return Err(ServiceError::BadRequest(format!(
                "size {size} bytes: a volume is 1..={VOLUME_BYTES_MAX} bytes in whole {BLOCK_BYTES_U64}-byte blocks"
            )));
        }
        check_replicas(request.replicas)?;
        let loaded = self.load().await?;
        let data_domains = loaded
            .view
            .domains
            .values()
            .filter(|d| d.role == DomainRole::Data)
            .count();
        if request.replicas as usize > data_domains {
            return Err(ServiceError::BadRequest(format!(
                "replicas {}: each replica needs its own data domain and the cluster has {data_domains}",
                request.replicas
            )));
        }
        let used_max = loaded.view.volumes.values().map(|v| v.spec.id).max();
        for _ in 0..ID_CAS_ATTEMPTS_MAX {
            match self.try_create(request, used_max).await? {
                Some(record) => return Ok(self.summary(&record, None)),
                None => continue,
            }
        }
        Err(ServiceError::Unavailable(format!(
            "the volume id counter kept changing ({ID_CAS_ATTEMPTS_MAX} attempts): retry"
        )))
    }

    /// One attempt: `None` when the counter moved under us.
    async fn try_create(
        &self,
        request: &CreateVolume,
        used_max: Option<u64>,
    ) -> Result<Option<VolumeRecord>> {
        let counter_key = self.id_counter_key();
        let counter = self.membership.get(counter_key.as_bytes()).await?;
        let (last, revision) = match &counter {
            Some(kv) => {
                let text = String::from_utf8_lossy(&kv.value);
                let last: u64 = text.trim().parse().map_err(|_| {
                    ServiceError::Internal(format!("malformed id counter {counter_key}: {text:?}"))
                })?;
                (last, kv.mod_revision)
            }
            None => (0, 0),
        };
        let id = last.max(used_max.unwrap_or(0)) + 1;
        let record = VolumeRecord {
            spec: VolumeSpec {
                name: request.name.clone(),
                id,
                size_bytes: request.size_bytes,
                replicas: request.replicas as u8,
            },
            placement: None,
        };
        let volume_key = self.keys.volume(&request.name);
        let compares = vec![
            Compare::mod_revision(counter_key.as_bytes().to_vec(), revision),
            Compare::absent(volume_key.as_bytes().to_vec()),
        ];
        let ops = vec![
            TxnOp::Put {
                key: counter_key.into_bytes(),
                value: id.to_string().into_bytes(),
                lease: None,
            },
            TxnOp::Put {
                key: volume_key.into_bytes(),
                value: encode(&record),
                lease: None,
            },
        ];
        let result = self.membership.txn(compares, ops).await?;
        if result.succeeded {
            tracing::info!(volume = %request.name, id, "volume record created");
            return Ok(Some(record));
        }
        if result.current.get(1).is_some_and(Option::is_some) {
            return Err(ServiceError::Conflict(format!(
                "a volume named {:?} already exists",
                request.name
            )));
        }
        Ok(None)
    }

    pub(super) async fn record(&self, name: &str) -> Result<(VolumeRecord, i64)> {
        check_name("volume", name)?;
        let kv = self
            .membership
            .get(self.keys.volume(name).as_bytes())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no volume named {name:?}")))?;
        let record: VolumeRecord =
            decode("volume", &kv.value).map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok((record, kv.mod_revision))
    }

    pub(super) async fn status(&self, name: &str) -> Result<Option<VolumeStatusRecord>> {
        let kv = self
            .membership
            .get(status_key(&self.keys, name).as_bytes())
            .await?;
        Ok(kv.and_then(|kv| decode("status", &kv.value).ok()))
    }

    /// `GET /v1/volumes/{name}`.
    pub async fn inspect_volume(&self, name: &str) -> Result<VolumeDetail> {
        let (record, _) = self.record(name).await?;
        let status = self.status(name).await?;
        let summary = self.summary(&record, status.as_ref());
        Ok(VolumeDetail {
            summary,
            members: status
                .as_ref()
                .map(|s| s.health.members().to_vec())
                .unwrap_or_default(),
            status,
            answered_by: self.answering(),
            local: self.local_replica(record.spec.id),
            snapshots: self.snapshot_views(name).await?,
        })
    }

    fn local_replica(&self, id: u64) -> Option<LocalReplica> {
        let raft = self.host()?.raft(VolumeId(id))?;
        let m = raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let lags = replication_lags(&m);
        let mut progress = Vec::new();
        if let Some(replication) = &m.replication {
            for node in voters.iter().chain(&learners) {
                let matched_index = if *node == m.id {
                    m.last_log_index
                } else {
                    replication.get(node).cloned().flatten().map(|l| l.index)
                };
                let lag_entries = lags.get(node).copied().unwrap_or(0);
                progress.push(ReplicaProgress {
                    node: *node,
                    matched_index,
                    lag_entries,
                    in_sync: matched_index == m.last_log_index,
                });
            }
        }
        Some(LocalReplica {
            node: m.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            voters,
            learners,
            progress,
        })
    }

    /// `DELETE /v1/volumes/{name}`.
    pub async fn delete_volume(&self, name: &str) -> Result<Deleted> {
        let (record, revision) = self.record(name).await?;
        let id = record.spec.id;
        if let Some(placement) = &record.placement {
            let live = self.load().await?.view.nodes;
            if let Some(down) = placement.nodes().find(|node| !live.contains_key(node)) {
                return Err(ServiceError::Unavailable(format!(
                    "node {down} (a replica of {name:?}) is down: deleting now would leave its replica behind; nothing changed, retry once it is back"
                )));
            }
            self.running_host()?
                .delete_volume(VolumeId(id))
                .await
                .map_err(|e| match e {
                    HostError::Invalid(reason) => ServiceError::BadRequest(reason),
                    other => ServiceError::Unavailable(format!(
                        "deleting the replicas of {name:?}: {other} (some replicas may be gone already; the record stays: retry, deleting is idempotent)"
                    )),
                })?;
        }
        let key = self.keys.volume(name);
        let compares = vec![Compare::mod_revision(key.as_bytes().to_vec(), revision)];
        let mut ops = vec![
            TxnOp::Delete {
                key: key.into_bytes(),
            },
            TxnOp::Delete {
                key: status_key(&self.keys, name).into_bytes(),
            },
        ];
        // The snapshots' names go with the volume (their content went with
        // the replicas).
        for view in self.snapshot_views(name).await? {
            ops.push(TxnOp::Delete {
                key: self.keys.snapshot(name, &view.name).into_bytes(),
            });
        }
        let result = self.membership.txn(compares, ops).await?;
        if !result.succeeded {
            return Err(ServiceError::Conflict(format!(
                "volume {name:?} changed while it was being deleted (placement or repair): retry"
            )));
        }
        tracing::info!(volume = %name, id, "volume deleted");
        Ok(Deleted {
            name: name.to_owned(),
            id,
        })
    }

    /// `GET /v1/domains`.
    pub async fn list_domains(&self) -> Result<Vec<DomainView>> {
        let loaded = self.load().await?;
        Ok(domain_views(&loaded, &node_views(&loaded)))
    }

    /// `POST /v1/domains/{name}/activate|deactivate`.
    pub async fn set_domain(&self, name: &str, state: DomainState) -> Result<DomainView> {
        check_domain_name(name)?;
        let domain: DomainInfo =
            set_domain_state(&self.membership, &self.keys, name, state).await?;
        tracing::info!(domain = %name, ?state, "domain state set");
        let loaded = self.load().await?;
        let views = domain_views(&loaded, &node_views(&loaded));
        Ok(views
            .into_iter()
            .find(|d| d.name == name)
            .unwrap_or(DomainView {
                name: domain.name,
                role: domain.role,
                state: domain.state,
                nodes_up: 0,
                nodes_down: 0,
            }))
    }

    /// `GET /v1/nodes`.
    pub async fn list_nodes(&self) -> Result<Vec<NodeView>> {
        let loaded = self.load().await?;
        Ok(node_views(&loaded))
    }

    /// `GET /v1/cluster`.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let loaded = self.load().await?;
        let leader = self.membership.leader(&self.keys.coordinator()).await?;
        let coordinator =
            leader.and_then(|kv| String::from_utf8_lossy(&kv.value).trim().parse().ok());
        let nodes = node_views(&loaded);
        Ok(ClusterStatus {
            cluster: self.cluster.clone(),
            coordinator,
            answered_by: self.answering(),
            domains: domain_views(&loaded, &nodes),
            volumes: self.summaries(&loaded),
            nodes,
            malformed: loaded.malformed.clone(),
        })
    }
}

/// Registered nodes (up) and placed nodes without a registration (down).
fn node_views(loaded: &LoadedView) -> Vec<NodeView> {
    let view = &loaded.view;
    let load = view.load();
    let mut nodes: BTreeMap<NodeId, NodeView> = view
        .nodes
        .values()
        .map(|n| {
            (
                n.id,
                NodeView {
                    id: n.id,
                    domain: n.domain.clone(),
                    up: true,
                    quic_addr: n.quic_addr.clone(),
                    nbd_addr: n.nbd_addr.clone(),
                    admin_addr: n.admin_addr.clone(),
                    version: n.version.clone(),
                    replicas: load.get(&n.id).copied().unwrap_or(0),
                },
            )
        })
        .collect();
    let placed: BTreeSet<&Member> = view
        .volumes
        .values()
        .filter_map(|v| v.placement.as_ref())
        .flat_map(|p| p.members.iter())
        .collect();
    for member in placed {
        nodes.entry(member.node).or_insert_with(|| NodeView {
            id: member.node,
            domain: member.domain.clone(),
            up: false,
            quic_addr: String::new(),
            nbd_addr: String::new(),
            admin_addr: String::new(),
            version: String::new(),
            replicas: load.get(&member.node).copied().unwrap_or(0),
        });
    }
    nodes.into_values().collect()
}

fn domain_views(loaded: &LoadedView, nodes: &[NodeView]) -> Vec<DomainView> {
    loaded
        .view
        .domains
        .iter()
        .map(|(name, d)| {
            let here = nodes.iter().filter(|n| &n.domain == name);
            let up = here.clone().filter(|n| n.up).count();
            DomainView {
                name: name.clone(),
                role: d.role,
                state: d.state,
                nodes_up: up,
                nodes_down: here.count() - up,
            }
        })
        .collect()
}

/// Refuses a replica count placement cannot satisfy (it would be accepted
/// here and stay pending forever): one limit, [`REPLICAS_MAX`], for both.
fn check_replicas(replicas: u32) -> Result<()> {
    if replicas == 0 || replicas > u32::from(REPLICAS_MAX) {
        return Err(ServiceError::BadRequest(format!(
            "replicas {replicas}: a volume has 1..={REPLICAS_MAX} data replicas"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["db", "a", "vol-1.x_y", &"a".repeat(NAME_BYTES_MAX)] {
            assert!(check_name("volume", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Db",
            "-db",
            "a/b",
            "a b",
            &"a".repeat(NAME_BYTES_MAX + 1),
        ] {
            let err = check_name("volume", bad).unwrap_err();
            assert_eq!(err.code(), "bad_request", "{bad}");
        }
        assert!(check_domain_name("Site-A.1").is_ok());
        assert!(check_domain_name("a b").is_err());
        assert!(check_domain_name("").is_err());
    }

    #[test]
    fn replica_counts_placement_cannot_meet_are_refused() {
        for good in 1..=u32::from(REPLICAS_MAX) {
            assert!(check_replicas(good).is_ok(), "{good}");
        }
        for bad in [0, u32::from(REPLICAS_MAX) + 1, 7] {
            let err = check_replicas(bad).unwrap_err();
            assert_eq!(err.code(), "bad_request", "{bad}");
            assert!(
                err.to_string().contains(&format!("1..={REPLICAS_MAX}")),
                "{err}"
            );
        }
    }
}
