//! Lease expiry → node down → repair to full replica count, with real
//! processes and a real etcd: four `metro node run` processes in domains
//! `a` (1), `b` (2) and `c` (3, 4), a 3-replica volume created with the CLI
//! (`metro volume create`), placed by the coordinator one replica per
//! domain. The placed `c` node is SIGKILLed: it never deregisters, so it
//! is seen down only when its lease (3 s) expires; after the repair delay
//! (2 s) the coordinator moves its replica to the other `c` node (learner,
//! catch-up, voter swap, forwarded to the group's leader). `metro cluster
//! status` must show the dead node down and the volume healthy again on
//! the new placement, and the new replica must hold the same blocks as the
//! leader (status digest at the same applied index), every acknowledged
//! write included.

use crate::common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use metro_fabric::env::NodeId;
use metro_fabric::volume::VolumeId;

use common::EtcdServer;
use common::processes::{
    NodeSpec, ProcessCluster, cluster_status, node_up, volume_health, write_retrying,
};

const CLUSTER: &str = "rpr";
const NAME: &str = "db";
const BLOCKS: u64 = 400;
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const TEST_TIMEOUT: Duration = Duration::from_secs(200);

async fn scenario(procs: &mut ProcessCluster) -> anyhow::Result<()> {
    for id in [1, 2, 3, 4] {
        procs.start(id)?;
    }
    let admin = procs.admin[&1].clone();
    cluster_status(&admin, "four nodes up", STEP_TIMEOUT, |s| {
        [1, 2, 3, 4].iter().all(|n| node_up(s, *n) == Some(true))
    })
    .await?;
    let created = Command::new(env!("CARGO_BIN_EXE_metro"))
        .args([
            "volume", "create", NAME, "--size", "8MiB", "--admin", &admin,
        ])
        .output()?;
    ensure!(
        created.status.success(),
        "metro volume create failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let status = cluster_status(&admin, "the volume healthy", STEP_TIMEOUT, |s| {
        volume_health(s, NAME) == Some("healthy")
    })
    .await?;
    let volume = status
        .volumes
        .iter()
        .find(|v| v.name == NAME)
        .ok_or_else(|| anyhow!("no volume {NAME}"))?;
    let id = VolumeId(volume.id);
    let placed: Vec<NodeId> = volume.placement.iter().map(|m| m.node).collect();
    let victim = *placed
        .iter()
        .find(|n| **n == 3 || **n == 4)
        .ok_or_else(|| anyhow!("no replica in domain c: {placed:?}"))?;
    let spare = if victim == 3 { 4 } else { 3 };
    println!("{NAME} ({id}) placed on {placed:?}; killing node {victim} (SIGKILL)");

    let client = Arc::new(procs.client()?);
    for index in 0..BLOCKS / 2 {
        write_retrying(&client, id, index, STEP_TIMEOUT).await?;
    }
    procs.kill(victim)?;
    let killed = Instant::now();
    for index in BLOCKS / 2..BLOCKS {
        write_retrying(&client, id, index, STEP_TIMEOUT).await?;
    }
    let status = cluster_status(&admin, "the volume repaired", STEP_TIMEOUT, |s| {
        let placement: Vec<NodeId> = s
            .volumes
            .iter()
            .find(|v| v.name == NAME)
            .map(|v| v.placement.iter().map(|m| m.node).collect())
            .unwrap_or_default();
        node_up(s, victim) != Some(true)
            && placement.contains(&spare)
            && !placement.contains(&victim)
            && volume_health(s, NAME) == Some("healthy")
    })
    .await?;
    println!(
        "repaired {} ms after the kill (lease 3 s + repair delay 2 s included): {:?}",
        killed.elapsed().as_millis(),
        status
            .volumes
            .iter()
            .find(|v| v.name == NAME)
            .map(|v| &v.placement)
    );

    let deadline = Instant::now() + STEP_TIMEOUT;
    let (leader_status, spare_status) = loop {
        let spare_status = client.status(id, spare).await?;
        let leader = spare_status
            .leader
            .ok_or_else(|| anyhow!("the new replica knows no leader"))?;
        let leader_status = client.status(id, leader).await?;
        if leader_status.applied_index == spare_status.applied_index {
            break (leader_status, spare_status);
        }
        ensure!(Instant::now() < deadline, "the new replica never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "leader {}: applied {:?} blocks {} digest {:#010x}; new replica {spare}: applied {:?} blocks {} digest {:#010x}",
        leader_status.node,
        leader_status.applied_index,
        leader_status.blocks_nonzero,
        leader_status.digest,
        spare_status.applied_index,
        spare_status.blocks_nonzero,
        spare_status.digest
    );
    ensure!(
        spare_status.digest == leader_status.digest && spare_status.blocks_nonzero == BLOCKS,
        "the new replica differs from the leader"
    );
    ensure!(
        !spare_status.voters.contains(&victim) && spare_status.voters.contains(&spare),
        "group voters not swapped: {:?}",
        spare_status.voters
    );
    client.close();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_repaired_in_its_domain_after_its_lease_expires() -> anyhow::Result<()> {
    let etcd = EtcdServer::start("repair");
    let specs = vec![
        NodeSpec {
            id: 1,
            domain: "a",
            role: "data",
            admin: true,
        },
        NodeSpec {
            id: 2,
            domain: "b",
            role: "data",
            admin: false,
        },
        NodeSpec {
            id: 3,
            domain: "c",
            role: "data",
            admin: false,
        },
        NodeSpec {
            id: 4,
            domain: "c",
            role: "data",
            admin: false,
        },
    ];
    let timing = ["--node-lease-ttl-s", "3", "--repair-delay-s", "2"];
    let mut procs = ProcessCluster::create(CLUSTER, etcd.client_url(), specs, &timing)?;
    let outcome = tokio::time::timeout(TEST_TIMEOUT, scenario(&mut procs)).await;
    procs.conclude(TEST_TIMEOUT, outcome)
}
