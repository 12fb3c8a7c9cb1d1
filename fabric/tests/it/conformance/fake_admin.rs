//! [`FakeAdmin`]: a hand-written [`GroupAdmin`] for the coordinator suite.
//! Groups are voter sets in memory; every call is recorded; changes are
//! fenced as the contract says (a change computed from other voters than
//! the group's, or a health check of another placement, answers
//! [`AdminError::Diverged`]); "in sync" is every voter not marked down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use metro_fabric::control::{AdminError, GroupAdmin, Placement, VolumeSpec, voters_after_replace};
use metro_fabric::env::NodeId;

fn diverged(spec: &VolumeSpec, group: &BTreeSet<NodeId>) -> AdminError {
    AdminError::Diverged {
        volume: spec.name.clone(),
        voters: group.clone(),
    }
}

/// One call the coordinator made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCall {
    Create {
        volume: String,
        members: Vec<NodeId>,
    },
    Replace {
        volume: String,
        dead: NodeId,
        replacement: NodeId,
    },
}

#[derive(Debug, Default)]
struct FakeState {
    groups: BTreeMap<String, BTreeSet<NodeId>>,
    calls: Vec<AdminCall>,
    down: BTreeSet<NodeId>,
}

/// A hand-written [`GroupAdmin`]: groups are member sets in memory.
#[derive(Clone, Debug, Default)]
pub struct FakeAdmin {
    state: Arc<Mutex<FakeState>>,
}

impl FakeAdmin {
    fn with<V>(&self, f: impl FnOnce(&mut FakeState) -> V) -> V {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn calls(&self) -> Vec<AdminCall> {
        self.with(|s| s.calls.clone())
    }

    pub fn creates(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| matches!(c, AdminCall::Create { .. }))
            .count()
    }

    /// Sets the voters of `volume`'s group, as a change made behind the
    /// coordinator's back would (an earlier coordinator's, unrecorded).
    pub fn force_voters(&self, volume: &str, voters: BTreeSet<NodeId>) {
        self.with(|s| s.groups.insert(volume.to_string(), voters));
    }

    /// Marks `node` down (out of sync) or back.
    pub fn set_down(&self, node: NodeId, down: bool) {
        self.with(|s| {
            if down {
                s.down.insert(node);
            } else {
                s.down.remove(&node);
            }
        });
    }
}

impl GroupAdmin for FakeAdmin {
    async fn create_group(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
    ) -> Result<(), AdminError> {
        let members: Vec<NodeId> = placement.nodes().collect();
        self.with(|s| {
            s.calls.push(AdminCall::Create {
                volume: spec.name.clone(),
                members: members.clone(),
            });
            s.groups
                .insert(spec.name.clone(), members.into_iter().collect());
        });
        Ok(())
    }

    async fn replace_member(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
        dead: NodeId,
        replacement: NodeId,
    ) -> Result<(), AdminError> {
        self.with(|s| {
            s.calls.push(AdminCall::Replace {
                volume: spec.name.clone(),
                dead,
                replacement,
            });
            let after = voters_after_replace(placement, dead, replacement);
            let wanted: BTreeSet<NodeId> = placement.nodes().collect();
            let group = s.groups.entry(spec.name.clone()).or_default();
            if *group != after && *group != wanted {
                return Err(diverged(spec, group));
            }
            *group = after;
            Ok(())
        })
    }

    async fn in_sync(
        &self,
        spec: &VolumeSpec,
        placement: &Placement,
    ) -> Result<BTreeSet<NodeId>, AdminError> {
        self.with(|s| {
            let group = s.groups.get(&spec.name).cloned().unwrap_or_default();
            let wanted: BTreeSet<NodeId> = placement.nodes().collect();
            if group != wanted {
                return Err(diverged(spec, &group));
            }
            Ok(group.difference(&s.down).copied().collect())
        })
    }
}
