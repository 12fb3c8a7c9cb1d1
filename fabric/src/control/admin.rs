//! [`GroupAdmin`]: the coordinator's hands on the volumes' Raft groups.
//!
//! The desired state lives in the store; a group's *actual* voter set lives
//! in its own log (openraft membership). The coordinator changes the actual
//! state only through this trait, so the control loop runs unchanged against
//! the production [`VolumeHost`](crate::host::VolumeHost) (see
//! `host/admin_impl.rs`), the simulator, and hand-written fakes in tests.
//!
//! Contract (every method):
//! - **Idempotent.** The coordinator may call again after a crash, a lost
//!   answer or a failover, before or after its store write went through:
//!   creating an existing group with the same members, or replacing a member
//!   that was already replaced, succeeds without changing anything.
//! - **Errors say what to do.** [`AdminError::Retry`] (no leader now, a peer
//!   unreachable, the leader is elsewhere) means "try again next round";
//!   [`AdminError::Failed`] means the request cannot work as asked;
//!   [`AdminError::Diverged`] means the group is not what the caller
//!   computed the change from, and nothing was changed.
//! - **Fenced.** A change is applied only to the voter set it was computed
//!   from (`placement`); the group's leader compares and refuses a
//!   mismatch, so a deposed or lagging caller cannot undo a newer change.
//! - Witness members are voters like data members; the group itself keeps
//!   them block-less and hands their leadership on (`host/witness.rs`).

use std::collections::BTreeSet;
use std::future::Future;

use crate::control::state::{Placement, VolumeSpec};
use crate::env::NodeId;

/// Why a [`GroupAdmin`] call did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// Not now (no leader, a peer unreachable, the leader is elsewhere, a
    /// catch-up that did not finish in time): retry next round.
    #[error("group of {volume} not ready: {reason}")]
    Retry { volume: String, reason: String },
    /// The group refused the request as asked: do not retry it unchanged.
    #[error("group of {volume} failed the request: {reason}")]
    Failed { volume: String, reason: String },
    /// The change is under way (a job on the group's leader): call again
    /// later with the same arguments to learn how it ended.
    #[error("group of {volume}: {what} (under way)")]
    InProgress { volume: String, what: String },
    /// The group's voters are not the ones the change was computed from
    /// (the caller's view is stale, or an earlier change went through):
    /// they are `voters`.
    #[error("group of {volume} has voters {voters:?}, not the placement's: change refused")]
    Diverged {
        volume: String,
        voters: BTreeSet<NodeId>,
    },
}

impl AdminError {
    /// Whether the same call may succeed later.
    pub fn is_retry(&self) -> bool {
        matches!(self, AdminError::Retry { .. })
    }
}

/// Actions on a volume's Raft group (see the module contract).
pub trait GroupAdmin: Send + Sync + 'static {
    /// Creates `spec`'s group with every member of `placement` as a voter
    /// (data and witness members alike).
    fn create_group(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;

    /// Replaces voter `dead` of the group (whose voters the caller believes
    /// are `placement`'s) by `replacement`: adds `replacement` as a learner,
    /// waits until it has caught up, then changes the voters to `placement`
    /// with `dead` swapped for `replacement` (removing `dead` from the
    /// group) and drops learners outside them. Voters other than
    /// `placement`'s (and than the result): [`AdminError::Diverged`]. A
    /// long replacement answers [`AdminError::InProgress`] while it runs;
    /// the caller polls with the same call until `Ok`.
    fn replace_member(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
        dead: NodeId,
        replacement: NodeId,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;

    /// The members of `placement` the group reports in sync: their matched
    /// log index is within the in-sync lag of the leader's last log index
    /// (the leader counts). The group's voters not `placement`'s (outside
    /// a change): [`AdminError::Diverged`]. The coordinator calls it every
    /// round, so it is also when the leader removes orphan learners (older
    /// than the grace, fenced).
    fn in_sync(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
    ) -> impl Future<Output = Result<BTreeSet<NodeId>, AdminError>> + Send;
}

/// The voter set after replacing `dead` by `replacement` in `placement`.
pub fn voters_after_replace(
    placement: &Placement,
    dead: NodeId,
    replacement: NodeId,
) -> BTreeSet<NodeId> {
    placement.replaced(dead, replacement).nodes().collect()
}
