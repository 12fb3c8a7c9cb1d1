//! [`Coordinator`]: the one node at a time that turns the desired state into
//! actual groups.
//!
//! Model: every node runs a `Coordinator`; each campaigns in the election
//! at [`ClusterKeys::coordinator`] under a lease of its own (renewed every
//! TTL / [`KEEP_ALIVES_PER_TTL`]). The winner runs a round every
//! [`CoordinatorConfig::interval`]:
//! 1. checks its leadership (a fenced no-op transaction);
//! 2. loads a [`ClusterView`] (nodes, domains, volumes, published statuses)
//!    and tracks since when each placed node has been unregistered, on the
//!    runtime's clock, counted from when *this* leadership first saw it
//!    missing (a failover restarts the repair delay: never early);
//! 3. places unplaced volumes ([`place`]) and records each placement with a
//!    transaction guarded by the record's mod revision *and* the leadership
//!    fence, then asks [`GroupAdmin::create_group`] to create the group
//!    (retried every round until it succeeds: the status record says whether
//!    it has; health is published once it has);
//! 4. plans repairs ([`plan_repairs`], after [`CoordinatorConfig::repair_delay`])
//!    and carries them out one at a time through
//!    [`GroupAdmin::replace_member`], recording each new placement with the
//!    same guarded write (a change is fenced on the recorded voters);
//!    when the group answers [`AdminError::Diverged`] (to a repair or a
//!    health check) with the placement's voters but one member swapped for
//!    a live node of its domain, an earlier coordinator made that repair
//!    and lost its record: it is recorded as made ([`adoptable`]);
//! 5. publishes each volume's health under `/metro/<cluster>/status/<volume>`
//!    ([`VolumeStatusRecord`], see [`crate::control::store`]) when it changed.
//!
//! Contracts:
//! - **Fenced.** Every write carries the leadership fence; a coordinator
//!   whose leadership ended changes nothing in the store. Before every
//!   [`GroupAdmin`] call it re-checks the fence.
//! - **Stops within a lease period.** It stops acting (the round future is
//!   dropped) when a write fails the fence, when the store says its lease is
//!   gone, or when no keep-alive succeeded for TTL - TTL /
//!   [`KEEP_ALIVES_PER_TTL`] (the lease may be lapsing unseen); then it
//!   campaigns again (resuming with the same lease if it is still alive).
//! - **Conflicts.** A guarded write that finds the record changed is counted
//!   ([`CoordinatorStats::cas_conflicts`]) and dropped; the next round
//!   re-reads and decides again.
//! - **Store outages.** A round that finds the store unreachable is skipped
//!   (counted in [`CoordinatorStats::unreachable`]); placement and repair
//!   resume with the store.
//! - **Domains.** Inactive domains (see [`crate::control::set_domain_state`])
//!   get no new replicas, their members are not repaired, and health counts
//!   them unhealthy — all by the pure functions in this module's siblings.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::rt::Select2;
use openraft::{AsyncRuntime, Instant as _};
use parking_lot::Mutex;

use crate::backoff::Backoff;
use crate::control::admin::{AdminError, GroupAdmin};
use crate::control::health::{Health, volume_health};
use crate::control::keys::ClusterKeys;
use crate::control::placement::place;
use crate::control::repair::{RepairAction, adoptable, plan_repairs};
use crate::control::state::{ClusterView, Placement, VolumeRecord};
use crate::control::store::{
    CasOutcome, LoadedView, VolumeStatusRecord, load_view, status_key, still_leader, write_status,
    write_volume,
};
use crate::env::NodeId;
use crate::limits::{
    COORDINATOR_INTERVAL_MS, COORDINATOR_LEASE_TTL_MS, KEEP_ALIVES_PER_TTL, REPAIR_DELAY_MS,
    STORE_RETRY_MAX_MS, STORE_RETRY_MIN_MS,
};
use crate::meta::{Leadership, Lease, MetaError, MetaStore, TxnOp};

/// Coordinator settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// This node (the election value, and the author of statuses).
    pub node: NodeId,
    pub lease_ttl: Duration,
    pub interval: Duration,
    pub repair_delay: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl CoordinatorConfig {
    /// The defaults for `node`.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            lease_ttl: Duration::from_millis(COORDINATOR_LEASE_TTL_MS),
            interval: Duration::from_millis(COORDINATOR_INTERVAL_MS),
            repair_delay: Duration::from_millis(REPAIR_DELAY_MS),
            retry_min: Duration::from_millis(STORE_RETRY_MIN_MS),
            retry_max: Duration::from_millis(STORE_RETRY_MAX_MS),
        }
    }
}

/// Counters of what the coordinator did (for tests, metrics and status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    /// Whether it leads now.
    pub leading: bool,
    /// Elections won.
    pub terms: u64,
    /// Leaderships that ended (fence failed, lease lost or lapsing).
    pub terms_ended: u64,
    /// Rounds completed while leading.
    pub rounds: u64,
    pub placements: u64,
    /// Volumes that could not be placed (kept pending, retried).
    pub placement_errors: u64,
    pub groups_created: u64,
    pub repairs: u64,
    /// Rounds that found a repair still running on the group's leader.
    pub repairs_polled: u64,
    /// Repairs found already made in the group (by an earlier coordinator
    /// whose record write was lost) and recorded as they were.
    pub repairs_adopted: u64,
    /// Groups found with voters that are no repair of their placement.
    pub diverged: u64,
    /// Guarded writes that found the record changed since it was read.
    pub cas_conflicts: u64,
    /// Writes or checks refused by the leadership fence.
    pub fence_failures: u64,
    /// Rounds (and lease calls) that found the store unreachable.
    pub unreachable: u64,
    /// Failed [`GroupAdmin`] calls.
    pub admin_errors: u64,
    /// Status records written.
    pub statuses_written: u64,
    pub last_error: Option<String>,
}

/// How a leadership ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The store says the lease is gone: grant a new one.
    LeaseLost,
    /// No keep-alive succeeded for too long: the lease may be lapsing.
    Lapsing,
    /// The fence failed: someone else leads (or will).
    Deposed,
}

/// Whether a round may go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Deposed,
}

type Step = Result<Flow, MetaError>;

/// Placed nodes without a registration, since when (ms on the coordinator's
/// clock).
#[derive(Debug, Default)]
struct DownTracker {
    since_ms: BTreeMap<NodeId, u64>,
}

impl DownTracker {
    fn update(&mut self, view: &mut ClusterView, now_ms: u64) {
        let placed: BTreeSet<NodeId> = view
            .volumes
            .values()
            .filter_map(|v| v.placement.as_ref())
            .flat_map(Placement::nodes)
            .collect();
        for node in &placed {
            if !view.nodes.contains_key(node) {
                self.since_ms.entry(*node).or_insert(now_ms);
            }
        }
        self.since_ms
            .retain(|node, _| placed.contains(node) && !view.nodes.contains_key(node));
        view.down_since_ms = self.since_ms.clone();
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The cluster's coordinator candidate on one node (see the module docs).
pub struct Coordinator<RT: AsyncRuntime, M: MetaStore, A: GroupAdmin> {
    membership: M,
    admin: A,
    keys: ClusterKeys,
    config: CoordinatorConfig,
    epoch: RT::Instant,
    stats: Mutex<CoordinatorStats>,
    leadership: Mutex<Option<Leadership>>,
}

impl<RT: AsyncRuntime, M: MetaStore, A: GroupAdmin> std::fmt::Debug for Coordinator<RT, M, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("keys", &self.keys)
            .field("config", &self.config)
            .field("stats", &*self.stats.lock())
            .finish_non_exhaustive()
    }
}

impl<RT: AsyncRuntime, M: MetaStore, A: GroupAdmin> Coordinator<RT, M, A> {
    pub fn new(membership: M, admin: A, keys: ClusterKeys, config: CoordinatorConfig) -> Self {
        Self {
            membership,
            admin,
            keys,
            config,
            epoch: RT::Instant::now(),
            stats: Mutex::new(CoordinatorStats::default()),
            leadership: Mutex::new(None),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> CoordinatorStats {
        self.stats.lock().clone()
    }

    /// The leadership held now, if any.
    pub fn leadership(&self) -> Option<Leadership> {
        self.leadership.lock().clone()
    }

    /// The group admin (tests inspect their fakes through it).
    pub fn admin(&self) -> &A {
        &self.admin
    }

    fn count(&self, change: impl FnOnce(&mut CoordinatorStats)) {
        change(&mut self.stats.lock());
    }

    fn note_error(&self, error: &dyn std::fmt::Display) {
        let text = error.to_string();
        self.count(|s| s.last_error = Some(text));
    }

    fn now_ms(&self) -> u64 {
        millis(RT::Instant::now() - self.epoch)
    }

    /// A store-retry backoff seeded by this node and `purpose`, so that
    /// coordinators (and one coordinator's loops) never retry in lockstep.
    fn backoff(&self, purpose: u64) -> Backoff {
        let seed = self.config.node.rotate_left(16) ^ purpose;
        Backoff::new(self.config.retry_min, self.config.retry_max, seed)
    }

    /// Campaigns, leads while elected, campaigns again; never returns.
    pub async fn run(&self) {
        let mut lease = None;
        loop {
            let current = self.obtain_lease(lease).await;
            let ended =
                match RT::select2(self.keep_leased(current), self.campaign_and_lead(current)).await
                {
                    Select2::First(end) | Select2::Second(end) => end,
                };
            let was_leading = self.leadership.lock().take().is_some();
            self.count(|s| {
                s.leading = false;
                s.terms_ended += u64::from(was_leading);
            });
            lease = match ended {
                End::LeaseLost => None,
                End::Lapsing | End::Deposed => Some(current),
            };
            RT::sleep(self.config.retry_min).await;
        }
    }

    /// `previous` if the store still knows it, else a new lease; retries
    /// while the store is unreachable.
    async fn obtain_lease(&self, mut previous: Option<Lease>) -> Lease {
        let mut backoff = self.backoff(1);
        loop {
            let attempt = match previous {
                Some(lease) => self
                    .membership
                    .keep_alive_once(lease.id)
                    .await
                    .map(|()| lease),
                None => self.membership.grant(self.config.lease_ttl).await,
            };
            match attempt {
                Ok(lease) => return lease,
                Err(MetaError::LeaseNotFound { .. }) => previous = None,
                Err(error) => {
                    self.count(|s| s.unreachable += u64::from(error.is_unreachable()));
                    self.note_error(&error);
                    backoff.wait::<RT>().await;
                }
            }
        }
    }

    /// Renews `lease` until the store says it is gone or renewals have
    /// failed for too long.
    async fn keep_leased(&self, lease: Lease) -> End {
        let every = lease.ttl / KEEP_ALIVES_PER_TTL;
        let lapse_after = lease.ttl - every;
        let mut last_ok = RT::Instant::now();
        let mut wait = every;
        let mut backoff = self.backoff(2);
        loop {
            RT::sleep(wait).await;
            let sent = RT::Instant::now();
            match self.membership.keep_alive_once(lease.id).await {
                Ok(()) => {
                    last_ok = sent;
                    wait = every;
                    backoff.reset();
                }
                Err(MetaError::LeaseNotFound { .. }) => return End::LeaseLost,
                Err(error) => {
                    self.count(|s| s.unreachable += u64::from(error.is_unreachable()));
                    if RT::Instant::now() - last_ok >= lapse_after {
                        return End::Lapsing;
                    }
                    wait = backoff.next_delay().min(every);
                }
            }
        }
    }

    /// Waits to be elected under `lease`, then leads until deposed.
    async fn campaign_and_lead(&self, lease: Lease) -> End {
        let election = self.keys.coordinator();
        let value = self.config.node.to_string();
        let mut backoff = self.backoff(3);
        let leadership = loop {
            match self
                .membership
                .campaign(&election, value.as_bytes(), lease.id)
                .await
            {
                Ok(leadership) => break leadership,
                Err(MetaError::LeaseNotFound { .. }) => return End::LeaseLost,
                Err(error) => {
                    self.count(|s| s.unreachable += u64::from(error.is_unreachable()));
                    self.note_error(&error);
                    backoff.wait::<RT>().await;
                }
            }
        };
        *self.leadership.lock() = Some(leadership.clone());
        self.count(|s| {
            s.leading = true;
            s.terms += 1;
        });
        self.lead(&leadership).await
    }

    /// Runs rounds until the fence fails.
    async fn lead(&self, leadership: &Leadership) -> End {
        let mut down = DownTracker::default();
        loop {
            match self.round(leadership, &mut down).await {
                Ok(Flow::Continue) => self.count(|s| s.rounds += 1),
                Ok(Flow::Deposed) => {
                    self.count(|s| s.fence_failures += 1);
                    return End::Deposed;
                }
                Err(error) => {
                    self.count(|s| s.unreachable += u64::from(error.is_unreachable()));
                    self.note_error(&error);
                }
            }
            RT::sleep(self.config.interval).await;
        }
    }

    /// One round (see the module docs).
    async fn round(&self, leadership: &Leadership, down: &mut DownTracker) -> Step {
        assert!(
            self.leadership.lock().is_some(),
            "the coordinator acts only while leading"
        );
        if !still_leader(&self.membership, leadership).await? {
            return Ok(Flow::Deposed);
        }
        let mut loaded = load_view(&self.membership, &self.keys).await?;
        let now_ms = self.now_ms();
        down.update(&mut loaded.view, now_ms);
        if self.place_all(leadership, &mut loaded).await? == Flow::Deposed
            || self.ensure_groups(leadership, &mut loaded).await? == Flow::Deposed
            || self.repair_all(leadership, &mut loaded, now_ms).await? == Flow::Deposed
        {
            return Ok(Flow::Deposed);
        }
        self.publish_health(leadership, &mut loaded).await
    }

    /// The status record of `name` as loaded, or a fresh pending one.
    fn status_of(&self, loaded: &LoadedView, name: &str) -> VolumeStatusRecord {
        loaded
            .statuses
            .get(name)
            .cloned()
            .unwrap_or(VolumeStatusRecord {
                group_created: false,
                health: Health::Pending,
                coordinator: self.config.node,
                error: None,
            })
    }

    /// Publishes `status` for `name` unless it is what was loaded.
    async fn publish(
        &self,
        leadership: &Leadership,
        loaded: &mut LoadedView,
        name: &str,
        mut status: VolumeStatusRecord,
    ) -> Step {
        status.coordinator = self.config.node;
        if loaded.statuses.get(name) == Some(&status) {
            return Ok(Flow::Continue);
        }
        match write_status(&self.membership, &self.keys, leadership, name, &status).await? {
            CasOutcome::Written(_) => {
                self.count(|s| s.statuses_written += 1);
                loaded.statuses.insert(name.to_owned(), status);
                Ok(Flow::Continue)
            }
            CasOutcome::Conflict | CasOutcome::Deposed => Ok(Flow::Deposed),
        }
    }

    /// Records `record` (and `status`) with the guarded write; updates
    /// `loaded` on success, drops the volume from it on a conflict.
    async fn record_volume(
        &self,
        leadership: &Leadership,
        loaded: &mut LoadedView,
        record: VolumeRecord,
        status: VolumeStatusRecord,
    ) -> Step {
        let name = record.spec.name.clone();
        let revision = loaded.volume_revisions.get(&name).copied().unwrap_or(0);
        let outcome = write_volume(
            &self.membership,
            &self.keys,
            leadership,
            revision,
            &record,
            Some(&status),
        );
        match outcome.await? {
            CasOutcome::Written(revision) => {
                loaded.volume_revisions.insert(name.clone(), revision);
                loaded.view.volumes.insert(name.clone(), record);
                loaded.statuses.insert(name, status);
                Ok(Flow::Continue)
            }
            CasOutcome::Conflict => {
                self.count(|s| s.cas_conflicts += 1);
                loaded.view.volumes.remove(&name);
                Ok(Flow::Continue)
            }
            CasOutcome::Deposed => Ok(Flow::Deposed),
        }
    }

    /// Places every unplaced volume it can.
    async fn place_all(&self, leadership: &Leadership, loaded: &mut LoadedView) -> Step {
        let unplaced: Vec<VolumeRecord> = loaded
            .view
            .volumes
            .values()
            .filter(|v| v.placement.is_none())
            .cloned()
            .collect();
        for mut record in unplaced {
            let name = record.spec.name.clone();
            let mut status = self.status_of(loaded, &name);
            match place(&record.spec, &loaded.view) {
                Err(error) => {
                    self.count(|s| s.placement_errors += 1);
                    status.error = Some(error.to_string());
                    if self.publish(leadership, loaded, &name, status).await? == Flow::Deposed {
                        return Ok(Flow::Deposed);
                    }
                }
                Ok(placement) => {
                    record.placement = Some(placement);
                    status.group_created = false;
                    status.error = None;
                    if self
                        .record_volume(leadership, loaded, record, status)
                        .await?
                        == Flow::Deposed
                    {
                        return Ok(Flow::Deposed);
                    }
                    self.count(|s| {
                        s.placements += u64::from(loaded.view.volumes.contains_key(&name))
                    });
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Asks the group admin to create every placed group not yet created.
    async fn ensure_groups(&self, leadership: &Leadership, loaded: &mut LoadedView) -> Step {
        let pending: Vec<VolumeRecord> = loaded
            .view
            .volumes
            .values()
            .filter(|v| v.placement.is_some())
            .filter(|v| {
                !loaded
                    .statuses
                    .get(&v.spec.name)
                    .is_some_and(|s| s.group_created)
            })
            .cloned()
            .collect();
        for record in pending {
            let Some(placement) = &record.placement else {
                continue;
            };
            if !still_leader(&self.membership, leadership).await? {
                return Ok(Flow::Deposed);
            }
            let name = &record.spec.name;
            let mut status = self.status_of(loaded, name);
            match self.admin.create_group(&record.spec, placement).await {
                Ok(()) => {
                    self.count(|s| s.groups_created += 1);
                    status.group_created = true;
                    status.error = None;
                }
                Err(error) => {
                    self.count(|s| s.admin_errors += 1);
                    status.error = Some(error.to_string());
                }
            }
            if self.publish(leadership, loaded, name, status).await? == Flow::Deposed {
                return Ok(Flow::Deposed);
            }
        }
        Ok(Flow::Continue)
    }

    /// Carries out the repairs due now, one at a time.
    async fn repair_all(
        &self,
        leadership: &Leadership,
        loaded: &mut LoadedView,
        now_ms: u64,
    ) -> Step {
        let delay_ms = millis(self.config.repair_delay);
        for action in plan_repairs(&loaded.view, now_ms, delay_ms) {
            if self.repair(leadership, loaded, &action).await? == Flow::Deposed {
                return Ok(Flow::Deposed);
            }
        }
        Ok(Flow::Continue)
    }

    /// Replaces one member: the group first, then the recorded placement.
    async fn repair(
        &self,
        leadership: &Leadership,
        loaded: &mut LoadedView,
        action: &RepairAction,
    ) -> Step {
        let Some(mut record) = loaded.view.volumes.get(&action.volume).cloned() else {
            return Ok(Flow::Continue);
        };
        let Some(placement) = record.placement.clone() else {
            return Ok(Flow::Continue);
        };
        if !still_leader(&self.membership, leadership).await? {
            return Ok(Flow::Deposed);
        }
        assert!(
            placement.contains(action.dead.node) && !placement.contains(action.replacement),
            "a repair swaps a member of the placement for a node outside it"
        );
        let mut status = self.status_of(loaded, &action.volume);
        let replaced = self
            .admin
            .replace_member(
                &record.spec,
                &placement,
                action.dead.node,
                action.replacement,
            )
            .await;
        match replaced {
            Ok(()) => {}
            Err(AdminError::InProgress { .. }) => {
                // A job on the group's leader: asked again next round.
                self.count(|s| s.repairs_polled += 1);
                return Ok(Flow::Continue);
            }
            Err(AdminError::Diverged { voters, .. }) => {
                return self
                    .adopt(leadership, loaded, record, status, &voters)
                    .await;
            }
            Err(error) => {
                self.count(|s| s.admin_errors += 1);
                status.error = Some(error.to_string());
                return self
                    .publish(leadership, loaded, &action.volume, status)
                    .await;
            }
        }
        record.placement = Some(placement.replaced(action.dead.node, action.replacement));
        status.error = None;
        let flow = self
            .record_volume(leadership, loaded, record, status)
            .await?;
        let recorded = loaded.view.volumes.contains_key(&action.volume);
        self.count(|s| s.repairs += u64::from(flow == Flow::Continue && recorded));
        Ok(flow)
    }

    /// Records the group's `voters` as `record`'s placement when they are
    /// the placement with one member swapped for a live node of its domain
    /// (a repair made in the group whose record was lost, see
    /// [`adoptable`]); otherwise says in the status that they differ.
    async fn adopt(
        &self,
        leadership: &Leadership,
        loaded: &mut LoadedView,
        mut record: VolumeRecord,
        mut status: VolumeStatusRecord,
        voters: &BTreeSet<NodeId>,
    ) -> Step {
        let Some(placement) = record.placement.clone() else {
            return Ok(Flow::Continue);
        };
        let dead = placement.members.iter().find(|m| !voters.contains(&m.node));
        let adopted =
            dead.and_then(|d| adoptable(&loaded.view, &placement, d, voters).map(|r| (d.node, r)));
        let name = record.spec.name.clone();
        let Some((dead, replacement)) = adopted else {
            self.count(|s| s.diverged += 1);
            status.error = Some(format!(
                "group voters {voters:?} differ from the placement and are no repair of it"
            ));
            return self.publish(leadership, loaded, &name, status).await;
        };
        record.placement = Some(placement.replaced(dead, replacement));
        status.error = None;
        let flow = self
            .record_volume(leadership, loaded, record, status)
            .await?;
        let recorded = loaded.view.volumes.contains_key(&name);
        self.count(|s| s.repairs_adopted += u64::from(flow == Flow::Continue && recorded));
        Ok(flow)
    }

    /// Publishes every placed volume's health; deletes statuses of volumes
    /// that no longer exist.
    async fn publish_health(&self, leadership: &Leadership, loaded: &mut LoadedView) -> Step {
        let placed: Vec<VolumeRecord> = loaded
            .view
            .volumes
            .values()
            .filter(|v| v.placement.is_some())
            .filter(|v| {
                loaded
                    .statuses
                    .get(&v.spec.name)
                    .is_some_and(|s| s.group_created)
            })
            .cloned()
            .collect();
        for record in placed {
            let Some(placement) = &record.placement else {
                continue;
            };
            let mut status = self.status_of(loaded, &record.spec.name);
            match self.admin.in_sync(&record.spec, placement).await {
                Ok(in_sync) => {
                    status.health = volume_health(&record, &loaded.view, &in_sync);
                    status.error = None;
                }
                Err(AdminError::Diverged { voters, .. }) => {
                    let flow = self
                        .adopt(leadership, loaded, record.clone(), status, &voters)
                        .await?;
                    if flow == Flow::Deposed {
                        return Ok(flow);
                    }
                    continue;
                }
                Err(error) => {
                    // Unknown is not unavailable: keep the last health.
                    self.count(|s| s.admin_errors += 1);
                    status.error = Some(format!("health unknown: {error}"));
                }
            }
            if self
                .publish(leadership, loaded, &record.spec.name, status)
                .await?
                == Flow::Deposed
            {
                return Ok(Flow::Deposed);
            }
        }
        self.forget_deleted(leadership, loaded).await
    }

    /// Deletes the status records of volumes that are gone.
    async fn forget_deleted(&self, leadership: &Leadership, loaded: &LoadedView) -> Step {
        let gone = loaded
            .statuses
            .keys()
            .filter(|name| !loaded.volume_revisions.contains_key(*name));
        let ops: Vec<TxnOp> = gone
            .map(|name| TxnOp::Delete {
                key: status_key(&self.keys, name).into_bytes(),
            })
            .take(crate::limits::TXN_OPS_MAX)
            .collect();
        if ops.is_empty() {
            return Ok(Flow::Continue);
        }
        let result = self.membership.txn(vec![leadership.fence()], ops).await?;
        Ok(if result.succeeded {
            Flow::Continue
        } else {
            Flow::Deposed
        })
    }
}
