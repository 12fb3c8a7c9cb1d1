//! A retried write never overwrites a newer acknowledged one, with real
//! processes: three `metro node run` on loopback (QUIC, mutual TLS,
//! registered in a real etcd), one volume on all three, every node with
//! the test fault `METRO_TEST_HOLD_FORWARDED_MS` (a block command that
//! another node forwards is held that long before it is served).
//!
//! The client writes W1 to block 0 through node 1 (not the leader): node 1
//! forwards it, the leader holds it, node 1 gives up, the client retries
//! the same request elsewhere and reaches the leader directly: W1 is
//! acknowledged. It overwrites block 0 with W2: acknowledged. Then the held
//! copies of W1 are served. A read must return W2.
//!
//! The same run with `METRO_TEST_IGNORE_REQUEST_NUMBERS=1` (the state
//! machines apply duplicates again, as without sessions) must read W1
//! back: that proves the scenario really delivers W1 late, so the first
//! run can fail.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use metro_fabric::env::NodeId;
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeId};
use metro_node::client::MetroClient;

use crate::common::EtcdServer;
use crate::common::processes::{ProcessCluster, data_nodes};

const NODES: [NodeId; 3] = [1, 2, 3];
const DOMAINS: [&str; 3] = ["a", "b", "c"];
const VOLUME: VolumeId = VolumeId(1);
const SIZE_BLOCKS: u64 = 64;
/// How long the leader holds a forwarded command: longer than a relaying
/// node waits (3 s) plus the client's retry and its overwrite.
const HOLD_MS: u64 = 8_000;
const POLL: Duration = Duration::from_millis(100);
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const TEST_TIMEOUT: Duration = Duration::from_secs(150);

fn block(byte: u8) -> BlockData {
    BlockData::new(vec![byte; BLOCK_BYTES]).expect("one block")
}

async fn agreed_leader(client: &MetroClient) -> anyhow::Result<NodeId> {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let mut leaders = Vec::new();
        for node in NODES {
            leaders.push(
                client
                    .status(VOLUME, node)
                    .await
                    .ok()
                    .and_then(|s| s.leader),
            );
        }
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|l| *l == Some(*leader))
        {
            return Ok(*leader);
        }
        ensure!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Restarts the leader until it is not node 1, the client's first target.
async fn leader_other_than_first(
    cluster: &mut ProcessCluster,
    client: &MetroClient,
) -> anyhow::Result<NodeId> {
    for _ in 0..5 {
        let leader = agreed_leader(client).await?;
        if leader != NODES[0] {
            return Ok(leader);
        }
        cluster.kill(leader)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.start(leader)?;
    }
    anyhow::bail!("node 1 kept leading")
}

/// Runs the scenario; the byte block 0 reads back as, and how many
/// forwarded commands the nodes held.
async fn scenario(cluster: &mut ProcessCluster) -> anyhow::Result<(u8, usize)> {
    for id in NODES {
        cluster.start(id)?;
    }
    let setup = cluster.client()?;
    let deadline = Instant::now() + LEADER_TIMEOUT;
    while let Err(err) = setup.create_volume(VOLUME, SIZE_BLOCKS, &NODES).await {
        ensure!(Instant::now() < deadline, "creating the volume: {err}");
        tokio::time::sleep(POLL).await;
    }
    let leader = leader_other_than_first(cluster, &setup).await?;
    println!(
        "leader: node {leader}; the client's first target: node {}",
        NODES[0]
    );
    // A fresh client: no preferred node yet, so its first attempt goes to
    // node 1, which forwards it.
    let client = cluster.client()?;
    let started = Instant::now();
    client.write(VOLUME, 0, block(1)).await.context("W1")?;
    let w1_ms = started.elapsed().as_millis();
    client.write(VOLUME, 0, block(2)).await.context("W2")?;
    let w2_ms = started.elapsed().as_millis();
    println!("W1 acknowledged after {w1_ms} ms, W2 after {w2_ms} ms (hold {HOLD_MS} ms)");
    ensure!(
        w2_ms < u128::from(HOLD_MS),
        "W2 was acknowledged after the held copies were released: the scenario did not happen"
    );
    // The held copies are served by now (plus a relay's retry).
    let released = Duration::from_millis(HOLD_MS + 4_000);
    tokio::time::sleep(released.saturating_sub(started.elapsed())).await;
    let data = client.read(VOLUME, 0, 1).await.context("reading block 0")?;
    let held = held_count(cluster);
    Ok((data.as_bytes()[0], held))
}

/// How many forwarded commands the nodes' logs say they held.
fn held_count(cluster: &ProcessCluster) -> usize {
    NODES
        .iter()
        .map(|id| {
            let log = std::fs::read_to_string(cluster.dir.join(format!("node-{id}.log")));
            log.unwrap_or_default()
                .matches("test fault: holding a forwarded command")
                .count()
        })
        .sum()
}

async fn run(name: &str, without_sessions: bool) -> anyhow::Result<(u8, usize)> {
    let etcd = EtcdServer::start(name);
    let specs = data_nodes(&NODES, &DOMAINS, false);
    let mut cluster = ProcessCluster::create(name, etcd.client_url(), specs, &[])?;
    cluster
        .envs
        .push(("METRO_TEST_HOLD_FORWARDED_MS".into(), HOLD_MS.to_string()));
    if without_sessions {
        cluster
            .envs
            .push(("METRO_TEST_IGNORE_REQUEST_NUMBERS".into(), "1".into()));
    }
    let outcome = tokio::time::timeout(TEST_TIMEOUT, scenario(&mut cluster)).await;
    let mut result = None;
    let outcome = outcome.map(|r| r.map(|value| result = Some(value)));
    cluster.conclude(TEST_TIMEOUT, outcome)?;
    result.context("the scenario returned nothing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_retry_never_overwrites_a_newer_acknowledged_write() -> anyhow::Result<()> {
    let (byte, held) = run("exactly-once", false).await?;
    println!("with sessions: block 0 reads W{byte}; {held} forwarded commands held");
    ensure!(
        held >= 1,
        "no forwarded command was held: the scenario did not happen"
    );
    ensure!(
        byte == 2,
        "block 0 reads W{byte}: a late W1 overwrote the acknowledged W2"
    );
    let (byte, held) = run("exactly-once-no-dedup", true).await?;
    println!("without sessions (planted): block 0 reads W{byte}; {held} held");
    ensure!(
        byte == 1 && held >= 1,
        "without sessions the late W1 should overwrite W2 (reads W{byte}, {held} held): \
         the scenario does not exercise sessions"
    );
    Ok(())
}
