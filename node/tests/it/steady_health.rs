//! Volume health does not flap under steady writes: three `metro node run`
//! processes (real etcd, QUIC, one data domain each, admin and NBD
//! listeners), one 3-replica volume written continuously through node 1's
//! NBD export by four connections, and `metro volume inspect` sampled 100
//! times (about 20 coordinator rounds): every sample must say `healthy`.
//! (Before in-sync meant "within a lag bound", a follower counted in sync
//! only if it had matched the leader's last index at that instant, and 7 of
//! 24 samples said `unavailable`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::ensure;
use metro_fabric::env::NodeId;
use metro_node::demo::nbd_client::NbdClient;

use crate::admin_harness::{metro, wait_for};
use crate::common::EtcdServer;
use crate::common::processes::{ProcessCluster, data_nodes};

const NODES: [NodeId; 3] = [1, 2, 3];
const DOMAINS: [&str; 3] = ["a", "b", "c"];
const SAMPLES: usize = 100;
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
const WRITERS: u64 = 4;
/// Blocks of the 8 MiB volume each writer cycles over.
const BLOCKS_PER_WRITER: u64 = 256;
const TEST_TIMEOUT: Duration = Duration::from_secs(240);

/// Writes its own blocks through `nbd` until `stop`; counts acknowledged writes.
async fn writer(
    nbd: std::net::SocketAddr,
    index: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut client = loop {
        match NbdClient::connect(nbd, "db").await {
            Ok(client) => break client,
            Err(err) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the NBD export db: {err}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let block = index * BLOCKS_PER_WRITER + n % BLOCKS_PER_WRITER;
        client
            .write(block * 4096, &[(n % 251) as u8; 4096])
            .await
            .expect("a write on a healthy cluster");
        acked.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
    client.disconnect().await;
}

async fn scenario(cluster: &mut ProcessCluster) -> anyhow::Result<()> {
    for id in NODES {
        cluster.start(id)?;
    }
    let admin = cluster.admin[&1].clone();
    wait_for("the volume created", async || {
        let run = metro(
            &[
                "volume", "create", "db", "--size", "8MiB", "--admin", &admin,
            ],
            None,
        )
        .await;
        (run.code == 0).then_some(())
    })
    .await;
    wait_for("db healthy", async || {
        let run = metro(&["volume", "inspect", "db", "--admin", &admin], None).await;
        run.stdout.contains("health    healthy").then_some(())
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let nbd = cluster.nbd[&1];
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| tokio::spawn(writer(nbd, i, Arc::clone(&stop), Arc::clone(&acked))))
        .collect();
    wait_for("steady writes", async || {
        (acked.load(Ordering::Relaxed) > 100).then_some(())
    })
    .await;
    let mut unhealthy = Vec::new();
    for sample in 0..SAMPLES {
        let run = metro(&["volume", "inspect", "db", "--admin", &admin], None).await;
        ensure!(run.code == 0, "inspect failed: {}", run.stderr);
        if !run.stdout.contains("health    healthy") {
            unhealthy.push((sample, run.stdout));
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await?;
    }
    let writes = acked.load(Ordering::Relaxed);
    println!(
        "{SAMPLES} samples under {writes} acknowledged writes: {} not healthy",
        unhealthy.len()
    );
    ensure!(writes > 1_000, "only {writes} writes: not steady load");
    ensure!(
        unhealthy.is_empty(),
        "{} of {SAMPLES} samples not healthy, the first: {:?}",
        unhealthy.len(),
        unhealthy.first()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_healthy_under_steady_writes() -> anyhow::Result<()> {
    let etcd = EtcdServer::start("steady-health");
    let specs = data_nodes(&NODES, &DOMAINS, true);
    let mut cluster = ProcessCluster::create("steady-health", etcd.client_url(), specs, &[])?;
    let outcome = tokio::time::timeout(TEST_TIMEOUT, scenario(&mut cluster)).await;
    cluster.conclude(TEST_TIMEOUT, outcome)
}
