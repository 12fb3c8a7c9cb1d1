//! The fault schedule of the safety phase.
//!
//! Model: one task injects a fault every `fault_interval_ms` on average
//! (uniform in half to one and a half times that), drawing its kind by the
//! options' weights:
//! - crash: power loss of a running node (unsynced writes dropped, or the
//!   unsynced tail torn with chance `tear_ppm`), restarted from its disk
//!   after [`DOWN_MS_MIN`]..[`DOWN_MS_MAX`] (longer under the repair
//!   workload, see `repair.rs`, which also sends stale group changes
//!   between faults); after the restart every
//!   volume is read whole through the leader (checked like any read). Only
//!   nodes whose crash leaves every volume a majority of its members
//!   running are chosen, so every group can make progress.
//! - partition: a random non-empty proper subset of nodes cut off from the
//!   rest, symmetric or one-way, healed after [`PARTITION_MS_MIN`]..
//!   [`PARTITION_MS_MAX`];
//! - isolate domain: a whole domain cut off, healed likewise.
//!
//! - etcd outage (weight `env.control_weights[0]`): the control-plane
//!   store is down for [`OUTAGE_MS_MIN`]..[`OUTAGE_MS_MAX`]; the injector
//!   waits it out (no other fault starts meanwhile). Raft does not need the
//!   store, so if the window was clean (no partition, every node up that
//!   is not lost, no crash, restart or disk I/O error during it nor in the
//!   [`OUTAGE_QUIET_MS`] before it, and every volume acknowledged a write
//!   since the last such disruption) and long enough, at least one write
//!   must be acknowledged within it.
//! - etcd cut (weight `env.control_weights[1]`): one node, or a whole
//!   domain, cut off from the store (not from each other) for
//!   [`CUT_MS_MIN`]..[`CUT_MS_MAX`], often beyond the lease TTL so its
//!   registration lapses (checked in `control.rs`).
//!
//! Disk faults, from the options' `env`, on top of the schedule:
//! - EIO on writes and fdatasyncs (`eio_write_nodes` at `eio_write_ppm`
//!   per operation) and on reads (`eio_read_nodes` at `eio_read_ppm`),
//!   throughout the safety phase. A failed write or fdatasync poisons the
//!   node's store (every later write fails, as in production); the node's
//!   supervisor (`Cluster::supervise`) restarts it from its disk. A failed
//!   read fails that read; the supervisor restarts the node too.
//! - Latent corruption (at `corrupt_at_ms`): one byte of a sealed segment
//!   (a log segment before the newest, or a compaction segment) of one
//!   node's disk is flipped, on a node whose permanent loss every volume
//!   survives; the node is then restarted (as by a routine restart) so
//!   that recovery reads the damage. Expected: recovery refuses to open
//!   (kvstore's `Corrupt`, or a replica whose log read back fails its CRC)
//!   and the node stays down for good, or it opens (the damage
//!   lies where recovery does not read) and stays *fail-stop*: whatever it
//!   serves must still be correct (reads through it and its applied
//!   entries are checked as ever), but it may stop serving, so it is left
//!   out of convergence and replica comparison. A lost acknowledged write
//!   anywhere, or damage on another node, is still a violation.
//!
//! Loss, duplication and latency spikes run at the options' rates
//! throughout. Partitions do not overlap: a new one waits for the heal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use metro_fabric::env::NodeId;
use metro_fabric::volume::VolumeId;
use metro_kvstore::{CrashMode, Disk as _, FaultOp};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{AsyncRuntime, ServerState};

use crate::checker::ViolationKind;
use crate::cluster::Cluster;
use crate::workload::sweep;
use crate::{Rt, now_ns};

/// How long a crashed node stays down, at least.
pub const DOWN_MS_MIN: u64 = 200;
/// How long a crashed node stays down, at most.
pub const DOWN_MS_MAX: u64 = 5_000;
/// How long a partition lasts, at least.
pub const PARTITION_MS_MIN: u64 = 300;
/// How long a partition lasts, at most.
pub const PARTITION_MS_MAX: u64 = 5_000;
/// How long an etcd outage lasts, at least.
pub const OUTAGE_MS_MIN: u64 = 1_000;
/// How long an etcd outage lasts, at most.
pub const OUTAGE_MS_MAX: u64 = 8_000;
/// An outage window at least this long, and clean, must see a write
/// acknowledged.
pub const OUTAGE_CHECKED_MS_MIN: u64 = 3_000;
/// A clean outage window starts at least this long after the last
/// disruption (elections settle).
pub const OUTAGE_QUIET_MS: u64 = 3_000;
/// How long a node is cut off the store, at least.
pub const CUT_MS_MIN: u64 = 1_000;
/// How long a node is cut off the store, at most.
pub const CUT_MS_MAX: u64 = 12_000;
/// Size of a segment header: corruption lands past it.
pub const SEGMENT_HEADER_BYTES: u64 = 32;
/// Whole-volume reads tried after a restart before giving up for now.
pub const SWEEP_ATTEMPTS: u64 = 3;

/// Counters of injected faults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub crashes: u64,
    pub partitions: u64,
    pub isolations: u64,
    pub outages: u64,
    pub cuts: u64,
    /// The node whose disk was corrupted, if any.
    pub corrupted: Option<NodeId>,
    /// Whether the corrupted node led a volume when its disk was corrupted.
    pub corrupted_was_leading: bool,
    /// Terms (summed over volumes) the corrupted node led after it
    /// reopened on its corrupted disk, up to the end of the safety phase.
    pub corrupted_terms_led: u64,
    /// Outage windows not held to progress because a node's disk had
    /// failed (it awaited its supervisor when the window began, or a disk
    /// returned an I/O error within it).
    pub outages_disk_failed: u64,
    /// Of those, the windows that began while a node whose disk had failed
    /// awaited its supervisor.
    pub outages_awaiting_supervisor: u64,
    /// Outage windows that began quiet (no disruption in the
    /// [`OUTAGE_QUIET_MS`] before) but with a volume that had not
    /// acknowledged a write since the last disruption: not held to
    /// progress.
    pub outages_unrecovered: u64,
    /// I/O errors the disks returned in the safety phase.
    pub disk_errors: u64,
}

/// What the corruption task saw when it corrupted a node's disk.
#[derive(Clone, Debug)]
struct Corrupted {
    node: NodeId,
    /// Whether it led a volume then.
    leading: bool,
    /// Terms it had led (summed over volumes) when it was crashed to
    /// reopen on the damaged disk.
    terms_led: Arc<AtomicU64>,
}

/// Whether `node` believes it leads `volume`, per its metrics.
fn leads(cluster: &Cluster, node: NodeId, volume: VolumeId) -> bool {
    cluster.raft(node, volume).is_some_and(|raft| {
        let metrics = raft.metrics();
        metrics.borrow_watched().state == ServerState::Leader
    })
}

/// Terms (summed over volumes) that `node` led so far.
fn terms_led_by(cluster: &Cluster, node: NodeId) -> u64 {
    let volumes = cluster.volumes.iter();
    volumes
        .map(|v| v.observer.terms_led_by(|id| id == node))
        .sum()
}

/// Injects faults until `stop` is set; returns what it injected.
pub async fn inject(cluster: Arc<Cluster>, stop: Arc<AtomicBool>) -> FaultStats {
    let rng = cluster.rng.clone();
    let interval = cluster.options.fault_interval_ms;
    let weights = cluster.options.fault_weights;
    let env = &cluster.options.env;
    let weights = [
        weights[0],
        weights[1],
        weights[2],
        env.control_weights[0],
        env.control_weights[1],
    ];
    let partitioned = Arc::new(AtomicBool::new(false));
    let mut stats = FaultStats::default();
    set_disk_faults(&cluster, true);
    Rt::spawn(crate::repair::first_long_outage(Arc::clone(&cluster)));
    let corruption = env.corrupt_at_ms.map(|at_ms| {
        let cluster = Arc::clone(&cluster);
        Rt::spawn(async move {
            Rt::sleep(Duration::from_millis(at_ms)).await;
            corrupt_one(&cluster)
        })
    });
    loop {
        Rt::sleep(rng.millis(interval / 2, interval * 3 / 2)).await;
        if stop.load(Ordering::SeqCst) {
            set_disk_faults(&cluster, false);
            if let Some(corruption) = corruption
                && let Some(corrupted) = corruption.await.ok().flatten()
            {
                stats.corrupted = Some(corrupted.node);
                stats.corrupted_was_leading = corrupted.leading;
                let before = corrupted.terms_led.load(Ordering::SeqCst);
                stats.corrupted_terms_led = terms_led_by(&cluster, corrupted.node) - before;
            }
            stats.disk_errors = cluster.disk_errors.load(Ordering::SeqCst);
            return stats;
        }
        if crate::repair::stale_change_due(&cluster) {
            Rt::spawn(crate::repair::send_stale_change(Arc::clone(&cluster)));
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
            3 => {
                outage(&cluster, &partitioned, &mut stats).await;
                stats.outages += 1;
            }
            4 => {
                cut(&cluster);
                stats.cuts += 1;
            }
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
    let down_for = crate::repair::down_for(cluster, rng.millis(DOWN_MS_MIN, DOWN_MS_MAX));
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
        cluster.disrupted();
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
    cluster.disrupted();
    heal_later(cluster, partitioned);
}

/// Cuts a random domain off from the others.
fn isolate(cluster: &Arc<Cluster>, partitioned: &Arc<AtomicBool>) {
    let domain = cluster.rng.below(cluster.options.domains.len() as u64) as usize;
    if !cluster.domain_nodes(domain).is_empty() {
        cluster.net.isolate_domain(domain);
        cluster.disrupted();
    }
    heal_later(cluster, partitioned);
}

/// A short pause, for callers polling for a condition.
pub async fn pause_ms(ms: u64) {
    Rt::sleep(Duration::from_millis(ms)).await;
}

/// Turns the options' EIO rates on (if `env.eio`), or every rate off.
pub fn set_disk_faults(cluster: &Cluster, on: bool) {
    let env = &cluster.options.env;
    let on = on && env.eio;
    let rate = |ppm: u32| if on { ppm } else { 0 };
    for id in &env.eio_write_nodes {
        if let Some(disk) = cluster.disk(*id) {
            disk.set_fail_rate(FaultOp::Write, rate(env.eio_write_ppm));
            disk.set_fail_rate(FaultOp::Sync, rate(env.eio_write_ppm));
        }
    }
    for id in &env.eio_read_nodes {
        if let Some(disk) = cluster.disk(*id) {
            disk.set_fail_rate(FaultOp::Read, rate(env.eio_read_ppm));
        }
    }
}

/// The store is down for a while; the injector waits it out and then
/// requires that writes went on during a clean window (see the module
/// docs); counts the windows the scenarios of the regression tests need.
async fn outage(cluster: &Arc<Cluster>, partitioned: &AtomicBool, stats: &mut FaultStats) {
    let lasts = cluster.rng.millis(OUTAGE_MS_MIN, OUTAGE_MS_MAX);
    let all_up = |cluster: &Cluster| {
        cluster
            .node_ids()
            .iter()
            .all(|id| cluster.is_lost(*id) || cluster.up_nodes().contains(id))
    };
    let last_disruption_ns = cluster.last_disruption_ns.load(Ordering::SeqCst);
    let quiet = now_ns().saturating_sub(last_disruption_ns) >= OUTAGE_QUIET_MS * 1_000_000;
    // Every volume recovered from the last disruption: a quiet period
    // alone does not show it (an election after a leader's loss can take
    // an election timeout plus openraft's smaller-log wait, and a lost
    // AppendEntries stalls a group for an RPC timeout; seed 59 `--env on --eio off`).
    let recovered = cluster
        .volumes
        .iter()
        .all(|v| v.last_ack_ns.load(Ordering::SeqCst) > last_disruption_ns);
    let awaits_supervisor = cluster.awaits_supervisor();
    let clean_start = quiet
        && recovered
        && !partitioned.load(Ordering::SeqCst)
        && all_up(cluster)
        && !awaits_supervisor;
    stats.outages_unrecovered += u64::from(quiet && !recovered);
    let disruptions = cluster.disruptions.load(Ordering::SeqCst);
    let disk_errors = cluster.disk_errors.load(Ordering::SeqCst);
    let acked = cluster.acked_writes.load(Ordering::SeqCst);
    let from = now_ns();
    cluster.control.set_available(false);
    Rt::sleep(lasts).await;
    cluster.control.set_available(true);
    let disk_failed =
        awaits_supervisor || cluster.disk_errors.load(Ordering::SeqCst) != disk_errors;
    stats.outages_disk_failed += u64::from(disk_failed);
    stats.outages_awaiting_supervisor += u64::from(awaits_supervisor);
    let clean = clean_start
        && cluster.disruptions.load(Ordering::SeqCst) == disruptions
        && !disk_failed
        && !partitioned.load(Ordering::SeqCst);
    if !clean || lasts < Duration::from_millis(OUTAGE_CHECKED_MS_MIN) {
        return;
    }
    cluster.control.note_outage_checked();
    if cluster.acked_writes.load(Ordering::SeqCst) == acked {
        cluster.violations.report_as(
            ViolationKind::Control,
            format!(
                "control: no write acknowledged during a clean {} ms etcd outage from {from} ns",
                lasts.as_millis()
            ),
        );
    }
}

/// Cuts a random node, or a random domain, off the store for a while.
fn cut(cluster: &Arc<Cluster>) {
    let rng = &cluster.rng;
    let victims = match rng.below(3) {
        0 => {
            let domain = rng.below(cluster.options.domains.len() as u64) as usize;
            cluster.domain_nodes(domain)
        }
        _ => vec![rng.pick(&cluster.node_ids())],
    };
    for id in &victims {
        cluster.control.set_cut(*id, true);
    }
    let lasts = rng.millis(CUT_MS_MIN, CUT_MS_MAX);
    let cluster = Arc::clone(cluster);
    Rt::spawn(async move {
        Rt::sleep(lasts).await;
        for id in victims {
            cluster.control.set_cut(id, false);
        }
    });
}

/// The sealed segments of `disk`: every compaction segment and every log
/// segment but the newest.
fn sealed_segments(disk: &metro_kvstore::FaultyDisk) -> Vec<String> {
    let Ok(mut names) = disk.list() else {
        return Vec::new();
    };
    names.sort();
    let newest_log = names
        .iter()
        .rfind(|n| n.starts_with("log-") && n.ends_with(".seg"))
        .cloned();
    names
        .into_iter()
        .filter(|n| n.ends_with(".seg") && (n.starts_with("log-") || n.starts_with("cmp-")))
        .filter(|n| Some(n) != newest_log.as_ref())
        .collect()
}

/// Flips one byte of a sealed segment of a node whose loss every volume
/// survives, then restarts that node (see the module docs); returns it.
fn corrupt_one(cluster: &Arc<Cluster>) -> Option<Corrupted> {
    let rng = &cluster.rng;
    let candidates: Vec<NodeId> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| cluster.up_nodes().contains(id) && cluster.may_crash(*id))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let victim = rng.pick(&candidates);
    let disk = cluster.disk(victim)?;
    let sealed = sealed_segments(&disk);
    if sealed.is_empty() {
        return None;
    }
    let name = rng.pick(&sealed.iter().collect::<Vec<_>>()).clone();
    let len = disk.file_len(&name)?;
    if len <= SEGMENT_HEADER_BYTES {
        return None;
    }
    let offset = rng.range(SEGMENT_HEADER_BYTES, len - 1);
    if !disk.corrupt(&name, offset) {
        return None;
    }
    cluster.mark_corrupted(victim);
    let corrupted = Corrupted {
        node: victim,
        leading: cluster.volumes.iter().any(|v| leads(cluster, victim, v.id)),
        terms_led: Arc::new(AtomicU64::new(terms_led_by(cluster, victim))),
    };
    let terms_led = Arc::clone(&corrupted.terms_led);
    let restart_in = rng.millis(200, 1_000);
    let cluster = Arc::clone(cluster);
    Rt::spawn(async move {
        Rt::sleep(restart_in).await;
        if cluster.crash(victim, CrashMode::DropUnsynced) {
            terms_led.store(terms_led_by(&cluster, victim), Ordering::SeqCst);
            Rt::sleep(Duration::from_millis(DOWN_MS_MIN)).await;
            cluster.restart(victim).await;
        }
    });
    Some(corrupted)
}
