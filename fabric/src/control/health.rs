//! [`volume_health`]: what `metro cluster status` reports for a volume.
//!
//! A member counts as healthy when its node is registered, its domain is
//! active, and the group reports it in sync (its matched log index is the
//! leader's). The volume is `Healthy` when every member is, `Degraded` while
//! a majority of voters is healthy (it still acknowledges writes), and
//! `Unavailable` below that (writes stall until members return).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::control::state::{ClusterView, MemberRole, VolumeRecord};
use crate::env::NodeId;

/// One member's state, as published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberHealth {
    pub node: NodeId,
    pub domain: String,
    pub role: MemberRole,
    pub live: bool,
    pub domain_active: bool,
    pub in_sync: bool,
}

impl MemberHealth {
    pub fn healthy(&self) -> bool {
        self.live && self.domain_active && self.in_sync
    }
}

/// A volume's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Health {
    /// Not placed yet.
    Pending,
    Healthy {
        members: Vec<MemberHealth>,
    },
    Degraded {
        members: Vec<MemberHealth>,
    },
    Unavailable {
        members: Vec<MemberHealth>,
    },
}

impl Health {
    /// The per-member health (none while pending).
    pub fn members(&self) -> &[MemberHealth] {
        match self {
            Health::Pending => &[],
            Health::Healthy { members }
            | Health::Degraded { members }
            | Health::Unavailable { members } => members,
        }
    }

    /// `node`'s health, if it is a member.
    pub fn member(&self, node: NodeId) -> Option<&MemberHealth> {
        self.members().iter().find(|m| m.node == node)
    }
}

/// Computes the health of `record` given which members the group reports
/// in sync.
pub fn volume_health(
    record: &VolumeRecord,
    view: &ClusterView,
    in_sync: &BTreeSet<NodeId>,
) -> Health {
    let Some(placement) = &record.placement else {
        return Health::Pending;
    };
    let members: Vec<MemberHealth> = placement
        .members
        .iter()
        .map(|m| MemberHealth {
            node: m.node,
            domain: m.domain.clone(),
            role: m.role,
            live: view.nodes.contains_key(&m.node),
            domain_active: view.domain_active(&m.domain),
            in_sync: in_sync.contains(&m.node),
        })
        .collect();
    let healthy = members.iter().filter(|m| m.healthy()).count();
    if healthy == members.len() {
        Health::Healthy { members }
    } else if healthy * 2 > members.len() {
        Health::Degraded { members }
    } else {
        Health::Unavailable { members }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::placement::place;
    use crate::control::placement::tests::{spec, view};

    #[test]
    fn health_follows_majorities() {
        let v = view(3, 1, false);
        let record = VolumeRecord {
            spec: spec("db", 3),
            placement: Some(place(&spec("db", 3), &v).unwrap()),
        };
        let all: BTreeSet<NodeId> = record.placement.as_ref().unwrap().nodes().collect();
        assert!(matches!(
            volume_health(&record, &v, &all),
            Health::Healthy { .. }
        ));
        let mut two = all.clone();
        two.pop_first();
        assert!(matches!(
            volume_health(&record, &v, &two),
            Health::Degraded { .. }
        ));
        let mut one = two.clone();
        one.pop_first();
        assert!(matches!(
            volume_health(&record, &v, &one),
            Health::Unavailable { .. }
        ));
        let pending = VolumeRecord {
            spec: spec("x", 3),
            placement: None,
        };
        assert_eq!(volume_health(&pending, &v, &all), Health::Pending);
    }
}
