//! `metro`: the node daemon and the operator's CLI.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use metro_node::tls::{CA_CERT_FILE, CA_KEY_FILE, ClusterCa, node_cert_file, node_key_file};

/// metro: block storage that survives the loss of a site.
#[derive(Debug, Parser)]
#[command(name = "metro", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local cluster in one process and run a guided failover tour.
    Demo,
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Create the cluster CA and one certificate per node (ids 1..=N).
    ///
    /// Each node certificate names its node as `node-<id>.<name>.metro`
    /// (the identity every peer checks). Refuses to touch an existing CA.
    Init {
        /// Cluster name: a lowercase DNS label (a-z, 0-9, '-').
        #[arg(long)]
        name: String,
        /// Directory to write ca.pem, ca.key, node-ID.pem and node-ID.key into.
        #[arg(long)]
        dir: PathBuf,
        /// Number of nodes to issue certificates for (ids 1..=N).
        #[arg(long)]
        nodes: u64,
        /// IP address of each node, in id order (give exactly N, or none);
        /// added to that node's certificate as an extra SAN.
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo => {
            println!("metro demo: not yet available (lands with the node issue); see README.md");
            Ok(())
        }
        Command::Cluster {
            command:
                ClusterCommand::Init {
                    name,
                    dir,
                    nodes,
                    ips,
                },
        } => cluster_init(&name, &dir, nodes, &ips),
    }
}

fn cluster_init(name: &str, dir: &Path, nodes: u64, ips: &[IpAddr]) -> anyhow::Result<()> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if !ips.is_empty() && ips.len() as u64 != nodes {
        bail!(
            "give one --ip per node ({nodes}) or none; got {}",
            ips.len()
        );
    }
    for file in [CA_CERT_FILE, CA_KEY_FILE] {
        let path = dir.join(file);
        if path.exists() {
            bail!(
                "{} already exists: refusing to overwrite the cluster CA (use another --dir)",
                path.display()
            );
        }
    }
    for node in 1..=nodes {
        for path in [
            dir.join(node_cert_file(node)),
            dir.join(node_key_file(node)),
        ] {
            if path.exists() {
                bail!(
                    "{} already exists: refusing to overwrite it",
                    path.display()
                );
            }
        }
    }
    let ca = ClusterCa::generate(name).context("generating the cluster CA")?;
    let mut written = ca.save(dir).context("writing the cluster CA")?;
    for (index, node) in (1..=nodes).enumerate() {
        let extra: Vec<String> = ips
            .get(index)
            .map(|ip| ip.to_string())
            .into_iter()
            .collect();
        let identity = ca
            .issue_node(node, &extra)
            .with_context(|| format!("issuing the certificate of node {node}"))?;
        written.extend(
            identity
                .save(dir)
                .with_context(|| format!("writing the certificate of node {node}"))?,
        );
    }
    println!("cluster {name}: CA and {nodes} node certificates written");
    for path in written {
        println!("  {}", path.display());
    }
    Ok(())
}
