//! [`place`]: where a new volume's replicas go.
//!
//! Rules:
//! - Each data replica goes to a different *active data* domain, on a
//!   registered node: losing a domain loses at most one replica.
//! - Domains are taken least-loaded first (replicas already placed on their
//!   nodes), then by name; inside a domain the least-loaded node, then the
//!   lowest id. Deterministic: the same view gives the same placement.
//! - With an even number of data replicas (two data domains, typically) a
//!   witness voter is added from an active witness domain so that a majority
//!   survives the loss of either data domain — without one the placement is
//!   refused, since such a volume could not survive losing a site.

use std::collections::BTreeMap;

use crate::control::state::{
    ClusterView, DomainRole, Member, MemberRole, NodeInfo, Placement, VolumeSpec,
};
use crate::env::NodeId;
use crate::limits::REPLICAS_MAX;

/// Why a volume cannot be placed now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("a volume needs 1 to {REPLICAS_MAX} replicas, not {0}")]
    BadReplicaCount(u8),
    #[error(
        "{wanted} replicas need {wanted} active data domains with a live node; only {available} have one"
    )]
    NotEnoughDomains { wanted: u8, available: usize },
    #[error(
        "{replicas} data replicas cannot keep a majority when a domain is lost: add an active witness domain with a live node"
    )]
    NeedsWitness { replicas: u8 },
}

/// Chooses the members of a new volume's group.
pub fn place(spec: &VolumeSpec, view: &ClusterView) -> Result<Placement, PlacementError> {
    if spec.replicas == 0 || spec.replicas > REPLICAS_MAX {
        return Err(PlacementError::BadReplicaCount(spec.replicas));
    }
    let load = view.load();
    let data = candidates(view, DomainRole::Data, &load);
    if data.len() < usize::from(spec.replicas) {
        return Err(PlacementError::NotEnoughDomains {
            wanted: spec.replicas,
            available: data.len(),
        });
    }
    let mut members: Vec<Member> = data
        .into_iter()
        .take(usize::from(spec.replicas))
        .map(|(domain, node)| Member {
            node,
            domain,
            role: MemberRole::Data,
        })
        .collect();
    if spec.replicas.is_multiple_of(2) {
        let (domain, node) = candidates(view, DomainRole::Witness, &load)
            .into_iter()
            .next()
            .ok_or(PlacementError::NeedsWitness {
                replicas: spec.replicas,
            })?;
        members.push(Member {
            node,
            domain,
            role: MemberRole::Witness,
        });
    }
    check_placement(spec.replicas, &members);
    Ok(Placement { members })
}

/// What every placement guarantees: `replicas` data members, one per data
/// domain, and a witness exactly when the data members are even.
fn check_placement(replicas: u8, members: &[Member]) {
    let data: Vec<&Member> = members
        .iter()
        .filter(|m| m.role == MemberRole::Data)
        .collect();
    let witnesses = members.len() - data.len();
    assert_eq!(
        data.len(),
        usize::from(replicas),
        "one member per data replica"
    );
    let mut domains: Vec<&str> = members.iter().map(|m| m.domain.as_str()).collect();
    domains.sort_unstable();
    domains.dedup();
    assert_eq!(domains.len(), members.len(), "one member per domain");
    assert_eq!(
        witnesses,
        usize::from(replicas.is_multiple_of(2)),
        "a witness only beside an even number of data domains"
    );
    let mut nodes: Vec<NodeId> = members.iter().map(|m| m.node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(nodes.len(), members.len(), "no node holds two members");
}

/// For each active domain of `role` with a live node: (domain, its best
/// node), best domains first.
fn candidates(
    view: &ClusterView,
    role: DomainRole,
    load: &BTreeMap<NodeId, usize>,
) -> Vec<(String, NodeId)> {
    let mut by_domain: BTreeMap<&str, Vec<&NodeInfo>> = BTreeMap::new();
    for node in view.nodes.values() {
        let fits = view
            .domains
            .get(&node.domain)
            .is_some_and(|d| d.role == role && view.domain_active(&d.name));
        if fits {
            by_domain.entry(&node.domain).or_default().push(node);
        }
    }
    let node_load = |id: NodeId| load.get(&id).copied().unwrap_or(0);
    let mut ranked: Vec<(usize, String, NodeId)> = by_domain
        .into_iter()
        .map(|(domain, nodes)| {
            let domain_load: usize = nodes.iter().map(|n| node_load(n.id)).sum();
            let best = nodes
                .iter()
                .min_by_key(|n| (node_load(n.id), n.id))
                .expect("a listed domain has a node");
            assert!(
                nodes.iter().all(|n| n.domain == domain),
                "nodes grouped by their domain"
            );
            (domain_load, domain.to_owned(), best.id)
        })
        .collect();
    ranked.sort();
    ranked.into_iter().map(|(_, d, n)| (d, n)).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::control::state::{DomainInfo, DomainState, VolumeRecord};

    /// A view with `data` data domains of `per` nodes each (ids from 1, in
    /// domain order) and, if `witness`, one witness domain of one node.
    pub(crate) fn view(data: usize, per: usize, witness: bool) -> ClusterView {
        let mut v = ClusterView::default();
        let mut id = 1;
        let mut add_domain = |v: &mut ClusterView, name: String, role, nodes: usize| {
            v.domains.insert(
                name.clone(),
                DomainInfo {
                    name: name.clone(),
                    role,
                    state: DomainState::Active,
                },
            );
            for _ in 0..nodes {
                v.nodes.insert(
                    id,
                    NodeInfo {
                        id,
                        domain: name.clone(),
                        quic_addr: format!("127.0.0.1:{}", 7000 + id),
                        nbd_addr: String::new(),
                        admin_addr: String::new(),
                        capacity_bytes: 0,
                        version: String::new(),
                    },
                );
                id += 1;
            }
        };
        for d in 0..data {
            add_domain(&mut v, format!("site-{d}"), DomainRole::Data, per);
        }
        if witness {
            add_domain(&mut v, "witness".into(), DomainRole::Witness, 1);
        }
        v
    }

    pub(crate) fn spec(name: &str, replicas: u8) -> VolumeSpec {
        VolumeSpec {
            name: name.into(),
            id: 1,
            size_bytes: 1 << 30,
            replicas,
        }
    }

    #[test]
    fn replicas_land_in_distinct_domains_and_spread_load() {
        let mut v = view(3, 2, false);
        let mut per_node = BTreeMap::new();
        for i in 0..12 {
            let p = place(&spec(&format!("v{i}"), 3), &v).unwrap();
            let domains: std::collections::BTreeSet<_> =
                p.members.iter().map(|m| m.domain.clone()).collect();
            assert_eq!(domains.len(), 3, "{p:?}");
            for n in p.nodes() {
                *per_node.entry(n).or_insert(0) += 1;
            }
            v.volumes.insert(
                format!("v{i}"),
                VolumeRecord {
                    spec: spec(&format!("v{i}"), 3),
                    placement: Some(p),
                },
            );
        }
        assert!(per_node.values().all(|&c| c == 6), "{per_node:?}");
    }

    #[test]
    fn two_data_domains_take_a_witness_or_refuse() {
        let p = place(&spec("a", 2), &view(2, 2, true)).unwrap();
        let roles: Vec<_> = p.members.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            vec![MemberRole::Data, MemberRole::Data, MemberRole::Witness]
        );
        assert_eq!(
            place(&spec("a", 2), &view(2, 2, false)),
            Err(PlacementError::NeedsWitness { replicas: 2 })
        );
        assert!(matches!(
            place(&spec("a", 3), &view(2, 2, true)),
            Err(PlacementError::NotEnoughDomains {
                wanted: 3,
                available: 2
            })
        ));
    }

    #[test]
    fn inactive_domains_and_witnesses_never_hold_data() {
        let mut v = view(3, 1, true);
        v.domains.get_mut("site-0").unwrap().state = DomainState::Inactive;
        let p = place(&spec("a", 1), &v).unwrap();
        assert_ne!(p.members[0].domain, "site-0");
        assert_ne!(p.members[0].domain, "witness");
        assert!(place(&spec("a", 3), &v).is_err());
        assert_eq!(
            place(&spec("a", 0), &v),
            Err(PlacementError::BadReplicaCount(0))
        );
    }
}
