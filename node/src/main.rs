//! `metro`: the node daemon and the operator's CLI.
//!
//! Two ways in: the admin commands (`volume`, `domain`, `cluster status`,
//! `node list`; [`cli`]) talk JSON over HTTP to any node's admin API and
//! work with volumes by name; `metro client` ([`client_cli`]) talks to the
//! data path directly over QUIC with a client certificate, by volume id
//! (raw block reads and writes, replica status).
mod cli;

/// mimalloc instead of glibc's malloc: the data path allocates and frees
/// block-sized buffers across threads (QUIC, Raft, kvstore writer), where
/// glibc's arena locks and consolidation cost about a tenth of the CPU of a
/// replicated write (measured with `metro-bench replicate`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use metro_node::daemon::config::{DaemonConfig, Overrides};
use metro_node::limits::CLIENTS_MAX;
use metro_node::pki::CLIENT_ID_MIN;
use metro_node::pki::{CA_CERT_FILE, CA_KEY_FILE, ClusterCa, node_cert_file, node_key_file};

/// metro: block storage that survives the loss of a site.
#[derive(Debug, Parser)]
#[command(name = "metro", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local cluster in one process and run a guided failover tour:
    /// write through NBD, kill the leader's whole domain, verify no
    /// acknowledged write was lost, restart it and watch it catch up.
    Demo(metro_node::demo::DemoArgs),
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The node daemon.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Volumes by name through the admin API: create, list, inspect,
    /// delete, snapshot, clone.
    Volume(cli::volume::VolumeArgs),
    /// Failure domains through the admin API: list, activate, deactivate.
    Domain(cli::domain::DomainArgs),
    /// Direct data-path client over QUIC (needs a client certificate from
    /// `metro cluster init --clients N`): volumes by id, raw block reads
    /// and writes, each replica's status.
    Client(cli::client::ClientArgs),
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Run a node until SIGTERM or SIGINT.
    Run(Box<RunArgs>),
    /// List the cluster's nodes (up: registered; down: placed but gone)
    /// through the admin API.
    List(cli::AdminArgs),
}

/// `metro node run`: flags override the config file field by field.
#[derive(Debug, Args)]
struct RunArgs {
    /// The node's TOML configuration (see `metro_node::config`).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    node_id: Option<u64>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    certs_dir: Option<PathBuf>,
    /// QUIC (UDP) listen address, host:port.
    #[arg(long)]
    listen: Option<String>,
    /// A peer as ID=HOST:PORT (repeatable).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// An injected one-way delay to a peer as ID=MS (repeatable).
    #[arg(long = "delay")]
    delays: Vec<String>,
    /// error, warn, info, debug or trace.
    #[arg(long)]
    log_level: Option<String>,
    /// Serve NBD (TCP) on host:port: every volume by its name (and every
    /// hosted one also as `vol-<id>`).
    #[arg(long)]
    nbd_listen: Option<String>,
    /// Serve the admin HTTP API on host:port.
    #[arg(long)]
    admin_listen: Option<String>,
    /// The cluster's name (the root of its etcd keys); default `metro`.
    #[arg(long)]
    cluster: Option<String>,
    /// This node's failure domain (site, zone); default `default`.
    #[arg(long)]
    domain: Option<String>,
    /// The domain's role if this node creates its record: data or witness.
    #[arg(long)]
    domain_role: Option<String>,
    /// An etcd endpoint, http://HOST:PORT (repeatable). Without any, the
    /// node uses an embedded store only its own process sees.
    #[arg(long = "etcd")]
    etcd: Vec<String>,
    /// Seconds without renewal before this node counts as down (min 2).
    #[arg(long)]
    node_lease_ttl_s: Option<u64>,
    /// Seconds a node must stay down before its replicas are moved.
    #[arg(long)]
    repair_delay_s: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Nodes (up/down), domains, the coordinator, volumes and their health,
    /// through the admin API.
    Status(cli::AdminArgs),
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
        /// Number of client certificates to issue, with ids from 1000000
        /// (clients may only send client requests).
        #[arg(long, default_value_t = 0)]
        clients: u64,
    },
}

/// Exits 1 with `error: <message: cause: ...>` on failure (no backtrace:
/// these are the operator's errors, not the program's).
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => demo(args),
        Command::Cluster {
            command: ClusterCommand::Status(args),
        } => cli::cluster::status(&args),
        Command::Cluster {
            command:
                ClusterCommand::Init {
                    name,
                    dir,
                    nodes,
                    ips,
                    clients,
                },
        } => cluster_init(&name, &dir, nodes, &ips, clients),
        Command::Node {
            command: NodeCommand::Run(args),
        } => node_run(*args),
        Command::Node {
            command: NodeCommand::List(args),
        } => cli::cluster::node_list(&args),
        Command::Volume(args) => cli::volume::run(args),
        Command::Domain(args) => cli::domain::run(args),
        Command::Client(args) => cli::client::run(args),
    }
}

fn init_logging(level: tracing::Level) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .try_init();
}

fn node_run(args: RunArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        node_id: args.node_id,
        data_dir: args.data_dir,
        certs_dir: args.certs_dir,
        listen: args.listen,
        log_level: args.log_level,
        peers: args.peers,
        delays: args.delays,
        nbd_listen: args.nbd_listen,
        admin_listen: args.admin_listen,
        cluster: args.cluster,
        domain: args.domain,
        domain_role: args.domain_role,
        etcd: args.etcd,
        node_lease_ttl_s: args.node_lease_ttl_s,
        repair_delay_s: args.repair_delay_s,
    };
    let config = DaemonConfig::load(args.config.as_deref(), overrides)
        .context("loading the node configuration")?;
    init_logging(config.node.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("metro-node")
        .build()
        .context("starting the tokio runtime")?;
    let node_id = config.node.node_id;
    runtime.block_on(async move {
        let shutdown = async {
            if let Err(err) = metro_node::daemon::termination_signal().await {
                tracing::error!(error = %err, "cannot wait for signals; stopping");
            }
        };
        metro_node::daemon::run_daemon(config, shutdown)
            .await
            .with_context(|| format!("running node {node_id}"))
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

/// `metro demo`: exits non-zero when a write was lost or the replicas
/// did not converge.
fn demo(args: metro_node::demo::DemoArgs) -> anyhow::Result<()> {
    if let Some(level) = &args.log_level {
        let level = level.parse().map_err(|_| {
            anyhow::anyhow!(
                "--log-level: expected error, warn, info, debug or trace, not {level:?}"
            )
        })?;
        init_logging(level);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("metro-demo")
        .build()
        .context("starting the tokio runtime")?;
    let ok = runtime.block_on(metro_node::demo::run(args))?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    if !ok {
        bail!("the demo failed: see the report above");
    }
    Ok(())
}

fn cluster_init(
    name: &str,
    dir: &Path,
    nodes: u64,
    ips: &[IpAddr],
    clients: u64,
) -> anyhow::Result<()> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if nodes >= CLIENT_ID_MIN {
        bail!("--nodes must be below {CLIENT_ID_MIN}");
    }
    if clients > CLIENTS_MAX {
        bail!("--clients must be at most {CLIENTS_MAX}");
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
    let client_ids = CLIENT_ID_MIN..CLIENT_ID_MIN + clients;
    for node in (1..=nodes).chain(client_ids.clone()) {
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
    for client in client_ids {
        let identity = ca
            .issue_node(client, &[])
            .with_context(|| format!("issuing the certificate of client {client}"))?;
        written.extend(
            identity
                .save(dir)
                .with_context(|| format!("writing the certificate of client {client}"))?,
        );
    }
    println!("cluster {name}: CA, {nodes} node and {clients} client certificates written");
    for path in written {
        println!("  {}", path.display());
    }
    Ok(())
}
