//! [`DemoCluster`]: every node of the demo in this process — certificates
//! in a temporary directory, one data directory per node, QUIC on loopback
//! with injected cross-domain delays, and an NBD listener per node that
//! exports the demo volume.
//!
//! Stopping a node ([`DemoCluster::stop`]) closes its NBD listener (open
//! connections fail from then on), stops its groups and transport, and
//! waits until nothing else holds its host, so its kvstore is released
//! (the writer thread exits) before [`DemoCluster::restart`] opens the same
//! data directory again.
//!
//! The admin API ([`DemoCluster::serve_admin`]) answers for one running
//! node at a time, held weakly: when that node stops it moves to another
//! running node, so it never keeps a stopped node's host alive. Every
//! node's NBD I/O is recorded in one [`NodeMetrics`] (the demo is one
//! process), so `/metrics` shows the tour's writes whichever node served
//! them.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use metro_fabric::env::NodeId;
use metro_fabric::volume::BLOCK_BYTES_U64;
use metro_fabric::wire::VolumeStatus;

use super::{EXPORT, Topology, VOLUME};
use crate::limits::{DEMO_CLUSTER_POLL_MS, DEMO_REBIND_TIMEOUT_MS, DEMO_RELEASE_TIMEOUT_MS};
use metro_fabric::control::{
    ClusterKeys, DomainRole, Member, MemberRole, Placement, VolumeRecord, VolumeSpec, encode,
};
use metro_fabric::meta::prelude::*;

use crate::admin::{AdminServer, AdminService, AdminState, NodeMetrics, NodeSlot};
use crate::daemon::config::NodeConfig;
use crate::daemon::control_plane::{ControlConfig, EmbeddedStore};
use crate::daemon::{self, DaemonError, Frontends, Node, NodeHost};
use crate::nbd::host::{HostBackend, NbdListener};
use crate::pki::ClusterCa;

/// The demo cluster's name (in every node certificate).
const CLUSTER_NAME: &str = "demo";

/// A directory removed when dropped unless kept.
#[derive(Debug)]
pub struct TempDir {
    pub path: PathBuf,
    pub keep: bool,
}

impl TempDir {
    fn create() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("metro-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep: false })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// One running node and its NBD listener.
#[derive(Debug)]
struct Running {
    node: Node,
    nbd: NbdListener,
}

/// The demo's nodes. See the module docs.
#[derive(Debug)]
pub struct DemoCluster {
    pub dir: TempDir,
    membership: EmbeddedStore,
    topology: Topology,
    configs: BTreeMap<NodeId, NodeConfig>,
    running: BTreeMap<NodeId, Running>,
    nbd_addrs: BTreeMap<NodeId, SocketAddr>,
    size_bytes: u64,
    metrics: Arc<NodeMetrics>,
    admin: Option<(AdminServer, Arc<AdminState<EmbeddedStore>>)>,
}

/// Free loopback UDP addresses, one per node (bound, noted, released).
fn free_udp_addrs(count: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let sockets: Vec<UdpSocket> = (0..count)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("finding free UDP ports")?;
    Ok(sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<_, _>>()?)
}

/// Writes the CA and one certificate per node into `dir`.
fn make_certs(dir: &Path, nodes: &[NodeId]) -> anyhow::Result<()> {
    let ca = ClusterCa::generate(CLUSTER_NAME).context("generating the cluster CA")?;
    ca.save(dir).context("writing the cluster CA")?;
    for &node in nodes {
        let identity = ca
            .issue_node(node, &[])
            .with_context(|| format!("issuing the certificate of node {node}"))?;
        identity
            .save(dir)
            .with_context(|| format!("writing the certificate of node {node}"))?;
    }
    Ok(())
}

/// Node `id`'s control-plane settings: its topology domain (and role).
fn demo_control(topology: &Topology, id: NodeId) -> ControlConfig {
    let domain = topology
        .domains()
        .into_iter()
        .find(|d| d.nodes.contains(&id));
    let mut control = ControlConfig::embedded(
        CLUSTER_NAME,
        domain.as_ref().map_or("unknown", |d| d.name.as_str()),
    );
    if domain.is_some_and(|d| d.witness) {
        control.domain_role = DomainRole::Witness;
    }
    control
}

impl DemoCluster {
    /// Certificates and configurations for `topology`; nothing runs yet.
    pub fn create(topology: Topology, rtt_ms: u64, size_bytes: u64) -> anyhow::Result<Self> {
        let dir = TempDir::create()?;
        let nodes = topology.nodes();
        let certs = dir.path.join("certs");
        make_certs(&certs, &nodes)?;
        let addrs: BTreeMap<NodeId, SocketAddr> = nodes
            .iter()
            .copied()
            .zip(free_udp_addrs(nodes.len())?)
            .collect();
        // One-way delay rtt/2 between domains, none inside one.
        let one_way = Duration::from_micros(rtt_ms * 500);
        let mut configs = BTreeMap::new();
        for &id in &nodes {
            let peers: BTreeMap<NodeId, SocketAddr> = addrs
                .iter()
                .filter(|(peer, _)| **peer != id)
                .map(|(peer, addr)| (*peer, *addr))
                .collect();
            let delays = peers
                .keys()
                .filter(|peer| {
                    !one_way.is_zero() && topology.domain_of(**peer) != topology.domain_of(id)
                })
                .map(|peer| (*peer, one_way))
                .collect();
            let config = NodeConfig {
                node_id: id,
                data_dir: dir.path.join(format!("node-{id}")),
                certs_dir: certs.clone(),
                listen: addrs[&id],
                peers,
                delays,
                log_level: tracing::Level::WARN,
                control: demo_control(&topology, id),
            };
            configs.insert(id, config);
        }
        Ok(Self {
            dir,
            membership: EmbeddedStore::new(),
            topology,
            configs,
            running: BTreeMap::new(),
            nbd_addrs: BTreeMap::new(),
            size_bytes,
            metrics: NodeMetrics::new(),
            admin: None,
        })
    }

    /// The demo's topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Starts every node.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for id in self.topology.nodes() {
            self.start(id).await?;
        }
        Ok(())
    }

    /// Starts `id` from its configuration (and data directory), retrying
    /// while its old UDP port is still held, and serves NBD on it (on its
    /// previous NBD port when that is free).
    async fn start(&mut self, id: NodeId) -> anyhow::Result<()> {
        let config = self
            .configs
            .get(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        // The NBD address is chosen first, so that the node registers it
        // (`metro node list` shows it): the previous one on a restart.
        let wanted = match self.nbd_addrs.get(&id) {
            Some(addr) => *addr,
            None => std::net::TcpListener::bind(loopback)
                .and_then(|l| l.local_addr())
                .unwrap_or(loopback),
        };
        let frontends = Frontends {
            nbd: Some(wanted).filter(|a| a.port() != 0),
            admin: None,
        };
        let deadline = Instant::now() + Duration::from_millis(DEMO_REBIND_TIMEOUT_MS);
        let node = loop {
            let membership = self.membership.clone();
            match daemon::start_with(config, membership, &frontends).await {
                Ok(node) => break node,
                Err(DaemonError::Quic(err)) if Instant::now() < deadline => {
                    tracing::debug!(node = id, "QUIC bind: {err}; retrying");
                    tokio::time::sleep(Duration::from_millis(DEMO_CLUSTER_POLL_MS)).await;
                }
                Err(err) => return Err(err).with_context(|| format!("starting node {id}")),
            }
        };
        let backend = HostBackend::new(Arc::clone(&node.host))
            .with_metrics(Arc::clone(&self.metrics))
            .with_export(EXPORT, VOLUME, self.size_bytes);
        let backend = Arc::new(backend);
        let nbd = match NbdListener::start(wanted, Arc::clone(&backend)).await {
            Ok(nbd) => nbd,
            Err(_) => NbdListener::start(loopback, backend)
                .await
                .with_context(|| format!("starting NBD on node {id}"))?,
        };
        self.nbd_addrs.insert(id, nbd.addr);
        self.running.insert(id, Running { node, nbd });
        self.repoint_admin();
        Ok(())
    }

    /// Serves the admin API on loopback for a running node; its URL.
    pub async fn serve_admin(&mut self) -> anyhow::Result<String> {
        let service = AdminService::new(self.membership.clone(), CLUSTER_NAME, NodeSlot::default());
        let state = Arc::new(AdminState {
            service,
            metrics: Arc::clone(&self.metrics),
        });
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let server = AdminServer::start(loopback, Arc::clone(&state))
            .await
            .context("starting the admin API")?;
        let url = server.url();
        self.admin = Some((server, state));
        self.repoint_admin();
        Ok(url)
    }

    /// Points the admin API at a running node if its node is not running.
    fn repoint_admin(&self) {
        let Some((_, state)) = &self.admin else {
            return;
        };
        let current = state.service.host().map(|h| h.node());
        if current.is_some_and(|id| self.running.contains_key(&id)) {
            return;
        }
        if let Some(running) = self.running.values().next() {
            state.service.set_node(NodeSlot::of(&running.node));
        }
    }

    /// The host of running node `id`.
    pub fn host(&self, id: NodeId) -> Option<Arc<NodeHost>> {
        self.running.get(&id).map(|r| Arc::clone(&r.node.host))
    }

    /// The NBD address of node `id` (its last one if stopped).
    pub fn nbd_addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.nbd_addrs.get(&id).copied()
    }

    /// The QUIC address of node `id`.
    pub fn quic_addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.configs.get(&id).map(|c| c.listen)
    }

    /// Whether node `id` runs.
    pub fn is_running(&self, id: NodeId) -> bool {
        self.running.contains_key(&id)
    }

    /// Creates the demo volume on `members` (through the first member).
    pub async fn create_volume(&self, members: &[NodeId]) -> anyhow::Result<()> {
        let first = *members.first().ok_or_else(|| anyhow!("no members"))?;
        let host = self
            .host(first)
            .ok_or_else(|| anyhow!("node {first} is down"))?;
        let size_blocks = self.size_bytes / BLOCK_BYTES_U64;
        host.create_volume(VOLUME, size_blocks, members)
            .await
            .context("creating the demo volume")?;
        self.record_volume(members).await
    }

    /// Records the demo volume, placed on `members`, in the control-plane
    /// store (the coordinator then publishes its health).
    async fn record_volume(&self, members: &[NodeId]) -> anyhow::Result<()> {
        let domains = self.topology.domains();
        let members = members
            .iter()
            .map(|&node| {
                let domain = domains.iter().find(|d| d.nodes.contains(&node));
                Member {
                    node,
                    domain: domain.map_or_else(String::new, |d| d.name.clone()),
                    role: match domain.is_some_and(|d| d.witness) {
                        true => MemberRole::Witness,
                        false => MemberRole::Data,
                    },
                }
            })
            .collect();
        let data = domains.iter().filter(|d| !d.witness).count();
        let record = VolumeRecord {
            spec: VolumeSpec {
                name: EXPORT.to_owned(),
                id: VOLUME.0,
                size_bytes: self.size_bytes,
                replicas: u8::try_from(data).unwrap_or(u8::MAX),
            },
            placement: Some(Placement { members }),
        };
        let keys = ClusterKeys::new(CLUSTER_NAME);
        self.membership
            .put(keys.volume(EXPORT).as_bytes(), &encode(&record), None)
            .await
            .context("recording the demo volume")?;
        Ok(())
    }

    /// The control-plane store the demo's nodes share.
    pub fn membership(&self) -> &EmbeddedStore {
        &self.membership
    }

    /// Stops the nodes `ids` as a domain failure would: NBD first, then the
    /// node; waits until each host is released (see the module docs).
    pub async fn stop(&mut self, ids: &[NodeId]) -> anyhow::Result<()> {
        let mut stopped = Vec::new();
        for id in ids {
            if let Some(running) = self.running.remove(id) {
                running.nbd.stop();
                stopped.push(running);
            }
        }
        self.repoint_admin();
        // Stop them together: a domain fails at once.
        let stops = stopped.iter().map(|r| r.node.stop());
        futures_util::future::join_all(stops).await;
        for running in stopped {
            let id = running.node.host.node();
            let Running { node, nbd } = running;
            drop(nbd);
            release(id, node).await?;
        }
        Ok(())
    }

    /// Restarts stopped nodes from their data directories.
    pub async fn restart(&mut self, ids: &[NodeId]) -> anyhow::Result<()> {
        for &id in ids {
            self.start(id).await?;
        }
        Ok(())
    }

    /// Every running replica's status of the demo volume.
    pub async fn statuses(&self, members: &[NodeId]) -> Vec<(NodeId, Option<VolumeStatus>)> {
        let mut out = Vec::new();
        for &id in members {
            let status = match self.host(id) {
                Some(host) => host.status(VOLUME).await.ok(),
                None => None,
            };
            out.push((id, status));
        }
        out
    }

    /// Stops every running node.
    pub async fn shutdown(&mut self) {
        if let Some((server, _)) = self.admin.take() {
            server.stop();
        }
        let ids: Vec<NodeId> = self.running.keys().copied().collect();
        if let Err(err) = self.stop(&ids).await {
            tracing::warn!("stopping the demo cluster: {err:#}");
        }
    }
}

/// Waits until `node`'s host is referenced only by `node`, then drops it,
/// which releases its kvstore.
async fn release(id: NodeId, node: Node) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(DEMO_RELEASE_TIMEOUT_MS);
    while Arc::strong_count(&node.host) > 1 {
        if Instant::now() >= deadline {
            bail!(
                "node {id}: its host is still in use {} s after stopping",
                DEMO_RELEASE_TIMEOUT_MS / 1_000
            );
        }
        tokio::time::sleep(Duration::from_millis(DEMO_CLUSTER_POLL_MS)).await;
    }
    drop(node);
    Ok(())
}
