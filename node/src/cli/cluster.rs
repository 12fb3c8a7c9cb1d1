//! `metro cluster status` and `metro node list` over the admin API.

use metro_node::admin::api::{ClusterStatus, NodeView};
use metro_node::client::admin_http::method;

use super::domain::domains_table;
use super::table::{Table, or_dash};
use super::volume::volumes_table;
use super::{AdminArgs, show};

fn dash_empty(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.into()
    }
}

/// The node table of `node list` and `cluster status`.
pub fn nodes_table(nodes: &[NodeView]) -> String {
    if nodes.is_empty() {
        return "no nodes\n".into();
    }
    let mut t = Table::new(&["id", "domain", "state", "quic", "nbd", "admin", "replicas"]);
    for n in nodes {
        t.row(vec![
            n.id.to_string(),
            n.domain.clone(),
            if n.up { "up" } else { "down" }.into(),
            dash_empty(&n.quic_addr),
            dash_empty(&n.nbd_addr),
            dash_empty(&n.admin_addr),
            n.replicas.to_string(),
        ]);
    }
    t.render()
}

/// The whole `cluster status` text.
pub fn status_text(s: &ClusterStatus) -> String {
    let up = s.nodes.iter().filter(|n| n.up).count();
    let healthy = s.volumes.iter().filter(|v| v.health == "healthy").count();
    let mut out = format!(
        "cluster {}: coordinator node {}, {up}/{} nodes up, {healthy}/{} volumes healthy (answered by node {})\n",
        s.cluster,
        or_dash(s.coordinator),
        s.nodes.len(),
        s.volumes.len(),
        s.answered_by,
    );
    out.push_str("\nNODES\n");
    out.push_str(&nodes_table(&s.nodes));
    out.push_str("\nDOMAINS\n");
    out.push_str(&domains_table(&s.domains));
    out.push_str("\nVOLUMES\n");
    out.push_str(&volumes_table(&s.volumes));
    if !s.malformed.is_empty() {
        out.push_str(&format!("\nmalformed records skipped: {:?}\n", s.malformed));
    }
    out
}

pub fn status(args: &AdminArgs) -> anyhow::Result<()> {
    show(args, method::GET, "/v1/cluster", None::<&()>, status_text)
}

pub fn node_list(args: &AdminArgs) -> anyhow::Result<()> {
    show(args, method::GET, "/v1/nodes", None::<&()>, |n: &Vec<_>| {
        nodes_table(n)
    })
}
