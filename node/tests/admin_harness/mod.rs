//! A small in-process cluster for the admin tests: three nodes
//! (`daemon::start`, QUIC with certificates, kvstore in a temporary
//! directory), the embedded membership store with one data domain per
//! node, a coordinator on node 1, node 1's NBD listener and its admin
//! server.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metro_fabric::control::{
    AdminError, ClusterKeys, Coordinator, CoordinatorConfig, DomainInfo, DomainRole, DomainState,
    GroupAdmin, NodeInfo, Placement, VolumeSpec, encode,
};
use metro_fabric::env::NodeId;
use metro_fabric::membership::{MemMembership, Membership};
use metro_node::admin::{AdminServer, AdminService, AdminState, NodeMetrics};
use metro_node::config::NodeConfig;
use metro_node::daemon::{self, Node, NodeHost};
use metro_node::nbd_host::{HostBackend, NbdListener};
use metro_node::tls::ClusterCa;
use openraft_rt_tokio::TokioRuntime;

pub type Mem = MemMembership<TokioRuntime>;

pub const CLUSTER: &str = "admintest";
pub const NODES: [NodeId; 3] = [1, 2, 3];
pub const DOMAINS: [&str; 3] = ["a", "b", "c"];
pub const MIB: u64 = 1 << 20;

/// The coordinator's hands on node 1's host.
pub struct HostAdmin(Arc<NodeHost>);

impl GroupAdmin for HostAdmin {
    async fn create_group(&self, spec: &VolumeSpec, p: &Placement) -> Result<(), AdminError> {
        self.0.create_group(spec, p).await
    }
    async fn replace_member(
        &self,
        spec: &VolumeSpec,
        p: &Placement,
        dead: NodeId,
        replacement: NodeId,
    ) -> Result<(), AdminError> {
        self.0.replace_member(spec, p, dead, replacement).await
    }
    async fn in_sync(
        &self,
        spec: &VolumeSpec,
        p: &Placement,
    ) -> Result<BTreeSet<NodeId>, AdminError> {
        self.0.in_sync(spec, p).await
    }
}

pub fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("metro-admin-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn configs(dir: &Path) -> Vec<NodeConfig> {
    let certs = dir.join("certs");
    let ca = ClusterCa::generate(CLUSTER).expect("CA");
    ca.save(&certs).expect("save the CA");
    for id in NODES {
        ca.issue_node(id, &[]).unwrap().save(&certs).unwrap();
    }
    let sockets: Vec<UdpSocket> = NODES
        .iter()
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: BTreeMap<NodeId, SocketAddr> = NODES
        .into_iter()
        .zip(sockets.iter().map(|s| s.local_addr().unwrap()))
        .collect();
    drop(sockets);
    NODES
        .iter()
        .map(|&id| NodeConfig {
            node_id: id,
            data_dir: dir.join(format!("node-{id}")),
            certs_dir: certs.clone(),
            listen: addrs[&id],
            peers: addrs
                .iter()
                .filter(|(p, _)| **p != id)
                .map(|(p, a)| (*p, *a))
                .collect(),
            delays: BTreeMap::new(),
            log_level: tracing::Level::WARN,
        })
        .collect()
}

/// Domain records and node registrations of `cluster` (without leases).
pub async fn seed(mem: &Mem, cluster: &str, nodes: &[Node]) {
    let keys = ClusterKeys::new(cluster);
    for name in DOMAINS {
        let domain = DomainInfo {
            name: name.into(),
            role: DomainRole::Data,
            state: DomainState::Active,
        };
        mem.put(keys.domain(name).as_bytes(), &encode(&domain), None)
            .await
            .unwrap();
    }
    for (node, domain) in nodes.iter().zip(DOMAINS) {
        let info = NodeInfo {
            id: node.host.node(),
            domain: domain.into(),
            quic_addr: node.transport.local_addr().to_string(),
            nbd_addr: String::new(),
            admin_addr: String::new(),
            capacity_bytes: 0,
            version: "test".into(),
        };
        mem.put(keys.node(info.id).as_bytes(), &encode(&info), None)
            .await
            .unwrap();
    }
}

pub async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The running cluster; [`Self::stop`] it at the end.
pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    pub mem: Mem,
    pub metrics: Arc<NodeMetrics>,
    pub backend: Arc<HostBackend>,
    pub nbd: NbdListener,
    pub server: AdminServer,
    coordinator: tokio::task::JoinHandle<()>,
}

impl Cluster {
    pub async fn start() -> Self {
        let dir = temp_dir();
        let mut nodes = Vec::new();
        for config in configs(&dir) {
            nodes.push(daemon::start(&config).await.expect("node starts"));
        }
        let mem = Mem::new();
        seed(&mem, CLUSTER, &nodes).await;
        let host = Arc::clone(&nodes[0].host);
        let config = CoordinatorConfig {
            interval: Duration::from_millis(200),
            lease_ttl: Duration::from_secs(2),
            ..CoordinatorConfig::new(1)
        };
        let coordinator = Arc::new(Coordinator::<TokioRuntime, Mem, HostAdmin>::new(
            mem.clone(),
            HostAdmin(Arc::clone(&host)),
            ClusterKeys::new(CLUSTER),
            config,
        ));
        let coordinator = tokio::spawn(async move { coordinator.run().await });
        let metrics = NodeMetrics::new();
        let backend =
            Arc::new(HostBackend::new(Arc::clone(&host)).with_metrics(Arc::clone(&metrics)));
        let nbd = NbdListener::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&backend))
            .await
            .unwrap();
        let state = Arc::new(AdminState {
            service: AdminService::new(mem.clone(), CLUSTER, Arc::clone(&host)),
            metrics: Arc::clone(&metrics),
            transport: Some(Arc::clone(&nodes[0].transport)),
        });
        let server = AdminServer::start("127.0.0.1:0".parse().unwrap(), state)
            .await
            .unwrap();
        Self {
            dir,
            nodes,
            mem,
            metrics,
            backend,
            nbd,
            server,
            coordinator,
        }
    }

    pub fn host(&self) -> &Arc<NodeHost> {
        &self.nodes[0].host
    }

    pub async fn stop(self) {
        self.coordinator.abort();
        self.server.stop();
        self.nbd.stop();
        for node in &self.nodes {
            node.stop().await;
        }
        let dir = self.dir.clone();
        drop(self);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
