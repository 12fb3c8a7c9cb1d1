//! [`ClusterKeys`]: where a cluster's desired state lives in the store.
//!
//! ```text
//! /metro/<cluster>/nodes/<id>          NodeInfo, attached to the node's lease
//! /metro/<cluster>/domains/<name>      DomainInfo
//! /metro/<cluster>/volumes/<name>      VolumeRecord (spec + placement)
//! /metro/<cluster>/snapshots/<volume>/<name>  a volume snapshot's name → id
//! /metro/<cluster>/coordinator         election prefix
//! ```
//!
//! Node ids are written as fixed-width decimal so that a prefix range lists
//! them in numeric order.

use crate::env::NodeId;

/// Key builder for one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterKeys {
    root: String,
}

impl ClusterKeys {
    /// Keys of cluster `name` (a DNS label, checked by the caller).
    pub fn new(name: &str) -> Self {
        ClusterKeys {
            root: format!("/metro/{name}/"),
        }
    }

    pub fn nodes_prefix(&self) -> String {
        format!("{}nodes/", self.root)
    }

    pub fn node(&self, id: NodeId) -> String {
        format!("{}{id:020}", self.nodes_prefix())
    }

    pub fn domains_prefix(&self) -> String {
        format!("{}domains/", self.root)
    }

    pub fn domain(&self, name: &str) -> String {
        format!("{}{name}", self.domains_prefix())
    }

    pub fn volumes_prefix(&self) -> String {
        format!("{}volumes/", self.root)
    }

    pub fn volume(&self, name: &str) -> String {
        format!("{}{name}", self.volumes_prefix())
    }

    /// The snapshot names of volume `volume` (a volume name has no `/`).
    pub fn snapshots_prefix(&self, volume: &str) -> String {
        format!("{}snapshots/{volume}/", self.root)
    }

    pub fn snapshot(&self, volume: &str, name: &str) -> String {
        format!("{}{name}", self.snapshots_prefix(volume))
    }

    /// The election prefix of the coordinator.
    pub fn coordinator(&self) -> String {
        format!("{}coordinator", self.root)
    }

    /// The node id in a node key, if `key` is one.
    pub fn parse_node(&self, key: &str) -> Option<NodeId> {
        key.strip_prefix(&self.nodes_prefix())?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_keys_sort_numerically_and_parse_back() {
        let k = ClusterKeys::new("east");
        assert!(k.node(9) < k.node(10));
        assert_eq!(k.parse_node(&k.node(42)), Some(42));
        assert_eq!(k.parse_node(&k.domain("a")), None);
        assert_eq!(k.volume("db"), "/metro/east/volumes/db");
    }
}
