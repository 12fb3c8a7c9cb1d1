//! [`ControlPlane`]: a node's part in the cluster's control plane.
//!
//! Every node, once its host serves, runs three tasks against the cluster's
//! [`MetaStore`] (a [`NodeMetaStore`]: etcd when endpoints are configured,
//! else the embedded in-memory model):
//! - **domain record**: its domain is created (role from the configuration,
//!   state `active`) if no record exists; an existing record is left as is
//!   (an operator may have deactivated it) and a role mismatch is logged;
//! - **registration** ([`NodeRegistration`]): its [`NodeInfo`] under a lease
//!   kept alive; a node whose lease lapses is down for the coordinator;
//! - **coordinator** ([`Coordinator`]): campaigns; the elected one places,
//!   creates, repairs and publishes health, acting on groups through this
//!   node's host ([`HostAdmin`]).
//!
//! Contract: nothing on the data path waits for the store. When it is
//! unreachable the tasks retry with backoff and I/O on existing volumes goes
//! on (Raft does not need the store); placement and repair resume with it.
//! [`ControlPlane::stop`] aborts the tasks and deregisters (best effort,
//! bounded by [`DEREGISTER_TIMEOUT_MS`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use metro_fabric::backoff::Backoff;
use metro_fabric::control::{
    AdminError, ClusterKeys, Coordinator, CoordinatorConfig, CoordinatorStats, DomainInfo,
    DomainRole, DomainState, GroupAdmin, NodeInfo, NodeRegistration, Placement, RegistrationConfig,
    RegistrationStatus, VolumeRecord, VolumeSpec, decode, encode,
};
use metro_fabric::env::NodeId;
use metro_fabric::limits::{STORE_RETRY_MAX_MS, STORE_RETRY_MIN_MS};
use metro_fabric::meta::{Compare, MemMetaStore, MetaError, MetaStore, TxnOp};
use openraft_rt_tokio::TokioRuntime;
use tokio::task::JoinHandle;

use crate::daemon::NodeHost;
use crate::daemon::etcd_meta::EtcdMetaStore;
use crate::limits::{DEREGISTER_TIMEOUT_MS, DOMAIN_POLL_INTERVAL_MS};

/// Where the control plane keeps its state and how this node takes part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlConfig {
    /// The cluster's name: the root of its keys (`/metro/<cluster>/...`).
    pub cluster: String,
    /// This node's failure domain.
    pub domain: String,
    /// The role its domain is created with if it has no record yet.
    pub domain_role: DomainRole,
    /// etcd client URLs; empty means the embedded in-memory store (one
    /// process only: the demo and single-node trials).
    pub etcd_endpoints: Vec<String>,
    /// Lease and coordinator timing.
    pub timing: ControlTiming,
}

/// The control-plane timings a node's configuration may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlTiming {
    /// This node's registration lease: it is seen down this long after it
    /// stops renewing.
    pub node_lease_ttl: Duration,
    /// How long a placed node must stay down before its replicas are moved.
    pub repair_delay: Duration,
    /// The coordinator's lease: a failed coordinator is replaced within it.
    pub lease_ttl: Duration,
    pub interval: Duration,
}

impl Default for ControlTiming {
    fn default() -> Self {
        let defaults = CoordinatorConfig::new(1);
        Self {
            node_lease_ttl: RegistrationConfig::default().ttl,
            repair_delay: defaults.repair_delay,
            lease_ttl: defaults.lease_ttl,
            interval: defaults.interval,
        }
    }
}

impl ControlConfig {
    /// A data node of `domain` in `cluster` on the embedded store.
    pub fn embedded(cluster: &str, domain: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            domain: domain.to_owned(),
            domain_role: DomainRole::Data,
            etcd_endpoints: Vec::new(),
            timing: ControlTiming::default(),
        }
    }
}

/// The embedded store: the in-memory model on tokio (the demo, tests and
/// single-process trials; no other process sees it).
pub type EmbeddedStore = MemMetaStore<TokioRuntime>;

/// What a node needs of its control-plane store: etcd
/// ([`EtcdMetaStore`]) or the embedded model ([`EmbeddedStore`]). Generic
/// code takes `M: NodeMetaStore` and is compiled for each: no forwarding.
pub trait NodeMetaStore: MetaStore + Clone + std::fmt::Debug {
    /// How logs name this kind of store.
    const KIND: &'static str;
}

impl NodeMetaStore for EtcdMetaStore {
    const KIND: &'static str = "etcd";
}

impl NodeMetaStore for EmbeddedStore {
    const KIND: &'static str = "embedded";
}

/// What the admin endpoint reads of a running control plane, whatever its
/// store.
pub trait ControlStatus: Send + Sync + std::fmt::Debug {
    /// This node's registration now.
    fn registration_status(&self) -> RegistrationStatus;
    /// This node's coordinator counters now.
    fn coordinator_stats(&self) -> CoordinatorStats;
}

/// [`GroupAdmin`] through this node's host. It holds the host weakly: a
/// stopped node's coordinator must not keep its host (and kvstore) alive;
/// once the host is gone every call answers [`AdminError::Retry`].
#[derive(Clone, Debug)]
pub struct HostAdmin(pub Weak<NodeHost>);

impl HostAdmin {
    fn host(&self, spec: &VolumeSpec) -> Result<Arc<NodeHost>, AdminError> {
        self.0.upgrade().ok_or_else(|| AdminError::Retry {
            volume: spec.name.clone(),
            reason: "this node is stopping".into(),
        })
    }
}

impl GroupAdmin for HostAdmin {
    async fn create_group(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
    ) -> Result<(), AdminError> {
        self.host(spec)?.create_group(spec, placement).await
    }

    async fn replace_member(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
        dead: NodeId,
        replacement: NodeId,
    ) -> Result<(), AdminError> {
        self.host(spec)?
            .replace_member(spec, placement, dead, replacement)
            .await
    }

    async fn in_sync(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
    ) -> Result<BTreeSet<NodeId>, AdminError> {
        self.host(spec)?.in_sync(spec, placement).await
    }
}

/// The registration type of a production node.
pub type NodeRegistrationTask<M> = NodeRegistration<TokioRuntime, M>;
/// The coordinator type of a production node.
pub type NodeCoordinator<M> = Coordinator<TokioRuntime, M, HostAdmin>;

/// A node's running control-plane tasks (see the module contract).
#[derive(Debug)]
pub struct ControlPlane<M: NodeMetaStore = EmbeddedStore> {
    pub membership: M,
    pub keys: ClusterKeys,
    pub info: NodeInfo,
    pub config: ControlConfig,
    pub registration: Arc<NodeRegistrationTask<M>>,
    pub coordinator: Arc<NodeCoordinator<M>>,
    tasks: Vec<JoinHandle<()>>,
}

impl<M: NodeMetaStore> ControlPlane<M> {
    /// Starts the tasks for `host` (described to the cluster by `info`).
    pub fn start(
        membership: M,
        config: ControlConfig,
        info: NodeInfo,
        host: Arc<NodeHost>,
    ) -> Self {
        let keys = ClusterKeys::new(&config.cluster);
        let registration = Arc::new(NodeRegistration::new(
            membership.clone(),
            keys.clone(),
            info.clone(),
            RegistrationConfig {
                ttl: config.timing.node_lease_ttl,
                ..RegistrationConfig::default()
            },
        ));
        let mut coordinator_config = CoordinatorConfig::new(info.id);
        coordinator_config.repair_delay = config.timing.repair_delay;
        coordinator_config.lease_ttl = config.timing.lease_ttl;
        coordinator_config.interval = config.timing.interval;
        let coordinator = Arc::new(Coordinator::new(
            membership.clone(),
            HostAdmin(Arc::downgrade(&host)),
            keys.clone(),
            coordinator_config,
        ));
        let domain = DomainInfo {
            name: config.domain.clone(),
            role: config.domain_role,
            state: DomainState::Active,
        };
        let tasks = vec![
            tokio::spawn(ensure_domain_forever(
                membership.clone(),
                keys.clone(),
                domain,
                info.id,
            )),
            tokio::spawn(follow_domain_state(
                membership.clone(),
                keys.clone(),
                config.domain.clone(),
                Arc::downgrade(&host),
            )),
            tokio::spawn({
                let registration = Arc::clone(&registration);
                async move { registration.run().await }
            }),
            tokio::spawn({
                let coordinator = Arc::clone(&coordinator);
                async move { coordinator.run().await }
            }),
        ];
        tracing::info!(
            node = info.id,
            cluster = %config.cluster,
            domain = %config.domain,
            store = M::KIND,
            "control plane started"
        );
        Self {
            membership,
            keys,
            info,
            config,
            registration,
            coordinator,
            tasks,
        }
    }

    /// The volume records in the store.
    pub async fn volumes(&self) -> Result<Vec<VolumeRecord>, MetaError> {
        let range = self
            .membership
            .range(self.keys.volumes_prefix().as_bytes())
            .await?;
        Ok(range
            .kvs
            .iter()
            .filter_map(|kv| decode::<VolumeRecord>("volume", &kv.value).ok())
            .collect())
    }

    /// Aborts the tasks and deregisters (best effort, bounded).
    pub async fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
        let deregister = tokio::time::timeout(
            Duration::from_millis(DEREGISTER_TIMEOUT_MS),
            self.registration.deregister(),
        );
        match deregister.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "deregistering (the lease will lapse)"),
            Err(_) => tracing::warn!("deregistering timed out (the lease will lapse)"),
        }
    }
}

impl<M: NodeMetaStore> ControlStatus for ControlPlane<M> {
    fn registration_status(&self) -> RegistrationStatus {
        self.registration.status()
    }

    fn coordinator_stats(&self) -> CoordinatorStats {
        self.coordinator.stats()
    }
}

impl<M: NodeMetaStore> Drop for ControlPlane<M> {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Applies this node's domain state to its host every
/// [`DOMAIN_POLL_INTERVAL_MS`]: I/O stops while the domain is `inactive` and
/// resumes when it is `active` again. An unreachable store or a missing
/// record changes nothing (the last known state holds).
async fn follow_domain_state<M: MetaStore>(
    membership: M,
    keys: ClusterKeys,
    domain: String,
    host: Weak<NodeHost>,
) {
    let key = keys.domain(&domain);
    let mut applied = true;
    loop {
        let Some(host) = host.upgrade() else {
            return;
        };
        if let Ok(Some(kv)) = membership.get(key.as_bytes()).await
            && let Ok(info) = decode::<DomainInfo>("domain", &kv.value)
        {
            let allowed = info.state == DomainState::Active;
            if applied != allowed {
                tracing::warn!(%domain, state = ?info.state, "domain state changed: I/O {}",
                    if allowed { "resumes" } else { "stops" });
                host.set_io_allowed(allowed);
                applied = allowed;
            }
        }
        drop(host);
        tokio::time::sleep(Duration::from_millis(DOMAIN_POLL_INTERVAL_MS)).await;
    }
}

/// Creates `domain`'s record if it has none, retrying while the store is
/// unreachable; then ends.
async fn ensure_domain_forever<M: MetaStore>(
    membership: M,
    keys: ClusterKeys,
    domain: DomainInfo,
    node: NodeId,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(STORE_RETRY_MIN_MS),
        Duration::from_millis(STORE_RETRY_MAX_MS),
        node,
    );
    loop {
        match ensure_domain(&membership, &keys, &domain).await {
            Ok(found) => {
                if found.role != domain.role {
                    tracing::warn!(
                        domain = %domain.name,
                        configured = ?domain.role,
                        recorded = ?found.role,
                        "domain role differs from the recorded one; the record wins"
                    );
                }
                return;
            }
            Err(error) => {
                tracing::debug!(%error, domain = %domain.name, "domain record: retrying");
                backoff.wait::<TokioRuntime>().await;
            }
        }
    }
}

/// Creates `domain`'s record unless one exists; returns the record as stored.
pub async fn ensure_domain<M: MetaStore>(
    membership: &M,
    keys: &ClusterKeys,
    domain: &DomainInfo,
) -> Result<DomainInfo, MetaError> {
    let key = keys.domain(&domain.name);
    let created = membership
        .txn(
            vec![Compare::absent(key.clone())],
            vec![TxnOp::Put {
                key: key.clone().into_bytes(),
                value: encode(domain),
                lease: None,
            }],
        )
        .await?;
    if created.succeeded {
        tracing::info!(domain = %domain.name, role = ?domain.role, "domain created");
        return Ok(domain.clone());
    }
    let kv = membership
        .get(key.as_bytes())
        .await?
        .ok_or_else(|| MetaError::Failed {
            reason: format!("domain record {key} vanished"),
        })?;
    decode("domain", &kv.value).map_err(|e| MetaError::Failed {
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn domain_is_created_once_and_never_overwritten() {
        let store = EmbeddedStore::new();
        let keys = ClusterKeys::new("t");
        let data = DomainInfo {
            name: "a".into(),
            role: DomainRole::Data,
            state: DomainState::Active,
        };
        assert_eq!(ensure_domain(&store, &keys, &data).await.unwrap(), data);
        metro_fabric::control::set_domain_state(&store, &keys, "a", DomainState::Inactive)
            .await
            .unwrap();
        let witness = DomainInfo {
            role: DomainRole::Witness,
            ..data.clone()
        };
        let found = ensure_domain(&store, &keys, &witness).await.unwrap();
        assert_eq!(found.role, DomainRole::Data, "an existing record wins");
        assert_eq!(found.state, DomainState::Inactive, "deactivation survives");
    }
}
