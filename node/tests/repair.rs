//! Repair on real nodes: four in-process `daemon::start_with` nodes (QUIC,
//! kvstore on disk) in domains `a` (1), `b` (2) and `c` (3, 4) sharing one
//! embedded control-plane store. A 3-replica volume record is placed by the
//! coordinator (one node per domain). The group's leadership is moved off
//! the coordinator's node, so that the repair's membership change has to
//! be forwarded to the leader. The placed `c` node stops (it deregisters:
//! down at once); after the repair delay the coordinator adds the other
//! `c` node as a learner, catches it up, swaps it in and records the new
//! placement. The new replica must hold exactly the blocks written before
//! and during the repair, and the published health must turn healthy again.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use metro_fabric::control::{
    ClusterKeys, Health, VolumeRecord, VolumeSpec, VolumeStatusRecord, decode, encode, status_key,
};
use metro_fabric::env::NodeId;
use metro_fabric::membership::{MemMembership, Membership as _};
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeId};
use metro_node::config::NodeConfig;
use metro_node::control_plane::{AnyMembership, ControlConfig};
use metro_node::daemon::{self, Frontends, Node};
use metro_node::tls::ClusterCa;

const CLUSTER: &str = "rep";
const NODES: [NodeId; 4] = [1, 2, 3, 4];
const VOLUME: VolumeId = VolumeId(9);
const NAME: &str = "vol";
const BLOCKS: u64 = 256;
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

fn domain_of(id: NodeId) -> &'static str {
    ["a", "b", "c", "c"][(id - 1) as usize]
}

fn configs(dir: &std::path::Path) -> anyhow::Result<Vec<NodeConfig>> {
    let certs = dir.join("certs");
    let ca = ClusterCa::generate(CLUSTER)?;
    ca.save(&certs)?;
    for id in NODES {
        ca.issue_node(id, &[])?.save(&certs)?;
    }
    let sockets: Vec<UdpSocket> = NODES
        .iter()
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let addrs: BTreeMap<NodeId, SocketAddr> = NODES
        .iter()
        .zip(&sockets)
        .map(|(id, s)| Ok((*id, s.local_addr()?)))
        .collect::<anyhow::Result<_>>()?;
    drop(sockets);
    Ok(NODES
        .iter()
        .map(|&id| {
            let mut control = ControlConfig::embedded(CLUSTER, domain_of(id));
            control.timing.repair_delay = Duration::from_secs(1);
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

fn block(index: u64) -> BlockData {
    BlockData::new(metro_node::demo::workload::pattern(index)).expect("one block")
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = probe().await {
            return Ok(found);
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Writes block `index` through `node`'s host, retrying while there is
/// no leader (elections, the leadership move).
async fn write(node: &Node, index: u64) -> anyhow::Result<()> {
    wait_for(&format!("block {index} acknowledged"), async || {
        node.host.write(VOLUME, index, block(index)).await.ok()
    })
    .await?;
    Ok(())
}

async fn record(store: &AnyMembership) -> Option<VolumeRecord> {
    let key = ClusterKeys::new(CLUSTER).volume(NAME);
    let kv = store.get(key.as_bytes()).await.ok()??;
    decode("volume", &kv.value).ok()
}

async fn health(store: &AnyMembership) -> Option<Health> {
    let key = status_key(&ClusterKeys::new(CLUSTER), NAME);
    let kv = store.get(key.as_bytes()).await.ok()??;
    let record: VolumeStatusRecord = decode("status", &kv.value).ok()?;
    Some(record.health)
}

async fn scenario(nodes: &[Node], store: &AnyMembership) -> anyhow::Result<()> {
    let spec = VolumeSpec {
        name: NAME.into(),
        id: VOLUME.0,
        size_bytes: BLOCKS * BLOCK_BYTES as u64,
        replicas: 3,
    };
    let keys = ClusterKeys::new(CLUSTER);
    let fresh = VolumeRecord {
        spec,
        placement: None,
    };
    store
        .put(keys.volume(NAME).as_bytes(), &encode(&fresh), None)
        .await?;
    let placed: Vec<NodeId> = wait_for("placement", async || {
        record(store).await?.placement.map(|p| p.nodes().collect())
    })
    .await?;
    let victim = *placed
        .iter()
        .find(|n| domain_of(**n) == "c")
        .ok_or_else(|| anyhow!("no replica in c: {placed:?}"))?;
    let spare = if victim == 3 { 4 } else { 3 };
    let host = |id: NodeId| &nodes[(id - 1) as usize].host;
    wait_for("the group's leader", async || {
        host(1).status(VOLUME).await.ok()?.leader
    })
    .await?;
    for index in 0..BLOCKS / 2 {
        write(&nodes[0], index).await?;
    }
    let coordinator = wait_for("an elected coordinator", async || {
        nodes
            .iter()
            .find(|n| n.control.coordinator_stats().leading)
            .map(|n| n.host.node())
    })
    .await?;
    // Lead from a data member that is neither the coordinator nor the victim.
    let target = *placed
        .iter()
        .find(|n| **n != coordinator && **n != victim)
        .ok_or_else(|| anyhow!("no member to lead"))?;
    let leader = wait_for("the leadership to move", async || {
        let raft = host(1).raft(VOLUME)?;
        let leader = host(1).status(VOLUME).await.ok()?.leader?;
        if leader == target {
            return Some(leader);
        }
        if let Some(raft_leader) = host(leader).raft(VOLUME) {
            let _ = raft_leader.trigger().transfer_leader(target).await;
        }
        drop(raft);
        None
    })
    .await?;
    println!(
        "placed on {placed:?}; coordinator node {coordinator}, leader node {leader}; stopping node {victim}"
    );
    nodes[(victim - 1) as usize].stop().await;
    let started = Instant::now();
    for index in BLOCKS / 2..BLOCKS {
        write(&nodes[(target - 1) as usize], index).await?;
    }
    let repaired: Vec<NodeId> = wait_for("the repaired placement", async || {
        let nodes: Vec<NodeId> = record(store).await?.placement?.nodes().collect();
        nodes.contains(&spare).then_some(nodes)
    })
    .await?;
    println!(
        "repaired in {} ms: placement {repaired:?}",
        started.elapsed().as_millis()
    );
    ensure!(!repaired.contains(&victim), "the dead node is still placed");
    let healthy = wait_for("healthy again", async || {
        health(store)
            .await
            .filter(|h| matches!(h, Health::Healthy { .. }))
    })
    .await?;
    println!("published health: {healthy:?}");
    let leader_status = host(target).status(VOLUME).await?;
    ensure!(
        leader_status.voters.contains(&spare) && !leader_status.voters.contains(&victim),
        "group voters not swapped: {leader_status:?}"
    );
    let spare_status = wait_for("the new replica at the leader's index", async || {
        let s = host(spare).status(VOLUME).await.ok()?;
        let l = host(target).status(VOLUME).await.ok()?;
        (s.applied_index == l.applied_index).then_some(s)
    })
    .await?;
    let now = host(target).status(VOLUME).await?;
    ensure!(
        spare_status.digest == now.digest && spare_status.blocks_nonzero == BLOCKS,
        "the new replica differs: {spare_status:?} vs {now:?}"
    );
    Ok(())
}

#[test]
fn a_dead_replica_is_replaced_in_its_domain() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::temp_dir().join(format!("metro-repair-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async {
        let store = AnyMembership::Mem(MemMembership::new());
        let mut nodes = Vec::new();
        for config in configs(&dir)? {
            let node =
                daemon::start_with(&config, Some(store.clone()), &Frontends::default()).await?;
            nodes.push(node);
        }
        let outcome = tokio::time::timeout(Duration::from_secs(150), scenario(&nodes, &store))
            .await
            .unwrap_or_else(|_| Err(anyhow!("scenario timed out")));
        for node in &nodes {
            node.stop().await;
        }
        outcome
    });
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}
