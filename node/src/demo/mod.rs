//! `metro demo`: a whole metro cluster in one process and a guided tour of
//! what it promises — a whole site can fail without losing an acknowledged
//! write, and the survivors carry on within seconds.
//!
//! The cluster: `--domains` data domains of `--nodes-per-domain` nodes (and
//! with `--witness` a witness domain of one node), each node a real
//! [`daemon`](crate::daemon) (kvstore on disk in a temporary directory, QUIC
//! with mutual TLS from a fresh cluster CA) with an NBD listener exporting
//! the volume `demo`. Nodes of different domains see an injected one-way
//! delay of `--rtt-ms / 2`. The volume has one replica (a voter) on the
//! first node of each data domain, plus the witness when the data domains
//! are even, so that losing any one domain leaves a majority.
//!
//! The tour ([`tour`]):
//! 1. write unique 4 KiB patterns through NBD (the same protocol qemu
//!    speaks) at queue depth [`workload::DEMO_QUEUE_DEPTH`], recording latencies
//!    and which writes were acknowledged;
//! 2. find the volume's leader and kill its whole domain while the writes
//!    continue through another domain's NBD endpoint; measure the failover
//!    (kill → first acknowledgement of a write issued after it);
//! 3. read every acknowledged write back through NBD (`lost_writes` must be
//!    0; unacknowledged writes must read as their pattern or zeroes);
//! 4. restart the killed domain from its data directories and wait until
//!    every replica reports the same applied index and block-map digest.
//!
//! Contract: [`run`] returns `Ok(false)` when a write was lost or the
//! replicas did not converge (the binary then exits non-zero), `Err` when
//! the demo could not run. With `--output json` the last stdout line is one
//! JSON object ([`report::Report`]) and progress goes to stderr.

mod cluster;
pub mod nbd_client;
pub mod report;
mod tour;
pub mod workload;

use crate::limits::{
    DEMO_DOMAINS_MAX, DEMO_NODES_PER_DOMAIN_MAX, DEMO_RTT_MAX_MS, DEMO_VOLUME_MAX_MIB, PEERS_MAX,
};
use anyhow::bail;
use metro_fabric::env::NodeId;
use metro_fabric::volume::{BLOCK_BYTES_U64, VolumeId};

pub use cluster::DemoCluster;
pub use report::Report;

/// The demo volume's id and NBD export name.
pub const VOLUME: VolumeId = VolumeId(1);
/// See [`VOLUME`].
pub const EXPORT: &str = "demo";
const MIB: u64 = 1024 * 1024;

/// How the final result is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Progress lines and a summary table.
    Human,
    /// Progress on stderr; stdout's last line is one JSON object.
    Json,
}

/// `metro demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Data domains (sites); the volume has one replica in each.
    #[arg(long, default_value_t = 3)]
    pub domains: usize,
    /// Nodes in each data domain (the first holds the replica; any node
    /// serves the volume over NBD).
    #[arg(long, default_value_t = 2)]
    pub nodes_per_domain: usize,
    /// Add a witness domain with one node (a voter when the data domains
    /// are even, e.g. --domains 2 --witness).
    #[arg(long)]
    pub witness: bool,
    /// Round trip between domains in ms (injected: one-way rtt/2).
    #[arg(long, default_value_t = 2)]
    pub rtt_ms: u64,
    /// Stop after the tour instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// human, or json (one JSON object as the last stdout line).
    #[arg(long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// Size of the demo volume in MiB.
    #[arg(long, default_value_t = 64)]
    pub volume_mib: u64,
    /// Distinct 4 KiB blocks written during the tour.
    #[arg(long, default_value_t = 3000)]
    pub writes: u64,
    /// Log to stderr at error, warn, info, debug or trace (default: no logs).
    #[arg(long)]
    pub log_level: Option<String>,
}

/// One failure domain of the demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub witness: bool,
    pub nodes: Vec<NodeId>,
}

/// The demo's domains and nodes: data domain `d` (0-based) holds nodes
/// `d * M + 1 ..= d * M + M`; the witness node comes last.
#[derive(Debug, Clone)]
pub struct Topology {
    pub data_domains: usize,
    pub nodes_per_domain: usize,
    pub witness: bool,
}

impl Topology {
    /// Every domain, data domains first.
    pub fn domains(&self) -> Vec<Domain> {
        let m = self.nodes_per_domain as NodeId;
        let mut out: Vec<Domain> = (0..self.data_domains as NodeId)
            .map(|d| Domain {
                name: format!("site-{}", d + 1),
                witness: false,
                nodes: (d * m + 1..=d * m + m).collect(),
            })
            .collect();
        if self.witness {
            out.push(Domain {
                name: "witness".into(),
                witness: true,
                nodes: vec![self.data_domains as NodeId * m + 1],
            });
        }
        out
    }

    /// Every node id, in order.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.domains().into_iter().flat_map(|d| d.nodes).collect()
    }

    /// The index (into [`Self::domains`]) of `node`'s domain.
    pub fn domain_of(&self, node: NodeId) -> Option<usize> {
        self.domains().iter().position(|d| d.nodes.contains(&node))
    }

    /// The volume's voters: the first node of each data domain, plus the
    /// witness when the data domains are even.
    pub fn members(&self) -> Vec<NodeId> {
        let domains = self.domains();
        let mut members: Vec<NodeId> = domains
            .iter()
            .filter(|d| !d.witness)
            .map(|d| d.nodes[0])
            .collect();
        if self.data_domains.is_multiple_of(2) {
            members.extend(domains.iter().filter(|d| d.witness).map(|d| d.nodes[0]));
        }
        members
    }
}

/// Checks the flags; explains what is wrong with them.
pub fn check(args: &DemoArgs) -> anyhow::Result<Topology> {
    let topology = Topology {
        data_domains: args.domains,
        nodes_per_domain: args.nodes_per_domain,
        witness: args.witness,
    };
    match (args.domains, args.witness) {
        (0, _) => bail!("--domains must be at least 1"),
        (1, _) => bail!(
            "--domains 1 cannot survive the loss of its domain: the tour kills the leader's \
             whole domain, and one site (even with a witness: 2 voters, no majority without \
             either) cannot lose a site. Use --domains 3, or --domains 2 --witness"
        ),
        (2, false) => bail!(
            "--domains 2 without a witness cannot survive the loss of a domain: each domain \
             holds one of two voters and a majority needs both. Add --witness (a third site \
             that only votes) or use --domains 3"
        ),
        (d, _) if d > DEMO_DOMAINS_MAX => bail!("--domains must be at most {DEMO_DOMAINS_MAX}"),
        _ => {}
    }
    if !(1..=DEMO_NODES_PER_DOMAIN_MAX).contains(&args.nodes_per_domain) {
        bail!("--nodes-per-domain must be 1..={DEMO_NODES_PER_DOMAIN_MAX}");
    }
    if topology.nodes().len() > PEERS_MAX + 1 {
        bail!("at most {} nodes in all", PEERS_MAX + 1);
    }
    if args.rtt_ms > DEMO_RTT_MAX_MS {
        bail!("--rtt-ms must be at most {DEMO_RTT_MAX_MS}");
    }
    if !(1..=DEMO_VOLUME_MAX_MIB).contains(&args.volume_mib) {
        bail!("--volume-mib must be 1..={DEMO_VOLUME_MAX_MIB}");
    }
    let blocks = args.volume_mib * MIB / BLOCK_BYTES_U64;
    if !(1..=blocks).contains(&args.writes) {
        bail!(
            "--writes must be 1..={blocks}: each write takes its own 4 KiB block of the \
             {} MiB volume",
            args.volume_mib
        );
    }
    Ok(topology)
}

/// Runs the demo (see the module docs); `Ok(true)` when nothing was lost
/// and the replicas converged.
pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let topology = check(&args)?;
    let out = tour::Out::new(args.output);
    let size_bytes = args.volume_mib * MIB;
    let mut cluster = DemoCluster::create(topology, args.rtt_ms, size_bytes)?;
    let result = tour::tour(&mut cluster, &args, &out).await;
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            cluster.dir.keep = true;
            out.say(format!("node data kept in {}", cluster.dir.path.display()));
            cluster.shutdown().await;
            return Err(err);
        }
    };
    report.print(args.output);
    if !args.exit {
        out.say("the cluster stays up: point qemu-io or qemu-img at the NBD URIs above; Ctrl-C stops it".into());
        tokio::signal::ctrl_c().await?;
        out.say("Ctrl-C: stopping the cluster".into());
    }
    cluster.shutdown().await;
    Ok(report.ok())
}
