//! The fault schedule of the safety phase.
//!
//! Model: one task injects a fault every `fault_interval_ms` on average
//! (uniform in half to one and a half times that), drawing its kind by the
//! options' weights:
//! - crash: power loss of a running node (unsynced writes dropped, or the
//!   unsynced tail torn with chance `tear_ppm`), restarted from its disk
//!   after [`DOWN_MS_MIN`]..[`DOWN_MS_MAX`]; after the restart every
//!   volume is read whole through the leader (checked like any read). Only
//!   nodes whose crash leaves every volume a majority of its members
//!   running are chosen, so every group can make progress.
//! - partition: a random non-empty proper subset of nodes cut off from the
//!   rest, symmetric or one-way, healed after [`PARTITION_MS_MIN`]..
//!   [`PARTITION_MS_MAX`];
//! - isolate domain: a whole domain cut off, healed likewise.
//!
//! Loss, duplication and latency spikes run at the options' rates
//! throughout. Partitions do not overlap: a new one waits for the heal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metro_fabric::env::NodeId;
use metro_kvstore::CrashMode;
use openraft::AsyncRuntime;

use crate::Rt;
use crate::cluster::Cluster;
use crate::workload::sweep;

/// How long a crashed node stays down, at least.
pub const DOWN_MS_MIN: u64 = 200;
/// How long a crashed node stays down, at most.
pub const DOWN_MS_MAX: u64 = 5_000;
/// How long a partition lasts, at least.
pub const PARTITION_MS_MIN: u64 = 300;
/// How long a partition lasts, at most.
pub const PARTITION_MS_MAX: u64 = 5_000;
/// Whole-volume reads tried after a restart before giving up for now.
pub const SWEEP_ATTEMPTS: u64 = 3;

/// Counters of injected faults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub crashes: u64,
    pub partitions: u64,
    pub isolations: u64,
}

/// Injects faults until `stop` is set; returns what it injected.
pub async fn inject(cluster: Arc<Cluster>, stop: Arc<AtomicBool>) -> FaultStats {
    let rng = cluster.rng.clone();
    let interval = cluster.options.fault_interval_ms;
    let weights = cluster.options.fault_weights;
    let partitioned = Arc::new(AtomicBool::new(false));
    let mut stats = FaultStats::default();
    loop {
        Rt::sleep(rng.millis(interval / 2, interval * 3 / 2)).await;
        if stop.load(Ordering::SeqCst) {
            return stats;
        }
        let mut pick = rng.below(weights.iter().sum::<u64>().max(1));
        let kind = weights
            .iter()
            .position(|w| {
                let hit = pick < *w;
                pick = pick.saturating_sub(*w);
                hit
            })
            .unwrap_or(0);
        match kind {
            0 => stats.crashes += u64::from(crash_one(&cluster)),
            _ if partitioned.load(Ordering::SeqCst) => {}
            1 => {
                partition(&cluster, &partitioned);
                stats.partitions += 1;
            }
            _ => {
                isolate(&cluster, &partitioned);
                stats.isolations += 1;
            }
        }
    }
}

/// Crashes a random running node whose loss every volume survives, and
/// schedules its restart.
fn crash_one(cluster: &Arc<Cluster>) -> bool {
    let up: Vec<NodeId> = cluster
        .up_nodes()
        .into_iter()
        .filter(|id| cluster.may_crash(*id))
        .collect();
    if up.is_empty() {
        return false;
    }
    let rng = &cluster.rng;
    let victim = rng.pick(&up);
    let mode = match rng.chance(cluster.options.tear_ppm) {
        true => CrashMode::TearTail,
        false => CrashMode::DropUnsynced,
    };
    if !cluster.crash(victim, mode) {
        return false;
    }
    let down_for = rng.millis(DOWN_MS_MIN, DOWN_MS_MAX);
    let cluster = Arc::clone(cluster);
    Rt::spawn(async move {
        Rt::sleep(down_for).await;
        if cluster.restart(victim).await {
            let who = format!("sweep-after-restart-{victim}");
            for volume in &cluster.volumes {
                sweep(&cluster, volume, &who, SWEEP_ATTEMPTS).await;
            }
        }
    });
    true
}

/// Heals every partition after a random while.
fn heal_later(cluster: &Arc<Cluster>, partitioned: &Arc<AtomicBool>) {
    partitioned.store(true, Ordering::SeqCst);
    let lasts = cluster.rng.millis(PARTITION_MS_MIN, PARTITION_MS_MAX);
    let cluster = Arc::clone(cluster);
    let partitioned = Arc::clone(partitioned);
    Rt::spawn(async move {
        Rt::sleep(lasts).await;
        cluster.net.heal_partitions();
        partitioned.store(false, Ordering::SeqCst);
    });
}

/// Cuts a random proper subset of the nodes off from the rest.
fn partition(cluster: &Arc<Cluster>, partitioned: &Arc<AtomicBool>) {
    let nodes = cluster.node_ids();
    let rng = &cluster.rng;
    let (mut side, mut rest): (Vec<NodeId>, Vec<NodeId>) =
        nodes.iter().partition(|_| rng.below(2) == 0);
    if side.is_empty() {
        side.push(rest.remove(0));
    }
    if rest.is_empty() {
        rest.push(side.remove(0));
    }
    let symmetric = rng.below(2) == 0;
    cluster.net.partition(&side, &rest, symmetric);
    heal_later(cluster, partitioned);
}

/// Cuts a random domain off from the others.
fn isolate(cluster: &Arc<Cluster>, partitioned: &Arc<AtomicBool>) {
    let domain = cluster.rng.below(cluster.options.domains.len() as u64) as usize;
    if !cluster.domain_nodes(domain).is_empty() {
        cluster.net.isolate_domain(domain);
    }
    heal_later(cluster, partitioned);
}

/// A short pause, for callers polling for a condition.
pub async fn pause_ms(ms: u64) {
    Rt::sleep(Duration::from_millis(ms)).await;
}
