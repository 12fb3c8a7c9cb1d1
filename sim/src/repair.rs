//! The `repair` workload ([`RepairWorkload`]) and the membership check.
//!
//! Workload, on top of the fault schedule (`faults.rs`):
//! - the coordinators' repair delay is short (`node.rs`), so a member whose
//!   node stays down past the lease TTL and the delay is replaced by a
//!   spare of its domain, under every other fault;
//! - a crash lasts that long with chance `long_crash_ppm` ([`down_for`]);
//! - early in the safety phase one node with a spare in its domain goes
//!   down that long ([`first_long_outage`]), so most such seeds repair;
//! - with chance `stale_change_ppm` per fault tick, a stale group change
//!   reaches a group through a random running node ([`send_stale_change`]):
//!   computed from a view the group has left (its voters with one member
//!   `m` swapped back for a non-member `y`, as before a repair of `y` by
//!   `m`), it asks to replace `y`, dead in that view, by another
//!   non-member `z`. A fenced leader refuses it (nothing changes); applied
//!   (`--bug unfenced-membership`), it drops the live, caught-up `m` and
//!   makes `z` a voter behind the record.
//!
//! Check ([`membership_matches_records`], once the control plane settled):
//! within [`MEMBERSHIP_SETTLE_S`], every volume's group has exactly the
//! voters its store record places, outside a change and with no learner
//! left (a repair that added one and then failed leaves an orphan, which
//! the leader removes after its grace, `node::ORPHAN_GRACE_MS`), or it is
//! a [`ViolationKind::MembershipDiverged`] violation.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use metro_fabric::control::{
    AdminError, GroupAdmin as _, Member, MemberRole, Placement, VolumeRecord, VolumeSpec, decode,
};
use metro_fabric::env::NodeId;
use metro_fabric::meta::KvStore as _;
use metro_fabric::volume::BLOCK_BYTES;
use openraft::AsyncRuntime;
use openraft::async_runtime::watch::WatchReceiver;

use crate::Rt;
use crate::checker::ViolationKind;
use crate::cluster::{Cluster, SimVolume};
use crate::control::LEASE_TTL;
use crate::faults::pause_ms;
use crate::now_ns;
use crate::options::{RepairWorkload, VOLUME_BLOCKS};

/// Virtual seconds the groups may take to match their records at the end.
pub const MEMBERSHIP_SETTLE_S: u64 = 30;
/// A long crash lasts the lease TTL, the repair delay and this much more,
/// at least and at most.
pub const LONG_CRASH_EXTRA_MS_MIN: u64 = 2_000;
pub const LONG_CRASH_EXTRA_MS_MAX: u64 = 6_000;
/// How long a stale group change may run before it is given up.
pub const STALE_CHANGE_TIMEOUT_MS: u64 = 20_000;
/// The id a stale view gives a node long gone from the cluster.
pub const NODE_GONE: NodeId = 1_000;
/// Under the repair workload the safety phase lasts at least this long, so
/// that a member can be replaced within it.
pub const REPAIR_SAFETY_S_MIN: u64 = 20;
/// The first long outage starts this early in the safety phase, at most.
pub const FIRST_OUTAGE_MS_MAX: u64 = 2_000;
/// Pause between two looks at the groups and their records.
const POLL_MS: u64 = 200;

/// How long a crash lasts under the repair workload: long enough for a
/// repair with chance `long_crash_ppm`, else `usual`.
pub fn down_for(cluster: &Cluster, usual: Duration) -> Duration {
    let Some(repair) = cluster.options.repair else {
        return usual;
    };
    if !cluster.rng.chance(repair.long_crash_ppm) {
        return usual;
    }
    let extra = cluster
        .rng
        .millis(LONG_CRASH_EXTRA_MS_MIN, LONG_CRASH_EXTRA_MS_MAX);
    LEASE_TTL + Duration::from_millis(repair.delay_ms) + extra
}

/// Crashes, early on, a node whose domain has a spare and whose crash every
/// volume survives, for the lease TTL, the repair delay and more; then
/// restarts it.
pub async fn first_long_outage(cluster: Arc<Cluster>) {
    let Some(repair) = cluster.options.repair else {
        return;
    };
    let rng = &cluster.rng;
    Rt::sleep(rng.millis(0, FIRST_OUTAGE_MS_MAX)).await;
    let candidates: Vec<NodeId> = cluster
        .up_nodes()
        .into_iter()
        .filter(|id| !cluster.is_witness(*id) && cluster.may_crash(*id))
        .filter(|id| cluster.domain_nodes(cluster.domain_of(*id)).len() > 1)
        .collect();
    if candidates.is_empty() {
        return;
    }
    let victim = rng.pick(&candidates);
    if !cluster.crash(victim, metro_kvstore::CrashMode::DropUnsynced) {
        return;
    }
    let extra = rng.millis(LONG_CRASH_EXTRA_MS_MIN, LONG_CRASH_EXTRA_MS_MAX);
    Rt::sleep(LEASE_TTL + Duration::from_millis(repair.delay_ms) + extra).await;
    cluster.restart(victim).await;
}

/// Whether this fault tick sends a stale group change.
pub fn stale_change_due(cluster: &Cluster) -> bool {
    cluster
        .options
        .repair
        .is_some_and(|r: RepairWorkload| cluster.rng.chance(r.stale_change_ppm))
}

fn member(cluster: &Cluster, node: NodeId) -> Member {
    Member {
        node,
        domain: format!("d{}", cluster.domain_of(node)),
        role: match cluster.is_witness(node) {
            true => MemberRole::Witness,
            false => MemberRole::Data,
        },
    }
}

fn spec(volume: &SimVolume) -> VolumeSpec {
    VolumeSpec {
        name: format!("vol-{}", volume.id.0),
        id: volume.id.0,
        size_bytes: VOLUME_BLOCKS * BLOCK_BYTES as u64,
        replicas: 0,
    }
}

/// Sends one stale group change (see the module docs) to a random volume
/// through a random running node, and counts how it was answered.
pub async fn send_stale_change(cluster: Arc<Cluster>) {
    let rng = &cluster.rng;
    let Some(volume) = cluster
        .volumes
        .get(rng.below(cluster.volumes.len() as u64) as usize)
    else {
        return;
    };
    let voters = cluster.voters(volume);
    let outside: Vec<NodeId> = cluster
        .node_ids()
        .into_iter()
        .filter(|n| !voters.contains(n))
        .collect();
    if outside.is_empty() {
        return;
    }
    // The stale view: `y` where `m` is (before a repair of `y` by `m`);
    // `y` is dead in it and replaced by `z`, so the change, applied, drops
    // `m` (a node gone from the cluster when no other is outside).
    let z = rng.pick(&outside);
    let ghost = NODE_GONE;
    let ys: Vec<NodeId> = outside.iter().copied().filter(|n| *n != z).collect();
    let y = if ys.is_empty() { ghost } else { rng.pick(&ys) };
    let m = rng.pick(&voters);
    let stale = Placement {
        members: voters
            .iter()
            .map(|n| member(&cluster, if *n == m { y } else { *n }))
            .collect(),
    };
    let Some(via) = cluster.pick_up_node().and_then(|id| cluster.host(id)) else {
        return;
    };
    cluster.control.note_stale_change(false);
    let spec = spec(volume);
    let change = via.replace_member(&spec, &stale, y, z);
    let bound = Duration::from_millis(STALE_CHANGE_TIMEOUT_MS);
    if let Ok(Err(AdminError::Diverged { .. })) = Rt::timeout(bound, change).await {
        cluster.control.note_stale_change(true);
    }
}

/// The voters, learners and joint flag of the newest membership a running
/// replica of `volume` has.
fn membership(cluster: &Cluster, volume: &SimVolume) -> Option<(BTreeSet<NodeId>, bool, bool)> {
    let leader = cluster.leader(volume)?;
    let raft = cluster.raft(leader, volume.id)?;
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    let config = &m.membership_config;
    let learners = config.membership().learner_ids().next().is_some();
    let joint = config.get_joint_config().len() > 1;
    Some((config.voter_ids().collect(), learners, joint))
}

async fn recorded(cluster: &Cluster, volume: &SimVolume) -> Option<BTreeSet<NodeId>> {
    let key = cluster.control.keys.volume(&spec(volume).name);
    let kv = cluster.control.store.get(key.as_bytes()).await.ok()??;
    let record: VolumeRecord = decode("volume", &kv.value).ok()?;
    Some(record.placement?.nodes().collect())
}

/// Requires every group's voters to be its record's (see the module docs).
pub async fn membership_matches_records(cluster: &Cluster) {
    let deadline = now_ns() + MEMBERSHIP_SETTLE_S * 1_000_000_000;
    for volume in &cluster.volumes {
        loop {
            let now = (membership(cluster, volume), recorded(cluster, volume).await);
            if let (Some((voters, false, false)), Some(record)) = &now
                && *voters == *record
            {
                for added in voters.iter().filter(|n| !volume.members.contains(n)) {
                    cluster.control.repairs.note(volume.id.0, *added);
                }
                break;
            }
            if now_ns() >= deadline {
                cluster.violations.report_as(
                    ViolationKind::MembershipDiverged,
                    format!(
                        "{}: group (voters, learners?, joint?) {:?} against the record's {:?} after {MEMBERSHIP_SETTLE_S} s",
                        volume.id, now.0, now.1
                    ),
                );
                break;
            }
            pause_ms(POLL_MS).await;
        }
    }
}
