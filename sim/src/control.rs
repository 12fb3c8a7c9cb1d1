//! The control plane on virtual time: one [`MemMetaStore`] per cluster
//! (the model of etcd), every node's view of it through a [`NodeStore`],
//! and the checks over what the nodes' registrations and coordinators do.
//!
//! Model:
//! - The store is fabric's in-memory model on the simulator's clock. An
//!   *outage* (fault kind "etcd outage") is its own switch
//!   ([`MemMetaStore::set_available`]): every call fails as unreachable,
//!   open watches end, and when it comes back every lease's TTL restarts
//!   (as an etcd restart does).
//! - A node reaches the store only through its [`NodeStore`], which fails
//!   every call as unreachable while the node is *cut off* from the store
//!   (fault kind "etcd cut": a partition between that node and etcd only;
//!   the node's Raft traffic is untouched) and ends the node's watches and
//!   campaigns when the cut begins.
//! - Each running node runs fabric's [`NodeRegistration`] (lease TTL
//!   [`LEASE_TTL`]) and, with `coordinators`, a [`Coordinator`] with its
//!   [`VolumeHost`](metro_fabric::host::VolumeHost) as the group admin.
//!   Both end with the incarnation (its kill switch); a crashed node's
//!   lease lapses on its own. The volume records are written at boot (the
//!   simulator creates the groups itself), so the elected coordinator
//!   publishes health; its repair delay is beyond any run unless the seed
//!   runs the repair workload (`repair.rs`), whose short delay lets it
//!   replace members (the checks read each group's voters as they are).
//! - Clock rate (see `options::EnvFaults`): fabric's registration and
//!   coordinator read time through the runtime's static clock, which the
//!   simulator cannot skew per node. What it can: a node whose clock runs
//!   slow sleeps longer between keep-alives, which [`NodeStore`] models by
//!   delaying each `keep_alive_once` by the renewal period's excess on that
//!   node's clock. A fast clock renews early, which only adds margin, and
//!   is not modelled; nor is a slow clock's late lapse detection (that
//!   needs fabric to read time through a seam).
//!
//! Checks (sampled every [`SAMPLE_MS`]):
//! - at most one coordinator believes it leads for longer than a
//!   coordinator lease TTL (plus [`SLACK_MS`]) at a time;
//! - a node that could not renew (down, or cut off, while the store was
//!   up; counted from the later of when that began and its last call that
//!   reached the store) for longer than [`LEASE_TTL`] + [`SLACK_MS`] is not registered in
//!   the store (the coordinator sees it down), and a running node cut off
//!   that long knows it is not registered;
//! - in the liveness phase, every running node registers again and one
//!   coordinator (if they run) leads.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_util::future::{Either, select};
use metro_fabric::control::{
    ClusterKeys, Coordinator, CoordinatorConfig, NodeInfo, NodeRegistration, RegistrationConfig,
};
use metro_fabric::env::NodeId;
use metro_fabric::meta::{
    Compare, ElectionStore, KeyValue, KvStore, Leadership, Lease, LeaseId, LeaseStore,
    MemMetaStore, MemWatch, MetaError, RangeResult, Result, Revision, TxnOp, TxnResult, WatchEvent,
    WatchStore, WatchStream, WriteResult,
};
use openraft::AsyncRuntime;
use parking_lot::Mutex;

use crate::Rt;
use crate::checker::Violations;

/// The registration and coordinator lease TTL of every node.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// Between two samples of the control-plane checks.
pub const SAMPLE_MS: u64 = 100;
/// Slack on every control-plane deadline (sampling, retry backoff).
pub const SLACK_MS: u64 = 2_500;
/// The cluster name of the store's keys.
pub const CLUSTER_NAME: &str = "sim";
/// The coordinators' repair delay without the repair workload: longer
/// than any run.
pub const REPAIR_DELAY: Duration = Duration::from_secs(24 * 3_600);

fn unreachable(reason: &str) -> MetaError {
    MetaError::Unreachable {
        reason: reason.to_owned(),
    }
}

/// Whether one node reaches the store, and who waits for that to change.
#[derive(Debug, Default)]
struct LinkState {
    cut: bool,
    /// Bumped when a cut begins: watches and campaigns opened before end.
    epoch: u64,
    wakers: Vec<Waker>,
}

/// One node's connection to the store.
#[derive(Debug)]
pub struct Link {
    node: NodeId,
    /// Extra delay before each keep-alive (a slow clock renews late).
    keep_alive_delay: Duration,
    state: Mutex<LinkState>,
    /// When a call of this node last reached the store (it may have
    /// granted or renewed a lease then), 0: never.
    last_ok_ns: AtomicU64,
}

impl Link {
    /// Cuts the node off the store (`true`) or reconnects it.
    pub fn set_cut(&self, cut: bool) {
        let mut state = self.state.lock();
        if state.cut == cut {
            return;
        }
        state.cut = cut;
        if cut {
            state.epoch += 1;
        }
        let wakers = std::mem::take(&mut state.wakers);
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
    }

    pub fn is_cut(&self) -> bool {
        self.state.lock().cut
    }

    /// Records that a call reached the store if `result` says so.
    fn note<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_ok() {
            self.last_ok_ns.store(crate::now_ns(), Ordering::SeqCst);
        }
        result
    }

    /// The current epoch, or unreachable while cut.
    fn check(&self) -> Result<u64> {
        let state = self.state.lock();
        match state.cut {
            true => Err(unreachable(&format!(
                "node {} cut off the store",
                self.node
            ))),
            false => Ok(state.epoch),
        }
    }

    /// Resolves once a cut begins after `epoch`.
    fn cut_after(&self, epoch: u64) -> impl Future<Output = ()> + Send + '_ {
        futures_util::future::poll_fn(move |cx| {
            let mut state = self.state.lock();
            if state.epoch != epoch {
                return Poll::Ready(());
            }
            if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                state.wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// One node's client of the store (see the module docs).
#[derive(Clone, Debug)]
pub struct NodeStore {
    inner: MemMetaStore<Rt>,
    link: Arc<Link>,
}

impl NodeStore {
    /// Runs a call that completes at once, failing it while cut off.
    fn call<T>(
        &self,
        f: impl Future<Output = Result<T>> + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        let checked = self.link.check();
        let link = Arc::clone(&self.link);
        async move {
            checked?;
            link.note(f.await)
        }
    }
}

/// A watch through a [`NodeStore`]: ends when its node is cut off.
#[derive(Debug)]
pub struct NodeWatch {
    inner: MemWatch<Rt>,
    link: Arc<Link>,
    epoch: u64,
    ended: bool,
}

impl WatchStream for NodeWatch {
    #[allow(clippy::manual_async_fn)] // reason: the trait requires the future to be Send
    fn next(&mut self) -> impl Future<Output = Result<WatchEvent>> + Send {
        async move {
            if self.ended {
                return Err(unreachable("watch ended by a cut"));
            }
            let link = Arc::clone(&self.link);
            let cut = pin!(link.cut_after(self.epoch));
            let next = pin!(self.inner.next());
            match select(next, cut).await {
                Either::Left((Ok(event), _)) => Ok(event),
                Either::Left((Err(error), _)) => {
                    self.ended = true;
                    Err(error)
                }
                Either::Right(_) => {
                    self.ended = true;
                    Err(unreachable("watch ended by a cut"))
                }
            }
        }
    }
}

impl KvStore for NodeStore {
    fn get(&self, key: &[u8]) -> impl Future<Output = Result<Option<KeyValue>>> + Send {
        self.call(self.inner.get(key))
    }

    fn range(&self, prefix: &[u8]) -> impl Future<Output = Result<RangeResult>> + Send {
        self.call(self.inner.range(prefix))
    }

    fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<WriteResult>> + Send {
        self.call(self.inner.put(key, value, lease))
    }

    fn delete(&self, key: &[u8]) -> impl Future<Output = Result<WriteResult>> + Send {
        self.call(self.inner.delete(key))
    }

    fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> impl Future<Output = Result<TxnResult>> + Send {
        self.call(self.inner.txn(compares, ops))
    }
}

impl LeaseStore for NodeStore {
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<Lease>> + Send {
        self.call(self.inner.grant(ttl))
    }

    fn keep_alive_once(&self, lease: LeaseId) -> impl Future<Output = Result<()>> + Send {
        let this = self.clone();
        async move {
            if !this.link.keep_alive_delay.is_zero() {
                Rt::sleep(this.link.keep_alive_delay).await;
            }
            this.link.check()?;
            this.link.note(this.inner.keep_alive_once(lease).await)
        }
    }

    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<()>> + Send {
        self.call(self.inner.revoke(lease))
    }
}

impl WatchStore for NodeStore {
    type Watch = NodeWatch;

    fn watch(
        &self,
        prefix: &[u8],
        start: Option<Revision>,
    ) -> impl Future<Output = Result<Self::Watch>> + Send {
        let this = self.clone();
        let prefix = prefix.to_vec();
        async move {
            let epoch = this.link.check()?;
            let inner = this.link.note(this.inner.watch(&prefix, start).await)?;
            Ok(NodeWatch {
                inner,
                link: this.link,
                epoch,
                ended: false,
            })
        }
    }
}

impl ElectionStore for NodeStore {
    fn campaign(
        &self,
        election: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> impl Future<Output = Result<Leadership>> + Send {
        let this = self.clone();
        let election = election.to_owned();
        let value = value.to_vec();
        async move {
            let epoch = this.link.check()?;
            let cut = pin!(this.link.cut_after(epoch));
            let campaign = pin!(this.inner.campaign(&election, &value, lease));
            match select(campaign, cut).await {
                Either::Left((won, _)) => this.link.note(won),
                Either::Right(_) => Err(unreachable("campaign ended by a cut")),
            }
        }
    }

    fn resign(&self, leadership: &Leadership) -> impl Future<Output = Result<()>> + Send {
        self.call(self.inner.resign(leadership))
    }

    fn leader(&self, election: &str) -> impl Future<Output = Result<Option<KeyValue>>> + Send {
        self.call(self.inner.leader(election))
    }
}

/// The group admin of a simulated node's coordinator: its volume host,
/// and the cluster's log of the repairs the groups carried out.
#[derive(Clone, Debug)]
pub struct HostAdmin {
    pub host: Arc<crate::node::Host>,
    pub repairs: Arc<RepairLog>,
}

/// The distinct repairs (volume, replacement) groups carried out: those a
/// coordinator saw answered done, and the members a group has at the end
/// that were not placed at boot (a repair whose answer no poll saw).
#[derive(Debug, Default)]
pub struct RepairLog(Mutex<std::collections::BTreeSet<(u64, NodeId)>>);

impl RepairLog {
    pub fn note(&self, volume: u64, replacement: NodeId) {
        self.0.lock().insert((volume, replacement));
    }

    pub fn count(&self) -> u64 {
        self.0.lock().len() as u64
    }
}

impl metro_fabric::control::GroupAdmin for HostAdmin {
    fn create_group(
        &self,
        spec: &metro_fabric::control::VolumeSpec,
        placement: &metro_fabric::control::Placement,
    ) -> impl Future<Output = std::result::Result<(), metro_fabric::control::AdminError>> + Send
    {
        self.host.create_group(spec, placement)
    }

    async fn replace_member(
        &self,
        spec: &metro_fabric::control::VolumeSpec,
        placement: &metro_fabric::control::Placement,
        dead: NodeId,
        replacement: NodeId,
    ) -> std::result::Result<(), metro_fabric::control::AdminError> {
        let done = self
            .host
            .replace_member(spec, placement, dead, replacement)
            .await;
        if done.is_ok() {
            self.repairs.note(spec.id, replacement);
        }
        done
    }

    fn in_sync(
        &self,
        spec: &metro_fabric::control::VolumeSpec,
        placement: &metro_fabric::control::Placement,
    ) -> impl Future<
        Output = std::result::Result<
            std::collections::BTreeSet<NodeId>,
            metro_fabric::control::AdminError,
        >,
    > + Send {
        self.host.in_sync(spec, placement)
    }
}

pub type SimRegistration = NodeRegistration<Rt, NodeStore>;
pub type SimCoordinator = Coordinator<Rt, NodeStore, HostAdmin>;

/// What one running incarnation runs against the store.
#[derive(Clone)]
pub struct NodeControl {
    pub registration: Arc<SimRegistration>,
    pub coordinator: Option<Arc<SimCoordinator>>,
}

impl std::fmt::Debug for NodeControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeControl").finish_non_exhaustive()
    }
}

/// Counters of the control-plane faults and checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlStats {
    pub outages: u64,
    pub cuts: u64,
    /// Outage windows in which writes were required to complete, and were.
    pub outage_windows_checked: u64,
    /// Longest time two coordinators believed they led at once, ms.
    pub dual_leading_ms_max: u64,
    /// Coordinator elections won, over all nodes (as last sampled).
    pub coordinator_terms: u64,
    /// Distinct member replacements the groups carried out for the
    /// coordinators.
    pub repairs: u64,
    /// Stale group changes sent (repair workload), and those refused.
    pub stale_changes: u64,
    pub stale_changes_refused: u64,
}

/// What the checks remember between samples.
#[derive(Debug, Default)]
struct Tracking {
    /// Since when two or more coordinators believe they lead.
    dual_since_ns: Option<u64>,
    dual_reported: bool,
    /// Per node: since when it has been unable to renew while the store
    /// was up.
    unable_since_ns: BTreeMap<NodeId, u64>,
    reported: BTreeMap<NodeId, u64>,
    stats: ControlStats,
}

/// The cluster's store and every node's link to it.
#[derive(Debug)]
pub struct ControlPlane {
    pub store: MemMetaStore<Rt>,
    pub keys: ClusterKeys,
    links: BTreeMap<NodeId, Arc<Link>>,
    tracking: Mutex<Tracking>,
    pub repairs: Arc<RepairLog>,
}

impl ControlPlane {
    /// A store with a link per node; `keep_alive_delay(id)` per node.
    pub fn new(nodes: &[NodeId], keep_alive_delay: impl Fn(NodeId) -> Duration) -> Self {
        let links = nodes
            .iter()
            .map(|id| {
                let link = Link {
                    node: *id,
                    keep_alive_delay: keep_alive_delay(*id),
                    state: Mutex::new(LinkState::default()),
                    last_ok_ns: AtomicU64::new(0),
                };
                (*id, Arc::new(link))
            })
            .collect();
        Self {
            store: MemMetaStore::new(),
            keys: ClusterKeys::new(CLUSTER_NAME),
            links,
            tracking: Mutex::new(Tracking::default()),
            repairs: Arc::default(),
        }
    }

    /// Node `id`'s client of the store.
    pub fn node_store(&self, id: NodeId) -> NodeStore {
        NodeStore {
            inner: self.store.clone(),
            link: Arc::clone(&self.links[&id]),
        }
    }

    /// Cuts `id` off the store, or reconnects it.
    pub fn set_cut(&self, id: NodeId, cut: bool) {
        if let Some(link) = self.links.get(&id) {
            link.set_cut(cut);
        }
        if cut {
            self.tracking.lock().stats.cuts += 1;
        }
    }

    pub fn is_cut(&self, id: NodeId) -> bool {
        self.links.get(&id).is_some_and(|l| l.is_cut())
    }

    /// The outage switch.
    pub fn set_available(&self, available: bool) {
        if !available && self.store.is_available() {
            self.tracking.lock().stats.outages += 1;
        }
        self.store.set_available(available);
    }

    /// Heals every control-plane fault.
    pub fn heal(&self) {
        self.store.set_available(true);
        for link in self.links.values() {
            link.set_cut(false);
        }
    }

    /// A stale group change was sent (`refused`: and answered refused).
    pub fn note_stale_change(&self, refused: bool) {
        let stats = &mut self.tracking.lock().stats;
        match refused {
            true => stats.stale_changes_refused += 1,
            false => stats.stale_changes += 1,
        }
    }

    pub fn note_outage_checked(&self) {
        self.tracking.lock().stats.outage_windows_checked += 1;
    }

    pub fn stats(&self) -> ControlStats {
        ControlStats {
            repairs: self.repairs.count(),
            ..self.tracking.lock().stats
        }
    }

    /// Starts what node `id` runs against the store: its registration and
    /// (if `coordinators`) its coordinator, as tasks that `spawn` guards.
    pub fn start_node(
        &self,
        id: NodeId,
        domain: String,
        host: &Arc<crate::node::Host>,
        coordinators: bool,
        repair_delay: Duration,
    ) -> NodeControl {
        let info = NodeInfo {
            id,
            domain,
            quic_addr: format!("sim:node-{id}"),
            nbd_addr: String::new(),
            admin_addr: String::new(),
            capacity_bytes: 0,
            version: String::new(),
        };
        let config = RegistrationConfig {
            ttl: LEASE_TTL,
            ..RegistrationConfig::default()
        };
        let registration = Arc::new(NodeRegistration::new(
            self.node_store(id),
            self.keys.clone(),
            info,
            config,
        ));
        let coordinator = coordinators.then(|| {
            let mut config = CoordinatorConfig::new(id);
            config.lease_ttl = LEASE_TTL;
            config.repair_delay = repair_delay;
            let admin = HostAdmin {
                host: Arc::clone(host),
                repairs: Arc::clone(&self.repairs),
            };
            Arc::new(Coordinator::new(
                self.node_store(id),
                admin,
                self.keys.clone(),
                config,
            ))
        });
        NodeControl {
            registration,
            coordinator,
        }
    }

    /// One sample of the checks at `now_ns`: `running` holds every running
    /// incarnation's control tasks.
    pub fn sample(
        &self,
        now_ns: u64,
        nodes: &[NodeId],
        running: &BTreeMap<NodeId, NodeControl>,
        violations: &Violations,
    ) {
        let slack_ns = SLACK_MS * 1_000_000;
        let ttl_ns = LEASE_TTL.as_nanos() as u64;
        // Coordinators that believe they lead.
        let leading: Vec<NodeId> = running
            .iter()
            .filter(|(_, c)| {
                c.coordinator
                    .as_ref()
                    .is_some_and(|c| c.leadership().is_some())
            })
            .map(|(id, _)| *id)
            .collect();
        let terms = running
            .values()
            .filter_map(|c| c.coordinator.as_ref())
            .map(|c| c.stats().terms)
            .sum::<u64>();
        self.store.tick();
        let available = self.store.is_available();
        let mut track = self.tracking.lock();
        track.stats.coordinator_terms = track.stats.coordinator_terms.max(terms);
        if leading.len() >= 2 {
            let since = *track.dual_since_ns.get_or_insert(now_ns);
            let for_ms = (now_ns - since) / 1_000_000;
            track.stats.dual_leading_ms_max = track.stats.dual_leading_ms_max.max(for_ms);
            if now_ns - since > ttl_ns + slack_ns && !track.dual_reported {
                track.dual_reported = true;
                violations.report_as(crate::checker::ViolationKind::Control, format!(
                    "control: coordinators {leading:?} all believe they lead, for {for_ms} ms (at {now_ns} ns)"
                ));
            }
        } else {
            track.dual_since_ns = None;
        }
        for id in nodes {
            let able = available && running.contains_key(id) && !self.is_cut(*id);
            if able || !available {
                track.unable_since_ns.remove(id);
                continue;
            }
            // A short incarnation between two samples may have granted a
            // lease: count from its last call that reached the store.
            let last_ok_ns = self
                .links
                .get(id)
                .map_or(0, |l| l.last_ok_ns.load(Ordering::SeqCst));
            let since = (*track.unable_since_ns.entry(*id).or_insert(now_ns)).max(last_ok_ns);
            if now_ns - since <= ttl_ns + slack_ns || track.reported.get(id) == Some(&since) {
                continue;
            }
            let key = self.keys.node(*id);
            let registered = self.stored(&key);
            let believes = running
                .get(id)
                .is_some_and(|c| c.registration.status().registered);
            if registered || believes {
                track.reported.insert(*id, since);
                let what = match registered {
                    true => "the store still holds its registration",
                    false => "it still believes it is registered",
                };
                violations.report_as(crate::checker::ViolationKind::Control, format!(
                    "control: node {id} could not renew since {since} ns, yet {what} (at {now_ns} ns)"
                ));
            }
        }
    }

    /// Whether the store holds `key` now (false during an outage).
    fn stored(&self, key: &str) -> bool {
        futures_util::FutureExt::now_or_never(KvStore::get(&self.store, key.as_bytes()))
            .and_then(|r| r.ok())
            .flatten()
            .is_some()
    }

    /// Whether every node of `nodes` is registered in the store and knows
    /// it, and (with coordinators) exactly one coordinator leads.
    pub fn settled(&self, nodes: &[NodeId], running: &BTreeMap<NodeId, NodeControl>) -> bool {
        let registered = nodes.iter().all(|id| {
            self.stored(&self.keys.node(*id))
                && running
                    .get(id)
                    .is_some_and(|c| c.registration.status().registered)
        });
        let coordinators: Vec<&Arc<SimCoordinator>> = running
            .values()
            .filter_map(|c| c.coordinator.as_ref())
            .collect();
        let leaders = coordinators
            .iter()
            .filter(|c| c.leadership().is_some())
            .count();
        registered && (coordinators.is_empty() || leaders == 1)
    }
}
