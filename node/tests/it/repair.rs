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

use crate::common;

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use metro_fabric::control::{
    ClusterKeys, Health, VolumeRecord, VolumeSpec, VolumeStatusRecord, decode, encode, status_key,
};
use metro_fabric::env::NodeId;
use metro_fabric::meta::prelude::*;
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeId};
use metro_node::daemon::Node;
use metro_node::daemon::config::NodeConfig;
use metro_node::daemon::control_plane::{ControlStatus, EmbeddedStore};

use common::inproc;

const CLUSTER: &str = "rep";
const NODES: [NodeId; 4] = [1, 2, 3, 4];
const VOLUME: VolumeId = VolumeId(9);
const NAME: &str = "vol";
const BLOCKS: u64 = 256;
const WAIT: Duration = Duration::from_secs(60);

fn domain_of(id: NodeId) -> &'static str {
    ["a", "b", "c", "c"][(id - 1) as usize]
}

fn configs(dir: &std::path::Path) -> anyhow::Result<Vec<NodeConfig>> {
    let domains: Vec<(NodeId, String)> = NODES
        .iter()
        .map(|id| (*id, domain_of(*id).to_string()))
        .collect();
    let nodes: Vec<(NodeId, &str)> = domains.iter().map(|(id, d)| (*id, d.as_str())).collect();
    inproc::node_configs(dir, CLUSTER, &nodes, |c| {
        c.timing.repair_delay = Duration::from_secs(1)
    })
}

fn block(index: u64) -> BlockData {
    BlockData::new(metro_node::demo::workload::pattern(index)).expect("one block")
}

/// Writes block `index` through `node`'s host, retrying while there is
/// no leader (elections, the leadership move).
async fn write(node: &Node, index: u64) -> anyhow::Result<()> {
    inproc::wait_for(&format!("block {index} acknowledged"), WAIT, async || {
        node.host.write(VOLUME, index, block(index)).await.ok()
    })
    .await?;
    Ok(())
}

async fn record(store: &EmbeddedStore) -> Option<VolumeRecord> {
    let key = ClusterKeys::new(CLUSTER).volume(NAME);
    let kv = store.get(key.as_bytes()).await.ok()??;
    decode("volume", &kv.value).ok()
}

async fn health(store: &EmbeddedStore) -> Option<Health> {
    let key = status_key(&ClusterKeys::new(CLUSTER), NAME);
    let kv = store.get(key.as_bytes()).await.ok()??;
    let record: VolumeStatusRecord = decode("status", &kv.value).ok()?;
    Some(record.health)
}

async fn scenario(nodes: &[Node], store: &EmbeddedStore) -> anyhow::Result<()> {
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
    let placed: Vec<NodeId> = inproc::wait_for("placement", WAIT, async || {
        record(store).await?.placement.map(|p| p.nodes().collect())
    })
    .await?;
    let victim = *placed
        .iter()
        .find(|n| domain_of(**n) == "c")
        .ok_or_else(|| anyhow!("no replica in c: {placed:?}"))?;
    let spare = if victim == 3 { 4 } else { 3 };
    let host = |id: NodeId| &nodes[(id - 1) as usize].host;
    inproc::wait_for("the group's leader", WAIT, async || {
        host(1).status(VOLUME).await.ok()?.leader
    })
    .await?;
    for index in 0..BLOCKS / 2 {
        write(&nodes[0], index).await?;
    }
    let coordinator = inproc::wait_for("an elected coordinator", WAIT, async || {
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
    let leader = inproc::wait_for("the leadership to move", WAIT, async || {
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
    let repaired: Vec<NodeId> = inproc::wait_for("the repaired placement", WAIT, async || {
        let nodes: Vec<NodeId> = record(store).await?.placement?.nodes().collect();
        nodes.contains(&spare).then_some(nodes)
    })
    .await?;
    println!(
        "repaired in {} ms: placement {repaired:?}",
        started.elapsed().as_millis()
    );
    ensure!(!repaired.contains(&victim), "the dead node is still placed");
    let healthy = inproc::wait_for("healthy again", WAIT, async || {
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
    let spare_status =
        inproc::wait_for("the new replica at the leader's index", WAIT, async || {
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
    let timeout = Duration::from_secs(150);
    inproc::run_scenario("repair", timeout, configs, scenario)
}
