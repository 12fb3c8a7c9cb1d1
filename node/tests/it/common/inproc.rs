//! In-process clusters of real nodes (`daemon::start_with`: kvstore on disk,
//! QUIC with mutual TLS on loopback) sharing one embedded control-plane
//! store, and the polling helper their scenarios wait with.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::ensure;
use metro_fabric::env::NodeId;
use metro_node::daemon::config::NodeConfig;
use metro_node::daemon::control_plane::{ControlConfig, EmbeddedStore};
use metro_node::daemon::{self, Frontends, Node};
use metro_node::pki::ClusterCa;

/// Certificates (cluster `cluster`) and one configuration per `(id,
/// domain)`, every node a peer of every other; `adjust` tunes each node's
/// control-plane settings.
pub fn node_configs(
    dir: &Path,
    cluster: &str,
    nodes: &[(NodeId, &str)],
    adjust: impl Fn(&mut ControlConfig),
) -> anyhow::Result<Vec<NodeConfig>> {
    let certs = dir.join("certs");
    let ca = ClusterCa::generate(cluster)?;
    ca.save(&certs)?;
    for (id, _) in nodes {
        ca.issue_node(*id, &[])?.save(&certs)?;
    }
    let sockets: Vec<UdpSocket> = nodes
        .iter()
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let addrs: BTreeMap<NodeId, SocketAddr> = nodes
        .iter()
        .zip(&sockets)
        .map(|((id, _), s)| Ok((*id, s.local_addr()?)))
        .collect::<anyhow::Result<_>>()?;
    drop(sockets);
    Ok(nodes
        .iter()
        .map(|&(id, domain)| {
            let mut control = ControlConfig::embedded(cluster, domain);
            adjust(&mut control);
            NodeConfig {
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
                control,
            }
        })
        .collect())
}

/// Starts a node per configuration, all on `store`.
pub async fn start_nodes(
    configs: &[NodeConfig],
    store: &EmbeddedStore,
) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for config in configs {
        nodes.push(daemon::start_with(config, store.clone(), &Frontends::default()).await?);
    }
    Ok(nodes)
}

/// Polls `probe` every 100 ms until it answers, for at most `timeout`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return Ok(found);
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `scenario` on nodes started from `configs` (given a fresh
/// directory named after `tag`) on one embedded store, on a 2-thread tokio
/// runtime, bounded by `timeout`; stops every node and removes the
/// directory afterwards.
pub fn run_scenario(
    tag: &str,
    timeout: Duration,
    configs: impl FnOnce(&Path) -> anyhow::Result<Vec<NodeConfig>>,
    scenario: impl AsyncFnOnce(&[Node], &EmbeddedStore) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = super::scratch_dir(tag);
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async {
        let store = metro_fabric::meta::MemMetaStore::new();
        let nodes = start_nodes(&configs(&dir)?, &store).await?;
        let outcome = tokio::time::timeout(timeout, scenario(&nodes, &store))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("scenario timed out after {timeout:?}")));
        for node in &nodes {
            node.stop().await;
        }
        outcome
    });
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}
