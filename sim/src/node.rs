//! [`SimNode`]: one simulated metro node and its lifecycle.
//!
//! Model: a node owns a [`FaultyDisk`] that outlives its incarnations. A
//! running incarnation is the real node stack: the kvstore opened
//! (recovered) on that disk, its [`Writer`] driven by a sim task, a
//! [`NodeStorage`], fabric's [`VolumeHost`] on [`Rt`] and [`SimTransport`]
//! with every replica the node's catalogue records
//! ([`VolumeHost::open_existing`]), and a [`HostHandler`] as the node's
//! request handler on the [`SimNetwork`] (attached once the replicas are
//! open; until then requests fail as on a starting node). Witness nodes
//! run the production witness (`NodeStorage::new_witness`,
//! `HostConfig::into_witness` and `VolumeHost::witness_duties` every
//! `WITNESS_DUTY_INTERVAL_MS`): no blocks, the log purged only to the
//! leader's floor, leadership handed on; the checkers require a witness to
//! hold no block and leave it out of the byte-identical comparison. With
//! `witness_never_campaigns` they only vote (`elect(false)`, set once a
//! group is open: a witness may still win the election its own
//! initialization starts).
//!
//! Disk timing: the writer task commits whatever is queued once per disk
//! tick of `fsync_us` (one group commit: write + fdatasync, inline in
//! [`Writer::step`]); a batch is durable, and its completion runs, at the
//! first tick after it was submitted. Ticks of an idle disk back off up to
//! [`DISK_IDLE_TICK_MAX_US`]. Never `Writer::run` and never the
//! blocking `Store::write` here: the executor has one thread.
//!
//! Each incarnation also runs fabric's `NodeRegistration` (and, if the
//! seed says so, a `Coordinator`) against the cluster's store (see
//! `control.rs`), and sees its disk through a wrapper that counts the I/O
//! errors the disk returns (its supervisor's health signal, see
//! `Cluster::supervise`).
//!
//! Crash = power loss: the incarnation's tasks end at once (their
//! [`KillSwitch`]), the network forgets it, the disk loses what was not
//! synced ([`FaultyDisk::crash`]), and every Raft handle of its host is
//! shut down in the background (it can no longer send or persist
//! anything). Restart opens a new incarnation on the same disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::collections::BTreeSet;

use metro_fabric::env::{Disk, DiskError, DiskFile, NodeId, OpenMode};
use metro_fabric::host::{HostConfig, HostHandler, VolumeHost, base_raft_config};
use metro_fabric::limits::WITNESS_DUTY_INTERVAL_MS;
use metro_fabric::raft::types::VolumeRaft;
use metro_fabric::storage::{NodeStorage, VolumeStateMachine};
use metro_kvstore::{CrashMode, FaultyDisk, Options, Store, StoreError, Writer};
use openraft::{AsyncRuntime, Config, SnapshotPolicy};

use crate::Rt;
use crate::control::{ControlPlane, NodeControl};
use crate::kill::KillSwitch;
use crate::network::{SimNetwork, SimTransport};
use crate::options::{PlantedBug, SimOptions};

/// The orphan-learner grace of simulated hosts: production's (minutes) is
/// beyond any run; a sim repair catches up in well under this.
pub const ORPHAN_GRACE_MS: u64 = 3_000;

/// Segment size of the simulated stores: small, so segments roll and
/// compaction and checkpoints run within a short simulation, and because
/// `FaultyDisk` copies a whole file at every fdatasync.
pub const SEGMENT_BYTES: u32 = 128 << 10;
/// Victim bytes compaction scans at a time: several slices per segment, so
/// the simulator crashes nodes with compactions part-way through victims.
pub const COMPACTION_SLICE_BYTES: u32 = 16 << 10;
/// The longest pause of an idle disk's commit loop: a batch submitted to
/// an idle node waits at most this long for its group commit.
pub const DISK_IDLE_TICK_MAX_US: u64 = 2_000;
/// Log bytes between kvstore checkpoints.
pub const CHECKPOINT_LOG_BYTES: u64 = 2 << 20;

pub type Sm = VolumeStateMachine<Rt>;
pub type Raft = VolumeRaft<Rt, Sm>;
pub type Host = VolumeHost<Rt, SimTransport>;
pub type Handler = HostHandler<Rt, SimTransport>;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// kvstore refused to open (recover) the disk; `corrupt`: because it
    /// found damage to acknowledged data.
    #[error("node {node}: store does not open: {reason}")]
    Store {
        node: NodeId,
        reason: String,
        corrupt: bool,
    },
    /// The disk failed an operation (EIO) while the node started.
    #[error("node {node}: I/O error while starting: {reason}")]
    Eio { node: NodeId, reason: String },
    /// The host did not reopen the replicas of its catalogue.
    #[error("node {node}: replicas do not open: {reason}")]
    Group { node: NodeId, reason: String },
}

/// Where a node sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: NodeId,
    pub domain: usize,
    pub witness: bool,
}

/// A running incarnation of a node.
pub struct Running {
    pub host: Arc<Host>,
    pub transport: SimTransport,
    pub kill: KillSwitch,
    /// Its registration (and coordinator) against the control plane.
    pub control: NodeControl,
    /// I/O errors its disk returned to this incarnation.
    pub disk_errors: Arc<AtomicU64>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// One simulated node: its disk, and its incarnation when it runs.
pub struct SimNode {
    pub spec: NodeSpec,
    pub disk: FaultyDisk,
    pub running: Option<Running>,
    /// Set while an incarnation is being started.
    pub starting: bool,
    /// Its disk was deliberately corrupted (fail-stop from then on).
    pub corrupted: bool,
    /// It refused to recover from its corrupted disk: down for good.
    pub lost: bool,
    pub restarts: u64,
}

impl std::fmt::Debug for SimNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNode")
            .field("spec", &self.spec)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

/// The Raft configuration of every simulated group: production timings.
pub fn raft_config(options: &SimOptions, node: NodeId) -> Arc<Config> {
    let snapshot_policy = match options.snapshot_logs {
        0 => SnapshotPolicy::Never,
        logs => SnapshotPolicy::LogsSinceLast(logs),
    };
    let base = base_raft_config();
    // openraft times only spans (heartbeats, election timeouts, the leader
    // lease) on the one runtime clock; a node whose clock runs at another
    // rate measures each span that much longer or shorter in true time.
    let on_node_clock = |ms: u64| {
        (options
            .env
            .true_span(node, Duration::from_millis(ms))
            .as_millis() as u64)
            .max(1)
    };
    let config = Config {
        snapshot_policy,
        max_in_snapshot_log_to_keep: 16,
        heartbeat_interval: on_node_clock(base.heartbeat_interval),
        election_timeout_min: on_node_clock(base.election_timeout_min),
        election_timeout_max: on_node_clock(base.election_timeout_max),
        ..base
    };
    Arc::new(
        config
            .validate()
            .expect("the simulated Raft config is valid"),
    )
}

fn store_options() -> Options {
    Options {
        segment_bytes: SEGMENT_BYTES,
        checkpoint_log_bytes: CHECKPOINT_LOG_BYTES,
        compaction_slice_bytes: COMPACTION_SLICE_BYTES,
        ..Options::default()
    }
}

/// Commits the queued batches once per disk tick, forever (until killed).
/// While the queue stays empty the tick backs off, doubling up to
/// [`DISK_IDLE_TICK_MAX_US`], so idle disks cost few events.
async fn drive_writer(mut writer: Writer, tick: Duration) {
    let idle_max = Duration::from_micros(DISK_IDLE_TICK_MAX_US).max(tick);
    let mut next = tick;
    loop {
        next = match writer.step() {
            0 => (next * 2).min(idle_max),
            _ => tick,
        };
        Rt::sleep(next).await;
    }
}

impl SimNode {
    /// A node that has never run, on an empty disk seeded from `disk_seed`.
    pub fn new(spec: NodeSpec, disk_seed: u64) -> Self {
        Self {
            spec,
            disk: FaultyDisk::new(disk_seed),
            running: None,
            starting: false,
            corrupted: false,
            lost: false,
            restarts: 0,
        }
    }
}

/// Opens a new incarnation of `spec` on `disk` (recovering what it holds)
/// among `peers`; it registers with `control` (and runs a coordinator with
/// `options.env.coordinators`).
pub async fn start(
    spec: NodeSpec,
    disk: &FaultyDisk,
    net: &Arc<SimNetwork>,
    options: &SimOptions,
    peers: BTreeSet<NodeId>,
    control: &ControlPlane,
    errors_total: &Arc<AtomicU64>,
) -> Result<Running, NodeError> {
    let node = spec.id;
    let disk_errors = Arc::new(AtomicU64::new(0));
    let seen: Arc<dyn Disk> = Arc::new(SimDisk {
        inner: disk.clone(),
        lying: options.bug == Some(PlantedBug::LyingFsync),
        errors: Arc::clone(&disk_errors),
        total: Arc::clone(errors_total),
    });
    // A failure after an injected EIO is that EIO's (the supervisor
    // retries it); anything else is the store's or the host's verdict.
    let eio = |reason: String, other: NodeError| match disk_errors.load(Ordering::SeqCst) {
        0 => other,
        _ => NodeError::Eio { node, reason },
    };
    let (store, writer) = Store::open(seen, store_options()).map_err(|e| {
        let store = NodeError::Store {
            node,
            reason: e.to_string(),
            corrupt: matches!(e, StoreError::Corrupt { .. }),
        };
        eio(e.to_string(), store)
    })?;
    let kill = KillSwitch::new();
    // The disk's tick is timed by the node's clock.
    let tick = options
        .env
        .true_span(node, Duration::from_micros(options.fsync_us));
    let writer_kill = kill.clone();
    Rt::spawn(async move { writer_kill.guard(drive_writer(writer, tick)).await });
    let storage = match spec.witness {
        true => NodeStorage::new_witness(store),
        false => NodeStorage::new(store),
    };
    if options.bug == Some(PlantedBug::NoDedup) {
        storage.plant_ignore_request_numbers();
    }
    let handler = Handler::new();
    let transport = net.start(node, handler.clone(), kill.clone());
    let mut config = HostConfig {
        node,
        peers: peers.into_iter().filter(|p| *p != node).collect(),
        raft: raft_config(options, node),
        witness: false,
        orphan_grace_ms: ORPHAN_GRACE_MS,
        promotion_hold_ms: 0,
    };
    if spec.witness {
        // The production witness: no blocks, later elections, its log
        // purged only to the leader's floor (see `fabric::host`).
        config = config.into_witness().map_err(|e| NodeError::Group {
            node,
            reason: e.to_string(),
        })?;
    }
    let host = Host::new(config, storage, Arc::new(transport.clone()));
    if options.bug == Some(PlantedBug::UnfencedMembership) {
        host.plant_unfenced_membership();
    }
    let opened = host.open_existing().await.map_err(|e| {
        let group = NodeError::Group {
            node,
            reason: e.to_string(),
        };
        eio(e.to_string(), group)
    });
    if let Err(err) = opened {
        // As a crashed process: the writer task and the network endpoint
        // end with the switch; the groups it did open shut down.
        kill.kill();
        shut_down_groups(&host);
        return Err(err);
    }
    if spec.witness && options.witness_never_campaigns {
        never_campaign(&host);
    }
    handler.attach(Arc::clone(&host));
    if spec.witness {
        let duties_host = Arc::clone(&host);
        let duties_kill = kill.clone();
        let every = Duration::from_millis(WITNESS_DUTY_INTERVAL_MS);
        Rt::spawn(async move {
            duties_kill
                .guard(async move {
                    loop {
                        Rt::sleep(every).await;
                        duties_host.witness_duties().await;
                    }
                })
                .await
        });
    }
    let domain = format!("d{}", spec.domain);
    let repair_delay = options.repair.map_or(crate::control::REPAIR_DELAY, |r| {
        Duration::from_millis(r.delay_ms)
    });
    let control = control.start_node(node, domain, &host, options.env.coordinators, repair_delay);
    let registration = Arc::clone(&control.registration);
    let registration_kill = kill.clone();
    Rt::spawn(async move { registration_kill.guard(registration.run()).await });
    if let Some(coordinator) = control.coordinator.clone() {
        let coordinator_kill = kill.clone();
        Rt::spawn(async move { coordinator_kill.guard(coordinator.run()).await });
    }
    Ok(Running {
        host,
        transport,
        kill,
        control,
        disk_errors,
    })
}

/// Keeps every group of `host` from campaigning (a witness only votes).
pub fn never_campaign(host: &Host) {
    for volume in host.volumes() {
        if let Some(raft) = host.raft(volume) {
            raft.runtime_config().elect(false);
        }
    }
}

/// Power loss of a running incarnation: see the module docs.
pub fn crash(
    spec: NodeSpec,
    running: Running,
    disk: &FaultyDisk,
    net: &SimNetwork,
    mode: CrashMode,
) {
    net.stop(spec.id);
    running.kill.kill();
    disk.crash(mode);
    shut_down_groups(&running.host);
}

/// Shuts down every Raft group of `host` in the background.
fn shut_down_groups(host: &Host) {
    let router = host.router();
    for volume in router.volumes() {
        let Some(raft) = router.remove(volume) else {
            continue;
        };
        // Nothing waits for this: the incarnation can no longer send or
        // persist.
        Rt::spawn(async move {
            let _ = raft.shutdown().await;
        });
    }
}

/// The disk one incarnation sees: the node's [`FaultyDisk`], counting the
/// I/O errors it returns (the supervisor's health signal), and with the
/// planted bug `LyingFsync`, an `fdatasync` that succeeds without syncing.
#[derive(Debug)]
struct SimDisk {
    inner: FaultyDisk,
    lying: bool,
    errors: Arc<AtomicU64>,
    /// Every node's errors, for the whole run.
    total: Arc<AtomicU64>,
}

#[derive(Debug)]
struct SimFile {
    inner: Arc<dyn DiskFile>,
    lying: bool,
    errors: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
}

/// Counts `result` if it is an I/O error (EIO); a missing file or a short
/// read is an answer, not a failure.
fn counted<T>(
    (errors, total): (&AtomicU64, &AtomicU64),
    result: Result<T, DiskError>,
) -> Result<T, DiskError> {
    if let Err(DiskError::Io { .. }) = result {
        errors.fetch_add(1, Ordering::SeqCst);
        total.fetch_add(1, Ordering::SeqCst);
    }
    result
}

impl Disk for SimDisk {
    fn open(&self, name: &str, mode: OpenMode) -> Result<Arc<dyn DiskFile>, DiskError> {
        let inner = counted((&self.errors, &self.total), self.inner.open(name, mode))?;
        Ok(Arc::new(SimFile {
            inner,
            lying: self.lying,
            errors: Arc::clone(&self.errors),
            total: Arc::clone(&self.total),
        }))
    }
    fn list(&self) -> Result<Vec<String>, DiskError> {
        counted((&self.errors, &self.total), self.inner.list())
    }
    fn remove(&self, name: &str) -> Result<(), DiskError> {
        counted((&self.errors, &self.total), self.inner.remove(name))
    }
    fn rename(&self, from: &str, to: &str) -> Result<(), DiskError> {
        counted((&self.errors, &self.total), self.inner.rename(from, to))
    }
    fn sync_dir(&self) -> Result<(), DiskError> {
        counted((&self.errors, &self.total), self.inner.sync_dir())
    }
}

impl DiskFile for SimFile {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        counted((&self.errors, &self.total), self.inner.read_at(buf, offset))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        counted(
            (&self.errors, &self.total),
            self.inner.write_at(buf, offset),
        )
    }
    fn sync_data(&self) -> Result<(), DiskError> {
        match self.lying {
            true => Ok(()),
            false => counted((&self.errors, &self.total), self.inner.sync_data()),
        }
    }
    fn len(&self) -> Result<u64, DiskError> {
        counted((&self.errors, &self.total), self.inner.len())
    }
    fn set_len(&self, len: u64) -> Result<(), DiskError> {
        counted((&self.errors, &self.total), self.inner.set_len(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's clock rate stretches or shrinks its Raft spans; the other
    /// nodes keep the base timings.
    #[test]
    fn raft_spans_follow_the_node_clock() {
        let mut options = SimOptions::from_seed(1);
        options.env.clock_rate_ppm = vec![1_000_000; options.env.clock_rate_ppm.len()];
        options.env.clock_rate_ppm[1] = 1_250_000; // node 2: a fast clock
        options.env.clock_rate_ppm[2] = 800_000; // node 3: a slow clock
        let base = base_raft_config();
        let exact = raft_config(&options, 1);
        assert_eq!(exact.heartbeat_interval, base.heartbeat_interval);
        assert_eq!(exact.election_timeout_min, base.election_timeout_min);
        let fast = raft_config(&options, 2);
        assert_eq!(fast.election_timeout_min, base.election_timeout_min * 4 / 5);
        assert_eq!(fast.heartbeat_interval, base.heartbeat_interval * 4 / 5);
        let slow = raft_config(&options, 3);
        assert_eq!(slow.election_timeout_max, base.election_timeout_max * 5 / 4);
    }
}
