//! Fenced group changes: `replace_member` as the group's leader runs it.
//!
//! Contract: a change is applied only to the membership it was computed
//! from. The caller (a coordinator, possibly deposed, possibly re-issuing
//! a repair it started rounds ago) sends the voter set it believes the
//! group has (`placement`); the leader compares it with its effective
//! membership and
//! - applies the replacement when they are equal, every step guarded by
//!   openraft's [`Precondition::LastMembershipLogId`] (a compare-and-set in
//!   the Raft core on the membership it checked, so a change made in
//!   between is refused, not overwritten);
//! - answers `Ok` without changing anything when the voters already are
//!   the placement with `dead` swapped for `replacement` (the change was
//!   made by an earlier call whose answer or record was lost: idempotent);
//! - otherwise refuses with [`AdminError::Diverged`], carrying the group's
//!   voters, so the coordinator can adopt a repair an earlier coordinator
//!   finished in the group but never recorded.
//!
//! Jobs: the replacement runs on the leader as a job of its own (at most
//! one per group), so no caller waits minutes on a catch-up: the call that
//! starts it, and every call while it runs, answers
//! [`AdminError::InProgress`]; once it is done the next call finds the
//! change made (`Ok`); if it failed, the next call gets why
//! ([`AdminError::Retry`]) and the one after starts it again.
//!
//! Steps: open an uninitialized replica on `replacement`, add it as a
//! learner (fenced), wait until its matched index is within
//! [`IN_SYNC_LAG_ENTRIES_MAX`] of the leader's last index (bounded by
//! [`CATCH_UP_TIMEOUT_MS`]), replace the voters (fenced, `retain = false`:
//! `dead` leaves the group), then remove every learner outside the new
//! voter set (left by repairs that failed before promoting theirs).
//!
//! Orphans: a learner outside the voters that this leader has seen for
//! [`HostConfig::orphan_grace_ms`](super::HostConfig::orphan_grace_ms)
//! (left by a repair that failed after adding it) is removed, fenced like
//! every change, when the coordinator's health check reaches the leader
//! ([`VolumeHost::collect_orphans`]); a running repair's learner is younger
//! than the grace.
//!
//! A planted bug for the simulator ([`VolumeHost::plant_unfenced_membership`])
//! skips the comparison and the preconditions: the leader applies a stale
//! change as an unfenced implementation would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::rt::WatchReceiver as _;
use openraft::{AsyncRuntime, ChangeMembers, Instant as _, Precondition, RaftMetrics};

use super::VolumeHost;
use super::admin_impl::{admin_error, size_blocks};
use crate::control::{AdminError, Placement, VolumeSpec, voters_after_replace};
use crate::env::{NodeId, Transport};
use crate::limits::{
    CATCH_UP_TIMEOUT_MS, IN_SYNC_LAG_ENTRIES_MAX, MEMBERSHIP_CHANGE_TIMEOUT_MS,
    REPLACE_MEMBER_TIMEOUT_MS,
};
use crate::raft::types::{LogId, RaftNode, TypeConfig};
use crate::volume::VolumeId;

type Raft<RT> = crate::raft::types::VolumeRaft<RT, super::volume_host::HostStateMachine<RT>>;

/// A group's effective membership as its leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Effective {
    /// The log id of the membership entry (`None`: none appended yet).
    pub log_id: Option<LogId>,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// In joint consensus (a change between its two steps).
    pub joint: bool,
    /// The voters the (last) change is heading for: its second
    /// configuration when joint, else the voters.
    pub target: BTreeSet<NodeId>,
}

impl Effective {
    pub(crate) fn of<RT: AsyncRuntime>(metrics: &RaftMetrics<TypeConfig<RT>>) -> Self {
        let stored = &metrics.membership_config;
        Self {
            log_id: *stored.log_id(),
            voters: stored.voter_ids().collect(),
            learners: stored.membership().learner_ids().collect(),
            joint: stored.get_joint_config().len() > 1,
            target: stored
                .get_joint_config()
                .last()
                .cloned()
                .unwrap_or_default(),
        }
    }
}

/// Whether `matched` trails `last` by at most [`IN_SYNC_LAG_ENTRIES_MAX`]:
/// the one rule for "in sync" (health) and "caught up" (repair).
pub(crate) fn lag_within(matched: Option<u64>, last: Option<u64>) -> bool {
    match (matched, last) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(matched), Some(last)) => last.saturating_sub(matched) <= IN_SYNC_LAG_ENTRIES_MAX,
    }
}

fn retry(spec: &VolumeSpec, reason: impl std::fmt::Display) -> AdminError {
    AdminError::Retry {
        volume: spec.name.clone(),
        reason: reason.to_string(),
    }
}

fn in_progress(spec: &VolumeSpec, dead: NodeId, replacement: NodeId) -> AdminError {
    AdminError::InProgress {
        volume: spec.name.clone(),
        what: format!("replacing node {dead} by node {replacement}"),
    }
}

/// A replacement job of one group (at most one per group at a time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Job {
    Running {
        dead: NodeId,
        replacement: NodeId,
    },
    /// Ended without the change; told to the next poll, then forgotten.
    Failed(String),
}

fn diverged(spec: &VolumeSpec, voters: &BTreeSet<NodeId>) -> AdminError {
    AdminError::Diverged {
        volume: spec.name.clone(),
        voters: voters.clone(),
    }
}

fn change_error<RT: AsyncRuntime>(
    spec: &VolumeSpec,
    step: &str,
    error: RaftError<TypeConfig<RT>, ClientWriteError<TypeConfig<RT>>>,
) -> AdminError {
    match error {
        RaftError::APIError(ClientWriteError::PreconditionFailed(failed)) => retry(
            spec,
            format!("{step}: the membership changed meanwhile ({failed})"),
        ),
        other => retry(spec, format!("{step}: {other}")),
    }
}

impl<RT: AsyncRuntime, T: Transport> VolumeHost<RT, T> {
    /// The planted bug: this host's leaders apply group changes without
    /// comparing the caller's voters or guarding the steps.
    pub fn plant_unfenced_membership(&self) {
        self.unfenced_planted.store(true, Ordering::Release);
    }

    fn fenced(&self) -> bool {
        !self.unfenced_planted.load(Ordering::Acquire)
    }

    /// `replace_member` on this node, which must lead the group (see the
    /// module contract): answers at once; the replacement itself runs as a
    /// job ([`Self::run_replacement`]) that the caller polls by calling
    /// again with the same arguments.
    pub(crate) async fn replace_member_here(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
        dead: NodeId,
        replacement: NodeId,
    ) -> Result<(), AdminError> {
        let raft = self.local_leader(spec)?;
        let expected: BTreeSet<NodeId> = placement.nodes().collect();
        let after = voters_after_replace(placement, dead, replacement);
        assert!(
            expected.contains(&dead) && !expected.contains(&replacement),
            "a replacement swaps a member for a node outside the group"
        );
        let now = Effective::of::<RT>(&raft.metrics().borrow_watched());
        let volume = VolumeId(spec.id);
        let job = self.replacements.lock().remove(&volume);
        match job {
            Some(Job::Running { dead, replacement }) => {
                self.replacements
                    .lock()
                    .insert(volume, Job::Running { dead, replacement });
                return Err(in_progress(spec, dead, replacement));
            }
            Some(Job::Failed(reason)) if now.voters != after => return Err(retry(spec, reason)),
            _ => {}
        }
        if now.joint {
            return self.complete_joint(spec, &raft, &now).await;
        }
        if now.voters == after {
            return self.drop_learners(spec, &raft, &after).await;
        }
        if now.voters != expected && self.fenced() {
            return Err(diverged(spec, &now.voters));
        }
        self.start_replacement(spec, placement, dead, replacement);
        Err(in_progress(spec, dead, replacement))
    }

    /// Whether a replacement job of `volume` runs here.
    pub(crate) fn replacing(&self, volume: VolumeId) -> bool {
        matches!(
            self.replacements.lock().get(&volume),
            Some(Job::Running { .. })
        )
    }

    /// Starts the job that replaces `dead` by `replacement`, bounded by
    /// [`REPLACE_MEMBER_TIMEOUT_MS`]; its outcome waits for the next poll.
    fn start_replacement(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
        dead: NodeId,
        replacement: NodeId,
    ) {
        let Some(host) = self.me.upgrade() else {
            return;
        };
        let volume = VolumeId(spec.id);
        self.replacements
            .lock()
            .insert(volume, Job::Running { dead, replacement });
        let (spec, placement) = (spec.clone(), placement.clone());
        drop(RT::spawn(async move {
            let bound = Duration::from_millis(REPLACE_MEMBER_TIMEOUT_MS);
            let job = host.run_replacement(&spec, &placement, dead, replacement);
            let failed = match RT::timeout(bound, job).await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some(format!("the replacement ran past {bound:?}")),
            };
            let mut jobs = host.replacements.lock();
            match failed {
                Some(reason) => jobs.insert(volume, Job::Failed(reason)),
                None => jobs.remove(&volume),
            };
        }));
    }

    /// The replacement job: open the replacement, add it as a learner,
    /// catch it up, promote it (see the module contract).
    async fn run_replacement(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
        dead: NodeId,
        replacement: NodeId,
    ) -> Result<(), AdminError> {
        let raft = self.local_leader(spec)?;
        let expected: BTreeSet<NodeId> = placement.nodes().collect();
        let after = voters_after_replace(placement, dead, replacement);
        self.open_on(replacement, VolumeId(spec.id), size_blocks(spec), &[])
            .await
            .map_err(|error| admin_error(spec, error))?;
        let now = Effective::of::<RT>(&raft.metrics().borrow_watched());
        if self.fenced() && (now.joint || now.voters != expected) {
            return Err(diverged(spec, &now.voters));
        }
        if !now.learners.contains(&replacement) {
            let node = BTreeMap::from([(replacement, super::volume_host::member(replacement))]);
            let add = ChangeMembers::AddNodes(node);
            self.change(spec, &raft, add, &now, "adding learner")
                .await?;
        }
        self.catch_up(spec, &raft, replacement).await?;
        let hold = self.config().promotion_hold_ms;
        if hold > 0 {
            RT::sleep(Duration::from_millis(hold)).await;
        }
        let now = Effective::of::<RT>(&raft.metrics().borrow_watched());
        if self.fenced() && (now.joint || now.voters != expected) {
            return Err(diverged(spec, &now.voters));
        }
        let voters = ChangeMembers::ReplaceAllVoters(after.clone());
        self.change(spec, &raft, voters, &now, "changing voters")
            .await?;
        self.drop_learners(spec, &raft, &after).await
    }

    /// Finishes a change left between its two steps (its leader lost
    /// leadership in between: openraft leaves the group joint), heading
    /// for its second configuration, fenced; then asks for a retry, since
    /// the voters are new.
    pub(crate) async fn complete_joint(
        &self,
        spec: &VolumeSpec,
        raft: &Raft<RT>,
        now: &Effective,
    ) -> Result<(), AdminError> {
        assert!(
            now.joint && !now.target.is_empty(),
            "a joint config has a target"
        );
        let change = ChangeMembers::ReplaceAllVoters(now.target.clone());
        self.change(spec, raft, change, now, "completing a joint change")
            .await?;
        Err(retry(spec, "completed a membership change left half done"))
    }

    /// One membership change, guarded by `basis`'s log id unless the
    /// planted bug is on, bounded by [`MEMBERSHIP_CHANGE_TIMEOUT_MS`].
    async fn change(
        &self,
        spec: &VolumeSpec,
        raft: &Raft<RT>,
        change: ChangeMembers<NodeId, RaftNode>,
        basis: &Effective,
        step: &str,
    ) -> Result<(), AdminError> {
        let preconditions: Vec<Precondition<TypeConfig<RT>>> = if self.fenced() {
            vec![Precondition::LastMembershipLogId {
                last_membership_log_id: basis.log_id,
            }]
        } else {
            Vec::new()
        };
        let bound = Duration::from_millis(MEMBERSHIP_CHANGE_TIMEOUT_MS);
        match RT::timeout(
            bound,
            raft.change_membership_if(change, false, preconditions),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(change_error::<RT>(spec, step, error)),
            Err(_) => Err(retry(spec, format!("{step}: did not commit in time"))),
        }
    }

    /// Waits until `learner`'s matched index is within the in-sync lag of
    /// the leader's last index.
    async fn catch_up(
        &self,
        spec: &VolumeSpec,
        raft: &Raft<RT>,
        learner: NodeId,
    ) -> Result<(), AdminError> {
        let caught_up = move |m: &RaftMetrics<TypeConfig<RT>>| {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&learner).copied().flatten());
            m.replication.is_some() && lag_within(matched.map(|id| id.index), m.last_log_index)
        };
        let bound = Duration::from_millis(CATCH_UP_TIMEOUT_MS);
        raft.wait(Some(bound))
            .metrics(caught_up, "the learner caught up")
            .await
            .map(|_| ())
            .map_err(|error| retry(spec, format!("the learner did not catch up: {error}")))
    }

    /// Removes every learner outside `voters` (fenced like every change).
    async fn drop_learners(
        &self,
        spec: &VolumeSpec,
        raft: &Raft<RT>,
        voters: &BTreeSet<NodeId>,
    ) -> Result<(), AdminError> {
        let now = Effective::of::<RT>(&raft.metrics().borrow_watched());
        let orphans: BTreeSet<NodeId> = now.learners.difference(voters).copied().collect();
        if orphans.is_empty() {
            return Ok(());
        }
        let change = ChangeMembers::RemoveNodes(orphans);
        self.change(spec, raft, change, &now, "removing orphan learners")
            .await
    }

    /// Removes the learners outside `now`'s voters that this node has seen
    /// for the orphan grace (fenced on `now`); the ones removed.
    pub(crate) async fn collect_orphans(
        &self,
        spec: &VolumeSpec,
        raft: &Raft<RT>,
        now: &Effective,
    ) -> Result<BTreeSet<NodeId>, AdminError> {
        let orphans: BTreeSet<NodeId> = now.learners.difference(&now.voters).copied().collect();
        let due = self.orphans_due(VolumeId(spec.id), &orphans);
        if due.is_empty() || now.joint {
            return Ok(BTreeSet::new());
        }
        let change = ChangeMembers::RemoveNodes(due.clone());
        self.change(spec, raft, change, now, "removing orphan learners")
            .await?;
        Ok(due)
    }

    /// Notes `orphans` as seen now (forgetting learners no longer there);
    /// those seen for the grace.
    fn orphans_due(&self, volume: VolumeId, orphans: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
        let now = RT::Instant::now();
        let grace = Duration::from_millis(self.config().orphan_grace_ms);
        let mut seen = self.learners_seen.lock();
        if orphans.is_empty() {
            seen.remove(&volume);
            return BTreeSet::new();
        }
        let since = seen.entry(volume).or_default();
        since.retain(|node, _| orphans.contains(node));
        for node in orphans {
            since.entry(*node).or_insert(now);
        }
        since
            .iter()
            .filter(|(_, first)| now - **first >= grace)
            .map(|(node, _)| *node)
            .collect()
    }
}
