//! The witness sequence with real processes and a real etcd: data domains
//! `a` (node 1) and `b` (node 2) and a witness domain `w` (node 3), each a
//! `metro node run` process registered in etcd. A volume record without a
//! placement is written to etcd; the elected coordinator places it on both
//! data domains plus the witness and creates its group.
//!
//! 1. writes go through (all three up); then etcd is killed: writes go on
//!    (Raft does not need etcd), and etcd is restarted on its data;
//! 2. `a` is lost (SIGKILL): writes continue on `b` + `w`;
//! 3. `b` is lost (SIGKILL) and `a` comes back: `a` + `w` continue — the
//!    writes of step 2 exist only in `w`'s log now, so the witness must
//!    lead long enough to hand them to `a`, then hand leadership over;
//! 4. every acknowledged write of every step reads back exactly (through
//!    `a`), the witness holds no blocks, and each step's outcome is visible
//!    in the coordinator's published volume health and in `metro cluster
//!    status` (the real CLI, asked of the witness's admin API: nodes up or
//!    down, the volume healthy or degraded).
//!
//! Fails if an acknowledged write is lost or differs, if writes stop in a
//! step, if the witness ever stores a block, or on timeouts.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use metro_fabric::control::{
    ClusterKeys, Health, MemberRole, VolumeRecord, VolumeSpec, VolumeStatusRecord, decode, encode,
    status_key,
};
use metro_fabric::env::NodeId;
use metro_fabric::meta::prelude::*;
use metro_fabric::volume::{BlockData, VolumeId};
use metro_node::client::MetroClient;

use common::EtcdServer;
use common::processes::{NodeSpec, ProcessCluster, cluster_status, node_up, volume_health};

const CLUSTER: &str = "wit";
const A: NodeId = 1;
const B: NodeId = 2;
const W: NodeId = 3;
const NODES: [NodeId; 3] = [A, B, W];
const VOLUME: VolumeId = VolumeId(7);
const NAME: &str = "db";
const SIZE_BLOCKS: u64 = 4096;
/// Distinct blocks written per step.
const PER_STEP: u64 = 300;
const QUEUE_DEPTH: usize = 8;
/// Blocks written while etcd is down (beyond the steps' ranges).
const OUTAGE_BLOCKS: std::ops::Range<u64> = 3000..3100;
/// How long one step's writes may take (elections, catch-up included).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const TEST_TIMEOUT: Duration = Duration::from_secs(240);
const POLL: Duration = Duration::from_millis(200);

fn pattern(index: u64) -> BlockData {
    BlockData::new(metro_node::demo::workload::pattern(index)).expect("one block")
}

/// Writes blocks `range` at queue depth [`QUEUE_DEPTH`], retrying each
/// until acknowledged (bounded by [`STEP_TIMEOUT`]); every block in the
/// range is acknowledged on success.
async fn write_step(client: &Arc<MetroClient>, range: std::ops::Range<u64>) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(range.start));
    let mut tasks = Vec::new();
    for _ in 0..QUEUE_DEPTH {
        let (client, next, end) = (Arc::clone(client), Arc::clone(&next), range.end);
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if index >= end {
                    return anyhow::Ok(());
                }
                let mut last_error = String::new();
                while Instant::now() < deadline {
                    match client.write(VOLUME, index, pattern(index)).await {
                        Ok(_) => break,
                        Err(err) => {
                            last_error = err.to_string();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                ensure!(
                    Instant::now() < deadline,
                    "block {index} not acknowledged in time: {last_error}"
                );
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Reads blocks `range` back; the indexes that differ from their pattern.
async fn wrong_blocks(
    client: &MetroClient,
    range: std::ops::Range<u64>,
) -> anyhow::Result<Vec<u64>> {
    let mut wrong = Vec::new();
    let deadline = Instant::now() + STEP_TIMEOUT;
    for index in range {
        let data = loop {
            match client.read(VOLUME, index, 1).await {
                Ok(data) => break data,
                Err(err) if Instant::now() < deadline => {
                    eprintln!("read retry: {err}");
                    tokio::time::sleep(POLL).await;
                }
                Err(err) => return Err(err).context(format!("reading block {index}")),
            }
        };
        if data != pattern(index) {
            wrong.push(index);
        }
    }
    Ok(wrong)
}

/// Waits until the published health of the volume satisfies `check`;
/// returns it.
async fn wait_health(
    etcd: &impl metro_fabric::meta::MetaStore,
    what: &str,
    check: impl Fn(&Health) -> bool,
) -> anyhow::Result<Health> {
    let key = status_key(&ClusterKeys::new(CLUSTER), NAME);
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(Some(kv)) = etcd.get(key.as_bytes()).await {
            let record: VolumeStatusRecord = decode("status", &kv.value)?;
            if check(&record.health) {
                return Ok(record.health);
            }
            last = Some(record);
        }
        tokio::time::sleep(POLL).await;
    }
    Err(anyhow!(
        "published health never showed {what}; last: {last:?}"
    ))
}

fn live(health: &Health, node: NodeId) -> Option<bool> {
    health.member(node).map(|m| m.live)
}

async fn blocks_on(client: &MetroClient, node: NodeId) -> anyhow::Result<(Option<u64>, u64)> {
    let status = client.status(VOLUME, node).await?;
    Ok((status.applied_index, status.blocks_nonzero))
}

async fn scenario(procs: &mut ProcessCluster, etcd_server: &mut EtcdServer) -> anyhow::Result<()> {
    let etcd = etcd_server.connect().await;
    for id in NODES {
        procs.start(id)?;
    }
    let record = VolumeRecord {
        spec: VolumeSpec {
            name: NAME.into(),
            id: VOLUME.0,
            size_bytes: SIZE_BLOCKS * 4096,
            replicas: 2,
        },
        placement: None,
    };
    let key = ClusterKeys::new(CLUSTER).volume(NAME);
    etcd.put(key.as_bytes(), &encode(&record), None).await?;
    let health = wait_health(&etcd, "a created group with all members live", |h| {
        NODES.iter().all(|n| live(h, *n) == Some(true))
    })
    .await?;
    println!("placed and created: {health:?}");
    let placed: VolumeRecord = decode(
        "volume",
        &etcd
            .get(key.as_bytes())
            .await?
            .ok_or_else(|| anyhow!("volume record gone"))?
            .value,
    )?;
    let placement = placed.placement.ok_or_else(|| anyhow!("not placed"))?;
    let witness = placement
        .members
        .iter()
        .find(|m| m.role == MemberRole::Witness)
        .map(|m| m.node);
    ensure!(
        witness == Some(W),
        "the witness domain is not the witness: {placement:?}"
    );

    cluster_status(
        &procs.admin[&W],
        "all up and the volume healthy",
        STEP_TIMEOUT,
        |s| {
            NODES.iter().all(|n| node_up(s, *n) == Some(true))
                && volume_health(s, NAME) == Some("healthy")
        },
    )
    .await?;
    let client = Arc::new(procs.client()?);
    write_step(&client, 0..PER_STEP).await.context("step 1")?;
    println!("step 1: {PER_STEP} writes acknowledged with a, b and w up");
    etcd_server.kill();
    write_step(&client, OUTAGE_BLOCKS)
        .await
        .context("writing while etcd is down")?;
    etcd_server.spawn();
    println!(
        "etcd down: {} writes acknowledged without it; etcd restarted",
        OUTAGE_BLOCKS.end - OUTAGE_BLOCKS.start
    );

    procs.kill(A)?;
    let killed = Instant::now();
    write_step(&client, PER_STEP..2 * PER_STEP)
        .await
        .context("step 2 (a lost)")?;
    println!(
        "step 2: a lost; {PER_STEP} more writes acknowledged on b + w ({} ms)",
        killed.elapsed().as_millis()
    );
    let health = wait_health(&etcd, "a down", |h| live(h, A) == Some(false)).await?;
    println!("  published health: {health:?}");
    ensure!(
        matches!(health, Health::Degraded { .. }),
        "not degraded: {health:?}"
    );

    procs.kill(B)?;
    procs.start(A)?;
    let swapped = Instant::now();
    write_step(&client, 2 * PER_STEP..3 * PER_STEP)
        .await
        .context("step 3 (b lost, a back)")?;
    println!(
        "step 3: b lost, a back; {PER_STEP} more writes acknowledged on a + w ({} ms)",
        swapped.elapsed().as_millis()
    );
    let health = wait_health(&etcd, "b down and a back", |h| {
        live(h, B) == Some(false) && live(h, A) == Some(true)
    })
    .await?;
    println!("  published health: {health:?}");
    cluster_status(
        &procs.admin[&W],
        "b down, a back and the volume degraded",
        STEP_TIMEOUT,
        |s| {
            node_up(s, B) == Some(false)
                && node_up(s, A) == Some(true)
                && volume_health(s, NAME) == Some("degraded")
        },
    )
    .await?;

    let mut wrong = wrong_blocks(&client, 0..3 * PER_STEP).await?;
    wrong.extend(wrong_blocks(&client, OUTAGE_BLOCKS).await?);
    ensure!(
        wrong.is_empty(),
        "acknowledged writes read back wrong: {wrong:?}"
    );
    let total = 3 * PER_STEP + (OUTAGE_BLOCKS.end - OUTAGE_BLOCKS.start);
    println!("all {total} acknowledged writes read back exactly");

    let (a_applied, a_blocks) = blocks_on(&client, A).await?;
    let (w_applied, w_blocks) = blocks_on(&client, W).await?;
    println!(
        "a: applied {a_applied:?}, {a_blocks} blocks; w: applied {w_applied:?}, {w_blocks} blocks"
    );
    ensure!(a_blocks >= total, "a lacks blocks: {a_blocks}");
    ensure!(w_blocks == 0, "the witness stores {w_blocks} blocks");
    client.close();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_data_domains_and_a_witness_survive_losing_each_in_turn() -> anyhow::Result<()> {
    let mut etcd = EtcdServer::start("witness");
    let specs = vec![
        NodeSpec {
            id: A,
            domain: "a",
            role: "data",
            admin: false,
        },
        NodeSpec {
            id: B,
            domain: "b",
            role: "data",
            admin: false,
        },
        NodeSpec {
            id: W,
            domain: "w",
            role: "witness",
            admin: true,
        },
    ];
    let timing = ["--node-lease-ttl-s", "3", "--repair-delay-s", "3600"];
    let mut procs = ProcessCluster::create(CLUSTER, etcd.client_url(), specs, &timing)?;
    let outcome = tokio::time::timeout(TEST_TIMEOUT, scenario(&mut procs, &mut etcd)).await;
    procs.conclude(TEST_TIMEOUT, outcome)
}
