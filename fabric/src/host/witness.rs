//! Witness replicas: votes and the log needed for safety, never volume data.
//!
//! A witness node (its [`HostConfig::witness`](super::HostConfig) and
//! [`NodeStorage::is_witness`](crate::storage::NodeStorage::is_witness))
//! is a full voter of each group it is placed in, so that two data domains
//! plus a witness survive the loss of either data domain. Why it must keep
//! log entries, and which: with data replicas A, B and witness W, if A is
//! down while B+W commit entries, and then B is lost and A returns, those
//! entries exist only in W's log. So:
//!
//! - **Keeps the log every voter may need.** A witness never purges a log
//!   entry that some voter has not durably matched: its Raft config keeps
//!   every entry after a snapshot (`max_in_snapshot_log_to_keep = MAX`),
//!   and [`VolumeHost::witness_duties`] purges up to the leader's
//!   [`log floor`](VolumeHost::log_floor) only (the lowest index every
//!   voter matched). Purging itself only drops entries inside the
//!   witness's own (block-less) snapshot, which are committed, so a
//!   matched entry below the floor is never truncated on any voter.
//! - **No data.** Applying changes no block (see `storage::state_machine`),
//!   installing a Raft snapshot keeps its metadata only, and a witness's
//!   snapshot refuses to be sent (`storage::snapshot`): a follower that
//!   needs one waits for a data leader.
//! - **Leads only to hand entries on.** A witness may win an election (in
//!   the A+W case above it must: its log is the longer one); its elections
//!   time out later than data replicas' so that a data replica usually wins
//!   first. While it leads it serves no I/O (clients are told "no leader"
//!   and retry) and, as soon as a data voter has matched its whole log, it
//!   transfers leadership to that voter.
//!
//! [`VolumeHost::witness_duties`] is one pass of those duties over every
//! group; the node calls it every [`WITNESS_DUTY_INTERVAL_MS`](crate::limits::WITNESS_DUTY_INTERVAL_MS).
//!
//! A data node whose domain is deactivated
//! ([`VolumeHost::set_io_allowed`]`(false)`, from the control plane) keeps
//! its replicas in their groups but serves no I/O and, like a witness,
//! hands leadership to a caught-up voter (the same pass does it).

use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::rt::WatchReceiver as _;

use super::{HostError, VolumeHost};
use crate::env::{NodeId, Transport};
use crate::limits::LOG_FLOOR_TIMEOUT_MS;
use crate::raft::network::forward_client;
use crate::volume::VolumeId;
use crate::wire::{ClientReply, ClientRequest};

/// What one pass of [`VolumeHost::witness_duties`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WitnessPass {
    /// Groups this witness led and handed to a caught-up data voter.
    pub transfers: usize,
    /// Groups whose log was purged up to the leader's floor.
    pub purges: usize,
}

impl<RT: AsyncRuntime, T: Transport> VolumeHost<RT, T> {
    /// Whether this node leads `volume`'s group now.
    pub(crate) fn leads(&self, volume: VolumeId) -> bool {
        self.raft(volume)
            .is_some_and(|raft| raft.metrics().borrow_watched().current_leader == Some(self.node()))
    }

    /// Whether a client operation on `volume` must be refused here because
    /// this node leads it but may not serve I/O.
    pub(crate) fn refuses_io_as_leader(&self, volume: VolumeId) -> bool {
        !self.io_allowed() && self.leads(volume)
    }

    /// On the leader: the lowest log index every voter has matched (the
    /// leader's own last index included); `None` while some voter's progress
    /// is unknown. Elsewhere: [`HostError::NoLeader`].
    pub fn log_floor(&self, volume: VolumeId) -> Result<Option<u64>, HostError> {
        let raft = self.raft(volume).ok_or(HostError::UnknownVolume(volume))?;
        let metrics = raft.metrics().borrow_watched().clone();
        if metrics.current_leader != Some(self.node()) {
            return Err(HostError::NoLeader(volume));
        }
        let Some(replication) = metrics.replication else {
            return Ok(None);
        };
        let mut floor = metrics.last_log_index;
        for voter in metrics.membership_config.membership().voter_ids() {
            if voter == self.node() {
                continue;
            }
            let matched = replication
                .get(&voter)
                .and_then(|m| m.as_ref().map(|l| l.index));
            floor = match (floor, matched) {
                (Some(f), Some(m)) => Some(f.min(m)),
                _ => return Ok(None),
            };
        }
        Ok(floor)
    }

    /// One pass of a witness's duties over every hosted group (see the
    /// module docs); on a data node only while its I/O is stopped (hand
    /// leadership on), else a no-op.
    pub async fn witness_duties(&self) -> WitnessPass {
        let mut pass = WitnessPass::default();
        if self.io_allowed() {
            return pass;
        }
        for volume in self.volumes() {
            let Some(raft) = self.raft(volume) else {
                continue;
            };
            let metrics = raft.metrics().borrow_watched().clone();
            match metrics.current_leader {
                Some(leader) if leader == self.node() => {
                    if let Some(to) = caught_up_voter(self.node(), &metrics)
                        && raft.trigger().transfer_leader(to).await.is_ok()
                    {
                        pass.transfers += 1;
                    }
                }
                // Only entries inside the witness's own snapshot can be
                // purged: ask the leader only when there are some.
                Some(leader) if self.config().witness && purgeable(&metrics) => {
                    if let Some(floor) = self.ask_log_floor(leader, volume).await
                        && raft.trigger().purge_log(floor).await.is_ok()
                    {
                        pass.purges += 1;
                    }
                }
                Some(_) | None => {}
            }
        }
        pass
    }

    /// The log floor of `volume` according to `leader`, if it answers.
    async fn ask_log_floor(&self, leader: NodeId, volume: VolumeId) -> Option<u64> {
        let timeout = Duration::from_millis(LOG_FLOOR_TIMEOUT_MS);
        let call =
            forward_client::<T, RT>(self.transport(), leader, volume, ClientRequest::LogFloor);
        match RT::timeout(timeout, call).await {
            Ok(Ok(ClientReply::LogFloor { index })) => index,
            _ => None,
        }
    }
}

/// Whether the replica's snapshot covers log entries not purged yet.
fn purgeable<C: openraft::RaftTypeConfig>(metrics: &openraft::RaftMetrics<C>) -> bool {
    metrics.snapshot.as_ref().map(|l| l.index) > metrics.purged.as_ref().map(|l| l.index)
}

/// A voter other than `me` that has matched the leader's whole log.
fn caught_up_voter<C: openraft::RaftTypeConfig<NodeId = NodeId>>(
    me: NodeId,
    metrics: &openraft::RaftMetrics<C>,
) -> Option<NodeId> {
    let replication = metrics.replication.as_ref()?;
    let last = metrics.last_log_index;
    metrics
        .membership_config
        .membership()
        .voter_ids()
        .filter(|voter| *voter != me)
        .find(|voter| {
            replication
                .get(voter)
                .is_some_and(|matched| matched.as_ref().map(|l| l.index) == last)
        })
}
