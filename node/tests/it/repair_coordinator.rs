//! A coordinator killed mid-repair, with real processes and a real etcd:
//! six `metro node run` processes, two per domain (`a`: 4 and 1, `b`: 5
//! and 2, `c`: 6 and 3). Node 4 starts first and becomes the coordinator;
//! the volume is placed on 1, 2, 3 (lowest ids), so the coordinator holds
//! no replica. Every node holds a repair between its learner's catch-up
//! and the promotion (`METRO_TEST_HOLD_PROMOTION_MS`). Node 2 is SIGKILLed;
//! once the group has 5 as a learner (the repair is running), the
//! coordinator (4) is SIGKILLed too. Another coordinator takes over and
//! finishes the repair (resumed, or adopted if the group already promoted):
//! the record places 1, 5, 3; the group's voters are exactly those with no
//! learner left; every acknowledged write reads back.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use metro_fabric::env::NodeId;
use metro_fabric::volume::VolumeId;
use metro_node::client::MetroClient;

use common::EtcdServer;
use common::processes::{
    ProcessCluster, cluster_status, data_nodes, node_up, pattern, volume_health, write_retrying,
};

const CLUSTER: &str = "rpc";
const NAME: &str = "db";
const BLOCKS: u64 = 300;
const HOLD_MS: u64 = 6_000;
const STEP_TIMEOUT: Duration = Duration::from_secs(90);
const TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Polls `probe` every 200 ms until it answers, for at most `within`.
async fn until<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        ensure!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts node 4 alone until it coordinates, then the others; creates the
/// volume and waits until it is healthy; its id.
async fn start(procs: &mut ProcessCluster) -> anyhow::Result<VolumeId> {
    procs.start(4)?;
    let first = procs.admin[&4].clone();
    cluster_status(&first, "node 4 coordinates", STEP_TIMEOUT, |s| {
        s.coordinator == Some(4)
    })
    .await?;
    for id in [1, 2, 3, 5, 6] {
        procs.start(id)?;
    }
    cluster_status(&first, "six nodes up", STEP_TIMEOUT, |s| {
        (1..=6).all(|n| node_up(s, n) == Some(true))
    })
    .await?;
    let created = Command::new(env!("CARGO_BIN_EXE_metro"))
        .args([
            "volume", "create", NAME, "--size", "8MiB", "--admin", &first,
        ])
        .output()?;
    ensure!(
        created.status.success(),
        "metro volume create failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let status = cluster_status(&first, "the volume healthy", STEP_TIMEOUT, |s| {
        volume_health(s, NAME) == Some("healthy")
    })
    .await?;
    let volume = status
        .volumes
        .iter()
        .find(|v| v.name == NAME)
        .ok_or_else(|| anyhow!("no volume {NAME}"))?;
    let placed: BTreeSet<NodeId> = volume.placement.iter().map(|m| m.node).collect();
    ensure!(
        placed == BTreeSet::from([1, 2, 3]),
        "placed on {placed:?}, not 1, 2, 3"
    );
    Ok(VolumeId(volume.id))
}

/// The group's voters and learners as its leader reports them.
async fn group(
    client: &MetroClient,
    id: VolumeId,
    ask: NodeId,
) -> Option<(Vec<NodeId>, Vec<NodeId>)> {
    let leader = client.status(id, ask).await.ok()?.leader?;
    let status = client.status(id, leader).await.ok()?;
    Some((status.voters, status.learners))
}

async fn scenario(procs: &mut ProcessCluster) -> anyhow::Result<()> {
    let id = start(procs).await?;
    let client = procs.client()?;
    for index in 0..BLOCKS / 3 {
        write_retrying(&client, id, index, STEP_TIMEOUT).await?;
    }
    procs.kill(2)?;
    let killed = Instant::now();
    for index in BLOCKS / 3..2 * BLOCKS / 3 {
        write_retrying(&client, id, index, STEP_TIMEOUT).await?;
    }
    until(
        "5 added as a learner (repair running)",
        STEP_TIMEOUT,
        || async {
            let (_, learners) = group(&client, id, 1).await?;
            learners.contains(&5).then_some(())
        },
    )
    .await?;
    println!(
        "node 5 is a learner {} ms after node 2 was killed: killing the coordinator (4)",
        killed.elapsed().as_millis()
    );
    procs.kill(4)?;
    let coordinator_killed = Instant::now();
    let admin = procs.admin[&1].clone();
    let status = cluster_status(&admin, "repaired by a new coordinator", STEP_TIMEOUT, |s| {
        let placement: BTreeSet<NodeId> = s
            .volumes
            .iter()
            .find(|v| v.name == NAME)
            .map(|v| v.placement.iter().map(|m| m.node).collect())
            .unwrap_or_default();
        s.coordinator.is_some_and(|c| c != 4)
            && placement == BTreeSet::from([1, 3, 5])
            && volume_health(s, NAME) == Some("healthy")
    })
    .await?;
    println!(
        "coordinator {:?} recorded 1, 3, 5 {} ms after the coordinator was killed",
        status.coordinator,
        coordinator_killed.elapsed().as_millis()
    );
    let (voters, learners) = until("the group settled", STEP_TIMEOUT, || async {
        let (voters, learners) = group(&client, id, 1).await?;
        (voters == [1, 3, 5] && learners.is_empty()).then_some((voters, learners))
    })
    .await?;
    println!("group voters {voters:?}, learners {learners:?}");
    for index in 2 * BLOCKS / 3..BLOCKS {
        write_retrying(&client, id, index, STEP_TIMEOUT).await?;
    }
    for index in 0..BLOCKS {
        let read = until("a read", STEP_TIMEOUT, || async {
            client.read(id, index, 1).await.ok()
        })
        .await?;
        ensure!(
            read.blocks().next() == pattern(index).blocks().next(),
            "block {index} lost"
        );
    }
    println!("all {BLOCKS} acknowledged blocks read back");
    client.close();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_survives_its_coordinator_being_killed() -> anyhow::Result<()> {
    let etcd = EtcdServer::start("repair-coordinator");
    let specs = data_nodes(&[1, 2, 3, 4, 5, 6], &["a", "b", "c", "a", "b", "c"], true);
    let timing = ["--node-lease-ttl-s", "3", "--repair-delay-s", "2"];
    let mut procs = ProcessCluster::create(CLUSTER, etcd.client_url(), specs, &timing)?;
    procs
        .envs
        .push(("METRO_TEST_HOLD_PROMOTION_MS".into(), HOLD_MS.to_string()));
    let outcome = tokio::time::timeout(TEST_TIMEOUT, scenario(&mut procs)).await;
    procs.conclude(TEST_TIMEOUT, outcome)
}
