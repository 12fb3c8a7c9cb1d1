//! [`GroupAdmin`] for [`VolumeHost`]: the coordinator's actions on real
//! openraft groups.
//!
//! - `create_group` opens a replica on every member (the witness included:
//!   witnesses are voters like data members, block-less and handing their
//!   leadership on, see `witness.rs`) and initializes each with the same voter set,
//!   as [`VolumeHost::create_volume`] does, but asks every member even when
//!   one fails (a majority that opened is already a live group, which
//!   repair can complete if the others stay down). It succeeds once every
//!   member has opened; until then the coordinator calls it again.
//! - `replace_member` runs on the group's leader, which must be this node,
//!   fenced on the voter set the caller computed it from (`group_change`):
//!   a stale change is refused with [`AdminError::Diverged`], a change
//!   already made answers `Ok`.
//! - `in_sync` answers [`AdminError::Diverged`] when the group's voters
//!   are not `placement`'s (outside a change), so the coordinator can
//!   reconcile its record; otherwise it removes orphan learners past their
//!   grace (`group_change`) and reads the leader's replication metrics:
//!   members whose
//!   matched log index trails the leader's last log index by at most
//!   [`IN_SYNC_LAG_ENTRIES_MAX`](crate::limits::IN_SYNC_LAG_ENTRIES_MAX) entries, the leader included. (Requiring
//!   an exact match made a healthy volume under steady writes read
//!   `degraded` or `unavailable` whenever a sample caught entries in
//!   flight.)
//!
//! Membership changes and replication metrics are only available where the
//! leader runs: when the leader is another node, `replace_member` and
//! `in_sync` are forwarded to it once (host-level `ReplaceMember` /
//! `InSync` requests, nodes only), where they run locally and are never
//! forwarded again; a node without a replica (a coordinator need not host
//! one) asks the members in turn; with no leader known they answer
//! [`AdminError::Retry`]. A forwarded `replace_member` answers at once
//! (the replacement runs as a job on the leader, polled by calling again),
//! so every forwarded admin call is bounded by one hop's
//! [`FORWARD_TIMEOUT_MS`].

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::rt::WatchReceiver as _;

use super::group_change::{Effective, lag_within};
use super::{HostError, VolumeHost};
use crate::control::{AdminError, GroupAdmin, Placement, VolumeSpec};
use crate::env::{NodeId, Transport};
use crate::limits::FORWARD_TIMEOUT_MS;
use crate::raft::network::forward_client_within;
use crate::volume::{BLOCK_BYTES, VolumeId};
use crate::wire::ClientReply;
use crate::wire::ClientRequest;

fn retry(spec: &VolumeSpec, reason: impl std::fmt::Display) -> AdminError {
    AdminError::Retry {
        volume: spec.name.clone(),
        reason: reason.to_string(),
    }
}

pub(super) fn admin_error(spec: &VolumeSpec, error: HostError) -> AdminError {
    match error {
        HostError::Invalid(reason) => AdminError::Failed {
            volume: spec.name.clone(),
            reason,
        },
        other => retry(spec, other),
    }
}

pub(super) fn size_blocks(spec: &VolumeSpec) -> u64 {
    spec.size_bytes / BLOCK_BYTES as u64
}

impl<RT: AsyncRuntime, T: Transport> VolumeHost<RT, T> {
    /// Opens `volume` on `node` (here or remote) with `members` (none: as
    /// an uninitialized learner).
    pub(super) async fn open_on(
        &self,
        node: NodeId,
        volume: VolumeId,
        size_blocks: u64,
        members: &[NodeId],
    ) -> Result<(), HostError> {
        if node == self.node() {
            return self.open_replica(volume, size_blocks, members).await;
        }
        let request = ClientRequest::OpenReplica {
            size_blocks,
            members: members.to_vec(),
        };
        self.control(node, volume, request).await
    }

    /// Where to run a leader-only admin call for `spec`: `Ok(None)` here
    /// (this node leads), else the nodes to ask in turn — the leader this
    /// node's replica knows, or when it knows none (no replica here: the
    /// coordinator need not host one; or a removed member's replica, which
    /// never learns a new leader) every member of `placement` but this node
    /// and `skip` (a member that does not lead refuses, the next one is
    /// asked).
    fn admin_targets(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
        skip: Option<NodeId>,
    ) -> Result<Option<Vec<NodeId>>, AdminError> {
        let Some(raft) = self.raft(VolumeId(spec.id)) else {
            let others: Vec<NodeId> = placement
                .nodes()
                .filter(|n| *n != self.node() && Some(*n) != skip)
                .collect();
            if others.is_empty() {
                return Err(retry(spec, "no member to ask"));
            }
            return Ok(Some(others));
        };
        match raft.metrics().borrow_watched().current_leader {
            Some(leader) if leader == self.node() => Ok(None),
            Some(leader) => Ok(Some(vec![leader])),
            // A removed member's replica never learns another leader: ask
            // the placement's members.
            None => {
                let others: Vec<NodeId> = placement
                    .nodes()
                    .filter(|n| *n != self.node() && Some(*n) != skip)
                    .collect();
                match others.is_empty() {
                    true => Err(retry(spec, "no leader now")),
                    false => Ok(Some(others)),
                }
            }
        }
    }

    /// Asks each of `targets` in turn to run `request`; the first answer
    /// that is not a refusal.
    async fn forward_admin_any(
        &self,
        spec: &VolumeSpec,
        targets: &[NodeId],
        request: &ClientRequest,
        timeout_ms: u64,
    ) -> Result<(NodeId, ClientReply), AdminError> {
        let mut last = retry(spec, "no member answered");
        for &target in targets {
            match self
                .forward_admin(spec, target, request.clone(), timeout_ms)
                .await
            {
                Ok(reply) => return Ok((target, reply)),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    /// Asks `leader` to run `request` (a forwarded admin request), bounded
    /// by `timeout_ms`, which is also the transport's cap for this call.
    async fn forward_admin(
        &self,
        spec: &VolumeSpec,
        leader: NodeId,
        request: ClientRequest,
        timeout_ms: u64,
    ) -> Result<ClientReply, AdminError> {
        let volume = VolumeId(spec.id);
        let call =
            forward_client_within::<T, RT>(self.transport(), leader, volume, request, timeout_ms);
        match RT::timeout(Duration::from_millis(timeout_ms), call).await {
            Ok(Ok(ClientReply::Failed { message })) => Err(retry(
                spec,
                format!("the leader (node {leader}) answered: {message}"),
            )),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => Err(retry(spec, format!("forwarding to node {leader}: {error}"))),
            Err(_) => Err(retry(spec, format!("node {leader} did not answer in time"))),
        }
    }

    /// `in_sync` on this node, which must lead the group.
    pub(crate) async fn in_sync_here(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
    ) -> Result<BTreeSet<NodeId>, AdminError> {
        let raft = self.local_leader(spec)?;
        let metrics = raft.metrics().borrow_watched().clone();
        let effective = Effective::of::<RT>(&metrics);
        if effective.joint && !self.replacing(VolumeId(spec.id)) {
            self.complete_joint(spec, &raft, &effective).await?;
        }
        let wanted: BTreeSet<NodeId> = placement.nodes().collect();
        if !effective.joint && wanted != effective.voters {
            return Err(AdminError::Diverged {
                volume: spec.name.clone(),
                voters: effective.voters,
            });
        }
        self.collect_orphans(spec, &raft, &effective).await?;
        let last = metrics.last_log_index;
        let replication = metrics
            .replication
            .ok_or_else(|| retry(spec, "leadership is changing"))?;
        let matched = |node: NodeId| {
            node == self.node()
                || replication
                    .get(&node)
                    .is_some_and(|log_id| lag_within(log_id.map(|id| id.index), last))
        };
        Ok(placement.nodes().filter(|node| matched(*node)).collect())
    }

    /// This node's replica of `spec`'s volume, if it leads the group.
    pub(super) fn local_leader(
        &self,
        spec: &VolumeSpec,
    ) -> Result<
        crate::raft::types::VolumeRaft<RT, super::volume_host::HostStateMachine<RT>>,
        AdminError,
    > {
        let volume = VolumeId(spec.id);
        let raft = self
            .raft(volume)
            .ok_or_else(|| retry(spec, format!("no replica on node {}", self.node())))?;
        let leader = raft.metrics().borrow_watched().current_leader;
        if leader != Some(self.node()) {
            return Err(retry(
                spec,
                format!(
                    "the leader is {leader:?}, not node {}: membership changes run on the leader",
                    self.node()
                ),
            ));
        }
        Ok(raft)
    }
}

impl<RT: AsyncRuntime, T: Transport> GroupAdmin for VolumeHost<RT, T> {
    async fn create_group(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
    ) -> Result<(), AdminError> {
        let volume = VolumeId(spec.id);
        let members: Vec<NodeId> = placement.nodes().collect();
        let mut first_error = None;
        for &node in &members {
            match self
                .open_on(node, volume, size_blocks(spec), &members)
                .await
            {
                Ok(()) => {}
                Err(HostError::Invalid(reason)) => {
                    return Err(AdminError::Failed {
                        volume: spec.name.clone(),
                        reason,
                    });
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), |error| Err(admin_error(spec, error)))
    }

    async fn replace_member(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
        dead: NodeId,
        replacement: NodeId,
    ) -> Result<(), AdminError> {
        let Some(targets) = self.admin_targets(spec, placement, Some(dead))? else {
            return self
                .replace_member_here(spec, placement, dead, replacement)
                .await;
        };
        let request = ClientRequest::ReplaceMember {
            size_blocks: size_blocks(spec),
            members: placement.nodes().collect(),
            dead,
            replacement,
        };
        match self
            .forward_admin_any(spec, &targets, &request, FORWARD_TIMEOUT_MS)
            .await?
        {
            (_, ClientReply::Done) => Ok(()),
            (_, ClientReply::Diverged { voters }) => Err(AdminError::Diverged {
                volume: spec.name.clone(),
                voters: voters.into_iter().collect(),
            }),
            (_, ClientReply::Running { what }) => Err(AdminError::InProgress {
                volume: spec.name.clone(),
                what,
            }),
            (node, other) => Err(retry(spec, format!("node {node} answered {other:?}"))),
        }
    }

    async fn in_sync(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
    ) -> Result<BTreeSet<NodeId>, AdminError> {
        let Some(targets) = self.admin_targets(spec, placement, None)? else {
            return self.in_sync_here(spec, placement).await;
        };
        let request = ClientRequest::InSync {
            members: placement.nodes().collect(),
        };
        match self
            .forward_admin_any(spec, &targets, &request, FORWARD_TIMEOUT_MS)
            .await?
        {
            (_, ClientReply::InSync { nodes }) => Ok(nodes.into_iter().collect()),
            (_, ClientReply::Diverged { voters }) => Err(AdminError::Diverged {
                volume: spec.name.clone(),
                voters: voters.into_iter().collect(),
            }),
            (node, other) => Err(retry(spec, format!("node {node} answered {other:?}"))),
        }
    }
}
