//! `metro domain list|activate|deactivate` over the admin API.

use clap::{Args, Subcommand};
use metro_node::admin::api::DomainView;
use metro_node::client::admin_http::method;

use super::table::Table;
use super::{AdminArgs, show};

#[derive(Debug, Args)]
pub struct DomainArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    command: DomainCommand,
}

#[derive(Debug, Subcommand)]
enum DomainCommand {
    /// List failure domains: role, state, nodes up and down.
    List,
    /// Activate a domain: its nodes serve I/O and get new replicas again.
    Activate {
        /// The domain's name.
        name: String,
    },
    /// Deactivate a domain: its nodes stop serving I/O, its replicas stop
    /// counting as healthy, and it gets no new replicas.
    Deactivate {
        /// The domain's name.
        name: String,
    },
}

fn lower<T: std::fmt::Debug>(value: T) -> String {
    format!("{value:?}").to_lowercase()
}

/// The `domain list` table.
pub fn domains_table(domains: &[DomainView]) -> String {
    if domains.is_empty() {
        return "no domains\n".into();
    }
    let mut t = Table::new(&["name", "role", "state", "nodes up", "nodes down"]);
    for d in domains {
        t.row(vec![
            d.name.clone(),
            lower(d.role),
            lower(d.state),
            d.nodes_up.to_string(),
            d.nodes_down.to_string(),
        ]);
    }
    t.render()
}

pub fn run(args: DomainArgs) -> anyhow::Result<()> {
    let a = &args.admin;
    let changed = |d: &DomainView| format!("domain {} is now {}\n", d.name, lower(d.state));
    let empty = serde_json::json!({});
    match args.command {
        DomainCommand::List => show(a, method::GET, "/v1/domains", None::<&()>, |d: &Vec<_>| {
            domains_table(d)
        }),
        DomainCommand::Activate { name } => {
            let path = format!("/v1/domains/{name}/activate");
            show(a, method::POST, &path, Some(&empty), changed)
        }
        DomainCommand::Deactivate { name } => {
            let path = format!("/v1/domains/{name}/deactivate");
            show(a, method::POST, &path, Some(&empty), changed)
        }
    }
}
