//! [`plan_repairs`]: which replicas to replace, and with what.
//!
//! A member whose node has been missing (no registration) for at least the
//! repair delay is replaced by a live node of the *same* domain that does
//! not already hold the volume, least loaded first, lowest id on ties — so a
//! volume keeps one replica per domain. The coordinator carries a
//! replacement out as DESIGN.md says: add the new node as a learner, catch
//! it up, promote it, remove the dead voter, then record the new placement
//! with a compare-and-swap. A missing node with no replacement in its domain
//! is left alone (the volume stays degraded, and health says so); members in
//! inactive domains are not repaired (the operator took the domain out on
//! purpose).
//!
//! Group changes are fenced on the recorded voters ([`crate::control::GroupAdmin`]):
//! when the group refuses a repair because its voters already are the
//! placement's with the dead member swapped for a live node of the same
//! domain ([`adoptable`]), an earlier coordinator made that repair and lost
//! its record, and the coordinator records it as made.

use std::collections::BTreeSet;

use crate::control::state::{ClusterView, Member, Placement};
use crate::env::NodeId;

/// Replace `dead` in volume `volume` by `replacement` (same domain, role).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairAction {
    pub volume: String,
    pub dead: Member,
    pub replacement: NodeId,
}

/// The repairs due at `now_ms` given `repair_delay_ms`, at most one per
/// volume per round (a volume is repaired one member at a time).
pub fn plan_repairs(view: &ClusterView, now_ms: u64, repair_delay_ms: u64) -> Vec<RepairAction> {
    let mut load = view.load();
    let mut actions = Vec::new();
    for (name, record) in &view.volumes {
        let Some(placement) = &record.placement else {
            continue;
        };
        let due = placement.members.iter().find(|m| {
            !view.nodes.contains_key(&m.node)
                && view.domain_active(&m.domain)
                && view
                    .down_since_ms
                    .get(&m.node)
                    .is_some_and(|since| now_ms.saturating_sub(*since) >= repair_delay_ms)
        });
        let Some(dead) = due else {
            continue;
        };
        let replacement = view
            .nodes
            .values()
            .filter(|n| n.domain == dead.domain && !placement.contains(n.id))
            .min_by_key(|n| (load.get(&n.id).copied().unwrap_or(0), n.id))
            .map(|n| n.id);
        if let Some(replacement) = replacement {
            assert!(
                !view.nodes.contains_key(&dead.node) && placement.contains(dead.node),
                "a repair replaces only a dead member"
            );
            assert!(
                view.nodes[&replacement].domain == dead.domain && !placement.contains(replacement),
                "a replacement is a live node of the dead member's domain, new to the group"
            );
            *load.entry(replacement).or_default() += 1;
            actions.push(RepairAction {
                volume: name.clone(),
                dead: dead.clone(),
                replacement,
            });
        }
    }
    actions
}

/// The node that replaced `dead` in the group, when the group's `voters`
/// are `placement`'s with `dead` swapped for one live node of `dead`'s
/// domain that the placement does not hold (a repair made in the group
/// whose record was lost); anything else is not a repair to adopt.
pub fn adoptable(
    view: &ClusterView,
    placement: &Placement,
    dead: &Member,
    voters: &BTreeSet<NodeId>,
) -> Option<NodeId> {
    let kept: BTreeSet<NodeId> = placement.nodes().filter(|n| *n != dead.node).collect();
    let mut added = voters.difference(&kept);
    let node = *added.next()?;
    let whole = added.next().is_none() && kept.is_subset(voters) && !placement.contains(node);
    let live_in_domain = view
        .nodes
        .get(&node)
        .is_some_and(|n| n.domain == dead.domain);
    (whole && live_in_domain).then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::placement::place;
    use crate::control::placement::tests::{spec, view};
    use crate::control::state::{DomainState, VolumeRecord};

    fn placed(replicas: u8) -> ClusterView {
        let mut v = view(3, 2, true);
        let p = place(&spec("db", replicas), &v).unwrap();
        v.volumes.insert(
            "db".into(),
            VolumeRecord {
                spec: spec("db", replicas),
                placement: Some(p),
            },
        );
        v
    }

    #[test]
    fn a_node_down_past_the_delay_is_replaced_in_its_domain() {
        let mut v = placed(3);
        let victim = v.volumes["db"].placement.as_ref().unwrap().members[0].clone();
        v.nodes.remove(&victim.node);
        v.down_since_ms.insert(victim.node, 1_000);
        assert!(plan_repairs(&v, 5_000, 10_000).is_empty(), "too early");
        let actions = plan_repairs(&v, 11_000, 10_000);
        assert_eq!(actions.len(), 1);
        let a = &actions[0];
        assert_eq!(a.dead, victim);
        assert_eq!(v.nodes[&a.replacement].domain, victim.domain);
        assert!(
            !v.volumes["db"]
                .placement
                .as_ref()
                .unwrap()
                .contains(a.replacement)
        );
    }

    #[test]
    fn no_replacement_or_inactive_domain_means_no_action() {
        let mut v = placed(3);
        let victim = v.volumes["db"].placement.as_ref().unwrap().members[0].clone();
        let same_domain: Vec<NodeId> = v
            .nodes
            .values()
            .filter(|n| n.domain == victim.domain)
            .map(|n| n.id)
            .collect();
        for id in same_domain {
            v.nodes.remove(&id);
        }
        v.down_since_ms.insert(victim.node, 0);
        assert!(plan_repairs(&v, 100_000, 10).is_empty());
        let mut v = placed(3);
        let victim = v.volumes["db"].placement.as_ref().unwrap().members[1].clone();
        v.nodes.remove(&victim.node);
        v.down_since_ms.insert(victim.node, 0);
        v.domains.get_mut(&victim.domain).unwrap().state = DomainState::Inactive;
        assert!(plan_repairs(&v, 100_000, 10).is_empty());
    }

    #[test]
    fn only_a_whole_same_domain_swap_is_adopted() {
        let mut v = placed(3);
        let placement = v.volumes["db"].placement.clone().unwrap();
        let dead = placement.members[0].clone();
        let spare = v
            .nodes
            .values()
            .find(|n| n.domain == dead.domain && !placement.contains(n.id))
            .unwrap()
            .id;
        let swapped: BTreeSet<NodeId> = placement.replaced(dead.node, spare).nodes().collect();
        assert_eq!(adoptable(&v, &placement, &dead, &swapped), Some(spare));
        let unchanged: BTreeSet<NodeId> = placement.nodes().collect();
        assert_eq!(adoptable(&v, &placement, &dead, &unchanged), None);
        let other = v
            .nodes
            .values()
            .find(|n| n.domain != dead.domain && !placement.contains(n.id))
            .unwrap()
            .id;
        let wrong_domain: BTreeSet<NodeId> = placement.replaced(dead.node, other).nodes().collect();
        assert_eq!(adoptable(&v, &placement, &dead, &wrong_domain), None);
        let mut extra = swapped.clone();
        extra.insert(other);
        assert_eq!(adoptable(&v, &placement, &dead, &extra), None);
        v.nodes.remove(&spare);
        assert_eq!(adoptable(&v, &placement, &dead, &swapped), None, "not live");
    }
}
