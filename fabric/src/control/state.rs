//! The desired-state records and the [`ClusterView`] the coordinator decides
//! from. Records are stored as JSON so that `etcdctl get` shows an operator
//! something readable; decoding never panics on foreign bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::env::NodeId;

/// A node as it registers itself (under its lease: the key vanishes when
/// the node stops renewing it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub domain: String,
    pub quic_addr: String,
    #[serde(default)]
    pub nbd_addr: String,
    #[serde(default)]
    pub admin_addr: String,
    #[serde(default)]
    pub capacity_bytes: u64,
    #[serde(default)]
    pub version: String,
}

/// What a failure domain is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainRole {
    /// Holds volume data and serves I/O.
    Data,
    /// Votes and keeps the log it needs for safety; never serves I/O.
    Witness,
}

/// Whether a domain takes part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainState {
    Active,
    /// Its nodes stop serving I/O; its replicas do not count as healthy.
    Inactive,
}

/// A failure domain (site, zone, Kubernetes cluster).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    pub name: String,
    pub role: DomainRole,
    pub state: DomainState,
}

/// What an operator asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    /// The volume's Raft group id.
    pub id: u64,
    pub size_bytes: u64,
    /// Data replicas (voters that hold data), each in its own data domain.
    pub replicas: u8,
}

/// A member's part in a volume's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// A data replica.
    Data,
    /// A witness voter.
    Witness,
}

/// One member of a volume's placement. The domain is recorded here because a
/// dead node's own record disappears with its lease, and repair must find a
/// replacement in the same domain.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    pub node: NodeId,
    pub domain: String,
    pub role: MemberRole,
}

/// Where a volume's group lives (the desired voter set).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub members: Vec<Member>,
}

impl Placement {
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().map(|m| m.node)
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.members.iter().any(|m| m.node == node)
    }

    /// This placement with member `dead` swapped for `replacement` (same
    /// domain and role), in the same order.
    pub fn replaced(&self, dead: NodeId, replacement: NodeId) -> Placement {
        let members = self
            .members
            .iter()
            .map(|m| Member {
                node: if m.node == dead { replacement } else { m.node },
                ..m.clone()
            })
            .collect();
        Placement { members }
    }
}

/// A volume's record: spec and, once placed, its placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub spec: VolumeSpec,
    #[serde(default)]
    pub placement: Option<Placement>,
}

/// What the coordinator knows when it decides: live nodes (registered),
/// domains, volumes, and since when each placed node has been missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub domains: BTreeMap<String, DomainInfo>,
    pub volumes: BTreeMap<String, VolumeRecord>,
    /// Placed nodes without a registration, with the time (ms, the
    /// coordinator's clock) they were first seen missing.
    pub down_since_ms: BTreeMap<NodeId, u64>,
}

impl ClusterView {
    /// True if `node` is registered and its domain is active.
    pub fn is_serving(&self, node: NodeId) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|n| self.domain_active(&n.domain))
    }

    pub fn domain_active(&self, name: &str) -> bool {
        self.domains
            .get(name)
            .is_some_and(|d| d.state == DomainState::Active)
    }

    /// How many placements name each node (its load).
    pub fn load(&self) -> BTreeMap<NodeId, usize> {
        let mut load = BTreeMap::new();
        for v in self.volumes.values() {
            for node in v.placement.iter().flat_map(|p| p.nodes()) {
                *load.entry(node).or_default() += 1;
            }
        }
        load
    }
}

/// A stored record that is not what it should be.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what} record: {source}")]
pub struct DecodeError {
    what: &'static str,
    #[source]
    source: serde_json::Error,
}

/// Encodes a record for the store.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records serialize")
}

/// Decodes a record of kind `what` (for the error message).
pub fn decode<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|source| DecodeError { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let rec = VolumeRecord {
            spec: VolumeSpec {
                name: "db".into(),
                id: 7,
                size_bytes: 1 << 30,
                replicas: 2,
            },
            placement: Some(Placement {
                members: vec![Member {
                    node: 3,
                    domain: "a".into(),
                    role: MemberRole::Data,
                }],
            }),
        };
        let bytes = encode(&rec);
        assert_eq!(decode::<VolumeRecord>("volume", &bytes).unwrap(), rec);
        let err = decode::<VolumeRecord>("volume", b"{not json").unwrap_err();
        assert!(err.to_string().contains("volume"));
        let d: DomainInfo = decode(
            "domain",
            br#"{"name":"w","role":"witness","state":"active"}"#,
        )
        .unwrap();
        assert_eq!(d.role, DomainRole::Witness);
    }
}
