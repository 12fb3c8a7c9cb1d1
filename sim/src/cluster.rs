//! [`Cluster`]: the simulated nodes of one run, their network, the volumes
//! they host, and what every check needs (per volume: history and Raft
//! observations; violations).
//!
//! Topology: the domains of the options, nodes numbered from 1 in domain
//! order. Volumes: `options.volumes` of them, ids from 1, each placed by
//! fabric's [`place`] over the topology seen as a [`ClusterView`] (one
//! replica per data domain, least-loaded first; a witness voter when the
//! data replicas are even) and created at boot through
//! [`VolumeHost::create_volume`](metro_fabric::host::VolumeHost::create_volume)
//! on a node drawn from the seed (often not a member, so the
//! replica-control requests cross the network). Creation is idempotent and
//! retried until it succeeds. Witness replicas are plain voters, as in
//! production (unless `witness_never_campaigns`).
//!
//! Locking: the node table's mutex is held only to read or swap entries,
//! never across an await; starting a node marks it `starting` so that two
//! tasks never start the same node at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use metro_fabric::control::{
    ClusterView, DomainInfo, DomainRole, DomainState, Health, NodeInfo, VolumeRecord, VolumeSpec,
    VolumeStatusRecord, encode, place, status_key,
};
use metro_fabric::env::NodeId;
use metro_fabric::meta::prelude::*;
use metro_fabric::storage::VolumeHandle;
use metro_fabric::volume::{BLOCK_BYTES, VolumeId};
use metro_kvstore::{CrashMode, FaultyDisk};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{AsyncRuntime, ServerState};
use parking_lot::Mutex;

use crate::Rt;
use crate::checker::{RaftObserver, Violations};
use crate::control::{ControlPlane, LEASE_TTL, NodeControl};
use crate::history::History;
use crate::kill::KillSwitch;
use crate::network::SimNetwork;
use crate::node::{self, Host, NodeError, NodeSpec, Raft, Running, SimNode};
use crate::options::{SimOptions, VOLUME_BLOCKS};
use crate::rng::SimRng;

/// Recovery attempts of one restart that fail with an I/O error.
pub const RECOVERY_ATTEMPTS_MAX: u64 = 20;
/// Pause before retrying a recovery that failed with an I/O error.
pub const RECOVERY_RETRY_MS: u64 = 500;
/// How often a supervisor looks at its node's disk errors (node clock).
pub const SUPERVISOR_POLL_MS: u64 = 200;
/// How long a supervisor takes to restart a node whose disk failed, at
/// least (node clock).
pub const SUPERVISOR_DELAY_MS_MIN: u64 = 500;
/// ... and at most.
pub const SUPERVISOR_DELAY_MS_MAX: u64 = 3_000;
/// How long the restarted process takes to come back.
pub const SUPERVISOR_DOWN_MS: u64 = 200;
/// Attempts to create one volume at boot before it counts as a violation.
pub const CREATE_ATTEMPTS_MAX: u64 = 20;
/// Pause between two attempts to create a volume.
pub const CREATE_RETRY_MS: u64 = 500;

/// One replicated volume of the run and its checks' state.
#[derive(Debug)]
pub struct SimVolume {
    pub id: VolumeId,
    /// The group's members as placed at boot (data replicas, then the
    /// witness); [`Cluster::voters`] says who they are now.
    pub members: Vec<NodeId>,
    pub history: History,
    pub observer: RaftObserver,
    /// When a write to it was last acknowledged (0: never).
    pub last_ack_ns: AtomicU64,
    /// Its acknowledged DR snapshots (checked at the end).
    pub dr_snapshots: crate::dr_snapshots::TakenSnapshots,
}

/// One run's cluster.
pub struct Cluster {
    pub options: SimOptions,
    pub net: Arc<SimNetwork>,
    pub rng: SimRng,
    pub volumes: Vec<SimVolume>,
    pub violations: Violations,
    /// The control plane: the store every node registers with.
    pub control: ControlPlane,
    /// Events that may disturb the data path (crashes, restarts, partitions
    /// and their heals): an outage window without any is held to writes
    /// completing.
    pub disruptions: AtomicU64,
    /// When the last disruption happened.
    pub last_disruption_ns: AtomicU64,
    /// I/O errors every node's disk returned so far.
    pub disk_errors: Arc<AtomicU64>,
    /// Writes acknowledged so far, over all volumes.
    pub acked_writes: AtomicU64,
    /// DR snapshots acknowledged, and those no replica held at the end.
    pub dr_snapshots_taken: AtomicU64,
    pub dr_snapshots_unheld: AtomicU64,
    /// Restarts of nodes whose disk returned an I/O error (the supervisor).
    pub supervisor_restarts: AtomicU64,
    /// Recoveries that failed with an I/O error and were retried.
    pub recovery_retries: AtomicU64,
    /// Write ids are unique across volumes, so a block showing another
    /// volume's write is caught as a write that never went there.
    write_ids: AtomicU64,
    nodes: Mutex<BTreeMap<NodeId, SimNode>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("seed", &self.options.seed)
            .finish_non_exhaustive()
    }
}

/// The name of domain `index` in the control plane's view.
fn domain_name(index: usize) -> String {
    format!("d{index}")
}

/// The topology of `nodes` as the control plane sees it: every domain
/// active, every node registered.
pub fn topology_view(options: &SimOptions, nodes: &BTreeMap<NodeId, SimNode>) -> ClusterView {
    let mut view = ClusterView::default();
    for (index, spec) in options.domains.iter().enumerate() {
        let role = match spec.witness {
            true => DomainRole::Witness,
            false => DomainRole::Data,
        };
        let name = domain_name(index);
        let info = DomainInfo {
            name: name.clone(),
            role,
            state: DomainState::Active,
        };
        view.domains.insert(name, info);
    }
    for node in nodes.values() {
        let info = NodeInfo {
            id: node.spec.id,
            domain: domain_name(node.spec.domain),
            quic_addr: format!("sim:node-{}", node.spec.id),
            nbd_addr: String::new(),
            admin_addr: String::new(),
            capacity_bytes: 0,
            version: String::new(),
        };
        view.nodes.insert(node.spec.id, info);
    }
    view
}

/// Places `options.volumes` volumes one after the other (each sees the
/// load of those before it); a placement error is a violation and leaves
/// the volume out.
fn place_volumes(
    options: &SimOptions,
    nodes: &BTreeMap<NodeId, SimNode>,
    violations: &Violations,
) -> (Vec<SimVolume>, ClusterView) {
    let mut view = topology_view(options, nodes);
    let mut volumes = Vec::new();
    for id in 1..=options.volumes {
        let name = format!("vol-{id}");
        let spec = VolumeSpec {
            name: name.clone(),
            id,
            size_bytes: VOLUME_BLOCKS * BLOCK_BYTES as u64,
            replicas: options.replicas,
        };
        match place(&spec, &view) {
            Ok(placement) => {
                volumes.push(SimVolume {
                    id: VolumeId(id),
                    members: placement.nodes().collect(),
                    history: History::new(),
                    observer: RaftObserver::new(),
                    last_ack_ns: AtomicU64::new(0),
                    dr_snapshots: Default::default(),
                });
                let record = VolumeRecord {
                    spec,
                    placement: Some(placement),
                };
                view.volumes.insert(name, record);
            }
            Err(err) => violations.report_as(
                crate::checker::ViolationKind::Other,
                format!("placing {name}: {err}"),
            ),
        }
    }
    (volumes, view)
}

/// Writes the desired state of `view` (domains, placed volumes with their
/// groups created) into the control plane's store, as the coordinator
/// would have after creating them.
fn seed_store(control: &ControlPlane, view: &ClusterView) {
    let store = &control.store;
    let keys = &control.keys;
    let put = |key: String, value: Vec<u8>| {
        let written = store.put(key.as_bytes(), &value, None).now_or_never();
        debug_assert!(matches!(written, Some(Ok(_))), "the store takes {key}");
    };
    for (name, domain) in &view.domains {
        put(keys.domain(name), encode(domain));
    }
    for (name, record) in &view.volumes {
        put(keys.volume(name), encode(record));
        let status = VolumeStatusRecord {
            group_created: true,
            health: Health::Pending,
            coordinator: 0,
            error: None,
        };
        put(status_key(keys, name), encode(&status));
    }
}

impl Cluster {
    /// Builds the topology of `options`, starts every node and creates the
    /// volumes.
    pub async fn boot(options: SimOptions, rng: SimRng) -> Arc<Self> {
        let net = SimNetwork::new(&options, rng.clone());
        let mut nodes = BTreeMap::new();
        let mut id: NodeId = 0;
        for (domain, spec) in options.domains.iter().enumerate() {
            for _ in 0..spec.nodes {
                id += 1;
                net.add_node(id, domain);
                let spec = NodeSpec {
                    id,
                    domain,
                    witness: spec.witness,
                };
                nodes.insert(id, SimNode::new(spec, rng.next_u64()));
            }
        }
        let violations = Violations::new();
        let (volumes, view) = place_volumes(&options, &nodes, &violations);
        let ids: Vec<NodeId> = nodes.keys().copied().collect();
        let env = options.env.clone();
        let control = ControlPlane::new(&ids, |id| {
            // A slow clock sleeps longer between keep-alives.
            let period = LEASE_TTL / metro_fabric::limits::KEEP_ALIVES_PER_TTL;
            env.true_span(id, period).saturating_sub(period)
        });
        seed_store(&control, &view);
        let cluster = Arc::new(Self {
            options,
            net,
            rng,
            volumes,
            violations,
            control,
            disruptions: AtomicU64::new(0),
            last_disruption_ns: AtomicU64::new(0),
            disk_errors: Arc::new(AtomicU64::new(0)),
            acked_writes: AtomicU64::new(0),
            dr_snapshots_taken: AtomicU64::new(0),
            dr_snapshots_unheld: AtomicU64::new(0),
            supervisor_restarts: AtomicU64::new(0),
            recovery_retries: AtomicU64::new(0),
            write_ids: AtomicU64::new(0),
            nodes: Mutex::new(nodes),
        });
        for id in cluster.node_ids() {
            cluster.restart(id).await;
        }
        for index in 0..cluster.volumes.len() {
            cluster.create(index).await;
        }
        cluster
    }

    /// Counts an event that may disturb the data path.
    pub fn disrupted(&self) {
        self.disruptions.fetch_add(1, Ordering::SeqCst);
        self.last_disruption_ns
            .store(crate::now_ns(), Ordering::SeqCst);
    }

    /// The disk of `id`.
    pub fn disk(&self, id: NodeId) -> Option<FaultyDisk> {
        self.nodes.lock().get(&id).map(|n| n.disk.clone())
    }

    /// Marks `id`'s disk as deliberately corrupted: from now on it is
    /// fail-stop (see `faults.rs`) and left out of the convergence checks.
    pub fn mark_corrupted(&self, id: NodeId) {
        if let Some(node) = self.nodes.lock().get_mut(&id) {
            node.corrupted = true;
        }
    }

    /// Whether `id`'s disk was deliberately corrupted.
    pub fn is_corrupted(&self, id: NodeId) -> bool {
        self.nodes.lock().get(&id).is_some_and(|n| n.corrupted)
    }

    /// Whether `id` is a witness node (log only, no blocks).
    pub fn is_witness(&self, id: NodeId) -> bool {
        self.nodes.lock().get(&id).is_some_and(|n| n.spec.witness)
    }

    /// Whether `id` refused to recover from its corrupted disk (it stays
    /// down for good).
    pub fn is_lost(&self, id: NodeId) -> bool {
        self.nodes.lock().get(&id).is_some_and(|n| n.lost)
    }

    /// Whether a running incarnation has seen its disk fail (it awaits its
    /// supervisor's restart).
    pub fn awaits_supervisor(&self) -> bool {
        let nodes = self.nodes.lock();
        nodes.values().any(|n| {
            n.running
                .as_ref()
                .is_some_and(|r| r.disk_errors.load(Ordering::SeqCst) > 0)
        })
    }

    /// The control tasks of every running incarnation.
    pub fn running_controls(&self) -> BTreeMap<NodeId, NodeControl> {
        let nodes = self.nodes.lock();
        nodes
            .values()
            .filter_map(|n| Some((n.spec.id, n.running.as_ref()?.control.clone())))
            .collect()
    }

    /// Creates volume `index` through a node drawn from the seed, retrying
    /// until it succeeds; then follows its replicas.
    async fn create(self: &Arc<Self>, index: usize) {
        let volume = &self.volumes[index];
        let ids = self.node_ids();
        let mut last_error = String::from("no node up");
        for _ in 0..CREATE_ATTEMPTS_MAX {
            let via = self.rng.pick(&ids);
            if let Some(host) = self.host(via) {
                let created = host
                    .create_volume(volume.id, VOLUME_BLOCKS, &volume.members)
                    .await;
                match created {
                    Ok(()) => {
                        for member in &volume.members {
                            self.member_started(*member, index);
                        }
                        return;
                    }
                    Err(err) => last_error = err.to_string(),
                }
            }
            Rt::sleep(Duration::from_millis(CREATE_RETRY_MS)).await;
        }
        self.violations.report_as(
            crate::checker::ViolationKind::Other,
            format!(
                "creating {} on {:?}: {last_error}",
                volume.id, volume.members
            ),
        );
    }

    /// After `node`'s replica of volume `index` started: a witness's never
    /// campaigns, and its metrics are followed.
    fn member_started(self: &Arc<Self>, node: NodeId, index: usize) {
        let volume = self.volumes[index].id;
        let Some((raft, kill, witness)) = self.with_running(node, |n, r| {
            let raft = r.host.raft(volume)?;
            Some((raft, r.kill.clone(), n.spec.witness))
        }) else {
            return;
        };
        if witness && self.options.witness_never_campaigns {
            raft.runtime_config().elect(false);
        }
        self.spawn_observer(node, index, raft, kill);
    }

    /// The next write id of the run (unique across volumes, from 1).
    pub fn next_write_id(&self) -> u64 {
        self.write_ids.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The index of `volume` among the run's volumes.
    pub fn volume_index(&self, volume: VolumeId) -> Option<usize> {
        self.volumes.iter().position(|v| v.id == volume)
    }

    /// Every node, in id order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.lock().keys().copied().collect()
    }

    /// The nodes of `domain`.
    pub fn domain_nodes(&self, domain: usize) -> Vec<NodeId> {
        let nodes = self.nodes.lock();
        nodes
            .values()
            .filter(|n| n.spec.domain == domain)
            .map(|n| n.spec.id)
            .collect()
    }

    /// The index of `id`'s domain (0 for an unknown node).
    pub fn domain_of(&self, id: NodeId) -> usize {
        self.nodes.lock().get(&id).map_or(0, |n| n.spec.domain)
    }

    /// The nodes running now.
    pub fn up_nodes(&self) -> Vec<NodeId> {
        let nodes = self.nodes.lock();
        nodes
            .values()
            .filter(|n| n.running.is_some())
            .map(|n| n.spec.id)
            .collect()
    }

    /// A random running node.
    pub fn pick_up_node(&self) -> Option<NodeId> {
        let up = self.up_nodes();
        (!up.is_empty()).then(|| self.rng.pick(&up))
    }

    /// Runs `f` on `id` and its running incarnation, if it runs.
    fn with_running<T>(
        &self,
        id: NodeId,
        f: impl FnOnce(&SimNode, &Running) -> Option<T>,
    ) -> Option<T> {
        let nodes = self.nodes.lock();
        let node = nodes.get(&id)?;
        f(node, node.running.as_ref()?)
    }

    /// The volume host of `id`, if it runs.
    pub fn host(&self, id: NodeId) -> Option<Arc<Host>> {
        self.with_running(id, |_, r| Some(Arc::clone(&r.host)))
    }

    /// The volume host of `id` with its incarnation's kill switch.
    pub fn host_and_kill(&self, id: NodeId) -> Option<(Arc<Host>, KillSwitch)> {
        self.with_running(id, |_, r| Some((Arc::clone(&r.host), r.kill.clone())))
    }

    /// The Raft handle of `id`'s replica of `volume`, if it runs one.
    pub fn raft(&self, id: NodeId, volume: VolumeId) -> Option<Raft> {
        self.with_running(id, |_, r| r.host.raft(volume))
    }

    /// The read handle on `id`'s copy of `volume`, if it runs one.
    pub async fn replica(&self, id: NodeId, volume: VolumeId) -> Option<VolumeHandle> {
        let host = self.with_running(id, |_, r| Some(Arc::clone(&r.host)))?;
        host.replica_handle(volume).await.ok()
    }

    /// The voters of `volume`'s group now: those of the newest membership
    /// (by log id) any running replica has (both configurations' voters
    /// during a change); the placement's members when none runs. Repairs
    /// (the repair workload) change them; a replaced node's replica, if it
    /// runs, holds an older membership and is no voter.
    pub fn voters(&self, volume: &SimVolume) -> Vec<NodeId> {
        let newest = self
            .node_ids()
            .into_iter()
            .filter_map(|id| {
                let raft = self.raft(id, volume.id)?;
                let metrics = raft.metrics();
                let config = Arc::clone(&metrics.borrow_watched().membership_config);
                Some(config)
            })
            .max_by_key(|config| *config.log_id());
        match newest {
            Some(config) if config.log_id().is_some() => config.voter_ids().collect(),
            _ => volume.members.clone(),
        }
    }

    /// A member of `volume` that believes it leads, per its metrics.
    pub fn leader(&self, volume: &SimVolume) -> Option<NodeId> {
        self.voters(volume).into_iter().find(|id| {
            self.raft(*id, volume.id).is_some_and(|raft| {
                let metrics = raft.metrics();
                let m = metrics.borrow_watched();
                m.state == ServerState::Leader
            })
        })
    }

    /// Whether crashing `id` now leaves every volume a majority of its
    /// members running.
    /// (A node with a corrupted disk counts as down: it is fail-stop.)
    pub fn may_crash(&self, id: NodeId) -> bool {
        let up: BTreeSet<NodeId> = self
            .up_nodes()
            .into_iter()
            .filter(|n| !self.is_corrupted(*n))
            .collect();
        self.volumes.iter().all(|v| {
            let voters = self.voters(v);
            let running = voters
                .iter()
                .filter(|m| up.contains(m) && **m != id)
                .count();
            running > voters.len() / 2
        })
    }

    /// Power loss of `id` (see `node::crash`); false if it was not running.
    pub fn crash(&self, id: NodeId, mode: CrashMode) -> bool {
        let mut nodes = self.nodes.lock();
        let Some(node) = nodes.get_mut(&id) else {
            return false;
        };
        let Some(running) = node.running.take() else {
            return false;
        };
        node::crash(node.spec, running, &node.disk, &self.net, mode);
        drop(nodes);
        self.disrupted();
        true
    }

    /// Starts a new incarnation of `id` from its disk, with every replica
    /// its catalogue records; false if it already runs, is being started,
    /// is lost, or did not start. A recovery that fails with an I/O error
    /// (injected EIO) is retried after [`RECOVERY_RETRY_MS`], up to
    /// [`RECOVERY_ATTEMPTS_MAX`] times; one that finds its deliberately
    /// corrupted disk damaged (kvstore refuses to open, or a replica does
    /// not reopen) leaves the node down for good (lost); any
    /// other failure is a violation: a node must always recover from its
    /// own disk.
    pub async fn restart(self: &Arc<Self>, id: NodeId) -> bool {
        let (spec, disk) = {
            let mut nodes = self.nodes.lock();
            let Some(node) = nodes.get_mut(&id) else {
                return false;
            };
            if node.running.is_some() || node.starting || node.lost {
                return false;
            }
            node.starting = true;
            (node.spec, node.disk.clone())
        };
        let peers: BTreeSet<NodeId> = self.node_ids().into_iter().collect();
        let mut attempts = 0;
        let started = loop {
            attempts += 1;
            let started = node::start(
                spec,
                &disk,
                &self.net,
                &self.options,
                peers.clone(),
                &self.control,
                &self.disk_errors,
            )
            .await;
            match started {
                Err(NodeError::Eio { .. }) if attempts < RECOVERY_ATTEMPTS_MAX => {
                    self.net.stop(id);
                    self.recovery_retries.fetch_add(1, Ordering::SeqCst);
                    Rt::sleep(Duration::from_millis(RECOVERY_RETRY_MS)).await;
                }
                other => break other,
            }
        };
        let hosted = {
            let mut nodes = self.nodes.lock();
            let node = nodes.get_mut(&id).expect("nodes are never removed");
            node.starting = false;
            match started {
                Ok(running) => {
                    let hosted = running.host.volumes();
                    let errors = Arc::clone(&running.disk_errors);
                    let kill = running.kill.clone();
                    node.restarts += 1;
                    node.running = Some(running);
                    drop(nodes);
                    self.disrupted();
                    self.supervise(id, errors, kill);
                    hosted
                }
                Err(NodeError::Store { corrupt: true, .. } | NodeError::Group { .. })
                    if node.corrupted =>
                {
                    // The expected outcome of latent corruption: recovery
                    // (kvstore's, or the replicas' reading their logs back:
                    // a CRC mismatch, seed 603) refuses to guess; the node
                    // stays down.
                    node.lost = true;
                    drop(nodes);
                    self.net.stop(id);
                    return false;
                }
                Err(err) => {
                    drop(nodes);
                    self.net.stop(id);
                    self.violations.report_as(
                        crate::checker::ViolationKind::Recovery,
                        format!("recovery: {err}"),
                    );
                    return false;
                }
            }
        };
        for volume in hosted {
            match self.volume_index(volume) {
                Some(index) => self.member_started(id, index),
                None => self.violations.report_as(
                    crate::checker::ViolationKind::Other,
                    format!("node {id} hosts unknown {volume}"),
                ),
            }
        }
        true
    }

    /// The supervisor of one incarnation of `id` (systemd, or an operator):
    /// once its disk returned an I/O error — a failed write or fdatasync
    /// poisons the store, so the node can no longer persist anything — it
    /// is restarted: after [`SUPERVISOR_DELAY_MS_MIN`]..[`SUPERVISOR_DELAY_MS_MAX`]
    /// on the node's clock it is crashed as by power loss (after a failed
    /// fdatasync the kernel may have dropped the dirty pages, so nothing
    /// unsynced is assumed to survive) and restarted from its disk.
    fn supervise(self: &Arc<Self>, id: NodeId, errors: Arc<AtomicU64>, kill: KillSwitch) {
        let cluster = Arc::clone(self);
        let poll = self
            .options
            .env
            .true_span(id, Duration::from_millis(SUPERVISOR_POLL_MS));
        Rt::spawn(async move {
            while errors.load(Ordering::SeqCst) == 0 {
                Rt::sleep(poll).await;
                if kill.is_killed() {
                    return;
                }
            }
            let delay = cluster
                .rng
                .millis(SUPERVISOR_DELAY_MS_MIN, SUPERVISOR_DELAY_MS_MAX);
            Rt::sleep(cluster.options.env.true_span(id, delay)).await;
            if kill.is_killed() || !cluster.crash(id, CrashMode::DropUnsynced) {
                return;
            }
            cluster.supervisor_restarts.fetch_add(1, Ordering::SeqCst);
            Rt::sleep(Duration::from_millis(SUPERVISOR_DOWN_MS)).await;
            cluster.restart(id).await;
        });
    }

    /// Follows the metrics of `id`'s replica of volume `index` for as long
    /// as this incarnation runs.
    fn spawn_observer(self: &Arc<Self>, id: NodeId, index: usize, raft: Raft, kill: KillSwitch) {
        let cluster = Arc::clone(self);
        Rt::spawn(async move {
            let mut metrics = raft.metrics();
            drop(raft);
            loop {
                let (leading, term, applied) = {
                    let m = metrics.borrow_watched();
                    (
                        m.state == ServerState::Leader,
                        m.current_term,
                        m.last_applied,
                    )
                };
                let observer = &cluster.volumes[index].observer;
                if leading {
                    observer.leader(id, term);
                }
                if let Some(log_id) = applied {
                    let leader = log_id.leader_id;
                    observer.applied(id, leader, log_id.index, &cluster.violations);
                }
                match kill.guard(metrics.changed()).await {
                    Some(Ok(())) => {}
                    _ => break,
                }
            }
        });
    }
}
