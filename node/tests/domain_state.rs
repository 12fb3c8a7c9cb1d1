//! Domain deactivation and activation on real nodes: three in-process
//! `daemon::start_with` nodes (QUIC, kvstore on disk) in domains `a`, `b`,
//! `c` sharing one embedded control-plane store; a volume with a replica in
//! each, created by the coordinator from its record. Deactivating the
//! leader's domain (`set_domain_state`, what `metro domain deactivate`
//! does) must move the leadership out of it, stop I/O through that
//! domain's node, keep I/O going through the others, and show the member
//! as not healthy in the published health; activating it again restores
//! I/O through it.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use metro_fabric::control::{
    ClusterKeys, DomainState, Health, VolumeRecord, VolumeSpec, VolumeStatusRecord, decode, encode,
    set_domain_state, status_key,
};
use metro_fabric::env::NodeId;
use metro_fabric::membership::{MemMembership, Membership as _};
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeId};
use metro_node::config::NodeConfig;
use metro_node::control_plane::{AnyMembership, ControlConfig};
use metro_node::daemon::{self, Frontends, Node};
use metro_node::tls::ClusterCa;

const CLUSTER: &str = "dom";
const NODES: [NodeId; 3] = [1, 2, 3];
const VOLUME: VolumeId = VolumeId(3);
const NAME: &str = "vol";
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

fn domain_of(id: NodeId) -> String {
    ["a", "b", "c"][(id - 1) as usize].to_owned()
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
            control: ControlConfig::embedded(CLUSTER, &domain_of(id)),
        })
        .collect())
}

fn block(fill: u8) -> BlockData {
    BlockData::new(vec![fill; BLOCK_BYTES]).expect("one block")
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

async fn leader(nodes: &[Node]) -> Option<NodeId> {
    nodes[0].host.status(VOLUME).await.ok()?.leader
}

async fn health(store: &AnyMembership) -> Option<Health> {
    let key = status_key(&ClusterKeys::new(CLUSTER), NAME);
    let kv = store.get(key.as_bytes()).await.ok()??;
    let record: VolumeStatusRecord = decode("status", &kv.value).ok()?;
    Some(record.health)
}

fn member_healthy(health: &Health, node: NodeId) -> Option<(bool, bool)> {
    let members = match health {
        Health::Pending => return None,
        Health::Healthy { members }
        | Health::Degraded { members }
        | Health::Unavailable { members } => members,
    };
    let m = members.iter().find(|m| m.node == node)?;
    Some((m.domain_active, m.healthy()))
}

async fn scenario(nodes: &[Node], store: &AnyMembership) -> anyhow::Result<()> {
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
    let first = wait_for("a leader of the created group", async || {
        leader(nodes).await
    })
    .await?;
    nodes[0].host.write(VOLUME, 0, block(1)).await?;
    println!("volume created by the coordinator; leader node {first}");

    let domain = domain_of(first);
    set_domain_state(store, &keys, &domain, DomainState::Inactive).await?;
    let moved = wait_for("the leadership to leave the inactive domain", async || {
        leader(nodes).await.filter(|l| *l != first)
    })
    .await?;
    println!("domain {domain} deactivated: leader moved {first} -> {moved}");
    let stopped = &nodes[(first - 1) as usize].host;
    ensure!(
        stopped.write(VOLUME, 1, block(2)).await.is_err(),
        "a node of an inactive domain still serves writes"
    );
    let active = &nodes[(moved - 1) as usize].host;
    active
        .write(VOLUME, 2, block(3))
        .await
        .context("writing through an active domain")?;
    let shown = wait_for("health showing the inactive domain", async || {
        health(store)
            .await
            .filter(|h| member_healthy(h, first) == Some((false, false)))
    })
    .await?;
    println!("published health: {shown:?}");

    set_domain_state(store, &keys, &domain, DomainState::Active).await?;
    wait_for("I/O through the reactivated domain", async || {
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
    let dir: PathBuf =
        std::env::temp_dir().join(format!("metro-domain-state-{}", std::process::id()));
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
        let outcome = tokio::time::timeout(Duration::from_secs(120), scenario(&nodes, &store))
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
