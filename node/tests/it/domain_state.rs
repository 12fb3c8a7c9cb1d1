//! Domain deactivation and activation on real nodes: three in-process
//! `daemon::start_with` nodes (QUIC, kvstore on disk) in domains `a`, `b`,
//! `c` sharing one embedded control-plane store; a volume with a replica in
//! each, created by the coordinator from its record. Deactivating the
//! leader's domain (`set_domain_state`, what `metro domain deactivate`
//! does) must move the leadership out of it, stop I/O through that
//! domain's node, keep I/O going through the others, and show the member
//! as not healthy in the published health; activating it again restores
//! I/O through it.

use crate::common;

use std::time::Duration;

use anyhow::{Context, ensure};
use metro_fabric::control::{
    ClusterKeys, DomainState, Health, VolumeRecord, VolumeSpec, VolumeStatusRecord, decode, encode,
    set_domain_state, status_key,
};
use metro_fabric::env::NodeId;
use metro_fabric::meta::prelude::*;
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeId};
use metro_node::daemon::Node;
use metro_node::daemon::config::NodeConfig;
use metro_node::daemon::control_plane::EmbeddedStore;

use common::inproc;

const CLUSTER: &str = "dom";
const NODES: [NodeId; 3] = [1, 2, 3];
const VOLUME: VolumeId = VolumeId(3);
const NAME: &str = "vol";
const WAIT: Duration = Duration::from_secs(30);

fn domain_of(id: NodeId) -> String {
    ["a", "b", "c"][(id - 1) as usize].to_owned()
}

fn configs(dir: &std::path::Path) -> anyhow::Result<Vec<NodeConfig>> {
    let domains: Vec<(NodeId, String)> = NODES.iter().map(|id| (*id, domain_of(*id))).collect();
    let nodes: Vec<(NodeId, &str)> = domains.iter().map(|(id, d)| (*id, d.as_str())).collect();
    inproc::node_configs(dir, CLUSTER, &nodes, |_| {})
}

fn block(fill: u8) -> BlockData {
    BlockData::new(vec![fill; BLOCK_BYTES]).expect("one block")
}

async fn leader(nodes: &[Node]) -> Option<NodeId> {
    nodes[0].host.status(VOLUME).await.ok()?.leader
}

async fn health(store: &EmbeddedStore) -> Option<Health> {
    let key = status_key(&ClusterKeys::new(CLUSTER), NAME);
    let kv = store.get(key.as_bytes()).await.ok()??;
    let record: VolumeStatusRecord = decode("status", &kv.value).ok()?;
    Some(record.health)
}

fn member_healthy(health: &Health, node: NodeId) -> Option<(bool, bool)> {
    health.member(node).map(|m| (m.domain_active, m.healthy()))
}

async fn scenario(nodes: &[Node], store: &EmbeddedStore) -> anyhow::Result<()> {
    let keys = ClusterKeys::new(CLUSTER);
    let record = VolumeRecord {
        spec: VolumeSpec {
            name: NAME.into(),
            id: VOLUME.0,
            size_bytes: 1024 * BLOCK_BYTES as u64,
            replicas: 3,
        },
        placement: None,
    };
    store
        .put(keys.volume(NAME).as_bytes(), &encode(&record), None)
        .await?;
    inproc::wait_for("a first write", WAIT, async || {
        nodes[0].host.write(VOLUME, 0, block(1)).await.ok()
    })
    .await?;
    let first = inproc::wait_for("a leader of the created group", WAIT, async || {
        leader(nodes).await
    })
    .await?;
    println!("volume created by the coordinator; leader node {first}");

    let domain = domain_of(first);
    set_domain_state(store, &keys, &domain, DomainState::Inactive).await?;
    let moved = inproc::wait_for(
        "the leadership to leave the inactive domain",
        WAIT,
        async || leader(nodes).await.filter(|l| *l != first),
    )
    .await?;
    println!("domain {domain} deactivated: leader moved {first} -> {moved}");
    let stopped = &nodes[(first - 1) as usize].host;
    ensure!(
        stopped.write(VOLUME, 1, block(2)).await.is_err(),
        "a node of an inactive domain still serves writes"
    );
    let active = &nodes[(moved - 1) as usize].host;
    inproc::wait_for("a write through an active domain", WAIT, async || {
        active.write(VOLUME, 2, block(3)).await.ok()
    })
    .await
    .context("writing through an active domain")?;
    let shown = inproc::wait_for("health showing the inactive domain", WAIT, async || {
        health(store)
            .await
            .filter(|h| member_healthy(h, first) == Some((false, false)))
    })
    .await?;
    println!("published health: {shown:?}");

    set_domain_state(store, &keys, &domain, DomainState::Active).await?;
    inproc::wait_for("I/O through the reactivated domain", WAIT, async || {
        stopped.write(VOLUME, 4, block(5)).await.ok()
    })
    .await?;
    let data = stopped.read(VOLUME, 0, 5).await?;
    let expect: Vec<u8> = [1u8, 0, 3, 0, 5]
        .iter()
        .flat_map(|f| vec![*f; BLOCK_BYTES])
        .collect();
    ensure!(
        data.as_bytes() == expect.as_slice(),
        "blocks differ after reactivation"
    );
    println!("domain {domain} active again: I/O through node {first} resumed");
    Ok(())
}

#[test]
fn deactivating_a_domain_moves_leadership_and_stops_its_io() -> anyhow::Result<()> {
    let timeout = Duration::from_secs(120);
    inproc::run_scenario("domain-state", timeout, configs, scenario)
}
