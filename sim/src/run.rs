//! One seed end to end: boot, safety phase, liveness phase, checks.
//!
//! - Safety phase (`safety_s` virtual seconds): clients run the workload
//!   while the fault schedule crashes nodes and cuts links, on top of the
//!   options' loss, duplication and latency spikes.
//! - Liveness phase: clients stop, every fault heals (partitions, loss,
//!   duplication, spikes; every crashed node restarts). Within
//!   [`LIVENESS_BUDGET_S`] virtual seconds, for every volume: a write must
//!   be acknowledged, every member must apply up to the same index, and
//!   then every member must hold byte-identical blocks (compared directly
//!   and by the host's status digest); each replica's copy and a final read
//!   through the leader are checked against the history like any read.
//! - Then the control plane must settle, and every group's voters must be
//!   the ones its store record places (`repair.rs`).
//! - Verdict: the history checks of `checker.rs`, per volume; violations
//!   are counted.
//!
//! A panic in any task (openraft asserts its own invariants, e.g. that a
//! follower's log never goes backwards) is a violation too: while a run is
//! active on a thread, a process-wide panic hook records that thread's
//! panics instead of printing them.
//!
//! The scenario runs as one task of a fresh runtime; [`run_seed`] drives it
//! in slices of [`TRACE_SLICE_MS`] virtual milliseconds and folds the
//! executor's trace into a 64-bit FNV-1a hash between slices, so the hash
//! covers the exact scheduling order without keeping the trace in memory.
//! The runtime formats a string for every traced event, about a fifth of a
//! run's cost: [`run_seed_untraced`] (the swarm's default) skips the trace;
//! the run is the same, only `trace` and `events` stay 0.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use futures_util::future::{Either, select};
use metro_fabric::env::NodeId;
use openraft::AsyncRuntime;
use openraft::async_runtime::watch::WatchReceiver;

use crate::checker::{KindCounts, ViolationKind, check_history};
use crate::cluster::{Cluster, SimVolume};
use crate::control::ControlStats;
use crate::faults::{FaultStats, inject, pause_ms, set_disk_faults};
use crate::history::{OpKind, Outcome, decode_blocks};
use crate::network::{LinkFaults, NetStats};
use crate::options::{SimOptions, VOLUME_BLOCKS, Workload};
use crate::rng::SimRng;
use crate::workload::{client, sweep, write};
use crate::{Rt, now_ns};

/// Virtual seconds the liveness phase may take.
pub const LIVENESS_BUDGET_S: u64 = 30;
/// Virtual time between two folds of the trace into its hash.
pub const TRACE_SLICE_MS: u64 = 250;
/// Virtual seconds after which a run counts as hung, beyond its phases.
pub const RUN_SLACK_S: u64 = 60;
/// Virtual seconds the control plane may take to settle in the liveness
/// phase (every node registered, one coordinator).
pub const CONTROL_SETTLE_S: u64 = 20;
/// Pause between two looks while waiting for convergence.
pub const CONVERGE_POLL_MS: u64 = 50;
/// Whole-volume reads tried at the end.
pub const FINAL_SWEEP_ATTEMPTS: u64 = 20;

/// Panics of one run recorded (all are counted).
pub const PANICS_KEPT_MAX: usize = 16;

thread_local! {
    /// `Some` while a run is active on this thread: its panics, and how many.
    static PANICS: RefCell<Option<(u64, Vec<String>)>> = const { RefCell::new(None) };
}

static PANIC_HOOK: Once = Once::new();

/// Installs (once per process) the hook that records the panics of active
/// runs and leaves every other panic to the previous hook.
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let recorded = PANICS.with(|panics| match panics.borrow_mut().as_mut() {
                Some((count, kept)) => {
                    *count += 1;
                    if kept.len() < PANICS_KEPT_MAX {
                        kept.push(info.to_string().replace('\n', " "));
                    }
                    true
                }
                None => false,
            });
            if !recorded {
                previous(info);
            }
        }));
    });
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Folds `bytes` into an FNV-1a hash.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// What one seed did.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub seed: u64,
    /// FNV-1a over every executor trace event, in order (0 untraced).
    pub trace: u64,
    /// Executor trace events (0 untraced).
    pub events: u64,
    pub violations: u64,
    /// The violations by kind (they sum to `violations`).
    pub violation_kinds: KindCounts,
    /// The first violation messages.
    pub messages: Vec<String>,
    pub sim_ns: u64,
    pub ops: OpCounts,
    pub net: NetStats,
    pub faults: FaultStats,
    pub env: EnvStats,
    pub leaders_per_term_max: usize,
    pub roles: RoleStats,
}

impl RunReport {
    /// The violations of `kind`.
    pub fn violations_of(&self, kind: ViolationKind) -> u64 {
        self.violation_kinds.get(&kind).copied().unwrap_or(0)
    }
}

/// What the witnesses did: the scenarios the witness checks are about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoleStats {
    /// Terms (summed over volumes) in which a witness node led.
    pub witness_terms_led: u64,
    /// Witness replicas holding a Raft snapshot at the end (built or
    /// installed).
    pub witness_snapshots: u64,
}

/// What the environment faults came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnvStats {
    pub control: ControlStats,
    /// Nodes restarted by their supervisor after a disk I/O error.
    pub supervisor_restarts: u64,
    /// Recoveries retried after an I/O error.
    pub recovery_retries: u64,
    /// Whether the corrupted node (if any) refused to recover.
    pub corrupted_lost: bool,
}

/// Operations of a run by kind and outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub writes_acked: u64,
    pub writes_unknown: u64,
    pub writes_not_applied: u64,
    /// Session writes delivered again after an attempt of unknown outcome
    /// (the retrying-clients workload).
    pub writes_retried: u64,
    /// Writes whose client never learnt the outcome (unknown) that some
    /// read then saw: they took effect.
    pub writes_unknown_seen: u64,
    pub reads_answered: u64,
    pub reads_failed: u64,
    /// Mean latency of acknowledged writes and answered reads, virtual µs.
    pub write_us_mean: u64,
    pub read_us_mean: u64,
    /// DR snapshots acknowledged, and those no replica held at the end.
    pub dr_snapshots: u64,
    pub dr_snapshots_unheld: u64,
}

impl OpCounts {
    fn of(ops: &[crate::history::Op]) -> Self {
        let mut counts = Self::default();
        let (mut write_ns, mut read_ns) = (0u64, 0u64);
        for op in ops {
            let acked = matches!(op.outcome, Outcome::Acked { .. });
            let took = op.complete_ns.unwrap_or(op.invoke_ns) - op.invoke_ns;
            match op.kind {
                OpKind::Write { .. } if acked => write_ns += took,
                OpKind::Read { .. } if acked => read_ns += took,
                _ => {}
            }
            let slot = match (&op.kind, &op.outcome) {
                (OpKind::Write { .. }, Outcome::Acked { .. }) => &mut counts.writes_acked,
                (OpKind::Write { .. }, Outcome::NotApplied) => &mut counts.writes_not_applied,
                (OpKind::Write { .. }, _) => &mut counts.writes_unknown,
                (OpKind::Read { .. }, _) if acked => &mut counts.reads_answered,
                (OpKind::Read { .. }, _) => &mut counts.reads_failed,
            };
            *slot += 1;
            if let OpKind::Write { .. } = op.kind {
                counts.writes_retried += u64::from(op.deliveries > 1);
            }
        }
        counts.writes_unknown_seen = unknown_seen(ops);
        counts.write_us_mean = write_ns / counts.writes_acked.max(1) / 1_000;
        counts.read_us_mean = read_ns / counts.reads_answered.max(1) / 1_000;
        counts
    }
}

/// Writes of `ops` that did not end acknowledged or not applied and that an
/// answered read saw.
fn unknown_seen(ops: &[crate::history::Op]) -> u64 {
    let seen: std::collections::BTreeSet<u64> = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Acked { .. }))
        .filter_map(|op| match &op.kind {
            OpKind::Read { seen, .. } => Some(seen.iter().copied()),
            OpKind::Write { .. } => None,
        })
        .flatten()
        .collect();
    let unknown =
        |op: &&crate::history::Op| matches!(op.outcome, Outcome::Unknown | Outcome::Pending);
    ops.iter()
        .filter(unknown)
        .filter(|op| matches!(op.kind, OpKind::Write { write_id, .. } if seen.contains(&write_id)))
        .count() as u64
}

/// What the scenario task hands back.
#[derive(Debug, Default)]
struct Scenario {
    violations: u64,
    violation_kinds: KindCounts,
    messages: Vec<String>,
    ops: OpCounts,
    net: NetStats,
    faults: FaultStats,
    env: EnvStats,
    leaders_per_term_max: usize,
    roles: RoleStats,
}

/// Runs `options.seed` to its verdict (see the module docs), hashing the
/// executor's trace.
pub fn run_seed(options: SimOptions) -> RunReport {
    run(options, true)
}

/// Runs `options.seed` to its verdict without recording the trace.
pub fn run_seed_untraced(options: SimOptions) -> RunReport {
    run(options, false)
}

fn run(options: SimOptions, traced: bool) -> RunReport {
    let seed = options.seed;
    let hard_stop_ns = (options.safety_phase_s() + LIVENESS_BUDGET_S + RUN_SLACK_S) * 1_000_000_000;
    install_panic_hook();
    PANICS.with(|panics| *panics.borrow_mut() = Some((0, Vec::new())));
    let mut rt = Rt::with_seed(seed);
    rt.record_trace(traced);
    let mut trace = if traced { FNV_OFFSET } else { 0 };
    let mut events = 0u64;
    // Spawned from inside the runtime; the handle is awaited slice by slice.
    #[allow(clippy::async_yields_async)]
    // reason: the handle is meant to leave this block unawaited
    let spawn = async { Rt::spawn(scenario(options)) };
    let mut task = Box::pin(rt.block_on(spawn));
    let outcome = loop {
        let slice = Duration::from_millis(TRACE_SLICE_MS);
        let step = rt.block_on(async move {
            match select(task, Box::pin(Rt::sleep(slice))).await {
                Either::Left((done, _)) => Ok(done),
                Either::Right(((), task)) => Err((task, now_ns())),
            }
        });
        if traced {
            for event in rt.take_trace() {
                trace = fnv1a(trace, event.as_bytes());
                trace = fnv1a(trace, b"\n");
                events += 1;
            }
        }
        match step {
            Ok(done) => break done.map_err(|e| format!("scenario task failed: {e:?}")),
            Err((_, now)) if now > hard_stop_ns => break Err("run did not finish".to_string()),
            Err((next, _)) => task = next,
        }
    };
    let sim_ns = rt.block_on(async { now_ns() });
    drop(rt);
    let mut scenario = outcome.unwrap_or_else(|why| Scenario {
        violations: 1,
        violation_kinds: KindCounts::from([(ViolationKind::Hang, 1)]),
        messages: vec![why],
        ..Scenario::default()
    });
    if let Some((count, kept)) = PANICS.with(|panics| panics.borrow_mut().take()) {
        scenario.violations += count;
        if count > 0 {
            *scenario
                .violation_kinds
                .entry(ViolationKind::Panic)
                .or_default() += count;
        }
        scenario
            .messages
            .extend(kept.into_iter().map(|p| format!("task panicked: {p}")));
    }
    RunReport {
        seed,
        trace,
        events,
        violations: scenario.violations,
        violation_kinds: scenario.violation_kinds,
        messages: scenario.messages,
        sim_ns,
        ops: scenario.ops,
        net: scenario.net,
        faults: scenario.faults,
        env: scenario.env,
        leaders_per_term_max: scenario.leaders_per_term_max,
        roles: scenario.roles,
    }
}

async fn scenario(options: SimOptions) -> Scenario {
    let rng = SimRng::new(options.seed ^ 0x7369_6d75_6c61_7465);
    let safety = Duration::from_secs(options.safety_phase_s());
    let cluster = Cluster::boot(options, rng).await;
    let stop = Arc::new(AtomicBool::new(false));
    for number in 0..cluster.options.clients {
        let (cluster, stop) = (Arc::clone(&cluster), Arc::clone(&stop));
        match cluster.options.workload {
            Workload::Mixed => Rt::spawn(client(cluster, number, stop)),
            Workload::RetryingClients { .. } => {
                Rt::spawn(crate::retrying::client(cluster, number, stop))
            }
        };
    }
    let faults = Rt::spawn(inject(Arc::clone(&cluster), Arc::clone(&stop)));
    let done = Arc::new(AtomicBool::new(false));
    Rt::spawn(monitor_control(Arc::clone(&cluster), Arc::clone(&done)));
    Rt::sleep(safety).await;
    stop.store(true, Ordering::SeqCst);
    let faults = faults.await.unwrap_or_default();
    for volume in &cluster.volumes {
        liveness(&cluster, volume).await;
    }
    control_settles(&cluster).await;
    crate::repair::membership_matches_records(&cluster).await;
    done.store(true, Ordering::SeqCst);
    let mut ops = Vec::new();
    for volume in &cluster.volumes {
        let volume_ops = volume.history.ops();
        check_history(&volume_ops, &cluster.violations);
        ops.extend(volume_ops);
    }
    let leaders_per_term_max = cluster
        .volumes
        .iter()
        .map(|v| v.observer.leaders_per_term_max())
        .max()
        .unwrap_or(0);
    let roles = role_stats(&cluster);
    Scenario {
        violations: cluster.violations.count(),
        violation_kinds: cluster.violations.by_kind(),
        messages: cluster.violations.messages(),
        ops: OpCounts {
            dr_snapshots: cluster.dr_snapshots_taken.load(Ordering::SeqCst),
            dr_snapshots_unheld: cluster.dr_snapshots_unheld.load(Ordering::SeqCst),
            ..OpCounts::of(&ops)
        },
        net: cluster.net.stats(),
        faults,
        env: EnvStats {
            control: cluster.control.stats(),
            supervisor_restarts: cluster.supervisor_restarts.load(Ordering::SeqCst),
            recovery_retries: cluster.recovery_retries.load(Ordering::SeqCst),
            corrupted_lost: faults.corrupted.is_some_and(|id| cluster.is_lost(id)),
        },
        leaders_per_term_max,
        roles,
    }
}

/// What the witnesses did, read from the observers and, at the end, from
/// the witness replicas' metrics.
fn role_stats(cluster: &Cluster) -> RoleStats {
    let mut roles = RoleStats::default();
    for volume in &cluster.volumes {
        roles.witness_terms_led += volume.observer.terms_led_by(|id| cluster.is_witness(id));
        for id in cluster
            .voters(volume)
            .into_iter()
            .filter(|id| cluster.is_witness(*id))
        {
            let Some(raft) = cluster.raft(id, volume.id) else {
                continue;
            };
            if raft.metrics().borrow_watched().snapshot.is_some() {
                roles.witness_snapshots += 1;
            }
        }
    }
    roles
}

/// Samples the control-plane checks until `done`.
async fn monitor_control(cluster: Arc<Cluster>, done: Arc<AtomicBool>) {
    let nodes = cluster.node_ids();
    while !done.load(Ordering::SeqCst) {
        let running = cluster.running_controls();
        cluster
            .control
            .sample(now_ns(), &nodes, &running, &cluster.violations);
        pause_ms(crate::control::SAMPLE_MS).await;
    }
}

/// Requires, once everything healed, every node that is not lost to be
/// registered (and to know it) and one coordinator to lead.
async fn control_settles(cluster: &Arc<Cluster>) {
    let deadline = now_ns() + CONTROL_SETTLE_S * 1_000_000_000;
    let nodes: Vec<NodeId> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| !cluster.is_lost(*id))
        .collect();
    while now_ns() < deadline {
        if cluster.control.settled(&nodes, &cluster.running_controls()) {
            return;
        }
        pause_ms(CONVERGE_POLL_MS).await;
    }
    cluster.violations.report_as(ViolationKind::Liveness, format!(
        "liveness: control plane did not settle (every node registered, one coordinator) within {CONTROL_SETTLE_S} s"
    ));
}

/// Heals everything and requires `volume` to converge in the budget.
async fn liveness(cluster: &Arc<Cluster>, volume: &SimVolume) {
    let deadline = now_ns() + LIVENESS_BUDGET_S * 1_000_000_000;
    set_disk_faults(cluster, false);
    cluster.control.heal();
    cluster.net.heal_partitions();
    cluster.net.set_faults(LinkFaults {
        loss_ppm: 0,
        dup_ppm: 0,
        session_dup_ppm: 0,
        spike_ppm: 0,
        spike_ms: 0,
    });
    for id in cluster.node_ids() {
        cluster.restart(id).await;
    }
    let fail = |what: &str| {
        let at = now_ns();
        cluster.violations.report_as(
            ViolationKind::Liveness,
            format!(
                "liveness: {}: {what} within {LIVENESS_BUDGET_S} s (at {at} ns)",
                volume.id
            ),
        );
    };
    if !probe_write(cluster, volume, deadline).await {
        return fail("no write acknowledged");
    }
    if !converged(cluster, volume, deadline).await {
        return fail("replicas did not converge");
    }
    compare_replicas(cluster, volume).await;
    crate::dr_snapshots::check(cluster, volume).await;
    if !sweep(cluster, volume, "final-sweep", FINAL_SWEEP_ATTEMPTS).await {
        fail("no final read answered");
    }
}

/// Writes block 0 of `volume` until one write is acknowledged or
/// `deadline` passes.
async fn probe_write(cluster: &Cluster, volume: &SimVolume, deadline: u64) -> bool {
    while now_ns() < deadline {
        if let Some(via) = cluster.pick_up_node()
            && let Outcome::Acked { .. } = write(cluster, volume, "liveness-probe", via, 0, 1).await
        {
            return true;
        }
        pause_ms(CONVERGE_POLL_MS).await;
    }
    false
}

/// Waits until every member of `volume` runs and all applied the same,
/// newest index (a member whose disk was corrupted is left out).
async fn converged(cluster: &Cluster, volume: &SimVolume, deadline: u64) -> bool {
    while now_ns() < deadline {
        let applied: Vec<Option<u64>> = cluster
            .voters(volume)
            .iter()
            .filter(|id| !cluster.is_corrupted(**id))
            .map(|id| {
                let raft = cluster.raft(*id, volume.id)?;
                let metrics = raft.metrics();
                let m = metrics.borrow_watched();
                let log_end = m.last_log_index;
                m.last_applied
                    .map(|l| l.index)
                    .filter(|i| Some(*i) == log_end)
            })
            .collect();
        if applied.iter().all(Option::is_some) && applied.windows(2).all(|w| w[0] == w[1]) {
            return true;
        }
        pause_ms(CONVERGE_POLL_MS).await;
    }
    false
}

/// A witness member's status must report no block (it applies none).
async fn witness_holds_no_blocks(cluster: &Cluster, volume: &SimVolume, id: NodeId) {
    let Some(host) = cluster.host(id) else {
        return;
    };
    match host.status(volume.id).await {
        Ok(status) if status.blocks_nonzero == 0 => {}
        Ok(status) => cluster.violations.report_as(
            ViolationKind::Divergence,
            format!(
                "witness {id}: holds {} blocks of {}",
                status.blocks_nonzero, volume.id
            ),
        ),
        Err(err) => cluster
            .violations
            .report(format!("witness {id}: status of {}: {err}", volume.id)),
    }
}

/// Reads every member's own copy of `volume`: records it as a read (so a
/// lost acknowledged write shows) and requires all copies, and all the
/// hosts' status digests, to be identical (a member whose disk was
/// corrupted is left out).
async fn compare_replicas(cluster: &Cluster, volume: &SimVolume) {
    let mut digests: Vec<(NodeId, u64)> = Vec::new();
    let mut statuses: Vec<(NodeId, Option<u64>, u32)> = Vec::new();
    for id in cluster.voters(volume) {
        if cluster.is_corrupted(id) {
            // Fail-stop: may lag or have stopped (see faults.rs).
            continue;
        }
        if cluster.is_witness(id) {
            // A witness keeps the log, not the blocks: it must hold none.
            witness_holds_no_blocks(cluster, volume, id).await;
            continue;
        }
        let who = format!("replica-{id}");
        if let Some(host) = cluster.host(id) {
            match host.status(volume.id).await {
                Ok(status) => statuses.push((id, status.applied_index, status.digest)),
                Err(err) => cluster
                    .violations
                    .report(format!("{who}: status of {}: {err}", volume.id)),
            }
        }
        let Some(replica) = cluster.replica(id, volume.id).await else {
            continue;
        };
        let data = match replica.read_blocks(0, VOLUME_BLOCKS as u32) {
            Ok(data) => data,
            Err(err) => {
                cluster
                    .violations
                    .report(format!("{who}: read of {} fails: {err}", volume.id));
                continue;
            }
        };
        digests.push((id, fnv1a(FNV_OFFSET, data.as_bytes())));
        match decode_blocks(data.as_bytes(), 0) {
            Ok(seen) => {
                let kind = OpKind::Read {
                    first_block: 0,
                    seen: Vec::new(),
                };
                let now = now_ns();
                let op = volume.history.invoke(&who, kind, now);
                let acked = Outcome::Acked { log_index: None };
                volume.history.complete(op, acked, Some(seen), now);
            }
            Err(why) => cluster
                .violations
                .report(format!("{who}: {}: {why}", volume.id)),
        }
    }
    if let Some((first, digest)) = digests.first()
        && let Some((other, theirs)) = digests.iter().find(|(_, d)| d != digest)
    {
        cluster.violations.report_as(ViolationKind::Divergence, format!(
            "{}: replicas differ: node {first} digest {digest:016x}, node {other} digest {theirs:016x}",
            volume.id
        ));
    }
    if let Some((first, index, digest)) = statuses.first()
        && let Some((other, i, d)) = statuses.iter().find(|(_, i, d)| (i, d) != (index, digest))
    {
        cluster.violations.report_as(ViolationKind::Divergence, format!(
            "{}: status digests differ: node {first} {digest:08x} at {index:?}, node {other} {d:08x} at {i:?}",
            volume.id
        ));
    }
}
